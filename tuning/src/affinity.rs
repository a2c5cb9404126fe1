//! Pinning threads and child processes to CPU sets with
//! `sched_setaffinity(2)`.
//!
//! The sweep pins itself to a layout's spare CPUs and starts the sink and the
//! harness already confined to theirs (the affinity mask is inherited across
//! `fork` and `exec`, and glommio's unpinned executors keep it). core_affinity
//! pins to one CPU only; these take a set.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Builds a `cpu_set_t` from CPU ids; `None` if one is beyond the set's
/// capacity (`CPU_SETSIZE`, 1024 on glibc).
fn cpu_set(cpus: &[u32]) -> Option<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        let cpu = usize::try_from(cpu).ok()?;
        if cpu >= libc::CPU_SETSIZE as usize {
            return None;
        }
        // SAFETY: `cpu` is below CPU_SETSIZE, checked above.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    Some(set)
}

fn set_affinity(pid: libc::pid_t, cpus: &[u32]) -> io::Result<()> {
    if cpus.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty CPU set"));
    }
    let set = cpu_set(cpus)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "CPU id beyond CPU_SETSIZE"))?;
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Confines the calling thread to `cpus`.
pub fn pin_current_thread(cpus: &[u32]) -> io::Result<()> {
    set_affinity(0, cpus)
}

/// The CPUs the calling thread may run on.
pub fn current_affinity() -> io::Result<Vec<u32>> {
    // SAFETY: all-zero is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a writable cpu_set_t of the size passed.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let cpus = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads within the set for ids below CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .map(|cpu| cpu as u32)
        .collect();
    Ok(cpus)
}

/// Makes `command` start confined to `cpus` (the mask is applied in the
/// child between fork and exec, so it holds from the first instruction).
pub fn confine(command: &mut Command, cpus: &[u32]) -> io::Result<()> {
    // Validate in the parent, where an error can be reported properly.
    let set = cpu_set(cpus)
        .filter(|_| !cpus.is_empty())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad CPU set"))?;
    // SAFETY: the closure only calls sched_setaffinity, which is
    // async-signal-safe, on a set built before the fork.
    unsafe {
        command.pre_exec(move || {
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}
