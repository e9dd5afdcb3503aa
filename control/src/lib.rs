//! The control plane's services over SQLite.
//!
//! Each module is one domain noun (`revisions`, `changes`, `users`, `sessions`, `audit`)
//! and exposes plain async functions that take a [`Db`] and a [`Caller`]; the REST
//! handlers and the console's server functions are thin wrappers around them, and the
//! tests call them directly. Every state change writes its audit row in the same
//! transaction. This crate knows nothing of HTTP, cookies or pages.

pub mod audit;
pub mod changes;
pub mod db;
pub mod drift;
pub mod error;
pub mod incidents;
pub mod lock;
pub mod login;
pub mod metrics;
pub mod revisions;
pub mod rollouts;
pub mod secrets;
pub mod sessions;
pub mod shadows;
pub mod tls;
pub mod users;
pub mod webhooks;

pub use db::Db;
pub use error::{Error, Result};

use domain::Role;

/// Who is asking: the authenticated user and the role in effect for this request (an API
/// token may carry a lower role than its owner).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user_id: i64,
    pub username: String,
    pub role: Role,
    /// The caller entered their password within the recent window (a session), or acts
    /// with an API token (minting one needed a recent password) or locally (the CLI).
    pub recent_password: bool,
}

impl Caller {
    /// Refuses with 403 unless the caller's role includes `required`.
    pub fn require(&self, required: Role) -> Result<()> {
        if self.role.allows(required) {
            Ok(())
        } else {
            Err(Error::Forbidden(format!("this action needs the {required} role")))
        }
    }

    /// Refuses a sensitive action (approve, roll out, reconcile, reveal, API tokens, user
    /// and role changes) unless the caller entered their password recently, so a
    /// session left open on someone's desk cannot do them.
    pub fn require_recent_password(&self) -> Result<()> {
        if self.recent_password {
            Ok(())
        } else {
            Err(Error::PasswordRequired)
        }
    }
}

/// The current time as RFC 3339 UTC with milliseconds, the one format stored everywhere.
pub fn now() -> String {
    format_time(time::OffsetDateTime::now_utc())
}

pub fn format_time(at: time::OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.millisecond()
    )
}
