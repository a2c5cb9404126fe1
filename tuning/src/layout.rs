//! The layout generator: which CPU each engine shard is pinned to, and where
//! the bench-harness, the sink and the engine's helper threads go.
//!
//! Pure functions of a [`Topology`] and a [`LayoutRequest`]; no I/O. Three
//! pinnings are offered because none wins everywhere:
//!
//! - [`Pinning::Compact`] packs shards onto as few physical cores as possible
//!   (SMT siblings together, node by node). Shards share caches and the
//!   cross-shard channels stay within one cache domain; each shard gets half a
//!   core when SMT is on.
//! - [`Pinning::Spread`] gives every shard a physical core of its own before
//!   any core gets a second shard, and round-robins across NUMA nodes and
//!   last-level-cache domains, maximising cache and memory bandwidth per shard.
//! - [`Pinning::NumaLocal`] gives each shard its own physical core but fills
//!   one NUMA node (the preferred one first, e.g. the NIC's) before using the
//!   next, so spool pages, socket buffers and the NIC stay node-local.
//!
//! The harness and the sink are either placed on CPUs no shard uses
//! ([`HelperPlacement::Separate`]), which measures the engine alone, or on the
//! shard CPUs themselves ([`HelperPlacement::Shared`]), which is the only
//! option when shards take every CPU (this 2-CPU machine at 2 shards).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;

use crate::sysfs::format_cpu_list;
use crate::topology::Topology;

/// How shards are assigned to CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Pinning {
    /// SMT siblings together, fewest physical cores.
    Compact,
    /// One shard per physical core first, across nodes and cache domains.
    Spread,
    /// One shard per physical core first, one NUMA node at a time.
    NumaLocal,
}

impl Pinning {
    /// All pinnings, in the order reports list them.
    pub const ALL: [Pinning; 3] = [Pinning::Compact, Pinning::Spread, Pinning::NumaLocal];

    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Pinning::Compact => "compact",
            Pinning::Spread => "spread",
            Pinning::NumaLocal => "numa-local",
        }
    }
}

/// Where the bench-harness and the sink run relative to the shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum HelperPlacement {
    /// On CPUs no shard uses (harness and sink share them if only one is
    /// left).
    Separate,
    /// On the shard CPUs, competing with the shards.
    Shared,
}

impl HelperPlacement {
    /// Both placements, in report order.
    pub const ALL: [HelperPlacement; 2] = [HelperPlacement::Separate, HelperPlacement::Shared];

    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            HelperPlacement::Separate => "separate",
            HelperPlacement::Shared => "shared",
        }
    }
}

/// What to lay out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LayoutRequest {
    /// Engine shards (one pinned executor each).
    pub shards: usize,
    /// CPUs wanted for the bench-harness.
    pub harness_cpus: usize,
    /// CPUs wanted for the sink.
    pub sink_cpus: usize,
    /// NUMA node to fill first with [`Pinning::NumaLocal`] (the NIC's node);
    /// the lowest node when `None` or unknown.
    pub preferred_node: Option<u32>,
}

impl LayoutRequest {
    /// `shards` shards, one CPU each for harness and sink, no node preference.
    pub fn new(shards: usize) -> Self {
        Self {
            shards,
            harness_cpus: 1,
            sink_cpus: 1,
            preferred_node: None,
        }
    }
}

/// Why a layout cannot be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// Zero shards, or zero harness/sink CPUs, were asked for.
    #[error("shard, harness and sink counts must each be at least 1")]
    ZeroCount,
    /// More shards than online CPUs.
    #[error("{shards} shards need {shards} CPUs; the machine has {cpus}")]
    TooManyShards {
        /// Shards requested.
        shards: usize,
        /// Online CPUs.
        cpus: usize,
    },
    /// [`HelperPlacement::Separate`] with no CPU left over.
    #[error("{shards} shards use all {cpus} CPUs; no CPU is left for the harness and sink")]
    NoSpareCpu {
        /// Shards requested.
        shards: usize,
        /// Online CPUs.
        cpus: usize,
    },
}

