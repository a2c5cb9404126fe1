//! `sluice-sink`: the bundled /dev/null SMTP sink. It accepts mail over
//! ESMTP at line rate, counts it, discards it while it streams, and can
//! emulate slow, throttling or failing receivers (receiver profiles), so the
//! engine and the bench harness can be measured and tested against it. It
//! never stores, relays or parses a message beyond a bounded scan of its
//! header section, and it never implements SMTP itself: every command,
//! reply and body byte goes through `sluice-smtp`'s sans-io
//! `ServerSession`; this crate only moves bytes and makes decisions.
//!
//! # Shards
//! One glommio executor per selected CPU (`--cores`, default all), pinned
//! (`Placement::Fixed`). Each binds the listen address with SO_REUSEPORT
//! (the sockets are created on the main thread with socket2 and handed to
//! glommio with `TcpListener::from_raw_fd`), so the kernel spreads
//! connections over shards. A connection allocates its read buffer, output
//! buffer and header-scan buffers once and reuses them for every read and
//! message. Body bytes are counted and dropped; a message is never held.
//!
//! glommio registers `io_memory` bytes per executor with io_uring, which
//! counts against `RLIMIT_MEMLOCK` (8 MiB on the development machines).
//! The sink uses glommio only for sockets, whose reads go straight into its
//! own buffers, so it asks for 512 KiB per shard (`--io-memory`); glommio
//! falls back to unregistered memory with a warning if even that fails.
//!
//! # ESMTP
//! PIPELINING, CHUNKING (BDAT), 8BITMIME, SMTPUTF8, SIZE (`--size-max`),
//! ENHANCEDSTATUSCODES, DSN and STARTTLS (rustls 0.23; `--tls-cert` and
//! `--tls-key`, else a self-signed certificate generated at start and
//! written to `--tls-cert-out`). HELO, RSET, NOOP, VRFY, HELP and QUIT are
//! answered by the session. Any sender and recipient is accepted unless the
//! profile says otherwise.
//!
//! # Latency header
//! A message that carries `X-Sluice-Injected: <unix epoch nanoseconds>`
//! (decimal, the time the sender injected it; the bench harness writes it)
//! has its injection-to-arrival latency (arrival = the end of its data)
//! recorded in per-shard HdrHistograms in microseconds, merged into the
//! summary's `latency_ms` and, with `--hlog FILE`, into a standard
//! HdrHistogram interval log (V2 compressed). The header scan stops at the
//! blank line ending the header section or after 64 KiB.
//!
//! # Summary
//! On SIGINT/SIGTERM the sink writes a JSON object to `--summary FILE`
//! (atomically: temp file and rename; also every `--summary-interval` while
//! running) or to stdout. Keys: `messages` (accepted), `recipients` (of
//! accepted messages), `bytes` (un-stuffed body bytes of accepted
//! messages), `connections` (accepted TCP connections), `connections_peak`,
//! `connections_current`, `transactions` (accepted MAIL), `replies` (count
//! by code, every reply sent), `latency_ms` (`count`, `min`, `mean`, `p50`,
//! `p90`, `p99`, `p999`, `max`; present once a latency header was seen),
//! `domains` (per recipient domain: `messages`, `recipients`,
//! `connections`, `peak_connections`, `max_messages_per_s`,
//! `messages_per_s` as `[unix_second, count]` pairs), `profile_actions`
//! (`<phase>_<code>` injected replies, `delayed_<phase>`, `rate_limited`,
//! `connection_limited`, `local_part_rejected`, `dropped_after_messages`,
//! `dropped_in_data`, `never_greeted`), `tls`, `captured`, `seed`.
//!
//! # Receiver profiles
//! See [`profile`] for the TOML keys; each has a command-line flag too.
//! Decisions use a seeded generator per shard (`--seed`; shard `i` uses
//! `seed + i`). A connection's domain is the domain of its first `RCPT`;
//! `max_connections` and `rate_per_second` are enforced across all shards
//! by a small locked board touched once per connection (and once per
//! message for rate-limited domains only). Injected `421` replies close the
//! connection (RFC 5321 §3.8).
//!
//! # Running
//! ```text
//! sluice-sink --listen 127.0.0.1:2526 [--cores N|LIST] [--profile FILE] [--summary FILE]
//! sluice-sink validate FILE          # check a profile: exit 0, or 2 naming each bad key
//! ```
//! Exit codes: 0 after a signal-triggered clean stop, 2 for a bad flag or
//! profile, 1 for a runtime failure (listen, executor, output files).
//! `--cores N` takes the first N CPUs of the process's affinity mask, so
//! `taskset` is honoured. SO_REUSEPORT lets two processes of the same user
//! share a port: check that the port is free before starting a second sink.
//!
//! # Cost model
//! Per command the sink does one `recv`, one `send` and one io_uring poll
//! re-arm; replies of a pipelined group leave in one `send`. With a client
//! that pipelines whole transactions the sink spends about 2 µs of CPU per
//! 2 KB message; with a lock-step client (Postfix's smtp-source: four round
//! trips per message) the loopback TCP work of those round trips dominates
//! (about 70 % of the sink's CPU is kernel time). `bench/vs-smtp-sink.sh`
//! measures both against Postfix's smtp-sink.
//!
//! # Test modes
//! `--record-ids FILE` appends every accepted message's `X-Sluice-Id` (else
//! `Message-ID`) after its `250` was written; `--capture DIR` writes each
//! accepted message in full, up to `--capture-max`; `--record-peers FILE`
//! appends the peer IP of every accepted connection. All use blocking file
//! writes and are off by default.
#![warn(missing_docs)]

pub mod cli;
pub mod config;
pub mod conn;
pub mod headers;
pub mod policy;
pub mod profile;
pub mod report;
pub mod runner;
pub mod shard;
pub mod stats;
pub mod tls;

pub use config::SinkConfig;
pub use profile::Profile;
pub use runner::{Outputs, Sink};
