//! Canonical hashing: entry hashes, Merkle root hashes and change content hashes.
//!
//! The encoding is specified in `docs/hashing.md` together with test vectors; the tests
//! at the bottom of this file check the vectors, so the document and the code cannot part.
//! Every hash is BLAKE3 in key-derivation mode with its own context string, so a hash of
//! one kind can never be mistaken for a hash of another kind.

use crate::{EntryPath, Policy};
use serde::{Deserialize, Serialize};
use std::fmt;

pub const ENTRY_CONTEXT: &str = "etc-shadow 2026-11 entry v1";
pub const NODE_CONTEXT: &str = "etc-shadow 2026-11 merkle node v1";
pub const ROOT_CONTEXT: &str = "etc-shadow 2026-11 merkle root v1";
pub const CHANGE_CONTEXT: &str = "etc-shadow 2026-11 change v1";
pub const CONTENT_CONTEXT: &str = "etc-shadow 2026-11 content v1";
pub const SEALED_ENTRY_CONTEXT: &str = "etc-shadow 2026-12 sealed entry v1";
pub const CONTENT_KEY_CONTEXT: &str = "etc-shadow 2026-12 sealed content key v1";

/// The key the content of sealed entries (secret entries, and entries holding secret
/// values) is hashed under, so that their entry hashes, and the roots over them, give
/// nobody without it anything to test a guessed value against. The control plane derives
/// it from its key file and sends it to the shadows inside each prepare. Never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct ContentKey([u8; 32]);

impl ContentKey {
    pub fn derive(secret: &[u8; 32]) -> ContentKey {
        ContentKey(blake3::derive_key(CONTENT_KEY_CONTEXT, secret))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(text: &str) -> Result<ContentKey, InvalidHash> {
        Hash::from_hex(text).map(|hash| ContentKey(hash.0))
    }
}

impl fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ContentKey(..)")
    }
}

/// A 32-byte BLAKE3 digest, shown and serialised as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Hash(pub [u8; 32]);

impl Hash {
    pub const ZERO: Hash = Hash([0; 32]);

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(text: &str) -> Result<Self, InvalidHash> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| InvalidHash)?;
        Ok(Hash(bytes))
    }

    /// The first 12 hex digits, for people.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected a hash of 64 hex digits")]
pub struct InvalidHash;

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl TryFrom<String> for Hash {
    type Error = InvalidHash;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Hash::from_hex(&value)
    }
}

impl From<Hash> for String {
    fn from(value: Hash) -> Self {
        value.to_hex()
    }
}

/// Appends length-prefixed fields, so no two different field lists encode alike.
pub(crate) struct Encoder(blake3::Hasher);

impl Encoder {
    pub(crate) fn new(context: &str) -> Self {
        Encoder(blake3::Hasher::new_derive_key(context))
    }
    /// BLAKE3 in keyed mode: only who holds `key` computes the same hash.
    pub(crate) fn keyed(key: &[u8; 32]) -> Self {
        Encoder(blake3::Hasher::new_keyed(key))
    }
    pub(crate) fn bytes(&mut self, field: &[u8]) -> &mut Self {
        self.0.update(&(field.len() as u64).to_le_bytes());
        self.0.update(field);
        self
    }
    pub(crate) fn u32(&mut self, value: u32) -> &mut Self {
        self.0.update(&value.to_le_bytes());
        self
    }
    pub(crate) fn u64(&mut self, value: u64) -> &mut Self {
        self.0.update(&value.to_le_bytes());
        self
    }
    pub(crate) fn u8(&mut self, value: u8) -> &mut Self {
        self.0.update(&[value]);
        self
    }
    pub(crate) fn hash(&mut self, value: &Hash) -> &mut Self {
        self.0.update(&value.0);
        self
    }
    pub(crate) fn finish(&self) -> Hash {
        Hash(*self.0.finalize().as_bytes())
    }
}

/// The content address of a blob of bytes (the key of the `blobs` table).
pub fn content_hash(content: &[u8]) -> Hash {
    Hash(blake3::derive_key(CONTENT_CONTEXT, content))
}

/// The hash of a sealed entry: path and policy as [`entry_hash`], and the content's keyed
/// BLAKE3 under `key` in place of the content.
pub fn sealed_entry_hash(key: &ContentKey, path: &EntryPath, policy: &Policy, content: &[u8]) -> Hash {
    let digest = Hash(*blake3::keyed_hash(&key.0, content).as_bytes());
    Encoder::new(SEALED_ENTRY_CONTEXT)
        .bytes(path.as_str().as_bytes())
        .u32(policy.mode)
        .bytes(policy.owner.as_bytes())
        .bytes(policy.group.as_bytes())
        .u8(u8::from(policy.secret))
        .hash(&digest)
        .finish()
}

