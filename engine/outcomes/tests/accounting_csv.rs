//! PowerMTA CSV read back by an independent reader, Python's `csv` module:
//! every field survives, including commas, quotes, leading spaces and
//! non-ASCII text.

use std::borrow::Cow;
use std::net::IpAddr;
use std::process::Command;

use sluice_outcomes::accounting::{write_csv_header, EventKind, Record, ResponseRecord};
use sluice_outcomes::Category;
use sluice_smtp::EnhancedCode;

fn record(kind: EventKind, sender: &'static str, text: &'static str) -> Record<'static> {
    Record {
        kind,
        id: "id-1".into(),
        sender: sender.into(),
        recipient: "bob@example.net".into(),
        queue: "example.net".into(),
        site: None,
        source: Some("pool, \"a\"".into()),
        size_bytes: 2048,
        response: Some(ResponseRecord {
            code: if kind == EventKind::Delivery {
                250
            } else {
                550
            },
            enhanced: if kind == EventKind::Delivery {
                EnhancedCode::new(2, 0, 0)
            } else {
                EnhancedCode::new(5, 7, 1)
            },
            text: Cow::Borrowed(text),
        }),
        peer_host: Some("mx.example.net".into()),
        peer_addr: Some("2001:db8::25".parse::<IpAddr>().unwrap()),
        local_addr: Some("192.0.2.7".parse::<IpAddr>().unwrap()),
        created_unix_ms: 1_795_430_000_000,
        event_unix_ms: 1_795_434_000_000,
        attempts: 2,
        bounce_category: (kind != EventKind::Delivery).then_some(Category::SpamRelated),
        tls: None,
        tenant: None,
        campaign: Some(" job 7 ".into()),
    }
}

#[test]
fn python_csv_reads_back_every_field() {
    let records = [
        record(
            EventKind::Delivery,
            "plain@example.org",
            "2.0.0 OK 1700000000 x1si123 - gsmtp",
        ),
        record(
            EventKind::Bounce,
            "\"quoted, local\"@example.org",
            "blocked, see \"https://example.net\"\nsecond line",
        ),
        record(EventKind::TransientFailure, "", "caf\u{e9} r\u{e9}ponse"),
        record(EventKind::AdminBounce, "x@example.org", ""),
    ];
    let mut out = Vec::new();
    write_csv_header(&mut out);
    for r in &records {
        r.write_csv_line(&mut out);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("acct.csv");
    std::fs::write(&path, &out).unwrap();
    let script = "import csv, json, sys\n\
                  with open(sys.argv[1], newline='', encoding='utf-8') as f:\n\
                  \x20   print(json.dumps(list(csv.DictReader(f, strict=True))))\n";
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&path)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: Vec<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(rows.len(), records.len());
    let header: Vec<&str> = sluice_outcomes::CSV_HEADER.split(',').collect();
    for row in &rows {
        let keys: Vec<&str> = row.keys().map(String::as_str).collect();
        let mut sorted_header = header.clone();
        sorted_header.sort_unstable();
        let mut sorted_keys = keys.clone();
        sorted_keys.sort_unstable();
        assert_eq!(sorted_keys, sorted_header);
    }
    let get = |i: usize, k: &str| rows[i][k].as_str().unwrap().to_owned();
    assert_eq!(get(0, "type"), "d");
    assert_eq!(get(0, "dsnAction"), "relayed");
    assert_eq!(get(0, "dsnStatus"), "2.0.0 (success)");
    assert_eq!(
        get(0, "dsnDiag"),
        "smtp;250 2.0.0 2.0.0 OK 1700000000 x1si123 - gsmtp"
    );
    assert_eq!(get(0, "dsnMta"), "mx.example.net (2001:db8::25)");
    assert_eq!(get(0, "bounceCat"), "");
    assert_eq!(get(0, "timeLogged"), "2026-11-23 11:40:00+0000");
    assert_eq!(get(0, "timeQueued"), "2026-11-23 10:33:20+0000");
    assert_eq!(get(0, "dlvSourceIp"), "192.0.2.7");
    assert_eq!(get(0, "dlvDestinationIp"), "2001:db8::25");
    assert_eq!(get(0, "dlvSize"), "2048");
    assert_eq!(get(0, "vmta"), "pool, \"a\"");
    assert_eq!(get(0, "jobId"), " job 7 ");
    assert_eq!(get(1, "type"), "b");
    assert_eq!(get(1, "orig"), "\"quoted, local\"@example.org");
    assert_eq!(
        get(1, "dsnStatus"),
        "5.7.1 (delivery not authorized, message refused)"
    );
    assert_eq!(
        get(1, "dsnDiag"),
        "smtp;550 5.7.1 blocked, see \"https://example.net\" second line"
    );
    assert_eq!(get(1, "bounceCat"), "spam-related");
    assert_eq!(get(2, "type"), "t");
    assert_eq!(get(2, "orig"), "");
    assert_eq!(get(2, "dsnDiag"), "smtp;550 5.7.1 caf\u{e9} r\u{e9}ponse");
    assert_eq!(get(3, "type"), "b");
    assert_eq!(get(3, "dsnDiag"), "smtp;550 5.7.1");
}
