//! `cargo xtask bench`: faultd's costs, measured on this machine, written to BENCHMARKS.md
//! with a PNG plot (issue 6). `--quick` runs the same code with tiny counts in a few seconds
//! and writes under target/bench-quick/; it fails only on errors, never on a figure.
//!
//! Everything runs inside network namespaces of the bench's own (`fdb-…`), removed on drop:
//! faultd attaches to their `lo`, iptables rules live in them, all traffic stays in them.
//!
//! 1. [`packet_cost`] and 5. [`memory`]: one faultd, faults added in steps (0, 10, 1 000,
//!    10 000, 100 000); at each step the programs' run time per packet, faultd's memory and
//!    the throughput beside a namespace without faultd.
//! 2. [`throughput`]: at 10 000 faults, in the same rounds: no faultd, faultd, the same rules
//!    as iptables DROP rules, a userspace TCP proxy.
//! 3. [`apply_latency`] and 4. [`churn`]: a second faultd with no other faults.
//! 6. [`accuracy`]: on that faultd, how closely a delay and a rate keep to what they ask and
//!    how soon a killed client's faults go, each beside its target; a miss is reported, never
//!    a failure (the system tests assert only the bounds faultd guarantees on any machine).
//!
//! `XTASK_BENCH_BIN_DIR=DIR` benches the faultd and faultctl in DIR instead of building them.

mod accuracy;
mod api;
mod apply_latency;
mod churn;
mod memory;
mod netns;
mod packet_cost;
mod parts;
mod plot;
mod report;
mod request_response;
mod soak;
mod throughput;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// The port of the measured traffic (ping-pongs, transfers): never carries a fault.
const MEASURED_PORT: u16 = 5201;
/// The proxy listens on PROXY_PORT and forwards to a server on PROXY_UPSTREAM.
const PROXY_UPSTREAM: u16 = 5202;
const PROXY_PORT: u16 = 5203;
/// Apply latency (UDP probe stream), `faultctl drop`, churn's port A and port B.
const APPLY_PORT: u16 = 6001;
const FAULTCTL_PORT: u16 = 6002;
const CHURN_PORT_A: u16 = 6000;
const CHURN_PORT_B: u16 = 8080;
/// Faults of the sweep go on ports FAULT_PORT_BASE.. (FAULT_PORTS of them, then again), clear
/// of the ports above, of the API port and of the namespaces' ephemeral ports (61000+).
const FAULT_PORT_BASE: u16 = 10_000;
const FAULT_PORTS: usize = 50_000;
/// AddFault calls in flight at once while the sweep installs its faults.
const ADD_CONCURRENCY: usize = 64;

pub struct Config {
    /// Numbers of installed faults at which packet cost, throughput and memory are measured.
    pub levels: Vec<usize>,
    /// The level at which throughput is compared with iptables and the proxy.
    pub compare_level: usize,
    /// Repetitions of each measurement; figures are their medians.
    pub reps: usize,
    pub round_trips: usize,
    /// Each round measures each setup's throughput over `slices` transfers of `slice`.
    pub slices: usize,
    pub slice: Duration,
    /// Each round measures request/response transactions for this long per setup.
    pub rr: Duration,
    pub apply_adds: usize,
    pub faultctl_reps: usize,
    pub churn: Duration,
    /// Logs and results.json.
    pub out_dir: PathBuf,
    pub report: PathBuf,
    pub plot: PathBuf,
}

