//! The control plane as replicas: rollout latency on PostgreSQL beside SQLite (the same
//! coordinator, the same agents), and failover: the leader replica killed (-9), until its
//! successor leads and until the next rollout through it is applied.
//!
//! Needs a PostgreSQL server: `make bench` runs the benchmark under
//! `scripts/with-postgres`, which starts a throwaway one (`ETC_SHADOW_TEST_POSTGRES`).

use crate::{Bench, entry, ms, percentile, start_agents};
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub struct HaArgs {
    pub agent: PathBuf,
    /// The `etc-shadow` binary the replicas run.
    pub server: PathBuf,
    pub rollouts: usize,
    pub failovers: usize,
    pub ttl: u64,
}

/// A new, empty database on the benchmark's PostgreSQL server.
fn new_database(base: &str, name: &str) -> String {
    let made = Command::new("psql")
        .args(["--quiet", "--dbname", &format!("{base}/postgres"), "--command"])
        .arg(format!("CREATE DATABASE {name}"))
        .output()
        .expect("psql (Debian package postgresql-client)");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    format!("{base}/{name}")
}

pub async fn run(args: HaArgs) {
    let Some(base) = std::env::var("ETC_SHADOW_TEST_POSTGRES").ok().filter(|b| !b.is_empty()) else {
        println!("High availability: skipped (no PostgreSQL; `make bench` runs it under scripts/with-postgres)");
        return;
    };
    latency(&args, &base).await;
    println!();
    failover(&args, &base).await;
}

/// The same rollouts (3 agents, one entry of 10 × 1 KiB changed each time) by the same
/// coordinator, with its store on SQLite and on PostgreSQL.
async fn latency(args: &HaArgs, base: &str) {
    println!(
        "Rollout latency by store: 3 agents, one entry of 10 × 1 KiB changed per rollout, from the approver's call until `applied`, {} rollouts each (PostgreSQL on loopback, its data in a temporary directory):",
        args.rollouts
    );
    println!();
    println!("| store | rollouts | p50 ms | p95 ms | p99 ms |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let mut p50s = Vec::new();
    for (label, database) in [("SQLite", None), ("PostgreSQL", Some(new_database(base, "bench_latency")))] {
        let dir = tempfile::tempdir().unwrap();
        let agents = start_agents(&args.agent, dir.path(), 3);
        let bench = Bench::open_at(&dir.path().join("control"), database.as_deref()).await;
        bench.add_agents(&agents).await;
        bench.roll_out((0..10).map(|i| entry(i, 1024, 0)).collect(), false).await;
        let mut times = Vec::with_capacity(args.rollouts);
        for version in 1..=args.rollouts {
            times.push(bench.roll_out(vec![entry(version % 10, 1024, version)], false).await);
        }
        times.sort();
        let p50 = ms(percentile(&times, 50.0));
        p50s.push(p50);
        println!(
            "| {label} | {} | {p50:.1} | {:.1} | {:.1} |",
            times.len(),
            ms(percentile(&times, 95.0)),
            ms(percentile(&times, 99.0))
        );
        bench.db.close().await;
    }
    println!();
    println!("PostgreSQL p50 / SQLite p50: {:.2}", p50s[1] / p50s[0]);
}

struct Replica {
    child: Child,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spare() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], control::etcd_local::spare_port()))
}

fn cli(server: &Path, database: &str, data: &Path, args: &[&str], stdin: Option<&str>) {
    use std::io::Write;
    let mut child = Command::new(server)
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env("ETC_SHADOW_DATABASE", database)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    assert!(child.wait().unwrap().success(), "etc-shadow {args:?}");
}

fn start(args: &HaArgs, database: &str, etcd: &str, data: &Path, addr: SocketAddr) -> Replica {
    let child = Command::new(&args.server)
        .args(["serve", "--listen", &addr.to_string(), "--election-ttl", &args.ttl.to_string()])
        .arg("--data-dir")
        .arg(data)
        .env("ETC_SHADOW_DATABASE", database)
        .env("ETC_SHADOW_ETCD", etcd)
        .stdout(Stdio::null())
        .stderr(crate::log_file(&data.join("replica.log")))
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {}: {err}", args.server.display()));
    let started = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "the replica on {addr} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Replica { child }
}

async fn leads(http: &reqwest::Client, addr: SocketAddr) -> bool {
    match http
        .get(format!("http://{addr}/healthz"))
        .timeout(Duration::from_secs(1))
        .send()
        .await
    {
        Ok(answer) => answer.text().await.is_ok_and(|text| text.trim() == "ok leader"),
        Err(_) => false,
    }
}

/// Posts as the signed-in client to `addr` (same-origin); answers the status and body.
async fn post(http: &reqwest::Client, addr: SocketAddr, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let origin = format!("http://{addr}");
    let answer = http
        .post(format!("{origin}{path}"))
        .header("origin", &origin)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or_default())
}

