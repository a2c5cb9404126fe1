//! A deterministic network of [`ShardShaper`]s for tests and benchmarks:
//! a virtual clock, per-link FIFO delivery with seeded random delays, and a
//! count of every message. Nothing here sleeps or reads a clock.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use crate::lease::{Envelope, LeaseConfig, ShardShaper};
use crate::units::{duration_ns, Nanos};

/// A small seeded generator (xorshift64*), enough for delays and demand.
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator from a seed (any value; zero is remapped).
    pub fn new(seed: u64) -> SimRng {
        SimRng(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }

    /// The next sample.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A sample in `0..=max`.
    pub fn below_or_eq(&mut self, max: u64) -> u64 {
        if max == u64::MAX {
            self.next_u64()
        } else {
            self.next_u64() % (max + 1)
        }
    }
}

#[derive(Debug)]
struct InFlight {
    at: Nanos,
    seq: u64,
    envelope: Envelope,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Shards connected by simulated links.
#[derive(Debug)]
pub struct SimNetwork {
    /// The shards' shapers, indexed by shard.
    pub shapers: Vec<ShardShaper>,
    in_flight: BinaryHeap<Reverse<InFlight>>,
    link_last: Vec<Nanos>,
    max_delay_ns: u64,
    rng: SimRng,
    seq: u64,
    /// Messages carried between different shards.
    pub messages: u64,
    scratch: Vec<Envelope>,
}

impl SimNetwork {
    /// `shards` shapers whose messages take up to `max_delay` each way.
    pub fn new(shards: u32, config: LeaseConfig, max_delay: Duration, seed: u64) -> SimNetwork {
        SimNetwork {
            shapers: (0..shards)
                .map(|i| ShardShaper::new(i, shards, config.clone()))
                .collect(),
            in_flight: BinaryHeap::new(),
            link_last: vec![Nanos::ZERO; (shards * shards) as usize],
            max_delay_ns: duration_ns(max_delay),
            rng: SimRng::new(seed),
            seq: 0,
            messages: 0,
            scratch: Vec::new(),
        }
    }

    /// Polls every shard and delivers every message due by `now` (messages
    /// with zero delay are delivered in the same call).
    pub fn step(&mut self, now: Nanos) {
        let shards = self.shapers.len() as u32;
        // Bounded: each round delivers due messages; the protocol answers a
        // message with at most a few others, and a quiet round ends it.
        for _round in 0..64 {
            for from in 0..shards {
                let mut out = std::mem::take(&mut self.scratch);
                out.append(self.shapers[from as usize].poll(now));
                for envelope in out.drain(..) {
                    self.send(from, envelope, now);
                }
                self.scratch = out;
            }
            let mut delivered = false;
            while let Some(Reverse(head)) = self.in_flight.peek() {
                if head.at > now {
                    break;
                }
                let Some(Reverse(item)) = self.in_flight.pop() else {
                    break;
                };
                let to = item.envelope.to as usize;
                self.shapers[to].receive(item.envelope.message, now);
                delivered = true;
            }
            if !delivered {
                return;
            }
        }
    }

    fn send(&mut self, from: u32, envelope: Envelope, now: Nanos) {
        let shards = self.shapers.len() as u32;
        let link = (from * shards + envelope.to) as usize;
        let delay = self.rng.below_or_eq(self.max_delay_ns);
        // Links are FIFO, like a channel.
        let at = Nanos(now.0.saturating_add(delay)).max(self.link_last[link]);
        self.link_last[link] = at;
        self.messages += 1;
        self.seq += 1;
        self.in_flight.push(Reverse(InFlight {
            at,
            seq: self.seq,
            envelope,
        }));
    }

    /// The seeded generator, for the caller's demand.
    pub fn rng(&mut self) -> &mut SimRng {
        &mut self.rng
    }
}
