//! `sluice-spool`: the per-shard, mmap'd, append-only message store that
//! makes a `250` after DATA trustworthy (RFC 5321 §6.1). It appends
//! checksummed records into fixed-size, fully reserved segment files, makes
//! them durable with group-committed fdatasync, rebuilds the set of live
//! messages after a crash, and deletes segments nobody needs. It never
//! speaks SMTP, parses addresses or decides anything about delivery: an
//! envelope is opaque bytes to it; and it never shares state between
//! threads: one spool belongs to one shard (no locks, no atomics).
//!
//! # Layout
//! `<spool>/shard-<n>/seg-<seq as 16 hex digits>` (0600, created with
//! `O_EXCL|O_NOFOLLOW`, reserved with `fallocate`, default 64 MiB), and
//! `<spool>/shard-<n>/quarantine/` for corrupt bytes. Directories are 0700;
//! an existing one open to group/others or a symlink is refused with
//! [`SpoolError::Permissions`] naming the path. Every create, rename and
//! delete of a segment is followed by a directory fsync before it is relied
//! upon.
//!
//! # Record format
//! See [`mod@format`]: a 16-byte header (magic `SLCR`, kind, version, segment
//! tag, payload length, CRC32C of header and payload seeded with the
//! segment's sequence number), the payload, zero padding to 8 bytes.
//! Format version 2 (this one) added the tag and the seed so segment files
//! can be recycled without zeroing: a record left from a file's earlier
//! life never validates in its new one. Version 1 segments are still read
//! (and recycled into version 2 once their messages are done). Kinds:
//! - *segment header*: shard, generation (earlier lives of the file),
//!   sequence, segment size, and the next message id at creation (so ids
//!   stay monotonic even when every older segment is gone); it appears
//!   again later in a segment that a restart continued (new id floor);
//! - *message*: id, arrival, expiry, retry state, flags, then the envelope
//!   (sender, envelope DSN bytes, tenant, campaign, queue, recipients with
//!   their DSN bytes, a done-recipient bitmap) and last the body, so
//!   [`Spool::body`] is an O(1) slice of the mapping;
//! - *completion*: message id + (recipient index, outcome) pairs;
//! - *deferral*: message id, attempts, next attempt time: retry state
//!   survives a restart (the last deferral in log order wins), so a restart
//!   neither retries everything at once nor forgets the attempt count;
//! - *segment end*: written when a segment is sealed; recovery stops there.
//!
//! # Durability
//! [`Spool::append`] copies the record into the mapping once and never
//! waits. [`Spool::commit`] is a barrier future that resolves once every
//! record appended before it is covered by a completed fdatasync. The
//! group-commit task ([`Spool::spawn_sync_task`]) syncs when the oldest
//! unsynced append is `commit_window` old (default 1 ms) or the unsynced
//! bytes pass `sync_threshold_bytes`; one sync is in flight at a time and
//! one sync releases every waiter it covers. Syncs go through io_uring
//! (glommio's `fdatasync`); see [`fs`] for why syncing the file descriptor
//! makes the mapped stores durable. A failed sync poisons the spool: its
//! waiters (and every later one) get [`SpoolError::Poisoned`], appends are
//! refused with the reason. `Durability::None` (benchmarks only) needs
//! [`NoSync::i_accept_losing_mail_on_crash`] and logs an error at open.
//! The sync itself runs as its own task, so while it is in flight the loop
//! can start *write-behind*: every `write_behind_bytes` (1 MiB) appended,
//! `sync_file_range(SYNC_FILE_RANGE_WRITE)` on glommio's blocking pool
//! starts writeback early, so the next fdatasync finds less to do (it has
//! no durability meaning; errors surface in the fdatasync).
//! Rotating takes a *spare* segment, so it is a pointer swap. Spares are
//! mostly recycled segments (see Reclamation): their blocks are already
//! allocated and written, so no `fallocate`, no unwritten-extent conversion
//! and no kernel zero-filling of fresh pages; the mapping is kept and
//! pre-faulted (`MADV_POPULATE_READ`, in 2 MiB steps) on glommio's blocking
//! pool. When none is ready a new file is pre-created and reserved there;
//! only if that is not ready either does the append create one inline
//! (counted in [`SpoolStats`]). Mappings are `MADV_RANDOM`: a fault on a
//! page not yet in the page cache brings in that page, never the device's
//! readahead window, and folios stay 4 KiB, so a small group commit writes
//! what changed and not a whole large folio again (see [`fs`]).
//! `fallocate` failing with ENOSPC/EDQUOT is [`SpoolError::DiskFull`] (the
//! engine's `452 4.3.1`); [`Spool::has_room`] checks reserved and free space
//! first. Messages never use the last 1/16 of a segment: that reserve keeps
//! room for completions and deferrals, so deliveries can still be recorded
//! (which is what frees space) when the disk is full.
//!
//! # Message ids
//! A spool-assigned `u64`, monotonic per shard. Each open starts a new epoch
//! (the next multiple of 2^40 above every id and segment id floor seen) and
//! syncs the new head's header before the first append, so an id handed out
//! but lost in a crash is never handed out again (as long as one run assigns
//! fewer than 2^40 ids). Exception: a spool opened without a head (full
//! disk, nothing to continue) syncs no header at open; if it crashes before
//! the first group commit after space returned, ids of messages that were
//! never acknowledged may be handed out again by the next run.
//!
//! # Recovery
//! [`Spool::open`] scans every segment in sequence order and checks every
//! CRC. A record whose header is intact but whose checksum fails is skipped
//! by its length if the next header validates; otherwise the scan resyncs
//! at the next aligned offset holding a valid record. Skipped bytes are
//! copied to `quarantine/` and logged. Non-zero bytes after the last valid
//! record of a new segment are a torn tail: zeroed, synced and counted; in
//! a recycled segment (generation > 0) the bytes after the last valid
//! record are the earlier life's, so only a torn record of this life
//! (header with this segment's tag, CRC failing) is. The live
//! set is every message record without completions for all recipients; a
//! later copy of the same id (relocation) supersedes the earlier. The spool
//! then starts a fresh head segment (old segments are never appended to
//! again), except on a full file system: then the last recovered segment,
//! if it is not sealed, takes the appends after a re-stamped header (its
//! 1/16 completion reserve is free), and with no such room the spool opens
//! without a head. Either way recovery succeeds and message appends get
//! [`SpoolError::DiskFull`] (`452 4.3.1`) until space returns
//! ([`RecoveryReport::head`] says which). Every recovered segment is fdatasynced before the spool accepts
//! anything: after a process crash (not a power loss) recovery may have read
//! records that were only in the page cache. [`RecoveryReport`] gives counts
//! and elapsed time. The live messages are listed by
//! [`Spool::live_messages`] (id, record, pending recipients, retry state).
//!
//! # Reclamation
//! A segment is retired when no live message copy remains in it and every
//! older segment that its completion/deferral/relocation records refer to
//! is already durably retired (otherwise a crash would resurrect a
//! delivered message from the older segment). Retiring recycles it while
//! the pool holds fewer than `spare_segments` (2) spares, and unlinks it
//! otherwise (on the blocking pool). Recycling, on the reclamation task:
//! rename `seg-<old>` to `seg-<new>` (a fresh sequence number), write the
//! new header (generation + 1) at offset 0, fdatasync it, fsync the
//! directory; only then is the old segment gone and the file a spare.
//! Recovery reads a file whose offset 0 holds a valid header of *another*
//! sequence number (an interrupted recycling) as empty, and a spare left
//! by the previous run becomes the head at open. A segment some `Body` still
//! maps is unlinked instead (its bytes must not change under a reader). Long-deferred messages pinning
//! the oldest segment are relocated in the background: re-appended to the
//! head with their done-recipient bitmap and retry state, committed, and
//! only then is the old copy released. Reclamation runs as its own task
//! (spawned by the group-commit loop), so recycling, unlinking and the
//! directory sync never hold up a commit.
//!
//! # Tests and benchmarks
//! `cargo test -p sluice-spool` runs the model property test
//! (`tests/model.rs`, also a seeded run weighted towards recycling), power
//! loss on the storage double (`tests/power_loss.rs`), kill -9 of a child
//! process (`tests/kill9.rs`, also while every segment is recycled),
//! corruption, permissions, group commit, disk full and restart on a full
//! disk on real files and a tmpfs (`tests/fs.rs`, mounting needs root; the
//! double covers disk full otherwise), and reclamation, recycling (a
//! recycled head's old records never come back), a version 1 segment and
//! the full-disk restarts on the double (`tests/reclaim.rs`). The benchmark:
//! `cargo bench -p sluice-spool --bench spool_bench -- --dir <dir on the device>`.
//!
//! # Memory
//! One index entry per live message: 56 bytes (`RecordRef` 16, counts and
//! retry state 20, done bitmap 16 in place up to 64 recipients), about
//! 75 bytes with the hash map's key, control byte and 7/8 load factor
//! (messages with more than 64 recipients add `count / 8` bytes on the heap).
#![warn(missing_docs)]

mod config;
mod core;
#[cfg(feature = "glommio")]
mod driver;
mod error;
pub mod format;
#[cfg(feature = "glommio")]
pub mod fs;
mod index;
pub mod mem;
mod reclaim;
mod recovery;
mod spool;
mod stats;
pub mod storage;

pub use crate::config::{Durability, NoSync, SpoolConfig, SEGMENT_BYTES_MIN};
pub use crate::core::{Core, SyncDue};
pub use crate::error::SpoolError;
pub use crate::format::{NewMessage, Outcome, Recipient};
pub use crate::index::RecordRef;
pub use crate::recovery::{HeadAtOpen, RecoveryReport};
pub use crate::spool::{Body, Commit, LiveMessage, MessageRecord, ReclaimReport, Spool};
pub use crate::stats::SpoolStats;
