//! Rollouts: turning an approved change into the next revision.
//!
//! The rollout journal is the `rollouts` and `rollout_shadows` tables. With no shadows
//! registered, the decision and the new revision are written in one transaction and the
//! rollout is `applied` at once; with shadows, [`Coordinator`] runs the two phases on the
//! same records. The revision becomes current at the commit decision.

use crate::{
    Caller, Db, Error, Result, audit,
    audit::page,
    changes::{self, ChangeRow},
    db::Identity,
    now,
    revisions::{self, EntrySet},
    shadows::{Registry, ShadowError},
};
use domain::{
    EntryPath, Hash, Role,
    api::{ChangeState, Page, RolloutEvent, RolloutShadowView, RolloutView},
    hash::root_hash,
    protocol::{Fence, PrepareRequest, StagedEntry},
};
use serde_json::json;
use sqlx::SqliteConnection;
use std::{sync::Arc, time::Duration};

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

/// Writes revision `number` (entries `next`) as the result of `change`, inside `tx`.
async fn write_revision(tx: &mut SqliteConnection, number: i64, root: &str, change: &ChangeRow, next: &EntrySet) -> Result<()> {
    sqlx::query("INSERT INTO revisions (number, root, parent, author, message, created_at, change_id) VALUES (?, ?, ?, ?, ?, ?, ?)")
        .bind(number)
        .bind(root)
        .bind(number - 1)
        .bind(&change.author)
        .bind(&change.message)
        .bind(now())
        .bind(change.id)
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
    sqlx::query("UPDATE changes SET state = 'rolled_out', revision = ?, updated_at = ? WHERE id = ?")
        .bind(number)
        .bind(now())
        .bind(change.id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The entries of a set as the agent protocol sends them (content included).
async fn staged_entries(conn: &mut SqliteConnection, keys: &crate::secrets::Keyring, set: &EntrySet) -> Result<Vec<StagedEntry>> {
    let mut entries = Vec::with_capacity(set.len());
    for row in set.values() {
        let hash = row
            .blob
            .as_deref()
            .ok_or_else(|| Error::Internal(format!("{} has no content", row.path)))?;
        let content = revisions::blob(conn, keys, hash).await?;
        entries.push(StagedEntry {
            path: row.path.clone(),
            content: String::from_utf8(content).map_err(|_| Error::Internal(format!("{} is not UTF-8", row.path)))?,
            mode: domain::policy::format_mode(u32::try_from(row.mode).unwrap_or(0)),
            owner: row.owner.clone(),
            group: row.grp.clone(),
            secret: row.secret,
        });
    }
    Ok(entries)
}

/// Deliberate crash at a named step (tests only): `ETC_SHADOW_CRASH_AT=after_prepare:2`
/// aborts the process the second time `after_prepare` is reached, like `kill -9`.
fn crash_point(name: &str) {
    #[cfg(feature = "crash-points")]
    {
        use std::sync::atomic::{AtomicU32, Ordering};
        static HITS: std::sync::Mutex<Vec<(String, AtomicU32)>> = std::sync::Mutex::new(Vec::new());
        let Ok(spec) = std::env::var("ETC_SHADOW_CRASH_AT") else { return };
        let (point, nth) = spec
            .split_once(':')
            .map_or((spec.as_str(), 1), |(p, n)| (p, n.parse().unwrap_or(1)));
        if point != name {
            return;
        }
        let mut hits = HITS.lock().unwrap_or_else(|p| p.into_inner());
        let count = match hits.iter().find(|(n, _)| n == name) {
            Some((_, counter)) => counter.fetch_add(1, Ordering::SeqCst) + 1,
            None => {
                hits.push((name.to_string(), AtomicU32::new(1)));
                1
            }
        };
        if count == nth {
            eprintln!("crash point {name}:{nth} reached");
            std::process::abort();
        }
    }
    #[cfg(not(feature = "crash-points"))]
    let _ = name;
}

/// What a rollout sends, to whom.
struct Plan {
    id: i64,
    revision: i64,
    root: String,
    base_root: String,
    reconcile: bool,
    entries: Vec<StagedEntry>,
    shadows: Vec<String>,
}

/// The rollout coordinator: two-phase commit across shadows with a durable journal in
/// SQLite (`rollouts`, `rollout_shadows`). Prepare on all in parallel; log the decision;
/// then commit on all (retrying each until it acknowledges) or abort on all. On start,
/// [`Coordinator::recover`] aborts undecided rollouts (presumed abort) and drives decided
/// ones to completion.
pub struct Coordinator {
    pub db: Db,
    pub registry: Arc<Registry>,
    pub identity: Identity,
    /// How long one shadow may take to prepare.
    pub prepare_timeout: Duration,
    /// How long a request waits for commits before answering `committing`; recovery keeps
    /// retrying afterwards.
    pub commit_patience: Duration,
    /// Held for as long as a rollout runs (one at a time).
    running: Arc<tokio::sync::Mutex<()>>,
    /// Moves when a rollout starts or ends: a drift check that saw it move discards what
    /// it read.
    generation: std::sync::atomic::AtomicU64,
    events: tokio::sync::broadcast::Sender<RolloutEvent>,
}

/// A started rollout: finished already (no shadows), or to be executed while `running`
/// is held.
enum Started {
    Done(RolloutView),
    Running {
        plan: Plan,
        change: ChangeRow,
        running: tokio::sync::OwnedMutexGuard<()>,
    },
}

impl Coordinator {
    pub fn new(db: Db, registry: Arc<Registry>, identity: Identity) -> Coordinator {
        Coordinator {
            db,
            registry,
            identity,
            prepare_timeout: Duration::from_secs(10),
            commit_patience: Duration::from_secs(20),
            running: Arc::new(tokio::sync::Mutex::new(())),
            generation: std::sync::atomic::AtomicU64::new(0),
            events: tokio::sync::broadcast::channel(1024).0,
        }
    }

    /// Whether a rollout (or recovery) is running now.
    pub fn is_running(&self) -> bool {
        self.running.try_lock().is_err()
    }

    /// A counter that moves whenever a rollout starts or ends.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn bump(&self) {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Live rollout progress, for the console and `GET /api/v1/events`.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<RolloutEvent> {
        self.events.subscribe()
    }

    fn emit(&self, rollout: i64, shadow: Option<&str>, phase: &str, root: Option<String>) {
        // Nobody listening is fine: the journal in SQLite is the record.
        let _ = self.events.send(RolloutEvent {
            rollout,
            shadow: shadow.map(str::to_string),
            phase: phase.to_string(),
            root,
        });
    }

    fn fence(&self) -> Fence {
        Fence {
            control_plane_id: self.identity.id.clone(),
            epoch: self.identity.epoch,
        }
    }

    fn busy() -> Error {
        Error::conflict("rollout_running", "another rollout is in progress")
    }

    /// Rolls out an approved change to every registered shadow. Answers when the rollout
    /// is applied, failed, or still committing after [`Self::commit_patience`].
    pub async fn roll_out(&self, caller: &Caller, change_id: i64) -> Result<RolloutView> {
        match self.start(caller, change_id).await? {
            Started::Done(view) => Ok(view),
            Started::Running { plan, change, running } => {
                let view = self.execute(plan, Some(change)).await;
                drop(running);
                view
            }
        }
    }

    /// Starts rolling out an approved change and answers at once, with the rollout as
    /// it stands (`preparing`); the rollout goes on in the background and its progress
    /// is streamed by [`Self::subscribe`]. Checks and refusals happen before it answers.
    pub async fn roll_out_detached(self: &Arc<Self>, caller: &Caller, change_id: i64) -> Result<RolloutView> {
        match self.start(caller, change_id).await? {
            Started::Done(view) => Ok(view),
            Started::Running { plan, change, running } => {
                let id = plan.id;
                let coordinator = self.clone();
                tokio::spawn(async move {
                    // A failure here (the database gone) leaves the rollout to recovery.
                    if let Err(err) = coordinator.execute(plan, Some(change)).await {
                        tracing::error!(rollout = id, %err, "rollout stopped; recovery will finish it");
                    }
                    drop(running);
                });
                get(&self.db, id).await
            }
        }
    }

    /// Checks the change and writes the rollout's journal rows; with no shadow at all the
    /// rollout is decided and applied right here.
    async fn start(&self, caller: &Caller, change_id: i64) -> Result<Started> {
        caller.require(Role::Approver)?;
        caller.require_recent_password()?;
        let running = self.running.clone().try_lock_owned().map_err(|_| Self::busy())?;
        let mut tx = self.db.begin().await?;
        let change = changes::load(&mut tx, change_id).await?;
        let current = check_rollable(&mut tx, &change).await?;
        let base = revisions::entries(&mut tx, current).await?;
        let ops = changes::operations(&mut tx, change_id).await?;
        let next = changes::apply(&base, &ops);
        let root = root_of(&next)?.to_hex();
        let base_root = root_of(&base)?.to_hex();
        let number = current + 1;
        let shadows: Vec<String> = sqlx::query_as::<_, (String,)>("SELECT name FROM shadows ORDER BY name")
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|(n,)| n)
            .collect();
        let decided_now = shadows.is_empty();
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO rollouts (change_id, kind, revision, root, base_root, state, decision, started_by, started_at)
             VALUES (?, 'change', ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(change_id)
        .bind(number)
        .bind(&root)
        .bind(&base_root)
        .bind(if decided_now { "applied" } else { "preparing" })
        .bind(decided_now.then_some("commit"))
        .bind(&caller.username)
        .bind(now())
        .fetch_one(&mut *tx)
        .await?;
        let details =
            json!({"change": change_id, "revision": number, "root": root, "content_hash": change.content_hash, "shadows": shadows});
        if decided_now {
            // Nothing to prepare: the decision and the new revision are one transaction.
            write_revision(&mut tx, number, &root, &change, &next).await?;
            sqlx::query("UPDATE rollouts SET finished_at = ? WHERE id = ?")
                .bind(now())
                .bind(id)
                .execute(&mut *tx)
                .await?;
            audit::append(&mut tx, &caller.username, "rollout.applied", &format!("rollout/{id}"), details).await?;
            crate::webhooks::enqueue(
                &mut tx,
                "rollout.applied",
                json!({"rollout": id, "revision": number, "root": root, "shadows": []}),
            )
            .await?;
            let view = view_in(&mut tx, id).await?;
            tx.commit().await?;
            return Ok(Started::Done(view));
        }
        for shadow in &shadows {
            sqlx::query("INSERT INTO rollout_shadows (rollout_id, shadow, phase, updated_at) VALUES (?, ?, 'pending', ?)")
                .bind(id)
                .bind(shadow)
                .bind(now())
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE shadows SET status = 'rolling_out'").execute(&mut *tx).await?;
        audit::append(&mut tx, &caller.username, "rollout.start", &format!("rollout/{id}"), details).await?;
        let entries = staged_entries(&mut tx, &self.db.keys, &next).await?;
        tx.commit().await?;
        crash_point("after_start");
        let plan = Plan {
            id,
            revision: number,
            root,
            base_root,
            reconcile: false,
            entries,
            shadows,
        };
        Ok(Started::Running { plan, change, running })
    }

    /// Pushes the current revision to one shadow (which may hold anything), as a
    /// reconcile rollout. The content is already approved, so no change is involved.
    pub async fn reconcile(&self, caller: &Caller, shadow: &str) -> Result<RolloutView> {
        caller.require(Role::Approver)?;
        caller.require_recent_password()?;
        crate::shadows::get(&self.db, shadow).await?;
        let _running = self.running.try_lock().map_err(|_| Self::busy())?;
        let mut tx = self.db.begin().await?;
        let (running,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM rollouts WHERE state IN ('preparing', 'committing')")
            .fetch_one(&mut *tx)
            .await?;
        if running > 0 {
            return Err(Self::busy());
        }
        let current = revisions::current_number(&mut tx).await?;
        let set = revisions::entries(&mut tx, current).await?;
        let root = root_of(&set)?.to_hex();
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO rollouts (change_id, kind, revision, root, base_root, state, started_by, started_at, target_shadow)
             VALUES (NULL, 'reconcile', ?, ?, ?, 'preparing', ?, ?, ?) RETURNING id",
        )
        .bind(current)
        .bind(&root)
        .bind(&root)
        .bind(&caller.username)
        .bind(now())
        .bind(shadow)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO rollout_shadows (rollout_id, shadow, phase, updated_at) VALUES (?, ?, 'pending', ?)")
            .bind(id)
            .bind(shadow)
            .bind(now())
            .execute(&mut *tx)
            .await?;
        audit::append(
            &mut tx,
            &caller.username,
            "rollout.reconcile",
            &format!("rollout/{id}"),
            json!({"shadow": shadow, "revision": current, "root": root}),
        )
        .await?;
        let entries = staged_entries(&mut tx, &self.db.keys, &set).await?;
        tx.commit().await?;
        let plan = Plan {
            id,
            revision: current,
            root: root.clone(),
            base_root: root,
            reconcile: true,
            entries,
            shadows: vec![shadow.to_string()],
        };
        crate::incidents::note_reconcile(&self.db, shadow, &caller.username, "reconcile_started", json!({"rollout": id})).await?;
        let view = self.execute(plan, None).await?;
        crate::incidents::note_reconcile(
            &self.db,
            shadow,
            "coordinator",
            "reconcile_finished",
            json!({"rollout": id, "state": view.state, "error": view.error}),
        )
        .await?;
        Ok(view)
    }

    async fn execute(&self, plan: Plan, change: Option<ChangeRow>) -> Result<RolloutView> {
        self.bump();
        let result = self.execute_plan(plan, change).await;
        self.bump();
        result
    }

    async fn execute_plan(&self, plan: Plan, change: Option<ChangeRow>) -> Result<RolloutView> {
        self.emit(plan.id, None, "preparing", Some(plan.root.clone()));
        let request = PrepareRequest {
            control_plane_id: self.identity.id.clone(),
            epoch: self.identity.epoch,
            revision: plan.revision,
            target_root: plan.root.clone(),
            base_root: plan.base_root.clone(),
            reconcile: plan.reconcile,
            entries: plan.entries,
        };
        let prepares = plan.shadows.iter().map(|name| {
            let request = request.clone();
            async move {
                let result = match self.registry.driver(&self.db, name).await {
                    Ok(driver) => match tokio::time::timeout(self.prepare_timeout, driver.prepare(plan.id, request)).await {
                        Ok(result) => result,
                        Err(_) => Err(ShadowError {
                            code: "timeout".into(),
                            message: format!("no answer within {:?}", self.prepare_timeout),
                            transient: true,
                        }),
                    },
                    Err(err) => Err(ShadowError {
                        code: "driver".into(),
                        message: err.public_message(),
                        transient: false,
                    }),
                };
                (name.clone(), result)
            }
        });
        let results = futures::future::join_all(prepares).await;
        let mut refusals = Vec::new();
        for (name, result) in &results {
            let (phase, staged_root, error) = match result {
                Ok(answer) if answer.root.as_deref() == Some(plan.root.as_str()) => ("prepared", answer.root.clone(), None),
                Ok(answer) => (
                    "refused",
                    answer.root.clone(),
                    Some(format!(
                        "staged root {} differs from the revision's root",
                        answer.root.clone().unwrap_or_default()
                    )),
                ),
                Err(err) => ("refused", None, Some(err.to_string())),
            };
            if let Some(error) = &error {
                refusals.push(format!("{name}: {error}"));
            }
            sqlx::query(
                "UPDATE rollout_shadows SET phase = ?, staged_root = ?, error = ?, updated_at = ? WHERE rollout_id = ? AND shadow = ?",
            )
            .bind(phase)
            .bind(&staged_root)
            .bind(error)
            .bind(now())
            .bind(plan.id)
            .bind(name)
            .execute(self.db.read_write())
            .await?;
            self.emit(plan.id, Some(name), phase, staged_root);
            crash_point("after_prepare");
        }
        // The decision, durably, before any shadow is told.
        let mut tx = self.db.begin().await?;
        let commit = refusals.is_empty();
        if commit {
            if let Some(change) = &change {
                let base = revisions::entries(&mut tx, plan.revision - 1).await?;
                let ops = changes::operations(&mut tx, change.id).await?;
                write_revision(&mut tx, plan.revision, &plan.root, change, &changes::apply(&base, &ops)).await?;
            }
            sqlx::query("UPDATE rollouts SET decision = 'commit', state = 'committing' WHERE id = ?")
                .bind(plan.id)
                .execute(&mut *tx)
                .await?;
            audit::append(
                &mut tx,
                "coordinator",
                "rollout.decide",
                &format!("rollout/{}", plan.id),
                json!({"decision": "commit"}),
            )
            .await?;
        } else {
            let error = format!("prepare refused, every shadow aborted: {}", refusals.join("; "));
            sqlx::query("UPDATE rollouts SET decision = 'abort', state = 'failed', error = ?, finished_at = ? WHERE id = ?")
                .bind(&error)
                .bind(now())
                .bind(plan.id)
                .execute(&mut *tx)
                .await?;
            audit::append(
                &mut tx,
                "coordinator",
                "rollout.failed",
                &format!("rollout/{}", plan.id),
                json!({"decision": "abort", "error": error}),
            )
            .await?;
            crate::webhooks::enqueue(
                &mut tx,
                "rollout.failed",
                json!({"rollout": plan.id, "revision": plan.revision, "root": plan.root, "error": error}),
            )
            .await?;
        }
        tx.commit().await?;
        self.emit(plan.id, None, if commit { "committing" } else { "failed" }, None);
        crash_point("after_decision");
        if commit {
            self.drive_commit(plan.id, self.commit_patience).await?;
        } else {
            self.drive_abort(plan.id).await?;
        }
        get(&self.db, plan.id).await
    }

    /// Commits on every shadow not yet acknowledged, retrying unreachable ones until
    /// `patience` runs out; marks the rollout applied once every receipt matches.
    async fn drive_commit(&self, id: i64, patience: Duration) -> Result<()> {
        let (root, kind): (String, String) = sqlx::query_as("SELECT root, kind FROM rollouts WHERE id = ?")
            .bind(id)
            .fetch_one(&self.db.read)
            .await?;
        // A shadow removed after the decision is no longer a target: waiting for it would
        // block every later rollout.
        sqlx::query(
            "UPDATE rollout_shadows SET phase = 'removed', error = 'the shadow was removed before it committed', updated_at = ?
             WHERE rollout_id = ? AND phase NOT IN ('committed', 'removed') AND shadow NOT IN (SELECT name FROM shadows)",
        )
        .bind(now())
        .bind(id)
        .execute(self.db.read_write())
        .await?;
        let pending: Vec<(String,)> = sqlx::query_as(
            "SELECT shadow FROM rollout_shadows WHERE rollout_id = ? AND phase NOT IN ('committed', 'removed') ORDER BY shadow",
        )
        .bind(id)
        .fetch_all(&self.db.read)
        .await?;
        let deadline = tokio::time::Instant::now() + patience;
        let commits = pending.into_iter().map(|(name,)| {
            let fence = self.fence();
            async move {
                let mut delay = Duration::from_millis(100);
                loop {
                    let result = match self.registry.driver(&self.db, &name).await {
                        Ok(driver) => driver.commit(id, fence.clone()).await,
                        Err(err) => Err(ShadowError {
                            code: "driver".into(),
                            message: err.public_message(),
                            transient: false,
                        }),
                    };
                    match result {
                        Ok(answer) => return (name, Ok(answer.root.unwrap_or_default())),
                        Err(err) if err.transient && tokio::time::Instant::now() + delay < deadline => {
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(2));
                        }
                        Err(err) => return (name, Err(err)),
                    }
                }
            }
        });
        for (name, result) in futures::future::join_all(commits).await {
            match result {
                Ok(receipt) => {
                    let mut tx = self.db.begin().await?;
                    let matches = receipt == root;
                    sqlx::query("UPDATE rollout_shadows SET phase = 'committed', receipt_root = ?, error = ?, updated_at = ? WHERE rollout_id = ? AND shadow = ?")
                        .bind(&receipt)
                        .bind((!matches).then(|| format!("committed, but now serves {receipt}")))
                        .bind(now())
                        .bind(id)
                        .bind(&name)
                        .execute(&mut *tx)
                        .await?;
                    let status = if matches { "in_sync" } else { "drifted" };
                    sqlx::query(
                        "UPDATE shadows SET status = ?, observed_root = ?, observed_revision = (SELECT revision FROM rollouts WHERE id = ?),
                         last_contact_at = ?, last_error = NULL, last_in_sync_at = CASE WHEN ? THEN ? ELSE last_in_sync_at END WHERE name = ?",
                    )
                    .bind(status)
                    .bind(&receipt)
                    .bind(id)
                    .bind(now())
                    .bind(matches)
                    .bind(now())
                    .bind(&name)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    self.emit(id, Some(&name), "committed", Some(receipt));
                    crash_point("after_commit");
                }
                Err(err) => {
                    sqlx::query("UPDATE rollout_shadows SET error = ?, updated_at = ? WHERE rollout_id = ? AND shadow = ?")
                        .bind(format!("waiting to commit: {err}"))
                        .bind(now())
                        .bind(id)
                        .bind(&name)
                        .execute(self.db.read_write())
                        .await?;
                }
            }
        }
        let (waiting,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM rollout_shadows s JOIN rollouts r ON r.id = s.rollout_id
             WHERE s.rollout_id = ? AND s.phase != 'removed' AND (s.phase != 'committed' OR s.receipt_root IS NOT r.root)",
        )
        .bind(id)
        .fetch_one(&self.db.read)
        .await?;
        if waiting == 0 {
            crash_point("before_applied_audit");
            let mut tx = self.db.begin().await?;
            sqlx::query("UPDATE rollouts SET state = 'applied', finished_at = ?, error = NULL WHERE id = ? AND state = 'committing'")
                .bind(now())
                .bind(id)
                .execute(&mut *tx)
                .await?;
            audit::append(
                &mut tx,
                "coordinator",
                "rollout.applied",
                &format!("rollout/{id}"),
                json!({"kind": kind, "root": root}),
            )
            .await?;
            crate::webhooks::enqueue(&mut tx, "rollout.applied", json!({"rollout": id, "kind": kind, "root": root})).await?;
            tx.commit().await?;
            self.emit(id, None, "applied", Some(root));
        }
        Ok(())
    }

    /// Aborts the rollout on every shadow it touched (idempotent on the shadow side).
    async fn drive_abort(&self, id: i64) -> Result<()> {
        let targets: Vec<(String,)> = sqlx::query_as("SELECT shadow FROM rollout_shadows WHERE rollout_id = ? AND phase != 'aborted'")
            .bind(id)
            .fetch_all(&self.db.read)
            .await?;
        let aborts = targets.into_iter().map(|(name,)| {
            let fence = self.fence();
            async move {
                let result = match self.registry.driver(&self.db, &name).await {
                    Ok(driver) => driver.abort(id, fence).await,
                    Err(err) => Err(ShadowError {
                        code: "driver".into(),
                        message: err.public_message(),
                        transient: false,
                    }),
                };
                (name, result)
            }
        });
        for (name, result) in futures::future::join_all(aborts).await {
            if let Err(err) = &result {
                tracing::warn!(rollout = id, shadow = %name, %err, "abort not acknowledged; the shadow drops the staging at its next prepare");
                continue;
            }
            sqlx::query(
                "UPDATE rollout_shadows SET phase = 'aborted', updated_at = ? WHERE rollout_id = ? AND shadow = ? AND phase != 'refused'",
            )
            .bind(now())
            .bind(id)
            .bind(&name)
            .execute(self.db.read_write())
            .await?;
            self.emit(id, Some(&name), "aborted", None);
        }
        sqlx::query(
            "UPDATE shadows SET status = CASE WHEN observed_root IS NULL THEN 'pending' ELSE status END WHERE status = 'rolling_out'",
        )
        .execute(self.db.read_write())
        .await?;
        Ok(())
    }

    /// Presumed abort for rollouts without a logged decision; completion for the ones
    /// decided to commit. Run at start, before serving, and then periodically (with
    /// `undecided = false`) so a shadow that was down receives its commit.
    pub async fn recover(&self, undecided: bool) -> Result<()> {
        let Ok(_running) = self.running.try_lock() else { return Ok(()) };
        if undecided {
            let open: Vec<(i64,)> = sqlx::query_as("SELECT id FROM rollouts WHERE decision IS NULL AND state = 'preparing'")
                .fetch_all(&self.db.read)
                .await?;
            for (id,) in open {
                let mut tx = self.db.begin().await?;
                sqlx::query("UPDATE rollouts SET decision = 'abort', state = 'aborted', error = ?, finished_at = ? WHERE id = ?")
                    .bind("presumed abort: the control plane stopped before deciding")
                    .bind(now())
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                audit::append(
                    &mut tx,
                    "coordinator",
                    "rollout.aborted",
                    &format!("rollout/{id}"),
                    json!({"reason": "presumed abort on recovery"}),
                )
                .await?;
                tx.commit().await?;
                self.drive_abort(id).await?;
            }
        }
        let committing: Vec<(i64,)> = sqlx::query_as("SELECT id FROM rollouts WHERE decision = 'commit' AND state = 'committing'")
            .fetch_all(&self.db.read)
            .await?;
        for (id,) in committing {
            self.drive_commit(id, Duration::from_secs(2)).await?;
        }
        Ok(())
    }
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

#[derive(sqlx::FromRow)]
struct RolloutShadowRow {
    shadow: String,
    phase: String,
    staged_root: Option<String>,
    receipt_root: Option<String>,
    error: Option<String>,
}

async fn with_shadows(conn: &mut SqliteConnection, row: RolloutRow) -> Result<RolloutView> {
    let shadows: Vec<RolloutShadowRow> =
        sqlx::query_as("SELECT shadow, phase, staged_root, receipt_root, error FROM rollout_shadows WHERE rollout_id = ? ORDER BY shadow")
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
            .map(|s| RolloutShadowView {
                name: s.shadow,
                phase: s.phase,
                staged_root: s.staged_root,
                receipt_root: s.receipt_root,
                error: s.error,
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

/// The latest rollout of a change, if it was rolled out at all.
pub async fn latest_for_change(db: &Db, change_id: i64) -> Result<Option<RolloutView>> {
    let mut conn = db.read.acquire().await?;
    let row: Option<RolloutRow> = sqlx::query_as(&format!("{ROLLOUT_SELECT} WHERE change_id = ? ORDER BY id DESC LIMIT 1"))
        .bind(change_id)
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        Some(row) => Ok(Some(with_shadows(&mut conn, row).await?)),
        None => Ok(None),
    }
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
