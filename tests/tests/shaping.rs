//! Shaping fidelity end to end (issue 10, "Shaping fidelity"): a std SMTP
//! injector → the real `sluice` binary with two shards and a shaping rules
//! file → the real `sluice-sink`, everything on 127.0.0.1. What is checked
//! is measured at the sink, from its JSON summary: deliveries per domain per
//! wall-clock second (`domains.D.messages_per_s`) and the peak of concurrent
//! connections per domain (`domains.D.peak_connections`).
//!
//! - `rate_and_connection_limits_hold_across_shards`: one domain with
//!   `max_message_rate = "50/s burst 5"` and `max_connections = 2`; its
//!   messages come in through BOTH injection paths at once (the shared port
//!   and the per-shard port of the shard that is not the domain's home), so
//!   both shards hold queues for it and tokens and permits are leased across
//!   shards. Every 10-second window at the sink holds at most
//!   `50 x 10 + 2%` messages and the domain never has more than 2
//!   connections.
//! - `sink_421_puts_the_domain_into_backoff`: the sink answers `421 4.7.0`
//!   beyond 30 messages per second for a domain whose rule allows 100/s
//!   with a backoff rule on `421 4.7.0` (`backoff_max_message_rate =
//!   "10/s"`). The engine logs the mode change with the rule's name, and from
//!   then on the sink sees at most the backoff rate.
//!
//! Margins: the shaping crate guarantees at most `burst + w x rate` grants
//! in any window `w`; the sink counts arrivals, which lag grants by a
//! varying delay, so a message granted just before a window edge may be
//! counted just after it. The bounds below allow `burst` plus 2% of the
//! window's allowance (issue 10's tolerance), which is 5 + 10 messages for
//! the first test; a shaping failure (no leasing: each shard at the full
//! rate, or no limit) shows up as about twice the allowance or more.
//!
//! Only upper bounds are asserted. What the runs also show (printed with
//! `--nocapture`): when one shard's queue for the domain drains, the other
//! shard runs below the limit for a few seconds while the drained shard's
//! lease runs out and the other's share doubles with its demand (the engine
//! caps leases at 2 s, `deliver::shape::LEASE_MAX`).
//!
//! Build the binaries first (`cargo build --bins`, and set
//! `SLUICE_BIN_DIR=target/debug` when they are not in `target/release`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sluice_tests::{
    binary, free_port, free_port_pair, read_json, wait_until, Engine, EngineConfig, Sink,
    SinkBuilder, Smtp, TIMEOUT,
};

/// Longest a test waits for its deliveries.
const SETTLE: Duration = Duration::from_secs(60);

/// The sink's count of messages for `domain`.
fn domain_messages(sink: &Sink, domain: &str) -> u64 {
    sink.summary()["domains"][domain]["messages"]
        .as_u64()
        .unwrap_or(0)
}

/// Deliveries of `domain` per Unix second, missing seconds as 0, from
/// the first to the last second with a delivery.
fn per_second(sink: &Sink, domain: &str) -> BTreeMap<u64, u64> {
    let v = sink.summary();
    let mut out = BTreeMap::new();
    if let Some(list) = v["domains"][domain]["messages_per_s"].as_array() {
        for pair in list {
            let (Some(s), Some(n)) = (pair[0].as_u64(), pair[1].as_u64()) else {
                panic!("bad messages_per_s entry {pair}");
            };
            out.insert(s, n);
        }
    }
    if let (Some(&first), Some(&last)) = (out.keys().next(), out.keys().next_back()) {
        for s in first..=last {
            out.entry(s).or_insert(0);
        }
    }
    out
}

/// The sink on `port` with the fault `profile`, its summary rewritten
/// every 100 ms.
fn start_sink(dir: &Path, port: u16, profile: &[&str]) -> Sink {
    SinkBuilder::new(dir, "sink")
        .port(port)
        .args(profile)
        .start()
}

