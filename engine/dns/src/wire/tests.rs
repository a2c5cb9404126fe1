//! Wire-format tests on messages built with hickory-proto, the same
//! encoder a real server uses.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use proptest::prelude::*;

use super::*;

fn name(s: &str) -> Name {
    Name::from_str(s).unwrap()
}

fn soa(ttl: u32, minimum: u32) -> Record {
    Record::from_rdata(
        name("test."),
        ttl,
        RData::SOA(SOA::new(
            name("ns.test."),
            name("hostmaster.test."),
            1,
            3600,
            600,
            86400,
            minimum,
        )),
    )
}

/// A response to the query `encode_query` produced for `question`.
fn response_to(id: u16, question: &Question, rcode: ResponseCode) -> Message {
    let mut query = Vec::new();
    encode_query(id, question, &mut query).unwrap();
    let request = Message::from_vec(&query).unwrap();
    let mut response = Message::new(id, MessageType::Response, OpCode::Query);
    response.metadata.response_code = rcode;
    response.metadata.recursion_available = true;
    response.add_queries(request.queries.clone());
    response
}

fn bytes(message: &Message) -> Vec<u8> {
    message.to_vec().unwrap()
}

#[test]
fn query_round_trips() {
    let q = Question::new("example.com", QueryType::Mx);
    let mut out = vec![1, 2, 3];
    encode_query(0xbeef, &q, &mut out).unwrap();
    let m = Message::from_vec(&out).unwrap();
    assert_eq!(m.metadata.id, 0xbeef);
    assert!(m.metadata.recursion_desired);
    assert_eq!(m.metadata.message_type, MessageType::Query);
    assert_eq!(m.queries.len(), 1);
    assert_eq!(m.queries[0].query_type(), RecordType::MX);
    assert_eq!(m.queries[0].name(), &name("example.com."));
    assert_eq!(m.edns.as_ref().unwrap().max_payload(), EDNS_PAYLOAD_BYTES);
}

#[test]
fn mx_answer_with_min_ttl() {
    let q = Question::new("example.com", QueryType::Mx);
    let mut m = response_to(7, &q, ResponseCode::NoError);
    m.add_answer(Record::from_rdata(
        name("example.com."),
        300,
        RData::MX(MX::new(10, name("MX1.Example.com."))),
    ));
    m.add_answer(Record::from_rdata(
        name("example.com."),
        120,
        RData::MX(MX::new(20, name("mx2.example.com."))),
    ));
    // An unrelated record for another owner is ignored.
    m.add_answer(Record::from_rdata(
        name("other.com."),
        5,
        RData::MX(MX::new(1, name("x.other.com."))),
    ));
    let r = parse_response(&bytes(&m), 7, &q).unwrap();
    let Response::Final(p) = r else {
        panic!("{r:?}")
    };
    assert_eq!(p.ttl, Some(Duration::from_secs(120)));
    let Lookup::Records(data) = p.lookup else {
        panic!()
    };
    assert_eq!(
        &*data,
        &[
            Rdata::Mx {
                preference: 10,
                exchange: "mx1.example.com".into()
            },
            Rdata::Mx {
                preference: 20,
                exchange: "mx2.example.com".into()
            },
        ]
    );
}

#[test]
fn null_mx_exchange_is_empty() {
    let q = Question::new("nomail.test", QueryType::Mx);
    let mut m = response_to(1, &q, ResponseCode::NoError);
    m.add_answer(Record::from_rdata(
        name("nomail.test."),
        60,
        RData::MX(MX::new(0, Name::root())),
    ));
    let Response::Final(p) = parse_response(&bytes(&m), 1, &q).unwrap() else {
        panic!()
    };
    assert_eq!(
        p.lookup,
        Lookup::Records(
            vec![Rdata::Mx {
                preference: 0,
                exchange: String::new()
            }]
            .into()
        )
    );
}

