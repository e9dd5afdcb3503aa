//! Wiring of the `etc-shadow` control plane: configuration, the router (REST API, the
//! console's pages and server functions, static assets), and the guards around them.
//! Business rules live in `control` and `domain`; pages in `app`.

pub mod auth;
pub mod cluster;
pub mod demo;
pub mod error;
pub mod rest;

use axum::{
    Router,
    extract::{DefaultBodyLimit, FromRef, Request},
    http::{HeaderName, HeaderValue},
    middleware::{self, Next},
    response::Response,
};
use control::{Db, drift::Monitor, rollouts::Coordinator, shadows::Registry};
use leptos::prelude::*;
use leptos_axum::{LeptosRoutes, generate_route_list};
use std::{future::IntoFuture, net::SocketAddr, path::PathBuf, sync::Arc};
use tower_http::{compression::CompressionLayer, set_header::SetResponseHeaderLayer, trace::TraceLayer};

/// Server functions under this prefix are reachable without a session (the login form).
pub const LOGIN_SERVER_FN_PREFIX: &str = "/api/login";

/// Default limit of a request body: 4 MiB.
pub const DEFAULT_MAX_BODY: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// A PostgreSQL database (`postgres://…`) instead of the data directory's SQLite file.
    pub database: Option<String>,
    pub listen: SocketAddr,
    /// Largest accepted request body in bytes.
    pub max_body: usize,
    /// Where the compiled console (wasm, js, css) lives.
    pub site_root: PathBuf,
    /// The console's origin as browsers see it (`https://config.example.com`). When unset,
    /// a request's Origin is compared with the Host it was sent to.
    pub public_origin: Option<String>,
    /// Mark the session cookie `Secure` and send HSTS (when served over TLS, here or by a
    /// proxy in front).
    pub secure_cookies: bool,
    /// Serve HTTPS with this PEM certificate chain and private key.
    pub tls: Option<TlsFiles>,
    /// Time between drift sweeps over every shadow.
    pub check_interval: std::time::Duration,
    /// Failed checks in a row before an `unreachable` incident opens.
    pub unreachable_after: i64,
    /// Create the database even where the data directory holds other state without one.
    pub initialize: bool,
    /// A rollout not decided this long after it started is aborted everywhere.
    pub prepare_deadline: std::time::Duration,
    /// Shadows checked at once in a sweep.
    pub check_concurrency: usize,
    /// Session lifetime and idle timeout.
    pub sessions: control::sessions::Policy,
    /// Brute-force limits of sign-in.
    pub login_limits: control::login::Limits,
    /// Key names whose values are secret inside json, yaml, toml, ini and env entries.
    pub secret_keys: domain::redact::SecretKeys,
    /// Let webhooks reach loopback, private and link-local addresses.
    pub webhook_internal: bool,
    /// Where directory shadows' hooks files are (`<dir>/<shadow>.toml`).
    pub directory_hooks: Option<PathBuf>,
    /// Run a drill on every shadow whose latest is older than this (none when unset).
    pub drill_interval: Option<std::time::Duration>,
    /// Stage approved changes on the shadows ahead of their rollout (see
    /// `control::prestage`).
    pub stage_ahead: bool,
    /// Run as one replica of several, electing a leader through this etcd cluster.
    pub replication: Option<Replication>,
    /// This server's name among the replicas (default: the host and port of `advertise`).
    pub replica_id: Option<String>,
    /// Where the other replicas reach this one's console and API (default: the listen
    /// address, over HTTPS when `tls` is set).
    pub advertise: Option<String>,
}

/// The election of a leader among replicas.
#[derive(Debug, Clone)]
pub struct Replication {
    pub etcd: Vec<String>,
    /// The election's keys are under this prefix.
    pub root: String,
    /// The lease's time to live, seconds: a dead leader's successor leads within about
    /// this plus a second.
    pub ttl: i64,
    /// The CA certificate (PEM) of the cluster's TLS certificates.
    pub ca_pem: Option<String>,
    /// The etcd user the replica signs in as.
    pub credentials: Option<control::cluster::Credentials>,
}

