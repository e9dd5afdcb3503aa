//! What the nodes' hooks said, made fit to show.
//!
//! A validator or a reload command may print any part of the files it read (`nginx -t`
//! quotes the directive it refuses), and those files hold secrets. So no hook output is
//! stored, shown, logged or sent anywhere before [`mask`] has replaced every secret value
//! of the revision concerned: each line and each word of a secret entry, and each secret
//! value of an entry holding some (with every word of it). Fragments shorter than
//! [`MIN_MASKED`] characters are left (masking every `true` or `80` would hide the very
//! output it is there for); a secret that short is no secret.

use crate::{Db, Result, revisions::EntrySet};
use domain::{
    format::Format,
    protocol::HookRun,
    redact::{self, Secrets},
};
use sqlx::AnyConnection;

/// Fragments shorter than this are not masked.
pub const MIN_MASKED: usize = 4;
/// What a masked fragment reads as.
pub const MASK: &str = "[secret]";
/// The most output kept of one run once stored (the node already bounds it).
const MAX_STORED: usize = 16 * 1024;

/// The fragments of `text` to mask: the text, its lines and its words.
fn fragments(text: &str, into: &mut Vec<String>) {
    let mut add = |piece: &str| {
        let piece = piece.trim();
        if piece.chars().count() >= MIN_MASKED {
            into.push(piece.to_string());
        }
    };
    add(text);
    for line in text.lines() {
        add(line);
        for word in line.split(|c: char| c.is_whitespace() || "\"'`=:,;()[]{}<>".contains(c)) {
            add(word);
        }
    }
}

/// Every secret fragment of an entry set, longest first.
pub(crate) async fn secret_values(conn: &mut AnyConnection, db: &Db, set: &EntrySet) -> Result<Vec<String>> {
    let mut values = Vec::new();
    for row in set.values() {
        let Some(blob) = row.blob.as_deref() else { continue };
        let sealed = crate::changes::is_sealed_blob(blob);
        if !row.secret && !sealed {
            continue;
        }
        let content = crate::revisions::blob(conn, &db.keys, blob).await?;
        let text = String::from_utf8_lossy(&content);
        let format = row.format.parse::<Format>().unwrap_or(Format::Text);
        match (row.secret, redact::secrets(format, &text, &db.secret_keys)) {
            (false, Secrets::Values(spans)) => {
                for span in spans {
                    let raw = &text[span.range];
                    fragments(raw, &mut values);
                    // A validator prints the value it decoded, not its escaped source.
                    if let Some(decoded) = decoded(raw) {
                        fragments(&decoded, &mut values);
                    }
                }
            }
            // Sealed, yet no value is secret under today's key names (they changed since):
            // the whole content is masked, never none of it.
            _ => fragments(&text, &mut values),
        }
    }
    values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    values.dedup();
    Ok(values)
}

/// A quoted value's escapes decoded as json, toml and yaml read them (`\"`, `\\`,
/// `\n`, `\t`, `\uXXXX`); `None` when it has none.
fn decoded(raw: &str) -> Option<String> {
    if !raw.contains('\\') {
        return None;
    }
    serde_json::from_str::<String>(&format!("\"{raw}\"")).ok().filter(|d| d != raw)
}

/// Every secret fragment of several entry sets (the revision a hook judged, and the one
/// its node may still serve), longest first.
pub(crate) async fn secret_values_of(conn: &mut AnyConnection, db: &Db, sets: &[&EntrySet]) -> Result<Vec<String>> {
    let mut values = Vec::new();
    for set in sets {
        values.extend(secret_values(conn, db, set).await?);
    }
    values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    values.dedup();
    Ok(values)
}

