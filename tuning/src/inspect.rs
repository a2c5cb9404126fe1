//! `sluice-tune inspect`: gather everything, derive the findings, render them
//! as text or JSON.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use crate::findings::{
    cpu_findings, limit_findings, nic_findings, storage_findings, uring_findings, Finding, Severity,
};
use crate::limits::Limits;
use crate::nic::{read_nics, Nic};
use crate::storage::{inspect_dir, StorageOptions, StorageReport};
use crate::sysfs::{field, parse_cpu_list, SysRoot};
use crate::topology::Topology;
use crate::uring::{probe, UringProbe};

/// What to inspect.
#[derive(Clone, Debug)]
pub struct InspectOptions {
    /// Root of `/sys` and `/proc` (the host, or a fixture tree).
    pub root: SysRoot,
    /// Spool directory to measure; skipped when `None`.
    pub spool: Option<PathBuf>,
    /// Bounds of the spool measurements.
    pub storage: StorageOptions,
    /// Shards planned, for sizing limits; every CPU when `None`.
    pub shards: Option<usize>,
}

/// The whole inspection, as printed with `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `sluice-tune` and its version.
    pub tool: String,
    /// Root that was read.
    pub root: PathBuf,
    /// `kernel.osrelease`.
    pub kernel: Option<String>,
    /// The topology, when it could be read.
    pub topology: Option<Topology>,
    /// Why it could not.
    pub topology_error: Option<String>,
    /// CPUs this process may run on (`Cpus_allowed_list`).
    pub allowed_cpus: Option<Vec<u32>>,
    /// cpufreq governor of CPU 0.
    pub cpufreq_governor: Option<String>,
    /// io_uring probe (only on the host).
    pub io_uring: Option<UringProbe>,
    /// Limits and tunables.
    pub limits: Limits,
    /// Spool directory measurements.
    pub storage: Option<StorageReport>,
    /// Network interfaces with a device.
    pub nics: Vec<Nic>,
    /// Everything worth saying, most urgent first within each area.
    pub findings: Vec<Finding>,
}

impl Report {
    /// The most urgent severity among the findings.
    pub fn worst(&self) -> Severity {
        self.findings
            .iter()
            .map(|f| f.severity)
            .max()
            .unwrap_or(Severity::Ok)
    }
}

/// Why inspection could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The spool path is not a directory we can use.
    #[error("spool directory {path}: {source}")]
    Spool {
        /// The path given.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// Runs every probe. Missing files become "unknown" findings; only an
/// unusable `--spool` path is an error.
pub fn inspect(options: &InspectOptions) -> Result<Report, InspectError> {
    let root = &options.root;
    let storage = match &options.spool {
        Some(path) => {
            let meta = std::fs::metadata(path).map_err(|source| InspectError::Spool {
                path: path.clone(),
                source,
            })?;
            if !meta.is_dir() {
                return Err(InspectError::Spool {
                    path: path.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "not a directory",
                    ),
                });
            }
            Some(inspect_dir(path, &options.storage))
        }
        None => None,
    };
    let (topology, topology_error) = match Topology::read(root) {
        Ok(topology) => (Some(topology), None),
        Err(error) => (None, Some(error.to_string())),
    };
    let allowed_cpus = root
        .read("proc/self/status")
        .and_then(|status| field(&status, "Cpus_allowed_list").and_then(parse_cpu_list));
    let cpufreq_governor = root.read("sys/devices/system/cpu/cpu0/cpufreq/scaling_governor");
    // Syscall probes describe the running kernel, so only pair them with the
    // host's files.
    let io_uring = root.is_host().then(|| probe(root));
    let limits = Limits::read(root);
    let nics = read_nics(root);

    let cpu_count = topology.as_ref().map_or(1, Topology::cpu_count);
    let node_count = topology.as_ref().map_or(1, |t| t.nodes.len());
    let shards = options.shards.unwrap_or(cpu_count);
    let mut findings = Vec::new();
    findings.extend(cpu_findings(
        topology
            .as_ref()
            .ok_or(topology_error.as_deref().unwrap_or("unknown")),
        allowed_cpus.as_deref(),
        cpufreq_governor.as_deref(),
    ));
    findings.extend(uring_findings(io_uring.as_ref()));
    findings.extend(limit_findings(&limits, shards));
    findings.extend(storage_findings(storage.as_ref()));
    findings.extend(nic_findings(&nics, cpu_count, node_count));

    Ok(Report {
        tool: format!("sluice-tune {}", env!("CARGO_PKG_VERSION")),
        root: root.path().to_path_buf(),
        kernel: root.read("proc/sys/kernel/osrelease"),
        topology,
        topology_error,
        allowed_cpus,
        cpufreq_governor,
        io_uring,
        limits,
        storage,
        nics,
        findings,
    })
}

/// The readable report: a header, then findings grouped by area, each with
/// its recommendation and command.
pub fn render_text(report: &Report) -> String {
    const AREAS: [(&str, &str); 6] = [
        ("cpu", "CPU"),
        ("io_uring", "io_uring"),
        ("limits", "Process limits"),
        ("network", "Network tunables"),
        ("storage", "Spool storage"),
        ("nic", "Network interfaces"),
    ];
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = writeln!(
        out,
        "{} inspect: root {}, kernel {}",
        report.tool,
        report.root.display(),
        report.kernel.as_deref().unwrap_or("unknown")
    );
    let counts = [Severity::Critical, Severity::Warning, Severity::Unknown]
        .iter()
        .map(|s| {
            let n = report.findings.iter().filter(|f| f.severity == *s).count();
            format!("{n} {}", s.label().to_lowercase())
        })
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(out, "{counts}");
    for (area, title) in AREAS {
        let mut findings: Vec<&Finding> =
            report.findings.iter().filter(|f| f.area == area).collect();
        if findings.is_empty() {
            continue;
        }
        findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
        let _ = writeln!(out, "\n{title}");
        for finding in findings {
            let _ = writeln!(
                out,
                "  [{:<8}] {:<16} {}",
                finding.severity.label(),
                finding.id,
                finding.observed
            );
            if finding.severity != Severity::Ok {
                let _ = writeln!(out, "  {:<28} -> {}", "", finding.recommendation);
                if let Some(command) = &finding.command {
                    let _ = writeln!(out, "  {:<28} $ {command}", "");
                }
            }
        }
    }
    out
}
