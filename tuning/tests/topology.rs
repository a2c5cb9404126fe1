//! Fixture /sys trees → the topology the layout generator works from.

use std::path::PathBuf;

use sluice_tune::sysfs::SysRoot;
use sluice_tune::topology::{Topology, TopologySource};

fn fixture(name: &str) -> SysRoot {
    SysRoot::new(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
}

fn read(name: &str) -> Topology {
    Topology::read(&fixture(name)).expect("fixture topology")
}

/// Checks the facts every fixture shares: each online CPU in exactly one
/// core, cores' threads and nodes consistent with the CPU records.
fn check_consistent(topology: &Topology) {
    let mut seen = Vec::new();
    for (index, core) in topology.cores.iter().enumerate() {
        for &cpu in &core.cpus {
            let record = topology.cpu(cpu).expect("core thread is an online CPU");
            assert_eq!(record.core_index, index, "cpu {cpu}");
            assert_eq!(record.node, core.node, "cpu {cpu}");
            seen.push(cpu);
        }
    }
    seen.sort_unstable();
    let online: Vec<u32> = topology.cpus.iter().map(|c| c.id).collect();
    assert_eq!(seen, online);
    let node_cpus: usize = topology.nodes.iter().map(|n| n.cpus.len()).sum();
    assert_eq!(node_cpus, topology.cpu_count());
}

#[test]
fn two_cpus_are_one_core_with_smt() {
    let t = read("cpu2");
    check_consistent(&t);
    assert_eq!(t.source, TopologySource::Sysfs);
    assert_eq!(
        (t.cpu_count(), t.core_count(), t.threads_per_core()),
        (2, 1, 2)
    );
    assert_eq!(t.cores[0].cpus, vec![0, 1]);
    assert_eq!(t.nodes.len(), 1);
    assert_eq!(t.nodes[0].memory_bytes, Some(4 << 30));
    assert_eq!(t.smt_active, Some(true));
    // L1d, L1i, L2, L3: one instance each, shared by both threads.
    assert_eq!(t.caches.len(), 4);
    assert!(t.caches.iter().all(|c| c.cpus == vec![0, 1]));
    assert_eq!(
        t.cache_summary(),
        "L1d 48.0 KiB x1, L1i 32.0 KiB x1, L2 2.0 MiB x1, L3 32.0 MiB x1"
    );
}

#[test]
fn sixteen_cpus_adjacent_siblings_two_nodes() {
    let t = read("cpu16");
    check_consistent(&t);
    assert_eq!(
        (t.cpu_count(), t.core_count(), t.threads_per_core()),
        (16, 8, 2)
    );
    assert_eq!(t.package_count(), 2);
    assert_eq!(
        t.nodes.iter().map(|n| n.cpus.clone()).collect::<Vec<_>>(),
        vec![(0..8).collect::<Vec<u32>>(), (8..16).collect::<Vec<u32>>()]
    );
    assert_eq!(t.cores[0].cpus, vec![0, 1]);
    assert_eq!(t.cores[4].cpus, vec![8, 9]);
    assert_eq!(t.cores[4].node, 1);
    assert_eq!(t.last_level_caches().len(), 2);
    assert_eq!(t.node_cpu_list(1), "8-15");
}

#[test]
fn sixty_four_cpus_split_siblings() {
    let t = read("cpu64");
    check_consistent(&t);
    assert_eq!(
        (t.cpu_count(), t.core_count(), t.threads_per_core()),
        (64, 32, 2)
    );
    assert_eq!(t.nodes.len(), 2);
    assert_eq!(t.node_cpu_list(0), "0-15,32-47");
    assert_eq!(t.cores[0].cpus, vec![0, 32]);
    assert_eq!(t.cores[16].cpus, vec![16, 48]);
    assert_eq!(
        t.cpu(48).map(|c| (c.core_index, c.node, c.package)),
        Some((16, 1, 1))
    );
    let llc = t.last_level_caches();
    assert_eq!(llc.len(), 2);
    assert_eq!(llc[0].size_bytes, Some(48 << 20));
}

#[test]
fn one_hundred_twenty_eight_cpus_with_core_complexes() {
    let t = read("cpu128");
    check_consistent(&t);
    assert_eq!(
        (t.cpu_count(), t.core_count(), t.threads_per_core()),
        (128, 64, 2)
    );
    assert_eq!(t.package_count(), 2);
    assert_eq!(t.node_cpu_list(1), "32-63,96-127");
    // Eight 8-core complexes, each with its own L3.
    let llc = t.last_level_caches();
    assert_eq!(llc.len(), 8);
    assert_eq!(
        llc[0].cpus,
        [(0..8).collect::<Vec<u32>>(), (64..72).collect()].concat()
    );
    assert!(t
        .summary()
        .starts_with("128 CPUs on 64 physical cores (2 thread(s) per core)"));
}

#[test]
fn missing_sys_is_an_error_and_missing_topology_files_are_partial() {
    let empty = tempfile::tempdir().expect("tempdir");
    let error = Topology::read(&SysRoot::new(empty.path())).expect_err("no cpus");
    assert!(error.to_string().contains("no CPUs found"), "{error}");

    // A container that shows cpuN directories but no topology files.
    for cpu in 0..3 {
        std::fs::create_dir_all(
            empty
                .path()
                .join(format!("sys/devices/system/cpu/cpu{cpu}")),
        )
        .expect("mkdir");
    }
    let t = Topology::read(&SysRoot::new(empty.path())).expect("partial topology");
    assert_eq!(t.source, TopologySource::Partial);
    assert_eq!((t.cpu_count(), t.core_count(), t.nodes.len()), (3, 3, 1));
    assert!(t.caches.is_empty());
    assert_eq!(t.cache_summary(), "unknown");
}

#[test]
fn inconsistent_sibling_lists_never_put_a_cpu_in_two_cores() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |rel: &str, text: &str| {
        let path = dir.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("has parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    };
    write("sys/devices/system/cpu/online", "0-2\n");
    write(
        "sys/devices/system/cpu/cpu0/topology/physical_package_id",
        "0\n",
    );
    write(
        "sys/devices/system/cpu/cpu0/topology/thread_siblings_list",
        "0-1\n",
    );
    write(
        "sys/devices/system/cpu/cpu1/topology/physical_package_id",
        "0\n",
    );
    write(
        "sys/devices/system/cpu/cpu1/topology/thread_siblings_list",
        "1-2\n",
    );
    // cpu2's list omits itself: treated as unknown.
    write(
        "sys/devices/system/cpu/cpu2/topology/physical_package_id",
        "0\n",
    );
    write(
        "sys/devices/system/cpu/cpu2/topology/thread_siblings_list",
        "garbage\n",
    );
    let t = Topology::read(&SysRoot::new(dir.path())).expect("topology");
    check_consistent(&t);
    assert_eq!(
        t.cores.iter().map(|c| c.cpus.clone()).collect::<Vec<_>>(),
        vec![vec![0, 1], vec![2]]
    );
}

#[test]
fn restricting_to_a_cpu_set() {
    let t = read("cpu16");
    // A cpuset of node 1's first two cores plus one sibling of node 0.
    let r = t.restrict(&[1, 8, 9, 10]).expect("some CPUs remain");
    check_consistent(&r);
    assert_eq!(
        r.cpus.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![1, 8, 9, 10]
    );
    assert_eq!(
        r.cores.iter().map(|c| c.cpus.clone()).collect::<Vec<_>>(),
        vec![vec![1], vec![8, 9], vec![10]]
    );
    assert_eq!(r.nodes.iter().map(|n| n.id).collect::<Vec<_>>(), vec![0, 1]);
    assert!(r
        .caches
        .iter()
        .all(|c| c.cpus.iter().all(|cpu| [1, 8, 9, 10].contains(cpu))));
    assert!(t.restrict(&[99]).is_none());
    assert_eq!(t.restrict(&(0..16).collect::<Vec<u32>>()), Some(t));
}
