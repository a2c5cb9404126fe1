//! Accounting record formats: one JSON object per line for every event,
//! and PowerMTA-compatible CSV for tools that read `acct-*.csv` files.
//!
//! Both formatters append to a caller-owned buffer; the CSV path allocates
//! nothing, the JSON path only what `serde_json` needs internally. Writing
//! the buffer to disk, batching and rotation belong to the engine.
//!
//! CSV `type` letters follow PowerMTA's accounting file:
//!
//! | event               | type | dsnAction |
//! |---------------------|------|-----------|
//! | `Reception`         | `r`  | (empty)   |
//! | `Delivery`          | `d`  | `relayed` |
//! | `TransientFailure`  | `t`  | `delayed` |
//! | `Bounce`            | `b`  | `failed`  |
//! | `Expiration`        | `b`  | `failed`  |
//! | `AdminBounce`       | `b`  | `failed`  |
//!
//! PowerMTA's `rb` / `rs` records describe bounces and status reports that
//! arrive later by mail (remote bounces); Sluice does not process inbound
//! bounce mail, so it never writes them. Expirations carry `bounceCat`
//! `message-expired`; admin bounces carry whatever category the operator
//! gave (usually `other`).

use std::borrow::Cow;
use std::fmt;
use std::io::Write as _;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sluice_smtp::{EnhancedCode, Reply};

use crate::category::{describe, Category};
use crate::time::write_accounting;

/// The PowerMTA accounting CSV header line (without line ending).
pub const CSV_HEADER: &str = "type,timeLogged,timeQueued,orig,rcpt,dsnAction,dsnStatus,dsnDiag,dsnMta,bounceCat,vmta,dlvSourceIp,dlvDestinationIp,dlvSize,jobId";

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The message was accepted and spooled (one record per recipient).
    Reception,
    /// The remote server accepted the recipient.
    Delivery,
    /// A temporary failure; the recipient stays queued.
    TransientFailure,
    /// A permanent failure.
    Bounce,
    /// The recipient outlived its queue lifetime.
    Expiration,
    /// An operator bounced the recipient.
    AdminBounce,
}

impl EventKind {
    /// PowerMTA's record type letter.
    pub const fn csv_type(self) -> &'static str {
        match self {
            EventKind::Reception => "r",
            EventKind::Delivery => "d",
            EventKind::TransientFailure => "t",
            EventKind::Bounce | EventKind::Expiration | EventKind::AdminBounce => "b",
        }
    }

    /// RFC 3464 action as PowerMTA logs it.
    pub const fn dsn_action(self) -> &'static str {
        match self {
            EventKind::Reception => "",
            EventKind::Delivery => "relayed",
            EventKind::TransientFailure => "delayed",
            EventKind::Bounce | EventKind::Expiration | EventKind::AdminBounce => "failed",
        }
    }

    /// The status reported when no reply carries an enhanced code.
    const fn default_status(self) -> EnhancedCode {
        let (class, subject, detail) = match self {
            EventKind::Reception | EventKind::Delivery => (2, 0, 0),
            EventKind::TransientFailure => (4, 0, 0),
            EventKind::Bounce | EventKind::AdminBounce => (5, 0, 0),
            // RFC 3463 §3.5 X.4.7 delivery time expired.
            EventKind::Expiration => (5, 4, 7),
        };
        EnhancedCode {
            class,
            subject,
            detail,
        }
    }
}

/// A reply as logged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseRecord<'a> {
    /// Reply code.
    pub code: u16,
    /// Enhanced status code, as `"5.1.1"`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_enhanced",
        deserialize_with = "de_enhanced"
    )]
    pub enhanced: Option<EnhancedCode>,
    /// Text; lines of a multi-line reply separated by `\n`.
    #[serde(borrow)]
    pub text: Cow<'a, str>,
}

impl<'a> From<&'a Reply> for ResponseRecord<'a> {
    fn from(reply: &'a Reply) -> Self {
        Self {
            code: reply.code.value(),
            enhanced: reply.enhanced,
            text: Cow::Borrowed(&reply.text),
        }
    }
}

fn ser_enhanced<S: Serializer>(code: &Option<EnhancedCode>, s: S) -> Result<S::Ok, S::Error> {
    match code {
        Some(c) => s.collect_str(c),
        None => s.serialize_none(),
    }
}

