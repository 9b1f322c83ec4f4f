//! `faultctl stats`.

use serde::Serialize;
use tonic::transport::Channel;

use super::output::{self, AttachmentRow, FaultRow, Render};
use crate::proto::{self, fault_service_client::FaultServiceClient};

pub async fn run(client: &mut FaultServiceClient<Channel>, json: bool) -> anyhow::Result<()> {
    let stats = client
        .get_stats(proto::GetStatsRequest {})
        .await
        .map_err(super::rpc_error)?
        .into_inner();
    let stats = Stats {
        faults: stats
            .faults
            .iter()
            .filter_map(|s| {
                Some(FaultStats {
                    fault: FaultRow::from(s.fault.as_ref()?),
                    counters: Counters::from(s.counters.unwrap_or_default()),
                })
            })
            .collect(),
        attachments: stats.attachments.iter().map(AttachmentRow::from).collect(),
        events: EventStats::from(stats.events.unwrap_or_default()),
        flows: stats.flows.map(|f| FlowStats {
            max_entries: f.max_entries,
            tracked: f.entries,
            untracked: f.untracked,
        }),
    };
    output::print(&stats, json)
}

#[derive(Serialize)]
pub struct Stats {
    pub faults: Vec<FaultStats>,
    pub attachments: Vec<AttachmentRow>,
    pub events: EventStats,
    /// `None` from a faultd that does not report it.
    pub flows: Option<FlowStats>,
}

/// The limits' flow table: its size (faultd --max-flows), the flows in it, and the packets
/// of new flows that found it full and passed untracked.
#[derive(Serialize)]
pub struct FlowStats {
    pub max_entries: u32,
    pub tracked: u64,
    pub untracked: u64,
}

/// Kernel events received, and lost on their way (each loss is also a gap in the stream).
#[derive(Serialize)]
pub struct EventStats {
    pub received: u64,
    pub lost_in_kernel: u64,
    pub lost_to_slow_subscribers: u64,
}

impl From<proto::EventStats> for EventStats {
    fn from(e: proto::EventStats) -> Self {
        EventStats {
            received: e.received,
            lost_in_kernel: e.lost_in_kernel,
            lost_to_slow_subscribers: e.lost_to_slow_subscribers,
        }
    }
}

/// A fault and its counters: in JSON, the fault's fields and `counters`.
#[derive(Serialize)]
pub struct FaultStats {
    #[serde(flatten)]
    pub fault: FaultRow,
    pub counters: Counters,
}

#[derive(Serialize)]
pub struct Counters {
    pub matched_packets: u64,
    pub matched_bytes: u64,
    pub acted_packets: u64,
    pub acted_bytes: u64,
}

impl From<proto::Counters> for Counters {
    fn from(c: proto::Counters) -> Self {
        Counters {
            matched_packets: c.matched_packets,
            matched_bytes: c.matched_bytes,
            acted_packets: c.acted_packets,
            acted_bytes: c.acted_bytes,
        }
    }
}

impl Render for Stats {
    /// One line per attachment, one for the events, then the table.
    fn text(&self) -> String {
        let mut out = String::new();
        for a in &self.attachments {
            out += &format!("{}: xdp {}, tc {}\n", a.interface, a.xdp_mode, a.tc_mode);
        }
        let e = &self.events;
        out += &format!(
            "events: {} received, {} lost in the kernel (ring full), {} not delivered to slow \
             subscribers\n",
            e.received, e.lost_in_kernel, e.lost_to_slow_subscribers
        );
        if let Some(f) = &self.flows {
            out += &format!(
                "flows: {} of {} tracked by limits, {} packets of new flows passed untracked \
                 (table full)\n",
                f.tracked, f.max_entries, f.untracked
            );
        }
        let mut table = output::table(&[
            "ID",
            "ACTION",
            "PORT",
            "PROTO",
            "MATCHED PKTS",
            "MATCHED BYTES",
            "ACTED PKTS",
            "ACTED BYTES",
            "LABEL",
        ]);
        for s in &self.faults {
            let (f, c) = (&s.fault, &s.counters);
            table.add_row(vec![
                f.id.to_string(),
                f.action.to_string(),
                f.ports_text(),
                f.protocol.to_string(),
                c.matched_packets.to_string(),
                c.matched_bytes.to_string(),
                c.acted_packets.to_string(),
                c.acted_bytes.to_string(),
                output::cell(&f.label),
            ]);
        }
        out + &table.to_string()
    }
}
