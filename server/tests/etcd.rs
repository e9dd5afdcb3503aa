//! etcd shadows through the real server: a real 3-member etcd cluster on loopback
//! (Debian's `etcd-server`, started and stopped by each test), beside a real agent and a
//! directory shadow.

mod common;

use common::{Session, TestServer, change_body, fleet::Agent};
use control::etcd_local::Cluster;
use domain::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::{process::Command, time::Duration};

const PREFIX: &str = "/apps/shop/";

struct Fleet {
    server: TestServer,
    editor: Session,
    approver: Session,
    admin: Session,
    agent: Agent,
    directory: std::path::PathBuf,
    cluster: Cluster,
    _root: tempfile::TempDir,
}

async fn fleet() -> Fleet {
    fleet_with(|_| {}).await
}

async fn fleet_with(adjust: impl FnOnce(&mut server::Config)) -> Fleet {
    let root = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(3, root.path()).await;
    let server = TestServer::start_with(adjust).await;
    server.user("erin", Role::Editor).await;
    server.user("abel", Role::Approver).await;
    server.user("ada", Role::Admin).await;
    let (editor, approver, admin) = (server.login("erin").await, server.login("abel").await, server.login("ada").await);
    let agent = Agent::start(&root.path().join("edge"));
    let (status, body) = admin
        .post(
            "/api/v1/shadows",
            json!({"driver": "agent", "name": "edge", "url": agent.url(), "token": common::fleet::AGENT_TOKEN}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let directory = root.path().join("backup").join("live");
    let (status, body) = admin
        .post(
            "/api/v1/shadows",
            json!({"driver": "directory", "name": "backup", "path": directory}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = admin
        .post(
            "/api/v1/shadows",
            json!({"driver": "etcd", "name": "kv", "endpoints": cluster.endpoints, "prefix": PREFIX}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["driver"], "etcd");
    assert_eq!(body["prefix"], PREFIX);
    Fleet {
        server,
        editor,
        approver,
        admin,
        agent,
        directory,
        cluster,
        _root: root,
    }
}

impl Fleet {
    /// Creates, submits and approves a change; answers its id.
    async fn approved(&self, body: Value) -> i64 {
        let (status, change) = self.editor.post("/api/v1/changes", body).await;
        assert_eq!(status, StatusCode::CREATED, "{change}");
        let id = change["id"].as_i64().unwrap();
        self.editor.post(&format!("/api/v1/changes/{id}/submit"), json!({})).await;
        self.approver.post(&format!("/api/v1/changes/{id}/approvals"), json!({})).await;
        id
    }

    async fn roll_out(&self, body: Value) -> (StatusCode, Value) {
        let id = self.approved(body).await;
        self.approver.post(&format!("/api/v1/changes/{id}/rollouts"), json!({})).await
    }

    /// Runs etcdctl against the cluster as an operator would; answers what it printed.
    fn etcdctl(&self, args: &[&str]) -> String {
        self.etcdctl_on(&self.cluster.endpoints, args)
    }

    /// `etcdctl` through the members `endpoints` only (the others may be dark).
    fn etcdctl_on(&self, endpoints: &[String], args: &[&str]) -> String {
        let output = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .args(args)
            .output()
            .expect("etcdctl (Debian package etcd-client)");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    }

    /// Waits for an unresolved incident on `shadow`; answers it.
    async fn open_incident(&self, shadow: &str) -> Value {
        for _ in 0..400 {
            let (_, page) = self
                .editor
                .get(&format!("/api/v1/incidents?shadow={shadow}&status=unresolved"))
                .await;
            if let Some(found) = page["items"].as_array().unwrap().first() {
                let (_, incident) = self.editor.get(&format!("/api/v1/incidents/{}", found["id"])).await;
                return incident;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("no incident on {shadow} within 10 s");
    }

    /// `etcdctl get --prefix PREFIX` as an operator runs it: every key and value under the
    /// prefix, the shadow's own keys (`..etc-shadow/`) left out.
    fn etcdctl_get(&self) -> Vec<(String, String)> {
        let text = self.etcdctl(&["get", "--prefix", PREFIX]);
        let lines: Vec<&str> = text.split_terminator('\n').collect();
        let mut pairs = Vec::new();
        let mut i = 0;
        while i < lines.len() {
            // A key line, then its value's lines up to the next key under the prefix.
            let key = lines[i].to_string();
            let mut value = Vec::new();
            i += 1;
            while i < lines.len() && !lines[i].starts_with(PREFIX) {
                value.push(lines[i]);
                i += 1;
            }
            if !key.contains("/..etc-shadow/") {
                // etcdctl ends every value with a line end of its own.
                pairs.push((key[PREFIX.len()..].to_string(), value.join("\n")));
            }
        }
        pairs
    }
}

fn sample(base: i64) -> Value {
    json!({"base_revision": base, "message": "sample", "entries": [
        {"path": "app.toml", "content": "[server]\nport = 8080\n", "format": "toml", "mode": "0644"},
        {"path": "nginx/site.conf", "content": "listen 80;\n", "format": "text", "mode": "0640"},
        {"path": "db.env", "content": "DB_PASSWORD=s3cret-value\n", "format": "env", "mode": "0600", "secret": true}
    ]})
}

/// One rollout reaches an agent, a directory and an etcd shadow; all three receipts are
/// the revision's root, and `etcdctl get --prefix` shows exactly the revision (a key the
/// next revision drops is gone). The shadow's checks find it in sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_a_directory_and_an_etcd_shadow_hold_the_same_proven_root() {
    let fleet = fleet().await;
    let (status, rollout) = fleet.roll_out(sample(0)).await;
    assert_eq!(status, StatusCode::CREATED, "{rollout}");
    assert_eq!(rollout["state"], "applied", "{rollout}");
    let root = rollout["root"].as_str().unwrap();
    let shadows = rollout["shadows"].as_array().unwrap();
    assert_eq!(shadows.len(), 3);
    for shadow in shadows {
        assert_eq!(shadow["phase"], "committed", "{shadow}");
        assert_eq!(shadow["receipt_root"], root, "{shadow}");
    }
    assert_eq!(
        fleet.etcdctl_get(),
        [
            ("app.toml".to_string(), "[server]\nport = 8080\n".to_string()),
            ("db.env".to_string(), "DB_PASSWORD=s3cret-value\n".to_string()),
            ("nginx/site.conf".to_string(), "listen 80;\n".to_string()),
        ]
    );
    let (status, checked) = fleet.editor.post("/api/v1/shadows/kv/check", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{checked}");
    assert_eq!(checked["status"], "in_sync", "{checked}");
    assert_eq!(checked["observed_root"], root);

    // The next revision changes one entry and removes another.
    let next = json!({"base_revision": 1, "message": "drop the site", "entries": [
        {"path": "app.toml", "content": "[server]\nport = 9090\n", "format": "toml", "mode": "0644"},
        {"path": "nginx/site.conf", "delete": true}
    ]});
    let (status, second) = fleet.roll_out(next).await;
    assert_eq!(status, StatusCode::CREATED, "{second}");
    assert_eq!(second["state"], "applied", "{second}");
    for shadow in second["shadows"].as_array().unwrap() {
        assert_eq!(shadow["receipt_root"], second["root"], "{shadow}");
    }
    assert_eq!(
        fleet.etcdctl_get(),
        [
            ("app.toml".to_string(), "[server]\nport = 9090\n".to_string()),
            ("db.env".to_string(), "DB_PASSWORD=s3cret-value\n".to_string()),
        ]
    );
    assert_eq!(
        std::fs::read_to_string(fleet.directory.join("app.toml")).unwrap(),
        "[server]\nport = 9090\n"
    );
    assert_eq!(
        std::fs::read_to_string(fleet.agent.live.join("app.toml")).unwrap(),
        "[server]\nport = 9090\n"
    );

    // The registration holds no secret in the listing, and bad registrations change nothing.
    let (_, listed) = fleet.admin.get("/api/v1/shadows").await;
    let kv = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "kv")
        .unwrap()
        .clone();
    assert_eq!(kv["url"], fleet.cluster.endpoints.join(","));
    for (body, words) in [
        (
            json!({"driver": "etcd", "name": "bad1", "endpoints": fleet.cluster.endpoints, "prefix": "/no-slash"}),
            "ends with '/'",
        ),
        (
            json!({"driver": "etcd", "name": "bad2", "endpoints": ["ftp://x:1"], "prefix": "/p/"}),
            "http(s)://host:port",
        ),
        (
            json!({"driver": "etcd", "name": "bad3", "endpoints": fleet.cluster.endpoints, "prefix": "/p/", "user": "root"}),
            "go together",
        ),
    ] {
        let (status, err) = fleet.admin.post("/api/v1/shadows", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
        assert!(err["error"]["message"].as_str().unwrap().contains(words), "{err}");
    }
    let (_, after) = fleet.admin.get("/api/v1/shadows").await;
    assert_eq!(after["items"].as_array().unwrap().len(), 3);
    fleet.server.stop().await;
}

/// A second control plane pointed at the same prefix is refused by the shadow's fence:
/// its rollout aborts everywhere and the first one's revision stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_control_plane_is_refused_by_the_etcd_shadows_fence() {
    let fleet = fleet().await;
    let (_, rollout) = fleet.roll_out(sample(0)).await;
    assert_eq!(rollout["state"], "applied", "{rollout}");

    let other = TestServer::start().await;
    other.user("ed", Role::Editor).await;
    other.user("al", Role::Approver).await;
    other.user("ad", Role::Admin).await;
    let (status, body) = other
        .login("ad")
        .await
        .post(
            "/api/v1/shadows",
            json!({"driver": "etcd", "name": "kv", "endpoints": fleet.cluster.endpoints, "prefix": PREFIX}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let editor = other.login("ed").await;
    let (_, change) = editor.post("/api/v1/changes", change_body(0, "app.toml", "hijack = true\n")).await;
    let id = change["id"].as_i64().unwrap();
    editor.post(&format!("/api/v1/changes/{id}/submit"), json!({})).await;
    let approver = other.login("al").await;
    approver.post(&format!("/api/v1/changes/{id}/approvals"), json!({})).await;
    let (_, refused) = approver.post(&format!("/api/v1/changes/{id}/rollouts"), json!({})).await;
    assert_eq!(refused["state"], "failed", "{refused}");
    assert_eq!(refused["shadows"][0]["phase"], "refused", "{refused}");
    let error = refused["shadows"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("fenced"), "{refused}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        fleet.etcdctl_get()[0],
        ("app.toml".to_string(), "[server]\nport = 8080\n".to_string())
    );
    other.stop().await;
    fleet.server.stop().await;
}

/// `etc-shadow shadow add NAME --etcd URLS --prefix P` registers an etcd shadow from the
/// command line; the user's password, read from its file, is stored sealed (never in
/// clear in the database) and never listed; a prefix without its `/` is refused.
#[test]
fn the_cli_registers_an_etcd_shadow_with_its_password_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let password_file = dir.path().join("etcd-password");
    std::fs::write(&password_file, "pw-that-must-stay-sealed-4711\n").unwrap();
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_etc-shadow"))
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let password = password_file.to_str().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").unwrap();
    // A password goes only to https:// endpoints.
    let (ok, _, err) = run(&[
        "shadow",
        "add",
        "kv",
        "--etcd",
        "http://127.0.0.1:2379",
        "--prefix",
        "/apps/shop/",
        "--etcd-user",
        "shop",
        "--etcd-password-file",
        password,
    ]);
    assert!(!ok && err.contains("https://"), "{err}");
    let (ok, out, err) = run(&[
        "shadow",
        "add",
        "kv",
        "--etcd",
        "https://127.0.0.1:2379,https://127.0.0.1:22379",
        "--prefix",
        "/apps/shop/",
        "--etcd-user",
        "shop",
        "--etcd-password-file",
        password,
        "--etcd-ca",
        ca_file.to_str().unwrap(),
    ]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = run(&["shadow", "list"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("kv") && out.contains("etcd") && out.contains("https://127.0.0.1:2379,https://127.0.0.1:22379 /apps/shop/"),
        "{out}"
    );
    assert!(!out.contains("pw-that"), "{out}");
    for file in std::fs::read_dir(&data).unwrap() {
        let bytes = std::fs::read(file.unwrap().path()).unwrap_or_default();
        assert!(
            !bytes.windows(b"pw-that-must-stay".len()).any(|w| w == b"pw-that-must-stay"),
            "the password is in clear in the data directory"
        );
    }
    let (ok, _, err) = run(&["shadow", "add", "kv2", "--etcd", "http://127.0.0.1:2379", "--prefix", "/no-slash"]);
    assert!(!ok);
    assert!(err.contains("ends with '/'"), "{err}");
    // A prefix inside another etcd shadow's, or around it, is refused.
    for nested in ["/apps/shop/eu/", "/apps/"] {
        let (ok, _, err) = run(&["shadow", "add", "kv2", "--etcd", "http://127.0.0.1:2379", "--prefix", nested]);
        assert!(!ok && err.contains("overlaps etcd shadow kv"), "{err}");
    }
    let (ok, out, _) = run(&["shadow", "list"]);
    assert!(ok && !out.contains("kv2"), "{out}");
}

/// A hand `etcdctl put` under the prefix and a deleted key are drift the prefix's watch
/// finds at once (the sweep is an hour away here, so only the watch can); the incident
/// names what changed, the shadow's diff shows it, adopt makes a change of it, and a
/// reconcile puts the revision back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_put_is_an_incident_the_watch_finds_and_a_reconcile_restores_the_revision() {
    let fleet = fleet_with(|config| config.check_interval = Duration::from_secs(3600)).await;
    let (_, rollout) = fleet.roll_out(sample(0)).await;
    assert_eq!(rollout["state"], "applied", "{rollout}");
    let root = rollout["root"].as_str().unwrap().to_string();
    // Let the checks after the rollout land first.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = std::time::Instant::now();
    fleet.etcdctl(&["put", &format!("{PREFIX}x.conf"), "planted"]);
    fleet.etcdctl(&["del", &format!("{PREFIX}nginx/site.conf")]);
    let incident = fleet.open_incident("kv").await;
    println!("hand put -> open incident: {:?}", started.elapsed());
    // The incident opened at the first write; the second joins it as the watch sees it.
    let mut incident = incident;
    for _ in 0..400 {
        let text = incident.to_string();
        if text.contains("x.conf") && text.contains("nginx/site.conf") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        incident = fleet.editor.get(&format!("/api/v1/incidents/{}", incident["id"])).await.1;
    }
    let text = incident.to_string();
    assert!(text.contains("x.conf") && text.contains("nginx/site.conf"), "{incident}");
    assert!(text.contains("missing"), "the deleted key is missing: {incident}");
    let (_, checks) = fleet.editor.get("/api/v1/shadows/kv/checks?limit=5").await;
    assert_eq!(checks["items"][0]["trigger"], "event", "{checks}");

    // The visual diff of the primary against the etcd shadow, as for any shadow.
    let (status, diff) = fleet.editor.get("/api/v1/shadows/kv/diff").await;
    assert_eq!(status, StatusCode::OK, "{diff}");
    let statuses: Vec<(String, String)> = diff["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["path"].as_str().unwrap().to_string(), e["status"].as_str().unwrap().to_string()))
        .collect();
    assert!(
        statuses.contains(&("x.conf".into(), "added".into())) && statuses.contains(&("nginx/site.conf".into(), "removed".into())),
        "{diff}"
    );
    // Adopt: a draft change made of what the etcd shadow holds.
    let (status, change) = fleet
        .editor
        .post(&format!("/api/v1/incidents/{}/adopt", incident["id"]), json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{change}");
    let ops: Vec<(String, String)> = change["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["path"].as_str().unwrap().to_string(), e["op"].as_str().unwrap().to_string()))
        .collect();
    assert!(
        ops.contains(&("x.conf".into(), "put".into())) && ops.contains(&("nginx/site.conf".into(), "delete".into())),
        "{ops:?}"
    );
    let (_, content) = fleet.editor.get(&format!("/api/v1/changes/{}/diff", change["id"])).await;
    assert!(
        content.to_string().contains("planted"),
        "the change carries the etcd shadow's bytes: {content}"
    );

    let (status, reconciled) = fleet.approver.post("/api/v1/shadows/kv/reconcile", json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{reconciled}");
    assert_eq!(reconciled["state"], "applied", "{reconciled}");
    assert_eq!(reconciled["shadows"][0]["receipt_root"], root.as_str(), "{reconciled}");
    assert_eq!(
        fleet.etcdctl_get(),
        [
            ("app.toml".to_string(), "[server]\nport = 8080\n".to_string()),
            ("db.env".to_string(), "DB_PASSWORD=s3cret-value\n".to_string()),
            ("nginx/site.conf".to_string(), "listen 80;\n".to_string()),
        ]
    );
    fleet.server.stop().await;
}

/// The console's register form (the `add_shadow` server function) registers an etcd
/// shadow from its endpoints and prefix; a bad prefix is refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_form_registers_an_etcd_shadow() {
    let server = TestServer::start().await;
    server.user("ada", Role::Admin).await;
    let admin = server.login("ada").await;
    let (status, body) = admin
        .server_fn(
            "add_shadow",
            "driver=etcd&name=kv&etcd%5Bendpoints%5D=http%3A%2F%2F127.0.0.1%3A2379%2C+http%3A%2F%2F127.0.0.1%3A22379&etcd%5Bprefix%5D=%2Fapps%2Fshop%2F&etcd%5Buser%5D=&etcd%5Bpassword%5D=",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, listed) = admin.get("/api/v1/shadows").await;
    let kv = &listed["items"][0];
    assert_eq!(kv["driver"], "etcd", "{listed}");
    assert_eq!(kv["url"], "http://127.0.0.1:2379,http://127.0.0.1:22379");
    assert_eq!(kv["prefix"], "/apps/shop/");
    let (status, body) = admin
        .server_fn(
            "add_shadow",
            "driver=etcd&name=kv2&etcd%5Bendpoints%5D=http%3A%2F%2F127.0.0.1%3A2379&etcd%5Bprefix%5D=apps",
        )
        .await;
    assert_ne!(status, StatusCode::OK, "{body}");
    assert!(body.contains("ends with '/'"), "{body}");
    // With a user: https endpoints and their CA, from the form's fields.
    let (status, body) = admin
        .server_fn(
            "add_shadow",
            "driver=etcd&name=kv3&etcd%5Bendpoints%5D=https%3A%2F%2F127.0.0.1%3A2379&etcd%5Bprefix%5D=%2Fapps%2Fother%2F&etcd%5Buser%5D=shop&etcd%5Bpassword%5D=pw-4711-secret&etcd%5Bca%5D=-----BEGIN+CERTIFICATE-----%0AMIIB%0A-----END+CERTIFICATE-----%0A",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, listed) = admin.get("/api/v1/shadows").await;
    assert!(listed.to_string().contains("/apps/other/"), "{listed}");
    assert!(!listed.to_string().contains("pw-4711"), "{listed}");
    server.stop().await;
}

/// kill -9 of the etcd leader (one member of three) during a rollout: the cluster keeps its quorum
/// and the rollouts end applied with the root read back. With two of three killed there
/// is no quorum: the rollout fails and is aborted everywhere, and the agent and the
/// directory keep the previous revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_one_etcd_member_is_survived_and_losing_quorum_aborts_everywhere() {
    let fleet = fleet_with(|config| config.prepare_deadline = Duration::from_secs(4)).await;
    let (_, first) = fleet.roll_out(sample(0)).await;
    assert_eq!(first["state"], "applied", "{first}");

    // The leader dies while the next rollout runs (it was approved first; the kill lands
    // a few milliseconds after the click).
    let leader = fleet.cluster.leader_index().await.expect("a leader");
    let id = fleet.approved(change_body(1, "app.toml", "[server]\nport = 1\n")).await;
    let path = format!("/api/v1/changes/{id}/rollouts");
    let click = fleet.approver.post(&path, json!({}));
    let kill = async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        fleet.cluster.kill(leader);
    };
    let ((status, second), ()) = tokio::join!(click, kill);
    assert_eq!(status, StatusCode::CREATED, "{second}");
    assert_eq!(second["state"], "applied", "{second}");
    for shadow in second["shadows"].as_array().unwrap() {
        assert_eq!(shadow["receipt_root"], second["root"], "{shadow}");
    }

    let second_member = (0..3).find(|i| *i != leader).unwrap();
    fleet.cluster.kill(second_member);
    let (_, third) = fleet.roll_out(change_body(2, "app.toml", "[server]\nport = 2\n")).await;
    assert_eq!(third["state"], "failed", "{third}");
    let kv = third["shadows"].as_array().unwrap().iter().find(|s| s["name"] == "kv").unwrap();
    assert_ne!(kv["phase"], "committed", "{third}");
    for shadow in third["shadows"].as_array().unwrap() {
        assert_ne!(shadow["phase"], "committed", "{third}");
    }
    assert_eq!(
        std::fs::read_to_string(fleet.directory.join("app.toml")).unwrap(),
        "[server]\nport = 1\n"
    );
    assert_eq!(
        std::fs::read_to_string(fleet.agent.live.join("app.toml")).unwrap(),
        "[server]\nport = 1\n"
    );
    fleet.server.stop().await;
}

/// An etcd shadow put back to an earlier revision's bytes (an old snapshot of the
/// cluster restored, say) is a `stale` incident, like a directory restored from an old
/// backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_shadow_back_on_an_earlier_revision_is_stale() {
    let fleet = fleet_with(|config| config.check_interval = Duration::from_secs(3600)).await;
    let (_, first) = fleet.roll_out(sample(0)).await;
    assert_eq!(first["state"], "applied", "{first}");
    let (_, second) = fleet.roll_out(change_body(1, "app.toml", "[server]\nport = 9\n")).await;
    assert_eq!(second["state"], "applied", "{second}");
    // Once the checks after the rollout found it in sync.
    for _ in 0..400 {
        let (_, shadow) = fleet.editor.get("/api/v1/shadows/kv").await;
        if shadow["status"] == "in_sync" && shadow["observed_root"] == second["root"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    fleet.etcdctl(&["put", &format!("{PREFIX}app.toml"), "[server]\nport = 8080\n"]);
    let incident = fleet.open_incident("kv").await;
    let mut incident = incident;
    for _ in 0..200 {
        if incident["kinds"].to_string().contains("stale") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        incident = fleet.editor.get(&format!("/api/v1/incidents/{}", incident["id"])).await.1;
    }
    assert!(incident["kinds"].to_string().contains("stale"), "{incident}");
    assert_eq!(incident["observed_root"], first["root"], "{incident}");
    fleet.server.stop().await;
}

/// The etcd leader gone dark (SIGSTOP: its connections stay open and answer nothing)
/// while a rollout runs: the others elect a leader and the rollout ends applied, as with
/// a member killed. While it stays dark, the drift monitor's watch has moved to a member
/// that answers: a hand edit is an incident. (Before requests went member by member, one
/// channel balanced over the three kept choosing the dark one and the rollout failed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dark_etcd_leader_during_a_rollout_ends_it_applied_and_drift_is_still_seen() {
    let fleet = fleet_with(|config| config.prepare_deadline = Duration::from_secs(8)).await;
    let (_, first) = fleet.roll_out(sample(0)).await;
    assert_eq!(first["state"], "applied", "{first}");
    let leader = fleet.cluster.leader_index().await.expect("a leader");
    let id = fleet.approved(change_body(1, "app.toml", "[server]\nport = 7\n")).await;
    let path = format!("/api/v1/changes/{id}/rollouts");
    let click = fleet.approver.post(&path, json!({}));
    let pause = async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        fleet.cluster.pause(leader, true);
    };
    let started = std::time::Instant::now();
    let ((_, second), ()) = tokio::join!(click, pause);
    println!("rollout with the leader dark: {} in {:?}", second["state"], started.elapsed());
    let expected = "[server]\nport = 7\n";
    let awake: Vec<String> = (0..3)
        .filter(|&i| i != leader)
        .map(|i| fleet.cluster.endpoints[i].clone())
        .collect();
    let key = format!("{PREFIX}app.toml");
    let read = fleet.etcdctl_on(&awake, &["get", "--print-value-only", &key]);
    assert_eq!(second["state"], "applied", "{second}");
    assert_eq!(read.trim_end_matches('\n'), expected.trim_end_matches('\n'));
    assert_eq!(std::fs::read_to_string(fleet.directory.join("app.toml")).unwrap(), expected);
    assert_eq!(std::fs::read_to_string(fleet.agent.live.join("app.toml")).unwrap(), expected);
    // Still dark: a hand edit through the others.
    fleet.etcdctl_on(&awake, &["put", &key, "port = 666"]);
    let incident = fleet.open_incident("kv").await;
    assert!(incident["kinds"].to_string().contains("content"), "{incident}");
    fleet.cluster.pause(leader, false);
    fleet.server.stop().await;
}

/// A cluster that serves clients over TLS only, with authentication on: the shadow trusts
/// the cluster's certificate and signs in as a user that etcd allows under its prefix
/// alone. Everything the shadow keeps is under that prefix, so it rolls out and checks as
/// any other. A wrong password is a failed check that names the refusal, never the words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_shadow_over_tls_signs_in_as_a_user_allowed_only_under_its_prefix() {
    let root = tempfile::tempdir().unwrap();
    let (cert, key) = (root.path().join("etcd.pem"), root.path().join("etcd-key.pem"));
    tls_serve::generate_if_missing(&cert, &key, "127.0.0.1:0".parse().unwrap()).unwrap();
    let mut cluster = Cluster::start_tls(3, root.path(), &cert, &key).await;
    assert!(cluster.endpoints.iter().all(|e| e.starts_with("https://")));
    let user_password = "shop-password-must-stay-sealed";
    cluster.enable_auth("root-password-0123", "shop", user_password, PREFIX).await;
    let server = TestServer::start().await;
    server.user("erin", Role::Editor).await;
    server.user("abel", Role::Approver).await;
    server.user("ada", Role::Admin).await;
    let (editor, approver, admin) = (server.login("erin").await, server.login("abel").await, server.login("ada").await);
    let ca = std::fs::read_to_string(&cert).unwrap();
    let register = |name: &str, password: &str| {
        json!({"driver": "etcd", "name": name, "endpoints": cluster.endpoints, "prefix": PREFIX,
               "user": "shop", "password": password, "ca": ca})
    };
    let (status, body) = admin.post("/api/v1/shadows", register("kv", user_password)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(!body.to_string().contains(user_password), "{body}");

    let (status, change) = editor.post("/api/v1/changes", sample(0)).await;
    assert_eq!(status, StatusCode::CREATED, "{change}");
    let id = change["id"].as_i64().unwrap();
    editor.post(&format!("/api/v1/changes/{id}/submit"), json!({})).await;
    approver.post(&format!("/api/v1/changes/{id}/approvals"), json!({})).await;
    let (_, rollout) = approver.post(&format!("/api/v1/changes/{id}/rollouts"), json!({})).await;
    assert_eq!(rollout["state"], "applied", "{rollout}");
    assert_eq!(rollout["shadows"][0]["receipt_root"], rollout["root"], "{rollout}");

    // etcdctl, as the shop user over TLS, reads what the rollout wrote; outside the
    // prefix etcd refuses that user.
    let etcdctl = |args: &[&str]| {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", cluster.endpoints.join(",")))
            .arg(format!("--cacert={}", cert.display()))
            .arg(format!("--user=shop:{user_password}"))
            .args(args)
            .output()
            .expect("etcdctl (Debian package etcd-client)")
    };
    let read = etcdctl(&["get", "--print-value-only", &format!("{PREFIX}app.toml")]);
    assert!(read.status.success(), "{}", String::from_utf8_lossy(&read.stderr));
    assert_eq!(String::from_utf8_lossy(&read.stdout), "[server]\nport = 8080\n\n");
    let outside = etcdctl(&["get", "/elsewhere"]);
    assert!(!outside.status.success(), "etcd lets the shop user read outside its prefix");

    let (status, checked) = editor.post("/api/v1/shadows/kv/check", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{checked}");
    assert_eq!(checked["status"], "in_sync", "{checked}");

    // The same cluster and prefix, a wrong password: the check fails and says why,
    // without it.
    let (status, body) = admin.delete("/api/v1/shadows/kv").await;
    assert!(status.is_success(), "{body}");
    let wrong = "wrong-password-that-must-not-echo";
    let (status, body) = admin.post("/api/v1/shadows", register("kv2", wrong)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, checked) = editor.post("/api/v1/shadows/kv2/check", json!({})).await;
    println!("a check with a wrong password: {checked}");
    assert_ne!(checked["status"], "in_sync", "{checked}");
    assert!(checked.to_string().contains("unauthorized"), "{checked}");
    assert!(!checked.to_string().contains(wrong), "{checked}");
    let (_, listed) = admin.get("/api/v1/shadows").await;
    assert!(!listed.to_string().contains(wrong) && !listed.to_string().contains(user_password));
    server.stop().await;
}
