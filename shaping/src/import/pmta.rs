//! PowerMTA: `<domain NAME>` … `</domain>` blocks (`<domain *>` is the
//! default) and the `<smtp-pattern-list NAME>` blocks they use to enter
//! backoff mode. Other blocks and directives outside these are reported.

use std::collections::BTreeMap;

use toml::{Table, Value};

use super::{finish, squeeze, ImportError, Imported, Unmapped};
use crate::units::{parse_duration, parse_rate};

/// Lines in a PowerMTA file we read at most (a bound on input).
const LINES_MAX: usize = 1_000_000;

struct Block {
    name: String,
    line: usize,
    directives: Vec<(usize, String, String)>,
}

/// Converts PowerMTA `<domain>` configuration to a Sluice rules file.
pub fn import_pmta(text: &str, file: &str) -> Result<Imported, ImportError> {
    let syntax = |line: usize, message: String| ImportError::Syntax {
        file: file.to_string(),
        message: format!("line {line}: {message}"),
    };
    let mut domains: Vec<Block> = Vec::new();
    let mut patterns: BTreeMap<String, Block> = BTreeMap::new();
    let mut unmapped = Vec::new();
    // (kind, block) while inside a block.
    let mut open: Option<(String, Block)> = None;
    for (index, raw) in text.lines().enumerate().take(LINES_MAX) {
        let number = index + 1;
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if let Some(tag) = line.strip_prefix("</") {
            let kind = tag.trim_end_matches('>').trim();
            match open.take() {
                Some((open_kind, block)) if open_kind == kind => match kind {
                    "domain" => domains.push(block),
                    "smtp-pattern-list" => {
                        patterns.insert(block.name.clone(), block);
                    }
                    _ => {}
                },
                _ => {
                    return Err(syntax(
                        number,
                        format!("`{line}` closes a block that is not open"),
                    ))
                }
            }
            continue;
        }
        if let Some(tag) = line.strip_prefix('<') {
            let inner = tag
                .strip_suffix('>')
                .ok_or_else(|| syntax(number, format!("`{line}`: missing `>`")))?;
            if open.is_some() {
                return Err(syntax(number, "blocks do not nest here".into()));
            }
            let (kind, name) = inner.split_once(char::is_whitespace).unwrap_or((inner, ""));
            if kind != "domain" && kind != "smtp-pattern-list" {
                unmapped.push(Unmapped {
                    path: format!("line {number}: <{kind}>"),
                    reason: "only <domain> and <smtp-pattern-list> blocks are imported".into(),
                });
            }
            open = Some((
                kind.to_string(),
                Block {
                    name: name.trim().to_string(),
                    line: number,
                    directives: Vec::new(),
                },
            ));
            continue;
        }
        let (key, value) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        match &mut open {
            Some((kind, block)) if kind == "domain" || kind == "smtp-pattern-list" => {
                block
                    .directives
                    .push((number, key.to_string(), value.trim().to_string()));
            }
            Some(_) => {}
            None => unmapped.push(Unmapped {
                path: format!("line {number}: {key}"),
                reason: "global directives are not imported".into(),
            }),
        }
    }
    if let Some((kind, block)) = open {
        return Err(syntax(block.line, format!("<{kind}> is never closed")));
    }

    let mut out = Table::new();
    let mut domain_tables = Table::new();
    let mut providers = Table::new();
    for block in &domains {
        let table = domain(block, &patterns, &mut unmapped);
        if block.name == "*" {
            out.insert("default".into(), Value::Table(table));
        } else if let Some(suffix) = block.name.strip_prefix("*.") {
            // A wildcard domain is a provider matching the suffix.
            let mut t = table;
            let mut m = Table::new();
            m.insert("domain_suffix".into(), Value::String(suffix.to_string()));
            t.insert("match".into(), Value::Array(vec![Value::Table(m)]));
            providers.insert(
                format!("wildcard-{}", suffix.replace('.', "-")),
                Value::Table(t),
            );
        } else {
            domain_tables.insert(block.name.to_ascii_lowercase(), Value::Table(table));
        }
    }
    if !domain_tables.is_empty() {
        out.insert("domain".into(), Value::Table(domain_tables));
    }
    if !providers.is_empty() {
        out.insert("provider".into(), Value::Table(providers));
    }
    finish(out, unmapped, file)
}

fn yes(value: &str) -> Option<bool> {
    match value {
        "yes" | "true" => Some(true),
        "no" | "false" => Some(false),
        _ => None,
    }
}

