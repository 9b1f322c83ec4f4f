//! Reads libtest's output (run with `--test-threads=1 --nocapture`) into counts, and prints
//! the kernel matrix.

use std::collections::BTreeSet;
use std::fmt::Write as _;

/// What one test binary did on one kernel.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    /// Passed without printing a `SKIP <test>: <reason>` line.
    pub passed: u32,
    /// Passed as far as libtest knows, but printed `SKIP <test>: <reason>` (something the
    /// test needs is absent from this kernel).
    pub skipped: u32,
    pub failed: u32,
    pub ignored: u32,
    pub seconds: Option<f64>,
    /// Names of the failed tests.
    pub failures: Vec<String>,
    /// (test, reason) for each `SKIP <test>: <reason>` line.
    pub skips: Vec<(String, String)>,
    /// Why the binary produced no summary (crashed, killed at its time limit, not run…).
    pub problem: Option<String>,
    /// Tests left out on this kernel on purpose, and why.
    pub not_run: u32,
    pub not_run_why: Option<String>,
}

impl Outcome {
    pub fn not_run(tests: u32, why: &str) -> Self {
        Self {
            not_run: tests,
            not_run_why: Some(why.to_string()),
            ..Self::default()
        }
    }

    pub fn broken(why: String) -> Self {
        Self {
            problem: Some(why),
            ..Self::default()
        }
    }

    /// Counts every skip that `allowed(test)` does not allow as a failure, saying so: an
    /// unexpected skip fails the run.
    pub fn check_skips(&mut self, kernel: &str, allowed: impl Fn(&str) -> bool) {
        let mut kept: Vec<(String, String)> = Vec::new();
        let mut refused: Vec<(String, String)> = Vec::new();
        for (test, reason) in self.skips.drain(..) {
            if self.failures.contains(&test) || kept.iter().chain(&refused).any(|(t, _)| *t == test)
            {
                continue;
            }
            if allowed(&test) {
                kept.push((test, reason));
            } else {
                refused.push((test, reason));
            }
        }
        for (test, reason) in &refused {
            self.failures.push(format!(
                "{test} (skipped: {reason}; not an allowed skip on {kernel})"
            ));
        }
        let n = (refused.len() as u32).min(self.skipped);
        self.failed += n;
        self.skipped -= n;
        self.skips = kept;
    }

    /// Failed tests, counting a binary that did not finish as (at least) one failure.
    pub fn failed_count(&self) -> u32 {
        if self.problem.is_some() {
            self.failed.max(1)
        } else {
            self.failed
        }
    }
}

/// Parses the output of one test binary; `exit` is its exit code (None when killed).
pub fn parse(lines: &[String], exit: Option<i32>) -> Outcome {
    let mut out = Outcome::default();
    let mut current: Option<String> = None;
    let mut summary = false;
    let mut failures: Vec<String> = Vec::new();
    let mut in_failures = false;
    let mut failed_lines: BTreeSet<String> = BTreeSet::new();
    for line in lines {
        if let Some(rest) = line.strip_prefix("test result: ") {
            summary = true;
            for part in rest.split(';') {
                let part = part
                    .trim()
                    .trim_start_matches("ok. ")
                    .trim_start_matches("FAILED. ");
                let mut words = part.split_whitespace();
                let (Some(a), Some(b)) = (words.next(), words.next()) else {
                    continue;
                };
                match (a.parse::<u32>(), b) {
                    (Ok(n), "passed") => out.passed = n,
                    (Ok(n), "failed") => out.failed = n,
                    (Ok(n), "ignored") => out.ignored = n,
                    _ if a == "finished" => {
                        out.seconds = part
                            .trim_start_matches("finished in ")
                            .trim_end_matches('s')
                            .parse()
                            .ok();
                    }
                    _ => {}
                }
            }
            in_failures = false;
            continue;
        }
        if line == "failures:" {
            in_failures = true;
            failures.clear();
            continue;
        }
        if in_failures {
            if let Some(name) = line.strip_prefix("    ") {
                if !name.contains(' ') {
                    failures.push(name.to_string());
                }
            } else if !line.is_empty() && !line.starts_with("----") {
                in_failures = false;
            }
            continue;
        }
        let mut text = line.as_str();
        if let Some(rest) = line.strip_prefix("test ")
            && let Some((name, after)) = rest.split_once(" ... ")
        {
            current = Some(name.to_string());
            if after.trim_end().ends_with("FAILED") {
                failed_lines.insert(name.to_string());
            }
            text = after;
        }
        if let Some((test, reason)) = test_harness::skip::parse_skip(text) {
            // The line names its test; libtest's `test NAME ...` line is the fallback.
            let test = if current.as_deref().is_some_and(|c| c.ends_with(test)) {
                current.clone().unwrap_or_default()
            } else {
                test.to_string()
            };
            out.skips.push((test, reason.trim().to_string()));
        }
    }
    if failures.is_empty() {
        failures = failed_lines.into_iter().collect();
    }
    out.failures = failures;
    let skipped: BTreeSet<&String> = out
        .skips
        .iter()
        .map(|(t, _)| t)
        .filter(|t| !out.failures.contains(t))
        .collect();
    out.skipped = (skipped.len() as u32).min(out.passed);
    out.passed -= out.skipped;
    if !summary {
        out.failed = out.failures.len() as u32;
        out.problem = Some(match exit {
            None | Some(137) => "killed at its time limit before it finished".to_string(),
            Some(c) => format!("exited with {c} before libtest's summary"),
        });
    } else if exit.is_some_and(|c| c != 0) && out.failed == 0 {
        out.problem = Some(format!(
            "exited with {} although no test failed",
            exit.unwrap()
        ));
    }
    out
}

