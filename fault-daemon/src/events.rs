//! Kernel events (first hit on a flow, RST sent, SYN refused or seen) on their way to
//! subscribers: read from the programs' ring buffer, numbered, kept in a bounded history
//! that every subscriber reads through a cursor of its own.
//!
//! Nothing is lost silently. Each event gets the next sequence number; events the kernel
//! could not put in its full ring, and events that left the history before a slow
//! subscriber read them, are counted ([`EventStats`]) and announced to the subscriber as
//! an event of kind GAP carrying how many were lost.
//!
//! Connection attempts (SYN, SYN refused) are also kept per port, apart from the shared
//! history, so that other events (a `reset` emits one per packet) cannot push out the
//! attempts that `faultctl backoff` judges.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use fault_common::{Event, PEER_V4, PROTO_UDP};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tracing::warn;

use crate::proto;

/// How many past events are kept for subscribers.
pub const HISTORY: usize = 10_000;
/// How many connection-attempt events are kept per port.
pub const SYN_HISTORY: usize = 4_096;
/// How many connection-attempt events are kept over all ports.
pub const SYN_HISTORY_TOTAL: usize = 65_536;
/// How many events a subscriber takes from the history per lock.
const CHUNK: usize = 256;

/// Counts of what the hub saw and lost.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct EventStats {
    /// Events read from the kernel.
    pub received: u64,
    /// Events the programs could not write because the ring was full.
    pub lost_in_kernel: u64,
    /// Events that left the history before a subscriber read them, summed over subscribers.
    pub lost_to_slow_subscribers: u64,
}

/// An event as the hub keeps it: fixed size, with no allocation of its own (a gap's note
/// aside), converted to a `proto::Event` when read. The history is allocated and touched
/// once, at start, and never grows: kept as `Arc<proto::Event>` with two address strings,
/// each event cost about 1 KiB of resident heap in the soak (allocations interleaved with
/// the stream's short-lived ones), and the history grew to its bound for as long as
/// faultd ran.
#[derive(Clone, Debug, Default)]
struct Stored {
    kind: i32,
    protocol: i32,
    fault_id: u64,
    kernel_ns: u64,
    unix_ns: i64,
    src: Option<IpAddr>,
    src_port: u32,
    dst: Option<IpAddr>,
    dst_port: u32,
    seq: u64,
    lost: u64,
    note: Option<Box<str>>,
}

impl Stored {
    fn new(e: &proto::Event) -> Self {
        Self {
            kind: e.kind,
            protocol: e.protocol,
            fault_id: e.fault_id,
            kernel_ns: e.kernel_ns,
            unix_ns: e.unix_ns,
            src: e.src.parse().ok(),
            src_port: e.src_port,
            dst: e.dst.parse().ok(),
            dst_port: e.dst_port,
            seq: e.seq,
            lost: e.lost,
            note: (!e.note.is_empty()).then(|| e.note.as_str().into()),
        }
    }

    fn to_proto(&self) -> proto::Event {
        let addr = |a: Option<IpAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        proto::Event {
            kind: self.kind,
            fault_id: self.fault_id,
            kernel_ns: self.kernel_ns,
            unix_ns: self.unix_ns,
            protocol: self.protocol,
            src: addr(self.src),
            src_port: self.src_port,
            dst: addr(self.dst),
            dst_port: self.dst_port,
            seq: self.seq,
            lost: self.lost,
            note: self.note.as_deref().unwrap_or_default().to_string(),
        }
    }

    fn is_gap(&self) -> bool {
        self.kind == proto::EventKind::Gap as i32
    }
}

/// Connection attempts to one port, oldest first.
#[derive(Default)]
struct PortSyns {
    events: VecDeque<Stored>,
    /// Attempts dropped from this history, or possibly lost with the kernel's.
    lost: u64,
}

struct Shared {
    /// The recent events; `history[i]` has sequence number `first_seq + i`.
    history: VecDeque<Stored>,
    first_seq: u64,
    syns: HashMap<u16, PortSyns>,
    /// (sequence number, port) of every kept attempt, oldest first: what to drop first
    /// when all ports together hold too many.
    syn_order: VecDeque<(u64, u16)>,
    syn_count: usize,
    stats: EventStats,
}

