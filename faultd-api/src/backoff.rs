//! Judges the times of connection attempts against an exponential backoff policy.
//!
//! Pure: it takes monotonic timestamps (from `accept`, from the kernel, from anywhere) and
//! returns a [`Report`]. The rule is gRPC's connection-backoff interop rule, generalised:
//! gap *n* between consecutive attempts must lie in
//! `[(1 − jitter)·expected − 100 ms, (1 + jitter)·expected + 100 ms]`, where `expected`
//! starts at the policy's initial backoff and becomes `min(multiplier·expected, max)` after
//! each gap. The 100 ms slack absorbs connection set-up and scheduling between the
//! client's timer and the moment the attempt is seen.

use std::fmt;
use std::time::Duration;

use comfy_table::{Cell, CellAlignment, Table, presets::NOTHING};
use serde::{Serialize, Serializer};

/// Added below and above every window (see the module documentation).
pub const SLACK: Duration = Duration::from_millis(100);

/// gRPC's default maximum backoff, used when a client does not name one.
pub const GRPC_DEFAULT_MAX: Duration = Duration::from_secs(120);

/// A policy that cannot describe a backoff.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error("multiplier {0} must be a finite number of at least 1 (a backoff never shrinks)")]
    Multiplier(f64),
    #[error("jitter {0} must be a finite fraction of at least 0 (0.2 means ±20 %)")]
    Jitter(f64),
}

/// How a client is expected to space its connection attempts.
///
/// Built with [`Policy::new`] or [`Policy::grpc`], so every policy is one that
/// [`check`] can apply.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Policy {
    #[serde(rename = "initial_ms", serialize_with = "millis")]
    initial: Duration,
    multiplier: f64,
    #[serde(rename = "max_ms", serialize_with = "millis")]
    max: Duration,
    jitter: f64,
}

impl Policy {
    /// A policy whose first gap is `initial`, each next one `multiplier` times longer up to
    /// `max`, each within ±`jitter` (a fraction) of its expected value.
    pub fn new(
        initial: Duration,
        multiplier: f64,
        max: Duration,
        jitter: f64,
    ) -> Result<Self, PolicyError> {
        if !(multiplier.is_finite() && multiplier >= 1.0) {
            return Err(PolicyError::Multiplier(multiplier));
        }
        if !(jitter.is_finite() && jitter >= 0.0) {
            return Err(PolicyError::Jitter(jitter));
        }
        Ok(Self {
            initial,
            multiplier,
            max,
            jitter,
        })
    }

    /// gRPC's connection backoff: 1 s, ×1.6, ±20 %, capped at `cap`.
    pub fn grpc(cap: Duration) -> Self {
        Self::new(Duration::from_secs(1), 1.6, cap, 0.2).expect("gRPC's constants are valid")
    }

    pub fn initial(&self) -> Duration {
        self.initial
    }

    pub fn multiplier(&self) -> f64 {
        self.multiplier
    }

    pub fn max(&self) -> Duration {
        self.max
    }

    pub fn jitter(&self) -> f64 {
        self.jitter
    }

    /// The expected gaps, one per gap, in order: initial, then ×multiplier up to max.
    fn expected_gaps(&self) -> impl Iterator<Item = f64> {
        let (multiplier, max) = (self.multiplier, ms(self.max));
        std::iter::successors(Some(ms(self.initial)), move |e| {
            Some((e * multiplier).min(max))
        })
    }

    /// The window for a gap whose expected value is `expected_ms`.
    fn window(&self, expected_ms: f64) -> (Duration, Duration) {
        let slack = ms(SLACK);
        let low = (1.0 - self.jitter) * expected_ms - slack;
        let high = (1.0 + self.jitter) * expected_ms + slack;
        (from_ms(low), from_ms(high))
    }
}

/// Where one gap fell relative to its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GapVerdict {
    Ok,
    TooSoon,
    TooLate,
}

impl fmt::Display for GapVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ok => "ok",
            Self::TooSoon => "too soon",
            Self::TooLate => "too late",
        })
    }
}

/// The time between two consecutive attempts, judged.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gap {
    /// 1 for the gap between the first and second attempt.
    pub index: usize,
    /// When the attempt that ends this gap happened, counted from the first attempt.
    #[serde(rename = "at_ms", serialize_with = "millis")]
    pub at: Duration,
    #[serde(rename = "gap_ms", serialize_with = "millis")]
    pub gap: Duration,
    #[serde(rename = "expected_ms", serialize_with = "millis")]
    pub expected: Duration,
    #[serde(rename = "low_ms", serialize_with = "millis")]
    pub low: Duration,
    #[serde(rename = "high_ms", serialize_with = "millis")]
    pub high: Duration,
    pub verdict: GapVerdict,
}

