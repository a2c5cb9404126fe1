//! The spool core: appends, the live index, group-commit bookkeeping and
//! reclamation decisions. Single-threaded, explicit time, no I/O of its own
//! beyond the [`Storage`] seam; the async driving lives in `spool.rs` and
//! `driver.rs`.

// std
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Range;
use std::rc::Rc;
use std::task::Waker;
use std::time::{Duration, Instant};

// crate
use crate::config::{Durability, SpoolConfig};
use crate::error::SpoolError;
use crate::format::{self, NewMessage, Outcome, RecordKind};
use crate::index::{DoneSet, Live, RecordRef};
use crate::stats::SpoolStats;
use crate::storage::{SegmentMap, Storage};

/// One segment's bookkeeping.
pub(crate) struct SegState<M> {
    pub(crate) map: Rc<M>,
    /// Next free byte.
    pub(crate) write_off: usize,
    /// Bytes below this are durable.
    pub(crate) synced_off: usize,
    /// Message copies here that are still needed (live, or relocated but
    /// the new copy not yet durable).
    pub(crate) live: u32,
    /// Their bytes.
    pub(crate) live_bytes: u64,
    /// Bytes below this were handed to write-behind (writeback started).
    pub(crate) behind_off: usize,
    /// Older segments holding message copies that records here refer to
    /// (completions, deferrals, relocated copies). This segment may go only
    /// after all of them are durably gone, or recovery would resurrect them.
    pub(crate) refs: Vec<u64>,
    /// Seals this segment's records (format version, tag, CRC seed).
    pub(crate) key: format::SegKey,
    /// Lives the file had before this one.
    pub(crate) generation: u32,
}

impl<M: SegmentMap> SegState<M> {
    pub(crate) fn new(map: Rc<M>, key: format::SegKey, generation: u32) -> Self {
        SegState {
            key,
            generation,
            map,
            write_off: 0,
            synced_off: 0,
            live: 0,
            live_bytes: 0,
            behind_off: 0,
            refs: Vec::new(),
        }
    }

    pub(crate) fn add_ref(&mut self, seq: u64) {
        if let Err(at) = self.refs.binary_search(&seq) {
            self.refs.insert(at, seq);
        }
    }

    /// Bytes `[range]` as a shared slice. Only for bytes below `write_off`
    /// (written once, never written again).
    pub(crate) fn bytes(&self, range: Range<usize>) -> &[u8] {
        assert!(range.start <= range.end && range.end <= self.write_off);
        // SAFETY: SegmentMap guarantees `len()` mapped bytes at `as_ptr()`
        // for the life of `map`; the range is below `write_off`, and the
        // spool never writes below `write_off` again.
        unsafe {
            std::slice::from_raw_parts(self.map.as_ptr().add(range.start), range.end - range.start)
        }
    }

    /// Unwritten bytes `[write_off, write_off + len)` as a mutable slice.
    pub(crate) fn fresh(&mut self, len: usize) -> &mut [u8] {
        assert!(self.write_off + len <= self.map.len());
        // SAFETY: beyond `write_off` no shared slice has been handed out and
        // this is the only mutable view (single-threaded, `&mut self`).
        unsafe { std::slice::from_raw_parts_mut(self.map.as_ptr().add(self.write_off), len) }
    }
}

/// What the sync task should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncDue {
    /// Nothing unsynced (or a sync is in flight, or the spool is poisoned).
    Idle,
    /// Sync at this instant (the commit window of the oldest append ends).
    At(Instant),
    /// Sync now.
    Now,
}

/// A snapshot of what one group commit covers.
pub(crate) struct SyncJob<M> {
    pub(crate) target_lsn: u64,
    pub(crate) segs: Vec<(u64, Rc<M>, Range<usize>)>,
    pub(crate) dir: bool,
    pub(crate) records: u64,
}

/// A segment file ready to become the head.
pub(crate) struct Spare<M> {
    pub(crate) map: M,
    /// Recycled: its header is written and durable (and the rename that
    /// gave it its number); a new file gets its header when installed.
    pub(crate) recycled: bool,
    pub(crate) generation: u32,
}

