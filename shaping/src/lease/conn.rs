//! Connection limits spanning shards: the home shard owns `max` permits and
//! lends them in batches; a shard returns the ones it has not used for
//! `permit_idle`, or at once when the limit shrinks.
//!
//! Safety is plain counting: the home adds a grant to the borrower's tally
//! when it sends it and subtracts a return only when it arrives, so permits
//! in transit are always counted and the sum in use never exceeds `max`.

use std::collections::VecDeque;

use crate::lease::Message;
use crate::units::Nanos;

/// One shard's view of a connection limit (plus the home's ledger).
#[derive(Debug)]
pub(crate) struct ConnSlot {
    pub key: Box<str>,
    pub home: u32,
    pub base: u32,
    /// The rules generation `base` comes from.
    pub generation: u64,
    pub max: u32,
    pub epoch: u64,
    pub held: u32,
    pub in_use: u32,
    pub requested: bool,
    pub recalled: bool,
    /// The maximum went down and the home has not lent since: permits
    /// held here may count over it, so none is kept spare.
    pub shrunk: bool,
    pub last_activity: Nanos,
    pub next_wake: Nanos,
    pub home_state: Option<Box<ConnHome>>,
}

/// The home shard's ledger for one connection limit.
#[derive(Debug)]
pub(crate) struct ConnHome {
    pub effective: u32,
    pub restrictions: Vec<Option<u32>>,
    held_by: Vec<u32>,
    known: Vec<bool>,
    pending: VecDeque<(u32, u32)>,
}

impl ConnSlot {
    pub fn new(key: Box<str>, home: u32, base: u32, shard: u32, shards: u32, now: Nanos) -> Self {
        let home_state = (home == shard).then(|| {
            Box::new(ConnHome {
                effective: base,
                restrictions: vec![None; shards as usize],
                held_by: vec![0; shards as usize],
                known: vec![false; shards as usize],
                pending: VecDeque::new(),
            })
        });
        ConnSlot {
            key,
            home,
            base,
            generation: 0,
            max: base,
            // A home numbers its versions by time (see `next_epoch`).
            epoch: if home == shard { now.0 } else { 0 },
            held: 0,
            in_use: 0,
            requested: false,
            recalled: false,
            shrunk: false,
            last_activity: now,
            next_wake: Nanos::MAX,
            home_state,
        }
    }

    /// Whether the slot holds nothing: no permit held or lent, no request
    /// waiting, no restriction. Only then may it be reclaimed.
    pub fn idle(&self) -> bool {
        let home_idle = self.home_state.as_ref().is_none_or(|h| {
            h.lent() == 0 && h.pending.is_empty() && h.restrictions.iter().all(Option::is_none)
        });
        self.held == 0 && self.in_use == 0 && !self.requested && home_idle
    }

    /// How many permits to ask for: grows with the number in use so a busy
    /// shard asks rarely.
    pub fn want(&self) -> u32 {
        (self.in_use / 4).max(1)
    }

    /// Idle permits to hand back at `now`, if any.
    pub fn idle_to_return(&self, now: Nanos, idle: std::time::Duration) -> u32 {
        let spare = self.held - self.in_use;
        if spare == 0 {
            0
        } else if self.recalled
            || self.shrunk
            || self.held > self.max
            || now >= self.last_activity.plus(idle)
        {
            spare
        } else {
            0
        }
    }

    /// Builds a return of `count` idle permits.
    pub fn give_back(&mut self, shard: u32, count: u32) -> Message {
        assert!(count <= self.held - self.in_use, "returning permits in use");
        self.held -= count;
        Message::PermitReturn {
            key: self.key.clone(),
            from: shard,
            count,
        }
    }
}

impl ConnHome {
    /// Total permits lent (including those in transit either way).
    pub fn lent(&self) -> u32 {
        self.held_by.iter().sum()
    }

    /// Records a request; grants what it can now (returns `(to, count)`).
    pub fn request(&mut self, from: u32, want: u32) -> Vec<(u32, u32)> {
        self.known[from as usize] = true;
        if !self.pending.iter().any(|(s, _)| *s == from) {
            self.pending.push_back((from, want.max(1)));
        }
        self.serve()
    }

    /// Takes permits back.
    pub fn returned(&mut self, from: u32, count: u32) -> Vec<(u32, u32)> {
        let held = &mut self.held_by[from as usize];
        debug_assert!(*held >= count, "shard {from} returned more than it held");
        *held = held.saturating_sub(count);
        self.serve()
    }

    /// Serves waiting requests first come, first served.
    pub fn serve(&mut self) -> Vec<(u32, u32)> {
        let mut grants = Vec::new();
        while let Some(&(from, want)) = self.pending.front() {
            let free = self.effective.saturating_sub(self.lent());
            if free == 0 {
                break;
            }
            let count = want.min(free);
            self.held_by[from as usize] += count;
            self.pending.pop_front();
            grants.push((from, count));
        }
        grants
    }

    /// Remembers that `from` uses this limit (it gets limit changes).
    pub fn mark_known(&mut self, from: u32) {
        self.known[from as usize] = true;
    }

    /// Shards to ask for idle permits back: while requests wait, every
    /// shard holding permits returns each one it is not using.
    pub fn recall_targets(&self) -> Vec<u32> {
        if self.pending.is_empty() {
            return Vec::new();
        }
        self.held_by
            .iter()
            .enumerate()
            .filter(|(_, held)| **held > 0)
            .map(|(i, _)| i as u32)
            .collect()
    }

    /// Shards that ever asked for permits.
    pub fn participants(&self) -> impl Iterator<Item = u32> + '_ {
        self.known
            .iter()
            .enumerate()
            .filter(|(_, k)| **k)
            .map(|(i, _)| i as u32)
    }

    /// Recomputes the effective maximum; returns it when it changed.
    pub fn recompute(&mut self, base: u32) -> Option<u32> {
        let effective = self
            .restrictions
            .iter()
            .flatten()
            .fold(base, |m, r| m.min(*r));
        (effective != self.effective).then(|| {
            self.effective = effective;
            effective
        })
    }
}
