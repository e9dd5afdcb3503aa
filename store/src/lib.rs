//! Storage of one shadow: a directory of live configuration files that is replaced all at
//! once, inside the directory itself.
//!
//! The layout is kubelet's AtomicWriter's, so it works where the directory is a mount
//! point (a container volume, its own partition) or on another file system than the state
//! directory: every generation is written inside the managed directory `D` as
//! `D/..r<rollout>-rev<revision>` (each file created owner-only with `O_EXCL | O_NOFOLLOW`,
//! given its mode, fsynced; the directory fsynced, then renamed from its `.tmp` name);
//! `D/..data` is a symlink to the live generation, switched with one `rename`; and each
//! top-level name of the revision is a symlink `D/name -> ..data/name`. A reader opening
//! `D/app.toml` sees the old set or the new set, never a mix. The files that were in `D`
//! before the first commit are moved aside into `D/..original-<time>` (the same file
//! system, so a rename), and so is anything planted there later when a commit replaces it;
//! the newest three are kept. Names starting with `..` are the store's; no entry may
//! have one.
//!
//! Nothing in `D` is ever skipped when it is observed: a symlink the store did not create,
//! a fifo, socket or device, an unreadable file and a name the path rules refuse are each
//! an entry of their own kind (see [`domain::protocol::ObservedEntry::kind`]), so they are
//! drift. Staging and commit never follow a symlink they did not create.
//!
//! The store's own durable state (highest epoch, the control plane it is bound to, live
//! and staged rollouts) is a JSON file in the state directory, replaced atomically, so it
//! survives `kill -9` at any point; a directory shadow keeps it inside `D` too
//! (`D/..etc-shadow`), so a backup volume carries its fence with it.
//!
//! This crate is used by the agent daemon and, for `directory` shadows, by the control
//! plane itself. It knows nothing of HTTP.

use domain::{
    EntryPath, Hash, Policy,
    hash::{entry_hash, root_hash},
    policy::{format_mode, parse_mode, valid_principal},
    protocol::{Fence, ObservedEntry, PrepareRequest, RolloutAnswer, RolloutPhase, ShadowState, StagedInfo},
};
use serde::{Deserialize, Serialize};
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

/// How many finished rollouts the store remembers for status queries.
const HISTORY: usize = 256;

/// The live link inside the managed directory.
const DATA_LINK: &str = "..data";
/// Where the files found in the directory before the store owned it (or planted later)
/// are moved aside; the newest [`ORIGINALS_KEPT`] are kept.
const ORIGINAL_PREFIX: &str = "..original-";
const ORIGINALS_KEPT: usize = 3;
/// A directory shadow's state directory inside its path.
pub const DIRECTORY_STATE: &str = "..etc-shadow";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A write from another control plane or an older epoch.
    #[error("fenced: {0}")]
    Fenced(String),
    #[error("base root mismatch: the shadow serves {actual}, the writer expected {expected}")]
    BaseRootMismatch { expected: String, actual: String },
    #[error("root mismatch: {0}")]
    RootMismatch(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Io(String),
    /// The node's validate hook refused the staged tree; nothing was staged.
    #[error("the validate hook refused the staged tree ({})", hook_end(.0))]
    ValidateFailed(Box<domain::protocol::HookRun>),
    /// Entries sent without content that this shadow does not hold as their hashes say
    /// (a drifted file, a generation gone): the writer sends them again with content.
    #[error("{} of the entries sent without content are not held here as their hashes say ({}); send their content", .0.len(), first_paths(.0))]
    Incomplete(Vec<String>),
    /// A prepare that sent no entries, naming a tree staged ahead that this shadow does
    /// not hold (it restarted, the tree was replaced or changed): the writer sends them.
    #[error("{0}; send the entries")]
    NotPrestaged(String),
}

/// The first few of `paths`, for a message.
fn first_paths(paths: &[String]) -> String {
    let mut shown: Vec<&str> = paths.iter().take(3).map(String::as_str).collect();
    if paths.len() > 3 {
        shown.push("…");
    }
    shown.join(", ")
}

/// How a hook run ended, in a few words.
pub fn hook_end(run: &domain::protocol::HookRun) -> String {
    match (run.timed_out, run.exit_code) {
        (true, _) => format!("killed after {} ms", run.duration_ms),
        (false, Some(code)) => format!("exit status {code}"),
        (false, None) => "it could not run".into(),
    }
}

impl StoreError {
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Fenced(_) => "fenced",
            StoreError::BaseRootMismatch { .. } => "base_root_mismatch",
            StoreError::RootMismatch(_) => "root_mismatch",
            StoreError::BadRequest(_) => "bad_request",
            StoreError::Conflict(_) => "conflict",
            StoreError::NotFound(_) => "not_found",
            StoreError::Io(_) => "io",
            StoreError::ValidateFailed(_) => "validate_failed",
            StoreError::Incomplete(_) => "incomplete",
            StoreError::NotPrestaged(_) => "not_prestaged",
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The longest a write waits for the state directory's lock held by another process.
pub const LOCK_WAIT: Duration = Duration::from_secs(5);

fn io_error(what: impl std::fmt::Display, err: io::Error) -> StoreError {
    StoreError::Io(format!("{what}: {err}"))
}

/// Policy bits the disk cannot tell: whether owner/group are managed, and secrecy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Manifested {
    owner: String,
    group: String,
    secret: bool,
    /// Hashed under the writer's content key (see [`domain::hash::sealed_entry_hash`]).
    #[serde(default)]
    sealed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Generation {
    rollout: i64,
    revision: i64,
    root: String,
    /// Name of its directory inside the managed one, without the leading `..`.
    dir: String,
    /// Shared, never changed: the state's snapshot (see [`Store::saved`]) costs no copy.
    manifest: std::sync::Arc<BTreeMap<String, Manifested>>,
}

impl Generation {
    /// The top-level names of its entries: the links the managed directory holds into it.
    fn top_names(&self) -> BTreeSet<String> {
        self.manifest
            .keys()
            .filter_map(|path| path.split('/').next().map(str::to_string))
            .collect()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Persisted {
    control_plane_id: Option<String>,
    highest_epoch: i64,
    live: Option<Generation>,
    staged: Option<Generation>,
    history: Vec<(i64, RolloutPhase)>,
    /// The roots of aborted rollouts whose abort named one, so that a late prepare of the
    /// same rollout is refused but another writer's rollout of the same number is not.
    #[serde(default)]
    aborted_roots: BTreeMap<i64, String>,
    /// The previous live generation's directory, kept for readers still inside it.
    #[serde(default)]
    previous: Option<String>,
    /// The `..original-*` directories this store made (a planted one is not the store's:
    /// it is drift like anything else), oldest first.
    #[serde(default)]
    originals: Vec<String>,
    /// The highest head of the writer's audit chain sent with a prepare (never lowered:
    /// a writer restored from an old backup does not take it back).
    #[serde(default)]
    audit_head: Option<domain::audit::Anchor>,
    /// The key sealed entries are hashed under (hex), from the writer's last prepare that
    /// carried one. The shadow holds the sealed contents themselves, so the key adds
    /// nothing to what it could tell.
    #[serde(default)]
    content_key: Option<String>,
    /// A committed rollout whose reload hook has not run to its end yet: recorded with
    /// the switch, so a process killed in between runs it at the commit's repetition.
    #[serde(default)]
    reload_pending: Option<i64>,
    /// The last reload hook's run and the rollout it was for, answered again with a
    /// repeated commit of that rollout.
    #[serde(default)]
    last_reload: Option<(i64, domain::protocol::HookRun)>,
    /// Generations no longer kept (older than the previous one, or a tree staged ahead
    /// that a commit made stale), removed when the next tree is staged rather than at
    /// the commit: their files share inodes with the live ones, and every unlink moves
    /// those inodes' `ctime`, which would send the receipt and the checks after the
    /// commit back to reading every file.
    #[serde(default)]
    retired: Vec<String>,
}

/// One entry of a prepare, checked: its path, policy, entry hash and where its bytes are.
struct ParsedEntry<'a> {
    path: EntryPath,
    policy: Policy,
    hash: Hash,
    /// The key its hash is sealed under, for a sealed entry.
    key: Option<domain::hash::ContentKey>,
    source: Source<'a>,
}

/// Where a staged entry's bytes come from.
enum Source<'a> {
    /// Sent with the request.
    Sent(&'a [u8]),
    /// Held here: the live generation's file, proven to hash to the entry before it is
    /// linked into the new generation.
    Held,
}

/// The prepare's entries checked one by one (path, mode, owner and group, the content key
/// of sealed ones, no path twice) and hashed, proven to hash to the target root, with the
/// manifest of what the disk cannot tell. Touches nothing.
fn parse_entries(request: &PrepareRequest) -> Result<(Vec<ParsedEntry<'_>>, BTreeMap<String, Manifested>)> {
    let content_key = match &request.content_key {
        Some(text) => Some(
            domain::hash::ContentKey::from_hex(text).map_err(|_| StoreError::BadRequest("the content key is not 64 hex digits".into()))?,
        ),
        None => None,
    };
    let mut parsed = Vec::with_capacity(request.entries.len());
    let mut manifest = BTreeMap::new();
    for entry in &request.entries {
        let path = EntryPath::parse(&entry.path).map_err(|err| StoreError::BadRequest(format!("invalid path {:?}: {err}", entry.path)))?;
        let mode = parse_mode(&entry.mode).map_err(|err| StoreError::BadRequest(err.to_string()))?;
        if !valid_principal(&entry.owner) || !valid_principal(&entry.group) {
            return Err(StoreError::BadRequest(format!("{path}: invalid owner or group")));
        }
        let policy = Policy {
            mode,
            owner: entry.owner.clone(),
            group: entry.group.clone(),
            secret: entry.secret,
        };
        let key = match (entry.sealed, &content_key) {
            (false, _) => None,
            (true, Some(key)) => Some(key),
            (true, None) => {
                return Err(StoreError::BadRequest(format!(
                    "{path} is sealed, but the request carries no content key"
                )));
            }
        };
        let (hash, source) = match (&entry.content, &entry.entry_hash) {
            (Some(content), None) => (
                timed(|t| &mut t.hash, || hash_entry(key, &path, &policy, content.as_bytes())),
                Source::Sent(content.as_bytes()),
            ),
            (None, Some(hash)) => (
                Hash::from_hex(hash).map_err(|_| StoreError::BadRequest(format!("{path}: the entry hash is not 64 hex digits")))?,
                Source::Held,
            ),
            (Some(_), Some(_)) => {
                return Err(StoreError::BadRequest(format!(
                    "{path}: an entry is sent with its content or its hash, not both"
                )));
            }
            (None, None) => return Err(StoreError::BadRequest(format!("{path}: an entry needs its content or its hash"))),
        };
        if manifest
            .insert(
                path.to_string(),
                Manifested {
                    owner: policy.owner.clone(),
                    group: policy.group.clone(),
                    secret: policy.secret,
                    sealed: entry.sealed,
                },
            )
            .is_some()
        {
            return Err(StoreError::BadRequest(format!("{path} appears twice")));
        }
        parsed.push(ParsedEntry {
            path,
            policy,
            hash,
            key: key.cloned(),
            source,
        });
    }
    let computed = timed(|t| &mut t.hash, || root_hash(parsed.iter().map(|e| (&e.path, e.hash)))).to_hex();
    if computed != request.target_root {
        return Err(StoreError::RootMismatch(format!(
            "the entries hash to {computed}, not to the target root {}",
            request.target_root
        )));
    }
    Ok((parsed, manifest))
}

/// Something a shadow holds that is not an entry it could serve (`kind`: a symlink, a
/// special file, an unreadable file, a name the path rules refuse), as observed: its hash
/// names what is there, so a root covering it differs from any revision's.
pub fn other_entry(path: &str, kind: &str, detail: String) -> ObservedEntry {
    let mut hasher = blake3::Hasher::new();
    for part in ["etc-shadow non-file v1", path, kind, &detail] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    ObservedEntry {
        path: path.to_string(),
        entry_hash: hasher.finalize().to_hex().to_string(),
        mode: String::new(),
        owner: String::new(),
        group: String::new(),
        size: 0,
        kind: Some(kind.to_string()),
        detail: Some(detail),
    }
}

/// The root of what a shadow holds: `files`, the root of its entries, alone when nothing
/// else is there; with `others` (see [`other_entry`]), a root that no revision has.
pub fn observed_root(files: Hash, others: &[ObservedEntry]) -> Hash {
    if others.is_empty() {
        return files;
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"etc-shadow root with non-files v1");
    hasher.update(&files.0);
    for other in others {
        hasher.update(&(other.path.len() as u64).to_le_bytes());
        hasher.update(other.path.as_bytes());
        hasher.update(other.entry_hash.as_bytes());
    }
    Hash(*hasher.finalize().as_bytes())
}

/// One entry of a prepare, checked and hashed: for shadows kept elsewhere than in a
/// directory (control's etcd driver), which judge a prepare by the same rules.
pub struct CheckedEntry<'a> {
    pub path: EntryPath,
    pub policy: Policy,
    pub hash: Hash,
    /// Hashed under the request's content key.
    pub sealed: bool,
    /// The bytes sent; `None` for an entry sent by its hash alone (held by the shadow).
    pub content: Option<&'a [u8]>,
}

/// A prepare's entries checked as a directory shadow checks them (paths, modes, owners
/// and groups, content keys, no path twice) and proven to hash to its target root.
pub fn check_entries(request: &PrepareRequest) -> Result<Vec<CheckedEntry<'_>>> {
    let (parsed, _) = parse_entries(request)?;
    Ok(parsed
        .into_iter()
        .map(|entry| CheckedEntry {
            sealed: entry.key.is_some(),
            content: match entry.source {
                Source::Sent(bytes) => Some(bytes),
                Source::Held => None,
            },
            path: entry.path,
            policy: entry.policy,
            hash: entry.hash,
        })
        .collect())
}

/// An entry's hash: sealed under `key` when it has one, else plain.
pub fn hash_entry(key: Option<&domain::hash::ContentKey>, path: &EntryPath, policy: &Policy, content: &[u8]) -> Hash {
    match key {
        Some(key) => domain::hash::sealed_entry_hash(key, path, policy, content),
        None => entry_hash(path, policy, content),
    }
}

/// Whether `name` is a generation's directory name as the store makes them:
/// `r<rollout>-rev<revision>`, both decimal.
fn generation_name(name: &str) -> bool {
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    name.strip_prefix('r')
        .and_then(|rest| rest.split_once("-rev"))
        .is_some_and(|(rollout, revision)| digits(rollout) && digits(revision))
}

/// The state a slot (or the legacy file) holds, checked.
fn parse_state(loaded: &statefile::Loaded) -> Result<Persisted> {
    serde_json::from_slice::<Persisted>(&loaded.body)
        .map_err(|err| StoreError::Io(format!("{} is corrupt: {err}", loaded.file.display())))?
        .check(&loaded.file)
}

