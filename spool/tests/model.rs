//! Property test: random append / complete / defer / sync / reclaim /
//! crash / reopen sequences against a simple model, on the power-loss
//! storage double. After every crash, recovery must return every message
//! whose commit resolved (with at least its durably-pending recipients and
//! intact bytes), never a message completed durably, and nothing corrupt.

use std::collections::{BTreeMap, BTreeSet};

use futures_lite::future::block_on;
use proptest::prelude::*;
use sluice_spool::mem::MemStorage;
use sluice_spool::{NewMessage, Outcome, Recipient, Spool, SpoolConfig};

#[derive(Debug, Clone)]
enum Op {
    Append { rcpts: u8, body_len: u16 },
    Complete { pick: u16, rcpt: u8 },
    Defer { pick: u16 },
    Sync,
    Reclaim,
    Crash { seed: u64 },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (1u8..5, 0u16..6000).prop_map(|(rcpts, body_len)| Op::Append { rcpts, body_len }),
        6 => (any::<u16>(), any::<u8>()).prop_map(|(pick, rcpt)| Op::Complete { pick, rcpt }),
        1 => any::<u16>().prop_map(|pick| Op::Defer { pick }),
        3 => Just(Op::Sync),
        2 => Just(Op::Reclaim),
        2 => any::<u64>().prop_map(|seed| Op::Crash { seed }),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Debug, Clone)]
struct Msg {
    rcpts: u32,
    body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct State {
    pending: BTreeSet<u32>,
    attempts: u32,
}

/// Weighted towards filling segments, completing everything and
/// reclaiming, so that segment files are recycled and the head often is a
/// file holding an earlier life's records when the crash comes.
fn op_recycling() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (1u8..3, 1500u16..6000).prop_map(|(rcpts, body_len)| Op::Append { rcpts, body_len }),
        12 => (any::<u16>(), any::<u8>()).prop_map(|(pick, rcpt)| Op::Complete { pick, rcpt }),
        1 => any::<u16>().prop_map(|pick| Op::Defer { pick }),
        2 => Just(Op::Sync),
        3 => Just(Op::Reclaim),
        1 => any::<u64>().prop_map(|seed| Op::Crash { seed }),
        1 => Just(Op::Reopen),
    ]
}

fn cfg() -> SpoolConfig {
    SpoolConfig {
        segment_bytes: 64 << 10,
        relocate_above_segments: 3,
        relocate_live_bytes_max: 24 << 10,
        ..SpoolConfig::default()
    }
}

fn body(id_hint: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u64 * 31 + id_hint) as u8).collect()
}

struct Harness {
    storage: MemStorage,
    spool: Spool<MemStorage>,
    ever: BTreeMap<u64, Msg>,
    /// Current state of live messages (what the spool has in memory).
    model: BTreeMap<u64, State>,
    /// State at the last completed sync.
    durable: BTreeMap<u64, State>,
    /// Ids durably complete: must never come back.
    gone: BTreeSet<u64>,
    appends: u64,
    /// Rotations into a recycled segment, over every open so far.
    recycled_installs: u64,
}

impl Harness {
    fn new() -> Self {
        let storage = MemStorage::new();
        let (spool, _) = Spool::open(storage.clone(), cfg()).unwrap();
        Harness {
            storage,
            spool,
            ever: BTreeMap::new(),
            model: BTreeMap::new(),
            durable: BTreeMap::new(),
            gone: BTreeSet::new(),
            appends: 0,
            recycled_installs: 0,
        }
    }

    fn synced(&mut self) {
        for id in self.durable.keys() {
            if !self.model.contains_key(id) {
                self.gone.insert(*id);
            }
        }
        // Appended and completed between two syncs: gone as well.
        for id in self.ever.keys() {
            if !self.model.contains_key(id) {
                self.gone.insert(*id);
            }
        }
        self.durable = self.model.clone();
    }

    fn pick(&self, pick: u16) -> Option<u64> {
        if self.model.is_empty() {
            return None;
        }
        self.model
            .keys()
            .nth(pick as usize % self.model.len())
            .copied()
    }

