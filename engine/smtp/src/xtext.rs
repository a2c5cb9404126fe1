//! xtext (RFC 3461 §4): the encoding of ENVID, ORCPT and AUTH= values.

use std::borrow::Cow;

/// Appends `value` xtext-encoded to `out`: `+`, `=`, and bytes outside
/// `!`..=`~` become `+XX` (RFC 3461 §4, upper-case hex).
pub fn encode(value: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in value {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'+', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

/// Decodes xtext. `None` when malformed: a byte outside `!`..=`~`, a bare
/// `=`, a `+` not followed by two hex digits, or a result that is not UTF-8.
/// Lower-case hex is accepted (seen in the wild) though RFC 3461 asks for
/// upper case. Borrows when nothing is escaped.
pub fn decode(value: &str) -> Option<Cow<'_, str>> {
    let bytes = value.as_bytes();
    if bytes
        .iter()
        .any(|&b| !(b'!'..=b'~').contains(&b) || b == b'=')
    {
        return None;
    }
    if !bytes.contains(&b'+') {
        return Some(Cow::Borrowed(value));
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'+' {
            let hi = hex(*bytes.get(i + 1)?)?;
            let lo = hex(*bytes.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut out = Vec::new();
        encode("a+b=c d\u{e9}".as_bytes(), &mut out);
        assert_eq!(out, b"a+2Bb+3Dc+20d+C3+A9");
        let s = std::str::from_utf8(&out).unwrap();
        assert_eq!(decode(s).unwrap(), "a+b=c d\u{e9}");
    }

    #[test]
    fn rejects_malformed() {
        assert!(decode("a+4").is_none());
        assert!(decode("a+G0").is_none());
        assert!(decode("a=b").is_none());
        assert!(decode("a b").is_none());
        assert!(decode("+FF").is_none());
        assert!(matches!(decode("plain").unwrap(), Cow::Borrowed(_)));
    }
}
