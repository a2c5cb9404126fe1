//! Reclamation, relocation, poisoning and disk-full on the storage double
//! (no glommio needed: its futures complete at once).

use futures_lite::future::block_on;
use sluice_spool::mem::MemStorage;
use sluice_spool::{NewMessage, Outcome, Recipient, Spool, SpoolConfig, SpoolError};

const RCPTS: [Recipient<'static>; 2] = [
    Recipient {
        address: b"a@example.org",
        dsn: b"NOTIFY=DELAY",
    },
    Recipient {
        address: b"b@example.org",
        dsn: b"",
    },
];

fn msg(body: &[u8]) -> NewMessage<'_> {
    NewMessage {
        sender: b"bounces@example.com",
        dsn: b"RET=HDRS",
        tenant: b"tenant",
        campaign: b"spring",
        queue: b"",
        recipients: &RCPTS,
        arrival_unix_ms: 1_700_000_000_000,
        expiry_unix_ms: 1_700_400_000_000,
        body,
    }
}

fn cfg() -> SpoolConfig {
    SpoolConfig {
        segment_bytes: 64 << 10,
        relocate_above_segments: 3,
        relocate_live_bytes_max: 16 << 10,
        free_bytes_reserve: 0,
        ..SpoolConfig::default()
    }
}

#[test]
fn a_deferred_message_does_not_pin_old_segments() {
    let storage = MemStorage::new();
    let (spool, _) = Spool::open(storage.clone(), cfg()).unwrap();
    let pinned_body = b"Subject: deferred\r\n\r\nstill trying\r\n".repeat(10);
    let (pinned, first_ref) = spool.append(&msg(&pinned_body)).unwrap();
    spool.complete(pinned, 0, Outcome::Delivered).unwrap();
    spool.defer(pinned, 3, 1_700_000_900_000).unwrap();
    let filler = vec![b'x'; 4000];
    let mut max_segments = 0;
    for i in 0..400 {
        let (id, _) = spool.append(&msg(&filler)).unwrap();
        spool
            .complete_many(id, &[(0, Outcome::Delivered), (1, Outcome::Failed)])
            .unwrap();
        if i % 16 == 15 {
            block_on(spool.sync_now()).unwrap();
            block_on(spool.reclaim()).unwrap();
        }
        max_segments = max_segments.max(spool.segment_count());
    }
    block_on(spool.sync_now()).unwrap();
    block_on(spool.reclaim()).unwrap();
    let stats = spool.stats();
    // 400 x 4 KB went through 64 KiB segments: about 25 were created and
    // almost all deleted, although the first one held a live message.
    assert!(stats.segments_created >= 20, "{stats:?}");
    assert!(
        spool.segment_count() <= 4,
        "segments left: {:?}",
        spool.segments()
    );
    assert!(max_segments <= 6, "segments piled up to {max_segments}");
    assert!(!spool.segments().contains(&first_ref.segment));
    assert!(stats.relocated_messages >= 1, "{stats:?}");

    let live = spool.live_messages();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].id, pinned);
    assert_ne!(live[0].rec.segment, first_ref.segment);
    assert_eq!(&*spool.body(&live[0].rec).unwrap(), &pinned_body[..]);

    // After a power cut the relocated copy is the one recovered, with its
    // remaining recipient and retry state; no completed message returns.
    for seed in 1..40 {
        let (again, report) = Spool::open(storage.crash(seed), cfg()).unwrap();
        assert_eq!(report.quarantined_records, 0);
        let live = again.live_messages();
        assert_eq!(live.len(), 1, "seed {seed}: {live:?}");
        assert_eq!(live[0].id, pinned);
        assert_eq!(live[0].pending, vec![1]);
        assert_eq!(live[0].attempts, 3);
        assert_eq!(live[0].next_attempt_unix_ms, 1_700_000_900_000);
        let parts = again.message(&live[0].rec).unwrap();
        let parts = parts.parts().unwrap();
        assert_eq!(parts.recipients[0].dsn, b"NOTIFY=DELAY");
        assert_eq!(parts.body, &pinned_body[..]);
    }
}

