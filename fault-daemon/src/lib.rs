//! faultd: a kernel-level network fault injector.
//!
//! - [`faults`]: the domain model — validate faults, compile them into rule-map entries.
//! - [`datapath`]: load and attach the eBPF programs, write their maps.
//! - [`events`]: kernel events, kept and broadcast to subscribers.
//! - [`netlink`]: qdiscs and TC filters through rtnetlink.
//! - [`qdisc`]: the fq qdisc that delays and paced rates need.
//! - [`capabilities`]: what this kernel supports (`faultctl doctor`).
//! - [`api`]: the gRPC control service.
//! - [`access`]: who may call it, identified by the kernel; the Unix socket.
//! - [`connections`]: the bound on the API's connections; [`wrapped`]: the reads and
//!   writes of the wrappers around them, forwarded once.
//! - [`logging`]: faultd's own log (text without colours off a terminal, or JSON).
//! - [`sessions`]: faults bound to a client's lifetime (OpenSession).
//! - [`reconnect`]: gRPC's reconnect interop server and the backoff checker.
//! - [`observe`]: the gRPC health and reflection services; [`metrics`]: Prometheus.
//! - [`config`]: the TOML configuration file.

pub mod access;
pub mod api;
pub mod capabilities;
pub mod config;
pub mod connections;
pub mod copies;
pub mod datapath;
pub mod ebpf_log;
pub mod events;
pub mod faults;
mod global_array;
pub mod heap;
pub mod logging;
pub mod metrics;
pub mod netlink;
pub mod observe;
pub mod partitions;
pub mod qdisc;
pub mod reconnect;
pub mod rule_slots;
pub mod sessions;
#[cfg(test)]
mod target_tests;
pub mod wrapped;

/// Generated from `proto/faultd/v1/faultd.proto`, in the `faultd-api` crate its clients share
/// (with `FILE_DESCRIPTOR_SET`, for server reflection).
pub use faultd_api::proto;

/// Where faultd serves its API unless told otherwise.
pub use faultd_api::DEFAULT_LISTEN;
