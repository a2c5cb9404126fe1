//! A bounded, streaming scan of a message's header section.
//!
//! The sink never holds a message; it sees the body as a sequence of
//! un-stuffed chunks. [`HeaderScan`] looks at those chunks until the blank
//! line that ends the header section (RFC 5322 §2.1) or until
//! [`HEADER_BYTES_MAX`] bytes, whichever comes first, and keeps only:
//! - the value of `X-Sluice-Injected: <unix epoch nanoseconds>`, the time the
//!   sender injected the message, for latency measurement;
//! - the message's id: `X-Sluice-Id` when present, else `Message-ID`, for
//!   `--record-ids`.
//!
//! Its buffers are allocated once per connection and reused for every message.

/// Name of the injection-time header (value: decimal unix epoch nanoseconds).
pub const INJECTED_HEADER: &str = "X-Sluice-Injected";
/// Name of the explicit id header preferred over `Message-ID`.
pub const ID_HEADER: &str = "X-Sluice-Id";

/// Longest header line looked at (RFC 5322 §2.1.1: 998 characters + CRLF).
pub const LINE_BYTES_MAX: usize = 1000;
/// Longest id kept; longer ids are cut.
pub const ID_BYTES_MAX: usize = 998;
/// The scan stops after this many bytes even without a blank line.
pub const HEADER_BYTES_MAX: usize = 64 * 1024;

