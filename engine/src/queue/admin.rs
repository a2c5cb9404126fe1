//! What the admin API asks of the queues: per-destination summaries,
//! holding a destination (suspend), taking every queued recipient of a
//! destination (admin bounce) and finding a message's recipients. Pure
//! data like the rest of the module; every call is O(queued recipients)
//! at worst and runs only on an operator's request, never per message.
//!
//! Orders given by domain or tenant are *standing*: a domain has one
//! destination per pool and tenant, and a tenant one per domain, and
//! destinations made after the order (a new pool, a tenant's first
//! message to a domain) are held or rerouted as they are made
//! ([`Standing`]). Holding a tenant costs nothing per queued recipient:
//! its recipients are in its own destinations already.

// std
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;

// crate
use super::{DestId, Entry, Queues, SiteId, Timed};

/// A held destination's recipients met by `take` wait this long (ms)
/// before they are looked at again.
pub const HOLD_RECHECK_MS: u64 = 60_000;

/// Operator orders that apply to destinations by domain or tenant,
/// including destinations made later.
#[derive(Debug, Default)]
pub struct Standing {
    /// Held (suspended) domains, lower-cased.
    domains: HashSet<Box<str>>,
    /// Held (suspended) tenants.
    tenants: HashSet<Box<str>>,
    /// Rerouted domains, lower-cased, and their next hops.
    reroutes: HashMap<Box<str>, Vec<SocketAddr>>,
    /// The destinations of each domain (one per pool and tenant).
    by_domain: HashMap<Box<str>, Vec<DestId>>,
    /// The destinations of each tenant (one per domain and pool).
    by_tenant: HashMap<Box<str>, Vec<DestId>>,
}

/// Where a queued recipient is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// In its destination's ready queue.
    Ready,
    /// In the scheduled heap, due at this time.
    Scheduled(u64),
}

/// One destination as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestSummary {
    /// Its id on this shard.
    pub dest: DestId,
    /// The recipient domain.
    pub domain: String,
    /// The tenant of its messages, if any.
    pub tenant: Option<String>,
    /// Its site.
    pub site: SiteId,
    /// Recipients ready now.
    pub ready: usize,
    /// Recipients waiting for a retry.
    pub scheduled: usize,
    /// The smallest (oldest) message id queued, if any.
    pub oldest_id: Option<u64>,
    /// Whether it is held (suspended).
    pub held: bool,
}

impl Queues {
    /// Every destination with queued (ready or scheduled) recipients.
    pub fn summaries(&self) -> Vec<DestSummary> {
        let mut out: Vec<DestSummary> = self
            .dests
            .iter()
            .enumerate()
            .map(|(i, d)| DestSummary {
                dest: i as DestId,
                domain: d.domain.to_string(),
                tenant: d.tenant.as_deref().map(str::to_string),
                site: d.site,
                ready: d.ready.len(),
                scheduled: 0,
                oldest_id: d.ready.iter().map(|e| e.id).min(),
                held: self.held.contains(&(i as DestId)),
            })
            .collect();
        for t in self.scheduled.iter() {
            let s = &mut out[t.0.dest as usize];
            s.scheduled += 1;
            s.oldest_id = Some(s.oldest_id.map_or(t.0.entry.id, |o| o.min(t.0.entry.id)));
        }
        // A held domain shows even when empty; a held tenant's empty
        // destinations (one per domain it ever sent to) do not.
        out.retain(|s| s.ready + s.scheduled > 0 || (s.held && s.tenant.is_none()));
        out
    }

    /// The destination of `domain` (any case), if it exists.
    pub fn find(&self, domain: &str) -> Option<DestId> {
        self.dest_by_domain
            .get(domain.to_ascii_lowercase().as_str())
            .copied()
    }

    /// Every destination of `domain` (any case): one per pool and tenant.
    pub fn domain_dests(&self, domain: &str) -> Vec<DestId> {
        self.standing
            .by_domain
            .get(domain.to_ascii_lowercase().as_str())
            .cloned()
            .unwrap_or_default()
    }

    /// Every destination of `tenant`.
    pub fn tenant_dests(&self, tenant: &str) -> Vec<DestId> {
        self.standing
            .by_tenant
            .get(tenant)
            .cloned()
            .unwrap_or_default()
    }

