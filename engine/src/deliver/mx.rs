//! MX delivery: domains no `[[route]]` matches wait in site
//! [`UNROUTED`] until the shard's stub resolver (`sluice-dns`, on this
//! executor, cached per shard with TTLs and negative caching) has
//! resolved them per RFC 5321 §5.1 and RFC 7505:
//!
//! - resolved: the destination joins the site of its MX host set
//!   ([`Queues::assign_mx`]); domains with the same host set share that
//!   site's connections and limits. Addresses keep the resolver's order
//!   (preference, equal preferences shuffled, the domain's own A/AAAA only
//!   without any MX); connections try them in turn when one refuses or
//!   times out. The assignment lasts as long as the answers it came from:
//!   the smallest TTL of the MX, CNAME and address answers (negative ones
//!   by their SOA minimum), kept within `[dns] mx_refresh_min` (30 s) and
//!   `mx_refresh_max` (1 h); then the next recipient to become ready sends
//!   the destination back to be resolved again.
//! - permanent failure (NXDOMAIN `550 5.1.2`, null MX `556 5.1.10`, no
//!   usable address `550 5.4.4`, hosts only at loopback, private or
//!   unspecified addresses the `[dns]` policy refuses): every ready
//!   recipient of the destination bounces at once.
//! - temporary failure (SERVFAIL, timeouts, no name servers: `451 4.4.3`):
//!   every ready recipient is deferred by the retry schedule.
//!
//! At most [`RESOLVING_MAX`] resolutions run at once per shard; each is a
//! task on the shard's executor, so a slow name server never blocks it.

// std
use std::cell::RefCell;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::rc::Rc;

// external
use rand::rngs::SmallRng;
use rand::SeedableRng;
use sluice_dns::{DnsFailure, MxConfig, MxOutcome, Resolver, ResolverConfig};

// crate
use super::outcome::{self, Said, Subject};
use super::{now_unix_ms, Shared};
use crate::queue::{DestId, Entry, UNROUTED};

/// Resolutions in flight per shard at most.
pub const RESOLVING_MAX: usize = 64;

/// The shard's MX state.
pub struct Mx {
    /// The shard's stub resolver.
    pub resolver: Resolver,
    /// MX rules (address policy, families, site rules).
    pub rules: MxConfig,
    /// Port of the mail exchangers.
    pub port: u16,
    /// Destinations being resolved.
    resolving: RefCell<HashSet<DestId>>,
}

impl Mx {
    /// The shard's resolver for `config`, mail exchangers on `port`.
    pub fn new(config: ResolverConfig, port: u16) -> Mx {
        Mx {
            rules: config.mx.clone(),
            resolver: Resolver::new(config),
            port,
            resolving: RefCell::new(HashSet::new()),
        }
    }
}

/// Starts resolutions for unrouted destinations with ready work (up to
/// [`RESOLVING_MAX`] in flight).
pub(crate) fn resolve_unrouted(shared: &Rc<Shared>) {
    let pending: Vec<DestId> = {
        let resolving = shared.mx.resolving.borrow();
        let room = RESOLVING_MAX.saturating_sub(resolving.len());
        if room == 0 {
            return;
        }
        shared
            .ctx
            .queues
            .borrow()
            .site_dests(UNROUTED)
            .filter(|d| !resolving.contains(d))
            .take(room)
            .collect()
    };
    for dest in pending {
        shared.mx.resolving.borrow_mut().insert(dest);
        glommio::spawn_local(resolve(Rc::clone(shared), dest)).detach();
    }
}

