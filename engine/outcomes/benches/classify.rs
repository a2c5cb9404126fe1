//! Classifications per second with the default rules, over a mix of real
//! provider replies (hits early, hits late, and no hit at all).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice_outcomes::Classifier;
use sluice_smtp::{EnhancedCode, Reply, ReplyCode};

fn reply(code: u16, e: (u8, u16, u16), text: &'static str) -> Reply {
    Reply {
        // Invariant: the literals below are valid codes.
        code: ReplyCode::new(code).expect("valid code"),
        enhanced: EnhancedCode::new(e.0, e.1, e.2),
        text: text.into(),
    }
}

fn bench(c: &mut Criterion) {
    let classifier = Classifier::default_rules();
    let replies = [
        reply(550, (5, 1, 1), "The email account that you tried to reach does not exist. Please try\ndouble-checking the recipient's email address for typos or\nunnecessary spaces. https://support.google.com/mail/?p=NoSuchUser d2e1a72fcca58-7a1b2c3d4e5f.123 - gsmtp"),
        reply(421, (4, 7, 0), "[TSS04] Messages from 192.0.2.10 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes"),
        reply(550, (5, 7, 1), "Service unavailable, Client host [192.0.2.10] blocked using Spamhaus. To request removal from this list see https://www.spamhaus.org/query/ip/192.0.2.10 AS(1450) [BN8NAM11FT023.eop-nam11.prod.protection.outlook.com]"),
        reply(451, (4, 3, 0), "Mail server temporarily rejected message. d2e1a72fcca58-7a1b2c3d4e5f.123 - gsmtp"),
        reply(552, (5, 2, 2), "The email account that you tried to reach is over quota. Please direct\nthe recipient to https://support.google.com/mail/?p=OverQuotaPerm"),
        reply(550, (5, 4, 1), "Recipient address rejected: Access denied. AS(201806281) [DM6NAM10FT015.eop-nam10.prod.protection.outlook.com]"),
    ];
    let mut group = c.benchmark_group("classify");
    group.throughput(Throughput::Elements(replies.len() as u64));
    group.bench_function("default_rules_mix", |b| {
        let mut scratch = String::with_capacity(512);
        b.iter(|| {
            for r in &replies {
                std::hint::black_box(
                    classifier.classify_with(std::hint::black_box(r), &mut scratch),
                );
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
