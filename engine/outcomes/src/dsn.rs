//! Delivery status notifications: RFC 3464 `message/delivery-status`
//! reports inside an RFC 6522 `multipart/report`, honouring the RFC 3461
//! parameters NOTIFY, RET, ENVID and ORCPT.
//!
//! The output is 7-bit, every line ends in CRLF and is at most 998 octets
//! (RFC 5322 §2.1.1), and nothing a peer or the original sender wrote can
//! start a new header line: texts are stripped of control characters,
//! non-ASCII becomes `?` (or RFC 6533 `\x{..}` escapes in addresses) and
//! long fields are folded.

use std::time::SystemTime;

use sluice_smtp::command::{Notify, Ret};
use sluice_smtp::{EnhancedCode, Reply};

use crate::time::write_rfc5322;

/// Longest line we write before folding (RFC 5322 §2.1.1 "SHOULD be no
/// more than 78 characters").
const FOLD_COLUMN: usize = 78;
/// Hard limit per line, CRLF excluded (RFC 5322 §2.1.1 "MUST be no more
/// than 998 characters").
const LINE_BYTES_MAX: usize = 998;
/// A single word longer than this is split so a folded line stays legal.
const WORD_BYTES_MAX: usize = 900;
/// Echoed diagnostic text is cut at this length: a hostile server cannot
/// make our bounce arbitrarily large.
const DIAGNOSTIC_BYTES_MAX: usize = 4096;

const _: () = assert!(FOLD_COLUMN < WORD_BYTES_MAX);
// A field name (≤ 30 bytes) and one word must fit on a line.
const _: () = assert!(WORD_BYTES_MAX + 32 < LINE_BYTES_MAX);

/// RFC 3464 §2.3.3 action values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// The message could not be delivered and will not be retried.
    Failed,
    /// Not delivered yet; retries continue.
    Delayed,
    /// Delivered to the recipient's mailbox.
    Delivered,
    /// Handed to a system that does not return DSNs.
    Relayed,
    /// Delivered and forwarded to several addresses.
    Expanded,
}

impl Action {
    /// The field value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
            Action::Expanded => "expanded",
        }
    }

    /// Whether the recipient asked for this kind (RFC 3461 §4.1). Without
    /// NOTIFY we report failures and delays, one of the two defaults the
    /// RFC allows; success is only reported when asked for.
    fn requested(self, notify: Option<Notify>) -> bool {
        let notify = notify.unwrap_or(Notify::FAILURE | Notify::DELAY);
        match self {
            Action::Failed => notify.contains(Notify::FAILURE),
            Action::Delayed => notify.contains(Notify::DELAY),
            Action::Delivered | Action::Relayed | Action::Expanded => {
                notify.contains(Notify::SUCCESS)
            }
        }
    }
}

/// `ORCPT=` as stored: address type and the xtext-decoded address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OriginalRecipient<'a> {
    /// Usually `rfc822`.
    pub addr_type: &'a str,
    /// The address.
    pub address: &'a str,
}

/// One recipient's outcome to report.
#[derive(Clone, Copy, Debug)]
pub struct DsnRecipient<'a> {
    /// The address we tried to deliver to (the RCPT TO address).
    pub final_recipient: &'a str,
    /// `ORCPT=`, when the injector gave one.
    pub original_recipient: Option<OriginalRecipient<'a>>,
    /// `NOTIFY=`; `None` when absent, `Some(empty)` for NEVER.
    pub notify: Option<Notify>,
    /// What happened.
    pub action: Action,
    /// RFC 3463 status; its class should agree with `action`.
    pub status: EnhancedCode,
    /// The remote server's last reply, when there was one.
    pub diagnostic: Option<&'a Reply>,
    /// The remote MTA's host name (`Remote-MTA: dns; ...`).
    pub remote_mta: Option<&'a str>,
    /// When delivery was last attempted.
    pub last_attempt: Option<SystemTime>,
    /// For `Delayed`: when we give up.
    pub will_retry_until: Option<SystemTime>,
}

