//! The engine's configuration: a TOML file (or the embedded default) parsed
//! into raw serde structs, then validated into [`Config`], the typed value
//! each shard receives at start.
//!
//! Parse, don't validate: [`RawConfig`] mirrors the file with
//! `deny_unknown_fields`, and human strings (`"30s"`, `"64MiB"`,
//! `"127.0.0.0/8"`) are turned into types by [`Config::from_raw`], which
//! reports every problem with its full key path, not just the first.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use sluice_shaping::units::parse_duration;

/// The configuration used when `sluice run` is given no file: safe (listens
/// on loopback, relays for loopback only, durable spool) and useful (one
/// shard per core, MX delivery).
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

/// Largest segment the spool accepts; offsets in a record reference are u32.
const SEGMENT_BYTES_MAX: u64 = 1 << 31;
/// Smallest segment: must hold at least one maximum-size message comfortably.
const SEGMENT_BYTES_MIN: u64 = 1 << 20;
const _: () = assert!(SEGMENT_BYTES_MIN < SEGMENT_BYTES_MAX);

/// One problem found in a configuration: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The full key path, e.g. `inject.message_size_max` or `route[2].hosts[0]`.
    pub key: String,
    /// What is wrong and, where possible, what would be right.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// Why a configuration was refused. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a key is unknown or of the wrong type.
    #[error("{file}: {key}: {reason}")]
    Syntax {
        /// The file.
        file: String,
        /// The key path serde was at when it failed.
        key: String,
        /// The parser's message.
        reason: String,
    },
    /// The file parsed, but values are invalid. All problems are listed.
    #[error("{file}: {} problem(s):\n{}", problems.len(), list(problems))]
    Invalid {
        /// The file.
        file: String,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Which cores run shards.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum RawCores {
    /// `"all"`: one shard per online CPU.
    Word(String),
    /// An explicit list of CPU ids.
    List(Vec<usize>),
}

/// The file as written. Field docs are the reference for the format.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Name used in the greeting, in EHLO and in Received headers.
    pub hostname: Option<String>,
    /// `"all"` or a list of CPU ids; one shard per entry.
    #[serde(default = "default_cores")]
    pub cores: RawCores,
    /// The injection listener.
    #[serde(default)]
    pub inject: RawInject,
    /// The spool.
    #[serde(default)]
    pub spool: RawSpool,
    /// Delivery settings.
    #[serde(default)]
    pub delivery: RawDelivery,
    /// Static routes, tried in order; the first whose pattern matches wins.
    #[serde(default)]
    pub route: Vec<RawRoute>,
    /// DKIM signing keys (`sluice-dkim`'s schema: `[dkim.domains."d"]`,
    /// `[dkim.map]`, `default_domain`); see `default.toml`.
    #[serde(default)]
    pub dkim: sluice_dkim::RawDkimConfig,
    /// Accounting log files: CSV, rotation, buffer (`[log]`).
    #[serde(default)]
    pub log: crate::log::RawLog,
    /// The HTTP listener for `/metrics` and the admin API (`[admin]`).
    #[serde(default)]
    pub admin: crate::admin::RawAdmin,
    /// MX resolution of unrouted domains: name servers (default: those of
    /// /etc/resolv.conf), timeouts, cache, which address classes MX hosts
    /// may have, the mail exchangers' port (see `sluice_dns::config`).
    #[serde(default)]
    pub dns: sluice_dns::RawDnsConfig,
    /// Tenants (`[tenants.NAME]`: `users`, `header_override`, `pool`,
    /// `dsn`); see `crate::inject::tenant`.
    #[serde(default)]
    pub tenants: std::collections::BTreeMap<String, crate::inject::tenant::RawTenant>,
}

fn default_cores() -> RawCores {
    RawCores::Word("all".into())
}

