//! The release tarball's tests, in `cargo xtask test` (and alone: `cargo xtask dist-test`):
//!
//! - [`bare_root`]: the tarball unpacked by busybox's tar into a root holding nothing but a
//!   static busybox (Debian's busybox-static): no libc, no Rust, no LLVM. Chrooted there
//!   inside a network namespace of the test's own, `faultd --version` runs and faultd on the
//!   namespace's `lo` faults a real connection, driven by the tarball's faultctl.
//! - [`docker`]: the tarball's Dockerfile built `FROM scratch` by a Docker Engine the test
//!   starts itself (its own data-root, exec-root and socket; stopped by PID), faultd run in a
//!   container on the container's own `lo`, with a client inside the container (docker
//!   exec) and one on the host through the socket published in a bind-mounted directory.
//!
//! Both judge what an application sees: busybox's `nc` echoing through the port, timing out
//! (drop) or getting ECONNREFUSED (refuse), and echoing again once the fault is cleared.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use test_harness::Netns;

use crate::dist::Dist;

/// Debian's busybox-static: the bare root's only program besides the tarball's.
const BUSYBOX: &str = "/bin/busybox";
/// faultd's minimal capabilities (README, "Install"), as setpriv names them.
const MINIMAL_CAPS: &str = "+bpf,+perfmon,+net_admin";
/// Those and CAP_SYS_CHROOT, as /proc/PID/status shows them: bits 39, 38, 12 and 18.
const MINIMAL_CAPS_HEX: &str = "000000c000041000";
/// The port the probes connect to; busybox's `nc` echoes on it.
const PORT: u16 = 5000;

pub fn run(dist: &Dist) -> anyhow::Result<()> {
    crate::setup::dist_test()?;
    let started = Instant::now();
    bare_root(dist)?;
    eprintln!(
        "xtask: dist-test: bare root passed in {:.1?}",
        started.elapsed()
    );
    let started = Instant::now();
    docker(dist)?;
    eprintln!(
        "xtask: dist-test: docker passed in {:.1?}",
        started.elapsed()
    );
    Ok(())
}

/// A directory of the test's own under target/dist-test/, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> anyhow::Result<Self> {
        let dir = crate::workspace_root()
            .join("target/dist-test")
            .join(format!("{name}-{}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            eprintln!("xtask: dist-test: cannot remove {}: {e}", self.0.display());
        }
    }
}

/// The probes and faults, as a busybox shell script: run in the bare root, and (with
/// `FAULTCTL` pointing at the image's) in the container. Every check prints `ok: …`; the
/// first that fails prints `FAIL: …` and exits non-zero.
fn probe_functions() -> String {
    format!(
        r#"
fail() {{ echo "FAIL: $*"; exit 1; }}
# An echo through port {PORT}: prints what came back, or nc's error (ECONNREFUSED…).
probe() {{ echo ping | busybox timeout 5 busybox nc -w 2 127.0.0.1 {PORT} 2>&1; }}
expect_echo() {{
    out=$(probe) || true
    [ "$out" = ping ] || fail "$1: expected the echo, got: $out"
    echo "ok: $1: echoed"
}}
expect_refused() {{
    out=$(probe) && fail "$1: expected ECONNREFUSED, the connection worked: $out"
    case "$out" in *"Connection refused"*) ;; *) fail "$1: expected ECONNREFUSED, got: $out";; esac
    echo "ok: $1: $out"
}}
expect_silence() {{
    out=$(probe) && fail "$1: expected a connect timeout, the connection worked: $out"
    case "$out" in *"refused"*|*"reset"*) fail "$1: expected silence, got: $out";; esac
    echo "ok: $1: no answer ($out)"
}}
"#
    )
}

