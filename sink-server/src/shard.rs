//! One shard: a pinned glommio executor that owns its listener, its
//! connections, its counters and its random generator.
//!
//! Everything here is `Rc`/`RefCell`/`Cell`: a shard is one thread. The only
//! cross-thread touch points are in [`Shared`] (see `stats`).

use std::cell::{Cell, RefCell};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError};
use futures_lite::AsyncWriteExt;
use glommio::net::{TcpListener, TcpStream};
use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::config::SinkConfig;
use crate::conn;
use crate::stats::{ShardReport, ShardStats, Shared};

/// Bytes of ids buffered before they are written to `--record-ids`.
pub const ID_LOG_BUFFER_BYTES: usize = 64 * 1024;

/// What one shard owns.
pub struct Shard {
    /// Shard index (also offsets the seed).
    pub index: usize,
    /// Validated configuration.
    pub cfg: Arc<SinkConfig>,
    /// Cross-shard state.
    pub shared: Arc<Shared>,
    /// Counters and deltas.
    pub stats: RefCell<ShardStats>,
    /// Seeded generator for profile decisions.
    pub rng: RefCell<SmallRng>,
    /// `--record-ids` buffer.
    pub ids: RefCell<IdLog>,
    /// `--record-peers` buffer (same writer, one peer address per line).
    pub peers: RefCell<IdLog>,
    /// Connections open on this shard.
    pub open: Cell<usize>,
    /// Sequence number for capture file names.
    pub capture_seq: Cell<u64>,
    /// The SMTP session configuration every connection shares.
    pub smtp: Rc<sluice_smtp::server::ServerConfig>,
}

