//! Rules files: the example parses, layering and keys are right, and bad
//! files report every problem with file, key path and reason.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use sluice_shaping::backoff::{BackoffAction, Mode, Outcome};
use sluice_shaping::config::{validate, ConfigError, RuleCache, Rules, TlsPolicy};
use sluice_shaping::lease::{Acquire, ConnAcquire, LeaseConfig};
use sluice_shaping::units::{parse_rate, Nanos, RetrySchedule};
use sluice_shaping::Shaper;

fn example() -> Rules {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/rules.toml");
    Rules::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn problems(text: &str) -> Vec<String> {
    match Rules::parse(text, "rules.toml") {
        Err(ConfigError::Invalid { file, problems }) => {
            assert_eq!(file, "rules.toml");
            problems.iter().map(ToString::to_string).collect()
        }
        other => panic!("expected problems, got {other:?}"),
    }
}

#[test]
fn example_validates_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shaping.toml");
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/rules.toml"))
            .unwrap();
    std::fs::File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let summary = validate(&path).unwrap();
    assert_eq!(
        (
            summary.domains,
            summary.providers,
            summary.sources,
            summary.pools
        ),
        (1, 1, 2, 1)
    );
    assert_eq!(summary.backoff_rules, 4);
    let missing = validate(&dir.path().join("absent.toml")).unwrap_err();
    assert!(matches!(missing, ConfigError::Io { .. }), "{missing}");
}

#[test]
fn layering_and_limit_keys() {
    let rules = example();
    // A Google-hosted domain: provider limits, shared key.
    let hosted = rules.effective(
        "corp.example.org",
        &["aspmx.l.google.com", "alt1.aspmx.l.google.com"],
        None,
    );
    assert_eq!(hosted.site, "provider:google");
    let rate = hosted.max_message_rate.as_ref().unwrap();
    assert_eq!(rate.key, "provider:google/max_message_rate");
    assert_eq!((rate.value.count, rate.value.burst), (20_000, 500));
    assert_eq!(hosted.tls, TlsPolicy::RequiredVerified);
    assert_eq!(hosted.max_connections.value, 64);
    // Backoff rules: most specific layer first.
    let names: Vec<_> = hosted.backoff.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["google-4.7.28", "generic-throttle", "no-such-user"]);
    // gmail.com matches by domain suffix even before MX lookup.
    assert_eq!(
        rules.effective("GMAIL.com", &[], None).site,
        "provider:google"
    );
    // Mixed MX hosting is not Google.
    assert_eq!(
        rules
            .effective("mixed.org", &["aspmx.l.google.com", "mx.other.net"], None)
            .site,
        "domain:mixed.org"
    );
    // Provider×source override.
    let via_ip2 = rules.effective("gmail.com", &[], Some("ip2"));
    assert_eq!(
        via_ip2.max_connections.key,
        "provider:google@ip2/max_connections"
    );
    assert_eq!(via_ip2.max_connections.value, 8);
    assert_eq!(
        via_ip2.max_message_rate.as_ref().unwrap().key,
        "provider:google/max_message_rate"
    );

    // A configured domain: domain beats default; domain×source beats both.
    let example = rules.effective("example.com", &["mx.example.com"], Some("ip1"));
    assert_eq!(example.site, "domain:example.com");
    assert_eq!(
        example.max_message_rate.as_ref().unwrap().key,
        "domain:example.com@ip1/max_message_rate"
    );
    assert_eq!(
        example.max_message_rate.as_ref().unwrap().value,
        parse_rate("100/min").unwrap()
    );
    assert_eq!(
        example.max_connections.key,
        "domain:example.com/max_connections"
    );
    assert_eq!(example.connect_timeout, Duration::from_secs(30));
    assert_eq!(example.command_timeout, Duration::from_secs(300));
    assert_eq!(
        example.retry_after,
        RetrySchedule::List(vec![
            Duration::from_secs(600),
            Duration::from_secs(1200),
            Duration::from_secs(3600)
        ])
    );
    assert!(matches!(
        example.backoff[0].action,
        BackoffAction::Suspend { .. }
    ));

    // Anything else: default values, keyed by its own domain.
    let other = rules.effective("Unknown.NET.", &[], None);
    assert_eq!(other.site, "domain:unknown.net");
    assert_eq!(
        other.max_message_rate.as_ref().unwrap().key,
        "domain:unknown.net/max_message_rate"
    );
    assert_eq!(other.max_recipients_per_transaction, 100);
    assert_eq!(other.pool.as_deref(), Some("main"));
}

