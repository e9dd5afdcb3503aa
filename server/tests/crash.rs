//! Crash sweep: the control plane is killed at every step of a rollout (crash points
//! selected by `ETC_SHADOW_CRASH_AT`, compiled in only with the `crash-points` feature),
//! restarted, and must leave every shadow on exactly the previous or the new revision, as
//! its logged decision says, with no rollout left undecided. The shadows: an agent, two
//! directories and an etcd shadow in a 3-member cluster. `ETC_SHADOW_CRASH_ROLLOUTS`
//! sets the number of randomised rollouts (200 in `make test`; 1,000+ for the long run).

#![cfg(feature = "crash-points")]

mod common;

use common::{
    PASSWORD, change_body,
    fleet::{AGENT_TOKEN, Agent, free_port, snapshot},
};
use domain::{EntryPath, Policy, hash::entry_hash, hash::root_hash};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const POINTS: [&str; 11] = [
    "after_start",
    "after_prepare:1",
    "after_prepare:2",
    "before_decision",
    "after_prepare:3",
    "after_decision",
    "after_commit:1",
    "after_commit:2",
    "after_commit:3",
    "before_applied_audit",
    "none",
];

fn cli(data: &Path, args: &[&str], stdin: Option<&str>) {
    common::run_cli(data, common::database_env(data), args, stdin);
}

struct Process {
    child: Child,
}

