//! The rules file as written: serde structs with `deny_unknown_fields`.
//! Quantities stay strings here; [`super::Rules::try_from`] parses them and
//! reports every problem with its key path.

use std::collections::BTreeMap;

use serde::Deserialize;

/// One `[default]`, `[domain."x"]`, `[provider.x]` or `…source.y` table.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Provider matching (providers only).
    #[serde(rename = "match")]
    pub matches: Option<Vec<RawMatch>>,
    /// Simultaneous connections.
    pub max_connections: Option<u32>,
    /// Messages per period, e.g. `"300/min"`.
    pub max_message_rate: Option<String>,
    /// New connections per period.
    pub max_connection_rate: Option<String>,
    /// Messages sent on one connection before it is closed.
    pub max_deliveries_per_connection: Option<u32>,
    /// Recipients per transaction.
    pub max_recipients_per_transaction: Option<u32>,
    /// TCP connect plus greeting.
    pub connect_timeout: Option<String>,
    /// Each command's reply.
    pub command_timeout: Option<String>,
    /// The reply to the final dot.
    pub data_timeout: Option<String>,
    /// Retry schedule.
    pub retry_after: Option<String>,
    /// Give up (bounce) after this long.
    pub max_age: Option<String>,
    /// TLS policy.
    pub tls: Option<String>,
    /// The source pool to send from.
    pub pool: Option<String>,
    /// Reply patterns and what they do.
    #[serde(default)]
    pub backoff: Vec<RawBackoff>,
    /// Overrides for one source (domain and provider tables only).
    #[serde(default)]
    pub source: BTreeMap<String, RawRule>,
}

/// One provider match: `{ mx_suffix = "google.com" }` or
/// `{ domain_suffix = "gmail.com" }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RawMatch {
    /// Every MX host of the destination ends with this suffix.
    MxSuffix(String),
    /// The destination domain ends with this suffix.
    DomainSuffix(String),
}

/// One backoff rule (`[[domain."x".backoff]]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackoff {
    /// Recorded with every change the rule makes.
    pub name: String,
    /// Reply code pattern: `"421"`, `"4xx"`, `"45x"`.
    pub code: Option<String>,
    /// Enhanced status code or prefix: `"4.7.28"`, `"4.7."`.
    pub enhanced: Option<String>,
    /// Regular expression on the reply text.
    pub text: Option<String>,
    /// `"backoff"` (the default), `"suspend"` or `"bounce"`.
    #[serde(default = "default_action")]
    pub action: String,
    /// Message rate while backing off.
    pub backoff_max_message_rate: Option<String>,
    /// Connections while backing off.
    pub backoff_max_connections: Option<u32>,
    /// Retry delay for deferred messages while backing off.
    pub backoff_retry_after: Option<String>,
    /// Return to normal after this long.
    pub recover_after: Option<String>,
    /// Return to normal after this many deliveries.
    pub recover_after_deliveries: Option<u32>,
    /// How long `action = "suspend"` lasts.
    pub suspend_for: Option<String>,
    /// AIMD: cut the rate by this percentage at each match.
    pub aimd_decrease_percent: Option<u32>,
    /// AIMD: raise it by this percentage of the configured rate per step.
    pub aimd_increase_percent: Option<u32>,
    /// AIMD: deliveries per increase step.
    pub aimd_step_deliveries: Option<u32>,
}

fn default_action() -> String {
    "backoff".to_string()
}

/// `[source.NAME]`: one sending IP address.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    /// The local address to bind.
    pub bind: String,
    /// The EHLO host name.
    pub ehlo: String,
    /// Messages per period from this source, all destinations together.
    pub max_message_rate: Option<String>,
    /// A `[warmup.NAME]` schedule.
    pub warmup: Option<String>,
    /// The day warm-up started, `YYYY-MM-DD` (UTC).
    pub warmup_start: Option<String>,
}

/// `[pool.NAME]`: sources with weights.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    /// Source name to weight.
    pub sources: BTreeMap<String, u32>,
    /// Messages per period from the whole pool.
    pub max_message_rate: Option<String>,
}

/// `[warmup.NAME]`: limits by source age.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWarmup {
    /// Steps in increasing age.
    pub steps: Vec<RawWarmupStep>,
}

/// One warm-up step.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWarmupStep {
    /// Source age from which this step applies, e.g. `"7d"`.
    pub after: String,
    /// The source's message rate during the step.
    pub max_message_rate: String,
}
