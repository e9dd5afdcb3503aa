//! `etc-shadow-agent`: a small daemon on each shadow node. It owns one directory of live
//! configuration (through `store`), answers the agent protocol over HTTP with a bearer
//! token, and streams an event whenever the live root changes (a hand edit, a chmod), so
//! the control plane re-checks at once. It knows nothing of the control plane's database.

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, Path, Query, Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::{get, post, put},
};
use clap::Parser;
use domain::protocol::{AgentError, AgentErrorBody, Fence, PrepareRequest};
use futures_util::StreamExt;
use notify::{
    EventKind, RecursiveMode, Watcher,
    event::{CreateKind, ModifyKind, RenameMode},
};
use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use store::{Store, StoreError};
use tokio::sync::watch;

use tls_serve as tls;

#[derive(Parser)]
#[command(name = "etc-shadow-agent", version, about = "Shadow agent of etc-shadow")]
struct Cli {
    /// The live configuration directory (managed as a symlink to the current revision).
    #[arg(long, env = "ETC_SHADOW_AGENT_DIR")]
    dir: PathBuf,
    /// Where the agent keeps staged revisions and its durable state.
    #[arg(long, env = "ETC_SHADOW_AGENT_STATE_DIR")]
    state_dir: PathBuf,
    #[arg(long, env = "ETC_SHADOW_AGENT_LISTEN", default_value = "127.0.0.1:7300")]
    listen: SocketAddr,
    /// File holding the bearer token the control plane must present.
    #[arg(long, env = "ETC_SHADOW_AGENT_TOKEN_FILE")]
    token_file: PathBuf,
    /// Accept writes only from this control plane id (otherwise: the first writer's).
    #[arg(long, env = "ETC_SHADOW_AGENT_CONTROL_PLANE_ID")]
    control_plane_id: Option<String>,
    /// Largest accepted request body in bytes.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Serve HTTPS with this PEM certificate (chain); needs --tls-key.
    #[arg(long, env = "ETC_SHADOW_AGENT_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "ETC_SHADOW_AGENT_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Create a self-signed certificate and key at --tls-cert and --tls-key if they do not
    /// exist. The control plane pins it by the fingerprint the agent logs at start.
    #[arg(long, requires = "tls_cert")]
    tls_generate: bool,
    /// The node's hooks file (TOML: validate, reload, health). It must not be writable by
    /// group or others, and must belong to root or to this agent's user.
    #[arg(long, env = "ETC_SHADOW_AGENT_HOOKS")]
    hooks: Option<PathBuf>,
    /// Seconds a check may answer the live root the file watcher maintains before the tree
    /// is walked again (a walk reads only files whose `stat` changed).
    #[arg(long, env = "ETC_SHADOW_AGENT_REWALK_INTERVAL", default_value_t = 600)]
    rewalk_interval: u64,
}

#[derive(Clone)]
struct AgentState {
    store: Arc<Mutex<Store>>,
    token_hash: blake3::Hash,
    /// The latest live root; changes are streamed on `/v1/events`.
    root: watch::Receiver<String>,
    recheck: Arc<tokio::sync::Notify>,
    /// Set while a drill runs (one at a time).
    drilling: Arc<std::sync::atomic::AtomicBool>,
    /// The running prepare's progress, read without the store's lock.
    progress: Arc<store::Progress>,
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    error_with_hook(status, code, message, None)
}

fn error_with_hook(status: StatusCode, code: &str, message: impl Into<String>, hook: Option<domain::protocol::HookRun>) -> Response {
    error_body(
        status,
        AgentError {
            code: code.into(),
            message: message.into(),
            hook,
            missing: Vec::new(),
        },
    )
}

fn error_body(status: StatusCode, error: AgentError) -> Response {
    (status, Json(AgentErrorBody { error })).into_response()
}

fn store_error(err: StoreError) -> Response {
    let status = match &err {
        StoreError::Fenced(_)
        | StoreError::BaseRootMismatch { .. }
        | StoreError::Conflict(_)
        | StoreError::Incomplete(_)
        | StoreError::NotPrestaged(_) => StatusCode::CONFLICT,
        StoreError::RootMismatch(_) => StatusCode::UNPROCESSABLE_ENTITY,
        StoreError::BadRequest(_) => StatusCode::BAD_REQUEST,
        StoreError::NotFound(_) => StatusCode::NOT_FOUND,
        StoreError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        StoreError::ValidateFailed(_) => StatusCode::UNPROCESSABLE_ENTITY,
    };
    // The hook's output is not logged here: it may quote the staged files.
    tracing::warn!(code = err.code(), %err, "request refused");
    let message = err.to_string();
    let code = err.code().to_string();
    let (hook, missing) = match err {
        StoreError::ValidateFailed(run) => (Some(*run), Vec::new()),
        StoreError::Incomplete(paths) => (None, paths),
        _ => (None, Vec::new()),
    };
    error_body(
        status,
        AgentError {
            code,
            message,
            hook,
            missing,
        },
    )
}

