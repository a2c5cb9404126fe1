//! Message content after DATA (RFC 5321 §4.1.1.4, §4.5.2): the receiving
//! un-stuffer that finds the exact end marker, and the sending dot-stuffer.
//!
//! Both work on borrowed slices: the receiver hands back sub-slices of its
//! input (dropping the stuffing dots), the stuffer hands back sub-slices of
//! the body with tiny static pieces in between, so neither copies a body.

use bitflags::bitflags;
use memchr::{memchr2, memmem};

bitflags! {
    /// Content problems seen while receiving; the message is still read to
    /// its end marker so the stream stays in sync.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct Violations: u8 {
        /// A CR not followed by LF (RFC 5321 §2.3.8).
        const BARE_CR = 1;
        /// An LF not preceded by CR (RFC 5321 §2.3.8).
        const BARE_LF = 2;
        /// A line longer than the limit (RFC 5321 §4.5.3.1.6).
        const LINE_TOO_LONG = 4;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// After CRLF (or at the start of the data): a `.` here is special.
    LineStart,
    /// Inside a line.
    Mid,
    /// Inside a line, a CR was the last byte of the previous input and is
    /// held back until the next byte tells whether it ends the line.
    Cr,
    /// Line start, the `.` was seen and dropped.
    Dot,
    /// Line start, `.` then CR seen: LF ends the data.
    DotCr,
    /// The end marker was consumed.
    Ended,
}

/// Checks raw message content that needs no un-stuffing (BDAT chunks,
/// RFC 3030) for the same problems [`DataReceiver`] flags in DATA: bare CR,
/// bare LF and over-long lines. It keeps one byte of state across chunks,
/// so the result never depends on where chunk boundaries fall.
///
/// Without this check a BDAT body could carry `\r.\r\n` or `\n.\n` to a
/// next hop that only speaks DATA and is lenient about line endings, which
/// is SMTP smuggling by the back door.
#[derive(Clone, Debug)]
pub struct LineChecker {
    cr_pending: bool,
    line_bytes: usize,
    line_bytes_max: usize,
    violations: Violations,
}

impl LineChecker {
    /// A checker that flags lines longer than `line_bytes_max` octets
    /// including CRLF (as [`DataReceiver::new`]).
    pub fn new(line_bytes_max: usize) -> Self {
        Self {
            cr_pending: false,
            line_bytes: 0,
            line_bytes_max,
            violations: Violations::empty(),
        }
    }

    /// Feeds the next piece of content.
    pub fn feed(&mut self, input: &[u8]) {
        let mut pos = 0;
        if self.cr_pending && !input.is_empty() {
            self.cr_pending = false;
            if input[0] == b'\n' {
                self.end_line(2);
                pos = 1;
            } else {
                self.violations |= Violations::BARE_CR;
                self.line_bytes += 1;
            }
        }
        while pos < input.len() {
            let Some(offset) = memchr2(b'\r', b'\n', &input[pos..]) else {
                self.add(input.len() - pos);
                return;
            };
            let p = pos + offset;
            self.add(offset);
            if input[p] == b'\n' {
                // RFC 5321 §2.3.8: only CRLF ends a line.
                self.violations |= Violations::BARE_LF;
                self.line_bytes = 0;
                pos = p + 1;
                continue;
            }
            match input.get(p + 1) {
                None => {
                    self.cr_pending = true;
                    return;
                }
                Some(b'\n') => {
                    self.end_line(2);
                    pos = p + 2;
                }
                Some(_) => {
                    self.violations |= Violations::BARE_CR;
                    self.add(1);
                    pos = p + 1;
                }
            }
        }
    }

    /// Ends the content: a CR left at the very end is a bare CR.
    pub fn finish(&mut self) -> Violations {
        if std::mem::take(&mut self.cr_pending) {
            self.violations |= Violations::BARE_CR;
        }
        self.violations
    }

    fn add(&mut self, bytes: usize) {
        self.line_bytes += bytes;
        if self.line_bytes > self.line_bytes_max {
            self.violations |= Violations::LINE_TOO_LONG;
        }
    }

    fn end_line(&mut self, crlf: usize) {
        if self.line_bytes + crlf > self.line_bytes_max {
            self.violations |= Violations::LINE_TOO_LONG;
        }
        self.line_bytes = 0;
    }
}

/// One step of [`DataReceiver::feed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataStep<'a> {
    /// Input bytes used by this step.
    pub consumed: usize,
    /// Un-stuffed message bytes; a sub-slice of the input or a short static
    /// piece (a CR held back across inputs). May be empty.
    pub chunk: &'a [u8],
    /// True when the end marker `CRLF.CRLF` was consumed.
    pub ended: bool,
}

