//! The per-shard facade the engine uses: rules cache + queue modes +
//! [`ShardShaper`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use crate::backoff::{BackoffAction, Mode, ModeChange, Outcome, QueueMode, Verdict};
use crate::config::{EffectiveRule, RuleCache, Rules};
use crate::lease::{
    Acquire, ConnAcquire, Envelope, LeaseConfig, LimitId, LimitSpec, Message, Permit, ShardShaper,
};
use crate::units::{Nanos, Rate};

/// Cached effective rules per shard at most.
const RULE_CACHE_ENTRIES_MAX: usize = 100_000;

/// The base of a site rate limit that exists only so backoff can restrict
/// it: far above anything one machine sends.
const UNRESTRICTED: Rate = Rate {
    count: 10_000_000,
    period: Duration::from_secs(1),
    burst: 10_000_000,
};

/// A destination (domain, MX set, source) resolved to its rule and the
/// limits it draws on. Dropping the last clone lets the shard reclaim
/// limits nobody uses any more (at its next `poll`).
#[derive(Clone, Debug)]
pub struct Destination {
    /// The effective rule.
    pub rule: Rc<EffectiveRule>,
    message_limits: Vec<LimitId>,
    site_rate: Option<LimitId>,
    connections: LimitId,
    connection_rate: Option<LimitId>,
    registration: Rc<Registration>,
}

/// The limit registrations one `destination` call made; handed back to
/// the shaper when the last clone of the destination goes.
#[derive(Debug)]
struct Registration {
    ids: Vec<LimitId>,
    released: Rc<RefCell<Vec<LimitId>>>,
    origin: Rc<Origin>,
}

/// What a destination was resolved from: a reload asks the new rules what
/// the limit keys it produced are worth now.
#[derive(Debug)]
struct Origin {
    domain: String,
    mx_hosts: Vec<String>,
    source: Option<String>,
}

impl Origin {
    fn rule(&self, cache: &mut RuleCache) -> Rc<EffectiveRule> {
        let hosts: Vec<&str> = self.mx_hosts.iter().map(String::as_str).collect();
        cache.effective(&self.domain, &hosts, self.source.as_deref())
    }
}

/// What [`Shaper::replace_rules`] did on one shard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Limits whose configured value changed (their home now grants
    /// under the new value and broadcasts it).
    pub limits_changed: usize,
    /// Limits the new rules no longer produce for the destinations that
    /// use them: they keep their value until those destinations are
    /// dropped, then they are reclaimed like any unused limit.
    pub limits_unused: usize,
    /// Sites in backoff or suspended whose new rules have no backoff rule:
    /// back to normal at once.
    pub modes_ended: usize,
    /// Sites in backoff or suspended that keep their mode (their rules
    /// still have backoff rules) until it ends by its own timer or rule.
    pub modes_kept: usize,
}

/// The limits a rule draws on whose value comes from the rules (source and
/// pool limits carry their value in their key and are left out): the site
/// message rate (or the unrestricted one backoff needs), the connection
/// limit and the connection rate.
fn configured_limits(rule: &EffectiveRule) -> Vec<(String, LimitSpec)> {
    let mut out = Vec::with_capacity(3);
    match &rule.max_message_rate {
        Some(limit) => out.push((limit.key.clone(), LimitSpec::Rate(limit.value))),
        None if needs_site_rate(rule) => out.push((
            format!("{}/max_message_rate", rule.site),
            LimitSpec::Rate(UNRESTRICTED),
        )),
        None => {}
    }
    out.push((
        rule.max_connections.key.clone(),
        LimitSpec::Connections(rule.max_connections.value),
    ));
    if let Some(limit) = &rule.max_connection_rate {
        out.push((limit.key.clone(), LimitSpec::Rate(limit.value)));
    }
    out
}

/// Whether backoff may restrict the site's message rate, which then needs
/// a limit even when the rule sets no rate.
fn needs_site_rate(rule: &EffectiveRule) -> bool {
    rule.backoff.iter().any(|r| {
        matches!(
            r.action,
            BackoffAction::Backoff {
                max_message_rate: Some(_),
                ..
            } | BackoffAction::Backoff { aimd: Some(_), .. }
        )
    })
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.released.borrow_mut().append(&mut self.ids);
    }
}

#[derive(Debug)]
struct SiteMode {
    mode: QueueMode,
    /// Every (rate, connections) pair of limits this site's destinations
    /// use on this shard (per-source overrides give a site several).
    limits: Vec<(Option<LimitId>, LimitId)>,
    /// Keeps those limits registered while the site is not in normal mode.
    holds: Vec<Rc<Registration>>,
}

