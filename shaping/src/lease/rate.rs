//! Rate limits spanning shards: the home shard divides the rate and the burst
//! into time-bounded shares (leases); every shard, the home included, spends
//! its share from a local [`TokenBucket`].
//!
//! Why shares and not batches of tokens: a batch of tokens handed out at time
//! `g` and spent later than `g` lets the home's bucket refill meanwhile, so
//! the sum over shards could exceed `burst + w / T` in some window. A share
//! cannot: shard `i` spends at most `level_i + r_i * w` in a window, levels
//! never exceed capacities, `sum(capacity_i) <= burst` and `sum(r_i) <= rate`
//! hold at every instant (the home checks the intervals of all leases), and
//! capacity given to a shard starts empty. So the sum is at most
//! `burst + rate * w`, the exact GCRA envelope.

use std::time::Duration;

use crate::lease::{LeaseConfig, Message};
use crate::limiter::{Take, TokenBucket, SHARE_PARTS};
use crate::units::{duration_ns, Nanos, Rate};

/// A share of a rate limit for the interval `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// First instant the share may be used.
    pub start: Nanos,
    /// First instant it may no longer be used.
    pub end: Nanos,
    /// Share of the rate, in parts of [`SHARE_PARTS`].
    pub rate_parts: u32,
    /// Share of the burst, in parts of [`SHARE_PARTS`].
    pub burst_parts: u32,
    /// The bucket may start full: only for the home's first lease of a limit
    /// nobody has ever held, when no other level can exist.
    pub full: bool,
}

/// One shard's view of a rate limit (plus the home's ledger on the home).
#[derive(Debug)]
pub(crate) struct RateSlot {
    pub key: Box<str>,
    pub home: u32,
    pub base: Rate,
    /// The rules generation `base` comes from.
    pub generation: u64,
    pub epoch: u64,
    pub bucket: TokenBucket,
    current: Option<Lease>,
    next: Option<Lease>,
    active: bool,
    pub requested: bool,
    used: u64,
    throttled: bool,
    window_start: Nanos,
    pub next_wake: Nanos,
    pub home_state: Option<Box<RateHome>>,
}

#[derive(Clone, Debug, Default)]
struct Participant {
    leases: [Option<Lease>; 2],
    demand_milli: u64,
    pending_since: Option<Nanos>,
    known: bool,
}

/// The home shard's ledger for one rate limit.
#[derive(Debug)]
pub(crate) struct RateHome {
    pub effective: Rate,
    pub restrictions: Vec<Option<Rate>>,
    participants: Vec<Participant>,
    fresh: bool,
    /// The latest end of any lease granted: a full burst may have been
    /// spent just before it.
    last_end: Nanos,
}

impl RateSlot {
    pub fn new(key: Box<str>, home: u32, base: Rate, shard: u32, shards: u32, now: Nanos) -> Self {
        let home_state = (home == shard).then(|| {
            Box::new(RateHome {
                effective: base,
                restrictions: vec![None; shards as usize],
                participants: vec![Participant::default(); shards as usize],
                fresh: true,
                last_end: now,
            })
        });
        RateSlot {
            key,
            home,
            base,
            generation: 0,
            // A home numbers its versions by time (see `next_epoch`).
            epoch: if home == shard { now.0 } else { 0 },
            bucket: TokenBucket::empty(base, 0, 0, now),
            current: None,
            next: None,
            active: false,
            requested: false,
            used: 0,
            throttled: false,
            window_start: now,
            next_wake: Nanos::MAX,
            home_state,
        }
    }

    /// Moves the bucket to the lease that covers `now`.
    pub fn sync(&mut self, now: Nanos) {
        loop {
            let Some(cur) = self.current else { return };
            if !self.active {
                if cur.start > now {
                    return;
                }
                self.bucket
                    .set_share(cur.start, cur.rate_parts, cur.burst_parts);
                if cur.full {
                    self.bucket.fill();
                }
                self.active = true;
            }
            if cur.end > now {
                return;
            }
            match self.next.take() {
                Some(n) if n.start <= cur.end => {
                    self.bucket.set_share(cur.end, n.rate_parts, n.burst_parts);
                    self.current = Some(n);
                }
                other => {
                    self.bucket.set_share(cur.end, 0, 0);
                    self.active = false;
                    self.current = other;
                }
            }
        }
    }

