//! Outside measurements: CPU time of processes and a live sink summary.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::Error;

/// CPU time (user + system) of process `pid`, from `/proc/PID/stat`.
pub fn process_cpu(pid: u32) -> Result<Duration, Error> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::Io(format!("{path}: {e} (is PID {pid} running?)")))?;
    parse_stat_cpu(&text, clock_ticks_per_sec())
        .ok_or_else(|| Error::Io(format!("{path}: unexpected format")))
}

/// utime + stime from a `/proc/PID/stat` line. The command name (field 2)
/// may contain spaces and parentheses, so fields are counted after the last `)`.
pub fn parse_stat_cpu(stat: &str, ticks_per_sec: u64) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // After ")" come fields 3.. (state is field 3); utime is 14, stime 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = utime + stime;
    let tps = ticks_per_sec.max(1);
    Some(
        Duration::from_secs(ticks / tps)
            + Duration::from_nanos((ticks % tps) * 1_000_000_000 / tps),
    )
}

/// CPU time of `root` and every live descendant, each with the CPU of its
/// reaped children (`cutime` + `cstime`), from `/proc`. For servers that
/// work in several processes (Postfix: master, smtpd, cleanup, qmgr, smtp).
/// A reaped child counts once, in its parent's `cutime`; a live one is
/// counted as itself.
pub fn process_tree_cpu(root: u32) -> Result<Duration, Error> {
    let ticks_per_sec = clock_ticks_per_sec();
    let root_path = format!("/proc/{root}/stat");
    let root_stat = std::fs::read_to_string(&root_path)
        .map_err(|e| Error::Io(format!("{root_path}: {e} (is PID {root} running?)")))?;
    let root_fields = parse_stat_fields(&root_stat)
        .ok_or_else(|| Error::Io(format!("{root_path}: unexpected format")))?;
    let mut procs = Vec::new();
    let dir = std::fs::read_dir("/proc").map_err(|e| Error::Io(format!("/proc: {e}")))?;
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may exit between the listing and the read: skip it.
        if let Some(fields) = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|t| parse_stat_fields(&t))
        {
            procs.push((pid, fields));
        }
    }
    let mut ticks = root_fields.all_ticks();
    // Walk down from the root: a bounded number of passes (tree depth).
    let mut tree = vec![root];
    const DEPTH_MAX: usize = 16;
    for _ in 0..DEPTH_MAX {
        let before = tree.len();
        for (pid, fields) in &procs {
            if tree.contains(&fields.ppid) && !tree.contains(pid) {
                tree.push(*pid);
                ticks += fields.all_ticks();
            }
        }
        if tree.len() == before {
            break;
        }
    }
    let tps = ticks_per_sec.max(1);
    Ok(
        Duration::from_secs(ticks / tps)
            + Duration::from_nanos((ticks % tps) * 1_000_000_000 / tps),
    )
}

/// The `/proc/PID/stat` fields the tree probe needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFields {
    /// Parent PID (field 4).
    pub ppid: u32,
    /// User and system ticks (fields 14, 15).
    pub own_ticks: u64,
    /// Ticks of reaped children (fields 16, 17).
    pub children_ticks: u64,
}

impl StatFields {
    fn all_ticks(&self) -> u64 {
        self.own_ticks + self.children_ticks
    }
}

/// Parses ppid, utime + stime and cutime + cstime, counting fields after
/// the last `)` (the command name may contain spaces and parentheses).
pub fn parse_stat_fields(stat: &str) -> Option<StatFields> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().take(15).collect();
    // fields[0] is field 3 (state); ppid is 4, utime 14 .. cstime 17.
    let num = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some(StatFields {
        ppid: u32::try_from(num(1)?).ok()?,
        own_ticks: num(11)? + num(12)?,
        children_ticks: num(13)? + num(14)?,
    })
}

fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 on error.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// CPU time (user + system) used so far by this process, all threads.
pub fn own_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we pass; RUSAGE_SELF is valid.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return Duration::ZERO;
        }
        usage
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU snapshot of several processes.
#[derive(Debug, Clone)]
pub struct CpuProbe {
    pids: Vec<u32>,
    tree: bool,
    start: Vec<Duration>,
}

/// CPU used by the watched processes during the run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TargetCpu {
    /// The processes measured.
    pub pids: Vec<u32>,
    /// Whether their descendants and reaped children were counted too.
    pub process_tree: bool,
    /// Their CPU seconds during the run (user + system).
    pub cpu_seconds: f64,
    /// CPU microseconds per accepted message.
    pub cpu_us_per_msg: f64,
}

impl CpuProbe {
    /// Reads the starting CPU time of every PID (fails if one is not running).
    pub fn start(pids: &[u32]) -> Result<Self, Error> {
        Self::start_with(pids, false)
    }

