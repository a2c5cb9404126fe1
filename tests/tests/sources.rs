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

use sluice_tests::free_port;

use egress::{inject, records_for, start_engine, wait_until, write_config, Msg, Sink};

const RULES: &str = r#"
[default]
pool = "two"

[source.s2]
bind = "127.0.0.2"
ehlo = "s2.sluice.test"

[source.s3]
bind = "127.0.0.3"
ehlo = "s3.sluice.test"

[pool.two]
sources = { s2 = 1 }

[pool.three]
sources = { s3 = 1 }
"#;

#[test]
fn pools_bind_their_sources_and_x_virtualmta_selects_one_and_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let sink = Sink::start(dir.path(), "sink", "127.0.0.1", port);
    let rules = dir.path().join("shaping.toml");
    std::fs::write(&rules, RULES).unwrap();
    let inject_port = free_port().unwrap();
    // b.test's first host refuses (nothing listens there): a bound
    // connection fails over to the next host like an unbound one.
    let closed = free_port().unwrap();
    let extra = format!(
        "shaping = \"{}\"\n[[route]]\npattern = \"b.test\"\nhosts = [\"127.0.0.1:{closed}\", \"127.0.0.1:{port}\"]\n[[route]]\npattern = \"*.test\"\nhosts = [\"127.0.0.1:{port}\"]\n",
        rules.display()
    );
    let cfg = write_config(dir.path(), inject_port, &extra);
    let mut engine = start_engine(dir.path(), &cfg, inject_port);

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
    engine.stop(egress::TIMEOUT).expect("sluice stops");

    let messages = sink.messages();
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
