//! The glommio resolver against a real DNS server on loopback
//! (`tests/dns_server.py`). Needs python3 with dnslib.

mod common;

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::rc::Rc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::SeedableRng;
use sluice_dns::{
    AddressPolicy, FailReason, Lookup, MxConfig, MxOutcome, QueryType, Question, Rdata, Resolver,
    TempError,
};

use common::{config, run, DnsServer, ManualClock};

fn hosts(outcome: &MxOutcome) -> Vec<(String, u16, Vec<String>)> {
    match outcome {
        MxOutcome::Resolved { hosts, .. } => hosts
            .iter()
            .map(|h| {
                (
                    h.name.clone(),
                    h.preference,
                    h.addrs.iter().map(ToString::to_string).collect(),
                )
            })
            .collect(),
        other => panic!("not resolved: {other:?}"),
    }
}

fn failure(outcome: &MxOutcome, permanent: bool) -> (u16, String, FailReason) {
    let f = match (outcome, permanent) {
        (MxOutcome::PermFail(f), true) | (MxOutcome::TempFail(f), false) => f,
        other => panic!("unexpected outcome {other:?}"),
    };
    (
        f.reply.code.value(),
        f.reply.enhanced.expect("enhanced code").to_string(),
        f.reason.clone(),
    )
}

fn rng() -> SmallRng {
    SmallRng::seed_from_u64(7)
}

#[test]
fn mx_hosts_in_preference_order_with_both_families() {
    let server = DnsServer::start();
    let outcome = run(async move {
        let resolver = Resolver::new(config(vec![server.addr]));
        let outcome = resolver.resolve_mx("MX.test.", &mut rng()).await;
        // The CNAME alias resolves to the same hosts.
        let aliased = resolver.resolve_mx("alias.test", &mut rng()).await;
        assert_eq!(hosts(&aliased), hosts(&outcome));
        outcome
    });
    assert_eq!(
        hosts(&outcome),
        vec![
            (
                "mx1.mx.test".into(),
                10,
                vec!["127.0.0.1".into(), "::1".into()]
            ),
            ("mx2.mx.test".into(), 20, vec!["127.0.0.2".into()]),
        ]
    );
    let MxOutcome::Resolved { implicit, site, .. } = outcome else {
        unreachable!()
    };
    assert!(!implicit);
    assert_eq!(site.as_str(), "mx1.mx.test,mx2.mx.test");
}

#[test]
fn equal_preferences_are_shuffled() {
    let server = DnsServer::start();
    let addr = server.addr;
    let orders = run(async move {
        let resolver = Resolver::new(config(vec![addr]));
        let mut orders = HashSet::new();
        for seed in 0..32 {
            let mut rng = SmallRng::seed_from_u64(seed);
            let outcome = resolver.resolve_mx("shuffle.test", &mut rng).await;
            let order: Vec<String> = hosts(&outcome).into_iter().map(|h| h.0).collect();
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(
                sorted,
                [
                    "a.shuffle.test",
                    "b.shuffle.test",
                    "c.shuffle.test",
                    "d.shuffle.test"
                ]
            );
            orders.insert(order);
        }
        orders
    });
    assert!(
        orders.len() >= 6,
        "only {} distinct orders in 32 seeds",
        orders.len()
    );
    // Later resolutions came from the cache: one MX query in all.
    assert_eq!(server.count("shuffle.test"), 1);
}

#[test]
fn addresses_of_the_domain_only_without_mx() {
    let server = DnsServer::start();
    let addr = server.addr;
    let outcome = run(async move {
        Resolver::new(config(vec![addr]))
            .resolve_mx("plain.test", &mut rng())
            .await
    });
    assert_eq!(
        hosts(&outcome),
        vec![("plain.test".into(), 0, vec!["127.0.0.3".into()])]
    );
    assert!(matches!(
        outcome,
        MxOutcome::Resolved { implicit: true, .. }
    ));
}

#[test]
fn null_mx_fails_without_address_lookups() {
    let server = DnsServer::start();
    let addr = server.addr;
    let outcome = run(async move {
        Resolver::new(config(vec![addr]))
            .resolve_mx("nullmx.test", &mut rng())
            .await
    });
    assert_eq!(
        failure(&outcome, true),
        (556, "5.1.10".into(), FailReason::NullMx)
    );
    // Only the MX query reached the server; the domain's A was not asked.
    assert_eq!(server.count("nullmx.test"), 1);
}

