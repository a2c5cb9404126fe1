//! The MX state machine against an in-memory table of answers.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use rand::rngs::SmallRng;
use rand::SeedableRng;

use super::*;

type Zone = HashMap<(String, QueryType), Result<Lookup, TempError>>;

fn mx(records: &[(u16, &str)]) -> Result<Lookup, TempError> {
    Ok(Lookup::Records(
        records
            .iter()
            .map(|(p, e)| Rdata::Mx {
                preference: *p,
                exchange: (*e).into(),
            })
            .collect::<Vec<_>>()
            .into(),
    ))
}

fn addrs(ips: &[&str]) -> Result<Lookup, TempError> {
    Ok(Lookup::Records(
        ips.iter()
            .map(|s| Rdata::Addr(s.parse().unwrap()))
            .collect::<Vec<_>>()
            .into(),
    ))
}

fn zone(entries: Vec<(&str, QueryType, Result<Lookup, TempError>)>) -> Zone {
    entries
        .into_iter()
        .map(|(n, t, r)| ((n.to_owned(), t), r))
        .collect()
}

/// Runs the machine to completion; unknown questions get NODATA. Returns
/// the outcome and every question asked.
fn run(domain: &str, zone: &Zone, config: &MxConfig, seed: u64) -> (MxOutcome, Vec<Question>) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut lookup = MxLookup::new(domain, config);
    let mut asked = Vec::new();
    for _ in 0..100 {
        match lookup.step() {
            Step::Done(outcome) => return (outcome, asked),
            Step::Wait => panic!("waiting with everything answered"),
            Step::Ask(questions) => {
                for q in questions {
                    let answer = zone
                        .get(&(q.name.clone(), q.qtype))
                        .cloned()
                        .unwrap_or(Ok(Lookup::NoData));
                    lookup.answer(&q, answer, &mut rng);
                    asked.push(q);
                }
            }
        }
    }
    panic!("no outcome after 100 steps");
}

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

fn perm(outcome: &MxOutcome) -> &DnsFailure {
    match outcome {
        MxOutcome::PermFail(f) => f,
        other => panic!("not a permanent failure: {other:?}"),
    }
}

fn temp(outcome: &MxOutcome) -> &DnsFailure {
    match outcome {
        MxOutcome::TempFail(f) => f,
        other => panic!("not a temporary failure: {other:?}"),
    }
}

fn codes(f: &DnsFailure) -> (u16, String) {
    (
        f.reply.code.value(),
        f.reply.enhanced.map(|e| e.to_string()).unwrap_or_default(),
    )
}

#[test]
fn sorted_by_preference_with_addresses() {
    let z = zone(vec![
        (
            "example.com",
            QueryType::Mx,
            mx(&[(20, "mx2.example.com"), (10, "mx1.example.com")]),
        ),
        ("mx1.example.com", QueryType::A, addrs(&["192.0.2.1"])),
        ("mx1.example.com", QueryType::Aaaa, addrs(&["2001:db8::1"])),
        (
            "mx2.example.com",
            QueryType::A,
            addrs(&["192.0.2.2", "192.0.2.3"]),
        ),
    ]);
    let config = MxConfig::default();
    let (outcome, _) = run("Example.COM.", &z, &config, 1);
    assert_eq!(
        hosts(&outcome),
        vec![
            (
                "mx1.example.com".into(),
                10,
                vec!["192.0.2.1".into(), "2001:db8::1".into()]
            ),
            (
                "mx2.example.com".into(),
                20,
                vec!["192.0.2.2".into(), "192.0.2.3".into()]
            ),
        ]
    );
    let MxOutcome::Resolved { implicit, site, .. } = &outcome else {
        unreachable!()
    };
    assert!(!implicit);
    assert_eq!(site.as_str(), "mx1.example.com,mx2.example.com");
    let v6_first = MxConfig {
        prefer_ipv6: true,
        ..MxConfig::default()
    };
    let (outcome, _) = run("example.com", &z, &v6_first, 1);
    assert_eq!(
        hosts(&outcome)[0].2,
        vec!["2001:db8::1".to_string(), "192.0.2.1".into()]
    );
    let v4_only = MxConfig {
        ipv6: false,
        ..MxConfig::default()
    };
    let (outcome, asked) = run("example.com", &z, &v4_only, 1);
    assert_eq!(hosts(&outcome)[0].2, vec!["192.0.2.1".to_string()]);
    assert!(asked.iter().all(|q| q.qtype != QueryType::Aaaa));
}

