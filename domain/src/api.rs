//! Wire types of the REST API and the console's server functions. Shared by the server
//! and the wasm front end, so both sides agree by construction. Integers are `i64`/`u32`,
//! never `usize`, because wasm32 and the host disagree on its width.

use crate::{Role, audit::ChainBreak, diff::TextDiff, format::ValidationError};
use serde::{Deserialize, Serialize};

/// The message of a sensitive action refused because the session's password entry is
/// older than the recent window; the console recognises it and asks for the password.
pub const PASSWORD_REQUIRED: &str = "confirm your password to do this: your last password entry is older than the recent window";

/// The message of a console action refused because the session ended (signed out in
/// another tab, idle or past its lifetime); the console recognises it and offers to sign
/// in again, coming back to the same page.
pub const SIGNED_OUT: &str = "your session has ended: sign in again to continue";

/// The session cookie's name: with `Secure` (over TLS) the `__Host-` prefix, which browsers
/// accept only from a secure origin, with `Path=/` and no `Domain`, so a neighbouring
/// subdomain or a plain-HTTP page cannot plant or shadow it.
pub fn session_cookie_name(secure: bool) -> &'static str {
    if secure {
        "__Host-etc_shadow_session"
    } else {
        "etc_shadow_session"
    }
}

/// The `Set-Cookie` value of a new session: HttpOnly, SameSite=Strict, Secure over TLS.
pub fn session_set_cookie(secret: &str, secure: bool, max_age_seconds: i64) -> String {
    let name = session_cookie_name(secure);
    let attributes = if secure { "; Secure" } else { "" };
    format!("{name}={secret}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_seconds}{attributes}")
}

/// The `Set-Cookie` value that ends the session cookie.
pub fn session_clear_cookie(secure: bool) -> String {
    session_set_cookie("", secure, 0)
}

/// The session secret among `Cookie` header values; over TLS only the `__Host-` cookie
/// counts.
pub fn session_from_cookies<'a>(headers: impl IntoIterator<Item = &'a str>, secure: bool) -> Option<String> {
    let wanted = session_cookie_name(secure);
    headers
        .into_iter()
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == wanted && !value.is_empty())
        .map(|(_, value)| value.to_string())
}

/// The sign-in page that returns to `next` (a local path with its query) afterwards.
pub fn login_href(next: &str) -> String {
    let mut encoded = String::with_capacity(next.len());
    for byte in next.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => encoded.push(byte as char),
            other => encoded.push_str(&format!("%{other:02X}")),
        }
    }
    format!("/login?next={encoded}")
}

/// The `next` of a sign-in, kept only when it is a local path (never an open redirect).
pub fn local_next(next: Option<&str>) -> String {
    next.filter(|n| n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') && !n.starts_with("/login"))
        .unwrap_or("/")
        .to_string()
}

/// `{"items": [...], "next": ...}`: one page and the cursor of the next one, if any.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserView {
    pub id: i64,
    pub username: String,
    pub role: Role,
    pub disabled: bool,
    pub created_at: String,
}

/// An API token as its owner (or an admin) sees it: never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenView {
    pub id: i64,
    pub owner: String,
    pub name: String,
    pub role: String,
    pub created_at: String,
    /// When it stops working (see [`TOKEN_DAYS_DEFAULT`]).
    #[serde(default)]
    pub expires_at: Option<String>,
    /// When it was last used (to the minute).
    #[serde(default)]
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
}

/// Days an API token works when its creator does not say.
pub const TOKEN_DAYS_DEFAULT: i64 = 90;

/// The longest an API token may work, in days.
pub const TOKEN_DAYS_MAX: i64 = 365;

/// A new API token: the secret is in this one answer and never again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewToken {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub token: String,
    pub expires_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionSummary {
    pub number: i64,
    pub root: String,
    pub parent: Option<i64>,
    pub author: String,
    pub message: String,
    pub created_at: String,
    pub change_id: Option<i64>,
    pub entry_count: i64,
}

/// An entry as listed in a revision or a change. Secret entries carry no content anywhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryView {
    pub path: String,
    pub format: String,
    pub mode: String,
    pub owner: String,
    pub group: String,
    pub secret: bool,
    pub size: i64,
    pub entry_hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionView {
    #[serde(flatten)]
    pub summary: RevisionSummary,
    pub current: bool,
    pub entries: Vec<EntryView>,
}

