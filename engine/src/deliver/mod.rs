//! Delivery: the shard's driver task, per-site connection pools, and the
//! thin glommio loop around `sluice-smtp`'s [`ClientSession`].
//!
//! # Tasks (all on the shard's executor)
//! - **The driver** ([`start`]): one per shard. It moves due recipients from
//!   the scheduled heap to their ready queues (one timer for the whole
//!   shard: it sleeps until the earliest deadline, at most
//!   [`DRIVER_TICK`]), completes expired recipients, starts MX resolutions
//!   for unrouted destinations ([`mx`]: resolved ones join the site of
//!   their MX host set, failures bounce or defer), and opens connections:
//!   a site gets one
//!   connection per `transactions_in_flight_max` recipients waiting, up to
//!   `connections_per_site_max`. It is woken by the queues whenever a site
//!   gets work and whenever a connection retires, so a retired connection is
//!   replaced at once, not at the next tick.
//! - **Connections** ([`conn`]): connect to the site's hosts in order (the
//!   next one when a host refuses the connection or the session), then
//!   loop: pull transactions from the site's queues, queue them in the
//!   session (pipelined back to back when the server offers PIPELINING; the
//!   session decides), write commands and bodies (BDAT: the body slice from
//!   the spool mapping; DATA: [`sluice_smtp::DotStuffer`] slices of it),
//!   read replies with the session's timeout class armed, and settle each
//!   recipient's outcome. An idle connection waits for work for
//!   `idle_close`, then QUITs. After `deliveries_per_connection_max`
//!   transactions it QUITs and the driver replaces it.
//!
//! # Outcomes ([`outcome`])
//! `2xx` completes the recipient as delivered; `5xx` completes it as failed
//! (bounced); `4xx`, a `421`, a timeout or a lost connection defers it: the
//! attempt count goes up, the next attempt comes from the retry schedule,
//! the deferral is written to the spool and the entry waits in the
//! scheduled heap. A recipient the connection never sent is put back at
//! the front of its queue unchanged. A connection takes work only once its
//! session is ready. When every host of the site refused, the last
//! refusal is the deferral's reply: a refused session defers the work one
//! connection would have carried (so a site that refuses every session is
//! not retried in a tight loop), refused connects back off exponentially
//! and defer everything waiting. Every outcome is one delivery log line.
//!
//! # Shaping
//! With a [`ShapingLink`] (the runtime always passes one; see
//! `runtime::rules`), connections take a permit and transactions a message
//! token from `sluice-shaping`, outcomes feed its backoff rules, and a pump
//! task exchanges lease messages with the other shards.
//!
//! # Sources
//! A site whose messages name a source pool (`X-virtualMTA`), or whose
//! shaping rule names one (`pool = …`), binds each new connection to a
//! source of that pool picked by weight, and says EHLO with the source's
//! name ([`source`]). The driver picks the source before the connection
//! permit, so the permit, every message token and every outcome of the
//! connection go through that source's shaping destination: its
//! `[source.NAME]` rate and warm-up, and the rules' per-source overrides.

pub mod conn;
pub mod mx;
pub mod outcome;
pub mod settings;
pub mod shape;
pub mod source;
#[cfg(test)]
mod tests;

// std
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

// external
use glommio::timer::Timer;
use sluice_shaping::lease::ConnAcquire;
use sluice_spool::fs::FsStorage;
use sluice_spool::{RecordRef, Spool};

// crate
use crate::config::Config;
use crate::log::DeliveryLog;
use crate::queue::Queues;
use crate::queue::{Entry, QueueConfig, SiteId};

pub use self::settings::DeliverySettings;
pub use self::shape::{Shaping, ShapingLink};

