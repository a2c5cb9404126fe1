//! Network interfaces backed by a device: their queues, NUMA node, and the
//! interrupts that serve them with the CPUs those interrupts may run on
//! (`sys/class/net`, `proc/interrupts`, `proc/irq/N/*affinity_list`).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::sysfs::SysRoot;

/// Upper bound on interfaces examined (a container host may have thousands
/// of veths; they have no device and are skipped before this count).
const NICS_MAX: usize = 64;

/// One interrupt line serving a NIC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Irq {
    /// IRQ number.
    pub number: u32,
    /// Action name from `/proc/interrupts` (`eth0-TxRx-3`, `virtio1-input.0`).
    pub name: Option<String>,
    /// `smp_affinity_list`: CPUs allowed to take it.
    pub affinity: Option<Vec<u32>>,
    /// `effective_affinity_list`: the CPU(s) actually taking it.
    pub effective_affinity: Option<Vec<u32>>,
    /// Interrupts so far, summed over CPUs.
    pub count: Option<u64>,
}

/// A network interface with a backing device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Nic {
    /// Interface name.
    pub name: String,
    /// Driver, from the device's `driver` link.
    pub driver: Option<String>,
    /// `operstate` (`up`, `down`...).
    pub operstate: Option<String>,
    /// Link speed in Mbit/s, when the driver reports one.
    pub speed_mbps: Option<u64>,
    /// NUMA node of the device (`None` when unknown or `-1`).
    pub numa_node: Option<u32>,
    /// Receive queues.
    pub rx_queues: usize,
    /// Transmit queues.
    pub tx_queues: usize,
    /// Receive queues with RPS steering configured (non-zero `rps_cpus`).
    pub rps_queues: usize,
    /// Interrupts of the device.
    pub irqs: Vec<Irq>,
}

impl Nic {
    /// CPUs that take this NIC's interrupts (effective affinity when known,
    /// else the allowed set).
    pub fn irq_cpus(&self) -> Vec<u32> {
        let cpus: BTreeSet<u32> = self
            .irqs
            .iter()
            .filter_map(|irq| irq.effective_affinity.as_ref().or(irq.affinity.as_ref()))
            .flatten()
            .copied()
            .collect();
        cpus.into_iter().collect()
    }
}

/// One parsed line of `/proc/interrupts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterruptLine {
    /// IRQ number (numeric lines only; `NMI`, `LOC`... are skipped).
    pub number: u32,
    /// Sum of the per-CPU counts.
    pub count: u64,
    /// Last token: the action name.
    pub name: String,
}

/// Parses `/proc/interrupts`: a header of `CPUn` columns, then per IRQ its
/// number, one count per column, the chip and the action name.
pub fn parse_interrupts(text: &str) -> Vec<InterruptLine> {
    let mut lines = text.lines();
    let columns = lines
        .next()
        .map_or(0, |header| header.split_whitespace().count());
    lines
        .filter_map(|line| {
            let (number, rest) = line.trim_start().split_once(':')?;
            let number = number.parse::<u32>().ok()?;
            let mut tokens = rest.split_whitespace();
            let mut count = 0u64;
            for _ in 0..columns {
                match tokens.next()?.parse::<u64>() {
                    Ok(n) => count = count.saturating_add(n),
                    Err(_) => return None,
                }
            }
            let name = tokens.last()?.to_owned();
            Some(InterruptLine {
                number,
                count,
                name,
            })
        })
        .collect()
}

/// Reads every interface under `sys/class/net` that has a `device`.
pub fn read_nics(root: &SysRoot) -> Vec<Nic> {
    let interrupts = root
        .read("proc/interrupts")
        .map(|t| parse_interrupts(&t))
        .unwrap_or_default();
    let by_number: BTreeMap<u32, &InterruptLine> =
        interrupts.iter().map(|line| (line.number, line)).collect();
    let mut nics = Vec::new();
    for name in root.list_dir("sys/class/net") {
        if nics.len() == NICS_MAX {
            break;
        }
        let base = format!("sys/class/net/{name}");
        let device = root.join(format!("{base}/device"));
        if !device.exists() {
            continue;
        }
        let device = device.canonicalize().unwrap_or(device);
        let driver = root
            .join(format!("{base}/device/driver"))
            .read_link()
            .ok()
            .and_then(|link| link.file_name().map(|n| n.to_string_lossy().into_owned()));
        // virtio-net's device is a virtio bus device whose PCI parent holds
        // the MSI vectors; physical NICs hold them directly.
        let mut numbers: BTreeSet<u32> = BTreeSet::new();
        for dir in [device.join("msi_irqs"), device.join("../msi_irqs")] {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                numbers.extend(
                    entries
                        .filter_map(|e| e.ok())
                        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()),
                );
            }
        }
        let device_name = device.file_name().map(|n| n.to_string_lossy().into_owned());
        for line in &interrupts {
            let matches_name = line.name == name
                || line.name.starts_with(&format!("{name}-"))
                || device_name
                    .as_deref()
                    .is_some_and(|d| line.name.starts_with(&format!("{d}-")));
            if matches_name {
                numbers.insert(line.number);
            }
        }
        let irqs = numbers
            .into_iter()
            .map(|number| Irq {
                number,
                name: by_number.get(&number).map(|line| line.name.clone()),
                affinity: root.read_cpu_list(format!("proc/irq/{number}/smp_affinity_list")),
                effective_affinity: root
                    .read_cpu_list(format!("proc/irq/{number}/effective_affinity_list")),
                count: by_number.get(&number).map(|line| line.count),
            })
            .collect();
        let queues = root.list_dir(format!("{base}/queues"));
        let rx: Vec<&String> = queues.iter().filter(|q| q.starts_with("rx-")).collect();
        let rps_queues = rx
            .iter()
            .filter(|q| {
                root.read(format!("{base}/queues/{q}/rps_cpus"))
                    .is_some_and(|mask| mask.chars().any(|c| c.is_ascii_hexdigit() && c != '0'))
            })
            .count();
        nics.push(Nic {
            driver,
            operstate: root.read(format!("{base}/operstate")),
            speed_mbps: root
                .read_i64(format!("{base}/speed"))
                .and_then(|s| u64::try_from(s).ok()),
            numa_node: root
                .read_i64(format!("{base}/device/numa_node"))
                .and_then(|n| u32::try_from(n).ok()),
            rx_queues: rx.len(),
            tx_queues: queues.iter().filter(|q| q.starts_with("tx-")).count(),
            rps_queues,
            irqs,
            name,
        });
    }
    nics
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupts_parse() {
        let text = "           CPU0       CPU1\n \
                    36:          0      31513  PCI-MSIX-0000:00:02.0   1-edge      virtio1-req.0\n \
                    NMI:          0          0   Non-maskable interrupts\n \
                    40:          5          6  IR-PCI-MSI 524288-edge eth0-TxRx-0\n";
        let lines = parse_interrupts(text);
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0],
            InterruptLine {
                number: 36,
                count: 31513,
                name: "virtio1-req.0".into()
            }
        );
        assert_eq!(lines[1].name, "eth0-TxRx-0");
        assert_eq!(lines[1].count, 11);
    }
}
