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
//! A secret key's value is every scalar below it: `password = 1234`, each item of
//! `tokens = ["a", "b"]`, every value of a `[credentials]` table or of a yaml block under
//! `secrets:`. Values are found by the format's own parser where it tells positions (toml),
//! else by a scanner of the format's grammar (json, and the line-oriented yaml, ini, env).
//! Then the redacted text is read again by the format's parser, and every value below a
//! secret key must be a placeholder (or empty); if one is not — a yaml flow mapping
//! (`creds: {password: x}`), a multi-line plain scalar, an alias of a value defined
//! elsewhere, a key spelt with escapes — the whole text is secret and shows as one
//! placeholder ([`Secrets::Whole`]). So the scanners may fall short, but never show a
//! secret value: what they miss hides the whole entry. A structured text that is not
//! valid and names a pattern is hidden whole too (its structure is unknown). Keys below a
//! secret key are shown (they name fields, like `user` under `credentials`).

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

    /// False when `text` cannot hold a secret key: no pattern occurs in it, and no escape
    /// that could spell one (json, yaml and toml keys may be written with `\u0070`).
    fn may_occur_in(&self, format: Format, text: &str) -> bool {
        if matches!(format, Format::Json | Format::Yaml | Format::Toml) && text.contains('\\') {
            return true;
        }
        let lower = text.to_ascii_lowercase();
        self.patterns.iter().any(|pattern| lower.contains(pattern.as_str()))
    }
}

/// The patterns as `parse` reads them: `password,token`.
impl std::fmt::Display for SecretKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.patterns.join(","))
    }
}

/// One secret value: the byte range of its text (inside the quotes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSpan {
    pub range: Range<usize>,
    /// Not a string in the text (a number, a boolean, a date, a yaml flow collection): json
    /// and toml show its placeholder in quotes, which an edit's restore takes away again.
    pub bare: bool,
}

/// What of a text is secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secrets {
    /// Nothing: the text is shown as it is.
    None,
    /// These values, in order.
    Values(Vec<SecretSpan>),
    /// The whole text: it holds a secret value redaction cannot cut out on its own.
    Whole,
}

/// What of `text`, read as `format`, is secret.
pub fn secrets(format: Format, text: &str, keys: &SecretKeys) -> Secrets {
    if keys.patterns.is_empty() || format == Format::Text || !keys.may_occur_in(format, text) {
        return Secrets::None;
    }
    if crate::format::validate(format, text.as_bytes()).is_err() {
        return Secrets::Whole;
    }
    let Some(spans) = find(format, text, keys) else {
        return Secrets::Whole;
    };
    // Checked twice, with a plain hash standing for the keyed one: what is shown holds no
    // secret value the format's parser reads, and an edit that keeps it gets the text back.
    let plain = |value: &str| blake3::hash(value.as_bytes()).to_hex().to_string();
    let shown = apply(format, text, &spans, &plain);
    // The shown text is parsed again: it must be bounded like any untrusted text (cutting a
    // span out can drop an anchor's redefinition, so that its aliases repeat another,
    // larger node).
    if crate::format::validate(format, shown.as_bytes()).is_err()
        || !all_redacted(format, &shown, keys)
        || put_back(format, &shown, &known(text, &spans, &plain), keys).as_deref() != Ok(text)
    {
        return Secrets::Whole;
    }
    if spans.is_empty() { Secrets::None } else { Secrets::Values(spans) }
}

/// True when `text` holds at least one secret value (its content must then be sealed).
pub fn has_secrets(format: Format, text: &str, keys: &SecretKeys) -> bool {
    secrets(format, text, keys) != Secrets::None
}

/// True when `text` holds a placeholder (an edit of redacted content).
pub fn has_placeholder(text: &str) -> bool {
    text.contains(OPEN)
}

fn placeholder(fingerprint: &str) -> String {
    let short: String = fingerprint.chars().take(FINGERPRINT_LEN).collect();
    format!("{OPEN}{short}{CLOSE}")
}

