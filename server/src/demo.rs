//! The embedded demo: two users, a sample configuration rolled out, ready to explore.

use control::{Caller, Db, Result, changes, rollouts::Coordinator, users};
use domain::{
    Role,
    api::{EntryInput, NewChange},
};

/// The demo's users: an editor and an approver, so the review flow needs two people.
pub const DEMO_EDITOR: &str = "editor";
pub const DEMO_APPROVER: &str = "approver";

const APP_TOML: &str = r#"# Application settings
[server]
host = "0.0.0.0"
port = 8080
timeout = 30

[database]
pool_size = 16
"#;

const FEATURES_JSON: &str = r#"{
  "new_checkout": false,
  "dark_mode": true,
  "rate_limit_per_minute": 600
}
"#;

const SITE_CONF: &str = r#"server {
    listen 80;
    server_name example.internal;

    location / {
        proxy_pass http://127.0.0.1:8080;
        proxy_read_timeout 30s;
    }
}
"#;

const DB_ENV: &str = "DB_HOST=db.internal\nDB_USER=app\nDB_PASSWORD=change-me-in-production\n";

fn entry(path: &str, content: &str, format: &str, mode: &str, secret: bool) -> EntryInput {
    EntryInput {
        path: path.into(),
        content: Some(content.into()),
        format: Some(format.into()),
        mode: Some(mode.into()),
        owner: None,
        group: None,
        secret: Some(secret),
        delete: false,
    }
}

fn random_password() -> String {
    // 18 random bytes as hex: 144 bits, comfortably above the minimum length.
    hex::encode(rand::random::<[u8; 18]>())
}

/// Writes the demo's hooks files (kept up to date at every start), owner-only, and answers
/// the directory of the directory shadows' hooks:
/// - the `edge` agent's node: validate checks every staged json, toml, yaml, ini and env
///   file with `etc-shadow validate`; reload records each run in `demo-shadows/edge-reloads.log`
///   (what a `systemctl reload` would be); health needs a non-empty `app.toml`;
/// - the `dr-site` directory shadow: the same validate, from `hooks.d/dr-site.toml`.
pub fn write_hooks(data_dir: &std::path::Path) -> std::result::Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let hooks_dir = hooks_dir(data_dir)?;
    let root = hooks_dir.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
    std::fs::create_dir_all(&hooks_dir).map_err(|err| err.to_string())?;
    for dir in [&root, &hooks_dir] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(|err| err.to_string())?;
    }
    let me = std::env::current_exe().map_err(|err| err.to_string())?;
    let validate = format!(
        "[validate]\ncommand = [{me:?}, \"validate\", \"{{staged}}\"]\ntimeout = \"30s\"\n",
        me = me.to_string_lossy()
    );
    let log = root.join("edge-reloads.log");
    let edge = format!(
        "# The demo node's hooks (an operator's file: the control plane never sends a command).\n{validate}\n\
         [reload]\ncommand = [\"/bin/sh\", \"-c\", \"echo reload at $(date -u +%Y-%m-%dT%H:%M:%SZ) >> \\\"$1\\\"; echo reloaded\", \"sh\", {log:?}]\ntimeout = \"10s\"\n\n\
         [health]\ncommand = [\"/bin/sh\", \"-c\", \"test -s \\\"$1/app.toml\\\"\", \"sh\", \"{{live}}\"]\ntimeout = \"5s\"\n",
        log = log.to_string_lossy()
    );
    for (file, text) in [(root.join("edge.hooks.toml"), edge), (hooks_dir.join("dr-site.toml"), validate)] {
        std::fs::write(&file, text).map_err(|err| format!("cannot write {}: {err}", file.display()))?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).map_err(|err| err.to_string())?;
    }
    Ok(())
}

/// The directory of the demo's directory-shadow hooks (written by [`write_hooks`]).
pub fn hooks_dir(data_dir: &std::path::Path) -> std::result::Result<std::path::PathBuf, String> {
    Ok(std::path::absolute(data_dir)
        .map_err(|err| err.to_string())?
        .join("demo-shadows")
        .join("hooks.d"))
}

/// Where the demo's agent listens unless `ETC_SHADOW_DEMO_AGENT_LISTEN` says otherwise.
pub const DEMO_AGENT_LISTEN: &str = "127.0.0.1:3100";

