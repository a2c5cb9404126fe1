//! Finding the author domain: the domain of the address in the From header
//! (RFC 5322 §3.6.2), which picks the signing key.

/// Why the author domain could not be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorError {
    /// The header block has no From field (RFC 5322 §3.6 requires one).
    #[error("the message has no From header")]
    NoFrom,
    /// More than one From field (RFC 5322 §3.6 allows exactly one).
    #[error("the message has more than one From header")]
    MultipleFrom,
    /// The From field holds no `local@domain` address.
    #[error("the From header has no address with a domain")]
    NoAddress,
    /// The From field lists mailboxes in different domains; there is no
    /// single domain to sign as.
    #[error("the From header lists addresses in different domains")]
    MixedDomains,
}

/// Longest From field value examined; longer values are refused as having
/// no address rather than scanned.
pub const FROM_BYTES_MAX: usize = 16 * 1024;

/// The lower-case domain of the From header's address(es), written into
/// `domain` (cleared first) so a caller can reuse one buffer per shard.
pub fn author_domain(message: &[u8], domain: &mut String) -> Result<(), AuthorError> {
    let mut from = None;
    for (name, value) in HeaderFields::new(message) {
        if name.eq_ignore_ascii_case(b"From") {
            if from.is_some() {
                return Err(AuthorError::MultipleFrom);
            }
            from = Some(value);
        }
    }
    let value = from.ok_or(AuthorError::NoFrom)?;
    if value.len() > FROM_BYTES_MAX {
        return Err(AuthorError::NoAddress);
    }
    domain.clear();
    let mut found = false;
    for address in Addresses::new(value) {
        let Some(at) = address.iter().rposition(|b| *b == b'@') else {
            continue;
        };
        let candidate = trim(&address[at + 1..]);
        // SMTPUTF8 mail may carry a U-label domain (RFC 6532): keep valid
        // UTF-8 without spaces or controls; it matches no configured
        // (A-label) key, so only a mapping in A-label form or the default
        // domain can sign it.
        let Ok(text) = std::str::from_utf8(candidate) else {
            continue;
        };
        if text.is_empty() || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            continue;
        }
        if !found {
            domain.push_str(text);
            domain.make_ascii_lowercase();
            found = true;
        } else if !candidate.eq_ignore_ascii_case(domain.as_bytes()) {
            return Err(AuthorError::MixedDomains);
        }
    }
    if found {
        Ok(())
    } else {
        Err(AuthorError::NoAddress)
    }
}

/// Iterates over `(name, value)` of the header block (RFC 5322 §2.2): a
/// field runs to the line break not followed by SP or HTAB; the block ends
/// at the first empty line. Lines without a colon are skipped.
pub(crate) struct HeaderFields<'a> {
    message: &'a [u8],
    index: usize,
}

impl<'a> HeaderFields<'a> {
    pub(crate) fn new(message: &'a [u8]) -> Self {
        HeaderFields { message, index: 0 }
    }
}

impl<'a> Iterator for HeaderFields<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let rest = &self.message[self.index.min(self.message.len())..];
            if rest.is_empty() || rest.starts_with(b"\r\n") || rest.starts_with(b"\n") {
                self.index = self.message.len();
                return None;
            }
            // Find the end of this field: a LF not followed by folding white space.
            let mut end = rest.len();
            let mut search = 0;
            while let Some(lf) = rest[search..].iter().position(|b| *b == b'\n') {
                let at = search + lf;
                match rest.get(at + 1) {
                    Some(b' ' | b'\t') => search = at + 1,
                    _ => {
                        end = at + 1;
                        break;
                    }
                }
            }
            let field = &rest[..end];
            self.index += end;
            if let Some(colon) = field.iter().position(|b| *b == b':') {
                return Some((&field[..colon], &field[colon + 1..]));
            }
        }
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// Iterates over the addr-specs of a mailbox-list (RFC 5322 §3.4): the
/// text inside `<...>` when a mailbox has one, else the whole mailbox;
/// quoted strings and comments are skipped so a `,`, `<` or `@` inside a
/// display name does not count. Group syntax (`name: a@b, c@d;`) yields the
/// members.
struct Addresses<'a> {
    value: &'a [u8],
    index: usize,
}

impl<'a> Addresses<'a> {
    fn new(value: &'a [u8]) -> Self {
        Addresses { value, index: 0 }
    }
}

