//! The real storage: one directory per shard, segment files reserved with
//! `fallocate`, mapped shared with memmap2, synced through io_uring.
//!
//! Why fdatasync on the file makes the mapped writes durable: appends are
//! plain stores into a `MAP_SHARED` mapping, so they land in the file's
//! page cache pages (a store to a clean page faults, and the kernel marks
//! the page dirty in `page_mkwrite`). `fdatasync(2)` on any descriptor of
//! the inode writes back every dirty page of the file and waits for the
//! device (including a cache flush), exactly as for `write(2)`. The
//! file is fully allocated up front, so the sync needs no metadata beyond
//! what fdatasync already covers, and a store can never hit a hole (SIGBUS
//! on a full disk). We issue the fdatasync through glommio's io_uring
//! (`BufferedFile::fdatasync`, `IORING_OP_FSYNC` with the datasync flag)
//! on a second descriptor of the same file, so the shard never blocks.
//! Caveat: on devices that need stable pages, a store to a page under
//! writeback waits for that writeback.

// std
use std::cell::RefCell;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;

// external
use glommio::io::{BufferedFile, Directory};
use memmap2::{MmapOptions, MmapRaw};

// crate
use crate::error::SpoolError;
use crate::storage::{LocalFuture, SegmentMap, Storage};

/// Segment files of one shard under `<spool>/shard-<n>/`, quarantine under
/// `<spool>/shard-<n>/quarantine/`.
pub struct FsStorage {
    dir: PathBuf,
    quarantine_dir: PathBuf,
    dir_file: File,
    sync_dir: Rc<RefCell<Option<Rc<Directory>>>>,
}

/// A mapped segment file.
pub struct FsSegment {
    map: MmapRaw,
    file: File,
    path: PathBuf,
    sync_file: Rc<RefCell<Option<Rc<BufferedFile>>>>,
}

fn segment_name(seq: u64) -> String {
    format!("seg-{seq:016x}")
}

/// Creates `path` with mode 0700, or checks that it is a private directory
/// (not a symlink, no access for group or others).
fn ensure_private_dir(path: &Path) -> Result<(), SpoolError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => {
            if m.file_type().is_symlink() {
                return Err(SpoolError::Permissions {
                    path: path.into(),
                    detail: "is a symlink; point the spool at the real directory".into(),
                });
            }
            if !m.is_dir() {
                return Err(SpoolError::Permissions {
                    path: path.into(),
                    detail: "is not a directory".into(),
                });
            }
            if m.mode() & 0o077 != 0 {
                return Err(SpoolError::Permissions {
                    path: path.into(),
                    detail: format!(
                        "mode is {:04o}; the spool must be private: chmod 700 {}",
                        m.mode() & 0o7777,
                        path.display()
                    ),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => DirBuilder::new()
            .mode(0o700)
            .create(path)
            .map_err(|e| SpoolError::io("creating directory", path, e)),
        Err(e) => Err(SpoolError::io("inspecting", path, e)),
    }
}

/// How much of a new mapping to fault in before it is handed over.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Nothing: the shard's stores fault pages in one at a time.
    Lazily,
    /// Everything at once, with readahead (recovery reads it all).
    Whole,
}

/// Step of the pre-fault of a recycled segment. Glommio's blocking pool
/// runs on the shard's own CPU, and faulting in a whole 64 MiB segment in
/// one call (MAP_POPULATE of a fresh one took 70–80 ms there) holds the
/// shard's replies up: 2 MiB steps with a yield between them keep that
/// wait short.
const PREFAULT_CHUNK: usize = 2 << 20;

/// Maps `bytes` of `file` and tells the kernel not to read ahead on faults
/// in it (`MADV_RANDOM`): a store to a page that is not in the page cache
/// yet would otherwise fault in the device's whole readahead window (8 MiB
/// on this machine's disk, zero-filled from the segment's unwritten blocks,
/// 15–25 ms on the shard's thread in the middle of an append).
///
/// It also keeps the page cache folios of a segment at 4 KiB, which is what
/// keeps group commits from rewriting the device: the first store into a
/// clean folio after a sync marks the *whole* folio dirty (`page_mkwrite`),
/// so with the large folios readahead builds, every small commit wrote up to
/// 2 MiB again. At 17,000 messages/s (about 500 commits/s of ~75 KB each)
/// the device wrote 11 GB in 20 s with readahead folios, 25 GB with
/// `MADV_HUGEPAGE`, and 1.1 GB (the records and the delivery log) with
/// 4 KiB folios. The price is paid at saturation with large commits, where
/// per-folio writeback work dominates (2 KB appends on two shards: about
/// 160k/s in all against 290k/s with readahead folios); see BENCHMARKS.md.
///
/// Fresh segments are not pre-faulted: on the blocking pool that work
/// competes for the shard's CPU anyway, and at 20 KB records it made spares
/// late (16–25 of 40 rotations created the segment inline).
fn map_file(file: &File, path: &Path, bytes: usize, fault: Fault) -> Result<MmapRaw, SpoolError> {
    let mut o = MmapOptions::new();
    o.len(bytes);
    if fault == Fault::Whole {
        o.populate();
    }
    let map = o
        .map_raw(file)
        .map_err(|e| SpoolError::io("mapping", path, e))?;
    // SAFETY: the range is the mapping just made; the advice changes no byte.
    // Failure only leaves the default readahead in place.
    unsafe { libc::madvise(map.as_mut_ptr().cast(), map.len(), libc::MADV_RANDOM) };
    Ok(map)
}

/// Faults a segment's mapping in [`PREFAULT_CHUNK`] steps, yielding the CPU
/// between them.
/// `POSIX_FADV_WILLNEED` on each step first reads pages that were evicted
/// in one request (the mapping's `MADV_RANDOM` would otherwise fault them
/// in a page at a time); pages still cached cost it nothing.
fn prefault_chunked(fd: RawFd, addr: usize, len: usize) {
    let mut off = 0;
    while off < len {
        let n = PREFAULT_CHUNK.min(len - off);
        // SAFETY: plain syscall on a descriptor the caller keeps open;
        // advice only.
        unsafe {
            libc::posix_fadvise(
                fd,
                off as libc::off_t,
                n as libc::off_t,
                libc::POSIX_FADV_WILLNEED,
            )
        };
        prefault(addr + off, n);
        off += n;
        std::thread::yield_now();
    }
}

/// Maps the pages of a recycled segment's mapping into the page tables now
/// (reading them from disk if they were evicted), off the shard's thread,
/// so its first appends do not wait for reads. Reads only: a write fault
/// would dirty the stale pages and write them back for nothing.
fn prefault(addr: usize, len: usize) {
    const MADV_POPULATE_READ: libc::c_int = 22; // Linux 5.14
                                                // SAFETY: `addr..addr + len` is a live mapping owned by the caller;
                                                // populating reads it and changes no byte.
    let rc = unsafe { libc::madvise(addr as *mut libc::c_void, len, MADV_POPULATE_READ) };
    if rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // Older kernels: touch one byte per page. (Any other failure is
        // left alone: pre-faulting is only an optimisation.)
        let mut sum = 0u8;
        for off in (0..len).step_by(4096) {
            // SAFETY: in bounds of the live mapping; a plain read.
            sum ^= unsafe { std::ptr::read_volatile((addr + off) as *const u8) };
        }
        std::hint::black_box(sum);
    }
}

