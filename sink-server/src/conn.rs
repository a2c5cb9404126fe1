//! The connection driver: a thin loop of read → feed the `ServerSession` →
//! apply the `ConnPolicy` answers → write. Every protocol decision is made
//! by `sluice-smtp`'s session or by [`ConnPolicy`] (both synchronous); this
//! file only moves bytes, sleeps the profile's delays and closes.

use std::io;
use std::rc::Rc;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use sluice_smtp::server::{Event, ReplyToken, ServerConfig, ServerSession};
use sluice_smtp::{Extensions, Reply};

use crate::config::{SinkConfig, READ_BYTES};
use crate::policy::{Answer, ConnPolicy, Decision, Then};
use crate::shard::Shard;
use crate::tls::{TlsRead, TlsState};

/// Bytes reserved for queued replies (reused; grows only for huge pipelines).
pub const OUTPUT_BYTES: usize = 4096;

/// The session configuration a shard shares with its connections.
pub fn session_config(cfg: &SinkConfig) -> ServerConfig {
    let mut sc = ServerConfig::new(cfg.hostname.clone());
    sc.extensions = Extensions::PIPELINING
        | Extensions::CHUNKING
        | Extensions::EIGHT_BIT_MIME
        | Extensions::SMTPUTF8
        | Extensions::SIZE
        | Extensions::ENHANCED_STATUS_CODES
        | Extensions::DSN;
    if cfg.tls.is_some() {
        sc.extensions |= Extensions::STARTTLS;
    }
    sc.message_bytes_max = cfg.size_bytes_max;
    sc.recipients_max = cfg.rcpt_max;
    // The read buffer must hold the longest unconsumed input the session
    // leaves (one command line), or a connection could stall.
    assert!(
        READ_BYTES >= sc.input_bytes_min(),
        "read buffer below one command line"
    );
    sc
}

/// Serves one accepted connection to its end.
pub async fn serve(shard: Rc<Shard>, mut stream: TcpStream) {
    shard.open.set(shard.open.get() + 1);
    shard.shared.connection_opened();
    {
        let mut stats = shard.stats.borrow_mut();
        stats.counters.connections_total += 1;
        stats.counters.connections_current += 1;
    }
    let _ = stream.set_nodelay(true);
    let mut conn = Conn {
        session: ServerSession::new(shard.smtp.clone()),
        policy: ConnPolicy::new(shard.ids.borrow().enabled()),
        buf: vec![0; READ_BYTES].into_boxed_slice(),
        start: 0,
        end: 0,
        out: Vec::with_capacity(OUTPUT_BYTES),
        tls: None,
    };
    let result = conn.run(&shard, &mut stream).await;
    conn.policy.close(&shard);
    if let Some(tls) = conn.tls.as_mut() {
        tls.close(&mut stream).await;
    }
    let _ = stream.close().await;
    let mut stats = shard.stats.borrow_mut();
    if result.is_err() {
        stats.counters.connection_errors += 1;
    }
    stats.counters.connections_current -= 1;
    drop(stats);
    shard.shared.connection_closed();
    shard.open.set(shard.open.get() - 1);
}

struct Conn {
    session: ServerSession,
    policy: ConnPolicy,
    /// Input; `buf[start..end]` is received and not yet consumed.
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    out: Vec<u8>,
    tls: Option<Box<TlsState>>,
}

/// How a read ended.
enum Input {
    Data,
    Eof,
    IdleTimeout,
}

