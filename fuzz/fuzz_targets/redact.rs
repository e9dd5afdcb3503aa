//! Redaction of secret values: the first byte picks the format (json, yaml, toml, ini or
//! env), the rest is the text. Whatever the text, redacting it does not panic, every value
//! below a secret key is hidden (the redacted text holds no secret value the format's own
//! parser would read), and restoring the untouched redacted text gives back the stored one.
#![no_main]

use domain::Format;
use domain::redact::{SecretKeys, Secrets};
use libfuzzer_sys::fuzz_target;

fn fingerprint(value: &str) -> String {
    blake3::keyed_hash(&[7; 32], value.as_bytes()).to_hex().to_string()
}

fuzz_target!(|input: &[u8]| {
    let Some((&pick, rest)) = input.split_first() else { return };
    let format = [Format::Json, Format::Yaml, Format::Toml, Format::Ini, Format::Env][usize::from(pick % 5)];
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let keys = SecretKeys::default();
    let redacted = domain::redact::redact(format, text, &keys, &fingerprint);
    let cut_out = matches!(domain::redact::secrets(format, text, &keys), Secrets::Values(_));
    if domain::redact::has_placeholder(text) {
        // A stored text that already looks redacted: only "does not panic" holds.
        return;
    }
    let restored = domain::redact::restore(format, &redacted, text, &keys, &fingerprint);
    assert_eq!(restored.as_deref(), Ok(text), "redacted:\n{redacted}");
    // Values cut out one by one: what is shown holds nothing more to hide, every secret
    // value is a placeholder now.
    if cut_out && let Secrets::Values(spans) = domain::redact::secrets(format, &redacted, &keys) {
        for span in spans {
            assert!(
                domain::redact::has_placeholder(&redacted[span.range.clone()]),
                "a secret value is shown: {:?} in\n{redacted}",
                &redacted[span.range]
            );
        }
    }
});
