//! Message generation: an envelope and an RFC 5322 message per index.
//!
//! Message `n` of a run depends only on the seed, `n` and the load shape, so a
//! rerun with the same `--seed` sends the same sizes, senders and recipients
//! whatever the number of connections. Bodies are built into a caller-owned,
//! reused buffer from a precomputed filler block: per message the generator
//! writes ~300 bytes of headers and does one `memcpy` of the filler.

use std::cell::RefCell;
use std::io::Write;
use std::ops::RangeInclusive;
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::dist::{DomainDist, SizeDist};

/// Header carrying the injection time in unix epoch nanoseconds; `sluice-sink`
/// reads it to measure injection-to-arrival latency.
pub const INJECTED_HEADER: &str = "X-Sluice-Injected";

/// Header carrying `<run>-<n>`, unique per message within a run.
pub const ID_HEADER: &str = "X-Sluice-Id";

/// Length of one filler line including CRLF (RFC 5322 §2.1.1 recommends 78).
const FILLER_LINE_BYTES: usize = 78;

const _: () = assert!(
    FILLER_LINE_BYTES <= 1000,
    "RFC 5321 §4.5.3.1.6 text line limit"
);

/// What every message of a run (or of one routing group) looks like.
#[derive(Debug, Clone)]
pub struct LoadShape {
    /// Total message size (headers + body) in bytes; small sizes are rounded
    /// up to the headers plus one body line.
    pub sizes: SizeDist,
    /// Recipients per message, drawn uniformly from this range.
    pub recipients: RangeInclusive<u32>,
    /// Distribution of recipient domains.
    pub recipient_domains: DomainDist,
    /// Distribution of sender domains.
    pub sender_domains: DomainDist,
    /// Local parts are `user{k}` for `k` in `1..=local_parts`.
    pub local_parts: u32,
    /// Run identifier placed in `X-Sluice-Id` and `Message-ID`.
    pub run_id: String,
    /// Seed of the run.
    pub seed: u64,
}

/// Envelope of one generated message; reused between messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// Reverse path (MAIL FROM).
    pub from: String,
    /// Forward paths (RCPT TO), at least one.
    pub rcpts: Vec<String>,
}

/// SplitMix64 finaliser: decorrelates `seed ^ n` before seeding the RNG.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Builds messages for one connection.
#[derive(Debug)]
pub struct MessageGenerator {
    shape: Arc<LoadShape>,
    filler: Vec<u8>,
    /// The last formatted `Date:` value and its second.
    date: RefCell<(u64, Vec<u8>)>,
}

impl MessageGenerator {
    /// Precomputes the filler block (once per connection).
    pub fn new(shape: Arc<LoadShape>) -> Self {
        let filler = filler_block(shape.sizes.max() + FILLER_LINE_BYTES);
        MessageGenerator {
            shape,
            filler,
            date: RefCell::new((u64::MAX, Vec::new())),
        }
    }

    /// Appends the RFC 5322 date of `secs`, formatted once per second.
    fn push_date(&self, out: &mut Vec<u8>, secs: u64) {
        let mut cache = self.date.borrow_mut();
        if cache.0 != secs {
            cache.1.clear();
            write_rfc5322_date(&mut cache.1, secs);
            cache.0 = secs;
        }
        out.extend_from_slice(&cache.1);
    }

    /// The load shape.
    pub fn shape(&self) -> &LoadShape {
        &self.shape
    }

