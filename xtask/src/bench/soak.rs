//! `cargo xtask bench --soak[=DURATION]` (10 minutes by default), not part of the test
//! command: one faultd under churn with traffic for a long time, its resources sampled as it
//! goes — resident memory, open file descriptors, tasks, and the entries of its BPF hash maps
//! as the kernel counts them — then `clear`, and the same once more. Writes
//! target/bench/soak.json and the "Soak" section of BENCHMARKS.md (the rest of the file is
//! the regular bench's, which keeps this section when it rewrites the file).
//!
//! The load, all inside a namespace of the bench's own, on its `lo`:
//! - 4 loops add a fault on port A and remove it, again and again, the action changing each
//!   time (drop, loss, reset, corrupt, duplicate, record);
//! - one loop adds drops with a short TTL on other ports, which faultd expires by itself;
//! - one loop opens a new TCP connection to port A every 100 ms: a new flow each time, so
//!   flow state and first-hit events whenever a fault is on;
//! - a WatchEvents stream is opened every 5 s, read for a second and dropped;
//! - 4 keep-alive HTTP/1.1 clients hit a server on port B, which no fault touches, a request
//!   every 5 ms each.

use std::net::Ipv4Addr;
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::net::{TcpListener, TcpStream};

use super::api::{self, proto};
use super::netns::{self, bpf_fdinfo, fdinfo_field};
use super::{CHURN_PORT_A, CHURN_PORT_B, churn, median};

/// Ports of the faults with a TTL: TTL_PORT_BASE.. (TTL_PORTS of them, in turn).
const TTL_PORT_BASE: u16 = 6100;
const TTL_PORTS: u16 = 64;
const TTL: Duration = Duration::from_millis(1500);
const CHURNERS: usize = 4;

/// The markers around the section in BENCHMARKS.md.
const BEGIN: &str = "<!-- soak: written by `cargo xtask bench --soak`; kept by the bench -->";
const END: &str = "<!-- /soak -->";

/// faultd's resources at one moment.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sample {
    pub secs: f64,
    pub rss_bytes: u64,
    pub fds: usize,
    pub tasks: usize,
    /// Faults faultd holds (ListFaults).
    pub faults: usize,
    /// Entries of faultd's hash maps, by map name, counted in the kernel.
    pub map_entries: Vec<(String, u64)>,
}

#[derive(Debug, serde::Serialize)]
pub struct SoakResult {
    pub machine: super::report::Machine,
    pub seconds: f64,
    pub samples: Vec<Sample>,
    pub after_clear: Sample,
    /// The capacity of each hash map (`max_entries`).
    pub map_capacity: Vec<(String, u64)>,
    /// Fault changes faultd accepted (adds and removes of the churn loops, TTL adds).
    pub changes: u64,
    /// Faults added with a TTL (faultd removed them itself).
    pub expiring: u64,
    /// Connections opened to the faulted port (new flows), and how many got through.
    pub flows: u64,
    pub flows_connected: u64,
    /// WatchEvents streams opened, and the events they read.
    pub watchers: u64,
    pub events_read: u64,
    pub requests: u64,
    pub failed: u64,
}

/// Parses `10m`, `180s`, `1h`, or a number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 10m, 180s or 1h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" | "min" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{text:?}: the unit is s, m or h")),
    };
    if secs == 0 {
        return Err("the soak needs a duration above zero".into());
    }
    Ok(Duration::from_secs(secs))
}