impl Config {
    fn new(quick: bool) -> Self {
        let root = crate::workspace_root();
        if quick {
            let out_dir = root.join("target/bench-quick");
            Self {
                levels: vec![0, 100],
                compare_level: 100,
                reps: 1,
                round_trips: 2_000,
                slices: 2,
                slice: Duration::from_millis(150),
                rr: Duration::from_millis(200),
                apply_adds: 50,
                faultctl_reps: 3,
                churn: Duration::from_secs(2),
                report: out_dir.join("BENCHMARKS.md"),
                plot: out_dir.join("benchmarks.png"),
                out_dir,
            }
        } else {
            Self {
                levels: vec![0, 10, 1_000, 10_000, 100_000],
                compare_level: 10_000,
                reps: 7,
                round_trips: 20_000,
                slices: 6,
                slice: Duration::from_millis(250),
                rr: Duration::from_secs(1),
                apply_adds: 1_000,
                faultctl_reps: 20,
                churn: Duration::from_secs(20),
                out_dir: root.join("target/bench"),
                report: root.join("BENCHMARKS.md"),
                plot: root.join("benchmarks.png"),
            }
        }
    }
}

/// Everything one run measured; BENCHMARKS.md, the plot and results.json come from it.
#[derive(Debug, serde::Serialize)]
pub struct Results {
    pub quick: bool,
    pub machine: report::Machine,
    pub reps: usize,
    pub round_trips: usize,
    /// Seconds of transfer per setup and round, in `slices` slices.
    pub transfer_secs: f64,
    pub slices: usize,
    /// Seconds of request/response per setup and round.
    pub rr_secs: f64,
    pub levels: Vec<Level>,
    pub compare: Compare,
    pub apply: apply_latency::ApplyResult,
    /// Wall time of each `faultctl drop`, in ns.
    pub faultctl_ns: Vec<u64>,
    pub churn: churn::ChurnResult,
    /// Pass-through cost with ranges, tuples and a partition installed (issue #14).
    pub targets: packet_cost::TargetsCost,
    /// Delay and rate accuracy, teardown time, beside their targets.
    pub accuracy: accuracy::Accuracy,
    pub seconds: f64,
}

/// Measurements at one number of installed faults; one entry per repetition.
#[derive(Debug, serde::Serialize)]
pub struct Level {
    pub faults: usize,
    /// Faults added to this level's faultd, and the time that took.
    pub added: usize,
    pub add_secs: f64,
    /// Per program: ns per run, and runs, of each repetition.
    pub cost_ns: BTreeMap<String, Vec<f64>>,
    /// Per program: ns per run above the no-op program's in the same round.
    pub over_noop_ns: BTreeMap<String, Vec<f64>>,
    pub runs: BTreeMap<String, Vec<u64>>,
    /// ns per run of a program that does nothing at TC egress, and at TC ingress, measured
    /// the same way beside them (see packet_cost::Baseline).
    pub baseline_ns: Vec<f64>,
    pub baseline_ingress_ns: Vec<f64>,
    pub faultd_gbps: Vec<f64>,
    pub bare_gbps: Vec<f64>,
    pub memory: memory::Memory,
}

/// Throughput of each setup in the same rounds, in Gbit/s.
#[derive(Debug, Default, serde::Serialize)]
pub struct Compare {
    pub faults: usize,
    pub bare: Vec<f64>,
    pub faultd: Vec<f64>,
    pub iptables: Vec<f64>,
    pub proxy: Vec<f64>,
    /// 1-byte request/response transactions per second: no faultd, faultd.
    pub rr_bare: Vec<f64>,
    pub rr_faultd: Vec<f64>,
    /// The same with only the no-op program attached (TCX, lo egress).
    pub rr_noop: Vec<f64>,
}

pub use parts::{Part, parse_part};
pub use soak::parse_duration as parse_soak_duration;

/// The faultd and faultctl to bench, and how they were built.
fn binaries(quick: bool) -> anyhow::Result<(PathBuf, &'static str)> {
    // The quick run only proves the bench works: the debug build `cargo test` made will do.
    // XTASK_BENCH_BIN_DIR names a folder with a faultd and faultctl built elsewhere instead.
    Ok(match std::env::var_os("XTASK_BENCH_BIN_DIR") {
        Some(dir) => (PathBuf::from(dir), "prebuilt (XTASK_BENCH_BIN_DIR)"),
        None if quick => {
            crate::cargo(&[
                "build",
                "--package",
                "fault-daemon",
                "--package",
                "faultctl",
            ])?;
            (crate::workspace_root().join("target/debug"), "debug")
        }
        None => {
            crate::cargo(&[
                "build",
                "--release",
                "--package",
                "fault-daemon",
                "--package",
                "faultctl",
            ])?;
            (crate::workspace_root().join("target/release"), "release")
        }
    })
}

