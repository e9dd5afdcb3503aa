//! A local etcd cluster on loopback ports (Debian's `etcd-server`), for the tests and the
//! benchmark: started in a temporary directory, its members killed when it is dropped
//! (also when a test fails).

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A running cluster; its members are killed when it is dropped.
pub struct Cluster {
    members: std::sync::Mutex<Vec<Option<Child>>>,
    pub endpoints: Vec<String>,
    /// The certificate clients trust, when members serve clients over TLS.
    ca_pem: Option<Vec<u8>>,
    /// `root`'s password once [`Cluster::enable_auth`] has run.
    root_password: Option<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let members = self.members.get_mut().unwrap_or_else(|p| p.into_inner());
        for member in members.iter_mut().flatten() {
            let _ = member.kill();
            let _ = member.wait();
        }
    }
}

/// A loopback port nobody listens on now, below the kernel's ephemeral range.
///
/// A port from `bind(0)` is one the kernel hands out again: a process that is killed and
/// started again on its port (an agent, a server, an etcd member) could find it taken by
/// another test's `bind(0)` in between. Below `ip_local_port_range` only explicit choices
/// land, and this process never hands out the same port twice.
pub fn spare_port() -> u16 {
    use std::sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    };
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    static STATE: AtomicU64 = AtomicU64::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (first, last) = (10_000u16, low.max(12_000) - 1);
    let mut state = STATE.load(Ordering::Relaxed);
    if state == 0 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        state = (nanos ^ (u64::from(std::process::id()) << 32)) | 1;
    }
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..10_000 {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let port = first + (state % u64::from(last - first + 1)) as u16;
        if given.contains(&port) || TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        STATE.store(state, Ordering::Relaxed);
        given.push(port);
        return port;
    }
    panic!("no spare loopback port in {first}..={last}");
}

/// The etcd binary: `ETCD_BIN`, or `etcd` on the PATH.
fn binary() -> PathBuf {
    std::env::var_os("ETCD_BIN").map_or_else(|| PathBuf::from("etcd"), PathBuf::from)
}

impl Cluster {
    /// Starts `size` members on loopback in a temporary directory (on the same disk as
    /// the agents' directories) and waits until the cluster has a leader.
    pub async fn start(size: usize, scratch: &Path) -> Cluster {
        Self::start_with(size, scratch, None).await
    }

    /// As [`Cluster::start`], the members serving clients over TLS with the certificate
    /// `cert` (PEM, valid for 127.0.0.1, also the one clients trust) and its key `key`.
    pub async fn start_tls(size: usize, scratch: &Path, cert: &Path, key: &Path) -> Cluster {
        Self::start_with(size, scratch, Some((cert, key))).await
    }

    async fn start_with(size: usize, scratch: &Path, tls: Option<(&Path, &Path)>) -> Cluster {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let dir = tempfile::tempdir_in(scratch).unwrap();
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (spare_port(), spare_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let log = std::fs::File::create(dir.path().join(format!("m{i}.log"))).unwrap();
            let mut command = Command::new(binary());
            if let Some((cert, key)) = tls {
                command.arg("--cert-file").arg(cert).arg("--key-file").arg(key);
            }
            let child = command
                .args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(dir.path().join(format!("m{i}")))
                .args(["--listen-client-urls", &format!("{scheme}://127.0.0.1:{client}")])
                .args(["--advertise-client-urls", &format!("{scheme}://127.0.0.1:{client}")])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-state", "new", "--initial-cluster-token", "etc-shadow-local"])
                .args(["--log-level", "warn"])
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()
                .unwrap_or_else(|err| panic!("cannot start {} (Debian package etcd-server): {err}", binary().display()));
            members.push(Some(child));
        }
        let cluster = Cluster {
            members: std::sync::Mutex::new(members),
            endpoints: ports.iter().map(|(client, _)| format!("{scheme}://127.0.0.1:{client}")).collect(),
            ca_pem: tls.map(|(cert, _)| std::fs::read(cert).unwrap()),
            root_password: None,
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

    /// Turns authentication on: the user `root` (role root) with `password`, and `user`
    /// with `user_password`, allowed to read and write under `prefix` only.
    pub async fn enable_auth(&mut self, password: &str, user: &str, user_password: &str, prefix: &str) {
        let mut client = self.leader().await.expect("a leader");
        client.user_add("root", password, None).await.unwrap();
        client.user_grant_role("root", "root").await.unwrap();
        let role = format!("{user}-role");
        client.role_add(role.as_str()).await.unwrap();
        let permission = etcd_client::Permission::read_write(prefix).with_prefix();
        client.role_grant_permission(role.as_str(), permission).await.unwrap();
        client.user_add(user, user_password, None).await.unwrap();
        client.user_grant_role(user, role.as_str()).await.unwrap();
        client.auth_enable().await.unwrap();
        self.root_password = Some(password.to_string());
    }

    fn options(&self) -> etcd_client::ConnectOptions {
        let mut options = etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(1));
        if let Some(ca) = &self.ca_pem {
            options = options.with_tls(etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(ca)));
        }
        if let Some(password) = &self.root_password {
            options = options.with_user("root", password.clone());
        }
        options
    }

    /// Kills member `index` (SIGKILL), as a machine that dies would stop it.
    pub fn kill(&self, index: usize) {
        let taken = self.members.lock().unwrap_or_else(|p| p.into_inner())[index].take();
        if let Some(mut member) = taken {
            let _ = member.kill();
            let _ = member.wait();
        }
    }

    /// Stops member `index` (SIGSTOP) or lets it go on (SIGCONT): a machine gone dark,
    /// whose connections stay open and answer nothing.
    pub fn pause(&self, index: usize, paused: bool) {
        let members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(member) = &members[index] {
            let _ = Command::new("kill")
                .arg(if paused { "-STOP" } else { "-CONT" })
                .arg(member.id().to_string())
                .status();
        }
    }

    /// The index of the member that leads now, if one does.
    pub async fn leader_index(&self) -> Option<usize> {
        for (index, endpoint) in self.endpoints.iter().enumerate() {
            if self.members.lock().unwrap_or_else(|p| p.into_inner())[index].is_none() {
                continue;
            }
            let Ok(mut client) = etcd_client::Client::connect([endpoint.as_str()], Some(self.options())).await else {
                continue;
            };
            let Ok(status) = client.status().await else { continue };
            if status.leader() != 0 && status.header().is_some_and(|h| h.member_id() == status.leader()) {
                return Some(index);
            }
        }
        None
    }

    /// A client connected to the leader only (one connection: no forwarding hop).
    pub async fn leader(&self) -> Option<etcd_client::Client> {
        let index = self.leader_index().await?;
        etcd_client::Client::connect([self.endpoints[index].as_str()], Some(self.options()))
            .await
            .ok()
    }
}