/// Refuses with 401 before anything else of the request is read.
async fn authenticate(State(state): State<AgentState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|token| blake3::hash(token.trim().as_bytes()));
    // blake3::Hash compares in constant time.
    if presented != Some(state.token_hash) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong token");
    }
    next.run(request).await
}

/// Runs a store operation that may change the live tree on the blocking pool (it does file
/// I/O and fsync); the live root is looked at again after it.
async fn with_store<T: Send + 'static>(
    state: &AgentState,
    op: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Response> {
    let result = reading_store(state, op).await;
    state.recheck.notify_one();
    result
}

/// Runs a store operation that only reads (a check, an entry, a status) on the blocking
/// pool: a change it finds is the watcher's to report, so nothing looks again after it.
async fn reading_store<T: Send + 'static>(
    state: &AgentState,
    op: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Response> {
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || {
        let mut store = store.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        op(&mut store)
    })
    .await
    .map_err(|err| error(StatusCode::INTERNAL_SERVER_ERROR, "io", err.to_string()))?
    .map_err(store_error)
}

/// A prepare's body (or a stage's, or a dry run's). A malformed one is refused without
/// quoting it: serde's message may quote a value of the request (an entry's content), and
/// the control plane passes a refusal on to people.
struct PrepareBody(PrepareRequest);

impl<S: Send + Sync> axum::extract::FromRequest<S> for PrepareBody {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        match Json::<PrepareRequest>::from_request(request, state).await {
            Ok(Json(body)) => Ok(PrepareBody(body)),
            Err(rejection) => Err(error(
                rejection.status(),
                "bad_request",
                domain::format::unquoted(&rejection.body_text()),
            )),
        }
    }
}

#[derive(serde::Deserialize)]
struct StateQuery {
    #[serde(default)]
    entries: bool,
}

async fn get_state(State(state): State<AgentState>, Query(query): Query<StateQuery>) -> Response {
    match reading_store(&state, move |store| store.state(query.entries)).await {
        Ok(view) => Json(view).into_response(),
        Err(response) => response,
    }
}

async fn get_entry(State(state): State<AgentState>, Path(path): Path<String>) -> Response {
    match reading_store(&state, move |store| store.read_entry(&path)).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(response) => response,
    }
}

async fn prepare(State(state): State<AgentState>, Path(id): Path<i64>, PrepareBody(request): PrepareBody) -> Response {
    // A tree being staged ahead stops for it.
    let _foreground = state.progress.foreground();
    let queued = Instant::now();
    match with_store(&state, move |store| {
        // What is left of the writer's deadline, less the wait for the store.
        let mut request = request;
        request.deadline_ms = request
            .deadline_ms
            .map(|ms| ms.saturating_sub(u64::try_from(queued.elapsed().as_millis()).unwrap_or(u64::MAX)));
        Ok((store.prepare(id, &request)?, store::last_timings()))
    })
    .await
    {
        Ok((answer, timings)) => (server_timing(timings), Json(answer)).into_response(),
        Err(response) => response,
    }
}

/// `PUT /v1/stage`: stages a change's tree ahead of its rollout (see [`Store::prestage`]).
async fn prestage(State(state): State<AgentState>, PrepareBody(request): PrepareBody) -> Response {
    match with_store(&state, move |store| Ok((store.prestage(&request)?, store::last_timings()))).await {
        Ok((answer, timings)) => {
            // Once the stage settled (its files out of the racy window, the watcher done
            // with its new directories), it is proven once more for the watcher to vouch
            // for: the prepare that takes it then need not walk it.
            let later = state.clone();
            tokio::spawn(async move {
                tokio::time::sleep(VOUCH_AFTER).await;
                match reading_store(&later, |store| store.vouch_stage()).await {
                    Ok(true) => tracing::debug!("the watcher vouches for the tree staged ahead"),
                    Ok(false) | Err(_) => tracing::debug!("the tree staged ahead is not vouched for; its prepare walks it"),
                }
            });
            (server_timing(timings), Json(answer)).into_response()
        }
        Err(response) => response,
    }
}

