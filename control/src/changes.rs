//! Changes: proposed edit sets on a base revision, and their review (submit, approve,
//! reject, rebase). Approvals sign the change's content hash; any edit changes the hash
//! and so voids them. An author never approves their own change.

use crate::{
    Caller, Db, Error, Result, audit,
    audit::page,
    now,
    revisions::{self, EntryRow, EntrySet},
};
use domain::{
    EntryPath, Format, Policy, Role,
    api::{
        ApprovalView, ChangeEntryView, ChangeState, ChangeSummary, ChangeView, DiffPage, DiffView, EntryEdit, EntryInput, NewChange, Page,
    },
    format::validate,
    hash::{ChangeOp, change_hash, content_hash, entry_hash},
    policy::{parse_mode, valid_principal},
};
use serde_json::json;
use sqlx::AnyConnection;

/// Longest accepted change message.
pub const MAX_MESSAGE_LEN: usize = 4000;
/// Most entries one change may touch.
pub const MAX_ENTRIES: usize = 10_000;

#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct ChangeRow {
    pub id: i64,
    pub base_revision: i64,
    pub message: String,
    pub author_id: i64,
    pub author: String,
    pub state: String,
    pub content_hash: String,
    pub rejected_by: Option<String>,
    pub reject_reason: Option<String>,
    pub revision: Option<i64>,
    pub created_at: String,
    pub updated_at: String,
    pub entry_count: i64,
}

impl ChangeRow {
    pub fn state(&self) -> Result<ChangeState> {
        ChangeState::parse(&self.state).ok_or_else(|| Error::Internal(format!("change {} has unknown state {}", self.id, self.state)))
    }

    fn summary(&self) -> Result<ChangeSummary> {
        Ok(ChangeSummary {
            id: self.id,
            base_revision: self.base_revision,
            message: self.message.clone(),
            author: self.author.clone(),
            state: self.state()?,
            content_hash: self.content_hash.clone(),
            created_at: self.created_at.clone(),
            updated_at: self.updated_at.clone(),
            revision: self.revision,
            entry_count: self.entry_count,
        })
    }
}

const CHANGE_SELECT: &str = "SELECT c.id, c.base_revision, c.message, c.author_id, a.username AS author, c.state, c.content_hash,
    r.username AS rejected_by, c.reject_reason, c.revision, c.created_at, c.updated_at,
    (SELECT COUNT(*) FROM change_entries e WHERE e.change_id = c.id) AS entry_count
    FROM changes c JOIN users a ON a.id = c.author_id LEFT JOIN users r ON r.id = c.rejected_by";

pub(crate) async fn load(conn: &mut AnyConnection, id: i64) -> Result<ChangeRow> {
    sqlx::query_as(&format!("{CHANGE_SELECT} WHERE c.id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no change {id}")))
}

/// One operation of a change as stored: `blob` is `None` for a delete.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct ChangeEntryRow {
    pub op: String,
    #[sqlx(flatten)]
    pub entry: EntryRow,
}

pub(crate) async fn operations(conn: &mut AnyConnection, id: i64) -> Result<Vec<ChangeEntryRow>> {
    Ok(sqlx::query_as(
        "SELECT op, path, blob, format, mode, owner, grp, secret, size, entry_hash FROM change_entries WHERE change_id = $1 ORDER BY path",
    )
    .bind(id)
    .fetch_all(conn)
    .await?)
}

/// The entry set the change produces when applied to `base`.
pub(crate) fn apply(base: &EntrySet, ops: &[ChangeEntryRow]) -> EntrySet {
    let mut result = base.clone();
    for op in ops {
        if op.op == "delete" {
            result.remove(&op.entry.path);
        } else {
            result.insert(op.entry.path.clone(), op.entry.clone());
        }
    }
    result
}

/// The format an edit gives, else the one of the entry it replaces, else a guess.
fn entry_format(path: &EntryPath, given: Option<&str>, existing: Option<&EntryRow>) -> Result<Format> {
    Ok(match (given, existing) {
        (Some(text), _) => text
            .parse()
            .map_err(|err: domain::format::UnknownFormat| Error::BadRequest(err.to_string()))?,
        (None, Some(existing)) => existing.format.parse().unwrap_or(Format::Text),
        (None, None) => Format::guess(path.as_str()),
    })
}

