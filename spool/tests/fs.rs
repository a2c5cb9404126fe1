//! The real storage on real files with glommio: group commit through
//! io_uring, permissions, corruption in stopped segments, disk full on a
//! small tmpfs.
#![cfg(feature = "glommio")]

use std::cell::RefCell;
use std::fs::OpenOptions;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::rc::Rc;

use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};
use sluice_spool::fs::FsStorage;
use sluice_spool::{NewMessage, Recipient, RecordRef, Spool, SpoolConfig, SpoolError};

const RCPT: [Recipient<'static>; 1] = [Recipient {
    address: b"user@example.net",
    dsn: b"",
}];

fn msg(body: &[u8]) -> NewMessage<'_> {
    NewMessage {
        sender: b"s@example.com",
        dsn: b"",
        tenant: b"",
        campaign: b"",
        queue: b"",
        recipients: &RCPT,
        arrival_unix_ms: 5,
        expiry_unix_ms: 6,
        body,
    }
}

fn body_for(i: u64, len: usize) -> Vec<u8> {
    let mut b = format!("message {i}\r\n").into_bytes();
    b.resize(len, b'a' + (i % 26) as u8);
    b
}

fn executor() -> LocalExecutor {
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 << 10)
        .make()
        .expect("glommio executor (needs io_uring and 512 KiB of memlock)")
}

fn cfg(segment_bytes: usize) -> SpoolConfig {
    SpoolConfig {
        segment_bytes,
        free_bytes_reserve: 0,
        // These tests keep every message live: no relocation.
        relocate_above_segments: 1000,
        ..SpoolConfig::default()
    }
}

#[test]
fn group_commit_on_real_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("spool");
    let written: Rc<RefCell<Vec<(u64, u64)>>> = Rc::default();
    let w = Rc::clone(&written);
    let r = root.clone();
    executor().run(async move {
        let (spool, report) = Spool::open(FsStorage::open(&r, 3).unwrap(), cfg(1 << 20)).unwrap();
        assert_eq!(report.segments, 0);
        let task = spool.spawn_sync_task();
        let mut clients = Vec::new();
        for c in 0..32u64 {
            let s = spool.clone();
            let w = Rc::clone(&w);
            clients.push(glommio::spawn_local(async move {
                for i in 0..50u64 {
                    let tag = c * 1000 + i;
                    let (id, _) = s.append(&msg(&body_for(tag, 2000))).unwrap();
                    s.commit().await.unwrap();
                    w.borrow_mut().push((id, tag));
                }
            }));
        }
        for c in clients {
            c.await;
        }
        let st = spool.stats();
        assert_eq!(st.appends, 1600);
        // One sync released many waiters.
        assert!(st.syncs >= 1 && st.syncs < st.appends / 4, "{st:?}");
        assert!(st.sync_batch_records_max > 1);
        assert!(
            st.segments_created >= 2,
            "3.2 MB through 1 MiB segments: {st:?}"
        );
        spool.close();
        task.await;
    });
    let shard = root.join("shard-3");
    for p in [&root, &shard, &shard.join("quarantine")] {
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", p.display());
    }
    for e in std::fs::read_dir(&shard).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            assert_eq!(e.metadata().unwrap().permissions().mode() & 0o777, 0o600);
        }
    }
    // Reopen (no executor needed to recover): all 1600 are there, intact.
    let (spool, report) = Spool::open(FsStorage::open(&root, 3).unwrap(), cfg(1 << 20)).unwrap();
    assert_eq!(report.live_messages, 1600);
    assert_eq!(report.quarantined_records, 0);
    let live = spool.live_messages();
    for (id, tag) in written.borrow().iter() {
        let m = live
            .iter()
            .find(|m| m.id == *id)
            .expect("committed message recovered");
        assert_eq!(&*spool.body(&m.rec).unwrap(), &body_for(*tag, 2000)[..]);
    }
}

#[test]
fn bad_permissions_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("spool");
    std::fs::create_dir(&root).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let Err(err) = FsStorage::open(&root, 0) else {
        panic!("a world-readable spool directory was accepted");
    };
    assert!(matches!(err, SpoolError::Permissions { .. }));
    assert!(err.to_string().contains(&*root.to_string_lossy()), "{err}");
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&root, &link).unwrap();
    assert!(matches!(
        FsStorage::open(&link, 0),
        Err(SpoolError::Permissions { .. })
    ));
}

