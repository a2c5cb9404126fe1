//! The final report: JSON document, text table and the pass/fail verdict.

use std::collections::BTreeMap;
use std::io::{self, Write};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::hdr::us_to_ms;
use crate::probe::TargetCpu;
use crate::stats::Counters;

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LatencyMs {
    /// Samples.
    pub count: u64,
    /// Smallest sample.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest sample.
    pub max: f64,
}

impl LatencyMs {
    /// Summarises a microsecond histogram.
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return LatencyMs::default();
        }
        let q = |p: f64| us_to_ms(h.value_at_quantile(p));
        LatencyMs {
            count: h.len(),
            min: us_to_ms(h.min()),
            mean: h.mean() / 1000.0,
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: us_to_ms(h.max()),
        }
    }
}

/// What was asked for, echoed into the report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LoadEcho {
    /// Target address (or host with routing).
    pub target: String,
    /// `closed` or `open`.
    pub mode: &'static str,
    /// Open-loop target rate, messages/s.
    pub rate_target: Option<f64>,
    /// Connections.
    pub connections: u32,
    /// Executors.
    pub cores: usize,
    /// Message count asked for, if any.
    pub messages_planned: Option<u64>,
    /// Duration asked for, seconds, if any.
    pub duration_planned: Option<f64>,
    /// Size spec as given.
    pub size: String,
    /// Seed.
    pub seed: u64,
    /// Run id.
    pub run_id: String,
    /// Wall-clock start of the run (the open-loop schedule's origin), unix ns.
    pub started_unix_nanos: u64,
    /// Routing by domain: port base and shard count.
    pub route_by_domain: Option<(u16, u32)>,
}

/// The JSON report (`--json`); field names are a stable interface.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    /// The load.
    pub load: LoadEcho,
    /// Transactions started.
    pub messages: u64,
    /// Messages accepted (2xx after the data).
    pub accepted: u64,
    /// Messages failed.
    pub failed: u64,
    /// Recipients accepted.
    pub recipients_accepted: u64,
    /// Recipients refused.
    pub recipients_rejected: u64,
    /// Message bytes accepted.
    pub bytes: u64,
    /// Wall-clock seconds from the first connection to the last reply.
    pub seconds: f64,
    /// Accepted messages per second.
    pub msgs_per_sec: f64,
    /// Accepted messages per hour.
    pub msgs_per_hour: f64,
    /// Injection latency (first byte of MAIL, or the scheduled time in open
    /// loop, to the reply after the data).
    pub inject_latency_ms: LatencyMs,
    /// Failed messages by reply code or cause.
    pub errors: BTreeMap<String, u64>,
    /// Connection failures by cause.
    pub connection_errors: BTreeMap<String, u64>,
    /// Sessions established.
    pub connections_opened: u64,
    /// CPU seconds used by the harness itself.
    pub harness_cpu_seconds: f64,
    /// Harness CPU microseconds per accepted message.
    pub harness_cpu_us_per_msg: f64,
    /// CPU of the processes given with `--pids`.
    pub target_cpu: Option<TargetCpu>,
    /// Messages the sink counted during the run (with `--sink-summary`).
    pub delivered: Option<u64>,
    /// The sink's injection-to-arrival latency (with `--sink-summary`).
    pub e2e_latency_ms: Option<serde_json::Value>,
    /// Whether the run met its targets (the exit code is 0 exactly then).
    pub passed: bool,
    /// Why it did not.
    pub problems: Vec<String>,
}

/// Turns run counters into the pass/fail list.
pub fn verdict(
    counters: &Counters,
    planned: Option<u64>,
    max_error_rate: f64,
    fatal: Option<&str>,
    interrupted: bool,
) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(why) = fatal {
        problems.push(why.to_owned());
    }
    if interrupted {
        problems.push("interrupted before the load was complete".into());
    }
    let failures = counters.connection_failures();
    if failures > 0 {
        let list: Vec<String> = counters
            .connection_errors
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        problems.push(format!(
            "{failures} connection failures ({})",
            list.join(", ")
        ));
    }
    let finished = counters.finished();
    if finished > 0 {
        let rate = counters.failed as f64 / finished as f64;
        if rate > max_error_rate {
            let list: Vec<String> = counters
                .errors
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            problems.push(format!(
                "error rate {:.4} above --max-error-rate {max_error_rate} ({} failed: {})",
                rate,
                counters.failed,
                list.join(", ")
            ));
        }
    }
    if let Some(planned) = planned {
        if finished < planned && fatal.is_none() && !interrupted {
            problems.push(format!("only {finished} of {planned} messages finished"));
        }
    }
    if finished == 0 && problems.is_empty() {
        problems.push("no message was sent".into());
    }
    problems
}

