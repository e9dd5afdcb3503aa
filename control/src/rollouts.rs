//! Rollouts: turning an approved change into the next revision.
//!
//! The rollout journal is the `rollouts` and `rollout_shadows` tables. With no shadows
//! registered, the decision and the new revision are written in one transaction and the
//! rollout is `applied` at once; shadows add the two-phase path on the same records.

use crate::{
    Caller, Db, Error, Result, audit,
    audit::page,
    changes::{self, ChangeRow},
    now,
    revisions::{self, EntrySet},
};
use domain::{
    EntryPath, Hash, Role,
    api::{ChangeState, Page, RolloutShadowView, RolloutView},
    hash::root_hash,
};
use serde_json::json;
use sqlx::SqliteConnection;

/// Root hash of an entry set as stored.
pub(crate) fn root_of(entries: &EntrySet) -> Result<Hash> {
    let parsed: Vec<(EntryPath, Hash)> = entries
        .values()
        .map(|row| {
            let path =
                EntryPath::parse(&row.path).map_err(|err| Error::Internal(format!("stored path {:?} is invalid: {err}", row.path)))?;
            let hash = Hash::from_hex(&row.entry_hash).map_err(|_| Error::Internal(format!("stored hash of {} is invalid", row.path)))?;
            Ok((path, hash))
        })
        .collect::<Result<_>>()?;
    Ok(root_hash(parsed.iter().map(|(path, hash)| (path, *hash))))
}

