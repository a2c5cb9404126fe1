//! Starting the shards and running the reporting loop.
//!
//! [`Sink::start`] binds one listening socket per shard on the calling
//! thread (SO_REUSEPORT, so the kernel spreads connections across shards;
//! binding here means a bad address fails at once, and port 0 resolves to
//! one port that every shard shares), then starts one pinned glommio
//! executor per shard. [`Sink::run`] is the reporting loop: it merges shard
//! reports, prints the live line, rewrites the summary and the hlog, and
//! returns the final summary after the stop flag is set.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use serde_json::Value;
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::SinkConfig;
use crate::report::{write_atomic, Aggregator};
use crate::shard;
use crate::stats::{ShardReport, Shared};

/// Reports queued per shard before a shard keeps its deltas for later.
pub const REPORT_QUEUE_PER_SHARD: usize = 64;
/// How long [`Sink::run`] waits for the shards' final reports after stop.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listening socket could not be set up.
    #[error("cannot listen on {addr}: {source} (is the port in use, or the address not local?)")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
    /// A shard executor could not be started.
    #[error("cannot start shard {shard}: {reason} (check `ulimit -l` and io_uring support)")]
    Executor {
        /// Shard index.
        shard: usize,
        /// What glommio said.
        reason: String,
    },
}

/// Where [`Sink::run`] writes its outputs.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    /// JSON summary file; `None`: stdout at the end only.
    pub summary: Option<PathBuf>,
    /// Rewrite the summary file this often while running (zero: never).
    pub summary_interval: Duration,
    /// Live line on stderr this often (zero: never).
    pub stats_interval: Duration,
    /// HdrHistogram interval log of latencies.
    pub hlog: Option<PathBuf>,
    /// Interval of the hlog entries.
    pub hlog_interval: Duration,
}

/// A running sink.
pub struct Sink {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    reports: Receiver<ShardReport>,
    handles: Vec<ExecutorJoinHandle<()>>,
    shards: usize,
    seed: u64,
    profiled_domains: Vec<String>,
}

impl Sink {
    /// Binds the listeners and starts the shards.
    pub fn start(config: SinkConfig) -> Result<Sink, StartError> {
        let shards = config.shard_count();
        let listeners = bind_all(config.listen, shards, config.backlog)?;
        let local_addr = listeners[0]
            .local_addr()
            .map_err(|source| StartError::Listen {
                addr: config.listen,
                source,
            })?;
        let shared = Arc::new(Shared::default());
        let (tx, reports) = crossbeam_channel::bounded(REPORT_QUEUE_PER_SHARD * shards);
        let seed = config.seed;
        let profiled_domains = config.profile.domains.keys().cloned().collect();
        let config = Arc::new(config);
        let mut handles = Vec::with_capacity(shards);
        for (index, listener) in listeners.into_iter().enumerate() {
            let placement = match config.cores.get(index) {
                Some(&core) => Placement::Fixed(core),
                None => Placement::Unbound,
            };
            let (cfg, sh, tx) = (config.clone(), shared.clone(), tx.clone());
            let mut builder = LocalExecutorBuilder::new(placement)
                .name(&format!("sink-{index}"))
                .io_memory(config.io_memory_bytes);
            if !config.spin_before_park.is_zero() {
                builder = builder.spin_before_park(config.spin_before_park);
            }
            let handle = builder
                .spawn(move || shard::run(index, cfg, sh, listener, tx))
                .map_err(|e| StartError::Executor {
                    shard: index,
                    reason: e.to_string(),
                })?;
            handles.push(handle);
        }
        Ok(Sink {
            local_addr,
            shared,
            reports,
            handles,
            shards,
            seed,
            profiled_domains,
        })
    }

