//! End-to-end tests of injection into the real `sluice` binary on loopback:
//! pipelined transactions, both injection paths, relay refusal, size limits,
//! graceful stop and restart.
//!
//! Build the binaries first (`cargo build --release --bins`, or set
//! `SLUICE_BIN_DIR=target/debug` after a debug build). The recovering-state
//! answer (`421 4.3.2`) is tested in-process in the engine
//! (`inject::recovering`): recovery of a spool that fits on a test machine
//! takes milliseconds, too short to hit reliably from outside.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_tests::{binary, free_port, greets, loopback, Process, TIMEOUT};

/// A minimal SMTP client on a std socket: enough to pipeline and to read
/// replies one by one.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

#[derive(Debug)]
struct Reply {
    code: u16,
    text: String,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect to sluice");
        s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        s.set_write_timeout(Some(TIMEOUT)).expect("timeout");
        Client {
            reader: BufReader::new(s.try_clone().expect("clone")),
            writer: s,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write to sluice");
    }

    /// One whole (possibly multi-line) reply.
    fn reply(&mut self) -> Reply {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).expect("read a reply line");
            assert!(n > 0, "connection closed while a reply was expected");
            assert!(line.ends_with("\r\n"), "reply line without CRLF: {line:?}");
            let code: u16 = line[..3].parse().expect("reply code");
            text.push_str(line[4.min(line.len())..].trim_end());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Reply { code, text };
            }
            text.push('\n');
        }
    }

    fn expect(&mut self, code: u16) -> Reply {
        let r = self.reply();
        assert_eq!(r.code, code, "unexpected reply {r:?}");
        r
    }

    fn greet(addr: SocketAddr) -> Client {
        let mut c = Client::connect(addr);
        c.expect(220);
        c.send(b"EHLO tester.example\r\n");
        let ehlo = c.expect(250);
        for ext in [
            "PIPELINING",
            "CHUNKING",
            "8BITMIME",
            "SMTPUTF8",
            "SIZE",
            "ENHANCEDSTATUSCODES",
            "DSN",
        ] {
            assert!(ehlo.text.contains(ext), "EHLO lacks {ext}: {}", ehlo.text);
        }
        c
    }
}

/// The shard in a `250 2.0.0 s<shard>.<id> queued` reply.
fn accepting_shard(r: &Reply) -> u32 {
    assert_eq!(r.code, 250, "{r:?}");
    let rest = r
        .text
        .split_once(" s")
        .map(|(_, t)| t)
        .expect("queued reply names the shard");
    rest.split('.')
        .next()
        .and_then(|s| s.parse().ok())
        .expect("shard number")
}

struct Engine {
    process: Process,
    stderr: PathBuf,
}

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("sluice.toml");
    std::fs::write(&path, body).expect("write config");
    path
}

fn config_text(dir: &Path, shared_port: u16, extra_inject: &str, route_port: u16) -> String {
    // Small segments keep the reserved spool files small on the test disk.
    let size = if extra_inject.contains("message_size_max") {
        ""
    } else {
        "message_size_max = \"1MiB\""
    };
    format!(
        "hostname = \"sluice.test\"\ncores = [0, 1]\n\
         [inject]\nlisten = \"127.0.0.1:{shared_port}\"\n{extra_inject}\n{size}\n\
         [spool]\ndir = \"{}\"\nsegment_size = \"4MiB\"\n\
         [[route]]\npattern = \"*\"\nhosts = [\"127.0.0.1:{route_port}\"]\n",
        dir.join("spool").display()
    )
}

fn start(dir: &Path, config: &Path, shared: SocketAddr, tag: &str) -> Engine {
    let stderr = dir.join(format!("sluice-{tag}.err"));
    let mut cmd = Command::new(binary("sluice").expect("sluice binary"));
    cmd.arg("run").arg("--config").arg(config);
    cmd.stdout(Stdio::null());
    cmd.stderr(std::fs::File::create(&stderr).expect("stderr file"));
    let process = Process::spawn("sluice", cmd).expect("start sluice");
    if !greets(shared, TIMEOUT) {
        let said = std::fs::read_to_string(&stderr).unwrap_or_default();
        panic!("sluice did not greet on {shared} within {TIMEOUT:?}; it said:\n{said}");
    }
    Engine { process, stderr }
}

/// Starts an engine on `port` whose mail stays queued (its route goes
/// nowhere), `extra` in `[inject]`.
fn start_queueing(dir: &Path, port: u16, extra: &str, tag: &str) -> Engine {
    let cfg = write_config(dir, &config_text(dir, port, extra, dead_port()));
    start(dir, &cfg, loopback(port), tag)
}