/// Relocated copies waiting for their commit before the old ones die.
pub(crate) struct Relocation {
    pub(crate) target_lsn: u64,
    pub(crate) moved: Vec<(u64, RecordRef)>,
}

/// The spool state for one shard.
pub struct Core<S: Storage> {
    pub(crate) storage: S,
    pub(crate) cfg: SpoolConfig,
    pub(crate) segs: BTreeMap<u64, SegState<S::Segment>>,
    pub(crate) head: u64,
    /// Segment files ready to become the head, by sequence number: new
    /// ones pre-created in the background, or recycled ones.
    pub(crate) spares: BTreeMap<u64, Spare<S::Segment>>,
    /// A new segment is being created in the background.
    #[cfg_attr(not(feature = "glommio"), allow(dead_code))]
    pub(crate) spare_pending: bool,
    pub(crate) next_seq: u64,
    pub(crate) next_id: u64,
    pub(crate) index: HashMap<u64, Live>,
    pub(crate) appended_lsn: u64,
    pub(crate) durable_lsn: u64,
    unsynced_records: u64,
    unsynced_bytes: usize,
    oldest_unsynced: Option<Instant>,
    pub(crate) sync_in_flight: bool,
    /// What the sync in flight will make durable.
    pub(crate) in_flight_lsn: u64,
    pub(crate) dir_dirty: bool,
    pub(crate) poisoned: Option<String>,
    pub(crate) closed: bool,
    pub(crate) waiters: VecDeque<(u64, Waker)>,
    pub(crate) task_waker: Option<Waker>,
    /// Unlinked (or recycled: renamed) segments whose removal is not yet
    /// durable.
    pub(crate) removing: Vec<u64>,
    /// Segments being recycled in the background.
    pub(crate) recycling: usize,
    pub(crate) stats: SpoolStats,
    /// Where a large record is built before its `pwrite`.
    scratch: Vec<u8>,
}

/// Default of [`crate::SpoolConfig::pwrite_min_bytes`]: message records at
/// least this long are written with `pwrite` instead of stores
/// through the mapping: a store takes a write fault on each 4 KiB page, and
/// writeback must write-protect the page again (a TLB shootdown to every
/// CPU running the process). For small records the extra copy and the
/// system call cost more than the faults they save; measured with
/// `spool_bench` (BENCHMARKS.md).
pub const WRITE_THROUGH_FILE_MIN: usize = 8 << 10;

/// The largest pwrite buffer a shard keeps between appends.
const SCRATCH_KEEP_BYTES: usize = 1 << 20;

impl<S: Storage> Core<S> {
    pub(crate) fn empty(storage: S, cfg: SpoolConfig) -> Self {
        Core {
            storage,
            cfg,
            segs: BTreeMap::new(),
            head: 0,
            spares: BTreeMap::new(),
            spare_pending: false,
            next_seq: 1,
            next_id: 1,
            index: HashMap::new(),
            appended_lsn: 0,
            durable_lsn: 0,
            unsynced_records: 0,
            unsynced_bytes: 0,
            oldest_unsynced: None,
            sync_in_flight: false,
            in_flight_lsn: 0,
            dir_dirty: false,
            poisoned: None,
            closed: false,
            waiters: VecDeque::new(),
            task_waker: None,
            removing: Vec::new(),
            recycling: 0,
            stats: SpoolStats::default(),
            scratch: Vec::new(),
        }
    }

    pub(crate) fn check_open(&self) -> Result<(), SpoolError> {
        if let Some(reason) = &self.poisoned {
            return Err(SpoolError::Poisoned {
                reason: reason.clone(),
            });
        }
        if self.closed {
            return Err(SpoolError::Closed);
        }
        Ok(())
    }

    pub(crate) fn no_sync(&self) -> bool {
        matches!(self.cfg.durability, Durability::None(_))
    }

    /// Installs a freshly created segment as `seq`, writing its header.
    pub(crate) fn install_segment(&mut self, seq: u64, map: S::Segment, generation: u32) {
        let key = format::SegKey::for_seq(seq);
        self.segs
            .insert(seq, SegState::new(Rc::new(map), key, generation));
        self.dir_dirty = true;
        self.stamp_header(seq);
    }