#[test]
fn a_shard_dir_is_opened_by_one_spool_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("spool");
    let first = FsStorage::open(&root, 0).unwrap();
    let Err(err) = FsStorage::open(&root, 0) else {
        panic!("a second open of a locked shard directory succeeded");
    };
    assert!(matches!(err, SpoolError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("shard-0"), "{err}");
    // Another shard of the same spool is independent.
    let other = FsStorage::open(&root, 1).unwrap();
    drop(first);
    let again = FsStorage::open(&root, 0).unwrap();
    drop((other, again));
}

/// Writes `n` committed messages and returns (id, tag, ref) for each.
fn fill(root: &Path, n: u64, segment_bytes: usize) -> Vec<(u64, u64, RecordRef)> {
    let root = root.to_path_buf();
    executor().run(async move {
        let (spool, _) =
            Spool::open(FsStorage::open(&root, 0).unwrap(), cfg(segment_bytes)).unwrap();
        let task = spool.spawn_sync_task();
        let mut out = Vec::new();
        for tag in 0..n {
            let (id, rec) = spool.append(&msg(&body_for(tag, 3000))).unwrap();
            out.push((id, tag, rec));
        }
        spool.commit().await.unwrap();
        spool.close();
        task.await;
        out
    })
}

fn patch(path: &Path, at: u64, bytes: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(bytes).unwrap();
}

#[test]
fn corruption_in_stopped_segments_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("spool");
    let seg_bytes = 64 << 10;
    let msgs = fill(&root, 200, seg_bytes);
    let shard = root.join("shard-0");
    let seg_path = |seq: u64| shard.join(format!("seg-{seq:016x}"));
    // Pick the 4th message of four different sealed segments.
    let mut segs: Vec<u64> = msgs.iter().map(|m| m.2.segment).collect();
    segs.dedup();
    assert!(segs.len() >= 6, "{segs:?}");
    let victim = |seq: u64| *msgs.iter().filter(|m| m.2.segment == seq).nth(3).unwrap();
    let mut lost = Vec::new();
    // 1. A flipped byte in a body: header intact, skipped by its length.
    let v = victim(segs[0]);
    patch(&seg_path(segs[0]), u64::from(v.2.offset) + 200, b"\xff");
    lost.push(v.0);
    // 2. A destroyed header: found again by resync.
    let v = victim(segs[1]);
    patch(&seg_path(segs[1]), u64::from(v.2.offset), b"JUNKJUNK");
    lost.push(v.0);
    // 3. A length field flipped to something huge.
    let v = victim(segs[2]);
    patch(&seg_path(segs[2]), u64::from(v.2.offset) + 10, b"\x7f");
    lost.push(v.0);
    // 4. A segment truncated in the middle of its last message.
    let last = *msgs.iter().rfind(|m| m.2.segment == segs[3]).unwrap();
    let f = OpenOptions::new()
        .write(true)
        .open(seg_path(segs[3]))
        .unwrap();
    f.set_len(u64::from(last.2.offset) + 100).unwrap();
    lost.push(last.0);

    let (spool, report) = Spool::open(FsStorage::open(&root, 0).unwrap(), cfg(seg_bytes)).unwrap();
    assert_eq!(report.quarantined_records, 3, "{report:?}");
    assert!(report.truncated_bytes > 0, "{report:?}");
    let quarantined = std::fs::read_dir(shard.join("quarantine")).unwrap().count();
    assert_eq!(quarantined, 4, "three records and one torn tail");
    let live = spool.live_messages();
    assert_eq!(live.len(), msgs.len() - lost.len());
    for (id, tag, _) in &msgs {
        let found = live.iter().find(|m| m.id == *id);
        if lost.contains(id) {
            assert!(found.is_none(), "corrupt message {id} recovered");
        } else {
            let m = found.unwrap_or_else(|| panic!("intact message {id} lost"));
            assert_eq!(&*spool.body(&m.rec).unwrap(), &body_for(*tag, 3000)[..]);
        }
    }
    drop(spool);
    // A second recovery finds the same, and quarantines nothing new.
    let (spool, again) = Spool::open(FsStorage::open(&root, 0).unwrap(), cfg(seg_bytes)).unwrap();
    assert_eq!(spool.live_count(), live.len());
    assert_eq!(again.truncated_bytes, 0);
    assert_eq!(
        std::fs::read_dir(shard.join("quarantine")).unwrap().count(),
        4
    );
}

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).ok()?;
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn disk_full_on_a_small_tmpfs() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mnt) = Tmpfs::mount(&dir.path().join("mnt"), "8m") else {
        // Not root (or no mount permission): the storage double covers the
        // same behaviour in tests/reclaim.rs.
        eprintln!("disk_full_on_a_small_tmpfs: cannot mount tmpfs here; covered by the double");
        return;
    };
    let root = mnt.0.join("spool");
    let filler = mnt.0.join("filler");
    std::fs::write(&filler, vec![1u8; 3 << 20]).unwrap();
    let r = root.clone();
    executor().run(async move {
        let (spool, _) = Spool::open(FsStorage::open(&r, 0).unwrap(), cfg(1 << 20)).unwrap();
        let task = spool.spawn_sync_task();
        let body = vec![b'z'; 4000];
        let mut ok = 0u32;
        let err = loop {
            match spool.append(&msg(&body)) {
                Ok(_) => {
                    spool.commit().await.unwrap();
                    ok += 1;
                }
                Err(e) => break e,
            }
            assert!(ok < 5000, "8 MiB never filled");
        };
        assert!(matches!(err, SpoolError::DiskFull { .. }), "{err}");
        assert!(err.is_temporary());
        assert!(!spool.has_room(body.len() as u64));
        assert!(ok > 100, "only {ok} appends before disk full");
        // Space returns: appends resume.
        std::fs::remove_file(&filler).unwrap();
        assert!(spool.has_room(body.len() as u64));
        for _ in 0..300 {
            spool.append(&msg(&body)).unwrap();
        }
        spool.commit().await.unwrap();
        spool.close();
        task.await;
    });
    let (spool, report) = Spool::open(FsStorage::open(&root, 0).unwrap(), cfg(1 << 20)).unwrap();
    assert_eq!(report.quarantined_records, 0);
    assert!(spool.live_count() > 400);
    drop(spool);
    drop(mnt);
}