/// Waits until `addr` greets with `220` (not the recovering `421 4.3.2`).
fn wait_ready(addr: SocketAddr) {
    assert!(
        greets(addr, TIMEOUT),
        "sluice did not greet on {addr} within {TIMEOUT:?}"
    );
}

/// A port nobody listens on: the delivery route for tests that keep mail queued.
fn dead_port() -> u16 {
    free_port().expect("free port")
}

#[test]
fn pipelined_injection_gets_250_for_every_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port().expect("port");
    let _engine = start_queueing(dir.path(), port, "", "pipe");
    let mut c = Client::greet(loopback(port));
    // Whole transactions back to back in one write (RFC 3030 BDAT needs no
    // 354 round trip, so a client may pipeline everything).
    const N: usize = 200;
    let mut batch = Vec::new();
    for i in 0..N {
        let body = format!("Subject: message {i}\r\n\r\nbody of message {i}\r\n");
        batch.extend_from_slice(
            format!(
                "MAIL FROM:<sender@src.test> SIZE={}\r\nRCPT TO:<rcpt{i}@dest{}.test>\r\nBDAT {} LAST\r\n{body}",
                body.len(),
                i % 7,
                body.len()
            )
            .as_bytes(),
        );
    }
    c.send(&batch);
    let mut ids = std::collections::HashSet::new();
    for i in 0..N {
        c.expect(250); // MAIL
        c.expect(250); // RCPT
        let r = c.expect(250); // end of message: durable and queued
        assert!(r.text.ends_with(" queued"), "message {i}: {r:?}");
        assert!(ids.insert(r.text.clone()), "ids are unique: {r:?}");
    }
    // Classic DATA with dot-stuffing and a multi-domain recipient list.
    c.send(b"MAIL FROM:<>\r\nRCPT TO:<a@one.test>\r\nRCPT TO:<b@TWO.test>\r\nDATA\r\n");
    c.expect(250);
    c.expect(250);
    c.expect(250);
    c.expect(354);
    c.send(b"Subject: dots\r\n\r\n..leading dot\r\n.\r\n");
    let r = c.expect(250);
    assert!(r.text.ends_with(" queued"), "{r:?}");
    c.send(b"QUIT\r\n");
    c.expect(221);
}

#[test]
fn both_injection_paths_and_route_agree_with_the_accepting_shard() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port().expect("port");
    // Two consecutive free ports for the per-shard listeners.
    let base = loop {
        let p = free_port().expect("port");
        if p < 65000 && std::net::TcpListener::bind(loopback(p + 1)).is_ok() {
            break p;
        }
    };
    let extra = format!("shard_port_base = {base}");
    let cfg = write_config(
        dir.path(),
        &config_text(dir.path(), port, &extra, dead_port()),
    );
    let _engine = start(dir.path(), &cfg, loopback(port), "paths");
    wait_ready(loopback(base));
    wait_ready(loopback(base + 1));
    for domain in [
        "example.com",
        "gmail.com",
        "yahoo.test",
        "b.example",
        "Mixed.Case.Test",
    ] {
        let out = Command::new(binary("sluice").expect("binary"))
            .args(["route", domain, "--config"])
            .arg(&cfg)
            .output()
            .expect("sluice route");
        assert!(out.status.success(), "sluice route failed: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |name: &str| -> u32 {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no `{name}` in {text}"))
        };
        let shard = field("shard:");
        let routed_port = field("port:");
        assert_eq!(routed_port, u32::from(base) + shard, "{text}");
        let mut c = Client::greet(loopback(routed_port as u16));
        c.send(format!("MAIL FROM:<s@src.test>\r\nRCPT TO:<r@{domain}>\r\nDATA\r\n").as_bytes());
        c.expect(250);
        c.expect(250);
        c.expect(354);
        c.send(b"Subject: routed\r\n\r\nhello\r\n.\r\n");
        let r = c.reply();
        assert_eq!(
            accepting_shard(&r),
            shard,
            "{domain} was accepted by another shard: {r:?}"
        );
    }
    // The shared port: every shard answers on it; each reply names a real shard.
    for _ in 0..8 {
        let mut c = Client::greet(loopback(port));
        c.send(b"MAIL FROM:<s@src.test>\r\nRCPT TO:<r@any.test>\r\nBDAT 7 LAST\r\nhello\r\n");
        c.expect(250);
        c.expect(250);
        let r = c.reply();
        assert!(accepting_shard(&r) < 2, "{r:?}");
    }
}

