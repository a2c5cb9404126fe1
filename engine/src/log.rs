//! The delivery log: one JSON line per attempt outcome, per shard.
//!
//! Delivery appends a record to an in-memory buffer ([`DeliveryLog::record`],
//! no I/O, no await); the shard's writer task ([`DeliveryLog::run_writer`])
//! swaps the buffer out every `flush_every` (or sooner when it passes half
//! its bound) and writes it through io_uring. Delivery never waits for the
//! log: when the buffer is at its bound while a write is slow, records are
//! dropped and counted (`dropped` in [`LogStats`]; the writer reports the
//! count in the log itself), because stalling delivery for a log line would
//! be worse. Files are `<dir>/delivery-<shard>-<start ms>.jsonl`, a new file
//! per run, so a restart never truncates an old log.
//!
//! Schema (one object per line, keys always present, `null` when unknown):
//! `type` (`Delivery`, `TransientFailure`, `Bounce`, `Expiration`), `id`
//! (spool message id), `recipient`, `queue` (recipient domain), `site`
//! (next hop), `code`, `enhanced`, `text` (the reply, CR/LF removed),
//! `peer` (address the reply came from), `attempt` (1-based), `arrival_ms`
//! and `at_ms` (ms since the Unix epoch), `shard`.

// std
use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::task::Waker;
use std::time::Duration;

// external
use serde::Serialize;

/// The kind of a log record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RecordKind {
    /// The recipient was accepted by the next hop (`2xx`).
    Delivery,
    /// A temporary failure (`4xx`, lost connection, no route): retried.
    TransientFailure,
    /// A permanent failure (`5xx`): the recipient is bounced.
    Bounce,
    /// The recipient waited longer than its max age.
    Expiration,
}

/// One attempt outcome.
#[derive(Debug, Clone, Serialize)]
pub struct LogRecord<'a> {
    /// What happened.
    #[serde(rename = "type")]
    pub kind: RecordKind,
    /// Spool message id.
    pub id: u64,
    /// The recipient address.
    pub recipient: &'a str,
    /// The queue (recipient domain).
    pub queue: &'a str,
    /// The site (next hop or `unrouted`).
    pub site: &'a str,
    /// Reply code, if a reply was received or synthesized.
    pub code: Option<u16>,
    /// Enhanced status code text, e.g. `4.4.0`.
    pub enhanced: Option<&'a str>,
    /// Reply text without CR and LF.
    pub text: &'a str,
    /// The peer address the reply came from.
    pub peer: Option<SocketAddr>,
    /// Attempt number (1 for the first).
    pub attempt: u32,
    /// Message arrival, ms since the Unix epoch.
    pub arrival_ms: u64,
    /// When the outcome was known, ms since the Unix epoch.
    pub at_ms: u64,
    /// The shard.
    pub shard: u32,
}

/// Counters of the delivery log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Records appended to the buffer.
    pub records: u64,
    /// Records dropped because the buffer was full.
    pub dropped: u64,
    /// Bytes written to the file.
    pub bytes_written: u64,
    /// Failed writes (the batch is lost; counted, never retried forever).
    pub write_errors: u64,
}

struct Inner {
    buf: Vec<u8>,
    bytes_max: usize,
    stats: LogStats,
    waker: Option<Waker>,
    closed: bool,
}

/// A shard's delivery log handle (cheap to clone).
#[derive(Clone)]
pub struct DeliveryLog {
    inner: Rc<RefCell<Inner>>,
}

impl DeliveryLog {
    /// A log whose buffer holds at most `bytes_max` bytes between flushes.
    pub fn new(bytes_max: usize) -> DeliveryLog {
        DeliveryLog {
            inner: Rc::new(RefCell::new(Inner {
                buf: Vec::with_capacity(bytes_max.min(1 << 20)),
                bytes_max,
                stats: LogStats::default(),
                waker: None,
                closed: false,
            })),
        }
    }

    /// Appends one record (no I/O). Drops it, counting, if the buffer is full.
    pub fn record(&self, r: &LogRecord<'_>) {
        let mut inner = self.inner.borrow_mut();
        let inner = &mut *inner;
        if inner.buf.len() >= inner.bytes_max {
            inner.stats.dropped += 1;
            return;
        }
        let before = inner.buf.len();
        // Serializing plain fields into a Vec cannot fail; on the
        // impossible error the partial line is removed.
        if serde_json::to_writer(&mut inner.buf, r).is_err() {
            inner.buf.truncate(before);
            inner.stats.dropped += 1;
            return;
        }
        inner.buf.push(b'\n');
        inner.stats.records += 1;
        if inner.buf.len() >= inner.bytes_max / 2 {
            if let Some(w) = inner.waker.take() {
                w.wake();
            }
        }
    }