/// An edit's content with the secret values it showed as placeholders put back (see
/// [`crate::secrets::restore`]), from what `original` (the entry being replaced) holds.
async fn restore_secrets(
    conn: &mut AnyConnection,
    db: &Db,
    path: &EntryPath,
    format: Format,
    content: String,
    original: Option<&EntryRow>,
) -> Result<String> {
    if !domain::redact::has_placeholder(&content) {
        return Ok(content);
    }
    let stored = match original.and_then(|row| row.blob.as_deref()) {
        Some(hash) => String::from_utf8_lossy(&revisions::blob(conn, &db.keys, hash).await?).into_owned(),
        None => String::new(),
    };
    crate::secrets::restore(db, path.as_str(), format, &content, &stored)
}

/// A validated entry ready to store, with its bytes.
struct PreparedPut {
    row: EntryRow,
    content: Vec<u8>,
}

fn parse_path(raw: &str) -> Result<EntryPath> {
    EntryPath::parse(raw).map_err(|err| Error::BadRequest(format!("invalid path {raw:?}: {err}")))
}

/// Validates one put: path, format (the content must parse), mode, owner, group. Missing
/// policy fields keep the values of the entry being replaced, or take the defaults.
fn prepare_put(path: &EntryPath, edit: &EntryEdit, existing: Option<&EntryRow>) -> Result<PreparedPut> {
    let format = entry_format(path, edit.format.as_deref(), existing)?;
    let defaults = Policy::default();
    let mode = match (&edit.mode, existing) {
        (Some(text), _) => parse_mode(text).map_err(|err| Error::BadRequest(err.to_string()))?,
        (None, Some(existing)) => u32::try_from(existing.mode).unwrap_or(defaults.mode),
        (None, None) => defaults.mode,
    };
    let owner = edit.owner.clone().or_else(|| existing.map(|e| e.owner.clone())).unwrap_or_default();
    let group = edit.group.clone().or_else(|| existing.map(|e| e.grp.clone())).unwrap_or_default();
    for (what, name) in [("owner", &owner), ("group", &group)] {
        if !valid_principal(name) {
            return Err(Error::BadRequest(format!(
                "invalid {what} {name:?}: expected a lowercase user or group name"
            )));
        }
    }
    let secret = edit.secret.or(existing.map(|e| e.secret)).unwrap_or(false);
    let content = edit.content.as_bytes().to_vec();
    validate(format, &content).map_err(|error| Error::Invalid {
        path: path.to_string(),
        error,
    })?;
    let policy = Policy {
        mode,
        owner,
        group,
        secret,
    };
    let row = EntryRow {
        path: path.to_string(),
        blob: Some(content_hash(&content).to_hex()),
        format: format.as_str().to_string(),
        mode: i64::from(policy.mode),
        size: i64::try_from(content.len()).unwrap_or(i64::MAX),
        entry_hash: entry_hash(path, &policy, &content).to_hex(),
        owner: policy.owner,
        grp: policy.group,
        secret: policy.secret,
    };
    Ok(PreparedPut { row, content })
}

