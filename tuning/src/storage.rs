//! The spool directory: its filesystem, free space, whether `fallocate` works
//! there, and measured fdatasync latency and sequential write bandwidth.
//!
//! The measurements copy what the spool does: reserve a file with
//! `fallocate`, then append small records and `fdatasync` after each (the
//! group-commit sync that every `250` waits for), and stream large writes
//! with `O_DIRECT`. Every run is bounded in bytes and in time, and its scratch
//! files are removed even when a step fails.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Size of one direct write; also the alignment O_DIRECT needs (a multiple
/// of the logical block size on every device we know).
const DIRECT_CHUNK_BYTES: usize = 1 << 20;
const DIRECT_ALIGN_BYTES: usize = 4096;
const _: () = assert!(DIRECT_CHUNK_BYTES % DIRECT_ALIGN_BYTES == 0);

/// Bytes reserved to test `fallocate`, as a spool segment would be.
const FALLOCATE_PROBE_BYTES: u64 = 16 << 20;

/// Hard ceiling on the bandwidth test, whatever the options say.
pub const WRITE_BYTES_CEILING: u64 = 1 << 30;

/// How much to measure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StorageOptions {
    /// Number of write+fdatasync rounds.
    pub sync_count: usize,
    /// Bytes written before each fdatasync (a small group-commit batch).
    pub sync_write_bytes: usize,
    /// Stop the sync rounds after this long even if fewer were done.
    pub sync_time_max: Duration,
    /// Bytes for the sequential write test (capped at
    /// [`WRITE_BYTES_CEILING`]).
    pub write_bytes: u64,
    /// Stop the sequential write after this long.
    pub write_time_max: Duration,
}

impl Default for StorageOptions {
    fn default() -> Self {
        Self {
            sync_count: 200,
            sync_write_bytes: 4096,
            sync_time_max: Duration::from_secs(5),
            write_bytes: 256 << 20,
            write_time_max: Duration::from_secs(5),
        }
    }
}

/// Summary of the fdatasync rounds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SyncLatency {
    /// Rounds completed.
    pub count: usize,
    /// Median latency of write+fdatasync, microseconds.
    pub median_us: u64,
    /// 99th percentile, microseconds.
    pub p99_us: u64,
    /// Slowest round, microseconds.
    pub max_us: u64,
}

/// Result of the sequential write.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WriteBandwidth {
    /// Bytes written (and synced).
    pub bytes: u64,
    /// Wall time including the final fdatasync.
    pub elapsed_s: f64,
    /// `bytes / seconds` in MiB/s.
    pub mib_per_s: f64,
    /// Whether `O_DIRECT` was used (false: the filesystem refused it, so the
    /// page cache was used and the final sync flushed it).
    pub direct: bool,
}

/// Everything learned about the spool directory. Each probe records its own
/// failure and the others still run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StorageReport {
    /// The directory examined.
    pub dir: PathBuf,
    /// Filesystem name from the `statfs` magic (`ext4`, `xfs`, `tmpfs`...).
    pub filesystem: Option<String>,
    /// The raw magic, in hex.
    pub filesystem_magic: Option<String>,
    /// Size of the filesystem.
    pub total_bytes: Option<u64>,
    /// Space available to this user.
    pub free_bytes: Option<u64>,
    /// Whether a 16 MiB `fallocate` succeeded.
    pub fallocate_ok: Option<bool>,
    /// The fallocate error, if any.
    pub fallocate_error: Option<String>,
    /// fdatasync latency.
    pub sync: Option<SyncLatency>,
    /// Why the sync test did not run or stopped.
    pub sync_error: Option<String>,
    /// Sequential write bandwidth.
    pub write: Option<WriteBandwidth>,
    /// Why the write test did not run or stopped.
    pub write_error: Option<String>,
}

