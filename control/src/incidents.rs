//! Drift incidents: one durable record per drift episode on one shadow, with the entries
//! that differ and a timeline. The drift monitor opens, updates and self-resolves them;
//! people acknowledge, adopt or resolve them.

use crate::{Caller, Db, Error, Result, audit, audit::page, now, webhooks};
use domain::{
    Role,
    api::{IncidentEvent, IncidentNotice, IncidentView, Page},
    drift::{DriftKind, EntryDrift},
};
use serde_json::json;
use sqlx::AnyConnection;
use std::collections::BTreeSet;

/// The drift kinds only: a shadow's drift episode is one incident, and the incidents of
/// failed reloads and drills live beside it (see [`open_operation`]).
const DRIFT_ONLY: &str = "kind NOT IN ('reload_failed', 'drill_failed')";

/// What one check found on one shadow that differs from what it should hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kinds: BTreeSet<DriftKind>,
    pub entries: Vec<EntryDrift>,
    pub expected_root: String,
    pub observed_root: Option<String>,
    /// Words for the timeline (a refusal's message, a check's error).
    pub detail: Option<String>,
}

impl Finding {
    /// A digest of what differs: repeated checks that see the same thing change nothing.
    fn fingerprint(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        for kind in &self.kinds {
            hasher.update(kind.as_str().as_bytes());
            hasher.update(b"\0");
        }
        hasher.update(self.observed_root.as_deref().unwrap_or("-").as_bytes());
        for entry in &self.entries {
            for part in [
                Some(entry.path.as_str()),
                Some(entry.kind.as_str()),
                entry.observed_hash.as_deref(),
                entry.observed_policy.as_deref(),
            ] {
                hasher.update(part.unwrap_or("-").as_bytes());
                hasher.update(b"\0");
            }
        }
        hasher.finalize().to_hex().to_string()
    }
}

#[derive(sqlx::FromRow)]
struct EntryRow {
    path: String,
    kind: String,
    expected_hash: Option<String>,
    observed_hash: Option<String>,
    expected_policy: Option<String>,
    observed_policy: Option<String>,
}

#[derive(sqlx::FromRow)]
struct IncidentRow {
    id: i64,
    shadow: String,
    kind: String,
    kinds: String,
    severity: String,
    status: String,
    opened_at: String,
    last_seen_at: String,
    resolved_at: Option<String>,
    resolution: Option<String>,
    expected_root: String,
    observed_root: Option<String>,
    detected_by: String,
    recent: i64,
}

/// The incident columns and how many incidents of its kind (drift, or a failed reload or
/// drill) the shadow had in the hour before each opened; `FROM` follows.
fn incident_select(db: &Db) -> String {
    format!(
        "SELECT i.id, i.shadow, i.kind, i.kinds, i.severity, i.status, i.opened_at, i.last_seen_at, i.resolved_at,
    i.resolution, i.expected_root, i.observed_root, i.detected_by,
    (SELECT COUNT(*) FROM incidents p WHERE p.shadow = i.shadow AND p.id < i.id AND p.opened_at >= {}
        AND (p.kind IN ('reload_failed', 'drill_failed')) = (i.kind IN ('reload_failed', 'drill_failed'))) AS recent
    FROM",
        crate::dialect::hour_before(db, "i.opened_at")
    )
}

impl From<IncidentRow> for IncidentView {
    fn from(row: IncidentRow) -> Self {
        IncidentView {
            id: row.id,
            shadow: row.shadow,
            kind: row.kind,
            kinds: row.kinds.split(',').filter(|k| !k.is_empty()).map(str::to_string).collect(),
            severity: row.severity,
            status: row.status,
            opened_at: row.opened_at,
            last_seen_at: row.last_seen_at,
            resolved_at: row.resolved_at,
            resolution: row.resolution,
            expected_root: row.expected_root,
            observed_root: row.observed_root,
            detected_by: row.detected_by,
            flapping: row.recent >= 2,
            entries: Vec::new(),
            timeline: Vec::new(),
        }
    }
}

/// What a webhook is told of an incident: never entry contents, only names and kinds.
fn hook_data(id: i64, shadow: &str, kind: &str, kinds: &BTreeSet<DriftKind>, status: &str) -> serde_json::Value {
    json!({"incident": id, "shadow": shadow, "kind": kind, "kinds": kinds, "status": status})
}

