//! Recovery: scan every segment in order at open, check every record's
//! CRC, quarantine corrupt records, truncate torn tails, rebuild the live
//! index, then start a fresh head segment.

// std
use std::rc::Rc;
use std::time::{Duration, Instant};

// crate
use crate::config::{Durability, SpoolConfig};
use crate::core::{Core, SegState};
use crate::error::SpoolError;
use crate::format::{self, Check, RecordKind, SegKey, HEADER_BYTES, RECORD_ALIGN, RECORD_MAGIC};
use crate::index::{DoneSet, Live, RecordRef};
use crate::storage::{SegmentMap, Storage};

/// Message ids of one run of the spool start at a multiple of 2^this.
pub const ID_EPOCH_BITS: u32 = 40;

/// What recovery found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecoveryReport {
    /// Segments scanned.
    pub segments: u64,
    /// Bytes of segment data scanned (up to each segment's end of data).
    pub bytes_scanned: u64,
    /// Valid records read.
    pub records: u64,
    /// Message records read (including relocated copies).
    pub message_records: u64,
    /// Messages with recipients still to deliver.
    pub live_messages: u64,
    /// Corrupt records (or stretches of bytes) copied to quarantine.
    pub quarantined_records: u64,
    /// Their bytes.
    pub quarantined_bytes: u64,
    /// Bytes of torn tails cut off (non-zero bytes after the last valid
    /// record of a segment).
    pub truncated_bytes: u64,
    /// Completion or deferral records naming a message that is not live
    /// (already complete, or its record was quarantined).
    pub orphan_records: u64,
    /// Empty segment files removed (a crash between creating a segment and
    /// reserving its blocks leaves one; it never held a record).
    pub empty_segments_removed: u64,
    /// Time the scan took.
    pub elapsed: Duration,
    /// Where appends go after the open.
    pub head: HeadAtOpen,
}

/// How the open found a head segment to append to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeadAtOpen {
    /// No head: the file system was full and no recovered segment could be
    /// continued. Appends get [`SpoolError::DiskFull`] until space returns.
    #[default]
    None,
    /// A new segment with this sequence number (the normal case without a
    /// spare).
    New(u64),
    /// The spare segment the previous run had prepared (this sequence
    /// number): no new file needed.
    Spare(u64),
    /// The file system was full: the last recovered segment (this sequence
    /// number), which was not sealed, takes the appends.
    Continued(u64),
}

