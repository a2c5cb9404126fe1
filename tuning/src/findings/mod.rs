//! Turning what was read into findings: a severity, what was seen, what to do
//! about it and the exact command that does it. Pure functions of the data
//! gathered by [`crate::inspect`], so every rule is testable with fixtures.

use serde::Serialize;

use crate::sysfs::format_cpu_list;
use crate::topology::Topology;
use crate::uring::UringProbe;

mod io;
mod limits;

pub use io::{cpu_mask_hex, nic_findings, storage_findings};
pub use limits::limit_findings;

/// glommio refuses to build an executor below this `RLIMIT_MEMLOCK`
/// (`MIN_MEMLOCK_LIMIT` in glommio 0.9 `sys/uring.rs`).
pub const GLOMMIO_MEMLOCK_MIN_BYTES: u64 = 512 << 10;

/// glommio's default `io_memory`, registered with each of its three rings
/// (main, poll, latency) per executor.
pub const GLOMMIO_IO_MEMORY_BYTES: u64 = 10 << 20;

/// Rings per glommio executor that register `io_memory`.
pub const GLOMMIO_RINGS_PER_EXECUTOR: u64 = 3;

/// Open files we consider comfortable: inbound and outbound connections of
/// every shard plus spool segments.
pub const NOFILE_WANTED: u64 = 1 << 20;

/// Below this many, the open-files limit is worth raising.
pub const NOFILE_LOW: u64 = 65_536;

/// Listen and SYN backlog below which bursts of injection connections are
/// dropped.
pub const BACKLOG_LOW: u64 = 4096;

/// How long a closed outbound connection holds its port (Linux TIME_WAIT,
/// fixed at 60 s).
pub const TIME_WAIT_S: u64 = 60;

/// Median fdatasync above which group commit dominates injection latency.
pub const SYNC_MEDIAN_SLOW_US: u64 = 2_000;

/// p99 fdatasync above which injection p99 suffers (the mission targets an
/// injection `250` p99 under 5 ms).
pub const SYNC_P99_SLOW_US: u64 = 5_000;

/// Free space below which the spool is about to answer `452`.
pub const FREE_CRITICAL_BYTES: u64 = 1 << 30;

/// Free space below which a backlog of deferred mail can fill the disk.
pub const FREE_LOW_BYTES: u64 = 10 << 30;

const _: () = assert!(FREE_CRITICAL_BYTES < FREE_LOW_BYTES);
const _: () = assert!(SYNC_MEDIAN_SLOW_US <= SYNC_P99_SLOW_US);
const _: () = assert!(NOFILE_LOW < NOFILE_WANTED);

/// How much a finding matters. Ordered from least to most urgent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Fine as it is.
    Ok,
    /// Worth knowing; nothing to change unless the recommendation fits.
    Info,
    /// Could not be read here (container, missing file, option not given).
    Unknown,
    /// Costs throughput, latency or headroom.
    Warning,
    /// Sluice will not start, or will not be durable, as things stand.
    Critical,
}

impl Severity {
    /// The label in the readable report.
    pub fn label(self) -> &'static str {
        match self {
            Severity::Ok => "ok",
            Severity::Info => "info",
            Severity::Unknown => "unknown",
            Severity::Warning => "WARN",
            Severity::Critical => "CRITICAL",
        }
    }
}

/// One thing the operator should know.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable identifier (`memlock`, `spool-fdatasync`...).
    pub id: String,
    /// Group: `cpu`, `io_uring`, `limits`, `network`, `storage`, `nic`.
    pub area: String,
    /// How much it matters.
    pub severity: Severity,
    /// What was observed.
    pub observed: String,
    /// What to do (or why nothing needs doing).
    pub recommendation: String,
    /// The command that applies the recommendation, when there is one.
    pub command: Option<String>,
}

fn finding(
    id: &str,
    area: &str,
    severity: Severity,
    observed: impl Into<String>,
    recommendation: impl Into<String>,
    command: Option<String>,
) -> Finding {
    Finding {
        id: id.to_owned(),
        area: area.to_owned(),
        severity,
        observed: observed.into(),
        recommendation: recommendation.into(),
        command,
    }
}

