//! Staging an approved change on the shadows before anyone clicks "Roll out".
//!
//! Which tree should be staged ahead is a function of the database alone: the approved
//! change that could be rolled out now (approved for the shadows registered now, on the
//! current revision; the most recently approved one when there are several), or none
//! while a rollout is open. [`Coordinator::restage`] makes the shadows match it: each that
//! does not hold that tree (by target root over base root) is sent it (`PUT /v1/stage`,
//! built and proven like a prepare, judged by the node's validator, recorded nowhere
//! durable), and each that holds another is told to drop it. So an edit (a new content
//! hash voids the approval), a rejection, a new approval or another rollout makes a stage
//! stale by changing what is wanted, and the next pass drops or replaces it; a shadow
//! also drops its stage at any commit, since it no longer stands on the live tree.
//!
//! A rollout's prepare then sends a shadow that holds the plan's tree no entries at all,
//! only the roots: the shadow proves the tree unchanged by `stat` (reading what moved) and
//! takes it. One that answers `not_prestaged` (it restarted, the tree changed) is sent
//! the entries, as without staging. Staging ahead changes no guarantee: the prepare
//! still proves the whole staged root, the decision and the commit are the same.

use crate::{Result, changes, revisions, rollouts::Coordinator};
use domain::protocol::{PrepareRequest, StagedEntry};
use futures::StreamExt;
use std::collections::HashMap;

/// A tree a shadow holds staged ahead, as it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StagedAhead {
    pub change: i64,
    pub root: String,
    pub base_root: String,
}

/// The tree that should be staged ahead now, and on which shadows.
struct Wanted {
    change: i64,
    revision: i64,
    root: String,
    base_root: String,
    entries: std::sync::Arc<Vec<StagedEntry>>,
    shadows: Vec<String>,
}

/// Shadows staged to at once.
const CONCURRENCY: usize = 16;

impl Coordinator {
    /// The approved change a rollout could start now, with what its prepare would send.
    async fn wanted(&self) -> Result<Option<Wanted>> {
        let mut conn = self.db.read.acquire().await?;
        let open: Option<(i64,)> = sqlx::query_as("SELECT id FROM rollouts WHERE finished_at IS NULL LIMIT 1")
            .fetch_optional(&mut *conn)
            .await?;
        if open.is_some() {
            return Ok(None);
        }
        let current = revisions::current_number(&mut conn).await?;
        let candidates: Vec<(i64,)> =
            sqlx::query_as("SELECT id FROM changes WHERE state = 'approved' AND base_revision = $1 ORDER BY updated_at DESC, id DESC")
                .bind(current)
                .fetch_all(&mut *conn)
                .await?;
        let mut chosen = None;
        for (id,) in candidates {
            let change = changes::load(&mut conn, id).await?;
            if changes::approved_for_targets(&mut conn, &change).await? {
                chosen = Some(change);
                break;
            }
        }
        let Some(change) = chosen else {
            return Ok(None);
        };
        let shadows = changes::target_set(&mut conn).await?;
        let plan = self.change_plan(&mut conn, change.id, current).await?;
        Ok(Some(Wanted {
            change: change.id,
            revision: current + 1,
            root: plan.root,
            base_root: plan.base_root,
            entries: plan.entries,
            shadows,
        }))
    }

