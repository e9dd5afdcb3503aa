//! Shadows: registration, and the drivers that speak to them (an agent over HTTP, or a
//! local directory through the same storage code the agent runs).

use crate::{Caller, Db, Error, Result, audit, now};
use domain::{
    Role,
    protocol::{AgentErrorBody, Fence, PrepareRequest, RolloutAnswer, ShadowState},
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};
use store::{Store, StoreError};

pub use domain::api::ShadowView;

#[derive(sqlx::FromRow)]
struct ShadowRow {
    pub name: String,
    pub driver: String,
    pub url: Option<String>,
    pub tls_pin: Option<String>,
    pub path: Option<String>,
    pub etcd_prefix: Option<String>,
    pub status: String,
    pub observed_root: Option<String>,
    pub observed_revision: Option<i64>,
    pub last_contact_at: Option<String>,
    pub last_in_sync_at: Option<String>,
    pub last_error: Option<String>,
    pub created_at: String,
    pub last_drill_id: Option<i64>,
    pub last_drill_verdict: Option<String>,
    pub last_drill_at: Option<String>,
    pub last_drill_age: Option<i64>,
}

impl From<ShadowRow> for ShadowView {
    fn from(row: ShadowRow) -> Self {
        ShadowView {
            name: row.name,
            driver: row.driver,
            url: row.url,
            tls_pin: row.tls_pin,
            path: row.path,
            prefix: row.etcd_prefix,
            status: row.status,
            observed_root: row.observed_root,
            observed_revision: row.observed_revision,
            last_contact_at: row.last_contact_at,
            last_in_sync_at: row.last_in_sync_at,
            last_error: row.last_error,
            created_at: row.created_at,
            last_drill: match (row.last_drill_id, row.last_drill_verdict, row.last_drill_at) {
                (Some(id), Some(verdict), Some(finished_at)) => Some(domain::api::DrillSummary {
                    id,
                    verdict,
                    finished_at,
                    age_seconds: row.last_drill_age.unwrap_or(0),
                }),
                _ => None,
            },
        }
    }
}

/// How to reach a new shadow.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "driver", rename_all = "snake_case", deny_unknown_fields)]
pub enum NewShadow {
    Agent {
        name: String,
        url: String,
        /// The agent's bearer token; when absent the control plane generates one and
        /// answers it once, for the agent's `--token-file`.
        #[serde(default)]
        token: Option<String>,
        /// Required for an `https://` URL: the agent's certificate fingerprint (it logs it).
        #[serde(default)]
        tls_pin: Option<String>,
    },
    Directory {
        name: String,
        path: String,
    },
    /// A key prefix in an etcd cluster (see [`crate::etcd`]).
    Etcd {
        name: String,
        /// The members' client URLs (`http://host:2379`).
        endpoints: Vec<String>,
        /// Entries are the keys `<prefix><path>`; it ends with `/`.
        prefix: String,
        #[serde(default)]
        user: Option<String>,
        /// The user's password; stored sealed, never answered.
        #[serde(default)]
        password: Option<String>,
        /// The CA certificate (PEM) for `https://` endpoints.
        #[serde(default)]
        ca: Option<String>,
        /// The members' `--max-txn-ops` when not etcd's default (128).
        #[serde(default)]
        max_txn_ops: Option<u32>,
        /// The members' `--max-request-bytes` when not etcd's default (1.5 MiB).
        #[serde(default)]
        max_request_bytes: Option<u32>,
    },
}

/// What an etcd shadow's registration adds to the row.
#[derive(Default)]
struct EtcdColumns {
    prefix: Option<String>,
    user: Option<String>,
    ca: Option<String>,
    max_txn_ops: Option<i64>,
    max_request_bytes: Option<i64>,
}

/// Checks an etcd shadow's registration; its row's `url` (the endpoints), `token` (the
/// password) and etcd columns.
fn etcd_registration(
    endpoints: &[String],
    prefix: &str,
    user: Option<&str>,
    password: Option<&str>,
    ca: Option<&str>,
    max_txn_ops: Option<u32>,
    max_request_bytes: Option<u32>,
) -> Result<(String, Option<String>, EtcdColumns)> {
    let endpoints: Vec<String> = endpoints.iter().map(|e| e.trim().trim_end_matches('/').to_string()).collect();
    let with_slash: Vec<String> = endpoints.iter().map(|e| format!("{e}/")).collect();
    crate::etcd::validate_endpoints(&with_slash).map_err(Error::BadRequest)?;
    crate::etcd::validate_prefix(prefix).map_err(Error::BadRequest)?;
    if endpoints.iter().any(|e| e.contains(',')) {
        return Err(Error::BadRequest("an etcd endpoint has no comma in it".into()));
    }
    let user = user.map(str::trim).filter(|u| !u.is_empty());
    let password = password.filter(|p| !p.is_empty());
    if password.is_some() && !endpoints.iter().all(|e| e.starts_with("https://")) {
        return Err(Error::BadRequest(
            "an etcd password travels only to https:// endpoints (with the cluster's CA)".into(),
        ));
    }
    match (user, password) {
        (Some(user), _) if user.len() > 128 || user.chars().any(char::is_control) => {
            return Err(Error::BadRequest("an etcd user name has at most 128 printable characters".into()));
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(Error::BadRequest("an etcd user and its password go together".into()));
        }
        _ => {}
    }
    let ca = ca.map(str::trim).filter(|c| !c.is_empty());
    if let Some(ca) = ca
        && (ca.len() > 64 * 1024 || !ca.starts_with("-----BEGIN CERTIFICATE-----"))
    {
        return Err(Error::BadRequest(
            "the etcd CA is one PEM certificate (-----BEGIN CERTIFICATE-----), at most 64 KiB".into(),
        ));
    }
    if ca.is_some() != endpoints.iter().all(|e| e.starts_with("https://")) {
        return Err(Error::BadRequest(
            "a CA goes with https:// endpoints, and https:// endpoints need the CA".into(),
        ));
    }
    if max_txn_ops.is_some_and(|ops| !(16..=1_000_000).contains(&ops)) {
        return Err(Error::BadRequest("max_txn_ops is 16 to 1000000".into()));
    }
    if max_request_bytes.is_some_and(|bytes| bytes < 256 * 1024) {
        return Err(Error::BadRequest("max_request_bytes is at least 262144".into()));
    }
    Ok((
        endpoints.join(","),
        password.map(str::to_string),
        EtcdColumns {
            prefix: Some(prefix.to_string()),
            user: user.map(str::to_string),
            ca: ca.map(str::to_string),
            max_txn_ops: max_txn_ops.map(i64::from),
            max_request_bytes: max_request_bytes.map(i64::from),
        },
    ))
}

