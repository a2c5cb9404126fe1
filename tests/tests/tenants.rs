//! Tenants and campaigns end to end, and the admin orders that outlive a
//! restart: the tenant and campaign headers reach the accounting log and
//! never the receiver; a tenant's `pool` picks its source (127.0.0.x,
//! checked at the sink with `--record-peers`); `sluice suspend --tenant`
//! holds a tenant's mail on every destination while others flow and
//! `resume` releases it; suspensions and reroutes are in the spool
//! directory's `admin-state.json` and in force again after a SIGTERM and
//! a restart on the same spool; a corrupt state file is reported and moved
//! aside, and the engine starts.
//!
//! `cargo build -p sluice-engine -p sluice-sink`, then
//! `SLUICE_BIN_DIR=$PWD/target/debug cargo test -p sluice-tests --test tenants`.

mod egress;
mod ops;

use std::time::Duration;

use ops::wait_until;
use sluice_tests::{count, Engine, Smtp};
use sluice_tests::{free_port, records_of};

/// Sends one message with extra header lines; returns the spool id.
fn send(c: &mut Smtp, from: &str, to: &[&str], tag: &str, headers: &str) -> String {
    let data = format!(
        "From: <{from}>\r\n{headers}Subject: {tag}\r\nX-Sluice-Id: {tag}\r\n\r\nBody of {tag}.\r\n"
    );
    let text = c.transaction(from, to, &data);
    text.split_whitespace()
        .find(|w| w.starts_with('s') && w.contains('.'))
        .unwrap_or("")
        .to_string()
}

fn delivered(e: &Engine, recipient: &str) -> usize {
    records_of(&e.records(), "Delivery", recipient).len()
}

/// The tenant and campaign headers set the record's fields (Reception,
/// Delivery, Bounce) and are removed before the message is stored: the
/// receiver never sees them, the rest of the header is kept. A tenant
/// without a `[tenants]` table is accepted as a free label.
#[test]
fn tenant_and_campaign_headers_reach_the_log_and_not_the_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let sink = ops::sink(dir.path(), "sink", &["--reject-local-part", "nobody"]);
    let engine = ops::config(dir.path(), sink.port)
        .delivery("dsn = false")
        .extra("[tenants.acme]\nusers = [\"alice\"]\n")
        .start();
    let mut c = Smtp::connect(engine.port);
    send(
        &mut c,
        "news@origin.test",
        &["u@t.test"],
        "tagged",
        "X-Tenant: acme\r\nX-Campaign: Spring sale 2026\r\n",
    );
    send(
        &mut c,
        "news@origin.test",
        &["nobody@t.test"],
        "refused",
        "x-tenant:   newco\r\n",
    );
    send(&mut c, "news@origin.test", &["v@t.test"], "plain", "");
    c.quit();
    wait_until("three outcomes", || {
        delivered(&engine, "u@t.test") == 1
            && delivered(&engine, "v@t.test") == 1
            && records_of(&engine.records(), "Bounce", "nobody@t.test").len() == 1
    });
    for kind in ["Reception", "Delivery"] {
        let r = &records_of(&engine.records(), kind, "u@t.test")[0];
        assert_eq!(r["tenant"], "acme", "{r}");
        assert_eq!(r["campaign"], "Spring sale 2026", "{r}");
    }
    let bounce = &records_of(&engine.records(), "Bounce", "nobody@t.test")[0];
    assert_eq!(bounce["tenant"], "newco", "a free label: {bounce}");
    assert!(bounce["campaign"].is_null(), "{bounce}");
    let plain = &records_of(&engine.records(), "Delivery", "v@t.test")[0];
    assert!(
        plain["tenant"].is_null() && plain["campaign"].is_null(),
        "{plain}"
    );
    let captured = sink.captured();
    let tagged = captured
        .iter()
        .find(|(_, m)| m.contains("X-Sluice-Id: tagged"))
        .unwrap_or_else(|| panic!("not captured: {captured:?}"));
    let lower = tagged.1.to_ascii_lowercase();
    assert!(
        !lower.contains("x-tenant") && !lower.contains("x-campaign"),
        "{}",
        tagged.1
    );
    assert!(tagged.1.contains("Subject: tagged"), "{}", tagged.1);
    assert!(tagged.1.contains("Body of tagged."), "{}", tagged.1);
}

