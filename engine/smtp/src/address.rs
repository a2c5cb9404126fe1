//! Mailbox paths in MAIL FROM and RCPT TO (RFC 5321 §4.1.2), parsed from
//! the command line without copying.

use crate::limits::{DOMAIN_BYTES_MAX, LOCAL_PART_BYTES_MAX, PATH_BYTES_MAX};

/// A mailbox `local-part@domain`, borrowed from the command line.
///
/// The domain is empty only for the special recipient `<postmaster>`
/// (RFC 5321 §4.1.1.3), which every server must accept without a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mailbox<'a> {
    address: &'a str,
    /// Index of the `@`, or `address.len()` for a bare `postmaster`.
    at: usize,
}

impl<'a> Mailbox<'a> {
    /// The whole address, `local@domain` (quoted local parts keep quotes).
    pub fn as_str(&self) -> &'a str {
        self.address
    }

    /// The local part (before the last `@`).
    pub fn local_part(&self) -> &'a str {
        &self.address[..self.at]
    }

    /// The domain (after the `@`); empty for a bare `postmaster`.
    pub fn domain(&self) -> &'a str {
        self.address.get(self.at + 1..).unwrap_or("")
    }

    /// True when any byte is outside ASCII (needs SMTPUTF8, RFC 6531 §3.3).
    pub fn is_utf8(&self) -> bool {
        !self.address.is_ascii()
    }

    /// Builds a mailbox from an address string, checking the same rules as
    /// the command parser (for the client side and tests).
    pub fn parse(address: &'a str) -> Result<Self, PathError> {
        parse_mailbox(address, true)
    }
}

impl std::fmt::Display for Mailbox<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.address)
    }
}

/// Why a path was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum PathError {
    /// Not `<...>`, bad characters, or a missing part.
    #[error("path syntax error")]
    Syntax,
    /// Local part over 64 octets (RFC 5321 §4.5.3.1.1).
    #[error("local part too long")]
    LocalPartTooLong,
    /// Domain over 255 octets (RFC 5321 §4.5.3.1.2).
    #[error("domain too long")]
    DomainTooLong,
    /// Path over 256 octets (RFC 5321 §4.5.3.1.3).
    #[error("path too long")]
    PathTooLong,
}

/// Parses `<...>` at the start of `text`. Returns the mailbox (`None` for the
/// null path `<>`) and the remainder after `>`.
pub(crate) fn parse_path(text: &str) -> Result<(Option<Mailbox<'_>>, &str), PathError> {
    let bytes = text.as_bytes();
    if bytes.first() != Some(&b'<') {
        return Err(PathError::Syntax);
    }
    // Find the closing '>' outside a quoted local part; without quotes
    // (nearly always) a byte search finds it.
    let mut i = 1;
    let mut quoted = false;
    if let Some(gt) = memchr::memchr(b'>', bytes) {
        if memchr::memchr(b'"', &bytes[..gt]).is_none() {
            i = gt;
        }
    }
    while i < bytes.len() {
        let b = bytes[i];
        if quoted {
            match b {
                b'\\' => i += 1,
                b'"' => quoted = false,
                _ => {}
            }
        } else if b == b'"' {
            quoted = true;
        } else if b == b'>' {
            break;
        }
        i += 1;
    }
    if i >= bytes.len() {
        return Err(PathError::Syntax);
    }
    // RFC 5321 §4.5.3.1.3: the path limit includes the angle brackets.
    if i + 1 > PATH_BYTES_MAX {
        return Err(PathError::PathTooLong);
    }
    let inner = &text[1..i];
    let rest = &text[i + 1..];
    if inner.is_empty() {
        return Ok((None, rest));
    }
    // RFC 5321 §4.1.2 / Appendix C: a source route `@a,@b:` is accepted and
    // ignored.
    let inner = if inner.starts_with('@') {
        match crate::command::split_at_byte(inner, b':') {
            Some((_, mailbox)) => mailbox,
            None => return Err(PathError::Syntax),
        }
    } else {
        inner
    };
    Ok((Some(parse_mailbox(inner, true)?), rest))
}

pub(crate) fn parse_mailbox(
    address: &str,
    allow_postmaster: bool,
) -> Result<Mailbox<'_>, PathError> {
    let bytes = address.as_bytes();
    if bytes.is_empty() {
        return Err(PathError::Syntax);
    }
    let at = if bytes[0] == b'"' {
        // Quoted-string (RFC 5321 §4.1.2): qtextSMTP or quoted-pairSMTP.
        let mut i = 1;
        loop {
            match bytes.get(i) {
                None => return Err(PathError::Syntax),
                Some(b'\\') => {
                    match bytes.get(i + 1) {
                        Some(&c) if (0x20..=0x7e).contains(&c) || c >= 0x80 => {}
                        _ => return Err(PathError::Syntax),
                    }
                    i += 2;
                }
                Some(b'"') => break,
                Some(&c) if (0x20..=0x7e).contains(&c) || c >= 0x80 => i += 1,
                Some(_) => return Err(PathError::Syntax),
            }
        }
        i + 1
    } else {
        let end = bytes.iter().position(|&b| b == b'@').unwrap_or(bytes.len());
        check_dot_string(&bytes[..end])?;
        end
    };
    if at > LOCAL_PART_BYTES_MAX {
        return Err(PathError::LocalPartTooLong);
    }
    if at == bytes.len() {
        // RFC 5321 §4.1.1.3: `<Postmaster>` without a domain.
        if allow_postmaster && address.eq_ignore_ascii_case("postmaster") {
            return Ok(Mailbox { address, at });
        }
        return Err(PathError::Syntax);
    }
    if bytes[at] != b'@' {
        return Err(PathError::Syntax);
    }
    let domain = &bytes[at + 1..];
    if domain.len() > DOMAIN_BYTES_MAX {
        return Err(PathError::DomainTooLong);
    }
    check_domain(domain)?;
    Ok(Mailbox { address, at })
}

