//! Egress sources end to end: the engine's shaping rules define sources
//! on 127.0.0.2 and 127.0.0.3 (Linux routes all of 127/8 to `lo`, so
//! binding them works) and one pool for each; the sink records the peer
//! address of every connection (`--record-peers`) and captures every
//! message. The default rule's pool applies to plain messages;
//! `X-virtualMTA` selects another pool and never reaches the receiver.
//!
//! `cargo build --release --bins`, then
//! `cargo test -p sluice-tests --test sources`.

mod egress;

use sluice_tests::{free_port, TIMEOUT};

use egress::{inject, records_for, wait_until, Msg, TWO_POOLS};

#[test]
fn pools_bind_their_sources_and_x_virtualmta_selects_one_and_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let sink = egress::sink(dir.path(), "sink", "127.0.0.1", port, &[]);
    let rules = dir.path().join("shaping.toml");
    std::fs::write(&rules, TWO_POOLS).unwrap();
    // b.test's first host refuses (nothing listens there): a bound
    // connection fails over to the next host like an unbound one.
    let closed = free_port().unwrap();
    let extra = format!(
        "shaping = \"{}\"\n[[route]]\npattern = \"b.test\"\nhosts = [\"127.0.0.1:{closed}\", \"127.0.0.1:{port}\"]\n[[route]]\npattern = \"*.test\"\nhosts = [\"127.0.0.1:{port}\"]\n",
        rules.display()
    );
    let mut engine = egress::config(dir.path(), &extra).start();
    let inject_port = engine.port;

    // No header: the default rule's pool, source 127.0.0.2.
    inject(
        inject_port,
        &[Msg {
            id: "plain",
            rcpts: &["u@a.test"],
            headers: "",
        }],
    );
    wait_until("plain delivered", || {
        sink.ids().contains(&"plain".to_string())
    });
    wait_until("its connection recorded", || !sink.peers().is_empty());
    assert!(
        sink.peers().iter().all(|p| p == "127.0.0.2"),
        "{:?}",
        sink.peers()
    );
    let seen = sink.peers().len();

    // X-virtualMTA names the other pool: source 127.0.0.3.
    inject(
        inject_port,
        &[Msg {
            id: "vmta",
            rcpts: &["u@a.test"],
            headers: "X-virtualMTA: three\r\n",
        }],
    );
    wait_until("vmta delivered", || {
        sink.ids().contains(&"vmta".to_string())
    });
    wait_until("its connection recorded", || sink.peers().len() > seen);
    assert!(
        sink.peers()[seen..].iter().all(|p| p == "127.0.0.3"),
        "{:?}",
        sink.peers()
    );

    // An unknown pool is a clear temporary failure, not a silent default.
    inject(
        inject_port,
        &[Msg {
            id: "unknown",
            rcpts: &["v@a.test"],
            headers: "X-VirtualMTA: nope\r\n",
        }],
    );
    let mut text = String::new();
    wait_until("the unknown pool deferred", || {
        match records_for(dir.path(), "v@a.test")
            .into_iter()
            .find(|r| r["type"] == "TransientFailure")
        {
            Some(r) => {
                text = r["text"].as_str().unwrap_or_default().to_string();
                true
            }
            None => false,
        }
    });
    assert!(text.contains("no source or pool named nope"), "{text}");

    // A refused first host, from a bound source: the next host delivers.
    inject(
        inject_port,
        &[Msg {
            id: "failover",
            rcpts: &["u@b.test"],
            headers: "X-virtualMTA: three\r\n",
        }],
    );
    wait_until("failover delivered", || {
        sink.ids().contains(&"failover".to_string())
    });
    assert!(
        sink.peers()
            .iter()
            .all(|p| p == "127.0.0.2" || p == "127.0.0.3"),
        "{:?}",
        sink.peers()
    );
    engine.process.stop(TIMEOUT).expect("sluice stops");

    let messages: Vec<String> = sink.captured().into_iter().map(|(_, text)| text).collect();
    let vmta: Vec<&String> = messages
        .iter()
        .filter(|m| m.contains("X-Sluice-Id: vmta"))
        .collect();
    assert_eq!(vmta.len(), 1, "captured: {messages:?}");
    assert!(
        !vmta[0].to_ascii_lowercase().contains("x-virtualmta"),
        "{}",
        vmta[0]
    );
    assert!(
        vmta[0].contains("Subject: test vmta"),
        "other headers kept: {}",
        vmta[0]
    );
    assert!(!sink.ids().contains(&"unknown".to_string()));
}

