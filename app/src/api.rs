//! Server functions of the console. Each is a thin wrapper: find the caller, call one
//! service function in `control`, map the error to a message fit for the page. Role
//! checks happen in the services; the router has already refused callers without a
//! session (only `login` is public).

use domain::api::{
    AuditEntry, AuditVerification, ChangeSummary, ChangeView, DiffView, EntryContent, IncidentView, Page, RevisionSummary, RevisionView,
    RolloutView,
};
use leptos::prelude::*;
use serde::{Deserialize, Serialize};

/// The signed-in user, as the pages need it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Me {
    pub username: String,
    pub role: domain::Role,
}

#[cfg(feature = "ssr")]
pub mod ssr {
    //! Helpers only the server has.
    use leptos::prelude::*;

    pub fn db() -> Result<control::Db, ServerFnError> {
        use_context::<control::Db>().ok_or_else(|| ServerFnError::new("database unavailable"))
    }

    /// The caller the router authenticated, or a 401-style error.
    pub fn caller() -> Result<control::Caller, ServerFnError> {
        use_context::<http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<control::Caller>().cloned())
            .ok_or_else(|| ServerFnError::new(domain::api::SIGNED_OUT))
    }

    /// Service errors as the page shows them (internal details stay in the log).
    pub fn fail(err: control::Error) -> ServerFnError {
        if let control::Error::Internal(detail) = &err {
            tracing::error!(%detail, "internal error in a server function");
        }
        if let Some(options) = use_context::<leptos_axum::ResponseOptions>() {
            options.set_status(http::StatusCode::from_u16(err.status()).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR));
        }
        ServerFnError::new(err.public_message())
    }

    /// Whether the session cookie is `Secure` (and `__Host-` named).
    pub fn secure_cookies() -> bool {
        use_context::<crate::ConsoleSettings>().is_some_and(|s| s.secure_cookies)
    }

    /// The peer address of the connection (never a header a client can set).
    pub fn client_address() -> Option<std::net::IpAddr> {
        use_context::<http::request::Parts>().and_then(|parts| {
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|info| info.0.ip())
        })
    }

    pub fn set_cookie(value: String) {
        if let (Some(options), Ok(value)) = (use_context::<leptos_axum::ResponseOptions>(), http::HeaderValue::from_str(&value)) {
            options.append_header(http::header::SET_COOKIE, value);
        }
    }
}

/// Signs in and sets the session cookie. Works as a plain HTML form post.
/// The editor's validation as the user types: the validator the server runs on save, for
/// a format and a text; `None` when the text is valid.
#[server]
pub async fn validate_content(format: String, content: String) -> Result<Option<domain::ValidationError>, ServerFnError> {
    use ssr::*;
    // Editors validate what they may write; parsing is CPU work, off the async workers.
    caller()?.require(domain::Role::Editor).map_err(fail)?;
    let format: domain::Format = format.parse().map_err(|_| ServerFnError::new("unknown format"))?;
    tokio::task::spawn_blocking(move || domain::format::validate(format, content.as_bytes()).err())
        .await
        .map_err(|_| ServerFnError::new("the validation did not finish"))
}

#[server(endpoint = "login")]
pub async fn login(username: String, password: String, next: Option<String>) -> Result<(), ServerFnError> {
    use ssr::*;
    let db = db()?;
    let policy = use_context::<control::sessions::Policy>().unwrap_or_default();
    let limits = use_context::<control::login::Limits>().unwrap_or_default();
    let caller = control::login::sign_in(&db, &limits, &username, &password, client_address())
        .await
        .map_err(|err| match err {
            control::Error::Unauthorized => {
                if let Some(options) = use_context::<leptos_axum::ResponseOptions>() {
                    options.set_status(http::StatusCode::UNAUTHORIZED);
                }
                ServerFnError::new("wrong username or password")
            }
            // 429 with the wait in words.
            other => fail(other),
        })?;
    let secret = control::sessions::create(&db, &caller, policy).await.map_err(fail)?;
    set_cookie(domain::api::session_set_cookie(
        &secret,
        secure_cookies(),
        policy.lifetime.whole_seconds(),
    ));
    // Only local paths, so the form cannot be used as an open redirect.
    let target = domain::api::local_next(next.as_deref());
    leptos_axum::redirect(&target);
    Ok(())
}