/// True when `value` is exactly one placeholder (a whole text hidden as one is that,
/// trimmed).
pub fn is_placeholder(value: &str) -> bool {
    value
        .strip_prefix(OPEN)
        .and_then(|rest| rest.strip_suffix(CLOSE))
        .is_some_and(|hex| hex.len() == FINGERPRINT_LEN && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `text` with every secret value replaced by its placeholder, or one placeholder for all
/// of it ([`Secrets::Whole`]). `fingerprint` is a keyed hash of a value (hex); only its
/// first [`FINGERPRINT_LEN`] digits are shown.
pub fn redact(format: Format, text: &str, keys: &SecretKeys, fingerprint: &dyn Fn(&str) -> String) -> String {
    match secrets(format, text, keys) {
        Secrets::None => text.to_string(),
        Secrets::Whole => placeholder(&fingerprint(text)),
        Secrets::Values(spans) => apply(format, text, &spans, fingerprint),
    }
}

/// `text` with `spans` replaced by placeholders; a bare value's in quotes where the format
/// needs them for the text to stay valid.
fn apply(format: Format, text: &str, spans: &[SecretSpan], fingerprint: &dyn Fn(&str) -> String) -> String {
    let quote_bare = matches!(format, Format::Json | Format::Toml);
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for span in spans {
        out.push_str(&text[at..span.range.start]);
        let shown = placeholder(&fingerprint(&text[span.range.clone()]));
        if span.bare && quote_bare {
            out.push('"');
            out.push_str(&shown);
            out.push('"');
        } else {
            out.push_str(&shown);
        }
        at = span.range.end;
    }
    out.push_str(&text[at..]);
    out
}

/// Why an edited text cannot have its secrets put back. It names the place in the edited
/// text, never the text: the line of a misplaced placeholder may hold a secret value already
/// put back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    #[error("line {line}, column {column}: this placeholder does not stand for a secret value of this file; type the new value in clear")]
    Unknown { line: u32, column: u32 },
    #[error("line {line}, column {column}: a secret placeholder can only be the value of a secret key")]
    Misplaced { line: u32, column: u32 },
    #[error(
        "this file is shown as one placeholder (its secret values cannot be cut out one by one): keep the placeholder alone to keep the content, or type the whole file"
    )]
    Whole,
    #[error("the edit is not valid with the stored secret values in place of its placeholders; type the values in clear")]
    Invalid,
}

impl RestoreError {
    fn at(text: &str, offset: usize, make: fn(u32, u32) -> RestoreError) -> RestoreError {
        let (line, column) = crate::format::line_col(text, offset);
        make(u32::try_from(line).unwrap_or(u32::MAX), u32::try_from(column).unwrap_or(u32::MAX))
    }
}

/// Puts the values behind the placeholders of `edited` back, taking them from `original`
/// (the stored content of the same entry). A value typed in clear stays as typed. An edit
/// that is not valid in its format keeps its placeholders, for validation to refuse it.
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
    let known = match secrets(format, original, keys) {
        Secrets::None => Known::new(),
        Secrets::Whole if edited.trim() == placeholder(&fingerprint(original)) => return Ok(original.to_string()),
        Secrets::Whole => return Err(RestoreError::Whole),
        Secrets::Values(spans) => known(original, &spans, fingerprint),
    };
    put_back(format, edited, &known, keys)
}

/// The stored secret values by their placeholders: the text, and whether it is bare.
type Known<'a> = std::collections::HashMap<String, (&'a str, bool)>;

fn known<'a>(text: &'a str, spans: &[SecretSpan], fingerprint: &dyn Fn(&str) -> String) -> Known<'a> {
    spans
        .iter()
        .map(|span| {
            let stored = &text[span.range.clone()];
            (placeholder(&fingerprint(stored)), (stored, span.bare))
        })
        .collect()
}

/// `edited` with the placeholders standing as secret values replaced by the `known` values.
/// Only a valid edit gets its values back, and the result must be valid too.
fn put_back(format: Format, edited: &str, known: &Known, keys: &SecretKeys) -> Result<String, RestoreError> {
    if crate::format::validate(format, edited.as_bytes()).is_err() {
        return Ok(edited.to_string());
    }
    let mut out = String::with_capacity(edited.len());
    let mut at = 0;
    for span in find(format, edited, keys).unwrap_or_default() {
        let value = &edited[span.range.clone()];
        if !value.contains(OPEN) {
            continue;
        }
        let Some((stored, bare)) = known.get(value) else {
            return Err(RestoreError::at(edited, span.range.start, |line, column| RestoreError::Unknown {
                line,
                column,
            }));
        };
        let mut range = span.range;
        // A number shown as "«…»" becomes the number again.
        let quoted = |q: char| edited[..range.start].ends_with(q) && edited[range.end..].starts_with(q);
        if *bare && !span.bare && (quoted('"') || quoted('\'')) {
            range = range.start - 1..range.end + 1;
        }
        // Whatever placeholder lies between the values stands somewhere else than as a
        // secret key's value.
        misplaced(edited, at..range.start)?;
        out.push_str(&edited[at..range.start]);
        out.push_str(stored);
        at = range.end;
    }
    misplaced(edited, at..edited.len())?;
    out.push_str(&edited[at..]);
    if crate::format::validate(format, out.as_bytes()).is_err() {
        return Err(RestoreError::Invalid);
    }
    Ok(out)
}