#[test]
fn relay_is_denied_outside_relay_networks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port().expect("port");
    let extra = "relay_networks = [\"192.0.2.0/24\"]";
    let _engine = start_queueing(dir.path(), port, extra, "relay");
    let mut c = Client::greet(loopback(port));
    c.send(b"MAIL FROM:<s@src.test>\r\nRCPT TO:<r@elsewhere.test>\r\nDATA\r\n");
    c.expect(250);
    let r = c.expect(550);
    assert!(r.text.starts_with("5.7.1"), "{r:?}");
    // No valid recipient: DATA is refused too (RFC 2920 §3.1).
    c.expect(554);
    c.send(b"QUIT\r\n");
    c.expect(221);
}

#[test]
fn oversize_messages_get_552_while_streaming() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port().expect("port");
    let extra = "message_size_max = \"2KiB\"";
    let _engine = start_queueing(dir.path(), port, extra, "size");
    let mut c = Client::greet(loopback(port));
    // Declared too big (RFC 1870 §6.1).
    c.send(b"MAIL FROM:<s@src.test> SIZE=100000\r\n");
    let r = c.expect(552);
    assert!(r.text.starts_with("5.3.4"), "{r:?}");
    // Undeclared, too big once streamed.
    c.send(b"MAIL FROM:<s@src.test>\r\nRCPT TO:<r@x.test>\r\nDATA\r\n");
    c.expect(250);
    c.expect(250);
    c.expect(354);
    let line = "x".repeat(78) + "\r\n";
    let mut body = String::from("Subject: big\r\n\r\n");
    while body.len() < 8 * 1024 {
        body.push_str(&line);
    }
    body.push_str(".\r\n");
    c.send(body.as_bytes());
    let r = c.expect(552);
    assert!(r.text.starts_with("5.3.4"), "{r:?}");
    // The connection is still usable and a small message is accepted.
    c.send(b"MAIL FROM:<s@src.test>\r\nRCPT TO:<r@x.test>\r\nDATA\r\n");
    c.expect(250);
    c.expect(250);
    c.expect(354);
    c.send(b"Subject: small\r\n\r\nok\r\n.\r\n");
    let r = c.expect(250);
    assert!(r.text.ends_with(" queued"), "{r:?}");
}

/// `sluice: stopped cleanly (N message(s) accepted, M recovered at start)`.
fn stop_summary(engine: &Engine) -> (u64, u64) {
    let text = std::fs::read_to_string(&engine.stderr).expect("stderr file");
    let line = text
        .lines()
        .find(|l| l.contains("stopped cleanly"))
        .unwrap_or_else(|| panic!("no clean stop in:\n{text}"));
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    (nums[0], nums[1])
}

#[test]
fn sigterm_exits_0_and_a_restart_keeps_queued_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port().expect("port");
    // The next hop is down: everything stays queued.
    let cfg = write_config(dir.path(), &config_text(dir.path(), port, "", dead_port()));
    let mut first = start(dir.path(), &cfg, loopback(port), "first");
    const N: u64 = 30;
    let mut c = Client::greet(loopback(port));
    for i in 0..N {
        let body = format!("Subject: keep {i}\r\n\r\nkeep me\r\n");
        c.send(
            format!(
                "MAIL FROM:<s@src.test>\r\nRCPT TO:<r{i}@down{}.test>\r\nBDAT {} LAST\r\n{body}",
                i % 3,
                body.len()
            )
            .as_bytes(),
        );
        c.expect(250);
        c.expect(250);
        let r = c.expect(250);
        assert!(r.text.ends_with(" queued"), "{r:?}");
    }
    // An idle client is told 421 and disconnected at shutdown.
    let status = first.process.stop(TIMEOUT).expect("stop");
    assert!(status.success(), "SIGTERM must exit 0, got {status:?}");
    let r = c.reply();
    assert_eq!(r.code, 421, "{r:?}");
    let (accepted, recovered) = stop_summary(&first);
    assert_eq!(accepted, N);
    assert_eq!(recovered, 0);

    let mut second = start(dir.path(), &cfg, loopback(port), "second");
    let status = second.process.stop(TIMEOUT).expect("stop");
    assert!(status.success(), "{status:?}");
    let (accepted, recovered) = stop_summary(&second);
    assert_eq!(accepted, 0);
    assert_eq!(recovered, N, "every queued message survives the restart");
}

