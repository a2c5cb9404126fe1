//! Counters kept by each executor and merged by the collector.
//!
//! Each executor owns a [`ShardStats`] (plain fields, no atomics) and, once
//! per reporting interval, sends a [`ShardReport`] over a bounded channel: its
//! cumulative counters and the latency histogram of the interval just ended.
//! The [`Collector`] on the main thread merges those into run totals, the
//! rate timeline and the interval log.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::hdr::{latency_histogram, IntervalStore};
use crate::Error;

/// Why a message or a connection failed; the key of the error tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    /// A reply with this code (message failures).
    Code(u16),
    /// TCP connect refused.
    ConnectRefused,
    /// TCP connect failed otherwise (unreachable, timeout).
    ConnectFailed,
    /// The server closed or reset the connection with transactions in flight.
    ConnectionLost,
    /// No reply within the timeout.
    Timeout,
    /// TLS setup or record failure.
    Tls,
    /// The server broke the protocol (bad reply syntax, unexpected reply).
    Protocol,
    /// The greeting, EHLO, STARTTLS or AUTH was refused.
    SessionRefused,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Code(code) => write!(f, "{code}"),
            ErrorKind::ConnectRefused => f.write_str("connect_refused"),
            ErrorKind::ConnectFailed => f.write_str("connect_failed"),
            ErrorKind::ConnectionLost => f.write_str("connection_lost"),
            ErrorKind::Timeout => f.write_str("timeout"),
            ErrorKind::Tls => f.write_str("tls"),
            ErrorKind::Protocol => f.write_str("protocol"),
            ErrorKind::SessionRefused => f.write_str("session_refused"),
        }
    }
}

/// Cumulative counters of one executor, or of the whole run once merged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Transactions started (MAIL written).
    pub sent: u64,
    /// Messages whose final reply was 2xx.
    pub accepted: u64,
    /// Messages that failed (reply code, or lost with their connection).
    pub failed: u64,
    /// Recipients accepted in accepted messages.
    pub recipients_accepted: u64,
    /// Recipients refused (the message may still have been accepted).
    pub recipients_rejected: u64,
    /// Message bytes of accepted messages (before dot-stuffing).
    pub bytes: u64,
    /// Connections that reached a usable session (greeting + EHLO done).
    pub connections: u64,
    /// Message failures by cause.
    pub errors: BTreeMap<ErrorKind, u64>,
    /// Connection failures by cause.
    pub connection_errors: BTreeMap<ErrorKind, u64>,
}

impl Counters {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Counters) {
        self.sent += other.sent;
        self.accepted += other.accepted;
        self.failed += other.failed;
        self.recipients_accepted += other.recipients_accepted;
        self.recipients_rejected += other.recipients_rejected;
        self.bytes += other.bytes;
        self.connections += other.connections;
        for (k, v) in &other.errors {
            *self.errors.entry(*k).or_default() += v;
        }
        for (k, v) in &other.connection_errors {
            *self.connection_errors.entry(*k).or_default() += v;
        }
    }

    /// Messages finished either way.
    pub fn finished(&self) -> u64 {
        self.accepted + self.failed
    }

    /// Total connection failures.
    pub fn connection_failures(&self) -> u64 {
        self.connection_errors.values().sum()
    }
}

/// The state one executor keeps while it runs.
#[derive(Debug)]
pub struct ShardStats {
    /// Cumulative counters.
    pub counters: Counters,
    /// Latencies (µs) of messages accepted in the current interval.
    pub interval: Histogram<u64>,
    /// Set once any connection gave up for good (e.g. refused).
    pub fatal: Option<String>,
}

impl Default for ShardStats {
    fn default() -> Self {
        ShardStats {
            counters: Counters::default(),
            interval: latency_histogram(),
            fatal: None,
        }
    }
}

impl ShardStats {
    /// Records an accepted message.
    pub fn accepted(&mut self, latency: Duration, recipients: u64, bytes: u64) {
        self.counters.accepted += 1;
        self.counters.recipients_accepted += recipients;
        self.counters.bytes += bytes;
        self.interval
            .saturating_record((latency.as_micros() as u64).max(1));
    }

