//! The machine's CPU topology: logical CPUs, the physical cores they share
//! (SMT siblings), packages, NUMA nodes and caches, read from
//! `sys/devices/system/{cpu,node}` under a [`SysRoot`].
//!
//! Physical cores are identified by their sibling set (`thread_siblings_list`,
//! or `core_cpus_list` on newer kernels) rather than by `core_id`, because
//! `core_id` repeats across packages and has gaps on many machines.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::sysfs::{field, format_cpu_list, parse_kb_bytes, parse_size_bytes, SysRoot};

/// Upper bound on the CPUs we model; a larger `online` list is refused as
/// corrupt rather than allocated.
pub const CPUS_MAX: usize = 8192;

/// Errors that leave no topology at all. Partial information (missing cache or
/// node files) is not an error: it is recorded as unknown.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// Neither `cpu/online` nor any `cpuN` directory was found.
    #[error("no CPUs found under {0}/sys/devices/system/cpu (is /sys mounted?)")]
    NoCpus(String),
    /// `cpu/online` listed more CPUs than [`CPUS_MAX`].
    #[error("{0} online CPUs is more than the {CPUS_MAX} this tool models")]
    TooManyCpus(usize),
}

/// Where the topology came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TopologySource {
    /// Every CPU had its `topology/` files.
    Sysfs,
    /// Some CPUs lacked `topology/` files; each such CPU is assumed to be its
    /// own physical core on package 0.
    Partial,
}

/// One logical CPU (a hardware thread).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Cpu {
    /// Kernel CPU number.
    pub id: u32,
    /// Physical package (socket).
    pub package: u32,
    /// Index into [`Topology::cores`] of the physical core this CPU is a
    /// thread of.
    pub core_index: usize,
    /// NUMA node id (0 when the machine has no node directory).
    pub node: u32,
}

/// A physical core and its hardware threads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PhysicalCore {
    /// Package (socket) the core sits on.
    pub package: u32,
    /// NUMA node of its first thread.
    pub node: u32,
    /// Its online hardware threads (SMT siblings), ascending.
    pub cpus: Vec<u32>,
}

/// A NUMA node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NumaNode {
    /// Node id.
    pub id: u32,
    /// Online CPUs of the node, ascending.
    pub cpus: Vec<u32>,
    /// `MemTotal` of the node, when readable.
    pub memory_bytes: Option<u64>,
}

/// One cache instance (deduplicated across the CPUs sharing it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Cache {
    /// 1, 2, 3...
    pub level: u8,
    /// `Data`, `Instruction` or `Unified`.
    pub kind: String,
    /// Size, when readable.
    pub size_bytes: Option<u64>,
    /// CPUs sharing this instance.
    pub cpus: Vec<u32>,
}

/// The machine as the layout generator sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Topology {
    /// Online CPUs, ascending by id.
    pub cpus: Vec<Cpu>,
    /// Physical cores, ordered by (node, package, first thread).
    pub cores: Vec<PhysicalCore>,
    /// NUMA nodes, ascending by id (one synthetic node 0 when `/sys` has
    /// none).
    pub nodes: Vec<NumaNode>,
    /// Cache instances, by level then first CPU.
    pub caches: Vec<Cache>,
    /// `cpu/smt/active` when present.
    pub smt_active: Option<bool>,
    /// CPUs isolated from the scheduler (`cpu/isolated`, `isolcpus=`).
    pub isolated: Vec<u32>,
    /// How complete the information was.
    pub source: TopologySource,
}

