//! Sign with keys generated here, verify with mail-auth and with dkimpy.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::{
    assert_mail_auth_pass, dkimpy_verify, generate, mail_auth_verify, sign, signer, Kind,
};
use mail_auth::DkimResult;
use sluice_dkim::{DkimConfig, KeyError, SignError, Signed, Signer};

const DOMAIN: &str = "example.com";

fn message(body: &str) -> Vec<u8> {
    format!(
        "From: Alice Example <alice@example.com>\r\n\
         To: bob@example.net\r\n\
         Subject: Quarterly report\r\n\
         Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\
         Message-ID: <1234@example.com>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n{body}"
    )
    .into_bytes()
}

fn both_pass(kind: Kind, msg: &[u8], extra: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = generate(dir.path(), "k", kind);
    let signer = signer(DOMAIN, "s1", &key, extra);
    let signed = sign(&signer, msg);
    assert_mail_auth_pass(&signed, "s1", DOMAIN, &key.txt);
    assert!(
        dkimpy_verify(&signed, "s1", DOMAIN, &key.txt),
        "dkimpy rejected:\n{}",
        String::from_utf8_lossy(&signed)
    );
}

#[test]
fn rsa_pkcs8_verifies_with_mail_auth_and_dkimpy() {
    both_pass(
        Kind::RsaPkcs8,
        &message("Hello Bob,\r\nthe numbers are in.\r\n"),
        "",
    );
}

#[test]
fn rsa_pkcs1_verifies_with_mail_auth_and_dkimpy() {
    both_pass(
        Kind::RsaPkcs1,
        &message("Hello.\r\n"),
        "algorithm = \"rsa-sha256\"",
    );
}

#[test]
fn ed25519_verifies_with_mail_auth_and_dkimpy() {
    both_pass(
        Kind::Ed25519,
        &message("Hello Bob,\r\n\r\n-- \r\nAlice\r\n"),
        "algorithm = \"ed25519-sha256\"",
    );
}

#[test]
fn simple_canonicalization_and_expiry_verify() {
    both_pass(
        Kind::Ed25519,
        &message("Body  with   spaces \r\n\r\n\r\n"),
        "canonicalization = \"simple/simple\"\nexpiry = \"7d\"",
    );
    both_pass(
        Kind::RsaPkcs8,
        &message("x\r\n"),
        "canonicalization = \"relaxed/simple\"",
    );
}

#[test]
fn empty_body_verifies() {
    both_pass(Kind::Ed25519, &message(""), "");
    both_pass(
        Kind::Ed25519,
        &message(""),
        "canonicalization = \"simple/simple\"",
    );
}

#[test]
fn body_without_final_crlf_verifies() {
    both_pass(Kind::Ed25519, &message("no newline at the end"), "");
    both_pass(
        Kind::Ed25519,
        &message("no newline at the end"),
        "canonicalization = \"simple/simple\"",
    );
}

#[test]
fn folded_headers_and_trailing_whitespace_verify() {
    let msg = b"From: \"Alice\"\r\n  <alice@example.com>  \r\n\
To: bob@example.net,\r\n\tcarol@example.net \t\r\n\
Subject:   A   subject\r\n   folded   over\r\n\tthree lines   \r\n\
Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\
\r\n\
Line with trailing space   \r\n\
Line\twith\t\ttabs\r\n\r\n\r\n";
    both_pass(Kind::Ed25519, msg, "");
    both_pass(Kind::RsaPkcs8, msg, "");
}

#[test]
fn relaxed_signature_survives_whitespace_and_case_changes_in_transit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = generate(dir.path(), "k", Kind::Ed25519);
    let signer = signer(DOMAIN, "s1", &key, "");
    let signed = sign(&signer, &message("Hello   world\r\n"));
    let text = String::from_utf8(signed).expect("ASCII");
    // A relay refolds Subject, changes header-name case and adds trailing
    // whitespace in the body: relaxed/relaxed still verifies (RFC 6376 §3.4.2, §3.4.4).
    let altered = text
        .replace(
            "Subject: Quarterly report\r\n",
            "SUBJECT:  Quarterly\r\n report \r\n",
        )
        .replace("Hello   world\r\n", "Hello world  \r\n\r\n");
    assert_ne!(altered, text);
    assert_mail_auth_pass(altered.as_bytes(), "s1", DOMAIN, &key.txt);
    assert!(dkimpy_verify(altered.as_bytes(), "s1", DOMAIN, &key.txt));
    // Changing a signed value breaks it.
    let tampered = text.replace("Quarterly report", "Quarterly rep0rt");
    assert!(!dkimpy_verify(tampered.as_bytes(), "s1", DOMAIN, &key.txt));
    assert!(
        mail_auth_verify(tampered.as_bytes(), "s1", DOMAIN, &key.txt)
            .iter()
            .all(|r| *r != DkimResult::Pass)
    );
}