impl Shared {
    fn next_seq(&self) -> u64 {
        self.first_seq + self.history.len() as u64
    }

    fn keep_syn(&mut self, event: &Stored) {
        let Ok(port) = u16::try_from(event.dst_port) else {
            return;
        };
        let history = self.syns.entry(port).or_default();
        history.events.push_back(event.clone());
        self.syn_order.push_back((event.seq, port));
        self.syn_count += 1;
        if history.events.len() > SYN_HISTORY {
            history.events.pop_front();
            history.lost += 1;
            self.syn_count -= 1;
        }
        while self.syn_count > SYN_HISTORY_TOTAL {
            let Some((seq, port)) = self.syn_order.pop_front() else {
                break;
            };
            let Some(history) = self.syns.get_mut(&port) else {
                continue;
            };
            // Entries whose event already left (per-port bound, restart) are skipped.
            if history.events.front().is_some_and(|e| e.seq == seq) {
                history.events.pop_front();
                history.lost += 1;
                self.syn_count -= 1;
            }
        }
        if self.syn_order.len() > 2 * SYN_HISTORY_TOTAL {
            self.compact_syn_order();
        }
    }

    /// Drops the order entries of events no longer kept.
    fn compact_syn_order(&mut self) {
        let syns = &self.syns;
        self.syn_order.retain(|(seq, port)| {
            syns.get(port)
                .and_then(|h| h.events.front())
                .is_some_and(|front| front.seq <= *seq)
        });
    }
}

pub struct EventHub {
    shared: Mutex<Shared>,
    /// The next sequence number to be published: subscribers wait on it.
    published: watch::Sender<u64>,
    /// Wall clock minus CLOCK_MONOTONIC, to put kernel timestamps on the wall clock.
    wall_offset_ns: i64,
}

impl Default for EventHub {
    fn default() -> Self {
        Self {
            shared: Mutex::new(Shared {
                history: preallocated_history(),
                first_seq: 1,
                syns: HashMap::new(),
                syn_order: VecDeque::new(),
                syn_count: 0,
                stats: EventStats::default(),
            }),
            published: watch::channel(1).0,
            wall_offset_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC),
        }
    }
}

/// An empty history with room for [`HISTORY`] events, its memory written once so that it
/// is resident from the start: faultd's memory does not grow as events come.
fn preallocated_history() -> VecDeque<Stored> {
    let mut history = VecDeque::from(vec![Stored::default(); HISTORY]);
    history.clear();
    history
}

/// Which events a subscriber wants.
#[derive(Copy, Clone, Debug, Default)]
pub struct Filter {
    /// Only events of this fault (0: all). Gaps are always given.
    pub fault_id: u64,
}

impl Filter {
    fn wants(&self, e: &Stored) -> bool {
        self.fault_id == 0 || e.fault_id == self.fault_id || e.is_gap()
    }
}

/// A gap of `lost` events, starting at sequence number `seq`.
fn gap(seq: u64, lost: u64, note: &str) -> proto::Event {
    proto::Event {
        kind: proto::EventKind::Gap as i32,
        seq,
        lost,
        note: note.into(),
        ..Default::default()
    }
}

impl EventHub {
    fn shared(&self) -> MutexGuard<'_, Shared> {
        // Every change under the lock is complete before anything that could panic.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Numbers `event` and keeps it; returns its sequence number.
    pub fn publish(&self, mut event: proto::Event) -> u64 {
        let mut shared = self.shared();
        let seq = shared.next_seq();
        event.seq = seq;
        let event = Stored::new(&event);
        let syn = matches!(
            proto::EventKind::try_from(event.kind),
            Ok(proto::EventKind::Syn | proto::EventKind::SynRefused)
        );
        if syn {
            shared.keep_syn(&event);
        }
        if shared.history.len() == HISTORY {
            shared.history.pop_front();
            shared.first_seq += 1;
        }
        shared.stats.received += u64::from(!event.is_gap());
        shared.history.push_back(event);
        drop(shared);
        self.published.send_replace(seq + 1);
        seq
    }

