//! Changes, review and rollout over HTTP against the real server.

mod common;

use common::{TestServer, change_body};
use domain::Role;
use reqwest::StatusCode;
use serde_json::json;

async fn two_people() -> (TestServer, common::Session, common::Session) {
    let server = TestServer::start().await;
    server.user("erin", Role::Editor).await;
    server.user("abel", Role::Approver).await;
    let editor = server.login("erin").await;
    let approver = server.login("abel").await;
    (server, editor, approver)
}

#[tokio::test]
async fn change_is_reviewed_by_another_person_and_becomes_the_current_revision() {
    let (server, editor, approver) = two_people().await;
    server.user("carla", Role::Approver).await;
    let (status, revisions) = editor.get("/api/v1/revisions").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(revisions["items"][0]["number"], 0, "revision 0 is the empty configuration");

    let (status, change) = editor
        .post("/api/v1/changes", change_body(0, "features.json", "{\"beta\": true}\n"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{change}");
    let id = change["id"].as_i64().unwrap();
    assert_eq!(change["state"], "draft");

    // Approving a draft is a conflict: it has to be submitted first.
    let (status, _) = approver.post(&format!("/api/v1/changes/{id}/approvals"), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT);

    let (status, submitted) = editor.post(&format!("/api/v1/changes/{id}/submit"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{submitted}");
    assert_eq!(submitted["state"], "submitted");

    // An approver who wrote the change cannot approve it: separation of duties.
    let carla = server.login("carla").await;
    let (status, own) = carla.post("/api/v1/changes", change_body(0, "other.json", "{}")).await;
    assert_eq!(status, StatusCode::CREATED, "{own}");
    let own_id = own["id"].as_i64().unwrap();
    carla.post(&format!("/api/v1/changes/{own_id}/submit"), json!({})).await;
    let (status, refused) = carla.post(&format!("/api/v1/changes/{own_id}/approvals"), json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    assert_eq!(refused["error"]["code"], "forbidden");

    // The editor role cannot approve at all.
    let (status, _) = editor.post(&format!("/api/v1/changes/{id}/approvals"), json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, approved) = approver.post(&format!("/api/v1/changes/{id}/approvals"), json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{approved}");
    assert_eq!(approved["state"], "approved");
    assert_eq!(approved["approvals"][0]["approver"], "abel");
    assert_eq!(approved["approvals"][0]["valid"], true);

    let (status, rollout) = approver.post(&format!("/api/v1/changes/{id}/rollouts"), json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{rollout}");
    assert_eq!(rollout["state"], "applied");
    assert_eq!(rollout["revision"], 1);
    assert_eq!(rollout["shadows"], json!([]));

    let (_, current) = editor.get("/api/v1/revisions/1").await;
    assert_eq!(current["current"], true);
    assert_eq!(current["number"], 1);
    let expected_root = {
        let path = domain::EntryPath::parse("features.json").unwrap();
        let entry = domain::hash::entry_hash(&path, &domain::Policy::default(), b"{\"beta\": true}\n");
        domain::hash::root_hash([(&path, entry)]).to_hex()
    };
    assert_eq!(
        current["root"], expected_root,
        "the revision's root is the Merkle root of its entries"
    );
    assert_eq!(rollout["root"], expected_root);

    let (status, content) = editor.get("/api/v1/revisions/1/entries/features.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content["content"], "{\"beta\": true}\n");

    let (_, change) = editor.get(&format!("/api/v1/changes/{id}")).await;
    assert_eq!(change["state"], "rolled_out");
    assert_eq!(change["revision"], 1);

    let (_, diff) = editor.get("/api/v1/revisions/0/diff/1").await;
    assert_eq!(diff["entries"][0]["status"], "added");
    server.stop().await;
}

#[tokio::test]
async fn an_edit_after_approval_voids_it() {
    let (server, editor, approver) = two_people().await;
    let (_, change) = editor.post("/api/v1/changes", change_body(0, "app.toml", "port = 80\n")).await;
    let id = change["id"].as_i64().unwrap();
    editor.post(&format!("/api/v1/changes/{id}/submit"), json!({})).await;
    let (status, _) = approver.post(&format!("/api/v1/changes/{id}/approvals"), json!({})).await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, edited) = editor
        .put(
            &format!("/api/v1/changes/{id}/entries/app.toml"),
            json!({"content": "port = 8080\n"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{edited}");
    assert_eq!(edited["state"], "draft");
    assert_eq!(edited["approvals"][0]["valid"], false, "the approval signed the old content hash");
    assert_ne!(edited["content_hash"], change["content_hash"]);

    let (status, refused) = approver.post(&format!("/api/v1/changes/{id}/rollouts"), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["error"]["code"], "approval_voided");

    // A fresh submit and approval make it rollable again, with the new content.
    editor.post(&format!("/api/v1/changes/{id}/submit"), json!({})).await;
    approver.post(&format!("/api/v1/changes/{id}/approvals"), json!({})).await;
    let (status, rollout) = approver.post(&format!("/api/v1/changes/{id}/rollouts"), json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{rollout}");
    let (_, content) = editor.get("/api/v1/revisions/1/entries/app.toml").await;
    assert_eq!(content["content"], "port = 8080\n");
    server.stop().await;
}

#[tokio::test]
async fn a_stale_base_is_refused_and_can_be_rebased() {
    let (server, editor, approver) = two_people().await;
    let approve_and_roll = |id: i64| {
        let (editor, approver) = (&editor, &approver);
        async move {
            editor.post(&format!("/api/v1/changes/{id}/submit"), json!({})).await;
            approver.post(&format!("/api/v1/changes/{id}/approvals"), json!({})).await;
            approver.post(&format!("/api/v1/changes/{id}/rollouts"), json!({})).await
        }
    };
    let (_, first) = editor.post("/api/v1/changes", change_body(0, "a.json", "{}")).await;
    let (_, second) = editor.post("/api/v1/changes", change_body(0, "b.json", "[]")).await;
    let (status, _) = approve_and_roll(first["id"].as_i64().unwrap()).await;
    assert_eq!(status, StatusCode::CREATED);

    let second_id = second["id"].as_i64().unwrap();
    let (status, refused) = approve_and_roll(second_id).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["error"]["code"], "stale_base");
    let (_, revisions) = editor.get("/api/v1/revisions").await;
    assert_eq!(revisions["items"][0]["number"], 1, "nothing was applied");

    let (status, rebased) = editor.post(&format!("/api/v1/changes/{second_id}/rebase"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{rebased}");
    assert_eq!(rebased["base_revision"], 1);
    assert_eq!(rebased["approvals"][0]["valid"], false, "a rebase voids approvals too");
    let (status, rollout) = approve_and_roll(second_id).await;
    assert_eq!(status, StatusCode::CREATED, "{rollout}");
    let (_, current) = editor.get("/api/v1/revisions/2").await;
    let paths: Vec<&str> = current["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["a.json", "b.json"]);
    server.stop().await;
}

#[tokio::test]
async fn bad_input_is_refused_with_a_clear_error_and_changes_nothing() {
    let server = TestServer::start_with(|config| config.max_body = 64 * 1024).await;
    server.user("erin", Role::Editor).await;
    let editor = server.login("erin").await;

    let (status, err) = editor
        .post(
            "/api/v1/changes",
            change_body(0, "features.json", "{\n  \"a\": 1,\n  \"b\": ,\n}\n"),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"]["code"], "invalid_config");
    assert_eq!(err["error"]["path"], "features.json");
    assert_eq!((err["error"]["line"].as_i64(), err["error"]["column"].as_i64()), (Some(3), Some(8)));

    let bomb = "[".repeat(10_000);
    let (status, err) = editor.post("/api/v1/changes", change_body(0, "deep.json", &bomb)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        err["error"]["message"].as_str().unwrap().contains("nesting deeper than 128"),
        "{err}"
    );

    let laughs = "a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\n";
    let (status, err) = editor.post("/api/v1/changes", change_body(0, "bomb.yaml", laughs)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");

    let huge = "x".repeat(70 * 1024);
    let (status, err) = editor.post("/api/v1/changes", change_body(0, "big.txt", &huge)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{err}");
    assert_eq!(err["error"]["code"], "too_large");

    for path in ["../etc/passwd", "/etc/passwd", "a\u{0}b", "a/../../b"] {
        let (status, err) = editor.post("/api/v1/changes", change_body(0, path, "x")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path:?}: {err}");
    }
    let (status, err) = editor
        .post(
            "/api/v1/changes",
            json!({"base_revision": 0, "message": "m", "entries": [], "surprise": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "unknown fields are refused: {err}");
    let (status, _) = editor
        .post(
            "/api/v1/changes",
            json!({"base_revision": 0, "message": "m", "entries": [{"path": "a", "content": "x", "mode": "rwx"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = editor
        .post("/api/v1/changes", json!({"base_revision": 7, "message": "m", "entries": []}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = editor.get("/api/v1/changes/not-a-number").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // One bad entry refuses the whole request.
    let mixed = json!({"base_revision": 0, "message": "m", "entries": [
        {"path": "good.json", "content": "{}"},
        {"path": "bad.json", "content": "{"}
    ]});
    let (status, _) = editor.post("/api/v1/changes", mixed).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (_, list) = editor.get("/api/v1/changes").await;
    assert_eq!(list["items"], json!([]), "no change was stored by any refused request");
    server.stop().await;
}

#[tokio::test]
async fn secret_entries_never_show_their_content() {
    let (server, editor, approver) = two_people().await;
    let body = json!({"base_revision": 0, "message": "db", "entries": [
        {"path": "db.env", "content": "DB_PASSWORD=canary-7f3a\n", "format": "env", "mode": "0600", "secret": true}
    ]});
    let (_, change) = editor.post("/api/v1/changes", body).await;
    let id = change["id"].as_i64().unwrap();
    let (_, diff) = editor.get(&format!("/api/v1/changes/{id}/diff")).await;
    assert_eq!(diff["entries"][0]["secret_changed"], true);
    assert!(!diff.to_string().contains("canary-7f3a"), "{diff}");
    editor.post(&format!("/api/v1/changes/{id}/submit"), json!({})).await;
    approver.post(&format!("/api/v1/changes/{id}/approvals"), json!({})).await;
    approver.post(&format!("/api/v1/changes/{id}/rollouts"), json!({})).await;
    let (status, entry) = editor.get("/api/v1/revisions/1/entries/db.env").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(entry["content"], serde_json::Value::Null);
    assert_eq!(entry["mode"], "0600");
    server.stop().await;
}

/// Editing a draft through its redacted content keeps the secret value it showed as a
/// placeholder (the same fingerprint comes back), and a forged placeholder is refused.
#[tokio::test]
async fn an_edit_of_a_draft_around_its_secret_value_keeps_the_value() {
    let server = TestServer::start().await;
    server.user("erin", Role::Editor).await;
    let editor = server.login("erin").await;
    let body = change_body(0, "app.toml", "[db]\nport = 5432\npassword = \"s3cret-value\"\n");
    let (_, change) = editor.post("/api/v1/changes", body).await;
    let id = change["id"].as_i64().unwrap();
    let shown = || async {
        let (status, body) = editor.server_fn("change_entry", &format!("id={id}&path=app.toml")).await;
        assert_eq!(status, StatusCode::OK);
        let content: Option<String> = serde_json::from_str(&body).unwrap();
        content.unwrap()
    };
    let before = shown().await;
    assert!(
        before.contains("password = \"«secret:") && !before.contains("s3cret-value"),
        "{before}"
    );
    let edit = json!({"content": before.replace("5432", "6543"), "format": "toml"});
    let (status, answer) = editor.put(&format!("/api/v1/changes/{id}/entries/app.toml"), edit).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let after = shown().await;
    assert_eq!(after, before.replace("5432", "6543"), "same placeholder: the stored value was kept");
    let forged = json!({"content": "[db]\npassword = \"«secret:000000000000»\"\n", "format": "toml"});
    let (status, _) = editor.put(&format!("/api/v1/changes/{id}/entries/app.toml"), forged).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(shown().await, after, "the refused edit changed nothing");
    server.stop().await;
}

/// A change of 10,000 entries does not make a page of megabytes: its page lists the first
/// entries and the first page of the diff (each further page is a server function call),
/// well under 1 MB of HTML.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_thousand_entry_change_makes_a_small_page_and_pages_its_diff() {
    let (_server, editor, _approver) = two_people().await;
    let entries: Vec<serde_json::Value> = (0..10_000)
        .map(|i| json!({"path": format!("fleet/part{:02}/node{i:05}.conf", i % 32), "content": format!("name = node{i}\nweight = {i}\n"), "format": "text", "mode": "0644"}))
        .collect();
    let (status, change) = editor
        .post(
            "/api/v1/changes",
            json!({"base_revision": 0, "message": "a large fleet", "entries": entries}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{change}");
    let id = change["id"].as_i64().unwrap();

    let response = editor.send(reqwest::Method::GET, &format!("/changes/{id}"), None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let html = response.text().await.unwrap();
    assert!(html.len() < 1_000_000, "the change page is {} bytes", html.len());
    assert!(
        html.contains("node00000.conf") && html.contains("9900 more entries"),
        "the first entries and a count of the rest"
    );
    assert!(html.contains("10000 entries changed"), "the diff says how many differ in all");
    assert!(html.contains("data-test=\"diff-more\""), "a button loads the next page of the diff");

    // The next page through the server function the button calls, after the last path shown.
    let (status, page) = editor
        .server_fn("change_diff", &format!("id={id}&after=fleet%2Fpart01%2Fnode00001.conf"))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let page: serde_json::Value = serde_json::from_str(&page).unwrap();
    assert_eq!(page["total"], 10_000);
    assert_eq!(page["entries"].as_array().unwrap().len(), 50);
    assert_eq!(page["entries"][0]["path"], "fleet/part01/node00033.conf", "{}", page["entries"][0]);
    assert!(page["next"].is_string());
}

/// The editor's validation as the user types is the server's validator behind a server
/// function (the browser carries no parsers); a caller without a session gets nothing.
#[tokio::test]
async fn the_editor_validates_on_the_server_as_you_type() {
    let (server, editor, _approver) = two_people().await;
    let (status, body) = editor.server_fn("validate_content", "format=json&content=%7B%22a%22%3A+1%7D").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body.trim(), "null", "valid json: no error");
    let (status, body) = editor.server_fn("validate_content", "format=toml&content=a+%3D+%0Ab+%3D+2").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["line"], 1, "{error}");
    let (status, _) = server.anonymous().server_fn("validate_content", "format=json&content=%7B%7D").await;
    assert!(status.is_client_error(), "{status}");
    // Only those who may write get the parser's time.
    server.user("vera", Role::Viewer).await;
    let (status, body) = server
        .login("vera")
        .await
        .server_fn("validate_content", "format=json&content=%7B%7D")
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
}

/// The console's assets: sent precompressed to a browser that takes it, kept for good and
/// per encoding when found, never cached when missing (a rebuild may bring it a moment
/// later); no session needed.
#[tokio::test]
async fn assets_are_served_precompressed_and_cached_only_when_found() {
    let site = tempfile::tempdir().unwrap();
    let pkg = site.path().join("pkg");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(pkg.join("etc-shadow.abc.css"), "body { color: black }\n").unwrap();
    std::fs::write(pkg.join("etc-shadow.abc.css.br"), b"brotli bytes").unwrap();
    let root = site.path().to_path_buf();
    let server = TestServer::start_with(move |config| config.site_root = root).await;
    let client = reqwest::Client::builder().no_brotli().build().unwrap();
    let found = client
        .get(server.url("/pkg/etc-shadow.abc.css"))
        .header("accept-encoding", "br")
        .send()
        .await
        .unwrap();
    assert_eq!(found.status(), StatusCode::OK);
    assert_eq!(found.headers()["content-encoding"], "br");
    assert_eq!(found.headers()["cache-control"], "public, max-age=31536000, immutable");
    assert_eq!(found.headers()["vary"], "accept-encoding");
    let plain = client.get(server.url("/pkg/etc-shadow.abc.css")).send().await.unwrap();
    assert!(plain.headers().get("content-encoding").is_none());
    assert_eq!(plain.text().await.unwrap(), "body { color: black }\n");
    let missing = client.get(server.url("/pkg/etc-shadow.def.css")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(missing.headers()["cache-control"], "no-store");
}

/// A NUL character in free text (a change's message, a name at sign-in, an audit filter)
/// is never a server error: SQLite keeps it, PostgreSQL keeps no NUL in text, and there
/// the input is refused as bad input with nothing changed. (Before, PostgreSQL's refusal
/// was a 500.)
#[tokio::test]
async fn a_nul_character_in_free_text_is_never_a_server_error() {
    let server = TestServer::start().await;
    server.user("erin", Role::Editor).await;
    let editor = server.login("erin").await;
    let (_, before) = editor.get("/api/v1/changes").await;
    let mut body = change_body(0, "app.toml", "a = 1\n");
    body["message"] = json!("fix\u{0}it");
    let (status, answer) = editor.post("/api/v1/changes", body).await;
    assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "{answer}");
    if status == StatusCode::BAD_REQUEST {
        assert!(answer["error"]["message"].as_str().unwrap().contains("NUL"), "{answer}");
        let (_, after) = editor.get("/api/v1/changes").await;
        assert_eq!(before, after, "nothing was made");
    } else {
        assert_eq!(status, StatusCode::CREATED, "{answer}");
    }
    let (status, answer) = editor.get("/api/v1/audit?actor=%00").await;
    assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "{answer}");
    let response = reqwest::Client::new()
        .post(server.url("/api/v1/session"))
        .header("origin", server.origin())
        .json(&json!({"username": "erin\u{0}", "password": common::PASSWORD}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert!(
        status == StatusCode::UNAUTHORIZED || status == StatusCode::BAD_REQUEST,
        "a name with NUL signs nobody in, and is no server error: {status}"
    );
    server.stop().await;
}
