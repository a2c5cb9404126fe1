//! The per-shard answer cache: bounded, TTL-honouring, with negative
//! entries, and no clock of its own (every call takes `now`).
//!
//! Eviction is CLOCK (second chance), an LRU approximation with O(1)
//! hits: a hit sets a reference bit; when the cache is full the hand
//! sweeps the slots, evicting the first expired or unreferenced one and
//! clearing the bits it passes. A hit allocates nothing: one hash of the
//! name in the per-type map and a reference-counted clone of the answer.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::wire::{Lookup, Parsed, QueryType};

/// Cache limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Entries kept (each is one name and type). At least 1.
    pub entries_max: usize,
    /// Cap on any positive TTL; a zone asking for a week is re-asked
    /// after this.
    pub ttl_max: Duration,
    /// Cap on negative (NXDOMAIN / NODATA) TTLs. RFC 2308 §5 suggests 1 to
    /// 3 hours at most; mail wants new domains to start working soon.
    pub negative_ttl_max: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            entries_max: 65_536,
            ttl_max: Duration::from_secs(86_400),
            negative_ttl_max: Duration::from_secs(900),
        }
    }
}

struct Slot {
    name: Box<str>,
    qtype: QueryType,
    lookup: Lookup,
    expires: Instant,
    referenced: bool,
}

/// A bounded cache of [`Lookup`]s keyed by normalised name and type.
pub struct Cache {
    config: CacheConfig,
    index: [HashMap<Box<str>, usize>; 3],
    slots: Vec<Slot>,
    hand: usize,
    hits: u64,
    misses: u64,
}

impl Cache {
    /// An empty cache. `entries_max` of 0 is raised to 1.
    pub fn new(mut config: CacheConfig) -> Self {
        config.entries_max = config.entries_max.max(1);
        let slots = Vec::with_capacity(config.entries_max.min(4096));
        Cache {
            config,
            index: [HashMap::new(), HashMap::new(), HashMap::new()],
            slots,
            hand: 0,
            hits: 0,
            misses: 0,
        }
    }

    /// The cached answer for `name` (normalised) and `qtype`, if present
    /// and not expired at `now`.
    pub fn get(&mut self, name: &str, qtype: QueryType, now: Instant) -> Option<Lookup> {
        self.get_with_ttl(name, qtype, now)
            .map(|(lookup, _)| lookup)
    }

    /// Like [`Cache::get`], with the time the answer stays valid.
    pub fn get_with_ttl(
        &mut self,
        name: &str,
        qtype: QueryType,
        now: Instant,
    ) -> Option<(Lookup, Duration)> {
        let found = self.index[qtype.index()].get(name).copied().and_then(|i| {
            let slot = &mut self.slots[i];
            if now < slot.expires {
                slot.referenced = true;
                Some((slot.lookup.clone(), slot.expires - now))
            } else {
                None
            }
        });
        match found {
            Some(_) => self.hits += 1,
            None => self.misses += 1,
        }
        found
    }

    /// Stores `parsed` for `name` and `qtype` as of `now`, applying the
    /// caps. Answers without a TTL, or with a TTL of zero, are not stored
    /// (and replace nothing).
    pub fn insert(&mut self, name: &str, qtype: QueryType, parsed: &Parsed, now: Instant) {
        let ttl = match self.ttl_of(parsed) {
            Some(ttl) if !ttl.is_zero() => ttl,
            _ => return,
        };
        let expires = now + ttl;
        let map = qtype.index();
        if let Some(&i) = self.index[map].get(name) {
            let slot = &mut self.slots[i];
            slot.lookup = parsed.lookup.clone();
            slot.expires = expires;
            return;
        }
        let slot = Slot {
            name: name.into(),
            qtype,
            lookup: parsed.lookup.clone(),
            expires,
            referenced: false,
        };
        let i = if self.slots.len() < self.config.entries_max {
            self.slots.push(slot);
            self.slots.len() - 1
        } else {
            let victim = self.victim(now);
            let old = std::mem::replace(&mut self.slots[victim], slot);
            let removed = self.index[old.qtype.index()].remove(&old.name);
            debug_assert_eq!(removed, Some(victim), "index and slots agree");
            victim
        };
        self.index[map].insert(name.into(), i);
        debug_assert_eq!(
            self.index.iter().map(HashMap::len).sum::<usize>(),
            self.slots.len()
        );
    }

    /// The TTL this cache gives `parsed`: its own, capped by
    /// `ttl_max` (positive) or `negative_ttl_max` (NXDOMAIN, NODATA).
    pub fn ttl_of(&self, parsed: &Parsed) -> Option<Duration> {
        let cap = match parsed.lookup {
            Lookup::NoData | Lookup::NxDomain => self.config.negative_ttl_max,
            Lookup::Records(_) | Lookup::Alias(_) => self.config.ttl_max,
        };
        parsed.ttl.map(|ttl| ttl.min(cap))
    }

