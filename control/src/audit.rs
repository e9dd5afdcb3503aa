//! The hash-chained audit log: append inside the caller's transaction, list, verify.

use crate::{Db, Result, now};
use domain::{
    Hash,
    api::{AnchorCheck, AuditEntry, AuditHead, AuditVerification, Page},
    audit::{AuditFields, AuditRecord, ChainVerifier, keyed_audit_hash},
};

/// Appends one row to the chain. Must run inside the transaction that makes the change it
/// records, so the change and its audit row commit or vanish together.
pub async fn append(tx: &mut crate::db::Tx, actor: &str, action: &str, target: &str, details: serde_json::Value) -> Result<i64> {
    let last: Option<(i64, String)> = sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut **tx)
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
    let hash = keyed_audit_hash(tx.chain_key(), &fields, &prev_hash);
    sqlx::query("INSERT INTO audit_log (seq, at, actor, action, target, details, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
        .bind(seq)
        .bind(&at)
        .bind(actor)
        .bind(action)
        .bind(target)
        .bind(&details)
        .bind(prev_hash.to_hex())
        .bind(hash.to_hex())
        .execute(&mut **tx)
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
    /// The row as the chain verifies it (a malformed hash reads as zero, which no row has).
    fn into_record(self) -> AuditRecord {
        let parse = |text: &str| Hash::from_hex(text).unwrap_or(Hash::ZERO);
        AuditRecord {
            seq: self.seq,
            prev_hash: parse(&self.prev_hash),
            hash: parse(&self.hash),
            at: self.at,
            actor: self.actor,
            action: self.action,
            target: self.target,
            details: self.details,
        }
    }

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
    let find = crate::dialect::find(db);
    let rows: Vec<AuditRow> = sqlx::query_as(&format!(
        "SELECT seq, at, actor, action, target, details, prev_hash, hash FROM audit_log
         WHERE ($1 IS NULL OR actor = $1)
           AND ($2 IS NULL OR {find}(action, $2) > 0)
           AND ($3 IS NULL OR {find}(target, $3) > 0)
           AND ($4 IS NULL OR seq < $4)
         ORDER BY seq DESC LIMIT $5"
    ))
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

/// Keys the chain of a database an earlier version wrote: when its last row's hash is
/// plain, one keyed row (`audit.chain_keyed`, naming how many plain rows precede it) is
/// appended, and every row after it is keyed. Called at every open; a no-op once keyed.
pub async fn key_the_chain(db: &Db) -> Result<()> {
    let mut tx = db.begin().await?;
    let last: Option<AuditRow> =
        sqlx::query_as("SELECT seq, at, actor, action, target, details, prev_hash, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
    let Some(last) = last.map(AuditRow::into_record) else {
        return Ok(());
    };
    if keyed_audit_hash(tx.chain_key(), &last.fields(), &last.prev_hash) == last.hash {
        return Ok(());
    }
    append(
        &mut tx,
        "system",
        "audit.chain_keyed",
        "audit",
        serde_json::json!({"plain_rows": last.seq}),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(plain_rows = last.seq, "the audit chain is keyed from here on");
    Ok(())
}

/// Walks the whole chain in storage order and names the first bad row.
pub async fn verify(db: &Db) -> Result<AuditVerification> {
    use futures_util::StreamExt as _;
    let mut verifier = ChainVerifier::keyed(db.keys.audit_key());
    let mut rows =
        sqlx::query_as::<_, AuditRow>("SELECT seq, at, actor, action, target, details, prev_hash, hash FROM audit_log ORDER BY seq")
            .fetch(&db.read);
    while let Some(row) = rows.next().await {
        let record = row?.into_record();
        if let Err(problem) = verifier.push(&record) {
            return Ok(AuditVerification {
                intact: false,
                rows: verifier.count(),
                head: verifier.head().to_hex(),
                first_bad_seq: Some(problem.seq()),
                message: problem.to_string(),
                problem: Some(problem),
                plain_rows: verifier.legacy(),
                anchors: Vec::new(),
            });
        }
    }
    let plain = match verifier.legacy() {
        0 => String::new(),
        n => format!(" ({n} plain rows of an earlier version before it was keyed)"),
    };
    Ok(AuditVerification {
        intact: true,
        rows: verifier.count(),
        head: verifier.head().to_hex(),
        first_bad_seq: None,
        problem: None,
        message: format!("chain intact: {} rows{plain}", verifier.count()),
        plain_rows: verifier.legacy(),
        anchors: Vec::new(),
    })
}

/// [`verify`], then the log against the head every shadow keeps (sent with each rollout):
/// a shadow's head at a row the log no longer has is a cut tail; one whose row now has
/// another hash is a recomputed or rewritten chain. Either makes the report not intact,
/// naming the row. A shadow that does not answer within `timeout` is reported as such.
pub async fn verify_against_shadows(
    db: &Db,
    registry: &crate::shadows::Registry,
    timeout: std::time::Duration,
) -> Result<AuditVerification> {
    let mut report = verify(db).await?;
    let names: Vec<String> = crate::shadows::list(db).await?.into_iter().map(|s| s.name).collect();
    let heads = futures_util::future::join_all(names.iter().map(|name| async move {
        let driver = registry.driver(db, name).await.map_err(|err| err.to_string())?;
        match tokio::time::timeout(timeout, driver.state(false)).await {
            Ok(Ok(state)) => Ok(state.audit_head),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }))
    .await;
    for (name, head) in names.into_iter().zip(heads) {
        let check = match head {
            Err(err) => AnchorCheck {
                shadow: name,
                seq: None,
                status: "unavailable".into(),
                message: err,
            },
            Ok(None) => AnchorCheck {
                shadow: name,
                seq: None,
                status: "none".into(),
                message: "keeps no head yet (no rollout since it was added)".into(),
            },
            Ok(Some(anchor)) => {
                let row: Option<(String,)> = sqlx::query_as("SELECT hash FROM audit_log WHERE seq = $1")
                    .bind(anchor.seq)
                    .fetch_optional(&db.read)
                    .await?;
                let (status, message) = match row {
                    None => (
                        "cut",
                        format!(
                            "{name} keeps the head at row {}, but the log ends at row {}: rows were cut from its end",
                            anchor.seq, report.rows
                        ),
                    ),
                    Some((hash,)) if hash != anchor.hash => (
                        "differs",
                        format!(
                            "row {} is not the one {name} keeps the head of: the chain was recomputed or rewritten",
                            anchor.seq
                        ),
                    ),
                    Some(_) => ("matches", format!("row {} is the head {name} keeps", anchor.seq)),
                };
                AnchorCheck {
                    shadow: name,
                    seq: Some(anchor.seq),
                    status: status.into(),
                    message,
                }
            }
        };
        report.anchors.push(check);
    }
    if report.intact && !report.anchors.iter().any(|check| check.status == "matches") {
        report.message = format!(
            "{}; no shadow vouches for it yet (none keeps a head, or none answered): a cut tail could not be seen",
            report.message
        );
    }
    if let Some(worst) = report
        .anchors
        .iter()
        .filter(|check| check.contradicts())
        .min_by_key(|check| check.seq)
    {
        report.message = if report.intact {
            format!("the chain verifies by itself, but {}", worst.message)
        } else {
            format!("{}; and {}", report.message, worst.message)
        };
        report.intact = false;
        // A cut tail: the first row missing; a differing row: that row (the rewrite may
        // start before it, which the chain itself cannot tell).
        let seq = match worst.status.as_str() {
            "cut" => report.rows + 1,
            _ => worst.seq.unwrap_or(0),
        };
        report.first_bad_seq = Some(report.first_bad_seq.map_or(seq, |bad| bad.min(seq)));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rewrites every row with the plain hash, as an earlier version wrote them.
    async fn make_plain(db: &Db) {
        let rows: Vec<AuditRow> =
            sqlx::query_as("SELECT seq, at, actor, action, target, details, prev_hash, hash FROM audit_log ORDER BY seq")
                .fetch_all(&db.read)
                .await
                .unwrap();
        let mut prev = Hash::ZERO;
        for row in rows.into_iter().map(AuditRow::into_record) {
            let hash = domain::audit::audit_hash(&row.fields(), &prev);
            sqlx::query("UPDATE audit_log SET prev_hash = $1, hash = $2 WHERE seq = $3")
                .bind(prev.to_hex())
                .bind(hash.to_hex())
                .bind(row.seq)
                .execute(db.read_write())
                .await
                .unwrap();
            prev = hash;
        }
    }

    #[tokio::test]
    async fn an_earlier_versions_plain_chain_is_kept_and_keyed_from_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_or_initialize(dir.path(), true).await.unwrap();
        let mut tx = db.begin().await.unwrap();
        append(&mut tx, "ana", "change.create", "change/1", serde_json::json!({}))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        make_plain(&db).await;
        db.close().await;
        let db = Db::open(dir.path()).await.unwrap();
        let report = verify(&db).await.unwrap();
        assert!(report.intact, "{report:?}");
        assert_eq!((report.rows, report.plain_rows), (3, 2), "{report:?}");
        let last = list(&db, &AuditFilter::default()).await.unwrap().items.remove(0);
        assert_eq!(last.action, "audit.chain_keyed");
        // Opened again: already keyed, nothing appended.
        db.close().await;
        let db = Db::open(dir.path()).await.unwrap();
        assert_eq!(verify(&db).await.unwrap().rows, 3);
        // A plain row edited is still found.
        sqlx::query("UPDATE audit_log SET actor = 'mallory' WHERE seq = 2")
            .execute(db.read_write())
            .await
            .unwrap();
        let report = verify(&db).await.unwrap();
        assert_eq!(report.first_bad_seq, Some(2), "{report:?}");
    }
}