/// One entry with its content; `content` is `None` for secret entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryContent {
    #[serde(flatten)]
    pub entry: EntryView,
    pub revision: i64,
    pub content: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeState {
    Draft,
    Submitted,
    Approved,
    Rejected,
    RolledOut,
    Superseded,
}

impl ChangeState {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeState::Draft => "draft",
            ChangeState::Submitted => "submitted",
            ChangeState::Approved => "approved",
            ChangeState::Rejected => "rejected",
            ChangeState::RolledOut => "rolled_out",
            ChangeState::Superseded => "superseded",
        }
    }

    pub fn parse(text: &str) -> Option<ChangeState> {
        [
            ChangeState::Draft,
            ChangeState::Submitted,
            ChangeState::Approved,
            ChangeState::Rejected,
            ChangeState::RolledOut,
            ChangeState::Superseded,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
    }

    /// A change can still be edited (an edit returns it to draft).
    pub fn is_open(self) -> bool {
        matches!(
            self,
            ChangeState::Draft | ChangeState::Submitted | ChangeState::Approved | ChangeState::Rejected
        )
    }
}

/// One entry of a change request: put `content` at `path`, or delete `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryInput {
    pub path: String,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub secret: Option<bool>,
    #[serde(default)]
    pub delete: bool,
}

impl EntryInput {
    /// The entry at `path` removed.
    pub fn deletion(path: impl Into<String>) -> EntryInput {
        EntryInput {
            path: path.into(),
            content: None,
            format: None,
            mode: None,
            owner: None,
            group: None,
            secret: None,
            delete: true,
        }
    }
}

