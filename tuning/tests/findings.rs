//! The rules that turn readings into findings, fed synthetic readings.

use std::path::PathBuf;

use sluice_tune::findings::{
    cpu_findings, limit_findings, nic_findings, storage_findings, uring_findings, Finding, Severity,
};
use sluice_tune::limits::{Limits, Rlimit};
use sluice_tune::nic::Nic;
use sluice_tune::storage::{StorageReport, SyncLatency, WriteBandwidth};
use sluice_tune::sysfs::SysRoot;
use sluice_tune::topology::Topology;
use sluice_tune::uring::UringProbe;

fn by_id<'a>(findings: &'a [Finding], id: &str) -> &'a Finding {
    findings
        .iter()
        .find(|f| f.id == id)
        .unwrap_or_else(|| panic!("no finding {id}"))
}

fn limits() -> Limits {
    Limits {
        memlock_bytes: Some(Rlimit {
            soft: Some(8 << 20),
            hard: Some(8 << 20),
        }),
        nofile: Some(Rlimit {
            soft: Some(1 << 20),
            hard: Some(1 << 20),
        }),
        cap_ipc_lock: Some(false),
        somaxconn: Some(4096),
        tcp_max_syn_backlog: Some(4096),
        ephemeral_ports: Some((1024, 65535)),
        tcp_tw_reuse: Some(1),
        tcp_fin_timeout_s: Some(60),
        nr_open: Some(1 << 20),
        max_map_count: Some(65530),
    }
}

#[test]
fn memlock_rules_follow_glommio() {
    let mut l = limits();
    // 8 MiB covers no shard's 3 x 10 MiB registration without CAP_IPC_LOCK.
    assert_eq!(
        by_id(&limit_findings(&l, 1), "memlock").severity,
        Severity::Warning
    );
    l.cap_ipc_lock = Some(true);
    assert_eq!(
        by_id(&limit_findings(&l, 64), "memlock").severity,
        Severity::Ok
    );
    l.cap_ipc_lock = Some(false);
    l.memlock_bytes = Some(Rlimit {
        soft: None,
        hard: None,
    });
    assert_eq!(
        by_id(&limit_findings(&l, 64), "memlock").severity,
        Severity::Ok
    );
    l.memlock_bytes = Some(Rlimit {
        soft: Some(64 << 10),
        hard: Some(64 << 10),
    });
    let f = limit_findings(&l, 1);
    let memlock = by_id(&f, "memlock");
    assert_eq!(memlock.severity, Severity::Critical);
    assert_eq!(memlock.command.as_deref(), Some("ulimit -l unlimited"));
}

#[test]
fn network_tunables() {
    let f = limit_findings(&limits(), 2);
    for id in [
        "nofile",
        "somaxconn",
        "syn-backlog",
        "ephemeral-ports",
        "tw-reuse",
    ] {
        assert_eq!(by_id(&f, id).severity, Severity::Ok, "{id}");
    }
    let mut l = limits();
    l.nofile = Some(Rlimit {
        soft: Some(1024),
        hard: Some(4096),
    });
    l.somaxconn = Some(128);
    l.ephemeral_ports = Some((32768, 32768 + 9999));
    l.tcp_tw_reuse = Some(0);
    l.max_map_count = Some(1000);
    let f = limit_findings(&l, 2);
    assert_eq!(
        by_id(&f, "nofile").command.as_deref(),
        Some("ulimit -n 1048576")
    );
    assert_eq!(by_id(&f, "somaxconn").severity, Severity::Warning);
    let ports = by_id(&f, "ephemeral-ports");
    assert_eq!(ports.severity, Severity::Warning);
    assert!(
        ports.observed.contains("at most 10000 concurrent"),
        "{}",
        ports.observed
    );
    assert!(
        ports.observed.contains("about 166 new ones/s"),
        "{}",
        ports.observed
    );
    assert_eq!(
        by_id(&f, "tw-reuse").command.as_deref(),
        Some("sysctl -w net.ipv4.tcp_tw_reuse=1")
    );
    assert_eq!(by_id(&f, "max-map-count").severity, Severity::Warning);
}

