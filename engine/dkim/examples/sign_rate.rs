//! Raw signing rate of given key files on one thread, for comparison with
//! the engine's signed delivery rate measured in the same run
//! (`engine/bench/dkim.sh`).
//!
//! Usage: `sign_rate SECONDS KEY_FILE...`
//!
//! For each key prints one line, `key=<file> alg=<a> raw_per_s=<n>
//! raw_per_cpu_s=<n> signer_per_s=<n> signer_per_cpu_s=<n>` (per wall
//! second, and per CPU second of the thread: the per-core figure):
//! `raw` is the private-key operation alone over ~600 bytes (what a real
//! signature covers: the canonical signed headers and the signature
//! template), `signer` the whole `Signer::sign` on a 2 KB message (From
//! parsing, canonicalization, body hash, key operation, header formatting).
//! Pin it to a core (`taskset -c 0`) to get a per-core figure.
//! Build: `cargo build --release -p sluice-dkim --example sign_rate`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mail_auth::common::crypto::SigningKey;
use sluice_dkim::{load_key, DkimConfig, Signer};

fn message() -> Vec<u8> {
    let mut message = b"From: Alice Example <alice@example.com>\r\n\
To: bob@example.net\r\n\
Subject: Your November statement is ready\r\n\
Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\
Message-ID: <20261123100000.1234@mail.example.com>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n"
        .to_vec();
    let line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n";
    while message.len() < 2000 {
        message.extend_from_slice(line);
    }
    message
}

/// CPU time of this thread so far (`/proc/thread-self/schedstat`, ns on
/// the CPU), or `None` where the file is missing.
fn thread_cpu() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns = text.split_whitespace().next()?.parse::<u64>().ok()?;
    Some(Duration::from_nanos(ns))
}

/// Calls `f` in batches until `seconds` of wall time elapsed; returns calls
/// per wall second and per CPU second of this thread (the per-core figure,
/// insensitive to other processes sharing the CPU).
fn rate(seconds: f64, mut f: impl FnMut()) -> (f64, f64) {
    for _ in 0..10 {
        f(); // warm up
    }
    let limit = Duration::from_secs_f64(seconds);
    let cpu0 = thread_cpu();
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < limit {
        for _ in 0..16 {
            f();
        }
        calls += 16;
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = match (cpu0, thread_cpu()) {
        (Some(a), Some(b)) if b > a => (b - a).as_secs_f64(),
        _ => wall,
    };
    (calls as f64 / wall, calls as f64 / cpu)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((seconds, keys)) = args.split_first() else {
        eprintln!("usage: sign_rate SECONDS KEY_FILE...");
        return ExitCode::from(2);
    };
    let Ok(seconds) = seconds.parse::<f64>() else {
        eprintln!("sign_rate: SECONDS must be a number, got {seconds:?}");
        return ExitCode::from(2);
    };
    let message = message();
    let canonical_headers = &message[..600];
    for key in keys {
        let path = PathBuf::from(key);
        let loaded = match load_key(&path, None) {
            Ok(k) => k,
            Err(e) => {
                eprintln!("sign_rate: {e}");
                return ExitCode::FAILURE;
            }
        };
        let raw = rate(seconds, || {
            std::hint::black_box(loaded.key.sign(canonical_headers).expect("valid key signs"));
        });
        let text = format!(
            "[domains.\"example.com\"]\nselector = \"s1\"\nkey_file = {:?}\n",
            path.display().to_string()
        );
        let config = DkimConfig::from_toml(&text, "dkim").expect("generated config is valid");
        let signer = Signer::load(&config).expect("the key loaded above");
        let mut out = Vec::with_capacity(1024);
        let mut domain = String::with_capacity(64);
        let full = rate(seconds, || {
            out.clear();
            std::hint::black_box(
                signer
                    .sign(&message, &mut domain, &mut out)
                    .expect("valid key signs"),
            );
        });
        println!(
            "key={} alg={} raw_per_s={:.0} raw_per_cpu_s={:.0} signer_per_s={:.0} \
             signer_per_cpu_s={:.0}",
            path.display(),
            loaded.algorithm.name(),
            raw.0,
            raw.1,
            full.0,
            full.1
        );
    }
    ExitCode::SUCCESS
}
