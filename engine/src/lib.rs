//! The Sluice engine: shards (one pinned glommio executor per core), the SMTP
//! injection listener, per-destination queues, and the pipelined delivery
//! client, wired to the spool (`sluice-spool`), shaping (`sluice-shaping`) and
//! the sans-io protocol core (`sluice-smtp`).
//!
//! The engine never shares mutable state between shards: each shard owns its
//! spool, queues and connections, and the only cross-shard traffic is
//! shaping's token and permit leases.
//!
//! This round holds the configuration layer; the shard runtime follows.
#![warn(missing_docs)]

pub mod config;
pub mod deliver;
pub mod inject;
pub mod log;
pub mod queue;
pub mod runtime;
