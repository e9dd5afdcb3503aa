//! Running real services with etc-shadow: a node's validate hook refuses a bad tree on
//! every shadow with its output (secrets masked), a reload hook runs after the switch and a
//! failure is an incident, drills prove a shadow could take over, a directory's files
//! become a change, and an old revision comes back as a reviewed change. Real agent
//! processes with real hooks files, directory shadows, the real server over HTTP.

mod common;

use common::{
    Session, TestServer,
    fleet::{AGENT_TOKEN, Agent, snapshot},
};
use domain::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::{path::Path, time::Duration};

const SECRET: &str = "hunter2-very-secret-value";

struct Fleet {
    server: TestServer,
    editor: Session,
    approver: Session,
    viewer: Session,
    agent: Agent,
    directory: std::path::PathBuf,
    reloads: std::path::PathBuf,
    root: tempfile::TempDir,
}

/// The node's hooks: validate prints the staged secret file (a validator that quotes what
/// it read) and checks every file by its extension with etc-shadow's own validator; reload
/// records the live json and fails while `fail-reload` exists; health needs `healthy`.
fn node_hooks(reloads: &Path) -> String {
    let validator = env!("CARGO_BIN_EXE_etc-shadow");
    format!(
        r#"
[validate]
command = ["/bin/sh", "-c", "cat \"$1/db.env\" 2>/dev/null; exec \"$2\" validate \"$1\"", "sh", "{{staged}}", "{validator}"]
timeout = "20s"

[reload]
command = ["/bin/sh", "-c", "cat \"$1/x.json\" >> \"$2\"; echo reloaded; test ! -e \"$1/fail-reload\"", "sh", "{{live}}", "{reloads}"]

[health]
command = ["/bin/sh", "-c", "test -e \"$1/healthy\"", "sh", "{{live}}"]
"#,
        reloads = reloads.display()
    )
}

async fn fleet() -> Fleet {
    // The directory shadow's hooks come from the control plane's configuration.
    let root = tempfile::tempdir().unwrap();
    let hooks_dir = root.path().join("hooks.d");
    std::fs::create_dir(&hooks_dir).unwrap();
    std::fs::write(
        hooks_dir.join("dr.toml"),
        "[validate]\ncommand = [\"/bin/sh\", \"-c\", \"echo dr validated\"]\n",
    )
    .unwrap();
    let server = TestServer::start_with(|config| {
        config.check_interval = Duration::from_millis(300);
        config.directory_hooks = Some(hooks_dir);
    })
    .await;
    server.user("erin", Role::Editor).await;
    server.user("abel", Role::Approver).await;
    server.user("vic", Role::Viewer).await;
    let (editor, approver, viewer) = (server.login("erin").await, server.login("abel").await, server.login("vic").await);
    let reloads = root.path().join("reloads.log");
    let agent = Agent::start_with_hooks(&root.path().join("edge"), &node_hooks(&reloads));
    control::shadows::add_as(
        &server.state.db,
        "test",
        control::shadows::NewShadow::Agent {
            name: "edge".into(),
            url: agent.url(),
            token: Some(AGENT_TOKEN.into()),
            tls_pin: None,
        },
    )
    .await
    .unwrap();
    let directory = root.path().join("dr").join("live");
    control::shadows::add_as(
        &server.state.db,
        "test",
        control::shadows::NewShadow::Directory {
            name: "dr".into(),
            path: directory.to_string_lossy().into_owned(),
        },
    )
    .await
    .unwrap();
    Fleet {
        server,
        editor,
        approver,
        viewer,
        agent,
        directory,
        reloads,
        root,
    }
}

impl Fleet {
    async fn roll_out(&self, body: Value) -> Value {
        let (status, change) = self.editor.post("/api/v1/changes", body).await;
        assert_eq!(status, StatusCode::CREATED, "{change}");
        let id = change["id"].as_i64().unwrap();
        self.roll_out_change(id).await
    }

