//! The compact per-recipient queue entry and the scheduled-queue item.
//!
//! A queued recipient is one [`Entry`] (40 bytes) in a ready queue, or one
//! [`Timed`] (56 bytes) in the shard's scheduled heap. Addresses, DSN
//! parameters and the body are not copied: the delivery side reads them
//! back from the spool record through `rec` when it sends.

// std
use std::cmp::Ordering;

// external
use sluice_spool::RecordRef;

/// One recipient of one message, waiting for delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Spool message id.
    pub id: u64,
    /// Where the message record is (sender, recipients, body).
    pub rec: RecordRef,
    /// Give up after this time (ms since the Unix epoch): the earlier of the
    /// message's own expiry and arrival plus the destination's max age.
    pub expiry_unix_ms: u64,
    /// Index of the recipient in the spool record.
    pub index: u32,
    /// Delivery attempts made so far (for the retry schedule).
    pub attempts: u32,
}

/// Bytes of an [`Entry`]: the budget is about 128 bytes per queued
/// recipient, and the scheduled heap may hold twice its length in capacity.
pub const ENTRY_BYTES: usize = std::mem::size_of::<Entry>();
const _: () = assert!(ENTRY_BYTES <= 40);

/// Index of a destination in [`super::Queues`].
pub type DestId = u32;

/// An entry waiting in the scheduled heap until `due_unix_ms`.
#[derive(Debug, Clone, Copy)]
pub struct Timed {
    /// When it becomes ready (never later than its expiry).
    pub due_unix_ms: u64,
    /// Its destination.
    pub dest: DestId,
    /// The recipient.
    pub entry: Entry,
}

/// Bytes of a [`Timed`].
pub const TIMED_BYTES: usize = std::mem::size_of::<Timed>();
const _: () = assert!(2 * TIMED_BYTES <= 128);

// Ordered by due time, then by message id and recipient index so the order
// of equal deadlines is deterministic.
impl Ord for Timed {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.due_unix_ms, self.entry.id, self.entry.index).cmp(&(
            other.due_unix_ms,
            other.entry.id,
            other.entry.index,
        ))
    }
}

impl PartialOrd for Timed {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Timed {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Timed {}