/// Everything needed to write one DSN. Nothing here is read from a clock.
#[derive(Clone, Copy, Debug)]
pub struct DsnRequest<'a> {
    /// Our host name, for `Reporting-MTA: dns; ...` and the text.
    pub reporting_mta: &'a str,
    /// The bounce's `From:` address, e.g. `MAILER-DAEMON@mta.example`.
    pub from: &'a str,
    /// The original reverse-path, without angle brackets; empty for `<>`.
    pub original_sender: &'a str,
    /// `ENVID=`, xtext-decoded.
    pub envid: Option<&'a str>,
    /// `RET=`; `None` returns headers only.
    pub ret: Option<Ret>,
    /// When the original message was received.
    pub arrival_date: SystemTime,
    /// The bounce's `Date:`.
    pub date: SystemTime,
    /// The bounce's `Message-ID`, with or without angle brackets.
    pub message_id: &'a str,
    /// The recipients to consider; those whose NOTIFY excludes their
    /// action are left out.
    pub recipients: &'a [DsnRecipient<'a>],
    /// The original message (headers and body) as spooled.
    pub original: &'a [u8],
}

/// A generated DSN. Its envelope sender is always `<>` (RFC 3461 §6.2,
/// RFC 5321 §4.5.5) so that it can never cause another bounce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dsn {
    /// The envelope recipient: the original sender.
    pub recipient: String,
    /// The message, CRLF line endings, 7-bit.
    pub message: Vec<u8>,
    /// How many recipients it reports on.
    pub reported: usize,
}

/// Builds the DSN for `req`, or `None` when none may be sent: the original
/// sender is `<>` (RFC 3461 §6.2 and RELIABILITY.md: never bounce a
/// bounce), or no recipient asked for a report of what happened to it.
pub fn build(req: &DsnRequest<'_>) -> Option<Dsn> {
    let sender = req.original_sender.trim();
    if sender.is_empty() || sender == "<>" {
        return None;
    }
    let reported: Vec<&DsnRecipient<'_>> = req
        .recipients
        .iter()
        .filter(|r| r.action.requested(r.notify))
        .collect();
    if reported.is_empty() {
        return None;
    }
    let mut message = Vec::with_capacity(2048 + req.original.len().min(64 << 10));
    write_message(req, sender, &reported, &mut message);
    Some(Dsn {
        recipient: sender.to_owned(),
        message,
        reported: reported.len(),
    })
}

fn write_message(
    req: &DsnRequest<'_>,
    sender: &str,
    reported: &[&DsnRecipient<'_>],
    out: &mut Vec<u8>,
) {
    let failed = reported.iter().any(|r| r.action == Action::Failed);
    let delayed = reported.iter().any(|r| r.action == Action::Delayed);
    let (header_part, returned) = returned_part(req);

    let mut text = Vec::with_capacity(1024);
    write_text_part(req, reported, returned, &mut text);
    let mut status = Vec::with_capacity(512);
    write_status_part(req, reported, &mut status);

    let boundary = choose_boundary(req.message_id, &[&text, &status, &header_part]);

    field(
        out,
        "From",
        &format!("Mail Delivery System <{}>", ascii_address(req.from)),
    );
    field(out, "To", &format!("<{}>", ascii_address(sender)));
    let subject = if failed {
        "Undelivered Mail Returned to Sender"
    } else if delayed {
        "Delayed Mail (still being retried)"
    } else {
        "Successful Mail Delivery Report"
    };
    field(out, "Subject", subject);
    let mut date = Vec::with_capacity(32);
    write_rfc5322(req.date, &mut date);
    field(out, "Date", &String::from_utf8_lossy(&date));
    let id = ascii_text(
        req.message_id
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>'),
    );
    field(out, "Message-ID", &format!("<{}>", id.replace(' ', "")));
    // RFC 3834 §5: machine-generated, so auto-responders stay quiet.
    field(out, "Auto-Submitted", "auto-replied");
    field(out, "MIME-Version", "1.0");
    field(
        out,
        "Content-Type",
        &format!("multipart/report; report-type=delivery-status; boundary=\"{boundary}\""),
    );
    field(out, "Content-Transfer-Encoding", "7bit");
    out.extend_from_slice(b"\r\nThis is a MIME-encapsulated message.\r\n");

    part_header(out, &boundary);
    field(out, "Content-Type", "text/plain; charset=us-ascii");
    field(out, "Content-Description", "Notification");
    field(out, "Content-Transfer-Encoding", "7bit");
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&text);

    part_header(out, &boundary);
    field(out, "Content-Type", "message/delivery-status");
    field(out, "Content-Description", "Delivery report");
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&status);

    part_header(out, &boundary);
    match returned {
        Returned::Full => {
            field(out, "Content-Type", "message/rfc822");
            field(out, "Content-Description", "Undelivered Message");
            field(out, "Content-Transfer-Encoding", "7bit");
        }
        Returned::Headers { quoted_printable } => {
            field(out, "Content-Type", "text/rfc822-headers; charset=us-ascii");
            field(out, "Content-Description", "Undelivered Message Headers");
            let cte = if quoted_printable {
                "quoted-printable"
            } else {
                "7bit"
            };
            field(out, "Content-Transfer-Encoding", cte);
        }
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&header_part);
    if !header_part.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n--");
    out.extend_from_slice(boundary.as_bytes());
    out.extend_from_slice(b"--\r\n");
}