/// A shadow's row with its latest drill (and that drill's age in seconds).
fn shadow_select(db: &Db) -> String {
    format!(
        "SELECT shadows.name, shadows.driver, shadows.url, shadows.tls_pin, shadows.path, shadows.etcd_prefix, shadows.status, shadows.observed_root,
    shadows.observed_revision, shadows.last_contact_at, shadows.last_in_sync_at, shadows.last_error, shadows.created_at,
    d.id AS last_drill_id, d.verdict AS last_drill_verdict, d.finished_at AS last_drill_at,
    CAST({} AS BIGINT) AS last_drill_age
    FROM shadows LEFT JOIN drills d ON d.id = (SELECT MAX(id) FROM drills WHERE drills.shadow = shadows.name AND drills.started_at >= shadows.created_at)",
        crate::dialect::seconds_since(db, "d.finished_at")
    )
}

fn validate_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::BadRequest("shadow names are 1-64 letters, digits, '-', '_' or '.'".into()))
    }
}

/// An admin registers a shadow. Every rollout sends a shadow every entry, secrets in clear,
/// so this needs a person signed in with a recent password: a leaked admin token must not
/// be able to point a new shadow at itself and reconcile it.
pub async fn add(db: &Db, actor: &Caller, shadow: NewShadow) -> Result<(ShadowView, Option<String>)> {
    actor.require(Role::Admin)?;
    actor.require_person("registering a shadow")?;
    actor.require_recent_password()?;
    add_as(db, &actor.username, shadow).await
}

/// Prefix of generated agent tokens, so secret scanners recognise them.
pub const AGENT_TOKEN_PREFIX: &str = "est_";

