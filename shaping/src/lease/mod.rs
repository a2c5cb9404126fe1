//! Cross-shard limits: each limit key has a home shard
//! ([`home_shard`]); every shard keeps a [`ShardShaper`] that answers
//! acquire calls from what it holds locally and trades shares and permits
//! with home shards by [`Message`]s. Message bytes never cross shards: only
//! shares, permits and limit changes do.
//!
//! The shaper is deterministic: it reads no clock and owns no channel. The
//! caller feeds inbound messages with [`ShardShaper::receive`] and collects
//! outbound ones with [`ShardShaper::poll`]; [`crate::transport`] wires that
//! to crossbeam channels, and the property tests wire it to a simulated
//! network with a virtual clock.

mod conn;
mod handle;
mod rate;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::Duration;

use crate::limiter::Take;
use crate::units::{Nanos, Rate};
use conn::ConnSlot;
pub use rate::Lease;
use rate::RateSlot;

/// The home shard of a limit or destination key: FNV-1a (64-bit, offset
/// basis 0xcbf29ce484222325, prime 0x100000001b3) over the key's UTF-8
/// bytes, modulo the shard count. Stable across runs, builds and machines,
/// so the engine routes a destination to the same shard with this function.
pub fn home_shard(key: &str, shards: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(shards.max(1))) as u32
}

/// The home shard of a limit key `SCOPE/FIELD`: [`home_shard`] of its
/// scope, so every limit of one domain (`domain:example.com/...`) lives on
/// the shard that owns the domain ([`domain_shard`]) and costs no messages.
pub fn limit_home(key: &str, shards: u32) -> u32 {
    let scope = key.split_once('/').map_or(key, |(scope, _)| scope);
    home_shard(scope, shards)
}

/// The shard that owns a destination domain: [`home_shard`] of
/// `domain:<lower-case domain>`. The engine routes queues with this.
pub fn domain_shard(domain: &str, shards: u32) -> u32 {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    home_shard(&format!("domain:{domain}"), shards)
}

/// Tuning of the leasing protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Shortest lease granted.
    pub lease_min: Duration,
    /// Longest lease granted: also the bound on how long a shard with
    /// demand can wait for a share held by another.
    pub lease_max: Duration,
    /// Leases are sized to carry about this many tokens at the share's rate.
    pub tokens_per_lease: u64,
    /// What `Wait` says while a first lease or permit is on its way.
    pub retry_hint: Duration,
    /// Idle permits go back to the home after this long.
    pub permit_idle: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            lease_min: Duration::from_millis(100),
            lease_max: Duration::from_secs(10),
            tokens_per_lease: 512,
            retry_hint: Duration::from_millis(1),
            permit_idle: Duration::from_millis(500),
        }
    }
}

/// A limit's value, as broadcast when backoff changes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitSpec {
    /// A message or connection rate.
    Rate(Rate),
    /// A maximum number of simultaneous connections.
    Connections(u32),
}

