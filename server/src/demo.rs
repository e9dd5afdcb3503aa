//! The embedded demo: two users, a sample configuration rolled out, ready to explore.

use control::{Caller, Db, Result, changes, rollouts, users};
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

/// What `seed` made, for printing.
pub struct Seeded {
    pub passwords: Vec<(String, Role, String)>,
    pub revision: Option<i64>,
}

async fn find_user(db: &Db, name: &str) -> Result<Option<Caller>> {
    Ok(users::list(db).await?.into_iter().find(|u| u.username == name).map(|u| Caller {
        user_id: u.id,
        username: u.username,
        role: u.role,
    }))
}

/// Creates the demo users (if missing) and rolls out the sample configuration (if the
/// store is still empty). Safe to run again: it never overwrites what exists.
pub async fn seed(db: &Db) -> Result<Seeded> {
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
                entry("app.toml", APP_TOML, "toml", "0644", false),
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
    let rollout = rollouts::start(db, &approver, id).await?;
    Ok(Seeded {
        passwords,
        revision: Some(rollout.revision),
    })
}
