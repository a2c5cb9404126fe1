//! The measurement side of a layout sweep that needs no running engine: the
//! plan (which layouts, shard counts and commit windows to run, and how
//! often), reading a `sluice-bench --json` report into a sample, medians per
//! point, choosing the best point, and its config snippet.
//!
//! The runner that starts sink, engine and harness for each point, pinned as
//! the point's [`Layout`] says (see [`crate::affinity`]), is built on these
//! once the engine binary exists; until then nothing here starts a process.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::layout::{distinct_layouts, HelperPlacement, Layout, LayoutRequest, Pinning};
use crate::topology::Topology;

/// Upper bound on the points in one plan (every run is seconds long; a plan
/// this large would take hours).
pub const POINTS_MAX: usize = 4096;

/// Within this fraction of the best median throughput, the lower median p99
/// wins: a 1 % throughput edge is noise next to a halved tail latency.
pub const THROUGHPUT_TIE_FRACTION: f64 = 0.02;

/// What to sweep.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SweepOptions {
    /// Shard counts to measure (ascending; counts above the CPU count are
    /// skipped).
    pub shard_counts: Vec<usize>,
    /// Pinnings to try.
    pub pinnings: Vec<Pinning>,
    /// Harness/sink placements to try.
    pub helpers: Vec<HelperPlacement>,
    /// Group-commit windows to try (the spool's `commit_window`).
    pub commit_windows: Vec<Duration>,
    /// Runs per point; the summary uses their median.
    pub repetitions: usize,
    /// Layout request details other than the shard count.
    pub harness_cpus: usize,
    /// CPUs for the sink.
    pub sink_cpus: usize,
    /// Node for NUMA-local pinning to fill first.
    pub preferred_node: Option<u32>,
}

impl SweepOptions {
    /// Every pinning and placement, the [`default_shard_counts`], the
    /// engine's default 1 ms commit window, three runs each.
    pub fn full(topology: &Topology) -> Self {
        Self {
            shard_counts: default_shard_counts(topology),
            pinnings: Pinning::ALL.to_vec(),
            helpers: HelperPlacement::ALL.to_vec(),
            commit_windows: vec![Duration::from_millis(1)],
            repetitions: 3,
            harness_cpus: 1,
            sink_cpus: 1,
            preferred_node: None,
        }
    }
}

/// Shard counts worth measuring on `topology`: powers of two, plus the
/// counts where the hardware changes character (one node's physical cores,
/// all physical cores, every CPU). On 128 CPUs that is 8 counts instead of
/// 128, which keeps a full sweep to hours rather than days.
pub fn default_shard_counts(topology: &Topology) -> Vec<usize> {
    let cpus = topology.cpu_count();
    let node_cores = topology.nodes.first().map_or(0, |n| {
        topology.cores.iter().filter(|c| c.node == n.id).count()
    });
    let mut counts: Vec<usize> = std::iter::successors(Some(1usize), |&n| n.checked_mul(2))
        .take_while(|&n| n <= cpus)
        .collect();
    counts.extend([node_cores, topology.core_count(), cpus]);
    counts.retain(|&n| n >= 1);
    counts.sort_unstable();
    counts.dedup();
    counts
}

/// Why a sweep cannot be planned or a report not read.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// A list option was empty or a count was zero.
    #[error("nothing to sweep: {0} is empty or zero")]
    Empty(&'static str),
    /// The plan would exceed [`POINTS_MAX`].
    #[error("the sweep has {0} points (more than {POINTS_MAX}); narrow it")]
    TooLarge(usize),
    /// The harness report was not the JSON we expect.
    #[error("harness report: {0}")]
    Report(String),
}

/// One configuration to measure.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SweepPoint {
    /// Shard, harness and sink placement.
    pub layout: Layout,
    /// The spool's group-commit window for this point.
    pub commit_window: Duration,
}

impl SweepPoint {
    /// `spread/separate 4 shards 1ms`.
    pub fn label(&self) -> String {
        format!(
            "{} {} shard(s) {}us",
            self.layout.name(),
            self.layout.shard_cpus.len(),
            self.commit_window.as_micros()
        )
    }

