//! Property tests: results never depend on how input is chunked; stuffing
//! round-trips; commands round-trip; one reply per command; every
//! recipient gets exactly one outcome.

mod common;

use std::borrow::Cow;
use std::collections::HashMap;
use std::rc::Rc;

use proptest::prelude::*;
use sluice_smtp::client::{
    encode, ClientConfig, Envelope, Outcome, Parsed, Recipient, ReplyParser,
};
use sluice_smtp::command::{
    parse_command, Body, Command, MailParams, Notify, Orcpt, RcptParams, Ret,
};
use sluice_smtp::server::ServerConfig;
use sluice_smtp::{DataReceiver, DotStuffer, EnhancedCode, Extensions, Reply, ReplyCode};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    }
}

/// Byte strings over an alphabet that hits the parsers' special cases.
fn smtp_bytes(len: usize) -> impl Strategy<Value = Vec<u8>> {
    let pieces = prop::sample::select(vec![
        &b"\r\n"[..],
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
        b"EHLO c\r\n",
        b"HELO c\r\n",
        b"MAIL FROM:<a@b.test>\r\n",
        b"MAIL FROM:<>",
        b"RCPT TO:<r@b.test>\r\n",
        b"RCPT TO:<",
        b"DATA\r\n",
        b"BDAT 3\r\n",
        b"BDAT 2 LAST\r\n",
        b"BDAT 0 LAST\r\n",
        b"RSET\r\n",
        b"NOOP\r\n",
        b"QUIT\r\n",
        b"VRFY x\r\n",
        b"SIZE=10",
        b" BODY=8BITMIME",
        b" NOTIFY=NEVER",
        b"\xff",
    ]);
    prop::collection::vec(pieces, 0..len).prop_map(|v| v.concat())
}

fn cuts(max: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0..max.max(1), 0..12).prop_map(|mut v| {
        v.sort_unstable();
        v.dedup();
        v
    })
}

