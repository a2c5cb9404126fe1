use std::time::{Duration, UNIX_EPOCH};

use proptest::prelude::*;
use sluice_smtp::ReplyCode;

use super::*;

fn reply(code: u16, e: (u8, u16, u16), text: &str) -> Reply {
    Reply {
        code: ReplyCode::new(code).unwrap(),
        enhanced: EnhancedCode::new(e.0, e.1, e.2),
        text: text.to_owned().into(),
    }
}

fn recipient<'a>(addr: &'a str, action: Action, diag: Option<&'a Reply>) -> DsnRecipient<'a> {
    DsnRecipient {
        final_recipient: addr,
        original_recipient: None,
        notify: None,
        action,
        status: diag
            .and_then(|d| d.enhanced)
            .unwrap_or(EnhancedCode::new(5, 0, 0).unwrap()),
        diagnostic: diag,
        remote_mta: Some("mx.example.net"),
        last_attempt: Some(UNIX_EPOCH + Duration::from_secs(1_795_434_000)),
        will_retry_until: None,
    }
}

fn request<'a>(recipients: &'a [DsnRecipient<'a>], original: &'a [u8]) -> DsnRequest<'a> {
    DsnRequest {
        reporting_mta: "mta1.sluice.example",
        from: "MAILER-DAEMON@mta1.sluice.example",
        original_sender: "sender@example.org",
        envid: Some("QQ314159"),
        ret: None,
        arrival_date: UNIX_EPOCH + Duration::from_secs(1_795_430_000),
        date: UNIX_EPOCH + Duration::from_secs(1_795_434_000),
        message_id: "<dsn.1@mta1.sluice.example>",
        recipients,
        original,
    }
}

const ORIGINAL: &[u8] =
    b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nbody line\r\n";

/// The invariants every DSN keeps, whatever went in.
pub(super) fn assert_well_formed(message: &[u8]) {
    assert!(message.ends_with(b"\r\n"));
    for (i, &b) in message.iter().enumerate() {
        assert!(b < 0x80 && b != 0, "non-7-bit byte {b:#x} at {i}");
        if b == b'\n' {
            assert!(i > 0 && message[i - 1] == b'\r', "bare LF at {i}");
        }
        if b == b'\r' {
            assert_eq!(message.get(i + 1), Some(&b'\n'), "bare CR at {i}");
        }
    }
    for line in message.split(|&b| b == b'\n') {
        assert!(
            line.len() <= LINE_BYTES_MAX + 1,
            "line of {} bytes",
            line.len()
        );
    }
}

#[test]
fn null_sender_never_gets_a_bounce() {
    let diag = reply(550, (5, 1, 1), "no such user");
    let rcpts = [recipient("x@example.net", Action::Failed, Some(&diag))];
    for sender in ["", "<>", " "] {
        let mut req = request(&rcpts, ORIGINAL);
        req.original_sender = sender;
        assert_eq!(build(&req), None, "sender {sender:?}");
    }
}

#[test]
fn notify_is_honoured() {
    let diag = reply(550, (5, 1, 1), "no such user");
    let mut never = recipient("never@example.net", Action::Failed, Some(&diag));
    never.notify = Some(Notify::empty());
    let mut success_only = recipient("s@example.net", Action::Failed, Some(&diag));
    success_only.notify = Some(Notify::SUCCESS);
    let delayed_default = recipient("d@example.net", Action::Delayed, None);
    let mut delay_not_asked = recipient("d2@example.net", Action::Delayed, None);
    delay_not_asked.notify = Some(Notify::FAILURE);
    let delivered_default = recipient("ok@example.net", Action::Delivered, None);
    let rcpts = [never, success_only, delay_not_asked, delivered_default];
    assert_eq!(build(&request(&rcpts, ORIGINAL)), None);

    let mut asked = recipient("ok@example.net", Action::Delivered, None);
    asked.notify = Some(Notify::SUCCESS);
    let rcpts = [never, delayed_default, asked];
    let dsn = build(&request(&rcpts, ORIGINAL)).unwrap();
    assert_eq!(dsn.reported, 2);
    let text = String::from_utf8(dsn.message).unwrap();
    assert!(!text.contains("never@example.net"));
    assert!(text.contains("Final-Recipient: rfc822; d@example.net\r\nAction: delayed"));
    assert!(text.contains("Final-Recipient: rfc822; ok@example.net\r\nAction: delivered"));
}

