//! Server session tests: transcripts replayed at every chunk size.

use std::rc::Rc;

use super::*;
use crate::reply::Reply;

/// What a test driver saw: output bytes and a log of events.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Transcript {
    pub output: String,
    pub events: Vec<String>,
    pub bodies: Vec<Vec<u8>>,
    pub closed: Option<CloseReason>,
}

/// Drives a session over `input` fed in `chunk`-byte reads, as a real driver
/// with a small buffer would. Tokens are answered at once by `decide`.
pub(crate) fn drive(
    config: ServerConfig,
    input: &[u8],
    chunk: usize,
    mut decide: impl FnMut(&Event<'_>) -> Reply,
) -> Transcript {
    let mut session = ServerSession::new(Rc::new(config));
    session.greeting(Reply::greeting("mx.test"));
    let mut t = Transcript::default();
    let mut out = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut body = Vec::new();
    let mut fed = 0;
    'outer: loop {
        // Read: append the next chunk.
        if fed < input.len() {
            let end = (fed + chunk.max(1)).min(input.len());
            buf.extend_from_slice(&input[fed..end]);
            fed = end;
        }
        let mut pos = 0;
        loop {
            let step = session.feed(&buf[pos..]);
            pos += step.consumed;
            let token = match &step.event {
                Event::Mail { token, .. }
                | Event::Rcpt { token, .. }
                | Event::MessageEnd { token }
                | Event::Auth { token, .. }
                | Event::AuthResponse { token, .. } => Some(*token),
                _ => None,
            };
            match &step.event {
                Event::NeedInput | Event::Blocked => {
                    session.write_output(&mut out);
                    break;
                }
                Event::Close(reason) => {
                    t.closed = Some(*reason);
                    break 'outer;
                }
                Event::BodyChunk(bytes) => body.extend_from_slice(bytes),
                Event::MessageEnd { .. } => {
                    t.bodies.push(std::mem::take(&mut body));
                    t.events.push("MessageEnd".into());
                }
                Event::MessageAborted { error } => {
                    body.clear();
                    t.events.push(format!("Aborted({error:?})"));
                }
                Event::StartTls => {
                    t.events.push("StartTls".into());
                    session.write_output(&mut out);
                    session.tls_established();
                }
                other => t.events.push(event_name(other)),
            }
            if let Some(token) = token {
                let reply = decide(&step.event);
                session.reply(token, reply).expect("token outstanding");
            }
        }
        buf.drain(..pos);
        if fed == input.len() && pos == 0 && !session.has_output() {
            break;
        }
    }
    session.write_output(&mut out);
    t.output = String::from_utf8_lossy(&out).into_owned();
    t
}

fn event_name(event: &Event<'_>) -> String {
    match event {
        Event::Mail { from, params, .. } => {
            format!(
                "Mail({}, {:?})",
                from.map(|m| m.as_str()).unwrap_or("<>"),
                params.size
            )
        }
        Event::Rcpt { to, .. } => format!("Rcpt({to})"),
        Event::Rejected { code, error } => format!("Rejected({code} {error:?})"),
        other => format!("{other:?}"),
    }
}

pub(crate) fn accept_all(_: &Event<'_>) -> Reply {
    Reply::ok()
}

fn config() -> ServerConfig {
    let mut config = ServerConfig::new("mx.test");
    config.extensions -= crate::extensions::Extensions::STARTTLS;
    config
}

fn replies(t: &Transcript) -> Vec<u16> {
    t.output
        .split("\r\n")
        .filter(|l| l.len() >= 4 && l.as_bytes()[3] == b' ' || l.len() == 3)
        .map(|l| l[..3].parse().unwrap())
        .collect()
}

#[test]
fn pipelined_transaction_at_every_chunk_size() {
    let input = b"EHLO c.test\r\nMAIL FROM:<a@b.test> SIZE=20\r\nRCPT TO:<x@y.test>\r\nRCPT TO:<z@y.test>\r\nDATA\r\nHello\r\n..dot\r\n.\r\nQUIT\r\n";
    let reference = drive(config(), input, input.len(), accept_all);
    assert_eq!(
        replies(&reference),
        [220, 250, 250, 250, 250, 354, 250, 221]
    );
    assert_eq!(reference.bodies, [b"Hello\r\n.dot\r\n".to_vec()]);
    assert_eq!(reference.closed, Some(CloseReason::Quit));
    for chunk in 1..input.len() {
        assert_eq!(
            drive(config(), input, chunk, accept_all),
            reference,
            "chunk {chunk}"
        );
    }
}

