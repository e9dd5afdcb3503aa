//! Secret values inside structured entries: `password = "…"` in a toml file, `API_TOKEN=…`
//! in an env file, `"private_key": "…"` in json. Keys whose names contain one of the
//! configured patterns (case-insensitive; [`DEFAULT_PATTERNS`] by default) hold secret
//! values, which are shown only as a placeholder naming a keyed fingerprint,
//! `«secret:0123456789ab»`: equal values show equal placeholders, so a diff still says
//! "changed" or "unchanged", and nobody can test a guess without the key.
//!
//! [`redact`] replaces each secret value (the inside of its quotes when quoted) by its
//! placeholder; [`restore`] puts the stored values back into an edited text, so a person
//! can edit the other lines of a file whose secrets they never see. A placeholder is put
//! back only where it stands as the value of a secret key of the same file, so it cannot
//! be moved to an ordinary key and read there.
//!
//! Recognised: json string values (anywhere, also minified), toml strings of `key = value`
//! lines (basic, literal, and multi-line ones closed on the same line), yaml plain and
//! quoted scalars and block scalars (`key: |`), and whole values of ini and env lines. Not
//! recognised: toml inline tables and multi-line strings over several lines, yaml flow
//! mappings (`creds: {password: x}`), numbers — mark such an entry secret instead.

use crate::format::Format;
use std::ops::Range;

/// The default patterns of secret key names.
pub const DEFAULT_PATTERNS: [&str; 7] = ["password", "passwd", "secret", "token", "key", "credential", "private"];

const OPEN: &str = "«secret:";
const CLOSE: char = '»';
/// Hex digits of the fingerprint a placeholder shows.
pub const FINGERPRINT_LEN: usize = 12;

/// Which key names hold secret values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretKeys {
    patterns: Vec<String>,
}

impl Default for SecretKeys {
    fn default() -> Self {
        SecretKeys {
            patterns: DEFAULT_PATTERNS.iter().map(|p| p.to_string()).collect(),
        }
    }
}

impl SecretKeys {
    /// Patterns from a comma-separated list (`password,token`); an empty list turns the
    /// recognition off.
    pub fn parse(list: &str) -> Result<SecretKeys, String> {
        let mut patterns = Vec::new();
        for pattern in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if !pattern.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return Err(format!("secret key pattern {pattern:?}: use letters, digits, '_' or '-'"));
            }
            patterns.push(pattern.to_ascii_lowercase());
        }
        Ok(SecretKeys { patterns })
    }

    /// True when `key` names a secret value.
    pub fn matches(&self, key: &str) -> bool {
        let key = key.to_ascii_lowercase();
        self.patterns.iter().any(|pattern| key.contains(pattern.as_str()))
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

/// The patterns as `parse` reads them: `password,token`.
impl std::fmt::Display for SecretKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.patterns.join(","))
    }
}

/// One secret value: its key and the byte range of the value's text (inside the quotes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSpan {
    pub key: String,
    pub range: Range<usize>,
}

/// The secret values of `text` read as `format`, in order. Text entries have none.
pub fn find(format: Format, text: &str, keys: &SecretKeys) -> Vec<SecretSpan> {
    if keys.patterns.is_empty() {
        return Vec::new();
    }
    let mut spans = match format {
        Format::Json => json_spans(text, keys),
        Format::Toml => line_spans(text, keys, toml_line),
        Format::Yaml => yaml_spans(text, keys),
        Format::Ini => line_spans(text, keys, |line| assignment(line, &['=', ':'])),
        Format::Env => line_spans(text, keys, |line| {
            let rest = line.trim_start().strip_prefix("export ").unwrap_or(line);
            let skip = line.len() - rest.len();
            assignment(rest, &['=']).map(|(key, range)| (key, range.start + skip..range.end + skip))
        }),
        Format::Text => Vec::new(),
    };
    spans.retain(|span| !span.range.is_empty());
    spans
}

/// True when `text` holds at least one secret value (its content must then be sealed).
pub fn has_secrets(format: Format, text: &str, keys: &SecretKeys) -> bool {
    !find(format, text, keys).is_empty()
}

