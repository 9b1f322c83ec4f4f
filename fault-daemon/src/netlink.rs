//! Traffic control through rtnetlink: qdiscs and TC filters, read and changed with
//! netlink-packet-route messages on a blocking netlink socket.
//!
//! Blocking on purpose: callers run on their own threads (the engine's blocking tasks, the
//! start-up, the exit), never on the async runtime's workers. Every request waits for the
//! kernel's acknowledgement, and a create that must not overwrite anything uses
//! `NLM_F_CREATE | NLM_F_EXCL`, so that the kernel itself refuses it when something is in
//! the way: no check-then-act.

use std::io;
use std::os::fd::AsRawFd as _;
use std::time::Duration;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REQUEST, NetlinkBuffer,
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NlaBuffer, NlasIterator,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::tc::{
    TcAttribute, TcFilterBpfOption, TcHandle, TcHeader, TcMessage, TcOption,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// `TC_H_ROOT`: the parent of an interface's root qdisc.
pub const ROOT: u32 = 0xFFFF_FFFF;
/// `TC_H_CLSACT`, and the handle the clsact qdisc always has.
pub const CLSACT_PARENT: u32 = 0xFFFF_FFF1;
pub const CLSACT_HANDLE: u32 = 0xFFFF_0000;
/// The parents of clsact's two filter hooks.
pub const CLSACT_INGRESS: u32 = 0xFFFF_FFF2;
pub const CLSACT_EGRESS: u32 = 0xFFFF_FFF3;

/// How long the kernel may take to answer; it answers at once unless something is badly
/// wrong, and faultd must not hang on it then.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// What the kernel answered, with its own words where it gave some (extended ACK).
#[derive(Debug, thiserror::Error)]
#[error("{what}: {message}")]
pub struct NetlinkError {
    pub what: String,
    /// The errno, when the kernel refused the request.
    pub errno: Option<i32>,
    pub message: String,
}

impl NetlinkError {
    fn io(what: &str, e: io::Error) -> Self {
        Self {
            what: what.into(),
            errno: e.raw_os_error(),
            message: e.to_string(),
        }
    }

    fn protocol(what: &str, message: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            errno: None,
            message: message.into(),
        }
    }

    pub fn is(&self, errno: i32) -> bool {
        self.errno == Some(errno)
    }
}

/// A qdisc as the kernel lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct Qdisc {
    pub handle: u32,
    pub parent: u32,
    pub kind: String,
    /// Its configuration (`TCA_OPTIONS`), exactly as the kernel reports it: two dumps of
    /// one unchanged qdisc give the same bytes, and any tuning changes them.
    pub options: Vec<u8>,
}

/// A TC filter as the kernel lists it: enough to recognise a BPF program and delete it.
#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    pub parent: u32,
    /// `tcm_info`: the priority (upper 16 bits) and the protocol (lower 16, network order).
    pub info: u32,
    pub handle: u32,
    pub kind: String,
    /// `TCA_BPF_NAME` of a `bpf` filter: the name of the program it runs.
    pub bpf_name: Option<String>,
}

/// A blocking rtnetlink socket in the network namespace of the thread that opened it.
pub struct Rtnl {
    socket: Socket,
    seq: u32,
}

impl Rtnl {
    pub fn open() -> Result<Self, NetlinkError> {
        let what = "opening a netlink socket";
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| NetlinkError::io(what, e))?;
        socket
            .bind(&SocketAddr::new(0, 0))
            .map_err(|e| NetlinkError::io(what, e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| NetlinkError::io(what, e))?;
        // The kernel's own error messages ("Exclusivity flag on, cannot modify") go into
        // the errors; a refused request's echo is capped to its header.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        set_receive_timeout(&socket, ANSWER_WITHIN).map_err(|e| NetlinkError::io(what, e))?;
        Ok(Self { socket, seq: 0 })
    }