impl Persisted {
    /// Refuses a state whose names could lead outside the managed directory (a state file
    /// on a volume someone else can write).
    fn check(self, file: &Path) -> Result<Persisted> {
        let dirs = [&self.live, &self.staged]
            .into_iter()
            .flatten()
            .map(|g| g.dir.as_str())
            .chain(self.retired.iter().map(String::as_str));
        let original = |name: &String| {
            name.strip_prefix(ORIGINAL_PREFIX)
                .is_some_and(|stamp| !stamp.is_empty() && stamp.bytes().all(|b| b.is_ascii_digit()))
        };
        if dirs.chain(self.previous.iter().map(String::as_str)).all(generation_name) && self.originals.iter().all(original) {
            Ok(self)
        } else {
            Err(StoreError::Io(format!(
                "{} names directories the store never makes; refusing it",
                file.display()
            )))
        }
    }
}

/// A tree staged ahead of its rollout ([`Store::prestage`]). Kept in memory only: a
/// restart forgets it, and its directory (`..r0-rev<revision>`, a generation of no
/// rollout) is then an orphan that [`Store::clean_orphans`] removes.
struct Prestaged {
    base_root: String,
    root: String,
    revision: i64,
    content_key: Option<String>,
    /// Its directory's name, without the leading `..`.
    dir: String,
    manifest: BTreeMap<String, Manifested>,
    /// Every file's signature and hash as the stage's proof read them: bytes, never
    /// `stat` alone, so a prepare that takes the tree may trust what has not moved since.
    proven: Trusted,
    hook: Option<domain::protocol::HookRun>,
    /// Proven again once it settled, with the watcher's word since (see
    /// [`Store::vouch_stage`]).
    vouched: Option<Vouched>,
}

/// A tree proven by a walk during which the file watcher reported no change below the
/// managed directory's top level. It stays as proven for as long as that count of
/// changes stands and its directory is the same one: a prepare that takes it, and the
/// receipt of the commit that switches to it, need not walk it again (see
/// [`Store::vouch_stage`]). Only trees of [`VOUCH_MIN_FILES`] files or more are vouched
/// for: a smaller one is walked faster than the watcher is asked.
struct Vouched {
    /// The watcher's count of changes below the top level when the walk began.
    deep: u64,
    /// The tree's directory (device, inode).
    dir: (u64, u64),
    proof: Observed,
}

/// The fewest files a tree must have for the watcher to be asked to vouch for it.
const VOUCH_MIN_FILES: usize = 256;

/// The proof of a staged generation whose every hash goes back to bytes read (one taken
/// from a [`Prestaged`] tree): at its commit, the live tree's hash cache takes the
/// signatures that are out of the racy window, so the receipt and later checks need not
/// read those files again.
struct ByteProof {
    rollout: i64,
    files: Vec<(EntryPath, Hash, ObservedEntry)>,
    seen: Trusted,
    /// The racy window's edge when the proof was taken: only what had settled by then is
    /// cached.
    racy_after: Duration,
}

/// A walk's root, and the watcher's count of changes before it.
struct Known {
    root: Hash,
    changes: u64,
    /// The watcher's count of changes below the top level, and the top level as it was
    /// (see [`TopLevel`]): a change of the top level alone is checked there, not walked.
    deep: u64,
    top: Option<TopLevel>,
    /// The live generation's root when walked: a commit or a restart changes it.
    manifest: Option<String>,
    at: Instant,
}

/// The managed directory's top level when it holds nothing but the store's own: the
/// live generation's directory (device, inode) and the names linked into it. While it is
/// so and nothing changed below it, the live tree is what it was.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TopLevel {
    dir: (u64, u64),
    links: BTreeSet<String>,
}

/// A maintained root is answered at most this long before the tree is walked again
/// (`--rewalk-interval`).
pub const REWALK_INTERVAL: Duration = Duration::from_secs(600);

/// How long looks walk after a touch of the sync file did not come back in time.
const SYNC_SUSPENSION: Duration = Duration::from_secs(60);

/// The longest a validator may judge a tree staged ahead (see [`Store::prestage`]).
const PRESTAGE_VALIDATE: Duration = Duration::from_secs(2);

/// How long a look waits for the watcher to report its own touch of the sync file before
/// it stops trusting the watcher and walks.
const SYNC_TIMEOUT: Duration = Duration::from_secs(2);

/// The file watcher's account of a managed directory, fed by the agent's watcher: a count
/// of the changes it reported, and a sync file (`D/..etc-shadow-sync`, the store's own
/// name) whose touches it reports apart. A look touches the sync file and waits for that
/// touch to come back through the watcher: every change made before the look has then been
/// reported too (the kernel queues events in order), so an unchanged count means an
/// unchanged tree. A lost event (a queue overflow) counts as a change; a touch that does
/// not come back within two seconds makes looks walk for a minute, a watcher that failed
/// for good. Watchman's cookie files are the same idea.
#[derive(Debug)]
pub struct Watch {
    sync_file: PathBuf,
    changes: AtomicU64,
    /// The changes below the managed directory's own entries (inside a generation, say):
    /// a commit's switch changes only the top level, so a tree proven before the switch
    /// is vouched for after it while this count stands (see [`Store::commit`]).
    deep_changes: AtomicU64,
    synced: Mutex<u64>,
    reported: std::sync::Condvar,
    healthy: std::sync::atomic::AtomicBool,
    /// After a touch that did not come back in time: not trusted until then.
    suspended_until: Mutex<Option<Instant>>,
}

/// The name of the sync file inside the managed directory.
pub const SYNC_FILE: &str = "..etc-shadow-sync";

impl Watch {
    pub fn new(live: &Path) -> Watch {
        Watch {
            sync_file: live.join(SYNC_FILE),
            changes: AtomicU64::new(0),
            deep_changes: AtomicU64::new(0),
            synced: Mutex::new(0),
            reported: std::sync::Condvar::new(),
            healthy: std::sync::atomic::AtomicBool::new(true),
            suspended_until: Mutex::new(None),
        }
    }

    /// The sync file, whose events are [`Watch::sync_reported`] rather than changes.
    pub fn sync_file(&self) -> &Path {
        &self.sync_file
    }

    /// The watcher reported a change (or lost events: anything may have changed).
    pub fn changed(&self) {
        self.deep_changes.fetch_add(1, Ordering::SeqCst);
        self.changes.fetch_add(1, Ordering::SeqCst);
    }

    /// The watcher reported a change of `paths`. `names_only`: the event made, removed or
    /// renamed names and changed no content (not a write, a chmod or a directory that
    /// appeared or moved in, which may bring content nobody watched). Such a change of
    /// the managed directory's own entries (its links, `..data`, a generation's name) is
    /// not a change below them; anything else is.
    pub fn changed_at(&self, paths: &[PathBuf], names_only: bool) {
        let top_level = names_only && !paths.is_empty() && paths.iter().all(|p| p.parent() == self.sync_file.parent());
        if !top_level {
            self.deep_changes.fetch_add(1, Ordering::SeqCst);
        }
        self.changes.fetch_add(1, Ordering::SeqCst);
    }

    /// The watcher reported an event of the sync file.
    pub fn sync_reported(&self) {
        *self.synced.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.reported.notify_all();
    }

    /// The watcher stopped (an error): the tree is walked from now on.
    pub fn failed(&self) {
        if self.healthy.swap(false, Ordering::SeqCst) {
            tracing::warn!("the file watcher failed: every look walks the tree from now on");
        }
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    /// Touches the sync file and waits until the watcher reported it: the counts of
    /// changes then cover every change made before (all of them, and those below the
    /// top level). `None` when the watch cannot be trusted.
    fn sync_both(&self) -> Option<(u64, u64)> {
        if !self.healthy() {
            return None;
        }
        {
            let mut suspended = self.suspended_until.lock().unwrap_or_else(|p| p.into_inner());
            match *suspended {
                Some(until) if Instant::now() < until => return None,
                Some(_) => *suspended = None,
                None => {}
            }
        }
        let before = *self.synced.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(err) = self.touch() {
            tracing::warn!(%err, "cannot touch the sync file; walking");
            return None;
        }
        let guard = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, timeout) = self
            .reported
            .wait_timeout_while(guard, SYNC_TIMEOUT, |synced| *synced == before)
            .unwrap_or_else(|p| p.into_inner());
        drop(guard);
        if timeout.timed_out() {
            tracing::warn!("the file watcher did not report the sync file in time: looks walk the tree for a minute");
            *self.suspended_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + SYNC_SUSPENSION);
            return None;
        }
        // Deep first: a change counts there before it counts in all (see `changed`), so
        // a pair read here never shows a deep change without the change itself.
        let deep = self.deep_changes.load(Ordering::SeqCst);
        Some((self.changes.load(Ordering::SeqCst), deep))
    }

    /// Sets the sync file's times to now (never following a link), creating it if gone.
    fn touch(&self) -> io::Result<()> {
        use nix::sys::stat::{UtimensatFlags, utimensat};
        use nix::sys::time::TimeSpec;
        let now = TimeSpec::UTIME_NOW;
        match utimensat(None, &self.sync_file, &now, &now, UtimensatFlags::NoFollowSymlink) {
            Err(nix::errno::Errno::ENOENT) => {
                use std::os::unix::fs::OpenOptionsExt;
                OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o600)
                    .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
                    .open(&self.sync_file)
                    .map(drop)
            }
            other => other.map_err(io::Error::from),
        }
    }
}

pub struct Store {
    live: PathBuf,
    state_dir: PathBuf,
    state_file: Mutex<statefile::StateFile>,
    pinned_control_plane: Option<String>,
    persisted: Persisted,
    /// The state as last read or saved: an operation that changed `persisted` and failed
    /// before it saved must leave no trace, so each operation starts from this.
    saved: Persisted,
    hashes: HashCache,
    /// The node's hooks (validate before prepared, reload after the switch, health).
    hooks: Option<std::sync::Arc<hooks::Hooks>>,
    /// [`RACY_WINDOW`]; tests that edit files in bursts shorten it.
    racy_window: Duration,
    progress: std::sync::Arc<Progress>,
    prestaged: Option<Prestaged>,
    staged_proof: Option<ByteProof>,
    /// The staged generation's rollout and the watcher's deep count when its proof began
    /// (with its directory): the commit's receipt is vouched for while both stand.
    staged_vouch: Option<(i64, u64, (u64, u64))>,
    /// A committed generation's byte proof not yet given to the hash cache: a receipt
    /// the watcher vouched for did not need it, so the next walk of the live tree takes it
    /// (see [`Store::trust_proof`]).
    untrusted_proof: Mutex<Option<ByteProof>>,
    /// Set while a tree is staged ahead: it stops for a rollout's call (see
    /// [`Progress::foreground`]).
    background: bool,
    /// The file watcher's account of the managed directory (the agent's), and the root
    /// the last walk found with the count of changes it had seen before it: while no
    /// change was seen since, a look answers that root without walking.
    watch: Option<std::sync::Arc<Watch>>,
    known: Mutex<Option<Known>>,
    walks: AtomicU64,
    /// Looks at any tree (the live one, a stage, a staged generation).
    looks: AtomicU64,
    /// The longest a maintained root is answered without walking.
    rewalk_interval: Duration,
    /// Tests: runs after the held files were proven, before they are linked.
    #[cfg(test)]
    after_hold: Option<Box<dyn FnMut() + Send>>,
    /// Tests: runs right after a commit's switch, before its receipt.
    #[cfg(test)]
    after_switch: Option<Box<dyn FnMut() + Send>>,
    /// Tests: every save fails as on a full disk.
    #[cfg(test)]
    fail_saves: bool,
}

/// How far the running prepare has come, readable without the store's lock: a writer
/// waiting on a large prepare asks, to tell a shadow that is working from a dead one.
#[derive(Debug, Default)]
pub struct Progress {
    rollout: std::sync::atomic::AtomicI64,
    /// Entries proven, linked, written or read back so far by that rollout's prepares
    /// (a prepare sent again after `incomplete` goes on counting).
    steps: AtomicU64,
    /// Set while a prepare runs: nothing else (a check's walk, the watcher's) counts.
    running: std::sync::atomic::AtomicBool,
    /// Prepares, commits and aborts waiting for the store or running: a tree being staged
    /// ahead (background work) stops at its next step when one is.
    foreground: AtomicU64,
}

/// Held by a rollout's call to the store from before it waits for the store until it is
/// done (see [`Progress::foreground`]).
pub struct Foreground<'a>(&'a Progress);

impl Drop for Foreground<'_> {
    fn drop(&mut self) {
        self.0.foreground.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Progress {
    /// The steps made by `rollout`'s prepare (0 when another one is, or none ran).
    pub fn of(&self, rollout: i64) -> u64 {
        if self.rollout.load(Ordering::SeqCst) == rollout {
            self.steps.load(Ordering::SeqCst)
        } else {
            0
        }
    }

    /// Counts the steps of `rollout`'s prepare until the guard drops.
    fn start(&self, rollout: i64) -> Running<'_> {
        if self.rollout.swap(rollout, Ordering::SeqCst) != rollout {
            self.steps.store(0, Ordering::SeqCst);
        }
        self.running.store(true, Ordering::SeqCst);
        Running(self)
    }

    fn step(&self) {
        if self.running.load(Ordering::Relaxed) {
            self.steps.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Marks a rollout's call (prepare, commit, abort) as waiting for the store or running
    /// until the guard drops: staging ahead yields to it.
    pub fn foreground(&self) -> Foreground<'_> {
        self.foreground.fetch_add(1, Ordering::SeqCst);
        Foreground(self)
    }

    fn foreground_waiting(&self) -> bool {
        self.foreground.load(Ordering::SeqCst) > 0
    }
}

/// A prepare counting its steps (see [`Progress::start`]).
struct Running<'a>(&'a Progress);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::SeqCst);
    }
}

/// A live file [`Store::hold`] proved to hash to an entry, held open until it is linked.
struct HeldFile {
    file: File,
    /// Its signature when its hash was established.
    before: FileSignature,
    /// Its content older than the racy window then (a hash of a file written just now may
    /// not cover a write in the same timestamp tick).
    settled: bool,
}

/// A generation written, proven and validated ([`Store::build_generation`]).
struct Built {
    root: String,
    hook: Option<domain::protocol::HookRun>,
    /// Each file's signature and hash as the proof found them.
    proven: Trusted,
}

/// A file linked into a new generation: its signature after the link, and its proven hash.
struct Linked {
    after: FileSignature,
    hash: Hash,
}

/// What `stat` says of a file; if none of it changed, neither did the file. `ctime` moves
/// on every write, chmod, chown and rename and cannot be set back from user space, so a
/// restored `mtime` does not hide an edit.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileSignature {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    mode: u32,
    uid: u32,
    gid: u32,
}

/// Timestamps after this one are inside the racy window (see [`RACY_WINDOW`]).
fn racy_after(window: Duration) -> Duration {
    SystemTime::now()
        .checked_sub(window)
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .unwrap_or_default()
}

impl FileSignature {
    /// Whether the content was last written before `racy_after`: a write now would move
    /// `mtime` visibly, whatever the clock's tick.
    fn settled(&self, racy_after: Duration) -> bool {
        Duration::new(u64::try_from(self.mtime.0).unwrap_or(0), u32::try_from(self.mtime.1).unwrap_or(0)) < racy_after
    }

    /// Whether its inode last changed (content, mode, owner, links) before `racy_after`:
    /// a later change moves `ctime` visibly, so `stat` can vouch for it.
    fn changed_before(&self, racy_after: Duration) -> bool {
        Duration::new(u64::try_from(self.ctime.0).unwrap_or(0), u32::try_from(self.ctime.1).unwrap_or(0)) < racy_after
    }