/// `DELETE /v1/stage`: drops the tree staged ahead, if any.
async fn drop_prestaged(State(state): State<AgentState>) -> Response {
    match with_store(&state, |store| store.drop_prestaged()).await {
        Ok(()) => Json(serde_json::json!({})).into_response(),
        Err(response) => response,
    }
}

/// How far a prepare has come, answered while it runs (it holds the store).
async fn prepare_progress(State(state): State<AgentState>, Path(id): Path<i64>) -> Response {
    Json(domain::protocol::PrepareProgress {
        rollout: id,
        steps: state.progress.of(id),
    })
    .into_response()
}

async fn commit(State(state): State<AgentState>, Path(id): Path<i64>, Json(fence): Json<Fence>) -> Response {
    let _foreground = state.progress.foreground();
    match with_store(&state, move |store| Ok((store.commit(id, &fence)?, store::last_timings()))).await {
        Ok((answer, timings)) => (server_timing(timings), Json(answer)).into_response(),
        Err(response) => response,
    }
}

/// Where the agent spent a prepare or commit (`Server-Timing`, milliseconds): the
/// benchmark separates disk and hashing from the network with it.
fn server_timing(timings: store::Timings) -> [(header::HeaderName, String); 1] {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    [(
        header::HeaderName::from_static("server-timing"),
        format!(
            "write;dur={:.3}, fsync;dur={:.3}, hash;dur={:.3}, total;dur={:.3}",
            ms(timings.write),
            ms(timings.fsync),
            ms(timings.hash),
            ms(timings.total)
        ),
    )]
}

async fn abort(State(state): State<AgentState>, Path(id): Path<i64>, Json(fence): Json<Fence>) -> Response {
    let _foreground = state.progress.foreground();
    match with_store(&state, move |store| store.abort(id, &fence)).await {
        Ok(answer) => Json(answer).into_response(),
        Err(response) => response,
    }
}

