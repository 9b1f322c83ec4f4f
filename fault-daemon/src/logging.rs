//! faultd's own log, on stderr: text for people, coloured only on a terminal (a log file
//! or a journal gets no escape sequences), or one JSON object per line for log collectors.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// `--log-format`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people; ANSI colours only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, fields (message included).
    Json,
}

/// Installs the global subscriber. `RUST_LOG` filters as usual (default `info`).
pub fn init(format: LogFormat) {
    // The programs' lines (--ebpf-log) are filtered by their own level, in the kernel.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,faultd::ebpf=debug".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}