fn notice(id: i64, shadow: &str, kind: &str, status: &str, change: &str) -> IncidentNotice {
    IncidentNotice {
        id,
        shadow: shadow.to_string(),
        kind: kind.to_string(),
        status: status.to_string(),
        change: change.to_string(),
    }
}

/// A "changed" event within this long of the previous one replaces it (counted), so a file
/// that keeps changing does not grow the timeline, or the webhook queue, by one row each time.
const COALESCE_CHANGES: time::Duration = time::Duration::minutes(1);

/// Folds a change of picture into the incident's latest event when that is a recent
/// "changed" one: its time and details become the newest, `changes` counts them. Answers
/// whether it did.
async fn coalesce_change(conn: &mut AnyConnection, incident: i64, details: &serde_json::Value) -> Result<bool> {
    let last: Option<(i64, String, String, String)> =
        sqlx::query_as("SELECT id, event, at, details FROM incident_events WHERE incident_id = $1 ORDER BY id DESC LIMIT 1")
            .bind(incident)
            .fetch_optional(&mut *conn)
            .await?;
    let Some((event_id, event, at, previous)) = last else {
        return Ok(false);
    };
    let recent = time::OffsetDateTime::parse(&at, &time::format_description::well_known::Rfc3339)
        .is_ok_and(|at| time::OffsetDateTime::now_utc() - at < COALESCE_CHANGES);
    if event != "changed" || !recent {
        return Ok(false);
    }
    let count = serde_json::from_str::<serde_json::Value>(&previous)
        .ok()
        .and_then(|p| p.get("changes").and_then(serde_json::Value::as_i64))
        .unwrap_or(1);
    let mut details = details.clone();
    details["changes"] = json!(count + 1);
    sqlx::query("UPDATE incident_events SET at = $1, details = $2 WHERE id = $3")
        .bind(now())
        .bind(details.to_string())
        .bind(event_id)
        .execute(&mut *conn)
        .await?;
    Ok(true)
}

/// Resolves the open incidents of a shadow that is being removed (inside its removal's
/// transaction): nobody can reconcile or adopt on a shadow that no longer exists.
pub(crate) async fn close_for_removed_shadow(tx: &mut crate::db::Tx, shadow: &str, actor: &str) -> Result<()> {
    let open: Vec<(i64,)> = sqlx::query_as("SELECT id FROM incidents WHERE shadow = $1 AND status != 'resolved'")
        .bind(shadow)
        .fetch_all(&mut **tx)
        .await?;
    for (id,) in open {
        close(tx, id, actor, "shadow_removed", json!({"resolution": "shadow_removed"})).await?;
    }
    Ok(())
}

