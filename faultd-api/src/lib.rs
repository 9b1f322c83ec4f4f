//! faultd's control API as its clients share it: the code generated from the protos in
//! `proto/` (with protox, so no `protoc`), how a client finds and connects to faultd, and
//! the backoff checker `faultctl backoff` and the reconnect interop server both use.
//!
//! - [`proto`]: `faultd.v1` — the `FaultService` client and server.
//! - [`reconnect_proto`]: `grpc.testing` — gRPC's reconnect interop service.
//! - [`client`]: [`client::connect`] to the daemon of this network namespace, or to one named.
//! - [`backoff`]: judges connection attempts against an exponential backoff policy.
//! - [`names`]: the names of the API's enums (`tcp`, `to-port`, `syn-refused`…), in one place.
//! - [`partition`]: many nodes — a daemon's address with its node's IP, and the faults that
//!   cut a partition, per node.
//! - [`scenario`]: timed scenarios in TOML (`faultctl run`), parsed, checked and played here
//!   so that every Rust client runs the same files.
//! - [`units`]: durations, rates and ports as people write them.

pub mod backoff;
pub mod capabilities;
pub mod client;
pub mod names;
pub mod partition;
pub mod scenario;
pub mod units;

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// Generated from `proto/faultd/v1/faultd.proto`.
pub mod proto {
    tonic::include_proto!("faultd.v1");

    pub use super::FILE_DESCRIPTOR_SET;
}

/// Generated from `proto/grpc/testing/reconnect.proto`.
pub mod reconnect_proto {
    tonic::include_proto!("grpc.testing");
}

/// The encoded `FileDescriptorSet` of every proto above, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/file_descriptor_set.bin"));

/// Where faultd serves its API unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7447";

/// Where the sockets of faultd daemons live. `/run` is shared by every network namespace
/// of the machine (it is a mount, not a network, thing), hence one name per namespace.
pub const SOCKET_DIR: &str = "/run/faultd";

/// The socket of the faultd serving the calling thread's network namespace:
/// `/run/faultd/faultd-<inode of the namespace>.sock`. faultd and its clients both call
/// this, so a client only ever finds the daemon of its own namespace, as with loopback TCP.
pub fn default_socket_path() -> io::Result<PathBuf> {
    // thread-self, not self: a test may move one thread into a namespace (setns).
    let netns = fs::metadata("/proc/thread-self/ns/net")?.ino();
    Ok(Path::new(SOCKET_DIR).join(format!("faultd-{netns}.sock")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn the_default_socket_is_per_network_namespace() {
        let path = default_socket_path().unwrap();
        let name = path.file_name().unwrap().to_str().unwrap();
        let ino = fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert_eq!(path.parent().unwrap(), Path::new(SOCKET_DIR));
        assert_eq!(name, format!("faultd-{ino}.sock"));
    }

    #[test]
    fn the_descriptor_set_holds_both_protos() {
        let set = prost_types_lite::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        let names: Vec<_> = set.file.iter().map(|f| f.name.as_str()).collect();
        assert!(names.contains(&"faultd/v1/faultd.proto"), "{names:?}");
        assert!(names.contains(&"grpc/testing/reconnect.proto"), "{names:?}");
    }

    /// Just the file names of a `FileDescriptorSet`, without depending on prost-types.
    mod prost_types_lite {
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct FileDescriptorSet {
            #[prost(message, repeated, tag = "1")]
            pub file: Vec<FileDescriptorProto>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct FileDescriptorProto {
            #[prost(string, tag = "1")]
            pub name: String,
        }
    }
}
