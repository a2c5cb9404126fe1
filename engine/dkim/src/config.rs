//! The `[dkim]` configuration: raw serde structs, and their validation into
//! [`DkimConfig`], which names every problem with its key path.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Header fields signed when a domain does not list its own (RFC 6376
/// §5.4.1 recommends these; `From` is required by §5.4).
pub const DEFAULT_SIGNED_HEADERS: &[&str] = &[
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Feedback-ID",
];

/// Longest expiry accepted for `x=`: a year. Longer values are almost
/// certainly a unit mistake (`"365d"` is allowed, `"3650d"` is not).
pub const EXPIRY_MAX: Duration = Duration::from_secs(366 * 24 * 3600);

/// Most header names one domain may sign; each costs a scan per message.
pub const SIGNED_HEADERS_MAX: usize = 64;

const _: () = assert!(DEFAULT_SIGNED_HEADERS.len() <= SIGNED_HEADERS_MAX);

/// The `[dkim]` section as written by the operator.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDkimConfig {
    /// Signing domain (the `d=` tag) to its key and options.
    #[serde(default)]
    pub domains: BTreeMap<String, RawDomain>,
    /// Author domain (the From header's domain) to the signing domain whose
    /// key signs its mail, for domains that have no key of their own.
    #[serde(default)]
    pub map: BTreeMap<String, String>,
    /// Signing domain for mail whose author domain has neither a key nor a
    /// mapping. Without it such mail goes out unsigned.
    #[serde(default)]
    pub default_domain: Option<String>,
}

/// One signing domain as written by the operator.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDomain {
    /// The selector (`s=`): the key is published at
    /// `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// PEM private key: PKCS#1 (`RSA PRIVATE KEY`) or PKCS#8 (`PRIVATE
    /// KEY`, RSA or Ed25519). Must be mode 0600 or stricter.
    pub key_file: PathBuf,
    /// `rsa-sha256` or `ed25519-sha256`; when absent, taken from the key.
    #[serde(default)]
    pub algorithm: Option<Algorithm>,
    /// Header fields to sign, in any case.
    #[serde(default = "default_headers")]
    pub headers: Vec<String>,
    /// Header fields listed once more than they occur, so that adding one
    /// breaks the signature (RFC 6376 §8.15). Always includes `From`.
    #[serde(default = "default_oversign")]
    pub oversign: Vec<String>,
    /// `header/body`, each `relaxed` or `simple` (RFC 6376 §3.4); a single
    /// word means that header canonicalization with `simple` body (§3.5).
    #[serde(default = "default_canonicalization")]
    pub canonicalization: String,
    /// Signature lifetime written as `x=`, e.g. `"7d"`, `"12h"`; absent
    /// means no `x=` tag.
    #[serde(default)]
    pub expiry: Option<String>,
}

fn default_headers() -> Vec<String> {
    DEFAULT_SIGNED_HEADERS
        .iter()
        .map(|h| h.to_string())
        .collect()
}

fn default_oversign() -> Vec<String> {
    vec!["From".to_string()]
}

fn default_canonicalization() -> String {
    "relaxed/relaxed".to_string()
}

/// A signature algorithm (RFC 6376 §3.3, RFC 8463).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Algorithm {
    /// Ed25519 over the SHA-256 hash (RFC 8463).
    #[serde(rename = "ed25519-sha256")]
    Ed25519Sha256,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (RFC 6376 §3.3.1).
    #[serde(rename = "rsa-sha256")]
    RsaSha256,
}

impl Algorithm {
    /// The `a=` tag value.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Ed25519Sha256 => "ed25519-sha256",
            Algorithm::RsaSha256 => "rsa-sha256",
        }
    }
}

/// A canonicalization algorithm (RFC 6376 §3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Canonicalization {
    /// Tolerates whitespace and header case changes (§3.4.2, §3.4.4).
    Relaxed,
    /// Byte for byte, apart from trailing empty body lines (§3.4.1, §3.4.3).
    Simple,
}

/// A validated signing domain.
#[derive(Debug, Clone)]
pub struct DomainConfig {
    /// Lower-case signing domain (`d=`).
    pub domain: String,
    /// Selector (`s=`).
    pub selector: String,
    /// Private key path.
    pub key_file: PathBuf,
    /// Required algorithm, or `None` to take it from the key.
    pub algorithm: Option<Algorithm>,
    /// Header names to sign, without duplicates, `From` first.
    pub headers: Vec<String>,
    /// Subset of `headers` to oversign; contains `From`.
    pub oversign: Vec<String>,
    /// Header canonicalization.
    pub header_canonicalization: Canonicalization,
    /// Body canonicalization.
    pub body_canonicalization: Canonicalization,
    /// Signature lifetime (`x=` minus `t=`), whole seconds.
    pub expiry: Option<Duration>,
    /// Key path of this domain in the configuration, for error messages.
    pub config_key: String,
}