/// `PUT /api/v1/changes/{id}/entries/{path}` body: the path comes from the URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryEdit {
    pub content: String,
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub secret: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewChange {
    pub base_revision: i64,
    pub message: String,
    #[serde(default)]
    pub entries: Vec<EntryInput>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeEntryView {
    #[serde(flatten)]
    pub entry: EntryView,
    /// `put` or `delete`.
    pub op: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalView {
    pub approver: String,
    pub created_at: String,
    pub content_hash: String,
    /// False once the change was edited after this approval.
    pub valid: bool,
    /// The shadows the change was approved to reach (absent for approvals made before
    /// approvals recorded them): a rollout to another set needs a new approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadows: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeSummary {
    pub id: i64,
    pub base_revision: i64,
    pub message: String,
    pub author: String,
    pub state: ChangeState,
    pub content_hash: String,
    pub created_at: String,
    pub updated_at: String,
    /// The revision this change became, once rolled out.
    pub revision: Option<i64>,
    pub entry_count: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeView {
    #[serde(flatten)]
    pub summary: ChangeSummary,
    pub entries: Vec<ChangeEntryView>,
    pub approvals: Vec<ApprovalView>,
    pub rejected_by: Option<String>,
    pub reject_reason: Option<String>,
    /// The current revision, so a client can tell that the base is stale.
    pub current_revision: i64,
    /// The shadows holding this change's tree staged ahead of its rollout (their prepare
    /// only proves and takes it).
    #[serde(default)]
    pub staged_ahead: Vec<String>,
}

/// How one path differs between two entry sets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryDiff {
    pub path: String,
    /// `added`, `removed`, `modified` (content and/or policy) or `unchanged`.
    pub status: String,
    pub old: Option<EntryView>,
    pub new: Option<EntryView>,
    /// Human-readable policy differences such as `mode 0640 → 0644`.
    pub policy_changes: Vec<String>,
    /// The line diff; `None` for secret entries (only "changed" is shown) and for
    /// entries whose content did not change.
    pub text: Option<TextDiff>,
    pub secret_changed: bool,
    /// For json, yaml and toml: the keys whose values differ, blind to formatting (an
    /// empty list: only formatting differs). `None` for other formats, secrets, or a side
    /// that does not parse.
    #[serde(default)]
    pub keys: Option<Vec<crate::keys::KeyChange>>,
    /// Why the content is not shown (a file on a shadow that the primary does not
    /// manage, to a caller below approver, or named like a secret, to anyone), else `None`.
    #[serde(default)]
    pub hidden: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffView {
    pub from: String,
    pub to: String,
    pub entries: Vec<EntryDiff>,
}

/// One page of a diff (see [`DiffView`]): its entries in path order, how many differ in
/// all, and the path to ask the next page after (`None` on the last page).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffPage {
    pub from: String,
    pub to: String,
    pub entries: Vec<EntryDiff>,
    pub total: usize,
    pub next: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutShadowView {
    pub name: String,
    /// `pending`, `prepared`, `refused`, `committed`, `aborted`.
    pub phase: String,
    /// The root the shadow staged when it prepared.
    pub staged_root: Option<String>,
    /// The root the shadow serves after committing: its proof.
    pub receipt_root: Option<String>,
    pub error: Option<String>,
    /// The node's hook that ran: `validate` at prepare (its refusal aborts the rollout)
    /// or `reload` after the commit; output masked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<crate::protocol::HookRun>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutView {
    pub id: i64,
    pub change_id: Option<i64>,
    pub kind: String,
    /// `applied`, `failed`, `aborted`, `committing` or `preparing`.
    pub state: String,
    pub revision: i64,
    pub root: String,
    pub started_by: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub error: Option<String>,
    pub shadows: Vec<RolloutShadowView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub details: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditVerification {
    /// The chain verifies and no shadow holds a head it contradicts.
    pub intact: bool,
    pub rows: i64,
    pub head: String,
    pub first_bad_seq: Option<i64>,
    pub problem: Option<ChainBreak>,
    pub message: String,
    /// Rows with a plain hash, written before the chain was keyed (an earlier version's).
    #[serde(default)]
    pub plain_rows: i64,
    /// The chain against the head each shadow keeps.
    #[serde(default)]
    pub anchors: Vec<AnchorCheck>,
}

/// One shadow's kept head of the audit chain, checked against the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchorCheck {
    pub shadow: String,
    /// The row the shadow's head names, if it holds one.
    pub seq: Option<i64>,
    /// `matches`, `cut` (the log ends before that row), `differs` (that row has another
    /// hash: the chain was recomputed or rewritten), `none` (no head kept yet) or
    /// `unavailable` (the shadow did not answer).
    pub status: String,
    pub message: String,
}

impl AnchorCheck {
    /// True when the shadow's head contradicts the log.
    pub fn contradicts(&self) -> bool {
        self.status == "cut" || self.status == "differs"
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    pub seq: i64,
    pub hash: String,
}

/// Result of validating one entry: the error, if any, with its position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validation {
    pub path: String,
    pub format: String,
    pub error: Option<ValidationError>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overview {
    pub current: RevisionSummary,
    pub awaiting_approval: Vec<ChangeSummary>,
    pub open_changes: i64,
    pub recent_activity: Vec<AuditEntry>,
    pub recent_rollouts: Vec<RolloutView>,
    /// Every shadow with its status.
    #[serde(default)]
    pub shadows: Vec<ShadowView>,
    /// The newest unresolved incidents (at most 10) and how many there are in all.
    #[serde(default)]
    pub open_incidents: Vec<IncidentView>,
    #[serde(default)]
    pub open_incident_count: i64,
    /// Incidents per day over the last two weeks, oldest first.
    #[serde(default)]
    pub incident_days: Vec<IncidentDay>,
    /// The control plane's replicas and which one leads.
    #[serde(default)]
    pub cluster: Option<ClusterView>,
}

/// `GET /api/v1/cluster`: the control plane's replicas and which one leads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// The replica that answered.
    #[serde(rename = "self")]
    pub this: String,
    /// The replica that leads now (`null`: none, an election is under way or etcd is out
    /// of reach).
    pub leader: Option<String>,
    pub replicas: Vec<ReplicaView>,
    /// Whether the replicas elect their leader through etcd (`serve --etcd`); a sole
    /// server leads by itself.
    pub elected: bool,
}

/// One replica of the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaView {
    pub id: String,
    /// Where its console and API answer.
    pub address: String,
    pub leader: bool,
    /// Its etcd lease is alive (it takes part in the election now).
    pub alive: bool,
    pub started_at: String,
    /// When it last wrote its record (every few seconds while it runs).
    pub last_seen_at: String,
}

/// One day of the incidents chart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentDay {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    pub opened: i64,
    /// Mean time to resolve of the incidents opened that day and resolved since, seconds.
    pub mean_resolve_seconds: Option<i64>,
}

/// A shadow as listed: where it is and what was last observed of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowView {
    pub name: String,
    /// `agent`, `directory` or `etcd`.
    pub driver: String,
    /// An agent's URL; an etcd shadow's endpoints, comma-separated.
    pub url: Option<String>,
    /// For agents over HTTPS: the SHA-256 fingerprint of the certificate trusted.
    pub tls_pin: Option<String>,
    pub path: Option<String>,
    /// An etcd shadow's key prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// `in_sync`, `drifted`, `stale`, `unreachable`, `fenced`, `pending`, `rolling_out`.
    pub status: String,
    pub observed_root: Option<String>,
    pub observed_revision: Option<i64>,
    pub last_contact_at: Option<String>,
    pub last_in_sync_at: Option<String>,
    pub last_error: Option<String>,
    pub created_at: String,
    /// The shadow's latest drill, if it ever had one: whether it could take over then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drill: Option<DrillSummary>,
}

