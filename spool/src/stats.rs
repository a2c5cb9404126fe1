//! Counters for metrics: appends, group-commit batch sizes and latencies.

// std
use std::time::Duration;

/// Buckets in the log2 histograms.
pub const LOG2_BUCKETS: usize = 32;

/// Spool counters since open. Histograms are log2: bucket `i` counts values
/// in `[2^i, 2^(i+1))` (bucket 0 also holds 0).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SpoolStats {
    /// Messages appended.
    pub appends: u64,
    /// Bytes of message records appended.
    pub appended_bytes: u64,
    /// Completion records written.
    pub completions: u64,
    /// Deferral records written.
    pub deferrals: u64,
    /// Group commits completed.
    pub syncs: u64,
    /// Group commits that failed (the spool is poisoned after the first).
    pub sync_failures: u64,
    /// Records covered by all syncs.
    pub synced_records: u64,
    /// Largest batch (records per sync).
    pub sync_batch_records_max: u64,
    /// Sum of sync latencies.
    pub sync_time_total: Duration,
    /// Longest sync.
    pub sync_time_max: Duration,
    /// Records per sync, log2 buckets.
    pub sync_batch_records_log2: [u64; LOG2_BUCKETS],
    /// Sync latency in microseconds, log2 buckets.
    pub sync_latency_us_log2: [u64; LOG2_BUCKETS],
    /// Rotations to a new head segment, new or recycled (not counting the
    /// head made at open).
    pub segments_created: u64,
    /// Segments created on the append path because no spare was ready.
    pub inline_segment_creations: u64,
    /// Segments deleted by reclamation.
    pub segments_removed: u64,
    /// Segments recycled by reclamation (renamed, new header; kept as
    /// spares instead of deleted).
    pub segments_recycled: u64,
    /// Rotations into a recycled segment (no new file, no zero-fill).
    pub recycled_installs: u64,
    /// Recycled spares renumbered because the head overtook them while
    /// they were being prepared.
    pub renumbered_spares: u64,
    /// Messages copied to the head by relocation.
    pub relocated_messages: u64,
}

fn log2_bucket(v: u64) -> usize {
    (63 - (v | 1).leading_zeros() as usize).min(LOG2_BUCKETS - 1)
}

impl SpoolStats {
    pub(crate) fn record_sync(&mut self, records: u64, took: Duration) {
        self.syncs += 1;
        self.synced_records += records;
        self.sync_batch_records_max = self.sync_batch_records_max.max(records);
        self.sync_time_total += took;
        self.sync_time_max = self.sync_time_max.max(took);
        self.sync_batch_records_log2[log2_bucket(records)] += 1;
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sync_latency_us_log2[log2_bucket(us)] += 1;
    }

    /// Mean records per sync.
    pub fn mean_batch_records(&self) -> f64 {
        if self.syncs == 0 {
            0.0
        } else {
            self.synced_records as f64 / self.syncs as f64
        }
    }

    /// Mean sync latency.
    pub fn mean_sync_time(&self) -> Duration {
        if self.syncs == 0 {
            Duration::ZERO
        } else {
            self.sync_time_total / u32::try_from(self.syncs).unwrap_or(u32::MAX)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets() {
        assert_eq!(log2_bucket(0), 0);
        assert_eq!(log2_bucket(1), 0);
        assert_eq!(log2_bucket(2), 1);
        assert_eq!(log2_bucket(3), 1);
        assert_eq!(log2_bucket(1024), 10);
        assert_eq!(log2_bucket(u64::MAX), LOG2_BUCKETS - 1);
    }
}
