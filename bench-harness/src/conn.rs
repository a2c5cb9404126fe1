//! One connection slot: connect, drive `sluice_smtp`'s `ClientSession`,
//! reconnect after `--messages-per-connection`, until the slot's messages
//! are sent.
//!
//! This is the thin glommio loop STYLE.md asks for: generate what the
//! schedule allows → queue → write what the session transmits → read →
//! feed → account the events → wait for bytes, a due time or the reply
//! timeout. Every protocol decision (pipelining, BDAT, STARTTLS, reply
//! matching) is the session's.

use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future;
use memchr::memmem;
use sluice_smtp::client::{
    BodyEncoding, ClientConfig, ClientEvent, ClientSession, CloseCause, Envelope, Failure, Outcome,
    Parsed, Recipient, ReplyParser, TlsPolicy,
};
use sluice_smtp::DotStuffer;

use crate::message::{self, MessageGenerator};
use crate::run::{ShardCtx, SlotSpec};
use crate::schedule::{Next, SlotSequence};
use crate::stats::ErrorKind;
use crate::wire::{Wire, WireError};

/// Longest back-off between connect attempts.
const CONNECT_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Connections in a row that may end before any message is accepted before
/// the slot gives up (a server that greets and then always hangs up).
const FRUITLESS_CONNECTIONS_MAX: u32 = 5;

/// A transaction this connection queued and has not finished.
#[derive(Debug, Default)]
struct Txn {
    live: bool,
    /// Latency origin: the due time (open loop) or the queue time.
    origin: Option<Instant>,
    body: Vec<u8>,
    recipients: u32,
    delivered: u32,
    rejected: u32,
    failure: Option<ErrorKind>,
}

/// How a connection ended.
#[derive(Debug)]
struct ConnEnd {
    /// The slot has no more messages to send.
    slot_done: bool,
    /// Messages accepted on this connection.
    accepted: u64,
    /// Why it ended, when not by our QUIT.
    error: Option<(ErrorKind, String)>,
}

/// Runs one connection slot to completion.
pub async fn run_slot(ctx: Rc<ShardCtx>, spec: SlotSpec) {
    let shared = ctx.shared.clone();
    let group = &shared.groups[spec.group];
    let settings = &shared.settings;
    let mut seq = SlotSequence::new(
        spec.slot,
        spec.slots,
        group.messages,
        group.rate_per_sec,
        settings.duration,
    );
    let generator = MessageGenerator::new(group.shape.clone());
    let addr = std::net::SocketAddr::new(shared.host, group.port);
    let mut fruitless = 0u32;
    // A message taken from the sequence but not yet sent (carried over to
    // the next connection), or the first step of the next connection.
    let mut pending: Option<Next> = None;
    // Open loop: this slot has been through the schedule's start barrier.
    let mut at_barrier = seq.due(0).is_none();
    while !ctx.stopping() {
        // Do not open a connection that would have nothing to send.
        if pending.is_none() {
            match seq.poll(shared.schedule_elapsed()) {
                Next::Done => break,
                step => pending = Some(step),
            }
        }
        let wire = match connect(&ctx, addr).await {
            Ok(wire) => wire,
            Err(why) => {
                ctx.stats.borrow_mut().fatal.get_or_insert(why);
                break;
            }
        };
        let end = drive(
            &ctx,
            wire,
            &mut seq,
            &mut pending,
            &generator,
            spec.group,
            &mut at_barrier,
        )
        .await;
        if let Some((kind, why)) = &end.error {
            let mut stats = ctx.stats.borrow_mut();
            stats.connection_failed(*kind);
            if end.accepted == 0 {
                fruitless += 1;
                if fruitless >= FRUITLESS_CONNECTIONS_MAX {
                    stats.fatal.get_or_insert(format!(
                        "{addr}: {fruitless} connections in a row ended without an accepted message; last: {why}"
                    ));
                    break;
                }
            }
        } else {
            fruitless = 0;
        }
        if end.accepted > 0 {
            fruitless = 0;
        }
        if end.slot_done && pending.is_none() {
            break;
        }
    }
}

