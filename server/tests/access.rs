//! Who may call what: the route table walked with every role, the console's server
//! functions, and the cross-origin rules.

mod common;

use common::{PASSWORD, TestServer, change_body, json_of, server_fn_path};
use domain::Role;
use reqwest::{Client, Method, StatusCode};
use serde_json::json;
use server::rest::routes;

/// A concrete path for a route pattern; ids that do not exist are fine (404 ≠ 401/403).
fn concrete(pattern: &str) -> String {
    pattern
        .replace("{n}", "999999")
        .replace("{a}", "0")
        .replace("{b}", "0")
        .replace("{id}", "999999")
        .replace("{*path}", "x.conf")
}

/// Routes only a person signed in may use: no API token mints tokens, manages users or
/// registers a shadow (which every rollout would then send the secrets to).
const PEOPLE_ONLY: [(&str, &str); 4] = [
    ("POST", "/api/v1/tokens"),
    ("POST", "/api/v1/shadows"),
    ("POST", "/api/v1/users"),
    ("PATCH", "/api/v1/users/{name}"),
];

#[tokio::test]
async fn every_route_refuses_anonymous_callers_and_enforces_its_role() {
    let server = TestServer::start().await;
    let mut tokens = Vec::new();
    for role in Role::ALL {
        let name = format!("user-{role}");
        server.user(&name, role).await;
        let caller = control::users::authenticate(&server.state.db, &name, PASSWORD).await.unwrap();
        let token = control::sessions::create_token(&server.state.db, &caller, "test", None, None)
            .await
            .unwrap();
        tokens.push((role, token.token));
    }
    let client = Client::new();
    let table = routes();
    assert!(table.len() > 20, "the table is the API");
    for spec in &table {
        let path = concrete(spec.path);
        let anonymous = json_of(
            client
                .request(spec.method.clone(), server.url(&path))
                .json(&json!({}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        let Some(required) = spec.role else {
            assert_ne!(anonymous.0, StatusCode::UNAUTHORIZED, "{} {} is public", spec.method, spec.path);
            continue;
        };
        assert_eq!(
            anonymous.0,
            StatusCode::UNAUTHORIZED,
            "{} {} without a session",
            spec.method,
            spec.path
        );
        assert_eq!(anonymous.1["error"]["code"], "unauthorized");
        for (role, token) in &tokens {
            let response = client
                .request(spec.method.clone(), server.url(&path))
                .bearer_auth(token)
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            let status = response.status();
            // Only refusals are read: an event stream that was let through never ends.
            let body = if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                json_of(response).await.1
            } else {
                json!(null)
            };
            let people_only = PEOPLE_ONLY.contains(&(spec.method.as_str(), spec.path));
            if people_only && role.allows(required) {
                // With this empty body the answer may be a 400 before the rule is reached;
                // the rule itself is walked with real bodies by the table of both doors.
                assert!(status.is_client_error(), "{} {} takes no token: {status}", spec.method, spec.path);
            } else if role.allows(required) {
                assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{} {} as {role} should pass the role check, got {status} {body}",
                    spec.method,
                    spec.path
                );
            } else {
                assert_eq!(status, StatusCode::FORBIDDEN, "{} {} as {role}: {body}", spec.method, spec.path);
            }
        }
    }
    // A forged or revoked-looking token is no credential at all.
    let (status, _) = json_of(
        client
            .get(server.url("/api/v1/revisions"))
            .bearer_auth("esk_forged")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    server.stop().await;
}

#[tokio::test]
async fn every_server_function_needs_a_session_except_login() {
    let server = TestServer::start().await;
    let client = Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let paths: Vec<String> = leptos::server_fn::axum::server_fn_paths()
        .map(|(path, _)| path.to_string())
        .collect();
    assert!(paths.len() > 15, "server functions are registered: {paths:?}");
    for path in paths {
        let response = client
            .post(server.url(&path))
            .header("origin", server.origin())
            .header("content-type", "application/x-www-form-urlencoded")
            .body("id=1")
            .send()
            .await
            .unwrap();
        if path.starts_with(server::LOGIN_SERVER_FN_PREFIX) {
            assert_ne!(response.status(), StatusCode::UNAUTHORIZED, "{path} is the way in");
        } else {
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path} without a session");
        }
    }
    // Pages redirect to the login instead.
    let response = client.get(server.url("/changes")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        response.headers()["location"],
        "/login?next=/changes",
        "and back to the page afterwards"
    );
    let response = client.get(server.url("/login")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn roles_are_enforced_inside_server_functions_too() {
    let server = TestServer::start().await;
    server.user("vera", Role::Viewer).await;
    server.user("erin", Role::Editor).await;
    let editor = server.login("erin").await;
    let (_, change) = editor.post("/api/v1/changes", change_body(0, "a.json", "{}")).await;
    let id = change["id"].as_i64().unwrap();
    editor.post(&format!("/api/v1/changes/{id}/submit"), json!({})).await;
    let viewer = server.login("vera").await;
    let approve = server_fn_path("approve_change");
    let response = viewer
        .client
        .post(server.url(&approve))
        .header("origin", server.origin())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("id={id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::FORBIDDEN,
        "a viewer cannot approve through the console"
    );
    let (_, after) = editor.get(&format!("/api/v1/changes/{id}")).await;
    assert_eq!(after["state"], "submitted");
    server.stop().await;
}

#[tokio::test]
async fn cross_origin_state_changes_are_refused() {
    let server = TestServer::start().await;
    server.user("erin", Role::Editor).await;
    let mut editor = server.login("erin").await;

    editor.origin = Some("http://evil.example".into());
    let (status, body) = editor.post("/api/v1/changes", change_body(0, "a.json", "{}")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // A sibling subdomain or another port is another origin.
    editor.origin = Some(format!("http://{}", server.addr).replace("127.0.0.1", "127.0.0.1.nip.io"));
    let (status, _) = editor.post("/api/v1/changes", change_body(0, "a.json", "{}")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Without an Origin the cookie does not authorise a state change.
    editor.origin = None;
    let (status, _) = editor.post("/api/v1/changes", change_body(0, "a.json", "{}")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A cross-site form post (text/plain, the CSRF classic) is refused before it is read.
    let response = editor
        .client
        .post(server.url("/api/v1/changes"))
        .header("origin", "http://evil.example")
        .header("content-type", "text/plain")
        .body(r#"{"base_revision":0,"message":"m","entries":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let response = editor
        .client
        .post(server.url(&server_fn_path("submit_change")))
        .header("origin", "http://evil.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("id=1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN, "server functions get the same rule");

    // Reads need no Origin, and the same origin may write.
    let (status, _) = editor.get("/api/v1/changes").await;
    assert_eq!(status, StatusCode::OK);
    editor.origin = Some(server.origin());
    let (status, _) = editor.post("/api/v1/changes", change_body(0, "a.json", "{}")).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, list) = editor.get("/api/v1/changes").await;
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        1,
        "only the same-origin request created a change"
    );
    server.stop().await;
}

#[tokio::test]
async fn logout_ends_the_session_on_the_server() {
    let server = TestServer::start().await;
    server.user("erin", Role::Editor).await;
    let editor = server.login("erin").await;
    let (status, me) = editor.get("/api/v1/session").await;
    assert_eq!((status, me["username"].as_str()), (StatusCode::OK, Some("erin")));
    let cookie = editor.client.get(server.url("/api/v1/session")).send().await.unwrap();
    assert_eq!(cookie.status(), StatusCode::OK);
    let (status, _) = json_of(editor.send(Method::DELETE, "/api/v1/session", None).await).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = editor.get("/api/v1/session").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = server
        .anonymous()
        .post("/api/v1/session", json!({"username": "erin", "password": "wrong password!!"}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    server.stop().await;
}

#[tokio::test]
async fn a_new_login_gets_a_fresh_session_id() {
    let server = TestServer::start().await;
    server.user("erin", Role::Editor).await;
    let client = Client::new();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let response = client
            .post(server.url("/api/v1/session"))
            .json(&json!({"username": "erin", "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        ids.push(
            response.headers()["set-cookie"]
                .to_str()
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .to_string(),
        );
    }
    assert_ne!(ids[0], ids[1]);
    server.stop().await;
}

/// Object-level checks: holding the id of someone else's change, entry or token is not
/// enough to act on it, through the REST API or the console's server functions; each
/// refusal leaves the object exactly as it was.
#[tokio::test]
async fn an_id_of_someone_elses_object_does_not_let_a_caller_act_on_it() {
    let server = TestServer::start().await;
    server.user("erin", Role::Editor).await;
    server.user("eve", Role::Editor).await;
    server.user("vera", Role::Viewer).await;
    let erin = server.login("erin").await;
    let eve = server.login("eve").await;
    let vera = server.login("vera").await;
    let mut body = change_body(0, "secrets/db.env", "DB_PASSWORD=hunter2\n");
    body["entries"][0]["secret"] = json!(true);
    let (_, change) = erin.post("/api/v1/changes", body).await;
    let id = change["id"].as_i64().unwrap();
    let (_, before) = erin.get(&format!("/api/v1/changes/{id}")).await;

    // Another editor cannot edit, remove from, submit or rebase erin's change.
    let entry = json!({"content": "DB_PASSWORD=mine\n", "format": "env"});
    let refusals = [
        eve.put(&format!("/api/v1/changes/{id}/entries/secrets/db.env"), entry.clone())
            .await,
        eve.put(&format!("/api/v1/changes/{id}/entries/other.json"), json!({"content": "{}"}))
            .await,
        eve.delete(&format!("/api/v1/changes/{id}/entries/secrets/db.env")).await,
        eve.post(&format!("/api/v1/changes/{id}/submit"), json!({})).await,
        eve.post(&format!("/api/v1/changes/{id}/rebase"), json!({})).await,
        vera.put(&format!("/api/v1/changes/{id}/entries/secrets/db.env"), entry).await,
    ];
    for (status, body) in refusals {
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }
    // The same through the console's server functions.
    for (function, form) in [
        (
            "save_entry",
            format!("change={id}&base_revision=0&message=m&path=secrets%2Fdb.env&content=x&format=env&mode=0600"),
        ),
        (
            "remove_entry",
            format!("change={id}&base_revision=0&message=m&path=secrets%2Fdb.env"),
        ),
        ("submit_change", format!("id={id}")),
    ] {
        let (status, _) = eve.server_fn(function, &form).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{function} on someone else's change");
    }
    let (_, after) = erin.get(&format!("/api/v1/changes/{id}")).await;
    assert_eq!(before, after, "nothing about the change moved");

    // Reading a secret entry of someone else's change by its id shows no content either.
    let (status, body) = eve.server_fn("change_entry", &format!("id={id}&path=secrets%2Fdb.env")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!body.contains("hunter2"), "{body}");

    // Ids that do not exist are 404, never another object's data.
    for path in ["/api/v1/changes/9999", "/api/v1/incidents/9999", "/api/v1/rollouts/9999"] {
        assert_eq!(eve.get(path).await.0, StatusCode::NOT_FOUND, "{path}");
    }
    assert_eq!(
        eve.post("/api/v1/incidents/9999/acknowledge", json!({})).await.0,
        StatusCode::NOT_FOUND
    );
    server.stop().await;
}

/// One action through both doors: its REST call and its console server function.
struct Action {
    name: &'static str,
    rest: (Method, &'static str, serde_json::Value),
    server_fn: (&'static str, &'static str),
    role: Role,
    /// An API token may do it (minting tokens and managing users need a person).
    token: bool,
}

fn actions() -> Vec<Action> {
    use Role::*;
    let user = json!({"username": "NAME", "role": "viewer", "password": PASSWORD});
    vec![
        Action {
            name: "create a token",
            rest: (Method::POST, "/api/v1/tokens", json!({"name": "made"})),
            server_fn: ("create_token", "name=made"),
            role: Viewer,
            token: false,
        },
        Action {
            name: "add a user",
            rest: (Method::POST, "/api/v1/users", user),
            server_fn: ("create_user", "username=NAME&role=viewer&password=PASSWORD"),
            role: Admin,
            token: false,
        },
        Action {
            name: "change a user",
            rest: (Method::PATCH, "/api/v1/users/target", json!({"role": "viewer"})),
            server_fn: ("update_user", "username=target&role=viewer"),
            role: Admin,
            token: false,
        },
        Action {
            name: "register a shadow",
            rest: (
                Method::POST,
                "/api/v1/shadows",
                json!({"driver": "agent", "name": "NAME", "url": "http://127.0.0.1:9", "token": "a-token-of-some-length"}),
            ),
            server_fn: (
                "add_shadow",
                "driver=agent&name=NAME&url=http%3A%2F%2F127.0.0.1%3A9&token=a-token-of-some-length",
            ),
            role: Admin,
            token: false,
        },
        Action {
            name: "list users",
            rest: (Method::GET, "/api/v1/users", json!(null)),
            server_fn: ("users", ""),
            role: Admin,
            token: true,
        },
        Action {
            name: "list webhooks",
            rest: (Method::GET, "/api/v1/webhooks", json!(null)),
            server_fn: ("webhooks", ""),
            role: Admin,
            token: true,
        },
        Action {
            name: "list deliveries",
            rest: (Method::GET, "/api/v1/webhooks/deliveries", json!(null)),
            server_fn: ("webhook_deliveries", ""),
            role: Admin,
            token: true,
        },
        Action {
            name: "approve",
            rest: (Method::POST, "/api/v1/changes/999999/approvals", json!({})),
            server_fn: ("approve_change", "id=999999"),
            role: Approver,
            token: true,
        },
        Action {
            name: "submit a change",
            rest: (Method::POST, "/api/v1/changes/999999/submit", json!({})),
            server_fn: ("submit_change", "id=999999"),
            role: Editor,
            token: true,
        },
        Action {
            name: "cancel a rollout",
            rest: (Method::POST, "/api/v1/rollouts/999999/cancel", json!({})),
            server_fn: ("cancel_rollout", "id=999999"),
            role: Approver,
            token: true,
        },
    ]
}

/// The same table walked through REST and the console's server functions, with a session
/// and with an API token of every role: both doors refuse exactly the callers the action's
/// role and token rule refuse (a token through the console gets no more than through REST:
/// it cannot mint tokens or manage users there either).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_doors_apply_the_same_rules_from_one_table() {
    let server = TestServer::start().await;
    server.user("target", Role::Viewer).await;
    let mut callers = Vec::new();
    for role in Role::ALL {
        let name = format!("user-{role}");
        server.user(&name, role).await;
        callers.push((role, "session", server.login(&name).await, None));
        let caller = control::users::authenticate(&server.state.db, &name, PASSWORD).await.unwrap();
        let token = control::sessions::create_token(&server.state.db, &caller, "test", None, None)
            .await
            .unwrap();
        callers.push((role, "token", server.anonymous(), Some(token.token)));
    }
    let refused = |status: StatusCode| status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN;
    let mut counter = 0;
    for action in actions() {
        for (role, kind, session, token) in &callers {
            counter += 1;
            let allowed = role.allows(action.role) && (action.token || token.is_none());
            let name = format!("made-{counter}");
            // REST.
            let (method, path, body) = &action.rest;
            let body = serde_json::to_string(body).unwrap().replace("NAME", &name);
            let mut request = session.client.request(method.clone(), server.url(path));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            } else {
                request = request.header("origin", server.origin());
            }
            if *method != Method::GET {
                request = request.header("content-type", "application/json").body(body);
            }
            let (status, answer) = json_of(request.send().await.unwrap()).await;
            assert_eq!(
                refused(status),
                !allowed,
                "REST {} as a {role} {kind}: {status} {answer}",
                action.name
            );
            // The console's server function.
            let (function, form) = action.server_fn;
            let form = form.replace("NAME", &format!("{name}-fn")).replace("PASSWORD", PASSWORD);
            let mut request = session
                .client
                .post(server.url(&server_fn_path(function)))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            } else {
                request = request.header("origin", server.origin());
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            let answer = response.text().await.unwrap();
            assert_eq!(
                refused(status),
                !allowed,
                "server function {function} ({}) as a {role} {kind}: {status} {answer}",
                action.name
            );
        }
    }
    server.stop().await;
}