    /// Like [`CpuProbe::start`]; with `tree` each PID counts with its
    /// descendants and reaped children ([`process_tree_cpu`]).
    pub fn start_with(pids: &[u32], tree: bool) -> Result<Self, Error> {
        let start = pids
            .iter()
            .map(|&p| Self::read(p, tree))
            .collect::<Result<_, _>>()?;
        Ok(CpuProbe {
            pids: pids.to_vec(),
            tree,
            start,
        })
    }

    fn read(pid: u32, tree: bool) -> Result<Duration, Error> {
        if tree {
            process_tree_cpu(pid)
        } else {
            process_cpu(pid)
        }
    }

    /// CPU used since `start`, per accepted message.
    pub fn finish(&self, accepted: u64) -> Result<TargetCpu, Error> {
        let mut used = Duration::ZERO;
        for (pid, start) in self.pids.iter().zip(&self.start) {
            used += Self::read(*pid, self.tree)?.saturating_sub(*start);
        }
        let secs = used.as_secs_f64();
        Ok(TargetCpu {
            pids: self.pids.clone(),
            process_tree: self.tree,
            cpu_seconds: secs,
            cpu_us_per_msg: if accepted > 0 {
                secs * 1e6 / accepted as f64
            } else {
                0.0
            },
        })
    }
}

/// What the harness reads from a `sluice-sink` summary file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SinkSnapshot {
    /// Messages the sink accepted since it started.
    pub messages: u64,
    /// The sink's injection-to-arrival latency summary (`latency_ms`), as written.
    pub latency_ms: Option<serde_json::Value>,
}

/// Reads a sink summary (JSON with at least `messages`).
pub fn read_sink_summary(path: &Path) -> Result<SinkSnapshot, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_sink_summary(&text).map_err(|why| Error::Io(format!("{}: {why}", path.display())))
}

/// Parses the summary text.
pub fn parse_sink_summary(text: &str) -> Result<SinkSnapshot, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let messages = value
        .get("messages")
        .and_then(|m| m.as_u64())
        .ok_or("no numeric `messages` key (is this a sluice-sink summary?)")?;
    let latency_ms = value.get("latency_ms").filter(|v| !v.is_null()).cloned();
    Ok(SinkSnapshot {
        messages,
        latency_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_the_command_name() {
        let line = "1234 (a (weird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(parse_stat_cpu(line, 100), Some(Duration::from_secs(3)));
        assert_eq!(parse_stat_cpu("garbage", 100), None);
    }

    #[test]
    fn own_process_is_measurable() {
        let pid = std::process::id();
        let probe = CpuProbe::start(&[pid]).unwrap();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let cpu = probe.finish(10).unwrap();
        assert!(cpu.cpu_seconds >= 0.0);
        assert!(CpuProbe::start(&[u32::MAX]).is_err());
    }

    #[test]
    fn tree_counts_children() {
        let line = "77 (qmgr) S 12 77 77 0 -1 0 0 0 0 0 30 20 5 5 20 0 1 0";
        assert_eq!(
            parse_stat_fields(line),
            Some(StatFields {
                ppid: 12,
                own_ticks: 50,
                children_ticks: 10
            })
        );
        assert_eq!(parse_stat_fields("1 (x) S 0 1"), None);
        // A child that burns CPU and is reaped shows up in our tree total
        // through our children ticks (our own CPU is counted with `process_cpu`).
        let pid = std::process::id();
        let own =
            || parse_stat_fields(&std::fs::read_to_string("/proc/self/stat").unwrap()).unwrap();
        let (before, tree_before) = (own(), process_tree_cpu(pid).unwrap());
        let status = std::process::Command::new("/bin/sh")
            .args(["-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"])
            .status()
            .unwrap();
        assert!(status.success());
        let (after, tree_after) = (own(), process_tree_cpu(pid).unwrap());
        assert!(
            after.children_ticks > before.children_ticks,
            "{before:?} -> {after:?}"
        );
        let children = Duration::from_secs_f64(
            (after.children_ticks - before.children_ticks) as f64 / clock_ticks_per_sec() as f64,
        );
        assert!(
            tree_after - tree_before >= children,
            "{tree_before:?} -> {tree_after:?}"
        );
        assert!(CpuProbe::start_with(&[u32::MAX], true).is_err());
    }

    #[test]
    fn sink_summary_keys() {
        let s = parse_sink_summary(r#"{"messages": 12, "latency_ms": {"p50": 1.5, "p99": 3}}"#)
            .unwrap();
        assert_eq!(s.messages, 12);
        assert_eq!(s.latency_ms.unwrap()["p99"], 3);
        assert!(parse_sink_summary(r#"{"msgs": 1}"#).is_err());
        assert!(parse_sink_summary("{").is_err());
    }
}
