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
    waiters: RefCell<Vec<Waker>>,
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
        let waiters = std::mem::take(&mut *self.inner.waiters.borrow_mut());
        for w in waiters {
            w.wake();
        }
    }

    /// Resolves once shutdown is asked for (at once if it already was).
    pub fn wait(&self) -> Wait {
        Wait {
            inner: Rc::clone(&self.inner),
            registered: false,
        }
    }
}

/// The future returned by [`Shutdown::wait`].
pub struct Wait {
    inner: Rc<Inner>,
    registered: bool,
}

impl Future for Wait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.inner.set.get() {
            return Poll::Ready(());
        }
        // Registered once per future: a waiter that is polled again after a
        // spurious wake-up keeps one entry (its waker is replaced), so the
        // list is bounded by the number of live futures.
        let mut waiters = self.inner.waiters.borrow_mut();
        if self.registered {
            if let Some(w) = waiters.iter_mut().find(|w| w.will_wake(cx.waker())) {
                w.clone_from(cx.waker());
                return Poll::Pending;
            }
        }
        waiters.push(cx.waker().clone());
        drop(waiters);
        self.registered = true;
        Poll::Pending
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
}
