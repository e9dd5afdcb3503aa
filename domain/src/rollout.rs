//! The rollout lifecycle as one pure state machine (DESIGN "Rollout lifecycle").
//!
//! A [`Rollout`] is told what happened ([`Event`]: a shadow's answer, the prepare deadline,
//! a restart, an operator's exit) and answers what must be done next ([`Action`]: log the
//! decision, send a commit or an abort). It never touches a disk or a socket; the
//! coordinator persists the state it lands in and carries out the actions, in that order,
//! the way an application drives `etcd-io/raft`. Every rule about states lives here:
//!
//! - No commit is sent before the decision to commit is logged, and the decision is made
//!   once: when every shadow prepared the target root. One refusal, the deadline, a
//!   restart or an operator's cancel decides abort instead (presumed abort).
//! - `applied` only when every shadow still targeted returned a receipt equal to the root
//!   (and at least one did: a rollout whose shadows were all removed proved nothing).
//!   A shadow that commits but proves another root ends its wait as `mismatch`; one that
//!   can no longer commit (its staging gone) as `lost`; one an operator released as
//!   `released`. A committed rollout with any of those ends `incomplete`.
//! - Every state has an end: preparing ends by the deadline at the latest; committing ends
//!   when each shadow committed, mismatched, was lost, released or removed, and an
//!   operator can release or remove any shadow it still waits for ([`Rollout::exits`]).
//! - A late answer changes nothing: a `prepared` after an abort is answered with another
//!   abort; a second receipt from the same shadow is ignored.

use std::collections::BTreeMap;

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Sent to every shadow; waiting for each to stage it. No decision yet.
    Preparing,
    /// Decided to commit (the revision is current); waiting for every receipt.
    Committing,
    /// Every targeted shadow proved the revision's root.
    Applied,
    /// Committed, but at least one shadow did not prove the root (mismatch, lost,
    /// released): each such shadow is judged by the drift monitor and gets an incident.
    Incomplete,
    /// Aborted because a shadow refused (or did not answer before the deadline).
    Failed,
    /// Aborted without any refusal: a restart before the decision, or an operator's cancel.
    Aborted,
}

impl State {
    pub const ALL: [State; 6] = [
        State::Preparing,
        State::Committing,
        State::Applied,
        State::Incomplete,
        State::Failed,
        State::Aborted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Preparing => "preparing",
            State::Committing => "committing",
            State::Applied => "applied",
            State::Incomplete => "incomplete",
            State::Failed => "failed",
            State::Aborted => "aborted",
        }
    }

    pub fn parse(text: &str) -> Option<State> {
        State::ALL.into_iter().find(|state| state.as_str() == text)
    }

    /// Nothing more will happen to a rollout in this state.
    pub fn is_terminal(self) -> bool {
        !matches!(self, State::Preparing | State::Committing)
    }
}

/// The coordinator's decision, logged durably before any shadow hears of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Commit,
    Abort,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Commit => "commit",
            Decision::Abort => "abort",
        }
    }

    pub fn parse(text: &str) -> Option<Decision> {
        [Decision::Commit, Decision::Abort].into_iter().find(|d| d.as_str() == text)
    }
}

/// Where one shadow is within a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Asked to prepare; no answer yet.
    Pending,
    /// Staged exactly the target root.
    Prepared,
    /// Refused, failed, staged another root, or did not answer in time.
    Refused,
    /// Committed and proved the root.
    Committed,
    /// Committed, but serves another root (a hand edit raced the commit).
    Mismatch,
    /// Cannot commit any more: the shadow no longer holds the staging (wiped, fenced).
    Lost,
    /// An operator stopped waiting for it (it stays drifted until reconciled).
    Released,
    /// The shadow was removed from the fleet.
    Removed,
    /// Its staging was dropped after an abort decision.
    Aborted,
}

