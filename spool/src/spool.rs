//! The shard's handle on its spool: a cheap `Rc` clone shared by the
//! listener (appends, commits) and the delivery side (bodies, completions).

// std
use std::cell::RefCell;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

// crate
use crate::config::SpoolConfig;
use crate::core::{Core, Spare, SyncDue};
use crate::error::SpoolError;
use crate::format::{self, MessageParts, NewMessage, Outcome, RecordKind};
use crate::index::RecordRef;
use crate::recovery::RecoveryReport;
use crate::stats::SpoolStats;
use crate::storage::{LocalFuture, SegmentMap, Storage};

/// A message that survived recovery (or is live now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveMessage {
    /// Spool-assigned id.
    pub id: u64,
    /// Where its current copy is.
    pub rec: RecordRef,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// Next attempt, ms since the Unix epoch (0: now).
    pub next_attempt_unix_ms: u64,
    /// Indices of recipients still to deliver, ascending.
    pub pending: Vec<u32>,
}

/// What reclamation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReclaimReport {
    /// Segments deleted.
    pub segments_removed: u64,
    /// Segments recycled into the spare pool.
    pub segments_recycled: u64,
    /// Messages copied to the head.
    pub messages_relocated: u64,
}

/// Bytes of a record, straight from the mapping: derefs to `&[u8]`. Keeps
/// the mapping alive even if the segment is deleted meanwhile.
pub struct Body<M: SegmentMap> {
    map: Rc<M>,
    start: usize,
    len: usize,
}

impl<M: SegmentMap> Deref for Body<M> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: built only from a checked range below the segment's write
        // offset, which the spool never writes again; `map` keeps the
        // mapping alive.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(self.start), self.len) }
    }
}

/// A whole message record, parsed on demand.
pub struct MessageRecord<M: SegmentMap> {
    payload: Body<M>,
}

impl<M: SegmentMap> MessageRecord<M> {
    /// Parses envelope and body (borrowing from the mapping).
    pub fn parts(&self) -> Result<MessageParts<'_>, SpoolError> {
        Ok(format::parse_message(&self.payload)?)
    }
}

/// A per-shard spool.
pub struct Spool<S: Storage> {
    pub(crate) inner: Rc<RefCell<Core<S>>>,
}

impl<S: Storage> Clone for Spool<S> {
    fn clone(&self) -> Self {
        Spool {
            inner: Rc::clone(&self.inner),
        }
    }
}

impl<S: Storage> Spool<S> {
    /// Opens (recovers) the spool in `storage`. Blocking: run it before the
    /// shard's listener answers anything but `421 4.3.2`. With the glommio
    /// feature, start the group-commit task with `Spool::spawn_sync_task`.
    pub fn open(storage: S, cfg: SpoolConfig) -> Result<(Self, RecoveryReport), SpoolError> {
        let (core, report) = Core::open(storage, cfg)?;
        Ok((
            Spool {
                inner: Rc::new(RefCell::new(core)),
            },
            report,
        ))
    }

    /// Appends a message (one copy, into the mapping) and assigns its id.
    /// Never waits; it is durable once a later [`Spool::commit`] resolves.
    pub fn append(&self, m: &NewMessage<'_>) -> Result<(u64, RecordRef), SpoolError> {
        self.inner.borrow_mut().append(m, Instant::now())
    }

    /// A barrier: resolves once every record appended before this call is
    /// durable, or with [`SpoolError::Poisoned`] if that can never happen.
    pub fn commit(&self) -> Commit<S> {
        let target = self.inner.borrow().appended_lsn;
        Commit {
            inner: Rc::clone(&self.inner),
            target,
        }
    }

    /// Records the final outcome of recipient `index` of message `id`.
    pub fn complete(&self, id: u64, index: u32, outcome: Outcome) -> Result<(), SpoolError> {
        self.complete_many(id, &[(index, outcome)])
    }

    /// Records final outcomes of several recipients in one record.
    pub fn complete_many(&self, id: u64, entries: &[(u32, Outcome)]) -> Result<(), SpoolError> {
        self.inner
            .borrow_mut()
            .complete(id, entries, Instant::now())
    }

    /// Records retry state after a temporary failure, so a restart resumes
    /// the schedule instead of retrying at once.
    pub fn defer(
        &self,
        id: u64,
        attempts: u32,
        next_attempt_unix_ms: u64,
    ) -> Result<(), SpoolError> {
        self.inner
            .borrow_mut()
            .defer(id, attempts, next_attempt_unix_ms, Instant::now())
    }