#[test]
fn equal_preferences_are_shuffled_by_the_seed() {
    let names = ["a.mx.test", "b.mx.test", "c.mx.test", "d.mx.test"];
    let mut records: Vec<(u16, &str)> = names.iter().map(|n| (10, *n)).collect();
    records.push((5, "first.mx.test"));
    records.push((50, "last.mx.test"));
    let mut entries = vec![("shuffle.test", QueryType::Mx, mx(&records))];
    for n in names.iter().chain(&["first.mx.test", "last.mx.test"]) {
        entries.push((n, QueryType::A, addrs(&["192.0.2.9"])));
    }
    let z = zone(entries);
    let config = MxConfig::default();
    let mut orders = HashSet::new();
    for seed in 0..64 {
        let (outcome, _) = run("shuffle.test", &z, &config, seed);
        let order: Vec<String> = hosts(&outcome).into_iter().map(|h| h.0).collect();
        assert_eq!(order.first().unwrap(), "first.mx.test");
        assert_eq!(order.last().unwrap(), "last.mx.test");
        let mut middle = order[1..5].to_vec();
        orders.insert(middle.clone());
        middle.sort();
        assert_eq!(middle, names);
        // Same seed, same order.
        let (again, _) = run("shuffle.test", &z, &config, seed);
        assert_eq!(outcome, again);
    }
    // 24 permutations; 64 seeds must show several of them.
    assert!(orders.len() >= 8, "only {} orders", orders.len());
}

#[test]
fn implicit_mx_only_without_any_mx() {
    let z = zone(vec![("plain.test", QueryType::A, addrs(&["192.0.2.7"]))]);
    let (outcome, _) = run("plain.test", &z, &MxConfig::default(), 1);
    assert_eq!(
        hosts(&outcome),
        vec![("plain.test".into(), 0, vec!["192.0.2.7".into()])]
    );
    let MxOutcome::Resolved { implicit, site, .. } = &outcome else {
        unreachable!()
    };
    assert!(implicit);
    assert_eq!(site.as_str(), "=plain.test");

    // SERVFAIL on MX is temporary and never falls back to A.
    let z = zone(vec![
        (
            "flaky.test",
            QueryType::Mx,
            Err(TempError::ServerError { rcode: 2 }),
        ),
        ("flaky.test", QueryType::A, addrs(&["192.0.2.7"])),
    ]);
    let (outcome, asked) = run("flaky.test", &z, &MxConfig::default(), 1);
    assert_eq!(codes(temp(&outcome)), (451, "4.4.3".into()));
    assert_eq!(asked.len(), 1);

    // No MX and no addresses: permanent.
    let (outcome, _) = run("empty.test", &zone(vec![]), &MxConfig::default(), 1);
    let f = perm(&outcome);
    assert_eq!(codes(f), (550, "5.1.2".into()));
    assert_eq!(f.reason, FailReason::NoAddress);
}

#[test]
fn null_mx_fails_at_once() {
    let z = zone(vec![
        ("nomail.test", QueryType::Mx, mx(&[(0, "")])),
        ("nomail.test", QueryType::A, addrs(&["192.0.2.1"])),
    ]);
    let (outcome, asked) = run("nomail.test", &z, &MxConfig::default(), 1);
    let f = perm(&outcome);
    assert_eq!(codes(f), (556, "5.1.10".into()));
    assert_eq!(f.reason, FailReason::NullMx);
    assert_eq!(asked, vec![Question::new("nomail.test", QueryType::Mx)]);

    // A root exchange among real hosts is ignored, not fatal.
    let z = zone(vec![
        (
            "mixed.test",
            QueryType::Mx,
            mx(&[(0, ""), (10, "mx.mixed.test")]),
        ),
        ("mx.mixed.test", QueryType::A, addrs(&["192.0.2.1"])),
    ]);
    let (outcome, _) = run("mixed.test", &z, &MxConfig::default(), 1);
    assert_eq!(hosts(&outcome).len(), 1);
}