impl<'a> Iterator for Addresses<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        while self.index < self.value.len() {
            let start = self.index;
            let mut angle: Option<(usize, usize)> = None;
            // Last run outside quotes and comments that holds an '@'.
            let mut bare: Option<(usize, usize)> = None;
            let mut run_start = start;
            let mut depth = 0usize; // comment nesting
            let mut quoted = false;
            let mut i = start;
            while i < self.value.len() {
                let b = self.value[i];
                debug_assert!(i >= start);
                if quoted {
                    match b {
                        b'\\' => i += 1,
                        b'"' => {
                            quoted = false;
                            run_start = i + 1;
                        }
                        _ => {}
                    }
                } else if depth > 0 {
                    match b {
                        b'\\' => i += 1,
                        b'(' => depth += 1,
                        b')' => {
                            depth -= 1;
                            if depth == 0 {
                                run_start = i + 1;
                            }
                        }
                        _ => {}
                    }
                } else {
                    match b {
                        b'"' | b'(' => {
                            consider(self.value, &mut bare, run_start, i);
                            if b == b'"' {
                                quoted = true;
                            } else {
                                depth = 1;
                            }
                        }
                        b'<' => {
                            let end = self.value[i..]
                                .iter()
                                .position(|c| *c == b'>')
                                .map_or(self.value.len(), |p| i + p);
                            angle = Some((i + 1, end));
                            i = end;
                            run_start = (end + 1).min(self.value.len());
                        }
                        // A group's display name ends at ':'; its members follow.
                        b':' => {
                            bare = None;
                            run_start = i + 1;
                        }
                        b',' | b';' => break,
                        _ => {}
                    }
                }
                i += 1;
            }
            consider(self.value, &mut bare, run_start, i.min(self.value.len()));
            self.index = i + 1;
            if let Some((s, e)) = angle {
                return Some(&self.value[s..e.max(s)]);
            }
            // No angle brackets: the addr-spec is the text outside quotes and
            // comments; pick the piece that holds an '@'.
            if let Some((s, e)) = bare {
                return Some(&self.value[s..e]);
            }
        }
        None
    }
}

fn consider(value: &[u8], best: &mut Option<(usize, usize)>, start: usize, end: usize) {
    if start < end && value[start..end].contains(&b'@') {
        *best = Some((start, end));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain_of(from: &str) -> Result<String, AuthorError> {
        let message = format!("Subject: x\r\nFrom:{from}\r\nTo: a@b.example\r\n\r\nbody\r\n");
        let mut domain = String::new();
        author_domain(message.as_bytes(), &mut domain).map(|_| domain)
    }

    #[test]
    fn common_forms() {
        assert_eq!(
            domain_of(" alice@Example.COM").as_deref(),
            Ok("example.com")
        );
        assert_eq!(
            domain_of(" Alice <alice@example.com>").as_deref(),
            Ok("example.com")
        );
        assert_eq!(
            domain_of(" \"Smith, J <j@evil.example>\" <j@example.com>").as_deref(),
            Ok("example.com")
        );
        assert_eq!(
            domain_of(" alice@example.com (Alice @ evil.example)").as_deref(),
            Ok("example.com")
        );
        assert_eq!(
            domain_of(" =?UTF-8?B?w4lsb2R5?=\r\n <e@example.com>").as_deref(),
            Ok("example.com")
        );
        assert_eq!(
            domain_of(" a@example.com, Bob <b@EXAMPLE.com>").as_deref(),
            Ok("example.com")
        );
        assert_eq!(
            domain_of(" Team: a@example.com, b@example.com;").as_deref(),
            Ok("example.com")
        );
    }

    #[test]
    fn utf8_domain_is_kept() {
        let message = "From: r\u{e9}mi@\u{c9}cole.example\r\n\r\nx\r\n";
        let mut domain = String::new();
        assert_eq!(author_domain(message.as_bytes(), &mut domain), Ok(()));
        assert_eq!(domain, "\u{c9}cole.example");
        let bad = b"From: a@\xff\xfe.example\r\n\r\n";
        assert_eq!(author_domain(bad, &mut domain), Err(AuthorError::NoAddress));
    }

    #[test]
    fn refusals() {
        assert_eq!(
            domain_of(" a@example.com, b@other.example"),
            Err(AuthorError::MixedDomains)
        );
        assert_eq!(domain_of(" undisclosed"), Err(AuthorError::NoAddress));
        assert_eq!(domain_of(" <>"), Err(AuthorError::NoAddress));
        let mut domain = String::new();
        assert_eq!(
            author_domain(b"To: a@b\r\n\r\n", &mut domain),
            Err(AuthorError::NoFrom)
        );
        assert_eq!(
            author_domain(b"From: a@b\r\nFrom: c@b\r\n\r\n", &mut domain),
            Err(AuthorError::MultipleFrom)
        );
    }
}
