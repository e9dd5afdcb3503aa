//! `make bench`: rollout latency of the real coordinator against real agent processes on
//! loopback, and where an agent's time goes.
//!
//! For each fleet size and configuration set it starts that many `etc-shadow-agent`
//! processes, rolls the set out once (the first, full write), then times a series of
//! rollouts that each change one entry: first rolled out as soon as approved (the prepare
//! sends what changed), then staged on the shadows ahead of the click. Then, on one agent, it sends prepare and commit directly and
//! reads the agent's `Server-Timing` header to split the time into file writes, fsync,
//! hashing, and the rest (network, JSON, HTTP).
//!
//! `--suite drift` measures the drift monitor (see `drift.rs`), `--suite incidents` the
//! Incidents page's queries over 100,000 incidents, `--suite redact` the redaction of
//! secret values in shown entries, `--suite ha` rollouts on PostgreSQL beside SQLite and
//! the replicas' failover (see `ha.rs`); `make bench` runs them all.

mod drift;
mod etcd;
mod ha;
mod incidents;
mod redact;

use clap::Parser;
use control::{
    Caller, Db,
    rollouts::Coordinator,
    shadows::{NewShadow, Registry},
};
use domain::{
    Role,
    api::{EntryInput, NewChange},
    protocol::{Fence, PrepareRequest, StagedEntry},
};
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

#[derive(Parser)]
#[command(name = "etc-shadow-bench", about = "Rollout latency benchmark of etc-shadow")]
struct Cli {
    /// Which measurements: console, rollouts, drift, incidents, redact, ha.
    #[arg(long, value_delimiter = ',', default_value = "console,rollouts,drift,incidents,redact,ha")]
    suite: Vec<String>,
    /// The `etc-shadow` binary the replicas of the `ha` suite run.
    #[arg(long, default_value = "target/release/etc-shadow")]
    server: PathBuf,
    /// ha: timed rollouts per store.
    #[arg(long, default_value_t = 50)]
    ha_rollouts: usize,
    /// ha: leader kills.
    #[arg(long, default_value_t = 5)]
    failovers: usize,
    /// ha: the replicas' lease TTL, seconds (the server's default).
    #[arg(long, default_value_t = 5)]
    election_ttl: u64,
    /// The built console (`scripts/build-site.sh --release`), for the console's weight.
    #[arg(long, default_value = "target/site")]
    site_root: PathBuf,
    /// The agent binary (build it with `cargo build --release -p etc-shadow-agent`).
    #[arg(long, default_value = "target/release/etc-shadow-agent")]
    agent: PathBuf,
    /// Rollout cases, each SHADOWS:ENTRIESxBYTES (a fleet of agent shadows serving a set;
    /// each timed rollout changes one entry of it).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "3:1x1024,1:10x1024,10:10x1024,50:10x1024,3:1000x4096,50:1000x4096,3:10000x1024"
    )]
    cases: Vec<String>,
    /// Sets rolled out to 3 etcd shadows (three prefixes in the compared cluster), as
    /// ENTRIESxBYTES; each timed rollout changes one entry. The first rollout writes the
    /// whole set in one transaction: at most about 60 entries within etcd's default limits.
    #[arg(long, value_delimiter = ',', default_value = "1x1024,50x1024")]
    etcd_shadow_sets: Vec<String>,
    /// Configuration sets for the breakdown of one agent's time, as ENTRIESxBYTES.
    #[arg(long, value_delimiter = ',', default_value = "10x1024,1000x4096")]
    breakdown_sets: Vec<String>,
    /// Members of the etcd cluster the rollouts are compared with (0: no comparison).
    #[arg(long, default_value_t = 3)]
    etcd_members: usize,
    /// Puts to etcd per case.
    #[arg(long, default_value_t = 200)]
    etcd_puts: usize,
    /// Timed rollouts per case for the small set and for sets of 1,000 entries or more.
    #[arg(long, default_value_t = 50)]
    rollouts: usize,
    #[arg(long, default_value_t = 10)]
    rollouts_large: usize,
    /// Timed rollouts per case of a change staged ahead (each waits for the stage).
    #[arg(long, default_value_t = 20)]
    rollouts_ahead: usize,
    /// Direct prepare+commit calls for the time breakdown.
    #[arg(long, default_value_t = 10)]
    breakdown_calls: usize,
    /// Drift: agent processes (and shadows for the edit-to-incident times).
    #[arg(long, default_value_t = 100)]
    drift_agents: usize,
    /// Drift: shadows in the sweep (sharing the agents round-robin).
    #[arg(long, default_value_t = 1000)]
    drift_shadows: usize,
    /// Drift: entries per shadow, and bytes per entry.
    #[arg(long, default_value_t = 10_000)]
    drift_entries: usize,
    #[arg(long, default_value_t = 256)]
    drift_entry_bytes: usize,
    /// Drift: hand edits timed through the event stream (half as many through sweeps).
    #[arg(long, default_value_t = 20)]
    drift_samples: usize,
    /// Drift: the sweep interval for the poll path, in seconds.
    #[arg(long, default_value_t = 5)]
    drift_poll_seconds: u64,
    /// Drift: full sweeps measured per fleet state.
    #[arg(long, default_value_t = 3)]
    drift_sweeps: usize,
    /// Incidents in the paging measurement.
    #[arg(long, default_value_t = 100_000)]
    incidents: usize,
}