#[test]
fn nxdomain_and_invalid_domains_are_permanent() {
    let z = zone(vec![("gone.test", QueryType::Mx, Ok(Lookup::NxDomain))]);
    let (outcome, _) = run("gone.test", &z, &MxConfig::default(), 1);
    let f = perm(&outcome);
    assert_eq!(codes(f), (550, "5.1.2".into()));
    assert_eq!(f.reason, FailReason::NxDomain);
    let (outcome, asked) = run("bad..domain\r\n", &z, &MxConfig::default(), 1);
    let f = perm(&outcome);
    assert_eq!(f.reason, FailReason::InvalidDomain);
    assert!(!f.reply.text.contains(['\r', '\n']));
    assert!(asked.is_empty());
}

#[test]
fn refused_addresses_are_dropped_unless_allowed() {
    let z = zone(vec![
        (
            "local.test",
            QueryType::Mx,
            mx(&[(10, "lo.local.test"), (20, "pub.local.test")]),
        ),
        (
            "lo.local.test",
            QueryType::A,
            addrs(&["127.0.0.1", "10.1.1.1"]),
        ),
        ("lo.local.test", QueryType::Aaaa, addrs(&["::1", "fe80::1"])),
        ("pub.local.test", QueryType::A, addrs(&["192.0.2.4"])),
    ]);
    let (outcome, _) = run("local.test", &z, &MxConfig::default(), 1);
    assert_eq!(
        hosts(&outcome),
        vec![("pub.local.test".into(), 20, vec!["192.0.2.4".into()])]
    );
    let loopback = MxConfig {
        policy: AddressPolicy::allow_loopback(),
        ..MxConfig::default()
    };
    let (outcome, _) = run("local.test", &z, &loopback, 1);
    assert_eq!(
        hosts(&outcome)[0].2,
        vec!["127.0.0.1".to_string(), "::1".into()]
    );

    let z = zone(vec![
        ("only.test", QueryType::Mx, mx(&[(10, "lo.only.test")])),
        ("lo.only.test", QueryType::A, addrs(&["127.0.0.1"])),
    ]);
    let (outcome, _) = run("only.test", &z, &MxConfig::default(), 1);
    let f = perm(&outcome);
    assert_eq!(f.reason, FailReason::AddressRefused);
    assert_eq!(codes(f), (550, "5.4.4".into()));
}

#[test]
fn host_failures() {
    // One host fails temporarily, the other resolves: use the other.
    let z = zone(vec![
        (
            "two.test",
            QueryType::Mx,
            mx(&[(10, "a.two.test"), (20, "b.two.test")]),
        ),
        ("a.two.test", QueryType::A, Err(TempError::Timeout)),
        ("b.two.test", QueryType::A, addrs(&["192.0.2.2"])),
    ]);
    let (outcome, _) = run("two.test", &z, &MxConfig::default(), 1);
    assert_eq!(hosts(&outcome).len(), 1);
    // No host resolves, one temporarily: temporary.
    let z = zone(vec![
        (
            "two.test",
            QueryType::Mx,
            mx(&[(10, "a.two.test"), (20, "b.two.test")]),
        ),
        ("a.two.test", QueryType::A, Err(TempError::Timeout)),
        ("b.two.test", QueryType::A, Ok(Lookup::NxDomain)),
    ]);
    let (outcome, _) = run("two.test", &z, &MxConfig::default(), 1);
    assert_eq!(codes(temp(&outcome)), (451, "4.4.3".into()));
    // No host has any address: permanent.
    let z = zone(vec![(
        "two.test",
        QueryType::Mx,
        mx(&[(10, "a.two.test"), (20, "b.two.test")]),
    )]);
    let (outcome, _) = run("two.test", &z, &MxConfig::default(), 1);
    assert_eq!(codes(perm(&outcome)), (550, "5.4.4".into()));
}

