//! Injection: the SMTP listener side of a shard.
//!
//! A shard accepts on its member of the shared SO_REUSEPORT listener and,
//! when `shard_port_base` is set, on its own port. Each connection is
//! admitted or refused at once ([`Injector::admit`]: shutting down, spool
//! poisoned, too many connections on the shard or from the address, all
//! `421`), then served by a thin glommio driver around `sluice-smtp`'s
//! [`ServerSession`] (see `conn`): the session makes every protocol
//! decision, the driver answers MAIL, RCPT and end-of-message tokens from
//! policy (relay networks, disk room, spool results).
//!
//! # The path of a message
//! Body bytes are appended to a per-connection buffer (reused for every
//! message of the connection, bounded by `message_size_max` because the
//! session refuses larger messages while they stream) behind the
//! `Received:` header. At the end of data the record is appended to the
//! shard's spool (one copy, into the mapping) and a task awaits the group
//! commit covering it, while the session goes on parsing pipelined
//! commands. When the commit completes the task fills the message's reply
//! token with `250 2.0.0 s<shard>.<id> queued` and only then hands the
//! message to the shard's queues, so nothing unacknowledged is ever
//! delivered; a spool fault answers `451 4.3.0` (disk full: `452 4.3.1`)
//! and never `250`. Replies leave in command order (RFC 2920 §3.1).

pub mod auth;
mod conn;
pub mod envelope;
pub mod recovering;
pub mod security;
pub mod tenant;
pub mod vmta;

// std
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

// external
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use sluice_smtp::server::ServerConfig;
use sluice_smtp::{Extensions, Reply, ReplyCode};
use sluice_spool::SpoolError;

// crate
use crate::config::Config;
use crate::queue::Queues;
use crate::runtime::{ShardSpool, Shutdown};

/// Bytes of the per-connection read buffer.
pub const READ_BYTES: usize = 32 << 10;
/// Bytes reserved for queued replies per connection.
pub const OUTPUT_BYTES: usize = 4 << 10;
/// Body buffer allocated when a connection starts (typical messages fit).
pub const BODY_INITIAL_BYTES: usize = 64 << 10;
/// Body buffer capacity kept between messages; a larger message's buffer is
/// shrunk back after it, so idle connections hold little memory.
pub const BODY_KEEP_BYTES: usize = 256 << 10;
const _: () = assert!(BODY_INITIAL_BYTES <= BODY_KEEP_BYTES);
/// Time a DATA/BDAT transfer gets before the minimum rate applies.
pub const DATA_RATE_GRACE: Duration = Duration::from_secs(5);
/// Longest a refused client is read from (to let it see the `421`).
const REFUSE_DRAIN: Duration = Duration::from_millis(500);

/// The shard's injection state, shared by its accept loops and
/// connections (single-threaded).
pub struct Injector {
    /// Shard index.
    pub shard: u32,
    /// Validated configuration.
    pub config: Rc<Config>,
    /// The session configuration every connection shares.
    pub smtp: Rc<ServerConfig>,
    /// The shard's spool.
    pub spool: ShardSpool,
    /// The shard's queues (fed after each commit).
    pub queues: Rc<RefCell<Queues>>,
    /// Set when the shard stops.
    pub shutdown: Shutdown,
    /// Messages expire this long after arrival.
    pub expiry_after: Duration,
    /// Recipients queued on the shard above which MAIL gets `452 4.3.1`.
    pub queued_recipients_max: usize,
    /// DKIM signer (keys configured), called once per message before the
    /// spool append (`crate::sign`).
    pub signer: Option<crate::sign::ShardSigner>,
    open: Cell<u32>,
    per_ip: RefCell<HashMap<IpAddr, u32>>,
    commits_in_flight: Cell<u32>,
    poison_logged: Cell<bool>,
    stats: RefCell<InjectStats>,
    /// Failed AUTH attempts per client address.
    pub(crate) auth_throttle: RefCell<auth::Throttle>,
    /// Unknown tenant names already said on stderr (bounded).
    unknown_said: RefCell<std::collections::HashSet<Vec<u8>>>,
}

/// Unknown tenant names a shard says once each on stderr, at most.
const UNKNOWN_TENANTS_SAID_MAX: usize = 256;

