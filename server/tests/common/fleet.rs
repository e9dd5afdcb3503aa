//! Real shadows for tests: agent processes and directory shadows on temporary paths.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

pub const AGENT_TOKEN: &str = "agent-token-for-tests-0123456789";

/// The agent binary, built next to the server binary (`cargo build -p etc-shadow-agent`).
pub fn agent_binary() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_etc-shadow")).with_file_name("etc-shadow-agent");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p etc-shadow-agent` first (make unit does)",
        path.display()
    );
    path
}

pub fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

pub fn wait_listening(addr: SocketAddr) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("nothing listens on {addr}");
}

/// One agent process owning `<root>/live`, killed (-9) when dropped.
pub struct Agent {
    pub addr: SocketAddr,
    pub live: PathBuf,
    pub state: PathBuf,
    token_file: PathBuf,
    child: Option<Child>,
}

impl Agent {
    pub fn start(root: &Path) -> Agent {
        std::fs::create_dir_all(root).unwrap();
        let token_file = root.join("token");
        std::fs::write(&token_file, AGENT_TOKEN).unwrap();
        let mut agent = Agent {
            addr: free_port(),
            live: root.join("live"),
            state: root.join("state"),
            token_file,
            child: None,
        };
        agent.restart();
        agent
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts the process again on the same address and directories.
    pub fn restart(&mut self) {
        let child = Command::new(agent_binary())
            .arg("--dir")
            .arg(&self.live)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--token-file")
            .arg(&self.token_file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the agent");
        self.child = Some(child);
        wait_listening(self.addr);
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every regular file under `dir` (following the live link) with its bytes and mode.
pub fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut files = Vec::new();
    let root = match std::fs::canonicalize(dir) {
        Ok(root) => root,
        Err(_) => return files,
    };
    let mut pending = vec![root.clone()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).unwrap().flatten() {
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                let relative = entry.path().strip_prefix(&root).unwrap().to_string_lossy().into_owned();
                files.push((relative, std::fs::read(entry.path()).unwrap(), meta.permissions().mode() & 0o7777));
            }
        }
    }
    files.sort();
    files
}