#[test]
fn cache_returns_the_same_rule() {
    let mut cache = RuleCache::new(example(), 2);
    let a = cache.effective("example.com", &[], None);
    let b = cache.effective("EXAMPLE.com", &[], None);
    assert!(std::rc::Rc::ptr_eq(&a, &b));
    cache.effective("a.org", &[], None);
    cache.effective("b.org", &[], None);
    assert!(cache.len() <= 2);
}

#[test]
fn warmup_and_pools() {
    let rules = example();
    let ip2 = &rules.sources["ip2"];
    let day = 86_400;
    // 2026-11-01T00:00:00Z in Unix seconds.
    let started = ip2.warmup.as_ref().unwrap().1;
    assert_eq!(started, 1_793_491_200);
    assert_eq!(ip2.rate_at(started + day).unwrap().value.count, 50);
    assert_eq!(ip2.rate_at(started + 8 * day).unwrap().value.count, 1_000);
    assert_eq!(
        ip2.rate_at(started + 100 * day).unwrap().value.count,
        400_000
    );
    // Before the start: the first step.
    assert_eq!(ip2.rate_at(0).unwrap().value.count, 50);
    assert_eq!(
        rules.sources["ip1"].rate_at(0).unwrap().key,
        "source:ip1/max_message_rate"
    );
    let pool = &rules.pools["main"];
    let picks: Vec<_> = (0..4).map(|r| pool.pick(r).unwrap()).collect();
    assert_eq!(picks, ["ip1", "ip1", "ip1", "ip2"]);
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let text = r#"
[default]
max_message_rate = "300/fortnight"
max_conections = 3

[domain."bad domain"]
tls = "sometimes"

[domain."ok.example"]
pool = "missing"
max_connections = 0
retry_after = "exp(5m, 2, max 1h)"

[[domain."ok.example".backoff]]
name = "x"
code = "42"
enhanced = "4.7"
text = "(unclosed"

[[domain."ok.example".backoff]]
name = "never-recovers"
code = "421"
backoff_max_connections = 1

[provider.nomatch]
max_connections = 3

[source.s1]
bind = "not-an-ip"
ehlo = "mta.example.net"
warmup = "nope"
warmup_start = "2026-02-30"

[pool.p]
sources = { s1 = 0, ghost = 1 }

[frobnicate]
x = 1
"#;
    let found = problems(text);
    let expect = [
        "default.max_conections: unknown field `max_conections`",
        "domain.\"ok.example\".pool: no [pool.missing] section",
        "domain.\"ok.example\".max_connections: must be at least 1",
        "domain.\"ok.example\".retry_after: `exp(5m, 2, max 1h)`",
        "domain.\"ok.example\".backoff[0].code: `42`",
        "domain.\"ok.example\".backoff[0].enhanced: `4.7`",
        "domain.\"ok.example\".backoff[0].text: bad regular expression",
        "domain.\"ok.example\".backoff[1]: never returns to normal",
        "domain.\"bad domain\".tls: `sometimes`",
        "domain.\"bad domain\": not a domain name",
        "provider.nomatch.match: a provider needs at least one",
        "source.s1.bind: `not-an-ip` is not an IP address",
        "source.s1.warmup: no [warmup.nope] section",
        "source.s1.warmup_start: `2026-02-30`",
        "pool.p.sources.s1: weight must be at least 1",
        "pool.p.sources.ghost: no [source.ghost] section",
        "frobnicate: unknown section",
    ];
    // The unknown key stops `[default]` from deserializing, so its bad rate
    // is not reached; every other section is still checked.
    for want in expect {
        assert!(
            found.iter().any(|p| p.starts_with(want)),
            "missing `{want}` in:\n{}",
            found.join("\n")
        );
    }
}

#[test]
fn semantic_problems_are_all_collected() {
    let found = problems(
        "[default]\nmax_message_rate = \"300/fortnight\"\nconnect_timeout = \"0s\"\nmax_age = \"5 days\"\n",
    );
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(found[0].starts_with("default.max_message_rate: `300/fortnight`: unknown unit"));
    let err = Rules::parse("[default]\nmax_message_rate = \"0/s\"\n", "x.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("x.toml: default.max_message_rate: a rate of 0 never sends"),
        "{err}"
    );
}

#[test]
fn syntax_errors_name_the_file() {
    let err = Rules::parse("[default\n", "broken.toml").unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { .. }));
    assert!(err
        .to_string()
        .starts_with("broken.toml: TOML syntax error"));
}