/// Streams the content of one DATA command: un-stuffs leading dots and stops
/// exactly after `CRLF.CRLF` (the first CRLF being the one that ended the
/// previous line or the DATA command itself).
///
/// Only that exact sequence ends the data: `LF.LF`, `CRLF.LF`, `LF.CRLF` and
/// `CR.CRLF` are content (and flagged as bare CR/LF), which defeats SMTP
/// smuggling. Nothing is buffered: a CR at the end of one input is kept as
/// state and given back as a static piece.
#[derive(Clone, Debug)]
pub struct DataReceiver {
    state: State,
    line_bytes: usize,
    line_bytes_max: usize,
    violations: Violations,
}

impl DataReceiver {
    /// A receiver that flags lines longer than `line_bytes_max` octets
    /// including CRLF (use [`crate::limits::TEXT_LINE_BYTES_MAX`]; `usize::MAX`
    /// disables the check).
    pub fn new(line_bytes_max: usize) -> Self {
        Self {
            state: State::LineStart,
            line_bytes: 0,
            line_bytes_max,
            violations: Violations::empty(),
        }
    }

    /// Problems seen so far.
    pub fn violations(&self) -> Violations {
        self.violations
    }

    /// True once the end marker was consumed.
    pub fn is_ended(&self) -> bool {
        self.state == State::Ended
    }

    /// Consumes a prefix of `input` and returns the un-stuffed bytes it
    /// stands for. Call again with the rest while `consumed < input.len()`
    /// and not `ended`; a step may consume nothing but return a chunk.
    pub fn feed<'a>(&mut self, input: &'a [u8]) -> DataStep<'a> {
        let Some(&first) = input.first() else {
            return self.step(0, &[], self.state == State::Ended);
        };
        match self.state {
            State::Ended => self.step(0, &[], true),
            State::LineStart => {
                if first == b'.' {
                    // RFC 5321 §4.5.2: a leading period is removed (or, with
                    // CRLF after it, is the end marker).
                    self.state = State::Dot;
                    self.line_bytes = 1;
                    self.step(1, &[], false)
                } else {
                    self.state = State::Mid;
                    self.scan(input)
                }
            }
            State::Dot => {
                if first == b'\r' {
                    self.state = State::DotCr;
                    self.step(1, &[], false)
                } else {
                    // A stuffed dot: dropped. A bare LF here is flagged by
                    // the scan; it never ends the data.
                    self.state = State::Mid;
                    self.scan(input)
                }
            }
            State::DotCr => {
                if first == b'\n' {
                    self.state = State::Ended;
                    self.step(1, &[], true)
                } else {
                    // `.` CR x: a bare CR after a stuffed dot.
                    self.violations |= Violations::BARE_CR;
                    self.state = State::Mid;
                    self.line_bytes += 1;
                    self.step(0, b"\r", false)
                }
            }
            State::Cr => {
                if first == b'\n' {
                    self.end_line(2);
                    self.state = State::LineStart;
                    self.step(1, b"\r\n", false)
                } else {
                    self.violations |= Violations::BARE_CR;
                    self.state = State::Mid;
                    self.line_bytes += 1;
                    self.step(0, b"\r", false)
                }
            }
            State::Mid => self.scan(input),
        }
    }

    fn step<'a>(&self, consumed: usize, chunk: &'a [u8], ended: bool) -> DataStep<'a> {
        DataStep {
            consumed,
            chunk,
            ended,
        }
    }

    fn end_line(&mut self, tail_bytes: usize) {
        if self.line_bytes + tail_bytes > self.line_bytes_max {
            self.violations |= Violations::LINE_TOO_LONG;
        }
        self.line_bytes = 0;
    }

    /// In `Mid`: returns the longest run of content up to a dot at a line
    /// start, a held CR or the end of the input.
    fn scan<'a>(&mut self, input: &'a [u8]) -> DataStep<'a> {
        debug_assert_eq!(self.state, State::Mid);
        let mut pos = 0;
        let mut line_start = 0;
        loop {
            let Some(offset) = memchr2(b'\r', b'\n', &input[pos..]) else {
                self.line_bytes += input.len() - line_start;
                if self.line_bytes > self.line_bytes_max {
                    self.violations |= Violations::LINE_TOO_LONG;
                }
                return self.step(input.len(), input, false);
            };
            let p = pos + offset;
            debug_assert!(input[p] == b'\r' || input[p] == b'\n');
            if input[p] == b'\n' {
                // RFC 5321 §2.3.8: only CRLF ends a line.
                self.violations |= Violations::BARE_LF;
                pos = p + 1;
                continue;
            }
            match input.get(p + 1) {
                None => {
                    self.line_bytes += p - line_start;
                    self.state = State::Cr;
                    return self.step(p + 1, &input[..p], false);
                }
                Some(b'\n') => {}
                Some(_) => {
                    self.violations |= Violations::BARE_CR;
                    pos = p + 1;
                    continue;
                }
            }
            self.line_bytes += p - line_start;
            self.end_line(2);
            pos = p + 2;
            line_start = pos;
            match input.get(pos) {
                None => {
                    self.state = State::LineStart;
                    return self.step(pos, input, false);
                }
                Some(b'.') => {
                    self.state = State::Dot;
                    self.line_bytes = 1;
                    return self.step(pos + 1, &input[..pos], false);
                }
                Some(_) => {}
            }
        }
    }
}

