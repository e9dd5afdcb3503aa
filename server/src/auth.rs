//! Authentication and request guards: who is calling, cross-origin protection, and the
//! deny-by-default rule for everything that is not explicitly public.

use crate::{AppState, error::ApiError};
use axum::{
    extract::{Request, State},
    http::{HeaderMap, Method, header},
    middleware::Next,
    response::{IntoResponse, Redirect, Response},
};
use control::{Caller, Error};
use domain::Role;

/// The authenticated caller of this request (with how they proved it, see
/// [`control::Credential`]), put into the request extensions.
#[derive(Clone, Debug)]
pub struct Authenticated {
    pub caller: Caller,
}

pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

pub fn session_cookie(headers: &HeaderMap, secure: bool) -> Option<String> {
    domain::api::session_from_cookies(
        headers.get_all(header::COOKIE).iter().filter_map(|value| value.to_str().ok()),
        secure,
    )
}

/// A console server function (under `/api/`, outside the REST API's `/api/v1/`).
fn is_server_fn(path: &str) -> bool {
    path.starts_with("/api/") && !path.starts_with("/api/v1/")
}

/// A refusal in the shape the caller reads: the REST API's JSON error, or, for a console
/// server function, the server-function error encoding, so the page shows the reason (and
/// offers to sign in again) instead of failing to decode the answer.
pub(crate) fn refuse(path: &str, err: Error) -> Response {
    if !is_server_fn(path) {
        return ApiError(err).into_response();
    }
    use leptos::server_fn::error::FromServerFnError;
    let status = axum::http::StatusCode::from_u16(err.status()).unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    let message = match err {
        Error::Unauthorized => domain::api::SIGNED_OUT.to_string(),
        other => other.public_message(),
    };
    let refusal: leptos::prelude::ServerFnError = leptos::prelude::ServerFnError::ServerError(message);
    let body = refusal.ser();
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// True when the request's `Origin` names this server. Compared with the configured
/// public origin when there is one, else with the `Host` the request was sent to.
fn origin_matches(state: &AppState, headers: &HeaderMap, origin: &str) -> bool {
    if let Some(public) = &state.config.public_origin {
        return origin == public;
    }
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    origin == format!("http://{host}") || origin == format!("https://{host}")
}

/// Resolves the caller from a bearer token or the session cookie, and enforces the
/// Origin rule: a state-changing request that relies on the cookie must carry an `Origin`
/// equal to the console's own; a mismatching Origin is refused outright.
pub async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    let headers = request.headers();
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()).map(str::to_string);
    let unsafe_method = !is_safe(request.method());
    let has_bearer = bearer(headers).is_some();
    if unsafe_method
        && !has_bearer
        && let Some(origin) = &origin
        && !origin_matches(&state, headers, origin)
    {
        return refuse(&path, Error::Forbidden("cross-origin request refused".into()));
    }
    let found = if let Some(token) = bearer(headers) {
        match control::sessions::lookup_token(&state.db, token).await {
            Ok(Some(caller)) => Some(Authenticated { caller }),
            Ok(None) => return refuse(&path, Error::Unauthorized),
            Err(err) => return refuse(&path, err),
        }
    } else if let Some(secret) = session_cookie(headers, state.config.secure_cookies) {
        // A cookie alone never authorises a state change: browsers send Origin with
        // every cross-site and same-site POST, so its absence means "not a browser we trust".
        if unsafe_method && origin.is_none() {
            None
        } else {
            match control::sessions::lookup(&state.db, &secret, state.config.sessions).await {
                Ok(found) => found.map(|caller| Authenticated { caller }),
                Err(err) => return refuse(&path, err),
            }
        }
    } else {
        None
    };
    if let Some(found) = found {
        request.extensions_mut().insert(found);
    }
    next.run(request).await
}

/// Paths anyone may reach without a session. Everything else needs one.
fn is_public(method: &Method, path: &str) -> bool {
    path == "/login"
        || path == "/healthz"
        || path.starts_with("/pkg/")
        || path == "/favicon.ico"
        || (path == "/api/v1/session" && method == Method::POST)
        || path.starts_with(crate::LOGIN_SERVER_FN_PREFIX)
}

/// Deny by default: without a caller, API paths get 401 (server functions in their own
/// encoding) and pages redirect to the sign-in, which comes back to the page afterwards.
pub async fn deny_by_default(request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if request.extensions().get::<Authenticated>().is_some() || is_public(request.method(), path) {
        return next.run(request).await;
    }
    if path.starts_with("/api/") || path == "/metrics" {
        refuse(path, Error::Unauthorized)
    } else {
        let back = request.uri().path_and_query().map_or(path, |p| p.as_str());
        Redirect::to(&domain::api::login_href(back)).into_response()
    }
}

/// Per-route role check, applied from the route table.
pub async fn require_role(required: Role, request: Request, next: Next) -> Response {
    match request.extensions().get::<Authenticated>() {
        None => ApiError(Error::Unauthorized).into_response(),
        Some(found) if !found.caller.role.allows(required) => {
            ApiError(Error::Forbidden(format!("this action needs the {required} role"))).into_response()
        }
        Some(_) => next.run(request).await,
    }
}
