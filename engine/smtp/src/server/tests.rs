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
