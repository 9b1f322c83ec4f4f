//! Boots a kernel and initramfs in `qemu-system-x86_64` with TCG (no KVM on these machines)
//! and collects the serial console. The VM has no network device: nothing it does leaves it.

use std::fs::File;
use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::initramfs::marker;

pub struct Boot {
    /// The console, line by line (without `\r`).
    pub lines: Vec<String>,
    /// From starting qemu to `/init` having loaded the modules.
    pub boot: Option<Duration>,
    pub elapsed: Duration,
    /// The VM did not power off within the time limit and was killed.
    pub timed_out: bool,
}

/// Runs the VM until it powers off or `timeout` passes (then qemu is killed by its PID).
/// The console goes to `log`; marker lines are echoed as progress on stderr.
pub fn boot(
    vmlinuz: &Path,
    initrd: &Path,
    label: &str,
    timeout: Duration,
    log: &Path,
) -> anyhow::Result<Boot> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "2"])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet loglevel=1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .context("starting qemu-system-x86_64 (the qemu-system-x86 package)")?;
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let readers = [
        spawn_reader(Box::new(stdout), tx.clone()),
        spawn_reader(Box::new(stderr), tx),
    ];
    let mut log = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let deadline = started + timeout;
    let mut lines = Vec::new();
    let mut boot = None;
    let mut timed_out = false;
    let mut test_started = Instant::now();
    loop {
        let now = Instant::now();
        if now >= deadline {
            timed_out = true;
            break;
        }
        match rx.recv_timeout(deadline - now) {
            Ok(line) => {
                writeln!(log, "{line}").ok();
                if let Some(rest) = marker(&line) {
                    let mut words = rest.split_whitespace();
                    match words.next() {
                        Some("booted") => {
                            let at = started.elapsed();
                            boot = Some(at);
                            eprintln!("xtask: [{label}] booted in {:.1} s", at.as_secs_f64());
                        }
                        Some("begin") => {
                            test_started = Instant::now();
                            eprintln!("xtask: [{label}] running {}", words.next().unwrap_or("?"));
                        }
                        Some("end") => eprintln!(
                            "xtask: [{label}] {} finished in {:.0} s (exit {})",
                            words.next().unwrap_or("?"),
                            test_started.elapsed().as_secs_f64(),
                            words.next().unwrap_or("?"),
                        ),
                        Some("module-failed") => eprintln!(
                            "xtask: [{label}] insmod {} failed",
                            words.next().unwrap_or("?")
                        ),
                        _ => {}
                    }
                }
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                break;
            }
            // Both pipes closed: qemu exited.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if timed_out {
        eprintln!(
            "xtask: [{label}] no power-off within {} s: stopping qemu (pid {})",
            timeout.as_secs(),
            child.id()
        );
        // Child::kill sends SIGKILL to this child's PID.
        let _ = child.kill();
    }
    let status = child.wait().context("waiting for qemu")?;
    for r in readers {
        let _ = r.join();
    }
    // Lines that arrived between the deadline and qemu's end.
    while let Ok(line) = rx.try_recv() {
        writeln!(log, "{line}").ok();
        lines.push(line);
    }
    if !timed_out && !status.success() {
        writeln!(log, "qemu exited with {status}").ok();
    }
    Ok(Boot {
        lines,
        boot,
        elapsed: started.elapsed(),
        timed_out,
    })
}

fn spawn_reader(
    pipe: Box<dyn Read + Send>,
    tx: mpsc::Sender<String>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end_matches(['\n', '\r']).replace('\r', "");
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    })
}
