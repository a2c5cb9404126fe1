//! The power-loss test double: an in-memory [`Storage`] that remembers, for
//! every segment, what a real disk would still hold after a power cut.
//!
//! Each segment has a volatile image (what the spool's mapping shows, like
//! the page cache) and a durable image (what `sync_data` last made durable).
//! Creating and removing segments is pending until `sync_dir`. [`MemStorage::crash`]
//! returns the disk as it would come back: durable images plus a torn prefix
//! of the unsynced bytes, pending directory operations each either applied
//! or lost. Faults can be injected: a failing sync (EIO) and a capacity
//! limit (ENOSPC at create).

// std
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::rc::Rc;

// crate
use crate::error::SpoolError;
use crate::storage::{LocalFuture, SegmentMap, Storage};

/// A heap buffer addressed by raw pointer (like a mapping).
struct Buf {
    ptr: *mut u8,
    len: usize,
}

impl Buf {
    fn new(bytes: Vec<u8>) -> Rc<Buf> {
        let b = bytes.into_boxed_slice();
        let len = b.len();
        let ptr = Box::into_raw(b) as *mut u8;
        Rc::new(Buf { ptr, len })
    }

    fn copy(&self, range: Range<usize>) -> Vec<u8> {
        // SAFETY: ptr/len describe the boxed slice leaked in `new`; the
        // spool is single-threaded and holds no `&mut` across this call.
        unsafe { std::slice::from_raw_parts(self.ptr.add(range.start), range.end - range.start) }
            .to_vec()
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: reconstructs exactly the box leaked in `new`.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.ptr, self.len)) });
    }
}

struct File {
    buf: Rc<Buf>,
    durable: Vec<u8>,
    /// The directory entry survives a crash.
    entry_durable: bool,
    /// Unlinked (durably so once `entry_durable` is false and it is gone).
    removed: bool,
    /// Renamed from this sequence number; the rename is pending until the
    /// next directory sync (a crash keeps either name, never both).
    renamed_from: Option<u64>,
}

#[derive(Default)]
struct Disk {
    files: BTreeMap<u64, File>,
    quarantine: BTreeMap<String, Vec<u8>>,
    capacity_bytes: Option<u64>,
    fail_syncs: bool,
    syncs: u64,
}

impl Disk {
    fn used_bytes(&self) -> u64 {
        self.files
            .values()
            .filter(|f| !f.removed)
            .map(|f| f.buf.len as u64)
            .sum()
    }
}

/// The in-memory storage double. Clones share one disk.
#[derive(Clone, Default)]
pub struct MemStorage {
    disk: Rc<RefCell<Disk>>,
}

/// A segment of [`MemStorage`].
pub struct MemSegment {
    buf: Rc<Buf>,
    disk: Rc<RefCell<Disk>>,
    seq: u64,
}

impl SegmentMap for MemSegment {
    fn as_ptr(&self) -> *mut u8 {
        self.buf.ptr
    }

    fn len(&self) -> usize {
        self.buf.len
    }

    fn sync_data(&self, dirty: Range<usize>) -> LocalFuture<io::Result<()>> {
        let r = self.sync_range(dirty);
        Box::pin(async move { r })
    }

    fn sync_blocking(&self) -> io::Result<()> {
        self.sync_range(0..self.buf.len)
    }
}

impl MemSegment {
    fn sync_range(&self, dirty: Range<usize>) -> io::Result<()> {
        let mut disk = self.disk.borrow_mut();
        if disk.fail_syncs {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        disk.syncs += 1;
        let bytes = self.buf.copy(dirty.clone());
        if let Some(f) = disk.files.get_mut(&self.seq) {
            if Rc::ptr_eq(&f.buf, &self.buf) {
                f.durable[dirty].copy_from_slice(&bytes);
            }
        }
        Ok(())
    }
}

/// A tiny deterministic generator for crash choices.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

impl MemStorage {
    /// An empty disk without a capacity limit.
    pub fn new() -> Self {
        Self::default()
    }

    /// Limits the bytes segments may occupy (`None`: unlimited).
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.disk.borrow_mut().capacity_bytes = bytes;
    }