impl Phase {
    pub const ALL: [Phase; 9] = [
        Phase::Pending,
        Phase::Prepared,
        Phase::Refused,
        Phase::Committed,
        Phase::Mismatch,
        Phase::Lost,
        Phase::Released,
        Phase::Removed,
        Phase::Aborted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Prepared => "prepared",
            Phase::Refused => "refused",
            Phase::Committed => "committed",
            Phase::Mismatch => "mismatch",
            Phase::Lost => "lost",
            Phase::Released => "released",
            Phase::Removed => "removed",
            Phase::Aborted => "aborted",
        }
    }

    pub fn parse(text: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|phase| phase.as_str() == text)
    }

    /// The rollout still has to prepare or commit on a shadow in this phase, so what the
    /// shadow serves is the rollout's business, not drift.
    pub fn in_flight(self) -> bool {
        matches!(self, Phase::Pending | Phase::Prepared)
    }
}

/// One shadow's progress as recorded in the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub phase: Phase,
    /// The root the shadow staged (its `prepared` answer).
    pub staged_root: Option<String>,
    /// The root it serves after committing: its receipt.
    pub receipt_root: Option<String>,
    pub error: Option<String>,
}

impl Progress {
    pub fn pending() -> Progress {
        Progress {
            phase: Phase::Pending,
            staged_root: None,
            receipt_root: None,
            error: None,
        }
    }
}

/// What happened, as the coordinator saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The shadow staged the rollout; `root` is what it says it staged.
    Prepared { shadow: String, root: String },
    /// The shadow refused to prepare, failed, or its answer never came.
    Refused { shadow: String, reason: String },
    /// The prepare deadline passed with no decision.
    DeadlinePassed,
    /// The control plane restarted (or a new leader took over): an undecided rollout is
    /// presumed aborted, a decided one is driven on.
    Restarted,
    /// An operator cancelled a rollout that is still preparing.
    Cancelled { by: String },
    /// The shadow committed and answered the root it now serves.
    Committed { shadow: String, receipt: String },
    /// The shadow answered a commit with a refusal that retrying cannot change.
    CommitRefused { shadow: String, reason: String },
    /// An operator stopped waiting for the shadow's commit.
    Released { shadow: String, by: String },
    /// The shadow was removed from the fleet.
    Removed { shadow: String },
    /// The shadow confirmed it dropped its staging.
    AbortAcknowledged { shadow: String },
}

/// What the coordinator must do, in order, after persisting the new state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Log the decision durably (for a commit together with the new revision) before any
    /// shadow is told. Comes before every `SendCommit` and `SendAbort` of the same step.
    LogDecision(Decision),
    SendCommit(String),
    SendAbort(String),
    /// The rollout reached a terminal state.
    Finished(State),
}

/// An event that does not fit the rollout as it is (a bug or a forged answer); nothing
/// changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// An exit an operator can take from a rollout that waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Abort a rollout that is still preparing.
    Cancel,
    /// Stop waiting for this shadow's commit.
    Release(String),
}

/// A rollout as the journal holds it: its target root, state, decision and every
/// shadow's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    pub root: String,
    pub state: State,
    pub decision: Option<Decision>,
    pub error: Option<String>,
    pub shadows: BTreeMap<String, Progress>,
}

impl Rollout {
    /// A rollout of `root` just started on `shadows`, each asked to prepare.
    pub fn start(root: impl Into<String>, shadows: impl IntoIterator<Item = String>) -> Rollout {
        Rollout {
            root: root.into(),
            state: State::Preparing,
            decision: None,
            error: None,
            shadows: shadows.into_iter().map(|name| (name, Progress::pending())).collect(),
        }
    }

    /// Shadows that were told to commit and have not answered with a receipt yet.
    pub fn awaiting_commit(&self) -> Vec<String> {
        if self.state != State::Committing {
            return Vec::new();
        }
        self.named(Phase::Prepared)
    }

    /// Shadows still staging (no answer to prepare yet).
    pub fn awaiting_prepare(&self) -> Vec<String> {
        if self.state != State::Preparing {
            return Vec::new();
        }
        self.named(Phase::Pending)
    }

