//! Power loss: behind the storage seam, the double keeps only the bytes
//! that were synced plus a torn prefix of the rest (and flips a coin for
//! every directory operation not yet synced). After every simulated crash,
//! recovery must find every message whose commit barrier resolved, intact,
//! and nothing that fails its checksum.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use futures_lite::future::block_on;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sluice_spool::mem::MemStorage;
use sluice_spool::{Commit, NewMessage, Outcome, Recipient, Spool, SpoolConfig};

const SEEDS: u64 = 150;
const CRASHES_PER_SEED: u32 = 4;

fn cfg() -> SpoolConfig {
    SpoolConfig {
        segment_bytes: 64 << 10,
        relocate_above_segments: 3,
        relocate_live_bytes_max: 24 << 10,
        ..SpoolConfig::default()
    }
}

fn body_for(tag: u64) -> Vec<u8> {
    (0..(tag % 5000) as usize)
        .map(|i| (i as u64 ^ tag) as u8)
        .collect()
}

fn resolved(c: &mut Commit<MemStorage>) -> Option<bool> {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(c).poll(&mut cx) {
        Poll::Ready(r) => Some(r.is_ok()),
        Poll::Pending => None,
    }
}

#[test]
fn every_resolved_commit_survives_power_loss() {
    for seed in 0..SEEDS {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut storage = MemStorage::new();
        let (mut spool, _) = Spool::open(storage.clone(), cfg()).unwrap();
        // id -> body tag, for messages whose commit resolved.
        let mut acked: BTreeMap<u64, u64> = BTreeMap::new();
        // Completions whose commit resolved: gone for good.
        let mut done: BTreeSet<u64> = BTreeSet::new();
        let mut live: Vec<u64> = Vec::new();
        let mut tags: BTreeMap<u64, u64> = BTreeMap::new();
        for crash in 0..CRASHES_PER_SEED {
            let mut barriers: Vec<(Commit<MemStorage>, Vec<u64>, Vec<u64>)> = Vec::new();
            let mut appended = Vec::new();
            let mut completed = Vec::new();
            for _ in 0..rng.gen_range(1..150) {
                match rng.gen_range(0..10) {
                    0..=4 => {
                        let tag: u64 = rng.gen();
                        let body = body_for(tag);
                        let r = [Recipient {
                            address: b"x@example.org",
                            dsn: b"",
                        }];
                        let m = NewMessage {
                            sender: b"",
                            dsn: b"",
                            tenant: b"",
                            campaign: b"",
                            queue: b"",
                            recipients: &r,
                            arrival_unix_ms: 0,
                            expiry_unix_ms: 0,
                            body: &body,
                        };
                        let (id, _) = spool.append(&m).unwrap();
                        tags.insert(id, tag);
                        live.push(id);
                        appended.push(id);
                    }
                    5 if !live.is_empty() => {
                        let id = live.swap_remove(rng.gen_range(0..live.len()));
                        spool.complete(id, 0, Outcome::Delivered).unwrap();
                        completed.push(id);
                    }
                    6 => {
                        barriers.push((
                            spool.commit(),
                            std::mem::take(&mut appended),
                            std::mem::take(&mut completed),
                        ));
                    }
                    7 => {
                        // A sync may fail to happen before the crash: only
                        // some of them run.
                        block_on(spool.sync_now()).unwrap();
                    }
                    8 => {
                        block_on(spool.reclaim()).unwrap();
                    }
                    _ => {}
                }
                for (c, ids, comps) in &mut barriers {
                    if resolved(c) == Some(true) {
                        for id in ids.drain(..) {
                            acked.insert(id, tags[&id]);
                        }
                        done.extend(comps.drain(..));
                    }
                }
            }
            storage = storage.crash(rng.gen());
            let (again, report) = Spool::open(storage.clone(), cfg()).unwrap();
            assert_eq!(
                report.quarantined_records, 0,
                "seed {seed} crash {crash}: {report:?}"
            );
            let found: BTreeMap<u64, _> = again
                .live_messages()
                .into_iter()
                .map(|m| (m.id, m))
                .collect();
            for (id, m) in &found {
                assert!(
                    !done.contains(id),
                    "seed {seed}: durably completed {id} came back"
                );
                let tag = tags[id];
                assert_eq!(
                    &*again.body(&m.rec).unwrap(),
                    &body_for(tag)[..],
                    "seed {seed} id {id}"
                );
            }
            for (id, _) in acked.iter().filter(|(id, _)| !done.contains(id)) {
                if found.contains_key(id) {
                    continue;
                }
                // Absent is fine only if its completion was appended (the
                // crash may have kept an unacknowledged completion).
                assert!(
                    !live.contains(id),
                    "seed {seed} crash {crash}: acknowledged message {id} lost"
                );
            }
            live = found.keys().copied().collect();
            acked.retain(|id, _| found.contains_key(id));
            spool = again;
        }
    }
}