/// Findings about CPUs. `allowed` is this process's CPU set, `governor` the
/// cpufreq governor of CPU 0.
pub fn cpu_findings(
    topology: Result<&Topology, &str>,
    allowed: Option<&[u32]>,
    governor: Option<&str>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let topology = match topology {
        Ok(topology) => topology,
        Err(error) => {
            out.push(finding(
                "cpus",
                "cpu",
                Severity::Unknown,
                format!("topology unknown: {error}"),
                "Mount sysfs (or run outside the container) so layouts can follow the hardware",
                None,
            ));
            return out;
        }
    };
    let cores = topology.core_count();
    out.push(finding(
        "cpus",
        "cpu",
        Severity::Info,
        topology.summary(),
        format!(
            "At most one shard per CPU: sweep shard counts from 1 to {}; one per physical core \
             ({cores}) is where throughput per shard usually stops growing",
            topology.cpu_count()
        ),
        Some(format!("sluice-tune layouts --shards {cores}")),
    ));
    if topology.threads_per_core() > 1 {
        out.push(finding(
            "smt",
            "cpu",
            Severity::Info,
            format!(
                "SMT on: {} threads per physical core",
                topology.threads_per_core()
            ),
            format!(
                "Siblings share a core's execution units and L1/L2: use the `spread` pinning \
                 (one shard per physical core) up to {cores} shards, and measure whether more \
                 shards on siblings still add throughput"
            ),
            Some(format!("sluice-tune layouts --shards {cores}")),
        ));
    } else {
        out.push(finding(
            "smt",
            "cpu",
            Severity::Ok,
            "no SMT siblings: every CPU is a physical core",
            "Nothing to do: compact and spread pinnings coincide",
            None,
        ));
    }
    if topology.nodes.len() > 1 {
        let per_node = cores / topology.nodes.len();
        out.push(finding(
            "numa",
            "cpu",
            Severity::Info,
            format!(
                "{} NUMA nodes: {}",
                topology.nodes.len(),
                topology
                    .nodes
                    .iter()
                    .map(|n| format!("node{} cpus {}", n.id, format_cpu_list(&n.cpus)))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            format!(
                "Up to {per_node} shards fit on one node's physical cores: use `numa-local` on the \
                 NIC's node so spool pages and socket buffers stay local; beyond that, spread"
            ),
            Some(format!("sluice-tune layouts --shards {per_node}")),
        ));
    } else {
        out.push(finding(
            "numa",
            "cpu",
            Severity::Ok,
            "one NUMA node",
            "Nothing to do: all memory is local",
            None,
        ));
    }
    let llc = topology.last_level_caches();
    out.push(finding(
        "caches",
        "cpu",
        if topology.caches.is_empty() {
            Severity::Unknown
        } else {
            Severity::Info
        },
        format!(
            "{}; {} last-level cache domain(s)",
            topology.cache_summary(),
            llc.len()
        ),
        "Shards exchange only small lease messages, so sharing a last-level cache is not \
         required; `spread` gives each shard more of it",
        None,
    ));
    let online: Vec<u32> = topology.cpus.iter().map(|c| c.id).collect();
    match allowed {
        Some(allowed) if allowed != online.as_slice() => out.push(finding(
            "cpu-affinity",
            "cpu",
            Severity::Warning,
            format!(
                "this process may run on CPUs {} of the online {} (cgroup cpuset or taskset)",
                format_cpu_list(allowed),
                format_cpu_list(&online)
            ),
            "Pin shards only to allowed CPUs, or widen the cpuset of the service",
            Some(format!("taskset -cp {} $$", format_cpu_list(&online))),
        )),
        Some(_) => out.push(finding(
            "cpu-affinity",
            "cpu",
            Severity::Ok,
            "this process may run on every online CPU",
            "Nothing to do",
            None,
        )),
        None => {}
    }
    if !topology.isolated.is_empty() {
        out.push(finding(
            "isolated",
            "cpu",
            Severity::Info,
            format!(
                "CPUs {} are isolated from the scheduler",
                format_cpu_list(&topology.isolated)
            ),
            "Pin engine shards to the isolated CPUs and helper threads elsewhere",
            None,
        ));
    }
    match governor {
        Some("performance") => out.push(finding(
            "cpufreq",
            "cpu",
            Severity::Ok,
            "cpufreq governor: performance",
            "Nothing to do",
            None,
        )),
        Some(other) => out.push(finding(
            "cpufreq",
            "cpu",
            Severity::Warning,
            format!("cpufreq governor: {other}"),
            "Frequency scaling adds latency after idle periods and noise to benchmarks",
            Some("cpupower frequency-set -g performance".to_owned()),
        )),
        None => out.push(finding(
            "cpufreq",
            "cpu",
            Severity::Unknown,
            "no cpufreq governor exposed (virtual machine or container)",
            "Nothing to do here; the hypervisor controls frequency",
            None,
        )),
    }
    out
}

/// Findings about io_uring.
pub fn uring_findings(probe: Option<&UringProbe>) -> Vec<Finding> {
    let Some(probe) = probe else {
        return vec![finding(
            "io_uring",
            "io_uring",
            Severity::Unknown,
            "not probed (inspecting a root other than this machine's)",
            "Run without --sys to probe the running kernel",
            None,
        )];
    };
    let mut out = Vec::new();
    let sysctl_fix = Some("sysctl -w kernel.io_uring_disabled=0".to_owned());
    match probe.disabled_sysctl {
        Some(0) | None => {}
        Some(1) => out.push(finding(
            "io_uring-disabled",
            "io_uring",
            Severity::Warning,
            "kernel.io_uring_disabled = 1: only members of kernel.io_uring_group may use io_uring",
            "Allow io_uring for the Sluice user (or add it to the io_uring group)",
            sysctl_fix.clone(),
        )),
        Some(other) => out.push(finding(
            "io_uring-disabled",
            "io_uring",
            Severity::Critical,
            format!("kernel.io_uring_disabled = {other}: io_uring is off"),
            "Sluice runs on io_uring and cannot start without it",
            sysctl_fix.clone(),
        )),
    }
    if !probe.available {
        out.push(finding(
            "io_uring",
            "io_uring",
            Severity::Critical,
            probe
                .setup_error
                .clone()
                .unwrap_or_else(|| "io_uring_setup failed".to_owned()),
            "Sluice needs io_uring (Linux 5.8 or later, not blocked by seccomp)",
            sysctl_fix,
        ));
        return out;
    }
    out.push(finding(
        "io_uring",
        "io_uring",
        Severity::Ok,
        format!(
            "available: {} opcodes supported (last {}), features {}",
            probe.supported_ops.len(),
            probe
                .last_op
                .map_or("unknown".to_owned(), crate::uring::opcode_name),
            probe.features.join(" ")
        ),
        "Nothing to do",
        None,
    ));
    if !probe.missing_required_ops.is_empty() {
        out.push(finding(
            "io_uring-ops",
            "io_uring",
            Severity::Critical,
            format!("missing opcodes: {}", probe.missing_required_ops.join(" ")),
            "The engine and spool issue these; upgrade to a kernel that supports them (5.8+)",
            None,
        ));
    }
    out
}