#[test]
fn a_second_from_header_breaks_the_signature() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = generate(dir.path(), "k", Kind::RsaPkcs8);
    let signer = signer(DOMAIN, "s1", &key, "");
    let signed = sign(&signer, &message("Pay invoice 42.\r\n"));
    let text = String::from_utf8(signed).expect("ASCII");
    // h= lists From one more time than it occurs.
    let header_end = text.find("\r\nFrom:").expect("signature then message");
    let h_tag = &text[..header_end];
    let from_count = h_tag.matches("From").count();
    assert_eq!(from_count, 2, "From must be oversigned: {h_tag}");
    assert!(
        !h_tag.contains(" l=") && !h_tag.contains(";l="),
        "no l= tag: {h_tag}"
    );
    assert_mail_auth_pass(text.as_bytes(), "s1", DOMAIN, &key.txt);
    for forged in [
        // Added above the original (where a verifier looks first) ...
        text.replacen("\r\nFrom:", "\r\nFrom: CEO <ceo@example.com>\r\nFrom:", 1),
        // ... and below the other headers.
        text.replacen("\r\n\r\n", "\r\nFrom: CEO <ceo@example.com>\r\n\r\n", 1),
    ] {
        assert!(
            !dkimpy_verify(forged.as_bytes(), "s1", DOMAIN, &key.txt),
            "dkimpy accepted:\n{forged}"
        );
        let results = mail_auth_verify(forged.as_bytes(), "s1", DOMAIN, &key.txt);
        assert!(
            results.iter().all(|r| *r != DkimResult::Pass),
            "mail-auth accepted: {results:?}"
        );
    }
}

#[test]
fn absent_listed_headers_cannot_be_added_later() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = generate(dir.path(), "k", Kind::Ed25519);
    let signer = signer(DOMAIN, "s1", &key, "");
    let signed = String::from_utf8(sign(&signer, &message("x\r\n"))).expect("ASCII");
    let added = signed.replacen("\r\n\r\n", "\r\nReply-To: attacker@evil.example\r\n\r\n", 1);
    assert!(!dkimpy_verify(added.as_bytes(), "s1", DOMAIN, &key.txt));
}

#[test]
fn oversign_option_covers_more_headers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = generate(dir.path(), "k", Kind::Ed25519);
    let signer = signer(DOMAIN, "s1", &key, "oversign = [\"Subject\"]");
    let signed = String::from_utf8(sign(&signer, &message("x\r\n"))).expect("ASCII");
    assert!(dkimpy_verify(signed.as_bytes(), "s1", DOMAIN, &key.txt));
    let added = signed.replacen("\r\n\r\n", "\r\nSubject: urgent\r\n\r\n", 1);
    assert!(!dkimpy_verify(added.as_bytes(), "s1", DOMAIN, &key.txt));
}

#[test]
fn signing_domain_selection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = generate(dir.path(), "k", Kind::Ed25519);
    let text = format!(
        "[map]\n\"news.example.org\" = \"example.com\"\n\
         [domains.\"example.com\"]\nselector = \"s1\"\nkey_file = \"{}\"\n",
        key.path.display()
    );
    let config = DkimConfig::from_toml(&text, "dkim").expect("valid");
    let signer = Signer::load(&config).expect("loads");
    let mut out = Vec::new();
    let mut domain = String::new();
    let mapped = String::from_utf8(message("x\r\n"))
        .expect("ASCII")
        .replace("alice@example.com", "alice@News.Example.ORG");
    assert_eq!(
        signer
            .sign(mapped.as_bytes(), &mut domain, &mut out)
            .expect("signs"),
        Signed::By("example.com")
    );
    let mut full = out.clone();
    full.extend_from_slice(mapped.as_bytes());
    assert!(dkimpy_verify(&full, "s1", DOMAIN, &key.txt));

    out.clear();
    let other = String::from_utf8(message("x\r\n"))
        .expect("ASCII")
        .replace("alice@example.com", "alice@other.example");
    assert_eq!(
        signer
            .sign(other.as_bytes(), &mut domain, &mut out)
            .expect("no error"),
        Signed::Unsigned
    );
    assert!(out.is_empty());
    assert!(matches!(
        signer.sign_as("other.example", other.as_bytes(), &mut out),
        Err(SignError::NoKey { .. })
    ));
    // With a default domain, every author domain is signed as it.
    let with_default = format!("default_domain = \"example.com\"\n{text}");
    let signer_default =
        Signer::load(&DkimConfig::from_toml(&with_default, "dkim").expect("valid")).expect("loads");
    out.clear();
    assert_eq!(
        signer_default
            .sign(other.as_bytes(), &mut domain, &mut out)
            .expect("signs"),
        Signed::By("example.com")
    );
    let mut full = out.clone();
    full.extend_from_slice(other.as_bytes());
    assert!(dkimpy_verify(&full, "s1", DOMAIN, &key.txt));
    assert_eq!(
        signer_default.key_info("example.com").map(|(s, _)| s),
        Some("s1")
    );
    let no_from = b"To: a@b.example\r\n\r\nx\r\n";
    assert!(matches!(
        signer.sign(no_from, &mut domain, &mut out),
        Err(SignError::Author(_))
    ));
}

