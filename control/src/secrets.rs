//! Encryption at rest of what must stay secret in the database: the content of secret
//! entries, agent tokens and webhook signing secrets.
//!
//! The key file (`secret.key` in the data directory, mode 0600, made at first start; or
//! the file `ETC_SHADOW_SECRET_KEY_FILE` names) holds three lines; the same text may be
//! given instead in the environment variable `ETC_SHADOW_SECRET_KEY`, on one line
//! (`encryption <hex> fingerprint <hex>`; `etc-shadow secrets generate` prints one), for
//! secret stores that hand keys to processes that way:
//!
//! ```text
//! encryption <64 hex>    the key new values are sealed with (XChaCha20-Poly1305)
//! fingerprint <64 hex>   keys the fingerprints that stand in for secret values
//! previous <64 hex>      only during a rotation: the key being replaced
//! ```
//!
//! A sealed value is `key id (4) | nonce (24) | ciphertext+tag`, with the row it belongs
//! to as associated data, so a sealed value copied onto another row does not open. The
//! server refuses to start with a key file others may read, an empty or malformed one,
//! or a well-known key (all one byte, or the example in the documentation).

use crate::{Error, Result};
use chacha20poly1305::{
    XChaCha20Poly1305, XNonce,
    aead::{Aead, KeyInit, Payload},
};
use std::{
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

/// Name of the key file inside the data directory.
pub const KEY_FILE: &str = "secret.key";
/// Environment variable naming another key file.
pub const KEY_FILE_ENV: &str = "ETC_SHADOW_SECRET_KEY_FILE";
/// Environment variable holding the keys themselves (then no key file is read or made).
pub const KEY_ENV: &str = "ETC_SHADOW_SECRET_KEY";
/// Prefix of a sealed value stored as text.
const TEXT_PREFIX: &str = "esv1:";
/// The key shown in the documentation: never accepted.
pub const EXAMPLE_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

struct Key {
    id: [u8; 4],
    cipher: XChaCha20Poly1305,
    bytes: [u8; 32],
}

impl Key {
    fn new(bytes: [u8; 32]) -> Key {
        let digest = blake3::derive_key("etc-shadow 2026-11 key id", &bytes);
        Key {
            id: [digest[0], digest[1], digest[2], digest[3]],
            cipher: XChaCha20Poly1305::new((&bytes).into()),
            bytes,
        }
    }
}

/// Where the keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    File(PathBuf),
    Env,
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::File(path) => write!(f, "secret key file {}", path.display()),
            KeySource::Env => write!(f, "environment variable {KEY_ENV}"),
        }
    }
}

pub struct Keyring {
    source: KeySource,
    current: Key,
    previous: Option<Key>,
    fingerprint: [u8; 32],
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material.
        f.debug_struct("Keyring").field("source", &self.source).finish_non_exhaustive()
    }
}

fn parse_key(name: &str, hex_key: &str, source: &KeySource) -> Result<[u8; 32]> {
    let bad = |why: &str| Error::Internal(format!("{source}: the {name} key {why}"));
    let bytes: [u8; 32] = hex::decode(hex_key.trim())
        .map_err(|_| bad("is not hex"))?
        .try_into()
        .map_err(|_| bad("must be 32 bytes (64 hex digits)"))?;
    if bytes.iter().all(|b| *b == bytes[0]) || hex_key.trim().eq_ignore_ascii_case(EXAMPLE_KEY) {
        return Err(bad("is a well-known key; generate a random one"));
    }
    Ok(bytes)
}

fn random_key() -> [u8; 32] {
    rand::random()
}

impl Keyring {
    /// Where the keys are: `ETC_SHADOW_SECRET_KEY` when it is set (even empty, which is
    /// refused rather than replaced by a new key file), else the file
    /// `ETC_SHADOW_SECRET_KEY_FILE` names, else `secret.key` in the data directory.
    pub fn source_for(data_dir: &Path) -> KeySource {
        if std::env::var_os(KEY_ENV).is_some() {
            return KeySource::Env;
        }
        KeySource::File(
            std::env::var_os(KEY_FILE_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| data_dir.join(KEY_FILE)),
        )
    }

    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// Loads the keys, creating the key file (mode 0600) if there is none yet.
    pub fn load_or_create(data_dir: &Path) -> Result<Keyring> {
        let path = match Self::source_for(data_dir) {
            KeySource::Env => return Self::from_env(),
            KeySource::File(path) => path,
        };
        if !path.exists() {
            let ring = Keyring {
                source: KeySource::File(path.clone()),
                current: Key::new(random_key()),
                previous: None,
                fingerprint: random_key(),
            };
            ring.write(true)?;
            tracing::info!(path = %path.display(), "created the secret key file; back it up apart from the database");
        }
        Self::load(&path)
    }

