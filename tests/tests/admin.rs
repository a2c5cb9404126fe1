//! The admin listener and the `sluice` operator subcommands against a
//! running engine: `/metrics` read by an independent Prometheus parser
//! (Python `prometheus_client`), `sluice queues`, `top`, `suspend`,
//! `resume`, `bounce`, `inspect`, `reload`, `metrics`, and the access
//! restriction to configured networks.
//!
//! Needs the release binaries (`cargo build --release --bins`) or
//! `SLUICE_BIN_DIR`, and `python3` with `prometheus_client`
//! (`scripts/setup.sh` installs it).

mod ops;

use std::process::Command;

use ops::{delivered_to, wait_until};
use sluice_tests::{count, Smtp};

/// `/metrics` parses with `prometheus_client` and its counters agree with
/// the accounting log.
#[test]
fn metrics_parse_with_an_independent_parser_and_agree_with_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let sink = ops::sink(dir.path(), "sink", &["--reject-local-part", "nobody"]);
    let engine = ops::config(dir.path(), sink.port)
        .delivery("dsn = false")
        .start();
    let mut c = Smtp::connect(engine.port);
    for n in 0..20 {
        c.send(
            "from@origin.test",
            &[&format!("u{n}@metrics.test")],
            &format!("m{n}"),
        );
    }
    c.send("from@origin.test", &["nobody@metrics.test"], "mbad");
    c.quit();
    wait_until("21 outcomes", || {
        let r = engine.records();
        count(&r, "Delivery") == 20 && count(&r, "Bounce") == 1
    });
    let (status, text) = engine.get("/metrics");
    assert_eq!(status, 200, "{text}");
    let path = dir.path().join("metrics.txt");
    std::fs::write(&path, &text).unwrap();
    let script = r#"
import sys, json
from prometheus_client.parser import text_string_to_metric_families
fams = {f.name: f for f in text_string_to_metric_families(open(sys.argv[1]).read())}
def total(name, sample=None, **labels):
    f = fams[name]
    s = sample or name
    return sum(x.value for x in f.samples
               if x.name == s and all(x.labels.get(k) == v for k, v in labels.items()))
out = {
  "received": total("sluice_messages_received", "sluice_messages_received_total"),
  "delivered": total("sluice_recipients_delivered", "sluice_recipients_delivered_total"),
  "bounced": total("sluice_recipients_bounced", "sluice_recipients_bounced_total"),
  "bad_mailbox": total("sluice_bounces", "sluice_bounces_total", category="bad-mailbox"),
  "latency_count": total("sluice_delivery_latency_seconds", "sluice_delivery_latency_seconds_count"),
  "latency_inf": total("sluice_delivery_latency_seconds", "sluice_delivery_latency_seconds_bucket", le="+Inf"),
  "commits": total("sluice_group_commit_seconds", "sluice_group_commit_seconds_count"),
  "batch_records": total("sluice_group_commit_batch_records", "sluice_group_commit_batch_records_sum"),
  "segments": total("sluice_spool_segments"),
  "spool_bytes": total("sluice_spool_bytes"),
  "ready": total("sluice_queue_recipients", place="ready"),
  "log_lost": total("sluice_log_records_lost", "sluice_log_records_lost_total"),
  "types": {n: f.type for n, f in fams.items()},
}
print(json.dumps(out))
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&path)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "prometheus_client: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["received"], 21.0, "{v}");
    assert_eq!(v["delivered"], 20.0, "{v}");
    assert_eq!(v["bounced"], 1.0, "{v}");
    assert_eq!(v["bad_mailbox"], 1.0, "{v}");
    assert_eq!(v["latency_count"], 20.0, "{v}");
    assert_eq!(v["latency_inf"], 20.0, "{v}");
    assert!(v["commits"].as_f64().unwrap() >= 1.0, "{v}");
    assert!(v["batch_records"].as_f64().unwrap() >= 21.0, "{v}");
    assert!(v["segments"].as_f64().unwrap() >= 1.0, "{v}");
    assert!(
        v["spool_bytes"].as_f64().unwrap() >= 4.0 * 1024.0 * 1024.0,
        "{v}"
    );
    assert_eq!(v["log_lost"], 0.0, "{v}");
    assert_eq!(v["types"]["sluice_delivery_latency_seconds"], "histogram");
    assert_eq!(v["types"]["sluice_group_commit_batch_records"], "histogram");
    assert_eq!(v["types"]["sluice_queue_recipients"], "gauge");
    // The CLI prints the same text.
    let (ok, cli, err) = engine.cli(&["metrics"]);
    assert!(ok, "{err}");
    assert!(
        cli.contains("sluice_recipients_delivered_total{shard=\"0\"} 20"),
        "{cli}"
    );
}