/// The overall verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every gap was within its window.
    Pass,
    /// At least one gap was outside its window.
    Fail,
    /// Fewer than two attempts: there is no gap, so nothing shows the client backs off.
    TooFewAttempts,
}

/// The result of [`check`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub policy: Policy,
    pub attempts: usize,
    pub gaps: Vec<Gap>,
    pub verdict: Verdict,
}

/// Judges each gap between consecutive `attempts` (monotonic timestamps with any common
/// origin) against `policy`. The timestamps are sorted first: attempts are events in time,
/// whatever order a recorder delivered them in.
pub fn check(attempts: &[Duration], policy: &Policy) -> Report {
    let mut times = attempts.to_vec();
    times.sort_unstable();
    let first = times.first().copied().unwrap_or_default();
    let gaps: Vec<Gap> = times
        .windows(2)
        .zip(policy.expected_gaps())
        .enumerate()
        .map(|(i, (pair, expected_ms))| {
            let gap = pair[1] - pair[0];
            let (low, high) = policy.window(expected_ms);
            let verdict = if gap < low {
                GapVerdict::TooSoon
            } else if gap > high {
                GapVerdict::TooLate
            } else {
                GapVerdict::Ok
            };
            Gap {
                index: i + 1,
                at: pair[1] - first,
                gap,
                expected: from_ms(expected_ms),
                low,
                high,
                verdict,
            }
        })
        .collect();
    let verdict = if gaps.is_empty() {
        Verdict::TooFewAttempts
    } else if gaps.iter().all(|g| g.verdict == GapVerdict::Ok) {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    Report {
        policy: *policy,
        attempts: times.len(),
        gaps,
        verdict,
    }
}

impl Report {
    pub fn passed(&self) -> bool {
        self.verdict == Verdict::Pass
    }

    /// The gaps outside their windows.
    pub fn offending(&self) -> impl Iterator<Item = &Gap> {
        self.gaps.iter().filter(|g| g.verdict != GapVerdict::Ok)
    }

    /// One line: the verdict and, when failing, which gaps and why.
    pub fn summary(&self) -> String {
        match self.verdict {
            Verdict::Pass => format!(
                "PASS: {} attempts, all {} gaps within their windows",
                self.attempts,
                self.gaps.len()
            ),
            Verdict::TooFewAttempts => format!(
                "FAIL: {} attempt(s); at least 2 are needed to see a backoff",
                self.attempts
            ),
            Verdict::Fail => {
                let offending: Vec<String> = self
                    .offending()
                    .map(|g| {
                        format!(
                            "gap {} was {} ms, {} for [{}, {}] ms",
                            g.index,
                            show_ms(g.gap),
                            g.verdict,
                            show_ms(g.low),
                            show_ms(g.high)
                        )
                    })
                    .collect();
                format!(
                    "FAIL: {} of {} gaps outside their windows: {}",
                    offending.len(),
                    self.gaps.len(),
                    offending.join("; ")
                )
            }
        }
    }

    /// The gaps beside their expected windows, one row per gap.
    pub fn table(&self) -> Table {
        // Numbers right-aligned, headers included, so the digits line up.
        let numeric = ["gap", "at ms", "gap ms", "expected ms"];
        let header = numeric
            .iter()
            .map(|h| Cell::new(h).set_alignment(CellAlignment::Right))
            .chain(["window ms", "verdict"].map(Cell::new));
        let mut table = Table::new();
        table.load_preset(NOTHING).set_header(header);
        for g in &self.gaps {
            table.add_row(vec![
                g.index.to_string(),
                show_ms(g.at),
                show_ms(g.gap),
                show_ms(g.expected),
                format!("{} – {}", show_ms(g.low), show_ms(g.high)),
                g.verdict.to_string(),
            ]);
        }
        for column in 0..numeric.len() {
            if let Some(c) = table.column_mut(column) {
                c.set_cell_alignment(CellAlignment::Right);
            }
        }
        table
    }

    /// Each gap's time in whole milliseconds (rounded), as the interop API reports them.
    pub fn gaps_ms(&self) -> Vec<i32> {
        self.gaps
            .iter()
            .map(|g| i32::try_from(whole_ms(g.gap)).unwrap_or(i32::MAX))
            .collect()
    }
}

/// The table, then the summary line.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.gaps.is_empty() {
            writeln!(f, "{}", self.table().trim_fmt())?;
        }
        write!(f, "{}", self.summary())
    }
}

/// Rounded to the nearest millisecond.
pub fn whole_ms(d: Duration) -> u64 {
    u64::try_from((d.as_nanos() + 500_000) / 1_000_000).unwrap_or(u64::MAX)
}

fn ms(d: Duration) -> f64 {
    d.as_nanos() as f64 / 1e6
}

