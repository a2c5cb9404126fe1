//! Shaping in the delivery path: the shard's [`Shaper`] (rules, limits,
//! backoff modes, cross-shard leases) consulted where delivery decides.
//!
//! - Opening a connection takes a connection permit (the rule's
//!   `max_connections` across every shard, plus `max_connection_rate`);
//!   the permit is released when the connection ends.
//! - Queueing a transaction takes a message token (`max_message_rate`,
//!   source and pool rates); when the answer is "wait", the recipients go
//!   back to the front of their queue and the connection waits that long.
//! - Every attempt outcome is fed to the backoff rules; a mode change
//!   restricts the limits on every shard through the leasing messages.
//! - Retry delays, max age, deliveries per connection and recipients per
//!   transaction come from the destination's effective rule.
//!
//! The leasing messages travel over the crossbeam mesh of
//! `sluice_shaping::transport`; [`pump`] moves them every
//! [`PUMP_EVERY`] (channels have no waker; a few µs per pass).
//!
//! # The destination cache
//! The shaping [`Destination`] of each (queue destination, site) is
//! resolved once and cached; it holds the registrations of its limits.
//! The pump sweeps the cache every [`SWEEP_EVERY`] and drops entries
//! unused for [`DESTINATION_IDLE`]: a queue that is still there simply
//! resolves again when it next sends, and the limits nobody holds any more
//! are reclaimed by the shaper. Anything else holding a clone (a site in
//! backoff keeps its destinations' registrations) keeps them alive, and a
//! connection's permit keeps its connection limit until it is released.
//!
//! # Reload
//! [`Shaping::reload`] gives the shaper new rules
//! ([`Shaper::replace_rules`]: limits re-based at their homes under live
//! leases and permits, backoff modes kept while the site still has
//! backoff rules) and empties the cache, so the next transaction or
//! connection of every destination sees the new rule: retry schedule, max
//! age, deliveries per connection, recipients per transaction, TLS
//! policy, pool, limits. A connection already open keeps the limits it
//! was opened with (deliveries per connection, recipients per
//! transaction, TLS) until it closes, and its permit counts against the
//! connection limit it was taken from.

// std
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

// external
use sluice_shaping::backoff::Outcome as ShapingOutcome;
use sluice_shaping::config::Rules;
use sluice_shaping::lease::{Acquire, ConnAcquire, LeaseConfig, Permit};
use sluice_shaping::transport::ShardLink;
use sluice_shaping::units::Nanos;
use sluice_shaping::{Destination, Reloaded, Shaper};

// crate
use super::outcome::Said;
use crate::queue::{DestId, Queues, SiteId};

/// How often the leasing channels are pumped.
pub const PUMP_EVERY: Duration = Duration::from_millis(2);
/// Shortest pump sleep: a timer already due is handled by the next pass,
/// never by spinning.
pub const PUMP_MIN: Duration = Duration::from_micros(100);
const _: () = assert!(PUMP_MIN.as_nanos() < PUMP_EVERY.as_nanos());

/// Longest lease the engine's shards grant each other. The crate's
/// default (10 s) keeps cross-shard traffic lowest, but a limit's share
/// stays with a shard that has drained its queue for up to that long, so a
/// shard that still has work runs at its small share meanwhile (measured
/// end to end: 10 s at about a fifth of a 50/s limit). Two seconds bounds
/// that, and costs at most one renewal per limit per shard every two
/// seconds for slow limits; fast limits are unaffected (their leases end
/// after `tokens_per_lease` tokens, well within it).
pub const LEASE_MAX: Duration = Duration::from_secs(2);

/// Cached destinations unused this long are dropped (and their limits,
/// if nothing else holds them, reclaimed).
pub const DESTINATION_IDLE: Duration = Duration::from_secs(30);
/// How often the pump sweeps the destination cache.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);
const _: () = assert!(SWEEP_EVERY.as_nanos() < DESTINATION_IDLE.as_nanos());

/// The leasing settings of the engine's shards.
pub fn lease_config() -> LeaseConfig {
    LeaseConfig {
        lease_max: LEASE_MAX,
        ..LeaseConfig::default()
    }
}

/// What a shard needs to shape its delivery: the validated rules and its
/// end of the shaping mesh (`sluice_shaping::transport::mesh(shards, cap)`,
/// one link per shard, made before the shards start).
pub struct ShapingLink {
    /// The rules (each shard gets its own copy).
    pub rules: Rules,
    /// This shard's link.
    pub link: ShardLink,
    /// Number of shards.
    pub shards: u32,
}