    /// Indexes a destination just made and applies the standing orders
    /// to it.
    pub(super) fn apply_standing(&mut self, dest: DestId) {
        let d = &self.dests[dest as usize];
        let by_domain = &mut self.standing.by_domain;
        match by_domain.get_mut(&d.domain) {
            Some(list) => list.push(dest),
            None => {
                by_domain.insert(d.domain.clone(), vec![dest]);
            }
        }
        if let Some(t) = &d.tenant {
            match self.standing.by_tenant.get_mut(t) {
                Some(list) => list.push(dest),
                None => {
                    self.standing.by_tenant.insert(t.clone(), vec![dest]);
                }
            }
        }
        let held = self.standing.domains.contains(&d.domain)
            || d.tenant
                .as_deref()
                .is_some_and(|t| self.standing.tenants.contains(t));
        let reroute = self.standing.reroutes.get(&d.domain).cloned();
        if held {
            // Nothing is queued in it yet: `take` parks what arrives.
            self.held.insert(dest);
        }
        if let Some(hosts) = reroute {
            self.reroute(dest, hosts);
        }
    }

    /// Holds every destination of `domain`, those made later too, until
    /// [`Queues::release_domain`]; their ready recipients are parked until
    /// `until_unix_ms`. Returns how many were parked.
    pub fn hold_domain(&mut self, domain: &str, until_unix_ms: u64) -> usize {
        self.standing
            .domains
            .insert(domain.to_ascii_lowercase().into());
        let dests = self.domain_dests(domain);
        dests.into_iter().map(|d| self.hold(d, until_unix_ms)).sum()
    }

    /// Ends a domain hold: its destinations (but those of a held tenant)
    /// are released, their recipients due at `now_unix_ms`.
    pub fn release_domain(&mut self, domain: &str, now_unix_ms: u64) -> usize {
        self.standing
            .domains
            .remove(domain.to_ascii_lowercase().as_str());
        let dests: HashSet<DestId> = self
            .domain_dests(domain)
            .into_iter()
            .filter(|&d| {
                let t = self.dests[d as usize].tenant.as_deref();
                !t.is_some_and(|t| self.standing.tenants.contains(t))
            })
            .collect();
        self.release_all(&dests, now_unix_ms)
    }

    /// Holds every destination of `tenant` (on every domain, those made
    /// later too) until [`Queues::release_tenant`]; returns how many
    /// ready recipients were parked (until `until_unix_ms`).
    pub fn hold_tenant(&mut self, tenant: &str, until_unix_ms: u64) -> usize {
        self.standing.tenants.insert(tenant.into());
        let dests = self.tenant_dests(tenant);
        dests.into_iter().map(|d| self.hold(d, until_unix_ms)).sum()
    }

    /// Ends a tenant hold: its destinations (but those of a held domain)
    /// are released, their recipients due at `now_unix_ms`.
    pub fn release_tenant(&mut self, tenant: &str, now_unix_ms: u64) -> usize {
        self.standing.tenants.remove(tenant);
        let dests: HashSet<DestId> = self
            .tenant_dests(tenant)
            .into_iter()
            .filter(|&d| {
                !self
                    .standing
                    .domains
                    .contains(&self.dests[d as usize].domain)
            })
            .collect();
        self.release_all(&dests, now_unix_ms)
    }

    /// Whether `tenant` is held.
    pub fn is_tenant_held(&self, tenant: &str) -> bool {
        self.standing.tenants.contains(tenant)
    }

    /// Whether `domain` is held (as a whole).
    pub fn is_domain_held(&self, domain: &str) -> bool {
        self.standing
            .domains
            .contains(domain.to_ascii_lowercase().as_str())
    }

    /// Sends every destination of `domain` (those made later too) to the
    /// site whose next hops are `hosts`; returns the site.
    pub fn reroute_domain(&mut self, domain: &str, hosts: Vec<SocketAddr>) -> SiteId {
        let domain = domain.to_ascii_lowercase();
        self.standing
            .reroutes
            .insert(domain.as_str().into(), hosts.clone());
        // Made (and rerouted by the standing order) if new.
        let plain = self.destination(&domain);
        for d in self.domain_dests(&domain) {
            self.reroute(d, hosts.clone());
        }
        self.site_of(plain)
    }