/// Registers a shadow; `actor` names who did it in the audit log (the CLI passes `cli`).
/// Answers the agent token too when the control plane generated it (the only time it is
/// ever shown: it is stored sealed and never returned again).
pub async fn add_as(db: &Db, actor: &str, shadow: NewShadow) -> Result<(ShadowView, Option<String>)> {
    let mut generated = None;
    let mut etcd = EtcdColumns::default();
    let (name, driver, url, token, tls_pin, path) = match &shadow {
        NewShadow::Agent { name, url, token, tls_pin } => {
            let https = url.starts_with("https://");
            if !(url.starts_with("http://") || https) {
                return Err(Error::BadRequest("an agent URL starts with http:// or https://".into()));
            }
            // The URL is shown to every viewer and kept in the audit log: it carries no
            // credentials (the bearer token, sealed, authenticates us), and nothing but a
            // host, a port and a path prefix.
            let parsed = reqwest::Url::parse(url).map_err(|_| Error::BadRequest("the agent URL is not a URL".into()))?;
            if !parsed.username().is_empty() || parsed.password().is_some() {
                return Err(Error::BadRequest(
                    "put no credentials in an agent URL; give the agent's token as the token".into(),
                ));
            }
            if parsed.host_str().is_none() || parsed.query().is_some() || parsed.fragment().is_some() {
                return Err(Error::BadRequest(
                    "an agent URL is scheme://host[:port][/path], without a query or a fragment".into(),
                ));
            }
            let token = match token.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
                Some(given) => given.to_string(),
                None => {
                    let fresh = format!("{AGENT_TOKEN_PREFIX}{}", hex::encode(rand::random::<[u8; 32]>()));
                    generated = Some(fresh.clone());
                    fresh
                }
            };
            if token.len() < 16 {
                return Err(Error::BadRequest("an agent token has at least 16 characters".into()));
            }
            let tls_pin = match (https, tls_pin.as_deref().filter(|p| !p.trim().is_empty())) {
                (true, Some(pin)) => Some(crate::tls::parse_pin(pin)?),
                (true, None) => {
                    return Err(Error::BadRequest(
                        "an https agent needs tls_pin, the SHA-256 fingerprint of its certificate (the agent logs it at start)".into(),
                    ));
                }
                (false, Some(_)) => return Err(Error::BadRequest("tls_pin needs an https:// agent URL".into())),
                (false, None) => None,
            };
            (
                name,
                "agent",
                Some(url.trim_end_matches('/').to_string()),
                Some(token),
                tls_pin,
                None,
            )
        }
        NewShadow::Directory { name, path } => {
            if !Path::new(path).is_absolute() {
                return Err(Error::BadRequest("a directory shadow needs an absolute path".into()));
            }
            (name, "directory", None, None, None, Some(path.clone()))
        }
        NewShadow::Etcd {
            name,
            endpoints,
            prefix,
            user,
            password,
            ca,
            max_txn_ops,
            max_request_bytes,
        } => {
            let (url, password, columns) = etcd_registration(
                endpoints,
                prefix,
                user.as_deref(),
                password.as_deref(),
                ca.as_deref(),
                *max_txn_ops,
                *max_request_bytes,
            )?;
            etcd = columns;
            (name, "etcd", Some(url), password, None, None)
        }
    };
    validate_name(name)?;
    let mut tx = db.begin().await?;
    let exists: Option<(i64,)> = sqlx::query_as("SELECT id FROM shadows WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
    if exists.is_some() {
        return Err(Error::conflict("shadow_exists", format!("a shadow named {name} exists")));
    }
    // Two etcd shadows whose prefixes nest would each see the other's keys as drift and
    // delete them at a reconcile: refused, whichever cluster they are in.
    if let Some(prefix) = &etcd.prefix {
        let others: Vec<(String, String)> =
            sqlx::query_as("SELECT name, etcd_prefix FROM shadows WHERE driver = 'etcd' AND etcd_prefix IS NOT NULL")
                .fetch_all(&mut *tx)
                .await?;
        if let Some((other, _)) = others
            .iter()
            .find(|(_, p)| p.starts_with(prefix.as_str()) || prefix.starts_with(p.as_str()))
        {
            return Err(Error::conflict(
                "prefix_overlaps",
                format!("the prefix {prefix} overlaps etcd shadow {other}'s; each shadow needs a prefix of its own"),
            ));
        }
    }
    sqlx::query(
        "INSERT INTO shadows (name, driver, url, token, tls_pin, path, created_at, etcd_prefix, etcd_user, etcd_ca, etcd_max_txn_ops, etcd_max_request_bytes)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(name)
    .bind(driver)
    .bind(&url)
    // The bearer token (an etcd user's password) is sealed at rest (see `secrets`).
    .bind(token.as_deref().map(|t| db.keys.seal_text(&format!("shadow-token:{name}"), t)))
    .bind(&tls_pin)
    .bind(&path)
    .bind(now())
    .bind(&etcd.prefix)
    .bind(&etcd.user)
    .bind(&etcd.ca)
    .bind(etcd.max_txn_ops)
    .bind(etcd.max_request_bytes)
    .execute(&mut *tx)
    .await?;
    let mut details = json!({"driver": driver, "url": url, "tls_pin": tls_pin, "path": path});
    if driver == "etcd" {
        details["prefix"] = json!(etcd.prefix);
        details["user"] = json!(etcd.user);
        details["ca"] = json!(etcd.ca.is_some());
    }
    audit::append(&mut tx, actor, "shadow.add", &format!("shadow/{name}"), details).await?;
    tx.commit().await?;
    Ok((get(db, name).await?, generated))
}

pub async fn remove_by(db: &Db, caller: &Caller, name: &str) -> Result<()> {
    caller.require(Role::Admin)?;
    remove(db, &caller.username, name).await
}

pub async fn remove(db: &Db, actor: &str, name: &str) -> Result<()> {
    let mut tx = db.begin().await?;
    let removed = sqlx::query("DELETE FROM shadows WHERE name = $1")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    if removed.rows_affected() == 0 {
        return Err(Error::NotFound(format!("no shadow {name}")));
    }
    crate::incidents::close_for_removed_shadow(&mut tx, name, actor).await?;
    // Its check history goes with it.
    sqlx::query("DELETE FROM shadow_checks WHERE shadow = $1")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    audit::append(&mut tx, actor, "shadow.remove", &format!("shadow/{name}"), json!({})).await?;
    tx.commit().await?;
    Ok(())
}

pub async fn list(db: &Db) -> Result<Vec<ShadowView>> {
    let rows: Vec<ShadowRow> = sqlx::query_as(&format!("{} ORDER BY name", shadow_select(db)))
        .fetch_all(&db.read)
        .await?;
    Ok(rows.into_iter().map(ShadowView::from).collect())
}

pub async fn get(db: &Db, name: &str) -> Result<ShadowView> {
    let row: ShadowRow = sqlx::query_as(&format!("{} WHERE name = $1", shadow_select(db)))
        .bind(name)
        .fetch_optional(&db.read)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no shadow {name}")))?;
    Ok(row.into())
}

/// A failure talking to a shadow, in words fit for the rollout record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShadowError {
    pub code: String,
    pub message: String,
    /// The shadow could not be reached (retry), as opposed to a refusal (final).
    pub transient: bool,
    /// For `validate_failed`: the node's validate hook's run, its output as the node
    /// sent it (mask it with [`crate::hooks::mask`] before anyone sees it).
    pub hook: Option<Box<domain::protocol::HookRun>>,
    /// For `incomplete`: the entries the shadow does not hold as their hashes say, to be
    /// sent again with their content.
    pub missing: Vec<String>,
}

