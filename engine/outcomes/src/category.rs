//! Bounce categories (the set PowerMTA operators know) and the RFC 3463
//! enhanced-status-code table used both as the classifier's fallback and
//! for the human description in accounting records.

use std::fmt;

use serde::{Deserialize, Serialize};
use sluice_smtp::EnhancedCode;

/// Why a recipient failed, in PowerMTA's vocabulary.
///
/// The variant order is the default precedence of the classifier: when a
/// reply matches rules of several categories, the earliest variant wins
/// (the specific "spam" beats the generic "policy", "mailbox full" beats
/// "bad mailbox").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    /// The message outlived its queue lifetime.
    MessageExpired,
    /// A virus or malware was found in the message.
    VirusRelated,
    /// The receiver thinks the message or the sending IP is spam.
    SpamRelated,
    /// The content was refused (size, attachments, encoding).
    ContentRelated,
    /// Mailbox or system storage full.
    QuotaIssues,
    /// The sender address or its domain was refused. Ahead of the
    /// recipient categories: "Sender address rejected: Domain not found"
    /// is about the sender.
    InvalidSender,
    /// The mailbox exists but is disabled, dormant or expired.
    InactiveMailbox,
    /// The mailbox does not exist.
    BadMailbox,
    /// The domain does not exist or accepts no mail.
    BadDomain,
    /// The receiver refuses to relay for us.
    RelayingIssues,
    /// No route to the destination (DNS, loops, MX trouble).
    RoutingErrors,
    /// Refused by local policy: authentication (SPF/DKIM/DMARC),
    /// reputation, rate limits.
    PolicyRelated,
    /// The receiving system is misconfigured.
    BadConfiguration,
    /// The host did not answer (connect timeout, refused).
    NoAnswerFromHost,
    /// The connection broke or TLS failed.
    BadConnection,
    /// An SMTP protocol error.
    ProtocolErrors,
    /// None of the above.
    Other,
}

impl Category {
    /// Every category in precedence order.
    pub const ALL: [Category; 17] = [
        Category::MessageExpired,
        Category::VirusRelated,
        Category::SpamRelated,
        Category::ContentRelated,
        Category::QuotaIssues,
        Category::InvalidSender,
        Category::InactiveMailbox,
        Category::BadMailbox,
        Category::BadDomain,
        Category::RelayingIssues,
        Category::RoutingErrors,
        Category::PolicyRelated,
        Category::BadConfiguration,
        Category::NoAnswerFromHost,
        Category::BadConnection,
        Category::ProtocolErrors,
        Category::Other,
    ];