/// `[inject]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInject {
    /// Shared listener; every shard accepts on it (SO_REUSEPORT).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Per-shard listeners on `port_base + shard`; 0 disables them.
    #[serde(default)]
    pub shard_port_base: u16,
    /// Networks allowed to relay without authentication.
    #[serde(default = "default_relay_networks")]
    pub relay_networks: Vec<String>,
    /// Largest message accepted, advertised with SIZE (RFC 1870).
    #[serde(default = "default_message_size_max")]
    pub message_size_max: String,
    /// Recipients per transaction; RFC 5321 §4.5.3.1.8 asks for at least 100.
    #[serde(default = "default_recipients_max")]
    pub recipients_max: u32,
    /// Concurrent injection connections per shard.
    #[serde(default = "default_connections_max")]
    pub connections_max: u32,
    /// Concurrent injection connections from one client address per shard.
    #[serde(default = "default_connections_per_ip_max")]
    pub connections_per_ip_max: u32,
    /// Idle time allowed between commands (RFC 5321 §4.5.3.2.7: 5 minutes).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: String,
    /// Slowest acceptable DATA/BDAT transfer, bytes per second, averaged per message.
    #[serde(default = "default_min_data_rate")]
    pub min_data_rate_bytes_per_s: u64,
    /// Certificate chain (PEM) for STARTTLS and the implicit-TLS listener;
    /// STARTTLS is offered only when set (with `tls_key`).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Implicit-TLS listener (TLS from the first byte, RFC 8314 §3.3).
    #[serde(default)]
    pub implicit_tls_listen: Option<String>,
    /// Users file for AUTH PLAIN/LOGIN, offered only under TLS (`user:hash`
    /// lines, `$argon2id$` or `$6$`).
    #[serde(default)]
    pub auth_users: Option<PathBuf>,
    /// Refuse MAIL before AUTH (`530 5.7.0`), relay networks included.
    #[serde(default)]
    pub auth_required: bool,
    /// Header naming the message's tenant, removed before spooling
    /// (default `X-Tenant`; `""`: not read).
    #[serde(default = "default_tenant_header")]
    pub tenant_header: String,
    /// Header naming the message's campaign, removed before spooling
    /// (default `X-Campaign`; `""`: not read).
    #[serde(default = "default_campaign_header")]
    pub campaign_header: String,
}

fn default_listen() -> String {
    "127.0.0.1:2525".into()
}
fn default_relay_networks() -> Vec<String> {
    vec!["127.0.0.0/8".into(), "::1/128".into()]
}
fn default_message_size_max() -> String {
    "50MiB".into()
}
fn default_recipients_max() -> u32 {
    1000
}
fn default_connections_max() -> u32 {
    10_000
}
fn default_connections_per_ip_max() -> u32 {
    1_000
}
fn default_idle_timeout() -> String {
    "5m".into()
}
fn default_min_data_rate() -> u64 {
    1024
}
fn default_tenant_header() -> String {
    "X-Tenant".into()
}
fn default_campaign_header() -> String {
    "X-Campaign".into()
}

impl Default for RawInject {
    fn default() -> Self {
        RawInject {
            listen: default_listen(),
            shard_port_base: 0,
            relay_networks: default_relay_networks(),
            message_size_max: default_message_size_max(),
            recipients_max: default_recipients_max(),
            connections_max: default_connections_max(),
            connections_per_ip_max: default_connections_per_ip_max(),
            idle_timeout: default_idle_timeout(),
            min_data_rate_bytes_per_s: default_min_data_rate(),
            tls_cert: None,
            tls_key: None,
            implicit_tls_listen: None,
            auth_users: None,
            auth_required: false,
            tenant_header: default_tenant_header(),
            campaign_header: default_campaign_header(),
        }
    }
}