impl Report {
    /// Writes the human table.
    pub fn write_table(&self, out: &mut impl Write) -> io::Result<()> {
        let l = &self.inject_latency_ms;
        writeln!(
            out,
            "sluice-bench run {} -> {}",
            self.load.run_id, self.load.target
        )?;
        let mode = match self.load.rate_target {
            Some(r) => format!("open loop at {r} msg/s"),
            None => "closed loop".to_owned(),
        };
        writeln!(
            out,
            "  load        {mode}, {} connections on {} cores, size {}, seed {}",
            self.load.connections, self.load.cores, self.load.size, self.load.seed
        )?;
        writeln!(
            out,
            "  messages    {} sent, {} accepted, {} failed",
            self.messages, self.accepted, self.failed
        )?;
        writeln!(out, "  seconds     {:.3}", self.seconds)?;
        writeln!(
            out,
            "  rate        {:.0} msg/s  ({:.2}M msg/hour)",
            self.msgs_per_sec,
            self.msgs_per_hour / 1e6
        )?;
        writeln!(
            out,
            "  latency ms  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            l.p50, l.p90, l.p99, l.p999, l.max
        )?;
        writeln!(
            out,
            "  harness cpu {:.2} us/msg",
            self.harness_cpu_us_per_msg
        )?;
        if let Some(cpu) = &self.target_cpu {
            writeln!(
                out,
                "  target cpu  {:.2} us/msg ({:.3} s, pids {:?})",
                cpu.cpu_us_per_msg, cpu.cpu_seconds, cpu.pids
            )?;
        }
        if let Some(d) = self.delivered {
            writeln!(out, "  delivered   {d} (sink)")?;
        }
        if let Some(e2e) = &self.e2e_latency_ms {
            let q = |k: &str| e2e.get(k).and_then(|v| v.as_f64());
            match (q("p50"), q("p90"), q("p99"), q("p999"), q("max")) {
                (Some(p50), Some(p90), Some(p99), Some(p999), Some(max)) => writeln!(
                    out,
                    "  e2e ms      p50 {p50:.3}  p90 {p90:.3}  p99 {p99:.3}  p99.9 {p999:.3}  max {max:.3} (sink, injection to arrival)"
                )?,
                _ => writeln!(out, "  e2e ms      {e2e} (sink)")?,
            }
        }
        if !self.errors.is_empty() {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            writeln!(out, "  errors      {}", list.join(", "))?;
        }
        if !self.connection_errors.is_empty() {
            let list: Vec<String> = self
                .connection_errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            writeln!(out, "  conn errors {}", list.join(", "))?;
        }
        if self.passed {
            writeln!(out, "  result      PASS")
        } else {
            writeln!(out, "  result      FAIL: {}", self.problems.join("; "))
        }
    }
}

/// Converts an error table to string keys.
pub fn keyed<K: ToString>(map: &BTreeMap<K, u64>) -> BTreeMap<String, u64> {
    map.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::ErrorKind;

    #[test]
    fn verdicts() {
        let mut c = Counters {
            accepted: 99,
            failed: 1,
            ..Default::default()
        };
        c.errors.insert(ErrorKind::Code(550), 1);
        assert_eq!(
            verdict(&c, Some(100), 0.05, None, false),
            Vec::<String>::new()
        );
        let v = verdict(&c, Some(100), 0.0, None, false);
        assert_eq!(v.len(), 1);
        assert!(v[0].contains("550=1"), "{v:?}");
        assert_eq!(verdict(&c, Some(200), 0.05, None, false).len(), 1);
        c.connection_errors.insert(ErrorKind::ConnectRefused, 2);
        assert!(verdict(&c, Some(100), 0.05, None, false)[0].contains("connect_refused=2"));
        let empty = Counters::default();
        assert_eq!(
            verdict(&empty, None, 0.0, None, false),
            vec!["no message was sent"]
        );
    }

    #[test]
    fn latency_summary() {
        let mut h = crate::hdr::latency_histogram();
        for v in 1..=100u64 {
            h.record(v * 1000).unwrap();
        }
        let l = LatencyMs::from_histogram(&h);
        assert_eq!(l.count, 100);
        assert!((l.p50 - 50.0).abs() < 0.1);
        assert!((l.max - 100.0).abs() < 0.1);
    }
}
