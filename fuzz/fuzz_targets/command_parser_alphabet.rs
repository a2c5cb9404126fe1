//! Server sessions fed bytes mapped onto an SMTP alphabet (verbs, paths,
//! parameters, line endings, dots), so the fuzzer reaches deep states:
//! results never depend on chunking and every reply is well formed.
#![no_main]

use std::rc::Rc;

use libfuzzer_sys::fuzz_target;
use sluice_smtp::client::{Parsed, ReplyParser};
use sluice_smtp::server::{Event, ServerConfig, ServerSession};
use sluice_smtp::Reply;

const ALPHABET: &[&[u8]] = &[
    b"\r\n",
    b"\r",
    b"\n",
    b".",
    b"\r\n.\r\n",
    b"\r\n..",
    b" ",
    b":",
    b"<",
    b">",
    b"@",
    b"a",
    b"x.test",
    b"=",
    b"EHLO c\r\n",
    b"HELO c\r\n",
    b"MAIL FROM:",
    b"<a@b.test>",
    b"<>",
    b"RCPT TO:",
    b"<r@b.test>",
    b"DATA\r\n",
    b"BDAT ",
    b"3",
    b"0",
    b" LAST",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"QUIT\r\n",
    b"VRFY x\r\n",
    b"HELP\r\n",
    b"STARTTLS\r\n",
    b"AUTH PLAIN\r\n",
    b"SIZE=10",
    b" BODY=8BITMIME",
    b" SMTPUTF8",
    b" RET=HDRS",
    b" ENVID=a+2Bb",
    b" NOTIFY=SUCCESS,DELAY",
    b" ORCPT=rfc822;a+40b",
    b"\xc3\xa9",
    b"\xff",
    b"EXPN x\r\n",
];

fn run(input: &[u8], cuts: &[usize]) -> (Vec<u8>, Vec<String>, Vec<u8>) {
    let mut config = ServerConfig::new("mx.test");
    config.message_bytes_max = 64;
    config.recipients_max = 3;
    let mut session = ServerSession::new(Rc::new(config));
    session.greeting(Reply::greeting("mx.test"));
    let mut out = Vec::new();
    let mut events = Vec::new();
    let mut body = Vec::new();
    let mut closed = false;
    let mut buf = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&input.len())) {
        let end = end.clamp(start, input.len());
        buf.extend_from_slice(&input[start..end]);
        start = end;
        let mut pos = 0;
        loop {
            let step = session.feed(&buf[pos..]);
            pos += step.consumed;
            match step.event {
                Event::NeedInput => break,
                // Backpressure: write the replies out, then go on.
                Event::Blocked if session.write_output(&mut out) > 0 => {}
                Event::Blocked => break,
                Event::Close(_) => {
                    closed = true;
                    break;
                }
                Event::Mail { token, .. }
                | Event::Rcpt { token, .. }
                | Event::MessageEnd { token } => {
                    session
                        .reply(token, Reply::ok())
                        .expect("token outstanding");
                }
                Event::Auth { token, .. } | Event::AuthResponse { token, .. } => {
                    session
                        .reply(token, Reply::fixed(535, (5, 7, 8), "no"))
                        .expect("token outstanding");
                }
                Event::StartTls => session.tls_established(),
                // Chunk boundaries follow the reads; the bytes must not.
                Event::BodyChunk(bytes) => body.extend_from_slice(bytes),
                // How much arrived before a refusal depends on the reads;
                // the application drops it anyway.
                // (and so does which problem was noticed first).
                Event::MessageAborted { .. } => {
                    body.clear();
                    events.push("MessageAborted".into());
                }
                ref other => events.push(format!("{other:?}")),
            }
        }
        buf.drain(..pos);
        session.write_output(&mut out);
    }
    (out, events, body)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut_seed, tokens)) = data.split_first() else {
        return;
    };
    let input: Vec<u8> = tokens
        .iter()
        .flat_map(|&t| ALPHABET[usize::from(t) % ALPHABET.len()].iter().copied())
        .collect();
    let step = usize::from(cut_seed).max(1);
    let cuts: Vec<usize> = (step..input.len()).step_by(step).collect();
    let whole = run(&input, &[]);
    let split = run(&input, &cuts);
    // STARTTLS injection (RFC 3207 §4.2) is detected from the bytes that
    // arrived with the STARTTLS line, so it legitimately depends on the
    // split; everything else must not.
    let injection = |events: &[String]| events.iter().any(|e| e.contains("StartTlsInjection"));
    if !injection(&whole.1) && !injection(&split.1) {
        assert_eq!(whole, split);
    }
    // Every byte the server wrote parses as replies.
    let mut parser = ReplyParser::default();
    let mut rest = &whole.0[..];
    while !rest.is_empty() {
        match parser.feed(rest) {
            Ok(Parsed::Complete(_, used)) => rest = &rest[used..],
            other => panic!("server wrote a bad reply: {other:?}"),
        }
    }
});
