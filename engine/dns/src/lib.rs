//! `sluice-dns`: finds where mail for a domain goes. It holds a DNS stub
//! resolver (queries built and parsed with `hickory-proto`, sent to the
//! configured recursive name servers over UDP, and over TCP when an answer
//! is truncated), a per-shard answer cache that honours TTLs and caches
//! negative answers, and the RFC 5321 §5.1 / RFC 7505 MX rules that turn a
//! recipient domain into an ordered list of hosts with addresses, or a
//! typed permanent or temporary failure carrying the SMTP reply to record.
//! It never recurses from the root, never validates DNSSEC, never sends
//! mail and never applies a search list: recipient domains are fully
//! qualified.
//!
//! # Layers
//! - [`wire`]: sans-io. [`wire::encode_query`] appends a recursive query
//!   (EDNS(0), 1232-byte payload) to a caller buffer;
//!   [`wire::parse_response`] decodes bytes and checks they answer the
//!   query sent (id, opcode, question name, type and class; RFC 5452 §9.1),
//!   detects truncation (TC bit: retry over TCP), follows CNAME chains
//!   inside the answer, and classifies the result as records, NODATA,
//!   NXDOMAIN or an unfinished alias, with the TTL to cache it for (minimum
//!   of the records used; for negative answers the minimum of the SOA TTL
//!   and SOA MINIMUM, RFC 2308 §5; not cached without an SOA).
//! - [`cache`]: sans-io, time passed in. Bounded (CLOCK eviction, an LRU
//!   approximation with O(1) hits), positive TTLs capped at `ttl_max`
//!   (1 day), negative TTLs at `negative_ttl_max` (15 minutes). Temporary
//!   failures are never cached.
//! - [`mx`]: sans-io. [`mx::MxLookup`] is a state machine that asks for
//!   questions and is fed answers, and ends in [`mx::MxOutcome`]:
//!   `Resolved { hosts, implicit, site }`, `PermFail` or `TempFail`, each
//!   failure a [`mx::DnsFailure`] with a `sluice_smtp::Reply` and a
//!   [`mx::FailReason`]. Hosts are sorted by preference with equal
//!   preferences shuffled by a generator the caller passes in; A/AAAA of
//!   the domain itself are used only when it has no MX records at all
//!   (NODATA), never after SERVFAIL or a timeout; NXDOMAIN is `550 5.1.2`;
//!   a null MX is `556 5.1.10` at once; temporary failures are
//!   `451 4.4.3`; hosts left without usable addresses are `550 5.4.4`.
//! - [`policy`]: which addresses may be used. Loopback, private (RFC 1918,
//!   RFC 6598, ULA), link-local and unspecified addresses found through
//!   public MX lookups are refused unless the route allows the class
//!   (tests allow loopback); multicast and reserved never are.
//! - [`site`]: the site key, a stable name for an MX host set (sorted
//!   distinct exchange names, or a configured provider suffix) so queues
//!   and shaping roll up the many domains one provider hosts.
//! - [`resolv_conf`]: `nameserver` and `options timeout/attempts/rotate`
//!   from `/etc/resolv.conf`.
//! - `config` (feature `driver`): the `[dns]` section, a serde struct of
//!   human values (`"2s"`) validated into a `ResolverConfig`, every
//!   problem reported under its full key; servers default to resolv.conf.
//! - `driver` (feature `driver`, on by default): [`Resolver`], the
//!   glommio stub resolver one shard owns (`Rc`, no locks): cache first,
//!   then in-flight deduplication (a second lookup of the same question
//!   waits for the first query's answer instead of sending its own), then
//!   a bounded number of outstanding network queries; each try is one
//!   server within `timeout`, over a fresh connected UDP socket (random
//!   source port, OS-seeded random id) and then TCP if truncated;
//!   `attempts` rounds over the servers, moving on after a timeout, an
//!   error RCODE, a refused port or a malformed answer. `lookup_ttl` and
//!   `resolve_mx_ttl` also say how long their answers hold (the cache's
//!   time left; for an MX resolution the smallest over the answers used),
//!   which `MxConfig::refresh_after` bounds into how long a resolution is
//!   kept.
//!
//! # Time and randomness
//! The sans-io layers take `now` and a random generator as arguments, so
//! tests drive TTL expiry and shuffling exactly. The driver reads the
//! monotonic clock for the cache and uses an OS-seeded generator for query
//! ids; the MX shuffle still uses the generator its caller passes.

//!
//! # Failure codes
//! | cause | outcome | reply |
//! |---|---|---|
//! | invalid domain, NXDOMAIN | `PermFail` | `550 5.1.2` |
//! | null MX (RFC 7505) | `PermFail` | `556 5.1.10` |
//! | no MX host has an address; implicit MX without address | `PermFail` | `550 5.4.4`; `550 5.1.2` |
//! | every address refused by the policy | `PermFail` | `550 5.4.4` |
//! | SERVFAIL/REFUSED, timeouts, socket errors, CNAME loops, no servers | `TempFail` | `451 4.4.3` |
//!
//! Address literals (`user@[192.0.2.1]`) are not domains: the caller
//! handles them before asking this crate.
//!
//! # Tests and benchmarks
//! - `cargo test -p sluice-dns --lib`: wire format on messages built with
//!   hickory-proto, cache, MX machine (tables and a property test), policy,
//!   site keys, resolv.conf.
//! - `cargo test -p sluice-dns --test resolver`: the glommio resolver
//!   against `tests/dns_server.py` (Python dnslib; installed with pip when
//!   missing), a scripted server on a free 127.0.0.1 port, UDP and TCP.
//! - `cargo bench -p sluice-dns --bench dns`: cache hits and inserts,
//!   response parses, query encoding, the MX machine from memory.
//! - `cd engine/dns/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run response_parser`
//!   (and `mx_resolution`): cargo-fuzz targets, their own workspace.

#![warn(missing_docs)]

pub mod cache;
#[cfg(feature = "driver")]
pub mod config;
#[cfg(feature = "driver")]
mod driver;
pub mod error;
pub mod mx;
pub mod policy;
pub mod resolv_conf;
pub mod site;
pub mod wire;

pub use cache::{Cache, CacheConfig};
#[cfg(feature = "driver")]
pub use config::{ConfigProblem, RawDnsConfig};
#[cfg(feature = "driver")]
pub use driver::{Clock, Resolver, ResolverConfig, ResolverStats, SystemClock};
pub use error::TempError;
pub use mx::{DnsFailure, FailReason, MxConfig, MxHost, MxLookup, MxOutcome, Step};
pub use policy::{AddressClass, AddressPolicy};
pub use site::{SiteKey, SiteRules};
pub use wire::{Lookup, Parsed, QueryType, Question, Rdata};