/// `suspend` holds a destination (`top` shows who and why, `inspect`
/// shows the recipient waiting), other destinations flow, `resume`
/// releases it; `queues` sums it all.
#[test]
fn suspend_top_inspect_queues_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let sink = ops::sink(dir.path(), "sink", &[]);
    let engine = ops::config(dir.path(), sink.port).start();
    let (ok, out, err) = engine.cli(&[
        "suspend",
        "held.test",
        "--who",
        "alice",
        "--why",
        "maintenance window",
    ]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("held.test: suspended"), "{out}");
    let mut c = Smtp::connect(engine.port);
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(c.send(
            "from@origin.test",
            &[&format!("h{n}@held.test")],
            &format!("h{n}"),
        ));
    }
    for n in 0..2 {
        c.send(
            "from@origin.test",
            &[&format!("f{n}@free.test")],
            &format!("f{n}"),
        );
    }
    c.quit();
    wait_until("free.test delivered", || {
        delivered_to(&engine, "free.test") == 2
    });
    // Give held.test every chance to (wrongly) go out.
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(delivered_to(&engine, "held.test"), 0);
    let (ok, top, err) = engine.cli(&["top"]);
    assert!(ok, "{err}");
    let line = top
        .lines()
        .find(|l| l.starts_with("held.test"))
        .unwrap_or_else(|| panic!("{top}"));
    assert!(
        line.contains("suspended by alice (maintenance window)"),
        "{top}"
    );
    assert!(
        line.split_whitespace().nth(2) == Some("3"),
        "depth 3: {top}"
    );
    let (ok, json, _) = engine.cli(&["top", "--json"]);
    assert!(ok);
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    let held = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["domain"] == "held.test")
        .unwrap();
    assert_eq!(held["depth"], 3);
    assert!(held["oldest_age_s"].as_f64().unwrap() >= 0.0);
    assert_eq!(held["suspended"]["who"], "alice");
    let (ok, q, err) = engine.cli(&["queues"]);
    assert!(ok, "{err}");
    let total = q
        .lines()
        .find(|l| l.trim_start().starts_with("total"))
        .unwrap();
    let cols: Vec<&str> = total.split_whitespace().collect();
    // total: ready scheduled in-flight received delivered ...
    assert_eq!(
        cols[1].parse::<u64>().unwrap() + cols[2].parse::<u64>().unwrap(),
        3,
        "{q}"
    );
    assert_eq!(cols[4], "5", "{q}");
    assert_eq!(cols[5], "2", "{q}");
    let (ok, ins, err) = engine.cli(&["inspect", &ids[0]]);
    assert!(ok, "{err}");
    assert!(ins.contains("sender:    <from@origin.test>"), "{ins}");
    assert!(ins.contains("<h0@held.test> scheduled"), "{ins}");
    let (ok, bad, err) = engine.cli(&["inspect", "s0.999999"]);
    assert!(!ok && bad.is_empty() && err.contains("404"), "{err}");
    let (ok, out, err) = engine.cli(&["resume", "held.test"]);
    assert!(ok, "{err}");
    assert!(out.contains("3 recipient(s) released"), "{out}");
    wait_until("held.test delivered after resume", || {
        delivered_to(&engine, "held.test") == 3
    });
}

