//! The drift monitor's costs, measured against real agent processes on loopback.
//!
//! - Time from a hand edit on an agent's file to an open incident, through the agent's
//!   event stream (no sweep can find it: the interval is an hour) and through the sweep
//!   alone (event streams not followed), at `--drift-agents` shadows.
//! - One full sweep over `--drift-shadows` shadows holding `--drift-entries` entries each:
//!   wall time, CPU time of the control plane and of the agents, bytes received, with every
//!   shadow in sync, then with every shadow drifted.
//!
//! The fleet's files are written once, by a real rollout to one agent; the other agents
//! get a copy of that agent's state and a hard-linked copy of its managed directory (a
//! node's live tree costs directory entries, not data blocks), and a hand edit replaces a
//! file by rename, so it touches one agent only. More shadows than agents share agents round-robin (one agent process per 10
//! shadows by default): an agent answers each shadow's check just as it would its own.

use crate::{Agents, Bench, ms, percentile, start_agents};
use control::{
    drift::Monitor,
    shadows::{Driver, NewShadow},
};
use domain::api::{EntryInput, IncidentNotice};
use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::broadcast;

pub struct DriftArgs {
    pub agent: PathBuf,
    pub agents: usize,
    pub shadows: usize,
    pub entries: usize,
    pub entry_bytes: usize,
    pub samples: usize,
    pub poll_interval: Duration,
    pub sweeps: usize,
}

fn entry(i: usize, bytes: usize) -> EntryInput {
    let line = format!("setting{i} = \"value {i}\"\n");
    let mut content = line.repeat(bytes / line.len() + 1);
    content.truncate(bytes);
    EntryInput {
        path: entry_path(i),
        content: Some(content),
        format: Some("text".into()),
        mode: Some("0644".into()),
        owner: None,
        group: None,
        secret: None,
        delete: false,
    }
}

fn entry_path(i: usize) -> String {
    format!("conf/part{:03}/entry{i:05}.conf", i % 100)
}

