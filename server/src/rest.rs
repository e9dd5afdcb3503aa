//! The REST API (`/api/v1`), declared as one table of routes with the role each needs.
//!
//! The router is built from [`routes`], and the authorisation tests walk the same table,
//! so a route cannot be added without its role being tested. Handlers are thin: take the
//! caller, call one service function, map the error.

use crate::{
    AppState,
    auth::Authenticated,
    error::{ApiError, ApiResult, JsonBody, PathParams, QueryParams},
};
use axum::{
    Extension, Json,
    extract::{FromRequest, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware,
    response::{IntoResponse, Response},
    routing::{MethodRouter, delete, get, patch, post, put},
};
use control::{
    Error,
    audit::AuditFilter,
    changes,
    drift::Trigger,
    incidents::{self, IncidentFilter},
    revisions, rollouts, sessions, shadows,
};
use domain::{
    Role,
    api::{ChangeState, EntryEdit, NewChange, Validation},
};
use serde::Deserialize;
use serde_json::json;

/// One API route: who may call it and what answers.
pub struct RouteSpec {
    pub method: Method,
    pub path: &'static str,
    /// `None`: public. Otherwise the lowest role allowed.
    pub role: Option<Role>,
    pub handler: MethodRouter<AppState>,
}

fn route(method: Method, path: &'static str, role: Option<Role>, handler: MethodRouter<AppState>) -> RouteSpec {
    RouteSpec {
        method,
        path,
        role,
        handler,
    }
}

/// Every REST route with the role it needs.
pub fn routes() -> Vec<RouteSpec> {
    use Role::*;
    vec![
        route(Method::POST, "/api/v1/session", None, post(login)),
        route(Method::DELETE, "/api/v1/session", Some(Viewer), delete(logout)),
        route(Method::GET, "/api/v1/session", Some(Viewer), get(whoami)),
        route(Method::POST, "/api/v1/session/confirm", Some(Viewer), post(confirm_session)),
        route(Method::POST, "/api/v1/tokens", Some(Viewer), post(create_token)),
        route(Method::GET, "/api/v1/tokens", Some(Viewer), get(list_tokens)),
        route(Method::DELETE, "/api/v1/tokens/{id}", Some(Viewer), delete(revoke_token)),
        route(Method::GET, "/api/v1/revisions", Some(Viewer), get(list_revisions)),
        route(Method::GET, "/api/v1/revisions/{n}", Some(Viewer), get(get_revision)),
        route(
            Method::GET,
            "/api/v1/revisions/{n}/entries/{*path}",
            Some(Viewer),
            get(get_revision_entry),
        ),
        route(Method::GET, "/api/v1/revisions/{a}/diff/{b}", Some(Viewer), get(diff_revisions)),
        route(Method::POST, "/api/v1/revisions/{n}/reveal", Some(Approver), post(reveal_secret)),
        route(Method::POST, "/api/v1/changes", Some(Editor), post(create_change)),
        route(Method::GET, "/api/v1/changes", Some(Viewer), get(list_changes)),
        route(Method::GET, "/api/v1/changes/{id}", Some(Viewer), get(get_change)),
        route(
            Method::PUT,
            "/api/v1/changes/{id}/entries/{*path}",
            Some(Editor),
            put(put_change_entry),
        ),
        route(
            Method::DELETE,
            "/api/v1/changes/{id}/entries/{*path}",
            Some(Editor),
            delete(delete_change_entry),
        ),
        route(Method::POST, "/api/v1/changes/{id}/submit", Some(Editor), post(submit_change)),
        route(Method::POST, "/api/v1/changes/{id}/rebase", Some(Editor), post(rebase_change)),
        route(Method::POST, "/api/v1/changes/{id}/approvals", Some(Approver), post(approve_change)),
        route(Method::POST, "/api/v1/changes/{id}/reject", Some(Approver), post(reject_change)),
        route(Method::GET, "/api/v1/changes/{id}/diff", Some(Viewer), get(diff_change)),
        route(Method::GET, "/api/v1/changes/{id}/plan", Some(Viewer), get(plan_change)),
        route(Method::POST, "/api/v1/changes/{id}/rollouts", Some(Approver), post(start_rollout)),
        route(Method::GET, "/api/v1/rollouts", Some(Viewer), get(list_rollouts)),
        route(Method::GET, "/api/v1/rollouts/{id}", Some(Viewer), get(get_rollout)),
        route(Method::POST, "/api/v1/rollouts/{id}/cancel", Some(Approver), post(cancel_rollout)),
        route(
            Method::POST,
            "/api/v1/rollouts/{id}/shadows/{name}/release",
            Some(Approver),
            post(release_rollout_shadow),
        ),
        route(Method::POST, "/api/v1/validate", Some(Editor), post(validate_entry)),
        route(Method::GET, "/api/v1/events", Some(Viewer), get(events)),
        route(Method::GET, "/api/v1/audit", Some(Viewer), get(list_audit)),
        route(Method::GET, "/api/v1/audit/verify", Some(Viewer), get(verify_audit)),
        route(Method::GET, "/api/v1/audit/head", Some(Viewer), get(audit_head)),
        route(Method::POST, "/api/v1/shadows", Some(Admin), post(add_shadow)),
        route(Method::GET, "/api/v1/shadows", Some(Viewer), get(list_shadows)),
        route(Method::GET, "/api/v1/shadows/{name}", Some(Viewer), get(get_shadow)),
        route(Method::DELETE, "/api/v1/shadows/{name}", Some(Admin), delete(remove_shadow)),
        route(Method::POST, "/api/v1/shadows/{name}/check", Some(Viewer), post(check_shadow)),
        route(Method::GET, "/api/v1/shadows/{name}/diff", Some(Viewer), get(diff_shadow)),
        route(Method::GET, "/api/v1/shadows/{name}/checks", Some(Viewer), get(shadow_checks)),
        route(
            Method::POST,
            "/api/v1/shadows/{name}/reconcile",
            Some(Approver),
            post(reconcile_shadow),
        ),
        route(Method::POST, "/api/v1/shadows/{name}/drills", Some(Approver), post(run_drill)),
        route(Method::GET, "/api/v1/drills", Some(Viewer), get(list_drills)),
        route(Method::GET, "/api/v1/drills/{id}", Some(Viewer), get(get_drill)),
        route(Method::POST, "/api/v1/imports", Some(Editor), post(create_import)),
        route(Method::POST, "/api/v1/revisions/{n}/restore", Some(Editor), post(restore_revision)),
        route(Method::GET, "/api/v1/incidents", Some(Viewer), get(list_incidents)),
        route(Method::GET, "/api/v1/incidents/{id}", Some(Viewer), get(get_incident)),
        route(
            Method::POST,
            "/api/v1/incidents/{id}/acknowledge",
            Some(Editor),
            post(acknowledge_incident),
        ),
        route(
            Method::POST,
            "/api/v1/incidents/{id}/resolve",
            Some(Approver),
            post(resolve_incident),
        ),
        route(Method::POST, "/api/v1/incidents/{id}/adopt", Some(Editor), post(adopt_incident)),
        route(Method::POST, "/api/v1/webhooks", Some(Admin), post(create_webhook)),
        route(Method::GET, "/api/v1/webhooks", Some(Admin), get(list_webhooks)),
        route(Method::GET, "/api/v1/webhooks/deliveries", Some(Admin), get(list_deliveries)),
        route(Method::DELETE, "/api/v1/webhooks/{id}", Some(Admin), delete(remove_webhook)),
        route(Method::GET, "/api/v1/users", Some(Admin), get(list_users)),
        route(Method::POST, "/api/v1/users", Some(Admin), post(create_user)),
        route(Method::PATCH, "/api/v1/users/{name}", Some(Admin), patch(update_user)),
        route(Method::GET, "/api/v1/cluster", Some(Viewer), get(cluster)),
        route(Method::GET, "/healthz", None, get(healthz)),
        // Scrapers authenticate with an API token (viewer role is enough).
        route(Method::GET, "/metrics", Some(Viewer), get(metrics)),
    ]
}

/// The router of the REST API: each route wrapped in its role check.
pub fn router() -> axum::Router<AppState> {
    let mut router = axum::Router::new();
    let mut by_path: Vec<(&'static str, MethodRouter<AppState>)> = Vec::new();
    for spec in routes() {
        let handler = match spec.role {
            Some(role) => spec
                .handler
                .route_layer(middleware::from_fn(move |req, next| crate::auth::require_role(role, req, next))),
            None => spec.handler,
        };
        match by_path.iter_mut().find(|(path, _)| *path == spec.path) {
            Some((_, existing)) => *existing = std::mem::take(existing).merge(handler),
            None => by_path.push((spec.path, handler)),
        }
    }
    for (path, handler) in by_path {
        router = router.route(path, handler);
    }
    router
}

fn caller(auth: &Authenticated) -> &control::Caller {
    &auth.caller
}

/// Liveness, and whether this replica leads (`ok leader`, `ok follower`): a load
/// balancer may send leader-only work straight to the one that answers `leader`.
async fn healthz(State(state): State<AppState>) -> &'static str {
    if state.coordinator.leading() { "ok leader" } else { "ok follower" }
}

/// The replicas, which one answered and which one leads.
async fn cluster(State(state): State<AppState>) -> ApiResult<Response> {
    Ok(Json(state.membership.view().await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    username: String,
    password: String,
}

/// The Set-Cookie value for a session (see [`domain::api::session_set_cookie`]).
pub fn session_cookie_header(secret: &str, secure: bool, policy: sessions::Policy) -> HeaderValue {
    HeaderValue::from_str(&domain::api::session_set_cookie(secret, secure, policy.lifetime.whole_seconds()))
        .expect("hex session ids are valid header values")
}

pub fn clear_cookie_header(secure: bool) -> HeaderValue {
    HeaderValue::from_str(&domain::api::session_clear_cookie(secure)).expect("a constant header value")
}

async fn login(
    State(state): State<AppState>,
    peer: Option<Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    JsonBody(body): JsonBody<LoginBody>,
) -> ApiResult<Response> {
    let client = client_address(peer);
    let caller = control::login::sign_in(&state.db, &state.config.login_limits, &body.username, &body.password, client).await?;
    let secret = sessions::create(&state.db, &caller, state.config.sessions).await?;
    let mut response = Json(json!({"username": caller.username, "role": caller.role})).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie_header(&secret, state.config.secure_cookies, state.config.sessions),
    );
    Ok(response)
}

async fn logout(State(state): State<AppState>, Extension(auth): Extension<Authenticated>) -> ApiResult<Response> {
    sessions::end(&state.db, &auth.caller).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, clear_cookie_header(state.config.secure_cookies));
    Ok(response)
}

async fn whoami(Extension(auth): Extension<Authenticated>) -> Json<serde_json::Value> {
    Json(json!({"username": auth.caller.username, "role": auth.caller.role, "recent_password": auth.caller.recent_password}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    name: String,
    #[serde(default)]
    role: Option<Role>,
    /// Days it works (default and maximum: see `sessions::create_token`).
    #[serde(default)]
    days: Option<i64>,
}

async fn create_token(
    State(state): State<AppState>,
    Extension(auth): Extension<Authenticated>,
    JsonBody(body): JsonBody<TokenBody>,
) -> ApiResult<Response> {
    let token = sessions::create_token(&state.db, caller(&auth), &body.name, body.role, body.days).await?;
    Ok((StatusCode::CREATED, Json(token)).into_response())
}

async fn list_tokens(State(state): State<AppState>, Extension(auth): Extension<Authenticated>) -> ApiResult<Response> {
    let items = sessions::list_tokens(&state.db, caller(&auth)).await?;
    Ok(Json(json!({"items": items, "next": null})).into_response())
}

async fn revoke_token(
    State(state): State<AppState>,
    Extension(auth): Extension<Authenticated>,
    PathParams(id): PathParams<i64>,
) -> ApiResult<Response> {
    sessions::revoke_token(&state.db, caller(&auth), id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    before: Option<i64>,
    limit: Option<i64>,
}

async fn list_revisions(State(state): State<AppState>, QueryParams(q): QueryParams<PageQuery>) -> ApiResult<Response> {
    Ok(Json(revisions::list(&state.db, q.before, q.limit).await?).into_response())
}

async fn get_revision(State(state): State<AppState>, PathParams(n): PathParams<i64>) -> ApiResult<Response> {
    Ok(Json(revisions::get(&state.db, n).await?).into_response())
}

async fn get_revision_entry(State(state): State<AppState>, PathParams((n, path)): PathParams<(i64, String)>) -> ApiResult<Response> {
    Ok(Json(revisions::entry(&state.db, n, &path).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevealBody {
    path: String,
    /// The caller's password, given again. A session may leave it out within the recent
    /// window; an API token always needs it (a leaked token alone reveals nothing).
    #[serde(default)]
    password: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfirmBody {
    password: String,
}

fn client_address(peer: Option<Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>) -> Option<std::net::IpAddr> {
    peer.map(|Extension(info)| info.0.ip())
}

/// `POST /api/v1/session/confirm`: the signed-in user enters their password again, which
/// sensitive actions need within the recent window.
async fn confirm_session(
    State(state): State<AppState>,
    Extension(auth): Extension<Authenticated>,
    peer: Option<Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    JsonBody(body): JsonBody<ConfirmBody>,
) -> ApiResult<Response> {
    sessions::confirm(
        &state.db,
        &state.config.login_limits,
        &auth.caller,
        &body.password,
        client_address(peer),
    )
    .await?;
    let window = state.config.sessions.recent_password.whole_seconds();
    Ok(Json(json!({"confirmed": true, "valid_seconds": window})).into_response())
}

/// A secret entry's content, to an approver or admin who gives their password again
/// (counted by the sign-in limits). Audited; never cached.
async fn reveal_secret(
    State(state): State<AppState>,
    Extension(auth): Extension<Authenticated>,
    peer: Option<Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    PathParams(n): PathParams<i64>,
    JsonBody(body): JsonBody<RevealBody>,
) -> ApiResult<Response> {
    let caller = sessions::with_typed_password(
        &state.db,
        &state.config.login_limits,
        &auth.caller,
        body.password.as_deref(),
        client_address(peer),
    )
    .await?;
    let revealed = revisions::reveal(&state.db, &caller, n, &body.path).await?;
    let mut response = Json(revealed).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
    Ok(response)
}

async fn diff_revisions(State(state): State<AppState>, PathParams((a, b)): PathParams<(i64, i64)>) -> ApiResult<Response> {
    Ok(Json(revisions::diff(&state.db, a, b).await?).into_response())
}

async fn create_change(
    State(state): State<AppState>,
    Extension(auth): Extension<Authenticated>,
    JsonBody(body): JsonBody<NewChange>,
) -> ApiResult<Response> {
    let view = changes::create(&state.db, caller(&auth), body).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ChangeQuery {
    state: Option<String>,
    before: Option<i64>,
    limit: Option<i64>,
}

async fn list_changes(State(state): State<AppState>, QueryParams(q): QueryParams<ChangeQuery>) -> ApiResult<Response> {
    let filter = match q.state.as_deref().filter(|s| !s.is_empty()) {
        Some(text) => Some(ChangeState::parse(text).ok_or_else(|| Error::BadRequest(format!("unknown change state {text:?}")))?),
        None => None,
    };
    Ok(Json(changes::list(&state.db, filter, q.before, q.limit).await?).into_response())
}

async fn get_change(State(state): State<AppState>, PathParams(id): PathParams<i64>) -> ApiResult<Response> {
    let mut view = changes::get(&state.db, id).await?;
    view.staged_ahead = state.coordinator.staged_ahead_of(id);
    Ok(Json(view).into_response())
}

async fn put_change_entry(
    State(state): State<AppState>,
    Extension(auth): Extension<Authenticated>,
    PathParams((id, path)): PathParams<(i64, String)>,
    JsonBody(body): JsonBody<EntryEdit>,
) -> ApiResult<Response> {
    Ok(Json(changes::put_entry(&state.db, caller(&auth), id, &path, body).await?).into_response())
}

async fn delete_change_entry(
    State(state): State<AppState>,
    Extension(auth): Extension<Authenticated>,
    PathParams((id, path)): PathParams<(i64, String)>,
) -> ApiResult<Response> {
    Ok(Json(changes::delete_entry(&state.db, caller(&auth), id, &path).await?).into_response())
}

async fn submit_change(
    State(state): State<AppState>,
    Extension(auth): Extension<Authenticated>,
    PathParams(id): PathParams<i64>,
) -> ApiResult<Response> {
    Ok(Json(changes::submit(&state.db, caller(&auth), id).await?).into_response())
}

async fn rebase_change(
    State(state): State<AppState>,
    Extension(auth): Extension<Authenticated>,
    PathParams(id): PathParams<i64>,
) -> ApiResult<Response> {
    Ok(Json(changes::rebase(&state.db, caller(&auth), id).await?).into_response())
}

async fn approve_change(
    State(state): State<AppState>,
    Extension(auth): Extension<Authenticated>,
    PathParams(id): PathParams<i64>,
) -> ApiResult<Response> {
    let view = changes::approve(&state.db, caller(&auth), id).await?;
    // Staged on the shadows now, so that the rollout pays the decision and the switch.
    state.coordinator.nudge_staging();
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RejectBody {
    reason: String,
}

async fn reject_change(
    State(state): State<AppState>,
    Extension(auth): Extension<Authenticated>,
    PathParams(id): PathParams<i64>,
    JsonBody(body): JsonBody<RejectBody>,
) -> ApiResult<Response> {
    Ok(Json(changes::reject(&state.db, caller(&auth), id, &body.reason).await?).into_response())
}

async fn diff_change(State(state): State<AppState>, PathParams(id): PathParams<i64>) -> ApiResult<Response> {
    Ok(Json(changes::diff(&state.db, id).await?).into_response())
}

#[derive(Deserialize)]
struct RolloutQuery {
    /// `false`: answer 202 as soon as the rollout started (follow it on /api/v1/events or
    /// GET /api/v1/rollouts/{id}). By default the answer waits for the outcome.
    #[serde(default = "yes")]
    wait: bool,
}

fn yes() -> bool {
    true
}

async fn start_rollout(
    State(state): State<AppState>,
    Extension(auth): Extension<Authenticated>,
    PathParams(id): PathParams<i64>,
    QueryParams(query): QueryParams<RolloutQuery>,
) -> ApiResult<Response> {
    if query.wait {
        let view = state.coordinator.roll_out(caller(&auth), id).await?;
        return Ok((StatusCode::CREATED, Json(view)).into_response());
    }
    let view = state.coordinator.roll_out_detached(caller(&auth), id).await?;
    let location = format!("/api/v1/rollouts/{}", view.id);
    let status = if view.finished_at.is_some() {
        StatusCode::CREATED
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, [(axum::http::header::LOCATION, location)], Json(view)).into_response())
}

async fn list_rollouts(State(state): State<AppState>, QueryParams(q): QueryParams<PageQuery>) -> ApiResult<Response> {
    Ok(Json(rollouts::list(&state.db, q.before, q.limit).await?).into_response())
}

async fn get_rollout(State(state): State<AppState>, PathParams(id): PathParams<i64>) -> ApiResult<Response> {
    Ok(Json(rollouts::get(&state.db, id).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ValidateBody {
    path: String,
    content: String,
    #[serde(default)]
    format: Option<String>,
}

/// Validates one entry without storing anything; the console's as-you-type authority.
async fn validate_entry(JsonBody(body): JsonBody<ValidateBody>) -> ApiResult<Response> {
    let format = match &body.format {
        Some(text) => text
            .parse()
            .map_err(|err: domain::format::UnknownFormat| Error::BadRequest(err.to_string()))?,
        None => domain::Format::guess(&body.path),
    };
    let error = domain::format::validate(format, body.content.as_bytes()).err();
    Ok(Json(Validation {
        path: body.path,
        format: format.as_str().to_string(),
        error,
    })
    .into_response())
}

async fn list_audit(State(state): State<AppState>, QueryParams(filter): QueryParams<AuditFilter>) -> ApiResult<Response> {
    Ok(Json(control::audit::list(&state.db, &filter).await?).into_response())
}

async fn verify_audit(State(state): State<AppState>) -> ApiResult<Response> {
    Ok(Json(state.monitor.verify_audit().await?).into_response())
}

async fn audit_head(State(state): State<AppState>) -> ApiResult<Response> {
    Ok(Json(control::audit::head(&state.db).await?).into_response())
}

async fn list_users(State(state): State<AppState>, Extension(auth): Extension<Authenticated>) -> ApiResult<Response> {
    Ok(Json(json!({"items": control::users::list(&state.db, caller(&auth)).await?, "next": null})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUserBody {
    username: String,
    role: Role,
    password: String,
}

async fn create_user(
    State(state): State<AppState>,
    Extension(auth): Extension<Authenticated>,
    JsonBody(body): JsonBody<NewUserBody>,
) -> ApiResult<Response> {
    let user = control::users::add(&state.db, &auth.caller, &body.username, body.role, body.password).await?;
    Ok((StatusCode::CREATED, Json(user)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserUpdate {
    role: Option<Role>,
    disabled: Option<bool>,
}

/// A role change or a disabled account takes effect on the user's next request: their
/// sessions end in the same transaction.
async fn update_user(
    State(state): State<AppState>,
    Extension(auth): Extension<Authenticated>,
    PathParams(name): PathParams<String>,
    JsonBody(body): JsonBody<UserUpdate>,
) -> ApiResult<Response> {
    let user = control::users::update(&state.db, &auth.caller, &name, body.role, body.disabled).await?;
    Ok(Json(user).into_response())
}

async fn add_shadow(
    State(state): State<AppState>,
    Extension(auth): Extension<Authenticated>,
    JsonBody(body): JsonBody<shadows::NewShadow>,
) -> ApiResult<Response> {
    let (view, token) = shadows::add(&state.db, caller(&auth), body).await?;
    let mut answer = serde_json::to_value(view).map_err(|err| Error::Internal(err.to_string()))?;
    if let Some(token) = token {
        // Shown this once, for the agent's --token-file; stored sealed, never returned again.
        answer["token"] = json!(token);
    }
    let mut response = (StatusCode::CREATED, Json(answer)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
    Ok(response)
}

async fn list_shadows(State(state): State<AppState>) -> ApiResult<Response> {
    Ok(Json(json!({"items": shadows::list(&state.db).await?, "next": null})).into_response())
}

async fn get_shadow(State(state): State<AppState>, PathParams(name): PathParams<String>) -> ApiResult<Response> {
    Ok(Json(shadows::get(&state.db, &name).await?).into_response())
}

async fn remove_shadow(
    State(state): State<AppState>,
    Extension(auth): Extension<Authenticated>,
    PathParams(name): PathParams<String>,
) -> ApiResult<Response> {
    shadows::remove(&state.db, &auth.caller.username, &name).await?;
    state.coordinator.registry.forget(&name);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Asks the shadow for its state now and records what it answered.
async fn check_shadow(State(state): State<AppState>, PathParams(name): PathParams<String>) -> ApiResult<Response> {
    Ok(Json(state.monitor.check(&name, Trigger::Manual).await?).into_response())
}

async fn create_webhook(
    State(state): State<AppState>,
    Extension(auth): Extension<Authenticated>,
    JsonBody(body): JsonBody<control::webhooks::NewWebhook>,
) -> ApiResult<Response> {
    let created = control::webhooks::create(&state.db, caller(&auth), body).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

async fn list_webhooks(State(state): State<AppState>, Extension(auth): Extension<Authenticated>) -> ApiResult<Response> {
    Ok(Json(json!({"items": control::webhooks::list(&state.db, caller(&auth)).await?, "next": null})).into_response())
}

#[derive(Deserialize, Default)]
struct DeliveryQuery {
    webhook: Option<i64>,
    before: Option<i64>,
    limit: Option<i64>,
}

async fn list_deliveries(
    State(state): State<AppState>,
    Extension(auth): Extension<Authenticated>,
    QueryParams(q): QueryParams<DeliveryQuery>,
) -> ApiResult<Response> {
    Ok(Json(control::webhooks::deliveries(&state.db, caller(&auth), q.webhook, q.before, q.limit).await?).into_response())
}

async fn remove_webhook(
    State(state): State<AppState>,
    Extension(auth): Extension<Authenticated>,
    PathParams(id): PathParams<i64>,
) -> ApiResult<Response> {
    control::webhooks::remove(&state.db, caller(&auth), id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn metrics(State(state): State<AppState>) -> ApiResult<Response> {
    let mut text = control::metrics::render(&state.db, &state.monitor.check_latency, state.coordinator.prepares_from_stage()).await?;
    control::metrics::render_leadership(&mut text, &state.membership.replica.id, state.coordinator.leading());
    Ok((
        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response())
}

async fn shadow_checks(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(q): QueryParams<PageQuery>,
) -> ApiResult<Response> {
    Ok(Json(state.monitor.checks(&name, q.before, q.limit).await?).into_response())
}

async fn diff_shadow(
    State(state): State<AppState>,
    Extension(auth): Extension<Authenticated>,
    PathParams(name): PathParams<String>,
) -> ApiResult<Response> {
    Ok(Json(state.monitor.shadow_diff(caller(&auth), &name).await?).into_response())
}

async fn list_incidents(State(state): State<AppState>, QueryParams(filter): QueryParams<IncidentFilter>) -> ApiResult<Response> {
    Ok(Json(incidents::list(&state.db, &filter).await?).into_response())
}

async fn get_incident(State(state): State<AppState>, PathParams(id): PathParams<i64>) -> ApiResult<Response> {
    Ok(Json(incidents::get(&state.db, id).await?).into_response())
}

#[derive(Deserialize, Default)]
struct NoteBody {
    #[serde(default)]
    note: Option<String>,
}

async fn acknowledge_incident(
    State(state): State<AppState>,
    Extension(auth): Extension<Authenticated>,
    PathParams(id): PathParams<i64>,
    JsonBody(body): JsonBody<NoteBody>,
) -> ApiResult<Response> {
    let (view, notice) = incidents::acknowledge(&state.db, caller(&auth), id, body.note.as_deref()).await?;
    state.monitor.announce(notice);
    Ok(Json(view).into_response())
}

async fn resolve_incident(
    State(state): State<AppState>,
    Extension(auth): Extension<Authenticated>,
    PathParams(id): PathParams<i64>,
    JsonBody(body): JsonBody<NoteBody>,
) -> ApiResult<Response> {
    let (view, notice) = incidents::resolve(&state.db, caller(&auth), id, body.note.as_deref()).await?;
    state.monitor.announce(notice);
    Ok(Json(view).into_response())
}

async fn adopt_incident(
    State(state): State<AppState>,
    Extension(auth): Extension<Authenticated>,
    PathParams(id): PathParams<i64>,
) -> ApiResult<Response> {
    let change = state.monitor.adopt(caller(&auth), id).await?;
    Ok((StatusCode::CREATED, Json(change)).into_response())
}

async fn cancel_rollout(
    State(state): State<AppState>,
    Extension(auth): Extension<Authenticated>,
    PathParams(id): PathParams<i64>,
) -> ApiResult<Response> {
    Ok(Json(state.coordinator.cancel(caller(&auth), id).await?).into_response())
}

async fn release_rollout_shadow(
    State(state): State<AppState>,
    Extension(auth): Extension<Authenticated>,
    PathParams((id, name)): PathParams<(i64, String)>,
) -> ApiResult<Response> {
    Ok(Json(state.coordinator.release(caller(&auth), id, &name).await?).into_response())
}

async fn reconcile_shadow(
    State(state): State<AppState>,
    Extension(auth): Extension<Authenticated>,
    PathParams(name): PathParams<String>,
) -> ApiResult<Response> {
    let view = state.coordinator.reconcile(caller(&auth), &name).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PlanQuery {
    #[serde(default)]
    validate: bool,
}

/// The rollout plan; `?validate=true` (approvers) also runs the nodes' validate hooks as
/// a dry run.
async fn plan_change(
    State(state): State<AppState>,
    Extension(auth): Extension<Authenticated>,
    PathParams(id): PathParams<i64>,
    QueryParams(q): QueryParams<PlanQuery>,
) -> ApiResult<Response> {
    Ok(Json(state.monitor.plan(caller(&auth), id, q.validate).await?).into_response())
}

async fn run_drill(
    State(state): State<AppState>,
    Extension(auth): Extension<Authenticated>,
    PathParams(name): PathParams<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    // The body is optional: no body is one health probe.
    let request: domain::api::NewDrill = if body.iter().all(u8::is_ascii_whitespace) {
        domain::api::NewDrill::default()
    } else {
        serde_json::from_slice(&body).map_err(|err| {
            Error::BadRequest(format!(
                "the body is not a drill request: {}",
                domain::format::unquoted(&err.to_string())
            ))
        })?
    };
    let requests = request.requests;
    // A drill writes to the shadow as the control plane: the leader's work.
    state.coordinator.require_leader()?;
    let (view, notice) = control::drills::run(&state.db, &state.coordinator.registry, caller(&auth), &name, requests).await?;
    if let Some(notice) = notice {
        state.monitor.announce(notice);
    }
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DrillQuery {
    shadow: Option<String>,
    before: Option<i64>,
    limit: Option<i64>,
}

async fn list_drills(State(state): State<AppState>, QueryParams(q): QueryParams<DrillQuery>) -> ApiResult<Response> {
    Ok(Json(control::drills::list(&state.db, q.shadow.as_deref(), q.before, q.limit).await?).into_response())
}

async fn get_drill(State(state): State<AppState>, PathParams(id): PathParams<i64>) -> ApiResult<Response> {
    Ok(Json(control::drills::get(&state.db, id).await?).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ImportQuery {
    message: Option<String>,
}

/// `POST /api/v1/imports`: a draft change whose content is exactly the files given, as
/// JSON (`{"message", "files": [...]}`), as a tar archive (gzip or not; `?message=`), or
/// as the console's form (multipart: `message`, an `archive` and/or `files`, whose names
/// are their paths). The form gets a redirect to the new change, or back to the Import
/// page with the reason.
async fn create_import(
    State(state): State<AppState>,
    Extension(auth): Extension<Authenticated>,
    QueryParams(q): QueryParams<ImportQuery>,
    request: axum::extract::Request,
) -> ApiResult<Response> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let message = q.message.unwrap_or_else(|| "Import".into());
    if content_type.starts_with("multipart/form-data") {
        let multipart = axum::extract::Multipart::from_request(request, &state)
            .await
            .map_err(|err| Error::BadRequest(format!("the form cannot be read: {}", err.body_text())))?;
        let outcome = match import_form(multipart).await {
            Ok(import) => control::imports::import(&state.db, caller(&auth), import).await,
            Err(err) => Err(err),
        };
        let location = match outcome {
            Ok(view) => format!("/changes/{}", view.summary.id),
            Err(err) => format!("/import?error={}", percent_encode(&err.public_message())),
        };
        return Ok((StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response());
    }
    let import = if content_type.starts_with("application/json") {
        let JsonBody(import) = JsonBody::<control::imports::NewImport>::from_request(request, &state)
            .await
            .map_err(|rejection| Error::BadRequest(format!("the body is not an import ({})", rejection.status())))?;
        import
    } else {
        let bytes = axum::body::Bytes::from_request(request, &state)
            .await
            .map_err(|_| Error::TooLarge)?;
        let files = control::imports::read_archive(&bytes).map_err(Error::BadRequest)?;
        control::imports::NewImport { message, files }
    };
    let view = control::imports::import(&state.db, caller(&auth), import).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// The console's import form: a message, an archive, and files named by their paths.
async fn import_form(mut form: axum::extract::Multipart) -> Result<control::imports::NewImport, Error> {
    let mut message = String::new();
    let mut files = Vec::new();
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|err| Error::BadRequest(format!("the form cannot be read: {}", err.body_text())))?
    {
        let name = field.name().unwrap_or_default().to_string();
        let file_name = field.file_name().map(str::to_string);
        let bytes = field
            .bytes()
            .await
            .map_err(|err| Error::BadRequest(format!("the form cannot be read: {}", err.body_text())))?;
        match name.as_str() {
            "message" => message = String::from_utf8_lossy(&bytes).into_owned(),
            "archive" if !bytes.is_empty() => files.extend(control::imports::read_archive(&bytes).map_err(Error::BadRequest)?),
            "files" if !bytes.is_empty() => {
                let path = file_name.unwrap_or_default();
                // A folder's upload names each file by its path under the folder chosen;
                // the folder's own name is not part of the entry's path.
                let path = match path.split_once('/') {
                    Some((_, rest)) if !rest.is_empty() => rest.to_string(),
                    _ => path,
                };
                let content = String::from_utf8(bytes.to_vec()).map_err(|_| Error::BadRequest(format!("{path}: not UTF-8 text")))?;
                files.push(control::imports::ImportFile {
                    path,
                    content,
                    mode: None,
                    owner: None,
                    group: None,
                    format: None,
                });
            }
            _ => {}
        }
    }
    Ok(control::imports::NewImport { message, files })
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

async fn restore_revision(
    State(state): State<AppState>,
    Extension(auth): Extension<Authenticated>,
    PathParams(n): PathParams<i64>,
) -> ApiResult<Response> {
    let view = control::imports::restore(&state.db, caller(&auth), n).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// Server-sent events: `rollout` events as rollouts progress (see `RolloutEvent`) and
/// `incident` events as incidents open, change and close (see `IncidentNotice`).
async fn events(State(state): State<AppState>) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures_util::StreamExt as _;
    // A lagging listener skips what it missed; the journal and the incidents have it all.
    let rollouts = tokio_stream::wrappers::BroadcastStream::new(state.coordinator.subscribe())
        .filter_map(|event| async move { Event::default().event("rollout").json_data(event.ok()?).ok() });
    let incidents = tokio_stream::wrappers::BroadcastStream::new(state.monitor.subscribe())
        .filter_map(|notice| async move { Event::default().event("incident").json_data(notice.ok()?).ok() });
    let stream = futures_util::stream::select(rollouts, incidents).map(Ok::<_, std::convert::Infallible>);
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response()
}

/// Unknown `/api/...` paths answer 404 in the JSON shape.
pub async fn not_found(_headers: HeaderMap) -> ApiError {
    ApiError(Error::NotFound("no such API path".into()))
}
