//! Per-shard delivery queues: what injection hands over once a message is
//! durable, what recovery rebuilds, and what the delivery side pulls from.
//!
//! # Shape
//! - A **destination** is a recipient domain (lower-cased). It has a FIFO
//!   *ready* queue of [`Entry`]s (one per recipient, 40 bytes, addresses
//!   left in the spool record).
//! - Destinations roll up into **sites**: every domain whose static route
//!   names the same host list shares one site, and a site owns the
//!   connections and limits (see `deliver`). Site [`UNROUTED`] holds the
//!   domains no route matches until delivery has resolved their MX
//!   records; [`Queues::assign_mx`] then moves the destination (its ready
//!   entries and its in-flight count) to the site of its MX host set. An
//!   assignment lasts until its refresh time: the next recipient that
//!   becomes ready after it sends the destination back to [`UNROUTED`]
//!   to be resolved again (the resolver's cache makes that cheap).
//! - A message may name a source pool (`X-virtualMTA`, stored in the
//!   record's queue field): its recipients go to the destination
//!   `(domain, pool)`, whose site is the pool's variant of the domain's.
//! - A message of a tenant (spool record's tenant field) queues in the
//!   destination `(domain, pool, tenant)`, in the same site as the
//!   tenant-less one: a tenant costs a destination per domain it sends
//!   to, never a byte per queued recipient, and an operator holds a
//!   tenant by holding its destinations (`admin`).
//! - One **scheduled** heap per shard holds every deferred recipient keyed
//!   by its next attempt time (never later than its expiry); one timer per
//!   shard sleeps until [`Queues::next_due`], never one per message.
//! - **Max age** is enforced wherever a recipient waits: a scheduled item
//!   is due no later than its expiry, [`Queues::take`] checks each entry it
//!   pops, and [`Queues::sweep_expired`] trims the fronts of ready queues
//!   that are not being served. Expired entries are collected for the
//!   delivery side ([`Queues::drain_expired`]), which completes them in the
//!   spool as `Expired` and logs them.
//!
//! # Accounting
//! Every entry is in exactly one place: a ready queue, the scheduled heap,
//! in flight on a connection, or the expired list; the counters always add
//! up to [`Queues::len`] (checked by `debug_assert`s and tests).
//!
//! This module does no I/O and reads no clock: times are passed in as
//! milliseconds since the Unix epoch, so it is tested without sleeping.

mod admin;
mod entry;
mod restore;
mod sites;
#[cfg(test)]
mod tests;

// std
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::task::Waker;
use std::time::Duration;

// external
use sluice_spool::RecordRef;

// crate
pub use self::admin::{DestSummary, Place};
pub use self::entry::{DestId, Entry, Timed, ENTRY_BYTES, TIMED_BYTES};
pub use self::restore::RestoreError;
pub use self::sites::{SiteId, Sites, UNROUTED};

/// One recipient of an accepted message, as injection parsed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedRecipient {
    /// Index of the recipient in the spool record.
    pub index: u32,
    /// The address (forward path without angle brackets). Not kept by the
    /// queues: delivery reads it back from the spool record.
    pub address: String,
    /// DSN parameters as stored in the spool record (opaque here).
    pub dsn: Vec<u8>,
}

/// The recipients of one message in one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainRecipients {
    /// The recipient domain (any case; the queues lower-case it).
    pub domain: String,
    /// Its recipients.
    pub recipients: Vec<AcceptedRecipient>,
}

/// A message injection accepted and made durable (its `250` is released).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Spool message id.
    pub id: u64,
    /// The spool record.
    pub rec: RecordRef,
    /// Arrival, ms since the Unix epoch.
    pub arrival_unix_ms: u64,
    /// Expiry stored in the record, ms since the Unix epoch.
    pub expiry_unix_ms: u64,
    /// The reverse path (empty for `<>`).
    pub sender: String,
    /// The source pool (or source) the message asked for, if any.
    pub pool: Option<String>,
    /// The message's tenant, if any (its recipients queue apart from
    /// other tenants' so a tenant can be held: `admin`).
    pub tenant: Option<String>,
    /// Recipients grouped by domain.
    pub domains: Vec<DomainRecipients>,
}

