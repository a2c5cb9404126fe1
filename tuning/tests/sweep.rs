//! Sweep planning, harness-report parsing, medians, best-point choice, the
//! plot, and CPU confinement of threads and children.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use sluice_tune::affinity::{confine, current_affinity, pin_current_thread};
use sluice_tune::layout::{layout, HelperPlacement, LayoutRequest, Pinning};
use sluice_tune::plot::plot_sweep;
use sluice_tune::sweep::{
    best, best_snippet, default_shard_counts, median, parse_harness_report, plan, render_table,
    summarize, RunSample, SweepError, SweepOptions, SweepPoint,
};
use sluice_tune::sysfs::{parse_cpu_list, SysRoot};
use sluice_tune::topology::Topology;

fn read(name: &str) -> Topology {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    Topology::read(&SysRoot::new(root)).expect("fixture topology")
}

fn sample(rate: f64, p99: f64) -> RunSample {
    RunSample {
        msgs_per_sec: rate,
        inject_p99_ms: p99,
        e2e_p99_ms: None,
        failed: 0,
        passed: true,
    }
}

fn point(topology: &Topology, pinning: Pinning, shards: usize) -> SweepPoint {
    SweepPoint {
        layout: layout(
            topology,
            pinning,
            HelperPlacement::Shared,
            &LayoutRequest::new(shards),
        )
        .expect("layout"),
        commit_window: Duration::from_millis(1),
    }
}

#[test]
fn plans_skip_duplicate_and_impossible_layouts() {
    let t = read("cpu2");
    let points = plan(&t, &SweepOptions::full(&t)).expect("plan");
    let labels: Vec<String> = points.iter().map(|p| p.label()).collect();
    assert_eq!(
        labels,
        vec![
            "compact/separate 1 shard(s) 1000us",
            "compact/shared 1 shard(s) 1000us",
            "compact/shared 2 shard(s) 1000us",
        ]
    );

    let t16 = read("cpu16");
    let options = SweepOptions {
        shard_counts: vec![2, 1, 99],
        pinnings: vec![Pinning::Spread],
        helpers: vec![HelperPlacement::Separate],
        commit_windows: vec![Duration::from_micros(500), Duration::from_millis(2)],
        ..SweepOptions::full(&t16)
    };
    let points = plan(&t16, &options).expect("plan");
    assert_eq!(points.len(), 4);
    assert_eq!(points[3].layout.shard_cpus, vec![0, 8]);
    assert_eq!(points[3].commit_window, Duration::from_millis(2));

    // Powers of two plus node cores, all cores and all CPUs.
    assert_eq!(default_shard_counts(&t), vec![1, 2]);
    assert_eq!(default_shard_counts(&t16), vec![1, 2, 4, 8, 16]);
    assert_eq!(
        default_shard_counts(&read("cpu128")),
        vec![1, 2, 4, 8, 16, 32, 64, 128]
    );
    let mut t6 = read("cpu16");
    t6 = t6.restrict(&[0, 2, 4, 6, 8, 10]).expect("six CPUs");
    assert_eq!(default_shard_counts(&t6), vec![1, 2, 4, 6]);
    let none = SweepOptions {
        shard_counts: vec![0, 17],
        ..SweepOptions::full(&t)
    };
    assert!(matches!(
        plan(&t, &none),
        Err(SweepError::Empty("shard_counts"))
    ));

    let empty = SweepOptions {
        pinnings: Vec::new(),
        ..SweepOptions::full(&t)
    };
    assert!(matches!(
        plan(&t, &empty),
        Err(SweepError::Empty("pinnings"))
    ));
    let zero = SweepOptions {
        repetitions: 0,
        ..SweepOptions::full(&t)
    };
    assert!(matches!(
        plan(&t, &zero),
        Err(SweepError::Empty("repetitions"))
    ));
    let t128 = read("cpu128");
    let huge = SweepOptions {
        shard_counts: (1..=128).collect(),
        commit_windows: (1..=10).map(Duration::from_millis).collect(),
        ..SweepOptions::full(&t128)
    };
    assert!(matches!(plan(&t128, &huge), Err(SweepError::TooLarge(_))));
}

