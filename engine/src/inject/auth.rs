//! Injection AUTH (RFC 4954): the SASL PLAIN (RFC 4616) and LOGIN
//! exchanges as a pure state machine, the users file of hashed passwords,
//! and the per-address throttle of failed attempts.
//!
//! The session (`sluice-smtp`) offers AUTH only under TLS and hands the
//! driver each AUTH line; [`Sasl`] turns those lines into a challenge, a
//! refusal, or a user name and password to check. Checking a hash is slow
//! on purpose (argon2id: tens of ms), so the driver runs [`verify`] on
//! glommio's blocking pool, never on the shard.
//!
//! Users file: one `user:hash` per line, `#` comments and blank lines
//! ignored. Hashes are PHC `$argon2id$…` (e.g. `argon2` CLI, Python
//! argon2-cffi) or SHA-crypt `$6$…`/`$5$…` (`openssl passwd -6`,
//! `mkpasswd -m sha-512`).

// std
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

// external
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sluice_smtp::Reply;

/// Failed attempts from one address after which AUTH is refused outright
/// until the window passes.
pub const AUTH_FAILURES_MAX: u32 = 10;
/// How long failed attempts are remembered.
pub const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Delay before answering a failed attempt, per failure so far (capped).
pub const AUTH_FAILURE_DELAY: Duration = Duration::from_secs(1);
/// Longest delay before a failure reply.
pub const AUTH_FAILURE_DELAY_MAX: Duration = Duration::from_secs(8);
/// Addresses the throttle remembers; beyond this the oldest are dropped.
pub const AUTH_THROTTLE_ADDRESSES_MAX: usize = 65_536;
/// Longest user name or password accepted (bytes).
const CREDENTIAL_BYTES_MAX: usize = 512;

/// The users file: user name → password hash.
#[derive(Clone, Default)]
pub struct Users {
    hashes: HashMap<String, String>,
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print hashes.
        write!(f, "Users({} entries)", self.hashes.len())
    }
}

impl Users {
    /// Reads and checks a users file.
    pub fn load(path: &Path) -> Result<Users, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Users::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<Users, String> {
        let mut hashes = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                return Err(format!("line {}: expected `user:hash`", i + 1));
            };
            if user.is_empty() || user.len() > CREDENTIAL_BYTES_MAX {
                return Err(format!("line {}: empty or overlong user name", i + 1));
            }
            if !supported_hash(hash) {
                return Err(format!(
                    "line {}: unsupported hash for `{user}` (expected $argon2id$, $6$ or $5$)",
                    i + 1
                ));
            }
            if hashes.insert(user.to_string(), hash.to_string()).is_some() {
                return Err(format!("line {}: `{user}` is listed twice", i + 1));
            }
        }
        Ok(Users { hashes })
    }

    /// The stored hash of `user`.
    pub fn hash(&self, user: &str) -> Option<&str> {
        self.hashes.get(user).map(String::as_str)
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// True without users.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }
}

fn supported_hash(hash: &str) -> bool {
    ["$argon2id$", "$argon2i$", "$argon2d$", "$6$", "$5$"]
        .iter()
        .any(|p| hash.starts_with(p))
}

/// Checks `password` against a stored hash (slow by design: run it off the
/// shard).
pub fn verify(hash: &str, password: &str) -> bool {
    if hash.starts_with("$6$") {
        return sha_crypt::sha512_check(password, hash).is_ok();
    }
    if hash.starts_with("$5$") {
        return sha_crypt::sha256_check(password, hash).is_ok();
    }
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    match PasswordHash::new(hash) {
        Ok(parsed) => argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// Where an exchange stands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Sasl {
    /// No exchange.
    #[default]
    Idle,
    /// PLAIN sent an empty challenge; the next line is the response.
    Plain,
    /// LOGIN asked for the user name.
    LoginUser,
    /// LOGIN asked for the password of this user.
    LoginPassword(String),
}

/// What to answer to an AUTH line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaslStep {
    /// Send this `334` and wait for the next line.
    Challenge(Reply),
    /// Check these credentials.
    Check {
        /// Authentication identity.
        user: String,
        /// Password.
        password: String,
    },
    /// Refuse with this reply; the exchange is over.
    Refuse(Reply),
}

