//! Spool configuration (validated: the engine builds it from its own TOML).

// std
use std::time::Duration;

// crate
use crate::error::SpoolError;
use crate::format::{record_len, SEGMENT_HEADER_PAYLOAD_BYTES};

/// How commits are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Every commit waits for an fdatasync that covers it (the default, and
    /// the only mode in which a `250` keeps RFC 5321 §6.1's promise).
    #[default]
    Fdatasync,
    /// No sync at all: a crash loses recent messages. Benchmarks only; build
    /// it with [`NoSync::i_accept_losing_mail_on_crash`]. The spool logs an
    /// error-level warning at open.
    None(NoSync),
}

/// Proof that the caller chose [`Durability::None`] on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoSync(());

impl NoSync {
    /// The only way to build a [`Durability::None`].
    pub fn i_accept_losing_mail_on_crash() -> Self {
        NoSync(())
    }
}

/// Per-shard spool settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    /// Shard number (written into segment headers).
    pub shard: u32,
    /// Size of each segment file; fixed, reserved with `fallocate`.
    pub segment_bytes: usize,
    /// Sync once the oldest unsynced append is this old.
    pub commit_window: Duration,
    /// ... or once this many bytes are unsynced, whichever is first.
    pub sync_threshold_bytes: usize,
    /// Start writeback of the head (`sync_file_range`, off the shard's
    /// thread) each time this many bytes were appended, so a group commit's
    /// fdatasync finds most pages already on their way (0: off).
    pub write_behind_bytes: usize,
    /// fdatasync (default) or none.
    pub durability: Durability,
    /// Relocate live messages out of the oldest segment once more than this
    /// many segments exist.
    pub relocate_above_segments: usize,
    /// ... provided its live messages take at most this many bytes (so
    /// relocation copies little).
    pub relocate_live_bytes_max: usize,
    /// Keep at least this many bytes free on the file system beyond a
    /// request before [`crate::Spool::has_room`] says yes.
    pub free_bytes_reserve: u64,
    /// Segment files kept ready as spares: reclamation recycles segments
    /// into this pool (rename, new header) instead of deleting them, and
    /// deletes only beyond it. 0: never recycle.
    pub spare_segments: usize,
    /// Message records at least this long are written with `pwrite`
    /// instead of stores through the mapping (see
    /// [`crate::core::WRITE_THROUGH_FILE_MIN`]); `usize::MAX`: never.
    pub pwrite_min_bytes: usize,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            shard: 0,
            segment_bytes: 64 << 20,
            commit_window: Duration::from_millis(1),
            sync_threshold_bytes: 8 << 20,
            write_behind_bytes: 1 << 20,
            durability: Durability::Fdatasync,
            relocate_above_segments: 4,
            relocate_live_bytes_max: 8 << 20,
            free_bytes_reserve: 64 << 20,
            spare_segments: 2,
            pwrite_min_bytes: crate::core::WRITE_THROUGH_FILE_MIN,
        }
    }
}

/// Smallest segment accepted: room for the header, an end marker and data.
pub const SEGMENT_BYTES_MIN: usize = 64 << 10;

const _: () = assert!(SEGMENT_BYTES_MIN > 4 * record_len(SEGMENT_HEADER_PAYLOAD_BYTES));

impl SpoolConfig {
    /// Checks relationships between fields; reports every problem.
    pub fn validate(&self) -> Result<(), SpoolError> {
        let mut problems = Vec::new();
        if self.segment_bytes < SEGMENT_BYTES_MIN {
            problems.push(format!(
                "segment_bytes must be at least {SEGMENT_BYTES_MIN}"
            ));
        }
        if self.segment_bytes > u32::MAX as usize {
            problems.push("segment_bytes must fit in 32 bits (4 GiB)".to_string());
        }
        if self.segment_bytes % 4096 != 0 {
            problems.push("segment_bytes must be a multiple of 4096".to_string());
        }
        if self.sync_threshold_bytes == 0 {
            problems.push("sync_threshold_bytes must be positive".to_string());
        }
        if self.relocate_above_segments < 2 {
            problems.push("relocate_above_segments must be at least 2".to_string());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SpoolError::Config(problems.join("; ")))
        }
    }

    /// Bytes at the end of every segment that messages may not use: they
    /// are kept for completions and deferrals, so deliveries can still be
    /// recorded (and space freed) when the disk is full. 1/16 of a segment.
    pub fn completion_reserve_bytes(&self) -> usize {
        self.segment_bytes / 16
    }

    /// The largest message record a segment can hold.
    pub fn record_bytes_max(&self) -> usize {
        self.segment_bytes
            - record_len(SEGMENT_HEADER_PAYLOAD_BYTES)
            - record_len(0)
            - self.completion_reserve_bytes()
    }
}