/// Connects with retries; the error text says what to check.
async fn connect(ctx: &ShardCtx, addr: std::net::SocketAddr) -> Result<Wire, String> {
    let settings = &ctx.shared.settings;
    let mut backoff = Duration::from_millis(50);
    let mut last = String::new();
    for attempt in 1..=settings.connect_attempts {
        match Wire::connect(addr, settings.connect_timeout).await {
            Ok(wire) => return Ok(wire),
            Err(e) => {
                let kind = if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    ErrorKind::ConnectRefused
                } else {
                    ErrorKind::ConnectFailed
                };
                ctx.stats.borrow_mut().connection_failed(kind);
                last = e.to_string();
                if attempt < settings.connect_attempts && !ctx.stopping() {
                    glommio::timer::sleep(backoff).await;
                    backoff = (backoff * 2).min(CONNECT_BACKOFF_MAX);
                }
            }
        }
    }
    Err(format!(
        "cannot connect to {addr}: {last} (after {} attempts; is the server running and listening there?)",
        settings.connect_attempts
    ))
}

fn failure_kind(failure: &Failure) -> ErrorKind {
    match failure {
        Failure::Reply(reply) => ErrorKind::Code(reply.code.value()),
        Failure::ConnectionLost | Failure::NotSent => ErrorKind::ConnectionLost,
        Failure::TimedOut(_) => ErrorKind::Timeout,
        Failure::Protocol(_) | Failure::ExtensionMissing(_) => ErrorKind::Protocol,
        Failure::TlsUnavailable => ErrorKind::Tls,
        Failure::TooBig { .. } => ErrorKind::Code(552),
    }
}

fn close_error(cause: &CloseCause) -> Option<(ErrorKind, String)> {
    match cause {
        CloseCause::Quit => None,
        CloseCause::ServerClosed(reply) => Some((
            ErrorKind::SessionRefused,
            format!(
                "server closed the session: {} {}",
                reply.code.value(),
                reply.lines().next().unwrap_or("")
            ),
        )),
        CloseCause::ConnectionLost => Some((
            ErrorKind::ConnectionLost,
            "the server closed the connection".into(),
        )),
        CloseCause::TimedOut(class) => {
            Some((ErrorKind::Timeout, format!("no reply in time ({class:?})")))
        }
        CloseCause::Protocol(fault) => {
            Some((ErrorKind::Protocol, format!("protocol error: {fault}")))
        }
        CloseCause::TlsUnavailable => Some((
            ErrorKind::Tls,
            "STARTTLS required but not offered or refused".into(),
        )),
    }
}