/// Longest the driver sleeps: bounds how late an expiry sweep or a
/// shutdown is noticed.
pub const DRIVER_TICK: Duration = Duration::from_millis(200);
/// Scheduled recipients promoted per driver step before yielding.
const PROMOTE_BUDGET: usize = 4096;
/// Destinations swept for expiry per driver step.
const SWEEP_BUDGET: usize = 1024;
/// How often ready queues are swept for expired entries.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Longest the driver waits for connections to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Connect failures back off from this...
const CONNECT_BACKOFF_MIN: Duration = Duration::from_millis(250);
/// ...to at most this.
const CONNECT_BACKOFF_MAX: Duration = Duration::from_secs(30);
const _: () = assert!(CONNECT_BACKOFF_MIN.as_millis() < CONNECT_BACKOFF_MAX.as_millis());

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl QueueConfig {
    /// Queue settings from the delivery settings.
    pub fn from_settings(d: &DeliverySettings) -> QueueConfig {
        QueueConfig {
            max_age: d.max_age,
            ..QueueConfig::default()
        }
    }
}

/// What delivery needs from its shard. The runtime builds it from its
/// shard context:
/// ```text
/// let stop = shutdown.clone();
/// let delivery = deliver::start(DeliveryContext {
///     index, config: Rc::clone(&config), spool: spool.clone(),
///     queues: Rc::clone(&queues), stopping: Rc::new(move || stop.is_set()),
/// });
/// ... shutdown.trigger(); let stats = delivery.await;
/// ```
#[derive(Clone)]
pub struct DeliveryContext {
    /// The shard's index.
    pub index: u32,
    /// The validated configuration (`[delivery]` and routes).
    pub config: Rc<Config>,
    /// The shard's spool.
    pub spool: Spool<FsStorage>,
    /// The shard's queues.
    pub queues: Rc<RefCell<Queues>>,
    /// Whether the shard is stopping: connections finish what they have
    /// in flight, QUIT, and the driver returns.
    pub stopping: Rc<dyn Fn() -> bool>,
}

impl DeliveryContext {
    pub(crate) fn stopping(&self) -> bool {
        (self.stopping)()
    }
}

/// Per-site connection pool state on this shard.
#[derive(Debug, Default, Clone)]
pub struct SitePool {
    /// Connections open or opening.
    pub active: u32,
    /// Consecutive connect failures.
    pub connect_failures: u32,
    /// No new connection before this time (after connect failures).
    pub retry_at_unix_ms: u64,
}

/// Delivery counters of a shard.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryStats {
    /// Recipients delivered.
    pub delivered: u64,
    /// Recipients bounced (permanent failure).
    pub bounced: u64,
    /// Temporary failures (each retried).
    pub deferred: u64,
    /// Recipients expired.
    pub expired: u64,
    /// Connections opened.
    pub connections: u64,
    /// Connect attempts that failed.
    pub connect_failures: u64,
    /// Spool writes (completion, deferral) that failed.
    pub spool_errors: u64,
}

/// What the shard's delivery tasks share.
pub struct Shared {
    /// The shard.
    pub ctx: DeliveryContext,
    /// Settings.
    pub settings: DeliverySettings,
    /// The delivery log.
    pub log: DeliveryLog,
    /// Pools per site.
    pub pools: RefCell<Vec<SitePool>>,
    /// Counters.
    pub stats: Cell<DeliveryStats>,
    /// Seed of the jitter generator (xorshift; jitter needs no quality).
    pub rng: Cell<u64>,
    /// Shaping rules and cross-shard limits, when the runtime gave a link.
    pub shaping: Option<Rc<Shaping>>,
    /// MX resolution of unrouted domains.
    pub mx: mx::Mx,
    /// Bounce classification, message facts and delivery metrics.
    pub acct: Rc<crate::accounting::Accounting>,
    /// Sources whose connections were told to wait for a message token,
    /// until when (ms): new connections pick other sources of their pool
    /// meanwhile (see [`source::choose`]).
    pub waiting_sources: RefCell<HashMap<String, u64>>,
    /// Current record locations, built when a queued reference went stale
    /// (the spool relocated the message), keyed by the spool's relocation
    /// count at build time.
    pub relocations: RefCell<Option<(u64, HashMap<u64, RecordRef>)>>,
    /// Failed recipients waiting for their message's DSN
    /// ([`crate::bounce`]).
    pub bounces: RefCell<crate::bounce::Batch>,
}

