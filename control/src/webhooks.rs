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
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

pub const EVENTS: [&str; 8] = [
    "incident.opened",
    "incident.updated",
    "incident.resolved",
    "rollout.applied",
    "rollout.incomplete",
    "rollout.failed",
    "drill.passed",
    "drill.failed",
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
    if !db.webhook_internal {
        refuse_internal(&parsed).await?;
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
        sqlx::query_as("INSERT INTO webhooks (url, secret, events, created_by, created_at) VALUES ($1, $2, $3, $4, $5) RETURNING id")
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

/// The webhooks (admins).
pub async fn list(db: &Db, caller: &Caller) -> Result<Vec<WebhookView>> {
    caller.require(Role::Admin)?;
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
    let removed = sqlx::query("DELETE FROM webhooks WHERE id = $1").bind(id).execute(&mut *tx).await?;
    if removed.rows_affected() == 0 {
        return Err(Error::NotFound(format!("no webhook {id}")));
    }
    audit::append(&mut tx, &caller.username, "webhook.remove", &format!("webhook/{id}"), json!({})).await?;
    tx.commit().await?;
    Ok(())
}

/// The delivery log, newest first (`webhook` narrows it to one hook).
/// Deliveries, newest first (admins).
pub async fn deliveries(
    db: &Db,
    caller: &Caller,
    webhook: Option<i64>,
    before: Option<i64>,
    limit: Option<i64>,
) -> Result<Page<DeliveryView>> {
    caller.require(Role::Admin)?;
    let limit = limit.unwrap_or(50).clamp(1, 500);
    let rows: Vec<DeliveryRow> = sqlx::query_as(
        "SELECT id, webhook_id, event, status, attempts, next_attempt_at, last_status, last_error, created_at, delivered_at
         FROM webhook_deliveries WHERE ($1 IS NULL OR webhook_id = $1) AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
    )
    .bind(webhook)
    .bind(before)
    .bind(limit + 1)
    .fetch_all(&db.read)
    .await?;
    Ok(page(rows.into_iter().map(DeliveryView::from).collect(), limit, |d| d.id))
}

/// Queues `event` for every webhook that wants it, in the caller's transaction.
pub(crate) async fn enqueue(tx: &mut crate::db::Tx, event: &str, data: serde_json::Value) -> Result<()> {
    let hooks: Vec<(i64, String)> = sqlx::query_as("SELECT id, events FROM webhooks").fetch_all(&mut **tx).await?;
    let at = now();
    for (id, events) in hooks {
        if events != "*" && !events.split(',').any(|e| e == event) {
            continue;
        }
        let payload = json!({"event": event, "at": at, "data": data}).to_string();
        sqlx::query(
            "INSERT INTO webhook_deliveries (webhook_id, event, payload, status, next_attempt_at, created_at) VALUES ($1, $2, $3, 'pending', $4, $5)",
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

/// True for addresses inside the network or the host, or that lead there: loopback,
/// private, link-local (the cloud metadata service at 169.254.169.254 among them),
/// carrier-grade NAT, benchmarking (198.18/15), IETF protocol assignments (192.0.0/24),
/// reserved (240/4), unspecified, broadcast, multicast; IPv6 unique-local, link- and
/// site-local; and every IPv6 form that carries an IPv4 address (mapped, compatible, NAT64
/// 64:ff9b::/96 and 64:ff9b:1::/48, 6to4 2002::/16, Teredo 2001::/32), which is judged by
/// that address (Teredo's is obfuscated, so it is refused outright).
pub fn internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || (a == 192 && b == 0 && c == 0)
                || a >= 240
        }
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            let first = segments[0];
            let embedded = |high: u16, low: u16| Ipv4Addr::new((high >> 8) as u8, high as u8, (low >> 8) as u8, low as u8);
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || (first & 0xffc0) == 0xfec0
                || v6.to_ipv4_mapped().is_some_and(|v4| internal(IpAddr::V4(v4)))
                // IPv4-compatible (::a.b.c.d, deprecated) and NAT64 (64:ff9b::/96): the
                // IPv4 address in the last 32 bits.
                || (segments[..6] == [0; 6] && internal(IpAddr::V4(embedded(segments[6], segments[7]))))
                || (segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] && internal(IpAddr::V4(embedded(segments[6], segments[7]))))
                // NAT64 for local use: whatever it translates to.
                || (segments[0] == 0x64 && segments[1] == 0xff9b && segments[2] == 1)
                // 6to4: the IPv4 address in bits 16..48.
                || (first == 0x2002 && internal(IpAddr::V4(embedded(segments[1], segments[2]))))
                || (first == 0x2001 && segments[1] == 0)
        }
    }
}

/// The address a URL names literally (`http://10.0.0.7/`), if it does.
fn literal_address(url: &reqwest::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        url::Host::Domain(_) => None,
    }
}

fn internal_refusal(host: &str) -> String {
    format!("{host} is an internal address; a webhook may reach it only when the server runs with --webhook-allow-internal")
}