fn part_header(out: &mut Vec<u8>, boundary: &str) {
    out.extend_from_slice(b"\r\n--");
    out.extend_from_slice(boundary.as_bytes());
    out.extend_from_slice(b"\r\n");
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Returned {
    Full,
    Headers { quoted_printable: bool },
}

/// The third part's body and how it is returned. RET=FULL returns the
/// whole message as `message/rfc822` only when it is already 7-bit with
/// CRLF lines of legal length, since `message/rfc822` may not be
/// re-encoded (RFC 2046 §5.2.1); otherwise, and for RET=HDRS, the headers
/// go back as `text/rfc822-headers` (RFC 6522 §4), quoted-printable when
/// they are not 7-bit clean.
fn returned_part(req: &DsnRequest<'_>) -> (Vec<u8>, Returned) {
    if req.ret == Some(Ret::Full) && is_7bit_clean(req.original) {
        return (req.original.to_vec(), Returned::Full);
    }
    let headers = header_block(req.original);
    if is_7bit_clean(headers) {
        (
            headers.to_vec(),
            Returned::Headers {
                quoted_printable: false,
            },
        )
    } else {
        let mut qp = Vec::with_capacity(headers.len() * 3 / 2);
        quoted_printable(headers, &mut qp);
        (
            qp,
            Returned::Headers {
                quoted_printable: true,
            },
        )
    }
}

/// The header section of a message: up to and including the line break
/// before the first empty line (RFC 5322 §2.1), or all of it.
fn header_block(message: &[u8]) -> &[u8] {
    let mut line_start = 0;
    while line_start < message.len() {
        let end = memchr_lf(&message[line_start..]).map(|i| line_start + i + 1);
        let Some(end) = end else { break };
        let line = &message[line_start..end];
        if line == b"\r\n" || line == b"\n" {
            return &message[..line_start];
        }
        line_start = end;
    }
    message
}

fn memchr_lf(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

/// 7-bit, no NUL, no bare CR or LF, lines at most 998 octets.
fn is_7bit_clean(bytes: &[u8]) -> bool {
    let mut line_len = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == 0 || b >= 0x80 || b == b'\n' {
            return false;
        }
        if b == b'\r' {
            if bytes.get(i + 1) != Some(&b'\n') {
                return false;
            }
            line_len = 0;
            i += 2;
            continue;
        }
        line_len += 1;
        if line_len > LINE_BYTES_MAX {
            return false;
        }
        i += 1;
    }
    true
}

/// RFC 2045 §6.7 quoted-printable; CRLF and bare LF are line breaks, a
/// bare CR is encoded, lines are soft-broken before 76 characters.
fn quoted_printable(bytes: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut col = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\n' || (b == b'\r' && bytes.get(i + 1) == Some(&b'\n')) {
            // Rule 3: whitespace before a hard break must be encoded.
            if matches!(out.last(), Some(b' ') | Some(b'\t')) && col > 0 {
                // Invariant: `last()` just returned Some.
                let ws = out.pop().expect("non-empty");
                out.extend_from_slice(&[
                    b'=',
                    HEX[usize::from(ws >> 4)],
                    HEX[usize::from(ws & 15)],
                ]);
            }
            out.extend_from_slice(b"\r\n");
            col = 0;
            i += if b == b'\r' { 2 } else { 1 };
            continue;
        }
        let literal = (b'!'..=b'~').contains(&b) && b != b'=' || b == b' ' || b == b'\t';
        let width = if literal { 1 } else { 3 };
        if col + width > 75 {
            out.extend_from_slice(b"=\r\n");
            col = 0;
        }
        if literal {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'=', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
        col += width;
        i += 1;
    }
}

