//! Revisions: immutable numbered snapshots of the entry set, their entries and diffs.

use crate::{Db, Error, Result, audit::page};
use domain::{
    EntryPath,
    api::{DiffView, EntryContent, EntryDiff, EntryView, Page, RevisionSummary, RevisionView},
    diff::diff_text,
    keys::key_changes,
    policy::format_mode,
};
use sqlx::AnyConnection;
use std::{collections::BTreeMap, time::Duration};

/// Work bound for one entry's line diff; past it the diff is coarser, never wrong.
pub const DIFF_DEADLINE: Duration = Duration::from_secs(2);

/// One entry as stored in `revision_entries` or `change_entries`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct EntryRow {
    pub path: String,
    pub blob: Option<String>,
    pub format: String,
    pub mode: i64,
    pub owner: String,
    pub grp: String,
    #[sqlx(try_from = "crate::db::Flag")]
    pub secret: bool,
    pub size: i64,
    pub entry_hash: String,
}

impl EntryRow {
    pub fn view(&self) -> EntryView {
        EntryView {
            path: self.path.clone(),
            format: self.format.clone(),
            mode: format_mode(u32::try_from(self.mode).unwrap_or(0)),
            owner: self.owner.clone(),
            group: self.grp.clone(),
            secret: self.secret,
            size: self.size,
            entry_hash: self.entry_hash.clone(),
        }
    }
}

pub(crate) type EntrySet = BTreeMap<String, EntryRow>;

#[derive(sqlx::FromRow)]
struct SummaryRow {
    number: i64,
    root: String,
    parent: Option<i64>,
    author: String,
    message: String,
    created_at: String,
    change_id: Option<i64>,
    entry_count: i64,
}

impl From<SummaryRow> for RevisionSummary {
    fn from(row: SummaryRow) -> Self {
        RevisionSummary {
            number: row.number,
            root: row.root,
            parent: row.parent,
            author: row.author,
            message: row.message,
            created_at: row.created_at,
            change_id: row.change_id,
            entry_count: row.entry_count,
        }
    }
}

const SUMMARY_SELECT: &str = "SELECT r.number, r.root, r.parent, r.author, r.message, r.created_at, r.change_id,
    (SELECT COUNT(*) FROM revision_entries e WHERE e.revision = r.number) AS entry_count FROM revisions r";

/// The number of the current revision (the highest one).
pub(crate) async fn current_number(conn: &mut AnyConnection) -> Result<i64> {
    let (number,): (i64,) = sqlx::query_as("SELECT MAX(number) FROM revisions").fetch_one(conn).await?;
    Ok(number)
}

pub(crate) async fn exists(conn: &mut AnyConnection, number: i64) -> Result<bool> {
    let row: Option<(i64,)> = sqlx::query_as("SELECT number FROM revisions WHERE number = $1")
        .bind(number)
        .fetch_optional(conn)
        .await?;
    Ok(row.is_some())
}

pub(crate) async fn entries(conn: &mut AnyConnection, number: i64) -> Result<EntrySet> {
    let rows: Vec<EntryRow> = sqlx::query_as(
        "SELECT path, blob, format, mode, owner, grp, secret, size, entry_hash FROM revision_entries WHERE revision = $1 ORDER BY path",
    )
    .bind(number)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|row| (row.path.clone(), row)).collect())
}

/// The content of a blob, opened if it is sealed (a secret entry's).
pub(crate) async fn blob(conn: &mut AnyConnection, keys: &crate::secrets::Keyring, hash: &str) -> Result<Vec<u8>> {
    let (content, crate::db::Flag(sealed)): (Vec<u8>, crate::db::Flag) =
        sqlx::query_as("SELECT content, sealed FROM blobs WHERE hash = $1")
            .bind(hash)
            .fetch_optional(conn)
            .await?
            .ok_or_else(|| Error::Internal(format!("blob {hash} is missing")))?;
    if sealed {
        keys.open(&format!("blob:{hash}"), &content)
    } else {
        Ok(content)
    }
}

pub async fn current(db: &Db) -> Result<RevisionSummary> {
    let mut conn = db.read.acquire().await?;
    let number = current_number(&mut conn).await?;
    summary(&mut conn, number).await
}

async fn summary(conn: &mut AnyConnection, number: i64) -> Result<RevisionSummary> {
    let row: SummaryRow = sqlx::query_as(&format!("{SUMMARY_SELECT} WHERE r.number = $1"))
        .bind(number)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no revision {number}")))?;
    Ok(row.into())
}

