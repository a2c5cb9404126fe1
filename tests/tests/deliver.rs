//! End-to-end tests of delivery: a std SMTP injector → the real `sluice`
//! binary → the real `sluice-sink` on loopback. Every message carries a
//! unique `X-Sluice-Id`; the sink records the id of every message it
//! accepts (`--record-ids`), and the engine writes its delivery log (JSON
//! lines) into the test's directory, so each test counts exactly what
//! arrived and what the engine says happened.
//!
//! Build the binaries first (`cargo build --release --bins`, or set
//! `SLUICE_BIN_DIR=target/debug` after a debug build).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_tests::{binary, free_port, wait_for_port, Process};

const TIMEOUT: Duration = Duration::from_secs(20);
/// Longest a test waits for deliveries to settle.
const SETTLE: Duration = Duration::from_secs(60);

struct Sink {
    _proc: Process,
    ids: PathBuf,
}

fn start_sink(dir: &Path, name: &str, port: u16, profile: &[&str]) -> Sink {
    let ids = dir.join(format!("{name}-ids.txt"));
    let mut cmd = Command::new(binary("sluice-sink").expect("sluice-sink binary"));
    cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--cores", "1"])
        .args(["--stats-interval", "0", "--summary-interval", "0"])
        .arg("--record-ids")
        .arg(&ids)
        .arg("--summary")
        .arg(dir.join(format!("{name}-summary.json")))
        .args(profile)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let proc = Process::spawn("sluice-sink", cmd).expect("start the sink");
    wait_for_port(SocketAddr::from(([127, 0, 0, 1], port)), TIMEOUT).expect("sink listening");
    Sink { _proc: proc, ids }
}

fn write_config(dir: &Path, inject_port: u16, sink_port: u16, extra_routes: &str) -> PathBuf {
    let cfg = dir.join("sluice.toml");
    let text = format!(
        r#"
hostname = "sluice.test"
cores = [0]
[inject]
listen = "127.0.0.1:{inject_port}"
message_size_max = "1MiB"
[spool]
dir = "{spool}"
segment_size = "4MiB"
[delivery]
retry = "300ms"
reply_timeout = "5s"
connect_timeout = "2s"
idle_close = "300ms"
log_dir = "{log}"
log_flush = "20ms"
{extra_routes}
[[route]]
pattern = "*.test"
hosts = ["127.0.0.1:{sink_port}"]
"#,
        spool = dir.join("spool").display(),
        log = dir.join("log").display(),
    );
    std::fs::write(&cfg, text).expect("write the config");
    cfg
}

fn start_engine(cfg: &Path, inject_port: u16) -> Process {
    let mut cmd = Command::new(binary("sluice").expect("sluice binary"));
    cmd.arg("run")
        .arg("--config")
        .arg(cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let p = Process::spawn("sluice", cmd).expect("start sluice");
    wait_for_port(SocketAddr::from(([127, 0, 0, 1], inject_port)), TIMEOUT)
        .expect("sluice listening");
    p
}

/// Injects messages over one pipelining-free SMTP session: each entry is
/// (id, recipients). Returns when every `250` after DATA arrived.
fn inject(port: u16, messages: &[(String, Vec<String>)]) {
    // The engine answers 421 4.3.2 while it recovers its spool: retry.
    let start = Instant::now();
    let (mut r, mut w) = loop {
        let s = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), TIMEOUT)
            .expect("connect to sluice");
        s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        let mut greeting = String::new();
        r.read_line(&mut greeting).expect("read the greeting");
        if greeting.starts_with("220") {
            break (r, s);
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "sluice keeps answering {greeting:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut expect = |code: &str| loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).expect("read a reply");
        assert!(n > 0, "sluice closed the connection");
        assert!(line.starts_with(code), "expected {code}, got {line:?}");
        if line.as_bytes().get(3) != Some(&b'-') {
            break;
        }
    };
    w.write_all(b"EHLO injector.test\r\n").unwrap();
    expect("250");
    for (id, rcpts) in messages {
        w.write_all(b"MAIL FROM:<sender@origin.test>\r\n").unwrap();
        expect("250");
        for rc in rcpts {
            w.write_all(format!("RCPT TO:<{rc}>\r\n").as_bytes())
                .unwrap();
            expect("250");
        }
        w.write_all(b"DATA\r\n").unwrap();
        expect("354");
        let body = format!(
            "X-Sluice-Id: {id}\r\nSubject: test {id}\r\n\r\nbody of {id}\r\n.leading dot line\r\n.\r\n"
        );
        w.write_all(body.as_bytes()).unwrap();
        expect("250");
    }
    w.write_all(b"QUIT\r\n").unwrap();
    expect("221");
}

