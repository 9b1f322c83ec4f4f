//! Timed scenarios: a TOML file of steps at offsets, each adding faults for a while or
//! removing them, repeated or not, then a heal that removes whatever is left.
//!
//! ```toml
//! name = "flapping link"
//!
//! [[step]]
//! name = "flap"
//! at = "0s"          # offset from the start
//! for = "2s"         # removed again after this long
//! repeat = 5         # five times…
//! every = "5s"       # …one every 5 s
//! fault = { action = "drop", port = 2380 }
//!
//! [[step]]
//! at = "30s"
//! remove = "all"     # or a step's name
//! ```
//!
//! A step's fault is the API's `FaultSpec` written flat ([`fault`]'s rules): the same
//! vocabulary as faultctl's verbs and the other clients, checked against the protos'
//! descriptors, so new API fields need no scenario code. [`Scenario::from_str`] checks a
//! whole file without a daemon, naming line and column; [`Scenario::run`] plays it against
//! any [`FaultApi`] (faultctl's session, faultd-client's `Client`).

mod fault;
mod run;

use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

pub use fault::{FaultTable, action_names};
pub use run::{Bound, FaultApi, Outcome, RowEvent, RunError, StepRow};

use crate::proto;
use crate::units::{parse_duration, parse_offset};
use fault::Located;

/// A scenario that parsed and checked: its steps and their timeline.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// `name` in the file, else the file's stem.
    pub name: String,
    pub steps: Vec<Step>,
    /// When everything left is removed and the run ends: the file's `heal`, else the last
    /// planned action's time.
    pub heal_at: Duration,
    timeline: Vec<Planned>,
}

/// One `[[step]]`.
#[derive(Debug, Clone)]
pub struct Step {
    /// 1-based, in the file's order.
    pub number: usize,
    pub name: Option<String>,
    pub at: Duration,
    /// `for`: each round's faults are removed this long after they were added.
    pub lasts: Option<Duration>,
    pub repeat: u32,
    pub every: Duration,
    pub action: StepAction,
}

#[derive(Debug, Clone)]
pub enum StepAction {
    Add(Vec<Fault>),
    /// The faults still in force of the step with this number (`remove = "NAME"`).
    RemoveStep(usize),
    /// Every fault still in force (`remove = "all"`).
    RemoveAll,
}

/// A fault of a step: what is sent, and how it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub spec: proto::FaultSpec,
    /// `drop port=2380 peer=127.0.0.3`.
    pub description: String,
}

/// One action on the timeline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Planned {
    pub at: Duration,
    /// Index into [`Scenario::steps`].
    pub step: usize,
    /// 1-based round of a repeated step.
    pub round: u32,
    pub kind: PlannedKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PlannedKind {
    /// A round's `for` is over: its faults go. Before adds at the same time, so a fault
    /// toggled off and on never overlaps itself.
    Lift,
    /// A `remove` step.
    Remove,
    Add,
}

/// A scenario file that cannot be read or is wrong; `Invalid` says where.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{origin}:{line}:{column}: {message}")]
    Invalid {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    name: Option<String>,
    /// The label of every fault that does not give its own.
    label: Option<String>,
    heal: Option<Spanned<String>>,
    #[serde(default)]
    step: Vec<Spanned<StepDoc>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepDoc {
    at: Spanned<String>,
    name: Option<Spanned<String>>,
    #[serde(rename = "for")]
    lasts: Option<Spanned<String>>,
    repeat: Option<Spanned<i64>>,
    every: Option<Spanned<String>>,
    fault: Option<Spanned<FaultTable>>,
    faults: Option<Spanned<Vec<Spanned<FaultTable>>>>,
    remove: Option<Spanned<String>>,
}

fn at(span: Range<usize>, message: impl Into<String>) -> Located {
    Located {
        span,
        message: message.into(),
    }
}

impl Scenario {
    /// Reads and checks the file at `path`.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Scenario, ScenarioError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        Self::parse(&text, &path.display().to_string(), stem.as_deref())
    }

    /// Checks a scenario's text; `origin` names it in errors (a path, `<stdin>`).
    pub fn from_str(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        Self::parse(text, origin, None)
    }

    fn parse(text: &str, origin: &str, stem: Option<&str>) -> Result<Scenario, ScenarioError> {
        let invalid = |e: Located| {
            let (line, column) = line_column(text, e.span.start);
            ScenarioError::Invalid {
                origin: origin.to_string(),
                line,
                column,
                message: e.message,
            }
        };
        let doc: FileDoc = toml::from_str(text)
            .map_err(|e| invalid(at(e.span().unwrap_or(0..0), e.message().trim().to_string())))?;
        Self::check(doc, stem.unwrap_or("scenario")).map_err(invalid)
    }

    fn check(doc: FileDoc, stem: &str) -> Result<Scenario, Located> {
        let name = doc.name.unwrap_or_else(|| stem.to_string());
        let label = doc.label.unwrap_or_else(|| format!("scenario:{name}"));
        if doc.step.is_empty() {
            return Err(at(0..0, "no [[step]]: a scenario needs at least one step"));
        }
        let mut steps: Vec<Step> = Vec::new();
        for (i, step) in doc.step.into_iter().enumerate() {
            let step = check_step(i + 1, step, &steps, &label)?;
            steps.push(step);
        }
        let timeline = timeline(&steps);
        let last = timeline.last().map_or(Duration::ZERO, |p| p.at);
        let heal_at = match doc.heal {
            None => last,
            Some(heal) => {
                let heal_at = parse_offset(heal.get_ref())
                    .map_err(|e| at(heal.span(), format!("heal: {e}")))?;
                if heal_at < last {
                    return Err(at(
                        heal.span(),
                        format!("heal: {heal_at:?} is before the last planned action, at {last:?}"),
                    ));
                }
                heal_at
            }
        };
        Ok(Scenario {
            name,
            steps,
            heal_at,
            timeline,
        })
    }

    /// Every planned action in the order it runs.
    pub fn timeline(&self) -> &[Planned] {
        &self.timeline
    }
}

