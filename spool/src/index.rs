//! The in-memory index of live messages: what recovery rebuilds.
//!
//! One [`Live`] entry per message that still has recipients to deliver:
//! 56 bytes, plus the hash map's key (8 bytes) and control byte, so about
//! 75 bytes at the map's 7/8 load (messages with more than 64
//! recipients add a boxed bitmap of `count / 8` bytes).

/// Where a record lives: segment sequence number, byte offset of the record
/// header, and the record's length (padding included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordRef {
    /// Segment sequence number.
    pub segment: u64,
    /// Offset of the record header in the segment.
    pub offset: u32,
    /// Record length in bytes, header and padding included.
    pub len: u32,
}

/// Which recipients are complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DoneSet {
    /// Up to 64 recipients: a bitmap in place.
    Small(u64),
    /// More: a boxed bitmap.
    Big(Box<[u64]>),
}

impl DoneSet {
    pub(crate) fn new(count: u32) -> Self {
        if count <= 64 {
            DoneSet::Small(0)
        } else {
            DoneSet::Big(vec![0; (count as usize).div_ceil(64)].into_boxed_slice())
        }
    }

    pub(crate) fn contains(&self, i: u32) -> bool {
        let (w, b) = ((i / 64) as usize, i % 64);
        match self {
            DoneSet::Small(m) => w == 0 && m & (1 << b) != 0,
            DoneSet::Big(v) => v.get(w).is_some_and(|m| m & (1 << b) != 0),
        }
    }

    /// Marks `i` done; true if it was not done before. `i` < count.
    pub(crate) fn insert(&mut self, i: u32) -> bool {
        let (w, b) = ((i / 64) as usize, i % 64);
        let m = match self {
            DoneSet::Small(m) => {
                assert_eq!(w, 0, "recipient index checked against count");
                m
            }
            DoneSet::Big(v) => &mut v[w],
        };
        let fresh = *m & (1 << b) == 0;
        *m |= 1 << b;
        fresh
    }

    /// Writes the set as the record's little-endian byte mask.
    pub(crate) fn write_mask(&self, dst: &mut [u8]) {
        for (i, byte) in dst.iter_mut().enumerate() {
            let word = match self {
                DoneSet::Small(m) => {
                    if i < 8 {
                        *m
                    } else {
                        0
                    }
                }
                DoneSet::Big(v) => v.get(i / 8).copied().unwrap_or(0),
            };
            *byte = (word >> ((i % 8) * 8)) as u8;
        }
    }
}

/// One live message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Live {
    /// Its current copy.
    pub(crate) rec: RecordRef,
    /// Recipients in the record.
    pub(crate) count: u32,
    /// Recipients not yet complete (> 0 while the entry exists).
    pub(crate) remaining: u32,
    /// Attempts made so far (from the latest deferral).
    pub(crate) attempts: u32,
    /// Next attempt, ms since the Unix epoch.
    pub(crate) next_attempt_unix_ms: u64,
    /// Completed recipients.
    pub(crate) done: DoneSet,
}

const _: () = assert!(std::mem::size_of::<Live>() <= 56);
