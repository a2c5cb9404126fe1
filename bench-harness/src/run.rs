//! `sluice-bench run`: plan the load, start one glommio executor per core,
//! collect their reports, and build the final report and files.
//!
//! Executors share nothing mutable: each gets its connection slots, an
//! `Arc` of the immutable run settings and a channel sender. Each connection
//! is a local task; counters live in the executor's `RefCell`. The only
//! cross-thread traffic is one report per executor per interval and a stop
//! flag the executors read once per interval.

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{bounded, RecvTimeoutError, Sender, TrySendError};
use glommio::{LocalExecutorBuilder, Placement};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use crate::cli::RunArgs;
use crate::dist::DomainDist;
use crate::message::LoadShape;
use crate::probe::{own_cpu, read_sink_summary, CpuProbe, SinkSnapshot};
use crate::progress::Progress;
use crate::report::{keyed, verdict, LatencyMs, LoadEcho, Report};
use crate::route::{plan, Group};
use crate::stats::{Collector, ShardStats};
use crate::{conn, hdr, plot, tls, Error};

/// glommio registered-buffer memory per executor. We do no file I/O, and the
/// memlock limit can be as low as 8 MiB for the whole process.
const IO_MEMORY_BYTES: usize = 256 * 1024;

/// io_uring depth per executor.
const RING_DEPTH: usize = 256;

/// Reports buffered between executors and the collector.
const REPORT_CHANNEL_BOUND: usize = 4096;

/// How the connections of a run talk SMTP; shared read-only by executors.
#[derive(Debug)]
pub struct Settings {
    /// EHLO name.
    pub ehlo: String,
    /// STARTTLS required: client config and the name to verify.
    pub tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    /// AUTH PLAIN credentials.
    pub auth: Option<(String, String)>,
    /// Ignore PIPELINING.
    pub no_pipelining: bool,
    /// Ignore CHUNKING.
    pub no_chunking: bool,
    /// Transactions in flight per connection with PIPELINING.
    pub window: u32,
    /// Reply timeout.
    pub reply_timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Connect attempts per slot.
    pub connect_attempts: u32,
    /// Messages per connection before reconnecting (0: unlimited).
    pub messages_per_connection: u64,
    /// Duration bound of the run.
    pub duration: Option<Duration>,
    /// Open-loop wake-up quantum (zero: none).
    pub tick: Duration,
}

/// Everything an executor needs, immutable.
#[derive(Debug)]
pub struct Shared {
    /// Target host address.
    pub host: IpAddr,
    /// Load groups (one per destination port).
    pub groups: Vec<Group>,
    /// Protocol settings.
    pub settings: Settings,
    /// Monotonic start of the run.
    pub start: Instant,
    /// Wall-clock start of the run, unix nanoseconds.
    pub start_unix_nanos: u64,
    /// Number of groups (message ids are `local * groups + group`).
    pub group_count: u64,
    /// Connection slots in the run (every group).
    pub total_slots: u64,
    /// Slots whose first connection is ready (open loop's start barrier).
    pub ready_slots: AtomicU64,
    /// Open loop: when the arrival schedule starts, after [`Shared::start`].
    /// Set once every slot's first connection is ready (or after
    /// [`SCHEDULE_BARRIER_MAX`]), so connecting and greeting the server is
    /// not charged to the first messages as latency.
    pub schedule_from: OnceLock<Duration>,
}

/// Longest the open-loop schedule waits for every connection to be ready.
pub const SCHEDULE_BARRIER_MAX: Duration = Duration::from_secs(10);

impl Shared {
    /// Unix nanoseconds now (monotonic since the start, anchored at the wall clock).
    pub fn unix_nanos(&self) -> u64 {
        self.start_unix_nanos + self.start.elapsed().as_nanos() as u64
    }

    /// Origin of the arrival schedule: [`Shared::start`] until the open-loop
    /// barrier has set it (and always in closed loop, where it is unused).
    pub fn schedule_origin(&self) -> Instant {
        self.start + self.schedule_from.get().copied().unwrap_or_default()
    }

    /// Time since the schedule's origin (zero before it).
    pub fn schedule_elapsed(&self) -> Duration {
        Instant::now().saturating_duration_since(self.schedule_origin())
    }

    /// A slot's first connection is ready: waits until every slot's is (or
    /// [`SCHEDULE_BARRIER_MAX`] has passed since the start), then the
    /// schedule starts for everyone.
    pub async fn schedule_barrier(&self) {
        self.ready_slots.fetch_add(1, Ordering::AcqRel);
        while self.schedule_from.get().is_none() {
            if self.ready_slots.load(Ordering::Acquire) >= self.total_slots
                || self.start.elapsed() >= SCHEDULE_BARRIER_MAX
            {
                self.schedule_from.get_or_init(|| self.start.elapsed());
                break;
            }
            glommio::timer::sleep(Duration::from_micros(500)).await;
        }
    }
}

