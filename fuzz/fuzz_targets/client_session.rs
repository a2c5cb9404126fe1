//! The client session against server bytes drawn from a reply alphabet,
//! with drops, timeouts and TLS completions interleaved: it never panics,
//! and every recipient ends with exactly one outcome.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use sluice_smtp::client::{
    ClientConfig, ClientEvent, ClientSession, Envelope, Recipient, TlsPolicy,
};

const REPLIES: &[&[u8]] = &[
    b"220 mx\r\n",
    b"250-mx\r\n",
    b"250-PIPELINING\r\n",
    b"250-CHUNKING\r\n",
    b"250-SIZE 100\r\n",
    b"250-STARTTLS\r\n",
    b"250-8BITMIME\r\n",
    b"250 ok\r\n",
    b"250 2.0.0 ok\r\n",
    b"354 go\r\n",
    b"421 4.7.0 bye\r\n",
    b"451 later\r\n",
    b"452 4.5.3 full\r\n",
    b"550 5.1.1 no\r\n",
    b"503 seq\r\n",
    b"554 no\r\n",
    b"221 bye\r\n",
    b"500 what\r\n",
    b"25",
    b"0 split\r\n",
    b"garbage\r\n",
    b"\n",
];

fuzz_target!(|data: &[u8]| {
    let Some((&shape, script)) = data.split_first() else {
        return;
    };
    let mut config = ClientConfig::new("c.test");
    config.tls = [
        TlsPolicy::Disabled,
        TlsPolicy::Opportunistic,
        TlsPolicy::Required,
    ][usize::from(shape % 3)];
    config.transactions_in_flight_max = usize::from(shape >> 4) % 4 + 1;
    let mut client = ClientSession::new(config);
    let envelopes = usize::from(shape >> 2) % 4;
    let mut expected = HashSet::new();
    for id in 0..envelopes as u64 {
        let rcpts = (id as usize % 3) + 1;
        let recipients = (0..rcpts)
            .map(|r| Recipient::new(format!("r{r}@x.test")))
            .collect();
        let mut envelope = Envelope::new(id, "s@a.test", recipients, 50 + id * 40);
        envelope.eight_bit = id == 2;
        client.queue(envelope).expect("queue has room");
        expected.extend((0..rcpts).map(|i| (id, i)));
    }
    client.quit();
    let mut outcomes = HashSet::new();
    let mut done = HashSet::new();
    let mut sink = Vec::new();
    for &token in script {
        let _ = client.poll_transmit(&mut sink);
        sink.clear();
        match token {
            250 => client.connection_lost(),
            251 => client.timed_out(),
            252 => client.tls_established(),
            t => client.feed(REPLIES[usize::from(t) % REPLIES.len()]),
        }
        while let Some(event) = client.poll_event() {
            match event {
                ClientEvent::Recipient { id, index, .. } => {
                    assert!(outcomes.insert((id, index)), "two outcomes")
                }
                ClientEvent::TransactionDone { id } => assert!(done.insert(id), "done twice"),
                _ => {}
            }
        }
    }
    client.connection_lost();
    while let Some(event) = client.poll_event() {
        match event {
            ClientEvent::Recipient { id, index, .. } => {
                assert!(outcomes.insert((id, index)), "two outcomes")
            }
            ClientEvent::TransactionDone { id } => assert!(done.insert(id), "done twice"),
            _ => {}
        }
    }
    assert!(client.is_closed());
    assert_eq!(outcomes, expected);
    assert_eq!(done.len(), envelopes);
});
