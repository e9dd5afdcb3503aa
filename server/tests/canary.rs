//! The secrets canary: a secret value — of a secret entry, of secret keys inside an
//! ordinary toml entry (a string, an inline table's, a number), and of a yaml flow mapping
//! that can only be hidden whole — is created, changed, rolled out, edited around (the toml file's
//! other lines), drifted on a shadow, diffed, adopted and revealed, against the real
//! `etc-shadow serve` process;
//! then every API answer, every page, the server's log, the webhook payloads and the
//! SQLite database with its WAL are searched for the plaintext. It may appear only in the
//! shadow's files and in the one authorised reveal.

mod common;

use common::{PASSWORD, fleet::free_port};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};
use std::{
    io::Write,
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

const CANARIES: [&str; 14] = [
    "CANARY-d41c-first",
    "CANARY-9e07-second",
    "CANARY-77ab-drifted",
    // Values of `api_token` in app.toml, an entry that is not secret as a whole.
    "CANARY-5b1e-keyed-first",
    "CANARY-c3d9-keyed-second",
    "CANARY-0f2a-keyed-drifted",
    // `password` of the inline table `database = { … }` in app.toml.
    "CANARY-61aa-inline-first",
    "CANARY-8b3f-inline-second",
    // `password` in a yaml flow mapping of backup.yaml, hidden whole.
    "CANARY-e7d0-flow-first",
    "CANARY-44c1-flow-second",
    // `pin_key`, a number in app.toml.
    PIN,
    // Stored in a draft change (json, yaml, toml) for the refused edits of the error paths.
    "CANARY-2f6e-draft-json",
    "CANARY-a9c4-draft-yaml",
    "CANARY-d05b-draft-toml",
];
const PIN: &str = "480917263";

/// app.toml of a revision: a port, and secret values as a string, in an inline table and
/// as a number.
fn app_toml(port: u16, token: &str, inline: &str) -> String {
    format!("[server]\nport = {port}\napi_token = \"{token}\"\ndatabase = {{ user = \"app\", password = \"{inline}\" }}\npin_key = {PIN}\n")
}

fn cli(data: &Path, args: &[&str], stdin: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_etc-shadow"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "etc-shadow {args:?}");
}

/// A signed-in client that keeps every answer it gets.
struct Client2 {
    http: Client,
    base: String,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Client2 {
    async fn login(base: &str, name: &str, seen: &Arc<Mutex<Vec<String>>>) -> Client2 {
        let http = Client::builder().cookie_store(true).build().unwrap();
        let response = http
            .post(format!("{base}/api/v1/session"))
            .json(&json!({"username": name, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "login {name}");
        Client2 {
            http,
            base: base.to_string(),
            seen: seen.clone(),
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, String) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("origin", &self.base);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, text)
    }

    /// A call whose answer goes into the searched pile.
    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let (status, text) = self.call(method, path, body).await;
        self.seen.lock().unwrap().push(format!("{path}: {text}"));
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> Value {
        let (status, value) = self.send(Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {value}");
        value
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let (status, value) = self.send(Method::POST, path, Some(body)).await;
        assert!(status.is_success(), "{path}: {status} {value}");
        value
    }
}

async fn hook_receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    use axum::{extract::State, routing::post};
    let seen: Arc<Mutex<Vec<String>>> = Default::default();
    async fn hook(State(seen): State<Arc<Mutex<Vec<String>>>>, body: String) -> StatusCode {
        seen.lock().unwrap().push(body);
        StatusCode::OK
    }
    let app = axum::Router::new().route("/hook", post(hook)).with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

/// The clear content of an entry holding secrets, revealed with the password (never kept
/// with the searched answers).
async fn client_reveal(client: &Client2, base: &str, revision: i64, path: &str) -> String {
    let response = client
        .http
        .post(format!("{base}/api/v1/revisions/{revision}/reveal"))
        .header("origin", base)
        .json(&json!({"path": path, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let revealed: Value = response.json().await.unwrap();
    revealed["content"].as_str().unwrap().to_string()
}

/// The error paths of editing, each driven with a stored secret value that must not come
/// back in the answer (collected in the searched pile): a placeholder under an ordinary
/// key on the line where the stored value is put back (toml inline table, one-line json, a
/// yaml comment), invalid edits with placeholders, a placeholder of another file, and the
/// same shapes through both doors, `POST /changes` and `PUT …/entries/…`.
async fn refused_edits_quote_no_secret(editor: &Client2) {
    let [json_secret, yaml_secret, toml_secret] = [CANARIES[11], CANARIES[12], CANARIES[13]];
    let draft = editor
        .post(
            "/api/v1/changes",
            json!({"base_revision": 3, "message": "drafts with secrets", "entries": [
                {"path": "shapes/app.json", "content": format!("{{\"x\": {{\"cookie_secret\": \"{json_secret}\", \"y\": \"plain\"}}}}"), "format": "json"},
                {"path": "shapes/app.yaml", "content": format!("cookie_secret: {yaml_secret} # note\nother: 1\n"), "format": "yaml"},
                {"path": "shapes/app.toml", "content": format!("x = {{ cookie_secret = \"{toml_secret}\", y = \"plain\" }}\n"), "format": "toml"}
            ]}),
        )
        .await;
    let id = draft["id"].as_i64().unwrap();
    let diff = editor.get(&format!("/api/v1/changes/{id}/diff")).await.to_string();
    let placeholder = |path: &str| {
        let from = diff.find(path).unwrap();
        let start = from + diff[from..].find("«secret:").unwrap();
        let end = start + diff[start..].find('»').unwrap() + '»'.len_utf8();
        diff[start..end].to_string()
    };
    let (pj, py, pt) = (
        placeholder("shapes/app.json"),
        placeholder("shapes/app.yaml"),
        placeholder("shapes/app.toml"),
    );
    let edits = [
        (
            "shapes/app.json",
            "json",
            format!("{{\"x\": {{\"cookie_secret\": \"{pj}\", \"y\": \"{pj}\"}}}}"),
        ),
        ("shapes/app.yaml", "yaml", format!("cookie_secret: {py} # {py}\nother: 1\n")),
        (
            "shapes/app.toml",
            "toml",
            format!("x = {{ cookie_secret = \"{pt}\", y = \"{pt}\" }}\n"),
        ),
        // Invalid with a placeholder, and invalid once the value is back.
        ("shapes/app.toml", "toml", format!("x = {{ cookie_secret = \"{pt}\", y = }}\n")),
        ("shapes/app.yaml", "yaml", format!("cookie_secret: {py}\n  other: [\n")),
        ("shapes/app.json", "json", format!("{{\"x\": {{\"cookie_secret\": {pj}}}}}")),
        // Another file's placeholder, and one moved to a key of its own.
        ("shapes/app.toml", "toml", format!("x = {{ cookie_secret = \"{pj}\" }}\n")),
        ("shapes/app.toml", "toml", format!("cookie_secret = \"{pt}\"\n[{pt}]\n")),
    ];
    for (path, format, content) in edits {
        let (status, answer) = editor
            .send(
                Method::PUT,
                &format!("/api/v1/changes/{id}/entries/{path}"),
                Some(json!({"content": content, "format": format})),
            )
            .await;
        assert!(status.is_client_error(), "PUT {path}: {status} {answer}\n{content}");
    }
    // Through the other door the stored values are the base revision's (it has none of
    // these paths), and the validation endpoint.
    for (path, format, content) in [
        (
            "shapes/app.toml",
            "toml",
            format!("x = {{ cookie_secret = \"{toml_secret}\", y = \"{pt}\" }}\n"),
        ),
        ("shapes/bad.env", "env", format!("{toml_secret}-X=1\n")),
        ("shapes/bad.toml", "toml", format!("{toml_secret} = 1\n{toml_secret} = 2\n")),
    ] {
        let (status, answer) = editor
            .send(
                Method::POST,
                "/api/v1/changes",
                Some(json!({"base_revision": 3, "message": "refused", "entries": [{"path": path, "content": content, "format": format}]})),
            )
            .await;
        assert!(status.is_client_error(), "POST {path}: {status} {answer}");
        // The validation endpoint answers about the caller's own text; it must not quote it
        // either (it is collected like every answer).
        editor
            .send(
                Method::POST,
                "/api/v1/validate",
                Some(json!({"path": path, "content": content, "format": format})),
            )
            .await;
    }
}

fn leaks(what: &str, haystack: &[u8]) -> Vec<String> {
    CANARIES
        .iter()
        .filter(|c| haystack.windows(c.len()).any(|w| w == c.as_bytes()))
        .map(|c| format!("{c} in {what}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_is_found_only_in_the_shadows_files_and_the_authorised_reveal() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    for (name, role) in [("ada", "admin"), ("erin", "editor"), ("abel", "approver")] {
        cli(&data, &["user", "add", name, "--role", role, "--password-stdin"], PASSWORD);
    }
    let addr = free_port();
    let log = root.path().join("server.log");
    let mut server = Command::new(env!("CARGO_BIN_EXE_etc-shadow"))
        .args([
            "serve",
            "--listen",
            &addr.to_string(),
            "--check-interval",
            "250ms",
            "--webhook-allow-internal",
        ])
        .arg("--data-dir")
        .arg(&data)
        .env("ETC_SHADOW_LOG", "debug,sqlx=debug,hyper=info,h2=info,reqwest=info")
        // A proxy in the environment is not used for webhooks (it would get around the
        // check of their addresses): through this one, which answers nothing, none would
        // arrive.
        .env("HTTP_PROXY", format!("http://{}", free_port()))
        .env("HTTPS_PROXY", format!("http://{}", free_port()))
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&log).unwrap())
        .spawn()
        .unwrap();
    common::fleet::wait_listening(addr);
    let base = format!("http://{addr}");
    let seen: Arc<Mutex<Vec<String>>> = Default::default();
    let admin = Client2::login(&base, "ada", &seen).await;
    let editor = Client2::login(&base, "erin", &seen).await;
    let approver = Client2::login(&base, "abel", &seen).await;
    let (hook_url, hooks) = hook_receiver().await;
    admin.post("/api/v1/webhooks", json!({"url": hook_url})).await;
    let live = root.path().join("dc1/live");
    admin
        .post("/api/v1/shadows", json!({"driver": "directory", "name": "dc1", "path": live}))
        .await;

    // Created, rolled out, changed, rolled out again.
    let mut changes = Vec::new();
    for (revision, canary) in CANARIES[..2].iter().enumerate() {
        let change = editor
            .post(
                "/api/v1/changes",
                json!({"base_revision": revision, "message": "database password", "entries": [
                    {"path": "secrets/db.env", "content": format!("DB_PASSWORD={canary}\n"), "format": "text", "mode": "0600", "secret": true},
                    {"path": "app.toml", "content": app_toml(8080 + revision as u16, CANARIES[3 + revision], CANARIES[6 + revision]), "format": "toml", "mode": "0644"},
                    {"path": "backup.yaml", "content": format!("backup: {{user: app, password: {}}}\n", CANARIES[8 + revision]), "format": "yaml", "mode": "0644"}
                ]}),
            )
            .await;
        let id = change["id"].as_i64().unwrap();
        changes.push(id);
        editor.post(&format!("/api/v1/changes/{id}/submit"), json!({})).await;
        approver.post(&format!("/api/v1/changes/{id}/approvals"), json!({})).await;
        let rollout = approver.post(&format!("/api/v1/changes/{id}/rollouts"), json!({})).await;
        assert_eq!(rollout["state"], "applied", "{rollout}");
        editor.get(&format!("/api/v1/changes/{id}")).await;
        editor.get(&format!("/api/v1/changes/{id}/diff")).await;
        editor.get(&format!("/api/v1/rollouts/{}", rollout["id"])).await;
    }
    assert_eq!(
        std::fs::read_to_string(live.join("secrets/db.env")).unwrap(),
        format!("DB_PASSWORD={}\n", CANARIES[1]),
        "the shadow holds the secret"
    );

    // The toml file is shown with a placeholder for its token; an edit of its other lines
    // keeps the stored token, which reaches the shadow unchanged.
    let shown = editor.get("/api/v1/revisions/2/entries/app.toml").await;
    let shown = shown["content"].as_str().unwrap().to_string();
    assert!(shown.contains("api_token = \"«secret:"), "{shown}");
    assert!(
        shown.contains("password = \"«secret:") && shown.contains("pin_key = \"«secret:"),
        "{shown}"
    );
    let whole = editor.get("/api/v1/revisions/2/entries/backup.yaml").await;
    let whole = whole["content"].as_str().unwrap();
    assert!(whole.starts_with("«secret:") && whole.ends_with('»'), "hidden whole: {whole}");
    let change = editor
        .post(
            "/api/v1/changes",
            json!({"base_revision": 2, "message": "another port", "entries": [
                {"path": "app.toml", "content": shown.replace("port = 8081", "port = 9090"), "format": "toml", "mode": "0644"}
            ]}),
        )
        .await;
    let edited = change["id"].as_i64().unwrap();
    editor.post(&format!("/api/v1/changes/{edited}/submit"), json!({})).await;
    editor.get(&format!("/api/v1/changes/{edited}/diff")).await;
    approver.post(&format!("/api/v1/changes/{edited}/approvals"), json!({})).await;
    let rollout = approver.post(&format!("/api/v1/changes/{edited}/rollouts"), json!({})).await;
    assert_eq!(rollout["state"], "applied", "{rollout}");
    assert_eq!(
        std::fs::read_to_string(live.join("app.toml")).unwrap(),
        app_toml(9090, CANARIES[4], CANARIES[7]),
        "the shadow holds the stored secret values and the edited port"
    );
    // A placeholder cannot be moved to another key to read the value there.
    let moved = shown.replace(
        "port = 8081",
        &format!(
            "port = 8081\nnote = \"{}\"",
            &shown[shown.find("«secret:").unwrap()..shown.find('»').unwrap() + '»'.len_utf8()]
        ),
    );
    let (status, refused) = editor
        .send(
            Method::POST,
            "/api/v1/changes",
            Some(json!({"base_revision": 3, "message": "move it", "entries": [
                {"path": "app.toml", "content": moved, "format": "toml", "mode": "0644"}
            ]})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    refused_edits_quote_no_secret(&editor).await;

    // Drifted by hand on the shadow, diffed, adopted.
    std::fs::write(live.join("secrets/db.env"), format!("DB_PASSWORD={}\n", CANARIES[2])).unwrap();
    std::fs::write(live.join("app.toml"), app_toml(9090, CANARIES[5], CANARIES[7])).unwrap();
    let started = Instant::now();
    let incident = loop {
        let page = editor.get("/api/v1/incidents?shadow=dc1&status=unresolved").await;
        if let Some(found) = page["items"].as_array().unwrap().first() {
            break found.clone();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no incident");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let id = incident["id"].as_i64().unwrap();
    editor.get(&format!("/api/v1/incidents/{id}")).await;
    let diff = editor.get("/api/v1/shadows/dc1/diff").await;
    assert!(diff.to_string().contains("secrets/db.env"), "{diff}");
    editor.get("/api/v1/shadows/dc1/checks").await;
    let adopted = editor.post(&format!("/api/v1/incidents/{id}/adopt"), json!({})).await;
    let adopted_id = adopted["id"].as_i64().unwrap();
    editor.get(&format!("/api/v1/changes/{adopted_id}/diff")).await;
    for path in [
        "/api/v1/revisions/1/diff/2".to_string(),
        "/api/v1/revisions/2".to_string(),
        "/api/v1/revisions/2/entries/secrets/db.env".to_string(),
        "/api/v1/revisions/2/diff/3".to_string(),
        "/api/v1/revisions/3/entries/app.toml".to_string(),
        "/api/v1/revisions/3/entries/backup.yaml".to_string(),
        "/api/v1/audit?limit=200".to_string(),
        "/api/v1/incidents".to_string(),
        "/api/v1/rollouts".to_string(),
        "/api/v1/shadows".to_string(),
        "/api/v1/webhooks/deliveries".to_string(),
        "/metrics".to_string(),
    ] {
        let (status, _) = admin.send(Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    // Every page a person would open along the way.
    for page in [
        "/".to_string(),
        "/config".to_string(),
        "/entry?path=secrets/db.env".to_string(),
        "/entry?path=app.toml".to_string(),
        "/edit?path=app.toml".to_string(),
        "/entry?path=backup.yaml".to_string(),
        "/revisions/2".to_string(),
        format!("/changes/{}", changes[1]),
        format!("/changes/{adopted_id}"),
        "/shadows/dc1".to_string(),
        format!("/incidents/{id}"),
        "/audit".to_string(),
        "/webhooks".to_string(),
    ] {
        let (status, html) = admin.call(Method::GET, &page, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.lock().unwrap().push(format!("page {page}: {html}"));
    }

    // The reveal: approvers and admins only, with their password again, audited.
    let reveal = |client: &Client2, password: &str| {
        let body = json!({"path": "secrets/db.env", "password": password});
        let request = client
            .http
            .post(format!("{base}/api/v1/revisions/2/reveal"))
            .header("origin", &base)
            .json(&body);
        async move { request.send().await.unwrap() }
    };
    assert_eq!(reveal(&editor, PASSWORD).await.status(), StatusCode::FORBIDDEN, "editors may not");
    assert_eq!(reveal(&approver, "not my password!").await.status(), StatusCode::FORBIDDEN);
    let revealed = reveal(&approver, PASSWORD).await;
    assert_eq!(revealed.status(), StatusCode::OK);
    assert_eq!(revealed.headers()["cache-control"], "no-store");
    let revealed: Value = revealed.json().await.unwrap();
    assert_eq!(revealed["content"], format!("DB_PASSWORD={}\n", CANARIES[1]));
    // The token inside the ordinary toml entry is revealed the same way.
    let revealed = client_reveal(&approver, &base, 3, "app.toml").await;
    assert!(revealed.contains(CANARIES[4]) && revealed.contains(CANARIES[7]), "{revealed}");
    assert!(revealed.contains(PIN), "{revealed}");
    let revealed = client_reveal(&approver, &base, 3, "backup.yaml").await;
    assert!(revealed.contains(CANARIES[9]), "{revealed}");
    let audit = editor.get("/api/v1/audit?limit=5").await;
    assert!(audit.to_string().contains("secret.reveal"), "{audit}");

    // Webhooks had time to go out.
    let started = Instant::now();
    while hooks.lock().unwrap().len() < 3 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(hooks.lock().unwrap().len() >= 3, "webhooks were delivered");
    // While the server runs, neither a rotation nor a second server may use its directory.
    for args in [&["secrets", "rotate"][..], &["serve", "--listen", "127.0.0.1:0"][..]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_etc-shadow"))
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if child.try_wait().unwrap().is_none() {
            let _ = child.kill();
            panic!("{args:?} runs beside the server");
        }
        let refused = child.wait_with_output().unwrap();
        assert!(!refused.status.success(), "{args:?} ran beside the server");
        let message = String::from_utf8_lossy(&refused.stderr);
        assert!(message.contains("in use by a running etc-shadow server"), "{args:?}: {message}");
    }
    let _ = server.kill();
    let _ = server.wait();

    let mut found = Vec::new();
    for answer in seen.lock().unwrap().iter() {
        found.extend(leaks(&answer.chars().take(80).collect::<String>(), answer.as_bytes()));
    }
    for body in hooks.lock().unwrap().iter() {
        found.extend(leaks("a webhook payload", body.as_bytes()));
    }
    found.extend(leaks("the server log", &std::fs::read(&log).unwrap()));
    for file in ["etc-shadow.db", "etc-shadow.db-wal", "etc-shadow.db-shm"] {
        if let Ok(bytes) = std::fs::read(data.join(file)) {
            found.extend(leaks(file, &bytes));
        }
    }
    assert!(found.is_empty(), "the plaintext leaked:\n{}", found.join("\n"));
    assert!(
        std::fs::metadata(&log).unwrap().len() > 1000,
        "the log was searched, and it has content"
    );

    // Rotation: a new key, every value re-sealed, and the secret still reads the same.
    let key_file = data.join(control::secrets::KEY_FILE);
    let before = std::fs::read_to_string(&key_file).unwrap();
    cli(&data, &["secrets", "rotate"], "");
    let after = std::fs::read_to_string(&key_file).unwrap();
    let line = |text: &str, name: &str| text.lines().find(|l| l.starts_with(name)).map(str::to_string);
    assert_ne!(line(&before, "encryption"), line(&after, "encryption"), "a new encryption key");
    assert_eq!(
        line(&before, "fingerprint"),
        line(&after, "fingerprint"),
        "fingerprints stay comparable"
    );
    assert_eq!(line(&after, "previous"), None, "the old key is gone once all is re-sealed");
    let db = control::Db::open(&data).await.unwrap();
    let caller = control::Caller {
        user_id: 0,
        username: "test".into(),
        role: domain::Role::Admin,
        recent_password: true,
        credential: control::Credential::Local,
    };
    let again = control::revisions::reveal(&db, &caller, 2, "secrets/db.env").await.unwrap();
    assert_eq!(again.content.unwrap(), format!("DB_PASSWORD={}\n", CANARIES[1]));
    db.close().await;

    // Another key file does not open this database: the server refuses to start.
    std::fs::remove_file(&key_file).unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_etc-shadow"))
        .args(["user", "list", "--data-dir"])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!status.status.success(), "a fresh key file must not pass for the lost one");
    let message = String::from_utf8_lossy(&status.stderr);
    assert!(message.contains("does not open this database"), "{message}");
}

/// One anchored scalar of a megabyte and twenty thousand aliases to it: few nodes, twenty
/// gigabytes once a loader expands it. Posted by an editor and planted on a shadow, against
/// a server whose address space is capped at 2 GiB: the edit is refused with the reason,
/// the shadow's diff is answered, and the server answers the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yaml_bomb_is_refused_and_diffed_by_a_server_with_capped_memory() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    for (name, role) in [("ada", "admin"), ("erin", "editor")] {
        cli(&data, &["user", "add", name, "--role", role, "--password-stdin"], PASSWORD);
    }
    let addr = free_port();
    let log = root.path().join("server.log");
    let mut server = Command::new("prlimit")
        .arg(format!("--as={}", 2u64 << 30))
        .arg(env!("CARGO_BIN_EXE_etc-shadow"))
        .args(["serve", "--listen", &addr.to_string(), "--check-interval", "1h"])
        .arg("--data-dir")
        .arg(&data)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&log).unwrap())
        .spawn()
        .unwrap();
    common::fleet::wait_listening(addr);
    let base = format!("http://{addr}");
    let seen: Arc<Mutex<Vec<String>>> = Default::default();
    let admin = Client2::login(&base, "ada", &seen).await;
    let editor = Client2::login(&base, "erin", &seen).await;
    let mut bomb = format!("api_token: &big \"{}\"\nrefs:\n", "x".repeat(1 << 20));
    for _ in 0..20_000 {
        bomb.push_str("- *big\n");
    }
    let (status, refused) = editor
        .send(
            Method::POST,
            "/api/v1/changes",
            Some(json!({"base_revision": 0, "message": "bomb", "entries": [{"path": "bomb.yaml", "content": bomb, "format": "yaml"}]})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert!(refused.to_string().contains("expands to more than"), "{refused}");
    let (status, _) = editor.call(Method::GET, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK, "the server answers after the bomb");

    // Planted on a shadow, and diffed there.
    let live = root.path().join("dc1");
    admin
        .post("/api/v1/shadows", json!({"driver": "directory", "name": "dc1", "path": live}))
        .await;
    std::fs::create_dir_all(&live).unwrap();
    std::fs::write(live.join("bomb.yaml"), &bomb).unwrap();
    // A file over the read limit is listed as too large to diff, not read into memory.
    std::fs::write(live.join("huge.conf"), vec![b'x'; 33 << 20]).unwrap();
    let diff = admin.get("/api/v1/shadows/dc1/diff").await;
    assert!(diff.to_string().contains("bomb.yaml"), "{diff}");
    let huge = diff["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "huge.conf")
        .unwrap();
    assert!(huge["hidden"].as_str().unwrap().contains("too large to diff"), "{huge}");
    let diff = editor.get("/api/v1/shadows/dc1/diff").await;
    assert!(diff.to_string().contains("bomb.yaml"), "{diff}");
    let (status, _) = editor.call(Method::GET, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK, "the server answers after diffing the planted bomb");
    assert!(server.try_wait().unwrap().is_none(), "the server is alive");
    let _ = server.kill();
    let _ = server.wait();
}