/// Drives one connected session until it closes.
async fn drive(
    ctx: &ShardCtx,
    mut wire: Wire,
    seq: &mut SlotSequence,
    first: &mut Option<Next>,
    generator: &MessageGenerator,
    group: usize,
    at_barrier: &mut bool,
) -> ConnEnd {
    let shared = &*ctx.shared;
    let settings = &shared.settings;
    let window = settings.window.max(1) as usize;
    let mut config = ClientConfig::new(settings.ehlo.clone());
    config.tls = if settings.tls.is_some() {
        TlsPolicy::Required
    } else {
        TlsPolicy::Disabled
    };
    config.use_pipelining = !settings.no_pipelining;
    config.use_chunking = !settings.no_chunking;
    config.transactions_in_flight_max = window;
    config.transactions_queued_max = window;
    let mut session = ClientSession::new(config);

    // Buffers for the life of the connection.
    let mut txns: Vec<Txn> = (0..=window).map(|_| Txn::default()).collect();
    // A full window of stuffed bodies plus their commands, at most 1 MiB up
    // front (it grows once if a larger window of large messages needs it).
    let body_max = generator.shape().sizes.max();
    let mut wbuf: Vec<u8> =
        Vec::with_capacity((window * (body_max + body_max / 64 + 512)).min(1 << 20));
    let mut rbuf: Vec<u8> = Vec::with_capacity(crate::wire::RX_BYTES);
    let mut env = message::Envelope::default();
    let mut next_id = 0u64;
    // Id of the oldest queued transaction whose MAIL is not written yet.
    let mut next_unstarted = 0u64;
    let mut live = 0usize;
    let mut sent_on_conn = 0u64;
    let mut ready = false;
    let mut slot_done = false;
    let mut quitting = false;
    let mut accepted = 0u64;
    // The reply timer runs from the last byte received, or from when the
    // session started waiting if it was idle before (sends do not reset it:
    // an open-loop sender must not keep a stalled server alive).
    let mut last_rx = Instant::now();
    let mut was_waiting = true;

    loop {
        // 1. Queue what the load allows: window, schedule, per-connection cap.
        // One clock read serves the whole batch: the messages queued now are
        // written together right below.
        let batch_at = Instant::now();
        let batch_elapsed = batch_at.saturating_duration_since(shared.start);
        let batch_unix_nanos = shared.start_unix_nanos + batch_elapsed.as_nanos() as u64;
        let sched_origin = shared.schedule_origin();
        let sched_elapsed = batch_at.saturating_duration_since(sched_origin);
        let mut next_due: Option<Duration> = None;
        while ready && !quitting && live < window {
            if ctx.stopping() {
                slot_done = true;
                break;
            }
            if settings.messages_per_connection > 0
                && sent_on_conn >= settings.messages_per_connection
            {
                break;
            }
            let step = match first.take() {
                Some(step) => step,
                None => seq.poll(sched_elapsed),
            };
            match step {
                Next::Send { index, scheduled } => {
                    let id = next_id;
                    next_id += 1;
                    let slot = (id % txns.len() as u64) as usize;
                    let txn = &mut txns[slot];
                    // The ring holds window + 1 entries and at most `window` are live.
                    assert!(!txn.live, "transaction ring overrun");
                    let global = index * shared.group_count + group as u64;
                    generator.generate(global, batch_unix_nanos, &mut env, &mut txn.body);
                    let recipients: Vec<Recipient> = env
                        .rcpts
                        .iter()
                        .map(|r| Recipient::new(r.as_str()))
                        .collect();
                    txn.live = true;
                    // Open loop: from the due time; closed loop: from its MAIL.
                    txn.origin = scheduled.map(|due| sched_origin + due);
                    txn.recipients = recipients.len() as u32;
                    txn.delivered = 0;
                    txn.rejected = 0;
                    txn.failure = None;
                    let envelope =
                        Envelope::new(id, env.from.as_str(), recipients, txn.body.len() as u64);
                    if session.queue(envelope).is_err() {
                        // Closed by what was just fed (its events come next),
                        // or full (cannot happen: our window is its bound).
                        // The message was not sent: give its index back.
                        txn.live = false;
                        next_id -= 1;
                        *first = Some(Next::Send { index, scheduled });
                        break;
                    }
                    live += 1;
                    sent_on_conn += 1;
                    ctx.stats.borrow_mut().counters.sent += 1;
                }
                Next::WaitUntil(due) => {
                    next_due = Some(due);
                    break;
                }
                Next::Done => {
                    slot_done = true;
                    break;
                }
            }
        }
        let cap_reached = settings.messages_per_connection > 0
            && sent_on_conn >= settings.messages_per_connection;
        if ready && !quitting && live == 0 && (slot_done || cap_reached) {
            session.quit();
            quitting = true;
        }

        // 2. Write everything the session has for us, bodies inline. The
        // session starts transactions in queue order, so the k-th `MAIL FROM`
        // in its command bytes is the k-th queued transaction not yet
        // started: that is when its latency starts in closed loop (it may
        // wait in the session, e.g. for a 354, before its MAIL goes out).
        let mut mails = 0u64;
        loop {
            let commands_from = wbuf.len();
            let transmit = session.poll_transmit(&mut wbuf);
            mails += memmem::find_iter(&wbuf[commands_from..], b"MAIL FROM:<").count() as u64;
            let Some(transmit) = transmit else { break };
            let slot = (transmit.id % txns.len() as u64) as usize;
            let body = &txns[slot].body;
            match transmit.encoding {
                BodyEncoding::DotStuffed => DotStuffer::stuff_into(body, &mut wbuf),
                BodyEncoding::Raw => wbuf.extend_from_slice(body),
            }
        }
        if mails > 0 {
            let written_at = Instant::now();
            let ring = txns.len() as u64;
            for id in next_unstarted..next_unstarted + mails {
                let txn = &mut txns[(id % ring) as usize];
                if txn.live && txn.origin.is_none() {
                    txn.origin = Some(written_at);
                }
            }
            next_unstarted += mails;
        }
        let mut progressed = !wbuf.is_empty();
        if !wbuf.is_empty() {
            if let Err(e) = wire.send(&wbuf).await {
                session.connection_lost();
                let kind = wire_error_kind(&e);
                drain_events(
                    ctx,
                    &mut session,
                    &mut txns,
                    &mut live,
                    &mut accepted,
                    &mut ready,
                );
                return ConnEnd {
                    slot_done,
                    accepted,
                    error: Some((kind, e.to_string())),
                };
            }
            wbuf.clear();
        }

        // 3. Account what happened.
        let mut closed = None;
        let mut start_tls = false;
        let mut now_ready = false;
        while let Some(event) = session.poll_event() {
            progressed = true;
            match event {
                ClientEvent::Ready => now_ready = true,
                ClientEvent::StartTls => start_tls = true,
                other => {
                    if let Some(cause) =
                        account(ctx, other, &mut txns, &mut live, &mut accepted, batch_at)
                    {
                        closed = Some(cause);
                    }
                }
            }
        }
        if start_tls {
            // STARTTLS got its 220: the session wrote nothing after it.
            let Some((config, name)) = settings.tls.clone() else {
                unreachable!("STARTTLS event with TLS disabled");
            };
            if let Err(e) = wire.start_tls(config, name).await {
                session.connection_lost();
                drain_events(
                    ctx,
                    &mut session,
                    &mut txns,
                    &mut live,
                    &mut accepted,
                    &mut ready,
                );
                return ConnEnd {
                    slot_done,
                    accepted,
                    error: Some((ErrorKind::Tls, format!("TLS handshake: {e}"))),
                };
            }
            session.tls_established();
            continue;
        }
        if now_ready && closed.is_none() {
            if let Some((user, password)) = &settings.auth {
                // The session is idle (nothing queued yet), so this exchange
                // cannot interleave with its commands.
                if let Err(why) =
                    authenticate(&mut wire, &mut rbuf, user, password, settings.reply_timeout).await
                {
                    session.connection_lost();
                    drain_events(
                        ctx,
                        &mut session,
                        &mut txns,
                        &mut live,
                        &mut accepted,
                        &mut ready,
                    );
                    wire.close().await;
                    return ConnEnd {
                        slot_done: false,
                        accepted,
                        error: Some((ErrorKind::SessionRefused, why)),
                    };
                }
            }
            ready = true;
            ctx.stats.borrow_mut().counters.connections += 1;
            if !*at_barrier {
                shared.schedule_barrier().await;
                *at_barrier = true;
            }
            continue;
        }
        if let Some(cause) = closed {
            // Write what is left (QUIT) best-effort, then close.
            while session.poll_transmit(&mut wbuf).is_some() {}
            if !wbuf.is_empty() {
                let _ = wire.send(&wbuf).await;
            }
            wire.close().await;
            return ConnEnd {
                slot_done: slot_done && live == 0,
                accepted,
                error: close_error(&cause),
            };
        }

        // 4. Wait for bytes, the next due time, or the reply timeout.
        let now = batch_at;
        let waiting = session.timeout().is_some();
        if waiting && !was_waiting {
            last_rx = now;
        }
        was_waiting = waiting;
        let reply_deadline = last_rx + settings.reply_timeout;
        let due_at = next_due.map(|d| sched_origin + round_up(d, settings.tick));
        let wake = match (waiting, due_at) {
            (true, Some(due)) => due.min(reply_deadline),
            (true, None) => reply_deadline,
            (false, Some(due)) => due,
            // Nothing awaited, nothing due, but events came in (e.g. the last
            // reply): go round to queue more or QUIT.
            (false, None) if progressed => continue,
            // Nothing happened at all: only the server can move things (e.g.
            // close); wait for it without spinning.
            (false, None) => now + settings.reply_timeout,
        };
        let sleep_for = wake.saturating_duration_since(now);
        // Bytes already waiting need no timer; otherwise race the read (its
        // readiness poll stays registered in the stream) against the timer.
        let got = match future::poll_once(wire.recv(&mut rbuf)).await {
            Some(result) => Some(result),
            None => {
                future::or(async { Some(wire.recv(&mut rbuf).await) }, async {
                    glommio::timer::sleep(sleep_for).await;
                    None
                })
                .await
            }
        };
        match got {
            Some(Ok(0)) => session.connection_lost(),
            Some(Ok(_)) => {
                session.feed(&rbuf);
                rbuf.clear();
                last_rx = Instant::now();
            }
            Some(Err(e)) => {
                session.connection_lost();
                let kind = wire_error_kind(&e);
                drain_events(
                    ctx,
                    &mut session,
                    &mut txns,
                    &mut live,
                    &mut accepted,
                    &mut ready,
                );
                return ConnEnd {
                    slot_done,
                    accepted,
                    error: Some((kind, e.to_string())),
                };
            }
            None => {
                if waiting && Instant::now() >= reply_deadline {
                    session.timed_out();
                }
            }
        }
    }
}

