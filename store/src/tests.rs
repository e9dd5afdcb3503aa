use super::*;
use domain::protocol::StagedEntry;

fn entry(path: &str, content: &str, mode: &str) -> StagedEntry {
    StagedEntry {
        path: path.into(),
        content: Some(content.into()),
        entry_hash: None,
        mode: mode.into(),
        owner: String::new(),
        group: String::new(),
        secret: false,
        sealed: false,
    }
}

fn root_of(entries: &[StagedEntry]) -> String {
    let parsed: Vec<(EntryPath, Hash)> = entries
        .iter()
        .map(|e| {
            let path = EntryPath::parse(&e.path).unwrap();
            let policy = Policy {
                mode: parse_mode(&e.mode).unwrap(),
                owner: e.owner.clone(),
                group: e.group.clone(),
                secret: e.secret,
            };
            let hash = entry_hash(&path, &policy, e.content.as_deref().unwrap_or_default().as_bytes());
            (path, hash)
        })
        .collect();
    root_hash(parsed.iter().map(|(p, h)| (p, *h))).to_hex()
}

fn request(epoch: i64, revision: i64, base: &str, entries: Vec<StagedEntry>) -> PrepareRequest {
    PrepareRequest {
        control_plane_id: "cp-a".into(),
        epoch,
        revision,
        target_root: root_of(&entries),
        base_root: base.into(),
        reconcile: false,
        entries,
        audit_head: None,
        content_key: None,
        deadline_ms: None,
        prestaged: false,
    }
}