/// Counters of one shard's injection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InjectStats {
    /// Connections served.
    pub connections: u64,
    /// Connections refused at connect.
    pub refused: u64,
    /// Messages acknowledged with `250` (durable and queued).
    pub accepted: u64,
    /// Messages answered `4xx`/`5xx` by injection (spool faults, no room).
    pub failed: u64,
    /// Messages whose tenant header named a tenant without a
    /// `[tenants.NAME]` table (accepted as a free label).
    pub unknown_tenants: u64,
}

/// What to do with a new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Serve it.
    Serve,
    /// Answer this `421` and close.
    Refuse(Reply),
}

/// The session configuration for injection: PIPELINING, CHUNKING,
/// 8BITMIME, SMTPUTF8, SIZE, ENHANCEDSTATUSCODES and DSN, with the
/// configured size and recipient limits.
pub fn session_config(config: &Config) -> ServerConfig {
    let mut sc = ServerConfig::new(config.hostname.clone());
    sc.extensions = Extensions::PIPELINING
        | Extensions::CHUNKING
        | Extensions::EIGHT_BIT_MIME
        | Extensions::SMTPUTF8
        | Extensions::SIZE
        | Extensions::ENHANCED_STATUS_CODES
        | Extensions::DSN;
    sc.message_bytes_max = config.message_bytes_max;
    sc.recipients_max = config.recipients_max as usize;
    // RFC 3207: STARTTLS only with a certificate; RFC 4954 AUTH only with
    // users, and the session hides it until TLS is up.
    if config.inject_security.tls.is_some() {
        sc.extensions |= Extensions::STARTTLS;
    }
    if config.inject_security.users.is_some() {
        sc.extensions |= Extensions::AUTH;
        sc.auth_mechanisms = String::from("PLAIN LOGIN");
        sc.auth_requires_tls = true;
    }
    sc
}

/// The reply for a failed append or commit (RFC 5321 §4.2.2, RFC 3463).
pub fn spool_error_reply(e: &SpoolError) -> Reply {
    match e {
        SpoolError::DiskFull { .. } => Reply::fixed(452, (4, 3, 1), "Insufficient system storage"),
        SpoolError::TooLarge { .. } => Reply::fixed(
            552,
            (5, 3, 4),
            "Message size exceeds fixed maximum message size",
        ),
        _ => Reply::fixed(451, (4, 3, 0), "Local error in processing: spool fault"),
    }
}

/// `421 4.3.0` naming why the spool refuses (CR/LF-free).
pub fn poisoned_reply(reason: &str) -> Reply {
    let clean: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    Reply::new(
        ReplyCode::SERVICE_UNAVAILABLE,
        sluice_smtp::EnhancedCode::new(4, 3, 0).unwrap_or(sluice_smtp::EnhancedCode::OK),
        format!("Spool failure, not accepting mail: {clean}"),
    )
}

