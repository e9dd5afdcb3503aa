//! Webhooks: incident opened, updated and resolved; rollout applied and failed.
//!
//! A delivery is queued in SQLite inside the transaction of the event it reports, then
//! POSTed as JSON with `X-Etc-Shadow-Signature: sha256=<hex HMAC-SHA256 of the body>`
//! under the webhook's secret, and retried with exponential backoff (1 s, 2 s, 4 s, … at
//! most 10 minutes apart) until a 2xx answer or [`MAX_ATTEMPTS`].

use crate::{Caller, Db, Error, Result, audit, audit::page, now};
use domain::{Role, api::Page};
use serde::Deserialize;
use serde_json::json;
use sqlx::{Sqlite, Transaction};
use std::time::Duration;

pub const EVENTS: [&str; 5] = [
    "incident.opened",
    "incident.updated",
    "incident.resolved",
    "rollout.applied",
    "rollout.failed",
];

/// Attempts before a delivery is given up as `failed`.
pub const MAX_ATTEMPTS: i64 = 8;

pub use domain::api::{DeliveryView, WebhookView};

#[derive(sqlx::FromRow)]
struct DeliveryRow {
    id: i64,
    webhook_id: i64,
    event: String,
    status: String,
    attempts: i64,
    next_attempt_at: String,
    last_status: Option<i64>,
    last_error: Option<String>,
    created_at: String,
    delivered_at: Option<String>,
}

