//! Reclamation decisions: which segments may be deleted, and relocation of
//! the few live messages that pin the oldest one.

// std
use std::rc::Rc;
use std::time::Instant;

// crate
use crate::core::{Core, Relocation};
use crate::error::SpoolError;
use crate::format::{self, RecordKind};
use crate::index::RecordRef;
use crate::storage::{SegmentMap, Storage};

impl<S: Storage> Core<S> {
    /// Segments that may be unlinked now: not the head, no live copies,
    /// and every segment they refer to already durably gone.
    pub(crate) fn deletable(&self) -> Vec<u64> {
        self.segs
            .iter()
            .filter(|(&q, s)| {
                q != self.head
                    && s.live == 0
                    // Durable up to its end (a sync in flight does not
                    // cover it then, nor hold its mapping).
                    && (self.no_sync() || s.synced_off == s.write_off)
                    && s.refs
                        .iter()
                        .all(|r| !self.segs.contains_key(r) && !self.removing.contains(r))
            })
            .map(|(&q, _)| q)
            .collect()
    }

    /// Takes deletable segment `q` out of the log: it counts as gone once
    /// the directory is synced after its unlink or rename. Returns its file
    /// when it can be recycled (the pool wants one, it has the configured
    /// size and nobody holds a slice of it); `None`: unlink it.
    pub(crate) fn retire(&mut self, q: u64) -> Option<(S::Segment, u32)> {
        let st = self
            .segs
            .remove(&q)
            .expect("deletable segments are present");
        self.removing.push(q);
        let want = self.spares.len() + self.recycling < self.cfg.spare_segments;
        if !want || st.map.len() != self.cfg.segment_bytes {
            return None;
        }
        // A `Body` handed out earlier still maps these bytes: rewriting
        // them would change what it reads. Such a segment is unlinked
        // (its mapping lives on until the last `Body` goes).
        let map = Rc::try_unwrap(st.map).ok()?;
        self.recycling += 1;
        Some((map, st.generation))
    }

    /// Writes the header of recycled segment `seq` (new life: generation
    /// `generation`) at offset 0 of its mapping. The caller then makes it
    /// durable, then the rename, and only then offers it as a spare.
    pub(crate) fn write_recycled_header(&self, seq: u64, map: &S::Segment, generation: u32) {
        let plen = format::SEGMENT_HEADER_PAYLOAD_BYTES;
        let total = format::record_len(plen);
        let h = format::SegmentHeader {
            shard: self.cfg.shard,
            generation,
            seq,
            id_floor: self.next_id,
            segment_bytes: map.len() as u64,
        };
        assert!(map.len() >= total, "segments hold at least a header");
        // SAFETY: the spool owns the only handle on this mapping (taken with
        // `Rc::try_unwrap` in `retire`), so no slice of it is alive.
        let rec = unsafe { std::slice::from_raw_parts_mut(map.as_ptr(), total) };
        format::encode_segment_header(&mut rec[format::payload_range(0, plen)], &h);
        format::seal_record(
            rec,
            RecordKind::SegmentHeader,
            plen,
            &format::SegKey::for_seq(seq),
        );
    }

    /// The oldest non-head segment worth relocating out of, if any.
    pub(crate) fn relocation_candidate(&self) -> Option<u64> {
        if self.segs.len() <= self.cfg.relocate_above_segments {
            return None;
        }
        let (&q, s) = self.segs.iter().next()?;
        (q != self.head && s.live > 0 && s.live_bytes <= self.cfg.relocate_live_bytes_max as u64)
            .then_some(q)
    }

    /// Copies every live message of segment `from` to the head, carrying
    /// its completed recipients and retry state. The old copies stay needed
    /// until [`Core::finish_relocation`] after the new ones are durable.
    pub(crate) fn relocate(&mut self, from: u64, now: Instant) -> Result<Relocation, SpoolError> {
        self.check_open()?;
        let mut ids: Vec<u64> = self
            .index
            .iter()
            .filter(|(_, l)| l.rec.segment == from)
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        let mut moved = Vec::with_capacity(ids.len());
        for id in ids {
            let old = self.index[&id].rec;
            let total = old.len as usize;
            let seq = self.reserve(total, true, now)?;
            assert_ne!(seq, from, "the head is never relocated");
            let src = Rc::clone(&self.segs[&from].map);
            let src_key = self.segs[&from].key;
            let live = &self.index[&id];
            let seg = self
                .segs
                .get_mut(&seq)
                .expect("reserve returned a present segment");
            let offset = seg.write_off;
            let key = seg.key;
            let dst = seg.fresh(total);
            // SAFETY: `old` lies below the old segment's write_off (published,
            // immutable) and `dst` is fresh space in another mapping.
            let src_bytes =
                unsafe { std::slice::from_raw_parts(src.as_ptr().add(old.offset as usize), total) };
            dst.copy_from_slice(src_bytes);
            // The old record was verified when written (or recovered); if
            // it no longer verifies, something changed the file under us.
            // Leave that message where it is (its segment stays pinned).
            let format::Check::Valid { payload_len, .. } = format::check_at(dst, 0, &src_key)
            else {
                log::error!(
                    "spool {}: live message {id} at offset {} no longer verifies; not relocated",
                    self.storage.describe(from),
                    old.offset
                );
                dst.fill(0);
                continue;
            };
            let payload = &mut dst[format::payload_range(0, payload_len)];
            let Ok(fixed) = format::message_fixed(payload) else {
                dst.fill(0);
                continue;
            };
            payload[24..32].copy_from_slice(&live.next_attempt_unix_ms.to_le_bytes());
            payload[32..36].copy_from_slice(&live.attempts.to_le_bytes());
            payload[36..40].copy_from_slice(&(fixed.flags | format::FLAG_RELOCATED).to_le_bytes());
            live.done
                .write_mask(&mut payload[format::done_mask_range(&fixed)]);
            format::seal_record(dst, RecordKind::Message, payload_len, &key);
            seg.write_off += total;
            seg.live += 1;
            seg.live_bytes += total as u64;
            seg.add_ref(from);
            let new = RecordRef {
                segment: seq,
                offset: offset as u32,
                len: old.len,
            };
            self.index.get_mut(&id).expect("id from the index").rec = new;
            self.note_appended(total, now);
            self.stats.relocated_messages += 1;
            moved.push((id, old));
        }
        Ok(Relocation {
            target_lsn: self.appended_lsn,
            moved,
        })
    }

    /// The relocated copies are durable: the old ones are no longer needed.
    pub(crate) fn finish_relocation(&mut self, r: Relocation) {
        assert!(
            r.target_lsn <= self.durable_lsn,
            "relocation finished before its commit"
        );
        for (_, old) in r.moved {
            self.release_copy(old);
        }
    }
}