#[test]
fn a_failed_sync_poisons_the_spool() {
    let storage = MemStorage::new();
    let (spool, _) = Spool::open(storage.clone(), cfg()).unwrap();
    let (a, _) = spool.append(&msg(b"one")).unwrap();
    block_on(spool.sync_now()).unwrap();
    block_on(spool.commit()).unwrap();
    spool.append(&msg(b"two")).unwrap();
    let barrier = spool.commit();
    storage.set_fail_syncs(true);
    let err = block_on(spool.sync_now()).unwrap_err();
    assert!(matches!(err, SpoolError::Poisoned { .. }), "{err}");
    assert!(matches!(
        block_on(barrier),
        Err(SpoolError::Poisoned { .. })
    ));
    storage.set_fail_syncs(false);
    // Never succeeds afterwards, and says why.
    assert!(matches!(
        block_on(spool.commit()),
        Err(SpoolError::Poisoned { .. })
    ));
    assert!(matches!(
        spool.append(&msg(b"three")),
        Err(SpoolError::Poisoned { .. })
    ));
    assert!(matches!(
        spool.complete(a, 0, Outcome::Delivered),
        Err(SpoolError::Poisoned { .. })
    ));
    assert!(spool.poisoned().unwrap().contains("fdatasync"));
    assert!(!spool.has_room(1));
    assert_eq!(spool.stats().sync_failures, 1);
}