/// The largest answer read from an agent: a state listing every entry, or one entry's
/// bytes. Past it the answer is refused (`too_large`), not read on into memory.
pub const MAX_AGENT_ANSWER: usize = 32 * 1024 * 1024;

/// The longest a call that runs a node's hooks may take on the wire; its caller (the
/// prepare deadline, the drill's timeout) bounds it further.
const HOOK_CALL_TIMEOUT: Duration = Duration::from_secs(600);

/// The longest a question about a prepare's progress may take.
const PROGRESS_CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The largest error answer read from an agent.
/// A validate refusal carries up to 64 KiB of output, which JSON escaping can make six
/// times longer.
const MAX_AGENT_ERROR: usize = 512 * 1024;

/// The longest message of a shadow's passed on to people, logs and webhooks.
const MAX_SHADOW_MESSAGE: usize = 400;

/// The HTTP client every call to an agent is built from: it follows no redirect (an agent
/// that answers elsewhere is refused, so a compromised or intercepted one cannot make the
/// control plane fetch another address, nor take the bearer token there).
pub fn agent_client() -> reqwest::ClientBuilder {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none())
}

/// Reads an agent's answer, at most `limit` bytes of it.
async fn read_bounded(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, ShadowError> {
    let too_large = || ShadowError {
        code: "too_large".into(),
        message: format!("the agent's answer is larger than {} MiB", limit / (1024 * 1024)),
        transient: false,
        hook: None,
        ..Default::default()
    };
    if response.content_length().is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|err| ShadowError {
        code: "unreachable".into(),
        message: format!("the agent's answer broke off: {}", without_url(&err)),
        transient: true,
        hook: None,
        ..Default::default()
    })? {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The refusal an agent answered with, as it may be passed on: its code if it is one
/// (lowercase words), and its message without quoted fragments (see
/// [`domain::format::unquoted`]) and cut short. An agent's message may echo what it was
/// sent (a protocol error quoting an entry's content) or be anything a compromised agent
/// likes; people, the audit log and webhooks see only this.
async fn refusal(response: reqwest::Response, transient: bool) -> ShadowError {
    let status = response.status();
    let body = read_bounded(response, MAX_AGENT_ERROR)
        .await
        .ok()
        .and_then(|body| serde_json::from_slice::<AgentErrorBody>(&body).ok());
    match body {
        Some(body) => ShadowError {
            code: if !body.error.code.is_empty()
                && body.error.code.len() <= 40
                && body.error.code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            {
                body.error.code
            } else {
                "protocol".into()
            },
            message: shadow_message(&body.error.message),
            transient,
            hook: body.error.hook.map(Box::new),
            // Only paths the protocol allows: they are looked up in the plan, never shown.
            missing: body
                .error
                .missing
                .into_iter()
                .filter(|p| domain::EntryPath::parse(p).is_ok())
                .collect(),
        },
        None => ShadowError {
            code: "protocol".into(),
            message: format!("agent answered {status}"),
            transient,
            hook: None,
            ..Default::default()
        },
    }
}

/// A shadow's own words, as they may be shown: no quoted fragment, no control characters,
/// at most [`MAX_SHADOW_MESSAGE`] characters.
pub fn shadow_message(message: &str) -> String {
    let clean: String = domain::format::unquoted(message)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match clean.char_indices().nth(MAX_SHADOW_MESSAGE) {
        Some((cut, _)) => format!("{}…", &clean[..cut]),
        None => clean,
    }
}

impl std::fmt::Display for ShadowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl From<StoreError> for ShadowError {
    fn from(err: StoreError) -> Self {
        ShadowError {
            code: err.code().to_string(),
            message: err.to_string(),
            transient: false,
            hook: match &err {
                StoreError::ValidateFailed(run) => Some(run.clone()),
                _ => None,
            },
            missing: match err {
                StoreError::Incomplete(paths) => paths,
                _ => Vec::new(),
            },
        }
    }
}

/// One connection to one shadow.
static AGENT_BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[derive(Clone)]
pub enum Driver {
    Agent {
        http: reqwest::Client,
        url: String,
        token: String,
    },
    /// A directory store, and its prepare's progress (readable while it is busy).
    Directory(Arc<Mutex<Store>>, Arc<store::Progress>),
    /// A key prefix in an etcd cluster.
    Etcd(Box<crate::etcd::EtcdShadow>),
    /// A shadow that could not even be connected to (an etcd cluster that refused the
    /// sign-in or is down): every call answers why, so a check of it is a failed check.
    Unreachable(ShadowError),
}

impl Driver {
    async fn blocking<T: Send + 'static>(
        store: &Arc<Mutex<Store>>,
        op: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ShadowError> {
        let store = store.clone();
        tokio::task::spawn_blocking(move || op(&mut store.lock().unwrap_or_else(|p| p.into_inner())))
            .await
            .map_err(|err| ShadowError {
                code: "io".into(),
                message: err.to_string(),
                transient: true,
                hook: None,
                ..Default::default()
            })?
            .map_err(ShadowError::from)
    }

    /// Bytes of successful agent answers received by this process (bodies, before any
    /// decoding), for `GET /metrics` and the benchmark.
    pub fn agent_bytes_received() -> u64 {
        AGENT_BYTES.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, ShadowError> {
        self.call_within(method, path, body, None).await
    }

    /// [`Self::call`] with its own timeout instead of the client's: calls that run a
    /// node's hooks (a prepare runs `validate`, a drill `validate` and the probes) take as
    /// long as the node's operator allowed them; the caller bounds them.
    async fn call_within<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
        timeout: Option<Duration>,
    ) -> Result<T, ShadowError> {
        let Driver::Agent { http, url, token } = self else {
            unreachable!("HTTP calls are for agents")
        };
        let mut request = http.request(method, format!("{url}{path}")).bearer_auth(token);
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|err| ShadowError {
            message: format!("cannot reach the agent: {}", without_url(&err)),
            code: if tls_failure(&err).is_some() { "tls" } else { "unreachable" }.into(),
            transient: true,
            hook: None,
            ..Default::default()
        })?;
        let status = response.status();
        if status.is_success() {
            let body = read_bounded(response, MAX_AGENT_ANSWER).await?;
            AGENT_BYTES.fetch_add(body.len() as u64, std::sync::atomic::Ordering::Relaxed);
            return serde_json::from_slice(&body).map_err(|err| ShadowError {
                code: "protocol".into(),
                message: format!(
                    "the agent's answer is not what the protocol says (line {}, column {})",
                    err.line(),
                    err.column()
                ),
                transient: true,
                hook: None,
                ..Default::default()
            });
        }
        let transient = status.is_server_error() && status != reqwest::StatusCode::INTERNAL_SERVER_ERROR;
        Err(refusal(response, transient).await)
    }

    pub async fn state(&self, entries: bool) -> Result<ShadowState, ShadowError> {
        match self {
            Driver::Unreachable(err) => Err(err.clone()),
            Driver::Directory(store, _) => Self::blocking(store, move |s| s.state(entries)).await,
            Driver::Etcd(etcd) => etcd.shadow_state(entries).await,
            Driver::Agent { .. } => self.call(reqwest::Method::GET, &format!("/v1/state?entries={entries}"), None).await,
        }
    }

    /// The live bytes of one entry.
    pub async fn read_entry(&self, path: &str) -> Result<Vec<u8>, ShadowError> {
        match self {
            Driver::Unreachable(err) => Err(err.clone()),
            Driver::Directory(store, _) => {
                let path = path.to_string();
                let bytes = Self::blocking(store, move |s| s.read_entry(&path)).await?;
                if bytes.len() > MAX_AGENT_ANSWER {
                    return Err(ShadowError {
                        code: "too_large".into(),
                        message: format!("the file is larger than {} MiB", MAX_AGENT_ANSWER / (1024 * 1024)),
                        transient: false,
                        hook: None,
                        ..Default::default()
                    });
                }
                Ok(bytes)
            }
            Driver::Etcd(etcd) => etcd.read_entry(path).await,
            Driver::Agent { http, url, token } => {
                let response = http
                    .get(format!("{url}/v1/entries/{path}"))
                    .bearer_auth(token)
                    .send()
                    .await
                    .map_err(|err| ShadowError {
                        message: format!("cannot reach the agent: {}", without_url(&err)),
                        code: "unreachable".into(),
                        transient: true,
                        hook: None,
                        ..Default::default()
                    })?;
                if !response.status().is_success() {
                    return Err(refusal(response, false).await);
                }
                read_bounded(response, MAX_AGENT_ANSWER).await
            }
        }
    }

    pub async fn prepare(&self, rollout: i64, request: PrepareRequest) -> Result<RolloutAnswer, ShadowError> {
        match self {
            Driver::Unreachable(err) => Err(err.clone()),
            Driver::Directory(store, progress) => {
                // A tree being staged ahead stops for it.
                let _foreground = progress.foreground();
                let queued = std::time::Instant::now();
                Self::blocking(store, move |s| {
                    // What is left of the writer's deadline, less the wait for the store.
                    let mut request = request;
                    request.deadline_ms = request
                        .deadline_ms
                        .map(|ms| ms.saturating_sub(u64::try_from(queued.elapsed().as_millis()).unwrap_or(u64::MAX)));
                    s.prepare(rollout, &request)
                })
                .await
            }
            Driver::Etcd(etcd) => etcd.prepare(rollout, &request).await,
            Driver::Agent { .. } => {
                let body = prepare_body(&request)?;
                // The coordinator's prepare deadline bounds it.
                self.call_within(
                    reqwest::Method::PUT,
                    &format!("/v1/rollouts/{rollout}"),
                    Some(body),
                    Some(HOOK_CALL_TIMEOUT),
                )
                .await
            }
        }
    }

    /// Stages `request`'s tree ahead of its rollout (see [`Store::prestage`]).
    pub async fn prestage(&self, request: PrepareRequest) -> Result<domain::protocol::PrestageAnswer, ShadowError> {
        match self {
            Driver::Unreachable(_) => Err(ShadowError {
                code: "unsupported".into(),
                message: "the shadow cannot be reached to stage ahead".into(),
                ..Default::default()
            }),
            Driver::Directory(store, _) => Self::blocking(store, move |s| s.prestage(&request)).await,
            // Its prepare stages only what changed, in a few transactions.
            Driver::Etcd(_) => Err(ShadowError {
                code: "unsupported".into(),
                message: "an etcd shadow stages nothing ahead".into(),
                ..Default::default()
            }),
            Driver::Agent { .. } => {
                let body = prepare_body(&request)?;
                self.call_within(reqwest::Method::PUT, "/v1/stage", Some(body), Some(HOOK_CALL_TIMEOUT))
                    .await
            }
        }
    }

    /// Drops the tree staged ahead on this shadow, if any.
    pub async fn drop_prestaged(&self) -> Result<(), ShadowError> {
        match self {
            Driver::Unreachable(_) => Ok(()),
            Driver::Directory(store, _) => Self::blocking(store, |s| s.drop_prestaged()).await,
            Driver::Etcd(_) => Ok(()),
            Driver::Agent { .. } => self
                .call::<serde_json::Value>(reqwest::Method::DELETE, "/v1/stage", None)
                .await
                .map(|_| ()),
        }
    }

    /// How many steps `rollout`'s prepare has made on this shadow so far (see
    /// [`store::Progress`]); asked while the prepare runs.
    pub async fn progress(&self, rollout: i64) -> Result<u64, ShadowError> {
        match self {
            Driver::Unreachable(_) => Ok(0),
            Driver::Directory(_, progress) => Ok(progress.of(rollout)),
            Driver::Etcd(_) => Ok(0),
            Driver::Agent { .. } => {
                let answer: domain::protocol::PrepareProgress = self
                    .call_within(
                        reqwest::Method::GET,
                        &format!("/v1/rollouts/{rollout}/progress"),
                        None,
                        Some(PROGRESS_CALL_TIMEOUT),
                    )
                    .await?;
                Ok(answer.steps)
            }
        }
    }

    pub async fn commit(&self, rollout: i64, fence: Fence) -> Result<RolloutAnswer, ShadowError> {
        match self {
            Driver::Unreachable(err) => Err(err.clone()),
            Driver::Directory(store, progress) => {
                // A tree being staged ahead stops for it.
                let _foreground = progress.foreground();
                Self::blocking(store, move |s| s.commit(rollout, &fence)).await
            }
            Driver::Etcd(etcd) => etcd.commit(rollout, &fence).await,
            Driver::Agent { .. } => {
                self.call(reqwest::Method::POST, &format!("/v1/rollouts/{rollout}/commit"), Some(json!(fence)))
                    .await
            }
        }
    }

    /// The node's part of a drill: its live root, validate on its live tree, its health
    /// probe `requests` times.
    pub async fn drill(&self, requests: u32) -> Result<domain::protocol::DrillAnswer, ShadowError> {
        match self {
            Driver::Unreachable(err) => Err(err.clone()),
            Driver::Directory(store, _) => {
                let (mut answer, hooks, live) = Self::blocking(store, |s| Ok((s.drill()?, s.hooks(), s.live_dir().to_path_buf()))).await?;
                // Probed without the store's lock: checks and rollouts go on meanwhile.
                if let Some(hooks) = hooks {
                    answer.health = tokio::task::spawn_blocking(move || hooks.health(&live, requests, Duration::from_secs(120)))
                        .await
                        .map_err(|err| ShadowError {
                            code: "io".into(),
                            message: err.to_string(),
                            transient: true,
                            hook: None,
                            ..Default::default()
                        })?;
                }
                Ok(answer)
            }
            Driver::Etcd(etcd) => etcd.drill().await,
            Driver::Agent { .. } => {
                self.call_within(
                    reqwest::Method::POST,
                    "/v1/drills",
                    Some(json!({ "requests": requests })),
                    Some(HOOK_CALL_TIMEOUT),
                )
                .await
            }
        }
    }

    /// A dry run of prepare's validate hook on `request`'s tree (nothing staged).
    pub async fn validate_dry_run(&self, request: PrepareRequest) -> Result<Option<domain::protocol::HookRun>, ShadowError> {
        match self {
            Driver::Unreachable(err) => Err(err.clone()),
            Driver::Directory(store, _) => Self::blocking(store, move |s| s.validate_dry_run(&request)).await,
            // It runs no hooks.
            Driver::Etcd(_) => Ok(None),
            Driver::Agent { .. } => {
                let body = prepare_body(&request)?;
                let answer: domain::protocol::DryRunAnswer = self
                    .call_within(reqwest::Method::POST, "/v1/validate", Some(body), Some(HOOK_CALL_TIMEOUT))
                    .await?;
                Ok(answer.hook)
            }
        }
    }

    pub async fn abort(&self, rollout: i64, fence: Fence) -> Result<RolloutAnswer, ShadowError> {
        match self {
            Driver::Unreachable(err) => Err(err.clone()),
            Driver::Directory(store, progress) => {
                // A tree being staged ahead stops for it.
                let _foreground = progress.foreground();
                Self::blocking(store, move |s| s.abort(rollout, &fence)).await
            }
            Driver::Etcd(etcd) => etcd.abort(rollout, &fence).await,
            Driver::Agent { .. } => {
                self.call(reqwest::Method::POST, &format!("/v1/rollouts/{rollout}/abort"), Some(json!(fence)))
                    .await
            }
        }
    }
}

/// A prepare (or its dry run) as the body of a call to an agent.
fn prepare_body(request: &PrepareRequest) -> Result<serde_json::Value, ShadowError> {
    serde_json::to_value(request).map_err(|err| ShadowError {
        code: "protocol".into(),
        message: err.to_string(),
        transient: false,
        hook: None,
        ..Default::default()
    })
}

/// What went wrong reaching an agent, without the URL reqwest would print.
fn without_url(err: &reqwest::Error) -> String {
    if let Some(tls) = tls_failure(err) {
        format!("TLS handshake failed: {tls}")
    } else if err.is_timeout() {
        "timed out".into()
    } else if err.is_connect() {
        "connection failed".into()
    } else {
        "request failed".into()
    }
}

/// The TLS error under a failed request, if that is what failed (a certificate that does
/// not match the pin, say). `io::Error` hides the error it wraps from `source()`, and the
/// TLS error sits inside two of them.
fn tls_failure(err: &reqwest::Error) -> Option<&rustls::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(error) = current {
        let mut inner = error;
        loop {
            if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                return Some(tls);
            }
            match inner.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
                Some(wrapped) => inner = wrapped,
                None => break,
            }
        }
        current = error.source();
    }
    None
}

