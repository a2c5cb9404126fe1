//! Heap cost of a queued recipient: a million deferred recipients, counted
//! by a global allocator that tracks live bytes. The budget is about 128
//! bytes per recipient besides its spool bytes (issue 5).
//!
//! Run: `cargo test -p sluice-engine --test queue_memory -- --nocapture`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sluice_engine::config::{DomainPattern, Route};
use sluice_engine::queue::{
    Accepted, AcceptedRecipient, DomainRecipients, QueueConfig, Queues, Sites,
};
use sluice_spool::RecordRef;

/// Counts live heap bytes (the test binary's only allocator).
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator and only adds counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const RECIPIENTS: usize = 1_000_000;
const DOMAINS: usize = 1_000;
const BYTES_PER_RECIPIENT_MAX: usize = 128;

#[test]
fn a_million_deferred_recipients_fit_the_budget() {
    let sites = Sites::from_routes(&[Route {
        pattern: DomainPattern::Any,
        hosts: vec!["127.0.0.1:2526".parse().unwrap()],
    }]);
    let mut q = Queues::new(
        sites,
        QueueConfig {
            max_age: Duration::from_secs(5 * 24 * 3600),
            recipients_max: 2 * RECIPIENTS,
        },
    );
    // Warm the destinations (their names are per-domain, not per-recipient).
    for d in 0..DOMAINS {
        q.destination(&format!("domain{d}.test"));
    }
    let site = q.sites().site_for("domain0.test");
    let mut out = Vec::with_capacity(1);
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    for id in 0..RECIPIENTS as u64 {
        let domain = format!("domain{}.test", id as usize % DOMAINS);
        q.enqueue(Accepted {
            id,
            rec: RecordRef {
                segment: id / 10_000,
                offset: (id % 10_000) as u32 * 4096,
                len: 2400,
            },
            arrival_unix_ms: 1_000,
            expiry_unix_ms: 0,
            sender: String::new(),
            pool: None,
            tenant: None,
            domains: vec![DomainRecipients {
                domain,
                recipients: vec![AcceptedRecipient {
                    index: 0,
                    address: String::new(),
                    dsn: Vec::new(),
                }],
            }],
        });
        // Attempt and defer it at once: it ends in the scheduled heap.
        let dest = q.take(site, 2_000, 1, &mut out).expect("just enqueued");
        let mut e = out[0];
        e.attempts = 1;
        q.defer(dest, e, 2_000 + id * 7 % 3_600_000);
    }
    let after = LIVE_BYTES.load(Ordering::Relaxed);
    let counts = q.counts();
    assert_eq!(counts.scheduled, RECIPIENTS);
    assert_eq!(counts.ready + counts.in_flight, 0);
    let per = (after - before) / RECIPIENTS;
    println!(
        "{RECIPIENTS} deferred recipients over {DOMAINS} domains: {} bytes of heap, {per} bytes each \
         (entry {} B, scheduled item {} B)",
        after - before,
        sluice_engine::queue::ENTRY_BYTES,
        sluice_engine::queue::TIMED_BYTES
    );
    assert!(
        per <= BYTES_PER_RECIPIENT_MAX,
        "{per} bytes per deferred recipient"
    );
    // And all of them come back in time order.
    let mut last = 0;
    let mut moved = 0;
    while let Some(due) = q.next_due() {
        assert!(due >= last);
        last = due;
        moved += q.promote_due(due, usize::MAX);
    }
    assert_eq!(moved, RECIPIENTS);
}
