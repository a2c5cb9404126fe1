//! The command parser on raw bytes, alone and inside a server session fed
//! at two different splits: no panics, identical results.
#![no_main]

use std::rc::Rc;

use libfuzzer_sys::fuzz_target;
use sluice_smtp::server::{Event, ServerConfig, ServerSession};
use sluice_smtp::Reply;

fn run(input: &[u8], split: usize) -> (Vec<u8>, Vec<String>, Vec<u8>) {
    let mut config = ServerConfig::new("mx.test");
    config.message_bytes_max = 1000;
    let mut session = ServerSession::new(Rc::new(config));
    session.greeting(Reply::greeting("mx.test"));
    let mut out = Vec::new();
    let mut events = Vec::new();
    let mut body = Vec::new();
    let mut closed = false;
    let mut buf = Vec::new();
    for piece in [&input[..split], &input[split..]] {
        buf.extend_from_slice(piece);
        let mut pos = 0;
        loop {
            let step = session.feed(&buf[pos..]);
            assert!(step.consumed <= buf.len() - pos);
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
                        .reply(token, Reply::ok())
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
        // The session never leaves more than a command line unconsumed.
        assert!(closed || buf.len() < 1100);
        session.write_output(&mut out);
    }
    (out, events, body)
}

fuzz_target!(|data: &[u8]| {
    let _ = sluice_smtp::command::parse_command_bytes(data);
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let split = usize::from(split) % (input.len() + 1);
    assert_eq!(run(input, 0), run(input, split));
});