/// The validated `[dkim]` section.
#[derive(Debug, Clone, Default)]
pub struct DkimConfig {
    /// Signing domains, keyed by lower-case domain.
    pub domains: BTreeMap<String, DomainConfig>,
    /// Lower-case author domain to lower-case signing domain.
    pub map: BTreeMap<String, String>,
    /// Lower-case fallback signing domain.
    pub default_domain: Option<String>,
}

/// One configuration problem, with the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Full key path, e.g. `dkim.domains."example.com".selector`.
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a DKIM configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML did not parse or did not match the schema.
    #[error("{key}: {message}")]
    Syntax {
        /// Key path where deserialization failed.
        key: String,
        /// The parser's message.
        message: String,
    },
    /// The values parsed but are inconsistent; every problem is listed.
    #[error("{} problem(s) in the DKIM configuration:\n{}", problems.len(), render(problems))]
    Invalid {
        /// Every problem found.
        problems: Vec<ConfigProblem>,
    },
}

fn render(problems: &[ConfigProblem]) -> String {
    let lines: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
    lines.join("\n")
}

impl DkimConfig {
    /// Parses a TOML document whose top level is the DKIM section; keys in
    /// errors are prefixed with `prefix` (e.g. `"dkim"`, or `""`).
    pub fn from_toml(text: &str, prefix: &str) -> Result<DkimConfig, ConfigError> {
        let deserializer = toml::Deserializer::new(text);
        let raw: RawDkimConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::Syntax {
                key: join_key(prefix, if path == "." { "" } else { &path }),
                message: e.into_inner().message().trim().to_string(),
            }
        })?;
        DkimConfig::validate(raw, prefix)
    }

    /// Validates a deserialized section (for callers that embed it in a
    /// larger file), reporting every problem, not just the first.
    pub fn validate(raw: RawDkimConfig, prefix: &str) -> Result<DkimConfig, ConfigError> {
        let mut problems = Vec::new();
        let mut config = DkimConfig::default();
        for (name, domain) in raw.domains {
            let key = join_key(prefix, &format!("domains.{}", quote_key(&name)));
            if let Some(validated) = validate_domain(&name, domain, &key, &mut problems) {
                if config.domains.contains_key(&validated.domain) {
                    problems.push(problem(
                        &key,
                        "this domain is listed twice (names are case-insensitive)",
                    ));
                } else {
                    config.domains.insert(validated.domain.clone(), validated);
                }
            }
        }
        for (author, signing) in raw.map {
            let key = join_key(prefix, &format!("map.{}", quote_key(&author)));
            let author_ok = check_domain(&author, &key, &mut problems);
            let signing_ok = check_domain(&signing, &key, &mut problems);
            if !(author_ok && signing_ok) {
                continue;
            }
            let (author, signing) = (author.to_ascii_lowercase(), signing.to_ascii_lowercase());
            if config.domains.contains_key(&author) {
                problems.push(problem(&key, "this author domain has its own key in `domains`; remove the mapping or the key"));
            } else if !config.domains.contains_key(&signing) {
                problems.push(problem(
                    &key,
                    &format!("maps to `{signing}`, which has no entry in `domains`"),
                ));
            } else {
                config.map.insert(author, signing);
            }
        }
        if let Some(default) = raw.default_domain {
            let key = join_key(prefix, "default_domain");
            if check_domain(&default, &key, &mut problems) {
                let default = default.to_ascii_lowercase();
                if config.domains.contains_key(&default) {
                    config.default_domain = Some(default);
                } else {
                    problems.push(problem(
                        &key,
                        &format!("`{default}` has no entry in `domains`"),
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid { problems })
        }
    }
}

fn validate_domain(
    name: &str,
    raw: RawDomain,
    key: &str,
    problems: &mut Vec<ConfigProblem>,
) -> Option<DomainConfig> {
    let before = problems.len();
    check_domain(name, key, problems);
    let selector_key = format!("{key}.selector");
    if !is_dns_name(&raw.selector) {
        problems.push(problem(&selector_key, "a selector is one or more DNS labels (letters, digits, `-`, `_`) separated by dots (RFC 6376 §3.1)"));
    }
    if raw.key_file.as_os_str().is_empty() {
        problems.push(problem(
            &format!("{key}.key_file"),
            "must name the PEM private key file",
        ));
    }
    let headers_key = format!("{key}.headers");
    let mut headers: Vec<String> = Vec::with_capacity(raw.headers.len());
    for header in &raw.headers {
        if !is_field_name(header) {
            problems.push(problem(
                &headers_key,
                &format!(
                    "`{header}` is not a header field name (printable ASCII, no `:` or space)"
                ),
            ));
        } else if headers.iter().any(|h| h.eq_ignore_ascii_case(header)) {
            problems.push(problem(
                &headers_key,
                &format!(
                    "`{header}` is listed twice; use `oversign` to sign a field one extra time"
                ),
            ));
        } else if header.eq_ignore_ascii_case("DKIM-Signature") {
            problems.push(problem(&headers_key, "`DKIM-Signature` cannot sign itself"));
        } else {
            headers.push(header.clone());
        }
    }
    if headers.len() > SIGNED_HEADERS_MAX {
        problems.push(problem(
            &headers_key,
            &format!("at most {SIGNED_HEADERS_MAX} header fields"),
        ));
    }
    // RFC 6376 §5.4: the From header field MUST be signed.
    match headers.iter().position(|h| h.eq_ignore_ascii_case("From")) {
        Some(index) => headers.swap(0, index),
        None => problems.push(problem(&headers_key, "must include `From` (RFC 6376 §5.4)")),
    }
    let oversign_key = format!("{key}.oversign");
    let mut oversign: Vec<String> = Vec::with_capacity(raw.oversign.len() + 1);
    for header in raw.oversign.iter().map(String::as_str).chain(["From"]) {
        if oversign.iter().any(|h| h.eq_ignore_ascii_case(header)) {
            continue;
        }
        match headers.iter().find(|h| h.eq_ignore_ascii_case(header)) {
            Some(signed) => oversign.push(signed.clone()),
            None if header.eq_ignore_ascii_case("From") => {} // reported above
            None => problems.push(problem(
                &oversign_key,
                &format!("`{header}` is not in `headers`"),
            )),
        }
    }
    let canonicalization_key = format!("{key}.canonicalization");
    let canonicalization = parse_canonicalization(&raw.canonicalization);
    if canonicalization.is_none() {
        problems.push(problem(&canonicalization_key, "expected `relaxed/relaxed`, `relaxed/simple`, `simple/relaxed`, `simple/simple`, `relaxed` or `simple`"));
    }
    let expiry = match raw.expiry.as_deref().map(parse_duration) {
        None => None,
        Some(Ok(expiry)) if expiry >= Duration::from_secs(1) && expiry <= EXPIRY_MAX => {
            Some(expiry)
        }
        Some(Ok(_)) => {
            problems.push(problem(
                &format!("{key}.expiry"),
                "must be between 1s and 366d",
            ));
            None
        }
        Some(Err(message)) => {
            problems.push(problem(&format!("{key}.expiry"), &message));
            None
        }
    };
    if problems.len() != before {
        return None;
    }
    // Checked just above: no problem was added, so the parse succeeded.
    let (header_canonicalization, body_canonicalization) = canonicalization?;
    Some(DomainConfig {
        domain: name.to_ascii_lowercase(),
        selector: raw.selector,
        key_file: raw.key_file,
        algorithm: raw.algorithm,
        headers,
        oversign,
        header_canonicalization,
        body_canonicalization,
        expiry,
        config_key: key.to_string(),
    })
}

fn problem(key: &str, message: &str) -> ConfigProblem {
    ConfigProblem {
        key: key.to_string(),
        message: message.to_string(),
    }
}

fn join_key(prefix: &str, rest: &str) -> String {
    match (prefix.is_empty(), rest.is_empty()) {
        (true, _) => rest.to_string(),
        (false, true) => prefix.to_string(),
        (false, false) => format!("{prefix}.{rest}"),
    }
}

fn quote_key(name: &str) -> String {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        name.to_string()
    } else {
        format!("{name:?}")
    }
}

fn check_domain(name: &str, key: &str, problems: &mut Vec<ConfigProblem>) -> bool {
    let ok = is_dns_name(name) && name.len() <= 253;
    if !ok {
        problems.push(problem(key, &format!("`{name}` is not a domain name (ASCII labels of letters, digits, `-`; use the A-label form for IDNs)")));
    }
    ok
}

/// True for dot-separated labels of letters, digits, `-` and `_` (DKIM
/// selectors and `_domainkey` names use underscores), each 1..=63 bytes and
/// not starting or ending with `-`.
pub(crate) fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// RFC 5322 §3.6.8: field-name = 1*ftext, ftext = %d33-57 / %d59-126.
fn is_field_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

fn parse_canonicalization(text: &str) -> Option<(Canonicalization, Canonicalization)> {
    let one = |word: &str| match word {
        "relaxed" => Some(Canonicalization::Relaxed),
        "simple" => Some(Canonicalization::Simple),
        _ => None,
    };
    match text.split_once('/') {
        Some((header, body)) => Some((one(header)?, one(body)?)),
        // RFC 6376 §3.5 (c= tag): a lone algorithm is the header one; the
        // body then uses "simple".
        None => Some((one(text)?, Canonicalization::Simple)),
    }
}

/// Parses `"90s"`, `"15m"`, `"12h"`, `"7d"` (underscores allowed in the
/// number).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '_'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let digits: String = number.chars().filter(|c| *c != '_').collect();
    let value: u64 = digits.parse().map_err(|_| {
        format!(
            "`{text}` is not a duration; write a number and a unit: `3600s`, `90m`, `12h`, `7d`"
        )
    })?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "`{text}` has no valid unit; use `s`, `m`, `h` or `d`"
            ))
        }
    };
    value
        .checked_mul(unit_secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[domains."example.com"]
selector = "s1"
key_file = "/etc/sluice/dkim/example.com.pem"
"#;

    #[test]
    fn defaults_are_relaxed_and_oversign_from() {
        let config = DkimConfig::from_toml(MINIMAL, "dkim").expect("valid config");
        let domain = &config.domains["example.com"];
        assert_eq!(domain.header_canonicalization, Canonicalization::Relaxed);
        assert_eq!(domain.body_canonicalization, Canonicalization::Relaxed);
        assert_eq!(domain.headers[0], "From");
        assert_eq!(domain.headers.len(), DEFAULT_SIGNED_HEADERS.len());
        assert_eq!(domain.oversign, vec!["From".to_string()]);
        assert_eq!(domain.expiry, None);
        assert_eq!(domain.algorithm, None);
    }

    #[test]
    fn unknown_key_is_named() {
        let text = format!("{MINIMAL}body_length = true\n");
        let err = DkimConfig::from_toml(&text, "dkim").expect_err("l= is never allowed");
        let message = err.to_string();
        assert!(message.contains("dkim.domains.example.com"), "{message}");
        assert!(message.contains("body_length"), "{message}");
    }

    #[test]
    fn bad_algorithm_is_named() {
        let text = format!("{MINIMAL}algorithm = \"rsa-sha1\"\n");
        let err = DkimConfig::from_toml(&text, "dkim").expect_err("sha1 refused");
        assert!(
            err.to_string()
                .contains("dkim.domains.example.com.algorithm"),
            "{err}"
        );
    }

    #[test]
    fn every_problem_is_reported() {
        let text = r#"
default_domain = "nowhere.example"
[map]
"Customer.Example" = "missing.example"
[domains."Example.com"]
selector = "bad selector"
key_file = "k.pem"
headers = ["Subject", "Subject", "Bad:Name"]
oversign = ["To"]
canonicalization = "loose"
expiry = "7 weeks"
"#;
        let Err(ConfigError::Invalid { problems }) = DkimConfig::from_toml(text, "dkim") else {
            panic!("expected validation problems");
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for expected in [
            "dkim.domains.\"Example.com\".selector",
            "dkim.domains.\"Example.com\".headers",
            "dkim.domains.\"Example.com\".oversign",
            "dkim.domains.\"Example.com\".canonicalization",
            "dkim.domains.\"Example.com\".expiry",
            "dkim.map.\"Customer.Example\"",
            "dkim.default_domain",
        ] {
            assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
        }
        // Duplicate, bad name, missing From.
        assert_eq!(
            keys.iter().filter(|k| k.ends_with(".headers")).count(),
            3,
            "{problems:?}"
        );
    }

    #[test]
    fn map_and_default_resolve_to_lower_case() {
        let text = format!(
            "default_domain = \"EXAMPLE.com\"\n[map]\n\"News.Example.org\" = \"example.COM\"\n{MINIMAL}"
        );
        let config = DkimConfig::from_toml(&text, "").expect("valid");
        assert_eq!(config.map["news.example.org"], "example.com");
        assert_eq!(config.default_domain.as_deref(), Some("example.com"));
    }

    #[test]
    fn canonicalization_forms() {
        use Canonicalization::*;
        assert_eq!(parse_canonicalization("relaxed"), Some((Relaxed, Simple)));
        assert_eq!(
            parse_canonicalization("simple/relaxed"),
            Some((Simple, Relaxed))
        );
        assert_eq!(parse_canonicalization("relaxed/"), None);
        assert_eq!(parse_canonicalization("Relaxed"), None);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("1_000s"), Ok(Duration::from_secs(1000)));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("7").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn dns_names() {
        assert!(is_dns_name("s2026._x.example-1.com"));
        assert!(!is_dns_name("a..b"));
        assert!(!is_dns_name("-a.com"));
        assert!(!is_dns_name("a b"));
        assert!(!is_dns_name("a;b=c"));
        assert!(!is_dns_name("a\r\nb"));
        assert!(!is_dns_name(&"a".repeat(64)));
    }
}