    fn from_env() -> Result<Keyring> {
        let text = std::env::var_os(KEY_ENV)
            .unwrap_or_default()
            .into_string()
            .map_err(|_| Error::Internal(format!("{}: not text", KeySource::Env)))?;
        Self::parse(&text, KeySource::Env)
    }

    /// The same keys read again from where they came from.
    pub fn reload(&self) -> Result<Keyring> {
        match &self.source {
            KeySource::File(path) => Self::load(path),
            KeySource::Env => Self::from_env(),
        }
    }

    /// A new set of keys as `ETC_SHADOW_SECRET_KEY` takes them, on one line.
    pub fn generate() -> String {
        format!("encryption {} fingerprint {}", hex::encode(random_key()), hex::encode(random_key()))
    }

    pub fn load(path: &Path) -> Result<Keyring> {
        let meta = std::fs::metadata(path).map_err(|err| Error::Internal(format!("secret key file {}: {err}", path.display())))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::Internal(format!(
                "secret key file {} is readable by others (mode {mode:04o}); run chmod 600 on it",
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|err| Error::Internal(format!("secret key file {}: {err}", path.display())))?;
        Self::parse(&text, KeySource::File(path.to_path_buf()))
    }

    /// Keys from `name hex` pairs, on lines or on one line; `#` starts a comment line.
    fn parse(text: &str, source: KeySource) -> Result<Keyring> {
        let mut encryption = None;
        let mut previous = None;
        let mut fingerprint = None;
        let mut words = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#'))
            .flat_map(str::split_whitespace);
        let mut position = 0;
        while let Some(name) = words.next() {
            position += 1;
            let value = words.next().unwrap_or("");
            let slot = match name {
                "encryption" => &mut encryption,
                "previous" => &mut previous,
                "fingerprint" => &mut fingerprint,
                // A short word is a misspelt name; anything else may be key material in
                // the wrong place, and is never shown.
                other if other.len() <= 16 && other.chars().all(|c| c.is_ascii_alphabetic()) => {
                    return Err(Error::Internal(format!("{source}: unknown key name {other:?}")));
                }
                _ => {
                    return Err(Error::Internal(format!(
                        "{source}: pair {position} does not start with a key name (encryption, previous or fingerprint)"
                    )));
                }
            };
            *slot = Some(parse_key(name, value, &source)?);
        }
        let missing = |name: &str| Error::Internal(format!("{source}: no {name} key (is it empty?)"));
        Ok(Keyring {
            current: Key::new(encryption.ok_or_else(|| missing("encryption"))?),
            previous: previous.map(Key::new),
            fingerprint: fingerprint.ok_or_else(|| missing("fingerprint"))?,
            source,
        })
    }

    /// Writes the key file atomically with mode 0600.
    fn write(&self, create_new: bool) -> Result<()> {
        let KeySource::File(path) = &self.source else {
            return Err(Error::Internal(format!("{} cannot be written", self.source)));
        };
        let mut text = String::from("# etc-shadow secret keys: keep this file private (0600) and backed up apart from the database.\n");
        text.push_str(&format!("encryption {}\n", hex::encode(self.current.bytes)));
        if let Some(previous) = &self.previous {
            text.push_str(&format!("previous {}\n", hex::encode(previous.bytes)));
        }
        text.push_str(&format!("fingerprint {}\n", hex::encode(self.fingerprint)));
        let io = |err: std::io::Error| Error::Internal(format!("cannot write {}: {err}", path.display()));
        if let Some(parent) = path.parent() {
            crate::db::create_private_dir(parent)?;
        }
        let temp = path.with_extension("key.tmp");
        let _ = std::fs::remove_file(&temp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        if create_new && path.exists() {
            let _ = std::fs::remove_file(&temp);
            return Err(Error::Internal(format!("{} appeared meanwhile", path.display())));
        }
        std::fs::rename(&temp, path).map_err(io)?;
        if let Some(parent) = path.parent()
            && let Ok(dir) = std::fs::File::open(parent)
        {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    /// Seals `plaintext` for the row named by `context`.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Vec<u8> {
        let nonce: [u8; 24] = rand::random();
        let sealed = self
            .current
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: context.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 encryption does not fail for in-memory input");
        let mut out = Vec::with_capacity(4 + 24 + sealed.len());
        out.extend_from_slice(&self.current.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens a value sealed for `context` by this key or the previous one.
    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>> {
        let fail = || Error::Internal(format!("a sealed value ({context}) does not open with the keys in the key file"));
        if sealed.len() < 4 + 24 + 16 {
            return Err(fail());
        }
        let key = [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|k| k.id == sealed[..4])
            .ok_or_else(fail)?;
        key.cipher
            .decrypt(
                XNonce::from_slice(&sealed[4..28]),
                Payload {
                    msg: &sealed[28..],
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| fail())
    }

    /// Seals text into text (`esv1:` + hex).
    pub fn seal_text(&self, context: &str, plaintext: &str) -> String {
        format!("{TEXT_PREFIX}{}", hex::encode(self.seal(context, plaintext.as_bytes())))
    }

    /// Opens text sealed by [`Self::seal_text`]; a value stored before sealing existed is
    /// returned as it is (and sealed at the next start).
    pub fn open_text(&self, context: &str, stored: &str) -> Result<String> {
        match stored.strip_prefix(TEXT_PREFIX) {
            Some(sealed) => {
                let bytes = hex::decode(sealed).map_err(|_| Error::Internal(format!("a sealed value ({context}) is damaged")))?;
                String::from_utf8(self.open(context, &bytes)?)
                    .map_err(|_| Error::Internal(format!("a sealed value ({context}) is not text")))
            }
            None => Ok(stored.to_string()),
        }
    }

    pub fn is_sealed_text(stored: &str) -> bool {
        stored.starts_with(TEXT_PREFIX)
    }

    /// A keyed fingerprint of a secret value: equal values have equal fingerprints, and
    /// without the key file nobody can test a guess against one.
    pub fn fingerprint(&self, value: &[u8]) -> String {
        blake3::keyed_hash(&self.fingerprint, value).to_hex().to_string()
    }

    /// The keyed fingerprint of a secret value inside an entry, shown in its placeholder
    /// (domain-separated from the fingerprints that name sealed blobs).
    /// The key of the audit chain (see [`domain::audit`]): derived from the fingerprint key,
    /// which stays the same across rotations, so the chain verifies before and after one.
    pub fn audit_key(&self) -> domain::audit::ChainKey {
        domain::audit::ChainKey::derive(&self.fingerprint)
    }

    /// The key sealed entries are hashed under (see [`domain::hash::sealed_entry_hash`]),
    /// sent to the shadows in each prepare: derived from the fingerprint key, so it stays
    /// the same across rotations (rotating must not change a revision's root).
    pub fn content_key(&self) -> domain::hash::ContentKey {
        domain::hash::ContentKey::derive(&self.fingerprint)
    }

    pub fn value_fingerprint(&self, value: &str) -> String {
        let mut hasher = blake3::Hasher::new_keyed(&self.fingerprint);
        hasher.update(b"etc-shadow secret value\0");
        hasher.update(value.as_bytes());
        hasher.finalize().to_hex().to_string()
    }

    /// Whether values sealed with the previous key may remain (a rotation not finished).
    pub fn rotating(&self) -> bool {
        self.previous.is_some()
    }

    /// Step one of a rotation: a new encryption key, the current one kept as `previous`
    /// (written before anything is re-sealed, so a crash loses nothing).
    pub fn begin_rotation(&mut self) -> Result<()> {
        if self.previous.is_some() {
            return Err(Error::conflict(
                "rotation_pending",
                "a rotation is already under way; run etc-shadow secrets rotate again to finish it",
            ));
        }
        if self.source == KeySource::Env {
            return Err(Error::conflict(
                "rotation_by_environment",
                format!(
                    "the keys come from {KEY_ENV}, which etc-shadow cannot change: set it to a new encryption key, \
                     the current one as previous and the same fingerprint key \
                     (encryption <new> previous <current> fingerprint <same>; etc-shadow secrets generate prints new keys), \
                     run etc-shadow secrets rotate, then drop previous"
                ),
            ));
        }
        let new = Key::new(random_key());
        self.previous = Some(std::mem::replace(&mut self.current, new));
        self.write(false)
    }

    /// Last step of a rotation, once every value is sealed with the current key. Keys from
    /// the environment are not written: the operator drops `previous` there.
    pub fn finish_rotation(&mut self) -> Result<()> {
        self.previous = None;
        match self.source {
            KeySource::File(_) => self.write(false),
            KeySource::Env => Ok(()),
        }
    }
}

/// `text`, the content of an entry of `format`, as people may see it: the values of secret
/// keys (see [`domain::redact`]) as placeholders with a keyed fingerprint.
pub fn redact(db: &crate::Db, format: &str, text: &str) -> String {
    let format = format.parse().unwrap_or(domain::Format::Text);
    domain::redact::redact(format, text, &db.secret_keys, &|value| db.keys.value_fingerprint(value))
}

/// Puts the values behind placeholders in an edited `text` back, from `original`, the
/// stored content of the same entry; a placeholder that is unknown or moved to an
/// ordinary key refuses the edit.
pub fn restore(db: &crate::Db, path: &str, format: domain::Format, edited: &str, original: &str) -> Result<String> {
    domain::redact::restore(format, edited, original, &db.secret_keys, &|value| db.keys.value_fingerprint(value))
        .map_err(|err| Error::BadRequest(format!("{path}: {err}")))
}

/// True when the file name of `path` (its last segment) matches a secret key pattern:
/// `tls.key`, `db-password.txt`.
pub fn named_like_a_secret(db: &crate::Db, path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    db.secret_keys.matches(name)
}

/// True when an entry's content holds secret values, so it is sealed at rest like a
/// secret entry.
pub fn holds_secrets(db: &crate::Db, format: &str, content: &[u8]) -> bool {
    let format = format.parse().unwrap_or(domain::Format::Text);
    std::str::from_utf8(content).is_ok_and(|text| domain::redact::has_secrets(format, text, &db.secret_keys))
}

/// Seals stored contents that hold secret values under the configured key patterns but
/// were stored in clear: written before this version, or before a pattern was added. Runs
/// only when the patterns differ from those of the last check (remembered in `settings`),
/// so an ordinary start reads nothing. One transaction; answers how many were sealed.
pub async fn seal_secret_values(db: &crate::Db) -> Result<u64> {
    let patterns = db.secret_keys.to_string();
    let mut tx = db.begin().await?;
    let checked: Option<(String,)> = sqlx::query_as("SELECT value FROM settings WHERE name = 'secret_keys'")
        .fetch_optional(&mut *tx)
        .await?;
    if checked.is_some_and(|(value,)| value == patterns) {
        return Ok(0);
    }
    let candidates: Vec<(String, Vec<u8>, String)> = sqlx::query_as(
        "SELECT b.hash, b.content, e.format FROM blobs b JOIN (
           SELECT blob, format FROM revision_entries WHERE secret = 0
           UNION SELECT blob, format FROM change_entries WHERE secret = 0 AND blob IS NOT NULL
         ) e ON e.blob = b.hash
         WHERE b.sealed = 0 AND e.format IN ('json', 'yaml', 'toml', 'ini', 'env')",
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut sealed = 0;
    for (hash, content, format) in candidates {
        if !holds_secrets(db, &format, &content) {
            continue;
        }
        let done = sqlx::query("UPDATE blobs SET content = $1, sealed = 1 WHERE hash = $2 AND sealed = 0")
            .bind(db.keys.seal(&format!("blob:{hash}"), &content))
            .bind(&hash)
            .execute(&mut *tx)
            .await?;
        sealed += done.rows_affected();
    }
    sqlx::query("INSERT INTO settings (name, value) VALUES ('secret_keys', $1) ON CONFLICT (name) DO UPDATE SET value = excluded.value")
        .bind(&patterns)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(sealed)
}

/// Seals what is stored in clear (values from before sealing existed) or, with `reseal`,
/// every sealed value again with the current key (a rotation). One transaction; answers
/// how many values were written.
pub async fn seal_stored(db: &crate::Db, reseal: bool) -> Result<u64> {
    let keys = &db.keys;
    let mut written = 0;
    let mut tx = db.begin().await?;
    // Contents of secret entries.
    let blobs: Vec<(String, Vec<u8>, crate::db::Flag)> = sqlx::query_as(
        "SELECT hash, content, sealed FROM blobs WHERE sealed = 1 OR hash IN (
           SELECT blob FROM revision_entries WHERE secret = 1 UNION SELECT blob FROM change_entries WHERE secret = 1 AND blob IS NOT NULL)",
    )
    .fetch_all(&mut *tx)
    .await?;
    for (hash, content, crate::db::Flag(sealed)) in blobs {
        if sealed && !reseal {
            continue;
        }
        let context = format!("blob:{hash}");
        let plain = if sealed { keys.open(&context, &content)? } else { content };
        sqlx::query("UPDATE blobs SET content = $1, sealed = 1 WHERE hash = $2")
            .bind(keys.seal(&context, &plain))
            .bind(&hash)
            .execute(&mut *tx)
            .await?;
        written += 1;
    }
    // Agent tokens and webhook secrets.
    let tokens: Vec<(String, String)> = sqlx::query_as("SELECT name, token FROM shadows WHERE token IS NOT NULL")
        .fetch_all(&mut *tx)
        .await?;
    for (name, stored) in tokens {
        if Keyring::is_sealed_text(&stored) && !reseal {
            continue;
        }
        let context = format!("shadow-token:{name}");
        let plain = keys.open_text(&context, &stored)?;
        sqlx::query("UPDATE shadows SET token = $1 WHERE name = $2")
            .bind(keys.seal_text(&context, &plain))
            .bind(&name)
            .execute(&mut *tx)
            .await?;
        written += 1;
    }
    let hooks: Vec<(i64, String, String)> = sqlx::query_as("SELECT id, url, secret FROM webhooks").fetch_all(&mut *tx).await?;
    for (id, url, stored) in hooks {
        if Keyring::is_sealed_text(&stored) && !reseal {
            continue;
        }
        let context = format!("webhook-secret:{url}");
        let plain = keys.open_text(&context, &stored)?;
        sqlx::query("UPDATE webhooks SET secret = $1 WHERE id = $2")
            .bind(keys.seal_text(&context, &plain))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        written += 1;
    }
    tx.commit().await?;
    Ok(written)
}

/// `etc-shadow secrets rotate`: a new encryption key, every sealed value re-sealed with it,
/// the old key dropped. Refused while a server runs on the directory or serves the
/// database (it would go on with the old key); replicas get the new key file copied
/// before they start again. Safe to run again after a crash: the old key stays in the key file until
/// every value is re-sealed.
pub async fn rotate(data_dir: &Path, database: Option<&str>) -> Result<u64> {
    let _lock = crate::lock::DataDirLock::acquire(data_dir, "rotating the key")?;
    // On a database other servers share (replicas on other machines, each with its copy
    // of the key file), none may run while the values are re-sealed under a key they do
    // not have: the serving lock is taken as a sole server takes it, before anything
    // (even the database's opening) changes anything.
    let serving = crate::Db::lock_serving_before_open(database).await?;
    let result = async {
        let mut keys = Keyring::load_or_create(data_dir)?;
        if !keys.rotating() {
            keys.begin_rotation()?;
        }
        let db = crate::Db::open_with(data_dir, database, keys.reload()?).await?;
        let written = seal_stored(&db, true).await;
        db.close().await;
        let written = written?;
        keys.finish_rotation()?;
        Ok(written)
    }
    .await;
    serving.release().await;
    result
}

/// Refuses a key file that does not belong to this database: one sealed value of each
/// kind must open (a restore with the wrong key file would otherwise fail later, deep
/// inside a rollout).
pub async fn check_keys(db: &crate::Db) -> Result<()> {
    let keys = &db.keys;
    let mismatch = |what: &str| {
        Error::Internal(format!(
            "the {} does not open this database's sealed {what}: restore the keys that belong to it",
            keys.source
        ))
    };
    let blob: Option<(String, Vec<u8>)> = sqlx::query_as("SELECT hash, content FROM blobs WHERE sealed = 1 LIMIT 1")
        .fetch_optional(&db.read)
        .await?;
    if let Some((hash, content)) = blob {
        keys.open(&format!("blob:{hash}"), &content)
            .map_err(|_| mismatch("secret entries"))?;
    }
    let token: Option<(String, String)> = sqlx::query_as("SELECT name, token FROM shadows WHERE token LIKE 'esv1:%' LIMIT 1")
        .fetch_optional(&db.read)
        .await?;
    if let Some((name, token)) = token {
        keys.open_text(&format!("shadow-token:{name}"), &token)
            .map_err(|_| mismatch("agent tokens"))?;
    }
    let hook: Option<(String, String)> = sqlx::query_as("SELECT url, secret FROM webhooks WHERE secret LIKE 'esv1:%' LIMIT 1")
        .fetch_optional(&db.read)
        .await?;
    if let Some((url, secret)) = hook {
        keys.open_text(&format!("webhook-secret:{url}"), &secret)
            .map_err(|_| mismatch("webhook secrets"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(dir: &Path) -> Keyring {
        Keyring::load_or_create(dir).unwrap()
    }

    #[test]
    fn sealed_values_open_only_for_their_row_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ring(dir.path());
        let mode = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let sealed = keys.seal("blob:a", b"hunter2");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(keys.open("blob:a", &sealed).unwrap(), b"hunter2");
        assert!(keys.open("blob:b", &sealed).is_err(), "bound to its row");
        let other = tempfile::tempdir().unwrap();
        assert!(ring(other.path()).open("blob:a", &sealed).is_err(), "another key file");
        let text = keys.seal_text("token:edge", "s3cret");
        assert_eq!(keys.open_text("token:edge", &text).unwrap(), "s3cret");
        assert_eq!(keys.open_text("token:edge", "legacy").unwrap(), "legacy");
        assert_eq!(keys.fingerprint(b"x"), ring(dir.path()).fingerprint(b"x"), "stable across loads");
    }

    #[test]
    fn weak_or_exposed_key_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let write = |text: &str, mode: u32| {
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let good = format!("encryption {}\nfingerprint {}\n", "ab".repeat(31) + "cd", "12".repeat(31) + "34");
        write(&good, 0o600);
        assert!(Keyring::load(&path).is_ok());
        write(&good, 0o644);
        assert!(Keyring::load(&path).unwrap_err().to_string().contains("readable by others"));
        for bad in ["", "encryption 00\nfingerprint 00\n"] {
            write(bad, 0o600);
            assert!(Keyring::load(&path).is_err(), "{bad:?}");
        }
        write(
            &format!("encryption {}\nfingerprint {}\n", "00".repeat(32), "12".repeat(31) + "34"),
            0o600,
        );
        assert!(Keyring::load(&path).unwrap_err().to_string().contains("well-known"));
        write(
            &format!("encryption {EXAMPLE_KEY}\nfingerprint {}\n", "12".repeat(31) + "34"),
            0o600,
        );
        assert!(Keyring::load(&path).unwrap_err().to_string().contains("well-known"));
    }

    #[test]
    fn a_rotation_keeps_old_values_readable_until_it_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let mut keys = ring(dir.path());
        let old = keys.seal("c", b"v");
        keys.begin_rotation().unwrap();
        let reloaded = ring(dir.path());
        assert!(reloaded.rotating());
        assert_eq!(reloaded.open("c", &old).unwrap(), b"v", "a crash mid-rotation loses nothing");
        let new = reloaded.seal("c", b"v");
        keys.finish_rotation().unwrap();
        let finished = ring(dir.path());
        assert_eq!(finished.open("c", &new).unwrap(), b"v");
        assert!(finished.open("c", &old).is_err(), "the old key is gone");
    }

    #[test]
    fn keys_from_the_environment_are_read_on_one_line_and_checked_alike() {
        let generated = Keyring::generate();
        assert!(!generated.contains('\n'), "one line");
        let keys = Keyring::parse(&generated, KeySource::Env).unwrap();
        let again = Keyring::parse(&generated, KeySource::Env).unwrap();
        let sealed = keys.seal("c", b"v");
        assert_eq!(again.open("c", &sealed).unwrap(), b"v");
        assert_eq!(keys.fingerprint(b"x"), again.fingerprint(b"x"));
        assert_ne!(Keyring::generate(), generated, "random");
        for bad in ["", "   ", &format!("encryption {EXAMPLE_KEY} fingerprint {}", "12".repeat(32))] {
            let err = Keyring::parse(bad, KeySource::Env).unwrap_err().to_string();
            assert!(err.contains("environment variable ETC_SHADOW_SECRET_KEY"), "{err}");
        }
        // A value in the wrong place is named by its position, never shown.
        let err = Keyring::parse(&format!("{} {generated}", "ab".repeat(32)), KeySource::Env)
            .unwrap_err()
            .to_string();
        assert!(!err.contains(&"ab".repeat(32)), "{err}");
        // Nothing to write: a rotation is the operator's, in the environment.
        let mut keys = keys;
        assert!(keys.begin_rotation().unwrap_err().to_string().contains("previous <current>"));
    }
}
