//! The shard runtime: one pinned glommio executor per configured core, each
//! owning its spool, queues, listeners and connections.
//!
//! # Start
//! [`Engine::start`] binds every listening socket on the calling thread
//! (so a port in use fails at once, naming the address), then starts one
//! executor per core with [`glommio::Placement::Fixed`]. Each shard:
//! 1. hands its sockets to a helper thread that answers
//!    `421 4.3.2 ... (recovering spool)` (see [`crate::inject::recovering`]);
//! 2. opens its spool `<spool>/shard-<n>` (recovery: a blocking scan on the
//!    shard's thread, which is why the helper answers meanwhile) and starts
//!    the group-commit task;
//! 3. restores every live message into its queues, yielding as it goes;
//! 4. takes its sockets back and serves injection.
//!
//! # Stop
//! SIGTERM/SIGINT set one process-wide flag ([`Engine::stop_flag`]); each
//! shard looks at it every [`STOP_POLL`] (the only cross-thread state, read
//! off the hot path) and then: stops accepting, lets connections finish the
//! transaction in flight and close at their next quiet point (bounded by
//! [`DRAIN_TIMEOUT`]), waits for pending commits, closes the spool (a
//! final sync) and returns. A restart recovers every queue from the spool.
//!
//! # Shaping
//! Before the shards start, [`Engine::start`] loads the shaping rules
//! ([`ActiveRules`]: the `[delivery] shaping` file, or built-in rules from
//! `[delivery]`) and builds the leasing mesh
//! (`sluice_shaping::transport::mesh`, [`SHAPING_CHANNEL_CAPACITY`]
//! messages per inbox); each shard's link moves into its executor and
//! delivery runs with it (`deliver::start_with`). The rules' max age is
//! installed in the queues before the spool is restored, so restored
//! recipients expire by their domain's rule like new ones.
//!
//! # Routing
//! The domain-to-shard function is [`home_shard`]: FNV-1a of the
//! lower-cased domain modulo the shard count (shaping's `home_shard`), so an
//! injector that splits its batch by domain connects to
//! `shard_port_base + home_shard(domain)` (`sluice route DOMAIN`).

pub mod helpers;
mod listen;
mod rules;
mod shard;
mod shutdown;

// std
use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

// external
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use sluice_spool::fs::FsStorage;
use sluice_spool::Spool;

// crate
use crate::config::{Config, Durability};
use crate::deliver::{DeliveryContext, DeliveryStats, ShapingLink};
use crate::inject::InjectStats;
use crate::queue::Queues;

pub use self::listen::{bind_all, shard_port, ListenError, ShardListeners};
pub use self::rules::{ActiveRules, BUILTIN_RULES};
pub use self::shutdown::Shutdown;

/// The spool type every shard uses: real files, synced through io_uring.
pub type ShardSpool = Spool<FsStorage>;

/// How often a shard looks at the process-wide stop flag.
pub const STOP_POLL: Duration = Duration::from_millis(50);
/// Longest a stopping shard waits for its connections and commits.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// glommio io_memory per executor: the engine does no DMA file I/O (the
/// spool is mapped, syncs need no buffers), and the memlock limit of the
/// development machines is 8 MiB per user.
pub const IO_MEMORY_BYTES: usize = 512 << 10;
/// Messages each shard's shaping inbox holds. Leasing traffic is a few
/// messages per lease period per limit; a full inbox only delays (the
/// sender keeps a backlog), it never drops.
pub const SHAPING_CHANNEL_CAPACITY: usize = 4096;

/// What one shard owns and shares with its tasks (injection and delivery).
#[derive(Clone)]
pub struct ShardContext {
    /// This shard's index, `0..count`.
    pub index: u32,
    /// Number of shards.
    pub count: u32,
    /// The validated configuration.
    pub config: Rc<Config>,
    /// The shard's spool (an `Rc` handle).
    pub spool: ShardSpool,
    /// The shard's queues.
    pub queues: Rc<RefCell<Queues>>,
    /// Set when the shard stops: delivery tasks end at their next quiet point.
    pub shutdown: Shutdown,
}

