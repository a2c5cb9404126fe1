//! Cost of building one message (envelope + headers + body) in the
//! generator: the harness's own per-message CPU outside the protocol and I/O.
//! `cargo bench -p sluice-bench --bench generate`

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice_bench::dist::{DomainDist, DomainShape};
use sluice_bench::message::{Envelope, LoadShape, MessageGenerator};

fn generate(c: &mut Criterion) {
    let mut group = c.benchmark_group("generate");
    for size in ["2k", "20k"] {
        let shape = Arc::new(LoadShape {
            sizes: size.parse().expect("valid size"),
            recipients: 1..=1,
            recipient_domains: DomainDist::new(1000, "bench.invalid", DomainShape::Zipf(1.1), &[])
                .expect("valid domains"),
            sender_domains: DomainDist::single("sender.invalid"),
            local_parts: 1000,
            run_id: "bench".into(),
            seed: 1,
        });
        let generator = MessageGenerator::new(shape);
        let (mut env, mut body) = (Envelope::default(), Vec::new());
        let mut n = 0u64;
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| {
                n += 1;
                generator.generate(n, 1_700_000_000_000_000_000 + n, &mut env, &mut body);
                body.len()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, generate);
criterion_main!(benches);