    /// Makes every later sync fail with EIO (`false` heals it).
    pub fn set_fail_syncs(&self, fail: bool) {
        self.disk.borrow_mut().fail_syncs = fail;
    }

    /// Successful data syncs so far.
    pub fn sync_count(&self) -> u64 {
        self.disk.borrow().syncs
    }

    /// The durable image of segment `seq` (what a power cut would leave,
    /// before tearing), if it exists.
    pub fn durable_image(&self, seq: u64) -> Option<Vec<u8>> {
        let disk = self.disk.borrow();
        disk.files
            .get(&seq)
            .filter(|f| !f.removed)
            .map(|f| f.durable.clone())
    }

    /// Names of quarantined pieces.
    pub fn quarantined(&self) -> Vec<String> {
        self.disk.borrow().quarantine.keys().cloned().collect()
    }

    /// Flips bits or overwrites bytes of segment `seq` (volatile and durable
    /// images alike), as a bad disk would.
    pub fn corrupt(&self, seq: u64, at: usize, bytes: &[u8]) {
        let mut disk = self.disk.borrow_mut();
        if let Some(f) = disk.files.get_mut(&seq) {
            let end = (at + bytes.len()).min(f.durable.len());
            f.durable[at..end].copy_from_slice(&bytes[..end - at]);
            // SAFETY: in-bounds write to the leaked buffer; test-only, no
            // slice of it is alive in the caller while it corrupts.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), f.buf.ptr.add(at), end - at) };
        }
    }

    /// The disk after a power cut at this instant. `seed` picks how much of
    /// each unsynced stretch survives and which pending directory
    /// operations happened.
    pub fn crash(&self, seed: u64) -> MemStorage {
        let mut rng = XorShift(seed | 1);
        let old = self.disk.borrow();
        let mut disk = Disk {
            quarantine: old.quarantine.clone(),
            capacity_bytes: old.capacity_bytes,
            ..Disk::default()
        };
        for (&seq, f) in &old.files {
            let present = match (f.entry_durable, f.removed) {
                (true, false) => true,
                (false, true) => false,
                // Pending create or pending remove: a coin flip.
                _ => rng.below(2) == 0,
            };
            if !present {
                continue;
            }
            // A pending rename: the old name or the new one.
            let seq = match f.renamed_from {
                Some(from) if rng.below(2) == 0 => from,
                _ => seq,
            };
            let mut image = f.durable.clone();
            let live = f.buf.copy(0..f.buf.len);
            if let Some(first) = (0..image.len()).find(|&i| image[i] != live[i]) {
                let last = (first..image.len())
                    .rev()
                    .find(|&i| image[i] != live[i])
                    .unwrap_or(first);
                let keep = rng.below((last - first + 2) as u64) as usize;
                image[first..first + keep].copy_from_slice(&live[first..first + keep]);
            }
            disk.files.insert(
                seq,
                File {
                    buf: Buf::new(image.clone()),
                    durable: image,
                    entry_durable: true,
                    removed: false,
                    renamed_from: None,
                },
            );
        }
        MemStorage {
            disk: Rc::new(RefCell::new(disk)),
        }
    }

    fn rename(&self, seg: &mut MemSegment, from: u64, to: u64) -> Result<(), SpoolError> {
        let mut disk = self.disk.borrow_mut();
        if disk.files.get(&to).is_some_and(|f| !f.removed) {
            return Err(SpoolError::Io {
                op: "renaming",
                path: self.describe(to).into(),
                source: io::Error::from_raw_os_error(libc::EEXIST),
            });
        }
        let Some(mut f) = disk.files.remove(&from) else {
            return Err(SpoolError::Io {
                op: "renaming",
                path: self.describe(from).into(),
                source: io::Error::from_raw_os_error(libc::ENOENT),
            });
        };
        assert!(Rc::ptr_eq(&f.buf, &seg.buf), "the segment's own file");
        // Renamed twice before a directory sync: the oldest durable name.
        if f.entry_durable && f.renamed_from.is_none() {
            f.renamed_from = Some(from);
        }
        disk.files.insert(to, f);
        seg.seq = to;
        Ok(())
    }

