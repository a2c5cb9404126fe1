//! The reporting side: merges shard reports into totals, prints the live
//! line, builds the JSON summary and writes files atomically.
//!
//! [`Aggregator`] runs on the main thread (never on a shard). It keeps the
//! latest cumulative [`Counters`] of every shard, the total latency
//! histogram, and per-domain deliveries per second (bounded to
//! [`RATE_HISTORY_SECS_MAX`] seconds).

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::profile::RATE_HISTORY_SECS_MAX;
use crate::stats::{new_latency_histogram, Counters, ShardReport, Shared, REPLY_CODE_MIN};

/// Merged view of every shard.
#[derive(Debug)]
pub struct Aggregator {
    started: Instant,
    seed: u64,
    shards: Vec<Counters>,
    finished: Vec<bool>,
    latency_total: Histogram<u64>,
    latency_interval: Histogram<u64>,
    rates: HashMap<String, BTreeMap<u64, u64>>,
    last_line: Option<(Instant, u64)>,
}

impl Aggregator {
    /// An aggregator for `shards` shards; `seed` is echoed in the summary.
    pub fn new(shards: usize, seed: u64) -> Aggregator {
        Aggregator {
            started: Instant::now(),
            seed,
            shards: vec![Counters::default(); shards],
            finished: vec![false; shards],
            latency_total: new_latency_histogram(),
            latency_interval: new_latency_histogram(),
            rates: HashMap::new(),
            last_line: None,
        }
    }

    /// Takes in one shard report.
    pub fn absorb(&mut self, report: ShardReport) {
        let Some(slot) = self.shards.get_mut(report.shard) else {
            return;
        };
        *slot = report.counters;
        if report.last {
            self.finished[report.shard] = true;
        }
        // Same bounds on both sides: adding cannot fail.
        self.latency_total
            .add(&report.latency)
            .expect("histograms share bounds");
        self.latency_interval
            .add(&report.latency)
            .expect("histograms share bounds");
        for (domain, delta) in report.rates {
            let hist = self.rates.entry(domain).or_default();
            for (sec, n) in delta.seconds {
                *hist.entry(sec).or_default() += n;
            }
            while hist.len() as u64 > RATE_HISTORY_SECS_MAX {
                hist.pop_first();
            }
        }
    }

    /// Whether every shard sent its final report.
    pub fn all_finished(&self) -> bool {
        self.finished.iter().all(|&f| f)
    }

    /// Takes the latencies recorded since the previous call (for the hlog).
    pub fn take_interval(&mut self) -> Histogram<u64> {
        std::mem::replace(&mut self.latency_interval, new_latency_histogram())
    }

    /// Sum of all shards' counters.
    pub fn totals(&self) -> Counters {
        let mut t = Counters::default();
        for s in &self.shards {
            t.add(s);
        }
        t
    }

    /// One human line for stderr: totals and the rate since the last line.
    pub fn live_line(&mut self, shared: &Shared) -> String {
        let t = self.totals();
        let now = Instant::now();
        let rate = match self.last_line {
            Some((at, msgs)) if now > at => {
                (t.messages - msgs.min(t.messages)) as f64 / (now - at).as_secs_f64()
            }
            _ => 0.0,
        };
        self.last_line = Some((now, t.messages));
        let lat = if self.latency_total.is_empty() {
            String::new()
        } else {
            format!(
                " p50={:.2}ms p99={:.2}ms",
                self.latency_total.value_at_quantile(0.5) as f64 / 1000.0,
                self.latency_total.value_at_quantile(0.99) as f64 / 1000.0
            )
        };
        format!(
            "sluice-sink t={:.0}s conns={} (peak {}, total {}) msgs={} ({:.0}/s) rcpts={} MB={:.1}{}",
            self.started.elapsed().as_secs_f64(),
            shared.connections_current.load(Ordering::Relaxed),
            shared.connections_peak.load(Ordering::Relaxed),
            t.connections_total,
            t.messages,
            rate,
            t.recipients,
            t.bytes as f64 / 1e6,
            lat
        )
    }