/// Runs a shard until the stop flag is seen. `listener` is bound and
/// listening already.
pub async fn run(
    index: usize,
    cfg: Arc<SinkConfig>,
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    reports: Sender<ShardReport>,
) {
    // SAFETY: the fd comes from a listening std TcpListener whose ownership
    // moves into glommio here; nothing else closes it.
    let listener = unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) };
    let ids = IdLog::open(cfg.record_ids.clone());
    let peers = IdLog::open(cfg.record_peers.clone());
    let shard = Rc::new(Shard {
        index,
        rng: RefCell::new(SmallRng::seed_from_u64(cfg.seed.wrapping_add(index as u64))),
        smtp: Rc::new(conn::session_config(&cfg)),
        cfg,
        shared,
        stats: RefCell::new(ShardStats::default()),
        ids: RefCell::new(ids),
        peers: RefCell::new(peers),
        open: Cell::new(0),
        capture_seq: Cell::new(0),
    });
    let acceptor = glommio::spawn_local(accept_loop(shard.clone(), listener));
    loop {
        glommio::timer::sleep(shard.cfg.report_interval).await;
        let stop = shard.shared.stop.load(Ordering::Relaxed);
        if let Err(e) = shard.ids.borrow_mut().flush() {
            eprintln!("sluice-sink: shard {index}: --record-ids write failed: {e}");
        }
        if let Err(e) = shard.peers.borrow_mut().flush() {
            eprintln!("sluice-sink: shard {index}: --record-peers write failed: {e}");
        }
        let report = shard.stats.borrow_mut().take_report(index, stop);
        if stop {
            // The reporting thread is draining the channel while it waits
            // for this final report; a blocking send is bounded by that.
            let _ = reports.send(report);
            break;
        }
        match reports.try_send(report) {
            Ok(()) => {}
            Err(TrySendError::Full(r)) | Err(TrySendError::Disconnected(r)) => {
                shard.stats.borrow_mut().restore(r)
            }
        }
    }
    drop(acceptor.cancel());
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                if let Ok(peer) = stream.peer_addr() {
                    let _ = shard
                        .peers
                        .borrow_mut()
                        .push(peer.ip().to_string().as_bytes());
                }
                if shard.open.get() >= shard.cfg.connections_per_shard_max {
                    glommio::spawn_local(refuse(shard.clone(), stream)).detach();
                } else {
                    glommio::spawn_local(conn::serve(shard.clone(), stream)).detach();
                }
            }
            Err(e) => {
                // EMFILE/ENFILE and friends: back off instead of spinning.
                eprintln!("sluice-sink: shard {}: accept failed: {e}", shard.index);
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Over the per-shard connection limit: `421` and close (RFC 5321 §3.1).
async fn refuse(shard: Rc<Shard>, mut stream: TcpStream) {
    shard.stats.borrow_mut().counters.count_reply(421);
    let _ = stream
        .write_all(b"421 4.3.2 Too many connections, try again later\r\n")
        .await;
    let _ = stream.close().await;
}

impl Shard {
    /// A uniform draw in `[0, 1)` from the shard's seeded generator.
    pub fn draw(&self) -> f64 {
        rand::Rng::gen::<f64>(&mut *self.rng.borrow_mut())
    }

    /// Reserves a capture slot and opens the temp file, when capturing.
    pub fn capture_begin(&self) -> Option<CaptureFile> {
        let cap = self.cfg.capture.as_ref()?;
        if self.shared.captured.fetch_add(1, Ordering::Relaxed) >= cap.messages_max {
            self.shared.captured.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let seq = self.capture_seq.get();
        self.capture_seq.set(seq + 1);
        let name = format!("s{}-{seq:08}.eml", self.index);
        let tmp = cap.dir.join(format!(".{name}.tmp"));
        match File::create(&tmp) {
            Ok(f) => Some(CaptureFile {
                file: BufWriter::new(f),
                done: cap.dir.join(name),
                tmp,
                failed: false,
            }),
            Err(e) => {
                eprintln!("sluice-sink: capture to {} failed: {e}", tmp.display());
                self.shared.captured.fetch_sub(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// The message was not accepted: remove the partial capture, free the slot.
    pub fn capture_abort(&self, cap: CaptureFile) {
        drop(cap.file);
        let _ = std::fs::remove_file(&cap.tmp);
        self.shared.captured.fetch_sub(1, Ordering::Relaxed);
    }

    /// The message was accepted: publish the capture under its final name.
    pub fn capture_commit(&self, cap: CaptureFile) {
        let CaptureFile {
            file,
            tmp,
            done,
            failed,
        } = cap;
        let flushed = file.into_inner().map_err(|e| e.into_error());
        match (failed, flushed) {
            (false, Ok(_)) => match std::fs::rename(&tmp, &done) {
                Ok(()) => self.stats.borrow_mut().counters.captured += 1,
                Err(e) => eprintln!("sluice-sink: capture rename {} failed: {e}", done.display()),
            },
            (_, r) => {
                if let Err(e) = r {
                    eprintln!("sluice-sink: capture write {} failed: {e}", tmp.display());
                }
                let _ = std::fs::remove_file(&tmp);
                self.shared.captured.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// A message being written to `--capture DIR` (blocking file writes: this
/// is a test mode, off by default).
pub struct CaptureFile {
    file: BufWriter<File>,
    tmp: PathBuf,
    done: PathBuf,
    failed: bool,
}

impl CaptureFile {
    /// Appends body bytes; a write error marks the capture failed.
    pub fn write(&mut self, bytes: &[u8]) {
        if !self.failed && self.file.write_all(bytes).is_err() {
            self.failed = true;
        }
    }
}

/// Buffered `--record-ids` writer: ids are appended after the `250` was
/// written to the socket, written out when the buffer fills and on every
/// report tick, and on stop.
pub struct IdLog {
    file: Option<File>,
    buf: Vec<u8>,
}

impl IdLog {
    /// Opens `path` for appending (every shard opens it with `O_APPEND`, and
    /// writes whole lines, so lines never interleave).
    pub fn open(path: Option<PathBuf>) -> IdLog {
        let file = path.and_then(
            |p| match OpenOptions::new().create(true).append(true).open(&p) {
                Ok(f) => Some(f),
                Err(e) => {
                    eprintln!("sluice-sink: cannot open --record-ids {}: {e}", p.display());
                    None
                }
            },
        );
        IdLog {
            buf: Vec::with_capacity(if file.is_some() {
                ID_LOG_BUFFER_BYTES
            } else {
                0
            }),
            file,
        }
    }

    /// Whether ids are recorded.
    pub fn enabled(&self) -> bool {
        self.file.is_some()
    }

    /// Appends one id line (CR and LF never reach the file).
    pub fn push(&mut self, id: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() {
            return Ok(());
        }
        self.buf
            .extend(id.iter().copied().filter(|&b| b != b'\r' && b != b'\n'));
        self.buf.push(b'\n');
        if self.buf.len() >= ID_LOG_BUFFER_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the buffered lines out.
    pub fn flush(&mut self) -> std::io::Result<()> {
        if let Some(f) = self.file.as_mut() {
            if !self.buf.is_empty() {
                f.write_all(&self.buf)?;
                self.buf.clear();
            }
        }
        Ok(())
    }
}

impl Drop for IdLog {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            eprintln!("sluice-sink: --record-ids write failed: {e}");
        }
    }
}