/// Stores an entry's content and the operation. The content of a secret entry, or of one
/// holding secret values, is sealed, and its blob is named by a keyed fingerprint: a plain
/// content hash would let anyone with the database test guesses against it.
async fn store_put(conn: &mut AnyConnection, db: &Db, change_id: i64, put: &PreparedPut) -> Result<()> {
    let keys = &db.keys;
    if put.row.secret || crate::secrets::holds_secrets(db, &put.row.format, &put.content) {
        let mut row = put.row.clone();
        let id = format!("{SEALED_BLOB_PREFIX}{}", keys.fingerprint(&put.content));
        // Its entry hash is keyed too: the root of a revision must not let anyone test a
        // guessed value either.
        row.entry_hash = sealed_hash(db, &row, &put.content)?.to_hex();
        sqlx::query("INSERT INTO blobs (hash, content, size, sealed) VALUES ($1, $2, $3, 1) ON CONFLICT DO NOTHING")
            .bind(&id)
            .bind(keys.seal(&format!("blob:{id}"), &put.content))
            .bind(put.row.size)
            .execute(&mut *conn)
            .await?;
        row.blob = Some(id);
        return store_op(conn, change_id, "put", &row).await;
    }
    sqlx::query("INSERT INTO blobs (hash, content, size) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
        .bind(&put.row.blob)
        .bind(&put.content)
        .bind(put.row.size)
        .execute(&mut *conn)
        .await?;
    store_op(conn, change_id, "put", &put.row).await
}

/// The name prefix of a sealed blob.
pub(crate) const SEALED_BLOB_PREFIX: &str = "s";

/// True for the name of a sealed blob (a keyed fingerprint, not a content hash).
pub(crate) fn is_sealed_blob(name: &str) -> bool {
    name.starts_with(SEALED_BLOB_PREFIX)
}

/// The entry hash of a sealed entry, under the content key.
pub(crate) fn sealed_hash(db: &Db, row: &EntryRow, content: &[u8]) -> Result<domain::Hash> {
    let path = EntryPath::parse(&row.path).map_err(|err| Error::Internal(format!("{}: {err}", row.path)))?;
    let policy = Policy {
        mode: u32::try_from(row.mode).unwrap_or(0),
        owner: row.owner.clone(),
        group: row.grp.clone(),
        secret: row.secret,
    };
    Ok(domain::hash::sealed_entry_hash(&db.keys.content_key(), &path, &policy, content))
}

async fn store_op(conn: &mut AnyConnection, change_id: i64, op: &str, row: &EntryRow) -> Result<()> {
    sqlx::query(
        "INSERT INTO change_entries (change_id, path, op, blob, format, mode, owner, grp, secret, size, entry_hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (change_id, path) DO UPDATE SET op = excluded.op, blob = excluded.blob, format = excluded.format,
           mode = excluded.mode, owner = excluded.owner, grp = excluded.grp, secret = excluded.secret,
           size = excluded.size, entry_hash = excluded.entry_hash",
    )
    .bind(change_id)
    .bind(&row.path)
    .bind(op)
    .bind(if op == "put" { row.blob.as_deref() } else { None })
    .bind(&row.format)
    .bind(row.mode)
    .bind(&row.owner)
    .bind(&row.grp)
    .bind(crate::db::Flag(row.secret))
    .bind(row.size)
    .bind(&row.entry_hash)
    .execute(conn)
    .await?;
    Ok(())
}

/// Recomputes and stores the content hash; returns it.
async fn rehash(conn: &mut AnyConnection, id: i64, base_revision: i64, message: &str) -> Result<String> {
    let rows = operations(conn, id).await?;
    let paths: Vec<EntryPath> = rows.iter().map(|r| parse_path(&r.entry.path)).collect::<Result<_>>()?;
    let hashes: Vec<domain::Hash> = rows
        .iter()
        .map(|r| domain::Hash::from_hex(&r.entry.entry_hash).map_err(|_| Error::Internal("malformed entry hash".into())))
        .collect::<Result<_>>()?;
    let mut ops: Vec<ChangeOp<'_>> = rows
        .iter()
        .zip(paths.iter().zip(hashes.iter()))
        .map(|(row, (path, hash))| {
            if row.op == "delete" {
                ChangeOp::Delete { path }
            } else {
                ChangeOp::Put {
                    path,
                    format: &row.entry.format,
                    entry: *hash,
                }
            }
        })
        .collect();
    let hash = change_hash(u64::try_from(base_revision).unwrap_or(0), message, &mut ops).to_hex();
    sqlx::query("UPDATE changes SET content_hash = $1, updated_at = $2 WHERE id = $3")
        .bind(&hash)
        .bind(now())
        .bind(id)
        .execute(conn)
        .await?;
    Ok(hash)
}

fn validate_message(message: &str) -> Result<&str> {
    let message = message.trim();
    if message.is_empty() {
        return Err(Error::BadRequest("a change needs a message".into()));
    }
    if message.len() > MAX_MESSAGE_LEN {
        return Err(Error::BadRequest(format!("message is longer than {MAX_MESSAGE_LEN} bytes")));
    }
    Ok(message)
}

/// Creates a draft change on `base_revision`. Every entry is validated before anything is
/// stored: one bad entry refuses the whole request and changes nothing.
pub async fn create(db: &Db, caller: &Caller, input: NewChange) -> Result<ChangeView> {
    caller.require(Role::Editor)?;
    let message = validate_message(&input.message)?;
    if input.entries.len() > MAX_ENTRIES {
        return Err(Error::BadRequest(format!("a change may touch at most {MAX_ENTRIES} entries")));
    }
    let mut tx = db.begin().await?;
    if !revisions::exists(&mut tx, input.base_revision).await? {
        return Err(Error::BadRequest(format!("base revision {} does not exist", input.base_revision)));
    }
    let base = revisions::entries(&mut tx, input.base_revision).await?;
    let mut puts = Vec::new();
    let mut deletes = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for entry in &input.entries {
        let path = parse_path(&entry.path)?;
        if !seen.insert(path.clone()) {
            return Err(Error::BadRequest(format!("path {path} appears twice in the change")));
        }
        let existing = base.get(path.as_str());
        let mut entry = entry.clone();
        if let Some(content) = entry.content.take() {
            let format = entry_format(&path, entry.format.as_deref(), existing)?;
            entry.content = Some(restore_secrets(&mut tx, db, &path, format, content, existing).await?);
        }
        match prepare_entry(&path, &entry, existing)? {
            Prepared::Put(put) => puts.push(put),
            Prepared::Delete(row) => deletes.push(row),
        }
    }
    let at = now();
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO changes (base_revision, message, author_id, state, content_hash, created_at, updated_at)
         VALUES ($1, $2, $3, 'draft', '', $4, $5) RETURNING id",
    )
    .bind(input.base_revision)
    .bind(message)
    .bind(caller.user_id)
    .bind(&at)
    .bind(&at)
    .fetch_one(&mut *tx)
    .await?;
    for put in &puts {
        store_put(&mut tx, db, id, put).await?;
    }
    for row in &deletes {
        store_op(&mut tx, id, "delete", row).await?;
    }
    let hash = rehash(&mut tx, id, input.base_revision, message).await?;
    let paths: Vec<&str> = input.entries.iter().map(|e| e.path.as_str()).collect();
    audit::append(
        &mut tx,
        &caller.username,
        "change.create",
        &format!("change/{id}"),
        json!({"base_revision": input.base_revision, "paths": paths, "content_hash": hash}),
    )
    .await?;
    let view = view_in(&mut tx, id).await?;
    tx.commit().await?;
    Ok(view)
}

