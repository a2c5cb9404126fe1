//! Reloading rules while leases, permits and modes are live.
//!
//! The leasing layer is driven on simulated networks (virtual clock,
//! random link delays, shards reloading at different instants, as the
//! engine's mailboxes do); the `Shaper` facade over the real crossbeam
//! transport. Every property prints its proptest inputs on failure; rerun
//! with them to replay.

use std::time::Duration;

use proptest::prelude::*;
use sluice_shaping::backoff::{Mode, Outcome};
use sluice_shaping::config::Rules;
use sluice_shaping::lease::{Acquire, ConnAcquire, LeaseConfig, LimitSpec, Permit};
use sluice_shaping::sim::SimNetwork;
use sluice_shaping::transport::{mesh, ShardLink};
use sluice_shaping::units::{Nanos, Rate};
use sluice_shaping::{Destination, Shaper};

const MS: u64 = 1_000_000;

fn config() -> LeaseConfig {
    LeaseConfig {
        lease_min: Duration::from_millis(40),
        lease_max: Duration::from_millis(400),
        tokens_per_lease: 64,
        retry_hint: Duration::from_millis(1),
        permit_idle: Duration::from_millis(50),
    }
}

fn cases() -> u32 {
    std::env::var("SLUICE_SIM_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32)
}

/// The uses conform to a full token bucket of `rate` from `from` on: at
/// most `burst + floor(w * count / period)` in any window of length `w`.
fn check_envelope(uses: &[u64], rate: Rate, from: u64, to: u64) -> Result<(), String> {
    let period = u128::from(rate.period_ns());
    let capacity = u128::from(rate.burst) * period;
    let mut level = capacity;
    let mut last = from;
    for (index, at) in uses
        .iter()
        .copied()
        .filter(|t| *t >= from && *t < to)
        .enumerate()
    {
        level = (level + u128::from(at - last) * u128::from(rate.count)).min(capacity);
        last = at;
        if level < period {
            return Err(format!("use #{index} at {at}ns exceeds {rate:?}"));
        }
        level -= period;
    }
    Ok(())
}

/// `shards` shards, all sending to one rate limit as fast as it lets them,
/// from `before` to `after` at `reload_ms` (each shard at its own instant
/// within `stagger_ms`); returns every use and the instant the last shard
/// reloaded.
fn run_rate_reload(
    shards: u32,
    before: Rate,
    after: Rate,
    max_delay_ms: u64,
    stagger_ms: u64,
    seed: u64,
) -> (Vec<u64>, u64) {
    let mut net = SimNetwork::new(shards, config(), Duration::from_millis(max_delay_ms), seed);
    let key = "provider:test/max_message_rate";
    let ids: Vec<_> = net
        .shapers
        .iter_mut()
        .map(|s| s.rate_limit(key, before, Nanos(0)))
        .collect();
    let reload_ms = 1_000;
    let reload_at: Vec<u64> = (0..shards)
        .map(|_| (reload_ms + net.rng().below_or_eq(stagger_ms)) * MS)
        .collect();
    let last_reload = reload_at.iter().copied().max().unwrap_or(0);
    let mut uses = Vec::new();
    for step in 0..3_000u64 {
        let now = Nanos(step * MS);
        for shard in 0..shards as usize {
            if reload_at[shard] == now.0 {
                let s = &mut net.shapers[shard];
                s.set_generation(1);
                s.rebase(ids[shard], LimitSpec::Rate(after), now);
            }
            for _ in 0..8 {
                match net.shapers[shard].try_acquire_message(&ids[shard..=shard], now) {
                    Acquire::Ok => uses.push(now.0),
                    Acquire::Wait(_) => break,
                }
            }
        }
        net.step(now);
    }
    (uses, last_reload)
}

fn rate(count: u64, burst: u64) -> Rate {
    Rate {
        count,
        period: Duration::from_secs(1),
        burst,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// A tighter rate after a reload: before it the old limit holds; once
    /// every shard has reloaded and the home's broadcast has arrived, the
    /// new (lower) one holds in every window, so far fewer tokens go out.
    #[test]
    fn a_tighter_rate_grants_fewer_tokens(
        shards in 1u32..=6,
        count in 40u64..400,
        factor in 3u64..10,
        max_delay_ms in 0u64..10,
        stagger_ms in 0u64..50,
        seed in any::<u64>(),
    ) {
        let before = rate(count, (count / 4).max(2));
        let after = rate((count / factor).max(1), (count / factor / 4).max(1));
        let (uses, last) = run_rate_reload(shards, before, after, max_delay_ms, stagger_ms, seed);
        let end = 3_000 * MS;
        prop_assert!(check_envelope(&uses, before, 0, 1_000 * MS).is_ok(), "{:?}", check_envelope(&uses, before, 0, 1_000 * MS));
        let settled = last + 2 * max_delay_ms * MS + MS;
        prop_assert!(check_envelope(&uses, after, settled, end).is_ok(), "{:?}", check_envelope(&uses, after, settled, end));
        // Busy before: close to the old rate (the limit was the bottleneck).
        let first_second = uses.iter().filter(|t| **t < 1_000 * MS).count() as u64;
        prop_assert!(first_second * 2 >= count, "only {first_second} of {count} before the reload");
    }

    /// A looser rate after a reload: shares are fractions, so the shards
    /// spend at the new rate without waiting for their leases to end; the
    /// last second sees well over what the old limit allowed.
    #[test]
    fn a_looser_rate_grants_more_tokens(
        shards in 1u32..=6,
        count in 20u64..100,
        factor in 3u64..8,
        max_delay_ms in 0u64..10,
        stagger_ms in 0u64..50,
        seed in any::<u64>(),
    ) {
        let before = rate(count, (count / 4).max(2));
        let after = rate(count * factor, (count * factor / 4).max(2));
        let (uses, last) = run_rate_reload(shards, before, after, max_delay_ms, stagger_ms, seed);
        let end = 3_000 * MS;
        prop_assert!(check_envelope(&uses, before, 0, 1_000 * MS).is_ok());
        // The whole run never exceeds the looser limit.
        prop_assert!(check_envelope(&uses, after, 0, end).is_ok());
        let settled = last + 2 * max_delay_ms * MS + MS;
        // One lease period to size the shares to the new demand.
        let from = (settled + 400 * MS).max(2_000 * MS);
        let got = uses.iter().filter(|t| **t >= from).count() as u64;
        let old_allowed = before.burst + count * (end - from) / (1_000 * MS);
        let new_allowed = count * factor * (end - from) / (1_000 * MS);
        prop_assert!(got > old_allowed, "{got} tokens after the reload, the old limit allowed {old_allowed}");
        prop_assert!(got * 2 >= new_allowed, "{got} tokens of the new {new_allowed}");
    }

    /// A lowered connection maximum, while more permits than it are in
    /// use on several shards: no permit is granted while the total in use
    /// is at or above the new maximum; permits taken before the reload
    /// release cleanly; and once they are gone, every shard gets permits
    /// again, never more than the new maximum at once.
    #[test]
    fn a_lowered_max_connections_waits_for_releases(
        shards in 1u32..=6,
        max_before in 4u32..16,
        max_after in 1u32..4,
        max_delay_ms in 0u64..5,
        stagger_ms in 0u64..50,
        seed in any::<u64>(),
    ) {
        let mut net = SimNetwork::new(shards, config(), Duration::from_millis(max_delay_ms), seed);
        let ids: Vec<_> = net.shapers.iter_mut().map(|s| s.connection_limit("provider:test/max_connections", max_before, Nanos(0))).collect();
        let reload_at: Vec<u64> = (0..shards).map(|_| (500 + net.rng().below_or_eq(stagger_ms)) * MS).collect();
        let settled = reload_at.iter().max().copied().unwrap_or(0) + 2 * max_delay_ms * MS + MS;
        // Permits taken before the reload are held until 1.5 s.
        let hold_until = 1_500 * MS;
        let mut open: Vec<Vec<(u64, Permit)>> = (0..shards).map(|_| Vec::new()).collect();
        let mut got_after: Vec<bool> = vec![false; shards as usize];
        let mut peak_before = 0usize;
        for step in 0..3_000u64 {
            let now = Nanos(step * MS);
            for shard in 0..shards as usize {
                if reload_at[shard] == now.0 {
                    let s = &mut net.shapers[shard];
                    s.set_generation(1);
                    s.rebase(ids[shard], LimitSpec::Connections(max_after), now);
                }
                let mut keep = Vec::new();
                for (until, permit) in open[shard].drain(..) {
                    if until <= now.0 {
                        net.shapers[shard].release_connection(permit, now);
                    } else {
                        keep.push((until, permit));
                    }
                }
                open[shard] = keep;
                if net.rng().below_or_eq(1) == 0 {
                    let in_use: usize = open.iter().map(Vec::len).sum();
                    match net.shapers[shard].try_acquire_connection(ids[shard], now) {
                        ConnAcquire::Ok(permit) => {
                            if now.0 >= settled {
                                prop_assert!((in_use as u32) < max_after, "a permit at {in_use} in use, new max {max_after}, step {step}");
                            }
                            if now.0 >= hold_until {
                                got_after[shard] = true;
                            }
                            let until = if now.0 < 500 * MS { hold_until } else { now.0 + (1 + net.rng().below_or_eq(20)) * MS };
                            open[shard].push((until, permit));
                        }
                        ConnAcquire::Wait(_) => {}
                        ConnAcquire::Denied => prop_assert!(false, "denied"),
                    }
                }
            }
            let in_use: usize = open.iter().map(Vec::len).sum();
            if now.0 < 500 * MS {
                peak_before = peak_before.max(in_use);
            }
            net.step(now);
        }
        prop_assert!(peak_before as u32 > max_after, "the test never held more than the new max ({peak_before})");
        prop_assert!(got_after.iter().all(|g| *g), "some shard never got a permit after the reload: {got_after:?}");
    }
}

// The `Shaper` facade: rules files, the real transport.

fn pump(links: &mut [ShardLink], shapers: &mut [Shaper], now: Nanos) {
    for _ in 0..4 {
        for (link, shaper) in links.iter_mut().zip(shapers.iter_mut()) {
            link.pump(shaper, now).expect("every shard alive");
        }
    }
}

fn shapers(text: &str, shards: u32) -> (Vec<Shaper>, Vec<ShardLink>) {
    let rules = Rules::parse(text, "rules.toml").expect("valid rules");
    let shapers = (0..shards)
        .map(|i| Shaper::new(i, shards, rules.clone(), config()))
        .collect();
    (shapers, mesh(shards, 64))
}

/// Tokens each of `dests` (one per shard) gets over `window` of busy
/// sending, in 1 ms steps from `*now`.
fn tokens_over(
    shapers: &mut [Shaper],
    links: &mut [ShardLink],
    dests: &[Destination],
    now: &mut Nanos,
    window: Duration,
) -> u64 {
    let end = now.plus(window);
    let mut tokens = 0;
    while *now < end {
        for (shaper, dest) in shapers.iter_mut().zip(dests) {
            while shaper.try_acquire_message(dest, *now) == Acquire::Ok {
                tokens += 1;
            }
        }
        pump(links, shapers, *now);
        *now = now.plus(Duration::from_millis(1));
    }
    tokens
}

fn reload(shapers: &mut [Shaper], text: &str, generation: u64, now: Nanos) {
    let rules = Rules::parse(text, "rules.toml").expect("valid rules");
    for s in shapers.iter_mut() {
        s.replace_rules(rules.clone(), generation, now);
    }
}

/// Three shards sending to a domain whose rate is raised, then lowered, by
/// reloads: each window's tokens follow the rule in force, and the
/// destinations resolved before a reload see the new value too (same key).
#[test]
fn shapers_follow_a_reloaded_rate_both_ways() {
    let slow = "[domain.\"d.example\"]\nmax_message_rate = \"20/s burst 2\"\n";
    let fast = "[domain.\"d.example\"]\nmax_message_rate = \"200/s burst 2\"\n";
    let (mut shapers, mut links) = shapers(slow, 3);
    let dests: Vec<Destination> = shapers
        .iter_mut()
        .map(|s| s.destination("d.example", &[], None, 0, Nanos(0)))
        .collect();
    let mut now = Nanos(MS);
    let second = Duration::from_secs(1);
    let slow_1 = tokens_over(&mut shapers, &mut links, &dests, &mut now, second);
    assert!(slow_1 <= 2 + 20, "{slow_1} tokens in a second at 20/s");
    reload(&mut shapers, fast, 1, now);
    assert!(shapers.iter().all(|s| s.generation() == 1));
    // One lease period for the shares to follow the new demand.
    tokens_over(&mut shapers, &mut links, &dests, &mut now, second);
    let fast_1 = tokens_over(&mut shapers, &mut links, &dests, &mut now, second);
    assert!(
        (100..=202).contains(&fast_1),
        "{fast_1} tokens in a second after raising to 200/s"
    );
    reload(&mut shapers, slow, 2, now);
    let slow_2 = tokens_over(&mut shapers, &mut links, &dests, &mut now, second);
    assert!(
        slow_2 <= 2 + 2 + 20,
        "{slow_2} tokens in the second after lowering to 20/s"
    );
}

/// A lowered `max_connections` with permits held on two shards: none is
/// granted until enough are released; releasing the permits taken before
/// the reload is fine; afterwards one connection at a time.
#[test]
fn shapers_lower_max_connections_with_permits_held() {
    let (mut shapers, mut links) = shapers("[default]\nmax_connections = 6\n", 2);
    let dests: Vec<Destination> = shapers
        .iter_mut()
        .map(|s| s.destination("d.example", &[], None, 0, Nanos(0)))
        .collect();
    let mut now = Nanos(MS);
    let mut held: Vec<(usize, Permit)> = Vec::new();
    for _ in 0..50 {
        for (i, shaper) in shapers.iter_mut().enumerate() {
            if let ConnAcquire::Ok(p) = shaper.try_acquire_connection(&dests[i], now) {
                held.push((i, p));
            }
        }
        pump(&mut links, &mut shapers, now);
        now = now.plus(Duration::from_millis(1));
    }
    assert_eq!(held.len(), 6, "both shards together hold the old max");
    reload(&mut shapers, "[default]\nmax_connections = 1\n", 1, now);
    pump(&mut links, &mut shapers, now);
    // Release five of six, one at a time: nothing new gets through while
    // one or more is still in use.
    while held.len() > 1 {
        let (i, p) = held.pop().expect("non-empty");
        shapers[i].release_connection(p, now);
        for _ in 0..20 {
            for (j, shaper) in shapers.iter_mut().enumerate() {
                let got = shaper.try_acquire_connection(&dests[j], now);
                assert!(
                    !matches!(got, ConnAcquire::Ok(_)),
                    "a permit with {} of the old ones still in use",
                    held.len()
                );
            }
            pump(&mut links, &mut shapers, now);
            now = now.plus(Duration::from_millis(1));
        }
    }
    let (i, p) = held.pop().expect("the last one");
    shapers[i].release_connection(p, now);
    let mut open = 0;
    for _ in 0..50 {
        for (j, shaper) in shapers.iter_mut().enumerate() {
            if let ConnAcquire::Ok(p) = shaper.try_acquire_connection(&dests[j], now) {
                open += 1;
                held.push((j, p));
            }
        }
        pump(&mut links, &mut shapers, now);
        now = now.plus(Duration::from_millis(1));
    }
    assert_eq!(open, 1, "the new max is one connection");
    for (j, p) in held {
        shapers[j].release_connection(p, now);
    }
}

const BACKOFF: &str = r#"
[provider.big]
match = [{ domain_suffix = "big.example" }]
max_connections = 10

[[provider.big.backoff]]
name = "slow-down"
code = "421"
backoff_max_connections = 2
recover_after = "1h"
"#;

fn too_many(domain: &str) -> Outcome<'_> {
    Outcome {
        code: 421,
        enhanced: Some("4.7.0"),
        text: "too many",
        destination: domain,
        source: None,
    }
}

/// A site in backoff keeps its mode over a reload whose rules still have
/// backoff rules, and returns to normal (limits freed on every shard) when
/// the new rules have none; a rule no longer producing a limit key leaves
/// it to the destinations that hold it.
#[test]
fn backoff_modes_across_reloads() {
    let (mut shapers, mut links) = shapers(BACKOFF, 2);
    let dests: Vec<Destination> = shapers
        .iter_mut()
        .map(|s| s.destination("a.big.example", &[], None, 0, Nanos(0)))
        .collect();
    let mut now = Nanos(MS);
    let v = shapers[0].feed_outcome(&dests[0], &too_many("a.big.example"), now);
    assert!(v.change.is_some());
    pump(&mut links, &mut shapers, now);
    // Same backoff rules, a higher base: the mode stays.
    let looser = BACKOFF.replace("max_connections = 10", "max_connections = 20");
    let rules = Rules::parse(&looser, "rules.toml").expect("valid");
    let done = shapers[0].replace_rules(rules.clone(), 1, now);
    assert_eq!(done.modes_kept, 1, "{done:?}");
    assert_eq!(done.limits_changed, 1, "{done:?}");
    shapers[1].replace_rules(rules, 1, now);
    pump(&mut links, &mut shapers, now);
    assert!(matches!(shapers[0].mode(&dests[0]), Mode::Backoff { .. }));
    let mut held = Vec::new();
    for _ in 0..30 {
        now = now.plus(Duration::from_millis(1));
        for (i, s) in shapers.iter_mut().enumerate() {
            if let ConnAcquire::Ok(p) = s.try_acquire_connection(&dests[i], now) {
                held.push((i, p));
            }
        }
        pump(&mut links, &mut shapers, now);
    }
    assert_eq!(held.len(), 2, "the backoff's 2 connections still hold");
    // No backoff rules any more, and the provider's limit is gone.
    let plain = "[default]\nmax_connections = 3\n";
    let rules = Rules::parse(plain, "rules.toml").expect("valid");
    let done = shapers[0].replace_rules(rules.clone(), 2, now);
    assert_eq!(done.modes_ended, 1, "{done:?}");
    assert_eq!(
        done.limits_unused, 1,
        "provider:big/max_connections: {done:?}"
    );
    shapers[1].replace_rules(rules, 2, now);
    let changes = shapers[0].take_timed_changes();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].1.mode, Mode::Normal);
    assert_eq!(shapers[0].mode(&dests[0]), Mode::Normal);
    // The old destinations still hold provider:big's limit, now free of
    // the restriction: its configured 20.
    for _ in 0..30 {
        now = now.plus(Duration::from_millis(1));
        for (i, s) in shapers.iter_mut().enumerate() {
            if let ConnAcquire::Ok(p) = s.try_acquire_connection(&dests[i], now) {
                held.push((i, p));
            }
        }
        pump(&mut links, &mut shapers, now);
    }
    assert_eq!(held.len(), 20, "restriction lifted on both shards");
    // Destinations resolved now use the new rules: [default] 3.
    let fresh: Vec<Destination> = shapers
        .iter_mut()
        .map(|s| s.destination("a.big.example", &[], None, 0, now))
        .collect();
    assert_eq!(fresh[0].rule.site, "domain:a.big.example");
    assert_eq!(fresh[0].rule.max_connections.value, 3);
    for (i, p) in held {
        shapers[i].release_connection(p, now);
    }
    // The old limits go once their destinations do.
    drop(dests);
    let before = shapers[0].lease().limits() + shapers[1].lease().limits();
    for _ in 0..100 {
        now = now.plus(Duration::from_millis(100));
        pump(&mut links, &mut shapers, now);
    }
    let after = shapers[0].lease().limits() + shapers[1].lease().limits();
    assert!(after < before, "{before} limits before, {after} after");
    drop(fresh);
}
