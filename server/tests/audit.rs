//! The audit chain against direct tampering with the database.

mod common;

use common::{TestServer, change_body};
use domain::Role;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::{Connection, SqliteConnection};
use std::process::Command;

/// A server with some history: users, a change, its review and its rollout.
async fn server_with_history() -> TestServer {
    let server = TestServer::start().await;
    server.user("erin", Role::Editor).await;
    server.user("abel", Role::Approver).await;
    let editor = server.login("erin").await;
    let approver = server.login("abel").await;
    let (_, change) = editor.post("/api/v1/changes", change_body(0, "a.json", "{}")).await;
    let id = change["id"].as_i64().unwrap();
    editor.post(&format!("/api/v1/changes/{id}/submit"), json!({})).await;
    approver.post(&format!("/api/v1/changes/{id}/approvals"), json!({})).await;
    let (status, _) = approver.post(&format!("/api/v1/changes/{id}/rollouts"), json!({})).await;
    assert_eq!(status, StatusCode::CREATED);
    server
}

async fn tamper(server: &TestServer, sql: &str) {
    let url = format!("sqlite://{}", server.data_dir().join(control::db::DATABASE_FILE).display());
    let mut conn = SqliteConnection::connect(&url).await.unwrap();
    for statement in sql.split(';').filter(|s| !s.trim().is_empty()) {
        sqlx::query(statement).execute(&mut conn).await.unwrap();
    }
    conn.close().await.unwrap();
}

fn cli_verify(server: &TestServer) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_etc-shadow"))
        .args(["audit", "verify", "--data-dir"])
        .arg(server.data_dir())
        .output()
        .expect("run etc-shadow audit verify");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

async fn api_verify(server: &TestServer) -> serde_json::Value {
    let viewer = server.login("erin").await;
    let (status, body) = viewer.get("/api/v1/audit/verify").await;
    assert_eq!(status, StatusCode::OK);
    body
}

#[tokio::test]
async fn intact_chain_verifies_and_every_action_is_logged() {
    let server = server_with_history().await;
    let report = api_verify(&server).await;
    assert_eq!(report["intact"], true, "{report}");
    let editor = server.login("erin").await;
    let (_, log) = editor.get("/api/v1/audit?limit=100").await;
    let actions: Vec<&str> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["action"].as_str().unwrap())
        .collect();
    for expected in [
        "control_plane.create",
        "control_plane.start",
        "user.create",
        "session.login",
        "change.create",
        "change.submit",
        "change.approve",
        "rollout.applied",
    ] {
        assert!(actions.contains(&expected), "{expected} missing from {actions:?}");
    }
    let (_, head) = editor.get("/api/v1/audit/head").await;
    assert_eq!(head["hash"], log["items"][0]["hash"]);
    let (_, filtered) = editor.get("/api/v1/audit?action=change.").await;
    assert!(
        filtered["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|row| row["action"].as_str().unwrap().starts_with("change."))
    );
    let (ok, output) = cli_verify(&server);
    assert!(ok, "{output}");
    server.stop().await;
}

#[tokio::test]
async fn an_edited_row_is_named() {
    let server = server_with_history().await;
    tamper(&server, "UPDATE audit_log SET actor = 'mallory' WHERE seq = 5").await;
    let report = api_verify(&server).await;
    assert_eq!(report["intact"], false);
    assert_eq!(report["first_bad_seq"], 5, "{report}");
    assert_eq!(report["problem"]["kind"], "content");
    let (ok, output) = cli_verify(&server);
    assert!(!ok);
    assert!(output.contains("row 5"), "{output}");
    server.stop().await;
}

#[tokio::test]
async fn a_deleted_row_is_named() {
    let server = server_with_history().await;
    tamper(&server, "DELETE FROM audit_log WHERE seq = 4").await;
    let report = api_verify(&server).await;
    assert_eq!(report["intact"], false);
    assert_eq!(report["first_bad_seq"], 5, "the row after the gap: {report}");
    let (ok, output) = cli_verify(&server);
    assert!(!ok && output.contains("row 5"), "{output}");
    server.stop().await;
}

#[tokio::test]
async fn reordered_rows_are_named() {
    let server = server_with_history().await;
    // Swap the contents of rows 3 and 4, keeping their sequence numbers.
    tamper(
        &server,
        "UPDATE audit_log SET seq = -3 WHERE seq = 3;
         UPDATE audit_log SET seq = 3 WHERE seq = 4;
         UPDATE audit_log SET seq = 4 WHERE seq = -3",
    )
    .await;
    let report = api_verify(&server).await;
    assert_eq!(report["intact"], false);
    assert_eq!(report["first_bad_seq"], 3, "{report}");
    let (ok, output) = cli_verify(&server);
    assert!(!ok && output.contains("row 3"), "{output}");
    server.stop().await;
}
