//! MX delivery end to end: the real `sluice` binary resolves unrouted
//! domains through a scripted DNS server on loopback (`mx_dns.py`, Python
//! dnslib) and delivers to `sluice-sink` instances on 127.0.0.x (and ::1)
//! named by the MX records. `[dns] smtp_port` points the mail exchangers
//! at the sinks' port and `allow_loopback` lets the engine use loopback
//! addresses, so nothing leaves the machine.
//!
//! Build the binaries first: `cargo build --release --bins`; then
//! `cargo test -p sluice-tests --test mx`.

mod egress;

use std::path::Path;

use serde_json::json;
use sluice_tests::{free_port, Sink, TIMEOUT};

use egress::{inject, records_for, wait_until, Dns, Msg};

fn dns_section(dns_port: u16, smtp_port: u16) -> String {
    format!(
        r#"[dns]
nameservers = ["127.0.0.1:{dns_port}"]
timeout = "500ms"
attempts = 1
allow_loopback = true
smtp_port = {smtp_port}
"#
    )
}

/// The last record about `rcpt` once one of `kind` exists.
fn wait_for(dir: &Path, rcpt: &str, kind: &str) -> serde_json::Value {
    let mut found = None;
    wait_until(&format!("a {kind} record for {rcpt}"), || {
        found = records_for(dir, rcpt)
            .into_iter()
            .find(|r| r["type"] == kind);
        found.is_some()
    });
    found.expect("found")
}

#[test]
fn mx_order_next_host_a_fallback_ipv6_and_sites_by_host_set() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let two = egress::sink(dir.path(), "two", "127.0.0.2", port, &[]);
    let three = egress::sink(dir.path(), "three", "127.0.0.3", port, &[]);
    let six = egress::sink(dir.path(), "six", "[::1]", port, &[]);
    let dns = Dns::start(
        dir.path(),
        &json!({ "records": [
            // Preference 10 refuses (nothing listens on 127.0.0.5): the
            // next host, preference 20, gets the mail.
            ["order.test", "MX", 300, 20, "mx2.order.test."],
            ["order.test", "MX", 300, 10, "mx1.order.test."],
            ["mx1.order.test", "A", 300, "127.0.0.5"],
            ["mx2.order.test", "A", 300, "127.0.0.2"],
            // No MX at all: the domain's own A record.
            ["plain.test", "A", 300, "127.0.0.3"],
            // Two domains with the same MX host set share one site.
            ["shared-a.test", "MX", 300, 10, "mx2.order.test."],
            ["shared-b.test", "MX", 300, 5, "mx2.order.test."],
            // IPv6 only.
            ["v6.test", "MX", 300, 10, "mx.v6.test."],
            ["mx.v6.test", "AAAA", 300, "::1"],
        ]}),
    );
    let mut engine = egress::config(dir.path(), &dns_section(dns.port, port)).start();
    let inject_port = engine.port;
    inject(
        inject_port,
        &[
            Msg {
                id: "order",
                rcpts: &["u@order.test"],
                headers: "",
            },
            Msg {
                id: "plain",
                rcpts: &["u@plain.test"],
                headers: "",
            },
            Msg {
                id: "shared",
                rcpts: &["u@shared-a.test", "u@shared-b.test"],
                headers: "",
            },
            Msg {
                id: "v6",
                rcpts: &["u@v6.test"],
                headers: "",
            },
        ],
    );
    let order = wait_for(dir.path(), "u@order.test", "Delivery");
    assert_eq!(order["peer"], format!("127.0.0.2:{port}"), "{order}");
    let plain = wait_for(dir.path(), "u@plain.test", "Delivery");
    assert_eq!(plain["peer"], format!("127.0.0.3:{port}"), "{plain}");
    let a = wait_for(dir.path(), "u@shared-a.test", "Delivery");
    let b = wait_for(dir.path(), "u@shared-b.test", "Delivery");
    assert_eq!(a["site"], "mx2.order.test", "{a}");
    assert_eq!(a["site"], b["site"], "one site per MX host set");
    let v6 = wait_for(dir.path(), "u@v6.test", "Delivery");
    assert_eq!(v6["peer"], format!("[::1]:{port}"), "{v6}");
    engine.process.stop(TIMEOUT).expect("sluice stops");
    assert!(two.ids().contains(&"order".to_string()), "{:?}", two.ids());
    assert!(two.ids().contains(&"shared".to_string()));
    assert_eq!(three.ids(), ["plain"]);
    assert_eq!(six.ids(), ["v6"]);
}

