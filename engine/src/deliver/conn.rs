//! One outbound connection: a thin glommio loop around [`ClientSession`]:
//! take work → queue → write → settle events → read with the session's
//! timeout armed. Every protocol decision is the session's.

// std
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

// external
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::timer::Timer;
use sluice_shaping::config::TlsPolicy as ShapingTls;
use sluice_shaping::lease::Permit;
use sluice_shaping::Destination;
use sluice_smtp::client::{
    BodyEncoding, ClientConfig, ClientEvent, ClientSession, CloseCause, Envelope, Failure, Outcome,
    QueueError, Recipient, TimeoutClass, TlsPolicy,
};
use sluice_smtp::{DotStuffer, Notify, Reply, Ret};
use sluice_spool::fs::FsSegment;
use sluice_spool::Body;

// crate
use super::outcome::{self, Local, Said, Subject};
use super::source::Chosen;
use super::{
    connect_failed, connect_succeeded, connection_ended, now_unix_ms, source_available,
    source_waits, Shared,
};
use crate::inject::envelope::{parse_envelope_dsn, parse_recipient_dsn};
use crate::queue::{DestId, Entry, SiteId};
use crate::tls::{server_name, Tls, TlsInfo};

/// Read buffer per connection (allocated once, reused for every read).
const READ_BUFFER_BYTES: usize = 64 << 10;
/// Write buffer initial capacity (commands; bodies go straight from the
/// spool mapping).
const WRITE_BUFFER_BYTES: usize = 16 << 10;
/// Connect failures defer at most this many ready recipients per failure.
const CONNECT_FAIL_DEFER_MAX: usize = 100_000;
/// Source-bound shaping destinations a connection keeps (one per queue
/// destination it sent to; cleared when full).
const SHAPED_MAX: usize = 256;

/// A transaction queued in the session.
struct Txn {
    env_id: u64,
    dest: DestId,
    entries: Vec<Entry>,
    sender: String,
    recipients: Vec<String>,
    /// DSN parameters as injection stored them: per recipient NOTIFY and
    /// ORCPT, per message RET and ENVID (sent only when the server offers
    /// DSN; the session decides).
    dsn: Vec<(Option<Notify>, Option<String>)>,
    ret: Option<Ret>,
    envid: Option<String>,
    /// Which recipients have their outcome.
    settled: Vec<bool>,
    arrival_ms: u64,
    body: Body<FsSegment>,
}

/// Runs one connection of `site` to completion. Its pool slot was taken by
/// the driver; it is released here.
///
/// RFC 5321 §5.1: the site's hosts are tried in order until one gives a
/// session: the next one when a connect is refused or times out, and also
/// when the server refuses the session before it is ready (any non-`220`
/// greeting, `554` included as Postfix does, since another MX may well
/// accept; a `421` or a refused HELO; a greeting timeout; a close; a
/// required TLS that fails). Each host is tried at most once per
/// connection. Only when every host refused are recipients deferred, with
/// the last host's reply: one connection's worth after a refused session,
/// everything waiting (and a connect backoff) after refused connects.
///
/// A write that fails (the peer closed) first reads what the peer said
/// before closing, so a `250` followed by a `421` is not lost.
///
/// `source` is the source the driver chose for this connection (see
/// [`site_source`]; its permit was taken for that source's destination,
/// `shaped`, which the connection keeps using).
pub async fn run(
    shared: Rc<Shared>,
    site: SiteId,
    permit: Option<Permit>,
    source: Result<Option<Chosen>, String>,
    shaped: Option<(DestId, Destination)>,
) {
    let walked = match &source {
        Ok(chosen) => walk(&shared, site, chosen.as_ref(), shaped).await,
        Err(reason) => Err(Refusal::local(reason.clone())),
    };
    match walked {
        Ok(()) => {}
        Err(refusal) => {
            let now = now_unix_ms();
            shared.count(|c| c.connect_failures += 1);
            let chosen = source.as_ref().ok().and_then(Option::as_ref);
            if refusal.session {
                // The last host took the connection and refused the
                // session (often per connection: "too busy"): the work one
                // connection would have carried is deferred, as if sent,
                // and the next connection may open at once. No backoff:
                // each refusal consumes ready work, so a site refusing
                // every session is not retried in a tight loop.
                connect_succeeded(&shared, site);
                let bound = (
                    shared.settings.transactions_in_flight_max.max(1) as usize,
                    shared.settings.recipients_per_transaction_max.max(1) as usize,
                );
                defer_ready(&shared, site, &refusal, chosen, bound, now).await;
            } else {
                connect_failed(&shared, site, now);
                // Only when no other connection serves the site: its
                // waiting recipients are deferred (like a 4xx), not left
                // to wait.
                let alone = shared.pools.borrow()[site as usize].active <= 1;
                if alone {
                    let bound = (usize::MAX, usize::MAX);
                    defer_ready(&shared, site, &refusal, chosen, bound, now).await;
                }
            }
        }
    }
    if let (Some(permit), Some(shaping)) = (permit, &shared.shaping) {
        shaping.release(permit);
    }
    connection_ended(&shared, site);
}

/// Why a host gave no session: what the recipients' deferral says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refusal {
    code: u16,
    enhanced: Option<String>,
    text: String,
    peer: Option<SocketAddr>,
    /// The host accepted the connection and refused the session (not a
    /// connect or local failure).
    session: bool,
}

impl Refusal {
    /// A failure on our side of the connection (connect, bind, source).
    fn local(text: String) -> Refusal {
        Refusal {
            code: 451,
            enhanced: Some("4.4.1".into()),
            text,
            peer: None,
            session: false,
        }
    }
}

/// How a connection to one host ended.
enum Ended {
    /// The session got ready (whatever happened after).
    Served,
    /// The opportunistic STARTTLS handshake failed: the driver's next
    /// connection goes in the clear (the host is remembered).
    TlsFallback,
    /// The host gave no session: try the next one.
    Refused(Refusal),
}

