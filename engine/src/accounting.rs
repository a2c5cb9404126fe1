//! Accounting on a shard: the bounce category of every failure
//! (`sluice-outcomes` rules), the message facts each log record carries
//! (sender, size, tenant, campaign), `Reception` records, and the
//! delivery metrics the admin listener exports (delivery latency
//! histogram, bounces by site and category).
//!
//! Everything here is per shard and single-threaded (`Cell`/`RefCell`):
//! the admin listener reads it through the shard's mailbox
//! ([`crate::admin`]), never directly.

// std
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

// external
use sluice_outcomes::{Category, Classifier};
use sluice_smtp::EnhancedCode;

// crate
use crate::log::{DeliveryLog, LogRecord, RecordKind};
use crate::queue::{Accepted, EnqueueHook};
use crate::runtime::ShardSpool;

/// Upper bounds (seconds) of the delivery latency histogram buckets:
/// from arrival to the next hop's `2xx`, retries included.
pub const LATENCY_BOUNDS_S: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0, 1800.0, 3600.0,
    86400.0,
];

/// Compiles the bounce rules: the file, or the rules shipped with Sluice.
/// The error names the file and every problem.
pub fn load_bounce_rules(path: Option<&Path>) -> Result<Classifier, String> {
    match path {
        None => Ok(Classifier::default_rules()),
        Some(p) => Classifier::from_path(p).map_err(|e| format!("{}: {e}", p.display())),
    }
}

/// What every record of one message repeats.
#[derive(Debug, Clone, Default)]
pub struct MessageFacts {
    /// Spool id.
    pub id: u64,
    /// Reverse path (empty for `<>`).
    pub sender: String,
    /// Bytes as spooled.
    pub size: u64,
    /// Tenant, if stored.
    pub tenant: Option<String>,
    /// Campaign, if stored.
    pub campaign: Option<String>,
    /// Arrival, ms since the Unix epoch.
    pub arrival_ms: u64,
}

/// Delivery latency histogram (Prometheus style: cumulative at export).
#[derive(Debug, Clone, Default)]
pub struct LatencyHistogram {
    /// Count per bucket of [`LATENCY_BOUNDS_S`], plus one for `+Inf`.
    pub buckets: [u64; LATENCY_BOUNDS_S.len() + 1],
    /// Sum of observations, seconds.
    pub sum_s: f64,
    /// Observations.
    pub count: u64,
}

impl LatencyHistogram {
    /// Adds one observation.
    pub fn observe(&mut self, ms: u64) {
        let s = ms as f64 / 1000.0;
        let i = LATENCY_BOUNDS_S
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(LATENCY_BOUNDS_S.len());
        self.buckets[i] += 1;
        self.sum_s += s;
        self.count += 1;
    }

    /// Adds another histogram (shards are summed at export).
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        self.sum_s += other.sum_s;
        self.count += other.count;
    }
}

/// The shard's delivery metrics beyond the plain counters.
#[derive(Debug, Clone, Default)]
pub struct DeliveryMetrics {
    /// Arrival to delivery.
    pub latency: LatencyHistogram,
    /// Bounces (and expirations) by site, source (the bound source's
    /// name, else the site's pool; `""`: none) and category.
    pub bounced: HashMap<(String, String, Category), u64>,
    /// Transient failures by site, source (as for `bounced`) and category.
    pub transient: HashMap<(String, String, Category), u64>,
    /// Bounce messages (DSNs) queued to senders.
    pub dsns_queued: u64,
    /// DSNs that could not be queued (spool error).
    pub dsns_failed: u64,
    /// Reception records.
    pub received_recipients: u64,
}

/// A shard's accounting state, shared by its delivery tasks.
pub struct Accounting {
    classifier: RefCell<Rc<Classifier>>,
    scratch: RefCell<String>,
    last: RefCell<Option<Rc<MessageFacts>>>,
    /// Metrics.
    pub metrics: RefCell<DeliveryMetrics>,
    /// Bounce rules reloads so far.
    pub reloads: Cell<u64>,
    /// The last failure per destination domain: when (ms) and the reply
    /// (`sluice top`). Bounded by the number of destinations.
    pub last_error: RefCell<HashMap<String, (u64, String)>>,
}