/// `sluice run` on two shards (CPUs 0 and 1), per-shard ports on, every
/// `*.test` domain routed to the sink, shaped by `rules`, the retry
/// schedule the engine's own; returns it and its `shard_port_base`.
fn start(dir: &Path, sink_port: u16, rules: &str) -> (Engine, u16) {
    let shard_port_base = free_port_pair().expect("two free ports");
    std::fs::write(dir.join("shaping.toml"), rules).expect("write the rules");
    let engine = EngineConfig::new(dir)
        .cores("[0, 1]")
        .inject(&format!("shard_port_base = {shard_port_base}"))
        .no_retry()
        .delivery("shaping = \"shaping.toml\"")
        .route("*.test", sink_port)
        .start();
    engine.wait_port(shard_port_base);
    engine.wait_port(shard_port_base + 1);
    (engine, shard_port_base)
}

/// The home shard of `domain` by `sluice route` (the engine's own
/// routing function).
fn home_shard(engine: &Engine, domain: &str) -> u16 {
    let out = Command::new(binary("sluice").expect("sluice binary"))
        .arg("route")
        .arg(domain)
        .arg("--config")
        .arg(&engine.config)
        .output()
        .expect("run sluice route");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("shard:"))
        .unwrap_or_else(|| panic!("no shard in `sluice route` output:\n{text}"));
    line.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad shard line {line:?}"))
}

/// Injects `count` messages to `rcpt@domain` over one session, waiting for
/// each `250` (the engine acknowledges after the group commit).
fn inject(port: u16, domain: &str, tag: &str, count: usize) {
    let mut c = Smtp::connect_ready(port);
    for i in 0..count {
        let id = format!("{tag}-{i}");
        c.write(&format!(
            "MAIL FROM:<sender@origin.test>\r\nRCPT TO:<user{i}@{domain}>\r\nDATA\r\n"
        ));
        // Not pipelined unless offered: the engine offers PIPELINING, so
        // the three replies come in order.
        c.read(250);
        c.read(250);
        c.read(354);
        c.expect(
            &format!("X-Sluice-Id: {id}\r\nSubject: shaping {id}\r\n\r\nbody {id}\r\n."),
            250,
        );
    }
    c.close();
}

/// The largest sum over `window` consecutive seconds (and where it starts).
fn max_window(per_second: &BTreeMap<u64, u64>, window: usize) -> (u64, u64) {
    let seconds: Vec<(u64, u64)> = per_second.iter().map(|(&s, &n)| (s, n)).collect();
    let mut best = (0, 0);
    for start in 0..seconds.len() {
        let sum: u64 = seconds[start..].iter().take(window).map(|(_, n)| n).sum();
        if sum > best.0 {
            best = (sum, seconds[start].0);
        }
    }
    best
}

/// How often the test polls the engine's log.
const POLL_MS: u64 = 50;

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The earliest `at_ms` of a delivery-log attempt answered `code`.
fn first_attempt_ms(log_dir: &Path, code: u64) -> Option<u64> {
    let mut first = None;
    for entry in std::fs::read_dir(log_dir).ok()?.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if v["code"].as_u64() == Some(code) {
                if let Some(at) = v["at_ms"].as_u64() {
                    first = Some(first.map_or(at, |f: u64| f.min(at)));
                }
            }
        }
    }
    first
}

