//! System tests of what faultd serves for tools: gRPC server reflection (a client that has
//! no proto lists the services and adds a fault from the reflected descriptors), the
//! health service, and the Prometheus metrics (`promtool check metrics` accepts them and
//! their counters follow the packets a fault drops).

use crate::harness;

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::*;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, Value};
use tokio_stream::StreamExt as _;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::Bytes;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

const API: &str = "http://127.0.0.1:7447";
const METRICS: &str = "127.0.0.1:9747";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// One reflection request on a fresh stream, and its answer.
async fn reflect(
    client: &mut ServerReflectionClient<Channel>,
    request: MessageRequest,
) -> Result<MessageResponse, tonic::Status> {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await?
        .into_inner();
    let answer: ServerReflectionResponse = answers.next().await.expect("an answer")?;
    Ok(answer.message_response.expect("a message response"))
}

async fn list_services(
    client: &mut ServerReflectionClient<Channel>,
) -> Result<Vec<String>, tonic::Status> {
    match reflect(client, MessageRequest::ListServices(String::new())).await? {
        MessageResponse::ListServicesResponse(list) => {
            Ok(list.service.into_iter().map(|s| s.name).collect())
        }
        other => panic!("not a service list: {other:?}"),
    }
}

/// The descriptors of the file defining `symbol` and of its dependencies, as the server
/// reflects them: all a client needs to speak to the service.
async fn pool_for(client: &mut ServerReflectionClient<Channel>, symbol: &str) -> DescriptorPool {
    let files = match reflect(client, MessageRequest::FileContainingSymbol(symbol.into()))
        .await
        .unwrap()
    {
        MessageResponse::FileDescriptorResponse(files) => files.file_descriptor_proto,
        other => panic!("not file descriptors: {other:?}"),
    };
    let files: Vec<_> = files
        .iter()
        .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap())
        .collect();
    let mut pool = DescriptorPool::new();
    pool.add_file_descriptor_protos(files).unwrap();
    pool
}

/// A message of type `desc` with `fields` set; nested messages given as messages.
fn message(desc: MessageDescriptor, fields: Vec<(&str, Value)>) -> DynamicMessage {
    let mut message = DynamicMessage::new(desc);
    for (name, value) in fields {
        message
            .try_set_field_by_name(name, value)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    message
}

fn descriptor(pool: &DescriptorPool, name: &str) -> MessageDescriptor {
    pool.get_message_by_name(name)
        .unwrap_or_else(|| panic!("{name} is not reflected"))
}

/// Encoded messages in, encoded messages out: a gRPC client that knows no message type.
#[derive(Clone, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut as _;
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        use prost::bytes::Buf as _;
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// `AddFault` built from reflection alone: a UDP drop on `port` labelled "reflected".
/// Returns the new fault's id, read from the reflected `Fault` message.
async fn add_fault_by_reflection(channel: Channel, port: u32) -> u64 {
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let pool = pool_for(&mut reflection, "faultd.v1.FaultService").await;
    let service = pool
        .get_service_by_name("faultd.v1.FaultService")
        .expect("the service is reflected");
    let add = service
        .methods()
        .find(|m| m.name() == "AddFault")
        .expect("AddFault is reflected");
    let udp = pool
        .get_enum_by_name("faultd.v1.Protocol")
        .unwrap()
        .get_value_by_name("PROTOCOL_UDP")
        .unwrap()
        .number();
    let target = message(
        descriptor(&pool, "faultd.v1.Target"),
        vec![
            ("port", Value::U32(port)),
            ("protocol", Value::EnumNumber(udp)),
        ],
    );
    let drop = message(descriptor(&pool, "faultd.v1.Drop"), vec![]);
    let action = message(
        descriptor(&pool, "faultd.v1.Action"),
        vec![("drop", Value::Message(drop))],
    );
    let spec = message(
        descriptor(&pool, "faultd.v1.FaultSpec"),
        vec![
            ("target", Value::Message(target)),
            ("action", Value::Message(action)),
            ("label", Value::String("reflected".into())),
        ],
    );
    let request = message(add.input(), vec![("spec", Value::Message(spec))]);

    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = PathAndQuery::try_from(format!("/{}/{}", service.full_name(), add.name())).unwrap();
    let reply = grpc
        .unary(tonic::Request::new(request.encode_to_vec()), path, RawCodec)
        .await
        .unwrap_or_else(|s| panic!("AddFault by reflection: {s}"))
        .into_inner();
    let fault = DynamicMessage::decode(add.output(), reply).unwrap();
    fault
        .get_field_by_name("id")
        .and_then(|v| v.as_u64())
        .expect("the reply carries an id")
}

async fn health_status(client: &mut HealthClient<Channel>, service: &str) -> i32 {
    client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap_or_else(|s| panic!("health check of {service:?}: {s}"))
        .into_inner()
        .status
}

/// A reflection client lists the services, learns AddFault's types and adds a fault with
/// them: the fault is listed and drops what it should. Health answers SERVING.
#[test]
fn a_client_without_the_proto_finds_and_calls_the_api() {
    require_root();
    let ns = Netns::new("refl");
    let _daemon = Daemon::start(&ns, &["lo"]);
    let (services, id, health) = ns.run(|| {
        runtime().block_on(async {
            let channel = Channel::from_static(API).connect().await.unwrap();
            let mut reflection = ServerReflectionClient::new(channel.clone());
            let services = list_services(&mut reflection).await.unwrap();
            let id = add_fault_by_reflection(channel.clone(), 5353).await;
            let mut health = HealthClient::new(channel);
            let health = (
                health_status(&mut health, "").await,
                health_status(&mut health, "faultd.v1.FaultService").await,
            );
            (services, id, health)
        })
    });
    for service in [
        "faultd.v1.FaultService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(
            services.contains(&service.to_string()),
            "{service} not in {services:?}"
        );
    }
    let serving = ServingStatus::Serving as i32;
    assert_eq!(health, (serving, serving));

    let faults = ns.faults_json();
    let fault = &faults.as_array().unwrap()[0];
    assert_eq!(fault["id"].as_u64(), Some(id), "{faults}");
    assert_eq!(fault["label"], "reflected", "{faults}");
    // It acts: datagrams to the port vanish, other ports still deliver.
    let (to_fault, to_other) = ns.run(|| (udp_delivers(5353), udp_delivers(5354)));
    assert!(!to_fault, "the reflected drop lets datagrams through");
    assert!(to_other, "another port must still deliver");
}

