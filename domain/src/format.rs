//! Configuration formats and their validators.
//!
//! Every validator is bounded before it is correct: nesting deeper than [`MAX_DEPTH`] and a
//! YAML document that would expand (aliases repeating what they name) to more than
//! [`MAX_EXPANDED_BYTES`] are refused before a tree is built, so a hostile entry cannot
//! exhaust memory or the stack. The budget is in bytes, not nodes: one alias of a
//! megabyte scalar costs a megabyte.
//!
//! Errors carry a 1-based line and column so the console can point at the exact spot, and
//! say what is wrong without quoting the text: a message may reach people who must not
//! read the content (a secret value put back into an edit, a shadow's file). Every error is
//! made by [`ValidationError::at`], which takes out whatever a parser's message quotes.

use serde::{Deserialize, Serialize};
use std::{fmt, str::FromStr};

/// Deepest accepted nesting of arrays/objects (json, yaml). TOML's own parser is stricter
/// (80 levels of inline arrays, inline tables or dotted keys) and its limit applies there.
pub const MAX_DEPTH: usize = 128;

/// Upper bound on what a YAML document may expand to when loaded: the bytes of its scalars,
/// each alias counted as what it repeats, plus [`NODE_COST`] for every node.
pub const MAX_EXPANDED_BYTES: u64 = 32 * 1024 * 1024;

/// What one node of a loaded tree costs beyond its text (the tree's own bookkeeping), for
/// [`MAX_EXPANDED_BYTES`].
pub const NODE_COST: u64 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Yaml,
    Toml,
    Ini,
    Env,
    Text,
}

impl Format {
    pub const ALL: [Format; 6] = [Format::Json, Format::Yaml, Format::Toml, Format::Ini, Format::Env, Format::Text];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Yaml => "yaml",
            Format::Toml => "toml",
            Format::Ini => "ini",
            Format::Env => "env",
            Format::Text => "text",
        }
    }

    /// The format a path most likely has, from its extension; `text` when unsure.
    pub fn guess(path: &str) -> Format {
        let name = path.rsplit('/').next().unwrap_or(path);
        match name.rsplit_once('.').map(|(_, ext)| ext.to_ascii_lowercase()) {
            Some(ext) if ext == "json" => Format::Json,
            Some(ext) if ext == "yaml" || ext == "yml" => Format::Yaml,
            Some(ext) if ext == "toml" => Format::Toml,
            Some(ext) if ext == "ini" || ext == "cfg" => Format::Ini,
            Some(ext) if ext == "env" => Format::Env,
            _ if name == ".env" => Format::Env,
            _ => Format::Text,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown format {0:?} (expected json, yaml, toml, ini, env or text)")]
pub struct UnknownFormat(pub String);

impl FromStr for Format {
    type Err = UnknownFormat;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| UnknownFormat(s.to_string()))
    }
}

/// A validation failure with its position (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct ValidationError {
    pub line: u32,
    pub column: u32,
    pub message: String,
}

impl ValidationError {
    /// The one constructor. Positions are 1-based; a parser's 0 (serde_json's column at the
    /// end of an empty line, found by fuzzing) is the first column. The message keeps no
    /// quoted fragment of the text (see [`unquoted`]).
    pub fn at(line: usize, column: usize, message: impl AsRef<str>) -> Self {
        ValidationError {
            line: u32::try_from(line.max(1)).unwrap_or(u32::MAX),
            column: u32::try_from(column.max(1)).unwrap_or(u32::MAX),
            message: unquoted(message.as_ref()),
        }
    }

    fn at_offset(text: &str, offset: usize, message: impl AsRef<str>) -> Self {
        let (line, column) = line_col(text, offset);
        ValidationError::at(line, column, message)
    }
}