#[server]
pub async fn logout() -> Result<(), ServerFnError> {
    use ssr::*;
    let caller = caller()?;
    control::sessions::end(&db()?, &caller).await.map_err(fail)?;
    set_cookie(domain::api::session_clear_cookie(secure_cookies()));
    leptos_axum::redirect("/login");
    Ok(())
}

/// The signed-in user enters their password again, which sensitive actions (approve, roll
/// out, reconcile, reveal, tokens, users) need within the recent window.
#[server]
pub async fn confirm_password(password: String) -> Result<(), ServerFnError> {
    use ssr::*;
    let limits = use_context::<control::login::Limits>().unwrap_or_default();
    control::sessions::confirm(&db()?, &limits, &caller()?, &password, client_address())
        .await
        .map_err(fail)
        .map(drop)
}

#[server]
pub async fn whoami() -> Result<Me, ServerFnError> {
    let caller = ssr::caller()?;
    Ok(Me {
        username: caller.username,
        role: caller.role,
    })
}

#[server]
pub async fn overview() -> Result<domain::api::Overview, ServerFnError> {
    use ssr::*;
    caller()?;
    let db = db()?;
    let current = control::revisions::current(&db).await.map_err(fail)?;
    let awaiting = control::changes::list(&db, Some(domain::api::ChangeState::Submitted), None, Some(20))
        .await
        .map_err(fail)?;
    let approved = control::changes::list(&db, Some(domain::api::ChangeState::Approved), None, Some(20))
        .await
        .map_err(fail)?;
    let drafts = control::changes::list(&db, Some(domain::api::ChangeState::Draft), None, Some(500))
        .await
        .map_err(fail)?;
    let activity = control::audit::list(
        &db,
        &control::audit::AuditFilter {
            limit: Some(10),
            ..Default::default()
        },
    )
    .await
    .map_err(fail)?;
    let rollouts = control::rollouts::list(&db, None, Some(5)).await.map_err(fail)?;
    let shadows = control::shadows::list(&db).await.map_err(fail)?;
    let unresolved = control::incidents::IncidentFilter {
        status: Some("unresolved".into()),
        limit: Some(10),
        ..Default::default()
    };
    let open_incidents = control::incidents::list(&db, &unresolved).await.map_err(fail)?.items;
    let open_incident_count = control::incidents::open_count(&db).await.map_err(fail)?;
    let incident_days = control::incidents::daily(&db, 14).await.map_err(fail)?;
    let mut awaiting_approval = awaiting.items;
    awaiting_approval.extend(approved.items);
    let cluster = match use_context::<std::sync::Arc<control::cluster::Membership>>() {
        Some(membership) => membership.view().await.ok(),
        None => None,
    };
    Ok(domain::api::Overview {
        cluster,
        current,
        open_changes: i64::try_from(drafts.items.len() + awaiting_approval.len()).unwrap_or(i64::MAX),
        awaiting_approval,
        recent_activity: activity.items,
        shadows,
        open_incidents,
        open_incident_count,
        incident_days,
        recent_rollouts: rollouts.items,
    })
}

/// A revision; `None` means the current one.
#[server]
pub async fn revision(number: Option<i64>) -> Result<RevisionView, ServerFnError> {
    use ssr::*;
    caller()?;
    let db = db()?;
    let number = match number {
        Some(n) => n,
        None => control::revisions::current(&db).await.map_err(fail)?.number,
    };
    control::revisions::get(&db, number).await.map_err(fail)
}

#[server]
pub async fn revisions(before: Option<i64>) -> Result<Page<RevisionSummary>, ServerFnError> {
    use ssr::*;
    caller()?;
    control::revisions::list(&db()?, before, Some(25)).await.map_err(fail)
}

#[server]
pub async fn revision_diff(from: i64, to: i64) -> Result<DiffView, ServerFnError> {
    use ssr::*;
    caller()?;
    control::revisions::diff(&db()?, from, to).await.map_err(fail)
}

/// One entry's content: from a change when `change` is given and it puts that path,
/// otherwise from the revision (current when `revision` is `None`).
#[server]
pub async fn entry(path: String, revision: Option<i64>) -> Result<EntryContent, ServerFnError> {
    use ssr::*;
    caller()?;
    let db = db()?;
    let number = match revision {
        Some(n) => n,
        None => control::revisions::current(&db).await.map_err(fail)?.number,
    };
    control::revisions::entry(&db, number, &path).await.map_err(fail)
}

