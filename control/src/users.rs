//! Users and their passwords (argon2id, 19 MiB, 2 iterations, as OWASP recommends).

use crate::{Caller, Db, Error, Result, audit, now};
use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};
use domain::{Role, api::UserView};
use serde_json::json;

/// Shortest accepted password.
pub const MIN_PASSWORD_LEN: usize = 12;

fn hasher() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("constant argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Password hashes computed at once, at most: each takes 19 MiB and a core for a moment,
/// so a flood of sign-ins waits its turn instead of taking the memory and the cores.
pub const CONCURRENT_HASHES: usize = 2;

static HASHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(CONCURRENT_HASHES);

/// How long a password check waits for its turn before the server answers "busy".
const HASHING_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Runs `work` (a hash or a verification) on the blocking pool, one of at most
/// [`CONCURRENT_HASHES`]: argon2 is deliberately slow and must not stall the runtime.
async fn hashing<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let _permit = tokio::time::timeout(HASHING_WAIT, HASHING.acquire())
        .await
        .map_err(|_| Error::TooManyRequests { retry_after: 5 })?
        .map_err(|err| Error::Internal(err.to_string()))?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| Error::Internal(err.to_string()))
}

/// Hashes a password (see [`hashing`]).
pub async fn hash_password(password: String) -> Result<String> {
    hashing(move || {
        let salt = argon2::password_hash::SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        hasher()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|err| Error::Internal(format!("password hashing failed: {err}")))
    })
    .await?
}

async fn password_matches(password: String, stored: String) -> Result<bool> {
    hashing(move || PasswordHash::new(&stored).is_ok_and(|parsed| hasher().verify_password(password.as_bytes(), &parsed).is_ok())).await
}

/// A fixed hash to verify against when the user does not exist, so a login for an unknown
/// name costs the same time as one for a known name.
static DUMMY_HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn validate_username(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(Error::BadRequest(
            "username must be 1-64 characters of letters, digits, '_', '-', '.' or '@'".into(),
        ))
    }
}

fn validate_password(password: &str) -> Result<()> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(Error::BadRequest(format!(
            "password must have at least {MIN_PASSWORD_LEN} characters"
        )));
    }
    if password.len() > 1024 {
        return Err(Error::BadRequest("password is longer than 1024 bytes".into()));
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: i64,
    username: String,
    role: String,
    #[sqlx(try_from = "crate::db::Flag")]
    disabled: bool,
    created_at: String,
}

impl UserRow {
    fn into_view(self) -> Result<UserView> {
        Ok(UserView {
            id: self.id,
            role: self
                .role
                .parse()
                .map_err(|_| Error::Internal(format!("user {} has unknown role {}", self.id, self.role)))?,
            username: self.username,
            disabled: self.disabled,
            created_at: self.created_at,
        })
    }
}

/// Creates a user. `actor` is the admin (or `cli`) doing it, for the audit log.
pub async fn create(db: &Db, actor: &str, username: &str, role: Role, password: String) -> Result<UserView> {
    validate_username(username)?;
    validate_password(&password)?;
    let password_hash = hash_password(password).await?;
    let mut tx = db.begin().await?;
    let taken: Option<(i64,)> = sqlx::query_as("SELECT id FROM users WHERE username = $1")
        .bind(username)
        .fetch_optional(&mut *tx)
        .await?;
    if taken.is_some() {
        return Err(Error::conflict("user_exists", format!("user {username:?} already exists")));
    }
    let row: UserRow = sqlx::query_as(
        "INSERT INTO users (username, password_hash, role, created_at) VALUES ($1, $2, $3, $4)
         RETURNING id, username, role, disabled, created_at",
    )
    .bind(username)
    .bind(&password_hash)
    .bind(role.as_str())
    .bind(now())
    .fetch_one(&mut *tx)
    .await?;
    audit::append(&mut tx, actor, "user.create", &format!("user/{username}"), json!({"role": role})).await?;
    tx.commit().await?;
    row.into_view()
}

/// Checks a username and password; the same error for an unknown user, a wrong password
/// and a disabled account, so the answer reveals nothing.
pub async fn authenticate(db: &Db, username: &str, password: &str) -> Result<Caller> {
    let row: Option<(i64, String, String, crate::db::Flag)> =
        sqlx::query_as("SELECT id, password_hash, role, disabled FROM users WHERE username = $1")
            .bind(username)
            .fetch_optional(&db.read)
            .await?;
    let refused = || Error::Unauthorized;
    let Some((user_id, stored, role, crate::db::Flag(disabled))) = row else {
        let dummy = match DUMMY_HASH.get() {
            Some(hash) => hash.clone(),
            None => {
                let hash = hash_password("not a real password".into()).await?;
                DUMMY_HASH.get_or_init(|| hash).clone()
            }
        };
        password_matches(password.to_string(), dummy).await?;
        return Err(refused());
    };
    if !password_matches(password.to_string(), stored).await? || disabled {
        return Err(refused());
    }
    let role = role
        .parse()
        .map_err(|_| Error::Internal(format!("user {user_id} has an unknown role")))?;
    Ok(Caller {
        user_id,
        username: username.to_string(),
        role,
        // They have just entered it.
        recent_password: true,
        // Not yet a session: the sign-in makes one from this caller.
        credential: crate::Credential::Local,
    })
}

