//! `etcd` shadows: a key prefix in an etcd cluster, a shadow applications read and watch
//! like any other etcd data, written and proven like any other shadow.
//!
//! # Layout
//!
//! Under the prefix `P` (it ends with `/`):
//!
//! - `P<path>`: an entry's bytes, as they are. Applications get and watch these keys.
//! - `P..etc-shadow/policy/<path>`: the entry's policy and entry hash (JSON: `mode`,
//!   `owner`, `group`, `secret`, `sealed`, `entry_hash`).
//! - `P..etc-shadow/stage/<rollout>-<root>/<path>`: bytes a prepare staged, until its
//!   commit or abort (proven again against their entry hash before the commit uses them).
//! - `P..etc-shadow/state`: the shadow's own state (JSON): the control plane it belongs
//!   to and the highest epoch it accepted (the fence), its live and staged revisions and
//!   roots, its recent rollouts.
//!
//! No entry's path can collide with `..etc-shadow`: path segments beginning with `..` are
//! reserved. A key under `P` that the control plane did not write is drift like a file
//! planted in a directory: one without a policy record is an entry with the default
//! policy, one whose name the path rules refuse is an `invalid_name` entry.
//!
//! # Writes
//!
//! Every write is one transaction that compares the state key's mod revision with the
//! one the operation read, so any other writer in between (a second control plane, a
//! deposed one) makes it fail; the operation then reads the state again and is judged by
//! its fence. A prepare stages the changed entries' bytes in batches within the
//! cluster's limits (128 operations and 1.5 MiB per request unless the shadow is
//! registered with others), then records the staging. A commit is one transaction that
//! writes every changed entry and policy record, deletes what the revision removes and
//! records the new live revision, so a reader at any etcd revision sees the old set or
//! the new one, never a mix. A revision whose switch would not fit in one transaction is
//! refused at prepare, before anything is decided. The receipt is the root read back
//! from etcd at the commit's own etcd revision.

use crate::shadows::ShadowError;
use domain::{
    audit::Anchor,
    hash::{Hash, root_hash},
    path::EntryPath,
    policy::{Policy, format_mode, parse_mode},
    protocol::{DrillAnswer, Fence, ObservedEntry, PrepareRequest, RolloutAnswer, RolloutPhase, ShadowState, StagedInfo},
};
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, time::Duration};
use store::StoreError;

/// Where the shadow's own keys are, under the prefix.
const META: &str = "..etc-shadow/";
/// Rollouts remembered (their outcome answers a late prepare, commit or abort).
const HISTORY: usize = 64;
/// Keys read per request when reading the prefix: with etcd's largest default value
/// (1.5 MiB), a page stays under [`MAX_ANSWER`].
const PAGE: i64 = 64;
/// The largest answer taken from etcd (gRPC's default is 4 MiB, less than one page of
/// large values).
const MAX_ANSWER: usize = 128 * 1024 * 1024;
/// Room kept in a request for what is not a key or a value (framing, compares).
const REQUEST_MARGIN: usize = 16 * 1024;
/// Attempts at an operation whose transaction another writer overtook.
const ATTEMPTS: usize = 5;

/// The cluster's limits on one request, as its members were started with
/// (`--max-txn-ops`, `--max-request-bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_txn_ops: usize,
    pub max_request_bytes: usize,
}

impl Default for Limits {
    /// etcd's defaults.
    fn default() -> Self {
        Limits {
            max_txn_ops: 128,
            max_request_bytes: 1536 * 1024,
        }
    }
}

/// How to reach a cluster.
#[derive(Clone, Default)]
pub struct Target {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub user: Option<String>,
    pub password: Option<String>,
    /// The CA certificate (PEM) the members' certificates are checked against, for
    /// `https://` endpoints.
    pub ca_pem: Option<String>,
    pub limits: Limits,
    /// The key sealed entries are hashed under (hex): the control plane's, which the
    /// driver runs inside. It is never written to etcd.
    pub content_key: Option<String>,
}

/// Without the password.
impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("user", &self.user)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Checks a prefix given at registration: not empty, printable, ending with `/`, and
/// not inside another shadow's own keys.
pub fn validate_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.len() > 512 {
        return Err("an etcd prefix has 1 to 512 characters".into());
    }
    if prefix.chars().any(char::is_control) {
        return Err("an etcd prefix has no control characters".into());
    }
    if !prefix.ends_with('/') {
        return Err("an etcd prefix ends with '/' (entries are keys under it: P<path>)".into());
    }
    if prefix.contains(META) {
        return Err(format!("an etcd prefix cannot be inside a shadow's own keys ({META})"));
    }
    Ok(())
}

/// Checks endpoints given at registration: `http://` or `https://` URLs with a host and
/// a port, nothing else.
pub fn validate_endpoints(endpoints: &[String]) -> Result<(), String> {
    if endpoints.is_empty() || endpoints.len() > 16 {
        return Err("an etcd shadow has 1 to 16 endpoints".into());
    }
    for endpoint in endpoints {
        let url = url::Url::parse(endpoint).map_err(|_| format!("{endpoint:?} is not a URL"))?;
        if !matches!(url.scheme(), "http" | "https")
            || url.host_str().is_none()
            || !url.username().is_empty()
            || url.password().is_some()
            || url.query().is_some()
            || url.path() != "/"
        {
            return Err(format!(
                "an etcd endpoint is http(s)://host:port, without credentials, a path or a query: {endpoint:?}"
            ));
        }
    }
    Ok(())
}

