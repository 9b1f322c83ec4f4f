//! BENCHMARKS.md: the figures of one run, the machine, kernel and date, and the targets of
//! issue 6 beside them. Reports only: a missed target is written down, never an error.

use std::fmt::Write as _;
use std::process::Command;

use super::packet_cost::PROGRAMS;
use super::{Results, median, percentile, ratio};

#[derive(Debug, serde::Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub date: String,
    pub commit: String,
    pub profile: String,
}

impl Machine {
    pub fn read(profile: &str) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown CPU".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kb: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib: mem_kb / 1024.0 / 1024.0,
            kernel,
            date: utc_now(),
            commit: commit(),
            profile: profile.into(),
        }
    }
}

fn commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(crate::workspace_root())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown".into();
    };
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{head} (with uncommitted changes)")
    } else {
        head
    }
}

/// "YYYY-MM-DD HH:MM UTC" from the system clock.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// 100000 → "100 000".
pub fn count(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

fn ms(ns: u64) -> String {
    format!("{:.2} ms", ns as f64 / 1e6)
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

/// The figures the targets are judged on.
struct Headline {
    /// The highest per-packet cost of any program at 0 faults and at the top level.
    cost_at_zero: f64,
    cost_at_top: f64,
    top_level: usize,
    baseline: f64,
    baseline_ingress: f64,
    faultd_ratio: f64,
    iptables_ratio: f64,
    proxy_ratio: f64,
    rpc_p50: u64,
    rpc_p99: u64,
    apply_p50: u64,
    apply_p99: u64,
    faultctl_p50: u64,
    faultctl_max: u64,
    rss_zero: u64,
    rss_compare: u64,
    rss_top: u64,
    maps_top: u64,
    /// The highest of each program's median ns above the no-op, at any level; at 0 and at
    /// the top level.
    over_noop_worst: f64,
    over_noop_zero: f64,
    over_noop_top: f64,
    rr_bare: f64,
    rr_faultd: f64,
    rr_ratio: f64,
}

fn over_noop_at(r: &Results, i: usize) -> f64 {
    r.levels[i]
        .over_noop_ns
        .values()
        .map(|v| median(v))
        .fold(f64::NAN, f64::max)
}

fn worst_at(r: &Results, i: usize) -> f64 {
    r.levels[i]
        .cost_ns
        .values()
        .map(|v| median(v))
        .fold(f64::NAN, f64::max)
}

fn headline(r: &Results) -> Headline {
    let top = r.levels.len() - 1;
    let rss_at = |faults: usize| {
        r.levels
            .iter()
            .find(|l| l.faults == faults)
            .map_or(0, |l| l.memory.rss_bytes)
    };
    Headline {
        cost_at_zero: worst_at(r, 0),
        cost_at_top: worst_at(r, top),
        top_level: r.levels[top].faults,
        baseline: median(
            &r.levels
                .iter()
                .flat_map(|l| l.baseline_ns.iter().copied())
                .collect::<Vec<_>>(),
        ),
        baseline_ingress: median(
            &r.levels
                .iter()
                .flat_map(|l| l.baseline_ingress_ns.iter().copied())
                .collect::<Vec<_>>(),
        ),
        faultd_ratio: ratio(&r.compare.faultd, &r.compare.bare),
        iptables_ratio: ratio(&r.compare.iptables, &r.compare.bare),
        proxy_ratio: ratio(&r.compare.proxy, &r.compare.bare),
        rpc_p50: percentile(&r.apply.rpc_ns, 50.0),
        rpc_p99: percentile(&r.apply.rpc_ns, 99.0),
        apply_p50: percentile(&r.apply.apply_ns, 50.0),
        apply_p99: percentile(&r.apply.apply_ns, 99.0),
        faultctl_p50: percentile(&r.faultctl_ns, 50.0),
        faultctl_max: percentile(&r.faultctl_ns, 100.0),
        rss_zero: rss_at(0),
        rss_compare: rss_at(r.compare.faults),
        rss_top: r.levels[top].memory.rss_bytes,
        maps_top: r.levels[top].memory.bpf_map_bytes,
        over_noop_worst: (0..r.levels.len())
            .map(|i| over_noop_at(r, i))
            .fold(f64::NAN, f64::max),
        over_noop_zero: over_noop_at(r, 0),
        over_noop_top: over_noop_at(r, top),
        rr_bare: median(&r.compare.rr_bare),
        rr_faultd: median(&r.compare.rr_faultd),
        rr_ratio: ratio(&r.compare.rr_faultd, &r.compare.rr_bare),
    }
}

/// A few lines for the terminal.
pub fn summary(r: &Results) -> String {
    let h = headline(r);
    format!(
        "bench: per-packet cost (worst program) {:.0} ns at 0 faults, {:.0} ns at {} | \
         throughput at {} faults: faultd {:.0} %, iptables {:.0} %, proxy {:.0} % of bare | \
         AddFault p50 {} p99 {}, apply p50 {} p99 {}, faultctl drop p50 {} | \
         churn {:.0} changes/s, {} failed, {} reconnects | RSS {:.1} MB / {:.1} MB",
        h.cost_at_zero,
        h.cost_at_top,
        count(h.top_level),
        count(r.compare.faults),
        h.faultd_ratio * 100.0,
        h.iptables_ratio * 100.0,
        h.proxy_ratio * 100.0,
        ms(h.rpc_p50),
        ms(h.rpc_p99),
        ms(h.apply_p50),
        ms(h.apply_p99),
        ms(h.faultctl_p50),
        r.churn.changes_per_sec,
        r.churn.failed,
        r.churn.reconnects,
        h.rss_zero as f64 / 1e6,
        h.rss_compare as f64 / 1e6,
    )
}

pub fn markdown(r: &Results, plot: &str) -> String {
    let h = headline(r);
    let m = &r.machine;
    let c = &r.churn;
    let cmp = count(r.compare.faults);
    let mut s = String::new();
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "Written by `cargo xtask {}` on {}. Figures are medians of {} repetition(s){}; \
         ratios are taken within each round (the setups run one after the other, in a rotating \
         order) and their median reported. These machines are shared and noisy: rerun before \
         reading much into a few per cent.\n",
        if r.quick { "bench --quick" } else { "bench" },
        m.date,
        r.reps,
        if r.quick {
            " — **quick mode: tiny counts (and usually a debug build), the figures mean nothing**"
        } else {
            ""
        },
    );
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(
        s,
        "| machine | {}, {} cores, {:.0} GiB |",
        m.cpu, m.cores, m.memory_gib
    );
    let _ = writeln!(s, "| kernel | Linux {} |", m.kernel);
    let _ = writeln!(s, "| faultd | commit {}, {} build |", m.commit, m.profile);
    let _ = writeln!(
        s,
        "| date | {} (the run took {:.0} s) |\n",
        m.date, r.seconds
    );

    let _ = writeln!(s, "## Summary\n");
    let _ = writeln!(s, "| measurement | target | result | |\n|---|---|---|---|");
    let _ = writeln!(
        s,
        "| per-packet cost, pass-through, above a no-op program measured alike (same hook, same rounds; slowest program) | ≤ 30 ns at every number of faults up to {} | {:.0} ns at 0 faults, {:.0} ns at {} (worst {:.0} ns; absolute: {:.0} ns and {:.0} ns, the no-op {:.0} ns at egress and {:.0} ns at ingress) | {} |",
        count(h.top_level),
        h.over_noop_zero,
        h.over_noop_top,
        count(h.top_level),
        h.over_noop_worst,
        h.cost_at_zero,
        h.cost_at_top,
        h.baseline,
        h.baseline_ingress,
        verdict(h.over_noop_worst <= 30.0),
    );
    targets_row(&mut s, &r.targets);
    let _ = writeln!(
        s,
        "| request/response: 1-byte TCP ping-pongs per second with faultd and {cmp} faults on other ports | ≥ 97 % of no faultd | {:.1} % ({:.0}/s against {:.0}/s) | {} |",
        h.rr_ratio * 100.0,
        h.rr_faultd,
        h.rr_bare,
        verdict(h.rr_ratio >= 0.97),
    );
    let _ = writeln!(
        s,
        "| TCP throughput with faultd and {cmp} faults on other ports | ≥ 90 % of no faultd | {:.1} % | {} |",
        h.faultd_ratio * 100.0,
        verdict(h.faultd_ratio >= 0.9)
    );
    let _ = writeln!(
        s,
        "| … the same {cmp} rules as iptables DROP rules | reported | {:.1} % | |",
        h.iptables_ratio * 100.0
    );
    let _ = writeln!(
        s,
        "| … through a userspace TCP proxy | reported | {:.1} % | |",
        h.proxy_ratio * 100.0
    );
    let _ = writeln!(
        s,
        "| AddFault round trip | p99 < 2 ms | p50 {}, p99 {} | {} |",
        ms(h.rpc_p50),
        ms(h.rpc_p99),
        verdict(h.rpc_p99 < 2_000_000)
    );
    let _ = writeln!(
        s,
        "| AddFault call → first packet affected | reported | p50 {}, p99 {} | |",
        ms(h.apply_p50),
        ms(h.apply_p99)
    );
    let _ = writeln!(
        s,
        "| `faultctl drop`, wall time | < 50 ms | median {}, slowest {} | {} |",
        ms(h.faultctl_p50),
        ms(h.faultctl_max),
        verdict(h.faultctl_max < 50_000_000)
    );
    let _ = writeln!(
        s,
        "| churn: fault changes on port A | ≥ 1 000/s, no failure and no reconnect on port B | {:.0}/s; {} failed, {} reconnects | {} |",
        c.changes_per_sec,
        c.failed,
        c.reconnects,
        verdict(c.changes_per_sec >= 1000.0 && c.failed == 0 && c.reconnects == 0)
    );
    let _ = writeln!(
        s,
        "| faultd RSS | < 50 MB at {} faults | {:.1} MB with 0 faults, {:.1} MB with {cmp}, {:.1} MB with {} | {} |",
        count(h.top_level),
        h.rss_zero as f64 / 1e6,
        h.rss_compare as f64 / 1e6,
        h.rss_top as f64 / 1e6,
        count(h.top_level),
        verdict(h.rss_zero < 50_000_000 && h.rss_top < 50_000_000)
    );
    let _ = writeln!(
        s,
        "| kernel memory of faultd's BPF maps (memlock) | reported, beside the RSS | {:.1} MB with {} faults | |\n",
        h.maps_top as f64 / 1e6,
        count(h.top_level),
    );
    let _ = writeln!(
        s,
        "![per-packet cost and throughput against installed faults]({plot})\n"
    );

    // 1 and 5.
    let _ = writeln!(
        s,
        "## 1. Per-packet cost, throughput and memory against installed faults\n"
    );
    let _ = writeln!(
        s,
        "One faultd per row, each attached to the `lo` of a namespace of its own and holding \
         that many drop faults on other TCP ports (from 10000 up over {} ports, so up to 2 per \
         port past 50 000; added with {} AddFault calls in flight over one connection). All \
         rows are measured in the same rounds, in a rotating order, so that the machine's \
         changing load touches each alike. Per-packet cost: the kernel's own accounting \
         (`kernel.bpf_stats_enabled=1` for the measurement only, then restored; `run_time_ns` \
         and `run_cnt` in the fdinfo of faultd's program fds) around {} TCP ping-pongs of 64 \
         bytes on port 5201, which carries no fault: the pass-through path (the faulted-ports \
         bitmap says no; no rule lookup). On `lo` every packet crosses TC egress, then TC ingress; faultd attaches no XDP to `lo` \
         (its XDP program, loaded but idle there, shows –). \
         Throughput: a TCP transfer on port 5201, {} slices of {:.2} s per setup and round, \
         the setups' slices taken in turn, beside the same in a namespace without faultd.\n",
        count(super::FAULT_PORTS),
        super::ADD_CONCURRENCY,
        count(r.round_trips),
        r.slices,
        r.transfer_secs / r.slices.max(1) as f64,
    );
    let mut header = String::from("| faults |");
    let mut rule = String::from("|---:|");
    for p in PROGRAMS {
        let _ = write!(header, " `{p}` ns/packet |");
        rule.push_str("---:|");
    }
    for p in PROGRAMS {
        let _ = write!(header, " `{p}` above no-op |");
        rule.push_str("---:|");
    }
    header.push_str(
        " no-op ns/packet (egress / ingress) | faultd Gbit/s | no faultd Gbit/s | ratio | faultd RSS | BPF maps (kernel) | adds/s |",
    );
    rule.push_str("---:|---:|---:|---:|---:|---:|---:|");
    let _ = writeln!(s, "{header}\n{rule}");
    for l in &r.levels {
        let mut row = format!("| {} |", count(l.faults));
        for p in PROGRAMS {
            match l.cost_ns.get(p) {
                Some(v) => {
                    let _ = write!(row, " {:.1} |", median(v));
                }
                None => row.push_str(" – |"),
            }
        }
        for p in PROGRAMS {
            match l.over_noop_ns.get(p) {
                Some(v) => {
                    let _ = write!(row, " {:+.1} |", median(v));
                }
                None => row.push_str(" – |"),
            }
        }
        // Below a thousand, the connection and the first call dominate.
        let adds = if l.added >= 1000 {
            format!("{:.0}", l.added as f64 / l.add_secs)
        } else {
            "–".into()
        };
        let _ = writeln!(
            row,
            " {:.1} / {:.1} | {:.1} | {:.1} | {:.1} % | {:.1} MB | {:.1} MB | {adds} |",
            median(&l.baseline_ns),
            median(&l.baseline_ingress_ns),
            median(&l.faultd_gbps),
            median(&l.bare_gbps),
            ratio(&l.faultd_gbps, &l.bare_gbps) * 100.0,
            l.memory.rss_bytes as f64 / 1e6,
            l.memory.bpf_map_bytes as f64 / 1e6,
        );
        s.push_str(&row);
    }
    let runs: Vec<u64> = r
        .levels
        .iter()
        .flat_map(|l| l.runs.values().flatten().copied())
        .collect();
    let _ = writeln!(
        s,
        "\nEach program ran {} to {} times per round (about two packets per ping-pong). \
         The accounting itself costs something (two clock reads per run), so the figures \
         are upper bounds; the *no-op* column is two programs that only return \
         `TC_ACT_OK`, attached by TCX at the egress and at the ingress of another namespace's \
         `lo` and measured the same way in the same rounds: what running any program costs \
         at each hook, against which faultd's own work reads; the *above no-op* columns are each \
         program's cost less the no-op's at its own hook in the same round, the median over \
         rounds. Throughput is measured with the accounting off. Costs are \
         the median over rounds; with other work on the machine a round can be much slower \
         (see `target/bench/results.json`). faultd's RSS is its own \
         memory; the BPF maps (rules, flows, counters, preallocated at load) are kernel memory, \
         the same whatever the number of faults.\n",
        count(runs.iter().copied().min().unwrap_or(0) as usize),
        count(runs.iter().copied().max().unwrap_or(0) as usize),
    );

    // 2.
    let _ = writeln!(
        s,
        "## 2. Throughput against the alternatives ({cmp} rules)\n"
    );
    let _ = writeln!(
        s,
        "A loopback TCP transfer (128 KiB writes) on a port without faults, each setup in a \
         namespace of its own; in each round {:.1} s per setup in {} slices, the setups' slices \
         taken in turn. Gbit/s: the median over rounds; the share: the median of each round's \
         ratio to no faultd.\n",
        r.transfer_secs, r.slices,
    );
    let _ = writeln!(s, "| setup | Gbit/s | of no faultd |\n|---|---:|---:|");
    let cmpr = &r.compare;
    for (name, v) in [
        ("no faultd".to_string(), &cmpr.bare),
        (
            format!("faultd attached, {cmp} faults on other ports"),
            &cmpr.faultd,
        ),
        (
            format!("{cmp} iptables rules `-A INPUT -p tcp --dport P -j DROP` on other ports"),
            &cmpr.iptables,
        ),
        (
            "a userspace TCP proxy (tokio copy, 64 KiB buffers), no faultd".to_string(),
            &cmpr.proxy,
        ),
    ] {
        let _ = writeln!(
            s,
            "| {name} | {:.1} | {:.1} % |",
            median(v),
            ratio(v, &cmpr.bare) * 100.0
        );
    }
    let _ = writeln!(
        s,
        "\niptables is what Chaos Mesh and Pumba use (here iptables {}): every packet walks \
         the rules in order. The proxy stands for Toxiproxy-style tools: every byte crosses \
         user space twice.\n",
        iptables_version()
    );
    let _ = writeln!(
        s,
        "Request/response, where a per-packet cost shows (a bulk transfer hides it in 64 KiB \
         GSO packets): one connection on port 5201 writes one byte, the other end echoes it, \
         for {:.1} s per setup and round, no faultd and faultd with {cmp} faults in turn. \
         Transactions per second, median over rounds: no faultd {:.0}, faultd {:.0}; the share: \
         {:.1} % (the median of each round's ratio). Beside them, measured alike in the same \
         rounds, the namespace with only the no-op program attached: {:.0} ({:.1} %), what \
         running any program there costs.\n",
        r.rr_secs,
        h.rr_bare,
        h.rr_faultd,
        h.rr_ratio * 100.0,
        median(&r.compare.rr_noop),
        ratio(&r.compare.rr_noop, &r.compare.rr_bare) * 100.0,
    );

    // 3.
    let a = &r.apply;
    let _ = writeln!(s, "## 3. Fault-apply latency\n");
    let _ = writeln!(
        s,
        "A second faultd with no other faults. {} times: a UDP drop fault is added on a port \
         that a probe stream (a datagram every {:.0} µs on average) flows to, the kernel's \
         first-hit event for that fault is awaited, and the fault is removed. *Apply* is from \
         just before the AddFault call to the kernel timestamp (`CLOCK_MONOTONIC`, the same \
         clock) of the first packet the fault dropped, so it includes up to one probe gap.\n",
        count(a.rpc_ns.len()),
        a.probe_interval_ns as f64 / 1e3,
    );
    let _ = writeln!(s, "| | p50 | p99 | max |\n|---|---:|---:|---:|");
    for (name, v) in [
        ("AddFault round trip", &a.rpc_ns),
        ("AddFault call → first packet dropped", &a.apply_ns),
        ("RemoveFault round trip", &a.remove_ns),
        ("`faultctl drop --port P`, wall time", &r.faultctl_ns),
    ] {
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} |",
            ms(percentile(v, 50.0)),
            ms(percentile(v, 99.0)),
            ms(percentile(v, 100.0))
        );
    }
    let _ = writeln!(
        s,
        "\n{} add(s) saw no first-hit event within a second. `faultctl drop` is timed {} times \
         (after one unmeasured run) from process start to exit: start-up, connection, call.\n",
        a.missing,
        r.faultctl_ns.len()
    );

    // 4.
    let _ = writeln!(s, "## 4. Churn\n");
    let _ = writeln!(
        s,
        "For {:.0} s, {} loops add and remove drop faults on port A as fast as faultd answers, \
         while {} keep-alive HTTP/1.1 clients send requests to a server on port B.\n",
        c.seconds,
        4,
        super::churn::CLIENTS
    );
    let _ = writeln!(s, "| | |\n|---|---:|");
    let _ = writeln!(
        s,
        "| fault changes (adds + removes) | {} |",
        count(c.changes as usize)
    );
    let _ = writeln!(s, "| changes per second | {:.0} |", c.changes_per_sec);
    let _ = writeln!(
        s,
        "| requests answered on port B | {} |",
        count(c.requests as usize)
    );
    let _ = writeln!(s, "| failed requests on port B | {} |", c.failed);
    let _ = writeln!(s, "| reconnects on port B | {} |", c.reconnects);
    let _ = writeln!(
        s,
        "| client source ports changed | {} |\n",
        c.changed_source_ports
    );

    let _ = writeln!(s, "## Reproduce\n");
    let _ = writeln!(
        s,
        "`cargo xtask bench` (as root; this run took {}). It builds faultd in release mode, \
         creates namespaces named `fdb-*` and removes them afterwards, and rewrites this file, \
         `{plot}` and `target/bench/results.json` (every repetition). `cargo xtask bench \
         --quick` runs the same code with tiny counts in a few seconds and writes to \
         `target/bench-quick/`; `cargo xtask test` runs it after the test suites.",
        if r.seconds < 90.0 {
            format!("{:.0} s", r.seconds)
        } else {
            format!("{:.0} min", r.seconds / 60.0)
        },
    );
    s
}

