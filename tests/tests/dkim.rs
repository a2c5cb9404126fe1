//! DKIM end to end: messages injected into the real `sluice` binary with
//! `[dkim]` keys configured, delivered to the real `sluice-sink` with
//! `--capture`, and the captured bytes verified by two independent
//! verifiers: mail-auth (Rust) and dkimpy (`engine/dkim/tests/dkimpy_verify.py`,
//! with a DNS lookup that answers only the test's key record). Both also
//! must reject a tampered capture, so these tests can fail.
//!
//! Needs the release binaries (`cargo build --release --bins`), the
//! `openssl` CLI (test keys) and python3 with dkimpy and pynacl
//! (`scripts/setup.sh` installs them).

mod support;

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::hickory_resolver::config::{ResolverConfig, ResolverOpts};
use mail_auth::{
    AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt,
};
use sluice_tests::{binary, free_port, Engine, Sink, SinkBuilder, Smtp};
use support::wait_until;

/// A generated key: PEM file (0600) and its DNS TXT record.
struct TestKey {
    path: PathBuf,
    txt: String,
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl CLI generates the test keys (scripts/setup.sh)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn generate(dir: &Path, name: &str, ed25519: bool) -> TestKey {
    let path = dir.join(format!("{name}.pem"));
    let p = path.to_str().expect("temp paths are UTF-8");
    if ed25519 {
        openssl(&["genpkey", "-algorithm", "ed25519", "-out", p]);
    } else {
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            p,
        ]);
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
    let spki = openssl(&["pkey", "-in", p, "-pubout", "-outform", "DER"]);
    let txt = if ed25519 {
        // RFC 8463 §4: p= is the raw 32-byte key, the tail of the SPKI.
        format!("v=DKIM1; k=ed25519; p={}", base64(&spki[spki.len() - 32..]))
    } else {
        format!("v=DKIM1; k=rsa; p={}", base64(&spki))
    };
    TestKey { path, txt }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

struct TxtCache(Mutex<HashMap<Box<str>, Txt>>);

impl ResolverCache<Box<str>, Txt> for TxtCache {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().expect("cache lock").get(name).cloned()
    }

    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().expect("cache lock").remove(name)
    }

    fn insert(&self, key: Box<str>, value: Txt, _valid_until: std::time::Instant) {
        self.0.lock().expect("cache lock").insert(key, value);
    }
}

/// mail-auth's verdict for every signature of `message`, with the key
/// record injected into its TXT cache; the resolver has no name servers.
fn mail_auth_verify(message: &[u8], selector: &str, domain: &str, txt: &str) -> Vec<DkimResult> {
    let key = DomainKey::parse(txt.as_bytes()).expect("test TXT record parses");
    let cache = TxtCache(Mutex::new(HashMap::new()));
    let name = format!("{selector}._domainkey.{domain}.");
    cache.insert(
        name.into_boxed_str(),
        Txt::DomainKey(Arc::new(key)),
        std::time::Instant::now(),
    );
    let authenticator = MessageAuthenticator::new(
        ResolverConfig::from_parts(None, vec![], vec![]),
        ResolverOpts::default(),
    )
    .expect("resolver without name servers");
    let Some(parsed) = AuthenticatedMessage::parse(message) else {
        return vec![DkimResult::None];
    };
    let outputs = futures_lite::future::block_on(
        authenticator.verify_dkim(Parameters::new(&parsed).with_txt_cache(&cache)),
    );
    outputs.iter().map(|o| o.result().clone()).collect()
}

