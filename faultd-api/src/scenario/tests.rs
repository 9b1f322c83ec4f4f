use std::cell::RefCell;
use std::time::Duration;

use super::*;

fn parse(text: &str) -> Result<Scenario, ScenarioError> {
    Scenario::from_str(text, "chaos.toml")
}

/// `(line, column, message)` of a scenario that must not parse.
fn error(text: &str) -> (usize, usize, String) {
    match parse(text) {
        Err(ScenarioError::Invalid {
            line,
            column,
            message,
            ..
        }) => (line, column, message),
        other => panic!("expected an invalid scenario, got {other:?}"),
    }
}

const FLAP: &str = r#"
name = "flapping link"

[[step]]
name = "flap"
at = "1s"
for = "2s"
repeat = 3
every = "5s"
fault = { action = "drop", port = 2380 }

[[step]]
at = "20s"
faults = [
  { action = "loss", port = 2379, percent = 5 },
  { action = "delay", port = 2379, latency = "50ms", label = "slow" },
]

[[step]]
at = "25s"
remove = "all"
"#;

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

#[test]
fn a_timeline_of_rounds_removals_and_a_heal() {
    let s = parse(FLAP).unwrap();
    assert_eq!(s.name, "flapping link");
    let got: Vec<_> = s
        .timeline()
        .iter()
        .map(|p| (p.at, p.step, p.round, p.kind))
        .collect();
    use PlannedKind::*;
    assert_eq!(
        got,
        [
            (secs(1.0), 0, 1, Add),
            (secs(3.0), 0, 1, Lift),
            (secs(6.0), 0, 2, Add),
            (secs(8.0), 0, 2, Lift),
            (secs(11.0), 0, 3, Add),
            (secs(13.0), 0, 3, Lift),
            (secs(20.0), 1, 1, Add),
            (secs(25.0), 2, 1, Remove),
        ]
    );
    assert_eq!(s.heal_at, secs(25.0));
    let StepAction::Add(faults) = &s.steps[1].action else {
        panic!("step 2 adds");
    };
    assert_eq!(faults[0].description, "loss port=2379 percent=5");
    assert_eq!(faults[0].spec.label, "scenario:flapping link");
    assert_eq!(faults[1].spec.label, "slow");
    let rows = s.plan();
    assert_eq!(rows.len(), 10);
    assert_eq!(
        rows[1].to_string(),
        "   1.000s  add    step 1 \"flap\" 1/3: drop port=2380"
    );
}

#[test]
fn a_lift_comes_before_an_add_at_the_same_time() {
    let s = parse(
        "[[step]]\nat = \"0s\"\nfor = \"1s\"\nrepeat = 2\nevery = \"1s\"\nfault = { action = \"drop\", port = 1 }",
    )
    .unwrap();
    let kinds: Vec<_> = s.timeline().iter().map(|p| (p.at, p.kind)).collect();
    assert_eq!(
        kinds,
        [
            (secs(0.0), PlannedKind::Add),
            (secs(1.0), PlannedKind::Lift),
            (secs(1.0), PlannedKind::Add),
            (secs(2.0), PlannedKind::Lift),
        ]
    );
}

#[test]
fn errors_say_line_and_column() {
    // A bad duration: where its value starts.
    let (line, column, message) =
        error("[[step]]\nat = \"5x\"\nfault = { action = \"drop\", port = 1 }\n");
    assert_eq!((line, column), (2, 6), "{message}");
    assert!(
        message.starts_with("at: \"5x\" is not a duration"),
        "{message}"
    );

    // An unknown action: its value.
    let (line, column, message) =
        error("[[step]]\nat = \"0s\"\nfault = { action = \"drp\", port = 1 }\n");
    assert_eq!((line, column), (3, 20), "{message}");
    assert!(
        message.starts_with("action: \"drp\" is not an action (one of drop,"),
        "{message}"
    );

    // A missing field of a step: the step's table.
    let (line, column, message) = error("\n[[step]]\nfault = { action = \"drop\", port = 1 }\n");
    assert_eq!(line, 2, "{message}");
    assert!(column >= 1);
    assert!(message.contains("missing field `at`"), "{message}");

    // A missing field of a fault: the fault's table.
    let (line, column, message) = error("[[step]]\nat = \"0s\"\nfault = { port = 1 }\n");
    assert_eq!((line, column), (3, 9), "{message}");
    assert!(message.starts_with("missing field `action`"), "{message}");

    // A misspelt key of a step, and of a fault.
    let (line, _, message) = error("[[step]]\nat = \"0s\"\nfro = \"1s\"\nremove = \"all\"\n");
    assert_eq!(line, 3, "{message}");
    assert!(message.contains("unknown field `fro`"), "{message}");
    let (line, column, message) =
        error("[[step]]\nat = \"0s\"\nfault = { action = \"drop\", prot = 1 }\n");
    assert_eq!((line, column), (3, 28), "{message}");
    assert!(
        message.starts_with("unknown field `prot` for drop"),
        "{message}"
    );

    // TOML itself.
    let (line, _, _) = error("[[step]]\nat = \"0s\nremove = \"all\"\n");
    assert_eq!(line, 2);
}

