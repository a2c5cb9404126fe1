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

// std
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

// external
use sluice_shaping::backoff::Outcome as ShapingOutcome;
use sluice_shaping::config::Rules;
use sluice_shaping::lease::{Acquire, ConnAcquire, LeaseConfig, Permit};
use sluice_shaping::transport::ShardLink;
use sluice_shaping::units::Nanos;
use sluice_shaping::{Destination, Shaper};

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
    dests: RefCell<HashMap<(DestId, SiteId), Destination>>,
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
        Shaping {
            shaper: RefCell::new(Shaper::new(index, link.shards, link.rules, lease_config())),
            link: RefCell::new(link.link),
            dests: RefCell::new(HashMap::new()),
        }
    }

    /// The shaping destination of a queue destination (resolved once).
    pub fn destination(&self, queues: &Queues, dest: DestId) -> Destination {
        // Keyed by site too: MX resolution moves a domain to the site of
        // its host set, and the rule may then match on the MX names.
        let site = queues.site_of(dest);
        if let Some(d) = self.dests.borrow().get(&(dest, site)) {
            return d.clone();
        }
        let domain = queues.domain(dest);
        // MX host names when the site came from MX resolution (so provider
        // `mx_suffix` rules match), else the static route's addresses.
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
        let now = now_nanos();
        let d = self.shaper.borrow_mut().destination(
            domain,
            &host_refs,
            None,
            now.0 / 1_000_000_000,
            now,
        );
        self.dests.borrow_mut().insert((dest, site), d.clone());
        d
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
        let outcome = ShapingOutcome {
            code: said.code,
            enhanced: said.enhanced,
            text: said.text,
            destination: queues.domain(dest),
            source: None,
        };
        let verdict = self
            .shaper
            .borrow_mut()
            .feed_outcome(&d, &outcome, now_nanos());
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
        let now = now_nanos();
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
