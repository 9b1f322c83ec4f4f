//! `cargo xtask vm-test`: the kernel matrix. The system tests run on this machine's kernel and
//! again inside a VM on Debian's 6.1 kernel (qemu with TCG, since KVM does not work on these
//! machines), where `sch_fq` exists so delay and rate are measured end to end, and where TC
//! programs attach through clsact because 6.1 has no TCX.
//!
//! Everything is cached under `target/vm/`: the extracted kernel package, stripped binaries,
//! the initramfs, and the logs (`target/vm/logs/`).

mod initramfs;
mod kernel;
mod qemu;
mod report;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use initramfs::{Archive, Init, TestRun, marker};
use report::{Column, Outcome};

/// Areas (modules of the system tests' binary, `tests/integration/AREA.rs`) the VM cannot
/// run, and why; they still run on the host. Left out with a filter, and shown as "not run".
const NOT_IN_VM: &[(&str, &str)] = &[
    (
        "auth",
        "creates users with useradd, groupadd and userdel, which the VM's busybox userland has \
         not (TCP callers identified through sock_diag are checked there by grpc_status, \
         concurrency and cli)",
    ),
    (
        "resources",
        "opens 4000 connections and weighs faultd's memory: a load test of faultd itself, not \
         of the kernel, that takes over five minutes on the VM's emulated CPU",
    ),
    (
        "reconnect",
        "needs Python with grpcio, which the VM's busybox userland has not",
    ),
    // Userspace only: what they check does not depend on the kernel, and this machine's
    // column runs them; the VM's minutes go to what only 6.1 can show.
    (
        "config",
        "faultd's configuration file and --check-config: userspace only, run on this machine",
    ),
    (
        "client",
        "the Rust client's builders and guards: userspace only, run on this machine",
    ),
    (
        "session",
        "faultd's sessions (a client's faults go with its stream): userspace only, run on \
         this machine",
    ),
    (
        "scenario_run",
        "faultctl run's schedule and interruption: userspace only, run on this machine",
    ),
];
/// Single tests the VM leaves out (libtest `--skip`), and why.
const SKIPPED_IN_VM: &[(&str, &str)] = &[
    (
        "daemon::two_faultd_racing_for_one_interface_never_both_win",
        "the interface lock is a file lock, not the kernel's: run on this machine",
    ),
    (
        "daemon::a_starter_that_opened_the_lock_file_before_the_holder_exited_loses",
        "the interface lock is a file lock, not the kernel's: run on this machine",
    ),
];
/// Areas the VM runs first: the measurements only the VM can make.
const FIRST_IN_VM: &[&str] = &["degrade"];
/// Programs from this machine the tests call (iproute2, util-linux's `setpriv`,
/// prometheus's `promtool`, which checks faultd's metrics, and the many-node test's etcd),
/// copied into the VM in place of busybox's smaller versions.
const PROGRAMS: &[&str] = &["ip", "tc", "setpriv", "promtool", "etcd", "etcdctl"];

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Only these areas, comma-separated: a module of the system tests
    /// (fault-daemon/tests/integration/NAME.rs) or `programs` (the program tests).
    #[arg(long, value_delimiter = ',')]
    pub tests: Vec<String>,
    /// Do not run the tests on this machine's kernel, only in the VM.
    #[arg(long)]
    pub no_host: bool,
    /// Seconds one area may take (in the VM and on the host) before it is killed.
    #[arg(long, default_value_t = 1800)]
    pub test_timeout: u64,
    /// Seconds the whole VM run may take before qemu is stopped.
    #[arg(long, default_value_t = 5400)]
    pub vm_timeout: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            tests: Vec::new(),
            no_host: false,
            test_timeout: 1800,
            vm_timeout: 5400,
        }
    }
}

/// Runs the matrix and prints its table; fails when any test failed on any kernel.
pub fn run(opts: &Options) -> anyhow::Result<()> {
    prepare(opts)?.run()
}

/// A matrix ready to run: the tests built, the kernel fetched, the initramfs written.
pub struct Prepared {
    opts: Options,
    started: Instant,
    root: PathBuf,
    logs: PathBuf,
    build: Build,
    kernel: kernel::Kernel,
    initrd: PathBuf,
    /// Held until the run is over: one run at a time.
    _lock: File,
}

