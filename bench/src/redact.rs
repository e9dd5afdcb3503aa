//! `--suite redact`: what showing an entry with secret values costs. Each text is redacted
//! the way every page, diff and API answer does it — scan, cut out, read the shown text
//! again with the format's parser, check the round trip — and timed against the same text
//! with no secret key (the scan-free path taken by most entries).

use domain::{
    Format,
    redact::{SecretKeys, redact},
};
use std::time::{Duration, Instant};

/// A text of about `bytes` bytes in `format`, a tenth of its keys secret when `secrets`.
fn text(format: Format, bytes: usize, secrets: bool) -> String {
    let mut out = String::new();
    let mut i = 0;
    if format == Format::Json {
        out.push('{');
    }
    while out.len() < bytes {
        let name = if secrets && i % 10 == 0 {
            format!("db_password_{i}")
        } else {
            format!("setting_{i}")
        };
        let value = format!("value-{i}-abcdefghijklmnop");
        match format {
            Format::Toml => out.push_str(&format!("{name} = \"{value}\"\n")),
            Format::Yaml => out.push_str(&format!("{name}: {value}\n")),
            Format::Json => out.push_str(&format!("{}\n  \"{name}\": \"{value}\"", if i == 0 { "" } else { "," })),
            Format::Env => out.push_str(&format!("{}={value}\n", name.to_uppercase())),
            _ => unreachable!(),
        }
        i += 1;
    }
    if format == Format::Json {
        out.push_str("\n}\n");
    }
    out
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn time(format: Format, text: &str, keys: &SecretKeys) -> Duration {
    let fingerprint = |value: &str| blake3::keyed_hash(&[7; 32], value.as_bytes()).to_hex().to_string();
    let runs = (2_000_000 / text.len()).clamp(5, 200);
    median(
        (0..runs)
            .map(|_| {
                let started = Instant::now();
                std::hint::black_box(redact(format, text, keys, &fingerprint));
                started.elapsed()
            })
            .collect(),
    )
}

pub fn run() {
    println!("Redaction of secret values (median per text):");
    println!("| format | size | with secret keys | without |");
    println!("| --- | ---: | ---: | ---: |");
    let keys = SecretKeys::default();
    for format in [Format::Toml, Format::Yaml, Format::Json, Format::Env] {
        for bytes in [4 << 10, 64 << 10, 1 << 20] {
            let with = text(format, bytes, true);
            let without = text(format, bytes, false);
            assert_ne!(
                redact(format, &with, &keys, &|v| v.to_string()),
                with,
                "{format}: nothing was redacted"
            );
            println!(
                "| {format} | {} KiB | {:.2} ms | {:.3} ms |",
                bytes >> 10,
                time(format, &with, &keys).as_secs_f64() * 1e3,
                time(format, &without, &keys).as_secs_f64() * 1e3
            );
        }
    }
}
