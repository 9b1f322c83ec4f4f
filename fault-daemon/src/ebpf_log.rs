//! The programs' own log (aya-log): why a frame was skipped, what each fault did with a
//! packet on its port. The programs write records to a ring buffer only at the level faultd
//! sets in their `LOG_LEVEL` map (`faultd --ebpf-log`, `faultctl ebpf-log`); faultd reads
//! them and writes them into its own log under the target `faultd::ebpf`.

use std::sync::{Arc, Mutex};

use aya::Ebpf;
use aya::maps::{Array, MapData};
use aya_log::EbpfLogger;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tracing::warn;

use fault_common::{
    ACTION_CORRUPT, ACTION_DELAY, ACTION_DROP, ACTION_DUPLICATE, ACTION_LIMIT_AGE,
    ACTION_LIMIT_BYTES, ACTION_RATE, ACTION_RECORD, ACTION_REFUSE_DROP, ACTION_REFUSE_RST,
    ACTION_RESET, ACTION_SLICE, ACTION_STALL, LOG_HOOK_TC_EGRESS, LOG_HOOK_TC_INGRESS,
    LOG_HOOK_XDP, LOG_PARSE_EXT_CHAIN, LOG_PARSE_FRAGMENT, LOG_PARSE_IHL, LOG_PARSE_NOT_IP,
    LOG_PARSE_NOT_TCP_UDP, LOG_PARSE_TCP_OFFSET, LOG_PARSE_TRUNCATED, LOG_SLOT_ALTERED,
    LOG_SLOT_DROPPED, LOG_SLOT_RESET, LOG_SLOT_SKIPPED_DIRECTION, LOG_SLOT_SKIPPED_HOOK,
    LOG_SLOT_SKIPPED_KIND, LOG_SLOT_SKIPPED_PEER, LOG_SLOT_UNTOUCHED,
};

use crate::proto;

/// The map the programs read their level from (fault-ebpf/src/log.rs).
const LEVEL_MAP: &str = "LOG_LEVEL";

/// How much the programs log; each level includes those before it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum EbpfLogLevel {
    #[default]
    Off,
    /// Errors only (the programs report none today).
    Error,
    /// A RST that could not be forged (the packet is dropped instead).
    Warn,
    /// A fault dropped, reset or altered a packet.
    Info,
    /// Also: a fault matched without acting or skipped a packet on its port, and why;
    /// frames the programs do not parse, and why.
    Debug,
}

impl EbpfLogLevel {
    /// The number the programs compare with: aya-log's levels (1 error … 4 debug), 0 off.
    fn kernel_value(self) -> u32 {
        match self {
            EbpfLogLevel::Off => 0,
            EbpfLogLevel::Error => 1,
            EbpfLogLevel::Warn => 2,
            EbpfLogLevel::Info => 3,
            EbpfLogLevel::Debug => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            EbpfLogLevel::Off => "off",
            EbpfLogLevel::Error => "error",
            EbpfLogLevel::Warn => "warn",
            EbpfLogLevel::Info => "info",
            EbpfLogLevel::Debug => "debug",
        }
    }

    /// From the wire; `None` for unspecified or unknown values.
    pub fn from_proto(level: i32) -> Option<Self> {
        match proto::EbpfLogLevel::try_from(level).ok()? {
            proto::EbpfLogLevel::Unspecified => None,
            proto::EbpfLogLevel::Off => Some(EbpfLogLevel::Off),
            proto::EbpfLogLevel::Error => Some(EbpfLogLevel::Error),
            proto::EbpfLogLevel::Warn => Some(EbpfLogLevel::Warn),
            proto::EbpfLogLevel::Info => Some(EbpfLogLevel::Info),
            proto::EbpfLogLevel::Debug => Some(EbpfLogLevel::Debug),
        }
    }

    pub fn to_proto(self) -> proto::EbpfLogLevel {
        match self {
            EbpfLogLevel::Off => proto::EbpfLogLevel::Off,
            EbpfLogLevel::Error => proto::EbpfLogLevel::Error,
            EbpfLogLevel::Warn => proto::EbpfLogLevel::Warn,
            EbpfLogLevel::Info => proto::EbpfLogLevel::Info,
            EbpfLogLevel::Debug => proto::EbpfLogLevel::Debug,
        }
    }
}