/// One entry's policy record (`P..etc-shadow/policy/<path>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyRecord {
    mode: String,
    #[serde(default)]
    owner: String,
    #[serde(default)]
    group: String,
    #[serde(default)]
    secret: bool,
    #[serde(default)]
    sealed: bool,
    entry_hash: String,
}

impl PolicyRecord {
    fn policy(&self) -> Option<Policy> {
        Some(Policy {
            mode: parse_mode(&self.mode).ok()?,
            owner: self.owner.clone(),
            group: self.group.clone(),
            secret: self.secret,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Generation {
    rollout: i64,
    revision: i64,
    root: String,
}

/// One entry the commit writes: its bytes (staged under the staging's stage keys)
/// when `bytes`, and its policy record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Write {
    path: String,
    bytes: bool,
    policy: PolicyRecord,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Staged {
    rollout: i64,
    revision: i64,
    root: String,
    writes: Vec<Write>,
    /// Keys under the prefix (relative, as bytes) the commit deletes: entries the revision
    /// removes, their policy records, and keys nobody wrote.
    deletes: Vec<Vec<u8>>,
}

/// `P..etc-shadow/state`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    control_plane_id: Option<String>,
    highest_epoch: i64,
    live: Option<Generation>,
    staged: Option<Staged>,
    /// Recent rollouts and how they ended here, oldest first.
    history: Vec<(i64, RolloutPhase)>,
    /// The roots of recently aborted rollouts (a late prepare of the same rollout and root
    /// is refused; another writer's rollout of the same number is not).
    aborted_roots: BTreeMap<i64, String>,
    audit_head: Option<Anchor>,
}

impl State {
    fn remember(&mut self, rollout: i64, phase: RolloutPhase) {
        self.history.retain(|(id, _)| *id != rollout);
        self.history.push((rollout, phase));
        if self.history.len() > HISTORY {
            let cut = self.history.len() - HISTORY;
            self.history.drain(..cut);
        }
        while self.aborted_roots.len() > HISTORY {
            self.aborted_roots.pop_first();
        }
    }

    fn phase_of(&self, rollout: i64) -> Option<RolloutPhase> {
        self.history.iter().find(|(id, _)| *id == rollout).map(|(_, phase)| *phase)
    }

    fn check_fence(&self, control_plane_id: &str, epoch: i64) -> Result<(), StoreError> {
        if let Some(bound) = &self.control_plane_id
            && bound != control_plane_id
        {
            return Err(StoreError::Fenced(format!(
                "this shadow belongs to control plane {bound}; refused a write from {control_plane_id}"
            )));
        }
        if epoch < self.highest_epoch {
            return Err(StoreError::Fenced(format!(
                "epoch {epoch} is lower than the highest seen ({}); a newer writer exists",
                self.highest_epoch
            )));
        }
        Ok(())
    }

    fn accept_fence(&mut self, control_plane_id: &str, epoch: i64) {
        self.control_plane_id = Some(control_plane_id.to_string());
        self.highest_epoch = self.highest_epoch.max(epoch);
    }
}

/// Everything under the prefix at one etcd revision.
struct Snapshot {
    state: State,
    /// The state key's mod revision (0: absent), which every write compares.
    state_revision: i64,
    /// Entry keys (relative to the prefix) and their bytes.
    entries: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Policy records by relative path, as stored (unparsed: a record a person damaged is
    /// drift, not an error).
    policies: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Whether any stage key is there (an earlier staging's, or a prepare's that stopped
    /// half way).
    staged_keys: bool,
    /// Keys among the shadow's own that it never writes.
    foreign_meta: Vec<Vec<u8>>,
}

/// What the snapshot holds, judged: each entry with its hash, its root.
struct Observation {
    root: Hash,
    entries: Vec<ObservedEntry>,
    /// Entry hashes by path, of the entries the path rules accept.
    hashes: BTreeMap<String, Hash>,
}

/// One client per member of the cluster, each made on its first use; requests go to one
/// member until it fails one, then to the next. A member gone dark (stopped, its
/// connections open and nothing answered) is left after one attempt, where one channel
/// balanced over all members keeps choosing it while its connection looks ready.
struct Members {
    endpoints: Vec<String>,
    options: ConnectOptions,
    clients: Vec<tokio::sync::OnceCell<Client>>,
    current: std::sync::atomic::AtomicUsize,
}

impl Members {
    /// The member requests go to now, and its client (signing in at first use).
    async fn client(&self) -> Result<(usize, Client), etcd_client::Error> {
        let index = self.current.load(std::sync::atomic::Ordering::Relaxed) % self.endpoints.len();
        let client = self.clients[index]
            .get_or_try_init(|| Client::connect([&self.endpoints[index]], Some(self.options.clone())))
            .await?;
        Ok((index, client.clone()))
    }

    /// Requests go to the next member after `index` failed one (unless another request
    /// moved on already).
    fn leave(&self, index: usize) {
        let next = (index + 1) % self.endpoints.len();
        let _ = self.current.compare_exchange(
            index,
            next,
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

/// A connection to one etcd shadow.
#[derive(Clone)]
pub struct EtcdShadow {
    members: std::sync::Arc<Members>,
    prefix: String,
    limits: Limits,
    content_key: Option<String>,
    /// Signed in as a user (whose login can expire).
    authenticated: bool,
}

fn unreachable(err: etcd_client::Error) -> ShadowError {
    let (code, transient) = match &err {
        etcd_client::Error::GRpcStatus(status)
            if matches!(status.code(), tonic::Code::Unauthenticated | tonic::Code::PermissionDenied)
                || (status.code() == tonic::Code::InvalidArgument && status.message().contains("authentication failed")) =>
        {
            ("unauthorized", false)
        }
        _ => ("unreachable", true),
    };
    // etcd's own words (no key's value is ever in them), cut like any shadow's message.
    let words = match &err {
        etcd_client::Error::GRpcStatus(status) => format!("{:?}: {}", status.code(), status.message()),
        other => other.to_string(),
    };
    ShadowError {
        code: code.into(),
        message: format!("etcd: {}", crate::shadows::shadow_message(&words.replace('"', "'"))),
        transient,
        ..Default::default()
    }
}

/// How long a request is tried again while the cluster answers that it cannot serve it
/// now (a member gone, a leader being elected): a cluster that keeps its quorum elects a
/// new leader in about a second.
const RETRY_FOR: Duration = Duration::from_secs(8);

/// The longest one attempt of a request may take (etcd's own members give a proposal
/// 5 s, on their side, by default).
const ATTEMPT: Duration = Duration::from_secs(3);

/// Whether etcd's answer means "not now" (try again) rather than "no".
fn retryable(err: &etcd_client::Error) -> bool {
    match err {
        // Unavailable: a leader being elected, a member gone; Unknown and Cancelled: the
        // connection to a member dropped under the request (tonic's "transport error").
        etcd_client::Error::GRpcStatus(status) => matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
        ),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

fn corrupt(what: &str, err: impl std::fmt::Display) -> ShadowError {
    ShadowError::from(StoreError::Io(format!("{what} is corrupt: {err}")))
}

impl EtcdShadow {
    /// Connects to the cluster (lazily: an unreachable cluster fails the first call,
    /// not this one).
    pub async fn connect(target: &Target, timeout: Duration) -> Result<EtcdShadow, ShadowError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
            // A member gone dark under an open watch is noticed in seconds: the watch ends
            // and the drift monitor opens it again, on a member that answers.
            .with_keep_alive(Duration::from_secs(2), ATTEMPT)
            // A member cut off from the others answers "no leader" (tried again) rather than
            // serving a stale read or a silent watch.
            .with_require_leader(true);
        if target.password.is_some() && !target.endpoints.iter().all(|e| e.starts_with("https://")) {
            return Err(StoreError::BadRequest("an etcd password travels only to https:// endpoints".into()).into());
        }
        if let (Some(user), Some(password)) = (&target.user, &target.password) {
            options = options.with_user(user.clone(), password.clone());
        }
        if let Some(ca) = &target.ca_pem {
            options = options.with_tls(etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(ca)));
        }
        if target.endpoints.is_empty() {
            return Err(StoreError::BadRequest("an etcd shadow needs at least one endpoint".into()).into());
        }
        let members = Members {
            endpoints: target.endpoints.clone(),
            options,
            clients: target.endpoints.iter().map(|_| tokio::sync::OnceCell::new()).collect(),
            current: std::sync::atomic::AtomicUsize::new(0),
        };
        Ok(EtcdShadow {
            members: std::sync::Arc::new(members),
            prefix: target.prefix.clone(),
            limits: target.limits,
            content_key: target.content_key.clone(),
            authenticated: target.user.is_some(),
        })
    }

    /// Runs `call` until it answers anything but "not now", for at most [`RETRY_FOR`];
    /// an expired login (etcd's tokens live a few minutes) is renewed once. Every request
    /// here may run twice: reads are reads, and a write whose answer was lost and that ran
    /// is refused the second time by its guard (the state key moved), so the operation
    /// reads the state again and finds its own work done.
    async fn with_retry<T, Fut>(&self, mut call: impl FnMut(Client) -> Fut) -> Result<T, ShadowError>
    where
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let started = std::time::Instant::now();
        let mut delay = Duration::from_millis(50);
        let mut renewed = false;
        loop {
            // One attempt is cut short: a member gone dark (its connection open, nothing
            // answered) must not hold the request until the client's own timeout, when
            // another member could answer it. The attempt includes connecting.
            let mut member = None;
            let attempt = tokio::time::timeout(ATTEMPT, async {
                let (index, client) = self.members.client().await?;
                member = Some((index, client.clone()));
                call(client).await
            })
            .await
            .unwrap_or_else(|_| {
                Err(etcd_client::Error::GRpcStatus(tonic::Status::unavailable(format!(
                    "no answer within {ATTEMPT:?}"
                ))))
            });
            let index = member.as_ref().map_or_else(
                || self.members.current.load(std::sync::atomic::Ordering::Relaxed) % self.members.endpoints.len(),
                |(index, _)| *index,
            );
            match attempt {
                Err(etcd_client::Error::GRpcStatus(status))
                    if status.code() == tonic::Code::Unauthenticated && !renewed && self.authenticated =>
                {
                    renewed = true;
                    tracing::debug!("the etcd login expired; signing in again");
                    if let Some((_, client)) = member {
                        client.refresh_token().await.map_err(unreachable)?;
                    }
                }
                Err(err) if retryable(&err) && started.elapsed() + delay < RETRY_FOR => {
                    tracing::debug!(%err, member = %self.members.endpoints[index], "etcd cannot serve the request now; trying the next member");
                    self.members.leave(index);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(500));
                }
                other => return other.map_err(unreachable),
            }
        }
    }

    /// Keys per page: [`PAGE`], fewer when the cluster allows values so large that a page
    /// could pass [`MAX_ANSWER`].
    fn page(&self) -> i64 {
        let per_key = self.limits.max_request_bytes.saturating_add(64 * 1024).max(1);
        i64::try_from(MAX_ANSWER / per_key).unwrap_or(PAGE).clamp(1, PAGE)
    }

    /// A range read, tried again while the cluster cannot serve it.
    async fn get(&self, key: Vec<u8>, options: Option<GetOptions>) -> Result<etcd_client::GetResponse, ShadowError> {
        self.with_retry(|client| {
            let mut kv = client.kv_client().max_decoding_message_size(MAX_ANSWER);
            let (key, options) = (key.clone(), options.clone());
            async move { kv.get(key, options).await }
        })
        .await
    }

    fn key(&self, relative: &[u8]) -> Vec<u8> {
        let mut key = self.prefix.as_bytes().to_vec();
        key.extend_from_slice(relative);
        key
    }

    fn meta(&self, name: &str) -> Vec<u8> {
        self.key(format!("{META}{name}").as_bytes())
    }

    fn policy_key(&self, path: &[u8]) -> Vec<u8> {
        let mut key = self.meta("policy/");
        key.extend_from_slice(path);
        key
    }

    /// Where a staging's bytes are: `stage/<rollout>-<first 16 digits of its root>/`, so
    /// two writers staging at once (a deposed one among them) never share a key.
    fn stage_dir(&self, rollout: i64, root: &str) -> Vec<u8> {
        self.meta(&format!("stage/{rollout}-{}/", root.get(..16).unwrap_or(root)))
    }

    /// Everything under the prefix now, read page by page at one etcd revision.
    async fn snapshot(&self) -> Result<Snapshot, ShadowError> {
        self.snapshot_at(None).await
    }

    /// Everything under the prefix at etcd revision `at` (the current one: `None`).
    async fn snapshot_at(&self, at: Option<i64>) -> Result<Snapshot, ShadowError> {
        let prefix = self.prefix.as_bytes().to_vec();
        let end = prefix_end(&prefix);
        let mut from = prefix.clone();
        let mut revision = at.unwrap_or(0);
        let mut snapshot = Snapshot {
            state: State::default(),
            state_revision: 0,
            entries: BTreeMap::new(),
            policies: BTreeMap::new(),
            staged_keys: false,
            foreign_meta: Vec::new(),
        };
        let meta = META.as_bytes();
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(self.page());
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let response = self.get(from.clone(), Some(options)).await?;
            if revision == 0 {
                revision = response.header().map_or(0, |h| h.revision());
            }
            let kvs = response.kvs();
            for kv in kvs {
                let relative = &kv.key()[prefix.len()..];
                if let Some(own) = relative.strip_prefix(meta) {
                    if own == b"state" {
                        snapshot.state = serde_json::from_slice(kv.value()).map_err(|err| corrupt("the shadow's state key", err))?;
                        snapshot.state_revision = kv.mod_revision();
                    } else if let Some(path) = own.strip_prefix(b"policy/") {
                        snapshot.policies.insert(path.to_vec(), kv.value().to_vec());
                    } else if own.starts_with(b"stage/") {
                        snapshot.staged_keys = true;
                    } else {
                        snapshot.foreign_meta.push(relative.to_vec());
                    }
                } else {
                    snapshot.entries.insert(relative.to_vec(), kv.value().to_vec());
                }
            }
            match (response.more(), kvs.last()) {
                (true, Some(last)) => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        Ok(snapshot)
    }

    /// The state key alone, and its mod revision (0: absent).
    async fn state(&self) -> Result<(State, i64), ShadowError> {
        let response = self.get(self.meta("state"), None).await?;
        match response.kvs().first() {
            Some(kv) => Ok((
                serde_json::from_slice(kv.value()).map_err(|err| corrupt("the shadow's state key", err))?,
                kv.mod_revision(),
            )),
            None => Ok((State::default(), 0)),
        }
    }

    /// Runs `ops` if the state key is still at `state_revision`; whether it was, and the
    /// etcd revision of the transaction.
    async fn guarded(&self, state_revision: i64, ops: Vec<TxnOp>) -> Result<(bool, i64), ShadowError> {
        let guard = if state_revision == 0 {
            Compare::create_revision(self.meta("state"), CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(self.meta("state"), CompareOp::Equal, state_revision)
        };
        let txn = Txn::new().when(vec![guard]).and_then(ops);
        let response = self
            .with_retry(|client| {
                let mut kv = client.kv_client();
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            })
            .await?;
        Ok((response.succeeded(), response.header().map_or(0, |h| h.revision())))
    }

    fn put_state(&self, state: &State) -> Result<TxnOp, ShadowError> {
        let body = serde_json::to_vec(state).map_err(|err| corrupt("the shadow's state", err))?;
        Ok(TxnOp::put(self.meta("state"), body, None))
    }

    /// Judges what `snapshot` holds: every entry key with its hash (under its policy
    /// record, or the default policy when it has none), and the root.
    fn observe(&self, snapshot: &Snapshot, content_key: Option<&str>) -> Observation {
        let content_key = content_key.and_then(|hex| domain::hash::ContentKey::from_hex(hex).ok());
        let mut files: Vec<(EntryPath, Hash)> = Vec::new();
        let mut entries = Vec::new();
        let mut others = Vec::new();
        for (relative, value) in &snapshot.entries {
            let name = String::from_utf8_lossy(relative);
            let path = match std::str::from_utf8(relative).ok().map(EntryPath::parse) {
                Some(Ok(path)) if path.as_str().as_bytes() == relative.as_slice() => path,
                _ => {
                    others.push(store::other_entry(&name, "invalid_name", "a key the path rules refuse".into()));
                    continue;
                }
            };
            let record = snapshot
                .policies
                .get(relative)
                .and_then(|raw| serde_json::from_slice::<PolicyRecord>(raw).ok());
            // A key without a (readable) record is judged by the default policy.
            let (policy, sealed) = record.as_ref().and_then(|r| Some((r.policy()?, r.sealed))).unwrap_or_default();
            let key = if sealed { content_key.as_ref() } else { None };
            let hash = store::hash_entry(key, &path, &policy, value);
            entries.push(ObservedEntry {
                path: path.to_string(),
                entry_hash: hash.to_hex(),
                mode: format_mode(policy.mode),
                owner: policy.owner.clone(),
                group: policy.group.clone(),
                size: i64::try_from(value.len()).unwrap_or(i64::MAX),
                kind: None,
                detail: None,
            });
            files.push((path, hash));
        }
        // The shadow's own keys are its fence: one it never writes, or entries without the
        // state that binds them, are no revision's.
        for name in &snapshot.foreign_meta {
            others.push(store::other_entry(
                &String::from_utf8_lossy(name),
                "invalid_name",
                "a key among the shadow's own that it never writes".into(),
            ));
        }
        if snapshot.state_revision == 0 && !snapshot.entries.is_empty() {
            others.push(store::other_entry(
                &format!("{META}state"),
                "missing",
                "entries without the shadow's state key (removed by hand?)".into(),
            ));
        }
        let root = store::observed_root(root_hash(files.iter().map(|(path, hash)| (path, *hash))), &others);
        let hashes = files.iter().map(|(path, hash)| (path.to_string(), *hash)).collect();
        entries.extend(others);
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Observation { root, entries, hashes }
    }

    /// `GET /v1/state`: the state, with the live root computed from what the prefix holds.
    pub async fn shadow_state(&self, with_entries: bool) -> Result<ShadowState, ShadowError> {
        let snapshot = self.snapshot().await?;
        let observed = self.observe(&snapshot, self.content_key.as_deref());
        let state = &snapshot.state;
        Ok(ShadowState {
            control_plane_id: state.control_plane_id.clone(),
            highest_epoch: state.highest_epoch,
            live_revision: state.live.as_ref().map(|g| g.revision),
            live_root: observed.root.to_hex(),
            staged: state.staged.as_ref().map(|s| StagedInfo {
                rollout: s.rollout,
                revision: s.revision,
                root: s.root.clone(),
            }),
            entries: with_entries.then_some(observed.entries),
            audit_head: state.audit_head.clone(),
        })
    }

    /// Watches every key under the prefix from now on (the drift monitor's trigger); it
    /// answers once etcd has created the watch, so a write after this returns is seen.
    pub async fn watch(&self) -> Result<etcd_client::WatchStream, ShadowError> {
        // Opening and the creation's answer are one attempt: a dark member that takes the
        // request and never answers is left for the next.
        self.with_retry(|client| {
            let mut watch = client.watch_client().max_decoding_message_size(MAX_ANSWER);
            let prefix = self.prefix.clone();
            async move {
                let mut stream = watch.watch(prefix, Some(etcd_client::WatchOptions::new().with_prefix())).await?;
                match stream.message().await? {
                    Some(created) if created.created() && !created.canceled() => Ok(stream),
                    _ => Err(etcd_client::Error::GRpcStatus(tonic::Status::unavailable(
                        "etcd did not create the watch",
                    ))),
                }
            }
        })
        .await
    }

    /// Whether a watch answer reports a write that can change what the shadow serves:
    /// anything under the prefix but the stage keys (a prepare's bytes, not live before
    /// its commit).
    pub fn touches_live(&self, response: &etcd_client::WatchResponse) -> bool {
        let stage = self.meta("stage/");
        response
            .events()
            .iter()
            .any(|event| event.kv().is_none_or(|kv| !kv.key().starts_with(&stage)))
    }

    /// The live bytes of one entry.
    pub async fn read_entry(&self, path: &str) -> Result<Vec<u8>, ShadowError> {
        let response = self.get(self.key(path.as_bytes()), None).await?;
        match response.kvs().first() {
            Some(kv) => Ok(kv.value().to_vec()),
            None => Err(StoreError::NotFound(format!("no entry {path} here")).into()),
        }
    }

    /// The node's part of a drill: the live root (an etcd shadow runs no hooks).
    pub async fn drill(&self) -> Result<DrillAnswer, ShadowError> {
        let state = self.shadow_state(false).await?;
        Ok(DrillAnswer {
            live_root: state.live_root,
            live_revision: state.live_revision,
            validate: None,
            health: None,
        })
    }

    /// Stages `request`'s revision: checks it as a directory shadow does, works out the
    /// switch (what differs from what the prefix holds), refuses one that would not fit in
    /// one transaction, writes the changed bytes under the stage keys in batches and
    /// records the staging.
    pub async fn prepare(&self, rollout: i64, request: &PrepareRequest) -> Result<RolloutAnswer, ShadowError> {
        if rollout <= 0 || request.revision < 0 {
            return Err(StoreError::BadRequest("a rollout's id is positive and its revision not negative".into()).into());
        }
        if request.prestaged {
            return Err(StoreError::NotPrestaged("an etcd shadow stages nothing ahead".into()).into());
        }
        let checked = store::check_entries(request)?;
        for _ in 0..ATTEMPTS {
            let snapshot = self.snapshot().await?;
            let mut state = snapshot.state.clone();
            state.check_fence(&request.control_plane_id, request.epoch)?;
            if let Some(staged) = state.staged.as_ref().filter(|s| s.rollout == rollout) {
                if staged.root == request.target_root {
                    return Ok(answer(rollout, RolloutPhase::Prepared, &staged.root));
                }
                return Err(StoreError::Conflict(format!("rollout {rollout} is already staged with another root")).into());
            }
            if let Some(live) = &state.live
                && request.revision < live.revision
            {
                return Err(StoreError::Fenced(format!(
                    "revision {} is older than revision {} that this shadow last committed; the writer is behind (restored from an old copy?)",
                    request.revision, live.revision
                ))
                .into());
            }
            if state
                .live
                .as_ref()
                .is_some_and(|g| g.rollout == rollout && g.root == request.target_root)
            {
                return Err(StoreError::Conflict(format!("rollout {rollout} is already committed")).into());
            }
            let aborted = state.phase_of(rollout) == Some(RolloutPhase::Aborted);
            if aborted && state.aborted_roots.get(&rollout).is_none_or(|root| *root == request.target_root) {
                return Err(StoreError::Conflict(format!("rollout {rollout} was aborted here")).into());
            }
            if let Some(staged) = &state.staged
                && staged.rollout > rollout
            {
                return Err(
                    StoreError::Conflict(format!("rollout {} is staged here, newer than rollout {rollout}", staged.rollout)).into(),
                );
            }
            // Sealed entries are proven under the control plane's key at prepare and again at
            // commit: a request under another key is refused.
            if let (Some(sent), Some(own)) = (&request.content_key, &self.content_key)
                && sent != own
            {
                return Err(StoreError::BadRequest("the request's content key is not this control plane's".into()).into());
            }
            if self.content_key.is_none() && checked.iter().any(|e| e.sealed) {
                return Err(
                    StoreError::BadRequest("sealed entries need the control plane's content key, which this driver lacks".into()).into(),
                );
            }
            let content_key = self.content_key.as_deref();
            let observed = self.observe(&snapshot, content_key);
            if !request.reconcile && observed.root.to_hex() != request.base_root {
                return Err(StoreError::BaseRootMismatch {
                    expected: request.base_root.clone(),
                    actual: observed.root.to_hex(),
                }
                .into());
            }
            // What the switch writes: every entry whose bytes or record differ from what
            // the prefix holds; entries sent by hash alone must be held as that hash says.
            let mut writes = Vec::new();
            let mut missing = Vec::new();
            let mut staged_bytes: Vec<(String, &[u8])> = Vec::new();
            for entry in &checked {
                let path = entry.path.as_str();
                let record = PolicyRecord {
                    mode: format_mode(entry.policy.mode),
                    owner: entry.policy.owner.clone(),
                    group: entry.policy.group.clone(),
                    secret: entry.policy.secret,
                    sealed: entry.sealed,
                    entry_hash: entry.hash.to_hex(),
                };
                let stored_record = snapshot
                    .policies
                    .get(path.as_bytes())
                    .and_then(|raw| serde_json::from_slice::<PolicyRecord>(raw).ok());
                let record_same = stored_record.as_ref() == Some(&record);
                let live_hash = observed.hashes.get(path);
                let bytes = match entry.content {
                    Some(content) => {
                        let same = snapshot.entries.get(path.as_bytes()).is_some_and(|held| held.as_slice() == content);
                        if !same {
                            staged_bytes.push((path.to_string(), content));
                        }
                        !same
                    }
                    None => {
                        // Held: the bytes there must hash to the entry under its policy.
                        let key = if entry.sealed {
                            content_key.and_then(|hex| domain::hash::ContentKey::from_hex(hex).ok())
                        } else {
                            None
                        };
                        let held = snapshot
                            .entries
                            .get(path.as_bytes())
                            .is_some_and(|bytes| store::hash_entry(key.as_ref(), &entry.path, &entry.policy, bytes) == entry.hash);
                        if !held {
                            missing.push(path.to_string());
                        }
                        false
                    }
                };
                if bytes || !record_same || live_hash != Some(&entry.hash) {
                    writes.push(Write {
                        path: path.to_string(),
                        bytes,
                        policy: record,
                    });
                }
            }
            if !missing.is_empty() {
                return Err(StoreError::Incomplete(missing).into());
            }
            let wanted: std::collections::BTreeSet<&[u8]> = checked.iter().map(|e| e.path.as_str().as_bytes()).collect();
            let mut deletes: Vec<Vec<u8>> = Vec::new();
            for relative in snapshot.entries.keys() {
                if !wanted.contains(relative.as_slice()) {
                    deletes.push(relative.clone());
                }
            }
            for relative in snapshot.policies.keys() {
                if !wanted.contains(relative.as_slice()) {
                    let mut key = format!("{META}policy/").into_bytes();
                    key.extend_from_slice(relative);
                    deletes.push(key);
                }
            }
            // Keys among the shadow's own that it never writes are drift; the switch
            // removes them like any key nobody wrote.
            deletes.extend(snapshot.foreign_meta.iter().cloned());
            let staged = Staged {
                rollout,
                revision: request.revision,
                root: request.target_root.clone(),
                writes,
                deletes,
            };
            self.check_switch_fits(&staged, &staged_bytes, &state)?;
            // The bytes, batch by batch under this staging's own keys, each batch guarded by
            // the state key (a writer that overtook us stops us here). The stage keys of
            // whatever was staged before go with the state write that forgets it.
            let stage_dir = self.stage_dir(rollout, &request.target_root);
            let mut forget = Vec::new();
            if snapshot.staged_keys {
                // Everything under stage/ but this staging's own keys: an earlier staging's,
                // or a prepare's that stopped half way.
                let stage = self.meta("stage/");
                forget.push(TxnOp::delete(
                    stage.clone(),
                    Some(DeleteOptions::new().with_range(stage_dir.clone())),
                ));
                forget.push(TxnOp::delete(
                    prefix_end(&stage_dir),
                    Some(DeleteOptions::new().with_range(prefix_end(&stage))),
                ));
            }
            if let Some(old) = state.staged.take() {
                state.remember(old.rollout, RolloutPhase::Aborted);
            }
            let mut batches: Vec<Vec<TxnOp>> = vec![Vec::new()];
            let mut batch_bytes = 0;
            for (path, content) in &staged_bytes {
                let size = content.len() + path.len() + 64;
                let last = batches.last_mut().expect("one batch at least");
                if last.len() + 1 > self.limits.max_txn_ops || batch_bytes + size + REQUEST_MARGIN > self.limits.max_request_bytes {
                    batches.push(Vec::new());
                    batch_bytes = 0;
                }
                batches.last_mut().expect("one batch at least").push(TxnOp::put(
                    [stage_dir.as_slice(), path.as_bytes()].concat(),
                    content.to_vec(),
                    None,
                ));
                batch_bytes += size;
            }
            batches.retain(|batch| !batch.is_empty());
            let mut overtaken = false;
            for batch in batches {
                let (ok, _) = self.guarded(snapshot.state_revision, batch).await?;
                if !ok {
                    overtaken = true;
                    break;
                }
            }
            if overtaken {
                continue;
            }
            state.accept_fence(&request.control_plane_id, request.epoch);
            if let Some(head) = &request.audit_head
                && state.audit_head.as_ref().is_none_or(|held| held.seq < head.seq)
            {
                state.audit_head = Some(head.clone());
            }
            state.staged = Some(staged);
            state.remember(rollout, RolloutPhase::Prepared);
            forget.push(self.put_state(&state)?);
            let (ok, _) = self.guarded(snapshot.state_revision, forget).await?;
            if ok {
                return Ok(answer(rollout, RolloutPhase::Prepared, &request.target_root));
            }
        }
        Err(StoreError::Conflict("another writer kept changing this etcd shadow's state; try again".into()).into())
    }

    /// Refuses a staging whose switch would not fit in one transaction of this cluster.
    fn check_switch_fits(&self, staged: &Staged, staged_bytes: &[(String, &[u8])], state: &State) -> Result<(), ShadowError> {
        // Each written entry: its bytes (when they change) and its record; each delete;
        // the stage keys' removal and the state.
        let ops = staged.writes.iter().map(|w| 1 + usize::from(w.bytes)).sum::<usize>() + staged.deletes.len() + 2;
        let state_bytes = serde_json::to_vec(&State {
            staged: Some(staged.clone()),
            ..state.clone()
        })
        .map_or(0, |body| body.len());
        let bytes = staged_bytes
            .iter()
            .map(|(path, content)| content.len() + 2 * path.len())
            .sum::<usize>()
            + staged.writes.iter().map(|w| w.path.len() * 2 + 200).sum::<usize>()
            + staged.deletes.iter().map(|key| key.len() + 16).sum::<usize>()
            + state_bytes
            + REQUEST_MARGIN;
        if ops > self.limits.max_txn_ops || bytes > self.limits.max_request_bytes {
            return Err(ShadowError {
                code: "too_large".into(),
                message: format!(
                    "switching this revision in one etcd transaction takes {ops} operations and about {} KiB, past the cluster's limits ({} operations, {} KiB per request): roll out a smaller change, or raise the members' --max-txn-ops and --max-request-bytes and register the shadow with the same limits",
                    bytes / 1024,
                    self.limits.max_txn_ops,
                    self.limits.max_request_bytes / 1024
                ),
                transient: false,
                ..Default::default()
            });
        }
        Ok(())
    }

    /// Makes `rollout`'s staging live in one transaction, and answers the root read back
    /// at that transaction's revision.
    pub async fn commit(&self, rollout: i64, fence: &Fence) -> Result<RolloutAnswer, ShadowError> {
        for _ in 0..ATTEMPTS {
            let (mut state, state_revision) = self.state().await?;
            state.check_fence(&fence.control_plane_id, fence.epoch)?;
            if state.live.as_ref().is_some_and(|g| g.rollout == rollout) && state.staged.as_ref().is_none_or(|s| s.rollout != rollout) {
                if let (Some(root), Some(live)) = (&fence.target_root, &state.live)
                    && *root != live.root
                {
                    return Err(StoreError::Conflict(format!(
                        "rollout {rollout} committed here has another root: a different writer's rollout"
                    ))
                    .into());
                }
                let root = self.root_at(None).await?;
                return Ok(answer(rollout, RolloutPhase::Committed, &root));
            }
            let staged = match state.staged.clone() {
                Some(staged) if staged.rollout == rollout && fence.target_root.as_ref().is_none_or(|root| *root == staged.root) => staged,
                Some(staged) if staged.rollout == rollout => {
                    return Err(StoreError::Conflict(format!(
                        "rollout {rollout} is staged here with another root: a different writer's rollout"
                    ))
                    .into());
                }
                _ => {
                    return Err(match state.phase_of(rollout) {
                        Some(RolloutPhase::Aborted) => StoreError::Conflict(format!("rollout {rollout} was aborted here")),
                        _ => StoreError::NotFound(format!("rollout {rollout} is not staged here")),
                    }
                    .into());
                }
            };
            let stage_dir = self.stage_dir(rollout, &staged.root);
            let stage = self.get(stage_dir.clone(), Some(GetOptions::new().with_prefix())).await?;
            let staged_bytes: BTreeMap<&[u8], &[u8]> = stage.kvs().iter().map(|kv| (&kv.key()[stage_dir.len()..], kv.value())).collect();
            let content_key = self
                .content_key
                .as_deref()
                .and_then(|hex| domain::hash::ContentKey::from_hex(hex).ok());
            let mut ops = Vec::new();
            for write in &staged.writes {
                if write.bytes {
                    // Proven again: a stage key is under the prefix, where anyone may write.
                    let proven = staged_bytes.get(write.path.as_bytes()).filter(|bytes| {
                        let (Ok(path), Some(policy)) = (EntryPath::parse(&write.path), write.policy.policy()) else {
                            return false;
                        };
                        let key = if write.policy.sealed { content_key.as_ref() } else { None };
                        store::hash_entry(key, &path, &policy, bytes).to_hex() == write.policy.entry_hash
                    });
                    let Some(bytes) = proven else {
                        return Err(StoreError::Io(format!(
                            "the staged bytes of {} are gone from the stage keys or were changed there; nothing was switched",
                            write.path
                        ))
                        .into());
                    };
                    ops.push(TxnOp::put(self.key(write.path.as_bytes()), bytes.to_vec(), None));
                }
                let record = serde_json::to_vec(&write.policy).map_err(|err| corrupt("a policy record", err))?;
                ops.push(TxnOp::put(self.policy_key(write.path.as_bytes()), record, None));
            }
            for key in &staged.deletes {
                ops.push(TxnOp::delete(self.key(key), None));
            }
            ops.push(TxnOp::delete(self.meta("stage/"), Some(DeleteOptions::new().with_prefix())));
            state.accept_fence(&fence.control_plane_id, fence.epoch);
            state.live = Some(Generation {
                rollout,
                revision: staged.revision,
                root: staged.root.clone(),
            });
            state.staged = None;
            state.remember(rollout, RolloutPhase::Committed);
            ops.push(self.put_state(&state)?);
            let (ok, revision) = self.guarded(state_revision, ops).await?;
            if ok {
                let root = self.root_at(Some(revision)).await?;
                return Ok(answer(rollout, RolloutPhase::Committed, &root));
            }
        }
        Err(StoreError::Conflict("another writer kept changing this etcd shadow's state; try again".into()).into())
    }

    /// The root of what the prefix holds at etcd revision `at` (now: `None`).
    async fn root_at(&self, at: Option<i64>) -> Result<String, ShadowError> {
        let snapshot = self.snapshot_at(at).await?;
        Ok(self.observe(&snapshot, self.content_key.as_deref()).root.to_hex())
    }

    /// Drops `rollout`'s staging (or remembers the abort, so a late prepare is refused),
    /// as a directory shadow does.
    pub async fn abort(&self, rollout: i64, fence: &Fence) -> Result<RolloutAnswer, ShadowError> {
        for _ in 0..ATTEMPTS {
            let (mut state, state_revision) = self.state().await?;
            state.check_fence(&fence.control_plane_id, fence.epoch)?;
            let same = |root: &String| fence.target_root.as_ref().is_none_or(|wanted| wanted == root);
            if state.live.as_ref().is_some_and(|g| g.rollout == rollout && same(&g.root)) {
                return Err(StoreError::Conflict(format!("rollout {rollout} is already committed here")).into());
            }
            let mut ops = Vec::new();
            if let Some(staged) = state.staged.take_if(|g| g.rollout == rollout && same(&g.root)) {
                ops.push(TxnOp::delete(
                    self.stage_dir(rollout, &staged.root),
                    Some(DeleteOptions::new().with_prefix()),
                ));
                // Only a write that changes something records the writer's epoch.
                state.accept_fence(&fence.control_plane_id, fence.epoch);
            } else if let Some(root) = &fence.target_root {
                // Bytes a prepare of it left before it was recorded (it stopped half way).
                ops.push(TxnOp::delete(
                    self.stage_dir(rollout, root),
                    Some(DeleteOptions::new().with_prefix()),
                ));
            }
            // Another writer's rollout of the same number, committed or staged here, stays
            // as it is; the abort is remembered for its own root only.
            let foreign =
                state.live.as_ref().is_some_and(|g| g.rollout == rollout) || state.staged.as_ref().is_some_and(|g| g.rollout == rollout);
            if !foreign {
                state.remember(rollout, RolloutPhase::Aborted);
                if let Some(root) = &fence.target_root {
                    state.aborted_roots.insert(rollout, root.clone());
                }
            }
            ops.push(self.put_state(&state)?);
            let (ok, _) = self.guarded(state_revision, ops).await?;
            if ok {
                return Ok(answer_none(rollout, RolloutPhase::Aborted));
            }
        }
        Err(StoreError::Conflict("another writer kept changing this etcd shadow's state; try again".into()).into())
    }
}

fn answer(rollout: i64, phase: RolloutPhase, root: &str) -> RolloutAnswer {
    RolloutAnswer {
        rollout,
        phase,
        root: Some(root.to_string()),
        hook: None,
    }
}

fn answer_none(rollout: i64, phase: RolloutPhase) -> RolloutAnswer {
    RolloutAnswer {
        rollout,
        phase,
        root: None,
        hook: None,
    }
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
