//! ESMTP service extensions as bitflags, shared by the server (what it
//! advertises) and the client (what the server offered).

use bitflags::bitflags;

bitflags! {
    /// ESMTP extensions (RFC 5321 §2.2). Keywords match case-insensitively.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct Extensions: u16 {
        /// `PIPELINING` (RFC 2920).
        const PIPELINING = 1;
        /// `CHUNKING`: BDAT (RFC 3030).
        const CHUNKING = 1 << 1;
        /// `8BITMIME` (RFC 6152).
        const EIGHT_BIT_MIME = 1 << 2;
        /// `SMTPUTF8` (RFC 6531).
        const SMTPUTF8 = 1 << 3;
        /// `SIZE` (RFC 1870).
        const SIZE = 1 << 4;
        /// `ENHANCEDSTATUSCODES` (RFC 2034).
        const ENHANCED_STATUS_CODES = 1 << 5;
        /// `DSN` (RFC 3461).
        const DSN = 1 << 6;
        /// `STARTTLS` (RFC 3207).
        const STARTTLS = 1 << 7;
        /// `AUTH` (RFC 4954).
        const AUTH = 1 << 8;
        /// `BINARYMIME` (RFC 3030 §3); only meaningful with CHUNKING.
        const BINARY_MIME = 1 << 9;
    }
}

impl Extensions {
    /// The keyword as advertised, for a single flag.
    pub fn keyword(self) -> Option<&'static str> {
        KEYWORDS
            .iter()
            .find(|(flag, _)| *flag == self)
            .map(|(_, keyword)| *keyword)
    }

    /// The flag for an EHLO keyword, matched case-insensitively without
    /// allocating.
    pub fn from_keyword(keyword: &str) -> Option<Self> {
        KEYWORDS
            .iter()
            .find(|(_, k)| k.eq_ignore_ascii_case(keyword))
            .map(|(flag, _)| *flag)
    }
}

/// Advertising order in EHLO replies.
pub(crate) const KEYWORDS: [(Extensions, &str); 10] = [
    (Extensions::PIPELINING, "PIPELINING"),
    (Extensions::SIZE, "SIZE"),
    (Extensions::EIGHT_BIT_MIME, "8BITMIME"),
    (Extensions::SMTPUTF8, "SMTPUTF8"),
    (Extensions::ENHANCED_STATUS_CODES, "ENHANCEDSTATUSCODES"),
    (Extensions::DSN, "DSN"),
    (Extensions::CHUNKING, "CHUNKING"),
    (Extensions::BINARY_MIME, "BINARYMIME"),
    (Extensions::STARTTLS, "STARTTLS"),
    (Extensions::AUTH, "AUTH"),
];
