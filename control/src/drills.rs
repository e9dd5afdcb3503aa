//! Drills: proof that a shadow could take over now (DESIGN "Agent hooks and drills").
//!
//! A drill asks the shadow for its live root and for its node's part (the validate hook
//! on the live tree, the health probe N times), judges parity against the current
//! revision here, and keeps all of it as evidence (who, when, each step with its result,
//! output and time) with its audit row, webhook and, when it failed, a `drill_failed`
//! incident, in one transaction. A drill that passes ends such an incident. Drills run on
//! demand (approvers) and on a schedule ([`run_due`], as `scheduler`).

use crate::{
    Caller, Db, Error, Result, audit,
    audit::page,
    now, revisions,
    shadows::{Registry, ShadowError},
};
use domain::{
    Role,
    api::{DrillStep, DrillView, IncidentNotice, Page},
    drift::DriftKind,
    protocol::DrillAnswer,
};
use serde_json::json;
use std::time::Duration;

/// How long a drill may wait for the node (its validate hook and every probe included).
pub const DRILL_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(sqlx::FromRow)]
struct DrillRow {
    id: i64,
    shadow: String,
    requested_by: String,
    started_at: String,
    finished_at: String,
    verdict: String,
    revision: i64,
    expected_root: String,
    observed_root: Option<String>,
    steps: String,
}

impl From<DrillRow> for DrillView {
    fn from(row: DrillRow) -> Self {
        DrillView {
            id: row.id,
            shadow: row.shadow,
            requested_by: row.requested_by,
            started_at: row.started_at,
            finished_at: row.finished_at,
            verdict: row.verdict,
            revision: row.revision,
            expected_root: row.expected_root,
            observed_root: row.observed_root,
            steps: serde_json::from_str(&row.steps).unwrap_or_default(),
        }
    }
}

const DRILL_SELECT: &str =
    "SELECT id, shadow, requested_by, started_at, finished_at, verdict, revision, expected_root, observed_root, steps FROM drills";

fn step(name: &str, status: &str, detail: impl Into<String>) -> DrillStep {
    DrillStep {
        name: name.into(),
        status: status.into(),
        detail: detail.into(),
        run: None,
        requests: None,
        failures: None,
        p50_ms: None,
        p99_ms: None,
    }
}

/// The steps of a drill from the node's answer (or its failure), judged against the
/// current revision's root; hook output masked with `masks`.
fn judge(revision: i64, expected_root: &str, answer: &Result<DrillAnswer, ShadowError>, masks: &[String]) -> Vec<DrillStep> {
    let answer = match answer {
        Ok(answer) => answer,
        Err(err) => {
            return vec![
                step("parity", "failed", format!("the shadow could not be asked: {err}")),
                step("validate", "skipped", "the shadow could not be reached"),
                step("health", "skipped", "the shadow could not be reached"),
            ];
        }
    };
    let parity = if answer.live_root == expected_root {
        step(
            "parity",
            "passed",
            format!("serves the root of revision {revision}, content and policy"),
        )
    } else {
        step(
            "parity",
            "failed",
            format!(
                "serves root {} (revision {}), not revision {revision}'s {expected_root}",
                answer.live_root,
                answer.live_revision.map_or("none".to_string(), |r| r.to_string())
            ),
        )
    };
    let validate = match &answer.validate {
        None => step("validate", "skipped", "the node has no validate hook"),
        Some(run) => {
            let run = crate::hooks::mask(run.clone(), masks);
            let mut s = step(
                "validate",
                if run.ok { "passed" } else { "failed" },
                format!("the validate hook on the live tree: {}", store::hook_end(&run)),
            );
            s.run = Some(run);
            s
        }
    };
    let health = match &answer.health {
        None => step("health", "skipped", "the node has no health probe"),
        Some(probe) => {
            let mut s = step(
                "health",
                if probe.failures == 0 { "passed" } else { "failed" },
                format!(
                    "{} of {} probes healthy; p50 {:.1} ms, p99 {:.1} ms",
                    probe.requests.saturating_sub(probe.failures),
                    probe.requests,
                    probe.p50_ms,
                    probe.p99_ms
                ),
            );
            s.run = Some(crate::hooks::mask(probe.run.clone(), masks));
            s.requests = Some(probe.requests);
            s.failures = Some(probe.failures);
            s.p50_ms = Some(probe.p50_ms);
            s.p99_ms = Some(probe.p99_ms);
            s
        }
    };
    vec![parity, validate, health]
}

/// An approver runs a drill on a shadow now.
pub async fn run(
    db: &Db,
    registry: &Registry,
    caller: &Caller,
    shadow: &str,
    requests: Option<u32>,
) -> Result<(DrillView, Option<IncidentNotice>)> {
    caller.require(Role::Approver)?;
    run_as(db, registry, &caller.username, shadow, requests).await
}

