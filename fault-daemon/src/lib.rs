//! faultd: a kernel-level network fault injector.
//!
//! - [`faults`]: the domain model — validate faults, compile them into rule-map entries.
//! - [`datapath`]: load and attach the eBPF programs, write their maps.
//! - [`events`]: kernel events, kept and broadcast to subscribers.
//! - [`qdisc`]: the fq qdisc that delays and paced rates need.
//! - [`capabilities`]: what this kernel supports (`faultctl doctor`).
//! - [`api`]: the gRPC control service.
//! - [`access`]: who may call it, identified by the kernel; the Unix socket.
//! - [`cli`]: `faultctl`, a thin gRPC client.
//! - [`sessions`]: faults bound to a client's lifetime (OpenSession).
//! - [`reconnect`]: gRPC's reconnect interop server and the backoff checker.

pub mod access;
pub mod api;
pub mod capabilities;
pub mod cli;
pub mod datapath;
pub mod events;
pub mod faults;
pub mod qdisc;
pub mod reconnect;
pub mod sessions;

/// Generated from `proto/faultd/v1/faultd.proto`.
pub mod proto {
    tonic::include_proto!("faultd.v1");
}

/// Where faultd serves its API unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7447";