async fn add_event(conn: &mut AnyConnection, incident: i64, actor: &str, event: &str, details: serde_json::Value) -> Result<()> {
    sqlx::query("INSERT INTO incident_events (incident_id, at, actor, event, details) VALUES ($1, $2, $3, $4, $5)")
        .bind(incident)
        .bind(now())
        .bind(actor)
        .bind(event)
        .bind(details.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

async fn replace_entries(conn: &mut AnyConnection, incident: i64, entries: &[EntryDrift]) -> Result<()> {
    sqlx::query("DELETE FROM incident_entries WHERE incident_id = $1")
        .bind(incident)
        .execute(&mut *conn)
        .await?;
    for entry in entries {
        sqlx::query(
            "INSERT INTO incident_entries (incident_id, path, kind, expected_hash, observed_hash, expected_policy, observed_policy)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(incident)
        .bind(&entry.path)
        .bind(entry.kind.as_str())
        .bind(&entry.expected_hash)
        .bind(&entry.observed_hash)
        .bind(&entry.expected_policy)
        .bind(&entry.observed_policy)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

fn kinds_text(kinds: &BTreeSet<DriftKind>) -> String {
    kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(",")
}

fn entries_summary(entries: &[EntryDrift]) -> serde_json::Value {
    json!(
        entries
            .iter()
            .take(50)
            .map(|e| json!({"path": e.path, "kind": e.kind}))
            .collect::<Vec<_>>()
    )
}

/// Opens an incident for a drifted shadow, or updates the open one; nothing when the
/// same drift is seen again. `via` is `poll` or `event`.
pub async fn record(db: &Db, shadow: &str, finding: &Finding, via: &str) -> Result<Option<IncidentNotice>> {
    let Some(&worst) = finding.kinds.first() else {
        return Ok(None);
    };
    let fingerprint = finding.fingerprint();
    let at = now();
    let mut tx = db.begin().await?;
    let open: Option<(i64, String, String)> = sqlx::query_as(&format!(
        "SELECT id, kinds, fingerprint FROM incidents WHERE shadow = $1 AND status != 'resolved' AND {DRIFT_ONLY}"
    ))
    .bind(shadow)
    .fetch_optional(&mut *tx)
    .await?;
    let result = match open {
        None => {
            let (id,): (i64,) = sqlx::query_as(
                "INSERT INTO incidents (shadow, kind, kinds, severity, status, opened_at, last_seen_at, expected_root, observed_root, detected_by, fingerprint)
                 VALUES ($1, $2, $3, $4, 'open', $5, $6, $7, $8, $9, $10) RETURNING id",
            )
            .bind(shadow)
            .bind(worst.as_str())
            .bind(kinds_text(&finding.kinds))
            .bind(worst.severity())
            .bind(&at)
            .bind(&at)
            .bind(&finding.expected_root)
            .bind(&finding.observed_root)
            .bind(via)
            .bind(&fingerprint)
            .fetch_one(&mut *tx)
            .await?;
            replace_entries(&mut tx, id, &finding.entries).await?;
            let details = json!({"kinds": finding.kinds, "via": via, "expected_root": finding.expected_root,
                "observed_root": finding.observed_root, "entries": entries_summary(&finding.entries), "detail": finding.detail});
            add_event(&mut tx, id, "monitor", "detected", details.clone()).await?;
            audit::append(
                &mut tx,
                "monitor",
                "incident.open",
                &format!("incident/{id}"),
                json!({"shadow": shadow, "kinds": finding.kinds}),
            )
            .await?;
            webhooks::enqueue(
                &mut tx,
                "incident.opened",
                hook_data(id, shadow, worst.as_str(), &finding.kinds, "open"),
            )
            .await?;
            Some(notice(id, shadow, worst.as_str(), "open", "opened"))
        }
        Some((id, _, seen)) if seen == fingerprint => {
            sqlx::query("UPDATE incidents SET last_seen_at = $1 WHERE id = $2")
                .bind(&at)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            None
        }
        Some((id, kinds, _)) => {
            // The episode goes on with a different picture: every kind seen is kept.
            let mut all: BTreeSet<DriftKind> = kinds.split(',').filter_map(DriftKind::parse).collect();
            all.extend(finding.kinds.iter().copied());
            let worst = *all.first().unwrap_or(&worst);
            sqlx::query(
                "UPDATE incidents SET kind = $1, kinds = $2, severity = $3, last_seen_at = $4, observed_root = $5, expected_root = $6, fingerprint = $7 WHERE id = $8",
            )
            .bind(worst.as_str())
            .bind(kinds_text(&all))
            .bind(worst.severity())
            .bind(&at)
            .bind(&finding.observed_root)
            .bind(&finding.expected_root)
            .bind(&fingerprint)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            replace_entries(&mut tx, id, &finding.entries).await?;
            let details = json!({"kinds": finding.kinds, "observed_root": finding.observed_root,
                "entries": entries_summary(&finding.entries), "detail": finding.detail});
            let coalesced = coalesce_change(&mut tx, id, &details).await?;
            if !coalesced {
                add_event(&mut tx, id, "monitor", "changed", details).await?;
            }
            let (status,): (String,) = sqlx::query_as("SELECT status FROM incidents WHERE id = $1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
            if !coalesced {
                webhooks::enqueue(&mut tx, "incident.updated", hook_data(id, shadow, worst.as_str(), &all, &status)).await?;
            }
            Some(notice(id, shadow, worst.as_str(), &status, "updated"))
        }
    };
    tx.commit().await?;
    Ok(result)
}

/// The shadow still serves exactly what its open incident recorded (same expected and
/// observed roots, so the same differences): the incident is touched, nothing else.
/// Answers whether there was such an incident.
pub async fn seen_again(db: &Db, shadow: &str, expected_root: &str, observed_root: &str) -> Result<bool> {
    let mut tx = db.begin().await?;
    let done = sqlx::query(
        &format!("UPDATE incidents SET last_seen_at = $1 WHERE shadow = $2 AND status != 'resolved' AND {DRIFT_ONLY} AND expected_root = $3 AND observed_root = $4"),
    )
    .bind(now())
    .bind(shadow)
    .bind(expected_root)
    .bind(observed_root)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(done.rows_affected() > 0)
}

/// The shadow holds what it should: its open incident, if any, is resolved — as
/// `reconciled` when a reconcile or rollout reached it since the incident opened,
/// otherwise as `self_healed` (kept for review).
pub async fn resolve_in_sync(db: &Db, shadow: &str) -> Result<Option<IncidentNotice>> {
    let mut tx = db.begin().await?;
    let open: Option<(i64, String, String)> = sqlx::query_as(&format!(
        "SELECT id, kind, opened_at FROM incidents WHERE shadow = $1 AND status != 'resolved' AND {DRIFT_ONLY}"
    ))
    .bind(shadow)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((id, kind, opened_at)) = open else {
        return Ok(None);
    };
    let (pushed,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM rollout_shadows rs JOIN rollouts r ON r.id = rs.rollout_id
         WHERE rs.shadow = $1 AND rs.phase = 'committed' AND rs.updated_at >= $2",
    )
    .bind(shadow)
    .bind(&opened_at)
    .fetch_one(&mut *tx)
    .await?;
    let resolution = if pushed > 0 { "reconciled" } else { "self_healed" };
    close(&mut tx, id, "monitor", resolution, json!({"resolution": resolution})).await?;
    tx.commit().await?;
    Ok(Some(notice(id, shadow, &kind, "resolved", "resolved")))
}

async fn close(tx: &mut crate::db::Tx, id: i64, actor: &str, resolution: &str, details: serde_json::Value) -> Result<()> {
    let (shadow, kind, kinds): (String, String, String) = sqlx::query_as(
        "UPDATE incidents SET status = 'resolved', resolution = $1, resolved_at = $2 WHERE id = $3 RETURNING shadow, kind, kinds",
    )
    .bind(resolution)
    .bind(now())
    .bind(id)
    .fetch_one(&mut **tx)
    .await?;
    let kinds: BTreeSet<DriftKind> = kinds.split(',').filter_map(DriftKind::parse).collect();
    let mut data = hook_data(id, &shadow, &kind, &kinds, "resolved");
    data["resolution"] = json!(resolution);
    webhooks::enqueue(tx, "incident.resolved", data).await?;
    add_event(tx, id, actor, "resolved", details.clone()).await?;
    audit::append(tx, actor, "incident.resolve", &format!("incident/{id}"), details).await?;
    Ok(())
}

/// An operation on a shadow failed (its reload hook after a commit, a drill): opens an
/// incident of that kind, or adds to the timeline of the one still unresolved. Inside the
/// caller's transaction, with its audit row and webhook.
pub(crate) async fn open_operation(
    tx: &mut crate::db::Tx,
    shadow: &str,
    kind: DriftKind,
    expected_root: &str,
    observed_root: Option<&str>,
    details: serde_json::Value,
) -> Result<IncidentNotice> {
    debug_assert!(!kind.is_drift());
    let at = now();
    let via = if kind == DriftKind::ReloadFailed { "rollout" } else { "drill" };
    let open: Option<(i64, String)> =
        sqlx::query_as("SELECT id, status FROM incidents WHERE shadow = $1 AND kind = $2 AND status != 'resolved'")
            .bind(shadow)
            .bind(kind.as_str())
            .fetch_optional(&mut **tx)
            .await?;
    if let Some((id, status)) = open {
        sqlx::query("UPDATE incidents SET last_seen_at = $1, expected_root = $2, observed_root = $3 WHERE id = $4")
            .bind(&at)
            .bind(expected_root)
            .bind(observed_root)
            .bind(id)
            .execute(&mut **tx)
            .await?;
        add_event(tx, id, via, "failed_again", details).await?;
        return Ok(notice(id, shadow, kind.as_str(), &status, "updated"));
    }
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO incidents (shadow, kind, kinds, severity, status, opened_at, last_seen_at, expected_root, observed_root, detected_by, fingerprint)
         VALUES ($1, $2, $3, $4, 'open', $5, $6, $7, $8, $9, $10) RETURNING id",
    )
    .bind(shadow)
    .bind(kind.as_str())
    .bind(kind.as_str())
    .bind(kind.severity())
    .bind(&at)
    .bind(&at)
    .bind(expected_root)
    .bind(observed_root)
    .bind(via)
    .bind(blake3::hash(details.to_string().as_bytes()).to_hex().to_string())
    .fetch_one(&mut **tx)
    .await?;
    add_event(tx, id, via, "detected", details).await?;
    audit::append(
        tx,
        via,
        "incident.open",
        &format!("incident/{id}"),
        json!({"shadow": shadow, "kinds": [kind]}),
    )
    .await?;
    let kinds = BTreeSet::from([kind]);
    webhooks::enqueue(tx, "incident.opened", hook_data(id, shadow, kind.as_str(), &kinds, "open")).await?;
    Ok(notice(id, shadow, kind.as_str(), "open", "opened"))
}

/// The operation that had failed on `shadow` passed now (a reload, a drill): its
/// unresolved incident of `kind`, if any, is resolved as `self_healed`.
pub(crate) async fn operation_passed(
    tx: &mut crate::db::Tx,
    shadow: &str,
    kind: DriftKind,
    details: serde_json::Value,
) -> Result<Option<IncidentNotice>> {
    let open: Option<(i64,)> = sqlx::query_as("SELECT id FROM incidents WHERE shadow = $1 AND kind = $2 AND status != 'resolved'")
        .bind(shadow)
        .bind(kind.as_str())
        .fetch_optional(&mut **tx)
        .await?;
    let Some((id,)) = open else { return Ok(None) };
    let actor = if kind == DriftKind::ReloadFailed { "rollout" } else { "drill" };
    let mut details = details;
    details["resolution"] = json!("self_healed");
    close(tx, id, actor, "self_healed", details).await?;
    Ok(Some(notice(id, shadow, kind.as_str(), "resolved", "resolved")))
}

/// Timeline entries for a reconcile of `shadow` (started, finished), on its open incident.
pub async fn note_reconcile(db: &Db, shadow: &str, actor: &str, event: &str, details: serde_json::Value) -> Result<()> {
    let mut tx = db.begin().await?;
    note_reconcile_in(&mut tx, shadow, actor, event, details).await?;
    tx.commit().await?;
    Ok(())
}

/// [`note_reconcile`] inside a transaction (the one that starts the reconcile).
pub(crate) async fn note_reconcile_in(
    conn: &mut AnyConnection,
    shadow: &str,
    actor: &str,
    event: &str,
    details: serde_json::Value,
) -> Result<()> {
    let open: Option<(i64,)> = sqlx::query_as(&format!(
        "SELECT id FROM incidents WHERE shadow = $1 AND status != 'resolved' AND {DRIFT_ONLY}"
    ))
    .bind(shadow)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some((id,)) = open {
        add_event(conn, id, actor, event, details).await?;
    }
    Ok(())
}

/// Filters of the incident list; every field optional.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct IncidentFilter {
    pub status: Option<String>,
    pub kind: Option<String>,
    pub shadow: Option<String>,
    /// Opened at or after (RFC 3339).
    pub since: Option<String>,
    /// Opened before (RFC 3339).
    pub until: Option<String>,
    /// The cursor: the `next` of the previous page.
    pub page: Option<i64>,
    pub limit: Option<i64>,
}

pub async fn list(db: &Db, filter: &IncidentFilter) -> Result<Page<IncidentView>> {
    if let Some(status) = filter.status.as_deref().filter(|s| !s.is_empty())
        && !["open", "acknowledged", "resolved", "unresolved"].contains(&status)
    {
        return Err(Error::BadRequest(format!("unknown incident status {status:?}")));
    }
    if let Some(kind) = filter.kind.as_deref().filter(|k| !k.is_empty())
        && DriftKind::parse(kind).is_none()
    {
        return Err(Error::BadRequest(format!("unknown incident kind {kind:?}")));
    }
    for (name, value) in [("since", &filter.since), ("until", &filter.until)] {
        if let Some(value) = value.as_deref().filter(|v| !v.is_empty())
            && time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339).is_err()
        {
            return Err(Error::BadRequest(format!(
                "{name} must be an RFC 3339 time, such as 2026-11-25T00:00:00Z"
            )));
        }
    }
    let limit = filter.limit.unwrap_or(50).clamp(1, 500);
    let empty = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
    // Keyset paging on the primary key: as fast on the 100,000th incident as on the first.
    // Only the filters given become conditions, so SQLite can pick the index that fits
    // (`?1 IS NULL OR ...` would hide them from the planner).
    let mut conditions = vec!["1 = 1".to_string()];
    let mut texts = Vec::new();
    // Placeholders are numbered in the order they are bound: the cursor, the text
    // filters, the limit.
    let mut next = 0;
    let mut placeholder = || {
        next += 1;
        format!("${next}")
    };
    if filter.page.is_some() {
        conditions.push(format!("i.id < {}", placeholder()));
    }
    match empty(&filter.status).as_deref() {
        None => {}
        Some("unresolved") => conditions.push("i.status != 'resolved'".into()),
        Some(status) => {
            conditions.push(format!("i.status = {}", placeholder()));
            texts.push(status.to_string());
        }
    }
    if let Some(kind) = empty(&filter.kind) {
        let (one, listed) = (placeholder(), placeholder());
        conditions.push(format!(
            "(i.kind = {one} OR {}(',' || i.kinds || ',', ',' || {listed} || ',') > 0)",
            crate::dialect::find(db)
        ));
        texts.push(kind.clone());
        texts.push(kind);
    }
    for (value, column) in [
        (&filter.shadow, "i.shadow ="),
        (&filter.since, "i.opened_at >="),
        (&filter.until, "i.opened_at <"),
    ] {
        if let Some(value) = empty(value) {
            conditions.push(format!("{column} {}", placeholder()));
            texts.push(value);
        }
    }
    // The page is chosen first; the flapping count is then computed for its rows only.
    let sql = format!(
        "{} (SELECT * FROM incidents i WHERE {} ORDER BY i.id DESC LIMIT {}) i ORDER BY i.id DESC",
        incident_select(db),
        conditions.join(" AND "),
        placeholder()
    );
    let mut query = sqlx::query_as::<_, IncidentRow>(&sql);
    if let Some(cursor) = filter.page {
        query = query.bind(cursor);
    }
    for text in texts {
        query = query.bind(text);
    }
    let query = query.bind(limit + 1);
    let rows = query.fetch_all(&db.read).await?;
    Ok(page(rows.into_iter().map(IncidentView::from).collect(), limit, |i| i.id))
}

pub async fn get(db: &Db, id: i64) -> Result<IncidentView> {
    let mut conn = db.read.acquire().await?;
    let row: IncidentRow = sqlx::query_as(&format!("{} incidents i WHERE i.id = $1", incident_select(db)))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no incident {id}")))?;
    let mut view = IncidentView::from(row);
    let entries: Vec<EntryRow> = sqlx::query_as(
        "SELECT path, kind, expected_hash, observed_hash, expected_policy, observed_policy FROM incident_entries WHERE incident_id = $1 ORDER BY path",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    view.entries = entries
        .into_iter()
        .filter_map(|row| {
            Some(EntryDrift {
                path: row.path,
                kind: DriftKind::parse(&row.kind)?,
                expected_hash: row.expected_hash,
                observed_hash: row.observed_hash,
                expected_policy: row.expected_policy,
                observed_policy: row.observed_policy,
                observed_kind: None,
            })
        })
        .collect();
    let events: Vec<(String, String, String, String)> =
        sqlx::query_as("SELECT at, actor, event, details FROM incident_events WHERE incident_id = $1 ORDER BY id")
            .bind(id)
            .fetch_all(&mut *conn)
            .await?;
    view.timeline = events
        .into_iter()
        .map(|(at, actor, event, details)| IncidentEvent {
            at,
            actor,
            event,
            details: serde_json::from_str(&details).unwrap_or_default(),
        })
        .collect();
    Ok(view)
}

async fn open_incident(tx: &mut crate::db::Tx, id: i64) -> Result<(String, String, String)> {
    let row: (String, String, String) = sqlx::query_as("SELECT shadow, kind, status FROM incidents WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no incident {id}")))?;
    if row.2 == "resolved" {
        return Err(Error::conflict("incident_resolved", format!("incident {id} is already resolved")));
    }
    Ok(row)
}

fn note_of(note: Option<&str>) -> Result<Option<String>> {
    match note.map(str::trim).filter(|n| !n.is_empty()) {
        Some(note) if note.len() > 2000 => Err(Error::BadRequest("a note has at most 2000 characters".into())),
        other => Ok(other.map(str::to_string)),
    }
}

/// Somebody is on it: the incident stays until the shadow is back or it is resolved.
pub async fn acknowledge(db: &Db, caller: &Caller, id: i64, note: Option<&str>) -> Result<(IncidentView, IncidentNotice)> {
    caller.require(Role::Editor)?;
    let note = note_of(note)?;
    let mut tx = db.begin().await?;
    let (shadow, kind, status) = open_incident(&mut tx, id).await?;
    if status == "acknowledged" {
        return Err(Error::conflict(
            "incident_acknowledged",
            format!("incident {id} is already acknowledged"),
        ));
    }
    sqlx::query("UPDATE incidents SET status = 'acknowledged' WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let details = json!({"note": note});
    add_event(&mut tx, id, &caller.username, "acknowledged", details.clone()).await?;
    let (kinds,): (String,) = sqlx::query_as("SELECT kinds FROM incidents WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    let kinds: BTreeSet<DriftKind> = kinds.split(',').filter_map(DriftKind::parse).collect();
    webhooks::enqueue(&mut tx, "incident.updated", hook_data(id, &shadow, &kind, &kinds, "acknowledged")).await?;
    audit::append(
        &mut tx,
        &caller.username,
        "incident.acknowledge",
        &format!("incident/{id}"),
        details,
    )
    .await?;
    tx.commit().await?;
    Ok((get(db, id).await?, notice(id, &shadow, &kind, "acknowledged", "updated")))
}

/// Closes an incident by hand, with a note saying why (the shadow may still differ: the
/// next check opens a new incident if it does).
pub async fn resolve(db: &Db, caller: &Caller, id: i64, note: Option<&str>) -> Result<(IncidentView, IncidentNotice)> {
    caller.require(Role::Approver)?;
    let note = note_of(note)?.ok_or_else(|| Error::BadRequest("resolving by hand needs a note saying why".into()))?;
    let mut tx = db.begin().await?;
    let (shadow, kind, _) = open_incident(&mut tx, id).await?;
    close(
        &mut tx,
        id,
        &caller.username,
        "resolved",
        json!({"resolution": "resolved", "note": note}),
    )
    .await?;
    tx.commit().await?;
    Ok((get(db, id).await?, notice(id, &shadow, &kind, "resolved", "resolved")))
}

/// Records that an adopt made change `change_id` from the shadow's content; the incident
/// stays open until that change is rolled out (the next check then finds the shadow in
/// sync).
pub(crate) async fn note_adopted(tx: &mut crate::db::Tx, id: i64, actor: &str, change_id: i64, paths: &[String]) -> Result<()> {
    let details = json!({"change": change_id, "paths": paths});
    add_event(tx, id, actor, "adopted", details.clone()).await?;
    audit::append(tx, actor, "incident.adopt", &format!("incident/{id}"), details).await?;
    Ok(())
}

/// The incident, checked to be unresolved, for adopting.
pub(crate) async fn for_adopt(db: &Db, id: i64) -> Result<IncidentView> {
    let view = get(db, id).await?;
    if view.status == "resolved" {
        return Err(Error::conflict("incident_resolved", format!("incident {id} is already resolved")));
    }
    Ok(view)
}

/// Incidents opened per day over the last `days` days (UTC), oldest first, with the mean
/// time to resolve of those resolved; days without incidents are included.
pub async fn daily(db: &Db, days: i64) -> Result<Vec<domain::api::IncidentDay>> {
    let first = (time::OffsetDateTime::now_utc().date() - time::Duration::days(days - 1)).to_string();
    let rows: Vec<(String, i64, Option<f64>)> = sqlx::query_as(&format!(
        "SELECT substr(opened_at, 1, 10) AS day, COUNT(*),
                AVG(CASE WHEN resolved_at IS NOT NULL THEN {} END)
         FROM incidents WHERE opened_at >= $1 GROUP BY day ORDER BY day",
        crate::dialect::seconds_between(db, "resolved_at", "opened_at")
    ))
    .bind(first)
    .fetch_all(&db.read)
    .await?;
    let today = time::OffsetDateTime::now_utc().date();
    Ok((0..days)
        .rev()
        .map(|back| {
            let day = (today - time::Duration::days(back)).to_string();
            let found = rows.iter().find(|(d, _, _)| *d == day);
            domain::api::IncidentDay {
                opened: found.map(|(_, n, _)| *n).unwrap_or(0),
                mean_resolve_seconds: found.and_then(|(_, _, mean)| *mean).map(|mean| mean.round() as i64),
                day,
            }
        })
        .collect())
}

/// How many incidents are unresolved.
pub async fn open_count(db: &Db) -> Result<i64> {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM incidents WHERE status != 'resolved'")
        .fetch_one(&db.read)
        .await?;
    Ok(n)
}
