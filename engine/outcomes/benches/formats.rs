//! Accounting lines and DSNs per second: the per-event formatting cost the
//! engine pays off its hot path.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice_outcomes::dsn::{build, Action, DsnRecipient, DsnRequest};
use sluice_outcomes::{Category, EventKind, Record, ResponseRecord};
use sluice_smtp::{EnhancedCode, Reply, ReplyCode};

fn record() -> Record<'static> {
    Record {
        kind: EventKind::Bounce,
        id: "0001-abcd".into(),
        sender: "bounces@example.org".into(),
        recipient: "bob@example.net".into(),
        queue: "example.net".into(),
        site: Some("gmail".into()),
        source: Some("pool-a".into()),
        size_bytes: 12_345,
        response: Some(ResponseRecord {
            code: 550,
            enhanced: EnhancedCode::new(5, 1, 1),
            text: "The email account that you tried to reach does not exist. - gsmtp".into(),
        }),
        peer_host: Some("gmail-smtp-in.l.google.com".into()),
        peer_addr: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 25))),
        local_addr: Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7))),
        created_unix_ms: 1_795_430_000_000,
        event_unix_ms: 1_795_434_000_123,
        attempts: 1,
        bounce_category: Some(Category::BadMailbox),
        tls: None,
        tenant: Some("acme".into()),
        campaign: Some("spring-sale".into()),
    }
}

fn bench(c: &mut Criterion) {
    let r = record();
    let mut group = c.benchmark_group("accounting");
    group.throughput(Throughput::Elements(1));
    group.bench_function("csv_line", |b| {
        let mut out = Vec::with_capacity(1 << 16);
        b.iter(|| {
            out.clear();
            std::hint::black_box(&r).write_csv_line(&mut out);
            std::hint::black_box(out.len())
        })
    });
    group.bench_function("json_line", |b| {
        let mut out = Vec::with_capacity(1 << 16);
        b.iter(|| {
            out.clear();
            // Invariant: `record()` serialises (checked by the unit tests).
            std::hint::black_box(&r)
                .write_json_line(&mut out)
                .expect("serialises");
            std::hint::black_box(out.len())
        })
    });
    group.finish();

    let reply = Reply {
        // Invariant: literal codes.
        code: ReplyCode::new(550).expect("valid"),
        enhanced: EnhancedCode::new(5, 1, 1),
        text: "The email account that you tried to reach does not exist. - gsmtp".into(),
    };
    let rcpt = DsnRecipient {
        final_recipient: "bob@example.net",
        original_recipient: None,
        notify: None,
        action: Action::Failed,
        status: reply.enhanced.expect("set above"),
        diagnostic: Some(&reply),
        remote_mta: Some("gmail-smtp-in.l.google.com"),
        last_attempt: Some(UNIX_EPOCH + Duration::from_secs(1_795_434_000)),
        will_retry_until: None,
    };
    let original = "From: a@example.org\r\nTo: bob@example.net\r\nSubject: hello\r\n\r\n"
        .to_owned()
        + &"body line\r\n".repeat(200);
    let rcpts = [rcpt];
    let req = DsnRequest {
        reporting_mta: "mta1.sluice.example",
        from: "MAILER-DAEMON@mta1.sluice.example",
        original_sender: "sender@example.org",
        envid: Some("QQ314159"),
        ret: None,
        arrival_date: UNIX_EPOCH + Duration::from_secs(1_795_430_000),
        date: UNIX_EPOCH + Duration::from_secs(1_795_434_000),
        message_id: "dsn.1@mta1.sluice.example",
        recipients: &rcpts,
        original: original.as_bytes(),
    };
    let mut group = c.benchmark_group("dsn");
    group.throughput(Throughput::Elements(1));
    group.bench_function("build_hdrs", |b| {
        b.iter(|| build(std::hint::black_box(&req)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