/// What shards tell each other. Carries keys, shares and counts only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A shard asks the home for a (renewed) share of a rate limit.
    RateRequest {
        /// The limit key.
        key: Box<str>,
        /// The asking shard.
        from: u32,
        /// The configured limit, in case the home has not seen the key.
        base: Rate,
        /// The rules generation `base` comes from (see [`Message::Rebase`]).
        generation: u64,
        /// Recent demand in thousandths of a token per second.
        demand_milli: u64,
    },
    /// The home grants a share.
    RateGrant {
        /// The limit key.
        key: Box<str>,
        /// Version of the limit's value.
        epoch: u64,
        /// The limit's current value.
        rate: Rate,
        /// The share.
        lease: Lease,
    },
    /// A shard gives up its share (it has been idle).
    RateRelease {
        /// The limit key.
        key: Box<str>,
        /// The releasing shard.
        from: u32,
    },
    /// A shard asks for connection permits.
    PermitRequest {
        /// The limit key.
        key: Box<str>,
        /// The asking shard.
        from: u32,
        /// The configured maximum, in case the home has not seen the key.
        base: u32,
        /// The rules generation `base` comes from (see [`Message::Rebase`]).
        generation: u64,
        /// How many it would like.
        want: u32,
    },
    /// The home lends permits.
    PermitGrant {
        /// The limit key.
        key: Box<str>,
        /// Version of the limit's value.
        epoch: u64,
        /// The limit's current maximum.
        max: u32,
        /// Permits lent.
        count: u32,
    },
    /// The home asks a shard to return its idle permits now (and each one
    /// that goes idle) because other shards are waiting.
    PermitRecall {
        /// The limit key.
        key: Box<str>,
    },
    /// A shard returns idle permits.
    PermitReturn {
        /// The limit key.
        key: Box<str>,
        /// The returning shard.
        from: u32,
        /// Permits returned.
        count: u32,
    },
    /// A shard sets (or with `None` clears) its restriction of a limit,
    /// e.g. because its backoff rules matched.
    Restrict {
        /// The limit key.
        key: Box<str>,
        /// The restricting shard.
        from: u32,
        /// The configured value, in case the home has not seen the key.
        base: LimitSpec,
        /// The rules generation `base` comes from (see [`Message::Rebase`]).
        generation: u64,
        /// The restriction.
        spec: Option<LimitSpec>,
    },
    /// The rules were reloaded and a limit's configured value changed: the
    /// home takes `base` if `generation` is newer than the generation of
    /// the value it has, recomputes the effective value (restrictions still
    /// apply) and broadcasts it like a restriction. Every message that
    /// carries a base carries its generation too, so a request from a shard
    /// that has not reloaded yet never brings an old value back.
    Rebase {
        /// The limit key.
        key: Box<str>,
        /// The new configured value.
        base: LimitSpec,
        /// The rules generation it comes from.
        generation: u64,
    },
    /// The home announces a limit's new value to every participant.
    LimitChange {
        /// The limit key.
        key: Box<str>,
        /// Version of the value.
        epoch: u64,
        /// The value.
        spec: LimitSpec,
    },
}

/// A message with its destination shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The receiving shard.
    pub to: u32,
    /// The message.
    pub message: Message,
}

/// A handle to a limit registered with one shard's shaper.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LimitId(u32);

/// The answer to a message acquire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquire {
    /// Every limit gave a token; they are spent.
    Ok,
    /// Try again after this long; nothing was spent.
    Wait(Duration),
}

/// A connection permit; give it back with
/// [`ShardShaper::release_connection`] when the connection closes.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a permit must be released when its connection closes"]
pub struct Permit {
    limit: LimitId,
}

/// The answer to a connection acquire.
#[derive(Debug, PartialEq, Eq)]
pub enum ConnAcquire {
    /// Open the connection.
    Ok(Permit),
    /// All permits are busy; try again after this long.
    Wait(Duration),
    /// The limit is zero (the destination is suspended).
    Denied,
}

/// Counters for benchmarks and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShaperStats {
    /// Messages sent to other shards.
    pub messages_sent: u64,
    /// Messages received from other shards.
    pub messages_received: u64,
    /// Message tokens granted to callers.
    pub tokens_granted: u64,
    /// Connection permits granted to callers.
    pub permits_granted: u64,
}

// Slots sit inline in one vector and a rate slot is read on every acquire:
// boxing it would add a pointer chase to the hot path to save a few bytes
// per (rarer) connection slot.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Slot {
    Rate(RateSlot),
    Conn(ConnSlot),
    /// Reclaimed; its index waits for reuse.
    Free,
}

/// Reclaim candidates looked at per `poll`: bounds the work of one poll.
const RECLAIM_PER_POLL: usize = 256;

/// One shard's shaper: its local shares and permits, plus the home ledgers
/// of the limits whose home it is.
#[derive(Debug)]
pub struct ShardShaper {
    shard: u32,
    shards: u32,
    config: LeaseConfig,
    ids: HashMap<Box<str>, LimitId>,
    slots: Vec<Slot>,
    users: Vec<u32>,
    free: Vec<u32>,
    candidates: VecDeque<u32>,
    staged: Vec<Envelope>,
    outbox: Vec<Envelope>,
    wakeups: BinaryHeap<Reverse<(Nanos, u32)>>,
    stats: ShaperStats,
    /// The generation of the rules new registrations come from.
    generation: u64,
}

