//! A resumable reply parser (RFC 5321 §4.2): fed any split of the input, it
//! returns each complete reply with the number of bytes it used.

use memchr::memchr;

use crate::reply::{EnhancedCode, Reply, ReplyCode};

/// Result of [`ReplyParser::feed`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole reply, and the input bytes used for it (later bytes belong
    /// to the next reply: feed them again).
    Complete(Reply, usize),
    /// All input was used; the reply continues in the next input.
    Incomplete,
}

/// Malformed replies. After an error the parser is reset; the connection
/// should be closed since the reply stream is out of step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ReplyError {
    /// A line longer than the limit.
    #[error("reply line too long")]
    LineTooLong,
    /// A multi-line reply with more lines than the limit.
    #[error("too many reply lines")]
    TooManyLines,
    /// A line not starting with a valid three-digit code and ` `, `-` or
    /// the end of the line.
    #[error("reply syntax error")]
    Syntax,
    /// A continuation line with another code (RFC 5321 §4.2.1).
    #[error("reply lines with different codes")]
    CodeMismatch,
}

/// Streaming reply parser. Accepts CRLF and bare LF line endings, a bare
/// `ddd` line, `ddd-` continuations; parses an enhanced status code when the
/// first line has one whose class matches the reply's first digit
/// (RFC 3463 §2), and strips the same code from continuation lines.
#[derive(Clone, Debug)]
pub struct ReplyParser {
    /// A line split across inputs (bounded by `line_bytes_max`).
    partial: Vec<u8>,
    text: String,
    code: Option<ReplyCode>,
    enhanced: Option<EnhancedCode>,
    lines: usize,
    line_bytes_max: usize,
    lines_max: usize,
}

impl Default for ReplyParser {
    fn default() -> Self {
        Self::new(Self::LINE_BYTES_MAX, Self::LINES_MAX)
    }
}

impl ReplyParser {
    /// Default line limit. RFC 5321 §4.5.3.1.5 says 512, but real servers
    /// send longer texts; refusing them would fail deliveries for nothing.
    pub const LINE_BYTES_MAX: usize = 2048;
    /// Default line count limit: an EHLO reply has about 10 to 20 lines.
    pub const LINES_MAX: usize = 128;

    /// A parser with explicit limits (line length including the line end).
    pub fn new(line_bytes_max: usize, lines_max: usize) -> Self {
        Self {
            partial: Vec::new(),
            text: String::new(),
            code: None,
            enhanced: None,
            lines: 0,
            line_bytes_max: line_bytes_max.max(8),
            lines_max: lines_max.max(1),
        }
    }

    /// Drops any partial reply.
    pub fn reset(&mut self) {
        self.partial.clear();
        self.text.clear();
        self.code = None;
        self.enhanced = None;
        self.lines = 0;
    }

    /// True when part of a reply has been received.
    pub fn is_mid_reply(&self) -> bool {
        !self.partial.is_empty() || self.lines > 0
    }

