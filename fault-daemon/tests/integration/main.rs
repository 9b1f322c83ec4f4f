//! fault-daemon's system tests, one binary with a module per area (the way aya's own
//! integration tests are built): the harness, the kernel-rule reader and the node
//! processes are compiled and linked once, and libtest starts once.
//!
//! Each area is a module of its own file here, `tests/integration/AREA.rs`, and its tests
//! are named `AREA::test`: `cargo test -p fault-daemon --test integration degrade::` runs
//! one area, `cargo xtask vm-test --tests degrade,drop` runs those areas in the VM. A new
//! area is one file and one `mod` line below.
//!
//! What every test shares lives once in [`harness`] (network namespaces, veth pairs, faultd
//! and faultctl processes, root checks, skips, the fq probe, waits, and `Scenario`: the
//! same test on `lo` and on a veth pair in both families); the program tests
//! (`tests/programs`) are a binary of their own.

#[path = "../harness/mod.rs"]
mod harness;
#[path = "../support/kernel_rules.rs"]
mod kernel_rules;
#[path = "../support/node_process.rs"]
mod node_process;
// Many faultd in namespaces of their own, each a node of a cluster (multinode).
#[path = "../harness/cluster.rs"]
mod cluster;
// What cluster.rs takes from its parent.
use harness::{Daemon, FAULTCTL, Netns, require_faultctl};

mod auth;
mod backoff;
mod callers;
mod cli;
mod client;
mod concurrency;
mod config;
mod daemon;
mod degrade;
mod drop;
mod ebpf_log;
mod events;
mod exact;
mod grpc_status;
mod kill;
mod multinode;
mod observe;
mod partition;
mod reconnect;
mod resources;
mod retransmit;
mod scenario_run;
mod session;
mod slicing;
