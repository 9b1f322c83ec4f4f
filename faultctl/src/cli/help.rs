//! `faultctl completions SHELL` and `faultctl man`: generated from the same clap definition
//! that parses the arguments, so they never disagree with it.

use clap::{Args, CommandFactory as _};
use clap_complete::Shell;
use serde::Serialize;

use super::Cli;
use super::output::{self, Render};

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// A generated document: as itself, or with `--json` as `{"format": …, "text": …}`.
#[derive(Serialize)]
struct Generated {
    format: String,
    text: String,
}

impl Render for Generated {
    fn text(&self) -> String {
        self.text.trim_end().to_string()
    }
}

pub fn completions(args: CompletionsArgs, json: bool) -> anyhow::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "faultctl", &mut script);
    let doc = Generated {
        format: args.shell.to_string(),
        text: String::from_utf8(script)?,
    };
    output::print(&doc, json)
}

pub fn man(json: bool) -> anyhow::Result<()> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut page)?;
    let doc = Generated {
        format: "roff".into(),
        text: String::from_utf8(page)?,
    };
    output::print(&doc, json)
}
