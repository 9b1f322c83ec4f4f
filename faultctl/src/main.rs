//! `faultctl`: drive faultd from a shell. A client of faultd's gRPC API only (`faultd-api`),
//! so it builds with stable Rust alone.

mod cli;

use clap::Parser;

/// The generated code of faultd's API, as `crate::proto` for the subcommands.
pub use faultd_api::proto;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = cli::Cli::parse();
    if let Err(e) = cli::run(cli).await {
        eprintln!("faultctl: {e:#}");
        std::process::exit(1);
    }
}