/// Runs a drill on `shadow` for `actor` (a user, `scheduler`, `demo`).
pub async fn run_as(
    db: &Db,
    registry: &Registry,
    actor: &str,
    shadow: &str,
    requests: Option<u32>,
) -> Result<(DrillView, Option<IncidentNotice>)> {
    let requests = requests.unwrap_or(1);
    if !(1..=store::hooks::MAX_PROBES).contains(&requests) {
        return Err(Error::BadRequest(format!(
            "requests is 1 to {} health probes",
            store::hooks::MAX_PROBES
        )));
    }
    crate::shadows::get(db, shadow).await?;
    let (revision, expected_root) = {
        let mut conn = db.read.acquire().await?;
        let revision = revisions::current_number(&mut conn).await?;
        let set = revisions::entries(&mut conn, revision).await?;
        (revision, crate::rollouts::root_of(&set)?.to_hex())
    };
    let started_at = now();
    let answer = match registry.driver(db, shadow).await {
        Ok(driver) => tokio::time::timeout(DRILL_TIMEOUT, driver.drill(requests))
            .await
            .unwrap_or_else(|_| {
                Err(ShadowError {
                    code: "timeout".into(),
                    message: format!("no answer within {DRILL_TIMEOUT:?}"),
                    transient: true,
                    hook: None,
                    ..Default::default()
                })
            }),
        Err(err) => Err(ShadowError {
            code: "driver".into(),
            message: err.public_message(),
            transient: false,
            hook: None,
            ..Default::default()
        }),
    };
    // The validator reads the live tree: the secrets of the revision the shadow says it
    // serves are masked with the current one's.
    let masks = {
        let mut conn = db.read.acquire().await?;
        let current = revisions::entries(&mut conn, revision).await?;
        let served = match answer.as_ref().ok().and_then(|a| a.live_revision) {
            Some(live) if live != revision && revisions::exists(&mut conn, live).await? => revisions::entries(&mut conn, live).await?,
            _ => Default::default(),
        };
        crate::hooks::secret_values_of(&mut conn, db, &[&current, &served]).await?
    };
    let steps = judge(revision, &expected_root, &answer, &masks);
    let verdict = if steps.iter().any(|s| s.status == "failed") {
        "failed"
    } else {
        "passed"
    };
    let observed_root = answer.as_ref().ok().map(|a| a.live_root.clone());
    let finished_at = now();
    let steps_text = serde_json::to_string(&steps).map_err(|err| Error::Internal(err.to_string()))?;
    let mut tx = db.begin().await?;
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO drills (shadow, requested_by, started_at, finished_at, verdict, revision, expected_root, observed_root, steps)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
    )
    .bind(shadow)
    .bind(actor)
    .bind(&started_at)
    .bind(&finished_at)
    .bind(verdict)
    .bind(revision)
    .bind(&expected_root)
    .bind(&observed_root)
    .bind(&steps_text)
    .fetch_one(&mut *tx)
    .await?;
    let summary: Vec<_> = steps.iter().map(|s| json!({"step": s.name, "status": s.status})).collect();
    audit::append(
        &mut tx,
        actor,
        "drill.run",
        &format!("drill/{id}"),
        json!({"shadow": shadow, "verdict": verdict, "revision": revision, "steps": summary}),
    )
    .await?;
    crate::webhooks::enqueue(
        &mut tx,
        if verdict == "passed" { "drill.passed" } else { "drill.failed" },
        json!({"drill": id, "shadow": shadow, "verdict": verdict, "revision": revision, "steps": summary}),
    )
    .await?;
    let details = json!({"drill": id, "steps": summary});
    let notice = if verdict == "passed" {
        crate::incidents::operation_passed(&mut tx, shadow, DriftKind::DrillFailed, details).await?
    } else {
        Some(
            crate::incidents::open_operation(
                &mut tx,
                shadow,
                DriftKind::DrillFailed,
                &expected_root,
                observed_root.as_deref(),
                details,
            )
            .await?,
        )
    };
    tx.commit().await?;
    Ok((get(db, id).await?, notice))
}

pub async fn get(db: &Db, id: i64) -> Result<DrillView> {
    let row: DrillRow = sqlx::query_as(&format!("{DRILL_SELECT} WHERE id = $1"))
        .bind(id)
        .fetch_optional(&db.read)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no drill {id}")))?;
    Ok(row.into())
}

/// Drills, newest first, optionally of one shadow.
pub async fn list(db: &Db, shadow: Option<&str>, before: Option<i64>, limit: Option<i64>) -> Result<Page<DrillView>> {
    let limit = limit.unwrap_or(50).clamp(1, 500);
    let rows: Vec<DrillRow> = sqlx::query_as(&format!(
        "{DRILL_SELECT} WHERE ($1 IS NULL OR shadow = $1) AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
    ))
    .bind(shadow)
    .bind(before)
    .bind(limit + 1)
    .fetch_all(&db.read)
    .await?;
    Ok(page(rows.into_iter().map(DrillView::from).collect(), limit, |d| d.id))
}

/// Runs a drill on every shadow whose latest drill is older than `interval` (or that has
/// none), as `scheduler`, skipping shadows a rollout is moving and those never reconciled. Answers the incidents it opened or ended.
pub async fn run_due(db: &Db, registry: &Registry, interval: Duration) -> Result<Vec<IncidentNotice>> {
    let seconds = i64::try_from(interval.as_secs()).unwrap_or(i64::MAX);
    let due: Vec<(String,)> = sqlx::query_as(
        // Not a shadow a rollout is moving, nor one never reconciled: their parity would
        // fail for a reason everyone knows.
        "SELECT s.name FROM shadows s WHERE s.status NOT IN ('rolling_out', 'pending') AND NOT EXISTS (
            SELECT 1 FROM drills d WHERE d.shadow = s.name AND d.started_at >= s.created_at
            AND d.finished_at > $1)
         ORDER BY s.name",
    )
    .bind(crate::format_time(
        time::OffsetDateTime::now_utc() - time::Duration::seconds(seconds),
    ))
    .fetch_all(&db.read)
    .await?;
    let mut notices = Vec::new();
    for (name,) in due {
        match run_as(db, registry, "scheduler", &name, None).await {
            Ok((view, notice)) => {
                tracing::info!(shadow = %name, drill = view.id, verdict = %view.verdict, "scheduled drill");
                notices.extend(notice);
            }
            Err(err) => tracing::warn!(shadow = %name, %err, "scheduled drill not run"),
        }
    }
    Ok(notices)
}