impl From<DeliveryRow> for DeliveryView {
    fn from(row: DeliveryRow) -> Self {
        DeliveryView {
            id: row.id,
            webhook_id: row.webhook_id,
            event: row.event,
            status: row.status,
            attempts: row.attempts,
            next_attempt_at: row.next_attempt_at,
            last_status: row.last_status,
            last_error: row.last_error,
            created_at: row.created_at,
            delivered_at: row.delivered_at,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct NewWebhook {
    pub url: String,
    /// Event names; all of them when absent or empty.
    #[serde(default)]
    pub events: Vec<String>,
}

fn view(id: i64, url: String, events: String, created_by: String, created_at: String) -> WebhookView {
    WebhookView {
        id,
        url,
        events: events.split(',').filter(|e| !e.is_empty()).map(str::to_string).collect(),
        created_by,
        created_at,
        secret: None,
    }
}

pub async fn create(db: &Db, caller: &Caller, input: NewWebhook) -> Result<WebhookView> {
    caller.require(Role::Admin)?;
    let url = input.url.trim();
    let parsed = reqwest::Url::parse(url).map_err(|_| Error::BadRequest(format!("{url:?} is not a URL")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(Error::BadRequest("a webhook URL is http:// or https:// with a host".into()));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Error::BadRequest(
            "put no credentials in a webhook URL; the signature authenticates us".into(),
        ));
    }
    for event in &input.events {
        if !EVENTS.contains(&event.as_str()) {
            return Err(Error::BadRequest(format!("unknown event {event:?}; known: {}", EVENTS.join(", "))));
        }
    }
    let events = if input.events.is_empty() {
        "*".to_string()
    } else {
        input.events.join(",")
    };
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let at = now();
    let mut tx = db.begin().await?;
    let (id,): (i64,) =
        sqlx::query_as("INSERT INTO webhooks (url, secret, events, created_by, created_at) VALUES (?, ?, ?, ?, ?) RETURNING id")
            .bind(url)
            .bind(db.keys.seal_text(&format!("webhook-secret:{url}"), &secret))
            .bind(&events)
            .bind(&caller.username)
            .bind(&at)
            .fetch_one(&mut *tx)
            .await?;
    // The URL may carry a path worth keeping private; the audit keeps only its host.
    audit::append(
        &mut tx,
        &caller.username,
        "webhook.create",
        &format!("webhook/{id}"),
        json!({"host": parsed.host_str(), "events": events}),
    )
    .await?;
    tx.commit().await?;
    let mut created = view(id, url.to_string(), events, caller.username.clone(), at);
    created.secret = Some(secret);
    Ok(created)
}

pub async fn list(db: &Db) -> Result<Vec<WebhookView>> {
    let rows: Vec<(i64, String, String, String, String)> =
        sqlx::query_as("SELECT id, url, events, created_by, created_at FROM webhooks ORDER BY id")
            .fetch_all(&db.read)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(id, url, events, by, at)| view(id, url, events, by, at))
        .collect())
}

pub async fn remove(db: &Db, caller: &Caller, id: i64) -> Result<()> {
    caller.require(Role::Admin)?;
    let mut tx = db.begin().await?;
    let removed = sqlx::query("DELETE FROM webhooks WHERE id = ?").bind(id).execute(&mut *tx).await?;
    if removed.rows_affected() == 0 {
        return Err(Error::NotFound(format!("no webhook {id}")));
    }
    audit::append(&mut tx, &caller.username, "webhook.remove", &format!("webhook/{id}"), json!({})).await?;
    tx.commit().await?;
    Ok(())
}

/// The delivery log, newest first (`webhook` narrows it to one hook).
pub async fn deliveries(db: &Db, webhook: Option<i64>, before: Option<i64>, limit: Option<i64>) -> Result<Page<DeliveryView>> {
    let limit = limit.unwrap_or(50).clamp(1, 500);
    let rows: Vec<DeliveryRow> = sqlx::query_as(
        "SELECT id, webhook_id, event, status, attempts, next_attempt_at, last_status, last_error, created_at, delivered_at
         FROM webhook_deliveries WHERE (?1 IS NULL OR webhook_id = ?1) AND (?2 IS NULL OR id < ?2) ORDER BY id DESC LIMIT ?3",
    )
    .bind(webhook)
    .bind(before)
    .bind(limit + 1)
    .fetch_all(&db.read)
    .await?;
    Ok(page(rows.into_iter().map(DeliveryView::from).collect(), limit, |d| d.id))
}

/// Queues `event` for every webhook that wants it, in the caller's transaction.
pub(crate) async fn enqueue(tx: &mut Transaction<'_, Sqlite>, event: &str, data: serde_json::Value) -> Result<()> {
    let hooks: Vec<(i64, String)> = sqlx::query_as("SELECT id, events FROM webhooks").fetch_all(&mut **tx).await?;
    let at = now();
    for (id, events) in hooks {
        if events != "*" && !events.split(',').any(|e| e == event) {
            continue;
        }
        let payload = json!({"event": event, "at": at, "data": data}).to_string();
        sqlx::query(
            "INSERT INTO webhook_deliveries (webhook_id, event, payload, status, next_attempt_at, created_at) VALUES (?, ?, ?, 'pending', ?, ?)",
        )
        .bind(id)
        .bind(event)
        .bind(payload)
        .bind(&at)
        .bind(&at)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// `sha256=<hex>`: HMAC-SHA256 of `body` under `secret`, the value of the signature header.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    format!("sha256={}", hex::encode(ring::hmac::sign(&key, body).as_ref()))
}

/// Sends due deliveries, forever.
pub async fn run(db: Db) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("HTTP client");
    loop {
        if let Err(err) = deliver_due(&db, &http).await {
            tracing::warn!(%err, "webhook delivery round failed");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn deliver_due(db: &Db, http: &reqwest::Client) -> Result<()> {
    let due: Vec<(i64, String, String, String, String, i64)> = sqlx::query_as(
        "SELECT d.id, d.event, d.payload, w.url, w.secret, d.attempts FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id
         WHERE d.status = 'pending' AND d.next_attempt_at <= ? ORDER BY d.id LIMIT 20",
    )
    .bind(now())
    .fetch_all(&db.read)
    .await?;
    for (id, event, payload, url, secret, attempts) in due {
        let secret = db.keys.open_text(&format!("webhook-secret:{url}"), &secret)?;
        let result = http
            .post(&url)
            .header("content-type", "application/json")
            .header("x-etc-shadow-event", &event)
            .header("x-etc-shadow-delivery", id.to_string())
            .header("x-etc-shadow-signature", signature(&secret, payload.as_bytes()))
            .body(payload)
            .send()
            .await;
        let attempts = attempts + 1;
        let (status, error) = match result {
            Ok(response) if response.status().is_success() => (Some(i64::from(response.status().as_u16())), None),
            Ok(response) => (
                Some(i64::from(response.status().as_u16())),
                Some(format!("answered {}", response.status())),
            ),
            Err(err) => (
                None,
                Some(if err.is_timeout() {
                    "timed out".to_string()
                } else {
                    "connection failed".to_string()
                }),
            ),
        };
        let at = now();
        if error.is_none() {
            sqlx::query("UPDATE webhook_deliveries SET status = 'delivered', attempts = ?, last_status = ?, last_error = NULL, delivered_at = ? WHERE id = ?")
                .bind(attempts)
                .bind(status)
                .bind(&at)
                .bind(id)
                .execute(db.read_write())
                .await?;
        } else {
            let backoff = Duration::from_secs(1u64 << (attempts - 1).clamp(0, 9)).min(Duration::from_secs(600));
            let next = crate::format_time(time::OffsetDateTime::now_utc() + backoff);
            let state = if attempts >= MAX_ATTEMPTS { "failed" } else { "pending" };
            sqlx::query(
                "UPDATE webhook_deliveries SET status = ?, attempts = ?, last_status = ?, last_error = ?, next_attempt_at = ? WHERE id = ?",
            )
            .bind(state)
            .bind(attempts)
            .bind(status)
            .bind(error)
            .bind(next)
            .bind(id)
            .execute(db.read_write())
            .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            super::signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