#[test]
fn group_or_world_readable_key_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = generate(dir.path(), "k", Kind::Ed25519);
    for mode in [0o640, 0o604, 0o644, 0o660, 0o666] {
        fs::set_permissions(&key.path, fs::Permissions::from_mode(mode)).expect("chmod");
        let text = format!(
            "[domains.\"example.com\"]\nselector = \"s1\"\nkey_file = \"{}\"\n",
            key.path.display()
        );
        let config = DkimConfig::from_toml(&text, "dkim").expect("valid");
        let err = Signer::load(&config).err().expect("refused");
        assert!(
            matches!(err.errors[0].1, KeyError::Permissions { .. }),
            "{err}"
        );
        let message = err.to_string();
        assert!(
            message.contains(&key.path.display().to_string()),
            "{message}"
        );
        assert!(message.contains("chmod 600"), "{message}");
        assert!(
            message.contains("dkim.domains.\"example.com\""),
            "{message}"
        );
    }
    fs::set_permissions(&key.path, fs::Permissions::from_mode(0o400)).expect("chmod");
    assert!(
        sluice_dkim::load_key(&key.path, None).is_ok(),
        "0400 is stricter than 0600 and accepted"
    );
}

#[test]
fn bad_key_files_are_refused_with_their_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        fs::write(&path, bytes).expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        path
    };
    let garbage = write("garbage.pem", b"not a key at all\n");
    let truncated = {
        let key = generate(dir.path(), "full", Kind::RsaPkcs8);
        let pem = fs::read(&key.path).expect("read");
        write("truncated.pem", &pem[..pem.len() / 2])
    };
    let corrupt = write(
        "corrupt.pem",
        b"-----BEGIN PRIVATE KEY-----\nMIIBVgIBADANBgkqhkiG9w0BAQEFAASCAUAwggE8AgEAAkEA\n-----END PRIVATE KEY-----\n",
    );
    let ec = {
        let path = dir.path().join("ec.pem");
        let p = path.to_str().expect("utf-8");
        let status = std::process::Command::new("openssl")
            .args([
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                p,
            ])
            .status()
            .expect("openssl");
        assert!(status.success());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        path
    };
    for path in [&garbage, &truncated, &corrupt, &ec] {
        let err = sluice_dkim::load_key(path, None).err().expect("refused");
        assert!(
            matches!(err, KeyError::Format { .. }),
            "{}: {err}",
            path.display()
        );
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
    let missing = dir.path().join("missing.pem");
    assert!(matches!(
        sluice_dkim::load_key(&missing, None),
        Err(KeyError::Io { .. })
    ));
    assert!(matches!(
        sluice_dkim::load_key(dir.path(), None),
        Err(KeyError::NotAKeyFile { .. }) | Err(KeyError::Permissions { .. })
    ));

    let ed = generate(dir.path(), "ed", Kind::Ed25519);
    let err = sluice_dkim::load_key(&ed.path, Some(sluice_dkim::Algorithm::RsaSha256))
        .err()
        .expect("mismatch");
    assert!(matches!(err, KeyError::AlgorithmMismatch { .. }), "{err}");

    // Every refused domain is reported, not just the first.
    let text = format!(
        "[domains.\"a.example\"]\nselector = \"s\"\nkey_file = \"{}\"\n\
         [domains.\"b.example\"]\nselector = \"s\"\nkey_file = \"{}\"\n",
        garbage.display(),
        missing.display()
    );
    let config = DkimConfig::from_toml(&text, "dkim").expect("valid");
    let err = Signer::load(&config).err().expect("refused");
    assert_eq!(err.errors.len(), 2, "{err}");
}

#[test]
fn rsa_below_2048_bits_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("small.pem");
    let p = path.to_str().expect("utf-8");
    let status = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:1024",
            "-out",
            p,
        ])
        .status()
        .expect("openssl");
    assert!(status.success());
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
    assert!(matches!(
        sluice_dkim::load_key(&path, None),
        Err(KeyError::Format { .. })
    ));
}

#[test]
fn every_fold_position_verifies_with_dkimpy() {
    // The header's line breaks depend on the lengths of s=, d= and h=;
    // walking the selector length moves every fold, including the one
    // after the last chunk of b= (see Signer::sign_as).
    let dir = tempfile::tempdir().expect("tempdir");
    let rsa = generate(dir.path(), "rsa", Kind::RsaPkcs8);
    let ed = generate(dir.path(), "ed", Kind::Ed25519);
    let msg = message("fold test\r\n");
    for len in 1..=12 {
        let selector = "s".repeat(len);
        for key in [&rsa, &ed] {
            let signer = signer(DOMAIN, &selector, key, "");
            let signed = sign(&signer, &msg);
            assert_mail_auth_pass(&signed, &selector, DOMAIN, &key.txt);
            assert!(
                dkimpy_verify(&signed, &selector, DOMAIN, &key.txt),
                "selector length {len}"
            );
        }
    }
}
