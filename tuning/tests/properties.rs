//! Property tests: the text parsers never panic and round-trip, and every
//! layout of every synthetic topology (any packages, cores, SMT width, CPU
//! numbering, cache domains, allowed CPU set) keeps the layout invariants.

use std::collections::BTreeSet;

use proptest::prelude::*;

use sluice_tune::layout::{all_layouts, shard_cpus, HelperPlacement, LayoutRequest, Pinning};
use sluice_tune::nic::parse_interrupts;
use sluice_tune::sysfs::{format_cpu_list, parse_cpu_list, parse_size_bytes};
use sluice_tune::topology::{Cache, Cpu, NumaNode, PhysicalCore, Topology, TopologySource};

/// A machine of `packages` sockets (one NUMA node each) with `cores` cores
/// of `threads` threads, siblings numbered adjacently or `n, n + cores_total`,
/// and one last-level cache per `llc_cores` cores.
fn machine(packages: u32, cores: u32, threads: u32, split: bool, llc_cores: u32) -> Topology {
    let total_cores = packages * cores;
    let cpu_id = |core: u32, thread: u32| {
        if split {
            core + thread * total_cores
        } else {
            core * threads + thread
        }
    };
    let mut physical = Vec::new();
    let mut cpus = Vec::new();
    for core in 0..total_cores {
        let package = core / cores;
        let ids: Vec<u32> = (0..threads).map(|t| cpu_id(core, t)).collect();
        for &id in &ids {
            cpus.push(Cpu {
                id,
                package,
                core_index: core as usize,
                node: package,
            });
        }
        physical.push(PhysicalCore {
            package,
            node: package,
            cpus: ids,
        });
    }
    cpus.sort_by_key(|c| c.id);
    let nodes = (0..packages)
        .map(|p| {
            let mut ids: Vec<u32> = physical
                .iter()
                .filter(|c| c.node == p)
                .flat_map(|c| c.cpus.clone())
                .collect();
            ids.sort_unstable();
            NumaNode {
                id: p,
                cpus: ids,
                memory_bytes: None,
            }
        })
        .collect();
    let caches = physical
        .chunks(llc_cores as usize)
        .map(|group| {
            let mut ids: Vec<u32> = group.iter().flat_map(|c| c.cpus.clone()).collect();
            ids.sort_unstable();
            Cache {
                level: 3,
                kind: "Unified".into(),
                size_bytes: None,
                cpus: ids,
            }
        })
        .collect();
    Topology {
        cpus,
        cores: physical,
        nodes,
        caches,
        smt_active: Some(threads > 1),
        isolated: Vec::new(),
        source: TopologySource::Sysfs,
    }
}

fn check_invariants(t: &Topology) -> Result<(), TestCaseError> {
    let online: BTreeSet<u32> = t.cpus.iter().map(|c| c.id).collect();
    let node0_cores = t.cores.iter().filter(|c| c.node == t.nodes[0].id).count();
    for n in 1..=t.cpu_count() {
        for (pinning, helpers, result) in all_layouts(t, &LayoutRequest::new(n)) {
            let Ok(l) = result else {
                prop_assert!(helpers == HelperPlacement::Separate && n == t.cpu_count());
                continue;
            };
            let shards: BTreeSet<u32> = l.shard_cpus.iter().copied().collect();
            prop_assert_eq!(shards.len(), n);
            prop_assert!(shards.is_subset(&online));
            if helpers == HelperPlacement::Separate {
                prop_assert!(l
                    .harness_cpus
                    .iter()
                    .chain(&l.sink_cpus)
                    .all(|c| !shards.contains(c)));
            }
            let mut used = shards.clone();
            used.extend(l.harness_cpus.iter().chain(&l.sink_cpus));
            prop_assert_eq!(used.len() + l.spare_cpus.len(), online.len());
            if (pinning == Pinning::Spread && n <= t.core_count())
                || (pinning == Pinning::NumaLocal && n <= node0_cores)
            {
                prop_assert_eq!(l.shards_sharing_core, 0);
            }
            if n > 1 {
                let smaller = shard_cpus(t, pinning, &LayoutRequest::new(n - 1)).expect("fits");
                prop_assert_eq!(&l.shard_cpus[..n - 1], smaller.as_slice());
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn layouts_keep_their_invariants(
        packages in 1u32..=3,
        cores in 1u32..=6,
        threads in 1u32..=2,
        split in any::<bool>(),
        llc_cores in 1u32..=4,
        allowed_mask in any::<u64>(),
    ) {
        let t = machine(packages, cores, threads, split, llc_cores);
        check_invariants(&t)?;
        // The same machine seen through a CPU set.
        let allowed: Vec<u32> =
            t.cpus.iter().map(|c| c.id).filter(|&id| allowed_mask & (1 << (id % 64)) != 0).collect();
        if let Some(restricted) = t.restrict(&allowed) {
            check_invariants(&restricted)?;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn cpu_lists_round_trip(cpus in proptest::collection::btree_set(0u32..300, 0..40)) {
        let cpus: Vec<u32> = cpus.into_iter().collect();
        prop_assert_eq!(parse_cpu_list(&format_cpu_list(&cpus)), Some(cpus));
    }

    #[test]
    fn parsers_never_panic(text in "[0-9a-zA-Z:,\\- \\n]{0,200}") {
        if let Some(cpus) = parse_cpu_list(&text) {
            prop_assert!(cpus.windows(2).all(|w| w[0] < w[1]));
        }
        let _ = parse_size_bytes(&text);
        for line in parse_interrupts(&text) {
            prop_assert!(!line.name.is_empty());
        }
    }
}