#[server]
pub async fn change_entry(id: i64, path: String) -> Result<Option<String>, ServerFnError> {
    use ssr::*;
    caller()?;
    control::changes::entry_content(&db()?, id, &path).await.map_err(fail)
}

#[server]
pub async fn changes(state: Option<String>, before: Option<i64>) -> Result<Page<ChangeSummary>, ServerFnError> {
    use ssr::*;
    caller()?;
    let state = state.filter(|s| !s.is_empty()).and_then(|s| domain::api::ChangeState::parse(&s));
    control::changes::list(&db()?, state, before, Some(25)).await.map_err(fail)
}

/// How many of a change's entries its page lists at the top (the diff below pages on).
pub const CHANGE_PAGE_ENTRIES: usize = 100;

/// Entry diffs per page of a change's diff.
pub const DIFF_PAGE_ENTRIES: usize = 50;

/// A change as its page shows it: the first [`CHANGE_PAGE_ENTRIES`] entries, and how many
/// it has in all (a change of 10,000 entries does not make a page of megabytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeHead {
    pub change: ChangeView,
    pub entries_total: usize,
}

#[server]
pub async fn change(id: i64) -> Result<ChangeHead, ServerFnError> {
    use ssr::*;
    caller()?;
    let mut change = control::changes::get(&db()?, id).await.map_err(fail)?;
    change.staged_ahead = coordinator()?.staged_ahead_of(id);
    let entries_total = change.entries.len();
    change.entries.truncate(CHANGE_PAGE_ENTRIES);
    Ok(ChangeHead { change, entries_total })
}

/// A page of a change's diff, after the path `after`.
#[server]
pub async fn change_diff(id: i64, after: Option<String>) -> Result<domain::api::DiffPage, ServerFnError> {
    use ssr::*;
    caller()?;
    control::changes::diff_page(&db()?, id, after.as_deref(), DIFF_PAGE_ENTRIES)
        .await
        .map_err(fail)
}

/// Saves one entry from the editor: into `change` when given, else into a new change on
/// `base_revision` with `message`. Returns the change id.
#[server]
pub async fn save_entry(
    change: Option<i64>,
    base_revision: i64,
    message: String,
    path: String,
    content: String,
    format: String,
    mode: String,
    secret: Option<String>,
) -> Result<i64, ServerFnError> {
    use ssr::*;
    let caller = caller()?;
    let db = db()?;
    let secret = Some(secret.is_some_and(|s| s == "on" || s == "true"));
    let view = match change {
        Some(id) => {
            let edit = domain::api::EntryEdit {
                content,
                format: Some(format),
                mode: Some(mode),
                owner: None,
                group: None,
                secret,
            };
            control::changes::put_entry(&db, &caller, id, &path, edit).await.map_err(fail)?
        }
        None => {
            let entry = domain::api::EntryInput {
                path,
                content: Some(content),
                format: Some(format),
                mode: Some(mode),
                owner: None,
                group: None,
                secret,
                delete: false,
            };
            control::changes::create(
                &db,
                &caller,
                domain::api::NewChange {
                    base_revision,
                    message,
                    entries: vec![entry],
                },
            )
            .await
            .map_err(fail)?
        }
    };
    leptos_axum::redirect(&format!("/changes/{}", view.summary.id));
    Ok(view.summary.id)
}

/// Adds the removal of `path` to a change, or starts a change that removes it.
#[server]
pub async fn remove_entry(change: Option<i64>, base_revision: i64, message: String, path: String) -> Result<i64, ServerFnError> {
    use ssr::*;
    let caller = caller()?;
    let db = db()?;
    let view = match change {
        Some(id) => control::changes::delete_entry(&db, &caller, id, &path).await.map_err(fail)?,
        None => {
            let entry = domain::api::EntryInput::deletion(path);
            control::changes::create(
                &db,
                &caller,
                domain::api::NewChange {
                    base_revision,
                    message,
                    entries: vec![entry],
                },
            )
            .await
            .map_err(fail)?
        }
    };
    leptos_axum::redirect(&format!("/changes/{}", view.summary.id));
    Ok(view.summary.id)
}

#[server]
pub async fn submit_change(id: i64) -> Result<(), ServerFnError> {
    use ssr::*;
    control::changes::submit(&db()?, &caller()?, id).await.map_err(fail).map(drop)
}

