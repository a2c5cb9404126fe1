//! `sluice-smtp`: the sans-io SMTP protocol core shared by the Sluice engine
//! (both sides), the sink and the bench harness.
//!
//! It turns bytes into events and events into bytes: command and reply
//! parsers, the DATA un-stuffer and dot-stuffer, BDAT chunk framing, reply
//! and command encoders, EHLO capabilities, and the two session state
//! machines ([`server::ServerSession`] and [`client::ClientSession`]). It
//! never opens a socket, never awaits, never reads a clock and never spawns:
//! drivers own I/O, buffers and timers, and feed what happened in. That
//! keeps every protocol decision testable by replaying bytes, and lets the
//! same code run under glommio, in tests and in fuzzers.
//!
//! # Design
//! - Parsers are resumable and report how many bytes they used, so several
//!   pipelined commands or replies in one read are handled one after the
//!   other (RFC 2920). Every length limit (RFC 5321 §4.5.3.1) is enforced
//!   before anything is buffered.
//! - Events borrow from the input: a command's paths and parameters are
//!   `&str` slices of the line, and message bodies come out as slices of
//!   the read buffer with the stuffing dots left out. Nothing is copied
//!   except a CR held back across two reads.
//! - Encoders append to a caller-owned `Vec<u8>`.
//! - Peer bytes never panic: bad input becomes a typed error or a reply.
//!   `assert!`s guard our own invariants only.
//!
//! # Modules
//! - [`reply`]: reply codes, enhanced status codes, the reply encoder.
//! - [`command`]: command line parser and MAIL/RCPT parameters.
//! - [`data`]: DATA receiving (un-stuffing, exact end marker) and sending
//!   (dot-stuffing from borrowed slices).
//! - [`server`]: the server session (pipelining, deferred in-order replies,
//!   BDAT, STARTTLS, AUTH hand-off).
//! - [`client`]: reply parser, EHLO capabilities, command encoders and the
//!   client session (pipelined transactions back to back, BDAT, STARTTLS,
//!   per-recipient outcomes).
#![warn(missing_docs)]

pub mod address;
pub mod client;
pub mod command;
pub mod data;
pub mod extensions;
pub mod limits;
pub mod reply;
pub mod server;
pub mod xtext;

pub use address::{Mailbox, PathError};
pub use command::{
    parse_command, Body, Command, CommandError, MailParams, Notify, Orcpt, RcptParams, Ret,
};
pub use data::{DataReceiver, DataStep, DotStuffer, Violations};
pub use extensions::Extensions;
pub use reply::{EnhancedCode, Reply, ReplyCode, Severity};
