//! The shaping rules file: parsing, validation and the validated [`Rules`].
//!
//! Loading goes in three steps. TOML syntax first (an error names the line).
//! Then each section entry is deserialized on its own through
//! `serde_path_to_error`, so an unknown key or a wrong type is reported with
//! its full key path, and one bad entry does not hide the problems of the
//! others. Finally `Rules::try_from(RawConfig)` parses every quantity and
//! checks every cross-reference, collecting all problems before failing.

mod raw;
mod resolve;
mod validate;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::backoff::BackoffRule;
use crate::units::{Rate, RetrySchedule};
pub use raw::{RawBackoff, RawMatch, RawPool, RawRule, RawSource, RawWarmup, RawWarmupStep};
pub use resolve::{EffectiveRule, Limit, RuleCache};

/// One problem found in a rules file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The key path, e.g. `domain."example.com".max_message_rate`.
    pub path: String,
    /// What is wrong and, where possible, what would be right.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// Why a rules file was rejected.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read the file: {source}")]
    Io {
        /// The file.
        file: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{file}: TOML syntax error: {message}")]
    Syntax {
        /// The file.
        file: String,
        /// The parser's message (with line and column).
        message: String,
    },
    /// The file is TOML but its content has problems (all are listed).
    #[error("{file}: {} problem(s):\n{}", problems.len(), list(file, problems))]
    Invalid {
        /// The file.
        file: String,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

fn list(file: &str, problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {file}: {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The whole file as written.
#[derive(Clone, Debug, Default)]
pub struct RawConfig {
    /// `[default]`.
    pub default: RawRule,
    /// `[domain."name"]`.
    pub domain: BTreeMap<String, RawRule>,
    /// `[provider.name]`.
    pub provider: BTreeMap<String, RawRule>,
    /// `[source.name]`.
    pub source: BTreeMap<String, RawSource>,
    /// `[pool.name]`.
    pub pool: BTreeMap<String, RawPool>,
    /// `[warmup.name]`.
    pub warmup: BTreeMap<String, RawWarmup>,
    /// Key paths of entries that failed to deserialize (already reported):
    /// references to them are not reported again.
    pub broken: Vec<String>,
}

/// TLS policy towards a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsPolicy {
    /// Never STARTTLS.
    Disabled,
    /// STARTTLS when offered; fall back to plaintext if it fails.
    Opportunistic,
    /// STARTTLS or no delivery; any certificate.
    Required,
    /// STARTTLS with a verified certificate, or no delivery.
    RequiredVerified,
}

impl TlsPolicy {
    /// Parses `disabled`, `opportunistic`, `required`, `required-verified`.
    pub fn parse(text: &str) -> Option<TlsPolicy> {
        Some(match text {
            "disabled" => TlsPolicy::Disabled,
            "opportunistic" => TlsPolicy::Opportunistic,
            "required" => TlsPolicy::Required,
            "required-verified" => TlsPolicy::RequiredVerified,
            _ => return None,
        })
    }
}

/// One layer of settings; `None` means "not set here".
#[derive(Clone, Debug, Default)]
pub struct Layer {
    /// Simultaneous connections.
    pub max_connections: Option<u32>,
    /// Messages per period.
    pub max_message_rate: Option<Rate>,
    /// New connections per period.
    pub max_connection_rate: Option<Rate>,
    /// Messages per connection.
    pub max_deliveries_per_connection: Option<u32>,
    /// Recipients per transaction.
    pub max_recipients_per_transaction: Option<u32>,
    /// Connect plus greeting.
    pub connect_timeout: Option<Duration>,
    /// Each command.
    pub command_timeout: Option<Duration>,
    /// The final dot.
    pub data_timeout: Option<Duration>,
    /// Retry schedule.
    pub retry_after: Option<RetrySchedule>,
    /// Give up after.
    pub max_age: Option<Duration>,
    /// TLS policy.
    pub tls: Option<TlsPolicy>,
    /// Source pool.
    pub pool: Option<String>,
    /// Backoff rules, in file order.
    pub backoff: Vec<BackoffRule>,
}

/// A layer with its per-source overrides.
#[derive(Clone, Debug, Default)]
pub struct Scoped {
    /// The layer.
    pub layer: Layer,
    /// Overrides by source name.
    pub by_source: HashMap<String, Layer>,
}

/// How a provider recognises its destinations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Match {
    /// Every MX host ends with this suffix (at a label boundary).
    MxSuffix(String),
    /// The destination domain ends with this suffix (at a label boundary).
    DomainSuffix(String),
}

/// A `[provider.NAME]` section.
#[derive(Clone, Debug)]
pub struct Provider {
    /// Its name.
    pub name: String,
    /// Its matches (any one suffices).
    pub matches: Vec<Match>,
    /// Its settings.
    pub rule: Scoped,
}

/// A warm-up schedule: `(age, rate)` steps in increasing age.
#[derive(Clone, Debug, PartialEq)]
pub struct Warmup {
    /// The steps.
    pub steps: Vec<(Duration, Rate)>,
}

impl Warmup {
    /// The rate for a source of this age (the first step before it begins).
    pub fn rate_at(&self, age: Duration) -> Option<Rate> {
        let mut rate = self.steps.first().map(|s| s.1);
        for (after, step) in &self.steps {
            if age >= *after {
                rate = Some(*step);
            }
        }
        rate
    }
}

/// A `[source.NAME]` section.
#[derive(Clone, Debug)]
pub struct Source {
    /// Its name.
    pub name: String,
    /// Local address to bind.
    pub bind: IpAddr,
    /// EHLO host name.
    pub ehlo: String,
    /// Its own rate, all destinations together.
    pub max_message_rate: Option<Rate>,
    /// Warm-up schedule and its start (seconds since the Unix epoch).
    pub warmup: Option<(Warmup, u64)>,
}

impl Source {
    /// The source's limit at wall-clock time `unix_now_s`: the smaller of
    /// its configured rate and its warm-up step. Its key is
    /// `source:NAME/max_message_rate`.
    pub fn rate_at(&self, unix_now_s: u64) -> Option<Limit<Rate>> {
        let warm = self.warmup.as_ref().and_then(|(schedule, start)| {
            schedule.rate_at(Duration::from_secs(unix_now_s.saturating_sub(*start)))
        });
        let value = match (self.max_message_rate, warm) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }?;
        Some(Limit {
            key: format!("source:{}/max_message_rate", self.name),
            value,
        })
    }
}

/// A `[pool.NAME]` section.
#[derive(Clone, Debug)]
pub struct Pool {
    /// Its name.
    pub name: String,
    /// `(source name, weight)`, weights at least 1.
    pub sources: Vec<(String, u32)>,
    /// The pool's rate, all its sources together.
    pub max_message_rate: Option<Rate>,
}

impl Pool {
    /// Picks a source by weight; `random` comes from the caller's seeded RNG.
    /// `None` only for a pool built by hand without sources (validation
    /// rejects those).
    pub fn pick(&self, random: u64) -> Option<&str> {
        let total: u64 = self.sources.iter().map(|(_, w)| u64::from(*w)).sum();
        let mut point = random % total.max(1);
        for (name, weight) in &self.sources {
            if point < u64::from(*weight) {
                return Some(name);
            }
            point -= u64::from(*weight);
        }
        self.sources.first().map(|(name, _)| name.as_str())
    }

    /// The pool's limit, keyed `pool:NAME/max_message_rate`.
    pub fn limit(&self) -> Option<Limit<Rate>> {
        self.max_message_rate.map(|value| Limit {
            key: format!("pool:{}/max_message_rate", self.name),
            value,
        })
    }
}

/// Validated shaping rules. Build one per process and clone it into each
/// shard (no global state).
#[derive(Clone, Debug)]
pub struct Rules {
    /// `[default]`, with built-in defaults filled in.
    pub default: Scoped,
    /// `[domain."…"]` by lower-case domain.
    pub domains: HashMap<String, Scoped>,
    /// `[provider.…]`, by name order.
    pub providers: Vec<Provider>,
    /// `[source.…]`.
    pub sources: BTreeMap<String, Source>,
    /// `[pool.…]`.
    pub pools: BTreeMap<String, Pool>,
}

/// What `validate` found, for `check-config` output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Domain sections.
    pub domains: usize,
    /// Provider sections.
    pub providers: usize,
    /// Sources.
    pub sources: usize,
    /// Pools.
    pub pools: usize,
    /// Backoff rules, all layers.
    pub backoff_rules: usize,
}