#[test]
fn cnames_are_followed_and_bounded() {
    let z = zone(vec![
        (
            "alias.test",
            QueryType::Mx,
            Ok(Lookup::Alias(Rc::from("real.test"))),
        ),
        ("real.test", QueryType::Mx, mx(&[(10, "mx.real.test")])),
        (
            "mx.real.test",
            QueryType::A,
            Ok(Lookup::Alias(Rc::from("box.real.test"))),
        ),
        ("box.real.test", QueryType::A, addrs(&["192.0.2.5"])),
    ]);
    let (outcome, _) = run("alias.test", &z, &MxConfig::default(), 1);
    assert_eq!(
        hosts(&outcome),
        vec![("mx.real.test".into(), 10, vec!["192.0.2.5".into()])]
    );

    let z = zone(vec![
        (
            "loop.test",
            QueryType::Mx,
            Ok(Lookup::Alias(Rc::from("loop2.test"))),
        ),
        (
            "loop2.test",
            QueryType::Mx,
            Ok(Lookup::Alias(Rc::from("loop.test"))),
        ),
    ]);
    let (outcome, asked) = run("loop.test", &z, &MxConfig::default(), 1);
    assert_eq!(
        temp(&outcome).reason,
        FailReason::Temporary(TempError::CnameChain)
    );
    assert_eq!(asked.len(), MxConfig::default().cname_hops_max + 1);
}

#[test]
fn duplicates_and_host_limit() {
    let many: Vec<String> = (0..40).map(|i| format!("mx{i}.big.test")).collect();
    let mut records: Vec<(u16, &str)> = many.iter().map(|n| (10, n.as_str())).collect();
    records.push((5, "mx3.big.test"));
    let mut entries = vec![("big.test", QueryType::Mx, mx(&records))];
    for n in &many {
        entries.push((n.as_str(), QueryType::A, addrs(&["192.0.2.1"])));
    }
    let z = zone(entries);
    let config = MxConfig {
        hosts_max: 5,
        ..MxConfig::default()
    };
    let (outcome, asked) = run("big.test", &z, &config, 3);
    let h = hosts(&outcome);
    assert_eq!(h.len(), 5);
    assert_eq!(h[0].0, "mx3.big.test");
    assert_eq!(h[0].1, 5);
    assert_eq!(h.iter().filter(|x| x.0 == "mx3.big.test").count(), 1);
    assert_eq!(asked.len(), 1 + 5 * 2);
}

#[test]
fn stray_answers_are_ignored() {
    let config = MxConfig::default();
    let mut rng = SmallRng::seed_from_u64(1);
    let mut lookup = MxLookup::new("example.com", &config);
    // An answer before the question was asked changes nothing.
    lookup.answer(
        &Question::new("example.com", QueryType::Mx),
        Ok(Lookup::NxDomain),
        &mut rng,
    );
    assert_eq!(
        lookup.step(),
        Step::Ask(vec![Question::new("example.com", QueryType::Mx)])
    );
    assert_eq!(lookup.step(), Step::Wait);
    lookup.answer(
        &Question::new("other.com", QueryType::Mx),
        Ok(Lookup::NxDomain),
        &mut rng,
    );
    assert_eq!(lookup.step(), Step::Wait);
}