fn b64(text: &'static str) -> Reply {
    Reply::plain(sluice_smtp::ReplyCode::from_literal(334), text)
}

fn decode(text: &str) -> Option<Vec<u8>> {
    let t = text.trim();
    if t == "=" {
        // RFC 4954 §4: "=" is an empty initial response.
        return Some(Vec::new());
    }
    STANDARD.decode(t).ok()
}

fn malformed() -> Reply {
    Reply::fixed(501, (5, 5, 2), "Cannot decode response")
}

impl Sasl {
    /// `AUTH mechanism [initial-response]`.
    pub fn start(&mut self, mechanism: &str, initial: Option<&str>) -> SaslStep {
        *self = Sasl::Idle;
        if mechanism.eq_ignore_ascii_case("PLAIN") {
            match initial {
                Some(r) => self.plain(r),
                None => {
                    *self = Sasl::Plain;
                    SaslStep::Challenge(b64(""))
                }
            }
        } else if mechanism.eq_ignore_ascii_case("LOGIN") {
            match initial {
                Some(r) => self.login_user(r),
                None => {
                    *self = Sasl::LoginUser;
                    // base64("Username:")
                    SaslStep::Challenge(b64("VXNlcm5hbWU6"))
                }
            }
        } else {
            SaslStep::Refuse(Reply::fixed(
                504,
                (5, 5, 4),
                "Unrecognized authentication type",
            ))
        }
    }

    /// A line answering a `334`.
    pub fn respond(&mut self, line: &str) -> SaslStep {
        if line.trim() == "*" {
            // RFC 4954 §4: the client cancelled.
            *self = Sasl::Idle;
            return SaslStep::Refuse(Reply::fixed(501, (5, 7, 0), "Authentication cancelled"));
        }
        match std::mem::take(self) {
            Sasl::Idle => SaslStep::Refuse(Reply::fixed(503, (5, 5, 1), "No exchange in progress")),
            Sasl::Plain => self.plain(line),
            Sasl::LoginUser => self.login_user(line),
            Sasl::LoginPassword(user) => match decode(line).and_then(|p| String::from_utf8(p).ok())
            {
                Some(password) if password.len() <= CREDENTIAL_BYTES_MAX => {
                    SaslStep::Check { user, password }
                }
                _ => SaslStep::Refuse(malformed()),
            },
        }
    }

    fn plain(&mut self, response: &str) -> SaslStep {
        *self = Sasl::Idle;
        // RFC 4616 §2: [authzid] NUL authcid NUL passwd.
        let Some(bytes) = decode(response) else {
            return SaslStep::Refuse(malformed());
        };
        let mut parts = bytes.split(|&b| b == 0);
        let (Some(authz), Some(user), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return SaslStep::Refuse(malformed());
        };
        let (Ok(authz), Ok(user), Ok(password)) = (
            std::str::from_utf8(authz),
            std::str::from_utf8(user),
            std::str::from_utf8(password),
        ) else {
            return SaslStep::Refuse(malformed());
        };
        if user.is_empty()
            || user.len() > CREDENTIAL_BYTES_MAX
            || password.len() > CREDENTIAL_BYTES_MAX
        {
            return SaslStep::Refuse(malformed());
        }
        if !authz.is_empty() && authz != user {
            // Acting as another user is not supported.
            return SaslStep::Refuse(Reply::fixed(
                535,
                (5, 7, 8),
                "Authentication credentials invalid",
            ));
        }
        SaslStep::Check {
            user: user.to_string(),
            password: password.to_string(),
        }
    }