#[test]
fn harness_reports_parse() {
    let json = r#"{"msgs_per_sec": 12345.5, "failed": 2, "passed": true,
        "inject_latency_ms": {"p50": 0.4, "p99": 1.75},
        "e2e_latency_ms": {"p99": 3.5}, "extra": [1, 2]}"#;
    let s = parse_harness_report(json).expect("report");
    assert_eq!(s.msgs_per_sec, 12345.5);
    assert_eq!(s.inject_p99_ms, 1.75);
    assert_eq!(s.e2e_p99_ms, Some(3.5));
    assert_eq!((s.failed, s.passed), (2, true));
    let no_e2e = r#"{"msgs_per_sec": 1, "failed": 0, "inject_latency_ms": {"p99": 1},
        "e2e_latency_ms": null}"#;
    let s = parse_harness_report(no_e2e).expect("report");
    assert_eq!((s.e2e_p99_ms, s.passed), (None, false));
    let missing = parse_harness_report(r#"{"failed": 0}"#).expect_err("no rate");
    assert!(missing.to_string().contains("/msgs_per_sec"), "{missing}");
    assert!(parse_harness_report("not json").is_err());
}

#[test]
fn medians_and_the_best_point() {
    assert_eq!(median(&[]), None);
    assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
    assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));

    let t = read("cpu16");
    let one = summarize(
        point(&t, Pinning::Compact, 1),
        &[sample(1000.0, 1.0), sample(1200.0, 1.2), sample(900.0, 0.9)],
    )
    .expect("summary");
    assert_eq!(
        (one.msgs_per_sec, one.inject_p99_ms, one.runs),
        (1000.0, 1.0, 3)
    );
    assert_eq!(one.msgs_per_sec_range, (900.0, 1200.0));
    assert!(summarize(point(&t, Pinning::Compact, 1), &[]).is_none());

    // Four shards are fastest; two shards are within 2 % and have a lower
    // p99, so they win; eight shards are fastest of all but a run failed.
    let two = summarize(point(&t, Pinning::Spread, 2), &[sample(1980.0, 0.8)]).expect("two");
    let four = summarize(point(&t, Pinning::Spread, 4), &[sample(2000.0, 2.0)]).expect("four");
    let mut bad = sample(9000.0, 0.1);
    bad.passed = false;
    let eight = summarize(point(&t, Pinning::Spread, 8), &[bad]).expect("eight");
    let all = vec![one, two.clone(), four, eight];
    assert_eq!(best(&all).map(|b| b.point.label()), Some(two.point.label()));
    assert!(best(&all[3..]).is_none(), "a failed point is never best");

    let snippet = best_snippet(&two);
    assert!(snippet.contains("cores = [0, 8]\n"), "{snippet}");
    assert!(
        snippet.contains("[spool]\ncommit_window = \"1ms\"\n"),
        "{snippet}"
    );
    let table = render_table(&all);
    assert_eq!(table.lines().count(), 5);
    assert!(table
        .lines()
        .nth(1)
        .is_some_and(|l| l.starts_with("spread/shared 8 shard(s)")));

    let dir = tempfile::tempdir().expect("tempdir");
    let svg = dir.path().join("sweep.svg");
    plot_sweep(&all, &svg).expect("plot");
    let text = std::fs::read_to_string(&svg).expect("svg written");
    assert!(text.contains("<svg") && text.contains("throughput"));
    assert!(plot_sweep(&[], &svg).is_err());
}

#[test]
fn threads_and_children_are_confined() {
    let allowed = current_affinity().expect("affinity");
    assert!(!allowed.is_empty());
    let target = *allowed.last().expect("non-empty");
    let pinned = std::thread::spawn(move || {
        pin_current_thread(&[target]).expect("pin");
        current_affinity().expect("affinity")
    })
    .join()
    .expect("thread");
    assert_eq!(pinned, vec![target]);

    let mut command = Command::new("cat");
    command.arg("/proc/self/status");
    confine(&mut command, &[target]).expect("confine");
    let output = command.output().expect("run cat");
    let status = String::from_utf8_lossy(&output.stdout);
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .and_then(|v| parse_cpu_list(v.trim()))
        .expect("Cpus_allowed_list");
    assert_eq!(list, vec![target]);

    assert!(pin_current_thread(&[]).is_err());
    assert!(confine(&mut Command::new("true"), &[1 << 20]).is_err());
}
