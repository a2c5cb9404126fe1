//! The spool's error type: every variant carries what a caller branches on.

// std
use std::io;
use std::path::PathBuf;

// external
use thiserror::Error;

// crate
use crate::format::FormatError;

/// Everything that can go wrong in the spool.
#[derive(Debug, Error)]
pub enum SpoolError {
    /// The filesystem refused to reserve space (`fallocate` returned ENOSPC
    /// or EDQUOT), or free space is below what was asked for. Temporary:
    /// the engine answers `452 4.3.1` and appends resume once space returns.
    #[error("disk full: cannot reserve {needed_bytes} bytes for {path}")]
    DiskFull {
        /// The segment that could not be reserved.
        path: PathBuf,
        /// Bytes that were asked for.
        needed_bytes: u64,
    },
    /// An fdatasync failed. The records it covered are never acknowledged and
    /// the spool refuses every further append: restart the shard (recovery
    /// will keep whatever reached the disk).
    #[error("spool poisoned, not accepting: {reason}")]
    Poisoned {
        /// What failed, with the path.
        reason: String,
    },
    /// A file-system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A spool path is a symlink, not a directory/file, or readable by group
    /// or others.
    #[error("bad permissions on {path}: {detail}")]
    Permissions {
        /// The offending path.
        path: PathBuf,
        /// What is wrong and how to fix it.
        detail: String,
    },
    /// Another open spool holds this shard directory (an advisory `flock`
    /// on it, held while the spool is open): two engines on one spool would
    /// interleave appends and delete each other's segments.
    #[error("{path} is in use by another process (another sluice on the same spool dir?); stop it or choose another spool dir")]
    Locked {
        /// The shard directory.
        path: PathBuf,
    },
    /// A record cannot be encoded, or a record that passed its checksum does
    /// not parse.
    #[error("format: {0}")]
    Format(#[from] FormatError),
    /// A record larger than a segment can ever hold.
    #[error("record of {record_bytes} bytes exceeds the {max_bytes}-byte limit of a segment")]
    TooLarge {
        /// Its size.
        record_bytes: usize,
        /// The limit (segment size less framing).
        max_bytes: usize,
    },
    /// No live message has this id (already complete, or never existed).
    #[error("no live message {id}")]
    UnknownMessage {
        /// The id asked for.
        id: u64,
    },
    /// A recipient index beyond the message's recipient list.
    #[error("message {id} has no recipient {index}")]
    BadRecipient {
        /// Message id.
        id: u64,
        /// Index asked for.
        index: u32,
    },
    /// A record reference that does not point at a message record in a
    /// present segment.
    #[error("stale or invalid record reference (segment {segment}, offset {offset})")]
    BadRef {
        /// Segment sequence number.
        segment: u64,
        /// Offset in it.
        offset: u32,
    },
    /// The configuration is inconsistent.
    #[error("invalid spool configuration: {0}")]
    Config(String),
    /// The spool was shut down.
    #[error("spool is shut down")]
    Closed,
}

impl SpoolError {
    /// Wraps an OS error, turning ENOSPC/EDQUOT into [`SpoolError::DiskFull`].
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => SpoolError::DiskFull {
                path,
                needed_bytes: 0,
            },
            _ => SpoolError::Io { op, path, source },
        }
    }

    /// True for errors that go away by themselves (disk full): answer `4xx`.
    pub fn is_temporary(&self) -> bool {
        matches!(self, SpoolError::DiskFull { .. })
    }
}
