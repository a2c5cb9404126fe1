//! Process limits and kernel tunables that cap Sluice: locked memory (glommio
//! registers its I/O buffers), open files (every connection and spool segment
//! is one), the listen backlog, and the ephemeral port range with TIME_WAIT
//! reuse (they cap outbound connections to one destination address).

use serde::Serialize;

use crate::sysfs::{field, SysRoot};

/// Linux `CAP_IPC_LOCK`: with it, locked and io_uring-registered memory is
/// not charged against `RLIMIT_MEMLOCK`.
const CAP_IPC_LOCK_BIT: u32 = 14;

/// A soft/hard resource limit; `None` means unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Rlimit {
    /// The limit in force.
    pub soft: Option<u64>,
    /// The ceiling an unprivileged process may raise `soft` to.
    pub hard: Option<u64>,
}

/// The limits and tunables read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// `RLIMIT_MEMLOCK` in bytes of this process.
    pub memlock_bytes: Option<Rlimit>,
    /// `RLIMIT_NOFILE` of this process.
    pub nofile: Option<Rlimit>,
    /// Whether this process holds `CAP_IPC_LOCK` (from `proc/self/status`).
    pub cap_ipc_lock: Option<bool>,
    /// `net.core.somaxconn`.
    pub somaxconn: Option<u64>,
    /// `net.ipv4.tcp_max_syn_backlog`.
    pub tcp_max_syn_backlog: Option<u64>,
    /// `net.ipv4.ip_local_port_range` (first, last).
    pub ephemeral_ports: Option<(u16, u16)>,
    /// `net.ipv4.tcp_tw_reuse`: 0 off, 1 on, 2 loopback only.
    pub tcp_tw_reuse: Option<u64>,
    /// `net.ipv4.tcp_fin_timeout` in seconds.
    pub tcp_fin_timeout_s: Option<u64>,
    /// `fs.nr_open`: the ceiling for `RLIMIT_NOFILE`.
    pub nr_open: Option<u64>,
    /// `vm.max_map_count`: every mapped spool segment is one mapping.
    pub max_map_count: Option<u64>,
}

impl Limits {
    /// Reads the tunables under `root`, and this process's rlimits when
    /// `root` is the host.
    pub fn read(root: &SysRoot) -> Self {
        let cap_ipc_lock = root
            .read("proc/self/status")
            .and_then(|status| {
                field(&status, "CapEff").and_then(|hex| u64::from_str_radix(hex, 16).ok())
            })
            .map(|caps| caps & (1 << CAP_IPC_LOCK_BIT) != 0);
        // Resource limits belong to this process, so they describe only the
        // machine whose files are read when that machine is this one.
        let host = root.is_host();
        Limits {
            memlock_bytes: host.then(|| rlimit(libc::RLIMIT_MEMLOCK)).flatten(),
            nofile: host.then(|| rlimit(libc::RLIMIT_NOFILE)).flatten(),
            cap_ipc_lock,
            somaxconn: root.read_u64("proc/sys/net/core/somaxconn"),
            tcp_max_syn_backlog: root.read_u64("proc/sys/net/ipv4/tcp_max_syn_backlog"),
            ephemeral_ports: root
                .read("proc/sys/net/ipv4/ip_local_port_range")
                .and_then(|text| parse_port_range(&text)),
            tcp_tw_reuse: root.read_u64("proc/sys/net/ipv4/tcp_tw_reuse"),
            tcp_fin_timeout_s: root.read_u64("proc/sys/net/ipv4/tcp_fin_timeout"),
            nr_open: root.read_u64("proc/sys/fs/nr_open"),
            max_map_count: root.read_u64("proc/sys/vm/max_map_count"),
        }
    }

    /// Ports available for outbound connections from one source address to
    /// one destination address and port.
    pub fn ephemeral_port_count(&self) -> Option<u32> {
        self.ephemeral_ports
            .map(|(first, last)| u32::from(last) - u32::from(first) + 1)
    }
}

/// Parses `32768\t60999`; `None` if malformed or reversed.
pub fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut parts = text.split_whitespace();
    let first = parts.next()?.parse::<u16>().ok()?;
    let last = parts.next()?.parse::<u16>().ok()?;
    (parts.next().is_none() && first <= last).then_some((first, last))
}

fn rlimit(resource: libc::__rlimit_resource_t) -> Option<Rlimit> {
    let mut value = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `struct rlimit` into `value`.
    let rc = unsafe { libc::getrlimit(resource, &mut value) };
    if rc != 0 {
        return None;
    }
    let finite = |v: libc::rlim_t| (v != libc::RLIM_INFINITY).then_some(v);
    Some(Rlimit {
        soft: finite(value.rlim_cur),
        hard: finite(value.rlim_max),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("32768\t60999"), Some((32768, 60999)));
        assert_eq!(parse_port_range("1024 65535"), Some((1024, 65535)));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("1 2 3"), None);
        assert_eq!(parse_port_range("70000 70001"), None);
    }
}
