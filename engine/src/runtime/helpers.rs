//! Where the engine's helper threads run (issue 9, "Pinning").
//!
//! Shards are glommio executors pinned one per CPU. Threads that are not
//! shards (the `421 4.3.2` responder while a shard recovers, the admin
//! listener) must not compete with them: a thread started from a shard
//! inherits that shard's single-CPU affinity, so left alone it would run
//! on the shard's core. [`place_current_thread`] moves the calling thread
//! onto the CPUs this process may use that run no shard; when every CPU
//! runs a shard (the default layout: one shard per CPU) it widens the
//! thread to every allowed CPU instead, so the scheduler puts it wherever
//! there is room rather than always on the shard that spawned it.
//!
//! The CPU set is computed once, in [`record`], on the main thread before
//! any executor starts (its affinity is still the process's own then).

use std::sync::OnceLock;

/// CPUs for helper threads, decided at start.
static PLACEMENT: OnceLock<Placement> = OnceLock::new();

/// Where helper threads go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// CPUs this process may run on.
    pub allowed: Vec<usize>,
    /// Of those, the ones that run no shard (empty when every one does).
    pub spare: Vec<usize>,
}

impl Placement {
    /// The placement for `shard_cpus` among `allowed`.
    pub fn new(allowed: Vec<usize>, shard_cpus: &[usize]) -> Placement {
        let spare = allowed
            .iter()
            .copied()
            .filter(|cpu| !shard_cpus.contains(cpu))
            .collect();
        Placement { allowed, spare }
    }

    /// The CPUs a helper thread gets: the spare ones, else every allowed one.
    pub fn helper_cpus(&self) -> &[usize] {
        if self.spare.is_empty() {
            &self.allowed
        } else {
            &self.spare
        }
    }

    /// One line for the start-up layout.
    pub fn describe(&self) -> String {
        if self.spare.is_empty() {
            format!(
                "helpers:   no CPU free of shards; helper threads float over {:?}",
                self.allowed
            )
        } else {
            format!(
                "helpers:   pinned to CPU(s) {:?} (no shard there)",
                self.spare
            )
        }
    }
}

/// The calling thread's allowed CPUs (the process's, on the main thread).
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set, and
    // sched_getaffinity writes at most size_of::<cpu_set_t>() bytes.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE, inside the set.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Records the placement for `shard_cpus`; call on the main thread before
/// the shards start. Later calls keep the first placement.
pub fn record(shard_cpus: &[usize]) -> &'static Placement {
    PLACEMENT.get_or_init(|| Placement::new(allowed_cpus(), shard_cpus))
}

/// Moves the calling thread onto the helper CPUs. Returns the CPUs it now
/// runs on, or `None` when no placement was recorded or the kernel refused
/// (the thread then keeps its inherited affinity; nothing else changes).
pub fn place_current_thread() -> Option<Vec<usize>> {
    let cpus = PLACEMENT.get()?.helper_cpus().to_vec();
    if cpus.is_empty() {
        return None;
    }
    // SAFETY: as in `allowed_cpus`; CPU_SET is called with CPUs below
    // CPU_SETSIZE only.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in &cpus {
        if cpu < libc::CPU_SETSIZE as usize {
            unsafe { libc::CPU_SET(cpu, &mut set) };
        }
    }
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    (rc == 0).then_some(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spare_cpus_are_those_without_a_shard() {
        let p = Placement::new(vec![0, 1, 2, 3], &[0, 2]);
        assert_eq!(p.spare, vec![1, 3]);
        assert_eq!(p.helper_cpus(), &[1, 3]);
        assert!(p.describe().contains("[1, 3]"));
    }

    #[test]
    fn with_every_cpu_a_shard_helpers_float_over_all() {
        let p = Placement::new(vec![0, 1], &[0, 1]);
        assert!(p.spare.is_empty());
        assert_eq!(p.helper_cpus(), &[0, 1]);
        assert!(p.describe().contains("float"));
    }

    #[test]
    fn a_thread_placed_away_from_its_parent_cpu_runs_on_the_helper_set() {
        // A thread pinned to one CPU (as a shard is) starts a helper; the
        // helper must not stay confined to that CPU.
        let allowed = allowed_cpus();
        assert!(!allowed.is_empty(), "sched_getaffinity works here");
        let shard_cpu = allowed[0];
        let placement = record(&[shard_cpu]).clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            assert!(core_affinity::set_for_current(core_affinity::CoreId {
                id: shard_cpu
            }));
            let child = std::thread::spawn(|| {
                let placed = place_current_thread();
                (placed, allowed_cpus())
            });
            tx.send(child.join().expect("helper")).expect("send");
        });
        let (placed, now) = rx.recv().expect("result");
        assert_eq!(placed.as_deref(), Some(placement.helper_cpus()));
        assert_eq!(now, placement.helper_cpus());
        if allowed.len() > 1 {
            assert!(
                !now.contains(&shard_cpu),
                "helper left the shard CPU: {now:?}"
            );
        }
    }
}