impl ShardContext {
    /// What delivery needs from the shard ([`crate::deliver::start`]).
    pub fn delivery_context(&self) -> DeliveryContext {
        let stop = self.shutdown.clone();
        DeliveryContext {
            index: self.index,
            config: Rc::clone(&self.config),
            spool: self.spool.clone(),
            queues: Rc::clone(&self.queues),
            stopping: Rc::new(move || stop.is_set()),
        }
    }
}

/// The home shard of a recipient domain (case-insensitive): where its
/// queue lives when the injector routes by domain, and where shaping keeps
/// the domain's own limits ([`sluice_shaping::lease::domain_shard`]), so a
/// routed domain's limits cost no cross-shard messages.
pub fn home_shard(domain: &str, shards: u32) -> u32 {
    sluice_shaping::lease::domain_shard(domain, shards)
}

/// The CPUs that run shards: the configured list, or every CPU this
/// process may run on.
pub fn resolve_cores(config: &Config) -> Vec<usize> {
    match &config.cores {
        Some(list) => list.clone(),
        None => {
            let mut ids: Vec<usize> = core_affinity::get_core_ids()
                .unwrap_or_default()
                .into_iter()
                .map(|c| c.id)
                .collect();
            if ids.is_empty() {
                let n = std::thread::available_parallelism().map_or(1, |n| n.get());
                ids = (0..n).collect();
            }
            ids
        }
    }
}

/// Number of shards the configuration yields.
pub fn shard_count(config: &Config) -> u32 {
    u32::try_from(resolve_cores(config).len()).unwrap_or(u32::MAX)
}

