//! The per-key diff and the line diff of two versions: the first byte picks the format
//! (json, yaml or toml), a 0xFF byte splits old from new.
#![no_main]

use domain::Format;
use libfuzzer_sys::fuzz_target;
use std::time::Duration;

fuzz_target!(|input: &[u8]| {
    let Some((&pick, rest)) = input.split_first() else { return };
    let format = [Format::Json, Format::Yaml, Format::Toml][usize::from(pick % 3)];
    let (old, new) = match rest.iter().position(|&b| b == 0xFF) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &b""[..]),
    };
    let (old, new) = (String::from_utf8_lossy(old), String::from_utf8_lossy(new));
    if let Some(changes) = domain::keys::key_changes(format, &old, &new) {
        for change in &changes {
            assert!(change.old.is_some() || change.new.is_some(), "{change:?}");
            assert!(change.old != change.new, "an unchanged key is not a change: {change:?}");
        }
        if old == new {
            assert!(changes.is_empty(), "a document differs from itself: {changes:?}");
        }
    }
    let diff = domain::diff::diff_text(&old, &new, Some(Duration::from_millis(200)));
    if old == new {
        assert!(diff.hunks.is_empty(), "a text differs from itself");
    }
});
