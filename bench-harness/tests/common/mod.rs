//! A tiny blocking SMTP server for the harness tests (std threads, 127.0.0.1).
//!
//! It is deliberately independent of `sluice-smtp`, so the tests check the
//! harness against a second reading of the protocol. It counts exactly what it
//! accepted, can delay the reply to the end of data, can answer every message
//! with a fixed code, and offers PIPELINING, CHUNKING, STARTTLS and AUTH PLAIN
//! on request.

#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// What the server offers and how it answers.
#[derive(Clone, Debug)]
pub struct ServerOpts {
    pub pipelining: bool,
    pub chunking: bool,
    pub starttls: bool,
    pub auth: Option<(String, String)>,
    /// Delay before the reply to the end of each message.
    pub data_delay: Duration,
    /// Reply code to the end of each message (250, or e.g. 554 for a storm).
    pub data_code: u16,
    /// Write a sink-style summary (`{"messages": n}`) here after each message.
    pub summary: Option<PathBuf>,
    /// Accept TCP but never send the greeting.
    pub silent: bool,
    /// Close the connection (no reply) at the MAIL after this many messages on it.
    pub drop_after: Option<u64>,
    /// Wait this long after accepting before the greeting.
    pub greet_delay: Duration,
}

impl Default for ServerOpts {
    fn default() -> Self {
        ServerOpts {
            pipelining: true,
            chunking: false,
            starttls: false,
            auth: None,
            data_delay: Duration::ZERO,
            data_code: 250,
            summary: None,
            silent: false,
            drop_after: None,
            greet_delay: Duration::ZERO,
        }
    }
}

/// Counters, read by the tests.
#[derive(Debug, Default)]
pub struct Counts {
    pub connections: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub recipients: AtomicU64,
    pub bytes: AtomicU64,
    pub bdat: AtomicU64,
    pub tls: AtomicU64,
    pub auth_ok: AtomicU64,
    pub injected_headers: AtomicU64,
    /// When each MAIL command arrived.
    pub mail_times: Mutex<Vec<Instant>>,
    /// Domain of every RCPT.
    pub rcpt_domains: Mutex<Vec<String>>,
    /// (X-Sluice-Id, X-Sluice-Injected) of every accepted message.
    pub ids: Mutex<Vec<(String, u64)>>,
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub counts: Arc<Counts>,
    pub cert_pem: String,
    stop: Arc<AtomicBool>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl TestServer {
    pub fn start(opts: ServerOpts) -> TestServer {
        Self::start_on(TcpListener::bind("127.0.0.1:0").unwrap(), opts)
    }

    pub fn start_on(listener: TcpListener, opts: ServerOpts) -> TestServer {
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert_pem = cert.cert.pem();
        let tls = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into()),
            )
            .unwrap(),
        );
        let (c, s) = (counts.clone(), stop.clone());
        thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        stream
                            .set_read_timeout(Some(Duration::from_secs(30)))
                            .unwrap();
                        c.connections.fetch_add(1, Ordering::Relaxed);
                        let (c, o, t) = (c.clone(), opts.clone(), tls.clone());
                        thread::spawn(move || {
                            let _ = serve(stream, &o, &c, t);
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(2))
                    }
                    Err(_) => break,
                }
            }
        });
        TestServer {
            addr,
            counts,
            cert_pem,
            stop,
        }
    }

    pub fn get(&self, f: impl Fn(&Counts) -> &AtomicU64) -> u64 {
        f(&self.counts).load(Ordering::Relaxed)
    }
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

