//! The server side: a session state machine that turns received bytes into
//! [`Event`]s and writes replies in command order.
//!
//! # Driving a session
//! ```text
//! session.greeting(Reply::greeting(..));
//! loop {
//!     match session.feed(&buf[pos..end]) {        // all buffered input
//!         Step { consumed, event } => { pos += consumed; handle(event) }
//!     }
//!     // NeedInput: write session.write_output(..), compact buf, read more.
//!     // Blocked:   fill outstanding tokens with session.reply(..), write output.
//!     // Close:     write output, close.
//! }
//! ```
//! Events borrow the input, so the driver keeps unconsumed bytes and feeds
//! them again with the next read appended. The session leaves at most
//! [`ServerConfig::command_line_bytes_max`] bytes unconsumed, so a read
//! buffer of [`ServerConfig::input_bytes_min`] always makes progress.
//!
//! # Deferred, in-order replies
//! MAIL, RCPT, end of message and AUTH carry a [`ReplyToken`]: the
//! application answers with [`ServerSession::reply`] at once or later (a
//! `250` after end of data waits for the spool's group commit). Replies are
//! released strictly in command order up to the first unanswered token,
//! while the session keeps parsing the next pipelined commands. At most
//! [`ServerConfig::replies_pending_max`] replies wait; beyond that, and when
//! a command depends on an unanswered one (RCPT on its MAIL, DATA on its
//! RCPTs, anything after AUTH), `feed` returns [`Event::Blocked`] without
//! consuming.
//!
//! The driver writes output whenever `feed` returns `NeedInput`, `Blocked`
//! or `Close` (RFC 2920 §3.2: replies of a pipelined group go out together,
//! and pending replies are flushed whenever the input runs dry).

mod config;
mod session;

pub use config::{BareLineEnding, ServerConfig};
pub use session::{ServerSession, Step};

use crate::address::Mailbox;
use crate::command::{CommandError, MailParams, RcptParams};
use crate::reply::{Reply, ReplyCode};

/// Identifies a reply the application owes; pass it to
/// [`ServerSession::reply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReplyToken {
    pub(crate) seq: u64,
}

/// What a [`ServerSession::feed`] step produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// All complete input was used: write output, then read more and feed
    /// the unconsumed bytes again with the new ones.
    NeedInput,
    /// Waiting for the application's replies (see the module docs): answer
    /// outstanding tokens, write output, then feed again.
    Blocked,
    /// The session is over: write the output, then close the connection.
    Close(CloseReason),
    /// `HELO`; the session answered `250`.
    Helo {
        /// The client's claimed name.
        domain: &'a str,
    },
    /// `EHLO`; the session answered with its extensions. Any transaction was
    /// reset (RFC 5321 §4.1.4).
    Ehlo {
        /// The client's claimed name.
        domain: &'a str,
    },
    /// A valid `MAIL FROM`: the application decides the reply; a 2xx opens
    /// the transaction.
    Mail {
        /// Answer with [`ServerSession::reply`].
        token: ReplyToken,
        /// The sender; `None` is the null sender `<>`.
        from: Option<Mailbox<'a>>,
        /// Parameters, each checked against what was advertised.
        params: MailParams<'a>,
    },
    /// A valid `RCPT TO` within the recipient limit: the application decides.
    Rcpt {
        /// Answer with [`ServerSession::reply`].
        token: ReplyToken,
        /// The recipient.
        to: Mailbox<'a>,
        /// Parameters.
        params: RcptParams<'a>,
    },
    /// `DATA` accepted (the session answered `354`); body chunks follow.
    DataStart,
    /// A `BDAT` chunk of a valid transaction starts; body chunks follow.
    Bdat {
        /// Octets in this chunk.
        size: u64,
        /// True for `LAST`.
        last: bool,
    },
    /// Message bytes, un-stuffed, borrowed from the input where possible.
    BodyChunk(&'a [u8]),
    /// The message ended cleanly: the application decides the reply (`250`
    /// only once the message is durable, RFC 5321 §6.1).
    MessageEnd {
        /// Answer with [`ServerSession::reply`].
        token: ReplyToken,
    },
    /// The message being received will be refused (too big, bad line
    /// endings, too long lines): drop what was received. The session keeps
    /// reading to the end of the data and answers itself. `error` is the
    /// first problem seen, which may depend on how the input was split; the
    /// final refusal ([`Event::Rejected`]) does not.
    MessageAborted {
        /// Why.
        error: ProtocolError,
    },
    /// `RSET`; the session answered `250` and reset the transaction.
    Rset,
    /// `NOOP`; answered `250`.
    Noop,
    /// `QUIT`; answered `221`. The next step is `Close`.
    Quit,
    /// `STARTTLS` accepted and `220` queued: write the output, perform the
    /// TLS handshake, then call [`ServerSession::tls_established`].
    StartTls,
    /// `AUTH`: the application runs the SASL exchange. A `334` reply makes
    /// the next line an [`Event::AuthResponse`] for the same exchange.
    Auth {
        /// Answer with [`ServerSession::reply`].
        token: ReplyToken,
        /// Mechanism name as sent.
        mechanism: &'a str,
        /// Initial response, if sent.
        initial_response: Option<&'a str>,
    },
    /// A line sent in answer to a `334` challenge.
    AuthResponse {
        /// Answer with [`ServerSession::reply`].
        token: ReplyToken,
        /// The line without CRLF (`*` cancels, RFC 4954 §4).
        response: &'a str,
    },
    /// `VRFY`; answered `252` (RFC 5321 §3.5.3).
    Vrfy {
        /// The argument.
        argument: &'a str,
    },
    /// `HELP`; answered `214`.
    Help,
    /// The session refused a command or message by itself (syntax, bad
    /// sequence, limits): for counters; nothing to do.
    Rejected {
        /// The reply code sent.
        code: ReplyCode,
        /// Why.
        error: ProtocolError,
    },
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The client sent QUIT.
    Quit,
    /// The greeting was a `421`.
    GreetingRefused,
    /// Too many errors; `421` sent.
    TooManyErrors,
    /// Data was pipelined after STARTTLS (RFC 3207 §4.2 injection).
    StartTlsInjection,
    /// The application ended it with [`ServerSession::shutdown`].
    Shutdown,
}

