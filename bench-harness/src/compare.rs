//! `sluice-bench compare`: the same load against two SMTP targets, side by side.
//!
//! Both runs use the same [`RunArgs`] (so the same seed, sizes, domains and
//! connections: the same messages), one after the other with a settle wait
//! between, each with its own run id (`<run>-a`, `<run>-b`). With
//! `--sink-summary` each run reads the sink's `messages` counter before and
//! after, so when both targets deliver into the same `sluice-sink` the
//! delivered counts are deltas and stay separate. The sink's latency
//! summary is cumulative since it started, so with a shared sink b's
//! injection-to-arrival figures include a's messages; the table says so.
//!
//! # Against Postfix as a relay
//! `bench-harness/bench/compare-postfix.sh [MESSAGES] [CONNECTIONS]` does
//! it all: one `sluice-sink`, a Sluice engine routing `*` to it, and a
//! throw-away Postfix instance relaying to it (`relayhost =
//! [127.0.0.1]:SINK_PORT`, `mynetworks = 127.0.0.0/8`, `smtpd` on its own
//! port, as in `../shared/peers/postfix-relay.sh`), then:
//! ```text
//! sluice-bench compare --a 127.0.0.1:2725 --a-name sluice --a-pid $ENGINE_PID \
//!     --b 127.0.0.1:2726 --b-name postfix --b-pid $POSTFIX_MASTER_PID --pid-tree \
//!     --sink-summary sink.json --sink-wait 900s --messages 30000 --connections 16 \
//!     --size 2k --domains 1000 --domain-shape zipf:1.1 --json compare.json
//! ```
//! Postfix works in several processes (smtpd, cleanup, qmgr, smtp, forked
//! and reaped as they reach `max_use`): `--pid-tree` on the master's PID
//! counts its live descendants and its reaped children too. A single-process
//! engine is measured the same way with or without it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Arg, Args};
use serde::Serialize;

use crate::cli::{parse_duration, RunArgs};
use crate::report::Report;
use crate::{run, Error};

/// Options of `sluice-bench compare`.
#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// The load, the same for both targets.
    #[command(flatten)]
    pub load: RunArgs,

    /// First target, HOST:PORT (e.g. Sluice).
    #[arg(long, value_name = "HOST:PORT")]
    pub a: String,

    /// Second target, HOST:PORT (e.g. Postfix relaying into the same sink).
    #[arg(long, value_name = "HOST:PORT")]
    pub b: String,

    /// Name of a in the table.
    #[arg(long, default_value = "a")]
    pub a_name: String,

    /// Name of b in the table.
    #[arg(long, default_value = "b")]
    pub b_name: String,

    /// PIDs of a's processes whose CPU is measured (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub a_pid: Vec<u32>,

    /// PIDs of b's processes whose CPU is measured (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub b_pid: Vec<u32>,

    /// Pause between the two runs, so a's queue drains and the machine settles.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub settle: Duration,
}

/// Adjusts the `run` options flattened into `compare`.
pub fn compare_arg(a: Arg) -> Arg {
    match a.get_id().as_str() {
        // Set by the command itself; a placeholder keeps clap from asking for it.
        "target" => a.required(false).hide(true).default_value("127.0.0.1:0"),
        "pids" | "hlog" | "hgrm" | "plot" | "route_by_domain" | "shards" => {
            a.required(false).hide(true)
        }
        "json" => a.help("Write both reports and the a/b ratios here (JSON)"),
        "pid_tree" => a.help(
            "Count each --a-pid/--b-pid process with its descendants and reaped children (Postfix: give the master's PID)",
        ),
        "sink_summary" => a.help(
            "A live `sluice-sink` summary both targets deliver into: delivered counts are read as deltas per run",
        ),
        _ => a,
    }
}

/// One side of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    /// The name in the table.
    pub name: String,
    /// HOST:PORT.
    pub target: String,
    /// Seconds from the start of injection until the sink counted every
    /// accepted message (the injection time without a sink).
    pub seconds_to_last_arrival: f64,
    /// Delivered messages per second over that time (with a sink).
    pub delivered_per_sec: Option<f64>,
    /// The run's report.
    pub report: Report,
}