    fn payload(&self, rec: &RecordRef) -> Result<Body<S::Segment>, SpoolError> {
        let core = self.inner.borrow();
        let bad = || SpoolError::BadRef {
            segment: rec.segment,
            offset: rec.offset,
        };
        let seg = core.segs.get(&rec.segment).ok_or_else(bad)?;
        let start = rec.offset as usize;
        let end = start.checked_add(rec.len as usize).ok_or_else(bad)?;
        if end > seg.write_off || end - start < format::HEADER_BYTES {
            return Err(bad());
        }
        let header = seg.bytes(start..start + format::HEADER_BYTES);
        if header[4] != RecordKind::Message as u8 {
            return Err(bad());
        }
        let plen = u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
        if format::record_len(plen) != rec.len as usize {
            return Err(bad());
        }
        Ok(Body {
            map: Rc::clone(&seg.map),
            start: start + format::HEADER_BYTES,
            len: plen,
        })
    }

    /// The message's content, zero copy from the mapping.
    pub fn body(&self, rec: &RecordRef) -> Result<Body<S::Segment>, SpoolError> {
        let payload = self.payload(rec)?;
        let fixed = format::message_fixed(&payload)?;
        let skip = format::MESSAGE_FIXED_BYTES + fixed.envelope_len;
        Ok(Body {
            map: payload.map,
            start: payload.start + skip,
            len: payload.len - skip,
        })
    }

    /// The whole message record (envelope and body).
    pub fn message(&self, rec: &RecordRef) -> Result<MessageRecord<S::Segment>, SpoolError> {
        Ok(MessageRecord {
            payload: self.payload(rec)?,
        })
    }

    /// Whether `bytes` more can be accepted now (answer `452 4.3.1` if not).
    pub fn has_room(&self, bytes: u64) -> bool {
        self.inner.borrow().has_room(bytes)
    }

    /// Why the spool refuses appends, if it does.
    pub fn poisoned(&self) -> Option<String> {
        self.inner.borrow().poisoned.clone()
    }

    /// Counters for metrics.
    pub fn stats(&self) -> SpoolStats {
        self.inner.borrow().stats.clone()
    }

    /// Number of live messages.
    pub fn live_count(&self) -> usize {
        self.inner.borrow().index.len()
    }

    /// Number of segment files present.
    pub fn segment_count(&self) -> usize {
        self.inner.borrow().segs.len()
    }

    /// Sequence numbers of the segments present, ascending.
    pub fn segments(&self) -> Vec<u64> {
        self.inner.borrow().segs.keys().copied().collect()
    }

    /// Every live message, by id (the recovery iterator's source).
    pub fn live_messages(&self) -> Vec<LiveMessage> {
        let core = self.inner.borrow();
        let mut v: Vec<LiveMessage> = core
            .index
            .iter()
            .map(|(&id, l)| LiveMessage {
                id,
                rec: l.rec,
                attempts: l.attempts,
                next_attempt_unix_ms: l.next_attempt_unix_ms,
                pending: (0..l.count).filter(|&i| !l.done.contains(i)).collect(),
            })
            .collect();
        v.sort_unstable_by_key(|m| m.id);
        v
    }

    /// When the group-commit task should sync next.
    pub fn sync_due(&self, now: Instant) -> SyncDue {
        self.inner.borrow().sync_due(now)
    }

    /// Runs one group commit now (if anything is unsynced): every fdatasync
    /// it needs, concurrently, then releases the waiters it covers. The
    /// group-commit task calls this; tests may call it directly.
    pub async fn sync_now(&self) -> Result<(), SpoolError> {
        match self.start_sync()? {
            Some(f) => f.await,
            None => Ok(()),
        }
    }