impl SiteMode {
    fn origin(&self) -> Option<&Rc<Origin>> {
        self.holds.first().map(|r| &r.origin)
    }
}

/// The (message rate, connections) restrictions a mode asks for.
fn restrictions(mode: &Mode) -> (Option<Rate>, Option<u32>) {
    match mode {
        Mode::Normal => (None, None),
        Mode::Backoff {
            message_rate,
            max_connections,
            ..
        } => (*message_rate, *max_connections),
        Mode::Suspended { .. } => (None, Some(0)),
    }
}

/// One shard's shaping state.
#[derive(Debug)]
pub struct Shaper {
    cache: RuleCache,
    lease: ShardShaper,
    modes: HashMap<String, SiteMode>,
    released: Rc<RefCell<Vec<LimitId>>>,
    /// Mode changes made by timers in [`Shaper::poll`] (a backoff ending),
    /// by site, until [`Shaper::take_timed_changes`] collects them.
    timed_changes: Vec<(String, ModeChange)>,
    /// The destination each configured limit key was first resolved for
    /// (pruned to the keys still registered).
    origins: HashMap<Box<str>, Rc<Origin>>,
}

impl Shaper {
    /// Shard `shard` of `shards`, with its own copy of the validated rules.
    pub fn new(shard: u32, shards: u32, rules: Rules, lease: LeaseConfig) -> Shaper {
        Shaper {
            cache: RuleCache::new(rules, RULE_CACHE_ENTRIES_MAX),
            lease: ShardShaper::new(shard, shards, lease),
            modes: HashMap::new(),
            timed_changes: Vec::new(),
            released: Rc::new(RefCell::new(Vec::new())),
            origins: HashMap::new(),
        }
    }

    /// Resolves a destination: its rule (cached) and its limits, registered
    /// with this shard's shaper. `unix_now_s` is wall-clock time, used only
    /// for the source's warm-up age.
    pub fn destination(
        &mut self,
        domain: &str,
        mx_hosts: &[&str],
        source: Option<&str>,
        unix_now_s: u64,
        now: Nanos,
    ) -> Destination {
        let rule = self.cache.effective(domain, mx_hosts, source);
        let origin = Rc::new(Origin {
            domain: domain.to_string(),
            mx_hosts: mx_hosts.iter().map(|h| h.to_string()).collect(),
            source: source.map(str::to_string),
        });
        for (key, _) in configured_limits(&rule) {
            if !self.origins.contains_key(key.as_str()) {
                self.origins.insert(key.into(), Rc::clone(&origin));
            }
        }
        let mut message_limits = Vec::with_capacity(3);
        let site_rate = match &rule.max_message_rate {
            Some(limit) => Some(self.lease.rate_limit(&limit.key, limit.value, now)),
            None if needs_site_rate(&rule) => {
                let key = format!("{}/max_message_rate", rule.site);
                Some(self.lease.rate_limit(&key, UNRESTRICTED, now))
            }
            None => None,
        };
        message_limits.extend(site_rate);
        let rules = self.cache.rules();
        let source_limit = source
            .and_then(|s| rules.sources.get(s))
            .and_then(|s| s.rate_at(unix_now_s));
        let pool_limit = rule
            .pool
            .as_ref()
            .and_then(|p| rules.pools.get(p))
            .and_then(|p| p.limit());
        for limit in source_limit.into_iter().chain(pool_limit) {
            // The value is part of the key: a warm-up step is a new limit.
            let key = format!("{}#{}", limit.key, limit.value);
            message_limits.push(self.lease.rate_limit(&key, limit.value, now));
        }
        let connections =
            self.lease
                .connection_limit(&rule.max_connections.key, rule.max_connections.value, now);
        let connection_rate = rule
            .max_connection_rate
            .as_ref()
            .map(|l| self.lease.rate_limit(&l.key, l.value, now));
        // Every registration above counted one user of its limit.
        let mut ids = message_limits.clone();
        ids.push(connections);
        ids.extend(connection_rate);
        Destination {
            rule,
            message_limits,
            site_rate,
            connections,
            connection_rate,
            registration: Rc::new(Registration {
                ids,
                released: Rc::clone(&self.released),
                origin,
            }),
        }
    }