    fn step(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Append { rcpts, body_len } => {
                let addrs: Vec<Vec<u8>> = (0..rcpts)
                    .map(|i| format!("r{i}@example.org").into_bytes())
                    .collect();
                let rs: Vec<Recipient<'_>> = addrs
                    .iter()
                    .map(|a| Recipient {
                        address: a,
                        dsn: b"",
                    })
                    .collect();
                self.appends += 1;
                let b = body(self.appends, body_len as usize);
                let m = NewMessage {
                    sender: b"s@example.com",
                    dsn: b"",
                    tenant: b"t",
                    campaign: b"",
                    queue: b"",
                    recipients: &rs,
                    arrival_unix_ms: 1,
                    expiry_unix_ms: 2,
                    body: &b,
                };
                let (id, rec) = self.spool.append(&m).unwrap();
                prop_assert_eq!(&*self.spool.body(&rec).unwrap(), &b[..]);
                prop_assert!(!self.ever.contains_key(&id), "id {} reused", id);
                if let Some(max) = self.ever.keys().next_back() {
                    prop_assert!(id > *max, "ids are monotonic");
                }
                self.ever.insert(
                    id,
                    Msg {
                        rcpts: u32::from(rcpts),
                        body: b,
                    },
                );
                self.model.insert(
                    id,
                    State {
                        pending: (0..u32::from(rcpts)).collect(),
                        attempts: 0,
                    },
                );
            }
            Op::Complete { pick, rcpt } => {
                let Some(id) = self.pick(pick) else {
                    return Ok(());
                };
                let r = u32::from(rcpt) % self.ever[&id].rcpts;
                self.spool.complete(id, r, Outcome::Delivered).unwrap();
                let st = self.model.get_mut(&id).unwrap();
                st.pending.remove(&r);
                if st.pending.is_empty() {
                    self.model.remove(&id);
                }
                prop_assert_eq!(self.spool.live_count(), self.model.len());
            }
            Op::Defer { pick } => {
                let Some(id) = self.pick(pick) else {
                    return Ok(());
                };
                let st = self.model.get_mut(&id).unwrap();
                st.attempts += 1;
                self.spool
                    .defer(id, st.attempts, 1000 * u64::from(st.attempts))
                    .unwrap();
            }
            Op::Sync => {
                let barrier = self.spool.commit();
                block_on(self.spool.sync_now()).unwrap();
                block_on(barrier).unwrap();
                self.synced();
            }
            Op::Reclaim => {
                block_on(self.spool.sync_now()).unwrap();
                self.synced();
                block_on(self.spool.reclaim()).unwrap();
                // Relocation syncs again; nothing new was appended by us.
                prop_assert_eq!(self.spool.live_count(), self.model.len());
            }
            Op::Crash { seed } => {
                let crashed = self.storage.crash(seed);
                self.reopen(crashed, false)?;
            }
            Op::Reopen => {
                let same = self.storage.clone();
                self.reopen(same, true)?;
            }
        }
        Ok(())
    }

    fn reopen(&mut self, storage: MemStorage, clean: bool) -> Result<(), TestCaseError> {
        self.recycled_installs += self.spool.stats().recycled_installs;
        let (spool, report) = Spool::open(storage.clone(), cfg()).unwrap();
        prop_assert_eq!(
            report.quarantined_records,
            0,
            "power loss never corrupts: {:?}",
            report
        );
        let live = spool.live_messages();
        let mut recovered = BTreeMap::new();
        for m in &live {
            let Some(orig) = self.ever.get(&m.id) else {
                return Err(TestCaseError::fail(format!(
                    "unknown id {} recovered",
                    m.id
                )));
            };
            prop_assert!(
                !self.gone.contains(&m.id),
                "durably completed {} came back",
                m.id
            );
            prop_assert_eq!(&*spool.body(&m.rec).unwrap(), &orig.body[..]);
            let parts_ok = spool.message(&m.rec).unwrap().parts().is_ok();
            prop_assert!(parts_ok);
            let pending: BTreeSet<u32> = m.pending.iter().copied().collect();
            if let Some(cur) = self.model.get(&m.id) {
                prop_assert!(
                    cur.pending.is_subset(&pending),
                    "id {}: lost a pending recipient",
                    m.id
                );
                prop_assert!(m.attempts <= cur.attempts);
            }
            if let Some(d) = self.durable.get(&m.id) {
                prop_assert!(
                    pending.is_subset(&d.pending),
                    "id {}: durable completion lost",
                    m.id
                );
                prop_assert!(
                    m.attempts >= d.attempts,
                    "id {}: durable deferral lost",
                    m.id
                );
            }
            if clean {
                prop_assert_eq!(Some(&pending), self.model.get(&m.id).map(|s| &s.pending));
            }
            recovered.insert(
                m.id,
                State {
                    pending,
                    attempts: m.attempts,
                },
            );
        }
        for (id, d) in &self.durable {
            if let Some(cur) = self.model.get(id) {
                prop_assert!(
                    recovered.contains_key(id),
                    "acknowledged message {} (pending {:?}/{:?}) lost",
                    id,
                    cur.pending,
                    d.pending
                );
            }
        }
        if clean {
            prop_assert_eq!(recovered.len(), self.model.len());
        }
        self.storage = storage;
        self.spool = spool;
        self.model = recovered.clone();
        self.durable = recovered;
        for id in self.ever.keys() {
            if !self.model.contains_key(id) {
                self.gone.insert(*id);
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn spool_matches_model(ops in proptest::collection::vec(op(), 1..120)) {
        let mut h = Harness::new();
        for op in ops {
            h.step(op)?;
        }
        // A final clean reopen sees exactly the model.
        block_on(h.spool.sync_now()).unwrap();
        h.synced();
        let same = h.storage.clone();
        h.reopen(same, true)?;
    }
}

/// The same model, through recycled segments: the run as a whole must have
/// rotated into recycled files (and crashed with them as the head), and
/// every case must hold.
#[test]
fn spool_matches_model_through_recycled_segments() {
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    use std::cell::Cell;

    let recycled = Cell::new(0u64);
    // Seeded, so the recycling count below is the same on every run
    // (`PROPTEST_CASES` still raises the number of cases).
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases,
            ..Config::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let strategy = proptest::collection::vec(op_recycling(), 1..240);
    let result = runner.run(&strategy, |ops| {
        let mut h = Harness::new();
        for op in ops {
            h.step(op)?;
        }
        block_on(h.spool.sync_now()).unwrap();
        h.synced();
        let same = h.storage.clone();
        h.reopen(same, true)?;
        recycled.set(recycled.get() + h.recycled_installs);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(
        recycled.get() >= 10,
        "only {} rotations into recycled segments",
        recycled.get()
    );
    eprintln!("rotations into recycled segments: {}", recycled.get());
}