impl Injector {
    /// The shard's injection state.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shard: u32,
        config: Rc<Config>,
        spool: ShardSpool,
        queues: Rc<RefCell<Queues>>,
        shutdown: Shutdown,
        expiry_after: Duration,
        queued_recipients_max: usize,
    ) -> Rc<Injector> {
        Rc::new(Injector {
            shard,
            smtp: Rc::new(session_config(&config)),
            signer: crate::sign::ShardSigner::new(&config.dkim),
            config,
            spool,
            queues,
            shutdown,
            expiry_after,
            queued_recipients_max,
            open: Cell::new(0),
            per_ip: RefCell::new(HashMap::new()),
            commits_in_flight: Cell::new(0),
            poison_logged: Cell::new(false),
            stats: RefCell::new(InjectStats::default()),
            auth_throttle: RefCell::new(auth::Throttle::default()),
            unknown_said: RefCell::new(std::collections::HashSet::new()),
        })
    }

    /// Connections being served.
    pub fn open_connections(&self) -> u32 {
        self.open.get()
    }

    /// Appended messages whose commit has not resolved yet.
    pub fn commits_in_flight(&self) -> u32 {
        self.commits_in_flight.get()
    }

    /// Counters so far.
    pub fn stats(&self) -> InjectStats {
        self.stats.borrow().clone()
    }

    /// Decides about a new connection from `ip` (RFC 5321 §3.1: a server
    /// that will not serve answers `421` and closes).
    pub fn admit(&self, ip: IpAddr) -> Admission {
        if self.shutdown.is_set() {
            return Admission::Refuse(Reply::fixed(421, (4, 3, 2), "Service shutting down"));
        }
        if let Some(reason) = self.spool.poisoned() {
            self.log_poisoned(&reason);
            return Admission::Refuse(poisoned_reply(&reason));
        }
        if self.open.get() >= self.config.connections_max {
            return Admission::Refuse(Reply::fixed(
                421,
                (4, 7, 0),
                "Too many connections, try again later",
            ));
        }
        let per_ip = self.per_ip.borrow().get(&ip).copied().unwrap_or(0);
        if per_ip >= self.config.connections_per_ip_max {
            return Admission::Refuse(Reply::fixed(
                421,
                (4, 7, 0),
                "Too many connections from your address",
            ));
        }
        Admission::Serve
    }

    /// Counts a message whose tenant has no `[tenants.NAME]` table, and
    /// says the name once (the first [`UNKNOWN_TENANTS_SAID_MAX`] names).
    pub fn unknown_tenant(&self, tenant: &[u8]) {
        self.stats.borrow_mut().unknown_tenants += 1;
        let mut said = self.unknown_said.borrow_mut();
        if said.len() < UNKNOWN_TENANTS_SAID_MAX && said.insert(tenant.to_vec()) {
            log::info!(
                "shard {}: tenant `{}` has no [tenants] table; accepted as a free label{}",
                self.shard,
                String::from_utf8_lossy(tenant),
                if said.len() == UNKNOWN_TENANTS_SAID_MAX {
                    " (further unknown tenants are counted, not said)"
                } else {
                    ""
                }
            );
        }
    }

    /// Logs, once per shard, that the spool stopped accepting and why.
    pub fn log_poisoned(&self, reason: &str) {
        if !self.poison_logged.replace(true) {
            log::error!(
                "shard {}: spool failed, the shard accepts no more mail (restart it to recover): {reason}",
                self.shard
            );
        }
    }

    fn connection_opened(&self, ip: IpAddr) {
        self.open.set(self.open.get() + 1);
        *self.per_ip.borrow_mut().entry(ip).or_insert(0) += 1;
        self.stats.borrow_mut().connections += 1;
    }

    fn connection_closed(&self, ip: IpAddr) {
        assert!(self.open.get() > 0, "connection count underflow");
        self.open.set(self.open.get() - 1);
        let mut map = self.per_ip.borrow_mut();
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }
}

/// Accepts on `listener` until shutdown, spawning one task per connection.
pub async fn accept_loop(inj: Rc<Injector>, listener: TcpListener) {
    accept_loop_with(inj, listener, false).await
}

/// Binds this shard's member of the implicit-TLS listener (SO_REUSEPORT,
/// like the shared port) and starts accepting on it, when configured.
pub fn implicit_tls_acceptor(inj: &Rc<Injector>) -> Result<Option<glommio::Task<()>>, String> {
    let Some(addr) = inj.config.inject_security.implicit_tls_listen else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr)
        .map_err(|e| format!("cannot listen on {addr} (inject.implicit_tls_listen): {e}"))?;
    Ok(Some(glommio::spawn_local(accept_loop_with(
        Rc::clone(inj),
        listener,
        true,
    ))))
}

async fn accept_loop_with(inj: Rc<Injector>, listener: TcpListener, implicit_tls: bool) {
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            inj.shutdown.wait().await;
            None
        })
        .await;
        let stream = match accepted {
            None => return,
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                // EMFILE/ENFILE and friends: back off instead of spinning.
                log::warn!("shard {}: accept failed: {e}", inj.shard);
                glommio::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let peer = match stream.peer_addr() {
            Ok(p) => p,
            // The client is already gone.
            Err(_) => continue,
        };
        match inj.admit(peer.ip()) {
            Admission::Serve => {
                glommio::spawn_local(serve(Rc::clone(&inj), stream, peer, implicit_tls)).detach();
            }
            Admission::Refuse(reply) => {
                inj.stats.borrow_mut().refused += 1;
                glommio::spawn_local(refuse(stream, reply)).detach();
            }
        }
    }
}

