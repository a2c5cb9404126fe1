//! The Sluice engine: shards (one pinned glommio executor per core), the SMTP
//! injection listener, per-destination queues, and the pipelined delivery
//! client, wired to the spool (`sluice-spool`), shaping (`sluice-shaping`) and
//! the sans-io protocol core (`sluice-smtp`).
//!
//! The engine never shares mutable state between shards: each shard owns its
//! spool, queues and connections, and the only cross-shard traffic is
//! shaping's token and permit leases.
//!
//! Modules: [`config`] (typed TOML), [`runtime`] (shards, listeners,
//! shutdown), [`inject`] (injection sessions: spool append, group commit,
//! deferred `250`), [`queue`] (per-destination ready and scheduled queues),
//! [`deliver`] (connection pools, the client session driver, outcomes,
//! shaping), [`log`] (the per-shard delivery log), [`sign`] (DKIM keys
//! loaded at start, one signature per message at injection).
#![warn(missing_docs)]

pub mod accounting;
pub mod admin;
pub mod bounce;
pub mod config;
pub mod deliver;
pub mod inject;
pub mod log;
pub mod metrics;
pub mod queue;
pub mod runtime;
pub mod sign;
pub mod tls;