/// One concrete placement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Layout {
    /// The shard pinning rule.
    pub pinning: Pinning,
    /// Where harness and sink go.
    pub helpers: HelperPlacement,
    /// CPU of shard `i` at index `i`.
    pub shard_cpus: Vec<u32>,
    /// CPUs for the bench-harness.
    pub harness_cpus: Vec<u32>,
    /// CPUs for the sink.
    pub sink_cpus: Vec<u32>,
    /// CPUs used by none of the above: where the engine's helper threads
    /// (logging, admin) should be pinned. Empty when every CPU is taken.
    pub spare_cpus: Vec<u32>,
    /// Distinct physical cores the shards occupy.
    pub physical_cores: usize,
    /// Shards on a physical core that also hosts another shard.
    pub shards_sharing_core: usize,
    /// Distinct NUMA nodes the shards occupy.
    pub nodes: Vec<u32>,
    /// Whether a harness or sink CPU is a shard CPU or an SMT sibling of one.
    pub helpers_touch_shard_cores: bool,
}

impl Layout {
    /// `compact/separate`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.pinning.name(), self.helpers.name())
    }

    /// Whether two layouts put everything on the same CPUs.
    pub fn same_cpus(&self, other: &Layout) -> bool {
        self.shard_cpus == other.shard_cpus
            && self.harness_cpus == other.harness_cpus
            && self.sink_cpus == other.sink_cpus
    }

    /// A configuration snippet to paste into the engine's config: its
    /// `cores` list, with comments saying where its helper threads, the sink
    /// and the harness go.
    pub fn config_snippet(&self) -> String {
        let list = |cpus: &[u32]| {
            cpus.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = writeln!(
            out,
            "# {}: {} shard(s) on {} physical core(s), NUMA node(s) {}",
            self.name(),
            self.shard_cpus.len(),
            self.physical_cores,
            list(&self.nodes)
        );
        // The engine's config key: one shard per listed CPU, in shard order.
        let _ = writeln!(out, "cores = [{}]", list(&self.shard_cpus));
        if self.spare_cpus.is_empty() {
            let _ = writeln!(out, "# no spare CPU: engine helper threads float");
        } else {
            let _ = writeln!(
                out,
                "# pin engine helper threads (logging, admin) to CPUs {}",
                format_cpu_list(&self.spare_cpus)
            );
        }
        // The sink takes a CPU list; the harness takes an executor count and
        // inherits its CPU set from taskset.
        let _ = writeln!(out, "# bench on the same machine:");
        let _ = writeln!(
            out,
            "#   sluice-sink --cores {}",
            cpu_list_arg(&self.sink_cpus)
        );
        let _ = writeln!(
            out,
            "#   taskset -c {} sluice-bench --cores {}",
            format_cpu_list(&self.harness_cpus),
            self.harness_cpus.len()
        );
        out
    }
}

/// A CPU list for `--cores` options that read a bare number as a count: a
/// single CPU is written as a range (`4-4`).
pub fn cpu_list_arg(cpus: &[u32]) -> String {
    match cpus {
        [one] => format!("{one}-{one}"),
        _ => format_cpu_list(cpus),
    }
}

/// The shard CPUs for `pinning`: the first `request.shards` CPUs of that
/// pinning's order.
pub fn shard_cpus(
    topology: &Topology,
    pinning: Pinning,
    request: &LayoutRequest,
) -> Result<Vec<u32>, LayoutError> {
    check_counts(topology, request)?;
    let order = match pinning {
        Pinning::Compact => compact_order(topology),
        Pinning::Spread => spread_order(topology),
        Pinning::NumaLocal => numa_local_order(topology, request.preferred_node),
    };
    debug_assert_eq!(order.len(), topology.cpu_count());
    Ok(order.into_iter().take(request.shards).collect())
}