    /// Whether `self` (a file just linked) is `before` with only the link's mark on it:
    /// the same inode, size, times, mode and owners, and a `ctime` from the moment of the
    /// link (`from`..`to`, widened by a coarse clock's tick).
    fn only_linked_since(&self, before: &FileSignature, from: SystemTime, to: SystemTime) -> bool {
        let tick = Duration::from_millis(20);
        let at = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let ctime = Duration::new(u64::try_from(self.ctime.0).unwrap_or(0), u32::try_from(self.ctime.1).unwrap_or(0));
        let same = FileSignature {
            ctime: before.ctime,
            ..self.clone()
        };
        same == *before && ctime + tick >= at(from) && ctime <= at(to) + tick
    }

    fn of(meta: &fs::Metadata) -> FileSignature {
        FileSignature {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
        }
    }
}

/// Entry hashes of files already read, so observing the live tree re-reads and re-hashes
/// only the files that changed since the last look.
#[derive(Default)]
struct HashCache {
    /// By entry path: only the live tree is cached (`observe` with `cached`).
    entries: Mutex<HashMap<String, (FileSignature, Manifested, Hash, ObservedEntry)>>,
    files_hashed: AtomicU64,
    /// The last look at the live tree met files changed inside the racy window, which
    /// it could not cache: a look once they settled reads them for the last time.
    unsettled: std::sync::atomic::AtomicBool,
}

/// A file changed less than this long ago may change again within the same timestamp
/// tick, invisibly to `stat`; its hash is not cached until it is older (as git does with
/// "racily clean" index entries).
const RACY_WINDOW: Duration = Duration::from_secs(1);

/// Where the time of the last prepare or commit went, for the benchmark and the agent's
/// `Server-Timing` header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    /// Writing file contents (before their fsync).
    pub write: Duration,
    /// fsync of files and directories.
    pub fsync: Duration,
    /// Hashing: checking the request, reading back what was staged, the live root.
    pub hash: Duration,
    /// The whole operation.
    pub total: Duration,
}

thread_local! {
    static TIMINGS: std::cell::Cell<Timings> = const { std::cell::Cell::new(Timings { write: Duration::ZERO, fsync: Duration::ZERO, hash: Duration::ZERO, total: Duration::ZERO }) };
}

fn timed<T>(field: fn(&mut Timings) -> &mut Duration, op: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let result = op();
    TIMINGS.with(|cell| {
        let mut timings = cell.get();
        *field(&mut timings) += started.elapsed();
        cell.set(timings);
    });
    result
}

/// Starts counting for one operation on this thread.
fn reset_timings() -> Instant {
    TIMINGS.with(|cell| cell.set(Timings::default()));
    Instant::now()
}

/// The time spent by the last prepare or commit run on this thread.
pub fn last_timings() -> Timings {
    TIMINGS.with(|cell| cell.get())
}

fn finish_timings(started: Instant) {
    TIMINGS.with(|cell| {
        let mut timings = cell.get();
        timings.total = started.elapsed();
        cell.set(timings);
    });
}

fn fsync_dir(path: &Path) -> Result<()> {
    timed(|t| &mut t.fsync, || File::open(path).and_then(|dir| dir.sync_all()))
        .map_err(|err| io_error(format!("fsync {}", path.display()), err))
}

/// A simulated nearly full disk for tests (feature `failpoints`): once the budget from
/// `ETC_SHADOW_FAILPOINT_DISK_BYTES` is spent, writes fail with ENOSPC.
mod disk_budget {
    #[cfg(feature = "failpoints")]
    pub fn charge(bytes: usize) -> std::io::Result<()> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static SPENT: AtomicU64 = AtomicU64::new(0);
        let Some(budget) = std::env::var("ETC_SHADOW_FAILPOINT_DISK_BYTES")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        else {
            return Ok(());
        };
        let spent = SPENT.fetch_add(bytes as u64, Ordering::SeqCst) + bytes as u64;
        if spent > budget {
            return Err(std::io::Error::from_raw_os_error(28));
        }
        Ok(())
    }

    #[cfg(not(feature = "failpoints"))]
    #[inline]
    pub fn charge(_bytes: usize) -> std::io::Result<()> {
        Ok(())
    }
}

/// Faults for tests (feature `failpoints`), each chosen by an environment variable:
/// `ETC_SHADOW_FAILPOINT_CRASH=after_stage|after_switch` aborts the process (like
/// `kill -9`) after a prepare was staged and saved but before it is answered, or after
/// the live link switched but before the state recording it was saved;
/// `ETC_SHADOW_FAILPOINT_COMMIT=io` fails every commit before the switch (a disk that
/// cannot be written); `ETC_SHADOW_FAILPOINT_EDIT_AFTER_SWITCH=PATH` appends a line to
/// that live file right after the switch (a hand edit racing the commit).
mod failpoint {
    use std::path::Path;

    #[cfg(feature = "failpoints")]
    pub fn crash(point: &str) {
        if std::env::var("ETC_SHADOW_FAILPOINT_CRASH").is_ok_and(|wanted| wanted == point) {
            eprintln!("failpoint: crash {point}");
            std::process::abort();
        }
    }

    #[cfg(feature = "failpoints")]
    pub fn commit_fails() -> bool {
        std::env::var("ETC_SHADOW_FAILPOINT_COMMIT").is_ok_and(|v| v == "io")
    }

    #[cfg(feature = "failpoints")]
    pub fn edit_after_switch(live: &Path) {
        use std::io::Write;
        if let Ok(path) = std::env::var("ETC_SHADOW_FAILPOINT_EDIT_AFTER_SWITCH")
            && let Ok(mut file) = std::fs::OpenOptions::new().append(true).open(live.join(path))
        {
            let _ = file.write_all(b"# edited while the commit ran\n");
        }
    }

    /// `ETC_SHADOW_FAILPOINT_SLOW_STAGING_MS=N`: each entry staged takes N ms more (a
    /// slow disk that is still making progress).
    #[cfg(feature = "failpoints")]
    pub fn slow_staging() {
        if let Some(ms) = std::env::var("ETC_SHADOW_FAILPOINT_SLOW_STAGING_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
    }

    #[cfg(not(feature = "failpoints"))]
    #[inline]
    pub fn slow_staging() {}

    #[cfg(not(feature = "failpoints"))]
    #[inline]
    pub fn crash(_point: &str) {}

    #[cfg(not(feature = "failpoints"))]
    #[inline]
    pub fn commit_fails() -> bool {
        false
    }

    #[cfg(not(feature = "failpoints"))]
    #[inline]
    pub fn edit_after_switch(_live: &Path) {}
}

/// How [`Store::observe`] reads a tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// The managed directory: the store's names skipped, its links followed.
    Managed,
    /// One generation directory, as it is.
    Generation,
}

/// What one look at a tree found.
#[derive(Default)]
struct Observed {
    /// Regular files with their entry hashes, by path.
    files: Vec<(EntryPath, Hash, ObservedEntry)>,
    /// Everything that is not a regular file the store could serve, by path.
    others: Vec<ObservedEntry>,
    /// Each regular file's `stat` signature and entry hash, by path: a later look trusts
    /// them for files whose signature has not moved (see [`Trusted`]).
    seen: Trusted,
}

/// Entry hashes a look at a tree may take without reading the file, by path: each with
/// the `stat` signature the file had when its hash was established. Taken only while
/// the file still has that signature and its content is settled (its `mtime` older than
/// [`RACY_WINDOW`]), so a write since, even within the same timestamp tick, is read.
type Trusted = HashMap<String, (FileSignature, Hash)>;

impl Observed {
    fn other(&mut self, path: &str, kind: &str, detail: String) {
        self.others.push(other_entry(path, kind, detail));
    }

    /// The Merkle root of the regular files; with anything else present, a root that no
    /// revision has (it covers what else is there).
    fn root(&self) -> Hash {
        observed_root(root_hash(self.files.iter().map(|(path, hash, _)| (path, *hash))), &self.others)
    }

    fn entries(self) -> Vec<ObservedEntry> {
        let mut entries: Vec<ObservedEntry> = self.files.into_iter().map(|(_, _, entry)| entry).chain(self.others).collect();
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        entries
    }
}

/// Reads a file without following a symlink at its last component.
fn read_no_follow(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits() | nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)?;
    let mut content = Vec::new();
    file.read_to_end(&mut content)?;
    Ok(content)
}

/// A directory held open: names are resolved inside this very directory (through
/// `/proc/self/fd`), so renaming it or putting a symlink in its place meanwhile changes
/// nothing about where files go. Opened without following a symlink.
struct DirHandle {
    file: File,
}

impl DirHandle {
    fn open(path: &Path) -> Result<DirHandle> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_DIRECTORY.bits() | nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(path)
            .map_err(|err| io_error(format!("open {}", path.display()), err))?;
        Ok(DirHandle { file })
    }

    /// The path of `name` inside this directory, whatever its own path is now.
    fn path(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&self.file))).join(name)
    }

    /// A new directory inside this one (refused if the name exists), held open; it must be
    /// this process's own, so a directory swapped in between is not written to.
    fn create_dir(&self, name: &str, mode: u32) -> Result<DirHandle> {
        fs::DirBuilder::new()
            .mode(mode)
            .create(self.path(name))
            .map_err(|err| io_error(format!("create {name}"), err))?;
        let dir = DirHandle::open(&self.path(name))?;
        let meta = dir.file.metadata().map_err(|err| io_error(format!("stat {name}"), err))?;
        if meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err(StoreError::Io(format!("{name} was replaced as it was made")));
        }
        Ok(dir)
    }

    /// A new file inside this one, owner-only, never following a link, never overwriting.
    fn create_file(&self, name: &str) -> Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(self.path(name))
            .map_err(|err| io_error(format!("create {name}"), err))
    }

    fn chmod(&self, mode: u32) -> Result<()> {
        self.file
            .set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|err| io_error("chmod a directory", err))
    }

    fn sync(&self) -> Result<()> {
        timed(|t| &mut t.fsync, || self.file.sync_all()).map_err(|err| io_error("fsync a directory", err))
    }

    /// Whether `path` (not followed) is this very directory.
    /// The directory's (device, inode).
    fn identity(&self) -> Option<(u64, u64)> {
        self.file.metadata().ok().map(|m| (m.dev(), m.ino()))
    }

    fn is_at(&self, path: &Path) -> bool {
        match (self.file.metadata(), fs::symlink_metadata(path)) {
            (Ok(held), Ok(there)) => there.is_dir() && held.dev() == there.dev() && held.ino() == there.ino(),
            _ => false,
        }
    }
}

/// The policy of a file on disk as an entry with `expected` reads it: its mode, and its
/// owner and group only where the entry manages them (names looked up by `user_of` and
/// `group_of`).
fn disk_policy(
    meta: &fs::Metadata,
    expected: &Manifested,
    user_of: &mut impl FnMut(u32) -> String,
    group_of: &mut impl FnMut(u32) -> String,
) -> Policy {
    Policy {
        mode: meta.permissions().mode() & 0o7777,
        owner: if expected.owner.is_empty() {
            String::new()
        } else {
            user_of(meta.uid())
        },
        group: if expected.group.is_empty() {
            String::new()
        } else {
            group_of(meta.gid())
        },
        secret: expected.secret,
    }
}

fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

fn group_name(gid: u32) -> String {
    nix::unistd::Group::from_gid(gid.into())
        .ok()
        .flatten()
        .map(|g| g.name)
        .unwrap_or_else(|| gid.to_string())
}

impl Store {
    /// Opens the store, creating the state directory. `pinned_control_plane` binds the
    /// store to that id from the start (`--control-plane-id`).
    pub fn open(live: &Path, state_dir: &Path, pinned_control_plane: Option<String>) -> Result<Store> {
        if fs::symlink_metadata(live).is_ok_and(|meta| meta.file_type().is_symlink()) {
            // Earlier versions pointed it at `<their state directory>/revisions/r<n>-rev<m>`
            // (for a directory shadow, under the control plane's data directory).
            let target = fs::read_link(live).unwrap_or_default();
            let old_layout = target.parent().and_then(Path::file_name).is_some_and(|n| n == "revisions")
                && target.file_name().is_some_and(|n| generation_name(&n.to_string_lossy()));
            if !old_layout {
                return Err(StoreError::BadRequest(format!(
                    "{} is a symlink to {}: give the real directory to manage",
                    live.display(),
                    target.display()
                )));
            }
            // The layout of earlier versions: the managed path was a link into the state
            // directory. It becomes a plain directory; the next reconcile fills it.
            tracing::warn!(path = %live.display(), "replacing the old live link by a managed directory; reconcile this shadow");
            fs::remove_file(live).map_err(|err| io_error(format!("remove the old link {}", live.display()), err))?;
        }
        fs::create_dir_all(live).map_err(|err| io_error(format!("create {}", live.display()), err))?;
        fs::create_dir_all(state_dir).map_err(|err| io_error(format!("create {}", state_dir.display()), err))?;
        fs::set_permissions(state_dir, fs::Permissions::from_mode(0o700))
            .map_err(|err| io_error(format!("chmod {}", state_dir.display()), err))?;
        let mut state_file = statefile::StateFile::new(state_dir);
        let persisted = match state_file.load() {
            Ok(Some(loaded)) => parse_state(&loaded)?,
            Ok(None) => Persisted::default(),
            Err(err) => return Err(io_error(format!("read {}", state_file.describe()), err)),
        };
        if let (Some(pinned), Some(bound)) = (&pinned_control_plane, &persisted.control_plane_id)
            && pinned != bound
        {
            return Err(StoreError::Fenced(format!(
                "the state is bound to control plane {bound}, not {pinned}"
            )));
        }
        let mut store = Store {
            live: live.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            state_file: Mutex::new(state_file),
            pinned_control_plane,
            saved: persisted.clone(),
            persisted,
            hashes: HashCache::default(),
            hooks: None,
            racy_window: RACY_WINDOW,
            progress: Default::default(),
            prestaged: None,
            staged_proof: None,
            staged_vouch: None,
            untrusted_proof: Mutex::new(None),
            background: false,
            watch: None,
            known: Mutex::new(None),
            walks: AtomicU64::new(0),
            looks: AtomicU64::new(0),
            rewalk_interval: REWALK_INTERVAL,
            #[cfg(test)]
            after_hold: None,
            #[cfg(test)]
            after_switch: None,
            #[cfg(test)]
            fail_saves: false,
        };
        let lock = store.lock_state()?;
        store.clean_orphans(false)?;
        store.finish_interrupted_switch()?;
        drop(lock);
        Ok(store)
    }

    /// Killed (or failed) after the live link switched but before the state recorded it:
    /// the switch happens only for a commit, so the commit is finished now, before anything
    /// could drop the generation readers are in.
    fn finish_interrupted_switch(&mut self) -> Result<()> {
        if let Some(staged) = self.persisted.staged.clone()
            && self.linked_generation() == Some(self.generation_dir(&staged.dir))
        {
            self.switch_to(&staged)?;
            self.finish_commit(staged)?;
        }
        Ok(())
    }

    /// The directory of a generation (by its name in the journal) inside the managed one.
    fn generation_dir(&self, dir: &str) -> PathBuf {
        self.live.join(format!("..{dir}"))
    }

