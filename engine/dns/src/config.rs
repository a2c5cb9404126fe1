//! The `[dns]` configuration section: a serde struct of human values,
//! validated into a [`ResolverConfig`] with every problem reported under
//! its full key.
//!
//! ```toml
//! [dns]
//! # Default: the nameservers and options of /etc/resolv.conf.
//! nameservers = ["127.0.0.1:5353", "10.0.0.2"]   # port 53 when omitted
//! timeout = "2s"             # per try
//! attempts = 2               # rounds over the servers
//! rotate = false
//! outstanding_max = 256      # network queries at once per shard
//! cache_entries_max = 65536
//! ttl_max = "1d"
//! negative_ttl_max = "15m"
//! ipv4 = true
//! ipv6 = true
//! prefer_ipv6 = false
//! mx_hosts_max = 16
//! mx_refresh_min = "30s"     # a domain's MX resolution is kept for its
//! mx_refresh_max = "1h"      #   TTLs, within these bounds
//! allow_loopback = false     # tests set this
//! allow_private = false
//! allow_link_local = false
//! provider_suffixes = ["google.com", "outlook.com"]
//! smtp_port = 25             # port of the mail exchangers (tests change it)
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::driver::ResolverConfig;
use crate::mx::MxConfig;
use crate::policy::AddressPolicy;
use crate::resolv_conf::{ResolvConf, ATTEMPTS_MAX, NAMESERVERS_MAX};
use crate::site::SiteRules;
use crate::wire::normalize_name;

/// The `[dns]` section as written. Absent keys take the resolv.conf value
/// (servers, timeout, attempts, rotate) or the documented default.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawDnsConfig {
    /// File to read servers and options from (default `/etc/resolv.conf`).
    pub resolv_conf: Option<PathBuf>,
    /// `ip` or `ip:port` / `[ipv6]:port`; replaces resolv.conf's servers.
    pub nameservers: Option<Vec<String>>,
    /// Per-try timeout, e.g. `"2s"` or `"500ms"`.
    pub timeout: Option<String>,
    /// Rounds over the servers (1 to 5).
    pub attempts: Option<u32>,
    /// Start each query at the next server.
    pub rotate: Option<bool>,
    /// Network queries outstanding at once per shard.
    pub outstanding_max: Option<usize>,
    /// Cache entries per shard.
    pub cache_entries_max: Option<usize>,
    /// Cap on positive TTLs.
    pub ttl_max: Option<String>,
    /// Cap on negative TTLs.
    pub negative_ttl_max: Option<String>,
    /// Ask A records.
    pub ipv4: Option<bool>,
    /// Ask AAAA records.
    pub ipv6: Option<bool>,
    /// IPv6 addresses first within a host.
    pub prefer_ipv6: Option<bool>,
    /// MX hosts kept per domain.
    pub mx_hosts_max: Option<usize>,
    /// Shortest time a domain's MX resolution is kept (TTLs below it are
    /// raised to it).
    pub mx_refresh_min: Option<String>,
    /// Longest time a domain's MX resolution is kept (TTLs above it are
    /// lowered to it).
    pub mx_refresh_max: Option<String>,
    /// Allow loopback addresses from MX lookups.
    pub allow_loopback: Option<bool>,
    /// Allow private (RFC 1918, RFC 6598, ULA) addresses.
    pub allow_private: Option<bool>,
    /// Allow link-local addresses.
    pub allow_link_local: Option<bool>,
    /// Suffixes that roll MX host sets into one site.
    pub provider_suffixes: Option<Vec<String>>,
    /// TCP port of the mail exchangers found through DNS (default 25;
    /// tests point it at sinks on a high port).
    pub smtp_port: Option<u16>,
}

/// One invalid value: the full key and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// E.g. `dns.timeout` or `dns.nameservers[1]`.
    pub key: String,
    /// What is wrong and what would be right.
    pub reason: String,
}

impl RawDnsConfig {
    /// Validates into a [`ResolverConfig`]; `prefix` is the section's key
    /// path (`"dns"`). Reads the resolv.conf file unless `nameservers` is
    /// given. Every problem is reported, not only the first.
    pub fn validate(&self, prefix: &str) -> Result<ResolverConfig, Vec<ConfigProblem>> {
        let (config, problems) = self.validate_all(prefix);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }

    /// Like [`RawDnsConfig::validate`], but a missing or empty resolv.conf
    /// (when `nameservers` is not set) is not fatal: the configuration
    /// comes back without servers, so every MX lookup fails temporarily,
    /// together with that problem as a warning to print. An MTA whose
    /// mail all goes through static routes needs no resolver.
    pub fn validate_lenient(
        &self,
        prefix: &str,
    ) -> Result<(ResolverConfig, Option<ConfigProblem>), Vec<ConfigProblem>> {
        let (config, mut problems) = self.validate_all(prefix);
        let resolv_key = format!("{prefix}.resolv_conf");
        match problems.as_slice() {
            [] => Ok((config, None)),
            [only] if only.key == resolv_key => Ok((config, problems.pop())),
            _ => Err(problems),
        }
    }