#[server]
pub async fn approve_change(id: i64) -> Result<(), ServerFnError> {
    use ssr::*;
    control::changes::approve(&db()?, &caller()?, id).await.map_err(fail)?;
    // Staged on the shadows now, so that the rollout pays the decision and the switch.
    coordinator()?.nudge_staging();
    Ok(())
}

#[server]
pub async fn reject_change(id: i64, reason: String) -> Result<(), ServerFnError> {
    use ssr::*;
    control::changes::reject(&db()?, &caller()?, id, &reason)
        .await
        .map_err(fail)
        .map(drop)
}

#[server]
pub async fn rebase_change(id: i64) -> Result<(), ServerFnError> {
    use ssr::*;
    control::changes::rebase(&db()?, &caller()?, id).await.map_err(fail).map(drop)
}

#[server]
pub async fn rollout_change(id: i64) -> Result<RolloutView, ServerFnError> {
    use ssr::*;
    let coordinator =
        use_context::<std::sync::Arc<control::rollouts::Coordinator>>().ok_or_else(|| ServerFnError::new("coordinator unavailable"))?;
    // The page follows the rollout live on /api/v1/events; it does not wait here.
    coordinator.roll_out_detached(&caller()?, id).await.map_err(fail)
}

/// The latest rollout of a change, shown on its page.
#[server]
pub async fn change_rollout(change_id: i64) -> Result<Option<RolloutView>, ServerFnError> {
    use ssr::*;
    caller()?;
    control::rollouts::latest_for_change(&db()?, change_id).await.map_err(fail)
}

#[server]
pub async fn audit_log(
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
    before: Option<i64>,
) -> Result<Page<AuditEntry>, ServerFnError> {
    use ssr::*;
    caller()?;
    let filter = control::audit::AuditFilter {
        actor,
        action,
        target,
        before,
        limit: Some(50),
    };
    control::audit::list(&db()?, &filter).await.map_err(fail)
}

#[server]
pub async fn audit_verify() -> Result<AuditVerification, ServerFnError> {
    use ssr::*;
    caller()?;
    monitor()?.verify_audit().await.map_err(fail)
}

#[server]
pub async fn audit_head() -> Result<domain::api::AuditHead, ServerFnError> {
    use ssr::*;
    caller()?;
    control::audit::head(&db()?).await.map_err(fail)
}

#[cfg(feature = "ssr")]
fn coordinator() -> Result<std::sync::Arc<control::rollouts::Coordinator>, ServerFnError> {
    use_context::<std::sync::Arc<control::rollouts::Coordinator>>().ok_or_else(|| ServerFnError::new("coordinator unavailable"))
}

#[server]
pub async fn shadows() -> Result<Vec<domain::api::ShadowView>, ServerFnError> {
    use ssr::*;
    caller()?;
    control::shadows::list(&db()?).await.map_err(fail)
}

/// The etcd fields of the register form (`etcd[endpoints]`, `etcd[prefix]`,
/// `etcd[user]`, `etcd[password]`).
#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct EtcdFields {
    /// Comma-separated client URLs.
    #[serde(default)]
    pub endpoints: String,
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub password: String,
    /// The CA certificate (PEM) of https:// endpoints.
    #[serde(default)]
    pub ca: String,
}

