//! Turning what was read into findings: a severity, what was seen, what to do
//! about it and the exact command that does it. Pure functions of the data
//! gathered by [`crate::inspect`], so every rule is testable with fixtures.

use serde::Serialize;

use crate::limits::Limits;
use crate::nic::Nic;
use crate::storage::StorageReport;
use crate::sysfs::{format_bytes, format_cpu_list};
use crate::topology::Topology;
use crate::uring::UringProbe;

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
        format!("One engine shard per CPU at most; start the sweep at 1 and go up to {cores}"),
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

/// Findings about process limits and kernel tunables; `shards` sizes the
/// locked-memory need.
pub fn limit_findings(limits: &Limits, shards: usize) -> Vec<Finding> {
    let mut out = Vec::new();
    out.push(memlock_finding(limits, shards));
    out.push(match limits.nofile {
        None => finding(
            "nofile",
            "limits",
            Severity::Unknown,
            "RLIMIT_NOFILE unreadable",
            "Make sure the service allows ~1M open files",
            None,
        ),
        Some(limit) => {
            let soft = limit.soft.unwrap_or(u64::MAX);
            let target = limits.nr_open.unwrap_or(NOFILE_WANTED).min(NOFILE_WANTED);
            let observed = format!(
                "open files: soft {}, hard {}",
                limit.soft.map_or("unlimited".to_owned(), |v| v.to_string()),
                limit.hard.map_or("unlimited".to_owned(), |v| v.to_string())
            );
            if soft >= NOFILE_LOW {
                finding(
                    "nofile",
                    "limits",
                    Severity::Ok,
                    observed,
                    "Nothing to do",
                    None,
                )
            } else {
                finding(
                    "nofile",
                    "limits",
                    Severity::Warning,
                    observed,
                    format!(
                        "Every injection and delivery connection and every spool segment is a \
                         file; raise the limit to {target} (systemd: LimitNOFILE={target})"
                    ),
                    Some(format!("ulimit -n {target}")),
                )
            }
        }
    });
    for (id, name, value) in [
        ("somaxconn", "net.core.somaxconn", limits.somaxconn),
        (
            "syn-backlog",
            "net.ipv4.tcp_max_syn_backlog",
            limits.tcp_max_syn_backlog,
        ),
    ] {
        out.push(match value {
            None => finding(
                id,
                "network",
                Severity::Unknown,
                format!("{name} unreadable"),
                format!("Check {name} on the host"),
                None,
            ),
            Some(v) if v < BACKLOG_LOW => finding(
                id,
                "network",
                Severity::Warning,
                format!("{name} = {v}"),
                "Bulk injectors open many connections at once; a short backlog drops SYNs and \
                 costs a 1 s retransmit",
                Some(format!("sysctl -w {name}=65535")),
            ),
            Some(v) => finding(
                id,
                "network",
                Severity::Ok,
                format!("{name} = {v}"),
                "Nothing to do",
                None,
            ),
        });
    }
    out.push(ports_finding(limits));
    out.push(match limits.tcp_tw_reuse {
        Some(1) => finding(
            "tw-reuse",
            "network",
            Severity::Ok,
            "net.ipv4.tcp_tw_reuse = 1",
            "Nothing to do",
            None,
        ),
        Some(value) => finding(
            "tw-reuse",
            "network",
            Severity::Info,
            format!(
                "net.ipv4.tcp_tw_reuse = {value} ({})",
                if value == 2 { "loopback only" } else { "off" }
            ),
            "Closed delivery connections hold their port in TIME_WAIT for 60 s; with reuse on, \
             new outbound connections may take such ports (safe with TCP timestamps)",
            Some("sysctl -w net.ipv4.tcp_tw_reuse=1".to_owned()),
        ),
        None => finding(
            "tw-reuse",
            "network",
            Severity::Unknown,
            "net.ipv4.tcp_tw_reuse unreadable",
            "Check it on the host",
            None,
        ),
    });
    if let Some(count) = limits.max_map_count {
        let low = count < 65_530;
        out.push(finding(
            "max-map-count",
            "limits",
            if low { Severity::Warning } else { Severity::Ok },
            format!("vm.max_map_count = {count}"),
            if low {
                "Every mapped spool segment is one mapping; restore at least the default"
            } else {
                "Nothing to do"
            },
            low.then(|| "sysctl -w vm.max_map_count=262144".to_owned()),
        ));
    }
    out
}

