//! The per-key view of a diff for structured formats: `server.timeout: 30 → 45`, blind to
//! formatting (indentation, key order, quoting styles, comments).

use crate::format::{Format, validate};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One key whose value differs; `old` is `None` for an added key, `new` for a removed one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyChange {
    pub key: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

impl std::fmt::Display for KeyChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.old, &self.new) {
            (Some(old), Some(new)) => write!(f, "{}: {old} → {new}", self.key),
            (None, Some(new)) => write!(f, "{}: added {new}", self.key),
            (Some(old), None) => write!(f, "{}: removed (was {old})", self.key),
            (None, None) => write!(f, "{}", self.key),
        }
    }
}

/// The keys that differ between two versions of a json, yaml or toml document, or `None`
/// when the format has no keys or a side does not parse (the line diff still shows it).
/// An empty list means the two differ only in formatting.
pub fn key_changes(format: Format, old: &str, new: &str) -> Option<Vec<KeyChange>> {
    if !matches!(format, Format::Json | Format::Yaml | Format::Toml) {
        return None;
    }
    // The validators bound nesting and YAML alias expansion before any tree is built.
    validate(format, old.as_bytes()).ok()?;
    validate(format, new.as_bytes()).ok()?;
    let (old, new) = (flatten(format, old)?, flatten(format, new)?);
    let mut changes = Vec::new();
    for (key, before) in &old {
        match new.get(key) {
            Some(after) if after == before => {}
            after => changes.push(KeyChange {
                key: key.clone(),
                old: Some(before.clone()),
                new: after.cloned(),
            }),
        }
    }
    for (key, after) in &new {
        if !old.contains_key(key) {
            changes.push(KeyChange {
                key: key.clone(),
                old: None,
                new: Some(after.clone()),
            });
        }
    }
    changes.sort_by(|a, b| a.key.cmp(&b.key));
    Some(changes)
}

type Flat = BTreeMap<String, String>;

fn flatten(format: Format, text: &str) -> Option<Flat> {
    let mut flat = Flat::new();
    match format {
        Format::Json => walk_json(&serde_json::from_str(text).ok()?, "", &mut flat),
        Format::Toml => walk_toml(&toml::Value::Table(text.parse::<toml::Table>().ok()?), "", &mut flat),
        Format::Yaml => {
            for (i, doc) in yaml_rust2::YamlLoader::load_from_str(text).ok()?.iter().enumerate() {
                let prefix = if i == 0 { String::new() } else { format!("---{i}") };
                walk_yaml(doc, &prefix, &mut flat);
            }
        }
        _ => return None,
    }
    Some(flat)
}

/// `a.b` for plain keys, `a["odd key"]` otherwise.
fn child(prefix: &str, key: &str) -> String {
    let plain = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (prefix.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{prefix}.{key}"),
        (_, false) => format!("{prefix}[{}]", serde_json::Value::String(key.to_string())),
    }
}

fn leaf(prefix: &str) -> String {
    if prefix.is_empty() {
        "(document)".to_string()
    } else {
        prefix.to_string()
    }
}

fn walk_json(value: &serde_json::Value, prefix: &str, out: &mut Flat) {
    match value {
        serde_json::Value::Object(map) if !map.is_empty() => {
            for (key, value) in map {
                walk_json(value, &child(prefix, key), out);
            }
        }
        serde_json::Value::Array(items) if !items.is_empty() => {
            for (i, value) in items.iter().enumerate() {
                walk_json(value, &format!("{prefix}[{i}]"), out);
            }
        }
        other => {
            out.insert(leaf(prefix), other.to_string());
        }
    }
}

fn walk_toml(value: &toml::Value, prefix: &str, out: &mut Flat) {
    match value {
        toml::Value::Table(table) if !table.is_empty() => {
            for (key, value) in table {
                walk_toml(value, &child(prefix, key), out);
            }
        }
        toml::Value::Array(items) if !items.is_empty() => {
            for (i, value) in items.iter().enumerate() {
                walk_toml(value, &format!("{prefix}[{i}]"), out);
            }
        }
        toml::Value::String(text) => {
            out.insert(leaf(prefix), serde_json::Value::String(text.clone()).to_string());
        }
        other => {
            out.insert(leaf(prefix), other.to_string());
        }
    }
}

fn walk_yaml(value: &yaml_rust2::Yaml, prefix: &str, out: &mut Flat) {
    use yaml_rust2::Yaml;
    match value {
        Yaml::Hash(map) if !map.is_empty() => {
            for (key, value) in map {
                let key = match key {
                    Yaml::String(s) => s.clone(),
                    other => scalar(other),
                };
                walk_yaml(value, &child(prefix, &key), out);
            }
        }
        Yaml::Array(items) if !items.is_empty() => {
            for (i, value) in items.iter().enumerate() {
                walk_yaml(value, &format!("{prefix}[{i}]"), out);
            }
        }
        other => {
            out.insert(leaf(prefix), scalar(other));
        }
    }
}

fn scalar(value: &yaml_rust2::Yaml) -> String {
    use yaml_rust2::Yaml;
    match value {
        Yaml::String(s) => serde_json::Value::String(s.clone()).to_string(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Real(r) => r.clone(),
        Yaml::Boolean(b) => b.to_string(),
        Yaml::Null => "null".into(),
        Yaml::Hash(_) => "{}".into(),
        Yaml::Array(_) => "[]".into(),
        Yaml::Alias(_) | Yaml::BadValue => "?".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(changes: Option<Vec<KeyChange>>) -> Vec<String> {
        changes.expect("structured").iter().map(ToString::to_string).collect()
    }

    #[test]
    fn json_keys_ignore_formatting_and_order() {
        let old = r#"{"server": {"timeout": 30, "host": "a"}, "tags": ["x", "y"]}"#;
        let new = "{\n  \"tags\": [\"x\", \"z\"],\n  \"server\": {\n    \"host\": \"a\",\n    \"timeout\": 45,\n    \"tls\": true\n  }\n}";
        assert_eq!(
            shown(key_changes(Format::Json, old, new)),
            ["server.timeout: 30 → 45", "server.tls: added true", "tags[1]: \"y\" → \"z\""]
        );
        let reformatted = "{ \"tags\" : [ \"x\",\"y\" ], \"server\":{\"host\":\"a\",\"timeout\":30} }";
        assert_eq!(key_changes(Format::Json, old, reformatted), Some(vec![]), "formatting only");
    }

    #[test]
    fn yaml_keys() {
        let old = "server:\n  timeout: 30\n  hosts: [a, b]\nname: web\n";
        let new = "name: web\nserver:\n  hosts:\n    - a\n  timeout: 45\n";
        assert_eq!(
            shown(key_changes(Format::Yaml, old, new)),
            ["server.hosts[1]: removed (was \"b\")", "server.timeout: 30 → 45"]
        );
    }

    #[test]
    fn toml_keys_with_odd_names() {
        let old = "[server]\ntimeout = 30\n\"odd key\" = \"x\"\n";
        let new = "[server]\n# a comment\ntimeout = 45 # slower\n'odd key' = 'x'\n";
        assert_eq!(shown(key_changes(Format::Toml, old, new)), ["server.timeout: 30 → 45"]);
    }

    #[test]
    fn other_formats_and_broken_documents_have_no_key_view() {
        assert_eq!(key_changes(Format::Text, "a", "b"), None);
        assert_eq!(key_changes(Format::Json, "{", "{}"), None);
        let bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n";
        assert_eq!(key_changes(Format::Yaml, "a: 1\n", bomb), None, "refused before building a tree");
    }
}
