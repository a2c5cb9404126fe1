//! Counters: what each shard owns, what it reports, and what is shared.
//!
//! A shard owns a [`ShardStats`] as plain fields (no atomics, no locks) and
//! every report tick sends a [`ShardReport`] to the reporting thread: its
//! cumulative [`Counters`] (replacing the previous ones) plus the deltas that
//! only it can see (the latency histogram of the interval, per-domain
//! deliveries per wall-clock second). Summing per-second buckets across
//! shards is exact because seconds are wall-clock seconds.
//!
//! Only what is global by nature lives in [`Shared`]: the stop flag, the
//! process-wide connection gauge (for an exact peak), and the per-domain
//! board that enforces `max_connections` and `rate_per_second` across shards.
//! The board is locked once when a connection learns its domain, once when
//! it closes, and once per message only for rate-limited domains.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;

use crate::profile::{Phase, Profile, INJECTABLE_CODES};

/// Highest latency recorded, in microseconds (one hour); above saturates.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Distinct recipient domains tracked per shard; the rest go to [`OTHER_DOMAIN`].
pub const DOMAINS_MAX: usize = 10_000;
/// Name under which domains beyond [`DOMAINS_MAX`] are counted.
pub const OTHER_DOMAIN: &str = "(other)";
/// Reply codes are counted in an array indexed by `code - 200`.
pub const REPLY_CODE_MIN: u16 = 200;
/// One past the highest countable reply code.
pub const REPLY_CODE_END: u16 = 600;

/// A new latency histogram in microseconds, 3 significant figures.
pub fn new_latency_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts (1 <= low, high >= 2*low,
    // sigfig <= 5); construction cannot fail.
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("constant histogram bounds are valid")
}

/// What a profile did, counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileActions {
    /// Injected replies per phase (index [`Phase::index`]) and code
    /// (index into [`INJECTABLE_CODES`]).
    pub injected: [[u64; 5]; 4],
    /// Replies delayed, per phase.
    pub delayed: [u64; 4],
    /// `421 4.7.0` for a domain over its `rate_per_second`.
    pub rate_limited: u64,
    /// `421 4.7.0` for a domain over its `max_connections`.
    pub connection_limited: u64,
    /// `550 5.1.1` for a listed local part.
    pub local_part_rejected: u64,
    /// Connections closed after `drop_after_messages`.
    pub dropped_after_messages: u64,
    /// Connections closed in the middle of a body.
    pub dropped_in_data: u64,
    /// Connections accepted and never greeted.
    pub never_greeted: u64,
}

impl ProfileActions {
    /// Counts one injected `code` at `phase`.
    pub fn count_injected(&mut self, phase: Phase, code: u16) {
        if let Some(i) = INJECTABLE_CODES.iter().position(|&c| c == code) {
            self.injected[phase.index()][i] += 1;
        }
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &ProfileActions) {
        for p in 0..4 {
            for c in 0..5 {
                self.injected[p][c] += other.injected[p][c];
            }
            self.delayed[p] += other.delayed[p];
        }
        self.rate_limited += other.rate_limited;
        self.connection_limited += other.connection_limited;
        self.local_part_rejected += other.local_part_rejected;
        self.dropped_after_messages += other.dropped_after_messages;
        self.dropped_in_data += other.dropped_in_data;
        self.never_greeted += other.never_greeted;
    }

    /// Flat JSON object: `rcpt_451`, `delayed_data`, `rate_limited`, ...
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for phase in Phase::ALL {
            for (i, code) in INJECTABLE_CODES.iter().enumerate() {
                m.insert(
                    format!("{}_{code}", phase.name()),
                    self.injected[phase.index()][i].into(),
                );
            }
            m.insert(
                format!("delayed_{}", phase.name()),
                self.delayed[phase.index()].into(),
            );
        }
        m.insert("rate_limited".into(), self.rate_limited.into());
        m.insert("connection_limited".into(), self.connection_limited.into());
        m.insert(
            "local_part_rejected".into(),
            self.local_part_rejected.into(),
        );
        m.insert(
            "dropped_after_messages".into(),
            self.dropped_after_messages.into(),
        );
        m.insert("dropped_in_data".into(), self.dropped_in_data.into());
        m.insert("never_greeted".into(), self.never_greeted.into());
        serde_json::Value::Object(m)
    }
}

