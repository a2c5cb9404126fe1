//! End-to-end tests of delivery: a std SMTP injector → the real `sluice`
//! binary → the real `sluice-sink` on loopback. Every message carries a
//! unique `X-Sluice-Id`; the sink records the id of every message it
//! accepts (`--record-ids`), and the engine writes its delivery log (JSON
//! lines) into the test's directory, so each test counts exactly what
//! arrived and what the engine says happened.
//!
//! Build the binaries first (`cargo build --release --bins`, or set
//! `SLUICE_BIN_DIR=target/debug` after a debug build).

use std::path::Path;
use std::time::Duration;

use sluice_tests::{
    count, free_port, read_records, wait_until, EngineConfig, Sink, SinkBuilder, Smtp, TIMEOUT,
};

/// Longest a test waits for deliveries to settle.
const SETTLE: Duration = Duration::from_secs(60);

/// Injects messages over one pipelining-free SMTP session: each entry is
/// (id, recipients). Returns when every `250` after DATA arrived.
fn inject(port: u16, messages: &[(String, Vec<String>)]) {
    let mut c = Smtp::connect_ready(port);
    for (id, rcpts) in messages {
        let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
        c.expect("MAIL FROM:<sender@origin.test>", 250);
        for rc in rcpts {
            c.expect(&format!("RCPT TO:<{rc}>"), 250);
        }
        c.expect("DATA", 354);
        // Sent as is, not dot-stuffed: the engine removes the leading dot.
        c.expect(
            &format!(
                "X-Sluice-Id: {id}\r\nSubject: test {id}\r\n\r\nbody of {id}\r\n.leading dot line\r\n."
            ),
            250,
        );
    }
    c.close();
}

/// The engine's config: every `*.test` domain routed to the sink, after
/// `extra_routes` (lines for `[delivery]` and sections that come first).
fn config(dir: &Path, sink_port: u16, extra_routes: &str) -> EngineConfig {
    EngineConfig::new(dir)
        .delivery(extra_routes)
        .route("*.test", sink_port)
}

fn start_sink(dir: &Path, name: &str, port: u16, profile: &[&str]) -> Sink {
    SinkBuilder::new(dir, name)
        .port(port)
        .record_ids()
        .args(profile)
        .start()
}

fn log_records(dir: &Path) -> Vec<serde_json::Value> {
    read_records(&dir.join("log"))
}

#[test]
fn every_message_is_delivered_exactly_once_across_domains() {
    let dir = tempfile::tempdir().unwrap();
    let sink_port = free_port().unwrap();
    let sink = start_sink(dir.path(), "sink", sink_port, &[]);
    let cfg = config(dir.path(), sink_port, "");
    let mut engine = cfg.start();
    let domains = ["a.test", "b.test", "c.test"];
    // Message n has recipients in 1..=3 domains, 1..=2 per domain.
    let messages: Vec<(String, Vec<String>)> = (0..150)
        .map(|n| {
            let mut rcpts = Vec::new();
            for d in domains.iter().take(n % 3 + 1) {
                for k in 0..(n % 2 + 1) {
                    rcpts.push(format!("user{k}.{n}@{d}"));
                }
            }
            (format!("m{n}"), rcpts)
        })
        .collect();
    inject(engine.port, &messages);
    // One transaction per (message, domain): the sink records the id once
    // per transaction.
    let want_txns: usize = (0..150).map(|n| n % 3 + 1).sum();
    wait_until("every transaction at the sink", SETTLE, || {
        sink.id_counts().values().sum::<usize>() >= want_txns
    });
    std::thread::sleep(Duration::from_millis(500));
    let ids = sink.id_counts();
    for (n, (id, _)) in messages.iter().enumerate() {
        assert_eq!(
            ids.get(id).copied().unwrap_or(0),
            n % 3 + 1,
            "transactions for {id}"
        );
    }
    engine.process.stop(TIMEOUT).expect("sluice stops");
    let records = log_records(dir.path());
    let rcpts: usize = messages.iter().map(|(_, r)| r.len()).sum();
    assert_eq!(
        count(&records, "Delivery"),
        rcpts,
        "one Delivery line per recipient"
    );
    assert_eq!(count(&records, "Bounce"), 0);
}

#[test]
fn failures_follow_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let sink_port = free_port().unwrap();
    // nobody@ → 550; 30% of RCPTs get 451; connections drop after 5
    // messages; 20% of greetings are 421.
    let sink = start_sink(
        dir.path(),
        "sink",
        sink_port,
        &[
            "--reject-local-part",
            "nobody",
            "--reject",
            "rcpt:451=0.3",
            "--reject",
            "connect:421=0.2",
            "--drop-after-messages",
            "5",
            "--seed",
            "7",
        ],
    );
    let cfg = config(dir.path(), sink_port, "");
    let mut engine = cfg.start();
    let messages: Vec<(String, Vec<String>)> = (0..60)
        .map(|n| {
            let mut r = vec![format!("ok{n}@a.test")];
            if n % 10 == 0 {
                r.push("nobody@a.test".to_string());
            }
            (format!("f{n}"), r)
        })
        .collect();
    inject(engine.port, &messages);
    wait_until("every good recipient delivered", SETTLE, || {
        let ids = sink.id_counts();
        messages.iter().all(|(id, _)| ids.contains_key(id))
    });
    // Let the log flush and the bounces settle.
    wait_until("six bounces logged", SETTLE, || {
        count(&log_records(dir.path()), "Bounce") >= 6
    });
    engine.process.stop(TIMEOUT).expect("sluice stops");
    let records = log_records(dir.path());
    let delivered = count(&records, "Delivery");
    assert!(delivered >= 60, "{delivered} deliveries logged");
    assert_eq!(count(&records, "Bounce"), 6, "one bounce per nobody@");
    for b in records.iter().filter(|r| r["type"] == "Bounce") {
        assert_eq!(b["code"], 550, "{b}");
        assert!(b["recipient"].as_str().unwrap().starts_with("nobody@"));
    }
    let transient = count(&records, "TransientFailure");
    assert!(transient > 0, "451s and 421s must produce retries");
    for t in records.iter().filter(|r| r["type"] == "TransientFailure") {
        let code = t["code"].as_u64().unwrap();
        assert!((400..500).contains(&code), "{t}");
    }
    // A recipient delivered after a transient failure has attempt > 1.
    assert!(records
        .iter()
        .any(|r| r["type"] == "Delivery" && r["attempt"].as_u64().unwrap() > 1));
    // Never a Delivery for nobody@, never two Deliveries for one recipient
    // unless the sink dropped the connection after its 250 (not the case
    // with drop-after-messages, which closes after the reply is flushed).
    let mut seen = std::collections::HashSet::new();
    for d in records.iter().filter(|r| r["type"] == "Delivery") {
        let key = (
            d["id"].as_u64().unwrap(),
            d["recipient"].as_str().unwrap().to_string(),
        );
        assert!(!key.1.starts_with("nobody@"));
        assert!(seen.insert(key.clone()), "delivered twice: {key:?}");
    }
}

