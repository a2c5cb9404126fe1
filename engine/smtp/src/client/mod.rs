//! The client side: reply parser, EHLO capabilities, command encoders and
//! the client transaction state machine.
//!
//! # Driving a [`ClientSession`]
//! ```text
//! let mut session = ClientSession::new(config);
//! session.queue(envelope)?;                      // any time, any number
//! loop {
//!     while let Some(body) = session.poll_transmit(&mut wbuf) {
//!         // wbuf holds the commands so far; now the body of `body.id`:
//!         // DotStuffer::new(bytes) pieces for DATA, the raw bytes for BDAT.
//!     }
//!     write wbuf and bodies (writev); arm a timer for session.timeout();
//!     while let Some(event) = session.poll_event() { outcomes, StartTls, Closed }
//!     read → session.feed(&bytes) | timer → session.timed_out() | EOF → session.connection_lost()
//! }
//! ```
//! The body is never copied into the session: it only says which caller
//! id's body goes where in the byte stream.

mod capabilities;
pub mod encode;
mod reply_parser;
mod session;

use std::time::Duration;

pub use capabilities::{AuthMechanisms, Capabilities};
pub use reply_parser::{Parsed, ReplyError, ReplyParser};
pub use session::{ClientSession, QueueError};

use crate::command::{Notify, Ret};
use crate::extensions::Extensions;
use crate::reply::Reply;

/// Whether and how to use STARTTLS (RFC 3207).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TlsPolicy {
    /// Never start TLS.
    Disabled,
    /// Start TLS when offered; go on in plaintext otherwise.
    #[default]
    Opportunistic,
    /// Fail the connection's transactions (TempFail) unless TLS starts.
    Required,
}

/// Client session settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// Our name for EHLO/HELO.
    pub helo_name: String,
    /// STARTTLS policy.
    pub tls: TlsPolicy,
    /// Pipeline when the server offers PIPELINING.
    pub use_pipelining: bool,
    /// Send BDAT when the server offers CHUNKING.
    pub use_chunking: bool,
    /// Transactions sent but not finished, when pipelining back to back.
    pub transactions_in_flight_max: usize,
    /// Transactions waiting to be sent; [`ClientSession::queue`] refuses more.
    pub transactions_queued_max: usize,
    /// Reply line limit (see [`ReplyParser::LINE_BYTES_MAX`]).
    pub reply_line_bytes_max: usize,
    /// Reply line count limit.
    pub reply_lines_max: usize,
}

impl ClientConfig {
    /// Defaults: opportunistic TLS, pipelining and chunking when offered,
    /// 8 transactions in flight, 64 queued.
    pub fn new(helo_name: impl Into<String>) -> Self {
        Self {
            helo_name: helo_name.into(),
            tls: TlsPolicy::Opportunistic,
            use_pipelining: true,
            use_chunking: true,
            transactions_in_flight_max: 8,
            transactions_queued_max: 64,
            reply_line_bytes_max: ReplyParser::LINE_BYTES_MAX,
            reply_lines_max: ReplyParser::LINES_MAX,
        }
    }
}

/// One recipient of an [`Envelope`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipient {
    /// The address, without angle brackets.
    pub address: String,
    /// DSN `NOTIFY` (sent only when the server offers DSN).
    pub notify: Option<Notify>,
    /// DSN `ORCPT` as an `rfc822` address, not encoded (sent only with DSN).
    pub orcpt: Option<String>,
}

impl Recipient {
    /// A recipient without DSN parameters.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            notify: None,
            orcpt: None,
        }
    }
}

/// What to send: the envelope and the size of a body the caller keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The caller's id, echoed in every event about this transaction.
    pub id: u64,
    /// Sender without angle brackets; empty for the null sender.
    pub from: String,
    /// Recipients (at least one).
    pub recipients: Vec<Recipient>,
    /// Body length in octets (unstuffed), for SIZE and BDAT.
    pub body_bytes: u64,
    /// The body has 8-bit content: needs 8BITMIME (RFC 6152).
    pub eight_bit: bool,
    /// Addresses or headers need SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// DSN `RET` (sent only with DSN).
    pub ret: Option<Ret>,
    /// DSN `ENVID`, not encoded (sent only with DSN).
    pub envid: Option<String>,
}

impl Envelope {
    /// An envelope with no extension needs.
    pub fn new(
        id: u64,
        from: impl Into<String>,
        recipients: Vec<Recipient>,
        body_bytes: u64,
    ) -> Self {
        Self {
            id,
            from: from.into(),
            recipients,
            body_bytes,
            eight_bit: false,
            smtputf8: false,
            ret: None,
            envid: None,
        }
    }
}