impl Replication {
    pub fn new(etcd: Vec<String>) -> Replication {
        Replication {
            etcd,
            root: "/etc-shadow/control/".into(),
            ttl: control::cluster::DEFAULT_TTL,
            ca_pem: None,
            credentials: None,
        }
    }
}

impl Config {
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> Self {
        Config {
            data_dir,
            database: None,
            listen,
            max_body: DEFAULT_MAX_BODY,
            site_root: PathBuf::from("target/site"),
            public_origin: None,
            secure_cookies: false,
            tls: None,
            check_interval: std::time::Duration::from_secs(5),
            unreachable_after: 3,
            prepare_deadline: std::time::Duration::from_secs(10),
            initialize: false,
            check_concurrency: 16,
            sessions: control::sessions::Policy::default(),
            login_limits: control::login::Limits::default(),
            secret_keys: domain::redact::SecretKeys::default(),
            webhook_internal: false,
            directory_hooks: None,
            drill_interval: None,
            stage_ahead: true,
            replication: None,
            replica_id: None,
            advertise: None,
        }
    }
}

/// The console's own certificate and key (PEM files).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Shared by every route and server function.
#[derive(Clone, FromRef)]
pub struct AppState {
    pub leptos_options: LeptosOptions,
    pub db: Db,
    pub config: Arc<Config>,
    pub coordinator: Arc<Coordinator>,
    pub monitor: Arc<Monitor>,
    /// This server's hold on its database (see `Db::lock_serving`): a sole server's
    /// alone, the replicas' shared.
    pub serving: Arc<control::db::ServingLock>,
    /// This server among the control plane's replicas.
    pub membership: Arc<control::cluster::Membership>,
    /// How a replica that does not lead hands leader-only requests to the leader (none
    /// for a sole server).
    pub forwarder: Option<Arc<cluster::Forwarder>>,
}

/// The name of the console's assets in `<site root>/pkg` (`etc-shadow.<hash>`: its
/// `.js`, `_bg.wasm` and `.css`), as `scripts/build-site.sh` wrote it in `pkg/current`;
/// `etc-shadow` without a built site.
fn asset_name(site_root: &std::path::Path) -> String {
    std::fs::read_to_string(site_root.join("pkg/current"))
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'))
        .unwrap_or_else(|| "etc-shadow".into())
}

fn leptos_options(config: &Config) -> LeptosOptions {
    // Built here rather than read from Cargo.toml: the binary must run from anywhere.
    LeptosOptions::builder()
        .output_name(asset_name(&config.site_root))
        .site_root(config.site_root.to_string_lossy().into_owned())
        .site_pkg_dir("pkg")
        .site_addr(config.listen)
        .build()
}

/// Makes the server functions' view of the request: the caller, if authenticated.
async fn expose_caller(mut request: Request, next: Next) -> Response {
    if let Some(found) = request.extensions().get::<auth::Authenticated>().cloned() {
        request.extensions_mut().insert(found.caller);
    }
    next.run(request).await
}

