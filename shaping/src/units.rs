//! Human-readable quantities: durations (`"30s"`), rates (`"300/min"`),
//! retry schedules (`"10m,20m,1h"`, `"exp(5m, x2, max 4h, jitter 20%)"`) and
//! the explicit time type [`Nanos`] that every limiter takes.
//!
//! Parsing is strict: anything not understood is an error that says what was
//! expected, never a silent default.

use std::fmt;
use std::time::Duration;

use thiserror::Error;

/// A point in time: nanoseconds since an epoch the caller chose (usually the
/// `Instant` its shard started at, shared by all shards of one process).
///
/// The crate never reads a clock; every decision takes a `Nanos` argument.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Nanos(pub u64);

impl Nanos {
    /// The epoch itself.
    pub const ZERO: Nanos = Nanos(0);
    /// The far future: used for "never".
    pub const MAX: Nanos = Nanos(u64::MAX);

    /// `self + d`, saturating at [`Nanos::MAX`].
    pub fn plus(self, d: Duration) -> Nanos {
        Nanos(self.0.saturating_add(duration_ns(d)))
    }

    /// The duration from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Nanos) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// Converts a `std::time::Instant` relative to `epoch` (a conversion,
    /// not a clock read: the caller read the clock).
    pub fn from_instant(epoch: std::time::Instant, at: std::time::Instant) -> Nanos {
        Nanos(duration_ns(at.saturating_duration_since(epoch)))
    }
}

/// A duration in whole nanoseconds, saturating at `u64::MAX` (584 years).
pub fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Why a human-readable value was rejected.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum UnitError {
    /// The text is empty.
    #[error("empty value")]
    Empty,
    /// A number could not be read.
    #[error("`{0}` is not a whole number")]
    BadNumber(String),
    /// A unit was not recognised.
    #[error("unknown unit `{0}` (expected ms, s, m/min, h, d or w)")]
    BadUnit(String),
    /// The value does not fit.
    #[error("value `{0}` is too large")]
    Overflow(String),
    /// The overall shape is wrong.
    #[error("{0}")]
    Syntax(String),
}

/// Parses a whole number that may contain `_` separators (`1_000`).
pub fn parse_count(text: &str) -> Result<u64, UnitError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(UnitError::Empty);
    }
    if t.starts_with('_') || t.ends_with('_') || !t.chars().all(|c| c.is_ascii_digit() || c == '_')
    {
        return Err(UnitError::BadNumber(t.to_string()));
    }
    let mut value: u64 = 0;
    for c in t.chars().filter(|c| *c != '_') {
        let digit = u64::from(c as u8 - b'0');
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(digit))
            .ok_or_else(|| UnitError::Overflow(t.to_string()))?;
    }
    Ok(value)
}

fn unit_duration(unit: &str) -> Option<Duration> {
    Some(match unit {
        "us" => Duration::from_micros(1),
        "ms" => Duration::from_millis(1),
        "s" | "sec" | "second" | "seconds" => Duration::from_secs(1),
        "m" | "min" | "minute" | "minutes" => Duration::from_secs(60),
        "h" | "hr" | "hour" | "hours" => Duration::from_secs(3600),
        "d" | "day" | "days" => Duration::from_secs(86_400),
        "w" | "week" | "weeks" => Duration::from_secs(7 * 86_400),
        _ => return None,
    })
}

/// Parses a duration: one or more `<number><unit>` parts (`"30s"`, `"10m"`,
/// `"1h30m"`, `"1_500ms"`, `"150us"`), or a bare `"0"`.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(UnitError::Empty);
    }
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = t;
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '_'))
            .ok_or_else(|| UnitError::Syntax(format!("`{t}` needs a unit, e.g. `{t}s`")))?;
        if digits == 0 {
            return Err(UnitError::BadNumber(t.to_string()));
        }
        let count = parse_count(&rest[..digits])?;
        let after = &rest[digits..];
        let unit_len = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let unit = &after[..unit_len];
        let per = unit_duration(unit).ok_or_else(|| UnitError::BadUnit(unit.to_string()))?;
        let count32 = u32::try_from(count).map_err(|_| UnitError::Overflow(t.to_string()))?;
        let part = per
            .checked_mul(count32)
            .ok_or_else(|| UnitError::Overflow(t.to_string()))?;
        total = total
            .checked_add(part)
            .ok_or_else(|| UnitError::Overflow(t.to_string()))?;
        rest = &after[unit_len..];
    }
    Ok(total)
}