/// One connection slot: slot `slot` of `slots` in group `group`.
#[derive(Debug, Clone, Copy)]
pub struct SlotSpec {
    /// Index into [`Shared::groups`].
    pub group: usize,
    /// Slot number within the group.
    pub slot: u64,
    /// Slots in the group.
    pub slots: u64,
}

/// Per-executor state shared by its connection tasks.
#[derive(Debug)]
pub struct ShardCtx {
    /// Run settings.
    pub shared: Arc<Shared>,
    /// This executor's counters.
    pub stats: RefCell<ShardStats>,
    /// Set when the run must stop (interrupt, fatal error elsewhere).
    pub stop: Cell<bool>,
}

impl ShardCtx {
    /// True when connections should start no new transaction.
    pub fn stopping(&self) -> bool {
        self.stop.get() || self.stats.borrow().fatal.is_some()
    }
}

/// The result of a run.
#[derive(Debug)]
pub struct Outcome {
    /// The report (also written with `--json`).
    pub report: Report,
}

/// Runs a load as described by `args`. `interrupt` is polled: once set,
/// connections finish their transactions in flight and the run reports.
pub fn run(args: &RunArgs, interrupt: Arc<AtomicBool>) -> Result<Outcome, Error> {
    if let Err(problems) = args.validate() {
        return Err(Error::Parse(problems.join("\n")));
    }
    let (host, port) = resolve(&args.target)?;
    let planned = match args.duration {
        Some(_) => None,
        None => Some(args.messages.unwrap_or(RunArgs::DEFAULT_MESSAGES)),
    };
    let run_id = args.run_id.clone().unwrap_or_else(|| {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        format!("{ms:x}")
    });
    let shape = LoadShape {
        sizes: args.size.clone(),
        recipients: args.recipients.0..=args.recipients.1,
        recipient_domains: DomainDist::new(
            args.domains,
            &args.domain_suffix,
            args.domain_shape,
            &args.heavy_domains,
        )?,
        sender_domains: DomainDist::new(
            args.sender_domains as usize,
            "sender.invalid",
            crate::dist::DomainShape::Uniform,
            &[],
        )?,
        local_parts: args.local_parts,
        run_id: run_id.clone(),
        seed: args.seed,
    };
    let route = args.route_by_domain.zip(args.shards);
    let groups = plan(
        shape,
        port,
        planned,
        args.connections,
        args.rate,
        route,
        sluice_shaping::lease::domain_shard,
    )?;
    let tls = if args.starttls {
        let name = args
            .tls_server_name
            .clone()
            .unwrap_or_else(|| host_part(&args.target));
        Some((
            tls::client_config(args.tls_insecure, args.ca.as_deref())?,
            tls::server_name(&name)?,
        ))
    } else {
        None
    };
    let auth = args
        .auth
        .as_deref()
        .and_then(|a| a.split_once(':'))
        .map(|(u, p)| (u.to_owned(), p.to_owned()));
    let total_connections: u32 = groups.iter().map(|g| g.connections).sum();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let cores = args
        .cores
        .unwrap_or(cpus)
        .clamp(1, total_connections.max(1) as usize);

    // Connection slots, dealt round-robin to executors.
    let mut per_core: Vec<Vec<SlotSpec>> = vec![Vec::new(); cores];
    let mut next = 0;
    for (gi, g) in groups.iter().enumerate() {
        for slot in 0..u64::from(g.connections) {
            per_core[next % cores].push(SlotSpec {
                group: gi,
                slot,
                slots: u64::from(g.connections),
            });
            next += 1;
        }
    }

    let cpu_probe = CpuProbe::start_with(&args.pids, args.pid_tree)?;
    let sink_before = match &args.sink_summary {
        Some(path) => Some(read_sink_summary(path)?),
        None => None,
    };
    let cpu_before = own_cpu();
    let group_count = groups.len() as u64;
    // The monotonic and wall-clock origins are taken together.
    let started_wall = SystemTime::now();
    let start = Instant::now();
    let start_unix_nanos = started_wall
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let shared = Arc::new(Shared {
        host,
        groups,
        settings: Settings {
            ehlo: args.ehlo.clone(),
            tls,
            auth,
            no_pipelining: args.no_pipelining,
            no_chunking: args.no_chunking,
            window: args.window,
            reply_timeout: args.reply_timeout,
            connect_timeout: args.connect_timeout,
            connect_attempts: args.connect_attempts,
            messages_per_connection: args.messages_per_connection,
            duration: args.duration,
            tick: args.tick,
        },
        start,
        start_unix_nanos,
        group_count,
        total_slots: u64::from(total_connections),
        ready_slots: AtomicU64::new(0),
        schedule_from: OnceLock::new(),
    });

    let (tx, rx) = bounded(REPORT_CHANNEL_BOUND);
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::with_capacity(cores);
    for (shard, slots) in per_core.into_iter().enumerate() {
        let placement = if args.pin {
            Placement::Fixed(shard % cpus)
        } else {
            Placement::Unbound
        };
        let (shared, tx, stop, interval) =
            (shared.clone(), tx.clone(), stop.clone(), args.interval);
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("bench-{shard}"))
            .io_memory(IO_MEMORY_BYTES)
            .ring_depth(RING_DEPTH)
            .spawn(move || executor_main(shard, shared, slots, tx, stop, interval))
            .map_err(|e| {
                Error::Io(format!(
                    "starting executor {shard}: {e} (glommio needs io_uring and locked memory; see `ulimit -l`)"
                ))
            })?;
        handles.push(handle);
    }
    drop(tx);

    let mut collector = Collector::new(cores, args.interval);
    let progress = Progress::new(args.progress, planned, args.duration);
    // Progress at fixed boundaries after the start (no drift).
    let mut last_update = Instant::now();
    let mut next_update = shared.start + args.interval;
    let mut last_finished = 0u64;
    loop {
        let wait = next_update
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        match rx.recv_timeout(wait) {
            Ok(report) => collector.add(report)?,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if interrupt.load(Ordering::Relaxed) || collector.fatal.is_some() {
            stop.store(true, Ordering::Relaxed);
        }
        let now = Instant::now();
        if now >= next_update {
            let c = collector.counters();
            let dt = now.duration_since(last_update).as_secs_f64().max(1e-6);
            let rate = c.finished().saturating_sub(last_finished) as f64 / dt;
            last_finished = c.finished();
            last_update = now;
            while next_update <= now {
                next_update += args.interval;
            }
            progress.update(&c, shared.start.elapsed(), rate, planned);
        }
    }
    for (shard, h) in handles.into_iter().enumerate() {
        h.join()
            .map_err(|e| Error::Io(format!("executor {shard} failed: {e}")))?;
    }
    collector.finish()?;
    progress.finish();
    let cpu_used = own_cpu().saturating_sub(cpu_before);
    let counters = collector.counters();
    let seconds = collector.finished_at.as_secs_f64().max(1e-9);

    let target_cpu = if args.pids.is_empty() {
        None
    } else {
        Some(cpu_probe.finish(counters.accepted)?)
    };
    let (delivered, e2e) = match (&args.sink_summary, sink_before) {
        (Some(path), Some(before)) => {
            let after = wait_for_sink(path, &before, counters.accepted, args.sink_wait)?;
            (
                Some(after.messages.saturating_sub(before.messages)),
                after.latency_ms,
            )
        }
        _ => (None, None),
    };
    let interrupted = interrupt.load(Ordering::Relaxed);
    let mut problems = verdict(
        &counters,
        planned,
        args.max_error_rate,
        collector.fatal.as_deref(),
        interrupted,
    );
    if let Some(d) = delivered {
        if d < counters.accepted {
            problems.push(format!(
                "the sink counted {d} of {} accepted messages within --sink-wait",
                counters.accepted
            ));
        }
    }
    let report = Report {
        load: LoadEcho {
            target: args.target.clone(),
            mode: if args.rate.is_some() {
                "open"
            } else {
                "closed"
            },
            rate_target: args.rate,
            connections: total_connections,
            cores,
            messages_planned: planned,
            duration_planned: args.duration.map(|d| d.as_secs_f64()),
            size: size_text(args),
            seed: args.seed,
            run_id: run_id.clone(),
            started_unix_nanos: shared.start_unix_nanos,
            route_by_domain: route,
        },
        messages: counters.sent,
        accepted: counters.accepted,
        failed: counters.failed,
        recipients_accepted: counters.recipients_accepted,
        recipients_rejected: counters.recipients_rejected,
        bytes: counters.bytes,
        seconds,
        msgs_per_sec: counters.accepted as f64 / seconds,
        msgs_per_hour: counters.accepted as f64 / seconds * 3600.0,
        inject_latency_ms: LatencyMs::from_histogram(&collector.total),
        errors: keyed(&counters.errors),
        connection_errors: keyed(&counters.connection_errors),
        connections_opened: counters.connections,
        harness_cpu_seconds: cpu_used.as_secs_f64(),
        harness_cpu_us_per_msg: if counters.accepted > 0 {
            cpu_used.as_secs_f64() * 1e6 / counters.accepted as f64
        } else {
            0.0
        },
        target_cpu,
        delivered,
        e2e_latency_ms: e2e,
        passed: problems.is_empty(),
        problems,
    };
    write_outputs(args, &report, &collector, started_wall)?;
    Ok(Outcome { report })
}