enum Prepared {
    Put(PreparedPut),
    Delete(EntryRow),
}

fn prepare_entry(path: &EntryPath, entry: &EntryInput, existing: Option<&EntryRow>) -> Result<Prepared> {
    if entry.delete {
        if entry.content.is_some() {
            return Err(Error::BadRequest(format!("{path}: a delete carries no content")));
        }
        let existing = existing.ok_or_else(|| Error::BadRequest(format!("{path}: cannot delete, the base revision has no such entry")))?;
        return Ok(Prepared::Delete(existing.clone()));
    }
    let content = entry
        .content
        .clone()
        .ok_or_else(|| Error::BadRequest(format!("{path}: content is required (or \"delete\": true)")))?;
    let edit = EntryEdit {
        content,
        format: entry.format.clone(),
        mode: entry.mode.clone(),
        owner: entry.owner.clone(),
        group: entry.group.clone(),
        secret: entry.secret,
    };
    prepare_put(path, &edit, existing).map(Prepared::Put)
}

/// Refuses any edit or review of a change whose rollout has started and not ended: what
/// was approved is what ships and what the revision records (DESIGN "Rollout lifecycle").
async fn refuse_if_frozen(conn: &mut AnyConnection, id: i64) -> Result<()> {
    let open: Vec<(i64, String)> = sqlx::query_as("SELECT id, state FROM rollouts WHERE change_id = $1 ORDER BY id DESC LIMIT 1")
        .bind(id)
        .fetch_all(&mut *conn)
        .await?;
    if let Some((rollout, state)) = open.first()
        && domain::rollout::State::parse(state).is_some_and(|state| !state.is_terminal())
    {
        return Err(Error::conflict(
            "change_frozen",
            format!("change {id} is being rolled out (rollout {rollout}, {state}); it cannot change until the rollout ends"),
        ));
    }
    Ok(())
}

