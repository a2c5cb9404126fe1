//! Per-shard admin mailboxes: the admin thread's only way into a shard.
//!
//! Each shard owns the receiving end of a bounded channel
//! ([`MAILBOX_CAPACITY`] requests) and a task ([`serve`]) that drains it
//! every [`MAILBOX_POLL`] (std channels have no waker; 20 ms of polling
//! costs nothing measurable and keeps the shard free of locks). A request
//! carries its own reply channel; the admin thread waits at most
//! [`REPLY_TIMEOUT`] per shard. The task also keeps the operator's
//! standing orders: suspended destinations and tenants stay parked, and
//! queues being bounced "for a duration" have new arrivals bounced as
//! they come (they are held meanwhile, so none slips out between two
//! turns). The orders in force at start come from the state file
//! (`admin::state`) and are applied by [`Orders::from_state`] before
//! delivery starts.

// std
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::Duration;

// external
use serde::{Deserialize, Serialize};

// crate
use crate::accounting::read_facts;
use crate::deliver::{now_unix_ms, outcome, Shared};
use crate::inject::Injector;
use crate::metrics::ShardSnapshot;
use crate::queue::{Place, Queues};
use crate::runtime::{ShardSpool, Shutdown};

/// Requests a shard's mailbox holds.
pub const MAILBOX_CAPACITY: usize = 64;
/// How often a shard looks at its mailbox.
pub const MAILBOX_POLL: Duration = Duration::from_millis(20);
/// Longest the admin thread waits for one shard's reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(3);
/// A suspension without an end re-parks new arrivals this far ahead.
const PARK_AHEAD: Duration = Duration::from_secs(60);
/// Recipients an admin bounce completes per mailbox turn before yielding.
const BOUNCE_BUDGET: usize = 4096;

/// What the admin thread asks a shard.
#[derive(Debug, Clone)]
pub enum Command {
    /// Counters for `/metrics` and `sluice queues`.
    Snapshot,
    /// Destinations with queued recipients.
    Top,
    /// Hold a destination.
    Suspend {
        /// The recipient domain.
        domain: String,
        /// Who asked.
        who: String,
        /// Why.
        why: String,
        /// Until when (ms since the Unix epoch); `None`: until resumed.
        until_ms: Option<u64>,
    },
    /// Release a destination.
    Resume {
        /// The recipient domain.
        domain: String,
    },
    /// Hold every recipient of a tenant, on every destination.
    SuspendTenant {
        /// The tenant.
        tenant: String,
        /// Who asked.
        who: String,
        /// Why.
        why: String,
        /// Until when (ms since the Unix epoch); `None`: until resumed.
        until_ms: Option<u64>,
    },
    /// Release a tenant.
    ResumeTenant {
        /// The tenant.
        tenant: String,
    },
    /// Bounce every queued recipient of a destination, and new arrivals
    /// until `until_ms`.
    Bounce {
        /// The recipient domain.
        domain: String,
        /// Who asked.
        who: String,
        /// Why.
        why: String,
        /// Keep bouncing new arrivals until then.
        until_ms: Option<u64>,
    },
    /// Send a destination to other next hops (none: back to its own
    /// route or MX).
    Reroute {
        /// The recipient domain.
        domain: String,
        /// The new next hops, in order; empty ends the reroute.
        hosts: Vec<std::net::SocketAddr>,
    },
    /// A message's envelope and where each recipient is.
    Inspect {
        /// Spool id on this shard.
        id: u64,
    },
    /// Replace the bounce rules and, when given, the shaping rules.
    Reload {
        /// The compiled bounce rules.
        rules: Box<sluice_outcomes::Classifier>,
        /// The validated shaping rules, with the reload's generation (the
        /// same on every shard, see `Shaper::replace_rules`).
        shaping: Option<(Box<sluice_shaping::config::Rules>, u64)>,
    },
}

/// A shard's answer.
#[derive(Debug, Clone)]
pub enum Answer {
    /// For [`Command::Snapshot`].
    Snapshot(Box<ShardSnapshot>),
    /// Anything else: a JSON value for the API.
    Json(serde_json::Value),
    /// The command could not be carried out.
    Error(String),
}

