//! The pass-through path's early look at a frame (fault-ebpf packet::peek): it reads the
//! ports of plain frames before the full parse, and lets a frame pass at once when neither
//! port has a fault. These frames are built so that a peek reading the ports in the wrong
//! place, or trusting a shape it does not know, would find ports without faults (or with
//! one) where the full parse finds the opposite: the verdict must always be the full
//! parse's.

use faultd::faults::{Direction, Protocol};

use super::fixture::*;
use super::packets::*;

const FAULTED: u16 = 7040;
/// IPv4 options (NOPs) that read as ports 257 → 257 where the fixed header ends.
const DECOY: [u8; 4] = [0x01, 0x01, 0x01, 0x01];

/// IPv4 options (NOPs, read as ports 257 → 257 at the fixed-header offset) in front of TCP
/// and UDP to the faulted port: the ports are after the options, and the fault acts.
#[test]
fn ports_are_read_after_ipv4_options() {
    let mut b = Bench::new();
    b.add(drop_spec(FAULTED, Protocol::Any, Direction::Both, None));
    for options in [&DECOY[..], &[1u8; 8][..], &[1u8; 40][..]] {
        for frame in [
            FrameBuilder::tcp(sock("10.0.0.1:40000"), sock(&format!("10.0.0.2:{FAULTED}"))),
            FrameBuilder::udp(sock("10.0.0.1:40000"), sock(&format!("10.0.0.2:{FAULTED}"))),
        ] {
            let frame = frame.ipv4_options(options).build();
            b.expect(
                &DROP_HOOKS,
                &frame,
                Verdict::Drop,
                &format!("{} bytes of IPv4 options", options.len()),
            );
        }
    }
}

/// IPv6 extension headers in front of TCP to the faulted port: a peek at the fixed header's
/// end reads the extension header as ports; it must hand such frames to the full parse.
#[test]
fn ipv6_extension_headers_go_to_the_full_parse() {
    let mut b = Bench::new();
    b.add(drop_spec(FAULTED, Protocol::Tcp, Direction::Both, None));
    for ext in [
        Ipv6Ext::HopByHop,
        Ipv6Ext::DestinationOptions,
        Ipv6Ext::Routing,
    ] {
        let frame = FrameBuilder::tcp(
            sock("[fd00::1]:40000"),
            sock(&format!("[fd00::2]:{FAULTED}")),
        )
        .ipv6_ext(ext, 0)
        .build();
        b.expect(
            &DROP_HOOKS,
            &frame,
            Verdict::Drop,
            &format!("behind {ext:?}"),
        );
    }
}

/// A VLAN-tagged frame to the faulted port: not a shape the peek knows, so the full parse
/// (which follows the tags) decides.
#[test]
fn tagged_frames_go_to_the_full_parse() {
    let mut b = Bench::new();
    b.add(drop_spec(FAULTED, Protocol::Tcp, Direction::Both, None));
    for tags in [&[100u16][..], &[100, 200][..]] {
        let frame = FrameBuilder::tcp(sock("10.0.0.1:40000"), sock(&format!("10.0.0.2:{FAULTED}")))
            .vlans(tags)
            .build();
        b.expect(
            &DROP_HOOKS,
            &frame,
            Verdict::Drop,
            &format!("{} tag(s)", tags.len()),
        );
    }
}

/// A later IPv4 fragment whose first bytes read as ports with a fault: the peek sends it
/// on, and the full parse leaves it alone (a later fragment has no ports), counted by no
/// fault.
#[test]
fn a_later_fragment_that_looks_faulted_still_passes() {
    let mut b = Bench::new();
    let fault = b.add(drop_spec(FAULTED, Protocol::Tcp, Direction::Both, None));
    let frame = FrameBuilder::tcp(sock("10.0.0.1:40000"), sock(&format!("10.0.0.2:{FAULTED}")))
        .ipv4_fragment(100, false)
        .payload(&[0; 64])
        .build();
    b.expect(&ALL_HOOKS, &frame, Verdict::Pass, "a later fragment");
    assert_eq!(b.counters(&fault).matched_packets, 0);
}
