//! The control plane as replicas: `etc-shadow serve --etcd …` processes over one
//! PostgreSQL database and a real 3-member etcd cluster, with a real agent and a
//! directory shadow, all on loopback. Killed (-9) at every step of a rollout, paused past
//! its lease, cut off from etcd's quorum: one leader at a time, every shadow on the
//! revision the logged decision says, and nothing written by a leader whose term ended.
//!
//! Runs in the PostgreSQL pass of the suite (`scripts/with-postgres`, which `make unit`
//! uses); replicas share a database, so there is nothing to run on SQLite alone.

#![cfg(feature = "crash-points")]

mod common;

use common::{
    PASSWORD,
    fleet::{AGENT_TOKEN, Agent, free_port},
};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The replicas' lease: a dead leader's successor leads within this plus about a second.
const TTL: u64 = 3;

/// The points of a rollout a leader is killed at (see the crash sweep).
const POINTS: [&str; 8] = [
    "after_start",
    "after_prepare:1",
    "after_prepare:2",
    "before_decision",
    "after_decision",
    "after_commit:1",
    "after_commit:2",
    "before_applied_audit",
];

/// One `etc-shadow serve --etcd` process; killed when dropped.
struct Replica {
    addr: SocketAddr,
    data: PathBuf,
    child: Option<Child>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Replica {
    fn start(fleet: &Fleet, data: &Path, addr: SocketAddr, crash: Option<&str>) -> Replica {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.join("replica.log"))
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_etc-shadow"));
        command
            .args(["serve", "--listen", &addr.to_string(), "--election-ttl", &TTL.to_string()])
            .args(["--prepare-deadline", "4s", "--check-interval", "1s"])
            .arg("--data-dir")
            .arg(data)
            .env("ETC_SHADOW_DATABASE", &fleet.database)
            .env("ETC_SHADOW_ETCD", fleet.etcd.endpoints.join(","))
            .env(
                "ETC_SHADOW_LOG",
                std::env::var("REPLICA_LOG").unwrap_or_else(|_| "info,sqlx=warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log);
        match crash {
            Some(point) => command.env("ETC_SHADOW_CRASH_AT", point),
            None => command.env_remove("ETC_SHADOW_CRASH_AT"),
        };
        let mut child = command.spawn().unwrap();
        let started = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            if child.try_wait().unwrap().is_some() || started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let log = std::fs::read_to_string(data.join("replica.log")).unwrap_or_default();
                let tail: String = log
                    .lines()
                    .rev()
                    .take(30)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                panic!("the replica on {addr} did not start:\n{tail}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Replica {
            addr,
            data: data.to_path_buf(),
            child: Some(child),
        }
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill").arg(signal).arg(child.id().to_string()).status().unwrap();
            assert!(status.success(), "kill {signal}");
        }
    }

    /// `kill -9`.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and waits for the process to end (it resigns from the election).
    fn stop(&mut self) {
        self.signal("-TERM");
        if let Some(mut child) = self.child.take() {
            let started = Instant::now();
            while child.try_wait().unwrap().is_none() {
                if started.elapsed() > Duration::from_secs(15) {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Waits up to `limit` for the process to end by itself.
    fn exits_within(&mut self, limit: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < limit {
            if self.child.as_mut().is_none_or(|c| c.try_wait().unwrap().is_some()) {
                self.child = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// What `/healthz` says: `Some(true)` when it leads, `None` when it does not answer.
    async fn leads(&self) -> Option<bool> {
        let answer = Client::new()
            .get(format!("{}/healthz", self.base()))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        let text = answer.text().await.ok()?;
        Some(text.trim() == "ok leader")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data.join("replica.log")).unwrap_or_default()
    }
}

/// Waits until exactly one of `replicas` says it leads, at most `limit`; never two at once.
async fn one_leader(replicas: &[&Replica], limit: Duration) -> usize {
    let started = Instant::now();
    loop {
        let mut leading = Vec::new();
        for (i, replica) in replicas.iter().enumerate() {
            if replica.leads().await == Some(true) {
                leading.push(i);
            }
        }
        assert!(leading.len() <= 1, "two replicas lead at once: {leading:?}");
        if let [one] = leading[..] {
            return one;
        }
        assert!(started.elapsed() < limit, "no replica led within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A signed-in client; its cookie goes to every replica (cookies do not name a port).
#[derive(Clone)]
struct User {
    http: Client,
}

impl User {
    async fn login(at: &Replica, name: &str) -> User {
        let http = Client::builder()
            .cookie_store(true)
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let response = http
            .post(format!("{}/api/v1/session", at.base()))
            .json(&json!({"username": name, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "sign-in of {name}");
        User { http }
    }

    async fn post(&self, at: &Replica, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}{path}", at.base()))
            .header("origin", at.base())
            .json(&body)
            .send()
            .await
            .unwrap();
        common::json_of(response).await
    }

    async fn get(&self, at: &Replica, path: &str) -> (StatusCode, Value) {
        let response = self.http.get(format!("{}{path}", at.base())).send().await.unwrap();
        common::json_of(response).await
    }

    /// A change of `app.toml` saying `round`, submitted and approved; answers its id.
    async fn approved_change(&self, approver: &User, at: &Replica, round: &str) -> i64 {
        let (_, current) = self.get(at, "/api/v1/revisions?limit=1").await;
        let base = current["items"][0]["number"].as_i64().unwrap();
        let body = json!({"base_revision": base, "message": round, "entries": [
            {"path": "app.toml", "content": content(round), "format": "toml", "mode": "0644"}
        ]});
        let (status, change) = self.post(at, "/api/v1/changes", body).await;
        assert_eq!(status, StatusCode::CREATED, "{change}");
        let id = change["id"].as_i64().unwrap();
        let (status, answer) = self.post(at, &format!("/api/v1/changes/{id}/submit"), json!({})).await;
        assert!(status.is_success(), "{status}: {answer}");
        let (status, answer) = approver.post(at, &format!("/api/v1/changes/{id}/approvals"), json!({})).await;
        assert!(status.is_success(), "{status}: {answer}");
        id
    }
}

fn content(round: &str) -> String {
    format!("[server]\nround = \"{round}\"\n")
}

/// The database, the etcd cluster, an agent and a second shadow, and the data
/// directories of two replicas (each with the key file).
struct Fleet {
    database: String,
    etcd: control::etcd_local::Cluster,
    agent: Agent,
    second: Second,
    data: [PathBuf; 2],
    addrs: [SocketAddr; 2],
    _root: tempfile::TempDir,
}

fn cli(fleet_database: &str, data: &Path, args: &[&str], stdin: Option<&str>) {
    common::run_cli(data, vec![("ETC_SHADOW_DATABASE", fleet_database.to_string())], args, stdin);
}

impl Fleet {
    /// `None` outside the suite's PostgreSQL pass.
    async fn new(second: Kind) -> Option<Fleet> {
        let Some(database) = common::test_database() else {
            eprintln!("skipped: replicas share a PostgreSQL database; the suite's PostgreSQL pass runs this (make unit)");
            return None;
        };
        let root = tempfile::tempdir().unwrap();
        let data = [root.path().join("a"), root.path().join("b")];
        for (name, role) in [("erin", "editor"), ("abel", "approver")] {
            cli(
                &database,
                &data[0],
                &["user", "add", name, "--role", role, "--password-stdin"],
                Some(&format!("{PASSWORD}\n")),
            );
        }
        let agent = Agent::start(&root.path().join("edge"));
        let token_file = root.path().join("edge.token");
        std::fs::write(&token_file, AGENT_TOKEN).unwrap();
        cli(
            &database,
            &data[0],
            &[
                "shadow",
                "add",
                "edge",
                "--agent",
                &agent.url(),
                "--token-file",
                token_file.to_str().unwrap(),
            ],
            None,
        );
        let etcd = control::etcd_local::Cluster::start(3, root.path()).await;
        let second = match second {
            Kind::Directory => {
                let directory = root.path().join("dc1").join("live");
                cli(
                    &database,
                    &data[0],
                    &["shadow", "add", "dc1", "--directory", directory.to_str().unwrap()],
                    None,
                );
                Second::Directory(directory)
            }
            Kind::Etcd => {
                cli(
                    &database,
                    &data[0],
                    &["shadow", "add", "kv", "--etcd", &etcd.endpoints.join(","), "--prefix", "/kv/"],
                    None,
                );
                Second::Etcd(Box::new(etcd_client::Client::connect(&etcd.endpoints, None).await.unwrap()))
            }
        };
        // Every replica has the control plane's key file.
        std::fs::create_dir_all(&data[1]).unwrap();
        let key = control::secrets::KEY_FILE;
        std::fs::copy(data[0].join(key), data[1].join(key)).unwrap();
        Some(Fleet {
            database,
            etcd,
            agent,
            second,
            data,
            addrs: [free_port(), free_port()],
            _root: root,
        })
    }

    fn replica(&self, index: usize, crash: Option<&str>) -> Replica {
        Replica::start(self, &self.data[index], self.addrs[index], crash)
    }

    /// What each shadow serves of `app.toml` (`None`: nothing yet).
    async fn served(&self) -> [Option<String>; 2] {
        let second = match &self.second {
            Second::Directory(dir) => std::fs::read_to_string(dir.join("app.toml")).ok(),
            Second::Etcd(client) => {
                let answer = client.clone().get("/kv/app.toml", None).await.unwrap();
                answer.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
            }
        };
        [std::fs::read_to_string(self.agent.live.join("app.toml")).ok(), second]
    }
}

/// The second shadow: a directory on this machine (shared by the replicas here), or a
/// prefix in the etcd cluster.
#[derive(Clone, Copy)]
enum Kind {
    Directory,
    Etcd,
}

enum Second {
    Directory(PathBuf),
    Etcd(Box<etcd_client::Client>),
}

/// The latest rollout once it is no longer preparing or committing.
async fn settled(user: &User, at: &Replica) -> Value {
    let started = Instant::now();
    loop {
        let (_, page) = user.get(at, "/api/v1/rollouts?limit=1").await;
        let last = page["items"][0].clone();
        let state = last["state"].as_str().unwrap_or("applied");
        if state != "preparing" && state != "committing" {
            return last;
        }
        assert!(started.elapsed() < Duration::from_secs(40), "the rollout never settled: {last}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two replicas: one leads, both say which; a session made on one works on the other; a
/// change edited on the follower and approved and rolled out through it rolls out once,
/// by the leader; the follower's event stream shows the rollout the leader runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_leads_and_a_change_edited_on_one_and_approved_on_the_other_rolls_out_once() {
    let Some(fleet) = Fleet::new(Kind::Directory).await else { return };
    let a = fleet.replica(0, None);
    let b = fleet.replica(1, None);
    let first = one_leader(&[&a, &b], Duration::from_secs(15)).await;
    let (leader, follower) = if first == 0 { (&a, &b) } else { (&b, &a) };

    // Signed in on the leader, working on the follower.
    let editor = User::login(leader, "erin").await;
    let approver = User::login(follower, "abel").await;
    for at in [leader, follower] {
        let (status, cluster) = editor.get(at, "/api/v1/cluster").await;
        assert_eq!(status, StatusCode::OK, "{cluster}");
        assert_eq!(cluster["leader"], format!("{}", leader.addr), "{cluster}");
        assert_eq!(cluster["self"], format!("{}", at.addr), "{cluster}");
        let replicas = cluster["replicas"].as_array().unwrap();
        assert_eq!(replicas.len(), 2, "{cluster}");
        for replica in replicas {
            assert_eq!(replica["alive"], true, "{cluster}");
            assert_eq!(replica["leader"], replica["id"] == cluster["leader"], "{cluster}");
            assert!(replica["last_seen_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{cluster}");
        }
    }
    let metrics = editor
        .http
        .get(format!("{}/metrics", follower.base()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!("etc_shadow_leader{{replica=\"{}\"}} 0", follower.addr)),
        "{metrics}"
    );

    // The follower's event stream, opened before the rollout.
    let events = editor.http.get(format!("{}/api/v1/events", follower.base())).send().await.unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    let collected = tokio::spawn(async move {
        use futures_util::StreamExt;
        let mut body = events.bytes_stream();
        let mut text = String::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, body.next()).await {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if text.contains("\"applied\"") {
                break;
            }
        }
        text
    });

    let id = editor.approved_change(&approver, follower, "one").await;
    let (status, rollout) = approver.post(follower, &format!("/api/v1/changes/{id}/rollouts"), json!({})).await;
    assert!(status.is_success(), "{status}: {rollout}");
    assert_eq!(rollout["state"], "applied", "{rollout}");
    assert_eq!(fleet.served().await, [Some(content("one")), Some(content("one"))]);
    // Once: one rollout of the change, one revision.
    let (_, rollouts) = editor.get(leader, "/api/v1/rollouts?limit=50").await;
    let of_change: Vec<&Value> = rollouts["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["change_id"] == id)
        .collect();
    assert_eq!(of_change.len(), 1, "{rollouts}");
    let (status, again) = approver.post(leader, &format!("/api/v1/changes/{id}/rollouts"), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "an applied change does not roll out again: {again}");
    let text = collected.await.unwrap();
    assert!(
        text.contains(&format!("\"rollout\":{}", rollout["id"])) && text.contains("\"applied\""),
        "the follower's page follows the leader's rollout: {text}"
    );
    // The audit chain is one chain, written by both.
    let (status, verified) = editor.get(follower, "/api/v1/audit/verify").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(verified["intact"], true, "{verified}");
    // The Overview, rendered by the follower, lists both replicas and names the leader.
    let page = editor.http.get(format!("{}/", follower.base())).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("data-test=\"replicas\""), "{html}");
    assert!(
        html.contains(&format!("data-id=\"{}\" data-leader=\"true\"", leader.addr)),
        "{html}"
    );
    assert!(
        html.contains(&format!("data-id=\"{}\" data-leader=\"false\"", follower.addr)),
        "{html}"
    );
}

/// The leader is killed (-9) at each step of a rollout: the other replica leads within
/// the lease's TTL and a second or so, recovers the rollout as at a start, and every
/// shadow holds the previous or the new revision as the logged decision says; the old
/// leader, started again, follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_at_each_rollout_step_leaves_every_shadow_on_the_decided_revision() {
    let Some(fleet) = Fleet::new(Kind::Directory).await else { return };
    for (round, point) in POINTS.iter().enumerate() {
        // The replica that crashes leads: it starts first.
        let mut doomed = fleet.replica(round % 2, Some(point));
        assert_eq!(one_leader(&[&doomed], Duration::from_secs(20)).await, 0);
        let mut other = fleet.replica((round + 1) % 2, None);
        let editor = User::login(&other, "erin").await;
        let approver = User::login(&other, "abel").await;
        let before = fleet.served().await;
        let label = format!("round {round} ({point})");
        let id = editor.approved_change(&approver, &other, &label).await;
        // The answer may never come: the leader dies at its crash point.
        let answer = approver
            .http
            .post(format!("{}/api/v1/changes/{id}/rollouts", doomed.base()))
            .header("origin", doomed.base())
            .json(&json!({}))
            .timeout(Duration::from_secs(20))
            .send()
            .await;
        assert!(
            doomed.exits_within(Duration::from_secs(10)),
            "{label}: the leader reached its crash point"
        );
        let died = Instant::now();
        drop(answer);
        assert_eq!(one_leader(&[&other], Duration::from_secs(TTL + 5)).await, 0);
        eprintln!("{label}: the other replica led {:?} after the leader died", died.elapsed());
        let last = settled(&editor, &other).await;
        let (_, rollouts) = editor.get(&other, "/api/v1/rollouts?limit=100").await;
        let undecided = rollouts["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["state"] == "preparing" || r["state"] == "committing")
            .count();
        assert_eq!(undecided, 0, "{label}: no rollout stays undecided");
        let expected = if last["change_id"] == id && last["state"] == "applied" {
            [Some(content(&label)), Some(content(&label))]
        } else {
            assert!(
                last["change_id"] != id || ["failed", "aborted"].contains(&last["state"].as_str().unwrap()),
                "{label}: {last}"
            );
            before.clone()
        };
        // The commits of a decided rollout may still be on their way.
        let started = Instant::now();
        while fleet.served().await != expected && started.elapsed() < Duration::from_secs(20) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            fleet.served().await,
            expected,
            "{label}: every shadow holds the decided revision ({last})"
        );
        // The old leader, started again, follows.
        let mut restarted = fleet.replica(round % 2, None);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(restarted.leads().await, Some(false), "{label}: the restarted replica follows");
        assert_eq!(other.leads().await, Some(true), "{label}");
        restarted.stop();
        other.stop();
    }
}

/// The leader is paused (SIGSTOP) in the middle of a rollout, past its lease; the other
/// leads, presumes that rollout aborted and rolls out another change. Woken (SIGCONT),
/// the first writes nothing anywhere: no journal row, no shadow, and it follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_past_its_lease_writes_nothing_when_it_wakes() {
    // An agent and an etcd shadow: a directory shadow on this machine is locked by the
    // process writing it, and a process stopped in that moment keeps it locked for every
    // replica here (see `store::LOCK_WAIT`).
    let Some(fleet) = Fleet::new(Kind::Etcd).await else { return };
    let a = fleet.replica(0, None);
    assert_eq!(one_leader(&[&a], Duration::from_secs(20)).await, 0);
    let b = fleet.replica(1, None);
    let editor = User::login(&b, "erin").await;
    let approver = User::login(&b, "abel").await;
    let id = editor.approved_change(&approver, &b, "stale").await;
    // The agent does not answer: the rollout waits in prepare.
    fleet.agent.pause();
    let (status, started) = approver
        .post(&a, &format!("/api/v1/changes/{id}/rollouts?wait=false"), json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.signal("-STOP");
    let paused = Instant::now();
    fleet.agent.resume();
    assert_eq!(one_leader(&[&b], Duration::from_secs(TTL + 5)).await, 0);
    eprintln!("the other replica led {:?} after the leader was paused", paused.elapsed());
    let stale = settled(&editor, &b).await;
    assert_eq!(stale["change_id"], id);
    assert!(
        ["failed", "aborted"].contains(&stale["state"].as_str().unwrap()),
        "presumed aborted: {stale}"
    );
    let id = editor.approved_change(&approver, &b, "fresh").await;
    let (status, fresh) = approver.post(&b, &format!("/api/v1/changes/{id}/rollouts"), json!({})).await;
    if !status.is_success() {
        let (_, journal) = editor.get(&b, "/api/v1/rollouts?limit=5").await;
        let locks = Command::new("lslocks")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        panic!("{status}: {fresh}\n{journal}\n{locks}\nA:\n{}\nB:\n{}", a.log(), b.log());
    }
    assert_eq!(fresh["state"], "applied", "{fresh}");
    let (_, journal) = editor.get(&b, "/api/v1/rollouts?limit=100").await;
    let (_, revisions) = editor.get(&b, "/api/v1/revisions?limit=100").await;
    let (_, audit) = editor.get(&b, "/api/v1/audit?limit=500").await;

    // The paused leader wakes with its rollout's tasks mid-flight.
    a.signal("-CONT");
    tokio::time::sleep(Duration::from_secs(TTL + 2)).await;
    assert_eq!(a.leads().await, Some(false), "the woken replica follows");
    assert_eq!(fleet.served().await, [Some(content("fresh")), Some(content("fresh"))]);
    let (_, journal_after) = editor.get(&b, "/api/v1/rollouts?limit=100").await;
    let (_, revisions_after) = editor.get(&b, "/api/v1/revisions?limit=100").await;
    assert_eq!(journal_after, journal, "no journal row moved");
    assert_eq!(revisions_after, revisions);
    let (_, audit_after) = editor.get(&b, "/api/v1/audit?limit=500").await;
    let new_rows: Vec<&Value> = audit_after["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| !audit["items"].as_array().unwrap().contains(row))
        .filter(|row| row["actor"] != "erin" && row["actor"] != "abel")
        .collect();
    assert!(
        new_rows.iter().all(|row| !row["action"].as_str().unwrap().starts_with("rollout.")),
        "nothing of a rollout was written after the wake: {new_rows:?}"
    );
    for line in a
        .log()
        .lines()
        .filter(|l| l.contains("refused") || l.contains("no longer leads") || l.contains("not confirmed"))
    {
        eprintln!("woken replica: {line}");
    }
    assert!(a.log().contains("this replica no longer leads"), "{}", a.log());
    assert_eq!(b.leads().await, Some(true));
}

/// With etcd's quorum lost no replica leads: reads work, a rollout is refused with
/// `not_leader`; with the quorum back one replica leads again and the rollout works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_etcd_quorum_no_replica_leads_and_reads_still_work() {
    let Some(fleet) = Fleet::new(Kind::Directory).await else { return };
    let mut a = fleet.replica(0, None);
    let mut b = fleet.replica(1, None);
    one_leader(&[&a, &b], Duration::from_secs(20)).await;
    let editor = User::login(&a, "erin").await;
    let approver = User::login(&a, "abel").await;
    let id = editor.approved_change(&approver, &a, "quorum").await;
    fleet.etcd.pause(0, true);
    fleet.etcd.pause(1, true);
    let lost = Instant::now();
    loop {
        if a.leads().await == Some(false) && b.leads().await == Some(false) {
            break;
        }
        assert!(
            lost.elapsed() < Duration::from_secs(TTL + 5),
            "a replica still leads without quorum"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("no replica led {:?} after the quorum was lost", lost.elapsed());
    for at in [&a, &b] {
        let (status, page) = editor.get(at, "/api/v1/revisions?limit=5").await;
        assert_eq!(status, StatusCode::OK, "reads work: {page}");
        let (status, refused) = approver.post(at, &format!("/api/v1/changes/{id}/rollouts"), json!({})).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{refused}");
        assert_eq!(refused["error"]["code"], "not_leader", "{refused}");
    }
    let (_, rollouts) = editor.get(&a, "/api/v1/rollouts?limit=5").await;
    assert!(rollouts["items"].as_array().unwrap().is_empty(), "no rollout started: {rollouts}");
    fleet.etcd.pause(0, false);
    fleet.etcd.pause(1, false);
    let back = one_leader(&[&a, &b], Duration::from_secs(30)).await;
    let leader = if back == 0 { &a } else { &b };
    let (status, rollout) = approver.post(leader, &format!("/api/v1/changes/{id}/rollouts"), json!({})).await;
    assert!(status.is_success(), "{status}: {rollout}");
    assert_eq!(rollout["state"], "applied", "{rollout}");
    assert_eq!(fleet.served().await, [Some(content("quorum")), Some(content("quorum"))]);

    // The key is not rotated under running replicas (they would go on with the old one),
    // and nothing changes; with every replica stopped it is.
    let third = fleet.data[0].parent().unwrap().join("c");
    std::fs::create_dir_all(&third).unwrap();
    let key = third.join(control::secrets::KEY_FILE);
    std::fs::copy(fleet.data[0].join(control::secrets::KEY_FILE), &key).unwrap();
    let before = std::fs::read(&key).unwrap();
    let rotate = || {
        Command::new(env!("CARGO_BIN_EXE_etc-shadow"))
            .args(["secrets", "rotate", "--data-dir"])
            .arg(&third)
            .env("ETC_SHADOW_DATABASE", &fleet.database)
            .output()
            .unwrap()
    };
    let refused = rotate();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("serving this database"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(std::fs::read(&key).unwrap(), before, "the key file is untouched");
    a.stop();
    b.stop();
    let rotated = rotate();
    assert!(rotated.status.success(), "{}", String::from_utf8_lossy(&rotated.stderr));
    assert_ne!(std::fs::read(&key).unwrap(), before, "a new key");
}
