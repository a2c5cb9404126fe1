//! In-process delivery tests: a real spool in a temp dir, the shard's
//! queues, the delivery driver with shaping, and a scripted SMTP server on
//! loopback that counts transactions and concurrent connections.

// std
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

// external
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use sluice_shaping::config::Rules;
use sluice_shaping::transport::mesh;
use sluice_spool::fs::FsStorage;
use sluice_spool::{NewMessage, Recipient, Spool, SpoolConfig};

// crate
use super::*;
use crate::config::Config;
use crate::queue::{Accepted, AcceptedRecipient, DomainRecipients, QueueConfig, Queues, Sites};

/// What the scripted server saw.
#[derive(Default)]
struct Seen {
    transactions: Cell<usize>,
    open: Cell<usize>,
    open_max: Cell<usize>,
    rcpt_seen: Cell<usize>,
}

/// A minimal ESMTP server with PIPELINING: answers every RCPT with
/// `rcpt_reply(n)` for the n-th RCPT it sees, 250 to the rest, and counts.
async fn serve(stream: TcpStream, seen: Rc<Seen>, rcpt_reply: Rc<dyn Fn(usize) -> &'static str>) {
    seen.open.set(seen.open.get() + 1);
    seen.open_max.set(seen.open_max.get().max(seen.open.get()));
    let mut s = stream;
    let mut buf = vec![0u8; 65536];
    let mut pending: Vec<u8> = Vec::new();
    let mut in_data = false;
    let mut accepted = 0usize;
    let _ = s.write_all(b"220 test ESMTP\r\n").await;
    'conn: loop {
        let n = match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        let mut out = Vec::new();
        loop {
            if in_data {
                let Some(end) = pending.windows(5).position(|w| w == b"\r\n.\r\n") else {
                    break;
                };
                pending.drain(..end + 5);
                in_data = false;
                if accepted > 0 {
                    seen.transactions.set(seen.transactions.get() + 1);
                }
                accepted = 0;
                out.extend_from_slice(b"250 2.0.0 ok\r\n");
                continue;
            }
            let Some(eol) = pending.windows(2).position(|w| w == b"\r\n") else {
                break;
            };
            let line: Vec<u8> = pending.drain(..eol + 2).collect();
            let upper = String::from_utf8_lossy(&line).to_ascii_uppercase();
            if upper.starts_with("EHLO") {
                out.extend_from_slice(b"250-test\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n");
            } else if upper.starts_with("RCPT") {
                let k = seen.rcpt_seen.get();
                seen.rcpt_seen.set(k + 1);
                let reply = rcpt_reply(k);
                accepted += usize::from(reply.starts_with('2'));
                out.extend_from_slice(reply.as_bytes());
            } else if upper.starts_with("DATA") {
                out.extend_from_slice(b"354 go\r\n");
                in_data = true;
                // The CRLF that ended DATA starts the body's first line:
                // an empty body is just ".\r\n".
                pending.splice(0..0, *b"\r\n");
            } else if upper.starts_with("QUIT") {
                out.extend_from_slice(b"221 bye\r\n");
                let _ = s.write_all(&out).await;
                break 'conn;
            } else {
                out.extend_from_slice(b"250 2.0.0 ok\r\n");
            }
        }
        if !out.is_empty() && s.write_all(&out).await.is_err() {
            break;
        }
    }
    seen.open.set(seen.open.get() - 1);
}

struct Setup {
    spool: Spool<FsStorage>,
    queues: Rc<RefCell<Queues>>,
    stop: Rc<Cell<bool>>,
    task: glommio::Task<DeliveryStats>,
}

fn setup(dir: &std::path::Path, port: u16, rules: Option<&str>) -> Setup {
    let text = format!(
        "hostname = \"sluice.test\"\n[spool]\ndir = \"{spool}\"\n[delivery]\ndsn = false\nretry = \"50ms\"\n\
         reply_timeout = \"5s\"\nidle_close = \"100ms\"\nlog_dir = \"{log}\"\nlog_flush = \"10ms\"\n\
         [[route]]\npattern = \"*\"\nhosts = [\"127.0.0.1:{port}\"]\n",
        spool = dir.join("spool").display(),
        log = dir.join("log").display(),
    );
    let config = Rc::new(Config::parse("test.toml", &text, None).expect("test config"));
    let storage = FsStorage::open(&dir.join("spool"), 0).expect("spool dir");
    let (spool, _) = Spool::open(storage, SpoolConfig::default()).expect("spool opens");
    let queues = Rc::new(RefCell::new(Queues::new(
        Sites::from_routes(&config.routes),
        QueueConfig::from_settings(&config.delivery),
    )));
    let stop = Rc::new(Cell::new(false));
    let flag = Rc::clone(&stop);
    let ctx = DeliveryContext {
        index: 0,
        config,
        spool: spool.clone(),
        queues: Rc::clone(&queues),
        stopping: Rc::new(move || flag.get()),
    };
    let link = rules.map(|r| ShapingLink {
        rules: Rules::parse(r, "rules.toml").expect("test rules"),
        link: mesh(1, 64).pop().expect("one link"),
        shards: 1,
    });
    let task = start_with(ctx, link);
    Setup {
        spool,
        queues,
        stop,
        task,
    }
}

