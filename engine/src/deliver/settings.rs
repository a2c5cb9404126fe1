//! Delivery settings: the `[delivery]` keys of the configuration, validated.

// std
use std::path::{Path, PathBuf};
use std::time::Duration;

// external
use sluice_shaping::units::{parse_duration, parse_retry, RetrySchedule};

// crate
use crate::config::RawDelivery;

/// Validated delivery settings (defaults in parentheses in each field).
#[derive(Debug, Clone, PartialEq)]
pub struct DeliverySettings {
    /// Connections per site per shard (32).
    pub connections_per_site_max: u32,
    /// Transactions on one connection before it retires (1000).
    pub deliveries_per_connection_max: u32,
    /// Transactions pipelined back to back on a connection (8).
    pub transactions_in_flight_max: u32,
    /// Recipients per transaction (100, RFC 5321 §4.5.3.1.8).
    pub recipients_per_transaction_max: u32,
    /// Retry schedule after a temporary failure
    /// (`exp(30m, x2, max 8h, jitter 10%)`: RFC 5321 §4.5.4.1 asks for at
    /// least 30 minutes).
    pub retry: RetrySchedule,
    /// Longest a recipient stays queued (5 days, §4.5.4.1 "4-5 days").
    pub max_age: Duration,
    /// TCP connect timeout (30 s).
    pub connect_timeout: Duration,
    /// Overrides every RFC 5321 §4.5.3.2 reply timeout when set (tests).
    pub reply_timeout: Option<Duration>,
    /// An idle connection closes after this long without work (2 s).
    pub idle_close: Duration,
    /// Directory of the delivery logs (`<spool dir>/../log`).
    pub log_dir: PathBuf,
    /// How often the delivery log is written out (100 ms).
    pub log_flush: Duration,
}

fn default_retry() -> RetrySchedule {
    RetrySchedule::Exponential {
        initial: Duration::from_secs(30 * 60),
        factor: 2,
        max: Duration::from_secs(8 * 3600),
        jitter_percent: 10,
    }
}

impl DeliverySettings {
    /// Validates the raw keys, reporting each problem under `delivery.KEY`.
    pub fn from_raw(
        raw: &RawDelivery,
        spool_dir: &Path,
        base: Option<&Path>,
        bad: &mut dyn FnMut(&str, String),
    ) -> DeliverySettings {
        let mut count = |key: &str, v: Option<u32>, default: u32, min: u32| match v {
            None => default,
            Some(n) if n >= min => n,
            Some(n) => {
                bad(
                    &format!("delivery.{key}"),
                    format!("{n}: must be at least {min}"),
                );
                default
            }
        };
        let connections_per_site_max = count(
            "connections_per_site_max",
            raw.connections_per_site_max,
            32,
            1,
        );
        let deliveries_per_connection_max = count(
            "deliveries_per_connection_max",
            raw.deliveries_per_connection_max,
            1000,
            1,
        );
        let transactions_in_flight_max = count(
            "transactions_in_flight_max",
            raw.transactions_in_flight_max,
            8,
            1,
        );
        let recipients_per_transaction_max = count(
            "recipients_per_transaction_max",
            raw.recipients_per_transaction_max,
            100,
            1,
        );
        let mut duration = |key: &str, v: &Option<String>, default: Duration| match v {
            None => default,
            Some(text) => parse_duration(text).unwrap_or_else(|e| {
                bad(&format!("delivery.{key}"), format!("`{text}`: {e}"));
                default
            }),
        };
        let max_age = duration("max_age", &raw.max_age, Duration::from_secs(5 * 24 * 3600));
        let connect_timeout = duration(
            "connect_timeout",
            &raw.connect_timeout,
            Duration::from_secs(30),
        );
        let reply_timeout = raw.reply_timeout.as_ref().map(|_| {
            duration(
                "reply_timeout",
                &raw.reply_timeout,
                Duration::from_secs(300),
            )
        });
        let idle_close = duration("idle_close", &raw.idle_close, Duration::from_secs(2));
        let log_flush = duration("log_flush", &raw.log_flush, Duration::from_millis(100));
        let retry = match &raw.retry {
            None => default_retry(),
            Some(text) => parse_retry(text).unwrap_or_else(|e| {
                bad("delivery.retry", format!("`{text}`: {e}; e.g. \"10m,30m,2h\" or \"exp(30m, x2, max 8h, jitter 10%)\""));
                default_retry()
            }),
        };
        if max_age.is_zero() {
            bad("delivery.max_age", "must be longer than 0s".into());
        }
        let log_dir = match &raw.log_dir {
            Some(p) => match base {
                Some(b) if p.is_relative() => b.join(p),
                _ => p.clone(),
            },
            None => match spool_dir.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent.join("log"),
                _ => PathBuf::from("log"),
            },
        };
        DeliverySettings {
            connections_per_site_max,
            deliveries_per_connection_max,
            transactions_in_flight_max,
            recipients_per_transaction_max,
            retry,
            max_age,
            connect_timeout,
            reply_timeout,
            idle_close,
            log_dir,
            log_flush,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn defaults_and_overrides() {
        let c = Config::parse("t.toml", "[spool]\ndir = \"/var/sluice/spool\"\n", None).unwrap();
        let d = &c.delivery;
        assert_eq!(d.connections_per_site_max, 32);
        assert_eq!(d.max_age, Duration::from_secs(5 * 24 * 3600));
        assert_eq!(d.log_dir, PathBuf::from("/var/sluice/log"));
        assert!(d.retry.shortest() >= Duration::from_secs(27 * 60));
        let text = "[delivery]\nretry = \"1s,2s\"\nmax_age = \"1m\"\nreply_timeout = \"5s\"\nconnections_per_site_max = 4\n";
        let c = Config::parse("t.toml", text, None).unwrap();
        assert_eq!(c.delivery.retry.delay(0, 0), Duration::from_secs(1));
        assert_eq!(c.delivery.retry.delay(5, 0), Duration::from_secs(2));
        assert_eq!(c.delivery.reply_timeout, Some(Duration::from_secs(5)));
        assert_eq!(c.delivery.connections_per_site_max, 4);
    }

    #[test]
    fn bad_values_name_their_keys() {
        let text = "[delivery]\nretry = \"soon\"\nmax_age = \"0s\"\nconnections_per_site_max = 0\nidle_close = \"x\"\n";
        let err = Config::parse("t.toml", text, None).unwrap_err().to_string();
        for k in [
            "delivery.retry",
            "delivery.max_age",
            "delivery.connections_per_site_max",
            "delivery.idle_close",
        ] {
            assert!(err.contains(k), "{k} missing in {err}");
        }
    }
}
