//! Queue tests: accounting, round-robin, scheduling, expiry, restore.

// std
use std::time::Duration;

// external
use proptest::prelude::*;
use sluice_spool::mem::MemStorage;
use sluice_spool::{NewMessage, Recipient, RecordRef, Spool, SpoolConfig};

// crate
use super::*;
use crate::config::{DomainPattern, Route};

fn sites() -> Sites {
    Sites::from_routes(&[
        Route {
            pattern: DomainPattern::Exact("a.test".into()),
            hosts: vec!["127.0.0.1:2600".parse().unwrap()],
        },
        Route {
            pattern: DomainPattern::Exact("b.test".into()),
            hosts: vec!["127.0.0.1:2600".parse().unwrap()],
        },
        Route {
            pattern: DomainPattern::Exact("c.test".into()),
            hosts: vec!["127.0.0.1:2700".parse().unwrap()],
        },
    ])
}

fn rec(n: u64) -> RecordRef {
    RecordRef {
        segment: 1,
        offset: (n * 64) as u32,
        len: 64,
    }
}

fn msg(id: u64, groups: &[(&str, &[u32])]) -> Accepted {
    Accepted {
        id,
        rec: rec(id),
        arrival_unix_ms: 1_000,
        expiry_unix_ms: 0,
        sender: "s@x.test".into(),
        pool: None,
        tenant: None,
        domains: groups
            .iter()
            .map(|(d, idx)| DomainRecipients {
                domain: d.to_string(),
                recipients: idx
                    .iter()
                    .map(|&i| AcceptedRecipient {
                        index: i,
                        address: format!("r{i}@{d}"),
                        dsn: Vec::new(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn queues() -> Queues {
    Queues::new(
        sites(),
        QueueConfig {
            max_age: Duration::from_secs(100),
            recipients_max: 1_000,
        },
    )
}

#[test]
fn sites_share_host_lists() {
    let s = sites();
    assert_eq!(s.len(), 3, "unrouted + two distinct host lists");
    assert_eq!(s.site_for("a.test"), s.site_for("b.test"));
    assert_ne!(s.site_for("a.test"), s.site_for("c.test"));
    assert_eq!(s.site_for("other.test"), UNROUTED);
    assert!(s.hosts(UNROUTED).is_empty());
}

#[test]
fn take_groups_recipients_of_one_message_and_round_robins() {
    let mut q = queues();
    q.enqueue(msg(1, &[("A.test", &[0, 1, 2]), ("c.test", &[3])]));
    q.enqueue(msg(2, &[("b.test", &[0])]));
    q.enqueue(msg(3, &[("a.test", &[0])]));
    q.check_invariants();
    let site = q.sites().site_for("a.test");
    let mut out = Vec::new();
    let d1 = q.take(site, 2_000, 2, &mut out).unwrap();
    assert_eq!(q.domain(d1), "a.test");
    assert_eq!(
        out.iter().map(|e| (e.id, e.index)).collect::<Vec<_>>(),
        [(1, 0), (1, 1)]
    );
    // Round robin: b.test next, then a.test's remainder.
    let d2 = q.take(site, 2_000, 10, &mut out).unwrap();
    assert_eq!(q.domain(d2), "b.test");
    assert_eq!(out.len(), 1);
    let d3 = q.take(site, 2_000, 10, &mut out).unwrap();
    assert_eq!(d3, d1);
    assert_eq!(
        out.iter().map(|e| (e.id, e.index)).collect::<Vec<_>>(),
        [(1, 2)]
    );
    let _ = q.take(site, 2_000, 10, &mut out).unwrap();
    assert_eq!(out[0].id, 3);
    assert!(q.take(site, 2_000, 10, &mut out).is_none());
    assert_eq!(q.counts().in_flight, 5);
    assert_eq!(q.counts().ready, 1, "c.test is another site");
    q.check_invariants();
}

#[test]
fn defer_schedules_and_promotes_in_time_order() {
    let mut q = queues();
    q.enqueue(msg(1, &[("a.test", &[0])]));
    q.enqueue(msg(2, &[("a.test", &[0])]));
    let site = q.sites().site_for("a.test");
    let mut out = Vec::new();
    let d = q.take(site, 2_000, 1, &mut out).unwrap();
    let e1 = out[0];
    q.take(site, 2_000, 1, &mut out).unwrap();
    let e2 = out[0];
    q.defer(d, Entry { attempts: 1, ..e1 }, 9_000);
    q.defer(d, Entry { attempts: 1, ..e2 }, 5_000);
    assert_eq!(q.next_due(), Some(5_000));
    assert_eq!(q.promote_due(4_999, 10), 0);
    assert_eq!(q.promote_due(5_000, 10), 1);
    q.take(site, 5_000, 1, &mut out).unwrap();
    assert_eq!((out[0].id, out[0].attempts), (2, 1));
    assert_eq!(q.promote_due(20_000, 10), 1);
    q.check_invariants();
    assert_eq!(q.len(), 2);
}

#[test]
fn max_age_is_enforced_in_every_place() {
    let mut q = queues();
    // Expiry = arrival (1 000) + max age (100 s) = 101 000.
    q.enqueue(msg(1, &[("a.test", &[0])]));
    q.enqueue(msg(2, &[("c.test", &[0])]));
    q.enqueue(msg(3, &[("a.test", &[0])]));
    let a = q.sites().site_for("a.test");
    let mut out = Vec::new();
    // Deferred past its expiry: due at the expiry, then expired.
    let d = q.take(a, 2_000, 1, &mut out).unwrap();
    q.defer(d, out[0], 500_000);
    assert_eq!(q.next_due(), Some(101_000));
    assert_eq!(q.promote_due(101_000, 10), 1);
    // Ready but unserved (c.test): the sweep finds it.
    assert_eq!(q.sweep_expired(101_000, 100), 2);
    // Ready and served: take skips it.
    assert!(q.take(a, 101_000, 1, &mut out).is_none());
    let mut expired = Vec::new();
    q.drain_expired(&mut expired);
    let mut ids: Vec<u64> = expired.iter().map(|(_, e)| e.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2, 3]);
    assert!(q.is_empty());
    q.check_invariants();
}

#[test]
fn requeue_puts_back_at_the_front() {
    let mut q = queues();
    q.enqueue(msg(1, &[("a.test", &[0])]));
    q.enqueue(msg(2, &[("a.test", &[0])]));
    let a = q.sites().site_for("a.test");
    let mut out = Vec::new();
    let d = q.take(a, 2_000, 1, &mut out).unwrap();
    q.requeue(d, out[0]);
    q.take(a, 2_000, 1, &mut out).unwrap();
    assert_eq!(out[0].id, 1);
    q.check_invariants();
}

#[test]
fn restore_rebuilds_pending_recipients_with_retry_state() {
    let cfg = SpoolConfig::default();
    let (spool, _) = Spool::open(MemStorage::new(), cfg).expect("in-memory spool opens");
    let rcpts = [
        Recipient {
            address: b"x@a.test",
            dsn: b"",
        },
        Recipient {
            address: b"y@c.test",
            dsn: b"",
        },
        Recipient {
            address: b"z@nowhere.test",
            dsn: b"",
        },
    ];
    let m = NewMessage {
        sender: b"s@x.test",
        dsn: b"",
        tenant: b"",
        campaign: b"",
        queue: b"",
        recipients: &rcpts,
        arrival_unix_ms: 1_000,
        expiry_unix_ms: 50_000,
        body: b"Subject: t\r\n\r\nhi\r\n",
    };
    let (id, rec) = spool.append(&m).unwrap();
    let mut q = queues();
    let live = sluice_spool::LiveMessage {
        id,
        rec,
        attempts: 3,
        next_attempt_unix_ms: 0,
        pending: vec![1, 2],
    };
    assert_eq!(q.restore(&spool, &live, 2_000).unwrap(), 2);
    let c = q.sites().site_for("c.test");
    let mut out = Vec::new();
    q.take(c, 2_000, 10, &mut out).unwrap();
    assert_eq!(
        (out[0].index, out[0].attempts, out[0].expiry_unix_ms),
        (1, 3, 50_000)
    );
    assert_eq!(q.site_ready(UNROUTED), 1);
    // A stored next attempt in the future schedules it.
    let later = sluice_spool::LiveMessage {
        next_attempt_unix_ms: 9_000,
        pending: vec![0],
        ..live.clone()
    };
    q.restore(&spool, &later, 2_000).unwrap();
    assert_eq!(q.next_due(), Some(9_000));
    let bad = sluice_spool::LiveMessage {
        pending: vec![7],
        ..live
    };
    assert!(matches!(
        q.restore(&spool, &bad, 2_000),
        Err(RestoreError::NoSuchRecipient { index: 7, .. })
    ));
}

#[derive(Debug, Clone)]
enum Op {
    Enqueue(u8, u8),
    Take(u8, u8),
    Settle(u8),
    Advance(u16),
    Sweep,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..4, 1u8..4).prop_map(|(d, n)| Op::Enqueue(d, n)),
        (0u8..3, 1u8..4).prop_map(|(s, n)| Op::Take(s, n)),
        (0u8..3).prop_map(Op::Settle),
        (0u16..60_000).prop_map(Op::Advance),
        Just(Op::Sweep),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every recipient enqueued ends exactly once: finished, or expired;
    /// and the counters always balance.
    #[test]
    fn every_recipient_ends_exactly_once(ops in proptest::collection::vec(op(), 1..200)) {
        let domains = ["a.test", "b.test", "c.test", "zz.test"];
        let mut q = queues();
        let mut now = 1_000u64;
        let mut next_id = 1u64;
        let mut enqueued = 0usize;
        let mut ended = std::collections::HashSet::new();
        let mut flight: Vec<(DestId, Entry)> = Vec::new();
        let mut out = Vec::new();
        let mut expired = Vec::new();
        for op in ops {
            match op {
                Op::Enqueue(d, n) => {
                    let idx: Vec<u32> = (0..u32::from(n)).collect();
                    let mut m = msg(next_id, &[(domains[d as usize], &idx)]);
                    m.arrival_unix_ms = now;
                    q.enqueue(m);
                    next_id += 1;
                    enqueued += usize::from(n);
                }
                Op::Take(s, n) => {
                    if let Some(d) = q.take(u32::from(s), now, usize::from(n), &mut out) {
                        flight.extend(out.iter().map(|e| (d, *e)));
                    }
                }
                Op::Settle(how) => {
                    if let Some((d, e)) = flight.pop() {
                        match how {
                            0 => {
                                q.finish(d);
                                prop_assert!(ended.insert((e.id, e.index)));
                            }
                            1 => q.defer(d, Entry { attempts: e.attempts + 1, ..e }, now + 10_000),
                            _ => q.requeue(d, e),
                        }
                    }
                }
                Op::Advance(ms) => {
                    now += u64::from(ms);
                    while q.promote_due(now, 16) == 16 {}
                }
                Op::Sweep => {
                    q.sweep_expired(now, 8);
                }
            }
            q.drain_expired(&mut expired);
            for (_, e) in &expired {
                prop_assert!(ended.insert((e.id, e.index)));
            }
            q.check_invariants();
            prop_assert_eq!(q.len() + ended.len(), enqueued);
        }
    }
}

#[test]
fn max_age_lookup_applies_per_destination() {
    let mut q = queues();
    q.set_max_age_lookup(Box::new(|d| {
        if d == "c.test" {
            Duration::from_secs(10)
        } else {
            Duration::from_secs(1_000)
        }
    }));
    q.enqueue(msg(1, &[("c.test", &[0]), ("a.test", &[1])]));
    // c.test: arrival 1 000 + 10 s; a.test: capped by the config's 100 s?
    // No: the lookup replaces the default, so 1 000 s.
    assert_eq!(q.sweep_expired(11_000, 100), 1);
    assert_eq!(q.sweep_expired(1_000_999, 100), 0);
    assert_eq!(q.sweep_expired(1_001_000, 100), 1);
}

#[test]
fn mx_assignment_rolls_domains_up_by_host_set_and_moves_their_work() {
    let mut q = queues();
    q.enqueue(msg(1, &[("x.test", &[0, 1]), ("y.test", &[2])]));
    q.enqueue(msg(2, &[("z.test", &[0])]));
    q.check_invariants();
    assert_eq!(q.site_ready(UNROUTED), 4);
    let (x, y, z) = (
        q.destination("x.test"),
        q.destination("y.test"),
        q.destination("z.test"),
    );
    assert_eq!(q.site_dests(UNROUTED).collect::<Vec<_>>(), [x, y, z]);
    // One of x's recipients is in flight when the resolution lands.
    let mut out = Vec::new();
    assert_eq!(q.take(UNROUTED, 2_000, 1, &mut out), Some(x));
    let hosts: Vec<SocketAddr> = vec!["127.0.0.2:25".parse().unwrap()];
    let names = vec!["mx.shared.test".to_string()];
    let sx = q
        .assign_mx(x, "mx.shared.test", hosts.clone(), names.clone(), 1, 10_000)
        .unwrap();
    let sy = q
        .assign_mx(y, "mx.shared.test", hosts.clone(), names.clone(), 1, 10_000)
        .unwrap();
    let sz = q
        .assign_mx(
            z,
            "mx.other.test",
            hosts,
            vec!["mx.other.test".into()],
            3,
            10_000,
        )
        .unwrap();
    assert_eq!(q.sites().spread(sz), 1, "capped at the addresses it has");
    assert_eq!(q.sites().spread(sx), 1);
    q.check_invariants();
    assert_eq!(sx, sy, "same MX host set, same site");
    assert_ne!(sx, sz);
    assert_eq!(q.sites().name(sx), "mx.shared.test");
    assert_eq!((q.site_ready(sx), q.site_in_flight(sx)), (2, 1));
    assert_eq!(q.site_ready(UNROUTED), 0);
    // The in-flight recipient settles against its new site.
    q.finish(x);
    q.check_invariants();
    // A recipient that becomes ready after the refresh time sends the
    // destination back to be resolved again.
    q.take(sz, 2_000, 10, &mut out).unwrap();
    q.defer(z, out[0], 20_000);
    q.promote_due(20_000, 10);
    q.check_invariants();
    assert_eq!(q.site_of(z), UNROUTED);
    assert_eq!(q.site_ready(UNROUTED), 1);
}

#[test]
fn take_all_settles_a_whole_destination() {
    let mut q = queues();
    q.enqueue(msg(1, &[("x.test", &[0, 1])]));
    q.enqueue(msg(2, &[("x.test", &[0])]));
    let x = q.destination("x.test");
    let mut out = Vec::new();
    q.take_all(x, 2_000, &mut out);
    assert_eq!(out.len(), 3);
    assert_eq!(q.site_ready(UNROUTED), 0);
    assert_eq!(q.site_dests(UNROUTED).count(), 0);
    q.check_invariants();
    for _ in 0..3 {
        q.finish(x);
    }
    assert!(q.is_empty());
}

#[test]
fn a_pool_gets_its_own_destination_and_site_variant() {
    let mut q = queues();
    let mut m = msg(1, &[("a.test", &[0]), ("x.test", &[1])]);
    m.pool = Some("blue".into());
    q.enqueue(m);
    q.enqueue(msg(2, &[("a.test", &[0])]));
    let plain = q.destination("a.test");
    let blue = q.destination_in("a.test", Some("blue"));
    assert_ne!(plain, blue);
    assert_ne!(q.site_of(plain), q.site_of(blue));
    assert_eq!(q.hosts(q.site_of(plain)), q.hosts(q.site_of(blue)));
    assert_eq!(q.sites().pool(q.site_of(blue)), Some("blue"));
    let x = q.destination_in("x.test", Some("blue"));
    let s = q
        .assign_mx(x, "mx.test", vec![], vec![], 1, 10_000)
        .unwrap();
    assert_eq!(q.sites().name(s), "mx.test@blue");
    assert_eq!(q.sites().pool(s), Some("blue"));
    q.check_invariants();
}

#[test]
fn pool_variants_of_routes_sharing_a_first_host_stay_distinct() {
    let h1: SocketAddr = "127.0.0.1:2600".parse().unwrap();
    let h2: SocketAddr = "127.0.0.1:2601".parse().unwrap();
    let h3: SocketAddr = "127.0.0.1:2602".parse().unwrap();
    let mut s = Sites::from_routes(&[
        Route {
            pattern: DomainPattern::Exact("a.test".into()),
            hosts: vec![h1, h2],
        },
        Route {
            pattern: DomainPattern::Exact("b.test".into()),
            hosts: vec![h1, h3],
        },
    ]);
    let a = s.site_for_pool("a.test", Some("p"));
    let b = s.site_for_pool("b.test", Some("p"));
    assert_ne!(a, b);
    assert_eq!(s.hosts(a), &[h1, h2]);
    assert_eq!(s.hosts(b), &[h1, h3]);
    assert_eq!(s.name(a), "127.0.0.1:2600,127.0.0.1:2601@p");
}
