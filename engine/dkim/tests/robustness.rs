//! Arbitrary message bytes never panic the signer; what it signs verifies.

mod common;

use std::sync::OnceLock;

use common::{generate, signer, Kind};
use proptest::prelude::*;
use sluice_dkim::{author_domain, Signed, Signer};

#[test]
fn signer_is_shareable_across_shards() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Signer>();
}

/// One Ed25519 signer for all cases (the temp dir lives as long as it).
fn shared() -> &'static (tempfile::TempDir, Signer) {
    static SHARED: OnceLock<(tempfile::TempDir, Signer)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = generate(dir.path(), "k", Kind::Ed25519);
        let signer = signer("example.com", "s1", &key, "");
        (dir, signer)
    })
}

fn header_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"From: a@example.com\r\n".to_vec()),
        Just(b"From: \"x, <y@z>\" <a@Example.COM>\r\n".to_vec()),
        Just(b"Subject: folded\r\n  value \t\r\n".to_vec()),
        Just(b"To: b@example.net\r\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..40),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_messages_never_panic(parts in proptest::collection::vec(header_line(), 0..12)) {
        let message: Vec<u8> = parts.concat();
        let mut domain = String::new();
        let _ = author_domain(&message, &mut domain);
        let signer = &shared().1;
        let mut out = Vec::new();
        if let Ok(Signed::By(d)) = signer.sign(&message, &mut domain, &mut out) {
            prop_assert_eq!(d, "example.com");
            prop_assert!(out.starts_with(b"DKIM-Signature: "));
            prop_assert!(out.ends_with(b";\r\n"));
            prop_assert!(!out.windows(3).any(|w| w == b" l="));
        } else {
            prop_assert!(out.is_empty());
        }
    }
}
