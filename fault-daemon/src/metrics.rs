//! Prometheus metrics (`faultd --metrics 127.0.0.1:9747`): per-fault counters read from the
//! programs' per-CPU maps at scrape time (the same read as GetStats), the number of active
//! faults and of rule updates, in the Prometheus text format that `promtool check metrics`
//! accepts.
//!
//! The HTTP server is deliberately tiny: one `GET /metrics` per connection, answered and
//! closed. It is read-only and outside the API's access gate, so it is off by default and
//! refuses non-loopback addresses unless `--allow-remote` is given.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::api::FaultApi;

/// Where `--metrics` is usually pointed (Prometheus' port allocation for faultd).
pub const EXAMPLE_ADDR: &str = "127.0.0.1:9747";

/// A request head larger than this is refused: a scrape is one short line and a few
/// headers.
const MAX_REQUEST: usize = 8192;
/// A client that sends no complete request head within this long is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Metrics on a non-loopback address only when asked for: they name ports and labels.
pub fn check_addr(addr: SocketAddr, allow_remote: bool) -> anyhow::Result<()> {
    if addr.ip().is_loopback() || allow_remote {
        return Ok(());
    }
    bail!(
        "--metrics {addr} is not a loopback address; the metrics (ports, labels, counters) \
         are served without access checks. Pass --allow-remote to do it anyway"
    )
}

/// The registry a scrape encodes: faultd's collector only.
pub fn registry(api: FaultApi) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(FaultCollector { api }));
    registry
}

/// The text a scrape returns.
pub fn render(registry: &Registry) -> Result<String, fmt::Error> {
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, registry)?;
    Ok(text)
}

/// Reads the engine at each scrape.
struct FaultCollector {
    api: FaultApi,
}

impl fmt::Debug for FaultCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FaultCollector")
    }
}

impl Collector for FaultCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let faults = self.api.counters().map_err(|e| {
            warn!("metrics: cannot read the fault counters: {e}");
            fmt::Error
        })?;
        let labels: Vec<_> = faults
            .iter()
            .map(|(fault, _)| {
                vec![
                    ("id", fault.id.to_string()),
                    ("action", fault.spec.action.name().to_string()),
                    ("port", fault.spec.target.port.to_string()),
                    ("label", fault.spec.label.to_string()),
                ]
            })
            .collect();
        type Read = fn(&fault_common::FaultCounters) -> u64;
        let families: [(&str, &str, Read); 4] = [
            (
                "faultd_fault_matched_packets",
                "Packets that matched the fault's target",
                |c| c.matched_packets,
            ),
            (
                "faultd_fault_matched_bytes",
                "Bytes of the packets that matched the fault's target",
                |c| c.matched_bytes,
            ),
            (
                "faultd_fault_acted_packets",
                "Packets the fault acted on (dropped, reset, delayed...)",
                |c| c.acted_packets,
            ),
            (
                "faultd_fault_acted_bytes",
                "Bytes of the packets the fault acted on",
                |c| c.acted_bytes,
            ),
        ];
        for (name, help, read) in families {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for ((_, counters), labels) in faults.iter().zip(&labels) {
                ConstCounter::new(read(counters)).encode(family.encode_family(labels)?)?;
            }
        }
        ConstGauge::new(faults.len() as i64).encode(encoder.encode_descriptor(
            "faultd_active_faults",
            "Faults installed now",
            None,
            MetricType::Gauge,
        )?)?;
        let updates = self.api.rule_updates();
        let mut family = encoder.encode_descriptor(
            "faultd_rule_updates",
            "Faults added (op=add) and removed (op=remove: by a call, a clear or a TTL)",
            None,
            MetricType::Counter,
        )?;
        for (op, count) in [("add", updates.adds), ("remove", updates.removes)] {
            ConstCounter::new(count).encode(family.encode_family(&[("op", op)])?)?;
        }
        let events = self.api.event_stats();
        let mut family = encoder.encode_descriptor(
            "faultd_events_lost",
            "Kernel events lost: the ring buffer was full (where=kernel), or a subscriber \
             read too slowly (where=subscriber); each loss is also a gap in the event stream",
            None,
            MetricType::Counter,
        )?;
        for (place, count) in [
            ("kernel", events.lost_in_kernel),
            ("subscriber", events.lost_to_slow_subscribers),
        ] {
            ConstCounter::new(count).encode(family.encode_family(&[("where", place)])?)?;
        }
        if let Some(flows) = self.api.flow_stats() {
            ConstCounter::new(flows.full).encode(encoder.encode_descriptor(
                "faultd_flows_untracked",
                "Packets of new flows that a limit could not track, its flow table \
                 (--max-flows) being full: they passed",
                None,
                MetricType::Counter,
            )?)?;
            ConstGauge::new(flows.entries as i64).encode(encoder.encode_descriptor(
                "faultd_flows_tracked",
                "Flows the limits track now",
                None,
                MetricType::Gauge,
            )?)?;
            ConstGauge::new(flows.max_entries as i64).encode(encoder.encode_descriptor(
                "faultd_flows_max",
                "Flows the limits can track at once (--max-flows)",
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

/// Serves `GET /metrics` on `listener` until the runtime ends.
pub async fn serve(listener: TcpListener, registry: Registry) {
    let registry = Arc::new(registry);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!("metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &registry).await {
                debug!(%peer, "metrics: {e}");
            }
        });
    }
}