/// AUTH PLAIN with an initial response (RFC 4954 §4, RFC 4616), after EHLO
/// (and TLS). The reply is parsed by the protocol crate's `ReplyParser`.
async fn authenticate(
    wire: &mut Wire,
    rbuf: &mut Vec<u8>,
    user: &str,
    password: &str,
    timeout: Duration,
) -> Result<(), String> {
    let mut line = b"AUTH PLAIN ".to_vec();
    let mut token = Vec::with_capacity(user.len() + password.len() + 2);
    token.push(0);
    token.extend_from_slice(user.as_bytes());
    token.push(0);
    token.extend_from_slice(password.as_bytes());
    base64_encode(&token, &mut line);
    line.extend_from_slice(b"\r\n");
    wire.send(&line).await.map_err(|e| format!("AUTH: {e}"))?;
    let mut parser = ReplyParser::default();
    let deadline = Instant::now() + timeout;
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        let got = future::or(async { Some(wire.recv(rbuf).await) }, async {
            glommio::timer::sleep(wait).await;
            None
        })
        .await;
        match got {
            None => return Err("AUTH: no reply in time".into()),
            Some(Err(e)) => return Err(format!("AUTH: {e}")),
            Some(Ok(0)) => return Err("AUTH: the server closed the connection".into()),
            Some(Ok(_)) => {}
        }
        match parser.feed(rbuf) {
            Ok(Parsed::Incomplete) => rbuf.clear(),
            Ok(Parsed::Complete(reply, used)) => {
                let extra = used < rbuf.len();
                rbuf.clear();
                if extra {
                    return Err("AUTH: the server sent more than one reply".into());
                }
                if reply.code.value() == 235 {
                    return Ok(());
                }
                return Err(format!("AUTH PLAIN refused: {reply}"));
            }
            Err(e) => return Err(format!("AUTH: bad reply: {e}")),
        }
    }
}