fn write_text_part(
    req: &DsnRequest<'_>,
    reported: &[&DsnRecipient<'_>],
    returned: Returned,
    out: &mut Vec<u8>,
) {
    let host = ascii_text(req.reporting_mta);
    wrap(out, &format!("This is the mail system at host {host}."));
    out.extend_from_slice(b"\r\n");
    let failed = reported
        .iter()
        .filter(|r| r.action == Action::Failed)
        .count();
    let delayed = reported
        .iter()
        .filter(|r| r.action == Action::Delayed)
        .count();
    if failed > 0 {
        wrap(
            out,
            "Your message could not be delivered to one or more recipients. \
             It is attached below. The details for each recipient follow.",
        );
    } else if delayed > 0 {
        wrap(
            out,
            "Your message has not been delivered yet to one or more recipients. \
             The mail system will keep trying; you do not need to resend it.",
        );
    } else {
        wrap(
            out,
            "Your message was delivered to the recipients listed below.",
        );
    }
    for r in reported {
        out.extend_from_slice(b"\r\n");
        let mut line = format!(
            "<{}>: {} ({})",
            ascii_address(r.final_recipient),
            r.action.as_str(),
            r.status
        );
        if let Some(mta) = r.remote_mta {
            line.push_str(&format!(", remote host {}", ascii_text(mta)));
        }
        wrap(out, &line);
        if let Some(reply) = r.diagnostic {
            wrap(out, &format!("    said: {}", diagnostic_text(reply)));
        }
    }
    if returned != Returned::Full && req.ret == Some(Ret::Full) {
        out.extend_from_slice(b"\r\n");
        wrap(
            out,
            "The original message is not 7-bit clean, so only its headers are returned.",
        );
    }
}

fn write_status_part(req: &DsnRequest<'_>, reported: &[&DsnRecipient<'_>], out: &mut Vec<u8>) {
    // RFC 3464 §2.2: per-message fields.
    field(
        out,
        "Reporting-MTA",
        &format!("dns; {}", ascii_text(req.reporting_mta)),
    );
    if let Some(envid) = req.envid {
        // RFC 3464 §2.2.1; xtext keeps any unsafe byte 7-bit and reversible.
        let mut v = Vec::with_capacity(envid.len());
        sluice_smtp::xtext::encode(envid.as_bytes(), &mut v);
        field(out, "Original-Envelope-Id", &String::from_utf8_lossy(&v));
    }
    let mut date = Vec::with_capacity(32);
    write_rfc5322(req.arrival_date, &mut date);
    field(out, "Arrival-Date", &String::from_utf8_lossy(&date));
    // RFC 3464 §2.3: one block per recipient, each after an empty line.
    for r in reported {
        out.extend_from_slice(b"\r\n");
        field(
            out,
            "Final-Recipient",
            &typed_address("rfc822", r.final_recipient),
        );
        if let Some(o) = r.original_recipient {
            let kind = ascii_text(o.addr_type).replace([' ', ';'], "");
            let kind = if kind.is_empty() {
                "rfc822".to_owned()
            } else {
                kind
            };
            field(out, "Original-Recipient", &typed_address(&kind, o.address));
        }
        field(out, "Action", r.action.as_str());
        field(out, "Status", &r.status.to_string());
        if let Some(mta) = r.remote_mta {
            field(out, "Remote-MTA", &format!("dns; {}", ascii_text(mta)));
        }
        if let Some(reply) = r.diagnostic {
            field(
                out,
                "Diagnostic-Code",
                &format!("smtp; {}", diagnostic_text(reply)),
            );
        }
        if let Some(at) = r.last_attempt {
            date.clear();
            write_rfc5322(at, &mut date);
            field(out, "Last-Attempt-Date", &String::from_utf8_lossy(&date));
        }
        if let (Action::Delayed, Some(until)) = (r.action, r.will_retry_until) {
            date.clear();
            write_rfc5322(until, &mut date);
            field(out, "Will-Retry-Until", &String::from_utf8_lossy(&date));
        }
    }
}