impl Conn {
    async fn run(&mut self, shard: &Shard, stream: &mut TcpStream) -> io::Result<()> {
        let idle = shard.cfg.idle_timeout;
        stream.set_read_timeout((!idle.is_zero()).then_some(idle))?;
        let Some(greeting) = self.policy.greeting(shard) else {
            return self.never_greet(shard, stream).await;
        };
        self.sleep(greeting.delay).await;
        self.session.greeting(greeting.reply);
        loop {
            let step = self.session.feed(&self.buf[self.start..self.end]);
            self.start += step.consumed;
            match step.event {
                Event::NeedInput => {
                    self.flush(shard, stream).await?;
                    // A client that always has input ready never makes a
                    // read wait; let the shard's other connections run.
                    glommio::yield_if_needed().await;
                    match self.read(shard, stream).await? {
                        Input::Data => {}
                        Input::Eof => return Ok(()),
                        Input::IdleTimeout => {
                            // RFC 5321 §4.5.3.2.7: the server may close an idle
                            // connection; say so with 421.
                            self.session.shutdown(Reply::fixed(
                                421,
                                (4, 4, 2),
                                "Idle timeout, closing",
                            ));
                        }
                    }
                }
                Event::Blocked => {
                    // Every token is answered at once, so only a full reply
                    // queue blocks; writing it out unblocks the session.
                    if !self.session.has_output() {
                        return Err(io::Error::other("session blocked with nothing to write"));
                    }
                    self.flush(shard, stream).await?;
                }
                Event::Close(_) => {
                    self.flush(shard, stream).await?;
                    return Ok(());
                }
                Event::Mail { token, .. } => {
                    let answer = self.policy.mail(shard);
                    if self.answer(shard, stream, token, answer).await? {
                        return Ok(());
                    }
                }
                Event::Rcpt { token, to, .. } => {
                    let answer = self.policy.rcpt(shard, &to);
                    if self.answer(shard, stream, token, answer).await? {
                        return Ok(());
                    }
                }
                Event::DataStart | Event::Bdat { .. } => self.policy.body_start(shard),
                Event::BodyChunk(chunk) => {
                    if self.policy.body_chunk(shard, chunk) == Decision::Drop {
                        return Ok(());
                    }
                }
                Event::MessageEnd { token } => match self.policy.message_end(shard) {
                    Decision::Drop => return Ok(()),
                    Decision::Go(Some(answer)) => {
                        if self.answer(shard, stream, token, answer).await? {
                            return Ok(());
                        }
                    }
                    Decision::Go(None) => {
                        return Err(io::Error::other("message end without an answer"))
                    }
                },
                Event::MessageAborted { .. } => self.policy.message_aborted(shard),
                Event::Rset | Event::Ehlo { .. } | Event::Helo { .. } => {
                    self.policy.reset_transaction(shard)
                }
                Event::StartTls => {
                    if !self.start_tls(shard, stream).await? {
                        return Ok(());
                    }
                }
                Event::Auth { token, .. } | Event::AuthResponse { token, .. } => {
                    // AUTH is never advertised; the session refuses it before
                    // this point. Answer defensively all the same.
                    let reply = Reply::fixed(502, (5, 5, 1), "Command not implemented");
                    let _ = self.session.reply(token, reply);
                }
                Event::Noop | Event::Quit | Event::Vrfy { .. } | Event::Help => {}
                Event::Rejected { .. } => {}
            }
        }
    }

    /// Applies an answer; `Ok(true)` when the connection must close now.
    async fn answer(
        &mut self,
        shard: &Shard,
        stream: &mut TcpStream,
        token: ReplyToken,
        answer: Answer,
    ) -> io::Result<bool> {
        if !answer.delay.is_zero() {
            // Replies before this one go out first, as a slow server's would.
            self.flush(shard, stream).await?;
            self.sleep(answer.delay).await;
        }
        match answer.then {
            Then::Shutdown => {
                self.session.shutdown(answer.reply);
                Ok(false)
            }
            Then::Continue => {
                self.reply(token, answer.reply)?;
                Ok(false)
            }
            Then::DropAfterWrite => {
                self.reply(token, answer.reply)?;
                self.flush(shard, stream).await?;
                Ok(true)
            }
        }
    }