    /// The JSON summary (see the crate docs for its keys).
    pub fn summary(&self, shared: &Shared) -> Value {
        let t = self.totals();
        let mut replies = serde_json::Map::new();
        for (i, &n) in t.replies.iter().enumerate() {
            if n > 0 {
                replies.insert((REPLY_CODE_MIN as usize + i).to_string(), n.into());
            }
        }
        let peaks = shared.with_board(|b| b.peaks());
        let mut names: Vec<&String> = t
            .domains
            .keys()
            .chain(peaks.keys())
            .chain(self.rates.keys())
            .collect();
        names.sort();
        names.dedup();
        let mut domains = serde_json::Map::new();
        for name in names {
            let c = t.domains.get(name).cloned().unwrap_or_default();
            let hist = self.rates.get(name);
            let max_per_s = hist.and_then(|h| h.values().max().copied()).unwrap_or(0);
            let history: Vec<Value> = hist
                .map(|h| h.iter().map(|(s, n)| json!([s, n])).collect())
                .unwrap_or_default();
            domains.insert(
                name.clone(),
                json!({
                    "messages": c.messages,
                    "recipients": c.recipients,
                    "connections": c.connections,
                    "peak_connections": peaks.get(name).copied().unwrap_or(0),
                    "max_messages_per_s": max_per_s,
                    "messages_per_s": history,
                }),
            );
        }
        let mut out = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": self.started.elapsed().as_secs_f64(),
            "seed": self.seed,
            "shards": self.shards.len(),
            "connections": t.connections_total,
            "connections_current": shared.connections_current.load(Ordering::Relaxed),
            "connections_peak": shared.connections_peak.load(Ordering::Relaxed),
            "connection_errors": t.connection_errors,
            "transactions": t.transactions,
            "messages": t.messages,
            "recipients": t.recipients,
            "bytes": t.bytes,
            "bytes_received": t.bytes_received,
            "replies": replies,
            "tls": {"handshakes": t.tls_handshakes, "failures": t.tls_failures},
            "captured": t.captured,
            "profile_actions": t.actions.to_json(),
            "domains": domains,
        });
        if !self.latency_total.is_empty() {
            out["latency_ms"] = latency_json(&self.latency_total, t.latency_samples);
        }
        out
    }
}

fn latency_json(h: &Histogram<u64>, samples: u64) -> Value {
    let ms = |us: u64| us as f64 / 1000.0;
    json!({
        "count": samples,
        "min": ms(h.min()),
        "mean": h.mean() / 1000.0,
        "p50": ms(h.value_at_quantile(0.50)),
        "p90": ms(h.value_at_quantile(0.90)),
        "p99": ms(h.value_at_quantile(0.99)),
        "p999": ms(h.value_at_quantile(0.999)),
        "max": ms(h.max()),
    })
}

/// Writes `bytes` to `path` atomically: a temp file beside it, then rename,
/// so a reader never sees a half-written summary.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "summary path has no file name")
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.write_all(b"\n")?;
    }
    std::fs::rename(&tmp, path)
}

/// Seconds since the Unix epoch as `f64` (for hlog timestamps).
pub fn unix_now() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::ShardStats;

    #[test]
    fn merges_shards_and_rates() {
        let shared = Shared::default();
        let mut agg = Aggregator::new(2, 7);
        for shard in 0..2 {
            let mut s = ShardStats::default();
            s.counters.messages = 3;
            s.counters.count_reply(250);
            s.count_rate("d.test", 100);
            s.latency.record(1500).unwrap();
            agg.absorb(s.take_report(shard, shard == 1));
        }
        assert!(!agg.all_finished());
        let v = agg.summary(&shared);
        assert_eq!(v["messages"], 6);
        assert_eq!(v["replies"]["250"], 2);
        assert_eq!(v["domains"]["d.test"]["messages_per_s"], json!([[100, 2]]));
        assert_eq!(v["latency_ms"]["max"].as_f64().unwrap().round(), 2.0);
        assert_eq!(agg.take_interval().len(), 2);
        assert_eq!(agg.take_interval().len(), 0);
    }

    #[test]
    fn atomic_write_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.json");
        write_atomic(&p, b"{}").unwrap();
        write_atomic(&p, b"{\"a\":1}").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"a\":1}\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