/// Queue settings from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// Longest a recipient may wait before it expires, counted from arrival
    /// (applies when the message's own expiry is later).
    pub max_age: Duration,
    /// Bound on recipients queued on this shard (ready, scheduled and in
    /// flight); injection should refuse (`452 4.3.1`) above it.
    pub recipients_max: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_age: Duration::from_secs(5 * 24 * 3600),
            recipients_max: 50_000_000,
        }
    }
}

/// A destination (recipient domain) and its ready queue.
#[derive(Debug)]
struct Destination {
    domain: Box<str>,
    /// The source pool its messages asked for.
    pool: Option<Box<str>>,
    /// The tenant of its messages.
    tenant: Option<Box<str>>,
    site: SiteId,
    /// Its recipients in flight (moved with it when it changes site).
    in_flight: usize,
    /// When its MX site assignment must be refreshed (ms since the Unix
    /// epoch); 0 when it is not assigned by MX.
    mx_until_unix_ms: u64,
    /// Max age of this destination's recipients.
    max_age: Duration,
    ready: VecDeque<Entry>,
    /// Whether the destination is in its site's ring of destinations with
    /// ready work.
    in_ring: bool,
}

// A tenant costs one destination per domain it sends to (see
// ARCHITECTURE.md, "Tenants queue in their own destinations").
const _: () = assert!(std::mem::size_of::<Destination>() <= 128);

/// Per-site state the queues keep: which destinations have ready work and
/// who waits for it.
#[derive(Debug, Default)]
struct SiteQueue {
    ring: VecDeque<DestId>,
    ready: usize,
    in_flight: usize,
    waiters: Vec<Waker>,
}

/// The shard's queues. Single-threaded; shared as `Rc<RefCell<Queues>>`.
#[derive(Debug)]
pub struct Queues {
    cfg: QueueConfig,
    sites: Sites,
    site_queues: Vec<SiteQueue>,
    dest_by_domain: HashMap<Box<str>, DestId>,
    dests: Vec<Destination>,
    scheduled: BinaryHeap<std::cmp::Reverse<Timed>>,
    expired: Vec<(DestId, Entry)>,
    ready: usize,
    in_flight: usize,
    /// Woken when a site gets ready work, the earliest deadline moves
    /// earlier, or something expired: the shard's delivery driver.
    driver: Option<Waker>,
    /// Set with every driver wake-up, cleared when the driver looks.
    driver_flag: bool,
    /// Per-domain max age (shaping rules), asked when a destination is made.
    max_age_of: Option<MaxAgeFn>,
    /// Told about every enqueued message (the accounting log's
    /// `Reception` records); must not touch the queues.
    on_enqueue: Option<EnqueueHook>,
    /// Destinations an operator suspended: `take` skips them (`admin`).
    held: std::collections::HashSet<DestId>,
    /// Operator orders by domain and tenant, applied to destinations
    /// made later too (`admin`).
    standing: admin::Standing,
}

/// Observer of [`Queues::enqueue`].
pub struct EnqueueHook(pub Box<dyn Fn(&Accepted)>);

impl std::fmt::Debug for EnqueueHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EnqueueHook")
    }
}

/// A per-domain max age lookup.
struct MaxAgeFn(Box<dyn Fn(&str) -> Duration>);

impl std::fmt::Debug for MaxAgeFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MaxAgeFn")
    }
}

impl Queues {
    /// Empty queues for the given sites.
    pub fn new(sites: Sites, cfg: QueueConfig) -> Queues {
        let site_queues = (0..sites.len()).map(|_| SiteQueue::default()).collect();
        Queues {
            cfg,
            sites,
            site_queues,
            dest_by_domain: HashMap::new(),
            dests: Vec::new(),
            scheduled: BinaryHeap::new(),
            expired: Vec::new(),
            ready: 0,
            in_flight: 0,
            driver: None,
            driver_flag: false,
            max_age_of: None,
            on_enqueue: None,
            held: std::collections::HashSet::new(),
            standing: admin::Standing::default(),
        }
    }

