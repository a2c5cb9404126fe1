//! The DATA stream: un-stuffing never depends on chunking, ends exactly at
//! the first CRLF.CRLF, and stuff→unstuff returns the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_smtp::{DataReceiver, DotStuffer};

fn receive(input: &[u8], step: usize) -> (Vec<u8>, Option<usize>) {
    let mut rx = DataReceiver::new(1000);
    let mut content = Vec::new();
    let mut total = 0;
    for piece in input.chunks(step.max(1)) {
        let mut pos = 0;
        while pos < piece.len() {
            let s = rx.feed(&piece[pos..]);
            content.extend_from_slice(s.chunk);
            pos += s.consumed;
            total += s.consumed;
            if s.ended {
                return (content, Some(total));
            }
        }
    }
    (content, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let whole = receive(input, input.len());
    assert_eq!(whole, receive(input, usize::from(step)));
    assert_eq!(whole, receive(input, 1));
    // Only an exact CRLF.CRLF ends the data (the DATA line gives the first CRLF).
    let framed = [b"\r\n", input].concat();
    let first = framed
        .windows(5)
        .position(|w| w == b"\r\n.\r\n")
        .map(|p| p + 3);
    assert_eq!(whole.1, first);
    // Round trip on the same bytes with line endings made CRLF.
    let mut body = Vec::with_capacity(input.len() * 2);
    for &b in input {
        match b {
            b'\r' => {}
            b'\n' => body.extend_from_slice(b"\r\n"),
            other => body.push(other),
        }
    }
    let mut wire = Vec::new();
    DotStuffer::stuff_into(&body, &mut wire);
    assert_eq!(wire.len(), DotStuffer::stuffed_len(&body));
    let (content, end) = receive(&wire, usize::from(step));
    assert_eq!(end, Some(wire.len()));
    if !body.is_empty() && !body.ends_with(b"\r\n") {
        body.extend_from_slice(b"\r\n");
    }
    assert_eq!(content, body);
});