/// A user as the command line on the server's machine (or the demo) acts for them:
/// proven by being local, with a recent password (nobody else can run it there).
pub async fn local_caller(db: &Db, name: &str) -> Result<Option<Caller>> {
    Ok(all(db).await?.into_iter().find(|u| u.username == name).map(|u| Caller {
        user_id: u.id,
        username: u.username,
        role: u.role,
        recent_password: true,
        credential: crate::Credential::Local,
    }))
}

/// Every account (admins).
pub async fn list(db: &Db, caller: &Caller) -> Result<Vec<UserView>> {
    caller.require(Role::Admin)?;
    all(db).await
}

/// Every account, for the server itself (the command line, the demo).
pub async fn all(db: &Db) -> Result<Vec<UserView>> {
    let rows: Vec<UserRow> = sqlx::query_as("SELECT id, username, role, disabled, created_at FROM users ORDER BY username")
        .fetch_all(&db.read)
        .await?;
    rows.into_iter().map(UserRow::into_view).collect()
}

/// An admin creates a user, with a recent password.
pub async fn add(db: &Db, caller: &Caller, username: &str, role: Role, password: String) -> Result<UserView> {
    caller.require(Role::Admin)?;
    caller.require_person("adding a user")?;
    caller.require_recent_password()?;
    create(db, &caller.username, username, role, password).await
}

/// An admin changes another user's role and/or disables or enables them, with a recent
/// password; the user's sessions end at once. Admins cannot lock themselves out.
pub async fn update(db: &Db, caller: &Caller, username: &str, role: Option<Role>, disabled: Option<bool>) -> Result<UserView> {
    caller.require(Role::Admin)?;
    caller.require_person("changing a user")?;
    caller.require_recent_password()?;
    if role.is_none() && disabled.is_none() {
        return Err(Error::BadRequest("nothing to change: give role and/or disabled".into()));
    }
    if username == caller.username && (disabled == Some(true) || role.is_some_and(|r| r != Role::Admin)) {
        return Err(Error::BadRequest(
            "admins cannot disable or demote themselves; ask another admin".into(),
        ));
    }
    if let Some(role) = role {
        set_role(db, &caller.username, username, role).await?;
    }
    if let Some(disabled) = disabled {
        set_disabled(db, &caller.username, username, disabled).await?;
    }
    all(db)
        .await?
        .into_iter()
        .find(|u| u.username == username)
        .ok_or_else(|| Error::NotFound(format!("no user {username:?}")))
}

/// Sets a new password and ends the user's sessions and API tokens (a password changed
/// because it leaked must not leave what it minted working).
pub async fn set_password(db: &Db, actor: &str, username: &str, password: String) -> Result<()> {
    validate_password(&password)?;
    let password_hash = hash_password(password).await?;
    let mut tx = db.begin().await?;
    let (id,): (i64,) = sqlx::query_as("UPDATE users SET password_hash = $1 WHERE username = $2 RETURNING id")
        .bind(&password_hash)
        .bind(username)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no user {username:?}")))?;
    sqlx::query("DELETE FROM sessions WHERE user_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let tokens = crate::sessions::revoke_all_tokens(&mut tx, id).await?;
    audit::append(
        &mut tx,
        actor,
        "user.password",
        &format!("user/{username}"),
        json!({"tokens_revoked": tokens}),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Changes a role; the user's sessions end so the new role applies at once.
pub async fn set_role(db: &Db, actor: &str, username: &str, role: Role) -> Result<()> {
    let mut tx = db.begin().await?;
    let (id, old): (i64, String) = sqlx::query_as("SELECT id, role FROM users WHERE username = $1")
        .bind(username)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no user {username:?}")))?;
    sqlx::query("UPDATE users SET role = $1 WHERE id = $2")
        .bind(role.as_str())
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM sessions WHERE user_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    // A token never outranks its owner: lower every token above the new role.
    for higher in Role::ALL.into_iter().filter(|r| *r > role) {
        sqlx::query("UPDATE api_tokens SET role = $1 WHERE user_id = $2 AND role = $3")
            .bind(role.as_str())
            .bind(id)
            .bind(higher.as_str())
            .execute(&mut *tx)
            .await?;
    }
    audit::append(
        &mut tx,
        actor,
        "user.role",
        &format!("user/{username}"),
        json!({"from": old, "to": role}),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Disables or enables an account. Disabling ends its sessions and revokes its API tokens
/// at once (enabling it again brings none of them back).
pub async fn set_disabled(db: &Db, actor: &str, username: &str, disabled: bool) -> Result<()> {
    let mut tx = db.begin().await?;
    let (id,): (i64,) = sqlx::query_as("UPDATE users SET disabled = $1 WHERE username = $2 RETURNING id")
        .bind(crate::db::Flag(disabled))
        .bind(username)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no user {username:?}")))?;
    let mut tokens = 0;
    if disabled {
        sqlx::query("DELETE FROM sessions WHERE user_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tokens = crate::sessions::revoke_all_tokens(&mut tx, id).await?;
    }
    let action = if disabled { "user.disable" } else { "user.enable" };
    let details = if disabled { json!({"tokens_revoked": tokens}) } else { json!({}) };
    audit::append(&mut tx, actor, action, &format!("user/{username}"), details).await?;
    tx.commit().await?;
    Ok(())
}
