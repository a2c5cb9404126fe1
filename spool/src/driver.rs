//! The group-commit task on a glommio executor: sleeps until the commit
//! window of the oldest unsynced append closes (or the unsynced bytes pass
//! the threshold), runs one sync for everything appended so far, releases
//! the waiters it covers, and between syncs reclaims old segments
//! (recycling them as spares) and pre-creates a new one when none is
//! ready.

// std
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

// external
use futures_lite::future;

// crate
use crate::core::SyncDue;
use crate::spool::Spool;
use crate::storage::{SegmentMap, Storage};

/// Resolves at the first wake-up after its first poll.
struct Notified<S: Storage> {
    spool: Spool<S>,
    armed: bool,
}

impl<S: Storage> Future for Notified<S> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.armed {
            return Poll::Ready(());
        }
        self.armed = true;
        self.spool.inner.borrow_mut().task_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// At shutdown, wait at most this many 5 ms rounds for a segment creation.
const SHUTDOWN_WAIT_ROUNDS: u32 = 2000;

/// Back-off after a failed background step, so an error does not spin.
const RETRY_BACKGROUND: Duration = Duration::from_millis(500);

impl<S: Storage> Spool<S> {
    fn notified(&self) -> Notified<S> {
        Notified {
            spool: self.clone(),
            armed: false,
        }
    }

    /// Spawns the group-commit task on the current glommio executor. It
    /// runs until [`Spool::close`], then makes a final sync and returns.
    pub fn spawn_sync_task(&self) -> glommio::Task<()> {
        let spool = self.clone();
        glommio::spawn_local(async move { spool.run_sync_task().await })
    }

    /// The group-commit loop (see the module docs).
    pub async fn run_sync_task(self) {
        let reclaiming = Rc::new(Cell::new(false));
        loop {
            self.kick_write_behind();
            // Background work starts whenever the loop runs, not only when
            // it is idle: under steady load there is always something to
            // sync, and segments must still be retired and spares made.
            if !self.inner.borrow().closed {
                if !reclaiming.get() && self.reclaim_wanted() && self.poisoned().is_none() {
                    self.start_reclaim(Rc::clone(&reclaiming));
                }
                // A new file only when no recycled one is ready or coming.
                self.start_spare();
            }
            match self.sync_due(Instant::now()) {
                SyncDue::Now => {
                    // The sync runs as its own task so this loop stays free
                    // to start write-behind meanwhile; an error poisons the
                    // spool and reaches every waiter.
                    match self.start_sync() {
                        Ok(Some(f)) => {
                            glommio::spawn_local(async move {
                                let _ = f.await;
                            })
                            .detach();
                        }
                        Ok(None) | Err(_) => self.notified().await,
                    }
                }
                SyncDue::At(t) => {
                    let wait = t.saturating_duration_since(Instant::now());
                    future::or(glommio::timer::sleep(wait), self.notified()).await;
                }
                SyncDue::Idle => {
                    if self.inner.borrow().closed && !self.inner.borrow().sync_in_flight {
                        break;
                    }
                    self.notified().await;
                }
            }
        }
        // Let a background segment creation finish: the blocking pool must
        // not outlive the executor with work in hand.
        for _ in 0..SHUTDOWN_WAIT_ROUNDS {
            if !self.inner.borrow().spare_pending
                && !reclaiming.get()
                && self.inner.borrow().recycling == 0
            {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        self.inner.borrow_mut().wake_waiters();
    }

    /// Runs reclamation as its own task, so unlinking and the directory
    /// sync never hold up a group commit.
    fn start_reclaim(&self, reclaiming: Rc<Cell<bool>>) {
        reclaiming.set(true);
        let spool = self.clone();
        glommio::spawn_local(async move {
            match spool.reclaim().await {
                Ok(r)
                    if r.segments_removed > 0
                        || r.segments_recycled > 0
                        || r.messages_relocated > 0 => {}
                // Nothing could be done (or it failed): do not retry at once.
                Ok(_) => glommio::timer::sleep(RETRY_BACKGROUND).await,
                Err(e) => {
                    log::warn!("spool reclamation: {e}");
                    glommio::timer::sleep(RETRY_BACKGROUND).await;
                }
            }
            reclaiming.set(false);
            let waker = spool.inner.borrow_mut().task_waker.take();
            if let Some(w) = waker {
                w.wake();
            }
        })
        .detach();
    }

    fn kick_write_behind(&self) {
        while let Some((map, range)) = self.inner.borrow_mut().write_behind_due() {
            if let Some(f) = map.write_behind(range) {
                glommio::spawn_local(async move {
                    f.await;
                    drop(map);
                })
                .detach();
            }
        }
    }

    /// Pre-creates the next segment in a separate task (the reservation
    /// runs on glommio's blocking thread pool), so rotation is a swap.
    fn start_spare(&self) {
        let Some(seq) = self.inner.borrow_mut().spare_wanted() else {
            return;
        };
        let fut = {
            let core = self.inner.borrow();
            core.storage
                .create_segment_background(seq, core.cfg.segment_bytes)
        };
        let inner = Rc::clone(&self.inner);
        glommio::spawn_local(async move {
            let r = fut.await;
            inner.borrow_mut().spare_ready(seq, r);
        })
        .detach();
    }
}
