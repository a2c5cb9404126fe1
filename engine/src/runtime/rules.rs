//! The shaping rules the engine runs with, loaded once before the shards
//! start and cloned into each of them.
//!
//! # Which rules are active
//! - `[delivery] shaping = "FILE"`: the file's rules, validated by
//!   `sluice_shaping` (every problem listed with the file and key path; the
//!   binary exits with code 2). Its `[default]` section, with the crate's
//!   built-in defaults where it is silent, governs every destination:
//!   retry schedule, max age, connections, rates and backoff.
//! - No file: built-in rules synthesised from `[delivery]`, so that a
//!   configuration written before shaping was wired in behaves as it did:
//!   `[default]` gets `max_connections = connections_per_site_max x shards`
//!   (the same total the per-shard pools allowed), the `[delivery]` retry
//!   schedule, max age, deliveries per connection and recipients per
//!   transaction, and no rate limits or backoff rules. The leasing pump
//!   still runs, so the connection limit holds across shards.
//!
//! [`ActiveRules::describe`] is the line `sluice run` prints at start.

// std
use std::path::PathBuf;

// external
use sluice_shaping::config::{ConfigError, Rules};

// crate
use crate::config::Config;

/// Name under which the synthesised rules report problems (none expected:
/// the empty document is valid).
pub const BUILTIN_RULES: &str = "<built-in shaping rules>";

/// The rules and where they came from.
#[derive(Debug, Clone)]
pub struct ActiveRules {
    /// The validated rules.
    pub rules: Rules,
    /// The file they were read from; `None` for the built-in rules.
    pub file: Option<PathBuf>,
}

impl ActiveRules {
    /// Loads `config.shaping_file`, or synthesises the built-in rules from
    /// `[delivery]` for `shards` shards (see the module docs).
    pub fn load(config: &Config, shards: u32) -> Result<ActiveRules, ConfigError> {
        match &config.shaping_file {
            Some(path) => Ok(ActiveRules {
                rules: Rules::load(path)?,
                file: Some(path.clone()),
            }),
            None => {
                let mut rules = Rules::parse("", BUILTIN_RULES)?;
                let d = &config.delivery;
                let layer = &mut rules.default.layer;
                layer.max_connections = Some(d.connections_per_site_max.saturating_mul(shards));
                layer.retry_after = Some(d.retry.clone());
                layer.max_age = Some(d.max_age);
                layer.max_deliveries_per_connection = Some(d.deliveries_per_connection_max);
                layer.max_recipients_per_transaction = Some(d.recipients_per_transaction_max);
                Ok(ActiveRules { rules, file: None })
            }
        }
    }

    /// One line for the start-up layout.
    pub fn describe(&self) -> String {
        let s = self.rules.summary();
        let d = &self.rules.default.layer;
        let rate = d
            .max_message_rate
            .map_or_else(|| "none".to_string(), |r| r.to_string());
        let conns = d
            .max_connections
            .map_or_else(|| "built-in".to_string(), |n| n.to_string());
        match &self.file {
            Some(path) => format!(
                "{} ({} domain(s), {} provider(s), {} source(s), {} pool(s), {} backoff rule(s); \
                 [default] max_connections {conns}, max_message_rate {rate})",
                path.display(),
                s.domains,
                s.providers,
                s.sources,
                s.pools,
                s.backoff_rules
            ),
            None => format!(
                "built-in (no delivery.shaping file): [default] from [delivery], \
                 max_connections {conns} per site across shards, no rate limits, no backoff rules"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_rules_follow_the_delivery_section() {
        let c = Config::parse(
            "t.toml",
            "[delivery]\nconnections_per_site_max = 3\nretry = \"5s\"\nmax_age = \"1h\"\n",
            None,
        )
        .expect("valid");
        let a = ActiveRules::load(&c, 4).expect("built-in rules");
        assert!(a.file.is_none());
        let e = a.rules.effective("example.com", &[], None);
        assert_eq!(e.max_connections.value, 12);
        assert_eq!(e.max_age, std::time::Duration::from_secs(3600));
        assert!(e.max_message_rate.is_none());
        assert!(a.describe().starts_with("built-in"));
    }

    #[test]
    fn a_bad_rules_file_names_the_file_and_every_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rules = dir.path().join("shaping.toml");
        std::fs::write(
            &rules,
            "[default]\nmax_message_rate = \"fast\"\nbogus = 1\n[domain.\"a.test\"]\nmax_connections = \"x\"\n",
        )
        .expect("write");
        let cfg = format!("[delivery]\nshaping = \"{}\"\n", rules.display());
        let c = Config::parse("t.toml", &cfg, None).expect("valid engine config");
        let e = ActiveRules::load(&c, 2).expect_err("bad rules");
        let text = e.to_string();
        assert!(text.contains("shaping.toml"), "{text}");
        assert!(text.contains("max_message_rate"), "{text}");
        assert!(text.contains("bogus"), "{text}");
        assert!(text.contains("max_connections"), "{text}");
    }

    #[test]
    fn a_rules_file_is_used_as_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rules = dir.path().join("shaping.toml");
        std::fs::write(
            &rules,
            "[default]\nmax_connections = 5\n[domain.\"slow.test\"]\nmax_message_rate = \"50/s\"\n",
        )
        .expect("write");
        let c = Config::parse(
            "t.toml",
            "[delivery]\nshaping = \"shaping.toml\"\n",
            Some(dir.path()),
        )
        .expect("valid");
        let a = ActiveRules::load(&c, 2).expect("rules");
        assert_eq!(a.file.as_deref(), Some(rules.as_path()));
        let e = a.rules.effective("slow.test", &[], None);
        assert_eq!(e.max_connections.value, 5);
        assert!(e.max_message_rate.is_some());
        assert!(a.describe().contains("1 domain(s)"), "{}", a.describe());
    }
}