/// `cargo xtask bench --soak[=DURATION]`: only the soak (see [`soak`]).
pub fn soak(duration: Duration) -> anyhow::Result<()> {
    if !crate::is_root() {
        bail!("run as root: the soak loads eBPF programs and creates network namespaces");
    }
    let cfg = Config::new(false);
    let (bin, profile) = binaries(false)?;
    std::fs::create_dir_all(&cfg.out_dir)
        .with_context(|| format!("creating {}", cfg.out_dir.display()))?;
    soak::run(
        &bin.join("faultd"),
        profile,
        &cfg.out_dir,
        &cfg.report,
        duration,
    )
}

/// `cargo xtask bench --only PART,…`: only those measurements (see [`parts`]).
pub fn only(parts: &[Part]) -> anyhow::Result<()> {
    if !crate::is_root() {
        bail!("run as root: the bench loads eBPF programs and creates network namespaces");
    }
    let cfg = Config::new(false);
    let (bin, profile) = binaries(false)?;
    std::fs::create_dir_all(&cfg.out_dir)
        .with_context(|| format!("creating {}", cfg.out_dir.display()))?;
    parts::run(&cfg, &bin.join("faultd"), profile, parts)
}

pub fn run(quick: bool) -> anyhow::Result<()> {
    if !crate::is_root() {
        bail!("run as root: the bench loads eBPF programs and creates network namespaces");
    }
    let cfg = Config::new(quick);
    let (bin, profile) = binaries(quick)?;
    let (faultd, faultctl) = (bin.join("faultd"), bin.join("faultctl"));
    std::fs::create_dir_all(&cfg.out_dir)
        .with_context(|| format!("creating {}", cfg.out_dir.display()))?;
    netns::remove_stale();
    let machine = report::Machine::read(profile);
    let start = Instant::now();
    eprintln!(
        "bench: {} run, faults {:?}, {} repetition(s)",
        if quick { "quick" } else { "full" },
        cfg.levels,
        cfg.reps
    );

    let (levels, compare) = sweep(&cfg, &faultd)?;
    eprintln!("bench: pass-through with 1 000 ranges, 1 000 tuples and 1 024 address pairs");
    let targets = packet_cost::richer_targets(
        &faultd,
        cfg.out_dir.join("faultd-targets.log"),
        MEASURED_PORT,
        cfg.round_trips,
        cfg.rr,
        cfg.reps,
    )?;
    let ns = netns::new("ctl")?;
    let daemon = netns::start_faultd(&ns, &faultd, cfg.out_dir.join("faultd-control.log"))?;
    eprintln!("bench: fault-apply latency over {} adds", cfg.apply_adds);
    let apply = apply_latency::run(&ns, APPLY_PORT, cfg.apply_adds)?;
    eprintln!("bench: faultctl drop, {} times", cfg.faultctl_reps);
    let faultctl_ns = apply_latency::faultctl(&ns, &faultctl, FAULTCTL_PORT, cfg.faultctl_reps)?;
    eprintln!("bench: churn for {:?}", cfg.churn);
    let churn = churn::run(&ns, CHURN_PORT_A, CHURN_PORT_B, cfg.churn)?;
    eprintln!("bench: accuracy (delay, rate, teardown)");
    let accuracy = accuracy::run(&ns, &faultctl)?;
    drop(daemon);
    drop(ns);

    let results = Results {
        quick,
        machine,
        reps: cfg.reps,
        round_trips: cfg.round_trips,
        transfer_secs: cfg.slice.as_secs_f64() * cfg.slices as f64,
        slices: cfg.slices,
        rr_secs: cfg.rr.as_secs_f64(),
        levels,
        compare,
        apply,
        faultctl_ns,
        churn,
        targets,
        accuracy,
        seconds: start.elapsed().as_secs_f64(),
    };
    let json = cfg.out_dir.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("writing {}", json.display()))?;
    plot::draw(&results, &cfg.plot)?;
    let plot_name = cfg
        .plot
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // The soak section is written by `--soak` runs only: keep it.
    let old = std::fs::read_to_string(&cfg.report).unwrap_or_default();
    let mut markdown = report::markdown(&results, &plot_name);
    markdown.push_str(&format!(
        "\n## Accuracy\n\nHow closely faults keep to what they ask, beside the targets (a miss \
         is reported, never a failure; the system tests assert only the bounds faultd \
         guarantees on any machine):\n\n{}",
        accuracy::table(&results.accuracy)
    ));
    let text = soak::keep_section(&old, markdown);
    std::fs::write(&cfg.report, &text)
        .with_context(|| format!("writing {}", cfg.report.display()))?;
    eprintln!("{}", report::summary(&results));
    eprintln!("bench: accuracy\n{}", accuracy::table(&results.accuracy));
    let t = &results.targets;
    eprintln!(
        "bench: with {} richer-target faults: over the no-op program (median ns) {:?}; \
         request/response/s faultd {:.0}, no faultd {:.0}",
        t.faults,
        t.over_noop_ns
            .iter()
            .map(|(k, v)| (k.as_str(), median(v).round()))
            .collect::<Vec<_>>(),
        median(&t.rr_faultd),
        median(&t.rr_bare),
    );
    eprintln!(
        "bench: wrote {}, {} and {} in {:.0} s",
        shown(&cfg.report),
        shown(&cfg.plot),
        shown(&json),
        results.seconds
    );
    Ok(())
}