    /// Records that the kernel lost `lost` events to a full ring: counted, announced in
    /// the history as a gap, and marked in every port's attempts (they may be among them).
    pub fn kernel_lost(&self, lost: u64) {
        if lost == 0 {
            return;
        }
        {
            let mut shared = self.shared();
            shared.stats.lost_in_kernel += lost;
            for history in shared.syns.values_mut() {
                history.lost += lost;
            }
        }
        // `publish` numbers it.
        self.publish(gap(
            0,
            lost,
            "the kernel's event ring was full: faultd read too slowly",
        ));
    }

    /// The sequence number the next event will get.
    pub fn next_seq(&self) -> u64 {
        self.shared().next_seq()
    }

    pub fn stats(&self) -> EventStats {
        self.shared().stats
    }

    /// Reads from the history and then, with `follow`, what comes after it.
    pub fn subscribe(self: &Arc<Self>, filter: Filter, follow: bool) -> Subscription {
        let next = self.shared().first_seq;
        Subscription {
            hub: self.clone(),
            next,
            filter,
            follow,
            pending: VecDeque::new(),
            wake: self.published.subscribe(),
        }
    }

    /// Starts `port`'s attempt history afresh with the events after `after_seq`: a fault
    /// that reports attempts was added to a port that had none.
    pub fn restart_syns(&self, port: u16, after_seq: u64) {
        let mut shared = self.shared();
        let shared = &mut *shared;
        if let Some(history) = shared.syns.get_mut(&port) {
            let before = history.events.len();
            history.events.retain(|e| e.seq > after_seq);
            history.lost = 0;
            shared.syn_count -= before - history.events.len();
        }
        shared.compact_syn_order();
    }

    /// The attempts to `port` kept so far, oldest first, and how many may be missing.
    pub fn syns(&self, port: u16) -> (Vec<proto::Event>, u64) {
        let shared = self.shared();
        match shared.syns.get(&port) {
            Some(h) => (h.events.iter().map(Stored::to_proto).collect(), h.lost),
            None => (Vec::new(), 0),
        }
    }

    /// The attempts to `port` as `WatchEvents` gives them: a GAP first (with sequence
    /// number 0) when some may be missing.
    pub fn syn_history(&self, port: u16) -> Vec<proto::Event> {
        let (events, lost) = self.syns(port);
        let mut out = Vec::with_capacity(events.len() + 1);
        if lost > 0 {
            out.push(gap(
                0,
                lost,
                &format!(
                    "connection attempts to port {port} may be missing: more than \
                     {SYN_HISTORY} were seen, or the kernel lost events"
                ),
            ));
        }
        out.extend(events);
        out
    }

    /// Up to [`CHUNK`] events from sequence number `from` on that `filter` wants; a gap
    /// when the history no longer holds `from`. Returns the next sequence number to read.
    fn read(&self, from: u64, filter: &Filter) -> Read {
        let mut shared = self.shared();
        if from < shared.first_seq {
            let lost = shared.first_seq - from;
            shared.stats.lost_to_slow_subscribers += lost;
            return Read::Gap {
                event: gap(
                    from,
                    lost,
                    "this subscriber fell more than the history's 10000 events behind",
                ),
                next: shared.first_seq,
            };
        }
        let start = (from - shared.first_seq) as usize;
        let end = shared.history.len().min(start + CHUNK);
        let events = shared
            .history
            .range(start..end)
            .filter(|e| filter.wants(e))
            .map(Stored::to_proto)
            .collect();
        Read::Events {
            events,
            next: shared.first_seq + end as u64,
            caught_up: end == shared.history.len(),
        }
    }

