//! Test drivers shared by the integration tests: an in-memory server
//! driver and a client↔server loop, both without sockets.

#![allow(dead_code)]

use std::collections::HashMap;
use std::rc::Rc;

use sluice_smtp::client::{BodyEncoding, ClientEvent, ClientSession, Envelope, Outcome};
use sluice_smtp::server::{CloseReason, Event, ServerConfig, ServerSession};
use sluice_smtp::{DotStuffer, Reply};

/// What a server driver saw.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ServerTranscript {
    pub output: Vec<u8>,
    pub events: Vec<String>,
    pub messages: Vec<Vec<u8>>,
    pub closed: Option<CloseReason>,
}

/// Feeds `input` to a fresh server session split at `cuts` (sorted byte
/// offsets), answering every token with 250 at once. A real driver keeps
/// unconsumed bytes and appends the next read, which this mimics.
pub fn run_server(config: &Rc<ServerConfig>, input: &[u8], cuts: &[usize]) -> ServerTranscript {
    let mut session = ServerSession::new(Rc::clone(config));
    session.greeting(Reply::greeting("mx.test"));
    let mut t = ServerTranscript::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut body = Vec::new();
    let mut bounds: Vec<usize> = cuts
        .iter()
        .copied()
        .filter(|&c| c > 0 && c < input.len())
        .collect();
    bounds.push(input.len());
    let mut fed = 0;
    let mut reads = bounds.into_iter();
    // Bounded: every iteration consumes input, or a read is appended.
    for _ in 0..input.len() * 4 + 64 {
        let mut pos = 0;
        let mut progress = false;
        loop {
            let step = session.feed(&buf[pos..]);
            pos += step.consumed;
            progress |= step.consumed > 0;
            let token = match &step.event {
                Event::Mail { token, .. }
                | Event::Rcpt { token, .. }
                | Event::MessageEnd { token }
                | Event::Auth { token, .. }
                | Event::AuthResponse { token, .. } => Some(*token),
                _ => None,
            };
            match &step.event {
                Event::NeedInput | Event::Blocked => break,
                Event::Close(reason) => {
                    t.closed = Some(*reason);
                    session.write_output(&mut t.output);
                    return t;
                }
                Event::BodyChunk(bytes) => body.extend_from_slice(bytes),
                Event::MessageEnd { .. } => {
                    t.messages.push(std::mem::take(&mut body));
                    t.events.push("MessageEnd".into());
                }
                // Which problem is noticed first depends on the reads; the
                // final refusal does not.
                Event::MessageAborted { .. } => {
                    body.clear();
                    t.events.push("MessageAborted".into());
                }
                Event::StartTls => {
                    t.events.push("StartTls".into());
                    session.tls_established();
                }
                other => t.events.push(format!("{other:?}")),
            }
            if let Some(token) = token {
                session
                    .reply(token, Reply::ok())
                    .expect("token outstanding");
            }
        }
        session.write_output(&mut t.output);
        buf.drain(..pos);
        match reads.next() {
            Some(end) => {
                buf.extend_from_slice(&input[fed..end]);
                fed = end;
            }
            None if !progress => break,
            None => {}
        }
    }
    t
}

/// Final reply codes in a server output (one per reply).
pub fn reply_codes(output: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(output);
    text.split("\r\n")
        .filter(|l| l.len() == 3 || (l.len() > 3 && l.as_bytes()[3] == b' '))
        .map(|l| l[..3].parse().expect("reply code"))
        .collect()
}

/// Result of a client↔server conversation.
#[derive(Debug, Default)]
pub struct Conversation {
    pub outcomes: HashMap<(u64, usize), Outcome>,
    pub done: Vec<u64>,
    pub messages: Vec<Vec<u8>>,
    pub client_closed: bool,
}

/// Runs a client session against a server session in memory, moving bytes
/// in pieces of at most `chunk` bytes each way.
pub fn converse(
    client_config: sluice_smtp::client::ClientConfig,
    server_config: ServerConfig,
    envelopes: Vec<Envelope>,
    bodies: &HashMap<u64, Vec<u8>>,
    chunk: usize,
) -> Conversation {
    let config = Rc::new(server_config);
    let mut server = ServerSession::new(config);
    server.greeting(Reply::greeting("mx.test"));
    let mut client = ClientSession::new(client_config);
    for envelope in envelopes {
        client.queue(envelope).expect("queue");
    }
    client.quit();
    let mut result = Conversation::default();
    let mut to_server: Vec<u8> = Vec::new();
    let mut to_client: Vec<u8> = Vec::new();
    let mut server_buf: Vec<u8> = Vec::new();
    let mut body = Vec::new();
    let chunk = chunk.max(1);
    for _ in 0..100_000 {
        // Client writes.
        let mut out = Vec::new();
        while let Some(transmit) = client.poll_transmit(&mut out) {
            let bytes = &bodies[&transmit.id];
            match transmit.encoding {
                BodyEncoding::DotStuffed => DotStuffer::stuff_into(bytes, &mut out),
                BodyEncoding::Raw => out.extend_from_slice(bytes),
            }
        }
        to_server.extend_from_slice(&out);
        // Server reads a piece.
        let take = to_server.len().min(chunk);
        server_buf.extend(to_server.drain(..take));
        let mut pos = 0;
        let mut server_closed = false;
        loop {
            let step = server.feed(&server_buf[pos..]);
            pos += step.consumed;
            match step.event {
                Event::NeedInput | Event::Blocked => break,
                Event::Close(_) => {
                    server_closed = true;
                    break;
                }
                Event::Mail { token, .. } | Event::Rcpt { token, .. } => {
                    server.reply(token, Reply::ok()).expect("token");
                }
                Event::MessageEnd { token } => {
                    result.messages.push(std::mem::take(&mut body));
                    server.reply(token, Reply::ok()).expect("token");
                }
                Event::BodyChunk(bytes) => body.extend_from_slice(bytes),
                Event::StartTls => server.tls_established(),
                _ => {}
            }
        }
        server_buf.drain(..pos);
        server.write_output(&mut to_client);
        // Client reads a piece.
        let take = to_client.len().min(chunk);
        let piece: Vec<u8> = to_client.drain(..take).collect();
        client.feed(&piece);
        if server_closed && to_client.is_empty() && !client.is_closed() {
            client.connection_lost();
        }
        while let Some(event) = client.poll_event() {
            match event {
                ClientEvent::Recipient { id, index, outcome } => {
                    assert!(
                        result.outcomes.insert((id, index), outcome).is_none(),
                        "two outcomes"
                    );
                }
                ClientEvent::TransactionDone { id } => result.done.push(id),
                ClientEvent::StartTls => client.tls_established(),
                ClientEvent::Closed(_) => result.client_closed = true,
                ClientEvent::Ready => {}
            }
        }
        if result.client_closed {
            break;
        }
    }
    result
}
