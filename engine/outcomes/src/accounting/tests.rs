use std::net::Ipv4Addr;

use proptest::prelude::*;
use sluice_smtp::ReplyCode;

use super::*;

pub(crate) fn sample() -> Record<'static> {
    Record {
        kind: EventKind::Bounce,
        id: "0001-abcd".into(),
        sender: "bounces@example.org".into(),
        recipient: "bob@example.net".into(),
        queue: "example.net".into(),
        site: Some("gmail".into()),
        source: Some("pool-a".into()),
        size_bytes: 12_345,
        response: Some(ResponseRecord {
            code: 550,
            enhanced: EnhancedCode::new(5, 1, 1),
            text: "The email account that you tried to reach does not exist.\nPlease try again"
                .into(),
        }),
        peer_host: Some("gmail-smtp-in.l.google.com".into()),
        peer_addr: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 25))),
        local_addr: Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7))),
        created_unix_ms: 1_795_430_000_000,
        event_unix_ms: 1_795_434_000_123,
        attempts: 1,
        bounce_category: Some(Category::BadMailbox),
        tls: Some(TlsRecord {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_256_GCM_SHA384".into(),
            verified: true,
        }),
        tenant: Some("acme".into()),
        campaign: Some("spring-sale".into()),
    }
}

#[test]
fn json_line_shape_and_round_trip() {
    let r = sample();
    let mut out = Vec::new();
    r.write_json_line(&mut out).unwrap();
    assert_eq!(out.last(), Some(&b'\n'));
    assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
    let text = std::str::from_utf8(&out).unwrap();
    assert!(
        text.starts_with("{\"type\":\"bounce\",\"id\":\"0001-abcd\""),
        "{text}"
    );
    assert!(text.contains("\"enhanced\":\"5.1.1\""));
    assert!(text.contains("\"bounce_category\":\"bad-mailbox\""));
    assert!(text.contains("\"peer_addr\":\"192.0.2.25\""));
    let back: Record<'_> = serde_json::from_slice(&out[..out.len() - 1]).unwrap();
    assert_eq!(back, r);
    // Borrowed, not copied, when nothing needs unescaping.
    assert!(matches!(back.id, Cow::Borrowed(_)));
}

#[test]
fn json_rejects_bad_enhanced_codes() {
    let bad = r#"{"type":"delivery","id":"1","sender":"","recipient":"r","queue":"q","size_bytes":1,"response":{"code":250,"enhanced":"2.0.0x","text":"ok"},"created_unix_ms":0,"event_unix_ms":0,"attempts":1}"#;
    assert!(serde_json::from_str::<Record<'_>>(bad).is_err());
    let unknown_kind = bad.replace("\"delivery\"", "\"delivered\"");
    assert!(serde_json::from_str::<Record<'_>>(&unknown_kind).is_err());
}

#[test]
fn csv_line() {
    let mut out = Vec::new();
    write_csv_header(&mut out);
    sample().write_csv_line(&mut out);
    let text = String::from_utf8(out).unwrap();
    let mut lines = text.split("\r\n");
    assert_eq!(lines.next(), Some(CSV_HEADER));
    assert_eq!(
        lines.next(),
        Some("b,2026-11-23 11:40:00+0000,2026-11-23 10:33:20+0000,bounces@example.org,bob@example.net,failed,5.1.1 (bad destination mailbox address),smtp;550 5.1.1 The email account that you tried to reach does not exist. Please try again,gmail-smtp-in.l.google.com (192.0.2.25),bad-mailbox,pool-a,198.51.100.7,192.0.2.25,12345,spring-sale")
    );
    assert_eq!(lines.next(), Some(""));
}

#[test]
fn csv_quotes_and_defaults() {
    let mut r = sample();
    r.kind = EventKind::Expiration;
    r.response = None;
    r.peer_host = None;
    r.sender = "\"odd, sender\"@example.org".into();
    r.campaign = Some(" padded ".into());
    r.bounce_category = Some(Category::MessageExpired);
    let mut out = Vec::new();
    r.write_csv_line(&mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains(",\"\"\"odd, sender\"\"@example.org\","),
        "{text}"
    );
    assert!(
        text.contains(",failed,5.4.7 (delivery time expired),,192.0.2.25,message-expired,"),
        "{text}"
    );
    assert!(text.ends_with(",\" padded \"\r\n"), "{text}");

    let mut d = sample();
    d.kind = EventKind::Delivery;
    let ok = Reply::plain(ReplyCode::OK, "queued as \"x\", thanks");
    d.response = Some(ResponseRecord::from(&ok));
    d.bounce_category = None;
    let mut out = Vec::new();
    d.write_csv_line(&mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("d,"));
    assert!(
        text.contains(",relayed,2.0.0 (success),\"smtp;250 queued as \"\"x\"\", thanks\","),
        "{text}"
    );
}

#[test]
fn type_letters() {
    let kinds = [
        (EventKind::Reception, "r", ""),
        (EventKind::Delivery, "d", "relayed"),
        (EventKind::TransientFailure, "t", "delayed"),
        (EventKind::Bounce, "b", "failed"),
        (EventKind::Expiration, "b", "failed"),
        (EventKind::AdminBounce, "b", "failed"),
    ];
    for (k, letter, action) in kinds {
        assert_eq!((k.csv_type(), k.dsn_action()), (letter, action));
    }
}

#[test]
fn ipv6_fits_the_stack_buffer() {
    let longest: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
        .parse()
        .unwrap();
    let shown = DisplayBuf::ip(longest);
    assert_eq!(&*shown, longest.to_string());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn json_round_trips_arbitrary_text(
        id in "\\PC{0,40}",
        sender in any::<String>(),
        text in any::<String>(),
        code in 200u16..600,
        attempts in any::<u32>(),
    ) {
        let mut r = sample();
        r.id = id.into();
        r.sender = sender.into();
        r.response = Some(ResponseRecord { code, enhanced: None, text: text.into() });
        r.attempts = attempts;
        let mut out = Vec::new();
        r.write_json_line(&mut out).unwrap();
        prop_assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        let back: Record<'_> = serde_json::from_slice(&out).unwrap();
        prop_assert_eq!(back, r);
    }

    #[test]
    fn csv_line_has_fifteen_fields(sender in any::<String>(), text in any::<String>()) {
        let mut r = sample();
        r.sender = sender.clone().into();
        r.response = Some(ResponseRecord { code: 550, enhanced: None, text: text.into() });
        let mut out = Vec::new();
        r.write_csv_line(&mut out);
        // A minimal RFC 4180 reader: count fields outside quotes.
        let mut fields = 1;
        let mut in_quotes = false;
        let body = &out[..out.len() - 2];
        for &b in body {
            match b {
                b'"' => in_quotes = !in_quotes,
                b',' if !in_quotes => fields += 1,
                _ => {}
            }
        }
        prop_assert!(!in_quotes);
        prop_assert_eq!(fields, 15);
    }
}
