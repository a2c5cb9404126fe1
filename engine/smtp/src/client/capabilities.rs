//! What a server offered in its EHLO reply (RFC 5321 §4.1.1.1).

use bitflags::bitflags;

use crate::command::parse_decimal;
use crate::extensions::Extensions;
use crate::reply::Reply;

bitflags! {
    /// SASL mechanisms listed after `AUTH` (RFC 4954 §3).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct AuthMechanisms: u8 {
        /// `PLAIN` (RFC 4616).
        const PLAIN = 1;
        /// `LOGIN` (draft, widely deployed).
        const LOGIN = 1 << 1;
        /// `CRAM-MD5` (RFC 2195).
        const CRAM_MD5 = 1 << 2;
        /// `XOAUTH2`.
        const XOAUTH2 = 1 << 3;
        /// `OAUTHBEARER` (RFC 7628).
        const OAUTHBEARER = 1 << 4;
        /// `SCRAM-SHA-256` (RFC 7677).
        const SCRAM_SHA_256 = 1 << 5;
    }
}

const MECHANISMS: [(AuthMechanisms, &str); 6] = [
    (AuthMechanisms::PLAIN, "PLAIN"),
    (AuthMechanisms::LOGIN, "LOGIN"),
    (AuthMechanisms::CRAM_MD5, "CRAM-MD5"),
    (AuthMechanisms::XOAUTH2, "XOAUTH2"),
    (AuthMechanisms::OAUTHBEARER, "OAUTHBEARER"),
    (AuthMechanisms::SCRAM_SHA_256, "SCRAM-SHA-256"),
];

/// The server's extensions and their parameters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Capabilities {
    /// Extensions offered.
    pub extensions: Extensions,
    /// `SIZE n` with `n > 0` (RFC 1870 §4: `SIZE 0` or no number means no
    /// fixed limit).
    pub size_max: Option<u64>,
    /// Mechanisms after `AUTH` (or the old `AUTH=` form).
    pub auth: AuthMechanisms,
}

impl Capabilities {
    /// Reads the capabilities from a positive EHLO reply: every line after
    /// the first is `keyword [params]`. Unknown keywords are ignored;
    /// matching is case-insensitive and allocates nothing.
    pub fn from_ehlo(reply: &Reply) -> Self {
        let mut caps = Self::default();
        for line in reply.lines().skip(1) {
            let line = line.trim();
            let (keyword, params) = match line.find([' ', '=']) {
                Some(i) => (&line[..i], &line[i + 1..]),
                None => (line, ""),
            };
            let Some(flag) = Extensions::from_keyword(keyword) else {
                continue;
            };
            caps.extensions |= flag;
            if flag == Extensions::SIZE {
                caps.size_max = params
                    .split(' ')
                    .next()
                    .and_then(parse_decimal)
                    .filter(|&n| n > 0);
            } else if flag == Extensions::AUTH {
                for word in params.split([' ', '=']) {
                    if let Some((mechanism, _)) = MECHANISMS
                        .iter()
                        .find(|(_, n)| n.eq_ignore_ascii_case(word))
                    {
                        caps.auth |= *mechanism;
                    }
                }
            }
        }
        caps
    }

    /// True when `flag` was offered.
    pub fn offers(&self, flag: Extensions) -> bool {
        self.extensions.contains(flag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::ReplyCode;

    #[test]
    fn parses_a_typical_ehlo_reply() {
        let reply = Reply::plain(
            ReplyCode::OK,
            "mx.example Hello\npipelining\nSIZE 35882577\n8BITMIME\nAUTH LOGIN plain XOAUTH2\nAUTH=LOGIN\nENHANCEDSTATUSCODES\nchunking\nSMTPUTF8\nX-UNKNOWN foo\nSTARTTLS",
        );
        let caps = Capabilities::from_ehlo(&reply);
        assert!(caps.offers(Extensions::PIPELINING | Extensions::CHUNKING | Extensions::STARTTLS));
        assert!(caps.offers(
            Extensions::EIGHT_BIT_MIME | Extensions::SMTPUTF8 | Extensions::ENHANCED_STATUS_CODES
        ));
        assert!(!caps.offers(Extensions::DSN));
        assert_eq!(caps.size_max, Some(35_882_577));
        assert_eq!(
            caps.auth,
            AuthMechanisms::LOGIN | AuthMechanisms::PLAIN | AuthMechanisms::XOAUTH2
        );
    }

    #[test]
    fn size_zero_means_no_limit() {
        let caps = Capabilities::from_ehlo(&Reply::plain(ReplyCode::OK, "x\nSIZE 0"));
        assert!(caps.offers(Extensions::SIZE));
        assert_eq!(caps.size_max, None);
        let caps = Capabilities::from_ehlo(&Reply::plain(ReplyCode::OK, "x\nSIZE"));
        assert_eq!(caps.size_max, None);
    }

    #[test]
    fn first_line_is_not_a_keyword() {
        let caps = Capabilities::from_ehlo(&Reply::plain(ReplyCode::OK, "PIPELINING"));
        assert!(caps.extensions.is_empty());
    }
}