    /// Replaces the rules with `rules` (already validated) while leases,
    /// permits and modes stay live. `generation` numbers the reload and
    /// must be the same on every shard and larger than any before (the
    /// engine uses the reload's time in nanoseconds).
    ///
    /// - The rule cache starts over: [`Shaper::destination`] resolves
    ///   under the new rules from now on. Destinations resolved before keep
    ///   their old rule (drop and resolve them again to see the new one).
    /// - Every limit this shard registered is looked up again under the
    ///   new rules for the destination it was first resolved for; when its
    ///   value changed, this shard asks with the new value and the home
    ///   takes it (the newest generation wins) and broadcasts it. Rate
    ///   shares are fractions, so a lease already granted runs on at the
    ///   new rate from the moment the broadcast arrives; until then (one
    ///   pump of the message channels) a shard spends at the old rate. A
    ///   lowered connection maximum grants no permit until enough are
    ///   released (those in use may stay above it until they close;
    ///   releasing them never underflows), and spare lent permits go home
    ///   at once.
    /// - A limit the new rules no longer produce keeps its value for the
    ///   destinations still holding it and is reclaimed when they are
    ///   dropped.
    /// - A site in backoff or suspended keeps its mode (and restrictions)
    ///   until its timer or a rule ends it if its new rules still have
    ///   backoff rules; otherwise it returns to normal at once (reported by
    ///   [`Shaper::take_timed_changes`]).
    pub fn replace_rules(&mut self, rules: Rules, generation: u64, now: Nanos) -> Reloaded {
        let mut done = Reloaded::default();
        self.cache = RuleCache::new(rules, RULE_CACHE_ENTRIES_MAX);
        self.lease.set_generation(generation);
        let lease = &self.lease;
        self.origins.retain(|key, _| lease.id(key).is_some());
        let origins: Vec<(Box<str>, Rc<Origin>)> = self
            .origins
            .iter()
            .map(|(k, o)| (k.clone(), Rc::clone(o)))
            .collect();
        for (key, origin) in origins {
            let Some(id) = self.lease.id(&key) else {
                continue;
            };
            let rule = origin.rule(&mut self.cache);
            let now_value = configured_limits(&rule)
                .into_iter()
                .find(|(k, _)| **k == *key)
                .map(|(_, spec)| spec);
            match now_value {
                Some(spec) => {
                    if self.lease.rebase(id, spec, now) {
                        done.limits_changed += 1;
                    }
                }
                None => done.limits_unused += 1,
            }
        }
        let mut ended = Vec::new();
        for (name, site) in &self.modes {
            let keeps = site
                .origin()
                .is_some_and(|o| !o.rule(&mut self.cache).backoff.is_empty());
            if keeps {
                done.modes_kept += 1;
            } else {
                ended.push(name.clone());
            }
        }
        for name in ended {
            let Some(site) = self.modes.remove(&name) else {
                continue;
            };
            done.modes_ended += 1;
            for &(rate, connections) in &site.limits {
                self.restrict(rate, connections, None, None, now);
            }
            self.timed_changes.push((
                name,
                ModeChange {
                    at: now,
                    rule: None,
                    mode: Mode::Normal,
                },
            ));
        }
        done
    }

    /// The generation of the rules in force (`0`: the rules given at start).
    pub fn generation(&self) -> u64 {
        self.lease.generation()
    }

    /// May one message go to `destination` now?
    pub fn try_acquire_message(&mut self, destination: &Destination, now: Nanos) -> Acquire {
        self.lease
            .try_acquire_message(&destination.message_limits, now)
    }

    /// May a new connection open to `destination` now?
    pub fn try_acquire_connection(&mut self, destination: &Destination, now: Nanos) -> ConnAcquire {
        let permit = match self
            .lease
            .try_acquire_connection(destination.connections, now)
        {
            ConnAcquire::Ok(permit) => permit,
            other => return other,
        };
        if let Some(rate) = destination.connection_rate {
            if let Acquire::Wait(wait) = self.lease.try_acquire_message(&[rate], now) {
                self.lease.release_connection(permit, now);
                return ConnAcquire::Wait(wait);
            }
        }
        ConnAcquire::Ok(permit)
    }

    /// A connection closed.
    pub fn release_connection(&mut self, permit: Permit, now: Nanos) {
        self.lease.release_connection(permit, now);
    }