/// The a/b ratios of the headline figures (a value divided by b's; absent
/// when either side lacks the figure or b's is zero).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Ratios {
    /// Accepted messages per second.
    pub msgs_per_sec: Option<f64>,
    /// Delivered messages per second.
    pub delivered_per_sec: Option<f64>,
    /// Injection latency p50.
    pub inject_p50: Option<f64>,
    /// Injection latency p99.
    pub inject_p99: Option<f64>,
    /// Injection-to-arrival latency p50.
    pub e2e_p50: Option<f64>,
    /// Injection-to-arrival latency p99.
    pub e2e_p99: Option<f64>,
    /// Target CPU µs per message.
    pub target_cpu_us_per_msg: Option<f64>,
}

/// The comparison, written with `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// The first target.
    pub a: Side,
    /// The second target.
    pub b: Side,
    /// a / b.
    pub ratios: Ratios,
    /// True when both runs read the same sink summary, whose latency figures
    /// are cumulative (b's include a's messages).
    pub shared_sink: bool,
    /// Both runs met their targets.
    pub passed: bool,
}

/// Runs the load against a, waits `--settle`, runs it against b.
pub fn compare(args: &CompareArgs, interrupt: Arc<AtomicBool>) -> Result<Comparison, Error> {
    let base_id = args.load.run_id.clone().unwrap_or_else(|| {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        format!("{ms:x}")
    });
    let a = side(
        args,
        &args.a_name,
        &args.a,
        &args.a_pid,
        &base_id,
        "a",
        &interrupt,
    )?;
    let deadline = Instant::now() + args.settle;
    while Instant::now() < deadline && !interrupt.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50).min(args.settle));
    }
    let b = side(
        args,
        &args.b_name,
        &args.b,
        &args.b_pid,
        &base_id,
        "b",
        &interrupt,
    )?;
    let comparison = Comparison {
        ratios: ratios(&a, &b),
        shared_sink: args.load.sink_summary.is_some(),
        passed: a.report.passed && b.report.passed,
        a,
        b,
    };
    if let Some(path) = &args.load.json {
        let text = serde_json::to_string_pretty(&comparison)
            .map_err(|e| Error::Io(format!("encoding the comparison: {e}")))?;
        std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))?;
    }
    Ok(comparison)
}

fn side(
    args: &CompareArgs,
    name: &str,
    target: &str,
    pids: &[u32],
    base_id: &str,
    suffix: &str,
    interrupt: &Arc<AtomicBool>,
) -> Result<Side, Error> {
    let mut load = args.load.clone();
    load.target = target.to_owned();
    load.pids = pids.to_vec();
    load.run_id = Some(format!("{base_id}-{suffix}"));
    load.json = None;
    load.hlog = None;
    load.hgrm = None;
    load.plot = None;
    load.route_by_domain = None;
    load.shards = None;
    eprintln!("sluice-bench compare: {name} ({target})");
    let started = Instant::now();
    let outcome = run::run(&load, interrupt.clone())?;
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    Ok(Side {
        name: name.to_owned(),
        target: target.to_owned(),
        seconds_to_last_arrival: seconds,
        delivered_per_sec: outcome.report.delivered.map(|d| d as f64 / seconds),
        report: outcome.report,
    })
}

/// a / b, when both are known and b is not zero.
fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 && a.is_finite() && b.is_finite() => Some(a / b),
        _ => None,
    }
}

fn e2e(side: &Side, key: &str) -> Option<f64> {
    side.report.e2e_latency_ms.as_ref()?.get(key)?.as_f64()
}

fn cpu(side: &Side) -> Option<f64> {
    side.report.target_cpu.as_ref().map(|c| c.cpu_us_per_msg)
}

/// The a/b ratios of two sides.
pub fn ratios(a: &Side, b: &Side) -> Ratios {
    let (ra, rb) = (&a.report, &b.report);
    Ratios {
        msgs_per_sec: ratio(Some(ra.msgs_per_sec), Some(rb.msgs_per_sec)),
        delivered_per_sec: ratio(a.delivered_per_sec, b.delivered_per_sec),
        inject_p50: ratio(
            Some(ra.inject_latency_ms.p50),
            Some(rb.inject_latency_ms.p50),
        ),
        inject_p99: ratio(
            Some(ra.inject_latency_ms.p99),
            Some(rb.inject_latency_ms.p99),
        ),
        e2e_p50: ratio(e2e(a, "p50"), e2e(b, "p50")),
        e2e_p99: ratio(e2e(a, "p99"), e2e(b, "p99")),
        target_cpu_us_per_msg: ratio(cpu(a), cpu(b)),
    }
}

