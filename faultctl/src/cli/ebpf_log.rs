//! `faultctl ebpf-log LEVEL`: how much faultd's eBPF programs log, while it runs.
//! Speaks only the protos, so that it moves with the CLI into its own crate.

use clap::{Args, ValueEnum};
use tonic::transport::Channel;

use crate::proto::{self, EbpfLogLevel, fault_service_client::FaultServiceClient};

#[derive(Args, Debug)]
pub struct EbpfLogArgs {
    /// info: what each fault did to a packet; debug: also why packets on a faulted port
    /// were skipped, and frames the programs cannot parse.
    #[arg(value_enum)]
    pub level: Level,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Level {
    Off,
    Error,
    Warn,
    Info,
    Debug,
}

impl From<Level> for EbpfLogLevel {
    fn from(level: Level) -> Self {
        match level {
            Level::Off => EbpfLogLevel::Off,
            Level::Error => EbpfLogLevel::Error,
            Level::Warn => EbpfLogLevel::Warn,
            Level::Info => EbpfLogLevel::Info,
            Level::Debug => EbpfLogLevel::Debug,
        }
    }
}

/// The level's name as the command line spells it.
fn name(level: EbpfLogLevel) -> &'static str {
    match level {
        EbpfLogLevel::Unspecified => "unspecified",
        EbpfLogLevel::Off => "off",
        EbpfLogLevel::Error => "error",
        EbpfLogLevel::Warn => "warn",
        EbpfLogLevel::Info => "info",
        EbpfLogLevel::Debug => "debug",
    }
}

pub async fn run(
    client: &mut FaultServiceClient<Channel>,
    args: EbpfLogArgs,
    json: bool,
) -> anyhow::Result<()> {
    let level = EbpfLogLevel::from(args.level);
    let response = client
        .set_ebpf_log(proto::SetEbpfLogRequest {
            level: level as i32,
        })
        .await
        .map_err(super::rpc_error)?
        .into_inner();
    let previous = name(response.previous());
    if json {
        println!(
            "{}",
            serde_json::json!({ "level": name(level), "previous": previous })
        );
    } else {
        println!("eBPF log level: {} (was {previous})", name(level));
    }
    Ok(())
}