/// A tenant's `pool` is its messages' pool when they name none: they
/// leave from the pool's source; `X-virtualMTA` still wins.
#[test]
fn a_tenants_pool_picks_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let sink = egress::sink(dir.path(), "sink", "127.0.0.1", free_port().unwrap(), &[]);
    let rules = dir.path().join("shaping.toml");
    std::fs::write(&rules, egress::TWO_POOLS).unwrap();
    let extra = format!(
        "shaping = \"{}\"\n[[route]]\npattern = \"*.test\"\nhosts = [\"127.0.0.1:{}\"]\n[tenants.acme]\npool = \"three\"\n",
        rules.display(),
        sink.port
    );
    let mut engine = egress::config(dir.path(), &extra).start();
    let mut seen = 0;
    for (id, headers, want) in [
        ("plain", "", "127.0.0.2"),
        ("tenant", "X-Tenant: acme\r\n", "127.0.0.3"),
        (
            "named",
            "X-Tenant: acme\r\nX-virtualMTA: two\r\n",
            "127.0.0.2",
        ),
    ] {
        egress::inject(
            engine.port,
            &[egress::Msg {
                id,
                rcpts: &["u@a.test"],
                headers,
            }],
        );
        egress::wait_until("delivered", || sink.ids().contains(&id.to_string()));
        egress::wait_until("its connection recorded", || sink.peers().len() > seen);
        // Connections retire after 300 ms idle: wait so the next message
        // opens its own.
        let peers = sink.peers();
        assert!(
            peers[seen..].iter().all(|p| p == want),
            "{id}: want {want}, got {peers:?}"
        );
        seen = peers.len();
        std::thread::sleep(Duration::from_millis(700));
    }
    engine
        .process
        .stop(sluice_tests::TIMEOUT)
        .expect("sluice stops");
    let r = engine.records();
    assert!(
        records_of(&r, "Delivery", "u@a.test")
            .iter()
            .filter(|r| r["tenant"] == "acme")
            .count()
            == 2,
        "{r:?}"
    );
}

/// `suspend --tenant` holds the tenant's recipients on every destination
/// (others flow), `top` and `queues` show who and why, `resume --tenant`
/// releases them.
#[test]
fn suspending_a_tenant_holds_its_mail_everywhere_until_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let sink = ops::sink(dir.path(), "sink", &[]);
    let engine = ops::config(dir.path(), sink.port).start();
    let (ok, out, err) = engine.cli(&[
        "suspend",
        "--tenant",
        "acme",
        "--by",
        "alice",
        "--reason",
        "abuse report",
    ]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("tenant acme: suspended"), "{out}");
    let mut c = Smtp::connect(engine.port);
    let held = send(
        &mut c,
        "a@origin.test",
        &["x@a.test", "y@b.test"],
        "held",
        "X-Tenant: acme\r\nX-Campaign: c7\r\n",
    );
    send(
        &mut c,
        "a@origin.test",
        &["z@a.test"],
        "other",
        "X-Tenant: beta\r\n",
    );
    send(&mut c, "a@origin.test", &["w@a.test"], "none", "");
    wait_until("the others delivered", || {
        delivered(&engine, "z@a.test") == 1 && delivered(&engine, "w@a.test") == 1
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        delivered(&engine, "x@a.test") + delivered(&engine, "y@b.test"),
        0
    );
    let (ok, ins, err) = engine.cli(&["inspect", &held]);
    assert!(ok, "{err}");
    assert!(
        ins.lines()
            .any(|l| l.starts_with("tenant:") && l.ends_with(" acme")),
        "{ins}"
    );
    assert!(ins.contains("<x@a.test> scheduled"), "{ins}");
    let (ok, top, err) = engine.cli(&["top"]);
    assert!(ok, "{err}");
    let line = top
        .lines()
        .find(|l| l.starts_with("tenant acme"))
        .unwrap_or_else(|| panic!("{top}"));
    assert!(line.contains("suspended by alice (abuse report)"), "{top}");
    assert_eq!(line.split_whitespace().nth(3), Some("2"), "depth 2: {top}");
    let (ok, q, err) = engine.cli(&["queues"]);
    assert!(ok, "{err}");
    assert!(
        q.contains("tenant acme: suspended by alice (abuse report)"),
        "{q}"
    );
    // A message arriving while suspended waits too.
    send(
        &mut c,
        "a@origin.test",
        &["late@c.test"],
        "late",
        "X-Tenant: acme\r\n",
    );
    c.quit();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(delivered(&engine, "late@c.test"), 0);
    let (ok, out, err) = engine.cli(&["resume", "--tenant", "acme"]);
    assert!(ok, "{err}");
    assert!(out.contains("3 recipient(s) released"), "{out}");
    wait_until("acme delivered after resume", || {
        delivered(&engine, "x@a.test") == 1
            && delivered(&engine, "y@b.test") == 1
            && delivered(&engine, "late@c.test") == 1
    });
    let (ok, q, _) = engine.cli(&["queues"]);
    assert!(ok && !q.contains("tenant acme"), "{q}");
}

