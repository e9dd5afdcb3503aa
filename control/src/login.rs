//! Sign-in with brute-force protection: failed attempts are counted per account and per
//! client address in SQLite (a restart does not reset them), and past a few free
//! failures each further one doubles a wait (1 s, 2 s, 4 s … up to a cap): backoff, not a
//! permanent lockout, so an attacker cannot lock the real user out for good. While a wait
//! runs, attempts are refused (429 with Retry-After) before any password is checked, and
//! each attempt is counted before its password is (see [`sign_in`]); password hashing runs
//! a bounded number at a time (see [`crate::users`]).

use crate::{Caller, Db, Error, Result, format_time};
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Failures on one account before waits start.
    pub account_free: i64,
    /// Failures from one client address (any names) before waits start.
    pub address_free: i64,
    /// The first wait; each further failure doubles it.
    pub base: time::Duration,
    /// The longest wait.
    pub max: time::Duration,
    /// Failures older than this are forgotten.
    pub memory: time::Duration,
    /// Rows kept for names without an account, and for addresses (each pool).
    pub pool_cap: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            account_free: 5,
            address_free: 20,
            base: time::Duration::seconds(1),
            max: time::Duration::minutes(15),
            memory: time::Duration::hours(24),
            pool_cap: 10_000,
        }
    }
}