/// Small records go through the mapping and large ones through pwrite:
/// either kind reads back at once (before its commit) and after a
/// reopen, interleaved in the same segments.
#[test]
fn small_and_large_records_read_back_before_and_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("spool");
    let c = cfg(1 << 20);
    assert!(
        c.pwrite_min_bytes <= 20_000,
        "the large records take the pwrite path"
    );
    let r = root.clone();
    let cc = c.clone();
    let written = executor().run(async move {
        let (spool, _) = Spool::open(FsStorage::open(&r, 0).unwrap(), cc).unwrap();
        let task = spool.spawn_sync_task();
        let mut written = Vec::new();
        for i in 0..200u64 {
            let len = if i % 3 == 0 { 20_000 } else { 1_500 };
            let body = body_for(i, len);
            let (id, rec) = spool.append(&msg(&body)).unwrap();
            assert_eq!(
                &*spool.body(&rec).unwrap(),
                &body[..],
                "record {i} before commit"
            );
            written.push((id, body));
        }
        spool.commit().await.unwrap();
        assert!(spool.segment_count() >= 2, "{:?}", spool.segments());
        spool.close();
        task.await;
        written
    });
    let (spool, report) = Spool::open(FsStorage::open(&root, 0).unwrap(), c).unwrap();
    assert_eq!(report.quarantined_records, 0);
    let live: std::collections::HashMap<u64, RecordRef> = spool
        .live_messages()
        .into_iter()
        .map(|m| (m.id, m.rec))
        .collect();
    assert_eq!(live.len(), written.len());
    for (id, body) in &written {
        assert_eq!(&*spool.body(&live[id]).unwrap(), &body[..], "message {id}");
    }
}