    /// Snapshots the next group commit now (so a second call sees it in
    /// flight) and returns the future that performs it, or `None` if
    /// nothing is unsynced or a sync is already in flight.
    pub(crate) fn start_sync(
        &self,
    ) -> Result<Option<LocalFuture<Result<(), SpoolError>>>, SpoolError> {
        let (job, dir_sync) = {
            let mut core = self.inner.borrow_mut();
            let Some(job) = core.begin_sync() else {
                return match &core.poisoned {
                    Some(reason) => Err(SpoolError::Poisoned {
                        reason: reason.clone(),
                    }),
                    None => Ok(None),
                };
            };
            let dir = job.dir.then(|| core.storage.sync_dir());
            (job, dir)
        };
        let inner = Rc::clone(&self.inner);
        Ok(Some(Box::pin(async move {
            let started = Instant::now();
            let mut futs: Vec<(Option<u64>, LocalFuture<std::io::Result<()>>)> = job
                .segs
                .iter()
                .map(|(seq, map, range)| (Some(*seq), map.sync_data(range.clone())))
                .collect();
            if let Some(d) = dir_sync {
                futs.push((None, d));
            }
            // All syncs are submitted together (one poll of each), then awaited.
            let results = JoinAll::new(futs).await;
            let mut failure = None;
            for (seq, r) in results {
                if let Err(e) = r {
                    let what = match seq {
                        Some(q) => inner.borrow().storage.describe(q),
                        None => "the spool directory".to_string(),
                    };
                    failure.get_or_insert(format!("fdatasync of {what} failed: {e}"));
                }
            }
            let mut core = inner.borrow_mut();
            let result = match failure {
                Some(r) => Err(r),
                None => Ok(()),
            };
            core.end_sync(job, result.clone(), started.elapsed());
            result.map_err(|reason| SpoolError::Poisoned { reason })
        })))
    }

    /// Retires segments nobody needs (recycling them into the spare pool,
    /// or deleting them beyond it) and relocates the few live messages
    /// pinning the oldest one. Background work: never on the append path.
    pub async fn reclaim(&self) -> Result<ReclaimReport, SpoolError> {
        let mut report = ReclaimReport::default();
        // Bounded: each pass either retires segments or relocates the
        // oldest one; there are finitely many segments.
        for _ in 0..64 {
            let candidate = self.inner.borrow().relocation_candidate();
            if let Some(from) = candidate {
                let r = self.inner.borrow_mut().relocate(from, Instant::now())?;
                report.messages_relocated += r.moved.len() as u64;
                self.sync_until(r.target_lsn).await?;
                self.inner.borrow_mut().finish_relocation(r);
            }
            let gone = self.inner.borrow().deletable();
            if gone.is_empty() {
                if candidate.is_none() {
                    break;
                }
                continue;
            }
            let (removed, recycled) = self.retire(&gone).await?;
            report.segments_removed += removed;
            report.segments_recycled += recycled;
        }
        Ok(report)
    }

    /// Retires deletable segments `gone`: each is recycled (renamed to a
    /// new sequence number, new header written and synced) or unlinked,
    /// then one directory sync makes all of it durable; only then do they
    /// count as gone, and recycled ones join the spares.
    async fn retire(&self, gone: &[u64]) -> Result<(u64, u64), SpoolError> {
        let mut removals = Vec::new();
        let mut recycles = Vec::new();
        {
            let mut core = self.inner.borrow_mut();
            for &q in gone {
                match core.retire(q) {
                    Some((map, generation)) => {
                        let to = core.next_seq;
                        core.next_seq += 1;
                        let fut = core.storage.recycle_segment(map, q, to);
                        recycles.push((q, to, generation.saturating_add(1), fut));
                    }
                    None => removals.push((q, core.storage.remove_segment_background(q))),
                }
            }
        }
        let mut failure: Option<String> = None;
        let mut ready = Vec::new();
        for (q, fut) in removals {
            match fut.await {
                Ok(()) => self.inner.borrow_mut().stats.segments_removed += 1,
                Err(e) => {
                    failure.get_or_insert(format!("removing segment {q}: {e}"));
                }
            }
        }
        for (q, to, generation, fut) in recycles {
            match self.prepare_recycled(fut, q, to, generation).await {
                Ok((to, seg)) => ready.push((to, seg, generation)),
                Err(reason) => {
                    // The file is in an unknown state under one of its
                    // names; recovery reads it as empty either way.
                    failure.get_or_insert(reason);
                    self.inner.borrow_mut().recycling -= 1;
                }
            }
        }
        let dir = self.inner.borrow().storage.sync_dir();
        if let Err(e) = dir.await {
            failure.get_or_insert(format!(
                "fsync of the spool directory after retiring segments failed: {e}"
            ));
        }
        if let Some(reason) = failure {
            // Whether the retired segments are durably gone is unknown, so
            // segments referring to them must stay: stop, and say why.
            let mut core = self.inner.borrow_mut();
            core.recycling -= ready.len();
            core.poisoned = Some(reason.clone());
            core.wake_waiters();
            return Err(SpoolError::Poisoned { reason });
        }
        let mut core = self.inner.borrow_mut();
        core.removing.retain(|r| !gone.contains(r));
        let recycled = ready.len() as u64;
        for (to, map, generation) in ready {
            core.recycling -= 1;
            core.stats.segments_recycled += 1;
            let spare = Spare {
                map,
                recycled: true,
                generation,
            };
            if to <= core.head {
                core.park_spare(to, spare);
            } else {
                core.spares.insert(to, spare);
            }
        }
        Ok((gone.len() as u64 - recycled, recycled))
    }

