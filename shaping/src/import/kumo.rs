//! KumoMTA `shaping.toml`: `["default"]`, `["domain"]`,
//! `["domain".sources."name"]`, `[provider."name"]` with
//! `match = [{MXSuffix = …}, {DomainSuffix = …}]`, and `automation` rules.

use toml::{Table, Value};

use super::{finish, squeeze, ImportError, Imported, Unmapped};
use crate::config::key_path;
use crate::units::{parse_duration, parse_rate};

/// Converts KumoMTA shaping TOML to a Sluice rules file.
pub fn import_kumo(text: &str, file: &str) -> Result<Imported, ImportError> {
    let input: Table = text
        .parse()
        .map_err(|e: toml::de::Error| ImportError::Syntax {
            file: file.to_string(),
            message: e.to_string(),
        })?;
    let mut out = Table::new();
    let mut unmapped = Vec::new();
    let mut domains = Table::new();
    let mut providers = Table::new();
    for (name, value) in input {
        let Value::Table(section) = value else {
            unmapped.push(Unmapped {
                path: name,
                reason: "a top-level value that is not a table".into(),
            });
            continue;
        };
        match name.as_str() {
            "default" => {
                out.insert(
                    "default".into(),
                    Value::Table(rule(&section, "default", false, &mut unmapped)),
                );
            }
            "provider" => {
                for (pname, pvalue) in section {
                    let path = key_path("provider", &pname);
                    match pvalue {
                        Value::Table(p) => {
                            providers
                                .insert(pname, Value::Table(rule(&p, &path, true, &mut unmapped)));
                        }
                        _ => unmapped.push(Unmapped {
                            path,
                            reason: "not a table".into(),
                        }),
                    }
                }
            }
            domain => {
                let path = format!("{domain:?}");
                domains.insert(
                    domain.to_string(),
                    Value::Table(rule(&section, &path, false, &mut unmapped)),
                );
            }
        }
    }
    if !domains.is_empty() {
        out.insert("domain".into(), Value::Table(domains));
    }
    if !providers.is_empty() {
        out.insert("provider".into(), Value::Table(providers));
    }
    {
        // Sources referenced by per-source overrides must exist in Sluice;
        // KumoMTA defines them elsewhere (sources.toml), so they are listed.
        let mut sources = Table::new();
        collect_sources(&out, &mut sources);
        if !sources.is_empty() {
            for name in sources.keys() {
                unmapped.push(Unmapped {
                    path: key_path("source", name),
                    reason:
                        "egress sources live in KumoMTA's sources.toml: a placeholder [source] \
                             with bind 0.0.0.0 was written; set its bind address and EHLO name"
                            .into(),
                });
            }
            out.insert("source".into(), Value::Table(sources));
        }
    }
    finish(out, unmapped, file)
}

fn collect_sources(out: &Table, sources: &mut Table) {
    for section in ["domain", "provider"] {
        let Some(Value::Table(entries)) = out.get(section) else {
            continue;
        };
        for entry in entries.values() {
            let Some(Value::Table(over)) = entry.get("source") else {
                continue;
            };
            for name in over.keys() {
                let mut placeholder = Table::new();
                placeholder.insert("bind".into(), Value::String("0.0.0.0".into()));
                placeholder.insert("ehlo".into(), Value::String("localhost".into()));
                sources.insert(name.clone(), Value::Table(placeholder));
            }
        }
    }
}

fn rule(section: &Table, path: &str, provider: bool, unmapped: &mut Vec<Unmapped>) -> Table {
    let mut out = Table::new();
    for (key, value) in section {
        let note = |reason: &str| Unmapped {
            path: format!("{path}.{key}"),
            reason: reason.to_string(),
        };
        let text = match value {
            Value::String(s) => Some(squeeze(s)),
            Value::Integer(i) => Some(i.to_string()),
            _ => None,
        };
        let renamed = match key.as_str() {
            "connection_limit" | "provider_connection_limit" => Some("max_connections"),
            "max_message_rate" | "provider_max_message_rate" => Some("max_message_rate"),
            "max_connection_rate" => Some("max_connection_rate"),
            "max_deliveries_per_connection" => Some("max_deliveries_per_connection"),
            "max_recipients_per_batch" => Some("max_recipients_per_transaction"),
            "connect_timeout" => Some("connect_timeout"),
            "data_dot_timeout" => Some("data_timeout"),
            _ => None,
        };
        match (key.as_str(), renamed, text) {
            (_, Some(to), Some(t)) => {
                if let Some(v) = convert(to, &t) {
                    if provider && key.starts_with("provider_") || !out.contains_key(to) {
                        out.insert(to.into(), v);
                    }
                } else {
                    unmapped.push(note(&format!("`{t}` is not a value Sluice understands for {to}")));
                }
            }
            ("enable_tls", _, Some(t)) => match t.as_str() {
                "Disabled" => {
                    out.insert("tls".into(), Value::String("disabled".into()));
                }
                "Opportunistic" | "OpportunisticInsecure" => {
                    out.insert("tls".into(), Value::String("opportunistic".into()));
                }
                "Required" => {
                    out.insert("tls".into(), Value::String("required-verified".into()));
                }
                "RequiredInsecure" => {
                    out.insert("tls".into(), Value::String("required".into()));
                }
                other => unmapped.push(note(&format!("unknown TLS mode `{other}`"))),
            },
            ("match", _, _) if provider => {
                out.insert("match".into(), Value::Array(matches(value, path, unmapped)));
            }
            ("sources", _, _) => {
                let Value::Table(sources) = value else {
                    unmapped.push(note("not a table"));
                    continue;
                };
                let mut over = Table::new();
                for (name, v) in sources {
                    if let Value::Table(t) = v {
                        let sub = format!("{path}.sources.{name:?}");
                        over.insert(name.clone(), Value::Table(rule(t, &sub, false, unmapped)));
                    }
                }
                out.insert("source".into(), Value::Table(over));
            }
            ("automation", _, _) => {
                let rules = automation(value, path, unmapped);
                if !rules.is_empty() {
                    out.insert("backoff".into(), Value::Array(rules));
                }
            }
            ("mx_rollup", _, _) => unmapped.push(note("Sluice groups domains by [provider] match on MX suffixes; MX rollup per domain does not map")),
            ("replace_base", _, _) => unmapped.push(note("Sluice reads one rules file; composition does not map")),
            _ => unmapped.push(note("no Sluice equivalent")),
        }
    }
    out
}