/// Examines `dir` (which must exist) with `options`.
pub fn inspect_dir(dir: &Path, options: &StorageOptions) -> StorageReport {
    let mut report = StorageReport {
        dir: dir.to_path_buf(),
        filesystem: None,
        filesystem_magic: None,
        total_bytes: None,
        free_bytes: None,
        fallocate_ok: None,
        fallocate_error: None,
        sync: None,
        sync_error: None,
        write: None,
        write_error: None,
    };
    if let Ok(stats) = statfs(dir) {
        report.filesystem = Some(filesystem_name(stats.magic).to_owned());
        report.filesystem_magic = Some(format!("{:#x}", stats.magic));
        report.total_bytes = Some(stats.total_bytes);
        report.free_bytes = Some(stats.free_bytes);
    }
    match probe_fallocate(dir) {
        Ok(()) => report.fallocate_ok = Some(true),
        Err(error) => {
            report.fallocate_ok = Some(false);
            report.fallocate_error = Some(error.to_string());
        }
    }
    match measure_fdatasync(dir, options) {
        Ok(sync) => report.sync = Some(sync),
        Err(error) => report.sync_error = Some(error.to_string()),
    }
    match measure_write(dir, options) {
        Ok(write) => report.write = Some(write),
        Err(error) => report.write_error = Some(error.to_string()),
    }
    report
}

/// `statfs` results used here.
#[derive(Clone, Copy, Debug)]
pub struct FsStats {
    /// `f_type`.
    pub magic: u64,
    /// Filesystem size.
    pub total_bytes: u64,
    /// Space available to unprivileged users.
    pub free_bytes: u64,
}

/// Calls `statfs(2)` on `path`.
pub fn statfs(path: &Path) -> io::Result<FsStats> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: `statfs` is plain old data; all-zero is a valid value.
    let mut stats: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a writable `struct statfs`.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stats) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // Block counts are in fragment-size units; older kernels leave f_frsize 0.
    let unit = if stats.f_frsize > 0 {
        stats.f_frsize
    } else {
        stats.f_bsize
    } as u64;
    Ok(FsStats {
        magic: stats.f_type as u64,
        total_bytes: (stats.f_blocks as u64).saturating_mul(unit),
        free_bytes: (stats.f_bavail as u64).saturating_mul(unit),
    })
}

/// The filesystem name for a `statfs` magic number (`linux/magic.h`).
pub fn filesystem_name(magic: u64) -> &'static str {
    match magic {
        0xEF53 => "ext4",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x0102_1994 => "tmpfs",
        0x794C_7630 => "overlayfs",
        0x2FC1_2FC1 => "zfs",
        0xF2F5_2010 => "f2fs",
        0xCA45_1A4E => "bcachefs",
        0x6969 => "nfs",
        0x6573_5546 => "fuse",
        0x0102_1997 => "9p",
        0xFF53_4D42 => "cifs",
        0x8584_58F6 => "ramfs",
        _ => "other",
    }
}

/// A scratch file in the spool directory, created exclusively with mode 0600
/// and removed on drop.
struct Scratch {
    path: PathBuf,
    file: File,
}

impl Scratch {
    fn create(dir: &Path, tag: &str, direct: bool) -> io::Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(".sluice-tune-{}-{}-{tag}", std::process::id(), n));
        let mut open = OpenOptions::new();
        open.write(true).create_new(true).mode(0o600);
        let mut flags = libc::O_NOFOLLOW;
        if direct {
            flags |= libc::O_DIRECT;
        }
        open.custom_flags(flags);
        let file = open.open(&path)?;
        Ok(Self { path, file })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Best effort: a leftover dot-file is harmless and named after us.
        let _ = fs::remove_file(&self.path);
    }
}