/// Walks the site's hosts in order (from a random one of the equally
/// preferred first ones), from the site's source when it has one, until
/// one serves a session. `Err` carries the last host's refusal.
async fn walk(
    shared: &Rc<Shared>,
    site: SiteId,
    source: Option<&Chosen>,
    shaped: Option<(DestId, Destination)>,
) -> Result<(), Refusal> {
    let (mut hosts, spread) = {
        let q = shared.ctx.queues.borrow();
        (q.hosts(site).to_vec(), q.sites().spread(site))
    };
    if spread > 1 {
        // Equal best preferences: start at a random one of them.
        let first = (shared.random() % spread as u64) as usize;
        hosts[..spread].rotate_left(first);
    }
    let mut last = Refusal::local(String::from("the route has no hosts"));
    for addr in hosts {
        if shared.ctx.stopping() {
            // Nothing is deferred for a shutdown: the recipients wait.
            return Ok(());
        }
        let stream = match connect(shared, source, addr).await {
            Ok(stream) => stream,
            Err(text) => {
                last = Refusal::local(text);
                continue;
            }
        };
        shared.count(|c| c.connections += 1);
        let local_ip = stream.local_addr().ok().map(|a| a.ip());
        let mut conn = Conn::new(
            Rc::clone(shared),
            site,
            addr,
            source.cloned(),
            shaped.clone(),
            local_ip,
        );
        match conn.run(stream).await {
            Ended::Served | Ended::TlsFallback => {
                connect_succeeded(shared, site);
                return Ok(());
            }
            Ended::Refused(refusal) => {
                log::info!(
                    "shard {}: {addr} refused the session ({} {}); trying the next host",
                    shared.ctx.index,
                    refusal.code,
                    refusal.text
                );
                last = refusal;
            }
        }
    }
    Err(last)
}

/// Connects to one host, from `source` when given.
async fn connect(
    shared: &Shared,
    source: Option<&Chosen>,
    addr: SocketAddr,
) -> Result<TcpStream, String> {
    let connected = match source {
        None => TcpStream::connect_timeout(addr, shared.settings.connect_timeout)
            .await
            .map_err(|e| e.to_string()),
        Some(src) if src.bind.is_ipv4() != addr.is_ipv4() => {
            return Err(format!(
                "source {} ({}) cannot reach {addr}: other address family",
                src.name, src.bind
            ));
        }
        Some(src) => connect_from(src.bind, addr, shared.settings.connect_timeout).await,
    };
    match connected {
        Ok(s) => {
            // Small pipelined writes must not wait for Nagle.
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Err(e) => Err(format!("connect to {addr}: {e}")),
    }
}

/// The source a new connection of `site` binds (see [`super::source`]).
pub(super) fn site_source(shared: &Shared, site: SiteId) -> Result<Option<Chosen>, String> {
    // The shaper's rules, so a reload's sources and pools apply to the
    // next connection.
    let Some(shaping) = &shared.shaping else {
        return Ok(None);
    };
    let rules = shaping.rules();
    let q = shared.ctx.queues.borrow();
    let named = q.sites().pool(site).map(str::to_owned);
    // A message's named pool wins; otherwise the rule of the domain at the
    // site's head may name one (only worth asking when sources exist).
    let rule_pool = match q.site_front(site) {
        Some(front) if named.is_none() && !rules.sources.is_empty() => {
            let names: Vec<&str> = q.sites().names(site).iter().map(String::as_str).collect();
            rules.effective(q.domain(front), &names, None).pool.clone()
        }
        _ => None,
    };
    drop(q);
    let now = now_unix_ms();
    super::source::choose(
        &rules,
        named.as_deref(),
        rule_pool.as_deref(),
        shared.random(),
        &|source| source_available(shared, source, now),
    )
    .map_err(|e| format!("source selection: {e}"))
}

/// Connects from `bind` without blocking the shard: a non-blocking socket
/// is bound (with `IP_BIND_ADDRESS_NO_PORT`, so the port is chosen per
/// destination at connect time) and its connect started; glommio then
/// owns it, and a zero-byte write waits for the connection through
/// io_uring (it parks on POLLOUT until the handshake completes, and
/// fails with the connect error, e.g. ECONNREFUSED).
async fn connect_from(
    bind: IpAddr,
    addr: SocketAddr,
    limit: Duration,
) -> Result<TcpStream, String> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::STREAM.nonblocking(), Some(Protocol::TCP))
        .map_err(|e| format!("socket: {e}"))?;
    if bind.is_ipv4() {
        let one: libc::c_int = 1;
        // SAFETY: a valid socket fd and a c_int option value of the right size.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    socket
        .bind(&SocketAddr::new(bind, 0).into())
        .map_err(|e| format!("bind {bind}: {e}"))?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(format!("from {bind}: {e}")),
    }
    // SAFETY: the fd comes from the socket above, whose ownership moves
    // into glommio here; nothing else closes it.
    let mut stream = unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) };
    let done = glommio::timer::timeout(limit, async { Ok(stream.write(&[]).await) }).await;
    match done {
        Ok(Ok(_)) => Ok(stream),
        Ok(Err(e)) => Err(format!("from {bind}: {e}")),
        Err(_) => Err(format!("from {bind}: connection timed out")),
    }
}

/// Defers the site's ready recipients: at most `bound.0` messages of at
/// most `bound.1` recipients each (and [`CONNECT_FAIL_DEFER_MAX`] in all).
async fn defer_ready(
    shared: &Shared,
    site: SiteId,
    refusal: &Refusal,
    source: Option<&Chosen>,
    bound: (usize, usize),
    now: u64,
) {
    let (mut messages, recipients) = bound;
    let mut batch = Vec::new();
    let mut left = CONNECT_FAIL_DEFER_MAX;
    let said = Said {
        code: refusal.code,
        enhanced: refusal.enhanced.as_deref(),
        text: &refusal.text,
        peer: refusal.peer,
        tls: None,
        local: source.map(|s| Local {
            source: Some(&s.name),
            pool: s.pool.as_deref(),
            ip: Some(s.bind),
            shaping: None,
        }),
    };
    while left > 0 && messages > 0 {
        messages -= 1;
        let dest = shared
            .ctx
            .queues
            .borrow_mut()
            .take(site, now, recipients, &mut batch);
        let Some(dest) = dest else { break };
        for entry in batch.drain(..) {
            outcome::defer(shared, dest, entry, &said, now);
            left = left.saturating_sub(1);
        }
        glommio::yield_if_needed().await;
    }
}

