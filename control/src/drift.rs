//! The drift monitor: checks every shadow on an interval, and an agent's shadow at once
//! when its event stream reports a changed root; records what it saw and opens, updates
//! or resolves the shadow's incident.
//!
//! A failed check is never counted as in sync: the shadow is `unreachable` at once, and an
//! incident opens after `unreachable_after` failures in a row. Checks run concurrently up
//! to a bound, each with its own timeout, so a hung shadow delays nobody. A shadow that a
//! running rollout has yet to prepare or commit is not judged (its differences are the
//! rollout's own) unless the check fails, and a check that a rollout overtook is
//! discarded.

use crate::{
    Db, Error, Result,
    incidents::{self, Finding},
    now,
    revisions::{self, EntrySet},
    rollouts::Coordinator,
    shadows::{self, Driver, Registry, ShadowError, ShadowView},
};
use domain::{
    api::IncidentNotice,
    drift::{DriftKind, ExpectedEntry, classify},
    policy::format_mode,
    protocol::ShadowState,
};
use futures_util::{FutureExt, StreamExt};
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::broadcast;

#[derive(sqlx::FromRow)]
struct CheckRow {
    id: i64,
    at: String,
    trigger: String,
    status: String,
    observed_root: Option<String>,
    latency_ms: i64,
    error: Option<String>,
}

/// Checks kept per shadow in its history.
pub const CHECKS_KEPT: i64 = 500;

/// A shadow's check history is cut back to [`CHECKS_KEPT`] at its first check and every
/// this many checks after (so it holds at most this many more for a while).
const PRUNE_EVERY: u32 = 32;

/// How a check came about: the interval, an agent's event, or a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Poll,
    Event,
    Manual,
    /// A rollout to the shadow just ended.
    Rollout,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Poll => "poll",
            Trigger::Event => "event",
            Trigger::Manual => "manual",
            Trigger::Rollout => "rollout",
        }
    }
}

pub struct Monitor {
    pub(crate) db: Db,
    pub(crate) registry: Arc<Registry>,
    pub(crate) coordinator: Arc<Coordinator>,
    /// Time between sweeps.
    pub interval: Duration,
    /// Failed checks in a row before an `unreachable` incident opens.
    pub unreachable_after: i64,
    /// How long one check may take.
    pub check_timeout: Duration,
    /// Checks running at once in a sweep.
    pub concurrency: usize,
    /// Whether agents' event streams trigger checks (off: only sweeps find drift).
    pub follow_agent_events: bool,
    notices: broadcast::Sender<IncidentNotice>,
    /// Latency of asking a shadow for its state, for `GET /metrics`.
    pub check_latency: crate::metrics::Histogram,
    /// One check at a time per shadow.
    checking: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Checks logged per shadow since this process started (see [`Monitor::log_check`]).
    logged: Mutex<HashMap<String, u32>>,
    /// Event-stream listeners of agent shadows, by shadow name.
    listeners: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    /// Where notices are published to the other replicas (see [`crate::bus`]).
    outbox: std::sync::OnceLock<crate::bus::Outbox>,
}

impl Monitor {
    pub fn new(db: Db, registry: Arc<Registry>, coordinator: Arc<Coordinator>, interval: Duration) -> Monitor {
        Monitor {
            db,
            registry,
            coordinator,
            interval,
            unreachable_after: 3,
            check_timeout: Duration::from_secs(5),
            concurrency: 16,
            follow_agent_events: true,
            notices: broadcast::channel(1024).0,
            check_latency: crate::metrics::Histogram::default(),
            checking: Mutex::new(HashMap::new()),
            logged: Mutex::new(HashMap::new()),
            listeners: Mutex::new(HashMap::new()),
            outbox: std::sync::OnceLock::new(),
        }
    }

    /// Incidents opened, changed and resolved, for `GET /api/v1/events`.
    pub fn subscribe(&self) -> broadcast::Receiver<IncidentNotice> {
        self.notices.subscribe()
    }

    /// Announces an incident change made elsewhere (a person's action).
    pub fn announce(&self, notice: IncidentNotice) {
        if let Some(outbox) = self.outbox.get() {
            let _ = outbox.try_send(crate::bus::Message::Incident(notice.clone()));
        }
        let _ = self.notices.send(notice);
    }

    /// Publishes this process's notices to the other replicas from now on.
    pub fn publish_to(&self, outbox: crate::bus::Outbox) {
        let _ = self.outbox.set(outbox);
    }

    /// A notice from another replica, for this one's subscribers.
    pub fn deliver(&self, notice: IncidentNotice) {
        let _ = self.notices.send(notice);
    }