/// One layout.
pub fn layout(
    topology: &Topology,
    pinning: Pinning,
    helpers: HelperPlacement,
    request: &LayoutRequest,
) -> Result<Layout, LayoutError> {
    let shard_cpus = shard_cpus(topology, pinning, request)?;
    let (harness_cpus, sink_cpus) = match helpers {
        HelperPlacement::Separate => separate_helpers(topology, &shard_cpus, request)?,
        HelperPlacement::Shared => {
            // Harness from the front, sink from the back, so that with two or
            // more shards they land on different shard CPUs.
            let harness = shard_cpus
                .iter()
                .cycle()
                .take(request.harness_cpus)
                .copied();
            let sink = shard_cpus
                .iter()
                .rev()
                .cycle()
                .take(request.sink_cpus)
                .copied();
            (sorted(harness), sorted(sink))
        }
    };
    let used: BTreeSet<u32> = shard_cpus
        .iter()
        .chain(&harness_cpus)
        .chain(&sink_cpus)
        .copied()
        .collect();
    let spare_cpus = topology
        .cpus
        .iter()
        .map(|c| c.id)
        .filter(|c| !used.contains(c))
        .collect();

    let mut shards_per_core: BTreeMap<usize, usize> = BTreeMap::new();
    for &cpu in &shard_cpus {
        *shards_per_core
            .entry(core_index(topology, cpu))
            .or_default() += 1;
    }
    let shard_cores: BTreeSet<usize> = shards_per_core.keys().copied().collect();
    let helpers_touch_shard_cores = harness_cpus
        .iter()
        .chain(&sink_cpus)
        .any(|&cpu| shard_cores.contains(&core_index(topology, cpu)));
    let nodes: BTreeSet<u32> = shard_cpus.iter().map(|&cpu| node(topology, cpu)).collect();

    let result = Layout {
        pinning,
        helpers,
        physical_cores: shards_per_core.len(),
        shards_sharing_core: shards_per_core.values().filter(|&&n| n > 1).sum(),
        nodes: nodes.into_iter().collect(),
        helpers_touch_shard_cores,
        shard_cpus,
        harness_cpus,
        sink_cpus,
        spare_cpus,
    };
    // Our own invariants: distinct shard CPUs, all online.
    assert_eq!(
        result.shard_cpus.iter().collect::<BTreeSet<_>>().len(),
        result.shard_cpus.len(),
        "layout placed two shards on one CPU"
    );
    Ok(result)
}

/// Every pinning × helper placement for `request`, with the reason for each
/// one that cannot be made.
pub fn all_layouts(
    topology: &Topology,
    request: &LayoutRequest,
) -> Vec<(Pinning, HelperPlacement, Result<Layout, LayoutError>)> {
    let mut out = Vec::new();
    for pinning in Pinning::ALL {
        for helpers in HelperPlacement::ALL {
            out.push((
                pinning,
                helpers,
                layout(topology, pinning, helpers, request),
            ));
        }
    }
    out
}

/// The layouts worth measuring among `pinnings` × `helpers`: every possible
/// one, minus those placing everything on the same CPUs as one listed
/// earlier (on a machine without SMT or NUMA the three pinnings often
/// coincide).
pub fn distinct_layouts(
    topology: &Topology,
    request: &LayoutRequest,
    pinnings: &[Pinning],
    helpers: &[HelperPlacement],
) -> Vec<Layout> {
    let mut out: Vec<Layout> = Vec::new();
    for (pinning, placement, result) in all_layouts(topology, request) {
        if !pinnings.contains(&pinning) || !helpers.contains(&placement) {
            continue;
        }
        if let Ok(candidate) = result {
            if !out.iter().any(|seen| seen.same_cpus(&candidate)) {
                out.push(candidate);
            }
        }
    }
    out
}

fn check_counts(topology: &Topology, request: &LayoutRequest) -> Result<(), LayoutError> {
    if request.shards == 0 || request.harness_cpus == 0 || request.sink_cpus == 0 {
        return Err(LayoutError::ZeroCount);
    }
    if request.shards > topology.cpu_count() {
        return Err(LayoutError::TooManyShards {
            shards: request.shards,
            cpus: topology.cpu_count(),
        });
    }
    Ok(())
}

fn core_index(topology: &Topology, cpu: u32) -> usize {
    // Layout CPUs all come from `topology.cpus`.
    topology.cpu(cpu).map_or(usize::MAX, |c| c.core_index)
}

fn node(topology: &Topology, cpu: u32) -> u32 {
    topology.cpu(cpu).map_or(0, |c| c.node)
}

fn sorted(cpus: impl Iterator<Item = u32>) -> Vec<u32> {
    let set: BTreeSet<u32> = cpus.collect();
    set.into_iter().collect()
}

/// Every CPU, siblings together, core after core in topology order (node,
/// package, first thread).
fn compact_order(topology: &Topology) -> Vec<u32> {
    topology
        .cores
        .iter()
        .flat_map(|core| core.cpus.iter().copied())
        .collect()
}

