//! `sluice-tune`: reads the machine Sluice runs on and says what limits it,
//! and lays out engine shards, the bench-harness and the sink on its CPUs.
//!
//! It does three things. [`inspect`] reads CPU topology, caches and NUMA
//! nodes from `/sys`, probes io_uring through raw syscalls, reads process
//! limits and network tunables, measures the spool directory (filesystem,
//! free space, `fallocate`, fdatasync latency, sequential write bandwidth)
//! and lists NIC queues and interrupt affinity; it turns all of that into
//! [`findings::Finding`]s, each with a severity, a recommendation and the
//! command that applies it. [`layout`] is a pure generator: from a
//! [`topology::Topology`] and a shard count it produces pinnings (compact,
//! spread across SMT siblings, NUMA-local) and places the harness and sink on
//! separate or shared CPUs, with a config snippet to paste. [`sysfs`] holds
//! the readers, all rooted at a [`sysfs::SysRoot`] so tests run them against
//! fixture trees.
//!
//! It never changes the machine: every recommendation is printed as a command
//! for the operator to run. The only files it writes are short-lived scratch
//! files (dot-files named after its pid, mode 0600, removed afterwards) in
//! the spool directory it was asked to measure. Reads of `/sys` and `/proc`
//! tolerate missing files (containers hide many) and report "unknown"
//! instead of failing. It does not depend on glommio: the io_uring probe is
//! two syscalls, so inspection works where glommio itself would refuse to
//! start, which is exactly when it is needed.
//!
//! [`sweep`] plans a layout sweep (shard counts, pinnings, placements, commit
//! windows, repetitions), reads `sluice-bench --json` reports, takes medians,
//! picks the best point and writes its config snippet; [`plot`] draws
//! throughput and p99 against shard count; [`affinity`] confines threads and
//! child processes to CPU sets; [`runner`] runs one measurement (sink and
//! harness started on a layout's CPUs, stopped by guards whatever happens).
//! The `sweep` subcommand that adds the engine between harness and sink is
//! wired on these once the engine can run.

#![warn(missing_docs)]

pub mod affinity;
pub mod findings;
pub mod inspect;
pub mod layout;
pub mod limits;
pub mod nic;
pub mod plot;
pub mod runner;
pub mod storage;
pub mod sweep;
pub mod sysfs;
pub mod topology;
pub mod uring;
