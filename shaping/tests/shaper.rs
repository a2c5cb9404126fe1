//! Two shards' `Shaper`s over the real crossbeam transport (pumped in turn
//! on one thread, with a virtual clock): a backoff seen on one shard
//! restricts a provider's limits on the other, and recovery frees them.

use std::time::Duration;

use sluice_shaping::backoff::{Mode, Outcome};
use sluice_shaping::config::Rules;
use sluice_shaping::lease::{home_shard, ConnAcquire, LeaseConfig};
use sluice_shaping::transport::{mesh, ShardLink};
use sluice_shaping::units::Nanos;
use sluice_shaping::{Destination, Shaper};

const RULES: &str = r#"
[default]
max_connections = 16

[provider.bigmail]
match = [{ domain_suffix = "bigmail.example" }]
max_connections = 10
max_message_rate = "1000/s"

[[provider.bigmail.backoff]]
name = "slow-down"
code = "421"
text = "(?i)too many"
backoff_max_connections = 2
backoff_max_message_rate = "10/s"
recover_after = "1m"
"#;

fn pump(links: &mut [ShardLink], shapers: &mut [Shaper], now: Nanos) {
    for _ in 0..4 {
        for (link, shaper) in links.iter_mut().zip(shapers.iter_mut()) {
            link.pump(shaper, now).expect("both shards alive");
        }
    }
}

#[test]
fn backoff_on_one_shard_restricts_the_other() {
    let rules = Rules::parse(RULES, "rules.toml").expect("valid rules");
    let mut shapers: Vec<Shaper> = (0..2)
        .map(|i| Shaper::new(i, 2, rules.clone(), LeaseConfig::default()))
        .collect();
    let mut links = mesh(2, 8);
    let home = home_shard("provider:bigmail", 2) as usize;
    let other = 1 - home;
    let dests: Vec<Destination> = shapers
        .iter_mut()
        .map(|s| s.destination("a.bigmail.example", &[], None, 0, Nanos(0)))
        .collect();
    assert_eq!(dests[0].rule.site, "provider:bigmail");

    // The non-home shard sees the 421 and backs off.
    let reply = Outcome {
        code: 421,
        enhanced: Some("4.7.0"),
        text: "Too many messages",
        destination: "a.bigmail.example",
        source: None,
    };
    let verdict = shapers[other].feed_outcome(&dests[other], &reply, Nanos(1_000));
    assert_eq!(
        verdict.change.as_ref().and_then(|c| c.rule.as_deref()),
        Some("slow-down")
    );
    assert!(matches!(
        shapers[other].mode(&dests[other]),
        Mode::Backoff { .. }
    ));

    // After the messages flow, the home shard obeys the restriction too: it
    // can hold at most 2 connections at once.
    let mut now = Nanos(2_000);
    pump(&mut links, &mut shapers, now);
    let mut held = Vec::new();
    for _ in 0..50 {
        now = now.plus(Duration::from_millis(1));
        if let ConnAcquire::Ok(p) = shapers[home].try_acquire_connection(&dests[home], now) {
            held.push(p);
        }
        pump(&mut links, &mut shapers, now);
    }
    assert_eq!(
        held.len(),
        2,
        "the home shard must obey the backoff's 2 connections"
    );
    for p in held {
        shapers[home].release_connection(p, now);
    }

    // Recovery after a minute frees the limit everywhere.
    now = Nanos(1_000).plus(Duration::from_secs(61));
    pump(&mut links, &mut shapers, now);
    assert_eq!(shapers[other].mode(&dests[other]), Mode::Normal);
    // The timer's change is handed out once, for the operator's log.
    let changes = shapers[other].take_timed_changes();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].0, "provider:bigmail");
    assert_eq!(changes[0].1.mode, Mode::Normal);
    assert!(shapers[other].take_timed_changes().is_empty());
    let mut held = Vec::new();
    for _ in 0..200 {
        now = now.plus(Duration::from_millis(1));
        for shard in [home, other] {
            if let ConnAcquire::Ok(p) = shapers[shard].try_acquire_connection(&dests[shard], now) {
                held.push((shard, p));
            }
        }
        pump(&mut links, &mut shapers, now);
    }
    assert_eq!(
        held.len(),
        10,
        "back to the provider's 10 connections across both shards"
    );
}

/// Dropping destinations lets the shard forget their limits: memory stays
/// bounded by the destinations in use, not by every domain ever seen.
#[test]
fn dropped_destinations_release_their_limits() {
    let rules =
        Rules::parse("[default]\nmax_message_rate = \"100/s\"\n", "rules.toml").expect("valid");
    let mut shaper = Shaper::new(0, 1, rules, LeaseConfig::default());
    let mut now = Nanos(0);
    let kept = shaper.destination("kept.example", &[], None, 0, now);
    for i in 0..500 {
        let dest = shaper.destination(&format!("d{i}.example"), &[], None, 0, now);
        let _ = shaper.try_acquire_message(&dest, now);
        if let ConnAcquire::Ok(permit) = shaper.try_acquire_connection(&dest, now) {
            shaper.release_connection(permit, now);
        }
    }
    assert!(shaper.lease().limits() >= 1_000);
    // Leases end and the limits go quiet; then they are reclaimed.
    for _ in 0..200 {
        now = now.plus(Duration::from_millis(100));
        shaper.poll(now);
    }
    assert_eq!(
        shaper.lease().limits(),
        2,
        "only kept.example's rate and connections remain"
    );
    drop(kept);
    for _ in 0..50 {
        now = now.plus(Duration::from_millis(100));
        shaper.poll(now);
    }
    assert_eq!(shaper.lease().limits(), 0);
}
