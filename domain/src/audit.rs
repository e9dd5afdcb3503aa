//! The audit chain: each row's hash covers its own fields and the previous row's hash, so
//! an edited, deleted or reordered row breaks the chain at that row.

use crate::hash::{Encoder, Hash};
use serde::{Deserialize, Serialize};

pub const AUDIT_CONTEXT: &str = "etc-shadow 2026-11 audit v1";

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

/// The fields of a row that its hash covers.
pub struct AuditFields<'a> {
    pub seq: i64,
    pub at: &'a str,
    pub actor: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    pub details: &'a str,
}

pub fn audit_hash(fields: &AuditFields<'_>, prev_hash: &Hash) -> Hash {
    Encoder::new(AUDIT_CONTEXT)
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
    #[error("row {seq}: its contents do not match its hash (the row was edited)")]
    Content { seq: i64 },
}

impl ChainBreak {
    pub fn seq(&self) -> i64 {
        match self {
            ChainBreak::Sequence { seq, .. } | ChainBreak::Link { seq } | ChainBreak::Content { seq } => *seq,
        }
    }
}

/// Incremental verifier: feed rows in storage order.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    expected_seq: i64,
    head: Hash,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        ChainVerifier {
            expected_seq: 1,
            head: Hash::ZERO,
        }
    }
}

impl ChainVerifier {
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
        let fields = AuditFields {
            seq: row.seq,
            at: &row.at,
            actor: &row.actor,
            action: &row.action,
            target: &row.target,
            details: &row.details,
        };
        if audit_hash(&fields, &row.prev_hash) != row.hash {
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