/// `POST /v1/drills`: the node's part of a drill (live root, validate on the live tree,
/// the health probe). The probes run without the store's lock, so prepares, commits and
/// checks go on meanwhile; one drill at a time, for at most [`DRILL_PROBING`].
async fn drill(State(state): State<AgentState>, Json(request): Json<domain::protocol::DrillRequest>) -> Response {
    if !(1..=store::hooks::MAX_PROBES).contains(&request.requests) {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("requests is 1 to {}", store::hooks::MAX_PROBES),
        );
    }
    if state.drilling.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return error(StatusCode::CONFLICT, "conflict", "a drill is running on this node");
    }
    // Cleared however this ends, a client that hangs up (the handler dropped) included.
    struct Drilling(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Drilling {
        fn drop(&mut self) {
            self.0.store(false, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let drilling = Drilling(state.drilling.clone());
    let result = async move {
        let (mut answer, hooks, live) =
            reading_store(&state, |store| Ok((store.drill()?, store.hooks(), store.live_dir().to_path_buf()))).await?;
        if let Some(hooks) = hooks {
            // The probes own the mark: a drill whose client hung up still holds it until
            // they end.
            answer.health = tokio::task::spawn_blocking(move || {
                let _drilling = drilling;
                hooks.health(&live, request.requests, DRILL_PROBING)
            })
            .await
            .map_err(|err| error(StatusCode::INTERNAL_SERVER_ERROR, "io", err.to_string()))?;
        }
        Ok::<_, Response>(answer)
    }
    .await;
    match result {
        Ok(answer) => Json(answer).into_response(),
        Err(response) => response,
    }
}

/// After a directory appears in the managed one, how long until a change is counted once
/// more (see `watch_files`).
const NEW_DIRECTORY_SETTLE: Duration = Duration::from_millis(500);

/// How long after staging ahead the stage is proven again for the watcher to vouch for:
/// past the racy window (its files read as settled) and the watcher's extra change for
/// new directories ([`NEW_DIRECTORY_SETTLE`]), which would otherwise come after.
const VOUCH_AFTER: Duration = Duration::from_millis(1100);

/// The longest a drill's health probes may take on the node.
const DRILL_PROBING: Duration = Duration::from_secs(120);

/// `POST /v1/validate`: a dry run of prepare's validate hook on the request's tree
/// (nothing staged, nothing recorded); answers `{"hook": …}` (null without a hook).
async fn validate_dry_run(State(state): State<AgentState>, PrepareBody(request): PrepareBody) -> Response {
    match with_store(&state, move |store| store.validate_dry_run(&request)).await {
        Ok(hook) => Json(domain::protocol::DryRunAnswer { hook }).into_response(),
        Err(response) => response,
    }
}

async fn rollout_status(State(state): State<AgentState>, Path(id): Path<i64>) -> Response {
    match reading_store(&state, move |store| Ok(store.status(id))).await {
        Ok(answer) => Json(answer).into_response(),
        Err(response) => response,
    }
}

/// Server-sent events: one `root` event now and one whenever the live root changes.
async fn events(State(state): State<AgentState>) -> Sse<impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>>> {
    let stream = tokio_stream::wrappers::WatchStream::new(state.root.clone()).map(|root| {
        Ok(Event::default()
            .event("root")
            .data(serde_json::json!({ "live_root": root }).to_string()))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// Watches the live tree and the staged revisions; recomputes the root after changes.
/// Whether the watcher failed because a path it walked is gone.
fn vanished(err: &notify::Error) -> bool {
    match &err.kind {
        notify::ErrorKind::PathNotFound => true,
        notify::ErrorKind::Io(io) => io.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

fn watch_files(
    state: &AgentState,
    sender: watch::Sender<String>,
    watched: Vec<PathBuf>,
    account: Arc<store::Watch>,
) -> notify::Result<notify::RecommendedWatcher> {
    let recheck = state.recheck.clone();
    // Links are not followed: the live generation is watched where it is (a directory of
    // the managed one), so removing or replacing a top-level link or `..data` cannot take
    // the watch of what they point to with it.
    let config = notify::Config::default().with_follow_symlinks(false);
    let runtime = tokio::runtime::Handle::current();
    let settling = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut watcher = notify::RecommendedWatcher::new(
        move |event: notify::Result<notify::Event>| match event {
            // Events were lost (the kernel's queue overflowed): anything may have changed.
            Ok(event) if event.need_rescan() => {
                account.changed();
                recheck.notify_one();
            }
            // A look's own touch of the sync file (its times set, or the file made again),
            // coming back: not a change. Someone reading it is nothing at all.
            Ok(event) if !event.paths.is_empty() && event.paths.iter().all(|p| p == account.sync_file()) => {
                if matches!(event.kind, EventKind::Create(_) | EventKind::Modify(ModifyKind::Metadata(_))) {
                    account.sync_reported();
                }
            }
            // Reading the files to hash them produces access events; reacting to those would
            // loop forever. Only changes count.
            Ok(event) if !event.kind.is_access() && !event.kind.is_other() => {
                // Names made, removed or renamed, and nothing else: not a write or a
                // chmod (through a hard link at the top level, say), not a directory that
                // appeared or moved in (what it holds was never watched).
                let names_only = match event.kind {
                    EventKind::Create(CreateKind::Folder) => false,
                    EventKind::Create(_) | EventKind::Remove(_) => true,
                    EventKind::Modify(ModifyKind::Name(_)) => event
                        .paths
                        .iter()
                        .all(|p| std::fs::symlink_metadata(p).is_ok_and(|m| !m.is_dir()) || !p.exists()),
                    _ => false,
                };
                account.changed_at(&event.paths, names_only);
                recheck.notify_one();
                // A directory that appears is watched only once the watcher got to it:
                // what was written into it before then reported nothing. A change counted
                // a moment later makes the next look walk after that.
                if matches!(
                    event.kind,
                    EventKind::Create(CreateKind::Folder) | EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
                ) && !settling.swap(true, std::sync::atomic::Ordering::SeqCst)
                {
                    let (account, recheck, settling) = (account.clone(), recheck.clone(), settling.clone());
                    runtime.spawn(async move {
                        tokio::time::sleep(NEW_DIRECTORY_SETTLE).await;
                        settling.store(false, std::sync::atomic::Ordering::SeqCst);
                        account.changed();
                        recheck.notify_one();
                    });
                }
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(%err, "the file watcher reported an error");
                account.failed();
                recheck.notify_one();
            }
        },
        config,
    )?;
    for path in watched {
        // Old generations are emptied in the background (at start too): a directory that
        // vanishes while the watcher walks the tree is no error, the walk is done again.
        // (It was: now and then an agent exited at start with "cannot watch the live
        // directory: No such file or directory".)
        let mut attempts = 0;
        while path.exists() {
            match watcher.watch(&path, RecursiveMode::Recursive) {
                Ok(()) => break,
                Err(err) if attempts < 100 && vanished(&err) => {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(err) => return Err(err),
            }
        }
    }
    let store = state.store.clone();
    let recheck = state.recheck.clone();
    tokio::spawn(async move {
        loop {
            // Coalesce bursts of file events into one recomputation.
            recheck.notified().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            let store = store.clone();
            let root = tokio::task::spawn_blocking(move || {
                let store = store.lock().unwrap_or_else(|p| p.into_inner());
                store.live_root().map(|root| (root, store.unsettled().then(|| store.racy_window())))
            })
            .await;
            if let Ok(Ok((root, unsettled))) = root {
                // Files changed too recently to cache are read once more when they have
                // settled, so that the next check or prepare reads only what moves.
                if let Some(window) = unsettled {
                    let recheck = recheck.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(window + Duration::from_millis(50)).await;
                        recheck.notify_one();
                    });
                }
                sender.send_if_modified(|current| {
                    let changed = *current != root.to_hex();
                    if changed {
                        *current = root.to_hex();
                    }
                    changed
                });
            }
        }
    });
    Ok(watcher)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        // notify reports each watch it drops (a removed generation's directories) at info.
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("ETC_SHADOW_LOG").unwrap_or_else(|_| "info,notify=warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let token = std::fs::read_to_string(&cli.token_file).map_err(|err| format!("cannot read {}: {err}", cli.token_file.display()))?;
    let token = token.trim();
    if token.len() < 16 {
        return Err("the token must have at least 16 characters".into());
    }
    let mut store = Store::open(&cli.dir, &cli.state_dir, cli.control_plane_id.clone()).map_err(|err| err.to_string())?;
    // The watcher reports absolute paths: the sync file is named the same way.
    let dir = std::fs::canonicalize(&cli.dir).map_err(|err| format!("cannot resolve {}: {err}", cli.dir.display()))?;
    if let Some(path) = &cli.hooks {
        let hooks = store::hooks::Hooks::load(path)?;
        tracing::info!(
            file = %path.display(),
            validate = hooks.validate.is_some(),
            reload = hooks.reload.is_some(),
            health = hooks.health.is_some(),
            "hooks loaded"
        );
        store.set_hooks(Some(Arc::new(hooks)));
    }
    // Checks answer the root the watcher maintains while it reports no change (see
    // `store::Watch`); the first look walks.
    let watch = Arc::new(store::Watch::new(&dir));
    store.set_rewalk_interval(Duration::from_secs(cli.rewalk_interval.max(1)));
    let initial_root = store.live_root().map_err(|err| err.to_string())?.to_hex();
    let (sender, receiver) = watch::channel(initial_root);
    let state = AgentState {
        progress: store.progress(),
        store: Arc::new(Mutex::new(store)),
        token_hash: blake3::hash(token.as_bytes()),
        root: receiver,
        recheck: Arc::new(tokio::sync::Notify::new()),
        drilling: Arc::new(std::sync::atomic::AtomicBool::new(false)),
    };
    // Generations, the live link and every file are inside the managed directory.
    let watched = vec![dir.clone()];
    let _watcher = watch_files(&state, sender, watched, watch.clone()).map_err(|err| format!("cannot watch the live directory: {err}"))?;
    // Only now that the watcher reports: a look before would wait for its touch in vain.
    state.store.lock().unwrap_or_else(|p| p.into_inner()).set_watch(watch);
    let app = Router::new()
        .route("/v1/state", get(get_state))
        .route("/v1/entries/{*path}", get(get_entry))
        .route("/v1/rollouts/{id}", put(prepare).get(rollout_status))
        .route("/v1/rollouts/{id}/progress", get(prepare_progress))
        .route("/v1/stage", put(prestage).delete(drop_prestaged))
        .route("/v1/rollouts/{id}/commit", post(commit))
        .route("/v1/rollouts/{id}/abort", post(abort))
        .route("/v1/events", get(events))
        .route("/v1/drills", post(drill))
        .route("/v1/validate", post(validate_dry_run))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(DefaultBodyLimit::max(cli.max_body_bytes))
        .with_state(state);
    let tls = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => {
            if cli.tls_generate {
                tls::generate_if_missing(cert, key, cli.listen)?;
            }
            Some(tls::acceptor(cert, key)?)
        }
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .map_err(|err| format!("cannot listen on {}: {err}", cli.listen))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match tls {
        Some((acceptor, pin)) => {
            tracing::info!(%address, dir = %cli.dir.display(), tls_pin = %pin, "agent serving HTTPS");
            tls::serve(listener, acceptor, app, shutdown).await;
            Ok(())
        }
        None => {
            tracing::info!(%address, dir = %cli.dir.display(), "agent serving HTTP");
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(|err| err.to_string())
        }
    }
}