/// Loads a change for an edit by its author; refuses closed and frozen changes.
async fn load_for_edit(conn: &mut AnyConnection, caller: &Caller, id: i64) -> Result<ChangeRow> {
    caller.require(Role::Editor)?;
    let change = load(conn, id).await?;
    if change.author_id != caller.user_id {
        return Err(Error::Forbidden("only the author can edit a change".into()));
    }
    refuse_if_frozen(conn, id).await?;
    if !change.state()?.is_open() {
        return Err(Error::conflict(
            "change_closed",
            format!("change {id} is {} and can no longer be edited", change.state),
        ));
    }
    Ok(change)
}

/// After an edit: back to draft, rejection cleared, new hash (voiding approvals), audited.
async fn finish_edit(
    tx: &mut crate::db::Tx,
    caller: &Caller,
    change: &ChangeRow,
    action: &str,
    details: serde_json::Value,
) -> Result<ChangeView> {
    sqlx::query("UPDATE changes SET state = 'draft', rejected_by = NULL, reject_reason = NULL WHERE id = $1")
        .bind(change.id)
        .execute(&mut **tx)
        .await?;
    let hash = rehash(tx, change.id, change.base_revision, &change.message).await?;
    let mut details = details;
    details["content_hash"] = json!(hash);
    audit::append(tx, &caller.username, action, &format!("change/{}", change.id), details).await?;
    view_in(tx, change.id).await
}

/// Puts one entry into a change (voids approvals).
pub async fn put_entry(db: &Db, caller: &Caller, id: i64, path: &str, edit: EntryEdit) -> Result<ChangeView> {
    let path = parse_path(path)?;
    let mut tx = db.begin().await?;
    let change = load_for_edit(&mut tx, caller, id).await?;
    let base = revisions::entries(&mut tx, change.base_revision).await?;
    let existing = base.get(path.as_str());
    let mut edit = edit;
    if domain::redact::has_placeholder(&edit.content) {
        // Placeholders stand for what the editor was shown: the change's own content of
        // the path if it has one, else the base revision's.
        let current = operations(&mut tx, id)
            .await?
            .into_iter()
            .find(|op| op.entry.path == path.as_str() && op.op == "put")
            .map(|op| op.entry);
        let format = entry_format(&path, edit.format.as_deref(), existing)?;
        edit.content = restore_secrets(&mut tx, db, &path, format, edit.content, current.as_ref().or(existing)).await?;
    }
    let put = prepare_put(&path, &edit, existing)?;
    store_put(&mut tx, db, id, &put).await?;
    let view = finish_edit(&mut tx, caller, &change, "change.edit", json!({"put": path.as_str()})).await?;
    tx.commit().await?;
    Ok(view)
}

/// Makes the change remove `path`: a path the base has becomes a delete; a path only the
/// change added is dropped from it.
pub async fn delete_entry(db: &Db, caller: &Caller, id: i64, path: &str) -> Result<ChangeView> {
    let path = parse_path(path)?;
    let mut tx = db.begin().await?;
    let change = load_for_edit(&mut tx, caller, id).await?;
    let base = revisions::entries(&mut tx, change.base_revision).await?;
    if let Some(existing) = base.get(path.as_str()) {
        store_op(&mut tx, id, "delete", existing).await?;
    } else {
        let removed = sqlx::query("DELETE FROM change_entries WHERE change_id = $1 AND path = $2")
            .bind(id)
            .bind(path.as_str())
            .execute(&mut *tx)
            .await?;
        if removed.rows_affected() == 0 {
            return Err(Error::NotFound(format!("neither the base revision nor the change has {path}")));
        }
    }
    let view = finish_edit(&mut tx, caller, &change, "change.edit", json!({"delete": path.as_str()})).await?;
    tx.commit().await?;
    Ok(view)
}

