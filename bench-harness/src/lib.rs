//! `sluice-bench`: an SMTP load generator and latency meter for any MTA.
//!
//! It injects generated messages into an SMTP server (Sluice, a peer MTA or
//! a sink) over many connections spread across glommio executors, one per
//! core, and measures what the server did: messages accepted per second,
//! per-message injection latency in HdrHistograms, errors by reply code,
//! connection failures, and optionally the CPU time of the server's processes
//! and what a `sluice-sink` downstream received. It never implements SMTP
//! itself: every byte on the wire is decided by `sluice_smtp`'s
//! `ClientSession` (pipelining whole transactions back to back, BDAT,
//! STARTTLS); this crate only moves bytes, generates messages and counts.
//! It never reaches beyond the target it is given: generated domains end in
//! `.invalid`.
//!
//! # The load
//! A run sends `--messages N` (or runs for `--duration`) over `--connections
//! C`. Connection slot `i` sends message indices `i, i + C, ...`
//! ([`schedule`]), so the batch is split exactly and message `n` is the same
//! message whatever C is: its size, sender and recipients depend only on
//! `--seed` and `n` ([`message`]). Messages carry `X-Sluice-Id: <run>-<n>`,
//! a unique `Message-ID` and `X-Sluice-Injected: <unix nanoseconds>`, the
//! header `sluice-sink` reads to measure injection-to-arrival latency.
//! Sizes are fixed, uniform or a weighted list; recipient domains uniform or
//! Zipf over N generated domains plus named heavy domains ([`dist`]).
//!
//! Closed loop (default): each connection keeps up to `--window` transactions
//! queued or in flight and queues the next as soon as one finishes; latency
//! runs from the write of the transaction's `MAIL` (the session may hold a
//! queued transaction, e.g. until a 354 arrives; that wait is the harness's,
//! not the server's) to the reply after the data. With PIPELINING and
//! CHUNKING whole transactions go back to back (`BDAT n LAST` then the next
//! `MAIL`); with DATA each transaction still waits for its 354. Open loop (`--rate R`): message `n` is due at `n / R`
//! seconds; a message that cannot be sent on time (window full, connection
//! slow) keeps its due time as its latency origin, so stalls show up in the
//! latency instead of silently lowering the offered load (no coordinated
//! omission). A connection waiting for its next due time wakes at the next
//! multiple of `--tick` (default 0.5 ms), so an executor wakes once per tick
//! for all its connections: the wait is still counted from the exact due
//! time, and at 16,000 msgs/s the harness's own CPU per message fell from
//! 54 µs (a wake-up per message) to 38 µs with a 1 ms tick.
//!
//! With `--route-by-domain PORT_BASE --shards N` the load is split by the
//! engine's own routing function (`sluice_shaping::lease::domain_shard`, what
//! `sluice route` prints) and each part goes to its shard's
//! port ([`route`]).
//!
//! # Threads and state
//! One glommio executor per core ([`run`]); each connection is a local task
//! driving [`wire::Wire`] (TCP, optionally rustls) and the session
//! ([`conn`]). Buffers (read, write, one body buffer per window slot) are
//! allocated when the connection starts and reused. Counters and the
//! interval histogram are plain fields of the executor ([`stats`]); once per
//! `--interval` each executor sends its cumulative counters and the interval
//! histogram over a bounded channel. The main thread merges them, drives the
//! progress display, and at the end writes the report ([`report`]), the
//! `.hlog`/`.hgrm` files ([`hdr`]) and the plots ([`plot`]).
//!
//! glommio registers `io_memory` as locked memory; the harness asks for
//! 256 KiB per executor, so it runs under an 8 MiB `ulimit -l`.
//!
//! # Running it
//! ```text
//! # 100k 2 KB messages over 16 connections, closed loop, JSON + plots
//! sluice-bench run --target 127.0.0.1:2526 --messages 100000 --connections 16 \
//!     --size 2k --json run.json --hlog run.hlog --hgrm run.hgrm --plot plots/
//! # open loop at 20k msg/s for a minute, Zipf domains, sink stats and CPU
//! sluice-bench run --target 127.0.0.1:2525 --duration 60s --rate 20000 \
//!     --domains 10000 --domain-shape zipf:1.1 --heavy-domain gmail.invalid=0.3 \
//!     --sink-summary sink.json --pids $(pidof sluice)
//! # Sluice's per-shard ports: each message to its recipient domain's shard
//! sluice-bench run --target 127.0.0.1:0 --route-by-domain 2600 --shards 2
//! ```
//!
//! # `demo` and `compare`
//! `sluice-bench demo` ([`demo`]) is the one-command tour: it finds
//! `sluice-sink` and `sluice` next to its own executable (or `--sink-bin`,
//! `--engine-bin`), picks free 127.0.0.1 ports, starts the sink (summary
//! every 500 ms in a temporary directory), writes the engine a configuration
//! (durable `fdatasync` spool in the temporary directory, `[[route]] pattern
//! = "*"` to the sink, per-shard ports when `--shards` is above 1), waits
//! for both to greet with 220, and injects a minute of 2 KB messages to
//! 1,000 Zipf-weighted domains (`--messages` or `--duration` to change it).
//! The table adds delivered messages per second (first injection to last
//! arrival) and the CPU the engine and the sink each spent per message;
//! `demo.json`, `report.json`, `latency.hlog`, `latency.hgrm`, `plots/` and
//! both children's logs go to `./sluice-demo-RUN/` (or `--out`). The
//! children live in [`procs::Children`], whose `Drop` sends SIGTERM, waits,
//! then SIGKILLs: an error, Ctrl-C or a panic still leaves nothing running,
//! and `PR_SET_PDEATHSIG` covers a SIGKILLed harness.
//!
//! `sluice-bench compare --a HOST:PORT --b HOST:PORT` ([`compare`]) sends
//! the same load (same seed, same messages) to two targets one after the
//! other and prints them side by side with a/b ratios; with a shared sink's
//! `--sink-summary` the delivered counts are per-run deltas.
//!
//! ```text
//! # the tour: a minute of load through sluice into sluice-sink
//! cargo build --release --bins && target/release/sluice-bench demo
//! # Sluice against Postfix relaying into the same sink
//! sluice-bench compare --a 127.0.0.1:2625 --a-pid $(pidof sluice) \
//!     --b 127.0.0.1:2525 --b-pid $POSTFIX_PIDS --sink-summary sink.json \
//!     --messages 100000 --json compare.json
//! ```
//!
//! # Exit status
//! 0 when the run met its targets; 1 when it did not (connection failures,
//! failed messages above `--max-error-rate`, fewer messages finished than
//! asked, the sink missing messages); 2 for bad usage or setup errors.

#![warn(missing_docs)]

pub mod cli;
pub mod compare;
pub mod conn;
pub mod demo;
pub mod dist;
pub mod hdr;
pub mod message;
pub mod plot;
pub mod probe;
pub mod procs;
pub mod progress;
pub mod report;
pub mod route;
pub mod run;
pub mod schedule;
pub mod stats;
pub mod tls;
pub mod wire;

use std::path::Path;

/// Everything that can go wrong in the harness, with what a caller needs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command-line value or spec string is malformed.
    #[error("{0}")]
    Parse(String),
    /// A file could not be read or written.
    #[error("{0}")]
    Io(String),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: &Path, e: std::io::Error) -> Self {
        Error::Io(format!("{}: {e}", path.display()))
    }
}