/// Per recipient domain counters of one shard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainCounters {
    /// Accepted messages with at least one recipient in the domain.
    pub messages: u64,
    /// Accepted recipients in the domain (of accepted messages).
    pub recipients: u64,
    /// Connections whose first accepted-or-refused `RCPT` named the domain.
    pub connections: u64,
}

/// Cumulative counters of one shard (sums across shards are the totals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counters {
    /// Connections accepted.
    pub connections_total: u64,
    /// Connections open now.
    pub connections_current: u64,
    /// `MAIL FROM` commands accepted.
    pub transactions: u64,
    /// Messages accepted (`250` after the data).
    pub messages: u64,
    /// Recipients of accepted messages.
    pub recipients: u64,
    /// Un-stuffed body bytes of accepted messages.
    pub bytes: u64,
    /// Bytes read from sockets (after TLS decryption).
    pub bytes_received: u64,
    /// Replies sent, indexed by `code - REPLY_CODE_MIN`.
    pub replies: Vec<u64>,
    /// TLS handshakes completed.
    pub tls_handshakes: u64,
    /// TLS handshakes or records that failed.
    pub tls_failures: u64,
    /// Connections closed because of a protocol violation or I/O error.
    pub connection_errors: u64,
    /// Accepted messages that carried a valid `X-Sluice-Injected` header.
    pub latency_samples: u64,
    /// Messages captured to `--capture DIR`.
    pub captured: u64,
    /// What the profile did.
    pub actions: ProfileActions,
    /// Per recipient domain.
    pub domains: HashMap<String, DomainCounters>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            connections_total: 0,
            connections_current: 0,
            transactions: 0,
            messages: 0,
            recipients: 0,
            bytes: 0,
            bytes_received: 0,
            replies: vec![0; usize::from(REPLY_CODE_END - REPLY_CODE_MIN)],
            tls_handshakes: 0,
            tls_failures: 0,
            connection_errors: 0,
            latency_samples: 0,
            captured: 0,
            actions: ProfileActions::default(),
            domains: HashMap::new(),
        }
    }
}

impl Counters {
    /// Counts one reply with `code`.
    pub fn count_reply(&mut self, code: u16) {
        if (REPLY_CODE_MIN..REPLY_CODE_END).contains(&code) {
            self.replies[usize::from(code - REPLY_CODE_MIN)] += 1;
        }
    }

    /// The counters of `domain` (bounded by [`DOMAINS_MAX`]).
    pub fn domain(&mut self, domain: &str) -> &mut DomainCounters {
        if !self.domains.contains_key(domain) {
            let key = if self.domains.len() < DOMAINS_MAX {
                domain
            } else {
                OTHER_DOMAIN
            };
            return self.domains.entry(key.to_string()).or_default();
        }
        // Checked just above: the key is present.
        self.domains.get_mut(domain).expect("domain present")
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Counters) {
        self.connections_total += other.connections_total;
        self.connections_current += other.connections_current;
        self.transactions += other.transactions;
        self.messages += other.messages;
        self.recipients += other.recipients;
        self.bytes += other.bytes;
        self.bytes_received += other.bytes_received;
        for (a, b) in self.replies.iter_mut().zip(&other.replies) {
            *a += b;
        }
        self.tls_handshakes += other.tls_handshakes;
        self.tls_failures += other.tls_failures;
        self.connection_errors += other.connection_errors;
        self.latency_samples += other.latency_samples;
        self.captured += other.captured;
        self.actions.add(&other.actions);
        for (name, d) in &other.domains {
            let mine = self.domains.entry(name.clone()).or_default();
            mine.messages += d.messages;
            mine.recipients += d.recipients;
            mine.connections += d.connections;
        }
    }
}

/// Deliveries per wall-clock second for one domain, not yet reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateDelta {
    /// `(unix second, accepted messages)`, seconds increasing.
    pub seconds: Vec<(u64, u64)>,
}

impl RateDelta {
    /// Counts one accepted message in `unix_sec`.
    pub fn count(&mut self, unix_sec: u64) {
        match self.seconds.last_mut() {
            Some((s, n)) if *s == unix_sec => *n += 1,
            _ => self.seconds.push((unix_sec, 1)),
        }
    }
}

/// Everything a shard owns for reporting.
#[derive(Debug)]
pub struct ShardStats {
    /// Cumulative counters.
    pub counters: Counters,
    /// Latencies recorded since the last report, microseconds.
    pub latency: Histogram<u64>,
    /// Per-domain deliveries per second since the last report.
    pub rates: HashMap<String, RateDelta>,
}