#[test]
fn null_mx_nxdomain_servfail_and_private_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let _two = egress::sink(dir.path(), "two", "127.0.0.2", port, &[]);
    let dns = Dns::start(
        dir.path(),
        &json!({
            "records": [
                // RFC 7505 null MX; the A record must not be used.
                ["nullmx.test", "MX", 300, 0, "."],
                ["nullmx.test", "A", 300, "127.0.0.2"],
                // An MX at a private address, not allowed by [dns].
                ["private.test", "MX", 300, 10, "mx.private.test."],
                ["mx.private.test", "A", 300, "10.9.9.9"],
            ],
            "servfail": ["servfail.test"],
        }),
    );
    let mut engine = egress::config(dir.path(), &dns_section(dns.port, port)).start();
    let inject_port = engine.port;
    inject(
        inject_port,
        &[Msg {
            id: "fail",
            rcpts: &[
                "u@nullmx.test",
                "u@nx.test",
                "u@servfail.test",
                "u@private.test",
            ],
            headers: "",
        }],
    );
    let null = wait_for(dir.path(), "u@nullmx.test", "Bounce");
    assert_eq!(
        (null["code"].clone(), null["enhanced"].clone()),
        (json!(556), json!("5.1.10")),
        "{null}"
    );
    let nx = wait_for(dir.path(), "u@nx.test", "Bounce");
    assert_eq!(
        (nx["code"].clone(), nx["enhanced"].clone()),
        (json!(550), json!("5.1.2")),
        "{nx}"
    );
    let private = wait_for(dir.path(), "u@private.test", "Bounce");
    assert_eq!(private["enhanced"], "5.4.4", "{private}");
    assert!(
        private["text"].as_str().unwrap().contains("private"),
        "{private}"
    );
    // SERVFAIL is temporary: retried (retry = 300ms), never bounced.
    wait_until("two attempts for servfail.test", || {
        records_for(dir.path(), "u@servfail.test")
            .iter()
            .filter(|r| r["type"] == "TransientFailure")
            .count()
            >= 2
    });
    engine.process.stop(TIMEOUT).expect("sluice stops");
    let servfail: Vec<_> = records_for(dir.path(), "u@servfail.test")
        .into_iter()
        .filter(|r| r["type"] != "Reception")
        .collect();
    assert!(
        servfail.iter().all(|r| r["type"] == "TransientFailure"),
        "{servfail:?}"
    );
    assert_eq!(servfail[0]["code"], 451);
    assert_eq!(servfail[0]["enhanced"], "4.4.3");
    assert_eq!(servfail[1]["attempt"], 2);
    let null: Vec<_> = records_for(dir.path(), "u@nullmx.test")
        .into_iter()
        .filter(|r| r["type"] != "Reception")
        .collect();
    assert_eq!(null.len(), 1, "no retry of a null MX: {null:?}");
}

#[test]
fn loopback_and_unspecified_mx_addresses_are_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let two = egress::sink(dir.path(), "two", "127.0.0.2", port, &[]);
    let dns = Dns::start(
        dir.path(),
        &json!({ "records": [
            ["loop.test", "MX", 300, 10, "mx.loop.test."],
            ["mx.loop.test", "A", 300, "127.0.0.2"],
            ["zero.test", "MX", 300, 10, "mx.zero.test."],
            ["mx.zero.test", "A", 300, "0.0.0.0"],
        ]}),
    );
    // The same [dns] section without allow_loopback.
    let section = dns_section(dns.port, port).replace("allow_loopback = true\n", "");
    let mut engine = egress::config(dir.path(), &section).start();
    let inject_port = engine.port;
    inject(
        inject_port,
        &[Msg {
            id: "refused",
            rcpts: &["u@loop.test", "u@zero.test"],
            headers: "",
        }],
    );
    for rcpt in ["u@loop.test", "u@zero.test"] {
        let r = wait_for(dir.path(), rcpt, "Bounce");
        assert_eq!(r["enhanced"], "5.4.4", "{r}");
        let text = r["text"].as_str().unwrap();
        assert!(
            text.contains("refused (loopback, private or reserved)"),
            "{text}"
        );
    }
    engine.process.stop(TIMEOUT).expect("sluice stops");
    assert!(two.ids().is_empty(), "nothing reached the loopback sink");
}

