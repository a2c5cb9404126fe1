//! Test harness: the scripted DNS server (`tests/dns_server.py`, Python
//! dnslib) on a free loopback port, a hand-driven clock and a glommio
//! executor per test.

use std::cell::Cell;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use sluice_dns::{AddressPolicy, Clock, MxConfig, ResolverConfig};

/// The DNS server process; killed on drop.
pub struct DnsServer {
    child: Child,
    pub addr: SocketAddr,
}

fn ensure_dnslib() {
    let ok = Command::new("python3")
        .args(["-c", "import dnslib"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        let installed = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "dnslib"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            installed,
            "python3 with dnslib is required (python3 -m pip install dnslib)"
        );
    }
}

impl DnsServer {
    pub fn start() -> Self {
        ensure_dnslib();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/dns_server.py");
        let mut child = Command::new("python3")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start python3 tests/dns_server.py");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the server's port");
        let port: u16 = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected server output {line:?}"));
        DnsServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// A control value from the server (`<what>.control` TXT), asked with
    /// a blocking socket.
    pub fn control(&self, what: &str) -> u64 {
        let mut message = Message::new(4242, MessageType::Query, OpCode::Query);
        let name = Name::from_str(&format!("{what}.control.")).unwrap();
        message.add_query(Query::query(name, RecordType::TXT));
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        socket
            .send_to(&message.to_vec().unwrap(), self.addr)
            .unwrap();
        let mut buf = [0u8; 2048];
        // glommio's executors signal threads; a blocking call here can
        // see EINTR and must simply be repeated.
        let n = loop {
            match socket.recv(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other.expect("control answer"),
            }
        };
        let reply = Message::from_vec(&buf[..n]).unwrap();
        let txt = reply
            .answers
            .iter()
            .find_map(|r| match &r.data {
                RData::TXT(txt) => Some(txt.to_string()),
                _ => None,
            })
            .expect("TXT answer");
        txt.trim_matches('"').parse().expect("a number")
    }

    /// Queries the server has seen for `name` (any type).
    pub fn count(&self, name: &str) -> u64 {
        self.control(&format!("{name}.count"))
    }

    /// Queries the server has seen for `name` over TCP.
    pub fn tcp_count(&self, name: &str) -> u64 {
        self.control(&format!("{name}.tcpcount"))
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A clock the test advances.
pub struct ManualClock(Cell<Instant>);

impl ManualClock {
    pub fn new() -> Self {
        ManualClock(Cell::new(Instant::now()))
    }

    pub fn advance(&self, by: Duration) {
        self.0.set(self.0.get() + by);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.0.get()
    }
}

/// Resolver settings for tests: the given servers, 1 s per try, two
/// rounds, loopback allowed.
pub fn config(nameservers: Vec<SocketAddr>) -> ResolverConfig {
    ResolverConfig {
        nameservers,
        timeout: Duration::from_secs(1),
        attempts: 2,
        rotate: false,
        outstanding_max: 64,
        cache: Default::default(),
        mx: MxConfig {
            policy: AddressPolicy::allow_loopback(),
            ..MxConfig::default()
        },
    }
}

/// Runs `f` on a fresh glommio executor (small io_memory: memlock is
/// 8 MiB on the development machines).
pub fn run<Fut: Future>(fut: Fut) -> Fut::Output {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .make()
        .expect("build executor")
        .run(fut)
}