    /// One pass: makes what the shadows hold staged ahead match what is wanted now (see
    /// the module docs). Answers when every call answered: whether every shadow wanted
    /// holds the stage. One that could not stage is left without (its rollout sends the
    /// entries).
    pub async fn restage(&self) -> Result<bool> {
        if !self.prestaging {
            return Ok(true);
        }
        let wanted = self.wanted().await?;
        let held: HashMap<String, StagedAhead> = self.staged_ahead.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let is_wanted = |name: &str, stage: &StagedAhead| {
            wanted.as_ref().is_some_and(|w| {
                w.root == stage.root && w.base_root == stage.base_root && w.change == stage.change && w.shadows.iter().any(|s| s == name)
            })
        };
        // Stages nobody wants any more are dropped.
        let stale: Vec<String> = held
            .iter()
            .filter(|(name, stage)| !is_wanted(name, stage))
            .map(|(name, _)| name.clone())
            .collect();
        futures::stream::iter(stale)
            .map(|name| async move {
                self.forget_stage(&name);
                self.drop_stage_on(&name).await;
            })
            .buffer_unordered(CONCURRENCY)
            .collect::<Vec<()>>()
            .await;
        let Some(wanted) = wanted else {
            return Ok(true);
        };
        let identity = self.require_leader()?;
        let request = PrepareRequest {
            control_plane_id: identity.id,
            epoch: identity.epoch,
            revision: wanted.revision,
            target_root: wanted.root.clone(),
            base_root: wanted.base_root.clone(),
            reconcile: false,
            entries: wanted.entries.to_vec(),
            audit_head: None,
            content_key: Some(self.db.keys.content_key().to_hex()),
            deadline_ms: Some(u64::try_from(self.prepare_limit.as_millis()).unwrap_or(u64::MAX)),
            prestaged: false,
        };
        let stage = StagedAhead {
            change: wanted.change,
            root: wanted.root.clone(),
            base_root: wanted.base_root.clone(),
        };
        let refused = |name: &str| {
            self.stage_refused
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(name)
                .is_some_and(|root| *root == stage.root)
        };
        let missing: Vec<String> = wanted
            .shadows
            .iter()
            .filter(|name| held.get(*name) != Some(&stage) && !refused(name))
            .cloned()
            .collect();
        futures::stream::iter(missing)
            .map(|name| {
                let (request, stage) = (request.clone(), stage.clone());
                async move {
                    let result = match self.registry.driver(&self.db, &name).await {
                        Ok(driver) => tokio::time::timeout(self.prepare_limit, driver.prestage(request)).await.ok(),
                        Err(_) => None,
                    };
                    match result {
                        Some(Ok(answer)) if answer.root == stage.root => {
                            // A rollout that started meanwhile took what was staged, or
                            // will find it: either way it is not recorded as held.
                            if self.wanted_still().await {
                                self.staged_ahead.lock().unwrap_or_else(|p| p.into_inner()).insert(name, stage);
                            }
                        }
                        Some(Ok(_)) => tracing::warn!(shadow = %name, "the shadow staged another root than asked; not used"),
                        // The output of the node's validator may quote the files: only
                        // the verdict is logged (the rollout's prepare records it, masked).
                        Some(Err(err)) => {
                            tracing::info!(shadow = %name, code = %err.code, "the change was not staged ahead on this shadow");
                            if err.code == "validate_failed" || err.code == "unsupported" {
                                // Asked again only for another tree; its rollout validates
                                // it anyway.
                                self.stage_refused
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .insert(name, stage.root.clone());
                            }
                        }
                        None => tracing::info!(shadow = %name, "the change was not staged ahead on this shadow (no answer)"),
                    }
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect::<Vec<()>>()
            .await;
        let held = self.staged_ahead.lock().unwrap_or_else(|p| p.into_inner());
        Ok(wanted.shadows.iter().all(|name| held.get(name) == Some(&stage) || refused(name)))
    }

    /// Asks `name` to drop its stage; whether it answered.
    async fn drop_stage_on(&self, name: &str) -> bool {
        let result = match self.registry.driver(&self.db, name).await {
            Ok(driver) => driver.drop_prestaged().await.map_err(|err| err.to_string()),
            Err(err) => Err(err.public_message()),
        };
        if let Err(err) = &result {
            tracing::debug!(shadow = %name, %err, "the shadow did not drop its stage; its next commit does");
        }
        result.is_ok()
    }

    /// Asks each shadow in `unknown` to drop its stage: what it holds staged ahead is not
    /// known (an earlier process may have staged something). One that answered, one this
    /// process has staged since, and one no longer registered leave the set; the others
    /// are asked again at the next pass. Nothing is asked while a rollout is open: its
    /// prepares may be taking stages.
    async fn drop_unknown_stages(&self, unknown: &mut std::collections::BTreeSet<String>) -> Result<()> {
        if !self.wanted_still().await {
            return Ok(());
        }
        let registered: std::collections::BTreeSet<String> = {
            let mut conn = self.db.read.acquire().await?;
            changes::target_set(&mut conn).await?.into_iter().collect()
        };
        let held: Vec<String> = self
            .staged_ahead
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        unknown.retain(|name| registered.contains(name) && !held.contains(name));
        let answered: Vec<(String, bool)> = futures::stream::iter(unknown.iter().cloned())
            .map(|name| async move {
                let ok = self.drop_stage_on(&name).await;
                (name, ok)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for (name, ok) in answered {
            if ok {
                unknown.remove(&name);
            }
        }
        Ok(())
    }

    /// Whether a stage just made may be recorded: no rollout began meanwhile (one that
    /// did took the stages it found, or will make this one stale).
    async fn wanted_still(&self) -> bool {
        if self.is_running() {
            return false;
        }
        match self.db.read.acquire().await {
            Ok(mut conn) => sqlx::query_as::<_, (i64,)>("SELECT id FROM rollouts WHERE finished_at IS NULL LIMIT 1")
                .fetch_optional(&mut *conn)
                .await
                .is_ok_and(|open| open.is_none()),
            Err(_) => false,
        }
    }

    /// How many prepares this coordinator had answered from a tree staged ahead (sent no
    /// entries), for `GET /metrics`.
    pub fn prepares_from_stage(&self) -> u64 {
        self.taken_from_stage.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The shadows that hold change `change`'s tree staged ahead, by name.
    pub fn staged_ahead_of(&self, change: i64) -> Vec<String> {
        let held = self.staged_ahead.lock().unwrap_or_else(|p| p.into_inner());
        let mut names: Vec<String> = held
            .iter()
            .filter(|(_, stage)| stage.change == change)
            .map(|(name, _)| name.clone())
            .collect();
        names.sort();
        names
    }

    pub(crate) fn forget_stage(&self, shadow: &str) {
        self.staged_ahead.lock().unwrap_or_else(|p| p.into_inner()).remove(shadow);
    }

    /// The shadows that hold `root` over `base_root` staged ahead; they are forgotten (the
    /// rollout that asks takes the stages or makes them stale).
    pub(crate) fn take_staged_ahead(&self, shadows: &[String], root: &str, base_root: &str) -> std::collections::HashSet<String> {
        let mut held = self.staged_ahead.lock().unwrap_or_else(|p| p.into_inner());
        shadows
            .iter()
            .filter_map(|name| {
                let stage = held.remove(name)?;
                (stage.root == root && stage.base_root == base_root).then(|| name.clone())
            })
            .collect()
    }

    /// Asks the staging loop for a pass now (after an approval, or a rollout's end).
    pub fn nudge_staging(&self) {
        self.staging_nudge.notify_one();
    }

    /// The staging loop: a pass after every nudge, and whenever the audit log moved (every
    /// edit, review and rollout is in it), checked every two seconds; a pass whose calls
    /// failed is tried again after thirty.
    pub async fn run_staging(self: std::sync::Arc<Self>) {
        let mut last_seen = -1;
        let mut retry_at: Option<tokio::time::Instant> = None;
        // What the shadows hold staged ahead is not known at start (a process before
        // this one may have staged something): each is asked to drop it once.
        let mut unknown: std::collections::BTreeSet<String> = match self.db.read.acquire().await {
            Ok(mut conn) => changes::target_set(&mut conn).await.unwrap_or_default().into_iter().collect(),
            Err(_) => Default::default(),
        };
        let mut first = true;
        loop {
            if !first {
                if !self.prestaging && unknown.is_empty() {
                    return;
                }
                tokio::select! {
                    () = self.staging_nudge.notified() => {}
                    () = tokio::time::sleep(std::time::Duration::from_secs(2)) => {
                        let head = crate::audit::head(&self.db).await.map(|h| h.seq).unwrap_or(last_seen);
                        let retry = retry_at.is_some_and(|at| tokio::time::Instant::now() >= at);
                        if head == last_seen && !retry {
                            continue;
                        }
                    }
                }
            }
            first = false;
            last_seen = crate::audit::head(&self.db).await.map(|h| h.seq).unwrap_or(last_seen);
            if !unknown.is_empty()
                && let Err(err) = self.drop_unknown_stages(&mut unknown).await
            {
                tracing::warn!(%err, "cannot ask the shadows to drop stages an earlier process made");
            }
            retry_at = match self.restage().await {
                Ok(true) if unknown.is_empty() => None,
                Ok(_) => Some(tokio::time::Instant::now() + std::time::Duration::from_secs(30)),
                Err(err) => {
                    tracing::warn!(%err, "staging approved changes ahead failed; trying again");
                    Some(tokio::time::Instant::now() + std::time::Duration::from_secs(30))
                }
            };
        }
    }
}