#[test]
fn bdat_transactions_back_to_back() {
    let input = b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nBDAT 5\r\nHel\r\nBDAT 3 LAST\r\nlo!MAIL FROM:<>\r\nRCPT TO:<x@y.test>\r\nBDAT 0 LAST\r\nQUIT\r\n";
    let reference = drive(config(), input, input.len(), accept_all);
    assert_eq!(
        replies(&reference),
        [220, 250, 250, 250, 250, 250, 250, 250, 250, 221]
    );
    assert_eq!(reference.bodies, [b"Hel\r\nlo!".to_vec(), Vec::new()]);
    for chunk in 1..input.len() {
        assert_eq!(
            drive(config(), input, chunk, accept_all),
            reference,
            "chunk {chunk}"
        );
    }
}

#[test]
fn bad_sequence_is_answered_by_the_session() {
    let input = b"MAIL FROM:<a@b.test>\r\nEHLO c\r\nRCPT TO:<x@y.test>\r\nDATA\r\nMAIL FROM:<a@b.test>\r\nMAIL FROM:<a@b.test>\r\nDATA\r\nXYZZY\r\nQUIT\r\n";
    let t = drive(config(), input, 7, accept_all);
    assert_eq!(
        replies(&t),
        [220, 503, 250, 503, 503, 250, 503, 554, 500, 221]
    );
}

#[test]
fn hundred_and_first_recipient_gets_452() {
    let mut input = b"EHLO c\r\nMAIL FROM:<a@b.test>\r\n".to_vec();
    for i in 0..101 {
        input.extend_from_slice(format!("RCPT TO:<r{i}@y.test>\r\n").as_bytes());
    }
    input.extend_from_slice(b"DATA\r\nx\r\n.\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<r100@y.test>\r\n");
    let t = drive(config(), &input, 64, accept_all);
    let codes = replies(&t);
    assert_eq!(codes[3 + 100], 452);
    assert!(t.output.contains("452 4.5.3"));
    assert_eq!(&codes[104..], [354, 250, 250, 250]);
}

#[test]
fn smuggled_ending_does_not_end_data() {
    let input = b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\nx\n.\nMAIL FROM:<evil@x.test>\r\n.\r\nQUIT\r\n";
    for chunk in [1, 3, input.len()] {
        let t = drive(config(), input, chunk, accept_all);
        assert_eq!(
            replies(&t),
            [220, 250, 250, 250, 354, 554, 221],
            "chunk {chunk}"
        );
        assert!(t
            .events
            .iter()
            .any(|e| e.starts_with("Aborted(ContentBareLineEnding")));
        assert!(!t.events.iter().any(|e| e.contains("evil")));
    }
}

#[test]
fn deferred_end_of_data_reply_keeps_order() {
    let mut session = ServerSession::new(Rc::new(config()));
    session.greeting(Reply::greeting("mx.test"));
    let input = b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\n";
    let mut pos = 0;
    let mut out = Vec::new();
    loop {
        let step = session.feed(&input[pos..]);
        pos += step.consumed;
        match step.event {
            Event::Mail { token, .. } | Event::Rcpt { token, .. } => {
                session.reply(token, Reply::ok()).unwrap()
            }
            Event::NeedInput => break,
            _ => {}
        }
    }
    session.write_output(&mut out);
    out.clear();
    let input = b"x\r\n.\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\n";
    let mut pos = 0;
    let mut end_token = None;
    loop {
        let step = session.feed(&input[pos..]);
        pos += step.consumed;
        match step.event {
            Event::MessageEnd { token } => end_token = Some(token),
            Event::Mail { token, .. } | Event::Rcpt { token, .. } => {
                session.reply(token, Reply::ok()).unwrap()
            }
            Event::NeedInput => break,
            _ => {}
        }
    }
    // The group commit has not completed: nothing may be written yet.
    assert_eq!(session.write_output(&mut out), 0);
    session
        .reply(end_token.unwrap(), Reply::fixed(250, (2, 0, 0), "queued"))
        .unwrap();
    assert!(session.reply(end_token.unwrap(), Reply::ok()).is_err());
    session.write_output(&mut out);
    assert_eq!(out, b"250 2.0.0 queued\r\n250 2.0.0 OK\r\n250 2.0.0 OK\r\n");
}

