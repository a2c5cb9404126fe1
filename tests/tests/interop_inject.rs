//! Injection into the real `sluice` by independent SMTP clients (issue 10,
//! "Interop"): Postfix's `smtp-source`, swaks and Python's smtplib. Each
//! test starts its own engine routed to a `sluice-sink`, lets the peer
//! inject, and then counts at the sink: every message the peer saw
//! acknowledged arrives, exactly once, and nothing else does.
//!
//! A missing peer binary makes its test print `SKIPPED: <reason>` and pass
//! (`bash scripts/setup.sh` installs them). Without a certificate the
//! engine offers neither STARTTLS nor AUTH, so the first swaks test checks
//! that its opportunistic modes fall back to plaintext (and pipelining,
//! multiple recipients, HELO, dot lines); `swaks_starttls_and_auth` gives
//! the engine a certificate and a users file.
//!
//! Build the binaries first (`cargo build --release --bins`).

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sluice_tests::{have, run_bounded, Ran, Sink};
use support::wait_until;

/// Bound on one peer run.
const PEER_LIMIT: Duration = Duration::from_secs(45);

/// Waits until the sink has seen `want` messages, then checks that no more
/// arrive.
fn expect_messages(sink: &Sink, want: u64) {
    wait_until(&format!("{want} messages at the sink"), || {
        sink.messages() >= want
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.messages(), want, "messages at the sink");
}

fn smtp_source() -> Option<&'static str> {
    let path = "/usr/sbin/smtp-source";
    if Path::new(path).is_file() {
        Some(path)
    } else if have("smtp-source") {
        Some("smtp-source")
    } else {
        None
    }
}