    /// Whether the slot holds nothing at `now`: no share, no request in
    /// flight, and (on the home) no share lent, no request waiting and no
    /// restriction. Only then may it be reclaimed.
    pub fn idle(&mut self, now: Nanos) -> bool {
        self.sync(now);
        let home_idle = match &mut self.home_state {
            None => true,
            Some(home) => {
                home.prune(now);
                home.is_idle(now)
            }
        };
        self.current.is_none() && self.next.is_none() && !self.requested && home_idle
    }

    /// Checks for a token; records demand. Never consumes.
    pub fn check(&mut self, now: Nanos) -> Take {
        self.sync(now);
        let take = self.bucket.check(now);
        if take != Take::Ok {
            self.throttled = true;
        }
        take
    }

    /// How long until this shard's share may change (lease end), so a
    /// caller never waits on a share that is about to be replaced.
    pub fn until_change(&self, now: Nanos) -> Duration {
        self.current
            .map_or(Duration::ZERO, |cur| cur.end.since(now))
    }

    /// Consumes the token a `check` at the same instant reported.
    pub fn consume(&mut self) {
        self.bucket.consume();
        self.used += 1;
    }

    /// Whether this shard should ask for a (first or renewed) lease now.
    pub fn wants_request(&self, now: Nanos) -> bool {
        if self.requested || self.next.is_some() {
            return false;
        }
        match self.current {
            None => self.throttled,
            Some(cur) => now >= renew_at(&cur) && (self.used > 0 || self.throttled),
        }
    }

    /// Whether this shard holds a share it has not used for a whole quarter
    /// lease: it gives the share back so others can have it.
    pub fn wants_release(&self, now: Nanos) -> bool {
        match self.current {
            Some(cur) => {
                self.next.is_none()
                    && !self.requested
                    && now >= renew_at(&cur)
                    && self.used == 0
                    && !self.throttled
            }
            None => false,
        }
    }

    /// Builds a request, reporting demand since the last one.
    pub fn request(&mut self, shard: u32, shards: u32, now: Nanos) -> Message {
        let elapsed_ns = now.0.saturating_sub(self.window_start.0).max(1_000_000);
        let used_milli = u128::from(self.used) * 1_000 * 1_000_000_000 / u128::from(elapsed_ns);
        let mut demand = u64::try_from(used_milli).unwrap_or(u64::MAX);
        if self.throttled {
            let rate = self.bucket.rate();
            let fair = u128::from(rate.count) * 1_000 * 1_000_000_000
                / u128::from(rate.period_ns())
                / u128::from(shards.max(1));
            demand = demand
                .saturating_mul(2)
                .max(u64::try_from(fair).unwrap_or(u64::MAX))
                .max(1);
        } else {
            demand = demand.saturating_add(demand / 4).max(1);
        }
        self.used = 0;
        self.throttled = false;
        self.window_start = now;
        self.requested = true;
        Message::RateRequest {
            key: self.key.clone(),
            from: shard,
            base: self.base,
            generation: self.generation,
            demand_milli: demand,
        }
    }

    /// Gives the share up at `now`.
    pub fn release(&mut self, shard: u32, now: Nanos) -> Message {
        self.sync(now);
        self.bucket.set_share(now, 0, 0);
        self.current = None;
        self.next = None;
        self.active = false;
        self.used = 0;
        self.throttled = false;
        self.window_start = now;
        Message::RateRelease {
            key: self.key.clone(),
            from: shard,
        }
    }

    /// Applies a grant from the home.
    pub fn grant(&mut self, epoch: u64, rate: Rate, lease: Lease, now: Nanos) {
        self.requested = false;
        self.adopt(epoch, rate, now);
        self.sync(now);
        match self.current {
            Some(cur) if lease.start >= cur.end => self.next = Some(lease),
            Some(_) => {
                // The home never overlaps two leases of one shard; if a
                // reordering ever produced one, keep the earlier commitment.
                debug_assert!(false, "overlapping lease grant for {}", self.key);
            }
            None => self.current = Some(lease),
        }
        self.sync(now);
    }

    /// Adopts a newer limit (a backoff change) broadcast by the home.
    pub fn adopt(&mut self, epoch: u64, rate: Rate, now: Nanos) {
        if epoch >= self.epoch {
            self.epoch = epoch;
            self.sync(now);
            self.bucket.set_rate(now, rate);
        }
    }