/// The shard's shaping state.
pub struct Shaping {
    shaper: RefCell<Shaper>,
    link: RefCell<ShardLink>,
    dests: RefCell<HashMap<(DestId, SiteId), Cached>>,
    /// The pump's clock: refreshed every pass (at most [`PUMP_EVERY`]
    /// old), so a cache hit costs no clock read.
    clock: Cell<Nanos>,
    /// When the pump next sweeps the cache.
    next_sweep: Cell<Nanos>,
    /// Rules reloads applied on this shard.
    reloads: Cell<u64>,
}

/// A cached destination and when it was last looked up.
struct Cached {
    destination: Destination,
    last_use: Cell<Nanos>,
}

/// Shaping time: nanoseconds since the Unix epoch, so every shard's clock
/// agrees without sharing an `Instant`.
pub fn now_nanos() -> Nanos {
    Nanos(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos().min(u128::from(u64::MAX)) as u64),
    )
}

impl Shaping {
    /// The shard's shaper over its link.
    pub fn new(index: u32, link: ShapingLink) -> Shaping {
        let now = now_nanos();
        Shaping {
            shaper: RefCell::new(Shaper::new(index, link.shards, link.rules, lease_config())),
            link: RefCell::new(link.link),
            dests: RefCell::new(HashMap::new()),
            clock: Cell::new(now),
            next_sweep: Cell::new(now.plus(SWEEP_EVERY)),
            reloads: Cell::new(0),
        }
    }

    /// The shaping destination of a queue destination (resolved once).
    pub fn destination(&self, queues: &Queues, dest: DestId) -> Destination {
        // Keyed by site too: MX resolution moves a domain to the site of
        // its host set, and the rule may then match on the MX names.
        let site = queues.site_of(dest);
        if let Some(c) = self.dests.borrow().get(&(dest, site)) {
            c.last_use.set(self.clock.get());
            return c.destination.clone();
        }
        let now = now_nanos();
        self.clock.set(self.clock.get().max(now));
        let d = self.resolve(queues, dest, None, now);
        self.dests.borrow_mut().insert(
            (dest, site),
            Cached {
                destination: d.clone(),
                last_use: Cell::new(now),
            },
        );
        d
    }

    /// Drops cached destinations not looked up since `now - idle`; returns
    /// how many went. Their limits are unregistered at the shaper's next
    /// poll (unless something else still holds them).
    pub fn sweep(&self, now: Nanos, idle: Duration) -> usize {
        let mut dests = self.dests.borrow_mut();
        let before = dests.len();
        dests.retain(|_, c| c.last_use.get().plus(idle) > now);
        before - dests.len()
    }

    /// Destinations cached now.
    pub fn cached(&self) -> usize {
        self.dests.borrow().len()
    }

    /// Limits the shard's shaper holds now (registered, or lent as home).
    pub fn limits(&self) -> usize {
        self.shaper.borrow().lease().limits()
    }

    /// Replaces the rules (validated once by the caller, the same
    /// `generation` on every shard, see [`Shaper::replace_rules`]) and
    /// empties the destination cache so every later lookup resolves under
    /// them.
    pub fn reload(&self, rules: Rules, generation: u64) -> Reloaded {
        let now = now_nanos();
        let done = self
            .shaper
            .borrow_mut()
            .replace_rules(rules, generation, now);
        // Dropped after the shaper's borrow: a registration's drop only
        // queues its limits for the next poll.
        let old = std::mem::take(&mut *self.dests.borrow_mut());
        drop(old);
        self.reloads.set(self.reloads.get() + 1);
        done
    }

    /// Rules reloads applied on this shard.
    pub fn reloads(&self) -> u64 {
        self.reloads.get()
    }

