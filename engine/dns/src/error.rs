//! Failures that make a lookup temporarily impossible.

/// Why a lookup got no definitive answer. Every variant is temporary:
/// asking again later may succeed (RFC 5321 §5.1: a lookup failure other
/// than "name does not exist" must not bounce the message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TempError {
    /// No usable answer from any name server before the last timeout.
    #[error("DNS query timed out")]
    Timeout,
    /// Every server answered with an error RCODE (SERVFAIL, REFUSED, ...);
    /// this is the last one seen.
    #[error("DNS server error (rcode {rcode})")]
    ServerError {
        /// The RCODE.
        rcode: u16,
    },
    /// A socket error talking to the name servers (the last one seen).
    #[error("DNS socket error: {0}")]
    Io(String),
    /// Only undecodable answers arrived.
    #[error("malformed DNS answer: {0}")]
    Malformed(String),
    /// A CNAME chain longer than the limit, or a loop.
    #[error("CNAME chain too long or looping")]
    CnameChain,
    /// No name server is configured.
    #[error("no name servers configured")]
    NoNameservers,
}