/// Everything before the VM boots: setup, the build (`cargo test --workspace --no-run`,
/// the same artifacts `cargo test --workspace` runs), the kernel and the initramfs. After
/// it, the run needs no cargo: `cargo xtask test` runs the host's tests meanwhile.
pub fn prepare(opts: &Options) -> anyhow::Result<Prepared> {
    let started = Instant::now();
    crate::setup::vm()?;
    let root = crate::workspace_root();
    let vm_dir = root.join("target/vm");
    let logs = vm_dir.join("logs");
    fs::create_dir_all(&logs)?;
    // One run at a time: runs share the initramfs, the logs and the machine's two cores.
    let lock = File::create(vm_dir.join("lock"))?;
    if lock.try_lock().is_err() {
        eprintln!("xtask: another vm-test is running; waiting for it to finish");
        lock.lock().context("locking target/vm")?;
    }

    let build = build(&opts.tests)?;
    let kernel = kernel::fetch(&vm_dir)?;

    let plan = vm_plan(&build.tests);
    let initrd = vm_dir.join(format!("initramfs-{}.cpio", kernel.release));
    let t = Instant::now();
    let size = initramfs(&build, &plan, &kernel, &vm_dir, opts, &initrd)?;
    eprintln!(
        "xtask: initramfs {} ({} MB) in {:.1} s",
        initrd.display(),
        size / 1_000_000,
        t.elapsed().as_secs_f64()
    );
    Ok(Prepared {
        opts: opts.clone(),
        started,
        root,
        logs,
        build,
        kernel,
        initrd,
        _lock: lock,
    })
}

impl Prepared {
    /// Boots the VM, runs the areas there (and on this machine unless `--no-host`), prints
    /// the table; fails when any test failed on any kernel.
    pub fn run(self) -> anyhow::Result<()> {
        let Self {
            opts,
            started,
            root,
            logs,
            build,
            kernel,
            initrd,
            _lock,
        } = self;
        let opts = &opts;
        let label = kernel.release.clone();
        let log = logs.join(format!("{label}.log"));
        eprintln!(
            "xtask: booting Debian's {label} in qemu (TCG); console in {}",
            log.display()
        );
        let boot = qemu::boot(
            &kernel.image,
            &initrd,
            &label,
            Duration::from_secs(opts.vm_timeout),
            &log,
        )?;
        let vm_column = vm_column(&kernel, &build.tests, &boot, &log);

        let mut columns = Vec::new();
        if !opts.no_host {
            columns.push(host_column(&build.tests, &root, &logs, opts)?);
        }
        columns.push(vm_column);

        print!("{}", report::render(&columns));
        eprintln!(
            "xtask: vm-test took {:.0} s (VM: boot {}, whole run {:.0} s)",
            started.elapsed().as_secs_f64(),
            boot.boot
                .map_or_else(|| "-".to_string(), |b| format!("{:.1} s", b.as_secs_f64())),
            boot.elapsed.as_secs_f64()
        );
        let totals = report::totals(&columns);
        if totals.failed > 0 {
            bail!(
                "{} test(s) failed in the kernel matrix (logs in {})",
                totals.failed,
                logs.display()
            );
        }
        Ok(())
    }
}

struct Build {
    tests: Vec<TestBin>,
    faultd: PathBuf,
    faultctl: PathBuf,
}

/// One row of the matrix: an area of fault-daemon's tests, run as one libtest process.
struct TestBin {
    /// The area: a module of the system tests' binary, or `programs`.
    name: String,
    exe: PathBuf,
    /// The libtest filter that picks the area's tests out of its binary (`degrade::`), if
    /// the binary has more than one area.
    filter: Option<String>,
    /// Its tests, from `--list`.
    tests: Vec<String>,
}

impl TestBin {
    /// libtest's arguments for running the area.
    fn args(&self) -> Vec<String> {
        let mut args = vec!["--test-threads=1".to_string(), "--nocapture".to_string()];
        args.extend(self.filter.clone());
        args
    }

