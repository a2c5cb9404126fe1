//! Server session configuration.

use crate::extensions::Extensions;
use crate::limits::{COMMAND_LINE_BYTES_MAX, RECIPIENTS_MIN, TEXT_LINE_BYTES_MAX};

/// What to do with a CR or LF that is not part of a CRLF pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BareLineEnding {
    /// Refuse: a command line ending in bare LF gets `500 5.5.2`; a message
    /// containing bare CR or LF gets `554 5.6.0` after its end marker
    /// (RFC 5321 §2.3.8; the SMTP smuggling defence).
    #[default]
    Reject,
    /// Accept a bare LF as the end of a command line and pass bare CR/LF in
    /// content through as data. Even then only CRLF.CRLF ends DATA.
    Tolerate,
}

/// Limits and advertised extensions for a [`super::ServerSession`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Our name in the greeting and the EHLO reply.
    pub hostname: String,
    /// Extensions advertised in the EHLO reply. STARTTLS is hidden once TLS
    /// is active; AUTH is hidden before TLS when `auth_requires_tls`.
    pub extensions: Extensions,
    /// SASL mechanisms listed after `AUTH`, space separated.
    pub auth_mechanisms: String,
    /// Refuse AUTH before STARTTLS (`538 5.7.11`).
    pub auth_requires_tls: bool,
    /// Largest message accepted, advertised as `SIZE n` (RFC 1870).
    pub message_bytes_max: u64,
    /// Recipients per transaction; one more gets `452 4.5.3`
    /// (RFC 5321 §4.5.3.1.8: at least 100).
    pub recipients_max: usize,
    /// Policy for bare CR/LF.
    pub bare_line_ending: BareLineEnding,
    /// Longest command line including CRLF (RFC 5321 §4.5.3.1.4: 512; the
    /// parameters of SIZE, DSN and AUTH= may need more, RFC 3461 §5).
    pub command_line_bytes_max: usize,
    /// Longest content line including CRLF (§4.5.3.1.6: 1000);
    /// `usize::MAX` disables the check.
    pub text_line_bytes_max: usize,
    /// Replies that may wait in order (unanswered tokens included) before
    /// the session stops consuming input.
    pub replies_pending_max: usize,
    /// Error replies after which the session sends `421` and closes.
    pub errors_max: u32,
}

impl ServerConfig {
    /// Defaults: every extension but AUTH and BINARYMIME, 32 MiB messages,
    /// 100 recipients, RFC line limits, bare line endings rejected.
    pub fn new(hostname: impl Into<String>) -> Self {
        Self {
            hostname: hostname.into(),
            extensions: Extensions::all() - Extensions::AUTH - Extensions::BINARY_MIME,
            auth_mechanisms: String::from("PLAIN LOGIN"),
            auth_requires_tls: true,
            message_bytes_max: 32 << 20,
            recipients_max: RECIPIENTS_MIN,
            bare_line_ending: BareLineEnding::Reject,
            // RFC 3461 §5 asks servers offering DSN to take longer lines.
            command_line_bytes_max: COMMAND_LINE_BYTES_MAX + 512,
            text_line_bytes_max: TEXT_LINE_BYTES_MAX,
            replies_pending_max: 256,
            errors_max: 20,
        }
    }

    /// The smallest read buffer with which a session always makes progress:
    /// a whole command line fits.
    pub fn input_bytes_min(&self) -> usize {
        self.command_line_bytes_max
    }
}
