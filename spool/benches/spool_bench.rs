//! Spool benchmark: append+commit throughput and commit latency for 2 KB and
//! 20 KB records on 1 and 2 shards, beside the device's own O_DIRECT
//! sequential bandwidth and fdatasync latency measured in the same run, and
//! recovery speed (hot and cold page cache).
//!
//! ```text
//! cargo bench -p sluice-spool --bench spool_bench -- [--dir PATH] [--seconds N] [--clients N] [--only MODE]
//! ```
//! `--dir` must be on the file system to measure (default: a temporary
//! directory under $TMPDIR). Each shard is a thread with its own glommio
//! executor and spool directory; `--clients` tasks per shard each loop
//! append -> await commit -> complete (as the listener and delivery would).

use std::cell::RefCell;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use sluice_spool::fs::FsStorage;
use sluice_spool::{Durability, NewMessage, NoSync, Outcome, Recipient, Spool, SpoolConfig};

struct Args {
    dir: Option<PathBuf>,
    seconds: u64,
    clients: usize,
    only: Option<String>,
    size: Option<usize>,
    write_behind_bytes: usize,
    spares: usize,
    pwrite_min: usize,
}

fn args() -> Args {
    let mut a = Args {
        dir: None,
        seconds: 3,
        clients: 2048,
        only: None,
        size: None,
        write_behind_bytes: SpoolConfig::default().write_behind_bytes,
        spares: SpoolConfig::default().spare_segments,
        pwrite_min: SpoolConfig::default().pwrite_min_bytes,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        match k.as_str() {
            "--dir" => a.dir = it.next().map(PathBuf::from),
            "--seconds" => a.seconds = it.next().and_then(|v| v.parse().ok()).unwrap_or(a.seconds),
            "--clients" => a.clients = it.next().and_then(|v| v.parse().ok()).unwrap_or(a.clients),
            "--only" => a.only = it.next(),
            "--size" => a.size = it.next().and_then(|v| v.parse().ok()),
            "--write-behind" => {
                a.write_behind_bytes = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(a.write_behind_bytes)
            }
            "--spares" => a.spares = it.next().and_then(|v| v.parse().ok()).unwrap_or(a.spares),
            "--pwrite-min" => {
                a.pwrite_min = match it.next().as_deref() {
                    Some("never") => usize::MAX,
                    v => v.and_then(|v| v.parse().ok()).unwrap_or(a.pwrite_min),
                }
            }
            "--help" | "-h" => {
                println!(
                    "spool_bench [--dir PATH] [--seconds N (3)] [--clients N per shard (2048)] \
                     [--only fdatasync|none] [--size 2000|20000] [--write-behind BYTES (0: off)] [--spares N (2)] \
                     [--pwrite-min BYTES|never (8192)]; SPOOL_BENCH_DEBUG=1 prints each shard's SpoolStats"
                );
                std::process::exit(0);
            }
            _ => {} // `cargo bench` passes --bench
        }
    }
    a
}

/// An 4096-aligned buffer for O_DIRECT.
struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(len, 4096).expect("valid layout");
        // SAFETY: non-zero size; freed in Drop with the same layout.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "allocation failed");
        Aligned { ptr, layout }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// Sequential O_DIRECT write bandwidth (bytes/s) with 1 MiB writes.
fn device_bandwidth(dir: &Path, seconds: u64) -> io::Result<f64> {
    let path = dir.join("odirect.bench");
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)?;
    let chunk = 1 << 20;
    let total_max: u64 = 4 << 30;
    // SAFETY: plain syscall on our descriptor.
    if unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, total_max as libc::off_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let buf = Aligned::new(chunk);
    // SAFETY: buf holds `chunk` initialised bytes.
    unsafe { std::ptr::write_bytes(buf.ptr, 0xab, chunk) };
    let started = Instant::now();
    let mut off: u64 = 0;
    while started.elapsed() < Duration::from_secs(seconds) && off + chunk as u64 <= total_max {
        // SAFETY: aligned buffer of `chunk` bytes, aligned offset.
        let n = unsafe {
            libc::pwrite(
                f.as_raw_fd(),
                buf.ptr as *const _,
                chunk,
                off as libc::off_t,
            )
        };
        if n != chunk as isize {
            return Err(io::Error::last_os_error());
        }
        off += chunk as u64;
    }
    f.sync_data()?;
    let bw = off as f64 / started.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(bw)
}