#[test]
fn rate_and_connection_limits_hold_across_shards() {
    const DOMAIN: &str = "limited.test";
    const RATE_PER_S: u64 = 50;
    const BURST: u64 = 5;
    const CONNECTIONS_MAX: u64 = 2;
    /// Ten-second windows (issue 10) need a bit more than ten seconds of
    /// deliveries at the limit: 650 messages last about 13 s.
    const MESSAGES: usize = 650;
    const WINDOW_S: usize = 10;
    let dir = tempfile::tempdir().expect("tempdir");
    let sink_port = free_port().expect("free port for the sink");
    let sink = start_sink(dir.path(), sink_port, &[]);
    let rules = format!(
        r#"[default]
retry_after = "1s"
[domain."{DOMAIN}"]
max_message_rate = "{RATE_PER_S}/s burst {BURST}"
max_connections = {CONNECTIONS_MAX}
"#
    );
    let (mut engine, shard_port_base) = start(dir.path(), sink_port, &rules);
    let home = home_shard(&engine, DOMAIN);
    let other_port = shard_port_base + (1 - home);
    // Both paths at once: the shared port (either shard accepts) and the
    // per-shard port of the shard that is not the domain's home.
    let shared_port = engine.port;
    let half = MESSAGES / 2;
    let a = std::thread::spawn(move || inject(shared_port, DOMAIN, "shared", half));
    let b = std::thread::spawn(move || inject(other_port, DOMAIN, "other", MESSAGES - half));
    a.join().expect("shared-port injector");
    b.join().expect("per-shard-port injector");
    let injected_at_s = unix_now_ms() / 1000;
    wait_until("every message at the sink", SETTLE, || {
        domain_messages(&sink, DOMAIN) >= MESSAGES as u64
    });
    // Let late duplicates (there must be none) and the summary land.
    std::thread::sleep(Duration::from_millis(500));
    let summary = sink.summary();
    let said = engine.said();
    let d = &summary["domains"][DOMAIN];
    assert_eq!(
        d["messages"].as_u64(),
        Some(MESSAGES as u64),
        "exactly once at the sink; engine said:\n{said}"
    );
    let per_second = per_second(&sink, DOMAIN);
    let (most, at) = max_window(&per_second, WINDOW_S);
    let allowed = RATE_PER_S * WINDOW_S as u64 + BURST;
    let tolerance = allowed * 2 / 100;
    eprintln!(
        "limited.test: injection done at {injected_at_s}; {} messages over {} s at the sink; busiest {WINDOW_S}-s window {most} (from {at}), \
         limit {allowed} (+{tolerance}); peak connections {}; per second {per_second:?}",
        d["messages"],
        per_second.len(),
        d["peak_connections"]
    );
    sluice_tests::write_report(
        "shaping_rate_and_connections",
        serde_json::json!({
            "domain": DOMAIN,
            "messages": MESSAGES,
            "rate_limit_per_s": RATE_PER_S,
            "burst": BURST,
            "window_s": WINDOW_S,
            "busiest_window_messages": most,
            "window_allowed": allowed,
            "connections_limit": CONNECTIONS_MAX,
            "peak_connections": d["peak_connections"],
            "held": most <= allowed + tolerance
                && d["peak_connections"].as_u64().is_some_and(|p| p <= CONNECTIONS_MAX),
        }),
    );
    assert!(
        most <= allowed + tolerance,
        "{most} messages in the {WINDOW_S} s from {at}: more than {allowed} + 2%; {per_second:?}"
    );
    // The limit governed the whole run: at most burst + rate x span.
    let span_s = per_second.len() as u64;
    assert!(
        MESSAGES as u64 <= BURST + RATE_PER_S * span_s + tolerance,
        "{MESSAGES} messages in {span_s} s: faster than {RATE_PER_S}/s"
    );
    let peak = d["peak_connections"].as_u64().expect("peak_connections");
    assert!(peak >= 1);
    assert!(
        peak <= CONNECTIONS_MAX,
        "{peak} concurrent connections for {DOMAIN}, limit {CONNECTIONS_MAX}"
    );
    let layout = std::fs::read_to_string(dir.path().join("sluice.out")).unwrap_or_default();
    assert!(
        layout.contains("shaping:") && layout.contains("shaping.toml"),
        "the start-up layout names the active rules:\n{layout}"
    );
    let status = engine.process.stop(TIMEOUT).expect("stop sluice");
    assert!(status.success(), "sluice exited with {status}");
    if std::env::var_os("SLUICE_KEEP_TEST_DIR").is_some() {
        eprintln!("kept {}", dir.keep().display());
    }
}