    /// Feeds one delivery outcome; a mode change restricts (or frees) the
    /// destination's limits on every shard.
    pub fn feed_outcome(
        &mut self,
        destination: &Destination,
        outcome: &Outcome<'_>,
        now: Nanos,
    ) -> Verdict {
        let rule = &destination.rule;
        let site = self
            .modes
            .entry(rule.site.clone())
            .or_insert_with(|| SiteMode {
                mode: QueueMode::new(rule.max_message_rate.as_ref().map(|l| l.value)),
                limits: Vec::new(),
                holds: Vec::new(),
            });
        let pair = (destination.site_rate, destination.connections);
        let newly_seen = !site.limits.contains(&pair);
        if newly_seen {
            site.limits.push(pair);
            site.holds.push(Rc::clone(&destination.registration));
        }
        let verdict = site.mode.on_outcome(now, outcome, &rule.backoff);
        let (targets, spec) = if let Some(change) = &verdict.change {
            (site.limits.clone(), Some(restrictions(&change.mode)))
        } else if newly_seen && *site.mode.mode() != Mode::Normal {
            // A destination joining a site already in backoff inherits it.
            (vec![pair], Some(restrictions(site.mode.mode())))
        } else {
            (Vec::new(), None)
        };
        if *site.mode.mode() == Mode::Normal {
            // Nothing to remember in normal mode; let the limits go.
            self.modes.remove(&rule.site);
        }
        if let Some((message_rate, max_connections)) = spec {
            for (rate, connections) in targets {
                self.restrict(rate, connections, message_rate, max_connections, now);
            }
        }
        verdict
    }

    fn restrict(
        &mut self,
        rate: Option<LimitId>,
        connections: LimitId,
        message_rate: Option<Rate>,
        max_connections: Option<u32>,
        now: Nanos,
    ) {
        if let Some(rate) = rate {
            self.lease
                .restrict(rate, message_rate.map(LimitSpec::Rate), now);
        }
        self.lease.restrict(
            connections,
            max_connections.map(LimitSpec::Connections),
            now,
        );
    }

    /// The mode of a destination's queue on this shard.
    pub fn mode(&self, destination: &Destination) -> Mode {
        self.modes
            .get(&destination.rule.site)
            .map_or(Mode::Normal, |s| s.mode.mode().clone())
    }

    /// The retry delay in force for deferred messages while backing off, if
    /// the backoff rule set one (else use the rule's `retry_after`).
    pub fn backoff_retry_after(&self, destination: &Destination) -> Option<Duration> {
        match self.mode(destination) {
            Mode::Backoff { retry_after, .. } => retry_after,
            _ => None,
        }
    }

    /// Feeds a message from another shard.
    pub fn receive(&mut self, message: Message, now: Nanos) {
        self.lease.receive(message, now);
    }

    /// Runs due timers (mode recoveries, lease renewals) and returns the
    /// messages to send; drain the vector.
    pub fn poll(&mut self, now: Nanos) -> &mut Vec<Envelope> {
        let mut changes = Vec::new();
        for (name, site) in self.modes.iter_mut() {
            if let Some(change) = site.mode.poll(now) {
                for &(rate, connections) in &site.limits {
                    changes.push((rate, connections, restrictions(&change.mode)));
                }
                self.timed_changes.push((name.clone(), change));
            }
        }
        for (rate, connections, (message_rate, max_connections)) in changes {
            self.restrict(rate, connections, message_rate, max_connections, now);
        }
        self.modes
            .retain(|_, site| *site.mode.mode() != Mode::Normal);
        // Destinations dropped since the last poll: their limits may go.
        let released = std::mem::take(&mut *self.released.borrow_mut());
        for id in released {
            self.lease.unregister(id);
        }
        let polled_len = self.lease.limits();
        if self.origins.len() > 2 * polled_len + 64 {
            // Amortised: keys of reclaimed limits go once they outnumber
            // the live ones.
            let lease = &self.lease;
            self.origins.retain(|key, _| lease.id(key).is_some());
        }
        self.lease.poll(now)
    }

    /// The mode changes timers made since the last call (a site leaving
    /// backoff after `recover_after`), by site, for the operator's log.
    /// Changes caused by outcomes come back from [`Shaper::feed_outcome`].
    pub fn take_timed_changes(&mut self) -> Vec<(String, ModeChange)> {
        std::mem::take(&mut self.timed_changes)
    }

    /// When `poll` next has timer work.
    pub fn next_wakeup(&self) -> Option<Nanos> {
        let modes = self.modes.values().filter_map(|s| s.mode.deadline()).min();
        match (modes, self.lease.next_wakeup()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The leasing layer (for its counters).
    pub fn lease(&self) -> &ShardShaper {
        &self.lease
    }

    /// The rules.
    pub fn rules(&self) -> &Rules {
        self.cache.rules()
    }
}