/// True when `text` holds a placeholder (an edit of redacted content).
pub fn has_placeholder(text: &str) -> bool {
    text.contains(OPEN)
}

fn placeholder(fingerprint: &str) -> String {
    let short: String = fingerprint.chars().take(FINGERPRINT_LEN).collect();
    format!("{OPEN}{short}{CLOSE}")
}

/// `text` with every secret value replaced by its placeholder. `fingerprint` is a keyed
/// hash of a value (hex); only its first [`FINGERPRINT_LEN`] digits are shown.
pub fn redact(format: Format, text: &str, keys: &SecretKeys, fingerprint: &dyn Fn(&str) -> String) -> String {
    let spans = find(format, text, keys);
    if spans.is_empty() {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for span in spans {
        out.push_str(&text[at..span.range.start]);
        out.push_str(&placeholder(&fingerprint(&text[span.range.clone()])));
        at = span.range.end;
    }
    out.push_str(&text[at..]);
    out
}

/// Why an edited text cannot have its secrets put back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    #[error("{0} does not stand for a secret value of this file; type the new value in clear")]
    Unknown(String),
    #[error("a secret placeholder can only be the value of a secret key ({0} is not one)")]
    Misplaced(String),
}

/// Puts the values behind the placeholders of `edited` back, taking them from `original`
/// (the stored content of the same entry). A value typed in clear stays as typed.
pub fn restore(
    format: Format,
    edited: &str,
    original: &str,
    keys: &SecretKeys,
    fingerprint: &dyn Fn(&str) -> String,
) -> Result<String, RestoreError> {
    if !has_placeholder(edited) {
        return Ok(edited.to_string());
    }
    let known: Vec<(String, &str)> = find(format, original, keys)
        .into_iter()
        .map(|span| (placeholder(&fingerprint(&original[span.range.clone()])), &original[span.range]))
        .collect();
    let mut out = String::with_capacity(edited.len());
    let mut at = 0;
    for span in find(format, edited, keys) {
        let value = &edited[span.range.clone()];
        if !value.contains(OPEN) {
            continue;
        }
        let Some((_, stored)) = known.iter().find(|(p, _)| p == value) else {
            return Err(RestoreError::Unknown(value.to_string()));
        };
        out.push_str(&edited[at..span.range.start]);
        out.push_str(stored);
        at = span.range.end;
    }
    out.push_str(&edited[at..]);
    // Whatever placeholder is left stood somewhere else than as a secret key's value.
    if let Some(start) = out.find(OPEN) {
        let rest = &out[start..];
        let end = rest.find(CLOSE).map_or(rest.len(), |i| i + CLOSE.len_utf8());
        let line_start = out[..start].rfind('\n').map_or(0, |i| i + 1);
        let key = out[line_start..start].trim().trim_end_matches(['=', ':', '"', '\'', ' ']).trim();
        let key = if key.is_empty() { rest[..end].to_string() } else { key.to_string() };
        return Err(RestoreError::Misplaced(key));
    }
    Ok(out)
}

/// Spans of line-oriented formats: `parse` answers a line's key and the value's range
/// within the line.
fn line_spans(text: &str, keys: &SecretKeys, parse: impl Fn(&str) -> Option<(String, Range<usize>)>) -> Vec<SecretSpan> {
    let mut spans = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let content = line.trim_end_matches(['\n', '\r']);
        if let Some((key, range)) = parse(content)
            && keys.matches(&key)
        {
            spans.push(SecretSpan {
                key,
                range: offset + range.start..offset + range.end,
            });
        }
        offset += line.len();
    }
    spans
}

/// `key = value` (or `key: value`): the key, and the range of the value within `line`,
/// without surrounding quotes.
fn assignment(line: &str, separators: &[char]) -> Option<(String, Range<usize>)> {
    let trimmed = line.trim_start();
    if trimmed.is_empty() || trimmed.starts_with(['#', ';', '[']) {
        return None;
    }
    let at = line.find(separators)?;
    let key = line[..at].trim();
    if key.is_empty() {
        return None;
    }
    let value_start = at + 1 + (line[at + 1..].len() - line[at + 1..].trim_start().len());
    let value = line[value_start..].trim_end();
    let range = unquote(value).map_or(0..value.len(), |inner| inner);
    Some((key.to_string(), value_start + range.start..value_start + range.end))
}

