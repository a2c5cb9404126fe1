//! DKIM signing (RFC 6376) for Sluice: per-domain keys loaded once at
//! start, and one `DKIM-Signature` header field computed per message, which
//! the engine sends in front of the stored message bytes.
//!
//! This crate signs; it never verifies, never resolves DNS, never touches a
//! socket and never rewrites a message. The only I/O it does is reading the
//! key files named in the configuration, once, in [`Signer::load`]. It does
//! not depend on glommio. Hashing and the RSA or Ed25519 operation are done
//! by [mail-auth](https://docs.rs/mail-auth) (Stalwart's DKIM library, on
//! its aws-lc backend); this crate adds the configuration, key-file policy,
//! signing-domain selection and the invariants below.
//!
//! # Configuration
//!
//! ```toml
//! # Author domains without their own key, signed by another domain's key.
//! [map]
//! "news.example.com" = "example.com"
//!
//! # Optional: sign everything else as this domain (an ESP's d= signature).
//! # default_domain = "esp.example"
//!
//! [domains."example.com"]
//! selector = "s2026"
//! key_file = "/etc/sluice/dkim/example.com.pem" # mode 0600
//! algorithm = "rsa-sha256"          # optional; inferred from the key
//! canonicalization = "relaxed/relaxed"  # the default
//! expiry = "7d"                     # optional x= tag
//! # headers = [...]                 # default: config::DEFAULT_SIGNED_HEADERS
//! # oversign = ["To", "Subject"]    # From is always oversigned
//! ```
//!
//! Unknown keys are refused ([`DkimConfig::from_toml`] names the key path),
//! and validation reports every problem at once. There is deliberately no
//! way to request the `l=` body-length tag: RELIABILITY.md forbids it, since
//! it lets anyone append content under a valid signature (RFC 6376 §8.2).
//!
//! # Keys
//!
//! PEM files: PKCS#1 `RSA PRIVATE KEY`, or PKCS#8 `PRIVATE KEY` holding an
//! RSA (2048 bits or more) or Ed25519 key. A file that group or others may
//! read or write is refused with an error naming the path and `chmod 600`;
//! so is a non-regular file. The mode is checked on the opened descriptor.
//! Keys are read once by [`Signer::load`], which tries every domain and
//! reports every refusal; nothing is re-read while running.
//!
//! # Which key signs a message
//!
//! The author domain is the domain of the From header's address. It selects
//! its own key if it has one, else the domain it is mapped to, else the
//! `default_domain`, else the message is sent unsigned
//! ([`Signed::Unsigned`]). A message with no From, two From fields, or From
//! addresses in different domains is an error ([`AuthorError`]): there is
//! no domain to align with for DMARC. [`Signer::sign_as`] bypasses the
//! selection for callers that decide themselves (e.g. per tenant).
//!
//! # Signed headers and oversigning
//!
//! Every listed header field present is signed (all occurrences). `From`
//! (and any name in `oversign`) is listed one more time than it occurs, so a
//! second `From` added in transit breaks the signature (RFC 6376 §8.15).
//! Listed fields that are absent are signed as absent, so they cannot be
//! added later either.
//!
//! # Contract with the engine
//!
//! - Sign once per message, not per recipient or per attempt: the result
//!   depends only on the bytes and the clock (`t=`), so store it with the
//!   message or cache it for the message's lifetime in the shard.
//! - Sign the bytes exactly as they will be sent. If a recipient's server
//!   lacks 8BITMIME and the message has 8-bit content, the engine downgrades
//!   (e.g. to quoted-printable) *first* and signs the result; a downgrade
//!   after signing breaks the body hash. A message needing SMTPUTF8 that the
//!   peer lacks is bounced, not signed.
//! - The message uses CRLF line endings and is not dot-stuffed; stuffing
//!   happens on the wire after signing and is undone by the receiver.
//! - Transmit the bytes appended to `out` and then the message unchanged.
//! - Cost: one pass over the body for the hash plus one private-key
//!   operation (`cargo bench -p sluice-dkim --bench sign`). On the 2-core
//!   development VM a 2 KB message took about 355 µs with RSA-2048 (the key
//!   operation alone 324 µs) and 14 µs with Ed25519 (9 µs). A shard that
//!   signs inline therefore spends a third of a millisecond per RSA message
//!   without yielding: sign before the message enters the per-connection
//!   hot loop, once, and check `need_preempt()` between messages.
#![warn(missing_docs)]

pub mod author;
pub mod config;
pub mod key;
pub mod signer;

pub use author::{author_domain, AuthorError};
pub use config::{
    Algorithm, Canonicalization, ConfigError, ConfigProblem, DkimConfig, DomainConfig,
    RawDkimConfig,
};
pub use key::{load_key, KeyError, LoadedKey};
pub use signer::{LoadError, SignError, Signed, Signer};