/// The tarball in a busybox root, chrooted inside a network namespace; see the module doc.
pub fn bare_root(dist: &Dist) -> anyhow::Result<()> {
    let scratch = Scratch::new("root")?;
    let root = scratch.0.join("root");
    for dir in ["bin", "proc", "sys", "dev", "tmp", "run"] {
        fs::create_dir_all(root.join(dir))?;
    }
    fs::copy(BUSYBOX, root.join("bin/busybox")).context("copying Debian's static busybox")?;
    let file_name = dist
        .tarball
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    fs::copy(&dist.tarball, root.join(&file_name)).context("copying the tarball")?;
    let sum = format!("{file_name}.sha256");
    fs::copy(dist.tarball.with_file_name(&sum), root.join(&sum)).context("copying its .sha256")?;
    let script = format!(
        r#"set -u
export PATH=/bin
/bin/busybox --install -s /bin
{probes}
cd / && sha256sum -c {sum} || fail "sha256sum -c {sum}"
tar -xzf {file_name} || fail "busybox tar cannot unpack the tarball"
D=/{name}
[ -e /lib ] && fail "the root has a /lib: the test would not show the binaries are static"
$D/bin/faultd --version || fail "faultd --version"
$D/bin/faultctl --version || fail "faultctl --version"
$D/bin/faultd --check-config $D/etc/faultd/faultd.toml || fail "the example config does not check"
for f in share/man/man1/faultctl.1 share/bash-completion/completions/faultctl \
         share/zsh/site-functions/_faultctl share/fish/vendor_completions.d/faultctl.fish \
         lib/systemd/system/faultd.service Dockerfile README.md LICENSE; do
    [ -s $D/$f ] || fail "the tarball has no $f"
done
grep -q '^ExecStart=/usr/local/bin/faultd --config /usr/local/etc/faultd/faultd.toml$' \
    $D/lib/systemd/system/faultd.service || fail "the unit does not start the installed faultd"
echo "ok: the tarball's files"
$D/bin/faultd --iface lo >/tmp/faultd.log 2>&1 &
FAULTD=$!
trap 'kill $FAULTD 2>/dev/null; wait $FAULTD; echo "faultd exited: $?"' EXIT
i=0
until $D/bin/faultctl list >/dev/null 2>&1; do
    i=$((i+1)); [ $i -lt 1200 ] || {{ cat /tmp/faultd.log; fail "faultd not ready in 120 s"; }}
    kill -0 $FAULTD 2>/dev/null || {{ cat /tmp/faultd.log; fail "faultd exited"; }}
    sleep 0.1
done
grep -q "^CapEff:.*{MINIMAL_CAPS_HEX}$" /proc/$FAULTD/status || fail "faultd runs with other capabilities: $(grep Cap /proc/$FAULTD/status)"
echo "ok: faultd ready on lo, with only CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN (and CAP_SYS_CHROOT)"
nc -ll -p {PORT} -e cat &
SERVER=$!
trap 'kill $SERVER $FAULTD 2>/dev/null; wait $FAULTD; echo "faultd exited: $?"' EXIT
sleep 0.3
expect_echo "before any fault"
$D/bin/faultctl drop --port {PORT} || fail "faultctl drop"
expect_silence "drop"
$D/bin/faultctl clear || fail "faultctl clear"
expect_echo "drop cleared"
$D/bin/faultctl refuse --port {PORT} || fail "faultctl refuse"
expect_refused "refuse"
$D/bin/faultctl list
$D/bin/faultctl clear || fail "faultctl clear"
expect_echo "refuse cleared"
echo "dist-root: all checks passed"
"#,
        probes = probe_functions(),
        name = dist.name,
    );
    fs::write(root.join("test.sh"), script)?;

    let ns = Netns::new("fdt-", "dist")?;
    // `ip netns exec` gives the command a mount namespace of its own (a slave of ours), so
    // the root's /proc, /sys and /dev go away with it. Then the root runs with only the
    // capabilities the README gives as faultd's minimum (and CAP_SYS_CHROOT to get there).
    let mounts = format!(
        "mount -t proc proc \"$1/proc\" && mount -t sysfs sysfs \"$1/sys\" \
         && mount --bind /dev \"$1/dev\" \
         && exec setpriv --bounding-set -all,{MINIMAL_CAPS},+sys_chroot --inh-caps -all -- \
            chroot \"$1\" /bin/busybox sh /test.sh"
    );
    let mut cmd = ns.cmd("sh");
    cmd.args(["-c", &mounts, "dist-root"]).arg(&root);
    // Loading the programs takes seconds per program on a busy machine (the verifier).
    let out = output_within(&mut cmd, Duration::from_secs(300))?;
    print!("{out}");
    ensure!(
        out.contains("dist-root: all checks passed"),
        "the bare-root test failed (its output is above)"
    );
    ensure!(
        out.contains(&format!("faultd {}", env!("CARGO_PKG_VERSION"))),
        "faultd --version did not print its version"
    );
    Ok(())
}