impl Comparison {
    /// Writes the side-by-side table.
    pub fn write_table(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let (a, b, r) = (&self.a, &self.b, &self.ratios);
        let (ra, rb) = (&a.report, &b.report);
        let num = |v: Option<f64>, digits: usize| match v {
            Some(v) => format!("{v:.digits$}"),
            None => "-".to_owned(),
        };
        let head_a = format!("{} ({})", a.name, a.target);
        let head_b = format!("{} ({})", b.name, b.target);
        let w = head_a.len().max(head_b.len()).max(12);
        writeln!(
            out,
            "sluice-bench compare: {} messages planned, {} connections, size {}, seed {}",
            ra.load
                .messages_planned
                .map_or_else(|| "duration".to_owned(), |n| n.to_string()),
            ra.load.connections,
            ra.load.size,
            ra.load.seed
        )?;
        writeln!(out, "  {:<22} {head_a:>w$}  {head_b:>w$}  {:>8}", "", "a/b")?;
        let mut row = |label: &str, va: String, vb: String, ratio: Option<f64>| {
            writeln!(
                out,
                "  {label:<22} {va:>w$}  {vb:>w$}  {:>8}",
                ratio_text(ratio)
            )
        };
        row(
            "accepted / sent",
            format!("{} / {}", ra.accepted, ra.messages),
            format!("{} / {}", rb.accepted, rb.messages),
            None,
        )?;
        row(
            "accepted msg/s",
            format!("{:.0}", ra.msgs_per_sec),
            format!("{:.0}", rb.msgs_per_sec),
            r.msgs_per_sec,
        )?;
        row(
            "delivered",
            num(ra.delivered.map(|d| d as f64), 0),
            num(rb.delivered.map(|d| d as f64), 0),
            None,
        )?;
        row(
            "delivered msg/s",
            num(a.delivered_per_sec, 0),
            num(b.delivered_per_sec, 0),
            r.delivered_per_sec,
        )?;
        row(
            "inject p50 ms",
            format!("{:.3}", ra.inject_latency_ms.p50),
            format!("{:.3}", rb.inject_latency_ms.p50),
            r.inject_p50,
        )?;
        row(
            "inject p99 ms",
            format!("{:.3}", ra.inject_latency_ms.p99),
            format!("{:.3}", rb.inject_latency_ms.p99),
            r.inject_p99,
        )?;
        row(
            "e2e p50 ms",
            num(e2e(a, "p50"), 3),
            num(e2e(b, "p50"), 3),
            r.e2e_p50,
        )?;
        row(
            "e2e p99 ms",
            num(e2e(a, "p99"), 3),
            num(e2e(b, "p99"), 3),
            r.e2e_p99,
        )?;
        row(
            "target cpu us/msg",
            num(cpu(a), 2),
            num(cpu(b), 2),
            r.target_cpu_us_per_msg,
        )?;
        row(
            "harness cpu us/msg",
            format!("{:.2}", ra.harness_cpu_us_per_msg),
            format!("{:.2}", rb.harness_cpu_us_per_msg),
            None,
        )?;
        if self.shared_sink && rb.e2e_latency_ms.is_some() {
            writeln!(
                out,
                "  (one sink: its latency summary is cumulative, so b's e2e includes a's messages)"
            )?;
        }
        for side in [a, b] {
            if side.report.passed {
                writeln!(out, "  {:<22} PASS", side.name)?;
            } else {
                writeln!(
                    out,
                    "  {:<22} FAIL: {}",
                    side.name,
                    side.report.problems.join("; ")
                )?;
            }
        }
        Ok(())
    }
}

/// A ratio with enough digits to tell small ones apart (`0.0036`, `0.21`, `34.4`).
fn ratio_text(r: Option<f64>) -> String {
    match r {
        None => "-".to_owned(),
        Some(r) if r.abs() >= 10.0 => format!("{r:.1}"),
        Some(r) if r.abs() >= 0.1 => format!("{r:.2}"),
        Some(r) => format!("{r:.4}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_need_both_sides_and_a_nonzero_b() {
        assert_eq!(ratio(Some(6.0), Some(3.0)), Some(2.0));
        assert_eq!(ratio(Some(6.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(3.0)), None);
        assert_eq!(ratio(Some(f64::NAN), Some(3.0)), None);
        assert_eq!(ratio_text(Some(34.44)), "34.4");
        assert_eq!(ratio_text(Some(0.21)), "0.21");
        assert_eq!(ratio_text(Some(0.0036)), "0.0036");
        assert_eq!(ratio_text(None), "-");
    }
}