/// fdatasync latency after a 4 KiB buffered write (what one group commit
/// costs the device): (p50, p99).
fn device_fdatasync(dir: &Path, rounds: u32) -> io::Result<(Duration, Duration)> {
    let path = dir.join("fdatasync.bench");
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    // SAFETY: plain syscall on our descriptor.
    if unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 64 << 20) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let buf = vec![0x5au8; 4096];
    let mut h = Histogram::<u64>::new(3).expect("histogram");
    for i in 0..rounds {
        let off = u64::from(i) * 4096 % (64 << 20);
        std::os::unix::fs::FileExt::write_all_at(&f, &buf, off)?;
        let t = Instant::now();
        f.sync_data()?;
        h.record(t.elapsed().as_nanos() as u64).expect("in range");
    }
    std::fs::remove_file(&path)?;
    Ok((
        Duration::from_nanos(h.value_at_quantile(0.5)),
        Duration::from_nanos(h.value_at_quantile(0.99)),
    ))
}

struct ShardResult {
    records: u64,
    bytes: u64,
    syncs: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
    mean_batch: f64,
    mean_sync: Duration,
    max_sync: Duration,
    /// Rotations: into recycled files, into files created inline.
    rotations: (u64, u64, u64),
}

fn run_shard(
    dir: PathBuf,
    shard: u32,
    record_bytes: usize,
    a: (u64, usize, usize, usize, usize),
    durability: Durability,
) -> ShardResult {
    let (secs, clients, write_behind_bytes, spare_segments, pwrite_min_bytes) = a;
    let placement = if shard < 2 {
        Placement::Fixed(shard as usize)
    } else {
        Placement::Unbound
    };
    LocalExecutorBuilder::new(placement)
        .io_memory(512 << 10)
        .make()
        .expect("glommio executor")
        .run(async move {
            let cfg = SpoolConfig {
                shard,
                durability,
                write_behind_bytes,
                spare_segments,
                pwrite_min_bytes,
                ..SpoolConfig::default()
            };
            let (spool, _) =
                Spool::open(FsStorage::open(&dir, shard).expect("spool dir"), cfg).expect("open");
            let task = spool.spawn_sync_task();
            let hist = Rc::new(RefCell::new(Histogram::<u64>::new(3).expect("histogram")));
            let body = Rc::new(vec![b'm'; record_bytes.saturating_sub(120)]);
            let warmup = Duration::from_millis(500);
            let started = Instant::now();
            let stop = started + warmup + Duration::from_secs(secs);
            // (records, bytes) counted after the warm-up.
            let counted: Rc<RefCell<(u64, u64)>> = Rc::default();
            let mut tasks = Vec::new();
            for _ in 0..clients {
                let (spool, hist, body, counted) = (
                    spool.clone(),
                    Rc::clone(&hist),
                    Rc::clone(&body),
                    Rc::clone(&counted),
                );
                tasks.push(glommio::spawn_local(async move {
                    let rcpt = [Recipient {
                        address: b"rcpt@example.net",
                        dsn: b"",
                    }];
                    while Instant::now() < stop {
                        let m = NewMessage {
                            sender: b"sender@example.com",
                            dsn: b"",
                            tenant: b"bench",
                            campaign: b"",
                            queue: b"",
                            recipients: &rcpt,
                            arrival_unix_ms: 0,
                            expiry_unix_ms: 0,
                            body: &body,
                        };
                        let t = Instant::now();
                        let (id, rec) = spool.append(&m).expect("append");
                        spool.commit().await.expect("commit");
                        let now = Instant::now();
                        if now >= started + warmup {
                            hist.borrow_mut()
                                .record(now.duration_since(t).as_nanos() as u64)
                                .expect("in range");
                            let mut c = counted.borrow_mut();
                            c.0 += 1;
                            c.1 += u64::from(rec.len);
                        }
                        spool.complete(id, 0, Outcome::Delivered).expect("complete");
                        // Without syncs a commit is ready at once: let the
                        // other clients (and the timer) run.
                        glommio::yield_if_needed().await;
                    }
                }));
            }
            glommio::timer::sleep(warmup).await;
            let st0 = spool.stats();
            for t in tasks {
                t.await;
            }
            let elapsed = Instant::now().duration_since(started + warmup);
            let st = spool.stats();
            if std::env::var("SPOOL_BENCH_DEBUG").is_ok() {
                eprintln!("{st:?} segments {:?}", spool.segments());
            }
            spool.close();
            task.await;
            let c = counted.borrow();
            let latency = hist.borrow().clone();
            ShardResult {
                records: c.0,
                bytes: c.1,
                syncs: st.syncs - st0.syncs,
                elapsed,
                latency,
                mean_batch: (st.synced_records - st0.synced_records) as f64
                    / (st.syncs - st0.syncs).max(1) as f64,
                max_sync: st.sync_time_max,
                rotations: (
                    st.segments_created,
                    st.recycled_installs,
                    st.inline_segment_creations,
                ),
                mean_sync: (st.sync_time_total - st0.sync_time_total)
                    / u32::try_from((st.syncs - st0.syncs).max(1)).unwrap_or(u32::MAX),
            }
        })
}