#[test]
fn starttls_with_pipelined_plaintext_is_an_injection() {
    let mut config = config();
    config.extensions |= crate::extensions::Extensions::STARTTLS;
    let t = drive(
        config.clone(),
        b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<a@b.test>\r\n",
        1000,
        accept_all,
    );
    assert_eq!(t.closed, Some(CloseReason::StartTlsInjection));
    assert!(t
        .output
        .ends_with("421 4.7.0 Data after STARTTLS, closing connection\r\n"));
    let t = drive(config, b"EHLO c\r\nSTARTTLS\r\n", 1000, accept_all);
    assert!(t.output.contains("220 2.0.0 Ready to start TLS"));
}

#[test]
fn long_command_line_is_refused_without_buffering() {
    let mut input = b"EHLO c\r\nNOOP ".to_vec();
    input.extend(std::iter::repeat_n(b'x', 5000));
    input.extend_from_slice(b"\r\nNOOP\r\n");
    let t = drive(config(), &input, 300, accept_all);
    assert_eq!(replies(&t), [220, 250, 500, 250]);
}

#[test]
fn too_big_message_is_refused_after_its_end() {
    let mut config = config();
    config.message_bytes_max = 10;
    let input = b"EHLO c\r\nMAIL FROM:<a@b.test> SIZE=11\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\n0123456789\r\n.\r\nNOOP\r\n";
    let t = drive(config, input, 5, accept_all);
    assert_eq!(replies(&t), [220, 250, 552, 250, 250, 354, 552, 250]);
    assert!(t.bodies.is_empty());
}

const TXN: &[u8] = b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\n";

fn with_body(body: &[u8]) -> Vec<u8> {
    [TXN, b"DATA\r\n", body, b"QUIT\r\n"].concat()
}

#[test]
fn body_edge_cases_at_every_chunk_size() {
    let cases: [(&[u8], &[u8]); 5] = [
        // An empty body.
        (b".\r\n", b""),
        // A dot at the start of a line, and a line that is only a dot.
        (b"..start\r\n..\r\nx\r\n.\r\n", b".start\r\n.\r\nx\r\n"),
        // A dot not at a line start stays.
        (b"a.b\r\n.\r\n", b"a.b\r\n"),
        // Almost-markers are content.
        (b"x\r\n. \r\n.x\r\n.\r\n", b"x\r\n \r\nx\r\n"),
        // 998 octets plus CRLF is the longest legal line.
        (
            &[&[b'y'; 998][..], b"\r\n.\r\n"].concat().leak()[..],
            &[&[b'y'; 998][..], b"\r\n"].concat().leak()[..],
        ),
    ];
    for (wire, content) in cases {
        let input = with_body(wire);
        let reference = drive(config(), &input, input.len(), accept_all);
        assert_eq!(
            reference.bodies,
            [content.to_vec()],
            "{:?}",
            String::from_utf8_lossy(wire)
        );
        assert_eq!(replies(&reference), [220, 250, 250, 250, 354, 250, 221]);
        for chunk in 1..40 {
            assert_eq!(
                drive(config(), &input, chunk, accept_all),
                reference,
                "chunk {chunk}"
            );
        }
    }
}

#[test]
fn every_smuggling_ending_is_refused_and_never_ends_data() {
    for ending in [
        &b"\n.\n"[..],
        b"\r\n.\n",
        b"\n.\r\n",
        b"\r.\r\n",
        b"\r\n.\r",
    ] {
        let input = with_body(&[b"x", ending, b"MAIL FROM:<evil@x.test>\r\n\r\n.\r\n"].concat());
        for chunk in [1, 2, 5, input.len()] {
            let t = drive(config(), &input, chunk, accept_all);
            assert_eq!(
                replies(&t),
                [220, 250, 250, 250, 354, 554, 221],
                "{ending:?} chunk {chunk}"
            );
            assert!(t.bodies.is_empty());
        }
    }
    // Tolerated: passed through as content, still not an end.
    let mut tolerant = config();
    tolerant.bare_line_ending = BareLineEnding::Tolerate;
    let t = drive(tolerant, &with_body(b"x\n.\ny\r\n.\r\n"), 3, accept_all);
    assert_eq!(t.bodies, [b"x\n.\ny\r\n".to_vec()]);
}

