//! kill -9: a child process (this test binary re-invoked with an
//! environment variable) appends messages and prints each id only after its
//! commit resolved; the parent SIGKILLs it at a random moment, reopens the
//! spool and checks that every printed id is there with its exact body (and
//! that every completion printed as committed stuck). Many rounds on the
//! same directory, so each child also recovers what the previous one left.
#![cfg(feature = "glommio")]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sluice_spool::fs::FsStorage;
use sluice_spool::{NewMessage, Outcome, Recipient, Spool, SpoolConfig};

const CHILD_ENV: &str = "SLUICE_SPOOL_KILL9_CHILD_DIR";
const ROUNDS: u32 = 12;
/// A child stops by itself after this long (it is normally killed first).
const CHILD_LIFETIME: Duration = Duration::from_secs(20);

const RCPTS: [Recipient<'static>; 2] = [
    Recipient {
        address: b"one@example.org",
        dsn: b"",
    },
    Recipient {
        address: b"two@example.org",
        dsn: b"",
    },
];

fn body_for(tag: u64) -> Vec<u8> {
    let mut b = format!("Subject: {tag}\r\n\r\n").into_bytes();
    // Every fifth record is large enough to be written with pwrite rather
    // than through the mapping, so both append paths are killed mid-way.
    let len = if tag % 5 == 0 {
        8_192 + (tag % 24_000) as usize
    } else {
        200 + (tag % 1800) as usize
    };
    b.extend((0..len).map(|i| b'a' + ((tag as usize + i) % 26) as u8));
    b
}

fn cfg() -> SpoolConfig {
    SpoolConfig {
        segment_bytes: 256 << 10,
        relocate_live_bytes_max: 64 << 10,
        free_bytes_reserve: 0,
        ..SpoolConfig::default()
    }
}

/// The child's body: not a test of its own; it does nothing unless the
/// parent test below started this binary with `CHILD_ENV` set.
#[test]
fn child_process_entry() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let seed: u64 = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    // Complete one message in this many (1: every one, so whole segments
    // retire and their files are recycled while the child runs).
    let complete_one_in: u32 = std::env::var("COMPLETE_ONE_IN")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 << 10)
        .make()
        .unwrap()
        .run(async move {
            let (spool, _) =
                Spool::open(FsStorage::open(Path::new(&dir), 0).unwrap(), cfg()).unwrap();
            let task = spool.spawn_sync_task();
            let started = Instant::now();
            let mut writers = Vec::new();
            for w in 0..8u64 {
                let spool = spool.clone();
                writers.push(glommio::spawn_local(async move {
                    let mut rng = SmallRng::seed_from_u64(seed * 100 + w);
                    while started.elapsed() < CHILD_LIFETIME {
                        let tag: u64 = rng.gen();
                        let body = body_for(tag);
                        let m = NewMessage {
                            sender: b"s@example.com",
                            dsn: b"",
                            tenant: b"",
                            campaign: b"",
                            queue: b"",
                            recipients: &RCPTS,
                            arrival_unix_ms: 0,
                            expiry_unix_ms: 0,
                            body: &body,
                        };
                        let (id, _) = spool.append(&m).unwrap();
                        spool.commit().await.unwrap();
                        println!("ACK {id} {tag}");
                        if rng.gen_ratio(1, complete_one_in) {
                            // Once appended, the completion may survive the
                            // kill even before its commit resolves.
                            println!("COMPLETING {id}");
                            spool
                                .complete_many(id, &[(0, Outcome::Delivered), (1, Outcome::Failed)])
                                .unwrap();
                            spool.commit().await.unwrap();
                            println!("DONE {id}");
                        }
                    }
                }));
            }
            for w in writers {
                w.await;
            }
            spool.close();
            task.await;
        });
}

#[test]
fn kill_9_never_loses_a_committed_message() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    kill_9_rounds(ROUNDS, 3);
}

/// The same with every message completed: segments retire while the child
/// runs, so it is killed while files are being recycled and while it
/// appends into recycled files; their old records must never come back.
#[test]
fn kill_9_while_recycling_segments() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let (_tmp, dir) = kill_9_rounds(ROUNDS / 2, 1);
    // Files were recycled: some segment header has a generation above 0.
    let recycled = std::fs::read_dir(dir.join("shard-0"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("seg-"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter(|b| b.len() > 24 && u32::from_le_bytes([b[20], b[21], b[22], b[23]]) > 0)
        .count();
    assert!(recycled > 0, "no segment file was ever recycled");
}

/// Runs `rounds` kill -9 rounds on one directory, checking after each that
/// every printed id is there; the children complete one message in
/// `complete_one_in`. Returns the directory (kept alive by the guard).
fn kill_9_rounds(rounds: u32, complete_one_in: u32) -> (tempfile::TempDir, std::path::PathBuf) {
    let seed: u64 = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    eprintln!("kill -9 test seed {seed} (rerun with SEED={seed})");
    let mut rng = SmallRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let exe = std::env::current_exe().unwrap();
    let mut acked: HashMap<u64, u64> = HashMap::new();
    let mut done: HashSet<u64> = HashSet::new();
    let mut completing: HashSet<u64> = HashSet::new();
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "child_process_entry",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &dir)
            .env("SEED", (seed + u64::from(round)).to_string())
            .env("COMPLETE_ONE_IN", complete_one_in.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        std::thread::sleep(Duration::from_millis(rng.gen_range(150..900)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        let mut acks = 0;
        for line in lines {
            let mut f = line.split_whitespace();
            match (f.next(), f.next(), f.next()) {
                (Some("ACK"), Some(id), Some(tag)) => {
                    let prev = acked.insert(id.parse().unwrap(), tag.parse().unwrap());
                    assert!(prev.is_none(), "id {id} handed out twice");
                    acks += 1;
                }
                (Some("COMPLETING"), Some(id), None) => {
                    completing.insert(id.parse().unwrap());
                }
                (Some("DONE"), Some(id), None) => {
                    done.insert(id.parse().unwrap());
                }
                _ => {} // libtest's own lines, or a line cut by the kill
            }
        }
        let (spool, report) = Spool::open(FsStorage::open(&dir, 0).unwrap(), cfg()).unwrap();
        assert_eq!(report.quarantined_records, 0, "round {round}: {report:?}");
        let live: HashMap<u64, _> = spool
            .live_messages()
            .into_iter()
            .map(|m| (m.id, m))
            .collect();
        for (id, tag) in &acked {
            if done.contains(id) {
                assert!(
                    !live.contains_key(id),
                    "round {round}: completed {id} came back"
                );
                continue;
            }
            if completing.contains(id) && !live.contains_key(id) {
                continue;
            }
            let Some(m) = live.get(id) else {
                let keep = tmp.keep();
                panic!(
                    "round {round} (seed {seed}): committed message {id} lost; segments {:?}; {report:?}; dir kept at {}",
                    spool.segments(),
                    keep.display()
                );
            };
            assert_eq!(
                &*spool.body(&m.rec).unwrap(),
                &body_for(*tag)[..],
                "id {id}"
            );
        }
        eprintln!(
            "round {round}: {acks} new acks, {} live, {} truncated bytes",
            live.len(),
            report.truncated_bytes
        );
    }
    assert!(
        acked.len() > 200,
        "the children barely ran: {} acks",
        acked.len()
    );
    (tmp, dir)
}