impl Default for ShardStats {
    fn default() -> Self {
        ShardStats {
            counters: Counters::default(),
            latency: new_latency_histogram(),
            rates: HashMap::new(),
        }
    }
}

impl ShardStats {
    /// Counts one accepted message delivered to `domain` in `unix_sec`.
    pub fn count_rate(&mut self, domain: &str, unix_sec: u64) {
        if let Some(r) = self.rates.get_mut(domain) {
            r.count(unix_sec);
            return;
        }
        let key = if self.rates.len() < DOMAINS_MAX {
            domain
        } else {
            OTHER_DOMAIN
        };
        self.rates
            .entry(key.to_string())
            .or_default()
            .count(unix_sec);
    }

    /// Builds a report: counters copied, deltas taken (and reset here).
    pub fn take_report(&mut self, shard: usize, last: bool) -> ShardReport {
        let latency = std::mem::replace(&mut self.latency, new_latency_histogram());
        ShardReport {
            shard,
            last,
            counters: self.counters.clone(),
            latency,
            rates: std::mem::take(&mut self.rates),
        }
    }

    /// Puts back the deltas of a report the channel refused, so none is lost.
    pub fn restore(&mut self, report: ShardReport) {
        // Same bounds and units on both sides: adding cannot fail.
        self.latency
            .add(&report.latency)
            .expect("histograms share their bounds");
        for (domain, delta) in report.rates {
            let mine = self.rates.entry(domain).or_default();
            let mut merged = delta.seconds;
            for (s, n) in mine.seconds.drain(..) {
                match merged.last_mut() {
                    Some((ls, ln)) if *ls == s => *ln += n,
                    _ => merged.push((s, n)),
                }
            }
            mine.seconds = merged;
        }
    }
}

/// What a shard sends to the reporting thread.
#[derive(Debug)]
pub struct ShardReport {
    /// Shard index.
    pub shard: usize,
    /// The shard is stopping; this is its final report.
    pub last: bool,
    /// Cumulative counters (replace the previous report's).
    pub counters: Counters,
    /// Latencies since the previous report.
    pub latency: Histogram<u64>,
    /// Deliveries per domain per second since the previous report.
    pub rates: HashMap<String, RateDelta>,
}

/// Live state of one domain across shards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainLive {
    /// Connections whose domain this is, open now.
    pub connections_current: u64,
    /// Highest `connections_current` seen.
    pub connections_peak: u64,
    /// The wall-clock second of `window_messages`.
    pub window_sec: u64,
    /// Messages admitted in `window_sec` (rate-limited domains only).
    pub window_messages: u64,
}

/// Outcome of asking the board to admit something for a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Go ahead.
    Yes,
    /// The domain is over its limit: answer `421 4.7.0` and close.
    OverLimit,
}

/// The process-wide per-domain board (see the module docs).
#[derive(Debug, Default)]
pub struct DomainBoard {
    live: HashMap<String, DomainLive>,
}

impl DomainBoard {
    /// A connection learned that `domain` is its domain. Refused when the
    /// domain is at its `max_connections`; otherwise counted until
    /// [`DomainBoard::leave`].
    pub fn join(&mut self, domain: &str, profile: &Profile) -> Admit {
        let max = profile.domains.get(domain).and_then(|d| d.max_connections);
        let live = self.entry(domain);
        if max.is_some_and(|m| live.connections_current >= m) {
            return Admit::OverLimit;
        }
        live.connections_current += 1;
        live.connections_peak = live.connections_peak.max(live.connections_current);
        Admit::Yes
    }

    /// A connection counted by [`DomainBoard::join`] closed.
    pub fn leave(&mut self, domain: &str) {
        if let Some(live) = self.live.get_mut(domain) {
            // Every leave pairs with a successful join: the gauge is positive.
            assert!(live.connections_current > 0, "leave without join");
            live.connections_current -= 1;
        }
    }

    /// Takes one message slot of `domain`'s `limit` in wall-clock `unix_sec`.
    pub fn take_message(&mut self, domain: &str, limit: u64, unix_sec: u64) -> Admit {
        let live = self.entry(domain);
        if live.window_sec != unix_sec {
            live.window_sec = unix_sec;
            live.window_messages = 0;
        }
        if live.window_messages >= limit {
            return Admit::OverLimit;
        }
        live.window_messages += 1;
        Admit::Yes
    }

