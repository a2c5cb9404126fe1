//! Findings about process limits and kernel network tunables.

use super::{
    finding, Finding, Severity, BACKLOG_LOW, GLOMMIO_IO_MEMORY_BYTES, GLOMMIO_MEMLOCK_MIN_BYTES,
    GLOMMIO_RINGS_PER_EXECUTOR, NOFILE_LOW, NOFILE_WANTED, TIME_WAIT_S,
};
use crate::limits::Limits;
use crate::sysfs::format_bytes;

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
                 executor, charged to the user's locked memory (summed over all its processes, \
                 sink and harness included); {shards} shard(s) want about {}, else registration \
                 is skipped and storage I/O copies. Raise the limit {systemd} or lower io_memory",
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
