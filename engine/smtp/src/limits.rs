//! Protocol size limits (RFC 5321 §4.5.3.1) shared by both sides.

/// Local part of a mailbox, octets (RFC 5321 §4.5.3.1.1).
pub const LOCAL_PART_BYTES_MAX: usize = 64;
/// Domain, octets (RFC 5321 §4.5.3.1.2).
pub const DOMAIN_BYTES_MAX: usize = 255;
/// Reverse- or forward-path including `<`, `>` and separators (§4.5.3.1.3).
pub const PATH_BYTES_MAX: usize = 256;
/// Command line including the verb and CRLF (§4.5.3.1.4). Extensions may
/// raise it (RFC 1870 etc. add parameters); the server config decides.
pub const COMMAND_LINE_BYTES_MAX: usize = 512;
/// Reply line including the code and CRLF (§4.5.3.1.5).
pub const REPLY_LINE_BYTES_MAX: usize = 512;
/// Text line of message content including CRLF (§4.5.3.1.6).
pub const TEXT_LINE_BYTES_MAX: usize = 1000;
/// Minimum number of recipients a server must accept (§4.5.3.1.8).
pub const RECIPIENTS_MIN: usize = 100;

const _: () = assert!(LOCAL_PART_BYTES_MAX + 1 + DOMAIN_BYTES_MAX > PATH_BYTES_MAX - 2);
const _: () = assert!(PATH_BYTES_MAX < COMMAND_LINE_BYTES_MAX);
const _: () = assert!(COMMAND_LINE_BYTES_MAX < TEXT_LINE_BYTES_MAX);