/// Creates the spool directory (0700) once, before the shards start:
/// shards opening `<dir>/shard-<n>` at the same moment would otherwise race
/// to create the parent. An existing directory is left to the spool's own
/// permission check.
fn create_spool_dir(path: &std::path::Path) -> Result<(), RuntimeError> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(RuntimeError::SpoolDir {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Where everything is, printed at start.
#[derive(Debug, Clone)]
pub struct Layout {
    /// One shard per entry, pinned to that CPU.
    pub cores: Vec<usize>,
    /// The shared injection address (the real port when 0 was asked).
    pub listen: SocketAddr,
    /// Per-shard ports, when on.
    pub shard_port_base: Option<u16>,
    /// Spool directory.
    pub spool_dir: PathBuf,
    /// Durability mode.
    pub durability: Durability,
    /// The active shaping rules, described ([`ActiveRules::describe`]).
    pub shaping: String,
    /// Where helper threads run ([`helpers::Placement::describe`]).
    pub helpers: String,
}

impl Layout {
    /// Human-readable description, one fact per line.
    pub fn describe(&self, config: &Config) -> String {
        let mut s = String::new();
        let n = self.cores.len();
        let _ = writeln!(
            s,
            "sluice {}: {n} shard(s) pinned to CPU(s) {:?}",
            env!("CARGO_PKG_VERSION"),
            self.cores
        );
        let _ = writeln!(s, "  hostname:  {}", config.hostname);
        let _ = writeln!(s, "  {}", self.helpers);
        let _ = writeln!(
            s,
            "  inject:    {} (shared by every shard, SO_REUSEPORT)",
            self.listen
        );
        match self.shard_port_base {
            Some(base) => {
                let last = shard_port(base, n.saturating_sub(1) as u32).unwrap_or(base);
                let _ = writeln!(
                    s,
                    "  per-shard: ports {base}..={last} (shard n on {base}+n; `sluice route DOMAIN`)"
                );
            }
            None => {
                let _ = writeln!(s, "  per-shard: off (set inject.shard_port_base)");
            }
        }
        let _ = writeln!(
            s,
            "  spool:     {}/shard-<n> ({} MiB segments, commit window {:?})",
            self.spool_dir.display(),
            config.segment_bytes >> 20,
            config.commit_window
        );
        match self.durability {
            Durability::Fdatasync => {
                let _ = writeln!(
                    s,
                    "  durability: fdatasync (every 250 follows a completed sync)"
                );
            }
            Durability::NoneUnsafe => {
                let _ = writeln!(
                    s,
                    "  durability: NONE-UNSAFE: NO SYNC. A CRASH LOSES ACKNOWLEDGED MAIL. BENCHMARKS ONLY."
                );
            }
        }
        let _ = writeln!(s, "  shaping:   {}", self.shaping);
        let _ = writeln!(s, "  dkim:      {}", config.dkim.describe());
        if config.routes.is_empty() {
            let _ = writeln!(s, "  routes:    none (MX delivery)");
        }
        for r in &config.routes {
            let _ = writeln!(s, "  route:     {:?} -> {:?}", r.pattern, r.hosts);
        }
        s
    }
}

/// Why the engine could not start or ended badly.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A socket could not be bound.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// No CPU to run on.
    #[error("no CPU to run a shard on; list some with `cores = [0, 1]` or --cores")]
    NoCores,
    /// A shard's executor could not be started.
    #[error("cannot start shard {shard} on CPU {cpu}: {reason} (check `ulimit -l`, io_uring support and the CPU id)")]
    Executor {
        /// Shard index.
        shard: u32,
        /// Its CPU.
        cpu: usize,
        /// What glommio said.
        reason: String,
    },
    /// The spool directory could not be created.
    #[error("cannot create the spool directory {path}: {source}")]
    SpoolDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The shaping rules file is unreadable or invalid (every problem is
    /// listed with the file and key path).
    #[error("shaping rules: {0}")]
    Shaping(#[from] sluice_shaping::config::ConfigError),
    /// A shard failed (its spool could not be opened, ...).
    #[error("shard {shard}: {reason}")]
    Shard {
        /// Shard index.
        shard: u32,
        /// What went wrong and what to do.
        reason: String,
    },
}

/// What a shard did, returned when it stops.
#[derive(Debug, Clone, Default)]
pub struct ShardReport {
    /// Shard index.
    pub shard: u32,
    /// Live messages recovered from the spool at start.
    pub recovered: u64,
    /// Connections answered `421` while recovering.
    pub refused_while_recovering: u64,
    /// Injection counters.
    pub inject: InjectStats,
    /// Delivery counters.
    pub delivery: DeliveryStats,
}

/// A running engine.
pub struct Engine {
    layout: Layout,
    stop: Arc<AtomicBool>,
    handles: Vec<ExecutorJoinHandle<Result<ShardReport, String>>>,
    admin: Option<crate::admin::Admin>,
}

impl Engine {
    /// Binds the listeners and starts every shard.
    pub fn start(config: Config) -> Result<Engine, RuntimeError> {
        let cores = resolve_cores(&config);
        if cores.is_empty() {
            return Err(RuntimeError::NoCores);
        }
        let count = u32::try_from(cores.len()).map_err(|_| RuntimeError::NoCores)?;
        let active = ActiveRules::load(&config, count)?;
        let helpers = helpers::record(&cores);
        create_spool_dir(&config.spool_dir)?;
        // Standing admin orders, read once; every shard applies them.
        let admin_state =
            crate::admin::state::load(&config.spool_dir, crate::deliver::now_unix_ms());
        let sets = bind_all(config.listen, config.shard_port_base, count)?;
        let listen = sets[0].shared.local_addr().map_err(|source| ListenError {
            addr: config.listen,
            source,
        })?;
        let layout = Layout {
            cores: cores.clone(),
            listen,
            shard_port_base: config.shard_port_base,
            spool_dir: config.spool_dir.clone(),
            durability: config.durability,
            shaping: active.describe(),
            helpers: helpers.describe(),
        };
        // One link per shard: `mesh(count, ..)` yields `count` of them.
        let links = sluice_shaping::transport::mesh(count, SHAPING_CHANNEL_CAPACITY);
        // Admin mailboxes: operator commands and counter snapshots only.
        let (admin_tx, admin_rx) = crate::admin::mailboxes(count);
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::with_capacity(cores.len());
        for (index, (((cpu, listeners), link), mailbox)) in cores
            .iter()
            .copied()
            .zip(sets)
            .zip(links)
            .zip(admin_rx)
            .enumerate()
        {
            let index = index as u32;
            let config = config.clone();
            let stop_flag = Arc::clone(&stop);
            let admin_state = admin_state.clone();
            let shaping = ShapingLink {
                rules: active.rules.clone(),
                link,
                shards: count,
            };
            let spawned = LocalExecutorBuilder::new(Placement::Fixed(cpu))
                .name(&format!("sluice-{index}"))
                .io_memory(IO_MEMORY_BYTES)
                .spawn(move || async move {
                    let r = shard::run(
                        index,
                        count,
                        Rc::new(config),
                        listeners,
                        shaping,
                        Arc::clone(&stop_flag),
                        mailbox,
                        admin_state,
                    )
                    .await;
                    if r.is_err() {
                        // One shard failing stops the others: a partial
                        // engine would silently refuse its share of mail.
                        stop_flag.store(true, Ordering::Relaxed);
                    }
                    r
                });
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    for h in handles {
                        let _ = h.join();
                    }
                    return Err(RuntimeError::Executor {
                        shard: index,
                        cpu,
                        reason: e.to_string(),
                    });
                }
            }
        }
        let admin = crate::admin::Admin::start(
            &config.admin,
            admin_tx,
            config.bounce_rules_file.clone(),
            config.shaping_file.clone(),
            Arc::clone(&stop),
            crate::admin::state::Store::new(config.spool_dir.clone(), admin_state),
        );
        if let Some(a) = &admin {
            log::info!(
                "admin: http://{}/metrics and the admin API (sluice queues, top, ...)",
                a.addr
            );
        }
        Ok(Engine {
            layout,
            stop,
            handles,
            admin,
        })
    }

    /// Where everything is.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Set it (signal handlers do) to stop every shard gracefully.
    pub fn stop_flag(&self) -> &Arc<AtomicBool> {
        &self.stop
    }

    /// Waits for every shard to stop; the first failure is returned after
    /// all have stopped.
    pub fn wait(mut self) -> Result<Vec<ShardReport>, RuntimeError> {
        let result = self.wait_shards();
        if let Some(admin) = self.admin {
            self.stop.store(true, Ordering::Relaxed);
            admin.join();
        }
        result
    }

    /// The admin listener's address, when it runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.addr)
    }

    fn wait_shards(&mut self) -> Result<Vec<ShardReport>, RuntimeError> {
        let mut reports = Vec::with_capacity(self.handles.len());
        let mut first_error = None;
        for (index, h) in std::mem::take(&mut self.handles).into_iter().enumerate() {
            let shard = index as u32;
            match h.join() {
                Ok(Ok(r)) => reports.push(r),
                Ok(Err(reason)) => {
                    first_error.get_or_insert(RuntimeError::Shard { shard, reason });
                }
                Err(e) => {
                    first_error.get_or_insert(RuntimeError::Shard {
                        shard,
                        reason: format!("executor failed: {e}"),
                    });
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(reports),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_shard_ignores_case_and_is_where_shaping_keeps_domain_limits() {
        for shards in 1..8 {
            for d in ["example.com", "gmail.com", "x.test"] {
                let h = home_shard(d, shards);
                assert!(h < shards);
                assert_eq!(h, home_shard(&d.to_ascii_uppercase(), shards));
                assert_eq!(h, sluice_shaping::lease::domain_shard(d, shards));
            }
        }
    }

    #[test]
    fn configured_cores_are_used_as_given() {
        let c = Config::parse("t.toml", "cores = [1, 0]", None).expect("valid");
        assert_eq!(resolve_cores(&c), vec![1, 0]);
        assert_eq!(shard_count(&c), 2);
        let all = Config::parse("t.toml", "cores = \"all\"", None).expect("valid");
        assert!(shard_count(&all) >= 1);
    }
}
