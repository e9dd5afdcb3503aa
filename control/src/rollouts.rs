//! Rollouts: turning an approved change into the next revision, on every shadow or none.
//!
//! The rollout journal is the `rollouts` and `rollout_shadows` tables; what the states
//! mean and which transitions exist is [`domain::rollout`], a pure state machine. The
//! [`Coordinator`] only carries out its decisions: every event (a shadow's answer, the
//! deadline, a restart, an operator's exit) is applied to the journal in one transaction
//! ([`Coordinator::apply`]: load, step, persist, audit), and the actions the machine answers
//! (send commit, send abort) are performed after that transaction commits.
//!
//! A rollout belongs to a background task of the coordinator, never to the request that
//! started it: a client that hangs up changes nothing. The task prepares every shadow
//! against one deadline, so an undecided rollout always ends, and the approved plan (the
//! next entry set, computed once at the start) is what is sent, proven and written as the
//! revision at the commit decision; the change is frozen until the rollout ends. With no
//! shadows registered, the decision and the revision are one transaction.

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
    rollout::{Action, Decision, Event, Phase, Progress, Rollout, State},
};
use futures::StreamExt;
use serde_json::json;
use sqlx::AnyConnection;
use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

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

/// Rollouts not yet in a terminal state (a terminal rollout has its `finished_at`).
async fn open_rollouts(conn: &mut AnyConnection) -> Result<Vec<i64>> {
    let rows: Vec<(i64,)> = sqlx::query_as("SELECT id FROM rollouts WHERE finished_at IS NULL ORDER BY id")
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

fn busy() -> Error {
    Error::conflict("rollout_running", "another rollout is in progress")
}

/// Refuses unless the change is approved by a still-valid approval, based on the current
/// revision, and no other rollout is open.
async fn check_rollable(conn: &mut AnyConnection, change: &ChangeRow) -> Result<i64> {
    let approvals = changes::approvals(conn, change).await?;
    let targets = changes::target_set(conn).await?;
    let for_targets = changes::approved_for_targets(conn, change).await?;
    match change.state()? {
        ChangeState::Approved if for_targets => {}
        ChangeState::Approved if approvals.iter().any(|a| a.valid) => {
            let approved: std::collections::BTreeSet<&String> = approvals
                .iter()
                .filter(|a| a.valid)
                .filter_map(|a| a.shadows.as_ref())
                .flatten()
                .collect();
            let now: std::collections::BTreeSet<&String> = targets.iter().collect();
            let added: Vec<&str> = now.difference(&approved).map(|s| s.as_str()).collect();
            let removed: Vec<&str> = approved.difference(&now).map(|s| s.as_str()).collect();
            return Err(Error::conflict(
                "approval_targets",
                format!(
                    "the shadows changed since the approval (added: {}; removed: {}; or one was registered again); the change needs a new approval for the shadows it would reach now",
                    if added.is_empty() { "none".to_string() } else { added.join(", ") },
                    if removed.is_empty() {
                        "none".to_string()
                    } else {
                        removed.join(", ")
                    }
                ),
            ));
        }
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
    if !open_rollouts(conn).await?.is_empty() {
        return Err(busy());
    }
    Ok(current)
}
/// Writes revision `number` (entries `next`) as the result of `change`, inside `tx`.
/// `base` is revision `number - 1`'s set: its rows are copied inside the database, and
/// only the entries the change touched are written one by one, so the decision of a
/// one-line change of a large set costs what the change costs.
async fn write_revision(
    tx: &mut AnyConnection,
    number: i64,
    root: &str,
    change: &ChangeRow,
    next: &EntrySet,
    base: &EntrySet,
) -> Result<()> {
    sqlx::query("INSERT INTO revisions (number, root, parent, author, message, created_at, change_id) VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(number)
        .bind(root)
        .bind(number - 1)
        .bind(&change.author)
        .bind(&change.message)
        .bind(now())
        .bind(change.id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO revision_entries (revision, path, blob, format, mode, owner, grp, secret, size, entry_hash)
         SELECT $1, path, blob, format, mode, owner, grp, secret, size, entry_hash FROM revision_entries WHERE revision = $2",
    )
    .bind(number)
    .bind(number - 1)
    .execute(&mut *tx)
    .await?;
    for (path, row) in base {
        if next.get(path) != Some(row) {
            sqlx::query("DELETE FROM revision_entries WHERE revision = $1 AND path = $2")
                .bind(number)
                .bind(path)
                .execute(&mut *tx)
                .await?;
        }
    }
    for row in next.values().filter(|row| base.get(&row.path) != Some(*row)) {
        sqlx::query(
            "INSERT INTO revision_entries (revision, path, blob, format, mode, owner, grp, secret, size, entry_hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(number)
        .bind(&row.path)
        .bind(&row.blob)
        .bind(&row.format)
        .bind(row.mode)
        .bind(&row.owner)
        .bind(&row.grp)
        .bind(crate::db::Flag(row.secret))
        .bind(row.size)
        .bind(&row.entry_hash)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("UPDATE changes SET state = 'rolled_out', revision = $1, updated_at = $2 WHERE id = $3")
        .bind(number)
        .bind(now())
        .bind(change.id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The entries of a set as the agent protocol sends them. An entry that `held` (the set
/// a shadow is known to serve) has with the same entry hash goes by its hash alone: the
/// shadow links its own copy after proving it, and answers `incomplete` for any it does
/// not hold (see [`with_content`]). So a rollout reads and sends what changed. An entry
/// whose hash is keyed (a sealed one, stored since entries are keyed) says so, for the
/// shadow to hash it the same way.
pub(crate) async fn staged_entries(conn: &mut AnyConnection, db: &Db, set: &EntrySet, held: Option<&EntrySet>) -> Result<Vec<StagedEntry>> {
    let mut entries = Vec::with_capacity(set.len());
    for row in set.values() {
        let blob = row
            .blob
            .as_deref()
            .ok_or_else(|| Error::Internal(format!("{} has no content", row.path)))?;
        if held
            .and_then(|held| held.get(&row.path))
            .is_some_and(|there| there.entry_hash == row.entry_hash)
        {
            entries.push(StagedEntry {
                path: row.path.clone(),
                content: None,
                entry_hash: Some(row.entry_hash.clone()),
                mode: domain::policy::format_mode(u32::try_from(row.mode).unwrap_or(0)),
                owner: row.owner.clone(),
                group: row.grp.clone(),
                secret: row.secret,
                // Entries stored before hashes were keyed had sealed blobs and plain
                // hashes: the shadow finds such an entry `incomplete`, and it is sent.
                sealed: crate::changes::is_sealed_blob(blob),
            });
        } else {
            entries.push(staged_entry(conn, db, row).await?);
        }
    }
    Ok(entries)
}

/// One entry with its content.
async fn staged_entry(conn: &mut AnyConnection, db: &Db, row: &revisions::EntryRow) -> Result<StagedEntry> {
    let hash = row
        .blob
        .as_deref()
        .ok_or_else(|| Error::Internal(format!("{} has no content", row.path)))?;
    let content = revisions::blob(conn, &db.keys, hash).await?;
    let sealed = crate::changes::is_sealed_blob(hash) && crate::changes::sealed_hash(db, row, &content)?.to_hex() == row.entry_hash;
    Ok(StagedEntry {
        sealed,
        path: row.path.clone(),
        content: Some(String::from_utf8(content).map_err(|_| Error::Internal(format!("{} is not UTF-8", row.path)))?),
        entry_hash: None,
        mode: domain::policy::format_mode(u32::try_from(row.mode).unwrap_or(0)),
        owner: row.owner.clone(),
        group: row.grp.clone(),
        secret: row.secret,
    })
}

/// `entries` (of `set`) with the content of those a shadow named `missing` filled in.
/// `None` when it named a path that was not sent by hash: a shadow that asks for what it
/// was sent, or for what the rollout does not have, is not asked again.
async fn with_content(db: &Db, set: &EntrySet, entries: &[StagedEntry], missing: &[String]) -> Result<Option<Vec<StagedEntry>>> {
    let missing: std::collections::HashSet<&str> = missing.iter().map(String::as_str).collect();
    let sent_by_hash = entries
        .iter()
        .filter(|e| e.content.is_none() && missing.contains(e.path.as_str()))
        .count();
    if missing.is_empty() || sent_by_hash != missing.len() {
        return Ok(None);
    }
    let mut conn = db.read.acquire().await?;
    let mut filled = Vec::with_capacity(entries.len());
    for entry in entries {
        match set.get(&entry.path) {
            Some(row) if missing.contains(entry.path.as_str()) => filled.push(staged_entry(&mut conn, db, row).await?),
            _ => filled.push(entry.clone()),
        }
    }
    Ok(Some(filled))
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

/// What a rollout sends, to whom, and (for a change) the entry set it becomes. Computed
/// once, at the start, from the approved change: the same plan is prepared, proven and
/// written as the revision at the commit decision.
struct Plan {
    id: i64,
    revision: i64,
    root: String,
    base_root: String,
    reconcile: bool,
    /// Entries the shadows hold already go by hash (see [`staged_entries`]).
    entries: Arc<Vec<StagedEntry>>,
    shadows: Vec<String>,
    /// The entry set the rollout serves, for the content a shadow asks for.
    set: Arc<EntrySet>,
    /// For a change rollout: the change and the entry set of the next revision.
    /// (And the base revision's set, which the next one is written from.)
    change: Option<(ChangeRow, Arc<EntrySet>, Arc<EntrySet>)>,
    /// The secret fragments of the entry set, masked in what the nodes' hooks print.
    masks: Vec<String>,
}

/// What the journal says of a rollout besides its state machine.
struct Meta {
    kind: String,
    revision: i64,
    change_id: Option<i64>,
}

/// The rollout coordinator: two-phase commit across shadows with the journal in SQLite.
/// Prepare on all in parallel against one deadline; log the decision; then commit on all
/// (retrying each until it answers) or abort on all. [`Coordinator::recover`] presumes
/// abort for undecided rollouts nobody runs and drives decided ones to completion.
pub struct Coordinator {
    pub db: Db,
    pub registry: Arc<Registry>,
    /// Whether this process leads, and with which epoch (see [`Term`]).
    term: std::sync::RwLock<Term>,
    /// The epoch `db` writes for (none while not leading).
    fence: crate::db::TermFence,
    /// Tasks that write for the term (rollouts, recoveries, sends after a cancel): ended
    /// when it ends.
    term_tasks: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
    /// The prepare deadline: a rollout not decided this long after it started is aborted,
    /// unless every shadow it still waits for is making progress (see
    /// [`store::Progress`]): then it waits this long again, up to [`Self::prepare_limit`].
    pub prepare_timeout: Duration,
    /// The longest any prepare may take, progress or not.
    pub prepare_limit: Duration,
    /// How long a request that waits for the outcome waits for the commits after the
    /// decision before answering `committing` (the rollout goes on regardless).
    pub commit_patience: Duration,
    /// How long one commit or abort call to a shadow may take.
    pub call_timeout: Duration,
    /// Held by the task that owns the open rollout (one at a time).
    running: Arc<tokio::sync::Mutex<()>>,
    /// Woken when an operator changed an open rollout (a cancel, a release), so its task
    /// stops waiting at once instead of at the next answer or retry.
    operator_moved: tokio::sync::Notify,
    /// Moves when a rollout starts or ends: a drift check that saw it move discards what
    /// it read.
    generation: std::sync::atomic::AtomicU64,
    events: tokio::sync::broadcast::Sender<RolloutEvent>,
    incident_notices: tokio::sync::broadcast::Sender<domain::api::IncidentNotice>,
    /// Whether approved changes are staged on the shadows ahead of their rollout (see
    /// [`crate::prestage`]).
    pub prestaging: bool,
    /// What each shadow answered it holds staged ahead.
    pub(crate) staged_ahead: std::sync::Mutex<HashMap<String, crate::prestage::StagedAhead>>,
    /// The root each shadow's validator refused to stage ahead: not asked again until
    /// another tree is wanted.
    pub(crate) stage_refused: std::sync::Mutex<HashMap<String, String>>,
    /// Prepares answered from a tree staged ahead.
    pub(crate) taken_from_stage: std::sync::atomic::AtomicU64,
    pub(crate) staging_nudge: tokio::sync::Notify,
    /// The last change plan computed (see [`Coordinator::change_plan`]).
    plan_memo: std::sync::Mutex<Option<PlanMemo>>,
    /// Where events are published to the other replicas (see [`crate::bus`]).
    outbox: std::sync::OnceLock<crate::bus::Outbox>,
}

/// Whether this process may decide rollouts and write to shadows, and as whom.
///
/// The sole server of a database leads from its start, with the epoch it raised then. A
/// replica ([`crate::cluster`]) leads only for the terms it wins, with the epoch
/// [`Db::take_leadership`] made of its leader key's revision, and asks etcd again
/// ([`crate::cluster::Standing::confirm`]) before each decision it logs. Every journal
/// write of the coordinator happens in a transaction that first finds this epoch still
/// the stored one, so a deposed leader's writes, however late they come, change nothing.
#[derive(Clone)]
pub struct Term {
    pub identity: Identity,
    pub leading: bool,
    /// The election won and the revision of the leader key (`None`: the sole server).
    pub elected: Option<(Arc<crate::cluster::Election>, i64)>,
}

/// What rolling a change out on top of a revision means: computed once for a change's
/// operations and a revision, and shared by the staging pass (which stages it ahead) and
/// the rollout's start (which prepares it), so a rollout of a large set does not load and
/// hash it again after it was staged.
#[derive(Clone)]
pub(crate) struct ChangePlan {
    pub base: Arc<EntrySet>,
    pub next: Arc<EntrySet>,
    pub root: String,
    pub base_root: String,
    /// Entries the shadows hold already go by hash (see [`staged_entries`]).
    pub entries: Arc<Vec<StagedEntry>>,
}

struct PlanMemo {
    change: i64,
    revision: i64,
    ops: Vec<changes::ChangeEntryRow>,
    plan: ChangePlan,
}

/// The commit answers that no retry can change: the shadow no longer holds the staging
/// (wiped, aborted there) or refuses this writer. Anything else (unreachable, a timeout,
/// a full disk) is retried.
fn final_commit_refusal(err: &ShadowError) -> bool {
    !err.transient && matches!(err.code.as_str(), "fenced" | "not_found" | "conflict")
}

impl Coordinator {
    /// A coordinator that leads as `identity` from the start (a sole server); its handle
    /// of the database is fenced by its term (see [`Db::fenced`]).
    pub fn new(db: Db, registry: Arc<Registry>, identity: Identity) -> Coordinator {
        let fence = crate::db::TermFence::new(Some(identity.epoch));
        Coordinator {
            db: db.fenced(fence.clone()),
            fence,
            registry,
            term: std::sync::RwLock::new(Term {
                identity,
                leading: true,
                elected: None,
            }),
            term_tasks: std::sync::Mutex::new(Vec::new()),
            prepare_timeout: Duration::from_secs(10),
            prepare_limit: Duration::from_secs(600),
            commit_patience: Duration::from_secs(20),
            call_timeout: Duration::from_secs(10),
            running: Arc::new(tokio::sync::Mutex::new(())),
            operator_moved: tokio::sync::Notify::new(),
            generation: std::sync::atomic::AtomicU64::new(0),
            events: tokio::sync::broadcast::channel(1024).0,
            incident_notices: tokio::sync::broadcast::channel(64).0,
            prestaging: true,
            staged_ahead: std::sync::Mutex::new(HashMap::new()),
            stage_refused: std::sync::Mutex::new(HashMap::new()),
            taken_from_stage: std::sync::atomic::AtomicU64::new(0),
            staging_nudge: tokio::sync::Notify::new(),
            plan_memo: std::sync::Mutex::new(None),
            outbox: std::sync::OnceLock::new(),
        }
    }

    /// The plan of change `change` on top of revision `current`, read through `conn`: the
    /// one computed last when the change's operations and the revision are the same (a
    /// revision's entries never change, and an edit changes the operations), computed
    /// otherwise.
    pub(crate) async fn change_plan(&self, conn: &mut AnyConnection, change: i64, current: i64) -> Result<ChangePlan> {
        let ops = changes::operations(conn, change).await?;
        if let Some(memo) = self.plan_memo.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
            && memo.change == change
            && memo.revision == current
            && memo.ops == ops
        {
            return Ok(memo.plan.clone());
        }
        let base = revisions::entries(conn, current).await?;
        let next = changes::apply(&base, &ops);
        let plan = ChangePlan {
            root: root_of(&next)?.to_hex(),
            base_root: root_of(&base)?.to_hex(),
            entries: Arc::new(staged_entries(conn, &self.db, &next, Some(&base)).await?),
            base: Arc::new(base),
            next: Arc::new(next),
        };
        *self.plan_memo.lock().unwrap_or_else(|p| p.into_inner()) = Some(PlanMemo {
            change,
            revision: current,
            ops,
            plan: plan.clone(),
        });
        Ok(plan)
    }

    /// The identity shadows see in this process's writes (the latest term's).
    pub fn identity(&self) -> Identity {
        self.term.read().unwrap_or_else(|p| p.into_inner()).identity.clone()
    }

    /// Whether this process leads now.
    pub fn leading(&self) -> bool {
        self.term.read().unwrap_or_else(|p| p.into_inner()).leading
    }

    /// Refuses leader-only work in a process that does not lead.
    pub fn require_leader(&self) -> Result<Identity> {
        let term = self.term.read().unwrap_or_else(|p| p.into_inner());
        if term.leading {
            Ok(term.identity.clone())
        } else {
            Err(Error::NotLeader { leader: None })
        }
    }

    /// Starts a term: from now on this process decides rollouts and writes to shadows as
    /// `identity` (taken by [`Db::take_leadership`] or [`Db::raise_epoch`]).
    pub fn lead(&self, identity: Identity, elected: Option<(Arc<crate::cluster::Election>, i64)>) {
        tracing::info!(epoch = identity.epoch, "the coordinator leads");
        self.fence.set(Some(identity.epoch));
        *self.term.write().unwrap_or_else(|p| p.into_inner()) = Term {
            identity,
            leading: true,
            elected,
        };
    }

    /// Ends the term: the tasks that write for it stop where they are (the next leader
    /// recovers their rollouts as at a start), and nothing new starts.
    pub fn step_down(&self) {
        {
            let mut term = self.term.write().unwrap_or_else(|p| p.into_inner());
            if term.leading && term.elected.is_some() {
                tracing::warn!(epoch = term.identity.epoch, "the coordinator steps down");
            }
            term.leading = false;
            term.elected = None;
            self.fence.set(None);
        }
        for task in self.term_tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            task.abort();
        }
        self.staged_ahead.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.bump();
        self.operator_moved.notify_waiters();
    }

    /// Spawns a task that writes for the current term: aborted when the term ends.
    fn spawn_for_term<F>(&self, task: F) -> tokio::task::JoinHandle<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::spawn(task);
        let mut tasks = self.term_tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|task| !task.is_finished());
        tasks.push(handle.abort_handle());
        drop(tasks);
        // A term that ended while it was being spawned does not keep it.
        if !self.leading() {
            handle.abort();
        }
        handle
    }

    /// A write transaction of the current term: refused when this process does not lead,
    /// or when the stored epoch moved past this term's (another replica leads since; see
    /// [`Db::fenced`], which every write through `self.db` goes through).
    pub async fn begin_for_term(&self, relaxed: bool) -> Result<crate::db::Tx> {
        self.require_leader()?;
        if relaxed {
            self.db.begin_relaxed().await
        } else {
            self.db.begin().await
        }
    }

    /// Before a decision is logged: a replica asks etcd whether its term still holds,
    /// with time to spare before its lease could end (the sole server always may).
    async fn confirm_term(&self) -> Result<()> {
        let elected = self.term.read().unwrap_or_else(|p| p.into_inner()).elected.clone();
        if let Some((election, revision)) = elected {
            election.confirm(revision).await.map_err(|err| {
                tracing::warn!(%err, "the term is not confirmed; no decision is logged");
                Error::NotLeader { leader: None }
            })?;
        }
        Ok(())
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
        let event = RolloutEvent {
            rollout,
            shadow: shadow.map(str::to_string),
            phase: phase.to_string(),
            root,
        };
        if let Some(outbox) = self.outbox.get() {
            let _ = outbox.try_send(crate::bus::Message::Rollout(event.clone()));
        }
        // Nobody listening is fine: the journal in the database is the record.
        let _ = self.events.send(event);
    }

    /// Publishes this process's events to the other replicas from now on.
    pub fn publish_to(&self, outbox: crate::bus::Outbox) {
        let _ = self.outbox.set(outbox);
    }

    /// An event of a rollout another replica runs, for this one's subscribers.
    pub fn deliver(&self, event: RolloutEvent) {
        let _ = self.events.send(event);
    }

    /// The right to start a rollout: refused at once while the journal has an open one;
    /// otherwise granted as soon as the task of the last one has let go (it may still be
    /// on its way out after its terminal state).
    async fn acquire_running(&self) -> Result<tokio::sync::OwnedMutexGuard<()>> {
        let mut conn = self.db.read.acquire().await?;
        if !open_rollouts(&mut conn).await?.is_empty() {
            return Err(busy());
        }
        drop(conn);
        tokio::time::timeout(Duration::from_secs(5), self.running.clone().lock_owned())
            .await
            .map_err(|_| busy())
    }

    /// The writer's identity for a commit or abort of the rollout of `root`.
    fn fence(&self, root: &str) -> Fence {
        let identity = self.identity();
        Fence {
            control_plane_id: identity.id,
            epoch: identity.epoch,
            target_root: Some(root.to_string()),
        }
    }

    /// Rolls out an approved change to every registered shadow. Answers when the rollout
    /// ended, or as it stands once [`Self::commit_patience`] passed after the deadline; the
    /// rollout itself belongs to the coordinator, so a caller that hangs up changes nothing.
    pub async fn roll_out(self: &Arc<Self>, caller: &Caller, change_id: i64) -> Result<RolloutView> {
        let (id, task) = self.start_change(caller, change_id).await?;
        self.wait(id, task).await
    }

    /// Starts rolling out an approved change and answers at once, with the rollout as
    /// it stands (`preparing`); its progress is streamed by [`Self::subscribe`]. Checks
    /// and refusals happen before it answers.
    pub async fn roll_out_detached(self: &Arc<Self>, caller: &Caller, change_id: i64) -> Result<RolloutView> {
        let (id, _task) = self.start_change(caller, change_id).await?;
        get(&self.db, id).await
    }

    /// Pushes the current revision to one shadow (which may hold anything), as a
    /// reconcile rollout. The content is already approved, so no change is involved.
    pub async fn reconcile(self: &Arc<Self>, caller: &Caller, shadow: &str) -> Result<RolloutView> {
        let (id, task) = self.start_reconcile(caller, shadow).await?;
        self.wait(id, task).await
    }

    async fn wait(&self, id: i64, task: Option<tokio::task::JoinHandle<()>>) -> Result<RolloutView> {
        if let Some(task) = task {
            // Dropping the handle (the caller hung up, or waited long enough) leaves the
            // task running.
            let _ = tokio::time::timeout(self.prepare_timeout + self.commit_patience, task).await;
        }
        get(&self.db, id).await
    }

    /// Checks the change and writes the rollout's journal rows; with no shadow at all the
    /// rollout is decided and applied right here. Otherwise the rollout's task is started.
    async fn start_change(self: &Arc<Self>, caller: &Caller, change_id: i64) -> Result<(i64, Option<tokio::task::JoinHandle<()>>)> {
        caller.require(Role::Approver)?;
        caller.require_recent_password()?;
        let running = self.acquire_running().await?;
        let mut tx = self.begin_for_term(false).await?;
        let change = changes::load(&mut tx, change_id).await?;
        let current = check_rollable(&mut tx, &change).await?;
        let ChangePlan {
            base,
            next,
            root,
            base_root,
            entries,
        } = self.change_plan(&mut tx, change_id, current).await?;
        let number = current + 1;
        let shadows = changes::target_set(&mut tx).await?;
        let decided_now = shadows.is_empty();
        let (state, decision) = if decided_now {
            (State::Applied, Some(Decision::Commit))
        } else {
            (State::Preparing, None)
        };
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO rollouts (change_id, kind, revision, root, base_root, state, decision, started_by, started_at)
             VALUES ($1, 'change', $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(change_id)
        .bind(number)
        .bind(&root)
        .bind(&base_root)
        .bind(state.as_str())
        .bind(decision.map(Decision::as_str))
        .bind(&caller.username)
        .bind(now())
        .fetch_one(&mut *tx)
        .await?;
        let details =
            json!({"change": change_id, "revision": number, "root": root, "content_hash": change.content_hash, "shadows": shadows});
        if decided_now {
            // Nothing to prepare: the decision and the new revision are one transaction.
            write_revision(&mut tx, number, &root, &change, &next, &base).await?;
            sqlx::query("UPDATE rollouts SET finished_at = $1 WHERE id = $2")
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
            self.confirm_term().await?;
            tx.commit().await?;
            return Ok((id, None));
        }
        insert_targets(&mut tx, id, &shadows).await?;
        sqlx::query("UPDATE shadows SET status = 'rolling_out'").execute(&mut *tx).await?;
        audit::append(&mut tx, &caller.username, "rollout.start", &format!("rollout/{id}"), details).await?;
        // Every shadow serves the base (a prepare checks it): what it holds unchanged
        // goes by hash (in the plan's entries).
        // A validator may print the live files beside the staged ones.
        let masks = crate::hooks::secret_values_of(&mut tx, &self.db, &[&next, &base]).await?;
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
            set: next.clone(),
            change: Some((change, next, base)),
            masks,
        };
        Ok((id, Some(self.launch(plan, running))))
    }

    async fn start_reconcile(self: &Arc<Self>, caller: &Caller, shadow: &str) -> Result<(i64, Option<tokio::task::JoinHandle<()>>)> {
        caller.require(Role::Approver)?;
        caller.require_recent_password()?;
        crate::shadows::get(&self.db, shadow).await?;
        let running = self.acquire_running().await?;
        let mut tx = self.begin_for_term(false).await?;
        if !open_rollouts(&mut tx).await?.is_empty() {
            return Err(busy());
        }
        let current = revisions::current_number(&mut tx).await?;
        let set = revisions::entries(&mut tx, current).await?;
        let root = root_of(&set)?.to_hex();
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO rollouts (change_id, kind, revision, root, base_root, state, started_by, started_at, target_shadow)
             VALUES (NULL, 'reconcile', $1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(current)
        .bind(&root)
        .bind(&root)
        .bind(State::Preparing.as_str())
        .bind(&caller.username)
        .bind(now())
        .bind(shadow)
        .fetch_one(&mut *tx)
        .await?;
        insert_targets(&mut tx, id, &[shadow.to_string()]).await?;
        audit::append(
            &mut tx,
            &caller.username,
            "rollout.reconcile",
            &format!("rollout/{id}"),
            json!({"shadow": shadow, "revision": current, "root": root}),
        )
        .await?;
        // The shadow likely still holds most of the revision it last served; what it does
        // not hold as its hash says, it asks for.
        let (observed,): (Option<i64>,) = sqlx::query_as("SELECT observed_revision FROM shadows WHERE name = $1")
            .bind(shadow)
            .fetch_one(&mut *tx)
            .await?;
        let held = match observed.filter(|n| (1..=current).contains(n)) {
            Some(number) => Some(revisions::entries(&mut tx, number).await?),
            None => None,
        };
        let entries = staged_entries(&mut tx, &self.db, &set, held.as_ref()).await?;
        // The shadow may hold anything; an earlier revision is the likeliest.
        let previous = revisions::entries(&mut tx, (current - 1).max(0)).await?;
        let masks = crate::hooks::secret_values_of(&mut tx, &self.db, &[&set, &previous]).await?;
        crate::incidents::note_reconcile_in(&mut tx, shadow, &caller.username, "reconcile_started", json!({"rollout": id})).await?;
        tx.commit().await?;
        let plan = Plan {
            id,
            revision: current,
            root: root.clone(),
            base_root: root,
            reconcile: true,
            entries: Arc::new(entries),
            shadows: vec![shadow.to_string()],
            set: Arc::new(set),
            change: None,
            masks,
        };
        Ok((id, Some(self.launch(plan, running))))
    }

    /// The rollout's own task: it runs to a terminal state (or until the process stops,
    /// when recovery takes over), whoever started it and whether or not they still wait.
    fn launch(self: &Arc<Self>, plan: Plan, running: tokio::sync::OwnedMutexGuard<()>) -> tokio::task::JoinHandle<()> {
        let coordinator = self.clone();
        self.spawn_for_term(async move {
            let id = plan.id;
            let reconciled = plan.reconcile.then(|| plan.shadows[0].clone());
            coordinator.bump();
            if let Err(err) = coordinator.drive(plan).await {
                tracing::error!(rollout = id, %err, "rollout stopped; recovery will finish it");
            }
            if let Some(shadow) = reconciled {
                let view = get(&coordinator.db, id).await;
                let (state, error) = view.map(|v| (v.state, v.error)).unwrap_or_default();
                if let Err(err) = crate::incidents::note_reconcile(
                    &coordinator.db,
                    &shadow,
                    "coordinator",
                    "reconcile_finished",
                    json!({"rollout": id, "state": state, "error": error}),
                )
                .await
                {
                    tracing::warn!(rollout = id, %err, "cannot note the reconcile on the incident");
                }
            }
            coordinator.bump();
            // The plan holds the contents it sent (secret ones decrypted): not kept
            // beyond its rollout.
            *coordinator.plan_memo.lock().unwrap_or_else(|p| p.into_inner()) = None;
            drop(running);
            // A rollout that did not commit leaves its change approved: staged again.
            coordinator.nudge_staging();
        })
    }

    /// Prepares every shadow against the deadline, then commits or aborts as decided.
    async fn drive(&self, plan: Plan) -> Result<()> {
        self.emit(plan.id, None, State::Preparing.as_str(), Some(plan.root.clone()));
        let started = tokio::time::Instant::now();
        let mut deadline = started + self.prepare_timeout;
        // Who answered, and how far each of the others had come at the last look.
        let mut answered: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut steps: HashMap<String, u64> = HashMap::new();
        let head = crate::audit::head(&self.db).await?;
        let identity = self.identity();
        let request = PrepareRequest {
            control_plane_id: identity.id,
            epoch: identity.epoch,
            revision: plan.revision,
            target_root: plan.root.clone(),
            base_root: plan.base_root.clone(),
            reconcile: plan.reconcile,
            entries: plan.entries.to_vec(),
            audit_head: (head.seq > 0).then_some(domain::audit::Anchor {
                seq: head.seq,
                hash: head.hash,
            }),
            // Always: the shadow hashes sealed entries and files it holds unmanaged with it.
            content_key: Some(self.db.keys.content_key().to_hex()),
            prestaged: false,
            // Less a margin for the way there and back, so the refusal arrives in time.
            deadline_ms: Some(u64::try_from(self.prepare_timeout.saturating_sub(Duration::from_secs(1)).as_millis()).unwrap_or(u64::MAX)),
        };
        // Shadows holding the plan's tree staged ahead are sent no entries (see
        // [`crate::prestage`]).
        let ahead = if plan.reconcile {
            self.take_staged_ahead(&plan.shadows, "", "");
            std::collections::HashSet::new()
        } else {
            self.take_staged_ahead(&plan.shadows, &plan.root, &plan.base_root)
        };
        let mut prepares: futures::stream::FuturesUnordered<_> = plan
            .shadows
            .iter()
            .map(|name| {
                let request = request.clone();
                let plan = &plan;
                let ahead = ahead.contains(name);
                async move {
                    let result = match self.registry.driver(&self.db, name).await {
                        Ok(driver) => self.prepare_one(&driver, plan, request, ahead).await,
                        Err(err) => Err(ShadowError {
                            code: "driver".into(),
                            message: err.public_message(),
                            transient: false,
                            hook: None,
                            ..Default::default()
                        }),
                    };
                    (name.clone(), result)
                }
            })
            .collect();
        loop {
            let operator_moved = self.operator_moved.notified();
            let answer = tokio::select! {
                answer = tokio::time::timeout_at(deadline, prepares.next()) => answer,
                () = operator_moved => {
                    // A cancel decided the rollout meanwhile; the late answers stay unheard.
                    let mut conn = self.db.read.acquire().await?;
                    if load_in(&mut conn, plan.id).await?.0.decision.is_some() {
                        break;
                    }
                    continue;
                }
            };
            // A shadow that is working is not dead: while every one still preparing has
            // made progress since the last look, the deadline moves on.
            if answer.is_err() {
                // An operator's cancel may have decided it meanwhile (its wake-up is lost
                // while this task is busy elsewhere): the journal says.
                let mut conn = self.db.read.acquire().await?;
                let decided = load_in(&mut conn, plan.id).await?.0.decision.is_some();
                drop(conn);
                if decided {
                    break;
                }
                let waiting: Vec<&String> = plan.shadows.iter().filter(|s| !answered.contains(*s)).collect();
                let now = tokio::time::Instant::now();
                if now < started + self.prepare_limit && self.all_progressing(plan.id, &waiting, &mut steps).await {
                    deadline = (now + self.prepare_timeout).min(started + self.prepare_limit);
                    continue;
                }
            }
            // What the node's validate hook said goes into the journal before the answer
            // it came with, masked.
            if let Ok(Some((shadow, result))) = &answer {
                answered.insert(shadow.clone());
                let hook = match result {
                    Ok(answer) => answer.hook.clone(),
                    Err(err) => err.hook.as_deref().cloned(),
                };
                if let Some(hook) = hook {
                    self.save_hook(plan.id, shadow, crate::hooks::mask(hook, &plan.masks)).await?;
                }
            }
            let event = match answer {
                Ok(Some((shadow, Ok(answer)))) => match answer.root {
                    Some(root) => Event::Prepared { shadow, root },
                    None => Event::Refused {
                        shadow,
                        reason: "answered prepared without a staged root".into(),
                    },
                },
                Ok(Some((shadow, Err(err)))) => Event::Refused {
                    shadow,
                    reason: err.to_string(),
                },
                Ok(None) => break,
                // The shadows still staging are refused; whatever they stage late is
                // aborted (a store also refuses to stage a rollout it has aborted).
                Err(_) => Event::DeadlinePassed,
            };
            let deadline_passed = event == Event::DeadlinePassed;
            let others_awaited = answered.len() < plan.shadows.len();
            let (rollout, actions) = self.record_answer(plan.id, event, Some(&plan), others_awaited).await?;
            self.perform(plan.id, &plan.root, &actions).await?;
            if !deadline_passed {
                crash_point("after_prepare");
            }
            if rollout.decision.is_some() {
                break;
            }
        }
        drop(prepares);
        crash_point("after_decision");
        // The plan's masks are those of its revision and the one before, as the commits
        // need them.
        self.drive_commit(plan.id, Some(plan.masks.clone())).await
    }

    /// One shadow's prepare: without entries to one that holds the plan's tree staged
    /// ahead; with them when it answers `not_prestaged`; once more with the content of
    /// the entries it answers `incomplete` for (sent by hash, but it drifted or lost its
    /// generation).
    async fn prepare_one(
        &self,
        driver: &crate::shadows::Driver,
        plan: &Plan,
        request: PrepareRequest,
        ahead: bool,
    ) -> Result<domain::protocol::RolloutAnswer, ShadowError> {
        if ahead {
            let compact = PrepareRequest {
                entries: Vec::new(),
                prestaged: true,
                ..request.clone()
            };
            match driver.prepare(plan.id, compact).await {
                Err(err) if err.code == "not_prestaged" => {
                    tracing::info!(
                        rollout = plan.id,
                        "a shadow no longer held the tree staged ahead; sending the entries"
                    );
                }
                other => {
                    if other.is_ok() {
                        self.taken_from_stage.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    return other;
                }
            }
        }
        match driver.prepare(plan.id, request.clone()).await {
            Err(err) if err.code == "incomplete" => match with_content(&self.db, &plan.set, &request.entries, &err.missing).await {
                Ok(Some(entries)) => driver.prepare(plan.id, PrepareRequest { entries, ..request }).await,
                Ok(None) => Err(err),
                Err(fill) => Err(ShadowError {
                    code: "internal".into(),
                    message: fill.public_message(),
                    ..Default::default()
                }),
            },
            other => other,
        }
    }

    /// Whether each of `waiting` has made more steps of `rollout`'s prepare than at the
    /// last look (recorded in `steps`). One that cannot say, or has not moved, is not.
    async fn all_progressing(&self, rollout: i64, waiting: &[&String], steps: &mut HashMap<String, u64>) -> bool {
        let looks = waiting.iter().map(|name| async move {
            let now = match self.registry.driver(&self.db, name).await {
                Ok(driver) => driver.progress(rollout).await.ok(),
                Err(_) => None,
            };
            ((*name).clone(), now)
        });
        let mut all = !waiting.is_empty();
        for (name, now) in futures::future::join_all(looks).await {
            let before = steps.get(&name).copied().unwrap_or(0);
            match now {
                Some(now) if now > before => {
                    steps.insert(name, now);
                }
                _ => all = false,
            }
        }
        if all {
            tracing::info!(
                rollout,
                "every shadow still preparing is making progress: the prepare deadline moves on"
            );
        }
        all
    }

    /// Applies an event from a shadow or the clock; an event that does not fit (a late or
    /// forged answer) is logged and changes nothing.
    async fn record(&self, id: i64, event: Event, plan: Option<&Plan>) -> Result<(Rollout, Vec<Action>)> {
        self.record_answer(id, event, plan, false).await
    }

    /// [`Self::record`] of a shadow's answer; `others_awaited`: the caller still waits
    /// for other shadows' answers, so this one most likely decides nothing and its
    /// journal write need not be fsynced on its own (see [`Db::begin_relaxed`]).
    async fn record_answer(&self, id: i64, event: Event, plan: Option<&Plan>, others_awaited: bool) -> Result<(Rollout, Vec<Action>)> {
        let relaxed = others_awaited && matches!(event, Event::Prepared { .. } | Event::Committed { .. });
        let applied = match self.apply_in(id, event.clone(), plan, None, relaxed).await {
            // It decided something after all: written again, durably.
            Err(Error::Conflict { code: "needs_durable", .. }) => self.apply_in(id, event, plan, None, false).await,
            other => other,
        };
        match applied {
            Err(Error::Conflict {
                code: "rollout_state",
                message,
            }) => {
                tracing::warn!(rollout = id, %message, "event ignored");
                let mut conn = self.db.read.acquire().await?;
                Ok((load_in(&mut conn, id).await?.0, Vec::new()))
            }
            other => other,
        }
    }

    /// One event, one transaction: load the rollout from the journal, let the state
    /// machine step, persist what changed together with its consequences (the revision
    /// at a commit decision, audit rows, webhooks, the shadow's observed root), commit.
    /// The actions are carried out by the caller afterwards, so nothing is ever sent that
    /// the journal does not already hold.
    async fn apply(&self, id: i64, event: Event, plan: Option<&Plan>, operator: Option<&Caller>) -> Result<(Rollout, Vec<Action>)> {
        self.apply_in(id, event, plan, operator, false).await
    }

    /// [`Self::apply`] in a relaxed transaction when `relaxed`: a step that decides or
    /// ends anything, or asks for anything to be sent, is refused with `needs_durable`
    /// before it is written, so only a shadow's answer that changes nothing else can be
    /// lost to a power failure (and the shadow is asked again at recovery).
    async fn apply_in(
        &self,
        id: i64,
        event: Event,
        plan: Option<&Plan>,
        operator: Option<&Caller>,
        relaxed: bool,
    ) -> Result<(Rollout, Vec<Action>)> {
        let mut tx = self.begin_for_term(relaxed && operator.is_none()).await?;
        let (mut rollout, meta) = load_in(&mut tx, id).await?;
        let before = rollout.clone();
        let operator_action = match &event {
            Event::Released { shadow, .. } => Some(("rollout.release", json!({"shadow": shadow}))),
            Event::Cancelled { .. } => Some(("rollout.cancel", json!({}))),
            _ => None,
        };
        let actions = rollout
            .step(event)
            .map_err(|invalid| Error::conflict("rollout_state", format!("rollout {id}: {invalid}")))?;
        if relaxed
            && (!actions.is_empty()
                || rollout.state != before.state
                || rollout.decision != before.decision
                || rollout.error != before.error)
        {
            return Err(Error::conflict("needs_durable", format!("rollout {id}: this step decides")));
        }
        let at = now();
        for (name, progress) in &rollout.shadows {
            let old = before.shadows.get(name);
            if old == Some(progress) {
                continue;
            }
            sqlx::query(
                "UPDATE rollout_shadows SET phase = $1, staged_root = $2, receipt_root = $3, error = $4, updated_at = $5 WHERE rollout_id = $6 AND shadow = $7",
            )
            .bind(progress.phase.as_str())
            .bind(&progress.staged_root)
            .bind(&progress.receipt_root)
            .bind(&progress.error)
            .bind(&at)
            .bind(id)
            .bind(name)
            .execute(&mut *tx)
            .await?;
            let newly_committed =
                matches!(progress.phase, Phase::Committed | Phase::Mismatch) && old.map(|o| o.phase) != Some(progress.phase);
            if newly_committed {
                // The receipt is the latest observation of the shadow.
                let in_sync = progress.phase == Phase::Committed;
                sqlx::query(
                    "UPDATE shadows SET status = $1, observed_root = $2, observed_revision = $3, last_contact_at = $4, last_error = NULL,
                     last_in_sync_at = CASE WHEN $5 THEN $6 ELSE last_in_sync_at END WHERE name = $7",
                )
                .bind(if in_sync { "in_sync" } else { "drifted" })
                .bind(&progress.receipt_root)
                .bind(meta.revision)
                .bind(&at)
                .bind(in_sync)
                .bind(&at)
                .bind(name)
                .execute(&mut *tx)
                .await?;
            }
        }
        let target = format!("rollout/{id}");
        if let (Some((action, details)), Some(caller)) = (operator_action, operator) {
            audit::append(&mut tx, &caller.username, action, &target, details).await?;
        }
        for action in &actions {
            match action {
                Action::LogDecision(Decision::Commit) => {
                    if meta.kind == "change" {
                        let (change, next, base) = plan
                            .and_then(|p| p.change.as_ref())
                            .ok_or_else(|| Error::Internal(format!("rollout {id} decided to commit without its plan")))?;
                        write_revision(&mut tx, meta.revision, &rollout.root, change, next, base).await?;
                    }
                    audit::append(&mut tx, "coordinator", "rollout.decide", &target, json!({"decision": "commit"})).await?;
                }
                Action::LogDecision(Decision::Abort) => {
                    let action = if rollout.state == State::Failed {
                        "rollout.failed"
                    } else {
                        "rollout.aborted"
                    };
                    audit::append(
                        &mut tx,
                        "coordinator",
                        action,
                        &target,
                        json!({"decision": "abort", "error": rollout.error}),
                    )
                    .await?;
                    crate::webhooks::enqueue(
                        &mut tx,
                        "rollout.failed",
                        json!({"rollout": id, "state": rollout.state.as_str(), "revision": meta.revision, "root": rollout.root, "error": rollout.error}),
                    )
                    .await?;
                }
                Action::Finished(state @ (State::Applied | State::Incomplete)) => {
                    let event = if *state == State::Applied {
                        crash_point("before_applied_audit");
                        "rollout.applied"
                    } else {
                        "rollout.incomplete"
                    };
                    audit::append(
                        &mut tx,
                        "coordinator",
                        event,
                        &target,
                        json!({"kind": meta.kind, "root": rollout.root, "error": rollout.error}),
                    )
                    .await?;
                    crate::webhooks::enqueue(
                        &mut tx,
                        event,
                        json!({"rollout": id, "kind": meta.kind, "change": meta.change_id, "root": rollout.root, "error": rollout.error}),
                    )
                    .await?;
                }
                Action::Finished(_) | Action::SendCommit(_) | Action::SendAbort(_) => {}
            }
        }
        if rollout.state != before.state || rollout.decision != before.decision || rollout.error != before.error {
            sqlx::query(
                "UPDATE rollouts SET state = $1, decision = $2, error = $3, finished_at = CASE WHEN $4 THEN $5 ELSE finished_at END WHERE id = $6",
            )
            .bind(rollout.state.as_str())
            .bind(rollout.decision.map(Decision::as_str))
            .bind(&rollout.error)
            .bind(rollout.state.is_terminal())
            .bind(&at)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        if rollout.decision != before.decision {
            // The lease is asked about while this transaction holds the write lock: a
            // successor cannot take the epoch (and so cannot presume this rollout
            // aborted) before the decision is in, or refused.
            self.confirm_term().await?;
        }
        if actions.contains(&Action::LogDecision(Decision::Commit)) {
            crash_point("before_decision");
        }
        tx.commit().await?;
        for (name, progress) in &rollout.shadows {
            if before.shadows.get(name) != Some(progress) {
                let root = progress.receipt_root.clone().or_else(|| progress.staged_root.clone());
                self.emit(id, Some(name), progress.phase.as_str(), root);
            }
        }
        if rollout.state != before.state {
            self.emit(id, None, rollout.state.as_str(), Some(rollout.root.clone()));
        }
        Ok((rollout, actions))
    }

    /// Carries out the aborts an event asked for (commits are sent by
    /// [`Self::drive_commit`], which asks the journal whom it still waits for).
    async fn perform(&self, id: i64, root: &str, actions: &[Action]) -> Result<()> {
        let aborts: Vec<String> = actions
            .iter()
            .filter_map(|action| match action {
                Action::SendAbort(shadow) => Some(shadow.clone()),
                _ => None,
            })
            .collect();
        if aborts.is_empty() {
            return Ok(());
        }
        let calls = aborts.into_iter().map(|name| {
            let fence = self.fence(root);
            async move {
                let result = self.call(&name, |driver| async move { driver.abort(id, fence).await }).await;
                (name, result)
            }
        });
        for (name, result) in futures::future::join_all(calls).await {
            match result {
                Ok(_) => {
                    self.record(id, Event::AbortAcknowledged { shadow: name }, None).await?;
                }
                Err(err) => {
                    tracing::warn!(rollout = id, shadow = %name, %err, "abort not acknowledged; the shadow drops the staging at its next prepare");
                }
            }
        }
        let mut tx = self.begin_for_term(false).await?;
        sqlx::query(
            "UPDATE shadows SET status = CASE WHEN observed_root IS NULL THEN 'pending' ELSE status END WHERE status = 'rolling_out'",
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// One commit or abort call to a shadow, bounded by [`Self::call_timeout`]. A shadow
    /// that cannot be opened (its driver settings) or does not answer in time is a
    /// transient failure: commits are retried, aborts only logged.
    async fn call<F, Fut>(&self, name: &str, op: F) -> Result<domain::protocol::RolloutAnswer, ShadowError>
    where
        F: FnOnce(crate::shadows::Driver) -> Fut,
        Fut: std::future::Future<Output = Result<domain::protocol::RolloutAnswer, ShadowError>>,
    {
        let driver = self.registry.driver(&self.db, name).await.map_err(|err| ShadowError {
            code: "driver".into(),
            message: err.public_message(),
            transient: true,
            hook: None,
            ..Default::default()
        })?;
        tokio::time::timeout(self.call_timeout, op(driver)).await.unwrap_or_else(|_| {
            Err(ShadowError {
                code: "timeout".into(),
                message: format!("no answer within {:?}", self.call_timeout),
                transient: true,
                hook: None,
                ..Default::default()
            })
        })
    }

    /// Sends the commit to every shadow the rollout still waits for, again and again
    /// (backing off to 5 s) until each answered with a receipt, refused for good, was
    /// released by an operator or removed from the fleet.
    async fn drive_commit(&self, id: i64, mut masks: Option<Vec<String>>) -> Result<()> {
        let mut delay = Duration::from_millis(100);
        loop {
            // Registered before the journal is read, so a release made after the read
            // still wakes this round.
            let operator_moved = self.operator_moved.notified();
            tokio::pin!(operator_moved);
            let mut conn = self.db.read.acquire().await?;
            let (rollout, meta) = load_in(&mut conn, id).await?;
            if masks.is_none() {
                // A reload may print the files it replaced too: the previous revision's
                // secrets are masked as well.
                let set = revisions::entries(&mut conn, meta.revision).await?;
                let previous = revisions::entries(&mut conn, (meta.revision - 1).max(0)).await?;
                masks = Some(crate::hooks::secret_values_of(&mut conn, &self.db, &[&set, &previous]).await?);
            }
            let registered: std::collections::BTreeSet<String> = sqlx::query_as::<_, (String,)>("SELECT name FROM shadows")
                .fetch_all(&mut *conn)
                .await?
                .into_iter()
                .map(|(n,)| n)
                .collect();
            drop(conn);
            let mut waiting = Vec::new();
            for shadow in rollout.awaiting_commit() {
                if registered.contains(&shadow) {
                    waiting.push(shadow);
                } else {
                    self.record(id, Event::Removed { shadow }, None).await?;
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            let fence = self.fence(&rollout.root);
            let calls = waiting.into_iter().map(|name| {
                let fence = fence.clone();
                async move {
                    let result = self.call(&name, |driver| async move { driver.commit(id, fence).await }).await;
                    (name, result)
                }
            });
            let results = tokio::select! {
                results = futures::future::join_all(calls) => results,
                // Commits are idempotent: those dropped here are sent again next round
                // to whoever is still waited for.
                () = &mut operator_moved => continue,
            };
            let mut answered = false;
            let last = results.len().saturating_sub(1);
            for (index, (shadow, result)) in results.into_iter().enumerate() {
                match result {
                    Ok(answer) => {
                        if let Some(run) = answer.hook {
                            let run = crate::hooks::mask(run, masks.as_deref().unwrap_or_default());
                            self.reloaded(id, &shadow, &rollout.root, answer.root.as_deref(), run).await?;
                        }
                        let receipt = answer.root.unwrap_or_default();
                        self.record_answer(id, Event::Committed { shadow, receipt }, None, index < last)
                            .await?;
                        crash_point("after_commit");
                        answered = true;
                    }
                    Err(err) if final_commit_refusal(&err) => {
                        self.record(
                            id,
                            Event::CommitRefused {
                                shadow,
                                reason: err.to_string(),
                            },
                            None,
                        )
                        .await?;
                        answered = true;
                    }
                    Err(err) => {
                        // Not a state change: a note of why the wait goes on (of this
                        // term's: see `Db::fenced`).
                        let mut tx = self.begin_for_term(true).await?;
                        sqlx::query("UPDATE rollout_shadows SET error = $1, updated_at = $2 WHERE rollout_id = $3 AND shadow = $4")
                            .bind(format!("waiting to commit: {err}"))
                            .bind(now())
                            .bind(id)
                            .bind(&shadow)
                            .execute(&mut *tx)
                            .await?;
                        tx.commit().await?;
                    }
                }
            }
            if answered {
                delay = Duration::from_millis(100);
            } else {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = &mut operator_moved => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }

    /// Keeps a hook's run (masked) on the rollout's row of the shadow.
    async fn save_hook(&self, id: i64, shadow: &str, run: domain::protocol::HookRun) -> Result<()> {
        let text = serde_json::to_string(&run).map_err(|err| Error::Internal(err.to_string()))?;
        let mut tx = self.begin_for_term(false).await?;
        sqlx::query("UPDATE rollout_shadows SET hook = $1 WHERE rollout_id = $2 AND shadow = $3")
            .bind(text)
            .bind(id)
            .bind(shadow)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A shadow committed and ran its reload hook: the run is kept with the receipt, and a
    /// failure is a `reload_failed` incident (the files are live; the service may still
    /// run the old ones). A reload that passes ends such an incident. Recorded before the
    /// commit event, so a crash in between records it again at the repeated commit (the
    /// node answers the same run).
    async fn reloaded(&self, id: i64, shadow: &str, root: &str, receipt: Option<&str>, run: domain::protocol::HookRun) -> Result<()> {
        let text = serde_json::to_string(&run).map_err(|err| Error::Internal(err.to_string()))?;
        let mut tx = self.begin_for_term(false).await?;
        sqlx::query("UPDATE rollout_shadows SET hook = $1 WHERE rollout_id = $2 AND shadow = $3")
            .bind(text)
            .bind(id)
            .bind(shadow)
            .execute(&mut *tx)
            .await?;
        let details = json!({"rollout": id, "hook": "reload", "exit_code": run.exit_code, "timed_out": run.timed_out,
            "output": run.output, "command": run.command});
        let notice = if run.ok {
            crate::incidents::operation_passed(&mut tx, shadow, domain::drift::DriftKind::ReloadFailed, details).await?
        } else {
            Some(crate::incidents::open_operation(&mut tx, shadow, domain::drift::DriftKind::ReloadFailed, root, receipt, details).await?)
        };
        tx.commit().await?;
        if let Some(notice) = notice {
            let _ = self.incident_notices.send(notice);
        }
        Ok(())
    }

    /// Incidents the coordinator opened or ended (failed reloads), for live pages.
    pub fn subscribe_incidents(&self) -> tokio::sync::broadcast::Receiver<domain::api::IncidentNotice> {
        self.incident_notices.subscribe()
    }

    /// An operator stops waiting for one shadow's commit (it is dark, or its disk is
    /// gone): the rollout ends `incomplete` once nobody else is waited for, and the
    /// shadow is judged by the drift monitor like any other. Audited.
    pub async fn release(&self, caller: &Caller, id: i64, shadow: &str) -> Result<RolloutView> {
        caller.require(Role::Approver)?;
        caller.require_recent_password()?;
        get(&self.db, id).await?;
        let event = Event::Released {
            shadow: shadow.to_string(),
            by: caller.username.clone(),
        };
        self.apply(id, event, None, Some(caller)).await?;
        self.operator_moved.notify_waiters();
        get(&self.db, id).await
    }

    /// An operator aborts a rollout that is still preparing (before the deadline would).
    /// Audited.
    pub async fn cancel(self: &Arc<Self>, caller: &Caller, id: i64) -> Result<RolloutView> {
        caller.require(Role::Approver)?;
        caller.require_recent_password()?;
        get(&self.db, id).await?;
        let event = Event::Cancelled {
            by: caller.username.clone(),
        };
        let (rollout, actions) = self.apply(id, event, None, Some(caller)).await?;
        self.operator_moved.notify_waiters();
        // The aborts belong to the coordinator, not to this request: a caller that hangs
        // up does not leave them unsent.
        let coordinator = self.clone();
        self.spawn_for_term(async move {
            if let Err(err) = coordinator.perform(id, &rollout.root, &actions).await {
                tracing::warn!(rollout = id, %err, "aborts after a cancel not all acknowledged");
            }
        });
        get(&self.db, id).await
    }

    /// Takes over open rollouts that no task of this process runs: at start, and then
    /// periodically. An undecided one is presumed aborted (its starter stopped before
    /// deciding); a decided one gets a task that drives its commits to completion.
    pub async fn recover(self: &Arc<Self>) -> Result<()> {
        self.require_leader()?;
        let Ok(running) = self.running.clone().try_lock_owned() else {
            // A task owns the open rollout.
            return Ok(());
        };
        let mut conn = self.db.read.acquire().await?;
        let open = open_rollouts(&mut conn).await?;
        drop(conn);
        let mut committing = Vec::new();
        for id in open {
            let (rollout, actions) = self.record(id, Event::Restarted, None).await?;
            self.perform(id, &rollout.root, &actions).await?;
            if actions.iter().any(|a| matches!(a, Action::SendCommit(_))) {
                committing.push(id);
            }
        }
        if committing.is_empty() {
            return Ok(());
        }
        let coordinator = self.clone();
        self.spawn_for_term(async move {
            coordinator.bump();
            for id in committing {
                if let Err(err) = coordinator.drive_commit(id, None).await {
                    tracing::error!(rollout = id, %err, "recovery stopped; it is tried again");
                }
            }
            coordinator.bump();
            drop(running);
        });
        Ok(())
    }
}

/// The journal rows of a new rollout's targets, each `pending`.
async fn insert_targets(tx: &mut AnyConnection, id: i64, shadows: &[String]) -> Result<()> {
    for shadow in shadows {
        sqlx::query("INSERT INTO rollout_shadows (rollout_id, shadow, phase, updated_at) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(shadow)
            .bind(Phase::Pending.as_str())
            .bind(now())
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
struct JournalRow {
    kind: String,
    revision: i64,
    change_id: Option<i64>,
    root: String,
    state: String,
    decision: Option<String>,
    error: Option<String>,
}

#[derive(sqlx::FromRow)]
struct JournalShadowRow {
    shadow: String,
    phase: String,
    staged_root: Option<String>,
    receipt_root: Option<String>,
    error: Option<String>,
}

/// A rollout's state machine as the journal holds it.
async fn load_in(conn: &mut AnyConnection, id: i64) -> Result<(Rollout, Meta)> {
    let row: JournalRow = sqlx::query_as("SELECT kind, revision, change_id, root, state, decision, error FROM rollouts WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no rollout {id}")))?;
    let corrupt = |what: &str| Error::Internal(format!("rollout {id} has an unknown {what}"));
    let state = State::parse(&row.state).ok_or_else(|| corrupt("state"))?;
    let decision = match &row.decision {
        Some(text) => Some(Decision::parse(text).ok_or_else(|| corrupt("decision"))?),
        None => None,
    };
    let rows: Vec<JournalShadowRow> =
        sqlx::query_as("SELECT shadow, phase, staged_root, receipt_root, error FROM rollout_shadows WHERE rollout_id = $1")
            .bind(id)
            .fetch_all(&mut *conn)
            .await?;
    let mut shadows = BTreeMap::new();
    for shadow in rows {
        let phase = Phase::parse(&shadow.phase).ok_or_else(|| corrupt("phase"))?;
        shadows.insert(
            shadow.shadow,
            Progress {
                phase,
                staged_root: shadow.staged_root,
                receipt_root: shadow.receipt_root,
                error: shadow.error,
            },
        );
    }
    let rollout = Rollout {
        root: row.root,
        state,
        decision,
        error: row.error,
        shadows,
    };
    let meta = Meta {
        kind: row.kind,
        revision: row.revision,
        change_id: row.change_id,
    };
    Ok((rollout, meta))
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
    hook: Option<String>,
}

async fn with_shadows(conn: &mut AnyConnection, row: RolloutRow) -> Result<RolloutView> {
    let shadows: Vec<RolloutShadowRow> = sqlx::query_as(
        "SELECT shadow, phase, staged_root, receipt_root, error, hook FROM rollout_shadows WHERE rollout_id = $1 ORDER BY shadow",
    )
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
                hook: s.hook.and_then(|text| serde_json::from_str(&text).ok()),
            })
            .collect(),
    })
}

async fn view_in(conn: &mut AnyConnection, id: i64) -> Result<RolloutView> {
    let row: RolloutRow = sqlx::query_as(&format!("{ROLLOUT_SELECT} WHERE id = $1"))
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
    let row: Option<RolloutRow> = sqlx::query_as(&format!("{ROLLOUT_SELECT} WHERE change_id = $1 ORDER BY id DESC LIMIT 1"))
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
    let rows: Vec<RolloutRow> = sqlx::query_as(&format!("{ROLLOUT_SELECT} WHERE ($1 IS NULL OR id < $1) ORDER BY id DESC LIMIT $2"))
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