fn domain(
    block: &Block,
    patterns: &BTreeMap<String, Block>,
    unmapped: &mut Vec<Unmapped>,
) -> Table {
    let mut out = Table::new();
    let mut backoff = Table::new();
    let mut pattern_list = None;
    for (line, key, value) in &block.directives {
        let v = squeeze(value);
        let mut note = |reason: &str| {
            unmapped.push(Unmapped {
                path: format!("line {line}: {key}"),
                reason: reason.to_string(),
            })
        };
        let bad = format!("`{value}` is not a value Sluice reads");
        match key.as_str() {
            "max-smtp-out" => match v.parse::<i64>() {
                Ok(n) if n > 0 => {
                    out.insert("max_connections".into(), Value::Integer(n));
                }
                _ => note(&bad),
            },
            "max-msg-per-connection" => match v.parse::<i64>() {
                Ok(n) if n > 0 => {
                    out.insert("max_deliveries_per_connection".into(), Value::Integer(n));
                }
                _ => note(&bad),
            },
            "max-rcpt-per-message" => match v.parse::<i64>() {
                Ok(n) if n > 0 => {
                    out.insert("max_recipients_per_transaction".into(), Value::Integer(n));
                }
                _ => note(&bad),
            },
            "max-msg-rate" | "max-connect-rate" | "backoff-max-msg-rate" => {
                let field = match key.as_str() {
                    "max-msg-rate" => "max_message_rate",
                    "max-connect-rate" => "max_connection_rate",
                    _ => "backoff_max_message_rate",
                };
                if v == "unlimited" {
                    continue;
                }
                if parse_rate(&v).is_ok_and(|r| r.count > 0) {
                    let target = if field.starts_with("backoff") {
                        &mut backoff
                    } else {
                        &mut out
                    };
                    target.insert(field.into(), Value::String(v));
                } else {
                    note(&bad);
                }
            }
            "retry-after"
            | "bounce-after"
            | "backoff-retry-after"
            | "backoff-to-normal-after"
            | "connect-timeout"
            | "data-termination-timeout" => {
                let field = match key.as_str() {
                    "retry-after" => "retry_after",
                    "bounce-after" => "max_age",
                    "backoff-retry-after" => "backoff_retry_after",
                    "backoff-to-normal-after" => "recover_after",
                    "connect-timeout" => "connect_timeout",
                    _ => "data_timeout",
                };
                if parse_duration(&v).is_ok_and(|d| !d.is_zero()) {
                    let target = if field.starts_with("backoff") || field == "recover_after" {
                        &mut backoff
                    } else {
                        &mut out
                    };
                    target.insert(field.into(), Value::String(v));
                } else {
                    note(&bad);
                }
            }
            "backoff-to-normal-after-delivery" => match yes(&v) {
                Some(true) => {
                    backoff.insert("recover_after_deliveries".into(), Value::Integer(1));
                }
                Some(false) => {}
                None => note(&bad),
            },
            "use-starttls" => match yes(&v) {
                Some(true) => {
                    out.entry("tls")
                        .or_insert(Value::String("opportunistic".into()));
                }
                Some(false) => {
                    out.insert("tls".into(), Value::String("disabled".into()));
                }
                None => note(&bad),
            },
            "require-starttls" => match yes(&v) {
                Some(true) => {
                    out.insert("tls".into(), Value::String("required".into()));
                }
                Some(false) => {}
                None => note(&bad),
            },
            "smtp-pattern-list" => pattern_list = Some((*line, v)),
            "mx-rollup" => note("Sluice groups domains by [provider] match on MX suffixes"),
            _ => note("no Sluice equivalent"),
        }
    }
    let mut rules = Vec::new();
    if let Some((line, name)) = pattern_list {
        match patterns.get(&name) {
            None => unmapped.push(Unmapped {
                path: format!("line {line}: smtp-pattern-list"),
                reason: format!("no <smtp-pattern-list {name}> block"),
            }),
            Some(list) => {
                for (pline, key, value) in &list.directives {
                    match pattern(key, value, &backoff) {
                        Ok(rule) => {
                            let mut rule = rule;
                            rule.insert(
                                "name".into(),
                                Value::String(format!("{}-line-{pline}", list.name)),
                            );
                            rules.push(Value::Table(rule));
                        }
                        Err(reason) => unmapped.push(Unmapped {
                            path: format!("line {pline}: {key}"),
                            reason,
                        }),
                    }
                }
            }
        }
    } else if !backoff.is_empty() {
        unmapped.push(Unmapped {
            path: format!("line {}: <domain {}>", block.line, block.name),
            reason: "backoff-* settings without an smtp-pattern-list have nothing to trigger them"
                .into(),
        });
    }
    if !rules.is_empty() {
        out.insert("backoff".into(), Value::Array(rules));
    }
    out
}

/// `reply /REGEX/ mode=backoff` (the only pattern action that maps).
fn pattern(key: &str, value: &str, backoff: &Table) -> Result<Table, String> {
    if key != "reply" {
        return Err("only `reply /regex/ mode=backoff` patterns map".into());
    }
    let rest = value
        .strip_prefix('/')
        .ok_or("expected /regex/ after reply")?;
    let end = rest.rfind('/').ok_or("the regex is not closed with /")?;
    let (regex, action) = (&rest[..end], rest[end + 1..].trim());
    if action != "mode=backoff" {
        return Err(format!(
            "pattern action `{action}` does not map (mode=backoff does)"
        ));
    }
    let mut rule = backoff.clone();
    if !rule.contains_key("recover_after") && !rule.contains_key("recover_after_deliveries") {
        return Err("backoff needs backoff-to-normal-after or backoff-to-normal-after-delivery in the domain".into());
    }
    if !rule.contains_key("backoff_max_message_rate") && !rule.contains_key("backoff_retry_after") {
        return Err(
            "backoff needs backoff-max-msg-rate or backoff-retry-after in the domain".into(),
        );
    }
    rule.insert("text".into(), Value::String(regex.to_string()));
    rule.insert("action".into(), Value::String("backoff".into()));
    Ok(rule)
}