/// One request with its reply channel.
pub struct Request {
    /// What to do.
    pub command: Command,
    /// Where the answer goes.
    pub reply: SyncSender<Answer>,
}

/// A standing suspension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suspension {
    /// Who suspended it.
    pub who: String,
    /// Why.
    pub why: String,
    /// Since (ms since the Unix epoch).
    pub since_ms: u64,
    /// Until (ms since the Unix epoch), if set.
    pub until_ms: Option<u64>,
}

/// The shard-side handles the mailbox task works with.
pub struct ShardHandles {
    /// Delivery's shared state.
    pub delivery: Rc<Shared>,
    /// Injection.
    pub inject: Rc<Injector>,
    /// The spool.
    pub spool: ShardSpool,
    /// The queues.
    pub queues: Rc<RefCell<Queues>>,
    /// Set when the shard stops.
    pub shutdown: Shutdown,
}

/// The operator's orders in force on a shard, with who and why (the
/// queues hold what they mean: `queue::admin`).
#[derive(Default)]
pub struct Orders {
    suspended: HashMap<String, Suspension>,
    suspended_tenants: HashMap<String, Suspension>,
    bouncing: HashMap<String, Suspension>,
    rerouted: HashMap<String, String>,
}

impl Orders {
    /// Applies the orders of the state file to the queues (called after
    /// the spool is restored, before delivery starts) and keeps them.
    pub fn from_state(state: &super::state::AdminState, q: &mut Queues, now: u64) -> Orders {
        let park = |until: Option<u64>| until.unwrap_or(now + PARK_AHEAD.as_millis() as u64);
        let mut orders = Orders::default();
        for (domain, s) in &state.suspended {
            q.hold_domain(domain, park(s.until_ms));
            orders.suspended.insert(domain.clone(), s.clone());
        }
        for (domain, s) in &state.bouncing {
            q.hold_domain(domain, park(s.until_ms));
            orders.bouncing.insert(domain.clone(), s.clone());
        }
        for (tenant, s) in &state.suspended_tenants {
            q.hold_tenant(tenant, park(s.until_ms));
            orders.suspended_tenants.insert(tenant.clone(), s.clone());
        }
        for (domain, hosts) in &state.rerouted {
            let site = q.reroute_domain(domain, hosts.clone());
            orders.rerouted.insert(domain.clone(), q.sites().name(site));
        }
        orders
    }
}

/// The shard's mailbox task: answers requests and keeps standing orders
/// (starting with `orders`) until the shard stops.
pub async fn serve(h: ShardHandles, rx: Receiver<Request>, orders: Orders) {
    let orders = RefCell::new(orders);
    while !h.shutdown.is_set() {
        while let Ok(req) = rx.try_recv() {
            let answer = handle(&h, &orders, req.command).await;
            // The admin thread may have given up waiting; nothing to do.
            let _ = req.reply.try_send(answer);
        }
        keep_orders(&h, &orders).await;
        glommio::timer::sleep(MAILBOX_POLL).await;
    }
}

async fn keep_orders(h: &ShardHandles, orders: &RefCell<Orders>) {
    let now = now_unix_ms();
    let bouncing = {
        let mut guard = orders.borrow_mut();
        let o = &mut *guard;
        // Expired orders end.
        let expire = |map: &mut HashMap<String, Suspension>| {
            let mut ended = Vec::new();
            map.retain(|d, s| {
                let keep = s.until_ms.is_none_or(|u| u > now);
                if !keep {
                    ended.push(d.clone());
                }
                keep
            });
            ended
        };
        let mut released = expire(&mut o.suspended);
        released.extend(expire(&mut o.bouncing));
        let released_tenants = expire(&mut o.suspended_tenants);
        let mut q = h.queues.borrow_mut();
        for d in released {
            // Held while suspended or bouncing.
            if !o.suspended.contains_key(&d) && !o.bouncing.contains_key(&d) {
                q.release_domain(&d, now);
            }
        }
        for t in released_tenants {
            q.release_tenant(&t, now);
        }
        o.bouncing
            .iter()
            .map(|(d, s)| (d.clone(), format!("bounced by {}: {}", s.who, s.why)))
            .collect::<Vec<_>>()
    };
    // Destinations made after an order are held as they are made
    // (`queue::admin::Standing`); their arrivals are parked here or by `take`.
    h.queues
        .borrow_mut()
        .park_held(now + PARK_AHEAD.as_millis() as u64);
    for (domain, reason) in bouncing {
        bounce_queued(h, &domain, &reason, now).await;
    }
}