/// A tenant with `dsn = false` gets no bounce while another tenant (the
/// global `dsn = true`) does.
#[test]
fn dsn_can_be_turned_off_per_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let sink = ops::sink(dir.path(), "sink", &["--reject-local-part", "nobody"]);
    let engine = ops::config(dir.path(), sink.port)
        .delivery("dsn = true")
        .extra("[tenants.quiet]\ndsn = false\n[tenants.loud]\n")
        .start();
    let mut c = Smtp::connect(engine.port);
    send(
        &mut c,
        "q@quiet-sender.test",
        &["nobody@x.test"],
        "q",
        "X-Tenant: quiet\r\n",
    );
    send(
        &mut c,
        "l@loud-sender.test",
        &["nobody@x.test"],
        "l",
        "X-Tenant: loud\r\n",
    );
    c.quit();
    wait_until("the loud sender's DSN delivered", || {
        delivered(&engine, "l@loud-sender.test") == 1
    });
    assert_eq!(count(&engine.records(), "Bounce"), 2);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(delivered(&engine, "q@quiet-sender.test"), 0);
}

/// Suspensions (of a destination and a tenant) and reroutes are written
/// to `<spool>/admin-state.json` (mode 0600) and in force again after a
/// SIGTERM and a restart on the same spool: `queues` shows them and the
/// held mail stays held until resumed.
#[test]
fn admin_orders_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first = ops::sink(dir.path(), "first", &[]);
    let second = ops::sink(dir.path(), "second", &[]);
    let mut engine = ops::config(dir.path(), first.port).start();
    for args in [
        &[
            "suspend",
            "held.test",
            "--who",
            "ops",
            "--why",
            "provider outage",
        ][..],
        &[
            "suspend", "--tenant", "acme", "--by", "alice", "--reason", "abuse",
        ][..],
        &[
            "reroute",
            "moved.test",
            "--to",
            &format!("127.0.0.1:{}", second.port),
        ][..],
    ] {
        let (ok, out, err) = engine.cli(args);
        assert!(ok, "{args:?}: {out}{err}");
    }
    let state = dir.path().join("spool").join("admin-state.json");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&state).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let mut c = Smtp::connect(engine.port);
    send(&mut c, "a@origin.test", &["h@held.test"], "h1", "");
    send(
        &mut c,
        "a@origin.test",
        &["t@free.test"],
        "t1",
        "X-Tenant: acme\r\n",
    );
    c.quit();
    std::thread::sleep(Duration::from_millis(300));
    engine
        .process
        .stop(sluice_tests::TIMEOUT)
        .expect("sluice stops on SIGTERM");

    let engine = ops::config(dir.path(), first.port).start();
    let (ok, q, err) = engine.cli(&["queues"]);
    assert!(ok, "{err}");
    assert!(
        q.contains("destination held.test: suspended by ops (provider outage)"),
        "{q}"
    );
    assert!(q.contains("tenant acme: suspended by alice (abuse)"), "{q}");
    assert!(
        q.contains(&format!(
            "destination moved.test: rerouted to 127.0.0.1:{}",
            second.port
        )),
        "{q}"
    );
    let mut c = Smtp::connect(engine.port);
    send(&mut c, "a@origin.test", &["m@moved.test"], "m1", "");
    send(
        &mut c,
        "a@origin.test",
        &["t2@other.test"],
        "t2",
        "X-Tenant: acme\r\n",
    );
    c.quit();
    wait_until("moved.test delivered", || {
        delivered(&engine, "m@moved.test") == 1
    });
    let m = &records_of(&engine.records(), "Delivery", "m@moved.test")[0];
    assert!(
        m["peer"]
            .as_str()
            .unwrap_or("")
            .ends_with(&format!(":{}", second.port)),
        "rerouted after the restart: {m}"
    );
    std::thread::sleep(Duration::from_millis(500));
    for r in ["h@held.test", "t@free.test", "t2@other.test"] {
        assert_eq!(delivered(&engine, r), 0, "{r} is held after the restart");
    }
    let (ok, _, err) = engine.cli(&["resume", "held.test"]);
    assert!(ok, "{err}");
    let (ok, _, err) = engine.cli(&["resume", "--tenant", "acme"]);
    assert!(ok, "{err}");
    wait_until("held mail delivered after resume", || {
        ["h@held.test", "t@free.test", "t2@other.test"]
            .iter()
            .all(|r| delivered(&engine, r) == 1)
    });
    let text = std::fs::read_to_string(&state).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(v["suspended"].as_object().unwrap().is_empty(), "{text}");
    assert!(
        v["suspended_tenants"].as_object().unwrap().is_empty(),
        "{text}"
    );
    assert!(v["rerouted"]["moved.test"].is_array(), "{text}");
    // Ending the reroute: back to the static route, and forgotten.
    let (ok, out, err) = engine.cli(&["reroute", "moved.test", "--clear"]);
    assert!(ok, "{err}");
    assert!(out.contains("moved.test: reroute ended"), "{out}");
    let mut c = Smtp::connect(engine.port);
    send(&mut c, "a@origin.test", &["back@moved.test"], "m2", "");
    c.quit();
    wait_until("moved.test delivered again", || {
        delivered(&engine, "back@moved.test") == 1
    });
    let m = &records_of(&engine.records(), "Delivery", "back@moved.test")[0];
    assert!(
        m["peer"]
            .as_str()
            .unwrap_or("")
            .ends_with(&format!(":{}", first.port)),
        "the route's own next hop: {m}"
    );
    let text = std::fs::read_to_string(&state).unwrap();
    assert!(!text.contains("moved.test"), "{text}");
}

/// A corrupt state file does not stop the engine: it says so naming the
/// file, moves it aside, and starts without standing orders.
#[test]
fn a_corrupt_state_file_is_reported_and_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let sink = ops::sink(dir.path(), "sink", &[]);
    let spool = dir.path().join("spool");
    // The spool must be private (0700), as the engine makes it.
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&spool)
        .unwrap();
    std::fs::write(
        spool.join("admin-state.json"),
        b"{\"version\": 1, \"suspended\": ",
    )
    .unwrap();
    let engine = ops::config(dir.path(), sink.port).start();
    let said = engine.said();
    assert!(
        said.contains("admin-state.json") && said.contains("STARTING WITHOUT STANDING ORDERS"),
        "{said}"
    );
    assert!(spool.join("admin-state.json.bad").exists());
    let mut c = Smtp::connect(engine.port);
    send(&mut c, "a@origin.test", &["u@x.test"], "x1", "");
    c.quit();
    wait_until("delivered", || delivered(&engine, "u@x.test") == 1);
}