#[test]
fn structure_of_a_failure_report() {
    let diag = reply(
        550,
        (5, 1, 1),
        "The email account that you tried to reach does not exist.\nPlease try again",
    );
    let mut r = recipient("Bob@example.net", Action::Failed, Some(&diag));
    r.original_recipient = Some(OriginalRecipient {
        addr_type: "rfc822",
        address: "bob@example.net",
    });
    let rcpts = [r];
    let dsn = build(&request(&rcpts, ORIGINAL)).unwrap();
    assert_eq!(dsn.recipient, "sender@example.org");
    assert_well_formed(&dsn.message);
    let text = String::from_utf8(dsn.message).unwrap();
    for needle in [
        "To: <sender@example.org>\r\n",
        "Subject: Undelivered Mail Returned to Sender\r\n",
        "Date: Mon, 23 Nov 2026 11:40:00 +0000\r\n",
        "Message-ID: <dsn.1@mta1.sluice.example>\r\n",
        "Content-Type: multipart/report; report-type=delivery-status;",
        "Reporting-MTA: dns; mta1.sluice.example\r\n",
        "Original-Envelope-Id: QQ314159\r\n",
        "Arrival-Date: Mon, 23 Nov 2026 10:33:20 +0000\r\n",
        "Final-Recipient: rfc822; Bob@example.net\r\n",
        "Original-Recipient: rfc822; bob@example.net\r\n",
        "Action: failed\r\n",
        "Status: 5.1.1\r\n",
        "Remote-MTA: dns; mx.example.net\r\n",
        "Diagnostic-Code: smtp; 550 5.1.1 The email account that you tried to reach\r\n does not exist. Please try again\r\n",
        "Last-Attempt-Date: Mon, 23 Nov 2026 11:40:00 +0000\r\n",
        "Content-Type: text/rfc822-headers; charset=us-ascii\r\n",
        "Subject: hi\r\n",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    // HDRS (the default) returns no body.
    assert!(!text.contains("body line"));
}

#[test]
fn ret_full_returns_a_clean_message_and_only_headers_otherwise() {
    let diag = reply(550, (5, 1, 1), "no");
    let rcpts = [recipient("x@example.net", Action::Failed, Some(&diag))];
    let mut req = request(&rcpts, ORIGINAL);
    req.ret = Some(Ret::Full);
    let text = String::from_utf8(build(&req).unwrap().message).unwrap();
    assert!(text.contains("Content-Type: message/rfc822\r\n"));
    assert!(text.contains("\r\nbody line\r\n"));

    let eight_bit = "From: a@example.org\r\nSubject: caf\u{e9}\r\n\r\nna\u{ef}ve\r\n";
    req.original = eight_bit.as_bytes();
    let dsn = build(&req).unwrap();
    assert_well_formed(&dsn.message);
    let text = String::from_utf8(dsn.message).unwrap();
    assert!(text.contains("Content-Type: text/rfc822-headers"));
    assert!(text.contains("Content-Transfer-Encoding: quoted-printable"));
    assert!(text.contains("Subject: caf=C3=A9"));
    assert!(text.contains("only its headers are returned"));
    assert!(!text.contains("=C3=AFve"), "body must not be returned");
}

#[test]
fn hostile_texts_cannot_inject_headers() {
    let diag = reply(
        550,
        (5, 7, 1),
        "spam\r\nBcc: victim@example.com\u{0}\u{1b}[1m caf\u{e9}",
    );
    let mut r = recipient("x@example.net\r\nX-Evil: 1", Action::Failed, Some(&diag));
    r.remote_mta = Some("mx\nX-Evil: 2");
    let rcpts = [r];
    let mut req = request(&rcpts, ORIGINAL);
    req.envid = Some("id\r\nX-Evil: 3");
    req.reporting_mta = "mta\rX-Evil: 4";
    let dsn = build(&req).unwrap();
    assert_well_formed(&dsn.message);
    let text = String::from_utf8(dsn.message).unwrap();
    for line in text.split("\r\n") {
        assert!(
            !line.starts_with("X-Evil") && !line.starts_with("Bcc"),
            "{line}"
        );
    }
    assert!(
        text.contains("Diagnostic-Code: smtp; 550 5.7.1 spam Bcc: victim@example.com [1m caf?\r\n")
    );
    assert!(text.contains("Original-Envelope-Id: id+0D+0AX-Evil:+203\r\n"));
}

#[test]
fn long_fields_fold_and_non_ascii_addresses_use_utf8_type() {
    let long = "word ".repeat(400) + &"x".repeat(3000);
    let diag = reply(550, (5, 0, 0), &long);
    let r = recipient("j\u{f6}rg@b\u{fc}cher.example", Action::Failed, Some(&diag));
    let rcpts = [r];
    let dsn = build(&request(&rcpts, ORIGINAL)).unwrap();
    assert_well_formed(&dsn.message);
    let text = String::from_utf8(dsn.message).unwrap();
    assert!(text.contains("Final-Recipient: utf-8; j\\x{F6}rg@b\\x{FC}cher.example\r\n"));
    // The diagnostic is capped.
    assert!(text.len() < 16 << 10);
}

#[test]
fn boundary_avoids_the_content() {
    let diag = reply(550, (5, 1, 1), "no");
    let rcpts = [recipient("x@example.net", Action::Failed, Some(&diag))];
    let req = request(&rcpts, ORIGINAL);
    let first = String::from_utf8(build(&req).unwrap().message).unwrap();
    let start = first.find("boundary=\"").unwrap() + 10;
    let boundary = &first[start..start + first[start..].find('"').unwrap()];
    let hostile = format!("From: a@example.org\r\nX-B: {boundary}\r\n\r\n");
    let req = request(&rcpts, hostile.as_bytes());
    let second = String::from_utf8(build(&req).unwrap().message).unwrap();
    assert!(!second.contains(&format!("boundary=\"{boundary}\"")));
}

#[test]
fn header_block_and_qp() {
    assert_eq!(
        header_block(b"A: 1\r\nB: 2\r\n\r\nbody"),
        b"A: 1\r\nB: 2\r\n"
    );
    assert_eq!(header_block(b"A: 1\nB: 2\n\nbody"), b"A: 1\nB: 2\n");
    assert_eq!(header_block(b"A: 1"), b"A: 1");
    let mut out = Vec::new();
    quoted_printable(b"a=b \r\nc\rd\n\xff", &mut out);
    assert_eq!(out, b"a=3Db=20\r\nc=0Dd\r\n=FF");
    out.clear();
    quoted_printable(&[b'x'; 200], &mut out);
    assert!(out.split(|&b| b == b'\n').all(|l| l.len() <= 77));
    assert!(is_7bit_clean(b"a\r\nb"));
    assert!(!is_7bit_clean(b"a\nb"));
    assert!(!is_7bit_clean(b"a\rb"));
    assert!(!is_7bit_clean(&[b'a'; 999]));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_texts_never_make_a_malformed_dsn(
        text in proptest::collection::vec(any::<char>(), 0..2000),
        addr in "\\PC{0,80}",
        mta in proptest::option::of("\\PC{0,300}"),
        original in proptest::collection::vec(any::<u8>(), 0..3000),
        full in any::<bool>(),
        code in prop_oneof![Just(421u16), Just(450), Just(550), Just(554)],
    ) {
        let text: String = text.into_iter().collect();
        let diag = Reply {
            code: ReplyCode::new(code).unwrap(),
            enhanced: EnhancedCode::new((code / 100) as u8, 1, 1),
            text: text.into(),
        };
        let mut r = recipient(&addr, Action::Failed, Some(&diag));
        r.remote_mta = mta.as_deref();
        let rcpts = [r];
        let mut req = request(&rcpts, &original);
        req.ret = Some(if full { Ret::Full } else { Ret::Headers });
        let dsn = build(&req).unwrap();
        assert_well_formed(&dsn.message);
    }
}