#[test]
fn inconsistent_steps_are_refused() {
    let cases = [
        (
            "[[step]]\nat = \"0s\"\n",
            "a step needs `fault`, `faults` or `remove`",
        ),
        (
            "[[step]]\nat = \"0s\"\nremove = \"x\"\n",
            "remove: \"x\" is not the name",
        ),
        (
            "[[step]]\nat = \"0s\"\nremove = \"all\"\nfault = { action = \"drop\", port = 1 }\n",
            "remove: a step either adds",
        ),
        (
            "[[step]]\nat = \"0s\"\nrepeat = 3\nfault = { action = \"drop\", port = 1 }\n",
            "repeat: needs `every`",
        ),
        (
            "[[step]]\nat = \"0s\"\nrepeat = 0\nevery = \"1s\"\nfault = { action = \"drop\", port = 1 }\n",
            "repeat: 0 is not a count",
        ),
        (
            "[[step]]\nat = \"0s\"\nfor = \"3s\"\nrepeat = 2\nevery = \"2s\"\nfault = { action = \"drop\", port = 1 }\n",
            "every: 2s is shorter than `for`",
        ),
        (
            "heal = \"1s\"\n[[step]]\nat = \"5s\"\nremove = \"all\"\n",
            "heal: 1s is before the last planned action",
        ),
        (
            "[[step]]\nname = \"a\"\nat = \"0s\"\nremove = \"all\"\n[[step]]\nname = \"a\"\nat = \"0s\"\nremove = \"all\"\n",
            "name: \"a\" names an earlier step",
        ),
        ("name = \"x\"\n", "no [[step]]"),
        (
            "[[step]]\nat = \"0s\"\nfor = \"1s\"\nremove = \"all\"\n",
            "for: a `remove` step",
        ),
        (
            "[[step]]\nat = \"0s\"\nfaults = []\n",
            "faults: an empty list",
        ),
    ];
    for (text, want) in cases {
        let (_, _, message) = error(text);
        assert!(
            message.starts_with(want),
            "{text}\n→ {message}\n  wanted {want}"
        );
    }
}

/// Records what a run asked of faultd, with the (paused, virtual) time it asked it.
#[derive(Default)]
struct Fake {
    calls: RefCell<Vec<(Duration, String)>>,
    next_id: RefCell<u64>,
    refuse_port: Option<u32>,
    start: RefCell<Option<tokio::time::Instant>>,
}

impl Fake {
    fn now(&self) -> Duration {
        let mut start = self.start.borrow_mut();
        start
            .get_or_insert_with(tokio::time::Instant::now)
            .elapsed()
    }
}

impl FaultApi for Fake {
    async fn add(&self, spec: proto::FaultSpec) -> Result<u64, tonic::Status> {
        let port = spec.target.unwrap().port;
        if Some(port) == self.refuse_port {
            return Err(tonic::Status::invalid_argument("target.port: refused"));
        }
        *self.next_id.borrow_mut() += 1;
        let id = *self.next_id.borrow();
        let now = self.now();
        self.calls
            .borrow_mut()
            .push((now, format!("add {id} port {port}")));
        Ok(id)
    }