/// `run` with every secret fragment of `secrets` (longest first) replaced by [`MASK`],
/// its output cut to what is stored. Output the node cut short may end inside a secret:
/// a tail that begins a secret is masked too.
pub fn mask(mut run: HookRun, secrets: &[String]) -> HookRun {
    let mut output = std::mem::take(&mut run.output);
    // What an agent sends is bounded by the answer's size, not by the hook's: cut it
    // before the masking's work, which grows with its length.
    let longest = secrets.first().map_or(0, String::len);
    if output.len() > 2 * MAX_STORED + longest {
        let mut cut = 2 * MAX_STORED + longest;
        while !output.is_char_boundary(cut) {
            cut -= 1;
        }
        output.truncate(cut);
        run.truncated = true;
    }
    let mut arguments = std::mem::take(&mut run.command);
    for secret in secrets {
        if output.contains(secret.as_str()) {
            output = output.replace(secret.as_str(), MASK);
        }
        for argument in &mut arguments {
            if argument.contains(secret.as_str()) {
                *argument = argument.replace(secret.as_str(), MASK);
            }
        }
    }
    // A run killed or cut may stop inside a secret, at the end of any of its lines.
    output = output
        .split_inclusive('\n')
        .map(|line| {
            let (text, end) = match line.strip_suffix('\n') {
                Some(text) => (text, "\n"),
                None => (line, ""),
            };
            let mut text = text.trim_end_matches('\u{fffd}').to_string();
            mask_cut_tail(&mut text, secrets);
            text + end
        })
        .collect();
    if let Some((cut, _)) = output.char_indices().nth(MAX_STORED) {
        output.truncate(cut);
        run.truncated = true;
    }
    run.output = output
        .chars()
        .map(|c| if c.is_control() && c != '\n' && c != '\t' { ' ' } else { c })
        .collect();
    run.command = arguments;
    run
}

/// Masks the end of `line` when it is the beginning of a secret (at least [`MIN_MASKED`]
/// characters of it, the longest such beginning of any secret): what was cut off may have
/// been the rest.
fn mask_cut_tail(line: &mut String, secrets: &[String]) {
    let mut longest = 0;
    for secret in secrets {
        let most = secret.len().min(line.len());
        for take in (MIN_MASKED.max(longest + 1)..=most).rev() {
            let start = line.len() - take;
            if line.is_char_boundary(start) && secret.as_bytes().starts_with(&line.as_bytes()[start..]) {
                longest = take;
                break;
            }
        }
    }
    if longest > 0 {
        line.truncate(line.len() - longest);
        line.push_str(MASK);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(output: &str) -> HookRun {
        HookRun {
            hook: "validate".into(),
            command: vec!["nginx".into(), "-t".into()],
            ok: false,
            exit_code: Some(1),
            timed_out: false,
            output: output.into(),
            truncated: false,
            duration_ms: 3,
        }
    }

    #[test]
    fn every_line_and_word_of_a_secret_is_masked() {
        let mut secrets = Vec::new();
        fragments("password = hunter2-long\napi_key: \"sk-live-123456\"\n", &mut secrets);
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let masked = mask(
            run("line 1: unknown value hunter2-long near \"sk-live-123456\"; line 2 sk-live-123456\x1b[0m"),
            &secrets,
        );
        assert!(!masked.output.contains("hunter2"), "{}", masked.output);
        assert!(!masked.output.contains("sk-live"), "{}", masked.output);
        assert!(masked.output.contains("unknown value [secret]"));
        assert!(!masked.output.contains('\x1b'));
    }

    #[test]
    fn a_secret_cut_short_by_the_bound_and_an_escaped_one_are_masked() {
        let secrets = vec!["sk-live-123456".to_string()];
        // Killed mid-line: the notice follows the line that stopped inside the secret.
        let masked = mask(run("config error near sk-live-12\n(killed after 30s)"), &secrets);
        assert!(masked.output.starts_with("config error near [secret]\n"), "{}", masked.output);
        assert_eq!(decoded(r#"p\u00e4ss\"word"#).as_deref(), Some("päss\"word"));
        let mut values = Vec::new();
        fragments(&decoded(r#"p\u00e4ss\"word"#).unwrap(), &mut values);
        assert!(values.iter().any(|v| v == "päss\"word"), "{values:?}");
    }
}