fn fence(epoch: i64) -> Fence {
    Fence {
        control_plane_id: "cp-a".into(),
        epoch,
        target_root: None,
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    live: PathBuf,
    state: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let state = dir.path().join("state");
    Fixture { live, state, _dir: dir }
}

fn empty_root() -> String {
    root_hash([]).to_hex()
}

#[test]
fn prepare_then_commit_switches_live_and_proves_the_root() {
    let f = fixture();
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    assert_eq!(store.state(false).unwrap().live_root, empty_root());
    let entries = vec![
        entry("app.toml", "port = 1\n", "0644"),
        entry("nginx/site.conf", "listen 80;\n", "0600"),
    ];
    let req = request(1, 1, &empty_root(), entries);
    let prepared = store.prepare(7, &req).unwrap();
    assert_eq!(prepared.phase, RolloutPhase::Prepared);
    assert_eq!(prepared.root.as_deref(), Some(req.target_root.as_str()));
    assert!(!f.live.join("app.toml").exists(), "nothing is live before the commit");
    assert_eq!(
        store.live_root().unwrap().to_hex(),
        empty_root(),
        "the staging is not seen as drift"
    );
    let committed = store.commit(7, &fence(1)).unwrap();
    assert_eq!(committed.root.as_deref(), Some(req.target_root.as_str()));
    assert_eq!(fs::read_to_string(f.live.join("nginx/site.conf")).unwrap(), "listen 80;\n");
    assert_eq!(
        fs::metadata(f.live.join("nginx/site.conf")).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    // kubelet's layout inside the directory: `..data` is the switched link, each
    // top-level name a link through it.
    assert!(fs::symlink_metadata(&f.live).unwrap().is_dir());
    assert_eq!(fs::read_link(f.live.join("..data")).unwrap(), Path::new("..r7-rev1"));
    assert_eq!(fs::read_link(f.live.join("nginx")).unwrap(), Path::new("..data/nginx"));
    // Idempotent, and it survives a restart.
    assert_eq!(store.commit(7, &fence(1)).unwrap().phase, RolloutPhase::Committed);
    drop(store);
    let store = Store::open(&f.live, &f.state, None).unwrap();
    let state = store.state(true).unwrap();
    assert_eq!(state.live_root, req.target_root);
    assert_eq!(state.live_revision, Some(1));
    assert_eq!(state.entries.unwrap().len(), 2);
    assert_eq!(store.status(7).phase, RolloutPhase::Committed);
}

#[test]
fn a_drifted_base_is_refused_unless_reconciling() {
    let f = fixture();
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    let first = request(1, 1, &empty_root(), vec![entry("a.conf", "a\n", "0644")]);
    store.prepare(1, &first).unwrap();
    store.commit(1, &fence(1)).unwrap();
    fs::write(f.live.join("a.conf"), "hand edit\n").unwrap();
    let mut second = request(1, 2, &first.target_root, vec![entry("a.conf", "b\n", "0644")]);
    let err = store.prepare(2, &second).unwrap_err();
    assert!(matches!(err, StoreError::BaseRootMismatch { .. }), "{err}");
    second.reconcile = true;
    store.prepare(2, &second).unwrap();
    store.commit(2, &fence(1)).unwrap();
    assert_eq!(fs::read_to_string(f.live.join("a.conf")).unwrap(), "b\n");
}

#[test]
fn writes_from_another_control_plane_or_an_older_epoch_are_fenced() {
    let f = fixture();
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    store
        .prepare(1, &request(5, 1, &empty_root(), vec![entry("a", "1", "0644")]))
        .unwrap();
    let mut other = request(9, 1, &empty_root(), vec![entry("a", "2", "0644")]);
    other.control_plane_id = "cp-b".into();
    assert!(matches!(store.prepare(2, &other), Err(StoreError::Fenced(_))));
    let older = request(4, 1, &empty_root(), vec![entry("a", "3", "0644")]);
    assert!(matches!(store.prepare(3, &older), Err(StoreError::Fenced(_))));
    assert!(matches!(
        store.commit(
            1,
            &Fence {
                control_plane_id: "cp-b".into(),
                epoch: 9,
                target_root: None,
            }
        ),
        Err(StoreError::Fenced(_))
    ));
    // A pinned id refuses even the first writer when it differs.
    let g = fixture();
    let mut pinned = Store::open(&g.live, &g.state, Some("cp-z".into())).unwrap();
    assert!(matches!(
        pinned.prepare(1, &request(1, 1, &empty_root(), vec![])),
        Err(StoreError::Fenced(_))
    ));
}

#[test]
fn tampered_requests_change_nothing() {
    let f = fixture();
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    let mut wrong_root = request(1, 1, &empty_root(), vec![entry("a", "1", "0644")]);
    wrong_root.entries[0].content = Some("tampered".into());
    assert!(matches!(store.prepare(1, &wrong_root), Err(StoreError::RootMismatch(_))));
    for path in ["../escape", "/etc/passwd", "a/../../b"] {
        let mut escape = request(1, 1, &empty_root(), vec![entry("a", "1", "0644")]);
        escape.entries[0].path = path.into();
        assert!(matches!(store.prepare(1, &escape), Err(StoreError::BadRequest(_))), "{path}");
    }
    assert!(store.state(false).unwrap().staged.is_none());
    assert_eq!(fs::read_dir(&f.live).unwrap().count(), 0, "nothing written");
}

#[test]
fn abort_drops_the_staged_revision_and_commit_after_abort_is_refused() {
    let f = fixture();
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    store
        .prepare(3, &request(1, 1, &empty_root(), vec![entry("a", "1", "0644")]))
        .unwrap();
    store.abort(3, &fence(1)).unwrap();
    assert_eq!(store.status(3).phase, RolloutPhase::Aborted);
    assert!(matches!(store.commit(3, &fence(1)), Err(StoreError::Conflict(_))));
    assert_eq!(store.abort(3, &fence(1)).unwrap().phase, RolloutPhase::Aborted, "idempotent");
    assert_eq!(fs::read_dir(&f.live).unwrap().count(), 0, "the staging is gone");
    // A prepare that arrives after its abort is refused: nothing lingers undecided.
    let late = store.prepare(3, &request(1, 1, &empty_root(), vec![entry("a", "1", "0644")]));
    assert!(matches!(late, Err(StoreError::Conflict(_))), "{late:?}");
}

#[test]
fn chmod_changes_the_observed_root() {
    let f = fixture();
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    let req = request(1, 1, &empty_root(), vec![entry("a", "1", "0644")]);
    store.prepare(1, &req).unwrap();
    store.commit(1, &fence(1)).unwrap();
    fs::set_permissions(f.live.join("a"), fs::Permissions::from_mode(0o666)).unwrap();
    assert_ne!(store.live_root().unwrap().to_hex(), req.target_root);
}

/// Lets every file's last change leave the racy window, so its hash may be cached.
fn wait_out_racy_window() {
    std::thread::sleep(RACY_WINDOW + Duration::from_millis(50));
}

#[test]
fn observing_rehashes_only_the_files_that_changed() {
    let f = fixture();
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    let entries: Vec<_> = (0..20)
        .map(|i| entry(&format!("dir/file{i}"), &format!("value {i}"), "0644"))
        .collect();
    let req = request(1, 1, &empty_root(), entries);
    store.prepare(1, &req).unwrap();
    store.commit(1, &fence(1)).unwrap();
    wait_out_racy_window();
    let first = store.live_root().unwrap();
    let hashed = store.files_hashed();
    assert_eq!(store.live_root().unwrap(), first);
    assert_eq!(store.files_hashed(), hashed, "an unchanged tree is not read again");

    // One edit: one file is read again, and the root moves.
    fs::write(f.live.join("dir/file7"), "edited").unwrap();
    let edited = store.live_root().unwrap();
    assert_ne!(edited, first);
    assert_eq!(store.files_hashed(), hashed + 1);

    // An edit that restores size and mtime is still seen (ctime moved).
    let meta = fs::metadata(f.live.join("dir/file3")).unwrap();
    let mtime = meta.modified().unwrap();
    fs::write(f.live.join("dir/file3"), "VALUE 3").unwrap();
    fs::File::options()
        .write(true)
        .open(f.live.join("dir/file3"))
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert_ne!(store.live_root().unwrap(), edited, "a disguised edit changes the root");

    // A chmod, a removal and an addition are all seen; the result equals a cold look.
    fs::set_permissions(f.live.join("dir/file1"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::remove_file(f.live.join("dir/file2")).unwrap();
    fs::write(f.live.join("dir/new"), "new").unwrap();
    let warm = store.live_root().unwrap();
    let cold = Store::open(&f.live, &f.state, None).unwrap().live_root().unwrap();
    assert_eq!(warm, cold);
}

#[test]
fn an_owner_the_shadow_cannot_apply_fails_prepare_and_stages_nothing() {
    let f = fixture();
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    let mut owned = entry("owned.conf", "x", "0640");
    owned.owner = "no-such-user-on-this-shadow".into();
    let req = request(1, 1, &empty_root(), vec![entry("a", "1", "0644"), owned]);
    let err = store.prepare(1, &req).unwrap_err();
    assert_eq!(err.code(), "io");
    assert!(err.to_string().contains("no such user \"no-such-user-on-this-shadow\""), "{err}");
    assert_eq!(store.status(1).phase, RolloutPhase::Unknown);
    let leftovers: Vec<_> = fs::read_dir(&f.live).unwrap().flatten().collect();
    assert!(leftovers.is_empty(), "nothing staged: {leftovers:?}");
    assert!(matches!(store.commit(1, &fence(1)), Err(StoreError::NotFound(_))));
}

#[test]
fn paths_are_confined_to_the_live_tree_whatever_the_caller_sends() {
    let f = fixture();
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    let req = request(1, 1, &empty_root(), vec![entry("conf/app.toml", "port = 1\n", "0644")]);
    store.prepare(1, &req).unwrap();
    store.commit(1, &fence(1)).unwrap();
    // Outside the tree, a file the agent must never serve.
    let outside = f._dir.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("passwd"), "root:x:0:0").unwrap();
    // Someone on the node plants symlinks inside the live tree.
    std::os::unix::fs::symlink(&outside, f.live.join("escape")).unwrap();
    std::os::unix::fs::symlink(outside.join("passwd"), f.live.join("conf/passwd")).unwrap();
    for path in [
        "escape/passwd",
        "conf/passwd",
        "../outside/passwd",
        "/etc/passwd",
        "conf/../../outside/passwd",
        "conf/app.toml\0",
    ] {
        let answer = store.read_entry(path);
        assert!(
            matches!(answer, Err(StoreError::NotFound(_) | StoreError::BadRequest(_))),
            "{path:?} was served: {answer:?}"
        );
    }
    assert_eq!(store.read_entry("conf/app.toml").unwrap(), b"port = 1\n");
    // Symlinks are never followed, and never skipped: each is an entry of its own kind.
    let state = store.state(true).unwrap();
    let seen: Vec<(String, Option<String>)> = state.entries.unwrap().into_iter().map(|e| (e.path, e.kind)).collect();
    assert_eq!(
        seen,
        [
            ("conf/app.toml".to_string(), None),
            ("conf/passwd".to_string(), Some("symlink".to_string())),
            ("escape".to_string(), Some("symlink".to_string()))
        ]
    );
    assert_ne!(state.live_root, req.target_root, "planted links are drift");
    // A NUL in a prepared path is refused like `..`.
    let mut nul = request(1, 2, &state.live_root, vec![entry("a", "1", "0644")]);
    nul.entries[0].path = "a\0b".into();
    assert!(matches!(store.prepare(2, &nul), Err(StoreError::BadRequest(_))));
}

/// Every file directly or below `dir`, as bytes, without following links.
fn files_under(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in fs::read_dir(&current).unwrap().flatten() {
            let meta = fs::symlink_metadata(entry.path()).unwrap();
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.is_file() {
                let relative = entry.path().strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                files.insert(relative, fs::read(entry.path()).unwrap());
            }
        }
    }
    files
}

#[test]
fn an_existing_directory_is_adopted_in_place_and_its_files_stay_recoverable() {
    let f = fixture();
    fs::create_dir_all(f.live.join("conf.d")).unwrap();
    fs::write(f.live.join("app.toml"), "hand-made\n").unwrap();
    fs::write(f.live.join("conf.d/old.conf"), "old\n").unwrap();
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    let before = store.state(false).unwrap().live_root;
    let mut req = request(1, 1, &before, vec![entry("app.toml", "port = 1\n", "0644")]);
    req.reconcile = true;
    store.prepare(1, &req).unwrap();
    let committed = store.commit(1, &fence(1)).unwrap();
    assert_eq!(
        committed.root.as_deref(),
        Some(req.target_root.as_str()),
        "an exact copy: nothing else left"
    );
    assert_eq!(fs::read_to_string(f.live.join("app.toml")).unwrap(), "port = 1\n");
    // The original content is kept inside the directory itself (the same file system).
    let originals: Vec<PathBuf> = fs::read_dir(&f.live)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(ORIGINAL_PREFIX))
        .collect();
    assert_eq!(originals.len(), 1, "{originals:?}");
    let kept = files_under(&originals[0]);
    assert_eq!(kept.get("app.toml").map(Vec::as_slice), Some(&b"hand-made\n"[..]));
    assert_eq!(kept.get("conf.d/old.conf").map(Vec::as_slice), Some(&b"old\n"[..]));
}

#[test]
fn a_planted_symlink_is_drift_and_a_reconcile_neither_follows_nor_keeps_it() {
    let f = fixture();
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    let req = request(
        1,
        1,
        &empty_root(),
        vec![entry("app.toml", "port = 1\n", "0644"), entry("conf.d/a.conf", "a\n", "0644")],
    );
    store.prepare(1, &req).unwrap();
    store.commit(1, &fence(1)).unwrap();
    let evil = f._dir.path().join("evil.conf");
    fs::write(&evil, "evil\n").unwrap();
    // A new name beside the managed ones, a managed file replaced by a link, and a fifo.
    std::os::unix::fs::symlink(&evil, f.live.join("conf.d/zz.conf")).unwrap();
    fs::remove_file(f.live.join("app.toml")).unwrap();
    std::os::unix::fs::symlink(&evil, f.live.join("app.toml")).unwrap();
    nix::unistd::mkfifo(&f.live.join("pipe"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let state = store.state(true).unwrap();
    assert_ne!(state.live_root, req.target_root);
    let kinds: BTreeMap<String, Option<String>> = state.entries.unwrap().into_iter().map(|e| (e.path, e.kind)).collect();
    assert_eq!(kinds.get("app.toml"), Some(&Some("symlink".to_string())), "{kinds:?}");
    assert_eq!(kinds.get("conf.d/zz.conf"), Some(&Some("symlink".to_string())), "{kinds:?}");
    assert_eq!(kinds.get("pipe"), Some(&Some("special".to_string())), "{kinds:?}");
    assert!(
        matches!(store.read_entry("app.toml"), Err(StoreError::NotFound(_))),
        "a planted link is not served"
    );

    let mut again = request(1, 1, &state.live_root, req.entries.clone());
    again.reconcile = true;
    store.prepare(2, &again).unwrap();
    let committed = store.commit(2, &fence(1)).unwrap();
    assert_eq!(committed.root.as_deref(), Some(req.target_root.as_str()));
    assert_eq!(fs::read_to_string(&evil).unwrap(), "evil\n", "the link's target was never written");
    assert_eq!(fs::read_to_string(f.live.join("app.toml")).unwrap(), "port = 1\n");
    // conf.d came from the generation, so the planted link inside it went with the old one.
    assert!(fs::symlink_metadata(f.live.join("conf.d/zz.conf")).is_err());
}

#[test]
fn a_kill_after_the_switch_before_the_state_is_saved_is_finished_at_the_next_start() {
    let f = fixture();
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    let first = request(1, 1, &empty_root(), vec![entry("app.toml", "port = 1\n", "0644")]);
    store.prepare(1, &first).unwrap();
    store.commit(1, &fence(1)).unwrap();
    let second = request(
        1,
        2,
        &first.target_root,
        vec![entry("app.toml", "port = 2\n", "0644"), entry("new.conf", "n\n", "0644")],
    );
    store.prepare(2, &second).unwrap();
    // The switch alone, as if the process died right after it.
    let staged = store.persisted.staged.clone().unwrap();
    store.switch_to(&staged).unwrap();
    drop(store);
    let store = Store::open(&f.live, &f.state, None).unwrap();
    assert_eq!(store.status(2).phase, RolloutPhase::Committed);
    let state = store.state(false).unwrap();
    assert_eq!(state.live_revision, Some(2));
    assert_eq!(state.live_root, second.target_root);
}

#[test]
fn two_stores_on_one_directory_see_each_others_fence() {
    let f = fixture();
    let mut first = Store::open(&f.live, &f.state, None).unwrap();
    let mut second = Store::open(&f.live, &f.state, None).unwrap();
    let req = request(1, 1, &empty_root(), vec![entry("a", "1", "0644")]);
    first.prepare(1, &req).unwrap();
    first.commit(1, &fence(1)).unwrap();
    let mut other = request(9, 5, &req.target_root, vec![entry("a", "2", "0644")]);
    other.control_plane_id = "cp-b".into();
    assert!(matches!(second.prepare(1, &other), Err(StoreError::Fenced(_))));
}

#[test]
fn a_writer_whose_rollout_numbers_collide_cannot_commit_or_abort_what_it_did_not_stage() {
    let f = fixture();
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    let mine = request(1, 1, &empty_root(), vec![entry("a", "mine", "0644")]);
    let theirs = request(2, 1, &empty_root(), vec![entry("a", "theirs", "0644")]);
    let with_root = |epoch: i64, root: &str| Fence {
        control_plane_id: "cp-a".into(),
        epoch,
        target_root: Some(root.to_string()),
    };
    // A copy restored from an old backup aborts "its" rollout 4 before this writer's
    // rollout 4 arrives: the later prepare is not taken for a late one.
    store.abort(4, &with_root(2, &theirs.target_root)).unwrap();
    store.prepare(4, &mine).unwrap();
    // Its commit and abort of number 4 leave this writer's staging alone.
    assert!(matches!(
        store.commit(4, &with_root(2, &theirs.target_root)),
        Err(StoreError::Conflict(_))
    ));
    store.abort(4, &with_root(2, &theirs.target_root)).unwrap();
    assert_eq!(store.status(4).phase, RolloutPhase::Prepared);
    let committed = store.commit(4, &with_root(1, &mine.target_root)).unwrap();
    assert_eq!(committed.root.as_deref(), Some(mine.target_root.as_str()));
    // A late prepare of the very rollout that was aborted is still refused.
    store.abort(5, &with_root(2, &theirs.target_root)).unwrap();
    let mut late = theirs.clone();
    late.base_root = mine.target_root.clone();
    late.revision = 2;
    assert!(matches!(store.prepare(5, &late), Err(StoreError::Conflict(_))));
}

#[test]
fn a_switch_whose_state_was_not_saved_is_finished_before_the_next_write_not_deleted() {
    let f = fixture();
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    let first = request(1, 1, &empty_root(), vec![entry("app.toml", "port = 1\n", "0644")]);
    store.prepare(1, &first).unwrap();
    store.commit(1, &fence(1)).unwrap();
    let second = request(1, 2, &first.target_root, vec![entry("app.toml", "port = 2\n", "0644")]);
    store.prepare(2, &second).unwrap();
    // The switch happened, the state write after it failed (a full disk, say).
    let staged = store.persisted.staged.clone().unwrap();
    store.switch_to(&staged).unwrap();
    // The next write, in the same process, finishes that commit instead of dropping the
    // generation readers are in.
    let third = request(1, 3, &second.target_root, vec![entry("app.toml", "port = 3\n", "0644")]);
    store.prepare(3, &third).unwrap();
    assert_eq!(store.status(2).phase, RolloutPhase::Committed);
    assert_eq!(fs::read_to_string(f.live.join("app.toml")).unwrap(), "port = 2\n");
    assert_eq!(store.live_root().unwrap().to_hex(), second.target_root);
}

#[test]
fn names_shaped_like_the_stores_own_but_planted_are_seen_not_hidden() {
    let f = fixture();
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    let req = request(1, 1, &empty_root(), vec![entry("a", "1", "0644")]);
    store.prepare(1, &req).unwrap();
    store.commit(1, &fence(1)).unwrap();
    for planted in ["..r9-rev9", "..original-99999999999999999999", "..data2"] {
        fs::create_dir(f.live.join(planted)).unwrap();
        fs::write(f.live.join(planted).join("x"), "hidden?").unwrap();
    }
    let state = store.state(true).unwrap();
    assert_ne!(state.live_root, req.target_root, "planted names are drift");
    let kinds: Vec<(String, Option<String>)> = state.entries.unwrap().into_iter().map(|e| (e.path, e.kind)).collect();
    for planted in ["..r9-rev9/x", "..original-99999999999999999999/x", "..data2/x"] {
        assert!(
            kinds.contains(&(planted.to_string(), Some("invalid_name".to_string()))),
            "{planted} in {kinds:?}"
        );
    }
    // A reconcile moves them aside with the rest, and they stay recoverable.
    let mut again = request(1, 1, &state.live_root, req.entries.clone());
    again.reconcile = true;
    store.prepare(2, &again).unwrap();
    assert_eq!(store.commit(2, &fence(1)).unwrap().root.as_deref(), Some(req.target_root.as_str()));
}

#[test]
fn a_late_prepare_of_an_older_rollout_does_not_replace_a_newer_staging() {
    let f = fixture();
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    let newer = request(1, 1, &empty_root(), vec![entry("a", "new", "0644")]);
    let older = request(1, 1, &empty_root(), vec![entry("a", "old", "0644")]);
    store.prepare(8, &newer).unwrap();
    assert!(matches!(store.prepare(7, &older), Err(StoreError::Conflict(_))));
    assert_eq!(
        store.commit(8, &fence(1)).unwrap().root.as_deref(),
        Some(newer.target_root.as_str())
    );
}

#[test]
fn a_state_file_naming_a_directory_outside_is_refused() {
    let f = fixture();
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    store
        .prepare(1, &request(1, 1, &empty_root(), vec![entry("a", "1", "0644")]))
        .unwrap();
    drop(store);
    let body = String::from_utf8(crate::statefile::read_state_body(&f.state).unwrap()).unwrap();
    assert!(body.contains("\"r1-rev1\""), "{body}");
    crate::statefile::write_state_body(&f.state, body.replace("\"r1-rev1\"", "\"/../../../victim\"").as_bytes()).unwrap();
    assert!(matches!(Store::open(&f.live, &f.state, None), Err(StoreError::Io(_))));
}

#[test]
fn a_symlinked_directory_is_refused_unless_it_is_the_old_layout() {
    let f = fixture();
    let elsewhere = f._dir.path().join("srv-app");
    fs::create_dir_all(&elsewhere).unwrap();
    fs::write(elsewhere.join("app.toml"), "kept\n").unwrap();
    std::os::unix::fs::symlink(&elsewhere, &f.live).unwrap();
    assert!(matches!(Store::open(&f.live, &f.state, None), Err(StoreError::BadRequest(_))));
    assert_eq!(fs::read_to_string(elsewhere.join("app.toml")).unwrap(), "kept\n", "untouched");
    // An earlier version's link into its revisions becomes a managed directory.
    fs::remove_file(&f.live).unwrap();
    let old = f._dir.path().join("old-state").join("revisions").join("r3-rev2");
    fs::create_dir_all(&old).unwrap();
    std::os::unix::fs::symlink(&old, &f.live).unwrap();
    let store = Store::open(&f.live, &f.state, None).unwrap();
    assert!(fs::symlink_metadata(&f.live).unwrap().is_dir());
    assert_eq!(store.live_root().unwrap().to_hex(), empty_root());
}

#[test]
fn a_generation_staged_by_a_process_killed_before_saving_is_cleaned_not_drift() {
    let f = fixture();
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    let req = request(1, 1, &empty_root(), vec![entry("a", "1", "0644")]);
    store.prepare(1, &req).unwrap();
    store.commit(1, &fence(1)).unwrap();
    // What a kill between the staging's rename and the state write leaves behind.
    fs::create_dir(f.live.join("..r2-rev2")).unwrap();
    fs::write(f.live.join("..r2-rev2/a"), "2").unwrap();
    drop(store);
    let store = Store::open(&f.live, &f.state, None).unwrap();
    assert_eq!(store.live_root().unwrap().to_hex(), req.target_root);
    assert!(!f.live.join("..r2-rev2").exists());
}

#[test]
fn directories_are_opened_to_0755_and_files_to_their_mode_whatever_the_umask() {
    let f = fixture();
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    // A private umask (a hardened service's): what the store makes is born owner-only,
    // and readers can still go through the directories of a committed revision.
    let previous = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let entries = vec![entry("deep/er/site.conf", "listen 80;\n", "0644")];
    let req = request(1, 1, &empty_root(), entries);
    let prepared = store.prepare(7, &req);
    nix::sys::stat::umask(previous);
    prepared.unwrap();
    store.commit(7, &fence(1)).unwrap();
    let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&f.live.join("deep")), 0o755);
    assert_eq!(mode(&f.live.join("deep/er")), 0o755);
    assert_eq!(mode(&f.live.join("deep/er/site.conf")), 0o644);
    assert_eq!(mode(&f.state.join("lock")), 0o600);
}

fn hooks(text: &str) -> Option<std::sync::Arc<hooks::Hooks>> {
    Some(std::sync::Arc::new(hooks::Hooks::parse(text).unwrap()))
}

#[test]
fn a_validate_hook_that_refuses_stages_nothing_and_one_that_accepts_sees_the_staged_tree() {
    let f = fixture();
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    // The validator reads the staged tree ({staged}), never the live one.
    store.set_hooks(hooks(
        r#"[validate]
command = ["/bin/sh", "-c", "cat \"$1/app.conf\"; grep -q '^ok' \"$1/app.conf\"", "sh", "{staged}"]
"#,
    ));
    let bad = request(1, 1, &empty_root(), vec![entry("app.conf", "broken line\n", "0644")]);
    let err = store.prepare(1, &bad).unwrap_err();
    let StoreError::ValidateFailed(run) = &err else { panic!("{err}") };
    assert_eq!(err.code(), "validate_failed");
    assert_eq!(run.exit_code, Some(1));
    assert!(run.output.contains("broken line"), "{}", run.output);
    assert_eq!(store.status(1).phase, RolloutPhase::Unknown);
    assert!(store.state(false).unwrap().staged.is_none());
    let names: Vec<String> = fs::read_dir(&f.live)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("..r"))
        .collect();
    assert!(names.is_empty(), "a refused staging was left behind: {names:?}");
    // Nothing was accepted from the refused writer: a good prepare then commits.
    let good_entries = vec![entry("app.conf", "ok\n", "0644")];
    let good = request(1, 1, &empty_root(), good_entries.clone());
    let answer = store.prepare(2, &good).unwrap();
    assert!(answer.hook.as_ref().is_some_and(|h| h.ok && h.hook == "validate"));
    // A dry run answers the validator's verdict and leaves nothing behind.
    let refused = store
        .validate_dry_run(&request(1, 1, &empty_root(), vec![entry("app.conf", "nope\n", "0644")]))
        .unwrap()
        .unwrap();
    assert!(!refused.ok);
    assert!(
        fs::read_dir(&f.live)
            .unwrap()
            .all(|e| !e.unwrap().file_name().to_string_lossy().starts_with("..r0"))
    );
    assert_eq!(store.state(false).unwrap().staged.map(|s| s.rollout), Some(2));
    let committed = store.commit(2, &fence(1)).unwrap();
    assert_eq!(committed.root.as_deref(), Some(root_of(&good_entries).as_str()));
}

