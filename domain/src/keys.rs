//! The per-key view of a diff for structured formats: `server.timeout: 30 → 45`, blind to
//! formatting (indentation, key order, quoting styles, comments).

use crate::format::{Format, MAX_EXPANDED_BYTES, validate};
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

/// The flattened keys and values, and the bytes they hold.
#[derive(Default)]
struct Flat {
    keys: BTreeMap<String, String>,
    bytes: u64,
}

impl Flat {
    /// Charges the prefix of a collection on the way down (each level's holds its
    /// ancestors', so a deep document of long keys would otherwise hold their squares);
    /// false past the budget. A leaf's is charged once, by [`Flat::put`].
    fn enter(&mut self, prefix: &str) -> bool {
        self.bytes = self.bytes.saturating_add(prefix.len() as u64);
        self.bytes <= MAX_EXPANDED_BYTES
    }

    /// Adds one key; false once the keys hold more than [`MAX_EXPANDED_BYTES`] (a long key
    /// above many leaves is repeated in each of them), when the walk stops.
    fn put(&mut self, key: String, value: String) -> bool {
        self.bytes = self.bytes.saturating_add((key.len() + value.len()) as u64);
        self.keys.insert(key, value);
        self.bytes <= MAX_EXPANDED_BYTES
    }
}

fn flatten(format: Format, text: &str) -> Option<BTreeMap<String, String>> {
    let mut flat = Flat::default();
    let complete = match format {
        Format::Json => walk_json(&serde_json::from_str(text).ok()?, "", &mut flat),
        Format::Toml => walk_toml(&toml::Value::Table(text.parse::<toml::Table>().ok()?), "", &mut flat),
        Format::Yaml => yaml_rust2::YamlLoader::load_from_str(text)
            .ok()?
            .iter()
            .enumerate()
            .all(|(i, doc)| {
                let prefix = if i == 0 { String::new() } else { format!("---{i}") };
                walk_yaml(doc, &prefix, &mut flat)
            }),
        _ => return None,
    };
    complete.then_some(flat.keys)
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

// Each walk returns false when the keys outgrew their budget (see [`Flat::put`]).

fn walk_json(value: &serde_json::Value, prefix: &str, out: &mut Flat) -> bool {
    match value {
        serde_json::Value::Object(map) if !map.is_empty() => {
            out.enter(prefix)
                && map.iter().all(|(key, value)| {
                    let prefix = child(prefix, key);
                    walk_json(value, &prefix, out)
                })
        }
        serde_json::Value::Array(items) if !items.is_empty() => {
            out.enter(prefix)
                && items.iter().enumerate().all(|(i, value)| {
                    let prefix = format!("{prefix}[{i}]");
                    walk_json(value, &prefix, out)
                })
        }
        other => out.put(leaf(prefix), other.to_string()),
    }
}

fn walk_toml(value: &toml::Value, prefix: &str, out: &mut Flat) -> bool {
    match value {
        toml::Value::Table(table) if !table.is_empty() => {
            out.enter(prefix)
                && table.iter().all(|(key, value)| {
                    let prefix = child(prefix, key);
                    walk_toml(value, &prefix, out)
                })
        }
        toml::Value::Array(items) if !items.is_empty() => {
            out.enter(prefix)
                && items.iter().enumerate().all(|(i, value)| {
                    let prefix = format!("{prefix}[{i}]");
                    walk_toml(value, &prefix, out)
                })
        }
        toml::Value::String(text) => out.put(leaf(prefix), serde_json::Value::String(text.clone()).to_string()),
        other => out.put(leaf(prefix), other.to_string()),
    }
}

fn walk_yaml(value: &yaml_rust2::Yaml, prefix: &str, out: &mut Flat) -> bool {
    use yaml_rust2::Yaml;
    match value {
        Yaml::Hash(map) if !map.is_empty() => {
            out.enter(prefix)
                && map.iter().all(|(key, value)| {
                    let key = match key {
                        Yaml::String(s) => s.clone(),
                        other => scalar(other),
                    };
                    let prefix = child(prefix, &key);
                    walk_yaml(value, &prefix, out)
                })
        }
        Yaml::Array(items) if !items.is_empty() => {
            out.enter(prefix)
                && items.iter().enumerate().all(|(i, value)| {
                    let prefix = format!("{prefix}[{i}]");
                    walk_yaml(value, &prefix, out)
                })
        }
        other => out.put(leaf(prefix), scalar(other)),
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

    #[test]
    fn deep_nesting_under_a_long_key_stops_the_key_view() {
        // A 512 KiB key, then 120 levels: the prefixes alone would hold 512 KiB x 120.
        let long = "k".repeat(1 << 19);
        let mut json = format!("{{\"{long}\": ");
        for _ in 0..120 {
            json.push_str("{\"a\": ");
        }
        json.push('1');
        json.push_str(&"}".repeat(121));
        crate::format::validate(Format::Json, json.as_bytes()).unwrap();
        assert!(key_changes(Format::Json, "{}", &json).is_none(), "the key view went on");
    }

    #[test]
    fn a_dense_array_of_four_megabytes_keeps_its_key_view() {
        let items = vec!["0"; 2_000_000].join(",");
        let json = format!("{{\"data\": [{items}]}}");
        assert!(key_changes(Format::Json, "{}", &json).is_some());
    }

    #[test]
    fn a_long_key_above_many_leaves_stops_the_key_view() {
        // 128 KiB of key names above 400 leaves: 51 MiB of flattened keys from 130 KiB.
        let long = "k".repeat(1 << 17);
        let leaves: Vec<String> = (0..400).map(|i| format!("\"{i}\": 1")).collect();
        let json = format!("{{\"{long}\": {{{}}}}}", leaves.join(", "));
        assert_eq!(key_changes(Format::Json, "{}", &json), None);
        // A tenth of it is still shown key by key.
        let leaves: Vec<String> = (0..40).map(|i| format!("\"{i}\": 1")).collect();
        let json = format!("{{\"{long}\": {{{}}}}}", leaves.join(", "));
        assert_eq!(
            key_changes(Format::Json, "{}", &json).map(|changes| changes.len()),
            Some(41),
            "40 keys and the empty document"
        );
    }
}