#[test]
fn a_restart_delivers_what_was_left() {
    let dir = tempfile::tempdir().unwrap();
    let sink_port = free_port().unwrap();
    let cfg = config(dir.path(), sink_port, "");
    // No sink yet: every attempt fails to connect and is deferred.
    let mut engine = cfg.start();
    let messages: Vec<(String, Vec<String>)> = (0..40)
        .map(|n| (format!("r{n}"), vec![format!("u{n}@b.test")]))
        .collect();
    inject(engine.port, &messages);
    wait_until("connect failures logged", SETTLE, || {
        count(&log_records(dir.path()), "TransientFailure") >= 1
    });
    engine.process.stop(TIMEOUT).expect("sluice stops");
    // Unrouted domains are a clear temporary failure, not a loss.
    let sink = start_sink(dir.path(), "sink", sink_port, &[]);
    let mut engine = cfg.start();
    wait_until("all delivered after the restart", SETTLE, || {
        let ids = sink.id_counts();
        messages.iter().all(|(id, _)| ids.contains_key(id))
    });
    std::thread::sleep(Duration::from_millis(500));
    let ids = sink.id_counts();
    assert!(ids.values().all(|&c| c == 1), "duplicates: {ids:?}");
    engine.process.stop(TIMEOUT).expect("sluice stops");
}

#[test]
fn unrouted_domains_fail_temporarily_with_a_clear_reason() {
    let dir = tempfile::tempdir().unwrap();
    let sink_port = free_port().unwrap();
    let _sink = start_sink(dir.path(), "sink", sink_port, &[]);
    // No route matches example.org: it is resolved by MX, through a name
    // server that is not there (nothing listens on 127.0.0.1:9), so every
    // attempt fails temporarily and nothing leaves the machine.
    let dns = "[dns]\nnameservers = [\"127.0.0.1:9\"]\ntimeout = \"200ms\"\nattempts = 1\n";
    let cfg = config(dir.path(), sink_port, dns);
    let mut engine = cfg.start();
    inject(
        engine.port,
        &[("x1".into(), vec!["someone@example.org".into()])],
    );
    wait_until("two attempts logged", SETTLE, || {
        log_records(dir.path())
            .iter()
            .filter(|r| r["type"] == "TransientFailure")
            .count()
            >= 2
    });
    engine.process.stop(TIMEOUT).expect("sluice stops");
    let records = log_records(dir.path());
    let t: Vec<_> = records
        .iter()
        .filter(|r| r["type"] == "TransientFailure")
        .collect();
    assert_eq!(t[0]["code"], 451);
    assert_eq!(t[0]["enhanced"], "4.4.3");
    assert!(t[0]["text"]
        .as_str()
        .unwrap()
        .contains("temporary DNS failure"));
    assert_eq!(t[0]["attempt"], 1);
    assert_eq!(t[1]["attempt"], 2);
    assert_eq!(count(&records, "Delivery"), 0);
}

#[test]
fn kill_9_in_the_middle_of_delivery_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sink_port = free_port().unwrap();
    // A slow receiver, so the kill lands while transactions are in flight.
    let sink = start_sink(dir.path(), "sink", sink_port, &["--delay", "data=20ms"]);
    let cfg = config(dir.path(), sink_port, "");
    let mut engine = cfg.start();
    let messages: Vec<(String, Vec<String>)> = (0..300)
        .map(|n| (format!("k{n}"), vec![format!("u{n}@d{}.test", n % 7)]))
        .collect();
    inject(engine.port, &messages);
    wait_until("some deliveries before the kill", SETTLE, || {
        sink.id_counts().len() >= 20
    });
    engine.process.kill9().expect("kill -9 sluice");
    let before = sink.id_counts().len();
    assert!(
        before < messages.len(),
        "the kill came too late to test anything"
    );
    let mut engine = cfg.start();
    wait_until("everything delivered after the crash", SETTLE, || {
        let ids = sink.id_counts();
        messages.iter().all(|(id, _)| ids.contains_key(id))
    });
    engine.process.stop(TIMEOUT).expect("sluice stops");
    // At-least-once: duplicates are possible only for transactions in
    // flight at the kill (at most the pool's pipelined window).
    let ids = sink.id_counts();
    let duplicates: usize = ids.values().map(|c| c - 1).sum();
    assert!(duplicates <= 32 * 8, "{duplicates} duplicates");
}