/// One kernel's column of the matrix.
pub struct Column {
    pub kernel: String,
    pub how: String,
    pub results: Vec<(String, Outcome)>,
    pub note: Option<String>,
}

pub struct Totals {
    pub passed: u32,
    pub skipped: u32,
    pub failed: u32,
    pub ignored: u32,
    pub not_run: u32,
}

/// A test's name with its row's in front, unless libtest's name has it already (an area's
/// tests are named `area::test`).
fn qualified(bin: &str, test: &str) -> String {
    if test.starts_with(&format!("{bin}::")) {
        test.to_string()
    } else {
        format!("{bin}::{test}")
    }
}

pub fn totals(columns: &[Column]) -> Totals {
    let mut t = Totals {
        passed: 0,
        skipped: 0,
        failed: 0,
        ignored: 0,
        not_run: 0,
    };
    for (_, o) in columns.iter().flat_map(|c| &c.results) {
        t.passed += o.passed;
        t.skipped += o.skipped;
        t.failed += o.failed_count();
        t.ignored += o.ignored;
        t.not_run += o.not_run;
    }
    t
}

/// The matrix as text: one block per kernel, one row per test binary, then the details of
/// every skip and failure, and a closing `vm-test: N passed, N failed, N skipped` line (tests
/// left out on a kernel count as skipped there).
pub fn render(columns: &[Column]) -> String {
    let mut s = String::new();
    let test_width = columns
        .iter()
        .flat_map(|c| c.results.iter().map(|(n, _)| n.len()))
        .max()
        .unwrap_or(4)
        .max(4);
    let kernel_width = columns
        .iter()
        .map(|c| c.kernel.len().max(c.how.len()))
        .max()
        .unwrap_or(6)
        .max(6);
    let _ = writeln!(
        s,
        "\nkernel matrix: the system tests on each kernel (a test that printed `SKIP <test>: \
         <reason>` counts as skipped, and as failed unless that kernel allows it; \"not run\": \
         left out on that kernel)\n"
    );
    let _ = writeln!(
        s,
        " {:kernel_width$}  {:test_width$}  {:>6}  {:>7}  {:>6}  {:>7}  {:>7}  {:>7}  note",
        "kernel", "test", "passed", "skipped", "failed", "ignored", "not run", "time"
    );
    for c in columns {
        let _ = writeln!(
            s,
            " {:-<kernel_width$}  {:-<test_width$}  ------  -------  ------  -------  -------  -------  ----",
            "", ""
        );
        for (i, (name, o)) in c.results.iter().enumerate() {
            let label = match i {
                0 => c.kernel.as_str(),
                1 => c.how.as_str(),
                _ => "",
            };
            let time = o
                .seconds
                .map_or_else(|| "-".to_string(), |t| format!("{t:.1} s"));
            let note = [o.problem.clone(), o.not_run_why.clone()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("; ");
            let _ = writeln!(
                s,
                " {label:kernel_width$}  {name:test_width$}  {:>6}  {:>7}  {:>6}  {:>7}  {:>7}  {time:>7}  {note}",
                o.passed,
                o.skipped,
                o.failed_count(),
                o.ignored,
                o.not_run,
            );
        }
        if c.results.len() < 2 {
            let _ = writeln!(s, " {}", c.how);
        }
        if let Some(note) = &c.note {
            let _ = writeln!(s, " {:kernel_width$}  {note}", "");
        }
    }
    let skips: Vec<String> = columns
        .iter()
        .flat_map(|c| {
            c.results.iter().flat_map(move |(bin, o)| {
                o.skips
                    .iter()
                    .filter(|(t, _)| !o.failures.contains(t))
                    .map(move |(t, why)| format!("  {} {}: {why}", c.kernel, qualified(bin, t)))
            })
        })
        .collect();
    if !skips.is_empty() {
        let _ = writeln!(s, "\nskipped:");
        for l in skips {
            let _ = writeln!(s, "{l}");
        }
    }
    let failures: Vec<String> = columns
        .iter()
        .flat_map(|c| {
            c.results.iter().flat_map(move |(bin, o)| {
                let mut v: Vec<String> = o
                    .failures
                    .iter()
                    .map(|t| format!("  {} {}", c.kernel, qualified(bin, t)))
                    .collect();
                if let Some(p) = &o.problem {
                    v.push(format!("  {} {bin}: {p}", c.kernel));
                }
                v
            })
        })
        .collect();
    if !failures.is_empty() {
        let _ = writeln!(s, "\nfailed:");
        for l in failures {
            let _ = writeln!(s, "{l}");
        }
    }
    let t = totals(columns);
    let _ = writeln!(
        s,
        "\nvm-test: {} passed, {} failed, {} skipped",
        t.passed,
        t.failed,
        t.skipped + t.not_run
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn counts_passes_skips_and_failures() {
        let out = lines(
            "\nrunning 4 tests\n\
             test a_delay ... SKIP a_delay: no sch_fq in this kernel\n\
             ok\n\
             test b_drop ... ok\n\
             test c_reset ... \n\
             thread 'c_reset' panicked at tests/kill.rs:10:5:\n\
             boom\n\
             FAILED\n\
             test d_slow ... ignored\n\
             \n\
             failures:\n\
             \n\
             failures:\n\
             \x20   c_reset\n\
             \n\
             test result: FAILED. 2 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out; finished in 12.50s\n",
        );
        let o = parse(&out, Some(101));
        assert_eq!((o.passed, o.skipped, o.failed, o.ignored), (1, 1, 1, 1));
        assert_eq!(o.failures, ["c_reset"]);
        assert_eq!(
            o.skips,
            [(
                "a_delay".to_string(),
                "no sch_fq in this kernel".to_string()
            )]
        );
        assert_eq!(o.seconds, Some(12.5));
        assert!(o.problem.is_none());
        assert_eq!(o.failed_count(), 1);
    }

    #[test]
    fn skips_the_kernel_does_not_allow_are_failures() {
        let out = lines(
            "running 3 tests\n\
             test a_delay ... SKIP a_delay: no sch_fq\n\
             SKIP a_delay: still none\n\
             ok\n\
             test b_rate ... ok\n\
             test c_mq ... SKIP c_mq: no tun\n\
             ok\n\
             \n\
             test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s\n",
        );
        let mut o = parse(&out, Some(0));
        assert_eq!((o.passed, o.skipped, o.failed), (1, 2, 0));
        o.check_skips("6.1", |_| false);
        assert_eq!((o.passed, o.skipped, o.failed), (1, 0, 2));
        assert_eq!(o.failed_count(), 2);
        assert!(
            o.failures[0].starts_with("a_delay (skipped: no sch_fq"),
            "{:?}",
            o.failures
        );
        assert!(
            o.failures[1].starts_with("c_mq (skipped: no tun"),
            "{:?}",
            o.failures
        );
        let table = render(&[Column {
            kernel: "6.1".into(),
            how: "VM".into(),
            results: vec![("degrade".into(), o)],
            note: None,
        }]);
        assert!(
            table.contains("vm-test: 1 passed, 2 failed, 0 skipped"),
            "{table}"
        );
    }

    #[test]
    fn allowed_skips_stay_skips() {
        let out = lines(
            "running 2 tests\n\
             test degrade::a_delay ... SKIP degrade::a_delay: no sch_fq\n\
             ok\n\
             test degrade::c_mq ... SKIP degrade::c_mq: no tun\n\
             ok\n\
             \n\
             test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s\n",
        );
        let mut o = parse(&out, Some(0));
        assert_eq!(o.skips[0].0, "degrade::a_delay");
        o.check_skips("6.18", |t| t.ends_with("::a_delay"));
        assert_eq!((o.passed, o.skipped, o.failed), (0, 1, 1));
        assert_eq!(o.skips.len(), 1);
        assert!(o.failures[0].starts_with("degrade::c_mq (skipped: no tun"));
    }

    #[test]
    fn a_binary_killed_midway_is_a_failure() {
        let out = lines("running 2 tests\ntest a ... ok\ntest b ... ");
        let o = parse(&out, None);
        assert_eq!(o.failed_count(), 1);
        assert!(o.problem.unwrap().contains("time limit"));
    }

    #[test]
    fn all_green() {
        let out = lines(
            "running 1 test\ntest a ... ok\n\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s",
        );
        let o = parse(&out, Some(0));
        assert_eq!((o.passed, o.skipped, o.failed), (1, 0, 0));
        assert_eq!(o.failed_count(), 0);
        let table = render(&[Column {
            kernel: "6.1.0-56-amd64".into(),
            how: "qemu TCG".into(),
            results: vec![
                ("drop".into(), o),
                ("reconnect".into(), Outcome::not_run(5, "needs Python")),
            ],
            note: None,
        }]);
        assert!(
            table.ends_with("vm-test: 1 passed, 0 failed, 5 skipped\n"),
            "{table}"
        );
        assert!(table.contains("needs Python"));
    }
}