    fn reply(&mut self, token: ReplyToken, reply: Reply) -> io::Result<()> {
        // The token came from the event just returned and nothing answered it.
        self.session
            .reply(token, reply)
            .map_err(|e| io::Error::other(e.to_string()))
    }

    /// Writes every ready reply; then records ids of accepted messages.
    async fn flush(&mut self, shard: &Shard, stream: &mut TcpStream) -> io::Result<()> {
        self.out.clear();
        if self.session.write_output(&mut self.out) == 0 {
            return Ok(());
        }
        count_replies(shard, &self.out);
        match self.tls.as_mut() {
            Some(tls) => tls.write_all(stream, &self.out).await?,
            None => stream.write_all(&self.out).await?,
        }
        self.policy.after_write(shard);
        Ok(())
    }

    /// Reads more input after the unconsumed bytes.
    async fn read(&mut self, shard: &Shard, stream: &mut TcpStream) -> io::Result<Input> {
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
        let target = &mut self.buf[self.end..];
        let result = match self.tls.as_mut() {
            Some(tls) => tls.read(stream, target).await.map(|(r, _)| match r {
                TlsRead::Data(n) => n,
                TlsRead::Closed => 0,
            }),
            None => stream.read(target).await,
        };
        match result {
            Ok(0) => Ok(Input::Eof),
            Ok(n) => {
                self.end += n;
                shard.stats.borrow_mut().counters.bytes_received += n as u64;
                Ok(Input::Data)
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Ok(Input::IdleTimeout),
            Err(e) => Err(e),
        }
    }

    /// RFC 3207: write the `220`, run the handshake, reset the session.
    /// `Ok(false)`: the client went away or the handshake failed.
    async fn start_tls(&mut self, shard: &Shard, stream: &mut TcpStream) -> io::Result<bool> {
        self.flush(shard, stream).await?;
        // The session consumed all input (pipelined plaintext after STARTTLS
        // is an injection it closes on), so nothing is carried across.
        if self.start != self.end {
            return Err(io::Error::other("plaintext left after STARTTLS"));
        }
        let Some(material) = shard.cfg.tls.as_ref() else {
            return Err(io::Error::other("STARTTLS without TLS material"));
        };
        let mut tls = Box::new(
            TlsState::new(material.config.clone()).map_err(|e| io::Error::other(e.to_string()))?,
        );
        match tls.handshake(stream).await {
            Ok(true) => {
                shard.stats.borrow_mut().counters.tls_handshakes += 1;
                self.tls = Some(tls);
                self.session.tls_established();
                self.policy.reset_transaction(shard);
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(_) => {
                shard.stats.borrow_mut().counters.tls_failures += 1;
                Ok(false)
            }
        }
    }

    /// The profile never greets: hold the connection, discard input, until
    /// the peer leaves or the idle timeout.
    async fn never_greet(&mut self, shard: &Shard, stream: &mut TcpStream) -> io::Result<()> {
        loop {
            match stream.read(&mut self.buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => shard.stats.borrow_mut().counters.bytes_received += n as u64,
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    async fn sleep(&self, d: std::time::Duration) {
        if !d.is_zero() {
            glommio::timer::sleep(d).await;
        }
    }
}

/// Counts each reply in `out` by its code: the last line of a reply is
/// `ddd SP text` or a bare `ddd` (RFC 5321 §4.2.1).
fn count_replies(shard: &Shard, out: &[u8]) {
    let mut stats = shard.stats.borrow_mut();
    for line in out.split(|&b| b == b'\n') {
        let last = matches!(line, [_, _, _, b' ', ..] | [_, _, _, b'\r'] | [_, _, _]);
        if !last {
            continue;
        }
        let digits = &line[..3];
        if digits.iter().all(u8::is_ascii_digit) {
            let code = digits
                .iter()
                .fold(0u16, |acc, &d| acc * 10 + u16::from(d - b'0'));
            stats.counters.count_reply(code);
        }
    }
}