#[test]
fn io_uring_rules() {
    let mut probe = UringProbe {
        disabled_sysctl: Some(0),
        available: true,
        setup_error: None,
        features: vec!["NODROP".into()],
        supported_ops: vec!["READ".into()],
        missing_required_ops: vec!["FALLOCATE".into()],
        last_op: Some(57),
    };
    let f = uring_findings(Some(&probe));
    assert_eq!(by_id(&f, "io_uring").severity, Severity::Ok);
    assert!(by_id(&f, "io_uring").observed.contains("last LISTEN"));
    assert_eq!(by_id(&f, "io_uring-ops").severity, Severity::Critical);
    probe.available = false;
    probe.disabled_sysctl = Some(2);
    let f = uring_findings(Some(&probe));
    assert_eq!(by_id(&f, "io_uring-disabled").severity, Severity::Critical);
    assert_eq!(
        by_id(&f, "io_uring").command.as_deref(),
        Some("sysctl -w kernel.io_uring_disabled=0")
    );
    assert_eq!(
        by_id(&uring_findings(None), "io_uring").severity,
        Severity::Unknown
    );
}

fn storage(filesystem: &str) -> StorageReport {
    StorageReport {
        dir: PathBuf::from("/var/spool/sluice"),
        filesystem: Some(filesystem.to_owned()),
        filesystem_magic: None,
        total_bytes: Some(100 << 30),
        free_bytes: Some(50 << 30),
        fallocate_ok: Some(true),
        fallocate_error: None,
        sync: Some(SyncLatency {
            count: 200,
            median_us: 150,
            p99_us: 900,
            max_us: 1500,
        }),
        sync_error: None,
        write: Some(WriteBandwidth {
            bytes: 1 << 28,
            elapsed_s: 0.5,
            mib_per_s: 512.0,
            direct: true,
        }),
        write_error: None,
    }
}

#[test]
fn storage_rules() {
    let f = storage_findings(Some(&storage("xfs")));
    for id in [
        "spool-fs",
        "spool-free",
        "spool-fallocate",
        "spool-fdatasync",
    ] {
        assert_eq!(by_id(&f, id).severity, Severity::Ok, "{id}");
    }
    assert!(by_id(&f, "spool-fdatasync")
        .recommendation
        .contains("commit_window = \"150us\""));
    assert_eq!(
        by_id(&storage_findings(Some(&storage("tmpfs"))), "spool-fs").severity,
        Severity::Critical
    );
    assert_eq!(
        by_id(&storage_findings(Some(&storage("overlayfs"))), "spool-fs").severity,
        Severity::Warning
    );
    let mut bad = storage("ext4");
    bad.free_bytes = Some(100 << 20);
    bad.fallocate_ok = Some(false);
    bad.fallocate_error = Some("Operation not supported".into());
    bad.sync = Some(SyncLatency {
        count: 200,
        median_us: 4000,
        p99_us: 30_000,
        max_us: 40_000,
    });
    bad.write = None;
    bad.write_error = Some("Permission denied".into());
    let f = storage_findings(Some(&bad));
    assert_eq!(by_id(&f, "spool-free").severity, Severity::Critical);
    assert_eq!(by_id(&f, "spool-fallocate").severity, Severity::Critical);
    assert_eq!(by_id(&f, "spool-fdatasync").severity, Severity::Warning);
    assert_eq!(by_id(&f, "spool-write").severity, Severity::Unknown);
    assert!(by_id(&f, "spool-write")
        .observed
        .contains("Permission denied"));
}

#[test]
fn nic_and_cpu_rules() {
    let nic = Nic {
        name: "eth0".into(),
        driver: Some("virtio_net".into()),
        operstate: Some("up".into()),
        speed_mbps: None,
        numa_node: None,
        rx_queues: 1,
        tx_queues: 1,
        rps_queues: 0,
        irqs: Vec::new(),
    };
    let f = nic_findings(std::slice::from_ref(&nic), 40, 1);
    assert_eq!(
        by_id(&f, "nic-eth0").command.as_deref(),
        Some("echo ff,ffffffff > /sys/class/net/eth0/queues/rx-0/rps_cpus")
    );
    let steered = Nic {
        rps_queues: 1,
        ..nic
    };
    assert_eq!(
        by_id(&nic_findings(&[steered], 1, 1), "nic-eth0").severity,
        Severity::Ok
    );

    let root = SysRoot::new(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cpu64"));
    let topology = Topology::read(&root).expect("fixture");
    let all: Vec<u32> = (0..64).collect();
    let f = cpu_findings(Ok(&topology), Some(&all), Some("performance"));
    assert_eq!(by_id(&f, "cpu-affinity").severity, Severity::Ok);
    assert_eq!(by_id(&f, "cpufreq").severity, Severity::Ok);
    assert_eq!(
        by_id(&f, "numa").command.as_deref(),
        Some("sluice-tune layouts --shards 16")
    );
    assert_eq!(
        by_id(&f, "smt").command.as_deref(),
        Some("sluice-tune layouts --shards 32")
    );
    let f = cpu_findings(Err("no /sys"), None, None);
    assert_eq!(by_id(&f, "cpus").severity, Severity::Unknown);
}