/// The Content-Security-Policy of a console page: scripts from this origin and the page's
/// own inline scripts (by nonce), WebAssembly compiled from them, connections (server
/// functions, the event stream) to this origin only; no framing, no plugins, no `<base>`.
pub fn page_policy(nonce: &str) -> String {
    format!(
        "default-src 'self'; script-src 'self' 'nonce-{nonce}' 'wasm-unsafe-eval'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
}

/// Caching of a console asset: one that was found is named by its contents, so kept for
/// good (`immutable`), per encoding (`Vary`: a cache in front must not hand brotli to a
/// browser that did not ask for it); a miss is not cached at all (the asset may be built
/// a moment later).
fn asset_headers<B>(mut response: axum::http::Response<B>) -> axum::http::Response<B> {
    let found = response.status().is_success();
    let headers = response.headers_mut();
    if found {
        headers.insert(
            axum::http::header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=31536000, immutable"),
        );
    } else {
        headers.insert(axum::http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    headers.insert(axum::http::header::VARY, HeaderValue::from_static("accept-encoding"));
    response
}

/// The whole application router.
pub fn router(state: AppState) -> Router {
    let routes = generate_route_list(app::App);
    let db = state.db.clone();
    let config = state.config.clone();
    let coordinator = state.coordinator.clone();
    let monitor = state.monitor.clone();
    let membership = state.membership.clone();
    let context = move || {
        provide_context(db.clone());
        provide_context(membership.clone());
        provide_context(coordinator.clone());
        provide_context(monitor.clone());
        provide_context(app::ConsoleSettings {
            secure_cookies: config.secure_cookies,
        });
        provide_context(config.sessions);
        provide_context(config.login_limits);
        // A page's policy names the nonce leptos_axum put on this response's inline
        // hydration scripts: nothing else inline runs, nothing from elsewhere loads.
        if let (Some(nonce), Some(response)) = (leptos::nonce::use_nonce(), use_context::<leptos_axum::ResponseOptions>())
            && let Ok(policy) = HeaderValue::from_str(&page_policy(&nonce))
        {
            response.insert_header(axum::http::header::CONTENT_SECURITY_POLICY, policy);
        }
    };
    let shell_options = state.leptos_options.clone();
    let mut headers = vec![
        ("x-content-type-options", "nosniff"),
        // Everything but a rendered page (API answers, errors, assets): nothing may run.
        (
            "content-security-policy",
            "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
        ("x-frame-options", "DENY"),
        // No referrer leaves the console; same-origin requests keep theirs, and with it the
        // Origin of a plain form's post (under `no-referrer` a browser sends `Origin: null`
        // for a form navigation, which the Origin check must refuse).
        ("referrer-policy", "same-origin"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
        ("permissions-policy", "camera=(), microphone=(), geolocation=(), payment=(), usb=()"),
    ];
    if state.config.secure_cookies {
        // Served over TLS (directly or by a proxy in front): browsers stay on https.
        headers.push(("strict-transport-security", "max-age=31536000; includeSubDomains"));
    }
    // The console's assets are named by the hash of their contents: cached for good, and
    // sent precompressed (brotli, else gzip) to browsers that take it.
    let assets = <_ as tower::ServiceExt<axum::extract::Request>>::map_response(
        tower_http::services::ServeDir::new(state.config.site_root.join("pkg"))
            .precompressed_br()
            .precompressed_gzip(),
        asset_headers,
    );
    let mut router = Router::new()
        .nest_service("/pkg", assets)
        .merge(rest::router())
        .route("/api/v1/{*rest}", axum::routing::any(rest::not_found))
        .leptos_routes_with_context(&state, routes, context.clone(), {
            let options = shell_options.clone();
            move || app::shell(options.clone())
        })
        .fallback(leptos_axum::file_and_error_handler::<AppState, _>(app::shell))
        // Leader-only requests a follower hands to the leader: only once the caller is
        // known here (an anonymous one is refused by this replica, learns nothing of the
        // leader's address and costs the leader nothing).
        .layer(middleware::from_fn_with_state(state.clone(), cluster::forward_to_leader))
        .layer(middleware::from_fn(expose_caller))
        .layer(middleware::from_fn(auth::deny_by_default))
        .layer(middleware::from_fn_with_state(state.clone(), auth::authenticate))
        .layer(DefaultBodyLimit::max(state.config.max_body))
        .layer(CompressionLayer::new())
        .layer(TraceLayer::new_for_http());
    for (name, value) in headers {
        router = router.layer(SetResponseHeaderLayer::if_not_present(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        ));
    }
    router.with_state(state)
}

/// Opens the database, raises the epoch, recovers unfinished rollouts (presumed abort
/// for undecided ones), and builds the state.
pub async fn prepare(mut config: Config) -> control::Result<AppState> {
    // Over TLS the cookie must never travel in clear, and browsers keep to HTTPS.
    config.secure_cookies |= config.tls.is_some();
    if config.replication.is_some() && config.advertise.is_none() && config.listen.ip().is_unspecified() {
        return Err(control::Error::BadRequest(format!(
            "--etcd with --listen {} needs --advertise: the address the other replicas reach this one at",
            config.listen
        )));
    }
    if config.replication.is_some() && config.database.is_none() {
        return Err(control::Error::BadRequest(
            "--etcd needs --database postgres://…: the replicas share one database".into(),
        ));
    }
    let mut db = Db::open_at(&config.data_dir, config.database.as_deref(), config.initialize).await?;
    // Before the epoch is raised: a second sole server must not fence the first, nor a
    // sole server the replicas. Replicas share the database; the election decides which
    // one writes.
    let serving = Arc::new(match config.replication {
        Some(_) => db.lock_serving_as_replica().await?,
        None => db.lock_serving().await?,
    });
    db.secret_keys = Arc::new(config.secret_keys.clone());
    db.webhook_internal = config.webhook_internal;
    let sealed = control::secrets::seal_secret_values(&db).await?;
    if sealed > 0 {
        tracing::info!(sealed, "sealed stored contents that hold secret values");
    }
    let replica = control::cluster::Replica {
        id: config.replica_id.clone().unwrap_or_else(|| replica_id(&advertise(&config))),
        address: advertise(&config),
        started_at: control::now(),
    };
    // A sole server leads from its start, with an epoch raised now; a replica when it
    // wins a term (see `cluster::follow_election`).
    let identity = match config.replication {
        None => db.raise_epoch().await?,
        Some(_) => db.identity().await?,
    };
    tracing::info!(control_plane = %identity.id, epoch = identity.epoch, replica = %replica.id, "control plane started");
    let registry = Arc::new(Registry::new(std::time::Duration::from_secs(10)).with_directory_hooks(config.directory_hooks.clone()));
    let mut coordinator = Coordinator::new(db.clone(), registry.clone(), identity);
    coordinator.prepare_timeout = config.prepare_deadline;
    coordinator.prestaging = config.stage_ahead;
    let coordinator = Arc::new(coordinator);
    let (membership, forwarder) = match &config.replication {
        None => {
            coordinator.recover().await?;
            (Arc::new(control::cluster::Membership::sole(db.clone(), replica)), None)
        }
        Some(replication) => {
            coordinator.step_down();
            let election = control::cluster::Election::start(control::cluster::Settings {
                endpoints: replication.etcd.clone(),
                root: replication.root.clone(),
                replica,
                ttl: replication.ttl,
                ca_pem: replication.ca_pem.clone(),
                credentials: replication.credentials.clone(),
            })
            .await
            .map_err(control::Error::BadRequest)?;
            let forwarder = cluster::Forwarder::new(config.tls.as_ref()).map_err(control::Error::BadRequest)?;
            (
                Arc::new(control::cluster::Membership::elected(db.clone(), election)),
                Some(Arc::new(forwarder)),
            )
        }
    };
    let mut monitor = Monitor::new(db.clone(), registry, coordinator.clone(), config.check_interval);
    monitor.unreachable_after = config.unreachable_after.max(1);
    monitor.concurrency = config.check_concurrency.max(1);
    Ok(AppState {
        leptos_options: leptos_options(&config),
        db,
        config: Arc::new(config),
        coordinator,
        monitor: Arc::new(monitor),
        serving,
        membership,
        forwarder,
    })
}

/// Where other replicas reach this one.
fn advertise(config: &Config) -> String {
    config.advertise.clone().unwrap_or_else(|| {
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", config.listen)
    })
}

/// A replica's default name: the host and port it is reached at.
fn replica_id(address: &str) -> String {
    let rest = address.split_once("://").map_or(address, |(_, rest)| rest);
    rest.trim_end_matches('/').to_string()
}

/// Serves until the future `shutdown` completes: over HTTPS when the configuration names
/// a certificate (a bad one is refused before anything starts), else plain HTTP.
pub async fn serve(
    state: AppState,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let tls = match &state.config.tls {
        Some(files) => Some(tls_serve::acceptor(&files.cert, &files.key).map_err(std::io::Error::other)?.0),
        None => None,
    };
    let db = state.db.clone();
    let serving = state.serving.clone();
    let sessions = state.config.sessions;
    let purge_db = db.clone();
    let purge = tokio::spawn(async move {
        loop {
            if let Err(err) = control::sessions::purge_expired(&purge_db, sessions).await {
                tracing::warn!(%err, "cannot purge expired sessions");
            }
            tokio::time::sleep(std::time::Duration::from_secs(300)).await;
        }
    });
    let state_election = state.membership.election.clone();
    let membership = tokio::spawn(state.membership.clone().run());
    // Replicas share their live events through the database.
    let bus = match (&state.membership.election, &state.config.database) {
        (Some(_), Some(database)) => Some(control::bus::start(
            database.clone(),
            state.membership.replica.id.clone(),
            state.coordinator.clone(),
            state.monitor.clone(),
        )),
        _ => None,
    };
    // The leader's work: for the whole run of a sole server, for each term a replica wins.
    let (leader_work, election) = match state.membership.election.clone() {
        None => (Some(cluster::LeaderWork::start(&state)), None),
        Some(election) => (None, Some(tokio::spawn(cluster::follow_election(state.clone(), election)))),
    };
    let coordinator = state.coordinator.clone();
    let monitor = state.monitor.clone();
    let app = router(state);
    let result = match tls {
        Some(acceptor) => {
            tls_serve::serve(listener, acceptor, app, shutdown).await;
            Ok(())
        }
        None => serve_http(listener, app, shutdown).await,
    };
    // The term's work stops first; then the lease goes, and a successor may lead.
    if let Some(election) = election {
        election.abort();
        // Its work is dropped with it: waited for, so the lease goes last.
        let _ = election.await;
    }
    drop(leader_work);
    coordinator.step_down();
    if let Some(election) = &state_election {
        election.resign().await;
    }
    membership.abort();
    if let Some(bus) = bus {
        bus.abort();
    }
    purge.abort();
    monitor.stop();
    serving.release().await;
    db.close().await;
    result
}

/// Plain HTTP. Graceful shutdown waits for open connections; event streams never end by
/// themselves, so after the signal they get a short grace period and no more.
async fn serve_http(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (signalled, grace) = tokio::sync::oneshot::channel::<()>();
    // The peer address is what sign-in limits count by (never a header a client sets).
    let server = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = signalled.send(());
    });
    tokio::select! {
        result = server.into_future() => result,
        () = async {
            let _ = grace.await;
            tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        } => Ok(()),
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        if let Ok(mut signal) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            signal.recv().await;
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

/// `etc-shadow validate PATH...`: every file under each path (or the file itself) is
/// parsed as the format its extension names (json, yaml, toml, ini, env; other files are
/// text and pass), under the same byte budget as the console's own validation. Names the
/// store keeps for itself (`..data`, `..r1-rev1`) are not entered, so `{live}` and
/// `{staged}` both check exactly the configuration. Fit for a validate hook that needs
/// nothing installed.
pub fn validate_files(paths: &[PathBuf]) -> Result<(), String> {
    let mut checked = 0usize;
    let mut failures = Vec::new();
    let mut pending: Vec<PathBuf> = paths.to_vec();
    while let Some(path) = pending.pop() {
        let meta = std::fs::metadata(&path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
        if meta.is_dir() {
            let listing = std::fs::read_dir(&path).map_err(|err| format!("cannot list {}: {err}", path.display()))?;
            for entry in listing.flatten() {
                if !entry.file_name().to_string_lossy().starts_with("..") {
                    pending.push(entry.path());
                }
            }
            continue;
        }
        let format = domain::Format::guess(&path.to_string_lossy());
        let bytes = std::fs::read(&path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
        checked += 1;
        if let Err(err) = domain::format::validate(format, &bytes) {
            failures.push(format!("{}: {format}: {err}", path.display()));
        }
    }
    if failures.is_empty() {
        println!("{checked} files valid");
        Ok(())
    } else {
        failures.sort();
        Err(format!("{} of {checked} files invalid:\n{}", failures.len(), failures.join("\n")))
    }
}
