//! Drift detection and incidents: real directory shadows and agent processes, the real
//! server and its drift monitor, driven over HTTP.

mod common;

use common::{
    Session, TestServer, change_body,
    fleet::{AGENT_TOKEN, Agent},
};
use domain::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::{
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    time::{Duration, Instant},
};

struct Fleet {
    server: TestServer,
    editor: Session,
    approver: Session,
    dirs: Vec<PathBuf>,
    agent: Option<Agent>,
    _root: tempfile::TempDir,
}

/// A server checking every `interval`, with directory shadows `dc1` and `dr-site` and,
/// when asked, the agent `edge` (HTTPS); the sample configuration rolled out.
async fn fleet(interval: Duration, with_agent: bool) -> Fleet {
    let server = TestServer::start_with(|config| {
        config.check_interval = interval;
        config.unreachable_after = 2;
    })
    .await;
    server.user("erin", Role::Editor).await;
    server.user("abel", Role::Approver).await;
    server.user("ada", Role::Admin).await;
    let (editor, approver, admin) = (server.login("erin").await, server.login("abel").await, server.login("ada").await);
    let root = tempfile::tempdir().unwrap();
    let mut dirs = Vec::new();
    for name in ["dc1", "dr-site"] {
        let path = root.path().join(name).join("live");
        let (status, body) = admin
            .post("/api/v1/shadows", json!({"driver": "directory", "name": name, "path": path}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        dirs.push(path);
    }
    let agent = with_agent.then(|| Agent::start_tls(&root.path().join("edge")));
    if let Some(agent) = &agent {
        let (status, body) = admin
            .post(
                "/api/v1/shadows",
                json!({"driver": "agent", "name": "edge", "url": agent.url(), "token": AGENT_TOKEN, "tls_pin": agent.tls_pin()}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let fleet = Fleet {
        server,
        editor,
        approver,
        dirs,
        agent,
        _root: root,
    };
    let rollout = fleet.roll_out(sample()).await;
    assert_eq!(rollout["state"], "applied", "{rollout}");
    fleet
}

fn sample() -> Value {
    json!({"base_revision": 0, "message": "sample", "entries": [
        {"path": "app.toml", "content": "[server]\nport = 8080\n", "format": "toml", "mode": "0644"},
        {"path": "nginx/site.conf", "content": "listen 80;\n", "format": "text", "mode": "0640"}
    ]})
}

impl Fleet {
    async fn roll_out(&self, body: Value) -> Value {
        let (status, change) = self.editor.post("/api/v1/changes", body).await;
        assert_eq!(status, StatusCode::CREATED, "{change}");
        let id = change["id"].as_i64().unwrap();
        self.editor.post(&format!("/api/v1/changes/{id}/submit"), json!({})).await;
        self.approver.post(&format!("/api/v1/changes/{id}/approvals"), json!({})).await;
        self.approver.post(&format!("/api/v1/changes/{id}/rollouts"), json!({})).await.1
    }

    async fn incidents(&self, query: &str) -> Vec<Value> {
        let (status, page) = self.editor.get(&format!("/api/v1/incidents?{query}")).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        page["items"].as_array().unwrap().clone()
    }

    /// Waits until `shadow` has an unresolved incident; answers it with its timeline.
    async fn open_incident(&self, shadow: &str, within: Duration) -> (Value, Duration) {
        open_incident_seen_by(&self.editor, shadow, within).await
    }

    async fn resolved(&self, id: i64, within: Duration) -> Value {
        let started = Instant::now();
        loop {
            let (_, incident) = self.editor.get(&format!("/api/v1/incidents/{id}")).await;
            if incident["status"] == "resolved" {
                return incident;
            }
            assert!(
                started.elapsed() < within,
                "incident {id} still {} after {within:?}",
                incident["status"]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn reconcile(&self, shadow: &str) {
        let (status, rollout) = self.approver.post(&format!("/api/v1/shadows/{shadow}/reconcile"), json!({})).await;
        assert_eq!(status, StatusCode::CREATED, "{rollout}");
        assert_eq!(rollout["state"], "applied", "{rollout}");
    }
}

/// Waits until `session`'s control plane has an unresolved incident on `shadow`; answers
/// it with its timeline, and how long the wait took.
async fn open_incident_seen_by(session: &Session, shadow: &str, within: Duration) -> (Value, Duration) {
    let started = Instant::now();
    loop {
        let (_, page) = session.get(&format!("/api/v1/incidents?shadow={shadow}&status=unresolved")).await;
        if let Some(found) = page["items"].as_array().unwrap().first() {
            let (_, full) = session.get(&format!("/api/v1/incidents/{}", found["id"])).await;
            return (full, started.elapsed());
        }
        assert!(started.elapsed() < within, "no incident on {shadow} within {within:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn kinds(incident: &Value) -> Vec<&str> {
    incident["kinds"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect()
}

fn entry<'a>(incident: &'a Value, path: &str) -> &'a Value {
    incident["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == path)
        .unwrap_or_else(|| panic!("{path} not in {incident}"))
}

const INTERVAL: Duration = Duration::from_millis(250);
/// One interval, plus slack for a loaded machine.
const WITHIN: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_drift_on_a_directory_shadow_becomes_one_incident() {
    let fleet = fleet(INTERVAL, false).await;
    let dc1 = fleet.dirs[0].clone();
    // Let the checks that follow the first rollout pass, so the poll finds what comes next.
    tokio::time::sleep(INTERVAL * 2).await;

    // Content: a hand edit.
    std::fs::write(dc1.join("app.toml"), "[server]\nport = 1\n").unwrap();
    let (incident, _) = fleet.open_incident("dc1", WITHIN).await;
    assert_eq!(kinds(&incident), ["content"], "{incident}");
    assert_eq!(incident["severity"], "high");
    assert_eq!(incident["detected_by"], "poll");
    assert_eq!(entry(&incident, "app.toml")["kind"], "content");
    let id = incident["id"].as_i64().unwrap();
    // The visual diff of the primary against the shadow: lines, and keys for toml.
    let (status, diff) = fleet.editor.get("/api/v1/shadows/dc1/diff").await;
    assert_eq!(status, StatusCode::OK, "{diff}");
    let app = &diff["entries"][0];
    assert_eq!(
        (app["path"].as_str(), app["status"].as_str()),
        (Some("app.toml"), Some("modified")),
        "{diff}"
    );
    assert_eq!(app["keys"], json!([{"key": "server.port", "old": "8080", "new": "1"}]));
    assert_eq!((app["text"]["added"].as_i64(), app["text"]["removed"].as_i64()), (Some(1), Some(1)));
    // Repeated checks of the same drift add nothing.
    tokio::time::sleep(INTERVAL * 4).await;
    assert_eq!(fleet.incidents("shadow=dc1").await.len(), 1);
    let (_, again) = fleet.editor.get(&format!("/api/v1/incidents/{id}")).await;
    assert_eq!(again["timeline"].as_array().unwrap().len(), 1, "{again}");
    assert_eq!(again["timeline"][0]["event"], "detected");
    let (_, shadow) = fleet.editor.get("/api/v1/shadows/dc1").await;
    assert_eq!(shadow["status"], "drifted");
    // The check history: newest first, each with why, what and how long.
    let (status, checks) = fleet.editor.get("/api/v1/shadows/dc1/checks?limit=500").await;
    assert_eq!(status, StatusCode::OK, "{checks}");
    let newest = &checks["items"][0];
    assert_eq!(
        (newest["trigger"].as_str(), newest["status"].as_str()),
        (Some("poll"), Some("drifted")),
        "{checks}"
    );
    assert!(
        checks["items"].as_array().unwrap().iter().any(|c| c["status"] == "in_sync"),
        "{checks}"
    );
    let (_, first_page) = fleet.editor.get("/api/v1/shadows/dc1/checks?limit=2").await;
    assert!(first_page["next"].is_i64(), "paged: {first_page}");
    // Acknowledge, then reconcile: the shadow returns and the incident resolves as such.
    let (status, acked) = fleet
        .editor
        .post(&format!("/api/v1/incidents/{id}/acknowledge"), json!({"note": "looking"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{acked}");
    assert_eq!(acked["status"], "acknowledged");
    fleet.reconcile("dc1").await;
    let closed = fleet.resolved(id, WITHIN).await;
    assert_eq!(closed["resolution"], "reconciled", "{closed}");
    let events: Vec<&str> = closed["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        ["detected", "acknowledged", "reconcile_started", "reconcile_finished", "resolved"]
    );

    // Policy: a chmod, nothing else.
    std::fs::set_permissions(dc1.join("app.toml"), std::fs::Permissions::from_mode(0o666)).unwrap();
    let (incident, _) = fleet.open_incident("dc1", WITHIN).await;
    assert_eq!(kinds(&incident), ["policy"], "{incident}");
    let chmod = entry(&incident, "app.toml");
    assert_eq!(
        (chmod["expected_policy"].as_str(), chmod["observed_policy"].as_str()),
        (Some("0644"), Some("0666"))
    );
    // Put back by hand: the incident resolves itself, kept as self-healed.
    std::fs::set_permissions(dc1.join("app.toml"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let healed = fleet.resolved(incident["id"].as_i64().unwrap(), WITHIN).await;
    assert_eq!(healed["resolution"], "self_healed", "{healed}");

    // Missing and unexpected: one episode, both kinds.
    std::fs::remove_file(dc1.join("nginx/site.conf")).unwrap();
    std::fs::write(dc1.join("extra.conf"), "left by hand\n").unwrap();
    let (incident, _) = fleet.open_incident("dc1", WITHIN).await;
    let seen = kinds(&incident);
    assert!(seen.contains(&"missing") && seen.contains(&"unexpected"), "{incident}");
    assert_eq!(entry(&incident, "nginx/site.conf")["kind"], "missing");
    assert_eq!(entry(&incident, "extra.conf")["kind"], "unexpected");

    // Adopt: a change made of the shadow's content, which then needs approval as usual.
    let (status, change) = fleet
        .editor
        .post(&format!("/api/v1/incidents/{}/adopt", incident["id"]), json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{change}");
    assert_eq!(change["state"], "draft", "{change}");
    let ops: Vec<(String, String)> = change["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["path"].as_str().unwrap().to_string(), e["op"].as_str().unwrap().to_string()))
        .collect();
    assert!(
        ops.contains(&("extra.conf".into(), "put".into())) && ops.contains(&("nginx/site.conf".into(), "delete".into())),
        "{ops:?}"
    );
    let change_id = change["id"].as_i64().unwrap();
    let (_, content) = fleet.editor.get(&format!("/api/v1/changes/{change_id}/diff")).await;
    assert!(
        content.to_string().contains("left by hand"),
        "the change carries the shadow's bytes: {content}"
    );
    fleet.reconcile("dc1").await;
    fleet.resolved(incident["id"].as_i64().unwrap(), WITHIN).await;

    // Stale: the other shadow restored from the previous revision's files.
    let rollout = fleet.roll_out(change_body(1, "app.toml", "[server]\nport = 9090\n")).await;
    assert_eq!(rollout["state"], "applied", "{rollout}");
    let dr = fleet.dirs[1].clone();
    std::fs::write(dr.join("app.toml"), "[server]\nport = 8080\n").unwrap();
    let (incident, _) = fleet.open_incident("dr-site", WITHIN).await;
    assert_eq!(kinds(&incident), ["stale"], "{incident}");
    assert_eq!(incident["severity"], "medium");
    let (_, shadow) = fleet.editor.get("/api/v1/shadows/dr-site").await;
    assert_eq!(shadow["status"], "stale");

    // Metrics: the fleet and the open incident, for a scraper with a session or API token.
    let metrics = fleet.editor.send(reqwest::Method::GET, "/metrics", None).await;
    assert_eq!(metrics.status(), StatusCode::OK);
    assert!(metrics.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let metrics = metrics.text().await.unwrap();
    for line in [
        "etc_shadow_incidents_open{kind=\"stale\"} 1",
        "etc_shadow_incidents_open{kind=\"content\"} 0",
        "etc_shadow_shadows{status=\"stale\"} 1",
        "etc_shadow_shadows{status=\"in_sync\"} 1",
        "etc_shadow_rollout_duration_seconds_count 4",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} missing from:\n{metrics}");
    }
    assert!(metrics.contains("etc_shadow_check_duration_seconds_count "), "{metrics}");
    assert!(metrics.contains("etc_shadow_seconds_since_in_sync{shadow=\"dc1\"} "), "{metrics}");
    let anonymous = fleet.server.anonymous().send(reqwest::Method::GET, "/metrics", None).await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    // Filters and actions check their input.
    let (status, _) = fleet.editor.get("/api/v1/incidents?kind=bogus").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = fleet.editor.get("/api/v1/incidents?since=yesterday").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        fleet
            .incidents("kind=stale&status=unresolved")
            .await
            .iter()
            .all(|i| i["shadow"] == "dr-site")
    );
    let (status, refused) = fleet
        .editor
        .post(&format!("/api/v1/incidents/{}/resolve", incident["id"]), json!({"note": "x"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "an editor cannot resolve: {refused}");
    let (status, _) = fleet
        .approver
        .post(&format!("/api/v1/incidents/{}/resolve", incident["id"]), json!({}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "resolving by hand needs a note");
    let (status, resolved) = fleet
        .approver
        .post(
            &format!("/api/v1/incidents/{}/resolve", incident["id"]),
            json!({"note": "restored on purpose"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{resolved}");
    assert_eq!(resolved["resolution"], "resolved");
    let (_, audit) = fleet.editor.get("/api/v1/audit?action=incident.resolve").await;
    assert!(!audit["items"].as_array().unwrap().is_empty(), "{audit}");
    fleet.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_hand_edit_is_an_incident_through_its_event_stream_and_a_stopped_agent_is_unreachable() {
    // The interval is long: only the agent's event stream can be this quick.
    let mut fleet = fleet(Duration::from_secs(3600), true).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // the listener connects
    let live = fleet.agent.as_ref().unwrap().live.clone();
    std::fs::write(live.join("app.toml"), "[server]\nport = 6666\n").unwrap();
    // No poll comes within the hour: whatever finds the edit is the event path. How fast it
    // is belongs to the benchmark, not to an assertion here (it is printed).
    let (incident, took) = fleet.open_incident("edge", Duration::from_secs(10)).await;
    println!("hand edit to open incident through the event path: {took:?}");
    assert_eq!(incident["detected_by"], "event");
    assert_eq!(kinds(&incident), ["content"]);
    assert_eq!(entry(&incident, "app.toml")["kind"], "content", "{incident}");
    let metrics = fleet
        .editor
        .send(reqwest::Method::GET, "/metrics", None)
        .await
        .text()
        .await
        .unwrap();
    let received: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("etc_shadow_agent_received_bytes_total "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no agent byte counter in:\n{metrics}"));
    assert!(received > 0, "the agent's answers are counted");
    let (_, before) = fleet.editor.get("/api/v1/shadows/edge/checks?limit=1").await;
    let last_check = before["items"][0]["id"].as_i64().unwrap_or(0);
    fleet.reconcile("edge").await;
    fleet.resolved(incident["id"].as_i64().unwrap(), Duration::from_secs(5)).await;
    // The monitor looks again at a rollout's shadows when it ends; let that check land
    // first, so the failures counted below are only the ones this test causes.
    let started = Instant::now();
    loop {
        let (_, checks) = fleet.editor.get("/api/v1/shadows/edge/checks?limit=20").await;
        let after_rollout = checks["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["trigger"] == "rollout" && c["id"].as_i64().unwrap() > last_check);
        if after_rollout {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no check after the reconcile: {checks}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A stopped agent: a failed check is never "in sync"; at the threshold, an incident.
    fleet.agent.as_mut().unwrap().kill();
    let (_, shadow) = fleet.editor.post("/api/v1/shadows/edge/check", json!({})).await;
    assert_eq!(shadow["status"], "unreachable", "{shadow}");
    assert!(
        fleet.incidents("shadow=edge&status=unresolved").await.is_empty(),
        "one failure is not yet an incident"
    );
    fleet.editor.post("/api/v1/shadows/edge/check", json!({})).await;
    let (incident, _) = fleet.open_incident("edge", WITHIN).await;
    assert_eq!(kinds(&incident), ["unreachable"], "{incident}");
    // Back again: the next check resolves it.
    fleet.agent.as_mut().unwrap().restart();
    let (_, shadow) = fleet.editor.post("/api/v1/shadows/edge/check", json!({})).await;
    assert_eq!(shadow["status"], "in_sync", "{shadow}");
    let healed = fleet.resolved(incident["id"].as_i64().unwrap(), WITHIN).await;
    assert_eq!(healed["resolution"], "self_healed");
    fleet.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_bound_to_another_control_plane_is_a_fenced_incident() {
    let fleet = fleet(INTERVAL, true).await;
    let agent = fleet.agent.as_ref().unwrap();
    // A second control plane (its own database) registers the same agent; the agent
    // belongs to the first, so the second sees a shadow it can never write: fenced.
    let other = TestServer::start_with(|config| config.check_interval = INTERVAL).await;
    other.user("root", Role::Admin).await;
    other.user("eve", Role::Editor).await;
    let admin = other.login("root").await;
    let (status, body) = admin
        .post(
            "/api/v1/shadows",
            json!({"driver": "agent", "name": "edge", "url": agent.url(), "token": AGENT_TOKEN, "tls_pin": agent.tls_pin()}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let watcher = other.login("eve").await;
    let (incident, _) = open_incident_seen_by(&watcher, "edge", WITHIN).await;
    assert_eq!(incident["kind"], "fenced", "{incident}");
    assert_eq!(incident["severity"], "critical");
    let (_, shadow) = watcher.get("/api/v1/shadows/edge").await;
    assert_eq!(shadow["status"], "fenced");
    // The rightful control plane sees its shadow in sync, with no incident.
    let (_, shadow) = fleet.editor.post("/api/v1/shadows/edge/check", json!({})).await;
    assert_eq!(shadow["status"], "in_sync", "{shadow}");
    assert!(fleet.incidents("shadow=edge").await.is_empty());
    other.stop().await;
    fleet.server.stop().await;
}

/// A local webhook receiver: answers 500 to the first delivery, 200 afterwards, and keeps
/// what it was sent with the signature header.
async fn receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>>) {
    use axum::{extract::State, http::HeaderMap, routing::post};
    type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>>;
    let seen: Seen = Default::default();
    async fn hook(State(seen): State<Seen>, headers: HeaderMap, body: String) -> StatusCode {
        let mut seen = seen.lock().unwrap();
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        seen.push((header("x-etc-shadow-event"), header("x-etc-shadow-signature"), body));
        if seen.len() == 1 {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        }
    }
    let app = axum::Router::new().route("/hook", post(hook)).with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_retried_and_logged() {
    let fleet = fleet(INTERVAL, false).await;
    let admin = fleet.server.login("ada").await;
    let (url, seen) = receiver().await;
    let (status, bad) = admin.post("/api/v1/webhooks", json!({"url": "ftp://example.com/x"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    let (status, bad) = admin
        .post("/api/v1/webhooks", json!({"url": url, "events": ["incident.exploded"]}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    let (status, refused) = fleet.approver.post("/api/v1/webhooks", json!({"url": url})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    let (status, hook) = admin
        .post(
            "/api/v1/webhooks",
            json!({"url": url, "events": ["incident.opened", "incident.resolved"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");
    let secret = hook["secret"].as_str().unwrap().to_string();
    let (_, listed) = admin.get("/api/v1/webhooks").await;
    assert!(listed["items"][0].get("secret").is_none(), "the secret is shown once: {listed}");

    // A drift: the first delivery fails (500), the retry succeeds.
    tokio::time::sleep(INTERVAL * 2).await;
    std::fs::write(fleet.dirs[0].join("app.toml"), "[server]\nport = 2\n").unwrap();
    let (incident, _) = fleet.open_incident("dc1", WITHIN).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().len() < 2 {
        if Instant::now() > deadline {
            let (_, log) = admin.get("/api/v1/webhooks/deliveries").await;
            panic!("no retry: {:?}; log {log}", seen.lock().unwrap());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let received = seen.lock().unwrap().clone();
    for (event, signature, body) in &received[..2] {
        assert_eq!(event, "incident.opened");
        assert_eq!(
            *signature,
            control::webhooks::signature(&secret, body.as_bytes()),
            "signed with the secret"
        );
        let body: Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["data"]["incident"], incident["id"]);
        assert_eq!(body["data"]["shadow"], "dc1");
        assert!(!body.to_string().contains("port = 2"), "no entry content in a webhook");
    }
    assert_eq!(received[0].2, received[1].2, "the retry sends the same body");
    // The delivery log says so (it is written just after the receiver answers).
    let deadline = Instant::now() + Duration::from_secs(5);
    let delivery = loop {
        let (_, log) = admin.get("/api/v1/webhooks/deliveries").await;
        let delivery = log["items"][0].clone();
        if delivery["status"] == "delivered" || Instant::now() > deadline {
            break delivery;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (delivery["status"].as_str(), delivery["attempts"].as_i64()),
        (Some("delivered"), Some(2)),
        "{delivery}"
    );
    assert_eq!(delivery["last_status"], 200);

    // Resolved: told as well (acknowledged/updated is not subscribed, so not sent).
    fleet.reconcile("dc1").await;
    fleet.resolved(incident["id"].as_i64().unwrap(), WITHIN).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !seen.lock().unwrap().iter().any(|(event, _, _)| event == "incident.resolved") {
        assert!(Instant::now() < deadline, "no incident.resolved delivery");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        seen.lock().unwrap().iter().all(|(event, _, _)| event != "rollout.applied"),
        "only subscribed events"
    );
    fleet.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_restored_from_an_old_backup_sees_a_revision_it_never_made_as_fenced() {
    let fleet = fleet(INTERVAL, true).await;
    // A backup of the database now, at revision 1.
    // A restore needs the key file too (kept apart from database backups): the agent's
    // token is sealed with it.
    let copy = tempfile::tempdir().unwrap();
    fleet.server.back_up(copy.path()).await;
    let rollout = fleet.roll_out(change_body(1, "app.toml", "[server]\nport = 9090\n")).await;
    assert_eq!(rollout["state"], "applied", "{rollout}");
    fleet.server.stop().await;

    // Restored, the copy believes revision 1 is current; the agent holds revision 2.
    let restored = TestServer::start_with(|config| {
        config.data_dir = copy.path().to_path_buf();
        config.check_interval = INTERVAL;
    })
    .await;
    let viewer = restored.login("erin").await;
    let (full, _) = open_incident_seen_by(&viewer, "edge", WITHIN).await;
    assert_eq!(full["kind"], "fenced", "{full}");
    let detail = full["timeline"][0]["details"]["detail"].as_str().unwrap_or_default().to_string();
    assert!(detail.contains("revision 2") && detail.contains("never made"), "{full}");
    restored.stop().await;
}

/// A loopback TCP proxy in front of an agent that, while `hold_commits` is set, swallows
/// every commit request (the connection is dropped unanswered): a shadow that prepared and
/// then went dark.
struct CommitSwallower {
    addr: std::net::SocketAddr,
    hold_commits: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl CommitSwallower {
    async fn start(agent: std::net::SocketAddr) -> CommitSwallower {
        use std::sync::{Arc, atomic::AtomicBool, atomic::Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold_commits = Arc::new(AtomicBool::new(false));
        let hold = hold_commits.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let hold = hold.clone();
                tokio::spawn(async move {
                    let Ok(upstream) = tokio::net::TcpStream::connect(agent).await else {
                        return;
                    };
                    let (mut up_read, mut up_write) = upstream.into_split();
                    let (mut client_read, mut client_write) = client.split();
                    let to_agent = async {
                        let mut buffer = vec![0u8; 64 * 1024];
                        loop {
                            let n = client_read.read(&mut buffer).await.unwrap_or(0);
                            let chunk = &buffer[..n];
                            let commit = chunk.starts_with(b"POST /v1/rollouts/") && chunk.windows(7).any(|w| w == b"/commit");
                            if n == 0 || (commit && hold.load(Ordering::SeqCst)) || up_write.write_all(chunk).await.is_err() {
                                return;
                            }
                        }
                    };
                    let to_client = async {
                        let _ = tokio::io::copy(&mut up_read, &mut client_write).await;
                    };
                    // Whichever side ends first ends the connection.
                    tokio::select! { _ = to_agent => {}, _ = to_client => {} }
                });
            }
        });
        CommitSwallower { addr, hold_commits }
    }

    fn hold(&self, on: bool) {
        self.hold_commits.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_stuck_committing_on_one_dark_shadow_leaves_the_rest_of_the_fleet_watched() {
    let fleet = fleet(INTERVAL, false).await;
    let root = tempfile::tempdir().unwrap();
    let agent = Agent::start(&root.path().join("edge"));
    let proxy = CommitSwallower::start(agent.addr).await;
    let admin = fleet.server.login("ada").await;
    let (status, body) = admin
        .post(
            "/api/v1/shadows",
            json!({"driver": "agent", "name": "edge", "url": format!("http://{}", proxy.addr), "token": AGENT_TOKEN}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, rollout) = fleet.approver.post("/api/v1/shadows/edge/reconcile", json!({})).await;
    assert_eq!(
        (status, rollout["state"].as_str()),
        (StatusCode::CREATED, Some("applied")),
        "{rollout}"
    );

    // The next rollout prepares everywhere, commits the directory shadows, and waits for
    // `edge`, whose commits vanish.
    proxy.hold(true);
    let (status, change) = fleet
        .editor
        .post("/api/v1/changes", change_body(1, "app.toml", "[server]\nport = 9090\n"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{change}");
    let id = change["id"].as_i64().unwrap();
    fleet.editor.post(&format!("/api/v1/changes/{id}/submit"), json!({})).await;
    fleet.approver.post(&format!("/api/v1/changes/{id}/approvals"), json!({})).await;
    let response = fleet
        .approver
        .send(
            reqwest::Method::POST,
            &format!("/api/v1/changes/{id}/rollouts?wait=false"),
            Some(json!({})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let started = Instant::now();
    loop {
        let (_, rollout) = fleet.editor.get(&location).await;
        let committed: Vec<&str> = rollout["shadows"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["phase"] == "committed")
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        if rollout["state"] == "committing" && committed == ["dc1", "dr-site"] {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "never stuck as expected: {rollout}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // While it waits, a hand edit on a shadow that committed is still found by the poll,
    // and `edge`, which the rollout still has to commit, is not reported.
    std::fs::write(fleet.dirs[0].join("nginx/site.conf"), "listen 81;\n").unwrap();
    let (incident, _) = fleet.open_incident("dc1", WITHIN).await;
    assert_eq!(kinds(&incident), ["content"], "{incident}");
    let (_, rollout) = fleet.editor.get(&location).await;
    assert_eq!(
        rollout["state"], "committing",
        "the edit was found while the rollout waited: {rollout}"
    );
    assert!(
        fleet.incidents("shadow=edge").await.is_empty(),
        "the rollout's own difference is not drift"
    );

    // The commit gets through: applied, and `edge` is in sync.
    proxy.hold(false);
    let started = Instant::now();
    loop {
        let (_, rollout) = fleet.editor.get(&location).await;
        if rollout["state"] == "applied" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the commit never got through: {rollout}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, edge) = fleet.editor.post("/api/v1/shadows/edge/check", json!({})).await;
    assert_eq!(edge["status"], "in_sync", "{edge}");
    fleet.server.stop().await;
}

/// Files a shadow holds that the primary does not manage may be anything: below the
/// approver role their content, hash and size are not shown in the shadow's diff, a file
/// named like a secret (`tls.key`) is shown to nobody, and adopting it makes a secret
/// entry, sealed at rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmanaged_files_on_a_shadow_are_not_shown_below_approver_and_adopt_seals_secret_names() {
    let fleet = fleet(Duration::from_millis(100), false).await;
    let dc1 = &fleet.dirs[0];
    std::fs::write(dc1.join("notes.conf"), "CANARY-unmanaged-notes\n").unwrap();
    std::fs::write(dc1.join("tls.key"), "-----BEGIN PRIVATE KEY-----\nCANARY-unmanaged-key\n").unwrap();
    let (incident, _) = fleet.open_incident("dc1", WITHIN).await;
    // An editor (below approver) sees that they are there, nothing of what is in them.
    let (status, diff) = fleet.editor.get("/api/v1/shadows/dc1/diff").await;
    assert_eq!(status, StatusCode::OK, "{diff}");
    let text = diff.to_string();
    assert!(text.contains("notes.conf") && text.contains("tls.key"), "{diff}");
    assert!(!text.contains("CANARY"), "content shown below approver: {diff}");
    let entries = diff["entries"].as_array().unwrap();
    for entry in entries.iter().filter(|e| e["status"] == "added") {
        assert!(entry["hidden"].is_string(), "{entry}");
        assert_eq!(entry["new"]["entry_hash"], "", "no hash to test guesses against: {entry}");
    }
    // An approver sees the ordinary file, and still not the one named like a secret.
    let (_, diff) = fleet.approver.get("/api/v1/shadows/dc1/diff").await;
    let text = diff.to_string();
    assert!(text.contains("CANARY-unmanaged-notes"), "{diff}");
    assert!(!text.contains("CANARY-unmanaged-key"), "{diff}");
    // Adopted, the key becomes a secret entry: sealed, never shown.
    let (status, change) = fleet
        .editor
        .post(&format!("/api/v1/incidents/{}/adopt", incident["id"]), json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{change}");
    let key = change["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "tls.key")
        .unwrap()
        .clone();
    assert_eq!(key["secret"], true, "{change}");
    let (_, diff) = fleet.approver.get(&format!("/api/v1/changes/{}/diff", change["id"])).await;
    assert!(!diff.to_string().contains("CANARY-unmanaged-key"), "{diff}");
    let stored: Vec<(Vec<u8>,)> = sqlx::query_as("SELECT content FROM blobs")
        .fetch_all(&fleet.server.state.db.read)
        .await
        .unwrap();
    assert!(
        !stored.iter().any(|(data,)| data.windows(20).any(|w| w == b"CANARY-unmanaged-key")),
        "an adopted key is sealed at rest"
    );
}

/// A secret entry's hash, and the hash of an entry holding secret values, are keyed with
/// the control plane's content key: a viewer who guesses the value (a default password)
/// and hashes it the documented way, entry or root, matches nothing. The shadows, a
/// directory and an agent over HTTPS, get the key inside the prepare, hash alike (in sync,
/// no incident), and still see a hand edit of the secret file as drift.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_entries_give_a_viewer_no_hash_to_test_a_guess_against() {
    let fleet = fleet(Duration::from_secs(3600), true).await;
    let rollout = fleet
        .roll_out(json!({"base_revision": 1, "message": "secrets", "entries": [
            {"path": "secrets/db.env", "content": "DB_PASSWORD=hunter2\n", "format": "text", "mode": "0600", "secret": true},
            {"path": "app.toml", "content": "[server]\nport = 8080\napi_token = \"changeme\"\n", "format": "toml", "mode": "0644"}
        ]}))
        .await;
    assert_eq!(rollout["state"], "applied", "{rollout}");
    fleet.server.user("vera", Role::Viewer).await;
    let viewer = fleet.server.login("vera").await;
    let (_, revision) = viewer.get("/api/v1/revisions/2").await;
    let guess = |path: &str, mode: u32, secret: bool, content: &str| {
        let policy = domain::Policy {
            mode,
            secret,
            ..Default::default()
        };
        domain::hash::entry_hash(&domain::EntryPath::parse(path).unwrap(), &policy, content.as_bytes())
    };
    let shown = |path: &str| {
        revision["entries"].as_array().unwrap().iter().find(|e| e["path"] == path).unwrap()["entry_hash"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let right_guesses = [
        ("secrets/db.env", guess("secrets/db.env", 0o600, true, "DB_PASSWORD=hunter2\n")),
        (
            "app.toml",
            guess("app.toml", 0o644, false, "[server]\nport = 8080\napi_token = \"changeme\"\n"),
        ),
    ];
    for (path, hash) in &right_guesses {
        assert_ne!(shown(path), hash.to_hex(), "{path}: the right guess matches the shown hash");
    }
    // Nor does the root over the guessed hashes and the shown others.
    let mut hashes: Vec<(domain::EntryPath, domain::Hash)> = revision["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let path = e["path"].as_str().unwrap();
            let hash = right_guesses
                .iter()
                .find(|(p, _)| *p == path)
                .map(|(_, h)| *h)
                .unwrap_or_else(|| domain::Hash::from_hex(e["entry_hash"].as_str().unwrap()).unwrap());
            (domain::EntryPath::parse(path).unwrap(), hash)
        })
        .collect();
    hashes.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    let guessed_root = domain::hash::root_hash(hashes.iter().map(|(p, h)| (p, *h))).to_hex();
    assert_ne!(revision["root"].as_str().unwrap(), guessed_root);

    // Both shadows hash the sealed entries alike: in sync, no incident.
    for shadow in ["dc1", "edge"] {
        let (_, checked) = fleet.editor.post(&format!("/api/v1/shadows/{shadow}/check"), json!({})).await;
        assert_eq!(checked["status"], "in_sync", "{shadow}: {checked}");
    }
    assert!(fleet.incidents("status=unresolved").await.is_empty());
    // A hand edit of the secret file on the agent is drift.
    let edge = fleet.agent.as_ref().unwrap();
    std::fs::write(edge.live.join("secrets/db.env"), "DB_PASSWORD=other\n").unwrap();
    fleet.editor.post("/api/v1/shadows/edge/check", json!({})).await;
    let (incident, _) = fleet.open_incident("edge", WITHIN).await;
    assert_eq!(kinds(&incident), ["content"], "{incident}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadows_check_history_is_a_small_chart_and_a_paged_table() {
    // No sweep during the test: the checks are the ones asked for.
    let fleet = fleet(Duration::from_secs(3600), false).await;
    for _ in 0..30 {
        let (status, body) = fleet.editor.post("/api/v1/shadows/dc1/check", json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (_, history) = fleet.editor.get("/api/v1/shadows/dc1/checks?limit=500").await;
    let total = history["items"].as_array().unwrap().len();
    assert!(total >= 30, "{total} checks");
    let page = |path: String| {
        let editor = &fleet.editor;
        async move {
            let response = editor.send(reqwest::Method::GET, &path, None).await;
            assert_eq!(response.status(), StatusCode::OK);
            response.text().await.unwrap()
        }
    };
    let rows = |html: &str| html.matches("data-test=\"check-row\"").count();
    let first = page("/shadows/dc1".into()).await;
    // The chart has a bar for every check kept; the table shows 25 of them and links to
    // the older ones.
    assert!(first.contains(&format!("data-checks=\"{total}\"")), "the chart draws every check");
    assert_eq!(first.matches("class=\"check-bar check-").count(), total);
    assert_eq!(rows(&first), 25);
    let older = first
        .split("data-test=\"checks-older\"")
        .next()
        .and_then(|before| before.rsplit("href=\"").next())
        .and_then(|rest| rest.split('"').next())
        .map(|href| href.replace("&amp;", "&"))
        .expect("a link to the older checks");
    assert!(older.starts_with("/shadows/dc1?checks_before="), "{older}");
    let second = page(older).await;
    assert_eq!(rows(&second), total - 25);
    assert!(!second.contains("data-test=\"checks-older\""), "the last page links no further");
    assert!(second.contains("data-test=\"checks-newest\""));
    fleet.server.stop().await;
}