    /// Takes the buffered lines (the writer does; tests may).
    pub fn take_buffer(&self) -> Vec<u8> {
        let mut inner = self.inner.borrow_mut();
        let cap = inner.buf.capacity();
        std::mem::replace(&mut inner.buf, Vec::with_capacity(cap))
    }

    /// Counters.
    pub fn stats(&self) -> LogStats {
        self.inner.borrow().stats
    }

    /// Asks the writer to flush what is buffered and stop.
    pub fn close(&self) {
        let mut inner = self.inner.borrow_mut();
        inner.closed = true;
        if let Some(w) = inner.waker.take() {
            w.wake();
        }
    }

    /// The writer task: creates `<dir>/delivery-<shard>-<start ms>.jsonl`
    /// and appends the buffer every `flush_every` until [`DeliveryLog::close`].
    pub async fn run_writer(
        self,
        dir: PathBuf,
        shard: u32,
        start_unix_ms: u64,
        flush_every: Duration,
    ) -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("delivery-{shard}-{start_unix_ms}.jsonl"));
        let file = glommio::io::BufferedFile::create(&path).await?;
        let mut pos = 0u64;
        let mut reported_drops = 0u64;
        loop {
            let closed = self.inner.borrow().closed;
            let mut batch = self.take_buffer();
            let dropped = self.inner.borrow().stats.dropped;
            if dropped > reported_drops {
                let line = format!(
                    "{{\"type\":\"LogDropped\",\"dropped\":{},\"shard\":{shard}}}\n",
                    dropped - reported_drops
                );
                batch.extend_from_slice(line.as_bytes());
                reported_drops = dropped;
            }
            if !batch.is_empty() {
                let len = batch.len();
                match file.write_at(batch, pos).await {
                    Ok(n) => {
                        pos += n as u64;
                        self.inner.borrow_mut().stats.bytes_written += n as u64;
                        if n < len {
                            self.inner.borrow_mut().stats.write_errors += 1;
                        }
                    }
                    Err(_) => self.inner.borrow_mut().stats.write_errors += 1,
                }
            }
            if closed {
                break;
            }
            FlushWait {
                log: &self,
                timer: glommio::timer::Timer::new(flush_every),
            }
            .await;
        }
        file.close().await?;
        Ok(())
    }
}

/// Waits for the flush interval, a half-full buffer, or close.
struct FlushWait<'a> {
    log: &'a DeliveryLog,
    timer: glommio::timer::Timer,
}

impl std::future::Future for FlushWait<'_> {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        {
            let mut inner = self.log.inner.borrow_mut();
            if inner.closed || inner.buf.len() >= inner.bytes_max / 2 {
                return std::task::Poll::Ready(());
            }
            inner.waker = Some(cx.waker().clone());
        }
        match std::pin::Pin::new(&mut self.timer).poll(cx) {
            std::task::Poll::Ready(_) => std::task::Poll::Ready(()),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

/// Removes CR and LF (reply text echoed into the log).
pub fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains(['\r', '\n']) {
        std::borrow::Cow::Owned(text.replace(['\r', '\n'], " "))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u64) -> LogRecord<'static> {
        LogRecord {
            kind: RecordKind::TransientFailure,
            id,
            recipient: "a\"b@x.test",
            queue: "x.test",
            site: "127.0.0.1:25",
            code: Some(451),
            enhanced: Some("4.4.0"),
            text: "no route",
            peer: None,
            attempt: 1,
            arrival_ms: 5,
            at_ms: 6,
            shard: 0,
        }
    }

    #[test]
    fn records_are_json_lines_and_drops_are_counted() {
        let log = DeliveryLog::new(300);
        log.record(&rec(1));
        log.record(&rec(2));
        log.record(&rec(3));
        let s = log.stats();
        assert!(s.records >= 1 && s.records + s.dropped == 3, "{s:?}");
        let buf = log.take_buffer();
        let text = String::from_utf8(buf).unwrap();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["type"], "TransientFailure");
            assert_eq!(v["recipient"], "a\"b@x.test");
            assert_eq!(v["code"], 451);
            assert!(v["peer"].is_null());
        }
        assert_eq!(one_line("a\r\nb"), "a  b");
    }

    #[test]
    fn writer_flushes_to_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(1 << 20)
            .make()
            .unwrap();
        ex.run(async move {
            let log = DeliveryLog::new(1 << 20);
            let w = glommio::spawn_local(log.clone().run_writer(
                path.clone(),
                3,
                42,
                Duration::from_millis(5),
            ));
            log.record(&rec(7));
            glommio::timer::sleep(Duration::from_millis(20)).await;
            log.record(&rec(8));
            log.close();
            w.await.unwrap();
            let text = std::fs::read_to_string(path.join("delivery-3-42.jsonl")).unwrap();
            assert_eq!(text.lines().count(), 2, "{text}");
            assert_eq!(log.stats().bytes_written, text.len() as u64);
        });
    }
}