const _: () = assert!(LINE_BYTES_MAX <= HEADER_BYTES_MAX);
const _: () = assert!(ID_BYTES_MAX < LINE_BYTES_MAX);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdSource {
    None,
    MessageId,
    SluiceId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LastField {
    Other,
    MessageId,
    SluiceId,
}

/// Streaming header scanner; see the module docs.
#[derive(Debug)]
pub struct HeaderScan {
    line: Vec<u8>,
    line_truncated: bool,
    seen_bytes: usize,
    done: bool,
    injected_ns: Option<u64>,
    id: Vec<u8>,
    id_source: IdSource,
    last: LastField,
    want_id: bool,
}

impl Default for HeaderScan {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderScan {
    /// Allocates the line and id buffers once.
    pub fn new() -> Self {
        Self::with_ids(true)
    }

    /// A scanner that looks for the id headers only when `want_id`; without
    /// them it stops right after `X-Sluice-Injected`.
    pub fn with_ids(want_id: bool) -> Self {
        HeaderScan {
            want_id,
            line: Vec::with_capacity(LINE_BYTES_MAX),
            line_truncated: false,
            seen_bytes: 0,
            done: false,
            injected_ns: None,
            id: Vec::with_capacity(ID_BYTES_MAX),
            id_source: IdSource::None,
            last: LastField::Other,
        }
    }

    /// Forgets the previous message, keeping the buffers.
    pub fn reset(&mut self) {
        self.line.clear();
        self.line_truncated = false;
        self.seen_bytes = 0;
        self.done = false;
        self.injected_ns = None;
        self.id.clear();
        self.id_source = IdSource::None;
        self.last = LastField::Other;
    }

    /// Whether the header section has ended (or the byte budget ran out).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The `X-Sluice-Injected` value, when one was seen and parsed.
    pub fn injected_ns(&self) -> Option<u64> {
        self.injected_ns
    }

    /// The message's id (`X-Sluice-Id`, else `Message-ID`), when seen.
    pub fn id(&self) -> Option<&[u8]> {
        (self.id_source != IdSource::None && !self.id.is_empty()).then_some(&self.id[..])
    }

    /// Feeds the next un-stuffed body bytes.
    pub fn feed(&mut self, mut chunk: &[u8]) {
        while !self.done && !chunk.is_empty() {
            let budget = HEADER_BYTES_MAX - self.seen_bytes;
            let (part, ends_line) = match memchr::memchr(b'\n', chunk) {
                Some(i) if i < budget => (&chunk[..=i], true),
                _ => (&chunk[..chunk.len().min(budget)], false),
            };
            self.seen_bytes += part.len();
            chunk = &chunk[part.len()..];
            let room = LINE_BYTES_MAX - self.line.len();
            if part.len() > room {
                self.line.extend_from_slice(&part[..room]);
                self.line_truncated = true;
            } else {
                self.line.extend_from_slice(part);
            }
            debug_assert!(self.line.len() <= LINE_BYTES_MAX);
            if ends_line {
                self.finish_line();
            }
            if self.seen_bytes >= HEADER_BYTES_MAX {
                self.done = true;
            }
        }
    }

    /// Ends the scan when the body ends (a header section without a body).
    pub fn finish(&mut self) {
        if !self.done && !self.line.is_empty() && !self.line_truncated {
            self.finish_line();
        }
        self.done = true;
    }

    fn finish_line(&mut self) {
        let mut line = std::mem::take(&mut self.line);
        let truncated = std::mem::replace(&mut self.line_truncated, false);
        let mut text: &[u8] = &line;
        while let [rest @ .., b'\r' | b'\n'] = text {
            text = rest;
        }
        if text.is_empty() {
            self.done = true;
        } else if !truncated {
            self.header_line(text);
        } else {
            self.last = LastField::Other;
        }
        line.clear();
        self.line = line;
    }

    fn header_line(&mut self, text: &[u8]) {
        let folded = matches!(text[0], b' ' | b'\t');
        // Everything wanted is known and the last field is complete (this
        // line does not continue it): stop looking.
        let complete =
            self.injected_ns.is_some() && (!self.want_id || self.id_source == IdSource::SluiceId);
        if complete && !folded {
            self.done = true;
            return;
        }
        if folded {
            // RFC 5322 §2.2.3: folded continuation of the previous field.
            let keep = match self.last {
                LastField::SluiceId => self.id_source == IdSource::SluiceId,
                LastField::MessageId => self.id_source == IdSource::MessageId,
                LastField::Other => false,
            };
            if keep {
                self.push_id(trim(text));
            }
            return;
        }
        // Every name looked for starts with `X` or `M`.
        if !matches!(text[0], b'x' | b'X' | b'm' | b'M') {
            self.last = LastField::Other;
            return;
        }
        let Some(colon) = memchr::memchr(b':', text) else {
            self.last = LastField::Other;
            return;
        };
        let name = trim(&text[..colon]);
        let value = trim(&text[colon + 1..]);
        self.last = LastField::Other;
        if name.eq_ignore_ascii_case(INJECTED_HEADER.as_bytes()) {
            self.injected_ns = parse_u64(value);
        } else if !self.want_id {
        } else if name.eq_ignore_ascii_case(ID_HEADER.as_bytes()) {
            self.last = LastField::SluiceId;
            if self.id_source != IdSource::SluiceId {
                self.id.clear();
                self.id_source = IdSource::SluiceId;
                self.push_id(value);
            }
        } else if name.eq_ignore_ascii_case(b"Message-ID") {
            self.last = LastField::MessageId;
            if self.id_source == IdSource::None {
                self.id_source = IdSource::MessageId;
                self.push_id(value);
            }
        }
    }

    fn push_id(&mut self, bytes: &[u8]) {
        let room = ID_BYTES_MAX - self.id.len();
        self.id.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] =
        b"From: a@b\r\nMessage-ID: <m1@x>\r\nX-Sluice-Injected: 1700000000123456789\r\n\
Subject: hi\r\n\r\nX-Sluice-Id: not-a-header\r\nbody\r\n";

    fn scan_in_chunks(msg: &[u8], size: usize) -> HeaderScan {
        let mut s = HeaderScan::new();
        for c in msg.chunks(size) {
            s.feed(c);
        }
        s.finish();
        s
    }

    #[test]
    fn finds_values_at_every_chunk_size() {
        for size in 1..=MSG.len() {
            let s = scan_in_chunks(MSG, size);
            assert_eq!(
                s.injected_ns(),
                Some(1_700_000_000_123_456_789),
                "size {size}"
            );
            assert_eq!(s.id(), Some(&b"<m1@x>"[..]), "size {size}");
        }
    }

    #[test]
    fn sluice_id_wins_and_folding_is_joined() {
        let s = scan_in_chunks(
            b"Message-ID: <m@x>\nX-Sluice-Id:\n  abc\n\tdef\nx-sluice-injected: nope\n\n",
            3,
        );
        assert_eq!(s.id(), Some(&b"abcdef"[..]));
        assert_eq!(s.injected_ns(), None);
    }

    #[test]
    fn bounded_on_endless_headers() {
        let mut s = HeaderScan::new();
        let long = vec![b'a'; 10_000];
        for _ in 0..10 {
            s.feed(&long);
        }
        assert!(s.is_done());
        assert!(s.line.capacity() >= LINE_BYTES_MAX && s.line.len() <= LINE_BYTES_MAX);
        s.reset();
        s.feed(b"X-Sluice-Injected: 5\r\n\r\n");
        assert_eq!(s.injected_ns(), Some(5));
    }

    #[test]
    fn stops_early_once_everything_is_known() {
        let mut s = HeaderScan::with_ids(false);
        s.feed(b"From: a\r\nX-Sluice-Injected: 7\r\nSubject: x\r\n");
        assert!(s.is_done());
        assert_eq!(s.injected_ns(), Some(7));
        assert_eq!(s.id(), None);
        // With ids wanted, a folded X-Sluice-Id is read to its end first.
        let mut s = HeaderScan::new();
        s.feed(b"X-Sluice-Injected: 7\r\nX-Sluice-Id: a\r\n b\r\nSubject: x\r\n");
        assert!(s.is_done());
        assert_eq!(s.id(), Some(&b"ab"[..]));
    }

    #[test]
    fn overflowing_number_is_ignored() {
        let s = scan_in_chunks(b"X-Sluice-Injected: 99999999999999999999999\r\n\r\n", 7);
        assert_eq!(s.injected_ns(), None);
    }
}