#[test]
fn addresses_and_cname_chain() {
    let q = Question::new("www.test", QueryType::Aaaa);
    let mut m = response_to(2, &q, ResponseCode::NoError);
    m.add_answer(Record::from_rdata(
        name("www.test."),
        50,
        RData::CNAME(CNAME(name("a.test."))),
    ));
    m.add_answer(Record::from_rdata(
        name("a.test."),
        500,
        RData::CNAME(CNAME(name("b.test."))),
    ));
    m.add_answer(Record::from_rdata(
        name("b.test."),
        400,
        RData::AAAA(AAAA(Ipv6Addr::LOCALHOST)),
    ));
    let Response::Final(p) = parse_response(&bytes(&m), 2, &q).unwrap() else {
        panic!()
    };
    assert_eq!(p.ttl, Some(Duration::from_secs(50)));
    assert_eq!(
        p.lookup,
        Lookup::Records(vec![Rdata::Addr(Ipv6Addr::LOCALHOST.into())].into())
    );
}

#[test]
fn unfinished_cname_is_an_alias_and_loops_end() {
    let q = Question::new("www.test", QueryType::A);
    let mut m = response_to(3, &q, ResponseCode::NoError);
    m.add_answer(Record::from_rdata(
        name("www.test."),
        30,
        RData::CNAME(CNAME(name("target.test."))),
    ));
    let Response::Final(p) = parse_response(&bytes(&m), 3, &q).unwrap() else {
        panic!()
    };
    assert_eq!(p.lookup, Lookup::Alias("target.test".into()));

    // With an SOA the server finished the chain: NODATA for the target.
    m.add_authority(soa(100, 40));
    let Response::Final(p) = parse_response(&bytes(&m), 3, &q).unwrap() else {
        panic!()
    };
    assert_eq!(
        p,
        Parsed {
            lookup: Lookup::NoData,
            ttl: Some(Duration::from_secs(40))
        }
    );

    // A loop terminates and is reported as an alias to re-ask (the MX
    // machine bounds re-asks).
    let mut m = response_to(4, &q, ResponseCode::NoError);
    m.add_answer(Record::from_rdata(
        name("www.test."),
        30,
        RData::CNAME(CNAME(name("x.test."))),
    ));
    m.add_answer(Record::from_rdata(
        name("x.test."),
        30,
        RData::CNAME(CNAME(name("www.test."))),
    ));
    let Response::Final(p) = parse_response(&bytes(&m), 4, &q).unwrap() else {
        panic!()
    };
    assert!(matches!(p.lookup, Lookup::Alias(_)));
}

#[test]
fn negative_answers_use_soa_minimum() {
    let q = Question::new("gone.test", QueryType::Mx);
    let mut m = response_to(5, &q, ResponseCode::NXDomain);
    m.add_authority(soa(3600, 300));
    assert_eq!(
        parse_response(&bytes(&m), 5, &q).unwrap(),
        Response::Final(Parsed {
            lookup: Lookup::NxDomain,
            ttl: Some(Duration::from_secs(300))
        })
    );
    let mut m = response_to(5, &q, ResponseCode::NoError);
    m.add_authority(soa(60, 300));
    assert_eq!(
        parse_response(&bytes(&m), 5, &q).unwrap(),
        Response::Final(Parsed {
            lookup: Lookup::NoData,
            ttl: Some(Duration::from_secs(60))
        })
    );
    // No SOA: not cacheable (RFC 2308 §5).
    let m = response_to(5, &q, ResponseCode::NoError);
    assert_eq!(
        parse_response(&bytes(&m), 5, &q).unwrap(),
        Response::Final(Parsed {
            lookup: Lookup::NoData,
            ttl: None
        })
    );
    // Records of other types only (a TXT for the name): NODATA.
    let mut m = response_to(5, &q, ResponseCode::NoError);
    m.add_answer(Record::from_rdata(
        name("gone.test."),
        60,
        RData::TXT(TXT::new(vec!["x".into()])),
    ));
    let Response::Final(p) = parse_response(&bytes(&m), 5, &q).unwrap() else {
        panic!()
    };
    assert_eq!(p.lookup, Lookup::NoData);
}