pub fn run(
    faultd: &Path,
    profile: &str,
    out_dir: &Path,
    report: &Path,
    duration: Duration,
) -> anyhow::Result<()> {
    netns::remove_stale();
    let machine = super::report::Machine::read(profile);
    let ns = netns::new("soak")?;
    let daemon = netns::start_faultd(&ns, faultd, out_dir.join("faultd-soak.log"))?;
    let every = (duration / 60).max(Duration::from_secs(2));
    eprintln!("bench: soak for {duration:?}, sampling every {every:?}");
    let pid = daemon.pid();
    let result = ns.block_on(|| soak(pid, duration, every, machine))?;
    drop(daemon);
    drop(ns);

    let json = out_dir.join("soak.json");
    std::fs::write(&json, serde_json::to_string_pretty(&result)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let old = std::fs::read_to_string(report).unwrap_or_default();
    let text = with_section(&old, &markdown(&result));
    std::fs::write(report, text).with_context(|| format!("writing {}", report.display()))?;
    eprintln!("{}", summary(&result));
    eprintln!(
        "bench: wrote the soak into {} and {}",
        report.display(),
        json.display()
    );
    let verdict = verdict(&result);
    if !verdict.flat() {
        bail!("the soak was not flat: {}", verdict.why.join("; "));
    }
    Ok(())
}

#[derive(Default)]
struct Tally {
    changes: AtomicU64,
    expiring: AtomicU64,
    flows: AtomicU64,
    flows_connected: AtomicU64,
    watchers: AtomicU64,
    events_read: AtomicU64,
    requests: AtomicU64,
    failed: AtomicU64,
}

async fn soak(
    pid: u32,
    duration: Duration,
    every: Duration,
    machine: super::report::Machine,
) -> anyhow::Result<SoakResult> {
    let http = TcpListener::bind((Ipv4Addr::LOCALHOST, CHURN_PORT_B))
        .await
        .with_context(|| format!("binding port {CHURN_PORT_B}"))?;
    let http_server = tokio::spawn(churn::serve(http));
    let faulted = TcpListener::bind((Ipv4Addr::LOCALHOST, CHURN_PORT_A))
        .await
        .with_context(|| format!("binding port {CHURN_PORT_A}"))?;
    // Accepts and closes: the flows only need to exist.
    let faulted_server = tokio::spawn(async move {
        while let Ok((conn, _)) = faulted.accept().await {
            drop(conn);
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let client = api::connect().await?;

    let mut load = tokio::task::JoinSet::new();
    for _ in 0..churn::CLIENTS {
        load.spawn(http_client(stop.clone(), tally.clone()));
    }
    for n in 0..CHURNERS {
        load.spawn(churner(client.clone(), n, stop.clone(), tally.clone()));
    }
    load.spawn(expirer(client.clone(), stop.clone(), tally.clone()));
    load.spawn(flow_maker(stop.clone(), tally.clone()));
    load.spawn(watcher(client.clone(), stop.clone(), tally.clone()));

    let start = Instant::now();
    let mut samples = Vec::new();
    let mut api_client = client.clone();
    loop {
        samples.push(sample(pid, start, &mut api_client).await?);
        let last = samples.last().unwrap();
        eprintln!(
            "bench: soak {:>4.0} s: RSS {:.1} MiB, {} fds, {} tasks, {} faults, map entries {:?}",
            last.secs,
            last.rss_bytes as f64 / (1 << 20) as f64,
            last.fds,
            last.tasks,
            last.faults,
            last.map_entries
        );
        if start.elapsed() >= duration {
            break;
        }
        tokio::time::sleep(every.min(duration.saturating_sub(start.elapsed()))).await;
        // A loop that failed ends the soak with its error.
        if let Some(done) = load.try_join_next() {
            done??;
            bail!("a soak loop ended early");
        }
    }
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = load.join_next().await {
        done??;
    }
    let seconds = start.elapsed().as_secs_f64();
    http_server.abort();
    faulted_server.abort();

    api_client
        .clear_faults(proto::ClearFaultsRequest::default())
        .await
        .context("ClearFaults")?;
    // Timers of faults with a TTL that were cleared end by then, and the kernel releases
    // what the last connections held.
    tokio::time::sleep(TTL + Duration::from_secs(1)).await;
    let after_clear = sample(pid, start, &mut api_client).await?;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    Ok(SoakResult {
        machine,
        seconds,
        samples,
        after_clear,
        map_capacity: hash_maps(pid)?
            .into_iter()
            .map(|(name, info)| (name, u64::from(info.max_entries())))
            .collect(),
        changes: load(&tally.changes),
        expiring: load(&tally.expiring),
        flows: load(&tally.flows),
        flows_connected: load(&tally.flows_connected),
        watchers: load(&tally.watchers),
        events_read: load(&tally.events_read),
        requests: load(&tally.requests),
        failed: load(&tally.failed),
    })
}

/// The actions the churn loops take in turn, all on port A.
fn action(turn: u64) -> proto::action::Kind {
    use proto::action::Kind;
    match turn % 6 {
        0 => Kind::Drop(proto::Drop { probability: None }),
        1 => Kind::Loss(proto::Loss { percent: 50.0 }),
        2 => Kind::Reset(proto::Reset { probability: None }),
        3 => Kind::Corrupt(proto::Corrupt { percent: 10.0 }),
        4 => Kind::Duplicate(proto::Duplicate { percent: 10.0 }),
        _ => Kind::Record(proto::Record {}),
    }
}

fn spec(port: u16, kind: proto::action::Kind, ttl: Option<Duration>) -> proto::FaultSpec {
    let mut spec = api::drop_spec(port, proto::Protocol::Tcp);
    spec.action = Some(proto::Action { kind: Some(kind) });
    spec.ttl_ms = ttl.map(|t| t.as_millis() as u64);
    spec.label = "soak".into();
    spec
}

async fn churner(
    mut client: api::Client,
    n: usize,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> anyhow::Result<()> {
    let mut turn = n as u64;
    while !stop.load(Ordering::Relaxed) {
        let id = api::add(&mut client, spec(CHURN_PORT_A, action(turn), None)).await?;
        tally.changes.fetch_add(1, Ordering::Relaxed);
        // Held a little, so that the flows meet it.
        tokio::time::sleep(Duration::from_millis(20)).await;
        api::remove(&mut client, id).await?;
        tally.changes.fetch_add(1, Ordering::Relaxed);
        turn += CHURNERS as u64;
    }
    Ok(())
}

async fn expirer(
    mut client: api::Client,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> anyhow::Result<()> {
    let mut i = 0u16;
    while !stop.load(Ordering::Relaxed) {
        let port = TTL_PORT_BASE + i % TTL_PORTS;
        let kind = proto::action::Kind::Drop(proto::Drop { probability: None });
        api::add(&mut client, spec(port, kind, Some(TTL))).await?;
        tally.changes.fetch_add(1, Ordering::Relaxed);
        tally.expiring.fetch_add(1, Ordering::Relaxed);
        i = i.wrapping_add(1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Keep-alive requests to port B, a few hundred a second (a soak, not a load test: the
/// machine is shared); a failed request is counted and the connection replaced.
async fn http_client(stop: Arc<AtomicBool>, tally: Arc<Tally>) -> anyhow::Result<()> {
    let mut conn = None;
    while !stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            let connect = TcpStream::connect((Ipv4Addr::LOCALHOST, CHURN_PORT_B));
            match tokio::time::timeout(Duration::from_secs(2), connect).await {
                Ok(Ok(c)) => conn = Some(tokio::io::BufReader::new(c)),
                _ => {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let c = conn.as_mut().unwrap();
        match tokio::time::timeout(Duration::from_secs(2), churn::request(c)).await {
            Ok(Ok(())) => tally.requests.fetch_add(1, Ordering::Relaxed),
            _ => {
                conn = None;
                tally.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

async fn flow_maker(stop: Arc<AtomicBool>, tally: Arc<Tally>) -> anyhow::Result<()> {
    while !stop.load(Ordering::Relaxed) {
        tally.flows.fetch_add(1, Ordering::Relaxed);
        let connect = TcpStream::connect((Ipv4Addr::LOCALHOST, CHURN_PORT_A));
        // A dropped SYN is retried after a second: give up well before.
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(300), connect).await {
            tally.flows_connected.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn watcher(
    mut client: api::Client,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> anyhow::Result<()> {
    while !stop.load(Ordering::Relaxed) {
        let mut stream = client
            .watch_events(proto::WatchEventsRequest {
                follow: true,
                ..Default::default()
            })
            .await
            .context("WatchEvents")?
            .into_inner();
        tally.watchers.fetch_add(1, Ordering::Relaxed);
        let until = Instant::now() + Duration::from_secs(1);
        while let Ok(Ok(Some(_))) = tokio::time::timeout(
            until.saturating_duration_since(Instant::now()),
            stream.message(),
        )
        .await
        {
            tally.events_read.fetch_add(1, Ordering::Relaxed);
        }
        drop(stream);
        tokio::time::sleep(Duration::from_secs(4)).await;
    }
    Ok(())
}

async fn sample(pid: u32, start: Instant, client: &mut api::Client) -> anyhow::Result<Sample> {
    let faults = api::count(client).await?;
    let count = |dir: &str| -> anyhow::Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{pid}/{dir}"))
            .with_context(|| format!("reading /proc/{pid}/{dir}"))?
            .count())
    };
    Ok(Sample {
        secs: start.elapsed().as_secs_f64(),
        rss_bytes: super::memory::rss_bytes(pid)?,
        fds: count("fd")?,
        tasks: count("task")?,
        faults,
        map_entries: map_entries(pid)?,
    })
}

/// The entries of each of faultd's hash maps (the arrays are always full), counted by
/// walking their keys in the kernel.
fn map_entries(pid: u32) -> anyhow::Result<Vec<(String, u64)>> {
    let mut counts = Vec::new();
    for (name, info) in hash_maps(pid)? {
        let fd = info.fd().with_context(|| format!("map {name}"))?;
        counts.push((name, count_keys(fd.as_fd().as_raw_fd(), info.key_size())?));
    }
    Ok(counts)
}

/// faultd's hash maps, by name.
fn hash_maps(pid: u32) -> anyhow::Result<Vec<(String, aya::maps::MapInfo)>> {
    use aya::maps::{MapInfo, MapType};
    let mut ids: Vec<u32> = bpf_fdinfo(pid, "bpf-map")?
        .iter()
        .filter_map(|(_, info)| fdinfo_field(info, "map_id"))
        .map(|id| id as u32)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let mut maps = Vec::new();
    for id in ids {
        let info = MapInfo::from_id(id).with_context(|| format!("map {id}"))?;
        let hash = matches!(
            info.map_type(),
            Ok(MapType::Hash
                | MapType::LruHash
                | MapType::PerCpuHash
                | MapType::LruPerCpuHash
                | MapType::LpmTrie)
        );
        if !hash {
            continue;
        }
        maps.push((info.name_as_str().unwrap_or("?").to_string(), info));
    }
    maps.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(maps)
}

/// Walks a map's keys with BPF_MAP_GET_NEXT_KEY.
fn count_keys(fd: i32, key_size: u32) -> anyhow::Result<u64> {
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        next_key: u64,
        flags: u64,
    }
    let mut key = vec![0u8; key_size as usize];
    let mut next = vec![0u8; key_size as usize];
    let mut first = true;
    let mut n = 0u64;
    loop {
        let attr = Attr {
            map_fd: fd as u32,
            _pad: 0,
            // A null key asks for the first one.
            key: if first { 0 } else { key.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the attribute points at buffers of the map's key size, alive for the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_GET_NEXT_KEY,
                &raw const attr,
                size_of::<Attr>(),
            )
        };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENOENT) {
                return Ok(n);
            }
            return Err(err).context("BPF_MAP_GET_NEXT_KEY");
        }
        n += 1;
        first = false;
        std::mem::swap(&mut key, &mut next);
    }
}

/// `text` with its soak section replaced by `section` (or `section` appended).
pub fn with_section(text: &str, section: &str) -> String {
    let section = format!("{BEGIN}\n{}\n{END}\n", section.trim_end());
    match (text.find(BEGIN), text.find(END)) {
        (Some(begin), Some(end)) if end > begin => {
            let after = &text[end + END.len()..];
            format!(
                "{}{section}{}",
                &text[..begin],
                after.trim_start_matches('\n')
            )
        }
        _ if text.is_empty() => section,
        _ => format!("{}\n\n{section}", text.trim_end()),
    }
}

/// The soak section of `old`, markers included, to keep when the bench rewrites the file.
pub fn keep_section(old: &str, new: String) -> String {
    match (old.find(BEGIN), old.find(END)) {
        (Some(begin), Some(end)) if end > begin => {
            format!("{}\n\n{}\n", new.trim_end(), &old[begin..end + END.len()])
        }
        _ => new,
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1 << 20) as f64)
}

fn entries(sample: &Sample, name: &str) -> String {
    sample
        .map_entries
        .iter()
        .find(|(n, _)| n == name)
        .map_or_else(|| "-".into(), |(_, c)| c.to_string())
}

/// Medians of the first and the last quarter of the samples, and the largest value.
fn spread(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> (f64, f64, f64) {
    let q = (samples.len() / 4).max(1);
    let values: Vec<f64> = samples.iter().map(&f).collect();
    let first = median(&values[..q.min(values.len())]);
    let last = median(&values[values.len().saturating_sub(q)..]);
    let max = values.iter().copied().fold(f64::MIN, f64::max);
    (first, last, max)
}

/// RSS may grow by less than this over the soak's second half and still be flat: glibc's
/// free lists and tokio's task slabs settle within a few minutes; a leak of one small
/// allocation per fault change (300 a second) would show as several MiB per minute.
const FLAT_KIB_PER_MIN: f64 = 64.0;
/// Open fds and tasks may vary this much (a WatchEvents stream's connection, a blocking
/// thread) and still be flat.
const FLAT_SPREAD: f64 = 3.0;

/// Whether faultd's resources were flat over the second half of the soak, and came back
/// after `clear`.
#[derive(Debug, serde::Serialize)]
pub struct Verdict {
    pub from_secs: f64,
    pub samples: usize,
    pub rss_kib_per_min: f64,
    /// Lowest and highest over the second half.
    pub fds: (f64, f64),
    pub tasks: (f64, f64),
    /// What was not flat, in words; empty when flat.
    pub why: Vec<String>,
}

impl Verdict {
    pub fn flat(&self) -> bool {
        self.why.is_empty()
    }
}

/// The samples nearest each multiple of `every` seconds, the first and last included.
fn per_row(samples: &[Sample], every: f64) -> Vec<&Sample> {
    let mut rows: Vec<&Sample> = Vec::new();
    let mut next = 0.0;
    for (i, sample) in samples.iter().enumerate() {
        if sample.secs + 1.0 >= next || i == samples.len() - 1 {
            rows.push(sample);
            next = (sample.secs / every).round() * every + every;
        }
    }
    rows
}

/// The least-squares slope of `ys` over `xs`.
fn slope(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    if xs.len() < 2 {
        return 0.0;
    }
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let cov: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    if var == 0.0 { 0.0 } else { cov / var }
}

pub fn verdict(r: &SoakResult) -> Verdict {
    let from_secs = r.seconds / 2.0;
    let half: Vec<&Sample> = r.samples.iter().filter(|s| s.secs >= from_secs).collect();
    let xs: Vec<f64> = half.iter().map(|s| s.secs / 60.0).collect();
    let rss: Vec<f64> = half.iter().map(|s| s.rss_bytes as f64 / 1024.0).collect();
    let range = |f: fn(&Sample) -> usize| {
        let v = half.iter().map(|s| f(s) as f64);
        (
            v.clone().fold(f64::MAX, f64::min),
            v.fold(f64::MIN, f64::max),
        )
    };
    let mut v = Verdict {
        from_secs,
        samples: half.len(),
        rss_kib_per_min: slope(&xs, &rss),
        fds: range(|s| s.fds),
        tasks: range(|s| s.tasks),
        why: Vec::new(),
    };
    if v.rss_kib_per_min >= FLAT_KIB_PER_MIN {
        v.why
            .push(format!("RSS grows {:.0} KiB per minute", v.rss_kib_per_min));
    }
    for (what, (lo, hi)) in [("fds", v.fds), ("tasks", v.tasks)] {
        if hi - lo > FLAT_SPREAD {
            v.why.push(format!("{what} between {lo:.0} and {hi:.0}"));
        }
    }
    if r.after_clear.faults != 0 {
        v.why
            .push(format!("{} faults after clear", r.after_clear.faults));
    }
    for (name, n) in &r.after_clear.map_entries {
        if *n != 0 {
            v.why.push(format!("{name} holds {n} entries after clear"));
        }
    }
    if half.len() < 3 {
        v.why.push("too few samples in the second half".into());
    }
    v
}

pub fn markdown(r: &SoakResult) -> String {
    let mut s = String::new();
    let minutes = r.seconds / 60.0;
    let names: Vec<String> = r
        .samples
        .first()
        .map(|s| s.map_entries.iter().map(|(n, _)| n.clone()).collect())
        .unwrap_or_default();
    s += "## Soak\n\n";
    s += &format!(
        "`cargo xtask bench --soak` ({minutes:.1} minutes here; 10 by default, \
         `--soak=DURATION` for another length; not part of `cargo xtask test`). One faultd on \
         a namespace's `lo`: {CHURNERS} loops add a fault on port {CHURN_PORT_A} and remove \
         it again (drop, loss, reset, corrupt, duplicate, record in turn), one adds drops \
         with a {:.1} s TTL that faultd expires itself, one opens a new TCP connection to \
         port {CHURN_PORT_A} every 100 ms (a new flow each time: flow state and first-hit \
         events), a WatchEvents stream is opened every 5 s and read for a second, and {} \
         keep-alive HTTP clients hit port {CHURN_PORT_B}, which no fault touches, a request \
         every 5 ms each. faultd's \
         resident memory, open file descriptors (`/proc/PID/fd`), tasks (`/proc/PID/task`) \
         and the entries of its hash maps (walked in the kernel) are sampled as it goes; \
         then `clear`.\n\n",
        TTL.as_secs_f64(),
        churn::CLIENTS,
    );
    s += &format!(
        "Run {} on {} ({} cores), kernel {}, commit {}, {} build: {:.1} minutes, {} fault \
         changes ({:.0}/s; {} of them faults with a TTL), {} new flows to the faulted port \
         ({} connected), {} event streams ({} events read), {} HTTP requests ({} failed).\n\n",
        r.machine.date,
        r.machine.cpu,
        r.machine.cores,
        r.machine.kernel,
        r.machine.commit,
        r.machine.profile,
        minutes,
        r.changes,
        r.changes as f64 / r.seconds,
        r.expiring,
        r.flows,
        r.flows_connected,
        r.watchers,
        r.events_read,
        r.requests,
        r.failed,
    );
    let mut header = "| time | RSS (MiB) | fds | tasks | faults |".to_string();
    let mut rule = "|---:|---:|---:|---:|---:|".to_string();
    for n in &names {
        header += &format!(" {n} |");
        rule += "---:|";
    }
    s += &format!("{header}\n{rule}\n");
    let rows = per_row(&r.samples, if minutes >= 3.0 { 60.0 } else { 20.0 })
        .into_iter()
        .map(|s| (format!("{:.0} s", s.secs), s))
        .chain(std::iter::once((
            "after `clear`".to_string(),
            &r.after_clear,
        )));
    for (label, sample) in rows {
        let mut row = format!(
            "| {label} | {} | {} | {} | {} |",
            mib(sample.rss_bytes),
            sample.fds,
            sample.tasks,
            sample.faults
        );
        for n in &names {
            row += &format!(" {} |", entries(sample, n));
        }
        s += &format!("{row}\n");
    }
    let (rss0, rss1, rss_max) = spread(&r.samples, |s| s.rss_bytes as f64);
    let (fd0, fd1, fd_max) = spread(&r.samples, |s| s.fds as f64);
    let (t0, t1, t_max) = spread(&r.samples, |s| s.tasks as f64);
    s += &format!(
        "\nFirst quarter → last quarter (medians of {} samples), and the largest: RSS {} → {} \
         MiB (max {}), fds {fd0:.0} → {fd1:.0} (max {fd_max:.0}), tasks {t0:.0} → {t1:.0} \
         (max {t_max:.0}).\n",
        r.samples.len(),
        mib(rss0 as u64),
        mib(rss1 as u64),
        mib(rss_max as u64),
    );
    let verdict = verdict(r);
    s += &format!(
        "RSS trend over the second half (least squares over {} samples from {:.0} s on): \
         {:+.0} KiB per minute; fds {:.0}–{:.0} and tasks {:.0}–{:.0} there. Flat means: \
         RSS under {FLAT_KIB_PER_MIN:.0} KiB per minute, fds and tasks within \
         {FLAT_SPREAD} of their own lowest value, every hash map and the fault list empty \
         after `clear`. **Verdict: {}**{}\n",
        verdict.samples,
        verdict.from_secs,
        verdict.rss_kib_per_min,
        verdict.fds.0,
        verdict.fds.1,
        verdict.tasks.0,
        verdict.tasks.1,
        if verdict.flat() { "flat" } else { "not flat" },
        if verdict.why.is_empty() {
            String::new()
        } else {
            format!(" ({})", verdict.why.join("; "))
        },
    );
    for (name, capacity) in &r.map_capacity {
        let count = |sample: &Sample| {
            sample
                .map_entries
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0, |(_, c)| *c)
        };
        let (first, last, max) = spread(&r.samples, |s| count(s) as f64);
        s += &format!(
            "{name} (at most {capacity} entries): {first:.0} → {last:.0} (max {max:.0}), {} \
             after `clear`.\n",
            count(&r.after_clear)
        );
        if name == "FLOWS" && count(&r.after_clear) > 0 {
            s += &format!(
                "FLOWS holds per-flow state (first packet, bytes, cut) per fault and flow. It \
                 is an LRU hash map and faultd deletes nothing from it, not even with its fault: \
                 its entries stay after `clear`, bounded only by the LRU at {capacity}.\n"
            );
        }
    }
    s
}

pub fn summary(r: &SoakResult) -> String {
    let per_minute: Vec<String> = per_row(&r.samples, 60.0)
        .iter()
        .map(|s| format!("{:.0} s {} MiB", s.secs, mib(s.rss_bytes)))
        .collect();
    let verdict = verdict(r);
    format!(
        "bench: soak RSS per minute: {}\nbench: second half: RSS {:+.0} KiB/min: {}\n\
         bench: soak {:.0} s, {} changes; after clear: {} faults, RSS {} MiB, {} fds, {} tasks, \
         map entries {:?}",
        per_minute.join(", "),
        verdict.rss_kib_per_min,
        if verdict.flat() {
            "flat".to_string()
        } else {
            verdict.why.join("; ")
        },
        r.seconds,
        r.changes,
        r.after_clear.faults,
        mib(r.after_clear.rss_bytes),
        r.after_clear.fds,
        r.after_clear.tasks,
        r.after_clear.map_entries
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: f64, rss_kib: u64) -> Sample {
        Sample {
            secs,
            rss_bytes: rss_kib * 1024,
            fds: 40,
            tasks: 9,
            faults: 0,
            map_entries: vec![("RULES".into(), 0)],
        }
    }

    fn result(samples: Vec<Sample>) -> SoakResult {
        SoakResult {
            machine: crate::bench::report::Machine::read("test"),
            seconds: samples.last().unwrap().secs,
            after_clear: at(0.0, 0),
            samples,
            map_capacity: vec![],
            changes: 0,
            expiring: 0,
            flows: 0,
            flows_connected: 0,
            watchers: 0,
            events_read: 0,
            requests: 0,
            failed: 0,
        }
    }

    /// Growth in the first half (warm-up) does not count; growth in the second does.
    #[test]
    fn the_verdict_reads_the_second_half() {
        let warm_then_flat: Vec<Sample> = (0..=60)
            .map(|i| at(i as f64 * 10.0, 14_000 + 100 * (i.min(30) as u64)))
            .collect();
        let v = verdict(&result(warm_then_flat));
        assert!(v.flat(), "{v:?}");
        assert!(v.rss_kib_per_min.abs() < 1.0, "{v:?}");
        // 100 KiB per minute, throughout.
        let growing: Vec<Sample> = (0..=60)
            .map(|i| at(i as f64 * 10.0, 14_000 + i as u64 * 100 / 6))
            .collect();
        let v = verdict(&result(growing));
        assert!(
            !v.flat() && (v.rss_kib_per_min - 100.0).abs() < 1.0,
            "{v:?}"
        );
        let mut left = result((0..=60).map(|i| at(i as f64 * 10.0, 14_000)).collect());
        left.after_clear.map_entries = vec![("RULES".into(), 3)];
        assert!(!verdict(&left).flat());
    }

    #[test]
    fn one_row_per_minute() {
        let samples: Vec<Sample> = (0..=60).map(|i| at(i as f64 * 10.0, 1)).collect();
        let secs: Vec<f64> = per_row(&samples, 60.0).iter().map(|s| s.secs).collect();
        let want: Vec<f64> = (0..=10).map(|m| m as f64 * 60.0).collect();
        assert_eq!(secs, want);
    }

    #[test]
    fn durations_read_as_written() {
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("180s"), Ok(Duration::from_secs(180)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn the_section_is_replaced_appended_and_kept() {
        let bench = "# Benchmarks\n\nfigures\n";
        let once = with_section(bench, "## Soak\n\nfirst\n");
        assert!(once.starts_with(bench.trim_end()), "{once}");
        assert!(
            once.contains("first") && once.ends_with(&format!("{END}\n")),
            "{once}"
        );
        let twice = with_section(&once, "## Soak\n\nsecond\n");
        assert!(
            twice.contains("second") && !twice.contains("first"),
            "{twice}"
        );
        assert_eq!(twice.matches(BEGIN).count(), 1);
        // The bench rewrites the file from its own figures and keeps the section.
        let rewritten = keep_section(&twice, "# Benchmarks\n\nnew figures\n".into());
        assert!(rewritten.contains("new figures") && rewritten.contains("second"));
        assert_eq!(keep_section("no section", "new".into()), "new");
    }
}