fn server_config() -> Rc<ServerConfig> {
    let mut config = ServerConfig::new("mx.test");
    config.message_bytes_max = 200;
    config.errors_max = 1000;
    Rc::new(config)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn server_results_do_not_depend_on_chunking(input in smtp_bytes(60), cuts in cuts(600)) {
        let config = server_config();
        let whole = common::run_server(&config, &input, &[]);
        let split = common::run_server(&config, &input, &cuts);
        prop_assert_eq!(whole, split);
    }

    #[test]
    fn one_reply_per_command_line(lines in prop::collection::vec(
        (prop::sample::select(vec!["NOOP", "RSET", "EHLO c", "HELO", "MAIL FROM:<a@b.test>", "MAIL FROM:<>",
            "RCPT TO:<r@b.test>", "RCPT TO:<bad", "VRFY x", "HELP", "EXPN x", "XYZZY", "", "MAIL FROM:<a@b.test> FOO"]),
         0usize..3), 0..40)
    ) {
        let mut input = Vec::new();
        for (verb, pad) in &lines {
            input.extend_from_slice(verb.as_bytes());
            input.extend(std::iter::repeat_n(b'x', pad * 700));
            input.extend_from_slice(b"\r\n");
        }
        let t = common::run_server(&server_config(), &input, &[]);
        // One reply for the greeting and one per line.
        prop_assert_eq!(common::reply_codes(&t.output).len(), 1 + lines.len());
    }

    #[test]
    fn stuff_then_receive_round_trips(
        lines in prop::collection::vec(prop::collection::vec(prop::sample::select(vec![b'.', b'a', b' ', b'\t', 0x80u8]), 0..20), 0..20),
        final_crlf in any::<bool>(),
        cuts in cuts(500),
    ) {
        let mut body = lines.join(&b"\r\n"[..]);
        if final_crlf && !body.is_empty() {
            body.extend_from_slice(b"\r\n");
        }
        let mut wire = Vec::new();
        for piece in DotStuffer::new(&body) {
            wire.extend_from_slice(piece);
        }
        prop_assert_eq!(wire.len(), DotStuffer::stuffed_len(&body));
        wire.extend_from_slice(b"NEXT");
        let (content, end) = receive(&wire, &cuts);
        let mut expected = body.clone();
        if !expected.is_empty() && !expected.ends_with(b"\r\n") {
            expected.extend_from_slice(b"\r\n");
        }
        prop_assert_eq!(content, expected);
        prop_assert_eq!(end, Some(wire.len() - 4));
    }

    #[test]
    fn data_receiver_does_not_depend_on_chunking(input in smtp_bytes(40), cuts in cuts(400)) {
        prop_assert_eq!(receive(&input, &[]), receive(&input, &cuts));
    }

    #[test]
    fn data_ends_only_at_exact_crlf_dot_crlf(input in smtp_bytes(40)) {
        let (_, end) = receive(&input, &[]);
        let mut framed = b"\r\n".to_vec();
        framed.extend_from_slice(&input);
        let first = framed.windows(5).position(|w| w == b"\r\n.\r\n").map(|p| p + 5 - 2);
        // The DATA line's CRLF counts as the first CRLF, hence the framing.
        prop_assert_eq!(end, first);
    }

    #[test]
    fn reply_stream_does_not_depend_on_chunking(
        replies in prop::collection::vec(reply_strategy(), 1..6),
        cuts in cuts(600),
        lf_only in any::<bool>(),
    ) {
        let mut wire = Vec::new();
        for reply in &replies {
            reply.encode(true, &mut wire);
        }
        if lf_only {
            wire = String::from_utf8(wire).unwrap().replace("\r\n", "\n").into_bytes();
        }
        let parsed = parse_replies(&wire, &cuts);
        prop_assert_eq!(parsed, replies);
    }

    #[test]
    fn mail_and_rcpt_round_trip(
        local in "[a-z0-9+_-]{1,8}(\\.[a-z0-9+_-]{1,8}){0,2}",
        domain in "[a-z]([a-z0-9-]{0,8}[a-z0-9])?\\.[a-z]{2,6}",
        size in prop::option::of(any::<u64>()),
        body in prop::option::of(prop::sample::select(vec![Body::SevenBit, Body::EightBitMime, Body::BinaryMime])),
        smtputf8 in any::<bool>(),
        ret in prop::option::of(prop::sample::select(vec![Ret::Full, Ret::Headers])),
        envid in prop::option::of("[ -~]{1,30}"),
        notify in prop::option::of(0u8..8),
        orcpt in prop::option::of("[ -~]{1,30}"),
    ) {
        let address = format!("{local}@{domain}");
        let params = MailParams { size, body, smtputf8, ret, envid: envid.map(Cow::Owned), auth: None };
        let mut line = Vec::new();
        encode::mail(&mut line, &address, &params);
        let text = std::str::from_utf8(&line[..line.len() - 2]).unwrap();
        match parse_command(text) {
            Ok(Command::Mail { from, params: parsed }) => {
                prop_assert_eq!(from.map(|m| m.as_str()), Some(address.as_str()));
                prop_assert_eq!(parsed, params);
            }
            other => prop_assert!(false, "{:?}", other),
        }
        let params = RcptParams {
            notify: notify.map(Notify::from_bits_truncate),
            orcpt: orcpt.map(|o| Orcpt { addr_type: "rfc822", address: Cow::Owned(o) }),
        };
        line.clear();
        encode::rcpt(&mut line, &address, &params);
        let text = std::str::from_utf8(&line[..line.len() - 2]).unwrap();
        match parse_command(text) {
            Ok(Command::Rcpt { to, params: parsed }) => {
                prop_assert_eq!(to.as_str(), address.as_str());
                prop_assert_eq!(parsed, params);
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn client_and_server_agree_at_any_chunk_size(
        bodies in prop::collection::vec(prop::collection::vec(prop::sample::select(vec![b'.', b'a', b'\r', b'\n']), 0..80), 1..5),
        rcpts in 1usize..4,
        chunk in 1usize..300,
        pipelining in any::<bool>(),
        chunking in any::<bool>(),
    ) {
        // Bodies with CRLF only (bare CR/LF are refused by the server).
        let bodies: Vec<Vec<u8>> = bodies.into_iter().map(|b| normalize(&b)).collect();
        let mut server = ServerConfig::new("mx.test");
        if !pipelining { server.extensions -= Extensions::PIPELINING; }
        if !chunking { server.extensions -= Extensions::CHUNKING; }
        server.extensions -= Extensions::STARTTLS;
        let mut map = HashMap::new();
        let mut envelopes = Vec::new();
        for (i, body) in bodies.iter().enumerate() {
            let id = i as u64;
            map.insert(id, body.clone());
            let recipients = (0..rcpts).map(|r| Recipient::new(format!("r{r}@x.test"))).collect();
            envelopes.push(Envelope::new(id, "s@a.test", recipients, body.len() as u64));
        }
        let result = common::converse(ClientConfig::new("c.test"), server, envelopes, &map, chunk);
        prop_assert!(result.client_closed);
        prop_assert_eq!(result.outcomes.len(), bodies.len() * rcpts);
        prop_assert!(result.outcomes.values().all(|o| matches!(o, Outcome::Delivered(_))));
        prop_assert_eq!(result.done.len(), bodies.len());
        // BDAT carries the body exactly; DATA completes a missing final CRLF.
        let expected: Vec<Vec<u8>> = bodies.iter().map(|b| {
            let mut b = b.clone();
            if !chunking && !b.is_empty() && !b.ends_with(b"\r\n") { b.extend_from_slice(b"\r\n"); }
            b
        }).collect();
        prop_assert_eq!(result.messages, expected);
    }
}

fn normalize(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() * 2);
    for &b in body {
        match b {
            b'\r' => {}
            b'\n' => out.extend_from_slice(b"\r\n"),
            other => out.push(other),
        }
    }
    out
}

fn reply_strategy() -> impl Strategy<Value = Reply> {
    (
        prop::sample::select(vec![
            220u16, 221, 250, 251, 354, 421, 450, 452, 500, 550, 554,
        ]),
        prop::option::of((0u16..8, 0u16..20)),
        prop::collection::vec("[ -~]{0,30}", 1..4),
    )
        .prop_map(|(code, enhanced, lines)| {
            let code = ReplyCode::new(code).unwrap();
            let enhanced = enhanced
                .filter(|_| code.class() != 3)
                .and_then(|(s, d)| EnhancedCode::new(code.class(), s, d));
            // Text that itself looks like an enhanced code would be parsed
            // as one; trim leading spaces the encoder cannot preserve.
            let lines: Vec<String> = lines
                .into_iter()
                .map(|l| {
                    let l = l.trim_start().to_string();
                    if l.as_bytes().first().is_some_and(|b| b.is_ascii_digit()) {
                        format!("t{l}")
                    } else {
                        l
                    }
                })
                .collect();
            let mut text = lines.join("\n");
            if enhanced.is_some() && text.split('\n').any(str::is_empty) {
                text = text
                    .split('\n')
                    .map(|l| if l.is_empty() { "e" } else { l })
                    .collect::<Vec<_>>()
                    .join("\n");
            }
            Reply {
                code,
                enhanced,
                text: Cow::Owned(text),
            }
        })
}

fn parse_replies(wire: &[u8], cuts: &[usize]) -> Vec<Reply> {
    let mut parser = ReplyParser::default();
    let mut out = Vec::new();
    let mut start = 0;
    let mut bounds: Vec<usize> = cuts.iter().copied().filter(|&c| c < wire.len()).collect();
    bounds.push(wire.len());
    for end in bounds {
        if end < start {
            continue;
        }
        let mut piece = &wire[start..end];
        while !piece.is_empty() {
            match parser.feed(piece).expect("valid reply") {
                Parsed::Complete(reply, used) => {
                    out.push(reply);
                    piece = &piece[used..];
                }
                Parsed::Incomplete => break,
            }
        }
        start = end;
    }
    out
}

/// Un-stuffs `input` read in pieces; returns content and end offset.
fn receive(input: &[u8], cuts: &[usize]) -> (Vec<u8>, Option<usize>) {
    let mut rx = DataReceiver::new(usize::MAX);
    let mut content = Vec::new();
    let mut start = 0;
    let mut bounds: Vec<usize> = cuts.iter().copied().filter(|&c| c < input.len()).collect();
    bounds.push(input.len());
    let mut total = 0;
    for end in bounds {
        if end < start {
            continue;
        }
        let piece = &input[start..end];
        let mut pos = 0;
        while pos < piece.len() {
            let step = rx.feed(&piece[pos..]);
            content.extend_from_slice(step.chunk);
            pos += step.consumed;
            total += step.consumed;
            if step.ended {
                return (content, Some(total));
            }
        }
        start = end;
    }
    (content, None)
}