fn memlock_finding(limits: &Limits, shards: usize) -> Finding {
    let Some(limit) = limits.memlock_bytes else {
        return finding(
            "memlock",
            "limits",
            Severity::Unknown,
            "RLIMIT_MEMLOCK unreadable",
            "glommio needs at least 512 KiB of locked memory",
            Some("ulimit -l unlimited".to_owned()),
        );
    };
    let soft = limit.soft.unwrap_or(u64::MAX);
    let shown = limit.soft.map_or("unlimited".to_owned(), format_bytes);
    let wanted = GLOMMIO_IO_MEMORY_BYTES * GLOMMIO_RINGS_PER_EXECUTOR * shards.max(1) as u64;
    let command = Some("ulimit -l unlimited".to_owned());
    let systemd = "(systemd: LimitMEMLOCK=infinity)";
    if soft < GLOMMIO_MEMLOCK_MIN_BYTES {
        finding(
            "memlock",
            "limits",
            Severity::Critical,
            format!("locked memory limit {shown}"),
            format!("glommio refuses to start an executor below 512 KiB; raise it {systemd}"),
            command,
        )
    } else if limits.cap_ipc_lock == Some(true) || soft >= wanted {
        finding(
            "memlock",
            "limits",
            Severity::Ok,
            format!(
                "locked memory limit {shown}{}",
                if limits.cap_ipc_lock == Some(true) {
                    ", CAP_IPC_LOCK held"
                } else {
                    ""
                }
            ),
            "Nothing to do",
            None,
        )
    } else {
        finding(
            "memlock",
            "limits",
            Severity::Warning,
            format!("locked memory limit {shown}, no CAP_IPC_LOCK"),
            format!(
                "glommio registers its I/O memory (io_memory, 10 MiB by default) with 3 rings per \
                 executor; {shards} shard(s) want about {}, else registration is skipped and \
                 storage I/O copies. Raise the limit {systemd} or lower io_memory",
                format_bytes(wanted)
            ),
            command,
        )
    }
}

fn ports_finding(limits: &Limits) -> Finding {
    let (Some((first, last)), Some(count)) =
        (limits.ephemeral_ports, limits.ephemeral_port_count())
    else {
        return finding(
            "ephemeral-ports",
            "network",
            Severity::Unknown,
            "net.ipv4.ip_local_port_range unreadable",
            "Check it on the host",
            None,
        );
    };
    let rate = u64::from(count) / TIME_WAIT_S;
    let observed = format!(
        "ports {first}-{last}: at most {count} concurrent connections from one source address to \
         one MX address, and about {rate} new ones/s sustained (TIME_WAIT {TIME_WAIT_S} s)"
    );
    let command = Some("sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\"".to_owned());
    if count < 28_232 {
        finding(
            "ephemeral-ports",
            "network",
            Severity::Warning,
            observed,
            "Narrower than the Linux default: widen it, or add source addresses",
            command,
        )
    } else if count < 60_000 {
        finding(
            "ephemeral-ports",
            "network",
            Severity::Info,
            observed,
            "Enough for normal shaping limits; widen it if one destination takes thousands of \
             connections, or add source addresses",
            command,
        )
    } else {
        finding(
            "ephemeral-ports",
            "network",
            Severity::Ok,
            observed,
            "Nothing to do",
            None,
        )
    }
}