/// `message` with every quoted fragment (between backticks, a backtick and an apostrophe,
/// or double quotes) replaced by `…`, unless it is a token of a grammar: one to three
/// punctuation characters (`=`, `]]`, `"""`) or a literal such as `true`. Parsers quote the
/// text they stumble on (toml's "duplicate key `x`", yaml's "unexpected character: `c'");
/// what they quote may be a secret value, so no message carries it. Line and column say
/// where.
pub fn unquoted(message: &str) -> String {
    const LITERALS: [&str; 5] = ["true", "false", "inf", "nan", "null"];
    let keep = |inner: &str| {
        (!inner.is_empty() && inner.chars().count() <= 3 && inner.chars().all(|c| c.is_ascii_punctuation())) || LITERALS.contains(&inner)
    };
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(open) = rest.find(['`', '"']) {
        let quote = rest[open..].chars().next().unwrap_or('"');
        let after = &rest[open + 1..];
        let close = if quote == '`' { after.find(['`', '\'']) } else { after.find('"') };
        out.push_str(&rest[..open]);
        match close {
            Some(close) => {
                let inner = &after[..close];
                let end_quote = after[close..].chars().next().unwrap_or(quote);
                if keep(inner) {
                    out.push(quote);
                    out.push_str(inner);
                    out.push(end_quote);
                } else {
                    out.push('…');
                }
                rest = &after[close + end_quote.len_utf8()..];
            }
            None => {
                // An open quote with no end: what follows it is quoted text.
                out.push('…');
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&before[line_start..]).chars().count() + 1;
    (line, column)
}

/// Validates `content` as `format`. Every format must be UTF-8 text without NUL bytes.
pub fn validate(format: Format, content: &[u8]) -> Result<(), ValidationError> {
    let text = match std::str::from_utf8(content) {
        Ok(text) => text,
        Err(err) => {
            let valid = std::str::from_utf8(&content[..err.valid_up_to()]).unwrap_or_default();
            return Err(ValidationError::at_offset(valid, valid.len(), "content is not valid UTF-8"));
        }
    };
    if let Some(offset) = text.find('\0') {
        return Err(ValidationError::at_offset(text, offset, "content contains a NUL byte"));
    }
    match format {
        Format::Json => validate_json(text),
        Format::Yaml => validate_yaml(text),
        Format::Toml => validate_toml(text),
        Format::Ini => validate_ini(text),
        Format::Env => validate_env(text),
        Format::Text => Ok(()),
    }
}

fn validate_json(text: &str) -> Result<(), ValidationError> {
    json_depth_guard(text)?;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    // The guard above has already bounded the depth, so serde_json's own (lower) limit
    // must not second-guess it.
    deserializer.disable_recursion_limit();
    let parsed: Result<serde::de::IgnoredAny, _> = serde::Deserialize::deserialize(&mut deserializer);
    parsed
        .and_then(|_| deserializer.end())
        .map_err(|err| ValidationError::at(err.line(), err.column(), json_message(&err)))
}

fn json_message(err: &serde_json::Error) -> String {
    // serde_json appends " at line X column Y"; the position is reported separately.
    let full = err.to_string();
    match full.rfind(" at line ") {
        Some(cut) => full[..cut].to_string(),
        None => full,
    }
}

/// Refuses JSON nested deeper than [`MAX_DEPTH`] with one linear scan, before parsing.
fn json_depth_guard(text: &str) -> Result<(), ValidationError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (offset, byte) in text.bytes().enumerate() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(ValidationError::at_offset(
                        text,
                        offset,
                        format!("nesting deeper than {MAX_DEPTH} levels"),
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

fn validate_yaml(text: &str) -> Result<(), ValidationError> {
    use std::collections::HashMap;
    use yaml_rust2::parser::{Event, Parser};

    /// One open collection: what it costs so far (see [`MAX_EXPANDED_BYTES`]) and the
    /// anchor it defines.
    struct Open {
        cost: u64,
        anchor: usize,
    }

    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Open> = Vec::new();
    // What each anchored node costs, so an alias costs what it repeats.
    let mut anchor_costs: HashMap<usize, u64> = HashMap::new();
    let mut expanded: u64 = 0;

    loop {
        let (event, marker) = parser
            .next_token()
            .map_err(|err| ValidationError::at(err.marker().line(), err.marker().col() + 1, err.info()))?;
        let position = |message: String| ValidationError::at(marker.line(), marker.col() + 1, message);
        // The cost of a completed node, which is added to its parent's.
        let completed: Option<u64> = match event {
            Event::StreamEnd => break,
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(position(format!("nesting deeper than {MAX_DEPTH} levels")));
                }
                stack.push(Open { cost: NODE_COST, anchor });
                expanded = expanded.saturating_add(NODE_COST);
                None
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let open = stack.pop().expect("the parser balances collections");
                if open.anchor != 0 {
                    anchor_costs.insert(open.anchor, open.cost);
                }
                Some(open.cost)
            }
            // A collection's own cost and its items' were counted as they came; a scalar's
            // or an alias's is new.
            Event::Scalar(value, _, anchor, _) => {
                let cost = NODE_COST.saturating_add(value.len() as u64);
                if anchor != 0 {
                    anchor_costs.insert(anchor, cost);
                }
                expanded = expanded.saturating_add(cost);
                Some(cost)
            }
            Event::Alias(anchor) => {
                let cost = anchor_costs.get(&anchor).copied().unwrap_or(NODE_COST);
                expanded = expanded.saturating_add(cost);
                Some(cost)
            }
            _ => None,
        };
        if let Some(cost) = completed {
            if let Some(parent) = stack.last_mut() {
                parent.cost = parent.cost.saturating_add(cost);
            }
            if expanded > MAX_EXPANDED_BYTES {
                return Err(position(format!(
                    "the document expands to more than {} MiB when loaded (aliases count what they repeat)",
                    MAX_EXPANDED_BYTES / (1024 * 1024)
                )));
            }
        }
    }
    Ok(())
}

fn validate_toml(text: &str) -> Result<(), ValidationError> {
    match text.parse::<toml::Table>() {
        Ok(_) => Ok(()),
        Err(err) => {
            let offset = err.span().map_or(0, |span| span.start);
            Err(ValidationError::at_offset(text, offset, err.message().trim()))
        }
    }
}

/// INI: `[section]` headers, `key = value` or `key: value` pairs, `;`/`#` comments.
fn validate_ini(text: &str) -> Result<(), ValidationError> {
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let indent = raw.len() - raw.trim_start().len();
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with(';') || trimmed.starts_with('#') {
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix('[') {
            match rest.strip_suffix(']') {
                Some(name) if !name.trim().is_empty() && !name.contains(['[', ']']) => continue,
                Some(_) => return Err(ValidationError::at(line, indent + 1, "empty or malformed section name")),
                None => {
                    return Err(ValidationError::at(
                        line,
                        indent + trimmed.chars().count() + 1,
                        "section header is missing its closing bracket",
                    ));
                }
            }
        }
        match trimmed.find(['=', ':']) {
            Some(0) => return Err(ValidationError::at(line, indent + 1, "key is empty")),
            Some(_) => continue,
            None => {
                return Err(ValidationError::at(
                    line,
                    indent + 1,
                    "expected key = value, a [section] header or a comment",
                ));
            }
        }
    }
    Ok(())
}

/// dotenv: `KEY=value`, optional `export `, quoted values, `#` comments.
fn validate_env(text: &str) -> Result<(), ValidationError> {
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let indent = raw.len() - raw.trim_start().len();
        let trimmed = raw.trim_start();
        if trimmed.trim().is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (prefix_len, assignment) = match trimmed.strip_prefix("export ") {
            Some(rest) => (7, rest),
            None => (0, trimmed),
        };
        let Some((key, value)) = assignment.split_once('=') else {
            return Err(ValidationError::at(line, indent + 1, "expected KEY=value"));
        };
        let key_column = indent + prefix_len + 1;
        let valid_key = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_key {
            return Err(ValidationError::at(
                line,
                key_column,
                "invalid variable name (letters, digits and '_', not starting with a digit)",
            ));
        }
        let value_column = key_column + key.chars().count() + 1;
        let value = value.trim_end();
        for quote in ['"', '\''] {
            if value.starts_with(quote) && (value.len() < 2 || !value.ends_with(quote)) {
                let which = if quote == '"' { "double" } else { "single" };
                return Err(ValidationError::at(line, value_column, format!("unterminated {which} quote")));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(format: Format, text: &str) -> Result<(), ValidationError> {
        validate(format, text.as_bytes())
    }

    #[test]
    fn every_error_names_a_place_from_line_one_column_one() {
        for format in Format::ALL {
            for text in ["", "\n", "{", "[", "= x\n", "a:\n  - b\n c: [\n"] {
                if let Err(err) = check(format, text) {
                    assert!(err.line >= 1 && err.column >= 1, "{format} {text:?}: {err:?}");
                }
            }
        }
        assert_eq!(check(Format::Json, "").unwrap_err().column, 1);
    }

    #[test]
    fn guesses_formats_from_paths() {
        assert_eq!(Format::guess("features.json"), Format::Json);
        assert_eq!(Format::guess("k8s/deploy.yml"), Format::Yaml);
        assert_eq!(Format::guess("app.toml"), Format::Toml);
        assert_eq!(Format::guess("php.ini"), Format::Ini);
        assert_eq!(Format::guess("prod/.env"), Format::Env);
        assert_eq!(Format::guess("nginx/site.conf"), Format::Text);
    }

    #[test]
    fn json_good_and_bad() {
        assert!(check(Format::Json, r#"{"a": [1, 2, {"b": "x]"}]}"#).is_ok());
        let err = check(Format::Json, "{\n  \"a\": 1,\n  \"b\": ,\n}").unwrap_err();
        assert_eq!((err.line, err.column), (3, 8), "{err}");
        assert!(!err.message.contains("at line"));
        assert!(check(Format::Json, "{} {}").is_err(), "trailing data");
    }

    #[test]
    fn json_depth_limit() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(check(Format::Json, &ok).is_ok());
        let bomb = "[".repeat(100_000);
        let err = check(Format::Json, &bomb).unwrap_err();
        assert!(err.message.contains("nesting deeper than 128"), "{err}");
        assert_eq!(err.column as usize, MAX_DEPTH + 1);
    }

    #[test]
    fn yaml_good_and_bad() {
        assert!(check(Format::Yaml, "a: 1\nb:\n  - x\n  - &y {c: 2}\nd: *y\n").is_ok());
        let err = check(Format::Yaml, "a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(err.line >= 2, "{err}");
        let err = check(Format::Yaml, "a: 1\n  b: 2\n").unwrap_err();
        assert_eq!(err.line, 2, "{err}");
    }

    #[test]
    fn yaml_depth_limit() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(check(Format::Yaml, &ok).is_ok());
        let bomb = "[".repeat(10_000);
        let err = check(Format::Yaml, &bomb).unwrap_err();
        assert!(
            err.message.contains("nesting deeper") || err.message.contains("recursion limit"),
            "{err}"
        );
    }

    #[test]
    fn yaml_alias_bomb_is_refused() {
        // The "billion laughs": each level references the previous one nine times.
        let mut bomb = String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
        let names = ["b", "c", "d", "e", "f", "g", "h", "i"];
        let mut previous = "a";
        for name in names {
            bomb.push_str(&format!("{name}: &{name} [*{previous},*{previous},*{previous},*{previous},*{previous},*{previous},*{previous},*{previous},*{previous}]\n"));
            previous = name;
        }
        let err = check(Format::Yaml, &bomb).unwrap_err();
        assert!(err.message.contains("expands to more than"), "{err}");
        // A modest use of aliases stays fine.
        assert!(check(Format::Yaml, "base: &base {x: 1}\none: *base\ntwo: *base\n").is_ok());
    }

    #[test]
    fn yaml_budget_is_in_bytes_so_few_aliases_of_a_large_scalar_are_refused() {
        // One megabyte scalar and 5,000 aliases: few nodes, five gigabytes once loaded.
        let mut bomb = format!("big: &big \"{}\"\nrefs:\n", "x".repeat(1 << 20));
        for _ in 0..5000 {
            bomb.push_str("- *big\n");
        }
        let err = check(Format::Yaml, &bomb).unwrap_err();
        assert!(err.message.contains("expands to more than 32 MiB"), "{err}");
        // The same scalar named a few times is fine, and so is a large document without
        // aliases.
        let few = format!("big: &big \"{}\"\nrefs: [*big, *big, *big]\n", "x".repeat(1 << 20));
        assert!(check(Format::Yaml, &few).is_ok());
        let large: String = (0..50_000).map(|i| format!("key{i}: value number {i}\n")).collect();
        assert!(check(Format::Yaml, &large).is_ok());
        // Nested anchors count what they repeat at every level.
        let mut nested = format!("a: &a \"{}\"\n", "y".repeat(1 << 14));
        for (name, previous) in [("b", "a"), ("c", "b"), ("d", "c"), ("e", "b")] {
            nested.push_str(&format!(
                "{name}: &{name} [*{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}]\n"
            ));
        }
        assert!(check(Format::Yaml, &nested).is_ok(), "a, b, c, d and e: about 10 MiB");
        // Three more of d (8 MiB each) pass the budget.
        nested.push_str("f: [*d, *d, *d]\n");
        assert!(check(Format::Yaml, &nested).is_err());
    }

    #[test]
    fn no_error_message_quotes_the_text() {
        let canary = "CANARY-0b7d";
        for (format, text) in [
            (Format::Toml, format!("{canary} = 1\n{canary} = 2\n")),
            (Format::Toml, format!("[a]\nx = 1\n[a]\n{canary} = 2\n")),
            (Format::Toml, format!("x = {{ y = \"{canary}\", y = 2 }}\n")),
            (Format::Toml, format!("x = {canary}\n")),
            (Format::Yaml, format!("a: 1\n@{canary}\n")),
            (Format::Yaml, format!("a: !<{canary} x\n")),
            (Format::Yaml, format!("a: *{canary}\n")),
            (Format::Yaml, format!("%TAG !{canary}! x\n---\na: 1\n")),
            (Format::Json, format!("{{\"a\": {canary}}}")),
            (Format::Json, format!("{{\"a\": \"{canary}\\q\"}}")),
            (Format::Env, format!("{canary}-X=1\n")),
            (Format::Env, format!("A=\"{canary}\n")),
            (Format::Ini, format!("[{canary}\n")),
            (Format::Ini, format!("{canary}\n")),
        ] {
            if let Err(err) = check(format, &text) {
                assert!(!err.to_string().contains("CANARY"), "{format} quotes the text: {err}");
            }
        }
        assert_eq!(unquoted("duplicate key `secret` in table `db`"), "duplicate key … in table …");
        assert_eq!(unquoted("expected `=` or `]]`"), "expected `=` or `]]`");
        assert_eq!(unquoted("unexpected character: `c'"), "unexpected character: …");
        assert_eq!(unquoted("bad \"quoted\" and `open"), "bad … and …");
    }

    #[test]
    fn toml_good_and_bad() {
        assert!(check(Format::Toml, "[server]\nport = 8080\nhost = \"0.0.0.0\"\n").is_ok());
        let err = check(Format::Toml, "[server]\nport = 8080\nhost = \n").unwrap_err();
        assert_eq!(err.line, 3, "{err}");
        let bomb = format!("a = {}", "[".repeat(10_000));
        assert!(check(Format::Toml, &bomb).is_err());
        let dotted = format!("{} = 1", vec!["k"; 10_000].join("."));
        assert!(check(Format::Toml, &dotted).is_err());
    }

    #[test]
    fn ini_good_and_bad() {
        assert!(check(Format::Ini, "; comment\n[main]\nkey = value\nother: 2\n\n# note\n").is_ok());
        let err = check(Format::Ini, "[main]\nkey = value\njust words\n").unwrap_err();
        assert_eq!((err.line, err.column), (3, 1));
        let err = check(Format::Ini, "[main\n").unwrap_err();
        assert_eq!(err.line, 1);
        assert!(check(Format::Ini, "[main]\n = x\n").is_err());
    }

    #[test]
    fn env_good_and_bad() {
        assert!(check(Format::Env, "# db\nexport DB_HOST=localhost\nPORT=5432\nNAME=\"x y\"\n").is_ok());
        let err = check(Format::Env, "OK=1\n1BAD=2\n").unwrap_err();
        assert_eq!((err.line, err.column), (2, 1));
        let err = check(Format::Env, "A=\"open\n").unwrap_err();
        assert_eq!((err.line, err.column), (1, 3));
        assert!(check(Format::Env, "no equals sign\n").is_err());
    }

    #[test]
    fn text_must_be_utf8_without_nul() {
        assert!(check(Format::Text, "server { listen 80; }\n").is_ok());
        let err = validate(Format::Text, b"ok\n\xff").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(check(Format::Text, "a\0b").is_err());
    }
}