    /// When this shard must next look at the slot.
    pub fn wake_time(&self) -> Nanos {
        let mut at = Nanos::MAX;
        if let Some(cur) = self.current {
            at = at.min(if self.next.is_some() || self.requested {
                cur.end
            } else {
                renew_at(&cur)
            });
        }
        if let Some(home) = &self.home_state {
            if home.participants.iter().any(|p| p.pending_since.is_some()) {
                at = at.min(home.earliest_end());
            }
        }
        at
    }
}

fn renew_at(lease: &Lease) -> Nanos {
    let length = lease.end.0.saturating_sub(lease.start.0);
    Nanos(lease.end.0.saturating_sub(length / 4))
}

impl RateHome {
    /// Forgets leases that ended before `now`.
    fn prune(&mut self, now: Nanos) {
        for p in &mut self.participants {
            if matches!(p.leases[0], Some(l) if l.end <= now) {
                p.leases[0] = p.leases[1].take();
            }
            if matches!(p.leases[0], Some(l) if l.end <= now) {
                p.leases[0] = None;
            }
            if p.leases[0].is_none() && p.pending_since.is_none() {
                p.demand_milli = 0;
            }
        }
    }

    /// Idle, and quiet long enough that a full bucket would have refilled:
    /// a limit created again after reclaim starts full (`fresh`), which is
    /// then no more than the old one would have allowed.
    fn is_idle(&self, now: Nanos) -> bool {
        let rate = self.effective;
        let refill_ns =
            u128::from(rate.burst) * u128::from(rate.period_ns()) / u128::from(rate.count.max(1));
        let quiet_until = Nanos(
            self.last_end
                .0
                .saturating_add(u64::try_from(refill_ns).unwrap_or(u64::MAX)),
        );
        now >= quiet_until
            && self.restrictions.iter().all(Option::is_none)
            && self
                .participants
                .iter()
                .all(|p| p.pending_since.is_none() && p.leases.iter().all(Option::is_none))
    }

    fn earliest_end(&self) -> Nanos {
        self.participants
            .iter()
            .flat_map(|p| p.leases.iter().flatten())
            .map(|l| l.end)
            .min()
            .unwrap_or(Nanos::MAX)
    }

    /// The largest total share held by shards other than `except` at any
    /// instant of `[start, end)`: (rate parts, burst parts).
    fn committed(&self, except: usize, start: Nanos, end: Nanos) -> (u32, u32) {
        let leases = || {
            self.participants
                .iter()
                .enumerate()
                .filter(move |(i, _)| *i != except)
                .flat_map(|(_, p)| p.leases.iter().flatten())
        };
        let mut worst = (0u32, 0u32);
        let instants = std::iter::once(start)
            .chain(leases().map(|l| l.start).filter(|s| *s > start && *s < end));
        for t in instants {
            let (rate, burst) =
                leases()
                    .filter(|l| l.start <= t && t < l.end)
                    .fold((0u32, 0u32), |(r, b), l| {
                        (
                            r.saturating_add(l.rate_parts),
                            b.saturating_add(l.burst_parts),
                        )
                    });
            worst = (worst.0.max(rate), worst.1.max(burst));
        }
        worst
    }

    /// Records a request from `from`; the grant is made by `try_grant`.
    pub fn request(&mut self, from: u32, demand_milli: u64, now: Nanos) {
        let p = &mut self.participants[from as usize];
        p.known = true;
        p.demand_milli = demand_milli.max(1);
        p.pending_since.get_or_insert(now);
    }

    /// Takes back what `from` still holds.
    pub fn release(&mut self, from: u32, now: Nanos) {
        let p = &mut self.participants[from as usize];
        p.leases[1] = None;
        if let Some(l) = &mut p.leases[0] {
            l.end = l.end.min(now);
        }
        p.pending_since = None;
        self.prune(now);
    }

    /// Remembers that `from` uses this limit (it gets limit changes).
    pub fn mark_known(&mut self, from: u32) {
        self.participants[from as usize].known = true;
    }

