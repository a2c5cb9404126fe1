//! Shaping decisions per second per shard.
//!
//! ```text
//! cargo bench -p sluice-shaping --bench shaping
//! ```
//!
//! * `acquire/local_tokens_in_hand`: one rate limit, this shard is its home
//!   and holds plenty of tokens (goal: under 50 ns).
//! * `acquire/shaper_site_and_source`: the engine-facing call with a
//!   destination that draws on a site rate and a source rate.
//! * `lease/N_shards`: N simulated shards saturating one provider limit
//!   (100,000/s) whose home is one of them: acquire calls plus the leasing
//!   protocol and the simulated network, per decision. Before timing, the
//!   cross-shard message count per 100 tokens granted at steady state is
//!   printed (goal: under 1).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice_shaping::config::Rules;
use sluice_shaping::lease::{Acquire, LeaseConfig, ShardShaper};
use sluice_shaping::sim::steady_state;
use sluice_shaping::units::{Nanos, Rate};
use sluice_shaping::Shaper;

fn local_acquire(c: &mut Criterion) {
    let mut group = c.benchmark_group("acquire");
    group.throughput(Throughput::Elements(1));
    let mut shaper = ShardShaper::new(0, 1, LeaseConfig::default());
    let rate = Rate {
        count: 1_000_000_000,
        period: Duration::from_secs(1),
        burst: 1_000_000,
    };
    let id = shaper.rate_limit("domain:bench.example/max_message_rate", rate, Nanos(0));
    let mut now = 0u64;
    group.bench_function("local_tokens_in_hand", |b| {
        b.iter(|| {
            now += 1;
            let ok = shaper.try_acquire_message(black_box(&[id]), Nanos(now));
            assert_eq!(
                ok,
                Acquire::Ok,
                "the bench must measure the tokens-in-hand path"
            );
            // The engine polls its shaper from its event loop; so do we.
            if now % 4096 == 0 {
                shaper.poll(Nanos(now)).clear();
            }
        })
    });

    let rules = Rules::parse(
        "[default]\nmax_message_rate = \"1_000_000_000/s burst 1_000_000\"\n\
         [source.ip1]\nbind = \"192.0.2.1\"\nehlo = \"mta.example.net\"\n\
         max_message_rate = \"1_000_000_000/s burst 1_000_000\"\n",
        "bench.toml",
    )
    .expect("bench rules are valid");
    let mut shaper = Shaper::new(0, 1, rules, LeaseConfig::default());
    let destination = shaper.destination("bench.example", &[], Some("ip1"), 0, Nanos(0));
    let mut now = 0u64;
    group.bench_function("shaper_site_and_source", |b| {
        b.iter(|| {
            now += 1;
            let ok = shaper.try_acquire_message(black_box(&destination), Nanos(now));
            assert_eq!(ok, Acquire::Ok);
            if now % 4096 == 0 {
                shaper.poll(Nanos(now)).clear();
            }
        })
    });
    group.finish();
}

fn leasing(c: &mut Criterion) {
    let rate = Rate {
        count: 100_000,
        period: Duration::from_secs(1),
        burst: 1_000,
    };
    let key = "provider:bench/max_message_rate";
    let step = Duration::from_micros(100);
    for shards in [2u32, 8] {
        for demand in [50u64, 90, 150] {
            let s = steady_state(
                shards,
                key,
                rate,
                demand,
                LeaseConfig::default(),
                step,
                Duration::from_secs(2),
                Duration::from_secs(20),
            );
            eprintln!(
                "lease/{shards}_shards demand {demand}% of the limit: {} tokens, {} cross-shard messages, \
                 {:.4} messages per 100 tokens, {} decisions",
                s.tokens,
                s.messages,
                s.messages_per_100_tokens(),
                s.decisions
            );
        }
    }
    let mut group = c.benchmark_group("lease");
    group.sample_size(20);
    for shards in [2u32, 8] {
        let run = || {
            steady_state(
                shards,
                key,
                rate,
                150,
                LeaseConfig::default(),
                step,
                Duration::ZERO,
                Duration::from_millis(500),
            )
        };
        let decisions = run().decisions;
        group.throughput(Throughput::Elements(decisions));
        group.bench_function(format!("{shards}_shards"), |b| b.iter(|| black_box(run())));
    }
    group.finish();
}

criterion_group!(benches, local_acquire, leasing);
criterion_main!(benches);