    fn login_user(&mut self, response: &str) -> SaslStep {
        match decode(response).and_then(|u| String::from_utf8(u).ok()) {
            Some(user) if !user.is_empty() && user.len() <= CREDENTIAL_BYTES_MAX => {
                *self = Sasl::LoginPassword(user);
                // base64("Password:")
                SaslStep::Challenge(b64("UGFzc3dvcmQ6"))
            }
            _ => {
                *self = Sasl::Idle;
                SaslStep::Refuse(malformed())
            }
        }
    }
}

/// Failed AUTH attempts per client address (one per shard).
#[derive(Debug, Default)]
pub struct Throttle {
    failures: HashMap<IpAddr, (u32, u64)>,
}

impl Throttle {
    /// Whether `ip` may try again at `now_ms`.
    pub fn allowed(&mut self, ip: IpAddr, now_ms: u64) -> bool {
        self.failures(ip, now_ms) < AUTH_FAILURES_MAX
    }

    /// Failures of `ip` within the window.
    pub fn failures(&mut self, ip: IpAddr, now_ms: u64) -> u32 {
        match self.failures.get(&ip) {
            Some(&(n, last))
                if now_ms.saturating_sub(last) < AUTH_FAILURE_WINDOW.as_millis() as u64 =>
            {
                n
            }
            Some(_) => {
                self.failures.remove(&ip);
                0
            }
            None => 0,
        }
    }

    /// Records a failure; returns the delay before the failure reply.
    pub fn failed(&mut self, ip: IpAddr, now_ms: u64) -> Duration {
        let n = self.failures(ip, now_ms) + 1;
        if self.failures.len() >= AUTH_THROTTLE_ADDRESSES_MAX && !self.failures.contains_key(&ip) {
            let window = AUTH_FAILURE_WINDOW.as_millis() as u64;
            self.failures
                .retain(|_, &mut (_, last)| now_ms.saturating_sub(last) < window);
            if self.failures.len() >= AUTH_THROTTLE_ADDRESSES_MAX {
                self.failures.clear();
            }
        }
        self.failures.insert(ip, (n, now_ms));
        (AUTH_FAILURE_DELAY * n).min(AUTH_FAILURE_DELAY_MAX)
    }