impl RecoveryReport {
    /// Scan speed in bytes per second.
    pub fn bytes_per_second(&self) -> f64 {
        self.bytes_scanned as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Finds the first aligned offset at or after `from` where a valid record
/// starts.
fn resync(buf: &[u8], from: usize, key: &SegKey) -> Option<usize> {
    let magic = RECORD_MAGIC.to_le_bytes();
    let mut q = from;
    while q + HEADER_BYTES <= buf.len() {
        debug_assert!(q % RECORD_ALIGN == 0);
        if buf[q..q + 4] == magic {
            if let Check::Valid { .. } = format::check_at(buf, q, key) {
                return Some(q);
            }
        }
        q += RECORD_ALIGN;
    }
    None
}

/// Whether every byte is zero (word at a time: unwritten space is most of
/// a fresh segment).
fn all_zero(buf: &[u8]) -> bool {
    let mut words = buf.chunks_exact(64);
    let zero_words = words
        .by_ref()
        .all(|c| c.iter().fold(0u8, |a, &b| a | b) == 0);
    zero_words && words.remainder().iter().all(|&b| b == 0)
}

/// One past the last non-zero byte in `buf[from..]`, or `from`.
fn nonzero_end(buf: &[u8], from: usize) -> usize {
    buf[from..]
        .iter()
        .rposition(|&b| b != 0)
        .map_or(from, |i| from + i + 1)
}

/// The end of a torn record of this segment's life at `pos`: its header
/// (magic, version, tag) was written and its length fits, but its CRC
/// fails. `pos` when the bytes there are not such a header.
fn torn_record_end(buf: &[u8], pos: usize, key: &SegKey) -> usize {
    match format::check_at(buf, pos, key) {
        Check::BadChecksum { total_len } => pos + total_len,
        _ => pos,
    }
}

/// What offset 0 of a segment file says about it.
enum Opening {
    /// A header of this segment: scan with this key; generation.
    Header(SegKey, u32),
    /// A valid header of *another* segment: the file was being recycled
    /// (renamed and given a new header) when the process stopped; nothing
    /// in it belongs to this segment number. The sequence it claims.
    Recycling(u64),
    /// No valid header (never written, torn, or corrupt): scan anyway,
    /// taking the file to have had this many lives before.
    Unknown(u32),
}

fn opening(buf: &[u8], seq: u64) -> Opening {
    let header = |key: SegKey| match format::check_at(buf, 0, &key) {
        Check::Valid {
            kind: RecordKind::SegmentHeader,
            payload_len,
            ..
        } => format::parse_segment_header(&buf[format::payload_range(0, payload_len)]).ok(),
        _ => None,
    };
    if let Some(h) = header(SegKey::for_seq(seq)) {
        return Opening::Header(SegKey::for_seq(seq), h.generation);
    }
    if header(SegKey::V1).is_some() {
        return Opening::Header(SegKey::V1, 0);
    }
    match format::claimed_header_seq(buf) {
        Some(other) if other != seq => Opening::Recycling(other),
        // The start of a current-format segment header that does not
        // validate: torn while a recycled file was renumbered. Read the rest
        // as a recycled file (an earlier life's bytes are not torn data).
        _ if buf.len() >= 6
            && buf[0..4] == RECORD_MAGIC.to_le_bytes()
            && buf[4] == RecordKind::SegmentHeader as u8
            && buf[5] == format::FORMAT_VERSION =>
        {
            Opening::Unknown(1)
        }
        _ => Opening::Unknown(0),
    }
}

impl<S: Storage> Core<S> {
    /// Opens the spool: recovers every segment, then starts a new head.
    pub fn open(storage: S, cfg: SpoolConfig) -> Result<(Self, RecoveryReport), SpoolError> {
        cfg.validate()?;
        if let Durability::None(_) = cfg.durability {
            log::error!(
                "spool shard {}: durability NONE: nothing is ever synced, a crash loses \
                 accepted mail. Benchmarks only.",
                cfg.shard
            );
        }
        let started = Instant::now();
        let mut core = Core::empty(storage, cfg);
        let mut report = RecoveryReport::default();
        let mut seqs = core.storage.list_segments()?;
        seqs.sort_unstable();
        // Where the last segment's data ends, if it is not sealed.
        let mut last_open: Option<(u64, usize)> = None;
        for &seq in &seqs {
            if core.storage.discard_if_empty(seq)? {
                log::warn!(
                    "spool {}: removed {}: an empty file (the previous run stopped between \
                     creating and reserving it)",
                    core.cfg.shard,
                    core.storage.segment_path(seq).display()
                );
                report.empty_segments_removed += 1;
                continue;
            }
            let map = core.storage.open_segment(seq)?;
            let end = core.recover_segment(seq, map, &mut report)?;
            last_open = end.map(|e| (seq, e));
            core.next_seq = core.next_seq.max(seq + 1);
        }
        if !seqs.is_empty() {
            // Ids handed out after the last sync of the previous run may
            // have been lost with their records; start a new epoch so none
            // is ever handed out twice (unique while a run assigns fewer
            // than 2^ID_EPOCH_BITS ids).
            core.next_id = (core.next_id >> ID_EPOCH_BITS).saturating_add(1) << ID_EPOCH_BITS;
        }
        report.head = core.open_head(last_open)?;
        if let Some(st) = core.segs.get(&core.head) {
            // Make the head's header (and its id floor) durable before the
            // first append, so the epoch above survives even a crash before
            // any sync.
            let head = core.head;
            st.map.sync_blocking().map_err(|e| {
                SpoolError::io("syncing new segment", core.storage.describe(head), e)
            })?;
            core.storage.sync_dir_blocking().map_err(|e| {
                SpoolError::io("syncing directory of", core.storage.describe(head), e)
            })?;
        }
        core.mark_synced_at_open();
        report.live_messages = core.index.len() as u64;
        report.elapsed = started.elapsed();
        log::info!(
            "spool shard {}: recovered {} segments, {} records, {} live messages, \
             {} quarantined, {} torn bytes truncated in {:?}",
            core.cfg.shard,
            report.segments,
            report.records,
            report.live_messages,
            report.quarantined_records,
            report.truncated_bytes,
            report.elapsed
        );
        Ok((core, report))
    }

    /// Starts the head: a new segment, or, when the file system has no room
    /// for one (a restart on a full disk), the rest of the last recovered
    /// segment if it is not sealed and has room for a header record; its
    /// id floor is re-stamped there. With neither, the spool opens without
    /// a head: recovery succeeds, appends get [`SpoolError::DiskFull`]
    /// (`452 4.3.1`) until a segment can be reserved again.
    fn open_head(&mut self, last_open: Option<(u64, usize)>) -> Result<HeadAtOpen, SpoolError> {
        // A spare left by the previous run (a header and nothing else) is
        // the cheapest head: no new file, no reservation.
        let hdr = format::record_len(format::SEGMENT_HEADER_PAYLOAD_BYTES);
        if let Some((last, end)) = last_open {
            let st = &self.segs[&last];
            if end == hdr
                && st.live == 0
                && st.refs.is_empty()
                && st.map.len() == self.cfg.segment_bytes
            {
                self.continue_at(last, end);
                return Ok(HeadAtOpen::Spare(last));
            }
        }
        let seq = self.next_seq;
        let err = match self.storage.create_segment(seq, self.cfg.segment_bytes) {
            Ok(map) => {
                self.next_seq += 1;
                self.install_segment(seq, map, 0);
                self.head = seq;
                return Ok(HeadAtOpen::New(seq));
            }
            Err(e @ SpoolError::DiskFull { .. }) => e,
            Err(e) => return Err(e),
        };
        let need = format::record_len(format::SEGMENT_HEADER_PAYLOAD_BYTES) + format::record_len(0);
        if let Some((last, end)) = last_open {
            let st = self.segs.get_mut(&last).expect("recovered above");
            if end + need <= st.map.len() {
                log::warn!(
                    "spool shard {}: {err}; continuing segment {} at offset {end}",
                    self.cfg.shard,
                    self.storage.describe(last)
                );
                self.continue_at(last, end);
                return Ok(HeadAtOpen::Continued(last));
            }
        }
        log::error!(
            "spool shard {}: {err}; no segment to continue: opening without a head, \
             appends are refused until space returns",
            self.cfg.shard
        );
        // No segment has this sequence number: `reserve` creates the head.
        self.head = 0;
        Ok(HeadAtOpen::None)
    }

    /// Makes recovered segment `seq` the head, appending from `end` (the end
    /// of its valid data) after a header record that re-stamps the id floor.
    fn continue_at(&mut self, seq: u64, end: usize) {
        let st = self.segs.get_mut(&seq).expect("recovered segment");
        st.write_off = end;
        st.synced_off = end;
        st.behind_off = end;
        self.head = seq;
        self.stamp_header(seq);
    }

    /// Recovers one segment; returns where its data ends unless it is
    /// sealed (an end marker was found) or cannot be continued.
    fn recover_segment(
        &mut self,
        seq: u64,
        map: S::Segment,
        report: &mut RecoveryReport,
    ) -> Result<Option<usize>, SpoolError> {
        let len = map.len();
        let map = Rc::new(map);
        // SAFETY: nothing writes to this mapping while `buf` lives: repairs
        // below happen after the scan, through the pointer, once `buf` is
        // no longer used.
        let buf = unsafe { std::slice::from_raw_parts(map.as_ptr() as *const u8, len) };
        let (key, generation) = match opening(buf, seq) {
            Opening::Header(key, generation) => (key, generation),
            Opening::Recycling(other) => {
                log::info!(
                    "spool {}: holds the header of segment {other}: a recycling \
                     was interrupted; empty",
                    self.storage.describe(seq)
                );
                self.next_seq = self.next_seq.max(other + 1);
                report.segments += 1;
                let mut st = SegState::new(Rc::clone(&map), SegKey::for_seq(seq), 0);
                st.write_off = len;
                st.synced_off = len;
                self.segs.insert(seq, st);
                return Ok(None);
            }
            Opening::Unknown(generation) => (SegKey::for_seq(seq), generation),
        };
        let mut st = SegState::new(Rc::clone(&map), key, generation);
        let mut pos = 0usize;
        let mut repair: Option<(usize, usize)> = None;
        let mut sealed = false;
        report.segments += 1;
        while pos < len {
            match format::check_at(buf, pos, &key) {
                Check::Valid {
                    kind,
                    payload_len,
                    total_len,
                } => {
                    report.records += 1;
                    let payload = &buf[format::payload_range(pos, payload_len)];
                    let rec = RecordRef {
                        segment: seq,
                        offset: pos as u32,
                        len: total_len as u32,
                    };
                    if let Err(e) = self.apply(kind, payload, rec, &mut st, report) {
                        // The checksum matched but the content does not
                        // parse: keep it aside like any corrupt record.
                        log::error!("spool {}: record at {pos}: {e}", self.storage.describe(seq));
                        self.quarantine(seq, pos, &buf[pos..pos + total_len], report)?;
                    }
                    pos += total_len;
                    if kind == RecordKind::SegmentEnd {
                        sealed = true;
                        break;
                    }
                }
                Check::BadChecksum { total_len }
                    if pos + total_len < len
                        && matches!(
                            format::check_at(buf, pos + total_len, &key),
                            Check::Valid { .. }
                        ) =>
                {
                    // Header intact and the next header validates: skip it.
                    self.quarantine(seq, pos, &buf[pos..pos + total_len], report)?;
                    pos += total_len;
                }
                Check::Zero if all_zero(&buf[pos..]) => break,
                Check::Zero | Check::BadChecksum { .. } | Check::Garbage | Check::Stale => {
                    match resync(buf, pos + RECORD_ALIGN, &key) {
                        Some(q) => {
                            self.quarantine(seq, pos, &buf[pos..q], report)?;
                            pos = q;
                        }
                        None => {
                            // A torn tail (or just unwritten space). In a
                            // new file everything non-zero from here is
                            // torn; in a recycled one the bytes after this
                            // life's last record are an earlier life's, so
                            // only a torn record of this life counts.
                            let end = if generation == 0 {
                                nonzero_end(buf, pos)
                            } else {
                                torn_record_end(buf, pos, &key)
                            };
                            if end > pos {
                                report.truncated_bytes += (end - pos) as u64;
                                log::warn!(
                                    "spool {}: truncating {} torn bytes at offset {pos}",
                                    self.storage.describe(seq),
                                    end - pos
                                );
                                // Keep the bytes for forensics; they count
                                // as truncated, not as corrupt records.
                                let name = format!("seg-{seq:016x}-at-{pos:010}-tail.bad");
                                self.storage.quarantine(&name, &buf[pos..end])?;
                                repair = Some((pos, end));
                            }
                            break;
                        }
                    }
                }
            }
        }
        report.bytes_scanned += pos as u64;
        if let Some((from, to)) = repair {
            // SAFETY: the scan is over and `buf` is dead; no slice of this
            // segment has been handed out yet.
            unsafe { std::ptr::write_bytes(map.as_ptr().add(from), 0, to - from) };
        }
        // What recovery read may have been only in the page cache (a
        // process crash, not a power loss): make it durable before anything
        // is decided on it. Cheap when nothing is dirty.
        map.sync_blocking().map_err(|e| {
            SpoolError::io("syncing recovered segment", self.storage.describe(seq), e)
        })?;
        // Recovered segments are never appended to again.
        st.write_off = len;
        st.synced_off = len;
        self.segs.insert(seq, st);
        // Only a current-format segment may be continued.
        Ok((!sealed && key != SegKey::V1).then_some(pos))
    }

    fn quarantine(
        &mut self,
        seq: u64,
        pos: usize,
        bytes: &[u8],
        report: &mut RecoveryReport,
    ) -> Result<(), SpoolError> {
        report.quarantined_records += 1;
        report.quarantined_bytes += bytes.len() as u64;
        let name = format!("seg-{seq:016x}-at-{pos:010}.bad");
        log::error!(
            "spool {}: corrupt record of {} bytes at offset {pos} quarantined as {name}",
            self.storage.describe(seq),
            bytes.len()
        );
        self.storage.quarantine(&name, bytes)
    }

    /// Applies one valid record to the state being rebuilt.
    fn apply(
        &mut self,
        kind: RecordKind,
        payload: &[u8],
        rec: RecordRef,
        st: &mut SegState<S::Segment>,
        report: &mut RecoveryReport,
    ) -> Result<(), SpoolError> {
        let seq = rec.segment;
        match kind {
            RecordKind::SegmentHeader => {
                let h = format::parse_segment_header(payload)?;
                if h.seq != seq {
                    log::warn!(
                        "spool {}: header says segment {}",
                        self.storage.describe(seq),
                        h.seq
                    );
                }
                self.next_id = self.next_id.max(h.id_floor);
            }
            RecordKind::SegmentEnd => {}
            RecordKind::Message => {
                let parts = format::parse_message(payload)?;
                let f = parts.fixed;
                report.message_records += 1;
                self.next_id = self.next_id.max(f.id + 1);
                let mut done = DoneSet::new(f.recipient_count);
                let mut remaining = f.recipient_count;
                for i in 0..f.recipient_count {
                    if parts.done_mask[(i / 8) as usize] & (1 << (i % 8)) != 0 && done.insert(i) {
                        remaining -= 1;
                    }
                }
                let mut live = Live {
                    rec,
                    count: f.recipient_count,
                    remaining,
                    attempts: f.attempts,
                    next_attempt_unix_ms: f.next_attempt_unix_ms,
                    done,
                };
                if let Some(old) = self.index.remove(&f.id) {
                    // A relocated copy supersedes the older one; merge what
                    // was learned after it was written (nothing, in order).
                    if old.count == live.count {
                        for i in 0..old.count {
                            if old.done.contains(i) && live.done.insert(i) {
                                live.remaining -= 1;
                            }
                        }
                    }
                    if old.attempts > live.attempts {
                        live.attempts = old.attempts;
                        live.next_attempt_unix_ms = old.next_attempt_unix_ms;
                    }
                    self.release_recovered(old.rec, st);
                    if old.rec.segment != seq {
                        st.add_ref(old.rec.segment);
                    }
                }
                if live.remaining > 0 {
                    st.live += 1;
                    st.live_bytes += u64::from(rec.len);
                    self.index.insert(f.id, live);
                }
            }
            RecordKind::Completion => {
                let (id, entries) = format::parse_completion(payload)?;
                let Some(live) = self.index.get_mut(&id) else {
                    report.orphan_records += 1;
                    return Ok(());
                };
                if live.rec.segment != seq {
                    st.add_ref(live.rec.segment);
                }
                for (i, _) in entries {
                    if i < live.count && live.done.insert(i) {
                        live.remaining -= 1;
                    }
                }
                if live.remaining == 0 {
                    let r = live.rec;
                    self.index.remove(&id);
                    self.release_recovered(r, st);
                }
            }
            RecordKind::Deferral => {
                let d = format::parse_deferral(payload)?;
                let Some(live) = self.index.get_mut(&d.id) else {
                    report.orphan_records += 1;
                    return Ok(());
                };
                if live.rec.segment != seq {
                    st.add_ref(live.rec.segment);
                }
                live.attempts = d.attempts;
                live.next_attempt_unix_ms = d.next_attempt_unix_ms;
            }
        }
        Ok(())
    }

    /// Like `release_copy`, for a copy that may sit in the segment being
    /// scanned (not yet in `segs`).
    fn release_recovered(&mut self, r: RecordRef, st: &mut SegState<S::Segment>) {
        let seg = if let Some(s) = self.segs.get_mut(&r.segment) {
            s
        } else {
            st
        };
        assert!(seg.live > 0, "segment live count balances");
        seg.live -= 1;
        seg.live_bytes -= u64::from(r.len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resync_finds_the_next_record() {
        let mut buf = vec![0u8; 256];
        let total = format::record_len(0);
        let key = SegKey::for_seq(3);
        format::seal_record(&mut buf[96..96 + total], RecordKind::SegmentEnd, 0, &key);
        buf[8] = 0x55;
        assert_eq!(resync(&buf, 0, &key), Some(96));
        assert_eq!(resync(&buf, 0, &SegKey::for_seq(4)), None);
        assert_eq!(resync(&buf, 104, &key), None);
        assert_eq!(nonzero_end(&buf, 0), 96 + 16);
        assert_eq!(nonzero_end(&buf, 200), 200);
    }
}
