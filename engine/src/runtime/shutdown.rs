//! The shard-local shutdown signal: set once, awaited by any task.

// std
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// Set once when the shard is asked to stop (SIGTERM/SIGINT reach every
/// shard through the runtime's stop flag). Cheap to clone; single-threaded.
///
/// Tasks either check [`Shutdown::is_set`] at their quiet points or race
/// [`Shutdown::wait`] against their own work.
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Rc<Inner>,
}

#[derive(Default)]
struct Inner {
    set: Cell<bool>,
    /// One slot per live [`Wait`] that has been polled; a dropped `Wait`
    /// frees its slot, so the table is bounded by the live futures (an
    /// accept loop or connection creates one per wait, on the hot path).
    waiters: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl Shutdown {
    /// A signal not yet set.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Whether shutdown was asked for.
    pub fn is_set(&self) -> bool {
        self.inner.set.get()
    }

    /// Asks for shutdown and wakes every waiter. Idempotent.
    pub fn trigger(&self) {
        if self.inner.set.replace(true) {
            return;
        }
        let wakers: Vec<Waker> = self
            .inner
            .waiters
            .borrow_mut()
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for w in wakers {
            w.wake();
        }
    }

    /// Resolves once shutdown is asked for (at once if it already was).
    pub fn wait(&self) -> Wait {
        Wait {
            inner: Rc::clone(&self.inner),
            slot: None,
        }
    }

    #[cfg(test)]
    fn slots_in_use(&self) -> usize {
        self.inner.waiters.borrow().len() - self.inner.free.borrow().len()
    }
}

/// The future returned by [`Shutdown::wait`].
pub struct Wait {
    inner: Rc<Inner>,
    slot: Option<usize>,
}

impl Future for Wait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.inner.set.get() {
            return Poll::Ready(());
        }
        let slot = match self.slot {
            Some(i) => i,
            None => {
                let mut waiters = self.inner.waiters.borrow_mut();
                let i = match self.inner.free.borrow_mut().pop() {
                    Some(i) => i,
                    None => {
                        waiters.push(None);
                        waiters.len() - 1
                    }
                };
                drop(waiters);
                self.slot = Some(i);
                i
            }
        };
        self.inner.waiters.borrow_mut()[slot] = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        if let Some(i) = self.slot.take() {
            self.inner.waiters.borrow_mut()[i] = None;
            self.inner.free.borrow_mut().push(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_every_waiter_once_set() {
        glommio::LocalExecutorBuilder::default()
            .io_memory(256 << 10)
            .make()
            .expect("executor")
            .run(async {
                let s = Shutdown::new();
                let a = glommio::spawn_local({
                    let s = s.clone();
                    async move { s.wait().await }
                });
                let b = glommio::spawn_local({
                    let s = s.clone();
                    async move { s.wait().await }
                });
                glommio::yield_if_needed().await;
                glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
                assert!(!s.is_set());
                s.trigger();
                a.await;
                b.await;
                assert!(s.is_set());
                // Already set: resolves at once.
                s.wait().await;
            });
    }

    #[test]
    fn dropped_waiters_free_their_slots() {
        glommio::LocalExecutorBuilder::default()
            .io_memory(256 << 10)
            .make()
            .expect("executor")
            .run(async {
                let s = Shutdown::new();
                // A loop racing wait() against other work, as an accept loop
                // does, must not grow the table.
                for _ in 0..1000 {
                    let w = s.wait();
                    let r = futures_lite::future::or(
                        async {
                            w.await;
                            true
                        },
                        async { false },
                    )
                    .await;
                    assert!(!r);
                }
                assert_eq!(s.slots_in_use(), 0);
                assert!(s.inner.waiters.borrow().len() <= 1);
                let pending = glommio::spawn_local({
                    let s = s.clone();
                    async move { s.wait().await }
                });
                glommio::timer::sleep(std::time::Duration::from_millis(2)).await;
                assert_eq!(s.slots_in_use(), 1);
                s.trigger();
                pending.await;
                assert_eq!(s.slots_in_use(), 0);
            });
    }
}