    /// Converts a kernel record into the API's event.
    pub fn convert(&self, e: &Event) -> proto::Event {
        let addr = |words: &[u32; 4]| -> IpAddr {
            if e.family == PEER_V4 {
                IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))
            } else {
                let mut b = [0u8; 16];
                for (i, w) in words.iter().enumerate() {
                    b[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
                }
                IpAddr::V6(Ipv6Addr::from(b))
            }
        };
        proto::Event {
            kind: e.kind as i32,
            fault_id: e.fault_id,
            kernel_ns: e.ktime_ns,
            unix_ns: e.ktime_ns as i64 + self.wall_offset_ns,
            protocol: if e.protocol == PROTO_UDP {
                proto::Protocol::Udp
            } else {
                proto::Protocol::Tcp
            } as i32,
            src: addr(&e.src_addr).to_string(),
            src_port: e.src_port.into(),
            dst: addr(&e.dst_addr).to_string(),
            dst_port: e.dst_port.into(),
            ..Default::default()
        }
    }

    /// Reads the programs' ring buffer until the task is dropped; after each read, adds
    /// what the programs counted as lost to a full ring.
    pub async fn pump(self: Arc<Self>, ring: RingBuf<MapData>, lost: Option<LossCounter>) {
        // SAFETY: the AsyncFd owns the ring buffer, so its fd outlives the registration.
        let mut fd = match unsafe { AsyncFd::register(ring) } {
            Ok(fd) => fd,
            Err(e) => {
                warn!("events unavailable: {e}");
                return;
            }
        };
        let mut lost = lost;
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            self.drain(guard.get_inner_mut());
            guard.clear_ready();
            if let Some(counter) = lost.as_mut() {
                self.kernel_lost(counter.take_new());
            }
        }
    }

    /// Publishes every record in the ring.
    pub fn drain(&self, ring: &mut RingBuf<MapData>) {
        while let Some(item) = ring.next() {
            if item.len() >= size_of::<Event>() {
                // SAFETY: the programs write whole `Event`s; read_unaligned copes with
                // the ring's 8-byte alignment.
                let event = unsafe { (item.as_ptr() as *const Event).read_unaligned() };
                self.publish(self.convert(&event));
            }
        }
    }
}

/// The programs' per-CPU count of events lost to a full ring (`EVENTS_LOST`).
pub struct LossCounter {
    map: PerCpuArray<MapData, u64>,
    seen: u64,
}

impl LossCounter {
    pub fn new(map: PerCpuArray<MapData, u64>) -> Self {
        Self { map, seen: 0 }
    }

    /// Events lost since the last call.
    pub fn take_new(&mut self) -> u64 {
        let total = match self.map.get(&0, 0) {
            Ok(per_cpu) => per_cpu.iter().sum::<u64>(),
            Err(e) => {
                warn!("cannot read the kernel's count of lost events: {e}");
                return 0;
            }
        };
        let new = total.saturating_sub(self.seen);
        self.seen = total;
        new
    }
}

enum Read {
    Gap {
        event: proto::Event,
        next: u64,
    },
    Events {
        events: Vec<proto::Event>,
        next: u64,
        caught_up: bool,
    },
}

/// One subscriber's cursor into the history: it holds no copy of the history, only the
/// chunk it is delivering, so a subscriber that never reads costs next to nothing.
pub struct Subscription {
    hub: Arc<EventHub>,
    /// Sequence number of the next event to read.
    next: u64,
    filter: Filter,
    follow: bool,
    pending: VecDeque<proto::Event>,
    wake: watch::Receiver<u64>,
}

impl Subscription {
    /// The next event (or gap); `None` once the history is read, unless following.
    pub async fn next(&mut self) -> Option<proto::Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            // Seen before reading: whatever is published after the read wakes us.
            self.wake.borrow_and_update();
            match self.hub.read(self.next, &self.filter) {
                Read::Gap { event, next } => {
                    self.next = next;
                    return Some(event);
                }
                Read::Events {
                    events,
                    next,
                    caught_up,
                } => {
                    self.next = next;
                    self.pending = events.into();
                    if !self.pending.is_empty() || !caught_up {
                        continue;
                    }
                }
            }
            if !self.follow || self.wake.changed().await.is_err() {
                return None;
            }
        }
    }
}