/// RFC 5322 §3.2.3 atext as a table; bytes >= 0x80 are UTF-8 (RFC 6531
/// §3.3), which the session refuses unless SMTPUTF8 was requested.
const ATEXT: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || c >= 0x80
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'/'
                    | b'='
                    | b'?'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'{'
                    | b'|'
                    | b'}'
                    | b'~'
            );
        b += 1;
    }
    table
};

fn is_atext(b: u8) -> bool {
    ATEXT[usize::from(b)]
}

fn check_dot_string(local: &[u8]) -> Result<(), PathError> {
    if local.is_empty() || local[0] == b'.' || local[local.len() - 1] == b'.' {
        return Err(PathError::Syntax);
    }
    let mut previous_dot = false;
    for &b in local {
        if b == b'.' {
            if previous_dot {
                return Err(PathError::Syntax);
            }
            previous_dot = true;
        } else if is_atext(b) {
            previous_dot = false;
        } else {
            return Err(PathError::Syntax);
        }
    }
    Ok(())
}

/// A domain name or an address literal (RFC 5321 §4.1.2, §4.1.3).
pub(crate) fn check_domain(domain: &[u8]) -> Result<(), PathError> {
    if domain.is_empty() {
        return Err(PathError::Syntax);
    }
    if domain[0] == b'[' {
        let inner = match domain.strip_suffix(b"]") {
            Some(inner) => &inner[1..],
            None => return Err(PathError::Syntax),
        };
        // dcontent: %d33-90 / %d94-126 (no '[', '\', ']').
        if inner.is_empty()
            || inner
                .iter()
                .any(|&b| !(33..=126).contains(&b) || (91..=93).contains(&b))
        {
            return Err(PathError::Syntax);
        }
        return Ok(());
    }
    // One pass: labels of letters, digits and hyphens (or UTF-8), not empty,
    // not starting or ending with a hyphen (RFC 5321 §4.1.2 sub-domain).
    let mut label_len = 0usize;
    let mut previous = b'.';
    for &b in domain {
        if b == b'.' {
            if label_len == 0 || previous == b'-' {
                return Err(PathError::Syntax);
            }
            label_len = 0;
        } else if b.is_ascii_alphanumeric() || b >= 0x80 || (b == b'-' && label_len > 0) {
            label_len += 1;
        } else {
            return Err(PathError::Syntax);
        }
        previous = b;
    }
    if label_len == 0 || previous == b'-' {
        return Err(PathError::Syntax);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths() {
        let (m, rest) = parse_path("<a.b@example.com> SIZE=1").unwrap();
        let m = m.unwrap();
        assert_eq!(
            (m.local_part(), m.domain(), rest),
            ("a.b", "example.com", " SIZE=1")
        );
        assert_eq!(parse_path("<>").unwrap().0, None);
        let (m, _) = parse_path("<@relay.example,@r2.example:u@x.example>").unwrap();
        assert_eq!(m.unwrap().as_str(), "u@x.example");
        let (m, _) = parse_path("<\"a>b\"@x.example>").unwrap();
        assert_eq!(m.unwrap().local_part(), "\"a>b\"");
        let (m, _) = parse_path("<Postmaster>").unwrap();
        assert_eq!(m.unwrap().domain(), "");
        assert!(parse_path("<u@[192.0.2.1]>").is_ok());
    }

    #[test]
    fn refuses_bad_paths() {
        assert_eq!(parse_path("a@b").unwrap_err(), PathError::Syntax);
        assert_eq!(parse_path("<a@b").unwrap_err(), PathError::Syntax);
        assert_eq!(parse_path("<a..b@c>").unwrap_err(), PathError::Syntax);
        assert_eq!(parse_path("<a@-c>").unwrap_err(), PathError::Syntax);
        assert_eq!(parse_path("<user>").unwrap_err(), PathError::Syntax);
        assert_eq!(parse_path("<a b@c>").unwrap_err(), PathError::Syntax);
        let long_local = format!("<{}@x.example>", "a".repeat(65));
        assert_eq!(
            parse_path(&long_local).unwrap_err(),
            PathError::LocalPartTooLong
        );
        let at_limit = format!("<{}@x.example>", "a".repeat(64));
        assert!(parse_path(&at_limit).is_ok());
        let long_path = format!("<{}@{}.example>", "a".repeat(60), "b.".repeat(100));
        assert_eq!(parse_path(&long_path).unwrap_err(), PathError::PathTooLong);
    }
}
