//! The reporting side: merges shard reports into totals, prints the live
//! line, builds the JSON summary and writes files atomically.
//!
//! [`Aggregator`] runs on the main thread (never on a shard). It keeps the
//! latest cumulative [`Counters`] of every shard, the total latency
//! histogram, and per-domain deliveries per wall-clock second. Every domain
//! gets its highest per-second count; the full per-second history (bounded
//! to [`RATE_HISTORY_SECS_MAX`] seconds) is kept for the domains the profile
//! names and for the first [`HISTORY_DOMAINS_MAX`] others, so memory and
//! summary size stay bounded with many domains.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::profile::RATE_HISTORY_SECS_MAX;

/// Domains (besides those the profile names) with a full per-second history.
pub const HISTORY_DOMAINS_MAX: usize = 64;
/// Seconds kept for the other domains: enough for late shard reports of a
/// second to land in its bucket before it is dropped.
pub const RECENT_SECS: usize = 5;

/// Deliveries per second of one domain.
#[derive(Debug, Default)]
struct DomainRate {
    seconds: BTreeMap<u64, u64>,
    max_per_s: u64,
    full_history: bool,
}
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
    rates: HashMap<String, DomainRate>,
    history_domains: usize,
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
            history_domains: 0,
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
            if !self.rates.contains_key(&domain) {
                let full = self.history_domains < HISTORY_DOMAINS_MAX;
                self.history_domains += usize::from(full);
                self.track(domain.clone(), full);
            }
            // Inserted just above when missing.
            let rate = self.rates.get_mut(&domain).expect("domain tracked");
            for (sec, n) in delta.seconds {
                let bucket = rate.seconds.entry(sec).or_default();
                *bucket += n;
                rate.max_per_s = rate.max_per_s.max(*bucket);
            }
            let keep = if rate.full_history {
                RATE_HISTORY_SECS_MAX as usize
            } else {
                RECENT_SECS
            };
            while rate.seconds.len() > keep {
                rate.seconds.pop_first();
            }
        }
    }

    /// Keeps the full per-second history of `domain` (the profile's domains).
    pub fn track(&mut self, domain: String, full_history: bool) {
        let rate = self.rates.entry(domain).or_default();
        rate.full_history |= full_history;
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
            let rate = self.rates.get(name);
            let mut entry = json!({
                "messages": c.messages,
                "recipients": c.recipients,
                "connections": c.connections,
                "peak_connections": peaks.get(name).copied().unwrap_or(0),
                "max_messages_per_s": rate.map_or(0, |r| r.max_per_s),
            });
            if let Some(r) = rate.filter(|r| r.full_history) {
                let history: Vec<Value> = r.seconds.iter().map(|(s, n)| json!([s, n])).collect();
                entry["messages_per_s"] = Value::Array(history);
            }
            domains.insert(name.clone(), entry);
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
    fn history_is_bounded_to_named_and_first_domains() {
        let shared = Shared::default();
        let mut agg = Aggregator::new(1, 1);
        agg.track("named.test".into(), true);
        let mut s = ShardStats::default();
        for d in 0..HISTORY_DOMAINS_MAX + 10 {
            for sec in 0..20 {
                s.count_rate(&format!("d{d}.test"), sec);
            }
        }
        for sec in 0..20 {
            s.count_rate("named.test", sec);
            s.count_rate("named.test", sec);
        }
        agg.absorb(s.take_report(0, true));
        let v = agg.summary(&shared);
        assert_eq!(
            v["domains"]["named.test"]["messages_per_s"]
                .as_array()
                .unwrap()
                .len(),
            20
        );
        assert_eq!(v["domains"]["named.test"]["max_messages_per_s"], 2);
        let with_history = v["domains"]
            .as_object()
            .unwrap()
            .values()
            .filter(|d| d.get("messages_per_s").is_some())
            .count();
        assert_eq!(with_history, HISTORY_DOMAINS_MAX + 1);
        // Which unnamed domains keep a history depends on arrival order;
        // every domain still has its highest rate.
        for d in 0..HISTORY_DOMAINS_MAX + 10 {
            assert_eq!(v["domains"][&format!("d{d}.test")]["max_messages_per_s"], 1);
        }
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