fn fill_for_recovery(dir: &Path, segments: u64) -> u64 {
    let dir = dir.to_path_buf();
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 << 10)
        .make()
        .expect("glommio executor")
        .run(async move {
            let cfg = SpoolConfig {
                durability: Durability::None(NoSync::i_accept_losing_mail_on_crash()),
                relocate_above_segments: 1 << 20,
                ..SpoolConfig::default()
            };
            let (spool, _) =
                Spool::open(FsStorage::open(&dir, 0).expect("dir"), cfg.clone()).expect("open");
            let body = vec![b'r'; 20_000];
            let rcpt = [Recipient {
                address: b"rcpt@example.net",
                dsn: b"NOTIFY=NEVER",
            }];
            let mut n = 0;
            while (spool.segment_count() as u64) <= segments {
                let m = NewMessage {
                    sender: b"sender@example.com",
                    dsn: b"",
                    tenant: b"bench",
                    campaign: b"",
                    queue: b"",
                    recipients: &rcpt,
                    arrival_unix_ms: 0,
                    expiry_unix_ms: 0,
                    body: &body,
                };
                spool.append(&m).expect("append");
                n += 1;
            }
            n
        })
}

fn evict(dir: &Path) {
    for e in std::fs::read_dir(dir).expect("shard dir").flatten() {
        if e.file_name().to_string_lossy().starts_with("seg-") {
            let f = std::fs::File::open(e.path()).expect("segment");
            let _ = f.sync_data();
            // SAFETY: advisory syscall on our descriptor.
            unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        }
    }
}