    /// Calls `hook` with every message handed over by [`Queues::enqueue`]
    /// (not with restored ones: they were received before).
    pub fn set_enqueue_hook(&mut self, hook: EnqueueHook) {
        self.on_enqueue = Some(hook);
    }

    /// Hands over a durable, acknowledged message: every recipient becomes
    /// ready now. Called by injection after the spool commit covering the
    /// message resolved, so nothing unacknowledged is ever delivered.
    pub fn enqueue(&mut self, msg: Accepted) {
        if let Some(hook) = &self.on_enqueue {
            (hook.0)(&msg);
        }
        for group in &msg.domains {
            let dest =
                self.destination_for(&group.domain, msg.pool.as_deref(), msg.tenant.as_deref());
            self.refresh_if_stale(dest, msg.arrival_unix_ms);
            let expiry = self.expiry_in(dest, msg.arrival_unix_ms, msg.expiry_unix_ms);
            for r in &group.recipients {
                let entry = Entry {
                    id: msg.id,
                    rec: msg.rec,
                    expiry_unix_ms: expiry,
                    index: r.index,
                    attempts: 0,
                };
                self.push_ready(dest, entry);
            }
        }
    }

    /// Makes destinations created from now on take their max age from
    /// `f` (the shaping rules) instead of the configured default.
    pub fn set_max_age_lookup(&mut self, f: Box<dyn Fn(&str) -> Duration>) {
        self.max_age_of = Some(MaxAgeFn(f));
    }

    /// The expiry of a recipient of `dest`: the message's own, or arrival
    /// plus the destination's max age if earlier.
    pub fn expiry_in(&self, dest: DestId, arrival_unix_ms: u64, expiry_unix_ms: u64) -> u64 {
        let max_age = self.dests[dest as usize].max_age;
        let by_age = arrival_unix_ms.saturating_add(max_age.as_millis() as u64);
        if expiry_unix_ms == 0 {
            by_age
        } else {
            expiry_unix_ms.min(by_age)
        }
    }

    /// The destination for `domain`, created (and routed) on first use.
    pub fn destination(&mut self, domain: &str) -> DestId {
        self.destination_in(domain, None)
    }

    /// The destination for `domain` in source pool `pool`, created (and
    /// routed) on first use.
    pub fn destination_in(&mut self, domain: &str, pool: Option<&str>) -> DestId {
        self.destination_for(domain, pool, None)
    }