#[test]
fn nxdomain_is_permanent() {
    let server = DnsServer::start();
    let addr = server.addr;
    let outcome = run(async move {
        Resolver::new(config(vec![addr]))
            .resolve_mx("nowhere.test", &mut rng())
            .await
    });
    assert_eq!(
        failure(&outcome, true),
        (550, "5.1.2".into(), FailReason::NxDomain)
    );
}

#[test]
fn servfail_is_temporary_and_never_falls_back() {
    let server = DnsServer::start();
    let addr = server.addr;
    let outcome = run(async move {
        Resolver::new(config(vec![addr]))
            .resolve_mx("servfail.test", &mut rng())
            .await
    });
    assert_eq!(
        failure(&outcome, false),
        (
            451,
            "4.4.3".into(),
            FailReason::Temporary(TempError::ServerError { rcode: 2 })
        )
    );
    // Two attempts over one server, MX only.
    assert_eq!(server.count("servfail.test"), 2);
    let addr = server.addr;
    let refused = run(async move {
        let resolver = Resolver::new(config(vec![addr]));
        resolver
            .lookup(&Question::new("refused.test", QueryType::A))
            .await
    });
    assert_eq!(refused, Err(TempError::ServerError { rcode: 5 }));
}

#[test]
fn truncated_answers_are_retried_over_tcp() {
    let server = DnsServer::start();
    let addr = server.addr;
    let (tc, big, stats) = run(async move {
        let resolver = Resolver::new(config(vec![addr]));
        let tc = resolver.resolve_mx("tc.test", &mut rng()).await;
        let big = resolver
            .lookup(&Question::new("big.test", QueryType::Mx))
            .await;
        // Sent whole over UDP (over 4096 bytes): treated as truncated.
        let oversize = resolver
            .lookup(&Question::new("oversize.test", QueryType::Mx))
            .await;
        let Ok(Lookup::Records(records)) = oversize else {
            panic!("{oversize:?}")
        };
        assert_eq!(records.len(), 150);
        (tc, big, resolver.stats())
    });
    assert_eq!(
        hosts(&tc),
        vec![(
            "mx1.mx.test".into(),
            10,
            vec!["127.0.0.1".into(), "::1".into()]
        )]
    );
    assert_eq!(server.tcp_count("tc.test"), 1);
    // 60 MX records do not fit the 1232-byte EDNS payload.
    let Ok(Lookup::Records(records)) = big else {
        panic!("{big:?}")
    };
    assert_eq!(records.len(), 60);
    assert!(records
        .iter()
        .all(|r| matches!(r, Rdata::Mx { preference: 10, .. })));
    assert_eq!(server.tcp_count("big.test"), 1);
    assert_eq!(server.tcp_count("oversize.test"), 1);
    assert_eq!(stats.tcp_queries, 3);
}

#[test]
fn positive_ttl_expires_on_the_injected_clock() {
    let server = DnsServer::start();
    let addr = server.addr;
    let counts = run(async move {
        let clock = Rc::new(ManualClock::new());
        let resolver = Resolver::with_clock(config(vec![addr]), clock.clone());
        let q = Question::new("ttl.test", QueryType::A);
        let mut counts = Vec::new();
        let first = resolver.lookup(&q).await.unwrap();
        assert_eq!(
            first,
            Lookup::Records(vec![Rdata::Addr("127.0.0.4".parse().unwrap())].into())
        );
        counts.push(server.count("ttl.test"));
        clock.advance(Duration::from_secs(4));
        assert_eq!(resolver.lookup(&q).await.unwrap(), first);
        counts.push(server.count("ttl.test"));
        // TTL 5 s: expired at 5 s.
        clock.advance(Duration::from_secs(1));
        assert_eq!(resolver.lookup(&q).await.unwrap(), first);
        counts.push(server.count("ttl.test"));
        assert_eq!(resolver.stats().cache_hits, 1);
        counts
    });
    assert_eq!(counts, vec![1, 1, 2]);
}