    /// Ends a domain's reroute: its destinations go back to the site of
    /// their own route (or [`super::UNROUTED`], to be resolved by MX).
    pub fn unroute_domain(&mut self, domain: &str) {
        let domain = domain.to_ascii_lowercase();
        if self.standing.reroutes.remove(domain.as_str()).is_none() {
            return;
        }
        for dest in self.domain_dests(&domain) {
            let pool = self.dests[dest as usize].pool.clone();
            let site = self.sites.site_for_pool(&domain, pool.as_deref());
            self.grow_sites();
            self.move_to(dest, site);
            self.dests[dest as usize].mx_until_unix_ms = 0;
        }
    }

    /// Holds `dest`: connections stop taking its recipients, and its ready
    /// ones move to the scheduled heap until `until_unix_ms` (recipients
    /// arriving later are parked by [`Queues::park_held`]). Expiry still
    /// applies while held.
    pub fn hold(&mut self, dest: DestId, until_unix_ms: u64) -> usize {
        self.held.insert(dest);
        self.park(dest, until_unix_ms)
    }

    /// Moves the ready recipients of every held destination to the
    /// scheduled heap (called by the admin task; catches new arrivals).
    pub fn park_held(&mut self, until_unix_ms: u64) -> usize {
        let held: Vec<DestId> = self.held.iter().copied().collect();
        held.into_iter().map(|d| self.park(d, until_unix_ms)).sum()
    }

    pub(super) fn park(&mut self, dest: DestId, until_unix_ms: u64) -> usize {
        let d = &mut self.dests[dest as usize];
        let entries: Vec<Entry> = d.ready.drain(..).collect();
        let site = d.site as usize;
        if d.in_ring {
            d.in_ring = false;
            self.site_queues[site].ring.retain(|&x| x != dest);
        }
        let n = entries.len();
        self.site_queues[site].ready -= n;
        self.ready -= n;
        for e in entries {
            self.schedule(dest, e, until_unix_ms);
        }
        n
    }

    /// Releases a held destination: its scheduled recipients become due
    /// at `now_unix_ms` (the heap is rebuilt: admin only).
    pub fn release(&mut self, dest: DestId, now_unix_ms: u64) -> usize {
        self.release_all(&HashSet::from([dest]), now_unix_ms)
    }

    /// Releases held destinations, rebuilding the heap once.
    fn release_all(&mut self, dests: &HashSet<DestId>, now_unix_ms: u64) -> usize {
        for &dest in dests {
            self.held.remove(&dest);
            let d = &mut self.dests[dest as usize];
            if !d.ready.is_empty() && !d.in_ring {
                d.in_ring = true;
                let sq = &mut self.site_queues[d.site as usize];
                sq.ring.push_back(dest);
                for w in sq.waiters.drain(..) {
                    w.wake();
                }
            }
        }
        let mut moved = 0;
        if dests.is_empty() {
            return moved;
        }
        let items: Vec<Timed> = std::mem::take(&mut self.scheduled)
            .into_iter()
            .map(|r| r.0)
            .collect();
        let mut heap = BinaryHeap::with_capacity(items.len());
        for mut t in items {
            if dests.contains(&t.dest) && t.due_unix_ms > now_unix_ms {
                t.due_unix_ms = now_unix_ms;
                moved += 1;
            }
            heap.push(std::cmp::Reverse(t));
        }
        self.scheduled = heap;
        self.wake_driver();
        moved
    }

    /// Moves `dest` (ready recipients, in-flight count, future work) to
    /// the site whose next hops are `hosts`, created if needed: an
    /// operator's reroute. It stays there (no MX refresh) until rerouted
    /// again or the engine restarts.
    pub fn reroute(&mut self, dest: DestId, hosts: Vec<SocketAddr>) -> SiteId {
        let list: Vec<String> = hosts.iter().map(ToString::to_string).collect();
        let key = format!("reroute:{}", list.join(","));
        let pool = self.dests[dest as usize].pool.clone();
        let site = self
            .sites
            .site_for_mx(&key, hosts, Vec::new(), pool.as_deref());
        self.grow_sites();
        self.move_to(dest, site);
        self.dests[dest as usize].mx_until_unix_ms = 0;
        site
    }

    /// Whether `dest` is held.
    pub fn is_held(&self, dest: DestId) -> bool {
        self.held.contains(&dest)
    }

