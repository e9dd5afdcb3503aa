//! Configuration formats and their validators.
//!
//! Every validator is bounded before it is correct: nesting deeper than [`MAX_DEPTH`] and
//! YAML alias expansion beyond [`MAX_YAML_EXPANSION`] nodes are refused before a tree is
//! built, so a hostile entry cannot exhaust memory or the stack. Errors carry a 1-based
//! line and column so the console can point at the exact spot.

use serde::{Deserialize, Serialize};
use std::{fmt, str::FromStr};

/// Deepest accepted nesting of arrays/objects (json, yaml). TOML's own parser is stricter
/// (80 levels of inline arrays, inline tables or dotted keys) and its limit applies there.
pub const MAX_DEPTH: usize = 128;

/// Upper bound on the number of nodes a YAML document may expand to through aliases.
pub const MAX_YAML_EXPANSION: u64 = 100_000;

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
    /// Positions are 1-based; a parser's 0 (serde_json's column at the end of an empty
    /// line, found by fuzzing) is the first column.
    fn at(line: usize, column: usize, message: impl Into<String>) -> Self {
        ValidationError {
            line: u32::try_from(line.max(1)).unwrap_or(u32::MAX),
            column: u32::try_from(column.max(1)).unwrap_or(u32::MAX),
            message: message.into(),
        }
    }

    fn at_offset(text: &str, offset: usize, message: impl Into<String>) -> Self {
        let (line, column) = line_col(text, offset);
        ValidationError::at(line, column, message)
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
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

    /// One open collection: how many nodes it holds so far and the anchor it defines.
    struct Open {
        nodes: u64,
        anchor: usize,
    }

    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Open> = Vec::new();
    // Node count of each anchored node, so an alias costs what it expands to.
    let mut anchor_sizes: HashMap<usize, u64> = HashMap::new();
    let mut expanded: u64 = 0;

    loop {
        let (event, marker) = parser
            .next_token()
            .map_err(|err| ValidationError::at(err.marker().line(), err.marker().col() + 1, err.info()))?;
        let position = |message: String| ValidationError::at(marker.line(), marker.col() + 1, message);
        // The size of a completed node, which is added to its parent.
        let completed: Option<u64> = match event {
            Event::StreamEnd => break,
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(position(format!("nesting deeper than {MAX_DEPTH} levels")));
                }
                stack.push(Open { nodes: 1, anchor });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let open = stack.pop().expect("the parser balances collections");
                if open.anchor != 0 {
                    anchor_sizes.insert(open.anchor, open.nodes);
                }
                Some(open.nodes)
            }
            Event::Scalar(_, _, anchor, _) => {
                if anchor != 0 {
                    anchor_sizes.insert(anchor, 1);
                }
                Some(1)
            }
            Event::Alias(anchor) => {
                let size = anchor_sizes.get(&anchor).copied().unwrap_or(1);
                Some(size)
            }
            _ => None,
        };
        if let Some(size) = completed {
            expanded = expanded.saturating_add(size);
            if expanded > MAX_YAML_EXPANSION {
                return Err(position(format!("aliases expand to more than {MAX_YAML_EXPANSION} nodes")));
            }
            if let Some(parent) = stack.last_mut() {
                parent.nodes = parent.nodes.saturating_add(size);
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
            Err(ValidationError::at_offset(text, offset, err.message().trim().to_string()))
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
                        "section header is missing ']'",
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
                    "expected `key = value`, `[section]` or a comment",
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
                format!("invalid variable name {key:?} (letters, digits and '_', not starting with a digit)"),
            ));
        }
        let value_column = key_column + key.chars().count() + 1;
        let value = value.trim_end();
        for quote in ['"', '\''] {
            if value.starts_with(quote) && (value.len() < 2 || !value.ends_with(quote)) {
                return Err(ValidationError::at(line, value_column, format!("unterminated {quote} quote")));
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
        assert!(err.message.contains("aliases expand"), "{err}");
        // A modest use of aliases stays fine.
        assert!(check(Format::Yaml, "base: &base {x: 1}\none: *base\ntwo: *base\n").is_ok());
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