/// Shaping sees MX host names: a provider rule matching the exchangers'
/// suffix (`mx_suffix`) governs every domain that resolves to them, so
/// three domains hosted by one provider share its 2/s rate.
#[test]
fn provider_rules_match_mx_resolved_domains_by_exchanger_name() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let two = egress::sink(dir.path(), "two", "127.0.0.2", port, &[]);
    let dns = Dns::start(
        dir.path(),
        &json!({ "records": [
            ["a.test", "MX", 300, 10, "mx.bigprov.test."],
            ["b.test", "MX", 300, 10, "mx.bigprov.test."],
            ["c.test", "MX", 300, 10, "mx.bigprov.test."],
            ["mx.bigprov.test", "A", 300, "127.0.0.2"],
        ]}),
    );
    let rules = dir.path().join("shaping.toml");
    std::fs::write(
        &rules,
        r#"[default]
retry_after = "300ms"
[provider.bigprov]
match = [{ mx_suffix = "bigprov.test" }]
max_message_rate = "2/s burst 1"
"#,
    )
    .unwrap();
    let extra = format!(
        "shaping = \"{}\"\n{}",
        rules.display(),
        dns_section(dns.port, port)
    );
    let mut engine = egress::config(dir.path(), &extra).start();
    let inject_port = engine.port;
    let msgs: Vec<(String, String)> = (0..7)
        .map(|n| {
            (
                format!("prov-{n}"),
                format!("u{n}@{}.test", ["a", "b", "c"][n % 3]),
            )
        })
        .collect();
    egress::inject_each(inject_port, &msgs);
    let mut at: Vec<u64> = Vec::new();
    for (_, rcpt) in &msgs {
        let record = wait_for(dir.path(), rcpt, "Delivery");
        at.push(record["at_ms"].as_u64().expect("at_ms"));
    }
    engine.process.stop(TIMEOUT).expect("sluice stops");
    at.sort_unstable();
    let span = at[at.len() - 1] - at[0];
    // 7 messages at 2/s with a burst of 1 take at least 3 s; without the
    // provider rule they all go at once.
    assert!(
        span >= 2500,
        "7 deliveries to the provider's domains within {span} ms: the mx_suffix rule (2/s) did not apply"
    );
    assert_eq!(two.ids().len(), 7, "{:?}", two.ids());
}

/// RFC 5321 §5.1: a host that refuses the session (a `421` greeting, or
/// `554`, which another MX may well not say) is skipped like one that
/// refuses the TCP connection: the next MX gets the mail and nothing is
/// deferred. When every host refuses, the recipients are deferred with
/// the last host's reply.
#[test]
fn refused_greetings_try_the_next_mx_and_defer_only_when_all_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let busy = egress::sink(
        dir.path(),
        "busy",
        "127.0.0.2",
        port,
        &["--reject", "connect:421=1"],
    );
    let good = egress::sink(dir.path(), "good", "127.0.0.3", port, &[]);
    let closed = egress::sink(
        dir.path(),
        "closed",
        "127.0.0.4",
        port,
        &["--reject", "connect:554=1"],
    );
    let dns = Dns::start(
        dir.path(),
        &json!({ "records": [
            ["busy.test", "MX", 300, 10, "mx-busy.test."],
            ["busy.test", "MX", 300, 20, "mx-good.test."],
            ["closed.test", "MX", 300, 10, "mx-closed.test."],
            ["closed.test", "MX", 300, 20, "mx-good.test."],
            // Both refuse; the 421 host is the last one tried.
            ["refuse.test", "MX", 300, 10, "mx-closed.test."],
            ["refuse.test", "MX", 300, 20, "mx-busy.test."],
            ["mx-busy.test", "A", 300, "127.0.0.2"],
            ["mx-good.test", "A", 300, "127.0.0.3"],
            ["mx-closed.test", "A", 300, "127.0.0.4"],
        ]}),
    );
    let mut engine = egress::config(dir.path(), &dns_section(dns.port, port)).start();
    let inject_port = engine.port;
    let ids: Vec<String> = (0..6).map(|n| format!("skip-{n}")).collect();
    let rcpts: Vec<[String; 1]> = (0..6)
        .map(|n| [format!("u{n}@{}.test", ["busy", "closed"][n % 2])])
        .collect();
    let rcpt_refs: Vec<[&str; 1]> = rcpts.iter().map(|[r]| [r.as_str()]).collect();
    let mut msgs: Vec<Msg<'_>> = ids
        .iter()
        .zip(&rcpt_refs)
        .map(|(id, rcpts)| Msg {
            id,
            rcpts,
            headers: "",
        })
        .collect();
    msgs.push(Msg {
        id: "refused",
        rcpts: &["u@refuse.test"],
        headers: "",
    });
    inject(inject_port, &msgs);
    for [rcpt] in &rcpts {
        let r = wait_for(dir.path(), rcpt, "Delivery");
        assert_eq!(r["peer"], format!("127.0.0.3:{port}"), "{r}");
    }
    let deferred = wait_for(dir.path(), "u@refuse.test", "TransientFailure");
    // The refusing hosts were connected to (beyond the test's readiness
    // probe; the engine connects from 127.0.0.1 too, unbound).
    let accepted = |sink: &Sink| sink.all_peers().len();
    wait_until("the refusing hosts tried", || {
        accepted(&busy) > 1 && accepted(&closed) > 1
    });
    engine.process.stop(TIMEOUT).expect("sluice stops");
    // The last host's reply: the 421 of 127.0.0.2.
    assert_eq!(deferred["code"], 421, "{deferred}");
    assert_eq!(deferred["peer"], format!("127.0.0.2:{port}"), "{deferred}");
    for [rcpt] in &rcpts {
        let kinds: Vec<_> = records_for(dir.path(), rcpt)
            .into_iter()
            .map(|r| r["type"].clone())
            .collect();
        assert_eq!(kinds, ["Reception", "Delivery"], "{rcpt}: nothing deferred");
    }
    let mut got = good.ids();
    got.sort();
    assert_eq!(got, ids, "every message at the next MX");
    assert!(busy.ids().is_empty() && closed.ids().is_empty());
}