/// Moves an open change onto the current revision (voids approvals). A delete of a path
/// the current revision no longer has is a conflict to resolve by editing.
pub async fn rebase(db: &Db, caller: &Caller, id: i64) -> Result<ChangeView> {
    let mut tx = db.begin().await?;
    let change = load_for_edit(&mut tx, caller, id).await?;
    let current = revisions::current_number(&mut tx).await?;
    if current == change.base_revision {
        return Err(Error::conflict(
            "up_to_date",
            format!("change {id} is already based on the current revision {current}"),
        ));
    }
    let base = revisions::entries(&mut tx, current).await?;
    for op in operations(&mut tx, id).await? {
        if op.op == "delete" && !base.contains_key(&op.entry.path) {
            return Err(Error::conflict(
                "rebase_conflict",
                format!(
                    "{} was already removed in revision {current}; drop it from the change first",
                    op.entry.path
                ),
            ));
        }
    }
    sqlx::query("UPDATE changes SET base_revision = $1 WHERE id = $2")
        .bind(current)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let rebased = ChangeRow {
        base_revision: current,
        ..change.clone()
    };
    let view = finish_edit(
        &mut tx,
        caller,
        &rebased,
        "change.rebase",
        json!({"from": change.base_revision, "to": current}),
    )
    .await?;
    tx.commit().await?;
    Ok(view)
}

pub async fn submit(db: &Db, caller: &Caller, id: i64) -> Result<ChangeView> {
    let mut tx = db.begin().await?;
    let change = load_for_edit(&mut tx, caller, id).await?;
    if change.state()? != ChangeState::Draft {
        return Err(Error::conflict(
            "not_draft",
            format!("change {id} is {}, only a draft can be submitted", change.state),
        ));
    }
    if change.entry_count == 0 {
        return Err(Error::BadRequest("an empty change cannot be submitted".into()));
    }
    sqlx::query("UPDATE changes SET state = 'submitted', updated_at = $1 WHERE id = $2")
        .bind(now())
        .bind(id)
        .execute(&mut *tx)
        .await?;
    audit::append(
        &mut tx,
        &caller.username,
        "change.submit",
        &format!("change/{id}"),
        json!({"content_hash": change.content_hash}),
    )
    .await?;
    let view = view_in(&mut tx, id).await?;
    tx.commit().await?;
    Ok(view)
}

/// Loads a change for review: approver role, never the author's own.
async fn load_for_review(conn: &mut AnyConnection, caller: &Caller, id: i64) -> Result<ChangeRow> {
    caller.require(Role::Approver)?;
    let change = load(conn, id).await?;
    if change.author_id == caller.user_id {
        return Err(Error::Forbidden(
            "separation of duties: the author cannot review their own change".into(),
        ));
    }
    refuse_if_frozen(conn, id).await?;
    match change.state()? {
        ChangeState::Submitted | ChangeState::Approved => Ok(change),
        ChangeState::Draft => Err(Error::conflict(
            "not_submitted",
            format!("change {id} is a draft; it must be submitted (again) before review"),
        )),
        other => Err(Error::conflict("change_closed", format!("change {id} is {}", other.as_str()))),
    }
}

/// Signs the change's current content hash.
pub async fn approve(db: &Db, caller: &Caller, id: i64) -> Result<ChangeView> {
    caller.require_recent_password()?;
    let mut tx = db.begin().await?;
    let change = load_for_review(&mut tx, caller, id).await?;
    // The approval is for these shadows: a rollout to another set needs a new one. Approving
    // again (the set changed) records the new set.
    let targets = target_set(&mut tx).await?;
    let digest = target_digest(&mut tx).await?;
    sqlx::query(
        "INSERT INTO approvals (change_id, approver_id, content_hash, created_at, shadows, targets_digest) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (change_id, approver_id, content_hash)
         DO UPDATE SET shadows = excluded.shadows, targets_digest = excluded.targets_digest, created_at = excluded.created_at",
    )
    .bind(id)
    .bind(caller.user_id)
    .bind(&change.content_hash)
    .bind(now())
    .bind(serde_json::to_string(&targets).map_err(|err| Error::Internal(err.to_string()))?)
    .bind(&digest)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE changes SET state = 'approved', updated_at = $1 WHERE id = $2")
        .bind(now())
        .bind(id)
        .execute(&mut *tx)
        .await?;
    audit::append(
        &mut tx,
        &caller.username,
        "change.approve",
        &format!("change/{id}"),
        json!({"content_hash": change.content_hash, "shadows": targets}),
    )
    .await?;
    let view = view_in(&mut tx, id).await?;
    tx.commit().await?;
    Ok(view)
}