#[test]
fn truncation_and_server_errors() {
    let q = Question::new("big.test", QueryType::Mx);
    let mut m = response_to(6, &q, ResponseCode::NoError);
    m.metadata.truncation = true;
    assert_eq!(
        parse_response(&bytes(&m), 6, &q).unwrap(),
        Response::Truncated
    );
    for (rcode, value) in [
        (ResponseCode::ServFail, 2),
        (ResponseCode::Refused, 5),
        (ResponseCode::FormErr, 1),
    ] {
        let m = response_to(6, &q, rcode);
        assert_eq!(
            parse_response(&bytes(&m), 6, &q).unwrap(),
            Response::ServerError { rcode: value }
        );
    }
}

#[test]
fn mismatches_are_rejected() {
    let q = Question::new("example.com", QueryType::A);
    let mut m = response_to(9, &q, ResponseCode::NoError);
    m.add_answer(Record::from_rdata(
        name("example.com."),
        60,
        RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
    ));
    let good = bytes(&m);
    assert!(matches!(
        parse_response(&good, 9, &q),
        Ok(Response::Final(_))
    ));
    assert_eq!(parse_response(&good, 10, &q), Err(WireError::Mismatch));
    assert_eq!(
        parse_response(&good, 9, &Question::new("example.org", QueryType::A)),
        Err(WireError::Mismatch)
    );
    assert_eq!(
        parse_response(&good, 9, &Question::new("example.com", QueryType::Aaaa)),
        Err(WireError::Mismatch)
    );
    // Our own query echoed back is not a response.
    let mut query = Vec::new();
    encode_query(9, &q, &mut query).unwrap();
    assert_eq!(parse_response(&query, 9, &q), Err(WireError::Mismatch));
    // Two questions.
    let mut two = m.clone();
    two.add_query(Query::query(name("example.com."), RecordType::A));
    assert_eq!(
        parse_response(&bytes(&two), 9, &q),
        Err(WireError::Mismatch)
    );
    // Mixed case in the echoed question (0x20 encoding) still matches.
    let mut upper = response_to(
        9,
        &Question::new("EXAMPLE.com", QueryType::A),
        ResponseCode::NoError,
    );
    upper.add_answer(Record::from_rdata(
        name("Example.COM."),
        60,
        RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
    ));
    assert!(matches!(
        parse_response(&bytes(&upper), 9, &q),
        Ok(Response::Final(_))
    ));
    assert!(matches!(
        parse_response(&good[..good.len() - 3], 9, &q),
        Err(WireError::Malformed(_))
    ));
    assert!(matches!(
        parse_response(&[], 9, &q),
        Err(WireError::Malformed(_))
    ));
}

#[test]
fn names_normalise() {
    assert_eq!(normalize_name("Example.COM.").unwrap(), "example.com");
    assert_eq!(
        normalize_name("bücher.example").unwrap(),
        "xn--bcher-kva.example"
    );
    assert_eq!(normalize_name(""), Err(NameError::Empty));
    assert_eq!(normalize_name("."), Err(NameError::Empty));
    assert!(normalize_name("a..b").is_err());
    assert!(normalize_name(&"a".repeat(64)).is_err());
    let long = vec!["abcdefghi"; 26].join(".");
    assert_eq!(normalize_name(&long), Err(NameError::TooLong));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600), id in any::<u16>()) {
        let q = Question::new("example.com", QueryType::Mx);
        let _ = parse_response(&data, id, &q);
    }

    #[test]
    fn mutated_answers_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let q = Question::new("example.com", QueryType::Mx);
        let mut m = response_to(1, &q, ResponseCode::NoError);
        m.add_answer(Record::from_rdata(name("example.com."), 300, RData::CNAME(CNAME(name("mx.example.com.")))));
        m.add_answer(Record::from_rdata(name("mx.example.com."), 300, RData::MX(MX::new(10, name("mx1.example.com.")))));
        m.add_authority(soa(60, 30));
        let mut data = bytes(&m);
        for (index, value) in flips {
            let i = index.index(data.len());
            data[i] = value;
        }
        let _ = parse_response(&data, 1, &q);
    }

    #[test]
    fn normalize_is_idempotent(s in "[a-zA-Z0-9-]{1,20}(\\.[a-zA-Z0-9-]{1,20}){0,4}\\.?") {
        if let Ok(n) = normalize_name(&s) {
            prop_assert_eq!(normalize_name(&n).unwrap(), n.clone());
            prop_assert_eq!(n.to_ascii_lowercase(), n);
        }
    }
}
