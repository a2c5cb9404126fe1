//! Delivery from the real `sluice` into independent SMTP servers (issue 10,
//! "Interop"):
//!
//! - a private Postfix instance (its own `main.cf`/`master.cf`/queue under a
//!   temp dir, `smtpd` on a loopback port, the test domain relayed to the
//!   `discard:` transport). Postfix offers PIPELINING, CHUNKING, DSN,
//!   8BITMIME, SMTPUTF8 and SIZE; a header check logs each message's
//!   `X-Sluice-Id` and the discard agent logs `status=sent` per recipient,
//!   so the test counts both in Postfix's own log. Needs root (Postfix
//!   drops privileges to its `postfix` user); otherwise it prints SKIPPED.
//! - Python's aiosmtpd (`tests/peers/aiosmtpd_sink.py`), which offers
//!   neither PIPELINING nor CHUNKING nor DSN: every message must still
//!   arrive, sent with DATA, one command per round trip, and without the
//!   DSN parameters it was injected with.
//!
//! Build the binaries first (`cargo build --release --bins`).

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use sluice_tests::{free_port, wait_for_port, Process};
use sluice_tests::{have, loopback, run_bounded, Smtp, TIMEOUT};
use support::wait_until;

/// Injects `messages` (id, recipients, DSN parameters on) into the engine
/// over one session, DATA one round trip at a time.
fn inject(port: u16, messages: &[(String, Vec<String>, bool)]) {
    let mut c = Smtp::connect_as(port, "injector.test");
    for (id, rcpts, dsn) in messages {
        let mail_params = if *dsn { " RET=HDRS ENVID=env-x" } else { "" };
        c.expect(&format!("MAIL FROM:<sender@origin.test>{mail_params}"), 250);
        for rc in rcpts {
            let rcpt_params = if *dsn {
                format!(" NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;{rc}")
            } else {
                String::new()
            };
            c.expect(&format!("RCPT TO:<{rc}>{rcpt_params}"), 250);
        }
        c.expect("DATA", 354);
        // Already dot-stuffed: the message has a line `.leading dot`.
        c.expect(
            &format!("X-Sluice-Id: {id}\r\nSubject: interop {id}\r\n\r\nbody of {id}\r\n..leading dot\r\n."),
            250,
        );
    }
    c.close();
}

/// `count` messages with 1..=3 recipients in `domain`; every fifth carries
/// DSN parameters.
fn messages(prefix: &str, domain: &str, count: usize) -> Vec<(String, Vec<String>, bool)> {
    (0..count)
        .map(|n| {
            let rcpts = (0..n % 3 + 1)
                .map(|k| format!("user{k}.{n}@{domain}"))
                .collect();
            (format!("{prefix}-{n}"), rcpts, n % 5 == 0)
        })
        .collect()
}

/// A private Postfix instance under a temp dir, stopped on drop.
struct Postfix {
    dir: PathBuf,
    master_pid: Option<u32>,
}