/// The hash of one entry: path, policy and content.
pub fn entry_hash(path: &EntryPath, policy: &Policy, content: &[u8]) -> Hash {
    Encoder::new(ENTRY_CONTEXT)
        .bytes(path.as_str().as_bytes())
        .u32(policy.mode)
        .bytes(policy.owner.as_bytes())
        .bytes(policy.group.as_bytes())
        .u8(u8::from(policy.secret))
        .bytes(content)
        .finish()
}

/// The Merkle root over entry hashes. `entries` may come in any order; they are sorted by
/// path (bytewise) here. Paths must be unique.
pub fn root_hash<'a>(entries: impl IntoIterator<Item = (&'a EntryPath, Hash)>) -> Hash {
    let mut leaves: Vec<(&EntryPath, Hash)> = entries.into_iter().collect();
    leaves.sort_by(|a, b| a.0.as_str().as_bytes().cmp(b.0.as_str().as_bytes()));
    let count = leaves.len() as u64;
    let mut level: Vec<Hash> = leaves.into_iter().map(|(_, hash)| hash).collect();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [left, right] => Encoder::new(NODE_CONTEXT).hash(left).hash(right).finish(),
                [odd] => *odd,
                _ => unreachable!("chunks(2) yields one or two items"),
            })
            .collect();
    }
    let top = level.first().copied().unwrap_or(Hash::ZERO);
    Encoder::new(ROOT_CONTEXT).u64(count).hash(&top).finish()
}

/// One operation of a change, as hashed into the change's content hash.
pub enum ChangeOp<'a> {
    Put { path: &'a EntryPath, format: &'a str, entry: Hash },
    Delete { path: &'a EntryPath },
}

impl ChangeOp<'_> {
    fn path(&self) -> &EntryPath {
        match self {
            ChangeOp::Put { path, .. } | ChangeOp::Delete { path } => path,
        }
    }
}