impl Rules {
    /// Parses and validates rules from TOML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Rules, ConfigError> {
        // Entries that did not deserialize are left out and their problems
        // kept; the rest is still validated so one run reports everything.
        let (raw, mut problems) = parse_raw_partial(text, file)?;
        match Rules::try_from(raw) {
            Ok(rules) if problems.is_empty() => Ok(rules),
            Ok(_) => Err(ConfigError::Invalid {
                file: file.to_string(),
                problems,
            }),
            Err(more) => {
                problems.extend(more);
                Err(ConfigError::Invalid {
                    file: file.to_string(),
                    problems,
                })
            }
        }
    }

    /// Reads, parses and validates a rules file.
    pub fn load(path: &Path) -> Result<Rules, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            file: file.clone(),
            source,
        })?;
        Rules::parse(&text, &file)
    }

    /// Counts for a `check-config` report.
    pub fn summary(&self) -> Summary {
        let count = |s: &Scoped| {
            s.layer.backoff.len() + s.by_source.values().map(|l| l.backoff.len()).sum::<usize>()
        };
        Summary {
            domains: self.domains.len(),
            providers: self.providers.len(),
            sources: self.sources.len(),
            pools: self.pools.len(),
            backoff_rules: count(&self.default)
                + self.domains.values().map(count).sum::<usize>()
                + self.providers.iter().map(|p| count(&p.rule)).sum::<usize>(),
        }
    }
}