/// dkimpy's verdict: true when every signature verifies.
fn dkimpy_verify(dir: &Path, message: &[u8], selector: &str, domain: &str, txt: &str) -> bool {
    let message_path = dir.join("verify.eml");
    let txt_path = dir.join("verify.txt");
    std::fs::write(&message_path, message).expect("write message");
    std::fs::write(&txt_path, txt).expect("write record");
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/dkim/tests/dkimpy_verify.py");
    let output = Command::new("python3")
        .arg(script)
        .arg(&message_path)
        .arg(format!("{selector}._domainkey.{domain}"))
        .arg(&txt_path)
        .output()
        .expect("python3 runs the dkimpy verifier");
    match output.status.code() {
        Some(0) => true,
        Some(1) => {
            eprintln!("dkimpy: {}", String::from_utf8_lossy(&output.stderr));
            false
        }
        _ => panic!(
            "dkimpy_verify.py could not run (python3 -m pip install dkimpy pynacl): {}",
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// One SMTP session: each message is (raw message with CRLF, recipients);
/// returns once every `250` after DATA arrived.
fn inject(port: u16, messages: &[(String, Vec<&str>)]) {
    let mut c = Smtp::connect_as(port, "injector.test");
    for (message, rcpts) in messages {
        // RFC 6152: 8-bit content is announced; the sink offers 8BITMIME, so
        // the engine sends the bytes it signed unchanged.
        let body = if message.is_ascii() {
            ""
        } else {
            " BODY=8BITMIME"
        };
        c.expect(&format!("MAIL FROM:<bounces@injector.test>{body}"), 250);
        for rcpt in rcpts {
            c.expect(&format!("RCPT TO:<{rcpt}>"), 250);
        }
        // Dot-stuffed on the way in; the engine stores the unstuffed bytes.
        c.data(message);
    }
    c.close();
}

fn message(from: &str, tag: &str) -> String {
    format!(
        "From: Sender <{from}>\r\n\
         To: someone@dest.test\r\n\
         Subject: dkim test {tag}\r\n\
         Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\
         Message-ID: <{tag}@sluice.test>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         Hello {tag}.\r\n\
         .a line that starts with a dot (stuffed on the wire)\r\n\
         \tindented   line with  spaces  \r\n\
         \r\n"
    )
}

/// Captured messages by their Message-ID tag.
fn captures(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("capture dir").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(".eml") {
            continue;
        }
        let bytes = std::fs::read(entry.path()).expect("read capture");
        let text = String::from_utf8_lossy(&bytes);
        let tag = text
            .lines()
            .find_map(|l| l.strip_prefix("Message-ID: <"))
            .and_then(|l| l.split('@').next())
            .unwrap_or("")
            .to_string();
        found.push((tag, bytes));
    }
    found
}

/// Every `DKIM-Signature` field of the header block, unfolded.
fn signatures(message: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(message);
    let header_end = text.find("\r\n\r\n").unwrap_or(text.len());
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text[..header_end].split("\r\n") {
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(field) = current.as_mut() {
                field.push_str(line);
            }
            continue;
        }
        out.extend(current.take());
        if line.to_ascii_lowercase().starts_with("dkim-signature:") {
            current = Some(line.to_string());
        }
    }
    out.extend(current);
    out
}

struct Setup {
    _dir: tempfile::TempDir,
    path: PathBuf,
    rsa: TestKey,
    ed: TestKey,
    _sink: Sink,
    _engine: Engine,
    inject_port: u16,
    capture: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    let rsa = generate(&path, "rsa", false);
    let ed = generate(&path, "ed", true);
    let capture = path.join("capture");
    std::fs::create_dir(&capture).expect("capture dir");
    let capture_arg = capture.to_string_lossy().into_owned();
    let sink = SinkBuilder::new(&path, "sink")
        .args(&["--capture", &capture_arg])
        .start();
    let dkim = format!(
        r#"[dkim.domains."example.com"]
selector = "rsa2026"
key_file = "{rsa}"
expiry = "7d"
[dkim.domains."example.org"]
selector = "ed2026"
key_file = "{ed}"
algorithm = "ed25519-sha256"
canonicalization = "relaxed/simple"
[dkim.map]
"news.example.com" = "example.com"
"#,
        rsa = rsa.path.display(),
        ed = ed.path.display(),
    );
    let engine = support::config(&path, sink.port).extra(&dkim).start();
    let inject_port = engine.port;
    Setup {
        _dir: dir,
        path,
        rsa,
        ed,
        _sink: sink,
        _engine: engine,
        inject_port,
        capture,
    }
}

#[test]
fn delivered_messages_verify_with_mail_auth_and_dkimpy() {
    let s = setup();
    let messages = vec![
        (message("alice@example.com", "rsa"), vec!["a@dest.test"]),
        (message("bob@Example.ORG", "ed"), vec!["b@dest.test"]),
        (
            message("alice@example.com", "eightbit")
                .replace("Hello", "Gr\u{fc}\u{df}e aus K\u{f6}ln,"),
            vec!["e@dest.test"],
        ),
        (
            message("news@news.example.com", "mapped"),
            vec!["c@dest.test"],
        ),
        (
            message("carol@unsigned.example", "nokey"),
            vec!["d@dest.test"],
        ),
        // The tenant and campaign headers are removed before signing: the
        // signature covers the bytes the receiver gets.
        (
            message("alice@example.com", "tenant").replace(
                "Subject:",
                "X-Tenant: acme\r\nX-Campaign: spring\r\nSubject:",
            ),
            vec!["t@dest.test"],
        ),
        // One message, three recipient domains: three deliveries (separate
        // transactions), one signature computed once at injection.
        (
            message("alice@example.com", "multi"),
            vec!["x@one.test", "y@two.test", "z@three.test"],
        ),
    ];
    inject(s.inject_port, &messages);
    wait_until("9 captured deliveries", || captures(&s.capture).len() >= 9);
    let captured = captures(&s.capture);
    assert_eq!(
        captured.len(),
        9,
        "exactly one delivery per recipient domain"
    );

    let (rsa_sel, rsa_txt) = ("rsa2026", s.rsa.txt.as_str());
    let (ed_sel, ed_txt) = ("ed2026", s.ed.txt.as_str());
    let mut multi_signatures = Vec::new();
    for (tag, bytes) in &captured {
        let sigs = signatures(bytes);
        let (selector, domain, txt) = match tag.as_str() {
            "rsa" | "mapped" | "multi" | "eightbit" | "tenant" => (rsa_sel, "example.com", rsa_txt),
            "ed" => (ed_sel, "example.org", ed_txt),
            "nokey" => {
                assert!(
                    sigs.is_empty(),
                    "a From domain without a key is delivered unsigned: {sigs:?}"
                );
                continue;
            }
            other => panic!("unexpected capture {other:?}"),
        };
        assert_eq!(sigs.len(), 1, "{tag}: exactly one signature: {sigs:?}");
        let sig = &sigs[0];
        assert!(sig.contains(&format!("d={domain}")), "{sig}");
        assert!(!sig.contains(" l="), "never l=: {sig}");
        let results = mail_auth_verify(bytes, selector, domain, txt);
        assert_eq!(
            results,
            vec![DkimResult::Pass],
            "{tag}: mail-auth\n{}",
            String::from_utf8_lossy(bytes)
        );
        assert!(
            dkimpy_verify(&s.path, bytes, selector, domain, txt),
            "{tag}: dkimpy\n{}",
            String::from_utf8_lossy(bytes)
        );
        if tag == "ed" {
            assert!(sig.contains("a=ed25519-sha256"), "{sig}");
            assert!(sig.contains("c=relaxed/simple"), "{sig}");
        } else {
            assert!(sig.contains("a=rsa-sha256"), "{sig}");
            assert!(sig.contains("x="), "expiry configured: {sig}");
        }
        // From is oversigned: h= lists it once more than it occurs.
        let h = sig
            .split(';')
            .find_map(|t| t.trim().strip_prefix("h="))
            .expect("h= tag");
        let from_count = h
            .split(':')
            .filter(|n| n.trim().eq_ignore_ascii_case("from"))
            .count();
        assert_eq!(from_count, 2, "From oversigned: {h}");
        // The signature sits in front of the engine's Received header.
        let text = String::from_utf8_lossy(bytes);
        assert!(text.starts_with("DKIM-Signature:"), "{text}");
        if tag == "multi" {
            multi_signatures.push(sig.clone());
        }
        if tag == "tenant" {
            let lower = text.to_ascii_lowercase();
            assert!(
                !lower.contains("x-tenant") && !lower.contains("x-campaign"),
                "{text}"
            );
        }
    }
    assert_eq!(multi_signatures.len(), 3);
    assert!(
        multi_signatures.iter().all(|s| *s == multi_signatures[0]),
        "signed once per message, not per recipient: {multi_signatures:?}"
    );
}

#[test]
fn tampered_captures_fail_both_verifiers() {
    let s = setup();
    inject(
        s.inject_port,
        &[
            (message("alice@example.com", "rsa"), vec!["a@dest.test"]),
            (message("bob@example.org", "ed"), vec!["b@dest.test"]),
        ],
    );
    wait_until("2 captured deliveries", || captures(&s.capture).len() >= 2);
    for (tag, bytes) in captures(&s.capture) {
        let (selector, domain, txt) = if tag == "rsa" {
            ("rsa2026", "example.com", s.rsa.txt.as_str())
        } else {
            ("ed2026", "example.org", s.ed.txt.as_str())
        };
        // The untouched capture passes (so the failures below are the
        // tampering's doing) ...
        assert_eq!(
            mail_auth_verify(&bytes, selector, domain, txt),
            vec![DkimResult::Pass]
        );
        assert!(dkimpy_verify(&s.path, &bytes, selector, domain, txt));
        let text = String::from_utf8_lossy(&bytes).into_owned();
        // ... a changed body fails ...
        let body = text.replace(&format!("Hello {tag}."), &format!("Hello {tag}!"));
        assert_ne!(body, text);
        // ... and so does a changed signed header, or an added From.
        let subject = text.replace("Subject: dkim test", "Subject: DKIM TEST");
        let from = text.replacen(
            "From: Sender",
            "From: attacker@evil.test\r\nFrom: Sender",
            1,
        );
        for (what, tampered) in [("body", body), ("subject", subject), ("second From", from)] {
            let results = mail_auth_verify(tampered.as_bytes(), selector, domain, txt);
            assert!(
                !results.contains(&DkimResult::Pass),
                "{tag}/{what}: mail-auth passed a tampered message: {results:?}"
            );
            assert!(
                !dkimpy_verify(&s.path, tampered.as_bytes(), selector, domain, txt),
                "{tag}/{what}: dkimpy passed a tampered message"
            );
        }
    }
}

#[test]
fn a_readable_key_file_is_refused_at_start_with_its_key_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = generate(dir.path(), "open", false);
    std::fs::set_permissions(&key.path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let cfg = dir.path().join("sluice.toml");
    std::fs::write(
        &cfg,
        format!(
            "[spool]\ndir = \"{}\"\n[dkim.domains.\"example.com\"]\nselector = \"s1\"\nkey_file = \"{}\"\n",
            dir.path().join("spool").display(),
            key.path.display()
        ),
    )
    .expect("write config");
    for args in [vec!["check-config"], vec!["run", "--config"]] {
        let output = Command::new(binary("sluice").expect("sluice binary"))
            .args(&args)
            .arg(&cfg)
            .output()
            .expect("run sluice");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}: {stderr}");
        assert!(
            stderr.contains("dkim.domains.\"example.com\".key_file"),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("chmod 600"), "{args:?}: {stderr}");
    }
}

