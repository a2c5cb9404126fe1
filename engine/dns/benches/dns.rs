//! Throughput of the sans-io DNS core: cache hits and inserts, response
//! parsing, query encoding, and the MX state machine fed from memory.
//!
//! Run: `cargo bench -p sluice-dns --bench dns`

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::rc::Rc;
use std::str::FromStr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, MX, SOA};
use hickory_proto::rr::{Name, RData, Record};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use sluice_dns::wire::{encode_query, parse_response};
use sluice_dns::{
    AddressPolicy, Cache, CacheConfig, Lookup, MxConfig, MxLookup, Parsed, QueryType, Question,
    Rdata, Step,
};

const NAMES: usize = 10_000;

fn names() -> Vec<String> {
    (0..NAMES).map(|i| format!("domain-{i}.example")).collect()
}

fn cache_benches(c: &mut Criterion) {
    let names = names();
    let t0 = Instant::now();
    let parsed = Parsed {
        lookup: Lookup::Records(Rc::from(vec![
            Rdata::Mx {
                preference: 10,
                exchange: "mx1.example.net".into(),
            },
            Rdata::Mx {
                preference: 20,
                exchange: "mx2.example.net".into(),
            },
        ])),
        ttl: Some(Duration::from_secs(3600)),
    };
    let mut cache = Cache::new(CacheConfig::default());
    for n in &names {
        cache.insert(n, QueryType::Mx, &parsed, t0);
    }
    let mut group = c.benchmark_group("cache");
    group.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    group.bench_function("hit_10k_entries", |b| {
        b.iter(|| {
            i = (i + 7919) % NAMES;
            black_box(cache.get(black_box(&names[i]), QueryType::Mx, t0))
        })
    });
    // Inserts into a full cache: every insert evicts.
    let mut small = Cache::new(CacheConfig {
        entries_max: 1024,
        ..CacheConfig::default()
    });
    group.bench_function("insert_evict_1k_entries", |b| {
        b.iter(|| {
            i = (i + 7919) % NAMES;
            small.insert(black_box(&names[i]), QueryType::A, &parsed, t0);
        })
    });
    group.finish();
}

fn response(id: u16, q: &Question, answers: Vec<Record>) -> Vec<u8> {
    let mut query = Vec::new();
    encode_query(id, q, &mut query).expect("encode");
    let request = Message::from_vec(&query).expect("decode our query");
    let mut m = Message::new(id, MessageType::Response, OpCode::Query);
    m.metadata.response_code = ResponseCode::NoError;
    m.add_queries(request.queries);
    m.add_answers(answers);
    m.to_vec().expect("encode response")
}

fn wire_benches(c: &mut Criterion) {
    let owner = Name::from_str("example.com.").expect("name");
    let mx_q = Question::new("example.com", QueryType::Mx);
    let mx_bytes = response(
        1,
        &mx_q,
        vec![
            Record::from_rdata(
                owner.clone(),
                300,
                RData::MX(MX::new(
                    10,
                    Name::from_str("mx1.example.com.").expect("name"),
                )),
            ),
            Record::from_rdata(
                owner.clone(),
                300,
                RData::MX(MX::new(
                    20,
                    Name::from_str("mx2.example.com.").expect("name"),
                )),
            ),
        ],
    );
    let a_q = Question::new("example.com", QueryType::A);
    let a_bytes = response(
        2,
        &a_q,
        vec![Record::from_rdata(
            owner.clone(),
            300,
            RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
        )],
    );
    let mut nx = Message::new(3, MessageType::Response, OpCode::Query);
    nx.metadata.response_code = ResponseCode::NXDomain;
    nx.add_queries(
        Message::from_vec(&{
            let mut q = Vec::new();
            encode_query(3, &mx_q, &mut q).expect("encode");
            q
        })
        .expect("decode")
        .queries,
    );
    nx.add_authority(Record::from_rdata(
        Name::from_str("com.").expect("name"),
        900,
        RData::SOA(SOA::new(owner.clone(), owner, 1, 1800, 900, 604800, 86400)),
    ));
    let nx_bytes = nx.to_vec().expect("encode");

    let mut group = c.benchmark_group("wire");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_mx_2_records", |b| {
        b.iter(|| parse_response(black_box(&mx_bytes), 1, &mx_q).expect("parse"))
    });
    group.bench_function("parse_a_1_record", |b| {
        b.iter(|| parse_response(black_box(&a_bytes), 2, &a_q).expect("parse"))
    });
    group.bench_function("parse_nxdomain_soa", |b| {
        b.iter(|| parse_response(black_box(&nx_bytes), 3, &mx_q).expect("parse"))
    });
    let mut out = Vec::with_capacity(512);
    group.bench_function("encode_query", |b| {
        b.iter(|| encode_query(black_box(7), &mx_q, &mut out).expect("encode"))
    });
    group.finish();
}

fn mx_benches(c: &mut Criterion) {
    let config = MxConfig {
        policy: AddressPolicy::default(),
        ..MxConfig::default()
    };
    let mx = Lookup::Records(Rc::from(vec![
        Rdata::Mx {
            preference: 10,
            exchange: "mx1.example.net".into(),
        },
        Rdata::Mx {
            preference: 10,
            exchange: "mx2.example.net".into(),
        },
    ]));
    let a = Lookup::Records(Rc::from(vec![Rdata::Addr(
        "192.0.2.1".parse().expect("ip"),
    )]));
    let mut rng = SmallRng::seed_from_u64(1);
    let mut group = c.benchmark_group("mx");
    group.throughput(Throughput::Elements(1));
    group.bench_function("resolve_2_hosts_from_memory", |b| {
        b.iter(|| {
            let mut lookup = MxLookup::new("example.com", &config);
            loop {
                match lookup.step() {
                    Step::Done(outcome) => break black_box(outcome),
                    Step::Wait => unreachable!("all answered"),
                    Step::Ask(questions) => {
                        for q in questions {
                            let answer = match q.qtype {
                                QueryType::Mx => mx.clone(),
                                QueryType::A => a.clone(),
                                QueryType::Aaaa => Lookup::NoData,
                            };
                            lookup.answer(&q, Ok(answer), &mut rng);
                        }
                    }
                }
            }
        })
    });
    group.finish();
}

criterion_group!(benches, cache_benches, wire_benches, mx_benches);
criterion_main!(benches);