#[test]
fn sink_421_puts_the_domain_into_backoff() {
    const DOMAIN: &str = "busy.test";
    const SINK_RATE_PER_S: u64 = 30;
    const BACKOFF_RATE_PER_S: u64 = 10;
    const MESSAGES: usize = 150;
    const WINDOW_S: usize = 5;
    /// After the mode change is logged: one lease period for every shard to
    /// obey the new limit (the shaping crate's bound) plus the second in
    /// progress, before windows are measured.
    const SETTLE_S: u64 = 2;
    let dir = tempfile::tempdir().expect("tempdir");
    let sink_port = free_port().expect("free port for the sink");
    let rate = format!("{DOMAIN}={SINK_RATE_PER_S}");
    let sink = start_sink(dir.path(), sink_port, &["--domain-rate", &rate]);
    let rules = format!(
        r#"[default]
retry_after = "1s"
[domain."{DOMAIN}"]
max_message_rate = "100/s burst 5"
max_connections = 2
[[domain."{DOMAIN}".backoff]]
name = "sink-says-slow-down"
code = "421"
enhanced = "4.7.0"
backoff_max_message_rate = "{BACKOFF_RATE_PER_S}/s burst 1"
backoff_retry_after = "1s"
recover_after = "5m"
"#
    );
    let (mut engine, shard_port_base) = start(dir.path(), sink_port, &rules);
    let home = home_shard(&engine, DOMAIN);
    let other_port = shard_port_base + (1 - home);
    let shared_port = engine.port;
    let half = MESSAGES / 2;
    let a = std::thread::spawn(move || inject(shared_port, DOMAIN, "shared", half));
    let b = std::thread::spawn(move || inject(other_port, DOMAIN, "other", MESSAGES - half));
    // The engine logs `shaping: domain:busy.test now Backoff { .. } (rule ..)`.
    let waited = Instant::now();
    let backoff_seen_ms = loop {
        let said = engine.said();
        let found = said.lines().any(|l| {
            l.contains(DOMAIN) && l.contains("Backoff") && l.contains("sink-says-slow-down")
        });
        if found {
            break unix_now_ms();
        }
        assert!(
            waited.elapsed() < SETTLE,
            "no backoff mode change in the engine's log; sink: {}\nengine said:\n{said}",
            sink.summary()
        );
        std::thread::sleep(Duration::from_millis(POLL_MS));
    };
    a.join().expect("shared-port injector");
    b.join().expect("per-shard-port injector");
    wait_until("every message at the sink", SETTLE, || {
        domain_messages(&sink, DOMAIN) >= MESSAGES as u64
    });
    std::thread::sleep(Duration::from_millis(500));
    let summary = sink.summary();
    let d = &summary["domains"][DOMAIN];
    assert_eq!(
        d["messages"].as_u64(),
        Some(MESSAGES as u64),
        "exactly once"
    );
    let refused = summary["profile_actions"]["rate_limited"]
        .as_u64()
        .unwrap_or(0);
    assert!(refused > 0, "the sink never answered 421 4.7.0");
    // Within a second of the first 421 (issue 10): the delivery log has
    // the attempt's time; the test saw the log line at most one poll later.
    let first_421_ms =
        first_attempt_ms(&dir.path().join("log"), 421).expect("a 421 attempt in the delivery log");
    assert!(
        backoff_seen_ms <= first_421_ms + 1000 + POLL_MS,
        "backoff seen {} ms after the first 421",
        backoff_seen_ms.saturating_sub(first_421_ms)
    );
    let backoff_at_s = backoff_seen_ms / 1000;
    let per_second = per_second(&sink, DOMAIN);
    let after: BTreeMap<u64, u64> = per_second
        .range(backoff_at_s + SETTLE_S..)
        .map(|(&s, &n)| (s, n))
        .collect();
    assert!(
        after.len() >= WINDOW_S,
        "fewer than {WINDOW_S} s of deliveries after the backoff: {per_second:?}"
    );
    let (most, at) = max_window(&after, WINDOW_S);
    let allowed = BACKOFF_RATE_PER_S * WINDOW_S as u64 + 1;
    // 2% of 51 rounds to 1; two more for arrivals shifted across the
    // window edges (see the module docs). The normal rate would put about
    // SINK_RATE_PER_S x WINDOW_S = 150 here.
    let tolerance = 3;
    eprintln!(
        "busy.test: first 421 at {first_421_ms} ms, backoff seen at {backoff_seen_ms} ms; busiest {WINDOW_S}-s window after it {most} (from {at}), \
         backoff limit {allowed} (+{tolerance}); sink answered 421 {refused} time(s); per second {per_second:?}"
    );
    sluice_tests::write_report(
        "shaping_backoff_on_421",
        serde_json::json!({
            "domain": DOMAIN,
            "backoff_entered_after_ms": backoff_seen_ms.saturating_sub(first_421_ms),
            "backoff_rate_per_s": BACKOFF_RATE_PER_S,
            "window_s": WINDOW_S,
            "busiest_window_in_backoff": most,
            "window_allowed": allowed,
            "sink_421_count": refused,
            "held": most <= allowed + tolerance,
        }),
    );
    assert!(
        most <= allowed + tolerance,
        "{most} messages in the {WINDOW_S} s from {at} while backing off: more than {allowed}; {per_second:?}"
    );
    let status = engine.process.stop(TIMEOUT).expect("stop sluice");
    assert!(status.success(), "sluice exited with {status}");
}