fn de_enhanced<'de, D: Deserializer<'de>>(d: D) -> Result<Option<EnhancedCode>, D::Error> {
    let text: Option<Cow<'de, str>> = Option::deserialize(d)?;
    match text {
        None => Ok(None),
        Some(t) => match EnhancedCode::parse_prefix(t.as_bytes()) {
            Some((code, used)) if used == t.len() => Ok(Some(code)),
            _ => Err(serde::de::Error::custom(format!(
                "invalid enhanced status code {t:?}"
            ))),
        },
    }
}

/// TLS parameters of the connection that carried the event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsRecord<'a> {
    /// E.g. `TLSv1.3`.
    #[serde(borrow)]
    pub version: Cow<'a, str>,
    /// E.g. `TLS13_AES_256_GCM_SHA384`.
    #[serde(borrow)]
    pub cipher: Cow<'a, str>,
    /// Whether the peer certificate was verified (MTA-STS, DANE or
    /// configured policy), not merely encrypted.
    pub verified: bool,
}

/// One accounting event for one recipient.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record<'a> {
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// Message id (spool id).
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    /// Envelope sender; empty for `<>`.
    #[serde(borrow)]
    pub sender: Cow<'a, str>,
    /// Envelope recipient.
    #[serde(borrow)]
    pub recipient: Cow<'a, str>,
    /// The queue (usually the destination domain).
    #[serde(borrow)]
    pub queue: Cow<'a, str>,
    /// The shaping site or provider group, e.g. `gmail`.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub site: Option<Cow<'a, str>>,
    /// The sending source (PowerMTA's virtual MTA).
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub source: Option<Cow<'a, str>>,
    /// Message size in bytes.
    pub size_bytes: u64,
    /// The reply that decided the event.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub response: Option<ResponseRecord<'a>>,
    /// The remote MTA's host name.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub peer_host: Option<Cow<'a, str>>,
    /// The remote address (destination IP, or the client for receptions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_addr: Option<IpAddr>,
    /// Our address on that connection (source IP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_addr: Option<IpAddr>,
    /// When the message was received, ms since the Unix epoch.
    pub created_unix_ms: u64,
    /// When this event happened, ms since the Unix epoch.
    pub event_unix_ms: u64,
    /// Delivery attempts so far, this one included.
    pub attempts: u32,
    /// Set on bounces, expirations and transient failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounce_category: Option<Category>,
    /// TLS details, when the connection used TLS.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsRecord<'a>>,
    /// Tenant.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<Cow<'a, str>>,
    /// Campaign (PowerMTA's `jobId`).
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<Cow<'a, str>>,
}