/// Creates, reserves and maps a segment: runs on any thread.
fn create_file(path: &Path, bytes: usize, fault: Fault) -> Result<(File, MmapRaw), SpoolError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| SpoolError::io("creating segment", path, e))?;
    // Reserve every block now: a store into a hole of a full file system
    // would raise SIGBUS instead of returning ENOSPC.
    // SAFETY: plain syscall on a descriptor we own.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, bytes as libc::off_t) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        drop(file);
        // Best effort: the file holds nothing yet.
        let _ = std::fs::remove_file(path);
        return Err(match err.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => SpoolError::DiskFull {
                path: path.into(),
                needed_bytes: bytes as u64,
            },
            _ => SpoolError::io("reserving (fallocate)", path, err),
        });
    }
    let map = map_file(&file, path, bytes, fault)?;
    Ok((file, map))
}

impl FsStorage {
    /// Opens (creating if needed) `<spool_dir>/shard-<shard>/`. Directories
    /// are created 0700; an existing one open to group or others, or a
    /// symlink, is a [`SpoolError::Permissions`] error naming the path.
    /// The shard directory is locked (`flock`) while the storage lives: a
    /// second open, from this process or another, is [`SpoolError::Locked`].
    pub fn open(spool_dir: &Path, shard: u32) -> Result<Self, SpoolError> {
        ensure_private_dir(spool_dir)?;
        let dir = spool_dir.join(format!("shard-{shard}"));
        ensure_private_dir(&dir)?;
        let quarantine_dir = dir.join("quarantine");
        ensure_private_dir(&quarantine_dir)?;
        let dir_file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&dir)
            .map_err(|e| SpoolError::io("opening directory", &dir, e))?;
        // Held until `dir_file` is closed (the spool is dropped or the
        // process dies, kill -9 included).
        // SAFETY: plain syscall on a descriptor we own.
        if unsafe { libc::flock(dir_file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            return Err(if e.kind() == io::ErrorKind::WouldBlock {
                SpoolError::Locked { path: dir }
            } else {
                SpoolError::io("locking", &dir, e)
            });
        }
        Ok(FsStorage {
            dir,
            quarantine_dir,
            dir_file,
            sync_dir: Rc::new(RefCell::new(None)),
        })
    }