impl Postfix {
    fn start(dir: &Path, port: u16, domain: &str) -> Result<Postfix, String> {
        let etc = dir.join("etc");
        let queue = dir.join("queue");
        let data = dir.join("data");
        for d in [&etc, &queue, &data] {
            std::fs::create_dir_all(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
        }
        // Postfix walks up from its queue directory checking ownership and
        // modes; the temp dir is 0700 root, which it accepts, but its
        // processes run as `postfix` and need to traverse it.
        let chmod = |p: &Path, mode: &str| {
            Command::new("chmod")
                .arg(mode)
                .arg(p)
                .status()
                .map(|s| s.success())
        };
        let _ = chmod(dir, "755");
        let chowned = Command::new("chown")
            .arg("postfix:postfix")
            .arg(&data)
            .status()
            .is_ok_and(|s| s.success());
        if !chowned {
            return Err("chown postfix:postfix (is there a postfix user?)".into());
        }
        let log = dir.join("maillog");
        std::fs::write(
            etc.join("header_checks"),
            "/^X-Sluice-Id: (.*)$/ WARN sluice-id=$1\n",
        )
        .map_err(|e| format!("header_checks: {e}"))?;
        let main_cf = format!(
            "compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.interop.test
mydomain = interop.test
myorigin = $myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_recipient_maps =
relay_domains = {domain}
relay_recipient_maps =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions =
smtpd_peername_lookup = no
smtpd_tls_security_level = none
biff = no
append_dot_mydomain = no
relay_transport = discard:interop
default_transport = discard:interop
header_checks = regexp:{etc}/header_checks
maillog_file = {log}
maillog_file_prefixes = {dir}
",
            queue = queue.display(),
            data = data.display(),
            etc = etc.display(),
            log = log.display(),
            dir = dir.display(),
        );
        std::fs::write(etc.join("main.cf"), main_cf).map_err(|e| format!("main.cf: {e}"))?;
        let master_cf = format!(
            "127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"
        );
        std::fs::write(etc.join("master.cf"), master_cf).map_err(|e| format!("master.cf: {e}"))?;
        let mut pf = Postfix {
            dir: dir.to_path_buf(),
            master_pid: None,
        };
        let mut cmd = Command::new("postfix");
        cmd.arg("-c").arg(&etc).arg("start");
        let ran = run_bounded(dir, "postfix-start", cmd, Duration::from_secs(30));
        if !ran.success {
            return Err(format!("postfix start: {}{}", ran.stdout, ran.stderr));
        }
        let pid_file = queue.join("pid/master.pid");
        wait_until("postfix master.pid", || {
            std::fs::read_to_string(&pid_file).is_ok_and(|t| !t.trim().is_empty())
        });
        pf.master_pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse().ok());
        wait_for_port(loopback(port), TIMEOUT).map_err(|e| e.to_string())?;
        Ok(pf)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(self.dir.join("etc"))
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(pid) = self.master_pid {
            for _ in 0..100 {
                // SAFETY: signal 0 only probes the master we started.
                if unsafe { libc::kill(pid as libc::pid_t, 0) } != 0 {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            // SAFETY: the master process this instance started.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
    }
}

#[test]
fn delivery_into_a_private_postfix_instance() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: a private Postfix instance needs root (it drops to the postfix user)");
        return;
    }
    if !Path::new("/usr/lib/postfix/sbin/smtpd").is_file() || !have("postfix") {
        eprintln!("SKIPPED: Postfix is not installed (bash scripts/setup.sh)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pf_dir = dir.path().join("postfix");
    let pf_port = free_port().expect("port");
    let postfix = Postfix::start(&pf_dir, pf_port, "pf.test").expect("start postfix");
    let engine = support::config(dir.path(), pf_port).start();
    let msgs = messages("pf", "pf.test", 60);
    inject(engine.port, &msgs);
    let rcpts: usize = msgs.iter().map(|(_, r, _)| r.len()).sum();
    let sent = |log: &str| {
        log.lines()
            .filter(|l| l.contains("status=sent") && l.contains("@pf.test>"))
            .count()
    };
    wait_until("every recipient discarded by Postfix", || {
        sent(&postfix.log()) >= rcpts
    });
    std::thread::sleep(Duration::from_millis(500));
    let log = postfix.log();
    assert_eq!(sent(&log), rcpts, "recipients delivered:\n{log}");
    // Each message once: Postfix's cleanup logs its header.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for l in log.lines().filter(|l| l.contains("sluice-id=")) {
        if let Some(id) = l.split("sluice-id=").nth(1) {
            let id = id.split_whitespace().next().unwrap_or("");
            *seen.entry(id.to_string()).or_insert(0) += 1;
        }
    }
    for (id, _, _) in &msgs {
        assert_eq!(
            seen.get(id).copied(),
            Some(1),
            "{id} reached Postfix once:\n{log}"
        );
    }
    assert_eq!(seen.len(), msgs.len());
    // NOTIFY=SUCCESS was forwarded (Postfix offers DSN): Postfix itself
    // sends a delivery notification for each such message.
    let dsn = msgs.iter().filter(|m| m.2).count();
    assert_eq!(
        log.matches("sender delivery status notification").count(),
        dsn,
        "DSN parameters forwarded:\n{log}"
    );
    assert!(
        !log.contains("reject:"),
        "Postfix rejected something:\n{log}"
    );
    assert!(engine.alive(), "{}", engine.said());
    // On stop the engine QUITs its connections; Postfix then logs the
    // commands of each session: the extensions it offers were used.
    let mut engine = engine;
    let status = engine.process.stop(TIMEOUT).expect("stop sluice");
    assert!(status.success(), "{status:?}");
    // Sums of `verb=count` over the engine's finished sessions.
    let tally = |log: &str| -> HashMap<String, usize> {
        let mut sums = HashMap::new();
        for l in log
            .lines()
            .filter(|l| l.contains("disconnect from") && l.contains(" mail="))
        {
            for field in l.split_whitespace() {
                if let Some((verb, n)) = field.split_once('=') {
                    let n = n
                        .split('/')
                        .next()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                    *sums.entry(verb.to_string()).or_insert(0) += n;
                }
            }
        }
        sums
    };
    wait_until("Postfix logs the end of every engine session", || {
        tally(&postfix.log()).get("mail").copied().unwrap_or(0) >= msgs.len()
    });
    let sums = tally(&postfix.log());
    assert_eq!(sums.get("mail"), Some(&msgs.len()), "{sums:?}");
    assert_eq!(sums.get("rcpt"), Some(&rcpts), "{sums:?}");
    // RFC 3030: Postfix offers CHUNKING, so every message went as BDAT.
    assert_eq!(sums.get("bdat"), Some(&msgs.len()), "{sums:?}");
    assert_eq!(sums.get("data"), None, "{sums:?}");
}

/// One message as aiosmtpd saw it.
#[derive(Debug)]
struct Received {
    id: String,
    rcpts: usize,
    dots_ok: bool,
    mail_options: String,
    rcpt_options: String,
}

struct Aiosmtpd {
    _process: Process,
    out: PathBuf,
}

impl Aiosmtpd {
    /// Returns None when aiosmtpd cannot be imported.
    fn start(dir: &Path, port: u16) -> Option<Aiosmtpd> {
        let ok = Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return None;
        }
        let out = dir.join("aiosmtpd");
        std::fs::create_dir_all(&out).expect("aiosmtpd dir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/aiosmtpd_sink.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script).arg(port.to_string()).arg(&out);
        cmd.stdout(Stdio::null());
        let process = Process::spawn("aiosmtpd", cmd).expect("start aiosmtpd");
        wait_until("aiosmtpd ready", || out.join("ready").exists());
        wait_for_port(loopback(port), TIMEOUT).expect("aiosmtpd listening");
        Some(Aiosmtpd {
            _process: process,
            out,
        })
    }

    /// Every accepted message, as recorded by the script.
    fn messages(&self) -> Vec<Received> {
        let text = std::fs::read_to_string(self.out.join("messages.txt")).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let (left, rcpt_options) = l.split_once(" | ")?;
                let mut parts = left.splitn(4, ' ');
                Some(Received {
                    id: parts.next()?.to_string(),
                    rcpts: parts.next()?.parse().ok()?,
                    dots_ok: parts.next()? == "dots-ok",
                    mail_options: parts.next().unwrap_or("").trim().to_string(),
                    rcpt_options: rcpt_options.trim().to_string(),
                })
            })
            .collect()
    }

