//! The client session state machine: greeting, EHLO/HELO, STARTTLS, and
//! transactions pipelined back to back (RFC 5321, 2920, 3030, 3207).

use std::collections::VecDeque;

use crate::client::encode;
use crate::client::{
    BodyEncoding, BodyTransmit, Capabilities, ClientConfig, ClientEvent, CloseCause, Envelope,
    Failure, Outcome, Parsed, ProtocolFault, ReplyParser, TimeoutClass, TlsPolicy,
};
use crate::command::{Body, MailParams, Orcpt, RcptParams};
use crate::extensions::Extensions;
use crate::reply::{Reply, Severity};

mod replies;

use replies::set_outcome;

/// Why [`ClientSession::queue`] gave an envelope back.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The queue is at `transactions_queued_max`; try after some finish.
    #[error("transaction queue full")]
    Full(Envelope),
    /// The session is closing or closed.
    #[error("session closed")]
    Closed(Envelope),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    AwaitTls,
    Ready,
    Quitting,
    Closed,
}

/// A command awaiting its reply, in sending order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    Mail(u64),
    Rcpt(u64, usize),
    Data(u64),
    DataEnd(u64),
    Bdat(u64),
    Rset,
    Quit,
}

impl Expect {
    /// RFC 2920 §3.1: these end a pipelined group; nothing is sent after
    /// them until their reply arrives.
    fn ends_group(self) -> bool {
        matches!(
            self,
            Self::Greeting | Self::Ehlo | Self::Helo | Self::StartTls | Self::Data(_) | Self::Quit
        )
    }
}

/// The commands awaiting replies, with a count of group enders so the
/// pump need not scan the queue.
#[derive(Debug)]
struct Expects {
    queue: VecDeque<Expect>,
    group_enders: usize,
}

impl Expects {
    fn new(first: Expect) -> Self {
        let mut expects = Self {
            queue: VecDeque::with_capacity(32),
            group_enders: 0,
        };
        expects.push_back(first);
        expects
    }

    fn push_back(&mut self, expect: Expect) {
        self.group_enders += usize::from(expect.ends_group());
        self.queue.push_back(expect);
    }

    fn pop_front(&mut self) -> Option<Expect> {
        let expect = self.queue.pop_front()?;
        self.group_enders -= usize::from(expect.ends_group());
        Some(expect)
    }

    fn front(&self) -> Option<&Expect> {
        self.queue.front()
    }

