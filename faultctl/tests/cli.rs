//! faultctl without a daemon: completions, the man page, `version`, and the exit codes that
//! need no daemon (0, 1, 2). Codes 3 and 4 (refused by faultd, backoff FAIL) need a real
//! faultd: fault-daemon/tests/integration/cli.rs.

use std::process::{Command, Output};

const FAULTCTL: &str = env!("CARGO_BIN_EXE_faultctl");

fn faultctl(args: &[&str]) -> Output {
    Command::new(FAULTCTL)
        .args(args)
        // Neither the environment nor a daemon on this machine may steer the outcome.
        .env_remove("FAULTD_ADDR")
        .env_remove("FAULTD_TLS_CA")
        .env_remove("FAULTD_TLS_CERT")
        .env_remove("FAULTD_TLS_KEY")
        .output()
        .expect("run faultctl")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An address where no faultd answers: a socket path that does not exist.
fn nowhere() -> String {
    let dir = std::env::temp_dir().join(format!("faultctl-test-{}", std::process::id()));
    format!("unix:{}", dir.join("none.sock").display())
}

/// The subcommands a completion script and the man page must know.
const SUBCOMMANDS: &[&str] = &[
    "drop",
    "reset",
    "refuse",
    "limit-bytes",
    "limit-age",
    "record",
    "loss",
    "delay",
    "rate",
    "corrupt",
    "duplicate",
    "stall",
    "doctor",
    "events",
    "backoff",
    "partition",
    "list",
    "rm",
    "clear",
    "stats",
    "version",
    "health",
    "completions",
    "man",
];

#[test]
fn bash_completion_knows_every_subcommand_and_option() {
    let out = faultctl(&["completions", "bash"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let script = stdout(&out);
    assert!(
        script.contains("_faultctl()"),
        "no completion function:\n{script}"
    );
    assert!(script.contains("complete -F _faultctl"), "{script}");
    for sub in SUBCOMMANDS {
        assert!(script.contains(sub), "bash completion lacks {sub}");
    }
    for option in ["--port", "--direction", "to-port", "from-port", "--json"] {
        assert!(script.contains(option), "bash completion lacks {option}");
    }
    // The script is valid bash.
    if let Ok(check) = Command::new("bash")
        .arg("-n")
        .arg("-c")
        .arg(&script)
        .output()
    {
        assert!(check.status.success(), "bash -n: {}", stderr(&check));
    }
}

#[test]
fn completions_for_other_shells_generate() {
    for (shell, marker) in [
        ("zsh", "#compdef faultctl"),
        ("fish", "complete -c faultctl"),
    ] {
        let out = faultctl(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", stderr(&out));
        assert!(stdout(&out).contains(marker), "{shell}:\n{}", stdout(&out));
    }
    let out = faultctl(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(1), "an unknown shell is bad input");
}

#[test]
fn the_man_page_renders_as_roff() {
    let out = faultctl(&["man"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let page = stdout(&out);
    let th = page
        .lines()
        .find(|l| l.starts_with(".TH "))
        .unwrap_or_else(|| panic!("no .TH header:\n{page}"));
    assert!(
        th.starts_with(".TH faultctl 1") && th.contains(env!("CARGO_PKG_VERSION")),
        "{th}"
    );
    assert!(page.contains(".SH NAME"), "{page}");
    assert!(page.contains("faultctl \\- Drive faultd"), "{page}");
    assert!(page.contains(".SH SUBCOMMANDS"), "{page}");
    for sub in [
        "faultctl\\-drop",
        "faultctl\\-backoff",
        "faultctl\\-version",
    ] {
        assert!(page.contains(sub), "the man page lacks {sub}");
    }
}

#[test]
fn version_without_a_daemon_prints_the_client_and_exits_2() {
    let addr = nowhere();
    let out = faultctl(&["--addr", &addr, "version"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("faultctl {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(text.contains("unreachable"), "{text}");
    assert!(
        stderr(&out).contains("no faultd answers"),
        "{}",
        stderr(&out)
    );

    let out = faultctl(&["--addr", &addr, "--json", "version"]);
    assert_eq!(out.status.code(), Some(2));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["client"], env!("CARGO_PKG_VERSION"));
    assert!(json["daemon"].is_null(), "{json}");
}

#[test]
fn exit_0_for_help_and_version_flags() {
    for args in [
        &["--help"][..],
        &["--version"],
        &["drop", "--help"],
        &["help"],
    ] {
        let out = faultctl(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert!(!out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn exit_1_for_bad_input() {
    let addr = nowhere();
    let cases: &[&[&str]] = &[
        &["drop", "--port", "70000"],
        &["drop", "--port", "0"],
        &["drop"],
        &["no-such-verb"],
        &[],
        &["loss", "--port", "80", "--percent", "x"],
        &["drop", "--port", "80", "--direction", "sideways"],
        &["drop", "--port", "80", "--for", "soon"],
        &[
            "limit-bytes",
            "--port",
            "80",
            "--bytes",
            "1",
            "--then",
            "explode",
        ],
        // Checked by faultctl before it connects: TLS files without the CA.
        &[
            "--addr",
            &addr,
            "--tls-cert",
            "a.pem",
            "--tls-key",
            "a.key",
            "list",
        ],
        // ... and a backoff policy that shrinks.
        &[
            "--addr",
            &addr,
            "backoff",
            "--port",
            "80",
            "--multiplier",
            "0.5",
        ],
    ];
    for args in cases {
        let out = faultctl(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).is_empty(), "{args:?} said nothing");
    }
}

#[test]
fn exit_2_when_no_daemon_answers() {
    let addr = nowhere();
    for args in [
        &["list"][..],
        &["drop", "--port", "80"],
        &["events", "--follow"],
    ] {
        let out = faultctl(&[&["--addr", &addr][..], args].concat());
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&format!("no faultd answers at {addr}")),
            "{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

#[test]
fn json_covers_the_commands_that_need_no_daemon() {
    let out = faultctl(&["--json", "completions", "bash"]);
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["format"], "bash");
    assert!(json["text"].as_str().unwrap().contains("_faultctl()"));

    let out = faultctl(&["man", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["format"], "roff");
    assert!(json["text"].as_str().unwrap().contains(".TH faultctl 1"));
}

/// A second address where no faultd answers.
fn nowhere_else() -> String {
    nowhere().replace("none.sock", "none-2.sock")
}

#[test]
fn several_daemons_none_answering_each_named_and_exit_2() {
    let (a, b) = (nowhere(), nowhere_else());
    let out = faultctl(&["--addr", &a, "--addr", &b, "--json", "list"]);
    // Every node unreachable: the code one unreachable daemon gives.
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    for node in [&a, &b] {
        assert!(
            err.contains(&format!("faultctl: {node}: no faultd answers")),
            "{err}"
        );
    }
    assert!(err.contains("2 of 2 daemons failed"), "{err}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let nodes: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            assert!(item["error"].as_str().is_some(), "{item}");
            item["node"].as_str().unwrap()
        })
        .collect();
    assert_eq!(nodes, [a.as_str(), b.as_str()]);
}

#[test]
fn a_hosts_file_names_the_daemons() {
    let dir = std::env::temp_dir().join(format!("faultctl-hosts-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hosts = dir.join("hosts");
    let (a, b) = (nowhere(), nowhere_else());
    std::fs::write(&hosts, format!("# two nodes\n{a}\n\n{b}  # the second\n")).unwrap();
    let out = faultctl(&["--hosts", hosts.to_str().unwrap(), "drop", "--port", "80"]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("faultctl: {a}:")) && err.contains(&format!("faultctl: {b}:")),
        "{err}"
    );
}

#[test]
fn several_daemons_bad_input_is_exit_1_before_any_daemon() {
    let (a, b) = (nowhere(), nowhere_else());
    let cases: &[&[&str]] = &[
        // Fault ids are per daemon.
        &["--addr", &a, "--addr", &b, "rm", "1"],
        &["--addr", &a, "--addr", &b, "stats"],
        &["--addr", &a, "--addr", &b, "drop", "--port", "80", "--hold"],
        &["--addr", &a, "--addr", &a, "list"],
        &["--hosts", "/nonexistent/faultd-hosts", "list"],
        &["--addr", "node-a=10.0.0.1:7447", "--addr", &b, "list"],
        // A partition needs every node's own IP, and two sides.
        &[
            "--addr",
            &a,
            "--addr",
            &b,
            "partition",
            "--port",
            "2380",
            "--isolate",
            "198.18.0.1",
        ],
        &[
            "--addr",
            &format!("198.18.0.1={a}"),
            "--addr",
            &format!("198.18.0.2={b}"),
            "partition",
            "--port",
            "2380",
            "--isolate",
            "198.18.0.9",
        ],
    ];
    for args in cases {
        let out = faultctl(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        // Refused as a whole: no node was asked.
        assert!(!err.contains("no faultd answers"), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
}