    /// The rules in force.
    pub fn rules(&self) -> std::cell::Ref<'_, Rules> {
        std::cell::Ref::map(self.shaper.borrow(), |s| s.rules())
    }

    /// The max age of a domain's recipients under the rules.
    pub fn max_age(&self, domain: &str) -> Duration {
        let now = now_nanos();
        self.shaper
            .borrow_mut()
            .destination(domain, &[], None, now.0 / 1_000_000_000, now)
            .rule
            .max_age
    }

    /// May one more transaction go to `dest` now? `Err(wait)` if not.
    pub fn try_message(&self, queues: &Queues, dest: DestId) -> Result<(), Duration> {
        let d = self.destination(queues, dest);
        match self
            .shaper
            .borrow_mut()
            .try_acquire_message(&d, now_nanos())
        {
            Acquire::Ok => Ok(()),
            Acquire::Wait(wait) => Err(wait),
        }
    }

    /// May a connection open for `dest`'s site now?
    pub fn try_connection(&self, queues: &Queues, dest: DestId) -> ConnAcquire {
        let d = self.destination(queues, dest);
        self.shaper
            .borrow_mut()
            .try_acquire_connection(&d, now_nanos())
    }

    /// A connection closed.
    pub fn release(&self, permit: Permit) {
        self.shaper
            .borrow_mut()
            .release_connection(permit, now_nanos());
    }

    /// Feeds one attempt outcome to the backoff rules; returns the rule's
    /// name when it says to bounce the recipient.
    pub fn feed(&self, queues: &Queues, dest: DestId, said: &Said<'_>) -> Option<String> {
        let d = self.destination(queues, dest);
        self.feed_at(&d, queues.domain(dest), None, said)
    }

    /// The retry delay of attempt `attempts` (0-based) for `dest`: the
    /// backoff mode's delay while backing off, else the rule's schedule.
    pub fn retry_delay(
        &self,
        queues: &Queues,
        dest: DestId,
        attempts: u32,
        random: u64,
    ) -> Duration {
        let d = self.destination(queues, dest);
        let shaper = self.shaper.borrow();
        match shaper.backoff_retry_after(&d) {
            Some(wait) => wait,
            None => d.rule.retry_after.delay(attempts, random),
        }
    }

    /// The shaping destination of `dest` for a connection bound to
    /// `source`: the rule with the rules' per-source overrides
    /// (`[domain.X.source.NAME]`, …) and the source's own rate and warm-up
    /// (`[source.NAME]`) among its message limits. Not cached here: the
    /// connection keeps it for its lifetime (one source per connection),
    /// and uses it for every transaction and outcome (the `_at` methods).
    pub fn destination_for_source(
        &self,
        queues: &Queues,
        dest: DestId,
        source: &str,
    ) -> Destination {
        self.resolve(queues, dest, Some(source), now_nanos())
    }

    /// Asks the shaper for `dest`'s destination (bound to `source`, if
    /// any), matching its rules on the MX host names when the site came
    /// from MX resolution (so provider `mx_suffix` rules match), else on
    /// the static route's addresses.
    fn resolve(
        &self,
        queues: &Queues,
        dest: DestId,
        source: Option<&str>,
        now: Nanos,
    ) -> Destination {
        let site = queues.site_of(dest);
        let names = queues.sites().names(site);
        let hosts: Vec<String> = if names.is_empty() {
            queues
                .hosts(site)
                .iter()
                .map(|h| h.ip().to_string())
                .collect()
        } else {
            names.to_vec()
        };
        let host_refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
        self.shaper.borrow_mut().destination(
            queues.domain(dest),
            &host_refs,
            source,
            now.0 / 1_000_000_000,
            now,
        )
    }

    /// [`Shaping::try_message`] for a destination the caller holds.
    pub fn try_message_at(&self, d: &Destination) -> Result<(), Duration> {
        match self.shaper.borrow_mut().try_acquire_message(d, now_nanos()) {
            Acquire::Ok => Ok(()),
            Acquire::Wait(wait) => Err(wait),
        }
    }

    /// [`Shaping::try_connection`] for a destination the caller holds.
    pub fn try_connection_at(&self, d: &Destination) -> ConnAcquire {
        self.shaper
            .borrow_mut()
            .try_acquire_connection(d, now_nanos())
    }

    /// [`Shaping::feed`] for a destination the caller holds, with the
    /// source the attempt went out from.
    pub fn feed_at(
        &self,
        d: &Destination,
        domain: &str,
        source: Option<&str>,
        said: &Said<'_>,
    ) -> Option<String> {
        let outcome = ShapingOutcome {
            code: said.code,
            enhanced: said.enhanced,
            text: said.text,
            destination: domain,
            source,
        };
        let verdict = self
            .shaper
            .borrow_mut()
            .feed_outcome(d, &outcome, now_nanos());
        if let Some(change) = verdict.change {
            log::info!(
                "shaping: {} now {:?} (rule {:?})",
                d.rule.site,
                change.mode,
                change.rule
            );
        }
        verdict.bounce
    }

    /// Deliveries per connection and recipients per transaction for `dest`.
    pub fn connection_limits(&self, queues: &Queues, dest: DestId) -> (u32, u32) {
        let d = self.destination(queues, dest);
        (
            d.rule.max_deliveries_per_connection,
            d.rule.max_recipients_per_transaction,
        )
    }

    /// Moves leasing messages between this shard and the others once.
    pub fn pump_once(&self) {
        self.pump_at(now_nanos());
    }

    /// [`Shaping::pump_once`] at a given time (tests move time on).
    fn pump_at(&self, now: Nanos) {
        self.clock.set(now);
        if now >= self.next_sweep.get() {
            self.next_sweep.set(now.plus(SWEEP_EVERY));
            self.sweep(now, DESTINATION_IDLE);
        }
        let mut shaper = self.shaper.borrow_mut();
        if let Err(e) = self.link.borrow_mut().pump(&mut *shaper, now) {
            log::warn!("shaping: {e}");
        }
        // The same line as a change caused by an outcome (`feed`), so the
        // log shows a backoff ending as plainly as its start.
        for (site, change) in shaper.take_timed_changes() {
            log::info!(
                "shaping: {site} now {:?} (rule {:?})",
                change.mode,
                change.rule
            );
        }
    }

    /// How long the pump may sleep: until the shaper's next timer
    /// (`Shaper::next_wakeup`: a lease renewal, a backoff mode ending), at
    /// most [`PUMP_EVERY`] because the channels from other shards have no
    /// waker.
    pub fn pump_sleep(&self) -> Duration {
        let now = now_nanos();
        match self.shaper.borrow().next_wakeup() {
            Some(at) => {
                Duration::from_nanos(at.0.saturating_sub(now.0)).clamp(PUMP_MIN, PUMP_EVERY)
            }
            None => PUMP_EVERY,
        }
    }
}

