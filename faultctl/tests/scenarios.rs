//! `faultctl run --check`: scenario files checked without a daemon — the examples in
//! examples/scenarios/ pass, and mistakes are one line naming file:line:column and the
//! field, with exit code 1. Running scenarios against a real faultd:
//! fault-daemon/tests/integration/scenario_run.rs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FAULTCTL: &str = env!("CARGO_BIN_EXE_faultctl");

fn faultctl(args: &[&str]) -> Output {
    Command::new(FAULTCTL)
        .args(args)
        .env_remove("FAULTD_ADDR")
        .output()
        .expect("run faultctl")
}

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/scenarios");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_passes_check() {
    let files = examples();
    let names: Vec<_> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "etcd-partition.toml",
            "flapping-link.toml",
            "slow-network.toml"
        ]
    );
    for file in &files {
        let out = faultctl(&["run", "--check", "--json", file.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows.first().unwrap()["event"], "start");
        assert_eq!(rows.last().unwrap()["event"], "heal");
    }
}

/// The flapping link of the issue: drop 2 s on, 3 s off, five times.
#[test]
fn the_flapping_link_is_five_two_second_outages() {
    let file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/scenarios/flapping-link.toml");
    let out = faultctl(&["--json", "run", "--check", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let timeline: Vec<(String, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["event"].as_str().unwrap().to_string(),
                r["at_ms"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut want = vec![("start".to_string(), 0)];
    for round in 0..5 {
        want.push(("add".into(), round * 5000));
        want.push(("remove".into(), round * 5000 + 2000));
    }
    want.push(("heal".into(), 22_000));
    assert_eq!(timeline, want);
    assert_eq!(rows[1]["faults"][0], "drop port=8080");
}

/// Writes `text` to a file of this test's own and checks it; (exit code, stderr).
fn check_text(name: &str, text: &str) -> (Option<i32>, String) {
    // A directory per test: the tests run at once and each removes its own.
    let dir =
        std::env::temp_dir().join(format!("faultctl-scenarios-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    let out = faultctl(&["run", "--check", path.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let shown = stderr.replace(&format!("{}/", dir.display()), "");
    (out.status.code(), shown)
}

#[test]
fn check_names_line_and_column_of_a_bad_duration() {
    let (code, stderr) = check_text(
        "bad-duration.toml",
        "[[step]]\nat = \"5 seconds later\"\nfault = { action = \"drop\", port = 80 }\n",
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.starts_with(
            "faultctl: bad-duration.toml:2:6: at: \"5 seconds later\" is not a duration"
        ),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn check_names_line_and_column_of_an_unknown_action() {
    let (code, stderr) = check_text(
        "bad-action.toml",
        "name = \"x\"\n\n[[step]]\nat = \"0s\"\nfault = { action = \"blackhole\", port = 80 }\n",
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.starts_with(
            "faultctl: bad-action.toml:5:20: action: \"blackhole\" is not an action (one of drop, reset,"
        ),
        "{stderr}"
    );
}

#[test]
fn check_names_line_and_column_of_a_missing_field() {
    let (code, stderr) = check_text(
        "missing.toml",
        "[[step]]\nat = \"0s\"\nfault = { port = 80 }\n",
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.starts_with("faultctl: missing.toml:3:9: missing field `action`"),
        "{stderr}"
    );
    let (code, stderr) = check_text(
        "no-at.toml",
        "[[step]]\nfault = { action = \"drop\", port = 80 }\n",
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.starts_with("faultctl: no-at.toml:1:1: "), "{stderr}");
    assert!(stderr.contains("missing field `at`"), "{stderr}");
}

#[test]
fn a_missing_file_is_bad_input_naming_it() {
    let out = faultctl(&["run", "--check", "/nonexistent/chaos.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("faultctl: /nonexistent/chaos.toml: "),
        "{stderr}"
    );
}

/// A file with a mistake is refused before any daemon is asked: exit 1, not 2, with no
/// daemon at the address.
#[test]
fn run_checks_the_file_before_connecting() {
    let dir = std::env::temp_dir().join(format!("faultctl-scenarios-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[[step]]\nat = \"0s\"\nremove = \"nothing\"\n").unwrap();
    let addr = format!("unix:{}", dir.join("none.sock").display());
    let out = faultctl(&["--addr", &addr, "run", path.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let good = examples().remove(1);
    let out = faultctl(&["--addr", &addr, "run", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "no daemon: unreachable");
}
