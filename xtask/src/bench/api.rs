//! A gRPC client of faultd's control API (faultd-api's generated code, the same faultctl
//! uses), and the few calls the bench makes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};

pub use faultd_api::proto;

pub type Client = proto::fault_service_client::FaultServiceClient<tonic::transport::Channel>;

/// faultd's default API address, inside the namespace it runs in.
pub const API: &str = "http://127.0.0.1:7447";

/// One HTTP/2 connection to faultd; clones share it.
pub async fn connect() -> anyhow::Result<Client> {
    // No call may hang the bench: each has a deadline far above what it should take.
    let endpoint = tonic::transport::Endpoint::from_static(API)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30));
    let mut last = None;
    for _ in 0..50 {
        match endpoint.connect().await {
            // ListFaults with 100 000 faults is larger than tonic's default 4 MiB.
            Ok(channel) => return Ok(Client::new(channel).max_decoding_message_size(256 << 20)),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last.unwrap()).context("connecting to faultd's API")
}

/// `drop --port PORT --protocol PROTOCOL` (both directions, any peer).
pub fn drop_spec(port: u16, protocol: proto::Protocol) -> proto::FaultSpec {
    proto::FaultSpec {
        target: Some(proto::Target {
            port: port.into(),
            protocol: protocol.into(),
            direction: proto::Direction::Both.into(),
            peer: String::new(),
            ..Default::default()
        }),
        action: Some(proto::Action {
            kind: Some(proto::action::Kind::Drop(proto::Drop { probability: None })),
        }),
        ttl_ms: None,
        label: "bench".into(),
    }
}

pub async fn add(client: &mut Client, spec: proto::FaultSpec) -> anyhow::Result<u64> {
    let fault = client
        .add_fault(proto::AddFaultRequest {
            spec: Some(spec),
            session_id: 0,
        })
        .await
        .context("AddFault")?
        .into_inner();
    Ok(fault.id)
}

pub async fn remove(client: &mut Client, id: u64) -> anyhow::Result<()> {
    client
        .remove_fault(proto::RemoveFaultRequest { id })
        .await
        .with_context(|| format!("RemoveFault {id}"))?;
    Ok(())
}

/// Adds every spec, `concurrency` calls in flight at a time over the one connection.
pub async fn add_many(
    client: &Client,
    specs: Vec<proto::FaultSpec>,
    concurrency: usize,
) -> anyhow::Result<()> {
    let specs = Arc::new(specs);
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (specs, next, mut client) = (specs.clone(), next.clone(), client.clone());
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(spec) = specs.get(i) else {
                    return anyhow::Ok(());
                };
                add(&mut client, spec.clone())
                    .await
                    .with_context(|| format!("adding fault {i}"))?;
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    Ok(())
}

/// How many faults faultd holds.
pub async fn count(client: &mut Client) -> anyhow::Result<usize> {
    let faults = client
        .list_faults(proto::ListFaultsRequest {})
        .await
        .context("ListFaults")?
        .into_inner()
        .faults;
    Ok(faults.len())
}

/// Checks that faultd holds exactly `want` faults.
pub async fn expect_count(client: &mut Client, want: usize) -> anyhow::Result<()> {
    let have = count(client).await?;
    if have != want {
        bail!("faultd holds {have} faults, expected {want}");
    }
    Ok(())
}