/// Starts the demo's shadows under the data directory: three directory shadows (`dc1`,
/// `dr-site`, `backup`) and one real agent process (`edge`). Returns the agent process,
/// which is killed when dropped.
pub async fn start_shadows(db: &Db, data_dir: &std::path::Path) -> std::result::Result<tokio::process::Child, String> {
    let root = std::path::absolute(data_dir).map_err(|err| err.to_string())?.join("demo-shadows");
    std::fs::create_dir_all(&root).map_err(|err| err.to_string())?;
    let token_file = root.join("edge.token");
    if !token_file.exists() {
        std::fs::write(&token_file, random_password()).map_err(|err| err.to_string())?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).map_err(|err| err.to_string())?;
        }
    }
    let listen = std::env::var("ETC_SHADOW_DEMO_AGENT_LISTEN").unwrap_or_else(|_| DEMO_AGENT_LISTEN.to_string());
    let agent_binary = std::env::current_exe()
        .map_err(|err| err.to_string())?
        .with_file_name("etc-shadow-agent");
    let agent = tokio::process::Command::new(&agent_binary)
        .arg("--dir")
        .arg(root.join("edge/live"))
        .arg("--state-dir")
        .arg(root.join("edge/state"))
        .arg("--listen")
        .arg(&listen)
        .arg("--token-file")
        .arg(&token_file)
        .arg("--tls-cert")
        .arg(root.join("edge/tls-cert.pem"))
        .arg("--tls-key")
        .arg(root.join("edge/tls-key.pem"))
        .arg("--tls-generate")
        .arg("--hooks")
        .arg(root.join("edge.hooks.toml"))
        // The control plane's keys are not the agent's business.
        .env_remove(control::secrets::KEY_ENV)
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| {
            format!(
                "cannot start {}: {err} (build it with `cargo build -p etc-shadow-agent`)",
                agent_binary.display()
            )
        })?;
    let existing = control::shadows::list(db).await.map_err(|e| e.to_string())?;
    for name in ["dc1", "dr-site", "backup"] {
        if !existing.iter().any(|s| s.name == name) {
            let path = root.join(name).join("live").to_string_lossy().into_owned();
            control::shadows::add_as(db, "demo", control::shadows::NewShadow::Directory { name: name.into(), path })
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    // The agent makes its certificate before it listens; wait for both, then pin it.
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(&listen).await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let certificate =
        std::fs::read_to_string(root.join("edge/tls-cert.pem")).map_err(|err| format!("the demo agent made no certificate: {err}"))?;
    let tls_pin = control::tls::pin_of_pem(&certificate).map_err(|e| e.to_string())?;
    let url = format!("https://{listen}");
    let registered = existing.iter().find(|s| s.name == "edge");
    if registered.is_some_and(|s| s.url.as_deref() != Some(url.as_str()) || s.tls_pin.as_deref() != Some(tls_pin.as_str())) {
        // An older demo directory: the agent moved or has a new certificate.
        control::shadows::remove(db, "demo", "edge").await.map_err(|e| e.to_string())?;
    }
    if registered.is_none_or(|s| s.url.as_deref() != Some(url.as_str()) || s.tls_pin.as_deref() != Some(tls_pin.as_str())) {
        let token = std::fs::read_to_string(&token_file).map_err(|err| err.to_string())?;
        let shadow = control::shadows::NewShadow::Agent {
            name: "edge".into(),
            url,
            token: Some(token),
            tls_pin: Some(tls_pin),
        };
        control::shadows::add_as(db, "demo", shadow).await.map_err(|e| e.to_string())?;
    }
    Ok(agent)
}

/// What `seed` made, for printing.
pub struct Seeded {
    pub passwords: Vec<(String, Role, String)>,
    pub revision: Option<i64>,
}

/// The demo seeds locally, as the command line does.
async fn find_user(db: &Db, name: &str) -> Result<Option<Caller>> {
    users::local_caller(db, name).await
}

/// Creates the demo users (if missing) and rolls out the sample configuration (if the
/// store is still empty). Safe to run again: it never overwrites what exists.
pub async fn seed(db: &Db, coordinator: &std::sync::Arc<Coordinator>) -> Result<Seeded> {
    let mut passwords = Vec::new();
    for (name, role) in [(DEMO_EDITOR, Role::Editor), (DEMO_APPROVER, Role::Approver)] {
        if find_user(db, name).await?.is_none() {
            let password = random_password();
            users::create(db, "demo", name, role, password.clone()).await?;
            passwords.push((name.to_string(), role, password));
        }
    }
    let current = control::revisions::current(db).await?;
    if current.number != 0 {
        return Ok(Seeded { passwords, revision: None });
    }
    let editor = find_user(db, DEMO_EDITOR)
        .await?
        .ok_or_else(|| control::Error::Internal("demo editor missing".into()))?;
    let approver = find_user(db, DEMO_APPROVER)
        .await?
        .ok_or_else(|| control::Error::Internal("demo approver missing".into()))?;
    let change = changes::create(
        db,
        &editor,
        NewChange {
            base_revision: 0,
            message: "Sample configuration".into(),
            entries: vec![
                // A secret value inside an ordinary entry: the console shows it as a
                // placeholder (see domain::redact). Random, so no demo shares it.
                entry(
                    "app.toml",
                    &format!(
                        "{APP_TOML}\n[session]\ncookie_secret = \"{}\"\n",
                        hex::encode(rand::random::<[u8; 16]>())
                    ),
                    "toml",
                    "0644",
                    false,
                ),
                entry("features.json", FEATURES_JSON, "json", "0644", false),
                entry("nginx/site.conf", SITE_CONF, "text", "0644", false),
                entry("secrets/db.env", DB_ENV, "env", "0600", true),
            ],
        },
    )
    .await?;
    let id = change.summary.id;
    changes::submit(db, &editor, id).await?;
    changes::approve(db, &approver, id).await?;
    let rollout = coordinator.roll_out(&approver, id).await?;
    Ok(Seeded {
        passwords,
        revision: Some(rollout.revision),
    })
}
