//! A deterministic network of [`ShardShaper`]s for tests and benchmarks:
//! a virtual clock, per-link FIFO delivery with seeded random delays, and a
//! count of every message. Nothing here sleeps or reads a clock.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use crate::lease::{Acquire, Envelope, LeaseConfig, ShardShaper};
use crate::units::{duration_ns, Nanos, Rate};

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

/// What a steady-state run measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SteadyState {
    /// Tokens granted to callers over the measured part of the run.
    pub tokens: u64,
    /// Cross-shard messages over the measured part of the run.
    pub messages: u64,
    /// Acquire calls made over the measured part of the run.
    pub decisions: u64,
}

impl SteadyState {
    /// Cross-shard messages per 100 tokens granted.
    pub fn messages_per_100_tokens(&self) -> f64 {
        self.messages as f64 * 100.0 / self.tokens.max(1) as f64
    }
}

/// Runs `shards` shards that all send to one limit `key` of `rate`, each
/// wanting `demand_percent` of an equal share (above 100: more than the limit
/// allows), for `warmup` and then `measured` of virtual time in steps of
/// `step`. Counts tokens and messages over the measured part only.
#[allow(clippy::too_many_arguments)]
pub fn steady_state(
    shards: u32,
    key: &str,
    rate: Rate,
    demand_percent: u64,
    config: LeaseConfig,
    step: Duration,
    warmup: Duration,
    measured: Duration,
) -> SteadyState {
    let mut net = SimNetwork::new(shards, config, Duration::from_micros(50), 7);
    let ids: Vec<_> = net
        .shapers
        .iter_mut()
        .map(|s| s.rate_limit(key, rate, Nanos::ZERO))
        .collect();
    let step_ns = duration_ns(step).max(1);
    // Demand per shard per step, in millionths of a token.
    let per_step_micro =
        u128::from(rate.count) * u128::from(step_ns) * 1_000_000 * u128::from(demand_percent)
            / 100
            / u128::from(rate.period_ns())
            / u128::from(shards.max(1));
    let per_step_micro = u64::try_from(per_step_micro).unwrap_or(u64::MAX);
    let mut want_micro = vec![0u64; shards as usize];
    let warm_end = duration_ns(warmup);
    let end = warm_end.saturating_add(duration_ns(measured));
    let mut start = SteadyState {
        tokens: 0,
        messages: 0,
        decisions: 0,
    };
    let mut total = start;
    let mut now = 0u64;
    let mut started = false;
    while now < end {
        if !started && now >= warm_end {
            started = true;
            start = SteadyState {
                messages: net.messages,
                ..total
            };
        }
        for shard in 0..shards as usize {
            // Unmet demand does not pile up beyond one lease's worth.
            want_micro[shard] = want_micro[shard]
                .saturating_add(per_step_micro)
                .min(1_000_000 * 4096);
            while want_micro[shard] >= 1_000_000 {
                total.decisions += 1;
                match net.shapers[shard].try_acquire_message(&ids[shard..=shard], Nanos(now)) {
                    Acquire::Ok => {
                        total.tokens += 1;
                        want_micro[shard] -= 1_000_000;
                    }
                    Acquire::Wait(_) => break,
                }
            }
        }
        net.step(Nanos(now));
        now += step_ns;
    }
    SteadyState {
        tokens: total.tokens - start.tokens,
        messages: net.messages - start.messages,
        decisions: total.decisions - start.decisions,
    }
}