    /// Finishes one recycling: awaits the rename to `to`, writes and syncs
    /// the new header. If the head overtook `to` meanwhile (an inline
    /// creation while the pool was dry), renames it again to a number
    /// above the head, so it can still be used (bounded; else it is parked
    /// by the caller). Returns the final number and the segment.
    async fn prepare_recycled(
        &self,
        renamed: LocalFuture<Result<S::Segment, SpoolError>>,
        from: u64,
        to: u64,
        generation: u32,
    ) -> Result<(u64, S::Segment), String> {
        const RENUMBER_TRIES_MAX: u32 = 3;
        let mut seg = renamed
            .await
            .map_err(|e| format!("recycling segment {from} as {to}: {e}"))?;
        let mut at = to;
        let hdr = format::record_len(format::SEGMENT_HEADER_PAYLOAD_BYTES);
        for tries in 0.. {
            self.inner
                .borrow()
                .write_recycled_header(at, &seg, generation);
            seg.sync_data(0..hdr)
                .await
                .map_err(|e| format!("syncing recycled segment {at}: {e}"))?;
            if at > self.inner.borrow().head || tries == RENUMBER_TRIES_MAX {
                break;
            }
            let (next, fut) = {
                let mut core = self.inner.borrow_mut();
                let next = core.next_seq;
                core.next_seq += 1;
                core.stats.renumbered_spares += 1;
                (next, core.storage.recycle_segment(seg, at, next))
            };
            seg = fut
                .await
                .map_err(|e| format!("renumbering segment {at} as {next}: {e}"))?;
            at = next;
        }
        Ok((at, seg))
    }

    async fn sync_until(&self, lsn: u64) -> Result<(), SpoolError> {
        loop {
            if let Some(r) = self.inner.borrow().commit_state(lsn) {
                return r;
            }
            let in_flight = {
                let core = self.inner.borrow();
                core.sync_in_flight.then_some(core.in_flight_lsn)
            };
            if let Some(target) = in_flight {
                // Wait for the sync in flight (it may not cover `lsn`), then
                // look again: nobody else may start the next one.
                Commit {
                    inner: Rc::clone(&self.inner),
                    target,
                }
                .await?;
                continue;
            }
            self.sync_now().await?;
        }
    }

    /// Whether reclamation has something to do.
    pub fn reclaim_wanted(&self) -> bool {
        let core = self.inner.borrow();
        core.relocation_candidate().is_some() || !core.deletable().is_empty()
    }

    /// Stops accepting; pending commits fail with [`SpoolError::Closed`]
    /// unless a final sync covers them (the driver runs one).
    pub fn close(&self) {
        let mut core = self.inner.borrow_mut();
        core.closed = true;
        if let Some(w) = core.task_waker.take() {
            w.wake();
        }
    }
}

/// The commit barrier future (see [`Spool::commit`]).
pub struct Commit<S: Storage> {
    inner: Rc<RefCell<Core<S>>>,
    target: u64,
}

impl<S: Storage> Future for Commit<S> {
    type Output = Result<(), SpoolError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut core = self.inner.borrow_mut();
        if let Some(r) = core.commit_state(self.target) {
            return Poll::Ready(r);
        }
        core.waiters.push_back((self.target, cx.waker().clone()));
        Poll::Pending
    }
}

/// Polls several futures concurrently and returns their outputs in order.
struct JoinAll<K, T> {
    futs: Vec<(K, Option<LocalFuture<T>>)>,
    done: Vec<Option<T>>,
}

impl<K: Copy + Unpin, T: Unpin> JoinAll<K, T> {
    fn new(futs: Vec<(K, LocalFuture<T>)>) -> Self {
        let done = futs.iter().map(|_| None).collect();
        JoinAll {
            futs: futs.into_iter().map(|(k, f)| (k, Some(f))).collect(),
            done,
        }
    }
}

impl<K: Copy + Unpin, T: Unpin> Future for JoinAll<K, T> {
    type Output = Vec<(K, T)>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut pending = false;
        for (i, (_, slot)) in this.futs.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => {
                        this.done[i] = Some(v);
                        *slot = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            return Poll::Pending;
        }
        let out = this
            .futs
            .iter()
            .zip(this.done.iter_mut())
            .map(|((k, _), v)| (*k, v.take().expect("every future completed")))
            .collect();
        Poll::Ready(out)
    }
}
