//! Layering: default < default×source < provider < provider×source < domain
//! < domain×source. Each field comes from the most specific layer that sets
//! it, and a limit's key names that layer, so a provider's rate is one limit
//! shared by all its domains while a domain's own rate is its own limit.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use super::{Layer, Match, Rules, Scoped, TlsPolicy};
use crate::backoff::BackoffRule;
use crate::units::{Rate, RetrySchedule};

/// A limit value with the key that identifies it across shards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit<T> {
    /// `SCOPE/FIELD`, e.g. `provider:google/max_message_rate`.
    pub key: String,
    /// The value.
    pub value: T,
}

/// The settings for one destination and source, all layers applied.
#[derive(Clone, Debug)]
pub struct EffectiveRule {
    /// The queue this destination belongs to: `provider:NAME` when a
    /// provider matched, else `domain:DOMAIN`.
    pub site: String,
    /// The source, if one was given.
    pub source: Option<String>,
    /// Simultaneous connections.
    pub max_connections: Limit<u32>,
    /// Messages per period.
    pub max_message_rate: Option<Limit<Rate>>,
    /// New connections per period.
    pub max_connection_rate: Option<Limit<Rate>>,
    /// Messages per connection.
    pub max_deliveries_per_connection: u32,
    /// Recipients per transaction.
    pub max_recipients_per_transaction: u32,
    /// Connect plus greeting.
    pub connect_timeout: Duration,
    /// Each command.
    pub command_timeout: Duration,
    /// The final dot.
    pub data_timeout: Duration,
    /// Retry schedule.
    pub retry_after: RetrySchedule,
    /// Give up after.
    pub max_age: Duration,
    /// TLS policy.
    pub tls: TlsPolicy,
    /// Source pool.
    pub pool: Option<String>,
    /// Backoff rules, most specific layer first.
    pub backoff: Vec<BackoffRule>,
}

/// Whether `name` is `suffix` or ends with `.suffix`.
fn has_suffix(name: &str, suffix: &str) -> bool {
    name == suffix
        || (name.len() > suffix.len()
            && name.ends_with(suffix)
            && name.as_bytes()[name.len() - suffix.len() - 1] == b'.')
}

impl Rules {
    /// The provider for a destination: a domain suffix match, or every MX
    /// host matching an MX suffix. The longest matching suffix wins; equal
    /// lengths go to the provider whose name sorts first.
    pub fn provider_for(&self, domain: &str, mx_hosts: &[&str]) -> Option<usize> {
        let mut best: Option<(usize, usize)> = None;
        for (index, provider) in self.providers.iter().enumerate() {
            let mut score = None;
            for m in &provider.matches {
                let len = match m {
                    Match::DomainSuffix(s) => has_suffix(domain, s).then_some(s.len()),
                    Match::MxSuffix(s) => (!mx_hosts.is_empty()
                        && mx_hosts.iter().all(|h| {
                            provider.matches.iter().any(|m| match m {
                                Match::MxSuffix(s) => has_suffix(&normalize_host(h), s),
                                Match::DomainSuffix(_) => false,
                            })
                        })
                        && mx_hosts.iter().any(|h| has_suffix(&normalize_host(h), s)))
                    .then_some(s.len()),
                };
                score = score.max(len);
            }
            if let Some(len) = score {
                if best.is_none_or(|(best_len, _)| len > best_len) {
                    best = Some((len, index));
                }
            }
        }
        best.map(|(_, index)| index)
    }