/// A rate limit: `count` events per `period`, with up to `burst` at once.
///
/// As a GCRA it has emission interval `period / count` and tolerance
/// `(burst - 1) * period / count`; as a token bucket it holds `burst` tokens
/// and refills `count` tokens per `period`. Both views admit, in any window
/// of length `w`, at most `burst + floor(w * count / period)` events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    /// Events per period.
    pub count: u64,
    /// The period; never zero.
    pub period: Duration,
    /// Events allowed back to back; at least 1.
    pub burst: u64,
}

impl Rate {
    /// A rate whose burst equals its count (KumoMTA's default).
    pub fn new(count: u64, period: Duration) -> Rate {
        Rate {
            count,
            period,
            burst: count.max(1),
        }
    }

    /// The period in nanoseconds (at least 1).
    pub fn period_ns(&self) -> u64 {
        duration_ns(self.period).max(1)
    }

    /// Events per second, for display and demand estimates.
    pub fn per_second(&self) -> f64 {
        self.count as f64 / self.period.as_secs_f64().max(1e-9)
    }

    /// The most events allowed in any window of `window` length.
    pub fn max_in_window(&self, window: Duration) -> u64 {
        let grown =
            u128::from(duration_ns(window)) * u128::from(self.count) / u128::from(self.period_ns());
        self.burst
            .saturating_add(u64::try_from(grown).unwrap_or(u64::MAX))
    }

    /// Scales count and burst by `percent` / 100, never below 1 event.
    pub fn scaled_percent(&self, percent: u32) -> Rate {
        let scale = |v: u64| (u128::from(v) * u128::from(percent) / 100).max(1);
        Rate {
            count: u64::try_from(scale(self.count)).unwrap_or(u64::MAX),
            period: self.period,
            burst: u64::try_from(scale(self.burst)).unwrap_or(u64::MAX),
        }
    }

    /// The smaller of two rates, compared by long-run events per second.
    pub fn min(self, other: Rate) -> Rate {
        let lhs = u128::from(self.count) * u128::from(other.period_ns());
        let rhs = u128::from(other.count) * u128::from(self.period_ns());
        if lhs <= rhs {
            self
        } else {
            other
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{:?}", self.count, self.period)?;
        if self.burst != self.count.max(1) {
            write!(f, " burst {}", self.burst)?;
        }
        Ok(())
    }
}

/// The largest count or burst a rate may have (10^12 events).
pub const RATE_COUNT_MAX: u64 = 1_000_000_000_000;
/// The longest period a rate may have.
pub const RATE_PERIOD_MAX: Duration = Duration::from_secs(366 * 86_400);

// The limiter's fixed-point arithmetic (see `limiter`) stays inside u128
// for any rate the parser accepts: capacity = burst * parts * period_ns.
const _: () = assert!(
    (RATE_COUNT_MAX as u128) * (crate::limiter::SHARE_PARTS as u128) * (RATE_PERIOD_MAX.as_nanos())
        < u128::MAX / 1024
);

/// Parses `"300/min"`, `"10/s"`, `"50000/day"`, `"1_000/h"`, `"100/10m"`,
/// optionally followed by `burst N` (`"300/min burst 20"`).
pub fn parse_rate(text: &str) -> Result<Rate, UnitError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(UnitError::Empty);
    }
    let (count_text, rest) = t.split_once('/').ok_or_else(|| {
        UnitError::Syntax(format!(
            "`{t}` is not a rate: expected `N/unit`, e.g. `300/min`"
        ))
    })?;
    let (period_text, burst) = match rest.split_once("burst") {
        Some((period, burst_text)) => {
            let burst = parse_count(burst_text.trim_start_matches([' ', '=']))?;
            if burst == 0 {
                return Err(UnitError::Syntax("burst must be at least 1".into()));
            }
            (period.trim().trim_end_matches(',').trim(), Some(burst))
        }
        None => (rest.trim(), None),
    };
    let count = parse_count(count_text)?;
    let period = if period_text.starts_with(|c: char| c.is_ascii_digit()) {
        parse_duration(period_text)?
    } else {
        unit_duration(period_text).ok_or_else(|| UnitError::BadUnit(period_text.to_string()))?
    };
    if period.is_zero() {
        return Err(UnitError::Syntax("a rate's period must not be zero".into()));
    }
    if period > RATE_PERIOD_MAX {
        return Err(UnitError::Syntax(
            "a rate's period is at most a year".into(),
        ));
    }
    if count > RATE_COUNT_MAX || burst.is_some_and(|b| b > RATE_COUNT_MAX) {
        return Err(UnitError::Overflow(t.to_string()));
    }
    let mut rate = Rate::new(count, period);
    if let Some(burst) = burst {
        rate.burst = burst;
    }
    Ok(rate)
}