/// The identity of the shadows a rollout started now would reach: a digest over each
/// one's name, registration time, driver and address, in name order.
pub(crate) async fn target_digest(conn: &mut AnyConnection) -> Result<String> {
    #[derive(sqlx::FromRow)]
    struct Target {
        name: String,
        created_at: String,
        driver: String,
        url: Option<String>,
        path: Option<String>,
        tls_pin: Option<String>,
    }
    let rows: Vec<Target> = sqlx::query_as("SELECT name, created_at, driver, url, path, tls_pin FROM shadows ORDER BY name")
        .fetch_all(conn)
        .await?;
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"etc-shadow approval targets v1\0");
    for row in rows {
        for part in [
            Some(row.name),
            Some(row.created_at),
            Some(row.driver),
            row.url,
            row.path,
            row.tls_pin,
        ] {
            let part = part.unwrap_or_default();
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// Whether change `change` has an approval of its current content for the shadows
/// registered now (approvals from before approvals recorded their targets count for any).
pub(crate) async fn approved_for_targets(conn: &mut AnyConnection, change: &ChangeRow) -> Result<bool> {
    let digest = target_digest(conn).await?;
    let names = serde_json::to_string(&target_set(conn).await?).map_err(|err| Error::Internal(err.to_string()))?;
    let (n,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM approvals WHERE change_id = $1 AND content_hash = $2
         AND (targets_digest = $3 OR (targets_digest IS NULL AND (shadows IS NULL OR shadows = $4)))",
    )
    .bind(change.id)
    .bind(&change.content_hash)
    .bind(&digest)
    .bind(&names)
    .fetch_one(conn)
    .await?;
    Ok(n > 0)
}

/// The shadows a rollout started now would reach: every registered one, by name.
pub(crate) async fn target_set(conn: &mut AnyConnection) -> Result<Vec<String>> {
    Ok(sqlx::query_as::<_, (String,)>("SELECT name FROM shadows ORDER BY name")
        .fetch_all(conn)
        .await?
        .into_iter()
        .map(|(name,)| name)
        .collect())
}

pub async fn reject(db: &Db, caller: &Caller, id: i64, reason: &str) -> Result<ChangeView> {
    let reason = reason.trim();
    if reason.is_empty() || reason.len() > MAX_MESSAGE_LEN {
        return Err(Error::BadRequest("a rejection needs a reason (at most 4000 bytes)".into()));
    }
    let mut tx = db.begin().await?;
    let change = load_for_review(&mut tx, caller, id).await?;
    sqlx::query("UPDATE changes SET state = 'rejected', rejected_by = $1, reject_reason = $2, updated_at = $3 WHERE id = $4")
        .bind(caller.user_id)
        .bind(reason)
        .bind(now())
        .bind(id)
        .execute(&mut *tx)
        .await?;
    audit::append(
        &mut tx,
        &caller.username,
        "change.reject",
        &format!("change/{id}"),
        json!({"content_hash": change.content_hash, "reason": reason}),
    )
    .await?;
    let view = view_in(&mut tx, id).await?;
    tx.commit().await?;
    Ok(view)
}

pub(crate) async fn approvals(conn: &mut AnyConnection, change: &ChangeRow) -> Result<Vec<ApprovalView>> {
    let rows: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT u.username, a.created_at, a.content_hash, a.shadows FROM approvals a JOIN users u ON u.id = a.approver_id WHERE a.change_id = $1 ORDER BY a.id",
    )
    .bind(change.id)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(approver, created_at, content_hash, shadows)| ApprovalView {
            valid: content_hash == change.content_hash,
            approver,
            created_at,
            content_hash,
            shadows: shadows.and_then(|text| serde_json::from_str(&text).ok()),
        })
        .collect())
}

async fn view_in(conn: &mut AnyConnection, id: i64) -> Result<ChangeView> {
    let change = load(conn, id).await?;
    let entries = operations(conn, id)
        .await?
        .into_iter()
        .map(|row| ChangeEntryView {
            entry: row.entry.view(),
            op: row.op,
        })
        .collect();
    let approvals = approvals(conn, &change).await?;
    let current_revision = revisions::current_number(conn).await?;
    Ok(ChangeView {
        summary: change.summary()?,
        entries,
        approvals,
        rejected_by: change.rejected_by.clone(),
        reject_reason: change.reject_reason.clone(),
        current_revision,
        staged_ahead: Vec::new(),
    })
}

