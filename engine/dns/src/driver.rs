//! The per-shard stub resolver on glommio: UDP queries, TCP when an
//! answer is truncated, timeouts and retries across name servers, the
//! answer cache, in-flight deduplication and a bound on outstanding
//! queries.
//!
//! The driver makes no protocol decisions: building and classifying
//! messages is [`crate::wire`], caching is [`crate::cache`], MX rules are
//! [`crate::mx`]. This file moves bytes, keeps time and retries.
//!
//! Retry order follows resolv.conf semantics: `attempts` rounds over the
//! servers in order (starting at the next one each query with `rotate`),
//! each try bounded by `timeout`. A truncated UDP answer is asked again
//! from the same server over TCP (RFC 7766 §5). An error RCODE, a
//! timeout, a refused port or an undecodable answer moves on to the next
//! server. Each UDP query uses a fresh connected socket, so the kernel
//! picks a random source port and drops datagrams from other addresses,
//! and the 16-bit id comes from an OS-seeded generator (RFC 5452 §9.2).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpStream, UdpSocket};
use glommio::sync::Semaphore;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::cache::{Cache, CacheConfig};
use crate::error::TempError;
use crate::mx::{MxConfig, MxLookup, MxOutcome, Step};
use crate::resolv_conf::{ResolvConf, ResolvConfError};
use crate::wire::{encode_query, parse_response, Lookup, Parsed, Question, Response, WireError};

/// Datagrams that do not answer our query (spoofs, late answers to
/// earlier tries) tolerated per try before giving up on it.
const STRAY_DATAGRAMS_MAX: usize = 16;
/// Receive buffer per query: the largest UDP payload and the largest TCP
/// message (RFC 1035 §4.2.2 two-byte length).
const RESPONSE_BYTES_MAX: usize = 65_535;
/// Bytes read per UDP datagram. We advertise 1232 (EDNS(0)); some servers
/// send more anyway. A datagram that fills this buffer may have been cut
/// by the kernel and is treated as truncated (asked again over TCP).
/// Kept small because glommio stages each receive in a buffer of this
/// size from the executor's io memory.
const UDP_RESPONSE_BYTES_MAX: usize = 4096;
const _: () = assert!(UDP_RESPONSE_BYTES_MAX > crate::wire::EDNS_PAYLOAD_BYTES as usize);
const _: () = assert!(RESPONSE_BYTES_MAX >= UDP_RESPONSE_BYTES_MAX);

/// Resolver configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverConfig {
    /// Name servers to ask, in order (port included, so tests can use a
    /// server on a high loopback port).
    pub nameservers: Vec<SocketAddr>,
    /// Timeout of one try (one server, UDP plus any TCP retry).
    pub timeout: Duration,
    /// Rounds over all servers.
    pub attempts: u32,
    /// Start each query at the next server.
    pub rotate: bool,
    /// Network queries outstanding at once on this shard; further lookups
    /// wait for a slot.
    pub outstanding_max: usize,
    /// Cache limits.
    pub cache: CacheConfig,
    /// MX resolution rules.
    pub mx: MxConfig,
}

impl ResolverConfig {
    /// Defaults with the servers and options of a parsed resolv.conf.
    pub fn from_resolv_conf(conf: &ResolvConf) -> Self {
        ResolverConfig {
            nameservers: conf.nameservers.clone(),
            timeout: conf.timeout,
            attempts: conf.attempts,
            rotate: conf.rotate,
            outstanding_max: 256,
            cache: CacheConfig::default(),
            mx: MxConfig::default(),
        }
    }

    /// Defaults with the system's `/etc/resolv.conf`.
    pub fn system() -> Result<Self, ResolvConfError> {
        let conf = ResolvConf::load(std::path::Path::new("/etc/resolv.conf"))?;
        Ok(Self::from_resolv_conf(&conf))
    }
}

/// Where the driver reads the time for its cache. Tests substitute a
/// clock they advance by hand, so TTL expiry needs no sleeping.
pub trait Clock {
    /// The current monotonic time.
    fn now(&self) -> Instant;
}

