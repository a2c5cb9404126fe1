//! Spool measurements against a temporary directory. They check that the
//! measurements run, stay within their bounds and clean up; never speed.

use std::time::Duration;

use sluice_tune::storage::{
    inspect_dir, measure_fdatasync, measure_write, probe_fallocate, statfs, StorageOptions,
};

fn small() -> StorageOptions {
    StorageOptions {
        sync_count: 16,
        sync_write_bytes: 4096,
        sync_time_max: Duration::from_secs(5),
        write_bytes: 4 << 20,
        write_time_max: Duration::from_secs(5),
    }
}

fn entries(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).expect("read dir").count()
}

#[test]
fn fdatasync_latency_is_measured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sync = measure_fdatasync(dir.path(), &small()).expect("measure");
    assert!((1..=16).contains(&sync.count));
    assert!(sync.median_us <= sync.p99_us && sync.p99_us <= sync.max_us);
    assert_eq!(entries(dir.path()), 0, "scratch file removed");
}

#[test]
fn measurements_stop_at_their_time_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = StorageOptions {
        sync_count: 1_000_000,
        sync_time_max: Duration::ZERO,
        write_bytes: 1 << 30,
        write_time_max: Duration::ZERO,
        ..small()
    };
    // A zero budget still completes the round in progress, then stops.
    assert_eq!(
        measure_fdatasync(dir.path(), &options)
            .expect("measure")
            .count,
        1
    );
    let write = measure_write(dir.path(), &options).expect("write");
    assert_eq!(write.bytes, 0);
    assert_eq!(entries(dir.path()), 0);
}

#[test]
fn sequential_write_and_fallocate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = measure_write(dir.path(), &small()).expect("write");
    // Whole 1 MiB chunks up to the 4 MiB asked for (fewer only if the time
    // bound hit first on a loaded machine).
    assert!(write.bytes >= 1 << 20 && write.bytes <= 4 << 20 && write.bytes % (1 << 20) == 0);
    assert!(write.elapsed_s > 0.0 && write.mib_per_s > 0.0);
    probe_fallocate(dir.path()).expect("fallocate on the temp filesystem");
    let stats = statfs(dir.path()).expect("statfs");
    assert!(stats.total_bytes >= stats.free_bytes && stats.total_bytes > 0);
    assert_eq!(entries(dir.path()), 0);
}

#[test]
fn inspect_dir_fills_every_field_or_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = inspect_dir(dir.path(), &small());
    assert!(report.filesystem.is_some() && report.free_bytes.is_some());
    assert_eq!(report.fallocate_ok, Some(true));
    assert!(report.sync.is_some() || report.sync_error.is_some());
    assert!(report.write.is_some() || report.write_error.is_some());
    assert!(
        report.sync.is_some(),
        "sync failed: {:?}",
        report.sync_error
    );
    assert_eq!(entries(dir.path()), 0);

    // A directory we cannot write to: errors are recorded, nothing panics.
    let missing = dir.path().join("gone");
    let report = inspect_dir(&missing, &small());
    assert!(report.filesystem.is_none());
    assert_eq!(report.fallocate_ok, Some(false));
    assert!(report.sync.is_none() && report.sync_error.is_some());
    assert!(report.write.is_none() && report.write_error.is_some());
}

#[test]
fn parallel_writers_sync_together() {
    use sluice_tune::storage::measure_parallel_fdatasync;
    let dir = tempfile::tempdir().expect("tempdir");
    let result = measure_parallel_fdatasync(dir.path(), 4, &small()).expect("measure");
    assert_eq!(result.writers, 4);
    assert!((4..=64).contains(&result.latency.count));
    assert!(result.syncs_per_s > 0.0);
    assert_eq!(entries(dir.path()), 0);
    assert!(measure_parallel_fdatasync(dir.path(), 0, &small()).is_err());
    // Writers that cannot create their files fail cleanly instead of
    // leaving the others waiting at the start line.
    let missing = dir.path().join("missing");
    assert!(measure_parallel_fdatasync(&missing, 3, &small()).is_err());
}
