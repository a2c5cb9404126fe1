//! Fixture topologies → exact pinnings, and the invariants every layout
//! keeps for every shard count.

use std::collections::BTreeSet;
use std::path::PathBuf;

use sluice_tune::layout::{
    all_layouts, distinct_layouts, layout, shard_cpus, HelperPlacement, LayoutError, LayoutRequest,
    Pinning,
};
use sluice_tune::sysfs::SysRoot;
use sluice_tune::topology::Topology;

const FIXTURES: [&str; 4] = ["cpu2", "cpu16", "cpu64", "cpu128"];

fn read(name: &str) -> Topology {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    Topology::read(&SysRoot::new(root)).expect("fixture topology")
}

fn shards(topology: &Topology, pinning: Pinning, n: usize) -> Vec<u32> {
    shard_cpus(topology, pinning, &LayoutRequest::new(n)).expect("layout")
}

#[test]
fn two_cpu_smt_machine() {
    let t = read("cpu2");
    for pinning in Pinning::ALL {
        assert_eq!(shards(&t, pinning, 1), vec![0]);
        assert_eq!(shards(&t, pinning, 2), vec![0, 1]);
    }
    // One shard: the sibling is the only CPU left for harness and sink, so
    // they share it, next to the shard.
    let one = layout(
        &t,
        Pinning::Spread,
        HelperPlacement::Separate,
        &LayoutRequest::new(1),
    )
    .expect("one shard, separate");
    assert_eq!(
        (one.harness_cpus.clone(), one.sink_cpus.clone()),
        (vec![1], vec![1])
    );
    assert!(one.helpers_touch_shard_cores);
    assert!(one.spare_cpus.is_empty());
    // Two shards take both CPUs: separate is impossible, shared works.
    let request = LayoutRequest::new(2);
    assert_eq!(
        layout(&t, Pinning::Compact, HelperPlacement::Separate, &request),
        Err(LayoutError::NoSpareCpu { shards: 2, cpus: 2 })
    );
    let shared =
        layout(&t, Pinning::Compact, HelperPlacement::Shared, &request).expect("shared layout");
    assert_eq!((shared.harness_cpus, shared.sink_cpus), (vec![0], vec![1]));
    assert_eq!((shared.physical_cores, shared.shards_sharing_core), (1, 2));
    assert_eq!(
        shard_cpus(&t, Pinning::Compact, &LayoutRequest::new(3)),
        Err(LayoutError::TooManyShards { shards: 3, cpus: 2 })
    );
    assert_eq!(
        shard_cpus(&t, Pinning::Compact, &LayoutRequest::new(0)),
        Err(LayoutError::ZeroCount)
    );
}

#[test]
fn sixteen_cpus_two_nodes() {
    let t = read("cpu16");
    assert_eq!(shards(&t, Pinning::Compact, 4), vec![0, 1, 2, 3]);
    // Spread alternates nodes and stays on thread 0 of each core.
    assert_eq!(shards(&t, Pinning::Spread, 4), vec![0, 8, 2, 10]);
    assert_eq!(
        shards(&t, Pinning::Spread, 10),
        vec![0, 8, 2, 10, 4, 12, 6, 14, 1, 9]
    );
    // NUMA-local fills node 0's physical cores, then its siblings.
    assert_eq!(shards(&t, Pinning::NumaLocal, 4), vec![0, 2, 4, 6]);
    assert_eq!(shards(&t, Pinning::NumaLocal, 6), vec![0, 2, 4, 6, 1, 3]);
    assert_eq!(
        shards(&t, Pinning::NumaLocal, 9),
        vec![0, 2, 4, 6, 1, 3, 5, 7, 8]
    );
    // ...starting with the preferred node (the NIC's) when asked.
    let request = LayoutRequest {
        preferred_node: Some(1),
        ..LayoutRequest::new(4)
    };
    assert_eq!(
        shard_cpus(&t, Pinning::NumaLocal, &request),
        Ok(vec![8, 10, 12, 14])
    );

    let compact = layout(
        &t,
        Pinning::Compact,
        HelperPlacement::Separate,
        &LayoutRequest::new(4),
    )
    .expect("layout");
    // Harness and sink go on free physical cores, one thread each, in the
    // cache domain without shards (node 1's L3).
    assert_eq!(
        (compact.sink_cpus.clone(), compact.harness_cpus.clone()),
        (vec![8], vec![10])
    );
    assert!(!compact.helpers_touch_shard_cores);
    assert_eq!(compact.physical_cores, 2);
    assert_eq!(compact.shards_sharing_core, 4);
    assert_eq!(compact.nodes, vec![0]);
    assert_eq!(compact.spare_cpus, vec![4, 5, 6, 7, 9, 11, 12, 13, 14, 15]);
    assert!(compact.config_snippet().contains("cores = [0, 1, 2, 3]\n"));
    assert!(compact
        .config_snippet()
        .contains("#   sluice-sink --cores 8-8\n"));

    let spread = layout(
        &t,
        Pinning::Spread,
        HelperPlacement::Separate,
        &LayoutRequest::new(4),
    )
    .expect("layout");
    // Both cache domains hold two shards: topology order decides.
    assert_eq!((spread.sink_cpus, spread.harness_cpus), (vec![4], vec![6]));
    assert_eq!((spread.physical_cores, spread.shards_sharing_core), (4, 0));
    assert_eq!(spread.nodes, vec![0, 1]);
}

