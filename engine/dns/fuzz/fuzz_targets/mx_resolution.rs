//! The MX state machine fed with fuzz bytes as wire-format answers: it
//! ends within a bounded number of steps and a resolved outcome only
//! lists hosts with permitted addresses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use sluice_dns::wire::{encode_query, parse_response, Response};
use sluice_dns::{AddressPolicy, Lookup, MxConfig, MxLookup, MxOutcome, Step, TempError};

fuzz_target!(|data: &[u8]| {
    let config = MxConfig {
        policy: AddressPolicy::allow_loopback(),
        hosts_max: 4,
        ..MxConfig::default()
    };
    let mut rng = SmallRng::seed_from_u64(data.len() as u64);
    let mut lookup = MxLookup::new("example.com", &config);
    // Each answer is a length-prefixed chunk of the input.
    let mut rest = data;
    let mut query = Vec::new();
    for _ in 0..64 {
        match lookup.step() {
            Step::Done(outcome) => {
                if let MxOutcome::Resolved { hosts, .. } = outcome {
                    assert!(!hosts.is_empty() && hosts.len() <= 4);
                    for h in hosts {
                        assert!(!h.addrs.is_empty());
                        assert!(h.addrs.iter().all(|ip| config.policy.permits(*ip)));
                    }
                }
                return;
            }
            Step::Wait => panic!("waiting with everything answered"),
            Step::Ask(questions) => {
                for q in questions {
                    let (len, tail) = match rest {
                        [a, b, tail @ ..] => (usize::from(u16::from_be_bytes([*a, *b])), tail),
                        _ => (0, &[][..]),
                    };
                    let (chunk, tail) = tail.split_at(len.min(tail.len()));
                    rest = tail;
                    let id = chunk.get(..2).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
                    // Encoding our own question must always work.
                    encode_query(id, &q, &mut query).expect("encode a normalised question");
                    let answer = match parse_response(chunk, id, &q) {
                        Ok(Response::Final(parsed)) => Ok(parsed.lookup),
                        Ok(Response::Truncated) => Err(TempError::Timeout),
                        Ok(Response::ServerError { rcode }) => Err(TempError::ServerError { rcode }),
                        Err(_) => Ok(Lookup::NoData),
                    };
                    lookup.answer(&q, answer, &mut rng);
                }
            }
        }
    }
    panic!("no outcome within 64 steps");
});