/// Appends `n` one-recipient messages to `domain` and queues them.
fn inject(s: &Setup, n: usize, domain: &str) {
    for i in 0..n {
        let addr = format!("user{i}@{domain}");
        let rcpts = [Recipient {
            address: addr.as_bytes(),
            dsn: b"",
        }];
        let now = now_unix_ms();
        let (id, rec) = s
            .spool
            .append(&NewMessage {
                sender: b"from@origin.test",
                dsn: b"",
                tenant: b"",
                campaign: b"",
                queue: b"",
                recipients: &rcpts,
                arrival_unix_ms: now,
                expiry_unix_ms: now + 3_600_000,
                body: b"Subject: t\r\n\r\n.dot line\r\nbody\r\n",
            })
            .expect("append");
        s.queues.borrow_mut().enqueue(Accepted {
            id,
            rec,
            arrival_unix_ms: now,
            expiry_unix_ms: now + 3_600_000,
            sender: "from@origin.test".into(),
            pool: None,
            tenant: None,
            domains: vec![DomainRecipients {
                domain: domain.into(),
                recipients: vec![AcceptedRecipient {
                    index: 0,
                    address: addr,
                    dsn: Vec::new(),
                }],
            }],
        });
    }
}

fn run_case(
    rules: Option<&'static str>,
    rcpt_reply: Rc<dyn Fn(usize) -> &'static str>,
    n: usize,
) -> (DeliveryStats, Rc<Seen>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    let ex = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(1 << 20)
        .make()
        .expect("executor");
    ex.run(async move {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = match listener.local_addr().expect("addr") {
            SocketAddr::V4(a) => a.port(),
            SocketAddr::V6(a) => a.port(),
        };
        let seen = Rc::new(Seen::default());
        let seen2 = Rc::clone(&seen);
        let accept = glommio::spawn_local(async move {
            while let Ok(stream) = listener.accept().await {
                glommio::spawn_local(serve(stream, Rc::clone(&seen2), Rc::clone(&rcpt_reply)))
                    .detach();
            }
        });
        let s = setup(&path, port, rules);
        let sync = s.spool.spawn_sync_task();
        inject(&s, n, "shaped.test");
        let started = Instant::now();
        while !s.queues.borrow().is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "delivery did not finish: {:?}",
                s.queues.borrow().counts()
            );
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        s.stop.set(true);
        let stats = s.task.await;
        s.spool.close();
        sync.await;
        drop(accept);
        (stats, seen)
    })
}

#[test]
fn delivers_everything_through_pooled_pipelined_connections() {
    let (stats, seen) = run_case(None, Rc::new(|_| "250 2.1.5 ok\r\n"), 200);
    assert_eq!(stats.delivered, 200);
    assert_eq!(seen.transactions.get(), 200);
    assert!(seen.open_max.get() <= 32, "pool bound");
    assert_eq!(stats.deferred + stats.bounced + stats.expired, 0);
}

#[test]
fn transient_and_permanent_rcpt_failures_settle_once() {
    // Every 4th RCPT gets 451 (retried), RCPT number 1 gets 550 (bounced).
    let reply: Rc<dyn Fn(usize) -> &'static str> = Rc::new(|k| match k {
        1 => "550 5.1.1 no such user\r\n",
        k if k % 4 == 0 => "451 4.3.0 try later\r\n",
        _ => "250 2.1.5 ok\r\n",
    });
    let (stats, seen) = run_case(None, reply, 40);
    assert_eq!(stats.bounced, 1);
    assert_eq!(stats.delivered, 39);
    assert!(stats.deferred > 0);
    assert_eq!(seen.transactions.get() as u64, stats.delivered);
}

#[test]
fn shaping_limits_connections_across_the_pool() {
    let rules = r#"
[default]
max_connections = 1
max_message_rate = "1_000/s"
retry_after = "50ms"
"#;
    let (stats, seen) = run_case(Some(rules), Rc::new(|_| "250 2.1.5 ok\r\n"), 100);
    assert_eq!(stats.delivered, 100);
    assert_eq!(seen.open_max.get(), 1, "max_connections = 1 from the rules");
}

#[test]
fn a_shaping_bounce_rule_turns_a_4xx_into_a_bounce() {
    let rules = r#"
[default]
retry_after = "50ms"

[[default.backoff]]
name = "mailbox-gone"
code = "451"
text = "(?i)gone"
action = "bounce"
"#;
    let reply: Rc<dyn Fn(usize) -> &'static str> = Rc::new(|k| {
        if k % 2 == 0 {
            "451 4.2.1 mailbox gone\r\n"
        } else {
            "250 2.1.5 ok\r\n"
        }
    });
    let (stats, _) = run_case(Some(rules), reply, 10);
    assert_eq!(stats.bounced + stats.delivered, 10);
    assert!(stats.bounced > 0);
    assert_eq!(stats.deferred, 0, "the rule bounces instead of retrying");
}