/// Newest first; `before` is the `next` cursor of the previous page.
pub async fn list(db: &Db, before: Option<i64>, limit: Option<i64>) -> Result<Page<RevisionSummary>> {
    let limit = limit.unwrap_or(50).clamp(1, 500);
    let rows: Vec<SummaryRow> = sqlx::query_as(&format!(
        "{SUMMARY_SELECT} WHERE ($1 IS NULL OR r.number < $1) ORDER BY r.number DESC LIMIT $2"
    ))
    .bind(before)
    .bind(limit + 1)
    .fetch_all(&db.read)
    .await?;
    Ok(page(rows.into_iter().map(RevisionSummary::from).collect(), limit, |r| r.number))
}

pub async fn get(db: &Db, number: i64) -> Result<RevisionView> {
    let mut conn = db.read.acquire().await?;
    let summary = summary(&mut conn, number).await?;
    let current = current_number(&mut conn).await? == number;
    let entries = entries(&mut conn, number).await?.values().map(EntryRow::view).collect();
    Ok(RevisionView { summary, current, entries })
}

/// One entry row of an existing revision (404 for a revision or path that is not there).
async fn entry_row(conn: &mut AnyConnection, number: i64, path: &EntryPath) -> Result<EntryRow> {
    summary(&mut *conn, number).await?;
    sqlx::query_as(
        "SELECT path, blob, format, mode, owner, grp, secret, size, entry_hash FROM revision_entries WHERE revision = $1 AND path = $2",
    )
    .bind(number)
    .bind(path.as_str())
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| Error::NotFound(format!("revision {number} has no entry {path}")))
}

/// The content of a secret entry, for a caller who has just given their password again
/// (checked by the caller of this function). Audited, without the value.
pub async fn reveal(db: &Db, caller: &crate::Caller, number: i64, path: &str) -> Result<EntryContent> {
    caller.require(domain::Role::Approver)?;
    caller.require_typed_password()?;
    let path = EntryPath::parse(path).map_err(|err| Error::BadRequest(err.to_string()))?;
    let mut conn = db.read.acquire().await?;
    let row = entry_row(&mut conn, number, &path).await?;
    let hash = row.blob.clone().ok_or_else(|| Error::Internal(format!("{path} has no content")))?;
    let content = String::from_utf8_lossy(&blob(&mut conn, &db.keys, &hash).await?).into_owned();
    if !row.secret && !crate::secrets::holds_secrets(db, &row.format, content.as_bytes()) {
        return Err(Error::BadRequest(format!("{path} holds no secret: read it with GET")));
    }
    drop(conn);
    let mut tx = db.begin().await?;
    crate::audit::append(
        &mut tx,
        &caller.username,
        "secret.reveal",
        &format!("revision/{number}/{path}"),
        serde_json::json!({"revision": number, "path": path.as_str(), "fingerprint": hash}),
    )
    .await?;
    tx.commit().await?;
    Ok(EntryContent {
        entry: row.view(),
        revision: number,
        content: Some(content),
    })
}

/// One entry of a revision with its content (withheld for secret entries).
pub async fn entry(db: &Db, number: i64, path: &str) -> Result<EntryContent> {
    let path = EntryPath::parse(path).map_err(|err| Error::BadRequest(err.to_string()))?;
    let mut conn = db.read.acquire().await?;
    let row = entry_row(&mut conn, number, &path).await?;
    let content = match (&row.blob, row.secret) {
        (Some(hash), false) => {
            let text = String::from_utf8_lossy(&blob(&mut conn, &db.keys, hash).await?).into_owned();
            Some(crate::secrets::redact(db, &row.format, &text))
        }
        _ => None,
    };
    Ok(EntryContent {
        entry: row.view(),
        revision: number,
        content,
    })
}

pub async fn diff(db: &Db, from: i64, to: i64) -> Result<DiffView> {
    let mut conn = db.read.acquire().await?;
    summary(&mut conn, from).await?;
    summary(&mut conn, to).await?;
    let old = entries(&mut conn, from).await?;
    let new = entries(&mut conn, to).await?;
    Ok(DiffView {
        from: format!("revision {from}"),
        to: format!("revision {to}"),
        entries: diff_sets(&mut conn, db, &old, &new, false).await?,
    })
}