/// Milliseconds to a duration, rounded to the microsecond and never negative. Rounding
/// makes edges computed in floating point (1.2 × 1600 + 100) land exactly on the values a
/// person computes by hand (2020 ms), so a gap exactly on an edge is inside.
fn from_ms(ms: f64) -> Duration {
    Duration::from_micros((ms * 1000.0).round().max(0.0) as u64)
}

/// Milliseconds for people: to the microsecond, without trailing zeros.
fn show_ms(d: Duration) -> String {
    let text = format!("{:.3}", ms(d));
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(ms(*d))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const US: Duration = Duration::from_micros(1);

    /// Attempt timestamps (from an arbitrary origin) whose gaps are `gaps`.
    fn attempts(gaps: &[Duration]) -> Vec<Duration> {
        let origin = Duration::from_secs(1000);
        std::iter::once(origin)
            .chain(gaps.iter().scan(origin, |t, g| {
                *t += *g;
                Some(*t)
            }))
            .collect()
    }

    fn verdicts(report: &Report) -> Vec<GapVerdict> {
        report.gaps.iter().map(|g| g.verdict).collect()
    }

    fn windows(report: &Report) -> Vec<(Duration, Duration, Duration)> {
        report
            .gaps
            .iter()
            .map(|g| (g.expected, g.low, g.high))
            .collect()
    }

    #[test]
    fn gaps_exactly_on_the_window_edges_pass() {
        // Expected 1000 → [700, 1300]; then 1600 → [1180, 2020]; then 2560 → [1948, 3172].
        let gaps = [700 * MS, 2020 * MS, 1948 * MS];
        let report = check(&attempts(&gaps), &Policy::grpc(GRPC_DEFAULT_MAX));
        assert_eq!(
            windows(&report),
            vec![
                (1000 * MS, 700 * MS, 1300 * MS),
                (1600 * MS, 1180 * MS, 2020 * MS),
                (2560 * MS, 1948 * MS, 3172 * MS),
            ]
        );
        assert_eq!(verdicts(&report), vec![GapVerdict::Ok; 3]);
        assert_eq!(report.verdict, Verdict::Pass);
        assert!(report.passed());
    }

    #[test]
    fn gaps_just_outside_the_edges_fail_and_are_named() {
        let gaps = [700 * MS - US, 1600 * MS, 3172 * MS + US, 1300 * MS];
        let report = check(&attempts(&gaps), &Policy::grpc(GRPC_DEFAULT_MAX));
        assert_eq!(
            verdicts(&report),
            vec![
                GapVerdict::TooSoon,
                GapVerdict::Ok,
                GapVerdict::TooLate,
                GapVerdict::TooSoon, // expected 4096 → low 3176.8
            ]
        );
        assert_eq!(report.verdict, Verdict::Fail);
        let named: Vec<usize> = report.offending().map(|g| g.index).collect();
        assert_eq!(named, vec![1, 3, 4]);
        let summary = report.summary();
        assert!(summary.starts_with("FAIL: 3 of 4 gaps"), "{summary}");
        assert!(
            summary.contains("gap 1 was 699.999 ms, too soon for [700, 1300] ms"),
            "{summary}"
        );
        assert!(
            summary.contains("gap 3 was 3172.001 ms, too late for [1948, 3172] ms"),
            "{summary}"
        );
    }

    #[test]
    fn the_expected_gap_stops_growing_at_the_cap() {
        let report = check(
            &attempts(&[1000 * MS, 1600 * MS, 2000 * MS, 2000 * MS]),
            &Policy::grpc(2000 * MS),
        );
        let expected: Vec<Duration> = report.gaps.iter().map(|g| g.expected).collect();
        assert_eq!(expected, vec![1000 * MS, 1600 * MS, 2000 * MS, 2000 * MS]);
        assert!(report.passed());
        // Uncapped, the client would wait 2560 ms: too late for a 2 s cap ([1500, 2500]).
        let report = check(
            &attempts(&[1000 * MS, 1600 * MS, 2560 * MS]),
            &Policy::grpc(2000 * MS),
        );
        assert_eq!(
            verdicts(&report),
            vec![GapVerdict::Ok, GapVerdict::Ok, GapVerdict::TooLate]
        );
    }

    #[test]
    fn a_cap_below_the_initial_backoff_applies_from_the_second_gap() {
        let report = check(
            &attempts(&[1000 * MS, 500 * MS, 500 * MS]),
            &Policy::grpc(500 * MS),
        );
        let expected: Vec<Duration> = report.gaps.iter().map(|g| g.expected).collect();
        assert_eq!(expected, vec![1000 * MS, 500 * MS, 500 * MS]);
        assert!(report.passed());
    }

    #[test]
    fn fewer_than_two_attempts_is_not_a_pass() {
        for times in [vec![], vec![Duration::from_secs(5)]] {
            let report = check(&times, &Policy::grpc(GRPC_DEFAULT_MAX));
            assert_eq!(report.attempts, times.len());
            assert!(report.gaps.is_empty());
            assert_eq!(report.verdict, Verdict::TooFewAttempts);
            assert!(!report.passed());
            assert!(report.to_string().starts_with("FAIL"), "{report}");
        }
    }

    #[test]
    fn zero_jitter_leaves_only_the_slack() {
        let policy = Policy::new(1000 * MS, 2.0, 10_000 * MS, 0.0).unwrap();
        let report = check(&attempts(&[900 * MS, 2100 * MS, 4100 * MS + US]), &policy);
        assert_eq!(
            windows(&report),
            vec![
                (1000 * MS, 900 * MS, 1100 * MS),
                (2000 * MS, 1900 * MS, 2100 * MS),
                (4000 * MS, 3900 * MS, 4100 * MS),
            ]
        );
        assert_eq!(
            verdicts(&report),
            vec![GapVerdict::Ok, GapVerdict::Ok, GapVerdict::TooLate]
        );
    }

    #[test]
    fn large_jitter_opens_the_window_down_to_zero() {
        let policy = Policy::new(1000 * MS, 1.0, 1000 * MS, 5.0).unwrap();
        // (1 − 5)·1000 − 100 is negative: the window starts at 0, so back-to-back is ok.
        let report = check(
            &attempts(&[Duration::ZERO, 6100 * MS, 6100 * MS + US]),
            &policy,
        );
        assert_eq!(report.gaps[0].low, Duration::ZERO);
        assert_eq!(report.gaps[0].high, 6100 * MS);
        assert_eq!(
            verdicts(&report),
            vec![GapVerdict::Ok, GapVerdict::Ok, GapVerdict::TooLate]
        );
    }

    #[test]
    fn attempts_are_judged_in_time_order() {
        let mut times = attempts(&[1000 * MS, 1600 * MS]);
        times.reverse();
        let report = check(&times, &Policy::grpc(GRPC_DEFAULT_MAX));
        assert!(report.passed(), "{report}");
        assert_eq!(report.gaps[1].at, 2600 * MS);
    }

    #[test]
    fn nonsense_policies_are_refused() {
        let s = Duration::from_secs(1);
        assert_eq!(
            Policy::new(s, 0.5, s, 0.2),
            Err(PolicyError::Multiplier(0.5))
        );
        assert!(Policy::new(s, f64::NAN, s, 0.2).is_err());
        assert_eq!(Policy::new(s, 1.6, s, -0.1), Err(PolicyError::Jitter(-0.1)));
        assert!(Policy::new(s, 1.6, s, f64::INFINITY).is_err());
    }

    #[test]
    fn gaps_in_milliseconds_are_rounded() {
        let report = check(
            &attempts(&[1000 * MS + 499 * US, 1600 * MS + 500 * US]),
            &Policy::grpc(GRPC_DEFAULT_MAX),
        );
        assert_eq!(report.gaps_ms(), vec![1000, 1601]);
    }

    #[test]
    fn the_json_names_units_and_verdicts() {
        let report = check(&attempts(&[500 * MS]), &Policy::grpc(2000 * MS));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["verdict"], "fail");
        assert_eq!(json["attempts"], 2);
        assert_eq!(json["policy"]["initial_ms"], 1000.0);
        assert_eq!(json["policy"]["max_ms"], 2000.0);
        assert_eq!(json["policy"]["multiplier"], 1.6);
        let gap = &json["gaps"][0];
        assert_eq!(gap["index"], 1);
        assert_eq!(gap["gap_ms"], 500.0);
        assert_eq!(gap["low_ms"], 700.0);
        assert_eq!(gap["high_ms"], 1300.0);
        assert_eq!(gap["verdict"], "too_soon");
    }

    #[test]
    fn the_table_shows_each_gap_beside_its_window() {
        let report = check(
            &attempts(&[1001 * MS, 500 * MS]),
            &Policy::grpc(GRPC_DEFAULT_MAX),
        );
        let text = report.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].contains("expected ms") && lines[0].contains("verdict"));
        let row = |i: usize| lines[i].split_whitespace().collect::<Vec<_>>();
        assert_eq!(
            row(1),
            ["1", "1001", "1001", "1000", "700", "–", "1300", "ok"]
        );
        assert_eq!(
            row(2),
            [
                "2", "1501", "500", "1600", "1180", "–", "2020", "too", "soon"
            ]
        );
        assert!(lines[3].starts_with("FAIL: 1 of 2 gaps"), "{text}");
    }
}
