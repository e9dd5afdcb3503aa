//! The audit chain: each row's hash covers its own fields and the previous row's hash, so
//! an edited, deleted or reordered row breaks the chain at that row.
//!
//! The hash is keyed ([`keyed_audit_hash`]) with a key kept outside the database (derived
//! from the control plane's key file), so someone who can write the database but not read
//! the key cannot recompute a chain that verifies. Rows written before the chain was keyed
//! (an earlier version's) verify with the plain [`audit_hash`], and only before the first
//! keyed row. A cut tail leaves a chain that verifies: the heads kept by the shadows
//! ([`Anchor`]) detect it.

use crate::hash::{Encoder, Hash};
use serde::{Deserialize, Serialize};

pub const AUDIT_CONTEXT: &str = "etc-shadow 2026-11 audit v1";

/// The context the chain key is derived under from the control plane's secret.
pub const AUDIT_KEY_CONTEXT: &str = "etc-shadow 2026-12 audit chain key v1";

/// The key of the audit chain. Never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct ChainKey([u8; 32]);

impl ChainKey {
    /// The chain key derived from a 32-byte secret kept outside the database.
    pub fn derive(secret: &[u8; 32]) -> ChainKey {
        ChainKey(blake3::derive_key(AUDIT_KEY_CONTEXT, secret))
    }
}

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainKey(..)")
    }
}

/// A head of the chain kept outside the database: by every shadow, sent with each
/// rollout. The row `seq` must exist and have this hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    pub seq: i64,
    pub hash: String,
}

/// One audit row as stored. `at` is an RFC 3339 UTC timestamp; `details` is JSON text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub details: String,
    pub prev_hash: Hash,
    pub hash: Hash,
}

impl AuditRecord {
    /// The fields its hash covers.
    pub fn fields(&self) -> AuditFields<'_> {
        AuditFields {
            seq: self.seq,
            at: &self.at,
            actor: &self.actor,
            action: &self.action,
            target: &self.target,
            details: &self.details,
        }
    }
}

/// The fields of a row that its hash covers.
pub struct AuditFields<'a> {
    pub seq: i64,
    pub at: &'a str,
    pub actor: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    pub details: &'a str,
}

/// The plain hash of a row (rows written before the chain was keyed).
pub fn audit_hash(fields: &AuditFields<'_>, prev_hash: &Hash) -> Hash {
    encode(Encoder::new(AUDIT_CONTEXT), fields, prev_hash)
}

/// The keyed hash of a row: the same fields, under the chain key.
pub fn keyed_audit_hash(key: &ChainKey, fields: &AuditFields<'_>, prev_hash: &Hash) -> Hash {
    encode(Encoder::keyed(&key.0), fields, prev_hash)
}

fn encode(mut encoder: Encoder, fields: &AuditFields<'_>, prev_hash: &Hash) -> Hash {
    encoder
        .u64(fields.seq as u64)
        .bytes(fields.at.as_bytes())
        .bytes(fields.actor.as_bytes())
        .bytes(fields.action.as_bytes())
        .bytes(fields.target.as_bytes())
        .bytes(fields.details.as_bytes())
        .hash(prev_hash)
        .finish()
}

/// Where and how the chain broke.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChainBreak {
    #[error("row {seq}: expected sequence number {expected} (a row was deleted or reordered)")]
    Sequence { seq: i64, expected: i64 },
    #[error("row {seq}: its prev_hash does not match the previous row (a row was deleted or reordered)")]
    Link { seq: i64 },
    #[error("row {seq}: its contents do not match its hash (the row was edited, or the chain recomputed without the key)")]
    Content { seq: i64 },
    #[error("row {seq}: its hash is not keyed although rows before it are (the chain was recomputed without the key)")]
    Unkeyed { seq: i64 },
}

impl ChainBreak {
    pub fn seq(&self) -> i64 {
        match self {
            ChainBreak::Sequence { seq, .. } | ChainBreak::Link { seq } | ChainBreak::Content { seq } | ChainBreak::Unkeyed { seq } => *seq,
        }
    }
}

/// Incremental verifier: feed rows in storage order.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    key: Option<ChainKey>,
    expected_seq: i64,
    head: Hash,
    /// Rows that verified with the plain hash (before the first keyed one).
    legacy: i64,
    keyed: bool,
}

impl Default for ChainVerifier {
    /// A verifier of plain chains only.
    fn default() -> Self {
        ChainVerifier {
            key: None,
            expected_seq: 1,
            head: Hash::ZERO,
            legacy: 0,
            keyed: false,
        }
    }
}

impl ChainVerifier {
    /// A verifier of a keyed chain, with plain rows accepted only before the first keyed.
    pub fn keyed(key: ChainKey) -> Self {
        ChainVerifier {
            key: Some(key),
            ..ChainVerifier::default()
        }
    }

    pub fn push(&mut self, row: &AuditRecord) -> Result<(), ChainBreak> {
        if row.seq != self.expected_seq {
            return Err(ChainBreak::Sequence {
                seq: row.seq,
                expected: self.expected_seq,
            });
        }
        if row.prev_hash != self.head {
            return Err(ChainBreak::Link { seq: row.seq });
        }
        let fields = row.fields();
        let keyed = self
            .key
            .as_ref()
            .is_some_and(|key| keyed_audit_hash(key, &fields, &row.prev_hash) == row.hash);
        if keyed {
            self.keyed = true;
        } else if audit_hash(&fields, &row.prev_hash) == row.hash {
            if self.keyed {
                return Err(ChainBreak::Unkeyed { seq: row.seq });
            }
            self.legacy += 1;
        } else {
            return Err(ChainBreak::Content { seq: row.seq });
        }
        self.expected_seq += 1;
        self.head = row.hash;
        Ok(())
    }