    /// The effective rule for a destination domain, its MX hosts (may be
    /// empty when not resolved yet; domain-suffix providers still match) and
    /// a source.
    pub fn effective(
        &self,
        domain: &str,
        mx_hosts: &[&str],
        source: Option<&str>,
    ) -> EffectiveRule {
        let domain = normalize_host(domain);
        let provider = self
            .provider_for(&domain, mx_hosts)
            .map(|i| &self.providers[i]);
        let site = match provider {
            Some(p) => format!("provider:{}", p.name),
            None => format!("domain:{domain}"),
        };
        // Most specific first: (layer, scope used in limit keys).
        let mut layers: Vec<(&Layer, String)> = Vec::with_capacity(6);
        let domain_scope = format!("domain:{domain}");
        let scoped_layers: Vec<(&Scoped, String)> = [
            self.domains.get(&domain).map(|s| (s, domain_scope.clone())),
            provider.map(|p| (&p.rule, format!("provider:{}", p.name))),
            Some((&self.default, site.clone())),
        ]
        .into_iter()
        .flatten()
        .collect();
        for (scoped, scope) in &scoped_layers {
            if let Some(source) = source {
                if let Some(over) = scoped.by_source.get(source) {
                    layers.push((over, format!("{scope}@{source}")));
                }
            }
            layers.push((&scoped.layer, scope.clone()));
        }
        let pick = |f: fn(&Layer) -> bool| layers.iter().find(|(l, _)| f(l));
        let value = |get: fn(&Layer) -> Option<u32>, fallback: u32| {
            layers.iter().find_map(|(l, _)| get(l)).unwrap_or(fallback)
        };
        let keyed_rate = |get: fn(&Layer) -> Option<Rate>, field: &str| {
            layers.iter().find_map(|(l, scope)| {
                get(l).map(|value| super::Limit {
                    key: format!("{scope}/{field}"),
                    value,
                })
            })
        };
        let connections = pick(|l| l.max_connections.is_some())
            .and_then(|(l, scope)| {
                l.max_connections.map(|value| Limit {
                    key: format!("{scope}/max_connections"),
                    value,
                })
            })
            .unwrap_or_else(|| Limit {
                key: format!("{site}/max_connections"),
                value: super::default_max_connections(),
            });
        let duration = |get: fn(&Layer) -> Option<Duration>, fallback: fn() -> Duration| {
            layers
                .iter()
                .find_map(|(l, _)| get(l))
                .unwrap_or_else(fallback)
        };
        EffectiveRule {
            site: site.clone(),
            source: source.map(str::to_string),
            max_connections: connections,
            max_message_rate: keyed_rate(|l| l.max_message_rate, "max_message_rate"),
            max_connection_rate: keyed_rate(|l| l.max_connection_rate, "max_connection_rate"),
            max_deliveries_per_connection: value(
                |l| l.max_deliveries_per_connection,
                super::default_max_deliveries_per_connection(),
            ),
            max_recipients_per_transaction: value(
                |l| l.max_recipients_per_transaction,
                super::default_max_recipients_per_transaction(),
            ),
            connect_timeout: duration(|l| l.connect_timeout, super::default_connect_timeout),
            command_timeout: duration(|l| l.command_timeout, super::default_command_timeout),
            data_timeout: duration(|l| l.data_timeout, super::default_data_timeout),
            retry_after: layers
                .iter()
                .find_map(|(l, _)| l.retry_after.clone())
                .unwrap_or_else(super::default_retry_after),
            max_age: duration(|l| l.max_age, super::default_max_age),
            tls: layers
                .iter()
                .find_map(|(l, _)| l.tls)
                .unwrap_or_else(super::default_tls),
            pool: layers.iter().find_map(|(l, _)| l.pool.clone()),
            backoff: layers
                .iter()
                .flat_map(|(l, _)| l.backoff.iter().cloned())
                .collect(),
        }
    }
}

fn normalize_host(host: &str) -> String {
    host.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// A shard's cache of effective rules, keyed by domain, MX set and source.
/// Bounded: when full it starts over (resolving is cheap, unbounded growth
/// is not).
#[derive(Debug)]
pub struct RuleCache {
    rules: Rules,
    entries: HashMap<(String, u64, Option<String>), Rc<EffectiveRule>>,
    entries_max: usize,
    uses_mx: bool,
}

impl RuleCache {
    /// A cache over `rules` holding at most `entries_max` rules.
    pub fn new(rules: Rules, entries_max: usize) -> RuleCache {
        let uses_mx = rules
            .providers
            .iter()
            .any(|p| p.matches.iter().any(|m| matches!(m, Match::MxSuffix(_))));
        RuleCache {
            rules,
            entries: HashMap::new(),
            entries_max: entries_max.max(1),
            uses_mx,
        }
    }

    /// The rules.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// The effective rule, computed once per (domain, MX set, source).
    pub fn effective(
        &mut self,
        domain: &str,
        mx_hosts: &[&str],
        source: Option<&str>,
    ) -> Rc<EffectiveRule> {
        let fingerprint = if self.uses_mx {
            mx_fingerprint(mx_hosts)
        } else {
            0
        };
        let key = (
            normalize_host(domain),
            fingerprint,
            source.map(str::to_string),
        );
        if let Some(rule) = self.entries.get(&key) {
            return Rc::clone(rule);
        }
        if self.entries.len() >= self.entries_max {
            self.entries.clear();
        }
        let rule = Rc::new(self.rules.effective(domain, mx_hosts, source));
        self.entries.insert(key, Rc::clone(&rule));
        rule
    }

    /// Entries cached now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// An order-independent fingerprint of an MX host set (FNV-1a per host,
/// combined by sum so order does not matter).
fn mx_fingerprint(hosts: &[&str]) -> u64 {
    hosts
        .iter()
        .map(|h| {
            normalize_host(h)
                .bytes()
                .fold(0xcbf2_9ce4_8422_2325_u64, |hash, b| {
                    (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
                })
        })
        .fold(0u64, u64::wrapping_add)
}
