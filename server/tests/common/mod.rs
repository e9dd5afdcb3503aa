//! A real server on 127.0.0.1, port 0, over a temporary SQLite file (or, when the suite
//! runs beside PostgreSQL, a new database there), driven over HTTP.

#![allow(dead_code)]

pub mod fleet;

use domain::Role;
use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{Value, json};
use server::{AppState, Config};
use std::{net::SocketAddr, path::PathBuf};

pub const PASSWORD: &str = "correct horse battery staple";

/// The file in a data directory that names its PostgreSQL database, when the suite runs
/// beside PostgreSQL: a data directory and its database are one control plane's state
/// (a copy of the directory made with [`TestServer::back_up`] names a copy of the database).
const DATABASE_MARK: &str = "test-database.url";

/// The database of the control plane in `data_dir`: `None` for its SQLite file, or, when
/// the suite runs beside PostgreSQL, the one it is marked with, a new one at first.
pub fn database_of(data_dir: &std::path::Path) -> Option<String> {
    std::env::var("ETC_SHADOW_TEST_POSTGRES").ok().filter(|b| !b.is_empty())?;
    let mark = data_dir.join(DATABASE_MARK);
    if let Ok(url) = std::fs::read_to_string(&mark) {
        return Some(url);
    }
    let url = test_database()?;
    std::fs::create_dir_all(data_dir).unwrap();
    std::fs::write(&mark, &url).unwrap();
    Some(url)
}

/// The environment that points a process (`etc-shadow …`) at the database of the control
/// plane in `data_dir` (see [`database_of`]): empty on SQLite.
pub fn database_env(data_dir: &std::path::Path) -> Vec<(&'static str, String)> {
    database_of(data_dir).map(|url| ("ETC_SHADOW_DATABASE", url)).into_iter().collect()
}