/// Standard base64 with padding (RFC 4648 §4).
fn base64_encode(input: &[u8], out: &mut Vec<u8>) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]);
            } else {
                out.push(b'=');
            }
        }
    }
}

fn wire_error_kind(e: &WireError) -> ErrorKind {
    match e {
        WireError::Io(_) => ErrorKind::ConnectionLost,
        WireError::Tls(_) => ErrorKind::Tls,
    }
}

/// Accounts the events left after the connection broke.
fn drain_events(
    ctx: &ShardCtx,
    session: &mut ClientSession,
    txns: &mut [Txn],
    live: &mut usize,
    accepted: &mut u64,
    ready: &mut bool,
) {
    while let Some(event) = session.poll_event() {
        match event {
            ClientEvent::Ready => *ready = true,
            ClientEvent::StartTls => {}
            other => {
                let _ = account(ctx, other, txns, live, accepted, Instant::now());
            }
        }
    }
}

/// Accounts one recipient / transaction / close event seen at `at` (just
/// after the bytes that caused it were read); returns the close cause.
fn account(
    ctx: &ShardCtx,
    event: ClientEvent,
    txns: &mut [Txn],
    live: &mut usize,
    accepted: &mut u64,
    at: Instant,
) -> Option<CloseCause> {
    let ring = txns.len() as u64;
    match event {
        ClientEvent::Recipient { id, outcome, .. } => {
            let txn = &mut txns[(id % ring) as usize];
            match outcome {
                Outcome::Delivered(_) => txn.delivered += 1,
                Outcome::TempFail(f) | Outcome::PermFail(f) => {
                    txn.rejected += 1;
                    txn.failure.get_or_insert(failure_kind(&f));
                }
            }
            None
        }
        ClientEvent::TransactionDone { id } => {
            let txn = &mut txns[(id % ring) as usize];
            if !txn.live {
                return None;
            }
            txn.live = false;
            *live -= 1;
            let mut stats = ctx.stats.borrow_mut();
            stats.counters.recipients_rejected += u64::from(txn.rejected);
            if txn.delivered > 0 {
                let latency = txn
                    .origin
                    .map(|o| at.saturating_duration_since(o))
                    .unwrap_or_default();
                stats.accepted(latency, u64::from(txn.delivered), txn.body.len() as u64);
                *accepted += 1;
            } else {
                stats.failed(txn.failure.unwrap_or(ErrorKind::Protocol));
            }
            None
        }
        ClientEvent::Closed(cause) => Some(cause),
        ClientEvent::Ready | ClientEvent::StartTls => None,
    }
}