impl Accounting {
    /// State starting with `rules`.
    pub fn new(rules: Classifier) -> Accounting {
        Accounting {
            classifier: RefCell::new(Rc::new(rules)),
            scratch: RefCell::new(String::with_capacity(256)),
            last: RefCell::new(None),
            metrics: RefCell::new(DeliveryMetrics::default()),
            reloads: Cell::new(0),
            last_error: RefCell::new(HashMap::new()),
        }
    }

    /// Replaces the bounce rules (admin reload).
    pub fn set_rules(&self, rules: Classifier) {
        *self.classifier.borrow_mut() = Rc::new(rules);
        self.reloads.set(self.reloads.get() + 1);
    }

    /// The category of a failure reply.
    pub fn classify(&self, code: u16, enhanced: Option<&str>, text: &str) -> Category {
        let enhanced = enhanced
            .and_then(|e| EnhancedCode::parse_prefix(e.as_bytes()))
            .map(|(e, _)| e);
        let mut line = self.scratch.borrow_mut();
        line.clear();
        use std::fmt::Write as _;
        // Writing into a String cannot fail.
        let _ = write!(line, "{code}");
        if let Some(e) = enhanced {
            let _ = write!(line, " {e}");
        }
        line.push(' ');
        line.push_str(text);
        let classifier = Rc::clone(&self.classifier.borrow());
        classifier.classify_line(code, enhanced, &line).category
    }

    /// Remembers the last failure of `domain` (only the first 200
    /// characters of the reply).
    pub fn note_error(&self, domain: &str, at_ms: u64, code: u16, text: &str) {
        let mut map = self.last_error.borrow_mut();
        let line: String = format!("{code} {text}").chars().take(200).collect();
        match map.get_mut(domain) {
            Some(e) => *e = (at_ms, line),
            None => {
                map.insert(domain.to_string(), (at_ms, line));
            }
        }
    }

    /// The facts of message `id`, read from `read` unless the last call
    /// was about the same message (recipients of one message settle one
    /// after the other, so this reads each record about once).
    pub fn facts(&self, id: u64, read: impl FnOnce() -> MessageFacts) -> Rc<MessageFacts> {
        if let Some(f) = self.last.borrow().as_ref() {
            if f.id == id {
                return Rc::clone(f);
            }
        }
        let f = Rc::new(read());
        *self.last.borrow_mut() = Some(Rc::clone(&f));
        f
    }
}

/// Reads the facts of a message from its spool record (empty facts when
/// the record is unreadable: the log line is still written).
pub fn read_facts(spool: &ShardSpool, id: u64, rec: &sluice_spool::RecordRef) -> MessageFacts {
    let text = |b: &[u8]| (!b.is_empty()).then(|| String::from_utf8_lossy(b).into_owned());
    match spool.message(rec) {
        Ok(record) => match record.parts() {
            Ok(p) => MessageFacts {
                id,
                sender: String::from_utf8_lossy(p.sender).into_owned(),
                size: p.body.len() as u64,
                tenant: text(p.tenant),
                campaign: text(p.campaign),
                arrival_ms: p.fixed.arrival_unix_ms,
            },
            Err(_) => MessageFacts {
                id,
                ..MessageFacts::default()
            },
        },
        Err(_) => MessageFacts {
            id,
            ..MessageFacts::default()
        },
    }
}

