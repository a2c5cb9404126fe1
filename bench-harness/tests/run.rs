//! Known loads give known reports: the harness against a tiny SMTP server on
//! 127.0.0.1 (tests/common), through the library and the binary.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use sluice_bench::cli::{self, Cli};
use sluice_bench::report::Report;

use common::{closed_port, consecutive_listeners, ServerOpts, TestServer};

fn args(extra: &[&str]) -> cli::RunArgs {
    let mut argv = vec!["sluice-bench", "run", "--progress", "none", "--cores", "1"];
    argv.extend_from_slice(extra);
    match Cli::try_parse_from(argv).unwrap().command {
        cli::Command::Run(a) => *a,
        other => panic!("parsed as {other:?}"),
    }
}

fn run(extra: &[&str]) -> Report {
    sluice_bench::run::run(&args(extra), Arc::new(AtomicBool::new(false)))
        .unwrap()
        .report
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice-bench"))
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn fixed_reply_delay_gives_latency_at_least_the_delay_and_exact_counts() {
    let server = TestServer::start(ServerOpts {
        data_delay: Duration::from_millis(20),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let hgrm = dir.path().join("r.hgrm");
    let addr = server.addr.to_string();
    let report = run(&[
        "--target",
        &addr,
        "--messages",
        "60",
        "--connections",
        "3",
        "--recipients",
        "1-3",
        "--size",
        "500-3k",
        "--run-id",
        "known",
        "--json",
        p(&json),
        "--hgrm",
        p(&hgrm),
    ]);
    assert!(report.passed, "{:?}", report.problems);
    assert_eq!(report.messages, 60);
    assert_eq!(report.accepted, 60);
    assert_eq!(report.failed, 0);
    assert_eq!(server.get(|c| &c.accepted), 60);
    assert_eq!(report.recipients_accepted, server.get(|c| &c.recipients));
    assert_eq!(report.bytes, server.get(|c| &c.bytes));
    assert_eq!(server.get(|c| &c.injected_headers), 60);
    // Every sample waited for the server's 20 ms (HdrHistogram keeps 3
    // significant digits, so allow its quantisation).
    assert!(
        report.inject_latency_ms.min >= 19.9,
        "{:?}",
        report.inject_latency_ms
    );
    assert_eq!(report.inject_latency_ms.count, 60);
    // Each message exactly once, with its id.
    let ids: BTreeSet<String> = server
        .counts
        .ids
        .lock()
        .unwrap()
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    let expected: BTreeSet<String> = (0..60).map(|n| format!("known-{n}")).collect();
    assert_eq!(ids, expected);

    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    for key in [
        "messages",
        "accepted",
        "seconds",
        "msgs_per_sec",
        "msgs_per_hour",
        "errors",
    ] {
        assert!(j.get(key).is_some(), "JSON report lacks {key}");
    }
    for key in ["p50", "p99", "max"] {
        assert!(j["inject_latency_ms"][key].as_f64().unwrap() >= 19.9);
    }
    assert_eq!(j["accepted"], 60);
    let hgrm_text = std::fs::read_to_string(&hgrm).unwrap();
    assert!(
        hgrm_text.contains("Total count    =           60]"),
        "{hgrm_text}"
    );
}

#[test]
fn bdat_when_offered_and_lockstep_without_pipelining() {
    let chunking = TestServer::start(ServerOpts {
        chunking: true,
        ..Default::default()
    });
    let report = run(&[
        "--target",
        &chunking.addr.to_string(),
        "--messages",
        "40",
        "--connections",
        "2",
    ]);
    assert!(report.passed, "{:?}", report.problems);
    assert_eq!(chunking.get(|c| &c.accepted), 40);
    assert_eq!(chunking.get(|c| &c.bdat), 40, "one BDAT LAST per message");

    let plain = TestServer::start(ServerOpts {
        pipelining: false,
        ..Default::default()
    });
    let report = run(&[
        "--target",
        &plain.addr.to_string(),
        "--messages",
        "25",
        "--connections",
        "2",
    ]);
    assert!(report.passed, "{:?}", report.problems);
    assert_eq!(plain.get(|c| &c.accepted), 25);
    assert_eq!(plain.get(|c| &c.bdat), 0);
}

#[test]
fn starttls_and_auth_plain() {
    let server = TestServer::start(ServerOpts {
        starttls: true,
        auth: Some(("bench".into(), "s3cret".into())),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &server.cert_pem).unwrap();
    let report = run(&[
        "--target",
        &server.addr.to_string(),
        "--messages",
        "30",
        "--connections",
        "2",
        "--starttls",
        "--ca",
        p(&ca),
        "--tls-server-name",
        "localhost",
        "--auth",
        "bench:s3cret",
    ]);
    assert!(report.passed, "{:?}", report.problems);
    assert_eq!(server.get(|c| &c.accepted), 30);
    assert_eq!(server.get(|c| &c.tls), 2);
    assert_eq!(server.get(|c| &c.auth_ok), 2);

    // Wrong password: every connection refused, the run fails and says why.
    let report = run(&[
        "--target",
        &server.addr.to_string(),
        "--messages",
        "5",
        "--connections",
        "1",
        "--starttls",
        "--tls-insecure",
        "--auth",
        "bench:wrong",
    ]);
    assert!(!report.passed);
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("AUTH PLAIN refused")),
        "{:?}",
        report.problems
    );
}

#[test]
fn starttls_required_but_not_offered_fails() {
    let server = TestServer::start(ServerOpts::default());
    let report = run(&[
        "--target",
        &server.addr.to_string(),
        "--messages",
        "3",
        "--connections",
        "1",
        "--starttls",
        "--tls-insecure",
    ]);
    assert!(!report.passed);
    assert_eq!(server.get(|c| &c.accepted), 0);
    assert!(
        report.connection_errors.contains_key("tls"),
        "{:?}",
        report.connection_errors
    );
}

#[test]
fn refused_connection_exits_nonzero_with_a_clear_message() {
    let port = closed_port();
    let out = bin()
        .args([
            "run",
            "--target",
            &format!("127.0.0.1:{port}"),
            "--messages",
            "10",
        ])
        .args([
            "--connect-attempts",
            "2",
            "--progress",
            "none",
            "--cores",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot connect to 127.0.0.1"), "{stderr}");
    assert!(stderr.contains("refused"), "{stderr}");
}

#[test]
fn reject_storm_exits_nonzero_and_counts_by_code() {
    let server = TestServer::start(ServerOpts {
        data_code: 554,
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let out = bin()
        .args([
            "run",
            "--target",
            &server.addr.to_string(),
            "--messages",
            "20",
        ])
        .args([
            "--connections",
            "2",
            "--progress",
            "none",
            "--cores",
            "1",
            "--json",
            p(&json),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error rate") && stderr.contains("554=20"),
        "{stderr}"
    );
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(j["errors"]["554"], 20);
    assert_eq!(j["accepted"], 0);
    assert_eq!(server.get(|c| &c.rejected), 20);

    // Tolerated when the threshold allows it.
    let report = run(&[
        "--target",
        &server.addr.to_string(),
        "--messages",
        "4",
        "--max-error-rate",
        "1",
    ]);
    assert!(report.passed, "{:?}", report.problems);
}

#[test]
fn open_loop_never_sends_ahead_of_its_schedule() {
    let server = TestServer::start(ServerOpts::default());
    let report = run(&[
        "--target",
        &server.addr.to_string(),
        "--messages",
        "50",
        "--connections",
        "3",
        "--rate",
        "200",
        "--run-id",
        "ol",
    ]);
    assert!(report.passed, "{:?}", report.problems);
    let start = report.load.started_unix_nanos;
    let ids = server.counts.ids.lock().unwrap().clone();
    assert_eq!(ids.len(), 50);
    for (id, injected) in &ids {
        let n: u64 = id.strip_prefix("ol-").unwrap().parse().unwrap();
        // Message n is due n / 200 s after the start; it is generated (and
        // stamped) at or after that moment, never before.
        let due = start + n * 5_000_000;
        assert!(
            *injected >= due,
            "message {n} stamped {} ns before its due time",
            due - injected
        );
    }
    // The last message is due at 245 ms: the run cannot have been shorter.
    assert!(report.seconds >= 0.245, "{}", report.seconds);
}

/// The open-loop schedule starts once every connection has been greeted:
/// a slow greeting is not charged to the first messages as latency.
#[test]
fn open_loop_schedule_starts_when_every_connection_is_ready() {
    let server = TestServer::start(ServerOpts {
        greet_delay: Duration::from_millis(600),
        ..Default::default()
    });
    let report = run(&[
        "--target",
        &server.addr.to_string(),
        "--messages",
        "20",
        "--connections",
        "4",
        "--rate",
        "100",
    ]);
    assert!(report.passed, "{:?}", report.problems);
    assert_eq!(report.accepted, 20);
    // Every message is due within 200 ms of the schedule's start; had the
    // schedule started before the 600 ms greetings, each would have waited
    // at least 400 ms before it could be sent.
    assert!(
        report.inject_latency_ms.max < 350.0,
        "{:?}",
        report.inject_latency_ms
    );
    // The run did wait for the greetings.
    assert!(report.seconds >= 0.6, "{}", report.seconds);
}

#[test]
fn reconnects_after_messages_per_connection() {
    let server = TestServer::start(ServerOpts::default());
    let report = run(&[
        "--target",
        &server.addr.to_string(),
        "--messages",
        "20",
        "--connections",
        "2",
        "--messages-per-connection",
        "3",
    ]);
    assert!(report.passed, "{:?}", report.problems);
    // 10 messages per slot, 3 per connection: 4 connections per slot.
    assert_eq!(server.get(|c| &c.connections), 8);
    assert_eq!(report.connections_opened, 8);
    assert_eq!(server.get(|c| &c.accepted), 20);
}

#[test]
fn the_end_of_a_slot_does_not_wait_for_the_reply_timeout() {
    // Regression: after the last reply nothing is awaited and nothing is
    // due; the connection must go on to QUIT at once, not sit out the reply
    // timeout. The bound is a hang detector, far above any honest run.
    let server = TestServer::start(ServerOpts::default());
    let report = run(&[
        "--target",
        &server.addr.to_string(),
        "--messages",
        "10",
        "--connections",
        "2",
        "--reply-timeout",
        "30s",
    ]);
    assert!(report.passed, "{:?}", report.problems);
    assert!(
        report.seconds < 20.0,
        "run took {} s: waited for the reply timeout",
        report.seconds
    );
}

#[test]
fn duration_bound_closed_loop() {
    let server = TestServer::start(ServerOpts::default());
    let report = run(&[
        "--target",
        &server.addr.to_string(),
        "--duration",
        "300ms",
        "--connections",
        "2",
    ]);
    assert!(report.passed, "{:?}", report.problems);
    assert!(report.accepted > 0);
    assert_eq!(report.accepted, server.get(|c| &c.accepted));
}

#[test]
fn route_by_domain_sends_each_domain_to_its_home_shard_port() {
    let (a, b) = consecutive_listeners();
    let base = a.local_addr().unwrap().port();
    let s0 = TestServer::start_on(a, ServerOpts::default());
    let s1 = TestServer::start_on(b, ServerOpts::default());
    let report = run(&[
        "--target",
        "127.0.0.1:1",
        "--route-by-domain",
        &base.to_string(),
        "--shards",
        "2",
        "--messages",
        "200",
        "--connections",
        "4",
        "--domains",
        "40",
        "--recipients",
        "1-2",
    ]);
    assert!(report.passed, "{:?}", report.problems);
    assert_eq!(s0.get(|c| &c.accepted) + s1.get(|c| &c.accepted), 200);
    for (shard, server) in [(0u32, &s0), (1, &s1)] {
        let domains = server.counts.rcpt_domains.lock().unwrap().clone();
        assert!(!domains.is_empty(), "shard {shard} got nothing");
        for d in domains {
            assert_eq!(sluice_shaping::lease::home_shard(&d, 2), shard, "{d}");
        }
    }
}

#[test]
fn sink_summary_gives_delivered_and_pids_give_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("sink.json");
    std::fs::write(&summary, r#"{"messages": 0}"#).unwrap();
    let server = TestServer::start(ServerOpts {
        summary: Some(summary.clone()),
        ..Default::default()
    });
    let pid = std::process::id().to_string();
    let report = run(&[
        "--target",
        &server.addr.to_string(),
        "--messages",
        "30",
        "--sink-summary",
        p(&summary),
        "--sink-wait",
        "5s",
        "--pids",
        &pid,
    ]);
    assert!(report.passed, "{:?}", report.problems);
    assert_eq!(report.delivered, Some(30));
    assert!(report.e2e_latency_ms.is_some());
    let cpu = report.target_cpu.unwrap();
    assert_eq!(cpu.pids, vec![std::process::id()]);
}

#[test]
fn same_seed_same_messages() {
    let envelopes = |seed: &str| {
        let server = TestServer::start(ServerOpts::default());
        let report = run(&[
            "--target",
            &server.addr.to_string(),
            "--messages",
            "30",
            "--connections",
            "3",
            "--seed",
            seed,
            "--recipients",
            "1-4",
            "--domain-shape",
            "zipf:1.2",
        ]);
        assert!(report.passed);
        let mut d = server.counts.rcpt_domains.lock().unwrap().clone();
        d.sort();
        (d, report.bytes)
    };
    assert_eq!(envelopes("7"), envelopes("7"));
    assert_ne!(envelopes("7"), envelopes("8"));
}

#[test]
fn help_documents_every_option() {
    let out = bin().args(["run", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for option in [
        "--target",
        "--connections",
        "--cores",
        "--messages",
        "--duration",
        "--rate",
        "--window",
        "--size",
        "--recipients",
        "--domains",
        "--domain-shape",
        "--heavy-domain",
        "--seed",
        "--starttls",
        "--tls-insecure",
        "--ca",
        "--auth",
        "--route-by-domain",
        "--shards",
        "--sink-summary",
        "--pids",
        "--json",
        "--hlog",
        "--hgrm",
        "--plot",
        "--max-error-rate",
    ] {
        assert!(help.contains(option), "--help lacks {option}");
    }
    let out = bin().arg("--version").output().unwrap();
    assert!(out.status.success());
    // Bad usage: exit code 2 and a message.
    let out = bin()
        .args(["run", "--target", "127.0.0.1:1", "--size", "12 parsecs"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn silent_server_times_out_and_fails_the_run() {
    let server = TestServer::start(ServerOpts {
        silent: true,
        ..Default::default()
    });
    let report = run(&[
        "--target",
        &server.addr.to_string(),
        "--messages",
        "5",
        "--connections",
        "1",
        "--reply-timeout",
        "200ms",
    ]);
    assert!(!report.passed);
    assert_eq!(report.accepted, 0);
    assert!(
        report.connection_errors.contains_key("timeout"),
        "{:?}",
        report.connection_errors
    );
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("without an accepted message")),
        "{:?}",
        report.problems
    );
}

#[test]
fn dropped_connections_are_counted_and_every_message_accounted() {
    let server = TestServer::start(ServerOpts {
        drop_after: Some(4),
        ..Default::default()
    });
    let report = run(&[
        "--target",
        &server.addr.to_string(),
        "--messages",
        "20",
        "--connections",
        "1",
        "--window",
        "1",
        "--max-error-rate",
        "1",
    ]);
    // Every started transaction ended exactly once, either way.
    assert_eq!(report.accepted + report.failed, report.messages);
    assert_eq!(report.accepted, server.get(|c| &c.accepted));
    assert!(report.failed >= 1);
    assert_eq!(report.errors.get("connection_lost"), Some(&report.failed));
    assert!(report.connection_errors.contains_key("connection_lost"));
    // Connection failures always fail the run, whatever the error budget.
    assert!(!report.passed);
}
