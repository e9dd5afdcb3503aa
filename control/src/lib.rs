//! The control plane's services over SQLite.
//!
//! Each module is one domain noun (`revisions`, `changes`, `users`, `sessions`, `audit`)
//! and exposes plain async functions that take a [`Db`] and a [`Caller`]; the REST
//! handlers and the console's server functions are thin wrappers around them, and the
//! tests call them directly. Every state change writes its audit row in the same
//! transaction. This crate knows nothing of HTTP, cookies or pages.

pub mod audit;
pub mod bus;
pub mod changes;
pub mod cluster;
pub mod db;
pub mod dialect;
pub mod drift;
pub mod drills;
pub mod error;
pub mod etcd;
pub mod etcd_local;
pub mod hooks;
pub mod imports;
pub mod incidents;
pub mod lock;
pub mod login;
pub mod metrics;
pub mod plans;
pub mod prestage;
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

/// How a caller proved who they are. The rules that depend on it (a token cannot mint
/// tokens or manage users, reveals nothing without the password typed again, has no
/// session to confirm or end) are applied by the services, so every door (REST, the
/// console's server functions, the command line) gets the same answer.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A signed-in session, by its secret (to confirm or end it).
    Session(String),
    /// An API token, by its id.
    Token(i64),
    /// The server's own process: the command line on its machine, the demo, tests.
    Local,
}

/// Never shows a session's secret.
impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Session(_) => f.write_str("Session(..)"),
            Credential::Token(id) => write!(f, "Token({id})"),
            Credential::Local => f.write_str("Local"),
        }
    }
}

/// Who is asking: the authenticated user, the role in effect for this request (an API
/// token may carry a lower role than its owner), and how they proved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user_id: i64,
    pub username: String,
    pub role: Role,
    /// The caller typed their password within the recent window (a session's sign-in or
    /// confirmation, a password given with this request), or acts locally. Never true of an
    /// API token alone.
    pub recent_password: bool,
    pub credential: Credential,
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

    /// Refuses a sensitive action (approve, roll out, reconcile, API tokens, user and role
    /// changes) unless the caller entered their password recently, so a session left open
    /// on someone's desk cannot do them. An API token passes: minting it needed a recent
    /// password, and automation cannot type one.
    pub fn require_recent_password(&self) -> Result<()> {
        if self.recent_password || matches!(self.credential, Credential::Token(_)) {
            Ok(())
        } else {
            Err(Error::PasswordRequired)
        }
    }

    /// Refuses unless the password was typed within the recent window, with a token too:
    /// for reading secret values, which a leaked token alone must not do.
    pub fn require_typed_password(&self) -> Result<()> {
        if self.recent_password {
            Ok(())
        } else {
            Err(Error::PasswordRequired)
        }
    }

    /// Refuses an API token: `what` (managing tokens and users) needs a person signed in,
    /// so a leaked token cannot make successors that outlive its revocation.
    pub fn require_person(&self, what: &str) -> Result<()> {
        match self.credential {
            Credential::Token(_) => Err(Error::Forbidden(format!("{what} needs a signed-in session, not an API token"))),
            Credential::Session(_) | Credential::Local => Ok(()),
        }
    }

    /// The session the caller signed in with, if any.
    pub fn session(&self) -> Option<&str> {
        match &self.credential {
            Credential::Session(secret) => Some(secret),
            Credential::Token(_) | Credential::Local => None,
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
