//! gRPC's connection-backoff interop test, server side, and the backoff checker it uses.
//!
//! A client under test calls `Start` on the control service, then connects to the retry
//! port, where every connection is accepted and closed at once, so the client keeps
//! reconnecting with backoff; then it calls `Stop`, which judges the gaps between those
//! reconnections with [`backoff::check`] under [`backoff::Policy::grpc`]. The procedure
//! is gRPC's (doc/connection-backoff-interop-test-description.md in gRPC's repository), so
//! `faultd reconnect` can stand in for gRPC's C++ `reconnect_interop_server`.
//!
//! Where this server deliberately differs from the C++ one:
//! - a test with fewer than two reconnections fails (the C++ server passes it: no gap,
//!   nothing outside a window); with no gap nothing shows that the client backs off;
//! - gaps come from a monotonic clock, not the wall clock, and are judged to the
//!   nanosecond before being reported rounded to whole milliseconds;
//! - the retry port listens from the start rather than from the first `Start`, so a
//!   busy port is reported at once; connections outside a test are closed and ignored;
//! - a negative `max_reconnect_backoff_ms` is refused with INVALID_ARGUMENT;
//! - a `Start` without its `Stop` is abandoned after a timeout (`--test-timeout`, 10 min
//!   by default), so that one client cannot hold the server forever, and a test records
//!   at most [`MAX_ATTEMPTS`] reconnections (more fail it).

/// The checker, in `faultd-api` so that `faultctl backoff` shares it.
pub use faultd_api::backoff;
mod server;

pub use server::{DEFAULT_TEST_TIMEOUT, MAX_ATTEMPTS, ReconnectServer, bind_retry_listener};

/// Generated from `proto/grpc/testing/reconnect.proto`, in `faultd-api`.
pub use faultd_api::reconnect_proto as proto;