fn read_ids(path: &Path) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    if let Ok(text) = std::fs::read_to_string(path) {
        for line in text.lines().filter(|l| !l.is_empty()) {
            *counts.entry(line.to_string()).or_insert(0) += 1;
        }
    }
    counts
}

/// Polls `done` until it holds or [`SETTLE`] passes.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < SETTLE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every delivery log record, across files.
fn log_records(dir: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir.join("log")) else {
        return out;
    };
    for e in entries.flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        for line in text.lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                out.push(v);
            }
        }
    }
    out
}

fn count_kind(records: &[serde_json::Value], kind: &str) -> usize {
    records.iter().filter(|r| r["type"] == kind).count()
}

#[test]
fn every_message_is_delivered_exactly_once_across_domains() {
    let dir = tempfile::tempdir().unwrap();
    let sink_port = free_port().unwrap();
    let sink = start_sink(dir.path(), "sink", sink_port, &[]);
    let inject_port = free_port().unwrap();
    let cfg = write_config(dir.path(), inject_port, sink_port, "");
    let mut engine = start_engine(&cfg, inject_port);
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
    inject(inject_port, &messages);
    // One transaction per (message, domain): the sink records the id once
    // per transaction.
    let want_txns: usize = (0..150).map(|n| n % 3 + 1).sum();
    wait_until("every transaction at the sink", || {
        read_ids(&sink.ids).values().sum::<usize>() >= want_txns
    });
    std::thread::sleep(Duration::from_millis(500));
    let ids = read_ids(&sink.ids);
    for (n, (id, _)) in messages.iter().enumerate() {
        assert_eq!(
            ids.get(id).copied().unwrap_or(0),
            n % 3 + 1,
            "transactions for {id}"
        );
    }
    engine.stop(TIMEOUT).expect("sluice stops");
    let records = log_records(dir.path());
    let rcpts: usize = messages.iter().map(|(_, r)| r.len()).sum();
    assert_eq!(
        count_kind(&records, "Delivery"),
        rcpts,
        "one Delivery line per recipient"
    );
    assert_eq!(count_kind(&records, "Bounce"), 0);
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
    let inject_port = free_port().unwrap();
    let cfg = write_config(dir.path(), inject_port, sink_port, "");
    let mut engine = start_engine(&cfg, inject_port);
    let messages: Vec<(String, Vec<String>)> = (0..60)
        .map(|n| {
            let mut r = vec![format!("ok{n}@a.test")];
            if n % 10 == 0 {
                r.push("nobody@a.test".to_string());
            }
            (format!("f{n}"), r)
        })
        .collect();
    inject(inject_port, &messages);
    wait_until("every good recipient delivered", || {
        let ids = read_ids(&sink.ids);
        messages.iter().all(|(id, _)| ids.contains_key(id))
    });
    // Let the log flush and the bounces settle.
    wait_until("six bounces logged", || {
        count_kind(&log_records(dir.path()), "Bounce") >= 6
    });
    engine.stop(TIMEOUT).expect("sluice stops");
    let records = log_records(dir.path());
    let delivered = count_kind(&records, "Delivery");
    assert!(delivered >= 60, "{delivered} deliveries logged");
    assert_eq!(count_kind(&records, "Bounce"), 6, "one bounce per nobody@");
    for b in records.iter().filter(|r| r["type"] == "Bounce") {
        assert_eq!(b["code"], 550, "{b}");
        assert!(b["recipient"].as_str().unwrap().starts_with("nobody@"));
    }
    let transient = count_kind(&records, "TransientFailure");
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
    let inject_port = free_port().unwrap();
    let cfg = write_config(dir.path(), inject_port, sink_port, "");
    // No sink yet: every attempt fails to connect and is deferred.
    let mut engine = start_engine(&cfg, inject_port);
    let messages: Vec<(String, Vec<String>)> = (0..40)
        .map(|n| (format!("r{n}"), vec![format!("u{n}@b.test")]))
        .collect();
    inject(inject_port, &messages);
    wait_until("connect failures logged", || {
        count_kind(&log_records(dir.path()), "TransientFailure") >= 1
    });
    engine.stop(TIMEOUT).expect("sluice stops");
    // Unrouted domains are a clear temporary failure, not a loss.
    let sink = start_sink(dir.path(), "sink", sink_port, &[]);
    let mut engine = start_engine(&cfg, inject_port);
    wait_until("all delivered after the restart", || {
        let ids = read_ids(&sink.ids);
        messages.iter().all(|(id, _)| ids.contains_key(id))
    });
    std::thread::sleep(Duration::from_millis(500));
    let ids = read_ids(&sink.ids);
    assert!(ids.values().all(|&c| c == 1), "duplicates: {ids:?}");
    engine.stop(TIMEOUT).expect("sluice stops");
}