#[test]
fn disk_full_is_typed_and_appends_resume() {
    let storage = MemStorage::new();
    storage.set_capacity(Some(3 * (64 << 10)));
    let (spool, _) = Spool::open(storage.clone(), cfg()).unwrap();
    let body = vec![b'y'; 8000];
    let mut ids = Vec::new();
    let err = loop {
        match spool.append(&msg(&body)) {
            Ok((id, _)) => ids.push(id),
            Err(e) => break e,
        }
        assert!(ids.len() < 1000, "capacity never reached");
    };
    assert!(matches!(err, SpoolError::DiskFull { .. }), "{err}");
    assert!(err.is_temporary());
    assert!(!spool.has_room(body.len() as u64));
    // Nothing got lost: every appended message is still readable.
    block_on(spool.sync_now()).unwrap();
    assert_eq!(spool.live_count(), ids.len());
    // Space returns when delivered messages' segments are reclaimed.
    for id in &ids {
        spool
            .complete_many(*id, &[(0, Outcome::Delivered), (1, Outcome::Delivered)])
            .unwrap();
    }
    block_on(spool.sync_now()).unwrap();
    let r = block_on(spool.reclaim()).unwrap();
    // Recycled into the spare pool (their blocks stay reserved for the
    // spool) or deleted: either way they are free for new messages.
    assert_eq!(r.segments_removed + r.segments_recycled, 2, "{r:?}");
    assert!(spool.has_room(body.len() as u64));
    // Two segments' worth fit again.
    for _ in 0..10 {
        spool.append(&msg(&body)).unwrap();
    }
    block_on(spool.sync_now()).unwrap();
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let (spool, _) = Spool::open(MemStorage::new(), cfg()).unwrap();
    let big = vec![0u8; 70 << 10];
    assert!(matches!(
        spool.append(&msg(&big)),
        Err(SpoolError::TooLarge { .. })
    ));
    let (id, rec) = spool.append(&msg(b"x")).unwrap();
    assert!(matches!(
        spool.complete(id, 2, Outcome::Delivered),
        Err(SpoolError::BadRecipient { index: 2, .. })
    ));
    assert!(matches!(
        spool.complete(id + 1, 0, Outcome::Delivered),
        Err(SpoolError::UnknownMessage { .. })
    ));
    let mut bad = rec;
    bad.offset += 8;
    assert!(matches!(spool.body(&bad), Err(SpoolError::BadRef { .. })));
    bad = rec;
    bad.segment += 100;
    assert!(matches!(spool.body(&bad), Err(SpoolError::BadRef { .. })));
    let none: [Recipient<'_>; 0] = [];
    let mut m = msg(b"x");
    m.recipients = &none;
    assert!(matches!(spool.append(&m), Err(SpoolError::Format(_))));
}

/// Fills the double to capacity (appends fail with `DiskFull`) and returns
/// the ids appended.
fn fill_to_capacity(spool: &Spool<MemStorage>, body: &[u8]) -> Vec<u64> {
    let mut ids = Vec::new();
    let err = loop {
        match spool.append(&msg(body)) {
            Ok((id, _)) => ids.push(id),
            Err(e) => break e,
        }
        assert!(ids.len() < 1000, "capacity never reached");
    };
    assert!(matches!(err, SpoolError::DiskFull { .. }), "{err}");
    block_on(spool.sync_now()).unwrap();
    ids
}

#[test]
fn restart_on_a_full_disk_continues_the_last_segment() {
    let storage = MemStorage::new();
    storage.set_capacity(Some(3 * (64 << 10)));
    let (spool, _) = Spool::open(storage.clone(), cfg()).unwrap();
    let body = vec![b'f'; 8000];
    let ids = fill_to_capacity(&spool, &body);
    drop(spool);

    // Stop and restart on the full disk: recovery succeeds and keeps
    // everything; the last segment takes the records, messages get the
    // typed disk-full error (the engine's 452 4.3.1).
    let (spool, report) = Spool::open(storage.clone(), cfg()).unwrap();
    assert!(
        matches!(report.head, sluice_spool::HeadAtOpen::Continued(_)),
        "{report:?}"
    );
    assert_eq!(spool.live_count(), ids.len());
    assert!(!spool.has_room(body.len() as u64));
    let err = spool.append(&msg(&body)).unwrap_err();
    assert!(matches!(err, SpoolError::DiskFull { .. }), "{err}");
    // Deliveries can still be recorded, which is what frees space.
    for id in &ids {
        spool
            .complete_many(*id, &[(0, Outcome::Delivered), (1, Outcome::Delivered)])
            .unwrap();
    }
    block_on(spool.sync_now()).unwrap();
    let r = block_on(spool.reclaim()).unwrap();
    assert!(r.segments_removed + r.segments_recycled >= 1, "{r:?}");
    assert!(spool.has_room(body.len() as u64));
    let (late, _) = spool.append(&msg(&body)).unwrap();
    block_on(spool.sync_now()).unwrap();
    drop(spool);

    // And once more, after a power cut: the completions and the new
    // message survive, ids never repeat.
    for seed in 1..20 {
        let (again, report) = Spool::open(storage.crash(seed), cfg()).unwrap();
        assert_eq!(report.quarantined_records, 0);
        let live = again.live_messages();
        assert_eq!(live.len(), 1, "seed {seed}: {live:?}");
        assert_eq!(live[0].id, late);
        let (next, _) = again.append(&msg(b"x")).unwrap();
        assert!(next > late);
    }
}

#[test]
fn restart_on_a_full_disk_without_room_anywhere_opens_headless() {
    let storage = MemStorage::new();
    storage.set_capacity(Some(2 * (64 << 10)));
    let (spool, _) = Spool::open(storage.clone(), cfg()).unwrap();
    let body = vec![b'h'; 8000];
    let ids = fill_to_capacity(&spool, &body);
    // Use up the completion reserve of the head too: deferrals until even
    // they cannot be written.
    let mut n = 0;
    while spool.defer(ids[0], n, 1).is_ok() {
        n += 1;
        assert!(n < 10_000);
    }
    block_on(spool.sync_now()).unwrap();
    drop(spool);

    let (spool, report) = Spool::open(storage.clone(), cfg()).unwrap();
    assert_eq!(report.head, sluice_spool::HeadAtOpen::None, "{report:?}");
    assert_eq!(spool.live_count(), ids.len());
    assert_eq!(spool.live_messages()[0].attempts, n - 1);
    assert!(!spool.has_room(1));
    assert!(matches!(
        spool.append(&msg(b"x")),
        Err(SpoolError::DiskFull { .. })
    ));
    // Space returns (the operator freed some): appends resume.
    storage.set_capacity(Some(4 * (64 << 10)));
    assert!(spool.has_room(body.len() as u64));
    let (id, _) = spool.append(&msg(&body)).unwrap();
    block_on(spool.sync_now()).unwrap();
    drop(spool);
    let (spool, _) = Spool::open(storage, cfg()).unwrap();
    assert!(spool.live_messages().iter().any(|m| m.id == id));
}

#[test]
fn a_recycled_segment_recovers_only_its_new_records() {
    use sluice_spool::format::{check_at, Check, SegKey, RECORD_ALIGN, RECORD_MAGIC};

    let storage = MemStorage::new();
    let (spool, _) = Spool::open(storage.clone(), cfg()).unwrap();
    // A first life: big messages, all delivered.
    let old_body = vec![b'o'; 3000];
    let mut old_ids = Vec::new();
    for _ in 0..60 {
        let (id, _) = spool.append(&msg(&old_body)).unwrap();
        old_ids.push(id);
    }
    block_on(spool.sync_now()).unwrap();
    for id in &old_ids {
        spool
            .complete_many(*id, &[(0, Outcome::Delivered), (1, Outcome::Failed)])
            .unwrap();
    }
    block_on(spool.sync_now()).unwrap();
    let r = block_on(spool.reclaim()).unwrap();
    assert_eq!(r.segments_recycled, 2, "{r:?}");
    // A second life: small messages, until the head is a recycled file.
    let mut new_ids = Vec::new();
    while spool.stats().recycled_installs == 0 {
        let (id, _) = spool.append(&msg(b"Subject: new\r\n\r\nnew\r\n")).unwrap();
        new_ids.push(id);
        assert!(new_ids.len() < 10_000);
    }
    for _ in 0..20 {
        let (id, _) = spool.append(&msg(b"Subject: new\r\n\r\nnew\r\n")).unwrap();
        new_ids.push(id);
    }
    block_on(spool.sync_now()).unwrap();
    let head = *spool.segments().last().unwrap();
    // The head file really holds records of its earlier life past the new
    // ones: stale (another tag), never valid under the head's key.
    let image = storage.durable_image(head).unwrap();
    let key = SegKey::for_seq(head);
    let stale = (0..image.len() - 16)
        .step_by(RECORD_ALIGN)
        .filter(|&p| image[p..p + 4] == RECORD_MAGIC.to_le_bytes())
        .filter(|&p| check_at(&image, p, &key) == Check::Stale)
        .count();
    assert!(stale > 5, "only {stale} stale records in the recycled head");
    // An unsynced tail, torn at random by the crash.
    for _ in 0..5 {
        spool.append(&msg(&old_body)).unwrap();
    }
    for seed in 1..60 {
        let (again, report) = Spool::open(storage.crash(seed), cfg()).unwrap();
        assert_eq!(report.quarantined_records, 0, "seed {seed}: {report:?}");
        let live: Vec<u64> = again.live_messages().iter().map(|m| m.id).collect();
        for id in &new_ids {
            assert!(live.contains(id), "seed {seed}: committed {id} lost");
        }
        for id in &old_ids {
            assert!(!live.contains(id), "seed {seed}: stale {id} came back");
        }
        for m in again.live_messages() {
            let body = again.body(&m.rec).unwrap();
            assert!(&*body == b"Subject: new\r\n\r\nnew\r\n" || *body == old_body[..]);
        }
        // Recovered twice: the same, and nothing new to truncate.
        drop(again);
        let crashed = storage.crash(seed);
        let (a, _) = Spool::open(crashed.clone(), cfg()).unwrap();
        let n = a.live_count();
        drop(a);
        let (b, report) = Spool::open(crashed, cfg()).unwrap();
        assert_eq!(b.live_count(), n);
        assert_eq!(report.truncated_bytes, 0, "seed {seed}: {report:?}");
    }
}

/// A spool written by format version 1 (unseeded CRC, no segment tag) is
/// still read; its segment is never appended to, and once its messages are
/// done the file is recycled into a version 2 life.
#[test]
fn a_version_1_segment_is_still_read() {
    use sluice_spool::format::{
        self, encode_segment_header, payload_range, record_len, seal_record, RecordKind, SegKey,
        SegmentHeader, SEGMENT_HEADER_PAYLOAD_BYTES,
    };
    use sluice_spool::storage::Storage;

    let storage = MemStorage::new();
    let seg_bytes = 64 << 10;
    let mut image = vec![0u8; seg_bytes];
    let hp = SEGMENT_HEADER_PAYLOAD_BYTES;
    let h = SegmentHeader {
        shard: 0,
        generation: 0,
        seq: 5,
        id_floor: 100,
        segment_bytes: seg_bytes as u64,
    };
    encode_segment_header(&mut image[payload_range(0, hp)], &h);
    let mut pos = record_len(hp);
    seal_record(
        &mut image[..pos],
        RecordKind::SegmentHeader,
        hp,
        &SegKey::V1,
    );
    let body = b"Subject: v1\r\n\r\nwritten by format 1\r\n";
    for id in [100u64, 101] {
        let m = msg(body);
        let env = format::envelope_len(&m).unwrap();
        let plen = format::message_payload_len(&m).unwrap();
        let total = record_len(plen);
        let rec = &mut image[pos..pos + total];
        format::encode_message(&mut rec[payload_range(0, plen)], id, &m, env);
        seal_record(rec, RecordKind::Message, plen, &SegKey::V1);
        pos += total;
    }
    // Message 101 is complete for both recipients.
    let plen = 12 + 2 * format::COMPLETION_ENTRY_BYTES;
    let rec = &mut image[pos..pos + record_len(plen)];
    format::encode_completion(
        &mut rec[payload_range(0, plen)],
        101,
        &[(0, Outcome::Delivered), (1, Outcome::Delivered)],
    );
    seal_record(rec, RecordKind::Completion, plen, &SegKey::V1);
    drop(storage.create_segment(5, seg_bytes).unwrap());
    storage.corrupt(5, 0, &image);
    storage.sync_dir_blocking().unwrap();

    let (spool, report) = Spool::open(storage.clone(), cfg()).unwrap();
    assert_eq!(report.quarantined_records, 0, "{report:?}");
    assert_eq!(report.head, sluice_spool::HeadAtOpen::New(6));
    let live = spool.live_messages();
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0].id, 100);
    assert_eq!(&*spool.body(&live[0].rec).unwrap(), &body[..]);
    // New ids are above the old ones; new records are version 2.
    let (id, _) = spool.append(&msg(b"new")).unwrap();
    assert!(id > 101);
    block_on(spool.sync_now()).unwrap();
    assert_eq!(storage.durable_image(6).unwrap()[5], format::FORMAT_VERSION);
    // Done with the old message: the version 1 file is recycled.
    spool
        .complete_many(100, &[(0, Outcome::Delivered), (1, Outcome::Delivered)])
        .unwrap();
    block_on(spool.sync_now()).unwrap();
    let r = block_on(spool.reclaim()).unwrap();
    assert_eq!(r.segments_recycled, 1, "{r:?}");
    drop(spool);
    for seed in 1..20 {
        let (again, report) = Spool::open(storage.crash(seed), cfg()).unwrap();
        assert_eq!(report.quarantined_records, 0);
        let live: Vec<u64> = again.live_messages().iter().map(|m| m.id).collect();
        assert_eq!(live, vec![id], "seed {seed}");
    }
}
