//! Measurement 1, per-packet cost of each of faultd's programs: the kernel's own accounting
//! (`kernel.bpf_stats_enabled`: `run_time_ns` and `run_cnt` in the fdinfo of each program fd
//! faultd holds), as deltas around a fixed load of TCP ping-pongs on a port without faults.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener};

use anyhow::{Context as _, bail};

use super::netns::{BpfStats, Netns, bpf_fdinfo, fdinfo_field};
use super::throughput::{accept_within, connect_within};

/// The programs faultd attaches, by the names the kernel knows them by.
pub const PROGRAMS: [&str; 3] = ["faultd_xdp", "faultd_tc_ingress", "faultd_tc_egress"];

/// One of faultd's loaded programs: its name and the fd faultd holds it by.
#[derive(Clone, Debug)]
pub struct Program {
    pub name: String,
    fd: u32,
}

/// faultd's programs, found through its fds (and named through the kernel's program list,
/// since a program's fdinfo has its id but not its name).
pub fn programs(pid: u32) -> anyhow::Result<Vec<Program>> {
    let mut names = BTreeMap::new();
    for info in aya::programs::loaded_programs() {
        let info = info.context("listing the loaded BPF programs")?;
        if let Some(name) = info.name_as_str() {
            names.insert(info.id() as u64, name.to_string());
        }
    }
    let mut found: BTreeMap<String, Program> = BTreeMap::new();
    for (fd, info) in bpf_fdinfo(pid, "bpf-prog")? {
        let Some(kernel_name) = fdinfo_field(&info, "prog_id").and_then(|id| names.get(&id)) else {
            continue;
        };
        // The kernel keeps 15 bytes of a name: "faultd_tc_ingress" is "faultd_tc_ingre".
        let full = PROGRAMS
            .iter()
            .find(|p| !kernel_name.is_empty() && p.starts_with(kernel_name.as_str()));
        if let Some(name) = full {
            found.entry(name.to_string()).or_insert(Program {
                name: name.to_string(),
                fd,
            });
        }
    }
    if found.is_empty() {
        bail!("faultd (pid {pid}) holds none of the programs {PROGRAMS:?}");
    }
    Ok(found.into_values().collect())
}

/// (run_time_ns, run_cnt) of each program now.
fn sample(pid: u32, programs: &[Program]) -> anyhow::Result<BTreeMap<String, (u64, u64)>> {
    programs
        .iter()
        .map(|p| {
            let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", p.fd))
                .with_context(|| format!("fdinfo of {}", p.name))?;
            let time = fdinfo_field(&info, "run_time_ns").context("no run_time_ns in fdinfo")?;
            let count = fdinfo_field(&info, "run_cnt").context("no run_cnt in fdinfo")?;
            Ok((p.name.clone(), (time, count)))
        })
        .collect()
}

/// What one measurement found for one program.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Cost {
    pub ns_per_run: f64,
    pub runs: u64,
}

/// Runs `round_trips` ping-pongs of 64 bytes on `port` in `ns` with the kernel's BPF
/// statistics on, and returns each program's mean run time per packet.
pub fn measure(
    ns: &Netns,
    pid: u32,
    programs: &[Program],
    port: u16,
    round_trips: usize,
) -> anyhow::Result<BTreeMap<String, Cost>> {
    let stats = BpfStats::enable()?;
    let before = sample(pid, programs)?;
    ping_pong(ns, port, round_trips)?;
    let after = sample(pid, programs)?;
    drop(stats);
    let mut costs = BTreeMap::new();
    for (name, (t1, c1)) in after {
        let (t0, c0) = before[&name];
        let runs = c1.saturating_sub(c0);
        if runs == 0 {
            // Loaded but not attached here: faultd attaches no XDP to lo.
            continue;
        }
        let ns_per_run = t1.saturating_sub(t0) as f64 / runs as f64;
        costs.insert(name, Cost { ns_per_run, runs });
    }
    Ok(costs)
}

