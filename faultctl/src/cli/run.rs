//! `faultctl run FILE`: play a timed scenario ([`faultd_api::scenario`]) against faultd,
//! printing each step as it happens; `--check` only reads and checks the file.
//!
//! Every fault the run adds is bound to a session (OpenSession) that faultctl holds: at the
//! end, on Ctrl-C or SIGTERM, or when a step fails, faultctl removes what it added and
//! waits for that; should faultctl die any other way (SIGKILL), faultd ends the session and
//! removes the faults within 1 s.

use std::path::PathBuf;

use clap::Args;
use faultd_api::scenario::{Bound, Outcome, RunError, Scenario, StepRow};
use tokio::signal::unix::{SignalKind, signal};
use tonic::transport::Channel;

use super::Rpc;
use super::hold::{ended, open_session};
use crate::proto::fault_service_client::FaultServiceClient;

#[derive(Args, Debug)]
#[command(
    after_help = "The file's format: docs/scenarios.md. With --json, one JSON object \
per line and step. Exit codes: 0 the scenario ran to its end, or was stopped by Ctrl-C or \
SIGTERM (and healed); 1 the file is wrong; 2 faultd unreachable or it ended the session; \
3 faultd refused a step (everything added is removed first)."
)]
pub struct RunArgs {
    /// The scenario (TOML).
    pub file: PathBuf,
    /// Only read and check the file (no daemon needed), and print its timeline.
    #[arg(long)]
    pub check: bool,
}

/// Reads and checks the file; errors say file:line:column.
pub fn load(args: &RunArgs) -> anyhow::Result<Scenario> {
    Ok(Scenario::from_path(&args.file)?)
}

/// `--check`: the timeline as planned.
pub fn check(scenario: &Scenario, json: bool) -> anyhow::Result<()> {
    for row in scenario.plan() {
        print_row(&row, json)?;
    }
    Ok(())
}

pub async fn run(
    client: &mut FaultServiceClient<Channel>,
    scenario: Scenario,
    json: bool,
) -> anyhow::Result<()> {
    // Before any fault exists, so that a signal right after the first step is handled.
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let name = format!(
        "faultctl run {} (pid {})",
        scenario.name,
        std::process::id()
    );
    let (mut session, session_id) = open_session(client, name).await?;
    let api = Bound {
        rpc: client.clone(),
        session_id,
    };
    let stop = async {
        tokio::select! {
            _ = terminate.recv() => "terminated".to_string(),
            _ = interrupt.recv() => "interrupted".to_string(),
            // faultd sends nothing more; the stream ends when faultd does, and the
            // session's faults with it.
            _ = async { while let Ok(Some(_)) = session.message().await {} } => {
                SESSION_ENDED.to_string()
            }
        }
    };
    // A closed stdout (`| head`) must not end the run before its heal: printing stops, the
    // run goes on, and the error comes last.
    let mut printed = Ok(());
    let outcome = scenario
        .run_until(&api, stop, |row| {
            if printed.is_ok() {
                printed = print_row(row, json);
            }
        })
        .await
        .map_err(step_failed)?;
    printed?;
    match outcome {
        Outcome::Stopped(why) if why == SESSION_ENDED => Err(ended(
            "during the run (faultd stopped?); its faults are gone",
        )),
        Outcome::Completed | Outcome::Stopped(_) => Ok(()),
    }
}

const SESSION_ENDED: &str = "session ended";

/// One row on stdout, as an error rather than a panic when stdout is gone.
fn print_row(row: &StepRow, json: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    let line = match json {
        true => serde_json::to_string(row)?,
        false => row.to_string(),
    };
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()?;
    Ok(())
}

/// A step faultd refused, in faultd's words, after the heal: faultctl's usual codes
/// (3 refused, 2 unreachable).
fn step_failed(e: RunError) -> anyhow::Error {
    Rpc(tonic::Status::new(e.status.code(), e.to_string())).into()
}