fn fallocate(file: &File, bytes: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length too large"))?;
    // SAFETY: plain syscall on an owned, open descriptor.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reserves 16 MiB in a scratch file, as the spool reserves a segment.
pub fn probe_fallocate(dir: &Path) -> io::Result<()> {
    let scratch = Scratch::create(dir, "fallocate", false)?;
    fallocate(&scratch.file, FALLOCATE_PROBE_BYTES)
}

/// Appends `sync_write_bytes` and fdatasyncs, `sync_count` times or until
/// `sync_time_max`, in a file reserved with fallocate when the filesystem
/// allows it.
pub fn measure_fdatasync(dir: &Path, options: &StorageOptions) -> io::Result<SyncLatency> {
    check_sync_options(options)?;
    Ok(summarize(sync_rounds(dir, options, None)?))
}

/// The write+fdatasync rounds of one writer, as latency samples in
/// microseconds. With `start`, the writer waits there first so several
/// writers begin together.
fn sync_rounds(
    dir: &Path,
    options: &StorageOptions,
    start: Option<&Barrier>,
) -> io::Result<Vec<u64>> {
    let setup = || -> io::Result<Scratch> {
        let scratch = Scratch::create(dir, "sync", false)?;
        let total = (options.sync_count as u64).saturating_mul(options.sync_write_bytes as u64);
        // Without fallocate every write also extends the file; that is what
        // the spool would suffer on such a filesystem too, so measure anyway.
        let _ = fallocate(&scratch.file, total);
        scratch.file.sync_all()?;
        Ok(scratch)
    };
    let scratch = setup();
    // Reach the barrier even when setup failed, so the other writers and
    // the timing thread are never left waiting.
    if let Some(barrier) = start {
        barrier.wait();
    }
    let scratch = scratch?;
    let record = vec![0x5a_u8; options.sync_write_bytes];
    let mut samples_us = Vec::with_capacity(options.sync_count);
    let started = Instant::now();
    for round in 0..options.sync_count {
        let offset = round as u64 * options.sync_write_bytes as u64;
        let begin = Instant::now();
        scratch.file.write_all_at(&record, offset)?;
        scratch.file.sync_data()?;
        samples_us.push(begin.elapsed().as_micros().try_into().unwrap_or(u64::MAX));
        if started.elapsed() >= options.sync_time_max {
            break;
        }
    }
    Ok(samples_us)
}

fn check_sync_options(options: &StorageOptions) -> io::Result<()> {
    if options.sync_count == 0 || options.sync_write_bytes == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "nothing to measure",
        ));
    }
    Ok(())
}

/// Upper bound on concurrent sync writers (one thread each).
pub const SYNC_WRITERS_MAX: usize = 256;

/// What `writers` concurrent write+fdatasync loops achieved together: how
/// group commit scales when every shard syncs its own segment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ParallelSync {
    /// Concurrent writers (shards).
    pub writers: usize,
    /// Syncs completed by all writers together per second of wall time.
    pub syncs_per_s: f64,
    /// Latency over every round of every writer.
    pub latency: SyncLatency,
}

/// Runs `writers` threads, each appending and fdatasyncing its own file in
/// `dir` as [`measure_fdatasync`] does, all starting together.
pub fn measure_parallel_fdatasync(
    dir: &Path,
    writers: usize,
    options: &StorageOptions,
) -> io::Result<ParallelSync> {
    if writers == 0 || writers > SYNC_WRITERS_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("writers must be within 1..={SYNC_WRITERS_MAX}"),
        ));
    }
    check_sync_options(options)?;
    // Every writer plus this thread, which starts the clock.
    let barrier = Barrier::new(writers + 1);
    let (results, seconds) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..writers)
            .map(|_| scope.spawn(|| sync_rounds(dir, options, Some(&barrier))))
            .collect();
        // Every writer reaches the barrier, even after a failed setup.
        barrier.wait();
        let started = Instant::now();
        let results: Vec<io::Result<Vec<u64>>> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(io::Error::other("sync writer panicked")))
            })
            .collect();
        (results, started.elapsed().as_secs_f64().max(1e-9))
    });
    let mut samples_us = Vec::new();
    for result in results {
        samples_us.extend(result?);
    }
    Ok(ParallelSync {
        writers,
        syncs_per_s: samples_us.len() as f64 / seconds,
        latency: summarize(samples_us),
    })
}