/// `bounce QUEUE --for` bounces what is queued (AdminBounce records, a
/// DSN to each sender) and new arrivals until the time is up.
#[test]
fn bounce_a_queue_now_and_for_a_while() {
    let dir = tempfile::tempdir().unwrap();
    let sink = ops::sink(dir.path(), "sink", &[]);
    let engine = ops::config(dir.path(), sink.port).start();
    let (ok, _, err) = engine.cli(&["suspend", "doomed.test", "--who", "bob", "--why", "x"]);
    assert!(ok, "{err}");
    let mut c = Smtp::connect(engine.port);
    c.send("a@origin.test", &["x1@doomed.test", "x2@doomed.test"], "d1");
    let (ok, out, err) = engine.cli(&[
        "bounce",
        "doomed.test",
        "--for",
        "1m",
        "--who",
        "bob",
        "--why",
        "domain is gone",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("2 recipient(s) bounced"), "{out}");
    // A new arrival is bounced too (the mailbox task catches it).
    c.send("b@origin.test", &["x3@doomed.test"], "d2");
    c.quit();
    wait_until("three admin bounces and two DSNs delivered", || {
        let r = engine.records();
        count(&r, "AdminBounce") == 3 && delivered_to(&engine, "origin.test") == 2
    });
    let records = engine.records();
    for b in records.iter().filter(|r| r["type"] == "AdminBounce") {
        assert!(
            b["text"]
                .as_str()
                .unwrap()
                .contains("bounced by bob: domain is gone"),
            "{b}"
        );
        assert!(b["category"].is_string(), "{b}");
    }
    assert_eq!(delivered_to(&engine, "doomed.test"), 0);
}

/// `reload` applies an edited bounce rules file; a broken one is refused
/// and the old rules stay.
#[test]
fn reload_applies_new_bounce_rules_and_refuses_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[rules]\nquota-issues = ['(?i)mailbox unavailable']\n",
    )
    .unwrap();
    let sink = ops::sink(dir.path(), "sink", &["--reject-local-part", "nobody"]);
    let engine = ops::config(dir.path(), sink.port)
        .delivery(&format!(
            "dsn = false\nbounce_rules = \"{}\"",
            rules.display()
        ))
        .start();
    let mut c = Smtp::connect(engine.port);
    c.send("a@origin.test", &["nobody@r.test"], "r1");
    wait_until("first bounce", || count(&engine.records(), "Bounce") == 1);
    std::fs::write(
        &rules,
        "[rules]\npolicy-related = ['(?i)mailbox unavailable']\n",
    )
    .unwrap();
    let (ok, out, err) = engine.cli(&["reload"]);
    assert!(ok, "{err}");
    assert!(out.contains("bounce rules: reloaded"), "{out}");
    c.send("a@origin.test", &["nobody@r.test"], "r2");
    wait_until("second bounce", || count(&engine.records(), "Bounce") == 2);
    std::fs::write(&rules, "[rules]\npolicy-related = ['(unclosed']\n").unwrap();
    let (ok, _, err) = engine.cli(&["reload"]);
    assert!(!ok, "a broken file is refused");
    assert!(err.contains("old rules stay"), "{err}");
    c.send("a@origin.test", &["nobody@r.test"], "r3");
    c.quit();
    wait_until("third bounce", || count(&engine.records(), "Bounce") == 3);
    let mut cats: Vec<(u64, String)> = engine
        .records()
        .iter()
        .filter(|r| r["type"] == "Bounce")
        .map(|r| {
            (
                r["at_ms"].as_u64().unwrap(),
                r["category"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    cats.sort();
    let cats: Vec<&str> = cats.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(cats, ["quota-issues", "policy-related", "policy-related"]);
}

/// Clients outside `[admin] allow` get 403 and the CLI says so.
#[test]
fn admin_access_is_restricted_to_configured_networks() {
    let dir = tempfile::tempdir().unwrap();
    let sink = ops::sink(dir.path(), "sink", &[]);
    let engine = ops::config(dir.path(), sink.port)
        .admin("allow = [\"192.0.2.0/24\"]")
        .start();
    let (status, body) = engine.get("/metrics");
    assert_eq!(status, 403, "{body}");
    let (ok, _, err) = engine.cli(&["queues"]);
    assert!(!ok);
    assert!(err.contains("403"), "{err}");
}

/// `reroute` sends a queue's waiting and future recipients to other next
/// hops; `top` says where.
#[test]
fn reroute_moves_a_queue_to_other_next_hops() {
    let dir = tempfile::tempdir().unwrap();
    let first = ops::sink(dir.path(), "first", &[]);
    let second = ops::sink(dir.path(), "second", &[]);
    let engine = ops::config(dir.path(), first.port).start();
    let (ok, _, err) = engine.cli(&["suspend", "moved.test", "--who", "ops", "--why", "move"]);
    assert!(ok, "{err}");
    let mut c = Smtp::connect(engine.port);
    c.send("a@origin.test", &["x1@moved.test"], "v1");
    let to = format!("127.0.0.1:{}", second.port);
    let (ok, out, err) = engine.cli(&["reroute", "moved.test", "--to", &to]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("moved.test: rerouted to {to}")),
        "{out}"
    );
    let (ok, json, _) = engine.cli(&["top", "--json"]);
    assert!(ok);
    assert!(json.contains("reroute:"), "{json}");
    let (ok, _, err) = engine.cli(&["resume", "moved.test"]);
    assert!(ok, "{err}");
    c.send("a@origin.test", &["x2@moved.test"], "v2");
    c.send("a@origin.test", &["y@other.test"], "v3");
    c.quit();
    wait_until("three deliveries", || {
        count(&engine.records(), "Delivery") == 3
    });
    for r in engine.records().iter().filter(|r| r["type"] == "Delivery") {
        let peer = r["peer"].as_str().unwrap_or("");
        let want = if r["queue"] == "moved.test" {
            second.port
        } else {
            first.port
        };
        assert!(peer.ends_with(&format!(":{want}")), "{r}");
    }
    let (ok, _, err) = engine.cli(&["reroute", "moved.test", "--to", "nowhere"]);
    assert!(!ok && err.contains("400"), "{err}");
}