    /// Records a failed message.
    pub fn failed(&mut self, kind: ErrorKind) {
        self.counters.failed += 1;
        *self.counters.errors.entry(kind).or_default() += 1;
    }

    /// Records a connection failure.
    pub fn connection_failed(&mut self, kind: ErrorKind) {
        *self.counters.connection_errors.entry(kind).or_default() += 1;
    }

    /// Builds the report for interval `index` and starts a new interval.
    pub fn report(&mut self, shard: usize, index: u64, last: bool, at: Duration) -> ShardReport {
        let interval = std::mem::replace(&mut self.interval, latency_histogram());
        ShardReport {
            shard,
            index,
            last,
            at,
            counters: self.counters.clone(),
            interval,
            fatal: self.fatal.clone(),
        }
    }

    /// Puts back an interval that could not be sent (channel full), so its
    /// samples go out with the next report.
    pub fn restore(&mut self, report: ShardReport) {
        // Infallible: both histograms come from `latency_histogram` (same bounds).
        let _ = self.interval.add(&report.interval);
    }
}

/// What an executor sends to the collector once per interval.
#[derive(Debug)]
pub struct ShardReport {
    /// Executor number.
    pub shard: usize,
    /// Interval number: the interval covers `[index, index + 1) * interval`.
    pub index: u64,
    /// True for the executor's final report.
    pub last: bool,
    /// When the report was made, since the run started (for the final
    /// report: when the executor's last connection finished).
    pub at: Duration,
    /// Cumulative counters.
    pub counters: Counters,
    /// Latencies recorded during the interval.
    pub interval: Histogram<u64>,
    /// Why the executor gave up, if it did.
    pub fatal: Option<String>,
}

/// One point of the rate timeline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RatePoint {
    /// End of the interval, seconds since the start.
    pub at_secs: f64,
    /// Messages accepted per second during the interval.
    pub accepted_per_sec: f64,
}

/// Merges executor reports on the main thread.
#[derive(Debug)]
pub struct Collector {
    interval: Duration,
    latest: Vec<Counters>,
    reported_through: Vec<Option<u64>>,
    finished: Vec<bool>,
    pending: BTreeMap<u64, Histogram<u64>>,
    /// All accepted latencies of the run.
    pub total: Histogram<u64>,
    /// Accepted-per-second for each closed interval.
    pub timeline: Vec<RatePoint>,
    /// Interval histograms for the `.hlog`.
    pub intervals: IntervalStore,
    /// First fatal reason reported by an executor.
    pub fatal: Option<String>,
    /// Latest `at` of the executors' final reports.
    pub finished_at: Duration,
}

impl Collector {
    /// A collector for `shards` executors reporting every `interval`.
    pub fn new(shards: usize, interval: Duration) -> Self {
        Collector {
            interval,
            latest: vec![Counters::default(); shards],
            reported_through: vec![None; shards],
            finished: vec![false; shards],
            pending: BTreeMap::new(),
            total: latency_histogram(),
            timeline: Vec::new(),
            intervals: IntervalStore::default(),
            fatal: None,
            finished_at: Duration::ZERO,
        }
    }

    /// Takes in one report and closes every interval all live executors have
    /// reported.
    pub fn add(&mut self, report: ShardReport) -> Result<(), Error> {
        let shard = report.shard;
        self.latest[shard] = report.counters;
        self.reported_through[shard] = Some(report.index);
        self.finished[shard] |= report.last;
        if report.last {
            self.finished_at = self.finished_at.max(report.at);
        }
        if self.fatal.is_none() {
            self.fatal = report.fatal;
        }
        // Infallible: all histograms share the bounds of `latency_histogram`.
        let _ = self.total.add(&report.interval);
        match self.pending.get_mut(&report.index) {
            Some(h) => {
                let _ = h.add(&report.interval);
            }
            None => {
                self.pending.insert(report.index, report.interval);
            }
        }
        self.close_ready(false)
    }