impl Shared {
    /// Where the record of a queued message is now. The spool relocates
    /// long-deferred messages to newer segments and then deletes the old
    /// one, so a queued reference can go stale; the current one is found
    /// through the spool's live set (rebuilt only after new relocations).
    pub fn locate(&self, entry: &Entry) -> RecordRef {
        if self.ctx.spool.message(&entry.rec).is_ok() {
            return entry.rec;
        }
        let relocated = self.ctx.spool.stats().relocated_messages;
        let mut cache = self.relocations.borrow_mut();
        if cache.as_ref().is_none_or(|(n, _)| *n != relocated) {
            let map = self
                .ctx
                .spool
                .live_messages()
                .into_iter()
                .map(|m| (m.id, m.rec))
                .collect();
            *cache = Some((relocated, map));
        }
        cache
            .as_ref()
            .and_then(|(_, m)| m.get(&entry.id).copied())
            .unwrap_or(entry.rec)
    }

    /// Updates the counters.
    pub fn count(&self, f: impl FnOnce(&mut DeliveryStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    /// A pseudo-random number for retry jitter.
    pub fn random(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        x
    }
}

/// Starts the shard's delivery: the log writer and the driver (which
/// spawns connections). The returned task ends after the shard's
/// shutdown signal, once connections have finished (at most
/// [`DRAIN_TIMEOUT`]) and the log is written; it yields the counters.
pub fn start(ctx: DeliveryContext) -> glommio::Task<DeliveryStats> {
    start_with(ctx, None)
}

/// Like [`start`], shaped by `shaping`: the rules' limits (connections,
/// message and connection rates, across every shard through the leasing
/// mesh), their backoff modes and retry schedules. Without it delivery
/// uses the `[delivery]` limits per shard.
pub fn start_with(
    ctx: DeliveryContext,
    shaping: Option<ShapingLink>,
) -> glommio::Task<DeliveryStats> {
    start_shared(ctx, shaping).0
}

/// Like [`start_with`], also returning the shared state (the admin
/// mailbox reads counters and settles admin bounces through it).
pub fn start_shared(
    ctx: DeliveryContext,
    shaping: Option<ShapingLink>,
) -> (glommio::Task<DeliveryStats>, Rc<Shared>) {
    if shaping.is_none() && ctx.config.shaping_file.is_some() {
        log::warn!(
            "shard {}: delivery.shaping is set but delivery was started without a shaping link; \
             the [delivery] limits apply",
            ctx.index
        );
    }
    let shaping = shaping.map(|link| Rc::new(Shaping::new(ctx.index, link)));
    if let Some(s) = &shaping {
        let rules = Rc::clone(s);
        ctx.queues
            .borrow_mut()
            .set_max_age_lookup(Box::new(move |domain| rules.max_age(domain)));
        glommio::spawn_local(shape::pump(Rc::clone(s), Rc::clone(&ctx.stopping))).detach();
    }
    let settings = ctx.config.delivery.clone();
    let log = DeliveryLog::new(ctx.config.log.buffer_bytes, ctx.config.log.csv);
    let acct = Rc::new(crate::accounting::Accounting::new(
        ctx.config.bounce_rules.clone(),
    ));
    crate::accounting::install_reception_hook(
        &ctx.queues,
        log.clone(),
        ctx.spool.clone(),
        Rc::clone(&acct),
        ctx.index,
    );
    let mx = mx::Mx::new(ctx.config.dns.clone(), ctx.config.mx_port);
    let sites = ctx.queues.borrow().sites().len();
    let shared = Rc::new(Shared {
        pools: RefCell::new(vec![SitePool::default(); sites]),
        stats: Cell::new(DeliveryStats::default()),
        rng: Cell::new(
            0x9e37_79b9_7f4a_7c15 ^ (u64::from(ctx.index) + 1).wrapping_mul(now_unix_ms() | 1),
        ),
        ctx,
        settings,
        log,
        shaping,
        mx,
        acct,
        waiting_sources: RefCell::new(HashMap::new()),
        relocations: RefCell::new(None),
        bounces: RefCell::new(crate::bounce::Batch::default()),
    });
    glommio::spawn_local(crate::bounce::flusher(Rc::clone(&shared))).detach();
    (glommio::spawn_local(drive(Rc::clone(&shared))), shared)
}

async fn drive(shared: Rc<Shared>) -> DeliveryStats {
    let index = shared.ctx.index;
    let writer = glommio::spawn_local(shared.log.clone().run_writer(crate::log::WriterConfig {
        dir: shared.settings.log_dir.clone(),
        shard: index,
        flush_every: shared.settings.log_flush,
        rotate_bytes: shared.ctx.config.log.rotate_bytes,
        rotate_every: shared.ctx.config.log.rotate_every,
    }));
    let mut expired = Vec::new();
    let mut last_sweep = 0u64;
    while !shared.ctx.stopping() {
        let now = now_unix_ms();
        loop {
            let moved = shared
                .ctx
                .queues
                .borrow_mut()
                .promote_due(now, PROMOTE_BUDGET);
            if moved < PROMOTE_BUDGET {
                break;
            }
            glommio::yield_if_needed().await;
        }
        if now.saturating_sub(last_sweep) >= SWEEP_EVERY.as_millis() as u64 {
            shared
                .ctx
                .queues
                .borrow_mut()
                .sweep_expired(now, SWEEP_BUDGET);
            last_sweep = now;
        }
        shared.ctx.queues.borrow_mut().drain_expired(&mut expired);
        for (dest, entry) in expired.drain(..) {
            outcome::expire(&shared, dest, entry, now);
        }
        mx::resolve_unrouted(&shared);
        open_connections(&shared, now);
        let next_due = shared.ctx.queues.borrow().next_due();
        let sleep = match next_due {
            Some(due) => Duration::from_millis(due.saturating_sub(now_unix_ms())).min(DRIVER_TICK),
            None => DRIVER_TICK,
        };
        DriverWait {
            shared: &shared,
            timer: Timer::new(sleep),
        }
        .await;
    }
    // Shutdown: wake idle connections (they QUIT), wait for all to end.
    shared.ctx.queues.borrow_mut().wake_all();
    let deadline = now_unix_ms() + DRAIN_TIMEOUT.as_millis() as u64;
    while shared.pools.borrow().iter().any(|p| p.active > 0) && now_unix_ms() < deadline {
        shared.ctx.queues.borrow_mut().wake_all();
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    // Bounces settled by the last connections, before the log closes.
    crate::bounce::flush(&shared);
    crate::bounce::wake_flusher(&shared);
    shared.log.close();
    if let Err(e) = writer.await {
        log::error!("shard {index}: delivery log: {e}");
    }
    shared.stats.get()
}

/// Opens connections where queues are deeper than the open connections
/// serve, within the pool's bound and after any connect backoff.
fn open_connections(shared: &Rc<Shared>, now: u64) {
    // MX resolution adds sites as it goes.
    let sites = shared.ctx.queues.borrow().sites().len();
    shared
        .pools
        .borrow_mut()
        .resize(sites.max(1), SitePool::default());
    let per_conn = shared.settings.transactions_in_flight_max.max(1) as usize;
    for site in 1..sites as SiteId {
        let (ready, in_flight) = {
            let q = shared.ctx.queues.borrow();
            (q.site_ready(site), q.site_in_flight(site))
        };
        if ready == 0 {
            continue;
        }
        let want = (ready + in_flight)
            .div_ceil(per_conn)
            .min(shared.settings.connections_per_site_max as usize) as u32;
        loop {
            {
                let mut pools = shared.pools.borrow_mut();
                let pool = &mut pools[site as usize];
                if pool.active >= want || now < pool.retry_at_unix_ms {
                    break;
                }
                // One new connection at a time while the site fails.
                if pool.connect_failures > 0 && pool.active > 0 {
                    break;
                }
            }
            // The source first: the permit is taken for that source's
            // destination (per-source connection limits), and the
            // connection keeps using it for every transaction.
            let source = conn::site_source(shared, site);
            let mut shaped = None;
            let permit = match &shared.shaping {
                None => None,
                Some(shaping) => {
                    let q = shared.ctx.queues.borrow();
                    let Some(front) = q.site_front(site) else {
                        break;
                    };
                    let acquire = match &source {
                        Ok(Some(chosen)) => {
                            let d = shaping.destination_for_source(&q, front, &chosen.name);
                            let acquire = shaping.try_connection_at(&d);
                            shaped = Some((front, d));
                            acquire
                        }
                        _ => shaping.try_connection(&q, front),
                    };
                    match acquire {
                        ConnAcquire::Ok(permit) => Some(permit),
                        ConnAcquire::Wait(wait) => {
                            let mut pools = shared.pools.borrow_mut();
                            pools[site as usize].retry_at_unix_ms =
                                now + wait.as_millis().max(1) as u64;
                            break;
                        }
                        ConnAcquire::Denied => break,
                    }
                }
            };
            shared.pools.borrow_mut()[site as usize].active += 1;
            glommio::spawn_local(conn::run(Rc::clone(shared), site, permit, source, shaped))
                .detach();
        }
    }
}

/// Records a connect failure: back off exponentially.
pub(crate) fn connect_failed(shared: &Shared, site: SiteId, now: u64) {
    let mut pools = shared.pools.borrow_mut();
    let pool = &mut pools[site as usize];
    pool.connect_failures = pool.connect_failures.saturating_add(1);
    let shift = pool.connect_failures.min(16) - 1;
    let backoff = CONNECT_BACKOFF_MIN
        .saturating_mul(1u32 << shift)
        .min(CONNECT_BACKOFF_MAX);
    pool.retry_at_unix_ms = now + backoff.as_millis() as u64;
}

/// Sources remembered as waiting, at most (names come from the rules, so
/// this only bounds what reloads could accumulate).
const WAITING_SOURCES_MAX: usize = 4096;

/// A connection bound to `source` was told to wait for a message token
/// until `until` (ms).
pub(crate) fn source_waits(shared: &Shared, source: &str, until: u64, now: u64) {
    let mut waiting = shared.waiting_sources.borrow_mut();
    if waiting.len() >= WAITING_SOURCES_MAX && !waiting.contains_key(source) {
        waiting.retain(|_, t| *t > now);
    }
    if waiting.len() < WAITING_SOURCES_MAX || waiting.contains_key(source) {
        waiting.insert(source.to_string(), until);
    }
}

/// Whether connections bound to `source` can send now (it is not waiting
/// for a message token).
pub(crate) fn source_available(shared: &Shared, source: &str, now: u64) -> bool {
    shared
        .waiting_sources
        .borrow()
        .get(source)
        .is_none_or(|&until| until <= now)
}

/// Records a successful connect.
pub(crate) fn connect_succeeded(shared: &Shared, site: SiteId) {
    let mut pools = shared.pools.borrow_mut();
    let pool = &mut pools[site as usize];
    pool.connect_failures = 0;
    pool.retry_at_unix_ms = 0;
}

/// A connection task ended: free its pool slot and let the driver replace it.
pub(crate) fn connection_ended(shared: &Shared, site: SiteId) {
    {
        let mut pools = shared.pools.borrow_mut();
        let pool = &mut pools[site as usize];
        assert!(pool.active > 0, "pool accounting: a connection ended twice");
        pool.active -= 1;
    }
    shared.ctx.queues.borrow_mut().wake_driver();
}

/// Sleeps until the timer fires or the queues wake the driver.
struct DriverWait<'a> {
    shared: &'a Shared,
    timer: Timer,
}

impl Future for DriverWait<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.shared.ctx.stopping() {
            return Poll::Ready(());
        }
        {
            let mut q = self.shared.ctx.queues.borrow_mut();
            if q.take_driver_wake() {
                return Poll::Ready(());
            }
            q.set_driver_waker(cx.waker().clone());
        }
        Pin::new(&mut self.timer).poll(cx).map(|_| ())
    }
}