    /// Whether a top-level name of the managed directory is the store's own: the live link
    /// (and its temporary), a generation it keeps (live, staged, previous) or is staging,
    /// an original it moved aside, the state directory. A planted name of the same shape
    /// is not the store's: it is seen, as drift.
    fn reserved(&self, name: &str) -> bool {
        let state_inside =
            self.state_dir.parent() == Some(self.live.as_path()) && self.state_dir.file_name().is_some_and(|n| n.to_string_lossy() == name);
        let kept = [&self.persisted.live, &self.persisted.staged]
            .into_iter()
            .flatten()
            .map(|g| g.dir.as_str())
            .chain(self.persisted.previous.as_deref())
            .chain(self.prestaged.as_ref().map(|p| p.dir.as_str()))
            .chain(self.persisted.retired.iter().map(String::as_str))
            .any(|dir| name.strip_prefix("..") == Some(dir));
        state_inside
            || kept
            || name == DATA_LINK
            || name == format!("{DATA_LINK}.tmp")
            || name == SYNC_FILE
            || self.persisted.originals.iter().any(|o| o == name)
            || (name.starts_with("..r") && name.ends_with(".tmp") && self.staging_shape(name))
            || (name.starts_with("..trash-") && self.staging_shape(name))
    }

    /// The shape of a generation's name (`..r<rollout>-rev<revision>`, optionally as
    /// `..trash-…` or `….tmp`), for what a crash may leave behind while it is written or
    /// removed.
    fn staging_shape(&self, name: &str) -> bool {
        let rest = name.strip_prefix("..trash-").unwrap_or(name);
        let rest = rest.strip_prefix("..").unwrap_or(rest);
        generation_name(rest.strip_suffix(".tmp").unwrap_or(rest))
    }

    /// The live generation's directory, as the live link says (`None` before the first
    /// commit, or when the link was tampered with).
    fn linked_generation(&self) -> Option<PathBuf> {
        let target = fs::read_link(self.live.join(DATA_LINK)).ok()?;
        let name = target.to_str()?;
        if name.contains('/') || !self.reserved(name) {
            return None;
        }
        let dir = self.live.join(name);
        fs::symlink_metadata(&dir).ok().filter(|m| m.is_dir()).map(|_| dir)
    }