/// Refuses a placeholder in `edited[range]`, where no secret value stands.
fn misplaced(edited: &str, range: Range<usize>) -> Result<(), RestoreError> {
    match edited[range.clone()].find(OPEN) {
        Some(offset) => Err(RestoreError::at(edited, range.start + offset, |line, column| {
            RestoreError::Misplaced { line, column }
        })),
        None => Ok(()),
    }
}

/// The secret values the format's scanner finds in `text`, in order; `None` when it cannot
/// read the text.
fn find(format: Format, text: &str, keys: &SecretKeys) -> Option<Vec<SecretSpan>> {
    let mut spans = match format {
        Format::Json => json_spans(text, keys),
        Format::Toml => toml_spans(text, keys)?,
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
    Some(spans)
}

/// Reads a redacted text with the format's parser: true when every value below a secret
/// key is a placeholder, empty or null. Ini and env have no other reading than their
/// scanner's, so it is true for them.
fn all_redacted(format: Format, text: &str, keys: &SecretKeys) -> bool {
    match format {
        Format::Json => {
            let mut deserializer = serde_json::Deserializer::from_str(text);
            // The text was validated: its depth is bounded.
            deserializer.disable_recursion_limit();
            serde::Deserialize::deserialize(&mut deserializer).is_ok_and(|value| json_redacted(&value, false, keys))
        }
        Format::Toml => text
            .parse::<toml::Table>()
            .is_ok_and(|table| table.iter().all(|(key, value)| toml_redacted(value, keys.matches(key), keys))),
        Format::Yaml => yaml_rust2::YamlLoader::load_from_str(text)
            .is_ok_and(|documents| documents.iter().all(|document| yaml_redacted(document, false, keys))),
        Format::Ini | Format::Env | Format::Text => true,
    }
}

fn json_redacted(value: &serde_json::Value, secret: bool, keys: &SecretKeys) -> bool {
    use serde_json::Value;
    match value {
        Value::Object(map) => map
            .iter()
            .all(|(key, value)| json_redacted(value, secret || keys.matches(key), keys)),
        Value::Array(items) => items.iter().all(|item| json_redacted(item, secret, keys)),
        Value::String(text) => !secret || text.is_empty() || is_placeholder(text),
        Value::Null => true,
        Value::Bool(_) | Value::Number(_) => !secret,
    }
}

fn toml_redacted(value: &toml::Value, secret: bool, keys: &SecretKeys) -> bool {
    use toml::Value;
    match value {
        Value::Table(table) => table
            .iter()
            .all(|(key, value)| toml_redacted(value, secret || keys.matches(key), keys)),
        Value::Array(items) => items.iter().all(|item| toml_redacted(item, secret, keys)),
        Value::String(text) => !secret || text.is_empty() || is_placeholder(text),
        Value::Integer(_) | Value::Float(_) | Value::Boolean(_) | Value::Datetime(_) => !secret,
    }
}

fn yaml_redacted(value: &yaml_rust2::Yaml, secret: bool, keys: &SecretKeys) -> bool {
    use yaml_rust2::Yaml;
    match value {
        Yaml::Hash(map) => map.iter().all(|(key, value)| {
            let name = match key {
                Yaml::String(text) | Yaml::Real(text) => text.clone(),
                Yaml::Integer(n) => n.to_string(),
                Yaml::Boolean(b) => b.to_string(),
                _ => String::new(),
            };
            // A key below a secret key is shown, so it must not be a structure hiding one.
            (!secret || !matches!(key, Yaml::Hash(_) | Yaml::Array(_))) && yaml_redacted(value, secret || keys.matches(&name), keys)
        }),
        Yaml::Array(items) => items.iter().all(|item| yaml_redacted(item, secret, keys)),
        // A block scalar ends with its line break.
        Yaml::String(text) => !secret || text.is_empty() || is_placeholder(text.trim_end()),
        Yaml::Null => true,
        _ => !secret,
    }
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
                range: offset + range.start..offset + range.end,
                bare: false,
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

/// toml values by the parser's own spans: below a secret key, every scalar, in arrays,
/// inline tables, `[tables]` and `[[arrays of tables]]` alike.
fn toml_spans(text: &str, keys: &SecretKeys) -> Option<Vec<SecretSpan>> {
    let document = toml_edit::ImDocument::parse(text).ok()?;
    let mut spans = Vec::new();
    toml_table(document.as_table(), false, text, keys, &mut spans);
    spans.sort_by_key(|span| span.range.start);
    Some(spans)
}

/// Whether a value under `key` is secret: below a secret key already, or `key` is one.
fn secret_below(inherited: bool, key: &str, keys: &SecretKeys) -> bool {
    inherited || keys.matches(key)
}

fn toml_table(table: &toml_edit::Table, secret: bool, text: &str, keys: &SecretKeys, spans: &mut Vec<SecretSpan>) {
    use toml_edit::Item;
    for (key, item) in table.iter() {
        let secret = secret_below(secret, key, keys);
        match item {
            Item::Value(value) => toml_value(value, secret, text, keys, spans),
            Item::Table(table) => toml_table(table, secret, text, keys, spans),
            Item::ArrayOfTables(tables) => {
                for table in tables.iter() {
                    toml_table(table, secret, text, keys, spans);
                }
            }
            Item::None => {}
        }
    }
}

fn toml_value(value: &toml_edit::Value, secret: bool, text: &str, keys: &SecretKeys, spans: &mut Vec<SecretSpan>) {
    use toml_edit::Value;
    match value {
        Value::Array(items) => {
            for item in items.iter() {
                toml_value(item, secret, text, keys, spans);
            }
        }
        Value::InlineTable(table) => {
            for (key, value) in table.iter() {
                toml_value(value, secret_below(secret, key, keys), text, keys, spans);
            }
        }
        scalar => {
            let Some(range) = scalar.span().filter(|_| secret) else { return };
            let Some(raw) = text.get(range.clone()) else { return };
            let (range, bare) = match scalar {
                Value::String(_) => {
                    let quotes = if raw.starts_with("\"\"\"") || raw.starts_with("\'\'\'") {
                        3
                    } else {
                        1
                    };
                    (
                        range.start + quotes..range.end.saturating_sub(quotes).max(range.start + quotes),
                        false,
                    )
                }
                _ => (range, true),
            };
            spans.push(SecretSpan { range, bare });
        }
    }
}

/// json by its grammar: below a secret key, every string, number and boolean, in nested
/// objects and arrays too. Keys are read as written (an escaped key is caught by the
/// check after redaction).
fn json_spans(text: &str, keys: &SecretKeys) -> Vec<SecretSpan> {
    /// An open object or array, and whether it is below a secret key.
    struct Open {
        object: bool,
        secret: bool,
    }
    let bytes = text.as_bytes();
    let mut spans = Vec::new();
    let mut stack: Vec<Open> = Vec::new();
    // In an object: whether the last string read where a key stands is a secret key, and
    // whether its ':' was read.
    let mut key_is_secret = false;
    let mut after_colon = false;
    let mut i = 0;
    while i < bytes.len() {
        let in_object = stack.last().is_some_and(|open| open.object);
        let is_value = !in_object || after_colon;
        let secret = stack.last().is_some_and(|open| open.secret) || (after_colon && key_is_secret);
        match bytes[i] {
            b'"' => {
                let start = i + 1;
                let mut j = start;
                while j < bytes.len() && bytes[j] != b'"' {
                    j += if bytes[j] == b'\\' { 2 } else { 1 };
                }
                let end = j.min(bytes.len());
                if is_value {
                    if secret {
                        spans.push(SecretSpan {
                            range: start..end,
                            bare: false,
                        });
                    }
                    after_colon = false;
                } else {
                    key_is_secret = text.get(start..end).is_some_and(|key| keys.matches(key));
                }
                i = end + 1;
                continue;
            }
            b':' => after_colon = true,
            b'{' | b'[' => {
                stack.push(Open {
                    object: bytes[i] == b'{',
                    secret: is_value && secret,
                });
                after_colon = false;
                key_is_secret = false;
            }
            b'}' | b']' => {
                stack.pop();
                after_colon = false;
            }
            b',' => {
                after_colon = false;
                key_is_secret = false;
            }
            b' ' | b'\t' | b'\n' | b'\r' => {}
            _ => {
                // A number, true, false or null (or what a person typed there).
                let start = i;
                while i < bytes.len() && !b",:{}[]\" \t\n\r".contains(&bytes[i]) {
                    i += 1;
                }
                if is_value && secret && &text[start..i] != "null" {
                    spans.push(SecretSpan {
                        range: start..i,
                        bare: true,
                    });
                }
                after_colon = false;
                continue;
            }
        }
        i += 1;
    }
    spans
}

/// yaml by lines: `key: value` with plain, quoted or block (`|`, `>`) scalars, and below a
/// secret key without a value on its line, every value of the more-indented block (or of
/// the sequence at its indent). A flow collection (`[a, b]`) is one value.
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
    // The column of a secret key whose block is being read.
    let mut block: Option<usize> = None;
    let mut index = 0;
    while index < lines.len() {
        let (offset, line) = lines[index];
        index += 1;
        let indent = line.len() - line.trim_start().len();
        let item = line.trim_start().starts_with("- ") || line.trim_start() == "-";
        let body = line.trim_start();
        let body = body.strip_prefix('-').filter(|_| item).map_or(body, str::trim_start);
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        if let Some(column) = block
            && !(indent > column || (indent == column && item))
        {
            block = None;
        }
        let body_start = line.len() - body.len();
        let (key, value_start) = match yaml_colon(body) {
            Some(at) => {
                let key = body[..at].trim().trim_matches(['"', '\'']);
                let after = &body[at + 1..];
                (key, body_start + at + 1 + (after.len() - after.trim_start().len()))
            }
            // An item or a continuation line of a block's value.
            None if block.is_some() => ("", body_start),
            None => continue,
        };
        if block.is_none() && !keys.matches(key) {
            continue;
        }
        let (value_start, value) = skip_properties(value_start, line[value_start..].trim_end());
        // `key: # note` has no value on its line.
        let value = if value.starts_with('#') { "" } else { value };
        if value.is_empty() {
            // The value is the block below.
            if block.is_none() {
                block = Some(body_start);
            }
            continue;
        }
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
                spans.push(SecretSpan {
                    range: start..end,
                    bare: false,
                });
            }
            continue;
        }
        if value.starts_with('*') {
            // An alias: its anchor's value is redacted where it stands, or the check fails.
            continue;
        }
        let (range, bare) = if value.starts_with(['[', '{']) {
            (0..value.len(), true)
        } else {
            (yaml_scalar(value), false)
        };
        spans.push(SecretSpan {
            range: offset + value_start + range.start..offset + value_start + range.end,
            bare,
        });
    }
    spans
}

