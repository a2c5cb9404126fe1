//! Corrupted spool segments while the engine is stopped (issue 10, "Crash
//! and storage faults"): messages are queued for a destination that is
//! down, the engine stops, bytes inside one message record are changed on
//! disk, and the engine starts again with the destination up. The damaged
//! record must be quarantined (its bytes copied to `quarantine/`, the count
//! reported) and every other message delivered exactly once; the damaged
//! one must not arrive (its checksum no longer matches, so nothing vouches
//! for what it says).
//!
//! Needs the release (or `SLUICE_BIN_DIR`) binaries `sluice` and
//! `sluice-sink`.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice_tests::free_port;
use sluice_tests::Engine;
use support::{send_each, wait_until, Message};

const MESSAGES: usize = 60;
const DAMAGED: [usize; 2] = [17, 42];

fn id(n: usize) -> String {
    format!("spoolcorrupt-{n:04}")
}

/// Sends every message on one connection, one transaction at a time.
fn inject(engine: &Engine, ids: &[String]) {
    let bodies: Vec<String> = ids
        .iter()
        .map(|id| format!("body of {id}, long enough to change a byte in"))
        .collect();
    let messages: Vec<Message<'_>> = ids
        .iter()
        .zip(&bodies)
        .map(|(id, body)| Message {
            from: "s@src.test",
            to: "r@dest.test",
            id,
            body,
        })
        .collect();
    send_each(engine.port, &messages);
}

fn segments(spool: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for shard in std::fs::read_dir(spool).expect("spool dir").flatten() {
        if !shard.file_name().to_string_lossy().starts_with("shard-") {
            continue;
        }
        for file in std::fs::read_dir(shard.path())
            .expect("shard dir")
            .flatten()
        {
            if file.file_type().is_ok_and(|t| t.is_file()) {
                out.push(file.path());
            }
        }
    }
    out
}

/// Changes one byte inside the body of the message carrying `needle`
/// (the `body of` line), in whichever segment holds it. Returns whether it
/// was found.
fn damage(spool: &Path, needle: &str) -> bool {
    let pattern = format!("body of {needle}");
    for path in segments(spool) {
        let mut bytes = std::fs::read(&path).expect("read segment");
        if let Some(at) = bytes
            .windows(pattern.len())
            .position(|w| w == pattern.as_bytes())
        {
            // "body of" -> "bOdy of": same length, different checksum.
            bytes[at + 1] = b'O';
            std::fs::write(&path, &bytes).expect("write segment");
            return true;
        }
    }
    false
}

#[test]
fn damaged_records_are_quarantined_and_every_other_message_is_delivered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    let ids: Vec<String> = (0..MESSAGES).map(id).collect();

    // 1. Queue everything for a destination where nothing listens.
    let nobody = free_port().expect("a port nobody listens on");
    let mut engine = support::config(dir.path(), nobody).start();
    inject(&engine, &ids);
    engine
        .process
        .stop(Duration::from_secs(20))
        .expect("graceful stop");

    // 2. Damage two message records on disk.
    for n in DAMAGED {
        assert!(damage(&spool, &id(n)), "{} not found in any segment", id(n));
    }

    // 3. Start again with the destination up.
    let sink = support::sink(dir.path(), "sink", &[]);
    let engine = support::config(dir.path(), sink.port).start();
    let expected: BTreeSet<String> = ids
        .iter()
        .enumerate()
        .filter(|(n, _)| !DAMAGED.contains(n))
        .map(|(_, id)| id.clone())
        .collect();
    wait_until("every undamaged message at the sink", || {
        let got = sink.id_counts();
        expected.iter().all(|id| got.contains_key(id))
    });
    std::thread::sleep(Duration::from_millis(700));

    let got = sink.id_counts();
    for id in &expected {
        assert_eq!(got.get(id), Some(&1), "{id} arrives exactly once");
    }
    for n in DAMAGED {
        assert!(
            !got.contains_key(&id(n)),
            "{} was damaged on disk and still delivered",
            id(n)
        );
    }
    let said = engine.said();
    sluice_tests::write_report(
        "corrupted_segments",
        serde_json::json!({
            "queued": MESSAGES,
            "damaged_records": DAMAGED.len(),
            "delivered_exactly_once": expected.iter().filter(|id| got.get(*id) == Some(&1)).count(),
            "damaged_delivered": DAMAGED.iter().filter(|n| got.contains_key(&id(**n))).count(),
        }),
    );
    assert!(
        said.contains(&format!("{} quarantined record(s)", DAMAGED.len())),
        "the start-up report counts the quarantined records:\n{said}"
    );
    let quarantined: Vec<PathBuf> = std::fs::read_dir(spool.join("shard-0").join("quarantine"))
        .expect("quarantine dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(
        !quarantined.is_empty(),
        "the damaged bytes are kept in quarantine/"
    );
    let kept: Vec<u8> = quarantined
        .iter()
        .flat_map(|p| std::fs::read(p).expect("read quarantine"))
        .collect();
    for n in DAMAGED {
        let marker = format!("bOdy of {}", id(n));
        assert!(
            kept.windows(marker.len()).any(|w| w == marker.as_bytes()),
            "quarantine holds the damaged record of {}",
            id(n)
        );
    }
}