/// Dot-stuffs a body for DATA (RFC 5321 §4.5.2) as a sequence of borrowed
/// slices: body runs, a `.` before every line that starts with one, and the
/// end marker. A body without a final CRLF gets one; an empty body is just
/// the end marker. Feed the pieces to `writev` without copying the body.
#[derive(Clone, Debug)]
pub struct DotStuffer<'a> {
    body: &'a [u8],
    pos: usize,
    dot_pending: bool,
    done: bool,
}

impl<'a> DotStuffer<'a> {
    /// Starts stuffing `body`.
    pub fn new(body: &'a [u8]) -> Self {
        Self {
            body,
            pos: 0,
            dot_pending: body.first() == Some(&b'.'),
            done: false,
        }
    }

    /// The end marker for `body`: completes a missing final CRLF.
    pub fn terminator(body: &[u8]) -> &'static [u8] {
        if body.is_empty() || body.ends_with(b"\r\n") {
            b".\r\n"
        } else if body.ends_with(b"\r") {
            b"\n.\r\n"
        } else {
            b"\r\n.\r\n"
        }
    }

    /// Appends the stuffed body and the end marker to `out`.
    pub fn stuff_into(body: &[u8], out: &mut Vec<u8>) {
        out.reserve(body.len() + 8);
        for piece in DotStuffer::new(body) {
            out.extend_from_slice(piece);
        }
    }

    /// Length of the stuffed body including the end marker.
    pub fn stuffed_len(body: &[u8]) -> usize {
        let starts = usize::from(body.first() == Some(&b'.'));
        body.len() + starts + memmem::find_iter(body, b"\n.").count() + Self::terminator(body).len()
    }
}

