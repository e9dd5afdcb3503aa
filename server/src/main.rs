//! `etc-shadow`: the control plane's command line.

use clap::{Args, Parser, Subcommand};
use domain::Role;
use server::{Config, prepare, serve, shutdown_signal};
use std::{io::BufRead, net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

#[derive(Parser)]
#[command(
    name = "etc-shadow",
    version,
    about = "Configuration control plane: one primary, provably identical shadows"
)]
struct Cli {
    /// Directory of the database and keys.
    #[arg(long, global = true, env = "ETC_SHADOW_DATA_DIR", default_value = "etc-shadow-data")]
    data_dir: PathBuf,
    /// Create a new database even though the data directory already holds other state
    /// (a key file, shadow state) without one. Without it that is refused, so a lost
    /// database is never silently replaced by a new, empty control plane.
    #[arg(long, global = true, env = "ETC_SHADOW_INITIALIZE")]
    initialize: bool,
    /// A PostgreSQL database (postgres://user@host:port/name) instead of the data
    /// directory's SQLite file: the store the replicas of one control plane share. The
    /// data directory still holds the key file, which every replica needs a copy of.
    /// A password in the URL is never shown by --help; prefer PGPASSWORD or ~/.pgpass.
    #[arg(long, global = true, env = "ETC_SHADOW_DATABASE", hide_env_values = true)]
    database: Option<String>,
    /// Comma-separated etcd endpoints (http://10.0.0.1:2379,…): `serve` runs as one of
    /// several replicas over the same --database, and the replicas elect their leader
    /// through this etcd cluster. Only the leader rolls out, checks and delivers webhooks;
    /// the others serve the console and the API and hand leader-only requests to it.
    #[arg(long, global = true, env = "ETC_SHADOW_ETCD", value_delimiter = ',')]
    etcd: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the console, the REST API and the background workers.
    Serve(ServeArgs),
    /// Create demo users and a sample configuration, then serve.
    Demo(ServeArgs),
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Inspect the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Manage shadows.
    #[command(subcommand)]
    Shadow(ShadowCommand),
    /// Manage the key that encrypts secrets at rest.
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Make a draft change whose content is exactly DIR's files, with their modes, owners
    /// and groups (formats guessed from extensions and validated; secrets sealed). A
    /// symlink, special file or file that is not UTF-8 text refuses the import.
    Import {
        dir: PathBuf,
        #[arg(long, default_value = "Import")]
        message: String,
        /// The etc-shadow user named as the change's author (editor role or above); by
        /// default the user named like the one running this command.
        #[arg(long, env = "ETC_SHADOW_AUTHOR")]
        author: Option<String>,
    },
    /// Check every file under each PATH (or each file PATH) by the format its extension
    /// names (json, yaml, toml, ini, env): a validate hook that needs nothing installed.
    /// Exits 1 naming each file that does not parse.
    Validate {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Make a new encryption key and re-encrypt every secret with it (refused while a
    /// server runs on the data directory). Safe to run again if interrupted: the old key
    /// stays until all is done.
    Rotate,
    /// Print a new random set of keys, as ETC_SHADOW_SECRET_KEY takes them (for keys
    /// handed to the server by the environment rather than a key file).
    Generate,
}

#[derive(Subcommand)]
enum ShadowCommand {
    /// Register a shadow: an agent (URL and token file), a local directory, or a key
    /// prefix in an etcd cluster.
    Add(Box<AddShadow>),
    /// List shadows with their status.
    List,
    /// Remove a shadow (its files stay where they are).
    Remove { name: String },
}

#[derive(Args)]
struct AddShadow {
    name: String,
    /// Base URL of an etc-shadow-agent, such as http://10.0.0.5:7300.
    #[arg(long, conflicts_with_all = ["directory", "etcd"])]
    agent: Option<String>,
    /// File with the agent's bearer token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// For an https:// agent: the SHA-256 fingerprint of its certificate (the agent
    /// logs it at start; `openssl x509 -noout -fingerprint -sha256` prints it too).
    #[arg(long, requires = "agent")]
    tls_pin: Option<String>,
    /// Absolute path of a directory shadow (a mounted backup volume, a second disk).
    #[arg(long, required_unless_present_any = ["agent", "etcd"], conflicts_with = "etcd")]
    directory: Option<PathBuf>,
    /// An etcd cluster's client URLs, comma-separated: http://10.0.0.5:2379,…
    #[arg(long, requires = "prefix", value_delimiter = ',')]
    etcd: Option<Vec<String>>,
    /// The etcd shadow's key prefix, ending with `/`: entries are the keys PREFIX<path>.
    #[arg(long, requires = "etcd")]
    prefix: Option<String>,
    /// The etcd user (with --etcd-password-file).
    #[arg(long, requires_all = ["etcd", "etcd_password_file"])]
    etcd_user: Option<String>,
    /// File with the etcd user's password.
    #[arg(long, requires = "etcd_user")]
    etcd_password_file: Option<PathBuf>,
    /// The CA certificate (PEM file) of https:// etcd endpoints.
    #[arg(long, requires = "etcd")]
    etcd_ca: Option<PathBuf>,
    /// The members' --max-txn-ops, when not etcd's default (128).
    #[arg(long, requires = "etcd")]
    etcd_max_txn_ops: Option<u32>,
    /// The members' --max-request-bytes, when not etcd's default (1.5 MiB).
    #[arg(long, requires = "etcd")]
    etcd_max_request_bytes: Option<u32>,
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "ETC_SHADOW_LISTEN", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Drift check interval, such as `5s`, `500ms` or `1m`.
    #[arg(long, env = "ETC_SHADOW_CHECK_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    check_interval: Duration,
    /// A rollout not decided this long after it started (a shadow slow or silent at
    /// prepare) is aborted on every shadow.
    #[arg(long, env = "ETC_SHADOW_PREPARE_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    prepare_deadline: Duration,
    /// Failed checks in a row before a shadow's `unreachable` incident opens.
    #[arg(long, env = "ETC_SHADOW_UNREACHABLE_AFTER", default_value_t = 3)]
    unreachable_after: i64,
    /// Shadows checked at once in a sweep. A sweep lasts about shadows ÷ this × one
    /// check's time (about 0.15 s for 10,000 entries); keep it under the interval.
    #[arg(long, env = "ETC_SHADOW_CHECK_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    check_concurrency: u16,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "ETC_SHADOW_MAX_BODY_BYTES", default_value_t = server::DEFAULT_MAX_BODY)]
    max_body_bytes: usize,
    /// Directory of the compiled console assets (wasm, js, css).
    #[arg(long, env = "LEPTOS_SITE_ROOT", default_value = "target/site")]
    site_root: PathBuf,
    /// The console's public origin, when it differs from the Host requests arrive with.
    #[arg(long, env = "ETC_SHADOW_PUBLIC_ORIGIN")]
    public_origin: Option<String>,
    /// Mark the session cookie Secure and send HSTS (when a TLS proxy fronts the console;
    /// implied by --tls-cert).
    #[arg(long, env = "ETC_SHADOW_SECURE_COOKIES")]
    secure_cookies: bool,
    /// Serve the console over HTTPS with this PEM certificate (chain); needs --tls-key.
    #[arg(long, env = "ETC_SHADOW_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "ETC_SHADOW_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// A session ends this long after sign-in, however busy.
    #[arg(long, env = "ETC_SHADOW_SESSION_LIFETIME_MINUTES", default_value_t = 720, value_parser = clap::value_parser!(i64).range(1..=43_200))]
    session_lifetime_minutes: i64,
    /// A session ends after this long without a request.
    #[arg(long, env = "ETC_SHADOW_SESSION_IDLE_MINUTES", default_value_t = 30, value_parser = clap::value_parser!(i64).range(1..=43_200))]
    session_idle_minutes: i64,
    /// Sensitive actions (approve, roll out, reconcile, reveal, API tokens, user and role
    /// changes) need a password entry this recent: the sign-in, or a confirmation.
    #[arg(long, env = "ETC_SHADOW_REAUTH_WINDOW", default_value = "5m", value_parser = parse_duration)]
    reauth_window: Duration,
    /// Comma-separated patterns of key names whose values are secret inside json, yaml,
    /// toml, ini and env entries (case-insensitive substrings; empty: none).
    #[arg(long, env = "ETC_SHADOW_SECRET_KEYS", default_value_t = domain::redact::SecretKeys::default(), value_parser = domain::redact::SecretKeys::parse)]
    secret_keys: domain::redact::SecretKeys,
    /// Let webhooks reach loopback, private, link-local and other internal addresses
    /// (refused by default, so a webhook cannot be aimed at services inside the network).
    #[arg(long, env = "ETC_SHADOW_WEBHOOK_ALLOW_INTERNAL")]
    webhook_allow_internal: bool,
    /// Directory of directory shadows' hooks files: shadow NAME's is `<dir>/NAME.toml`
    /// (validate, reload, health; as an agent's --hooks file, and held to the same rules).
    #[arg(long, env = "ETC_SHADOW_DIRECTORY_HOOKS")]
    directory_hooks: Option<PathBuf>,
    /// Drill every shadow whose latest drill is older than this, such as `1h` (no
    /// scheduled drills when unset).
    #[arg(long, env = "ETC_SHADOW_DRILL_INTERVAL", value_parser = parse_duration)]
    drill_interval: Option<Duration>,
    /// Do not stage approved changes on the shadows before "Roll out" is clicked (a node
    /// whose validator must not see a tree before its rollout, say); stages a control
    /// plane made before are dropped at start. Rollouts then send what changed.
    #[arg(long, env = "ETC_SHADOW_NO_STAGE_AHEAD")]
    no_stage_ahead: bool,
    /// Where the other replicas reach this one's console and API (with --etcd; default:
    /// http(s)://<listen>).
    #[arg(long, env = "ETC_SHADOW_ADVERTISE")]
    advertise: Option<String>,
    /// This replica's name (with --etcd; default: the host and port of --advertise).
    #[arg(long, env = "ETC_SHADOW_REPLICA_ID")]
    replica_id: Option<String>,
    /// The leader's lease, in seconds (with --etcd): a dead leader's successor leads
    /// within about this plus one second; a leader that cannot renew it steps down a third
    /// of it before it ends.
    #[arg(long, env = "ETC_SHADOW_ELECTION_TTL", default_value_t = control::cluster::DEFAULT_TTL, value_parser = clap::value_parser!(i64).range(2..=60))]
    election_ttl: i64,
    /// The CA certificate (PEM) of the --etcd cluster's TLS certificates (https:// endpoints).
    #[arg(long, env = "ETC_SHADOW_ELECTION_CA")]
    election_ca: Option<PathBuf>,
    /// The etcd user the replica signs in to the --etcd cluster as (read-write under
    /// /etc-shadow/control/ is all it needs); needs --election-password-file.
    #[arg(long, env = "ETC_SHADOW_ELECTION_USER", requires = "election_password_file")]
    election_user: Option<String>,
    /// A file holding that user's password (its first line).
    #[arg(long, env = "ETC_SHADOW_ELECTION_PASSWORD_FILE", requires = "election_user")]
    election_password_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user; the password is read from standard input.
    Add {
        name: String,
        #[arg(long)]
        role: Role,
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Set a user's password (read from standard input); ends their sessions.
    Passwd {
        name: String,
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Change a user's role; ends their sessions.
    Role { name: String, role: Role },
    /// Disable an account: its sessions end and its API tokens stop working.
    Disable { name: String },
    /// Enable a disabled account again.
    Enable { name: String },
    /// List users.
    List,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain; exit 0 when intact, 1 naming the first bad row otherwise.
    Verify,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected a number and a unit such as 5s"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(value),
        "s" | "" => Duration::from_secs(value),
        "m" => Duration::from_secs(value * 60),
        "h" => Duration::from_secs(value * 3600),
        _ => return Err(format!("invalid duration unit {unit:?}: use ms, s, m or h")),
    };
    if duration.is_zero() {
        return Err("the interval must be positive".into());
    }
    Ok(duration)
}

fn read_password() -> Result<String, String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|err| format!("cannot read the password from standard input: {err}"))?;
    let password = line.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        return Err("no password on standard input".into());
    }
    Ok(password)
}