    /// Writes message `index` into `env` and `body` (both cleared first).
    /// `injected_unix_nanos` goes into the `X-Sluice-Injected` header.
    pub fn generate(
        &self,
        index: u64,
        injected_unix_nanos: u64,
        env: &mut Envelope,
        body: &mut Vec<u8>,
    ) {
        let shape = &*self.shape;
        let mut rng = SmallRng::seed_from_u64(mix64(shape.seed ^ mix64(index)));
        let size = shape.sizes.sample(&mut rng);
        let rcpt_count = rng.gen_range(shape.recipients.clone()).max(1) as usize;
        let sender_domain = shape.sender_domains.sample(&mut rng);

        env.from.clear();
        env.from.push_str("sender");
        push_decimal_str(&mut env.from, index % 1000);
        env.from.push('@');
        env.from.push_str(sender_domain);
        // Reuse the recipient Strings already allocated.
        env.rcpts.truncate(rcpt_count);
        while env.rcpts.len() < rcpt_count {
            env.rcpts.push(String::new());
        }
        for rcpt in env.rcpts.iter_mut() {
            rcpt.clear();
            let local = rng.gen_range(1..=shape.local_parts.max(1));
            let domain = shape.recipient_domains.sample(&mut rng);
            rcpt.push_str("user");
            push_decimal_str(rcpt, u64::from(local));
            rcpt.push('@');
            rcpt.push_str(domain);
        }

        // Headers are appended piece by piece (no formatting machinery): this
        // runs once per message on the generator's hot path.
        body.clear();
        let run = shape.run_id.as_bytes();
        body.extend_from_slice(b"From: <");
        body.extend_from_slice(env.from.as_bytes());
        body.extend_from_slice(b">\r\nTo: <");
        body.extend_from_slice(env.rcpts[0].as_bytes());
        body.push(b'>');
        if env.rcpts.len() > 1 {
            body.extend_from_slice(b" (+");
            push_decimal(body, env.rcpts.len() as u64 - 1);
            body.extend_from_slice(b" more)");
        }
        body.extend_from_slice(b"\r\nSubject: sluice-bench ");
        body.extend_from_slice(run);
        body.extend_from_slice(b" message ");
        push_decimal(body, index);
        body.extend_from_slice(b"\r\nDate: ");
        self.push_date(body, injected_unix_nanos / 1_000_000_000);
        body.extend_from_slice(b"\r\nMessage-ID: <");
        body.extend_from_slice(run);
        body.push(b'.');
        push_decimal(body, index);
        body.push(b'@');
        body.extend_from_slice(sender_domain.as_bytes());
        body.extend_from_slice(b">\r\n");
        body.extend_from_slice(ID_HEADER.as_bytes());
        body.extend_from_slice(b": ");
        body.extend_from_slice(run);
        body.push(b'-');
        push_decimal(body, index);
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(INJECTED_HEADER.as_bytes());
        body.extend_from_slice(b": ");
        push_decimal(body, injected_unix_nanos);
        body.extend_from_slice(
            b"\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n",
        );
        // Body: filler up to the requested size, always ending in CRLF.
        let body_bytes = size.saturating_sub(body.len()).max(FILLER_LINE_BYTES);
        let take = (body_bytes - 2).min(self.filler.len());
        body.extend_from_slice(&self.filler[..take]);
        if body.last() == Some(&b'\r') {
            // Cut between CR and LF: never leave a bare CR (RFC 5321 §2.3.8).
            let last = body.len() - 1;
            body[last] = b'x';
        }
        body.extend_from_slice(b"\r\n");
    }
}

/// Appends `n` in decimal.
pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn push_decimal_str(out: &mut String, n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Infallible: ASCII digits.
    out.push_str(std::str::from_utf8(&buf[i..]).expect("ASCII digits"));
}