/// Findings about the spool directory; `None` when `--spool` was not given.
pub fn storage_findings(storage: Option<&StorageReport>) -> Vec<Finding> {
    let Some(report) = storage else {
        return vec![finding(
            "spool",
            "storage",
            Severity::Unknown,
            "spool directory not examined",
            "Pass the spool directory to measure its filesystem, fallocate and fdatasync",
            Some("sluice-tune inspect --spool /var/spool/sluice".to_owned()),
        )];
    };
    let dir = report.dir.display();
    let mut out = Vec::new();
    out.push(match report.filesystem.as_deref() {
        None => finding(
            "spool-fs",
            "storage",
            Severity::Unknown,
            format!("{dir}: statfs failed"),
            "Check that the directory exists and is readable",
            None,
        ),
        Some(fs @ ("tmpfs" | "ramfs")) => finding(
            "spool-fs",
            "storage",
            Severity::Critical,
            format!("{dir} is on {fs}"),
            "Memory-backed: a reboot loses every message that got its 250. Put the spool on a \
             disk filesystem (xfs or ext4)",
            None,
        ),
        Some("overlayfs") => finding(
            "spool-fs",
            "storage",
            Severity::Warning,
            format!("{dir} is on overlayfs (a container layer)"),
            "Mount a volume for the spool: the container layer is slow to sync and is discarded \
             with the container",
            None,
        ),
        Some(fs @ ("nfs" | "cifs" | "fuse" | "9p")) => finding(
            "spool-fs",
            "storage",
            Severity::Warning,
            format!("{dir} is on {fs}"),
            "Network and FUSE filesystems make fdatasync slow and its guarantees vary; use a \
             local xfs or ext4",
            None,
        ),
        Some(fs @ ("btrfs" | "zfs" | "bcachefs")) => finding(
            "spool-fs",
            "storage",
            Severity::Info,
            format!("{dir} is on {fs} (copy-on-write)"),
            "fallocate cannot promise space under copy-on-write and syncs cost more; xfs or \
             ext4 suit an append-only spool better",
            None,
        ),
        Some(fs) => finding(
            "spool-fs",
            "storage",
            Severity::Ok,
            format!("{dir} is on {fs}"),
            "Nothing to do",
            None,
        ),
    });
    if let Some(free) = report.free_bytes {
        let total = report
            .total_bytes
            .map_or("unknown".to_owned(), format_bytes);
        let observed = format!("{} free of {total}", format_bytes(free));
        let severity = if free < FREE_CRITICAL_BYTES {
            Severity::Critical
        } else if free < FREE_LOW_BYTES {
            Severity::Warning
        } else {
            Severity::Ok
        };
        out.push(finding(
            "spool-free",
            "storage",
            severity,
            observed,
            if severity == Severity::Ok {
                "Nothing to do".to_owned()
            } else {
                "The engine answers 452 4.3.1 when the spool cannot reserve a segment; free \
                 space or move the spool"
                    .to_owned()
            },
            None,
        ));
    }
    out.push(match report.fallocate_ok {
        Some(true) => finding(
            "spool-fallocate",
            "storage",
            Severity::Ok,
            "fallocate works",
            "Nothing to do",
            None,
        ),
        Some(false) => finding(
            "spool-fallocate",
            "storage",
            Severity::Critical,
            format!(
                "fallocate failed: {}",
                report.fallocate_error.as_deref().unwrap_or("unknown error")
            ),
            "The spool reserves each segment with fallocate so a full disk gives 452, not \
             SIGBUS under the mapping; use a filesystem that supports it",
            None,
        ),
        None => finding(
            "spool-fallocate",
            "storage",
            Severity::Unknown,
            "fallocate not tested",
            "Check the spool directory",
            None,
        ),
    });
    out.push(match &report.sync {
        Some(sync) => {
            let slow = sync.median_us > SYNC_MEDIAN_SLOW_US || sync.p99_us > SYNC_P99_SLOW_US;
            let commits_per_s = 1_000_000 / sync.median_us.max(1);
            finding(
                "spool-fdatasync",
                "storage",
                if slow {
                    Severity::Warning
                } else {
                    Severity::Ok
                },
                format!(
                    "fdatasync after a {} write: median {} us, p99 {} us, max {} us over {} \
                     rounds (at most ~{commits_per_s} group commits/s per shard)",
                    "4 KiB", sync.median_us, sync.p99_us, sync.max_us, sync.count
                ),
                format!(
                    "Every 250 waits for one sync: set the spool's commit_window near the median \
                     (commit_window = \"{}us\"){}",
                    sync.median_us.max(100),
                    if slow {
                        "; this device is slow to sync: prefer NVMe with power-loss protection"
                    } else {
                        ""
                    }
                ),
                None,
            )
        }
        None => finding(
            "spool-fdatasync",
            "storage",
            Severity::Unknown,
            format!(
                "fdatasync not measured: {}",
                report.sync_error.as_deref().unwrap_or("unknown error")
            ),
            "Check that the spool directory is writable",
            None,
        ),
    });
    out.push(match &report.write {
        Some(write) => finding(
            "spool-write",
            "storage",
            Severity::Info,
            format!(
                "sequential write {:.0} MiB/s ({} {} in {:.2} s, then fdatasync)",
                write.mib_per_s,
                format_bytes(write.bytes),
                if write.direct {
                    "with O_DIRECT"
                } else {
                    "buffered (O_DIRECT refused)"
                },
                write.seconds
            ),
            format!(
                "Ceiling of about {:.0} 2 KiB messages/s of spool appends on this device",
                write.mib_per_s * 512.0
            ),
            None,
        ),
        None => finding(
            "spool-write",
            "storage",
            Severity::Unknown,
            format!(
                "write bandwidth not measured: {}",
                report.write_error.as_deref().unwrap_or("unknown error")
            ),
            "Check that the spool directory is writable",
            None,
        ),
    });
    out
}