    fn pipelined(&self) -> String {
        std::fs::read_to_string(self.out.join("pipelined.txt")).unwrap_or_default()
    }
}

#[test]
fn delivery_into_aiosmtpd_without_pipelining_or_chunking() {
    if !have("python3") {
        eprintln!("SKIPPED: python3 is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port().expect("port");
    let Some(server) = Aiosmtpd::start(dir.path(), port) else {
        eprintln!("SKIPPED: Python's aiosmtpd is missing (python3 -m pip install aiosmtpd)");
        return;
    };
    let engine = support::config(dir.path(), port).start();
    let msgs = messages("ai", "ai.test", 40);
    inject(engine.port, &msgs);
    wait_until("every message at aiosmtpd", || {
        server.messages().len() >= msgs.len()
    });
    std::thread::sleep(Duration::from_millis(500));
    let got = server.messages();
    assert_eq!(got.len(), msgs.len(), "{got:?}");
    let by_id: HashMap<&str, &Received> = got.iter().map(|m| (m.id.as_str(), m)).collect();
    assert_eq!(by_id.len(), msgs.len(), "each message once: {got:?}");
    for (id, rcpts, _) in &msgs {
        let m = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("{id} did not arrive: {got:?}"));
        assert_eq!(
            m.rcpts,
            rcpts.len(),
            "{id}: all recipients in one transaction"
        );
        // RFC 5321 §4.5.2: dot-stuffed by the engine on DATA.
        assert!(m.dots_ok, "{id}: the leading-dot line was damaged: {m:?}");
        // DSN is not offered: no RET/ENVID/NOTIFY/ORCPT may be sent (RFC 3461 §4).
        for p in ["RET=", "ENVID=", "NOTIFY=", "ORCPT="] {
            assert!(
                !m.mail_options.contains(p) && !m.rcpt_options.contains(p),
                "{id} carried {p}: {m:?}"
            );
        }
    }
    // RFC 2920: without PIPELINING, one command per round trip.
    let pipelined = server.pipelined();
    assert!(
        pipelined.is_empty(),
        "sluice pipelined to a server that does not offer it:\n{pipelined}"
    );
    assert!(engine.alive(), "{}", engine.said());
}