impl Topology {
    /// Reads the topology under `root`.
    pub fn read(root: &SysRoot) -> Result<Self, TopologyError> {
        const CPU_DIR: &str = "sys/devices/system/cpu";
        let online = root
            .read_cpu_list(format!("{CPU_DIR}/online"))
            .filter(|cpus| !cpus.is_empty())
            .unwrap_or_else(|| {
                root.list_dir(CPU_DIR)
                    .iter()
                    .filter_map(|name| name.strip_prefix("cpu")?.parse::<u32>().ok())
                    .collect()
            });
        if online.is_empty() {
            return Err(TopologyError::NoCpus(root.path().display().to_string()));
        }
        if online.len() > CPUS_MAX {
            return Err(TopologyError::TooManyCpus(online.len()));
        }

        let node_of = read_node_map(root, &online);
        let mut source = TopologySource::Sysfs;
        // Each online CPU joins exactly one core, even when sibling files
        // disagree with each other: the first CPU of a sibling set claims the
        // members that are still unclaimed.
        let mut core_of: BTreeMap<u32, usize> = BTreeMap::new();
        let mut cores: Vec<PhysicalCore> = Vec::new();
        for &cpu in &online {
            if core_of.contains_key(&cpu) {
                continue;
            }
            let dir = format!("{CPU_DIR}/cpu{cpu}/topology");
            let package = root.read_u64(format!("{dir}/physical_package_id"));
            let siblings = root
                .read_cpu_list(format!("{dir}/thread_siblings_list"))
                .or_else(|| root.read_cpu_list(format!("{dir}/core_cpus_list")));
            let (package, mut siblings) = match (package, siblings) {
                (Some(package), Some(siblings)) if siblings.contains(&cpu) => {
                    (u32::try_from(package).unwrap_or(u32::MAX), siblings)
                }
                _ => {
                    source = TopologySource::Partial;
                    (0, vec![cpu])
                }
            };
            // Offline or already claimed siblings are not part of this core.
            siblings.retain(|s| online.binary_search(s).is_ok() && !core_of.contains_key(s));
            for &sibling in &siblings {
                core_of.insert(sibling, cores.len());
            }
            let node = node_of.get(&cpu).copied().unwrap_or(0);
            cores.push(PhysicalCore {
                package,
                node,
                cpus: siblings,
            });
        }

        let mut order: Vec<usize> = (0..cores.len()).collect();
        order.sort_by_key(|&index| {
            (
                cores[index].node,
                cores[index].package,
                cores[index].cpus[0],
            )
        });
        let mut new_index = vec![0; cores.len()];
        for (new, &old) in order.iter().enumerate() {
            new_index[old] = new;
        }
        let cores: Vec<PhysicalCore> = order.iter().map(|&old| cores[old].clone()).collect();
        let cpus = online
            .iter()
            .map(|&id| {
                // Every online CPU was claimed by a core in the loop above.
                let core_index = new_index[core_of[&id]];
                Cpu {
                    id,
                    package: cores[core_index].package,
                    core_index,
                    node: node_of.get(&id).copied().unwrap_or(0),
                }
            })
            .collect();

        let mut nodes: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for &cpu in &online {
            nodes
                .entry(node_of.get(&cpu).copied().unwrap_or(0))
                .or_default()
                .push(cpu);
        }
        let nodes = nodes
            .into_iter()
            .map(|(id, cpus)| NumaNode {
                id,
                cpus,
                memory_bytes: root
                    .read(format!("sys/devices/system/node/node{id}/meminfo"))
                    .and_then(|text| field(&text, "MemTotal").and_then(parse_kb_bytes)),
            })
            .collect();

        Ok(Topology {
            cpus,
            cores,
            nodes,
            caches: read_caches(root, &online),
            smt_active: root
                .read_u64(format!("{CPU_DIR}/smt/active"))
                .map(|v| v == 1),
            isolated: root
                .read_cpu_list(format!("{CPU_DIR}/isolated"))
                .unwrap_or_default(),
            source,
        })
    }

    /// The same machine seen through a CPU set (a cgroup cpuset or a
    /// taskset mask): CPUs outside `allowed` are dropped, with the cores,
    /// nodes and caches left empty by that. `None` when no CPU remains.
    pub fn restrict(&self, allowed: &[u32]) -> Option<Topology> {
        let keep = |cpu: &u32| allowed.contains(cpu);
        let mut new_index = vec![None; self.cores.len()];
        let mut cores = Vec::new();
        for (old, core) in self.cores.iter().enumerate() {
            let cpus: Vec<u32> = core.cpus.iter().copied().filter(keep).collect();
            if !cpus.is_empty() {
                new_index[old] = Some(cores.len());
                cores.push(PhysicalCore {
                    cpus,
                    ..core.clone()
                });
            }
        }
        let cpus: Vec<Cpu> = self
            .cpus
            .iter()
            .filter(|cpu| keep(&cpu.id))
            .filter_map(|cpu| {
                Some(Cpu {
                    core_index: new_index[cpu.core_index]?,
                    ..cpu.clone()
                })
            })
            .collect();
        if cpus.is_empty() {
            return None;
        }
        let nodes = self
            .nodes
            .iter()
            .map(|n| NumaNode {
                cpus: n.cpus.iter().copied().filter(keep).collect(),
                ..n.clone()
            })
            .filter(|n| !n.cpus.is_empty())
            .collect();
        let caches = self
            .caches
            .iter()
            .map(|c| Cache {
                cpus: c.cpus.iter().copied().filter(keep).collect(),
                ..c.clone()
            })
            .filter(|c| !c.cpus.is_empty())
            .collect();
        Some(Topology {
            cpus,
            cores,
            nodes,
            caches,
            smt_active: self.smt_active,
            isolated: self.isolated.iter().copied().filter(keep).collect(),
            source: self.source,
        })
    }

    /// Number of online logical CPUs.
    pub fn cpu_count(&self) -> usize {
        self.cpus.len()
    }

    /// Number of physical cores.
    pub fn core_count(&self) -> usize {
        self.cores.len()
    }

    /// Number of packages (sockets).
    pub fn package_count(&self) -> usize {
        let mut packages: Vec<u32> = self.cores.iter().map(|core| core.package).collect();
        packages.sort_unstable();
        packages.dedup();
        packages.len()
    }

