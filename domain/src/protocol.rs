//! The agent protocol (DESIGN "Agent protocol"): what the control plane sends to a shadow
//! and what the shadow answers. Shared by the agent, the directory driver and the
//! coordinator, so all three speak the same shapes.

use serde::{Deserialize, Serialize};

/// One entry to stage: content (base64 would hide nothing: writes are authenticated and,
/// with TLS, encrypted) and policy.
///
/// An entry the shadow already holds is sent without its content, by its entry hash
/// alone ([`StagedEntry::held`]): the shadow takes it from its live generation after
/// proving that file hashes to it, and answers `incomplete` when it cannot (the writer
/// then sends the content). So a rollout sends what changed, not the whole set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StagedEntry {
    pub path: String,
    /// The bytes; `None` for an entry the shadow is believed to hold (then `entry_hash`
    /// names it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// The entry hash (hex) of an entry sent without content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_hash: Option<String>,
    /// Octal permission bits as text, `"0644"`.
    pub mode: String,
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub secret: bool,
    /// Its content is sealed at the control plane (a secret entry, or one holding secret
    /// values): its entry hash is [`crate::hash::sealed_entry_hash`] under the request's
    /// `content_key`.
    #[serde(default)]
    pub sealed: bool,
}

impl StagedEntry {
    /// The same entry without its content, named by its entry hash: for a shadow that
    /// holds it already.
    pub fn held(&self, entry_hash: &str) -> StagedEntry {
        StagedEntry {
            content: None,
            entry_hash: Some(entry_hash.to_string()),
            ..self.clone()
        }
    }
}

/// `PUT /v1/rollouts/{id}`: stage a revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrepareRequest {
    pub control_plane_id: String,
    pub epoch: i64,
    pub revision: i64,
    pub target_root: String,
    /// The root the shadow must be serving now (ignored for a reconcile).
    pub base_root: String,
    #[serde(default)]
    pub reconcile: bool,
    pub entries: Vec<StagedEntry>,
    /// The head of the control plane's audit chain when the rollout began: the shadow
    /// keeps the highest it was sent, so that a recomputed chain or a cut tail is found
    /// when the chain is verified against the shadows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_head: Option<crate::audit::Anchor>,
    /// The key sealed entries are hashed under (hex), when the request has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_key: Option<String>,
    /// What is left of the writer's prepare deadline, in milliseconds: the node's validate
    /// hook is cut to it, so a slow validator ends with its output instead of a silence
    /// the writer already gave up on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// The entries are those of the tree this shadow staged ahead (`PUT /v1/stage`) with
    /// this target root over this base root, and are not sent: the shadow takes that tree
    /// after proving it unchanged, or answers `409 not_prestaged` and is sent them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prestaged: bool,
}

/// `PUT /v1/stage`: a tree staged ahead of its rollout, kept until a prepare with its
/// target root takes it, another stage replaces it, or anything is committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrestageAnswer {
    /// The staged tree's root, proven by reading every file.
    pub root: String,
    /// What the node's validate hook said of it (the prepare that takes it answers this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<HookRun>,
}

/// `GET /v1/rollouts/{id}/progress`: how far that rollout's prepare has come, answered
/// while the prepare runs. Steps only grow while it works: a writer waiting on a large
/// prepare extends its deadline as long as they do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrepareProgress {
    pub rollout: i64,
    /// Entries proven, linked, written or read back so far (0 when that rollout's
    /// prepare is not the one running or last run).
    pub steps: u64,
}

/// Commit and abort carry the writer's identity too, so they are fenced like prepare.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fence {
    pub control_plane_id: String,
    pub epoch: i64,
    /// The root of the rollout this commit or abort is for. A shadow commits or drops
    /// only a staging of exactly that root, so a writer whose rollout numbers collide with
    /// another's (a copy restored from an old backup numbers its rollouts again) cannot
    /// commit or abort what it did not stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_root: Option<String>,
}

/// The shadow's view of one rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutPhase {
    Unknown,
    Prepared,
    Committed,
    Aborted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutAnswer {
    pub rollout: i64,
    pub phase: RolloutPhase,
    /// For `prepared`: the root of what was staged. For `committed`: the live root now.
    pub root: Option<String>,
    /// The node's hook that ran for this answer: `validate` for a prepare, `reload` for a
    /// commit (absent when the node has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<HookRun>,
}

/// One run of a node's hook (DESIGN "Agent hooks and drills"): what ran, how it ended and
/// what it printed (stdout and stderr together, cut to a bound). The control plane masks
/// every secret value of the revision in `output` before anyone sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookRun {
    /// `validate`, `reload` or `health`.
    pub hook: String,
    /// The argv that ran (placeholders expanded), or the URL probed.
    pub command: Vec<String>,
    pub ok: bool,
    /// The exit status; `None` when it was killed (a timeout) or could not start.
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub timed_out: bool,
    pub output: String,
    /// True when the output was longer than the bound and was cut.
    #[serde(default)]
    pub truncated: bool,
    pub duration_ms: i64,
}

/// `POST /v1/validate`: what the node's validate hook said of a tree it was sent (a dry
/// run of prepare: nothing staged); `None` when the node has no validate hook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DryRunAnswer {
    pub hook: Option<HookRun>,
}

/// `POST /v1/drills`: prove the live tree could take over now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillRequest {
    /// How many times to probe the health check (latencies are measured), 1 to 1000.
    #[serde(default = "one")]
    pub requests: u32,
}

fn one() -> u32 {
    1
}

/// The node's part of a drill: its live root, and the validate hook on its live tree and
/// the health probe, each a step (absent when the node has no such hook).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillAnswer {
    pub live_root: String,
    pub live_revision: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validate: Option<HookRun>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthProbe>,
}

/// The health probe of a drill: every request's result and the latency percentiles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthProbe {
    /// The first failed run (or the last run when all passed), with its output.
    pub run: HookRun,
    pub requests: u32,
    pub failures: u32,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// One live entry as the shadow sees it on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedEntry {
    pub path: String,
    pub entry_hash: String,
    pub mode: String,
    pub owner: String,
    pub group: String,
    pub size: i64,
    /// Set for what a shadow holds that is not a regular file it could serve: `symlink`
    /// (one the shadow did not create), `special` (a fifo, socket or device), `unreadable`,
    /// `invalid_name` (a name the path rules refuse). Never skipped: each is drift.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// What it is, for the incident (`symlink to /tmp/evil.conf`); never file content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedInfo {
    pub rollout: i64,
    pub revision: i64,
    pub root: String,
}

/// `GET /v1/state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowState {
    pub control_plane_id: Option<String>,
    pub highest_epoch: i64,
    /// The revision last committed here (`None` before the first commit).
    pub live_revision: Option<i64>,
    /// Root of what the live directory holds right now, computed from disk.
    pub live_root: String,
    pub staged: Option<StagedInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<Vec<ObservedEntry>>,
    /// The highest head of the writer's audit chain this shadow was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_head: Option<crate::audit::Anchor>,
}

/// Error body of the agent: `{"error": {"code", "message"}}` like the control plane's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentErrorBody {
    pub error: AgentError,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentError {
    /// `fenced`, `base_root_mismatch`, `root_mismatch`, `bad_request`, `io`, `conflict`,
    /// `unauthorized`, `not_found`, `validate_failed`, `incomplete` (entries sent without
    /// content that the shadow does not hold as their hash says).
    pub code: String,
    pub message: String,
    /// For `validate_failed`: the validate hook's run, with its output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<HookRun>,
    /// For `incomplete`: the paths of the entries to send again with their content.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
}