/// Reflection and health sit behind the same access gate as the API: a caller the policy
/// does not admit gets PERMISSION_DENIED from both.
#[test]
fn reflection_and_health_refuse_an_unadmitted_caller() {
    require_root();
    let ns = Netns::new("reflg");
    let _daemon = Daemon::start(&ns, &["lo"]);
    let nobody = 65534;
    let codes = ns.run(|| {
        // SAFETY: changes this thread's filesystem uid only, which the kernel records as
        // the owner of the sockets the thread creates.
        unsafe { libc::setfsuid(nobody) };
        let codes = runtime().block_on(async {
            let channel = Channel::from_static(API).connect().await.unwrap();
            let mut reflection = ServerReflectionClient::new(channel.clone());
            let mut health = HealthClient::new(channel);
            let listed = list_services(&mut reflection).await.map(drop);
            let checked = health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(drop);
            [listed, checked].map(|r| r.map_or_else(|s| s.code(), |_| tonic::Code::Ok))
        });
        // SAFETY: as above.
        unsafe { libc::setfsuid(0) };
        codes
    });
    assert_eq!(codes, [tonic::Code::PermissionDenied; 2]);
}

/// A health watcher sees NOT_SERVING when faultd is told to stop, before it goes.
#[test]
fn health_goes_not_serving_on_shutdown() {
    require_root();
    let ns = Netns::new("hlth");
    let mut daemon = Daemon::start(&ns, &["lo"]);
    let pid = daemon.pid();
    let seen = ns.run(|| {
        runtime().block_on(async {
            let channel = Channel::from_static(API).connect().await.unwrap();
            let mut health = HealthClient::new(channel);
            let mut watch = health
                .watch(HealthCheckRequest {
                    service: "faultd.v1.FaultService".into(),
                })
                .await
                .unwrap()
                .into_inner();
            let mut seen = Vec::new();
            let first: HealthCheckResponse = watch.next().await.unwrap().unwrap();
            seen.push(first.status);
            // SAFETY: a signal to the faultd this test started, by its PID.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let next = tokio::time::timeout(Duration::from_secs(5), watch.next()).await;
            if let Ok(Some(Ok(next))) = next {
                seen.push(next.status);
            }
            seen
        })
    });
    assert_eq!(
        seen,
        [
            ServingStatus::Serving as i32,
            ServingStatus::NotServing as i32
        ]
    );
    assert_eq!(daemon.child.wait().unwrap().code(), Some(0), "faultd exits");
}

