//! Metrics: a shard's counters copied into a plain [`ShardSnapshot`] (on
//! the shard, when the admin listener asks through the shard's mailbox)
//! and rendered as Prometheus text exposition format (version 0.0.4) by
//! the admin thread. Shards keep their counters in `Cell`s and never
//! touch an atomic or a lock for them; a scrape costs each shard one
//! mailbox round trip.

// std
use std::collections::BTreeMap;
use std::fmt::Write as _;

// external
use sluice_spool::SpoolStats;

// crate
use crate::accounting::{DeliveryMetrics, LatencyHistogram, LATENCY_BOUNDS_S};
use crate::deliver::DeliveryStats;
use crate::inject::InjectStats;
use crate::log::LogStats;
use crate::queue::QueueCounts;

/// Everything one shard reports.
#[derive(Debug, Clone, Default)]
pub struct ShardSnapshot {
    /// Shard index.
    pub shard: u32,
    /// Injection counters.
    pub inject: InjectStats,
    /// Injection connections open now.
    pub inject_open: u32,
    /// Delivery counters.
    pub delivery: DeliveryStats,
    /// Outbound connections open now, by site name.
    pub outbound_open: BTreeMap<String, u32>,
    /// Where queued recipients are.
    pub queues: QueueCounts,
    /// Ready + scheduled recipients by site name.
    pub queued_by_site: BTreeMap<String, u64>,
    /// Spool counters.
    pub spool: SpoolStats,
    /// Live messages in the spool.
    pub spool_live: u64,
    /// Segment files.
    pub spool_segments: u64,
    /// Bytes reserved by the segment files.
    pub spool_bytes: u64,
    /// Accounting log counters.
    pub log: LogStats,
    /// Latency, bounces by site and category, DSNs.
    pub acct: DeliveryMetrics,
    /// Bounce rules reloads applied.
    pub bounce_rules_reloads: u64,
    /// Shaping reloads and the size of the shaping state.
    pub shaping: ShapingCounts,
}

/// A shard's shaping reloads and state size.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShapingCounts {
    /// Shaping rules reloads applied.
    pub reloads: u64,
    /// Shaping destinations cached now.
    pub destinations: u64,
    /// Limits the shard's shaper holds now.
    pub limits: u64,
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn per_shard(
        &mut self,
        shards: &[ShardSnapshot],
        name: &str,
        kind: &str,
        help: &str,
        f: impl Fn(&ShardSnapshot) -> u64,
    ) {
        self.head(name, kind, help);
        for s in shards {
            let _ = writeln!(self.0, "{name}{{shard=\"{}\"}} {}", s.shard, f(s));
        }
    }

    fn labelled(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        let _ = writeln!(self.0, "{name}{{{labels}}} {value}");
    }
}

/// Prometheus `le` bound of log2 bucket `i` of an integer histogram
/// (bucket `i` holds `[2^i, 2^(i+1))`, bucket 0 also 0).
fn log2_le(i: usize) -> u64 {
    (1u64 << (i + 1).min(63)) - 1
}