/// `d` rounded up to a multiple of `tick` (unchanged when `tick` is zero).
fn round_up(d: Duration, tick: Duration) -> Duration {
    let t = tick.as_nanos();
    if t == 0 {
        return d;
    }
    let n = d.as_nanos().div_ceil(t) * t;
    Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_ups_round_up_to_the_tick() {
        let ms = Duration::from_millis;
        let us = Duration::from_micros;
        assert_eq!(round_up(us(1), ms(1)), ms(1));
        assert_eq!(round_up(ms(1), ms(1)), ms(1), "a due time on a tick stays");
        assert_eq!(round_up(us(1_001), ms(1)), ms(2));
        assert_eq!(round_up(Duration::ZERO, ms(1)), Duration::ZERO);
        assert_eq!(
            round_up(us(1_234), Duration::ZERO),
            us(1_234),
            "no tick: exact"
        );
        // Never earlier than due, at most one tick later.
        for d in (0..50_000u64).step_by(137).map(Duration::from_micros) {
            let r = round_up(d, us(250));
            assert!(r >= d && r - d < us(250), "{d:?} -> {r:?}");
        }
    }

    #[test]
    fn base64_vectors() {
        // RFC 4648 §10.
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            let mut out = Vec::new();
            base64_encode(input.as_bytes(), &mut out);
            assert_eq!(out, expected.as_bytes(), "{input:?}");
        }
    }
}