struct Conn {
    shared: Rc<Shared>,
    site: SiteId,
    peer: SocketAddr,
    session: ClientSession,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    txns: VecDeque<Txn>,
    batch: Vec<Entry>,
    next_env: u64,
    transactions: u32,
    ever_ready: bool,
    quitting: bool,
    /// Transactions this connection may carry.
    deliveries_max: u32,
    /// Recipients per transaction.
    recipients_max: usize,
    /// Shaping said "wait" for a message token until then (ms).
    blocked_until_unix_ms: u64,
    /// The destination's STARTTLS policy (shaping rules or `[delivery] tls`).
    tls_policy: ShapingTls,
    /// TLS once STARTTLS completed.
    tls: Option<Box<Tls>>,
    /// What the handshake negotiated, for the delivery log.
    tls_info: Option<TlsInfo>,
    /// The session asked for the handshake (its `220` arrived).
    tls_pending: bool,
    /// Why TLS failed on this connection (the text of the deferrals).
    tls_failure: Option<String>,
    /// Opportunistic TLS failed: the next connection goes in the clear.
    tls_fallback: bool,
    /// Why the session closed, once it did.
    closed: Option<CloseCause>,
    /// The source this connection bound, if any.
    source: Option<Chosen>,
    /// Our address on this connection.
    local_ip: Option<IpAddr>,
    /// Shaping destinations for the bound source, by queue destination:
    /// every transaction and outcome of the connection uses its source's
    /// limits (rate, warm-up, per-source rule overrides).
    shaped: HashMap<DestId, Destination>,
}

/// How long a host whose STARTTLS handshake failed is sent to in the clear
/// under the opportunistic policy before TLS is tried again.
pub const TLS_BROKEN_REMEMBER: Duration = Duration::from_secs(30 * 60);
/// Hosts remembered as having broken TLS, per shard.
const TLS_BROKEN_HOSTS_MAX: usize = 10_000;

thread_local! {
    /// Hosts whose TLS handshake failed, until when (ms). Thread-local is
    /// shard-local here: one shard per thread, never shared.
    static TLS_BROKEN: std::cell::RefCell<std::collections::HashMap<SocketAddr, u64>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

fn tls_broken(peer: SocketAddr, now: u64) -> bool {
    TLS_BROKEN.with(|m| m.borrow().get(&peer).is_some_and(|&until| until > now))
}

fn remember_tls_broken(peer: SocketAddr, now: u64) {
    TLS_BROKEN.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() >= TLS_BROKEN_HOSTS_MAX {
            m.retain(|_, until| *until > now);
            if m.len() >= TLS_BROKEN_HOSTS_MAX {
                m.clear();
            }
        }
        m.insert(peer, now + TLS_BROKEN_REMEMBER.as_millis() as u64);
    });
}

/// The STARTTLS policy of `site`: its shaping rule's `tls` when a rules
/// file is configured, else `[delivery] tls`.
fn site_tls_policy(shared: &Shared, site: SiteId) -> ShapingTls {
    let default = shared.ctx.config.outbound_tls.default_policy;
    if shared.ctx.config.shaping_file.is_none() {
        return default;
    }
    let q = shared.ctx.queues.borrow();
    match (&shared.shaping, q.site_front(site)) {
        (Some(shaping), Some(front)) => shaping.destination(&q, front).rule.tls,
        _ => default,
    }
}

impl Conn {
    fn new(
        shared: Rc<Shared>,
        site: SiteId,
        peer: SocketAddr,
        source: Option<Chosen>,
        seed: Option<(DestId, Destination)>,
        local_ip: Option<IpAddr>,
    ) -> Conn {
        // A source's EHLO name replaces the configured host name.
        let ehlo = source.as_ref().map(|s| s.ehlo.clone());
        let mut cfg = ClientConfig::new(ehlo.unwrap_or_else(|| shared.ctx.config.hostname.clone()));
        // The rule of the site's head for this source (per-source
        // overrides included), when the connection is bound and shaped.
        let mut shaped = HashMap::new();
        if let (Some(shaping), Some(src)) = (&shared.shaping, &source) {
            let q = shared.ctx.queues.borrow();
            if let Some(front) = q.site_front(site) {
                let d = match seed {
                    Some((dest, d)) if dest == front => d,
                    _ => shaping.destination_for_source(&q, front, &src.name),
                };
                shaped.insert(front, d);
            }
        }
        let front_rule = shaped.values().next().map(|d| Rc::clone(&d.rule));
        let mut tls_policy = match &front_rule {
            Some(rule) if shared.ctx.config.shaping_file.is_some() => rule.tls,
            _ => site_tls_policy(&shared, site),
        };
        if tls_policy == ShapingTls::Opportunistic && tls_broken(peer, now_unix_ms()) {
            // Its handshake failed recently: cleartext for a while.
            tls_policy = ShapingTls::Disabled;
        }
        cfg.tls = match tls_policy {
            ShapingTls::Disabled => TlsPolicy::Disabled,
            ShapingTls::Opportunistic => TlsPolicy::Opportunistic,
            ShapingTls::Required | ShapingTls::RequiredVerified => TlsPolicy::Required,
        };
        cfg.transactions_in_flight_max = shared.settings.transactions_in_flight_max as usize;
        cfg.transactions_queued_max = shared.settings.transactions_in_flight_max as usize;
        let mut deliveries_max = shared.settings.deliveries_per_connection_max;
        let mut recipients_max = shared.settings.recipients_per_transaction_max;
        let limits = match (&front_rule, &shared.shaping) {
            (Some(rule), _) => Some((
                rule.max_deliveries_per_connection,
                rule.max_recipients_per_transaction,
            )),
            (None, Some(shaping)) => {
                let q = shared.ctx.queues.borrow();
                q.site_front(site)
                    .map(|front| shaping.connection_limits(&q, front))
            }
            (None, None) => None,
        };
        if let Some((d, r)) = limits {
            deliveries_max = deliveries_max.min(d.max(1));
            recipients_max = recipients_max.min(r.max(1));
        }
        Conn {
            deliveries_max,
            recipients_max: recipients_max as usize,
            blocked_until_unix_ms: 0,
            session: ClientSession::new(cfg),
            shared,
            site,
            peer,
            rbuf: vec![0; READ_BUFFER_BYTES],
            wbuf: Vec::with_capacity(WRITE_BUFFER_BYTES),
            txns: VecDeque::new(),
            batch: Vec::new(),
            next_env: 0,
            transactions: 0,
            ever_ready: false,
            quitting: false,
            tls_policy,
            tls: None,
            tls_info: None,
            tls_pending: false,
            tls_failure: None,
            tls_fallback: false,
            closed: None,
            source,
            local_ip,
            shaped,
        }
    }