/// The inside of a value quoted with `"` or `'` (both ends), relative to `value`.
fn unquote(value: &str) -> Option<Range<usize>> {
    let quote = value.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    (value.len() >= 2 && value.ends_with(quote)).then(|| 1..value.len() - 1)
}

/// toml `key = "…"`, `key = '…'` and single-line or multi-line strings starting there.
fn toml_line(line: &str) -> Option<(String, Range<usize>)> {
    let trimmed = line.trim_start();
    if trimmed.is_empty() || trimmed.starts_with(['#', '[']) {
        return None;
    }
    let at = find_unquoted(line, '=')?;
    let key = line[..at].trim().replace(['"', '\''], "");
    let value_start = at + 1 + (line[at + 1..].len() - line[at + 1..].trim_start().len());
    let value = &line[value_start..];
    let quote = value.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    if value.starts_with(&format!("{quote}{quote}{quote}")) {
        // Only one that closes on this line (see the module doc).
        let inner = &value[3..];
        let end = inner.find(&format!("{quote}{quote}{quote}"))?;
        return Some((key, value_start + 3..value_start + 3 + end));
    }
    let inner = &value[1..];
    let mut escaped = false;
    for (i, c) in inner.char_indices() {
        match c {
            '\\' if quote == '"' && !escaped => escaped = true,
            c if c == quote && !escaped => return Some((key, value_start + 1..value_start + 1 + i)),
            _ => escaped = false,
        }
    }
    None
}

/// The first `wanted` outside quotes.
fn find_unquoted(line: &str, wanted: char) -> Option<usize> {
    let mut quote = None;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, c) if c == wanted => return Some(i),
            _ => {}
        }
    }
    None
}

fn json_spans(text: &str, keys: &SecretKeys) -> Vec<SecretSpan> {
    let bytes = text.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    // The last string read, if the next token may make it a key.
    let mut pending_key: Option<String> = None;
    let mut key_for_value: Option<String> = None;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let start = i + 1;
                let mut j = start;
                while j < bytes.len() && bytes[j] != b'"' {
                    j += if bytes[j] == b'\\' { 2 } else { 1 };
                }
                let end = j.min(bytes.len());
                if let Some(key) = key_for_value.take() {
                    if keys.matches(&key) {
                        spans.push(SecretSpan { key, range: start..end });
                    }
                } else {
                    pending_key = text.get(start..end).map(str::to_string);
                }
                i = end + 1;
                continue;
            }
            b':' => key_for_value = pending_key.take(),
            b' ' | b'\t' | b'\n' | b'\r' => {}
            _ => {
                pending_key = None;
                key_for_value = None;
            }
        }
        i += 1;
    }
    spans
}