/// Reads one request head and answers it; the connection is closed after.
async fn answer(mut stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => return Ok(()),
    };
    let (status, content_type, body) = respond(&head, registry);
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// The request line and headers, up to the blank line.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_REQUEST {
            return Err(std::io::Error::other("request head too large"));
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// Status line, content type and body for a request head.
fn respond(head: &str, registry: &Registry) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    let mut words = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (words.next(), words.next());
    let path = target.map(|t| t.split('?').next().unwrap_or_default());
    match (method, path) {
        (Some("GET"), Some("/metrics")) => match render(registry) {
            Ok(text) => (
                "200 OK",
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                text,
            ),
            Err(_) => (
                "500 Internal Server Error",
                TEXT,
                "cannot read the fault counters; see faultd's log\n".into(),
            ),
        },
        (Some("GET"), _) => ("404 Not Found", TEXT, "metrics are at /metrics\n".into()),
        _ => ("405 Method Not Allowed", TEXT, "only GET /metrics\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Engine;
    use crate::faults::tests::{MemorySink, drop_spec};
    use crate::faults::{FaultTable, Owner, Protocol};

    fn api() -> FaultApi {
        FaultApi::new(
            Engine::new(
                FaultTable::default(),
                Box::new(MemorySink::default()),
                vec![],
            ),
            Arc::default(),
        )
    }

    #[tokio::test]
    async fn faults_are_labelled_and_updates_counted() {
        use crate::proto::{self, fault_service_server::FaultService as _};
        let api = api();
        let mut spec = drop_spec(2379, Protocol::Udp);
        spec.label = "etcd \"a\"".into();
        let first = api.add(spec, Owner::default()).unwrap();
        let second = api
            .add(drop_spec(2380, Protocol::Tcp), Owner::default())
            .unwrap();
        api.remove_fault(tonic::Request::new(proto::RemoveFaultRequest {
            id: second.id,
        }))
        .await
        .unwrap();
        let text = render(&registry(api)).unwrap();
        let line = format!(
            "faultd_fault_acted_packets_total{{id=\"{}\",action=\"drop\",port=\"2379\",\
             label=\"etcd \\\"a\\\"\"}} 0",
            first.id
        );
        assert!(text.contains(&line), "{text}");
        assert!(
            text.contains("# TYPE faultd_fault_matched_bytes_total counter"),
            "{text}"
        );
        assert!(text.contains("faultd_active_faults 1\n"), "{text}");
        assert!(
            text.contains("faultd_events_lost_total{where=\"kernel\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("faultd_rule_updates_total{op=\"add\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("faultd_rule_updates_total{op=\"remove\"} 1\n"),
            "{text}"
        );
        assert!(!text.contains("port=\"2380\""), "{text}");
    }

    #[tokio::test]
    async fn only_get_metrics_is_answered() {
        let registry = registry(api());
        let (status, content_type, body) =
            respond("GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n", &registry);
        assert_eq!(status, "200 OK");
        assert!(content_type.starts_with("text/plain; version=0.0.4"));
        assert!(body.contains("faultd_active_faults 0"), "{body}");
        assert_eq!(
            respond("GET / HTTP/1.1\r\n\r\n", &registry).0,
            "404 Not Found"
        );
        assert_eq!(
            respond("POST /metrics HTTP/1.1\r\n\r\n", &registry).0,
            "405 Method Not Allowed"
        );
        assert_eq!(respond("", &registry).0, "405 Method Not Allowed");
    }

    #[test]
    fn remote_metrics_need_allow_remote() {
        let lo: SocketAddr = EXAMPLE_ADDR.parse().unwrap();
        let veth: SocketAddr = "198.18.0.1:9747".parse().unwrap();
        assert!(check_addr(lo, false).is_ok());
        let err = check_addr(veth, false).unwrap_err().to_string();
        assert!(err.contains("--allow-remote"), "{err}");
        assert!(check_addr(veth, true).is_ok());
    }
}