/// Bounces every queued recipient of `domain` (every pool and tenant);
/// returns how many.
async fn bounce_queued(h: &ShardHandles, domain: &str, reason: &str, now: u64) -> usize {
    let dests = h.queues.borrow().domain_dests(domain);
    let mut n = 0;
    for dest in dests {
        let entries = h.queues.borrow_mut().remove_all(dest);
        for e in entries {
            outcome::admin_bounce(&h.delivery, dest, e, reason, now);
            n += 1;
            if n % BOUNCE_BUDGET == 0 {
                glommio::yield_if_needed().await;
            }
        }
    }
    n
}

async fn handle(h: &ShardHandles, orders: &RefCell<Orders>, cmd: Command) -> Answer {
    let now = now_unix_ms();
    match cmd {
        Command::Snapshot => Answer::Snapshot(Box::new(snapshot(h))),
        Command::Top => Answer::Json(top(h, &orders.borrow(), now)),
        Command::Suspend {
            domain,
            who,
            why,
            until_ms,
        } => {
            let domain = domain.to_ascii_lowercase();
            let parked = h.queues.borrow_mut().hold_domain(
                &domain,
                until_ms.unwrap_or(now + PARK_AHEAD.as_millis() as u64),
            );
            orders.borrow_mut().suspended.insert(
                domain.clone(),
                Suspension {
                    who,
                    why,
                    since_ms: now,
                    until_ms,
                },
            );
            Answer::Json(serde_json::json!({"domain": domain, "suspended": true, "parked": parked}))
        }
        Command::Resume { domain } => {
            let domain = domain.to_ascii_lowercase();
            let (was, bouncing) = {
                let mut o = orders.borrow_mut();
                (
                    o.suspended.remove(&domain).is_some(),
                    o.bouncing.contains_key(&domain),
                )
            };
            let released = if bouncing {
                0 // still held for its bounce order
            } else {
                h.queues.borrow_mut().release_domain(&domain, now)
            };
            Answer::Json(
                serde_json::json!({"domain": domain, "was_suspended": was, "released": released}),
            )
        }
        Command::Bounce {
            domain,
            who,
            why,
            until_ms,
        } => {
            let domain = domain.to_ascii_lowercase();
            let reason = format!("bounced by {who}: {why}");
            if let Some(until) = until_ms {
                // Held until the order ends: nothing slips out between turns.
                h.queues.borrow_mut().hold_domain(&domain, until);
            }
            let n = bounce_queued(h, &domain, &reason, now).await;
            if until_ms.is_some() {
                orders.borrow_mut().bouncing.insert(
                    domain.clone(),
                    Suspension {
                        who,
                        why,
                        since_ms: now,
                        until_ms,
                    },
                );
            }
            Answer::Json(serde_json::json!({"domain": domain, "bounced": n, "until_ms": until_ms}))
        }
        Command::Reroute { domain, hosts } if hosts.is_empty() => {
            let domain = domain.to_ascii_lowercase();
            h.queues.borrow_mut().unroute_domain(&domain);
            let was = orders.borrow_mut().rerouted.remove(&domain).is_some();
            Answer::Json(serde_json::json!({"domain": domain, "was_rerouted": was}))
        }
        Command::Reroute { domain, hosts } => {
            let domain = domain.to_ascii_lowercase();
            let mut q = h.queues.borrow_mut();
            let site = q.reroute_domain(&domain, hosts);
            let name = q.sites().name(site);
            drop(q);
            orders
                .borrow_mut()
                .rerouted
                .insert(domain.clone(), name.clone());
            Answer::Json(serde_json::json!({"domain": domain, "site": name}))
        }
        Command::SuspendTenant {
            tenant,
            who,
            why,
            until_ms,
        } => {
            let parked = h.queues.borrow_mut().hold_tenant(
                &tenant,
                until_ms.unwrap_or(now + PARK_AHEAD.as_millis() as u64),
            );
            orders.borrow_mut().suspended_tenants.insert(
                tenant.clone(),
                Suspension {
                    who,
                    why,
                    since_ms: now,
                    until_ms,
                },
            );
            Answer::Json(serde_json::json!({"tenant": tenant, "suspended": true, "parked": parked}))
        }
        Command::ResumeTenant { tenant } => {
            let was = orders
                .borrow_mut()
                .suspended_tenants
                .remove(&tenant)
                .is_some();
            let released = h.queues.borrow_mut().release_tenant(&tenant, now);
            Answer::Json(
                serde_json::json!({"tenant": tenant, "was_suspended": was, "released": released}),
            )
        }
        Command::Inspect { id } => inspect(h, id, now),
        Command::Reload { rules, shaping } => {
            h.delivery.acct.set_rules(*rules);
            let shaped = match (shaping, &h.delivery.shaping) {
                (Some((rules, generation)), Some(s)) => {
                    let done = s.reload(*rules, generation);
                    serde_json::json!({
                        "limits_changed": done.limits_changed,
                        "limits_unused": done.limits_unused,
                        "modes_ended": done.modes_ended,
                        "modes_kept": done.modes_kept,
                    })
                }
                _ => serde_json::Value::Null,
            };
            Answer::Json(serde_json::json!({"bounce_rules": "reloaded", "shaping": shaped}))
        }
    }
}