/// Policy differences in words: `mode 0640 → 0644`.
pub(crate) fn policy_changes(old: &EntryRow, new: &EntryRow) -> Vec<String> {
    let mut changes = Vec::new();
    let (old_view, new_view) = (old.view(), new.view());
    let shown = |text: &str| {
        if text.is_empty() {
            "(unmanaged)".to_string()
        } else {
            text.to_string()
        }
    };
    if old_view.mode != new_view.mode {
        changes.push(format!("mode {} → {}", old_view.mode, new_view.mode));
    }
    if old.owner != new.owner {
        changes.push(format!("owner {} → {}", shown(&old.owner), shown(&new.owner)));
    }
    if old.grp != new.grp {
        changes.push(format!("group {} → {}", shown(&old.grp), shown(&new.grp)));
    }
    if old.secret != new.secret {
        changes.push(format!("secret {} → {}", old.secret, new.secret));
    }
    if old.format != new.format {
        changes.push(format!("format {} → {}", old.format, new.format));
    }
    changes
}

/// Per-path differences between two entry sets. Secret content is never diffed: only
/// whether it changed. `include_unchanged` keeps unchanged entries in the list.
pub(crate) async fn diff_sets(
    conn: &mut AnyConnection,
    db: &Db,
    old: &EntrySet,
    new: &EntrySet,
    include_unchanged: bool,
) -> Result<Vec<EntryDiff>> {
    let mut result = Vec::new();
    for path in differing(old, new, include_unchanged) {
        result.push(describe(conn, db, old, new, path).await?);
    }
    Ok(result)
}

/// The paths whose entries differ between two sets (all of them with
/// `include_unchanged`), sorted. Compares blob names and policies only: nothing is read.
pub(crate) fn differing<'a>(old: &'a EntrySet, new: &'a EntrySet, include_unchanged: bool) -> Vec<&'a String> {
    let mut paths: Vec<&String> = old.keys().chain(new.keys()).collect();
    paths.sort();
    paths.dedup();
    paths.retain(|path| include_unchanged || status_of(old.get(*path), new.get(*path)).1 != "unchanged");
    paths
}

/// Whether the content changed, and the status of a path between two sets.
fn status_of(before: Option<&EntryRow>, after: Option<&EntryRow>) -> (bool, &'static str, Vec<String>) {
    let content_changed = before.map(|e| &e.blob) != after.map(|e| &e.blob);
    let policy = match (before, after) {
        (Some(b), Some(a)) => policy_changes(b, a),
        _ => Vec::new(),
    };
    let status = match (before, after) {
        (None, Some(_)) => "added",
        (Some(_), None) => "removed",
        _ if content_changed || !policy.is_empty() => "modified",
        _ => "unchanged",
    };
    (content_changed, status, policy)
}

/// How one path differs between two sets: its status, policy changes and line diff.
pub(crate) async fn describe(conn: &mut AnyConnection, db: &Db, old: &EntrySet, new: &EntrySet, path: &String) -> Result<EntryDiff> {
    let (before, after) = (old.get(path), new.get(path));
    let (content_changed, status, policy) = status_of(before, after);
    let secret = before.is_some_and(|e| e.secret) || after.is_some_and(|e| e.secret);
    let (text, keys) = if content_changed && !secret {
        let old_text = text_of(conn, db, before).await?;
        let new_text = text_of(conn, db, after).await?;
        let keys = match (before, after) {
            (Some(b), Some(a)) if b.format == a.format => a
                .format
                .parse::<domain::Format>()
                .ok()
                .and_then(|format| key_changes(format, &old_text, &new_text)),
            _ => None,
        };
        (Some(diff_text(&old_text, &new_text, Some(DIFF_DEADLINE))), keys)
    } else {
        (None, None)
    };
    Ok(EntryDiff {
        hidden: None,
        path: path.clone(),
        status: status.to_string(),
        old: before.map(EntryRow::view),
        new: after.map(EntryRow::view),
        policy_changes: policy,
        text,
        secret_changed: secret && content_changed,
        keys,
    })
}

/// An entry's content as a diff shows it: secret values as placeholders.
async fn text_of(conn: &mut AnyConnection, db: &Db, entry: Option<&EntryRow>) -> Result<String> {
    match entry.and_then(|e| e.blob.as_deref().map(|hash| (e, hash))) {
        Some((entry, hash)) => {
            let text = String::from_utf8_lossy(&blob(conn, &db.keys, hash).await?).into_owned();
            Ok(crate::secrets::redact(db, &entry.format, &text))
        }
        None => Ok(String::new()),
    }
}
