//! Server-side sessions and API tokens. Only blake3 hashes of the secrets are stored.

use crate::{Caller, Db, Error, Result, audit, format_time, now};
use domain::Role;
use serde_json::json;

pub use domain::api::{NewToken, TOKEN_DAYS_DEFAULT, TOKEN_DAYS_MAX, TokenView};

/// How long sessions last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// From login, whatever the activity (absolute timeout).
    pub lifetime: time::Duration,
    /// Without a request (idle timeout).
    pub idle: time::Duration,
    /// Sensitive actions need a password entry (sign-in or confirmation) this recent.
    pub recent_password: time::Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            lifetime: time::Duration::hours(12),
            idle: time::Duration::minutes(30),
            recent_password: time::Duration::minutes(5),
        }
    }
}

/// `last_seen_at` is written at most this often per session, not on every request.
const SEEN_GRANULARITY: time::Duration = time::Duration::seconds(15);

/// Prefix of API tokens, so they are recognisable in a secret scanner.
pub const TOKEN_PREFIX: &str = "esk_";

fn secret_hash(secret: &str) -> String {
    blake3::derive_key("etc-shadow 2026-11 credential v1", secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn random_secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// Starts a new session for an authenticated caller; returns the cookie value. Every login
/// makes a fresh id, so an id planted before login is worthless after it.
pub async fn create(db: &Db, caller: &Caller, policy: Policy) -> Result<String> {
    let secret = random_secret();
    let created = time::OffsetDateTime::now_utc();
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO sessions (id_hash, user_id, created_at, last_seen_at, expires_at, password_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(secret_hash(&secret))
    .bind(caller.user_id)
    .bind(format_time(created))
    .bind(format_time(created))
    .bind(format_time(created + policy.lifetime))
    .bind(format_time(created))
    .execute(&mut *tx)
    .await?;
    audit::append(
        &mut tx,
        &caller.username,
        "session.login",
        &format!("user/{}", caller.username),
        json!({}),
    )
    .await?;
    tx.commit().await?;
    Ok(secret)
}

/// The caller behind a session cookie, if the session is live (within its lifetime and
/// used within the idle timeout) and the user enabled. Each use keeps it alive.
pub async fn lookup(db: &Db, secret: &str, policy: Policy) -> Result<Option<Caller>> {
    let now = time::OffsetDateTime::now_utc();
    let id_hash = secret_hash(secret);
    let row: Option<(i64, String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT u.id, u.username, u.role, s.last_seen_at, s.password_at FROM sessions s JOIN users u ON u.id = s.user_id
         WHERE s.id_hash = $1 AND s.expires_at > $2 AND s.last_seen_at > $3 AND u.disabled = 0",
    )
    .bind(&id_hash)
    .bind(format_time(now))
    .bind(format_time(now - policy.idle))
    .fetch_optional(&db.read)
    .await?;
    let Some((user_id, username, role, last_seen, password_at)) = row else {
        return Ok(None);
    };
    let parse = |at: &str| time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok();
    let stale = parse(&last_seen).is_none_or(|seen| now - seen > SEEN_GRANULARITY.min(policy.idle / 4));
    let recent_password = password_at
        .as_deref()
        .and_then(parse)
        .is_some_and(|at| now - at < policy.recent_password);
    if stale {
        sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE id_hash = $2")
            .bind(format_time(now))
            .bind(&id_hash)
            .execute(db.read_write())
            .await?;
    }
    to_caller(
        (user_id, username, role),
        recent_password,
        crate::Credential::Session(secret.to_string()),
    )
    .map(Some)
}

/// Checks the caller's password again under the sign-in limits (a stolen session cannot
/// guess it faster than a sign-in could) and, for a session, records the entry so the
/// recent window for sensitive actions opens. Returns the caller with a recent password
/// (for this request only, with a token).
pub async fn reconfirm(
    db: &Db,
    limits: &crate::login::Limits,
    caller: &Caller,
    password: &str,
    client: Option<std::net::IpAddr>,
) -> Result<Caller> {
    match crate::login::sign_in(db, limits, &caller.username, password, client).await {
        Ok(_) => {}
        Err(Error::Unauthorized) => return Err(Error::Forbidden("wrong password".into())),
        Err(other) => return Err(other),
    }
    if let Some(secret) = caller.session() {
        record_password(db, secret, caller).await?;
    }
    Ok(Caller {
        recent_password: true,
        ..caller.clone()
    })
}

/// The signed-in user enters their password again (`POST /api/v1/session/confirm`, the
/// console's prompt): a token has no session whose window could open.
pub async fn confirm(
    db: &Db,
    limits: &crate::login::Limits,
    caller: &Caller,
    password: &str,
    client: Option<std::net::IpAddr>,
) -> Result<Caller> {
    if caller.session().is_none() {
        return Err(Error::BadRequest("no session to confirm: this request used an API token".into()));
    }
    reconfirm(db, limits, caller, password, client).await
}

/// The caller for reading secret values: with `password`, checked again now; without,
/// a session's recent entry (a token alone reveals nothing).
pub async fn with_typed_password(
    db: &Db,
    limits: &crate::login::Limits,
    caller: &Caller,
    password: Option<&str>,
    client: Option<std::net::IpAddr>,
) -> Result<Caller> {
    match password {
        Some(password) => reconfirm(db, limits, caller, password, client).await,
        None => {
            caller.require_typed_password()?;
            Ok(caller.clone())
        }
    }
}

/// Records that the session's user entered their password again.
async fn record_password(db: &Db, secret: &str, caller: &Caller) -> Result<()> {
    let mut tx = db.begin().await?;
    let done = sqlx::query("UPDATE sessions SET password_at = $1 WHERE id_hash = $2 AND user_id = $3")
        .bind(now())
        .bind(secret_hash(secret))
        .bind(caller.user_id)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(Error::Unauthorized);
    }
    audit::append(
        &mut tx,
        &caller.username,
        "session.confirm",
        &format!("user/{}", caller.username),
        json!({}),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Forgets sessions past their lifetime or idle timeout (they are refused anyway).
pub async fn purge_expired(db: &Db, policy: Policy) -> Result<u64> {
    let now = time::OffsetDateTime::now_utc();
    let done = sqlx::query("DELETE FROM sessions WHERE expires_at <= $1 OR last_seen_at <= $2")
        .bind(format_time(now))
        .bind(format_time(now - policy.idle))
        .execute(db.read_write())
        .await?;
    Ok(done.rows_affected())
}

fn to_caller((user_id, username, role): (i64, String, String), recent_password: bool, credential: crate::Credential) -> Result<Caller> {
    let role = role
        .parse()
        .map_err(|_| Error::Internal(format!("user {user_id} has an unknown role")))?;
    Ok(Caller {
        user_id,
        username,
        role,
        recent_password,
        credential,
    })
}

/// Ends the caller's session server-side (a token has none to end).
pub async fn end(db: &Db, caller: &Caller) -> Result<()> {
    let secret = caller
        .session()
        .ok_or_else(|| Error::BadRequest("no session to end: this request used an API token".into()))?;
    let mut tx = db.begin().await?;
    sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
        .bind(secret_hash(secret))
        .execute(&mut *tx)
        .await?;
    audit::append(
        &mut tx,
        &caller.username,
        "session.logout",
        &format!("user/{}", caller.username),
        json!({}),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A new API token; the secret is returned once and only its hash is kept. It works for
/// `days` (default [`TOKEN_DAYS_DEFAULT`], at most [`TOKEN_DAYS_MAX`]), until revoked, or
/// until its owner's password changes or the account is disabled. Only a person signed in
/// makes one: a token cannot mint successors that would outlive its revocation.
pub async fn create_token(db: &Db, caller: &Caller, name: &str, role: Option<Role>, days: Option<i64>) -> Result<NewToken> {
    caller.require_person("creating an API token")?;
    caller.require_recent_password()?;
    let role = role.unwrap_or(caller.role);
    if !caller.role.allows(role) {
        return Err(Error::Forbidden(format!(
            "a token cannot have a higher role than its owner ({})",
            caller.role
        )));
    }
    let name = name.trim();
    if name.is_empty() || name.len() > 100 {
        return Err(Error::BadRequest("token name must be 1-100 characters".into()));
    }
    let days = days.unwrap_or(TOKEN_DAYS_DEFAULT);
    if !(1..=TOKEN_DAYS_MAX).contains(&days) {
        return Err(Error::BadRequest(format!(
            "a token works for 1 to {TOKEN_DAYS_MAX} days (default {TOKEN_DAYS_DEFAULT})"
        )));
    }
    let expires_at = format_time(time::OffsetDateTime::now_utc() + time::Duration::days(days));
    let token = format!("{TOKEN_PREFIX}{}", random_secret());
    let mut tx = db.begin().await?;
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO api_tokens (user_id, name, token_hash, role, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(caller.user_id)
    .bind(name)
    .bind(secret_hash(&token))
    .bind(role.as_str())
    .bind(now())
    .bind(&expires_at)
    .fetch_one(&mut *tx)
    .await?;
    audit::append(
        &mut tx,
        &caller.username,
        "token.create",
        &format!("token/{id}"),
        json!({"name": name, "role": role, "expires_at": expires_at}),
    )
    .await?;
    tx.commit().await?;
    Ok(NewToken {
        id,
        name: name.to_string(),
        role,
        token,
        expires_at,
    })
}

/// The caller behind a bearer token: the token's role, never above its owner's current
/// role; nobody once it expired or was revoked, or its owner is disabled. Each use is
/// recorded in `last_used_at`, to the minute.
pub async fn lookup_token(db: &Db, token: &str) -> Result<Option<Caller>> {
    let now = time::OffsetDateTime::now_utc();
    let row: Option<(i64, i64, String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT t.id, u.id, u.username, u.role, t.role, t.last_used_at FROM api_tokens t JOIN users u ON u.id = t.user_id
         WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND t.expires_at > $2 AND u.disabled = 0",
    )
    .bind(secret_hash(token))
    .bind(format_time(now))
    .fetch_optional(&db.read)
    .await?;
    let Some((token_id, user_id, username, user_role, token_role, last_used)) = row else {
        return Ok(None);
    };
    let parse = |at: &str| time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok();
    if last_used
        .as_deref()
        .and_then(parse)
        .is_none_or(|used| now - used > TOKEN_USE_GRANULARITY)
    {
        sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2")
            .bind(format_time(now))
            .bind(token_id)
            .execute(db.read_write())
            .await?;
    }
    let owner = to_caller((user_id, username, user_role), false, crate::Credential::Token(token_id))?;
    let token_role: Role = token_role
        .parse()
        .map_err(|_| Error::Internal("token has an unknown role".into()))?;
    Ok(Some(Caller {
        role: token_role.min(owner.role),
        ..owner
    }))
}

/// `last_used_at` of a token is written at most this often.
const TOKEN_USE_GRANULARITY: time::Duration = time::Duration::minutes(1);

/// Revokes every live token of a user (a password change, a disabled account); answers
/// how many.
pub(crate) async fn revoke_all_tokens(tx: &mut crate::db::Tx, user_id: i64) -> Result<u64> {
    let done = sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL")
        .bind(now())
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected())
}

/// The caller's tokens; an admin sees everyone's.
pub async fn list_tokens(db: &Db, caller: &Caller) -> Result<Vec<TokenView>> {
    #[allow(clippy::type_complexity)]
    let rows: Vec<(i64, String, String, String, String, Option<String>, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT t.id, u.username AS owner, t.name, t.role, t.created_at, t.expires_at, t.last_used_at, t.revoked_at
         FROM api_tokens t JOIN users u ON u.id = t.user_id
         WHERE $1 OR t.user_id = $2 ORDER BY t.id DESC",
    )
    .bind(caller.role == Role::Admin)
    .bind(caller.user_id)
    .fetch_all(&db.read)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(id, owner, name, role, created_at, expires_at, last_used_at, revoked_at)| TokenView {
                id,
                owner,
                name,
                role,
                created_at,
                expires_at,
                last_used_at,
                revoked_at,
            },
        )
        .collect())
}

/// Revokes a token: its owner or an admin. Another user's token is "not found" to a
/// non-admin, so ids reveal nothing.
pub async fn revoke_token(db: &Db, caller: &Caller, id: i64) -> Result<()> {
    let mut tx = db.begin().await?;
    let done = sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL AND ($3 OR user_id = $4)")
        .bind(now())
        .bind(id)
        .bind(caller.role == Role::Admin)
        .bind(caller.user_id)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound(format!("no active token {id} of yours")));
    }
    audit::append(&mut tx, &caller.username, "token.revoke", &format!("token/{id}"), json!({})).await?;
    tx.commit().await?;
    Ok(())
}
