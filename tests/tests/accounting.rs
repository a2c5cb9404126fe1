//! The accounting log end to end: bounce categories and DSNs to the
//! sender, and (with receiver faults) every recipient's final outcome
//! exactly once, agreeing with the sink's own counts.
//!
//! Needs the release binaries (`cargo build --release --bins`) or
//! `SLUICE_BIN_DIR`; Python 3 parses the bounce.

mod ops;

use std::collections::HashMap;
use std::process::Command;

use ops::{count, wait_until, Engine, Sink, Smtp};

/// A permanent failure is logged as `Bounce` with its category, and the
/// sender gets an RFC 3464 report (parsed by Python's `email` package);
/// a message from `<>` bounces without one.
#[test]
fn a_bounce_is_categorised_and_reported_to_the_sender() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(dir.path(), "sink", &["--reject-local-part", "nobody"]);
    let engine = Engine::start(dir.path(), sink.port, "", "");
    let mut c = Smtp::connect(engine.port);
    let id = c.send(
        "sender@origin.test",
        &["ok@dest.test", "nobody@dest.test"],
        "m1",
    );
    assert!(id.starts_with("s0."), "{id}");
    // A bounce about a bounce is never sent.
    c.send("", &["nobody@dest.test"], "m2");
    c.quit();
    wait_until("the DSN delivered to the sender", || {
        engine
            .records()
            .iter()
            .any(|r| r["type"] == "Delivery" && r["recipient"] == "sender@origin.test")
    });
    let records = engine.records();
    // Receptions: two recipients of m1, one of m2, one DSN.
    assert_eq!(count(&records, "Reception"), 4, "{records:#?}");
    let bounces: Vec<_> = records.iter().filter(|r| r["type"] == "Bounce").collect();
    assert_eq!(bounces.len(), 2, "{bounces:#?}");
    for b in &bounces {
        assert_eq!(b["recipient"], "nobody@dest.test");
        assert_eq!(b["code"], 550);
        assert_eq!(b["category"], "bad-mailbox", "{b}");
        assert!(b["size"].as_u64().unwrap() > 0);
    }
    let dsn_reception: Vec<_> = records
        .iter()
        .filter(|r| r["type"] == "Reception" && r["sender"] == "")
        .collect();
    assert_eq!(dsn_reception.len(), 2, "m2 from <> and the one DSN");
    assert_eq!(
        records
            .iter()
            .filter(|r| r["type"] == "Reception" && r["recipient"] == "sender@origin.test")
            .count(),
        1,
        "exactly one DSN, to the sender of m1"
    );
    // The DSN as the sink received it, checked by Python's email package.
    let captured = sink.captured();
    let (path, _) = captured
        .iter()
        .find(|(_, t)| t.contains("multipart/report"))
        .expect("the DSN reached the sink");
    let script = r#"
import email, sys
from email import policy
raw = open(sys.argv[1], 'rb').read()
m = email.message_from_bytes(raw, policy=policy.default)
assert m.get_content_type() == 'multipart/report', m.get_content_type()
assert m.get_param('report-type') == 'delivery-status'
parts = list(m.iter_parts())
status = [p for p in parts if p.get_content_type() == 'message/delivery-status']
assert len(status) == 1, [p.get_content_type() for p in parts]
text = status[0].as_string()
assert 'nobody@dest.test' in text, text
assert 'Action: failed' in text, text
assert 'Status: 5.1.1' in text, text
assert 'Reporting-MTA: dns; sluice.test' in text or 'Reporting-MTA: dns;sluice.test' in text, text
print('ok')
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(path)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(path).unwrap_or_default()
    );
    // The CSV carries the same events with PowerMTA's header.
    let csv: String = std::fs::read_dir(dir.path().join("log"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().and_then(|x| x.to_str()) == Some("csv"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    assert!(csv.starts_with("type,timeLogged,timeQueued,orig,rcpt,dsnAction,dsnStatus,dsnDiag,dsnMta,bounceCat,vmta,dlvSourceIp,dlvDestinationIp,dlvSize,jobId\r\n"));
    assert!(csv.contains("bad-mailbox"), "{csv}");
    let kinds: HashMap<&str, usize> = csv.lines().skip(1).fold(HashMap::new(), |mut m, l| {
        *m.entry(l.split(',').next().unwrap_or("")).or_insert(0) += 1;
        m
    });
    assert_eq!(kinds.get("b"), Some(&2), "{csv}");
    assert_eq!(kinds.get("r"), Some(&4), "{csv}");
}