pub async fn get(db: &Db, id: i64) -> Result<ChangeView> {
    let mut conn = db.read.acquire().await?;
    view_in(&mut conn, id).await
}

/// Newest first, optionally by state; `before` is the previous page's `next` cursor.
pub async fn list(db: &Db, state: Option<ChangeState>, before: Option<i64>, limit: Option<i64>) -> Result<Page<ChangeSummary>> {
    let limit = limit.unwrap_or(50).clamp(1, 500);
    let rows: Vec<ChangeRow> = sqlx::query_as(&format!(
        "{CHANGE_SELECT} WHERE ($1 IS NULL OR c.state = $1) AND ($2 IS NULL OR c.id < $2) ORDER BY c.id DESC LIMIT $3"
    ))
    .bind(state.map(ChangeState::as_str))
    .bind(before)
    .bind(limit + 1)
    .fetch_all(&db.read)
    .await?;
    let items = rows.iter().map(ChangeRow::summary).collect::<Result<Vec<_>>>()?;
    Ok(page(items, limit, |c| c.id))
}

/// The change's diff against its base revision.
pub async fn diff(db: &Db, id: i64) -> Result<DiffView> {
    let mut conn = db.read.acquire().await?;
    let change = load(&mut conn, id).await?;
    let base = revisions::entries(&mut conn, change.base_revision).await?;
    let ops = operations(&mut conn, id).await?;
    let after = apply(&base, &ops);
    let entries = revisions::diff_sets(&mut conn, db, &base, &after, false).await?;
    Ok(DiffView {
        from: format!("revision {}", change.base_revision),
        to: format!("change {id}"),
        entries,
    })
}

/// One page of the change's diff against its base revision: at most `limit` entries
/// (1 to 500) after the path `after`, in path order, with how many differ in all. Only the
/// page's entries are read and diffed, so a change of 10,000 entries costs what its page
/// does.
pub async fn diff_page(db: &Db, id: i64, after: Option<&str>, limit: usize) -> Result<DiffPage> {
    let limit = limit.clamp(1, 500);
    let mut conn = db.read.acquire().await?;
    let change = load(&mut conn, id).await?;
    let base = revisions::entries(&mut conn, change.base_revision).await?;
    let ops = operations(&mut conn, id).await?;
    let next_set = apply(&base, &ops);
    let paths = revisions::differing(&base, &next_set, false);
    let total = paths.len();
    let window: Vec<&String> = paths
        .into_iter()
        .filter(|path| after.is_none_or(|after| path.as_str() > after))
        .take(limit + 1)
        .collect();
    let more = window.len() > limit;
    let mut entries = Vec::with_capacity(limit);
    for path in window.into_iter().take(limit) {
        entries.push(revisions::describe(&mut conn, db, &base, &next_set, path).await?);
    }
    Ok(DiffPage {
        from: format!("revision {}", change.base_revision),
        to: format!("change {id}"),
        total,
        next: if more { entries.last().map(|e| e.path.clone()) } else { None },
        entries,
    })
}

/// The content a change puts at `path`, for the editor; `None` when the change does not
/// put that path or the entry is secret.
pub async fn entry_content(db: &Db, id: i64, path: &str) -> Result<Option<String>> {
    let path = parse_path(path)?;
    let mut conn = db.read.acquire().await?;
    load(&mut conn, id).await?;
    let row: Option<(Option<String>, crate::db::Flag, String)> =
        sqlx::query_as("SELECT blob, secret, format FROM change_entries WHERE change_id = $1 AND path = $2 AND op = 'put'")
            .bind(id)
            .bind(path.as_str())
            .fetch_optional(&mut *conn)
            .await?;
    match row {
        Some((Some(hash), crate::db::Flag(false), format)) => {
            let text = String::from_utf8_lossy(&revisions::blob(&mut conn, &db.keys, &hash).await?).into_owned();
            Ok(Some(crate::secrets::redact(db, &format, &text)))
        }
        _ => Ok(None),
    }
}
