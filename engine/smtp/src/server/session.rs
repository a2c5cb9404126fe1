//! The server session state machine (RFC 5321 §4.1.4 command order, RFC 2920
//! pipelining, RFC 3030 chunking, RFC 3207 STARTTLS).

use std::collections::VecDeque;
use std::rc::Rc;

use memchr::memchr;

use crate::command::{parse_command, Body, Command};
use crate::data::{DataReceiver, LineChecker};
use crate::extensions::{Extensions, KEYWORDS};
use crate::reply::{push_decimal, Reply, ReplyCode, Severity};
use crate::server::{BareLineEnding, CloseReason, Event, ProtocolError, ReplyToken, ServerConfig};

mod body;

/// One result of [`ServerSession::feed`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step<'a> {
    /// Input bytes used; the rest must be fed again (with more appended).
    pub consumed: usize,
    /// What happened.
    pub event: Event<'a>,
}

/// Why [`ServerSession::reply`] refused a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token is not outstanding (already answered or from another session).
    #[error("reply token is not outstanding")]
    NotOutstanding,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Before [`ServerSession::greeting`].
    AwaitGreeting,
    Ready,
    /// Greeted with 554: only QUIT (RFC 5321 §3.1).
    NoService,
    /// STARTTLS answered; waiting for the driver's handshake.
    AwaitTls,
    Closed(CloseReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Greeted {
    None,
    Helo,
    Ehlo,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MailState {
    None,
    Pending,
    Open,
}

#[derive(Debug)]
enum Input {
    Commands,
    /// Skipping the rest of a command line over the limit.
    DiscardLine,
    Data(DataReceiver),
    Bdat {
        remaining: u64,
        size: u64,
        last: bool,
        discard: bool,
    },
    /// An AUTH exchange awaits the application's reply.
    AuthWait(u64),
    /// The application sent 334: the next line is a SASL response.
    AuthLine,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotKind {
    Fixed,
    Mail,
    Rcpt,
    MessageEnd,
    Auth,
}

#[derive(Debug)]
struct Slot {
    reply: Option<Reply>,
    kind: SlotKind,
    generation: u32,
}

#[derive(Debug)]
struct Transaction {
    mail: MailState,
    rcpts_accepted: usize,
    rcpts_pending: usize,
    bdat: bool,
    /// Content checks for BDAT chunks (DATA has its own in the receiver);
    /// created at the first chunk of a transaction.
    bdat_lines: Option<LineChecker>,
    bytes: u64,
    smtputf8: bool,
    failed: Option<ProtocolError>,
}

impl Transaction {
    const EMPTY: Self = Self {
        mail: MailState::None,
        rcpts_accepted: 0,
        rcpts_pending: 0,
        bdat: false,
        bdat_lines: None,
        bytes: 0,
        smtputf8: false,
        failed: None,
    };
}

/// A server-side SMTP session: bytes in, events and replies out. See the
/// [module docs](crate::server) for how to drive it.
#[derive(Debug)]
pub struct ServerSession {
    config: Rc<ServerConfig>,
    phase: Phase,
    helo: Greeted,
    tls: bool,
    authenticated: bool,
    txn: Transaction,
    /// Bumped at every transaction reset, so late replies to an old
    /// transaction never change the new one.
    generation: u32,
    input: Input,
    slots: VecDeque<Slot>,
    /// Sequence number of `slots[0]`.
    first_seq: u64,
    errors: u32,
    /// An event owed after the one just returned.
    deferred: Option<Event<'static>>,
}

impl ServerSession {
    /// A session awaiting its greeting.
    pub fn new(config: Rc<ServerConfig>) -> Self {
        Self {
            config,
            phase: Phase::AwaitGreeting,
            helo: Greeted::None,
            tls: false,
            authenticated: false,
            txn: Transaction::EMPTY,
            generation: 0,
            input: Input::Commands,
            slots: VecDeque::new(),
            first_seq: 0,
            errors: 0,
            deferred: None,
        }
    }

    /// Queues the greeting. `220` opens the session; `554` leaves only QUIT
    /// (RFC 5321 §3.1); any other code (`421`) closes it after output.
    pub fn greeting(&mut self, reply: Reply) {
        if self.phase != Phase::AwaitGreeting {
            return;
        }
        self.phase = match reply.code.value() {
            220 => Phase::Ready,
            554 => Phase::NoService,
            _ => Phase::Closed(CloseReason::GreetingRefused),
        };
        self.push_fixed(reply);
    }

    /// True once STARTTLS completed.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// True after a `235` to AUTH.
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// Replies queued or awaited, not yet written.
    pub fn replies_pending(&self) -> usize {
        self.slots.len()
    }

    /// True when [`Self::write_output`] would write something.
    pub fn has_output(&self) -> bool {
        self.slots.front().is_some_and(|slot| slot.reply.is_some())
    }

    /// Appends every reply that is ready, in command order, up to the first
    /// unanswered token. Returns the bytes appended.
    pub fn write_output(&mut self, out: &mut Vec<u8>) -> usize {
        let before = out.len();
        let enhanced = self
            .config
            .extensions
            .contains(Extensions::ENHANCED_STATUS_CODES);
        while let Some(slot) = self.slots.front() {
            let Some(reply) = &slot.reply else { break };
            reply.encode(enhanced, out);
            self.slots.pop_front();
            self.first_seq += 1;
        }
        out.len() - before
    }

    /// Answers an outstanding token. The reply is written once every earlier
    /// reply is ready.
    pub fn reply(&mut self, token: ReplyToken, reply: Reply) -> Result<(), TokenError> {
        let index = token
            .seq
            .checked_sub(self.first_seq)
            .and_then(|i| usize::try_from(i).ok())
            .ok_or(TokenError::NotOutstanding)?;
        let slot = self
            .slots
            .get_mut(index)
            .ok_or(TokenError::NotOutstanding)?;
        if slot.reply.is_some() || slot.kind == SlotKind::Fixed {
            return Err(TokenError::NotOutstanding);
        }
        let positive = reply.code.severity() == Severity::PositiveCompletion;
        let current = slot.generation == self.generation;
        match slot.kind {
            SlotKind::Mail if current && self.txn.mail == MailState::Pending => {
                self.txn.mail = if positive {
                    MailState::Open
                } else {
                    MailState::None
                };
            }
            SlotKind::Rcpt if current => {
                assert!(
                    self.txn.rcpts_pending > 0,
                    "RCPT reply without a pending RCPT"
                );
                self.txn.rcpts_pending -= 1;
                if positive {
                    self.txn.rcpts_accepted += 1;
                }
            }
            SlotKind::Auth => {
                if matches!(self.input, Input::AuthWait(seq) if seq == token.seq) {
                    self.input = match reply.code.value() {
                        334 => Input::AuthLine,
                        235 => {
                            self.authenticated = true;
                            Input::Commands
                        }
                        _ => Input::Commands,
                    };
                }
            }
            _ => {}
        }
        slot.reply = Some(reply);
        Ok(())
    }

    /// Ends the session with `reply` (usually `421`, e.g. on idle timeout or
    /// shutdown): replies already given are kept up to the first unanswered
    /// one, later ones are dropped. The next `feed` returns `Close`.
    pub fn shutdown(&mut self, reply: Reply) {
        if let Some(first_open) = self.slots.iter().position(|s| s.reply.is_none()) {
            self.slots.truncate(first_open);
        }
        self.push_fixed(reply);
        self.phase = Phase::Closed(CloseReason::Shutdown);
    }

    /// Call after the TLS handshake that followed [`Event::StartTls`]: the
    /// session forgets everything learned before (RFC 3207 §4.2) and waits
    /// for a new EHLO.
    pub fn tls_established(&mut self) {
        if self.phase != Phase::AwaitTls {
            return;
        }
        self.phase = Phase::Ready;
        self.tls = true;
        self.helo = Greeted::None;
        self.authenticated = false;
        self.reset_transaction();
        self.input = Input::Commands;
    }

    /// Call before [`Self::greeting`] on an implicit-TLS connection (RFC
    /// 8314 §3.3): the handshake already happened, so STARTTLS is not
    /// offered and AUTH may be.
    pub fn tls_at_connect(&mut self) {
        if self.phase == Phase::AwaitGreeting {
            self.tls = true;
        }
    }

    /// Consumes a prefix of `input` (all buffered, unconsumed bytes) and
    /// returns the next event.
    pub fn feed<'a>(&mut self, input: &'a [u8]) -> Step<'a> {
        if let Some(event) = self.deferred.take() {
            return Step { consumed: 0, event };
        }
        let mut consumed = 0;
        loop {
            match self.phase {
                Phase::AwaitGreeting | Phase::AwaitTls => {
                    return Step {
                        consumed,
                        event: Event::Blocked,
                    }
                }
                Phase::Closed(reason) => {
                    return Step {
                        consumed,
                        event: Event::Close(reason),
                    }
                }
                Phase::Ready | Phase::NoService => {}
            }
            let (used, event) = self.step(&input[consumed..]);
            consumed += used;
            if let Some(event) = event {
                return Step { consumed, event };
            }
        }
    }

    /// One move of the machine; `None` asks the caller to continue.
    fn step<'a>(&mut self, input: &'a [u8]) -> (usize, Option<Event<'a>>) {
        match &mut self.input {
            Input::Commands => self.command_step(input),
            Input::DiscardLine => match memchr(b'\n', input) {
                Some(p) => {
                    self.input = Input::Commands;
                    (p + 1, Some(self.refuse(ProtocolError::LineTooLong)))
                }
                None => (input.len(), Some(Event::NeedInput)),
            },
            Input::Data(_) => self.data_step(input),
            Input::Bdat { .. } => self.bdat_step(input),
            Input::AuthWait(_) => (0, Some(Event::Blocked)),
            Input::AuthLine => self.auth_line_step(input),
        }
    }

    fn push_fixed(&mut self, reply: Reply) {
        self.slots.push_back(Slot {
            reply: Some(reply),
            kind: SlotKind::Fixed,
            generation: self.generation,
        });
    }

    fn push_pending(&mut self, kind: SlotKind) -> ReplyToken {
        let seq = self.first_seq + self.slots.len() as u64;
        self.slots.push_back(Slot {
            reply: None,
            kind,
            generation: self.generation,
        });
        ReplyToken { seq }
    }

    fn reset_transaction(&mut self) {
        self.txn = Transaction::EMPTY;
        self.generation = self.generation.wrapping_add(1);
    }

    /// Answers an error and counts it; too many errors close the session.
    fn refuse(&mut self, error: ProtocolError) -> Event<'static> {
        let reply = error.reply();
        let code = reply.code;
        self.push_fixed(reply);
        // A full recipient list is not the client's mistake.
        if error != ProtocolError::TooManyRecipients {
            self.errors += 1;
        }
        if self.errors > self.config.errors_max && !matches!(self.phase, Phase::Closed(_)) {
            self.push_fixed(ProtocolError::TooManyErrors.reply());
            self.phase = Phase::Closed(CloseReason::TooManyErrors);
        }
        Event::Rejected { code, error }
    }

    fn command_step<'a>(&mut self, input: &'a [u8]) -> (usize, Option<Event<'a>>) {
        if self.slots.len() >= self.config.replies_pending_max {
            return (0, Some(Event::Blocked));
        }
        let (line, used) = match self.read_line(input) {
            LineRead::Complete { line, used } => (line, used),
            LineRead::Incomplete => return (0, Some(Event::NeedInput)),
            LineRead::TooLong => {
                // Drop what was seen; the rest of the line is skipped too.
                self.input = Input::DiscardLine;
                return (self.config.command_line_bytes_max, None);
            }
            LineRead::BareLineEnding { used } => {
                return (used, Some(self.refuse(ProtocolError::BareLineEnding)));
            }
        };
        let command = match std::str::from_utf8(line) {
            Ok(text) => parse_command(text),
            Err(_) => Err(crate::command::CommandError::Syntax),
        };
        let command = match command {
            Ok(command) => command,
            Err(error) => return (used, Some(self.refuse(ProtocolError::Command(error)))),
        };
        if self.phase == Phase::NoService && command != Command::Quit {
            return (used, Some(self.refuse(ProtocolError::NoService)));
        }
        let more_input = used < input.len();
        match self.command(command, more_input) {
            Outcome::Event(event) => (used, Some(event)),
            Outcome::Blocked => (0, Some(Event::Blocked)),
            Outcome::Injection(event) => (input.len(), Some(event)),
        }
    }

    fn read_line<'a>(&self, input: &'a [u8]) -> LineRead<'a> {
        let max = self.config.command_line_bytes_max;
        let window = &input[..input.len().min(max)];
        match memchr(b'\n', window) {
            Some(p) => {
                let used = p + 1;
                let (line, bare_lf) = match p.checked_sub(1) {
                    Some(cr) if input[cr] == b'\r' => (&input[..cr], false),
                    _ => (&input[..p], true),
                };
                // RFC 5321 §2.3.8: only CRLF ends a line; a CR elsewhere is
                // never part of a command.
                let reject = self.config.bare_line_ending == BareLineEnding::Reject;
                if reject && (bare_lf || memchr(b'\r', line).is_some()) {
                    return LineRead::BareLineEnding { used };
                }
                LineRead::Complete { line, used }
            }
            // RFC 5321 §4.5.3.1.4: refuse before buffering more.
            None if input.len() >= max => LineRead::TooLong,
            None => LineRead::Incomplete,
        }
    }

    fn command<'a>(&mut self, command: Command<'a>, more_input: bool) -> Outcome<'a> {
        let ext = self.advertised();
        let event = match command {
            Command::Ehlo { domain } => {
                self.reset_transaction();
                self.helo = Greeted::Ehlo;
                let reply = self.ehlo_reply();
                self.push_fixed(reply);
                Event::Ehlo { domain }
            }
            Command::Helo { domain } => {
                self.reset_transaction();
                self.helo = Greeted::Helo;
                let text = crate::reply::sanitize_text(&self.config.hostname).into_owned();
                self.push_fixed(Reply::plain(ReplyCode::OK, text));
                Event::Helo { domain }
            }
            // Whether this MAIL nests depends on the reply to the last one.
            Command::Mail { .. } | Command::StartTls | Command::Auth { .. }
                if self.txn.mail == MailState::Pending =>
            {
                return Outcome::Blocked;
            }
            Command::Mail { from, params } => {
                if let Err(error) = self.check_mail(ext, from.is_some_and(|m| m.is_utf8()), &params)
                {
                    return Outcome::Event(self.refuse(error));
                }
                let token = self.push_pending(SlotKind::Mail);
                self.txn.mail = MailState::Pending;
                self.txn.smtputf8 = params.smtputf8;
                Event::Mail {
                    token,
                    from,
                    params,
                }
            }
            Command::Rcpt { to, params } => {
                let error = match self.txn.mail {
                    _ if self.helo == Greeted::None => Some(ProtocolError::NoHelo),
                    MailState::None => Some(ProtocolError::NoMail),
                    // The reply to MAIL decides whether this RCPT is valid.
                    MailState::Pending => return Outcome::Blocked,
                    MailState::Open => None,
                };
                let error = error.or_else(|| {
                    if (params.notify.is_some() || params.orcpt.is_some())
                        && !ext.contains(Extensions::DSN)
                    {
                        Some(ProtocolError::ParameterNotOffered)
                    } else if to.is_utf8() && !self.txn.smtputf8 {
                        Some(ProtocolError::Utf8WithoutSmtputf8)
                    } else if self.txn.rcpts_accepted + self.txn.rcpts_pending
                        >= self.config.recipients_max
                    {
                        // RFC 5321 §4.5.3.1.8 / §4.5.3.1.10.
                        Some(ProtocolError::TooManyRecipients)
                    } else {
                        None
                    }
                });
                if let Some(error) = error {
                    return Outcome::Event(self.refuse(error));
                }
                let token = self.push_pending(SlotKind::Rcpt);
                self.txn.rcpts_pending += 1;
                Event::Rcpt { token, to, params }
            }
            Command::Data => {
                if let Some(outcome) = self.check_body_start() {
                    return outcome;
                }
                if self.txn.bdat {
                    // RFC 3030 §2: DATA after BDAT in one transaction.
                    return Outcome::Event(self.refuse(ProtocolError::DataAfterBdat));
                }
                self.push_fixed(Reply::plain(
                    ReplyCode::START_DATA,
                    "Start mail input; end with <CRLF>.<CRLF>",
                ));
                self.input = Input::Data(DataReceiver::new(self.config.text_line_bytes_max));
                Event::DataStart
            }
            Command::Bdat { size, last } => return self.bdat_command(ext, size, last),
            Command::Rset => {
                self.reset_transaction();
                self.push_fixed(Reply::ok());
                Event::Rset
            }
            Command::Noop => {
                self.push_fixed(Reply::ok());
                Event::Noop
            }
            Command::Quit => {
                self.push_fixed(Reply::fixed(221, (2, 0, 0), "Bye"));
                self.phase = Phase::Closed(CloseReason::Quit);
                Event::Quit
            }
            Command::Vrfy { argument } => {
                self.push_fixed(Reply::fixed(
                    252,
                    (2, 5, 0),
                    "Cannot VRFY user, but will accept message",
                ));
                Event::Vrfy { argument }
            }
            Command::Expn { .. } => self.refuse(ProtocolError::NotImplemented),
            Command::Help { .. } => {
                self.push_fixed(Reply::fixed(214, (2, 0, 0), "See RFC 5321"));
                Event::Help
            }
            Command::StartTls => {
                let error = if !ext.contains(Extensions::STARTTLS) {
                    Some(if self.tls {
                        ProtocolError::AlreadyTls
                    } else {
                        ProtocolError::NotImplemented
                    })
                } else if self.helo != Greeted::Ehlo {
                    Some(ProtocolError::NoHelo)
                } else if self.txn.mail != MailState::None {
                    Some(ProtocolError::InTransaction)
                } else {
                    None
                };
                if let Some(error) = error {
                    return Outcome::Event(self.refuse(error));
                }
                if more_input {
                    // RFC 3207 §4.2: plaintext pipelined after STARTTLS is an
                    // injection; drop it and close.
                    let reply = ProtocolError::StartTlsInjection.reply();
                    let code = reply.code;
                    self.push_fixed(reply);
                    self.phase = Phase::Closed(CloseReason::StartTlsInjection);
                    return Outcome::Injection(Event::Rejected {
                        code,
                        error: ProtocolError::StartTlsInjection,
                    });
                }
                self.push_fixed(Reply::fixed(220, (2, 0, 0), "Ready to start TLS"));
                self.phase = Phase::AwaitTls;
                Event::StartTls
            }
            Command::Auth {
                mechanism,
                initial_response,
            } => {
                let error = if !ext.contains(Extensions::AUTH) {
                    Some(if self.config.extensions.contains(Extensions::AUTH) {
                        ProtocolError::EncryptionRequired
                    } else {
                        ProtocolError::NotImplemented
                    })
                } else if self.helo != Greeted::Ehlo {
                    Some(ProtocolError::NoHelo)
                } else if self.authenticated {
                    Some(ProtocolError::AlreadyAuthenticated)
                } else if self.txn.mail != MailState::None {
                    Some(ProtocolError::InTransaction)
                } else {
                    None
                };
                if let Some(error) = error {
                    return Outcome::Event(self.refuse(error));
                }
                let token = self.push_pending(SlotKind::Auth);
                self.input = Input::AuthWait(token.seq);
                Event::Auth {
                    token,
                    mechanism,
                    initial_response,
                }
            }
            Command::Unknown { .. } => self.refuse(ProtocolError::UnknownCommand),
        };
        Outcome::Event(event)
    }

    /// Extensions advertised in the current state.
    fn advertised(&self) -> Extensions {
        let mut ext = self.config.extensions;
        if self.tls {
            ext.remove(Extensions::STARTTLS);
        }
        if self.config.auth_requires_tls && !self.tls {
            ext.remove(Extensions::AUTH);
        }
        if !ext.contains(Extensions::CHUNKING) {
            ext.remove(Extensions::BINARY_MIME);
        }
        ext
    }

    fn ehlo_reply(&self) -> Reply {
        let ext = self.advertised();
        let mut text = Vec::with_capacity(160);
        text.extend_from_slice(crate::reply::sanitize_text(&self.config.hostname).as_bytes());
        for (flag, keyword) in KEYWORDS {
            if !ext.contains(flag) {
                continue;
            }
            text.push(b'\n');
            text.extend_from_slice(keyword.as_bytes());
            if flag == Extensions::SIZE {
                text.push(b' ');
                push_decimal(&mut text, self.config.message_bytes_max);
            } else if flag == Extensions::AUTH {
                text.push(b' ');
                text.extend_from_slice(
                    crate::reply::sanitize_text(&self.config.auth_mechanisms).as_bytes(),
                );
            }
        }
        // Invariant: built from UTF-8 strings and ASCII digits.
        let text = String::from_utf8(text).expect("EHLO reply is UTF-8");
        Reply::plain(ReplyCode::OK, text)
    }

    fn check_mail(
        &self,
        ext: Extensions,
        utf8: bool,
        params: &crate::command::MailParams<'_>,
    ) -> Result<(), ProtocolError> {
        if self.helo == Greeted::None {
            return Err(ProtocolError::NoHelo);
        }
        if self.txn.mail != MailState::None {
            return Err(ProtocolError::NestedMail);
        }
        // RFC 5321 §4.1.1.11: parameters of extensions not offered get 555.
        let offered = |flag| ext.contains(flag);
        let not_offered = (params.size.is_some() && !offered(Extensions::SIZE))
            || (params.body == Some(Body::EightBitMime) && !offered(Extensions::EIGHT_BIT_MIME))
            || (params.body == Some(Body::BinaryMime) && !offered(Extensions::BINARY_MIME))
            || (params.smtputf8 && !offered(Extensions::SMTPUTF8))
            || ((params.ret.is_some() || params.envid.is_some()) && !offered(Extensions::DSN))
            || (params.auth.is_some() && !offered(Extensions::AUTH));
        if not_offered {
            return Err(ProtocolError::ParameterNotOffered);
        }
        if utf8 && !params.smtputf8 {
            return Err(ProtocolError::Utf8WithoutSmtputf8);
        }
        // RFC 1870 §6.1: a declared size over the limit is refused at MAIL.
        if params
            .size
            .is_some_and(|size| size > self.config.message_bytes_max)
        {
            return Err(ProtocolError::MessageTooBig);
        }
        Ok(())
    }

    fn auth_line_step<'a>(&mut self, input: &'a [u8]) -> (usize, Option<Event<'a>>) {
        match self.read_line(input) {
            LineRead::Complete { line, used } => {
                match std::str::from_utf8(line) {
                    Ok(response) => {
                        let token = self.push_pending(SlotKind::Auth);
                        self.input = Input::AuthWait(token.seq);
                        (used, Some(Event::AuthResponse { token, response }))
                    }
                    Err(_) => {
                        self.input = Input::Commands;
                        (
                            used,
                            Some(self.refuse(ProtocolError::Command(
                                crate::command::CommandError::Syntax,
                            ))),
                        )
                    }
                }
            }
            LineRead::Incomplete => (0, Some(Event::NeedInput)),
            LineRead::TooLong => {
                self.input = Input::DiscardLine;
                (self.config.command_line_bytes_max, None)
            }
            LineRead::BareLineEnding { used } => {
                self.input = Input::Commands;
                (used, Some(self.refuse(ProtocolError::BareLineEnding)))
            }
        }
    }
}

enum LineRead<'a> {
    Complete { line: &'a [u8], used: usize },
    Incomplete,
    TooLong,
    BareLineEnding { used: usize },
}

enum Outcome<'a> {
    Event(Event<'a>),
    /// Depends on an unanswered token: consume nothing.
    Blocked,
    /// STARTTLS injection: consume everything.
    Injection(Event<'a>),
}