    /// The handshake after STARTTLS's `220` (RFC 3207): the session EHLOs
    /// again after it and has dropped what the first EHLO said. Any
    /// certificate is accepted during the handshake (signatures are still
    /// checked); the chain is then verified against the MX names (or the
    /// route's address), which `required-verified` insists on.
    async fn start_tls(&mut self, stream: &mut TcpStream) {
        self.tls_pending = false;
        let outbound = &self.shared.ctx.config.outbound_tls;
        let names: Vec<String> = self
            .shared
            .ctx
            .queues
            .borrow()
            .sites()
            .names(self.site)
            .to_vec();
        let sni = server_name(names.first().map(String::as_str), self.peer.ip());
        let limit = self
            .shared
            .settings
            .reply_timeout
            .unwrap_or_else(|| TimeoutClass::Command.rfc_default());
        let result = match Tls::client(Arc::clone(&outbound.any_certificate), sni.clone()) {
            Ok(mut tls) => {
                match glommio::timer::timeout(limit, async { Ok(tls.handshake(stream).await) })
                    .await
                {
                    Ok(Ok(())) => Ok(tls),
                    Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
                    Err(_) => Err("TLS handshake timed out".to_string()),
                }
            }
            Err(e) => Err(format!("TLS setup failed: {e}")),
        };
        match result {
            Ok(tls) => {
                let candidates: Vec<_> = if names.is_empty() {
                    vec![sni]
                } else {
                    names
                        .iter()
                        .map(|n| server_name(Some(n), self.peer.ip()))
                        .collect()
                };
                let verified = candidates.iter().find(|n| outbound.verifies(&tls, n));
                let peer_name = match verified.or(candidates.first()) {
                    Some(n) => n.to_str().into_owned(),
                    None => self.peer.ip().to_string(),
                };
                let info = tls.info(peer_name, verified.is_some());
                self.tls = Some(Box::new(tls));
                if self.tls_policy == ShapingTls::RequiredVerified && !info.verified {
                    self.tls_failure = Some(format!(
                        "TLS certificate not verified for {} (policy required-verified)",
                        info.peer_name
                    ));
                    self.tls_info = Some(info);
                    self.session.connection_lost();
                    return;
                }
                self.tls_info = Some(info);
                self.session.tls_established();
            }
            Err(reason) => {
                log::info!("shard {}: {} {reason}", self.shared.ctx.index, self.peer);
                if self.tls_policy == ShapingTls::Opportunistic {
                    // Reconnect in the clear (the driver opens the next
                    // connection for the requeued work) and remember.
                    remember_tls_broken(self.peer, now_unix_ms());
                    self.tls_fallback = true;
                }
                self.tls_failure = Some(reason);
                self.session.connection_lost();
            }
        }
    }

    /// Runs the session on `stream`. Transactions are taken only once the
    /// session is ready (nothing could be sent before the EHLO reply
    /// anyway), so a host that refuses the session has none to give back,
    /// and the caller can try the next host.
    async fn run(&mut self, mut stream: TcpStream) -> Ended {
        // Bounded: each pass either waits for I/O or work with a timeout,
        // or the session closes; the session's timers bound every wait.
        loop {
            if !self.quitting && self.ever_ready {
                self.fill();
            }
            if !self.quitting && self.session.is_ready() && self.session.transactions_pending() == 0
            {
                let now = now_unix_ms();
                if self.blocked_until_unix_ms > now
                    && !self.shared.ctx.stopping()
                    && self.pool_has_other_source(now)
                {
                    // Its source waits for a token while another of its
                    // pool can send: give the slot to a new connection,
                    // which the driver binds to one of those.
                    self.session.quit();
                    self.quitting = true;
                } else if self.blocked_until_unix_ms > now && !self.shared.ctx.stopping() {
                    // Shaping asked to wait for a token: wait, keep the
                    // connection.
                    let wait = Duration::from_millis(self.blocked_until_unix_ms - now)
                        .min(self.shared.settings.idle_close);
                    glommio::timer::sleep(wait).await;
                    continue;
                } else {
                    let retire = self.transactions >= self.deliveries_max;
                    if self.shared.ctx.stopping() || retire || !self.wait_for_work().await {
                        self.session.quit();
                        self.quitting = true;
                    } else {
                        continue;
                    }
                }
            }
            if let Err(_e) = self.flush(&mut stream).await {
                self.read_what_was_said(&mut stream).await;
                self.session.connection_lost();
            }
            self.settle_events();
            if self.tls_pending {
                self.start_tls(&mut stream).await;
                self.settle_events();
            }
            if self.session.is_closed() {
                break;
            }
            let Some(class) = self.session.timeout() else {
                continue;
            };
            let limit = self
                .shared
                .settings
                .reply_timeout
                .unwrap_or_else(|| class.rfc_default());
            let Conn { tls, rbuf, .. } = self;
            let read = glommio::timer::timeout(limit, async {
                Ok(match tls {
                    Some(tls) => tls.read(&mut stream, rbuf).await,
                    None => stream.read(rbuf).await,
                })
            })
            .await;
            match read {
                Ok(Ok(0)) | Ok(Err(_)) => self.session.connection_lost(),
                Ok(Ok(n)) => self.session.feed(&self.rbuf[..n]),
                Err(_) => self.session.timed_out(),
            }
            self.settle_events();
            if self.tls_pending {
                self.start_tls(&mut stream).await;
                self.settle_events();
            }
            if self.session.is_closed() {
                // Write what the session still has (QUIT after 421, etc.).
                let _ = self.flush(&mut stream).await;
                break;
            }
            glommio::yield_if_needed().await;
        }
        if let Some(tls) = self.tls.as_mut() {
            tls.close(&mut stream).await;
        }
        let _ = stream.close().await;
        // The session gives every queued recipient exactly one outcome
        // before it closes; anything left would be a bug in it. Debug
        // builds stop on it; release builds put the recipients back in
        // their queues (a retry, never a loss) and say so.
        debug_assert!(self.txns.is_empty(), "transactions left without outcomes");
        if !self.txns.is_empty() {
            log::error!(
                "shard {}: {} transaction(s) ended without outcomes; requeued",
                self.shared.ctx.index,
                self.txns.len()
            );
            let mut q = self.shared.ctx.queues.borrow_mut();
            for txn in self.txns.drain(..) {
                for (e, done) in txn.entries.into_iter().zip(txn.settled) {
                    if !done {
                        q.requeue(txn.dest, e);
                    }
                }
            }
        }
        if self.ever_ready {
            Ended::Served
        } else if self.tls_fallback {
            Ended::TlsFallback
        } else {
            Ended::Refused(self.refusal())
        }
    }