/// A record that could not be formatted.
#[derive(Debug, thiserror::Error)]
#[error("accounting record: {0}")]
pub struct FormatError(#[from] serde_json::Error);

impl Record<'_> {
    /// Appends the record as one JSON line (object + `\n`) to `out`. On
    /// error `out` is left as it was.
    pub fn write_json_line(&self, out: &mut Vec<u8>) -> Result<(), FormatError> {
        let start = out.len();
        if let Err(e) = serde_json::to_writer(&mut *out, self) {
            out.truncate(start);
            return Err(e.into());
        }
        out.push(b'\n');
        Ok(())
    }

    /// Appends the record as one PowerMTA CSV line (CRLF-terminated, RFC
    /// 4180) to `out`. Allocates nothing.
    pub fn write_csv_line(&self, out: &mut Vec<u8>) {
        field(out, &[self.kind.csv_type()]);
        out.push(b',');
        write_accounting(self.event_unix_ms, out);
        out.push(b',');
        write_accounting(self.created_unix_ms, out);
        out.push(b',');
        field(out, &[&self.sender]);
        out.push(b',');
        field(out, &[&self.recipient]);
        out.push(b',');
        field(out, &[self.kind.dsn_action()]);
        out.push(b',');
        let status = self
            .response
            .as_ref()
            .and_then(|r| r.enhanced)
            .unwrap_or(self.kind.default_status());
        // `5.1.1 (bad destination mailbox address)`, as PowerMTA writes it;
        // some descriptions hold commas, so it goes through `field`.
        let code = DisplayBuf::new(format_args!("{status}"));
        field(out, &[&code, " (", status_description(status), ")"]);
        out.push(b',');
        if let Some(r) = &self.response {
            write_diag(out, r);
        }
        out.push(b',');
        match (&self.peer_host, self.peer_addr) {
            (Some(host), Some(addr)) => {
                field(out, &[host.as_ref(), " (", &DisplayBuf::ip(addr), ")"])
            }
            (Some(host), None) => field(out, &[host.as_ref()]),
            (None, Some(addr)) => {
                let _ = write!(out, "{addr}");
            }
            (None, None) => {}
        }
        out.push(b',');
        if let Some(c) = self.bounce_category {
            out.extend_from_slice(c.name().as_bytes());
        }
        out.push(b',');
        field(out, &[self.source.as_deref().unwrap_or("")]);
        out.push(b',');
        if let Some(a) = self.local_addr {
            let _ = write!(out, "{a}");
        }
        out.push(b',');
        if let Some(a) = self.peer_addr {
            let _ = write!(out, "{a}");
        }
        out.push(b',');
        let _ = write!(out, "{}", self.size_bytes);
        out.push(b',');
        field(out, &[self.campaign.as_deref().unwrap_or("")]);
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends the CSV header line (CRLF-terminated).
pub fn write_csv_header(out: &mut Vec<u8>) {
    out.extend_from_slice(CSV_HEADER.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn status_description(status: EnhancedCode) -> &'static str {
    if status.subject == 0 && status.detail == 0 {
        // RFC 3463 §3.1 "Other undefined status"; PowerMTA says "success"
        // for 2.0.0.
        return if status.class == 2 {
            "success"
        } else {
            "other undefined status"
        };
    }
    describe(status).unwrap_or("other undefined status")
}

/// `smtp;550 5.1.1 text` with the reply's lines joined by spaces.
fn write_diag(out: &mut Vec<u8>, r: &ResponseRecord<'_>) {
    let needs_quotes = needs_quotes(r.text.split('\n')) || r.text.ends_with(' ');
    if needs_quotes {
        out.push(b'"');
    }
    let _ = write!(out, "smtp;{}", r.code);
    if let Some(e) = r.enhanced {
        let _ = write!(out, " {e}");
    }
    for line in r.text.split('\n').filter(|l| !l.is_empty()) {
        out.push(b' ');
        escape(out, line);
    }
    if needs_quotes {
        out.push(b'"');
    }
}

/// Writes the concatenation of `pieces` as one CSV field, quoted when it
/// contains a comma, quote, CR or LF, or starts or ends with a space
/// (RFC 4180 §2 rules 5 and 6).
fn field(out: &mut Vec<u8>, pieces: &[&str]) {
    let quote = needs_quotes(pieces.iter().copied())
        || pieces
            .iter()
            .find(|p| !p.is_empty())
            .is_some_and(|p| p.starts_with(' '))
        || pieces
            .iter()
            .rev()
            .find(|p| !p.is_empty())
            .is_some_and(|p| p.ends_with(' '));
    if quote {
        out.push(b'"');
    }
    for p in pieces {
        if quote {
            escape(out, p);
        } else {
            out.extend_from_slice(p.as_bytes());
        }
    }
    if quote {
        out.push(b'"');
    }
}

fn needs_quotes<'s>(mut pieces: impl Iterator<Item = &'s str>) -> bool {
    pieces.any(|p| p.bytes().any(|b| matches!(b, b',' | b'"' | b'\r' | b'\n')))
}

/// Doubles quotes (RFC 4180 §2 rule 7).
fn escape(out: &mut Vec<u8>, text: &str) {
    for &b in text.as_bytes() {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
}

/// A stack buffer holding the text form of an IP address, so `dsnMta` can
/// be written without allocating.
struct DisplayBuf {
    bytes: [u8; 48],
    len: usize,
}

impl DisplayBuf {
    /// Formats `args`; text beyond the buffer is cut (never reached for
    /// the IP addresses and status codes written here).
    fn new(args: fmt::Arguments<'_>) -> Self {
        let mut buf = Self {
            bytes: [0; 48],
            len: 0,
        };
        let _ = fmt::write(&mut buf, args);
        buf
    }

    fn ip(addr: IpAddr) -> Self {
        Self::new(format_args!("{addr}"))
    }
}

impl fmt::Write for DisplayBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        if end > self.bytes.len() {
            return Err(fmt::Error);
        }
        self.bytes[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl std::ops::Deref for DisplayBuf {
    type Target = str;

    fn deref(&self) -> &str {
        // Only whole `&str`s are ever copied in, so the prefix is UTF-8;
        // fall back to empty rather than panic.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }
}

#[cfg(test)]
mod tests;