/// Refuses unless the change is approved by a still-valid approval and based on the
/// current revision.
async fn check_rollable(conn: &mut SqliteConnection, change: &ChangeRow) -> Result<i64> {
    let approvals = changes::approvals(conn, change).await?;
    match change.state()? {
        ChangeState::Approved if approvals.iter().any(|a| a.valid) => {}
        ChangeState::Approved => {
            return Err(Error::conflict(
                "approval_voided",
                "the change was edited after its approval; it needs a new approval",
            ));
        }
        ChangeState::Draft if !approvals.is_empty() => {
            return Err(Error::conflict(
                "approval_voided",
                format!("change {} was edited after approval; submit it and get a new approval", change.id),
            ));
        }
        ChangeState::RolledOut => {
            return Err(Error::conflict(
                "already_rolled_out",
                format!("change {} is already rolled out", change.id),
            ));
        }
        other => {
            return Err(Error::conflict(
                "not_approved",
                format!("change {} is {} and not approved", change.id, other.as_str()),
            ));
        }
    }
    let current = revisions::current_number(conn).await?;
    if current != change.base_revision {
        return Err(Error::conflict(
            "stale_base",
            format!(
                "change {} is based on revision {} but the current revision is {current}; rebase it",
                change.id, change.base_revision
            ),
        ));
    }
    let (running,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM rollouts WHERE state IN ('preparing', 'committing')")
        .fetch_one(&mut *conn)
        .await?;
    if running > 0 {
        return Err(Error::conflict("rollout_running", "another rollout is in progress"));
    }
    Ok(current)
}

/// Rolls out an approved change: writes the next revision and makes it current.
pub async fn start(db: &Db, caller: &Caller, change_id: i64) -> Result<RolloutView> {
    caller.require(Role::Approver)?;
    let mut tx = db.begin().await?;
    let change = changes::load(&mut tx, change_id).await?;
    let current = check_rollable(&mut tx, &change).await?;
    let base = revisions::entries(&mut tx, current).await?;
    let ops = changes::operations(&mut tx, change_id).await?;
    let next = changes::apply(&base, &ops);
    let root = root_of(&next)?.to_hex();
    let number = current + 1;
    let at = now();
    sqlx::query("INSERT INTO revisions (number, root, parent, author, message, created_at, change_id) VALUES (?, ?, ?, ?, ?, ?, ?)")
        .bind(number)
        .bind(&root)
        .bind(current)
        .bind(&change.author)
        .bind(&change.message)
        .bind(&at)
        .bind(change_id)
        .execute(&mut *tx)
        .await?;
    for row in next.values() {
        sqlx::query(
            "INSERT INTO revision_entries (revision, path, blob, format, mode, owner, grp, secret, size, entry_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(number)
        .bind(&row.path)
        .bind(&row.blob)
        .bind(&row.format)
        .bind(row.mode)
        .bind(&row.owner)
        .bind(&row.grp)
        .bind(row.secret)
        .bind(row.size)
        .bind(&row.entry_hash)
        .execute(&mut *tx)
        .await?;
    }
    let (rollout_id,): (i64,) = sqlx::query_as(
        "INSERT INTO rollouts (change_id, kind, revision, root, state, decision, started_by, started_at, finished_at)
         VALUES (?, 'change', ?, ?, 'applied', 'commit', ?, ?, ?) RETURNING id",
    )
    .bind(change_id)
    .bind(number)
    .bind(&root)
    .bind(&caller.username)
    .bind(&at)
    .bind(&at)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("UPDATE changes SET state = 'rolled_out', revision = ?, updated_at = ? WHERE id = ?")
        .bind(number)
        .bind(&at)
        .bind(change_id)
        .execute(&mut *tx)
        .await?;
    audit::append(
        &mut tx,
        &caller.username,
        "rollout.applied",
        &format!("rollout/{rollout_id}"),
        json!({"change": change_id, "revision": number, "root": root, "content_hash": change.content_hash, "shadows": []}),
    )
    .await?;
    let view = view_in(&mut tx, rollout_id).await?;
    tx.commit().await?;
    Ok(view)
}

#[derive(sqlx::FromRow)]
struct RolloutRow {
    id: i64,
    change_id: Option<i64>,
    kind: String,
    state: String,
    revision: i64,
    root: String,
    started_by: String,
    started_at: String,
    finished_at: Option<String>,
    error: Option<String>,
}

const ROLLOUT_SELECT: &str = "SELECT id, change_id, kind, state, revision, root, started_by, started_at, finished_at, error FROM rollouts";

async fn with_shadows(conn: &mut SqliteConnection, row: RolloutRow) -> Result<RolloutView> {
    let shadows: Vec<(String, String, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT shadow, phase, receipt_root, error FROM rollout_shadows WHERE rollout_id = ? ORDER BY shadow")
            .bind(row.id)
            .fetch_all(conn)
            .await?;
    Ok(RolloutView {
        id: row.id,
        change_id: row.change_id,
        kind: row.kind,
        state: row.state,
        revision: row.revision,
        root: row.root,
        started_by: row.started_by,
        started_at: row.started_at,
        finished_at: row.finished_at,
        error: row.error,
        shadows: shadows
            .into_iter()
            .map(|(name, phase, receipt_root, error)| RolloutShadowView {
                name,
                phase,
                receipt_root,
                error,
            })
            .collect(),
    })
}

async fn view_in(conn: &mut SqliteConnection, id: i64) -> Result<RolloutView> {
    let row: RolloutRow = sqlx::query_as(&format!("{ROLLOUT_SELECT} WHERE id = ?"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no rollout {id}")))?;
    with_shadows(conn, row).await
}

pub async fn get(db: &Db, id: i64) -> Result<RolloutView> {
    let mut conn = db.read.acquire().await?;
    view_in(&mut conn, id).await
}

pub async fn list(db: &Db, before: Option<i64>, limit: Option<i64>) -> Result<Page<RolloutView>> {
    let limit = limit.unwrap_or(50).clamp(1, 500);
    let mut conn = db.read.acquire().await?;
    let rows: Vec<RolloutRow> = sqlx::query_as(&format!("{ROLLOUT_SELECT} WHERE (?1 IS NULL OR id < ?1) ORDER BY id DESC LIMIT ?2"))
        .bind(before)
        .bind(limit + 1)
        .fetch_all(&mut *conn)
        .await?;
    let mut items = Vec::new();
    for row in rows {
        items.push(with_shadows(&mut conn, row).await?);
    }
    Ok(page(items, limit, |r| r.id))
}