impl ShardShaper {
    /// The shaper of shard `shard` out of `shards`.
    pub fn new(shard: u32, shards: u32, mut config: LeaseConfig) -> ShardShaper {
        assert!(shard < shards, "shard {shard} out of {shards}");
        // Keep the protocol's timing sane whatever the caller passed.
        config.lease_min = config.lease_min.max(Duration::from_millis(1));
        config.lease_max = config.lease_max.max(config.lease_min);
        config.tokens_per_lease = config.tokens_per_lease.max(1);
        ShardShaper {
            shard,
            shards,
            config,
            ids: HashMap::new(),
            slots: Vec::new(),
            users: Vec::new(),
            free: Vec::new(),
            candidates: VecDeque::new(),
            staged: Vec::new(),
            outbox: Vec::new(),
            wakeups: BinaryHeap::new(),
            stats: ShaperStats::default(),
            generation: 0,
        }
    }

    /// This shard's index.
    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// Counters so far.
    pub fn stats(&self) -> ShaperStats {
        self.stats
    }

    /// Registers (or finds) a rate limit under `key`; `rate` is its
    /// configured value. Each call counts one user; pair it with
    /// [`ShardShaper::unregister`] so idle limits can be reclaimed.
    pub fn rate_limit(&mut self, key: &str, rate: Rate, now: Nanos) -> LimitId {
        self.register(key, LimitSpec::Rate(rate), self.generation, now, true)
    }

    /// Registers (or finds) a connection limit under `key`; counts one user
    /// like [`ShardShaper::rate_limit`].
    pub fn connection_limit(&mut self, key: &str, max: u32, now: Nanos) -> LimitId {
        self.register(key, LimitSpec::Connections(max), self.generation, now, true)
    }

    /// The generation of the rules this shard registers limits from: `0`
    /// at start, then whatever [`ShardShaper::set_generation`] said.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Rules of generation `generation` replace the old ones: limits
    /// registered from now on carry it (every shard must be given the same,
    /// increasing number for the same reload; the engine uses the reload's
    /// time).
    pub fn set_generation(&mut self, generation: u64) {
        self.generation = self.generation.max(generation);
    }

    /// The limit registered under `key`, if any.
    pub fn id(&self, key: &str) -> Option<LimitId> {
        self.ids.get(key).copied()
    }

    /// Users of `limit` on this shard (destinations holding it).
    pub fn users(&self, limit: LimitId) -> u32 {
        self.users.get(limit.0 as usize).copied().unwrap_or(0)
    }

    /// The configured value of a limit as this shard knows it (its home
    /// applies restrictions on top), `None` once reclaimed.
    pub fn base(&self, limit: LimitId) -> Option<LimitSpec> {
        match self.slots.get(limit.0 as usize)? {
            Slot::Rate(s) => Some(LimitSpec::Rate(s.base)),
            Slot::Conn(s) => Some(LimitSpec::Connections(s.base)),
            Slot::Free => None,
        }
    }

    /// The rules were reloaded (see [`ShardShaper::set_generation`]) and
    /// `limit`'s configured value is now `base`: this shard asks with it
    /// from now on, and the home takes it ([`Message::Rebase`]) and
    /// broadcasts the new effective value, which every shard obeys when it
    /// arrives: rate shares are fractions, so a lease already granted runs
    /// on at the new rate; a lowered connection maximum stops new permits
    /// until enough are released, and spare permits go home at once.
    /// Returns whether the value changed; a `base` of the other kind (rate
    /// for a connection limit) is ignored.
    pub fn rebase(&mut self, limit: LimitId, base: LimitSpec, now: Nanos) -> bool {
        let changed = self.adopt_base(limit.0, base, self.generation, now);
        self.dispatch(now);
        changed
    }

