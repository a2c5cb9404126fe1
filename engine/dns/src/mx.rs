//! RFC 5321 §5.1 MX resolution as a pure state machine.
//!
//! [`MxLookup`] never does I/O. The driver (or a test) loops:
//! [`MxLookup::step`] returns the questions to ask ([`Step::Ask`]), says it
//! is waiting for answers already asked ([`Step::Wait`]), or gives the
//! outcome ([`Step::Done`]); each answer goes back through
//! [`MxLookup::answer`] together with the caller's seeded random generator,
//! which is used only to shuffle MX hosts of equal preference.
//!
//! The rules, in the order they apply:
//! 1. Ask MX for the domain. NXDOMAIN fails permanently (`550 5.1.2`); a
//!    temporary failure (SERVFAIL, timeouts) fails temporarily
//!    (`451 4.4.3`) and never falls back to A/AAAA.
//! 2. A null MX (`MX 0 .`, RFC 7505 §3) fails permanently at once with
//!    `556 5.1.10`, without any address lookup.
//! 3. MX records are sorted by preference and equal preferences shuffled
//!    (§5.1 "randomize them to spread the load"); duplicates keep their
//!    lowest preference; at most `hosts_max` hosts are kept.
//! 4. Only when the domain has no MX records at all (NODATA) is the domain
//!    itself used as an implicit MX of preference 0 (§5.1).
//! 5. Each host's A and AAAA records are asked (as configured), CNAMEs
//!    are followed, and addresses refused by the [`AddressPolicy`] are
//!    dropped. Hosts left without addresses are dropped.
//! 6. The result lists the hosts that have addresses; if none has, the
//!    failure is temporary when any lookup failed temporarily, otherwise
//!    permanent (`550 5.4.4`, or `550 5.1.2` for an implicit MX).

use std::borrow::Cow;
use std::net::IpAddr;
use std::time::Duration;

use rand::Rng;
use sluice_smtp::{EnhancedCode, Reply, ReplyCode};

use crate::error::TempError;
use crate::policy::AddressPolicy;
use crate::site::{SiteKey, SiteRules};
use crate::wire::{normalize_name, Lookup, QueryType, Question, Rdata};

/// Configuration of MX resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxConfig {
    /// Which non-public addresses may be used.
    pub policy: AddressPolicy,
    /// Ask A records.
    pub ipv4: bool,
    /// Ask AAAA records.
    pub ipv6: bool,
    /// List IPv6 addresses before IPv4 ones within a host.
    pub prefer_ipv6: bool,
    /// MX hosts kept after sorting (the rest are never tried).
    pub hosts_max: usize,
    /// CNAME re-queries allowed per name (beyond the chains servers
    /// resolve inside one answer).
    pub cname_hops_max: usize,
    /// How hosts roll up into sites.
    pub site_rules: SiteRules,
    /// Shortest time a resolution is kept before it is asked again, however
    /// short its TTLs (records with TTL 0 would otherwise be asked for
    /// every recipient).
    pub refresh_min: Duration,
    /// Longest time a resolution is kept, however long its TTLs.
    pub refresh_max: Duration,
}

impl MxConfig {
    /// How long a resolution whose answers hold for `ttl` (see
    /// [`MxLookup::ttl`]) is used before it is asked again: the TTL within
    /// [`MxConfig::refresh_min`]..=[`MxConfig::refresh_max`];
    /// `refresh_min` when no answer carried a TTL.
    pub fn refresh_after(&self, ttl: Option<Duration>) -> Duration {
        let max = self.refresh_max.max(self.refresh_min);
        ttl.unwrap_or(self.refresh_min).clamp(self.refresh_min, max)
    }
}

impl Default for MxConfig {
    fn default() -> Self {
        MxConfig {
            policy: AddressPolicy::default(),
            ipv4: true,
            ipv6: true,
            prefer_ipv6: false,
            hosts_max: 16,
            cname_hops_max: 8,
            site_rules: SiteRules::default(),
            refresh_min: Duration::from_secs(30),
            refresh_max: Duration::from_secs(3600),
        }
    }
}

/// One MX host with its usable addresses (never empty in an outcome).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    /// The exchange name, normalised.
    pub name: String,
    /// Its MX preference (0 for an implicit MX).
    pub preference: u16,
    /// Addresses allowed by the policy, in connection order.
    pub addrs: Vec<IpAddr>,
}

/// Why a resolution failed, for callers that branch on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailReason {
    /// The recipient domain is not a valid name.
    InvalidDomain,
    /// The domain does not exist.
    NxDomain,
    /// The domain publishes a null MX: it accepts no mail.
    NullMx,
    /// No MX host (or the domain, without MX) has an address.
    NoAddress,
    /// Addresses exist but the policy refuses all of them.
    AddressRefused,
    /// A lookup failed temporarily.
    Temporary(TempError),
}