/// `[spool]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpool {
    /// Directory holding one `shard-<n>/` directory per shard.
    #[serde(default = "default_spool_dir")]
    pub dir: PathBuf,
    /// Size of each segment file, reserved with fallocate.
    #[serde(default = "default_segment_size")]
    pub segment_size: String,
    /// Longest an appended record waits for its group commit.
    #[serde(default = "default_commit_window")]
    pub commit_window: String,
    /// Unsynced bytes that trigger a commit before the window ends.
    #[serde(default = "default_commit_bytes")]
    pub commit_bytes: String,
    /// `"fdatasync"` (the default, and the only durable choice) or
    /// `"none-unsafe"` (benchmarks only: acknowledged mail can be lost).
    #[serde(default = "default_durability")]
    pub durability: String,
    /// Retired segment files kept (renamed, not deleted) as spares for the
    /// next rotations; 0 deletes every retired segment.
    #[serde(default = "default_spare_segments")]
    pub spare_segments: usize,
}

/// Most spare segment files a shard may keep (each is a whole segment of
/// disk).
pub const SPARE_SEGMENTS_MAX: usize = 64;

fn default_spare_segments() -> usize {
    2
}
fn default_spool_dir() -> PathBuf {
    PathBuf::from("sluice-spool")
}
fn default_segment_size() -> String {
    "64MiB".into()
}
fn default_commit_window() -> String {
    "1ms".into()
}
fn default_commit_bytes() -> String {
    "4MiB".into()
}
fn default_durability() -> String {
    "fdatasync".into()
}

impl Default for RawSpool {
    fn default() -> Self {
        RawSpool {
            dir: default_spool_dir(),
            segment_size: default_segment_size(),
            commit_window: default_commit_window(),
            commit_bytes: default_commit_bytes(),
            durability: default_durability(),
            spare_segments: default_spare_segments(),
        }
    }
}

/// `[delivery]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawDelivery {
    /// Shaping rules file (see the `sluice-shaping` crate); relative paths are
    /// resolved against the config file's directory.
    pub shaping: Option<PathBuf>,
    /// Connections per site per shard (default 32).
    pub connections_per_site_max: Option<u32>,
    /// Transactions on one connection before it retires (default 1000).
    pub deliveries_per_connection_max: Option<u32>,
    /// Transactions pipelined back to back on one connection (default 8).
    pub transactions_in_flight_max: Option<u32>,
    /// Recipients per outbound transaction (default 100).
    pub recipients_per_transaction_max: Option<u32>,
    /// Retry schedule: `"10m,30m,2h"` or `"exp(30m, x2, max 8h, jitter 10%)"`.
    pub retry: Option<String>,
    /// Longest a recipient stays queued (default `"5d"`).
    pub max_age: Option<String>,
    /// TCP connect timeout (default `"30s"`).
    pub connect_timeout: Option<String>,
    /// One timeout for every reply instead of RFC 5321's per-command ones.
    pub reply_timeout: Option<String>,
    /// Close a connection idle this long (default `"2s"`).
    pub idle_close: Option<String>,
    /// Delivery log directory (default `<spool dir>/../log`).
    pub log_dir: Option<PathBuf>,
    /// Delivery log write interval (default `"100ms"`).
    pub log_flush: Option<String>,
    /// STARTTLS policy where the shaping rules set none: `disabled`,
    /// `opportunistic` (default), `required`, `required-verified`.
    pub tls: Option<String>,
    /// Extra trust roots (PEM) for verified outbound TLS, next to the
    /// WebPKI roots.
    pub tls_ca_file: Option<PathBuf>,
    /// Bounce classification rules file (`sluice-outcomes` format);
    /// default: the rules shipped with Sluice.
    pub bounce_rules: Option<PathBuf>,
    /// Send an RFC 3464 bounce to the envelope sender on permanent
    /// failure and expiry (default true; never to `<>`).
    pub dsn: Option<bool>,
}

/// `[[route]]`: a static route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// `*` (every domain), `example.com` (exactly), or `*.example.com`
    /// (every subdomain, not the domain itself).
    pub pattern: String,
    /// Next hops, `HOST:PORT`, tried in order.
    pub hosts: Vec<String>,
}