    fn clear(&mut self) {
        self.queue.clear();
        self.group_enders = 0;
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    fn group_pending(&self) -> bool {
        debug_assert_eq!(
            self.group_enders,
            self.queue.iter().filter(|e| e.ends_group()).count()
        );
        self.group_enders > 0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SendStep {
    Mail,
    Rcpt(usize),
    Body,
    /// DATA sent, waiting for 354.
    AwaitData,
    Sent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MailStatus {
    Unknown,
    Accepted,
    Failed,
}

#[derive(Debug)]
struct Txn {
    seq: u64,
    envelope: Envelope,
    step: SendStep,
    mail: MailStatus,
    accepted: Vec<bool>,
    outcomes: Vec<Option<Outcome>>,
    rcpts_stopped: bool,
    /// Commands of this transaction awaiting replies.
    replies_owed: usize,
}

impl Txn {
    fn accepted_count(&self) -> usize {
        self.accepted.iter().filter(|&&a| a).count()
    }
}

/// A client-side SMTP session. See the [module docs](crate::client).
///
/// Invariants (asserted): every recipient of every queued envelope gets
/// exactly one [`Outcome`]; every reply is matched to exactly one command.
#[derive(Debug)]
pub struct ClientSession {
    config: ClientConfig,
    parser: ReplyParser,
    phase: Phase,
    caps: Capabilities,
    tls: bool,
    pipelining: bool,
    chunking: bool,
    expects: Expects,
    unsent: VecDeque<Envelope>,
    txns: VecDeque<Txn>,
    next_seq: u64,
    need_rset: bool,
    quit_requested: bool,
    wbuf: Vec<u8>,
    /// Bodies to insert, at byte offsets into `wbuf`.
    bodies: VecDeque<(usize, BodyTransmit)>,
    /// Bytes of `wbuf` already handed out; reset when `wbuf` empties.
    wbuf_sent: usize,
    events: VecDeque<ClientEvent>,
}

impl ClientSession {
    /// A session on a freshly connected socket, waiting for the greeting.
    pub fn new(config: ClientConfig) -> Self {
        let parser = ReplyParser::new(config.reply_line_bytes_max, config.reply_lines_max);
        Self {
            config,
            parser,
            phase: Phase::Greeting,
            caps: Capabilities::default(),
            tls: false,
            pipelining: false,
            chunking: false,
            expects: Expects::new(Expect::Greeting),
            unsent: VecDeque::new(),
            txns: VecDeque::new(),
            next_seq: 0,
            need_rset: false,
            quit_requested: false,
            wbuf: Vec::with_capacity(1024),
            bodies: VecDeque::new(),
            wbuf_sent: 0,
            events: VecDeque::new(),
        }
    }

    /// The server's capabilities (empty before EHLO and right after TLS).
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// True once TLS is established.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// True when the session has ended.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// True when transactions flow (greeting, EHLO and TLS done).
    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Ready
    }

    /// Envelopes queued or in flight.
    pub fn transactions_pending(&self) -> usize {
        self.unsent.len() + self.txns.len()
    }

    /// Queues a transaction; it is sent as soon as the protocol allows.
    pub fn queue(&mut self, envelope: Envelope) -> Result<(), QueueError> {
        if self.quit_requested || self.phase == Phase::Closed {
            return Err(QueueError::Closed(envelope));
        }
        if self.unsent.len() >= self.config.transactions_queued_max {
            return Err(QueueError::Full(envelope));
        }
        self.unsent.push_back(envelope);
        self.pump();
        Ok(())
    }

    /// Sends QUIT once every queued transaction is finished.
    pub fn quit(&mut self) {
        self.quit_requested = true;
        self.pump();
    }

    /// Appends command bytes to `out` up to the next body; returns that body
    /// (write it after `out`, then call again) or `None` when all is out.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> Option<BodyTransmit> {
        let Some(&(offset, body)) = self.bodies.front() else {
            out.extend_from_slice(&self.wbuf[self.wbuf_sent..]);
            self.wbuf.clear();
            self.wbuf_sent = 0;
            return None;
        };
        // Offsets stay absolute until the buffer empties: no shifting.
        out.extend_from_slice(&self.wbuf[self.wbuf_sent..offset]);
        self.wbuf_sent = offset;
        self.bodies.pop_front();
        Some(body)
    }

    /// True when [`Self::poll_transmit`] has something.
    pub fn wants_write(&self) -> bool {
        self.wbuf.len() > self.wbuf_sent || !self.bodies.is_empty()
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// The timer the driver should have armed now, if any reply is awaited.
    pub fn timeout(&self) -> Option<TimeoutClass> {
        self.expects.front().map(|expect| match expect {
            Expect::Greeting => TimeoutClass::Greeting,
            Expect::Ehlo | Expect::Helo | Expect::StartTls | Expect::Rset | Expect::Quit => {
                TimeoutClass::Command
            }
            Expect::Mail(_) => TimeoutClass::Mail,
            Expect::Rcpt(..) => TimeoutClass::Rcpt,
            Expect::Data(_) => TimeoutClass::DataInit,
            Expect::DataEnd(_) | Expect::Bdat(_) => TimeoutClass::FinalDot,
        })
    }

    /// Bytes received from the server.
    pub fn feed(&mut self, input: &[u8]) {
        let mut pos = 0;
        while pos < input.len() {
            match self.phase {
                Phase::Closed => return,
                Phase::AwaitTls => {
                    // RFC 3207 §4.2: nothing may arrive between the 220 and
                    // the handshake.
                    let fault = ProtocolFault::StartTlsInjection;
                    self.fail_all(
                        Failure::Protocol(fault),
                        Failure::NotSent,
                        CloseCause::Protocol(fault),
                    );
                    return;
                }
                _ => {}
            }
            match self.parser.feed(&input[pos..]) {
                Ok(Parsed::Complete(reply, used)) => {
                    pos += used;
                    self.on_reply(reply, pos < input.len());
                }
                Ok(Parsed::Incomplete) => return,
                Err(error) => {
                    let fault = ProtocolFault::Reply(error);
                    self.fail_all(
                        Failure::Protocol(fault),
                        Failure::NotSent,
                        CloseCause::Protocol(fault),
                    );
                    return;
                }
            }
        }
    }

    /// The connection dropped (EOF or error): in-flight recipients are
    /// TempFail, like a 451 (RFC 5321 §3.8).
    pub fn connection_lost(&mut self) {
        if self.phase == Phase::Closed {
            return;
        }
        if self.phase == Phase::Quitting && self.txns.is_empty() {
            self.close(CloseCause::Quit);
            return;
        }
        self.fail_all(
            Failure::ConnectionLost,
            Failure::NotSent,
            CloseCause::ConnectionLost,
        );
    }

    /// The timer for [`Self::timeout`] fired.
    pub fn timed_out(&mut self) {
        if self.phase == Phase::Closed {
            return;
        }
        let class = self.timeout().unwrap_or(TimeoutClass::Command);
        self.fail_all(
            Failure::TimedOut(class),
            Failure::NotSent,
            CloseCause::TimedOut(class),
        );
    }

    /// The TLS handshake after [`ClientEvent::StartTls`] succeeded: forget
    /// the capabilities and EHLO again (RFC 3207 §4.2).
    pub fn tls_established(&mut self) {
        if self.phase != Phase::AwaitTls {
            return;
        }
        self.tls = true;
        self.caps = Capabilities::default();
        self.pipelining = false;
        self.chunking = false;
        self.parser.reset();
        self.send_ehlo();
    }

    fn send_ehlo(&mut self) {
        encode::ehlo(&mut self.wbuf, &self.config.helo_name);
        self.expects.push_back(Expect::Ehlo);
        self.phase = Phase::Ehlo;
    }

    fn send_quit(&mut self) {
        encode::quit(&mut self.wbuf);
    }

    fn close(&mut self, cause: CloseCause) {
        self.phase = Phase::Closed;
        self.expects.clear();
        self.events.push_back(ClientEvent::Closed(cause));
    }

    /// Ends the session: every recipient without an outcome gets TempFail,
    /// `in_flight` for sent transactions, `unsent` for the others.
    fn fail_all(&mut self, in_flight: Failure, unsent: Failure, cause: CloseCause) {
        while let Some(mut txn) = self.txns.pop_front() {
            for index in 0..txn.outcomes.len() {
                if txn.outcomes[index].is_none() {
                    set_outcome(
                        &mut self.events,
                        &mut txn,
                        index,
                        Outcome::TempFail(in_flight.clone()),
                    );
                }
            }
            self.events.push_back(ClientEvent::TransactionDone {
                id: txn.envelope.id,
            });
        }
        while let Some(envelope) = self.unsent.pop_front() {
            for index in 0..envelope.recipients.len() {
                self.events.push_back(ClientEvent::Recipient {
                    id: envelope.id,
                    index,
                    outcome: Outcome::TempFail(unsent.clone()),
                });
            }
            self.events
                .push_back(ClientEvent::TransactionDone { id: envelope.id });
        }
        self.close(cause);
    }

    fn on_reply(&mut self, reply: Reply, more_input: bool) {
        let Some(expect) = self.expects.pop_front() else {
            if reply.code.value() == 421 {
                // RFC 5321 §3.8: 421 may come unsolicited before a close.
                self.fail_all(
                    Failure::Reply(reply.clone()),
                    Failure::NotSent,
                    CloseCause::ServerClosed(reply),
                );
            } else {
                let fault = ProtocolFault::UnexpectedReply;
                self.fail_all(
                    Failure::Protocol(fault),
                    Failure::NotSent,
                    CloseCause::Protocol(fault),
                );
            }
            return;
        };
        if reply.code.value() == 421 && expect != Expect::Quit {
            // RFC 5321 §3.8: the server is closing; everything in flight is
            // a temporary failure carrying this reply, not a broken pipe.
            self.fail_all(
                Failure::Reply(reply.clone()),
                Failure::NotSent,
                CloseCause::ServerClosed(reply),
            );
            return;
        }
        let positive = reply.severity() == Severity::PositiveCompletion;
        match expect {
            Expect::Greeting if reply.code.value() == 220 => self.send_ehlo(),
            Expect::Greeting | Expect::Helo => {
                // RFC 5321 §3.1 (554 greeting) / HELO refused: no session.
                if positive && expect == Expect::Helo {
                    self.caps = Capabilities::default();
                    self.session_established();
                } else {
                    self.send_quit();
                    let failure = Failure::Reply(reply.clone());
                    self.fail_all(failure.clone(), failure, CloseCause::ServerClosed(reply));
                }
            }
            Expect::Ehlo => {
                if positive {
                    self.caps = Capabilities::from_ehlo(&reply);
                    self.session_established();
                } else {
                    // RFC 5321 §3.2: fall back to HELO.
                    encode::helo(&mut self.wbuf, &self.config.helo_name);
                    self.expects.push_back(Expect::Helo);
                    self.phase = Phase::Helo;
                }
            }
            Expect::StartTls => {
                if reply.code.value() == 220 {
                    if more_input {
                        let fault = ProtocolFault::StartTlsInjection;
                        self.fail_all(
                            Failure::Protocol(fault),
                            Failure::NotSent,
                            CloseCause::Protocol(fault),
                        );
                        return;
                    }
                    self.phase = Phase::AwaitTls;
                    self.events.push_back(ClientEvent::StartTls);
                } else if self.config.tls == TlsPolicy::Required {
                    self.send_quit();
                    self.fail_all(
                        Failure::TlsUnavailable,
                        Failure::TlsUnavailable,
                        CloseCause::TlsUnavailable,
                    );
                } else {
                    self.become_ready();
                }
            }
            Expect::Rset => {}
            Expect::Quit => {
                self.close(CloseCause::Quit);
                return;
            }
            Expect::Mail(seq)
            | Expect::Rcpt(seq, _)
            | Expect::Data(seq)
            | Expect::DataEnd(seq)
            | Expect::Bdat(seq) => {
                self.on_transaction_reply(expect, seq, reply);
                self.finish_if_done(seq);
            }
        }
        self.pump();
    }

    /// After a positive EHLO or HELO: STARTTLS if wanted, else ready.
    fn session_established(&mut self) {
        let offered = self.caps.offers(Extensions::STARTTLS);
        if !self.tls && offered && self.config.tls != TlsPolicy::Disabled {
            encode::starttls(&mut self.wbuf);
            self.expects.push_back(Expect::StartTls);
            self.phase = Phase::StartTls;
        } else if !self.tls && self.config.tls == TlsPolicy::Required {
            self.send_quit();
            self.fail_all(
                Failure::TlsUnavailable,
                Failure::TlsUnavailable,
                CloseCause::TlsUnavailable,
            );
        } else {
            self.become_ready();
        }
    }

    fn become_ready(&mut self) {
        self.pipelining = self.config.use_pipelining && self.caps.offers(Extensions::PIPELINING);
        self.chunking = self.config.use_chunking && self.caps.offers(Extensions::CHUNKING);
        self.phase = Phase::Ready;
        self.events.push_back(ClientEvent::Ready);
    }

    fn finish_if_done(&mut self, seq: u64) {
        let Some(position) = self.txns.iter().position(|t| t.seq == seq) else {
            return;
        };
        let txn = &self.txns[position];
        if txn.replies_owed > 0 || txn.step != SendStep::Sent {
            return;
        }
        assert!(
            txn.outcomes.iter().all(Option::is_some),
            "transaction finished with a recipient lacking an outcome"
        );
        let id = txn.envelope.id;
        self.txns.remove(position);
        self.events.push_back(ClientEvent::TransactionDone { id });
    }

    /// Sends whatever the protocol allows now.
    fn pump(&mut self) {
        while self.phase == Phase::Ready {
            if self.expects.group_pending() {
                return;
            }
            if !self.pipelining && !self.expects.is_empty() {
                return;
            }
            if let Some(txn) = self.txns.back() {
                if matches!(
                    txn.step,
                    SendStep::Mail | SendStep::Rcpt(_) | SendStep::Body
                ) {
                    let seq = txn.seq;
                    self.send_step(seq);
                    self.finish_if_done(seq);
                    continue;
                }
            }
            let may_start = self.txns.len() < self.config.transactions_in_flight_max.max(1)
                && (self.pipelining || self.txns.is_empty());
            if !may_start {
                return;
            }
            if self.need_rset {
                self.need_rset = false;
                encode::rset(&mut self.wbuf);
                self.expects.push_back(Expect::Rset);
                continue;
            }
            if let Some(envelope) = self.unsent.pop_front() {
                self.start(envelope);
                continue;
            }
            if self.quit_requested && self.txns.is_empty() {
                self.send_quit();
                self.expects.push_back(Expect::Quit);
                self.phase = Phase::Quitting;
            }
            return;
        }
    }

    /// Starts a transaction, or fails it at once when the server cannot
    /// take it (RFC 1870 SIZE, RFC 6152 8BITMIME, RFC 6531 SMTPUTF8).
    fn start(&mut self, envelope: Envelope) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let count = envelope.recipients.len();
        let mut txn = Txn {
            seq,
            envelope,
            step: SendStep::Mail,
            mail: MailStatus::Unknown,
            accepted: vec![false; count],
            outcomes: vec![None; count],
            rcpts_stopped: false,
            replies_owed: 0,
        };
        let refusal = match self.caps.size_max {
            Some(size_max) if txn.envelope.body_bytes > size_max => {
                Some(Failure::TooBig { size_max })
            }
            _ if txn.envelope.eight_bit && !self.caps.offers(Extensions::EIGHT_BIT_MIME) => {
                Some(Failure::ExtensionMissing(Extensions::EIGHT_BIT_MIME))
            }
            _ if txn.envelope.smtputf8 && !self.caps.offers(Extensions::SMTPUTF8) => {
                Some(Failure::ExtensionMissing(Extensions::SMTPUTF8))
            }
            _ => None,
        };
        if refusal.is_some() || count == 0 {
            if let Some(failure) = refusal {
                for index in 0..count {
                    set_outcome(
                        &mut self.events,
                        &mut txn,
                        index,
                        Outcome::PermFail(failure.clone()),
                    );
                }
            }
            self.events.push_back(ClientEvent::TransactionDone {
                id: txn.envelope.id,
            });
            return;
        }
        self.txns.push_back(txn);
    }

    fn send_step(&mut self, seq: u64) {
        let caps = self.caps;
        let (pipelining, chunking) = (self.pipelining, self.chunking);
        let wbuf = &mut self.wbuf;
        let Some(txn) = self.txns.iter_mut().find(|t| t.seq == seq) else {
            return;
        };
        let dsn = caps.offers(Extensions::DSN);
        match txn.step {
            SendStep::Mail => {
                let envelope = &txn.envelope;
                let params = MailParams {
                    size: caps.offers(Extensions::SIZE).then_some(envelope.body_bytes),
                    body: envelope.eight_bit.then_some(Body::EightBitMime),
                    smtputf8: envelope.smtputf8,
                    ret: envelope.ret.filter(|_| dsn),
                    envid: envelope.envid.as_deref().filter(|_| dsn).map(Into::into),
                    auth: None,
                };
                encode::mail(wbuf, &envelope.from, &params);
                self.expects.push_back(Expect::Mail(seq));
                txn.replies_owed += 1;
                txn.step = SendStep::Rcpt(0);
            }
            SendStep::Rcpt(index) => {
                if index >= txn.envelope.recipients.len() || txn.rcpts_stopped {
                    txn.step = SendStep::Body;
                    return;
                }
                let recipient = &txn.envelope.recipients[index];
                let params = RcptParams {
                    notify: recipient.notify.filter(|_| dsn),
                    orcpt: recipient
                        .orcpt
                        .as_deref()
                        .filter(|_| dsn)
                        .map(|address| Orcpt {
                            addr_type: "rfc822",
                            address: address.into(),
                        }),
                };
                encode::rcpt(wbuf, &recipient.address, &params);
                self.expects.push_back(Expect::Rcpt(seq, index));
                txn.replies_owed += 1;
                txn.step = SendStep::Rcpt(index + 1);
            }
            SendStep::Body => {
                if txn.mail == MailStatus::Failed {
                    txn.step = SendStep::Sent;
                    return;
                }
                if !pipelining && txn.accepted_count() == 0 {
                    // Every RCPT failed and we know it: send no body, and
                    // reset the open transaction before the next one.
                    txn.step = SendStep::Sent;
                    self.need_rset = txn.mail == MailStatus::Accepted;
                    return;
                }
                if chunking {
                    // RFC 3030 §2: one chunk, no stuffing, DATA never mixed in.
                    encode::bdat(wbuf, txn.envelope.body_bytes, true);
                    self.bodies.push_back((
                        wbuf.len(),
                        BodyTransmit {
                            id: txn.envelope.id,
                            encoding: BodyEncoding::Raw,
                        },
                    ));
                    self.expects.push_back(Expect::Bdat(seq));
                    txn.step = SendStep::Sent;
                } else {
                    encode::data(wbuf);
                    self.expects.push_back(Expect::Data(seq));
                    txn.step = SendStep::AwaitData;
                }
                txn.replies_owed += 1;
            }
            SendStep::AwaitData | SendStep::Sent => {}
        }
    }
}
