//! Program tests: the eBPF programs run on synthetic frames through BPF_PROG_TEST_RUN, with
//! faults installed exactly the way the daemon installs them (`FaultTable::add` into the
//! `Datapath`'s maps). Every test loads its own copy of the programs and maps, so tests are
//! independent and run in parallel.
//!
//! What BPF_PROG_TEST_RUN gives the programs (kernel 6.18, net/bpf/test_run.c; checked by
//! `fixture::test_run_runs_on_loopback_and_counts_whole_frames`):
//! - sched_cls (`faultd_tc_ingress`, `faultd_tc_egress`): the skb is built on the loopback
//!   device of the caller's network namespace unless `ctx_in` names another device, so
//!   `skb->ifindex` is 1 (loopback is ifindex 1 in every namespace). The Ethernet header is
//!   pushed back before the program runs: `skb->len` is the whole frame.
//! - XDP (`faultd_xdp`): the frame is given the rx queue 0 of that same loopback device
//!   unless `ctx_in` (`xdp_md.ingress_ifindex`) names another, so `ingress_ifindex` is **1**
//!   too — not 0: a role written for ifindex 0 is never seen. `data_end - data` is the whole
//!   frame.
//!
//! So every test marks ifindex 1 in the `IFACES` map. Input sizes: XDP takes any frame of 14
//! bytes or more. sched_cls takes 14 bytes or more too, except that an IPv4 (IPv6) ethertype
//! needs a whole 20-byte (40-byte) IP header behind it, else the syscall fails with EINVAL:
//! frames cut inside the IP header can only be given to XDP.
//!
//! sched_cls runs may also carry a `struct __sk_buff` in `ctx_in`/`ctx_out`
//! ([`fixture::SkBuff`], the kernel's layout as a `#[repr(C)]` struct): `mark` and `tstamp`
//! go in and come back as the program left them, which is how the delay tests read
//! `skb->tstamp` (CLOCK_MONOTONIC, as `bpf_ktime_get_ns()`). The test-run skb is
//! CHECKSUM_NONE, so checksum fix-ups (corrupt, stall) must leave fully valid checksums. And
//! `bpf_clone_redirect` sends a real copy out of the caller's `lo`: the duplicate test runs
//! in a network namespace of its own.
//!
//! Verdicts: XDP_DROP = 1, XDP_PASS = 2; TC_ACT_OK = 0, TC_ACT_SHOT = 2, TC_ACT_REDIRECT = 7
//! (a forged RST sent back; under BPF_PROG_TEST_RUN the redirect goes nowhere, and
//! `data_out` holds the rewritten frame). `drop` is carried
//! by XDP (on the way in) and TC egress, never by TC ingress (`fault_common::hooks_for`,
//! the one table the programs and `faultctl doctor` read): a packet that crosses XDP and then TC ingress is acted on and counted
//! once.
//!
//! These tests need root. Without it each one says so and returns; with it, any failure to
//! load the programs is a test failure, never a skip.
//!
//! Modules: [`fixture`] (the programs under BPF_PROG_TEST_RUN, and the facts of that
//! environment), [`matching`] (which packets a fault covers: ports, protocols, directions,
//! peers, probability, counters, hooks and roles, removal), [`parsing`] (headers the
//! programs step over, frames they cannot classify), [`reset`] (the forged RSTs, byte by
//! byte), [`degrade`] (delay, loss, rate, corrupt, stall, duplicate) and [`oracle`] (the
//! packet library the tests judge by). Frames are built, parsed and checksummed with
//! etherparse (`tests/support/packets.rs`), which shares no code with the programs.

#[path = "../support/packets.rs"]
mod packets;
// Only its network namespaces: the duplicate test sends a real copy out of `lo`.
#[path = "../harness/mod.rs"]
mod harness;

mod capture;
mod copies;
mod cut;
mod degrade;
mod fixture;
mod flows;
mod hostile;
mod marks;
mod matching;
mod oracle;
mod parsing;
mod partitions;
mod passthru;
mod peek;
mod reset;
mod shapes;
mod slicing;
mod targets;
