//! The injection connection driver: a thin loop of read → feed the
//! [`ServerSession`] → answer its tokens → write. Protocol decisions are
//! the session's; policy answers (relay, room, spool results) are plain
//! functions of the shard's state; this file moves bytes, waits and times.

// std
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// external
use futures_lite::future;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use sluice_smtp::server::{Event, ReplyToken, ServerSession};
use sluice_smtp::Reply;
use sluice_spool::SpoolError;

// crate
use super::auth::{self, Sasl, SaslStep};
use super::envelope::{push_received, Envelope, Trace};
use super::{
    commit_outcome, is_disconnect, poisoned_reply, spool_error_reply, Injector, BODY_INITIAL_BYTES,
    BODY_KEEP_BYTES, DATA_RATE_GRACE, OUTPUT_BYTES, READ_BYTES,
};
use crate::tls::Tls;

/// Output buffer capacity kept between flushes.
const OUTPUT_KEEP_BYTES: usize = 64 << 10;

/// Replies produced by this connection's commit tasks, in completion order.
#[derive(Default)]
struct Completions {
    ready: RefCell<VecDeque<(ReplyToken, Reply)>>,
    waker: RefCell<Option<Waker>>,
    in_flight: Cell<usize>,
    /// The user the last successful AUTH named (its tenant, if any, is
    /// the message's: `inject::tenant`).
    user: RefCell<Option<String>>,
}