    /// Closes all remaining intervals (call once every executor is done).
    pub fn finish(&mut self) -> Result<(), Error> {
        self.close_ready(true)
    }

    fn close_ready(&mut self, all: bool) -> Result<(), Error> {
        // Interval k is complete once every unfinished executor reported k.
        let through = (0..self.latest.len())
            .filter(|&s| !self.finished[s])
            .map(|s| self.reported_through[s])
            .min()
            .unwrap_or(Some(u64::MAX));
        while let Some((&index, _)) = self.pending.first_key_value() {
            let ready = all || through.is_some_and(|t| index <= t);
            if !ready {
                break;
            }
            // Infallible: the key was just seen.
            let hist = self.pending.remove(&index).expect("key present");
            let start = self.interval * index as u32;
            self.intervals.push(start, self.interval, &hist)?;
            self.timeline.push(RatePoint {
                at_secs: (start + self.interval).as_secs_f64(),
                accepted_per_sec: hist.len() as f64 / self.interval.as_secs_f64(),
            });
        }
        Ok(())
    }

    /// Counters summed over all executors (as of their latest reports).
    pub fn counters(&self) -> Counters {
        let mut sum = Counters::default();
        for c in &self.latest {
            sum.merge(c);
        }
        sum
    }

    /// True once every executor sent its final report.
    pub fn all_finished(&self) -> bool {
        self.finished.iter().all(|f| *f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collector_merges_and_orders_intervals() {
        let mut c = Collector::new(2, Duration::from_secs(1));
        let mut a = ShardStats::default();
        let mut b = ShardStats::default();
        a.accepted(Duration::from_millis(2), 1, 100);
        a.failed(ErrorKind::Code(550));
        c.add(a.report(0, 0, false, Duration::ZERO)).unwrap();
        // Shard 1 has not reported interval 0: nothing closed yet.
        assert!(c.timeline.is_empty());
        b.accepted(Duration::from_millis(3), 2, 200);
        b.accepted(Duration::from_millis(4), 1, 200);
        c.add(b.report(1, 0, false, Duration::ZERO)).unwrap();
        assert_eq!(c.timeline.len(), 1);
        assert_eq!(c.timeline[0].accepted_per_sec, 3.0);
        a.accepted(Duration::from_millis(5), 1, 100);
        c.add(a.report(0, 1, true, Duration::ZERO)).unwrap();
        assert_eq!(c.timeline.len(), 1, "shard 1 still owes interval 1");
        c.add(b.report(1, 1, true, Duration::ZERO)).unwrap();
        c.finish().unwrap();
        assert_eq!(c.timeline.len(), 2);
        let total = c.counters();
        assert_eq!(total.accepted, 4);
        assert_eq!(total.failed, 1);
        assert_eq!(total.recipients_accepted, 5);
        assert_eq!(total.bytes, 600);
        assert_eq!(total.errors.get(&ErrorKind::Code(550)), Some(&1));
        assert_eq!(c.total.len(), 4);
        assert_eq!(c.intervals.len(), 2);
        assert!(c.all_finished());
    }

    #[test]
    fn finished_shard_does_not_hold_back_intervals() {
        let mut c = Collector::new(2, Duration::from_secs(1));
        let mut a = ShardStats::default();
        let mut b = ShardStats::default();
        c.add(a.report(0, 0, true, Duration::ZERO)).unwrap();
        for k in 0..3 {
            b.accepted(Duration::from_millis(1), 1, 1);
            c.add(b.report(1, k, false, Duration::ZERO)).unwrap();
        }
        assert_eq!(c.timeline.len(), 3);
    }

    #[test]
    fn restore_keeps_samples() {
        let mut a = ShardStats::default();
        a.accepted(Duration::from_millis(1), 1, 1);
        let r = a.report(0, 0, false, Duration::ZERO);
        a.restore(r);
        assert_eq!(a.interval.len(), 1);
    }
}