#[test]
fn negative_answers_are_cached_for_the_soa_minimum() {
    let server = DnsServer::start();
    let addr = server.addr;
    let counts = run(async move {
        let clock = Rc::new(ManualClock::new());
        let resolver = Resolver::with_clock(config(vec![addr]), clock.clone());
        let nx = Question::new("gone.test", QueryType::Mx);
        let nodata = Question::new("plain.test", QueryType::Aaaa);
        let mut counts = Vec::new();
        for _ in 0..2 {
            assert_eq!(resolver.lookup(&nx).await, Ok(Lookup::NxDomain));
            assert_eq!(resolver.lookup(&nodata).await, Ok(Lookup::NoData));
        }
        counts.push((server.count("gone.test"), server.count("plain.test")));
        // SOA TTL 60, MINIMUM 30: negative TTL 30 s (RFC 2308 §5).
        clock.advance(Duration::from_secs(29));
        resolver.lookup(&nx).await.unwrap();
        resolver.lookup(&nodata).await.unwrap();
        counts.push((server.count("gone.test"), server.count("plain.test")));
        clock.advance(Duration::from_secs(1));
        resolver.lookup(&nx).await.unwrap();
        resolver.lookup(&nodata).await.unwrap();
        counts.push((server.count("gone.test"), server.count("plain.test")));
        counts
    });
    assert_eq!(counts, vec![(1, 1), (1, 1), (2, 2)]);
}

#[test]
fn loopback_is_refused_unless_allowed() {
    let server = DnsServer::start();
    let addr = server.addr;
    let (local, public) = run(async move {
        let mut cfg = config(vec![addr]);
        cfg.mx = MxConfig {
            policy: AddressPolicy::default(),
            ..MxConfig::default()
        };
        let resolver = Resolver::new(cfg);
        (
            resolver.resolve_mx("mx.test", &mut rng()).await,
            resolver.resolve_mx("public.test", &mut rng()).await,
        )
    });
    assert_eq!(
        failure(&local, true),
        (550, "5.4.4".into(), FailReason::AddressRefused)
    );
    // A route that allows loopback overrides the resolver's rules.
    let addr = server.addr;
    let routed = run(async move {
        let mut cfg = config(vec![addr]);
        cfg.mx.policy = AddressPolicy::default();
        let resolver = Resolver::new(cfg);
        let route = MxConfig {
            policy: AddressPolicy::allow_loopback(),
            ..MxConfig::default()
        };
        resolver
            .resolve_mx_with("mx.test", &route, &mut rng())
            .await
    });
    assert_eq!(hosts(&routed).len(), 2);
    assert_eq!(
        hosts(&public),
        vec![("mx.public.test".into(), 10, vec!["192.0.2.10".into()])]
    );
}

#[test]
fn a_silent_server_times_out_and_the_next_one_answers() {
    let server = DnsServer::start();
    // Bound and never read: queries to it time out.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let addr = server.addr;
    let (outcome, stats, all_silent) = run(async move {
        let mut cfg = config(vec![silent_addr, addr]);
        cfg.timeout = Duration::from_millis(200);
        cfg.attempts = 1;
        let resolver = Resolver::new(cfg.clone());
        let outcome = resolver.resolve_mx("public.test", &mut rng()).await;
        cfg.nameservers = vec![silent_addr];
        let lonely = Resolver::new(cfg);
        let all_silent = lonely
            .lookup(&Question::new("public.test", QueryType::Mx))
            .await;
        (outcome, resolver.stats(), all_silent)
    });
    assert_eq!(hosts(&outcome).len(), 1);
    // The MX query and the host's A and AAAA queries each waited once.
    assert_eq!(stats.timeouts, 3);
    assert_eq!(all_silent, Err(TempError::Timeout));
    drop(silent);
}