impl Completions {
    fn push(&self, token: ReplyToken, reply: Reply) {
        assert!(
            self.in_flight.get() > 0,
            "a commit finished that never started"
        );
        self.in_flight.set(self.in_flight.get() - 1);
        self.ready.borrow_mut().push_back((token, reply));
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

/// Resolves when a completion is ready.
struct Ready<'a>(&'a Completions);

impl Future for Ready<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if !self.0.ready.borrow().is_empty() {
            return Poll::Ready(());
        }
        *self.0.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

enum Body {
    Idle,
    Receiving {
        started: Instant,
        bytes: u64,
        /// The reply the end of data will get instead of storing.
        refuse: Option<Reply>,
    },
}

/// Why the driver woke up.
enum Wake {
    Input,
    Replies,
    Eof,
    /// Close with this reply (timeouts, shutdown).
    Close(Reply),
}

pub(crate) struct Conn {
    session: ServerSession,
    /// Input; `buf[start..end]` is received and not yet consumed.
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    out: Vec<u8>,
    env: Envelope,
    body: Vec<u8>,
    state: Body,
    /// `SIZE=` of the open transaction (RFC 1870), for the room check.
    size_hint: u64,
    relay: bool,
    peer: SocketAddr,
    helo: String,
    esmtp: bool,
    replies: Rc<Completions>,
    last_input: Instant,
    /// TLS once STARTTLS or the implicit-TLS handshake completed.
    tls: Option<Box<Tls>>,
    /// The AUTH exchange in progress.
    sasl: Sasl,
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Conn {
    pub(crate) fn new(inj: &Injector, peer: SocketAddr) -> Conn {
        debug_assert!(READ_BYTES >= inj.smtp.input_bytes_min());
        Conn {
            session: ServerSession::new(Rc::clone(&inj.smtp)),
            buf: vec![0; READ_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
            out: Vec::with_capacity(OUTPUT_BYTES),
            env: Envelope::new(),
            body: Vec::with_capacity(BODY_INITIAL_BYTES),
            state: Body::Idle,
            size_hint: 0,
            relay: inj.config.may_relay(peer.ip()),
            peer,
            helo: String::new(),
            esmtp: false,
            replies: Rc::new(Completions::default()),
            last_input: Instant::now(),
            tls: None,
            sasl: Sasl::Idle,
        }
    }

    /// Sends close_notify when the connection is under TLS.
    pub(crate) async fn close_tls(&mut self, stream: &mut TcpStream) {
        if let Some(tls) = self.tls.as_mut() {
            tls.close(stream).await;
        }
    }

    /// Runs a server-side TLS handshake, bounded by the idle timeout.
    async fn handshake(&mut self, inj: &Injector, stream: &mut TcpStream) -> io::Result<()> {
        let Some(config) = inj.config.inject_security.tls.clone() else {
            return Err(io::Error::other("TLS requested without a certificate"));
        };
        let mut tls = Box::new(Tls::server(config).map_err(io::Error::other)?);
        let limit = inj.config.idle_timeout;
        match glommio::timer::timeout(limit, async { Ok(tls.handshake(stream).await) }).await {
            Ok(Ok(())) => {
                self.tls = Some(tls);
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        }
    }

    pub(crate) async fn run(
        &mut self,
        inj: &Rc<Injector>,
        stream: &mut TcpStream,
        implicit_tls: bool,
    ) -> io::Result<()> {
        // A client that stops reading cannot hold the shard's memory or this
        // task forever (RFC 5321 §4.5.3.2 timeouts apply to both sides).
        stream.set_write_timeout(Some(inj.config.idle_timeout))?;
        if implicit_tls {
            // RFC 8314 §3.3: TLS from the first byte, then the greeting.
            self.handshake(inj, stream).await?;
            self.session.tls_at_connect();
        }
        self.session.greeting(Reply::greeting(&inj.config.hostname));
        let result = self.serve(inj, stream).await;
        match result {
            Err(e) if is_disconnect(&e) => Ok(()),
            other => other,
        }
    }

    async fn serve(&mut self, inj: &Rc<Injector>, stream: &mut TcpStream) -> io::Result<()> {
        loop {
            self.apply_replies();
            let step = self.session.feed(&self.buf[self.start..self.end]);
            self.start += step.consumed;
            match step.event {
                Event::NeedInput => {
                    self.flush(stream).await?;
                    match self.wait(inj, stream).await? {
                        Wake::Input | Wake::Replies => {}
                        Wake::Eof => return self.finish(stream).await,
                        Wake::Close(reply) => {
                            // Replies already owed go out before the 421.
                            self.drain_commits().await;
                            self.apply_replies();
                            self.session.shutdown(reply);
                        }
                    }
                }
                Event::Blocked => {
                    if self.flush(stream).await? == 0 {
                        if self.replies.in_flight.get() == 0
                            && self.replies.ready.borrow().is_empty()
                        {
                            return Err(io::Error::other("session blocked with no reply owed"));
                        }
                        Ready(&self.replies).await;
                    }
                }
                Event::Close(_) => return self.finish(stream).await,
                Event::Helo { domain } | Event::Ehlo { domain } => {
                    self.esmtp = matches!(step.event, Event::Ehlo { .. });
                    self.helo.clear();
                    self.helo.extend(domain.chars().take(255));
                    self.reset();
                }
                Event::Mail {
                    token,
                    from,
                    params,
                } => {
                    self.size_hint = params.size.unwrap_or(0);
                    let check = if inj.config.inject_security.auth_required
                        && !self.session.is_authenticated()
                    {
                        // RFC 4954 §6: 530 5.7.0 Authentication required.
                        MailCheck::Refuse(Reply::fixed(530, (5, 7, 0), "Authentication required"))
                    } else {
                        mail_check(inj, self.size_hint)
                    };
                    match check {
                        MailCheck::Ok => {
                            self.env.begin(from.as_ref(), &params);
                            let _ = self
                                .session
                                .reply(token, Reply::fixed(250, (2, 1, 0), "Sender OK"));
                        }
                        MailCheck::Refuse(reply) => {
                            let _ = self.session.reply(token, reply);
                        }
                        MailCheck::Close(reply) => self.session.shutdown(reply),
                    }
                }
                Event::Rcpt { token, to, params } => {
                    // Relay: allowed networks, or an authenticated client.
                    let reply = if !self.relay && !self.session.is_authenticated() {
                        // RFC 5321 §3.6.2 / RFC 3463 5.7.1: not a relay for you.
                        Reply::fixed(550, (5, 7, 1), "Relaying denied")
                    } else if to.domain().is_empty() {
                        // `<postmaster>` alone names a local mailbox; this
                        // relay has none.
                        Reply::fixed(550, (5, 1, 1), "No local mailboxes on this relay")
                    } else {
                        self.env.add_recipient(&to, &params);
                        Reply::fixed(250, (2, 1, 5), "Recipient OK")
                    };
                    let _ = self.session.reply(token, reply);
                }
                Event::DataStart | Event::Bdat { .. } => {
                    if matches!(self.state, Body::Idle) {
                        self.start_body(inj);
                    }
                }
                Event::BodyChunk(chunk) => {
                    if let Body::Receiving { bytes, refuse, .. } = &mut self.state {
                        *bytes += chunk.len() as u64;
                        if refuse.is_none() {
                            self.body.extend_from_slice(chunk);
                        }
                    }
                }
                Event::MessageEnd { token } => {
                    self.end_message(inj, token);
                    if inj.signer.is_some() {
                        // A signature is up to ~1 ms of CPU (RSA): the
                        // shard's other tasks run between the messages of a
                        // pipelined burst (see ARCHITECTURE.md, DKIM).
                        futures_lite::future::yield_now().await;
                    }
                }
                Event::MessageAborted { .. } => {
                    // The session answers (552 5.3.4, 554 5.6.0 ...) itself.
                    inj.message_failed();
                    self.reset();
                }
                Event::Rset => self.reset(),
                Event::StartTls => {
                    // The session queued the 220 and refused (421, close)
                    // any input pipelined after STARTTLS in this buffer
                    // (RFC 3207 §4.2); plaintext arriving later reaches
                    // rustls and fails the handshake.
                    self.flush(stream).await?;
                    if self.start != self.end {
                        return Err(io::Error::other("plaintext after STARTTLS"));
                    }
                    self.handshake(inj, stream).await?;
                    // Everything learned before TLS is forgotten.
                    self.session.tls_established();
                    self.replies.user.take();
                    self.helo.clear();
                    self.esmtp = false;
                    self.sasl = Sasl::Idle;
                    self.reset();
                }
                Event::Auth {
                    token,
                    mechanism,
                    initial_response,
                } => {
                    let now = now_unix_ms();
                    if !inj.auth_throttle.borrow_mut().allowed(self.peer.ip(), now) {
                        self.session.shutdown(Reply::fixed(
                            421,
                            (4, 7, 0),
                            "Too many failed authentication attempts, closing",
                        ));
                        continue;
                    }
                    let step = self.sasl.start(mechanism, initial_response);
                    self.auth_step(inj, token, step);
                }
                Event::AuthResponse { token, response } => {
                    let step = self.sasl.respond(response);
                    self.auth_step(inj, token, step);
                }
                Event::Quit
                | Event::Noop
                | Event::Vrfy { .. }
                | Event::Help
                | Event::Rejected { .. } => {}
            }
        }
    }

    /// Answers an AUTH line: a challenge or refusal at once, a password
    /// check on glommio's blocking pool (hashing is slow on purpose), its
    /// failure answered only after the throttle's delay.
    fn auth_step(&mut self, inj: &Rc<Injector>, token: ReplyToken, step: SaslStep) {
        let (user, password) = match step {
            SaslStep::Challenge(reply) | SaslStep::Refuse(reply) => {
                let _ = self.session.reply(token, reply);
                return;
            }
            SaslStep::Check { user, password } => (user, password),
        };
        let hash = inj
            .config
            .inject_security
            .users
            .as_ref()
            .and_then(|u| u.hash(&user))
            .map(str::to_string);
        let ip = self.peer.ip();
        let replies = Rc::clone(&self.replies);
        replies.in_flight.set(replies.in_flight.get() + 1);
        let inj = Rc::clone(inj);
        glommio::spawn_local(async move {
            let ok = match hash {
                Some(hash) => {
                    glommio::executor()
                        .spawn_blocking(move || auth::verify(&hash, &password))
                        .await
                }
                None => false,
            };
            let reply = if ok {
                inj.auth_throttle.borrow_mut().succeeded(ip);
                log::info!("shard {}: {ip} authenticated as {user}", inj.shard);
                replies.user.replace(Some(user));
                Reply::fixed(235, (2, 7, 0), "Authentication successful")
            } else {
                let delay = inj.auth_throttle.borrow_mut().failed(ip, now_unix_ms());
                log::info!("shard {}: {ip} failed to authenticate as {user}", inj.shard);
                glommio::timer::sleep(delay).await;
                Reply::fixed(535, (5, 7, 8), "Authentication credentials invalid")
            };
            replies.push(token, reply);
        })
        .detach();
    }

    fn reset(&mut self) {
        self.env.clear();
        self.state = Body::Idle;
        self.clear_body();
    }

    fn clear_body(&mut self) {
        self.body.clear();
        if self.body.capacity() > BODY_KEEP_BYTES {
            self.body.shrink_to(BODY_KEEP_BYTES);
        }
    }

    /// DATA or the first BDAT: check room, start the buffer with the trace
    /// header (RFC 5321 §4.4: prepended, never rewriting what follows).
    fn start_body(&mut self, inj: &Injector) {
        let refuse = if let Some(reason) = inj.spool.poisoned() {
            inj.log_poisoned(&reason);
            Some(Reply::fixed(
                451,
                (4, 3, 0),
                "Local error in processing: spool fault",
            ))
        } else if !inj.spool.has_room(self.size_hint) {
            Some(Reply::fixed(452, (4, 3, 1), "Insufficient system storage"))
        } else {
            None
        };
        self.clear_body();
        if refuse.is_none() {
            // Headroom for the DKIM signature, filled at the end of data so
            // no message byte moves (crate::sign).
            let room = inj.signer.as_ref().map_or(0, |s| s.room());
            self.body.resize(room, 0);
            let trace = Trace {
                helo: &self.helo,
                peer: self.peer.ip(),
                hostname: &inj.config.hostname,
                esmtp: self.esmtp,
                smtputf8: self.env.smtputf8(),
                tls: self.session.is_tls(),
                authenticated: self.session.is_authenticated(),
                for_recipient: self.env.only_recipient(),
                unix_s: now_unix_ms() / 1000,
            };
            push_received(&trace, &mut self.body);
        }
        self.state = Body::Receiving {
            started: Instant::now(),
            bytes: 0,
            refuse,
        };
    }

    fn end_message(&mut self, inj: &Rc<Injector>, token: ReplyToken) {
        if matches!(self.state, Body::Idle) {
            self.start_body(inj);
        }
        let state = std::mem::replace(&mut self.state, Body::Idle);
        let refused = match state {
            Body::Receiving {
                refuse: Some(reply),
                ..
            } => Some(reply),
            _ => self.store(inj, token),
        };
        if let Some(reply) = refused {
            inj.message_failed();
            let _ = self.session.reply(token, reply);
        }
        self.env.clear();
        self.clear_body();
    }

    /// Appends the message and starts its commit task; `Some` is the reply
    /// when the append failed.
    fn store(&mut self, inj: &Rc<Injector>, token: ReplyToken) -> Option<Reply> {
        assert!(
            self.env.recipient_count() > 0,
            "end of data without an accepted recipient"
        );
        let arrival = now_unix_ms();
        let expiry = arrival.saturating_add(inj.expiry_after.as_millis() as u64);
        // X-virtualMTA and the tenant and campaign headers: removed before
        // signing and spooling, their values kept in the record
        // (inject/vmta.rs); only header bytes move.
        let room = inj.signer.as_ref().map_or(0, |s| s.room());
        let tenants = &inj.config.tenants;
        let names: [&[u8]; 3] = [
            super::vmta::VMTA,
            &tenants.tenant_header,
            &tenants.campaign_header,
        ];
        let mut values = [None, None, None];
        let room = super::vmta::strip_fields(&mut self.body, room, &names, &mut values);
        let [pool, tenant, campaign] = values;
        self.env.set_pool(pool.as_deref());
        let user = self
            .session
            .is_authenticated()
            .then(|| self.replies.user.borrow().clone())
            .flatten();
        let resolved = tenants.resolve(user.as_deref(), tenant.as_deref());
        if self.env.pool().is_empty() {
            // Pool by tenant: when the message names none.
            self.env
                .set_pool(resolved.pool.as_deref().map(str::as_bytes));
        }
        self.env.set_tenant(&resolved.tenant);
        self.env.set_campaign(campaign.as_deref());
        if resolved.unknown {
            inj.unknown_tenant(&resolved.tenant);
        }
        let list = self.env.spool_recipients();
        // DKIM: once per message, over the bytes exactly as stored and
        // sent; the record starts at the signature (or after the headroom).
        let start = inj
            .signer
            .as_ref()
            .map_or(room, |s| s.sign(&mut self.body, room).start());
        let msg = self
            .env
            .new_message(&list, &self.body[start..], arrival, expiry);
        let (id, rec) = match inj.spool.append(&msg) {
            Ok(r) => r,
            Err(e) => {
                if let SpoolError::Poisoned { reason } = &e {
                    inj.log_poisoned(reason);
                } else if !e.is_temporary() {
                    log::error!("shard {}: spool append failed: {e}", inj.shard);
                }
                return Some(spool_error_reply(&e));
            }
        };
        drop(list);
        let accepted = self.env.accepted(id, rec, arrival, expiry);
        let commit = inj.spool.commit();
        let replies = Rc::clone(&self.replies);
        replies.in_flight.set(replies.in_flight.get() + 1);
        inj.commit_started();
        let inj = Rc::clone(inj);
        glommio::spawn_local(async move {
            match commit_outcome(commit.await, inj.shard, id) {
                Ok(reply) => {
                    // The 250 is released first, then delivery may start:
                    // nothing unacknowledged is ever delivered.
                    replies.push(token, reply);
                    inj.queues.borrow_mut().enqueue(accepted);
                    inj.commit_finished(true);
                }
                Err((reply, e)) => {
                    match &e {
                        SpoolError::Poisoned { reason } => inj.log_poisoned(reason),
                        other => log::error!(
                            "shard {}: commit of message {id} failed: {other}",
                            inj.shard
                        ),
                    }
                    replies.push(token, reply);
                    inj.commit_finished(false);
                }
            }
        })
        .detach();
        None
    }

    fn apply_replies(&mut self) {
        let mut ready = self.replies.ready.borrow_mut();
        while let Some((token, reply)) = ready.pop_front() {
            // A token dropped by a shutdown reply is no longer outstanding.
            let _ = self.session.reply(token, reply);
        }
    }

    async fn drain_commits(&mut self) {
        while self.replies.in_flight.get() > 0 {
            Ready(&self.replies).await;
            self.apply_replies();
        }
    }

    /// Input ended or the session closed: every owed reply goes out.
    async fn finish(&mut self, stream: &mut TcpStream) -> io::Result<()> {
        self.drain_commits().await;
        self.apply_replies();
        self.flush(stream).await.map(|_| ())
    }

    async fn flush(&mut self, stream: &mut TcpStream) -> io::Result<usize> {
        self.out.clear();
        let n = self.session.write_output(&mut self.out);
        match self.tls.as_mut() {
            Some(tls) => tls.write_all(stream, &self.out).await?,
            None if n > 0 => stream.write_all(&self.out).await?,
            None => {}
        }
        if self.out.capacity() > OUTPUT_KEEP_BYTES {
            self.out.clear();
            self.out.shrink_to(OUTPUT_BYTES);
        }
        Ok(n)
    }

    /// Waits for input, a commit reply, a timeout, or shutdown.
    async fn wait(&mut self, inj: &Injector, stream: &mut TcpStream) -> io::Result<Wake> {
        if !self.replies.ready.borrow().is_empty() {
            return Ok(Wake::Replies);
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 {
            // The session leaves at most one command line unconsumed.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            return Err(io::Error::other("input buffer full without progress"));
        }
        // Plaintext rustls already decrypted comes first (a client may send
        // EHLO in the same flight as its Finished).
        if let Some(tls) = self.tls.as_mut() {
            match tls.take_plaintext(&mut self.buf[self.end..])? {
                Some(0) => return Ok(Wake::Eof),
                Some(n) => {
                    self.end += n;
                    self.last_input = Instant::now();
                    return Ok(Wake::Input);
                }
                None => {}
            }
        }
        let quiet = !self.env.is_open()
            && matches!(self.state, Body::Idle)
            && self.replies.in_flight.get() == 0;
        let shutting_down = Reply::fixed(421, (4, 3, 2), "Service shutting down");
        if quiet && inj.shutdown.is_set() {
            return Ok(Wake::Close(shutting_down));
        }
        let idle_deadline = self.last_input + inj.config.idle_timeout;
        let rate = inj.config.min_data_rate_bytes_per_s;
        let rate_deadline = match self.state {
            // RFC 5321 §4.5.3.2.5 allows 3 minutes per data block; a
            // minimum average rate after a grace period bounds slow drips.
            Body::Receiving { started, bytes, .. } if rate > 0 => Some(
                started + DATA_RATE_GRACE + Duration::from_secs_f64(bytes as f64 / rate as f64),
            ),
            _ => None,
        };
        let deadline = rate_deadline.map_or(idle_deadline, |r| r.min(idle_deadline));
        let slow = || Reply::fixed(421, (4, 4, 2), "Data rate too low, closing");
        let idle = || Reply::fixed(421, (4, 4, 2), "Idle timeout, closing");
        let now = Instant::now();
        if now >= deadline {
            let slow_now = rate_deadline.is_some_and(|r| now >= r);
            return Ok(Wake::Close(if slow_now { slow() } else { idle() }));
        }
        enum Woke {
            Read(io::Result<usize>),
            Replies,
            Timer,
            Shutdown,
        }
        let Conn {
            buf,
            end,
            replies,
            tls,
            ..
        } = self;
        // Cancel-safe either way: a TLS read only fills the ciphertext
        // buffer; decrypting happens below, after the race.
        let read = async {
            Woke::Read(match tls {
                Some(tls) => tls.read_socket(stream).await,
                None => stream.read(&mut buf[*end..]).await,
            })
        };
        let ready = async {
            Ready(replies).await;
            Woke::Replies
        };
        let timer = async {
            glommio::timer::sleep(deadline - now).await;
            Woke::Timer
        };
        let stop = async {
            if quiet {
                inj.shutdown.wait().await;
                Woke::Shutdown
            } else {
                future::pending().await
            }
        };
        let woke = future::or(read, future::or(ready, future::or(timer, stop))).await;
        Ok(match woke {
            Woke::Read(Ok(0)) => Wake::Eof,
            Woke::Read(Ok(n)) => {
                self.last_input = Instant::now();
                match self.tls.as_mut() {
                    None => self.end += n,
                    Some(tls) => {
                        tls.absorb(n)?;
                        match tls.take_plaintext(&mut self.buf[self.end..])? {
                            Some(0) => return Ok(Wake::Eof),
                            Some(k) => self.end += k,
                            // A partial record: read again.
                            None => {}
                        }
                    }
                }
                Wake::Input
            }
            Woke::Read(Err(e)) => return Err(e),
            Woke::Replies => Wake::Replies,
            Woke::Timer => {
                let slow_now = rate_deadline.is_some_and(|r| Instant::now() >= r);
                Wake::Close(if slow_now { slow() } else { idle() })
            }
            Woke::Shutdown => Wake::Close(shutting_down),
        })
    }
}

enum MailCheck {
    Ok,
    Refuse(Reply),
    Close(Reply),
}

/// The shard's answer to `MAIL FROM` (the session checked syntax and SIZE
/// against the limit already).
fn mail_check(inj: &Injector, size_hint: u64) -> MailCheck {
    if let Some(reason) = inj.spool.poisoned() {
        inj.log_poisoned(&reason);
        return MailCheck::Close(poisoned_reply(&reason));
    }
    // RFC 1870 §6.1 / RFC 3463 4.3.1: temporarily short of storage.
    if !inj.spool.has_room(size_hint) {
        return MailCheck::Refuse(Reply::fixed(452, (4, 3, 1), "Insufficient system storage"));
    }
    if inj.queues.borrow().len() >= inj.queued_recipients_max {
        return MailCheck::Refuse(Reply::fixed(
            452,
            (4, 3, 1),
            "Too much mail queued, try again later",
        ));
    }
    MailCheck::Ok
}