    /// One user of `limit` is done with it. When no user is left and the
    /// limit holds nothing (no share, no permits, no restriction, no
    /// borrower), a later `poll` reclaims it; the id must not be used again.
    pub fn unregister(&mut self, limit: LimitId) {
        let users = &mut self.users[limit.0 as usize];
        debug_assert!(*users > 0, "unregister without register");
        *users = users.saturating_sub(1);
        if *users == 0 {
            self.candidates.push_back(limit.0);
        }
    }

    /// Limits held now (registered and not yet reclaimed).
    pub fn limits(&self) -> usize {
        self.ids.len()
    }

    pub(super) fn register(
        &mut self,
        key: &str,
        spec: LimitSpec,
        generation: u64,
        now: Nanos,
        user: bool,
    ) -> LimitId {
        if let Some(id) = self.ids.get(key).copied() {
            if user {
                self.users[id.0 as usize] += 1;
            }
            // A value from newer rules than the one this slot has (a
            // request from a shard that reloaded, a registration after a
            // reload): the home takes it.
            self.adopt_base(id.0, spec, generation, now);
            return id;
        }
        let home = limit_home(key, self.shards);
        let slot = match spec {
            LimitSpec::Rate(rate) => {
                let mut slot = RateSlot::new(key.into(), home, rate, self.shard, self.shards, now);
                slot.generation = generation;
                Slot::Rate(slot)
            }
            LimitSpec::Connections(max) => {
                let mut slot = ConnSlot::new(key.into(), home, max, self.shard, self.shards, now);
                slot.generation = generation;
                Slot::Conn(slot)
            }
        };
        let index = match self.free.pop() {
            Some(index) => {
                self.slots[index as usize] = slot;
                index
            }
            None => {
                // Invariant: one slot per live key on this shard; a shard
                // holding 2^32 limits would have run out of memory first.
                let index = u32::try_from(self.slots.len()).expect("fewer than 2^32 limits");
                self.slots.push(slot);
                self.users.push(0);
                index
            }
        };
        self.users[index as usize] = u32::from(user);
        if !user {
            // Created by a message (this is its home): nobody here uses it,
            // so it goes as soon as the others are done with it.
            self.candidates.push_back(index);
        }
        let id = LimitId(index);
        self.ids.insert(key.into(), id);
        id
    }

    fn reclaim(&mut self, now: Nanos) {
        for _ in 0..RECLAIM_PER_POLL.min(self.candidates.len()) {
            let Some(index) = self.candidates.pop_front() else {
                break;
            };
            let i = index as usize;
            if self.users[i] > 0 {
                continue;
            }
            let (idle, key) = match &mut self.slots[i] {
                Slot::Rate(slot) => (slot.idle(now), slot.key.clone()),
                Slot::Conn(slot) => (slot.idle(), slot.key.clone()),
                Slot::Free => continue,
            };
            if idle {
                self.ids.remove(&key);
                self.slots[i] = Slot::Free;
                self.free.push(index);
            } else {
                self.candidates.push_back(index);
            }
        }
    }

    /// Asks every limit in `limits` (rate limits) for one token at `now`:
    /// all or nothing.
    pub fn try_acquire_message(&mut self, limits: &[LimitId], now: Nanos) -> Acquire {
        match self.try_take_all(limits, now) {
            Ok(()) => return Acquire::Ok,
            Err((wait, false)) => return Acquire::Wait(wait),
            Err((_, true)) => {}
        }
        // Some limit has no share: ask for one. When this shard is the
        // home, the grant arrives during `dispatch`, so look once more.
        for id in limits {
            self.service(id.0, now);
        }
        self.dispatch(now);
        match self.try_take_all(limits, now) {
            Ok(()) => Acquire::Ok,
            Err((wait, missing_share)) => Acquire::Wait(if missing_share {
                wait.max(self.config.retry_hint)
            } else {
                wait
            }),
        }
    }