    /// Takes transactions from the site's queues into the session, up to
    /// the in-flight bound and the per-connection bound.
    fn fill(&mut self) {
        let shared = Rc::clone(&self.shared);
        let settings = &shared.settings;
        let now = now_unix_ms();
        while self.session.transactions_pending() < settings.transactions_in_flight_max as usize
            && self.transactions < self.deliveries_max
            && self.blocked_until_unix_ms <= now
            && !self.shared.ctx.stopping()
        {
            let dest = self.shared.ctx.queues.borrow_mut().take(
                self.site,
                now,
                self.recipients_max,
                &mut self.batch,
            );
            let Some(dest) = dest else { break };
            let entries = std::mem::take(&mut self.batch);
            let Some(mut txn) = self.prepare(dest, entries, now) else {
                continue;
            };
            if let Some(shaping) = &shared.shaping {
                let wait = match self.sourced(dest) {
                    Some(d) => shaping.try_message_at(&d),
                    None => shaping.try_message(&shared.ctx.queues.borrow(), dest),
                };
                if let Err(wait) = wait {
                    let mut q = shared.ctx.queues.borrow_mut();
                    for e in txn.entries.into_iter().rev() {
                        q.requeue(txn.dest, e);
                    }
                    self.blocked_until_unix_ms = now + wait.as_millis().max(1) as u64;
                    if let Some(src) = &self.source {
                        source_waits(&shared, &src.name, self.blocked_until_unix_ms, now);
                    }
                    break;
                }
            }
            let envelope = Conn::envelope(&mut txn);
            match self.session.queue(envelope) {
                Ok(()) => {
                    self.txns.push_back(txn);
                    self.transactions += 1;
                }
                Err(QueueError::Full(_) | QueueError::Closed(_)) => {
                    let mut q = self.shared.ctx.queues.borrow_mut();
                    for e in txn.entries.into_iter().rev() {
                        q.requeue(txn.dest, e);
                    }
                    break;
                }
            }
        }
    }

    /// Reads the envelope and body of a batch from the spool. A record that
    /// cannot be read bounces its recipients (it would never be readable).
    fn prepare(&mut self, dest: DestId, mut entries: Vec<Entry>, now: u64) -> Option<Txn> {
        // Every entry of a batch is the same message (see Queues::take).
        let rec = self.shared.locate(&entries[0]);
        for e in &mut entries {
            e.rec = rec;
        }
        let first = entries[0];
        let spool = &self.shared.ctx.spool;
        let read = spool.message(&first.rec).and_then(|record| {
            let parts = record.parts()?;
            let recipients = entries
                .iter()
                .map(|e| {
                    parts
                        .recipients
                        .get(e.index as usize)
                        .map(|r| String::from_utf8_lossy(r.address).into_owned())
                        .unwrap_or_default()
                })
                .collect::<Vec<_>>();
            let dsn = entries
                .iter()
                .map(|e| {
                    let stored = parts
                        .recipients
                        .get(e.index as usize)
                        .map_or(&[][..], |r| r.dsn);
                    // Unparsable stored parameters are dropped, not fatal:
                    // the message still goes, without DSN requests.
                    let d = parse_recipient_dsn(stored).unwrap_or_default();
                    let orcpt = d
                        .orcpt
                        .filter(|(kind, _)| kind.eq_ignore_ascii_case("rfc822"))
                        .map(|(_, address)| address);
                    (d.notify, orcpt)
                })
                .collect::<Vec<_>>();
            let env_dsn = parse_envelope_dsn(parts.dsn).unwrap_or_default();
            let sender = String::from_utf8_lossy(parts.sender).into_owned();
            Ok((
                sender,
                recipients,
                dsn,
                env_dsn,
                parts.fixed.arrival_unix_ms,
            ))
        });
        let body = spool.body(&first.rec);
        match (read, body) {
            (Ok((sender, recipients, dsn, env_dsn, arrival_ms)), Ok(body)) => {
                self.next_env += 1;
                let count = entries.len();
                Some(Txn {
                    env_id: self.next_env,
                    dest,
                    entries,
                    sender,
                    recipients,
                    dsn,
                    ret: env_dsn.ret,
                    envid: env_dsn.envid,
                    settled: vec![false; count],
                    arrival_ms,
                    body,
                })
            }
            (Err(e), _) | (_, Err(e)) => {
                log::error!(
                    "shard {}: message {} unreadable in the spool: {e}",
                    self.shared.ctx.index,
                    first.id
                );
                let text = format!("spool record unreadable: {e}");
                let said = Said {
                    code: 554,
                    enhanced: Some("5.3.0"),
                    text: &text,
                    peer: None,
                    tls: self.tls_info.as_ref(),
                    local: None,
                };
                for entry in entries {
                    let s = Subject {
                        dest,
                        entry,
                        recipient: "",
                        arrival_ms: 0,
                    };
                    outcome::bounced(&self.shared, &s, &said, now);
                }
                None
            }
        }
    }

