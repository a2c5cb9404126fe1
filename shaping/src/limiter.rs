//! Pure limiters with explicit time: an exact token bucket that can hold a
//! *share* of a rate limit, and a counting permit pool for connections.
//!
//! The bucket with the whole share is exactly GCRA with emission interval
//! `T = period / count` and tolerance `(burst - 1) * T`: it admits at most
//! `burst + floor(w / T)` events in any window of length `w`. All arithmetic
//! is integer (no floating point, no rounding in the caller's favour): the
//! level is kept in units of `1 / (SHARE_PARTS * period_ns)` token.

use std::time::Duration;

use crate::units::{Nanos, Rate};

/// A share of a limit is expressed in parts of this many.
pub const SHARE_PARTS: u32 = 1 << 16;

// Shares are summed in u32 across at most SHARE_PARTS shards' worth of
// parts; keep the unit small enough that a sum of two never overflows.
const _: () = assert!(SHARE_PARTS.is_power_of_two() && SHARE_PARTS <= u32::MAX / 2);

/// The outcome of asking a limiter for a token or permit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    /// Granted (and consumed).
    Ok,
    /// Not now; ask again after this long.
    Wait(Duration),
    /// Not with the share held now: it can never refill to one token.
    NoShare,
}

/// An exact token bucket holding `rate_parts / SHARE_PARTS` of a rate and
/// `burst_parts / SHARE_PARTS` of its burst.
///
/// Invariant: `level <= capacity` at all times, and the level only ever rises
/// by refilling; changing the share clamps it and never raises it. That is
/// what makes shares held by different shards add up to the whole limit.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: Rate,
    rate_parts: u32,
    burst_parts: u32,
    level: u128,
    last: Nanos,
    token_units: u128,
    refill_per_ns: u128,
    capacity: u128,
}

impl TokenBucket {
    /// A bucket with the whole limit, full at `now` (a fresh GCRA).
    pub fn full(rate: Rate, now: Nanos) -> TokenBucket {
        let mut bucket = TokenBucket::empty(rate, SHARE_PARTS, SHARE_PARTS, now);
        bucket.level = bucket.capacity;
        bucket
    }

    /// An empty bucket with the given share.
    pub fn empty(rate: Rate, rate_parts: u32, burst_parts: u32, now: Nanos) -> TokenBucket {
        let mut bucket = TokenBucket {
            rate,
            rate_parts: 0,
            burst_parts: 0,
            level: 0,
            last: now,
            token_units: 0,
            refill_per_ns: 0,
            capacity: 0,
        };
        bucket.configure(rate, rate_parts, burst_parts);
        bucket
    }

    fn configure(&mut self, rate: Rate, rate_parts: u32, burst_parts: u32) {
        debug_assert!(rate_parts <= SHARE_PARTS && burst_parts <= SHARE_PARTS);
        self.rate = rate;
        self.rate_parts = rate_parts;
        self.burst_parts = burst_parts;
        let period_ns = u128::from(rate.period_ns());
        self.token_units = u128::from(SHARE_PARTS) * period_ns;
        // Saturating: a hand-built `Rate` beyond the parser's bounds must not
        // overflow; it only becomes "effectively unlimited".
        self.refill_per_ns = u128::from(rate.count).saturating_mul(u128::from(rate_parts));
        self.capacity = u128::from(rate.burst)
            .saturating_mul(u128::from(burst_parts))
            .saturating_mul(period_ns);
        self.level = self.level.min(self.capacity);
    }

    /// Refills up to `now`. Time that goes backwards refills nothing.
    pub fn advance(&mut self, now: Nanos) {
        if now > self.last {
            let dt = u128::from(now.0 - self.last.0);
            self.level = self
                .level
                .saturating_add(dt.saturating_mul(self.refill_per_ns))
                .min(self.capacity);
            self.last = now;
        }
    }

    /// Changes the share at `now` (refilling first at the old share).
    pub fn set_share(&mut self, now: Nanos, rate_parts: u32, burst_parts: u32) {
        self.advance(now);
        self.configure(self.rate, rate_parts, burst_parts);
    }

    /// Changes the limit itself at `now`, keeping the share.
    pub fn set_rate(&mut self, now: Nanos, rate: Rate) {
        self.advance(now);
        self.configure(rate, self.rate_parts, self.burst_parts);
    }

    /// Whether one token is available at `now`, without taking it.
    pub fn check(&mut self, now: Nanos) -> Take {
        self.advance(now);
        if self.level >= self.token_units {
            Take::Ok
        } else if self.refill_per_ns == 0 || self.capacity < self.token_units {
            Take::NoShare
        } else {
            let missing = self.token_units - self.level;
            let wait_ns = missing.div_ceil(self.refill_per_ns);
            Take::Wait(Duration::from_nanos(
                u64::try_from(wait_ns).unwrap_or(u64::MAX),
            ))
        }
    }

    /// Takes one token that [`TokenBucket::check`] just reported available.
    pub fn consume(&mut self) {
        assert!(self.level >= self.token_units, "consume without a token");
        self.level -= self.token_units;
    }

    /// Checks and, when available, takes one token.
    pub fn try_take(&mut self, now: Nanos) -> Take {
        let take = self.check(now);
        if take == Take::Ok {
            self.consume();
        }
        take
    }

