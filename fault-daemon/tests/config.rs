//! System tests of `faultd --config` and `faultd --check-config`: a `[[fault]]` from the
//! file is installed at start and acts; a typo is reported at its line and column by an
//! unprivileged `--check-config`; the repository's example file checks.

mod harness;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use harness::*;

/// A file in a directory anyone may read, removed on drop (for `--check-config` as nobody).
struct ConfigFile {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl ConfigFile {
    fn new(text: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("faultd.toml");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        Self { dir, path }
    }

    fn arg(&self) -> &str {
        let _ = &self.dir;
        self.path.to_str().unwrap()
    }
}

/// `faultd --check-config FILE` as the unprivileged user nobody (when we are root, so
/// that the check demonstrably needs no privilege), else as ourselves.
fn check_config(file: &Path) -> Output {
    let mut cmd = if test_harness::is_root() {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            FAULTD,
        ]);
        cmd
    } else {
        Command::new(FAULTD)
    };
    cmd.arg("--check-config").arg(file).output().unwrap()
}

/// faultd started with only `--config`: the file names the interface, and its
/// `[[fault]]` is listed, owned by faultd, and drops datagrams to its port.
#[test]
fn a_fault_from_the_config_file_is_installed_and_acts() {
    if !require_root() {
        return;
    }
    let file = ConfigFile::new(
        r#"
interfaces = ["lo"]

[[fault]]
action = "drop"
port = 5353
protocol = "udp"
label = "from-config"
"#,
    );
    let ns = Netns::new("conf");
    let _daemon = Daemon::try_start(&ns, &[], &["--config", file.arg()])
        .unwrap_or_else(|log| panic!("faultd --config did not start: {log}"));
    let faults = ns.faults_json();
    let listed = faults.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{faults}");
    assert_eq!(listed[0]["label"], "from-config", "{faults}");
    assert_eq!(listed[0]["port"], 5353, "{faults}");
    let (to_fault, to_other) = ns.run(|| (udp_delivers(5353), udp_delivers(5354)));
    assert!(!to_fault, "the configured drop lets datagrams through");
    assert!(to_other, "another port must still deliver");
}

/// A fault the daemon refuses at start (one on its own API port) stops the start with
/// the entry's position.
#[test]
fn a_refused_fault_in_the_file_stops_the_start_with_its_position() {
    if !require_root() {
        return;
    }
    let file =
        ConfigFile::new("interfaces = [\"lo\"]\n\n[[fault]]\naction = \"drop\"\nport = 7447\n");
    let ns = Netns::new("confr");
    let log = Daemon::try_start(&ns, &[], &["--config", file.arg()])
        .err()
        .expect("faultd refuses to start");
    let position = format!("{}:3:1: fault:", file.arg());
    assert!(log.contains(&position), "{log}");
}

/// A typo is an error at its line and column, from a user without privileges.
#[test]
fn check_config_reports_a_typo_with_line_and_column() {
    let file = ConfigFile::new("interfaces = [\"lo\"]\n\n[access]\nno_auht = true\n");
    let out = check_config(&file.path);
    assert!(!out.status.success(), "{out:?}");
    let stderr = stderr_text(&out);
    let at = format!("{}:4:1: unknown field `no_auht`", file.arg());
    assert!(stderr.contains(&at), "{stderr}");

    let file = ConfigFile::new("[[fault]]\naction = \"drop\"\nport = 80\nfor = \"soon\"\n");
    let out = check_config(&file.path);
    assert!(!out.status.success());
    let stderr = stderr_text(&out);
    assert!(
        stderr.contains(&format!("{}:4:7: ", file.arg())),
        "{stderr}"
    );
}

/// The repository's example configuration checks, without privileges.
#[test]
fn the_example_config_checks() {
    // Read at build time: the VM that runs this binary has no checkout.
    let example = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/faultd.toml"
    ));
    let file = ConfigFile::new(example);
    let out = check_config(&file.path);
    assert!(out.status.success(), "{}", stderr_text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(": ok (1 interface(s), 2 fault(s))"),
        "{stdout}"
    );
}