/// With durability `none` (benchmarks) retired segments are recycled as
/// spares too, so a long benchmark does not create a file per segment.
#[test]
fn reclamation_recycles_segments_without_durability() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("spool");
    let cfg = SpoolConfig {
        segment_bytes: 256 << 10,
        free_bytes_reserve: 0,
        durability: sluice_spool::Durability::None(
            sluice_spool::NoSync::i_accept_losing_mail_on_crash(),
        ),
        ..SpoolConfig::default()
    };
    executor().run(async move {
        let (spool, _) = Spool::open(FsStorage::open(&root, 0).unwrap(), cfg).unwrap();
        let task = spool.spawn_sync_task();
        for i in 0..2048u64 {
            let (id, _) = spool.append(&msg(&body_for(i, 2000))).unwrap();
            spool.commit().await.unwrap();
            spool
                .complete(id, 0, sluice_spool::Outcome::Delivered)
                .unwrap();
            // A commit without sync is ready at once: let the driver and
            // the blocking pool run, as network I/O would in the engine.
            if i % 8 == 7 {
                glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        for _ in 0..200 {
            if spool.stats().recycled_installs >= 1 {
                break;
            }
            glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
        }
        let st = spool.stats();
        assert!(st.segments_created >= 12, "{st:?}");
        assert!(st.segments_recycled >= 2, "{st:?}");
        assert!(st.recycled_installs >= 1, "{st:?}");
        spool.close();
        task.await;
    });
}

#[test]
fn background_reclamation_relocates_and_deletes_on_real_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("spool");
    let cfg = SpoolConfig {
        segment_bytes: 256 << 10,
        relocate_above_segments: 3,
        relocate_live_bytes_max: 64 << 10,
        free_bytes_reserve: 0,
        ..SpoolConfig::default()
    };
    let c = cfg.clone();
    let r = root.clone();
    let (pinned, first_segment) = executor().run(async move {
        let (spool, _) = Spool::open(FsStorage::open(&r, 0).unwrap(), c).unwrap();
        let task = spool.spawn_sync_task();
        let (pinned, rec) = spool
            .append(&msg(b"Subject: slow\r\n\r\nretry me\r\n"))
            .unwrap();
        spool.commit().await.unwrap();
        spool.defer(pinned, 7, 99).unwrap();
        // 4 MB of traffic that is delivered at once, from 16 clients.
        let mut clients = Vec::new();
        for c in 0..16u64 {
            let s = spool.clone();
            clients.push(glommio::spawn_local(async move {
                for i in 0..128u64 {
                    let (id, _) = s.append(&msg(&body_for(c * 1000 + i, 2000))).unwrap();
                    s.commit().await.unwrap();
                    s.complete(id, 0, sluice_spool::Outcome::Delivered).unwrap();
                }
            }));
        }
        for c in clients {
            c.await;
        }
        // The sync task reclaims in the background; give it a bounded while.
        for _ in 0..200 {
            if spool.segment_count() <= 4 && !spool.segments().contains(&rec.segment) {
                break;
            }
            glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
        }
        let st = spool.stats();
        assert!(st.segments_created >= 12, "{st:?}");
        assert!(st.relocated_messages >= 1, "{st:?}");
        // Retired segments became spares and the head rotated into them.
        assert!(st.segments_recycled >= 2, "{st:?}");
        assert!(st.recycled_installs >= 1, "{st:?}");
        assert!(spool.segment_count() <= 4, "{:?}", spool.segments());
        spool.close();
        task.await;
        (pinned, rec.segment)
    });
    let (spool, _) = Spool::open(FsStorage::open(&root, 0).unwrap(), cfg).unwrap();
    let live = spool.live_messages();
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0].id, pinned);
    assert_ne!(live[0].rec.segment, first_segment);
    assert_eq!(live[0].attempts, 7);
    assert_eq!(
        &*spool.body(&live[0].rec).unwrap(),
        b"Subject: slow\r\n\r\nretry me\r\n"
    );
}