/// An MX assignment lasts as long as its DNS answers: with 2 s TTLs a
/// changed address is used for mail injected after they expired; with
/// 300 s TTLs the domain is not asked again and keeps its old address.
#[test]
fn mx_assignments_follow_the_answers_ttls() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let two = egress::sink(dir.path(), "two", "127.0.0.2", port, &[]);
    let three = egress::sink(dir.path(), "three", "127.0.0.3", port, &[]);
    let zone = |short_ip: &str, long_ip: &str| {
        json!({ "records": [
            ["short.test", "MX", 2, 10, "mx.short.test."],
            ["mx.short.test", "A", 2, short_ip],
            ["long.test", "MX", 300, 10, "mx.long.test."],
            ["mx.long.test", "A", 300, long_ip],
        ]})
    };
    let dns = Dns::start(dir.path(), &zone("127.0.0.2", "127.0.0.2"));
    let section = format!("{}mx_refresh_min = \"1s\"\n", dns_section(dns.port, port));
    let mut engine = egress::config(dir.path(), &section).start();
    let inject_port = engine.port;
    inject(
        inject_port,
        &[Msg {
            id: "first",
            rcpts: &["u@short.test", "u@long.test"],
            headers: "",
        }],
    );
    for rcpt in ["u@short.test", "u@long.test"] {
        let r = wait_for(dir.path(), rcpt, "Delivery");
        assert_eq!(r["peer"], format!("127.0.0.2:{port}"), "{r}");
    }
    let long_asked = dns.asked("long.test");
    assert_eq!(long_asked, 1, "one MX question for long.test");
    dns.set_zone(&zone("127.0.0.3", "127.0.0.3"));
    // Past the short TTLs (a wait, not a timing assertion).
    std::thread::sleep(std::time::Duration::from_millis(3000));
    inject(
        inject_port,
        &[Msg {
            id: "second",
            rcpts: &["v@short.test", "v@long.test"],
            headers: "",
        }],
    );
    let short = wait_for(dir.path(), "v@short.test", "Delivery");
    let long = wait_for(dir.path(), "v@long.test", "Delivery");
    engine.process.stop(TIMEOUT).expect("sluice stops");
    assert_eq!(short["peer"], format!("127.0.0.3:{port}"), "{short}");
    assert_eq!(long["peer"], format!("127.0.0.2:{port}"), "{long}");
    assert!(dns.asked("short.test") >= 2, "short.test asked again");
    assert_eq!(
        dns.asked("long.test"),
        long_asked,
        "long.test not asked again"
    );
    assert!(
        three.ids().contains(&"second".to_string()),
        "{:?}",
        three.ids()
    );
    assert!(two.ids().contains(&"first".to_string()));
}