#[test]
fn sixty_four_cpus_split_numbering() {
    let t = read("cpu64");
    assert_eq!(shards(&t, Pinning::Compact, 4), vec![0, 32, 1, 33]);
    assert_eq!(
        shards(&t, Pinning::Spread, 8),
        vec![0, 16, 1, 17, 2, 18, 3, 19]
    );
    let numa = shards(&t, Pinning::NumaLocal, 20);
    let expected: Vec<u32> = (0..16).chain(32..36).collect();
    assert_eq!(numa, expected);
    // Every CPU taken: only shared helpers work; one more is refused.
    let all = LayoutRequest::new(64);
    assert!(matches!(
        layout(&t, Pinning::Spread, HelperPlacement::Separate, &all),
        Err(LayoutError::NoSpareCpu { .. })
    ));
    assert!(layout(&t, Pinning::Spread, HelperPlacement::Shared, &all).is_ok());
    assert!(matches!(
        shard_cpus(&t, Pinning::Spread, &LayoutRequest::new(65)),
        Err(LayoutError::TooManyShards {
            shards: 65,
            cpus: 64
        })
    ));
}

#[test]
fn one_hundred_twenty_eight_cpus_spread_over_core_complexes() {
    let t = read("cpu128");
    // One shard per 8-core complex (own L3), alternating nodes.
    assert_eq!(
        shards(&t, Pinning::Spread, 8),
        vec![0, 32, 8, 40, 16, 48, 24, 56]
    );
    assert_eq!(shards(&t, Pinning::Compact, 3), vec![0, 64, 1]);
    assert_eq!(shards(&t, Pinning::NumaLocal, 3), vec![0, 1, 2]);
    let spread = layout(
        &t,
        Pinning::Spread,
        HelperPlacement::Separate,
        &LayoutRequest::new(64),
    )
    .expect("layout");
    // 64 shards fill every physical core once; helpers land on siblings.
    assert_eq!((spread.physical_cores, spread.shards_sharing_core), (64, 0));
    assert!(spread.helpers_touch_shard_cores);
    assert_eq!(spread.sink_cpus, vec![64]);
    assert_eq!(spread.harness_cpus, vec![65]);
}

