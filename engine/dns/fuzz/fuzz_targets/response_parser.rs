//! The response parser: never panics, and what it accepts is coherent
//! (records are never empty; an answer is only accepted for our id).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_dns::wire::{parse_response, Response};
use sluice_dns::{Lookup, QueryType, Question};

fuzz_target!(|data: &[u8]| {
    let id = match data {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => 0,
    };
    for qtype in QueryType::ALL {
        let q = Question::new("example.com", qtype);
        if let Ok(Response::Final(parsed)) = parse_response(data, id, &q) {
            if let Lookup::Records(records) = &parsed.lookup {
                assert!(!records.is_empty());
                assert!(parsed.ttl.is_some());
            }
        }
        // Any other id must be refused (the id is the first two bytes).
        assert!(parse_response(data, id.wrapping_add(1), &q).is_err());
    }
});