fn iptables_version() -> String {
    Command::new("iptables")
        .arg("--version")
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .trim_start_matches("iptables ")
                .to_string()
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The summary row of issue #14's richer targets: pass-through cost and request/response
/// rate with 1 000 ranges, 1 000 tuples and a 1 024-pair partition installed.
fn targets_row(s: &mut String, t: &super::packet_cost::TargetsCost) {
    let over: Vec<(String, f64)> = t
        .over_noop_ns
        .iter()
        .map(|(p, v)| (p.clone(), median(v)))
        .collect();
    let worst = over.iter().map(|(_, v)| *v).fold(f64::NAN, f64::max);
    let each = over
        .iter()
        .map(|(p, v)| format!("`{p}` {v:+.0} ns"))
        .collect::<Vec<_>>()
        .join(", ");
    let rr = ratio(&t.rr_faultd, &t.rr_bare);
    let _ = writeln!(
        s,
        "| the same pass-through with {} faults on richer targets installed (1 000 port ranges, 1 000 port tuples, a partition of 1 024 address pairs), above the no-op at each hook; request/response beside no faultd | ≤ 30 ns; ≥ 97 % | {each}; request/response {:.1} % ({:.0}/s against {:.0}/s) | {} |",
        count(t.faults),
        rr * 100.0,
        median(&t.rr_faultd),
        median(&t.rr_bare),
        verdict(worst <= 30.0 && rr >= 0.97),
    );
}