#[test]
fn the_reload_hook_runs_after_the_switch_and_its_run_is_answered_again_on_a_repeated_commit() {
    let f = fixture();
    let log = f._dir.path().join("reloads.log");
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    let reload = format!(
        "[reload]\ncommand = [\"/bin/sh\", \"-c\", \"cat {{live}}/app.conf >> {}; echo reloaded; exit $(cat {{live}}/code)\"]\n",
        log.display()
    );
    store.set_hooks(hooks(&reload));
    let entries = vec![entry("app.conf", "v1\n", "0644"), entry("code", "0", "0644")];
    store.prepare(1, &request(1, 1, &empty_root(), entries.clone())).unwrap();
    let answer = store.commit(1, &fence(1)).unwrap();
    let run = answer.hook.unwrap();
    assert!(run.ok, "{run:?}");
    // It ran once, after the switch: it read the new file through the live directory.
    assert_eq!(fs::read_to_string(&log).unwrap(), "v1\n");
    let again = store.commit(1, &fence(1)).unwrap();
    assert_eq!(again.hook.map(|h| h.ok), Some(true));
    assert_eq!(fs::read_to_string(&log).unwrap(), "v1\n", "a repeated commit reloads nothing");
    // A failing reload is reported, and the files are committed anyway.
    let next = vec![entry("app.conf", "v2\n", "0644"), entry("code", "7", "0644")];
    store.prepare(2, &request(1, 2, &root_of(&entries), next.clone())).unwrap();
    let answer = store.commit(2, &fence(1)).unwrap();
    assert_eq!(answer.root.as_deref(), Some(root_of(&next).as_str()));
    let run = answer.hook.unwrap();
    assert_eq!((run.ok, run.exit_code), (false, Some(7)));
    assert!(run.output.contains("reloaded"));
}