/// The content hash of a change: its base revision and every operation, sorted by path.
/// Approvals sign this hash, so any edit (or a rebase) voids them.
pub fn change_hash(base_revision: u64, message: &str, ops: &mut [ChangeOp<'_>]) -> Hash {
    ops.sort_by(|a, b| a.path().as_str().as_bytes().cmp(b.path().as_str().as_bytes()));
    let mut encoder = Encoder::new(CHANGE_CONTEXT);
    encoder.u64(base_revision).bytes(message.as_bytes()).u64(ops.len() as u64);
    for op in ops.iter() {
        match op {
            ChangeOp::Put { path, format, entry } => {
                encoder.bytes(path.as_str().as_bytes()).u8(0).bytes(format.as_bytes()).hash(entry);
            }
            ChangeOp::Delete { path } => {
                encoder.bytes(path.as_str().as_bytes()).u8(1);
            }
        }
    }
    encoder.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str) -> EntryPath {
        EntryPath::parse(text).unwrap()
    }

    // These vectors are published in docs/hashing.md.
    const VECTOR_ENTRY_FEATURES: &str = "1c3645160dfb34df0cc940882b39438ec140c9f9c84fbf20bea841f830396b00";
    const VECTOR_ENTRY_SECRET: &str = "e765bfadd619ea30c869d719a3d9a8b533d133e3f7eb889810b89556b76f3c0c";
    const VECTOR_ROOT_EMPTY: &str = "72b767d6b66dbd112fd3715df34663c323563b7d858cb4cf78103f38b0dfc231";
    const VECTOR_ROOT_THREE: &str = "b893af647e5c2bdefd0dc388daf841fa1985672e5087dce8e1d13135b6728221";

    fn features() -> Hash {
        entry_hash(&path("features.json"), &Policy::default(), b"{\"beta\": true}\n")
    }

    fn secret() -> Hash {
        let policy = Policy {
            mode: 0o600,
            owner: "app".into(),
            group: "app".into(),
            secret: true,
        };
        entry_hash(&path("secrets/db.env"), &policy, b"DB_PASSWORD=hunter2\n")
    }

    fn three() -> Hash {
        let (a, b, c) = (path("nginx/site.conf"), path("app.toml"), path("features.json"));
        let site = entry_hash(&a, &Policy::default(), b"server { listen 80; }\n");
        let app = entry_hash(&b, &Policy::default(), b"[server]\nport = 8080\n");
        root_hash([(&a, site), (&b, app), (&c, features())])
    }

    #[test]
    fn documented_vectors() {
        assert_eq!(features().to_hex(), VECTOR_ENTRY_FEATURES);
        assert_eq!(secret().to_hex(), VECTOR_ENTRY_SECRET);
        assert_eq!(root_hash([]).to_hex(), VECTOR_ROOT_EMPTY);
        assert_eq!(three().to_hex(), VECTOR_ROOT_THREE);
    }

    #[test]
    fn a_sealed_entrys_hash_cannot_be_tested_against_a_guess_without_the_key() {
        let key = ContentKey::derive(&[9; 32]);
        let policy = Policy {
            mode: 0o600,
            secret: true,
            ..Policy::default()
        };
        let p = path("secrets/db.env");
        let kept = sealed_entry_hash(&key, &p, &policy, b"DB_PASSWORD=hunter2\n");
        // The right guess, hashed the plain way or under another key, does not match.
        assert_ne!(kept, entry_hash(&p, &policy, b"DB_PASSWORD=hunter2\n"));
        assert_ne!(
            kept,
            sealed_entry_hash(&ContentKey::derive(&[8; 32]), &p, &policy, b"DB_PASSWORD=hunter2\n")
        );
        // Under the key, equal content gives the equal hash, and other content another.
        assert_eq!(kept, sealed_entry_hash(&key, &p, &policy, b"DB_PASSWORD=hunter2\n"));
        assert_ne!(kept, sealed_entry_hash(&key, &p, &policy, b"DB_PASSWORD=hunter3\n"));
        assert_eq!(ContentKey::from_hex(&key.to_hex()).unwrap(), key);
        assert_eq!(format!("{key:?}"), "ContentKey(..)");
    }

    #[test]
    fn policy_is_part_of_the_entry_hash() {
        let p = path("a.conf");
        let base = entry_hash(&p, &Policy::default(), b"x");
        let chmod = Policy {
            mode: 0o600,
            ..Policy::default()
        };
        let chown = Policy {
            owner: "root".into(),
            ..Policy::default()
        };
        let secret = Policy {
            secret: true,
            ..Policy::default()
        };
        assert_ne!(base, entry_hash(&p, &chmod, b"x"));
        assert_ne!(base, entry_hash(&p, &chown, b"x"));
        assert_ne!(base, entry_hash(&p, &secret, b"x"));
        assert_ne!(base, entry_hash(&path("b.conf"), &Policy::default(), b"x"));
    }

    #[test]
    fn fields_cannot_slide_into_each_other() {
        let a = Policy {
            owner: "ab".into(),
            group: "c".into(),
            ..Policy::default()
        };
        let b = Policy {
            owner: "a".into(),
            group: "bc".into(),
            ..Policy::default()
        };
        assert_ne!(entry_hash(&path("x"), &a, b""), entry_hash(&path("x"), &b, b""));
    }

    #[test]
    fn root_ignores_input_order_but_not_content() {
        let (a, b) = (path("a"), path("b"));
        let (ha, hb) = (entry_hash(&a, &Policy::default(), b"1"), entry_hash(&b, &Policy::default(), b"2"));
        assert_eq!(root_hash([(&a, ha), (&b, hb)]), root_hash([(&b, hb), (&a, ha)]));
        assert_ne!(root_hash([(&a, ha), (&b, hb)]), root_hash([(&a, hb), (&b, ha)]));
        assert_ne!(root_hash([(&a, ha)]), ha, "a root is never an entry hash");
        assert_ne!(root_hash([(&a, ha)]), root_hash([]));
    }

    #[test]
    fn change_hash_covers_base_message_and_ops() {
        let p = path("a.json");
        let e = entry_hash(&p, &Policy::default(), b"{}");
        let h = |base, msg: &str, format| {
            change_hash(
                base,
                msg,
                &mut [ChangeOp::Put {
                    path: &p,
                    format,
                    entry: e,
                }],
            )
        };
        assert_ne!(h(1, "m", "json"), h(2, "m", "json"));
        assert_ne!(h(1, "m", "json"), h(1, "n", "json"));
        assert_ne!(h(1, "m", "json"), h(1, "m", "text"));
        assert_ne!(h(1, "m", "json"), change_hash(1, "m", &mut [ChangeOp::Delete { path: &p }]));
    }

    #[test]
    fn hex_round_trip() {
        let h = features();
        assert_eq!(Hash::from_hex(&h.to_hex()), Ok(h));
        assert!(Hash::from_hex("zz").is_err());
    }
}