    /// The session's envelope of `txn`. The sender and the DSN parameters
    /// move into it (nothing reads them from the `Txn` afterwards); the
    /// recipients are copied, as settling logs them.
    fn envelope(txn: &mut Txn) -> Envelope {
        let sender = std::mem::take(&mut txn.sender);
        let smtputf8 = !sender.is_ascii() || txn.recipients.iter().any(|r| !r.is_ascii());
        let mut env = Envelope::new(
            txn.env_id,
            sender,
            txn.recipients
                .iter()
                .zip(std::mem::take(&mut txn.dsn))
                .map(|(address, (notify, orcpt))| Recipient {
                    address: address.clone(),
                    notify,
                    orcpt,
                })
                .collect(),
            txn.body.len() as u64,
        );
        // RFC 6152: 8-bit content needs BODY=8BITMIME (`is_ascii` checks a
        // word at a time).
        env.eight_bit = !txn.body.is_ascii();
        env.smtputf8 = smtputf8;
        env.ret = txn.ret;
        env.envid = txn.envid.take();
        env
    }

    /// Writes every command and body the session has, bodies straight from
    /// the spool mapping.
    async fn flush(&mut self, stream: &mut TcpStream) -> std::io::Result<()> {
        if self.tls.is_none() {
            return self.flush_plain(stream).await;
        }
        loop {
            let body = self.session.poll_transmit(&mut self.wbuf);
            if !self.wbuf.is_empty() {
                send(&mut self.tls, stream, &self.wbuf).await?;
                self.wbuf.clear();
            }
            let Some(body) = body else { break };
            let Some(txn) = self.txns.iter().find(|t| t.env_id == body.id) else {
                // The session only names bodies of envelopes we queued.
                continue;
            };
            // Straight from the spool mapping; under TLS rustls encrypts
            // from it into its record buffer (one copy) in pieces bounded
            // by its buffer limit, and the records leave together below.
            match body.encoding {
                BodyEncoding::Raw => send(&mut self.tls, stream, &txn.body).await?,
                BodyEncoding::DotStuffed => {
                    for piece in DotStuffer::new(&txn.body) {
                        send(&mut self.tls, stream, piece).await?;
                    }
                }
            }
        }
        if let Some(tls) = &mut self.tls {
            tls.flush(stream).await?;
        }
        stream.flush().await
    }

    /// [`Conn::flush`] in the clear: every command and body piece the
    /// session has is gathered (commands in `wbuf`, bodies as slices of
    /// the spool mapping) and written with as few `sendmsg` calls as the
    /// socket takes, instead of one `send` per piece.
    async fn flush_plain(&mut self, stream: &mut TcpStream) -> std::io::Result<()> {
        enum Part<'a> {
            Commands(std::ops::Range<usize>),
            Body(&'a [u8]),
        }
        let Conn {
            session,
            wbuf,
            txns,
            ..
        } = self;
        wbuf.clear();
        let mut plan: Vec<Part<'_>> = Vec::new();
        loop {
            let start = wbuf.len();
            let body = session.poll_transmit(wbuf);
            if wbuf.len() > start {
                plan.push(Part::Commands(start..wbuf.len()));
            }
            let Some(body) = body else { break };
            let Some(txn) = txns.iter().find(|t| t.env_id == body.id) else {
                // The session only names bodies of envelopes we queued.
                continue;
            };
            match body.encoding {
                BodyEncoding::Raw => plan.push(Part::Body(&txn.body)),
                BodyEncoding::DotStuffed => {
                    plan.extend(DotStuffer::new(&txn.body).map(Part::Body));
                }
            }
        }
        let parts: Vec<&[u8]> = plan
            .iter()
            .map(|p| match p {
                Part::Commands(r) => &wbuf[r.clone()],
                Part::Body(b) => *b,
            })
            .collect();
        send_gathered(stream, &parts).await?;
        wbuf.clear();
        Ok(())
    }

    fn settle_events(&mut self) {
        let now = now_unix_ms();
        while let Some(event) = self.session.poll_event() {
            match event {
                ClientEvent::Ready => self.ever_ready = true,
                // The handshake is async: the run loop performs it next.
                ClientEvent::StartTls => self.tls_pending = true,
                ClientEvent::Recipient { id, index, outcome } => {
                    self.settle(id, index, &outcome, now)
                }
                ClientEvent::TransactionDone { id } => self.txns.retain(|t| t.env_id != id),
                ClientEvent::Closed(cause) => self.closed = Some(cause),
            }
        }
    }