fn yaml_spans(text: &str, keys: &SecretKeys) -> Vec<SecretSpan> {
    let lines: Vec<(usize, &str)> = {
        let mut offset = 0;
        text.split_inclusive('\n')
            .map(|line| {
                let start = offset;
                offset += line.len();
                (start, line.trim_end_matches(['\n', '\r']))
            })
            .collect()
    };
    let mut spans = Vec::new();
    let mut index = 0;
    while index < lines.len() {
        let (offset, line) = lines[index];
        index += 1;
        let indent = line.len() - line.trim_start().len();
        let body = line.trim_start();
        let body = body.strip_prefix("- ").map_or(body, str::trim_start);
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        let Some(at) = yaml_colon(body) else { continue };
        let key = body[..at].trim().trim_matches(['"', '\'']).to_string();
        if !keys.matches(&key) {
            continue;
        }
        let body_start = line.len() - body.len();
        let value_start = body_start + at + 1 + (body[at + 1..].len() - body[at + 1..].trim_start().len());
        let value = line[value_start..].trim_end();
        if value.starts_with(['|', '>']) {
            // A block scalar: the more-indented lines that follow.
            let first = index;
            while index < lines.len() {
                let next = lines[index].1;
                let next_indent = next.len() - next.trim_start().len();
                if !next.trim().is_empty() && next_indent <= indent {
                    break;
                }
                index += 1;
            }
            let last = (first..index).rev().find(|&i| !lines[i].1.trim().is_empty());
            if let Some(last) = last {
                let (start_offset, start_line) = lines[first];
                let start = start_offset + (start_line.len() - start_line.trim_start().len());
                let end = lines[last].0 + lines[last].1.len();
                spans.push(SecretSpan { key, range: start..end });
            }
            continue;
        }
        if value.is_empty() || value.starts_with(['{', '[', '&', '*', '!', '#']) {
            continue;
        }
        let value = match value.find(" #") {
            Some(comment) if !value.starts_with(['"', '\'']) => value[..comment].trim_end(),
            _ => value,
        };
        let range = unquote(value).unwrap_or(0..value.len());
        spans.push(SecretSpan {
            key,
            range: offset + value_start + range.start..offset + value_start + range.end,
        });
    }
    spans
}

