//! Generated DSNs parsed by an independent parser: Python's `email`
//! package (tests/parse_dsn.py), which checks the MIME structure and the
//! delivery-status fields.

use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;
use sluice_outcomes::dsn::{build, Action, DsnRecipient, DsnRequest, OriginalRecipient};
use sluice_smtp::command::{Notify, Ret};
use sluice_smtp::{EnhancedCode, Reply, ReplyCode};

fn reply(code: u16, e: (u8, u16, u16), text: &str) -> Reply {
    Reply {
        code: ReplyCode::new(code).unwrap(),
        enhanced: EnhancedCode::new(e.0, e.1, e.2),
        text: text.to_owned().into(),
    }
}

fn at(secs: u64) -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[test]
fn python_email_parses_generated_dsns() {
    let bad_mailbox = reply(550, (5, 1, 1), "The email account that you tried to reach does not exist. Please try\ndouble-checking the recipient's email address for typos or\nunnecessary spaces. https://support.google.com/mail/?p=NoSuchUser - gsmtp");
    let deferred = reply(421, (4, 7, 0), "[TSS04] Messages from 192.0.2.10 temporarily deferred due to unexpected volume or user complaints");
    let hostile = reply(
        554,
        (5, 7, 1),
        "rejected\r\nX-Injected: yes\u{0} \u{e9}t\u{e9} --=_sluice",
    );
    let original = b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: Quarterly report\r\nMessage-ID: <m1@example.org>\r\n\r\nHello Bob,\r\n.\r\n--=_sluice_0\r\n";
    let original_8bit = "From: alice@example.org\r\nSubject: r\u{e9}sum\u{e9}\r\n\r\nCaf\u{e9}\r\n";

    let failed = DsnRecipient {
        final_recipient: "bob@example.net",
        original_recipient: Some(OriginalRecipient {
            addr_type: "rfc822",
            address: "Bob@Example.NET",
        }),
        notify: Some(Notify::FAILURE),
        action: Action::Failed,
        status: EnhancedCode::new(5, 1, 1).unwrap(),
        diagnostic: Some(&bad_mailbox),
        remote_mta: Some("gmail-smtp-in.l.google.com"),
        last_attempt: Some(at(1_795_434_000)),
        will_retry_until: None,
    };
    let delayed = DsnRecipient {
        final_recipient: "carol@example.com",
        original_recipient: None,
        notify: Some(Notify::DELAY | Notify::FAILURE),
        action: Action::Delayed,
        status: EnhancedCode::new(4, 7, 0).unwrap(),
        diagnostic: Some(&deferred),
        remote_mta: Some("mta5.am0.yahoodns.net"),
        last_attempt: Some(at(1_795_434_100)),
        will_retry_until: Some(at(1_795_866_000)),
    };
    let evil = DsnRecipient {
        final_recipient: "dave@example.com\r\nBcc: x@example.com",
        original_recipient: None,
        notify: None,
        action: Action::Failed,
        status: EnhancedCode::new(5, 7, 1).unwrap(),
        diagnostic: Some(&hostile),
        remote_mta: None,
        last_attempt: None,
        will_retry_until: None,
    };
    let base = DsnRequest {
        reporting_mta: "mta1.sluice.example",
        from: "MAILER-DAEMON@mta1.sluice.example",
        original_sender: "alice@example.org",
        envid: Some("batch-7/42"),
        ret: Some(Ret::Headers),
        arrival_date: at(1_795_430_000),
        date: at(1_795_434_200),
        message_id: "dsn-1@mta1.sluice.example",
        recipients: &[],
        original,
    };
    let set_a = [failed];
    let set_b = [failed, delayed, evil];
    let set_c = [delayed];
    let cases = [
        DsnRequest {
            recipients: &set_a,
            ..base
        },
        DsnRequest {
            recipients: &set_b,
            ret: Some(Ret::Full),
            ..base
        },
        DsnRequest {
            recipients: &set_c,
            envid: None,
            ret: None,
            ..base
        },
        DsnRequest {
            recipients: &set_a,
            ret: Some(Ret::Full),
            original: original_8bit.as_bytes(),
            ..base
        },
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for (i, req) in cases.iter().enumerate() {
        let dsn = build(req).expect("a DSN is due");
        assert_eq!(dsn.recipient, "alice@example.org");
        let path = dir.path().join(format!("dsn{i}.eml"));
        std::fs::write(&path, &dsn.message).unwrap();
        paths.push(path);
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/parse_dsn.py");
    let output = Command::new("python3")
        .arg(script)
        .args(&paths)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "parse_dsn.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let parsed: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(parsed.len(), 4);

    for p in &parsed {
        assert_eq!(p["content_type"], "multipart/report");
        assert_eq!(p["report_type"], "delivery-status");
        assert_eq!(p["to"], "<alice@example.org>");
        assert_eq!(p["auto_submitted"], "auto-replied");
        assert_eq!(
            p["per_message"]["Reporting-MTA"],
            "dns; mta1.sluice.example"
        );
        assert_eq!(
            p["per_message"]["Arrival-Date"],
            "Mon, 23 Nov 2026 10:33:20 +0000"
        );
    }

    // 0: one failure, headers returned.
    let p = &parsed[0];
    assert_eq!(
        p["parts"],
        serde_json::json!([
            "text/plain",
            "message/delivery-status",
            "text/rfc822-headers"
        ])
    );
    assert_eq!(p["subject"], "Undelivered Mail Returned to Sender");
    assert_eq!(p["per_message"]["Original-Envelope-Id"], "batch-7/42");
    let r = &p["per_recipient"][0];
    assert_eq!(r["Final-Recipient"], "rfc822; bob@example.net");
    assert_eq!(r["Original-Recipient"], "rfc822; Bob@Example.NET");
    assert_eq!(r["Action"], "failed");
    assert_eq!(r["Status"], "5.1.1");
    assert_eq!(r["Remote-MTA"], "dns; gmail-smtp-in.l.google.com");
    assert!(r["Diagnostic-Code"]
        .as_str()
        .unwrap()
        .starts_with("smtp; 550 5.1.1 The email account"));
    assert!(r["Diagnostic-Code"]
        .as_str()
        .unwrap()
        .ends_with("NoSuchUser - gsmtp"));
    assert_eq!(r["Last-Attempt-Date"], "Mon, 23 Nov 2026 11:40:00 +0000");
    assert_eq!(p["returned_headers"]["Subject"], "Quarterly report");

    // 1: three recipients, full message returned, hostile texts contained.
    let p = &parsed[1];
    assert_eq!(
        p["parts"],
        serde_json::json!(["text/plain", "message/delivery-status", "message/rfc822"])
    );
    let rs = p["per_recipient"].as_array().unwrap();
    assert_eq!(rs.len(), 3);
    assert_eq!(rs[1]["Action"], "delayed");
    assert_eq!(rs[1]["Will-Retry-Until"], "Sat, 28 Nov 2026 11:40:00 +0000");
    // Controls in an address are escaped (RFC 6533 `utf-8` type), not dropped.
    assert_eq!(
        rs[2]["Final-Recipient"],
        "utf-8; dave@example.com\\x{D}\\x{A}Bcc:\\x{20}x@example.com"
    );
    assert!(rs[2]["Diagnostic-Code"]
        .as_str()
        .unwrap()
        .contains("X-Injected: yes ?t? --=_sluice"));
    assert!(rs
        .iter()
        .all(|r| r.get("X-Injected").is_none() && r.get("Bcc").is_none()));
    assert_eq!(p["returned_headers"]["Message-ID"], "<m1@example.org>");
    assert!(p["returned_body"].as_str().unwrap().contains("Hello Bob,"));

    // 2: delay only.
    let p = &parsed[2];
    assert_eq!(p["subject"], "Delayed Mail (still being retried)");
    assert!(p["per_message"].get("Original-Envelope-Id").is_none());
    assert_eq!(p["per_recipient"][0]["Status"], "4.7.0");

    // 3: RET=FULL of an 8-bit message falls back to QP headers.
    let p = &parsed[3];
    assert_eq!(p["parts"][2], "text/rfc822-headers");
    assert_eq!(p["returned_headers"]["Subject"], "r\u{e9}sum\u{e9}");
}
