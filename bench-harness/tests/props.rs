//! Property tests of the harness's own invariants (256 cases each).

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use sluice_bench::dist::{DomainDist, DomainShape, SizeDist};
use sluice_bench::message::{Envelope, LoadShape, MessageGenerator};
use sluice_bench::schedule::{apportion, Next, SlotSequence};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Slots split any batch exactly: every index once, none twice.
    #[test]
    fn slots_partition_the_batch(slots in 1u64..50, limit in 0u64..2000) {
        let mut seen = vec![0u8; limit as usize];
        for s in 0..slots {
            let mut seq = SlotSequence::new(s, slots, Some(limit), None, None);
            while let Next::Send { index, .. } = seq.poll(Duration::ZERO) {
                seen[index as usize] += 1;
            }
        }
        prop_assert!(seen.iter().all(|&c| c == 1));
    }

    /// Open loop: a send is never earlier than its due time, and all are sent.
    #[test]
    fn open_loop_never_early(slots in 1u64..8, limit in 1u64..300, rate in 1.0f64..5000.0, step_us in 1u64..20_000) {
        let step = Duration::from_micros(step_us);
        let mut sent = 0;
        for s in 0..slots {
            let mut seq = SlotSequence::new(s, slots, Some(limit), Some(rate), None);
            let mut now = Duration::ZERO;
            loop {
                match seq.poll(now) {
                    Next::Send { index, scheduled } => {
                        let due = scheduled.unwrap();
                        prop_assert_eq!(due, Duration::from_secs_f64(index as f64 / rate));
                        prop_assert!(due <= now);
                        sent += 1;
                    }
                    Next::WaitUntil(t) => { prop_assert!(t > now); now += step; }
                    Next::Done => break,
                }
            }
        }
        prop_assert_eq!(sent, limit);
    }

    /// Apportioning always sums to the total.
    #[test]
    fn apportion_sums(total in 0u64..1_000_000, weights in prop::collection::vec(0.0f64..10.0, 1..20)) {
        let parts = apportion(total, &weights);
        if weights.iter().sum::<f64>() > 0.0 {
            prop_assert_eq!(parts.iter().sum::<u64>(), total);
        }
        for (p, w) in parts.iter().zip(&weights) {
            if *w == 0.0 { prop_assert_eq!(*p, 0); }
        }
    }

    /// Any message has exactly its size (when above the headers), only CRLF
    /// line ends, no line over 998 characters, and its unique id header.
    #[test]
    fn messages_are_well_formed(min in 300usize..5000, extra in 0usize..5000, index in any::<u64>(), seed in any::<u64>(), rcpts in 1u32..5) {
        let shape = Arc::new(LoadShape {
            sizes: SizeDist::Uniform { min, max: min + extra },
            recipients: 1..=rcpts,
            recipient_domains: DomainDist::new(50, "bench.invalid", DomainShape::Zipf(1.0), &[]).unwrap(),
            sender_domains: DomainDist::single("sender.invalid"),
            local_parts: 100,
            run_id: "p".into(),
            seed,
        });
        let generator = MessageGenerator::new(shape);
        let (mut env, mut body) = (Envelope::default(), Vec::new());
        generator.generate(index, 1_700_000_000_000_000_000, &mut env, &mut body);
        prop_assert!(env.rcpts.len() as u32 <= rcpts && !env.rcpts.is_empty());
        prop_assert!(body.ends_with(b"\r\n"));
        let text = std::str::from_utf8(&body).unwrap();
        let header_id = format!("X-Sluice-Id: p-{index}\r\n");
        prop_assert!(text.contains(&header_id));
        let header_end = text.find("\r\n\r\n").unwrap() + 4;
        if header_end + 78 <= min {
            prop_assert!(body.len() >= min && body.len() <= min + extra);
        }
        for line in text.split("\r\n") {
            prop_assert!(!line.contains('\r') && !line.contains('\n'));
            prop_assert!(line.len() <= 998);
        }
    }
}