    /// Installs a spare as segment `seq`. A recycled one already holds its
    /// durable header: appends start right after it.
    pub(crate) fn install_spare(&mut self, seq: u64, spare: Spare<S::Segment>) {
        if !spare.recycled {
            return self.install_segment(seq, spare.map, spare.generation);
        }
        let key = format::SegKey::for_seq(seq);
        let mut st = SegState::new(Rc::new(spare.map), key, spare.generation);
        let hdr = format::record_len(format::SEGMENT_HEADER_PAYLOAD_BYTES);
        st.write_off = hdr;
        st.synced_off = hdr;
        st.behind_off = hdr;
        self.segs.insert(seq, st);
        self.stats.recycled_installs += 1;
    }

    /// A spare that can no longer become the head (a newer segment
    /// overtook it): keep it as an empty segment; reclamation recycles it.
    pub(crate) fn park_spare(&mut self, seq: u64, spare: Spare<S::Segment>) {
        let key = format::SegKey::for_seq(seq);
        let mut st = SegState::new(Rc::new(spare.map), key, spare.generation);
        st.write_off = st.map.len();
        st.synced_off = st.write_off;
        st.behind_off = st.write_off;
        self.segs.insert(seq, st);
    }

    /// Writes a segment header record (shard, sequence, id floor) at the
    /// write offset of segment `seq`. At offset 0 it opens the segment; later
    /// in a segment it re-stamps the id floor (a restart that continued the
    /// last segment because no new one could be reserved).
    pub(crate) fn stamp_header(&mut self, seq: u64) {
        let shard = self.cfg.shard;
        let id_floor = self.next_id;
        let st = self
            .segs
            .get_mut(&seq)
            .expect("caller installed the segment");
        let h = format::SegmentHeader {
            shard,
            generation: st.generation,
            seq,
            id_floor,
            segment_bytes: st.map.len() as u64,
        };
        let plen = format::SEGMENT_HEADER_PAYLOAD_BYTES;
        let total = format::record_len(plen);
        let key = st.key;
        let rec = st.fresh(total);
        format::encode_segment_header(&mut rec[format::payload_range(0, plen)], &h);
        format::seal_record(rec, RecordKind::SegmentHeader, plen, &key);
        st.write_off += total;
        self.note_appended(total, Instant::now());
    }

    pub(crate) fn note_appended(&mut self, bytes: usize, now: Instant) {
        self.appended_lsn += bytes as u64;
        if self.no_sync() {
            self.durable_lsn = self.appended_lsn;
            return;
        }
        let first = self.oldest_unsynced.is_none();
        if first {
            self.oldest_unsynced = Some(now);
        }
        self.unsynced_records += 1;
        self.unsynced_bytes += bytes;
        let over = self.unsynced_bytes >= self.cfg.sync_threshold_bytes;
        let behind = self.cfg.write_behind_bytes > 0
            && self
                .segs
                .get(&self.head)
                .is_some_and(|h| h.write_off - h.behind_off >= self.cfg.write_behind_bytes);
        if first || over || behind {
            if let Some(w) = self.task_waker.take() {
                w.wake();
            }
        }
    }

    /// Everything written so far was synced by `open` itself.
    pub(crate) fn mark_synced_at_open(&mut self) {
        for s in self.segs.values_mut() {
            s.synced_off = s.write_off;
        }
        self.durable_lsn = self.appended_lsn;
        self.unsynced_bytes = 0;
        self.unsynced_records = 0;
        self.oldest_unsynced = None;
        self.dir_dirty = false;
    }

    /// Bytes appended but not covered by a completed or in-flight sync.
    pub(crate) fn unsynced_bytes(&self) -> usize {
        self.unsynced_bytes
    }