    /// Rows verified so far.
    pub fn count(&self) -> i64 {
        self.expected_seq - 1
    }

    /// Of them, rows with a plain hash (written before the chain was keyed).
    pub fn legacy(&self) -> i64 {
        self.legacy
    }

    /// Hash of the last verified row (zero for an empty log).
    pub fn head(&self) -> Hash {
        self.head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<AuditRecord> {
        let mut prev = Hash::ZERO;
        (1..=n)
            .map(|seq| {
                let at = format!("2026-11-25T10:00:{seq:02}Z");
                let fields = AuditFields {
                    seq,
                    at: &at,
                    actor: "ana",
                    action: "change.create",
                    target: "change/1",
                    details: "{}",
                };
                let hash = audit_hash(&fields, &prev);
                let row = AuditRecord {
                    seq,
                    at: at.clone(),
                    actor: "ana".into(),
                    action: "change.create".into(),
                    target: "change/1".into(),
                    details: "{}".into(),
                    prev_hash: prev,
                    hash,
                };
                prev = hash;
                row
            })
            .collect()
    }

    fn verify(rows: &[AuditRecord]) -> Result<i64, ChainBreak> {
        let mut verifier = ChainVerifier::default();
        for row in rows {
            verifier.push(row)?;
        }
        Ok(verifier.count())
    }

    #[test]
    fn intact_chain_verifies() {
        assert_eq!(verify(&chain(5)), Ok(5));
        assert_eq!(verify(&[]), Ok(0));
    }

    #[test]
    fn edit_is_detected_at_the_row() {
        let mut rows = chain(5);
        rows[2].actor = "mallory".into();
        assert_eq!(verify(&rows), Err(ChainBreak::Content { seq: 3 }));
    }

    #[test]
    fn deletion_is_detected() {
        let mut rows = chain(5);
        rows.remove(1);
        assert_eq!(verify(&rows), Err(ChainBreak::Sequence { seq: 3, expected: 2 }));
    }

    #[test]
    fn renumbered_deletion_is_detected_by_the_link() {
        let mut rows = chain(5);
        rows.remove(1);
        for (i, row) in rows.iter_mut().enumerate() {
            row.seq = i as i64 + 1;
        }
        assert_eq!(verify(&rows), Err(ChainBreak::Link { seq: 2 }));
    }

    /// `chain(n)` with every hash keyed under `key`.
    fn keyed_chain(n: i64, key: &ChainKey, from: i64) -> Vec<AuditRecord> {
        let mut rows = chain(n);
        let mut prev = Hash::ZERO;
        for row in rows.iter_mut() {
            row.prev_hash = prev;
            row.hash = if row.seq >= from {
                keyed_audit_hash(key, &row.fields(), &prev)
            } else {
                audit_hash(&row.fields(), &prev)
            };
            prev = row.hash;
        }
        rows
    }

    fn verify_keyed(rows: &[AuditRecord], key: &ChainKey) -> Result<(i64, i64), ChainBreak> {
        let mut verifier = ChainVerifier::keyed(key.clone());
        for row in rows {
            verifier.push(row)?;
        }
        Ok((verifier.count(), verifier.legacy()))
    }

    #[test]
    fn a_keyed_chain_cannot_be_recomputed_without_the_key() {
        let key = ChainKey::derive(&[7; 32]);
        let rows = keyed_chain(5, &key, 1);
        assert_eq!(verify_keyed(&rows, &key), Ok((5, 0)));
        // Someone with the database but not the key edits row 3 and recomputes the chain
        // from there with the plain hash: row 3 is refused as unkeyed after keyed rows.
        let mut forged = rows.clone();
        forged[2].actor = "mallory".into();
        let mut prev = forged[1].hash;
        for row in forged[2..].iter_mut() {
            row.prev_hash = prev;
            row.hash = audit_hash(&row.fields(), &prev);
            prev = row.hash;
        }
        assert_eq!(verify_keyed(&forged, &key), Err(ChainBreak::Unkeyed { seq: 3 }));
        // Under another key nothing verifies as keyed; recomputed whole with the plain hash
        // it would pass as all legacy, which only the shadows' anchors can tell.
        let other = ChainKey::derive(&[8; 32]);
        assert_eq!(verify_keyed(&keyed_chain(5, &other, 1), &key), Err(ChainBreak::Content { seq: 1 }));
        // Plain rows of an earlier version are accepted before the first keyed row.
        assert_eq!(verify_keyed(&keyed_chain(5, &key, 4), &key), Ok((5, 3)));
        assert!(!format!("{key:?}").contains('7'));
    }

    #[test]
    fn reorder_is_detected() {
        let mut rows = chain(5);
        rows.swap(1, 2);
        let (a, b) = (rows[1].seq, rows[2].seq);
        rows[1].seq = b;
        rows[2].seq = a;
        assert_eq!(verify(&rows), Err(ChainBreak::Link { seq: 2 }));
    }
}
