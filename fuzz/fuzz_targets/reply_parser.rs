//! The reply parser: never panics, bounded memory, and the replies do not
//! depend on where the input is split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_smtp::client::{Parsed, ReplyParser};

fn parse(pieces: &[&[u8]]) -> Vec<Result<sluice_smtp::Reply, sluice_smtp::client::ReplyError>> {
    let mut parser = ReplyParser::default();
    let mut out = Vec::new();
    for piece in pieces {
        let mut rest = *piece;
        while !rest.is_empty() {
            match parser.feed(rest) {
                Ok(Parsed::Complete(reply, used)) => {
                    assert!(used > 0 && used <= rest.len());
                    out.push(Ok(reply));
                    rest = &rest[used..];
                }
                Ok(Parsed::Incomplete) => break,
                Err(error) => {
                    // After an error the stream is out of step: stop.
                    out.push(Err(error));
                    return out;
                }
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let whole = parse(&[input]);
    let at = usize::from(split) % (input.len() + 1);
    let (a, b) = input.split_at(at);
    assert_eq!(whole, parse(&[a, b]));
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(whole, parse(&bytes));
});
