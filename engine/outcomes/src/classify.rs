//! Bounce classification: reply → [`Category`] through operator-editable
//! regex rules, with RFC 3463 enhanced-code fallbacks.
//!
//! A rules file is TOML:
//!
//! ```toml
//! # Optional: precedence of categories, first match wins. Categories not
//! # listed keep their default place after the listed ones.
//! order = ["spam-related", "bad-mailbox"]
//!
//! [rules]
//! bad-mailbox = ['user unknown', '^5\d\d 5\.1\.1 ']
//! spam-related = ['\bspam\b']
//! ```
//!
//! Every regex is matched case-insensitively against the line
//! `"CODE X.Y.Z text"` (or `"CODE text"` without an enhanced code), with a
//! multi-line reply's lines joined by single spaces. All patterns are
//! compiled into one [`RegexSet`], so a classification is one pass over the
//! text whatever the number of rules; the lowest matching pattern index
//! (category precedence, then position in the file) wins.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

use regex::{RegexBuilder, RegexSet, RegexSetBuilder};
use serde::{Deserialize, Serialize};
use sluice_smtp::{EnhancedCode, Reply};

use crate::category::{category_for_code, category_for_reply_code, Category};

/// The default rules shipped with Sluice.
pub const DEFAULT_RULES_TOML: &str = include_str!("../bounce-rules.toml");

/// Largest compiled size of the rule set; generous for thousands of rules
/// while bounding what a hostile rules file can make us allocate.
const SET_BYTES_MAX: usize = 64 << 20;

/// The verdict on one reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Classification {
    /// Why it failed.
    pub category: Category,
    /// `true` for a `5yz` reply: the recipient bounces; `false` for a
    /// `4yz` (or any other) reply: it stays queued (RFC 5321 §4.2.1).
    pub permanent: bool,
    /// Where the category came from.
    pub source: MatchSource,
}

/// How a [`Classification`] was reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MatchSource {
    /// A regex rule; the index is the pattern's position within its
    /// category's list in the rules file.
    Rule {
        /// Index within the category's list.
        index: usize,
    },
    /// No rule matched; the RFC 3463 enhanced code decided.
    EnhancedCode,
    /// No rule matched and there was no enhanced code: the reply code.
    ReplyCode,
}

/// A rules file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The file could not be read.
    #[error("cannot read bounce rules {path}: {source}")]
    Io {
        /// The path given.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not valid TOML, or a key or category that does not exist.
    #[error("bounce rules: {path}: {message}")]
    Syntax {
        /// Key path of the problem (`rules.bad-mailbox`).
        path: String,
        /// The parser's message.
        message: String,
    },
    /// One or more rules are unusable; every problem is listed.
    #[error("bounce rules: {}", DisplayProblems(.0))]
    Invalid(Vec<RuleProblem>),
}

/// One unusable entry of a rules file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleProblem {
    /// `rules.<category>[index]` is not a valid regex.
    BadRegex {
        /// The category.
        category: Category,
        /// Index in the category's list.
        index: usize,
        /// The regex crate's message.
        message: String,
    },
    /// A category appears twice in `order`.
    DuplicateOrder {
        /// The repeated category.
        category: Category,
    },
    /// The patterns together exceed the compiled-size limit.
    TooLarge {
        /// The regex crate's message.
        message: String,
    },
}

impl fmt::Display for RuleProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleProblem::BadRegex {
                category,
                index,
                message,
            } => write!(f, "rules.{category}[{index}]: invalid regex: {message}"),
            RuleProblem::DuplicateOrder { category } => {
                write!(f, "order: {category} is listed twice")
            }
            RuleProblem::TooLarge { message } => write!(f, "rules: too large: {message}"),
        }
    }
}

struct DisplayProblems<'a>(&'a [RuleProblem]);

impl fmt::Display for DisplayProblems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// The rules file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    #[serde(default)]
    order: Vec<Category>,
    #[serde(default)]
    rules: BTreeMap<Category, Vec<String>>,
}

/// Compiled rules. Build once (per shard, or shared read-only) and reuse.
#[derive(Debug, Clone)]
pub struct Classifier {
    set: RegexSet,
    /// Per pattern in `set`: its category and index within the category.
    patterns: Vec<(Category, usize)>,
}

impl Classifier {
    /// The rules shipped in `bounce-rules.toml`.
    pub fn default_rules() -> Self {
        // Invariant: the embedded file is checked by the `default_rules_parse`
        // test, so it always parses.
        Self::from_toml(DEFAULT_RULES_TOML).expect("embedded bounce-rules.toml is valid")
    }

