//! Fixed protocol workloads for instruction counting, which stays stable on
//! a busy machine where wall-clock benchmarks do not:
//!
//! ```text
//! cargo build --release -p sluice-smtp --example workloads
//! engine/smtp/benches/instructions.sh
//! ```
//!
//! `workloads <name> <iterations>` runs one workload `iterations` times.

use std::hint::black_box;
use std::rc::Rc;

use sluice_smtp::client::{
    BodyEncoding, ClientConfig, ClientEvent, ClientSession, Envelope, Parsed, Recipient,
    ReplyParser, TlsPolicy,
};
use sluice_smtp::server::{Event, ServerConfig, ServerSession};
use sluice_smtp::{DataReceiver, DotStuffer, Reply};

const COMMANDS: &[u8] = b"MAIL FROM:<sender@example.com> SIZE=2048 BODY=8BITMIME\r\nRCPT TO:<rcpt@example.net> NOTIFY=FAILURE\r\nRSET\r\n";
const REPLIES: &[u8] = b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok: queued as 4Xyz12\r\n";

fn body(bytes: usize) -> Vec<u8> {
    let mut out =
        b"From: sender@example.com\r\nTo: rcpt@example.net\r\nSubject: benchmark\r\n\r\n".to_vec();
    let mut line = 0;
    while out.len() < bytes {
        if line % 10 == 3 {
            out.push(b'.');
        }
        out.extend_from_slice(
            b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod te\r\n",
        );
        line += 1;
    }
    out.truncate(bytes - 2);
    out.extend_from_slice(b"\r\n");
    out
}

fn main() {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_default();
    let iterations: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(1000);
    let body = body(2048);
    let mut wire = Vec::new();
    DotStuffer::stuff_into(&body, &mut wire);
    let mut out = Vec::with_capacity(64 * 1024);
    let config = Rc::new(ServerConfig::new("mx.example.com"));
    let mut total = 0usize;
    match name.as_str() {
        // Per iteration: 3 commands through a server session.
        "commands_session" => {
            let mut session = ServerSession::new(Rc::clone(&config));
            session.greeting(Reply::greeting("mx.example.com"));
            let mut pos = 0;
            while pos < b"EHLO c\r\n".len() {
                pos += session.feed(&b"EHLO c\r\n"[pos..]).consumed;
            }
            for _ in 0..iterations {
                let mut pos = 0;
                loop {
                    let step = session.feed(&COMMANDS[pos..]);
                    pos += step.consumed;
                    match step.event {
                        Event::Mail { token, .. } | Event::Rcpt { token, .. } => {
                            session.reply(token, Reply::ok()).expect("token")
                        }
                        Event::NeedInput => break,
                        _ => {}
                    }
                }
                out.clear();
                total += session.write_output(&mut out);
            }
        }
        // Per iteration: the same 3 command lines, parser only.
        "commands_sluice" => {
            for _ in 0..iterations {
                for line in COMMANDS.split_inclusive(|&b| b == b'\n') {
                    let line = &line[..line.len() - 2];
                    total += usize::from(
                        sluice_smtp::command::parse_command_bytes(black_box(line)).is_ok(),
                    );
                }
            }
        }
        "commands_smtp_proto" => {
            let mut receiver = smtp_proto::request::receiver::RequestReceiver::default();
            for _ in 0..iterations {
                let mut bytes = COMMANDS.iter();
                while let Ok(request) = receiver.ingest(&mut bytes) {
                    black_box(&request);
                    total += 1;
                }
            }
        }
        // Per iteration: 3 replies.
        "replies_sluice" => {
            let mut parser = ReplyParser::default();
            for _ in 0..iterations {
                let mut input = REPLIES;
                while let Ok(Parsed::Complete(reply, used)) = parser.feed(input) {
                    black_box(&reply);
                    input = &input[used..];
                    total += 1;
                }
            }
        }
        "replies_smtp_proto" => {
            let mut receiver = smtp_proto::response::parser::ResponseReceiver::default();
            for _ in 0..iterations {
                let mut bytes = REPLIES.iter();
                while let Ok(response) = receiver.parse(&mut bytes) {
                    black_box(&response);
                    receiver.reset();
                    total += 1;
                }
            }
        }
        // Per iteration: one 2 KB body.
        "stuff_2k" => {
            for _ in 0..iterations {
                out.clear();
                DotStuffer::stuff_into(black_box(&body), &mut out);
                total += out.len();
            }
        }
        "unstuff_2k_sluice" => {
            for _ in 0..iterations {
                let mut rx = DataReceiver::new(1000);
                let mut input = &wire[..];
                loop {
                    let step = rx.feed(black_box(input));
                    total += step.chunk.len();
                    input = &input[step.consumed..];
                    if step.ended {
                        break;
                    }
                }
            }
        }
        "unstuff_2k_smtp_proto" => {
            for _ in 0..iterations {
                out.clear();
                let mut rx = smtp_proto::request::receiver::DataReceiver::new();
                rx.ingest(&mut black_box(&wire).iter(), &mut out);
                total += out.len();
            }
        }
        // Per iteration: one 2 KB message through a client session and a
        // server session (both sides' protocol work), pipelined back to back.
        "session_bdat_2k" | "session_data_2k" => {
            let mut client_config = ClientConfig::new("client.example.com");
            client_config.tls = TlsPolicy::Disabled;
            client_config.use_chunking = name == "session_bdat_2k";
            let mut client = ClientSession::new(client_config);
            let mut server = ServerSession::new(Rc::clone(&config));
            server.greeting(Reply::greeting("mx.example.com"));
            let mut to_server = Vec::with_capacity(64 * 1024);
            let mut to_client = Vec::with_capacity(16 * 1024);
            let mut queued = 0usize;
            let mut delivered = 0usize;
            while delivered < iterations {
                while queued < iterations && client.transactions_pending() < 16 {
                    let rcpt = vec![Recipient::new("rcpt@example.net")];
                    let envelope =
                        Envelope::new(queued as u64, "sender@example.com", rcpt, body.len() as u64);
                    client.queue(envelope).expect("queue has room");
                    queued += 1;
                }
                server.write_output(&mut to_client);
                client.feed(&to_client);
                to_client.clear();
                while let Some(event) = client.poll_event() {
                    if let ClientEvent::Recipient { .. } = event {
                        delivered += 1;
                    }
                }
                while let Some(transmit) = client.poll_transmit(&mut to_server) {
                    match transmit.encoding {
                        BodyEncoding::Raw => to_server.extend_from_slice(&body),
                        BodyEncoding::DotStuffed => DotStuffer::stuff_into(&body, &mut to_server),
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
                        Event::BodyChunk(chunk) => total += chunk.len(),
                        Event::NeedInput | Event::Blocked | Event::Close(_) => break,
                        _ => {}
                    }
                }
                to_server.drain(..pos);
            }
        }
        "none" => {}
        other => {
            eprintln!("unknown workload {other:?}");
            std::process::exit(2);
        }
    }
    black_box(total);
}