fn convert(field: &str, text: &str) -> Option<Value> {
    match field {
        "max_message_rate" | "max_connection_rate" => parse_rate(text)
            .ok()
            .map(|_| Value::String(text.to_string())),
        "connect_timeout" | "data_timeout" => parse_duration(text)
            .ok()
            .map(|_| Value::String(text.to_string())),
        _ => text
            .replace('_', "")
            .parse::<i64>()
            .ok()
            .filter(|n| *n > 0)
            .map(Value::Integer),
    }
}

fn matches(value: &Value, path: &str, unmapped: &mut Vec<Unmapped>) -> Vec<Value> {
    let mut out = Vec::new();
    let items = match value {
        Value::Array(items) => items.clone(),
        other => vec![other.clone()],
    };
    for (i, item) in items.iter().enumerate() {
        let Value::Table(t) = item else { continue };
        for (kind, suffix) in t {
            let to = match kind.as_str() {
                "MXSuffix" => "mx_suffix",
                "DomainSuffix" => "domain_suffix",
                other => {
                    unmapped.push(Unmapped {
                        path: format!("{path}.match[{i}].{other}"),
                        reason: "only MXSuffix and DomainSuffix map".into(),
                    });
                    continue;
                }
            };
            if let Value::String(s) = suffix {
                let mut m = Table::new();
                m.insert(
                    to.into(),
                    Value::String(s.trim_start_matches('.').to_string()),
                );
                out.push(Value::Table(m));
            }
        }
    }
    out
}

fn automation(value: &Value, path: &str, unmapped: &mut Vec<Unmapped>) -> Vec<Value> {
    let Value::Array(items) = value else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let here = format!("{path}.automation[{i}]");
        let Value::Table(t) = item else { continue };
        let regexes: Vec<String> = match t.get("regex") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        if regexes.is_empty() {
            unmapped.push(Unmapped {
                path: here,
                reason: "an automation rule without a regex does not map".into(),
            });
            continue;
        }
        let mut rule = Table::new();
        rule.insert(
            "name".into(),
            Value::String(format!("kumo-{}-{i}", path.trim_matches('"'))),
        );
        rule.insert(
            "text".into(),
            Value::String(format!("(?:{})", regexes.join(")|(?:"))),
        );
        let duration = t.get("duration").and_then(Value::as_str).map(squeeze);
        let actions = match t.get("action") {
            Some(Value::Array(a)) => a.clone(),
            Some(v) => vec![v.clone()],
            None => Vec::new(),
        };
        let mut kind = "backoff";
        for action in &actions {
            match action {
                Value::String(s) if s == "Suspend" => kind = "suspend",
                Value::Table(a) if a.contains_key("SetConfig") => {
                    let Some(Value::Table(set)) = a.get("SetConfig") else {
                        continue;
                    };
                    let name = set.get("name").and_then(Value::as_str).unwrap_or("");
                    let value = set.get("value");
                    match (name, value) {
                        ("max_message_rate", Some(Value::String(r))) if parse_rate(&squeeze(r)).is_ok() => {
                            rule.insert("backoff_max_message_rate".into(), Value::String(squeeze(r)));
                        }
                        ("connection_limit", Some(Value::Integer(n))) if *n > 0 => {
                            rule.insert("backoff_max_connections".into(), Value::Integer(*n));
                        }
                        _ => unmapped.push(Unmapped {
                            path: format!("{here}.action"),
                            reason: format!("SetConfig of `{name}` does not map (only max_message_rate and connection_limit)"),
                        }),
                    }
                }
                other => unmapped.push(Unmapped {
                    path: format!("{here}.action"),
                    reason: format!("action {other} does not map (Suspend and SetConfig do)"),
                }),
            }
        }
        if t.contains_key("trigger") {
            unmapped.push(Unmapped {
                path: format!("{here}.trigger"),
                reason: "Sluice acts on the first match; thresholds do not map".into(),
            });
        }
        let Some(duration) = duration.filter(|d| parse_duration(d).is_ok()) else {
            unmapped.push(Unmapped {
                path: here,
                reason: "needs a duration Sluice can read".into(),
            });
            continue;
        };
        rule.insert("action".into(), Value::String(kind.into()));
        if kind == "suspend" {
            rule.retain(|k, _| ["name", "text", "action"].contains(&k));
            rule.insert("suspend_for".into(), Value::String(duration));
        } else if rule.contains_key("backoff_max_message_rate")
            || rule.contains_key("backoff_max_connections")
        {
            rule.insert("recover_after".into(), Value::String(duration));
        } else {
            unmapped.push(Unmapped {
                path: here,
                reason: "no action that maps".into(),
            });
            continue;
        }
        out.push(Value::Table(rule));
    }
    out
}
