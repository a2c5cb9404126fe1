//! SMTP replies (RFC 5321 §4.2) and enhanced status codes (RFC 3463), shared
//! by both sides: the server encodes them, the client parses them.

use std::borrow::Cow;
use std::fmt;

/// A three-digit reply code, `200..=599` (RFC 5321 §4.2). Codes `1yz` are
/// never used by SMTP and are refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplyCode(u16);

impl ReplyCode {
    /// `220` service ready.
    pub const READY: Self = Self(220);
    /// `221` closing.
    pub const CLOSING: Self = Self(221);
    /// `250` requested action completed.
    pub const OK: Self = Self(250);
    /// `354` start mail input.
    pub const START_DATA: Self = Self(354);
    /// `421` service not available, closing channel.
    pub const SERVICE_UNAVAILABLE: Self = Self(421);

    /// The code for `value`, or `None` outside `200..=599` or when the
    /// second digit is above 5 (RFC 5321 §4.2.1 defines x0z..x5z).
    pub const fn new(value: u16) -> Option<Self> {
        if value >= 200 && value <= 599 && (value / 10) % 10 <= 5 {
            Some(Self(value))
        } else {
            None
        }
    }

    /// The code for a literal; for constants only.
    ///
    /// # Panics
    /// When `value` is not a valid code: a bug in the literal, caught at
    /// compile time when used in a `const`.
    pub const fn from_literal(value: u16) -> Self {
        match Self::new(value) {
            Some(code) => code,
            None => panic!("reply code out of range"),
        }
    }

    /// The numeric value.
    pub const fn value(self) -> u16 {
        self.0
    }

    /// The class given by the first digit; clients decide by it alone
    /// (RFC 5321 §4.2.1).
    pub const fn severity(self) -> Severity {
        match self.0 / 100 {
            2 => Severity::PositiveCompletion,
            3 => Severity::PositiveIntermediate,
            4 => Severity::TransientNegative,
            _ => Severity::PermanentNegative,
        }
    }

    /// First digit, `2..=5`.
    pub const fn class(self) -> u8 {
        (self.0 / 100) as u8
    }

    fn digits(self) -> [u8; 3] {
        [
            b'0' + (self.0 / 100) as u8,
            b'0' + (self.0 / 10 % 10) as u8,
            b'0' + (self.0 % 10) as u8,
        ]
    }
}

impl fmt::Display for ReplyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The first digit of a reply code (RFC 5321 §4.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Severity {
    /// `2yz`: the action completed.
    PositiveCompletion,
    /// `3yz`: send more (354 after DATA, 334 during AUTH).
    PositiveIntermediate,
    /// `4yz`: temporary failure, try again later.
    TransientNegative,
    /// `5yz`: permanent failure.
    PermanentNegative,
}

/// An enhanced status code `class.subject.detail` (RFC 3463 §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    /// `2`, `4` or `5`; equals the first digit of the reply code.
    pub class: u8,
    /// `0..=999`.
    pub subject: u16,
    /// `0..=999`.
    pub detail: u16,
}

impl EnhancedCode {
    /// `2.0.0`.
    pub const OK: Self = Self {
        class: 2,
        subject: 0,
        detail: 0,
    };

    /// Builds a code; `None` when out of range (RFC 3463 §2: class 2, 4 or 5;
    /// subject and detail at most three digits).
    pub const fn new(class: u8, subject: u16, detail: u16) -> Option<Self> {
        if (class == 2 || class == 4 || class == 5) && subject <= 999 && detail <= 999 {
            Some(Self {
                class,
                subject,
                detail,
            })
        } else {
            None
        }
    }