#[test]
fn a_reload_owed_when_the_process_died_runs_at_the_repeated_commit() {
    let f = fixture();
    let log = f._dir.path().join("reloads.log");
    let reload = format!("[reload]\ncommand = [\"/bin/sh\", \"-c\", \"echo run >> {}\"]\n", log.display());
    let entries = vec![entry("app.conf", "v1\n", "0644")];
    {
        let mut store = Store::open(&f.live, &f.state, None).unwrap();
        store.set_hooks(hooks(&reload));
        store.prepare(1, &request(1, 1, &empty_root(), entries.clone())).unwrap();
        // Killed right after the link's switch, before the state recorded it (the agent's
        // `after_switch` crash point): the state still says staged.
        let staged = store.persisted.staged.clone().unwrap();
        store.switch_to(&staged).unwrap();
    }
    assert!(!log.exists());
    // The agent opens its store (which finishes the switch) before it reads its hooks.
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    assert_eq!(store.persisted.reload_pending, Some(1), "the reload is owed");
    store.set_hooks(hooks(&reload));
    let answer = store.commit(1, &fence(1)).unwrap();
    assert_eq!(answer.hook.map(|h| h.ok), Some(true));
    assert_eq!(fs::read_to_string(&log).unwrap(), "run\n");
    store.commit(1, &fence(1)).unwrap();
    assert_eq!(fs::read_to_string(&log).unwrap(), "run\n", "owed once, run once");
}

/// A small deterministic generator (xorshift64*), so a failing case can be replayed from
/// its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What a reader of the managed directory finds: every file's bytes and mode, through
/// the store's own links, skipping the store's names (`..*`).
fn served(live: &Path) -> BTreeMap<String, (Vec<u8>, u32)> {
    let mut files = BTreeMap::new();
    let mut pending: Vec<(PathBuf, String)> = fs::read_dir(live)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with(".."))
        .map(|name| (live.join(&name), name))
        .collect();
    while let Some((disk, relative)) = pending.pop() {
        let meta = fs::metadata(&disk).unwrap();
        if meta.is_dir() {
            for entry in fs::read_dir(&disk).unwrap().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                pending.push((entry.path(), format!("{relative}/{name}")));
            }
        } else {
            files.insert(relative, (fs::read(&disk).unwrap(), meta.permissions().mode() & 0o7777));
        }
    }
    files
}