/// The throttle key of a client address: IPv4 as is, IPv6 by its /64 (one host owns one).
fn address_key(address: IpAddr) -> String {
    match address {
        IpAddr::V4(v4) => format!("addr:{v4}"),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("addr:{v4}"),
            None => {
                let s = v6.segments();
                format!("addr:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// Checks a username and password under the limits; `client` is the peer address of the
/// connection (never a header a client can set).
///
/// The attempt is counted as a failure before the password is checked, in the same write
/// transaction as the look at the block ([`charge`]): parallel guesses are serialised by
/// the single writer, so no more of them reach the password check than the limits let
/// through one by one. A right password takes its own charge back ([`forgive`]). A wrong
/// one is audited and logged, naming the account only when one has that name (a password
/// typed into the name field must not end up in the log).
pub async fn sign_in(db: &Db, limits: &Limits, username: &str, password: &str, client: Option<IpAddr>) -> Result<Caller> {
    let account: Option<(i64,)> = sqlx::query_as("SELECT id FROM users WHERE username = $1")
        .bind(username)
        .fetch_optional(&db.read)
        .await?;
    let mut keys = vec![match account {
        Some((id,)) => (format!("user:{id}"), "account", limits.account_free),
        // Unknown names are throttled too, so the answer does not tell which names exist.
        None => (
            format!("name:{}", username.chars().take(64).collect::<String>()),
            "name",
            limits.account_free,
        ),
    }];
    if let Some(client) = client {
        keys.push((address_key(client), "address", limits.address_free));
    }
    charge(db, limits, &keys).await?;
    match crate::users::authenticate(db, username, password).await {
        Ok(caller) => {
            forgive(db, &keys).await?;
            Ok(caller)
        }
        Err(Error::Unauthorized) => {
            let who = if account.is_some() { username } else { "(no such account)" };
            let address = client.map_or_else(|| "unknown".to_string(), |client| client.to_string());
            tracing::warn!(account = who, address = %address, "sign-in refused: wrong name or password");
            let mut tx = db.begin().await?;
            crate::audit::append(
                &mut tx,
                "anonymous",
                "session.login_failed",
                &format!("user/{who}"),
                serde_json::json!({ "address": address }),
            )
            .await?;
            tx.commit().await?;
            Err(Error::Unauthorized)
        }
        // Not an answer about the password (the server was busy hashing, the database
        // failed): the attempt takes its charge back.
        Err(other) => {
            refund(db, &keys).await?;
            Err(other)
        }
    }
}

/// Refuses the attempt while one of its keys waits out a block; otherwise counts it as a
/// failure of every key (starting a block where that reaches the free failures), in one
/// transaction.
async fn charge(db: &Db, limits: &Limits, keys: &[(String, &str, i64)]) -> Result<()> {
    let now = time::OffsetDateTime::now_utc();
    let mut tx = db.begin().await?;
    for (key, _, _) in keys {
        let blocked: Option<(String,)> = sqlx::query_as("SELECT blocked_until FROM login_throttle WHERE key = $1 AND blocked_until > $2")
            .bind(key)
            .bind(format_time(now))
            .fetch_optional(&mut *tx)
            .await?;
        if let Some((until,)) = blocked {
            let until = time::OffsetDateTime::parse(&until, &time::format_description::well_known::Rfc3339).unwrap_or(now);
            let wait = (until - now).whole_seconds().max(0) as u64 + 1;
            return Err(Error::TooManyRequests { retry_after: wait });
        }
    }
    for (key, pool, free) in keys {
        // Failures older than the memory start the count again.
        let (failures,): (i64,) = sqlx::query_as(
            "INSERT INTO login_throttle (key, pool, failures, last_failure_at) VALUES ($1, $2, 1, $3)
             ON CONFLICT (key) DO UPDATE SET
               failures = CASE WHEN login_throttle.last_failure_at < $4 THEN 1 ELSE login_throttle.failures + 1 END,
               last_failure_at = $3
             RETURNING failures",
        )
        .bind(key)
        .bind(pool)
        .bind(format_time(now))
        .bind(format_time(now - limits.memory))
        .fetch_one(&mut *tx)
        .await?;
        if failures >= *free {
            let doublings = u32::try_from((failures - free).min(30)).unwrap_or(30);
            let wait = (limits.base * 2f64.powi(doublings as i32)).min(limits.max);
            sqlx::query("UPDATE login_throttle SET blocked_until = $1 WHERE key = $2")
                .bind(format_time(now + wait))
                .bind(key)
                .execute(&mut *tx)
                .await?;
        }
        if *pool != "account" {
            // The capped pools: past the cap, the oldest go.
            sqlx::query(
                "DELETE FROM login_throttle WHERE key IN (
                   SELECT key FROM login_throttle WHERE pool = $1 ORDER BY last_failure_at DESC LIMIT 9223372036854775807 OFFSET $2)",
            )
            .bind(pool)
            .bind(limits.pool_cap)
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

/// No answer about the password: every key gets back the failure this attempt was charged
/// (and loses a block that charge started), nothing more.
async fn refund(db: &Db, keys: &[(String, &str, i64)]) -> Result<()> {
    let mut tx = db.begin().await?;
    take_back(&mut tx, keys).await?;
    tx.commit().await?;
    Ok(())
}

/// A right password: the account starts afresh, and the address gets back the failure this
/// attempt was charged (and loses a block that charge started).
async fn forgive(db: &Db, keys: &[(String, &str, i64)]) -> Result<()> {
    let mut tx = db.begin().await?;
    sqlx::query("DELETE FROM login_throttle WHERE key = $1")
        .bind(&keys[0].0)
        .execute(&mut *tx)
        .await?;
    take_back(&mut tx, &keys[1..]).await?;
    tx.commit().await?;
    Ok(())
}

/// Takes this attempt's charge back from each key.
async fn take_back(tx: &mut crate::db::Tx, keys: &[(String, &str, i64)]) -> Result<()> {
    for (key, _, free) in keys {
        sqlx::query(
            "UPDATE login_throttle SET
               blocked_until = CASE WHEN failures - 1 < $2 THEN NULL ELSE blocked_until END,
               failures = CASE WHEN failures > 0 THEN failures - 1 ELSE 0 END
             WHERE key = $1",
        )
        .bind(key)
        .bind(free)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Rows in the throttle table, by pool (for tests and metrics).
pub async fn rows(db: &Db) -> Result<Vec<(String, i64)>> {
    Ok(
        sqlx::query_as("SELECT pool, COUNT(*) FROM login_throttle GROUP BY pool ORDER BY pool")
            .fetch_all(&db.read)
            .await?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_grouped_by_their_64_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        assert_eq!(address_key("::ffff:10.0.0.1".parse().unwrap()), "addr:10.0.0.1");
    }
}