/// Runs `cmd` with its stdout and stderr merged; fails (after killing it by PID) if it
/// takes longer than `limit`, or exits non-zero. Returns what it printed.
fn output_within(cmd: &mut Command, limit: Duration) -> anyhow::Result<String> {
    let log = tempfile_path("out");
    let file = fs::File::create(&log)?;
    let mut child = cmd
        .stdout(file.try_clone()?)
        .stderr(file)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let status = wait_within(&mut child, limit);
    let out = fs::read_to_string(&log).unwrap_or_default();
    let _ = fs::remove_file(&log);
    match status {
        Some(status) if status.success() => Ok(out),
        Some(status) => bail!("{cmd:?} failed ({status}):\n{out}"),
        None => bail!("{cmd:?} did not finish within {limit:?}:\n{out}"),
    }
}

fn tempfile_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("xtask-dist-{tag}-{}", std::process::id()))
}

/// Waits for `child` up to `limit`; past it kills it (by PID) and returns None.
fn wait_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A Docker Engine of the test's own: its own data-root, exec-root, socket and config, no
/// bridge and no iptables rules, so it never meets a system docker or the host's network.
/// Dropping it stops it by PID and removes its directories.
struct Dockerd {
    child: Child,
    socket: PathBuf,
    dir: PathBuf,
}

/// Debian docker.io's client (the engine's own version), not another one on PATH.
const DOCKER: &str = "/usr/bin/docker";