/// Installs the hook that writes one `Reception` record per recipient of
/// every message injection hands to the queues.
pub fn install_reception_hook(
    queues: &RefCell<crate::queue::Queues>,
    log: DeliveryLog,
    spool: ShardSpool,
    acct: Rc<Accounting>,
    shard: u32,
) {
    let hook = move |msg: &Accepted| {
        let facts = read_facts(&spool, msg.id, &msg.rec);
        let now = crate::deliver::now_unix_ms();
        let mut n = 0u64;
        for group in &msg.domains {
            for r in &group.recipients {
                log.record(&LogRecord {
                    kind: RecordKind::Reception,
                    id: msg.id,
                    sender: &msg.sender,
                    recipient: &r.address,
                    queue: &group.domain,
                    site: None,
                    pool: msg.pool.as_deref(),
                    source: None,
                    source_ip: None,
                    size: facts.size,
                    code: None,
                    enhanced: None,
                    text: "",
                    peer: None,
                    attempt: 0,
                    arrival_ms: msg.arrival_unix_ms,
                    at_ms: now,
                    shard,
                    category: None,
                    tenant: facts.tenant.as_deref(),
                    campaign: facts.campaign.as_deref(),
                    tls: Default::default(),
                });
                n += 1;
            }
        }
        acct.metrics.borrow_mut().received_recipients += n;
    };
    queues
        .borrow_mut()
        .set_enqueue_hook(EnqueueHook(Box::new(hook)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_get_the_shipped_categories() {
        let a = Accounting::new(Classifier::default_rules());
        assert_eq!(
            a.classify(
                550,
                Some("5.1.1"),
                "The email account that you tried to reach does not exist"
            ),
            Category::BadMailbox
        );
        assert_eq!(
            a.classify(
                452,
                Some("4.2.2"),
                "The email account that you tried to reach is over quota"
            ),
            Category::QuotaIssues
        );
        assert_eq!(
            a.classify(
                451,
                Some("4.4.1"),
                "connect to 127.0.0.1:9: Connection refused"
            ),
            Category::NoAnswerFromHost
        );
        // A reload replaces the rules.
        a.set_rules(
            Classifier::from_toml("[rules]\nspam-related = [\"does not exist\"]\n").unwrap(),
        );
        assert_eq!(
            a.classify(
                550,
                Some("5.1.1"),
                "The email account that you tried to reach does not exist"
            ),
            Category::SpamRelated
        );
        assert_eq!(a.reloads.get(), 1);
    }

    #[test]
    fn bad_log_admin_and_rules_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("rules.toml");
        std::fs::write(&rules, "[rules]\nbad-mailbox = [\"(unclosed\"]\n").unwrap();
        let text = format!(
            "[delivery]\nbounce_rules = \"{}\"\n[log]\nrotate_size = \"1\"\nrotate_interval = \"soon\"\n\
             [admin]\nlisten = \"nowhere\"\nallow = [\"x\"]\n",
            rules.display()
        );
        let err = crate::config::Config::parse("t.toml", &text, None)
            .unwrap_err()
            .to_string();
        for k in [
            "delivery.bounce_rules",
            "log.rotate_size",
            "log.rotate_interval",
            "admin.listen",
            "admin.allow[0]",
        ] {
            assert!(err.contains(k), "{k} missing in {err}");
        }
        let ok = crate::config::Config::parse(
            "t.toml",
            "[log]\ncsv = true\n[admin]\nlisten = \"off\"\n[delivery]\ndsn = false\n",
            None,
        )
        .unwrap();
        assert!(ok.log.csv && ok.admin.listen.is_none() && !ok.dsn_bounces);
        let d = crate::config::Config::embedded_default().unwrap();
        assert_eq!(d.admin.listen, Some("127.0.0.1:8025".parse().unwrap()));
        assert!(d.admin.allows("127.0.0.1".parse().unwrap()));
        assert!(d.admin.allows("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!d.admin.allows("192.0.2.1".parse().unwrap()));
        assert!(d.dsn_bounces && !d.log.csv);
    }

    #[test]
    fn latency_buckets_hold_their_bounds() {
        let mut h = LatencyHistogram::default();
        h.observe(5);
        h.observe(6);
        h.observe(10_000_000_000);
        assert_eq!(h.buckets[0], 1);
        assert_eq!(h.buckets[1], 1);
        assert_eq!(h.buckets[LATENCY_BOUNDS_S.len()], 1);
        assert_eq!(h.count, 3);
    }

    #[test]
    fn facts_are_read_once_per_message() {
        let a = Accounting::new(Classifier::default_rules());
        let reads = Cell::new(0);
        let read = |id| {
            reads.set(reads.get() + 1);
            MessageFacts {
                id,
                size: 10,
                ..MessageFacts::default()
            }
        };
        a.facts(1, || read(1));
        a.facts(1, || read(1));
        a.facts(2, || read(2));
        assert_eq!(reads.get(), 2);
    }
}