    /// The qdiscs of one interface.
    pub fn qdiscs(&mut self, ifindex: u32) -> Result<Vec<Qdisc>, NetlinkError> {
        let msg = RouteNetlinkMessage::GetQueueDiscipline(tc_message(ifindex, 0, 0, 0, None));
        let answers = self.request(msg, NLM_F_DUMP, "listing qdiscs")?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewQueueDiscipline(q) if q.header.index == ifindex as i32 => {
                    Some(qdisc(q))
                }
                _ => None,
            })
            .collect())
    }

    /// Creates a qdisc with handle `handle` under `parent`. With a handle, the kernel fails
    /// it (EEXIST) rather than replace anything but its own default (handle 0) there, or
    /// reuse a handle that is taken. (With handle 0 it would pick one, and replace any
    /// qdisc of another kind that is there.) Returns the qdisc as the kernel created it.
    pub fn create_qdisc(
        &mut self,
        ifindex: u32,
        parent: u32,
        handle: u32,
        kind: &str,
        options: Option<&[u8]>,
    ) -> Result<Qdisc, NetlinkError> {
        let what = format!("adding qdisc {kind} under {}", handle_text(parent));
        let msg = RouteNetlinkMessage::NewQueueDiscipline(tc_message(
            ifindex,
            parent,
            handle,
            0,
            Some((kind, options)),
        ));
        // With NLM_F_ECHO the kernel sends back what it created: its handle, with no
        // second look that could see someone else's qdisc instead.
        let answers = self.request(msg, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO, &what)?;
        answers
            .into_iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewQueueDiscipline(q)
                    if q.header.index == ifindex as i32
                        && u32::from(q.header.parent) == parent
                        && qdisc_kind(&q.attributes) == Some(kind) =>
                {
                    Some(qdisc(q))
                }
                _ => None,
            })
            .ok_or_else(|| NetlinkError::protocol(&what, "the kernel did not echo the qdisc"))
    }

    /// Deletes the qdisc `handle` under `parent`, only if it is still of `kind` (the kernel
    /// checks both in the same step).
    pub fn delete_qdisc(
        &mut self,
        ifindex: u32,
        parent: u32,
        handle: u32,
        kind: &str,
    ) -> Result<(), NetlinkError> {
        let what = format!("deleting qdisc {kind} {}", handle_text(handle));
        let msg = RouteNetlinkMessage::DelQueueDiscipline(tc_message(
            ifindex,
            parent,
            handle,
            0,
            Some((kind, None)),
        ));
        self.request(msg, 0, &what).map(drop)
    }

    /// The filters under one parent (a clsact hook); none where there is no such parent.
    pub fn filters(&mut self, ifindex: u32, parent: u32) -> Result<Vec<Filter>, NetlinkError> {
        let msg = RouteNetlinkMessage::GetTrafficFilter(tc_message(ifindex, parent, 0, 0, None));
        let answers = match self.request(msg, NLM_F_DUMP, "listing TC filters") {
            Err(e) if e.is(libc::EINVAL) || e.is(libc::ENOENT) => return Ok(Vec::new()),
            other => other?,
        };
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewTrafficFilter(f) if f.header.index == ifindex as i32 => {
                    Some(filter(f))
                }
                _ => None,
            })
            .collect())
    }

    pub fn delete_filter(&mut self, ifindex: u32, filter: &Filter) -> Result<(), NetlinkError> {
        let what = format!(
            "deleting the {} filter {} (priority {})",
            filter.kind,
            handle_text(filter.handle),
            filter.info >> 16
        );
        let msg = RouteNetlinkMessage::DelTrafficFilter(tc_message(
            ifindex,
            filter.parent,
            filter.handle,
            filter.info,
            Some((&filter.kind, None)),
        ));
        self.request(msg, 0, &what).map(drop)
    }

    /// Sends one request and collects the answers until the kernel's ACK (or the end of
    /// a dump); a refusal becomes the error, in the kernel's words.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        what: &str,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket
            .send(&buf, 0)
            .map_err(|e| NetlinkError::io(what, e))?;

        let mut answers = Vec::new();
        loop {
            let (datagram, _) = self
                .socket
                .recv_from_full()
                .map_err(|e| NetlinkError::io(what, e))?;
            let mut at = 0;
            while at < datagram.len() {
                let bytes = &datagram[at..];
                let len = NetlinkBuffer::new_checked(bytes)
                    .map_err(|e| NetlinkError::protocol(what, e.to_string()))?
                    .length() as usize;
                if len == 0 {
                    break;
                }
                let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(
                    &bytes[..len.min(bytes.len())],
                );
                at += align(len);
                let message = match message {
                    Ok(m) => m,
                    // A message this crate cannot read (a newer kernel's attribute): not
                    // one faultd asked about, or unusable; skip it.
                    Err(_) => continue,
                };
                if message.header.sequence_number != seq {
                    continue;
                }
                match message.payload {
                    NetlinkPayload::InnerMessage(inner) => answers.push(inner),
                    NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(answers),
                        Some(code) => {
                            let errno = -code.get();
                            return Err(NetlinkError {
                                what: what.into(),
                                errno: Some(errno),
                                message: extack_message(&e.header).unwrap_or_else(|| {
                                    io::Error::from_raw_os_error(errno).to_string()
                                }),
                            });
                        }
                    },
                    _ => {}
                }
            }
        }
    }
}

fn set_receive_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        // `as _`: the field types (musl deprecates their aliases' names).
        tv_sec: timeout.as_secs() as _,
        tv_usec: timeout.subsec_micros() as _,
    };
    // SAFETY: a valid socket and a timeval of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// `NLMSGERR_ATTR_MSG` from an extended ACK: after the (capped) request header come