/// Thread 0 of every core before thread 1 of any; within a round, one core
/// per node in turn, and within a node one core per last-level-cache domain
/// in turn.
fn spread_order(topology: &Topology) -> Vec<u32> {
    let llc_of = llc_domains(topology);
    let node_rank: BTreeMap<u32, usize> = topology
        .nodes
        .iter()
        .enumerate()
        .map(|(rank, n)| (n.id, rank))
        .collect();
    // (thread, position in its domain, domain rank within node, node rank).
    let mut keyed: Vec<((usize, usize, usize, usize), u32)> = Vec::new();
    let mut domains_in_node: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    let mut position_in_domain: BTreeMap<usize, usize> = BTreeMap::new();
    for (index, core) in topology.cores.iter().enumerate() {
        let domain = llc_of[index];
        let domains = domains_in_node.entry(core.node).or_default();
        let domain_rank = match domains.iter().position(|&d| d == domain) {
            Some(rank) => rank,
            None => {
                domains.push(domain);
                domains.len() - 1
            }
        };
        let position = position_in_domain.entry(domain).or_default();
        for (thread, &cpu) in core.cpus.iter().enumerate() {
            let rank = node_rank.get(&core.node).copied().unwrap_or(usize::MAX);
            keyed.push(((thread, *position, domain_rank, rank), cpu));
        }
        *position += 1;
    }
    keyed.sort_unstable();
    keyed.into_iter().map(|(_, cpu)| cpu).collect()
}

/// Node by node (preferred node first); within a node thread 0 of each core
/// in order, then thread 1, and so on.
fn numa_local_order(topology: &Topology, preferred_node: Option<u32>) -> Vec<u32> {
    let mut nodes: Vec<u32> = topology.nodes.iter().map(|n| n.id).collect();
    if let Some(preferred) = preferred_node {
        if let Some(index) = nodes.iter().position(|&n| n == preferred) {
            nodes[..=index].rotate_right(1);
        }
    }
    let mut order = Vec::with_capacity(topology.cpu_count());
    for node in nodes {
        let cores: Vec<_> = topology.cores.iter().filter(|c| c.node == node).collect();
        let threads = cores.iter().map(|c| c.cpus.len()).max().unwrap_or(0);
        for thread in 0..threads {
            order.extend(cores.iter().filter_map(|c| c.cpus.get(thread).copied()));
        }
    }
    order
}

/// For each core (by index), an id of the last-level cache domain it sits in;
/// cores without cache information each form their own domain per node.
fn llc_domains(topology: &Topology) -> Vec<usize> {
    let llcs = topology.last_level_caches();
    topology
        .cores
        .iter()
        .enumerate()
        .map(|(index, core)| {
            llcs.iter()
                .position(|cache| cache.cpus.contains(&core.cpus[0]))
                // Unknown: give it a unique domain past the known ones.
                .unwrap_or(llcs.len() + index)
        })
        .collect()
}

/// Harness and sink on CPUs no shard uses: free physical cores first, one
/// thread per core first, then cores whose last-level cache hosts the fewest
/// shards, then topology order; harness and sink share the spare CPUs when
/// there are too few for both.
fn separate_helpers(
    topology: &Topology,
    shard_cpus: &[u32],
    request: &LayoutRequest,
) -> Result<(Vec<u32>, Vec<u32>), LayoutError> {
    let shard_set: BTreeSet<u32> = shard_cpus.iter().copied().collect();
    let shard_cores: BTreeSet<usize> = shard_cpus
        .iter()
        .map(|&cpu| core_index(topology, cpu))
        .collect();
    // Shards per last-level-cache domain: helpers prefer a domain with
    // fewer shards so their cache traffic disturbs fewer of them.
    let llc_of = llc_domains(topology);
    let mut shards_in_domain: BTreeMap<usize, usize> = BTreeMap::new();
    for &index in &shard_cores {
        *shards_in_domain.entry(llc_of[index]).or_default() += 1;
    }
    let mut candidates: Vec<((bool, usize, usize, usize), u32)> = Vec::new();
    for (index, core) in topology.cores.iter().enumerate() {
        let neighbours = shards_in_domain.get(&llc_of[index]).copied().unwrap_or(0);
        for (thread, &cpu) in core.cpus.iter().enumerate() {
            if !shard_set.contains(&cpu) {
                let key = (shard_cores.contains(&index), thread, neighbours, index);
                candidates.push((key, cpu));
            }
        }
    }
    if candidates.is_empty() {
        return Err(LayoutError::NoSpareCpu {
            shards: shard_cpus.len(),
            cpus: topology.cpu_count(),
        });
    }
    candidates.sort_unstable();
    let spare: Vec<u32> = candidates.into_iter().map(|(_, cpu)| cpu).collect();
    let wanted = request.sink_cpus + request.harness_cpus;
    if spare.len() >= wanted {
        let sink = sorted(spare[..request.sink_cpus].iter().copied());
        let harness = sorted(spare[request.sink_cpus..wanted].iter().copied());
        Ok((harness, sink))
    } else {
        // Too few to give each its own: both use all the spare CPUs.
        Ok((sorted(spare.iter().copied()), sorted(spare.iter().copied())))
    }
}
