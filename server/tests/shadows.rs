//! Shadows and synchronous two-phase rollouts: real agent processes and directory
//! shadows on temporary paths, the real server over HTTP.

mod common;

use common::{
    Session, TestServer, change_body,
    fleet::{AGENT_TOKEN, Agent, snapshot},
};
use domain::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::PathBuf;

struct Fleet {
    server: TestServer,
    editor: Session,
    approver: Session,
    admin: Session,
    agent: Agent,
    directories: Vec<PathBuf>,
    _root: tempfile::TempDir,
}

/// A server with three directory shadows and one agent, all registered over the API.
async fn fleet() -> Fleet {
    let server = TestServer::start().await;
    server.user("erin", Role::Editor).await;
    server.user("abel", Role::Approver).await;
    server.user("ada", Role::Admin).await;
    let (editor, approver, admin) = (server.login("erin").await, server.login("abel").await, server.login("ada").await);
    // Registration goes through the API as an administrator would do it. The agent serves
    // HTTPS and is trusted by its certificate's fingerprint.
    let root = tempfile::tempdir().unwrap();
    let agent = Agent::start_tls(&root.path().join("edge"));
    let (status, body) = admin
        .post(
            "/api/v1/shadows",
            json!({"driver": "agent", "name": "edge", "url": agent.url(), "token": AGENT_TOKEN, "tls_pin": agent.tls_pin()}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mut directories = Vec::new();
    for name in ["dc1", "dr-site", "backup"] {
        let path = root.path().join(name).join("live");
        let (status, body) = admin
            .post("/api/v1/shadows", json!({"driver": "directory", "name": name, "path": path}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        directories.push(path);
    }
    Fleet {
        server,
        editor,
        approver,
        admin,
        agent,
        directories,
        _root: root,
    }
}

impl Fleet {
    fn live_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = self.directories.clone();
        dirs.push(self.agent.live.clone());
        dirs
    }

    /// Creates, submits and approves a change; returns its id.
    async fn approved_change(&self, body: Value) -> i64 {
        let (status, change) = self.editor.post("/api/v1/changes", body).await;
        assert_eq!(status, StatusCode::CREATED, "{change}");
        let id = change["id"].as_i64().unwrap();
        self.editor.post(&format!("/api/v1/changes/{id}/submit"), json!({})).await;
        self.approver.post(&format!("/api/v1/changes/{id}/approvals"), json!({})).await;
        id
    }

    /// Creates, submits, approves and rolls out a change; returns the rollout answer.
    async fn roll_out(&self, body: Value) -> (StatusCode, Value) {
        let id = self.approved_change(body).await;
        self.approver.post(&format!("/api/v1/changes/{id}/rollouts"), json!({})).await
    }

    /// Registers one more agent over the API.
    async fn register_agent(&self, name: &str, url: &str, tls_pin: Option<String>) -> (StatusCode, Value) {
        self.admin
            .post(
                "/api/v1/shadows",
                json!({"driver": "agent", "name": name, "url": url, "token": AGENT_TOKEN, "tls_pin": tls_pin}),
            )
            .await
    }

    /// Waits until the change's page says every shadow holds it staged ahead.
    async fn staged_everywhere(&self, id: i64) {
        for _ in 0..400 {
            let (_, change) = self.editor.get(&format!("/api/v1/changes/{id}")).await;
            if change["staged_ahead"].as_array().is_some_and(|names| names.len() == 4) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("change {id} was not staged ahead on every shadow within 20 s");
    }

    /// One counter of `GET /metrics`.
    async fn metric(&self, name: &str) -> u64 {
        let text = self.admin.send(reqwest::Method::GET, "/metrics", None).await.text().await.unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} is not in /metrics"))
    }

    async fn current(&self) -> Value {
        let (_, page) = self.editor.get("/api/v1/revisions?limit=1").await;
        page["items"][0].clone()
    }
}

fn sample(base: i64) -> Value {
    json!({"base_revision": base, "message": "sample", "entries": [
        {"path": "app.toml", "content": "[server]\nport = 8080\n", "format": "toml", "mode": "0644"},
        {"path": "nginx/site.conf", "content": "listen 80;\n", "format": "text", "mode": "0640"},
        {"path": "db.env", "content": "DB_PASSWORD=s3cret-value\n", "format": "env", "mode": "0600", "secret": true}
    ]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_change_reaches_every_shadow_with_proof() {
    let fleet = fleet().await;
    let (status, rollout) = fleet.roll_out(sample(0)).await;
    assert_eq!(status, StatusCode::CREATED, "{rollout}");
    assert_eq!(rollout["state"], "applied", "{rollout}");
    let root = rollout["root"].as_str().unwrap();
    let shadows = rollout["shadows"].as_array().unwrap();
    assert_eq!(shadows.len(), 4);
    for shadow in shadows {
        assert_eq!(shadow["phase"], "committed", "{shadow}");
        assert_eq!(shadow["receipt_root"], root, "every receipt proves the revision's root: {shadow}");
    }
    let expected = vec![
        ("app.toml".to_string(), b"[server]\nport = 8080\n".to_vec(), 0o644),
        ("db.env".to_string(), b"DB_PASSWORD=s3cret-value\n".to_vec(), 0o600),
        ("nginx/site.conf".to_string(), b"listen 80;\n".to_vec(), 0o640),
    ];
    for dir in fleet.live_dirs() {
        assert_eq!(
            snapshot(&dir),
            expected,
            "{} holds the revision byte for byte and in mode",
            dir.display()
        );
    }
    let (_, listed) = fleet.editor.get("/api/v1/shadows").await;
    for shadow in listed["items"].as_array().unwrap() {
        assert_eq!(shadow["status"], "in_sync", "{shadow}");
        assert_eq!(shadow["observed_root"], root);
    }
    let (_, stored) = fleet.editor.get(&format!("/api/v1/rollouts/{}", rollout["id"])).await;
    assert_eq!(stored["shadows"], rollout["shadows"], "receipts are stored");

    // A second change goes through the same way, on top of the first.
    let (status, second) = fleet.roll_out(change_body(1, "app.toml", "[server]\nport = 9090\n")).await;
    assert_eq!(status, StatusCode::CREATED, "{second}");
    assert_eq!(second["state"], "applied");
    for dir in fleet.live_dirs() {
        assert_eq!(std::fs::read_to_string(dir.join("app.toml")).unwrap(), "[server]\nport = 9090\n");
    }
    fleet.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_refusing_shadow_aborts_the_rollout_everywhere() {
    let fleet = fleet().await;
    let (_, first) = fleet.roll_out(sample(0)).await;
    assert_eq!(first["state"], "applied");
    let before: Vec<_> = fleet.live_dirs().iter().map(|d| snapshot(d)).collect();

    // A hand edit on dr-site: its live root is no longer the base the writer expects.
    std::fs::write(fleet.directories[1].join("app.toml"), "[server]\nport = 1\n").unwrap();
    let (status, rollout) = fleet.roll_out(change_body(1, "app.toml", "[server]\nport = 9090\n")).await;
    assert_eq!(status, StatusCode::CREATED, "{rollout}");
    assert_eq!(rollout["state"], "failed", "{rollout}");
    let error = rollout["error"].as_str().unwrap();
    assert!(
        error.contains("dr-site") && error.contains("base_root_mismatch"),
        "the error names the shadow and the reason: {error}"
    );
    assert_eq!(fleet.current().await["number"], 1, "the primary revision is unchanged");
    for shadow in rollout["shadows"].as_array().unwrap() {
        let name = shadow["name"].as_str().unwrap();
        let expected = if name == "dr-site" { "refused" } else { "aborted" };
        assert_eq!(shadow["phase"], expected, "{shadow}");
    }
    let after: Vec<_> = fleet.live_dirs().iter().map(|d| snapshot(d)).collect();
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        if i != 1 {
            assert_eq!(b, a, "shadows that prepared still serve the previous revision");
        }
    }

    // Reconcile brings dr-site back; then the change can go out (after a rebase).
    let (status, reconcile) = fleet.approver.post("/api/v1/shadows/dr-site/reconcile", json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{reconcile}");
    assert_eq!(reconcile["state"], "applied", "{reconcile}");
    assert_eq!(snapshot(&fleet.directories[1]), before[1]);
    fleet.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_agent_at_prepare_aborts_the_rollout() {
    let mut fleet = fleet().await;
    let (_, first) = fleet.roll_out(sample(0)).await;
    assert_eq!(first["state"], "applied");
    let state_before = store::statefile::read_state_body(&fleet.agent.state).unwrap();
    fleet.agent.kill();
    let (status, rollout) = fleet.roll_out(change_body(1, "app.toml", "[server]\nport = 7070\n")).await;
    assert_eq!(status, StatusCode::CREATED, "{rollout}");
    assert_eq!(rollout["state"], "failed", "{rollout}");
    assert!(rollout["error"].as_str().unwrap().contains("edge: unreachable"), "{rollout}");
    assert_eq!(fleet.current().await["number"], 1);
    fleet.agent.restart();
    assert_eq!(
        store::statefile::read_state_body(&fleet.agent.state).unwrap(),
        state_before,
        "nothing was staged on the dead agent"
    );
    for dir in fleet.live_dirs() {
        assert_eq!(std::fs::read_to_string(dir.join("app.toml")).unwrap(), "[server]\nport = 8080\n");
    }
    fleet.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_control_plane_and_a_stale_copy_are_fenced() {
    let fleet = fleet().await;
    let (_, first) = fleet.roll_out(sample(0)).await;
    assert_eq!(first["state"], "applied");

    // A copy of the database taken now, before the next rollout.
    // (Directory shadows keep their state at their own path: nothing of them to copy.)
    let copy_dir = tempfile::tempdir().unwrap();
    fleet.server.back_up(copy_dir.path()).await;

    let (_, second) = fleet.roll_out(change_body(1, "app.toml", "[server]\nport = 9090\n")).await;
    assert_eq!(second["state"], "applied", "{second}");

    // The restored copy believes revision 1 is current and tries to roll out on top of it.
    let stale = TestServer::start_with(|config| config.data_dir = copy_dir.path().to_path_buf()).await;
    let (editor, approver) = (stale.login("erin").await, stale.login("abel").await);
    let (_, change) = editor
        .post("/api/v1/changes", change_body(1, "app.toml", "[server]\nport = 1111\n"))
        .await;
    let id = change["id"].as_i64().unwrap();
    editor.post(&format!("/api/v1/changes/{id}/submit"), json!({})).await;
    approver.post(&format!("/api/v1/changes/{id}/approvals"), json!({})).await;
    let (_, refused) = approver.post(&format!("/api/v1/changes/{id}/rollouts"), json!({})).await;
    assert_eq!(refused["state"], "failed", "{refused}");
    for shadow in refused["shadows"].as_array().unwrap() {
        assert_eq!(shadow["phase"], "refused", "every shadow refuses the stale writer: {shadow}");
    }
    assert!(refused["error"].as_str().unwrap().contains("base_root_mismatch"), "{refused}");
    for dir in fleet.live_dirs() {
        assert_eq!(
            std::fs::read_to_string(dir.join("app.toml")).unwrap(),
            "[server]\nport = 9090\n",
            "nothing was overwritten"
        );
    }
    stale.stop().await;

    // A different control plane (its own database) cannot write to the agent at all.
    let other = TestServer::start().await;
    other.user("ann", Role::Editor).await;
    other.user("bob", Role::Approver).await;
    other.user("root", Role::Admin).await;
    let admin = other.login("root").await;
    admin
        .post(
            "/api/v1/shadows",
            json!({"driver": "agent", "name": "edge", "url": fleet.agent.url(), "token": AGENT_TOKEN, "tls_pin": fleet.agent.tls_pin()}),
        )
        .await;
    let (editor, approver) = (other.login("ann").await, other.login("bob").await);
    let (_, change) = editor.post("/api/v1/changes", change_body(0, "x.json", "{}")).await;
    let id = change["id"].as_i64().unwrap();
    editor.post(&format!("/api/v1/changes/{id}/submit"), json!({})).await;
    approver.post(&format!("/api/v1/changes/{id}/approvals"), json!({})).await;
    let (_, refused) = approver.post(&format!("/api/v1/changes/{id}/rollouts"), json!({})).await;
    assert_eq!(refused["state"], "failed", "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("fenced"), "{refused}");
    let (_, shadow) = admin.get("/api/v1/rollouts").await;
    assert_eq!(shadow["items"][0]["shadows"][0]["phase"], "refused");
    other.stop().await;

    // The rightful control plane still writes.
    let (_, third) = fleet.roll_out(change_body(2, "app.toml", "[server]\nport = 9191\n")).await;
    assert_eq!(third["state"], "applied", "{third}");
    fleet.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_refuses_wrong_tokens_and_tampered_requests() {
    let fleet = fleet().await;
    let (_, first) = fleet.roll_out(sample(0)).await;
    let root = first["root"].as_str().unwrap().to_string();
    let client = control::tls::pinned_client(&fleet.agent.tls_pin(), Some(std::time::Duration::from_secs(10))).unwrap();
    let url = |path: &str| format!("{}{path}", fleet.agent.url());
    for token in [None, Some("wrong-token-wrong-token")] {
        let mut request = client.get(url("/v1/state"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        assert_eq!(request.send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
        let mut prepare = client.put(url("/v1/rollouts/99")).body("not even json");
        if let Some(token) = token {
            prepare = prepare.bearer_auth(token);
        }
        assert_eq!(
            prepare.send().await.unwrap().status(),
            StatusCode::UNAUTHORIZED,
            "401 before the body is read"
        );
    }
    let (_, state) = common::json_of(
        client
            .get(url("/v1/state?entries=true"))
            .bearer_auth(AGENT_TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(state["live_root"], root);
    assert_eq!(state["entries"].as_array().unwrap().len(), 3);
    let control_plane = state["control_plane_id"].as_str().unwrap().to_string();
    let epoch = state["highest_epoch"].as_i64().unwrap();
    let entry = json!({"path": "a.conf", "content": "x", "mode": "0644"});
    let good_root = {
        let path = domain::EntryPath::parse("a.conf").unwrap();
        let hash = domain::hash::entry_hash(&path, &domain::Policy::default(), b"x");
        domain::hash::root_hash([(&path, hash)]).to_hex()
    };
    let prepare = |body: Value| client.put(url("/v1/rollouts/99")).bearer_auth(AGENT_TOKEN).json(&body).send();
    let base = json!({"control_plane_id": control_plane, "epoch": epoch, "revision": 9, "target_root": good_root, "base_root": root, "entries": [entry]});
    let cases = [
        ("epoch", json!({"epoch": epoch - 1}), StatusCode::CONFLICT, "fenced"),
        (
            "control plane",
            json!({"control_plane_id": "someone-else"}),
            StatusCode::CONFLICT,
            "fenced",
        ),
        (
            "root",
            json!({"target_root": root}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "root_mismatch",
        ),
        (
            "base root",
            json!({"base_root": good_root}),
            StatusCode::CONFLICT,
            "base_root_mismatch",
        ),
        (
            "path",
            json!({"entries": [{"path": "../../etc/passwd", "content": "x", "mode": "0644"}]}),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ];
    for (what, overrides, status, code) in cases {
        let mut body = base.clone();
        for (key, value) in overrides.as_object().unwrap() {
            body[key] = value.clone();
        }
        let (got, answer) = common::json_of(prepare(body).await.unwrap()).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{what} tampering: {answer}"
        );
    }
    let (_, after) = common::json_of(client.get(url("/v1/state")).bearer_auth(AGENT_TOKEN).send().await.unwrap()).await;
    assert_eq!(after["live_root"], root);
    assert_eq!(after["staged"], Value::Null, "no tampered request staged anything");
    assert_eq!(after["highest_epoch"], epoch);
    fleet.server.stop().await;
}

/// Every file of one generation, or `None` if it vanished while being read.
fn read_generation(dir: &std::path::Path) -> Option<Vec<(String, Vec<u8>, u32)>> {
    use std::os::unix::fs::PermissionsExt;
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).ok()? {
            let entry = entry.ok()?;
            let meta = std::fs::metadata(entry.path()).ok()?;
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                let content = std::fs::read(entry.path()).ok()?;
                files.push((
                    entry.path().strip_prefix(dir).ok()?.to_string_lossy().into_owned(),
                    content,
                    meta.permissions().mode() & 0o7777,
                ));
            }
        }
    }
    files.sort();
    Some(files)
}

/// The root of a directory's files as the test writes them (no owner, group or secret).
fn root_of_files(files: &[(String, Vec<u8>, u32)]) -> String {
    let hashed: Vec<(domain::EntryPath, domain::Hash)> = files
        .iter()
        .map(|(path, content, mode)| {
            let path = domain::EntryPath::parse(path).unwrap();
            let hash = domain::hash::entry_hash(
                &path,
                &domain::Policy {
                    mode: *mode,
                    ..domain::Policy::default()
                },
                content,
            );
            (path, hash)
        })
        .collect();
    domain::hash::root_hash(hashed.iter().map(|(p, h)| (p, *h))).to_hex()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_see_a_mix_of_two_revisions() {
    let fleet = fleet().await;
    let (_, first) = fleet.roll_out(change_body(0, "app.toml", "[server]\nround = -1\n")).await;
    let mut roots = vec![first["root"].as_str().unwrap().to_string()];
    let live = fleet.directories[0].clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The reader resolves the live link (`..data`) once per snapshot, as a service
    // reloading its configuration would, then reads every file of that generation.
    let reader = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(generation) = std::fs::canonicalize(live.join("..data")) else {
                    continue;
                };
                // A generation removed while being read fails loudly (not found); only a
                // complete read counts as a snapshot.
                if let Some(files) = read_generation(&generation) {
                    seen.push(root_of_files(&files));
                }
            }
            seen
        }
    });
    for i in 0..15 {
        // Two files change together in every revision: a mix would pair them wrongly.
        let body = json!({"base_revision": i + 1, "message": format!("pair {i}"), "entries": [
            {"path": "app.toml", "content": format!("[server]\nround = {i}\n"), "format": "toml"},
            {"path": "nginx/site.conf", "content": format!("# round {i}\nlisten 80;\n"), "format": "text", "mode": "0640"}
        ]});
        let (_, rollout) = fleet.roll_out(body).await;
        assert_eq!(rollout["state"], "applied", "{rollout}");
        roots.push(rollout["root"].as_str().unwrap().to_string());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = reader.join().unwrap();
    assert!(seen.len() > 15, "the reader took {} snapshots", seen.len());
    for root in &seen {
        assert!(roots.contains(root), "a reader saw {root}, which is no revision: a mix");
    }
    fleet.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_progress_streams_live_with_every_prepare_before_any_commit() {
    use futures_util::StreamExt as _;
    let fleet = fleet().await;
    let response = fleet
        .editor
        .client
        .get(format!("{}/api/v1/events", fleet.editor.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.bytes_stream();
    // Asked not to wait, the API answers 202 at once and the stream tells the rest.
    let change = fleet.approved_change(sample(0)).await;
    let started = fleet
        .approver
        .send(
            reqwest::Method::POST,
            &format!("/api/v1/changes/{change}/rollouts?wait=false"),
            Some(json!({})),
        )
        .await;
    assert_eq!(started.status(), StatusCode::ACCEPTED);
    let location = started.headers()["location"].to_str().unwrap().to_string();
    let (_, started) = common::json_of(started).await;
    assert_eq!(started["state"], "preparing", "{started}");
    let id = started["id"].as_i64().unwrap();
    assert_eq!(location, format!("/api/v1/rollouts/{id}"));

    let mut events: Vec<Value> = Vec::new();
    let mut buffer = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !events.iter().any(|e| e["rollout"] == id && e["phase"] == "applied") {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("events arrive")
            .unwrap()
            .unwrap();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            if let Some(data) = frame.lines().find_map(|line| line.strip_prefix("data: ")) {
                events.push(serde_json::from_str(data).unwrap());
            }
        }
    }
    let position = |shadow: Option<&str>, phase: &str| {
        events
            .iter()
            .position(|e| e["rollout"] == id && e["shadow"].as_str() == shadow && e["phase"] == phase)
            .unwrap_or_else(|| panic!("no {phase} event for {shadow:?} in {events:?}"))
    };
    let decision = position(None, "committing");
    for shadow in ["backup", "dc1", "dr-site", "edge"] {
        assert!(
            position(Some(shadow), "prepared") < decision,
            "{shadow} prepared before the decision"
        );
        assert!(
            position(Some(shadow), "committed") > decision,
            "{shadow} committed after the decision"
        );
        let committed = &events[position(Some(shadow), "committed")];
        assert_eq!(committed["root"], started["root"], "the streamed receipt is the proof");
    }
    assert!(position(None, "preparing") < decision && decision < position(None, "applied"));
    let (_, rollout) = fleet.approver.get(&location).await;
    assert_eq!(rollout["state"], "applied", "{rollout}");
    drop(body);
    fleet.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_agents_are_trusted_by_their_pin_and_nothing_else() {
    let fleet = fleet().await;
    let (_, first) = fleet.roll_out(sample(0)).await;
    assert_eq!(first["state"], "applied", "the rollout reached the HTTPS agent: {first}");

    // Registration: https needs a pin, a pin needs https, a pin is a SHA-256 fingerprint.
    let https = fleet.agent.url();
    let http = https.replacen("https://", "http://", 1);
    for (url, pin, needle) in [
        (https.as_str(), None, "tls_pin"),
        (http.as_str(), Some(fleet.agent.tls_pin()), "https"),
        (https.as_str(), Some("cd88".to_string()), "64 hex digits"),
    ] {
        let (status, body) = fleet.register_agent("bad", url, pin).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(needle), "{body}");
    }

    // An impostor: another agent with its own certificate, registered under edge's pin.
    let impostor = Agent::start_tls(&fleet._root.path().join("impostor"));
    let (status, body) = fleet.register_agent("impostor", &impostor.url(), Some(fleet.agent.tls_pin())).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, rollout) = fleet.roll_out(change_body(1, "app.toml", "[server]\nport = 9090\n")).await;
    assert_eq!(rollout["state"], "failed", "{rollout}");
    let error = rollout["error"].as_str().unwrap();
    assert!(
        error.contains("impostor") && error.contains("does not match the pinned fingerprint"),
        "the error names the shadow and the reason: {error}"
    );
    assert!(!error.contains(AGENT_TOKEN));
    assert_eq!(fleet.current().await["number"], 1, "the primary revision is unchanged");
    assert!(
        store::statefile::read_state_body(&impostor.state).is_none(),
        "the impostor never received a write (nor the token: the handshake failed first)"
    );
    fleet.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_that_cannot_write_refuses_prepare_and_nothing_changes() {
    let fleet = fleet().await;
    let mut node = Agent::start_unprivileged(&fleet._root.path().join("node"));
    let (status, body) = fleet.register_agent("node", &node.url(), None).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, first) = fleet.roll_out(sample(0)).await;
    assert_eq!(first["state"], "applied", "{first}");
    let mut live = fleet.live_dirs();
    live.push(node.live.clone());
    let before: Vec<_> = live.iter().map(|d| snapshot(d)).collect();
    // Generations are staged inside the managed directory itself.
    let revisions = node.live.clone();

    let assert_refused = |rollout: &Value, reason: &str| {
        assert_eq!(rollout["state"], "failed", "{rollout}");
        let error = rollout["error"].as_str().unwrap();
        assert!(error.contains("node") && error.contains(reason), "{reason}: {error}");
        for shadow in rollout["shadows"].as_array().unwrap() {
            if shadow["name"] == "node" {
                assert_eq!(shadow["phase"], "refused", "{shadow}");
            } else {
                // (Directory shadows refuse too when the tests do not run as root.)
                assert!(matches!(shadow["phase"].as_str(), Some("aborted" | "refused")), "{shadow}");
            }
        }
        let after: Vec<_> = live.iter().map(|d| snapshot(d)).collect();
        assert_eq!(before, after, "{reason}: every shadow still serves the previous revision");
        let leftovers: Vec<_> = std::fs::read_dir(&revisions)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            // (A tree being staged ahead meanwhile, `..r0-rev*`, is the next change's.)
            .filter(|n| n.to_string_lossy().ends_with(".tmp") && !n.to_string_lossy().starts_with("..r0-"))
            .collect();
        assert!(leftovers.is_empty(), "{reason}: no half-staged revision is left: {leftovers:?}");
    };

    // An owner the agent has no right to give files to: a clear refusal, not a skip.
    let mut owned = change_body(1, "app.toml", "[server]\nport = 9090\n");
    owned["entries"][0]["owner"] = json!("root");
    let (_, rollout) = fleet.roll_out(owned).await;
    assert_refused(&rollout, "cannot chown");
    assert_eq!(fleet.current().await["number"], 1);

    // A read-only directory.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&revisions, std::fs::Permissions::from_mode(0o555)).unwrap();
    let (_, rollout) = fleet.roll_out(change_body(1, "app.toml", "[server]\nport = 9191\n")).await;
    std::fs::set_permissions(&revisions, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_refused(&rollout, "Permission denied");
    assert_eq!(fleet.current().await["number"], 1);

    // A full disk (a failpoint: 1 KiB left), with a 4 KiB entry to stage.
    node.kill();
    node.env = vec![("ETC_SHADOW_FAILPOINT_DISK_BYTES".into(), "1024".into())];
    node.restart();
    let big = "x".repeat(4096);
    let (_, rollout) = fleet.roll_out(change_body(1, "big.txt", &big)).await;
    assert_refused(&rollout, "No space left on device");
    assert_eq!(fleet.current().await["number"], 1);

    // Room again: the very same approved change goes out.
    node.kill();
    node.env.clear();
    node.restart();
    let change = rollout["change_id"].as_i64().unwrap();
    let (status, retried) = fleet.approver.post(&format!("/api/v1/changes/{change}/rollouts"), json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{retried}");
    assert_eq!(retried["state"], "applied", "{retried}");
    assert_eq!(std::fs::read_to_string(node.live.join("big.txt")).unwrap(), big);
    fleet.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_agent_token_is_shown_once_and_stored_sealed() {
    let server = TestServer::start().await;
    server.user("ada", Role::Admin).await;
    server.user("abel", Role::Approver).await;
    let admin = server.login("ada").await;
    let root = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(&root.path().join("edge"));
    // No token given: the control plane makes one and answers it this once.
    let response = admin
        .send(
            reqwest::Method::POST,
            "/api/v1/shadows",
            Some(json!({"driver": "agent", "name": "edge", "url": agent.url()})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let created: Value = response.json().await.unwrap();
    let token = created["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("est_") && token.len() > 40, "{token}");
    for path in ["/api/v1/shadows", "/api/v1/shadows/edge"] {
        let (_, listed) = admin.get(path).await;
        assert!(!listed.to_string().contains(&token), "{path} shows the token: {listed}");
    }
    let (_, audit) = admin.get("/api/v1/audit?limit=5").await;
    assert!(!audit.to_string().contains(&token), "the audit log shows the token");
    let (stored,): (String,) = sqlx::query_as("SELECT token FROM shadows WHERE name = 'edge'")
        .fetch_one(&server.state.db.read)
        .await
        .unwrap();
    assert!(stored.starts_with("esv1:") && !stored.contains(&token), "sealed at rest");

    // The operator puts it in the agent's token file; the agent then answers to it alone.
    std::fs::write(root.path().join("edge/token"), &token).unwrap();
    agent.kill();
    agent.restart();
    let approver = server.login("abel").await;
    let (status, rollout) = approver.post("/api/v1/shadows/edge/reconcile", json!({})).await;
    assert_eq!(
        (status, rollout["state"].as_str()),
        (StatusCode::CREATED, Some("applied")),
        "{rollout}"
    );
    server.stop().await;
}

/// Polls `condition` every 50 ms for up to 20 s.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    for _ in 0..400 {
        if condition() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{what}: not within 20 s");
}

/// The inode of a file, or 0.
fn inode(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| m.ino()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_change_is_staged_ahead_an_edit_drops_the_stage_and_the_rollout_takes_it() {
    let fleet = fleet().await;
    let (status, first) = fleet.roll_out(sample(0)).await;
    assert_eq!(first["state"], "applied", "{status} {first}");
    let id = fleet.approved_change(change_body(1, "app.toml", "[server]\nport = 9090\n")).await;
    // Once approved, every shadow (agent and directories) holds the next tree staged ahead,
    // as the change's page says.
    let dirs = fleet.live_dirs();
    let staged = |dir: &PathBuf| dir.join("..r0-rev2/app.toml");
    fleet.staged_everywhere(id).await;
    for dir in &dirs {
        assert!(std::fs::read_to_string(staged(dir)).unwrap().contains("9090"), "{}", dir.display());
    }
    // A stage is the shadow's own business, not drift: every check says in sync, and what
    // is live is the first revision.
    for name in ["edge", "dc1", "dr-site", "backup"] {
        let (status, checked) = fleet.admin.post(&format!("/api/v1/shadows/{name}/check"), json!({})).await;
        assert_eq!(status, StatusCode::OK, "{checked}");
        assert_eq!(checked["status"], "in_sync", "{name}: {checked}");
    }
    for dir in &dirs {
        assert_eq!(std::fs::read_to_string(dir.join("app.toml")).unwrap(), "[server]\nport = 8080\n");
    }
    // Edited after the approval: the approval is void, so the stage is nobody's and goes.
    let (status, edited) = fleet
        .editor
        .put(
            &format!("/api/v1/changes/{id}/entries/app.toml"),
            json!({"content": "[server]\nport = 9191\n", "format": "toml"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{edited}");
    eventually("the stale stage is dropped everywhere", || {
        dirs.iter().all(|dir| !staged(dir).exists())
    })
    .await;
    // Approved again: staged again, and the rollout takes the staged files themselves.
    fleet.editor.post(&format!("/api/v1/changes/{id}/submit"), json!({})).await;
    let (status, approved) = fleet.approver.post(&format!("/api/v1/changes/{id}/approvals"), json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{approved}");
    fleet.staged_everywhere(id).await;
    let inodes: Vec<u64> = dirs.iter().map(|dir| inode(&staged(dir))).collect();
    let taken = fleet.metric("etc_shadow_prepares_from_stage_total").await;
    let (status, rollout) = fleet.approver.post(&format!("/api/v1/changes/{id}/rollouts"), json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{rollout}");
    assert_eq!(rollout["state"], "applied", "{rollout}");
    for (dir, staged_inode) in dirs.iter().zip(inodes) {
        assert_eq!(std::fs::read_to_string(dir.join("app.toml")).unwrap(), "[server]\nport = 9191\n");
        assert_eq!(
            inode(&dir.join("app.toml")),
            staged_inode,
            "{}: the staged file went live",
            dir.display()
        );
        // The stage's directory itself became the live generation.
        assert_eq!(
            std::fs::read_link(dir.join("..data")).unwrap(),
            PathBuf::from("..r0-rev2"),
            "{}",
            dir.display()
        );
    }
    for shadow in rollout["shadows"].as_array().unwrap() {
        assert_eq!(shadow["receipt_root"], rollout["root"], "{shadow}");
    }
    // Every prepare was sent no entries and answered from the stage.
    assert_eq!(fleet.metric("etc_shadow_prepares_from_stage_total").await, taken + 4);
    fleet.server.stop().await;
}

/// A change of `count` files under `bulk/` on top of `base`; `f5`'s content by version.
fn bulk_change(base: i64, count: usize, version: u32) -> Value {
    let entries: Vec<Value> = (0..count)
        .map(|i| {
            let content = if i == 5 {
                format!("five v{version}\n")
            } else {
                format!("value {i}\n")
            };
            json!({"path": format!("bulk/d{}/f{i}.conf", i % 7), "content": content, "format": "text", "mode": "0644"})
        })
        .collect();
    json!({"base_revision": base, "message": format!("bulk v{version}"), "entries": entries})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_stage_edited_after_the_watcher_vouched_for_it_is_not_taken_as_it_was() {
    // The agent's watcher vouches for a settled stage of 256 files or more, so that the
    // prepare that takes it does not walk it. An edit inside the stage afterwards is a
    // change below the managed directory's top level: the prepare must walk and find it.
    let fleet = fleet().await;
    let (status, first) = fleet.roll_out(bulk_change(0, 300, 1)).await;
    assert_eq!(first["state"], "applied", "{status} {first}");
    let id = fleet.approved_change(bulk_change(1, 300, 2)).await;
    fleet.staged_everywhere(id).await;
    // Past the moment the agent proves the stage for the watcher (1.1 s after staging).
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let staged = fleet.agent.live.join("..r0-rev2/bulk/d5/f5.conf");
    assert_eq!(std::fs::read_to_string(&staged).unwrap(), "five v2\n");
    std::fs::write(&staged, "planted at the worst moment\n").unwrap();
    let taken = fleet.metric("etc_shadow_prepares_from_stage_total").await;
    let (status, rollout) = fleet.approver.post(&format!("/api/v1/changes/{id}/rollouts"), json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{rollout}");
    assert_eq!(rollout["state"], "applied", "{rollout}");
    for dir in fleet.live_dirs() {
        assert_eq!(
            std::fs::read_to_string(dir.join("bulk/d5/f5.conf")).unwrap(),
            "five v2\n",
            "{}",
            dir.display()
        );
    }
    for shadow in rollout["shadows"].as_array().unwrap() {
        assert_eq!(shadow["receipt_root"], rollout["root"], "{shadow}");
    }
    // The three directory shadows took their stages; the agent's edited one was sent.
    assert_eq!(fleet.metric("etc_shadow_prepares_from_stage_total").await, taken + 3);
    fleet.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_control_plane_drops_stages_it_did_not_make_and_staging_ahead_can_be_off() {
    let mut fleet = fleet().await;
    let (status, first) = fleet.roll_out(sample(0)).await;
    assert_eq!(first["state"], "applied", "{status} {first}");
    let id = fleet.approved_change(change_body(1, "app.toml", "[server]\nport = 9090\n")).await;
    fleet.staged_everywhere(id).await;
    // The agent keeps its stage in memory; the control plane that made it is gone.
    let staged = fleet.agent.live.join("..r0-rev2");
    assert!(staged.exists());
    fleet.server.restart_with(|config| config.stage_ahead = false).await;
    eventually("the stage the last process made is dropped at start", || !staged.exists()).await;
    // Off: nothing is staged, and the rollout sends what changed.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let (_, change) = fleet.editor.get(&format!("/api/v1/changes/{id}")).await;
    assert_eq!(change["staged_ahead"], json!([]), "{change}");
    assert!(!staged.exists());
    let (status, rollout) = fleet.approver.post(&format!("/api/v1/changes/{id}/rollouts"), json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{rollout}");
    assert_eq!(rollout["state"], "applied", "{rollout}");
    assert_eq!(fleet.metric("etc_shadow_prepares_from_stage_total").await, 0);
    for dir in fleet.live_dirs() {
        assert_eq!(std::fs::read_to_string(dir.join("app.toml")).unwrap(), "[server]\nport = 9090\n");
    }
    fleet.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_a_hard_link_made_at_the_top_level_is_drift_a_check_finds() {
    // The agent answers a check from its maintained root while its watcher reports no
    // change below the managed directory's top level. A hard link made at the top level
    // to a live file, written through and removed, is reported at the top level by every
    // event; the write changed the live file all the same.
    let fleet = fleet().await;
    let (status, first) = fleet.roll_out(sample(0)).await;
    assert_eq!(first["state"], "applied", "{status} {first}");
    // Past the watcher's extra change half a second after the switch (and any look it
    // causes), so the checks below are answered from the maintained root.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    for _ in 0..2 {
        let (status, checked) = fleet.admin.post("/api/v1/shadows/edge/check", json!({})).await;
        assert_eq!(status, StatusCode::OK, "{checked}");
        assert_eq!(checked["status"], "in_sync", "{checked}");
    }
    let live = &fleet.agent.live;
    let generation = std::fs::read_link(live.join("..data")).unwrap();
    let link = live.join(".x");
    std::fs::hard_link(live.join(&generation).join("app.toml"), &link).unwrap();
    std::fs::write(&link, "[server]\nport = 6666\n").unwrap();
    std::fs::remove_file(&link).unwrap();
    assert_eq!(std::fs::read_to_string(live.join("app.toml")).unwrap(), "[server]\nport = 6666\n");
    let (status, checked) = fleet.admin.post("/api/v1/shadows/edge/check", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{checked}");
    assert_eq!(
        checked["status"], "drifted",
        "a write through a top-level hard link went unseen: {checked}"
    );
    fleet.server.stop().await;
}