    /// Parses `c.sss.ddd` at the start of `text`; returns the code and the
    /// number of bytes it took including one following space, if any.
    /// RFC 3463 §2: subject and detail are 1 to 3 digits without leading
    /// zeros other than `0` itself; we accept leading zeros (seen in the
    /// wild) but never more than three digits.
    pub fn parse_prefix(text: &[u8]) -> Option<(Self, usize)> {
        let class = *text.first()?;
        if !matches!(class, b'2' | b'4' | b'5') || text.get(1) != Some(&b'.') {
            return None;
        }
        let (subject, a) = parse_number_1_3(&text[2..])?;
        let rest = &text[2 + a..];
        if rest.first() != Some(&b'.') {
            return None;
        }
        let (detail, b) = parse_number_1_3(&rest[1..])?;
        let mut used = 2 + a + 1 + b;
        match text.get(used) {
            None => {}
            Some(b' ') => used += 1,
            // `2.0.0x` is text, not a code.
            Some(_) => return None,
        }
        Some((
            Self {
                class: class - b'0',
                subject,
                detail,
            },
            used,
        ))
    }

    /// Appends `c.s.d` to `out`.
    pub fn encode(self, out: &mut Vec<u8>) {
        out.push(b'0' + self.class);
        out.push(b'.');
        push_decimal(out, u64::from(self.subject));
        out.push(b'.');
        push_decimal(out, u64::from(self.detail));
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

fn parse_number_1_3(text: &[u8]) -> Option<(u16, usize)> {
    let digits = text
        .iter()
        .take(4)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == 0 || digits > 3 {
        return None;
    }
    let value = text[..digits]
        .iter()
        .fold(0u16, |acc, b| acc * 10 + u16::from(b - b'0'));
    Some((value, digits))
}

/// Appends the decimal form of `value` to `out` without allocating.
pub(crate) fn push_decimal(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// One SMTP reply: a code, an optional enhanced code and its text.
///
/// A multi-line reply keeps its lines separated by `\n` in `text`; the
/// encoder writes every line but the last as `ddd-...` (RFC 5321 §4.2.1).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reply {
    /// The reply code.
    pub code: ReplyCode,
    /// The enhanced status code, when there is one (RFC 3463).
    pub enhanced: Option<EnhancedCode>,
    /// The text, lines separated by `\n`; never contains `\r`.
    pub text: Cow<'static, str>,
}

impl Reply {
    /// A reply with an enhanced code.
    pub fn new(
        code: ReplyCode,
        enhanced: EnhancedCode,
        text: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            code,
            enhanced: Some(enhanced),
            text: text.into(),
        }
    }

    /// A reply without an enhanced code.
    pub fn plain(code: ReplyCode, text: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            enhanced: None,
            text: text.into(),
        }
    }

    /// A reply from literals, for the many fixed replies of the protocol.
    ///
    /// # Panics
    /// When a literal is out of range (a bug in the caller's constant).
    pub fn fixed(code: u16, enhanced: (u8, u16, u16), text: &'static str) -> Self {
        let code = ReplyCode::from_literal(code);
        // Invariant: every caller passes literal codes from RFC 3463.
        let enhanced = EnhancedCode::new(enhanced.0, enhanced.1, enhanced.2)
            .expect("enhanced code literal out of range");
        debug_assert_eq!(enhanced.class, code.class());
        Self::new(code, enhanced, text)
    }

    /// `250 2.0.0 OK`.
    pub fn ok() -> Self {
        Self::fixed(250, (2, 0, 0), "OK")
    }

    /// The reply's severity, from its first digit.
    pub fn severity(&self) -> Severity {
        self.code.severity()
    }