    fn try_take_all(&mut self, limits: &[LimitId], now: Nanos) -> Result<(), (Duration, bool)> {
        let mut wait = Duration::ZERO;
        let mut missing_share = false;
        for id in limits {
            if let Slot::Rate(slot) = &mut self.slots[id.0 as usize] {
                match slot.check(now) {
                    Take::Ok => {}
                    Take::Wait(d) => {
                        let change = slot.until_change(now).max(self.config.retry_hint);
                        wait = wait.max(d.min(change));
                    }
                    Take::NoShare => missing_share = true,
                }
            }
        }
        if wait.is_zero() && !missing_share {
            let mut due = false;
            for id in limits {
                if let Slot::Rate(slot) = &mut self.slots[id.0 as usize] {
                    slot.consume();
                    due |= slot.next_wake <= now;
                }
            }
            self.stats.tokens_granted += 1;
            if due {
                // A renewal is due and the caller has not polled yet: do it
                // now so a busy shard never runs its lease out.
                self.poll(now);
            }
            Ok(())
        } else {
            Err((wait, missing_share))
        }
    }

    /// Asks a connection limit for a permit at `now`.
    pub fn try_acquire_connection(&mut self, limit: LimitId, now: Nanos) -> ConnAcquire {
        let Slot::Conn(slot) = &mut self.slots[limit.0 as usize] else {
            return ConnAcquire::Denied;
        };
        slot.last_activity = now;
        if slot.in_use < slot.held.min(slot.max) {
            slot.in_use += 1;
            self.stats.permits_granted += 1;
            return ConnAcquire::Ok(Permit { limit });
        }
        if slot.max == 0 {
            return ConnAcquire::Denied;
        }
        if !slot.requested {
            slot.requested = true;
            let message = Message::PermitRequest {
                key: slot.key.clone(),
                from: self.shard,
                base: slot.base,
                generation: slot.generation,
                want: slot.want(),
            };
            let to = slot.home;
            self.stage(to, message);
            self.dispatch(now);
            // When this shard is the home the grant is already here.
            if let Slot::Conn(slot) = &mut self.slots[limit.0 as usize] {
                if slot.in_use < slot.held.min(slot.max) {
                    slot.in_use += 1;
                    self.stats.permits_granted += 1;
                    return ConnAcquire::Ok(Permit { limit });
                }
            }
        }
        ConnAcquire::Wait(self.config.retry_hint)
    }

    /// Gives a connection permit back.
    pub fn release_connection(&mut self, permit: Permit, now: Nanos) {
        let id = permit.limit.0;
        if let Slot::Conn(slot) = &mut self.slots[id as usize] {
            assert!(slot.in_use > 0, "permit released twice");
            slot.in_use -= 1;
            slot.last_activity = now;
        }
        self.service(id, now);
        self.dispatch(now);
    }

    /// Sets (or with `None` clears) this shard's restriction of a limit:
    /// the home applies the most restrictive value any shard asks for and
    /// broadcasts it.
    pub fn restrict(&mut self, limit: LimitId, spec: Option<LimitSpec>, now: Nanos) {
        let (key, home, base, generation) = match &self.slots[limit.0 as usize] {
            Slot::Rate(s) => (s.key.clone(), s.home, LimitSpec::Rate(s.base), s.generation),
            Slot::Conn(s) => (
                s.key.clone(),
                s.home,
                LimitSpec::Connections(s.base),
                s.generation,
            ),
            Slot::Free => return,
        };
        let from = self.shard;
        self.stage(
            home,
            Message::Restrict {
                key,
                from,
                base,
                generation,
                spec,
            },
        );
        self.dispatch(now);
    }

    /// The value of a limit as this shard knows it now (`None` once
    /// reclaimed).
    pub fn current(&self, limit: LimitId) -> Option<LimitSpec> {
        match &self.slots[limit.0 as usize] {
            Slot::Rate(s) => Some(LimitSpec::Rate(s.bucket.rate())),
            Slot::Conn(s) => Some(LimitSpec::Connections(s.max)),
            Slot::Free => None,
        }
    }