/// How to put a body on the wire after the bytes written so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BodyEncoding {
    /// Dot-stuffed with the end marker ([`crate::data::DotStuffer`]).
    DotStuffed,
    /// The raw bytes, exactly `body_bytes` of them (after `BDAT n LAST`).
    Raw,
}

/// An instruction from [`ClientSession::poll_transmit`]: write this body now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BodyTransmit {
    /// The envelope's id.
    pub id: u64,
    /// How.
    pub encoding: BodyEncoding,
}

/// Why a recipient was not delivered, when no reply says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The server's reply.
    Reply(Reply),
    /// The connection dropped before the outcome was known (RFC 5321
    /// §4.2.5 / RELIABILITY.md: like a 451).
    ConnectionLost,
    /// The driver's timer for this class fired.
    TimedOut(TimeoutClass),
    /// The server broke the protocol (bad reply, one too many, plaintext
    /// after STARTTLS).
    Protocol(ProtocolFault),
    /// The connection ended before this transaction was sent.
    NotSent,
    /// TLS was required but not available.
    TlsUnavailable,
    /// The message needs an extension the server did not offer
    /// (8BITMIME: RFC 6152 5.6.3; SMTPUTF8: RFC 6531 5.6.7).
    ExtensionMissing(Extensions),
    /// Bigger than the server's SIZE (RFC 1870: never send it; 5.3.4).
    TooBig {
        /// The server's limit.
        size_max: u64,
    },
}

impl Failure {
    /// The server's reply, when the failure came from one.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            Failure::Reply(reply) => Some(reply),
            _ => None,
        }
    }
}

/// Protocol faults of the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ProtocolFault {
    /// A malformed reply.
    #[error("malformed reply: {0}")]
    Reply(ReplyError),
    /// A reply when none was expected.
    #[error("unexpected reply")]
    UnexpectedReply,
    /// A reply code that makes no sense for the command (e.g. 354 to RCPT).
    #[error("unexpected reply code")]
    UnexpectedCode,
    /// Bytes after the 220 to STARTTLS (RFC 3207 §4.2 injection).
    #[error("data after STARTTLS reply")]
    StartTlsInjection,
}

/// The fate of one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by the server (reply to the final dot or BDAT LAST).
    Delivered(Reply),
    /// Try again later.
    TempFail(Failure),
    /// Do not try again: bounce.
    PermFail(Failure),
}

/// Why the session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseCause {
    /// QUIT was answered.
    Quit,
    /// The server said `421` (or refused the greeting, EHLO and HELO).
    ServerClosed(Reply),
    /// The connection dropped.
    ConnectionLost,
    /// A timer fired.
    TimedOut(TimeoutClass),
    /// The server broke the protocol.
    Protocol(ProtocolFault),
    /// TLS was required but not offered or refused.
    TlsUnavailable,
}

/// What the driver must learn from the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// EHLO (or HELO) done, after TLS if any: transactions can flow.
    Ready,
    /// STARTTLS got `220`: write pending output, do the handshake, then
    /// call [`ClientSession::tls_established`].
    StartTls,
    /// One recipient's outcome; exactly one per recipient.
    Recipient {
        /// Envelope id.
        id: u64,
        /// Index in `Envelope::recipients`.
        index: usize,
        /// The outcome.
        outcome: Outcome,
    },
    /// Every recipient of this envelope has its outcome.
    TransactionDone {
        /// Envelope id.
        id: u64,
    },
    /// The session is over: close the connection after writing output.
    Closed(CloseCause),
}

/// Which RFC 5321 §4.5.3.2 timeout applies while waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimeoutClass {
    /// Waiting for the greeting (§4.5.3.2.1: 5 minutes).
    Greeting,
    /// EHLO, HELO, STARTTLS, RSET, NOOP, QUIT replies (5 minutes).
    Command,
    /// MAIL reply (§4.5.3.2.2: 5 minutes).
    Mail,
    /// RCPT reply (§4.5.3.2.3: 5 minutes).
    Rcpt,
    /// DATA's 354 (§4.5.3.2.4: 2 minutes).
    DataInit,
    /// Each write of body data (§4.5.3.2.5: 3 minutes); the driver's own.
    DataBlock,
    /// Reply to the final dot or BDAT LAST (§4.5.3.2.6: 10 minutes).
    FinalDot,
}

impl TimeoutClass {
    /// The RFC 5321 §4.5.3.2 minimum.
    pub fn rfc_default(self) -> Duration {
        let minutes = match self {
            Self::Greeting | Self::Command | Self::Mail | Self::Rcpt => 5,
            Self::DataInit => 2,
            Self::DataBlock => 3,
            Self::FinalDot => 10,
        };
        Duration::from_secs(minutes * 60)
    }
}

#[cfg(test)]
mod tests;