    fn settle(&mut self, id: u64, index: usize, outcome: &Outcome, now: u64) {
        let Some(txn) = self.txns.iter_mut().find(|t| t.env_id == id) else {
            return;
        };
        let Some(&entry) = txn.entries.get(index) else {
            return;
        };
        if std::mem::replace(&mut txn.settled[index], true) {
            // A second outcome for one recipient: the session promises
            // exactly one; ignore it rather than account twice.
            debug_assert!(false, "two outcomes for one recipient");
            return;
        }
        let txn = &*txn;
        let s = Subject {
            dest: txn.dest,
            entry,
            recipient: &txn.recipients[index],
            arrival_ms: txn.arrival_ms,
        };
        let peer = Some(self.peer);
        let local = Some(Local {
            source: self.source.as_ref().map(|s| s.name.as_str()),
            pool: self.source.as_ref().and_then(|s| s.pool.as_deref()),
            ip: self.local_ip,
            shaping: self.shaped.get(&txn.dest),
        });
        match outcome {
            Outcome::Delivered(reply) => {
                let (enh, text) = reply_parts(reply);
                let said = Said {
                    code: reply.code.value(),
                    enhanced: enh.as_deref(),
                    text: &text,
                    peer,
                    tls: self.tls_info.as_ref(),
                    local,
                };
                outcome::delivered(&self.shared, &s, &said, now);
            }
            Outcome::PermFail(f) => {
                let (code, enh, text) = failure_parts(f, true);
                let said = Said {
                    code,
                    enhanced: enh.as_deref(),
                    text: &text,
                    peer,
                    tls: self.tls_info.as_ref(),
                    local,
                };
                outcome::bounced(&self.shared, &s, &said, now);
            }
            Outcome::TempFail(Failure::NotSent) => {
                // Never attempted on this connection (transactions are
                // queued only once it is ready): back to the front of its
                // queue, attempts unchanged.
                self.shared.ctx.queues.borrow_mut().requeue(s.dest, s.entry);
            }
            Outcome::TempFail(f) => {
                let (code, enh, text) = failure_parts(f, false);
                let said = Said {
                    code,
                    enhanced: enh.as_deref(),
                    text: &text,
                    peer,
                    tls: self.tls_info.as_ref(),
                    local,
                };
                outcome::deferred(&self.shared, &s, &said, now);
            }
        }
    }

    /// A write failed (the peer closed or reset the connection): replies
    /// it sent before closing may still wait in the receive buffer, e.g.
    /// the `250` of a transaction followed by a `421` to the next
    /// pipelined `MAIL` (a server that closes with our unread commands
    /// resets the connection, and our next write fails first). Feeding
    /// them to the session before calling the connection lost keeps a
    /// delivered message from being retried (a duplicate). Bounded: reads
    /// until the end, an error, the session closing, or a second passes.
    async fn read_what_was_said(&mut self, stream: &mut TcpStream) {
        const READS_MAX: usize = 64;
        let Conn { tls, rbuf, .. } = self;
        let mut said = Vec::new();
        let _ = glommio::timer::timeout(Duration::from_secs(1), async {
            for _ in 0..READS_MAX {
                let n = match tls {
                    Some(tls) => read_tls_only(tls, stream, rbuf).await,
                    None => stream.read(rbuf).await,
                };
                match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => said.extend_from_slice(&rbuf[..n]),
                }
            }
            Ok(())
        })
        .await;
        if !said.is_empty() {
            self.session.feed(&said);
        }
    }

    /// Whether this connection's pool has another source that is not
    /// waiting for a message token.
    fn pool_has_other_source(&self, now: u64) -> bool {
        let (Some(src), Some(shaping)) = (&self.source, &self.shared.shaping) else {
            return false;
        };
        // The shaper's rules, as for the choice (a reload applies).
        let rules = shaping.rules();
        let Some(pool) = src.pool.as_ref().and_then(|p| rules.pools.get(p)) else {
            return false;
        };
        pool.sources
            .iter()
            .any(|(s, _)| *s != src.name && source_available(&self.shared, s, now))
    }

    /// The shaping destination of `dest` for this connection's source
    /// (`None` when unbound or unshaped), resolved once per connection.
    fn sourced(&mut self, dest: DestId) -> Option<Destination> {
        let shaping = self.shared.shaping.as_ref()?;
        let source = self.source.as_ref()?;
        if self.shaped.len() >= SHAPED_MAX && !self.shaped.contains_key(&dest) {
            self.shaped.clear();
        }
        let q = self.shared.ctx.queues.borrow();
        let d = self
            .shaped
            .entry(dest)
            .or_insert_with(|| shaping.destination_for_source(&q, dest, &source.name));
        Some(d.clone())
    }

    /// What a session that closed before it was ready says to the
    /// recipients deferred for it. A `5xx` there is reported as a `4xx`
    /// (its code kept in the text): the host refused this session, the
    /// recipients are retried later, and another host may accept them.
    fn refusal(&self) -> Refusal {
        let peer = Some(self.peer);
        let simple = |enhanced: &str, text: String| Refusal {
            code: 451,
            enhanced: Some(enhanced.to_string()),
            text,
            peer,
            session: true,
        };
        match (&self.closed, &self.tls_failure) {
            // RFC 3463 X.7.5: cryptographic failure.
            (_, Some(reason)) => simple("4.7.5", reason.clone()),
            (Some(CloseCause::ServerClosed(reply)), None) => {
                let code = reply.code.value();
                let enhanced = reply.enhanced.map(|e| e.to_string());
                if code >= 500 {
                    let enhanced = enhanced.map(|e| format!("4{}", &e[1..]));
                    Refusal {
                        code: 451,
                        enhanced: enhanced.or_else(|| Some("4.4.2".into())),
                        text: format!("session refused: {code} {}", reply.text),
                        peer,
                        session: true,
                    }
                } else {
                    Refusal {
                        code,
                        enhanced,
                        text: reply.text.to_string(),
                        peer,
                        session: true,
                    }
                }
            }
            (Some(CloseCause::TimedOut(class)), None) => simple(
                "4.4.2",
                format!("timed out waiting for the {} reply", class_name(*class)),
            ),
            (Some(CloseCause::Protocol(fault)), None) => {
                simple("4.5.0", format!("protocol error: {fault}"))
            }
            (Some(CloseCause::TlsUnavailable), None) => {
                simple("4.7.10", "TLS required but unavailable".into())
            }
            (Some(CloseCause::ConnectionLost | CloseCause::Quit) | None, None) => simple(
                "4.4.2",
                "connection closed before the session was ready".into(),
            ),
        }
    }

    /// Waits up to `idle_close` for work on this site (or shutdown).
    async fn wait_for_work(&self) -> bool {
        WaitWork {
            shared: &self.shared,
            site: self.site,
            timer: Timer::new(self.shared.settings.idle_close),
        }
        .await
    }
}