    /// Largest number of hardware threads on one core (1 without SMT).
    pub fn threads_per_core(&self) -> usize {
        self.cores
            .iter()
            .map(|core| core.cpus.len())
            .max()
            .unwrap_or(1)
    }

    /// The CPU with this id.
    pub fn cpu(&self, id: u32) -> Option<&Cpu> {
        self.cpus
            .binary_search_by_key(&id, |cpu| cpu.id)
            .ok()
            .map(|index| &self.cpus[index])
    }

    /// The last-level cache instances (the domains where shards compete for
    /// cache), e.g. one per socket on Intel, one per CCX on AMD.
    pub fn last_level_caches(&self) -> Vec<&Cache> {
        let level = self
            .caches
            .iter()
            .filter(|cache| cache.kind != "Instruction")
            .map(|cache| cache.level)
            .max();
        self.caches
            .iter()
            .filter(|cache| Some(cache.level) == level && cache.kind != "Instruction")
            .collect()
    }

    /// One line per fact, for the readable report.
    pub fn summary(&self) -> String {
        format!(
            "{} CPUs on {} physical cores ({} thread(s) per core), {} package(s), {} NUMA node(s)",
            self.cpu_count(),
            self.core_count(),
            self.threads_per_core(),
            self.package_count(),
            self.nodes.len()
        )
    }

    /// Cache sizes per level (`L1d 48.0 KiB x2, L3 480.0 MiB x1`).
    pub fn cache_summary(&self) -> String {
        let mut kinds: BTreeMap<(u8, &str), (Option<u64>, usize)> = BTreeMap::new();
        for cache in &self.caches {
            let entry = kinds
                .entry((cache.level, cache.kind.as_str()))
                .or_insert((None, 0));
            entry.0 = entry.0.or(cache.size_bytes);
            entry.1 += 1;
        }
        if kinds.is_empty() {
            return "unknown".to_owned();
        }
        kinds
            .into_iter()
            .map(|((level, kind), (size, count))| {
                let suffix = match kind {
                    "Data" => "d",
                    "Instruction" => "i",
                    _ => "",
                };
                let size = size.map_or("unknown".to_owned(), crate::sysfs::format_bytes);
                format!("L{level}{suffix} {size} x{count}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The node's CPUs as a kernel CPU list.
    pub fn node_cpu_list(&self, node: u32) -> String {
        self.nodes
            .iter()
            .find(|n| n.id == node)
            .map_or(String::new(), |n| format_cpu_list(&n.cpus))
    }
}

/// CPU id -> NUMA node id, from `node/nodeN/cpulist`. Empty when the machine
/// exposes no nodes (then everything is node 0).
fn read_node_map(root: &SysRoot, online: &[u32]) -> BTreeMap<u32, u32> {
    let mut map = BTreeMap::new();
    for name in root.list_dir("sys/devices/system/node") {
        let Some(id) = name
            .strip_prefix("node")
            .and_then(|id| id.parse::<u32>().ok())
        else {
            continue;
        };
        let Some(cpus) = root.read_cpu_list(format!("sys/devices/system/node/{name}/cpulist"))
        else {
            continue;
        };
        for cpu in cpus {
            if online.binary_search(&cpu).is_ok() {
                map.insert(cpu, id);
            }
        }
    }
    map
}

/// Cache instances deduplicated by (level, type, sharing CPUs).
fn read_caches(root: &SysRoot, online: &[u32]) -> Vec<Cache> {
    let mut seen: BTreeMap<(u8, String, Vec<u32>), Option<u64>> = BTreeMap::new();
    for &cpu in online {
        let cache_dir = format!("sys/devices/system/cpu/cpu{cpu}/cache");
        for index in root.list_dir(&cache_dir) {
            if !index.starts_with("index") {
                continue;
            }
            let dir = format!("{cache_dir}/{index}");
            let Some(level) = root.read_u64(format!("{dir}/level")) else {
                continue;
            };
            let kind = root
                .read(format!("{dir}/type"))
                .unwrap_or_else(|| "Unified".to_owned());
            let mut cpus = root
                .read_cpu_list(format!("{dir}/shared_cpu_list"))
                .unwrap_or_else(|| vec![cpu]);
            cpus.retain(|c| online.binary_search(c).is_ok());
            let size = root
                .read(format!("{dir}/size"))
                .and_then(|s| parse_size_bytes(&s));
            let level = u8::try_from(level).unwrap_or(u8::MAX);
            seen.entry((level, kind, cpus)).or_insert(size);
        }
    }
    let mut caches: Vec<Cache> = seen
        .into_iter()
        .map(|((level, kind, cpus), size_bytes)| Cache {
            level,
            kind,
            size_bytes,
            cpus,
        })
        .collect();
    caches.sort_by(|a, b| {
        (a.level, &a.kind, a.cpus.first()).cmp(&(b.level, &b.kind, b.cpus.first()))
    });
    caches
}