/// The monotonic system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Counters of one resolver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResolverStats {
    /// Lookups answered from the cache.
    pub cache_hits: u64,
    /// Lookups that joined a query already in flight.
    pub joined: u64,
    /// UDP queries sent.
    pub udp_queries: u64,
    /// TCP queries sent (after truncation).
    pub tcp_queries: u64,
    /// Tries that timed out.
    pub timeouts: u64,
}

/// The per-shard stub resolver. Cheap to clone (one `Rc`); not `Send`:
/// each shard builds its own.
#[derive(Clone)]
pub struct Resolver {
    inner: Rc<Inner>,
}

struct Inner {
    config: ResolverConfig,
    clock: Rc<dyn Clock>,
    cache: RefCell<Cache>,
    inflight: RefCell<HashMap<Question, Rc<Flight>>>,
    permits: Semaphore,
    next_server: Cell<usize>,
    ids: RefCell<SmallRng>,
    buffers: RefCell<Vec<Vec<u8>>>,
    stats: Cell<ResolverStats>,
}

impl Resolver {
    /// A resolver with an empty cache and the system clock.
    pub fn new(config: ResolverConfig) -> Self {
        Self::with_clock(config, Rc::new(SystemClock))
    }

    /// A resolver whose cache reads `clock`.
    pub fn with_clock(config: ResolverConfig, clock: Rc<dyn Clock>) -> Self {
        let outstanding = config.outstanding_max.max(1);
        Resolver {
            inner: Rc::new(Inner {
                cache: RefCell::new(Cache::new(config.cache.clone())),
                inflight: RefCell::new(HashMap::new()),
                permits: Semaphore::new(outstanding as u64),
                next_server: Cell::new(0),
                ids: RefCell::new(SmallRng::from_entropy()),
                buffers: RefCell::new(Vec::new()),
                stats: Cell::new(ResolverStats::default()),
                clock,
                config,
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ResolverConfig {
        &self.inner.config
    }

    /// Counters so far.
    pub fn stats(&self) -> ResolverStats {
        self.inner.stats.get()
    }

    /// Resolves the mail exchangers of `domain` (RFC 5321 §5.1; see
    /// [`crate::mx`]). `rng` shuffles hosts of equal preference. Address
    /// lookups of all hosts run concurrently.
    pub async fn resolve_mx<R: Rng>(&self, domain: &str, rng: &mut R) -> MxOutcome {
        self.resolve_mx_with(domain, &self.inner.config.mx, rng)
            .await
    }

    /// [`Resolver::resolve_mx`] with other MX rules, e.g. a route whose
    /// address policy allows loopback or private addresses. The cache is
    /// shared: it holds DNS answers, not policy decisions.
    pub async fn resolve_mx_with<R: Rng>(
        &self,
        domain: &str,
        config: &MxConfig,
        rng: &mut R,
    ) -> MxOutcome {
        self.resolve_mx_ttl(domain, config, rng).await.0
    }

    /// [`Resolver::resolve_mx_with`], also returning how long the outcome
    /// holds: the smallest remaining TTL of the answers it used (MX and
    /// addresses, negative answers by their SOA, as cached), `None` when
    /// no answer carried one (e.g. a temporary failure).
    pub async fn resolve_mx_ttl<R: Rng>(
        &self,
        domain: &str,
        config: &MxConfig,
        rng: &mut R,
    ) -> (MxOutcome, Option<Duration>) {
        let mut lookup = MxLookup::new(domain, config);
        loop {
            match lookup.step() {
                Step::Done(outcome) => return (outcome, lookup.ttl()),
                // Every asked question is answered below before `step`
                // runs again, so waiting with nothing outstanding would be
                // a bug in this loop.
                Step::Wait => unreachable!("MxLookup waits with every question answered"),
                Step::Ask(questions) => {
                    let tasks: Vec<_> = questions
                        .into_iter()
                        .map(|q| {
                            let resolver = self.clone();
                            glommio::spawn_local(async move {
                                let result = resolver.lookup_ttl(&q).await;
                                (q, result)
                            })
                        })
                        .collect();
                    for task in tasks {
                        let (q, result) = task.await;
                        let ttl = result.as_ref().ok().and_then(|(_, ttl)| *ttl);
                        lookup.answer_with_ttl(&q, result.map(|(l, _)| l), ttl, rng);
                    }
                }
            }
        }
    }

    /// Answers one question from the cache, by joining an identical
    /// query in flight, or by asking the name servers.
    pub async fn lookup(&self, question: &Question) -> Result<Lookup, TempError> {
        self.lookup_ttl(question).await.map(|(lookup, _)| lookup)
    }

    /// [`Resolver::lookup`] with how long the answer stays valid (the
    /// cache's remaining TTL; `None`: not cacheable).
    pub async fn lookup_ttl(
        &self,
        question: &Question,
    ) -> Result<(Lookup, Option<Duration>), TempError> {
        let inner = &self.inner;
        if let Some((hit, ttl)) =
            inner
                .cache
                .borrow_mut()
                .get_with_ttl(&question.name, question.qtype, inner.clock.now())
        {
            inner.bump(|s| s.cache_hits += 1);
            return Ok((hit, Some(ttl)));
        }
        let existing = inner.inflight.borrow().get(question).cloned();
        if let Some(flight) = existing {
            inner.bump(|s| s.joined += 1);
            return FlightWait(flight).await;
        }
        let flight = Rc::new(Flight::default());
        inner
            .inflight
            .borrow_mut()
            .insert(question.clone(), flight.clone());
        // Completes the flight and unregisters it even if this future is
        // dropped mid-query, so joined lookups never hang.
        let mut guard = FlightGuard {
            inner,
            question,
            flight,
            result: Err(TempError::Io("lookup cancelled".into())),
        };
        let result = self.query_servers(question).await;
        let result = result.map(|parsed| {
            let mut cache = inner.cache.borrow_mut();
            cache.insert(&question.name, question.qtype, &parsed, inner.clock.now());
            let ttl = cache.ttl_of(&parsed);
            (parsed.lookup, ttl)
        });
        guard.result = result.clone();
        result
    }

    async fn query_servers(&self, question: &Question) -> Result<Parsed, TempError> {
        let inner = &self.inner;
        let servers = &inner.config.nameservers;
        if servers.is_empty() {
            return Err(TempError::NoNameservers);
        }
        let _permit = inner
            .permits
            .acquire_permit(1)
            .await
            .map_err(|e| TempError::Io(e.to_string()))?;
        let start = if inner.config.rotate {
            let n = inner.next_server.get();
            inner.next_server.set(n.wrapping_add(1));
            n
        } else {
            0
        };
        let mut last = TempError::Timeout;
        for _ in 0..inner.config.attempts.max(1) {
            for k in 0..servers.len() {
                let server = servers[(start + k) % servers.len()];
                match self.try_server(server, question).await {
                    Ok(Response::Final(parsed)) => return Ok(parsed),
                    Ok(Response::ServerError { rcode }) => last = TempError::ServerError { rcode },
                    Ok(Response::Truncated) => {
                        last = TempError::Malformed("truncated answer over TCP".into())
                    }
                    Err(e) => last = e,
                }
            }
        }
        Err(last)
    }

    /// One try against one server: UDP, then TCP if truncated, all within
    /// one timeout.
    async fn try_server(
        &self,
        server: SocketAddr,
        question: &Question,
    ) -> Result<Response, TempError> {
        let inner = &self.inner;
        let mut query = Vec::with_capacity(64);
        let id: u16 = inner.ids.borrow_mut().gen();
        encode_query(id, question, &mut query).map_err(wire_to_temp)?;
        let mut buf = inner.take_buffer();
        let exchange = async {
            let udp = self
                .udp_exchange(server, id, question, &query, &mut buf)
                .await;
            match udp {
                Ok(Response::Truncated) => {
                    self.tcp_exchange(server, id, question, &query, &mut buf)
                        .await
                }
                other => other,
            }
        };
        let result = glommio::timer::timeout(inner.config.timeout, async { Ok(exchange.await) })
            .await
            .unwrap_or_else(|_| {
                inner.bump(|s| s.timeouts += 1);
                Err(TempError::Timeout)
            });
        inner.return_buffer(buf);
        result
    }

    async fn udp_exchange(
        &self,
        server: SocketAddr,
        id: u16,
        question: &Question,
        query: &[u8],
        buf: &mut [u8],
    ) -> Result<Response, TempError> {
        let local: SocketAddr = match server {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(local).map_err(glommio_to_temp)?;
        socket.connect(server).await.map_err(glommio_to_temp)?;
        self.inner.bump(|s| s.udp_queries += 1);
        socket.send(query).await.map_err(glommio_to_temp)?;
        let mut malformed = None;
        let buf = &mut buf[..UDP_RESPONSE_BYTES_MAX];
        for _ in 0..STRAY_DATAGRAMS_MAX {
            let n = socket.recv(buf).await.map_err(glommio_to_temp)?;
            if n == buf.len() {
                return Ok(Response::Truncated);
            }
            match parse_response(&buf[..n], id, question) {
                Ok(response) => return Ok(response),
                // Not ours (or garbage): keep listening for the real one.
                Err(WireError::Mismatch) => {}
                Err(e) => malformed = Some(e),
            }
        }
        Err(malformed.map_or(TempError::Timeout, wire_to_temp))
    }

    async fn tcp_exchange(
        &self,
        server: SocketAddr,
        id: u16,
        question: &Question,
        query: &[u8],
        buf: &mut [u8],
    ) -> Result<Response, TempError> {
        let mut stream = TcpStream::connect(server).await.map_err(glommio_to_temp)?;
        self.inner.bump(|s| s.tcp_queries += 1);
        // RFC 1035 §4.2.2: each message is prefixed by its two-byte length.
        let len = u16::try_from(query.len())
            .map_err(|_| TempError::Malformed("query too long for TCP".into()))?;
        let mut framed = Vec::with_capacity(query.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(query);
        stream.write_all(&framed).await.map_err(io_to_temp)?;
        stream.flush().await.map_err(io_to_temp)?;
        let mut prefix = [0u8; 2];
        stream.read_exact(&mut prefix).await.map_err(io_to_temp)?;
        let n = usize::from(u16::from_be_bytes(prefix));
        let body = buf
            .get_mut(..n)
            .ok_or_else(|| TempError::Malformed("TCP answer longer than the buffer".into()))?;
        stream.read_exact(body).await.map_err(io_to_temp)?;
        parse_response(body, id, question).map_err(wire_to_temp)
    }
}

impl Inner {
    fn bump(&self, f: impl FnOnce(&mut ResolverStats)) {
        let mut stats = self.stats.get();
        f(&mut stats);
        self.stats.set(stats);
    }

    fn take_buffer(&self) -> Vec<u8> {
        self.buffers
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| vec![0; RESPONSE_BYTES_MAX])
    }

    /// Keeps at most `outstanding_max` buffers for reuse.
    fn return_buffer(&self, buf: Vec<u8>) {
        let mut buffers = self.buffers.borrow_mut();
        if buffers.len() < self.config.outstanding_max {
            buffers.push(buf);
        }
    }
}

fn glommio_to_temp<T>(e: glommio::GlommioError<T>) -> TempError {
    TempError::Io(e.to_string())
}

fn io_to_temp(e: std::io::Error) -> TempError {
    TempError::Io(e.to_string())
}

fn wire_to_temp(e: WireError) -> TempError {
    match e {
        WireError::Mismatch => TempError::Malformed("answer does not match the query".into()),
        WireError::Malformed(s) | WireError::Encode(s) => TempError::Malformed(s),
    }
}

/// An answer with how long it stays valid (see [`Resolver::lookup_ttl`]).
type TimedLookup = Result<(Lookup, Option<Duration>), TempError>;

/// A query in flight that other lookups of the same question wait on.
#[derive(Default)]
struct Flight {
    result: RefCell<Option<TimedLookup>>,
    wakers: RefCell<Vec<Waker>>,
}

struct FlightWait(Rc<Flight>);

impl Future for FlightWait {
    type Output = TimedLookup;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(result) = self.0.result.borrow().as_ref() {
            return Poll::Ready(result.clone());
        }
        let mut wakers = self.0.wakers.borrow_mut();
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

struct FlightGuard<'a> {
    inner: &'a Inner,
    question: &'a Question,
    flight: Rc<Flight>,
    result: TimedLookup,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        self.inner.inflight.borrow_mut().remove(self.question);
        *self.flight.result.borrow_mut() = Some(self.result.clone());
        for waker in self.flight.wakers.borrow_mut().drain(..) {
            waker.wake();
        }
    }
}