fn duration_of(field: &str, value: &Spanned<String>, zero_ok: bool) -> Result<Duration, Located> {
    let parse = if zero_ok {
        parse_offset
    } else {
        parse_duration
    };
    parse(value.get_ref()).map_err(|e| at(value.span(), format!("{field}: {e}")))
}

fn check_step(
    number: usize,
    step: Spanned<StepDoc>,
    earlier: &[Step],
    label: &str,
) -> Result<Step, Located> {
    let span = step.span();
    let doc = step.into_inner();
    let name = match &doc.name {
        Some(name)
            if earlier
                .iter()
                .any(|s| s.name.as_ref() == Some(name.get_ref())) =>
        {
            return Err(at(
                name.span(),
                format!("name: {:?} names an earlier step already", name.get_ref()),
            ));
        }
        other => other.as_ref().map(|n| n.get_ref().clone()),
    };
    let start = duration_of("at", &doc.at, true)?;
    let lasts = doc
        .lasts
        .as_ref()
        .map(|d| duration_of("for", d, false))
        .transpose()?;
    let repeat = match &doc.repeat {
        None => 1,
        Some(r) => u32::try_from(*r.get_ref())
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                at(
                    r.span(),
                    format!("repeat: {} is not a count of at least 1", r.get_ref()),
                )
            })?,
    };
    let every = match (&doc.every, repeat) {
        (Some(every), 2..) => duration_of("every", every, false)?,
        (Some(every), _) => return Err(at(every.span(), "every: only with a repeat of 2 or more")),
        (None, 2..) => {
            return Err(at(
                doc.repeat.as_ref().map_or(span, Spanned::span),
                "repeat: needs `every` (how far apart the rounds start)",
            ));
        }
        (None, _) => Duration::ZERO,
    };
    if let (Some(lasts), Some(every_doc), 2..) = (lasts, &doc.every, repeat)
        && lasts > every
    {
        return Err(at(
            every_doc.span(),
            format!("every: {every:?} is shorter than `for` ({lasts:?}): the rounds would overlap"),
        ));
    }
    let action = step_action(&doc, span, earlier, label)?;
    if matches!(action, StepAction::RemoveStep(_) | StepAction::RemoveAll)
        && let Some(lasts) = &doc.lasts
    {
        return Err(at(
            lasts.span(),
            "for: a `remove` step has nothing to keep for a while",
        ));
    }
    Ok(Step {
        number,
        name,
        at: start,
        lasts,
        repeat,
        every,
        action,
    })
}

/// What a step does: add its `fault`/`faults`, or `remove` those of another.
fn step_action(
    doc: &StepDoc,
    span: Range<usize>,
    earlier: &[Step],
    label: &str,
) -> Result<StepAction, Located> {
    let mut tables: Vec<&Spanned<FaultTable>> = doc.fault.iter().collect();
    if let Some(faults) = &doc.faults {
        if faults.get_ref().is_empty() {
            return Err(at(faults.span(), "faults: an empty list"));
        }
        tables.extend(faults.get_ref());
    }
    match (&doc.remove, tables.is_empty()) {
        (Some(remove), false) => Err(at(
            remove.span(),
            "remove: a step either adds faults (`fault`, `faults`) or removes them, not both",
        )),
        (Some(remove), true) => removal(remove, earlier),
        (None, true) => Err(at(span, "a step needs `fault`, `faults` or `remove`")),
        (None, false) => tables
            .into_iter()
            .map(|t| {
                let (spec, description) = fault::to_spec(t.get_ref(), t.span(), label)?;
                Ok(Fault { spec, description })
            })
            .collect::<Result<_, _>>()
            .map(StepAction::Add),
    }
}

fn removal(remove: &Spanned<String>, earlier: &[Step]) -> Result<StepAction, Located> {
    if remove.get_ref() == "all" {
        return Ok(StepAction::RemoveAll);
    }
    let adders = || {
        earlier
            .iter()
            .filter(|s| matches!(s.action, StepAction::Add(_)))
    };
    adders()
        .find(|s| s.name.as_ref() == Some(remove.get_ref()))
        .map(|s| StepAction::RemoveStep(s.number))
        .ok_or_else(|| {
            let names: Vec<String> = adders().filter_map(|s| s.name.clone()).map(|n| format!("{n:?}")).collect();
            at(
                remove.span(),
                format!(
                    "remove: {:?} is not the name of an earlier step that adds faults (names: {}; or \"all\")",
                    remove.get_ref(),
                    if names.is_empty() { "none".to_string() } else { names.join(", ") }
                ),
            )
        })
}

/// Every round of every step, by time; at one time, removals first, then file order.
fn timeline(steps: &[Step]) -> Vec<Planned> {
    let mut plan = Vec::new();
    for (index, step) in steps.iter().enumerate() {
        for round in 1..=step.repeat {
            let start = step.at + step.every * (round - 1);
            let kind = match step.action {
                StepAction::Add(_) => PlannedKind::Add,
                _ => PlannedKind::Remove,
            };
            plan.push(Planned {
                at: start,
                step: index,
                round,
                kind,
            });
            if let (Some(lasts), PlannedKind::Add) = (step.lasts, kind) {
                plan.push(Planned {
                    at: start + lasts,
                    step: index,
                    round,
                    kind: PlannedKind::Lift,
                });
            }
        }
    }
    plan.sort_by_key(|p| (p.at, p.kind, p.step, p.round));
    plan
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests;