/// Every refusal the session makes on its own; each maps to one reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ProtocolError {
    /// The command line did not parse.
    #[error("{0}")]
    Command(CommandError),
    /// Command line over the limit (RFC 5321 §4.5.3.1.4).
    #[error("command line too long")]
    LineTooLong,
    /// Bare CR or LF in a command line (RFC 5321 §2.3.8).
    #[error("bare CR or LF in command")]
    BareLineEnding,
    /// Unknown verb.
    #[error("command unrecognized")]
    UnknownCommand,
    /// EXPN, or an extension not offered.
    #[error("command not implemented")]
    NotImplemented,
    /// A command before HELO/EHLO.
    #[error("HELO/EHLO first")]
    NoHelo,
    /// MAIL inside a transaction.
    #[error("nested MAIL")]
    NestedMail,
    /// RCPT, DATA or BDAT without MAIL.
    #[error("need MAIL first")]
    NoMail,
    /// DATA or BDAT without an accepted recipient (RFC 2920 §3.1).
    #[error("no valid recipients")]
    NoValidRecipients,
    /// Over the recipient limit (RFC 5321 §4.5.3.1.8).
    #[error("too many recipients")]
    TooManyRecipients,
    /// DATA after BDAT in one transaction (RFC 3030 §2).
    #[error("DATA and BDAT mixed")]
    DataAfterBdat,
    /// A BDAT chunk of a transaction whose earlier chunk failed.
    #[error("earlier chunk failed")]
    BdatAfterFailure,
    /// A parameter whose extension was not advertised (RFC 5321 §4.1.1.11).
    #[error("parameter not advertised")]
    ParameterNotOffered,
    /// Non-ASCII address without SMTPUTF8 (RFC 6531 §3.4).
    #[error("UTF-8 address without SMTPUTF8")]
    Utf8WithoutSmtputf8,
    /// Declared or actual message size over the limit (RFC 1870 §6).
    #[error("message too big")]
    MessageTooBig,
    /// Bare CR or LF in message content, refused by policy.
    #[error("bare CR or LF in message")]
    ContentBareLineEnding,
    /// Content line over the limit (RFC 5321 §4.5.3.1.6).
    #[error("message line too long")]
    ContentLineTooLong,
    /// STARTTLS when already under TLS.
    #[error("already under TLS")]
    AlreadyTls,
    /// STARTTLS or AUTH inside a transaction.
    #[error("not inside a transaction")]
    InTransaction,
    /// AUTH without TLS where TLS is required (RFC 4954 §4).
    #[error("encryption required")]
    EncryptionRequired,
    /// AUTH after a successful AUTH (RFC 4954 §4).
    #[error("already authenticated")]
    AlreadyAuthenticated,
    /// The greeting was `554`: only QUIT is allowed (RFC 5321 §3.1).
    #[error("no service")]
    NoService,
    /// Too many errors in one session.
    #[error("too many errors")]
    TooManyErrors,
    /// Data pipelined after STARTTLS.
    #[error("data after STARTTLS")]
    StartTlsInjection,
}

