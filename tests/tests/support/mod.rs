//! What the bad-input, interop and reliability suites (`bad_input.rs`,
//! `interop_*.rs`, `corruption.rs`, `receiver_faults.rs`, `soak.rs`,
//! `tls.rs`, `dkim.rs`) share beyond `sluice_tests`: their engine (one
//! shard, the 300 ms retry, every domain routed to one port), their sink
//! (recording the `X-Sluice-Id` of every message), their settle time and
//! an injector of tagged messages. Everything listens on 127.0.0.1 only.
#![allow(dead_code)] // each test file uses a different subset

use std::path::Path;
use std::time::Duration;

use sluice_tests::{EngineConfig, Sink, SinkBuilder, Smtp};

/// Longest a test waits for deliveries to settle.
pub const SETTLE: Duration = Duration::from_secs(40);

/// These suites' engine: one shard, `[delivery] retry = "300ms"`, every
/// domain routed to `127.0.0.1:route_port`.
pub fn config(dir: &Path, route_port: u16) -> EngineConfig {
    EngineConfig::new(dir).route("*", route_port)
}

/// These suites' sink: a free port, `args`, the id of every message
/// recorded.
pub fn sink(dir: &Path, name: &str, args: &[&str]) -> Sink {
    SinkBuilder::new(dir, name).record_ids().args(args).start()
}

/// Polls `done` every 50 ms until it holds; panics after [`SETTLE`].
pub fn wait_until(what: &str, done: impl FnMut() -> bool) {
    sluice_tests::wait_until(what, SETTLE, done)
}

/// One message for [`send_each`]: sender, recipient, `X-Sluice-Id`, body.
pub struct Message<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub id: &'a str,
    pub body: &'a str,
}

/// Sends `messages` on one connection to `127.0.0.1:port`, one
/// transaction at a time, and panics unless every step gets its expected
/// reply (`250` to EHLO/MAIL/RCPT, `354`, `250` after the data, `221`).
/// The connection is retried while the greeting is `421 4.3.2`: with
/// several shards on one port, a shard still recovering its spool answers
/// so even after another one greeted.
pub fn send_each(port: u16, messages: &[Message<'_>]) {
    let mut c = Smtp::connect_ready(port);
    for m in messages {
        let data = format!(
            "X-Sluice-Id: {id}\r\nSubject: {id}\r\n\r\n{}\r\n",
            m.body,
            id = m.id
        );
        c.transaction(m.from, &[m.to], &data);
    }
    c.close();
}