/// The colon ending a yaml mapping key (followed by a space or the line's end).
fn yaml_colon(body: &str) -> Option<usize> {
    let mut quote = None;
    for (i, c) in body.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') if i == 0 => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, ':') if body[i + 1..].is_empty() || body[i + 1..].starts_with([' ', '\t']) => return Some(i),
            (None, '#') if i > 0 && body[..i].ends_with(' ') => return None,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(value: &str) -> String {
        blake3::keyed_hash(&[7; 32], value.as_bytes()).to_hex().to_string()
    }

    fn shown(format: Format, text: &str) -> String {
        redact(format, text, &SecretKeys::default(), &fp)
    }

    fn secrets(format: Format, text: &str) -> Vec<String> {
        find(format, text, &SecretKeys::default())
            .into_iter()
            .map(|s| text[s.range].to_string())
            .collect()
    }

    #[test]
    fn finds_the_secret_values_of_every_structured_format() {
        assert_eq!(
            secrets(
                Format::Json,
                r#"{"user": "app", "password": "hunter2", "nested": {"api_token":"t0k\"en"}, "n": 1}"#
            ),
            ["hunter2", r#"t0k\"en"#]
        );
        assert_eq!(
            secrets(
                Format::Toml,
                "[db]\nuser = \"app\"\npassword = \"hunter2\" # comment\n\"private.key\" = 'lit'\nport = 5432\n"
            ),
            ["hunter2", "lit"]
        );
        assert_eq!(
            secrets(
                Format::Yaml,
                "db:\n  user: app\n  password: hunter2 # comment\n  token: \"quoted: yes\"\n  - secret_key: item\ncert_key: |\n  line one\n  line two\nafter: 1\n"
            ),
            ["hunter2", "quoted: yes", "item", "line one\n  line two"]
        );
        assert_eq!(
            secrets(Format::Ini, "[s]\nuser = app\nPassword = \"x y\"\n; token = commented\n"),
            ["x y"]
        );
        assert_eq!(
            secrets(
                Format::Env,
                "DB_USER=app\nexport DB_PASSWORD='s3 cr3t'\nAPI_TOKEN=abc\n# SECRET=no\n"
            ),
            ["s3 cr3t", "abc"]
        );
        assert!(secrets(Format::Text, "password = hunter2").is_empty());
        assert!(secrets(Format::Json, r#"{"keys": [1, 2], "password": 5, "monkey": null}"#).is_empty());
    }

    #[test]
    fn redaction_shows_a_fingerprint_and_keeps_the_format_valid() {
        let toml = "[db]\nuser = \"app\"\npassword = \"hunter2\"\n";
        let redacted = shown(Format::Toml, toml);
        assert!(!redacted.contains("hunter2"), "{redacted}");
        assert!(
            redacted.contains(&format!("password = \"«secret:{}»\"", &fp("hunter2")[..12])),
            "{redacted}"
        );
        crate::format::validate(Format::Toml, redacted.as_bytes()).unwrap();
        let json = r#"{"password": "hunter2", "user": "app"}"#;
        crate::format::validate(Format::Json, shown(Format::Json, json).as_bytes()).unwrap();
        let yaml = "password: hunter2\nuser: app\n";
        crate::format::validate(Format::Yaml, shown(Format::Yaml, yaml).as_bytes()).unwrap();
        // Equal values, equal placeholders; another value, another one.
        assert_eq!(shown(Format::Env, "A_TOKEN=x\n"), shown(Format::Env, "A_TOKEN=x\n"));
        assert_ne!(shown(Format::Env, "A_TOKEN=x\n"), shown(Format::Env, "A_TOKEN=y\n"));
    }

    #[test]
    fn an_edit_of_other_lines_keeps_the_stored_secret_and_a_new_value_replaces_it() {
        let keys = SecretKeys::default();
        for (format, original, other_line) in [
            (
                Format::Toml,
                "[db]\nuser = \"app\"\npassword = \"hunter2\"\n",
                ("user = \"app\"", "user = \"web\""),
            ),
            (Format::Env, "DB_USER=app\nDB_PASSWORD=hunter2\n", ("DB_USER=app", "DB_USER=web")),
            (
                Format::Json,
                "{\n  \"user\": \"app\",\n  \"password\": \"hunter2\"\n}\n",
                ("\"app\"", "\"web\""),
            ),
            (Format::Yaml, "user: app\npassword: hunter2\n", ("user: app", "user: web")),
            (Format::Ini, "[s]\nuser = app\npassword = hunter2\n", ("user = app", "user = web")),
        ] {
            let redacted = redact(format, original, &keys, &fp);
            let edited = redacted.replace(other_line.0, other_line.1);
            let restored = restore(format, &edited, original, &keys, &fp).unwrap();
            assert_eq!(restored, original.replace(other_line.0, other_line.1), "{format}");
            // A value typed in clear is taken as typed.
            let typed = edited.replace(&format!("«secret:{}»", &fp("hunter2")[..12]), "new-one");
            assert_eq!(restore(format, &typed, original, &keys, &fp).unwrap(), typed, "{format}");
        }
    }

    #[test]
    fn a_placeholder_cannot_be_forged_or_moved_to_an_ordinary_key() {
        let keys = SecretKeys::default();
        let original = "DB_PASSWORD=hunter2\nNOTE=hello\n";
        let redacted = redact(Format::Env, original, &keys, &fp);
        let placeholder = redacted.lines().next().unwrap().strip_prefix("DB_PASSWORD=").unwrap().to_string();
        let moved = format!("DB_PASSWORD=x\nNOTE={placeholder}\n");
        assert_eq!(
            restore(Format::Env, &moved, original, &keys, &fp),
            Err(RestoreError::Misplaced("NOTE".into()))
        );
        let forged = "DB_PASSWORD=«secret:000000000000»\n";
        assert!(matches!(
            restore(Format::Env, forged, original, &keys, &fp),
            Err(RestoreError::Unknown(_))
        ));
        // Another file's placeholder means nothing here.
        let other = redact(Format::Env, "API_TOKEN=other\n", &keys, &fp);
        assert!(matches!(
            restore(Format::Env, &other, original, &keys, &fp),
            Err(RestoreError::Unknown(_))
        ));
    }

    #[test]
    fn patterns_are_configurable_and_case_blind() {
        let default = SecretKeys::default();
        assert_eq!(SecretKeys::parse(&default.to_string()).unwrap(), default);
        let keys = SecretKeys::parse("pin, Passphrase").unwrap();
        assert!(keys.matches("SIM_PIN") && keys.matches("passphrase_file") && !keys.matches("password"));
        assert!(SecretKeys::parse("").unwrap().patterns().is_empty());
        assert!(SecretKeys::parse("bad pattern!").is_err());
        assert!(find(Format::Env, "PASSWORD=x\n", &SecretKeys::parse("").unwrap()).is_empty());
    }
}