/// Printable filler lines of [`FILLER_LINE_BYTES`], none starting with a dot.
fn filler_block(bytes_min: usize) -> Vec<u8> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let lines = bytes_min.div_ceil(FILLER_LINE_BYTES);
    let mut out = Vec::with_capacity(lines * FILLER_LINE_BYTES);
    for line in 0..lines {
        let start = out.len();
        let _ = write!(out, "{line:06} ");
        while out.len() - start < FILLER_LINE_BYTES - 2 {
            let i = (out.len() - start + line) % ALPHABET.len();
            out.push(ALPHABET[i]);
        }
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Writes `secs` (unix epoch, UTC) as an RFC 5322 §3.3 date-time.
pub fn write_rfc5322_date(out: &mut Vec<u8>, secs: u64) {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    let weekday = DAYS[(days % 7) as usize];
    let _ = write!(
        out,
        "{weekday}, {day} {} {year} {:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
}

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31); Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::DomainShape;

    fn shape(sizes: &str, rcpts: RangeInclusive<u32>) -> Arc<LoadShape> {
        Arc::new(LoadShape {
            sizes: sizes.parse().unwrap(),
            recipients: rcpts,
            recipient_domains: DomainDist::new(10, "bench.invalid", DomainShape::Uniform, &[])
                .unwrap(),
            sender_domains: DomainDist::single("sender.invalid"),
            local_parts: 100,
            run_id: "r1".into(),
            seed: 42,
        })
    }

    #[test]
    fn exact_size_and_headers() {
        let g = MessageGenerator::new(shape("2000", 1..=1));
        let (mut env, mut body) = (Envelope::default(), Vec::new());
        for n in 0..200 {
            g.generate(n, 1_700_000_000_123_456_789, &mut env, &mut body);
            assert_eq!(body.len(), 2000);
            assert!(body.ends_with(b"\r\n"));
            let text = std::str::from_utf8(&body).unwrap();
            assert!(text.contains(&format!("X-Sluice-Id: r1-{n}\r\n")));
            assert!(text.contains("X-Sluice-Injected: 1700000000123456789\r\n"));
            assert!(text.contains(&format!("Message-ID: <r1.{n}@sender.invalid>")));
            assert!(text.contains("Date: Tue, 14 Nov 2023 22:13:20 +0000"));
            // Only CRLF line endings, no line over 998 characters, no dot lines.
            for line in text.split("\r\n") {
                assert!(!line.contains('\r') && !line.contains('\n'));
                assert!(line.len() <= 998);
                assert!(!line.starts_with('.'));
            }
            assert_eq!(env.rcpts.len(), 1);
        }
    }

    #[test]
    fn every_cut_point_ends_cleanly() {
        let g = MessageGenerator::new(shape("300-600", 1..=3));
        let (mut env, mut body) = (Envelope::default(), Vec::new());
        for n in 0..2000 {
            g.generate(n, 0, &mut env, &mut body);
            assert!(body.ends_with(b"\r\n"));
            for (i, b) in body.iter().enumerate() {
                if *b == b'\r' {
                    assert_eq!(body.get(i + 1), Some(&b'\n'), "bare CR in message {n}");
                }
                if *b == b'\n' {
                    assert_eq!(body[i - 1], b'\r', "bare LF in message {n}");
                }
            }
            assert!((1..=3).contains(&env.rcpts.len()));
        }
    }

    #[test]
    fn reproducible_from_seed_and_index() {
        let g1 = MessageGenerator::new(shape("1k-3k", 1..=4));
        let g2 = MessageGenerator::new(shape("1k-3k", 1..=4));
        let (mut e1, mut b1, mut e2, mut b2) = (
            Envelope::default(),
            Vec::new(),
            Envelope::default(),
            Vec::new(),
        );
        for n in [0u64, 5, 99, 12345] {
            g1.generate(n, 7, &mut e1, &mut b1);
            g2.generate(n, 7, &mut e2, &mut b2);
            assert_eq!(e1, e2);
            assert_eq!(b1, b2);
        }
        g1.generate(1, 7, &mut e1, &mut b1);
        g1.generate(2, 7, &mut e2, &mut b2);
        assert_ne!(b1, b2);
    }

    #[test]
    fn decimals() {
        for n in [0u64, 7, 10, 999, 1_700_000_000_123_456_789, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
            let mut s = String::from("x");
            push_decimal_str(&mut s, n);
            assert_eq!(s, format!("x{n}"));
        }
    }

    #[test]
    fn dates() {
        let mut out = Vec::new();
        write_rfc5322_date(&mut out, 0);
        assert_eq!(out, b"Thu, 1 Jan 1970 00:00:00 +0000");
        out.clear();
        write_rfc5322_date(&mut out, 951_782_400); // 2000-02-29
        assert_eq!(out, b"Tue, 29 Feb 2000 00:00:00 +0000");
    }
}
