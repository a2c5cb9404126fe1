//! What happens to a message after Sluice tried to deliver it, in the forms
//! operators and senders read: bounce classification, delivery status
//! notifications and accounting records.
//!
//! This crate is pure: it does no network or disk I/O (apart from reading
//! a bounce-rules file whose path the caller passes to
//! [`Classifier::from_path`]), reads no clock (every timestamp is passed
//! in) and never depends on glommio. The engine owns the queues, the log
//! writers and the decision of when to bounce; this crate only answers
//! "which category is this reply", "what are the bytes of this bounce"
//! and "what is this event's log line".
//!
//! # Bounce classification ([`classify`], [`category`])
//!
//! [`Category`] is the vocabulary PowerMTA operators know (`bad-mailbox`,
//! `spam-related`, `message-expired`, ...). A [`Classifier`] is compiled
//! from a TOML rules file (category → list of regexes, see [`classify`]
//! for the format) read through `serde_path_to_error` with
//! `deny_unknown_fields`, so a typo names its key; every bad regex is
//! reported with its category and index, not just the first. The default
//! rules (`bounce-rules.toml`, embedded) are tested against a table of real
//! replies from Gmail, Microsoft 365, Yahoo, iCloud, Comcast, GMX/web.de,
//! Orange, Mimecast, Proofpoint and Barracuda. All patterns live in one
//! `regex::RegexSet`, so classifying is one scan of the reply whatever the
//! number of rules; the lowest matching index wins, which is category
//! precedence (specific before generic: spam before policy, quota before
//! bad mailbox, sender before recipient) and then file order. When no rule
//! matches, the RFC 3463 enhanced code decides, then the bare reply code.
//! Permanence comes from the reply's first digit only (RFC 5321 §4.2.1),
//! never from the category.
//!
//! # DSNs ([`dsn`])
//!
//! [`dsn::build`] writes an RFC 6522 `multipart/report;
//! report-type=delivery-status` message: a human-readable part, the RFC
//! 3464 `message/delivery-status` part (Reporting-MTA, Original-Envelope-Id,
//! Arrival-Date, and per recipient Final-Recipient, Original-Recipient,
//! Action, Status, Remote-MTA, Diagnostic-Code, Last-Attempt-Date,
//! Will-Retry-Until) and the original as `message/rfc822` (RET=FULL) or
//! `text/rfc822-headers` (RET=HDRS or default). It returns `None` when the
//! original sender is `<>` (never bounce a bounce) or when NOTIFY excludes
//! every recipient's outcome. The result is 7-bit with CRLF lines of at
//! most 998 octets: echoed texts lose control characters, non-ASCII becomes
//! `?` (RFC 6533 escapes in addresses), long fields are folded, and an
//! original that is not 7-bit clean is returned as quoted-printable
//! headers rather than as an illegal 8-bit `message/rfc822`. A test parses
//! the output with Python's `email` package.
//!
//! # Accounting ([`accounting`])
//!
//! [`Record`] is one event for one recipient (Reception, Delivery,
//! TransientFailure, Bounce, Expiration, AdminBounce) with ids, envelope,
//! queue/site/source, size, reply, peer and local addresses, timestamps,
//! attempts, category, TLS details and tenant/campaign. It serialises to
//! one JSON line and to a PowerMTA-compatible CSV line (the mapping of
//! event kinds to PowerMTA's `type` letters is in [`accounting`]); both
//! append to a caller-owned buffer so a shard can batch thousands of
//! records into one write.
#![warn(missing_docs)]

pub mod accounting;
pub mod category;
pub mod classify;
pub mod dsn;
mod time;

pub use accounting::{write_csv_header, EventKind, Record, ResponseRecord, TlsRecord, CSV_HEADER};
pub use category::{category_for_code, category_for_reply_code, describe, Category};
pub use classify::{Classification, Classifier, MatchSource, RuleProblem, RulesError};
pub use dsn::{Action, Dsn, DsnRecipient, DsnRequest, OriginalRecipient};
pub use time::unix_ms;