/// A server the test started is killed when the test ends, also when it fails (a panic
/// in the middle of a round left it running before).
impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// Starts `etc-shadow serve`; `None` if it exited before listening (a crash point hit
    /// during start-up recovery).
    fn start(data: &Path, addr: SocketAddr, crash: Option<&str>) -> Option<Process> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_etc-shadow"));
        command
            .args(["serve", "--listen", &addr.to_string()])
            .arg("--data-dir")
            .arg(data)
            .envs(common::database_env(data))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match crash {
            Some(point) => command.env("ETC_SHADOW_CRASH_AT", point),
            None => command.env_remove("ETC_SHADOW_CRASH_AT"),
        };
        let mut child = command.spawn().unwrap();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if std::net::TcpStream::connect(addr).is_ok() {
                return Some(Process { child });
            }
            if child.try_wait().unwrap().is_some() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the server did not start");
    }

    /// Waits up to `limit` for the process to die by itself (true), then kills it (-9).
    fn finish(mut self, limit: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < limit {
            if self.child.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

struct Client2 {
    http: Client,
    base: String,
}

impl Client2 {
    async fn login(base: &str, name: &str) -> Client2 {
        let http = Client::builder()
            .cookie_store(true)
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let response = http
            .post(format!("{base}/api/v1/session"))
            .json(&json!({"username": name, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        Client2 {
            http,
            base: base.to_string(),
        }
    }

    async fn post(&self, path: &str, body: Value) -> Result<(StatusCode, Value), reqwest::Error> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header("origin", &self.base)
            .json(&body)
            .send()
            .await?;
        Ok(common::json_of(response).await)
    }

    async fn get(&self, path: &str) -> Value {
        let response = self.http.get(format!("{}{path}", self.base)).send().await.unwrap();
        common::json_of(response).await.1
    }
}

/// The root of what a live directory holds (test entries have no owner, group or secret).
fn disk_root(dir: &Path) -> String {
    files_root(&snapshot(dir))
}

fn files_root(files: &[(String, Vec<u8>, u32)]) -> String {
    let hashed: Vec<(EntryPath, domain::Hash)> = files
        .iter()
        .map(|(path, content, mode)| {
            let path = EntryPath::parse(path).unwrap();
            let hash = entry_hash(
                &path,
                &Policy {
                    mode: *mode,
                    ..Policy::default()
                },
                content,
            );
            (path, hash)
        })
        .collect();
    root_hash(hashed.iter().map(|(p, h)| (p, *h))).to_hex()
}

/// A change of two files that always change together.
fn pair(base: i64, round: usize) -> Value {
    json!({"base_revision": base, "message": format!("round {round}"), "entries": [
        {"path": "app.toml", "content": format!("[server]\nround = {round}\n"), "format": "toml", "mode": "0644"},
        {"path": "nginx/site.conf", "content": format!("# round {round}\nlisten 80;\n"), "format": "text", "mode": "0644"}
    ]})
}

/// Reads every shadow's live generation (resolving `..data` once, as a service reloading
/// its configuration does) over and over while the sweep runs, and keeps every root seen.
struct Reader {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<std::collections::BTreeSet<String>>,
}

impl Reader {
    fn start(dirs: Vec<PathBuf>) -> Reader {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut seen = std::collections::BTreeSet::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for dir in &dirs {
                        let Ok(generation) = std::fs::canonicalize(dir.join("..data")) else {
                            continue;
                        };
                        // A generation removed while being read fails (not found): only
                        // complete reads count.
                        if let Some(root) = generation_root(&generation) {
                            seen.insert(root);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                seen
            }
        });
        Reader { stop, thread }
    }

    fn finish(self) -> std::collections::BTreeSet<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// The root of one generation directory, or `None` if it vanished while being read.
fn generation_root(dir: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).ok()? {
            let entry = entry.ok()?;
            let meta = std::fs::symlink_metadata(entry.path()).ok()?;
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                let relative = entry.path().strip_prefix(dir).ok()?.to_string_lossy().into_owned();
                files.push((relative, std::fs::read(entry.path()).ok()?, meta.permissions().mode() & 0o7777));
            }
        }
    }
    files.sort();
    Some(files_root(&files))
}

async fn settle(client: &Client2) -> Value {
    let started = Instant::now();
    loop {
        let page = client.get("/api/v1/rollouts?limit=1").await;
        let last = page["items"][0].clone();
        let state = last["state"].as_str().unwrap_or("applied");
        if state != "preparing" && state != "committing" {
            return last;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "rollout never settled: {last}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Sweep {
    data: PathBuf,
    addr: SocketAddr,
    agent: Agent,
    live: Vec<PathBuf>,
    /// An etcd shadow (`kv`) in a 3-member cluster, read through its driver.
    etcd: control::etcd::EtcdShadow,
    _cluster: control::etcd_local::Cluster,
    _root: tempfile::TempDir,
}

impl Sweep {
    async fn new() -> Sweep {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        for (name, role) in [("erin", "editor"), ("abel", "approver")] {
            cli(
                &data,
                &["user", "add", name, "--role", role, "--password-stdin"],
                Some(&format!("{PASSWORD}\n")),
            );
        }
        let agent = Agent::start(&root.path().join("edge"));
        let token_file = root.path().join("edge.token");
        std::fs::write(&token_file, AGENT_TOKEN).unwrap();
        cli(
            &data,
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
        let mut live = vec![agent.live.clone()];
        for name in ["dc1", "backup"] {
            let path = root.path().join(name).join("live");
            cli(&data, &["shadow", "add", name, "--directory", path.to_str().unwrap()], None);
            live.push(path);
        }
        let cluster = control::etcd_local::Cluster::start(3, root.path()).await;
        let endpoints = cluster.endpoints.join(",");
        cli(&data, &["shadow", "add", "kv", "--etcd", &endpoints, "--prefix", "/sweep/"], None);
        let etcd = control::etcd::EtcdShadow::connect(
            &control::etcd::Target {
                endpoints: cluster.endpoints.clone(),
                prefix: "/sweep/".into(),
                ..Default::default()
            },
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        Sweep {
            data,
            addr: free_port(),
            agent,
            live,
            etcd,
            _cluster: cluster,
            _root: root,
        }
    }

    /// The root of what the etcd shadow holds now, read back from the cluster.
    async fn etcd_root(&self) -> String {
        self.etcd.shadow_state(false).await.unwrap().live_root
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// One rollout with the control plane killed at `point`; `kill_agent` also kills the
    /// agent after the decision and brings it back only after the control plane restarted.
    async fn round(&mut self, i: usize, point: &str, kill_agent: bool) {
        let previous = {
            let server = Process::start(&self.data, self.addr, None).expect("clean start");
            let editor = Client2::login(&self.base(), "erin").await;
            let current = editor.get("/api/v1/revisions?limit=1").await["items"][0].clone();
            server.finish(Duration::ZERO);
            current
        };

        let number = previous["number"].as_i64().unwrap();
        let crash = (point != "none").then_some(point);
        if let Some(server) = Process::start(&self.data, self.addr, crash) {
            let editor = Client2::login(&self.base(), "erin").await;
            let approver = Client2::login(&self.base(), "abel").await;
            // Two files change together in every revision: a mix would pair them wrongly.
            let body = pair(number, i);
            let (status, change) = editor.post("/api/v1/changes", body).await.unwrap();
            assert_eq!(status, StatusCode::CREATED, "{change}");
            let id = change["id"].as_i64().unwrap();
            editor.post(&format!("/api/v1/changes/{id}/submit"), json!({})).await.unwrap();
            approver.post(&format!("/api/v1/changes/{id}/approvals"), json!({})).await.unwrap();
            // The answer may never come: the process dies at the crash point.
            let answer = approver.post(&format!("/api/v1/changes/{id}/rollouts"), json!({})).await;
            if kill_agent {
                self.agent.kill();
            }
            let crashed = server.finish(Duration::from_secs(if crash.is_some() { 5 } else { 0 }));
            assert_eq!(
                crashed,
                crash.is_some(),
                "round {i}: the crash point {point} is reached in every rollout: {answer:?}"
            );
        }
        let server = Process::start(&self.data, self.addr, None).expect("recovery start");
        if kill_agent {
            tokio::time::sleep(Duration::from_millis(500)).await;
            self.agent.restart();
        }
        let viewer = Client2::login(&self.base(), "erin").await;
        let last = settle(&viewer).await;
        let current = viewer.get("/api/v1/revisions?limit=1").await["items"][0].clone();
        let undecided = viewer.get("/api/v1/rollouts?limit=500").await["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["state"] == "preparing" || r["state"] == "committing")
            .count();
        assert_eq!(undecided, 0, "round {i} ({point}): no rollout stays undecided");
        let expected_root = if current["number"].as_i64().unwrap() == number + 1 {
            assert_eq!(
                last["state"], "applied",
                "round {i} ({point}): a new revision means an applied rollout: {last}"
            );
            assert_eq!(last["revision"], number + 1);
            last["root"].as_str().unwrap().to_string()
        } else {
            assert_eq!(current["number"], number, "round {i} ({point})");
            previous["root"].as_str().unwrap().to_string()
        };
        assert_eq!(current["root"].as_str().unwrap(), expected_root);
        for dir in &self.live {
            assert_eq!(
                disk_root(dir),
                expected_root,
                "round {i} ({point}): {} holds exactly the decided revision",
                dir.display()
            );
        }
        assert_eq!(
            self.etcd_root().await,
            expected_root,
            "round {i} ({point}): the etcd shadow holds exactly the decided revision"
        );
        server.finish(Duration::ZERO);
    }
}

impl Sweep {
    /// One rollout during which the agent kills itself inside its store (a failpoint):
    /// `after_stage` (staged and saved, not answered) or `after_switch` (the live link
    /// switched, the state not saved). It is started again once it died.
    async fn agent_crash_round(&mut self, i: usize, point: &str) {
        let server = Process::start(&self.data, self.addr, None).expect("start");
        let editor = Client2::login(&self.base(), "erin").await;
        let approver = Client2::login(&self.base(), "abel").await;
        let previous = editor.get("/api/v1/revisions?limit=1").await["items"][0].clone();
        let number = previous["number"].as_i64().unwrap();
        self.agent.restart_with(&[("ETC_SHADOW_FAILPOINT_CRASH", point)]);
        let (status, change) = editor.post("/api/v1/changes", pair(number, i)).await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{change}");
        let id = change["id"].as_i64().unwrap();
        editor.post(&format!("/api/v1/changes/{id}/submit"), json!({})).await.unwrap();
        approver.post(&format!("/api/v1/changes/{id}/approvals"), json!({})).await.unwrap();
        approver
            .post(&format!("/api/v1/changes/{id}/rollouts?wait=false"), json!({}))
            .await
            .unwrap();
        let started = Instant::now();
        while !self.agent.exited() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "round {i}: the agent never reached {point}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.agent.restart_with(&[]);
        let last = settle(&editor).await;
        let current = editor.get("/api/v1/revisions?limit=1").await["items"][0].clone();
        let expected_root = if point == "after_switch" {
            // The switch happens only for a commit: the agent finishes it when it starts.
            assert_eq!(last["state"], "applied", "round {i} ({point}): {last}");
            assert_eq!(current["number"], number + 1);
            last["root"].as_str().unwrap().to_string()
        } else {
            // No answer to prepare: aborted everywhere.
            assert_eq!(last["state"], "failed", "round {i} ({point}): {last}");
            assert_eq!(current["number"], number);
            previous["root"].as_str().unwrap().to_string()
        };
        for dir in &self.live {
            assert_eq!(disk_root(dir), expected_root, "round {i} (agent {point}): {}", dir.display());
        }
        assert_eq!(self.etcd_root().await, expected_root, "round {i} (agent {point}): the etcd shadow");
        server.finish(Duration::ZERO);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_sweep_leaves_every_shadow_on_the_decided_revision() {
    let rounds: usize = std::env::var("ETC_SHADOW_CRASH_ROLLOUTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(40);
    let seed: u64 = std::env::var("ETC_SHADOW_CRASH_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0x5eed);
    eprintln!("crash sweep: {rounds} rollouts, seed {seed}");
    let mut sweep = Sweep::new().await;
    let reader = Reader::start(sweep.live.clone());
    let mut state = seed;
    let mut next = || {
        // xorshift64: reproducible from the printed seed.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for (i, point) in POINTS.iter().enumerate() {
        sweep.round(i, point, false).await;
    }
    let agent_points = ["after_stage", "after_switch"];
    for (i, point) in agent_points.iter().enumerate() {
        sweep.agent_crash_round(POINTS.len() + i, point).await;
    }
    for i in POINTS.len() + agent_points.len()..rounds.max(POINTS.len() + agent_points.len()) {
        let point = POINTS[(next() % POINTS.len() as u64) as usize];
        match next() % 20 {
            0 | 1 => sweep.round(i, "after_decision", true).await,
            2 => sweep.agent_crash_round(i, agent_points[(next() % 2) as usize]).await,
            _ => sweep.round(i, point, false).await,
        }
    }
    // Every snapshot a reader took during the sweep and the recoveries is one revision,
    // never a mix of two.
    let seen = reader.finish();
    let server = Process::start(&sweep.data, sweep.addr, None).expect("start");
    let viewer = Client2::login(&sweep.base(), "erin").await;
    let revisions: std::collections::BTreeSet<String> = viewer.get("/api/v1/revisions?limit=500").await["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["root"].as_str().unwrap().to_string())
        .collect();
    server.finish(Duration::ZERO);
    eprintln!("crash sweep: the reader saw {} distinct generations", seen.len());
    assert!(seen.len() > 2, "the reader saw the sweep: {seen:?}");
    for root in &seen {
        assert!(revisions.contains(root), "a reader saw {root}, which is no revision: a mix");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_removed_while_its_commit_waits_does_not_block_the_rollout() {
    let mut sweep = Sweep::new().await;
    let server = Process::start(&sweep.data, sweep.addr, Some("after_decision")).expect("start");
    let editor = Client2::login(&sweep.base(), "erin").await;
    let approver = Client2::login(&sweep.base(), "abel").await;
    let (_, change) = editor
        .post("/api/v1/changes", change_body(0, "app.toml", "[server]\nport = 1\n"))
        .await
        .unwrap();
    let id = change["id"].as_i64().unwrap();
    editor.post(&format!("/api/v1/changes/{id}/submit"), json!({})).await.unwrap();
    approver.post(&format!("/api/v1/changes/{id}/approvals"), json!({})).await.unwrap();
    let _ = approver.post(&format!("/api/v1/changes/{id}/rollouts"), json!({})).await;
    assert!(server.finish(Duration::from_secs(5)), "crashed after the decision");
    sweep.agent.kill();
    let server = Process::start(&sweep.data, sweep.addr, None).expect("recovery start");
    let viewer = Client2::login(&sweep.base(), "erin").await;
    let waiting = viewer.get("/api/v1/rollouts?limit=1").await["items"][0].clone();
    assert_eq!(waiting["state"], "committing", "the agent is down: {waiting}");
    cli(&sweep.data, &["shadow", "remove", "edge"], None);
    let last = settle(&viewer).await;
    assert_eq!(last["state"], "applied", "{last}");
    let edge = last["shadows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "edge")
        .unwrap()
        .clone();
    assert_eq!(edge["phase"], "removed", "{edge}");
    for dir in &sweep.live[1..] {
        assert_eq!(disk_root(dir), last["root"].as_str().unwrap());
    }
    server.finish(Duration::ZERO);
}