    /// The bound address (the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// State shared with the shards; set `stop` to end [`Sink::run`].
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Runs the reporting loop until `shared().stop` is set, then collects
    /// the final reports, writes the outputs and returns the summary.
    pub fn run(self, out: &Outputs) -> io::Result<Value> {
        let mut agg = Aggregator::new(self.shards, self.seed);
        for d in &self.profiled_domains {
            agg.track(d.clone(), true);
        }
        let mut hlog_file = match &out.hlog {
            Some(p) => Some(BufWriter::new(File::create(p)?)),
            None => None,
        };
        let mut serializer = V2DeflateSerializer::new();
        let mut hlog = match hlog_file.as_mut() {
            Some(f) => {
                let mut b = IntervalLogWriterBuilder::new();
                b.add_comment("sluice-sink injection-to-arrival latency, microseconds")
                    .with_start_time(std::time::SystemTime::now())
                    .with_base_time(std::time::SystemTime::now())
                    .with_max_value_divisor(1000.0);
                Some(b.begin_log_with(f, &mut serializer)?)
            }
            None => None,
        };
        let tag = Tag::new("latency_us");
        let hlog_every = if out.hlog_interval.is_zero() {
            Duration::from_secs(1)
        } else {
            out.hlog_interval
        };
        let start = Instant::now();
        let mut next_stats = start + out.stats_interval;
        let mut next_summary = start + out.summary_interval;
        let mut next_hlog = start + hlog_every;
        let mut hlog_from = Duration::ZERO;
        let mut stop_deadline: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let mut wake = now + Duration::from_millis(100);
            for (enabled, at) in [
                (!out.stats_interval.is_zero(), next_stats),
                (
                    !out.summary_interval.is_zero() && out.summary.is_some(),
                    next_summary,
                ),
                (hlog.is_some(), next_hlog),
            ] {
                if enabled {
                    wake = wake.min(at);
                }
            }
            match self
                .reports
                .recv_timeout(wake.saturating_duration_since(now))
            {
                Ok(r) => {
                    agg.absorb(r);
                    while let Ok(r) = self.reports.try_recv() {
                        agg.absorb(r);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            if stop_deadline.is_none() && self.shared.stop.load(Ordering::Relaxed) {
                stop_deadline = Some(now + STOP_GRACE);
            }
            if let Some(deadline) = stop_deadline {
                if agg.all_finished() || now >= deadline {
                    break;
                }
            }
            if !out.stats_interval.is_zero() && now >= next_stats {
                eprintln!("{}", agg.live_line(&self.shared));
                next_stats = now + out.stats_interval;
            }
            if let (Some(p), false) = (&out.summary, out.summary_interval.is_zero()) {
                if now >= next_summary {
                    write_summary(p, &agg.summary(&self.shared))?;
                    next_summary = now + out.summary_interval;
                }
            }
            if let Some(log) = hlog.as_mut() {
                if now >= next_hlog {
                    let at = now - start;
                    let h = agg.take_interval();
                    log.write_histogram(&h, hlog_from, at - hlog_from, tag)
                        .map_err(|e| io::Error::other(format!("{e:?}")))?;
                    hlog_from = at;
                    next_hlog = now + hlog_every;
                }
            }
        }
        self.shared.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            // A shard that panicked has already printed its panic; the
            // summary still reports what it sent before.
            let _ = h.join();
        }
        while let Ok(r) = self.reports.try_recv() {
            agg.absorb(r);
        }
        if let Some(log) = hlog.as_mut() {
            let at = start.elapsed();
            let h = agg.take_interval();
            log.write_histogram(&h, hlog_from, at.saturating_sub(hlog_from), tag)
                .map_err(|e| io::Error::other(format!("{e:?}")))?;
        }
        drop(hlog);
        if let Some(mut f) = hlog_file {
            f.flush()?;
        }
        let summary = agg.summary(&self.shared);
        if let Some(p) = &out.summary {
            write_summary(p, &summary)?;
        }
        Ok(summary)
    }
}

fn write_summary(path: &std::path::Path, v: &Value) -> io::Result<()> {
    // A Value always serializes.
    let text = serde_json::to_vec_pretty(v).expect("JSON value serializes");
    write_atomic(path, &text)
}

/// Binds `shards` sockets to `addr` with SO_REUSEPORT; port 0 is resolved by
/// the first bind and reused by the others.
fn bind_all(addr: SocketAddr, shards: usize, backlog: i32) -> Result<Vec<TcpListener>, StartError> {
    let err = |source| StartError::Listen { addr, source };
    let mut out = Vec::with_capacity(shards);
    let mut bind_addr = addr;
    for _ in 0..shards {
        let sock = Socket::new(
            Domain::for_address(bind_addr),
            Type::STREAM,
            Some(Protocol::TCP),
        )
        .map_err(err)?;
        sock.set_reuse_address(true).map_err(err)?;
        sock.set_reuse_port(true).map_err(err)?;
        sock.set_nodelay(true).map_err(err)?;
        sock.bind(&bind_addr.into()).map_err(err)?;
        sock.listen(backlog).map_err(err)?;
        let listener: TcpListener = sock.into();
        if bind_addr.port() == 0 {
            bind_addr = listener.local_addr().map_err(err)?;
        }
        out.push(listener);
    }
    Ok(out)
}
