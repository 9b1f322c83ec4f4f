//! Playing a scenario: sleep until each planned action, apply it, report it; at the end,
//! when stopped, or when a step fails, remove every fault the run added.

use std::fmt;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::time::{Instant, sleep_until};
use tonic::transport::Channel;

use super::{Planned, PlannedKind, Scenario, StepAction};
use crate::proto::{self, fault_service_client::FaultServiceClient};

/// What a scenario needs of a connection to faultd. Implementations bind the faults to a
/// session, so that a run that dies leaves nothing behind.
pub trait FaultApi {
    /// Adds a fault; its id.
    fn add(&self, spec: proto::FaultSpec) -> impl Future<Output = Result<u64, tonic::Status>>;
    /// Removes a fault by id.
    fn remove(&self, id: u64) -> impl Future<Output = Result<(), tonic::Status>>;
}

/// The generated client, with the session its faults are bound to (0: none).
#[derive(Clone, Debug)]
pub struct Bound {
    pub rpc: FaultServiceClient<Channel>,
    pub session_id: u64,
}

impl FaultApi for Bound {
    async fn add(&self, spec: proto::FaultSpec) -> Result<u64, tonic::Status> {
        let request = proto::AddFaultRequest {
            spec: Some(spec),
            session_id: self.session_id,
        };
        Ok(self.rpc.clone().add_fault(request).await?.into_inner().id)
    }

    async fn remove(&self, id: u64) -> Result<(), tonic::Status> {
        let request = proto::RemoveFaultRequest { id };
        self.rpc.clone().remove_fault(request).await.map(drop)
    }
}

/// How a run ended (after its heal).
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Completed,
    /// The stop future passed to [`Scenario::run_until`] finished, with this reason.
    Stopped(String),
}

/// A step faultd refused, or a removal that failed; the run healed before returning it.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {}", status.message())]
pub struct RunError {
    /// `step 2 "flap" round 3 at 10s`.
    pub context: String,
    pub status: tonic::Status,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RowEvent {
    Start,
    Add,
    Remove,
    Heal,
}

impl fmt::Display for RowEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            RowEvent::Start => "start",
            RowEvent::Add => "add",
            RowEvent::Remove => "remove",
            RowEvent::Heal => "heal",
        })
    }
}

/// One thing a run did, as it happened (or, from [`Scenario::plan`], as it is planned).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRow {
    pub event: RowEvent,
    /// The step's number in the file (1-based); none for start and heal.
    pub step: Option<usize>,
    pub name: Option<String>,
    /// Round and rounds of a repeated step.
    pub round: Option<u32>,
    pub rounds: Option<u32>,
    /// The planned offset from the start.
    pub at_ms: u64,
    /// When it was done, from the start; none in a plan.
    pub elapsed_ms: Option<u64>,
    /// The wall clock when it was done.
    pub unix_ms: Option<i64>,
    /// The faults added or removed.
    pub fault_ids: Vec<u64>,
    pub faults: Vec<String>,
    /// Why a heal happened: `end`, `interrupted`, `failed`…
    pub note: Option<String>,
}

impl fmt::Display for StepRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Padded columns, without trailing blanks where nothing follows them.
        let mut line = String::new();
        self.write_line(&mut line)?;
        f.write_str(line.trim_end())
    }
}

impl StepRow {
    fn write_line(&self, f: &mut impl fmt::Write) -> fmt::Result {
        let secs = |ms: u64| format!("{:.3}s", ms as f64 / 1000.0);
        write!(f, "{:>9}", secs(self.at_ms))?;
        if let Some(elapsed) = self.elapsed_ms {
            let late = elapsed as i64 - self.at_ms as i64;
            write!(f, " {:>+6}ms", late)?;
        }
        write!(f, "  {:<6}", self.event)?;
        if let Some(step) = self.step {
            write!(f, " step {step}")?;
        }
        if let Some(name) = &self.name {
            write!(f, " {name:?}")?;
        }
        if let (Some(round), Some(rounds)) = (self.round, self.rounds)
            && rounds > 1
        {
            write!(f, " {round}/{rounds}")?;
        }
        for (i, description) in self.faults.iter().enumerate() {
            let sep = match (i, self.step) {
                (0, Some(_)) => ": ",
                (0, None) => " ",
                _ => "; ",
            };
            match self.fault_ids.get(i) {
                Some(id) => write!(f, "{sep}#{id} {description}")?,
                None => write!(f, "{sep}{description}")?,
            }
        }
        if let Some(note) = &self.note {
            write!(f, " ({note})")?;
        }
        Ok(())
    }
}