/// The shard's counters, copied.
pub fn snapshot(h: &ShardHandles) -> ShardSnapshot {
    let d = &h.delivery;
    let q = h.queues.borrow();
    let mut queued_by_site: BTreeMap<String, u64> = BTreeMap::new();
    for s in q.summaries() {
        *queued_by_site.entry(q.sites().name(s.site)).or_insert(0) +=
            (s.ready + s.scheduled) as u64;
    }
    let mut outbound_open = BTreeMap::new();
    for (site, pool) in d.pools.borrow().iter().enumerate() {
        if pool.active > 0 {
            outbound_open.insert(q.sites().name(site as _), pool.active);
        }
    }
    let segments = h.spool.segment_count() as u64;
    ShardSnapshot {
        shard: d.ctx.index,
        inject: h.inject.stats(),
        inject_open: h.inject.open_connections(),
        delivery: d.stats.get(),
        outbound_open,
        queues: q.counts(),
        queued_by_site,
        spool: h.spool.stats(),
        spool_live: h.spool.live_count() as u64,
        spool_segments: segments,
        spool_bytes: segments * d.ctx.config.segment_bytes,
        log: d.log.stats(),
        acct: d.acct.metrics.borrow().clone(),
        bounce_rules_reloads: d.acct.reloads.get(),
        shaping: d.shaping.as_ref().map_or_else(Default::default, |s| {
            crate::metrics::ShapingCounts {
                reloads: s.reloads(),
                destinations: s.cached() as u64,
                limits: s.limits() as u64,
            }
        }),
    }
}

