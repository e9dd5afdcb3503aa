//! The peer: a 3-member etcd cluster on loopback (Debian's `etcd-server`), started and
//! stopped by the benchmark, and puts over one gRPC connection to its leader, so that
//! every etc-shadow figure is printed beside what etcd does with the same bytes on the
//! same machine in the same run.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A running cluster; its members are killed when it is dropped.
pub struct Cluster {
    members: Vec<Child>,
    pub endpoints: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            let _ = member.kill();
            let _ = member.wait();
        }
    }
}

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The etcd binary: `ETCD_BIN`, or `etcd` on the PATH.
fn binary() -> PathBuf {
    std::env::var_os("ETCD_BIN").map_or_else(|| PathBuf::from("etcd"), PathBuf::from)
}

impl Cluster {
    /// Starts `size` members on loopback in a temporary directory (on the same disk as
    /// the agents' directories) and waits until the cluster has a leader.
    pub async fn start(size: usize, scratch: &Path) -> Cluster {
        let dir = tempfile::tempdir_in(scratch).unwrap();
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let log = std::fs::File::create(dir.path().join(format!("m{i}.log"))).unwrap();
            let child = Command::new(binary())
                .args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(dir.path().join(format!("m{i}")))
                .args(["--listen-client-urls", &format!("http://127.0.0.1:{client}")])
                .args(["--advertise-client-urls", &format!("http://127.0.0.1:{client}")])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-state", "new", "--initial-cluster-token", "etc-shadow-bench"])
                .args(["--log-level", "warn"])
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()
                .unwrap_or_else(|err| panic!("cannot start {} (Debian package etcd-server): {err}", binary().display()));
            members.push(child);
        }
        let cluster = Cluster {
            members,
            endpoints: ports.iter().map(|(client, _)| format!("http://127.0.0.1:{client}")).collect(),
            _dir: dir,
        };
        let started = Instant::now();
        while cluster.leader().await.is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the etcd cluster found no leader in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        cluster
    }

    /// A client connected to the leader only (one connection: no forwarding hop).
    pub async fn leader(&self) -> Option<etcd_client::Client> {
        for endpoint in &self.endpoints {
            let options = etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(1));
            let Ok(mut client) = etcd_client::Client::connect([endpoint.as_str()], Some(options)).await else {
                continue;
            };
            let Ok(status) = client.status().await else { continue };
            if status.leader() != 0 && status.header().is_some_and(|h| h.member_id() == status.leader()) {
                return Some(client);
            }
        }
        None
    }
}

/// Latencies of `count` sequential puts of `bytes` each (distinct keys, like distinct
/// entries) to the leader over one connection, sorted.
pub async fn puts(client: &mut etcd_client::Client, bytes: usize, count: usize) -> Vec<Duration> {
    let value = vec![b'x'; bytes];
    // Warm the connection first.
    for i in 0..10 {
        client.put(format!("/bench/warm/{i}"), value.clone(), None).await.unwrap();
    }
    let mut times = Vec::with_capacity(count);
    for i in 0..count {
        let started = Instant::now();
        client.put(format!("/bench/{bytes}/{i}"), value.clone(), None).await.unwrap();
        times.push(started.elapsed());
    }
    times.sort();
    times
}

/// The disk's fsync latency where the benchmark writes: 4 KiB written and fsynced, `count`
/// times, sorted.
pub fn fsync_latency(dir: &Path, count: usize) -> Vec<Duration> {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 4096];
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        file.write_all(&block).unwrap();
        let started = Instant::now();
        file.sync_all().unwrap();
        times.push(started.elapsed());
    }
    let _ = std::fs::remove_file(path);
    times.sort();
    times
}