    /// A success clears the address's failures.
    pub fn succeeded(&mut self, ip: IpAddr) {
        self.failures.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(b: &[u8]) -> String {
        STANDARD.encode(b)
    }

    #[test]
    fn plain_with_and_without_initial_response() {
        let mut s = Sasl::default();
        let step = s.start("plain", Some(&enc(b"\0alice\0secret")));
        assert_eq!(
            step,
            SaslStep::Check {
                user: "alice".into(),
                password: "secret".into()
            }
        );
        let step = s.start("PLAIN", None);
        assert!(matches!(step, SaslStep::Challenge(r) if r.code.value() == 334));
        let step = s.respond(&enc(b"alice\0alice\0pw"));
        assert!(matches!(step, SaslStep::Check { ref user, .. } if user == "alice"));
        // Another authorization identity, bad base64, missing parts.
        assert!(
            matches!(s.start("PLAIN", Some(&enc(b"bob\0alice\0pw"))), SaslStep::Refuse(r) if r.code.value() == 535)
        );
        assert!(
            matches!(s.start("PLAIN", Some("!!!")), SaslStep::Refuse(r) if r.code.value() == 501)
        );
        assert!(
            matches!(s.start("PLAIN", Some(&enc(b"alice"))), SaslStep::Refuse(r) if r.code.value() == 501)
        );
        assert!(matches!(s.start("PLAIN", Some("=")), SaslStep::Refuse(_)));
    }

    #[test]
    fn login_asks_user_then_password_and_can_be_cancelled() {
        let mut s = Sasl::default();
        let SaslStep::Challenge(r) = s.start("LOGIN", None) else {
            panic!("challenge expected")
        };
        assert_eq!(r.text.as_ref(), "VXNlcm5hbWU6");
        let SaslStep::Challenge(r) = s.respond(&enc(b"alice")) else {
            panic!("challenge expected")
        };
        assert_eq!(r.text.as_ref(), "UGFzc3dvcmQ6");
        assert_eq!(
            s.respond(&enc(b"pw")),
            SaslStep::Check {
                user: "alice".into(),
                password: "pw".into()
            }
        );
        s.start("LOGIN", None);
        assert!(matches!(s.respond("*"), SaslStep::Refuse(r) if r.code.value() == 501));
        assert_eq!(s, Sasl::Idle);
        assert!(matches!(s.start("CRAM-MD5", None), SaslStep::Refuse(r) if r.code.value() == 504));
    }

    #[test]
    fn users_file_and_hashes() {
        let h6 = sha_crypt::sha512_simple(
            "secret",
            &sha_crypt::Sha512Params::new(1000).expect("rounds"),
        )
        .expect("hash");
        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt = SaltString::encode_b64(b"0123456789abcdef").expect("salt");
        let ha = argon2::Argon2::default()
            .hash_password(b"hunter2", &salt)
            .expect("argon2")
            .to_string();
        let users = Users::parse(&format!("# users\nalice:{h6}\n\nbob:{ha}\n")).expect("parse");
        assert_eq!(users.len(), 2);
        assert!(verify(users.hash("alice").expect("alice"), "secret"));
        assert!(!verify(users.hash("alice").expect("alice"), "Secret"));
        assert!(verify(users.hash("bob").expect("bob"), "hunter2"));
        assert!(!verify(users.hash("bob").expect("bob"), "hunter3"));
        assert!(!format!("{users:?}").contains('$'), "hashes never printed");
        assert!(Users::parse("carol:plaintext\n").is_err());
        assert!(Users::parse("nocolon\n").is_err());
        assert!(Users::parse(&format!("a:{h6}\na:{h6}\n")).is_err());
    }

    proptest::proptest! {
        /// Peer bytes never panic the exchange, every step is a 334, a
        /// refusal or bounded credentials, and PLAIN round-trips.
        #[test]
        fn any_lines_give_a_defined_step(
            mech in "[A-Za-z-]{0,12}",
            lines in proptest::collection::vec(".{0,80}", 0..6),
            user in "[a-z]{1,20}",
            password in "[ -~]{0,40}",
        ) {
            let mut s = Sasl::default();
            let first = s.start(&mech, lines.first().map(String::as_str));
            let mut steps = vec![first];
            for l in &lines {
                steps.push(s.respond(l));
            }
            for step in steps {
                match step {
                    SaslStep::Challenge(r) => proptest::prop_assert_eq!(r.code.value(), 334),
                    SaslStep::Refuse(r) => proptest::prop_assert!(r.code.value() >= 500),
                    SaslStep::Check { user, password } => {
                        proptest::prop_assert!(!user.is_empty() && user.len() <= CREDENTIAL_BYTES_MAX);
                        proptest::prop_assert!(password.len() <= CREDENTIAL_BYTES_MAX);
                    }
                }
            }
            let encoded = enc(format!("\0{user}\0{password}").as_bytes());
            proptest::prop_assert_eq!(
                Sasl::default().start("PLAIN", Some(&encoded)),
                SaslStep::Check { user, password }
            );
        }
    }

    #[test]
    fn throttle_counts_delays_and_forgets() {
        let mut t = Throttle::default();
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        assert_eq!(t.failed(ip, 0), AUTH_FAILURE_DELAY);
        assert_eq!(t.failed(ip, 1), AUTH_FAILURE_DELAY * 2);
        for i in 2..AUTH_FAILURES_MAX {
            assert!(t.allowed(ip, u64::from(i)));
            assert!(t.failed(ip, u64::from(i)) <= AUTH_FAILURE_DELAY_MAX);
        }
        assert!(!t.allowed(ip, 100));
        let later = 100 + AUTH_FAILURE_WINDOW.as_millis() as u64 + 20;
        assert!(t.allowed(ip, later));
        t.failed(ip, later);
        t.succeeded(ip);
        assert_eq!(t.failures(ip, later), 0);
    }
}