/// An approved change of one entry, made through `addr`; answers its id.
async fn approved(editor: &reqwest::Client, approver: &reqwest::Client, addr: SocketAddr, version: usize) -> i64 {
    let current: serde_json::Value = editor
        .get(format!("http://{addr}/api/v1/revisions?limit=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let base = current["items"][0]["number"].as_i64().unwrap();
    let body = serde_json::json!({"base_revision": base, "message": format!("failover {version}"), "entries": [
        {"path": "app.toml", "content": format!("version = {version}\n"), "format": "toml", "mode": "0644"}
    ]});
    let (status, change) = post(editor, addr, "/api/v1/changes", body).await;
    assert_eq!(status, 201, "{change}");
    let id = change["id"].as_i64().unwrap();
    post(editor, addr, &format!("/api/v1/changes/{id}/submit"), serde_json::json!({})).await;
    post(approver, addr, &format!("/api/v1/changes/{id}/approvals"), serde_json::json!({})).await;
    id
}

async fn signed_in(addr: SocketAddr, name: &str) -> reqwest::Client {
    let http = reqwest::Client::builder().cookie_store(true).build().unwrap();
    let answer = http
        .post(format!("http://{addr}/api/v1/session"))
        .json(&serde_json::json!({"username": name, "password": "bench-password-1"}))
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success(), "sign-in of {name}");
    http
}

/// Two replicas over one PostgreSQL database and a 3-member etcd cluster, 3 agents: the
/// leader killed (-9) while idle, then the time until the other leads (`/healthz`) and
/// until a rollout through it is applied (recovery included).
async fn failover(args: &HaArgs, base: &str) {
    let root = tempfile::tempdir().unwrap();
    let database = new_database(base, "bench_failover");
    let etcd = crate::etcd::Cluster::start(3, root.path()).await;
    let endpoints = etcd.endpoints.join(",");
    let agents = start_agents(&args.agent, root.path(), 3);
    let data = [root.path().join("a"), root.path().join("b")];
    for name in ["bench-editor", "bench-approver"] {
        let role = if name == "bench-editor" { "editor" } else { "approver" };
        cli(
            &args.server,
            &database,
            &data[0],
            &["user", "add", name, "--role", role, "--password-stdin"],
            Some("bench-password-1\n"),
        );
    }
    let token = root.path().join("token");
    for (i, addr) in agents.addrs.iter().enumerate() {
        cli(
            &args.server,
            &database,
            &data[0],
            &[
                "shadow",
                "add",
                &format!("agent{i}"),
                "--agent",
                &format!("http://{addr}"),
                "--token-file",
                token.to_str().unwrap(),
            ],
            None,
        );
    }
    std::fs::create_dir_all(&data[1]).unwrap();
    std::fs::copy(data[0].join("secret.key"), data[1].join("secret.key")).unwrap();
    let addrs = [spare(), spare()];
    let mut replicas = [
        Some(start(args, &database, &endpoints, &data[0], addrs[0])),
        Some(start(args, &database, &endpoints, &data[1], addrs[1])),
    ];
    let probe = reqwest::Client::new();
    println!(
        "Failover: two replicas (lease TTL {} s) over one PostgreSQL database and a 3-member etcd cluster, 3 agents; the idle leader killed (-9), {} times:",
        args.ttl, args.failovers
    );
    println!();
    println!("| kill | successor leads s | next rollout applied s (from the kill) | rollout itself ms |");
    println!("| ---: | ---: | ---: | ---: |");
    let mut leads_after = Vec::new();
    let mut applied_after = Vec::new();
    for round in 0..args.failovers {
        // Who leads now.
        let started = Instant::now();
        let leader = loop {
            let mut found = None;
            for (j, replica) in replicas.iter().enumerate() {
                if replica.is_some() && leads(&probe, addrs[j]).await {
                    found = Some(j);
                }
            }
            if let Some(j) = found {
                break j;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "no replica leads");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let other = 1 - leader;
        let editor = signed_in(addrs[other], "bench-editor").await;
        let approver = signed_in(addrs[other], "bench-approver").await;
        let id = approved(&editor, &approver, addrs[other], round + 1).await;
        // The follower has seen the leader for a while: a steady state.
        tokio::time::sleep(Duration::from_secs(2)).await;
        replicas[leader] = None;
        let killed = Instant::now();
        while !leads(&probe, addrs[other]).await {
            assert!(killed.elapsed() < Duration::from_secs(60), "no successor");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let led = killed.elapsed();
        let rollout_started = Instant::now();
        let (status, rollout) = post(
            &approver,
            addrs[other],
            &format!("/api/v1/changes/{id}/rollouts"),
            serde_json::json!({}),
        )
        .await;
        assert!(status == 201 && rollout["state"] == "applied", "{status}: {rollout}");
        let applied = killed.elapsed();
        println!(
            "| {} | {:.2} | {:.2} | {:.1} |",
            round + 1,
            led.as_secs_f64(),
            applied.as_secs_f64(),
            ms(rollout_started.elapsed())
        );
        leads_after.push(led);
        applied_after.push(applied);
        // The killed one comes back, as a follower.
        replicas[leader] = Some(start(args, &database, &endpoints, &data[leader], addrs[leader]));
    }
    leads_after.sort();
    applied_after.sort();
    println!();
    println!(
        "Successor leads: median {:.2} s, worst {:.2} s; next rollout applied: median {:.2} s, worst {:.2} s (the lease TTL is {} s).",
        percentile(&leads_after, 50.0).as_secs_f64(),
        leads_after.last().map_or(0.0, Duration::as_secs_f64),
        percentile(&applied_after, 50.0).as_secs_f64(),
        applied_after.last().map_or(0.0, Duration::as_secs_f64),
        args.ttl
    );
    drop(replicas);
    drop(agents);
    drop(etcd);
}