    /// Feeds one inbound message.
    pub fn receive(&mut self, message: Message, now: Nanos) {
        self.stats.messages_received += 1;
        let from = match &message {
            Message::RateRequest { from, .. }
            | Message::RateRelease { from, .. }
            | Message::PermitRequest { from, .. }
            | Message::PermitReturn { from, .. }
            | Message::Restrict { from, .. } => Some(*from),
            _ => None,
        };
        // Shards of one process agree on the count; a message claiming a
        // shard beyond it comes from a mis-wired caller and is ignored
        // rather than trusted as an index.
        debug_assert!(
            from.is_none_or(|f| f < self.shards),
            "message from shard {from:?}"
        );
        if from.is_some_and(|f| f >= self.shards) {
            return;
        }
        self.handle(message, now);
        self.dispatch(now);
    }

    /// Runs due timers and returns the messages to send (drain the vector).
    pub fn poll(&mut self, now: Nanos) -> &mut Vec<Envelope> {
        while let Some(Reverse((at, id))) = self.wakeups.peek().copied() {
            if at > now {
                break;
            }
            self.wakeups.pop();
            let current = match &self.slots[id as usize] {
                Slot::Rate(s) => s.next_wake,
                Slot::Conn(s) => s.next_wake,
                Slot::Free => continue,
            };
            if current == at {
                self.set_wake(id, Nanos::MAX);
                self.service(id, now);
            }
        }
        self.dispatch(now);
        self.reclaim(now);
        &mut self.outbox
    }

    /// When `poll` next has timer work to do.
    pub fn next_wakeup(&self) -> Option<Nanos> {
        self.wakeups.peek().map(|Reverse((at, _))| *at)
    }

    fn set_wake(&mut self, id: u32, at: Nanos) {
        let next = match &mut self.slots[id as usize] {
            Slot::Rate(s) => &mut s.next_wake,
            Slot::Conn(s) => &mut s.next_wake,
            Slot::Free => return,
        };
        if at != *next {
            *next = at;
            if at != Nanos::MAX {
                self.wakeups.push(Reverse((at, id)));
            }
        }
    }

    fn stage(&mut self, to: u32, message: Message) {
        self.staged.push(Envelope { to, message });
    }

    fn dispatch(&mut self, now: Nanos) {
        // Messages to ourselves are handled at once; bounded because a
        // handled message stages at most grants and broadcasts, which stage
        // nothing further to this shard.
        while !self.staged.is_empty() {
            let staged = std::mem::take(&mut self.staged);
            for envelope in staged {
                if envelope.to == self.shard {
                    self.handle(envelope.message, now);
                } else {
                    self.stats.messages_sent += 1;
                    self.outbox.push(envelope);
                }
            }
        }
    }

    /// Looks at one limit: renewals, releases, pending grants, idle permits.
    fn service(&mut self, id: u32, now: Nanos) {
        let (shard, shards, config) = (self.shard, self.shards, &self.config);
        let mut out: Vec<(u32, Message)> = Vec::new();
        let wake = match &mut self.slots[id as usize] {
            Slot::Rate(slot) => {
                slot.sync(now);
                if slot.wants_request(now) {
                    out.push((slot.home, slot.request(shard, shards, now)));
                } else if slot.wants_release(now) {
                    out.push((slot.home, slot.release(shard, now)));
                }
                if let Some(home) = &mut slot.home_state {
                    let (epoch, rate) = (slot.epoch, home.effective);
                    for (to, lease) in home.grant_pending(config, shard, now) {
                        let key = slot.key.clone();
                        out.push((
                            to,
                            Message::RateGrant {
                                key,
                                epoch,
                                rate,
                                lease,
                            },
                        ));
                    }
                }
                slot.wake_time()
            }
            Slot::Conn(slot) => {
                let spare = slot.idle_to_return(now, config.permit_idle);
                if spare > 0 {
                    out.push((slot.home, slot.give_back(shard, spare)));
                    slot.recalled = false;
                }
                if slot.held > slot.in_use {
                    slot.last_activity.plus(config.permit_idle)
                } else {
                    Nanos::MAX
                }
            }
            Slot::Free => return,
        };
        self.set_wake(id, if wake <= now { Nanos(now.0 + 1) } else { wake });
        for (to, message) in out {
            self.stage(to, message);
        }
    }
}
