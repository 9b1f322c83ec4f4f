//! `faultctl refuse`: new connections to the port fail; established ones are untouched.

use clap::{Args, ValueEnum};
use tonic::transport::Channel;

use super::target::TargetArgs;
use crate::proto::{self, fault_service_client::FaultServiceClient};

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum Mode {
    /// connect() fails at once with ECONNREFUSED (TCP).
    Rst,
    /// connect() times out; for UDP, datagrams to the port vanish.
    Drop,
}

#[derive(Args, Debug)]
pub struct RefuseArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[arg(long, value_enum, default_value = "rst")]
    pub mode: Mode,
    /// Every refused SYN is recorded anyway (see `faultctl events` and `faultctl backoff`);
    /// accepted for symmetry with `faultctl record`.
    #[arg(long)]
    pub record: bool,
}

pub async fn run(
    client: &mut FaultServiceClient<Channel>,
    args: RefuseArgs,
    json: bool,
) -> anyhow::Result<()> {
    let mode = match args.mode {
        Mode::Rst => proto::RefuseMode::Rst,
        Mode::Drop => proto::RefuseMode::Drop,
    };
    let action = proto::action::Kind::Refuse(proto::Refuse { mode: mode as i32 });
    super::output::added(client, args.target.spec(action), json).await
}