/// Sets the programs' level while they run. Clones share the map.
#[derive(Clone)]
pub struct EbpfLogSwitch {
    inner: Arc<Mutex<(Array<MapData, u32>, EbpfLogLevel)>>,
}

impl EbpfLogSwitch {
    /// Writes `level` where the programs read it; returns the level it replaces.
    pub fn set(&self, level: EbpfLogLevel) -> Result<EbpfLogLevel, aya::maps::MapError> {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (map, current) = &mut *guard;
        map.set(0, level.kernel_value(), 0)?;
        Ok(std::mem::replace(current, level))
    }
}

/// The programs' log, as loaded with them: the level switch, and the reader of their
/// records until [`KernelLog::take_reader`] hands it to [`forward`].
pub struct KernelLog {
    switch: EbpfLogSwitch,
    reader: Option<EbpfLogger<TracingBridge>>,
}

impl KernelLog {
    /// Takes the log's maps out of the loaded object; the level starts off.
    pub fn init(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let map = ebpf
            .take_map(LEVEL_MAP)
            .ok_or_else(|| anyhow::anyhow!("map {LEVEL_MAP} missing from the object"))?;
        let map = Array::try_from(map)?;
        let reader = EbpfLogger::init_with_logger(ebpf, TracingBridge)?;
        Ok(Self {
            switch: EbpfLogSwitch {
                inner: Arc::new(Mutex::new((map, EbpfLogLevel::Off))),
            },
            reader: Some(reader),
        })
    }

    pub fn switch(&self) -> EbpfLogSwitch {
        self.switch.clone()
    }

    /// The reader of the programs' records (once).
    pub fn take_reader(&mut self) -> Option<EbpfLogger<TracingBridge>> {
        self.reader.take()
    }
}

/// Reads the programs' records as they come and logs them (needs the tokio runtime).
pub async fn forward(reader: EbpfLogger<TracingBridge>) {
    // SAFETY: the fd is the ring buffer map's, owned by `reader`, which the AsyncFd owns
    // and never changes for its lifetime.
    let registered = unsafe { AsyncFd::register_with_interest(reader, Interest::READABLE) };
    let mut reader = match registered {
        Ok(reader) => reader,
        Err(e) => {
            warn!("cannot watch the programs' log: {e}; it will not be shown");
            return;
        }
    };
    loop {
        let Ok(mut ready) = reader.readable_mut().await else {
            return;
        };
        ready.get_inner_mut().flush();
        ready.clear_ready();
    }
}

/// aya-log speaks the `log` crate; faultd logs with `tracing`. Every record goes out under
/// one target, so that `RUST_LOG=faultd::ebpf=…` selects the programs' lines.
pub struct TracingBridge;

impl log::Log for TracingBridge {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let raw = record.args().to_string();
        let message = render(&raw).unwrap_or(raw);
        match record.level() {
            log::Level::Error => tracing::error!(target: "faultd::ebpf", "{message}"),
            log::Level::Warn => tracing::warn!(target: "faultd::ebpf", "{message}"),
            log::Level::Info => tracing::info!(target: "faultd::ebpf", "{message}"),
            log::Level::Debug => tracing::debug!(target: "faultd::ebpf", "{message}"),
            log::Level::Trace => tracing::trace!(target: "faultd::ebpf", "{message}"),
        }
    }

    fn flush(&self) {}
}