/// A failed resolution, with the reply to record for the recipients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsFailure {
    /// The reply (code, enhanced code and text) for the delivery log and
    /// bounces.
    pub reply: Reply,
    /// The cause.
    pub reason: FailReason,
}

/// The result of resolving a domain's mail exchangers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxOutcome {
    /// Hosts in the order to try them.
    Resolved {
        /// At least one host, each with at least one address.
        hosts: Vec<MxHost>,
        /// True when the domain had no MX and its own addresses are used.
        implicit: bool,
        /// The site key (see [`crate::site`]).
        site: SiteKey,
    },
    /// Do not retry: bounce.
    PermFail(DnsFailure),
    /// Retry later.
    TempFail(DnsFailure),
}

/// What the state machine needs next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Ask these questions (each is returned once) and feed the answers
    /// back.
    Ask(Vec<Question>),
    /// Questions are outstanding; feed their answers.
    Wait,
    /// Finished.
    Done(MxOutcome),
}

/// One outstanding or finished address family of one host.
#[derive(Debug)]
struct Family {
    qtype: QueryType,
    name: String,
    hops: usize,
    asked: bool,
    done: bool,
    addrs: Vec<IpAddr>,
}

#[derive(Debug)]
struct Host {
    name: String,
    preference: u16,
    families: Vec<Family>,
}

#[derive(Debug)]
enum State {
    Mx {
        name: String,
        hops: usize,
        asked: bool,
    },
    Hosts {
        hosts: Vec<Host>,
        implicit: bool,
        refused_count: usize,
        temp: Option<TempError>,
    },
    Done(MxOutcome),
}

/// The MX resolution of one domain.
#[derive(Debug)]
pub struct MxLookup<'c> {
    config: &'c MxConfig,
    domain: String,
    state: State,
    /// The smallest TTL of the answers used so far.
    ttl: Option<Duration>,
}

impl<'c> MxLookup<'c> {
    /// Starts resolving `domain` (as written in an address: Unicode or
    /// ASCII, any case, optional trailing dot).
    pub fn new(domain: &str, config: &'c MxConfig) -> Self {
        let state = match normalize_name(domain) {
            Ok(name) => State::Mx {
                name,
                hops: 0,
                asked: false,
            },
            Err(e) => State::Done(MxOutcome::PermFail(failure(
                550,
                (5, 1, 2),
                format!("invalid recipient domain: {e}"),
                FailReason::InvalidDomain,
            ))),
        };
        let domain = match &state {
            State::Mx { name, .. } => name.clone(),
            _ => domain.to_owned(),
        };
        MxLookup {
            config,
            domain,
            state,
            ttl: None,
        }
    }

    /// How long the answers used so far hold: the smallest TTL given to
    /// [`MxLookup::answer_with_ttl`] with an answer the lookup used (MX,
    /// CNAME and address answers, negative ones included); `None` when
    /// none came with a TTL.
    pub fn ttl(&self) -> Option<Duration> {
        self.ttl
    }

    /// The normalised domain being resolved.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// What to do next.
    pub fn step(&mut self) -> Step {
        match &mut self.state {
            State::Done(outcome) => Step::Done(outcome.clone()),
            State::Mx { name, asked, .. } => {
                if *asked {
                    Step::Wait
                } else {
                    *asked = true;
                    Step::Ask(vec![Question::new(name.clone(), QueryType::Mx)])
                }
            }
            State::Hosts { hosts, .. } => {
                let mut ask = Vec::new();
                let mut pending = false;
                for family in hosts.iter_mut().flat_map(|h| h.families.iter_mut()) {
                    if family.done {
                        continue;
                    }
                    pending = true;
                    if !family.asked {
                        family.asked = true;
                        ask.push(Question::new(family.name.clone(), family.qtype));
                    }
                }
                if !ask.is_empty() {
                    Step::Ask(ask)
                } else if pending {
                    Step::Wait
                } else {
                    let outcome = self.finish();
                    self.state = State::Done(outcome.clone());
                    Step::Done(outcome)
                }
            }
        }
    }

    /// Feeds the answer to a question returned by [`MxLookup::step`].
    /// Answers to questions that are not outstanding are ignored.
    pub fn answer<R: Rng>(
        &mut self,
        question: &Question,
        result: Result<Lookup, TempError>,
        rng: &mut R,
    ) {
        self.answer_with_ttl(question, result, None, rng);
    }