async fn resolve(shared: Rc<Shared>, dest: DestId) {
    let domain = shared.ctx.queues.borrow().domain(dest).to_string();
    let mut rng = SmallRng::seed_from_u64(shared.random());
    let (outcome, ttl) = shared
        .mx
        .resolver
        .resolve_mx_ttl(&domain, &shared.mx.rules, &mut rng)
        .await;
    let now = now_unix_ms();
    match outcome {
        MxOutcome::Resolved { hosts, site, .. } => {
            let port = shared.mx.port;
            let addrs: Vec<SocketAddr> = hosts
                .iter()
                .flat_map(|h| h.addrs.iter().map(move |ip| SocketAddr::new(*ip, port)))
                .collect();
            // Addresses of the hosts that share the best preference: each
            // connection starts at one of them (RFC 5321 §5.1 spreading).
            let best = hosts.first().map_or(0, |h| h.preference);
            let spread = hosts
                .iter()
                .take_while(|h| h.preference == best)
                .map(|h| h.addrs.len())
                .sum();
            let names = hosts.into_iter().map(|h| h.name).collect();
            // Kept as long as its answers hold (within the [dns] bounds).
            let keep = shared.mx.rules.refresh_after(ttl);
            let until = now.saturating_add(keep.as_millis().min(u128::from(u64::MAX)) as u64);
            let assigned = shared.ctx.queues.borrow_mut().assign_mx(
                dest,
                site.as_str(),
                addrs,
                names,
                spread,
                until,
            );
            match assigned {
                Some(site) => log::debug!(
                    "shard {}: {domain} resolved to site {}",
                    shared.ctx.index,
                    shared.ctx.queues.borrow().sites().name(site)
                ),
                None => {
                    let said = Said {
                        code: 451,
                        enhanced: Some("4.3.2"),
                        text: "too many distinct MX sites on this shard; retrying later",
                        peer: None,
                        tls: None,
                        local: None,
                    };
                    settle_all(&shared, dest, &said, false, now).await;
                }
            }
        }
        MxOutcome::PermFail(f) => settle_failure(&shared, dest, &f, true, now).await,
        MxOutcome::TempFail(f) => settle_failure(&shared, dest, &f, false, now).await,
    }
    shared.mx.resolving.borrow_mut().remove(&dest);
    shared.ctx.queues.borrow_mut().wake_driver();
}

/// Bounces (`permanent`) or defers every ready recipient of `dest` with
/// the resolution's reply.
async fn settle_failure(
    shared: &Shared,
    dest: DestId,
    failure: &DnsFailure,
    permanent: bool,
    now: u64,
) {
    let enhanced = failure.reply.enhanced.map(|e| e.to_string());
    let said = Said {
        code: failure.reply.code.value(),
        enhanced: enhanced.as_deref(),
        text: &failure.reply.text,
        peer: None,
        tls: None,
        local: None,
    };
    settle_all(shared, dest, &said, permanent, now).await;
}

/// Bounces (`permanent`) or defers every ready recipient of `dest`.
async fn settle_all(shared: &Shared, dest: DestId, said: &Said<'_>, permanent: bool, now: u64) {
    let mut batch = Vec::new();
    shared
        .ctx
        .queues
        .borrow_mut()
        .take_all(dest, now, &mut batch);
    for entry in batch {
        if permanent {
            let (recipient, arrival_ms) = recipient_of(shared, &entry);
            let s = Subject {
                dest,
                entry,
                recipient: &recipient,
                arrival_ms,
            };
            outcome::bounced(shared, &s, said, now);
        } else {
            outcome::defer(shared, dest, entry, said, now);
        }
        glommio::yield_if_needed().await;
    }
}

/// The address and arrival of a queued recipient, read from the spool.
fn recipient_of(shared: &Shared, entry: &Entry) -> (String, u64) {
    let Ok(record) = shared.ctx.spool.message(&shared.locate(entry)) else {
        return (String::new(), 0);
    };
    let Ok(parts) = record.parts() else {
        return (String::new(), 0);
    };
    let address = parts
        .recipients
        .get(entry.index as usize)
        .map(|r| String::from_utf8_lossy(r.address).into_owned())
        .unwrap_or_default();
    (address, parts.fixed.arrival_unix_ms)
}
