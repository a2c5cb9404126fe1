//! Throughput of the protocol core, with smtp-proto as a baseline where it
//! has the same function.
//!
//! Run: `cargo bench -p sluice-smtp --bench protocol`

use std::collections::HashMap;
use std::hint::black_box;
use std::rc::Rc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sluice_smtp::client::{
    BodyEncoding, ClientConfig, ClientEvent, ClientSession, Envelope, Parsed, Recipient,
    ReplyParser, TlsPolicy,
};
use sluice_smtp::server::{Event, ServerConfig, ServerSession};
use sluice_smtp::{DataReceiver, DotStuffer, Reply};

/// A plausible message body of about `bytes` octets: 76-column lines, a few
/// starting with a dot so stuffing has work to do.
fn body(bytes: usize) -> Vec<u8> {
    let mut out =
        b"From: sender@example.com\r\nTo: rcpt@example.net\r\nSubject: benchmark\r\n\r\n".to_vec();
    let mut line = 0;
    while out.len() < bytes {
        if line % 10 == 3 {
            out.push(b'.');
        }
        let text = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod te";
        out.extend_from_slice(text);
        out.extend_from_slice(b"\r\n");
        line += 1;
    }
    out.truncate(bytes - 2);
    out.extend_from_slice(b"\r\n");
    out
}

const TRANSACTIONS: usize = 1000;

fn pipelined_commands() -> (Vec<u8>, u64) {
    let mut input = b"EHLO client.example.com\r\n".to_vec();
    for _ in 0..TRANSACTIONS {
        input.extend_from_slice(
            b"MAIL FROM:<sender@example.com> SIZE=2048 BODY=8BITMIME\r\nRCPT TO:<rcpt@example.net> NOTIFY=FAILURE\r\nRSET\r\n",
        );
    }
    (input, 1 + 3 * TRANSACTIONS as u64)
}

fn commands(c: &mut Criterion) {
    let (input, count) = pipelined_commands();
    let config = Rc::new(ServerConfig::new("mx.example.com"));
    let mut group = c.benchmark_group("server_commands");
    group.throughput(Throughput::Elements(count));
    let mut out = Vec::with_capacity(64 * 1024);
    group.bench_function("sluice_session", |b| {
        b.iter(|| {
            let mut session = ServerSession::new(Rc::clone(&config));
            session.greeting(Reply::greeting("mx.example.com"));
            let mut pos = 0;
            loop {
                let step = session.feed(&input[pos..]);
                pos += step.consumed;
                match step.event {
                    Event::Mail { token, .. } | Event::Rcpt { token, .. } => {
                        session.reply(token, Reply::ok()).expect("token");
                    }
                    Event::NeedInput | Event::Blocked | Event::Close(_) => break,
                    _ => {}
                }
                if session.replies_pending() > 64 {
                    out.clear();
                    session.write_output(&mut out);
                }
            }
            out.clear();
            session.write_output(&mut out);
            black_box(out.len())
        })
    });
    group.bench_function("sluice_parse_command", |b| {
        b.iter(|| {
            let mut n = 0;
            let mut start = 0;
            for end in memchr::memchr_iter(b'\n', &input) {
                let line = &input[start..end - 1];
                start = end + 1;
                n +=
                    usize::from(sluice_smtp::command::parse_command_bytes(black_box(line)).is_ok());
            }
            black_box(n)
        })
    });
    group.bench_function("smtp_proto_request_receiver", |b| {
        b.iter(|| {
            let mut receiver = smtp_proto::request::receiver::RequestReceiver::default();
            let mut bytes = input.iter();
            let mut n = 0;
            while let Ok(request) = receiver.ingest(&mut bytes) {
                black_box(&request);
                n += 1;
            }
            black_box(n)
        })
    });
    group.finish();
}

fn replies(c: &mut Criterion) {
    let mut wire = Vec::new();
    for _ in 0..TRANSACTIONS {
        wire.extend_from_slice(
            b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok: queued as 4Xyz12\r\n",
        );
    }
    let count = 3 * TRANSACTIONS as u64;
    let mut group = c.benchmark_group("replies");
    group.throughput(Throughput::Elements(count));
    group.bench_function("sluice_reply_parser", |b| {
        b.iter(|| {
            let mut parser = ReplyParser::default();
            let mut input = &wire[..];
            let mut n = 0;
            while let Ok(Parsed::Complete(reply, used)) = parser.feed(input) {
                black_box(&reply);
                input = &input[used..];
                n += 1;
            }
            black_box(n)
        })
    });
    group.bench_function("smtp_proto_response_receiver", |b| {
        b.iter(|| {
            let mut receiver = smtp_proto::response::parser::ResponseReceiver::default();
            let mut bytes = wire.iter();
            let mut n = 0;
            while let Ok(response) = receiver.parse(&mut bytes) {
                black_box(&response);
                receiver.reset();
                n += 1;
            }
            black_box(n)
        })
    });
    let ehlo = b"250-mx.example.net\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n";
    group.throughput(Throughput::Elements(1));
    group.bench_function("sluice_ehlo_capabilities", |b| {
        b.iter(|| {
            let mut parser = ReplyParser::default();
            match parser.feed(black_box(ehlo)) {
                Ok(Parsed::Complete(reply, _)) => {
                    black_box(sluice_smtp::client::Capabilities::from_ehlo(&reply))
                }
                _ => unreachable!("complete EHLO reply"),
            }
        })
    });
    group.finish();
}