/// A fault the run added and has not removed.
struct Held {
    /// Index into the steps.
    step: usize,
    round: u32,
    id: u64,
    description: String,
}

type Installed = Vec<Held>;

/// The start of a run, on the monotonic and the wall clock.
struct Clock {
    start: Instant,
    unix_ms: i64,
}

impl Clock {
    fn start() -> Clock {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Clock {
            start: Instant::now(),
            unix_ms,
        }
    }

    fn stamp(&self, row: &mut StepRow) {
        let elapsed = self.start.elapsed().as_millis() as u64;
        row.elapsed_ms = Some(elapsed);
        row.unix_ms = Some(self.unix_ms + elapsed as i64);
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl Scenario {
    /// Plays the scenario to its end, then heals. Returns on the first refusal (healed).
    pub async fn run<A: FaultApi>(
        &self,
        api: &A,
        report: impl FnMut(&StepRow),
    ) -> Result<Outcome, RunError> {
        self.run_until(api, std::future::pending(), report).await
    }

    /// Plays the scenario until its end or until `stop` finishes (Ctrl-C, say), reporting
    /// every row; then removes everything it added. Stopping is checked between actions,
    /// never during a request, so no fault is added without the run knowing its id.
    pub async fn run_until<A: FaultApi>(
        &self,
        api: &A,
        stop: impl Future<Output = String>,
        mut report: impl FnMut(&StepRow),
    ) -> Result<Outcome, RunError> {
        let clock = Clock::start();
        let mut start = self.row(RowEvent::Start, None, Duration::ZERO);
        clock.stamp(&mut start);
        report(&start);
        let mut installed = Installed::new();
        tokio::pin!(stop);
        let mut result = Ok(Outcome::Completed);
        let ends = self.timeline.iter().map(Some).chain([None]);
        for planned in ends {
            let due = planned.map_or(self.heal_at, |p| p.at);
            tokio::select! {
                biased;
                why = &mut stop => {
                    result = Ok(Outcome::Stopped(why));
                    break;
                }
                () = sleep_until(clock.start + due) => {}
            }
            let Some(planned) = planned else { break };
            if let Err(e) = self
                .apply(planned, api, &clock, &mut installed, &mut report)
                .await
            {
                result = Err(e);
                break;
            }
        }
        let note = match &result {
            Ok(Outcome::Completed) => "end".to_string(),
            Ok(Outcome::Stopped(why)) => why.clone(),
            Err(_) => "failed".to_string(),
        };
        let healed = self.heal(api, &clock, installed, note, &mut report).await;
        let outcome = result?;
        healed.map(|()| outcome)
    }

    /// The timeline as rows, without running it (`faultctl run --check`).
    pub fn plan(&self) -> Vec<StepRow> {
        let mut rows = vec![self.row(RowEvent::Start, None, Duration::ZERO)];
        for planned in &self.timeline {
            let step = &self.steps[planned.step];
            let event = match planned.kind {
                PlannedKind::Add => RowEvent::Add,
                _ => RowEvent::Remove,
            };
            let mut row = self.row(event, Some(planned), planned.at);
            row.faults = match (&step.action, planned.kind) {
                (StepAction::Add(faults), _) => {
                    faults.iter().map(|f| f.description.clone()).collect()
                }
                (StepAction::RemoveStep(n), _) => vec![format!("the faults of step {n}")],
                (StepAction::RemoveAll, _) => vec!["every fault added".to_string()],
            };
            rows.push(row);
        }
        let mut heal = self.row(RowEvent::Heal, None, self.heal_at);
        heal.faults = vec!["every fault still in force".to_string()];
        rows.push(heal);
        rows
    }

    fn row(&self, event: RowEvent, planned: Option<&Planned>, at: Duration) -> StepRow {
        let step = planned.map(|p| &self.steps[p.step]);
        StepRow {
            event,
            step: step.map(|s| s.number),
            name: step.and_then(|s| s.name.clone()),
            round: planned.map(|p| p.round),
            rounds: step.map(|s| s.repeat),
            at_ms: millis(at),
            elapsed_ms: None,
            unix_ms: None,
            fault_ids: Vec::new(),
            faults: Vec::new(),
            note: None,
        }
    }

    async fn apply<A: FaultApi>(
        &self,
        planned: &Planned,
        api: &A,
        clock: &Clock,
        installed: &mut Installed,
        report: &mut impl FnMut(&StepRow),
    ) -> Result<(), RunError> {
        let step = &self.steps[planned.step];
        let mut row = self.row(RowEvent::Remove, Some(planned), planned.at);
        let context = || {
            let name = step
                .name
                .as_ref()
                .map(|n| format!(" {n:?}"))
                .unwrap_or_default();
            let round = match step.repeat {
                1 => String::new(),
                n => format!(" round {}/{n}", planned.round),
            };
            format!("step {}{name}{round} at {:?}", step.number, planned.at)
        };
        let fail = |status| RunError {
            context: context(),
            status,
        };
        let leaving: Box<dyn Fn(&Held) -> bool> = match (&step.action, planned.kind) {
            (StepAction::Add(faults), PlannedKind::Add) => {
                row.event = RowEvent::Add;
                for fault in faults {
                    let id = api.add(fault.spec.clone()).await.map_err(fail)?;
                    installed.push(Held {
                        step: planned.step,
                        round: planned.round,
                        id,
                        description: fault.description.clone(),
                    });
                    row.fault_ids.push(id);
                    row.faults.push(fault.description.clone());
                }
                clock.stamp(&mut row);
                report(&row);
                return Ok(());
            }
            (StepAction::Add(_), _) => {
                let (index, round) = (planned.step, planned.round);
                Box::new(move |f| f.step == index && f.round == round)
            }
            (StepAction::RemoveStep(number), _) => {
                let index = number - 1;
                Box::new(move |f| f.step == index)
            }
            (StepAction::RemoveAll, _) => Box::new(|_| true),
        };
        let (going, staying) = installed.drain(..).partition(|f| leaving(f));
        *installed = staying;
        let removed = remove_all(api, going, &mut row).await;
        clock.stamp(&mut row);
        report(&row);
        removed.map_err(fail)
    }

    /// Removes what the run still holds; the last row of every run.
    async fn heal<A: FaultApi>(
        &self,
        api: &A,
        clock: &Clock,
        installed: Installed,
        note: String,
        report: &mut impl FnMut(&StepRow),
    ) -> Result<(), RunError> {
        let mut row = self.row(RowEvent::Heal, None, self.heal_at);
        row.note = Some(note);
        let removed = remove_all(api, installed, &mut row).await;
        clock.stamp(&mut row);
        report(&row);
        removed.map_err(|status| RunError {
            context: "heal".into(),
            status,
        })
    }
}

/// Removes every fault of `faults`, recording each in `row`. A fault that is gone already
/// (its session ended, someone cleared it) is no error; the first other error is returned
/// after trying the rest.
async fn remove_all<A: FaultApi>(
    api: &A,
    faults: Installed,
    row: &mut StepRow,
) -> Result<(), tonic::Status> {
    let mut first_error = None;
    for Held {
        id, description, ..
    } in faults
    {
        match api.remove(id).await {
            Ok(()) => {}
            Err(status) if status.code() == tonic::Code::NotFound => {}
            Err(status) => {
                first_error.get_or_insert(status);
                continue;
            }
        }
        row.fault_ids.push(id);
        row.faults.push(description);
    }
    first_error.map_or(Ok(()), Err)
}