    /// CLOCK sweep: at most two passes (the first clears every bit).
    fn victim(&mut self, now: Instant) -> usize {
        let len = self.slots.len();
        assert!(
            len > 0,
            "victim is only chosen from a full, non-empty cache"
        );
        for _ in 0..2 * len {
            let i = self.hand;
            self.hand = (self.hand + 1) % len;
            let slot = &mut self.slots[i];
            if slot.expires <= now || !slot.referenced {
                return i;
            }
            slot.referenced = false;
        }
        // Unreachable in practice: the first pass cleared every bit.
        self.hand
    }

    /// Entries stored (expired ones included until they are evicted).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Hits and misses counted by [`Cache::get`] since creation.
    pub fn hit_miss(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use super::*;
    use crate::wire::Rdata;

    fn records(ttl_s: u64) -> Parsed {
        Parsed {
            lookup: Lookup::Records(Rc::from(vec![Rdata::Addr("192.0.2.1".parse().unwrap())])),
            ttl: Some(Duration::from_secs(ttl_s)),
        }
    }

    #[test]
    fn honours_ttl_and_cap() {
        let t0 = Instant::now();
        let mut cache = Cache::new(CacheConfig {
            entries_max: 8,
            ttl_max: Duration::from_secs(100),
            negative_ttl_max: Duration::from_secs(10),
        });
        cache.insert("a.test", QueryType::A, &records(60), t0);
        cache.insert("b.test", QueryType::A, &records(1000), t0);
        let neg = Parsed {
            lookup: Lookup::NxDomain,
            ttl: Some(Duration::from_secs(3600)),
        };
        cache.insert("c.test", QueryType::Mx, &neg, t0);
        assert!(cache
            .get("a.test", QueryType::A, t0 + Duration::from_secs(59))
            .is_some());
        assert!(cache
            .get("a.test", QueryType::A, t0 + Duration::from_secs(60))
            .is_none());
        assert!(cache.get("a.test", QueryType::Aaaa, t0).is_none());
        assert!(cache
            .get("b.test", QueryType::A, t0 + Duration::from_secs(99))
            .is_some());
        assert!(cache
            .get("b.test", QueryType::A, t0 + Duration::from_secs(100))
            .is_none());
        assert_eq!(
            cache.get("c.test", QueryType::Mx, t0 + Duration::from_secs(9)),
            Some(Lookup::NxDomain)
        );
        assert!(cache
            .get("c.test", QueryType::Mx, t0 + Duration::from_secs(10))
            .is_none());
    }

    #[test]
    fn zero_or_missing_ttl_is_not_cached() {
        let t0 = Instant::now();
        let mut cache = Cache::new(CacheConfig::default());
        cache.insert("a.test", QueryType::A, &records(0), t0);
        let no_soa = Parsed {
            lookup: Lookup::NoData,
            ttl: None,
        };
        cache.insert("b.test", QueryType::A, &no_soa, t0);
        assert!(cache.is_empty());
    }

    #[test]
    fn bounded_and_keeps_referenced_entries() {
        let t0 = Instant::now();
        let mut cache = Cache::new(CacheConfig {
            entries_max: 4,
            ..CacheConfig::default()
        });
        for i in 0..4 {
            cache.insert(&format!("h{i}.test"), QueryType::A, &records(60), t0);
        }
        // h0 is hot; inserting more must evict the cold ones first.
        for i in 4..7 {
            assert!(cache.get("h0.test", QueryType::A, t0).is_some());
            cache.insert(&format!("h{i}.test"), QueryType::A, &records(60), t0);
            assert_eq!(cache.len(), 4);
        }
        assert!(cache.get("h0.test", QueryType::A, t0).is_some());
        assert!(cache.get("h6.test", QueryType::A, t0).is_some());
        let present = (0..7)
            .filter(|i| cache.get(&format!("h{i}.test"), QueryType::A, t0).is_some())
            .count();
        assert_eq!(present, 4);
    }

    #[test]
    fn replace_updates_in_place() {
        let t0 = Instant::now();
        let mut cache = Cache::new(CacheConfig::default());
        cache.insert("a.test", QueryType::Mx, &records(10), t0);
        cache.insert("a.test", QueryType::Mx, &records(50), t0);
        assert_eq!(cache.len(), 1);
        assert!(cache
            .get("a.test", QueryType::Mx, t0 + Duration::from_secs(30))
            .is_some());
    }
}