    /// The shard directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The quarantine directory.
    pub fn quarantine_dir(&self) -> &Path {
        &self.quarantine_dir
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(segment_name(seq))
    }

    fn segment(&self, file: File, map: MmapRaw, path: PathBuf) -> FsSegment {
        FsSegment {
            map,
            file,
            path,
            sync_file: Rc::new(RefCell::new(None)),
        }
    }
}

async fn sync_handle(
    path: &Path,
    slot: &RefCell<Option<Rc<BufferedFile>>>,
) -> io::Result<Rc<BufferedFile>> {
    if let Some(f) = slot.borrow().as_ref() {
        return Ok(Rc::clone(f));
    }
    let f = glommio::io::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .buffered_open(path)
        .await
        .map_err(io::Error::from)?;
    let f = Rc::new(f);
    *slot.borrow_mut() = Some(Rc::clone(&f));
    Ok(f)
}

impl SegmentMap for FsSegment {
    fn as_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn sync_data(&self, _dirty: Range<usize>) -> LocalFuture<io::Result<()>> {
        let slot = Rc::clone(&self.sync_file);
        let path = self.path.clone();
        Box::pin(async move {
            let f = sync_handle(&path, &slot).await?;
            f.fdatasync().await.map_err(io::Error::from)
        })
    }

    fn sync_blocking(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn writes_through_file(&self) -> bool {
        true
    }

    fn write_at(&self, offset: usize, bytes: &[u8]) -> Option<io::Result<()>> {
        use std::os::unix::fs::FileExt;
        if offset.saturating_add(bytes.len()) > self.map.len() {
            return Some(Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "write past the end of the segment",
            )));
        }
        // A page-cache copy into blocks the segment reserved with
        // fallocate: no write fault and no page to write-protect again at
        // writeback, unlike a store through the mapping.
        Some(self.file.write_all_at(bytes, offset as u64))
    }

    fn write_behind(&self, range: Range<usize>) -> Option<LocalFuture<()>> {
        // The caller keeps the segment (and so the descriptor) alive until
        // this future completes.
        let fd = self.file.as_raw_fd();
        let (off, len) = (
            range.start as libc::off64_t,
            (range.end - range.start) as libc::off64_t,
        );
        Some(Box::pin(async move {
            glommio::executor()
                .spawn_blocking(move || {
                    // SAFETY: plain syscall; `fd` stays open (see above).
                    // SYNC_FILE_RANGE_WRITE only starts writeback: errors
                    // surface in the fdatasync that follows.
                    unsafe { libc::sync_file_range(fd, off, len, libc::SYNC_FILE_RANGE_WRITE) };
                })
                .await;
        }))
    }
}

impl Storage for FsStorage {
    type Segment = FsSegment;

    fn segment_path(&self, seq: u64) -> PathBuf {
        self.path(seq)
    }