/// The server side of a ping-pong: accepts one connection on `listener` and sends back each
/// `size`-byte message it reads (TCP_NODELAY), until the client closes.
pub fn echo_messages(listener: &TcpListener, size: usize) -> anyhow::Result<()> {
    let mut conn = accept_within(listener)?;
    conn.set_nodelay(true)?;
    let mut buf = vec![0u8; size];
    loop {
        match conn.read_exact(&mut buf) {
            Ok(()) => conn.write_all(&buf)?,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// `round_trips` request/response exchanges of 64 bytes over one TCP connection on
/// loopback (TCP_NODELAY: about two packets per exchange).
pub fn ping_pong(ns: &Netns, port: u16, round_trips: usize) -> anyhow::Result<()> {
    ns.try_run(|| {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .with_context(|| format!("binding port {port}"))?;
        std::thread::scope(|s| {
            let server = s.spawn(|| echo_messages(&listener, 64));
            let mut conn = connect_within(port)?;
            conn.set_nodelay(true)?;
            let mut buf = [7u8; 64];
            for _ in 0..round_trips {
                conn.write_all(&buf)?;
                conn.read_exact(&mut buf)?;
            }
            drop(conn);
            server
                .join()
                .unwrap_or_else(|_| bail!("ping-pong server panicked"))
        })
    })
}

/// Programs that do nothing (`return TC_ACT_OK`), attached by TCX at the egress and at the
/// ingress of a namespace's `lo` through the raw bpf(2) calls: measured exactly like
/// faultd's programs, they give the cost of running any program at each hook with the
/// accounting on, against which faultd's own work at that hook can be read. Each of
/// faultd's programs is compared with the no-op at its own hook: the hooks run in different
/// contexts (ingress in the softirq after the egress), so one no-op for both would be a
/// comparison of unlike things. Detached when dropped (their fds close).
pub struct Baseline {
    egress: Noop,
    ingress: Noop,
}

struct Noop {
    prog: std::os::fd::OwnedFd,
    _link: std::os::fd::OwnedFd,
}

/// What the no-op programs cost per packet in one measurement, at each hook (ns).
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct NoopCost {
    pub egress: f64,
    pub ingress: f64,
}

impl NoopCost {
    /// The no-op's cost at the hook where faultd's `program` runs (XDP, not attached to
    /// `lo`, would be read against the ingress).
    pub fn for_program(&self, program: &str) -> f64 {
        if program == "faultd_tc_egress" {
            self.egress
        } else {
            self.ingress
        }
    }
}

const NOOP_EGRESS: &str = "no-op TC program (egress)";
const NOOP_INGRESS: &str = "no-op TC program (ingress)";

impl Baseline {
    pub fn attach(ns: &Netns) -> anyhow::Result<Self> {
        const BPF_TCX_INGRESS: u32 = 46;
        const BPF_TCX_EGRESS: u32 = 47;
        Ok(Self {
            egress: Noop::attach(ns, BPF_TCX_EGRESS, b"fdb_noop_eg")?,
            ingress: Noop::attach(ns, BPF_TCX_INGRESS, b"fdb_noop_in")?,
        })
    }

    /// Like [`measure`], for the no-op programs, both in one ping-pong.
    pub fn measure(&self, ns: &Netns, port: u16, round_trips: usize) -> anyhow::Result<NoopCost> {
        let program = |name: &str, noop: &Noop| Program {
            name: name.into(),
            fd: std::os::fd::AsRawFd::as_raw_fd(&noop.prog) as u32,
        };
        let programs = [
            program(NOOP_EGRESS, &self.egress),
            program(NOOP_INGRESS, &self.ingress),
        ];
        let costs = measure(ns, std::process::id(), &programs, port, round_trips)?;
        let at = |name: &str| {
            costs
                .get(name)
                .map(|c| c.ns_per_run)
                .with_context(|| format!("no figures for the {name}"))
        };
        Ok(NoopCost {
            egress: at(NOOP_EGRESS)?,
            ingress: at(NOOP_INGRESS)?,
        })
    }
}

impl Noop {
    fn attach(ns: &Netns, hook: u32, name: &[u8; 11]) -> anyhow::Result<Self> {
        use std::os::fd::FromRawFd as _;
        const BPF_PROG_LOAD: libc::c_long = 5;
        const BPF_LINK_CREATE: libc::c_long = 28;
        const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
        // r0 = 0 (TC_ACT_OK); exit.
        let insns: [u64; 2] = [
            u64::from_le_bytes([0xb7, 0, 0, 0, 0, 0, 0, 0]),
            u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
        ];
        let license = c"GPL";
        let bpf = |cmd: libc::c_long, attr: &[u8; 128]| -> std::io::Result<i32> {
            // SAFETY: `attr` is a zero-padded bpf_attr of the command's layout, whose
            // pointers (instructions, license) outlive the call.
            let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_ptr(), attr.len()) };
            if fd < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(fd as i32)
            }
        };
        let mut load = [0u8; 128];
        load[0..4].copy_from_slice(&BPF_PROG_TYPE_SCHED_CLS.to_ne_bytes());
        load[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
        load[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
        load[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
        load[48..48 + name.len()].copy_from_slice(name);
        let prog = bpf(BPF_PROG_LOAD, &load).context("loading a no-op program")?;
        // SAFETY: a new fd that nothing else owns.
        let prog = unsafe { std::os::fd::OwnedFd::from_raw_fd(prog) };
        let prog_fd = std::os::fd::AsRawFd::as_raw_fd(&prog) as u32;
        let link = ns.try_run(|| {
            let mut create = [0u8; 128];
            create[0..4].copy_from_slice(&prog_fd.to_ne_bytes());
            // A new namespace's `lo` is always ifindex 1.
            create[4..8].copy_from_slice(&1u32.to_ne_bytes());
            create[8..12].copy_from_slice(&hook.to_ne_bytes());
            bpf(BPF_LINK_CREATE, &create).context("attaching a no-op program (TCX)")
        })?;
        Ok(Self {
            prog,
            // SAFETY: a new fd that nothing else owns.
            _link: unsafe { std::os::fd::OwnedFd::from_raw_fd(link) },
        })
    }
}

/// The richer targets of issue #14 installed at once, none of which the measured traffic
/// (loopback, 127.0.0.1, the measured port) matches: `n` port ranges of two ports each, `n`
/// port tuples, and one address partition between two sets of 32 addresses (1 024 address
/// pairs, so every packet does the partition's two trie lookups). Ports from `base` up.
pub fn richer_target_specs(n: usize, base: u16) -> Vec<super::api::proto::FaultSpec> {
    use super::api::{drop_spec, proto};
    let mut specs = Vec::with_capacity(2 * n + 1);
    for i in 0..n as u16 {
        let mut range = drop_spec(base + 2 * i, proto::Protocol::Tcp);
        range.target.as_mut().unwrap().port_end = u32::from(base + 2 * i + 1);
        specs.push(range);
        let mut tuple = drop_spec(base + 2 * n as u16 + i, proto::Protocol::Tcp);
        tuple.target.as_mut().unwrap().remote_port = 43_210;
        specs.push(tuple);
    }
    // Low 16 bits (the partition filter's index) unlike the measured traffic's 127.0.0.1:
    // what packets of addresses in no partition cost.
    let side = |net: u8| {
        (0..32)
            .map(|i| format!("10.{net}.{i}.7"))
            .collect::<Vec<_>>()
    };
    let mut partition = drop_spec(1, proto::Protocol::Any);
    let t = partition.target.as_mut().unwrap();
    t.port = 0;
    t.between = side(1);
    t.and_peers = side(2);
    specs.push(partition);
    specs
}

/// Per-packet cost over the no-op program and request/response rate against no faultd, for
/// a faultd holding [`richer_target_specs`]: the pass-through cost the richer targets add.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TargetsCost {
    pub faults: usize,
    /// Each program's per-packet cost over the no-op program's at its hook, per round (ns).
    pub over_noop_ns: BTreeMap<String, Vec<f64>>,
    pub rr_faultd: Vec<f64>,
    pub rr_bare: Vec<f64>,
}

pub fn richer_targets(
    faultd: &std::path::Path,
    log: std::path::PathBuf,
    port: u16,
    round_trips: usize,
    rr: std::time::Duration,
    reps: usize,
) -> anyhow::Result<TargetsCost> {
    use super::{api, netns, request_response};
    let ns = netns::new("targets")?;
    let daemon = netns::start_faultd(&ns, faultd, log)?;
    let specs = richer_target_specs(1_000, 20_000);
    let count = specs.len();
    ns.block_on(|| async move {
        let mut client = api::connect().await?;
        api::add_many(&client, specs, 64).await?;
        api::expect_count(&mut client, count).await
    })?;
    let programs = programs(daemon.pid())?;
    let ns_bare = netns::new("targets-bare")?;
    let ns_noop = netns::new("targets-noop")?;
    let baseline = Baseline::attach(&ns_noop)?;
    let mut out = TargetsCost {
        faults: count,
        ..TargetsCost::default()
    };
    for round in 0..reps {
        let noop = baseline.measure(&ns_noop, port, round_trips)?;
        for (name, cost) in measure(&ns, daemon.pid(), &programs, port, round_trips)? {
            let over = cost.ns_per_run - noop.for_program(&name);
            out.over_noop_ns.entry(name).or_default().push(over);
        }
        out.rr_faultd
            .push(request_response::transactions_per_sec(&ns, port, rr)?);
        out.rr_bare
            .push(request_response::transactions_per_sec(&ns_bare, port, rr)?);
        eprintln!(
            "bench: richer targets round {}/{reps}: over no-op {:?} ns; request/response/s \
             faultd {:.0}, no faultd {:.0}",
            round + 1,
            out.over_noop_ns
                .iter()
                .map(|(k, v)| (k.as_str(), v.last().copied().unwrap_or(f64::NAN).round()))
                .collect::<Vec<_>>(),
            out.rr_faultd.last().unwrap(),
            out.rr_bare.last().unwrap(),
        );
    }
    drop(daemon);
    Ok(out)
}