    /// The SMTP port of the mail exchangers (25 unless set).
    pub fn smtp_port(&self) -> u16 {
        self.smtp_port.unwrap_or(25)
    }

    fn validate_all(&self, prefix: &str) -> (ResolverConfig, Vec<ConfigProblem>) {
        let mut problems = Vec::new();
        let mut bad = |key: &str, reason: String| {
            problems.push(ConfigProblem {
                key: format!("{prefix}.{key}"),
                reason,
            })
        };
        let base = if self.nameservers.is_some() {
            ResolvConf::default()
        } else {
            let path = self
                .resolv_conf
                .clone()
                .unwrap_or_else(|| PathBuf::from("/etc/resolv.conf"));
            match ResolvConf::load(&path) {
                Ok(conf) if conf.nameservers.is_empty() => {
                    bad(
                        "resolv_conf",
                        format!(
                            "{} lists no usable nameserver; set {prefix}.nameservers",
                            path.display()
                        ),
                    );
                    conf
                }
                Ok(conf) => conf,
                Err(e) => {
                    bad(
                        "resolv_conf",
                        format!("{e}; set {prefix}.nameservers instead"),
                    );
                    ResolvConf::default()
                }
            }
        };
        let mut config = ResolverConfig::from_resolv_conf(&base);
        if let Some(servers) = &self.nameservers {
            if servers.is_empty() || servers.len() > NAMESERVERS_MAX {
                bad(
                    "nameservers",
                    format!("list 1 to {NAMESERVERS_MAX} servers"),
                );
            }
            config.nameservers.clear();
            for (i, s) in servers.iter().enumerate() {
                match parse_server(s) {
                    Some(addr) => config.nameservers.push(addr),
                    None => bad(
                        &format!("nameservers[{i}]"),
                        format!("`{s}` is not `ip`, `ip:port` or `[ipv6]:port`"),
                    ),
                }
            }
        }
        let mut duration = |key: &str, value: &Option<String>, target: &mut Duration| {
            if let Some(text) = value {
                match parse_duration(text) {
                    Some(d) if !d.is_zero() => *target = d,
                    _ => bad(key, format!("`{text}` is not a duration like \"500ms\", \"5s\", \"15m\", \"1h\" or \"1d\"")),
                }
            }
        };
        duration("timeout", &self.timeout, &mut config.timeout);
        duration("ttl_max", &self.ttl_max, &mut config.cache.ttl_max);
        duration(
            "negative_ttl_max",
            &self.negative_ttl_max,
            &mut config.cache.negative_ttl_max,
        );
        duration(
            "mx_refresh_min",
            &self.mx_refresh_min,
            &mut config.mx.refresh_min,
        );
        duration(
            "mx_refresh_max",
            &self.mx_refresh_max,
            &mut config.mx.refresh_max,
        );
        let mut count =
            |key: &str, value: Option<usize>, min: usize, max: usize, target: &mut usize| {
                if let Some(n) = value {
                    if (min..=max).contains(&n) {
                        *target = n;
                    } else {
                        bad(key, format!("{n} is outside {min}..={max}"));
                    }
                }
            };
        let mut attempts = config.attempts as usize;
        count(
            "attempts",
            self.attempts.map(|a| a as usize),
            1,
            ATTEMPTS_MAX as usize,
            &mut attempts,
        );
        config.attempts = attempts as u32;
        count(
            "outstanding_max",
            self.outstanding_max,
            1,
            65_536,
            &mut config.outstanding_max,
        );
        count(
            "cache_entries_max",
            self.cache_entries_max,
            1,
            1 << 24,
            &mut config.cache.entries_max,
        );
        count(
            "mx_hosts_max",
            self.mx_hosts_max,
            1,
            64,
            &mut config.mx.hosts_max,
        );
        let mx: &mut MxConfig = &mut config.mx;
        if mx.refresh_min > mx.refresh_max {
            bad(
                "mx_refresh_min",
                format!(
                    "{:?} is longer than mx_refresh_max ({:?})",
                    mx.refresh_min, mx.refresh_max
                ),
            );
        }
        mx.ipv4 = self.ipv4.unwrap_or(mx.ipv4);
        mx.ipv6 = self.ipv6.unwrap_or(mx.ipv6);
        mx.prefer_ipv6 = self.prefer_ipv6.unwrap_or(mx.prefer_ipv6);
        if !mx.ipv4 && !mx.ipv6 {
            bad(
                "ipv4",
                "ipv4 and ipv6 are both false: no address could be used".into(),
            );
        }
        mx.policy = AddressPolicy {
            allow_loopback: self.allow_loopback.unwrap_or(false),
            allow_private: self.allow_private.unwrap_or(false),
            allow_link_local: self.allow_link_local.unwrap_or(false),
        };
        let mut suffixes = Vec::new();
        for (i, s) in self.provider_suffixes.iter().flatten().enumerate() {
            match normalize_name(s) {
                Ok(n) => suffixes.push(n),
                Err(e) => bad(&format!("provider_suffixes[{i}]"), format!("`{s}`: {e}")),
            }
        }
        mx.site_rules = SiteRules {
            provider_suffixes: suffixes,
        };
        config.rotate = self.rotate.unwrap_or(config.rotate);
        if self.smtp_port == Some(0) {
            bad("smtp_port", "0 is not a port; omit it for 25".into());
        }
        (config, problems)
    }
}