    fn list_segments(&self) -> Result<Vec<u64>, SpoolError> {
        let rd =
            std::fs::read_dir(&self.dir).map_err(|e| SpoolError::io("listing", &self.dir, e))?;
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| SpoolError::io("listing", &self.dir, e))?;
            let name = entry.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_prefix("seg-")) else {
                continue;
            };
            if hex.len() == 16 {
                if let Ok(seq) = u64::from_str_radix(hex, 16) {
                    out.push(seq);
                }
            }
        }
        Ok(out)
    }

    fn open_segment(&self, seq: u64) -> Result<FsSegment, SpoolError> {
        let path = self.path(seq);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| SpoolError::io("opening segment", &path, e))?;
        let m = file
            .metadata()
            .map_err(|e| SpoolError::io("inspecting", &path, e))?;
        if !m.is_file() || m.mode() & 0o077 != 0 {
            return Err(SpoolError::Permissions {
                path,
                detail: format!(
                    "must be a regular file with mode 0600 (is {:04o})",
                    m.mode() & 0o7777
                ),
            });
        }
        let len = usize::try_from(m.len()).unwrap_or(usize::MAX);
        if len == 0 || len > u32::MAX as usize {
            return Err(SpoolError::Io {
                op: "sizing segment",
                path,
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("size {len} out of range"),
                ),
            });
        }
        // Recovery reads the whole segment once: fault it in up front.
        let map = map_file(&file, &path, len, Fault::Whole)?;
        Ok(self.segment(file, map, path))
    }

    fn discard_if_empty(&self, seq: u64) -> Result<bool, SpoolError> {
        let path = self.path(seq);
        let m = std::fs::symlink_metadata(&path)
            .map_err(|e| SpoolError::io("inspecting segment", &path, e))?;
        if !m.file_type().is_file() || m.len() != 0 {
            return Ok(false);
        }
        std::fs::remove_file(&path)
            .map_err(|e| SpoolError::io("removing empty segment", &path, e))?;
        Ok(true)
    }

    fn create_segment(&self, seq: u64, bytes: usize) -> Result<FsSegment, SpoolError> {
        let path = self.path(seq);
        let (file, map) = create_file(&path, bytes, Fault::Lazily)?;
        Ok(self.segment(file, map, path))
    }

    fn create_segment_background(
        &self,
        seq: u64,
        bytes: usize,
    ) -> LocalFuture<Result<FsSegment, SpoolError>> {
        let path = self.path(seq);
        Box::pin(async move {
            let p = path.clone();
            let (file, map) = glommio::executor()
                .spawn_blocking(move || create_file(&p, bytes, Fault::Lazily))
                .await?;
            let seg = FsSegment {
                map,
                file,
                path,
                sync_file: Rc::new(RefCell::new(None)),
            };
            // Open the io_uring handle now, off the commit path.
            sync_handle(&seg.path, &seg.sync_file)
                .await
                .map_err(|e| SpoolError::io("opening for sync", &seg.path, e))?;
            Ok(seg)
        })
    }

    fn remove_segment(&self, seq: u64) -> Result<(), SpoolError> {
        let path = self.path(seq);
        std::fs::remove_file(&path).map_err(|e| SpoolError::io("removing segment", &path, e))
    }

    fn remove_segment_background(&self, seq: u64) -> LocalFuture<Result<(), SpoolError>> {
        let path = self.path(seq);
        Box::pin(async move {
            glommio::executor()
                .spawn_blocking(move || {
                    std::fs::remove_file(&path)
                        .map_err(|e| SpoolError::io("removing segment", &path, e))
                })
                .await
        })
    }

    fn recycle_segment(
        &self,
        mut seg: FsSegment,
        from: u64,
        to: u64,
    ) -> LocalFuture<Result<FsSegment, SpoolError>> {
        let (old, new) = (self.path(from), self.path(to));
        Box::pin(async move {
            // The mapping's address and length travel as integers; `seg`
            // (which owns the mapping) stays in this future until the
            // blocking work is done.
            let (addr, len) = (seg.map.as_mut_ptr() as usize, seg.map.len());
            let fd = seg.file.as_raw_fd();
            let target = new.clone();
            glommio::executor()
                .spawn_blocking(move || {
                    // The target never exists: sequence numbers are new.
                    std::fs::rename(&old, &target)
                        .map_err(|e| SpoolError::io("renaming segment", &old, e))?;
                    prefault_chunked(fd, addr, len);
                    Ok::<(), SpoolError>(())
                })
                .await?;
            seg.path = new;
            Ok(seg)
        })
    }

    fn sync_dir(&self) -> LocalFuture<io::Result<()>> {
        let slot = Rc::clone(&self.sync_dir);
        let dir = self.dir.clone();
        Box::pin(async move {
            let existing = slot.borrow().clone();
            let d = match existing {
                Some(d) => d,
                None => {
                    let d = Rc::new(Directory::open(&dir).await.map_err(io::Error::from)?);
                    *slot.borrow_mut() = Some(Rc::clone(&d));
                    d
                }
            };
            d.sync().await.map_err(io::Error::from)
        })
    }

    fn sync_dir_blocking(&self) -> io::Result<()> {
        self.dir_file.sync_all()
    }

    fn quarantine(&self, name: &str, bytes: &[u8]) -> Result<(), SpoolError> {
        let path = self.quarantine_dir.join(name);
        let mut f = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => f,
            // Quarantined by an earlier recovery already.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
            Err(e) => return Err(SpoolError::io("creating quarantine file", &path, e)),
        };
        io::Write::write_all(&mut f, bytes).map_err(|e| SpoolError::io("writing", &path, e))?;
        f.sync_all()
            .map_err(|e| SpoolError::io("syncing", &path, e))
    }

    fn free_bytes(&self) -> Result<u64, SpoolError> {
        // SAFETY: statvfs fills the zeroed struct; the fd is ours.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::fstatvfs(self.dir_file.as_raw_fd(), &mut st) };
        if rc != 0 {
            return Err(SpoolError::io(
                "statvfs",
                &self.dir,
                io::Error::last_os_error(),
            ));
        }
        Ok(st.f_bavail as u64 * st.f_frsize as u64)
    }

    fn describe(&self, seq: u64) -> String {
        self.path(seq).display().to_string()
    }
}