/// `type; address`, using RFC 6533 §3 `utf-8` with `\x{..}` escapes when
/// the address is not printable ASCII.
fn typed_address(kind: &str, address: &str) -> String {
    let address = address.trim().trim_start_matches('<').trim_end_matches('>');
    if address
        .bytes()
        .all(|b| (b'!'..=b'~').contains(&b) && b != b'\\')
    {
        return format!("{kind}; {address}");
    }
    let mut v = String::with_capacity(address.len() + 16);
    for c in address.chars() {
        if c.is_ascii_graphic() && c != '\\' {
            v.push(c);
        } else {
            v.push_str(&format!("\\x{{{:X}}}", u32::from(c)));
        }
    }
    let kind = if kind.eq_ignore_ascii_case("rfc822") {
        "utf-8"
    } else {
        kind
    };
    format!("{kind}; {v}")
}

/// `CODE X.Y.Z text` with the reply's lines joined, sanitised and capped.
fn diagnostic_text(reply: &Reply) -> String {
    let mut s = String::with_capacity(reply.text.len() + 16);
    s.push_str(&reply.code.to_string());
    if let Some(e) = reply.enhanced {
        s.push(' ');
        s.push_str(&e.to_string());
    }
    for line in reply.lines() {
        s.push(' ');
        s.push_str(line);
    }
    let mut clean = ascii_text(&s);
    if clean.len() > DIAGNOSTIC_BYTES_MAX {
        // ascii_text returns ASCII only, so any index is a char boundary.
        clean.truncate(DIAGNOSTIC_BYTES_MAX);
        clean.push_str("...");
    }
    clean
}

/// Printable ASCII only: controls (CR, LF, NUL, ...) become spaces,
/// non-ASCII becomes `?`, runs of spaces collapse.
fn ascii_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let c = match c {
            ' '..='~' => c,
            c if c.is_control() => ' ',
            _ => '?',
        };
        if c == ' ' && (out.is_empty() || out.ends_with(' ')) {
            continue;
        }
        out.push(c);
    }
    while out.ends_with(' ') {
        out.pop();
    }
    out
}

/// An address for a header: printable ASCII without spaces or brackets.
fn ascii_address(address: &str) -> String {
    ascii_text(address.trim().trim_start_matches('<').trim_end_matches('>'))
        .chars()
        .filter(|&c| c != ' ' && c != '<' && c != '>')
        .collect()
}

/// Writes `Name: value` folded at spaces before column 78 (RFC 5322
/// §2.2.3); a word too long for one line is split so no line exceeds 998.
fn field(out: &mut Vec<u8>, name: &str, value: &str) {
    debug_assert!(value.bytes().all(|b| (b' '..=b'~').contains(&b)));
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b":");
    let mut col = name.len() + 1;
    for word in value.split(' ').filter(|w| !w.is_empty()) {
        let mut word = word;
        loop {
            let take = word.len().min(WORD_BYTES_MAX);
            let (piece, rest) = word.split_at(take);
            if col + 1 + piece.len() > FOLD_COLUMN && col > name.len() + 1 {
                out.extend_from_slice(b"\r\n");
                col = 0;
            }
            out.push(b' ');
            out.extend_from_slice(piece.as_bytes());
            col += 1 + piece.len();
            if rest.is_empty() {
                break;
            }
            word = rest;
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes `text` as body lines wrapped at column 78.
fn wrap(out: &mut Vec<u8>, text: &str) {
    let mut col = 0;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        for piece in word.as_bytes().chunks(WORD_BYTES_MAX) {
            if col > 0 && col + 1 + piece.len() > FOLD_COLUMN {
                out.extend_from_slice(b"\r\n");
                col = 0;
            }
            if col > 0 {
                out.push(b' ');
                col += 1;
            }
            out.extend_from_slice(piece);
            col += piece.len();
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// A boundary that occurs in none of the parts (RFC 2046 §5.1.1). `=_`
/// cannot occur in quoted-printable text, and the hash of the Message-ID
/// makes a collision with the returned message unlikely; the counter
/// settles the rest.
fn choose_boundary(message_id: &str, parts: &[&[u8]]) -> String {
    // FNV-1a, 64 bit.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in message_id.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let mut n: u32 = 0;
    loop {
        let candidate = format!("=_sluice_{hash:016x}_{n}");
        let clash = parts.iter().any(|p| {
            p.windows(candidate.len())
                .any(|w| w == candidate.as_bytes())
        });
        if !clash {
            return candidate;
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests;