    /// Peak concurrent connections per domain.
    pub fn peaks(&self) -> HashMap<String, u64> {
        self.live
            .iter()
            .map(|(k, v)| (k.clone(), v.connections_peak))
            .collect()
    }

    fn entry(&mut self, domain: &str) -> &mut DomainLive {
        let key = if self.live.contains_key(domain) || self.live.len() < DOMAINS_MAX {
            domain
        } else {
            OTHER_DOMAIN
        };
        if !self.live.contains_key(key) {
            self.live.insert(key.to_string(), DomainLive::default());
        }
        // Inserted just above when missing.
        self.live.get_mut(key).expect("entry present")
    }
}

/// State shared by all shards and the reporting thread.
#[derive(Debug, Default)]
pub struct Shared {
    /// Set once on SIGINT/SIGTERM (by signal-hook, hence the `Arc`); shards
    /// poll it on their report tick.
    pub stop: Arc<AtomicBool>,
    /// Messages reserved for `--capture` so far (process-wide cap).
    pub captured: AtomicU64,
    /// Connections open in the whole process.
    pub connections_current: AtomicU64,
    /// Highest `connections_current` seen.
    pub connections_peak: AtomicU64,
    /// Per-domain limits and peaks.
    pub board: Mutex<DomainBoard>,
}

impl Shared {
    /// Counts a new connection in the process-wide gauge.
    pub fn connection_opened(&self) {
        let now = self.connections_current.fetch_add(1, Ordering::Relaxed) + 1;
        self.connections_peak.fetch_max(now, Ordering::Relaxed);
    }

    /// Counts a closed connection.
    pub fn connection_closed(&self) {
        self.connections_current.fetch_sub(1, Ordering::Relaxed);
    }

    /// Runs `f` on the board. A poisoned lock (a shard panicked while holding
    /// it) still holds consistent counts: every mutation is a few integer ops.
    pub fn with_board<T>(&self, f: impl FnOnce(&mut DomainBoard) -> T) -> T {
        let mut guard = self
            .board
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Overrides, RawProfile};

    #[test]
    fn board_limits_connections_and_rate() {
        let ov = Overrides {
            domain_rate: vec!["a.test=2".into()],
            domain_max_connections: vec!["a.test=1".into()],
            ..Overrides::default()
        };
        let p = Profile::build(RawProfile::default(), &ov).unwrap();
        let mut b = DomainBoard::default();
        assert_eq!(b.join("a.test", &p), Admit::Yes);
        assert_eq!(b.join("a.test", &p), Admit::OverLimit);
        assert_eq!(b.join("b.test", &p), Admit::Yes);
        assert_eq!(b.join("b.test", &p), Admit::Yes);
        b.leave("a.test");
        assert_eq!(b.join("a.test", &p), Admit::Yes);
        assert_eq!(b.peaks()["b.test"], 2);
        assert_eq!(b.peaks()["a.test"], 1);
        assert_eq!(b.take_message("a.test", 2, 10), Admit::Yes);
        assert_eq!(b.take_message("a.test", 2, 10), Admit::Yes);
        assert_eq!(b.take_message("a.test", 2, 10), Admit::OverLimit);
        assert_eq!(b.take_message("a.test", 2, 11), Admit::Yes);
    }

    #[test]
    fn refused_report_is_restored() {
        let mut s = ShardStats::default();
        s.count_rate("x", 5);
        s.count_rate("x", 5);
        s.latency.record(7).unwrap();
        let r = s.take_report(0, false);
        s.count_rate("x", 5);
        s.count_rate("x", 6);
        s.restore(r);
        assert_eq!(s.rates["x"].seconds, vec![(5, 3), (6, 1)]);
        assert_eq!(s.latency.len(), 1);
    }

    #[test]
    fn counters_add_and_replies() {
        let mut a = Counters::default();
        a.count_reply(250);
        a.count_reply(999);
        a.domain("d").messages += 1;
        a.actions.count_injected(Phase::Rcpt, 451);
        let mut b = a.clone();
        b.add(&a);
        assert_eq!(b.replies[50], 2);
        assert_eq!(b.domains["d"].messages, 2);
        assert_eq!(b.actions.to_json()["rcpt_451"], 2);
    }
}