    fn segment(&self, seq: u64, buf: Rc<Buf>) -> MemSegment {
        MemSegment {
            buf,
            disk: Rc::clone(&self.disk),
            seq,
        }
    }
}

impl Storage for MemStorage {
    type Segment = MemSegment;

    fn list_segments(&self) -> Result<Vec<u64>, SpoolError> {
        Ok(self
            .disk
            .borrow()
            .files
            .iter()
            .filter(|(_, f)| !f.removed)
            .map(|(&q, _)| q)
            .collect())
    }

    fn open_segment(&self, seq: u64) -> Result<MemSegment, SpoolError> {
        let buf = match self.disk.borrow().files.get(&seq) {
            Some(f) if !f.removed => Rc::clone(&f.buf),
            _ => {
                return Err(SpoolError::Io {
                    op: "opening",
                    path: self.describe(seq).into(),
                    source: io::Error::from_raw_os_error(libc::ENOENT),
                })
            }
        };
        Ok(self.segment(seq, buf))
    }

    fn create_segment(&self, seq: u64, bytes: usize) -> Result<MemSegment, SpoolError> {
        let mut disk = self.disk.borrow_mut();
        if disk.files.get(&seq).is_some_and(|f| !f.removed) {
            return Err(SpoolError::Io {
                op: "creating",
                path: self.describe(seq).into(),
                source: io::Error::from_raw_os_error(libc::EEXIST),
            });
        }
        if let Some(cap) = disk.capacity_bytes {
            if disk.used_bytes() + bytes as u64 > cap {
                return Err(SpoolError::DiskFull {
                    path: self.describe(seq).into(),
                    needed_bytes: bytes as u64,
                });
            }
        }
        let buf = Buf::new(vec![0; bytes]);
        disk.files.insert(
            seq,
            File {
                buf: Rc::clone(&buf),
                durable: vec![0; bytes],
                entry_durable: false,
                removed: false,
                renamed_from: None,
            },
        );
        drop(disk);
        Ok(self.segment(seq, buf))
    }

    fn create_segment_background(
        &self,
        seq: u64,
        bytes: usize,
    ) -> LocalFuture<Result<MemSegment, SpoolError>> {
        let r = self.create_segment(seq, bytes);
        Box::pin(async move { r })
    }

    fn remove_segment(&self, seq: u64) -> Result<(), SpoolError> {
        if let Some(f) = self.disk.borrow_mut().files.get_mut(&seq) {
            f.removed = true;
        }
        Ok(())
    }

    fn recycle_segment(
        &self,
        mut seg: MemSegment,
        from: u64,
        to: u64,
    ) -> LocalFuture<Result<MemSegment, SpoolError>> {
        let r = self.rename(&mut seg, from, to).map(|()| seg);
        Box::pin(async move { r })
    }

    fn sync_dir(&self) -> LocalFuture<io::Result<()>> {
        let r = self.sync_dir_blocking();
        Box::pin(async move { r })
    }

    fn sync_dir_blocking(&self) -> io::Result<()> {
        let mut disk = self.disk.borrow_mut();
        if disk.fail_syncs {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        disk.files.retain(|_, f| !f.removed);
        for f in disk.files.values_mut() {
            f.entry_durable = true;
            f.renamed_from = None;
        }
        Ok(())
    }

    fn quarantine(&self, name: &str, bytes: &[u8]) -> Result<(), SpoolError> {
        self.disk
            .borrow_mut()
            .quarantine
            .entry(name.to_string())
            .or_insert_with(|| bytes.to_vec());
        Ok(())
    }

    fn free_bytes(&self) -> Result<u64, SpoolError> {
        let disk = self.disk.borrow();
        Ok(match disk.capacity_bytes {
            Some(cap) => cap.saturating_sub(disk.used_bytes()),
            None => u64::MAX / 2,
        })
    }

    fn describe(&self, seq: u64) -> String {
        format!("mem:seg-{seq:016x}")
    }
}