/// `GET /metrics` inside the namespace.
fn scrape(ns: &Netns) -> String {
    ns.run(|| {
        let mut stream = TcpStream::connect(METRICS).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: faultd\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(
            head.contains("Content-Type: text/plain; version=0.0.4"),
            "{head}"
        );
        body.to_string()
    })
}

/// The value of the sample whose name and labels start with `prefix`.
fn sample(text: &str, prefix: &str) -> u64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no sample {prefix} in\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// `promtool check metrics` on `text`: Ok, or its complaints.
fn promtool_check(text: &str) -> Result<(), String> {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            panic!("promtool (Debian's prometheus package, installed by `cargo xtask setup`): {e}")
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The scraped metrics pass `promtool check metrics`, and a drop fault's counters grow by
/// exactly the datagrams it dropped.
#[test]
fn metrics_pass_promtool_and_count_what_a_fault_drops() {
    require_root();
    let ns = Netns::new("metr");
    let _daemon =
        Daemon::try_start(&ns, &["lo"], &["--metrics", METRICS]).expect("faultd with metrics");
    let empty = scrape(&ns);
    promtool_check(&empty).unwrap_or_else(|e| panic!("promtool: {e}\n{empty}"));
    assert_eq!(sample(&empty, "faultd_active_faults "), 0, "{empty}");

    let id = ns.faultctl_ok(&[
        "drop",
        "--port",
        "5353",
        "--protocol",
        "udp",
        "--label",
        "mdns",
    ]);
    let labels = format!("{{id=\"{id}\",action=\"drop\",port=\"5353\",label=\"mdns\"}}");
    let before = scrape(&ns);
    promtool_check(&before).unwrap_or_else(|e| panic!("promtool: {e}\n{before}"));
    let matched = format!("faultd_fault_matched_packets_total{labels} ");
    let acted = format!("faultd_fault_acted_packets_total{labels} ");
    let acted_bytes = format!("faultd_fault_acted_bytes_total{labels} ");
    assert_eq!(sample(&before, &matched), 0, "{before}");
    assert_eq!(sample(&before, &acted), 0, "{before}");
    assert_eq!(sample(&before, "faultd_active_faults "), 1);
    assert_eq!(sample(&before, "faultd_rule_updates_total{op=\"add\"} "), 1);

    const SENT: u64 = 10;
    const PAYLOAD: usize = 100;
    let received = ns.run(|| {
        let receiver = UdpSocket::bind("127.0.0.1:5353").unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..SENT {
            sender.send_to(&[7u8; PAYLOAD], "127.0.0.1:5353").unwrap();
        }
        let mut buf = [0u8; 2048];
        let mut received = 0;
        while receiver.recv(&mut buf).is_ok() {
            received += 1;
        }
        received
    });
    assert_eq!(received, 0, "the drop fault let datagrams through");

    let after = scrape(&ns);
    promtool_check(&after).unwrap_or_else(|e| panic!("promtool: {e}\n{after}"));
    assert_eq!(sample(&after, &matched), SENT, "{after}");
    assert_eq!(sample(&after, &acted), SENT, "{after}");
    // Each dropped packet counts its IPv4 and UDP headers and the payload at least.
    let bytes = sample(&after, &acted_bytes);
    assert!(bytes >= SENT * (PAYLOAD as u64 + 28), "{after}");

    ns.faultctl_ok(&["rm", &id]);
    let removed = scrape(&ns);
    assert_eq!(sample(&removed, "faultd_active_faults "), 0, "{removed}");
    assert_eq!(
        sample(&removed, "faultd_rule_updates_total{op=\"remove\"} "),
        1
    );
    assert!(!removed.contains(&labels), "{removed}");
}

/// `--metrics` on a non-loopback address is refused unless --allow-remote.
#[test]
fn remote_metrics_are_refused_without_allow_remote() {
    require_root();
    let ns = Netns::new("metrr");
    let log = Daemon::try_start(&ns, &["lo"], &["--metrics", "198.18.0.1:9747"])
        .err()
        .expect("faultd refuses a non-loopback metrics address");
    assert!(log.contains("--allow-remote"), "{log}");
}