    async fn roll_out_change(&self, id: i64) -> Value {
        let (status, submitted) = self.editor.post(&format!("/api/v1/changes/{id}/submit"), json!({})).await;
        assert_eq!(status, StatusCode::OK, "{submitted}");
        let (status, approved) = self.approver.post(&format!("/api/v1/changes/{id}/approvals"), json!({})).await;
        assert_eq!(status, StatusCode::CREATED, "{approved}");
        let (status, rollout) = self.approver.post(&format!("/api/v1/changes/{id}/rollouts"), json!({})).await;
        assert_eq!(status, StatusCode::CREATED, "{rollout}");
        rollout
    }

    async fn current(&self) -> i64 {
        let (_, page) = self.editor.get("/api/v1/revisions?limit=1").await;
        page["items"][0]["number"].as_i64().unwrap()
    }

    async fn incidents(&self, kind: &str) -> Vec<Value> {
        let (status, page) = self.viewer.get(&format!("/api/v1/incidents?kind={kind}")).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        page["items"].as_array().unwrap().clone()
    }
}

fn shadow<'a>(rollout: &'a Value, name: &str) -> &'a Value {
    rollout["shadows"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap()
}

fn entries(base: i64, json_text: &str, extra: &[(&str, &str)]) -> Value {
    let mut list = vec![
        // Declared text, so the control plane takes it as it is: only the node's own
        // validator reads it as json (by its extension).
        json!({"path": "x.json", "content": json_text, "format": "text", "mode": "0644"}),
        json!({"path": "db.env", "content": format!("DB_PASSWORD={SECRET}\n"), "format": "env", "mode": "0600", "secret": true}),
    ];
    for (path, content) in extra {
        list.push(json!({"path": path, "content": content, "format": "text", "mode": "0644"}));
    }
    json!({"base_revision": base, "message": "hooks", "entries": list})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validate_hook_refuses_everywhere_with_its_output_and_a_failed_reload_is_an_incident() {
    let fleet = fleet().await;
    // 1. The node's validator refuses the staged tree: the rollout aborts on every shadow,
    // and the hook's output is on the rollout, the secret it printed masked.
    let rollout = fleet.roll_out(entries(0, "{\"a\": 1,", &[])).await;
    assert_eq!(rollout["state"], "failed", "{rollout}");
    let edge = shadow(&rollout, "edge");
    assert_eq!(edge["phase"], "refused", "{edge}");
    assert!(edge["error"].as_str().unwrap().contains("validate_failed"), "{edge}");
    let hook = &edge["hook"];
    assert_eq!(hook["hook"], "validate");
    assert_eq!(hook["ok"], false);
    assert_eq!(hook["exit_code"], 1);
    let output = hook["output"].as_str().unwrap();
    assert!(output.contains("x.json"), "the validator names the file: {output}");
    assert!(output.contains("[secret]") && !output.contains(SECRET), "{output}");
    assert_eq!(shadow(&rollout, "dr")["phase"], "aborted");
    assert!(snapshot(&fleet.agent.live).is_empty() && snapshot(&fleet.directory).is_empty());
    assert_eq!(fleet.current().await, 0);
    // The secret is nowhere in what anyone reads, nor in the database.
    let (_, listed) = fleet.viewer.get("/api/v1/rollouts").await;
    assert!(!listed.to_string().contains(SECRET));
    let database = fleet.server.database_bytes();
    assert!(!database.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()));

    // 2. A good tree is validated, committed everywhere and reloaded once, after the switch.
    let rollout = fleet.roll_out(entries(0, "{\"a\": 1}", &[("healthy", "yes")])).await;
    assert_eq!(rollout["state"], "applied", "{rollout}");
    let edge = shadow(&rollout, "edge");
    assert_eq!(edge["hook"]["hook"], "reload", "{edge}");
    assert_eq!(edge["hook"]["ok"], true);
    assert!(edge["hook"]["output"].as_str().unwrap().contains("reloaded"));
    assert_eq!(std::fs::read_to_string(&fleet.reloads).unwrap(), "{\"a\": 1}");
    let dr = shadow(&rollout, "dr");
    assert_eq!(
        (dr["hook"]["hook"].clone(), dr["hook"]["output"].clone()),
        (json!("validate"), json!("dr validated\n")),
        "{dr}"
    );

    // 3. A reload that fails: the files are committed, the run travels with the receipt
    // and a reload_failed incident opens, which the drift monitor does not close (the
    // shadow is in sync: this is not drift).
    let base = fleet.current().await;
    let rollout = fleet
        .roll_out(entries(base, "{\"a\": 2}", &[("healthy", "yes"), ("fail-reload", "1")]))
        .await;
    assert_eq!(rollout["state"], "applied", "{rollout}");
    let edge = shadow(&rollout, "edge");
    assert_eq!(edge["phase"], "committed");
    assert_eq!(
        (edge["hook"]["ok"].clone(), edge["hook"]["exit_code"].clone()),
        (json!(false), json!(1))
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let open = fleet.incidents("reload_failed").await;
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(
        (open[0]["shadow"].clone(), open[0]["status"].clone()),
        (json!("edge"), json!("open"))
    );
    let (_, shadows) = fleet.viewer.get("/api/v1/shadows/edge").await;
    assert_eq!(shadows["status"], "in_sync", "{shadows}");

    // 4. The next reload passes: the incident ends as self-healed.
    let base = fleet.current().await;
    let (status, change) = fleet
        .editor
        .post(
            "/api/v1/changes",
            json!({"base_revision": base, "message": "fixed", "entries": [{"path": "fail-reload", "delete": true}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{change}");
    let rollout = fleet.roll_out_change(change["id"].as_i64().unwrap()).await;
    assert_eq!(shadow(&rollout, "edge")["hook"]["ok"], true, "{rollout}");
    let closed = fleet.incidents("reload_failed").await;
    assert_eq!(closed[0]["status"], "resolved", "{closed:?}");
    assert_eq!(closed[0]["resolution"], "self_healed");
    drop(fleet.root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_proves_a_shadow_could_take_over_and_a_failed_one_is_an_incident() {
    let fleet = fleet().await;
    let rollout = fleet.roll_out(entries(0, "{\"a\": 1}", &[("healthy", "yes")])).await;
    assert_eq!(rollout["state"], "applied", "{rollout}");

    // Viewers read drills; running one is an approver's.
    let (status, _) = fleet.viewer.post("/api/v1/shadows/edge/drills", json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, drill) = fleet.approver.post("/api/v1/shadows/edge/drills", json!({"requests": 5})).await;
    assert_eq!(status, StatusCode::CREATED, "{drill}");
    assert_eq!(drill["verdict"], "passed", "{drill}");
    assert_eq!(drill["requested_by"], "abel");
    let steps = drill["steps"].as_array().unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["parity", "validate", "health"]);
    assert!(steps.iter().all(|s| s["status"] == "passed"), "{steps:?}");
    assert_eq!(steps[2]["requests"], 5);
    assert!(steps[2]["p99_ms"].as_f64().unwrap() >= steps[2]["p50_ms"].as_f64().unwrap());
    assert!(!steps[1]["run"]["output"].as_str().unwrap().contains(SECRET));
    // A directory shadow's hooks come from the control plane's configuration: no health
    // probe there, so that step is skipped.
    let (_, dr) = fleet.approver.post("/api/v1/shadows/dr/drills", json!({})).await;
    assert_eq!(dr["verdict"], "passed", "{dr}");
    assert_eq!(dr["steps"][1]["status"], "passed");
    assert_eq!(dr["steps"][2]["status"], "skipped");

    // A hand edit breaks parity and the validator; the service is down: the drill fails,
    // step by step, and a drill_failed incident opens beside the drift incident.
    let edited = fleet.agent.live.join("x.json");
    std::fs::remove_file(&edited).unwrap();
    std::fs::write(&edited, "{broken").unwrap();
    std::fs::remove_file(fleet.agent.live.join("healthy")).unwrap();
    let (_, drill) = fleet.approver.post("/api/v1/shadows/edge/drills", json!({})).await;
    assert_eq!(drill["verdict"], "failed", "{drill}");
    let statuses: Vec<&str> = drill["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["failed", "failed", "failed"], "{drill}");
    let failed = fleet.incidents("drill_failed").await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["shadow"], "edge");
    // The evidence stays: listed newest first, each with who and when, in the audit log.
    let (_, drills) = fleet.viewer.get("/api/v1/drills?shadow=edge").await;
    let items = drills["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["verdict"], "failed");
    let (status, one) = fleet.viewer.get(&format!("/api/v1/drills/{}", items[1]["id"])).await;
    assert_eq!((status, one["verdict"].clone()), (StatusCode::OK, json!("passed")));
    let (_, shadow_view) = fleet.viewer.get("/api/v1/shadows/edge").await;
    assert_eq!(shadow_view["last_drill"]["verdict"], "failed", "{shadow_view}");
    let (_, audit) = fleet.viewer.get("/api/v1/audit?limit=100").await;
    assert!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["action"] == "drill.run")
            .count()
            >= 3
    );
    let (status, _) = fleet.viewer.get("/api/v1/drills/9999").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, refused) = fleet.approver.post("/api/v1/shadows/edge/drills", json!({"requests": 0})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_becomes_a_change_and_an_old_revision_comes_back_reviewed() {
    let fleet = fleet().await;
    // What a node already has: files with their modes, one named like a secret.
    let found = fleet.root.path().join("etc-nginx");
    std::fs::create_dir_all(found.join("conf.d")).unwrap();
    std::fs::write(found.join("x.json"), "{\"a\": 1}").unwrap();
    std::fs::write(found.join("healthy"), "yes").unwrap();
    std::fs::write(found.join("conf.d/site.conf"), "listen 80;\n").unwrap();
    std::fs::write(found.join("db.env"), format!("DB_PASSWORD={SECRET}\n")).unwrap();
    std::fs::write(found.join("tls.key"), "-----BEGIN PRIVATE KEY-----\nabc\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(found.join("conf.d/site.conf"), std::fs::Permissions::from_mode(0o640)).unwrap();
    }
    let cli = |args: &[&str]| fleet.server.cli().args(args).output().unwrap();
    // A symlink in the tree refuses the whole import, naming it; nothing is made.
    std::os::unix::fs::symlink("/etc/passwd", found.join("planted")).unwrap();
    let refused = cli(&["import", found.to_str().unwrap(), "--author", "erin"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("planted: a symlink"));
    std::fs::remove_file(found.join("planted")).unwrap();
    let (_, changes) = fleet.viewer.get("/api/v1/changes").await;
    assert!(changes["items"].as_array().unwrap().is_empty());

    let made = cli(&["import", found.to_str().unwrap(), "--message", "nginx as found", "--author", "erin"]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let (_, changes) = fleet.viewer.get("/api/v1/changes").await;
    let id = changes["items"][0]["id"].as_i64().unwrap();
    let (_, change) = fleet.viewer.get(&format!("/api/v1/changes/{id}")).await;
    assert_eq!(change["author"], "erin", "{change}");
    let by_path = |path: &str| {
        change["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["entry"]["path"] == path || e["path"] == path)
            .cloned()
            .unwrap()
    };
    assert_eq!(by_path("conf.d/site.conf")["mode"], "0640");
    assert_eq!(by_path("x.json")["format"], "json");
    assert_eq!(by_path("tls.key")["secret"], true, "named like a secret");
    assert!(!change.to_string().contains(SECRET));
    let rollout = fleet.roll_out_change(id).await;
    assert_eq!(rollout["state"], "applied", "{rollout}");
    let first = fleet.current().await;
    let first_root = rollout["root"].clone();

    // Through the API too (the console's import): the result is exactly the files sent.
    let (status, imported) = fleet
        .editor
        .post(
            "/api/v1/imports",
            json!({"message": "second", "files": [
                {"path": "x.json", "content": "{\"a\": 2}", "mode": "0644"},
                {"path": "healthy", "content": "yes", "mode": "0644", "owner": by_path("healthy")["owner"], "group": by_path("healthy")["group"]}
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{imported}");
    let ops: Vec<(String, String)> = imported["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["path"].as_str().unwrap().to_string(), e["op"].as_str().unwrap().to_string()))
        .collect();
    assert!(ops.contains(&("x.json".into(), "put".into())), "{ops:?}");
    assert!(ops.contains(&("tls.key".into(), "delete".into())), "{ops:?}");
    assert!(
        !ops.iter().any(|(path, _)| path == "healthy"),
        "unchanged files are left out: {ops:?}"
    );
    let (status, bad) = fleet
        .editor
        .post(
            "/api/v1/imports",
            json!({"message": "bad", "files": [{"path": "y.json", "content": "{"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    let rollout = fleet.roll_out_change(imported["id"].as_i64().unwrap()).await;
    assert_eq!(rollout["state"], "applied", "{rollout}");

    // Restore revision `first`: a draft change on the current revision, reviewed by a
    // second person like any other, after which every shadow serves `first`'s root again.
    let (status, _) = fleet.viewer.post(&format!("/api/v1/revisions/{first}/restore"), json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, restore) = fleet.editor.post(&format!("/api/v1/revisions/{first}/restore"), json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{restore}");
    assert_eq!(restore["state"], "draft");
    let (status, diff) = fleet.viewer.get(&format!("/api/v1/changes/{}/diff", restore["id"])).await;
    assert_eq!(status, StatusCode::OK, "{diff}");
    assert!(!diff.to_string().contains(SECRET));
    let rollout = fleet.roll_out_change(restore["id"].as_i64().unwrap()).await;
    assert_eq!(rollout["state"], "applied", "{rollout}");
    assert_eq!(rollout["root"], first_root, "the restored revision has the first one's root");
    assert_eq!(
        std::fs::read_to_string(fleet.agent.live.join("db.env")).unwrap(),
        format!("DB_PASSWORD={SECRET}\n")
    );
    let current = fleet.current().await;
    let (status, nothing) = fleet.editor.post(&format!("/api/v1/revisions/{current}/restore"), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{nothing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_shows_each_shadows_actions_and_refusals_and_an_approval_binds_its_shadows() {
    let fleet = fleet().await;
    let rollout = fleet.roll_out(entries(0, "{\"a\": 1}", &[("healthy", "yes")])).await;
    assert_eq!(rollout["state"], "applied", "{rollout}");
    let base = fleet.current().await;
    // A hand edit on the directory shadow: it no longer serves the base revision.
    let on_dr = fleet.directory.join("healthy");
    std::fs::remove_file(&on_dr).unwrap();
    std::fs::write(&on_dr, "edited by hand").unwrap();
    let (status, change) = fleet
        .editor
        .post(
            "/api/v1/changes",
            json!({"base_revision": base, "message": "plan me", "entries": [
                {"path": "x.json", "content": "{\"a\": ", "format": "text", "mode": "0644"},
                {"path": "new.txt", "content": "new", "format": "text", "mode": "0644"},
                {"path": "db.env", "content": format!("DB_PASSWORD={SECRET}\n"), "format": "env", "mode": "0640", "secret": true},
                {"path": "healthy", "delete": true}
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{change}");
    let id = change["id"].as_i64().unwrap();
    let before = snapshot(&fleet.agent.live);

    let (status, plan) = fleet.viewer.get(&format!("/api/v1/changes/{id}/plan")).await;
    assert_eq!(status, StatusCode::OK, "{plan}");
    let edge = shadow(&plan, "edge").clone();
    assert!(edge["refusal"].is_null(), "{edge}");
    let actions: std::collections::BTreeMap<String, String> = edge["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["path"].as_str().unwrap().to_string(), a["action"].as_str().unwrap().to_string()))
        .collect();
    let expected: std::collections::BTreeMap<String, String> = [
        ("x.json", "modify"),
        ("new.txt", "create"),
        ("db.env", "chmod"),
        ("healthy", "delete"),
    ]
    .into_iter()
    .map(|(p, a)| (p.to_string(), a.to_string()))
    .collect();
    assert_eq!(actions, expected, "{edge}");
    let dr = shadow(&plan, "dr").clone();
    assert!(dr["refusal"].as_str().unwrap().starts_with("drifted"), "{dr}");

    // The dry run of the validate hooks is an approver's; it finds what the node's
    // validator refuses, output masked, and changes nothing on the node.
    let (status, _) = fleet.viewer.get(&format!("/api/v1/changes/{id}/plan?validate=true")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, plan) = fleet.approver.get(&format!("/api/v1/changes/{id}/plan?validate=true")).await;
    assert_eq!(status, StatusCode::OK, "{plan}");
    let edge = shadow(&plan, "edge").clone();
    assert!(edge["refusal"].as_str().unwrap().contains("validate hook"), "{edge}");
    assert_eq!(edge["validate"]["ok"], false);
    assert!(edge["validate"]["output"].as_str().unwrap().contains("x.json"));
    assert!(!plan.to_string().contains(SECRET));
    assert_eq!(snapshot(&fleet.agent.live), before, "the dry run changed the node");
    let leftovers: Vec<String> = std::fs::read_dir(&fleet.agent.live)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("..r0"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let (_, state) = fleet.viewer.get("/api/v1/shadows/edge").await;
    assert_eq!(state["status"], "in_sync", "{state}");

    // An approval is for the shadows registered when it was given.
    let (status, _) = fleet.approver.post("/api/v1/shadows/dr/reconcile", json!({})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, fixed) = fleet
        .editor
        .put(
            &format!("/api/v1/changes/{id}/entries/x.json"),
            json!({"content": "{\"a\": 3}", "format": "text", "mode": "0644"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{fixed}");
    fleet.editor.post(&format!("/api/v1/changes/{id}/submit"), json!({})).await;
    let (status, approved) = fleet.approver.post(&format!("/api/v1/changes/{id}/approvals"), json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{approved}");
    assert_eq!(approved["approvals"][0]["shadows"], json!(["dr", "edge"]));
    let late = fleet.root.path().join("late").join("live");
    control::shadows::add_as(
        &fleet.server.state.db,
        "test",
        control::shadows::NewShadow::Directory {
            name: "late".into(),
            path: late.to_string_lossy().into_owned(),
        },
    )
    .await
    .unwrap();
    let (status, refused) = fleet.approver.post(&format!("/api/v1/changes/{id}/rollouts"), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["error"]["code"], "approval_targets");
    assert!(refused["error"]["message"].as_str().unwrap().contains("added: late"), "{refused}");
    let (status, _) = fleet.approver.post("/api/v1/shadows/late/reconcile", json!({})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, again) = fleet.approver.post(&format!("/api/v1/changes/{id}/approvals"), json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    let (status, rollout) = fleet.approver.post(&format!("/api/v1/changes/{id}/rollouts"), json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{rollout}");
    assert_eq!(rollout["state"], "applied", "{rollout}");
    assert_eq!(rollout["shadows"].as_array().unwrap().len(), 3);

    // The same names are not the same shadows: `late` removed and registered again
    // elsewhere voids an approval given for the old one.
    let base = fleet.current().await;
    let (_, next) = fleet
        .editor
        .post(
            "/api/v1/changes",
            json!({"base_revision": base, "message": "one more", "entries": [{"path": "more.txt", "content": "x", "format": "text"}]}),
        )
        .await;
    let next = next["id"].as_i64().unwrap();
    fleet.editor.post(&format!("/api/v1/changes/{next}/submit"), json!({})).await;
    let (status, _) = fleet.approver.post(&format!("/api/v1/changes/{next}/approvals"), json!({})).await;
    assert_eq!(status, StatusCode::CREATED);
    control::shadows::remove(&fleet.server.state.db, "test", "late").await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    control::shadows::add_as(
        &fleet.server.state.db,
        "test",
        control::shadows::NewShadow::Directory {
            name: "late".into(),
            path: fleet.root.path().join("elsewhere").to_string_lossy().into_owned(),
        },
    )
    .await
    .unwrap();
    let (status, refused) = fleet.approver.post(&format!("/api/v1/changes/{next}/rollouts"), json!({})).await;
    assert_eq!(
        (status, refused["error"]["code"].clone()),
        (StatusCode::CONFLICT, json!("approval_targets")),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tarball_becomes_a_change_with_its_modes_and_a_bomb_or_a_link_is_refused() {
    let fleet = fleet().await;
    let found = fleet.root.path().join("node-etc");
    std::fs::create_dir_all(found.join("conf.d")).unwrap();
    std::fs::write(found.join("x.json"), "{\"a\": 1}").unwrap();
    std::fs::write(found.join("conf.d/site.conf"), "listen 80;\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(found.join("conf.d/site.conf"), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let tarball = fleet.root.path().join("node.tgz");
    let tar = |args: &[&str]| assert!(std::process::Command::new("tar").args(args).status().unwrap().success());
    tar(&["-C", found.to_str().unwrap(), "-czf", tarball.to_str().unwrap(), "."]);
    let response = fleet
        .editor
        .post_bytes(
            "/api/v1/imports?message=as%20found",
            "application/gzip",
            std::fs::read(&tarball).unwrap(),
        )
        .await;
    let (status, change) = common::json_of(response).await;
    assert_eq!(status, StatusCode::CREATED, "{change}");
    assert_eq!(change["message"], "as found");
    let site = change["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "conf.d/site.conf")
        .unwrap();
    assert_eq!(site["mode"], "0600", "{site}");

    // A link inside, and an archive that unpacks past the bound, change nothing.
    std::os::unix::fs::symlink("/etc/shadow", found.join("evil")).unwrap();
    tar(&["-C", found.to_str().unwrap(), "-czf", tarball.to_str().unwrap(), "."]);
    let response = fleet
        .editor
        .post_bytes("/api/v1/imports", "application/gzip", std::fs::read(&tarball).unwrap())
        .await;
    let (status, refused) = common::json_of(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert!(
        refused["error"]["message"].as_str().unwrap().contains("evil: not a regular file"),
        "{refused}"
    );
    std::fs::remove_file(found.join("evil")).unwrap();
    let big = fleet.root.path().join("big");
    std::fs::create_dir(&big).unwrap();
    std::fs::write(big.join("zeros"), vec![0u8; 100 * 1024 * 1024]).unwrap();
    tar(&["-C", big.to_str().unwrap(), "-czf", tarball.to_str().unwrap(), "."]);
    let bomb = std::fs::read(&tarball).unwrap();
    assert!(bomb.len() < 1024 * 1024, "a bomb fits in the body limit");
    let (status, refused) = common::json_of(fleet.editor.post_bytes("/api/v1/imports", "application/gzip", bomb).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert!(
        refused["error"]["message"].as_str().unwrap().contains("more than 64 MiB"),
        "{refused}"
    );
    let (_, changes) = fleet.viewer.get("/api/v1/changes").await;
    assert_eq!(changes["items"].as_array().unwrap().len(), 1, "only the good import made a change");
}