/// When to retry a temporarily failed message.
#[derive(Clone, Debug, PartialEq)]
pub enum RetrySchedule {
    /// Fixed delays; the last one repeats (`"10m,20m,1h"`).
    List(Vec<Duration>),
    /// `initial * factor^attempt`, capped at `max`, each delay then shortened
    /// by a random fraction up to `jitter_percent`
    /// (`"exp(5m, x2, max 4h, jitter 20%)"`).
    Exponential {
        /// The first delay.
        initial: Duration,
        /// The growth factor per attempt (at least 1).
        factor: u32,
        /// The largest delay.
        max: Duration,
        /// How much of each delay may be removed at random, 0..=100.
        jitter_percent: u32,
    },
}

impl RetrySchedule {
    /// The delay before retry number `attempt` (0 = first retry).
    /// `random` is a uniform sample from the caller's seeded RNG; it is only
    /// used for jitter, so the schedule stays a pure function.
    pub fn delay(&self, attempt: u32, random: u64) -> Duration {
        match self {
            RetrySchedule::List(delays) => {
                let index = (attempt as usize).min(delays.len().saturating_sub(1));
                delays.get(index).copied().unwrap_or(Duration::ZERO)
            }
            RetrySchedule::Exponential {
                initial,
                factor,
                max,
                jitter_percent,
            } => {
                let mut delay = *initial;
                for _ in 0..attempt {
                    delay = delay.saturating_mul(*factor);
                    if delay >= *max {
                        break;
                    }
                }
                let delay = delay.min(*max);
                let jitter_range =
                    u128::from(duration_ns(delay)) * u128::from(*jitter_percent) / 100;
                let cut = if jitter_range == 0 {
                    0
                } else {
                    u128::from(random) % (jitter_range + 1)
                };
                delay.saturating_sub(Duration::from_nanos(u64::try_from(cut).unwrap_or(0)))
            }
        }
    }

    /// The shortest delay this schedule can produce.
    pub fn shortest(&self) -> Duration {
        match self {
            RetrySchedule::List(delays) => delays.iter().min().copied().unwrap_or(Duration::ZERO),
            RetrySchedule::Exponential {
                initial,
                jitter_percent,
                max,
                ..
            } => {
                let base = (*initial).min(*max);
                base.saturating_sub(base * *jitter_percent / 100)
            }
        }
    }
}