    /// Reads and compiles a rules file.
    pub fn from_path(path: &Path) -> Result<Self, RulesError> {
        let text = std::fs::read_to_string(path).map_err(|source| RulesError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// Compiles rules from TOML text.
    pub fn from_toml(text: &str) -> Result<Self, RulesError> {
        let de = toml::Deserializer::new(text);
        let raw: RawRules = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            RulesError::Syntax {
                path,
                message: e.into_inner().message().to_owned(),
            }
        })?;
        Self::try_from(raw)
    }

    /// Classifies a reply. `scratch` is reused between calls to build the
    /// matched line without allocating once it has grown.
    pub fn classify_with(&self, reply: &Reply, scratch: &mut String) -> Classification {
        scratch.clear();
        // Writing into a String cannot fail.
        let _ = write!(scratch, "{}", reply.code);
        if let Some(e) = reply.enhanced {
            let _ = write!(scratch, " {e}");
        }
        for line in reply.lines() {
            scratch.push(' ');
            scratch.push_str(line);
        }
        self.classify_line(reply.code.value(), reply.enhanced, scratch)
    }

    /// Classifies a reply, allocating a scratch line.
    pub fn classify(&self, reply: &Reply) -> Classification {
        let mut scratch = String::with_capacity(reply.text.len() + 16);
        self.classify_with(reply, &mut scratch)
    }

    /// Classifies an already formatted `"CODE X.Y.Z text"` line; `code` and
    /// `enhanced` drive the fallbacks and the permanence.
    pub fn classify_line(
        &self,
        code: u16,
        enhanced: Option<EnhancedCode>,
        line: &str,
    ) -> Classification {
        let permanent = (500..600).contains(&code);
        // The lowest index is the highest precedence (patterns are sorted
        // by category order, then file order).
        if let Some(i) = self.set.matches(line).iter().next() {
            let (category, index) = self.patterns[i];
            return Classification {
                category,
                permanent,
                source: MatchSource::Rule { index },
            };
        }
        match enhanced {
            Some(e) => Classification {
                category: category_for_code(e),
                permanent,
                source: MatchSource::EnhancedCode,
            },
            None => Classification {
                category: category_for_reply_code(code),
                permanent,
                source: MatchSource::ReplyCode,
            },
        }
    }

    /// Number of compiled patterns.
    pub fn pattern_count(&self) -> usize {
        self.patterns.len()
    }
}

impl TryFrom<RawRules> for Classifier {
    type Error = RulesError;