fn serve(
    stream: TcpStream,
    opts: &ServerOpts,
    counts: &Counts,
    tls: Arc<rustls::ServerConfig>,
) -> io::Result<()> {
    if opts.silent {
        // Hold the connection open, say nothing, until the client gives up.
        let mut sink = [0u8; 1024];
        let mut stream = stream;
        while stream.read(&mut sink)? > 0 {}
        return Ok(());
    }
    std::thread::sleep(opts.greet_delay);
    let mut conn: BufReader<Box<dyn Stream>> = BufReader::new(Box::new(stream));
    conn.get_mut()
        .write_all(b"220 test.invalid ESMTP ready\r\n")?;
    let mut accepted_here = 0u64;
    let mut in_tls = false;
    let mut line = Vec::new();
    let mut rcpts = 0u32;
    loop {
        line.clear();
        if conn.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        let verb = text.split(' ').next().unwrap_or("").to_ascii_uppercase();
        let reply: Vec<u8> = match verb.as_str() {
            "EHLO" => {
                let mut r = String::from("250-test.invalid\r\n");
                if opts.pipelining {
                    r.push_str("250-PIPELINING\r\n");
                }
                if opts.chunking {
                    r.push_str("250-CHUNKING\r\n");
                }
                if opts.starttls && !in_tls {
                    r.push_str("250-STARTTLS\r\n");
                }
                if opts.auth.is_some() {
                    r.push_str("250-AUTH PLAIN\r\n");
                }
                r.push_str("250 8BITMIME\r\n");
                r.into_bytes()
            }
            "HELO" => b"250 test.invalid\r\n".to_vec(),
            "STARTTLS" if opts.starttls && !in_tls => {
                conn.get_mut().write_all(b"220 2.0.0 go ahead\r\n")?;
                let inner = conn.into_inner();
                // Only a TcpStream before TLS; re-box it inside rustls.
                let server = rustls::ServerConnection::new(tls.clone()).unwrap();
                let tls_stream = rustls::StreamOwned::new(server, inner);
                conn = BufReader::new(Box::new(tls_stream));
                in_tls = true;
                counts.tls.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            "AUTH" => {
                let (user, pass) = opts.auth.clone().unwrap_or_default();
                let expected = base64(format!("\0{user}\0{pass}").as_bytes());
                let given = text.split(' ').nth(2).unwrap_or("");
                if given == expected {
                    counts.auth_ok.fetch_add(1, Ordering::Relaxed);
                    b"235 2.7.0 ok\r\n".to_vec()
                } else {
                    b"535 5.7.8 bad credentials\r\n".to_vec()
                }
            }
            "MAIL" => {
                if opts.drop_after.is_some_and(|n| accepted_here >= n) {
                    return Ok(());
                }
                counts.mail_times.lock().unwrap().push(Instant::now());
                rcpts = 0;
                b"250 2.1.0 ok\r\n".to_vec()
            }
            "RCPT" => {
                if let Some(domain) = text.split('@').nth(1) {
                    let domain = domain.trim_end_matches('>').split('>').next().unwrap_or("");
                    counts.rcpt_domains.lock().unwrap().push(domain.to_string());
                }
                rcpts += 1;
                b"250 2.1.5 ok\r\n".to_vec()
            }
            "DATA" => {
                conn.get_mut().write_all(b"354 go\r\n")?;
                let mut body = Vec::new();
                loop {
                    let start = body.len();
                    if conn.read_until(b'\n', &mut body)? == 0 {
                        return Ok(());
                    }
                    if &body[start..] == b".\r\n" {
                        body.truncate(start);
                        break;
                    }
                }
                accepted_here += 1;
                end_of_message(&body, rcpts, opts, counts)
            }
            "BDAT" => {
                let mut parts = text.split(' ').skip(1);
                let n: usize = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                let last = parts.next().is_some_and(|l| l.eq_ignore_ascii_case("LAST"));
                let mut body = vec![0; n];
                conn.read_exact(&mut body)?;
                counts.bdat.fetch_add(1, Ordering::Relaxed);
                if last {
                    accepted_here += 1;
                    end_of_message(&body, rcpts, opts, counts)
                } else {
                    b"250 2.0.0 chunk ok\r\n".to_vec()
                }
            }
            "RSET" | "NOOP" => b"250 2.0.0 ok\r\n".to_vec(),
            "QUIT" => {
                conn.get_mut().write_all(b"221 2.0.0 bye\r\n")?;
                return Ok(());
            }
            _ => b"500 5.5.2 unknown\r\n".to_vec(),
        };
        conn.get_mut().write_all(&reply)?;
        conn.get_mut().flush()?;
    }
}

fn end_of_message(body: &[u8], rcpts: u32, opts: &ServerOpts, counts: &Counts) -> Vec<u8> {
    if !opts.data_delay.is_zero() {
        thread::sleep(opts.data_delay);
    }
    if memchr_find(body, b"X-Sluice-Injected: ") {
        counts.injected_headers.fetch_add(1, Ordering::Relaxed);
    }
    if opts.data_code == 250 {
        let text = String::from_utf8_lossy(body);
        let header = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        if let Some(id) = header("X-Sluice-Id: ") {
            let injected = header("X-Sluice-Injected: ")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            counts.ids.lock().unwrap().push((id, injected));
        }
        let n = counts.accepted.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(path) = &opts.summary {
            static SUMMARY_LOCK: Mutex<()> = Mutex::new(());
            let _guard = SUMMARY_LOCK.lock().unwrap();
            let n = counts.accepted.load(Ordering::Relaxed).max(n);
            let tmp = path.with_extension("tmp");
            std::fs::write(
                &tmp,
                format!("{{\"messages\": {n}, \"latency_ms\": {{\"p50\": 1.0}}}}"),
            )
            .unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
        counts
            .recipients
            .fetch_add(u64::from(rcpts), Ordering::Relaxed);
        counts.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
        b"250 2.0.0 queued\r\n".to_vec()
    } else {
        counts.rejected.fetch_add(1, Ordering::Relaxed);
        format!("{} 5.7.1 rejected by test server\r\n", opts.data_code).into_bytes()
    }
}

fn memchr_find(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

pub fn base64(input: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A port on 127.0.0.1 with nothing listening (bound, then released).
pub fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Two listeners on consecutive ports of 127.0.0.1.
pub fn consecutive_listeners() -> (TcpListener, TcpListener) {
    for _ in 0..200 {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if port == u16::MAX {
            continue;
        }
        if let Ok(b) = TcpListener::bind(("127.0.0.1", port + 1)) {
            return (a, b);
        }
    }
    panic!("no two consecutive free ports on 127.0.0.1");
}