/// Parses a retry schedule: a comma list of durations, or
/// `exp(INITIAL, xFACTOR, max MAX, jitter P%)` where `jitter` is optional.
pub fn parse_retry(text: &str) -> Result<RetrySchedule, UnitError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(UnitError::Empty);
    }
    if let Some(inner) = t.strip_prefix("exp(") {
        let inner = inner
            .strip_suffix(')')
            .ok_or_else(|| UnitError::Syntax("`exp(` is missing its closing `)`".into()))?;
        let parts: Vec<&str> = inner.split(',').map(str::trim).collect();
        let usage = "expected `exp(5m, x2, max 4h, jitter 20%)`";
        if parts.len() < 3 || parts.len() > 4 {
            return Err(UnitError::Syntax(usage.into()));
        }
        let initial = parse_duration(parts[0])?;
        let factor_text = parts[1]
            .strip_prefix('x')
            .ok_or_else(|| UnitError::Syntax(format!("factor `{}`: {usage}", parts[1])))?;
        let factor = u32::try_from(parse_count(factor_text)?)
            .map_err(|_| UnitError::Overflow(factor_text.to_string()))?;
        if factor == 0 {
            return Err(UnitError::Syntax("the factor must be at least x1".into()));
        }
        let max_text = parts[2]
            .strip_prefix("max")
            .ok_or_else(|| UnitError::Syntax(format!("`{}`: {usage}", parts[2])))?;
        let max = parse_duration(max_text)?;
        let jitter_percent = match parts.get(3) {
            None => 0,
            Some(part) => {
                let p = part
                    .strip_prefix("jitter")
                    .and_then(|p| p.trim().strip_suffix('%'))
                    .ok_or_else(|| UnitError::Syntax(format!("`{part}`: {usage}")))?;
                let p = parse_count(p)?;
                if p > 100 {
                    return Err(UnitError::Syntax("jitter is at most 100%".into()));
                }
                p as u32
            }
        };
        if initial.is_zero() || max < initial {
            return Err(UnitError::Syntax(
                "exp(): the initial delay must be non-zero and not above max".into(),
            ));
        }
        return Ok(RetrySchedule::Exponential {
            initial,
            factor,
            max,
            jitter_percent,
        });
    }
    let delays = t
        .split(',')
        .map(parse_duration)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RetrySchedule::List(delays))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1_500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("150us"), Ok(Duration::from_micros(150)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(matches!(parse_duration("30"), Err(UnitError::Syntax(_))));
        assert!(matches!(
            parse_duration("30 parsecs"),
            Err(UnitError::BadUnit(_))
        ));
        assert!(matches!(parse_duration("s"), Err(UnitError::BadNumber(_))));
        assert!(matches!(parse_duration(""), Err(UnitError::Empty)));
        assert!(parse_duration("99999999999999999999s").is_err());
    }

    #[test]
    fn rates() {
        let r = parse_rate("300/min").unwrap();
        assert_eq!(
            (r.count, r.period, r.burst),
            (300, Duration::from_secs(60), 300)
        );
        assert_eq!(parse_rate("10/s").unwrap().period, Duration::from_secs(1));
        assert_eq!(parse_rate("50000/day").unwrap().count, 50_000);
        assert_eq!(parse_rate("1_000/h").unwrap().count, 1000);
        assert_eq!(
            parse_rate("100/10m").unwrap().period,
            Duration::from_secs(600)
        );
        let b = parse_rate("300/min burst 20").unwrap();
        assert_eq!((b.count, b.burst), (300, 20));
        assert_eq!(parse_rate("300/min, burst=5").unwrap().burst, 5);
        assert!(parse_rate("300").is_err());
        assert!(parse_rate("300/fortnight").is_err());
        assert!(parse_rate("x/s").is_err());
        assert!(parse_rate("3/0s").is_err());
        assert!(parse_rate("3/s burst 0").is_err());
        assert_eq!(
            parse_rate("10/s")
                .unwrap()
                .max_in_window(Duration::from_millis(1500)),
            25
        );
    }

    #[test]
    fn retry_schedules() {
        let list = parse_retry("10m,20m,1h").unwrap();
        assert_eq!(list.delay(0, 0), Duration::from_secs(600));
        assert_eq!(list.delay(2, 0), Duration::from_secs(3600));
        assert_eq!(list.delay(9, 0), Duration::from_secs(3600));
        let exp = parse_retry("exp(5m, x2, max 4h, jitter 20%)").unwrap();
        assert_eq!(exp.delay(0, 0), Duration::from_secs(300));
        assert_eq!(exp.delay(3, 0), Duration::from_secs(2400));
        assert_eq!(exp.delay(30, 0), Duration::from_secs(4 * 3600));
        // Largest cut: 20% of 300s = 60s.
        assert_eq!(exp.delay(0, 60_000_000_000), Duration::from_secs(240));
        assert_eq!(exp.shortest(), Duration::from_secs(240));
        assert!(parse_retry("exp(5m, 2, max 4h)").is_err());
        assert!(parse_retry("exp(5m, x2, max 1m)").is_err());
        assert!(parse_retry("exp(5m, x2, max 4h, jitter 120%)").is_err());
        assert!(parse_retry("10m,,1h").is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn parsers_never_panic(s in "\\PC{0,24}") {
            let _ = parse_duration(&s);
            let _ = parse_rate(&s);
            let _ = parse_retry(&s);
        }

        #[test]
        fn duration_round_trip(n in 0u32..1_000_000, unit in 0usize..5) {
            let (suffix, secs) = [("s", 1u64), ("m", 60), ("h", 3600), ("d", 86_400), ("w", 604_800)][unit];
            let parsed = parse_duration(&format!("{n}{suffix}")).unwrap();
            prop_assert_eq!(parsed, Duration::from_secs(u64::from(n) * secs));
        }

        #[test]
        fn jitter_stays_in_range(attempt in 0u32..40, random in any::<u64>()) {
            let exp = parse_retry("exp(1m, x3, max 2h, jitter 50%)").unwrap();
            let d = exp.delay(attempt, random);
            prop_assert!(d <= Duration::from_secs(7200));
            prop_assert!(d >= exp.shortest().min(Duration::from_secs(30)));
        }
    }
}
