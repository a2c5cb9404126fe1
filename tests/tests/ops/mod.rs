//! What the operator suites (`accounting.rs`, `admin.rs`, `reload.rs`,
//! `tenants.rs`) share beyond `sluice_tests`: their engine (a 200 ms retry,
//! the CSV accounting log, an admin listener, every domain routed to one
//! port) and their settle time. Everything listens on 127.0.0.1.
#![allow(dead_code)] // each test file uses a different subset

use std::path::Path;
use std::time::Duration;

use sluice_tests::{Engine, EngineConfig, Sink, SinkBuilder};

/// Longest a test waits for deliveries to settle.
pub const SETTLE: Duration = Duration::from_secs(60);

/// The operator suites' engine: `[delivery] retry = "200ms"`, `[log] csv`,
/// an `[admin]` listener, and every domain routed to `127.0.0.1:route_port`.
pub fn config(dir: &Path, route_port: u16) -> EngineConfig {
    EngineConfig::new(dir)
        .retry("200ms")
        .csv()
        .admin("")
        .route("*", route_port)
}

/// The operator suites' sink: a free port, `args`, every message captured.
pub fn sink(dir: &Path, name: &str, args: &[&str]) -> Sink {
    SinkBuilder::new(dir, name).capture().args(args).start()
}

/// How many Delivery records the engine has for recipients at `domain`.
pub fn delivered_to(e: &Engine, domain: &str) -> usize {
    e.records()
        .iter()
        .filter(|r| {
            r["type"] == "Delivery"
                && r["recipient"]
                    .as_str()
                    .is_some_and(|a| a.ends_with(&format!("@{domain}")))
        })
        .count()
}

/// Polls `done` every 50 ms until it holds; panics after [`SETTLE`].
pub fn wait_until(what: &str, done: impl FnMut() -> bool) {
    sluice_tests::wait_until(what, SETTLE, done)
}