    /// The kebab-case name used in rules files and accounting logs.
    pub const fn name(self) -> &'static str {
        match self {
            Category::MessageExpired => "message-expired",
            Category::VirusRelated => "virus-related",
            Category::SpamRelated => "spam-related",
            Category::ContentRelated => "content-related",
            Category::QuotaIssues => "quota-issues",
            Category::InactiveMailbox => "inactive-mailbox",
            Category::BadMailbox => "bad-mailbox",
            Category::BadDomain => "bad-domain",
            Category::InvalidSender => "invalid-sender",
            Category::RelayingIssues => "relaying-issues",
            Category::RoutingErrors => "routing-errors",
            Category::PolicyRelated => "policy-related",
            Category::BadConfiguration => "bad-configuration",
            Category::NoAnswerFromHost => "no-answer-from-host",
            Category::BadConnection => "bad-connection",
            Category::ProtocolErrors => "protocol-errors",
            Category::Other => "other",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// RFC 3463 §3 subject.detail codes (plus RFC 3886, 4468, 4954, 5248, 7372,
/// 7505 additions from the IANA registry) with their descriptions and the
/// category a reply carrying only that code falls into.
const CODES: &[(u16, u16, &str, Category)] = &[
    // §3.2 Addressing status.
    (1, 0, "other address status", Category::BadMailbox),
    (
        1,
        1,
        "bad destination mailbox address",
        Category::BadMailbox,
    ),
    (1, 2, "bad destination system address", Category::BadDomain),
    (
        1,
        3,
        "bad destination mailbox address syntax",
        Category::BadMailbox,
    ),
    (
        1,
        4,
        "destination mailbox address ambiguous",
        Category::BadMailbox,
    ),
    (1, 5, "destination address valid", Category::Other),
    (
        1,
        6,
        "destination mailbox has moved",
        Category::InactiveMailbox,
    ),
    (
        1,
        7,
        "bad sender's mailbox address syntax",
        Category::InvalidSender,
    ),
    (1, 8, "bad sender's system address", Category::InvalidSender),
    // RFC 7505 §4.2: the domain publishes a null MX.
    (1, 10, "recipient address has null MX", Category::BadDomain),
    // §3.3 Mailbox status.
    (
        2,
        0,
        "other or undefined mailbox status",
        Category::InactiveMailbox,
    ),
    (
        2,
        1,
        "mailbox disabled, not accepting messages",
        Category::InactiveMailbox,
    ),
    (2, 2, "mailbox full", Category::QuotaIssues),
    (
        2,
        3,
        "message length exceeds administrative limit",
        Category::ContentRelated,
    ),
    (
        2,
        4,
        "mailing list expansion problem",
        Category::BadConfiguration,
    ),
    // §3.4 Mail system status.
    (
        3,
        0,
        "other or undefined mail system status",
        Category::Other,
    ),
    (3, 1, "mail system full", Category::QuotaIssues),
    (
        3,
        2,
        "system not accepting network messages",
        Category::Other,
    ),
    (
        3,
        3,
        "system not capable of selected features",
        Category::ProtocolErrors,
    ),
    (3, 4, "message too big for system", Category::ContentRelated),
    (
        3,
        5,
        "system incorrectly configured",
        Category::BadConfiguration,
    ),
    // §3.5 Network and routing status.
    (
        4,
        0,
        "other or undefined network or routing status",
        Category::RoutingErrors,
    ),
    (4, 1, "no answer from host", Category::NoAnswerFromHost),
    (4, 2, "bad connection", Category::BadConnection),
    (4, 3, "directory server failure", Category::RoutingErrors),
    (4, 4, "unable to route", Category::RoutingErrors),
    (4, 5, "mail system congestion", Category::Other),
    (4, 6, "routing loop detected", Category::RoutingErrors),
    (4, 7, "delivery time expired", Category::MessageExpired),
    // §3.6 Mail delivery protocol status.
    (
        5,
        0,
        "other or undefined protocol status",
        Category::ProtocolErrors,
    ),
    (5, 1, "invalid command", Category::ProtocolErrors),
    (5, 2, "syntax error", Category::ProtocolErrors),
    (5, 3, "too many recipients", Category::ProtocolErrors),
    (5, 4, "invalid command arguments", Category::ProtocolErrors),
    (5, 5, "wrong protocol version", Category::ProtocolErrors),
    (
        5,
        6,
        "authentication exchange line too long",
        Category::ProtocolErrors,
    ),
    // §3.7 Message content or media status.
    (
        6,
        0,
        "other or undefined media error",
        Category::ContentRelated,
    ),
    (6, 1, "media not supported", Category::ContentRelated),
    (
        6,
        2,
        "conversion required and prohibited",
        Category::ContentRelated,
    ),
    (
        6,
        3,
        "conversion required but not supported",
        Category::ContentRelated,
    ),
    (
        6,
        4,
        "conversion with loss performed",
        Category::ContentRelated,
    ),
    (6, 5, "conversion failed", Category::ContentRelated),
    (
        6,
        6,
        "message content not available",
        Category::ContentRelated,
    ),
    (
        6,
        7,
        "non-ASCII addresses not permitted",
        Category::ContentRelated,
    ),
    // §3.8 Security or policy status.
    (
        7,
        0,
        "other or undefined security status",
        Category::PolicyRelated,
    ),
    (
        7,
        1,
        "delivery not authorized, message refused",
        Category::PolicyRelated,
    ),
    (
        7,
        2,
        "mailing list expansion prohibited",
        Category::PolicyRelated,
    ),
    (
        7,
        3,
        "security conversion required but not possible",
        Category::PolicyRelated,
    ),
    (
        7,
        4,
        "security features not supported",
        Category::PolicyRelated,
    ),
    (7, 5, "cryptographic failure", Category::PolicyRelated),
    (
        7,
        6,
        "cryptographic algorithm not supported",
        Category::PolicyRelated,
    ),
    (7, 7, "message integrity failure", Category::PolicyRelated),
    (
        7,
        8,
        "authentication credentials invalid",
        Category::PolicyRelated,
    ),
    (
        7,
        9,
        "authentication mechanism is too weak",
        Category::PolicyRelated,
    ),
    (7, 10, "encryption needed", Category::PolicyRelated),
    (
        7,
        11,
        "encryption required for requested authentication mechanism",
        Category::PolicyRelated,
    ),
    (
        7,
        12,
        "a password transition is needed",
        Category::PolicyRelated,
    ),
    (7, 13, "user account disabled", Category::InactiveMailbox),
    (
        7,
        14,
        "trust relationship required",
        Category::PolicyRelated,
    ),
    (7, 15, "priority level is too low", Category::PolicyRelated),
    (
        7,
        16,
        "message is too big for the specified priority",
        Category::ContentRelated,
    ),
    (
        7,
        17,
        "mailbox owner has changed",
        Category::InactiveMailbox,
    ),
    (7, 18, "domain owner has changed", Category::BadDomain),
    (
        7,
        19,
        "RRVS test cannot be completed",
        Category::PolicyRelated,
    ),
    (
        7,
        20,
        "no passing DKIM signature found",
        Category::PolicyRelated,
    ),
    (
        7,
        21,
        "no acceptable DKIM signature found",
        Category::PolicyRelated,
    ),
    (
        7,
        22,
        "no valid author-matched DKIM signature found",
        Category::PolicyRelated,
    ),
    (7, 23, "SPF validation failed", Category::PolicyRelated),
    (7, 24, "SPF validation error", Category::PolicyRelated),
    (
        7,
        25,
        "reverse DNS validation failed",
        Category::PolicyRelated,
    ),
    (
        7,
        26,
        "multiple authentication checks failed",
        Category::PolicyRelated,
    ),
    (7, 27, "sender address has null MX", Category::InvalidSender),
    (7, 28, "mail flood detected", Category::SpamRelated),
    (7, 29, "ARC validation failure", Category::PolicyRelated),
    (
        7,
        30,
        "REQUIRETLS support required",
        Category::PolicyRelated,
    ),
];

fn lookup(code: EnhancedCode) -> Option<&'static (u16, u16, &'static str, Category)> {
    CODES
        .iter()
        .find(|(s, d, _, _)| *s == code.subject && *d == code.detail)
}

/// The RFC 3463 description of `code`'s subject and detail, e.g.
/// `"mailbox full"` for `5.2.2`; `None` for unregistered codes.
pub fn describe(code: EnhancedCode) -> Option<&'static str> {
    lookup(code).map(|e| e.2)
}