impl<'a> Iterator for DotStuffer<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.done {
            return None;
        }
        if self.dot_pending {
            self.dot_pending = false;
            return Some(b".");
        }
        if self.pos == self.body.len() {
            self.done = true;
            return Some(Self::terminator(self.body));
        }
        let rest = &self.body[self.pos..];
        // A line starts after any LF: stuffing after a bare LF too keeps a
        // lenient receiver from seeing an end marker (RFC 5321 §4.5.2).
        let end = match memmem::find(rest, b"\n.") {
            Some(i) => {
                self.dot_pending = true;
                i + 1
            }
            None => rest.len(),
        };
        self.pos += end;
        Some(&rest[..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `chunk` bytes; returns the content, whether
    /// it ended, the bytes consumed, and the violations.
    fn check_lines(input: &[u8], chunk: usize) -> Violations {
        let mut c = LineChecker::new(crate::limits::TEXT_LINE_BYTES_MAX);
        for piece in input.chunks(chunk.max(1)) {
            c.feed(piece);
        }
        c.finish()
    }

    #[test]
    fn line_checker_flags_what_data_flags_at_every_split() {
        let long = [b"a".repeat(999), b"\r\n".to_vec()].concat();
        let cases: &[(&[u8], Violations)] = &[
            (b"ok line\r\nanother\r\n", Violations::empty()),
            (b"", Violations::empty()),
            (b"x\r.\r\nMAIL FROM:<e@x>\r\n", Violations::BARE_CR),
            (b"a\n.\nb\r\n", Violations::BARE_LF),
            (b"a\r\n.\nb\r\n", Violations::BARE_LF),
            (b"no final crlf\r", Violations::BARE_CR),
            (&long, Violations::LINE_TOO_LONG),
        ];
        for (input, want) in cases {
            for chunk in 1..=input.len().max(1) {
                assert_eq!(
                    check_lines(input, chunk),
                    *want,
                    "{input:?} in chunks of {chunk}"
                );
            }
        }
        let exact = [b"a".repeat(998), b"\r\n".to_vec()].concat();
        assert_eq!(
            check_lines(&exact, 7),
            Violations::empty(),
            "998 octets + CRLF is legal"
        );
    }

    fn receive(input: &[u8], chunk: usize) -> (Vec<u8>, bool, usize, Violations) {
        let mut rx = DataReceiver::new(crate::limits::TEXT_LINE_BYTES_MAX);
        let mut out = Vec::new();
        let mut total = 0;
        for piece in input.chunks(chunk.max(1)) {
            let mut pos = 0;
            // Steps that consume nothing always change state, so this ends.
            while pos < piece.len() {
                let step = rx.feed(&piece[pos..]);
                out.extend_from_slice(step.chunk);
                pos += step.consumed;
                total += step.consumed;
                if step.ended {
                    return (out, true, total, rx.violations());
                }
            }
        }
        (out, false, total, rx.violations())
    }

    #[test]
    fn unstuffs_at_every_chunk_size() {
        let wire = b"Subject: x\r\n\r\n..leading\r\n.\r\nnot end\r\n..\r\n.\r\ntrailing";
        for chunk in 1..=wire.len() {
            let (out, ended, consumed, v) = receive(wire, chunk);
            assert!(ended, "chunk {chunk}");
            assert_eq!(consumed, b"Subject: x\r\n\r\n..leading\r\n.\r\n".len());
            assert_eq!(out, b"Subject: x\r\n\r\n.leading\r\n");
            assert!(v.is_empty());
        }
    }

    #[test]
    fn a_line_that_is_only_a_dot_after_stuffing() {
        for chunk in 1..=20 {
            let (out, ended, _, _) = receive(b"a\r\n..\r\nb\r\n.\r\n", chunk);
            assert!(ended);
            assert_eq!(out, b"a\r\n.\r\nb\r\n");
        }
    }

    #[test]
    fn empty_body_and_immediate_end() {
        let (out, ended, consumed, _) = receive(b".\r\nMAIL", 2);
        assert!(ended);
        assert_eq!((out.len(), consumed), (0, 3));
    }

    #[test]
    fn smuggling_endings_are_content() {
        for ending in [&b"\n.\n"[..], b"\r\n.\n", b"\n.\r\n", b"\r.\r\n"] {
            let mut wire = b"x".to_vec();
            wire.extend_from_slice(ending);
            wire.extend_from_slice(b"MAIL FROM:<evil@x>\r\n");
            for chunk in 1..=wire.len() {
                let (_, ended, _, v) = receive(&wire, chunk);
                assert!(!ended, "{ending:?} ended the data at chunk {chunk}");
                assert!(v.intersects(Violations::BARE_CR | Violations::BARE_LF));
            }
            wire.extend_from_slice(b"\r\n.\r\n");
            let (_, ended, consumed, _) = receive(&wire, 7);
            assert!(ended);
            assert_eq!(consumed, wire.len());
        }
    }

    #[test]
    fn long_lines_are_flagged() {
        let mut wire = vec![b'a'; 998];
        wire.extend_from_slice(b"\r\n.\r\n");
        assert!(receive(&wire, 100).3.is_empty());
        let mut wire = vec![b'a'; 999];
        wire.extend_from_slice(b"\r\n.\r\n");
        for chunk in [1, 10, 998, 999, 1000, 5000] {
            assert_eq!(receive(&wire, chunk).3, Violations::LINE_TOO_LONG);
        }
    }

    #[test]
    fn stuffs_borrowed_pieces() {
        let body = b".a\r\nb\r\n.\r\n..c";
        let pieces: Vec<&[u8]> = DotStuffer::new(body).collect();
        assert_eq!(pieces.concat(), b"..a\r\nb\r\n..\r\n...c\r\n.\r\n");
        assert_eq!(DotStuffer::stuffed_len(body), pieces.concat().len());
        let mut out = Vec::new();
        DotStuffer::stuff_into(b"", &mut out);
        assert_eq!(out, b".\r\n");
        out.clear();
        DotStuffer::stuff_into(b"x\r\n", &mut out);
        assert_eq!(out, b"x\r\n.\r\n");
        out.clear();
        DotStuffer::stuff_into(b"x\r", &mut out);
        assert_eq!(out, b"x\r\n.\r\n");
    }

    #[test]
    fn stuff_then_receive_round_trips() {
        let body = b"..\r\n.\r\nx\r\n\r\n.y\r\n";
        let mut wire = Vec::new();
        DotStuffer::stuff_into(body, &mut wire);
        for chunk in 1..=wire.len() {
            let (out, ended, consumed, _) = receive(&wire, chunk);
            assert!(ended);
            assert_eq!(consumed, wire.len());
            assert_eq!(out, body);
        }
    }
}