    /// Whole tokens available at the last `advance`.
    pub fn tokens(&self) -> u64 {
        u64::try_from(self.level / self.token_units.max(1)).unwrap_or(u64::MAX)
    }

    /// Fills the bucket to its capacity. Only sound when no other share of
    /// the same limit can hold any level (a limit's very first lease).
    pub fn fill(&mut self) {
        self.level = self.capacity;
    }

    /// Empties the bucket (its share is being given up).
    pub fn drain(&mut self) {
        self.level = 0;
    }

    /// The limit this bucket enforces a share of.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// The share of the rate held, in parts of [`SHARE_PARTS`].
    pub fn rate_parts(&self) -> u32 {
        self.rate_parts
    }
}

/// Counting permits: at most `max` in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permits {
    max: u32,
    in_use: u32,
}

impl Permits {
    /// A pool of `max` permits, none in use.
    pub fn new(max: u32) -> Permits {
        Permits { max, in_use: 0 }
    }

    /// Takes a permit if one is free.
    pub fn try_take(&mut self) -> bool {
        if self.in_use < self.max {
            self.in_use += 1;
            true
        } else {
            false
        }
    }

    /// Gives a permit back.
    pub fn give_back(&mut self) {
        assert!(self.in_use > 0, "permit released twice");
        self.in_use -= 1;
    }

    /// Changes the maximum; permits in use stay in use (a lower maximum only
    /// stops new ones).
    pub fn set_max(&mut self, max: u32) {
        self.max = max;
    }

    /// Permits in use.
    pub fn in_use(&self) -> u32 {
        self.in_use
    }

    /// The maximum.
    pub fn max(&self) -> u32 {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::parse_rate;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn gcra_vectors() {
        // 10/s with burst 3: T = 100ms, tolerance 200ms.
        let rate = parse_rate("10/s burst 3").unwrap();
        let mut b = TokenBucket::full(rate, Nanos(0));
        assert_eq!(b.try_take(Nanos(0)), Take::Ok);
        assert_eq!(b.try_take(Nanos(0)), Take::Ok);
        assert_eq!(b.try_take(Nanos(0)), Take::Ok);
        assert_eq!(b.try_take(Nanos(0)), Take::Wait(Duration::from_millis(100)));
        assert_eq!(
            b.try_take(Nanos(60 * MS)),
            Take::Wait(Duration::from_millis(40))
        );
        assert_eq!(b.try_take(Nanos(100 * MS)), Take::Ok);
        assert_eq!(
            b.try_take(Nanos(150 * MS)),
            Take::Wait(Duration::from_millis(50))
        );
        // Idle for a long time: back to the full burst, no more.
        for _ in 0..3 {
            assert_eq!(b.try_take(Nanos(10_000 * MS)), Take::Ok);
        }
        assert!(matches!(b.try_take(Nanos(10_000 * MS)), Take::Wait(_)));
        // Time going backwards refills nothing and does not panic.
        assert!(matches!(b.try_take(Nanos(5 * MS)), Take::Wait(_)));
    }

    #[test]
    fn share_vectors() {
        // Half of 10/s (burst 10): 5/s, capacity 5 tokens, starting empty.
        let rate = parse_rate("10/s").unwrap();
        let mut b = TokenBucket::empty(rate, SHARE_PARTS / 2, SHARE_PARTS / 2, Nanos(0));
        assert_eq!(b.try_take(Nanos(0)), Take::Wait(Duration::from_millis(200)));
        assert_eq!(b.try_take(Nanos(200 * MS)), Take::Ok);
        b.advance(Nanos(100_000 * MS));
        assert_eq!(b.tokens(), 5);
        // Shrinking the share clamps the level and never raises it.
        b.set_share(Nanos(100_000 * MS), SHARE_PARTS / 4, SHARE_PARTS / 4);
        assert_eq!(b.tokens(), 2);
        b.set_share(Nanos(100_000 * MS), 0, 0);
        assert_eq!(b.try_take(Nanos(200_000 * MS)), Take::NoShare);
    }

    #[test]
    fn permits() {
        let mut p = Permits::new(2);
        assert!(p.try_take() && p.try_take() && !p.try_take());
        p.set_max(1);
        p.give_back();
        assert!(!p.try_take());
        p.give_back();
        assert!(p.try_take());
        assert_eq!(p.in_use(), 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// The whole-share bucket admits exactly the GCRA envelope: never
        /// more than `burst + floor(w * count / period)` in any window.
        #[test]
        fn bucket_respects_window_bound(
            count in 1u64..50, period_ms in 1u64..2000, burst in 1u64..20,
            steps in proptest::collection::vec(0u64..300, 1..200),
        ) {
            let rate = Rate { count, period: Duration::from_millis(period_ms), burst };
            let mut bucket = TokenBucket::full(rate, Nanos(0));
            let mut now = 0u64;
            let mut granted = Vec::new();
            for step in steps {
                now += step * MS / 10;
                while bucket.try_take(Nanos(now)) == Take::Ok {
                    granted.push(now);
                }
            }
            for (i, start) in granted.iter().enumerate() {
                for (j, end) in granted.iter().enumerate().skip(i) {
                    let window = Duration::from_nanos(end - start);
                    prop_assert!((j - i + 1) as u64 <= rate.max_in_window(window));
                }
            }
        }
    }
}