/// The verdict of a shadow's latest drill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillSummary {
    pub id: i64,
    /// `passed` or `failed`.
    pub verdict: String,
    pub finished_at: String,
    /// How long ago it finished, in seconds, when it was read (so a page shows the same
    /// age on the server and after hydration).
    pub age_seconds: i64,
}

/// An age in words: `just now`, `12 min`, `3 h`, `2 days`.
pub fn age_words(seconds: i64) -> String {
    match seconds.max(0) {
        0..60 => "just now".into(),
        s @ 60..3600 => format!("{} min ago", s / 60),
        s @ 3600..172_800 => format!("{} h ago", s / 3600),
        s => format!("{} days ago", s / 86_400),
    }
}

/// One step of a drill: `parity` (the shadow serves the current revision's root, policy
/// included), `validate` (the node's validate hook on its live tree) or `health` (the
/// node's health probe, `requests` times).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillStep {
    pub name: String,
    /// `passed`, `failed` or `skipped` (the node has no such hook, or an earlier step
    /// could not reach it).
    pub status: String,
    /// What was found, in words.
    pub detail: String,
    /// The hook's run (output masked), for `validate` and `health`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<crate::protocol::HookRun>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
}

/// A drill: the evidence that a shadow could take over, step by step, who asked and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillView {
    pub id: i64,
    pub shadow: String,
    /// A user's name, or `scheduler`.
    pub requested_by: String,
    pub started_at: String,
    pub finished_at: String,
    /// `passed` when every step that ran passed.
    pub verdict: String,
    /// The current revision and its root when the drill ran.
    pub revision: i64,
    pub expected_root: String,
    /// The root the shadow served (absent when it could not be reached).
    pub observed_root: Option<String>,
    pub steps: Vec<DrillStep>,
}

/// What rolling out a change would do (`GET /api/v1/changes/{id}/plan`): every shadow it
/// would reach, what each would do per entry relative to what it holds now, and whether it
/// would refuse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutPlan {
    pub change_id: i64,
    /// The revision the rollout would make, and its root.
    pub revision: i64,
    pub root: String,
    /// The root every shadow must serve for its prepare to be accepted.
    pub base_root: String,
    /// Set when the change is not based on the current revision (it needs a rebase).
    pub stale_base: bool,
    /// Whether the node's validate hooks ran as a dry run (`?validate=true`).
    pub validated: bool,
    pub shadows: Vec<ShadowPlan>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowPlan {
    pub name: String,
    pub status: String,
    /// Why this shadow would refuse the rollout (drifted, unreachable, fenced, its
    /// validate hook), which aborts it everywhere; `None` when it would accept.
    pub refusal: Option<String>,
    /// Per entry: `create`, `modify`, `chmod` (policy only) or `delete` (a file the
    /// revision does not have, moved aside).
    pub actions: Vec<PlanAction>,
    /// The validate hook's dry run, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validate: Option<crate::protocol::HookRun>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanAction {
    pub path: String,
    pub action: String,
    /// For `chmod` and `modify` with a policy change: `0644 → 0600`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

/// `POST /api/v1/shadows/{name}/drills`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NewDrill {
    /// How many health probes to time (1 to 1000; default 1).
    #[serde(default)]
    pub requests: Option<u32>,
}