/// For every fixture, shard count and layout: distinct online shard CPUs;
/// separate helpers never on shard CPUs; everything accounted for once.
#[test]
fn invariants_hold_for_every_shard_count() {
    for name in FIXTURES {
        let t = read(name);
        let online: BTreeSet<u32> = t.cpus.iter().map(|c| c.id).collect();
        for n in 1..=t.cpu_count() {
            let request = LayoutRequest::new(n);
            for (pinning, helpers, result) in all_layouts(&t, &request) {
                let context = format!("{name} shards={n} {}/{}", pinning.name(), helpers.name());
                let l = match result {
                    Ok(l) => l,
                    Err(LayoutError::NoSpareCpu { .. }) => {
                        assert!(helpers == HelperPlacement::Separate && n == t.cpu_count());
                        continue;
                    }
                    Err(other) => panic!("{context}: {other}"),
                };
                let shard_set: BTreeSet<u32> = l.shard_cpus.iter().copied().collect();
                assert_eq!(shard_set.len(), n, "{context}");
                assert!(shard_set.is_subset(&online), "{context}");
                assert!(
                    !l.harness_cpus.is_empty() && !l.sink_cpus.is_empty(),
                    "{context}"
                );
                if helpers == HelperPlacement::Separate {
                    assert!(
                        l.harness_cpus.iter().all(|c| !shard_set.contains(c)),
                        "{context}"
                    );
                    assert!(
                        l.sink_cpus.iter().all(|c| !shard_set.contains(c)),
                        "{context}"
                    );
                } else {
                    assert!(
                        l.harness_cpus.iter().all(|c| shard_set.contains(c)),
                        "{context}"
                    );
                }
                let mut used: BTreeSet<u32> = shard_set.clone();
                used.extend(&l.harness_cpus);
                used.extend(&l.sink_cpus);
                assert!(
                    used.is_disjoint(&l.spare_cpus.iter().copied().collect()),
                    "{context}"
                );
                assert_eq!(used.len() + l.spare_cpus.len(), online.len(), "{context}");
                // Spread never doubles up a core while a physical core is
                // free; NUMA-local not while its node has one.
                let node0_cores = t.cores.iter().filter(|c| c.node == t.nodes[0].id).count();
                if (pinning == Pinning::Spread && n <= t.core_count())
                    || (pinning == Pinning::NumaLocal && n <= node0_cores)
                {
                    assert_eq!(l.shards_sharing_core, 0, "{context}");
                }
                // NUMA-local stays on one node while it fits.
                let node_cpus = t.nodes[0].cpus.len();
                if pinning == Pinning::NumaLocal && n <= node_cpus {
                    assert_eq!(l.nodes.len(), 1, "{context}");
                }
                // Growing the shard count only appends CPUs.
                if n > 1 {
                    let smaller = shard_cpus(&t, pinning, &LayoutRequest::new(n - 1))
                        .expect("smaller layout");
                    assert_eq!(&l.shard_cpus[..n - 1], smaller.as_slice(), "{context}");
                }
            }
        }
    }
}

#[test]
fn distinct_layouts_drop_duplicates() {
    // Two non-SMT CPUs on one node (like the CI machine): all three pinnings
    // coincide, leaving one separate and one shared layout for 1 shard.
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |rel: &str, text: &str| {
        let path = dir.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("has parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    };
    write("sys/devices/system/cpu/online", "0-1");
    for cpu in 0..2 {
        let base = format!("sys/devices/system/cpu/cpu{cpu}/topology");
        write(&format!("{base}/physical_package_id"), "0");
        write(&format!("{base}/thread_siblings_list"), &cpu.to_string());
    }
    let t = Topology::read(&SysRoot::new(dir.path())).expect("topology");
    let one = distinct_layouts(
        &t,
        &LayoutRequest::new(1),
        &Pinning::ALL,
        &HelperPlacement::ALL,
    );
    assert_eq!(
        one.iter().map(|l| l.name()).collect::<Vec<_>>(),
        vec!["compact/separate", "compact/shared"]
    );
    let two = distinct_layouts(
        &t,
        &LayoutRequest::new(2),
        &Pinning::ALL,
        &HelperPlacement::ALL,
    );
    assert_eq!(
        two.iter().map(|l| l.name()).collect::<Vec<_>>(),
        vec!["compact/shared"]
    );

    // On the 16-CPU fixture the pinnings differ and all six survive.
    assert_eq!(
        distinct_layouts(
            &read("cpu16"),
            &LayoutRequest::new(4),
            &Pinning::ALL,
            &HelperPlacement::ALL
        )
        .len(),
        6
    );
}