fn config(data_dir: PathBuf, args: &ServeArgs) -> Config {
    let mut config = Config::new(data_dir, args.listen);
    config.max_body = args.max_body_bytes;
    config.site_root = args.site_root.clone();
    config.public_origin = args.public_origin.clone();
    config.tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(server::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => None,
    };
    config.secure_cookies = args.secure_cookies;
    config.check_interval = args.check_interval;
    config.unreachable_after = args.unreachable_after;
    config.prepare_deadline = args.prepare_deadline;
    config.check_concurrency = usize::from(args.check_concurrency);
    config.secret_keys = args.secret_keys.clone();
    config.webhook_internal = args.webhook_allow_internal;
    config.directory_hooks = args.directory_hooks.clone();
    config.drill_interval = args.drill_interval;
    config.stage_ahead = !args.no_stage_ahead;
    config.advertise = args.advertise.clone();
    config.replica_id = args.replica_id.clone();
    config.sessions = control::sessions::Policy {
        lifetime: time::Duration::minutes(args.session_lifetime_minutes),
        idle: time::Duration::minutes(args.session_idle_minutes),
        recent_password: time::Duration::try_from(args.reauth_window).unwrap_or(time::Duration::minutes(5)),
    };
    config
}

async fn run(cli: Cli) -> Result<(), String> {
    let fail = |err: control::Error| err.to_string();
    match cli.command {
        Command::Serve(args) => {
            let _lock = control::lock::DataDirLock::acquire(&cli.data_dir, "starting another").map_err(fail)?;
            let etcd: Vec<String> = cli.etcd.iter().map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect();
            let ca_pem = match &args.election_ca {
                Some(file) => Some(std::fs::read_to_string(file).map_err(|err| format!("cannot read {}: {err}", file.display()))?),
                None => None,
            };
            let credentials = match (&args.election_user, &args.election_password_file) {
                (Some(user), Some(file)) => {
                    let text = std::fs::read_to_string(file).map_err(|err| format!("cannot read {}: {err}", file.display()))?;
                    let password = text.lines().next().unwrap_or_default().to_string();
                    if password.is_empty() {
                        return Err(format!("{} holds no password", file.display()));
                    }
                    Some(control::cluster::Credentials::new(user.clone(), password))
                }
                _ => None,
            };
            let replication = (!etcd.is_empty()).then(|| server::Replication {
                ttl: args.election_ttl,
                ca_pem,
                credentials,
                ..server::Replication::new(etcd)
            });
            let state = prepare(Config {
                initialize: cli.initialize,
                database: cli.database,
                replication,
                ..config(cli.data_dir, &args)
            })
            .await
            .map_err(fail)?;
            listen_and_serve(state, args.listen).await
        }
        Command::Demo(args) => {
            if cli.database.is_some() || !cli.etcd.is_empty() {
                return Err(
                    "the demo runs alone on SQLite in its data directory; --database and --etcd (ETC_SHADOW_DATABASE, ETC_SHADOW_ETCD) are for `serve`"
                        .into(),
                );
            }
            let _lock = control::lock::DataDirLock::acquire(&cli.data_dir, "starting another").map_err(fail)?;
            let mut config = config(cli.data_dir.clone(), &args);
            if config.directory_hooks.is_none() {
                config.directory_hooks = Some(server::demo::hooks_dir(&cli.data_dir)?);
            }
            let state = prepare(Config {
                initialize: cli.initialize,
                ..config
            })
            .await
            .map_err(fail)?;
            server::demo::write_hooks(&cli.data_dir)?;
            let _agent = server::demo::start_shadows(&state.db, &cli.data_dir).await?;
            let seeded = server::demo::seed(&state.db, &state.coordinator).await.map_err(fail)?;
            println!("etc-shadow demo: data in {}", cli.data_dir.display());
            if let Some(revision) = seeded.revision {
                println!("  sample configuration rolled out as revision {revision}");
            }
            if seeded.passwords.is_empty() {
                println!("  demo users already exist (reset a password with `etc-shadow user passwd NAME --password-stdin`)");
            }
            for (name, role, password) in &seeded.passwords {
                println!("  user {name:<9} role {role:<9} password {password}   (shown once)");
            }
            // One drill at start: proof that the agent's node could take over now.
            match control::drills::run_as(&state.db, &state.coordinator.registry, "demo", "edge", Some(10)).await {
                Ok((drill, _)) => {
                    let steps: Vec<String> = drill.steps.iter().map(|s| format!("{} {}", s.name, s.status)).collect();
                    println!("  drill #{} on edge: {} ({})", drill.id, drill.verdict, steps.join(", "));
                }
                Err(err) => println!("  drill on edge not run: {err}"),
            }
            let scheme = if args.tls_cert.is_some() { "https" } else { "http" };
            println!("  console: {scheme}://{}/", args.listen);
            listen_and_serve(state, args.listen).await
        }
        Command::User(command) => {
            let db = control::Db::open_at(&cli.data_dir, cli.database.as_deref(), cli.initialize)
                .await
                .map_err(fail)?;
            match command {
                UserCommand::Add { name, role, .. } => {
                    let user = control::users::create(&db, "cli", &name, role, read_password()?)
                        .await
                        .map_err(fail)?;
                    println!("created user {} with role {}", user.username, user.role);
                }
                UserCommand::Passwd { name, .. } => {
                    control::users::set_password(&db, "cli", &name, read_password()?)
                        .await
                        .map_err(fail)?;
                    println!("password of {name} changed; their sessions ended");
                }
                UserCommand::Role { name, role } => {
                    control::users::set_role(&db, "cli", &name, role).await.map_err(fail)?;
                    println!("{name} is now {role}; their sessions ended");
                }
                UserCommand::Disable { name } => {
                    control::users::set_disabled(&db, "cli", &name, true).await.map_err(fail)?;
                    println!("{name} is disabled; their sessions ended");
                }
                UserCommand::Enable { name } => {
                    control::users::set_disabled(&db, "cli", &name, false).await.map_err(fail)?;
                    println!("{name} is enabled");
                }
                UserCommand::List => {
                    for user in control::users::all(&db).await.map_err(fail)? {
                        println!(
                            "{:<24} {:<9} {}",
                            user.username,
                            user.role,
                            if user.disabled { "disabled" } else { "" }
                        );
                    }
                }
            }
            db.close().await;
            Ok(())
        }
        Command::Shadow(command) => {
            let db = control::Db::open_at(&cli.data_dir, cli.database.as_deref(), cli.initialize)
                .await
                .map_err(fail)?;
            match command {
                ShadowCommand::Add(add) => {
                    let AddShadow {
                        name,
                        agent,
                        token_file,
                        tls_pin,
                        directory,
                        etcd,
                        prefix,
                        etcd_user,
                        etcd_password_file,
                        etcd_ca,
                        etcd_max_txn_ops,
                        etcd_max_request_bytes,
                    } = *add;
                    let read = |file: &std::path::Path| {
                        std::fs::read_to_string(file).map_err(|err| format!("cannot read {}: {err}", file.display()))
                    };
                    let shadow = match (agent, token_file, directory) {
                        (None, None, None) if etcd.is_some() => control::shadows::NewShadow::Etcd {
                            name,
                            endpoints: etcd.unwrap_or_default(),
                            prefix: prefix.unwrap_or_default(),
                            user: etcd_user,
                            // The password file's content, without the line end editors add.
                            password: etcd_password_file
                                .as_deref()
                                .map(read)
                                .transpose()?
                                .map(|p| p.trim_end_matches(['\n', '\r']).to_string()),
                            ca: etcd_ca.as_deref().map(read).transpose()?,
                            max_txn_ops: etcd_max_txn_ops,
                            max_request_bytes: etcd_max_request_bytes,
                        },
                        (Some(url), file, None) => {
                            let token = match file {
                                Some(file) => {
                                    Some(std::fs::read_to_string(&file).map_err(|err| format!("cannot read {}: {err}", file.display()))?)
                                }
                                None => None,
                            };
                            control::shadows::NewShadow::Agent { name, url, token, tls_pin }
                        }
                        (None, _, Some(path)) => {
                            let path = std::path::absolute(&path).map_err(|err| err.to_string())?;
                            control::shadows::NewShadow::Directory {
                                name,
                                path: path.to_string_lossy().into_owned(),
                            }
                        }
                        _ => {
                            return Err("give --agent URL [--token-file F], --directory PATH, or --etcd URLS --prefix P".into());
                        }
                    };
                    let (view, token) = control::shadows::add_as(&db, "cli", shadow).await.map_err(fail)?;
                    if let Some(token) = token {
                        println!("agent token (shown this once; write it to the agent's --token-file, mode 0600):\n{token}");
                    }
                    println!(
                        "added shadow {} ({}); bring it to the current revision with a reconcile",
                        view.name, view.driver
                    );
                }
                ShadowCommand::List => {
                    for shadow in control::shadows::list(&db).await.map_err(fail)? {
                        let target = match (shadow.url, shadow.prefix) {
                            (Some(endpoints), Some(prefix)) => format!("{endpoints} {prefix}"),
                            (url, _) => url.or(shadow.path).unwrap_or_default(),
                        };
                        let root = shadow.observed_root.as_deref().map(|r| &r[..12.min(r.len())]).unwrap_or("-");
                        println!(
                            "{:<20} {:<10} {:<12} {:<14} {}",
                            shadow.name, shadow.driver, shadow.status, root, target
                        );
                    }
                }
                ShadowCommand::Remove { name } => {
                    control::shadows::remove(&db, "cli", &name).await.map_err(fail)?;
                    println!("removed shadow {name}");
                }
            }
            db.close().await;
            Ok(())
        }
        Command::Secrets(SecretsCommand::Rotate) => {
            let written = control::secrets::rotate(&cli.data_dir, cli.database.as_deref())
                .await
                .map_err(fail)?;
            match control::secrets::Keyring::source_for(&cli.data_dir) {
                source @ control::secrets::KeySource::File(_) => {
                    println!("new encryption key in the {source}; {written} secret values re-encrypted")
                }
                source => {
                    println!("{written} secret values re-encrypted with the encryption key of the {source}; drop its previous key now")
                }
            }
            Ok(())
        }
        Command::Import { dir, message, author } => {
            let files = control::imports::read_directory(&dir)?;
            let db = control::Db::open_at(&cli.data_dir, cli.database.as_deref(), cli.initialize)
                .await
                .map_err(fail)?;
            let name = author
                .or_else(|| std::env::var("SUDO_USER").ok())
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_default();
            let caller = control::users::local_caller(&db, &name).await.map_err(fail)?.ok_or_else(|| {
                format!("no etc-shadow user {name:?}: name the change's author with --author NAME (editor role or above)")
            })?;
            let count = files.len();
            // Whoever runs this chooses the author: the machine's account is kept with it.
            let via = serde_json::json!({
                "door": "cli",
                "directory": dir.display().to_string(),
                "os_uid": nix_uid(),
                "os_user": std::env::var("USER").ok(),
                "sudo_user": std::env::var("SUDO_USER").ok(),
            });
            let change = control::imports::import_via(&db, &caller, control::imports::NewImport { message, files }, via)
                .await
                .map_err(fail)?;
            db.close().await;
            println!(
                "imported {count} files from {} as draft change {} by {} ({} entries to put or delete); submit it for review in the console",
                dir.display(),
                change.summary.id,
                caller.username,
                change.entries.len()
            );
            Ok(())
        }
        Command::Validate { paths } => server::validate_files(&paths),
        Command::Secrets(SecretsCommand::Generate) => {
            println!("{}", control::secrets::Keyring::generate());
            Ok(())
        }
        Command::Audit(AuditCommand::Verify) => {
            let db = control::Db::open_at(&cli.data_dir, cli.database.as_deref(), cli.initialize)
                .await
                .map_err(fail)?;
            let registry = control::shadows::Registry::new(std::time::Duration::from_secs(10));
            let report = control::audit::verify_against_shadows(&db, &registry, std::time::Duration::from_secs(10))
                .await
                .map_err(fail)?;
            db.close().await;
            for anchor in &report.anchors {
                println!("shadow {}: {} ({})", anchor.shadow, anchor.status, anchor.message);
            }
            if report.intact {
                println!("{} (head {})", report.message, report.head);
                Ok(())
            } else {
                Err(format!("audit chain broken: {}", report.message))
            }
        }
    }
}

/// The real user id this command runs as (for the audit log of a command-line import).
fn nix_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX)
}

async fn listen_and_serve(state: server::AppState, listen: SocketAddr) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|err| format!("cannot listen on {listen}: {err}"))?;
    tracing::info!(address = %listen, "serving");
    serve(state, listener, shutdown_signal()).await.map_err(|err| err.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("ETC_SHADOW_LOG").unwrap_or_else(|_| "info,sqlx=warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