    /// Whether a running rollout still has to prepare or commit on this shadow: what the
    /// shadow serves then is the rollout's business, not drift. (Only this shadow is
    /// spared: a rollout stuck waiting for one dead shadow must not blind the monitor to
    /// the rest of the fleet.)
    async fn in_flight(&self, name: &str) -> Result<bool> {
        let phases: Vec<(String,)> = sqlx::query_as(
            "SELECT rs.phase FROM rollout_shadows rs JOIN rollouts r ON r.id = rs.rollout_id
             WHERE r.finished_at IS NULL AND rs.shadow = $1",
        )
        .bind(name)
        .fetch_all(&self.db.read)
        .await?;
        Ok(phases
            .iter()
            .any(|(phase,)| domain::rollout::Phase::parse(phase).is_none_or(domain::rollout::Phase::in_flight)))
    }

    /// Checks one shadow now and records what was seen.
    pub async fn check(&self, name: &str, trigger: Trigger) -> Result<ShadowView> {
        // Checks record what they saw and open incidents: the leader's work.
        self.coordinator.require_leader()?;
        let lock = self
            .checking
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone();
        let _one_at_a_time = lock.lock().await;
        let generation = self.coordinator.generation();
        let driver = self.registry.driver(&self.db, name).await?;
        let asked = std::time::Instant::now();
        // The root, the fence and the revision are enough to tell "in sync"; the entry list
        // (a megabyte for 10,000 entries) is fetched only for a shadow that differs, or at
        // once when the agent has just said its files changed (saving it a second walk).
        let with_entries = trigger == Trigger::Event;
        let answer = tokio::time::timeout(self.check_timeout, driver.state(with_entries)).await;
        let latency = asked.elapsed();
        self.check_latency.observe(latency);
        let observed = match answer {
            Ok(result) => result,
            Err(_) => Err(ShadowError {
                code: "timeout".into(),
                message: format!("no answer within {:?}", self.check_timeout),
                transient: true,
                hook: None,
                ..Default::default()
            }),
        };
        // The current revision and its root, in one query.
        let (current, expected_root): (i64, String) = sqlx::query_as("SELECT number, root FROM revisions ORDER BY number DESC LIMIT 1")
            .fetch_one(&self.db.read)
            .await?;
        // A rollout that started or ended meanwhile makes this reading meaningless, and a
        // shadow a rollout is still writing to is judged by the rollout. A failed check
        // still counts: a shadow that is down is down, rollout or not.
        let overtaken = self.coordinator.generation() != generation;
        if overtaken || (observed.is_ok() && self.in_flight(name).await?) {
            return shadows::get(&self.db, name).await;
        }
        let view = shadows::get(&self.db, name).await?;
        let error = observed.as_ref().err().map(ToString::to_string);
        let notice = match observed {
            Ok(state) => self.judge(&view, &driver, state, current, &expected_root, trigger).await?,
            Err(err) => self.failed(&view, &err, &expected_root, trigger).await?,
        };
        if let Some(notice) = notice {
            self.announce(notice);
        }
        let after = shadows::get(&self.db, name).await?;
        self.log_check(&after, trigger, latency, error).await?;
        Ok(after)
    }