/// Reads plaintext like [`Tls::read`] but never writes (the write side
/// has failed): decrypted records first, then the socket.
async fn read_tls_only(
    tls: &mut Tls,
    stream: &mut TcpStream,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    loop {
        if let Some(n) = tls.take_plaintext(buf)? {
            return Ok(n);
        }
        let n = tls.read_socket(stream).await?;
        if n > 0 {
            tls.absorb(n)?;
        }
    }
}

/// Most slices one `sendmsg` takes (Linux `UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

/// Writes `parts` in order with as few system calls as the socket allows:
/// one non-blocking `sendmsg` over many slices (bodies straight from the
/// spool mapping, nothing copied), and glommio's awaited write for the rest
/// of a slice when the socket buffer is full.
async fn send_gathered(stream: &mut TcpStream, parts: &[&[u8]]) -> std::io::Result<()> {
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    // `parts[i][off..]` is the first byte not sent yet.
    let (mut i, mut off) = (0usize, 0usize);
    loop {
        while i < parts.len() && off == parts[i].len() {
            i += 1;
            off = 0;
        }
        if i == parts.len() {
            return Ok(());
        }
        let end = (i + IOV_MAX).min(parts.len());
        let iov: Vec<IoSlice<'_>> = std::iter::once(IoSlice::new(&parts[i][off..]))
            .chain(parts[i + 1..end].iter().map(|p| IoSlice::new(p)))
            .collect();
        match try_sendmsg(fd, &iov) {
            Some(Ok(0)) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    "the socket accepted nothing",
                ))
            }
            Some(Ok(mut n)) => {
                while n > 0 {
                    let left = parts[i].len() - off;
                    if n < left {
                        off += n;
                        n = 0;
                    } else {
                        n -= left;
                        i += 1;
                        off = 0;
                    }
                }
            }
            Some(Err(e)) => return Err(e),
            None => {
                // Full: wait for room through the reactor with this slice.
                stream.write_all(&parts[i][off..]).await?;
                i += 1;
                off = 0;
            }
        }
    }
}

/// One non-blocking `sendmsg`; `None` when the socket buffer is full.
fn try_sendmsg(
    fd: std::os::fd::RawFd,
    iov: &[std::io::IoSlice<'_>],
) -> Option<std::io::Result<usize>> {
    // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix (std
    // guarantees it); the slices outlive the call; the header is zeroed
    // apart from the vector, and `fd` is the connection's open socket.
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = iov.len() as _;
        libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    if n >= 0 {
        return Some(Ok(n as usize));
    }
    let e = std::io::Error::last_os_error();
    match e.kind() {
        // Full (or interrupted): the caller waits through the reactor.
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => None,
        _ => Some(Err(e)),
    }
}

/// Writes `data` to the peer, through TLS when it is up (queued in
/// rustls's records until the caller flushes the session).
async fn send(
    tls: &mut Option<Box<Tls>>,
    stream: &mut TcpStream,
    data: &[u8],
) -> std::io::Result<()> {
    match tls {
        Some(tls) => tls.queue(stream, data).await,
        None => stream.write_all(data).await,
    }
}

fn reply_parts(reply: &Reply) -> (Option<String>, String) {
    (
        reply.enhanced.map(|e| e.to_string()),
        reply.text.to_string(),
    )
}

/// Code, enhanced code and text describing a failure without a reply.
fn failure_parts(f: &Failure, permanent: bool) -> (u16, Option<String>, String) {
    let (t, p) = (permanent, |s: &str| Some(s.to_string()));
    match f {
        Failure::Reply(reply) => {
            let (enh, text) = reply_parts(reply);
            (reply.code.value(), enh, text)
        }
        Failure::ConnectionLost => (451, p("4.4.2"), "connection lost".into()),
        Failure::TimedOut(class) => (
            451,
            p("4.4.2"),
            format!("timed out waiting for the {} reply", class_name(*class)),
        ),
        Failure::Protocol(fault) => (
            if t { 554 } else { 451 },
            p(if t { "5.5.0" } else { "4.5.0" }),
            format!("protocol error: {fault}"),
        ),
        Failure::NotSent => (
            451,
            p("4.4.2"),
            "connection closed before the session was ready".into(),
        ),
        Failure::TlsUnavailable => (
            if t { 554 } else { 451 },
            p(if t { "5.7.10" } else { "4.7.10" }),
            "TLS required but unavailable".into(),
        ),
        Failure::ExtensionMissing(ext) => (
            554,
            p("5.6.3"),
            format!("the server lacks {ext:?} that the message needs"),
        ),
        Failure::TooBig { size_max } => (
            552,
            p("5.3.4"),
            format!("message larger than the server's SIZE {size_max}"),
        ),
    }
}

fn class_name(class: TimeoutClass) -> &'static str {
    match class {
        TimeoutClass::Greeting => "greeting",
        TimeoutClass::Command => "command",
        TimeoutClass::Mail => "MAIL",
        TimeoutClass::Rcpt => "RCPT",
        TimeoutClass::DataInit => "DATA",
        TimeoutClass::DataBlock => "data block",
        TimeoutClass::FinalDot => "end of data",
    }
}

/// Resolves `true` when the site has ready work (or the shard stops),
/// `false` when the timer fires first.
struct WaitWork<'a> {
    shared: &'a Shared,
    site: SiteId,
    timer: Timer,
}

impl Future for WaitWork<'_> {
    type Output = bool;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        if self.shared.ctx.stopping() {
            return Poll::Ready(true);
        }
        {
            let mut q = self.shared.ctx.queues.borrow_mut();
            if q.site_ready(self.site) > 0 {
                return Poll::Ready(true);
            }
            q.wait_for_work(self.site, cx.waker().clone());
        }
        match Pin::new(&mut self.timer).poll(cx) {
            Poll::Ready(_) => Poll::Ready(false),
            Poll::Pending => Poll::Pending,
        }
    }
}