/// Median, p99 and max of latency samples (microseconds). `samples_us` must
/// be non-empty.
pub fn summarize(mut samples_us: Vec<u64>) -> SyncLatency {
    assert!(
        !samples_us.is_empty(),
        "summarize needs at least one sample"
    );
    samples_us.sort_unstable();
    let count = samples_us.len();
    // Nearest-rank percentiles: the smallest sample with at least p% of the
    // samples at or below it.
    let rank = |percent: usize| (count * percent).div_ceil(100).clamp(1, count) - 1;
    SyncLatency {
        count,
        median_us: samples_us[rank(50)],
        p99_us: samples_us[rank(99)],
        max_us: samples_us[count - 1],
    }
}

/// A zero-initialised, 4096-aligned heap buffer for O_DIRECT writes.
struct AlignedBuffer {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

impl AlignedBuffer {
    fn new(bytes: usize) -> Self {
        // Size and alignment are non-zero constants; alignment is a power of
        // two (checked by the const below).
        const _: () = assert!(DIRECT_ALIGN_BYTES.is_power_of_two());
        let layout = std::alloc::Layout::from_size_align(bytes, DIRECT_ALIGN_BYTES)
            .expect("constant size and power-of-two alignment");
        // SAFETY: layout has non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = std::ptr::NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout);
        };
        Self { ptr, layout }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` points to `layout.size()` initialised bytes we own.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Streams up to `write_bytes` in 1 MiB direct writes (buffered if the
/// filesystem refuses O_DIRECT), then fdatasyncs; bounded by
/// `write_time_max`.
pub fn measure_write(dir: &Path, options: &StorageOptions) -> io::Result<WriteBandwidth> {
    let bytes_max = options.write_bytes.min(WRITE_BYTES_CEILING);
    if bytes_max == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "nothing to write",
        ));
    }
    let (mut scratch, direct) = match Scratch::create(dir, "write", true) {
        Ok(scratch) => (scratch, true),
        // tmpfs and some FUSE filesystems reject O_DIRECT at open.
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
            (Scratch::create(dir, "write", false)?, false)
        }
        Err(error) => return Err(error),
    };
    let mut buffer = AlignedBuffer::new(DIRECT_CHUNK_BYTES);
    // Non-zero, varying bytes so compressing or deduplicating filesystems
    // cannot skip the work.
    for (index, byte) in buffer.as_mut_slice().iter_mut().enumerate() {
        *byte = (index as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3];
    }
    let started = Instant::now();
    let mut written = 0u64;
    while written < bytes_max && started.elapsed() < options.write_time_max {
        let chunk = (bytes_max - written).min(DIRECT_CHUNK_BYTES as u64) as usize;
        // O_DIRECT lengths must stay aligned: round a short tail up.
        let chunk = chunk.div_ceil(DIRECT_ALIGN_BYTES) * DIRECT_ALIGN_BYTES;
        scratch.file.write_all(&buffer.as_mut_slice()[..chunk])?;
        written += chunk as u64;
    }
    scratch.file.sync_data()?;
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    Ok(WriteBandwidth {
        bytes: written,
        elapsed_s: seconds,
        mib_per_s: written as f64 / (1 << 20) as f64 / seconds,
        direct,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let samples: Vec<u64> = (1..=100).collect();
        let summary = summarize(samples);
        assert_eq!(summary.count, 100);
        assert_eq!(summary.median_us, 50);
        assert_eq!(summary.p99_us, 99);
        assert_eq!(summary.max_us, 100);
        let one = summarize(vec![7]);
        assert_eq!((one.median_us, one.p99_us, one.max_us), (7, 7, 7));
    }

    #[test]
    fn magic_names() {
        assert_eq!(filesystem_name(0xEF53), "ext4");
        assert_eq!(filesystem_name(0x0102_1994), "tmpfs");
        assert_eq!(filesystem_name(1), "other");
    }
}