#[test]
fn a_bad_rules_file_stops_start_up_with_exit_code_2_and_check_config_lists_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("shaping.toml"),
        "[default]\nmax_message_rate = \"fast\"\n[domain.\"a.test\"]\nmax_connectionz = 3\n",
    )
    .expect("write the rules");
    let port = free_port().expect("free port");
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "cores = [0]\n[inject]\nlisten = \"127.0.0.1:{port}\"\n[spool]\ndir = \"{}\"\n[delivery]\nshaping = \"shaping.toml\"\n",
            dir.path().join("spool").display()
        ),
    )
    .expect("write the config");
    let sluice = binary("sluice").expect("sluice binary");
    let run = Command::new(&sluice)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run sluice");
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{err}");
    for needle in ["shaping.toml", "max_message_rate", "max_connectionz"] {
        assert!(err.contains(needle), "{needle} missing from:\n{err}");
    }
    let check = Command::new(&sluice)
        .arg("check-config")
        .arg(&config)
        .output()
        .expect("run check-config");
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(!check.status.success());
    for needle in ["shaping.toml", "max_message_rate", "max_connectionz"] {
        assert!(err.contains(needle), "{needle} missing from:\n{err}");
    }
}

/// A backoff ends as configured (`recover_after`) and the rate returns to
/// normal: the first sink takes one message a second and refuses the rest
/// with `421 4.7.0`, the
/// engine backs off and logs it; that sink is replaced by one that accepts
/// everything; while the backoff lasts the new sink sees at most the
/// backoff rate; the engine logs the return to `Normal` no earlier than
/// `recover_after`; after it the domain is delivered faster than the
/// backoff allows and never faster than its normal limit.
#[test]
fn backoff_ends_after_recover_after_and_the_rate_returns_to_normal() {
    const DOMAIN: &str = "recover.test";
    const NORMAL_PER_S: u64 = 40;
    const BACKOFF_PER_S: u64 = 5;
    const RECOVER_MS: u64 = 6000;
    const MESSAGES: usize = 300;
    const WINDOW_S: usize = 3;
    let dir = tempfile::tempdir().expect("tempdir");
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&dir_a).expect("dir a");
    std::fs::create_dir_all(&dir_b).expect("dir b");
    let sink_port = free_port().expect("free port for the sink");
    let refuse = format!("{DOMAIN}=1");
    let refusing = start_sink(&dir_a, sink_port, &["--domain-rate", &refuse]);
    let rules = format!(
        r#"[default]
retry_after = "500ms"
[domain."{DOMAIN}"]
max_message_rate = "{NORMAL_PER_S}/s burst 5"
max_connections = 2
[[domain."{DOMAIN}".backoff]]
name = "refused"
code = "421"
enhanced = "4.7.0"
backoff_max_message_rate = "{BACKOFF_PER_S}/s burst 1"
backoff_retry_after = "500ms"
recover_after = "{RECOVER_MS}ms"
"#
    );
    let (mut engine, _) = start(dir.path(), sink_port, &rules);
    let port = engine.port;
    let injector = std::thread::spawn(move || inject(port, DOMAIN, "r", MESSAGES));
    let mode_line_at = |engine: &Engine, mode: &str| -> Option<u64> {
        engine
            .said()
            .lines()
            .any(|l| l.contains(DOMAIN) && l.contains(&format!("now {mode}")))
            .then(unix_now_ms)
    };
    let waited = Instant::now();
    let backoff_ms = loop {
        if let Some(at) = mode_line_at(&engine, "Backoff") {
            break at;
        }
        assert!(
            waited.elapsed() < SETTLE,
            "no backoff in the engine's log:\n{}",
            engine.said()
        );
        std::thread::sleep(Duration::from_millis(POLL_MS));
    };
    // Replace the refusing sink with one that accepts everything (it took
    // about one message a second until now).
    let refused_summary = refusing.summary_path().to_path_buf();
    drop(refusing);
    // Its last summary, written as it stopped.
    let refusing_took = read_json(&refused_summary).map_or(0, |v| {
        v["domains"][DOMAIN]["messages"].as_u64().unwrap_or(0)
    });
    let accepting = start_sink(&dir_b, sink_port, &[]);
    let normal_ms = loop {
        if let Some(at) = mode_line_at(&engine, "Normal") {
            break at;
        }
        assert!(
            waited.elapsed() < SETTLE,
            "the backoff never ended in the engine's log:\n{}",
            engine.said()
        );
        std::thread::sleep(Duration::from_millis(POLL_MS));
    };
    injector.join().expect("injector");
    let waited = Instant::now();
    while domain_messages(&accepting, DOMAIN) + refusing_took < MESSAGES as u64 {
        assert!(
            waited.elapsed() < SETTLE,
            "{} + {refusing_took} of {MESSAGES} at the sinks; per second {:?}\nengine said:\n{}",
            domain_messages(&accepting, DOMAIN),
            per_second(&accepting, DOMAIN),
            engine.said()
        );
        std::thread::sleep(Duration::from_millis(POLL_MS));
    }
    let per_second = per_second(&accepting, DOMAIN);
    let lasted_ms = normal_ms.saturating_sub(backoff_ms);
    let in_backoff: BTreeMap<u64, u64> = per_second
        .range(backoff_ms / 1000 + 2..normal_ms / 1000)
        .map(|(&s, &n)| (s, n))
        .collect();
    let after: BTreeMap<u64, u64> = per_second
        .range(normal_ms / 1000 + 1..)
        .map(|(&s, &n)| (s, n))
        .collect();
    let (most_in_backoff, _) = max_window(&in_backoff, WINDOW_S);
    let (most_after, at_after) = max_window(&after, WINDOW_S);
    eprintln!(
        "recover.test: backoff logged at {backoff_ms}, normal at {normal_ms} ({lasted_ms} ms, rule says {RECOVER_MS}); \
         busiest {WINDOW_S}-s window in backoff {most_in_backoff}, after {most_after} (from {at_after}); per second {per_second:?}"
    );
    sluice_tests::write_report(
        "shaping_backoff_recovery",
        serde_json::json!({
            "recover_after_ms": RECOVER_MS,
            "backoff_lasted_ms": lasted_ms,
            "backoff_rate_per_s": BACKOFF_PER_S,
            "normal_rate_per_s": NORMAL_PER_S,
            "window_s": WINDOW_S,
            "busiest_window_in_backoff": most_in_backoff,
            "busiest_window_after": most_after,
        }),
    );
    // Both log lines are seen when the test polls stderr, each up to a
    // poll (and a scheduling hiccup) late: not early by more than that, not
    // late by more than the pump's period plus polling.
    assert!(
        lasted_ms + 500 >= RECOVER_MS,
        "backoff ended after {lasted_ms} ms, before recover_after {RECOVER_MS} ms"
    );
    assert!(
        lasted_ms <= RECOVER_MS + 3000,
        "backoff ended after {lasted_ms} ms, recover_after is {RECOVER_MS} ms"
    );
    let backoff_allowed = BACKOFF_PER_S * WINDOW_S as u64 + 1;
    assert!(
        most_in_backoff <= backoff_allowed + 3,
        "{most_in_backoff} in {WINDOW_S} s during the backoff, allowed {backoff_allowed}: {per_second:?}"
    );
    assert!(
        most_after > backoff_allowed + 3,
        "after the backoff ended the rate did not rise above the backoff rate: {per_second:?}"
    );
    let normal_allowed = NORMAL_PER_S * WINDOW_S as u64 + 5;
    assert!(
        most_after <= normal_allowed + normal_allowed * 2 / 100 + 2,
        "{most_after} in {WINDOW_S} s after the backoff, normal limit {normal_allowed}: {per_second:?}"
    );
    let status = engine.process.stop(TIMEOUT).expect("stop sluice");
    assert!(status.success(), "sluice exited with {status}");
}
