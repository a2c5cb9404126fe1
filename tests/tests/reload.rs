//! `sluice reload` changes the shaping rules of a running engine (issue 7):
//! a rules file limits a domain, the file is rewritten, the real `sluice
//! reload` subcommand applies it, and the new limit governs the same
//! engine's deliveries with no restart; a broken file is refused with the
//! file, key and reason, and the old rules keep applying.
//!
//! What is measured: Delivery records per domain in the accounting log.
//! Bounds are counts with wide margins: at `1/s burst 1` a batch of 200
//! messages cannot be delivered in under about 200 s, so "all 200
//! delivered" (within the 60 s wait) only happens after a loosening
//! reload took effect, and "at most 25 of 100 delivered a second and a
//! half after injection" holds for any machine delay short of 20 s
//! while an unlimited domain delivers all of them at once. Connections are
//! counted by the sink (`peak_connections` per domain in its summary):
//! against a receiver that answers each message after 50 ms, one
//! connection at `max_connections = 1`, several once a reload raised it
//! (without the reload the wait for a second connection times out).
//!
//! Build the binaries first (`cargo build -p sluice-engine -p sluice-sink`,
//! and set `SLUICE_BIN_DIR=target/debug` when `target/release` holds older
//! ones).

mod ops;

use std::path::Path;
use std::time::Duration;

use ops::{delivered_to, wait_until};
use sluice_tests::free_port_pair;
use sluice_tests::{Engine, Sink, Smtp};

const TIGHT: &str = "[domain.\"slow.test\"]\nmax_message_rate = \"1/s burst 1\"\n";
const LOOSE: &str = "[domain.\"slow.test\"]\nmax_message_rate = \"5000/s burst 100\"\n";

fn inject(engine: &Engine, domain: &str, tag: &str, n: usize) {
    inject_at(engine.port, domain, tag, n);
}

fn inject_at(port: u16, domain: &str, tag: &str, n: usize) {
    let mut c = Smtp::connect(port);
    for i in 0..n {
        c.send(
            "from@origin.test",
            &[&format!("{tag}{i}@{domain}")],
            &format!("{tag}{i}"),
        );
    }
    c.quit();
}

fn start(dir: &Path, rules: &str) -> (Sink, Engine, std::path::PathBuf) {
    let file = dir.join("shaping.toml");
    std::fs::write(&file, rules).unwrap();
    let sink = ops::sink(dir, "sink", &[]);
    let engine = ops::config(dir, sink.port)
        .delivery(&format!("dsn = false\nshaping = \"{}\"", file.display()))
        .start();
    (sink, engine, file)
}