/// Counts the connection for its lifetime (also when its task is dropped).
struct Slot {
    inj: Rc<Injector>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.inj.connection_closed(self.ip);
    }
}

async fn serve(inj: Rc<Injector>, mut stream: TcpStream, peer: SocketAddr, implicit_tls: bool) {
    inj.connection_opened(peer.ip());
    let _slot = Slot {
        inj: Rc::clone(&inj),
        ip: peer.ip(),
    };
    let _ = stream.set_nodelay(true);
    let mut conn = conn::Conn::new(&inj, peer);
    if let Err(e) = conn.run(&inj, &mut stream, implicit_tls).await {
        log::debug!("shard {}: connection from {peer}: {e}", inj.shard);
    }
    conn.close_tls(&mut stream).await;
    let _ = stream.close().await;
}

/// Writes `reply`, lets the client read it, closes.
async fn refuse(mut stream: TcpStream, reply: Reply) {
    let mut out = Vec::with_capacity(128);
    reply.encode(true, &mut out);
    let _ = stream.set_write_timeout(Some(REFUSE_DRAIN));
    if stream.write_all(&out).await.is_err() {
        return;
    }
    let _ = stream.shutdown(std::net::Shutdown::Write).await;
    // Closing with unread input would reset the connection and could
    // destroy the reply before the client reads it: drain briefly.
    let _ = stream.set_read_timeout(Some(REFUSE_DRAIN));
    let mut sink = [0u8; 512];
    for _ in 0..16 {
        match stream.read(&mut sink).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let _ = stream.close().await;
}

/// Result of a commit task: the reply for the token, and the error if any.
pub(crate) fn commit_outcome(
    r: Result<(), SpoolError>,
    shard: u32,
    id: u64,
) -> Result<Reply, (Reply, SpoolError)> {
    match r {
        Ok(()) => Ok(Reply::new(
            ReplyCode::OK,
            sluice_smtp::EnhancedCode::OK,
            format!("s{shard}.{id} queued"),
        )),
        Err(e) => Err((spool_error_reply(&e), e)),
    }
}

impl Injector {
    /// Bookkeeping around a commit task.
    pub(crate) fn commit_started(&self) {
        self.commits_in_flight.set(self.commits_in_flight.get() + 1);
    }

    pub(crate) fn commit_finished(&self, ok: bool) {
        assert!(self.commits_in_flight.get() > 0, "commit count underflow");
        self.commits_in_flight.set(self.commits_in_flight.get() - 1);
        let mut s = self.stats.borrow_mut();
        if ok {
            s.accepted += 1;
        } else {
            s.failed += 1;
        }
    }

    pub(crate) fn message_failed(&self) {
        self.stats.borrow_mut().failed += 1;
    }
}

/// An I/O error meaning the peer went away (not worth a log line).
pub(crate) fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::UnexpectedEof
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{QueueConfig, Sites};
    use sluice_spool::fs::FsStorage;
    use sluice_spool::SpoolConfig;

    fn with_injector(config_text: &str, f: impl FnOnce(Rc<Injector>) + 'static) {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Rc::new(Config::parse("t.toml", config_text, None).expect("valid config"));
        let path = dir.path().to_path_buf();
        glommio::LocalExecutorBuilder::default()
            .io_memory(256 << 10)
            .make()
            .expect("executor")
            .run(async move {
                let storage = FsStorage::open(&path.join("spool"), 0).expect("storage");
                let cfg = SpoolConfig {
                    segment_bytes: 1 << 20,
                    ..SpoolConfig::default()
                };
                let (spool, _) = ShardSpool::open(storage, cfg).expect("spool");
                let queues = Rc::new(RefCell::new(Queues::new(
                    Sites::from_routes(&config.routes),
                    QueueConfig::default(),
                )));
                let inj = Injector::new(
                    0,
                    config,
                    spool,
                    queues,
                    Shutdown::new(),
                    Duration::from_secs(3600),
                    1000,
                );
                f(inj);
            });
    }

    fn refused_code(a: Admission) -> Option<(u16, String)> {
        match a {
            Admission::Serve => None,
            Admission::Refuse(r) => Some((r.code.value(), r.to_string_lossy())),
        }
    }

    trait Lossy {
        fn to_string_lossy(&self) -> String;
    }

    impl Lossy for Reply {
        fn to_string_lossy(&self) -> String {
            String::from_utf8_lossy(&self.to_bytes(true)).into_owned()
        }
    }

    #[test]
    fn admission_counts_per_shard_and_per_address() {
        let text = "[inject]\nconnections_max = 3\nconnections_per_ip_max = 2\n";
        with_injector(text, |inj| {
            let a: IpAddr = "127.0.0.1".parse().expect("ip");
            let b: IpAddr = "127.0.0.2".parse().expect("ip");
            assert_eq!(inj.admit(a), Admission::Serve);
            inj.connection_opened(a);
            inj.connection_opened(a);
            let (code, text) = refused_code(inj.admit(a)).expect("refused");
            assert_eq!(code, 421);
            assert!(text.starts_with("421 4.7.0"), "{text}");
            assert_eq!(inj.admit(b), Admission::Serve);
            inj.connection_opened(b);
            // The shard is full for everyone now.
            assert!(refused_code(inj.admit("10.0.0.1".parse().expect("ip"))).is_some());
            inj.connection_closed(a);
            inj.connection_closed(a);
            assert_eq!(inj.admit(a), Admission::Serve);
            assert_eq!(inj.open_connections(), 1);
            assert!(
                inj.per_ip.borrow().get(&a).is_none(),
                "no entry kept at zero"
            );
            // Shutting down: 421 4.3.2 for every new connection.
            inj.shutdown.trigger();
            let (_, text) = refused_code(inj.admit(b)).expect("refused");
            assert!(text.starts_with("421 4.3.2"), "{text}");
        });
    }

    #[test]
    fn spool_errors_map_to_temporary_or_permanent_replies_without_250() {
        let full = SpoolError::DiskFull {
            path: "x".into(),
            needed_bytes: 1,
        };
        assert_eq!(spool_error_reply(&full).code.value(), 452);
        let poisoned = SpoolError::Poisoned {
            reason: "fdatasync failed".into(),
        };
        let r = spool_error_reply(&poisoned);
        assert_eq!(r.code.value(), 451);
        assert_eq!(
            r.to_string_lossy(),
            "451 4.3.0 Local error in processing: spool fault\r\n"
        );
        let big = SpoolError::TooLarge {
            record_bytes: 2,
            max_bytes: 1,
        };
        assert_eq!(spool_error_reply(&big).code.value(), 552);
        assert!(commit_outcome(Err(SpoolError::Closed), 0, 1).is_err());
        let ok = commit_outcome(Ok(()), 3, 42).expect("250");
        assert_eq!(ok.to_string_lossy(), "250 2.0.0 s3.42 queued\r\n");
        // A reason with line breaks never splits the reply.
        let r = poisoned_reply("disk\r\n250 fake");
        let bytes = r.to_string_lossy();
        assert_eq!(bytes.matches("\r\n").count(), 1, "{bytes}");
        assert!(bytes.starts_with("421 4.3.0 "), "{bytes}");
    }

    #[test]
    fn the_session_advertises_what_injection_promises() {
        let c = Config::parse("t.toml", "[inject]\nmessage_size_max = \"10MiB\"\n", None)
            .expect("valid");
        let sc = session_config(&c);
        for e in [
            Extensions::PIPELINING,
            Extensions::CHUNKING,
            Extensions::EIGHT_BIT_MIME,
            Extensions::SMTPUTF8,
            Extensions::SIZE,
            Extensions::ENHANCED_STATUS_CODES,
            Extensions::DSN,
        ] {
            assert!(sc.extensions.contains(e), "{e:?}");
        }
        assert!(!sc.extensions.contains(Extensions::STARTTLS));
        assert!(!sc.extensions.contains(Extensions::AUTH));
        assert_eq!(sc.message_bytes_max, 10 << 20);
    }
}
