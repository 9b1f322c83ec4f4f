//! `faultctl`: drive faultd from a shell. A client of faultd's gRPC API only (`faultd-api`),
//! so it builds with stable Rust alone.

mod cli;

use std::process::ExitCode;

use clap::Parser as _;

/// The generated code of faultd's API, as `crate::proto` for the subcommands.
pub use faultd_api::proto;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are answers (0); any other clap error is bad input (1,
            // where clap's own default would be 2, which here means "daemon unreachable").
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                cli::exit::BAD_INPUT
            } else {
                cli::exit::OK
            });
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("faultctl: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::from(cli::exit::OK),
        Err(e) => {
            eprintln!("faultctl: {e:#}");
            ExitCode::from(cli::exit_code(&e))
        }
    }
}