fn stuffing(c: &mut Criterion) {
    for size in [2 * 1024, 20 * 1024] {
        let body = body(size);
        let mut wire = Vec::new();
        DotStuffer::stuff_into(&body, &mut wire);
        let mut group = c.benchmark_group(format!("body_{}k", size / 1024));
        group.throughput(Throughput::Bytes(body.len() as u64));
        let mut out = Vec::with_capacity(wire.len() + 64);
        group.bench_function("dot_stuff_into_buffer", |b| {
            b.iter(|| {
                out.clear();
                DotStuffer::stuff_into(black_box(&body), &mut out);
                black_box(out.len())
            })
        });
        group.bench_function("dot_stuff_pieces_for_writev", |b| {
            b.iter(|| {
                let mut pieces = 0usize;
                let mut bytes = 0usize;
                for piece in DotStuffer::new(black_box(&body)) {
                    pieces += 1;
                    bytes += piece.len();
                }
                black_box((pieces, bytes))
            })
        });
        group.bench_function("unstuff_borrowed_chunks", |b| {
            b.iter(|| {
                let mut rx = DataReceiver::new(1000);
                let mut input = &wire[..];
                let mut bytes = 0;
                loop {
                    let step = rx.feed(input);
                    bytes += step.chunk.len();
                    input = &input[step.consumed..];
                    if step.ended {
                        break;
                    }
                }
                black_box(bytes)
            })
        });
        group.bench_function("unstuff_into_buffer", |b| {
            b.iter(|| {
                out.clear();
                let mut rx = DataReceiver::new(1000);
                let mut input = &wire[..];
                loop {
                    let step = rx.feed(input);
                    out.extend_from_slice(step.chunk);
                    input = &input[step.consumed..];
                    if step.ended {
                        break;
                    }
                }
                black_box(out.len())
            })
        });
        group.bench_function("smtp_proto_data_receiver", |b| {
            b.iter(|| {
                out.clear();
                let mut rx = smtp_proto::request::receiver::DataReceiver::new();
                let ended = rx.ingest(&mut wire.iter(), &mut out);
                black_box((ended, out.len()))
            })
        });
        group.finish();
    }
}

/// Whole transactions through both state machines in memory: the protocol
/// work per message, client and server together.
fn sessions(c: &mut Criterion) {
    const MESSAGES: u64 = 200;
    let body = body(2048);
    let bodies: HashMap<u64, &[u8]> = (0..MESSAGES).map(|id| (id, &body[..])).collect();
    let server_config = Rc::new(ServerConfig::new("mx.example.com"));
    let mut group = c.benchmark_group("sessions");
    group.throughput(Throughput::Elements(MESSAGES));
    for chunking in [true, false] {
        let name = if chunking {
            "client_server_2k_bdat"
        } else {
            "client_server_2k_data"
        };
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let mut config = ClientConfig::new("client.example.com");
                    config.tls = TlsPolicy::Disabled;
                    config.use_chunking = chunking;
                    config.transactions_queued_max = MESSAGES as usize;
                    let mut client = ClientSession::new(config);
                    for id in 0..MESSAGES {
                        let rcpt = vec![Recipient::new("rcpt@example.net")];
                        let envelope =
                            Envelope::new(id, "sender@example.com", rcpt, body.len() as u64);
                        client.queue(envelope).expect("queue has room");
                    }
                    client.quit();
                    client
                },
                |mut client| {
                    let mut server = ServerSession::new(Rc::clone(&server_config));
                    server.greeting(Reply::greeting("mx.example.com"));
                    let mut to_server = Vec::with_capacity(64 * 1024);
                    let mut to_client = Vec::with_capacity(16 * 1024);
                    let mut delivered = 0u64;
                    let mut received = 0usize;
                    while !client.is_closed() {
                        server.write_output(&mut to_client);
                        client.feed(&to_client);
                        to_client.clear();
                        while let Some(event) = client.poll_event() {
                            if let ClientEvent::Recipient { .. } = event {
                                delivered += 1;
                            }
                        }
                        while let Some(transmit) = client.poll_transmit(&mut to_server) {
                            let bytes = bodies[&transmit.id];
                            match transmit.encoding {
                                BodyEncoding::Raw => to_server.extend_from_slice(bytes),
                                BodyEncoding::DotStuffed => {
                                    DotStuffer::stuff_into(bytes, &mut to_server)
                                }
                            }
                        }
                        let mut pos = 0;
                        loop {
                            let step = server.feed(&to_server[pos..]);
                            pos += step.consumed;
                            match step.event {
                                Event::Mail { token, .. }
                                | Event::Rcpt { token, .. }
                                | Event::MessageEnd { token } => {
                                    server.reply(token, Reply::ok()).expect("token")
                                }
                                Event::BodyChunk(chunk) => received += chunk.len(),
                                Event::NeedInput | Event::Blocked | Event::Close(_) => break,
                                _ => {}
                            }
                        }
                        to_server.drain(..pos);
                    }
                    assert_eq!(delivered, MESSAGES);
                    black_box(received)
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, commands, replies, stuffing, sessions);
criterion_main!(benches);