/// The incremental path against the full one: two shadows take the same random sequence
/// of revisions (entries added, edited, chmod'ed, removed, moved between a file and a
/// directory), one sent everything each time, the other sent by hash whatever it served
/// before. The incremental one is also tampered with between rollouts (a file edited in
/// place through the live link, replaced, removed, chmod'ed, a file planted; then it is
/// reconciled) and restarted (a cold cache), and is sometimes sent by hash an entry it
/// does not hold. After every commit both directories serve byte for byte the same files
/// with the same modes, and both roots are the revision's.
#[test]
fn random_edit_sequences_stage_the_same_trees_incrementally_and_in_full() {
    const PATHS: [&str; 8] = ["a.conf", "b.conf", "d/x.conf", "d/y.conf", "d/e/z.conf", "d/e", "f/g.yaml", "f"];
    let seeds: u64 = std::env::var("ETC_SHADOW_PROPERTY_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    for seed in 1..=seeds {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let (full_dir, incremental_dir) = (fixture(), fixture());
        let mut full = Store::open(&full_dir.live, &full_dir.state, None).unwrap();
        let mut incremental = Store::open(&incremental_dir.live, &incremental_dir.state, None).unwrap();
        incremental.racy_window = Duration::ZERO;
        // The set each one last committed (path -> entry).
        let mut current: BTreeMap<String, StagedEntry> = BTreeMap::new();
        let mut drifted = false;
        for step in 1..=25i64 {
            let context = format!("seed {seed}, step {step}");
            // The next revision: a few random operations, keeping no path both a file and
            // a directory.
            let mut next = current.clone();
            for _ in 0..=rng.below(3) {
                let path = PATHS[rng.below(PATHS.len() as u64) as usize];
                match rng.below(4) {
                    0 => {
                        next.remove(path);
                    }
                    1 if next.contains_key(path) => {
                        let mode = ["0644", "0600", "0640", "0755"][rng.below(4) as usize];
                        next.get_mut(path).unwrap().mode = mode.into();
                    }
                    _ => {
                        let content = format!("{path} = {}\n", rng.below(1000)).repeat(1 + rng.below(3) as usize);
                        let mode = next.get(path).map_or("0644".to_string(), |e| e.mode.clone());
                        next.insert(path.to_string(), entry(path, &content, &mode));
                    }
                }
            }
            let clashing: Vec<String> = next
                .keys()
                .filter(|path| next.keys().any(|other| other.starts_with(&format!("{path}/"))))
                .cloned()
                .collect();
            for path in clashing {
                next.remove(&path);
            }
            let entries: Vec<StagedEntry> = next.values().cloned().collect();
            let target = root_of(&entries);

            // In full.
            let base = full.live_root().unwrap().to_hex();
            let mut full_request = request(1, step, &base, entries.clone());
            full_request.target_root = target.clone();
            full.prepare(step, &full_request)
                .unwrap_or_else(|err| panic!("{context}: full prepare: {err}"));
            full.commit(step, &fence(1)).unwrap();

            // Incrementally: by hash what it served before, unless lying on purpose.
            let lie = rng.below(6) == 0;
            let mut lied_about = None;
            let sent: Vec<StagedEntry> = entries
                .iter()
                .map(|e| {
                    let held = current.get(&e.path).is_some_and(|old| old == e);
                    let hash = root_hash_of_one(e);
                    if held {
                        e.held(&hash)
                    } else if lie && lied_about.is_none() && current.contains_key(&e.path) {
                        lied_about = Some(e.path.clone());
                        e.held(&hash)
                    } else {
                        e.clone()
                    }
                })
                .collect();
            let base = incremental.live_root().unwrap().to_hex();
            let mut incremental_request = request(1, step, &base, sent);
            incremental_request.target_root = target.clone();
            incremental_request.reconcile = drifted;
            // Half the time the tree is staged ahead first and the prepare sends no
            // entries; sometimes someone edits the staged tree in between.
            let mut taken = false;
            if !drifted && rng.below(2) == 0 {
                match incremental.prestage(&incremental_request) {
                    Ok(answer) => {
                        assert_eq!(answer.root, target, "{context}: staged ahead");
                        assert!(lied_about.is_none(), "{context}: a stage took an entry the shadow does not hold");
                        let written: Vec<&StagedEntry> = incremental_request.entries.iter().filter(|e| e.content.is_some()).collect();
                        let tampered = !written.is_empty() && rng.below(3) == 0;
                        if tampered {
                            let path = &written[rng.below(written.len() as u64) as usize].path;
                            let file = incremental_dir.live.join(format!("..r0-rev{step}")).join(path);
                            fs::OpenOptions::new()
                                .append(true)
                                .open(&file)
                                .unwrap()
                                .write_all(b"# edited while staged\n")
                                .unwrap();
                        }
                        let mut compact = request(1, step, &base, Vec::new());
                        compact.target_root = target.clone();
                        compact.prestaged = true;
                        match incremental.prepare(step, &compact) {
                            Ok(answer) => {
                                assert!(!tampered, "{context}: a stage edited after it was made was taken");
                                assert_eq!(answer.root.as_deref(), Some(target.as_str()), "{context}: taken");
                                taken = true;
                            }
                            Err(StoreError::NotPrestaged(_)) => assert!(tampered, "{context}: an untouched stage was not taken"),
                            Err(err) => panic!("{context}: prepare of the stage: {err}"),
                        }
                    }
                    Err(StoreError::Incomplete(_)) if lied_about.is_some() => {}
                    Err(err) => panic!("{context}: stage ahead: {err}"),
                }
            }
            // (Otherwise staged from the tree made ahead.)
            if !taken {
                match incremental.prepare(step, &incremental_request) {
                    Ok(_) => assert!(
                        lied_about.is_none(),
                        "{context}: an entry sent by hash that the shadow does not hold was accepted"
                    ),
                    Err(StoreError::Incomplete(missing)) => {
                        if let Some(lied) = &lied_about {
                            assert!(missing.contains(lied), "{context}: {lied} is not named missing: {missing:?}");
                        }
                        assert!(
                            drifted || lied_about.is_some(),
                            "{context}: incomplete without a reason: {missing:?}"
                        );
                        // Nothing was staged; the writer sends what was asked for.
                        assert_eq!(incremental.status(step).phase, RolloutPhase::Unknown, "{context}");
                        for e in incremental_request.entries.iter_mut() {
                            if missing.contains(&e.path) {
                                *e = next[&e.path].clone();
                            }
                        }
                        incremental
                            .prepare(step, &incremental_request)
                            .unwrap_or_else(|err| panic!("{context}: prepare with what was missing: {err}"));
                    }
                    Err(err) => panic!("{context}: incremental prepare: {err}"),
                }
            }
            let committed = incremental.commit(step, &fence(1)).unwrap();
            assert_eq!(committed.root.as_deref(), Some(target.as_str()), "{context}: receipt");
            assert_eq!(full.live_root().unwrap().to_hex(), target, "{context}: full root");
            assert_eq!(served(&incremental_dir.live), served(&full_dir.live), "{context}: the trees differ");
            current = next;
            drifted = false;

            // Between rollouts: tamper with the incremental shadow, or restart it.
            match rng.below(8) {
                0 | 1 if !current.is_empty() => {
                    let paths: Vec<&String> = current.keys().collect();
                    let path = paths[rng.below(paths.len() as u64) as usize].clone();
                    let live = incremental_dir.live.join(&path);
                    match rng.below(4) {
                        // In place, through the live link: the generation's own inode.
                        0 => fs::OpenOptions::new()
                            .append(true)
                            .open(&live)
                            .unwrap()
                            .write_all(b"# hand edit\n")
                            .unwrap(),
                        1 => fs::set_permissions(&live, fs::Permissions::from_mode(0o666)).unwrap(),
                        2 => fs::remove_file(&live).unwrap(),
                        _ => {
                            // Replaced as editors save: a new file renamed over the old name.
                            let fresh = live.with_extension("swp");
                            fs::write(&fresh, "replaced\n").unwrap();
                            fs::rename(&fresh, &live).unwrap();
                        }
                    }
                    drifted = true;
                }
                2 => {
                    fs::write(incremental_dir.live.join("planted.conf"), "planted\n").unwrap();
                    drifted = true;
                }
                3 => {
                    drop(incremental);
                    incremental = Store::open(&incremental_dir.live, &incremental_dir.state, None).unwrap();
                    incremental.racy_window = Duration::ZERO;
                }
                _ => {}
            }
        }
    }
}

/// One entry's hash, as the writer sends it for an entry sent by hash.
fn root_hash_of_one(e: &StagedEntry) -> String {
    let path = EntryPath::parse(&e.path).unwrap();
    let policy = Policy {
        mode: parse_mode(&e.mode).unwrap(),
        owner: e.owner.clone(),
        group: e.group.clone(),
        secret: e.secret,
    };
    entry_hash(&path, &policy, e.content.as_deref().unwrap_or_default().as_bytes()).to_hex()
}

/// Commits `entries` as rollout `rollout` (revision = rollout) sent in full.
fn commit_full(store: &mut Store, rollout: i64, entries: Vec<StagedEntry>) -> String {
    let base = store.live_root().unwrap().to_hex();
    let req = request(1, rollout, &base, entries);
    store.prepare(rollout, &req).unwrap();
    store.commit(rollout, &fence(1)).unwrap();
    req.target_root
}

#[test]
fn a_one_entry_change_of_a_large_set_reads_writes_and_links_only_what_it_must() {
    let f = fixture();
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    let entries: Vec<StagedEntry> = (0..300)
        .map(|i| entry(&format!("d{}/f{i}.conf", i % 7), &format!("value {i}\n"), "0644"))
        .collect();
    commit_full(&mut store, 1, entries.clone());
    wait_out_racy_window();
    let base = store.live_root().unwrap().to_hex();
    let before = store.files_hashed();
    let inode = |path: &str| fs::metadata(f.live.join(path)).unwrap().ino();
    let (kept, edited) = (inode("d1/f1.conf"), inode("d2/f2.conf"));

    let mut next = entries.clone();
    next[2] = entry("d2/f2.conf", "value 2 edited\n", "0644");
    let sent: Vec<StagedEntry> = next
        .iter()
        .enumerate()
        .map(|(i, e)| if i == 2 { e.clone() } else { e.held(&root_hash_of_one(e)) })
        .collect();
    let mut req = request(1, 2, &base, sent);
    req.target_root = root_of(&next);
    store.prepare(2, &req).unwrap();
    assert!(
        store.files_hashed() - before <= 1,
        "a prepare reads back what it wrote, not the {} files it kept ({} read)",
        entries.len() - 1,
        store.files_hashed() - before
    );
    // The receipt reads the bytes of what went live (the links moved the kept files'
    // `ctime`, so their cached hashes are not taken on trust).
    let committed = store.commit(2, &fence(1)).unwrap();
    assert_eq!(committed.root.as_deref(), Some(req.target_root.as_str()));
    // The kept file is the same inode in the new generation; the edited one is new.
    assert_eq!(inode("d1/f1.conf"), kept);
    assert_ne!(inode("d2/f2.conf"), edited);
    assert_eq!(fs::read_to_string(f.live.join("d2/f2.conf")).unwrap(), "value 2 edited\n");
    // A cold look agrees with everything the warm one trusted.
    drop(store);
    let cold = Store::open(&f.live, &f.state, None).unwrap();
    assert_eq!(cold.live_root().unwrap().to_hex(), req.target_root);
}

#[test]
fn an_entry_sent_by_hash_that_drifted_is_asked_for_and_nothing_is_staged() {
    let f = fixture();
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    let entries = vec![entry("a.conf", "a\n", "0644"), entry("b/c.conf", "c\n", "0600")];
    commit_full(&mut store, 1, entries.clone());
    // Edited in place through the live link: the generation's file itself.
    fs::OpenOptions::new()
        .append(true)
        .open(f.live.join("b/c.conf"))
        .unwrap()
        .write_all(b"x")
        .unwrap();
    let sent: Vec<StagedEntry> = entries.iter().map(|e| e.held(&root_hash_of_one(e))).collect();
    let mut req = request(1, 2, "", sent);
    req.reconcile = true;
    req.target_root = root_of(&entries);
    match store.prepare(2, &req) {
        Err(StoreError::Incomplete(missing)) => assert_eq!(missing, vec!["b/c.conf".to_string()]),
        other => panic!("expected incomplete, got {other:?}"),
    }
    assert_eq!(store.status(2).phase, RolloutPhase::Unknown);
    let generations: Vec<String> = fs::read_dir(&f.live)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("..r"))
        .collect();
    assert_eq!(generations, vec!["..r1-rev1".to_string()], "nothing staged: {generations:?}");
    // Sent again with the content it asked for: the reconcile restores it.
    req.entries[1] = entries[1].clone();
    store.prepare(2, &req).unwrap();
    assert_eq!(store.commit(2, &fence(1)).unwrap().root.as_deref(), Some(req.target_root.as_str()));
    assert_eq!(fs::read_to_string(f.live.join("b/c.conf")).unwrap(), "c\n");

    // An entry sent with both content and hash, or neither, is refused.
    let mut both = entries[0].held(&root_hash_of_one(&entries[0]));
    both.content = Some("a\n".into());
    let req = request(1, 3, &req.target_root, vec![both]);
    assert!(matches!(store.prepare(3, &req), Err(StoreError::BadRequest(_))));
}