    /// Appends to the shadow's check history, keeping the newest [`CHECKS_KEPT`] (the
    /// older ones are dropped every [`PRUNE_EVERY`] checks of the shadow: finding the
    /// cut walks that many rows of the index).
    async fn log_check(&self, view: &ShadowView, trigger: Trigger, latency: Duration, error: Option<String>) -> Result<()> {
        let prune = {
            let mut counts = self.logged.lock().unwrap_or_else(|p| p.into_inner());
            let count = counts.entry(view.name.clone()).or_insert(0);
            *count += 1;
            *count % PRUNE_EVERY == 1
        };
        // What the leader's checks write belongs to its term (see `Db::fenced`).
        let mut tx = self.coordinator.db.begin().await?;
        sqlx::query(
            "INSERT INTO shadow_checks (shadow, at, trigger, status, observed_root, latency_ms, error) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&view.name)
        .bind(now())
        .bind(trigger.as_str())
        .bind(&view.status)
        .bind(error.is_none().then_some(view.observed_root.clone()).flatten())
        .bind(i64::try_from(latency.as_millis()).unwrap_or(i64::MAX))
        .bind(error)
        .execute(&mut *tx)
        .await?;
        if prune {
            sqlx::query(
                "DELETE FROM shadow_checks WHERE shadow = $1 AND id <= (SELECT id FROM shadow_checks WHERE shadow = $1 ORDER BY id DESC LIMIT 1 OFFSET $2)",
            )
            .bind(&view.name)
            .bind(CHECKS_KEPT)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A shadow's check history, newest first.
    pub async fn checks(&self, name: &str, before: Option<i64>, limit: Option<i64>) -> Result<domain::api::Page<domain::api::CheckView>> {
        shadows::get(&self.db, name).await?;
        let limit = limit.unwrap_or(50).clamp(1, 500);
        let rows: Vec<CheckRow> = sqlx::query_as(
            "SELECT id, at, trigger, status, observed_root, latency_ms, error FROM shadow_checks
             WHERE shadow = $1 AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
        )
        .bind(name)
        .bind(before)
        .bind(limit + 1)
        .fetch_all(&self.db.read)
        .await?;
        let items = rows
            .into_iter()
            .map(|row| domain::api::CheckView {
                id: row.id,
                at: row.at,
                trigger: row.trigger,
                status: row.status,
                observed_root: row.observed_root,
                latency_ms: row.latency_ms,
                error: row.error,
            })
            .collect();
        Ok(crate::audit::page(items, limit, |c| c.id))
    }

    /// A shadow's newest `limit` checks (at most [`CHECKS_KEPT`]), oldest first, as the
    /// shadow page charts them.
    pub async fn check_series(&self, name: &str, limit: i64) -> Result<Vec<domain::api::CheckPoint>> {
        shadows::get(&self.db, name).await?;
        let rows: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT at, status, latency_ms FROM shadow_checks WHERE shadow = $1 ORDER BY id DESC LIMIT $2")
                .bind(name)
                .bind(limit.clamp(1, CHECKS_KEPT))
                .fetch_all(&self.db.read)
                .await?;
        Ok(rows
            .into_iter()
            .rev()
            .map(|(at, status, latency_ms)| domain::api::CheckPoint { at, status, latency_ms })
            .collect())
    }

    /// A shadow answered: in sync, or which kind of drift.
    async fn judge(
        &self,
        view: &ShadowView,
        driver: &Driver,
        mut state: ShadowState,
        current: i64,
        expected_root: &str,
        trigger: Trigger,
    ) -> Result<Option<IncidentNotice>> {
        let name = view.name.as_str();
        let identity = self.coordinator.identity();
        let mut kinds = BTreeSet::new();
        let mut detail = None;
        if state.control_plane_id.as_deref().is_some_and(|id| id != identity.id) {
            kinds.insert(DriftKind::Fenced);
            detail = Some(format!(
                "the shadow is bound to control plane {}",
                state.control_plane_id.as_deref().unwrap_or_default()
            ));
        } else if state.highest_epoch > identity.epoch {
            kinds.insert(DriftKind::Fenced);
            detail = Some(format!(
                "the shadow saw epoch {}, higher than this control plane's {}: another writer exists",
                state.highest_epoch, identity.epoch
            ));
        } else if state.live_revision.is_some_and(|r| r > current) {
            kinds.insert(DriftKind::Fenced);
            detail = Some(format!(
                "the shadow holds revision {}, which this control plane never made (current: {current})",
                state.live_revision.unwrap_or_default()
            ));
        }
        let never_synced = view.status == "pending" && view.last_in_sync_at.is_none();
        let drifted = kinds.is_empty() && state.live_root != expected_root && !never_synced;
        if drifted && incidents::seen_again(&self.coordinator.db, name, expected_root, &state.live_root).await? {
            // Nothing moved since the last look: the open incident already says what
            // differs, and a drifted fleet costs a sweep no more than a healthy one.
            let status = if view.status == "stale" { "stale" } else { "drifted" };
            self.record_status(name, status, Some(&state), None).await?;
            return Ok(None);
        }
        if drifted && state.entries.is_none() {
            // Drifted: which entries differ needs the shadow's entry list, fetched now. If
            // the shadow changed in between, the newer reading is the one judged.
            let full = match tokio::time::timeout(self.check_timeout, driver.state(true)).await {
                Ok(answer) => answer,
                Err(_) => Err(ShadowError {
                    code: "timeout".into(),
                    message: format!("no entry list within {:?}", self.check_timeout),
                    transient: true,
                    hook: None,
                    ..Default::default()
                }),
            };
            match full {
                Ok(full) if full.control_plane_id == state.control_plane_id && full.highest_epoch == state.highest_epoch => state = full,
                // The fence moved meanwhile: judge again from the start at the next check.
                Ok(_) => return Ok(None),
                Err(err) => return self.failed(view, &err, expected_root, trigger).await,
            }
        }
        let in_sync = kinds.is_empty() && state.live_root == expected_root;
        let status = if in_sync {
            "in_sync"
        } else if never_synced && !kinds.contains(&DriftKind::Fenced) {
            // Registered and never brought to a revision: waiting for its first reconcile.
            "pending"
        } else if kinds.contains(&DriftKind::Fenced) {
            "fenced"
        } else {
            "drifted"
        };
        let mut entries = Vec::new();
        if status == "drifted" {
            // Consistent with an older revision as a whole (restored from an old backup, or
            // left behind): stale rather than a pile of entry differences.
            let older: Option<(i64,)> =
                sqlx::query_as("SELECT number FROM revisions WHERE root = $1 AND number < $2 AND number > 0 ORDER BY number DESC LIMIT 1")
                    .bind(&state.live_root)
                    .bind(current)
                    .fetch_optional(&self.db.read)
                    .await?;
            if let Some((revision,)) = older {
                kinds.insert(DriftKind::Stale);
                detail = Some(format!("the shadow holds exactly revision {revision}, not the current {current}"));
            } else {
                let expected = revisions::entries(&mut *self.db.read.acquire().await?, current).await?;
                entries = self.classify(&expected, &state).await?;
                kinds.extend(entries.iter().map(|e| e.kind));
                if kinds.is_empty() {
                    // Roots differ but no entry does: say so rather than stay silent.
                    kinds.insert(DriftKind::Content);
                }
            }
        }
        let status = if kinds.contains(&DriftKind::Stale) { "stale" } else { status };
        self.record_status(name, status, Some(&state), None).await?;
        if in_sync {
            return incidents::resolve_in_sync(&self.coordinator.db, name).await;
        }
        if status == "pending" {
            return Ok(None);
        }
        let finding = Finding {
            kinds,
            entries,
            expected_root: expected_root.to_string(),
            observed_root: Some(state.live_root.clone()),
            detail,
        };
        incidents::record(&self.coordinator.db, name, &finding, trigger.as_str()).await
    }

    pub(crate) async fn classify(&self, expected: &EntrySet, state: &ShadowState) -> Result<Vec<domain::drift::EntryDrift>> {
        let wanted: Vec<ExpectedEntry> = expected
            .values()
            .map(|row| ExpectedEntry {
                path: row.path.clone(),
                entry_hash: row.entry_hash.clone(),
                mode: format_mode(u32::try_from(row.mode).unwrap_or(0)),
                owner: row.owner.clone(),
                group: row.grp.clone(),
                secret: row.secret,
                sealed: row.blob.as_deref().is_some_and(crate::changes::is_sealed_blob),
            })
            .collect();
        let observed = state.entries.clone().unwrap_or_default();
        // The primary's bytes of the entries whose policy differs, to tell policy-only
        // drift from drift of both.
        let mut contents = HashMap::new();
        let mut conn = self.db.read.acquire().await?;
        for have in &observed {
            if let Some(row) = expected.get(&have.path)
                && row.entry_hash != have.entry_hash
                && let Some(blob) = &row.blob
            {
                contents.insert(have.path.clone(), revisions::blob(&mut conn, &self.db.keys, blob).await?);
            }
        }
        let key = self.db.keys.content_key();
        Ok(classify(&wanted, &observed, |path| contents.get(path).cloned(), Some(&key)))
    }

    /// A check failed: `fenced` if the shadow refused us as a writer, else unreachable.
    async fn failed(&self, view: &ShadowView, err: &ShadowError, expected_root: &str, trigger: Trigger) -> Result<Option<IncidentNotice>> {
        let name = view.name.as_str();
        let fenced = err.code == "fenced";
        let failures = self
            .record_status(name, if fenced { "fenced" } else { "unreachable" }, None, Some(err))
            .await?;
        if !fenced && failures < self.unreachable_after {
            return Ok(None);
        }
        let finding = Finding {
            kinds: BTreeSet::from([if fenced { DriftKind::Fenced } else { DriftKind::Unreachable }]),
            entries: Vec::new(),
            expected_root: expected_root.to_string(),
            observed_root: None,
            detail: Some(if fenced {
                err.to_string()
            } else {
                format!("{failures} checks failed in a row; the last: {err}")
            }),
        };
        incidents::record(&self.coordinator.db, name, &finding, trigger.as_str()).await
    }

    /// Writes the shadow's status; answers the count of failed checks in a row.
    async fn record_status(&self, name: &str, status: &str, state: Option<&ShadowState>, err: Option<&ShadowError>) -> Result<i64> {
        let at = now();
        // Written for the leader's term only (see `Db::fenced`).
        let mut tx = self.coordinator.db.begin().await?;
        let row: Option<(i64,)> = match state {
            Some(state) => {
                sqlx::query_as(
                    "UPDATE shadows SET status = $1, observed_root = $2, observed_revision = $3, last_contact_at = $4, last_error = NULL,
                     failed_checks = 0, last_in_sync_at = CASE WHEN $5 = 'in_sync' THEN $6 ELSE last_in_sync_at END
                     WHERE name = $7 RETURNING failed_checks",
                )
                .bind(status)
                .bind(&state.live_root)
                .bind(state.live_revision)
                .bind(&at)
                .bind(status)
                .bind(&at)
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?
            }
            None => sqlx::query_as(
                "UPDATE shadows SET status = $1, last_error = $2, failed_checks = failed_checks + 1 WHERE name = $3 RETURNING failed_checks",
            )
            .bind(status)
            .bind(err.map(ToString::to_string))
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?,
        };
        tx.commit().await?;
        Ok(row.map(|(n,)| n).unwrap_or_default())
    }

    /// Checks every shadow, at most `concurrency` at once.
    pub async fn sweep(&self) {
        let names = match shadows::list(&self.db).await {
            Ok(list) => list.into_iter().map(|s| s.name).collect::<Vec<_>>(),
            Err(err) => {
                tracing::warn!(%err, "drift sweep: cannot list shadows");
                return;
            }
        };
        futures_util::stream::iter(names)
            .for_each_concurrent(self.concurrency.max(1), |name| async move {
                // The timeout inside `check` bounds the shadow; this bounds the database.
                match tokio::time::timeout(self.check_timeout * 2, self.check(&name, Trigger::Poll)).await {
                    Ok(Ok(_)) | Ok(Err(Error::NotFound(_))) => {}
                    Ok(Err(err)) => tracing::warn!(shadow = %name, %err, "drift check failed"),
                    Err(_) => tracing::warn!(shadow = %name, "drift check overran"),
                }
            })
            .await;
    }

    /// Runs forever: a sweep every interval, and agent event listeners kept in step with
    /// the registered shadows.
    pub async fn run(self: Arc<Self>) {
        // A rollout's end is a moment to look again at its shadows: checks skipped while it
        // ran (an agent's event, say) are made up for at once.
        let after_rollouts = tokio::spawn(self.clone().follow_rollouts());
        let _stop_with_me = AbortOnDrop(after_rollouts);
        // Incidents the coordinator opens (a failed reload) reach live pages like ours.
        let mut coordinator_notices = self.coordinator.subscribe_incidents();
        let monitor = self.clone();
        let forward = tokio::spawn(async move {
            loop {
                match coordinator_notices.recv().await {
                    Ok(notice) => monitor.announce(notice),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        let _forward_with_me = AbortOnDrop(forward);
        let mut next_sweep = tokio::time::Instant::now();
        loop {
            // A new agent shadow gets its listener within a second, whatever the interval.
            self.sync_listeners().await;
            if tokio::time::Instant::now() >= next_sweep {
                self.sweep().await;
                next_sweep = tokio::time::Instant::now() + self.interval;
            }
            let until = next_sweep.min(tokio::time::Instant::now() + Duration::from_secs(1));
            tokio::time::sleep_until(until).await;
        }
    }

    async fn follow_rollouts(self: Arc<Self>) {
        let mut events = self.coordinator.subscribe();
        loop {
            match events.recv().await {
                Ok(event)
                    if event.shadow.is_none()
                        && domain::rollout::State::parse(&event.phase).is_some_and(domain::rollout::State::is_terminal) =>
                {
                    let shadows: Vec<(String,)> = match sqlx::query_as("SELECT shadow FROM rollout_shadows WHERE rollout_id = $1")
                        .bind(event.rollout)
                        .fetch_all(&self.db.read)
                        .await
                    {
                        Ok(rows) => rows,
                        Err(err) => {
                            tracing::warn!(%err, "cannot list a rollout's shadows");
                            continue;
                        }
                    };
                    // The event comes from inside the rollout; wait until it has let go.
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                    while self.coordinator.is_running() && tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    for (name,) in shadows {
                        if let Err(err) = self.check(&name, Trigger::Rollout).await {
                            tracing::debug!(shadow = %name, %err, "check after a rollout failed");
                        }
                    }
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// Starts a listener for every agent and etcd shadow without one; stops those of
    /// removed ones.
    async fn sync_listeners(self: &Arc<Self>) {
        let Ok(list) = shadows::list(&self.db).await else { return };
        let followed: BTreeMap<String, String> = list
            .into_iter()
            .filter(|s| matches!(s.driver.as_str(), "agent" | "etcd") && self.follow_agent_events)
            .map(|s| (s.name, s.driver))
            .collect();
        let mut listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        listeners.retain(|name, task| {
            let keep = followed.contains_key(name) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for (name, driver) in followed {
            if let std::collections::hash_map::Entry::Vacant(slot) = listeners.entry(name) {
                let name = slot.key().clone();
                let task = if driver == "etcd" {
                    tokio::spawn(self.clone().watch_etcd(name))
                } else {
                    tokio::spawn(self.clone().listen(name))
                };
                slot.insert(task);
            }
        }
    }

    /// Watches an etcd shadow's prefix: a write under it triggers a check at once. A
    /// watch that ends (compacted, cancelled, the cluster lost) is opened again, and a
    /// check follows every opening: it reads the whole prefix, so whatever was written
    /// while nobody watched is judged, and an unreachable cluster is a failed check.
    async fn watch_etcd(self: Arc<Self>, name: String) {
        let mut delay = Duration::from_millis(250);
        loop {
            let etcd = match self.registry.driver(&self.db, &name).await {
                Ok(shadows::Driver::Etcd(etcd)) => etcd,
                Ok(shadows::Driver::Unreachable(err)) => {
                    // The sweep records it as the failed check it is, at its own pace
                    // (`unreachable_after` counts sweeps, not these tries).
                    tracing::debug!(shadow = %name, %err, "etcd shadow unreachable");
                    tokio::time::sleep(delay.max(self.interval.min(Duration::from_secs(30)))).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                    continue;
                }
                Ok(_) | Err(Error::NotFound(_)) => return,
                Err(err) => {
                    tracing::debug!(shadow = %name, %err, "etcd shadow unavailable");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            let watch = etcd.watch().await;
            // Opened (or not): look now, for what the watch did not see.
            if let Err(err) = self.check(&name, Trigger::Event).await {
                tracing::debug!(shadow = %name, %err, "check at the etcd watch's start failed");
            }
            match watch {
                Ok(mut stream) => {
                    let opened = tokio::time::Instant::now();
                    loop {
                        match stream.message().await {
                            Ok(Some(response)) if response.canceled() || response.compact_revision() > 0 => {
                                tracing::info!(shadow = %name, reason = %response.cancel_reason(), "etcd watch ended; watching again");
                                break;
                            }
                            Ok(Some(response)) => {
                                // Answers already waiting join this one: a burst of writes is
                                // one check of the whole prefix, not one per write.
                                let mut live = etcd.touches_live(&response);
                                let mut ended = false;
                                while let Some(next) = stream.message().now_or_never() {
                                    match next {
                                        Ok(Some(more)) if !(more.canceled() || more.compact_revision() > 0) => {
                                            live |= etcd.touches_live(&more);
                                        }
                                        _ => {
                                            ended = true;
                                            break;
                                        }
                                    }
                                }
                                if (live || ended)
                                    && let Err(err) = self.check(&name, Trigger::Event).await
                                {
                                    tracing::warn!(shadow = %name, %err, "watch-driven check failed");
                                }
                                if ended {
                                    break;
                                }
                            }
                            Ok(None) | Err(_) => break,
                        }
                    }
                    // Only a watch that lasted starts the waits over: one that ends at once
                    // (refused, say) must not make a check of the whole prefix 4 times a
                    // second.
                    if opened.elapsed() > Duration::from_secs(30) {
                        delay = Duration::from_millis(250);
                    }
                }
                Err(err) => tracing::debug!(shadow = %name, %err, "etcd watch unavailable"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }

    /// Follows one agent's event stream; a changed root triggers a check at once.
    async fn listen(self: Arc<Self>, name: String) {
        let mut delay = Duration::from_millis(250);
        loop {
            match self.registry.events(&self.db, &name).await {
                Ok(response) => {
                    delay = Duration::from_millis(250);
                    let mut body = response.bytes_stream();
                    let mut buffer: Vec<u8> = Vec::new();
                    let mut last_root: Option<String> = None;
                    while let Some(Ok(chunk)) = body.next().await {
                        buffer.extend_from_slice(&chunk);
                        let mut changed = false;
                        while let Some(end) = buffer.windows(2).position(|pair| pair == b"\n\n") {
                            let frame: Vec<u8> = buffer.drain(..end + 2).collect();
                            let root = String::from_utf8_lossy(&frame)
                                .lines()
                                .find_map(|line| line.strip_prefix("data:"))
                                .and_then(|data| serde_json::from_str::<serde_json::Value>(data.trim()).ok())
                                .and_then(|data| data["live_root"].as_str().map(str::to_string));
                            if let Some(root) = root {
                                changed |= last_root.as_ref().is_some_and(|last| *last != root);
                                last_root = Some(root);
                            }
                        }
                        // An event is a few hundred bytes: a stream that sends more without
                        // ending one is not an agent's, and is dropped (and opened again
                        // after the usual wait) rather than buffered on.
                        if buffer.len() > MAX_EVENT_BYTES {
                            tracing::warn!(shadow = %name, "agent event stream sent an event over 64 KiB; dropped");
                            break;
                        }
                        if changed && let Err(err) = self.check(&name, Trigger::Event).await {
                            tracing::warn!(shadow = %name, %err, "event-driven check failed");
                        }
                    }
                }
                Err(Error::NotFound(_)) => return,
                Err(err) => tracing::debug!(shadow = %name, %err, "agent event stream unavailable"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }
}

impl Monitor {
    /// Adopt: a new change whose entries are the shadow's observed content for the paths
    /// the incident names (and deletions for the entries it lacks). The change then goes
    /// through review like any other; the incident stays open until it is rolled out.
    pub async fn adopt(&self, caller: &crate::Caller, id: i64) -> Result<domain::api::ChangeView> {
        use domain::api::{EntryInput, NewChange};
        caller.require(domain::Role::Editor)?;
        let incident = incidents::for_adopt(&self.db, id).await?;
        let adoptable: Vec<_> = incident
            .entries
            .iter()
            .filter(|e| {
                matches!(
                    e.kind,
                    DriftKind::Content | DriftKind::Policy | DriftKind::Missing | DriftKind::Unexpected
                )
            })
            .collect();
        if adoptable.is_empty() {
            return Err(Error::conflict(
                "nothing_to_adopt",
                format!(
                    "incident {id} names no entry whose content could be adopted ({})",
                    incident.kinds.join(", ")
                ),
            ));
        }
        let driver = self.registry.driver(&self.db, &incident.shadow).await?;
        let state = driver
            .state(true)
            .await
            .map_err(|err| Error::conflict("shadow_unavailable", format!("{}: {err}", incident.shadow)))?;
        let observed: HashMap<String, domain::protocol::ObservedEntry> =
            state.entries.unwrap_or_default().into_iter().map(|e| (e.path.clone(), e)).collect();
        let mut conn = self.db.read.acquire().await?;
        let current = revisions::current_number(&mut conn).await?;
        let expected = revisions::entries(&mut conn, current).await?;
        drop(conn);
        let mut entries = Vec::new();
        for drift in &adoptable {
            let known = expected.get(&drift.path);
            let Some(have) = observed.get(&drift.path) else {
                entries.push(EntryInput::deletion(drift.path.clone()));
                continue;
            };
            let bytes = driver
                .read_entry(&drift.path)
                .await
                .map_err(|err| Error::conflict("shadow_unavailable", format!("{}: {err}", incident.shadow)))?;
            let content = String::from_utf8(bytes).map_err(|_| {
                Error::BadRequest(format!(
                    "{} on {} is not UTF-8 text and cannot be adopted",
                    drift.path, incident.shadow
                ))
            })?;
            entries.push(EntryInput {
                path: drift.path.clone(),
                content: Some(content),
                format: known.map(|k| k.format.clone()),
                mode: Some(have.mode.clone()),
                owner: known.filter(|k| !k.owner.is_empty()).map(|_| have.owner.clone()),
                group: known.filter(|k| !k.grp.is_empty()).map(|_| have.group.clone()),
                // A file the primary does not have, named like a secret (a `tls.key`),
                // becomes a secret entry: sealed, and never shown.
                secret: known
                    .map(|k| k.secret)
                    .or_else(|| crate::secrets::named_like_a_secret(&self.db, &drift.path).then_some(true)),
                delete: false,
            });
        }
        let paths: Vec<String> = entries.iter().map(|e| e.path.clone()).collect();
        let change = crate::changes::create(
            &self.db,
            caller,
            NewChange {
                base_revision: current,
                message: format!("Adopt {}'s content from incident #{id}", incident.shadow),
                entries,
            },
        )
        .await?;
        let mut tx = self.db.begin().await?;
        incidents::note_adopted(&mut tx, id, &caller.username, change.summary.id, &paths).await?;
        tx.commit().await?;
        self.announce(IncidentNotice {
            id,
            shadow: incident.shadow.clone(),
            kind: incident.kind.clone(),
            status: incident.status.clone(),
            change: "updated".into(),
        });
        Ok(change)
    }
}

impl Monitor {
    /// Stops the agent event listeners (the sweep loop is stopped by its owner).
    pub fn stop(&self) {
        for (_, task) in self.listeners.lock().unwrap_or_else(|p| p.into_inner()).drain() {
            task.abort();
        }
    }
}

/// The longest event accepted on an agent's event stream.
const MAX_EVENT_BYTES: usize = 64 * 1024;

/// Aborts a task when dropped (when the loop that owns it is aborted).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Monitor {
    /// The audit chain verified, and checked against the head each shadow keeps (see
    /// [`crate::audit::verify_against_shadows`]).
    pub async fn verify_audit(&self) -> Result<domain::api::AuditVerification> {
        crate::audit::verify_against_shadows(&self.db, &self.registry, self.check_timeout).await
    }

    /// The visual diff of the primary (current revision) against what one shadow holds
    /// now, entry by entry: `removed` entries the shadow lacks, `added` files it should not
    /// have, `modified` ones with their line diff and policy changes. Secret entries are
    /// never diffed, only marked changed.
    ///
    /// A file the primary does not manage may hold anything (an agent's directory before
    /// its first commit, a `tls.key` on a backup volume): below the approver role its
    /// content, hash and size are not shown, and a file named like a secret (its name
    /// matches the secret key patterns) is shown to nobody.
    pub async fn shadow_diff(&self, caller: &crate::Caller, name: &str) -> Result<domain::api::DiffView> {
        use domain::api::{DiffView, EntryDiff, EntryView};
        let driver = self.registry.driver(&self.db, name).await?;
        let state = tokio::time::timeout(self.check_timeout, driver.state(true))
            .await
            .map_err(|_| Error::conflict("shadow_unavailable", format!("{name}: no answer within {:?}", self.check_timeout)))?
            .map_err(|err| Error::conflict("shadow_unavailable", format!("{name}: {err}")))?;
        let mut conn = self.db.read.acquire().await?;
        let current = revisions::current_number(&mut conn).await?;
        let expected = revisions::entries(&mut conn, current).await?;
        drop(conn);
        let drifts = self.classify(&expected, &state).await?;
        let observed: HashMap<String, domain::protocol::ObservedEntry> =
            state.entries.unwrap_or_default().into_iter().map(|e| (e.path.clone(), e)).collect();
        let mut entries = Vec::new();
        for drift in drifts {
            let want = expected.get(&drift.path);
            let have = observed.get(&drift.path);
            let old = want.map(|row| row.view());
            let new = have.map(|o| EntryView {
                path: o.path.clone(),
                format: want
                    .map(|w| w.format.clone())
                    .unwrap_or_else(|| domain::Format::guess(&o.path).as_str().to_string()),
                mode: o.mode.clone(),
                owner: o.owner.clone(),
                group: o.group.clone(),
                secret: want.is_some_and(|w| w.secret),
                size: o.size,
                entry_hash: o.entry_hash.clone(),
            });
            let mut policy_changes = Vec::new();
            if let (Some(old), Some(new)) = (&old, &new) {
                if old.mode != new.mode {
                    policy_changes.push(format!("mode {} → {}", old.mode, new.mode));
                }
                if !old.owner.is_empty() && old.owner != new.owner {
                    policy_changes.push(format!("owner {} → {}", old.owner, new.owner));
                }
                if !old.group.is_empty() && old.group != new.group {
                    policy_changes.push(format!("group {} → {}", old.group, new.group));
                }
            }
            let secret = want.is_some_and(|w| w.secret);
            let hidden = match want {
                Some(_) => None,
                None if crate::secrets::named_like_a_secret(&self.db, &drift.path) => {
                    Some("named like a secret, so never shown; adopting it makes a secret entry".to_string())
                }
                None if !caller.role.allows(domain::Role::Approver) => {
                    Some("the primary does not manage this file: its content is shown to approvers and admins".to_string())
                }
                None => None,
            };
            let new = match (new, &hidden) {
                (Some(view), Some(_)) => Some(EntryView {
                    size: 0,
                    entry_hash: String::new(),
                    ..view
                }),
                (view, _) => view,
            };
            let content_differs = matches!(drift.kind, DriftKind::Content | DriftKind::Missing | DriftKind::Unexpected);
            let mut hidden = hidden;
            // The shadow's bytes, unless there are none or they are too large to diff.
            let shadow = match have {
                Some(_) if content_differs && !secret && hidden.is_none() => match driver.read_entry(&drift.path).await {
                    Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
                    Err(err) if err.code == "too_large" => {
                        hidden = Some(format!(
                            "too large to diff (over {} MiB)",
                            crate::shadows::MAX_AGENT_ANSWER / (1024 * 1024)
                        ));
                        None
                    }
                    Err(err) => return Err(Error::conflict("shadow_unavailable", format!("{name}: {err}"))),
                },
                _ => Some(String::new()),
            };
            let (text, keys) = if let Some(shadow) = shadow.filter(|_| content_differs && !secret && hidden.is_none()) {
                // Both sides as people may see them: secret values as placeholders, also in
                // a file the primary does not have (its format guessed from its name).
                let format = new.as_ref().or(old.as_ref()).map_or("text", |e| e.format.as_str()).to_string();
                let primary = match want.and_then(|w| w.blob.clone()) {
                    Some(blob) => {
                        let mut conn = self.db.read.acquire().await?;
                        String::from_utf8_lossy(&revisions::blob(&mut conn, &self.db.keys, &blob).await?).into_owned()
                    }
                    None => String::new(),
                };
                let primary = crate::secrets::redact(&self.db, &format, &primary);
                let shadow = crate::secrets::redact(&self.db, &format, &shadow);
                let keys = match (want, have) {
                    (Some(want), Some(_)) => want
                        .format
                        .parse::<domain::Format>()
                        .ok()
                        .and_then(|format| domain::keys::key_changes(format, &primary, &shadow)),
                    _ => None,
                };
                (
                    Some(domain::diff::diff_text(&primary, &shadow, Some(revisions::DIFF_DEADLINE))),
                    keys,
                )
            } else {
                (None, None)
            };
            entries.push(EntryDiff {
                path: drift.path.clone(),
                status: match drift.kind {
                    DriftKind::Missing => "removed",
                    DriftKind::Unexpected => "added",
                    _ => "modified",
                }
                .to_string(),
                old,
                new,
                policy_changes,
                text,
                secret_changed: secret && drift.kind == DriftKind::Content,
                keys,
                hidden,
            });
        }
        Ok(DiffView {
            from: format!("primary, revision #{current}"),
            to: format!("shadow {name}"),
            entries,
        })
    }
}