#[test]
fn shaper_end_to_end_on_one_shard() {
    let mut shaper = Shaper::new(0, 1, example(), LeaseConfig::default());
    let now = Nanos(0);
    let dest = shaper.destination("example.com", &[], Some("ip1"), 0, now);
    // 100/min for example.com via ip1: the burst of 100 goes at once.
    let mut sent = 0;
    while shaper.try_acquire_message(&dest, now) == Acquire::Ok {
        sent += 1;
        assert!(sent <= 100, "more than the burst");
    }
    assert_eq!(sent, 100);
    // Connections: 4 for example.com.
    let permits: Vec<_> = (0..4)
        .map(|_| match shaper.try_acquire_connection(&dest, now) {
            ConnAcquire::Ok(p) => p,
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(matches!(
        shaper.try_acquire_connection(&dest, now),
        ConnAcquire::Wait(_)
    ));
    for p in permits {
        shaper.release_connection(p, now);
    }
    // A blocked reply suspends the queue: connections denied until it ends.
    let blocked = Outcome {
        code: 554,
        enhanced: None,
        text: "You are BLOCKED",
        destination: "example.com",
        source: Some("ip1"),
    };
    let verdict = shaper.feed_outcome(&dest, &blocked, Nanos(1));
    assert_eq!(
        verdict.change.as_ref().and_then(|c| c.rule.as_deref()),
        Some("example-blocked")
    );
    assert!(matches!(shaper.mode(&dest), Mode::Suspended { .. }));
    assert_eq!(
        shaper.try_acquire_connection(&dest, Nanos(2)),
        ConnAcquire::Denied
    );
    let hour = Nanos(1).plus(Duration::from_secs(3600));
    assert_eq!(shaper.next_wakeup().map(|t| t <= hour), Some(true));
    shaper.poll(hour);
    assert_eq!(shaper.mode(&dest), Mode::Normal);
    assert!(matches!(
        shaper.try_acquire_connection(&dest, hour),
        ConnAcquire::Ok(_)
    ));
    // A 5.1.1 bounces the message without changing the mode.
    let unknown = Outcome {
        code: 550,
        enhanced: Some("5.1.1"),
        text: "no such user",
        destination: "example.com",
        source: None,
    };
    let verdict = shaper.feed_outcome(&dest, &unknown, hour);
    assert_eq!(verdict.bounce.as_deref(), Some("no-such-user"));
}

mod never_panics {
    use proptest::prelude::*;
    use sluice_shaping::config::Rules;
    use sluice_shaping::import::{import_kumo, import_pmta};

    fn line() -> impl Strategy<Value = String> {
        let keys = prop::sample::select(vec![
            "max_connections",
            "max_message_rate",
            "retry_after",
            "tls",
            "pool",
            "match",
            "bind",
            "ehlo",
            "sources",
            "steps",
            "name",
            "code",
            "text",
            "action",
            "bogus",
            "connection_limit",
            "enable_tls",
            "automation",
            "regex",
            "duration",
        ]);
        let values = prop::sample::select(vec![
            "3",
            "0",
            "-1",
            "\"300/min\"",
            "\"0/s\"",
            "\"10m,1h\"",
            "\"exp(1m, x2, max 1h)\"",
            "\"required\"",
            "\"x\"",
            "[{ mx_suffix = \"a.b\" }]",
            "[]",
            "{ a = 1 }",
            "\"(\"",
            "\"421\"",
            "\"backoff\"",
            "\"suspend\"",
            "true",
            "\"1.2.3.4\"",
            "[{ after = \"0d\", max_message_rate = \"5/day\" }]",
            "\"Suspend\"",
        ]);
        let headers = prop::sample::select(vec![
            "[default]",
            "[domain.\"a.example\"]",
            "[provider.p]",
            "[source.s]",
            "[pool.p]",
            "[warmup.w]",
            "[[default.backoff]]",
            "[domain.\"a.example\".source.s]",
            "[zzz]",
            "[\"default\"]",
            "[[\"default\".automation]]",
        ]);
        prop_oneof![
            (keys, values).prop_map(|(k, v)| format!("{k} = {v}")),
            headers.prop_map(str::to_string),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn rules_and_importers_never_panic(lines in proptest::collection::vec(line(), 0..24)) {
            let text = lines.join("\n");
            if let Ok(rules) = Rules::parse(&text, "fuzz.toml") {
                let _ = rules.effective("a.example", &["mx.a.b"], Some("s"));
            }
            let _ = import_kumo(&text, "fuzz.toml");
            let _ = import_pmta(&text.replace('[', "<").replace(']', ">"), "fuzz.conf");
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = Rules::parse(&text, "fuzz.toml");
            let _ = import_kumo(&text, "fuzz.toml");
            let _ = import_pmta(&text, "fuzz.conf");
        }
    }
}
