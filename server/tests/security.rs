//! Security properties over HTTP against the real server: response headers and the page's
//! Content-Security-Policy, session timeouts, role changes and disabled accounts taking
//! effect at once, and sign-in brute-force limits that survive a restart and a flood.

mod common;

use common::{PASSWORD, TestServer};
use domain::Role;
use reqwest::{Client, StatusCode};
use serde_json::json;
use std::time::{Duration, Instant};

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} on {}", response.url()))
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn every_response_carries_the_security_headers_and_pages_a_nonce_policy() {
    let server = TestServer::start().await;
    server.user("erin", Role::Editor).await;
    let editor = server.login("erin").await;
    let anonymous = server.anonymous();
    let cases = [
        (&anonymous, "/login", StatusCode::OK),
        (&editor, "/", StatusCode::OK),
        (&editor, "/changes", StatusCode::OK),
        (&editor, "/api/v1/changes", StatusCode::OK),
        (&anonymous, "/api/v1/changes", StatusCode::UNAUTHORIZED),
        (&editor, "/api/v1/changes/999999", StatusCode::NOT_FOUND),
        (&editor, "/api/v1/nothing-here", StatusCode::NOT_FOUND),
    ];
    for (session, path, status) in cases {
        let response = session.send(reqwest::Method::GET, path, None).await;
        assert_eq!(response.status(), status, "{path}");
        assert_eq!(header(&response, "x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header(&response, "x-frame-options"), "DENY", "{path}");
        assert_eq!(header(&response, "referrer-policy"), "same-origin", "{path}");
        let policy = header(&response, "content-security-policy").to_string();
        assert!(policy.contains("frame-ancestors 'none'"), "{path}: {policy}");
        assert!(!policy.contains("unsafe-inline"), "{path}: {policy}");
        assert!(
            response.headers().get("strict-transport-security").is_none(),
            "no HSTS over plain http"
        );
        let is_page = !path.starts_with("/api/");
        let body = response.text().await.unwrap();
        if is_page {
            // The page's inline scripts run only by the nonce its policy names.
            let nonce = policy
                .split("'nonce-")
                .nth(1)
                .and_then(|rest| rest.split('\'').next())
                .unwrap_or_else(|| panic!("{path}: no nonce in {policy}"));
            assert!(nonce.len() >= 16, "{path}: a real nonce, not {nonce:?}");
            let scripts: Vec<&str> = body.split("<script").skip(1).map(|s| &s[..s.find('>').unwrap()]).collect();
            assert!(!scripts.is_empty(), "{path}: the page hydrates");
            for script in scripts {
                assert!(
                    script.contains(&format!("nonce=\"{nonce}\"")),
                    "{path}: script without the nonce: <script{script}>"
                );
            }
        } else {
            assert!(policy.starts_with("default-src 'none'"), "{path}: {policy}");
        }
    }
    // Two pages, two nonces.
    let policies: Vec<String> = futures_util::future::join_all((0..2).map(|_| anonymous.send(reqwest::Method::GET, "/login", None)))
        .await
        .iter()
        .map(|r| header(r, "content-security-policy").to_string())
        .collect();
    assert_ne!(policies[0], policies[1], "a nonce is used once");
    server.stop().await;
}

#[tokio::test]
async fn sessions_end_after_their_idle_timeout_and_their_lifetime() {
    let server = TestServer::start_with(|config| {
        config.sessions.idle = time::Duration::seconds(2);
        config.sessions.lifetime = time::Duration::seconds(5);
    })
    .await;
    server.user("erin", Role::Editor).await;

    // Idle: no request for longer than the idle timeout ends the session.
    let idle = server.login("erin").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(idle.get("/api/v1/session").await.0, StatusCode::UNAUTHORIZED);

    // In use, the session outlives the idle timeout, but not its lifetime.
    let busy = server.login("erin").await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        assert_eq!(busy.get("/api/v1/session").await.0, StatusCode::OK, "alive while used");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        busy.get("/api/v1/session").await.0,
        StatusCode::UNAUTHORIZED,
        "the lifetime is absolute"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_role_change_or_a_disabled_account_takes_effect_on_the_next_request() {
    let server = TestServer::start().await;
    server.user("ada", Role::Admin).await;
    server.user("abel", Role::Approver).await;
    let admin = server.login("ada").await;
    let approver = server.login("abel").await;
    let (status, token) = approver.post("/api/v1/tokens", json!({"name": "ci"})).await;
    assert_eq!(status, StatusCode::CREATED, "{token}");
    let token = token["token"].as_str().unwrap().to_string();
    let with_token = |path: &str| Client::new().get(server.url(path)).bearer_auth(&token).send();
    assert_eq!(with_token("/api/v1/session").await.unwrap().status(), StatusCode::OK);

    // Demoted: the session ends at once; the token keeps working at the lower role.
    let response = admin
        .send(reqwest::Method::PATCH, "/api/v1/users/abel", Some(json!({"role": "viewer"})))
        .await;
    let (status, user) = common::json_of(response).await;
    assert_eq!((status, user["role"].as_str()), (StatusCode::OK, Some("viewer")), "{user}");
    assert_eq!(approver.get("/api/v1/session").await.0, StatusCode::UNAUTHORIZED);
    let me: serde_json::Value = with_token("/api/v1/session").await.unwrap().json().await.unwrap();
    assert_eq!(me["role"], "viewer", "a token never outranks its owner");

    // Disabled: a new session is refused, and so is the token.
    let viewer = server.login("abel").await;
    let response = admin
        .send(reqwest::Method::PATCH, "/api/v1/users/abel", Some(json!({"disabled": true})))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(viewer.get("/api/v1/session").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(with_token("/api/v1/session").await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let refused = server
        .anonymous()
        .post("/api/v1/session", json!({"username": "abel", "password": PASSWORD}))
        .await;
    assert_eq!(refused.0, StatusCode::UNAUTHORIZED);

    // Tokens are listed without their secret and revoked by their owner or an admin; a
    // token id of someone else's is "not found" to anyone else.
    server.user("erin", Role::Editor).await;
    let editor = server.login("erin").await;
    let (_, mine) = editor.post("/api/v1/tokens", json!({"name": "laptop"})).await;
    let (status, listed) = editor.get("/api/v1/tokens").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "only erin's own: {listed}");
    assert!(!listed.to_string().contains(mine["token"].as_str().unwrap()), "never the secret");
    let (_, all) = admin.get("/api/v1/tokens").await;
    let abels = all["items"].as_array().unwrap().iter().find(|t| t["owner"] == "abel").unwrap()["id"]
        .as_i64()
        .unwrap();
    assert_eq!(editor.delete(&format!("/api/v1/tokens/{abels}")).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        editor.delete(&format!("/api/v1/tokens/{}", mine["id"])).await.0,
        StatusCode::NO_CONTENT
    );
    let revoked = Client::new()
        .get(server.url("/api/v1/session"))
        .bearer_auth(mine["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::UNAUTHORIZED, "a revoked token is refused");

    // Only admins change accounts, and an admin cannot lock themselves out.
    let response = admin
        .send(reqwest::Method::PATCH, "/api/v1/users/ada", Some(json!({"disabled": true})))
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let (_, audit) = admin.get("/api/v1/audit?limit=20").await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"user.role") && actions.contains(&"user.disable"), "{actions:?}");
    server.stop().await;
}

async fn sign_in(client: &Client, server: &TestServer, username: &str, password: &str) -> reqwest::Response {
    client
        .post(server.url("/api/v1/session"))
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .unwrap()
}

/// `count` wrong guesses at `username`'s password; answers how many were checked (401)
/// rather than refused unchecked (429).
async fn guesses(client: &Client, server: &TestServer, username: &str, count: usize) -> usize {
    let mut checked = 0;
    for guess in 0..count {
        let response = sign_in(client, server, username, &format!("guess number {guess}")).await;
        match response.status() {
            StatusCode::UNAUTHORIZED => checked += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                let wait: u64 = header(&response, "retry-after").parse().unwrap();
                assert!((1..=5).contains(&wait), "Retry-After {wait}");
            }
            other => panic!("guess {guess}: {other}"),
        }
    }
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_limits_hold_across_a_restart_and_a_flood_of_random_names() {
    let data = tempfile::tempdir().unwrap();
    let limits = control::login::Limits {
        account_free: 5,
        address_free: 1_000_000, // this test is about accounts and names
        base: time::Duration::seconds(1),
        max: time::Duration::seconds(4),
        pool_cap: 50,
        ..Default::default()
    };
    let start = || {
        let dir = data.path().to_path_buf();
        TestServer::start_with(move |config| {
            config.data_dir = dir;
            config.login_limits = limits;
        })
    };
    let first = start().await;
    first.user("erin", Role::Editor).await;
    let client = Client::new();

    // 10,000 guesses at erin's password, half before and half after a restart.
    let started = Instant::now();
    let mut checked = guesses(&client, &first, "erin", 5_000).await;
    first.stop().await;
    let server = start().await;
    // The count survived the restart: at most one guess gets through before the next wait
    // (a reset would let five through).
    let after_restart = guesses(&client, &server, "erin", 2).await;
    assert!(after_restart <= 1, "the restart reset the limit");
    checked += after_restart + guesses(&client, &server, "erin", 4_998).await;
    // Five free guesses, then at most one per base interval (the waits double from there).
    let bound = 5 + started.elapsed().as_secs() as usize + 2;
    assert!(
        checked <= bound,
        "{checked} of 10,000 guesses were checked; the limit allows {bound}"
    );

    // A flood of names nobody has: the table stays bounded and erin's record stays.
    for i in 0..120 {
        let response = sign_in(&client, &server, &format!("flood-{i}-{}", i * 7919), "whatever password").await;
        assert!(matches!(
            response.status(),
            StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS
        ));
    }
    let pools = control::login::rows(&server.state.db).await.unwrap();
    let names = pools.iter().find(|(pool, _)| pool == "name").map_or(0, |(_, n)| *n);
    assert!(names <= 50, "{pools:?}");
    assert!(pools.iter().any(|(pool, n)| pool == "account" && *n == 1), "{pools:?}");
    assert!(
        guesses(&client, &server, "erin", 2).await <= 1,
        "the flood did not evict erin's record"
    );

    // Backoff, not lockout: erin signs in once the wait is over, and starts afresh.
    let mut signed_in = false;
    for _ in 0..5 {
        let response = sign_in(&client, &server, "erin", PASSWORD).await;
        if response.status() == StatusCode::OK {
            signed_in = true;
            break;
        }
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let wait: u64 = header(&response, "retry-after").parse().unwrap();
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
    assert!(signed_in, "erin could not sign in after the backoff");
    assert_eq!(
        guesses(&client, &server, "erin", 1).await,
        1,
        "a successful sign-in clears the count"
    );
    server.stop().await;
}

/// Guesses sent together all reached the password check when the block was looked at
/// before the hashing and the failure written after it. Counted first, 64 parallel
/// guesses get exactly the five free checks; each failure is audited, naming the account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_get_no_more_checks_than_the_limit() {
    let server = TestServer::start_with(|config| {
        config.login_limits = control::login::Limits {
            account_free: 5,
            address_free: 1_000_000,
            base: time::Duration::minutes(5),
            max: time::Duration::minutes(5),
            ..Default::default()
        };
    })
    .await;
    server.user("erin", Role::Editor).await;
    let client = Client::new();
    let answers = futures_util::future::join_all(
        (0..64).map(|guess| sign_in(&client, &server, "erin", if guess == 63 { PASSWORD } else { "a wrong guess" })),
    )
    .await;
    let checked = answers.iter().filter(|r| r.status() == StatusCode::UNAUTHORIZED).count();
    let refused = answers.iter().filter(|r| r.status() == StatusCode::TOO_MANY_REQUESTS).count();
    let accepted = answers.iter().filter(|r| r.status() == StatusCode::OK).count();
    assert!(
        checked + accepted <= 5 && checked + refused + accepted == 64,
        "checked {checked}, refused {refused}, accepted {accepted}"
    );
    assert!(checked >= 4, "the free guesses were checked: {checked}");
    let failed: Vec<(String, String)> = sqlx::query_as("SELECT actor, target FROM audit_log WHERE action = 'session.login_failed'")
        .fetch_all(&server.state.db.read)
        .await
        .unwrap();
    assert_eq!(failed.len(), checked, "{failed:?}");
    assert!(
        failed.iter().all(|(actor, target)| actor == "anonymous" && target == "user/erin"),
        "{failed:?}"
    );
    // A name nobody has is audited without the name (it may be a password typed there).
    let response = sign_in(&client, &server, "hunter2-typed-as-a-name", "x").await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let targets: Vec<(String,)> = sqlx::query_as("SELECT details || target FROM audit_log")
        .fetch_all(&server.state.db.read)
        .await
        .unwrap();
    assert!(!targets.iter().any(|(t,)| t.contains("hunter2")), "{targets:?}");
    server.stop().await;
}

/// A server whose recent-password window is `window`, with an editor (erin), an approver
/// (abel) and an admin (ada).
async fn short_window_server(window: Duration) -> TestServer {
    let server = TestServer::start_with(|config| {
        config.sessions.recent_password = time::Duration::try_from(window).unwrap();
    })
    .await;
    server.user("erin", Role::Editor).await;
    server.user("abel", Role::Approver).await;
    server.user("ada", Role::Admin).await;
    server
}

/// Sensitive actions need a password entry within the recent window: the sign-in opens
/// it, `POST /api/v1/session/confirm` reopens it; a refusal changes nothing. API tokens
/// (minted under a recent password) are not asked again, except to reveal a secret.
#[tokio::test]
async fn sensitive_actions_need_a_recent_password() {
    let window = Duration::from_secs(2);
    let server = short_window_server(window).await;
    let editor = server.login("erin").await;
    let approver = server.login("abel").await;
    let admin = server.login("ada").await;
    let secret_change = |base: i64, content: &str| {
        let mut body = common::change_body(base, "secrets/db.env", content);
        body["entries"][0]["secret"] = json!(true);
        body
    };
    let new_change = |base: i64, content: &'static str| {
        let editor = &editor;
        async move {
            let (status, change) = editor.post("/api/v1/changes", secret_change(base, content)).await;
            assert_eq!(status, StatusCode::CREATED, "{change}");
            let id = change["id"].as_i64().unwrap();
            assert_eq!(
                editor.post(&format!("/api/v1/changes/{id}/submit"), json!({})).await.0,
                StatusCode::OK
            );
            id
        }
    };
    let first = new_change(0, "DB_PASSWORD=one\n").await;

    // Straight after sign-in the window is open: a token can be minted.
    let (status, token) = approver.post("/api/v1/tokens", json!({"name": "release bot"})).await;
    assert_eq!(status, StatusCode::CREATED, "{token}");
    let token = token["token"].as_str().unwrap().to_string();
    let (_, me) = approver.get("/api/v1/session").await;
    assert_eq!(me["recent_password"], true, "{me}");

    tokio::time::sleep(window + Duration::from_millis(500)).await;
    let (_, me) = approver.get("/api/v1/session").await;
    assert_eq!(me["recent_password"], false, "{me}");
    let refused = |(status, body): (StatusCode, serde_json::Value)| {
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["error"]["code"], "password_required", "{body}");
    };
    refused(approver.post(&format!("/api/v1/changes/{first}/approvals"), json!({})).await);
    refused(approver.post("/api/v1/tokens", json!({"name": "another"})).await);
    let demote = admin
        .send(reqwest::Method::PATCH, "/api/v1/users/erin", Some(json!({"role": "viewer"})))
        .await;
    refused(common::json_of(demote).await);
    refused(
        admin
            .post(
                "/api/v1/users",
                json!({"username": "mallory", "role": "admin", "password": PASSWORD}),
            )
            .await,
    );
    // The refusals changed nothing.
    let (_, change) = approver.get(&format!("/api/v1/changes/{first}")).await;
    assert_eq!(change["state"], "submitted", "{change}");
    assert!(change["approvals"].as_array().unwrap().is_empty(), "{change}");
    let (_, users) = admin.get("/api/v1/users").await;
    let names: Vec<&str> = users["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert!(!names.contains(&"mallory"), "{names:?}");
    let (_, tokens) = approver.get("/api/v1/tokens").await;
    assert_eq!(tokens["items"].as_array().unwrap().len(), 1, "{tokens}");

    // A wrong password is refused (and counted by the sign-in limits); the right one
    // reopens the window.
    let (status, body) = approver
        .post("/api/v1/session/confirm", json!({"password": "not my password"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    refused(approver.post(&format!("/api/v1/changes/{first}/approvals"), json!({})).await);
    let (status, body) = approver.post("/api/v1/session/confirm", json!({"password": PASSWORD})).await;
    assert_eq!((status, body["confirmed"].as_bool()), (StatusCode::OK, Some(true)), "{body}");
    assert_eq!(
        approver.post(&format!("/api/v1/changes/{first}/approvals"), json!({})).await.0,
        StatusCode::CREATED
    );
    let (status, rollout) = approver.post(&format!("/api/v1/changes/{first}/rollouts"), json!({})).await;
    assert_eq!(
        (status, rollout["state"].as_str()),
        (StatusCode::CREATED, Some("applied")),
        "{rollout}"
    );

    // Revealing a secret: a session in its window may; after it, only with the password.
    let reveal = json!({"path": "secrets/db.env"});
    let (status, revealed) = approver.post("/api/v1/revisions/1/reveal", reveal.clone()).await;
    assert_eq!((status, revealed["content"].as_str()), (StatusCode::OK, Some("DB_PASSWORD=one\n")));
    tokio::time::sleep(window + Duration::from_millis(500)).await;
    refused(approver.post("/api/v1/revisions/1/reveal", reveal.clone()).await);
    let with_password = json!({"path": "secrets/db.env", "password": PASSWORD});
    assert_eq!(
        approver.post("/api/v1/revisions/1/reveal", with_password.clone()).await.0,
        StatusCode::OK
    );

    // The token is not asked again for approvals and rollouts, but a reveal needs the
    // password even with a token: a leaked token alone shows no secret.
    let second = new_change(1, "DB_PASSWORD=two\n").await;
    let bot = |method: reqwest::Method, path: String, body: serde_json::Value| {
        Client::new()
            .request(method, server.url(&path))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    let approved = bot(reqwest::Method::POST, format!("/api/v1/changes/{second}/approvals"), json!({}))
        .await
        .unwrap();
    assert_eq!(approved.status(), StatusCode::CREATED);
    let reveal_by_token = bot(reqwest::Method::POST, "/api/v1/revisions/1/reveal".into(), reveal)
        .await
        .unwrap();
    refused(common::json_of(reveal_by_token).await);
    let reveal_by_token = bot(reqwest::Method::POST, "/api/v1/revisions/1/reveal".into(), with_password)
        .await
        .unwrap();
    assert_eq!(reveal_by_token.status(), StatusCode::OK);
    // A token cannot mint another (which would outlive its revocation).
    let minted = bot(reqwest::Method::POST, "/api/v1/tokens".into(), json!({"name": "child"}))
        .await
        .unwrap();
    assert_eq!(minted.status(), StatusCode::FORBIDDEN);

    let (_, audit) = admin.get("/api/v1/audit?limit=50").await;
    let confirmations = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "session.confirm" && e["actor"] == "abel")
        .count();
    assert_eq!(confirmations, 2, "the confirmation and the reveal's password entry are audited");
    server.stop().await;
}

/// The console's own actions obey the recent-password window as the REST API does, and
/// its Tokens and Users pages act only within their role.
#[tokio::test]
async fn the_console_asks_for_the_password_again_and_manages_tokens_and_users_by_role() {
    let window = Duration::from_secs(2);
    let server = short_window_server(window).await;
    let editor = server.login("erin").await;
    let (_, change) = editor.post("/api/v1/changes", common::change_body(0, "a.json", "{}")).await;
    let id = change["id"].as_i64().unwrap();
    editor.post(&format!("/api/v1/changes/{id}/submit"), json!({})).await;
    let approver = server.login("abel").await;
    let admin = server.login("ada").await;

    // An editor's token, made and revoked on the Tokens page; never above their role.
    let (status, body) = editor.server_fn("create_token", "name=laptop&role=admin").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = editor.server_fn("create_token", "name=laptop&role=").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let made: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(made["token"].as_str().unwrap().starts_with("esk_"), "{made}");
    let (status, body) = editor.server_fn("tokens", "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!body.contains(made["token"].as_str().unwrap()), "the list never holds the secret");
    let (status, _) = editor.server_fn("revoke_token", &format!("id={}", made["id"])).await;
    assert_eq!(status, StatusCode::OK);
    // Only admins see or change accounts.
    assert_eq!(editor.server_fn("users", "").await.0, StatusCode::FORBIDDEN);
    let (status, _) = approver.server_fn("update_user", "username=erin&role=admin").await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    tokio::time::sleep(window + Duration::from_millis(500)).await;
    let (status, body) = approver.server_fn("approve_change", &format!("id={id}")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body.contains(domain::api::PASSWORD_REQUIRED),
        "the page recognises the refusal: {body}"
    );
    let (status, body) = admin.server_fn("update_user", "username=erin&disabled=true").await;
    assert!(
        status == StatusCode::FORBIDDEN && body.contains(domain::api::PASSWORD_REQUIRED),
        "{body}"
    );
    let (_, after) = editor.get(&format!("/api/v1/changes/{id}")).await;
    assert_eq!(after["state"], "submitted", "refused, so nothing changed: {after}");

    let (status, _) = approver.server_fn("confirm_password", "password=wrong+password+here").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let form = format!("password={}", PASSWORD.replace(' ', "+"));
    assert_eq!(approver.server_fn("confirm_password", &form).await.0, StatusCode::OK);
    let (status, body) = approver.server_fn("approve_change", &format!("id={id}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(admin.server_fn("confirm_password", &form).await.0, StatusCode::OK);
    let (status, body) = admin.server_fn("update_user", "username=erin&disabled=true").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(editor.get("/api/v1/session").await.0, StatusCode::UNAUTHORIZED, "disabled at once");
    server.stop().await;
}

/// With a certificate the console itself serves HTTPS (rustls): the session cookie is
/// `Secure`, every answer carries HSTS, and plain HTTP gets no answer on that port.
#[tokio::test]
async fn the_console_serves_https_with_secure_cookies_and_hsts() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = (certs.path().join("console.pem"), certs.path().join("console.key"));
    tls_serve::generate_if_missing(&cert, &key, "127.0.0.1:443".parse().unwrap()).unwrap();
    let files = server::TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
    };
    let server = TestServer::start_with(|config| config.tls = Some(files)).await;
    server.user("ada", Role::Admin).await;
    let origin = format!("https://{}", server.addr);
    // The self-signed certificate of this test is trusted by its pin elsewhere; here the
    // point is what the console answers over TLS.
    let client = Client::builder()
        .danger_accept_invalid_certs(true)
        .cookie_store(true)
        .build()
        .unwrap();
    let response = client
        .post(format!("{origin}/api/v1/session"))
        .header("origin", &origin)
        .json(&json!({"username": "ada", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = header(&response, "set-cookie").to_string();
    assert!(cookie.contains("; Secure") && cookie.contains("HttpOnly"), "{cookie}");
    // Named `__Host-`: the browser takes it only from a secure origin, for this host alone.
    assert!(
        cookie.starts_with("__Host-etc_shadow_session=") && cookie.contains("Path=/") && !cookie.contains("Domain"),
        "{cookie}"
    );
    assert!(header(&response, "strict-transport-security").contains("max-age="));
    let me = client.get(format!("{origin}/api/v1/session")).send().await.unwrap();
    assert_eq!(me.status(), StatusCode::OK, "the Secure cookie works over HTTPS");
    let page = client.get(format!("{origin}/login")).send().await.unwrap();
    assert!(header(&page, "strict-transport-security").contains("max-age="));
    let plain = Client::new().get(server.url("/healthz")).send().await;
    assert!(plain.is_err(), "plain HTTP is not answered on the HTTPS port: {plain:?}");
    server.stop().await;

    // A broken certificate is refused before anything is served.
    std::fs::write(&cert, "not a certificate").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut config = server::Config::new(data.path().to_path_buf(), listener.local_addr().unwrap());
    config.tls = Some(server::TlsFiles { cert, key });
    let state = server::prepare(config).await.unwrap();
    let served = server::serve(state, listener, std::future::pending()).await;
    assert!(served.is_err(), "serve refuses a bad certificate");
}

/// Contents stored in clear before a key pattern applied to them (an older version, or a
/// pattern added later) are sealed at the next start, and read back the same.
#[tokio::test]
async fn stored_contents_with_secret_values_are_sealed_when_the_patterns_change() {
    let data = tempfile::tempdir().unwrap();
    let start = |patterns: &str| {
        let dir = data.path().to_path_buf();
        let keys = domain::redact::SecretKeys::parse(patterns).unwrap();
        TestServer::start_with(move |config| {
            config.data_dir = dir;
            config.secret_keys = keys;
        })
    };
    let sealed_flags = |server: &TestServer| {
        let pool = server.state.db.read.clone();
        async move {
            let rows: Vec<(i64,)> =
                sqlx::query_as("SELECT b.sealed FROM blobs b JOIN change_entries e ON e.blob = b.hash WHERE e.path = 'app.toml'")
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            rows.into_iter().map(|(sealed,)| sealed != 0).collect::<Vec<_>>()
        }
    };
    let content = "[db]\nuser = \"app\"\npassphrase = \"OLD-CLEAR-VALUE\"\n";

    let server = start("password").await;
    server.user("erin", Role::Editor).await;
    let editor = server.login("erin").await;
    let (status, change) = editor.post("/api/v1/changes", common::change_body(0, "app.toml", content)).await;
    assert_eq!(status, StatusCode::CREATED, "{change}");
    let id = change["id"].as_i64().unwrap();
    assert_eq!(sealed_flags(&server).await, [false], "no pattern matched `passphrase` yet");
    server.stop().await;

    let server = start("password,passphrase").await;
    assert_eq!(sealed_flags(&server).await, [true], "sealed at the start with the new pattern");
    let editor = server.login("erin").await;
    let (status, shown) = editor.get(&format!("/api/v1/changes/{id}/diff")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!shown.to_string().contains("OLD-CLEAR-VALUE"), "{shown}");
    assert!(shown.to_string().contains("«secret:"), "{shown}");
    // Still the same bytes underneath: the change's content hash did not move.
    let (_, after) = editor.get(&format!("/api/v1/changes/{id}")).await;
    assert_eq!(after["content_hash"], change["content_hash"]);
    // With the patterns unchanged, a start checks nothing again.
    assert_eq!(control::secrets::seal_secret_values(&server.state.db).await.unwrap(), 0);
    server.stop().await;
}

/// `etc-shadow ARGS --data-dir DATA` with `ETC_SHADOW_SECRET_KEY` set to `keys` (unset when
/// `None`) for that process only: success, stdout and stderr.
fn cli_with_keys(data: &std::path::Path, keys: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_etc-shadow"));
    command.args(args).arg("--data-dir").arg(data);
    command.env_remove(control::secrets::KEY_FILE_ENV);
    match keys {
        Some(keys) => command.env(control::secrets::KEY_ENV, keys),
        None => command.env_remove(control::secrets::KEY_ENV),
    };
    let output = command.output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn keys_given_by_the_environment_seal_the_database_and_rotate_there() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let (ok, first, _) = cli_with_keys(&data, None, &["secrets", "generate"]);
    assert!(ok);
    let first = first.trim().to_string();
    // A generated agent token is sealed with the keys of the environment; no key file.
    let (ok, out, err) = cli_with_keys(&data, Some(&first), &["shadow", "add", "edge", "--agent", "http://127.0.0.1:9"]);
    assert!(ok, "{out}{err}");
    assert!(!data.join(control::secrets::KEY_FILE).exists(), "no key file is made");
    assert!(cli_with_keys(&data, Some(&first), &["shadow", "list"]).0);
    // Other keys, or a key file made anew, do not open it; an empty variable is refused.
    let (_, other, _) = cli_with_keys(&data, None, &["secrets", "generate"]);
    for keys in [Some(other.trim()), None] {
        let (ok, _, err) = cli_with_keys(&data, keys, &["shadow", "list"]);
        assert!(!ok && err.contains("does not open this database"), "{keys:?}: {err}");
    }
    std::fs::remove_file(data.join(control::secrets::KEY_FILE)).unwrap();
    let (ok, _, err) = cli_with_keys(&data, Some(""), &["shadow", "list"]);
    assert!(!ok && err.contains("ETC_SHADOW_SECRET_KEY: no encryption key"), "{err}");
    assert!(
        !data.join(control::secrets::KEY_FILE).exists(),
        "an empty variable makes no key file"
    );

    // Rotation: the operator sets a new encryption key with the current one as previous.
    let (ok, _, err) = cli_with_keys(&data, Some(&first), &["secrets", "rotate"]);
    assert!(!ok && err.contains("previous <current>"), "{err}");
    let word = |keys: &str, name: &str| {
        let words: Vec<&str> = keys.split_whitespace().collect();
        words[words.iter().position(|w| *w == name).unwrap() + 1].to_string()
    };
    let new = format!(
        "encryption {} previous {} fingerprint {}",
        word(other.trim(), "encryption"),
        word(&first, "encryption"),
        word(&first, "fingerprint")
    );
    let (ok, out, err) = cli_with_keys(&data, Some(&new), &["secrets", "rotate"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("1 secret values re-encrypted") && out.contains("drop its previous key"),
        "{out}"
    );
    // Re-sealed: the new key alone opens it, the old one no longer does.
    let settled = format!(
        "encryption {} fingerprint {}",
        word(other.trim(), "encryption"),
        word(&first, "fingerprint")
    );
    let (ok, _, err) = cli_with_keys(&data, Some(&settled), &["shadow", "list"]);
    assert!(ok, "{err}");
    let (ok, _, err) = cli_with_keys(&data, Some(&first), &["shadow", "list"]);
    assert!(!ok && err.contains("does not open this database"), "{err}");
    // No error or output along the way showed a key.
    for keys in [&first, &settled] {
        for word in keys.split_whitespace().filter(|w| w.len() == 64) {
            assert!(!out.contains(word) && !err.contains(word));
        }
    }
}

/// An agent URL is shown to every viewer and written to the audit log: one with a user and
/// password in it is refused (and so is a query or a fragment), and nothing is recorded.
#[tokio::test]
async fn agent_urls_carry_no_credentials() {
    let server = TestServer::start().await;
    server.user("ada", Role::Admin).await;
    let admin = server.login("ada").await;
    for url in [
        "http://ops:CANARY-url-password@127.0.0.1:9",
        "http://ops@127.0.0.1:9",
        "http://127.0.0.1:9/?token=CANARY-url-password",
        "http://127.0.0.1:9/#CANARY-url-password",
    ] {
        let (status, refused) = admin
            .post(
                "/api/v1/shadows",
                json!({"driver": "agent", "name": "dc9", "url": url, "token": "a-token-of-some-length"}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {refused}");
        assert!(!refused.to_string().contains("CANARY"), "{refused}");
    }
    let (_, shadows) = admin.get("/api/v1/shadows").await;
    assert_eq!(shadows["items"].as_array().map(Vec::len), Some(0), "{shadows}");
    let (_, audit) = admin.get("/api/v1/audit?limit=50").await;
    assert!(!audit.to_string().contains("CANARY"), "{audit}");
    server.stop().await;
}

#[tokio::test]
async fn webhooks_cannot_be_aimed_inside_the_network_unless_allowed() {
    let server = TestServer::start_with(|config| config.webhook_internal = false).await;
    server.user("ada", Role::Admin).await;
    let admin = server.login("ada").await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://[::1]/hook",
        "http://10.0.0.7/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:192.168.1.1]/hook",
        "http://0.0.0.0:8080/",
        // IPv6 forms of internal IPv4 addresses, and ranges the first filter missed.
        "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
        "http://[2002:7f00:1::1]/hook",
        "http://198.18.0.1/hook",
        "http://240.0.0.1/hook",
        // A name is resolved: localhost has only loopback addresses.
        "http://localhost:3000/hook",
    ] {
        let (status, refused) = admin.post("/api/v1/webhooks", json!({"url": url})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {refused}");
        assert!(
            refused["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("--webhook-allow-internal"),
            "{url}: {refused}"
        );
    }
    let (_, listed) = admin.get("/api/v1/webhooks").await;
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(0),
        "nothing refused was stored: {listed}"
    );
    // A public address is taken (nothing is sent until an event happens).
    let (status, created) = admin.post("/api/v1/webhooks", json!({"url": "http://93.184.216.34/hook"})).await;
    assert!(status.is_success(), "{created}");
}

/// Tokens work for the days they were given (90 by default, at most 365), record when they
/// were last used, and end when their owner's password changes or the account is disabled
/// (enabling it again brings none back).
#[tokio::test]
async fn tokens_expire_record_their_use_and_end_with_a_password_change_or_a_disabled_account() {
    let server = TestServer::start().await;
    server.user("erin", Role::Editor).await;
    let erin = server.login("erin").await;
    let (status, refused) = erin.post("/api/v1/tokens", json!({"name": "ci", "days": 366})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    let (status, _) = erin.post("/api/v1/tokens", json!({"name": "ci", "days": 0})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, made) = erin.post("/api/v1/tokens", json!({"name": "ci"})).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let expires =
        time::OffsetDateTime::parse(made["expires_at"].as_str().unwrap(), &time::format_description::well_known::Rfc3339).unwrap();
    let days = (expires - time::OffsetDateTime::now_utc()).whole_hours() as f64 / 24.0;
    assert!((89.9..=90.0).contains(&days), "90 days by default: {days}");
    let token = |made: &serde_json::Value| made["token"].as_str().unwrap().to_string();
    let client = Client::new();
    let use_token = |token: String| {
        let request = client.get(server.url("/api/v1/revisions")).bearer_auth(token);
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(use_token(token(&made)).await, StatusCode::OK);
    let (_, listed) = erin.get("/api/v1/tokens").await;
    let row = &listed["items"][0];
    assert!(row["last_used_at"].is_string(), "the use is recorded: {listed}");
    assert_eq!(row["expires_at"], made["expires_at"]);

    // Past its expiry it is no credential.
    sqlx::query("UPDATE api_tokens SET expires_at = '2000-01-01T00:00:00.000Z' WHERE id = $1")
        .bind(made["id"].as_i64().unwrap())
        .execute(server.state.db.read_write())
        .await
        .unwrap();
    assert_eq!(use_token(token(&made)).await, StatusCode::UNAUTHORIZED);

    // A password change ends the tokens.
    let (_, second) = erin.post("/api/v1/tokens", json!({"name": "ci-2", "days": 1})).await;
    assert_eq!(use_token(token(&second)).await, StatusCode::OK);
    control::users::set_password(&server.state.db, "test", "erin", "another long password".into())
        .await
        .unwrap();
    assert_eq!(use_token(token(&second)).await, StatusCode::UNAUTHORIZED);

    // So does disabling the account, for good.
    control::users::set_password(&server.state.db, "test", "erin", PASSWORD.into())
        .await
        .unwrap();
    let erin = server.login("erin").await;
    let (_, third) = erin.post("/api/v1/tokens", json!({"name": "ci-3"})).await;
    assert_eq!(use_token(token(&third)).await, StatusCode::OK);
    control::users::set_disabled(&server.state.db, "test", "erin", true).await.unwrap();
    assert_eq!(use_token(token(&third)).await, StatusCode::UNAUTHORIZED);
    control::users::set_disabled(&server.state.db, "test", "erin", false).await.unwrap();
    assert_eq!(
        use_token(token(&third)).await,
        StatusCode::UNAUTHORIZED,
        "enabling brings no token back"
    );
    server.stop().await;
}

/// What a fake agent answers, and what it saw.
#[derive(Default)]
struct FakeAgent {
    mode: std::sync::Mutex<&'static str>,
    /// The address its redirect points at.
    elsewhere: std::sync::Mutex<String>,
    /// Requests that reached the address a redirect pointed at.
    redirected_hits: std::sync::atomic::AtomicUsize,
    /// Connections to its event stream.
    event_streams: std::sync::atomic::AtomicUsize,
}

/// An agent that answers its state with a redirect elsewhere or an endless body, and its
/// event stream with bytes that never end an event: the control plane follows no redirect,
/// reads no answer past its bound, and drops a stream that buffers past one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_answers_are_not_followed_elsewhere_nor_read_without_bound() {
    use axum::{extract::State, response::IntoResponse, routing::get};
    use std::sync::{Arc, atomic::Ordering};
    let fake = Arc::new(FakeAgent::default());
    *fake.mode.lock().unwrap() = "redirect";
    // Where a redirect would take the control plane (with its bearer token).
    let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let elsewhere_addr = elsewhere.local_addr().unwrap();
    let hits = fake.clone();
    tokio::spawn(async move {
        let app = axum::Router::new().fallback(move || {
            hits.redirected_hits.fetch_add(1, Ordering::SeqCst);
            async { "{}" }
        });
        axum::serve(elsewhere, app).await.unwrap()
    });
    async fn state(State(fake): State<Arc<FakeAgent>>) -> axum::response::Response {
        let mode = *fake.mode.lock().unwrap();
        match mode {
            "redirect" => {
                let elsewhere = fake.elsewhere.lock().unwrap().clone();
                axum::response::Redirect::temporary(&format!("http://{elsewhere}/v1/state")).into_response()
            }
            _ => {
                // 64 MiB in 1 MiB chunks, with no length announced.
                let chunks =
                    futures_util::stream::iter((0..64).map(|_| Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b' '; 1 << 20]))));
                axum::body::Body::from_stream(chunks).into_response()
            }
        }
    }
    async fn events(State(fake): State<Arc<FakeAgent>>) -> axum::response::Response {
        fake.event_streams.fetch_add(1, Ordering::SeqCst);
        use futures_util::StreamExt;
        let endless = futures_util::stream::repeat(()).then(|()| async {
            tokio::time::sleep(Duration::from_millis(2)).await;
            Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b'x'; 8192]))
        });
        axum::body::Body::from_stream(endless).into_response()
    }
    *fake.elsewhere.lock().unwrap() = elsewhere_addr.to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent_addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/v1/state", get(state))
        .route("/v1/events", get(events))
        .with_state(fake.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let server = TestServer::start().await;
    server.user("ada", Role::Admin).await;
    let admin = server.login("ada").await;
    let (status, body) = admin
        .post(
            "/api/v1/shadows",
            json!({"driver": "agent", "name": "fake", "url": format!("http://{agent_addr}"), "token": "a-token-of-some-length"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, checked) = admin.post("/api/v1/shadows/fake/check", json!({})).await;
    assert!(checked["last_error"].to_string().contains("307"), "{checked}");
    assert_eq!(fake.redirected_hits.load(Ordering::SeqCst), 0, "the redirect was followed");

    *fake.mode.lock().unwrap() = "huge";
    let (_, checked) = admin.post("/api/v1/shadows/fake/check", json!({})).await;
    assert!(checked["last_error"].to_string().contains("too_large"), "{checked}");
    let (status, _) = admin.get("/api/v1/shadows").await;
    assert_eq!(status, StatusCode::OK, "the server answers on");

    // The event stream that never ends an event is dropped and opened again.
    let started = Instant::now();
    while fake.event_streams.load(Ordering::SeqCst) < 2 && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        fake.event_streams.load(Ordering::SeqCst) >= 2,
        "the endless event was buffered on instead of dropped"
    );
    server.stop().await;
}