/// The pump task: polls the shaper and moves its leasing messages (its
/// `poll` runs inside `ShardLink::pump`), then sleeps until its next timer
/// or [`PUMP_EVERY`], whichever comes first, so leases flow and modes
/// recover even on an idle shard. Runs until `stopping` says so.
pub async fn pump(shaping: Rc<Shaping>, stopping: Rc<dyn Fn() -> bool>) {
    while !stopping() {
        shaping.pump_once();
        glommio::timer::sleep(shaping.pump_sleep()).await;
    }
    shaping.pump_once();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{QueueConfig, Sites};

    fn shaping(rules: &str) -> Shaping {
        let rules = Rules::parse(rules, "rules.toml").expect("valid rules");
        let link = sluice_shaping::transport::mesh(1, 64)
            .pop()
            .expect("one link");
        Shaping::new(
            0,
            ShapingLink {
                rules,
                link,
                shards: 1,
            },
        )
    }

    /// Many destinations resolved, then idle: the sweep empties the cache
    /// and the shaper reclaims their limits, except those a clone or a
    /// held permit still uses.
    #[test]
    fn idle_destinations_are_swept_and_their_limits_reclaimed() {
        let s = shaping("[default]\nmax_connections = 4\n");
        let mut q = Queues::new(Sites::from_routes(&[]), QueueConfig::default());
        let dests: Vec<DestId> = (0..300)
            .map(|i| q.destination(&format!("d{i}.test")))
            .collect();
        for d in &dests {
            s.destination(&q, *d);
        }
        assert_eq!(s.cached(), 300);
        // One connection limit per domain.
        assert!(s.limits() >= 300, "{} limits", s.limits());
        let kept = s.destination(&q, dests[0]);
        let ConnAcquire::Ok(permit) = s.try_connection(&q, dests[1]) else {
            panic!("a permit under max_connections = 4");
        };
        // Not idle long enough: nothing goes.
        assert_eq!(s.sweep(now_nanos(), DESTINATION_IDLE), 0);
        let later = now_nanos().plus(DESTINATION_IDLE + Duration::from_secs(1));
        assert_eq!(s.sweep(later, DESTINATION_IDLE), 300);
        assert_eq!(s.cached(), 0);
        // The shaper unregisters and reclaims over a few polls (bounded
        // work per poll).
        for _ in 0..4 {
            s.pump_once();
        }
        assert_eq!(
            s.limits(),
            2,
            "only the clone's and the held permit's limits remain"
        );
        s.release(permit);
        drop(kept);
        // Its idle permit goes back after `permit_idle`, then it goes.
        let later = later.plus(Duration::from_secs(1));
        for _ in 0..4 {
            s.pump_at(later);
        }
        assert_eq!(s.limits(), 0);
        // A queue that sends again simply resolves again.
        assert_eq!(s.connection_limits(&q, dests[7]).1, 100);
        assert_eq!(s.cached(), 1);
    }

    /// A reload empties the cache: the next lookup sees the new rule, and
    /// a shard-wide count says it happened.
    #[test]
    fn reload_invalidates_cached_destinations() {
        let s = shaping(
            "[default]\nmax_recipients_per_transaction = 10\nmax_deliveries_per_connection = 5\n",
        );
        let mut q = Queues::new(Sites::from_routes(&[]), QueueConfig::default());
        let d = q.destination("a.test");
        assert_eq!(s.connection_limits(&q, d), (5, 10));
        let rules = Rules::parse(
            "[domain.\"a.test\"]\nmax_recipients_per_transaction = 3\nretry_after = \"7s\"\n",
            "rules.toml",
        )
        .expect("valid");
        let done = s.reload(rules, 1);
        assert_eq!(done.limits_changed, 0, "{done:?}");
        assert_eq!(s.cached(), 0);
        assert_eq!(s.reloads(), 1);
        assert_eq!(s.connection_limits(&q, d), (1_000, 3));
        assert_eq!(s.retry_delay(&q, d, 0, 0), Duration::from_secs(7));
    }
}
