//! The one error type of the control plane's services.
//!
//! Policy: every variant maps to one HTTP status and a stable `code`; the message of a
//! client error is written for the client and may be shown as is. `Internal` carries the
//! detail for the log only: [`Error::public_message`] never reveals it. Log a failure
//! once, where it is turned into a response.

use domain::ValidationError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    BadRequest(String),
    #[error("authentication required")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    /// A sensitive action by a session whose password entry is older than the window.
    #[error("{}", domain::api::PASSWORD_REQUIRED)]
    PasswordRequired,
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("request body is too large")]
    TooLarge,
    #[error("too many failed sign-ins; try again in {retry_after} s")]
    TooManyRequests { retry_after: u64 },
    #[error("{path}: {error}")]
    Invalid { path: String, error: ValidationError },
    /// Leader-only work (a rollout, a reconcile, a check, a drill) asked of a replica that
    /// does not lead; `leader` is where the leader answers, when one is known.
    #[error("{}", not_leader_message(.leader.as_deref()))]
    NotLeader { leader: Option<String> },
    #[error("internal error: {0}")]
    Internal(String),
}

fn not_leader_message(leader: Option<&str>) -> String {
    match leader {
        Some(address) => format!("this replica does not lead; the leader is at {address}"),
        None => "no replica leads now (an election is under way, or etcd is out of reach); try again shortly".to_string(),
    }
}

impl Error {
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Error::Conflict {
            code,
            message: message.into(),
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Error::BadRequest(_) => 400,
            Error::Unauthorized => 401,
            Error::Forbidden(_) | Error::PasswordRequired => 403,
            Error::NotFound(_) => 404,
            Error::Conflict { .. } => 409,
            Error::TooLarge => 413,
            Error::TooManyRequests { .. } => 429,
            Error::Invalid { .. } => 422,
            Error::Internal(_) => 500,
            Error::NotLeader { .. } => 503,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Error::BadRequest(_) => "bad_request",
            Error::Unauthorized => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::PasswordRequired => "password_required",
            Error::NotFound(_) => "not_found",
            Error::Conflict { code, .. } => code,
            Error::TooLarge => "too_large",
            Error::TooManyRequests { .. } => "too_many_requests",
            Error::Invalid { .. } => "invalid_config",
            Error::Internal(_) => "internal",
            Error::NotLeader { .. } => "not_leader",
        }
    }

    /// What the client may see.
    pub fn public_message(&self) -> String {
        match self {
            Error::Internal(_) => "internal error; see the server log".to_string(),
            other => other.to_string(),
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::RowNotFound => Error::NotFound("not found".to_string()),
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                Error::conflict("conflict", "a concurrent update got there first; retry")
            }
            // PostgreSQL keeps no NUL character in text ("invalid byte sequence"): the input
            // is refused as a whole, and its transaction changes nothing.
            sqlx::Error::Database(db) if db.code().as_deref() == Some("22021") => {
                Error::BadRequest("text may not contain the character U+0000 (NUL)".into())
            }
            _ => Error::Internal(err.to_string()),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for Error {
    fn from(err: sqlx::migrate::MigrateError) -> Self {
        Error::Internal(format!("migration failed: {err}"))
    }
}