impl ProtocolError {
    /// The reply the session sends for this error.
    pub fn reply(self) -> Reply {
        match self {
            Self::Command(error) => error.reply(),
            // RFC 5321 §4.5.3.1.10 "500 Line too long".
            Self::LineTooLong => Reply::fixed(500, (5, 5, 2), "Line too long"),
            Self::BareLineEnding => Reply::fixed(500, (5, 5, 2), "Bare CR or LF in command"),
            Self::UnknownCommand => Reply::fixed(500, (5, 5, 1), "Command unrecognized"),
            Self::NotImplemented => Reply::fixed(502, (5, 5, 1), "Command not implemented"),
            Self::NoHelo => Reply::fixed(503, (5, 5, 1), "Send HELO/EHLO first"),
            Self::NestedMail => Reply::fixed(503, (5, 5, 1), "Nested MAIL command"),
            Self::NoMail => Reply::fixed(503, (5, 5, 1), "Need MAIL command"),
            Self::NoValidRecipients => Reply::fixed(554, (5, 5, 1), "No valid recipients"),
            // RFC 5321 §4.5.3.1.10: "452 Too many recipients".
            Self::TooManyRecipients => Reply::fixed(452, (4, 5, 3), "Too many recipients"),
            Self::DataAfterBdat => Reply::fixed(503, (5, 5, 1), "DATA after BDAT, send RSET"),
            Self::BdatAfterFailure => {
                Reply::fixed(503, (5, 5, 1), "Earlier chunk failed, send RSET")
            }
            Self::ParameterNotOffered => Reply::fixed(555, (5, 5, 4), "Parameter not supported"),
            Self::Utf8WithoutSmtputf8 => {
                Reply::fixed(553, (5, 6, 7), "Non-ASCII address needs SMTPUTF8")
            }
            Self::MessageTooBig => Reply::fixed(
                552,
                (5, 3, 4),
                "Message size exceeds fixed maximum message size",
            ),
            Self::ContentBareLineEnding => Reply::fixed(
                554,
                (5, 6, 0),
                "Message refused: bare CR or LF (RFC 5321 2.3.8)",
            ),
            Self::ContentLineTooLong => Reply::fixed(
                554,
                (5, 6, 0),
                "Message refused: line longer than 998 octets",
            ),
            Self::AlreadyTls => Reply::fixed(503, (5, 5, 1), "TLS already active"),
            Self::InTransaction => Reply::fixed(503, (5, 5, 1), "Not allowed inside a transaction"),
            Self::EncryptionRequired => Reply::fixed(
                538,
                (5, 7, 11),
                "Encryption required for requested authentication mechanism",
            ),
            Self::AlreadyAuthenticated => Reply::fixed(503, (5, 5, 1), "Already authenticated"),
            Self::NoService => Reply::fixed(503, (5, 5, 1), "No service, send QUIT"),
            Self::TooManyErrors => {
                Reply::fixed(421, (4, 7, 0), "Too many errors, closing connection")
            }
            Self::StartTlsInjection => {
                Reply::fixed(421, (4, 7, 0), "Data after STARTTLS, closing connection")
            }
        }
    }
}

impl Reply {
    /// The usual greeting: `220 <hostname> ESMTP` (RFC 5321 §4.3.1).
    pub fn greeting(hostname: &str) -> Reply {
        let hostname = crate::reply::sanitize_text(hostname);
        Reply::plain(ReplyCode::READY, format!("{hostname} ESMTP"))
    }
}

#[cfg(test)]
pub(crate) mod tests;