fn shown(path: &Path) -> String {
    path.strip_prefix(crate::workspace_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The port of the sweep's `i`-th fault.
fn fault_port(i: usize) -> u16 {
    FAULT_PORT_BASE + (i % FAULT_PORTS) as u16
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Setup {
    Bare,
    /// The faultd of the level with this index.
    Faultd(usize),
    Iptables,
    Proxy,
}

/// 1, 2 and 5, all in the same rounds so that the machine's changing load touches every
/// figure alike: one faultd per level, each in its own namespace with that many faults; a
/// namespace without faultd (with the proxy); one with the compare level's rules as iptables
/// rules; one with a no-op program. Each round measures the per-packet cost of every faultd
/// and of the no-op program, then the throughput of every setup in short slices taken in
/// turn.
fn sweep(cfg: &Config, faultd: &Path) -> anyhow::Result<(Vec<Level>, Compare)> {
    let mut daemons = Vec::new();
    let mut levels = Vec::new();
    for (i, &level) in cfg.levels.iter().enumerate() {
        let ns = netns::new(&format!("fd{i}"))?;
        let daemon =
            netns::start_faultd(&ns, faultd, cfg.out_dir.join(format!("faultd-{level}.log")))?;
        let specs: Vec<_> = (0..level)
            .map(|i| api::drop_spec(fault_port(i), api::proto::Protocol::Tcp))
            .collect();
        let t = Instant::now();
        ns.block_on(|| async move {
            let mut client = api::connect().await?;
            api::add_many(&client, specs, ADD_CONCURRENCY).await?;
            api::expect_count(&mut client, level).await
        })?;
        let add_secs = t.elapsed().as_secs_f64();
        let programs = packet_cost::programs(daemon.pid())?;
        eprintln!("bench: faultd with {level} faults ready (added in {add_secs:.1} s)");
        levels.push(Level {
            faults: level,
            added: level,
            add_secs,
            cost_ns: BTreeMap::new(),
            over_noop_ns: BTreeMap::new(),
            runs: BTreeMap::new(),
            baseline_ns: Vec::new(),
            baseline_ingress_ns: Vec::new(),
            faultd_gbps: Vec::new(),
            bare_gbps: Vec::new(),
            memory: memory::Memory {
                rss_bytes: 0,
                bpf_map_bytes: 0,
            },
        });
        daemons.push((ns, daemon, programs));
    }
    let compare_index = cfg
        .levels
        .iter()
        .position(|&l| l == cfg.compare_level)
        .with_context(|| format!("the compare level {} is not a level", cfg.compare_level))?;
    let ns_bare = netns::new("bare")?;
    let _proxy = throughput::Proxy::start(&ns_bare, PROXY_PORT, PROXY_UPSTREAM)?;
    let ns_ipt = netns::new("ipt")?;
    let ports: Vec<u16> = (0..cfg.compare_level).map(fault_port).collect();
    throughput::install_iptables(&ns_ipt, &ports)?;
    let ns_noop = netns::new("noop")?;
    let baseline = packet_cost::Baseline::attach(&ns_noop)?;
    // What each faultd keeps, not the moment's peak of the ListFaults that counted its
    // faults: faultd hands freed heap back within 1 s (faultd::heap).
    std::thread::sleep(Duration::from_secs(3));
    for (level, (_, daemon, _)) in levels.iter_mut().zip(&daemons) {
        level.memory = memory::sample(daemon.pid())?;
    }

    let transfer = |setup: Setup, duration: Duration| match setup {
        Setup::Bare => throughput::transfer(&ns_bare, MEASURED_PORT, MEASURED_PORT, duration),
        Setup::Faultd(i) => {
            throughput::transfer(&daemons[i].0, MEASURED_PORT, MEASURED_PORT, duration)
        }
        Setup::Iptables => throughput::transfer(&ns_ipt, MEASURED_PORT, MEASURED_PORT, duration),
        Setup::Proxy => throughput::transfer(&ns_bare, PROXY_UPSTREAM, PROXY_PORT, duration),
    };
    let mut setups: Vec<Setup> = (0..levels.len()).map(Setup::Faultd).collect();
    setups.extend([Setup::Bare, Setup::Iptables, Setup::Proxy]);
    for &setup in &setups {
        transfer(setup, Duration::from_millis(100))
            .with_context(|| format!("warming up {setup:?}"))?;
    }

    let mut compare = Compare {
        faults: cfg.compare_level,
        ..Compare::default()
    };
    for round in 0..cfg.reps {
        // Per-packet cost: every faultd and the no-op program, in a rotating order.
        let mut order: Vec<Option<usize>> = (0..levels.len()).map(Some).collect();
        order.push(None);
        let turn = round % order.len();
        order.rotate_left(turn);
        let mut noop = packet_cost::NoopCost {
            egress: f64::NAN,
            ingress: f64::NAN,
        };
        for who in order {
            match who {
                Some(i) => {
                    let (ns, daemon, programs) = &daemons[i];
                    let costs = packet_cost::measure(
                        ns,
                        daemon.pid(),
                        programs,
                        MEASURED_PORT,
                        cfg.round_trips,
                    )?;
                    for (name, cost) in costs {
                        let level = &mut levels[i];
                        level
                            .cost_ns
                            .entry(name.clone())
                            .or_default()
                            .push(cost.ns_per_run);
                        level.runs.entry(name).or_default().push(cost.runs);
                    }
                }
                None => noop = baseline.measure(&ns_noop, MEASURED_PORT, cfg.round_trips)?,
            }
        }
        for level in levels.iter_mut() {
            let Level {
                cost_ns,
                over_noop_ns,
                ..
            } = level;
            for (name, costs) in cost_ns.iter() {
                let this_round = costs.last().copied().unwrap_or(f64::NAN);
                over_noop_ns
                    .entry(name.clone())
                    .or_default()
                    .push(this_round - noop.for_program(name));
            }
        }
        // Request/response: no faultd and faultd at the compare level, in turn.
        let rr = |ns: &netns::Netns| {
            request_response::transactions_per_sec(ns, MEASURED_PORT, cfg.rr)
                .context("request/response")
        };
        // And beside them the namespace with the no-op program: what any program costs.
        let mut rr_order = [0usize, 1, 2];
        rr_order.rotate_left(round % 3);
        for k in rr_order {
            match k {
                0 => compare.rr_bare.push(rr(&ns_bare)?),
                1 => compare.rr_faultd.push(rr(&daemons[compare_index].0)?),
                _ => compare.rr_noop.push(rr(&ns_noop)?),
            }
        }
        // Throughput: short slices of every setup in turn, added up per setup.
        let mut tallies = vec![throughput::Tally::default(); setups.len()];
        let mut order: Vec<usize> = (0..setups.len()).collect();
        for slice in 0..cfg.slices {
            order.rotate_left((round + slice) % setups.len().max(1));
            for &k in &order {
                let got = transfer(setups[k], cfg.slice)
                    .with_context(|| format!("transfer with {:?}", setups[k]))?;
                tallies[k].add(got);
            }
        }
        let gbps = |setup: Setup| tallies[setups.iter().position(|&s| s == setup).unwrap()].gbps();
        let bare = gbps(Setup::Bare);
        for (i, level) in levels.iter_mut().enumerate() {
            level.faultd_gbps.push(gbps(Setup::Faultd(i)));
            level.bare_gbps.push(bare);
            level.baseline_ns.push(noop.egress);
            level.baseline_ingress_ns.push(noop.ingress);
        }
        compare.bare.push(bare);
        compare.faultd.push(gbps(Setup::Faultd(compare_index)));
        compare.iptables.push(gbps(Setup::Iptables));
        compare.proxy.push(gbps(Setup::Proxy));
        let costs: Vec<String> = levels
            .iter()
            .map(|l| {
                let worst = |m: &BTreeMap<String, Vec<f64>>| {
                    m.values()
                        .filter_map(|v| v.last())
                        .fold(f64::NAN, |a, &b| a.max(b))
                };
                format!(
                    "{} faults {:.0} ns (+{:.0} over the no-op at its hook)",
                    l.faults,
                    worst(&l.cost_ns),
                    worst(&l.over_noop_ns)
                )
            })
            .collect();
        eprintln!(
            "bench: round {}/{}: slowest program {}, no-op egress {:.0} ns, ingress {:.0} ns; \
             Gbit/s: no faultd \
             {bare:.1}, faultd with {} faults {:.1}, iptables {:.1}, proxy {:.1}; \
             request/response/s: no faultd {:.0}, faultd {:.0}, no-op program {:.0}",
            round + 1,
            cfg.reps,
            costs.join(", "),
            noop.egress,
            noop.ingress,
            cfg.compare_level,
            compare.faultd.last().unwrap(),
            compare.iptables.last().unwrap(),
            compare.proxy.last().unwrap(),
            compare.rr_bare.last().unwrap(),
            compare.rr_faultd.last().unwrap(),
            compare.rr_noop.last().unwrap(),
        );
    }
    Ok((levels, compare))
}

/// The median (the mean of the middle two for an even count); NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The `p`-th percentile by nearest rank; 0 when empty.
pub fn percentile(values: &[u64], p: f64) -> u64 {
    let mut v = values.to_vec();
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Medians of per-round ratios `a[i] / b[i]`.
pub fn ratio(a: &[f64], b: &[f64]) -> f64 {
    let ratios: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    median(&ratios)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(ratio(&[9.0, 8.0, 10.0], &[10.0, 10.0, 10.0]), 0.9);
    }

    #[test]
    fn fault_ports_avoid_the_bench_ports_and_ephemeral_ones() {
        for i in [0, 1, FAULT_PORTS - 1, FAULT_PORTS, 99_999] {
            let port = fault_port(i);
            assert!((FAULT_PORT_BASE..61_000).contains(&port), "{port}");
        }
        // faultd's API port (7447) carries no fault either.
        assert!(CHURN_PORT_B < FAULT_PORT_BASE && 7447 < FAULT_PORT_BASE);
    }
}