/// Renders every shard's snapshot as Prometheus text.
pub fn render(shards: &[ShardSnapshot]) -> String {
    let mut o = Out(String::with_capacity(16 << 10));
    o.per_shard(
        shards,
        "sluice_messages_received_total",
        "counter",
        "Messages accepted with 250 after a completed group commit.",
        |s| s.inject.accepted,
    );
    o.per_shard(
        shards,
        "sluice_messages_refused_total",
        "counter",
        "Messages answered 4xx/5xx by injection (spool faults, no room).",
        |s| s.inject.failed,
    );
    o.per_shard(
        shards,
        "sluice_unknown_tenant_messages_total",
        "counter",
        "Messages whose tenant header named a tenant without a [tenants] table (accepted as a free label).",
        |s| s.inject.unknown_tenants,
    );
    o.per_shard(
        shards,
        "sluice_recipients_received_total",
        "counter",
        "Recipients of accepted messages (Reception records), bounces included.",
        |s| s.acct.received_recipients,
    );
    o.per_shard(
        shards,
        "sluice_recipients_delivered_total",
        "counter",
        "Recipients accepted by the next hop.",
        |s| s.delivery.delivered,
    );
    o.per_shard(
        shards,
        "sluice_recipients_transient_failures_total",
        "counter",
        "Temporary failures (each is retried).",
        |s| s.delivery.deferred,
    );
    o.per_shard(
        shards,
        "sluice_recipients_bounced_total",
        "counter",
        "Recipients failed permanently (5xx, shaping rule, admin bounce).",
        |s| s.delivery.bounced,
    );
    o.per_shard(
        shards,
        "sluice_recipients_expired_total",
        "counter",
        "Recipients that outlived their max age.",
        |s| s.delivery.expired,
    );
    type ByKey<'a> = BTreeMap<(&'a str, &'a str, &'static str), u64>;
    let mut bounced: ByKey = BTreeMap::new();
    let mut transient: ByKey = BTreeMap::new();
    for s in shards {
        for ((site, source, cat), n) in &s.acct.bounced {
            *bounced.entry((site, source, cat.name())).or_insert(0) += n;
        }
        for ((site, source, cat), n) in &s.acct.transient {
            *transient.entry((site, source, cat.name())).or_insert(0) += n;
        }
    }
    for (name, help, map) in [
        (
            "sluice_bounces_total",
            "Bounces and expirations by site, source (the bound source, else the site's pool) and bounce category.",
            &bounced,
        ),
        (
            "sluice_transient_failures_total",
            "Temporary failures by site, source (the bound source, else the site's pool) and bounce category.",
            &transient,
        ),
    ] {
        o.head(name, "counter", help);
        for ((site, source, cat), n) in map {
            o.labelled(
                name,
                &format!(
                    "site=\"{}\",source=\"{}\",category=\"{cat}\"",
                    esc(site),
                    esc(source)
                ),
                n,
            );
        }
    }
    o.per_shard(
        shards,
        "sluice_dsns_queued_total",
        "counter",
        "RFC 3464 bounce messages queued to senders.",
        |s| s.acct.dsns_queued,
    );
    o.per_shard(
        shards,
        "sluice_dsns_failed_total",
        "counter",
        "Bounce messages that could not be built or spooled.",
        |s| s.acct.dsns_failed,
    );
    // Queues.
    o.head(
        "sluice_queue_recipients",
        "gauge",
        "Queued recipients by place (ready, scheduled, in_flight, expired).",
    );
    for s in shards {
        for (place, n) in [
            ("ready", s.queues.ready),
            ("scheduled", s.queues.scheduled),
            ("in_flight", s.queues.in_flight),
            ("expired", s.queues.expired),
        ] {
            o.labelled(
                "sluice_queue_recipients",
                &format!("shard=\"{}\",place=\"{place}\"", s.shard),
                n,
            );
        }
    }
    o.head(
        "sluice_queue_site_recipients",
        "gauge",
        "Ready and scheduled recipients by site.",
    );
    let mut by_site: BTreeMap<&str, u64> = BTreeMap::new();
    for s in shards {
        for (site, n) in &s.queued_by_site {
            *by_site.entry(site).or_insert(0) += n;
        }
    }
    for (site, n) in by_site {
        o.labelled(
            "sluice_queue_site_recipients",
            &format!("site=\"{}\"", esc(site)),
            n,
        );
    }
    o.per_shard(
        shards,
        "sluice_queue_destinations",
        "gauge",
        "Destinations (recipient domains) known.",
        |s| s.queues.destinations as u64,
    );
    // Connections.
    o.per_shard(
        shards,
        "sluice_inject_connections",
        "gauge",
        "Injection connections open.",
        |s| u64::from(s.inject_open),
    );
    o.per_shard(
        shards,
        "sluice_inject_connections_total",
        "counter",
        "Injection connections served.",
        |s| s.inject.connections,
    );
    o.per_shard(
        shards,
        "sluice_inject_connections_refused_total",
        "counter",
        "Injection connections refused at connect (421).",
        |s| s.inject.refused,
    );
    o.head(
        "sluice_outbound_connections",
        "gauge",
        "Delivery connections open or opening, by site.",
    );
    let mut open: BTreeMap<&str, u64> = BTreeMap::new();
    for s in shards {
        for (site, n) in &s.outbound_open {
            *open.entry(site).or_insert(0) += u64::from(*n);
        }
    }
    for (site, n) in open {
        o.labelled(
            "sluice_outbound_connections",
            &format!("site=\"{}\"", esc(site)),
            n,
        );
    }
    o.per_shard(
        shards,
        "sluice_outbound_connections_total",
        "counter",
        "Delivery connections opened.",
        |s| s.delivery.connections,
    );
    o.per_shard(
        shards,
        "sluice_outbound_connect_failures_total",
        "counter",
        "Delivery connect attempts that failed.",
        |s| s.delivery.connect_failures,
    );
    // Spool.
    o.per_shard(
        shards,
        "sluice_spool_bytes",
        "gauge",
        "Bytes reserved by spool segment files.",
        |s| s.spool_bytes,
    );
    o.per_shard(
        shards,
        "sluice_spool_segments",
        "gauge",
        "Spool segment files.",
        |s| s.spool_segments,
    );
    o.per_shard(
        shards,
        "sluice_spool_live_messages",
        "gauge",
        "Messages in the spool with recipients not yet completed.",
        |s| s.spool_live,
    );
    o.per_shard(
        shards,
        "sluice_spool_appended_bytes_total",
        "counter",
        "Bytes of message records appended.",
        |s| s.spool.appended_bytes,
    );
    o.per_shard(
        shards,
        "sluice_spool_errors_total",
        "counter",
        "Completion or deferral records that could not be written.",
        |s| s.delivery.spool_errors,
    );
    o.per_shard(
        shards,
        "sluice_group_commit_failures_total",
        "counter",
        "Group commits (fdatasync) that failed.",
        |s| s.spool.sync_failures,
    );
    // Group commit histograms (log2 buckets from the spool).
    o.head(
        "sluice_group_commit_batch_records",
        "histogram",
        "Records covered by one group commit (fdatasync).",
    );
    for s in shards {
        let mut cum = 0u64;
        for (i, n) in s.spool.sync_batch_records_log2.iter().enumerate() {
            cum += n;
            o.labelled(
                "sluice_group_commit_batch_records_bucket",
                &format!("shard=\"{}\",le=\"{}\"", s.shard, log2_le(i)),
                cum,
            );
        }
        o.labelled(
            "sluice_group_commit_batch_records_bucket",
            &format!("shard=\"{}\",le=\"+Inf\"", s.shard),
            s.spool.syncs,
        );
        o.labelled(
            "sluice_group_commit_batch_records_sum",
            &format!("shard=\"{}\"", s.shard),
            s.spool.synced_records,
        );
        o.labelled(
            "sluice_group_commit_batch_records_count",
            &format!("shard=\"{}\"", s.shard),
            s.spool.syncs,
        );
    }
    o.head(
        "sluice_group_commit_seconds",
        "histogram",
        "Latency of one group commit (fdatasync through io_uring).",
    );
    for s in shards {
        let mut cum = 0u64;
        for (i, n) in s.spool.sync_latency_us_log2.iter().enumerate() {
            cum += n;
            let le = (log2_le(i) + 1) as f64 / 1e6;
            o.labelled(
                "sluice_group_commit_seconds_bucket",
                &format!("shard=\"{}\",le=\"{le}\"", s.shard),
                cum,
            );
        }
        o.labelled(
            "sluice_group_commit_seconds_bucket",
            &format!("shard=\"{}\",le=\"+Inf\"", s.shard),
            s.spool.syncs,
        );
        o.labelled(
            "sluice_group_commit_seconds_sum",
            &format!("shard=\"{}\"", s.shard),
            s.spool.sync_time_total.as_secs_f64(),
        );
        o.labelled(
            "sluice_group_commit_seconds_count",
            &format!("shard=\"{}\"", s.shard),
            s.spool.syncs,
        );
    }
    // Delivery latency, all shards.
    let mut lat = LatencyHistogram::default();
    for s in shards {
        lat.merge(&s.acct.latency);
    }
    o.head(
        "sluice_delivery_latency_seconds",
        "histogram",
        "From arrival to the next hop's 2xx, retries included.",
    );
    let mut cum = 0u64;
    for (i, b) in LATENCY_BOUNDS_S.iter().enumerate() {
        cum += lat.buckets[i];
        o.labelled(
            "sluice_delivery_latency_seconds_bucket",
            &format!("le=\"{b}\""),
            cum,
        );
    }
    o.labelled(
        "sluice_delivery_latency_seconds_bucket",
        "le=\"+Inf\"",
        lat.count,
    );
    let _ = writeln!(o.0, "sluice_delivery_latency_seconds_sum {}", lat.sum_s);
    let _ = writeln!(o.0, "sluice_delivery_latency_seconds_count {}", lat.count);
    // Accounting log.
    o.per_shard(
        shards,
        "sluice_log_records_total",
        "counter",
        "Accounting records buffered.",
        |s| s.log.records,
    );
    o.per_shard(
        shards,
        "sluice_log_records_dropped_total",
        "counter",
        "Accounting records dropped because the buffer was full.",
        |s| s.log.dropped,
    );
    o.per_shard(
        shards,
        "sluice_log_records_lost_total",
        "counter",
        "Accounting records lost to failed writes (disk full, I/O errors).",
        |s| s.log.lost,
    );
    o.per_shard(
        shards,
        "sluice_log_write_errors_total",
        "counter",
        "Failed accounting log writes or file creations.",
        |s| s.log.write_errors,
    );
    o.per_shard(
        shards,
        "sluice_log_bytes_written_total",
        "counter",
        "Bytes written to accounting log files.",
        |s| s.log.bytes_written,
    );
    // Reloads and shaping state.
    o.per_shard(
        shards,
        "sluice_bounce_rules_reloads_total",
        "counter",
        "Bounce rules reloads applied (sluice reload).",
        |s| s.bounce_rules_reloads,
    );
    o.per_shard(
        shards,
        "sluice_shaping_reloads_total",
        "counter",
        "Shaping rules reloads applied (sluice reload).",
        |s| s.shaping.reloads,
    );
    o.per_shard(
        shards,
        "sluice_shaping_destinations",
        "gauge",
        "Shaping destinations cached (swept when unused for 30 s).",
        |s| s.shaping.destinations,
    );
    o.per_shard(
        shards,
        "sluice_shaping_limits",
        "gauge",
        "Shaping limits held (registered, or lent as their home shard).",
        |s| s.shaping.limits,
    );
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_escaped_labels() {
        let mut s = ShardSnapshot::default();
        s.inject.accepted = 3;
        s.acct.latency.observe(7);
        s.acct.bounced.insert(
            (
                "a\"b".into(),
                String::new(),
                sluice_outcomes::Category::BadMailbox,
            ),
            2,
        );
        s.spool.syncs = 1;
        s.spool.synced_records = 5;
        s.spool.sync_batch_records_log2[2] = 1;
        let text = render(&[s]);
        assert!(text.contains("sluice_messages_received_total{shard=\"0\"} 3"));
        assert!(text.contains(
            "sluice_bounces_total{site=\"a\\\"b\",source=\"\",category=\"bad-mailbox\"} 2"
        ));
        assert!(text.contains("sluice_delivery_latency_seconds_bucket{le=\"0.01\"} 1"));
        assert!(text.contains("sluice_group_commit_batch_records_bucket{shard=\"0\",le=\"7\"} 1"));
        assert!(text.contains("sluice_group_commit_batch_records_bucket{shard=\"0\",le=\"3\"} 0"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert_eq!(line.split(' ').count(), 2, "{line}");
        }
    }
}