    async fn remove(&self, id: u64) -> Result<(), tonic::Status> {
        let now = self.now();
        self.calls.borrow_mut().push((now, format!("remove {id}")));
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_run_adds_and_removes_on_time_and_heals() {
    let s = parse(
        "heal = \"10s\"\n[[step]]\nname = \"flap\"\nat = \"1s\"\nfor = \"2s\"\nrepeat = 2\nevery = \"3s\"\nfault = { action = \"drop\", port = 7 }\n\
         [[step]]\nname = \"hold\"\nat = \"2s\"\nfault = { action = \"drop\", port = 8 }\n\
         [[step]]\nat = \"9s\"\nremove = \"flap\"\n",
    )
    .unwrap();
    let fake = Fake::default();
    fake.now();
    let mut rows = Vec::new();
    let outcome = s.run(&fake, |r| rows.push(r.clone())).await.unwrap();
    assert_eq!(outcome, Outcome::Completed);
    let calls = fake.calls.borrow();
    let got: Vec<_> = calls
        .iter()
        .map(|(t, c)| (t.as_secs(), c.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (1, "add 1 port 7"),
            (2, "add 2 port 8"),
            (3, "remove 1"),
            (4, "add 3 port 7"),
            (6, "remove 3"),
            // The step "hold" lasts until the heal.
            (10, "remove 2"),
        ]
    );
    let events: Vec<_> = rows
        .iter()
        .map(|r| (r.event, r.at_ms, r.fault_ids.clone()))
        .collect();
    assert_eq!(
        events,
        [
            (RowEvent::Start, 0, vec![]),
            (RowEvent::Add, 1000, vec![1]),
            (RowEvent::Add, 2000, vec![2]),
            (RowEvent::Remove, 3000, vec![1]),
            (RowEvent::Add, 4000, vec![3]),
            (RowEvent::Remove, 6000, vec![3]),
            (RowEvent::Remove, 9000, vec![]),
            (RowEvent::Heal, 10000, vec![2]),
        ]
    );
    assert_eq!(rows.last().unwrap().note.as_deref(), Some("end"));
    assert_eq!(rows[3].elapsed_ms, Some(3000));
    let json = serde_json::to_value(&rows[1]).unwrap();
    assert_eq!(json["event"], "add");
    assert_eq!(json["faults"][0], "drop port=7");
}

#[tokio::test(start_paused = true)]
async fn a_stopped_run_heals_what_it_added() {
    let s =
        parse("[[step]]\nat = \"0s\"\nfor = \"60s\"\nfault = { action = \"drop\", port = 7 }\n")
            .unwrap();
    let fake = Fake::default();
    let stop = async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        "interrupted".to_string()
    };
    let mut rows = Vec::new();
    let outcome = s
        .run_until(&fake, stop, |r| rows.push(r.clone()))
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Stopped("interrupted".into()));
    let calls: Vec<_> = fake
        .calls
        .borrow()
        .iter()
        .map(|(t, c)| (t.as_secs(), c.clone()))
        .collect();
    assert_eq!(
        calls,
        [(0, "add 1 port 7".to_string()), (5, "remove 1".to_string())]
    );
    let heal = rows.last().unwrap();
    assert_eq!(
        (heal.event, heal.note.as_deref()),
        (RowEvent::Heal, Some("interrupted"))
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_step_fails_the_run_after_healing() {
    let s = parse(
        "[[step]]\nat = \"0s\"\nfault = { action = \"drop\", port = 7 }\n\
         [[step]]\nname = \"bad\"\nat = \"1s\"\nfault = { action = \"drop\", port = 9 }\n\
         [[step]]\nat = \"2s\"\nfault = { action = \"drop\", port = 8 }\n",
    )
    .unwrap();
    let fake = Fake {
        refuse_port: Some(9),
        ..Default::default()
    };
    let e = s.run(&fake, |_| {}).await.unwrap_err();
    assert_eq!(e.to_string(), "step 2 \"bad\" at 1s: target.port: refused");
    assert_eq!(e.status.code(), tonic::Code::InvalidArgument);
    let calls: Vec<_> = fake.calls.borrow().iter().map(|(_, c)| c.clone()).collect();
    assert_eq!(calls, ["add 1 port 7", "remove 1"], "step 3 never runs");
}