    /// The same in the VM, leaving out [`SKIPPED_IN_VM`].
    fn vm_args(&self) -> Vec<String> {
        let mut args = self.args();
        for (test, _) in self.skipped_in_vm() {
            // A substring, as libtest's filters are (`--exact` would apply to the area's
            // filter too): the full path names one test.
            args.extend(["--skip".to_string(), test.to_string()]);
        }
        args
    }

    fn skipped_in_vm(&self) -> impl Iterator<Item = &(&'static str, &'static str)> {
        SKIPPED_IN_VM
            .iter()
            .filter(|(t, _)| self.tests.iter().any(|mine| mine == t))
    }
}

/// The test binaries of fault-daemon (cargo's test targets: `tests/integration`, the system
/// tests, one module per area; `tests/programs`, the program tests).
const BINARIES: &[&str] = &["integration", "programs"];
/// The binary whose modules are areas of their own.
const AREAS_BINARY: &str = "integration";

/// The binaries the VM runs, in order.
fn vm_plan(tests: &[TestBin]) -> Vec<&TestBin> {
    let mut plan: Vec<&TestBin> = tests
        .iter()
        .filter(|b| !NOT_IN_VM.iter().any(|(n, _)| *n == b.name))
        .collect();
    plan.sort_by_key(|b| !FIRST_IN_VM.contains(&b.name.as_str()));
    plan
}