    /// Ensures the head has `total` bytes plus an end marker free, rotating
    /// to the spare (or a new segment) if not. Returns the head's sequence.
    ///
    /// Messages leave `completion_reserve_bytes()` free in every segment for
    /// completions and deferrals, so that when the disk is full deliveries
    /// can still be recorded (which is what frees space).
    pub(crate) fn reserve(
        &mut self,
        total: usize,
        message: bool,
        now: Instant,
    ) -> Result<u64, SpoolError> {
        let max = self.cfg.record_bytes_max();
        if total > max {
            return Err(SpoolError::TooLarge {
                record_bytes: total,
                max_bytes: max,
            });
        }
        let end = format::record_len(0);
        let keep = if message {
            self.cfg.completion_reserve_bytes()
        } else {
            0
        };
        // No head at all: a restart on a full disk found nothing to append
        // to (see `Core::open`); the first record that fits creates one.
        if let Some(head) = self.segs.get(&self.head) {
            if head.write_off + total + end + keep <= head.map.len() {
                return Ok(self.head);
            }
        }
        // The lowest spare above the head (log order is sequence order).
        let mut next = None;
        while let Some((seq, spare)) = self.spares.pop_first() {
            if spare.map.len() != self.cfg.segment_bytes {
                self.park_spare(seq, spare);
                continue;
            }
            if seq > self.head {
                next = Some((seq, spare));
                break;
            }
            // Cannot happen (spares enter the pool above the head and leave
            // it lowest first); keep it as an empty segment if it does.
            self.park_spare(seq, spare);
        }
        let (seq, spare) = match next {
            Some(s) => s,
            None => {
                let seq = self.next_seq;
                let map = self.storage.create_segment(seq, self.cfg.segment_bytes)?;
                self.next_seq += 1;
                self.stats.inline_segment_creations += 1;
                let spare = Spare {
                    map,
                    recycled: false,
                    generation: 0,
                };
                (seq, spare)
            }
        };
        // Seal the old head: recovery stops at the end marker.
        if let Some(old) = self.segs.get_mut(&self.head) {
            let key = old.key;
            let rec = old.fresh(end);
            format::seal_record(rec, RecordKind::SegmentEnd, 0, &key);
            old.write_off += end;
            self.note_appended(end, now);
        }
        self.install_spare(seq, spare);
        self.head = seq;
        self.stats.segments_created += 1;
        // A spare was used up and the old head may soon be retired: let the
        // background task look (without syncs it is not woken otherwise).
        self.wake_task();
        let head = &self.segs[&self.head];
        assert!(
            head.write_off + total + end + keep <= head.map.len(),
            "bounded by record_bytes_max"
        );
        Ok(self.head)
    }

    /// Appends a message; the id is assigned here.
    pub fn append(
        &mut self,
        m: &NewMessage<'_>,
        now: Instant,
    ) -> Result<(u64, RecordRef), SpoolError> {
        self.check_open()?;
        let env_len = format::envelope_len(m)?;
        let plen = format::MESSAGE_FIXED_BYTES + env_len + m.body.len();
        let total = format::record_len(plen);
        let seq = self.reserve(total, true, now)?;
        let id = self.next_id;
        self.next_id += 1;
        let seg = self
            .segs
            .get_mut(&seq)
            .expect("reserve returned a present segment");
        let offset = seg.write_off;
        let key = seg.key;
        if total >= self.cfg.pwrite_min_bytes && seg.map.writes_through_file() {
            // Large records: built in a scratch buffer and written with
            // pwrite (see `WRITE_THROUGH_FILE_MIN`).
            let mut scratch = std::mem::take(&mut self.scratch);
            scratch.clear();
            scratch.resize(total, 0);
            format::encode_message(&mut scratch[format::payload_range(0, plen)], id, m, env_len);
            format::seal_record(&mut scratch, RecordKind::Message, plen, &key);
            let written = seg.map.write_at(offset, &scratch);
            // Keep the buffer for the next one, unless a rare huge message
            // grew it.
            if scratch.capacity() <= SCRATCH_KEEP_BYTES {
                self.scratch = scratch;
            }
            if let Some(Err(e)) = written {
                // Nothing was acknowledged for this id; the bytes at
                // `offset` are overwritten by the next append.
                self.next_id -= 1;
                return Err(SpoolError::io(
                    "writing a record to",
                    self.storage.segment_path(seq),
                    e,
                ));
            }
        } else {
            let rec = seg.fresh(total);
            format::encode_message(&mut rec[format::payload_range(0, plen)], id, m, env_len);
            format::seal_record(rec, RecordKind::Message, plen, &key);
            debug_assert!(matches!(
                format::check_at(rec, 0, &key),
                format::Check::Valid { .. }
            ));
        }
        let seg = self
            .segs
            .get_mut(&seq)
            .expect("reserve returned a present segment");
        seg.write_off += total;
        seg.live += 1;
        seg.live_bytes += total as u64;
        let count = m.recipients.len() as u32;
        let rref = RecordRef {
            segment: seq,
            offset: offset as u32,
            len: total as u32,
        };
        self.index.insert(
            id,
            Live {
                rec: rref,
                count,
                remaining: count,
                attempts: 0,
                next_attempt_unix_ms: 0,
                done: DoneSet::new(count),
            },
        );
        self.stats.appends += 1;
        self.stats.appended_bytes += total as u64;
        self.note_appended(total, now);
        Ok((id, rref))
    }