/// Replaces a file by rename (the way editors save), so hard-linked copies keep theirs.
fn replace(file: &Path, content: &[u8]) {
    let temp = file.with_extension("bench-edit");
    std::fs::write(&temp, content).unwrap();
    std::fs::rename(&temp, file).unwrap();
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`.
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at field 3.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 =
        fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0.0) + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    ticks / 100.0 // USER_HZ is 100 on Linux
}

fn agents_cpu(agents: &Agents) -> f64 {
    agents.children.iter().map(|c| cpu_seconds(&c.id().to_string())).sum()
}

/// Waits for `change` (`opened`, `resolved`) of an incident on `shadow`.
async fn notice(notices: &mut broadcast::Receiver<IncidentNotice>, shadow: &str, change: &str) -> Duration {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout_at(deadline, notices.recv()).await {
            Ok(Ok(n)) if n.shadow == shadow && n.change == change => return started.elapsed(),
            Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(err)) => panic!("incident notices ended: {err}"),
            Err(_) => panic!("no incident {change} on {shadow} within a minute"),
        }
    }
}

/// Edit→incident times: `samples` hand edits on distinct agents, each undone (and its
/// incident self-healed) before the next.
async fn edit_to_incident(monitor: &Arc<Monitor>, root: &Path, agents: usize, samples: usize) -> Vec<Duration> {
    let mut notices = monitor.subscribe();
    let mut times = Vec::with_capacity(samples);
    for sample in 0..samples {
        let agent = (sample * 7) % agents;
        let shadow = format!("a{agent:04}");
        let file = root.join(format!("agent{agent}/live")).join(entry_path(sample * 13));
        let original = std::fs::read(&file).unwrap();
        let mut edited = original.clone();
        edited.extend_from_slice(format!("# hand edit {sample}\n").as_bytes());
        let started = Instant::now();
        replace(&file, &edited);
        notice(&mut notices, &shadow, "opened").await;
        times.push(started.elapsed());
        replace(&file, &original);
        notice(&mut notices, &shadow, "resolved").await;
    }
    times.sort();
    times
}

struct SweepCost {
    wall: Duration,
    control_cpu: f64,
    agents_cpu: f64,
    bytes: u64,
}

async fn sweep_cost(monitor: &Monitor, agents: &Agents) -> SweepCost {
    let (cpu, agent_cpu, bytes) = (cpu_seconds("self"), agents_cpu(agents), Driver::agent_bytes_received());
    let started = Instant::now();
    monitor.sweep().await;
    SweepCost {
        wall: started.elapsed(),
        control_cpu: cpu_seconds("self") - cpu,
        agents_cpu: agents_cpu(agents) - agent_cpu,
        bytes: Driver::agent_bytes_received() - bytes,
    }
}

async fn wait_all_in_sync(bench: &Bench, monitor: &Monitor) {
    for _ in 0..20 {
        monitor.sweep().await;
        let shadows = control::shadows::list(&bench.db).await.unwrap();
        if shadows.iter().all(|s| s.status == "in_sync") {
            return;
        }
    }
    panic!("the fleet never came in sync");
}

pub async fn run(args: DriftArgs) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    println!(
        "Drift monitor: {} agents, {} shadows, {} entries × {} bytes per shadow",
        args.agents, args.shadows, args.entries, args.entry_bytes
    );
    let started = Instant::now();
    let bench = Bench::open(&root.join("control")).await;
    {
        // One real rollout writes the set on agent0...
        let seed = start_agents(&args.agent, root, 1);
        add_agent(&bench, "seed", seed.addrs[0]).await;
        bench
            .roll_out((0..args.entries).map(|i| entry(i, args.entry_bytes)).collect(), false)
            .await;
        control::shadows::remove(&bench.db, "bench", "seed").await.unwrap();
    }
    // ...and every other agent gets a copy of its state and a hard-linked copy of its
    // managed directory (generation, live link and top-level links; not its sync file).
    for i in 1..args.agents {
        let dest = root.join(format!("agent{i}"));
        std::fs::create_dir_all(&dest).unwrap();
        for (from, to, flags) in [("state", "state", "-a"), ("live", "live", "-al")] {
            let status = Command::new("cp")
                .arg(flags)
                .arg(root.join("agent0").join(from))
                .arg(dest.join(to))
                .status()
                .unwrap();
            assert!(status.success(), "cp {flags} failed");
        }
        // (The sync file, `..etc-shadow-sync`, is each agent's own.)
        let _ = std::fs::remove_file(dest.join("live").join("..etc-shadow-sync"));
    }
    let agents = start_agents(&args.agent, root, args.agents);
    for (i, addr) in agents.addrs.iter().enumerate() {
        add_agent(&bench, &format!("a{i:04}"), *addr).await;
    }
    println!("(fleet ready in {:.0} s)", started.elapsed().as_secs_f64());
    println!();

    // Edit → incident through the event stream: no sweep within the hour.
    let monitor = Arc::new(bench.monitor(Duration::from_secs(3600), true));
    wait_all_in_sync(&bench, &monitor).await;
    let running = tokio::spawn(monitor.clone().run());
    tokio::time::sleep(Duration::from_secs(3)).await; // every listener connects
    let events = edit_to_incident(&monitor, root, args.agents, args.samples).await;
    running.abort();
    monitor.stop();

    // Edit → incident through sweeps alone.
    let monitor = Arc::new(bench.monitor(args.poll_interval, false));
    let running = tokio::spawn(monitor.clone().run());
    let polls = edit_to_incident(&monitor, root, args.agents, args.samples.div_ceil(2)).await;
    running.abort();

    println!("| path | shadows | samples | p50 ms | p99 ms | max ms |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (path, times) in [
        ("event stream", &events),
        (&*format!("sweep every {:?}", args.poll_interval), &polls),
    ] {
        println!(
            "| {path} | {} | {} | {:.1} | {:.1} | {:.1} |",
            args.agents,
            times.len(),
            ms(percentile(times, 50.0)),
            ms(percentile(times, 99.0)),
            ms(*times.last().unwrap())
        );
    }
    println!();

    // One sweep over the whole fleet: extra shadows share the agents round-robin.
    for j in args.agents..args.shadows {
        add_agent(&bench, &format!("b{j:04}"), agents.addrs[j % args.agents]).await;
    }
    let monitor = bench.monitor(Duration::from_secs(3600), false);
    wait_all_in_sync(&bench, &monitor).await;
    let mut rows = Vec::new();
    for _ in 0..args.sweeps {
        rows.push(("in sync", sweep_cost(&monitor, &agents).await));
    }
    // Every shadow drifts: one file edited on every agent.
    for i in 0..args.agents {
        let file = root.join(format!("agent{i}/live")).join(entry_path(i));
        replace(&file, b"hand edit\n");
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // the agents see the edits
    rows.push(("all drifted, incidents opened", sweep_cost(&monitor, &agents).await));
    for _ in 1..args.sweeps {
        rows.push(("all drifted, incidents open", sweep_cost(&monitor, &agents).await));
    }
    let open = control::incidents::open_count(&bench.db).await.unwrap();
    assert_eq!(open as usize, args.shadows, "every shadow has one open incident");
    println!(
        "One sweep over {} shadows × {} entries ({} agents, {} checks at once):",
        args.shadows, args.entries, args.agents, monitor.concurrency
    );
    println!();
    println!("| fleet | wall ms | control-plane CPU ms | agents' CPU ms | bytes received | bytes per shadow |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (state, cost) in rows {
        println!(
            "| {state} | {:.0} | {:.0} | {:.0} | {} | {} |",
            ms(cost.wall),
            cost.control_cpu * 1000.0,
            cost.agents_cpu * 1000.0,
            cost.bytes,
            cost.bytes / args.shadows as u64
        );
    }
    bench.db.close().await;
}

async fn add_agent(bench: &Bench, name: &str, addr: std::net::SocketAddr) {
    let shadow = NewShadow::Agent {
        name: name.into(),
        url: format!("http://{addr}"),
        token: Some(crate::TOKEN.into()),
        tls_pin: None,
    };
    control::shadows::add_as(&bench.db, "bench", shadow).await.unwrap();
}
