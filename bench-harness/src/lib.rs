//! `sluice-bench`: an SMTP load generator and latency meter for any MTA.
//!
//! (Crate docs are completed below, in the module overview.)

#![warn(missing_docs)]

pub mod cli;
pub mod dist;
pub mod hdr;
pub mod message;
pub mod plot;
pub mod probe;
pub mod progress;
pub mod report;
pub mod schedule;
pub mod stats;

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
