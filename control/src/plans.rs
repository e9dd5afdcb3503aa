//! The rollout plan an approver reviews before approving: every shadow the change would
//! reach, what each would do per entry relative to what it holds now, and which would
//! refuse — drifted (its live root is not the base's, so its prepare is refused),
//! unreachable, fenced (bound to another control plane, a higher epoch, a newer revision),
//! or its node's validate hook, run as a dry run of prepare when asked. Reading a plan
//! changes nothing anywhere; the dry run stages nothing and records nothing on the nodes.

use crate::{Caller, Error, Result, changes, drift::Monitor, revisions, rollouts::root_of};
use domain::{
    Role,
    api::{PlanAction, RolloutPlan, ShadowPlan},
    drift::DriftKind,
    protocol::PrepareRequest,
};

impl Monitor {
    /// The plan of rolling out change `change_id` now; with `validate`, each node that
    /// would accept also runs its validate hook on the tree (approvers: the dry run sends
    /// every entry, secrets included, to the shadows, as a prepare does).
    pub async fn plan(&self, caller: &Caller, change_id: i64, validate: bool) -> Result<RolloutPlan> {
        caller.require(if validate { Role::Approver } else { Role::Viewer })?;
        // The writer the shadows are judged against: this process's term, or on a replica
        // that does not lead, the leader's, as stored.
        let identity = if self.coordinator.leading() {
            self.coordinator.identity()
        } else {
            self.db.identity().await?
        };
        let mut conn = self.db.read.acquire().await?;
        let change = changes::load(&mut conn, change_id).await?;
        let current = revisions::current_number(&mut conn).await?;
        let base = revisions::entries(&mut conn, change.base_revision).await?;
        let ops = changes::operations(&mut conn, change_id).await?;
        let next = changes::apply(&base, &ops);
        let root = root_of(&next)?.to_hex();
        let base_root = root_of(&base)?.to_hex();
        let shadows: Vec<(String, String)> = sqlx::query_as("SELECT name, status FROM shadows ORDER BY name")
            .fetch_all(&mut *conn)
            .await?;
        let request = if validate {
            // A validation stages the tree on the shadows: leader-only, as its writes are.
            let term = self.coordinator.require_leader()?;
            Some(PrepareRequest {
                control_plane_id: term.id,
                epoch: term.epoch,
                revision: change.base_revision + 1,
                target_root: root.clone(),
                base_root: base_root.clone(),
                reconcile: false,
                entries: crate::rollouts::staged_entries(&mut conn, &self.db, &next, None).await?,
                audit_head: None,
                content_key: Some(self.db.keys.content_key().to_hex()),
                deadline_ms: Some(
                    u64::try_from(
                        crate::drills::DRILL_TIMEOUT
                            .saturating_sub(std::time::Duration::from_secs(10))
                            .as_millis(),
                    )
                    .unwrap_or(u64::MAX),
                ),
                prestaged: false,
            })
        } else {
            None
        };
        let masks = if validate {
            crate::hooks::secret_values_of(&mut conn, &self.db, &[&next, &base]).await?
        } else {
            Vec::new()
        };
        drop(conn);
        let plans = shadows.into_iter().map(|(name, status)| {
            let (next, base_root, request, masks, identity) = (&next, &base_root, request.clone(), &masks, &identity);
            async move {
                let mut plan = ShadowPlan {
                    name: name.clone(),
                    status,
                    refusal: None,
                    actions: Vec::new(),
                    validate: None,
                };
                let state = match self.registry.driver(&self.db, &name).await {
                    Ok(driver) => tokio::time::timeout(self.check_timeout, driver.state(true))
                        .await
                        .unwrap_or_else(|_| Err(timeout()))
                        .map(|state| (driver, state)),
                    Err(err) => Err(crate::shadows::ShadowError {
                        code: "driver".into(),
                        message: err.public_message(),
                        transient: false,
                        hook: None,
                        ..Default::default()
                    }),
                };
                let (driver, state) = match state {
                    Ok(found) => found,
                    Err(err) => {
                        plan.refusal = Some(format!("cannot be read now ({err}): a prepare would not be answered"));
                        return Ok::<_, Error>(plan);
                    }
                };
                plan.refusal = self.refusal(identity, &state, base_root, change.base_revision + 1);
                for drift in self.classify(next, &state).await? {
                    let action = match drift.kind {
                        DriftKind::Missing => "create",
                        DriftKind::Content => "modify",
                        DriftKind::Policy => "chmod",
                        _ => "delete",
                    };
                    let policy = match (&drift.expected_policy, &drift.observed_policy) {
                        (Some(want), Some(have)) if want != have && drift.observed_kind.is_none() => Some(format!("{have} → {want}")),
                        _ => None,
                    };
                    // A file the shadow holds that is named like a secret is named to nobody.
                    let path = if action == "delete" && crate::secrets::named_like_a_secret(&self.db, &drift.path) {
                        "(a file named like a secret)".to_string()
                    } else {
                        drift.path
                    };
                    plan.actions.push(PlanAction {
                        path,
                        action: action.into(),
                        policy,
                    });
                }
                if let (Some(request), None) = (request, &plan.refusal) {
                    match tokio::time::timeout(crate::drills::DRILL_TIMEOUT, driver.validate_dry_run(request))
                        .await
                        .unwrap_or_else(|_| Err(timeout()))
                    {
                        Ok(run) => {
                            let run = run.map(|run| crate::hooks::mask(run, masks));
                            if run.as_ref().is_some_and(|r| !r.ok) {
                                plan.refusal = Some("its validate hook refuses the tree (see its output)".into());
                            }
                            plan.validate = run;
                        }
                        Err(err) => plan.refusal = Some(format!("the dry run failed: {err}")),
                    }
                }
                Ok(plan)
            }
        });
        let shadows = futures::future::join_all(plans).await.into_iter().collect::<Result<Vec<_>>>()?;
        Ok(RolloutPlan {
            change_id,
            revision: change.base_revision + 1,
            root,
            base_root,
            stale_base: change.base_revision != current,
            validated: validate,
            shadows,
        })
    }

    /// Why a shadow in `state` would refuse a prepare of `revision` on `base_root`.
    fn refusal(
        &self,
        identity: &crate::db::Identity,
        state: &domain::protocol::ShadowState,
        base_root: &str,
        revision: i64,
    ) -> Option<String> {
        if state.control_plane_id.as_deref().is_some_and(|bound| bound != identity.id) {
            return Some("fenced: it is bound to another control plane".into());
        }
        if state.highest_epoch > identity.epoch {
            return Some(format!(
                "fenced: it saw epoch {}, higher than this control plane's {}",
                state.highest_epoch, identity.epoch
            ));
        }
        if state.live_revision.is_some_and(|live| live > revision) {
            return Some("fenced: it committed a newer revision than this one".into());
        }
        if state.live_root != base_root {
            return Some(format!(
                "drifted: it serves {}, not the base revision's root; its prepare would be refused (reconcile or adopt first)",
                &state.live_root[..12.min(state.live_root.len())]
            ));
        }
        None
    }
}

fn timeout() -> crate::shadows::ShadowError {
    crate::shadows::ShadowError {
        code: "timeout".into(),
        message: "no answer in time".into(),
        transient: true,
        hook: None,
        ..Default::default()
    }
}