/// `cargo test --no-run` for fault-daemon's test binaries; their paths (and faultd's, which
/// the tests reference by absolute path) come from cargo's JSON messages. faultctl, a crate
/// of its own, is built first; the tests look for it beside faultd. The areas are the
/// binaries' (the system tests' modules, from `--list`), or those of `only`.
fn build(only: &[String]) -> anyhow::Result<Build> {
    crate::cargo(&["build", "--package", "faultctl"])?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    // The whole workspace's tests, as `cargo test --workspace` builds them: the same
    // artifacts, so that `cargo xtask test` builds them once for both columns.
    cmd.args([
        "test",
        "--workspace",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    let out = cmd
        .current_dir(crate::workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the test binaries failed ({})", out.status);
    }
    let mut tests: Vec<TestBin> = Vec::new();
    let mut faultd = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        let name = msg["target"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let kinds = msg["target"]["kind"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let is = |k: &str| kinds.iter().any(|v| v == k);
        let ours = msg["target"]["src_path"]
            .as_str()
            .is_some_and(|p| p.contains("/fault-daemon/tests/"));
        if is("test") && ours && BINARIES.contains(&name.as_str()) {
            let exe = PathBuf::from(exe);
            let listed = list_tests(&exe)?;
            if name == AREAS_BINARY {
                let mut areas: Vec<String> = listed
                    .iter()
                    .filter_map(|t| t.split_once("::").map(|(m, _)| m.to_string()))
                    .collect();
                areas.dedup();
                for area in areas {
                    let prefix = format!("{area}::");
                    tests.push(TestBin {
                        tests: listed
                            .iter()
                            .filter(|t| t.starts_with(&prefix))
                            .cloned()
                            .collect(),
                        filter: Some(prefix),
                        name: area,
                        exe: exe.clone(),
                    });
                }
            } else {
                tests.push(TestBin {
                    tests: listed,
                    filter: None,
                    name,
                    exe,
                });
            }
        } else if is("bin") && msg["profile"]["test"] == false {
            if name == "faultd" {
                faultd = Some(PathBuf::from(exe));
            }
        }
    }
    tests.sort_by(|a, b| a.name.cmp(&b.name));
    if !only.is_empty() {
        let names: Vec<&str> = tests.iter().map(|t| t.name.as_str()).collect();
        for n in only {
            if !names.contains(&n.as_str()) {
                bail!(
                    "no area {n}: fault-daemon's tests have {}",
                    names.join(", ")
                );
            }
        }
        tests.retain(|t| only.contains(&t.name));
    }
    let faultd: PathBuf = faultd.context("cargo built no faultd binary")?;
    let faultctl = faultd.with_file_name("faultctl");
    if !faultctl.is_file() {
        bail!("no faultctl beside faultd at {}", faultctl.display());
    }
    Ok(Build {
        tests,
        faultd,
        faultctl,
    })
}

/// The tests of a libtest binary (`--list --format terse`: `name: test` lines).
fn list_tests(exe: &Path) -> anyhow::Result<Vec<String>> {
    let out = Command::new(exe)
        .args(["--list", "--format", "terse"])
        .output()
        .with_context(|| format!("{} --list", exe.display()))?;
    if !out.status.success() {
        bail!("{} --list failed", exe.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_string)
        .collect())
}

fn initramfs(
    build: &Build,
    plan: &[&TestBin],
    kernel: &kernel::Kernel,
    vm_dir: &Path,
    opts: &Options,
    out: &Path,
) -> anyhow::Result<u64> {
    let stage = vm_dir.join("stage");
    let mut a = Archive::default();
    for d in [
        "/proc",
        "/sys",
        "/dev",
        "/run",
        "/tmp",
        "/root",
        "/etc",
        "/bin",
        "/sbin",
        "/usr/bin",
        "/usr/sbin",
    ] {
        a.dir(d);
    }
    a.symlink("/var/run", "/run");
    a.bytes("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644);
    a.bytes("/etc/group", "root:x:0:\n", 0o644);
    a.bytes("/etc/hosts", "127.0.0.1 localhost\n::1 localhost\n", 0o644);
    initramfs::busybox(&mut a, PROGRAMS)?;
    for p in PROGRAMS {
        let path = which(p)?;
        a.program(&path.to_string_lossy(), &path)?;
    }
    // faultd and faultctl where the tests expect them (CARGO_BIN_EXE_faultd is an absolute
    // path; faultctl is beside it).
    for bin in [&build.faultd, &build.faultctl] {
        a.program(&bin.to_string_lossy(), &initramfs::stripped(bin, &stage)?)?;
    }
    let mut runs = Vec::new();
    let mut copied: Vec<&Path> = Vec::new();
    for bin in plan {
        // One copy of each binary, whatever the number of its areas.
        let file = bin.exe.file_name().unwrap_or_default().to_string_lossy();
        let path = format!("/vm-tests/{file}");
        if !copied.contains(&bin.exe.as_path()) {
            a.program(&path, &initramfs::stripped(&bin.exe, &stage)?)?;
            copied.push(&bin.exe);
        }
        runs.push(TestRun {
            name: bin.name.clone(),
            path,
            args: bin.vm_args().join(" "),
        });
    }
    let mut modules = Vec::new();
    for m in &kernel.modules {
        let path = format!(
            "/lib/modules/{}/{}",
            kernel.release,
            m.file_name().unwrap().to_string_lossy()
        );
        a.file(&path, m, 0o644);
        modules.push(path);
    }
    let workdir = crate::workspace_root().join("fault-daemon");
    let workdir = workdir.to_string_lossy();
    a.dir(&workdir);
    let init = initramfs::init_script(&Init {
        modules: &modules,
        tests: &runs,
        workdir: &workdir,
        test_timeout_secs: opts.test_timeout,
        ready_secs: 240,
    });
    a.bytes("/init", init, 0o755);
    a.write(out)
}

fn which(program: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
        .with_context(|| format!("{program} is not installed (iproute2)"))
}

/// The VM's column: each binary's output between its markers.
fn vm_column(kernel: &kernel::Kernel, tests: &[TestBin], boot: &qemu::Boot, log: &Path) -> Column {
    let mut sections: Vec<(String, Vec<String>, Option<i32>)> = Vec::new();
    let mut open: Option<(String, Vec<String>)> = None;
    let mut booted = false;
    let mut failed_modules = Vec::new();
    for line in &boot.lines {
        if let Some(rest) = marker(line) {
            let words: Vec<&str> = rest.split_whitespace().collect();
            match words.as_slice() {
                ["booted", ..] => booted = true,
                ["module-failed", m, ..] => failed_modules.push(m.to_string()),
                ["begin", name, ..] => open = Some((name.to_string(), Vec::new())),
                ["end", name, rc, ..] => {
                    if let Some((n, lines)) = open.take() {
                        let rc = rc.parse::<i32>().ok().filter(|&c| c != 137);
                        sections.push((n, lines, rc));
                    } else {
                        sections.push((name.to_string(), Vec::new(), None));
                    }
                }
                _ => {}
            }
            continue;
        }
        if let Some((_, lines)) = &mut open {
            lines.push(line.clone());
        }
    }
    if let Some((n, lines)) = open.take() {
        // The VM stopped in the middle of this binary.
        sections.push((n, lines, None));
    }
    let mut results = Vec::new();
    for bin in tests {
        let name = &bin.name;
        let total = bin.tests.len() as u32;
        if let Some((_, why)) = NOT_IN_VM.iter().find(|(n, _)| n == name) {
            results.push((name.clone(), Outcome::not_run(total, why)));
            continue;
        }
        let outcome = match sections.iter().find(|(n, _, _)| n == name) {
            Some((_, lines, rc)) => {
                let mut outcome = report::parse(lines, *rc);
                let left_out: Vec<&str> = bin.skipped_in_vm().map(|(_, why)| *why).collect();
                if !left_out.is_empty() {
                    outcome.not_run += left_out.len() as u32;
                    outcome.not_run_why =
                        Some(format!("{} left out: {}", left_out.len(), left_out[0]));
                }
                // Skips are checked against what this kernel may lack (the VM's 6.1 has
                // sch_fq: nothing that needs fq may skip there).
                outcome.check_skips(&kernel.release, |t| {
                    test_harness::skip::is_allowed(&kernel.release, t)
                });
                outcome
            }
            None if !booted => Outcome::broken(format!(
                "not run: the VM did not boot (see {})",
                log.display()
            )),
            None if boot.timed_out => {
                Outcome::broken("not reached: the VM ran out of time".to_string())
            }
            None => Outcome::broken("not run: the VM stopped before it".to_string()),
        };
        results.push((name.clone(), outcome));
    }
    // A module that did not load leaves the tests that need it skipping or failing for
    // the wrong reason: the run fails, whatever they did.
    if !failed_modules.is_empty() {
        results.push((
            "(modules)".to_string(),
            Outcome::broken(format!(
                "insmod failed: {}; see {}",
                failed_modules.join(", "),
                log.display()
            )),
        ));
    }
    let mut note = vec![format!(
        "{} in qemu TCG: boot {}, whole run {:.0} s",
        kernel.package,
        boot.boot
            .map_or_else(|| "-".to_string(), |b| format!("{:.1} s", b.as_secs_f64())),
        boot.elapsed.as_secs_f64()
    )];
    if !failed_modules.is_empty() {
        note.push(format!("insmod failed: {}", failed_modules.join(", ")));
    }
    Column {
        kernel: kernel.release.clone(),
        how: "VM (qemu TCG)".into(),
        results,
        note: Some(note.join("; ")),
    }
}

/// This machine's column: the same binaries, run the same way, one after the other.
fn host_column(
    tests: &[TestBin],
    root: &Path,
    logs: &Path,
    opts: &Options,
) -> anyhow::Result<Column> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let mut results = Vec::new();
    for bin @ TestBin { name, exe, .. } in tests {
        eprintln!("xtask: [host] running {name}");
        let started = Instant::now();
        let log = logs.join(format!("host-{name}.log"));
        let file = File::create(&log)?;
        let mut child = Command::new(exe)
            .args(bin.args())
            .current_dir(root.join("fault-daemon"))
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let deadline = Instant::now() + Duration::from_secs(opts.test_timeout);
        let code = loop {
            if let Some(status) = child.try_wait()? {
                break status.code();
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "xtask: [host] {name} still running after {} s: killing pid {}",
                    opts.test_timeout,
                    child.id()
                );
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        eprintln!(
            "xtask: [host] {name} finished in {:.0} s (exit {})",
            started.elapsed().as_secs_f64(),
            code.map_or_else(|| "killed".to_string(), |c| c.to_string())
        );
        let lines: Vec<String> = fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        let mut outcome = report::parse(&lines, code);
        outcome.check_skips(&release, |t| test_harness::skip::is_allowed(&release, t));
        results.push((name.clone(), outcome));
    }
    Ok(Column {
        kernel: release,
        how: "this machine".into(),
        results,
        note: None,
    })
}

/// Runs a command that must succeed, its output going to the terminal.
pub fn loud(cmd: &mut Command) -> anyhow::Result<()> {
    let what = format!("{cmd:?}");
    let status = cmd.status().with_context(|| what.clone())?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}