    /// The destination for `domain` in source pool `pool` for `tenant`,
    /// created (and routed, and held or rerouted by standing operator
    /// orders) on first use.
    pub fn destination_for(
        &mut self,
        domain: &str,
        pool: Option<&str>,
        tenant: Option<&str>,
    ) -> DestId {
        let lower;
        let domain = if domain.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = domain.to_ascii_lowercase();
            lower.as_str()
        } else {
            domain
        };
        let pooled;
        // A space never occurs in a domain, nor a space or a tab in a pool
        // or tenant name (visible ASCII), so the keys cannot collide.
        let key = match (pool, tenant) {
            (None, None) => domain,
            (Some(p), None) => {
                pooled = format!("{domain} {p}");
                pooled.as_str()
            }
            (p, Some(t)) => {
                pooled = format!("{domain} {}\t{t}", p.unwrap_or(""));
                pooled.as_str()
            }
        };
        if let Some(&d) = self.dest_by_domain.get(key) {
            return d;
        }
        let id = DestId::try_from(self.dests.len()).unwrap_or(DestId::MAX);
        let site = self.sites.site_for_pool(domain, pool);
        self.grow_sites();
        let max_age = match &self.max_age_of {
            Some(f) => (f.0)(domain),
            None => self.cfg.max_age,
        };
        self.dests.push(Destination {
            domain: domain.into(),
            pool: pool.map(Into::into),
            tenant: tenant.map(Into::into),
            site,
            in_flight: 0,
            mx_until_unix_ms: 0,
            max_age,
            ready: VecDeque::new(),
            in_ring: false,
        });
        self.dest_by_domain.insert(key.into(), id);
        self.apply_standing(id);
        id
    }

    fn grow_sites(&mut self) {
        while self.site_queues.len() < self.sites.len() {
            self.site_queues.push(SiteQueue::default());
        }
    }

    /// Moves `dest` (its ready entries, its in-flight count and its future
    /// work) to the site of its resolved MX host set, until
    /// `until_unix_ms` (then it is resolved again). `key` is the
    /// resolution's site key; the destination's pool picks the variant;
    /// the first `spread` addresses share the best preference. `None`
    /// when the shard's site table is full (the destination stays put).
    pub fn assign_mx(
        &mut self,
        dest: DestId,
        key: &str,
        hosts: Vec<SocketAddr>,
        names: Vec<String>,
        spread: usize,
        until_unix_ms: u64,
    ) -> Option<SiteId> {
        let pool = self.dests[dest as usize].pool.clone();
        if self.sites.full_for_mx(key, pool.as_deref()) {
            return None;
        }
        let site = self.sites.site_for_mx(key, hosts, names, pool.as_deref());
        self.sites.set_spread(site, spread);
        self.grow_sites();
        self.move_to(dest, site);
        self.dests[dest as usize].mx_until_unix_ms = until_unix_ms.max(1);
        Some(site)
    }

    /// Sends an MX-assigned destination whose assignment is due back to
    /// [`UNROUTED`] (to be resolved again).
    fn refresh_if_stale(&mut self, dest: DestId, now_unix_ms: u64) {
        let d = &self.dests[dest as usize];
        if d.mx_until_unix_ms != 0 && d.mx_until_unix_ms <= now_unix_ms {
            self.move_to(dest, UNROUTED);
            self.dests[dest as usize].mx_until_unix_ms = 0;
        }
    }

    fn move_to(&mut self, dest: DestId, site: SiteId) {
        let d = &mut self.dests[dest as usize];
        let old = d.site;
        if old == site {
            return;
        }
        d.site = site;
        let (ready, in_flight, in_ring) = (d.ready.len(), d.in_flight, d.in_ring);
        let from = &mut self.site_queues[old as usize];
        if in_ring {
            if let Some(i) = from.ring.iter().position(|&x| x == dest) {
                from.ring.remove(i);
            }
        }
        from.ready -= ready;
        from.in_flight -= in_flight;
        let to = &mut self.site_queues[site as usize];
        to.ready += ready;
        to.in_flight += in_flight;
        if in_ring {
            to.ring.push_back(dest);
            for w in to.waiters.drain(..) {
                w.wake();
            }
            self.wake_driver();
        }
    }

    /// The destinations of `site` with ready work, in service order.
    pub fn site_dests(&self, site: SiteId) -> impl Iterator<Item = DestId> + '_ {
        self.site_queues[site as usize].ring.iter().copied()
    }

    /// Takes every ready recipient of `dest` (a DNS failure settles them
    /// all); they are in flight until settled, like [`Queues::take`]'s.
    /// Expired ones go to the expired list.
    pub fn take_all(&mut self, dest: DestId, now_unix_ms: u64, out: &mut Vec<Entry>) {
        out.clear();
        let d = &mut self.dests[dest as usize];
        let site = d.site;
        let mut expired = 0;
        while let Some(e) = d.ready.pop_front() {
            if e.expiry_unix_ms <= now_unix_ms {
                self.expired.push((dest, e));
                expired += 1;
            } else {
                out.push(e);
            }
        }
        d.in_flight += out.len();
        let was_in_ring = std::mem::replace(&mut d.in_ring, false);
        let sq = &mut self.site_queues[site as usize];
        if was_in_ring {
            if let Some(i) = sq.ring.iter().position(|&x| x == dest) {
                sq.ring.remove(i);
            }
        }
        sq.ready -= out.len() + expired;
        sq.in_flight += out.len();
        self.ready -= out.len() + expired;
        self.in_flight += out.len();
        if expired > 0 {
            self.wake_driver();
        }
    }

    fn push_ready(&mut self, dest: DestId, entry: Entry) {
        let d = &mut self.dests[dest as usize];
        d.ready.push_back(entry);
        let site = d.site;
        let sq = &mut self.site_queues[site as usize];
        if !d.in_ring {
            d.in_ring = true;
            sq.ring.push_back(dest);
        }
        sq.ready += 1;
        self.ready += 1;
        if let Some(w) = sq.waiters.pop() {
            w.wake();
        }
        self.wake_driver();
    }

    /// Pops the next transaction's worth of recipients for `site`: the head
    /// of the next destination in round-robin order plus the following
    /// recipients of the same message in that destination (up to
    /// `recipients_max`). Expired entries met on the way go to the expired
    /// list. The entries are in flight until [`Queues::finish`],
    /// [`Queues::defer`] or [`Queues::requeue`] accounts for each of them.
    pub fn take(
        &mut self,
        site: SiteId,
        now_unix_ms: u64,
        recipients_max: usize,
        out: &mut Vec<Entry>,
    ) -> Option<DestId> {
        out.clear();
        let recipients_max = recipients_max.max(1);
        // Bounded: every iteration removes at least one entry from the site
        // or returns.
        loop {
            let dest = self.site_queues[site as usize].ring.pop_front()?;
            if self.held.contains(&dest) {
                // Suspended: its ready recipients wait in the scheduled
                // heap, out of the ready counts, until released (`admin`).
                self.park(dest, now_unix_ms.saturating_add(admin::HOLD_RECHECK_MS));
                continue;
            }
            let d = &mut self.dests[dest as usize];
            let mut taken = 0usize;
            let mut expired = 0usize;
            while let Some(e) = d.ready.front().copied() {
                if let Some(first) = out.first() {
                    if e.id != first.id || out.len() >= recipients_max {
                        break;
                    }
                }
                d.ready.pop_front();
                if e.expiry_unix_ms <= now_unix_ms {
                    self.expired.push((dest, e));
                    expired += 1;
                } else {
                    out.push(e);
                    taken += 1;
                }
            }
            d.in_flight += taken;
            let more = !d.ready.is_empty();
            if more {
                self.site_queues[site as usize].ring.push_back(dest);
            } else {
                d.in_ring = false;
            }
            let sq = &mut self.site_queues[site as usize];
            sq.ready -= taken + expired;
            sq.in_flight += taken;
            self.ready -= taken + expired;
            self.in_flight += taken;
            if expired > 0 {
                self.wake_driver();
            }
            if taken > 0 {
                return Some(dest);
            }
        }
    }

    /// The destination `site` serves next, if it has ready work.
    pub fn site_front(&self, site: SiteId) -> Option<DestId> {
        self.site_queues[site as usize].ring.front().copied()
    }

    /// Whether `site` has ready recipients.
    pub fn site_ready(&self, site: SiteId) -> usize {
        self.site_queues[site as usize].ready
    }

    /// Recipients of `site` currently in flight.
    pub fn site_in_flight(&self, site: SiteId) -> usize {
        self.site_queues[site as usize].in_flight
    }

    /// An in-flight recipient reached a final outcome (delivered, bounced):
    /// it leaves the queues.
    pub fn finish(&mut self, dest: DestId) {
        let d = &mut self.dests[dest as usize];
        let site = d.site;
        let sq = &mut self.site_queues[site as usize];
        assert!(
            d.in_flight > 0 && sq.in_flight > 0 && self.in_flight > 0,
            "finish without a take"
        );
        d.in_flight -= 1;
        sq.in_flight -= 1;
        self.in_flight -= 1;
    }

    /// An in-flight recipient failed temporarily: it waits in the scheduled
    /// heap until `due_unix_ms`, or its expiry if that comes first.
    pub fn defer(&mut self, dest: DestId, entry: Entry, due_unix_ms: u64) {
        self.finish(dest);
        self.schedule(dest, entry, due_unix_ms);
    }

    fn schedule(&mut self, dest: DestId, entry: Entry, due_unix_ms: u64) {
        let due = due_unix_ms.min(entry.expiry_unix_ms);
        let earlier = self.next_due().is_none_or(|d| due < d);
        self.scheduled.push(std::cmp::Reverse(Timed {
            due_unix_ms: due,
            dest,
            entry,
        }));
        if earlier {
            self.wake_driver();
        }
    }

    /// An in-flight recipient was not attempted (its connection never got
    /// to it): back to the front of its ready queue, attempts unchanged.
    pub fn requeue(&mut self, dest: DestId, entry: Entry) {
        self.finish(dest);
        let d = &mut self.dests[dest as usize];
        d.ready.push_front(entry);
        let site = d.site;
        let sq = &mut self.site_queues[site as usize];
        if !d.in_ring {
            d.in_ring = true;
            sq.ring.push_front(dest);
        }
        sq.ready += 1;
        self.ready += 1;
        if let Some(w) = sq.waiters.pop() {
            w.wake();
        }
        self.wake_driver();
    }

    /// The earliest scheduled time, if anything is scheduled.
    pub fn next_due(&self) -> Option<u64> {
        self.scheduled.peek().map(|t| t.0.due_unix_ms)
    }

    /// Moves every scheduled recipient due at `now_unix_ms` to its ready
    /// queue (or to the expired list), at most `budget` of them; returns
    /// how many moved. Call again while it returns `budget`.
    pub fn promote_due(&mut self, now_unix_ms: u64, budget: usize) -> usize {
        let mut moved = 0;
        while moved < budget {
            match self.scheduled.peek() {
                Some(t) if t.0.due_unix_ms <= now_unix_ms => {}
                _ => break,
            }
            let Some(std::cmp::Reverse(t)) = self.scheduled.pop() else {
                break;
            };
            moved += 1;
            if t.entry.expiry_unix_ms <= now_unix_ms {
                self.expired.push((t.dest, t.entry));
            } else {
                self.refresh_if_stale(t.dest, now_unix_ms);
                self.push_ready(t.dest, t.entry);
            }
        }
        moved
    }

    /// Moves expired entries from the fronts of ready queues to the expired
    /// list (for destinations nobody is serving). Examines at most `budget`
    /// destinations, resuming where the last sweep stopped.
    pub fn sweep_expired(&mut self, now_unix_ms: u64, budget: usize) -> usize {
        let mut found = 0;
        for s in 0..self.site_queues.len() {
            let ring_len = self.site_queues[s].ring.len().min(budget);
            for _ in 0..ring_len {
                let Some(dest) = self.site_queues[s].ring.pop_front() else {
                    break;
                };
                let d = &mut self.dests[dest as usize];
                while let Some(e) = d.ready.front().copied() {
                    if e.expiry_unix_ms > now_unix_ms {
                        break;
                    }
                    d.ready.pop_front();
                    self.expired.push((dest, e));
                    self.site_queues[s].ready -= 1;
                    self.ready -= 1;
                    found += 1;
                }
                if d.ready.is_empty() {
                    d.in_ring = false;
                } else {
                    self.site_queues[s].ring.push_back(dest);
                }
            }
        }
        found
    }

    /// Takes the expired entries collected so far; the caller completes
    /// each in the spool as `Expired` and logs it.
    pub fn drain_expired(&mut self, out: &mut Vec<(DestId, Entry)>) {
        out.clear();
        out.append(&mut self.expired);
    }

    /// Whether expired entries wait for the delivery side.
    pub fn has_expired(&self) -> bool {
        !self.expired.is_empty()
    }

    /// Wakes the shard's delivery driver (new work, a retired connection).
    pub fn wake_driver(&mut self) {
        self.driver_flag = true;
        if let Some(w) = &self.driver {
            w.wake_by_ref();
        }
    }

    /// Whether the driver was woken since it last looked (clears the flag).
    pub fn take_driver_wake(&mut self) -> bool {
        std::mem::take(&mut self.driver_flag)
    }

    /// Registers the waker of the shard's delivery driver.
    pub fn set_driver_waker(&mut self, waker: Waker) {
        self.driver = Some(waker);
    }

    /// Registers an idle connection of `site` to be woken by new work.
    pub fn wait_for_work(&mut self, site: SiteId, waker: Waker) {
        let w = &mut self.site_queues[site as usize].waiters;
        if !w.iter().any(|x| x.will_wake(&waker)) {
            w.push(waker);
        }
    }

    /// Wakes every idle connection of every site (shutdown).
    pub fn wake_all(&mut self) {
        for sq in &mut self.site_queues {
            for w in sq.waiters.drain(..) {
                w.wake();
            }
        }
        self.wake_driver();
    }

    /// The domain of a destination.
    pub fn domain(&self, dest: DestId) -> &str {
        &self.dests[dest as usize].domain
    }

    /// The tenant of a destination's messages.
    pub fn tenant_of(&self, dest: DestId) -> Option<&str> {
        self.dests[dest as usize].tenant.as_deref()
    }

    /// The source pool a destination's messages asked for.
    pub fn pool_of(&self, dest: DestId) -> Option<&str> {
        self.dests[dest as usize].pool.as_deref()
    }

    /// The site of a destination.
    pub fn site_of(&self, dest: DestId) -> SiteId {
        self.dests[dest as usize].site
    }

    /// The routing table.
    pub fn sites(&self) -> &Sites {
        &self.sites
    }

    /// Next hops of a site (empty for [`UNROUTED`]).
    pub fn hosts(&self, site: SiteId) -> &[SocketAddr] {
        self.sites.hosts(site)
    }

    /// Every queued recipient: ready + scheduled + in flight + expired.
    pub fn len(&self) -> usize {
        self.ready + self.scheduled.len() + self.in_flight + self.expired.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the shard may accept `recipients` more (else `452 4.3.1`).
    pub fn has_room(&self, recipients: usize) -> bool {
        self.len().saturating_add(recipients) <= self.cfg.recipients_max
    }

    /// Counts by place, for metrics and tests.
    pub fn counts(&self) -> QueueCounts {
        QueueCounts {
            ready: self.ready,
            scheduled: self.scheduled.len(),
            in_flight: self.in_flight,
            expired: self.expired.len(),
            destinations: self.dests.len(),
        }
    }

    /// Checks the accounting invariants (tests and debug builds).
    pub fn check_invariants(&self) {
        let ready: usize = self.dests.iter().map(|d| d.ready.len()).sum();
        assert_eq!(ready, self.ready, "ready count");
        let per_site: usize = self.site_queues.iter().map(|s| s.ready).sum();
        assert_eq!(per_site, self.ready, "per-site ready count");
        let flight: usize = self.site_queues.iter().map(|s| s.in_flight).sum();
        assert_eq!(flight, self.in_flight, "in-flight count");
        let dest_flight: usize = self.dests.iter().map(|d| d.in_flight).sum();
        assert_eq!(
            dest_flight, self.in_flight,
            "per-destination in-flight count"
        );
        for (s, sq) in self.site_queues.iter().enumerate() {
            let ready: usize = self
                .dests
                .iter()
                .filter(|d| d.site as usize == s)
                .map(|d| d.ready.len())
                .sum();
            assert_eq!(ready, sq.ready, "ready count of site {s}");
        }
        for (i, d) in self.dests.iter().enumerate() {
            let in_ring = self.site_queues[d.site as usize]
                .ring
                .contains(&(i as DestId));
            assert_eq!(in_ring, d.in_ring, "ring membership of {}", d.domain);
            assert!(!d.in_ring || !d.ready.is_empty() || in_ring);
        }
    }
}

/// Where the queued recipients are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueCounts {
    /// In ready queues.
    pub ready: usize,
    /// In the scheduled heap.
    pub scheduled: usize,
    /// On connections.
    pub in_flight: usize,
    /// Expired, waiting to be completed.
    pub expired: usize,
    /// Destinations known.
    pub destinations: usize,
}