#[test]
fn content_line_over_998_is_refused() {
    let input = with_body(&[&[b'y'; 999][..], b"\r\n.\r\n"].concat());
    let t = drive(config(), &input, 100, accept_all);
    assert_eq!(replies(&t), [220, 250, 250, 250, 354, 554, 221]);
    assert!(t.events.iter().any(|e| e == "Aborted(ContentLineTooLong)"));
}

#[test]
fn bare_lf_command_is_refused_by_default() {
    let t = drive(config(), b"EHLO c\nNOOP\r\n", 100, accept_all);
    assert_eq!(replies(&t), [220, 500, 250]);
    let mut tolerant = config();
    tolerant.bare_line_ending = BareLineEnding::Tolerate;
    let t = drive(tolerant, b"EHLO c\nNOOP\n", 100, accept_all);
    assert_eq!(replies(&t), [220, 250, 250]);
}

#[test]
fn data_and_bdat_are_never_mixed() {
    let input = [TXN, b"BDAT 2\r\nabDATA\r\nBDAT 1 LAST\r\nc"].concat();
    let t = drive(config(), &input, 3, accept_all);
    assert_eq!(replies(&t), [220, 250, 250, 250, 250, 503, 250]);
    assert_eq!(t.bodies, [b"abc".to_vec()]);
}

#[test]
fn bdat_errors_discard_the_chunk() {
    // Without a transaction: refused, and the chunk bytes are skipped.
    let t = drive(
        config(),
        b"EHLO c\r\nBDAT 10 LAST\r\nNOOP\r\nNOOPNOOP\r\n",
        4,
        accept_all,
    );
    assert_eq!(replies(&t), [220, 250, 503, 250]);
    // Too big: refused, later chunks discarded, next transaction fine.
    let mut small = config();
    small.message_bytes_max = 4;
    let input = [TXN, b"BDAT 3\r\nabcBDAT 3 LAST\r\ndefMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nBDAT 1 LAST\r\nz"].concat();
    let t = drive(small, &input, 5, accept_all);
    assert_eq!(replies(&t), [220, 250, 250, 250, 250, 552, 250, 250, 250]);
    assert_eq!(t.bodies, [b"z".to_vec()]);
    assert!(t.events.iter().any(|e| e == "Aborted(MessageTooBig)"));
}