/// An open directory store and its prepare's progress.
type OpenDirectory = (Arc<Mutex<Store>>, Arc<store::Progress>);

/// An etcd shadow's own columns.
#[derive(sqlx::FromRow)]
struct EtcdRow {
    etcd_prefix: Option<String>,
    etcd_user: Option<String>,
    etcd_ca: Option<String>,
    etcd_max_txn_ops: Option<i64>,
    etcd_max_request_bytes: Option<i64>,
}

/// The shadow name a registry key (`name NUL id NUL created_at`) is of.
fn registered_as(key: &str) -> &str {
    key.split('\u{0}').next().unwrap_or(key)
}

/// Opens drivers for registered shadows. Directory stores are kept open, one per
/// shadow, because a store holds its state in memory between calls.
pub struct Registry {
    request_timeout: Duration,
    /// Where directory shadows' hooks files are (`<dir>/<shadow>.toml`), from the
    /// control plane's configuration (`--directory-hooks`); never from the API.
    directory_hooks: Option<PathBuf>,
    http: reqwest::Client,
    /// One client per pinned certificate (each trusts only its pin).
    pinned: Mutex<HashMap<String, reqwest::Client>>,
    directories: Mutex<HashMap<String, OpenDirectory>>,
    /// One connection per etcd shadow, kept between calls.
    etcd: Mutex<HashMap<String, crate::etcd::EtcdShadow>>,
}