    /// Removes generation directories neither live, staged, previous, staged ahead nor
    /// linked: those a crash left half-written, and those retired by a commit. Each is
    /// renamed out of the way and emptied in the background, unless `wait`: then this
    /// returns once they are gone (a stage made right after sees their unlinks settled).
    fn clean_orphans(&mut self, wait: bool) -> Result<()> {
        let mut keep: Vec<String> = [&self.persisted.live, &self.persisted.staged]
            .into_iter()
            .flatten()
            .map(|g| format!("..{}", g.dir))
            .collect();
        keep.extend(self.persisted.previous.iter().map(|dir| format!("..{dir}")));
        keep.extend(self.prestaged.iter().map(|p| format!("..{}", p.dir)));
        if let Some(target) = fs::read_link(self.live.join(DATA_LINK))
            .ok()
            .and_then(|t| t.to_str().map(str::to_string))
        {
            keep.push(target);
        }
        let mut emptying = Vec::new();
        let entries = fs::read_dir(&self.live).map_err(|err| io_error(format!("list {}", self.live.display()), err))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // A generation shaped like the store's but recorded nowhere: staged by a
            // process killed before it saved its state (or planted), or retired. Never a
            // directory a reader is in: the live link's target is kept.
            let generation = name.starts_with("..r") && self.staging_shape(&name) && !keep.contains(&name);
            let trash = name.starts_with("..trash-") && self.staging_shape(&name);
            let doomed = if generation {
                let trash = self.live.join(format!("..trash-{name}"));
                if fs::rename(entry.path(), &trash).is_ok() {
                    trash
                } else {
                    entry.path()
                }
            } else if trash {
                entry.path()
            } else {
                continue;
            };
            emptying.push(std::thread::spawn(move || {
                let _ = fs::remove_dir_all(doomed);
            }));
        }
        self.persisted.retired.clear();
        if wait {
            // A rollout's call waiting for the store is not kept waiting for this: the
            // rest is emptied in the background.
            while !emptying.iter().all(std::thread::JoinHandle::is_finished) {
                if self.progress.foreground_waiting() {
                    return Err(StoreError::Conflict(
                        "a rollout's call came first: staging ahead stopped, and is done again after it".into(),
                    ));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(())
    }

    /// Takes the state directory's lock (held until the guard drops) and reads the state
    /// again: two processes may open the same shadow (two control planes registering one
    /// backup volume), and each write must see the other's fence.
    fn lock_state(&mut self) -> Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.state_dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&path)
            .map_err(|err| io_error(format!("open {}", path.display()), err))?;
        // Waited for a bounded time: the holder may be a process that is stopped (SIGSTOP,
        // a replica of the control plane paused on this machine) and would keep every
        // other writer, and the rollout waiting on it, blocked for as long as it stays so.
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(StoreError::Io(format!(
                        "{} is held by another process for more than {} s (a control plane stopped or stuck while writing here); try again",
                        path.display(),
                        LOCK_WAIT.as_secs()
                    )));
                }
                Err(std::fs::TryLockError::Error(err)) => return Err(io_error(format!("lock {}", path.display()), err)),
            }
        }
        // Read again only when another process saved it since (see [`statefile`]).
        let mut state_file = self.state_file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match state_file.load_if_changed() {
            Ok(None) => {}
            Ok(Some(Some(loaded))) => self.saved = parse_state(&loaded)?,
            Ok(Some(None)) => self.saved = Persisted::default(),
            Err(err) => return Err(io_error(format!("read {}", state_file.describe()), err)),
        }
        drop(state_file);
        self.persisted = self.saved.clone();
        Ok(lock)
    }

    /// Saves the state durably: one slot overwritten in place and fdatasynced (see
    /// [`statefile`]).
    fn save(&mut self) -> Result<()> {
        #[cfg(test)]
        if self.fail_saves {
            return Err(io_error("save the state", io::Error::from_raw_os_error(28)));
        }
        let bytes = serde_json::to_vec(&self.persisted).map_err(|err| StoreError::Io(err.to_string()))?;
        let mut state_file = self.state_file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        state_file
            .save(&bytes, disk_budget::charge)
            .map_err(|err| io_error(format!("save {}", state_file.describe()), err))?;
        drop(state_file);
        self.saved = self.persisted.clone();
        Ok(())
    }

    fn remember(&mut self, rollout: i64, phase: RolloutPhase) {
        self.persisted.history.retain(|(id, _)| *id != rollout);
        self.persisted.history.push((rollout, phase));
        let excess = self.persisted.history.len().saturating_sub(HISTORY);
        self.persisted.history.drain(..excess);
        let remembered: BTreeSet<i64> = self.persisted.history.iter().map(|(id, _)| *id).collect();
        self.persisted.aborted_roots.retain(|id, _| remembered.contains(id));
    }

    /// Checks the writer's identity (bound control plane, epoch) without recording it, so
    /// a refused write — a stale copy of the control plane, say — cannot fence the real one.
    fn check_fence(&self, control_plane_id: &str, epoch: i64) -> Result<()> {
        let bound = self.persisted.control_plane_id.as_deref().or(self.pinned_control_plane.as_deref());
        if let Some(bound) = bound
            && bound != control_plane_id
        {
            return Err(StoreError::Fenced(format!(
                "this shadow belongs to control plane {bound}; refused a write from {control_plane_id}"
            )));
        }
        if epoch < self.persisted.highest_epoch {
            return Err(StoreError::Fenced(format!(
                "epoch {epoch} is lower than the highest seen ({}); a newer writer exists",
                self.persisted.highest_epoch
            )));
        }
        Ok(())
    }

    /// Records an accepted writer: binds the control plane on first write, raises the epoch.
    /// Persisted with the write it belongs to.
    fn accept_fence(&mut self, control_plane_id: &str, epoch: i64) {
        self.persisted.control_plane_id = Some(control_plane_id.to_string());
        self.persisted.highest_epoch = self.persisted.highest_epoch.max(epoch);
    }

    /// The manifest of what should be live, for interpreting the disk.
    fn live_manifest(&self) -> &BTreeMap<String, Manifested> {
        static EMPTY: BTreeMap<String, Manifested> = BTreeMap::new();
        self.persisted.live.as_ref().map_or(&EMPTY, |g| &g.manifest)
    }

    /// Everything under `root` as a reader finds it: every regular file with its entry
    /// hash, and everything else as an entry of its own kind. `Layout::Managed` reads the
    /// managed directory through the store's own top-level links into the linked
    /// generation (and judges every other name there); `Layout::Generation` reads one
    /// generation directory as it is. Files whose `stat` is unchanged since the last look
    /// are not read again when `cached`; without it every file is read (the read-back
    /// that proves what was staged).
    ///
    /// `trusted` names files whose hash is known (see [`Trusted`]): the files a prepare
    /// linked from the live generation, or everything a previous look at the same tree saw.
    fn observe(
        &self,
        root: &Path,
        layout: Layout,
        manifest: &BTreeMap<String, Manifested>,
        cached: bool,
        trusted: &Trusted,
    ) -> Result<Observed> {
        self.looks.fetch_add(1, Ordering::Relaxed);
        timed(|t| &mut t.hash, || self.observe_untimed(root, layout, manifest, cached, trusted))
    }

    fn observe_untimed(
        &self,
        root: &Path,
        layout: Layout,
        manifest: &BTreeMap<String, Manifested>,
        cached: bool,
        trusted: &Trusted,
    ) -> Result<Observed> {
        if cached && let Some(proof) = self.untrusted_proof.lock().unwrap_or_else(|p| p.into_inner()).take() {
            self.trust_proof(proof);
        }
        let mut observed = Observed::default();
        let racy_after = racy_after(self.racy_window);
        // Names of owners and groups, looked up once per look rather than once per file.
        let mut users: HashMap<u32, String> = HashMap::new();
        let mut groups: HashMap<u32, String> = HashMap::new();
        let mut user_of = |uid: u32| users.entry(uid).or_insert_with(|| user_name(uid)).clone();
        let mut group_of = |gid: u32| groups.entry(gid).or_insert_with(|| group_name(gid)).clone();
        let mut cache = self.hashes.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if cached {
            self.hashes.unsettled.store(false, Ordering::Relaxed);
        }
        let mut seen = std::collections::HashSet::new();
        // A file the writer does not manage may be anything (a key on a backup volume): it is
        // hashed under the writer's content key once the store has one, so neither its
        // hash nor the observed root lets anyone test a guess at it.
        let unmanaged = Manifested {
            sealed: true,
            ..Manifested::default()
        };
        // (where it is on disk, the path a reader of the managed directory uses)
        let mut found: Vec<(PathBuf, String)> = Vec::new();
        let top = match fs::read_dir(root) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(observed),
            Err(err) => return Err(io_error(format!("list {}", root.display()), err)),
        };
        let linked = match layout {
            Layout::Managed => self.linked_generation(),
            Layout::Generation => None,
        };
        for entry in top {
            let entry = entry.map_err(|err| io_error(format!("list {}", root.display()), err))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if layout == Layout::Managed {
                if self.reserved(&name) {
                    continue;
                }
                // The store's own link `name -> ..data/name` leads into the generation.
                if let (Some(generation), Ok(target)) = (&linked, fs::read_link(entry.path()))
                    && target == Path::new(DATA_LINK).join(&name)
                    && fs::symlink_metadata(generation.join(&name)).is_ok()
                {
                    found.push((generation.join(&name), name));
                    continue;
                }
            }
            found.push((entry.path(), name));
        }
        while let Some((disk, relative)) = found.pop() {
            self.step()?;
            // `lstat`: a symlink is what it is, never followed.
            let meta = match fs::symlink_metadata(&disk) {
                Ok(meta) => meta,
                Err(err) => {
                    observed.other(&relative, "unreadable", err.to_string());
                    continue;
                }
            };
            let file_type = meta.file_type();
            if file_type.is_symlink() {
                let target = fs::read_link(&disk).map(|t| t.display().to_string()).unwrap_or_default();
                observed.other(&relative, "symlink", format!("symlink to {target}"));
                continue;
            }
            if file_type.is_dir() {
                match fs::read_dir(&disk) {
                    Ok(entries) => {
                        for entry in entries.flatten() {
                            let name = entry.file_name().to_string_lossy().into_owned();
                            found.push((entry.path(), format!("{relative}/{name}")));
                        }
                    }
                    Err(err) => observed.other(&relative, "unreadable", format!("directory: {err}")),
                }
                continue;
            }
            if !file_type.is_file() {
                observed.other(&relative, "special", "not a regular file (fifo, socket or device)".to_string());
                continue;
            }
            let Ok(entry_path) = EntryPath::parse(&relative) else {
                observed.other(&relative, "invalid_name", "a name the path rules refuse".to_string());
                continue;
            };
            let expected = manifest.get(entry_path.as_str()).unwrap_or(&unmanaged);
            let signature = FileSignature::of(&meta);
            if cached {
                seen.insert(entry_path.as_str().to_string());
            }
            if cached
                && let Some((cached_signature, cached_expected, hash, entry)) = cache.get(entry_path.as_str())
                && *cached_signature == signature
                && cached_expected == expected
            {
                observed.seen.insert(entry_path.as_str().to_string(), (signature, *hash));
                observed.files.push((entry_path, *hash, entry.clone()));
                continue;
            }
            if let Some((known, hash)) = trusted.get(entry_path.as_str())
                && *known == signature
                && signature.settled(racy_after)
            {
                let hash = *hash;
                let entry = ObservedEntry {
                    path: entry_path.to_string(),
                    entry_hash: hash.to_hex(),
                    mode: format_mode(meta.permissions().mode() & 0o7777),
                    owner: user_of(meta.uid()),
                    group: group_of(meta.gid()),
                    size: i64::try_from(meta.size()).unwrap_or(i64::MAX),
                    kind: None,
                    detail: None,
                };
                observed.seen.insert(entry_path.as_str().to_string(), (signature, hash));
                observed.files.push((entry_path, hash, entry));
                continue;
            }
            let content = match read_no_follow(&disk) {
                Ok(content) => content,
                Err(err) => {
                    observed.other(&relative, "unreadable", err.to_string());
                    continue;
                }
            };
            self.hashes.files_hashed.fetch_add(1, Ordering::Relaxed);
            let policy = disk_policy(&meta, expected, &mut user_of, &mut group_of);
            let key = self
                .persisted
                .content_key
                .as_deref()
                .filter(|_| expected.sealed)
                .and_then(|text| domain::hash::ContentKey::from_hex(text).ok());
            let hash = hash_entry(key.as_ref(), &entry_path, &policy, &content);
            let entry = ObservedEntry {
                path: entry_path.to_string(),
                entry_hash: hash.to_hex(),
                mode: format_mode(policy.mode),
                owner: user_of(meta.uid()),
                group: group_of(meta.gid()),
                size: i64::try_from(content.len()).unwrap_or(i64::MAX),
                kind: None,
                detail: None,
            };
            // Cache only what `stat` can vouch for: a file still inside the racy window
            // could change again without changing its signature.
            if cached && signature.changed_before(racy_after) {
                cache.insert(
                    entry_path.as_str().to_string(),
                    (signature.clone(), expected.clone(), hash, entry.clone()),
                );
            } else if cached {
                cache.remove(entry_path.as_str());
                self.hashes.unsettled.store(true, Ordering::Relaxed);
            }
            // A later look may trust this reading only if its content was settled when
            // read: a write in the same timestamp tick after the read would not show.
            if signature.settled(racy_after) {
                observed.seen.insert(entry_path.as_str().to_string(), (signature, hash));
            }
            observed.files.push((entry_path, hash, entry));
        }
        if cached {
            // Forget files that are gone.
            cache.retain(|path, _| seen.contains(path));
        }
        observed.files.sort_by(|a, b| a.0.cmp(&b.0));
        observed.others.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(observed)
    }

    /// Whether the last look at the live tree met files too recently changed to cache
    /// (see [`RACY_WINDOW`]): looking again once the window passed makes later looks
    /// read nothing that has not changed.
    pub fn unsettled(&self) -> bool {
        self.hashes.unsettled.load(Ordering::Relaxed)
    }

    /// The racy window of this store (see [`RACY_WINDOW`]).
    pub fn racy_window(&self) -> Duration {
        self.racy_window
    }

    /// How many files this store has read and hashed since it was opened (the rest were
    /// known unchanged by `stat`).
    pub fn files_hashed(&self) -> u64 {
        self.hashes.files_hashed.load(Ordering::Relaxed)
    }

    /// The node's hooks from now on (the agent's `--hooks` file, or the control plane's
    /// configuration for a directory shadow).
    pub fn set_hooks(&mut self, hooks: Option<std::sync::Arc<hooks::Hooks>>) {
        self.hooks = hooks.filter(|h| !h.is_empty());
    }

    /// The node's part of a drill that needs the store: its live root and the validate
    /// hook on the live tree, read under the store's lock so no commit switches the tree
    /// meanwhile (`{staged}` is the managed directory itself: what readers see now, a hand
    /// edit included). The health probe ([`Store::hooks`]) runs without the lock.
    pub fn drill(&mut self) -> Result<domain::protocol::DrillAnswer> {
        let _lock = self.lock_state()?;
        let live_root = self.live_root()?.to_hex();
        Ok(domain::protocol::DrillAnswer {
            live_root,
            live_revision: self.persisted.live.as_ref().map(|g| g.revision),
            validate: self.hooks.as_deref().and_then(|h| h.validate(&self.live, &self.live, None)),
            health: None,
        })
    }

    /// The running prepare's progress, to be read while the store is busy with it.
    pub fn progress(&self) -> std::sync::Arc<Progress> {
        self.progress.clone()
    }

    /// The node's hooks, if it has any.
    pub fn hooks(&self) -> Option<std::sync::Arc<hooks::Hooks>> {
        self.hooks.clone()
    }

    /// The managed directory.
    pub fn live_dir(&self) -> &Path {
        &self.live
    }

    /// Runs the reload hook of a committed rollout whose reload is still owed (recorded
    /// with its switch), and records how it ended.
    fn run_pending_reload(&mut self) -> Result<()> {
        let Some(rollout) = self.persisted.reload_pending else {
            return Ok(());
        };
        if self.hooks.as_ref().is_none_or(|h| h.reload.is_none()) {
            // Nothing to run. The mark stays on disk until the next switch replaces it:
            // harmless, it only names this rollout, whose reload would be owed if a hook
            // appeared before its commit is repeated.
            self.persisted.reload_pending = None;
            return Ok(());
        }
        let run = self.hooks.as_deref().and_then(|h| h.reload(&self.live));
        if let Some(run) = &run
            && !run.ok
        {
            tracing::warn!(rollout, end = %hook_end(run), "the reload hook failed");
        }
        self.persisted.reload_pending = None;
        self.persisted.last_reload = run.map(|run| (rollout, run));
        self.save()
    }

    /// The reload run recorded for `rollout`, if there is one.
    fn reload_of(&self, rollout: i64) -> Option<domain::protocol::HookRun> {
        self.persisted
            .last_reload
            .as_ref()
            .filter(|(id, _)| *id == rollout)
            .map(|(_, run)| run.clone())
    }

    /// The root of what the managed directory holds right now.
    /// The live root: the maintained one when the file watcher saw no change since the
    /// last walk (see [`Watch`]), else walked.
    pub fn live_root(&self) -> Result<Hash> {
        let synced = self.watch.as_ref().and_then(|watch| watch.sync_both());
        if let Some((changes, deep)) = synced
            && let Some(known) = self.known.lock().unwrap_or_else(|p| p.into_inner()).as_mut()
            && known.manifest == self.persisted.live.as_ref().map(|g| g.root.clone())
            && known.at.elapsed() < self.rewalk_interval
        {
            if known.changes == changes {
                return Ok(known.root);
            }
            // Only the top level changed (a generation staged, renamed or retired, the
            // sync file made again): it is looked at, and the tree below it is as walked.
            if known.deep == deep && known.top.is_some() && self.top_level() == known.top {
                known.changes = changes;
                return Ok(known.root);
            }
        }
        Ok(self.walk(synced)?.root())
    }

    /// The managed directory's top level, when it holds nothing but the store's own
    /// names and links into the live generation (see [`TopLevel`]).
    fn top_level(&self) -> Option<TopLevel> {
        let linked = self.linked_generation()?;
        let there = fs::symlink_metadata(&linked).ok()?;
        let mut links = BTreeSet::new();
        for entry in fs::read_dir(&self.live).ok()? {
            let name = entry.ok()?.file_name().to_string_lossy().into_owned();
            if self.reserved(&name) {
                continue;
            }
            let ours = fs::read_link(self.live.join(&name)).is_ok_and(|t| t == Path::new(DATA_LINK).join(&name))
                && fs::symlink_metadata(linked.join(&name)).is_ok();
            if !ours {
                return None;
            }
            links.insert(name);
        }
        Some(TopLevel {
            dir: (there.dev(), there.ino()),
            links,
        })
    }

    /// Walks the live tree; remembers its root as maintained when the watcher had synced
    /// (`synced`: its count of changes before the walk) and nothing walked was too recent
    /// to cache (a look once it settled must read it).
    fn walk(&self, synced: Option<(u64, u64)>) -> Result<Observed> {
        // The top level as the walk found it: read before and after, kept only when the
        // same (a change of it during the walk would otherwise pass for what was walked).
        let top_before = synced.and_then(|_| self.top_level());
        let observed = self.observe(&self.live, Layout::Managed, self.live_manifest(), true, &Trusted::new())?;
        self.walks.fetch_add(1, Ordering::Relaxed);
        let top = top_before.filter(|before| self.top_level().as_ref() == Some(before));
        let known = synced.filter(|_| !self.unsettled()).map(|(changes, deep)| Known {
            root: observed.root(),
            changes,
            deep,
            top,
            manifest: self.persisted.live.as_ref().map(|g| g.root.clone()),
            at: Instant::now(),
        });
        *self.known.lock().unwrap_or_else(|p| p.into_inner()) = known;
        Ok(observed)
    }

    /// How many times this store walked its live tree (checks answered from the
    /// maintained root do not).
    pub fn walks(&self) -> u64 {
        self.walks.load(Ordering::Relaxed)
    }

    /// How many times this store walked any tree: the live one, a stage, a staged
    /// generation's proof.
    pub fn looks(&self) -> u64 {
        self.looks.load(Ordering::Relaxed)
    }

    /// The file watcher's account of the managed directory, from now on (see [`Watch`]).
    pub fn set_watch(&mut self, watch: std::sync::Arc<Watch>) {
        self.watch = Some(watch);
    }

    /// How long a maintained root is answered at most before the tree is walked again.
    pub fn set_rewalk_interval(&mut self, interval: Duration) {
        self.rewalk_interval = interval;
    }

    pub fn state(&self, with_entries: bool) -> Result<ShadowState> {
        let live_root = if with_entries { None } else { Some(self.live_root()?) };
        let observed = match live_root {
            Some(_) => None,
            None => {
                let synced = self.watch.as_ref().and_then(|watch| watch.sync_both());
                Some(self.walk(synced)?)
            }
        };
        let live_root = live_root.or_else(|| observed.as_ref().map(Observed::root)).unwrap_or(Hash::ZERO);
        Ok(ShadowState {
            control_plane_id: self.persisted.control_plane_id.clone().or(self.pinned_control_plane.clone()),
            highest_epoch: self.persisted.highest_epoch,
            live_revision: self.persisted.live.as_ref().map(|g| g.revision),
            live_root: live_root.to_hex(),
            staged: self.persisted.staged.as_ref().map(|g| StagedInfo {
                rollout: g.rollout,
                revision: g.revision,
                root: g.root.clone(),
            }),
            entries: observed.map(Observed::entries),
            audit_head: self.persisted.audit_head.clone(),
        })
    }

    /// The live bytes of one entry, found as a reader of the managed directory finds it
    /// (through the store's own links) without following any other symlink.
    pub fn read_entry(&self, path: &str) -> Result<Vec<u8>> {
        let path = EntryPath::parse(path).map_err(|err| StoreError::BadRequest(format!("invalid path: {err}")))?;
        let not_found = || StoreError::NotFound(format!("no live entry {path}"));
        let mut segments = path.as_str().split('/');
        let first = segments.next().ok_or_else(not_found)?;
        let top = self.live.join(first);
        let mut file = match (self.linked_generation(), fs::read_link(&top)) {
            (Some(generation), Ok(target)) if target == Path::new(DATA_LINK).join(first) => generation.join(first),
            _ => top,
        };
        for segment in segments {
            if !fs::symlink_metadata(&file).is_ok_and(|m| m.is_dir()) {
                return Err(not_found());
            }
            file = file.join(segment);
        }
        if !fs::symlink_metadata(&file).is_ok_and(|m| m.is_file()) {
            return Err(not_found());
        }
        read_no_follow(&file).map_err(|err| io_error(format!("read {path}"), err))
    }

    pub fn status(&self, rollout: i64) -> RolloutAnswer {
        if let Some(staged) = self.persisted.staged.as_ref().filter(|g| g.rollout == rollout) {
            return RolloutAnswer {
                rollout,
                phase: RolloutPhase::Prepared,
                root: Some(staged.root.clone()),
                hook: None,
            };
        }
        if let Some(live) = self.persisted.live.as_ref().filter(|g| g.rollout == rollout) {
            return RolloutAnswer {
                rollout,
                phase: RolloutPhase::Committed,
                root: self.live_root().ok().map(|r| r.to_hex()).or(Some(live.root.clone())),
                hook: None,
            };
        }
        let phase = self
            .persisted
            .history
            .iter()
            .rev()
            .find(|(id, _)| *id == rollout)
            .map_or(RolloutPhase::Unknown, |(_, p)| *p);
        RolloutAnswer {
            rollout,
            phase,
            root: None,
            hook: None,
        }
    }

    /// Stages a revision durably. Checks, in order: the writer's fence, that the entries
    /// hash to the target root, and (unless a reconcile) that the live root is the base.
    /// Stages a revision durably (see the module docs). [`last_timings`] tells where the
    /// time went.
    pub fn prepare(&mut self, rollout: i64, request: &PrepareRequest) -> Result<RolloutAnswer> {
        let started = reset_timings();
        let result = self.prepare_untimed(rollout, request);
        finish_timings(started);
        result
    }

    fn prepare_untimed(&mut self, rollout: i64, request: &PrepareRequest) -> Result<RolloutAnswer> {
        if rollout <= 0 || request.revision < 0 {
            return Err(StoreError::BadRequest(
                "a rollout's id is positive and its revision not negative".into(),
            ));
        }
        let progress = self.progress.clone();
        let _counting = progress.start(rollout);
        let started_at = Instant::now();
        let _lock = self.lock_state()?;
        // Waiting for the lock is the only part of a prepare that makes no progress the
        // writer can see: it counts against the validator's budget, the rest does not.
        let waited = started_at.elapsed();
        self.finish_interrupted_switch()?;
        self.clean_orphans(false)?;
        self.check_fence(&request.control_plane_id, request.epoch)?;
        if let Some(staged) = self.persisted.staged.as_ref().filter(|g| g.rollout == rollout) {
            if staged.root == request.target_root {
                return Ok(RolloutAnswer {
                    rollout,
                    phase: RolloutPhase::Prepared,
                    root: Some(staged.root.clone()),
                    hook: None,
                });
            }
            return Err(StoreError::Conflict(format!(
                "rollout {rollout} is already staged with another root"
            )));
        }
        // Revisions only grow in one control plane's history: a writer offering an older
        // one than this shadow last committed is a copy restored from an old backup, and
        // must not move the shadow backwards, not even by a reconcile.
        if let Some(live) = &self.persisted.live
            && request.revision < live.revision
        {
            return Err(StoreError::Fenced(format!(
                "revision {} is older than revision {} that this shadow last committed; the writer is behind (restored from an old copy?)",
                request.revision, live.revision
            )));
        }
        // (The same number with another root is another writer's rollout: the checks below
        // judge it like any other.)
        if self
            .persisted
            .live
            .as_ref()
            .is_some_and(|g| g.rollout == rollout && g.root == request.target_root)
        {
            return Err(StoreError::Conflict(format!("rollout {rollout} is already committed")));
        }
        // A prepare that arrives after its abort (it was slow, or the abort overtook it)
        // must not leave a staging behind that nobody will ever decide.
        let aborted = self
            .persisted
            .history
            .iter()
            .any(|(id, phase)| *id == rollout && *phase == RolloutPhase::Aborted);
        let aborted_root = self.persisted.aborted_roots.get(&rollout);
        if aborted && aborted_root.is_none_or(|root| *root == request.target_root) {
            return Err(StoreError::Conflict(format!("rollout {rollout} was aborted here")));
        }
        if request.prestaged {
            // The entries were not sent: the tree staged ahead is taken, or nothing is.
            if !request.entries.is_empty() || request.reconcile {
                return Err(StoreError::BadRequest(
                    "a prepare of a tree staged ahead sends no entries and is no reconcile".into(),
                ));
            }
            self.check_base(request)?;
            self.replace_staged(rollout)?;
            return match self.adopt_prestaged(rollout, request)? {
                Some(answer) => Ok(answer),
                None => Err(StoreError::NotPrestaged(format!(
                    "no tree with root {} is staged ahead here",
                    request.target_root
                ))),
            };
        }
        // Validate everything before touching the disk.
        let (parsed, manifest) = parse_entries(request)?;
        if !request.reconcile {
            self.check_base(request)?;
        }
        self.replace_staged(rollout)?;
        if let Some(answer) = self.adopt_prestaged(rollout, request)? {
            return Ok(answer);
        }
        let dir_name = format!("r{rollout}-rev{}", request.revision);
        // Every file is read back but those linked from the live generation whose identity
        // is unchanged since their hash was proven (see [`Store::hold`]).
        let built = self.build_generation(request, &parsed, &manifest, &dir_name, false, waited)?;
        self.record_staged(rollout, request, dir_name, built.root, manifest, built.hook)
    }

    /// Refuses unless the live tree is the request's base.
    fn check_base(&self, request: &PrepareRequest) -> Result<()> {
        let live = self.live_root()?.to_hex();
        if live != request.base_root {
            return Err(StoreError::BaseRootMismatch {
                expected: request.base_root.clone(),
                actual: live,
            });
        }
        Ok(())
    }

    /// Drops the staged rollout before `rollout` is staged: a newer prepare replaces an
    /// older staged one that was never decided here; an older one arriving late does not
    /// replace a newer one.
    fn replace_staged(&mut self, rollout: i64) -> Result<()> {
        if let Some(staged) = &self.persisted.staged
            && staged.rollout > rollout
        {
            return Err(StoreError::Conflict(format!(
                "rollout {} is staged here, newer than rollout {rollout}",
                staged.rollout
            )));
        }
        self.staged_proof = None;
        self.staged_vouch = None;
        if let Some(old) = self.persisted.staged.take() {
            let _ = fs::remove_dir_all(self.generation_dir(&old.dir));
            self.remember(old.rollout, RolloutPhase::Aborted);
            // Recorded at once: whatever fails below, the state never names a staging
            // that is gone from disk.
            self.save()?;
        }
        Ok(())
    }

    /// Writes the generation `dir_name` of `parsed` (see [`Store::write_staging`]), proves
    /// its root and lets the node's validator judge it. `read_everything` proves every
    /// file by its bytes (a stage made ahead, whose proof a later prepare trusts);
    /// otherwise a file linked from the live generation and unchanged since its hash was
    /// proven is not read again.
    fn build_generation(
        &mut self,
        request: &PrepareRequest,
        parsed: &[ParsedEntry<'_>],
        manifest: &BTreeMap<String, Manifested>,
        dir_name: &str,
        read_everything: bool,
        waited: Duration,
    ) -> Result<Built> {
        let built = self.build_generation_once(request, parsed, manifest, dir_name, read_everything, waited);
        if built.is_err() {
            // Whatever failed, nothing half-made stays behind (it would be seen as drift,
            // or fill a full disk further).
            let _ = fs::remove_dir_all(self.live.join(format!("..{dir_name}.tmp")));
            if self.linked_generation().as_deref() != Some(self.generation_dir(dir_name).as_path()) {
                let _ = fs::remove_dir_all(self.generation_dir(dir_name));
            }
        }
        built
    }

    fn build_generation_once(
        &mut self,
        request: &PrepareRequest,
        parsed: &[ParsedEntry<'_>],
        manifest: &BTreeMap<String, Manifested>,
        dir_name: &str,
        read_everything: bool,
        waited: Duration,
    ) -> Result<Built> {
        let final_dir = self.generation_dir(dir_name);
        let staging_name = format!("..{dir_name}.tmp");
        let staging = self.live.join(&staging_name);
        // Never followed: std removes a symlink itself, not what it points to.
        let _ = fs::remove_dir_all(&staging);
        // Private while it is written: nobody reads a half-written generation. Held open,
        // so a rename or a symlink put in its place meanwhile changes nothing.
        let managed = DirHandle::open(&self.live)?;
        // What the writer sent by hash is found in the live generation and proven first:
        // an entry not held as its hash says refuses the prepare before anything is made.
        let held = self.hold(parsed)?;
        #[cfg(test)]
        if let Some(hook) = self.after_hold.as_mut() {
            hook();
        }
        let handle = managed.create_dir(&staging_name, 0o700)?;
        let linked = match self.write_staging(&handle, parsed, held) {
            Ok(linked) => linked,
            Err(err) => {
                // Leave nothing behind: on a full disk, a half-written revision would only
                // make the next attempt fail too.
                let _ = fs::remove_dir_all(&staging);
                return Err(err);
            }
        };
        handle.chmod(0o755)?;
        if self.linked_generation().as_deref() == Some(final_dir.as_path()) {
            return Err(StoreError::Conflict(format!("{dir_name} is live here already")));
        }
        let _ = fs::remove_dir_all(&final_dir);
        fs::rename(&staging, &final_dir).map_err(|err| io_error("rename staging", err))?;
        managed.sync()?;
        if !handle.is_at(&final_dir) {
            let _ = fs::remove_dir_all(&final_dir);
            return Err(StoreError::Io("the staged directory was replaced while it was written".into()));
        }
        // Prove what was staged by reading it back (sealed entries under the request's key,
        // which the live tree is read with from now on).
        if let Some(key) = &request.content_key
            && self.persisted.content_key.as_ref() != Some(key)
        {
            self.persisted.content_key = Some(key.clone());
            // Hashes cached under no key, or another, are not the ones to show now.
            self.hashes.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clear();
        }
        let trusted: Trusted = if read_everything {
            Trusted::new()
        } else {
            linked
                .iter()
                .map(|(path, link)| (path.clone(), (link.after.clone(), link.hash)))
                .collect()
        };
        let proof = self.observe(&final_dir, Layout::Generation, manifest, false, &trusted)?;
        let staged_root = proof.root().to_hex();
        if staged_root != request.target_root {
            let _ = fs::remove_dir_all(&final_dir);
            return Err(StoreError::RootMismatch(format!(
                "staged files hash to {staged_root}, not to {} (the file system changed them)",
                request.target_root
            )));
        }
        // The node's validator judges the tree as it will go live; a refusal stages
        // nothing (and records no epoch: nothing here changed).
        // Checking the base, staging and proving made progress the writer saw (see
        // [`Progress`]) and extended its deadline for: only the wait for the lock counts.
        let mut budget = request.deadline_ms.map(|ms| Duration::from_millis(ms).saturating_sub(waited));
        if self.background {
            // A prepare may be waiting behind a validator that cannot stop at a step: one
            // that needs longer leaves the tree to be staged by the rollout itself.
            budget = Some(budget.unwrap_or(PRESTAGE_VALIDATE).min(PRESTAGE_VALIDATE));
        }
        let (validated, proven) = self.validate_staged(&final_dir, manifest, &staged_root, proof.seen, budget)?;
        Ok(Built {
            root: staged_root,
            hook: validated,
            proven,
        })
    }

    /// The node's validator on a staged generation proven to hash to `root` (`proven`: its
    /// proof's signatures): a refusal removes the generation and answers
    /// `validate_failed`; a validator that wrote into it (and, through a linked file, into
    /// the live tree) is caught by a second look, reading only what moved. Answers the run
    /// and the signatures as last seen.
    fn validate_staged(
        &self,
        dir: &Path,
        manifest: &BTreeMap<String, Manifested>,
        root: &str,
        proven: Trusted,
        budget: Option<Duration>,
    ) -> Result<(Option<domain::protocol::HookRun>, Trusted)> {
        let validated = self.hooks.as_deref().and_then(|h| h.validate(dir, &self.live, budget));
        if let Some(run) = validated.as_ref().filter(|run| !run.ok) {
            let _ = fs::remove_dir_all(dir);
            let _ = fsync_dir(&self.live);
            return Err(StoreError::ValidateFailed(Box::new(run.clone())));
        }
        if validated.is_none() {
            return Ok((None, proven));
        }
        let again = self.observe(dir, Layout::Generation, manifest, false, &proven)?;
        if again.root().to_hex() != root {
            let _ = fs::remove_dir_all(dir);
            let _ = fsync_dir(&self.live);
            return Err(StoreError::RootMismatch(
                "the validate hook changed the staged files; a validator must only read what it checks".into(),
            ));
        }
        Ok((validated, again.seen))
    }

    /// Records `dir_name` (proven to hash to `root`) as `rollout`'s staging, durably, and
    /// the writer that sent it. The live tree's hash cache keeps what it had: a linked
    /// file's `ctime` moved with the link, so the receipt after the switch reads it again
    /// unless its proof goes back to bytes read ([`ByteProof`]).
    fn record_staged(
        &mut self,
        rollout: i64,
        request: &PrepareRequest,
        dir_name: String,
        root: String,
        manifest: BTreeMap<String, Manifested>,
        hook: Option<domain::protocol::HookRun>,
    ) -> Result<RolloutAnswer> {
        let writer_changed = self.persisted.control_plane_id.as_deref() != Some(request.control_plane_id.as_str());
        self.accept_fence(&request.control_plane_id, request.epoch);
        if writer_changed {
            // Another control plane's chain is another chain.
            self.persisted.audit_head = None;
        }
        if let Some(head) = &request.audit_head
            && self.persisted.audit_head.as_ref().is_none_or(|kept| head.seq > kept.seq)
        {
            self.persisted.audit_head = Some(head.clone());
        }
        self.persisted.staged = Some(Generation {
            rollout,
            revision: request.revision,
            root: root.clone(),
            dir: dir_name,
            manifest: std::sync::Arc::new(manifest),
        });
        self.remember(rollout, RolloutPhase::Prepared);
        self.save()?;
        failpoint::crash("after_stage");
        Ok(RolloutAnswer {
            rollout,
            phase: RolloutPhase::Prepared,
            root: Some(root),
            hook,
        })
    }

    /// Takes the tree staged ahead as `rollout`'s staging, if it is the one `request`
    /// names (same target root over the same base, revision and content key) and still
    /// proves to be it: files whose signature has not moved since the stage read them are
    /// trusted, anything else is read. `None` (the tree dropped) when it is not there,
    /// not that tree, or no longer that tree. The validator judges it again (what it reads
    /// besides the tree may have changed since the stage), and its verdict is the prepare's.
    fn adopt_prestaged(&mut self, rollout: i64, request: &PrepareRequest) -> Result<Option<RolloutAnswer>> {
        let Some(stage) = self.prestaged.take() else {
            return Ok(None);
        };
        let stage_dir = self.generation_dir(&stage.dir);
        let fits = stage.root == request.target_root
            && stage.base_root == request.base_root
            && stage.revision == request.revision
            && stage.content_key == request.content_key
            && stage.content_key == self.persisted.content_key;
        if !fits {
            self.prestaged = Some(stage);
            return Ok(None);
        }
        // The stage's directory becomes the generation as it is: not renamed, so nothing
        // about it changes (the watcher keeps watching it, no directory entry to make
        // durable: staging did).
        let dir_name = stage.dir.clone();
        let Ok(handle) = DirHandle::open(&stage_dir) else {
            return Ok(None);
        };
        let proven_at = racy_after(self.racy_window);
        // The watcher's deep count now: the stage's vouch holds if it stands where it
        // stood (and the directory is the one vouched for), and the commit's receipt is
        // vouched for if it still stands then.
        let deep = self
            .watch
            .as_ref()
            .filter(|_| stage.manifest.len() >= VOUCH_MIN_FILES)
            .and_then(|watch| watch.sync_both())
            .map(|(_, deep)| deep);
        let mut stage = stage;
        let vouched = stage
            .vouched
            .take()
            .filter(|v| Some(v.deep) == deep && handle.identity() == Some(v.dir));
        let taken = self.prove_stage(&stage, &stage_dir, &handle, vouched.map(|v| v.proof));
        let proof = match taken {
            Ok(Some(proof)) if proof.root().to_hex() == request.target_root => proof,
            other => {
                // Whatever went wrong, nothing half-taken stays behind.
                if self.linked_generation().as_deref() != Some(stage_dir.as_path()) {
                    let _ = fs::remove_dir_all(&stage_dir);
                }
                other?;
                tracing::warn!(rollout, "the tree staged ahead changed since it was staged; staging it again");
                return Ok(None);
            }
        };
        // The validator judges the tree again, as it will go live now: what it reads
        // besides the tree (certificates, includes) may have changed since it was staged.
        let budget = request.deadline_ms.map(Duration::from_millis);
        let (hook, seen) = match self.validate_staged(&stage_dir, &stage.manifest, &stage.root, proof.seen.clone(), budget) {
            Ok(validated) => validated,
            Err(err) => {
                if self.linked_generation().as_deref() != Some(stage_dir.as_path()) {
                    let _ = fs::remove_dir_all(&stage_dir);
                }
                return Err(err);
            }
        };
        let proof = Observed { seen, ..proof };
        let answer = self.record_staged(rollout, request, dir_name, stage.root, stage.manifest, hook)?;
        self.staged_vouch = deep.zip(handle.identity()).map(|(deep, dir)| (rollout, deep, dir));
        self.staged_proof = Some(ByteProof {
            rollout,
            files: proof.files,
            seen: proof.seen,
            racy_after: proven_at,
        });
        Ok(Some(answer))
    }

    /// Proves the tree staged ahead again, trusting what its byte proof saw unchanged (or
    /// takes `vouched`, its proof the watcher vouches for). `None` when its directory was
    /// replaced meanwhile.
    fn prove_stage(&self, stage: &Prestaged, stage_dir: &Path, handle: &DirHandle, vouched: Option<Observed>) -> Result<Option<Observed>> {
        if !handle.is_at(stage_dir) {
            return Ok(None);
        }
        if let Some(proof) = vouched {
            return Ok(Some(proof));
        }
        Ok(Some(self.observe(
            stage_dir,
            Layout::Generation,
            &stage.manifest,
            false,
            &stage.proven,
        )?))
    }

    /// Stages `request`'s tree ahead of its rollout (`PUT /v1/stage`), so that the
    /// prepare of that rollout only proves and takes it: built like a prepare's (from the
    /// live generation, writing only what changed), proven by reading every file, judged
    /// by the validator, and kept in memory, not in the state (nothing of the store's
    /// durable state changes, not even the writer's epoch). Replaces any tree staged
    /// ahead before; generations retired by the last commit are removed first.
    pub fn prestage(&mut self, request: &PrepareRequest) -> Result<domain::protocol::PrestageAnswer> {
        let started = reset_timings();
        let result = self.prestage_untimed(request);
        finish_timings(started);
        result
    }

    fn prestage_untimed(&mut self, request: &PrepareRequest) -> Result<domain::protocol::PrestageAnswer> {
        let _lock = self.lock_state()?;
        self.finish_interrupted_switch()?;
        self.check_fence(&request.control_plane_id, request.epoch)?;
        if request.reconcile || request.prestaged {
            return Err(StoreError::BadRequest(
                "a stage made ahead is of a change's tree, with its entries".into(),
            ));
        }
        if request.revision < 1 {
            return Err(StoreError::BadRequest("a change's revision is positive".into()));
        }
        if let Some(live) = &self.persisted.live
            && request.revision <= live.revision
        {
            return Err(StoreError::Conflict(format!(
                "revision {} is not newer than revision {} that this shadow serves",
                request.revision, live.revision
            )));
        }
        if let Some(stage) = &self.prestaged
            && stage.root == request.target_root
            && stage.base_root == request.base_root
            && stage.revision == request.revision
            && stage.content_key == request.content_key
            && self.generation_dir(&stage.dir).is_dir()
        {
            return Ok(domain::protocol::PrestageAnswer {
                root: stage.root.clone(),
                hook: stage.hook.clone(),
            });
        }
        // Sealed entries are proven under the key the live tree is read with.
        if request.content_key.is_some() && request.content_key != self.persisted.content_key {
            return Err(StoreError::Conflict(
                "the writer's content key is not the one this shadow holds; the prepare stages it".into(),
            ));
        }
        let (parsed, manifest) = parse_entries(request)?;
        self.check_base(request)?;
        self.drop_prestaged_untimed();
        // What the last commit retired goes now, before the stage is linked: each unlink
        // moves the `ctime` of an inode the new tree shares.
        let retired = !self.persisted.retired.is_empty();
        self.clean_orphans(true)?;
        if retired {
            self.save()?;
        }
        let dir_name = format!("r0-rev{}", request.revision);
        // A stage taken by a prepare is that rollout's staged generation under the same
        // name until its commit or abort: never staged over.
        if [&self.persisted.live, &self.persisted.staged]
            .into_iter()
            .flatten()
            .map(|g| g.dir.as_str())
            .chain(self.persisted.previous.as_deref())
            .any(|dir| dir == dir_name)
        {
            return Err(StoreError::Conflict(format!(
                "revision {}'s tree is staged here for a rollout: its commit or abort comes first",
                request.revision
            )));
        }
        if self.progress.foreground_waiting() {
            return Err(StoreError::Conflict(
                "a rollout's call is waiting: nothing is staged ahead now".into(),
            ));
        }
        self.background = true;
        let built = self.build_generation(request, &parsed, &manifest, &dir_name, true, Duration::ZERO);
        self.background = false;
        let built = built?;
        self.prestaged = Some(Prestaged {
            base_root: request.base_root.clone(),
            root: built.root.clone(),
            revision: request.revision,
            content_key: request.content_key.clone(),
            dir: dir_name,
            manifest,
            proven: built.proven,
            hook: built.hook.clone(),
            vouched: None,
        });
        Ok(domain::protocol::PrestageAnswer {
            root: built.root,
            hook: built.hook,
        })
    }

    /// Proves the tree staged ahead once more, once it settled (the agent calls this a
    /// moment after staging), between two syncs of the file watcher (see [`Watch`]). When
    /// the watcher reported no change below the managed directory's top level between
    /// them, it vouches for the tree from then on: the prepare that takes it does not walk
    /// it again while that count stands, and neither does the receipt of its commit. The
    /// walk yields to a rollout's call like staging does. `false` when there is nothing
    /// to vouch for (no stage, a small one, no healthy watcher, or a change meanwhile).
    pub fn vouch_stage(&mut self) -> Result<bool> {
        let _lock = self.lock_state()?;
        let Some(watch) = self.watch.clone() else {
            return Ok(false);
        };
        let Some(mut stage) = self.prestaged.take() else {
            return Ok(false);
        };
        let vouched = self.vouch(&watch, &stage);
        let done = match vouched {
            Ok(Some(vouched)) => {
                stage.vouched = Some(vouched);
                Ok(true)
            }
            other => other.map(|_| false),
        };
        self.prestaged = Some(stage);
        done
    }

    fn vouch(&mut self, watch: &Watch, stage: &Prestaged) -> Result<Option<Vouched>> {
        if stage.vouched.is_some() || stage.manifest.len() < VOUCH_MIN_FILES {
            return Ok(None);
        }
        let dir = self.generation_dir(&stage.dir);
        let Ok(handle) = DirHandle::open(&dir) else {
            return Ok(None);
        };
        let Some((_, before)) = watch.sync_both() else {
            return Ok(None);
        };
        self.background = true;
        let proof = self.observe(&dir, Layout::Generation, &stage.manifest, false, &stage.proven);
        self.background = false;
        let proof = proof?;
        let Some((_, after)) = watch.sync_both() else {
            return Ok(None);
        };
        if before != after || proof.root().to_hex() != stage.root || !handle.is_at(&dir) {
            return Ok(None);
        }
        Ok(handle.identity().map(|dir| Vouched { deep: before, dir, proof }))
    }

    /// The receipt of a commit that switched to `generation`, vouched for: its proof
    /// (when the prepare began) and the watcher's deep count since then unchanged, the
    /// live link on that same directory, and nothing at the managed directory's top level
    /// but the store's own links into it (read now, after the watcher's count). Remembered
    /// as the maintained root. `None`: walk.
    fn vouched_receipt(&self, rollout: i64, generation: &Generation) -> Option<Hash> {
        let (vouched_rollout, deep, dir) = self.staged_vouch?;
        let (changes, now) = self.watch.as_ref()?.sync_both()?;
        if vouched_rollout != rollout || now != deep {
            return None;
        }
        let wanted = generation.top_names();
        let top = self.top_level()?;
        if self.linked_generation()? != self.generation_dir(&generation.dir) || top.dir != dir || top.links != wanted {
            return None;
        }
        let root = Hash::from_hex(&generation.root).ok()?;
        *self.known.lock().unwrap_or_else(|p| p.into_inner()) = Some(Known {
            root,
            changes,
            deep,
            top: Some(top),
            manifest: Some(generation.root.clone()),
            at: Instant::now(),
        });
        Some(root)
    }

    /// Drops the tree staged ahead, if any (`DELETE /v1/stage`). Idempotent.
    pub fn drop_prestaged(&mut self) -> Result<()> {
        let _lock = self.lock_state()?;
        self.drop_prestaged_untimed();
        Ok(())
    }

    fn drop_prestaged_untimed(&mut self) {
        if let Some(stage) = self.prestaged.take() {
            let _ = fs::remove_dir_all(self.generation_dir(&stage.dir));
        }
    }

    /// One step of a walk, a proof or a staging: counted as the running prepare's progress;
    /// refused when staging ahead and a rollout's call waits for the store.
    fn step(&self) -> Result<()> {
        self.progress.step();
        if self.background && self.progress.foreground_waiting() {
            return Err(StoreError::Conflict(
                "a rollout's call came first: staging ahead stopped, and is done again after it".into(),
            ));
        }
        Ok(())
    }

    /// The root of the tree staged ahead, if any.
    pub fn prestaged_root(&self) -> Option<String> {
        self.prestaged.as_ref().map(|p| p.root.clone())
    }

    /// A dry run of prepare's validation: the entries are checked and written to a
    /// private scratch generation inside the managed directory, the validate hook runs on
    /// it, and it is removed. Nothing of the store's state changes (no epoch is recorded,
    /// the live tree is untouched). `None` when the node has no validate hook.
    pub fn validate_dry_run(&mut self, request: &PrepareRequest) -> Result<Option<domain::protocol::HookRun>> {
        let _lock = self.lock_state()?;
        self.check_fence(&request.control_plane_id, request.epoch)?;
        if request.revision < 0 {
            return Err(StoreError::BadRequest("a revision is not negative".into()));
        }
        let (parsed, _) = parse_entries(request)?;
        if parsed.iter().any(|e| matches!(e.source, Source::Held)) {
            return Err(StoreError::BadRequest("a dry run is sent every entry's content".into()));
        }
        let Some(hooks) = self.hooks.clone().filter(|h| h.validate.is_some()) else {
            return Ok(None);
        };
        // Rollout 0 is never a real one: the scratch name is the store's own shape, so
        // nothing reads it as drift, and an orphan is cleaned like any staging.
        let scratch_name = format!("..r0-rev{}.tmp", request.revision);
        let scratch = self.live.join(&scratch_name);
        let _ = fs::remove_dir_all(&scratch);
        let managed = DirHandle::open(&self.live)?;
        let handle = managed.create_dir(&scratch_name, 0o700)?;
        // Opened up as a real staging is, so the validator sees the same permissions.
        let written = self
            .write_staging(&handle, &parsed, HashMap::new())
            .and_then(|_| handle.chmod(0o755));
        let budget = request.deadline_ms.map(Duration::from_millis);
        let run = written.as_ref().ok().and_then(|()| hooks.validate(&scratch, &self.live, budget));
        let _ = fs::remove_dir_all(&scratch);
        written.map(|()| run)
    }

    /// Finds every entry sent by hash in the live generation and proves it: the file is
    /// opened there without following any link, and its hash is the one the live tree's
    /// cache holds for exactly that `stat` signature, or else it is read and hashed now.
    /// Any entry not held as its hash says makes it [`StoreError::Incomplete`], naming
    /// them all. The files stay open: what is linked later is the very inode proven.
    fn hold(&self, parsed: &[ParsedEntry<'_>]) -> Result<HashMap<usize, HeldFile>> {
        let wanted: Vec<usize> = (0..parsed.len()).filter(|&i| matches!(parsed[i].source, Source::Held)).collect();
        if wanted.is_empty() {
            return Ok(HashMap::new());
        }
        let generation = self
            .persisted
            .live
            .as_ref()
            .map(|g| self.generation_dir(&g.dir))
            .filter(|dir| self.linked_generation().as_deref() == Some(dir.as_path()))
            .and_then(|dir| DirHandle::open(&dir).ok());
        let Some(generation) = generation else {
            return Err(StoreError::Incomplete(wanted.iter().map(|&i| parsed[i].path.to_string()).collect()));
        };
        let racy_after = racy_after(self.racy_window);
        let mut directories: HashMap<String, Option<DirHandle>> = HashMap::new();
        let mut held = HashMap::new();
        let mut missing = Vec::new();
        for i in wanted {
            self.step()?;
            let entry = &parsed[i];
            match self.hold_one(&generation, &mut directories, entry, racy_after) {
                Some(file) => {
                    held.insert(i, file);
                }
                None => missing.push(entry.path.to_string()),
            }
        }
        if missing.is_empty() {
            Ok(held)
        } else {
            Err(StoreError::Incomplete(missing))
        }
    }

    /// One entry of [`Store::hold`]: the open file if it is there and hashes to the entry.
    fn hold_one(
        &self,
        generation: &DirHandle,
        directories: &mut HashMap<String, Option<DirHandle>>,
        entry: &ParsedEntry<'_>,
        racy_after: Duration,
    ) -> Option<HeldFile> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let (parent_path, name) = match entry.path.as_str().rsplit_once('/') {
            Some((parent, name)) => (parent, name),
            None => ("", entry.path.as_str()),
        };
        let parent = if parent_path.is_empty() {
            generation
        } else {
            if !directories.contains_key(parent_path) {
                // Each directory opened inside the one before it, never through a link.
                let mut dir: Option<DirHandle> = None;
                for segment in parent_path.split('/') {
                    let next = DirHandle::open(&dir.as_ref().unwrap_or(generation).path(segment)).ok();
                    dir = next;
                    if dir.is_none() {
                        break;
                    }
                }
                directories.insert(parent_path.to_string(), dir);
            }
            directories.get(parent_path)?.as_ref()?
        };
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits() | nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(parent.path(name))
            .ok()?;
        let meta = file.metadata().ok()?;
        if !meta.is_file() {
            return None;
        }
        let before = FileSignature::of(&meta);
        let expected = Manifested {
            owner: entry.policy.owner.clone(),
            group: entry.policy.group.clone(),
            secret: entry.policy.secret,
            sealed: entry.key.is_some(),
        };
        let known = {
            let cache = self.hashes.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            cache
                .get(entry.path.as_str())
                .filter(|(signature, manifested, _, _)| *signature == before && *manifested == expected)
                .map(|(_, _, hash, _)| *hash)
        };
        let hash = match known {
            Some(hash) => hash,
            None => {
                let mut content = Vec::new();
                timed(|t| &mut t.hash, || file.read_to_end(&mut content)).ok()?;
                self.hashes.files_hashed.fetch_add(1, Ordering::Relaxed);
                let policy = disk_policy(&meta, &expected, &mut user_name, &mut group_name);
                timed(|t| &mut t.hash, || hash_entry(entry.key.as_ref(), &entry.path, &policy, &content))
            }
        };
        (hash == entry.hash).then(|| HeldFile {
            settled: before.settled(racy_after),
            file,
            before,
        })
    }

    /// Writes the new generation into `staging` (a fresh, private directory, held open):
    /// each directory made inside the one before it; each sent file created owner-only
    /// with `O_EXCL | O_NOFOLLOW`, written, given its owner and mode; each held file
    /// hard-linked from the very inode [`Store::hold`] proved (never chmod'ed or chown'ed:
    /// it is the live file too). Every name is resolved inside a directory held open, so
    /// nothing is followed, overwritten or written elsewhere. One durability barrier at the
    /// end (`syncfs`) instead of an fsync per file and directory. Returns the linked files
    /// whose identity the link left unchanged (see [`FileSignature::only_linked_since`]):
    /// the read-back may trust their hashes.
    fn write_staging(
        &self,
        staging: &DirHandle,
        parsed: &[ParsedEntry<'_>],
        mut held: HashMap<usize, HeldFile>,
    ) -> Result<HashMap<String, Linked>> {
        let mut directories: BTreeMap<String, DirHandle> = BTreeMap::new();
        let mut linked = HashMap::new();
        for (index, entry) in parsed.iter().enumerate() {
            failpoint::slow_staging();
            self.step()?;
            let path = &entry.path;
            let segments: Vec<&str> = path.as_str().split('/').collect();
            let (file_name, parents) = segments
                .split_last()
                .ok_or_else(|| StoreError::BadRequest(format!("{path}: empty")))?;
            let mut prefix = String::new();
            for segment in parents {
                let parent_prefix = prefix.clone();
                prefix = if prefix.is_empty() {
                    segment.to_string()
                } else {
                    format!("{prefix}/{segment}")
                };
                if directories.contains_key(&prefix) {
                    continue;
                }
                let parent = if parent_prefix.is_empty() {
                    staging
                } else {
                    &directories[&parent_prefix]
                };
                let dir = match DirHandle::open(&parent.path(segment)) {
                    Ok(dir) => dir,
                    Err(_) if fs::symlink_metadata(parent.path(segment)).is_ok() => {
                        return Err(StoreError::BadRequest(format!("{path}: {segment} is also a file")));
                    }
                    // Born private like the generation, opened up to 0755 once written
                    // whatever the umask (readers must be able to go through it).
                    Err(_) => parent.create_dir(segment, 0o700)?,
                };
                directories.insert(prefix.clone(), dir);
            }
            let parent = if prefix.is_empty() { staging } else { &directories[&prefix] };
            match &entry.source {
                Source::Held => {
                    let mut source = held.remove(&index).ok_or_else(|| StoreError::Io(format!("{path} was not held")))?;
                    // Unchanged since it was proven, to the `ctime`, right before the link
                    // (which moves `ctime` itself and so would hide an edit made earlier).
                    let unchanged = source.file.metadata().is_ok_and(|meta| FileSignature::of(&meta) == source.before);
                    let from = SystemTime::now();
                    let origin = PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&source.file)));
                    let link = timed(
                        |t| &mut t.write,
                        || nix::unistd::linkat(None, &origin, None, &parent.path(file_name), nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW),
                    );
                    let to = SystemTime::now();
                    if link.is_err() {
                        // No hard link here (a file system without them, a link count at its
                        // limit): the bytes of the very file proven, copied, and read back
                        // like any file written.
                        self.copy_held(parent, file_name, entry, &mut source.file)?;
                        continue;
                    }
                    let after = source
                        .file
                        .metadata()
                        .map(|meta| FileSignature::of(&meta))
                        .map_err(|err| io_error(format!("stat {path}"), err))?;
                    if unchanged && source.settled && after.only_linked_since(&source.before, from, to) {
                        linked.insert(path.to_string(), Linked { after, hash: entry.hash });
                    }
                }
                Source::Sent(content) => self.write_file(parent, file_name, entry, content)?,
            }
        }
        for dir in directories.values().rev() {
            dir.chmod(0o755)?;
        }
        // One barrier for every file, directory and link of the generation: `syncfs` gives
        // what an fsync of each would (Linux waits for the I/O and, since 5.8, reports its
        // errors), at the cost of one journal commit.
        timed(
            |t| &mut t.fsync,
            || nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&staging.file)),
        )
        .map_err(|err| StoreError::Io(format!("sync the staged files: {err}")))?;
        Ok(linked)
    }

    /// A new file `parent/name` with `content`: created owner-only, written, given the
    /// entry's owner, then its mode (a chown clears setuid and setgid bits).
    fn write_file(&self, parent: &DirHandle, name: &str, entry: &ParsedEntry<'_>, content: &[u8]) -> Result<()> {
        let path = &entry.path;
        let mut file = parent.create_file(name)?;
        timed(
            |t| &mut t.write,
            || disk_budget::charge(content.len()).and_then(|()| file.write_all(content)),
        )
        .map_err(|err| io_error(format!("write {path}"), err))?;
        self.apply_ownership(&file, Path::new(path.as_str()), &entry.policy)?;
        file.set_permissions(fs::Permissions::from_mode(entry.policy.mode))
            .map_err(|err| io_error(format!("chmod {path}"), err))
    }

    /// A held file's bytes copied into `parent/name` (where it could not be linked), written
    /// like a file sent with its content. The read-back proves it.
    fn copy_held(&self, parent: &DirHandle, name: &str, entry: &ParsedEntry<'_>, source: &mut File) -> Result<()> {
        use std::io::{Read, Seek};
        let mut content = Vec::new();
        source
            .seek(io::SeekFrom::Start(0))
            .and_then(|_| source.read_to_end(&mut content))
            .map_err(|err| io_error(format!("read {}", entry.path), err))?;
        self.write_file(parent, name, entry, &content)
    }

    fn apply_ownership(&self, file: &File, shown: &Path, policy: &Policy) -> Result<()> {
        if policy.owner.is_empty() && policy.group.is_empty() {
            return Ok(());
        }
        let uid = if policy.owner.is_empty() {
            None
        } else {
            let user = nix::unistd::User::from_name(&policy.owner).ok().flatten();
            Some(
                user.ok_or_else(|| StoreError::Io(format!("no such user {:?} on this shadow", policy.owner)))?
                    .uid,
            )
        };
        let gid = if policy.group.is_empty() {
            None
        } else {
            let group = nix::unistd::Group::from_name(&policy.group).ok().flatten();
            Some(
                group
                    .ok_or_else(|| StoreError::Io(format!("no such group {:?} on this shadow", policy.group)))?
                    .gid,
            )
        };
        nix::unistd::fchown(std::os::fd::AsRawFd::as_raw_fd(file), uid, gid).map_err(|err| {
            StoreError::Io(format!(
                "cannot chown {} to {}:{}: {err}",
                shown.display(),
                policy.owner,
                policy.group
            ))
        })
    }

    /// Switches live to the staged revision with one rename. Idempotent. [`last_timings`]
    /// tells where the time went.
    pub fn commit(&mut self, rollout: i64, fence: &Fence) -> Result<RolloutAnswer> {
        let started = reset_timings();
        let result = self.commit_untimed(rollout, fence);
        finish_timings(started);
        result
    }

    fn commit_untimed(&mut self, rollout: i64, fence: &Fence) -> Result<RolloutAnswer> {
        let _lock = self.lock_state()?;
        self.finish_interrupted_switch()?;
        self.check_fence(&fence.control_plane_id, fence.epoch)?;
        // The writer's epoch is recorded only by a commit that switches something: a
        // repeated or refused commit (a stale copy's recovery, say) must not fence the
        // control plane that actually writes here.
        if self.persisted.live.as_ref().is_some_and(|g| g.rollout == rollout)
            && self.persisted.staged.as_ref().is_none_or(|g| g.rollout != rollout)
        {
            if let (Some(root), Some(live)) = (&fence.target_root, &self.persisted.live)
                && *root != live.root
            {
                return Err(StoreError::Conflict(format!(
                    "rollout {rollout} committed here has another root: a different writer's rollout"
                )));
            }
            // Already committed: make sure the link points there (a crash may have
            // happened between the rename and the state write), run a reload that was
            // still owed, and answer the root with the reload's run.
            if self.persisted.reload_pending == Some(rollout) {
                self.run_pending_reload()?;
            }
            return Ok(RolloutAnswer {
                rollout,
                phase: RolloutPhase::Committed,
                root: Some(self.live_root()?.to_hex()),
                hook: self.reload_of(rollout),
            });
        }
        let staged = match self.persisted.staged.clone() {
            Some(staged) if staged.rollout == rollout && fence.target_root.as_ref().is_none_or(|root| *root == staged.root) => staged,
            Some(staged) if staged.rollout == rollout => {
                return Err(StoreError::Conflict(format!(
                    "rollout {rollout} is staged here with another root: a different writer's rollout"
                )));
            }
            _ => {
                let phase = self.status(rollout).phase;
                return Err(match phase {
                    RolloutPhase::Aborted => StoreError::Conflict(format!("rollout {rollout} was aborted here")),
                    _ => StoreError::NotFound(format!("rollout {rollout} is not staged here")),
                });
            }
        };
        if failpoint::commit_fails() {
            return Err(StoreError::Io(format!("failpoint: the commit of rollout {rollout} fails")));
        }
        // The epoch is persisted before the switch it allows.
        if fence.epoch > self.persisted.highest_epoch || self.persisted.control_plane_id.is_none() {
            self.accept_fence(&fence.control_plane_id, fence.epoch);
            self.save()?;
        }
        self.switch_to(&staged)?;
        #[cfg(test)]
        if let Some(hook) = self.after_switch.as_mut() {
            hook();
        }
        failpoint::edit_after_switch(&self.live);
        failpoint::crash("after_switch");
        let generation = staged.clone();
        self.finish_commit(staged)?;
        // The hash cache takes the generation's proof at the next walk (the receipt below
        // walks only when the watcher cannot vouch for the tree).
        *self.untrusted_proof.lock().unwrap_or_else(|p| p.into_inner()) = self.staged_proof.take().filter(|p| p.rollout == rollout);
        self.run_pending_reload()?;
        // The receipt: what the watcher vouches for, or a walk.
        let receipt = match self.vouched_receipt(rollout, &generation) {
            Some(root) => root,
            None => self.live_root()?,
        };
        self.staged_vouch = None;
        Ok(RolloutAnswer {
            rollout,
            phase: RolloutPhase::Committed,
            root: Some(receipt.to_hex()),
            hook: self.reload_of(rollout),
        })
    }

    /// Records a switched generation as live, and retires the generations older than the
    /// previous one (kept for readers still inside it) and a tree staged ahead, which no
    /// longer stands on the live one: they are removed when the next tree is staged (see
    /// [`Persisted::retired`]).
    fn finish_commit(&mut self, staged: Generation) -> Result<()> {
        let rollout = staged.rollout;
        let previous = self.persisted.live.replace(staged);
        self.persisted.previous = previous.as_ref().map(|g| g.dir.clone());
        self.persisted.staged = None;
        // The reload is owed from the moment the switch is recorded, whether or not hooks
        // are known yet: a store opened after a kill finishes the switch before the agent
        // has given it its hooks, and the commit's repetition then runs the reload.
        self.persisted.reload_pending = Some(rollout);
        self.remember(rollout, RolloutPhase::Committed);
        if let Some(stale) = self.prestaged.take().filter(|stale| generation_name(&stale.dir)) {
            self.persisted.retired.push(stale.dir);
        }
        let keep: Vec<String> = self
            .persisted
            .live
            .iter()
            .chain(previous.iter())
            .map(|g| format!("..{}", g.dir))
            .collect();
        let entries = fs::read_dir(&self.live).map_err(|err| io_error(format!("list {}", self.live.display()), err))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let generation = name.starts_with("..r") && !name.ends_with(".tmp") && self.staging_shape(&name);
            if let Some(dir) = name
                .strip_prefix("..")
                .filter(|dir| generation && !keep.contains(&name) && generation_name(dir))
                && !self.persisted.retired.iter().any(|r| r == dir)
            {
                self.persisted.retired.push(dir.to_string());
            }
        }
        self.save()
    }

    /// The live tree's hash cache takes a committed generation's byte proof, for each file
    /// out of the racy window (the rule the cache itself follows): the receipt then reads
    /// only what moved since the proof.
    fn trust_proof(&self, proof: ByteProof) {
        let racy_after = proof.racy_after;
        let manifest = self.live_manifest();
        let mut cache = self.hashes.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (path, hash, entry) in proof.files {
            let (Some((signature, _)), Some(expected)) = (proof.seen.get(path.as_str()), manifest.get(path.as_str())) else {
                continue;
            };
            if signature.changed_before(racy_after) && signature.settled(racy_after) {
                cache.insert(path.to_string(), (signature.clone(), expected.clone(), hash, entry));
            }
        }
    }

    /// Makes `generation` live inside the managed directory: whatever there is not the
    /// store's goes aside into `..original-<time>`; `..data` is switched with one rename;
    /// then the top-level links are made to match (new names appear, dropped ones go).
    /// Idempotent, so a commit interrupted anywhere is finished by doing it again.
    fn switch_to(&mut self, generation: &Generation) -> Result<()> {
        let target = format!("..{}", generation.dir);
        let wanted = generation.top_names();
        let live = self.live.clone();
        let ours = move |name: &str| fs::read_link(live.join(name)).is_ok_and(|t| t == Path::new(DATA_LINK).join(name));
        // 1. What is not the store's (the files found before its first commit, anything
        // planted since, a directory planted where the live link goes) is moved aside,
        // never followed, never lost: all of it, or (on a failure) none of it.
        let managed = DirHandle::open(&self.live)?;
        let link = self.live.join(DATA_LINK);
        let mut foreign: Vec<String> = Vec::new();
        let entries = fs::read_dir(&self.live).map_err(|err| io_error(format!("list {}", self.live.display()), err))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let link_slot = name == DATA_LINK || name == format!("{DATA_LINK}.tmp");
            let is_link = entry.file_type().is_ok_and(|t| t.is_symlink());
            if (link_slot && is_link) || (!link_slot && (self.reserved(&name) || ours(&name))) {
                continue;
            }
            foreign.push(name);
        }
        if !foreign.is_empty() {
            let stamp = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            let name = format!("{ORIGINAL_PREFIX}{stamp}");
            // Recorded before it is made, so a kill meanwhile leaves no original nobody knows.
            self.persisted.originals.push(name.clone());
            self.save()?;
            let aside = match managed.create_dir(&name, 0o700) {
                Ok(aside) => aside,
                Err(err) => {
                    self.persisted.originals.retain(|o| *o != name);
                    let _ = self.save();
                    return Err(err);
                }
            };
            let mut moved: Vec<&String> = Vec::new();
            for entry in &foreign {
                if let Err(err) = fs::rename(managed.path(entry), aside.path(entry)) {
                    // Put back what was moved: the directory stays as it was.
                    for back in moved {
                        let _ = fs::rename(aside.path(back), managed.path(back));
                    }
                    let _ = fs::remove_dir(managed.path(&name));
                    self.persisted.originals.retain(|o| *o != name);
                    let _ = self.save();
                    return Err(io_error(format!("move {entry} aside"), err));
                }
                moved.push(entry);
            }
            aside.sync()?;
            tracing::info!(path = %self.live.join(&name).display(), "files the shadow did not manage were moved aside");
            self.prune_originals();
        }
        // 2. The switch: one rename of the live link.
        // The directory is fsynced once more at the end only if the links changed after
        // the switch's own fsync (or there was none: a repeated commit makes sure).
        let mut unsynced = true;
        if fs::read_link(&link).ok().as_deref() != Some(Path::new(&target)) {
            let temporary = self.live.join(format!("{DATA_LINK}.tmp"));
            let _ = fs::remove_file(&temporary);
            std::os::unix::fs::symlink(&target, &temporary).map_err(|err| io_error(format!("create link {}", temporary.display()), err))?;
            fs::rename(&temporary, &link).map_err(|err| io_error(format!("switch {}", link.display()), err))?;
            managed.sync()?;
            unsynced = false;
        }
        // 3. The top-level links a reader opens.
        for name in &wanted {
            if ours(name) {
                continue;
            }
            let temporary = self.live.join(format!("{DATA_LINK}.tmp"));
            let _ = fs::remove_file(&temporary);
            std::os::unix::fs::symlink(Path::new(DATA_LINK).join(name), &temporary)
                .map_err(|err| io_error(format!("create link {name}"), err))?;
            fs::rename(&temporary, self.live.join(name)).map_err(|err| io_error(format!("link {name}"), err))?;
            unsynced = true;
        }
        let entries = fs::read_dir(&self.live).map_err(|err| io_error(format!("list {}", self.live.display()), err))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !self.reserved(&name) && !wanted.contains(&name) && ours(&name) {
                let _ = fs::remove_file(entry.path());
                unsynced = true;
            }
        }
        if unsynced { managed.sync() } else { Ok(()) }
    }

    /// Keeps the newest [`ORIGINALS_KEPT`] of the directories this store moved aside.
    fn prune_originals(&mut self) {
        let excess = self.persisted.originals.len().saturating_sub(ORIGINALS_KEPT);
        let dropped: Vec<String> = self.persisted.originals.drain(..excess).collect();
        if dropped.is_empty() {
            return;
        }
        if self.save().is_ok() {
            for name in dropped {
                let _ = fs::remove_dir_all(self.live.join(name));
            }
        }
    }

    /// Drops the staged revision. Idempotent; refuses a rollout already committed.
    pub fn abort(&mut self, rollout: i64, fence: &Fence) -> Result<RolloutAnswer> {
        let _lock = self.lock_state()?;
        self.finish_interrupted_switch()?;
        self.check_fence(&fence.control_plane_id, fence.epoch)?;
        let same = |root: &String| fence.target_root.as_ref().is_none_or(|wanted| wanted == root);
        if self.persisted.live.as_ref().is_some_and(|g| g.rollout == rollout && same(&g.root)) {
            return Err(StoreError::Conflict(format!("rollout {rollout} is already committed here")));
        }
        // Only a write that changes something records the writer's epoch: an abort of a
        // rollout this shadow never staged (a refused writer cleaning up) must not fence
        // the control plane that actually writes here.
        if let Some(staged) = self.persisted.staged.take_if(|g| g.rollout == rollout && same(&g.root)) {
            self.staged_proof = None;
            self.staged_vouch = None;
            self.staged_vouch = None;
            let _ = fs::remove_dir_all(self.generation_dir(&staged.dir));
            self.accept_fence(&fence.control_plane_id, fence.epoch);
        }
        // Another writer's rollout of the same number, committed or staged here, stays
        // as it is; the abort is remembered for its own root only.
        let foreign = self.persisted.live.as_ref().is_some_and(|g| g.rollout == rollout)
            || self.persisted.staged.as_ref().is_some_and(|g| g.rollout == rollout);
        if !foreign {
            self.remember(rollout, RolloutPhase::Aborted);
            if let Some(root) = &fence.target_root {
                self.persisted.aborted_roots.insert(rollout, root.clone());
            }
        }
        self.save()?;
        Ok(RolloutAnswer {
            rollout,
            phase: RolloutPhase::Aborted,
            root: None,
            hook: None,
        })
    }
}

pub mod hooks;
pub mod statefile;

#[cfg(test)]
mod tests;