const TOKEN: &str = "bench-token-0123456789abcdef";

/// Between staging a change ahead and clicking "Roll out": the agents look at their live
/// trees again once the files the stage linked are out of the racy window (1 s), and a
/// person takes longer than this to click.
const SETTLE: Duration = Duration::from_millis(1500);

struct Agents {
    children: Vec<Child>,
    addrs: Vec<SocketAddr>,
}

impl Drop for Agents {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_agents(binary: &Path, root: &Path, count: usize) -> Agents {
    let token = root.join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let mut agents = Agents {
        children: Vec::new(),
        addrs: Vec::new(),
    };
    // Each agent picks its own port and logs it: ports chosen here and handed over could
    // be taken meanwhile by one of the many outgoing connections.
    let mut logs = Vec::new();
    for i in 0..count {
        let log = root.join(format!("agent{i}.log"));
        let child = Command::new(binary)
            .arg("--dir")
            .arg(root.join(format!("agent{i}/live")))
            .arg("--state-dir")
            .arg(root.join(format!("agent{i}/state")))
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--token-file")
            .arg(&token)
            .env("ETC_SHADOW_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log_file(&log))
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", binary.display()));
        agents.children.push(child);
        logs.push(log);
    }
    // Agents hash their live tree before they listen: many large ones take a while.
    let deadline = Instant::now() + Duration::from_secs(60 + count as u64);
    for (i, log) in logs.iter().enumerate() {
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let address = text
                .split("address=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|addr| addr.parse::<SocketAddr>().ok());
            if let Some(address) = address {
                agents.addrs.push(address);
                break;
            }
            let exited = agents.children[i].try_wait().ok().flatten().is_some();
            if exited || Instant::now() > deadline {
                panic!("agent {i} did not start:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    agents
}

fn log_file(path: &Path) -> Stdio {
    std::fs::File::create(path).map(Stdio::from).unwrap_or_else(|_| Stdio::null())
}

/// `1 KiB`, `512 B`.
fn size(bytes: usize) -> String {
    if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

fn parse_set(set: &str) -> (usize, usize) {
    let (entries, bytes) = set.split_once('x').unwrap_or_else(|| panic!("a set is ENTRIESxBYTES, not {set}"));
    (entries.parse().unwrap(), bytes.parse().unwrap())
}

/// Entry `i` of a set: `bytes` of text that differ by entry and by `version`.
fn content(i: usize, bytes: usize, version: usize) -> String {
    let line = format!("key{i} = \"value {i} version {version}\"\n");
    let mut text = line.repeat(bytes / line.len() + 1);
    text.truncate(bytes);
    text
}

fn entry(i: usize, bytes: usize, version: usize) -> EntryInput {
    EntryInput {
        path: format!("conf/part{:02}/entry{i:05}.conf", i % 32),
        content: Some(content(i, bytes, version)),
        format: Some("text".into()),
        mode: Some("0644".into()),
        owner: None,
        group: None,
        secret: None,
        delete: false,
    }
}

struct Bench {
    db: Db,
    registry: Arc<Registry>,
    coordinator: Arc<Coordinator>,
    editor: Caller,
    approver: Caller,
}

impl Bench {
    async fn open(dir: &Path) -> Bench {
        Self::open_at(dir, None).await
    }

    /// On the PostgreSQL `database` instead of `dir`'s SQLite file, when given.
    async fn open_at(dir: &Path, database: Option<&str>) -> Bench {
        let db = Db::open_at(dir, database, true).await.unwrap();
        let identity = db.raise_epoch().await.unwrap();
        let registry = Arc::new(Registry::new(Duration::from_secs(120)));
        let mut coordinator = Coordinator::new(db.clone(), registry.clone(), identity);
        coordinator.prepare_timeout = Duration::from_secs(300);
        coordinator.commit_patience = Duration::from_secs(300);
        let caller = |name: &str, role: Role, id: i64| Caller {
            user_id: id,
            username: name.into(),
            role,
            recent_password: true,
            credential: control::Credential::Local,
        };
        let editor_view = control::users::create(&db, "bench", "bench-editor", Role::Editor, "bench-password-1".into())
            .await
            .unwrap();
        let approver_view = control::users::create(&db, "bench", "bench-approver", Role::Approver, "bench-password-2".into())
            .await
            .unwrap();
        Bench {
            registry: registry.clone(),
            editor: caller("bench-editor", Role::Editor, editor_view.id),
            approver: caller("bench-approver", Role::Approver, approver_view.id),
            db,
            coordinator: Arc::new(coordinator),
        }
    }

    /// Registers each of `agents` as a shadow (`agent0`, `agent1`, …).
    async fn add_agents(&self, agents: &Agents) {
        for (i, addr) in agents.addrs.iter().enumerate() {
            let shadow = NewShadow::Agent {
                name: format!("agent{i}"),
                url: format!("http://{addr}"),
                token: Some(TOKEN.into()),
                tls_pin: None,
            };
            control::shadows::add_as(&self.db, "bench", shadow).await.unwrap();
        }
    }

    /// A drift monitor sweeping every `interval`, following agents' events or not.
    fn monitor(&self, interval: Duration, follow_agent_events: bool) -> control::drift::Monitor {
        let mut monitor = control::drift::Monitor::new(self.db.clone(), self.registry.clone(), self.coordinator.clone(), interval);
        monitor.follow_agent_events = follow_agent_events;
        monitor
    }

    /// One approved change on the current revision, rolled out; answers its latency.
    /// `ahead`: the change is staged on the shadows first, as the server does once it is
    /// approved, and the click comes after the agents settled (see `SETTLE`).
    async fn roll_out(&self, entries: Vec<EntryInput>, ahead: bool) -> Duration {
        let base = control::revisions::current(&self.db).await.unwrap().number;
        let change = control::changes::create(
            &self.db,
            &self.editor,
            NewChange {
                base_revision: base,
                message: "bench".into(),
                entries,
            },
        )
        .await
        .unwrap();
        control::changes::submit(&self.db, &self.editor, change.summary.id).await.unwrap();
        control::changes::approve(&self.db, &self.approver, change.summary.id)
            .await
            .unwrap();
        if ahead {
            assert!(self.coordinator.restage().await.unwrap(), "every shadow stages the change ahead");
            tokio::time::sleep(SETTLE).await;
        }
        let started = Instant::now();
        let rollout = self.coordinator.roll_out(&self.approver, change.summary.id).await.unwrap();
        let took = started.elapsed();
        assert_eq!(rollout.state, "applied", "{rollout:?}");
        took
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `write;dur=1.2, fsync;dur=3.4, ...` → (write, fsync, hash, total) in ms.
fn server_timing(header: &str) -> [f64; 4] {
    let mut out = [0.0; 4];
    for part in header.split(',') {
        let mut pieces = part.trim().split(";dur=");
        let (Some(name), Some(value)) = (pieces.next(), pieces.next()) else {
            continue;
        };
        let slot = match name {
            "write" => 0,
            "fsync" => 1,
            "hash" => 2,
            "total" => 3,
            _ => continue,
        };
        out[slot] = value.parse().unwrap_or(0.0);
    }
    out
}

/// Direct prepare+commit calls to one agent: client time and the agent's own account.
async fn breakdown(addr: SocketAddr, fence: Fence, entries: usize, bytes: usize, calls: usize) -> [f64; 5] {
    let http = reqwest::Client::new();
    let url = format!("http://{addr}");
    let mut sums = [0.0f64; 5];
    for call in 0..calls {
        let state: domain::protocol::ShadowState = http
            .get(format!("{url}/v1/state"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let staged: Vec<StagedEntry> = (0..entries)
            .map(|i| {
                let e = entry(i, bytes, 1_000_000 + call);
                StagedEntry {
                    path: e.path,
                    content: e.content,
                    entry_hash: None,
                    mode: "0644".into(),
                    owner: String::new(),
                    group: String::new(),
                    secret: false,
                    sealed: false,
                }
            })
            .collect();
        let hashed: Vec<(domain::EntryPath, domain::Hash)> = staged
            .iter()
            .map(|e| {
                let path = domain::EntryPath::parse(&e.path).unwrap();
                let policy = domain::Policy {
                    mode: 0o644,
                    ..Default::default()
                };
                let hash = domain::hash::entry_hash(&path, &policy, e.content.as_deref().unwrap_or_default().as_bytes());
                (path, hash)
            })
            .collect();
        let root = domain::hash::root_hash(hashed.iter().map(|(path, hash)| (path, *hash))).to_hex();
        let rollout = 1_000_000 + call as i64;
        let request = PrepareRequest {
            control_plane_id: fence.control_plane_id.clone(),
            epoch: fence.epoch,
            revision: rollout,
            target_root: root,
            base_root: state.live_root,
            reconcile: false,
            entries: staged,
            audit_head: None,
            content_key: None,
            deadline_ms: None,
            prestaged: false,
        };
        for step in 0..2 {
            let started = Instant::now();
            let response = if step == 0 {
                http.put(format!("{url}/v1/rollouts/{rollout}"))
                    .bearer_auth(TOKEN)
                    .json(&request)
                    .send()
                    .await
                    .unwrap()
            } else {
                http.post(format!("{url}/v1/rollouts/{rollout}/commit"))
                    .bearer_auth(TOKEN)
                    .json(&fence)
                    .send()
                    .await
                    .unwrap()
            };
            let timing = response
                .headers()
                .get("server-timing")
                .and_then(|v| v.to_str().ok())
                .map(server_timing)
                .unwrap_or_default();
            assert!(
                response.status().is_success(),
                "direct call refused: {}",
                response.text().await.unwrap_or_default()
            );
            let _ = response.bytes().await;
            let client = ms(started.elapsed());
            sums[0] += client;
            for (sum, value) in sums[1..].iter_mut().zip(timing) {
                *sum += value;
            }
        }
    }
    sums.map(|s| s / calls as f64)
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    assert!(
        cli.agent.exists(),
        "{} is missing: build it with `cargo build --release -p etc-shadow-agent`",
        cli.agent.display()
    );
    println!("etc-shadow benchmarks: agents on loopback, release build");
    println!(
        "machine: {} CPUs, {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| info.lines().find(|l| l.starts_with("model name")).map(|l| l
                .split(':')
                .nth(1)
                .unwrap_or("")
                .trim()
                .to_string()))
            .unwrap_or_default()
    );
    println!();
    for suite in &cli.suite {
        match suite.as_str() {
            "rollouts" => rollouts(&cli).await,
            "drift" => {
                drift::run(drift::DriftArgs {
                    agent: cli.agent.clone(),
                    agents: cli.drift_agents,
                    shadows: cli.drift_shadows.max(cli.drift_agents),
                    entries: cli.drift_entries,
                    entry_bytes: cli.drift_entry_bytes,
                    samples: cli.drift_samples,
                    poll_interval: Duration::from_secs(cli.drift_poll_seconds),
                    sweeps: cli.drift_sweeps.max(1),
                })
                .await
            }
            "incidents" => incidents::run(cli.incidents, 50).await,
            "redact" => redact::run(),
            "console" => console(&cli.site_root),
            "ha" => {
                ha::run(ha::HaArgs {
                    agent: cli.agent.clone(),
                    server: cli.server.clone(),
                    rollouts: cli.ha_rollouts,
                    failovers: cli.failovers,
                    ttl: cli.election_ttl,
                })
                .await
            }
            other => panic!("unknown suite {other:?}: console, rollouts, drift, incidents, redact or ha"),
        }
        println!();
    }
}

/// What a browser downloads to run the console: the assets `scripts/build-site.sh` built,
/// as served (brotli, gzip) and raw.
fn console(site_root: &Path) {
    let pkg = site_root.join("pkg");
    let name = std::fs::read_to_string(pkg.join("current"))
        .unwrap_or_else(|_| panic!("{} has no built console: run scripts/build-site.sh --release", pkg.display()));
    let name = name.trim();
    let bytes = |file: &str| std::fs::metadata(pkg.join(file)).map(|m| m.len()).unwrap_or(0);
    println!("The console's assets ({}), as served:", pkg.display());
    println!();
    println!("| asset | raw bytes | gzip bytes | brotli bytes |");
    println!("| --- | ---: | ---: | ---: |");
    let mut totals = [0u64; 3];
    for (label, file) in [
        ("wasm", format!("{name}_bg.wasm")),
        ("JavaScript glue", format!("{name}.js")),
        ("style sheet", format!("{name}.css")),
    ] {
        let sizes = [bytes(&file), bytes(&format!("{file}.gz")), bytes(&format!("{file}.br"))];
        for (total, size) in totals.iter_mut().zip(sizes) {
            *total += size;
        }
        println!("| {label} | {} | {} | {} |", sizes[0], sizes[1], sizes[2]);
    }
    println!("| all | {} | {} | {} |", totals[0], totals[1], totals[2]);
}

/// Rollouts to 3 etcd shadows (prefixes in the cluster the puts go to), one entry
/// changed per rollout, beside a plain put of the same bytes: the overhead of staging,
/// fencing, the one-transaction switch and the root read back.
async fn etcd_shadows(cli: &Cli, cluster: &etcd::Cluster) {
    println!();
    println!(
        "Rollouts to 3 etcd shadows (three prefixes in the same {}-member cluster), one entry changed per rollout, from the approver's call until every receipt equals the root, beside a put of that entry's bytes to the cluster:",
        cli.etcd_members
    );
    println!();
    println!("| set | rollouts | p50 ms | p99 ms | etcd put p50 ms | etcd put p99 ms | p50 ratio |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (run, set) in cli.etcd_shadow_sets.iter().enumerate() {
        let (entries, bytes) = parse_set(set);
        let dir = tempfile::tempdir().unwrap();
        let bench = Bench::open(&dir.path().join("control")).await;
        for i in 0..3 {
            let shadow = NewShadow::Etcd {
                name: format!("kv{i}"),
                endpoints: cluster.endpoints.clone(),
                prefix: format!("/bench-shadows/{run}/{i}/"),
                user: None,
                password: None,
                ca: None,
                max_txn_ops: None,
                max_request_bytes: None,
            };
            control::shadows::add_as(&bench.db, "bench", shadow).await.unwrap();
        }
        bench.roll_out((0..entries).map(|i| entry(i, bytes, 0)).collect(), false).await;
        let mut times = Vec::with_capacity(cli.rollouts);
        for version in 1..=cli.rollouts {
            times.push(bench.roll_out(vec![entry(version % entries, bytes, version)], false).await);
        }
        times.sort();
        let mut client = cluster.leader().await.expect("the etcd cluster has a leader");
        let puts = etcd::puts(&mut client, bytes, cli.etcd_puts).await;
        let (p50, peer_p50) = (ms(percentile(&times, 50.0)), ms(percentile(&puts, 50.0)));
        println!(
            "| {entries} × {} | {} | {p50:.1} | {:.1} | {peer_p50:.2} | {:.2} | {:.1} |",
            size(bytes),
            times.len(),
            ms(percentile(&times, 99.0)),
            ms(percentile(&puts, 99.0)),
            p50 / peer_p50
        );
        bench.db.close().await;
    }
}

async fn rollouts(cli: &Cli) {
    let scratch = tempfile::tempdir().unwrap();
    let fsync = etcd::fsync_latency(scratch.path(), 200);
    println!(
        "The disk: 4 KiB written and fsynced, 200 times: p50 {:.2} ms, p99 {:.2} ms.",
        ms(percentile(&fsync, 50.0)),
        ms(percentile(&fsync, 99.0))
    );
    println!();
    let cluster = if cli.etcd_members > 0 {
        Some(etcd::Cluster::start(cli.etcd_members, scratch.path()).await)
    } else {
        None
    };
    println!(
        "Rollout latency: one entry of the set changed per rollout, from the approver's call until every shadow's receipt equals the root (`applied`), beside a put of that entry's bytes to a {}-member etcd cluster on the same disk, measured right after:",
        cli.etcd_members
    );
    println!();
    println!(
        "Each case twice: \"sent\" rolls the change out as soon as it is approved (the prepare sends what changed and proves the tree); \"staged ahead\" lets the control plane stage the approved change on the shadows first, as the server does on approval, and clicks {} ms later (the prepare only proves and takes the staged tree).",
        SETTLE.as_millis()
    );
    println!();
    println!(
        "| shadows | set | sent: rollouts | p50 ms | p99 ms | staged ahead: rollouts | p50 ms | p99 ms | etcd put p50 ms | etcd put p99 ms | p50 ratio sent | p50 ratio staged ahead |"
    );
    println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for case in &cli.cases {
        let (shadows, set) = case
            .split_once(':')
            .unwrap_or_else(|| panic!("a case is SHADOWS:ENTRIESxBYTES, not {case}"));
        let shadows: usize = shadows.parse().unwrap();
        let (entries, bytes) = parse_set(set);
        let dir = tempfile::tempdir().unwrap();
        let agents = start_agents(&cli.agent, dir.path(), shadows);
        let bench = Bench::open(&dir.path().join("control")).await;
        bench.add_agents(&agents).await;
        // The first rollout writes the whole set everywhere; it is not timed.
        bench.roll_out((0..entries).map(|i| entry(i, bytes, 0)).collect(), false).await;
        let rounds = if entries >= 1000 { cli.rollouts_large } else { cli.rollouts };
        let mut version = 0;
        let mut sent = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            version += 1;
            sent.push(bench.roll_out(vec![entry(version % entries, bytes, version)], false).await);
        }
        sent.sort();
        let mut ahead = Vec::with_capacity(cli.rollouts_ahead);
        for _ in 0..cli.rollouts_ahead.min(rounds) {
            version += 1;
            ahead.push(bench.roll_out(vec![entry(version % entries, bytes, version)], true).await);
        }
        ahead.sort();
        let (peer_p50, peer_p99) = match &cluster {
            Some(cluster) => {
                let mut client = cluster.leader().await.expect("the etcd cluster has a leader");
                let puts = etcd::puts(&mut client, bytes, cli.etcd_puts).await;
                (ms(percentile(&puts, 50.0)), ms(percentile(&puts, 99.0)))
            }
            None => (f64::NAN, f64::NAN),
        };
        let (sent_p50, ahead_p50) = (ms(percentile(&sent, 50.0)), ms(percentile(&ahead, 50.0)));
        println!(
            "| {shadows} | {entries} × {} | {} | {sent_p50:.1} | {:.1} | {} | {ahead_p50:.1} | {:.1} | {peer_p50:.2} | {peer_p99:.2} | {:.1} | {:.1} |",
            size(bytes),
            sent.len(),
            ms(percentile(&sent, 99.0)),
            ahead.len(),
            ms(percentile(&ahead, 99.0)),
            sent_p50 / peer_p50,
            ahead_p50 / peer_p50
        );
        bench.db.close().await;
    }
    if let Some(cluster) = &cluster
        && !cli.etcd_shadow_sets.is_empty()
    {
        etcd_shadows(cli, cluster).await;
    }
    drop(cluster);
    let mut breakdowns = Vec::new();
    for set in &cli.breakdown_sets {
        let (entries, bytes) = parse_set(set);
        let dir = tempfile::tempdir().unwrap();
        let agents = start_agents(&cli.agent, dir.path(), 1);
        let bench = Bench::open(&dir.path().join("control")).await;
        let identity = bench.coordinator.identity();
        let fence = Fence {
            control_plane_id: identity.id,
            epoch: identity.epoch,
            target_root: None,
        };
        let averages = breakdown(agents.addrs[0], fence, entries, bytes, cli.breakdown_calls).await;
        breakdowns.push((format!("{entries} × {}", size(bytes)), averages));
        bench.db.close().await;
    }
    println!();
    println!(
        "Where one shadow's prepare + commit goes (direct calls to one agent, mean of {}):",
        cli.breakdown_calls
    );
    println!();
    println!("| set | client ms | agent total ms | fsync ms | hashing ms | file writes ms | other file work ms | network, JSON, HTTP ms |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (set, [client, write, fsync, hash, total]) in breakdowns {
        // Other file work: creating files and directories, chmod, renames, the state file,
        // deleting generations that are no longer needed.
        println!(
            "| {set} | {client:.1} | {total:.1} | {fsync:.1} | {hash:.1} | {write:.1} | {:.1} | {:.1} |",
            total - fsync - hash - write,
            client - total
        );
    }
}
