//! The hash-chained audit log: append inside the caller's transaction, list, verify.

use crate::{Db, Result, now};
use domain::{
    Hash,
    api::{AuditEntry, AuditHead, AuditVerification, Page},
    audit::{AuditFields, AuditRecord, ChainVerifier, audit_hash},
};
use sqlx::{Sqlite, SqliteConnection, Transaction};

/// Appends one row to the chain. Must run inside the transaction that makes the change it
/// records, so the change and its audit row commit or vanish together.
pub async fn append(tx: &mut Transaction<'_, Sqlite>, actor: &str, action: &str, target: &str, details: serde_json::Value) -> Result<i64> {
    let conn: &mut SqliteConnection = tx;
    let last: Option<(i64, String)> = sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await?;
    let (seq, prev_hash) = match last {
        Some((seq, hash)) => (
            seq + 1,
            Hash::from_hex(&hash).map_err(|_| crate::Error::Internal(format!("audit row {seq} has a malformed hash")))?,
        ),
        None => (1, Hash::ZERO),
    };
    let at = now();
    let details = details.to_string();
    let fields = AuditFields {
        seq,
        at: &at,
        actor,
        action,
        target,
        details: &details,
    };
    let hash = audit_hash(&fields, &prev_hash);
    sqlx::query("INSERT INTO audit_log (seq, at, actor, action, target, details, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
        .bind(seq)
        .bind(&at)
        .bind(actor)
        .bind(action)
        .bind(target)
        .bind(&details)
        .bind(prev_hash.to_hex())
        .bind(hash.to_hex())
        .execute(&mut *conn)
        .await?;
    Ok(seq)
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    seq: i64,
    at: String,
    actor: String,
    action: String,
    target: String,
    details: String,
    prev_hash: String,
    hash: String,
}

impl AuditRow {
    fn into_entry(self) -> AuditEntry {
        AuditEntry {
            seq: self.seq,
            at: self.at,
            actor: self.actor,
            action: self.action,
            target: self.target,
            details: serde_json::from_str(&self.details).unwrap_or(serde_json::Value::String(self.details)),
            prev_hash: self.prev_hash,
            hash: self.hash,
        }
    }
}

/// Filters for the audit list. Text filters match substrings (actor exactly).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    /// Only rows with `seq` below this (the `next` cursor of the previous page).
    pub before: Option<i64>,
    pub limit: Option<i64>,
}

/// Newest first, paged by sequence number.
pub async fn list(db: &Db, filter: &AuditFilter) -> Result<Page<AuditEntry>> {
    let limit = filter.limit.unwrap_or(50).clamp(1, 500);
    let rows: Vec<AuditRow> = sqlx::query_as(
        "SELECT seq, at, actor, action, target, details, prev_hash, hash FROM audit_log
         WHERE (?1 IS NULL OR actor = ?1)
           AND (?2 IS NULL OR instr(action, ?2) > 0)
           AND (?3 IS NULL OR instr(target, ?3) > 0)
           AND (?4 IS NULL OR seq < ?4)
         ORDER BY seq DESC LIMIT ?5",
    )
    .bind(filter.actor.as_deref().filter(|s| !s.is_empty()))
    .bind(filter.action.as_deref().filter(|s| !s.is_empty()))
    .bind(filter.target.as_deref().filter(|s| !s.is_empty()))
    .bind(filter.before)
    .bind(limit + 1)
    .fetch_all(&db.read)
    .await?;
    Ok(page(rows.into_iter().map(AuditRow::into_entry).collect(), limit, |entry| entry.seq))
}

/// Cuts one extra fetched row off and turns it into the `next` cursor.
pub(crate) fn page<T>(mut items: Vec<T>, limit: i64, cursor: impl Fn(&T) -> i64) -> Page<T> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(cursor)
    } else {
        None
    };
    Page { items, next }
}

pub async fn head(db: &Db) -> Result<AuditHead> {
    let last: Option<(i64, String)> = sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&db.read)
        .await?;
    let (seq, hash) = last.unwrap_or((0, Hash::ZERO.to_hex()));
    Ok(AuditHead { seq, hash })
}

/// Walks the whole chain in storage order and names the first bad row.
pub async fn verify(db: &Db) -> Result<AuditVerification> {
    use futures_util::StreamExt as _;
    let mut verifier = ChainVerifier::default();
    let mut rows =
        sqlx::query_as::<_, AuditRow>("SELECT seq, at, actor, action, target, details, prev_hash, hash FROM audit_log ORDER BY rowid")
            .fetch(&db.read);
    while let Some(row) = rows.next().await {
        let row = row?;
        let seq = row.seq;
        let parse = |text: &str| Hash::from_hex(text).unwrap_or(Hash::ZERO);
        let record = AuditRecord {
            seq,
            prev_hash: parse(&row.prev_hash),
            hash: parse(&row.hash),
            at: row.at,
            actor: row.actor,
            action: row.action,
            target: row.target,
            details: row.details,
        };
        if let Err(problem) = verifier.push(&record) {
            return Ok(AuditVerification {
                intact: false,
                rows: verifier.count(),
                head: verifier.head().to_hex(),
                first_bad_seq: Some(problem.seq()),
                message: problem.to_string(),
                problem: Some(problem),
            });
        }
    }
    Ok(AuditVerification {
        intact: true,
        rows: verifier.count(),
        head: verifier.head().to_hex(),
        first_bad_seq: None,
        problem: None,
        message: format!("chain intact: {} rows", verifier.count()),
    })
}