#[test]
fn the_signature_is_stored_with_the_message_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    let rsa = generate(&path, "rsa", false);
    // Nothing listens on the sink port yet: the message is acknowledged,
    // signed and spooled, and its delivery deferred.
    let sink_port = free_port().expect("port for the sink");
    let dkim = format!(
        "[dkim.domains.\"example.com\"]\nselector = \"rsa2026\"\nkey_file = \"{}\"\n",
        rsa.path.display()
    );
    let mut engine = support::config(&path, sink_port).extra(&dkim).start();
    let port = engine.port;
    inject(
        port,
        &[(message("alice@example.com", "restart"), vec!["a@dest.test"])],
    );
    engine
        .process
        .stop(std::time::Duration::from_secs(15))
        .expect("sluice stops");
    let capture = path.join("capture");
    std::fs::create_dir(&capture).expect("capture dir");
    let capture_arg = capture.to_string_lossy().into_owned();
    let _sink = SinkBuilder::new(&path, "sink")
        .port(sink_port)
        .args(&["--capture", &capture_arg])
        .start();
    // Restarted without any key: the signature can only come from the spool.
    let _engine = support::config(&path, sink_port).start();
    wait_until("the recovered message at the sink", || {
        !captures(&capture).is_empty()
    });
    let captured = captures(&capture);
    assert_eq!(captured.len(), 1);
    let bytes = &captured[0].1;
    assert_eq!(
        signatures(bytes).len(),
        1,
        "{}",
        String::from_utf8_lossy(bytes)
    );
    assert_eq!(
        mail_auth_verify(bytes, "rsa2026", "example.com", &rsa.txt),
        vec![DkimResult::Pass]
    );
    assert!(dkimpy_verify(
        &path,
        bytes,
        "rsa2026",
        "example.com",
        &rsa.txt
    ));
}