/// Skips a yaml node's anchor (`&name`) and tag (`!tag`): where the value starts, and it.
fn skip_properties(mut start: usize, mut value: &str) -> (usize, &str) {
    while value.starts_with(['&', '!']) {
        let end = value.find([' ', '\t']).unwrap_or(value.len());
        let rest = value[end..].trim_start();
        start += value.len() - rest.len();
        value = rest;
    }
    (start, value)
}

/// The range of a yaml scalar's text in `value`: inside its quotes, or the plain scalar
/// before a comment.
fn yaml_scalar(value: &str) -> Range<usize> {
    match value.chars().next() {
        Some('"') => {
            let mut escaped = false;
            for (i, c) in value.char_indices().skip(1) {
                match c {
                    '\\' if !escaped => escaped = true,
                    '"' if !escaped => return 1..i,
                    _ => escaped = false,
                }
            }
            0..value.len()
        }
        Some('\'') => {
            // '' is an escaped quote inside.
            let bytes = value.as_bytes();
            let mut i = 1;
            while i < bytes.len() {
                if bytes[i] == b'\'' {
                    if bytes.get(i + 1) == Some(&b'\'') {
                        i += 2;
                        continue;
                    }
                    return 1..i;
                }
                i += 1;
            }
            0..value.len()
        }
        _ => match value.find(" #") {
            Some(comment) => 0..value[..comment].trim_end().len(),
            None => 0..value.len(),
        },
    }
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

    fn shown_as(value: &str) -> String {
        placeholder(&fp(value))
    }

    /// The secret values of `text`; panics when it is hidden whole.
    fn values(format: Format, text: &str) -> Vec<String> {
        match secrets(format, text, &SecretKeys::default()) {
            Secrets::None => Vec::new(),
            Secrets::Values(spans) => spans.into_iter().map(|s| text[s.range].to_string()).collect(),
            Secrets::Whole => panic!("{format} hidden whole:\n{text}"),
        }
    }

    #[test]
    fn finds_the_secret_values_of_every_structured_format() {
        assert_eq!(
            values(
                Format::Json,
                r#"{"user": "app", "password": "hunter2", "nested": {"api_token":"t0k\"en"}, "n": 1}"#
            ),
            ["hunter2", r#"t0k\"en"#]
        );
        assert_eq!(
            values(
                Format::Toml,
                "[db]\nuser = \"app\"\npassword = \"hunter2\" # comment\n\"private.key\" = 'lit'\nport = 5432\n"
            ),
            ["hunter2", "lit"]
        );
        assert_eq!(
            values(
                Format::Yaml,
                "db:\n  user: app\n  password: hunter2 # comment\n  token: \"quoted: yes\" # c\n  items:\n  - secret_key: item\ncert_key: |\n  line one\n  line two\nafter: 1\n"
            ),
            ["hunter2", "quoted: yes", "item", "line one\n  line two"]
        );
        assert_eq!(
            values(Format::Ini, "[s]\nuser = app\nPassword = \"x y\"\n; token = commented\n"),
            ["x y"]
        );
        assert_eq!(
            values(
                Format::Env,
                "DB_USER=app\nexport DB_PASSWORD='s3 cr3t'\nAPI_TOKEN=abc\n# SECRET=no\n"
            ),
            ["s3 cr3t", "abc"]
        );
        assert!(values(Format::Text, "password = hunter2").is_empty());
        assert!(values(Format::Json, r#"{"keys": [], "password": null, "monkey": ""}"#).is_empty());
        assert!(values(Format::Toml, "user = \"app\"\n").is_empty());
    }

    #[test]
    fn every_value_below_a_secret_key_is_secret_whatever_its_shape() {
        assert_eq!(
            values(
                Format::Toml,
                "pin_key = 1234\nenabled = true\ndb = { user = \"app\", password = \"p1\" }\ntokens = [\"t1\", \"t2\"]\n\
                 private_key = \"\"\"\nline one\nline two\"\"\"\nupdated = 2024-01-01\n\
                 [credentials]\nuser = \"u\"\nport = 22\n\
                 [[api_keys]]\nvalue = \"k1\"\n\
                 [server]\nsecret.token = \"dotted\"\nname = \"web\"\n"
            ),
            ["1234", "p1", "t1", "t2", "\nline one\nline two", "u", "22", "k1", "dotted"]
        );
        assert_eq!(
            values(
                Format::Json,
                r#"{"credentials": {"user": "u", "port": 22, "list": [true, "x", null]}, "pin_key": 1234, "tokens": ["a", "b"], "name": "web"}"#
            ),
            ["u", "22", "true", "x", "1234", "a", "b"]
        );
        assert_eq!(
            values(
                Format::Yaml,
                "secrets:\n  db: one\n  nested:\n    deep: two\n  list:\n  - three\n  - name: four\napi_keys:\n- five\n- 'six'\ntokens: [a, b]\npassword: &pw seven\nname: web\n"
            ),
            ["one", "two", "three", "four", "five", "six", "[a, b]", "seven"]
        );
    }

    #[test]
    fn what_cannot_be_cut_out_hides_the_whole_text() {
        let keys = SecretKeys::default();
        for (format, text) in [
            // A flow mapping's keys are not on lines of their own.
            (Format::Yaml, "creds: {user: app, password: hunter2}\n"),
            // A folded plain scalar goes on over lines.
            (Format::Yaml, "password: first\n  second\n"),
            // An alias of a value defined under an ordinary key.
            (Format::Yaml, "plain: &v hunter2\npassword: *v\n"),
            // A key spelt with escapes.
            (Format::Json, r#"{"pass\u0077ord": "hunter2"}"#),
            (Format::Yaml, "\"pass\\u0077ord\": hunter2\n"),
            // Not valid, and it names a pattern.
            (Format::Json, r#"{"password": "hunter2""#),
            (Format::Toml, "password = hunter2\n"),
        ] {
            assert_eq!(secrets(format, text, &keys), Secrets::Whole, "{format}: {text}");
            assert_eq!(shown(format, text), shown_as(text), "{format}: {text}");
            assert!(has_secrets(format, text, &keys));
        }
        // toml's parser reads escaped keys, so there they are found one by one.
        assert_eq!(values(Format::Toml, "\"pass\\u0077ord\" = \"hunter2\"\n"), ["hunter2"]);
        // Not valid and naming no pattern: shown as it is.
        assert_eq!(secrets(Format::Json, "{\"user\": ", &keys), Secrets::None);
    }

    #[test]
    fn redaction_shows_a_fingerprint_and_keeps_the_format_valid() {
        let toml = "[db]\nuser = \"app\"\npassword = \"hunter2\"\npin_key = 1234\n";
        let redacted = shown(Format::Toml, toml);
        assert!(!redacted.contains("hunter2") && !redacted.contains("1234"), "{redacted}");
        assert!(redacted.contains(&format!("password = \"{}\"", shown_as("hunter2"))), "{redacted}");
        assert!(redacted.contains(&format!("pin_key = \"{}\"", shown_as("1234"))), "{redacted}");
        crate::format::validate(Format::Toml, redacted.as_bytes()).unwrap();
        let json = r#"{"password": "hunter2", "user": "app", "pin_key": 12}"#;
        crate::format::validate(Format::Json, shown(Format::Json, json).as_bytes()).unwrap();
        let yaml = "password: hunter2\nuser: app\n";
        crate::format::validate(Format::Yaml, shown(Format::Yaml, yaml).as_bytes()).unwrap();
        // Equal values, equal placeholders; another value, another one.
        assert_eq!(shown(Format::Env, "A_TOKEN=x\n"), shown(Format::Env, "A_TOKEN=x\n"));
        assert_ne!(shown(Format::Env, "A_TOKEN=x\n"), shown(Format::Env, "A_TOKEN=y\n"));
    }

    /// Texts with secret values of every shape, for the round trip.
    const SHAPES: &[(Format, &str)] = &[
        (
            Format::Toml,
            "[db]\nuser = \"app\"\npassword = \"hunter2\"\npin_key = 1234\ncredentials = { token = 'x', n = 2.5 }\n[[api_keys]]\nv = [\"a\", true]\n",
        ),
        (
            Format::Json,
            "{\n  \"user\": \"app\",\n  \"password\": \"hunter2\",\n  \"secrets\": {\"a\": [1, \"b\", false]}\n}\n",
        ),
        (
            Format::Yaml,
            "user: app\npassword: hunter2\nsecrets:\n  a: 1\n  b:\n  - x\ntokens: [p, q]\ncert_key: |\n  one\n  two\n",
        ),
        (Format::Ini, "[s]\nuser = app\npassword = hunter2\n"),
        (Format::Env, "DB_USER=app\nDB_PASSWORD=hunter2\n"),
        (Format::Yaml, "creds: {password: hunter2}\n"),
    ];

    #[test]
    fn restoring_what_was_shown_gives_back_the_stored_text() {
        let keys = SecretKeys::default();
        for &(format, text) in SHAPES {
            let redacted = shown(format, text);
            assert_ne!(redacted, text, "{format}");
            for value in ["hunter2", "1234", "2.5"] {
                assert!(!redacted.contains(value), "{format}: {redacted}");
            }
            assert_eq!(restore(format, &redacted, text, &keys, &fp).unwrap(), text, "{format}");
        }
    }

    #[test]
    fn an_edit_of_other_lines_keeps_the_stored_secret_and_a_new_value_replaces_it() {
        let keys = SecretKeys::default();
        for (format, original, other_line) in [
            (
                Format::Toml,
                "[db]\nuser = \"app\"\npassword = \"hunter2\"\npin_key = 1234\n",
                ("user = \"app\"", "user = \"web\""),
            ),
            (Format::Env, "DB_USER=app\nDB_PASSWORD=hunter2\n", ("DB_USER=app", "DB_USER=web")),
            (
                Format::Json,
                "{\n  \"user\": \"app\",\n  \"password\": \"hunter2\",\n  \"pin_key\": 1234\n}\n",
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
            let typed = edited.replace(&shown_as("hunter2"), "new-one");
            let restored = restore(format, &typed, original, &keys, &fp).unwrap();
            assert!(
                restored.contains("new-one") && !restored.contains("hunter2"),
                "{format}: {restored}"
            );
        }
    }

    #[test]
    fn a_text_hidden_whole_is_kept_or_typed_anew_as_a_whole() {
        let keys = SecretKeys::default();
        let original = "creds: {user: app, password: hunter2}\n";
        let whole = shown(Format::Yaml, original);
        assert_eq!(
            restore(Format::Yaml, &format!("{whole}\n"), original, &keys, &fp).unwrap(),
            original
        );
        assert_eq!(
            restore(Format::Yaml, &format!("a: 1\nb: {whole}\n"), original, &keys, &fp),
            Err(RestoreError::Whole)
        );
        let anew = "creds: {user: web, password: other}\n";
        assert_eq!(restore(Format::Yaml, anew, original, &keys, &fp).unwrap(), anew);
    }

    #[test]
    fn a_placeholder_cannot_be_forged_or_moved_to_an_ordinary_key() {
        let keys = SecretKeys::default();
        let original = "DB_PASSWORD=hunter2\nNOTE=hello\n";
        let placeholder = shown_as("hunter2");
        let moved = format!("DB_PASSWORD=x\nNOTE={placeholder}\n");
        assert_eq!(
            restore(Format::Env, &moved, original, &keys, &fp),
            Err(RestoreError::Misplaced { line: 2, column: 6 })
        );
        let forged = "DB_PASSWORD=«secret:000000000000»\n";
        assert!(matches!(
            restore(Format::Env, forged, original, &keys, &fp),
            Err(RestoreError::Unknown { .. })
        ));
        // Another file's placeholder means nothing here.
        let other = redact(Format::Env, "API_TOKEN=other\n", &keys, &fp);
        assert!(matches!(
            restore(Format::Env, &other, original, &keys, &fp),
            Err(RestoreError::Unknown { .. })
        ));
        // Nor can it be moved out from below a secret key in json or toml.
        let json = r#"{"secrets": {"a": "hunter2"}, "note": "x"}"#;
        let moved = format!(r#"{{"secrets": {{"a": "y"}}, "note": "{placeholder}"}}"#);
        assert!(matches!(
            restore(Format::Json, &moved, json, &keys, &fp),
            Err(RestoreError::Misplaced { .. })
        ));
        let toml = "[secrets]\na = \"hunter2\"\n[plain]\nnote = \"x\"\n";
        let moved = format!("[secrets]\na = \"y\"\n[plain]\nnote = \"{placeholder}\"\n");
        assert!(matches!(
            restore(Format::Toml, &moved, toml, &keys, &fp),
            Err(RestoreError::Misplaced { .. })
        ));
    }

    #[test]
    fn a_refused_restore_names_the_place_and_never_a_stored_value() {
        let keys = SecretKeys::default();
        let secret = "CANARY-stored-cookie";
        // A placeholder under an ordinary key on the line of a secret one, in toml and json,
        // and one in a yaml comment: the stored value is put back before the misplaced
        // placeholder is found, on the same line.
        for (format, original, edited) in [
            (
                Format::Toml,
                format!("x = {{ cookie_secret = \"{secret}\", y = \"plain\" }}\n"),
                "x = { cookie_secret = \"P\", y = \"P\" }\n",
            ),
            (
                Format::Json,
                format!("{{\"x\": {{\"cookie_secret\": \"{secret}\", \"y\": \"plain\"}}}}"),
                "{\"x\": {\"cookie_secret\": \"P\", \"y\": \"P\"}}",
            ),
            (Format::Yaml, format!("cookie_secret: {secret} # note\n"), "cookie_secret: P # P\n"),
            (Format::Env, format!("COOKIE_SECRET={secret} # x\n"), "COOKIE_SECRET=P #P\n"),
        ] {
            let edited = edited.replace('P', &shown_as(secret));
            let err = restore(format, &edited, &original, &keys, &fp).unwrap_err();
            assert!(
                matches!(err, RestoreError::Misplaced { line: 1, .. } | RestoreError::Unknown { line: 1, .. }),
                "{format}: {err}"
            );
            assert!(!err.to_string().contains("CANARY"), "{format}: {err}");
        }
        // A value put back where it is not valid (a literal string's quote inside a basic
        // string) is refused, without the text.
        let original = "password = 'CANARY\"q'\n";
        let edited = format!("password = \"{}\"\n", shown_as("CANARY\"q"));
        assert_eq!(restore(Format::Toml, &edited, original, &keys, &fp), Err(RestoreError::Invalid));
    }

    #[test]
    fn a_redaction_that_would_make_aliases_repeat_a_large_node_hides_the_whole_text() {
        // `&x` is redefined inside the secret value, so the aliases after it repeat a short
        // scalar; cut out, the redefinition is gone and they would repeat the large one.
        let mut text = format!("a: &x \"{}\"\npassword: [&x z]\nlist: [", "y".repeat(1 << 20));
        text.push_str(&vec!["*x"; 40_000].join(", "));
        text.push_str("]\n");
        crate::format::validate(Format::Yaml, text.as_bytes()).unwrap();
        assert_eq!(secrets(Format::Yaml, &text, &SecretKeys::default()), Secrets::Whole);
    }

    #[test]
    fn patterns_are_configurable_and_case_blind() {
        let default = SecretKeys::default();
        assert_eq!(SecretKeys::parse(&default.to_string()).unwrap(), default);
        let keys = SecretKeys::parse("pin, Passphrase").unwrap();
        assert!(keys.matches("SIM_PIN") && keys.matches("passphrase_file") && !keys.matches("password"));
        assert!(SecretKeys::parse("").unwrap().patterns().is_empty());
        assert!(SecretKeys::parse("bad pattern!").is_err());
        assert_eq!(secrets(Format::Env, "PASSWORD=x\n", &SecretKeys::parse("").unwrap()), Secrets::None);
    }
}
