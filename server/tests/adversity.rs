//! The rollout guarantees under adversity: a paused agent, a client that hangs up, an
//! edit at the worst moment, a hand edit racing the commit, a shadow that cannot commit,
//! a control plane started from an old copy of its data directory, a lost database.
//! Real server, real agent processes, temporary directories.

mod common;

use common::{
    Session, TestServer, change_body,
    fleet::{AGENT_TOKEN, Agent, snapshot},
};
use domain::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

struct Fleet {
    server: TestServer,
    editor: Session,
    approver: Session,
    admin: Session,
    agent: Agent,
    directory: PathBuf,
    root: tempfile::TempDir,
}

/// One agent (`edge`) and one directory shadow (`dc1`), with revision 1 rolled out.
async fn fleet(prepare_deadline: Duration) -> Fleet {
    let root = tempfile::tempdir().unwrap();
    let agent = Agent::start(&root.path().join("edge"));
    fleet_with(root, agent, prepare_deadline).await
}

async fn fleet_with(root: tempfile::TempDir, agent: Agent, prepare_deadline: Duration) -> Fleet {
    let server = TestServer::start_with(|config| config.prepare_deadline = prepare_deadline).await;
    server.user("erin", Role::Editor).await;
    server.user("abel", Role::Approver).await;
    server.user("ada", Role::Admin).await;
    let (editor, approver, admin) = (server.login("erin").await, server.login("abel").await, server.login("ada").await);
    let (status, body) = admin
        .post(
            "/api/v1/shadows",
            json!({"driver": "agent", "name": "edge", "url": agent.url(), "token": AGENT_TOKEN}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let directory = root.path().join("dc1").join("live");
    let (status, body) = admin
        .post("/api/v1/shadows", json!({"driver": "directory", "name": "dc1", "path": directory}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let fleet = Fleet {
        server,
        editor,
        approver,
        admin,
        agent,
        directory,
        root,
    };
    let id = fleet.approved_change(sample()).await;
    let (status, first) = fleet.roll_out(id).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["state"], "applied", "{first}");
    fleet
}

fn sample() -> Value {
    json!({"base_revision": 0, "message": "sample", "entries": [
        {"path": "app.toml", "content": "[server]\nport = 8080\n", "format": "toml", "mode": "0644"},
        {"path": "features.json", "content": "{\"search\": false}\n", "format": "json", "mode": "0644"}
    ]})
}

impl Fleet {
    async fn approved_change(&self, body: Value) -> i64 {
        let (status, change) = self.editor.post("/api/v1/changes", body).await;
        assert_eq!(status, StatusCode::CREATED, "{change}");
        let id = change["id"].as_i64().unwrap();
        let (status, body) = self.editor.post(&format!("/api/v1/changes/{id}/submit"), json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = self.approver.post(&format!("/api/v1/changes/{id}/approvals"), json!({})).await;
        assert!(status.is_success(), "{body}");
        id
    }

    async fn roll_out(&self, change: i64) -> (StatusCode, Value) {
        self.approver.post(&format!("/api/v1/changes/{change}/rollouts"), json!({})).await
    }

    /// Waits until the rollout reached a terminal state and answers it.
    async fn settled(&self, id: i64, within: Duration) -> Value {
        let started = Instant::now();
        loop {
            let (status, rollout) = self.editor.get(&format!("/api/v1/rollouts/{id}")).await;
            assert_eq!(status, StatusCode::OK, "{rollout}");
            if !matches!(rollout["state"].as_str(), Some("preparing" | "committing")) {
                return rollout;
            }
            assert!(started.elapsed() < within, "rollout {id} did not end within {within:?}: {rollout}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn revision_entry(&self, number: i64, path: &str) -> String {
        let (status, entry) = self.editor.get(&format!("/api/v1/revisions/{number}/entries/{path}")).await;
        assert_eq!(status, StatusCode::OK, "{entry}");
        entry["content"].as_str().unwrap().to_string()
    }
}

fn phase_of<'a>(rollout: &'a Value, shadow: &str) -> &'a Value {
    rollout["shadows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == shadow)
        .unwrap_or_else(|| panic!("no {shadow} in {rollout}"))
}

fn file(dir: &Path, path: &str) -> String {
    std::fs::read_to_string(dir.join(path)).unwrap()
}

/// Break 1: an approved change rolled out with `?wait=false`, an agent paused so prepare
/// waits, and the author edits the change meanwhile. The edit is refused (the change is
/// frozen), and what ships is what was approved, on every shadow and in history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_while_the_rollout_prepares_is_refused_and_the_approved_content_ships() {
    let fleet = fleet(Duration::from_secs(30)).await;
    let approved = "{\"search\": true}\n";
    let id = fleet.approved_change(change_body(1, "features.json", approved)).await;
    fleet.agent.pause();
    let (status, started) = fleet
        .approver
        .post(&format!("/api/v1/changes/{id}/rollouts?wait=false"), json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let rollout = started["id"].as_i64().unwrap();

    let edit = json!({"content": "{\"search\": \"unapproved\"}\n", "format": "json", "mode": "0644"});
    let (status, refused) = fleet.editor.put(&format!("/api/v1/changes/{id}/entries/features.json"), edit).await;
    assert_eq!(status, StatusCode::CONFLICT, "an edit of a change being rolled out: {refused}");
    assert_eq!(refused["error"]["code"], "change_frozen", "{refused}");
    let (status, refused) = fleet.editor.delete(&format!("/api/v1/changes/{id}/entries/features.json")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    let (status, refused) = fleet
        .approver
        .post(&format!("/api/v1/changes/{id}/reject"), json!({"reason": "late"}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "a review of a change being rolled out: {refused}");

    fleet.agent.resume();
    let done = fleet.settled(rollout, Duration::from_secs(30)).await;
    assert_eq!(done["state"], "applied", "{done}");
    assert_eq!(
        fleet.revision_entry(2, "features.json").await,
        approved,
        "history records what was approved"
    );
    assert_eq!(file(&fleet.agent.live, "features.json"), approved);
    assert_eq!(file(&fleet.directory, "features.json"), approved);
    let (_, change) = fleet.editor.get(&format!("/api/v1/changes/{id}")).await;
    assert_eq!(change["state"], "rolled_out", "{change}");
}

/// Break 2: a waiting client hangs up while an agent is paused. The rollout is the
/// coordinator's: it ends by the prepare deadline while the server runs, aborts
/// everywhere, and the next rollout is not refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_leaves_a_rollout_that_still_ends_by_its_deadline() {
    let fleet = fleet(Duration::from_secs(3)).await;
    let id = fleet.approved_change(change_body(1, "app.toml", "[server]\nport = 9090\n")).await;
    fleet.agent.pause();
    let impatient = reqwest::Client::builder()
        .cookie_store(true)
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    // Sign in this client as the approver, then hang up on the rollout.
    let login = impatient
        .post(fleet.server.url("/api/v1/session"))
        .header("origin", fleet.server.origin())
        .json(&json!({"username": "abel", "password": common::PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::OK);
    let hung_up = impatient
        .post(fleet.server.url(&format!("/api/v1/changes/{id}/rollouts")))
        .header("origin", fleet.server.origin())
        .json(&json!({}))
        .send()
        .await;
    assert!(hung_up.is_err(), "the client gave up before the answer");

    let (_, page) = fleet.editor.get("/api/v1/rollouts?limit=1").await;
    let rollout = page["items"][0]["id"].as_i64().unwrap();
    let ended = fleet.settled(rollout, Duration::from_secs(15)).await;
    assert_eq!(ended["state"], "failed", "{ended}");
    let edge = phase_of(&ended, "edge");
    assert_eq!(edge["phase"], "refused", "{ended}");
    assert!(edge["error"].as_str().unwrap().contains("deadline"), "{ended}");
    // The abort reaches the prepared shadow right after the decision.
    let begun = Instant::now();
    while phase_of(&fleet.editor.get(&format!("/api/v1/rollouts/{rollout}")).await.1, "dc1")["phase"] != "aborted" {
        assert!(begun.elapsed() < Duration::from_secs(10), "dc1 never acknowledged the abort");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        file(&fleet.directory, "app.toml"),
        "[server]\nport = 8080\n",
        "aborted: the old revision stays"
    );

    fleet.agent.resume();
    // The agent staged nothing that lingers: its late prepare was aborted or refused.
    let (status, again) = fleet.roll_out(id).await;
    assert_eq!(status, StatusCode::CREATED, "the fleet is not wedged: {again}");
    assert_eq!(again["state"], "applied", "{again}");
    assert_eq!(file(&fleet.agent.live, "app.toml"), "[server]\nport = 9090\n");
}

/// After the commit decision a shadow commits but proves another root (a hand edit raced
/// the commit): its wait ends as `mismatch`, the rollout ends `incomplete`, a drift
/// incident opens for it, and later rollouts are not blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_of_another_root_ends_the_rollout_incomplete_with_an_incident() {
    let mut fleet = fleet(Duration::from_secs(10)).await;
    fleet.agent.restart_with(&[("ETC_SHADOW_FAILPOINT_EDIT_AFTER_SWITCH", "app.toml")]);
    let id = fleet.approved_change(change_body(1, "app.toml", "[server]\nport = 9090\n")).await;
    let (status, rollout) = fleet.roll_out(id).await;
    assert_eq!(status, StatusCode::CREATED, "{rollout}");
    assert_eq!(rollout["state"], "incomplete", "{rollout}");
    let edge = phase_of(&rollout, "edge");
    assert_eq!(edge["phase"], "mismatch", "{rollout}");
    assert_ne!(edge["receipt_root"], rollout["root"], "{rollout}");
    assert_eq!(phase_of(&rollout, "dc1")["phase"], "committed", "{rollout}");
    assert_eq!(phase_of(&rollout, "dc1")["receipt_root"], rollout["root"], "{rollout}");
    // The revision is current (the decision was commit) and the hand edit is drift.
    assert_eq!(fleet.revision_entry(2, "app.toml").await, "[server]\nport = 9090\n");
    let started = Instant::now();
    loop {
        let (_, incidents) = fleet.editor.get("/api/v1/incidents?shadow=edge&status=open").await;
        if incidents["items"]
            .as_array()
            .is_some_and(|items| items.iter().any(|i| i["kind"] == "content"))
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no content incident for edge: {incidents}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing is wedged: the agent, healthy again, is reconciled.
    fleet.agent.restart_with(&[]);
    let (status, reconcile) = fleet.approver.post("/api/v1/shadows/edge/reconcile", json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{reconcile}");
    assert_eq!(reconcile["state"], "applied", "{reconcile}");
    assert_eq!(file(&fleet.agent.live, "app.toml"), "[server]\nport = 9090\n");
}

/// A shadow that prepared but can never commit (its disk refuses the switch) keeps the
/// rollout committing; an approver releases it from the console's exit, the rollout ends
/// `incomplete` (audited) and the next rollout goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_releases_a_shadow_that_cannot_commit() {
    let mut fleet = fleet(Duration::from_secs(10)).await;
    fleet.agent.restart_with(&[("ETC_SHADOW_FAILPOINT_COMMIT", "io")]);
    let id = fleet.approved_change(change_body(1, "app.toml", "[server]\nport = 9090\n")).await;
    let (status, started) = fleet
        .approver
        .post(&format!("/api/v1/changes/{id}/rollouts?wait=false"), json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let rollout = started["id"].as_i64().unwrap();
    let begun = Instant::now();
    let waiting = loop {
        let (_, view) = fleet.editor.get(&format!("/api/v1/rollouts/{rollout}")).await;
        if view["state"] == "committing" && phase_of(&view, "dc1")["phase"] == "committed" {
            break view;
        }
        assert!(begun.elapsed() < Duration::from_secs(20), "{view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(phase_of(&waiting, "edge")["phase"], "prepared", "{waiting}");
    // Later rollouts wait while this one is open...
    let next = fleet.approved_change(change_body(2, "app.toml", "[server]\nport = 9191\n")).await;
    let (status, busy) = fleet.roll_out(next).await;
    assert_eq!(status, StatusCode::CONFLICT, "{busy}");
    // ...and the exit is the release, which a viewer-level editor may not take.
    let release = format!("/api/v1/rollouts/{rollout}/shadows/edge/release");
    let (status, _) = fleet.editor.post(&release, json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, released) = fleet.approver.post(&release, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{released}");
    let ended = fleet.settled(rollout, Duration::from_secs(10)).await;
    assert_eq!(ended["state"], "incomplete", "{ended}");
    assert_eq!(phase_of(&ended, "edge")["phase"], "released", "{ended}");
    let (status, again) = fleet.approver.post(&release, json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "released twice: {again}");
    let (_, audit) = fleet.admin.get("/api/v1/audit?limit=50").await;
    assert!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|row| row["action"] == "rollout.release" && row["actor"] == "abel" && row["target"] == format!("rollout/{rollout}")),
        "the release is audited: {audit}"
    );
    fleet.agent.restart_with(&[]);
    // The next rollout is not refused as busy (edge still serves revision 1, so it is
    // refused there by the base-root check and aborted everywhere: drift, not a wedge).
    let (status, after) = fleet.roll_out(next).await;
    assert_eq!(status, StatusCode::CREATED, "{after}");
    assert_eq!(after["state"], "failed", "{after}");
    assert!(
        phase_of(&after, "edge")["error"].as_str().unwrap().contains("base_root_mismatch"),
        "{after}"
    );
}

/// An operator cancels a rollout that waits for a paused agent at prepare.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_cancels_a_rollout_that_is_still_preparing() {
    let fleet = fleet(Duration::from_secs(60)).await;
    let id = fleet.approved_change(change_body(1, "app.toml", "[server]\nport = 9090\n")).await;
    fleet.agent.pause();
    let (status, started) = fleet
        .approver
        .post(&format!("/api/v1/changes/{id}/rollouts?wait=false"), json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let rollout = started["id"].as_i64().unwrap();
    let (status, cancelled) = fleet.approver.post(&format!("/api/v1/rollouts/{rollout}/cancel"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["state"], "aborted", "{cancelled}");
    // The console's door to the same exit.
    let (status, started) = fleet
        .approver
        .post(&format!("/api/v1/changes/{id}/rollouts?wait=false"), json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let second = started["id"].as_i64().unwrap();
    let (status, body) = fleet.approver.server_fn("cancel_rollout", &format!("id={second}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, view) = fleet.editor.get(&format!("/api/v1/rollouts/{second}")).await;
    assert_eq!(view["state"], "aborted", "{view}");
    let (status, body) = fleet.editor.server_fn("cancel_rollout", &format!("id={second}")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "an editor has no exit: {body}");
    fleet.agent.resume();
    let (status, again) = fleet.roll_out(id).await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_eq!(again["state"], "applied", "{again}");
}

/// Break 6: a control plane started from an older copy of its data directory (same id)
/// cannot move a shadow backwards, by reconcile or by its start-up recovery, and does not
/// fence the original.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_an_old_data_directory_cannot_roll_shadows_backwards() {
    let fleet = fleet(Duration::from_secs(10)).await;
    // The copy: a consistent backup of the database taken now, at revision 1, with the
    // key file (kept apart from database backups, restored with them).
    let copy = fleet.root.path().join("old-copy");
    fleet.server.back_up(&copy).await;
    let id = fleet.approved_change(change_body(1, "app.toml", "[server]\nport = 9090\n")).await;
    let (_, second) = fleet.roll_out(id).await;
    assert_eq!(second["state"], "applied", "{second}");
    let before = (snapshot(&fleet.agent.live), snapshot(&fleet.directory));

    // The old copy starts (its own epoch is raised at start) and is told to reconcile.
    let stale = TestServer::start_with(|config| {
        config.data_dir = copy.clone();
        config.prepare_deadline = Duration::from_secs(5);
    })
    .await;
    let approver = stale.login("abel").await;
    for shadow in ["edge", "dc1"] {
        let (status, refused) = approver.post(&format!("/api/v1/shadows/{shadow}/reconcile"), json!({})).await;
        assert_eq!(status, StatusCode::CREATED, "{refused}");
        assert_eq!(refused["state"], "failed", "the copy is refused by {shadow}: {refused}");
        assert!(
            phase_of(&refused, shadow)["error"]
                .as_str()
                .unwrap()
                .contains("older than revision 2"),
            "{refused}"
        );
    }
    stale.stop().await;
    assert_eq!(
        (snapshot(&fleet.agent.live), snapshot(&fleet.directory)),
        before,
        "nothing moved backwards"
    );

    // The original still writes to both.
    let id = fleet.approved_change(change_body(2, "app.toml", "[server]\nport = 9191\n")).await;
    let (_, third) = fleet.roll_out(id).await;
    assert_eq!(third["state"], "applied", "the original is not fenced by the copy: {third}");
}

/// Break 7: a data directory with its key file but no database (deleted, or emptied) is
/// a clear error at start, not a brand-new control plane; `--initialize` is the explicit
/// way to make a new one there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_next_to_its_keys_is_refused_at_start() {
    let kept = tempfile::tempdir().unwrap();
    let data = kept.path().join("data");
    let server = TestServer::start_with(|config| config.data_dir = data.clone()).await;
    server.stop().await;
    for lost in ["deleted", "emptied"] {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(data.join(format!("{}{suffix}", control::db::DATABASE_FILE)));
        }
        if lost == "emptied" {
            std::fs::write(data.join(control::db::DATABASE_FILE), b"").unwrap();
        }
        let config = server::Config::new(data.clone(), "127.0.0.1:0".parse().unwrap());
        let listing: Vec<_> = std::fs::read_dir(&data).unwrap().flatten().map(|e| e.file_name()).collect();
        let err = server::prepare(config)
            .await
            .err()
            .unwrap_or_else(|| panic!("{lost}: refused ({listing:?})"));
        let message = err.to_string();
        assert!(message.contains("has no database"), "{lost}: {message}");
        assert!(
            message.contains(control::secrets::KEY_FILE),
            "{lost}: names what it found: {message}"
        );
        assert!(message.contains("--initialize"), "{lost}: says the way out: {message}");
    }
    let mut config = server::Config::new(data.clone(), "127.0.0.1:0".parse().unwrap());
    config.initialize = true;
    assert!(server::prepare(config).await.is_ok(), "--initialize makes a new database");
    // The CLI says the same.
    let fresh = tempfile::tempdir().unwrap();
    std::fs::write(fresh.path().join(control::secrets::KEY_FILE), b"not read").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_etc-shadow"))
        .args(["shadow", "list", "--data-dir"])
        .arg(fresh.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--initialize"), "{output:?}");
}

/// Unmounts when dropped, also when the test fails.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Break 3: an agent whose `--dir` is an existing, non-empty directory on its own file
/// system (a tmpfs mounted there when the tests run as root, else a directory on
/// /dev/shm), the state directory on disk. The reconcile adopts it in place, the original
/// files stay recoverable inside it, and later rollouts switch there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_adopts_an_existing_directory_on_its_own_file_system() {
    use std::os::unix::fs::MetadataExt;
    let root = tempfile::tempdir().unwrap();
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let mount_point = root.path().join("volume");
    std::fs::create_dir_all(&mount_point).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(&mount_point)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        .then(|| Mounted(mount_point.clone()));
    let live = if mounted.is_some() {
        mount_point.clone()
    } else {
        shm.path().join("live")
    };
    eprintln!(
        "managed directory: {} ({})",
        live.display(),
        if mounted.is_some() { "a tmpfs mount point" } else { "on /dev/shm" }
    );
    std::fs::create_dir_all(live.join("conf.d")).unwrap();
    std::fs::write(live.join("app.toml"), "hand-made = true\n").unwrap();
    std::fs::write(live.join("conf.d/old.conf"), "old\n").unwrap();
    let agent = Agent::start_managing(&root.path().join("edge"), live.clone());
    assert_ne!(
        std::fs::metadata(&live).unwrap().dev(),
        std::fs::metadata(&agent.state).unwrap().dev(),
        "the managed directory is on another file system than the state"
    );

    let server = TestServer::start().await;
    server.user("erin", Role::Editor).await;
    server.user("abel", Role::Approver).await;
    server.user("ada", Role::Admin).await;
    let (editor, approver, admin) = (server.login("erin").await, server.login("abel").await, server.login("ada").await);
    // Revision 1, with no shadow yet.
    let (_, change) = editor.post("/api/v1/changes", sample()).await;
    let id = change["id"].as_i64().unwrap();
    editor.post(&format!("/api/v1/changes/{id}/submit"), json!({})).await;
    approver.post(&format!("/api/v1/changes/{id}/approvals"), json!({})).await;
    let (_, first) = approver.post(&format!("/api/v1/changes/{id}/rollouts"), json!({})).await;
    assert_eq!(first["state"], "applied", "{first}");
    let (status, body) = admin
        .post(
            "/api/v1/shadows",
            json!({"driver": "agent", "name": "edge", "url": agent.url(), "token": AGENT_TOKEN}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let (status, reconcile) = tokio::time::timeout(Duration::from_secs(30), approver.post("/api/v1/shadows/edge/reconcile", json!({})))
        .await
        .expect("the reconcile ends");
    assert_eq!(status, StatusCode::CREATED, "{reconcile}");
    assert_eq!(reconcile["state"], "applied", "{reconcile}");
    assert_eq!(file(&live, "app.toml"), "[server]\nport = 8080\n");
    assert_eq!(file(&live, "features.json"), "{\"search\": false}\n");
    assert!(
        !live.join("conf.d").exists(),
        "an exact copy: what the primary lacks is gone from view"
    );
    let original = std::fs::read_dir(&live)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("..original-"))
        .expect("the original files are kept inside the directory")
        .path();
    assert_eq!(file(&original, "app.toml"), "hand-made = true\n");
    assert_eq!(file(&original, "conf.d/old.conf"), "old\n");

    let (_, change) = editor
        .post("/api/v1/changes", change_body(1, "app.toml", "[server]\nport = 9090\n"))
        .await;
    let id = change["id"].as_i64().unwrap();
    editor.post(&format!("/api/v1/changes/{id}/submit"), json!({})).await;
    approver.post(&format!("/api/v1/changes/{id}/approvals"), json!({})).await;
    let (_, second) = approver.post(&format!("/api/v1/changes/{id}/rollouts"), json!({})).await;
    assert_eq!(second["state"], "applied", "{second}");
    assert_eq!(file(&live, "app.toml"), "[server]\nport = 9090\n");
    drop(agent);
    drop(mounted);
}

/// Break 4: a directory shadow is a real copy: plain files at its path, its generations and
/// fence state there too, nothing in the control plane's data directory. A second control
/// plane registering the same path is fenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_shadow_is_a_real_copy_that_fences_a_second_control_plane() {
    let fleet = fleet(Duration::from_secs(10)).await;
    let dc1 = &fleet.directory;
    assert!(
        std::fs::symlink_metadata(dc1).unwrap().is_dir(),
        "the path is a directory, not a link"
    );
    assert_eq!(file(dc1, "app.toml"), "[server]\nport = 8080\n");
    let real = std::fs::canonicalize(dc1.join("app.toml")).unwrap();
    assert!(
        real.starts_with(std::fs::canonicalize(dc1).unwrap()),
        "the bytes are under the path: {}",
        real.display()
    );
    let data = std::fs::canonicalize(fleet.server.data_dir()).unwrap();
    for entry in std::fs::read_dir(&data).unwrap().flatten() {
        assert!(
            !entry.file_type().unwrap().is_dir(),
            "nothing of a shadow in the data directory: {entry:?}"
        );
    }
    // Mounted elsewhere (here: copied away, links and all), it still reads as the files.
    let elsewhere = fleet.root.path().join("mounted-elsewhere");
    assert!(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(dc1)
            .arg(&elsewhere)
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(file(&elsewhere, "app.toml"), "[server]\nport = 8080\n");

    // A second control plane, another id, the same path: its writes are refused.
    let other = TestServer::start().await;
    other.user("abel", Role::Approver).await;
    other.user("ada", Role::Admin).await;
    let other_admin = other.login("ada").await;
    let (status, body) = other_admin
        .post("/api/v1/shadows", json!({"driver": "directory", "name": "stolen", "path": dc1}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, refused) = other.login("abel").await.post("/api/v1/shadows/stolen/reconcile", json!({})).await;
    assert_eq!(refused["state"], "failed", "{refused}");
    assert!(
        phase_of(&refused, "stolen")["error"].as_str().unwrap().contains("fenced"),
        "{refused}"
    );
    assert_eq!(file(dc1, "app.toml"), "[server]\nport = 8080\n", "untouched");
    other.stop().await;
}

/// Break 5: a symlink planted in an agent's live tree, and a managed file replaced by a
/// symlink, are each drift with their path and kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_symlinks_are_drift_with_their_path_and_kind() {
    let fleet = fleet(Duration::from_secs(10)).await;
    let evil = fleet.root.path().join("evil.conf");
    std::fs::write(&evil, "evil\n").unwrap();
    std::fs::create_dir_all(fleet.agent.live.join("conf.d")).unwrap();
    std::os::unix::fs::symlink(&evil, fleet.agent.live.join("conf.d/zz.conf")).unwrap();
    std::fs::remove_file(fleet.directory.join("features.json")).unwrap();
    std::os::unix::fs::symlink(&evil, fleet.directory.join("features.json")).unwrap();
    for (shadow, path, kind) in [("edge", "conf.d/zz.conf", "unexpected"), ("dc1", "features.json", "content")] {
        let started = Instant::now();
        let incident = loop {
            fleet.editor.post(&format!("/api/v1/shadows/{shadow}/check"), json!({})).await;
            let (_, page) = fleet.editor.get(&format!("/api/v1/incidents?shadow={shadow}&status=open")).await;
            if let Some(found) = page["items"].as_array().and_then(|items| items.first()).cloned() {
                let (_, full) = fleet.editor.get(&format!("/api/v1/incidents/{}", found["id"])).await;
                break full;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "no incident for {shadow}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(incident["kind"], kind, "{incident}");
        let entry = incident["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["path"] == path)
            .unwrap_or_else(|| panic!("{path} named in {incident}"));
        assert!(
            entry["observed_policy"].as_str().unwrap().contains("symlink to"),
            "the kind is shown: {entry}"
        );
    }
    assert_eq!(std::fs::read_to_string(&evil).unwrap(), "evil\n");
}

/// Break 9: a console action after the session ended is refused in the shape the page
/// decodes (the server-function error encoding, not the REST API's JSON), saying the
/// session ended; a page opened without a session sends the person to the sign-in, which
/// comes back to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_action_without_a_session_is_refused_in_the_shape_the_page_reads() {
    let server = TestServer::start().await;
    let anonymous = server.anonymous();
    let (status, body) = anonymous.server_fn("acknowledge_incident", "id=1").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body, format!("ServerError|{}", domain::api::SIGNED_OUT), "decodable by the page");
    // The REST API keeps its JSON.
    let (status, body) = anonymous.post("/api/v1/incidents/1/acknowledge", json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    // A page: to the sign-in, and back afterwards.
    let response = anonymous.send(reqwest::Method::GET, "/incidents/7?tab=diff", None).await;
    assert!(response.status().is_redirection(), "{}", response.status());
    assert_eq!(response.headers()["location"], "/login?next=/incidents/7%3Ftab%3Ddiff");
    server.stop().await;
}

/// Growth is bounded: a file that keeps changing adds one coalesced "changed" event, not
/// one per change; removing a shadow resolves its open incidents and drops its checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_keeps_changing_and_a_removed_shadow_leave_bounded_records() {
    let fleet = fleet(Duration::from_secs(10)).await;
    for round in 0..6 {
        std::fs::write(fleet.directory.join("app.toml"), format!("[server]\nport = {}\n", 7000 + round)).unwrap();
        let (status, body) = fleet.editor.post("/api/v1/shadows/dc1/check", json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (_, page) = fleet.editor.get("/api/v1/incidents?shadow=dc1").await;
    let id = page["items"][0]["id"].as_i64().expect("an incident for dc1");
    let (_, incident) = fleet.editor.get(&format!("/api/v1/incidents/{id}")).await;
    let events: Vec<&str> = incident["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["detected", "changed"], "{incident}");
    assert_eq!(incident["timeline"][1]["details"]["changes"], 5, "{incident}");

    let (status, body) = fleet.admin.delete("/api/v1/shadows/dc1").await;
    assert!(status.is_success(), "{body}");
    let (_, incident) = fleet.editor.get(&format!("/api/v1/incidents/{id}")).await;
    assert_eq!(incident["status"], "resolved", "{incident}");
    assert_eq!(incident["resolution"], "shadow_removed", "{incident}");
    let (checks,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM shadow_checks WHERE shadow = 'dc1'")
        .fetch_one(&fleet.server.state.db.read)
        .await
        .unwrap();
    assert_eq!(checks, 0, "the removed shadow's checks are gone");
}

/// Break 6, the recovery half: a backup taken while a rollout was committing, started
/// after the original finished it, drives that commit again at start. The shadows answer
/// it as already done without recording the copy's (higher) epoch, so the original is not
/// fenced and goes on writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_up_recovery_of_an_old_copy_does_not_fence_the_original() {
    let mut fleet = fleet(Duration::from_secs(10)).await;
    fleet.agent.restart_with(&[("ETC_SHADOW_FAILPOINT_COMMIT", "io")]);
    let id = fleet.approved_change(change_body(1, "app.toml", "[server]\nport = 9090\n")).await;
    let (_, started) = fleet
        .approver
        .post(&format!("/api/v1/changes/{id}/rollouts?wait=false"), json!({}))
        .await;
    let rollout = started["id"].as_i64().unwrap();
    let begun = Instant::now();
    while fleet.editor.get(&format!("/api/v1/rollouts/{rollout}")).await.1["state"] != "committing" {
        assert!(begun.elapsed() < Duration::from_secs(20), "never committing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The backup, taken while the commit waits for the agent.
    let copy = fleet.root.path().join("mid-rollout-copy");
    fleet.server.back_up(&copy).await;
    // The agent heals; the original finishes the rollout.
    fleet.agent.restart_with(&[]);
    let done = fleet.settled(rollout, Duration::from_secs(30)).await;
    assert_eq!(done["state"], "applied", "{done}");

    // The copy starts (a higher epoch than the original's) and recovers "its" rollout.
    let stale = TestServer::start_with(|config| config.data_dir = copy.clone()).await;
    let viewer = stale.login("erin").await;
    let begun = Instant::now();
    let recovered = loop {
        let (_, view) = viewer.get(&format!("/api/v1/rollouts/{rollout}")).await;
        if view["state"] != "committing" {
            break view;
        }
        assert!(begun.elapsed() < Duration::from_secs(20), "the copy's recovery never ended: {view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The copy drove the commit: the agent answered it as done (same rollout, same root).
    assert_eq!(recovered["state"], "applied", "{recovered}");
    assert_eq!(phase_of(&recovered, "edge")["receipt_root"], recovered["root"], "{recovered}");
    stale.stop().await;

    let id = fleet.approved_change(change_body(2, "app.toml", "[server]\nport = 9191\n")).await;
    let (_, next) = fleet.roll_out(id).await;
    assert_eq!(
        next["state"], "applied",
        "the original is not fenced by the copy's recovery: {next}"
    );
    assert_eq!(file(&fleet.agent.live, "app.toml"), "[server]\nport = 9191\n");
}

/// A shadow that works slowly is not a dead one: with a 2 s prepare deadline and an agent
/// whose disk stages each entry in 40 ms, a change of 120 entries (about 5 s of staging)
/// still rolls out, because the coordinator asks how far each prepare it waits for has
/// come and moves the deadline while every one of them moves. A paused agent (no
/// progress) still ends the same rollout by its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_shadow_that_makes_progress_is_waited_for_and_a_stopped_one_is_not() {
    let mut fleet = fleet(Duration::from_secs(2)).await;
    fleet.agent.restart_with(&[("ETC_SHADOW_FAILPOINT_SLOW_STAGING_MS", "40")]);
    let many = |version: u32| {
        let entries: Vec<Value> = (0..120)
            .map(|i| json!({"path": format!("many/entry{i:03}.conf"), "content": format!("value = {version}\n"), "format": "text", "mode": "0644"}))
            .collect();
        entries
    };
    let id = fleet
        .approved_change(json!({"base_revision": 1, "message": "many", "entries": many(1)}))
        .await;
    let started = Instant::now();
    let (status, rollout) = fleet.roll_out(id).await;
    assert_eq!(status, StatusCode::CREATED, "{rollout}");
    let rollout = fleet.settled(rollout["id"].as_i64().unwrap(), Duration::from_secs(60)).await;
    assert_eq!(rollout["state"], "applied", "a working shadow was given up on: {rollout}");
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "the staging was not slower than the deadline"
    );
    assert_eq!(file(&fleet.agent.live, "many/entry119.conf"), "value = 1\n");

    // Stopped mid-prepare: no progress, so the deadline holds.
    let id = fleet
        .approved_change(json!({"base_revision": 2, "message": "many again", "entries": many(2)}))
        .await;
    let (_, rollout) = fleet
        .approver
        .post(&format!("/api/v1/changes/{id}/rollouts?wait=false"), json!({}))
        .await;
    let rollout_id = rollout["id"].as_i64().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    fleet.agent.pause();
    let ended = fleet.settled(rollout_id, Duration::from_secs(30)).await;
    fleet.agent.resume();
    assert_eq!(ended["state"], "failed", "{ended}");
    assert!(phase_of(&ended, "edge")["error"].as_str().unwrap().contains("deadline"), "{ended}");
    assert_eq!(
        file(&fleet.agent.live, "many/entry000.conf"),
        "value = 1\n",
        "aborted: the old revision stays"
    );
}

/// Two servers over one PostgreSQL database would each take the other's rollouts for
/// interrupted ones and fence each other on the shadows: the second is refused before it
/// raises the epoch, and serves once the first has stopped. (On SQLite the data
/// directory's lock does this, at the CLI; the suite's second pass runs this test over
/// PostgreSQL.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_database_is_refused_until_the_first_stops() {
    let first = TestServer::start().await;
    let Some(database) = first.database.clone() else {
        eprintln!("on SQLite the data directory's lock refuses a second server (tested at the CLI)");
        return;
    };
    let epoch = |db: &control::Db| {
        let pool = db.read.clone();
        async move {
            let (epoch,): (i64,) = sqlx::query_as("SELECT epoch FROM control_plane").fetch_one(&pool).await.unwrap();
            epoch
        }
    };
    let before = epoch(&first.state.db).await;
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::copy(
        first.data_dir().join(control::secrets::KEY_FILE),
        elsewhere.path().join(control::secrets::KEY_FILE),
    )
    .unwrap();
    let mut config = server::Config::new(elsewhere.path().to_path_buf(), "127.0.0.1:0".parse().unwrap());
    config.database = Some(database.clone());
    let refused = server::prepare(config.clone()).await.err().expect("a second server is refused");
    assert!(refused.to_string().contains("another etc-shadow server"), "{refused}");
    assert_eq!(epoch(&first.state.db).await, before, "the refused server raised no epoch");

    // A data directory without the key file is refused before a new key is made; a key
    // file beside a database that holds no control plane (lost, or the wrong one) is
    // refused unless --initialize.
    let keyless = tempfile::tempdir().unwrap();
    let refused = control::Db::open_at(keyless.path(), Some(&database), false)
        .await
        .expect_err("no key file");
    assert!(refused.to_string().contains("has no key file"), "{refused}");
    assert!(!keyless.path().join(control::secrets::KEY_FILE).exists(), "no key was made");
    let empty = common::test_database().unwrap();
    let refused = control::Db::open_at(elsewhere.path(), Some(&empty), false)
        .await
        .expect_err("an empty database");
    assert!(refused.to_string().contains("--initialize"), "{refused}");
    let made = control::Db::open_at(elsewhere.path(), Some(&empty), true)
        .await
        .expect("--initialize makes one");
    made.close().await;
    first.stop().await;
    let second = server::prepare(config).await.expect("the database is free once the first stopped");
    assert_eq!(epoch(&second.db).await, before + 1);
    second.serving.release().await;
}

/// A directory shadow removed and registered again under its name at another path, by
/// another process on the same database (the command line here; another replica of the
/// control plane alike), is rolled out to where it now is: the server opened its store
/// at the old path and wrote there before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_registered_again_elsewhere_is_written_where_it_now_is() {
    let fleet = fleet(Duration::from_secs(10)).await;
    let old = fleet.directory.clone();
    let moved = fleet.root.path().join("dc1-moved").join("live");
    let run = |args: &[&str]| {
        let output = fleet.server.cli().args(args).output().unwrap();
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    };
    run(&["shadow", "remove", "dc1"]);
    run(&["shadow", "add", "dc1", "--directory", moved.to_str().unwrap()]);
    // The new, empty place is brought to the current revision first.
    let (status, reconciled) = fleet.approver.post("/api/v1/shadows/dc1/reconcile", json!({})).await;
    assert!(status.is_success(), "{reconciled}");
    assert_eq!(reconciled["state"], "applied", "{reconciled}");
    assert_eq!(std::fs::read_to_string(moved.join("app.toml")).unwrap(), "[server]\nport = 8080\n");
    let (_, current) = fleet.editor.get("/api/v1/revisions?limit=1").await;
    let base = current["items"][0]["number"].as_i64().unwrap();
    let id = fleet
        .approved_change(json!({"base_revision": base, "message": "moved", "entries": [
            {"path": "app.toml", "content": "[server]\nport = 9090\n", "format": "toml", "mode": "0644"}
        ]}))
        .await;
    let (status, rollout) = fleet.roll_out(id).await;
    assert_eq!(status, StatusCode::CREATED, "{rollout}");
    assert_eq!(rollout["state"], "applied", "{rollout}");
    assert_eq!(std::fs::read_to_string(moved.join("app.toml")).unwrap(), "[server]\nport = 9090\n");
    assert_eq!(
        std::fs::read_to_string(old.join("app.toml")).unwrap(),
        "[server]\nport = 8080\n",
        "the old path is no longer written"
    );
}