/// Validates a rules file without starting anything (`sluice check-config`).
pub fn validate(path: &Path) -> Result<Summary, ConfigError> {
    Rules::load(path).map(|rules| rules.summary())
}

const SECTIONS: &str = "default, domain, provider, source, pool, warmup";

/// TOML text to [`RawConfig`], reporting unknown keys and wrong types of
/// every section entry with their key paths.
pub fn parse_raw(text: &str, file: &str) -> Result<RawConfig, ConfigError> {
    let (raw, problems) = parse_raw_partial(text, file)?;
    if problems.is_empty() {
        Ok(raw)
    } else {
        Err(ConfigError::Invalid {
            file: file.to_string(),
            problems,
        })
    }
}

fn parse_raw_partial(text: &str, file: &str) -> Result<(RawConfig, Vec<Problem>), ConfigError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Syntax {
            file: file.to_string(),
            message: e.to_string(),
        })?;
    let mut problems = Vec::new();
    let mut raw = RawConfig::default();
    for (section, value) in table {
        match section.as_str() {
            "default" => {
                if let Some(rule) = entry(value, "default", &mut problems) {
                    raw.default = rule;
                }
            }
            "domain" => raw.domain = entries(value, "domain", &mut problems),
            "provider" => raw.provider = entries(value, "provider", &mut problems),
            "source" => raw.source = entries(value, "source", &mut problems),
            "pool" => raw.pool = entries(value, "pool", &mut problems),
            "warmup" => raw.warmup = entries(value, "warmup", &mut problems),
            other => problems.push(Problem {
                path: other.to_string(),
                reason: format!("unknown section (expected one of: {SECTIONS})"),
            }),
        }
    }
    raw.broken = problems.iter().map(|p| p.path.clone()).collect();
    Ok((raw, problems))
}

/// A key as it appears in a path: quoted when it is not a bare key.
pub(crate) fn key_path(prefix: &str, name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if bare {
        format!("{prefix}.{name}")
    } else {
        format!("{prefix}.{name:?}")
    }
}

fn entry<T: DeserializeOwned>(
    value: toml::Value,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = e.path().to_string();
            let path = if inner == "." || inner.is_empty() {
                path.to_string()
            } else {
                format!("{path}.{inner}")
            };
            problems.push(Problem {
                path,
                reason: e.into_inner().to_string().trim_end().to_string(),
            });
            None
        }
    }
}

fn entries<T: DeserializeOwned>(
    value: toml::Value,
    section: &str,
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, T> {
    let mut out = BTreeMap::new();
    let toml::Value::Table(table) = value else {
        problems.push(Problem {
            path: section.to_string(),
            reason: "must be a table of named entries".into(),
        });
        return out;
    };
    for (name, value) in table {
        if let Some(v) = entry(value, &key_path(section, &name), problems) {
            out.insert(name, v);
        }
    }
    out
}

// Built-in defaults, used where `[default]` leaves a field unset.

/// Connections per destination unless configured.
pub fn default_max_connections() -> u32 {
    32
}

/// RFC 5321 §4.5.3.1.8: servers must accept at least 100 recipients.
pub fn default_max_recipients_per_transaction() -> u32 {
    100
}

/// Messages per connection unless configured.
pub fn default_max_deliveries_per_connection() -> u32 {
    1_000
}

/// TCP connect plus the 220 greeting. RFC 5321 §4.5.3.2.1 allows the
/// greeting 5 minutes; a sending engine gives up on a silent host sooner.
pub fn default_connect_timeout() -> Duration {
    Duration::from_secs(60)
}

/// RFC 5321 §4.5.3.2.2-4: MAIL, RCPT and DATA replies, 5 minutes.
pub fn default_command_timeout() -> Duration {
    Duration::from_secs(300)
}

/// RFC 5321 §4.5.3.2.6: the reply to the final dot, 10 minutes.
pub fn default_data_timeout() -> Duration {
    Duration::from_secs(600)
}

/// RFC 5321 §4.5.4.1: at least 30 minutes between attempts.
pub fn default_retry_after() -> RetrySchedule {
    RetrySchedule::Exponential {
        initial: Duration::from_secs(30 * 60),
        factor: 2,
        max: Duration::from_secs(8 * 3600),
        jitter_percent: 10,
    }
}

/// RFC 5321 §4.5.4.1: give up after 4-5 days.
pub fn default_max_age() -> Duration {
    Duration::from_secs(5 * 86_400)
}

/// Opportunistic STARTTLS (RELIABILITY.md, Security).
pub fn default_tls() -> TlsPolicy {
    TlsPolicy::Opportunistic
}