impl Dockerd {
    fn start() -> anyhow::Result<Self> {
        // Short: containerd's sockets live under the exec-root (108-byte limit).
        let dir = PathBuf::from(format!("/tmp/fdd-{}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fs::create_dir_all(&dir)?;
        fs::write(dir.join("daemon.json"), "{}")?;
        let socket = dir.join("docker.sock");
        let log = fs::File::create(dir.join("dockerd.log"))?;
        let child = Command::new("dockerd")
            .arg("--config-file")
            .arg(dir.join("daemon.json"))
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .args(["--bridge", "none", "--iptables=false", "--ip-masq=false"])
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("starting dockerd (Debian's docker.io)")?;
        let mut dockerd = Self { child, socket, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if dockerd.docker(&["version"]).is_ok() {
                return Ok(dockerd);
            }
            if let Ok(Some(status)) = dockerd.child.try_wait() {
                bail!("dockerd exited ({status}):\n{}", dockerd.log_tail());
            }
            if Instant::now() > deadline {
                bail!("dockerd not ready in 60 s:\n{}", dockerd.log_tail());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(DOCKER);
        cmd.arg("--host")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            // The classic builder: BuildKit would want a buildx plugin and a frontend image.
            .env("DOCKER_BUILDKIT", "0");
        cmd
    }

    /// `docker ARGS…` within two minutes; its output, or an error with it.
    fn docker(&self, args: &[&str]) -> anyhow::Result<String> {
        output_within(&mut self.command(args), Duration::from_secs(120))
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        test_harness::send_signal(&mut self.child, libc::SIGTERM);
        if wait_within(&mut self.child, Duration::from_secs(30)).is_none() {
            eprintln!("xtask: dist-test: dockerd ignored SIGTERM for 30 s; killed it");
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!(
                "xtask: dist-test: cannot remove {}: {e}",
                self.dir.display()
            );
        }
    }
}

/// A container removed (with `docker rm -f`) on drop.
struct Container<'a> {
    dockerd: &'a Dockerd,
    name: String,
}

impl Container<'_> {
    /// `docker exec [OPTIONS…] CONTAINER ARGS…`.
    fn exec_with(&self, options: &[&str], args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["exec"];
        full.extend_from_slice(options);
        full.push(&self.name);
        full.extend_from_slice(args);
        self.dockerd.docker(&full)
    }

    fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        self.exec_with(&[], args)
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.dockerd.docker(&["rm", "--force", &self.name]) {
            eprintln!("xtask: dist-test: {e:#}");
        }
    }
}

/// The image from the tarball's Dockerfile, faultd in a container on its own `lo`, clients
/// in the container and on the host; see the module doc.
pub fn docker(dist: &Dist) -> anyhow::Result<()> {
    let scratch = Scratch::new("docker")?;
    let context = scratch.0.join("context");
    fs::create_dir_all(&context)?;
    test_harness::run(
        Command::new("tar")
            .arg("-xzf")
            .arg(&dist.tarball)
            .arg("-C")
            .arg(&context),
    )?;
    let context = context.join(&dist.name);
    // The test's image adds busybox (nc, sh) to the released one, which has only faultd and
    // faultctl: the probes need an application to fault.
    let test_context = scratch.0.join("test-context");
    fs::create_dir_all(&test_context)?;
    fs::copy(BUSYBOX, test_context.join("busybox"))?;
    let run_dir = scratch.0.join("run");
    fs::create_dir_all(&run_dir)?;

    let dockerd = Dockerd::start()?;
    let result = docker_with(&dockerd, &context, &test_context, &run_dir);
    if result.is_err() {
        eprintln!("xtask: dist-test: dockerd's log:\n{}", dockerd.log_tail());
    }
    // The images die with the data-root when `dockerd` is dropped.
    drop(dockerd);
    result
}

fn docker_with(
    dockerd: &Dockerd,
    context: &Path,
    test_context: &Path,
    run_dir: &Path,
) -> anyhow::Result<()> {
    let tag = format!("faultd-dist-test:{}", std::process::id());
    let test_tag = format!("faultd-dist-test-busybox:{}", std::process::id());
    dockerd.docker(&["build", "--tag", &tag, &context.to_string_lossy()])?;
    // Only what the Dockerfile copies: faultd, faultctl and the example config.
    let history = dockerd.docker(&["image", "inspect", "--format", "{{.Size}}", &tag])?;
    eprintln!("xtask: dist-test: image {tag}: {} bytes", history.trim());
    fs::write(
        test_context.join("Dockerfile"),
        format!("FROM {tag}\nCOPY busybox /bin/busybox\n"),
    )?;
    dockerd.docker(&["build", "--tag", &test_tag, &test_context.to_string_lossy()])?;

    let container = Container {
        dockerd,
        name: format!("faultd-dist-test-{}", std::process::id()),
    };
    let volume = format!("{}:/run/faultd", run_dir.display());
    // The capabilities the README gives for Docker 20.10 (which does not know CAP_BPF and
    // CAP_PERFMON), with Docker's default seccomp profile (it admits bpf() with
    // SYS_ADMIN); --network none: the container's own namespace with only its `lo`.
    dockerd.docker(&[
        "run",
        "--detach",
        "--name",
        &container.name,
        "--network",
        "none",
        "--cap-add",
        "NET_ADMIN",
        "--cap-add",
        "SYS_ADMIN",
        "--volume",
        &volume,
        &test_tag,
    ])?;
    let host_faultctl = context.join("bin/faultctl");
    let host_addr = format!("unix:{}", run_dir.join("faultd.sock").display());
    let host = |args: &[&str]| -> anyhow::Result<String> {
        let mut cmd = Command::new(&host_faultctl);
        cmd.arg("--addr").arg(&host_addr).args(args);
        output_within(&mut cmd, Duration::from_secs(30))
    };
    wait_ready(dockerd, &container, &host)?;

    // An echo server in the container, and the probes of the bare-root test.
    container.exec_with(
        &["--detach"],
        &[
            "/bin/busybox",
            "nc",
            "-ll",
            "-p",
            &PORT.to_string(),
            "-e",
            "/bin/busybox",
            "cat",
        ],
    )?;
    let probe = |check: &str, what: &str| -> anyhow::Result<()> {
        let script = format!("{}\n{check} \"{what}\"", probe_functions());
        let out = container
            .exec(&["/bin/busybox", "sh", "-c", &format!("PATH=/bin; {script}")])
            .with_context(|| format!("probe {what:?}"))?;
        print!("{out}");
        Ok(())
    };
    std::thread::sleep(Duration::from_millis(300));
    probe("expect_echo", "container: before any fault")?;

    // The client in the container refuses; the host's client sees the fault and clears it.
    container.exec(&["faultctl", "refuse", "--port", &PORT.to_string()])?;
    probe(
        "expect_refused",
        "container: refuse by faultctl in the container",
    )?;
    let listed = host(&["list"])?;
    print!("{listed}");
    ensure!(
        listed.contains("refuse") && listed.contains(&PORT.to_string()),
        "the host's faultctl does not list the container's refuse fault:\n{listed}"
    );
    host(&["clear"])?;
    probe("expect_echo", "container: refuse cleared from the host")?;

    // The host's client drops; the client in the container clears.
    host(&["drop", "--port", &PORT.to_string()])?;
    probe("expect_silence", "container: drop by faultctl on the host")?;
    container.exec(&["faultctl", "clear"])?;
    probe("expect_echo", "container: drop cleared in the container")?;

    // faultd faulted the container's `lo`, not the host's.
    let host_lo = test_harness::run(Command::new("ip").args(["-details", "link", "show", "lo"]))?;
    ensure!(
        !host_lo.contains("xdp"),
        "the host's lo has an XDP program: {host_lo}"
    );

    // SIGTERM (docker stop): faultd removes its faults and exits 0.
    dockerd.docker(&["stop", "--time", "20", &container.name])?;
    let code = dockerd.docker(&[
        "inspect",
        "--format",
        "{{.State.ExitCode}}",
        &container.name,
    ])?;
    ensure!(
        code.trim() == "0",
        "faultd in the container exited with {}:\n{}",
        code.trim(),
        dockerd.docker(&["logs", &container.name])?
    );
    println!("ok: container: faultd stopped by docker stop, exit code 0");
    drop(container);
    dockerd.docker(&["rmi", &test_tag, &tag])?;
    println!("dist-docker: all checks passed");
    Ok(())
}

/// Until faultd in the container answers both the client inside and the one on the host.
fn wait_ready(
    dockerd: &Dockerd,
    container: &Container,
    host: &dyn Fn(&[&str]) -> anyhow::Result<String>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if container.exec(&["faultctl", "list"]).is_ok() && host(&["list"]).is_ok() {
            println!("ok: container: faultd answers faultctl in the container and on the host");
            return Ok(());
        }
        let running =
            dockerd.docker(&["inspect", "--format", "{{.State.Running}}", &container.name])?;
        if running.trim() != "true" || Instant::now() > deadline {
            bail!(
                "faultd in the container is not ready (running: {}):\n{}",
                running.trim(),
                dockerd.docker(&["logs", &container.name])?
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
