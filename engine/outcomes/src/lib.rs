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