    /// [`MxLookup::answer`] with the time the answer stays valid (e.g. the
    /// cache's remaining TTL); the lookup keeps the smallest of those it
    /// used (see [`MxLookup::ttl`]).
    pub fn answer_with_ttl<R: Rng>(
        &mut self,
        question: &Question,
        result: Result<Lookup, TempError>,
        ttl: Option<Duration>,
        rng: &mut R,
    ) {
        if self.outstanding(question) {
            if let Some(ttl) = ttl {
                self.ttl = Some(self.ttl.map_or(ttl, |t| t.min(ttl)));
            }
        }
        let config = self.config;
        match &mut self.state {
            State::Done(_) => {}
            State::Mx { name, hops, asked } => {
                if !*asked || question.qtype != QueryType::Mx || question.name != *name {
                    return;
                }
                let (name, hops) = (name.clone(), *hops);
                self.state = match result {
                    Ok(Lookup::Records(records)) => self.mx_records(&records, rng),
                    // RFC 5321 §5.1: no MX records at all → implicit MX.
                    Ok(Lookup::NoData) => self.hosts_state(vec![(name, 0)], true),
                    Ok(Lookup::NxDomain) => State::Done(MxOutcome::PermFail(failure(
                        550,
                        (5, 1, 2),
                        format!("domain {} does not exist", self.domain),
                        FailReason::NxDomain,
                    ))),
                    Ok(Lookup::Alias(target)) if hops < config.cname_hops_max => State::Mx {
                        name: target.to_string(),
                        hops: hops + 1,
                        asked: false,
                    },
                    Ok(Lookup::Alias(_)) => {
                        State::Done(temp_failure(&self.domain, "MX", TempError::CnameChain))
                    }
                    Err(e) => State::Done(temp_failure(&self.domain, "MX", e)),
                };
            }
            State::Hosts {
                hosts,
                refused_count,
                temp,
                ..
            } => {
                for family in hosts.iter_mut().flat_map(|h| h.families.iter_mut()) {
                    if family.done
                        || !family.asked
                        || family.qtype != question.qtype
                        || family.name != question.name
                    {
                        continue;
                    }
                    match &result {
                        Ok(Lookup::Records(records)) => {
                            family.done = true;
                            for rdata in records.iter() {
                                if let Rdata::Addr(ip) = rdata {
                                    if config.policy.permits(*ip) {
                                        family.addrs.push(*ip);
                                    } else {
                                        *refused_count += 1;
                                    }
                                }
                            }
                        }
                        Ok(Lookup::NoData | Lookup::NxDomain) => family.done = true,
                        Ok(Lookup::Alias(target)) if family.hops < config.cname_hops_max => {
                            family.name = target.to_string();
                            family.hops += 1;
                            family.asked = false;
                        }
                        Ok(Lookup::Alias(_)) => {
                            family.done = true;
                            *temp = Some(TempError::CnameChain);
                        }
                        Err(e) => {
                            family.done = true;
                            *temp = Some(e.clone());
                        }
                    }
                }
            }
        }
    }

    /// Whether `question` is one the lookup waits for.
    fn outstanding(&self, question: &Question) -> bool {
        match &self.state {
            State::Done(_) => false,
            State::Mx { name, asked, .. } => {
                *asked && question.qtype == QueryType::Mx && question.name == *name
            }
            State::Hosts { hosts, .. } => hosts.iter().flat_map(|h| &h.families).any(|f| {
                !f.done && f.asked && f.qtype == question.qtype && f.name == question.name
            }),
        }
    }

    fn mx_records<R: Rng>(&self, records: &[Rdata], rng: &mut R) -> State {
        let mut mx: Vec<(String, u16)> = records
            .iter()
            .filter_map(|r| match r {
                Rdata::Mx {
                    preference,
                    exchange,
                } => Some((exchange.clone(), *preference)),
                Rdata::Addr(_) => None,
            })
            .collect();
        // RFC 7505 §3: a single MX whose exchange is the root ("."). A
        // root exchange mixed with real hosts is a broken zone; the real
        // hosts are used and the root entry ignored (§4.3 forbids
        // connecting to it).
        if !mx.is_empty() && mx.iter().all(|(name, _)| name.is_empty()) {
            return State::Done(MxOutcome::PermFail(failure(
                556,
                (5, 1, 10),
                format!("domain {} does not accept mail (null MX)", self.domain),
                FailReason::NullMx,
            )));
        }
        mx.retain(|(name, _)| !name.is_empty());
        if mx.is_empty() {
            // Only non-MX data in an MX answer: treat as no MX at all.
            return self.hosts_state(vec![(self.domain.clone(), 0)], true);
        }
        // Duplicates keep their lowest preference.
        mx.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        mx.dedup_by(|later, first| later.0 == first.0);
        // RFC 5321 §5.1: sort by preference; hosts of equal preference
        // are tried in random order to spread the load.
        mx.sort_by_key(|(_, preference)| *preference);
        let mut start = 0;
        while start < mx.len() {
            let preference = mx[start].1;
            let end = mx[start..]
                .iter()
                .position(|(_, p)| *p != preference)
                .map_or(mx.len(), |n| start + n);
            shuffle(&mut mx[start..end], rng);
            start = end;
        }
        mx.truncate(self.config.hosts_max.max(1));
        self.hosts_state(mx, false)
    }