/// One step of a rollout as it happens, streamed on `GET /api/v1/events` (event `rollout`).
/// `shadow` is `None` for the rollout's own state (`preparing`, `committing`, `applied`,
/// `failed`, `aborted`); otherwise `phase` is that shadow's (`prepared`, `refused`,
/// `committed`, `aborted`) and `root` its staged root or receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutEvent {
    pub rollout: i64,
    pub shadow: Option<String>,
    pub phase: String,
    pub root: Option<String>,
}

/// A drift incident: one drift episode on one shadow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentView {
    pub id: i64,
    pub shadow: String,
    /// The most severe kind seen in this episode.
    pub kind: String,
    /// Every kind seen in this episode.
    pub kinds: Vec<String>,
    /// `critical`, `high` or `medium`.
    pub severity: String,
    /// `open`, `acknowledged` or `resolved`.
    pub status: String,
    pub opened_at: String,
    pub last_seen_at: String,
    pub resolved_at: Option<String>,
    /// `self_healed`, `reconciled`, `adopted` or `resolved`.
    pub resolution: Option<String>,
    pub expected_root: String,
    pub observed_root: Option<String>,
    /// `poll` or `event`.
    pub detected_by: String,
    /// The shadow drifted three times or more within the hour before this episode opened.
    pub flapping: bool,
    /// Only on `GET /api/v1/incidents/{id}`.
    #[serde(default)]
    pub entries: Vec<crate::drift::EntryDrift>,
    /// Only on `GET /api/v1/incidents/{id}`.
    #[serde(default)]
    pub timeline: Vec<IncidentEvent>,
}

/// One step of an incident's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentEvent {
    pub at: String,
    pub actor: String,
    /// `detected`, `changed`, `acknowledged`, `reconcile_started`, `reconcile_finished`,
    /// `adopted`, `resolved`.
    pub event: String,
    pub details: serde_json::Value,
}

/// An incident opened, changed or resolved, streamed on `GET /api/v1/events` (event
/// `incident`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentNotice {
    pub id: i64,
    pub shadow: String,
    pub kind: String,
    pub status: String,
    /// `opened`, `updated` or `resolved`.
    pub change: String,
}

/// A webhook as admins see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookView {
    pub id: i64,
    pub url: String,
    pub events: Vec<String>,
    pub created_by: String,
    pub created_at: String,
    /// Only in the answer to the creation: the HMAC key, shown once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// One entry of the webhook delivery log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryView {
    pub id: i64,
    pub webhook_id: i64,
    pub event: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: String,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: String,
    pub delivered_at: Option<String>,
}

/// One check as the shadow page's chart draws it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckPoint {
    pub at: String,
    /// The shadow's status after the check.
    pub status: String,
    pub latency_ms: i64,
}

/// One drift check of one shadow, for its history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckView {
    pub id: i64,
    pub at: String,
    /// `poll`, `event`, `rollout` or `manual`.
    pub trigger: String,
    /// The shadow's status after the check.
    pub status: String,
    pub observed_root: Option<String>,
    pub latency_ms: i64,
    pub error: Option<String>,
}

#[cfg(test)]
mod sign_in_tests {
    use super::*;

    #[test]
    fn the_sign_in_comes_back_only_to_local_paths() {
        assert_eq!(login_href("/incidents/7?tab=diff"), "/login?next=/incidents/7%3Ftab%3Ddiff");
        assert_eq!(local_next(Some("/incidents/7?tab=diff")), "/incidents/7?tab=diff");
        for outside in [
            "https://evil.example/",
            "//evil.example/",
            "/\\evil.example",
            "evil",
            "/login?next=/x",
        ] {
            assert_eq!(local_next(Some(outside)), "/", "{outside}");
        }
        assert_eq!(local_next(None), "/");
    }
}