    fn named(&self, phase: Phase) -> Vec<String> {
        self.shadows
            .iter()
            .filter(|(_, progress)| progress.phase == phase)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// What an operator can do to end the wait now. Empty for a terminal rollout.
    pub fn exits(&self) -> Vec<Exit> {
        match self.state {
            State::Preparing => vec![Exit::Cancel],
            State::Committing => self.awaiting_commit().into_iter().map(Exit::Release).collect(),
            _ => Vec::new(),
        }
    }

    fn progress(&mut self, shadow: &str) -> Result<&mut Progress, Invalid> {
        self.shadows
            .get_mut(shadow)
            .ok_or_else(|| Invalid(format!("{shadow} is not a target of this rollout")))
    }

    /// Applies one event and answers what to do. On `Err` nothing changed.
    pub fn step(&mut self, event: Event) -> Result<Vec<Action>, Invalid> {
        let mut next = self.clone();
        let actions = next.apply(event)?;
        *self = next;
        Ok(actions)
    }

    fn apply(&mut self, event: Event) -> Result<Vec<Action>, Invalid> {
        match event {
            Event::Prepared { shadow, root } => {
                let state = self.state;
                let decision = self.decision;
                let target = self.root.clone();
                let progress = self.progress(&shadow)?;
                match (state, progress.phase) {
                    (State::Preparing, Phase::Pending) => {
                        progress.staged_root = Some(root.clone());
                        if root == target {
                            progress.phase = Phase::Prepared;
                        } else {
                            progress.phase = Phase::Refused;
                            progress.error = Some(format!("staged root {root} differs from the revision's root"));
                        }
                        Ok(self.decide_when_answered())
                    }
                    // A prepare that lands after the abort: it must not linger.
                    _ if decision == Some(Decision::Abort) => Ok(vec![Action::SendAbort(shadow)]),
                    // A repeated answer, or one for a shadow that already answered.
                    _ => Ok(Vec::new()),
                }
            }
            Event::Refused { shadow, reason } => {
                let state = self.state;
                let progress = self.progress(&shadow)?;
                if state == State::Preparing && progress.phase == Phase::Pending {
                    progress.phase = Phase::Refused;
                    progress.error = Some(reason);
                    return Ok(self.decide_when_answered());
                }
                Ok(Vec::new())
            }
            Event::DeadlinePassed => {
                if self.state != State::Preparing {
                    return Ok(Vec::new());
                }
                for progress in self.shadows.values_mut().filter(|p| p.phase == Phase::Pending) {
                    progress.phase = Phase::Refused;
                    progress.error = Some("no answer before the prepare deadline".into());
                }
                Ok(self.decide(Decision::Abort, "the prepare deadline passed before every shadow prepared"))
            }
            Event::Restarted => match self.state {
                State::Preparing => Ok(self.decide(Decision::Abort, "presumed abort: the control plane stopped before deciding")),
                State::Committing => Ok(self.awaiting_commit().into_iter().map(Action::SendCommit).collect()),
                _ => Ok(Vec::new()),
            },
            Event::Cancelled { by } => {
                if self.state != State::Preparing {
                    return Err(Invalid(format!("a rollout that is {} cannot be cancelled", self.state.as_str())));
                }
                Ok(self.decide(Decision::Abort, &format!("cancelled by {by} before the decision")))
            }
            Event::Committed { shadow, receipt } => {
                let state = self.state;
                let decision = self.decision;
                let target = self.root.clone();
                let progress = self.progress(&shadow)?;
                match (state, progress.phase) {
                    (State::Committing, Phase::Prepared) => {}
                    // A repeated receipt, a late one from a shadow no longer waited for, or
                    // one after the rollout finished: the journal keeps the first.
                    _ if decision == Some(Decision::Commit) => return Ok(Vec::new()),
                    _ => return Err(Invalid(format!("{shadow} committed a rollout that was not decided to commit"))),
                }
                if receipt == target {
                    progress.phase = Phase::Committed;
                    progress.error = None;
                } else {
                    progress.phase = Phase::Mismatch;
                    progress.error = Some(format!("committed, but serves {receipt}, not the revision's root"));
                }
                progress.receipt_root = Some(receipt);
                Ok(self.finish_when_committed())
            }
            Event::CommitRefused { shadow, reason } => {
                let state = self.state;
                let progress = self.progress(&shadow)?;
                if state == State::Committing && progress.phase == Phase::Prepared {
                    progress.phase = Phase::Lost;
                    progress.error = Some(format!("cannot commit: {reason}"));
                    return Ok(self.finish_when_committed());
                }
                Ok(Vec::new())
            }
            Event::Released { shadow, by } => {
                let state = self.state;
                let progress = self.progress(&shadow)?;
                if state != State::Committing || progress.phase != Phase::Prepared {
                    return Err(Invalid(format!("the rollout is not waiting for {shadow}'s commit")));
                }
                progress.phase = Phase::Released;
                progress.error = Some(format!("released by {by} before it committed"));
                Ok(self.finish_when_committed())
            }
            Event::Removed { shadow } => {
                let state = self.state;
                let progress = self.progress(&shadow)?;
                if !progress.phase.in_flight() || state.is_terminal() {
                    return Ok(Vec::new());
                }
                progress.phase = Phase::Removed;
                progress.error = Some("the shadow was removed".into());
                Ok(match state {
                    State::Preparing => self.decide_when_answered(),
                    _ => self.finish_when_committed(),
                })
            }
            Event::AbortAcknowledged { shadow } => {
                let decision = self.decision;
                let progress = self.progress(&shadow)?;
                if decision != Some(Decision::Abort) {
                    return Err(Invalid(format!("{shadow} acknowledged an abort that was never decided")));
                }
                if matches!(progress.phase, Phase::Pending | Phase::Prepared) {
                    progress.phase = Phase::Aborted;
                }
                Ok(Vec::new())
            }
        }
    }

    /// In `Preparing`, once no shadow is pending: commit if every remaining shadow
    /// prepared the root, else abort.
    fn decide_when_answered(&mut self) -> Vec<Action> {
        if self.state != State::Preparing || self.shadows.values().any(|p| p.phase == Phase::Pending) {
            return Vec::new();
        }
        let refused: Vec<String> = self
            .shadows
            .iter()
            .filter(|(_, p)| p.phase == Phase::Refused)
            .map(|(name, p)| format!("{name}: {}", p.error.as_deref().unwrap_or("refused")))
            .collect();
        if !refused.is_empty() {
            return self.decide(
                Decision::Abort,
                &format!("prepare refused, every shadow aborted: {}", refused.join("; ")),
            );
        }
        if !self.shadows.values().any(|p| p.phase == Phase::Prepared) {
            return self.decide(Decision::Abort, "every shadow was removed before it prepared");
        }
        self.decide(Decision::Commit, "")
    }

    fn decide(&mut self, decision: Decision, reason: &str) -> Vec<Action> {
        debug_assert!(self.decision.is_none());
        self.decision = Some(decision);
        let mut actions = vec![Action::LogDecision(decision)];
        match decision {
            Decision::Commit => {
                self.state = State::Committing;
                actions.extend(self.awaiting_commit().into_iter().map(Action::SendCommit));
            }
            Decision::Abort => {
                let refused = self.shadows.values().any(|p| p.phase == Phase::Refused);
                self.state = if refused { State::Failed } else { State::Aborted };
                self.error = Some(reason.to_string());
                // Every shadow that may hold (or still be writing) the staging drops it.
                actions.extend(
                    self.shadows
                        .iter()
                        .filter(|(_, p)| p.phase != Phase::Removed)
                        .map(|(name, _)| Action::SendAbort(name.clone())),
                );
                actions.push(Action::Finished(self.state));
            }
        }
        actions
    }

    /// In `Committing`, once no shadow is waited for: `applied` when every remaining shadow
    /// proved the root, else `incomplete`.
    fn finish_when_committed(&mut self) -> Vec<Action> {
        if self.state != State::Committing || self.shadows.values().any(|p| p.phase == Phase::Prepared) {
            return Vec::new();
        }
        let short: Vec<String> = self
            .shadows
            .iter()
            .filter(|(_, p)| matches!(p.phase, Phase::Mismatch | Phase::Lost | Phase::Released))
            .map(|(name, p)| format!("{name} {}", p.phase.as_str()))
            .collect();
        let proven = self.shadows.values().any(|p| p.phase == Phase::Committed);
        if short.is_empty() && proven {
            self.state = State::Applied;
            self.error = None;
        } else if short.is_empty() {
            self.state = State::Incomplete;
            self.error = Some("committed, but every shadow was removed before it proved the root".into());
        } else {
            self.state = State::Incomplete;
            self.error = Some(format!("committed, but not proven on every shadow: {}", short.join(", ")));
        }
        vec![Action::Finished(self.state)]
    }
}

#[cfg(test)]
mod tests;