    fn try_from(raw: RawRules) -> Result<Self, RulesError> {
        let mut problems = Vec::new();
        let mut order: Vec<Category> = Vec::with_capacity(Category::ALL.len());
        for &c in &raw.order {
            if order.contains(&c) {
                problems.push(RuleProblem::DuplicateOrder { category: c });
            } else {
                order.push(c);
            }
        }
        for c in Category::ALL {
            if !order.contains(&c) {
                order.push(c);
            }
        }
        let mut sources = Vec::new();
        let mut patterns = Vec::new();
        for c in order {
            let Some(list) = raw.rules.get(&c) else {
                continue;
            };
            for (index, pattern) in list.iter().enumerate() {
                // Compile each alone first so an error names its entry.
                match RegexBuilder::new(pattern)
                    .case_insensitive(true)
                    .size_limit(SET_BYTES_MAX)
                    .build()
                {
                    Ok(_) => {
                        sources.push(pattern.as_str());
                        patterns.push((c, index));
                    }
                    Err(e) => problems.push(RuleProblem::BadRegex {
                        category: c,
                        index,
                        message: e.to_string(),
                    }),
                }
            }
        }
        if !problems.is_empty() {
            return Err(RulesError::Invalid(problems));
        }
        let set = RegexSetBuilder::new(sources)
            .case_insensitive(true)
            .size_limit(SET_BYTES_MAX)
            .build()
            .map_err(|e| {
                RulesError::Invalid(vec![RuleProblem::TooLarge {
                    message: e.to_string(),
                }])
            })?;
        Ok(Self { set, patterns })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_smtp::ReplyCode;

    fn reply(code: u16, e: Option<(u8, u16, u16)>, text: &'static str) -> Reply {
        Reply {
            code: ReplyCode::new(code).unwrap(),
            enhanced: e.map(|(c, s, d)| EnhancedCode::new(c, s, d).unwrap()),
            text: text.into(),
        }
    }

    #[test]
    fn default_rules_parse() {
        let c = Classifier::default_rules();
        assert!(c.pattern_count() > 50);
    }

    #[test]
    fn precedence_and_fallbacks() {
        let rules = r#"
            order = ["policy-related"]
            [rules]
            spam-related = ['spam']
            policy-related = ['blocked']
        "#;
        let c = Classifier::from_toml(rules).unwrap();
        let r = reply(550, Some((5, 7, 1)), "blocked as spam");
        let got = c.classify(&r);
        assert_eq!(got.category, Category::PolicyRelated);
        assert!(got.permanent);
        assert_eq!(got.source, MatchSource::Rule { index: 0 });
        let r = reply(452, Some((4, 2, 2)), "try later");
        let got = c.classify(&r);
        assert_eq!(got.category, Category::QuotaIssues);
        assert!(!got.permanent);
        assert_eq!(got.source, MatchSource::EnhancedCode);
        let got = c.classify(&reply(553, None, "nope"));
        assert_eq!(
            (got.category, got.source),
            (Category::BadMailbox, MatchSource::ReplyCode)
        );
        // Case-insensitive, and the code is part of the matched line.
        let c = Classifier::from_toml("[rules]\nbad-mailbox = ['^550 5\\.1\\.1 .*USER']").unwrap();
        let got = c.classify(&reply(550, Some((5, 1, 1)), "no such user"));
        assert_eq!(got.source, MatchSource::Rule { index: 0 });
        // Multi-line replies are joined with spaces.
        let c = Classifier::from_toml("[rules]\nquota-issues = ['over quota today']").unwrap();
        let got = c.classify(&reply(452, None, "over\nquota\ntoday"));
        assert_eq!(got.category, Category::QuotaIssues);
    }

    #[test]
    fn errors_name_their_key() {
        let err = Classifier::from_toml(
            "[rules]\nbad-mailbox = ['ok', '(unclosed']\nspam-related = ['[']",
        )
        .unwrap_err();
        match &err {
            RulesError::Invalid(p) => {
                assert_eq!(p.len(), 2);
                assert!(
                    matches!(
                        p[0],
                        RuleProblem::BadRegex {
                            category: Category::BadMailbox,
                            index: 1,
                            ..
                        }
                    ) || matches!(
                        p[1],
                        RuleProblem::BadRegex {
                            category: Category::BadMailbox,
                            index: 1,
                            ..
                        }
                    )
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains("rules.bad-mailbox[1]"), "{err}");
        let err = Classifier::from_toml("[rules]\nbad-mailbox = ['x']\nbad-mailboxes = ['y']")
            .unwrap_err();
        assert!(matches!(err, RulesError::Syntax { .. }), "{err:?}");
        assert!(err.to_string().contains("rules"), "{err}");
        let err = Classifier::from_toml("typo = 1").unwrap_err();
        assert!(err.to_string().contains("typo"), "{err}");
        let err = Classifier::from_toml("order = ['other', 'other']").unwrap_err();
        assert!(err.to_string().contains("listed twice"), "{err}");
    }

    /// Compiled once: building the default set per case would dominate.
    static DEFAULT: std::sync::LazyLock<Classifier> =
        std::sync::LazyLock::new(Classifier::default_rules);

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Arbitrary rules text is either accepted or refused with an
        /// error; it never panics.
        #[test]
        fn arbitrary_rules_text_never_panics(
            text in "(\\[rules\\]\n|order = |bad-mailbox = |\\['|'\\]|\\(|\\[|\\\\|,|\n|[a-z ]{1,8}){0,24}"
        ) {
            let _ = Classifier::from_toml(&text);
        }

        /// Arbitrary reply text always gets a category, permanent exactly
        /// for 5yz.
        #[test]
        fn arbitrary_replies_classify(text in "\\PC{0,400}", code in 400u16..560) {
            proptest::prop_assume!(ReplyCode::new(code).is_some());
            let c = &*DEFAULT;
            let r = Reply { code: ReplyCode::new(code).unwrap(), enhanced: None, text: text.into() };
            let got = c.classify(&r);
            proptest::prop_assert_eq!(got.permanent, code >= 500);
        }
    }

    #[test]
    fn reads_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        std::fs::write(&path, "[rules]\nother = ['x']\n").unwrap();
        assert_eq!(Classifier::from_path(&path).unwrap().pattern_count(), 1);
        let err = Classifier::from_path(&dir.path().join("missing.toml")).unwrap_err();
        assert!(matches!(err, RulesError::Io { .. }));
    }
}