#[test]
fn connection_limits_and_idle_timeout_answer_421() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port().expect("port");
    // One shard, so every connection meets the same per-shard counters.
    let extra = "connections_per_ip_max = 2\nidle_timeout = \"1s\"";
    let text =
        config_text(dir.path(), port, extra, dead_port()).replace("cores = [0, 1]", "cores = [0]");
    let cfg = write_config(dir.path(), &text);
    let _engine = start(dir.path(), &cfg, loopback(port), "limits");
    // wait_ready's probe connection may still be closing: give it a moment
    // to leave the per-IP count, with the idle timeout as an upper bound.
    std::thread::sleep(Duration::from_millis(200));
    let mut a = Client::greet(loopback(port));
    let _b = Client::greet(loopback(port));
    let mut c = Client::connect(loopback(port));
    let r = c.reply();
    assert_eq!(r.code, 421, "{r:?}");
    assert!(r.text.starts_with("4.7.0"), "{r:?}");
    // An idle client is cut off with 421 4.4.2 (RFC 5321 §4.5.3.2.7).
    let started = Instant::now();
    let r = a.reply();
    assert_eq!(r.code, 421, "{r:?}");
    assert!(r.text.starts_with("4.4.2"), "{r:?}");
    assert!(started.elapsed() < TIMEOUT);
}

#[test]
fn sigterm_lets_the_transaction_in_flight_finish() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port().expect("port");
    let mut engine = start_queueing(dir.path(), port, "", "inflight");
    let mut c = Client::greet(loopback(port));
    c.send(b"MAIL FROM:<s@src.test>\r\nRCPT TO:<r@x.test>\r\nDATA\r\n");
    c.expect(250);
    c.expect(250);
    c.expect(354);
    c.send(b"Subject: in flight\r\n\r\nfirst half\r\n");
    engine.process.signal(libc::SIGTERM);
    // Stopping takes at least one stop-flag poll; the body ends meanwhile.
    std::thread::sleep(Duration::from_millis(300));
    c.send(b"second half\r\n.\r\n");
    let r = c.expect(250);
    assert!(r.text.ends_with(" queued"), "{r:?}");
    // Then the connection is quiet, and is closed with 421 4.3.2.
    let r = c.expect(421);
    assert!(r.text.starts_with("4.3.2"), "{r:?}");
    let status = engine.process.stop(TIMEOUT).expect("stop");
    assert!(status.success(), "{status:?}");
    assert_eq!(stop_summary(&engine), (1, 0));
}

#[test]
fn a_slow_drip_in_data_is_cut_off_with_421() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port().expect("port");
    // Anything slower than 1 MB/s after the grace period (5 s) is too slow.
    let extra = "min_data_rate_bytes_per_s = 1000000";
    let _engine = start_queueing(dir.path(), port, extra, "drip");
    let mut c = Client::greet(loopback(port));
    c.send(b"MAIL FROM:<s@src.test>\r\nRCPT TO:<r@x.test>\r\nDATA\r\n");
    c.expect(250);
    c.expect(250);
    c.expect(354);
    let started = Instant::now();
    c.writer.set_nonblocking(false).expect("blocking socket");
    let mut cut = None;
    while started.elapsed() < TIMEOUT {
        // One byte every 100 ms: far below the rate, never idle.
        if c.writer.write_all(b"x").is_err() {
            break;
        }
        c.writer
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let mut line = String::new();
        if c.reader.read_line(&mut line).is_ok() && !line.is_empty() {
            cut = Some(line);
            break;
        }
    }
    let line = cut.expect("the slow client was cut off");
    assert!(line.starts_with("421 4.4.2 Data rate too low"), "{line:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "the grace period applies"
    );
}

