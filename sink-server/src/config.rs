//! The validated configuration every shard receives at start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::profile::Profile;
use crate::tls::TlsMaterial;

/// Glommio io_memory per executor. The sink does no storage I/O through
/// glommio (sockets use plain recv/send into our own buffers), so it needs
/// little; the memlock limit on the development machines is 8 MiB for the
/// whole process (`ulimit -l`), which the default 10 MiB would overrun.
pub const IO_MEMORY_BYTES_DEFAULT: usize = 512 * 1024;
/// Largest message advertised with `SIZE` by default (RFC 1870).
pub const SIZE_BYTES_MAX_DEFAULT: u64 = 64 * 1024 * 1024;
/// Recipients accepted per transaction by default; RFC 5321 §4.5.3.1.8
/// requires at least 100.
pub const RCPT_MAX_DEFAULT: usize = 1000;
/// Open connections per shard before new ones get `421`.
pub const CONNECTIONS_PER_SHARD_MAX_DEFAULT: usize = 20_000;
/// Bytes read from a socket at a time (per-connection buffer, allocated once).
pub const READ_BYTES: usize = 32 * 1024;
/// How often shards report counters to the reporting thread.
pub const REPORT_INTERVAL: Duration = Duration::from_millis(100);

const _: () = assert!(RCPT_MAX_DEFAULT >= 100);
const _: () = assert!(READ_BYTES >= 1024);

/// `--capture DIR` settings.
#[derive(Debug, Clone)]
pub struct Capture {
    /// Directory receiving one file per accepted message.
    pub dir: PathBuf,
    /// At most this many messages are captured (process-wide).
    pub messages_max: u64,
}

/// Everything a shard needs, validated.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Address to listen on (every shard binds it with SO_REUSEPORT).
    pub listen: SocketAddr,
    /// CPU ids, one shard pinned to each; empty means one unpinned shard.
    pub cores: Vec<usize>,
    /// Name used in the greeting and EHLO reply.
    pub hostname: String,
    /// Receiver profile.
    pub profile: Profile,
    /// Seed of the per-shard random generators (shard `i` uses `seed + i`).
    pub seed: u64,
    /// STARTTLS material; `None` disables STARTTLS.
    pub tls: Option<TlsMaterial>,
    /// `SIZE` advertised and enforced.
    pub size_bytes_max: u64,
    /// Recipients per transaction.
    pub rcpt_max: usize,
    /// Connections per shard.
    pub connections_per_shard_max: usize,
    /// A connection idle this long is closed with `421` (RFC 5321 §4.5.3.2.7).
    pub idle_timeout: Duration,
    /// How often shards report.
    pub report_interval: Duration,
    /// Append accepted message ids here.
    pub record_ids: Option<PathBuf>,
    /// Append the peer address of every accepted connection here.
    pub record_peers: Option<PathBuf>,
    /// Write accepted messages here.
    pub capture: Option<Capture>,
    /// glommio io_memory per executor.
    pub io_memory_bytes: usize,
    /// listen(2) backlog.
    pub backlog: i32,
    /// Busy-poll this long before an idle shard parks (glommio
    /// `spin_before_park`); zero parks at once.
    pub spin_before_park: Duration,
}

impl SinkConfig {
    /// A configuration for tests and embedding: loopback, given port, one
    /// unpinned shard, passive profile, no TLS.
    pub fn local(port: u16) -> SinkConfig {
        SinkConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            cores: Vec::new(),
            hostname: "sluice-sink.invalid".into(),
            profile: Profile::default(),
            seed: 1,
            tls: None,
            size_bytes_max: SIZE_BYTES_MAX_DEFAULT,
            rcpt_max: RCPT_MAX_DEFAULT,
            connections_per_shard_max: CONNECTIONS_PER_SHARD_MAX_DEFAULT,
            idle_timeout: Duration::from_secs(300),
            report_interval: REPORT_INTERVAL,
            record_ids: None,
            record_peers: None,
            capture: None,
            io_memory_bytes: IO_MEMORY_BYTES_DEFAULT,
            backlog: 1024,
            spin_before_park: Duration::ZERO,
        }
    }

    /// Number of shards this configuration starts.
    pub fn shard_count(&self) -> usize {
        self.cores.len().max(1)
    }
}

/// CPUs this process may run on (its `sched_getaffinity` mask, so `taskset`
/// and cgroup cpusets are honoured), ascending.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live cpu_set_t and the size passed is its size.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        return (0..n).collect();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `c` is below CPU_SETSIZE, the capacity of `set`.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// Parses `--cores`: a count `N` (the first N CPUs this process may use) or
/// a list `0,2,4-7` of CPU ids, each of which must be in `allowed`.
pub fn parse_cores(spec: &str, allowed: &[usize]) -> Result<Vec<usize>, String> {
    let spec = spec.trim();
    if !spec.contains([',', '-']) {
        let n: usize = spec
            .parse()
            .map_err(|_| format!("`{spec}` is neither a count nor a list like 0,2-3"))?;
        if n == 0 || n > allowed.len() {
            return Err(format!(
                "count {n} is not within 1..={} (CPUs this process may use: {allowed:?})",
                allowed.len()
            ));
        }
        return Ok(allowed[..n].to_vec());
    }
    let mut cores = Vec::new();
    for part in spec.split(',').filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let (a, b): (usize, usize) = match (a.trim().parse(), b.trim().parse()) {
            (Ok(a), Ok(b)) if a <= b => (a, b),
            _ => return Err(format!("`{part}` is not a CPU id or range like 2-5")),
        };
        for c in a..=b {
            if !allowed.contains(&c) {
                return Err(format!(
                    "CPU {c} is not available to this process (allowed: {allowed:?})"
                ));
            }
            if !cores.contains(&c) {
                cores.push(c);
            }
        }
    }
    if cores.is_empty() {
        return Err("empty CPU list".into());
    }
    Ok(cores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores() {
        let all = [0, 1, 2, 3];
        assert_eq!(parse_cores("2", &all), Ok(vec![0, 1]));
        assert_eq!(parse_cores("1,3", &all), Ok(vec![1, 3]));
        assert_eq!(parse_cores("0-2,1", &all), Ok(vec![0, 1, 2]));
        assert_eq!(parse_cores("1,", &all), Ok(vec![1]));
        assert!(parse_cores("0", &all).is_err());
        assert!(parse_cores("5", &all).is_err());
        assert!(parse_cores("3-1", &all).is_err());
        assert!(parse_cores("x", &all).is_err());
        assert!(parse_cores("2,9", &all).is_err());
        // Under `taskset -c 1,3` a count picks from the allowed CPUs.
        assert_eq!(parse_cores("1", &[1, 3]), Ok(vec![1]));
        assert!(parse_cores("0", &[1, 3]).is_err());
        assert!(parse_cores("2-2", &[1, 3]).is_err());
        assert!(!allowed_cpus().is_empty());
    }
}