impl Registry {
    pub fn new(request_timeout: Duration) -> Registry {
        // Plain HTTP only: an https URL without a pin is refused at registration.
        let http = agent_client().timeout(request_timeout).build().expect("HTTP client");
        Registry {
            request_timeout,
            directory_hooks: None,
            http,
            pinned: Mutex::new(HashMap::new()),
            directories: Mutex::new(HashMap::new()),
            etcd: Mutex::new(HashMap::new()),
        }
    }

    /// Directory shadows read their hooks from `<dir>/<shadow>.toml` (when it exists).
    pub fn with_directory_hooks(mut self, dir: Option<PathBuf>) -> Registry {
        self.directory_hooks = dir;
        self
    }

    fn client_for(&self, tls_pin: Option<&str>) -> Result<reqwest::Client> {
        let Some(pin) = tls_pin else {
            return Ok(self.http.clone());
        };
        let mut pinned = self.pinned.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = pinned.get(pin) {
            return Ok(client.clone());
        }
        let client = crate::tls::pinned_client(pin, Some(self.request_timeout))?;
        pinned.insert(pin.to_string(), client.clone());
        Ok(client)
    }

    /// Opens an agent's event stream (`GET /v1/events`), which never ends by itself: its
    /// client has a connect timeout but no overall one.
    pub async fn events(&self, db: &Db, name: &str) -> Result<reqwest::Response> {
        let row: (String, Option<String>, Option<String>, Option<String>) =
            sqlx::query_as("SELECT driver, url, token, tls_pin FROM shadows WHERE name = $1")
                .bind(name)
                .fetch_optional(&db.read)
                .await?
                .ok_or_else(|| Error::NotFound(format!("no shadow {name}")))?;
        let (driver, Some(url), Some(token), tls_pin) = row else {
            return Err(Error::BadRequest(format!("shadow {name} is not an agent")));
        };
        if driver != "agent" {
            return Err(Error::BadRequest(format!("shadow {name} is not an agent")));
        }
        let token = db.keys.open_text(&format!("shadow-token:{name}"), &token)?;
        let client = match tls_pin.as_deref() {
            Some(pin) => crate::tls::pinned_client(pin, None)?,
            None => agent_client()
                .connect_timeout(self.request_timeout)
                .build()
                .map_err(|err| Error::Internal(err.to_string()))?,
        };
        let response = client
            .get(format!("{url}/v1/events"))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|err| Error::Internal(format!("agent {name}: {}", without_url(&err))))?;
        if !response.status().is_success() {
            return Err(Error::Internal(format!("agent {name} answered {}", response.status())));
        }
        Ok(response)
    }

    /// The driver of a registered shadow, by name.
    pub async fn driver(&self, db: &Db, name: &str) -> Result<Driver> {
        type Row = (String, Option<String>, Option<String>, Option<String>, Option<String>, i64, String);
        let (driver, url, token, tls_pin, path, id, created_at): Row =
            sqlx::query_as("SELECT driver, url, token, tls_pin, path, id, created_at FROM shadows WHERE name = $1")
                .bind(name)
                .fetch_optional(&db.read)
                .await?
                .ok_or_else(|| Error::NotFound(format!("no shadow {name}")))?;
        // Open stores and connections are kept by registration, not by name alone: a
        // shadow removed and registered again under its name (elsewhere, perhaps through
        // another replica of the control plane) is opened anew.
        let key = format!("{name}\u{0}{id}\u{0}{created_at}");
        match (driver, url, token, tls_pin, path) {
            (driver, Some(url), Some(token), tls_pin, _) if driver == "agent" => Ok(Driver::Agent {
                http: self.client_for(tls_pin.as_deref())?,
                url,
                token: db.keys.open_text(&format!("shadow-token:{name}"), &token)?,
            }),
            (driver, _, _, _, Some(path)) if driver == "directory" => {
                if let Some((store, progress)) = self.directories.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
                    return Ok(Driver::Directory(store.clone(), progress.clone()));
                }
                // Everything the shadow is lives at its path, its fence state included: a
                // backup volume holds real bytes and fences a second control plane.
                let live = PathBuf::from(path);
                let state_dir = live.join(store::DIRECTORY_STATE);
                let hooks_file = self
                    .directory_hooks
                    .as_deref()
                    .map(|dir| store::hooks::directory_hooks_file(dir, name))
                    .filter(|file| file.exists());
                let store = tokio::task::spawn_blocking(move || {
                    let mut store = Store::open(&live, &state_dir, None)?;
                    if let Some(file) = hooks_file {
                        let hooks = store::hooks::Hooks::load(&file).map_err(StoreError::Io)?;
                        store.set_hooks(Some(Arc::new(hooks)));
                    }
                    Ok::<_, StoreError>(store)
                })
                .await
                .map_err(|err| Error::Internal(err.to_string()))?
                .map_err(|err| Error::Internal(format!("cannot open directory shadow {name}: {err}")))?;
                // Two callers may race to open it: the first one in wins, so there is one store.
                let mut open = self.directories.lock().unwrap_or_else(|p| p.into_inner());
                // Other registrations of the name go; this one, if another caller opened
                // it meanwhile, stays (one store per directory).
                open.retain(|other, _| *other == key || registered_as(other) != name);
                let (store, progress) = open
                    .entry(key)
                    .or_insert_with(|| {
                        let progress = store.progress();
                        (Arc::new(Mutex::new(store)), progress)
                    })
                    .clone();
                Ok(Driver::Directory(store, progress))
            }
            (driver, Some(endpoints), password, _, _) if driver == "etcd" => {
                if let Some(etcd) = self.etcd.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
                    return Ok(Driver::Etcd(Box::new(etcd.clone())));
                }
                let row: EtcdRow = sqlx::query_as(
                    "SELECT etcd_prefix, etcd_user, etcd_ca, etcd_max_txn_ops, etcd_max_request_bytes FROM shadows WHERE name = $1",
                )
                .bind(name)
                .fetch_one(&db.read)
                .await?;
                let EtcdRow {
                    etcd_prefix: Some(prefix),
                    etcd_user: user,
                    etcd_ca: ca,
                    etcd_max_txn_ops: max_txn_ops,
                    etcd_max_request_bytes: max_request_bytes,
                } = row
                else {
                    return Err(Error::Internal(format!("shadow {name} has an incomplete driver configuration")));
                };
                let defaults = crate::etcd::Limits::default();
                let target = crate::etcd::Target {
                    endpoints: endpoints.split(',').map(str::to_string).collect(),
                    prefix,
                    user,
                    password: password
                        .map(|sealed| db.keys.open_text(&format!("shadow-token:{name}"), &sealed))
                        .transpose()?,
                    ca_pem: ca,
                    content_key: Some(db.keys.content_key().to_hex()),
                    limits: crate::etcd::Limits {
                        max_txn_ops: max_txn_ops.and_then(|n| usize::try_from(n).ok()).unwrap_or(defaults.max_txn_ops),
                        max_request_bytes: max_request_bytes
                            .and_then(|n| usize::try_from(n).ok())
                            .unwrap_or(defaults.max_request_bytes),
                    },
                };
                let etcd = match crate::etcd::EtcdShadow::connect(&target, self.request_timeout).await {
                    Ok(etcd) => etcd,
                    // Not kept: the next call tries again.
                    Err(err) => return Ok(Driver::Unreachable(err)),
                };
                // Two callers may race to connect: the first one in wins.
                let mut open = self.etcd.lock().unwrap_or_else(|p| p.into_inner());
                open.retain(|other, _| *other == key || registered_as(other) != name);
                Ok(Driver::Etcd(Box::new(open.entry(key).or_insert(etcd).clone())))
            }
            _ => Err(Error::Internal(format!("shadow {name} has an incomplete driver configuration"))),
        }
    }

    /// Forgets an open directory store (after the shadow was removed).
    pub fn forget(&self, name: &str) {
        self.directories
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|key, _| registered_as(key) != name);
        self.etcd
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|key, _| registered_as(key) != name);
    }
}