    /// The series this point belongs to in plots: everything but the shard
    /// count.
    pub fn series(&self) -> String {
        format!(
            "{} {}us",
            self.layout.name(),
            self.commit_window.as_micros()
        )
    }
}

/// The points of a sweep, by shard count, then layout, then window. Layouts
/// that coincide with an earlier one at the same shard count are measured
/// once.
pub fn plan(topology: &Topology, options: &SweepOptions) -> Result<Vec<SweepPoint>, SweepError> {
    if options
        .shard_counts
        .iter()
        .all(|&n| n == 0 || n > topology.cpu_count())
    {
        return Err(SweepError::Empty("shard_counts"));
    }
    if options.pinnings.is_empty() {
        return Err(SweepError::Empty("pinnings"));
    }
    if options.helpers.is_empty() {
        return Err(SweepError::Empty("helpers"));
    }
    if options.commit_windows.is_empty() {
        return Err(SweepError::Empty("commit_windows"));
    }
    if options.repetitions == 0 {
        return Err(SweepError::Empty("repetitions"));
    }
    let mut points = Vec::new();
    let mut counts: Vec<usize> = options
        .shard_counts
        .iter()
        .copied()
        .filter(|&n| n >= 1 && n <= topology.cpu_count())
        .collect();
    counts.sort_unstable();
    counts.dedup();
    for shards in counts {
        let request = LayoutRequest {
            shards,
            harness_cpus: options.harness_cpus,
            sink_cpus: options.sink_cpus,
            preferred_node: options.preferred_node,
        };
        for layout in distinct_layouts(topology, &request, &options.pinnings, &options.helpers) {
            for &commit_window in &options.commit_windows {
                points.push(SweepPoint {
                    layout: layout.clone(),
                    commit_window,
                });
                if points.len() > POINTS_MAX {
                    return Err(SweepError::TooLarge(points.len()));
                }
            }
        }
    }
    if points.is_empty() {
        return Err(SweepError::Empty(
            "the layouts matching the pinnings and placements",
        ));
    }
    Ok(points)
}

/// What one harness run measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunSample {
    /// Accepted messages per second.
    pub msgs_per_sec: f64,
    /// Injection latency p99 (MAIL to the 250 after the data), ms.
    pub inject_p99_ms: f64,
    /// Injection-to-arrival p99 at the sink, ms, when the sink reported it.
    pub e2e_p99_ms: Option<f64>,
    /// Messages that failed.
    pub failed: u64,
    /// Whether the harness judged the run good (its exit code 0).
    pub passed: bool,
}

/// Reads the fields the sweep uses from a `sluice-bench --json` report.
pub fn parse_harness_report(json: &str) -> Result<RunSample, SweepError> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| SweepError::Report(e.to_string()))?;
    let number = |pointer: &str| {
        value
            .pointer(pointer)
            .and_then(serde_json::Value::as_f64)
            .ok_or_else(|| SweepError::Report(format!("missing number at {pointer}")))
    };
    Ok(RunSample {
        msgs_per_sec: number("/msgs_per_sec")?,
        inject_p99_ms: number("/inject_latency_ms/p99")?,
        e2e_p99_ms: value
            .pointer("/e2e_latency_ms/p99")
            .and_then(serde_json::Value::as_f64),
        failed: value
            .pointer("/failed")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| SweepError::Report("missing count at /failed".into()))?,
        passed: value
            .pointer("/passed")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false),
    })
}

/// Medians of a point's runs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PointSummary {
    /// The point.
    pub point: SweepPoint,
    /// Runs summarised.
    pub runs: usize,
    /// Runs the harness judged bad.
    pub runs_failed: usize,
    /// Median throughput.
    pub msgs_per_sec: f64,
    /// Lowest and highest throughput of the runs (the spread shows noise).
    pub msgs_per_sec_range: (f64, f64),
    /// Median injection p99, ms.
    pub inject_p99_ms: f64,
    /// Median injection-to-arrival p99, ms, over the runs that had one.
    pub e2e_p99_ms: Option<f64>,
}