    /// Writes a small record about message `id` (completion or deferral)
    /// and notes the reference from the head to the message's segment.
    fn append_about(
        &mut self,
        id: u64,
        kind: RecordKind,
        plen: usize,
        now: Instant,
        encode: impl FnOnce(&mut [u8]),
    ) -> Result<(), SpoolError> {
        let total = format::record_len(plen);
        let seq = self.reserve(total, false, now)?;
        let msg_seg = self.index.get(&id).map(|l| l.rec.segment);
        let seg = self
            .segs
            .get_mut(&seq)
            .expect("reserve returned a present segment");
        let key = seg.key;
        let rec = seg.fresh(total);
        encode(&mut rec[format::payload_range(0, plen)]);
        format::seal_record(rec, kind, plen, &key);
        seg.write_off += total;
        if let Some(ms) = msg_seg.filter(|&ms| ms != seq) {
            seg.add_ref(ms);
        }
        self.note_appended(total, now);
        Ok(())
    }

    /// Records final outcomes for some recipients of `id`. Recipients
    /// already complete are ignored; the message dies with its last one.
    pub fn complete(
        &mut self,
        id: u64,
        entries: &[(u32, Outcome)],
        now: Instant,
    ) -> Result<(), SpoolError> {
        self.check_open()?;
        let live = self
            .index
            .get(&id)
            .ok_or(SpoolError::UnknownMessage { id })?;
        if let Some(&(index, _)) = entries.iter().find(|(i, _)| *i >= live.count) {
            return Err(SpoolError::BadRecipient { id, index });
        }
        let fresh: Vec<(u32, Outcome)> = entries
            .iter()
            .copied()
            .filter(|(i, _)| !live.done.contains(*i))
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }
        let plen = 12 + fresh.len() * format::COMPLETION_ENTRY_BYTES;
        self.append_about(id, RecordKind::Completion, plen, now, |p| {
            format::encode_completion(p, id, &fresh)
        })?;
        self.stats.completions += 1;
        let live = self
            .index
            .get_mut(&id)
            .expect("checked above, nothing removed it");
        for (i, _) in &fresh {
            if live.done.insert(*i) {
                live.remaining -= 1;
            }
        }
        if live.remaining == 0 {
            let rec = live.rec;
            self.index.remove(&id);
            self.release_copy(rec);
        }
        Ok(())
    }

    /// Records retry state for `id` after a temporary failure.
    pub fn defer(
        &mut self,
        id: u64,
        attempts: u32,
        next_attempt_unix_ms: u64,
        now: Instant,
    ) -> Result<(), SpoolError> {
        self.check_open()?;
        if !self.index.contains_key(&id) {
            return Err(SpoolError::UnknownMessage { id });
        }
        let d = format::Deferral {
            id,
            attempts,
            next_attempt_unix_ms,
        };
        self.append_about(
            id,
            RecordKind::Deferral,
            format::DEFERRAL_PAYLOAD_BYTES,
            now,
            |p| format::encode_deferral(p, &d),
        )?;
        let live = self.index.get_mut(&id).expect("checked above");
        live.attempts = attempts;
        live.next_attempt_unix_ms = next_attempt_unix_ms;
        self.stats.deferrals += 1;
        Ok(())
    }

    /// A message copy is no longer needed by its segment.
    pub(crate) fn release_copy(&mut self, rec: RecordRef) {
        if let Some(seg) = self.segs.get_mut(&rec.segment) {
            assert!(seg.live > 0, "segment live count balances");
            seg.live -= 1;
            seg.live_bytes -= u64::from(rec.len);
            if seg.live == 0 && rec.segment != self.head {
                // It may be retired now.
                self.wake_task();
            }
        }
    }

    fn wake_task(&mut self) {
        if let Some(w) = self.task_waker.take() {
            w.wake();
        }
    }

    /// When the sync task should run next.
    pub fn sync_due(&self, now: Instant) -> SyncDue {
        if self.sync_in_flight || self.poisoned.is_some() || self.no_sync() {
            return SyncDue::Idle;
        }
        let Some(oldest) = self.oldest_unsynced else {
            return if self.dir_dirty {
                SyncDue::Now
            } else {
                SyncDue::Idle
            };
        };
        let at = oldest + self.cfg.commit_window;
        if self.closed || now >= at || self.unsynced_bytes() >= self.cfg.sync_threshold_bytes {
            SyncDue::Now
        } else {
            SyncDue::At(at)
        }
    }

    /// Snapshots what the next sync covers and marks it in flight.
    pub(crate) fn begin_sync(&mut self) -> Option<SyncJob<S::Segment>> {
        if self.sync_in_flight || self.poisoned.is_some() {
            return None;
        }
        let segs: Vec<_> = self
            .segs
            .iter()
            .filter(|(_, s)| s.write_off > s.synced_off)
            .map(|(&q, s)| (q, Rc::clone(&s.map), s.synced_off..s.write_off))
            .collect();
        if segs.is_empty() && !self.dir_dirty {
            return None;
        }
        let job = SyncJob {
            target_lsn: self.appended_lsn,
            segs,
            dir: std::mem::take(&mut self.dir_dirty),
            records: std::mem::take(&mut self.unsynced_records),
        };
        self.unsynced_bytes = 0;
        self.oldest_unsynced = None;
        self.sync_in_flight = true;
        self.in_flight_lsn = job.target_lsn;
        Some(job)
    }

    /// Applies the result of a sync: releases its waiters, or poisons.
    pub(crate) fn end_sync(
        &mut self,
        job: SyncJob<S::Segment>,
        result: Result<(), String>,
        took: Duration,
    ) {
        self.sync_in_flight = false;
        match result {
            Ok(()) => {
                for (seq, _, range) in &job.segs {
                    if let Some(s) = self.segs.get_mut(seq) {
                        s.synced_off = s.synced_off.max(range.end);
                    }
                }
                assert!(
                    job.target_lsn >= self.durable_lsn,
                    "durable position only grows"
                );
                self.durable_lsn = job.target_lsn;
                self.stats.record_sync(job.records, took);
            }
            Err(reason) => {
                log::error!("spool shard {} poisoned: {reason}", self.cfg.shard);
                self.poisoned = Some(reason);
                self.stats.sync_failures += 1;
            }
        }
        self.wake_waiters();
        if let Some(w) = self.task_waker.take() {
            w.wake();
        }
    }

    pub(crate) fn wake_waiters(&mut self) {
        let all = self.poisoned.is_some() || self.closed;
        let durable = self.durable_lsn;
        // Waiters are not sorted (a barrier may be polled late), so scan.
        let mut keep = VecDeque::with_capacity(self.waiters.len());
        for (lsn, w) in self.waiters.drain(..) {
            if all || lsn <= durable {
                w.wake();
            } else {
                keep.push_back((lsn, w));
            }
        }
        self.waiters = keep;
    }

    /// Whether everything up to `lsn` is durable (or why it never will be).
    pub(crate) fn commit_state(&self, lsn: u64) -> Option<Result<(), SpoolError>> {
        if lsn <= self.durable_lsn {
            return Some(Ok(()));
        }
        if let Some(reason) = &self.poisoned {
            return Some(Err(SpoolError::Poisoned {
                reason: reason.clone(),
            }));
        }
        if self.closed {
            return Some(Err(SpoolError::Closed));
        }
        None
    }

    /// A range of the head whose writeback should start now (write-behind),
    /// so the next fdatasync finds most pages already written.
    // Used by the glommio driver only.
    #[cfg_attr(not(feature = "glommio"), allow(dead_code))]
    pub(crate) fn write_behind_due(&mut self) -> Option<(Rc<S::Segment>, Range<usize>)> {
        const PAGE: usize = 4096;
        let wb = self.cfg.write_behind_bytes;
        if wb == 0 || self.no_sync() || self.poisoned.is_some() {
            return None;
        }
        let h = self.segs.get_mut(&self.head)?;
        if h.write_off - h.behind_off < wb {
            return None;
        }
        let from = h.behind_off / PAGE * PAGE;
        let to = h.write_off / PAGE * PAGE;
        h.behind_off = to;
        (to > from).then(|| (Rc::clone(&h.map), from..to))
    }

    /// The segment to pre-create next, if no spare is ready or pending.
    // Used by the glommio driver only.
    #[cfg_attr(not(feature = "glommio"), allow(dead_code))]
    pub(crate) fn spare_wanted(&mut self) -> Option<u64> {
        if !self.spares.is_empty() || self.spare_pending || self.poisoned.is_some() || self.closed {
            return None;
        }
        // Pre-create once the head is a quarter full, or half full while a
        // recycled spare is on its way (it may come too late), or at once
        // when there is no head (a restart on a full disk).
        if let Some(head) = self.segs.get(&self.head) {
            let at = if self.recycling > 0 { 2 } else { 4 };
            if head.write_off < head.map.len() / at {
                return None;
            }
        }
        self.spare_pending = true;
        let seq = self.next_seq;
        self.next_seq += 1;
        Some(seq)
    }

    // Used by the glommio driver only.
    #[cfg_attr(not(feature = "glommio"), allow(dead_code))]
    pub(crate) fn spare_ready(&mut self, seq: u64, r: Result<S::Segment, SpoolError>) {
        self.spare_pending = false;
        match r {
            Ok(map) => {
                // Its directory entry becomes durable with the next sync;
                // until it is installed recovery sees an empty segment.
                self.dir_dirty = true;
                let spare = Spare {
                    map,
                    recycled: false,
                    generation: 0,
                };
                if seq < self.head {
                    // An inline creation overtook it.
                    self.park_spare(seq, spare);
                } else {
                    self.spares.insert(seq, spare);
                }
            }
            Err(e) => log::warn!(
                "spool shard {}: pre-creating segment {seq}: {e}",
                self.cfg.shard
            ),
        }
    }

    /// Whether `bytes` more can be accepted without running out of space.
    pub fn has_room(&self, bytes: u64) -> bool {
        if self.poisoned.is_some() || self.closed {
            return false;
        }
        let keep = (format::record_len(0) + self.cfg.completion_reserve_bytes()) as u64;
        let head_free = self
            .segs
            .get(&self.head)
            .map(|h| ((h.map.len() - h.write_off) as u64).saturating_sub(keep))
            .unwrap_or(0);
        let spare_free = self
            .spares
            .values()
            .map(|s| (s.map.len() as u64).saturating_sub(keep + 64))
            .max()
            .unwrap_or(0);
        if bytes <= head_free.max(spare_free) {
            return true;
        }
        match self.storage.free_bytes() {
            Ok(free) => free >= bytes + self.cfg.segment_bytes as u64 + self.cfg.free_bytes_reserve,
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::index::DoneSet;

    #[test]
    fn done_set_round_trips_through_the_mask() {
        for count in [1u32, 8, 9, 64, 65, 200] {
            let mut d = DoneSet::new(count);
            for i in (0..count).step_by(3) {
                assert!(d.insert(i));
                assert!(!d.insert(i));
            }
            let mut mask = vec![0u8; (count as usize).div_ceil(8)];
            d.write_mask(&mut mask);
            for i in 0..count {
                let bit = mask[(i / 8) as usize] & (1 << (i % 8)) != 0;
                assert_eq!(bit, i % 3 == 0, "count {count} index {i}");
                assert_eq!(d.contains(i), i % 3 == 0);
            }
        }
    }
}
