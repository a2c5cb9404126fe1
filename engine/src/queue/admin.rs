//! What the admin API asks of the queues: per-destination summaries,
//! holding a destination (suspend), taking every queued recipient of a
//! destination (admin bounce) and finding a message's recipients. Pure
//! data like the rest of the module; every call is O(queued recipients)
//! at worst and runs only on an operator's request, never per message.

// std
use std::collections::BinaryHeap;
use std::net::SocketAddr;

// crate
use super::{DestId, Entry, Queues, SiteId, Timed};

/// A held destination's recipients met by `take` wait this long (ms)
/// before they are looked at again.
pub const HOLD_RECHECK_MS: u64 = 60_000;

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
        out.retain(|s| s.ready + s.scheduled > 0 || s.held);
        out
    }

    /// The destination of `domain` (any case), if it exists.
    pub fn find(&self, domain: &str) -> Option<DestId> {
        self.dest_by_domain
            .get(domain.to_ascii_lowercase().as_str())
            .copied()
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
        let mut moved = 0;
        let items: Vec<Timed> = std::mem::take(&mut self.scheduled)
            .into_iter()
            .map(|r| r.0)
            .collect();
        let mut heap = BinaryHeap::with_capacity(items.len());
        for mut t in items {
            if t.dest == dest && t.due_unix_ms > now_unix_ms {
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