/// The median of `values` (mean of the middle two for an even count);
/// `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    })
}

/// Summarises the runs of one point; `None` without runs.
pub fn summarize(point: SweepPoint, samples: &[RunSample]) -> Option<PointSummary> {
    let rates: Vec<f64> = samples.iter().map(|s| s.msgs_per_sec).collect();
    let p99s: Vec<f64> = samples.iter().map(|s| s.inject_p99_ms).collect();
    let e2e: Vec<f64> = samples.iter().filter_map(|s| s.e2e_p99_ms).collect();
    let low = rates.iter().copied().fold(f64::INFINITY, f64::min);
    let high = rates.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some(PointSummary {
        point,
        runs: samples.len(),
        runs_failed: samples.iter().filter(|s| !s.passed).count(),
        msgs_per_sec: median(&rates)?,
        msgs_per_sec_range: (low, high),
        inject_p99_ms: median(&p99s)?,
        e2e_p99_ms: median(&e2e),
    })
}

/// The best point: among points whose runs all passed, the highest median
/// throughput; within [`THROUGHPUT_TIE_FRACTION`] of it, the lowest median
/// injection p99; then the fewest shards.
pub fn best(summaries: &[PointSummary]) -> Option<&PointSummary> {
    let good: Vec<&PointSummary> = summaries.iter().filter(|s| s.runs_failed == 0).collect();
    let top = good
        .iter()
        .map(|s| s.msgs_per_sec)
        .fold(f64::NEG_INFINITY, f64::max);
    good.into_iter()
        .filter(|s| s.msgs_per_sec >= top * (1.0 - THROUGHPUT_TIE_FRACTION))
        .min_by(|a, b| {
            a.inject_p99_ms.total_cmp(&b.inject_p99_ms).then(
                a.point
                    .layout
                    .shard_cpus
                    .len()
                    .cmp(&b.point.layout.shard_cpus.len()),
            )
        })
}

/// The winning configuration to paste: the layout's snippet plus the
/// spool's commit window, with the figures that chose it.
pub fn best_snippet(summary: &PointSummary) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = writeln!(
        out,
        "# best: {:.0} msgs/s (median of {}, range {:.0}-{:.0}), injection p99 {:.2} ms",
        summary.msgs_per_sec,
        summary.runs,
        summary.msgs_per_sec_range.0,
        summary.msgs_per_sec_range.1,
        summary.inject_p99_ms
    );
    out.push_str(&summary.point.layout.config_snippet());
    let _ = writeln!(out, "\n[spool]");
    // The engine reads durations in whole milliseconds (`sluice_shaping::
    // units`), so the window is written rounded up to one.
    let _ = writeln!(
        out,
        "commit_window = \"{}ms\"",
        summary
            .point
            .commit_window
            .as_micros()
            .div_ceil(1000)
            .max(1)
    );
    out
}

/// A fixed-width table of every point, best throughput first.
pub fn render_table(summaries: &[PointSummary]) -> String {
    let mut rows: Vec<&PointSummary> = summaries.iter().collect();
    rows.sort_by(|a, b| b.msgs_per_sec.total_cmp(&a.msgs_per_sec));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<40} {:>12} {:>21} {:>10} {:>10} {:>5}",
        "point", "msgs/s", "range", "p99 ms", "e2e p99", "bad"
    );
    for s in rows {
        let _ = writeln!(
            out,
            "{:<40} {:>12.0} {:>10.0}-{:<10.0} {:>10.2} {:>10} {:>5}",
            s.point.label(),
            s.msgs_per_sec,
            s.msgs_per_sec_range.0,
            s.msgs_per_sec_range.1,
            s.inject_p99_ms,
            s.e2e_p99_ms.map_or("-".to_owned(), |v| format!("{v:.2}")),
            s.runs_failed
        );
    }
    out
}
