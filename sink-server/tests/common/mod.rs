//! Shared helpers: an in-process sink on 127.0.0.1 and a tiny blocking
//! SMTP client written for the tests (std sockets, no SMTP library).
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;
use sluice_sink::profile::{parse_toml, Overrides, Profile};
use sluice_sink::stats::Shared;
use sluice_sink::tls::TlsMaterial;
use sluice_sink::{Outputs, Sink, SinkConfig};

/// Every socket operation in the tests gives up after this long.
pub const IO_TIMEOUT: Duration = Duration::from_secs(15);

/// A sink running in this process.
pub struct Running {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    handle: JoinHandle<io::Result<Value>>,
}

/// A loopback config on an ephemeral port with one shard and TLS.
pub fn config() -> SinkConfig {
    let mut cfg = SinkConfig::local(0);
    cfg.tls = Some(TlsMaterial::self_signed(&["localhost".into()]).expect("self-signed cert"));
    cfg
}

/// A config whose profile is the given TOML.
pub fn config_with_profile(toml: &str) -> SinkConfig {
    let mut cfg = config();
    let raw = parse_toml(toml, "test").expect("test profile parses");
    cfg.profile = Profile::build(raw, &Overrides::default()).expect("test profile is valid");
    cfg
}

/// Starts `cfg` with the given outputs.
pub fn start_with(cfg: SinkConfig, outputs: Outputs) -> Running {
    let sink = Sink::start(cfg).expect("sink starts");
    let addr = sink.local_addr();
    let shared = sink.shared().clone();
    let handle = std::thread::spawn(move || sink.run(&outputs));
    Running {
        addr,
        shared,
        handle,
    }
}

/// Starts `cfg` with no periodic outputs.
pub fn start(cfg: SinkConfig) -> Running {
    start_with(cfg, Outputs::default())
}

impl Running {
    /// Stops the sink and returns its final summary.
    pub fn stop(self) -> Value {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .expect("reporting thread did not panic")
            .expect("outputs written")
    }

    /// Connects a plain client and reads the greeting.
    pub fn client(&self) -> Client<TcpStream> {
        let mut c = Client::connect(self.addr);
        let (code, _) = c.reply();
        assert_eq!(code, 220, "greeting");
        c
    }
}

/// A blocking SMTP client over any byte stream.
pub struct Client<S: Read + Write> {
    pub stream: S,
    buf: Vec<u8>,
}

impl Client<TcpStream> {
    /// Connects without reading anything.
    pub fn connect(addr: SocketAddr) -> Client<TcpStream> {
        let stream = TcpStream::connect(addr).expect("connect to the sink");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }
}

impl<S: Read + Write> Client<S> {
    /// Wraps an established stream (e.g. TLS) keeping unread bytes empty.
    pub fn over(stream: S) -> Client<S> {
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the sink");
        self.stream.flush().expect("flush");
    }

    /// Reads one reply: `(code, text of all lines)`. Code 0: connection closed.
    pub fn reply(&mut self) -> (u16, String) {
        let mut text = String::new();
        loop {
            let line = match self.line() {
                Some(l) => l,
                None => return (0, text),
            };
            assert!(line.len() >= 3, "short reply line {line:?}");
            let code: u16 = line[..3].parse().expect("reply code");
            text.push_str(&line[3.min(line.len())..]);
            text.push('\n');
            if line.len() == 3 || line.as_bytes()[3] == b' ' {
                return (code, text);
            }
        }
    }

    /// Sends a command line and reads its reply.
    pub fn cmd(&mut self, line: &str) -> (u16, String) {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// Whether the server closed the connection (EOF or reset) with no more
    /// bytes pending.
    pub fn is_closed(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0) | Err(_))
    }

    fn line(&mut self) -> Option<String> {
        loop {
            if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..p]).into_owned();
                self.buf.drain(..p + 2);
                return Some(line);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read from the sink: {e}"),
            }
        }
    }
}

/// A message with the given id header and injection time (now).
pub fn message(id: &str) -> String {
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "From: t@client.test\r\nX-Sluice-Id: {id}\r\nX-Sluice-Injected: {now_ns}\r\n\
         Subject: test\r\n\r\nHello.\r\n"
    )
}

/// Dot-stuffs and terminates a body for DATA (RFC 5321 §4.5.2).
pub fn data_payload(body: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for line in body.split_inclusive("\r\n") {
        if line.starts_with('.') {
            out.push(b'.');
        }
        out.extend_from_slice(line.as_bytes());
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Sends one message with DATA, not pipelined; returns the final code.
pub fn send_one<S: Read + Write>(c: &mut Client<S>, rcpts: &[&str], body: &str) -> u16 {
    let (code, _) = c.cmd("MAIL FROM:<t@client.test>");
    if code != 250 {
        return code;
    }
    for r in rcpts {
        let (code, _) = c.cmd(&format!("RCPT TO:<{r}>"));
        if code != 250 {
            return code;
        }
    }
    let (code, _) = c.cmd("DATA");
    if code != 354 {
        return code;
    }
    c.send(&data_payload(body));
    c.reply().0
}

/// `summary[key]` as u64 (0 when absent).
pub fn n(v: &Value, path: &[&str]) -> u64 {
    let mut cur = v;
    for k in path {
        cur = &cur[*k];
    }
    cur.as_u64().unwrap_or(0)
}