/// Durability of acknowledged messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every `250` waits for an fdatasync that covers its record.
    Fdatasync,
    /// No sync at all: benchmarks only, printed loudly at start.
    NoneUnsafe,
}

/// Which domains a route applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainPattern {
    /// `*`.
    Any,
    /// `example.com`, lower-cased.
    Exact(String),
    /// `*.example.com`: the suffix `.example.com`, lower-cased.
    Subdomains(String),
}

impl DomainPattern {
    /// Whether `domain` (any case) matches.
    pub fn matches(&self, domain: &str) -> bool {
        match self {
            DomainPattern::Any => true,
            DomainPattern::Exact(d) => domain.eq_ignore_ascii_case(d),
            DomainPattern::Subdomains(suffix) => {
                domain.len() > suffix.len()
                    && domain.is_char_boundary(domain.len() - suffix.len())
                    && domain[domain.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }
}

/// A validated static route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Domains it applies to.
    pub pattern: DomainPattern,
    /// Next hops in order.
    pub hosts: Vec<SocketAddr>,
}

/// The validated configuration each shard receives.
#[derive(Debug, Clone)]
pub struct Config {
    /// Greeting and EHLO name.
    pub hostname: String,
    /// CPU ids, one shard each; `None` means every online CPU.
    pub cores: Option<Vec<usize>>,
    /// Shared injection listener.
    pub listen: SocketAddr,
    /// First per-shard port, if per-shard listeners are on.
    pub shard_port_base: Option<u16>,
    /// Networks allowed to relay.
    pub relay_networks: Vec<IpNet>,
    /// Largest message accepted.
    pub message_bytes_max: u64,
    /// Recipients per transaction.
    pub recipients_max: u32,
    /// Injection connections per shard.
    pub connections_max: u32,
    /// Injection connections per client address per shard.
    pub connections_per_ip_max: u32,
    /// Idle timeout between commands.
    pub idle_timeout: Duration,
    /// Minimum DATA rate.
    pub min_data_rate_bytes_per_s: u64,
    /// Spool directory.
    pub spool_dir: PathBuf,
    /// Segment size.
    pub segment_bytes: u64,
    /// Group-commit window.
    pub commit_window: Duration,
    /// Group-commit byte threshold.
    pub commit_bytes: u64,
    /// Durability mode.
    pub durability: Durability,
    /// Segment files kept as spares (`spool.spare_segments`).
    pub spare_segments: usize,
    /// Shaping rules file, resolved.
    pub shaping_file: Option<PathBuf>,
    /// Static routes in order.
    pub routes: Vec<Route>,
    /// The stub resolver each shard builds for MX delivery.
    pub dns: sluice_dns::ResolverConfig,
    /// TCP port of mail exchangers found through DNS (25).
    pub mx_port: u16,
    /// Delivery settings.
    pub delivery: crate::deliver::DeliverySettings,
    /// Injection TLS and AUTH (`[inject] tls_*`, `auth_*`).
    pub inject_security: crate::inject::security::Security,
    /// Outbound TLS: default policy and verifiers (`[delivery] tls*`).
    pub outbound_tls: crate::tls::OutboundTls,
    /// DKIM keys, loaded (and their 0600 mode checked) during validation.
    pub dkim: crate::sign::DkimKeys,
    /// Accounting log settings.
    pub log: crate::log::LogSettings,
    /// The bounce rules file, resolved (`None`: the shipped rules).
    pub bounce_rules_file: Option<PathBuf>,
    /// The compiled bounce rules.
    pub bounce_rules: sluice_outcomes::Classifier,
    /// Whether failures and expiries bounce to the sender (RFC 3464).
    pub dsn_bounces: bool,
    /// Admin listener settings.
    pub admin: crate::admin::AdminSettings,
    /// Tenant and campaign headers and `[tenants.*]`.
    pub tenants: crate::inject::tenant::Tenants,
}

impl Config {
    /// The embedded default configuration, validated.
    pub fn embedded_default() -> Result<Config, ConfigError> {
        Config::parse("<embedded default>", EMBEDDED_DEFAULT, None)
    }

    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Config::parse(&file, &text, path.parent())
    }

    /// Parses TOML text; `file` names it in errors and `base` resolves
    /// relative paths.
    pub fn parse(file: &str, text: &str, base: Option<&Path>) -> Result<Config, ConfigError> {
        Config::parse_with(file, text, base, |_| {})
    }

    /// Like [`Config::parse`], with `edit` applied to the raw file before
    /// validation: command-line flags that override the file go through the
    /// same checks and are reported under the same keys.
    pub fn parse_with(
        file: &str,
        text: &str,
        base: Option<&Path>,
        edit: impl FnOnce(&mut RawConfig),
    ) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let mut raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::Syntax {
                file: file.to_string(),
                key: if key == "." {
                    "(top level)".into()
                } else {
                    key
                },
                reason: e.into_inner().message().trim().to_string(),
            }
        })?;
        edit(&mut raw);
        Config::from_raw(raw, base).map_err(|problems| ConfigError::Invalid {
            file: file.to_string(),
            problems,
        })
    }

    /// Validates a raw configuration, collecting every problem.
    pub fn from_raw(raw: RawConfig, base: Option<&Path>) -> Result<Config, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut bad = |key: &str, reason: String| {
            problems.push(Problem {
                key: key.into(),
                reason,
            })
        };

        let hostname = match raw.hostname {
            Some(h) if is_hostname(&h) => h,
            Some(h) => {
                bad(
                    "hostname",
                    format!("`{h}` is not a host name (letters, digits, `-`, `.`)"),
                );
                String::new()
            }
            None => system_hostname(),
        };
        let cores = match raw.cores {
            RawCores::Word(w) if w == "all" => None,
            RawCores::Word(w) => {
                bad(
                    "cores",
                    format!("`{w}`: expected \"all\" or a list of CPU ids like [0, 1]"),
                );
                None
            }
            RawCores::List(list) => {
                let mut seen = list.clone();
                seen.sort_unstable();
                seen.dedup();
                if list.is_empty() {
                    bad(
                        "cores",
                        "the list is empty; use \"all\" or name at least one CPU".into(),
                    );
                } else if seen.len() != list.len() {
                    bad("cores", format!("{list:?} names a CPU twice"));
                }
                Some(list)
            }
        };
        let listen = raw.inject.listen.parse::<SocketAddr>().unwrap_or_else(|e| {
            bad(
                "inject.listen",
                format!("`{}`: {e}; expected ADDR:PORT", raw.inject.listen),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        });
        let mut relay_networks = Vec::new();
        for (i, n) in raw.inject.relay_networks.iter().enumerate() {
            match parse_network(n) {
                Ok(net) => relay_networks.push(net),
                Err(reason) => bad(&format!("inject.relay_networks[{i}]"), reason),
            }
        }
        let message_bytes_max = parse_bytes(&raw.inject.message_size_max).unwrap_or_else(|r| {
            bad("inject.message_size_max", r);
            0
        });
        if raw.inject.recipients_max < 100 {
            bad(
                "inject.recipients_max",
                format!(
                    "{} is below the 100 that RFC 5321 §4.5.3.1.8 requires",
                    raw.inject.recipients_max
                ),
            );
        }
        if raw.inject.connections_max == 0 {
            bad("inject.connections_max", "must be at least 1".into());
        }
        if raw.inject.connections_per_ip_max == 0 {
            bad("inject.connections_per_ip_max", "must be at least 1".into());
        }
        let idle_timeout = parse_duration(&raw.inject.idle_timeout).unwrap_or_else(|e| {
            bad("inject.idle_timeout", e.to_string());
            Duration::ZERO
        });
        let segment_bytes = match parse_bytes(&raw.spool.segment_size) {
            Ok(n) if (SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&n) => n,
            Ok(n) => {
                bad(
                    "spool.segment_size",
                    format!("{n} bytes: must be between 1MiB and 2GiB"),
                );
                0
            }
            Err(r) => {
                bad("spool.segment_size", r);
                0
            }
        };
        if segment_bytes != 0 && message_bytes_max >= segment_bytes {
            bad(
                "inject.message_size_max",
                format!(
                    "{message_bytes_max} bytes does not fit in a {segment_bytes}-byte spool \
                     segment; raise spool.segment_size or lower this"
                ),
            );
        }
        let commit_window = parse_duration(&raw.spool.commit_window).unwrap_or_else(|e| {
            bad("spool.commit_window", e.to_string());
            Duration::ZERO
        });
        if commit_window > Duration::from_millis(100) {
            bad(
                "spool.commit_window",
                format!("{commit_window:?} would hold every 250 that long; use at most 100ms"),
            );
        }
        let commit_bytes = parse_bytes(&raw.spool.commit_bytes).unwrap_or_else(|r| {
            bad("spool.commit_bytes", r);
            0
        });
        let spare_segments = raw.spool.spare_segments;
        if spare_segments > SPARE_SEGMENTS_MAX {
            bad(
                "spool.spare_segments",
                format!("{spare_segments} is more than the {SPARE_SEGMENTS_MAX} allowed"),
            );
        }
        let durability = match raw.spool.durability.as_str() {
            "fdatasync" => Durability::Fdatasync,
            "none-unsafe" => Durability::NoneUnsafe,
            other => {
                bad(
                    "spool.durability",
                    format!(
                        "`{other}`: expected \"fdatasync\" or \"none-unsafe\" (benchmarks only)"
                    ),
                );
                Durability::Fdatasync
            }
        };
        let resolve = |p: PathBuf| match base {
            Some(b) if p.is_relative() => b.join(p),
            _ => p,
        };
        let delivery = crate::deliver::DeliverySettings::from_raw(
            &raw.delivery,
            &resolve(raw.spool.dir.clone()),
            base,
            &mut bad,
        );
        let inject_security =
            crate::inject::security::Security::from_raw(&raw.inject, base, &mut bad);
        let outbound_tls = crate::tls::OutboundTls::from_raw(&raw.delivery, base, &mut bad);
        let shaping_file = raw.delivery.shaping.map(resolve);
        let mut routes = Vec::new();
        for (i, r) in raw.route.iter().enumerate() {
            let pattern = match parse_pattern(&r.pattern) {
                Ok(p) => p,
                Err(reason) => {
                    bad(&format!("route[{i}].pattern"), reason);
                    continue;
                }
            };
            if r.hosts.is_empty() {
                bad(
                    &format!("route[{i}].hosts"),
                    "needs at least one HOST:PORT".into(),
                );
            }
            let mut hosts = Vec::new();
            for (j, h) in r.hosts.iter().enumerate() {
                match h.parse::<SocketAddr>() {
                    Ok(a) => hosts.push(a),
                    Err(e) => bad(&format!("route[{i}].hosts[{j}]"), format!("`{h}`: {e}")),
                }
            }
            routes.push(Route { pattern, hosts });
        }
        // Key files are read here, once, so `check-config` and `run` refuse
        // a missing, unreadable or group-readable key under its key path.
        let dkim = crate::sign::load_keys(raw.dkim, base, &mut bad);
        let log = crate::log::LogSettings::from_raw(&raw.log, &mut bad);
        let admin = crate::admin::AdminSettings::from_raw(&raw.admin, &mut bad);
        let bounce_rules_file = raw.delivery.bounce_rules.clone().map(resolve);
        let bounce_rules = crate::accounting::load_bounce_rules(bounce_rules_file.as_deref())
            .unwrap_or_else(|e| {
                bad("delivery.bounce_rules", e);
                sluice_outcomes::Classifier::default_rules()
            });
        let dns = match raw.dns.validate_lenient("dns") {
            Ok((dns, warning)) => {
                if let Some(w) = warning {
                    log::warn!(
                        "{}: {} (MX delivery fails temporarily until name servers are set)",
                        w.key,
                        w.reason
                    );
                }
                dns
            }
            Err(list) => {
                for p in list {
                    bad(&p.key, p.reason);
                }
                sluice_dns::ResolverConfig::from_resolv_conf(&Default::default())
            }
        };
        let mx_port = raw.dns.smtp_port();
        let tenants = crate::inject::tenant::Tenants::from_raw(
            &raw.inject.tenant_header,
            &raw.inject.campaign_header,
            &raw.tenants,
            &mut bad,
        );
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Config {
            hostname,
            cores,
            listen,
            shard_port_base: (raw.inject.shard_port_base != 0)
                .then_some(raw.inject.shard_port_base),
            relay_networks,
            message_bytes_max,
            recipients_max: raw.inject.recipients_max,
            connections_max: raw.inject.connections_max,
            connections_per_ip_max: raw.inject.connections_per_ip_max,
            idle_timeout,
            min_data_rate_bytes_per_s: raw.inject.min_data_rate_bytes_per_s,
            spool_dir: resolve(raw.spool.dir),
            segment_bytes,
            commit_window,
            commit_bytes,
            durability,
            spare_segments,
            shaping_file,
            routes,
            dns,
            mx_port,
            delivery,
            inject_security,
            outbound_tls,
            dkim,
            log,
            bounce_rules_file,
            bounce_rules,
            dsn_bounces: raw.delivery.dsn.unwrap_or(true),
            admin,
            tenants,
        })
    }

    /// Whether a failure of a message of `tenant` (the spool record's
    /// tenant field; empty: none) bounces to its sender: the tenant's
    /// `[tenants.NAME] dsn`, else `[delivery] dsn`.
    pub fn dsn_for_tenant(&self, tenant: &[u8]) -> bool {
        self.tenants.dsn_for(tenant, self.dsn_bounces)
    }

    /// Whether any message can get a DSN (`[delivery] dsn`, or a tenant
    /// turns it on): the cheap test before looking up a message's tenant.
    pub fn dsn_possible(&self) -> bool {
        self.tenants.any_dsn(self.dsn_bounces)
    }

    /// The first static route whose pattern matches `domain`.
    pub fn route_for(&self, domain: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.pattern.matches(domain))
    }

    /// Whether a client at `ip` may relay without authenticating.
    pub fn may_relay(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        self.relay_networks.iter().any(|n| n.contains(&ip))
    }
}