    fn hosts_state(&self, hosts: Vec<(String, u16)>, implicit: bool) -> State {
        let mut qtypes = Vec::with_capacity(2);
        if self.config.prefer_ipv6 && self.config.ipv6 {
            qtypes.push(QueryType::Aaaa);
        }
        if self.config.ipv4 {
            qtypes.push(QueryType::A);
        }
        if !self.config.prefer_ipv6 && self.config.ipv6 {
            qtypes.push(QueryType::Aaaa);
        }
        let hosts = hosts
            .into_iter()
            .map(|(name, preference)| Host {
                families: qtypes
                    .iter()
                    .map(|&qtype| Family {
                        qtype,
                        name: name.clone(),
                        hops: 0,
                        asked: false,
                        done: false,
                        addrs: Vec::new(),
                    })
                    .collect(),
                name,
                preference,
            })
            .collect();
        State::Hosts {
            hosts,
            implicit,
            refused_count: 0,
            temp: None,
        }
    }

    fn finish(&mut self) -> MxOutcome {
        let State::Hosts {
            hosts,
            implicit,
            refused_count,
            temp,
        } = &mut self.state
        else {
            unreachable!("finish is only called in the Hosts state");
        };
        let resolved: Vec<MxHost> = hosts
            .iter_mut()
            .filter_map(|host| {
                let addrs: Vec<IpAddr> = host
                    .families
                    .iter_mut()
                    .flat_map(|f| std::mem::take(&mut f.addrs))
                    .collect();
                (!addrs.is_empty()).then(|| MxHost {
                    name: host.name.clone(),
                    preference: host.preference,
                    addrs,
                })
            })
            .collect();
        if !resolved.is_empty() {
            let site = if *implicit {
                self.config.site_rules.key_for_implicit(&self.domain)
            } else {
                self.config
                    .site_rules
                    .key_for_hosts(hosts.iter().map(|h| h.name.as_str()))
            };
            return MxOutcome::Resolved {
                hosts: resolved,
                implicit: *implicit,
                site,
            };
        }
        if let Some(e) = temp.take() {
            return temp_failure(&self.domain, "address", e);
        }
        if *refused_count > 0 {
            return MxOutcome::PermFail(failure(
                550,
                (5, 4, 4),
                format!(
                    "mail exchangers of {} resolve only to refused (loopback, private or reserved) addresses",
                    self.domain
                ),
                FailReason::AddressRefused,
            ));
        }
        if *implicit {
            MxOutcome::PermFail(failure(
                550,
                (5, 1, 2),
                format!("domain {} has no MX and no address records", self.domain),
                FailReason::NoAddress,
            ))
        } else {
            MxOutcome::PermFail(failure(
                550,
                (5, 4, 4),
                format!("no mail exchanger of {} has an address", self.domain),
                FailReason::NoAddress,
            ))
        }
    }
}

/// Fisher-Yates with the caller's generator.
fn shuffle<T, R: Rng>(items: &mut [T], rng: &mut R) {
    for i in (1..items.len()).rev() {
        let j = rng.gen_range(0..=i);
        items.swap(i, j);
    }
}

fn failure(code: u16, enhanced: (u8, u16, u16), text: String, reason: FailReason) -> DnsFailure {
    // The literals passed by this module are valid codes; the fallbacks
    // only guard against an edit that breaks one.
    let code = ReplyCode::new(code).unwrap_or(ReplyCode::from_literal(451));
    let enhanced = EnhancedCode::new(enhanced.0, enhanced.1, enhanced.2).unwrap_or(EnhancedCode {
        class: 4,
        subject: 4,
        detail: 3,
    });
    // The text may quote a name decoder's error about user input: never
    // let CR or LF reach a reply line or a bounce (RELIABILITY.md).
    let text = text.replace(['\r', '\n'], " ");
    DnsFailure {
        reply: Reply::new(code, enhanced, Cow::Owned(text)),
        reason,
    }
}

fn temp_failure(domain: &str, what: &str, error: TempError) -> MxOutcome {
    MxOutcome::TempFail(failure(
        451,
        (4, 4, 3),
        format!("temporary DNS failure resolving {what} for {domain}: {error}"),
        FailReason::Temporary(error),
    ))
}

#[cfg(test)]
mod tests;