#[test]
fn rcpt_waits_for_the_mail_decision_and_data_for_rcpts() {
    let mut session = ServerSession::new(Rc::new(config()));
    session.greeting(Reply::greeting("mx.test"));
    let input = b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\n";
    let mut pos = 0;
    let mut mail = None;
    loop {
        let step = session.feed(&input[pos..]);
        pos += step.consumed;
        match step.event {
            Event::Mail { token, .. } => mail = Some(token),
            Event::Blocked => break,
            Event::Ehlo { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    // The RCPT line was not consumed: its validity depends on MAIL's reply.
    assert!(input[pos..].starts_with(b"RCPT"));
    session
        .reply(mail.unwrap(), Reply::fixed(550, (5, 7, 1), "no"))
        .unwrap();
    let step = session.feed(&input[pos..]);
    assert!(matches!(
        step.event,
        Event::Rejected {
            error: ProtocolError::NoMail,
            ..
        }
    ));
    let mut out = Vec::new();
    session.write_output(&mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.ends_with("550 5.7.1 no\r\n503 5.5.1 Need MAIL command\r\n"),
        "{text}"
    );
}

#[test]
fn outstanding_replies_are_bounded() {
    let mut config = config();
    config.replies_pending_max = 4;
    let mut session = ServerSession::new(Rc::new(config));
    session.greeting(Reply::greeting("mx.test"));
    let input = b"NOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\n";
    let mut pos = 0;
    let mut noops = 0;
    loop {
        let step = session.feed(&input[pos..]);
        pos += step.consumed;
        match step.event {
            Event::Noop => noops += 1,
            Event::Blocked => break,
            other => panic!("{other:?}"),
        }
    }
    // Greeting + 3 NOOP replies fill the 4 slots.
    assert_eq!(noops, 3);
    let mut out = Vec::new();
    session.write_output(&mut out);
    assert!(matches!(session.feed(&input[pos..]).event, Event::Noop));
}

#[test]
fn auth_exchange_with_challenges() {
    let mut config = config();
    config.extensions |= crate::extensions::Extensions::AUTH;
    config.auth_requires_tls = false;
    let mut step_replies = vec![
        Reply::plain(ReplyCode::new(334).unwrap(), "VXNlcm5hbWU6"),
        Reply::plain(ReplyCode::new(334).unwrap(), "UGFzc3dvcmQ6"),
        Reply::fixed(235, (2, 7, 0), "Authentication successful"),
    ]
    .into_iter();
    let t = drive(
        config,
        b"EHLO c\r\nAUTH LOGIN\r\ndXNlcg==\r\ncGFzcw==\r\nAUTH PLAIN\r\n",
        1,
        |_| step_replies.next().unwrap_or_else(Reply::ok),
    );
    assert!(t.output.contains("250 AUTH PLAIN LOGIN\r\n"));
    assert!(t.output.contains(
        "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 2.7.0 Authentication successful\r\n"
    ));
    assert!(t.output.ends_with("503 5.5.1 Already authenticated\r\n"));
    assert!(t
        .events
        .iter()
        .any(|e| e.contains("AuthResponse") && e.contains("cGFzcw==")));
}

#[test]
fn auth_requires_tls_by_default() {
    let mut config = config();
    config.extensions |= crate::extensions::Extensions::AUTH;
    let t = drive(
        config,
        b"EHLO c\r\nAUTH PLAIN AGEAYg==\r\n",
        100,
        accept_all,
    );
    assert!(!t.output.contains("AUTH"));
    assert!(t
        .output
        .ends_with("538 5.7.11 Encryption required for requested authentication mechanism\r\n"));
}

#[test]
fn starttls_resets_the_session() {
    let mut config = config();
    config.extensions |= crate::extensions::Extensions::STARTTLS;
    // The driver writes the 220 and completes the handshake at the StartTls
    // event, before the next read: here the transcript is fed in two reads.
    let mut session = ServerSession::new(Rc::new(config));
    session.greeting(Reply::greeting("mx.test"));
    let mut out = Vec::new();
    let first = b"EHLO c\r\nSTARTTLS\r\n";
    let mut pos = 0;
    while pos < first.len() {
        let step = session.feed(&first[pos..]);
        pos += step.consumed;
        if step.event == Event::StartTls {
            session.write_output(&mut out);
            session.tls_established();
        }
    }
    assert!(session.is_tls());
    let second = b"MAIL FROM:<a@b.test>\r\nEHLO c\r\n";
    let mut pos = 0;
    while pos < second.len() {
        pos += session.feed(&second[pos..]).consumed;
    }
    out.clear();
    session.write_output(&mut out);
    let text = String::from_utf8(out).unwrap();
    // MAIL needs a new EHLO; the new EHLO reply no longer offers STARTTLS.
    assert!(
        text.starts_with("503 5.5.1 Send HELO/EHLO first\r\n"),
        "{text}"
    );
    assert!(!text.contains("STARTTLS"));
}

#[test]
fn greeting_554_allows_only_quit() {
    let mut session = ServerSession::new(Rc::new(config()));
    session.greeting(Reply::fixed(554, (5, 3, 2), "No service"));
    let input = b"EHLO c\r\nQUIT\r\n";
    let mut pos = 0;
    loop {
        let step = session.feed(&input[pos..]);
        pos += step.consumed;
        if matches!(step.event, Event::Close(_) | Event::NeedInput) {
            break;
        }
    }
    let mut out = Vec::new();
    session.write_output(&mut out);
    assert_eq!(
        out,
        b"554 5.3.2 No service\r\n503 5.5.1 No service, send QUIT\r\n221 2.0.0 Bye\r\n"
    );
}

#[test]
fn too_many_errors_close_with_421() {
    let mut config = config();
    config.errors_max = 3;
    let t = drive(config, b"X\r\nX\r\nX\r\nX\r\nX\r\nX\r\n", 100, accept_all);
    assert_eq!(replies(&t), [220, 500, 500, 500, 500, 421]);
    assert_eq!(t.closed, Some(CloseReason::TooManyErrors));
}

#[test]
fn parameters_need_their_extension() {
    let mut config = config();
    config.extensions -=
        crate::extensions::Extensions::DSN | crate::extensions::Extensions::SMTPUTF8;
    let input = "EHLO c\r\nMAIL FROM:<a@b.test> RET=HDRS\r\nMAIL FROM:<a@b.test> SMTPUTF8\r\nMAIL FROM:<\u{e9}@b.test>\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test> NOTIFY=NEVER\r\nRCPT TO:<\u{e9}@y.test>\r\n";
    let t = drive(config, input.as_bytes(), 9, accept_all);
    assert_eq!(replies(&t), [220, 250, 555, 555, 553, 250, 555, 553]);
}

#[test]
fn late_replies_never_touch_a_new_transaction() {
    let mut session = ServerSession::new(Rc::new(config()));
    session.greeting(Reply::greeting("mx.test"));
    let input = b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRSET\r\nMAIL FROM:<a@b.test>\r\n";
    let mut pos = 0;
    let mut tokens = Vec::new();
    loop {
        let step = session.feed(&input[pos..]);
        pos += step.consumed;
        match step.event {
            Event::Mail { token, .. } => tokens.push(token),
            Event::NeedInput => break,
            _ => {}
        }
    }
    assert_eq!(tokens.len(), 2);
    // Accepting the first (reset) MAIL must not open the second.
    session.reply(tokens[0], Reply::ok()).unwrap();
    let step = session.feed(b"RCPT TO:<x@y.test>\r\n");
    assert_eq!(step.event, Event::Blocked);
    session.reply(tokens[1], Reply::ok()).unwrap();
    assert!(matches!(
        session.feed(b"RCPT TO:<x@y.test>\r\n").event,
        Event::Rcpt { .. }
    ));
}

#[test]
fn bdat_content_gets_the_checks_data_gets() {
    // Found by the end-to-end bad-input suite: BDAT bodies used to pass bare
    // CR/LF and over-long lines that DATA refuses, so a DATA-only next hop
    // could be handed a smuggled ending.
    let long = [&[b'y'; 999][..], b"\r\n"].concat();
    for (body, code) in [
        (&b"x\r.\r\nMAIL FROM:<evil@x.test>\r\n"[..], 554),
        (b"a\n.\nb\r\n", 554),
        (b"ends in a bare CR\r", 554),
        (&long[..], 554),
        (b"fine\r\n", 250),
    ] {
        let mut input = TXN.to_vec();
        input.extend_from_slice(format!("BDAT {} LAST\r\n", body.len()).as_bytes());
        input.extend_from_slice(body);
        input.extend_from_slice(b"QUIT\r\n");
        for chunk in [1, 3, input.len()] {
            let t = drive(config(), &input, chunk, accept_all);
            assert_eq!(
                replies(&t),
                [220, 250, 250, 250, code, 221],
                "{body:?} chunk {chunk}"
            );
        }
    }
    let mut tolerant = config();
    tolerant.bare_line_ending = BareLineEnding::Tolerate;
    let input = [TXN, b"BDAT 4 LAST\r\na\nb\nQUIT\r\n"].concat();
    let t = drive(tolerant, &input, 2, accept_all);
    assert_eq!(replies(&t), [220, 250, 250, 250, 250, 221]);
}

#[test]
fn bdat_content_refusal_aborts_the_message_first() {
    let input = [TXN, b"BDAT 4 LAST\r\na\nb\nQUIT\r\n"].concat();
    let t = drive(config(), &input, 100, accept_all);
    assert!(
        t.events
            .iter()
            .any(|e| e == "Aborted(ContentBareLineEnding)"),
        "{:?}",
        t.events
    );
    assert!(t.bodies.is_empty(), "no message end for a refused body");
}

#[test]
fn implicit_tls_hides_starttls_and_offers_auth() {
    let mut config = ServerConfig::new("mx.test");
    config.extensions |=
        crate::extensions::Extensions::STARTTLS | crate::extensions::Extensions::AUTH;
    let mut session = ServerSession::new(Rc::new(config));
    session.tls_at_connect();
    session.greeting(Reply::greeting("mx.test"));
    assert!(session.is_tls());
    let step = session.feed(b"EHLO c\r\n");
    assert!(matches!(step.event, Event::Ehlo { .. }));
    let mut out = Vec::new();
    session.write_output(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("AUTH PLAIN LOGIN"), "{text}");
    assert!(!text.contains("STARTTLS"), "{text}");
    // After the greeting it is too late to claim TLS.
    let mut late = ServerSession::new(Rc::new(ServerConfig::new("mx.test")));
    late.greeting(Reply::greeting("mx.test"));
    late.tls_at_connect();
    assert!(!late.is_tls());
}