/// Revision 2 of `entries` (`a.conf`, `b.conf`) with `b.conf` changed: `a.conf` sent by
/// hash, `b.conf` with its content, on `root`.
fn b_changed(entries: &[StagedEntry], root: &str) -> PrepareRequest {
    let mut next = entries.to_vec();
    next[1] = entry("b.conf", "b2\n", "0644");
    let sent = vec![next[0].held(&root_hash_of_one(&next[0])), next[1].clone()];
    let mut req = request(1, 2, root, sent);
    req.target_root = root_of(&next);
    req
}

#[test]
fn a_validator_that_writes_into_the_staged_tree_is_refused() {
    let f = fixture();
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    let entries = vec![entry("a.conf", "a\n", "0644"), entry("b.conf", "b\n", "0644")];
    let root = commit_full(&mut store, 1, entries.clone());
    wait_out_racy_window();
    store.set_hooks(hooks(
        "[validate]\ncommand = [\"sh\", \"-c\", \"echo more >> {staged}/a.conf\"]\ntimeout = \"5s\"\n",
    ));
    let req = b_changed(&entries, &root);
    match store.prepare(2, &req) {
        Err(StoreError::RootMismatch(message)) => assert!(message.contains("validate hook changed"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(store.status(2).phase, RolloutPhase::Unknown);
}

/// A held file rewritten after it was proven and before it is linked, its size kept and
/// its mtime put back (as its owner may): the link moves `ctime` itself, which would hide
/// the edit from a check made after it. The staging reads it back and refuses the prepare:
/// the shadow never answers a root it does not hold.
#[test]
fn an_edit_between_the_proof_and_the_link_is_not_taken_on_trust() {
    let f = fixture();
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    let entries = vec![entry("a.conf", "value = 1\n", "0644"), entry("b.conf", "b\n", "0644")];
    let root = commit_full(&mut store, 1, entries.clone());
    wait_out_racy_window();
    store.live_root().unwrap();
    let live = f.live.join("a.conf");
    store.after_hold = Some(Box::new(move || {
        let mtime = fs::metadata(&live).unwrap().modified().unwrap();
        fs::write(&live, "value = 9\n").unwrap();
        fs::File::options().write(true).open(&live).unwrap().set_modified(mtime).unwrap();
    }));
    let req = b_changed(&entries, &root);
    match store.prepare(2, &req) {
        Err(StoreError::RootMismatch(_)) => {}
        other => panic!("a file edited after its proof was trusted: {other:?}"),
    }
    assert_eq!(store.status(2).phase, RolloutPhase::Unknown);
}

/// Stages revision 2 (`b.conf` changed) of `entries` ahead, and answers the prepare of
/// it that sends no entries.
fn stage_ahead_then_prepare(store: &mut Store, rollout: i64, entries: &[StagedEntry], root: &str) -> Result<RolloutAnswer> {
    let full = b_changed(entries, root);
    let answer = store.prestage(&full).unwrap();
    assert_eq!(answer.root, full.target_root);
    let mut compact = request(1, 2, root, Vec::new());
    compact.target_root = full.target_root.clone();
    compact.prestaged = true;
    store.prepare(rollout, &compact)
}

#[test]
fn a_tree_staged_ahead_is_taken_by_a_prepare_that_sends_no_entries_and_is_not_drift() {
    let f = fixture();
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    let entries = vec![entry("a.conf", "a\n", "0644"), entry("b.conf", "b\n", "0644")];
    let root = commit_full(&mut store, 1, entries.clone());
    wait_out_racy_window();
    let full = b_changed(&entries, &root);
    store.prestage(&full).unwrap();
    // The stage is the store's own: the live tree and its root are what they were.
    assert_eq!(store.live_root().unwrap().to_hex(), root);
    assert!(store.state(true).unwrap().entries.unwrap().iter().all(|e| e.kind.is_none()));
    assert_eq!(fs::read_to_string(f.live.join("b.conf")).unwrap(), "b\n");
    // Asked again, the same stage answers without building anything.
    let hashed = store.files_hashed();
    assert_eq!(store.prestage(&full).unwrap().root, full.target_root);
    assert_eq!(store.files_hashed(), hashed);
    // Linking the stage moved the live files' `ctime`: the agent looks once more when
    // that settled (see [`Store::unsettled`]), and from then on reads nothing unchanged.
    assert!(store.unsettled());
    wait_out_racy_window();
    store.live_root().unwrap();
    assert!(!store.unsettled());
    let mut compact = request(1, 2, &root, Vec::new());
    compact.target_root = full.target_root.clone();
    compact.prestaged = true;
    let hashed = store.files_hashed();
    let answer = store.prepare(2, &compact).unwrap();
    assert_eq!(answer.root.as_deref(), Some(full.target_root.as_str()));
    // Proven by `stat`, but for the one file the stage wrote: it was read moments after
    // it was written, too soon for its `stat` to vouch for it later.
    assert_eq!(store.files_hashed(), hashed + 1, "the stage's files were read again");
    let hashed = store.files_hashed();
    let receipt = store.commit(2, &fence(1)).unwrap();
    assert_eq!(receipt.root.as_deref(), Some(full.target_root.as_str()));
    assert_eq!(fs::read_to_string(f.live.join("b.conf")).unwrap(), "b2\n");
    assert_eq!(fs::read_to_string(f.live.join("a.conf")).unwrap(), "a\n");
    // The receipt trusted the stage's proof: a later look reads nothing either.
    assert_eq!(store.live_root().unwrap().to_hex(), full.target_root);
    assert_eq!(store.files_hashed(), hashed, "the committed files were read again");
}

#[test]
fn a_tree_staged_ahead_that_was_edited_replaced_or_forgotten_is_not_taken() {
    let entries = vec![entry("a.conf", "a\n", "0644"), entry("b.conf", "b\n", "0644")];
    // Edited in place inside the stage after it was made.
    let f = fixture();
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    let root = commit_full(&mut store, 1, entries.clone());
    let full = b_changed(&entries, &root);
    store.prestage(&full).unwrap();
    fs::write(f.live.join("..r0-rev2/b.conf"), "b3\n").unwrap();
    let mut compact = request(1, 2, &root, Vec::new());
    compact.target_root = full.target_root.clone();
    compact.prestaged = true;
    assert!(matches!(store.prepare(2, &compact), Err(StoreError::NotPrestaged(_))));
    assert_eq!(store.status(2).phase, RolloutPhase::Unknown);
    // The full prepare stages it from scratch, as sent.
    store.prepare(2, &full).unwrap();
    store.commit(2, &fence(1)).unwrap();
    assert_eq!(fs::read_to_string(f.live.join("b.conf")).unwrap(), "b2\n");

    // Forgotten by a restart.
    let f = fixture();
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    let root = commit_full(&mut store, 1, entries.clone());
    let full = b_changed(&entries, &root);
    store.prestage(&full).unwrap();
    drop(store);
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    assert!(!f.live.join("..r0-rev2").exists(), "the orphaned stage is removed");
    let mut compact = request(1, 2, &root, Vec::new());
    compact.target_root = full.target_root.clone();
    compact.prestaged = true;
    assert!(matches!(store.prepare(2, &compact), Err(StoreError::NotPrestaged(_))));

    // Another rollout committed meanwhile: the stage no longer stands on the live tree.
    let f = fixture();
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    let root = commit_full(&mut store, 1, entries.clone());
    let full = b_changed(&entries, &root);
    store.prestage(&full).unwrap();
    let other = vec![entry("a.conf", "a\n", "0644"), entry("c.conf", "c\n", "0644")];
    let mut other_request = request(1, 2, &root, other.clone());
    other_request.target_root = root_of(&other);
    store.prepare(7, &other_request).unwrap();
    store.commit(7, &fence(1)).unwrap();
    // Retired, not drift, and gone when the next tree is staged.
    assert_eq!(store.live_root().unwrap().to_hex(), root_of(&other));
    assert!(f.live.join("..r0-rev2").exists());
    let mut compact = request(1, 2, &root, Vec::new());
    compact.target_root = full.target_root.clone();
    compact.prestaged = true;
    assert!(matches!(store.prepare(8, &compact), Err(StoreError::BaseRootMismatch { .. })));
    let mut next = other.clone();
    next[1] = entry("c.conf", "c2\n", "0644");
    let mut ahead = request(1, 3, &root_of(&other), next.clone());
    ahead.target_root = root_of(&next);
    store.prestage(&ahead).unwrap();
    assert!(!f.live.join("..r0-rev2").exists(), "the retired stage is removed");
    assert!(f.live.join("..r0-rev3").exists());
    // A stage of a base the shadow does not serve is refused, and keeps nothing.
    let mut wrong = request(1, 4, &root, next.clone());
    wrong.target_root = root_of(&next);
    assert!(matches!(store.prestage(&wrong), Err(StoreError::BaseRootMismatch { .. })));
}

#[test]
fn a_stage_the_validator_refuses_is_not_kept_and_a_stage_records_no_epoch() {
    let f = fixture();
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    let entries = vec![entry("a.conf", "a\n", "0644"), entry("b.conf", "b\n", "0644")];
    let root = commit_full(&mut store, 1, entries.clone());
    store.set_hooks(hooks("[validate]\ncommand = [\"/bin/sh\", \"-c\", \"exit 3\"]\n"));
    let mut full = b_changed(&entries, &root);
    assert!(matches!(store.prestage(&full), Err(StoreError::ValidateFailed(_))));
    assert!(!f.live.join("..r0-rev2").exists());
    let mut compact = request(1, 2, &root, Vec::new());
    compact.target_root = full.target_root.clone();
    compact.prestaged = true;
    assert!(matches!(store.prepare(2, &compact), Err(StoreError::NotPrestaged(_))));
    store.set_hooks(None);
    // A stage from a higher epoch changes nothing durable: a writer of the epoch the
    // shadow knows still commits.
    full.epoch = 9;
    store.prestage(&full).unwrap();
    let answer = stage_ahead_then_prepare(&mut store, 2, &entries, &root).unwrap();
    assert_eq!(answer.phase, RolloutPhase::Prepared);
    store.commit(2, &fence(1)).unwrap();
}

#[test]
fn staging_ahead_stops_for_a_rollouts_call_and_leaves_nothing_behind() {
    let f = fixture();
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    let entries = vec![entry("a.conf", "a\n", "0644"), entry("b.conf", "b\n", "0644")];
    let root = commit_full(&mut store, 1, entries.clone());
    let full = b_changed(&entries, &root);
    let progress = store.progress();
    // A prepare, commit or abort waiting for the store: nothing is staged ahead now.
    {
        let _waiting = progress.foreground();
        assert!(matches!(store.prestage(&full), Err(StoreError::Conflict(_))));
    }
    // One that arrives while a tree is being staged: staging stops at its next step.
    let arriving = progress.clone();
    store.after_hold = Some(Box::new(move || {
        arriving.foreground.fetch_add(1, Ordering::SeqCst);
    }));
    assert!(matches!(store.prestage(&full), Err(StoreError::Conflict(_))));
    store.after_hold = None;
    progress.foreground.fetch_sub(1, Ordering::SeqCst);
    let left: Vec<String> = fs::read_dir(&f.live)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("..r0"))
        .collect();
    assert!(left.is_empty(), "a stopped stage left {left:?}");
    assert_eq!(store.live_root().unwrap().to_hex(), root);
    // Once the call is done, staging ahead works again.
    assert_eq!(store.prestage(&full).unwrap().root, full.target_root);
}

/// A stand-in for the agent's file watcher: inotify on the managed directory, reporting
/// the sync file's events until dropped. Changes are reported by the test itself.
struct FakeWatcher {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FakeWatcher {
    fn start(watch: std::sync::Arc<Watch>, live: &Path) -> FakeWatcher {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK).unwrap();
        inotify
            .add_watch(live, AddWatchFlags::IN_ATTRIB | AddWatchFlags::IN_CREATE)
            .unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            while !stopping.load(Ordering::SeqCst) {
                for event in inotify.read_events().unwrap_or_default() {
                    if event.name.as_deref() == Some(std::ffi::OsStr::new(SYNC_FILE)) {
                        watch.sync_reported();
                    }
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        FakeWatcher { stop }
    }
}

impl Drop for FakeWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[test]
fn a_check_answers_the_maintained_root_until_the_watcher_reports_a_change() {
    let f = fixture();
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    let entries = vec![entry("a.conf", "a\n", "0644"), entry("b.conf", "b\n", "0644")];
    let root = commit_full(&mut store, 1, entries);
    wait_out_racy_window();
    let watch = std::sync::Arc::new(Watch::new(&f.live));
    store.set_watch(watch.clone());
    let watcher = FakeWatcher::start(watch.clone(), &f.live);
    // The first look walks; the sync file is the store's own, not part of the tree.
    assert_eq!(store.live_root().unwrap().to_hex(), root);
    assert!(f.live.join(SYNC_FILE).exists());
    let walks = store.walks();
    for _ in 0..20 {
        assert_eq!(store.live_root().unwrap().to_hex(), root);
        assert_eq!(store.state(false).unwrap().live_root, root);
    }
    assert_eq!(store.walks(), walks, "a check of an unchanged tree walked it");
    // A change the watcher reports is walked and found.
    fs::write(f.live.join("planted.conf"), "planted\n").unwrap();
    watch.changed();
    let drifted = store.live_root().unwrap().to_hex();
    assert_ne!(drifted, root);
    assert_eq!(store.walks(), walks + 1);
    // A walk that met a file too recent to cache is not maintained: the look once it
    // settled walks again (the agent makes that look), and from then on none does.
    assert!(store.unsettled());
    wait_out_racy_window();
    assert_eq!(store.live_root().unwrap().to_hex(), drifted);
    assert_eq!(store.walks(), walks + 2);
    // A change it did not report is not seen by a check (the watcher is trusted)...
    fs::remove_file(f.live.join("planted.conf")).unwrap();
    assert_eq!(store.live_root().unwrap().to_hex(), drifted);
    assert_eq!(store.walks(), walks + 2);
    // ...until the rewalk interval passed.
    store.set_rewalk_interval(Duration::ZERO);
    assert_eq!(store.live_root().unwrap().to_hex(), root);
    store.set_rewalk_interval(REWALK_INTERVAL);
    // A listing (entries) always walks.
    let walks = store.walks();
    store.state(true).unwrap();
    assert_eq!(store.walks(), walks + 1);
    // A watcher that stops answering is not trusted: looks walk.
    drop(watcher);
    std::thread::sleep(Duration::from_millis(5));
    fs::write(f.live.join("late.conf"), "late\n").unwrap();
    assert_ne!(
        store.live_root().unwrap().to_hex(),
        root,
        "an unreported change was missed by a silent watcher"
    );
    // One that failed is not trusted again.
    watch.failed();
    assert!(!watch.healthy());
    let walks = store.walks();
    store.live_root().unwrap();
    assert_eq!(store.walks(), walks + 1);
}

#[test]
fn ids_and_revisions_that_would_name_no_generation_are_refused_and_the_state_stays_readable() {
    let f = fixture();
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    let entries = vec![entry("a.conf", "a\n", "0644")];
    // Before anything is live, a stage of revision -1 would be `..r0-rev-1`: a name the
    // state's own check refuses, which would keep the store from opening again.
    let mut negative = request(1, -1, &empty_root(), entries.clone());
    negative.target_root = root_of(&entries);
    assert!(matches!(store.prestage(&negative), Err(StoreError::BadRequest(_))));
    assert!(matches!(store.prepare(3, &negative), Err(StoreError::BadRequest(_))));
    // Rollout 0 would stage into the name of a tree staged ahead.
    let zero = request(1, 1, &empty_root(), entries.clone());
    assert!(matches!(store.prepare(0, &zero), Err(StoreError::BadRequest(_))));
    commit_full(&mut store, 1, entries);
    drop(store);
    Store::open(&f.live, &f.state, None).unwrap();
}

#[test]
fn a_stage_proof_trusts_only_what_had_settled_when_it_was_read() {
    let f = fixture();
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    let entries = vec![entry("a.conf", "a\n", "0644"), entry("b.conf", "b\n", "0644")];
    let root = commit_full(&mut store, 1, entries.clone());
    wait_out_racy_window();
    store.live_root().unwrap();
    let full = b_changed(&entries, &root);
    store.prestage(&full).unwrap();
    // `b.conf` was written by the stage a moment ago: its reading is not trusted later,
    // whatever the clock says then. `a.conf` (linked, written long ago) is.
    let proven = &store.prestaged.as_ref().unwrap().proven;
    assert!(proven.contains_key("a.conf"), "{:?}", proven.keys());
    assert!(!proven.contains_key("b.conf"), "a racy reading was kept as proof");
}

#[test]
fn a_tree_staged_ahead_is_judged_again_by_the_validator_when_it_is_taken() {
    let f = fixture();
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    let entries = vec![entry("a.conf", "a\n", "0644"), entry("b.conf", "b\n", "0644")];
    let root = commit_full(&mut store, 1, entries.clone());
    // The validator reads something besides the tree (a certificate, an include): it is
    // there when the change is staged ahead...
    let outside = f.state.parent().unwrap().join("cert.pem");
    fs::write(&outside, "cert\n").unwrap();
    store.set_hooks(hooks(&format!(
        "[validate]\ncommand = [\"/bin/sh\", \"-c\", \"test -f {}\"]\n",
        outside.display()
    )));
    let full = b_changed(&entries, &root);
    store.prestage(&full).unwrap();
    // ...and gone when the rollout comes: the prepare refuses, as it would without a stage.
    fs::remove_file(&outside).unwrap();
    let mut compact = request(1, 2, &root, Vec::new());
    compact.target_root = full.target_root.clone();
    compact.prestaged = true;
    assert!(matches!(store.prepare(2, &compact), Err(StoreError::ValidateFailed(_))));
    assert_eq!(store.status(2).phase, RolloutPhase::Unknown);
    assert!(!f.live.join("..r2-rev2").exists(), "a refused tree is not left behind");
    assert_eq!(fs::read_to_string(f.live.join("b.conf")).unwrap(), "b\n");
}

#[test]
fn an_operation_that_fails_before_its_state_is_saved_leaves_nothing_in_memory() {
    // The store keeps its state in memory between operations and reads the slots again
    // only when another process saved them; whatever an operation changed and could not
    // save must not outlive it.
    let f = fixture();
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    let one = vec![entry("a", "1", "0644")];
    store.prepare(1, &request(1, 1, &empty_root(), one)).unwrap();
    // A commit from epoch 2 records the new epoch first, and cannot save it.
    store.fail_saves = true;
    let failed = store.commit(1, &fence(2));
    assert!(
        matches!(&failed, Err(StoreError::Io(message)) if message.contains("save the state")),
        "{failed:?}"
    );
    store.fail_saves = false;
    // The epoch was never saved: epoch 1 is still the writer's, and commits.
    let answer = store.commit(1, &fence(1)).unwrap();
    assert_eq!(answer.phase, RolloutPhase::Committed);
    drop(store);
    let reopened = Store::open(&f.live, &f.state, None).unwrap();
    assert_eq!(reopened.state(false).unwrap().highest_epoch, 1);
}

/// 300 entries (enough for the watcher to vouch for a stage), `f5`'s content by version.
fn vouchable(version: u32) -> Vec<StagedEntry> {
    (0..300)
        .map(|i| {
            let content = if i == 5 {
                format!("five v{version}\n")
            } else {
                format!("value {i}\n")
            };
            entry(&format!("d{}/f{i}.conf", i % 7), &content, "0644")
        })
        .collect()
}

/// Stages `entries` ahead on top of `base` as revision `revision`, waits until it settled
/// and has the watcher vouch for it; answers the compact prepare that takes it.
fn stage_vouched(store: &mut Store, revision: i64, base: &str, entries: Vec<StagedEntry>) -> PrepareRequest {
    let full = request(1, revision, base, entries);
    store.prestage(&full).unwrap();
    wait_out_racy_window();
    assert!(store.vouch_stage().unwrap(), "the watcher vouches for the settled stage");
    let mut compact = request(1, revision, base, Vec::new());
    compact.target_root = full.target_root;
    compact.prestaged = true;
    compact
}

#[test]
fn a_large_stage_the_watcher_vouches_for_is_taken_unwalked_and_nothing_it_reports_goes_unseen() {
    let f = fixture();
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    let root1 = commit_full(&mut store, 1, vouchable(1));
    wait_out_racy_window();
    let watch = std::sync::Arc::new(Watch::new(&f.live));
    store.set_watch(watch.clone());
    let _watcher = FakeWatcher::start(watch.clone(), &f.live);
    store.live_root().unwrap();

    // Vouched for: neither the prepare that takes the stage nor the commit's receipt
    // walks it, and a check after the commit answers the same root without walking.
    let compact = stage_vouched(&mut store, 2, &root1, vouchable(2));
    let looks = store.looks();
    let answer = store.prepare(2, &compact).unwrap();
    assert_eq!(answer.root.as_deref(), Some(compact.target_root.as_str()));
    let receipt = store.commit(2, &fence(1)).unwrap();
    assert_eq!(receipt.root.as_deref(), Some(compact.target_root.as_str()));
    assert_eq!(store.live_root().unwrap().to_hex(), compact.target_root);
    assert_eq!(store.looks(), looks, "a vouched tree was walked");
    assert_eq!(fs::read_to_string(f.live.join("d5/f5.conf")).unwrap(), "five v2\n");
    let root2 = compact.target_root;

    // A change below the top level the watcher reports after the vouch: the prepare
    // walks, finds the edit and does not take the stage.
    let compact = stage_vouched(&mut store, 3, &root2, vouchable(3));
    let edited = f.live.join("..r0-rev3/d5/f5.conf");
    fs::write(&edited, "planted\n").unwrap();
    watch.changed_at(std::slice::from_ref(&edited), false);
    assert!(matches!(store.prepare(3, &compact), Err(StoreError::NotPrestaged(_))));
    assert_eq!(store.live_root().unwrap().to_hex(), root2);

    // The stage's directory swapped for another at the top level (a rename, which is
    // no change below it): not the tree vouched for, walked, not taken.
    let compact = stage_vouched(&mut store, 3, &root2, vouchable(3));
    let stage = f.live.join("..r0-rev3");
    let aside = f.live.join("..aside");
    fs::rename(&stage, &aside).unwrap();
    copy_tree(&aside, &stage);
    fs::write(stage.join("d5/f5.conf"), "swapped\n").unwrap();
    fs::remove_dir_all(&aside).unwrap();
    // (reported as names only, which the agent's watcher does not do for a directory
    // moved in: the store's own check of the directory is what is tested)
    watch.changed_at(&[stage.clone(), aside.clone()], true);
    assert!(matches!(store.prepare(3, &compact), Err(StoreError::NotPrestaged(_))));

    // Taken while vouched for, then edited below the top level before the commit: the
    // receipt walks and shows the edit.
    let compact = stage_vouched(&mut store, 3, &root2, vouchable(3));
    store.prepare(3, &compact).unwrap();
    let inside = f.live.join("..r0-rev3/d5/f5.conf");
    fs::write(&inside, "late\n").unwrap();
    watch.changed_at(std::slice::from_ref(&inside), false);
    let receipt = store.commit(3, &fence(1)).unwrap();
    assert_ne!(
        receipt.root.as_deref(),
        Some(compact.target_root.as_str()),
        "an edit after the prepare was vouched away"
    );
    let root3 = receipt.root.unwrap();

    // Planted at the top level between the switch and the receipt: the receipt's own
    // look at the top level sees it.
    let compact = stage_vouched(&mut store, 4, &root3, vouchable(4));
    store.prepare(4, &compact).unwrap();
    let planted = f.live.join("planted.conf");
    let (hook_watch, hook_path) = (watch.clone(), planted.clone());
    store.after_switch = Some(Box::new(move || {
        fs::write(&hook_path, "planted\n").unwrap();
        hook_watch.changed_at(std::slice::from_ref(&hook_path), true);
    }));
    let receipt = store.commit(4, &fence(1)).unwrap();
    store.after_switch = None;
    assert_ne!(
        receipt.root.as_deref(),
        Some(compact.target_root.as_str()),
        "a planted file was vouched away"
    );
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn a_change_of_the_top_level_alone_is_looked_at_there_and_anything_foreign_is_walked() {
    let f = fixture();
    let mut store = Store::open(&f.live, &f.state, None).unwrap();
    let root = commit_full(
        &mut store,
        1,
        vec![entry("a.conf", "a\n", "0644"), entry("d/b.conf", "b\n", "0644")],
    );
    wait_out_racy_window();
    let watch = std::sync::Arc::new(Watch::new(&f.live));
    store.set_watch(watch.clone());
    let _watcher = FakeWatcher::start(watch.clone(), &f.live);
    assert_eq!(store.live_root().unwrap().to_hex(), root);
    let walks = store.walks();
    // The store's own names changed at the top level (the live link made again, a stage
    // dropped): the top level is looked at, nothing is walked.
    watch.changed_at(&[f.live.join(DATA_LINK), f.live.join("..r0-rev2")], true);
    assert_eq!(store.live_root().unwrap().to_hex(), root);
    assert_eq!(store.walks(), walks, "a change of the store's own top-level names walked the tree");
    // A file planted at the top level, reported as a change there: walked, and found.
    let planted = f.live.join("planted.conf");
    fs::write(&planted, "planted\n").unwrap();
    watch.changed_at(std::slice::from_ref(&planted), true);
    let drifted = store.live_root().unwrap().to_hex();
    assert_ne!(drifted, root, "a planted top-level file went unseen");
    assert_eq!(store.walks(), walks + 1);
    fs::remove_file(&planted).unwrap();
    watch.changed_at(std::slice::from_ref(&planted), true);
    assert_eq!(store.live_root().unwrap().to_hex(), root);
    // A link of the store's retargeted, the live link moved to another directory: each
    // walked and seen.
    let link = f.live.join("a.conf");
    fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("..data/d/b.conf", &link).unwrap();
    watch.changed_at(std::slice::from_ref(&link), true);
    assert_ne!(store.live_root().unwrap().to_hex(), root, "a retargeted link went unseen");
    fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("..data/a.conf", &link).unwrap();
    watch.changed_at(std::slice::from_ref(&link), true);
    assert_eq!(store.live_root().unwrap().to_hex(), root);
    let generation = fs::read_link(f.live.join(DATA_LINK)).unwrap();
    let original = f.live.join(&generation);
    let swapped_in = f.live.join("..swapped-in");
    copy_tree(&original, &swapped_in);
    fs::write(swapped_in.join("a.conf"), "swapped\n").unwrap();
    // (the original goes out of the managed directory: nothing foreign is left there)
    let aside = f._dir.path().join("aside");
    fs::rename(&original, &aside).unwrap();
    fs::rename(&swapped_in, &original).unwrap();
    // (what the watcher reports: both names are the managed directory's own)
    // (as names only, which the agent's watcher does not report for a directory moved
    // in: the store's own check of the live directory is what is tested)
    watch.changed_at(&[original.clone(), swapped_in], true);
    assert_ne!(
        store.live_root().unwrap().to_hex(),
        root,
        "a live generation swapped at the top level went unseen"
    );
}

/// Another process holds the state directory's lock and never lets go (it was stopped
/// while writing: a control plane's replica paused by SIGSTOP). A write here waits a
/// bounded time and then fails, naming why, so the rollout or recovery that called it
/// goes on; it waited for ever before.
#[test]
fn a_write_waits_for_a_stopped_holder_of_the_state_lock_a_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let state = live.join(DIRECTORY_STATE);
    let mut store = Store::open(&live, &state, None).unwrap();
    let holder = File::options().write(true).open(state.join("lock")).unwrap();
    holder.lock().unwrap();
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(store.prepare(1, &request(1, 1, &root_of(&[]), vec![entry("a.conf", "a", "0644")])));
    });
    let started = Instant::now();
    let answer = result
        .recv_timeout(LOCK_WAIT + Duration::from_secs(20))
        .expect("the write ended instead of waiting for ever");
    assert!(started.elapsed() >= LOCK_WAIT, "it waited for the holder first");
    match answer {
        Err(StoreError::Io(message)) => assert!(message.contains("held by another process"), "{message}"),
        other => panic!("a bounded wait ends in an error: {other:?}"),
    }
    drop(holder);
}