    /// Parses from `input`; see [`Parsed`].
    pub fn feed(&mut self, input: &[u8]) -> Result<Parsed, ReplyError> {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            let Some(lf) = memchr(b'\n', rest) else {
                if self.partial.len() + rest.len() >= self.line_bytes_max {
                    self.reset();
                    return Err(ReplyError::LineTooLong);
                }
                self.partial.extend_from_slice(rest);
                return Ok(Parsed::Incomplete);
            };
            if self.partial.len() + lf + 1 > self.line_bytes_max {
                self.reset();
                return Err(ReplyError::LineTooLong);
            }
            pos += lf + 1;
            let last = if self.partial.is_empty() {
                self.line(&rest[..lf])
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(&rest[..lf]);
                let last = self.line(&line);
                line.clear();
                self.partial = line;
                last
            };
            match last {
                Err(error) => {
                    self.reset();
                    return Err(error);
                }
                Ok(true) => return Ok(Parsed::Complete(self.take(), pos)),
                Ok(false) => {}
            }
        }
    }

    fn take(&mut self) -> Reply {
        // Invariant: `line` sets the code before reporting the last line.
        let code = self.code.take().expect("complete reply has a code");
        let reply = Reply {
            code,
            enhanced: self.enhanced.take(),
            text: std::mem::take(&mut self.text).into(),
        };
        self.lines = 0;
        reply
    }

    /// Handles one line without its LF; returns true on the last line.
    fn line(&mut self, line: &[u8]) -> Result<bool, ReplyError> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
            return Err(ReplyError::Syntax);
        }
        let value = line[..3]
            .iter()
            .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
        let code = ReplyCode::new(value).ok_or(ReplyError::Syntax)?;
        let last = match line.get(3) {
            None | Some(b' ') => true,
            Some(b'-') => false,
            Some(_) => return Err(ReplyError::Syntax),
        };
        let mut text = line.get(4..).unwrap_or(&[]);
        match self.code {
            None => {
                self.code = Some(code);
                // RFC 3463 §2: the class equals the reply's first digit.
                if let Some((enhanced, used)) = EnhancedCode::parse_prefix(text) {
                    if enhanced.class == code.class() {
                        self.enhanced = Some(enhanced);
                        text = &text[used..];
                    }
                }
            }
            Some(first) if first != code => return Err(ReplyError::CodeMismatch),
            Some(_) => {
                self.text.push('\n');
                if let Some(enhanced) = self.enhanced {
                    if let Some((again, used)) = EnhancedCode::parse_prefix(text) {
                        if again == enhanced {
                            text = &text[used..];
                        }
                    }
                }
            }
        }
        self.lines += 1;
        if self.lines > self.lines_max {
            return Err(ReplyError::TooManyLines);
        }
        match std::str::from_utf8(text) {
            Ok(text) => self.text.push_str(text),
            Err(_) => self.text.push_str(&String::from_utf8_lossy(text)),
        }
        Ok(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8], chunk: usize) -> Result<Vec<Reply>, ReplyError> {
        let mut parser = ReplyParser::default();
        let mut replies = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            let mut pos = 0;
            while pos < piece.len() {
                match parser.feed(&piece[pos..])? {
                    Parsed::Complete(reply, used) => {
                        assert!(used > 0);
                        pos += used;
                        replies.push(reply);
                    }
                    Parsed::Incomplete => break,
                }
            }
        }
        assert!(!parser.is_mid_reply() || input.last() != Some(&b'\n'));
        Ok(replies)
    }

    #[test]
    fn split_at_every_byte_boundary() {
        let wire = b"250-mx.example Hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 CHUNKING\r\n250 2.1.0 Sender OK\r\n";
        let reference = parse_all(wire, wire.len()).unwrap();
        assert_eq!(reference.len(), 2);
        assert_eq!(
            reference[0].text,
            "mx.example Hello\nPIPELINING\nSIZE 1000\nCHUNKING"
        );
        assert_eq!(reference[1].enhanced, EnhancedCode::new(2, 1, 0));
        assert_eq!(reference[1].text, "Sender OK");
        for chunk in 1..wire.len() {
            assert_eq!(parse_all(wire, chunk).unwrap(), reference, "chunk {chunk}");
        }
        // Split in two at every boundary too.
        for split in 0..wire.len() {
            let mut parser = ReplyParser::default();
            let mut got = Vec::new();
            for part in [&wire[..split], &wire[split..]] {
                let mut pos = 0;
                while pos < part.len() {
                    match parser.feed(&part[pos..]).unwrap() {
                        Parsed::Complete(r, used) => {
                            pos += used;
                            got.push(r)
                        }
                        Parsed::Incomplete => break,
                    }
                }
            }
            assert_eq!(got, reference, "split {split}");
        }
    }

    #[test]
    fn lf_only_endings_are_tolerated() {
        let crlf = parse_all(b"220-a\r\n220 b\r\n", 3).unwrap();
        assert_eq!(parse_all(b"220-a\n220 b\n", 3).unwrap(), crlf);
    }

    #[test]
    fn code_in_text_is_not_a_separator() {
        let r = parse_all(b"250-234 text\r\n250 ok\r\n", 100).unwrap();
        assert_eq!(r[0].code.value(), 250);
        assert_eq!(r[0].text, "234 text\nok");
    }

    #[test]
    fn code_only_line() {
        let r = parse_all(b"250\r\n354\n", 1).unwrap();
        assert_eq!((r[0].code.value(), r[0].text.as_ref()), (250, ""));
        assert_eq!(r[1].code.value(), 354);
    }

    #[test]
    fn enhanced_code_class_must_match() {
        let r = parse_all(b"550 4.1.1 odd\r\n", 100).unwrap();
        assert_eq!(r[0].enhanced, None);
        assert_eq!(r[0].text, "4.1.1 odd");
        let r = parse_all(b"550-5.1.1 no such user\r\n550 5.1.1 see docs\r\n", 100).unwrap();
        assert_eq!(r[0].text, "no such user\nsee docs");
    }

    #[test]
    fn errors() {
        assert_eq!(
            parse_all(b"250-a\r\n251 b\r\n", 4),
            Err(ReplyError::CodeMismatch)
        );
        assert_eq!(parse_all(b"25x ok\r\n", 4), Err(ReplyError::Syntax));
        assert_eq!(parse_all(b"250x\r\n", 4), Err(ReplyError::Syntax));
        assert_eq!(parse_all(b"150 no\r\n", 4), Err(ReplyError::Syntax));
        assert_eq!(parse_all(b"\r\n", 4), Err(ReplyError::Syntax));
        let long = [b"250 ".as_slice(), &[b'x'; 5000], b"\r\n"].concat();
        assert_eq!(parse_all(&long, 7), Err(ReplyError::LineTooLong));
        assert_eq!(parse_all(&long, 100_000), Err(ReplyError::LineTooLong));
    }

    #[test]
    fn endless_continuation_is_capped() {
        let mut parser = ReplyParser::default();
        let line = b"250-more\r\n";
        let mut result = Ok(Parsed::Incomplete);
        for _ in 0..1000 {
            result = parser.feed(line);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(ReplyError::TooManyLines));
        // Bounded memory: the text holds at most LINES_MAX lines.
    }
}
