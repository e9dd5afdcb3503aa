//! Storage of one shadow: a directory of live configuration files that is replaced all at
//! once.
//!
//! Each staged revision is written into its own directory under the state directory
//! (every file written to a temporary name, fsynced, renamed; every directory fsynced).
//! The live path is a symlink to one of them and is switched with a single `rename`, the
//! way kubelet updates ConfigMap volumes: a reader that resolves the link once sees the old
//! set or the new set, never a mix. The store's own durable state (highest epoch, the
//! control plane it is bound to, live and staged rollouts) is a JSON file replaced
//! atomically, so it survives `kill -9` at any point.
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
    collections::{BTreeMap, HashMap},
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

/// How many finished rollouts the store remembers for status queries.
const HISTORY: usize = 256;

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
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

fn io_error(what: impl std::fmt::Display, err: io::Error) -> StoreError {
    StoreError::Io(format!("{what}: {err}"))
}

/// Policy bits the disk cannot tell: whether owner/group are managed, and secrecy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Manifested {
    owner: String,
    group: String,
    secret: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Generation {
    rollout: i64,
    revision: i64,
    root: String,
    /// Directory name under `<state>/revisions`.
    dir: String,
    manifest: BTreeMap<String, Manifested>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Persisted {
    control_plane_id: Option<String>,
    highest_epoch: i64,
    live: Option<Generation>,
    staged: Option<Generation>,
    history: Vec<(i64, RolloutPhase)>,
}

pub struct Store {
    live: PathBuf,
    state_dir: PathBuf,
    pinned_control_plane: Option<String>,
    persisted: Persisted,
    hashes: HashCache,
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

impl FileSignature {
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

/// Writes `bytes` to `path` durably: temporary file, fsync, rename, fsync of the directory.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let parent = path
        .parent()
        .ok_or_else(|| StoreError::Io(format!("{} has no parent", path.display())))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temporary)
        .map_err(|err| io_error(format!("create {}", temporary.display()), err))?;
    let written = timed(
        |t| &mut t.write,
        || disk_budget::charge(bytes.len()).and_then(|()| file.write_all(bytes)),
    )
    .map_err(|err| io_error(format!("write {}", temporary.display()), err))
    .and_then(|()| {
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|err| io_error(format!("chmod {}", temporary.display()), err))
    })
    .and_then(|()| timed(|t| &mut t.fsync, || file.sync_all()).map_err(|err| io_error(format!("fsync {}", temporary.display()), err)))
    .and_then(|()| fs::rename(&temporary, path).map_err(|err| io_error(format!("rename {}", path.display()), err)));
    if written.is_err() {
        // A full disk must not be left fuller by a half-written temporary file.
        let _ = fs::remove_file(&temporary);
    }
    written?;
    fsync_dir(parent)
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
        fs::create_dir_all(state_dir.join("revisions")).map_err(|err| io_error(format!("create {}", state_dir.display()), err))?;
        let state_file = state_dir.join("state.json");
        let persisted = match fs::read(&state_file) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|err| StoreError::Io(format!("{} is corrupt: {err}", state_file.display())))?
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => Persisted::default(),
            Err(err) => return Err(io_error(format!("read {}", state_file.display()), err)),
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
            pinned_control_plane,
            persisted,
            hashes: HashCache::default(),
        };
        store.clean_orphans()?;
        Ok(store)
    }

    /// Removes revision directories neither live, staged nor the previous live one (a
    /// crash can leave half-written staging behind).
    fn clean_orphans(&mut self) -> Result<()> {
        let keep: Vec<String> = [&self.persisted.live, &self.persisted.staged]
            .into_iter()
            .flatten()
            .map(|g| g.dir.clone())
            .collect();
        let current_target = fs::read_link(&self.live)
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()));
        let revisions = self.state_dir.join("revisions");
        let entries = fs::read_dir(&revisions).map_err(|err| io_error(format!("list {}", revisions.display()), err))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) && current_target.as_deref() != Some(&name) && name.ends_with(".tmp") {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        Ok(())
    }

    fn save(&self) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.persisted).map_err(|err| StoreError::Io(err.to_string()))?;
        write_atomically(&self.state_dir.join("state.json"), &bytes, 0o600)
    }

    fn remember(&mut self, rollout: i64, phase: RolloutPhase) {
        self.persisted.history.retain(|(id, _)| *id != rollout);
        self.persisted.history.push((rollout, phase));
        let excess = self.persisted.history.len().saturating_sub(HISTORY);
        self.persisted.history.drain(..excess);
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

    /// Every regular file under `root` with its entry hash, as the shadow holds it. Files
    /// whose `stat` is unchanged since the last look are not read again.
    /// Without `cached`, every file is read (the read-back that proves what was staged).
    fn observe(&self, root: &Path, manifest: &BTreeMap<String, Manifested>, cached: bool) -> Result<Vec<(EntryPath, Hash, ObservedEntry)>> {
        timed(|t| &mut t.hash, || self.observe_untimed(root, manifest, cached))
    }

    fn observe_untimed(
        &self,
        root: &Path,
        manifest: &BTreeMap<String, Manifested>,
        cached: bool,
    ) -> Result<Vec<(EntryPath, Hash, ObservedEntry)>> {
        let mut found = Vec::new();
        if !root.exists() {
            return Ok(found);
        }
        let racy_after = SystemTime::now()
            .checked_sub(RACY_WINDOW)
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .unwrap_or_default();
        let mut cache = self.hashes.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut seen = std::collections::HashSet::new();
        let unmanaged = Manifested::default();
        let mut pending = vec![root.to_path_buf()];
        while let Some(dir) = pending.pop() {
            let entries = fs::read_dir(&dir).map_err(|err| io_error(format!("list {}", dir.display()), err))?;
            for entry in entries {
                let entry = entry.map_err(|err| io_error(format!("list {}", dir.display()), err))?;
                let path = entry.path();
                // `fstatat` relative to the open directory: no walk of the whole path per
                // file, and (like `lstat`) symlinks are not followed.
                let meta = entry.metadata().map_err(|err| io_error(format!("stat {}", path.display()), err))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') && name.contains(".tmp-") {
                    continue;
                }
                if meta.is_dir() {
                    pending.push(path);
                    continue;
                }
                if !meta.is_file() {
                    continue;
                }
                let relative = path
                    .strip_prefix(root)
                    .map_err(|_| StoreError::Io("path outside the root".into()))?;
                let Ok(entry_path) = EntryPath::parse(&relative.to_string_lossy()) else {
                    continue;
                };
                let expected = manifest.get(entry_path.as_str()).unwrap_or(&unmanaged);
                let signature = FileSignature::of(&meta);
                if cached {
                    seen.insert(entry_path.as_str().to_string());
                }
                if cached
                    && let Some((cached_signature, cached_expected, hash, observed)) = cache.get(entry_path.as_str())
                    && *cached_signature == signature
                    && cached_expected == expected
                {
                    found.push((entry_path, *hash, observed.clone()));
                    continue;
                }
                let content = fs::read(&path).map_err(|err| io_error(format!("read {}", path.display()), err))?;
                self.hashes.files_hashed.fetch_add(1, Ordering::Relaxed);
                let policy = Policy {
                    mode: meta.permissions().mode() & 0o7777,
                    owner: if expected.owner.is_empty() {
                        String::new()
                    } else {
                        user_name(meta.uid())
                    },
                    group: if expected.group.is_empty() {
                        String::new()
                    } else {
                        group_name(meta.gid())
                    },
                    secret: expected.secret,
                };
                let hash = entry_hash(&entry_path, &policy, &content);
                let observed = ObservedEntry {
                    path: entry_path.to_string(),
                    entry_hash: hash.to_hex(),
                    mode: format_mode(policy.mode),
                    owner: user_name(meta.uid()),
                    group: group_name(meta.gid()),
                    size: i64::try_from(content.len()).unwrap_or(i64::MAX),
                };
                // Cache only what `stat` can vouch for: a file still inside the racy window
                // could change again without changing its signature.
                let changed_at = Duration::new(
                    u64::try_from(signature.ctime.0).unwrap_or(0),
                    u32::try_from(signature.ctime.1).unwrap_or(0),
                );
                if cached && changed_at < racy_after {
                    cache.insert(
                        entry_path.as_str().to_string(),
                        (signature, expected.clone(), hash, observed.clone()),
                    );
                } else if cached {
                    cache.remove(entry_path.as_str());
                }
                found.push((entry_path, hash, observed));
            }
        }
        if cached {
            // Forget files that are gone.
            cache.retain(|path, _| seen.contains(path));
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(found)
    }

    /// How many files this store has read and hashed since it was opened (the rest were
    /// known unchanged by `stat`).
    pub fn files_hashed(&self) -> u64 {
        self.hashes.files_hashed.load(Ordering::Relaxed)
    }

    fn root_of(observed: &[(EntryPath, Hash, ObservedEntry)]) -> Hash {
        root_hash(observed.iter().map(|(path, hash, _)| (path, *hash)))
    }

    /// The root of what the live directory holds right now.
    pub fn live_root(&self) -> Result<Hash> {
        Ok(Self::root_of(&self.observe(&self.live, self.live_manifest(), true)?))
    }

    pub fn state(&self, with_entries: bool) -> Result<ShadowState> {
        let observed = self.observe(&self.live, self.live_manifest(), true)?;
        Ok(ShadowState {
            control_plane_id: self.persisted.control_plane_id.clone().or(self.pinned_control_plane.clone()),
            highest_epoch: self.persisted.highest_epoch,
            live_revision: self.persisted.live.as_ref().map(|g| g.revision),
            live_root: Self::root_of(&observed).to_hex(),
            staged: self.persisted.staged.as_ref().map(|g| StagedInfo {
                rollout: g.rollout,
                revision: g.revision,
                root: g.root.clone(),
            }),
            entries: with_entries.then(|| observed.into_iter().map(|(_, _, o)| o).collect()),
        })
    }

    /// The live bytes of one entry.
    pub fn read_entry(&self, path: &str) -> Result<Vec<u8>> {
        let path = EntryPath::parse(path).map_err(|err| StoreError::BadRequest(format!("invalid path: {err}")))?;
        let file = self.live.join(path.as_str());
        let meta = fs::symlink_metadata(&file).map_err(|_| StoreError::NotFound(format!("no live entry {path}")))?;
        if !meta.is_file() {
            return Err(StoreError::NotFound(format!("no live entry {path}")));
        }
        // The path is clean, but a directory on the way may be a symlink someone planted on
        // the node (`conf -> /etc`): only files really inside the live tree are served.
        let inside = match (fs::canonicalize(&file), fs::canonicalize(&self.live)) {
            (Ok(real), Ok(live)) => real.starts_with(&live),
            _ => false,
        };
        if !inside {
            return Err(StoreError::NotFound(format!("no live entry {path}")));
        }
        fs::read(&file).map_err(|err| io_error(format!("read {path}"), err))
    }

    pub fn status(&self, rollout: i64) -> RolloutAnswer {
        if let Some(staged) = self.persisted.staged.as_ref().filter(|g| g.rollout == rollout) {
            return RolloutAnswer {
                rollout,
                phase: RolloutPhase::Prepared,
                root: Some(staged.root.clone()),
            };
        }
        if let Some(live) = self.persisted.live.as_ref().filter(|g| g.rollout == rollout) {
            return RolloutAnswer {
                rollout,
                phase: RolloutPhase::Committed,
                root: self.live_root().ok().map(|r| r.to_hex()).or(Some(live.root.clone())),
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
        self.check_fence(&request.control_plane_id, request.epoch)?;
        if let Some(staged) = self.persisted.staged.as_ref().filter(|g| g.rollout == rollout) {
            if staged.root == request.target_root {
                return Ok(RolloutAnswer {
                    rollout,
                    phase: RolloutPhase::Prepared,
                    root: Some(staged.root.clone()),
                });
            }
            return Err(StoreError::Conflict(format!(
                "rollout {rollout} is already staged with another root"
            )));
        }
        if self.persisted.live.as_ref().is_some_and(|g| g.rollout == rollout) {
            return Err(StoreError::Conflict(format!("rollout {rollout} is already committed")));
        }
        // Validate everything before touching the disk.
        let mut parsed = Vec::with_capacity(request.entries.len());
        let mut manifest = BTreeMap::new();
        for entry in &request.entries {
            let path =
                EntryPath::parse(&entry.path).map_err(|err| StoreError::BadRequest(format!("invalid path {:?}: {err}", entry.path)))?;
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
            let hash = timed(|t| &mut t.hash, || entry_hash(&path, &policy, entry.content.as_bytes()));
            if manifest
                .insert(
                    path.to_string(),
                    Manifested {
                        owner: policy.owner.clone(),
                        group: policy.group.clone(),
                        secret: policy.secret,
                    },
                )
                .is_some()
            {
                return Err(StoreError::BadRequest(format!("{path} appears twice")));
            }
            parsed.push((path, policy, hash, entry.content.as_bytes()));
        }
        let computed = timed(|t| &mut t.hash, || root_hash(parsed.iter().map(|(path, _, hash, _)| (path, *hash)))).to_hex();
        if computed != request.target_root {
            return Err(StoreError::RootMismatch(format!(
                "the entries hash to {computed}, not to the target root {}",
                request.target_root
            )));
        }
        if !request.reconcile {
            let live = self.live_root()?.to_hex();
            if live != request.base_root {
                return Err(StoreError::BaseRootMismatch {
                    expected: request.base_root.clone(),
                    actual: live,
                });
            }
        }
        // A newer prepare replaces an older staged one that was never decided here.
        if let Some(old) = self.persisted.staged.take() {
            let _ = fs::remove_dir_all(self.state_dir.join("revisions").join(&old.dir));
            self.remember(old.rollout, RolloutPhase::Aborted);
        }
        let dir_name = format!("r{rollout}-rev{}", request.revision);
        let revisions = self.state_dir.join("revisions");
        let staging = revisions.join(format!("{dir_name}.tmp"));
        let _ = fs::remove_dir_all(&staging);
        fs::create_dir(&staging).map_err(|err| io_error(format!("create {}", staging.display()), err))?;
        fs::set_permissions(&staging, fs::Permissions::from_mode(0o755)).map_err(|err| io_error("chmod staging", err))?;
        if let Err(err) = self.write_staging(&staging, &parsed) {
            // Leave nothing behind: on a full disk, a half-written revision would only
            // make the next attempt fail too.
            let _ = fs::remove_dir_all(&staging);
            return Err(err);
        }
        let final_dir = revisions.join(&dir_name);
        let _ = fs::remove_dir_all(&final_dir);
        fs::rename(&staging, &final_dir).map_err(|err| io_error("rename staging", err))?;
        fsync_dir(&revisions)?;
        // Prove what was staged by reading it back.
        let staged_root = Self::root_of(&self.observe(&final_dir, &manifest, false)?).to_hex();
        if staged_root != request.target_root {
            let _ = fs::remove_dir_all(&final_dir);
            return Err(StoreError::RootMismatch(format!(
                "staged files hash to {staged_root}, not to {} (the file system changed them)",
                request.target_root
            )));
        }
        self.accept_fence(&request.control_plane_id, request.epoch);
        self.persisted.staged = Some(Generation {
            rollout,
            revision: request.revision,
            root: staged_root.clone(),
            dir: dir_name,
            manifest,
        });
        self.remember(rollout, RolloutPhase::Prepared);
        self.save()?;
        Ok(RolloutAnswer {
            rollout,
            phase: RolloutPhase::Prepared,
            root: Some(staged_root),
        })
    }

    /// Writes every entry under `staging` durably: files, then their directories.
    fn write_staging(&self, staging: &Path, parsed: &[(EntryPath, Policy, Hash, &[u8])]) -> Result<()> {
        let mut directories = vec![staging.to_path_buf()];
        for (path, policy, _, content) in parsed {
            let target = staging.join(path.as_str());
            if let Some(parent) = target.parent()
                && !parent.exists()
            {
                fs::create_dir_all(parent).map_err(|err| io_error(format!("create {}", parent.display()), err))?;
                let mut dir = parent.to_path_buf();
                while dir != *staging {
                    directories.push(dir.clone());
                    dir = dir.parent().map(Path::to_path_buf).unwrap_or_else(|| staging.to_path_buf());
                }
            }
            write_atomically(&target, content, policy.mode)?;
            self.apply_ownership(&target, policy)?;
        }
        for dir in directories.iter().rev() {
            fsync_dir(dir)?;
        }
        Ok(())
    }

    fn apply_ownership(&self, file: &Path, policy: &Policy) -> Result<()> {
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
        nix::unistd::chown(file, uid, gid).map_err(|err| {
            StoreError::Io(format!(
                "cannot chown {} to {}:{}: {err}",
                file.display(),
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
        self.check_fence(&fence.control_plane_id, fence.epoch)?;
        self.accept_fence(&fence.control_plane_id, fence.epoch);
        if self.persisted.live.as_ref().is_some_and(|g| g.rollout == rollout)
            && self.persisted.staged.as_ref().is_none_or(|g| g.rollout != rollout)
        {
            // Already committed: make sure the link points there (a crash may have
            // happened between the rename and the state write) and answer the root.
            return Ok(RolloutAnswer {
                rollout,
                phase: RolloutPhase::Committed,
                root: Some(self.live_root()?.to_hex()),
            });
        }
        let staged = match self.persisted.staged.clone() {
            Some(staged) if staged.rollout == rollout => staged,
            _ => {
                let phase = self.status(rollout).phase;
                return Err(match phase {
                    RolloutPhase::Aborted => StoreError::Conflict(format!("rollout {rollout} was aborted here")),
                    _ => StoreError::NotFound(format!("rollout {rollout} is not staged here")),
                });
            }
        };
        let target = self.state_dir.join("revisions").join(&staged.dir);
        let target = fs::canonicalize(&target).map_err(|err| io_error(format!("resolve {}", target.display()), err))?;
        self.switch_live(&target)?;
        let previous = self.persisted.live.replace(staged);
        self.persisted.staged = None;
        self.remember(rollout, RolloutPhase::Committed);
        self.save()?;
        // Keep the previous generation for readers still inside it; drop older ones. Each
        // is renamed away first, so a slow reader still inside it gets "not found" rather
        // than a listing that deletion has half emptied.
        let keep: Vec<String> = self.persisted.live.iter().chain(previous.iter()).map(|g| g.dir.clone()).collect();
        let revisions = self.state_dir.join("revisions");
        if let Ok(entries) = fs::read_dir(&revisions) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !keep.contains(&name) {
                    let trash = revisions.join(format!(".trash-{name}"));
                    let doomed = if name.starts_with(".trash-") || fs::rename(entry.path(), &trash).is_err() {
                        entry.path()
                    } else {
                        trash
                    };
                    let _ = fs::remove_dir_all(doomed);
                }
            }
        }
        Ok(RolloutAnswer {
            rollout,
            phase: RolloutPhase::Committed,
            root: Some(self.live_root()?.to_hex()),
        })
    }

    /// Points the live path at `target` atomically.
    fn switch_live(&self, target: &Path) -> Result<()> {
        let parent = self.live.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(|err| io_error(format!("create {}", parent.display()), err))?;
        if let Ok(meta) = fs::symlink_metadata(&self.live)
            && meta.is_dir()
        {
            // A plain directory is where the live link must go: keep its contents aside.
            let aside = self.state_dir.join(format!("original-{}", std::process::id()));
            fs::rename(&self.live, &aside).map_err(|err| io_error(format!("move the original {} aside", self.live.display()), err))?;
        }
        let name = self
            .live
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "live".into());
        let link = parent.join(format!(".{name}.etc-shadow-link"));
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(target, &link).map_err(|err| io_error(format!("create link {}", link.display()), err))?;
        fs::rename(&link, &self.live).map_err(|err| io_error(format!("switch {}", self.live.display()), err))?;
        fsync_dir(parent)
    }

    /// Drops the staged revision. Idempotent; refuses a rollout already committed.
    pub fn abort(&mut self, rollout: i64, fence: &Fence) -> Result<RolloutAnswer> {
        self.check_fence(&fence.control_plane_id, fence.epoch)?;
        if self.persisted.live.as_ref().is_some_and(|g| g.rollout == rollout) {
            return Err(StoreError::Conflict(format!("rollout {rollout} is already committed here")));
        }
        // Only a write that changes something records the writer's epoch: an abort of a
        // rollout this shadow never staged (a refused writer cleaning up) must not fence
        // the control plane that actually writes here.
        if let Some(staged) = self.persisted.staged.take_if(|g| g.rollout == rollout) {
            let _ = fs::remove_dir_all(self.state_dir.join("revisions").join(&staged.dir));
            self.accept_fence(&fence.control_plane_id, fence.epoch);
        }
        self.remember(rollout, RolloutPhase::Aborted);
        self.save()?;
        Ok(RolloutAnswer {
            rollout,
            phase: RolloutPhase::Aborted,
            root: None,
        })
    }
}

#[cfg(test)]
mod tests;