    /// Removes every ready and scheduled recipient of `dest` and returns
    /// them (in-flight ones finish on their connections). The caller
    /// completes each one (admin bounce).
    pub fn remove_all(&mut self, dest: DestId) -> Vec<Entry> {
        let d = &mut self.dests[dest as usize];
        let mut out: Vec<Entry> = d.ready.drain(..).collect();
        let site = d.site as usize;
        if d.in_ring {
            d.in_ring = false;
            self.site_queues[site].ring.retain(|&x| x != dest);
        }
        self.site_queues[site].ready -= out.len();
        self.ready -= out.len();
        let items: Vec<Timed> = std::mem::take(&mut self.scheduled)
            .into_iter()
            .map(|r| r.0)
            .collect();
        let mut heap = BinaryHeap::with_capacity(items.len());
        for t in items {
            if t.dest == dest {
                out.push(t.entry);
            } else {
                heap.push(std::cmp::Reverse(t));
            }
        }
        self.scheduled = heap;
        out
    }

    /// Every queued (ready or scheduled) recipient of message `id`.
    pub fn recipients_of(&self, id: u64) -> Vec<(DestId, Entry, Place)> {
        let mut out = Vec::new();
        for (i, d) in self.dests.iter().enumerate() {
            for e in d.ready.iter().filter(|e| e.id == id) {
                out.push((i as DestId, *e, Place::Ready));
            }
        }
        for t in self.scheduled.iter().filter(|t| t.0.entry.id == id) {
            out.push((t.0.dest, t.0.entry, Place::Scheduled(t.0.due_unix_ms)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{QueueConfig, Sites};
    use sluice_spool::RecordRef;

    fn queues() -> Queues {
        Queues::new(Sites::from_routes(&[]), QueueConfig::default())
    }

    fn accept(q: &mut Queues, id: u64, domain: &str) {
        use sluice_smtp::{MailParams, Mailbox, RcptParams};
        let mut env = crate::inject::envelope::Envelope::new();
        env.begin(None, &MailParams::default());
        let to = format!("u@{domain}");
        env.add_recipient(&Mailbox::parse(&to).unwrap(), &RcptParams::default());
        let rec = RecordRef {
            segment: 1,
            offset: id as u32 * 64,
            len: 64,
        };
        q.enqueue(env.accepted(id, rec, 1, 1_000_000));
    }

    #[test]
    fn held_destinations_are_not_taken_and_release_brings_them_back() {
        let mut q = queues();
        accept(&mut q, 1, "a.test");
        accept(&mut q, 2, "b.test");
        let a = q.find("A.test").unwrap();
        assert_eq!(q.hold(a, 500_000), 1);
        accept(&mut q, 3, "a.test");
        let mut out = Vec::new();
        let site = q.site_of(a);
        let got = q.take(site, 10, 100, &mut out).unwrap();
        assert_ne!(got, a);
        assert!(
            q.take(site, 10, 100, &mut out).is_none(),
            "held: nothing else"
        );
        // `take` parked the new arrival when it met the held destination.
        assert_eq!(q.park_held(500_000), 0);
        assert_eq!(q.site_ready(site), 0, "held recipients are not ready");
        let s = q.summaries();
        let sa = s.iter().find(|x| x.domain == "a.test").unwrap();
        assert!(sa.held && sa.scheduled == 2 && sa.oldest_id == Some(1));
        q.finish(got);
        assert_eq!(q.release(a, 20), 2);
        assert_eq!(q.promote_due(20, 100), 2);
        assert_eq!(q.take(site, 20, 100, &mut out), Some(a));
        q.check_invariants();
    }

    #[test]
    fn reroute_moves_ready_work_to_the_new_site() {
        let mut q = queues();
        accept(&mut q, 1, "a.test");
        accept(&mut q, 2, "a.test");
        let a = q.find("a.test").unwrap();
        let old = q.site_of(a);
        let hop: SocketAddr = "127.0.0.1:2600".parse().unwrap();
        let site = q.reroute(a, vec![hop]);
        assert_ne!(site, old);
        assert_eq!(q.hosts(site), &[hop]);
        assert_eq!((q.site_ready(old), q.site_ready(site)), (0, 2));
        let mut out = Vec::new();
        assert_eq!(q.take(site, 10, 100, &mut out), Some(a));
        q.check_invariants();
        // Rerouting to the same hops again lands on the same site.
        assert_eq!(q.reroute(a, vec![hop]), site);
    }

    fn accept_as(q: &mut Queues, id: u64, domain: &str, tenant: Option<&str>) {
        use sluice_smtp::{MailParams, Mailbox, RcptParams};
        let mut env = crate::inject::envelope::Envelope::new();
        env.begin(None, &MailParams::default());
        let to = format!("u@{domain}");
        env.add_recipient(&Mailbox::parse(&to).unwrap(), &RcptParams::default());
        if let Some(t) = tenant {
            env.set_tenant(t.as_bytes());
        }
        let rec = RecordRef {
            segment: 1,
            offset: id as u32 * 64,
            len: 64,
        };
        q.enqueue(env.accepted(id, rec, 1, 1_000_000));
    }

    /// Takes everything ready on every site; returns the message ids.
    fn drain(q: &mut Queues, now: u64) -> Vec<u64> {
        let mut ids = Vec::new();
        let mut out = Vec::new();
        for site in 0..q.sites().len() as SiteId {
            while let Some(d) = q.take(site, now, 100, &mut out) {
                for e in &out {
                    ids.push(e.id);
                    q.finish(d);
                }
            }
        }
        ids.sort_unstable();
        ids
    }

    #[test]
    fn a_held_tenant_waits_on_every_domain_and_others_flow() {
        let mut q = queues();
        accept_as(&mut q, 1, "a.test", Some("acme"));
        accept_as(&mut q, 2, "a.test", None);
        accept_as(&mut q, 3, "a.test", Some("beta"));
        assert_eq!(q.hold_tenant("acme", 500_000), 1);
        // Its first message to another domain is held too.
        accept_as(&mut q, 4, "b.test", Some("acme"));
        accept_as(&mut q, 5, "a.test", Some("acme"));
        assert_eq!(drain(&mut q, 10), vec![2, 3]);
        q.check_invariants();
        // A tenant's destinations share the site of the domain's.
        let a = q.find("a.test").unwrap();
        for d in q.domain_dests("a.test") {
            assert_eq!(q.site_of(d), q.site_of(a));
        }
        let held: Vec<_> = q.summaries().into_iter().filter(|s| s.held).collect();
        assert_eq!(held.len(), 2, "{held:?}");
        assert!(held.iter().all(|s| s.tenant.as_deref() == Some("acme")));
        assert_eq!(held.iter().map(|s| s.scheduled).sum::<usize>(), 3);
        // A domain hold and a tenant hold: releasing one keeps the other.
        q.hold_domain("B.test", 500_000);
        assert_eq!(q.release_tenant("acme", 20), 2);
        assert_eq!(q.promote_due(20, 100), 2);
        assert_eq!(drain(&mut q, 20), vec![1, 5]);
        assert_eq!(q.release_domain("b.test", 30), 1);
        q.promote_due(30, 100);
        assert_eq!(drain(&mut q, 30), vec![4]);
        assert!(q.is_empty());
        q.check_invariants();
    }

    #[test]
    fn a_domain_order_covers_its_pools_and_tenants_made_later() {
        let mut q = queues();
        let hop: SocketAddr = "127.0.0.1:2600".parse().unwrap();
        let site = q.reroute_domain("R.test", vec![hop]);
        q.hold_domain("r.test", 500_000);
        accept_as(&mut q, 1, "r.test", Some("acme"));
        let pooled = q.destination_in("r.test", Some("blue"));
        assert_eq!(drain(&mut q, 10), Vec::<u64>::new());
        for d in q.domain_dests("r.test") {
            assert!(q.is_held(d));
            assert_eq!(q.hosts(q.site_of(d)), &[hop]);
        }
        assert_ne!(q.site_of(pooled), site, "the pool's variant of the site");
        q.unroute_domain("r.test");
        let plain = q.find("r.test").unwrap();
        assert_eq!(q.site_of(plain), crate::queue::UNROUTED, "back to MX");
        assert!(q
            .domain_dests("r.test")
            .iter()
            .all(|&d| q.hosts(q.site_of(d)).is_empty()));
        assert_eq!(q.release_domain("r.test", 20), 1);
        q.promote_due(20, 100);
        assert_eq!(drain(&mut q, 20), vec![1]);
        q.check_invariants();
    }

    #[test]
    fn remove_all_takes_ready_and_scheduled() {
        let mut q = queues();
        accept(&mut q, 1, "a.test");
        accept(&mut q, 2, "a.test");
        let a = q.find("a.test").unwrap();
        q.hold(a, 500_000);
        accept(&mut q, 3, "a.test");
        assert_eq!(q.recipients_of(3).len(), 1);
        let gone = q.remove_all(a);
        assert_eq!(gone.len(), 3);
        assert!(q.is_empty());
        q.check_invariants();
    }
}