/// Parses `"64MiB"`, `"50MB"`, `"4096"`, `"1_000_000"`: bytes with an optional
/// SI (k, M, G: powers of 1000) or IEC (KiB, MiB, GiB: powers of 1024) unit.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim().replace('_', "");
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}`: expected a size like 4096, 64KiB, 50MB or 1GiB"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "k" | "kB" | "K" | "KB" => 1_000,
        "KiB" => 1 << 10,
        "M" | "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "G" | "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "`{text}`: unknown unit `{other}` (use B, kB, KiB, MB, MiB, GB, GiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{text}` is too large"))
}

fn parse_network(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("`{text}`: expected an address or CIDR like 10.0.0.0/8 or ::1/128"))
}

fn parse_pattern(text: &str) -> Result<DomainPattern, String> {
    let t = text.trim();
    if t == "*" {
        return Ok(DomainPattern::Any);
    }
    let (sub, name) = match t.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, t),
    };
    if !is_hostname(name) {
        return Err(format!(
            "`{text}`: expected `*`, `example.com` or `*.example.com`"
        ));
    }
    let name = name.to_ascii_lowercase();
    Ok(if sub {
        DomainPattern::Subdomains(format!(".{name}"))
    } else {
        DomainPattern::Exact(name)
    })
}

fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| is_hostname(s))
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid_and_safe() {
        let c = Config::embedded_default().expect("the embedded default validates");
        assert!(
            c.listen.ip().is_loopback(),
            "default listens on loopback only"
        );
        assert!(c.may_relay("127.0.0.1".parse().unwrap()));
        assert!(c.may_relay("::1".parse().unwrap()));
        assert!(!c.may_relay("192.0.2.1".parse().unwrap()));
        assert_eq!(c.durability, Durability::Fdatasync);
        assert!(c.routes.is_empty(), "default delivers by MX");
    }

    #[test]
    fn unknown_key_names_its_path() {
        let err = Config::parse("t.toml", "[spool]\nsegmnet_size = \"1MiB\"\n", None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("t.toml"), "{msg}");
        assert!(msg.contains("spool"), "{msg}");
        assert!(msg.contains("segmnet_size"), "{msg}");
    }

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let text = r#"
            cores = []
            [inject]
            listen = "nowhere"
            message_size_max = "lots"
            recipients_max = 10
            relay_networks = ["10.0.0.0/8", "bogus"]
            [spool]
            durability = "maybe"
            spare_segments = 1000
            [[route]]
            pattern = "*"
            hosts = ["127.0.0.1:2526", "sink"]
        "#;
        let ConfigError::Invalid { problems, .. } =
            Config::parse("t.toml", text, None).unwrap_err()
        else {
            panic!("expected Invalid");
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "cores",
            "inject.listen",
            "inject.relay_networks[1]",
            "inject.message_size_max",
            "inject.recipients_max",
            "spool.durability",
            "spool.spare_segments",
            "route[0].hosts[1]",
        ] {
            assert!(keys.contains(&k), "missing {k} in {keys:?}");
        }
    }

    #[test]
    fn sizes_and_patterns() {
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("50MB"), Ok(50_000_000));
        assert_eq!(parse_bytes("1_024"), Ok(1024));
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("99999999999999GiB").is_err());
        let sub = parse_pattern("*.Example.COM").unwrap();
        assert!(sub.matches("mx.example.com"));
        assert!(!sub.matches("example.com"));
        assert!(!sub.matches("badexample.com"));
        assert!(parse_pattern("exa mple.com").is_err());
        assert!(DomainPattern::Exact("example.com".into()).matches("EXAMPLE.com"));
    }

    #[test]
    fn tenants_validate_under_their_keys_and_decide_dsn() {
        let text = r#"
            [delivery]
            dsn = true
            [tenants.acme]
            users = ["alice"]
            dsn = false
            [tenants.beta]
            users = ["alice"]
        "#;
        let ConfigError::Invalid { problems, .. } =
            Config::parse("t.toml", text, None).unwrap_err()
        else {
            panic!("expected Invalid");
        };
        assert_eq!(problems[0].key, "tenants.beta.users[0]", "{problems:?}");
        let c = Config::parse("t.toml", "[tenants.acme]\ndsn = false\n", None).unwrap();
        assert!(!c.dsn_for_tenant(b"acme"));
        assert!(c.dsn_for_tenant(b"other") && c.dsn_for_tenant(b""));
        assert_eq!(c.tenants.tenant_header, b"x-tenant");
        assert_eq!(c.tenants.campaign_header, b"x-campaign");
        let err = Config::parse("t.toml", "[tenants.acme]\nusers = 1\n", None).unwrap_err();
        assert!(err.to_string().contains("tenants.acme.users"), "{err}");
    }

    #[test]
    fn routes_resolve_in_order() {
        let text = r#"
            [[route]]
            pattern = "special.test"
            hosts = ["127.0.0.1:3000"]
            [[route]]
            pattern = "*"
            hosts = ["127.0.0.1:2526"]
        "#;
        let c = Config::parse("t.toml", text, None).unwrap();
        assert_eq!(c.route_for("special.test").unwrap().hosts[0].port(), 3000);
        assert_eq!(c.route_for("other.test").unwrap().hosts[0].port(), 2526);
    }
}