/// Without the password.
impl std::fmt::Debug for EtcdFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdFields")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Registers a shadow from the admin form: `driver` is `agent` (url, token, and the
/// certificate pin for https), `directory` (path) or `etcd` (the [`EtcdFields`]).
#[server]
pub async fn add_shadow(
    driver: String,
    name: String,
    url: Option<String>,
    token: Option<String>,
    tls_pin: Option<String>,
    path: Option<String>,
    etcd: Option<EtcdFields>,
) -> Result<Option<String>, ServerFnError> {
    use ssr::*;
    let shadow = match driver.as_str() {
        "agent" => control::shadows::NewShadow::Agent {
            name,
            url: url.unwrap_or_default(),
            // Empty: the control plane generates one, answered this once.
            token: token.filter(|t| !t.trim().is_empty()),
            tls_pin,
        },
        "directory" => control::shadows::NewShadow::Directory {
            name,
            path: path.unwrap_or_default(),
        },
        "etcd" => {
            let etcd = etcd.unwrap_or_default();
            control::shadows::NewShadow::Etcd {
                name,
                endpoints: etcd
                    .endpoints
                    .split(',')
                    .map(str::trim)
                    .filter(|e| !e.is_empty())
                    .map(str::to_string)
                    .collect(),
                prefix: etcd.prefix,
                user: Some(etcd.user).filter(|u| !u.trim().is_empty()),
                password: Some(etcd.password).filter(|p| !p.is_empty()),
                ca: Some(etcd.ca).filter(|c| !c.trim().is_empty()),
                max_txn_ops: None,
                max_request_bytes: None,
            }
        }
        other => return Err(ServerFnError::new(format!("unknown driver {other:?}"))),
    };
    let (_, generated) = control::shadows::add(&db()?, &caller()?, shadow).await.map_err(fail)?;
    if generated.is_some()
        && let Some(options) = use_context::<leptos_axum::ResponseOptions>()
    {
        options.insert_header(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    }
    Ok(generated)
}

#[server]
pub async fn remove_shadow(name: String) -> Result<(), ServerFnError> {
    use ssr::*;
    control::shadows::remove_by(&db()?, &caller()?, &name).await.map_err(fail)?;
    coordinator()?.registry.forget(&name);
    Ok(())
}

#[cfg(feature = "ssr")]
fn monitor() -> Result<std::sync::Arc<control::drift::Monitor>, ServerFnError> {
    use_context::<std::sync::Arc<control::drift::Monitor>>().ok_or_else(|| ServerFnError::new("drift monitor unavailable"))
}

#[server]
pub async fn check_shadow(name: String) -> Result<(), ServerFnError> {
    use ssr::*;
    caller()?;
    monitor()?
        .check(&name, control::drift::Trigger::Manual)
        .await
        .map_err(fail)
        .map(drop)
}

#[server]
pub async fn webhooks() -> Result<Vec<domain::api::WebhookView>, ServerFnError> {
    use ssr::*;
    control::webhooks::list(&db()?, &caller()?).await.map_err(fail)
}

/// `events`: comma-separated event names, empty for all.
#[server]
pub async fn create_webhook(url: String, events: Option<String>) -> Result<domain::api::WebhookView, ServerFnError> {
    use ssr::*;
    let events = events
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect();
    control::webhooks::create(&db()?, &caller()?, control::webhooks::NewWebhook { url, events })
        .await
        .map_err(fail)
}

#[server]
pub async fn remove_webhook(id: i64) -> Result<(), ServerFnError> {
    use ssr::*;
    control::webhooks::remove(&db()?, &caller()?, id).await.map_err(fail)
}

#[server]
pub async fn webhook_deliveries() -> Result<Page<domain::api::DeliveryView>, ServerFnError> {
    use ssr::*;
    control::webhooks::deliveries(&db()?, &caller()?, None, None, Some(50))
        .await
        .map_err(fail)
}

/// One shadow as the control plane last saw it.
#[server]
pub async fn shadow_detail(name: String) -> Result<domain::api::ShadowView, ServerFnError> {
    use ssr::*;
    caller()?;
    control::shadows::get(&db()?, &name).await.map_err(fail)
}

/// Checks of a shadow shown per page of its history.
pub const CHECKS_PER_PAGE: i64 = 25;

/// One page of a shadow's check history (newest first, before the check `before`), and
/// its newest checks (up to 500, oldest first) for the chart.
#[server]
pub async fn shadow_checks(
    name: String,
    before: Option<i64>,
) -> Result<(domain::api::Page<domain::api::CheckView>, Vec<domain::api::CheckPoint>), ServerFnError> {
    use ssr::*;
    caller()?;
    let monitor = monitor()?;
    let page = monitor.checks(&name, before, Some(CHECKS_PER_PAGE)).await.map_err(fail)?;
    let series = monitor.check_series(&name, 500).await.map_err(fail)?;
    Ok((page, series))
}

/// The primary against what a shadow holds now.
#[server]
pub async fn shadow_diff(name: String) -> Result<DiffView, ServerFnError> {
    use ssr::*;
    monitor()?.shadow_diff(&caller()?, &name).await.map_err(fail)
}

/// Incidents, newest first. Empty strings mean "any".
#[server]
pub async fn incidents(
    status: Option<String>,
    kind: Option<String>,
    shadow: Option<String>,
    since: Option<String>,
    until: Option<String>,
    page: Option<i64>,
) -> Result<Page<IncidentView>, ServerFnError> {
    use ssr::*;
    caller()?;
    let filter = control::incidents::IncidentFilter {
        status,
        kind,
        shadow,
        since,
        until,
        page,
        limit: Some(50),
    };
    control::incidents::list(&db()?, &filter).await.map_err(fail)
}

#[server]
pub async fn incident(id: i64) -> Result<IncidentView, ServerFnError> {
    use ssr::*;
    caller()?;
    control::incidents::get(&db()?, id).await.map_err(fail)
}

#[server]
pub async fn acknowledge_incident(id: i64, note: Option<String>) -> Result<(), ServerFnError> {
    use ssr::*;
    let (_, notice) = control::incidents::acknowledge(&db()?, &caller()?, id, note.as_deref())
        .await
        .map_err(fail)?;
    monitor()?.announce(notice);
    Ok(())
}

#[server]
pub async fn resolve_incident(id: i64, note: Option<String>) -> Result<(), ServerFnError> {
    use ssr::*;
    let (_, notice) = control::incidents::resolve(&db()?, &caller()?, id, note.as_deref())
        .await
        .map_err(fail)?;
    monitor()?.announce(notice);
    Ok(())
}

/// Turns the shadow's content into a new change; answers its id.
#[server]
pub async fn adopt_incident(id: i64) -> Result<i64, ServerFnError> {
    use ssr::*;
    monitor()?.adopt(&caller()?, id).await.map_err(fail).map(|change| change.summary.id)
}

/// Reconciles the incident's shadow (a reconcile rollout of the current revision).
#[server]
pub async fn reconcile_incident(id: i64) -> Result<RolloutView, ServerFnError> {
    use ssr::*;
    let db = db()?;
    let incident = control::incidents::get(&db, id).await.map_err(fail)?;
    coordinator()?.reconcile(&caller()?, &incident.shadow).await.map_err(fail)
}

#[server]
pub async fn reconcile_shadow(name: String) -> Result<RolloutView, ServerFnError> {
    use ssr::*;
    coordinator()?.reconcile(&caller()?, &name).await.map_err(fail)
}

#[server]
pub async fn rollouts(before: Option<i64>) -> Result<Page<RolloutView>, ServerFnError> {
    use ssr::*;
    caller()?;
    control::rollouts::list(&db()?, before, Some(25)).await.map_err(fail)
}

#[server]
pub async fn rollout(id: i64) -> Result<RolloutView, ServerFnError> {
    use ssr::*;
    caller()?;
    control::rollouts::get(&db()?, id).await.map_err(fail)
}

/// Aborts a rollout that is still preparing (an operator's exit; audited).
#[server]
pub async fn cancel_rollout(id: i64) -> Result<RolloutView, ServerFnError> {
    use ssr::*;
    coordinator()?.cancel(&caller()?, id).await.map_err(fail)
}

/// Stops waiting for one shadow's commit (an operator's exit; audited).
#[server]
pub async fn release_rollout_shadow(id: i64, shadow: String) -> Result<RolloutView, ServerFnError> {
    use ssr::*;
    coordinator()?.release(&caller()?, id, &shadow).await.map_err(fail)
}

/// A role picked in a form; empty means "none given".
#[cfg(feature = "ssr")]
fn optional_role(role: Option<String>) -> Result<Option<domain::Role>, ServerFnError> {
    role.filter(|r| !r.is_empty())
        .map(|r| r.parse::<domain::Role>().map_err(ServerFnError::new))
        .transpose()
}

/// The caller's API tokens (an admin's list has everyone's); never their secrets.
#[server]
pub async fn tokens() -> Result<Vec<domain::api::TokenView>, ServerFnError> {
    use ssr::*;
    control::sessions::list_tokens(&db()?, &caller()?).await.map_err(fail)
}

/// A new API token for the caller, at most their role; its secret is shown once.
#[server]
pub async fn create_token(name: String, role: Option<String>, days: Option<String>) -> Result<domain::api::NewToken, ServerFnError> {
    use ssr::*;
    let days = match days.as_deref().map(str::trim).filter(|d| !d.is_empty()) {
        Some(text) => Some(
            text.parse::<i64>()
                .map_err(|_| ServerFnError::new("days: a whole number of days"))?,
        ),
        None => None,
    };
    control::sessions::create_token(&db()?, &caller()?, &name, optional_role(role)?, days)
        .await
        .map_err(fail)
}

#[server]
pub async fn revoke_token(id: i64) -> Result<(), ServerFnError> {
    use ssr::*;
    control::sessions::revoke_token(&db()?, &caller()?, id).await.map_err(fail)
}

/// Every account (admins).
#[server]
pub async fn users() -> Result<Vec<domain::api::UserView>, ServerFnError> {
    use ssr::*;
    control::users::list(&db()?, &caller()?).await.map_err(fail)
}

#[server]
pub async fn create_user(username: String, role: String, password: String) -> Result<domain::api::UserView, ServerFnError> {
    use ssr::*;
    let role = role.parse::<domain::Role>().map_err(ServerFnError::new)?;
    control::users::add(&db()?, &caller()?, &username, role, password)
        .await
        .map_err(fail)
}

/// Changes a user's role, or disables (`disabled = "true"`) or enables them.
#[server]
pub async fn update_user(username: String, role: Option<String>, disabled: Option<String>) -> Result<domain::api::UserView, ServerFnError> {
    use ssr::*;
    let disabled = disabled.map(|d| d == "true");
    control::users::update(&db()?, &caller()?, &username, optional_role(role)?, disabled)
        .await
        .map_err(fail)
}

/// A secret entry's content, to an approver or admin who gives their password again.
/// Audited; the page shows it in place and never stores it.
#[server]
pub async fn reveal_secret(revision: i64, path: String, password: String) -> Result<String, ServerFnError> {
    use ssr::*;
    let limits = use_context::<control::login::Limits>().unwrap_or_default();
    let db = db()?;
    let caller = control::sessions::with_typed_password(&db, &limits, &caller()?, Some(&password), client_address())
        .await
        .map_err(fail)?;
    if let Some(options) = use_context::<leptos_axum::ResponseOptions>() {
        options.insert_header(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    }
    let revealed = control::revisions::reveal(&db, &caller, revision, &path).await.map_err(fail)?;
    Ok(revealed.content.unwrap_or_default())
}

/// Runs a drill on a shadow now (approvers): parity, validate on the live tree, and the
/// health probe `requests` times (1 when empty).
#[server]
pub async fn run_drill(name: String, requests: Option<String>) -> Result<domain::api::DrillView, ServerFnError> {
    use ssr::*;
    let requests = match requests.as_deref().map(str::trim).filter(|r| !r.is_empty()) {
        Some(text) => Some(
            text.parse::<u32>()
                .map_err(|_| ServerFnError::new("requests is a whole number from 1 to 1000"))?,
        ),
        None => None,
    };
    // A drill writes to the shadow as the control plane: the leader's work.
    coordinator()?.require_leader().map_err(fail)?;
    let (view, notice) = control::drills::run(&db()?, &coordinator()?.registry, &caller()?, &name, requests)
        .await
        .map_err(fail)?;
    if let Some(notice) = notice {
        monitor()?.announce(notice);
    }
    Ok(view)
}

/// Drills, newest first, optionally of one shadow (empty for all).
#[server]
pub async fn drills(shadow: Option<String>, before: Option<i64>) -> Result<Page<domain::api::DrillView>, ServerFnError> {
    use ssr::*;
    caller()?;
    let shadow = shadow.filter(|s| !s.is_empty());
    control::drills::list(&db()?, shadow.as_deref(), before, Some(50))
        .await
        .map_err(fail)
}

#[server]
pub async fn drill(id: i64) -> Result<domain::api::DrillView, ServerFnError> {
    use ssr::*;
    caller()?;
    control::drills::get(&db()?, id).await.map_err(fail)
}

/// A draft change whose content is revision `number` (a rollback, reviewed like any
/// change); answers the change's id.
#[server]
pub async fn restore_revision(number: i64) -> Result<i64, ServerFnError> {
    use ssr::*;
    let change = control::imports::restore(&db()?, &caller()?, number).await.map_err(fail)?;
    Ok(change.summary.id)
}

/// What rolling out change `id` would do on every shadow; with `validate` (approvers) the
/// nodes' validate hooks run as a dry run.
#[server]
pub async fn change_plan(id: i64, validate: bool) -> Result<domain::api::RolloutPlan, ServerFnError> {
    use ssr::*;
    monitor()?.plan(&caller()?, id, validate).await.map_err(fail)
}