fn parse_server(text: &str) -> Option<SocketAddr> {
    text.parse::<SocketAddr>().ok().or_else(|| {
        text.parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

/// `<integer><unit>` with unit `ms`, `s`, `m`, `h` or `d`.
fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let seconds = match unit {
        "ms" => return Some(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(seconds).map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(toml_text: &str) -> RawDnsConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn full_section_validates() {
        let c = raw(r#"
            nameservers = ["127.0.0.1:5353", "::1", "10.0.0.2"]
            timeout = "500ms"
            attempts = 3
            rotate = true
            outstanding_max = 8
            cache_entries_max = 100
            ttl_max = "1h"
            negative_ttl_max = "5m"
            ipv6 = false
            mx_hosts_max = 4
            mx_refresh_min = "5s"
            mx_refresh_max = "10m"
            allow_loopback = true
            provider_suffixes = ["Google.COM."]
        "#)
        .validate("dns")
        .unwrap();
        assert_eq!(
            c.nameservers,
            vec![
                "127.0.0.1:5353".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap(),
                "10.0.0.2:53".parse().unwrap()
            ]
        );
        assert_eq!(c.timeout, Duration::from_millis(500));
        assert_eq!(c.attempts, 3);
        assert!(c.rotate);
        assert_eq!(c.outstanding_max, 8);
        assert_eq!(c.cache.entries_max, 100);
        assert_eq!(c.cache.ttl_max, Duration::from_secs(3600));
        assert_eq!(c.cache.negative_ttl_max, Duration::from_secs(300));
        assert!(!c.mx.ipv6 && c.mx.ipv4);
        assert_eq!(c.mx.hosts_max, 4);
        assert_eq!(c.mx.refresh_min, Duration::from_secs(5));
        assert_eq!(c.mx.refresh_max, Duration::from_secs(600));
        assert!(c.mx.policy.allow_loopback && !c.mx.policy.allow_private);
        assert_eq!(
            c.mx.site_rules.provider_suffixes,
            vec!["google.com".to_string()]
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let problems = raw(r#"
            nameservers = ["127.0.0.1", "nonsense"]
            timeout = "5 parsecs"
            attempts = 9
            mx_refresh_min = "2h"
            ipv4 = false
            ipv6 = false
            provider_suffixes = ["a..b"]
        "#)
        .validate("dns")
        .unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "dns.nameservers[1]",
                "dns.timeout",
                "dns.attempts",
                "dns.mx_refresh_min",
                "dns.ipv4",
                "dns.provider_suffixes[0]"
            ]
        );
        assert!(toml::from_str::<RawDnsConfig>("typo = 1").is_err());
    }

    #[test]
    fn resolv_conf_is_the_default_source() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(
            &path,
            "nameserver 192.0.2.53\noptions timeout:3 attempts:1\n",
        )
        .unwrap();
        let c = RawDnsConfig {
            resolv_conf: Some(path.clone()),
            timeout: Some("1s".into()),
            ..RawDnsConfig::default()
        }
        .validate("dns")
        .unwrap();
        assert_eq!(
            c.nameservers,
            vec!["192.0.2.53:53".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(c.timeout, Duration::from_secs(1));
        assert_eq!(c.attempts, 1);
        std::fs::write(&path, "# empty\n").unwrap();
        let problems = RawDnsConfig {
            resolv_conf: Some(path),
            ..RawDnsConfig::default()
        }
        .validate("dns")
        .unwrap_err();
        assert_eq!(problems[0].key, "dns.resolv_conf");
        let (lenient, warning) = RawDnsConfig {
            resolv_conf: Some(dir.path().join("missing.conf")),
            ..RawDnsConfig::default()
        }
        .validate_lenient("dns")
        .unwrap();
        assert!(lenient.nameservers.is_empty());
        assert_eq!(warning.unwrap().key, "dns.resolv_conf");
        let other = RawDnsConfig {
            resolv_conf: Some(dir.path().join("missing.conf")),
            timeout: Some("soon".into()),
            ..RawDnsConfig::default()
        }
        .validate_lenient("dns")
        .unwrap_err();
        assert_eq!(other.len(), 2, "{other:?}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("1d"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("1w"), None);
        assert_eq!(parse_duration("99999999999999999999s"), None);
    }
}