fn clock_ns(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: proto::EventKind, fault_id: u64, dst_port: u32) -> proto::Event {
        proto::Event {
            kind: kind as i32,
            fault_id,
            dst_port,
            ..Default::default()
        }
    }

    fn first_hit(fault_id: u64) -> proto::Event {
        event(proto::EventKind::FirstHit, fault_id, 80)
    }

    async fn read_all(mut sub: Subscription) -> Vec<proto::Event> {
        let mut out = Vec::new();
        while let Some(e) = sub.next().await {
            out.push(e);
        }
        out
    }

    /// Kept in the history's fixed-size form, an event reads back as it was published
    /// (its sequence number set), addresses of both families and a gap's note included;
    /// and the history, full, still has the room it was given at start.
    #[tokio::test]
    async fn events_read_back_as_published_and_the_history_never_grows() {
        let hub = Arc::new(EventHub::default());
        let capacity = hub.shared().history.capacity();
        assert!(capacity >= HISTORY);
        let sent = [
            proto::Event {
                kind: proto::EventKind::RstSent as i32,
                fault_id: 7,
                kernel_ns: 11,
                unix_ns: 12,
                protocol: proto::Protocol::Tcp as i32,
                src: "198.18.0.1".into(),
                src_port: 40000,
                dst: "198.18.0.2".into(),
                dst_port: 80,
                ..Default::default()
            },
            proto::Event {
                kind: proto::EventKind::Syn as i32,
                fault_id: 8,
                protocol: proto::Protocol::Udp as i32,
                src: "fd00::1".into(),
                src_port: 5353,
                dst: "fd00::2".into(),
                dst_port: 53,
                ..Default::default()
            },
            gap(0, 3, "the kernel's event ring was full"),
        ];
        for e in &sent {
            hub.publish(e.clone());
        }
        let got = read_all(hub.subscribe(Filter::default(), false)).await;
        let expected: Vec<proto::Event> = sent
            .iter()
            .zip(1..)
            .map(|(e, seq)| proto::Event { seq, ..e.clone() })
            .collect();
        assert_eq!(got, expected);
        for i in 0..HISTORY as u64 + 10 {
            hub.publish(first_hit(i));
        }
        assert_eq!(hub.shared().history.len(), HISTORY);
        assert_eq!(hub.shared().history.capacity(), capacity);
    }

    #[tokio::test]
    async fn events_are_numbered_and_a_subscriber_reads_them_in_order() {
        let hub = Arc::new(EventHub::default());
        for i in 0..600 {
            hub.publish(first_hit(i));
        }
        let got = read_all(hub.subscribe(Filter::default(), false)).await;
        let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=600).collect::<Vec<_>>());
        let only = read_all(hub.subscribe(Filter { fault_id: 7 }, false)).await;
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].seq, 8);
    }

    #[tokio::test]
    async fn a_slow_subscriber_gets_a_gap_with_the_number_lost() {
        let hub = Arc::new(EventHub::default());
        hub.publish(first_hit(1));
        let mut slow = hub.subscribe(Filter::default(), true);
        assert_eq!(slow.next().await.unwrap().seq, 1);
        // It reads nothing while HISTORY + 5000 more events come.
        for i in 0..HISTORY as u64 + 5000 {
            hub.publish(first_hit(i));
        }
        let gap = slow.next().await.unwrap();
        assert_eq!(gap.kind, proto::EventKind::Gap as i32);
        assert_eq!(gap.seq, 2, "the gap starts at the first event missed");
        assert_eq!(gap.lost, 5000);
        let next = slow.next().await.unwrap();
        assert_eq!(next.seq, 5002, "gap + delivered = every sequence number");
        assert_eq!(hub.stats().lost_to_slow_subscribers, 5000);
    }

    #[tokio::test]
    async fn a_follower_wakes_for_new_events() {
        let hub = Arc::new(EventHub::default());
        let mut sub = hub.subscribe(Filter::default(), true);
        let publisher = hub.clone();
        let reader = tokio::spawn(async move { sub.next().await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        publisher.publish(first_hit(3));
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), reader)
            .await
            .expect("the follower was not woken")
            .unwrap()
            .unwrap();
        assert_eq!(got.fault_id, 3);
    }

    #[tokio::test]
    async fn kernel_losses_are_counted_and_announced_to_every_subscriber() {
        let hub = Arc::new(EventHub::default());
        hub.publish(first_hit(1));
        hub.kernel_lost(0);
        hub.kernel_lost(42);
        hub.publish(first_hit(2));
        let got = read_all(hub.subscribe(Filter { fault_id: 2 }, false)).await;
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].kind, proto::EventKind::Gap as i32);
        assert_eq!(got[0].lost, 42);
        assert_eq!(got[1].fault_id, 2);
        let stats = hub.stats();
        assert_eq!(stats.lost_in_kernel, 42);
        assert_eq!(stats.received, 2);
    }

    #[tokio::test]
    async fn subscribers_share_the_history_instead_of_copying_it() {
        let hub = Arc::new(EventHub::default());
        for i in 0..HISTORY as u64 {
            hub.publish(first_hit(i));
        }
        let mut subs: Vec<Subscription> = (0..100)
            .map(|_| hub.subscribe(Filter::default(), true))
            .collect();
        for sub in &mut subs {
            sub.next().await.unwrap();
            // At most one chunk each, of shared events.
            assert!(sub.pending.len() < CHUNK);
        }
        // One history for all: the subscribers made it neither longer nor larger.
        let shared = hub.shared();
        assert_eq!(shared.history.len(), HISTORY);
        assert_eq!(shared.history.capacity(), preallocated_history().capacity());
    }

    #[test]
    fn attempts_are_kept_per_port_whatever_else_happens() {
        let hub = EventHub::default();
        for _ in 0..4 {
            hub.publish(event(proto::EventKind::SynRefused, 1, 7835));
        }
        // A reset on another port emits an event per packet.
        for _ in 0..HISTORY * 2 {
            hub.publish(event(proto::EventKind::RstSent, 2, 9000));
        }
        let (syns, lost) = hub.syns(7835);
        assert_eq!(syns.len(), 4);
        assert_eq!(lost, 0);
        assert_eq!(hub.syns(9000).0.len(), 0, "RSTs are not attempts");
    }

    #[test]
    fn an_overflowing_or_gapped_port_history_says_so() {
        let hub = EventHub::default();
        for _ in 0..SYN_HISTORY + 3 {
            hub.publish(event(proto::EventKind::Syn, 1, 80));
        }
        let (syns, lost) = hub.syns(80);
        assert_eq!(syns.len(), SYN_HISTORY);
        assert_eq!(lost, 3);
        // A fresh start keeps only what comes after it.
        let restart_at = hub.next_seq() - 1;
        hub.restart_syns(80, restart_at);
        hub.publish(event(proto::EventKind::Syn, 1, 80));
        assert_eq!(hub.syns(80).0.len(), 1);
        assert_eq!(hub.syns(80).1, 0);
        // The kernel losing events may have lost attempts: every port's history says so.
        hub.kernel_lost(5);
        assert_eq!(hub.syns(80).1, 5);
    }

    #[test]
    fn all_ports_together_keep_a_bounded_number_of_attempts() {
        let hub = EventHub::default();
        let ports = (SYN_HISTORY_TOTAL / SYN_HISTORY + 2) as u32;
        for port in 1..=ports {
            for _ in 0..SYN_HISTORY {
                hub.publish(event(proto::EventKind::Syn, 1, port));
            }
        }
        let shared = hub.shared();
        let kept: usize = shared.syns.values().map(|h| h.events.len()).sum();
        assert_eq!(kept, SYN_HISTORY_TOTAL);
        assert_eq!(shared.syn_count, kept);
        // The oldest went first, and their ports say they lost them.
        assert_eq!(shared.syns[&1].lost, SYN_HISTORY as u64);
        assert_eq!(shared.syns[&(ports as u16)].lost, 0);
        assert!(shared.syn_order.len() <= 2 * SYN_HISTORY_TOTAL);
    }
}