fn sluice(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(binary("sluice").expect("binary"))
        .args(args)
        .output()
        .expect("run sluice");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn flags_override_the_file_and_are_validated_under_their_keys() {
    // Two shards with per-shard ports from 3000: the port is 3000 + shard.
    let (ok, out, err) = sluice(&[
        "route",
        "Example.COM",
        "--cores",
        "0-1",
        "--shard-port-base",
        "3000",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("domain:    example.com"), "{out}");
    let shard: u16 = out
        .lines()
        .find_map(|l| l.strip_prefix("shard:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("shard line");
    assert!(shard < 2);
    assert!(
        out.contains(&format!("port:      {}", 3000 + shard)),
        "{out}"
    );
    // Without per-shard ports, route says how to turn them on.
    let (ok, out, _) = sluice(&["route", "example.com", "--cores", "0"]);
    assert!(ok);
    assert!(out.contains("shard:     0 of 1"), "{out}");
    assert!(out.contains("shard_port_base"), "{out}");
    // Bad flags fail with the key they override and exit 1.
    let (ok, _, err) = sluice(&["route", "x.test", "--route", "*=nowhere"]);
    assert!(!ok);
    assert!(err.contains("route[0].hosts[0]"), "{err}");
    let (ok, _, err) = sluice(&["route", "x.test", "--cores", "3-1"]);
    assert!(!ok);
    assert!(err.contains("cores"), "{err}");
    let (ok, _, err) = sluice(&["run", "--listen", "not-an-address"]);
    assert!(!ok);
    assert!(err.contains("inject.listen"), "{err}");
    // --help documents every flag of run.
    let (ok, out, _) = sluice(&["run", "--help"]);
    assert!(ok);
    for flag in [
        "--config",
        "--listen",
        "--route",
        "--spool",
        "--cores",
        "--shard-port-base",
    ] {
        assert!(out.contains(flag), "run --help lacks {flag}:\n{out}");
    }
    let (ok, out, _) = sluice(&["--version"]);
    assert!(ok && out.starts_with("sluice "), "{out}");
}

/// Mounts a tmpfs of `bytes` at `dir` (needs root or CAP_SYS_ADMIN); the
/// guard unmounts it.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, bytes: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).ok()?;
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| Tmpfs(dir.to_path_buf()))
    }

    fn resize(&self, bytes: u64) -> bool {
        Command::new("mount")
            .args(["-o", &format!("remount,size={bytes}")])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_answers_452_and_never_acknowledges_an_unsaved_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool_dir = dir.path().join("small");
    // Room for three 1 MiB segments and a little more: the head, the spare,
    // and one rotation.
    let Some(fs) = Tmpfs::mount(&spool_dir, (3 << 20) + (256 << 10)) else {
        eprintln!("SKIPPED: mounting a tmpfs needs root (CAP_SYS_ADMIN); run the suite as root to cover disk-full");
        return;
    };
    let port = free_port().expect("port");
    let text = format!(
        "hostname = \"sluice.test\"\ncores = [0]\n[inject]\nlisten = \"127.0.0.1:{port}\"\n\
         message_size_max = \"256KiB\"\n[spool]\ndir = \"{}\"\nsegment_size = \"1MiB\"\n\
         [[route]]\npattern = \"*\"\nhosts = [\"127.0.0.1:{}\"]\n",
        spool_dir.join("spool").display(),
        dead_port()
    );
    let cfg = write_config(dir.path(), &text);
    let mut first = start(dir.path(), &cfg, loopback(port), "full");
    let mut c = Client::greet(loopback(port));
    let body = format!(
        "Subject: filler\r\n\r\n{}",
        ("y".repeat(998) + "\r\n").repeat(150)
    );
    let (mut acked, mut full) = (0u64, 0u64);
    for _ in 0..40 {
        c.send(b"MAIL FROM:<s@src.test>\r\n");
        let r = c.reply();
        if r.code == 452 {
            assert!(r.text.starts_with("4.3.1"), "{r:?}");
            full += 1;
            continue;
        }
        assert_eq!(r.code, 250, "{r:?}");
        c.send(format!("RCPT TO:<r@x.test>\r\nBDAT {} LAST\r\n{body}", body.len()).as_bytes());
        c.expect(250);
        let r = c.reply();
        match r.code {
            250 => acked += 1,
            452 => {
                assert!(r.text.starts_with("4.3.1"), "{r:?}");
                full += 1;
            }
            _ => panic!("unexpected {r:?}"),
        }
    }
    assert!(
        full > 0,
        "the small file system filled up ({acked} accepted)"
    );
    assert!(acked > 0);
    let status = first.process.stop(TIMEOUT).expect("stop");
    assert!(status.success(), "{status:?}");
    // Space returns; the restart finds every acknowledged message in the
    // spool and nothing else. (Recovery starts a fresh head segment, so it
    // needs room for one: on a still-full disk the shard refuses to start.)
    assert!(fs.resize(8 << 20), "remount with more space");
    let mut second = start(dir.path(), &cfg, loopback(port), "full-again");
    // With room again, injection accepts mail.
    let mut c = Client::greet(loopback(port));
    c.send(b"MAIL FROM:<s@src.test>\r\nRCPT TO:<r@x.test>\r\nBDAT 7 LAST\r\nagain\r\n");
    c.expect(250);
    c.expect(250);
    let r = c.expect(250);
    assert!(r.text.ends_with(" queued"), "{r:?}");
    let status = second.process.stop(TIMEOUT).expect("stop");
    assert!(status.success(), "{status:?}");
    assert_eq!(stop_summary(&second), (1, acked));
}