    /// Shards that ever asked for a share (they get limit changes).
    pub fn participants(&self) -> impl Iterator<Item = u32> + '_ {
        self.participants
            .iter()
            .enumerate()
            .filter(|(_, p)| p.known)
            .map(|(i, _)| i as u32)
    }

    /// Grants every pending request that fits now, oldest first.
    pub fn grant_pending(
        &mut self,
        config: &LeaseConfig,
        home: u32,
        now: Nanos,
    ) -> Vec<(u32, Lease)> {
        self.prune(now);
        let mut order: Vec<(Nanos, usize)> = self
            .participants
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.pending_since.map(|t| (t, i)))
            .collect();
        order.sort_unstable();
        let mut grants = Vec::new();
        for (_, i) in order {
            if let Some(lease) = self.try_grant(i, home as usize, config, now) {
                grants.push((i as u32, lease));
            }
        }
        grants
    }

    fn try_grant(
        &mut self,
        i: usize,
        home: usize,
        config: &LeaseConfig,
        now: Nanos,
    ) -> Option<Lease> {
        let rate = self.effective;
        let p = &self.participants[i];
        if p.leases[1].is_some() {
            self.participants[i].pending_since = None;
            return None;
        }
        let start = p.leases[0].map(|l| l.end.max(now)).unwrap_or(now);
        let total_demand: u128 = self
            .participants
            .iter()
            .filter(|q| q.pending_since.is_some() || q.leases.iter().flatten().any(|l| l.end > now))
            .map(|q| u128::from(q.demand_milli))
            .sum();
        let share = |demand: u64| {
            let parts = u128::from(demand) * u128::from(SHARE_PARTS) / total_demand.max(1);
            u32::try_from(parts)
                .unwrap_or(SHARE_PARTS)
                .clamp(1, SHARE_PARTS)
        };
        let target = share(p.demand_milli);
        // One token of burst, in parts: a share below it can never fill to a
        // whole token, so it is useless.
        let min_burst =
            u32::try_from(u128::from(SHARE_PARTS).div_ceil(u128::from(rate.burst.max(1))))
                .unwrap_or(SHARE_PARTS);
        // Burst kept back for shards that have waited longer and hold
        // nothing: a holder renewing behind them yields, so small bursts
        // rotate between shards instead of starving one.
        let my_turn = (p.pending_since.unwrap_or(now), i);
        let waiting_others = self
            .participants
            .iter()
            .enumerate()
            .filter(|(j, q)| {
                q.leases[0].is_none() && q.pending_since.is_some_and(|t| (t, *j) < my_turn)
            })
            .count() as u32;
        let length = lease_length(config, rate, target);
        let end = start.plus(length);
        let (rate_taken, burst_taken) = self.committed(i, start, end);
        let rate_free = SHARE_PARTS.saturating_sub(rate_taken);
        let burst_free = SHARE_PARTS
            .saturating_sub(burst_taken)
            .saturating_sub(min_burst.saturating_mul(waiting_others));
        let rate_parts = target.min(rate_free);
        let burst_parts = target.max(min_burst).min(burst_free);
        if rate_parts == 0 || burst_parts < min_burst {
            return None;
        }
        let full = self.fresh && i == home;
        self.fresh = false;
        self.last_end = self.last_end.max(end);
        let lease = Lease {
            start,
            end,
            rate_parts,
            burst_parts,
            full,
        };
        let p = &mut self.participants[i];
        if p.leases[0].is_some() {
            p.leases[1] = Some(lease);
        } else {
            p.leases[0] = Some(lease);
        }
        p.pending_since = None;
        // The books must balance: no instant over-commits the limit.
        let (rate_total, burst_total) = self.committed(usize::MAX, start, end);
        assert!(
            rate_total <= SHARE_PARTS && burst_total <= SHARE_PARTS,
            "lease accounting over-committed: {rate_total}/{burst_total} of {SHARE_PARTS}"
        );
        Some(lease)
    }

    /// Recomputes the effective limit from the base and all restrictions;
    /// returns it when it changed.
    pub fn recompute(&mut self, base: Rate) -> Option<Rate> {
        let mut effective = base;
        for r in self.restrictions.iter().flatten() {
            let slower = effective.min(*r);
            effective = Rate {
                burst: effective.burst.min(r.burst),
                ..slower
            };
        }
        (effective != self.effective).then(|| {
            self.effective = effective;
            effective
        })
    }
}

/// Lease length: long enough that one lease carries about
/// `tokens_per_lease` tokens at the share's rate, within the configured
/// bounds.
fn lease_length(config: &LeaseConfig, rate: Rate, parts: u32) -> Duration {
    let per_lease = u128::from(config.tokens_per_lease)
        * u128::from(rate.period_ns())
        * u128::from(SHARE_PARTS);
    let divisor = u128::from(rate.count.max(1)) * u128::from(parts.max(1));
    let ns = u64::try_from(per_lease / divisor).unwrap_or(u64::MAX);
    Duration::from_nanos(ns.clamp(duration_ns(config.lease_min), duration_ns(config.lease_max)))
}