/// Puts a record of the programs (numbers only: see fault_common's `LOG_*` for why and how)
/// into words; `None` for text that is not such a record.
fn render(record: &str) -> Option<String> {
    let mut words = record.split_whitespace();
    let kind = words.next()?;
    let mut number = || words.next()?.parse::<u64>().ok();
    match kind {
        "verdict" => {
            let (packed, fault_id) = (number()?, number()?);
            let (src, dst) = (number()?, number()?);
            let (hook, action) = ((packed >> 24) as u32, (packed >> 16) as u8);
            let (outcome, protocol) = ((packed >> 8) as u8 as u32, packed as u8);
            Some(format!(
                "{}: fault {fault_id} ({}) {} {} {src} -> {dst}",
                hook_name(hook),
                action_name(action),
                outcome_words(outcome),
                protocol_name(protocol),
            ))
        }
        "parse" => {
            let (hook, why) = (number()? as u32, number()?);
            let detail = why >> 8;
            let reason = match why as u32 & 0xff {
                LOG_PARSE_NOT_IP => format!("not IPv4/IPv6 (ethertype {detail:#06x})"),
                LOG_PARSE_TRUNCATED => format!("truncated: a header runs past byte {detail}"),
                LOG_PARSE_IHL => format!("bad IPv4 header length {detail}"),
                LOG_PARSE_FRAGMENT => format!("IP fragment at offset {} (no ports)", detail * 8),
                LOG_PARSE_NOT_TCP_UDP => format!("not TCP or UDP (IP protocol {detail})"),
                LOG_PARSE_EXT_CHAIN => {
                    format!("IPv6 extension chain too long (next header {detail})")
                }
                LOG_PARSE_TCP_OFFSET => format!("bad TCP header length {detail}"),
                other => format!("reason {other}"),
            };
            Some(format!("{}: frame skipped, {reason}", hook_name(hook)))
        }
        "rst-failed" => {
            let (hook, fault_id) = (number()? as u32, number()?);
            Some(format!(
                "{}: fault {fault_id}: could not forge a RST; the packet was dropped",
                hook_name(hook)
            ))
        }
        _ => None,
    }
}

fn hook_name(hook: u32) -> &'static str {
    match hook {
        LOG_HOOK_XDP => "xdp",
        LOG_HOOK_TC_INGRESS => "tc-ingress",
        LOG_HOOK_TC_EGRESS => "tc-egress",
        _ => "hook?",
    }
}

fn outcome_words(outcome: u32) -> &'static str {
    match outcome {
        LOG_SLOT_SKIPPED_DIRECTION => "skipped (direction)",
        LOG_SLOT_SKIPPED_HOOK => "skipped (acts at another hook)",
        LOG_SLOT_SKIPPED_PEER => "skipped (peer)",
        LOG_SLOT_SKIPPED_KIND => "skipped (packet kind)",
        LOG_SLOT_UNTOUCHED => "matched, passed",
        LOG_SLOT_ALTERED => "matched, altered",
        LOG_SLOT_DROPPED => "matched, dropped",
        LOG_SLOT_RESET => "matched, reset",
        _ => "outcome?",
    }
}

fn protocol_name(protocol: u8) -> &'static str {
    match protocol {
        6 => "tcp",
        17 => "udp",
        _ => "ip?",
    }
}

/// The action as `faultctl` names it.
fn action_name(action: u8) -> &'static str {
    match action {
        ACTION_DROP => "drop",
        ACTION_RESET => "reset",
        ACTION_REFUSE_RST => "refuse rst",
        ACTION_REFUSE_DROP => "refuse drop",
        ACTION_LIMIT_BYTES => "limit-bytes",
        ACTION_LIMIT_AGE => "limit-age",
        ACTION_RECORD => "record",
        ACTION_DELAY => "delay",
        ACTION_RATE => "rate",
        ACTION_CORRUPT => "corrupt",
        ACTION_DUPLICATE => "duplicate",
        ACTION_STALL => "stall",
        ACTION_SLICE => "slice",
        _ => "action?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_put_into_words() {
        let packed =
            LOG_HOOK_TC_INGRESS << 24 | (ACTION_DROP as u32) << 16 | LOG_SLOT_DROPPED << 8 | 17;
        assert_eq!(
            render(&format!("verdict {packed} 7 40101 7471")).unwrap(),
            "tc-ingress: fault 7 (drop) matched, dropped udp 40101 -> 7471"
        );
        assert_eq!(
            render(&format!("parse 0 {}", LOG_PARSE_NOT_IP | 0x0806 << 8)).unwrap(),
            "xdp: frame skipped, not IPv4/IPv6 (ethertype 0x0806)"
        );
        assert_eq!(render("something else"), None);
        assert_eq!(render("verdict 1 2"), None);
    }
}