/// Deliveries of a pool of two equally weighted sources, by source, from
/// the delivery log (`source` is the bound `[source.NAME]`, `source_ip`
/// its address, `pool` the pool), with or without a message rate on s3.
fn split_by_source(s3_rate: Option<&str>) -> (usize, usize) {
    const MESSAGES: usize = 80;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let sink = egress::sink(dir.path(), "sink", "127.0.0.1", port, &[]);
    let rate = s3_rate
        .map(|r| format!("max_message_rate = \"{r}\"\n"))
        .unwrap_or_default();
    // Connections retire after two transactions, so the weighted draw of
    // a source happens many times.
    let rules_text = format!(
        r#"
[default]
pool = "both"
max_deliveries_per_connection = 2

[source.s2]
bind = "127.0.0.2"
ehlo = "s2.sluice.test"

[source.s3]
bind = "127.0.0.3"
ehlo = "s3.sluice.test"
{rate}
[pool.both]
sources = {{ s2 = 1, s3 = 1 }}
"#
    );
    let rules = dir.path().join("shaping.toml");
    std::fs::write(&rules, rules_text).unwrap();
    let extra = format!(
        "shaping = \"{}\"\n[[route]]\npattern = \"*.test\"\nhosts = [\"127.0.0.1:{port}\"]\n",
        rules.display()
    );
    let mut engine = egress::config(dir.path(), &extra).start();
    let inject_port = engine.port;
    let msgs: Vec<(String, String)> = (0..MESSAGES)
        .map(|n| (format!("split-{n}"), format!("u{n}@split.test")))
        .collect();
    egress::inject_each(inject_port, &msgs);
    wait_until("every message delivered", || sink.ids().len() >= MESSAGES);
    let mut deliveries = Vec::new();
    wait_until("every delivery logged", || {
        deliveries = egress::log_records(dir.path())
            .into_iter()
            .filter(|r| r["type"] == "Delivery")
            .collect();
        deliveries.len() >= MESSAGES
    });
    engine.process.stop(TIMEOUT).expect("sluice stops");
    let mut counts = (0, 0);
    for d in &deliveries {
        assert_eq!(d["pool"], "both", "{d}");
        match (d["source"].as_str(), d["source_ip"].as_str()) {
            (Some("s2"), Some("127.0.0.2")) => counts.0 += 1,
            (Some("s3"), Some("127.0.0.3")) => counts.1 += 1,
            _ => panic!("a delivery from no pool source: {d}"),
        }
    }
    assert!(
        sink.peers()
            .iter()
            .all(|p| p == "127.0.0.2" || p == "127.0.0.3"),
        "{:?}",
        sink.peers()
    );
    counts
}

/// A source's own message rate (`[source.NAME] max_message_rate`) holds
/// for the connections bound to it: with 1/s on s3, s2 carries nearly
/// all of the pool's mail; without it the weights (1:1) split it.
#[test]
fn a_source_rate_limits_its_share_of_the_pool() {
    let (s2, s3) = split_by_source(Some("1/s"));
    eprintln!("s3 at 1/s: s2 {s2}, s3 {s3}");
    assert!(
        s3 * 4 < s2,
        "s3 limited to 1/s still carried {s3} of {} deliveries (s2 {s2})",
        s2 + s3
    );
    let (s2, s3) = split_by_source(None);
    eprintln!("no limit: s2 {s2}, s3 {s3}");
    let total = s2 + s3;
    assert!(
        s2 * 5 >= total && s3 * 5 >= total,
        "equal weights without a limit split {s2}:{s3}"
    );
}