/// Findings about network interfaces; `cpus` is the online CPU count.
pub fn nic_findings(nics: &[Nic], cpus: usize, nodes: usize) -> Vec<Finding> {
    if nics.is_empty() {
        return vec![finding(
            "nic",
            "nic",
            Severity::Unknown,
            "no network interface with a device found (container or loopback only)",
            "Nothing to check here; run on the host to see NIC queues and IRQs",
            None,
        )];
    }
    let mut out = Vec::new();
    for nic in nics {
        let irq_cpus = nic.irq_cpus();
        let observed = format!(
            "{} ({}, {}{}): {} rx / {} tx queue(s), {} IRQ(s){}{}",
            nic.name,
            nic.driver.as_deref().unwrap_or("unknown driver"),
            nic.operstate.as_deref().unwrap_or("state unknown"),
            nic.speed_mbps
                .map_or(String::new(), |s| format!(", {s} Mbit/s")),
            nic.rx_queues,
            nic.tx_queues,
            nic.irqs.len(),
            if irq_cpus.is_empty() {
                String::new()
            } else {
                format!(" on CPUs {}", format_cpu_list(&irq_cpus))
            },
            nic.numa_node
                .map_or(String::new(), |n| format!(", NUMA node {n}")),
        );
        let id = format!("nic-{}", nic.name);
        if nic.rx_queues <= 1 && cpus > 1 && nic.rps_queues == 0 {
            let mask = cpu_mask_hex(cpus);
            out.push(finding(
                &id,
                "nic",
                Severity::Warning,
                observed,
                "One receive queue: every packet is processed on one CPU. Spread receive \
                 processing with RPS (or enable more queues in the driver)",
                Some(format!(
                    "echo {mask} > /sys/class/net/{}/queues/rx-0/rps_cpus",
                    nic.name
                )),
            ));
        } else if nic.rx_queues < cpus && nic.rps_queues == 0 {
            out.push(finding(
                &id,
                "nic",
                Severity::Info,
                observed,
                "Fewer receive queues than CPUs: shards on CPUs without a queue get their \
                 packets from another CPU; raise the queue count if the driver allows",
                Some(format!("ethtool -L {} combined {cpus}", nic.name)),
            ));
        } else if let (Some(node), true) = (nic.numa_node, nodes > 1) {
            out.push(finding(
                &id,
                "nic",
                Severity::Info,
                observed,
                format!("Place shards on node {node} first (numa-local) to keep traffic local"),
                Some(format!(
                    "sluice-tune layouts --shards {cpus} --prefer-node {node}"
                )),
            ));
        } else {
            out.push(finding(
                &id,
                "nic",
                Severity::Ok,
                observed,
                "Nothing to do",
                None,
            ));
        }
    }
    out
}

/// The hexadecimal CPU mask selecting CPUs `0..cpus`, in the kernel's
/// comma-separated 32-bit groups (`ff,ffffffff`).
pub fn cpu_mask_hex(cpus: usize) -> String {
    let mut groups = Vec::new();
    let mut remaining = cpus;
    while remaining > 0 || groups.is_empty() {
        let bits = remaining.min(32);
        let group: u32 = if bits == 32 {
            u32::MAX
        } else {
            (1u32 << bits) - 1
        };
        groups.push(group);
        remaining -= bits;
    }
    let mut text: Vec<String> = groups.iter().rev().map(|g| format!("{g:08x}")).collect();
    // The kernel prints the leading group without zero padding.
    if let Some(first) = text.first_mut() {
        *first = first.trim_start_matches('0').to_owned();
        if first.is_empty() {
            *first = "0".to_owned();
        }
    }
    text.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(cpu_mask_hex(2), "3");
        assert_eq!(cpu_mask_hex(32), "ffffffff");
        assert_eq!(cpu_mask_hex(40), "ff,ffffffff");
        assert_eq!(cpu_mask_hex(0), "0");
    }
}