/// Runs `etc-shadow ARGS --data-dir DATA` with `env`, `stdin` written to it; it must
/// succeed (its standard error shows beside a failing test's output).
pub fn run_cli(data: &std::path::Path, env: Vec<(&'static str, String)>, args: &[&str], stdin: Option<&str>) {
    use std::{io::Write, process::Stdio};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_etc-shadow"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    assert!(child.wait().unwrap().success(), "etc-shadow {args:?}");
}

/// The database a test's control plane runs on: `None` for the data directory's SQLite
/// file, or, when the suite runs beside PostgreSQL (`scripts/with-postgres` sets
/// `ETC_SHADOW_TEST_POSTGRES`), a new, empty database of its own there.
pub fn test_database() -> Option<String> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let base = std::env::var("ETC_SHADOW_TEST_POSTGRES").ok().filter(|b| !b.is_empty())?;
    let name = format!("test_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    let created = std::process::Command::new("psql")
        .args(["--quiet", "--dbname", &format!("{base}/postgres"), "--command"])
        .arg(format!("CREATE DATABASE {name}"))
        .output()
        .expect("psql (Debian package postgresql-client)");
    assert!(
        created.status.success(),
        "cannot make a database in the tests' PostgreSQL at {base}: {}",
        String::from_utf8_lossy(&created.stderr)
    );
    Some(format!("{base}/{name}"))
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub state: AppState,
    pub dir: tempfile::TempDir,
    /// The PostgreSQL database under it, if the suite runs on PostgreSQL.
    pub database: Option<String>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("temporary directory");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let addr = listener.local_addr().unwrap();
        // Errors the server logs show beside a failing test's output.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::new("error"))
            .try_init();
        let mut config = Config::new(dir.path().to_path_buf(), addr);
        // The tests' webhook receivers listen on loopback.
        config.webhook_internal = true;
        adjust(&mut config);
        if config.database.is_none() {
            config.database = database_of(&config.data_dir);
        }
        let database = config.database.clone();
        let state = server::prepare(config).await.expect("server state");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let serving = state.clone();
        let task = tokio::spawn(async move {
            server::serve(serving, listener, async {
                let _ = rx.await;
            })
            .await
            .expect("serve");
        });
        TestServer {
            addr,
            state,
            dir,
            database,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Stops the server and starts it again on the same data directory and address (the
    /// sessions signed in before stay valid), with `adjust` applied to a fresh config.
    #[allow(dead_code)]
    pub async fn restart_with(&mut self, adjust: impl FnOnce(&mut Config)) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let listener = tokio::net::TcpListener::bind(self.addr).await.expect("bind the same port again");
        let mut config = Config::new(self.dir.path().to_path_buf(), self.addr);
        config.database = self.database.clone();
        config.webhook_internal = true;
        adjust(&mut config);
        let state = server::prepare(config).await.expect("server state");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let serving = state.clone();
        self.task = Some(tokio::spawn(async move {
            server::serve(serving, listener, async {
                let _ = rx.await;
            })
            .await
            .expect("serve");
        }));
        self.state = state;
        self.shutdown = Some(tx);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// A consistent backup of the control plane as it is now, in `to` (made for it): the
    /// database (SQLite's `VACUUM INTO`, or `pg_dump` into a new PostgreSQL database that
    /// `to` is then marked with) and the key file, as an operator restores both.
    pub async fn back_up(&self, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        match &self.database {
            None => {
                sqlx::query("VACUUM INTO $1")
                    .bind(to.join(control::db::DATABASE_FILE).to_str().unwrap())
                    .execute(self.state.db.read_write())
                    .await
                    .unwrap();
            }
            Some(url) => {
                let copy = test_database().unwrap();
                let dump = std::process::Command::new("pg_dump")
                    .args(["--no-owner", "--dbname", url])
                    .output()
                    .expect("pg_dump (Debian package postgresql-client)");
                assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
                let mut restore = std::process::Command::new("psql")
                    .args(["--quiet", "--set", "ON_ERROR_STOP=1", "--dbname", &copy])
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .expect("psql");
                use std::io::Write;
                restore.stdin.take().unwrap().write_all(&dump.stdout).unwrap();
                assert!(restore.wait().unwrap().success(), "psql restored the dump");
                std::fs::write(to.join(DATABASE_MARK), copy).unwrap();
            }
        }
        let key = control::secrets::KEY_FILE;
        std::fs::copy(self.data_dir().join(key), to.join(key)).unwrap();
    }

    /// Every byte the database holds, as someone with a copy of it would read them: the
    /// SQLite file, or a dump of the PostgreSQL database.
    pub fn database_bytes(&self) -> Vec<u8> {
        match &self.database {
            None => std::fs::read(self.data_dir().join(control::db::DATABASE_FILE)).unwrap(),
            Some(url) => {
                // Byte strings as their bytes (printable ones as themselves), not in hex.
                let dump = std::process::Command::new("pg_dump")
                    .env("PGOPTIONS", "-c bytea_output=escape")
                    .args(["--dbname", url])
                    .output()
                    .expect("pg_dump");
                assert!(dump.status.success());
                dump.stdout
            }
        }
    }

    /// A connection of its own to the server's database, as someone who has the file or
    /// the database's password would open one.
    pub async fn connect_database(&self) -> sqlx::AnyConnection {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let url = match &self.database {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir().join(control::db::DATABASE_FILE).display()),
        };
        sqlx::AnyConnection::connect(&url).await.unwrap()
    }

    /// `etc-shadow` on this server's data directory and database.
    pub fn cli(&self) -> std::process::Command {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_etc-shadow"));
        command.arg("--data-dir").arg(self.data_dir());
        if let Some(database) = &self.database {
            command.env("ETC_SHADOW_DATABASE", database);
        }
        command
    }

    /// Creates a user the way the CLI does.
    pub async fn user(&self, name: &str, role: Role) {
        control::users::create(&self.state.db, "test", name, role, PASSWORD.to_string())
            .await
            .expect("create user");
    }

    /// A browser-like client signed in as `name`: cookie jar and same-origin `Origin`.
    pub async fn login(&self, name: &str) -> Session {
        let client = Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            // A request that hangs fails its test (and says which) instead of the run.
            .timeout(std::time::Duration::from_secs(120))
            .build()
            .unwrap();
        let response = client
            .post(self.url("/api/v1/session"))
            .header("origin", self.origin())
            .json(&json!({"username": name, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "login of {name}");
        let cookie = response
            .headers()
            .get("set-cookie")
            .expect("session cookie")
            .to_str()
            .unwrap()
            .to_string();
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
        Session {
            client,
            base: self.url(""),
            origin: Some(self.origin()),
        }
    }

    /// A client without any credentials.
    pub fn anonymous(&self) -> Session {
        let client = Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(120))
            .build()
            .unwrap();
        Session {
            client,
            base: self.url(""),
            origin: Some(self.origin()),
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

pub struct Session {
    pub client: Client,
    pub base: String,
    pub origin: Option<String>,
}

impl Session {
    pub async fn send(&self, method: Method, path: &str, body: Option<Value>) -> Response {
        let mut request = self.client.request(method, format!("{}{}", self.base, path));
        if let Some(origin) = &self.origin {
            request = request.header("origin", origin);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap()
    }

    /// A POST of raw bytes with this content type (an archive, a form).
    pub async fn post_bytes(&self, path: &str, content_type: &str, body: Vec<u8>) -> Response {
        let mut request = self
            .client
            .post(format!("{}{}", self.base, path))
            .header("content-type", content_type)
            .body(body);
        if let Some(origin) = &self.origin {
            request = request.header("origin", origin);
        }
        request.send().await.unwrap()
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        json_of(self.send(Method::GET, path, None).await).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        json_of(self.send(Method::POST, path, Some(body)).await).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        json_of(self.send(Method::PUT, path, Some(body)).await).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        json_of(self.send(Method::DELETE, path, None).await).await
    }

    /// A console server function called as its page posts it (form-encoded), with this
    /// session's cookie and Origin; answers the status and the body.
    pub async fn server_fn(&self, name: &str, form: &str) -> (StatusCode, String) {
        let mut request = self
            .client
            .post(format!("{}{}", self.base, server_fn_path(name)))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_string());
        if let Some(origin) = &self.origin {
            request = request.header("origin", origin);
        }
        let response = request.send().await.unwrap();
        (response.status(), response.text().await.unwrap())
    }
}

/// The path of a console server function by its name (registered paths end in a hash).
pub fn server_fn_path(name: &str) -> String {
    leptos::server_fn::axum::server_fn_paths()
        .map(|(path, _)| path.to_string())
        .find(|path| path.rsplit('/').next().is_some_and(|last| last.starts_with(name)))
        .unwrap_or_else(|| panic!("no server function {name}"))
}

pub async fn json_of(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap();
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, value)
}

/// A valid one-entry change body on `base`.
pub fn change_body(base: i64, path: &str, content: &str) -> Value {
    json!({"base_revision": base, "message": format!("set {path}"), "entries": [
        {"path": path, "content": content, "format": domain::Format::guess(path).as_str(), "mode": "0644", "secret": false}
    ]})
}