fn metric(engine: &Engine, name: &str) -> u64 {
    let (status, text) = engine.get("/metrics");
    assert_eq!(status, 200, "{text}");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Tight, then loosened by a reload (everything left goes at once), then
/// tightened again by another: each time the running engine follows the
/// file it was just told to read.
#[test]
fn reload_loosens_and_tightens_a_domain_rate_on_the_running_engine() {
    let dir = tempfile::tempdir().unwrap();
    let (_sink, engine, file) = start(dir.path(), TIGHT);
    inject(&engine, "slow.test", "a", 200);
    std::thread::sleep(Duration::from_millis(1_500));
    let before = delivered_to(&engine, "slow.test");
    assert!(
        before <= 25,
        "{before} of 200 delivered under 1/s: the limit does not hold"
    );

    std::fs::write(&file, LOOSE).unwrap();
    let (ok, out, err) = engine.cli(&["reload"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!(
            "shaping:      reloaded from {} on 1 shard(s): 1 limit(s) changed",
            file.display()
        )),
        "{out}"
    );
    // At 1/s this would take over three minutes; the wait gives up at 60 s.
    wait_until("all 200 delivered after loosening", || {
        delivered_to(&engine, "slow.test") == 200
    });
    assert_eq!(metric(&engine, "sluice_shaping_reloads_total"), 1);

    std::fs::write(&file, TIGHT).unwrap();
    let (ok, out, err) = engine.cli(&["reload"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("1 limit(s) changed"), "{out}");
    inject(&engine, "slow.test", "b", 100);
    std::thread::sleep(Duration::from_millis(1_500));
    let after = delivered_to(&engine, "slow.test") - 200;
    assert!(
        after <= 25,
        "{after} of 100 delivered after tightening to 1/s: the reload did not take"
    );
    // Other domains were never limited.
    inject(&engine, "free.test", "c", 50);
    wait_until("free.test delivered", || {
        delivered_to(&engine, "free.test") == 50
    });
    assert_eq!(metric(&engine, "sluice_shaping_reloads_total"), 2);
    assert_eq!(metric(&engine, "sluice_bounce_rules_reloads_total"), 2);
}

/// A broken file is refused, naming the file, the key and the reason; no
/// shard changes (neither rules file is applied) and the tight rate keeps
/// holding. Fixing the file and reloading then applies it.
#[test]
fn reload_refuses_a_broken_shaping_file_and_the_old_rules_keep_applying() {
    let dir = tempfile::tempdir().unwrap();
    let (_sink, engine, file) = start(dir.path(), TIGHT);
    std::fs::write(
        &file,
        "[default]\nmax_conections = 3\n[domain.\"slow.test\"]\nmax_message_rate = \"lots\"\n",
    )
    .unwrap();
    let (ok, out, err) = engine.cli(&["reload"]);
    assert!(!ok, "a broken file is refused: {out}");
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(
        err.contains("domain.\"slow.test\".max_message_rate"),
        "{err}"
    );
    assert!(err.contains("default.max_conections"), "{err}");
    assert!(err.contains("nothing was reloaded"), "{err}");
    assert_eq!(metric(&engine, "sluice_shaping_reloads_total"), 0);
    assert_eq!(metric(&engine, "sluice_bounce_rules_reloads_total"), 0);

    inject(&engine, "slow.test", "a", 100);
    std::thread::sleep(Duration::from_millis(1_500));
    let held = delivered_to(&engine, "slow.test");
    assert!(
        held <= 25,
        "{held} of 100 delivered: the old 1/s rule should still apply"
    );

    std::fs::write(&file, LOOSE).unwrap();
    let (ok, out, err) = engine.cli(&["reload"]);
    assert!(ok, "{out}{err}");
    wait_until("all 100 delivered after the fixed file", || {
        delivered_to(&engine, "slow.test") == 100
    });
}

/// Two shards, each holding a queue for the domain (messages injected on
/// each shard's own port), so its rate is leased across shards: the tight
/// limit holds over both, and one reload loosens it on both.
#[test]
fn reload_reaches_every_shard_of_a_leased_limit() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shaping.toml");
    std::fs::write(&file, TIGHT).unwrap();
    let sink = ops::sink(dir.path(), "sink", &[]);
    let base = free_port_pair().expect("two free ports");
    let engine = ops::config(dir.path(), sink.port)
        .cores("[0, 1]")
        .inject(&format!("shard_port_base = {base}"))
        .delivery(&format!("dsn = false\nshaping = \"{}\"", file.display()))
        .start();
    inject_at(base, "slow.test", "a", 100);
    inject_at(base + 1, "slow.test", "b", 100);
    std::thread::sleep(Duration::from_millis(1_500));
    let before = delivered_to(&engine, "slow.test");
    assert!(
        before <= 25,
        "{before} of 200 delivered under 1/s across two shards"
    );
    std::fs::write(&file, LOOSE).unwrap();
    let (ok, out, err) = engine.cli(&["reload"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("on 2 shard(s)"), "{out}");
    wait_until("all 200 delivered from both shards after loosening", || {
        delivered_to(&engine, "slow.test") == 200
    });
    assert_eq!(
        metric(&engine, "sluice_shaping_reloads_total"),
        2,
        "one per shard"
    );
    // Both shards held the domain's queue (so its limit was leased).
    for shard in [0, 1] {
        let from_shard = engine
            .records()
            .iter()
            .filter(|r| r["type"] == "Delivery" && r["shard"] == shard)
            .count();
        assert_eq!(from_shard, 100, "deliveries from shard {shard}");
    }
}

/// A connection limit raised by a reload: at `max_connections = 1` the
/// receiver (answering each message after 50 ms, so a deep queue wants
/// many connections) never sees more than one at a time for the domain;
/// after the reload to 8 it sees several.
#[test]
fn reload_raises_max_connections_on_the_running_engine() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shaping.toml");
    std::fs::write(&file, "[domain.\"conn.test\"]\nmax_connections = 1\n").unwrap();
    let sink = ops::sink(dir.path(), "sink", &["--delay", "data=50ms"]);
    let engine = ops::config(dir.path(), sink.port)
        .delivery(&format!("dsn = false\nshaping = \"{}\"", file.display()))
        .start();
    let peak = || sink.summary()["domains"]["conn.test"]["peak_connections"].as_u64();
    inject(&engine, "conn.test", "a", 40);
    wait_until("40 delivered over one connection", || {
        delivered_to(&engine, "conn.test") == 40
    });
    wait_until("the sink's summary counts them", || {
        sink.summary()["domains"]["conn.test"]["messages"].as_u64() == Some(40)
    });
    assert_eq!(peak(), Some(1), "{}", sink.summary());

    std::fs::write(&file, "[domain.\"conn.test\"]\nmax_connections = 8\n").unwrap();
    let (ok, out, err) = engine.cli(&["reload"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("1 limit(s) changed"), "{out}");
    inject(&engine, "conn.test", "b", 120);
    wait_until("120 more delivered", || {
        delivered_to(&engine, "conn.test") == 160
    });
    wait_until("more than one connection at once", || {
        peak().is_some_and(|p| p > 1)
    });
    assert!(peak().is_some_and(|p| p <= 8), "{}", sink.summary());
}
