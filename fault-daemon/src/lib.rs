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
//! - [`reconnect`]: gRPC's reconnect interop server and the backoff checker.
//! - [`observe`]: the gRPC health and reflection services; [`metrics`]: Prometheus.
//! - [`config`]: the TOML configuration file.

pub mod access;
pub mod api;
pub mod capabilities;
pub mod cli;
pub mod config;
pub mod datapath;
pub mod ebpf_log;
pub mod events;
pub mod faults;
pub mod metrics;
pub mod observe;
pub mod qdisc;
pub mod reconnect;

/// Generated from `proto/faultd/v1/faultd.proto`.
pub mod proto {
    tonic::include_proto!("faultd.v1");

    /// The encoded descriptors of every proto faultd serves, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("faultd_descriptor");
}

/// Where faultd serves its API unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7447";