/// The lookup keeps the smallest TTL of the answers it used (MX, address
/// and negative answers), ignores stray answers' TTLs, and the refresh
/// interval is that TTL within the configured bounds.
#[test]
fn ttl_is_the_smallest_of_the_answers_used() {
    use std::time::Duration;
    let config = MxConfig::default();
    let mut rng = SmallRng::seed_from_u64(3);
    let mut lookup = MxLookup::new("ttl.test", &config);
    let secs = |s: u64| Some(Duration::from_secs(s));
    assert_eq!(lookup.ttl(), None);
    let Step::Ask(first) = lookup.step() else {
        panic!("asks MX first")
    };
    // A stray answer's TTL does not count.
    lookup.answer_with_ttl(
        &Question::new("other.test", QueryType::A),
        addrs(&["192.0.2.9"]),
        secs(1),
        &mut rng,
    );
    assert_eq!(lookup.ttl(), None);
    lookup.answer_with_ttl(&first[0], mx(&[(10, "mx.ttl.test")]), secs(300), &mut rng);
    assert_eq!(lookup.ttl(), secs(300));
    let Step::Ask(hosts) = lookup.step() else {
        panic!("asks addresses")
    };
    for q in &hosts {
        let (answer, ttl) = match q.qtype {
            QueryType::A => (addrs(&["192.0.2.1"]), secs(120)),
            // NODATA, cached by its SOA's minimum.
            _ => (Ok(Lookup::NoData), secs(60)),
        };
        lookup.answer_with_ttl(q, answer, ttl, &mut rng);
    }
    assert!(matches!(
        lookup.step(),
        Step::Done(MxOutcome::Resolved { .. })
    ));
    assert_eq!(lookup.ttl(), secs(60));
    assert_eq!(config.refresh_after(secs(60)), Duration::from_secs(60));
    assert_eq!(config.refresh_after(secs(2)), config.refresh_min);
    assert_eq!(config.refresh_after(None), config.refresh_min);
    assert_eq!(config.refresh_after(secs(86_400)), config.refresh_max);
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    /// A random answer for any question: records drawn from a small
    /// universe of names and addresses (public, loopback, private), so
    /// hosts, duplicates, null MX and CNAME loops all occur.
    fn answer_strategy() -> impl Strategy<Value = Result<Lookup, TempError>> {
        let names = prop::sample::select(vec!["", "a.test", "b.test", "c.test", "d.test"]);
        let ips = prop::sample::select(vec![
            "192.0.2.1",
            "192.0.2.2",
            "127.0.0.1",
            "10.0.0.1",
            "2001:db8::1",
            "::1",
            "fe80::1",
        ]);
        let mx = prop::collection::vec((0u16..4, names.clone()), 1..6).prop_map(|records| {
            Ok(Lookup::Records(
                records
                    .into_iter()
                    .map(|(preference, exchange)| Rdata::Mx {
                        preference,
                        exchange: exchange.into(),
                    })
                    .collect::<Vec<_>>()
                    .into(),
            ))
        });
        let addrs = prop::collection::vec(ips, 1..4).prop_map(|ips| {
            Ok(Lookup::Records(
                ips.into_iter()
                    .map(|s| Rdata::Addr(s.parse().unwrap()))
                    .collect::<Vec<_>>()
                    .into(),
            ))
        });
        prop_oneof![
            mx,
            addrs,
            Just(Ok(Lookup::NoData)),
            Just(Ok(Lookup::NxDomain)),
            names
                .prop_filter("alias needs a name", |n| !n.is_empty())
                .prop_map(|n| Ok(Lookup::Alias(Rc::from(n)))),
            Just(Err(TempError::Timeout)),
            Just(Err(TempError::ServerError { rcode: 2 })),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the answers, the machine ends within a bounded number
        /// of steps, and a resolved outcome only lists hosts with
        /// addresses the policy allows.
        #[test]
        fn ends_with_a_consistent_outcome(
            answers in prop::collection::vec(answer_strategy(), 64),
            allow_loopback in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let config = MxConfig {
                policy: AddressPolicy { allow_loopback, ..AddressPolicy::default() },
                hosts_max: 3,
                cname_hops_max: 2,
                ..MxConfig::default()
            };
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut lookup = MxLookup::new("start.test", &config);
            let mut next = answers.into_iter().cycle();
            let mut outcome = None;
            for _ in 0..64 {
                match lookup.step() {
                    Step::Done(o) => {
                        outcome = Some(o);
                        break;
                    }
                    Step::Wait => prop_assert!(false, "waiting with everything answered"),
                    Step::Ask(questions) => {
                        prop_assert!(!questions.is_empty());
                        for q in questions {
                            let answer = next.next().unwrap();
                            lookup.answer(&q, answer, &mut rng);
                        }
                    }
                }
            }
            let outcome = outcome.expect("an outcome within 64 steps");
            match outcome {
                MxOutcome::Resolved { hosts, .. } => {
                    prop_assert!(!hosts.is_empty() && hosts.len() <= 3);
                    let mut prev = 0;
                    for h in &hosts {
                        prop_assert!(!h.name.is_empty());
                        prop_assert!(h.preference >= prev);
                        prev = h.preference;
                        prop_assert!(!h.addrs.is_empty());
                        prop_assert!(h.addrs.iter().all(|ip| config.policy.permits(*ip)));
                    }
                }
                MxOutcome::PermFail(f) => {
                    prop_assert_eq!(f.reply.code.value() / 100, 5);
                    prop_assert!(!matches!(f.reason, FailReason::Temporary(_)));
                }
                MxOutcome::TempFail(f) => {
                    prop_assert_eq!(f.reply.code.value() / 100, 4);
                    prop_assert!(matches!(f.reason, FailReason::Temporary(_)));
                }
            }
        }
    }
}