/// Refuses a URL whose host is, or resolves only to, internal addresses. A name that does
/// not resolve now is let through: delivery checks again (see [`PublicOnly`]).
async fn refuse_internal(url: &reqwest::Url) -> Result<()> {
    let host = url.host_str().unwrap_or_default();
    let internal_only = match literal_address(url) {
        Some(ip) => internal(ip),
        None => match tokio::net::lookup_host((host, 0)).await {
            Ok(found) => {
                let found: Vec<SocketAddr> = found.collect();
                !found.is_empty() && found.iter().all(|addr| internal(addr.ip()))
            }
            Err(_) => false,
        },
    };
    if internal_only {
        return Err(Error::BadRequest(internal_refusal(host)));
    }
    Ok(())
}

/// The resolver of webhook deliveries when internal addresses are refused: a name is
/// resolved at each connection and only its public addresses are used, so a name that
/// changes to an internal address after it was registered (DNS rebinding) reaches nothing.
pub struct PublicOnly;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct InternalAddress(String);

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let name = name.as_str().to_string();
        Box::pin(async move {
            let public: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await?
                .filter(|addr| !internal(addr.ip()))
                .collect();
            if public.is_empty() {
                return Err(Box::new(InternalAddress(internal_refusal(&name))) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Why a delivery could not be sent, in words fit for the delivery log (never the URL's
/// path or the payload).
fn send_error(err: &reqwest::Error) -> String {
    let mut source: Option<&dyn std::error::Error> = Some(err);
    while let Some(error) = source {
        if let Some(internal) = error.downcast_ref::<InternalAddress>() {
            return format!("refused: {internal}");
        }
        source = error.source();
    }
    if err.is_timeout() {
        "timed out".to_string()
    } else {
        "connection failed".to_string()
    }
}

/// Sends due deliveries, forever.
pub async fn run(db: Db) {
    // No proxy from the environment (HTTP_PROXY, HTTPS_PROXY): the resolver check below
    // would then judge the proxy's address, and the proxy would reach the named target,
    // internal or not.
    let mut http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    if !db.webhook_internal {
        http = http.dns_resolver(Arc::new(PublicOnly));
    }
    let http = http.build().expect("HTTP client");
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
         WHERE d.status = 'pending' AND d.next_attempt_at <= $1 ORDER BY d.id LIMIT 20",
    )
    .bind(now())
    .fetch_all(&db.read)
    .await?;
    for (id, event, payload, url, secret, attempts) in due {
        let secret = db.keys.open_text(&format!("webhook-secret:{url}"), &secret)?;
        // Registered while internal addresses were allowed: an address literal is not
        // resolved, so it is checked here.
        let refused = reqwest::Url::parse(&url)
            .ok()
            .and_then(|parsed| literal_address(&parsed))
            .filter(|ip| !db.webhook_internal && internal(*ip))
            .map(|ip| format!("refused: {}", internal_refusal(&ip.to_string())));
        let attempts = attempts + 1;
        let (status, error) = match refused {
            Some(refused) => (None, Some(refused)),
            None => {
                let result = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("x-etc-shadow-event", &event)
                    .header("x-etc-shadow-delivery", id.to_string())
                    .header("x-etc-shadow-signature", signature(&secret, payload.as_bytes()))
                    .body(payload)
                    .send()
                    .await;
                match result {
                    Ok(response) if response.status().is_success() => (Some(i64::from(response.status().as_u16())), None),
                    Ok(response) => (
                        Some(i64::from(response.status().as_u16())),
                        Some(format!("answered {}", response.status())),
                    ),
                    Err(err) => (None, Some(send_error(&err))),
                }
            }
        };
        let at = now();
        // Marked in a transaction of the leader's term (its handle is fenced): a deposed
        // leader that wakes marks nothing, and a delivery already marked is not touched.
        let mut tx = db.begin().await?;
        if error.is_none() {
            sqlx::query("UPDATE webhook_deliveries SET status = 'delivered', attempts = $1, last_status = $2, last_error = NULL, delivered_at = $3 WHERE id = $4 AND status = 'pending'")
                .bind(attempts)
                .bind(status)
                .bind(&at)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        } else {
            let backoff = Duration::from_secs(1u64 << (attempts - 1).clamp(0, 9)).min(Duration::from_secs(600));
            let next = crate::format_time(time::OffsetDateTime::now_utc() + backoff);
            let state = if attempts >= MAX_ATTEMPTS { "failed" } else { "pending" };
            sqlx::query(
                "UPDATE webhook_deliveries SET status = $1, attempts = $2, last_status = $3, last_error = $4, next_attempt_at = $5 WHERE id = $6 AND status = 'pending'",
            )
            .bind(state)
            .bind(attempts)
            .bind(status)
            .bind(error)
            .bind(next)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::dns::Resolve;

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            super::signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn internal_addresses_are_told_apart_from_public_ones() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            // Ranges and IPv6 forms of IPv4 addresses the first filter missed.
            "198.18.0.1",
            "198.19.255.254",
            "192.0.0.8",
            "240.0.0.1",
            "250.1.2.3",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::808:808",
            "2002:7f00:1::1",
            "2002:c0a8:101::1",
            "::127.0.0.1",
            "fec0::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        ] {
            assert!(internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "100.128.0.1",
            "198.20.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(!internal(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn a_name_of_only_internal_addresses_resolves_to_nothing_for_deliveries() {
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let err = match PublicOnly.resolve(name).await {
            Ok(addrs) => panic!("localhost resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(err) => err.to_string(),
        };
        assert!(err.contains("localhost is an internal address"), "{err}");
    }
}
