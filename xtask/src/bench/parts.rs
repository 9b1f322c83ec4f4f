//! `cargo xtask bench --only PART[,PART…]`: one or a few of the bench's measurements, the
//! same code as the full run's, printed and written to target/bench/parts.json, without
//! rewriting BENCHMARKS.md. For looking into one figure without the 5-minute run.
//!
//! - `memory`: one faultd, faults added the sweep's way (64 AddFault calls in flight over
//!   one connection) up to 10 000 and then 100 000; faultd's RSS and its maps' kernel
//!   memory at 0, at 10 000, and at 100 000 before and after the ListFaults that the sweep
//!   makes to check the count, and 3 s later.
//! - `apply`: a faultd with no other faults, the fault-apply latency (the full run's 1 000
//!   adds).
//! - `cost`: the per-packet cost over the no-op program of three faultds, with 0, 10 and 0
//!   faults, in 15 rounds of the full run's ping-pongs, taking turns: the median and the
//!   spread of each program, for comparing two builds of the programs. Two alike show how
//!   much of a difference comes from where the kernel placed each (their code and maps).

use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, bail};

use std::collections::BTreeMap;

use super::{
    ADD_CONCURRENCY, APPLY_PORT, Config, MEASURED_PORT, api, apply_latency, fault_port, memory,
    netns, packet_cost,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Part {
    Memory,
    Apply,
    Cost,
}

/// Parses one part's name (`--only memory,apply`: clap splits at the commas).
pub fn parse_part(text: &str) -> Result<Part, String> {
    match text.trim() {
        "memory" => Ok(Part::Memory),
        "apply" => Ok(Part::Apply),
        "cost" => Ok(Part::Cost),
        other => Err(format!("{other:?} is not a part: memory, apply or cost")),
    }
}

#[derive(Debug, Default, serde::Serialize)]
struct PartsResult {
    machine: Option<super::report::Machine>,
    /// (moment, faults, memory)
    memory: Vec<(String, usize, memory::Memory)>,
    add_secs: Vec<(usize, f64)>,
    apply: Option<apply_latency::ApplyResult>,
    /// "faultd i (n faults), program" → its cost over the no-op at its hook in each round (ns).
    cost: BTreeMap<String, Vec<f64>>,
}

pub fn run(cfg: &Config, faultd: &Path, profile: &str, parts: &[Part]) -> anyhow::Result<()> {
    netns::remove_stale();
    let mut result = PartsResult {
        machine: Some(super::report::Machine::read(profile)),
        ..PartsResult::default()
    };
    if parts.contains(&Part::Memory) {
        memory_part(cfg, faultd, &mut result)?;
    }
    if parts.contains(&Part::Apply) {
        let ns = netns::new("apply")?;
        let daemon = netns::start_faultd(&ns, faultd, cfg.out_dir.join("faultd-apply.log"))?;
        eprintln!("bench: fault-apply latency over {} adds", cfg.apply_adds);
        let apply = apply_latency::run(&ns, APPLY_PORT, cfg.apply_adds)?;
        let ms = |v: &[u64], p: f64| super::percentile(v, p) as f64 / 1e6;
        for (what, v) in [
            ("AddFault round trip", &apply.rpc_ns),
            ("AddFault call → first packet dropped", &apply.apply_ns),
            ("RemoveFault round trip", &apply.remove_ns),
        ] {
            eprintln!(
                "bench: {what}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                ms(v, 50.0),
                ms(v, 99.0),
                ms(v, 100.0)
            );
        }
        eprintln!("bench: {} add(s) saw no first-hit event", apply.missing);
        result.apply = Some(apply);
        drop(daemon);
        drop(ns);
    }
    if parts.contains(&Part::Cost) {
        cost_part(cfg, faultd, &mut result)?;
    }
    let json = cfg.out_dir.join("parts.json");
    std::fs::write(&json, serde_json::to_string_pretty(&result)?)
        .with_context(|| format!("writing {}", json.display()))?;
    eprintln!("bench: wrote {}", json.display());
    Ok(())
}

fn memory_part(cfg: &Config, faultd: &Path, result: &mut PartsResult) -> anyhow::Result<()> {
    let ns = netns::new("mem")?;
    let daemon = netns::start_faultd(&ns, faultd, cfg.out_dir.join("faultd-memory.log"))?;
    let pid = daemon.pid();
    let mut note = |moment: &str, faults: usize| -> anyhow::Result<()> {
        let m = memory::sample(pid)?;
        eprintln!(
            "bench: {moment}: {faults} faults, RSS {:.1} MB, BPF maps {:.1} MB",
            m.rss_bytes as f64 / 1e6,
            m.bpf_map_bytes as f64 / 1e6
        );
        result.memory.push((moment.to_string(), faults, m));
        Ok(())
    };
    note("started", 0)?;
    let mut installed = 0;
    for level in [10_000, 100_000] {
        let specs: Vec<_> = (installed..level)
            .map(|i| api::drop_spec(fault_port(i), api::proto::Protocol::Tcp))
            .collect();
        let t = Instant::now();
        ns.block_on(|| async move {
            let client = api::connect().await?;
            api::add_many(&client, specs, ADD_CONCURRENCY).await
        })?;
        let secs = t.elapsed().as_secs_f64();
        eprintln!(
            "bench: {} faults added in {secs:.1} s ({:.0}/s)",
            level - installed,
            (level - installed) as f64 / secs
        );
        installed = level;
        note("added", level)?;
        let have = ns.block_on(|| async {
            let mut client = api::connect().await?;
            api::count(&mut client).await
        })?;
        if have != level {
            bail!("faultd holds {have} faults, expected {level}");
        }
        note("after ListFaults", level)?;
        // What faultd keeps of it (its heap trimmer looks every second).
        std::thread::sleep(std::time::Duration::from_secs(3));
        note("3 s later", level)?;
        result.add_secs.push((level, secs));
    }
    drop(daemon);
    drop(ns);
    Ok(())
}

/// Rounds of the `cost` part, and its faultds' numbers of faults.
const COST_ROUNDS: usize = 15;
const COST_FAULTS: [usize; 3] = [0, 10, 0];

fn cost_part(cfg: &Config, faultd: &Path, result: &mut PartsResult) -> anyhow::Result<()> {
    let mut daemons = Vec::new();
    for (i, faults) in COST_FAULTS.into_iter().enumerate() {
        let ns = netns::new(&format!("cost{i}"))?;
        let log = cfg.out_dir.join(format!("faultd-cost-{i}.log"));
        let daemon = netns::start_faultd(&ns, faultd, log)?;
        let specs: Vec<_> = (0..faults)
            .map(|i| api::drop_spec(fault_port(i), api::proto::Protocol::Tcp))
            .collect();
        ns.block_on(|| async move {
            let mut client = api::connect().await?;
            api::add_many(&client, specs, ADD_CONCURRENCY).await?;
            api::expect_count(&mut client, faults).await
        })?;
        let programs = packet_cost::programs(daemon.pid())?;
        daemons.push((
            format!("faultd {i} ({faults} faults)"),
            ns,
            daemon,
            programs,
        ));
    }
    let ns_noop = netns::new("cost-noop")?;
    let baseline = packet_cost::Baseline::attach(&ns_noop)?;
    for round in 0..COST_ROUNDS {
        // The daemons in turn, each first in some rounds: an order effect shows as a spread.
        let mut order: Vec<_> = daemons.iter().collect();
        order.rotate_left(round % daemons.len());
        let noop = baseline.measure(&ns_noop, MEASURED_PORT, cfg.round_trips)?;
        for (who, ns, daemon, programs) in order {
            let costs =
                packet_cost::measure(ns, daemon.pid(), programs, MEASURED_PORT, cfg.round_trips)?;
            for (name, cost) in costs {
                let over = cost.ns_per_run - noop.for_program(&name);
                result
                    .cost
                    .entry(format!("{who}, {name}"))
                    .or_default()
                    .push(over);
            }
        }
        eprintln!("bench: cost round {}/{COST_ROUNDS} done", round + 1);
    }
    for (what, overs) in &result.cost {
        let mut sorted = overs.clone();
        sorted.sort_by(f64::total_cmp);
        eprintln!(
            "bench: {what}: over the no-op median {:+.1} ns (min {:+.1}, max {:+.1})",
            sorted[sorted.len() / 2],
            sorted[0],
            sorted[sorted.len() - 1]
        );
    }
    Ok(())
}