/// attributes, the first kind of which is the kernel's message.
fn extack_message(after_code: &[u8]) -> Option<String> {
    const NLMSG_HDRLEN: usize = 16;
    const NLMSGERR_ATTR_MSG: u16 = 1;
    let tlvs = after_code.get(NLMSG_HDRLEN..)?;
    NlasIterator::new(tlvs)
        .flatten()
        .find_map(|nla: NlaBuffer<&[u8]>| {
            (nla.kind() == NLMSGERR_ATTR_MSG).then(|| {
                String::from_utf8_lossy(nla.value())
                    .trim_end_matches('\0')
                    .to_string()
            })
        })
}

fn tc_message(
    ifindex: u32,
    parent: u32,
    handle: u32,
    info: u32,
    kind: Option<(&str, Option<&[u8]>)>,
) -> TcMessage {
    let mut msg = TcMessage::default();
    msg.header = TcHeader {
        index: ifindex as i32,
        handle: TcHandle::from(handle),
        parent: TcHandle::from(parent),
        info,
        ..TcHeader::default()
    };
    if let Some((kind, options)) = kind {
        msg.attributes.push(TcAttribute::Kind(kind.to_string()));
        if let Some(options) = options {
            // Emitted as they are: the bytes of TCA_OPTIONS, nested attributes or a struct.
            msg.attributes
                .push(TcAttribute::Other(netlink_packet_core::DefaultNla::new(
                    TCA_OPTIONS,
                    options.to_vec(),
                )));
        }
    }
    msg
}

const TCA_OPTIONS: u16 = 2;

fn qdisc_kind(attributes: &[TcAttribute]) -> Option<&str> {
    attributes.iter().find_map(|a| match a {
        TcAttribute::Kind(k) => Some(k.as_str()),
        _ => None,
    })
}

fn qdisc(msg: TcMessage) -> Qdisc {
    Qdisc {
        handle: msg.header.handle.into(),
        parent: msg.header.parent.into(),
        kind: qdisc_kind(&msg.attributes).unwrap_or_default().to_string(),
        options: options_bytes(&msg.attributes),
    }
}

/// The payload of `TCA_OPTIONS` as bytes, whether the crate parsed it or not.
fn options_bytes(attributes: &[TcAttribute]) -> Vec<u8> {
    use netlink_packet_core::Emitable as _;
    attributes
        .iter()
        .find_map(|a| match a {
            // A kind the crate does not know (fq, pfifo…) comes as one attribute holding
            // TCA_OPTIONS itself; a known one as the attributes nested inside it.
            TcAttribute::Options(options) => match options.as_slice() {
                [TcOption::Other(nla)] if netlink_packet_core::Nla::kind(nla) == TCA_OPTIONS => {
                    let mut buf = vec![0; netlink_packet_core::Nla::value_len(nla)];
                    netlink_packet_core::Nla::emit_value(nla, &mut buf);
                    Some(buf)
                }
                nested => {
                    let mut buf = vec![0; nested.buffer_len()];
                    nested.emit(&mut buf);
                    Some(buf)
                }
            },
            TcAttribute::Other(nla) if netlink_packet_core::Nla::kind(nla) == TCA_OPTIONS => {
                let mut buf = vec![0; netlink_packet_core::Nla::value_len(nla)];
                netlink_packet_core::Nla::emit_value(nla, &mut buf);
                Some(buf)
            }
            _ => None,
        })
        .unwrap_or_default()
}

fn filter(msg: TcMessage) -> Filter {
    let bpf_name = msg.attributes.iter().find_map(|a| match a {
        TcAttribute::Options(options) => options.iter().find_map(|o| match o {
            TcOption::Bpf(TcFilterBpfOption::ProgName(name)) => Some(name.clone()),
            _ => None,
        }),
        _ => None,
    });
    Filter {
        parent: msg.header.parent.into(),
        info: msg.header.info,
        handle: msg.header.handle.into(),
        kind: qdisc_kind(&msg.attributes).unwrap_or_default().to_string(),
        bpf_name,
    }
}

/// A handle as `tc` writes it (`8001:`, `ffff:fff2`).
pub fn handle_text(handle: u32) -> String {
    match (handle >> 16, handle & 0xFFFF) {
        (major, 0) => format!("{major:x}:"),
        (major, minor) => format!("{major:x}:{minor:x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_read_as_tc_writes_them() {
        assert_eq!(handle_text(0x8001_0000), "8001:");
        assert_eq!(handle_text(CLSACT_INGRESS), "ffff:fff2");
        assert_eq!(handle_text(0), "0:");
    }

    #[test]
    fn the_kernels_message_comes_from_the_extended_ack() {
        let mut after_code = vec![0u8; 16];
        let msg = b"Exclusivity flag on, cannot modify\0";
        let len = 4 + msg.len();
        after_code.extend((len as u16).to_ne_bytes());
        after_code.extend(1u16.to_ne_bytes());
        after_code.extend(msg);
        after_code.resize(after_code.len().next_multiple_of(4), 0);
        assert_eq!(
            extack_message(&after_code).as_deref(),
            Some("Exclusivity flag on, cannot modify")
        );
        assert_eq!(extack_message(&[0; 16]), None);
    }
}