/// The category an enhanced code implies on its own: the exact
/// subject.detail when registered, else the subject's `.0` entry (RFC 3463
/// §2: an unknown detail is treated as `X.Y.0`).
pub fn category_for_code(code: EnhancedCode) -> Category {
    if let Some(entry) = lookup(code) {
        return entry.3;
    }
    let generic = EnhancedCode { detail: 0, ..code };
    lookup(generic).map_or(Category::Other, |e| e.3)
}

/// The category a bare reply code implies when there is no enhanced code
/// and no rule matched (RFC 5321 §4.2.3 meanings; `550`/`554` are too broad
/// to say more than "other").
pub fn category_for_reply_code(code: u16) -> Category {
    match code {
        // 421: service not available, closing the transmission channel.
        421 => Category::BadConnection,
        // 452 / 552: insufficient storage / exceeded storage allocation.
        452 | 552 => Category::QuotaIssues,
        // 500-504: syntax errors and unimplemented commands.
        500..=504 => Category::ProtocolErrors,
        // 551: user not local; please try <forward-path>.
        551 => Category::RelayingIssues,
        // 553: mailbox name not allowed.
        553 => Category::BadMailbox,
        // 556: domain does not accept mail (RFC 7504).
        556 => Category::BadDomain,
        _ => Category::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde() {
        for c in Category::ALL {
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.name()));
            assert_eq!(serde_json::from_str::<Category>(&json).unwrap(), c);
        }
    }

    #[test]
    fn all_is_in_declaration_order() {
        for pair in Category::ALL.windows(2) {
            assert!(pair[0] < pair[1]);
        }
    }

    #[test]
    fn code_fallbacks() {
        let c = |s, d| EnhancedCode::new(5, s, d).unwrap();
        assert_eq!(category_for_code(c(1, 1)), Category::BadMailbox);
        assert_eq!(category_for_code(c(2, 2)), Category::QuotaIssues);
        assert_eq!(category_for_code(c(4, 7)), Category::MessageExpired);
        // Unregistered detail falls back to X.7.0.
        assert_eq!(category_for_code(c(7, 999)), Category::PolicyRelated);
        assert_eq!(category_for_code(c(9, 1)), Category::Other);
        assert_eq!(describe(c(1, 1)), Some("bad destination mailbox address"));
        assert_eq!(describe(c(9, 9)), None);
    }
}