fn main() {
    let a = args();
    let tmp;
    let root = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d).expect("--dir");
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir().expect("tempdir");
            tmp.path().to_path_buf()
        }
    };
    let base = root.join("spool-bench");
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).expect("bench dir");
    std::fs::set_permissions(&base, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("chmod");

    println!(
        "# sluice-spool bench on {} ({} s per run, {} clients per shard, write-behind {} bytes, \
         {} spares, pwrite from {})",
        root.display(),
        a.seconds,
        a.clients,
        a.write_behind_bytes,
        a.spares,
        if a.pwrite_min == usize::MAX {
            "never".to_string()
        } else {
            format!("{} bytes", a.pwrite_min)
        }
    );
    let bw = device_bandwidth(&root, a.seconds).expect("O_DIRECT bandwidth");
    let (fs50, fs99) = device_fdatasync(&root, 400).expect("fdatasync latency");
    println!(
        "device: O_DIRECT sequential write {:.0} MB/s; 4 KiB write+fdatasync p50 {:?} p99 {:?}",
        bw / 1e6,
        fs50,
        fs99
    );
    let window = SpoolConfig::default().commit_window;
    println!(
        "latency budget (2 x fdatasync p99 + window): {:?}",
        fs99 * 2 + window
    );
    println!();
    println!("| mode | record | shards | records/s (total) | per shard | MB/s | % of device | syncs/s | records per sync | mean sync | max sync | commit p50 | commit p99 | rotations (recycled, inline) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let runs: Vec<(Durability, &str, usize, u32)> = vec![
        (Durability::Fdatasync, "fdatasync", 2_000, 1),
        (Durability::Fdatasync, "fdatasync", 2_000, 2),
        (Durability::Fdatasync, "fdatasync", 20_000, 1),
        (Durability::Fdatasync, "fdatasync", 20_000, 2),
        (
            Durability::None(NoSync::i_accept_losing_mail_on_crash()),
            "none",
            2_000,
            1,
        ),
    ];
    for (durability, name, size, shards) in runs {
        if a.only.as_deref().is_some_and(|o| o != name) || a.size.is_some_and(|z| z != size) {
            continue;
        }
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).expect("bench dir");
        std::fs::set_permissions(&base, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .expect("chmod");
        let handles: Vec<_> = (0..shards)
            .map(|s| {
                let d = base.clone();
                let knobs = (
                    a.seconds,
                    a.clients,
                    a.write_behind_bytes,
                    a.spares,
                    a.pwrite_min,
                );
                std::thread::spawn(move || run_shard(d, s, size, knobs, durability))
            })
            .collect();
        let results: Vec<ShardResult> = handles
            .into_iter()
            .map(|h| h.join().expect("shard thread"))
            .collect();
        let mut lat = Histogram::<u64>::new(3).expect("histogram");
        let (mut recs, mut bytes, mut syncs, mut batch) = (0f64, 0f64, 0f64, 0f64);
        let mut sync_time = Duration::ZERO;
        let mut sync_max = Duration::ZERO;
        let mut rot = (0, 0, 0);
        for r in &results {
            rot.0 += r.rotations.0;
            rot.1 += r.rotations.1;
            rot.2 += r.rotations.2;
            lat.add(&r.latency).expect("same bounds");
            let s = r.elapsed.as_secs_f64();
            recs += r.records as f64 / s;
            bytes += r.bytes as f64 / s;
            syncs += r.syncs as f64 / s;
            batch += r.mean_batch;
            sync_time += r.mean_sync;
            sync_max = sync_max.max(r.max_sync);
        }
        println!(
            "| {name} | {} KB | {shards} | {:.0} | {:.0} | {:.0} | {:.0}% | {:.0} | {:.0} | {:.2?} | {:.2?} | {:.2?} | {:.2?} | {} ({}, {}) |",
            size / 1000,
            recs,
            recs / f64::from(shards),
            bytes / 1e6,
            100.0 * bytes / bw,
            syncs,
            batch / f64::from(shards),
            sync_time / shards,
            sync_max,
            Duration::from_nanos(lat.value_at_quantile(0.5)),
            Duration::from_nanos(lat.value_at_quantile(0.99)),
            rot.0,
            rot.1,
            rot.2,
        );
    }

    // Recovery: 8 full 64 MiB segments of 20 KB messages, all live.
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).expect("bench dir");
    std::fs::set_permissions(&base, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("chmod");
    let n = fill_for_recovery(&base, 8);
    let shard_dir = base.join("shard-0");
    evict(&shard_dir);
    let cfg = SpoolConfig {
        relocate_above_segments: 1 << 20,
        ..SpoolConfig::default()
    };
    let cold = {
        let (s, r) =
            Spool::open(FsStorage::open(&base, 0).expect("dir"), cfg.clone()).expect("recover");
        assert_eq!(s.live_count() as u64, n, "recovery lost messages");
        r
    };
    let hot = {
        let (s, r) = Spool::open(FsStorage::open(&base, 0).expect("dir"), cfg).expect("recover");
        assert_eq!(s.live_count() as u64, n, "recovery lost messages");
        r
    };
    println!();
    println!(
        "recovery of {:.0} MB ({} messages of 20 KB): cold cache {:.2} GB/s ({:?}), hot cache {:.2} GB/s ({:?})",
        hot.bytes_scanned as f64 / 1e6,
        n,
        cold.bytes_per_second() / 1e9,
        cold.elapsed,
        hot.bytes_per_second() / 1e9,
        hot.elapsed
    );
    let _ = std::fs::remove_dir_all(&base);
}