#[test]
fn postfix_smtp_source_injects_every_message() {
    let Some(bin) = smtp_source() else {
        eprintln!("SKIPPED: Postfix's smtp-source is not installed (bash scripts/setup.sh)");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = support::sink(dir.path(), "sink", &[]);
    let engine = support::config(dir.path(), sink.port).start();
    let target = format!("127.0.0.1:{}", engine.port);
    // Four parallel sessions, 2 KB messages, three recipients each (one
    // destination domain, so one transaction per message at the sink).
    const SESSION_MSGS: u64 = 200;
    let mut cmd = Command::new(bin);
    cmd.args([
        "-s",
        "4",
        "-m",
        &SESSION_MSGS.to_string(),
        "-l",
        "2000",
        "-r",
        "3",
    ])
    .args([
        "-M",
        "src.test",
        "-f",
        "sender@src.test",
        "-t",
        "rcpt@dest.test",
    ])
    .arg(&target);
    let ran = run_bounded(dir.path(), "smtp-source", cmd, PEER_LIMIT);
    assert!(
        ran.success,
        "smtp-source failed: {}{}",
        ran.stdout, ran.stderr
    );
    // One connection per message (-d), as a flood of short sessions.
    const SHORT_MSGS: u64 = 40;
    let mut cmd = Command::new(bin);
    cmd.args(["-d", "-s", "2", "-m", &SHORT_MSGS.to_string(), "-l", "500"])
        .args([
            "-M",
            "src.test",
            "-f",
            "sender@src.test",
            "-t",
            "rcpt@other.test",
        ])
        .arg(&target);
    let ran = run_bounded(dir.path(), "smtp-source-d", cmd, PEER_LIMIT);
    assert!(
        ran.success,
        "smtp-source -d failed: {}{}",
        ran.stdout, ran.stderr
    );
    expect_messages(&sink, SESSION_MSGS + SHORT_MSGS);
    assert!(engine.alive(), "{}", engine.said());
}

fn swaks(dir: &Path, tag: &str, port: u16, args: &[&str]) -> Ran {
    let mut cmd = Command::new("swaks");
    cmd.args(["--server", &format!("127.0.0.1:{port}")])
        .args(["--from", "sender@src.test", "--timeout", "20"])
        .args(args);
    run_bounded(dir, tag, cmd, PEER_LIMIT)
}

/// The client lines (` -> `) and server lines (`<-  `) of a swaks
/// transcript, in order.
fn transcript(ran: &Ran) -> Vec<String> {
    ran.stdout
        .lines()
        .filter(|l| l.starts_with(" -> ") || l.starts_with("<-  ") || l.starts_with("<** "))
        .map(str::to_string)
        .collect()
}

#[test]
fn swaks_pipelines_and_every_message_arrives() {
    if !have("swaks") {
        eprintln!("SKIPPED: swaks is not installed (bash scripts/setup.sh)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = support::sink(dir.path(), "sink", &[]);
    let engine = support::config(dir.path(), sink.port).start();
    let port = engine.port;
    let mut acked = HashSet::new();

    // Pipelining (RFC 2920): MAIL, RCPT and DATA leave before any reply.
    let ran = swaks(
        dir.path(),
        "swaks-pipe",
        port,
        &[
            "--to",
            "r@d0.test",
            "--pipeline",
            "--header",
            "X-Sluice-Id: swaks-pipe",
        ],
    );
    assert!(
        ran.success,
        "swaks --pipeline: {}{}",
        ran.stdout, ran.stderr
    );
    let lines = transcript(&ran);
    let ehlo = lines
        .iter()
        .position(|l| l.starts_with("<-  250 ") && !l.contains("2."))
        .expect("end of the EHLO reply");
    let after: Vec<&String> = lines[ehlo + 1..].iter().take(4).collect();
    assert!(
        after[0].starts_with(" -> MAIL FROM")
            && after[1].starts_with(" -> RCPT TO")
            && after[2].starts_with(" -> DATA")
            && after[3].starts_with("<-  250"),
        "swaks did not pipeline MAIL/RCPT/DATA: {lines:#?}"
    );
    let offered: String = lines[..=ehlo].join("\n");
    assert!(offered.contains("PIPELINING"), "{offered}");
    acked.insert("swaks-pipe");

    // Several recipients in two domains: one transaction per domain.
    let ran = swaks(
        dir.path(),
        "swaks-multi",
        port,
        &[
            "--to",
            "a@d1.test,b@d1.test,c@d2.test",
            "--pipeline",
            "--header",
            "X-Sluice-Id: swaks-multi",
        ],
    );
    assert!(ran.success, "swaks multi: {}{}", ran.stdout, ran.stderr);
    acked.insert("swaks-multi");

    // Plain RFC 821 HELO, body lines that start with a dot.
    let ran = swaks(
        dir.path(),
        "swaks-helo",
        port,
        &[
            "--to",
            "r@d0.test",
            "--protocol",
            "SMTP",
            "--header",
            "X-Sluice-Id: swaks-helo",
            "--body",
            ".leading dot\n..two\n.\nend",
        ],
    );
    assert!(ran.success, "swaks HELO: {}{}", ran.stdout, ran.stderr);
    assert!(ran.stdout.contains(" -> HELO "), "{}", ran.stdout);
    acked.insert("swaks-helo");

    // STARTTLS and AUTH: not offered by the engine yet. Opportunistic
    // swaks falls back to plaintext without AUTH and still delivers.
    let offers_tls = offered.contains("STARTTLS");
    let offers_auth = offered.contains("AUTH");
    assert!(
        !offers_tls && !offers_auth,
        "the engine now offers STARTTLS/AUTH: extend this test to use them ({offered})"
    );
    eprintln!("NOTE: sluice offers neither STARTTLS nor AUTH: testing swaks' optional modes only");
    let ran = swaks(
        dir.path(),
        "swaks-optional",
        port,
        &[
            "--to",
            "r@d2.test",
            "--tls-optional",
            "--auth-optional",
            "--auth-user",
            "user",
            "--auth-password",
            "secret",
            "--header",
            "X-Sluice-Id: swaks-optional",
        ],
    );
    assert!(
        ran.success,
        "swaks optional TLS/AUTH: {}{}",
        ran.stdout, ran.stderr
    );
    acked.insert("swaks-optional");
    // Required TLS must not send mail in plaintext.
    let ran = swaks(
        dir.path(),
        "swaks-tls",
        port,
        &[
            "--to",
            "r@d2.test",
            "--tls",
            "--header",
            "X-Sluice-Id: swaks-tls-required",
        ],
    );
    assert!(
        !ran.success,
        "swaks --tls cannot succeed without STARTTLS: {}",
        ran.stdout
    );

    expect_messages(&sink, 5);
    let ids = sink.id_counts();
    let got: HashSet<&str> = ids.keys().map(String::as_str).collect();
    assert_eq!(got, acked, "ids at the sink");
    assert_eq!(
        ids["swaks-multi"], 2,
        "one transaction per destination domain"
    );
    assert!(engine.alive(), "{}", engine.said());
}

#[test]
fn python_smtplib_injects_every_message() {
    if !have("python3") {
        eprintln!("SKIPPED: python3 is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let capture = dir.path().join("capture");
    let capture_arg = capture.display().to_string();
    let sink = support::sink(dir.path(), "sink", &["--capture", &capture_arg]);
    let engine = support::config(dir.path(), sink.port).start();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/smtplib_inject.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .args(["127.0.0.1", &engine.port.to_string(), "60", "py"]);
    let ran = run_bounded(dir.path(), "smtplib", cmd, PEER_LIMIT);
    assert!(
        ran.success,
        "smtplib injection failed: {}{}",
        ran.stdout, ran.stderr
    );
    let report: serde_json::Value =
        serde_json::from_str(ran.stdout.trim()).expect("the script prints JSON");
    let sent: HashSet<String> = report["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    let transactions = report["transactions"].as_u64().expect("transactions");
    assert_eq!(sent.len(), 60 + 4);
    expect_messages(&sink, transactions);
    let ids = sink.id_counts();
    let got: HashSet<String> = ids.keys().cloned().collect();
    assert_eq!(got, sent, "ids at the sink");
    assert_eq!(ids["py-multi"], 2, "one transaction per destination domain");
    // The dot lines arrive as written (stuffed by smtplib, unstuffed by
    // sluice, stuffed again on delivery, unstuffed by the sink).
    let dots = std::fs::read_dir(&capture)
        .expect("capture dir")
        .flatten()
        .filter_map(|e| std::fs::read(e.path()).ok())
        .find(|m| m.windows(22).any(|w| w == b"X-Sluice-Id: py-dots\r\n"))
        .expect("the dots message was captured");
    let text = String::from_utf8_lossy(&dots);
    assert!(
        text.contains("\r\n.leading dot\r\n..two dots\r\n.\r\nafter a lone dot\r\n"),
        "{text}"
    );
    assert!(engine.alive(), "{}", engine.said());
}

/// swaks with STARTTLS and AUTH (RFC 3207, RFC 4954): the engine with a
/// certificate (made by `openssl req`) and a users file (`openssl passwd
/// -6`). AUTH PLAIN and LOGIN succeed only after TLS, with EHLO sent again;
/// a wrong password gets `535`; in plaintext AUTH is not offered at all.
#[test]
fn swaks_starttls_and_auth() {
    if !have("swaks") || !have("openssl") {
        eprintln!("SKIPPED: swaks or openssl is not installed (bash scripts/setup.sh)");
        return;
    }
    let support = Command::new("swaks")
        .arg("--support")
        .output()
        .expect("swaks --support");
    let text = String::from_utf8_lossy(&support.stdout).to_string()
        + &String::from_utf8_lossy(&support.stderr);
    if !text.contains("=== TLS supported") {
        eprintln!("SKIPPED: swaks has no TLS (install libnet-ssleay-perl; bash scripts/setup.sh)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl req");
    assert!(made.status.success(), "openssl req: {made:?}");
    let hash = Command::new("openssl")
        .args(["passwd", "-6", "-salt", "interop", "s3cret"])
        .output()
        .expect("openssl passwd");
    let users = dir.path().join("users");
    std::fs::write(
        &users,
        format!("alice:{}\n", String::from_utf8_lossy(&hash.stdout).trim()),
    )
    .expect("users file");
    let sink = support::sink(dir.path(), "sink", &[]);
    let inject = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\nauth_users = \"{}\"",
        cert.display(),
        key.display(),
        users.display()
    );
    let engine = support::config(dir.path(), sink.port)
        .inject(&inject)
        .start();
    let port = engine.port;

    let mut arrived = 0;
    for (tag, mechanism) in [("swaks-tls-plain", "PLAIN"), ("swaks-tls-login", "LOGIN")] {
        let header = format!("X-Sluice-Id: {tag}");
        let ran = swaks(
            dir.path(),
            tag,
            port,
            &[
                "--to",
                "r@d0.test",
                "--tls",
                "--auth",
                mechanism,
                "--auth-user",
                "alice",
                "--auth-password",
                "s3cret",
                "--pipeline",
                "--header",
                &header,
            ],
        );
        assert!(ran.success, "swaks {tag}: {}{}", ran.stdout, ran.stderr);
        let lines = transcript(&ran);
        let starttls = lines
            .iter()
            .position(|l| l.starts_with(" -> STARTTLS"))
            .unwrap_or_else(|| panic!("no STARTTLS: {lines:#?}"));
        let before: String = lines[..starttls].join("\n");
        assert!(
            !before.contains("AUTH"),
            "AUTH offered before TLS: {before}"
        );
        let after = &lines[starttls..];
        assert!(
            after.iter().any(|l| l.starts_with(" ~> EHLO")) || ran.stdout.contains("~> EHLO"),
            "EHLO again after TLS: {}",
            ran.stdout
        );
        assert!(
            ran.stdout.contains("<~  235"),
            "AUTH {mechanism} accepted under TLS: {}",
            ran.stdout
        );
        arrived += 1;
    }

    // A wrong password: 535, nothing queued.
    let ran = swaks(
        dir.path(),
        "swaks-tls-wrong",
        port,
        &[
            "--to",
            "r@d0.test",
            "--tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            "alice",
            "--auth-password",
            "wrong",
        ],
    );
    assert!(!ran.success, "a wrong password must fail: {}", ran.stdout);
    assert!(
        ran.stdout.contains("<~* 535"),
        "535 for a wrong password: {}",
        ran.stdout
    );

    // Plaintext: AUTH is not offered, swaks gives up before MAIL.
    let ran = swaks(
        dir.path(),
        "swaks-plain-auth",
        port,
        &[
            "--to",
            "r@d0.test",
            "--auth",
            "PLAIN",
            "--auth-user",
            "alice",
            "--auth-password",
            "s3cret",
        ],
    );
    assert!(
        !ran.success,
        "AUTH without TLS must not happen: {}",
        ran.stdout
    );
    assert!(!ran.stdout.contains(" -> MAIL"), "{}", ran.stdout);

    expect_messages(&sink, arrived);
    let ids = sink.id_counts();
    for tag in ["swaks-tls-plain", "swaks-tls-login"] {
        assert_eq!(ids.get(tag), Some(&1), "{tag} arrives once: {ids:?}");
    }
    assert!(engine.alive(), "{}", engine.said());
}
