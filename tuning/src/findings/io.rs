//! Findings about the spool's storage and the network interfaces.

use super::{
    finding, Finding, Severity, FREE_CRITICAL_BYTES, FREE_LOW_BYTES, SYNC_MEDIAN_SLOW_US,
    SYNC_P99_SLOW_US,
};
use crate::nic::Nic;
use crate::storage::StorageReport;
use crate::sysfs::{format_bytes, format_cpu_list};

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
                write.elapsed_s
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