#[test]
fn unrouted_domains_fail_temporarily_with_a_clear_reason() {
    let dir = tempfile::tempdir().unwrap();
    let sink_port = free_port().unwrap();
    let _sink = start_sink(dir.path(), "sink", sink_port, &[]);
    let inject_port = free_port().unwrap();
    // No route matches example.org: it is resolved by MX, through a name
    // server that is not there (nothing listens on 127.0.0.1:9), so every
    // attempt fails temporarily and nothing leaves the machine.
    let dns = "[dns]\nnameservers = [\"127.0.0.1:9\"]\ntimeout = \"200ms\"\nattempts = 1\n";
    let cfg = write_config(dir.path(), inject_port, sink_port, dns);
    let mut engine = start_engine(&cfg, inject_port);
    inject(
        inject_port,
        &[("x1".into(), vec!["someone@example.org".into()])],
    );
    wait_until("two attempts logged", || {
        log_records(dir.path())
            .iter()
            .filter(|r| r["type"] == "TransientFailure")
            .count()
            >= 2
    });
    engine.stop(TIMEOUT).expect("sluice stops");
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
    assert_eq!(count_kind(&records, "Delivery"), 0);
}

#[test]
fn kill_9_in_the_middle_of_delivery_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sink_port = free_port().unwrap();
    // A slow receiver, so the kill lands while transactions are in flight.
    let sink = start_sink(dir.path(), "sink", sink_port, &["--delay", "data=20ms"]);
    let inject_port = free_port().unwrap();
    let cfg = write_config(dir.path(), inject_port, sink_port, "");
    let mut engine = start_engine(&cfg, inject_port);
    let messages: Vec<(String, Vec<String>)> = (0..300)
        .map(|n| (format!("k{n}"), vec![format!("u{n}@d{}.test", n % 7)]))
        .collect();
    inject(inject_port, &messages);
    wait_until("some deliveries before the kill", || {
        read_ids(&sink.ids).len() >= 20
    });
    engine.kill9().expect("kill -9 sluice");
    let before = read_ids(&sink.ids).len();
    assert!(
        before < messages.len(),
        "the kill came too late to test anything"
    );
    let mut engine = start_engine(&cfg, inject_port);
    wait_until("everything delivered after the crash", || {
        let ids = read_ids(&sink.ids);
        messages.iter().all(|(id, _)| ids.contains_key(id))
    });
    engine.stop(TIMEOUT).expect("sluice stops");
    // At-least-once: duplicates are possible only for transactions in
    // flight at the kill (at most the pool's pipelined window).
    let ids = read_ids(&sink.ids);
    let duplicates: usize = ids.values().map(|c| c - 1).sum();
    assert!(duplicates <= 32 * 8, "{duplicates} duplicates");
}