#[test]
fn a_closed_port_moves_on_without_waiting() {
    let server = DnsServer::start();
    let closed: SocketAddr = {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    let addr = server.addr;
    let (result, stats) = run(async move {
        let mut cfg = config(vec![closed, addr]);
        cfg.timeout = Duration::from_secs(5);
        let resolver = Resolver::new(cfg);
        let r = resolver
            .lookup(&Question::new("mx1.mx.test", QueryType::A))
            .await;
        (r, resolver.stats())
    });
    assert!(matches!(result, Ok(Lookup::Records(_))), "{result:?}");
    assert_eq!(stats.timeouts, 0);
    assert_eq!(stats.udp_queries, 2);
}

#[test]
fn concurrent_lookups_share_one_query() {
    let server = DnsServer::start();
    let addr = server.addr;
    let (a, b, stats) = run(async move {
        let resolver = Resolver::new(config(vec![addr]));
        let q = Question::new("slow.test", QueryType::A);
        let first = glommio::spawn_local({
            let resolver = resolver.clone();
            let q = q.clone();
            async move { resolver.lookup(&q).await }
        });
        let second = glommio::spawn_local({
            let resolver = resolver.clone();
            async move { resolver.lookup(&q).await }
        });
        (first.await, second.await, resolver.stats())
    });
    assert!(matches!(a, Ok(Lookup::Records(_))));
    assert_eq!(a, b);
    assert_eq!(stats.joined, 1);
    assert_eq!(server.count("slow.test"), 1);
}

#[test]
fn outstanding_queries_are_bounded() {
    let server = DnsServer::start();
    let addr = server.addr;
    let results = run(async move {
        let mut cfg = config(vec![addr]);
        cfg.outstanding_max = 2;
        let resolver = Resolver::new(cfg);
        let tasks: Vec<_> = (0..6)
            .map(|i| {
                let resolver = resolver.clone();
                glommio::spawn_local(async move {
                    resolver
                        .lookup(&Question::new(format!("slow{i}.test"), QueryType::A))
                        .await
                })
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await);
        }
        results
    });
    assert!(
        results.iter().all(|r| matches!(r, Ok(Lookup::Records(_)))),
        "{results:?}"
    );
    let max = server.control("maxinflight");
    assert!((1..=2).contains(&max), "server saw {max} queries at once");
}

#[test]
fn no_nameservers_is_a_temporary_failure() {
    let outcome = run(async move {
        Resolver::new(config(vec![]))
            .resolve_mx("mx.test", &mut rng())
            .await
    });
    assert_eq!(
        failure(&outcome, false),
        (
            451,
            "4.4.3".into(),
            FailReason::Temporary(TempError::NoNameservers)
        )
    );
}

#[test]
fn rotate_spreads_queries_over_servers() {
    let first = DnsServer::start();
    let second = DnsServer::start();
    let (a, b) = (first.addr, second.addr);
    let results = run(async move {
        let mut cfg = config(vec![a, b]);
        cfg.rotate = true;
        let resolver = Resolver::new(cfg);
        let mut results = Vec::new();
        for i in 0..4 {
            let q = Question::new(format!("n{i}.test"), QueryType::A);
            results.push(resolver.lookup(&q).await);
        }
        results
    });
    assert!(
        results.iter().all(|r| *r == Ok(Lookup::NxDomain)),
        "{results:?}"
    );
    let on_first: u64 = (0..4).map(|i| first.count(&format!("n{i}.test"))).sum();
    let on_second: u64 = (0..4).map(|i| second.count(&format!("n{i}.test"))).sum();
    assert_eq!((on_first, on_second), (2, 2));
}

/// `lookup_ttl` says how long an answer holds (its TTL fresh, the time
/// left when cached), and `resolve_mx_ttl` the smallest over the answers
/// an MX resolution used: here the NODATA for mx2.mx.test's AAAA (SOA
/// minimum 30 s) under 300 s records.
#[test]
fn answers_say_how_long_they_hold() {
    let server = DnsServer::start();
    let addr = server.addr;
    let (fresh, cached, mx, mx_later) = run(async move {
        let clock = Rc::new(ManualClock::new());
        let resolver = Resolver::with_clock(config(vec![addr]), clock.clone());
        let q = Question::new("ttl.test", QueryType::A);
        let fresh = resolver.lookup_ttl(&q).await.unwrap().1;
        clock.advance(Duration::from_secs(4));
        let cached = resolver.lookup_ttl(&q).await.unwrap().1;
        let rules = MxConfig {
            policy: AddressPolicy {
                allow_loopback: true,
                ..AddressPolicy::default()
            },
            ..MxConfig::default()
        };
        let (outcome, mx) = resolver.resolve_mx_ttl("mx.test", &rules, &mut rng()).await;
        assert!(matches!(outcome, MxOutcome::Resolved { .. }), "{outcome:?}");
        clock.advance(Duration::from_secs(10));
        let (_, mx_later) = resolver.resolve_mx_ttl("mx.test", &rules, &mut rng()).await;
        (fresh, cached, mx, mx_later)
    });
    assert_eq!(fresh, Some(Duration::from_secs(5)));
    assert_eq!(cached, Some(Duration::from_secs(1)));
    assert_eq!(mx, Some(Duration::from_secs(30)));
    assert_eq!(mx_later, Some(Duration::from_secs(20)));
}