/// Reproduces the restart on a full disk: fill a small tmpfs, stop, start
/// again. Recovery must succeed, refuse messages with the typed disk-full
/// error (`452 4.3.1`), still record deliveries, and resume when space
/// returns.
#[test]
fn restart_on_a_full_tmpfs() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mnt) = Tmpfs::mount(&dir.path().join("mnt"), "8m") else {
        eprintln!("restart_on_a_full_tmpfs: cannot mount tmpfs here; covered by the double (tests/reclaim.rs)");
        return;
    };
    let root = mnt.0.join("spool");
    let filler = mnt.0.join("filler");
    std::fs::write(&filler, vec![1u8; 3 << 20]).unwrap();
    let body = vec![b'q'; 4000];
    let r = root.clone();
    let b = body.clone();
    let ids = executor().run(async move {
        let (spool, _) = Spool::open(FsStorage::open(&r, 0).unwrap(), cfg(1 << 20)).unwrap();
        let task = spool.spawn_sync_task();
        let mut ids = Vec::new();
        let err = loop {
            match spool.append(&msg(&b)) {
                Ok((id, _)) => {
                    spool.commit().await.unwrap();
                    ids.push(id);
                }
                Err(e) => break e,
            }
            assert!(ids.len() < 5000, "8 MiB never filled");
        };
        assert!(matches!(err, SpoolError::DiskFull { .. }), "{err}");
        spool.close();
        task.await;
        ids
    });
    // Restart on the full disk.
    let r = root.clone();
    let b = body.clone();
    let f = filler.clone();
    let ids2 = ids.clone();
    executor().run(async move {
        let (spool, report) = Spool::open(FsStorage::open(&r, 0).unwrap(), cfg(1 << 20))
            .expect("recovery starts on a full disk");
        assert_eq!(report.quarantined_records, 0);
        assert_eq!(spool.live_count(), ids2.len());
        assert_ne!(report.head, sluice_spool::HeadAtOpen::None, "{report:?}");
        let task = spool.spawn_sync_task();
        assert!(!spool.has_room(b.len() as u64));
        let err = spool.append(&msg(&b)).unwrap_err();
        assert!(matches!(err, SpoolError::DiskFull { .. }), "{err}");
        assert!(err.is_temporary());
        // Deliveries are recorded on the full disk.
        for id in &ids2[..10] {
            spool
                .complete(*id, 0, sluice_spool::Outcome::Delivered)
                .unwrap();
        }
        spool.commit().await.unwrap();
        // Space returns: appends resume.
        std::fs::remove_file(&f).unwrap();
        assert!(spool.has_room(b.len() as u64));
        for _ in 0..100 {
            spool.append(&msg(&b)).unwrap();
        }
        spool.commit().await.unwrap();
        spool.close();
        task.await;
    });
    let (spool, report) = Spool::open(FsStorage::open(&root, 0).unwrap(), cfg(1 << 20)).unwrap();
    assert_eq!(report.quarantined_records, 0);
    assert_eq!(spool.live_count(), ids.len() - 10 + 100);
    drop(spool);
    drop(mnt);
}

/// A crash between creating a segment file and reserving its blocks leaves
/// an empty file: the next open removes it (it never held a record) and
/// recovers everything else, instead of refusing to start.
#[test]
fn an_empty_segment_file_from_an_interrupted_creation_is_removed() {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("spool");
    let written = fill(&root, 40, 1 << 20);
    let shard = root.join("shard-0");
    let mut names: Vec<String> = std::fs::read_dir(&shard)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("seg-"))
        .collect();
    names.sort();
    let last = names.last().expect("fill made a segment");
    let next = u64::from_str_radix(last.trim_start_matches("seg-"), 16).unwrap() + 1;
    let empty = shard.join(format!("seg-{next:016x}"));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&empty)
        .unwrap();
    let (spool, report) = Spool::open(FsStorage::open(&root, 0).unwrap(), cfg(1 << 20))
        .expect("an empty segment file does not stop the open");
    assert_eq!(report.empty_segments_removed, 1, "{report:?}");
    assert_eq!(report.quarantined_records, 0, "{report:?}");
    // The open may have reused the number for its new head segment.
    assert!(
        std::fs::metadata(&empty).map_or(true, |m| m.len() > 0),
        "the empty file is gone"
    );
    let live: std::collections::HashSet<u64> =
        spool.live_messages().into_iter().map(|m| m.id).collect();
    for (id, tag, _) in &written {
        assert!(live.contains(id), "message {id} (tag {tag}) survived");
    }
}