fn top(h: &ShardHandles, orders: &Orders, now: u64) -> serde_json::Value {
    let q = h.queues.borrow();
    let errors = h.delivery.acct.last_error.borrow();
    let mut rows = Vec::new();
    for s in q.summaries() {
        // The oldest message's arrival, read from its record.
        let oldest_ms = s.oldest_id.and_then(|id| {
            let (_, e, _) = q.recipients_of(id).into_iter().next()?;
            let f = read_facts(&h.spool, id, &h.delivery.locate(&e));
            (f.arrival_ms > 0).then_some(f.arrival_ms)
        });
        let err = errors.get(&s.domain);
        let susp = orders.suspended.get(&s.domain).or_else(|| {
            s.tenant
                .as_ref()
                .and_then(|t| orders.suspended_tenants.get(t))
        });
        let rerouted = orders.rerouted.get(&s.domain);
        rows.push(serde_json::json!({
            "shard": h.delivery.ctx.index,
            "domain": s.domain,
            "tenant": s.tenant,
            "site": q.sites().name(s.site),
            "depth": s.ready + s.scheduled,
            "ready": s.ready,
            "scheduled": s.scheduled,
            "oldest_age_s": oldest_ms.map(|a| now.saturating_sub(a) as f64 / 1000.0),
            "last_error": err.map(|e| &e.1),
            "last_error_age_s": err.map(|e| now.saturating_sub(e.0) as f64 / 1000.0),
            "suspended": susp,
            "rerouted_to": rerouted,
        }));
    }
    // Suspended destinations with nothing queued are still shown.
    for (d, s) in &orders.suspended {
        if !rows.iter().any(|r| r["domain"] == d.as_str()) {
            rows.push(serde_json::json!({
                "shard": h.delivery.ctx.index, "domain": d, "depth": 0, "ready": 0,
                "scheduled": 0, "suspended": s,
            }));
        }
    }
    for (d, s) in &orders.bouncing {
        rows.push(serde_json::json!({
            "shard": h.delivery.ctx.index, "domain": d, "bouncing": s,
        }));
    }
    // One row per suspended tenant: its recipients held on this shard.
    for (t, s) in &orders.suspended_tenants {
        let (mut depth, mut ready, mut scheduled) = (0, 0, 0);
        for x in q
            .summaries()
            .iter()
            .filter(|x| x.tenant.as_ref() == Some(t))
        {
            depth += x.ready + x.scheduled;
            ready += x.ready;
            scheduled += x.scheduled;
        }
        rows.push(serde_json::json!({
            "shard": h.delivery.ctx.index, "tenant": t, "depth": depth, "ready": ready,
            "scheduled": scheduled, "suspended": s,
        }));
    }
    serde_json::Value::Array(rows)
}

fn inspect(h: &ShardHandles, id: u64, now: u64) -> Answer {
    let queued = h.queues.borrow().recipients_of(id);
    let rec = match queued.first() {
        Some((_, e, _)) => Some(h.delivery.locate(e)),
        None => h
            .spool
            .live_messages()
            .into_iter()
            .find(|m| m.id == id)
            .map(|m| m.rec),
    };
    let Some(rec) = rec else {
        return Answer::Error(format!(
            "message {id} is not in shard {}'s spool (delivered, bounced or never here)",
            h.delivery.ctx.index
        ));
    };
    let record = match h.spool.message(&rec) {
        Ok(r) => r,
        Err(e) => return Answer::Error(format!("reading message {id}: {e}")),
    };
    let parts = match record.parts() {
        Ok(p) => p,
        Err(e) => return Answer::Error(format!("parsing message {id}: {e}")),
    };
    let q = h.queues.borrow();
    let recipients: Vec<serde_json::Value> = parts
        .recipients
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let place = queued.iter().find(|(_, e, _)| e.index as usize == i);
            let (state, due, attempts, expiry, domain) = match place {
                Some((dest, e, Place::Ready)) => (
                    "ready",
                    None,
                    Some(e.attempts),
                    Some(e.expiry_unix_ms),
                    Some(q.domain(*dest).to_string()),
                ),
                Some((dest, e, Place::Scheduled(due))) => (
                    "scheduled",
                    Some(*due),
                    Some(e.attempts),
                    Some(e.expiry_unix_ms),
                    Some(q.domain(*dest).to_string()),
                ),
                None => ("in flight or done", None, None, None, None),
            };
            serde_json::json!({
                "index": i,
                "address": String::from_utf8_lossy(r.address),
                "state": state,
                "queue": domain,
                "attempts": attempts,
                "next_attempt_in_s": due.map(|d| d.saturating_sub(now) as f64 / 1000.0),
                "expires_in_s": expiry.map(|x| x.saturating_sub(now) as f64 / 1000.0),
            })
        })
        .collect();
    Answer::Json(serde_json::json!({
        "id": format!("s{}.{id}", h.delivery.ctx.index),
        "shard": h.delivery.ctx.index,
        "sender": String::from_utf8_lossy(parts.sender),
        "tenant": (!parts.tenant.is_empty()).then(|| String::from_utf8_lossy(parts.tenant)),
        "campaign": (!parts.campaign.is_empty()).then(|| String::from_utf8_lossy(parts.campaign)),
        "size": parts.body.len(),
        "arrival_ms": parts.fixed.arrival_unix_ms,
        "age_s": now.saturating_sub(parts.fixed.arrival_unix_ms) as f64 / 1000.0,
        "recipients": recipients,
    }))
}
