//! The storage seam: everything the spool asks of a file system.
//!
//! The spool core only sees these two traits. [`crate::fs::FsStorage`] is the
//! real one (files, `fallocate`, `mmap`, fdatasync through io_uring);
//! [`crate::mem::MemStorage`] is the power-loss double that keeps only synced
//! bytes plus a torn prefix of the rest.

// std
use std::future::Future;
use std::io;
use std::ops::Range;
use std::pin::Pin;

// crate
use crate::error::SpoolError;

/// A boxed single-threaded future (shards never move work across threads).
pub type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// One mapped segment.
///
/// # Safety contract
/// `as_ptr()` must point at `len()` bytes that stay mapped, readable and
/// writable, at the same address, for as long as the value lives, and that
/// nothing but the spool (through this pointer) modifies. The spool writes
/// only into bytes it has not yet handed out, and hands out shared slices
/// only of bytes it will never write again.
pub trait SegmentMap: 'static {
    /// Base address of the mapping.
    fn as_ptr(&self) -> *mut u8;
    /// Length of the mapping in bytes (the segment size).
    fn len(&self) -> usize;
    /// True when `len()` is zero (never, for a real segment).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Makes every byte written so far durable; `dirty` is the range written
    /// since the previous successful sync (a hint: the real file syncs
    /// everything). Completes only once the device reports completion.
    fn sync_data(&self, dirty: Range<usize>) -> LocalFuture<io::Result<()>>;
    /// Blocking form, used at open/recovery only.
    fn sync_blocking(&self) -> io::Result<()>;
    /// Writes `bytes` at `offset` through the file rather than the mapping
    /// (the page cache is shared, so the mapping reads them at once).
    /// `None`: not supported; the caller writes through the mapping.
    fn write_at(&self, offset: usize, bytes: &[u8]) -> Option<io::Result<()>> {
        let _ = (offset, bytes);
        None
    }
    /// Whether [`SegmentMap::write_at`] is supported.
    fn writes_through_file(&self) -> bool {
        false
    }
    /// Starts (does not wait for) writeback of `range`: an optimisation
    /// with no durability meaning. `None`: not supported.
    fn write_behind(&self, range: Range<usize>) -> Option<LocalFuture<()>> {
        let _ = range;
        None
    }
}

/// A shard's directory of segments.
pub trait Storage: 'static {
    /// The segment type.
    type Segment: SegmentMap;
    /// Sequence numbers of the segments present, in any order.
    fn list_segments(&self) -> Result<Vec<u64>, SpoolError>;
    /// Where segment `seq` lives, for error messages.
    fn segment_path(&self, seq: u64) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("segment {seq}"))
    }
    /// Maps an existing segment.
    fn open_segment(&self, seq: u64) -> Result<Self::Segment, SpoolError>;
    /// Removes segment `seq` if it is an empty file (a crash came between
    /// its creation and its reservation, so it never held a byte) and says
    /// whether it did. Storage that cannot leave such a file keeps the
    /// default.
    fn discard_if_empty(&self, _seq: u64) -> Result<bool, SpoolError> {
        Ok(false)
    }
    /// Creates (exclusively), reserves `bytes` (`fallocate`) and maps a new
    /// segment. May block; [`SpoolError::DiskFull`] when space is short.
    fn create_segment(&self, seq: u64, bytes: usize) -> Result<Self::Segment, SpoolError>;
    /// The same off the shard's thread where the storage can do that.
    fn create_segment_background(
        &self,
        seq: u64,
        bytes: usize,
    ) -> LocalFuture<Result<Self::Segment, SpoolError>>;
    /// Unlinks a segment (durable only after the next directory sync).
    fn remove_segment(&self, seq: u64) -> Result<(), SpoolError>;
    /// The same off the shard's thread where the storage can do that
    /// (unlinking a large file frees its blocks and page cache: not free).
    fn remove_segment_background(&self, seq: u64) -> LocalFuture<Result<(), SpoolError>> {
        let r = self.remove_segment(seq);
        Box::pin(async move { r })
    }
    /// Renames segment `from` (whose mapping is `seg`) to `to` for a new
    /// life, keeping its reserved blocks and mapping, and pre-faults the
    /// mapping, off the shard's thread where the storage can. The rename
    /// is durable only after the next directory sync.
    fn recycle_segment(
        &self,
        seg: Self::Segment,
        from: u64,
        to: u64,
    ) -> LocalFuture<Result<Self::Segment, SpoolError>>;
    /// Makes creations and removals durable.
    fn sync_dir(&self) -> LocalFuture<io::Result<()>>;
    /// Blocking form, used at open only.
    fn sync_dir_blocking(&self) -> io::Result<()>;
    /// Keeps `bytes` aside under `name` (idempotent per name).
    fn quarantine(&self, name: &str, bytes: &[u8]) -> Result<(), SpoolError>;
    /// Bytes free for new segments.
    fn free_bytes(&self) -> Result<u64, SpoolError>;
    /// A printable location of segment `seq`, for errors and logs.
    fn describe(&self, seq: u64) -> String;
}