fn size_text(args: &RunArgs) -> String {
    match &args.size {
        crate::dist::SizeDist::Fixed(n) => n.to_string(),
        crate::dist::SizeDist::Uniform { min, max } => format!("{min}-{max}"),
        crate::dist::SizeDist::Weighted { sizes, .. } => format!("weighted {sizes:?}"),
    }
}

fn write_outputs(
    args: &RunArgs,
    report: &Report,
    collector: &Collector,
    started: SystemTime,
) -> Result<(), Error> {
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(report)
            .map_err(|e| Error::Io(format!("encoding the JSON report: {e}")))?;
        std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))?;
    }
    if let Some(path) = &args.hlog {
        let comment = format!(
            "sluice-bench run {} -> {}",
            report.load.run_id, report.load.target
        );
        collector.intervals.write_hlog(path, started, &comment)?;
    }
    if let Some(path) = &args.hgrm {
        hdr::write_hgrm_file(&collector.total, path)?;
    }
    if let Some(dir) = &args.plot {
        plot::write_plots(
            dir,
            &report.load.target,
            &collector.total,
            &collector.timeline,
        )?;
    }
    Ok(())
}

/// Polls the sink summary until it counted `accepted` more messages or `wait` passed.
fn wait_for_sink(
    path: &Path,
    before: &SinkSnapshot,
    accepted: u64,
    wait: Duration,
) -> Result<SinkSnapshot, Error> {
    let deadline = Instant::now() + wait;
    loop {
        let now = read_sink_summary(path)?;
        if now.messages.saturating_sub(before.messages) >= accepted || Instant::now() >= deadline {
            return Ok(now);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn host_part(target: &str) -> String {
    match target.rsplit_once(':') {
        Some((host, _)) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        None => target.to_owned(),
    }
}

/// Resolves `HOST:PORT` to one address.
pub fn resolve(target: &str) -> Result<(IpAddr, u16), Error> {
    let addr: SocketAddr = target
        .to_socket_addrs()
        .map_err(|e| Error::Parse(format!("--target {target:?}: {e} (expected HOST:PORT)")))?
        .next()
        .ok_or_else(|| Error::Parse(format!("--target {target:?}: no address")))?;
    Ok((addr.ip(), addr.port()))
}

async fn executor_main(
    shard: usize,
    shared: Arc<Shared>,
    slots: Vec<SlotSpec>,
    tx: Sender<crate::stats::ShardReport>,
    stop: Arc<AtomicBool>,
    interval: Duration,
) {
    let ctx = Rc::new(ShardCtx {
        shared: shared.clone(),
        stats: RefCell::new(ShardStats::default()),
        stop: Cell::new(false),
    });
    let tasks: Vec<_> = slots
        .into_iter()
        .map(|s| glommio::spawn_local(conn::run_slot(ctx.clone(), s)))
        .collect();
    let all_done = async {
        for t in tasks {
            t.await;
        }
    };
    let ticker = async {
        let mut index = 0u64;
        loop {
            let due = interval * (index as u32 + 1);
            let elapsed = shared.start.elapsed();
            if due > elapsed {
                glommio::timer::sleep(due - elapsed).await;
            }
            if stop.load(Ordering::Relaxed) {
                ctx.stop.set(true);
            }
            let report = ctx
                .stats
                .borrow_mut()
                .report(shard, index, false, shared.start.elapsed());
            if let Err(TrySendError::Full(r) | TrySendError::Disconnected(r)) = tx.try_send(report)
            {
                ctx.stats.borrow_mut().restore(r);
            }
            index += 1;
        }
    };
    futures_lite::future::or(all_done, ticker).await;
    let at = shared.start.elapsed();
    let index = (at.as_nanos() / interval.as_nanos().max(1)) as u64;
    let report = ctx.stats.borrow_mut().report(shard, index, true, at);
    // The collector drains until every sender is gone: a blocking send is
    // bounded by its next receive.
    let _ = tx.send(report);
}