    /// The lines of the text.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.text.split('\n')
    }

    /// Appends the wire form to `out`: every line `ddd-`, the last `ddd `,
    /// each followed by CRLF. The enhanced code prefixes every line when
    /// `with_enhanced` (RFC 2034 §3: only once ENHANCEDSTATUSCODES is
    /// advertised). CR, LF and other control characters are dropped from
    /// the text so echoed peer data can never forge a reply line.
    pub fn encode(&self, with_enhanced: bool, out: &mut Vec<u8>) {
        // RFC 3463 §2: the class must equal the first digit; a mismatched
        // code (e.g. on a 334) is left out rather than sent wrong.
        let enhanced = self
            .enhanced
            .filter(|e| with_enhanced && e.class == self.code.class());
        let mut lines = self.text.split('\n').peekable();
        while let Some(line) = lines.next() {
            out.extend_from_slice(&self.code.digits());
            let last = lines.peek().is_none();
            let mut wrote_space = false;
            if let Some(code) = enhanced {
                out.push(if last { b' ' } else { b'-' });
                code.encode(out);
                wrote_space = true;
            }
            if !line.is_empty() {
                if wrote_space {
                    out.push(b' ');
                } else {
                    out.push(if last { b' ' } else { b'-' });
                }
                push_sanitized(out, line.as_bytes());
            } else if !last && !wrote_space {
                // RFC 5321 §4.2: a continuation line needs its hyphen.
                out.push(b'-');
            }
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The wire form as a new vector (tests and diagnostics).
    pub fn to_bytes(&self, with_enhanced: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.text.len() + 16);
        self.encode(with_enhanced, &mut out);
        out
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.enhanced {
            Some(e) => write!(f, "{} {} {}", self.code, e, self.text.replace('\n', " / ")),
            None => write!(f, "{} {}", self.code, self.text.replace('\n', " / ")),
        }
    }
}

/// Appends `text` without CR, LF or other C0 controls (TAB is kept), so text
/// taken from a peer never splits or forges a line (RELIABILITY.md).
pub(crate) fn push_sanitized(out: &mut Vec<u8>, text: &[u8]) {
    if !text.iter().any(|&b| b < 0x20 && b != b'\t' || b == 0x7f) {
        out.extend_from_slice(text);
        return;
    }
    out.extend(
        text.iter()
            .copied()
            .filter(|&b| (b >= 0x20 || b == b'\t') && b != 0x7f),
    );
}

/// Returns `text` with CR, LF and other controls removed, for echoing peer
/// data into reply text.
pub fn sanitize_text(text: &str) -> Cow<'_, str> {
    if text.bytes().all(|b| (b >= 0x20 || b == b'\t') && b != 0x7f) {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(
            text.chars()
                .filter(|&c| !c.is_ascii_control() || c == '\t')
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_single_and_multi_line() {
        let r = Reply::fixed(250, (2, 1, 0), "Sender OK");
        assert_eq!(r.to_bytes(true), b"250 2.1.0 Sender OK\r\n");
        assert_eq!(r.to_bytes(false), b"250 Sender OK\r\n");
        let m = Reply::plain(ReplyCode::OK, "host\nPIPELINING\nSIZE 10");
        assert_eq!(
            m.to_bytes(true),
            b"250-host\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
        );
    }

    #[test]
    fn strips_controls_from_text() {
        let r = Reply::plain(ReplyCode::OK, "a\rb\u{7f}c");
        assert_eq!(r.to_bytes(false), b"250 abc\r\n");
        assert_eq!(sanitize_text("x\r\ny"), "xy");
    }

    #[test]
    fn empty_text_is_bare_code() {
        let r = Reply::plain(ReplyCode::OK, "");
        assert_eq!(r.to_bytes(false), b"250\r\n");
        let m = Reply::plain(ReplyCode::OK, "\nx");
        assert_eq!(m.to_bytes(false), b"250-\r\n250 x\r\n");
    }

    #[test]
    fn enhanced_prefix() {
        assert_eq!(
            EnhancedCode::parse_prefix(b"5.1.1 no"),
            Some((EnhancedCode::new(5, 1, 1).unwrap(), 6))
        );
        assert_eq!(
            EnhancedCode::parse_prefix(b"2.0.0"),
            Some((EnhancedCode::new(2, 0, 0).unwrap(), 5))
        );
        assert_eq!(EnhancedCode::parse_prefix(b"3.0.0 x"), None);
        assert_eq!(EnhancedCode::parse_prefix(b"2.0.0000 x"), None);
        assert_eq!(EnhancedCode::parse_prefix(b"2.0.0x"), None);
        assert_eq!(EnhancedCode::parse_prefix(b"234 text"), None);
    }

    #[test]
    fn reply_code_range() {
        assert!(ReplyCode::new(199).is_none());
        assert!(ReplyCode::new(600).is_none());
        assert!(ReplyCode::new(260).is_none());
        assert_eq!(
            ReplyCode::new(452).unwrap().severity(),
            Severity::TransientNegative
        );
    }
}
