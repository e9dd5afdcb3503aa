//! The etcd driver against a real 3-member etcd cluster on loopback (Debian's
//! `etcd-server`, started and stopped by each test).

use control::{
    etcd::{EtcdShadow, Limits, Target},
    etcd_local::Cluster,
    shadows::ShadowError,
};
use domain::{
    hash::{entry_hash, root_hash},
    path::EntryPath,
    policy::Policy,
    protocol::{Fence, PrepareRequest, RolloutPhase, StagedEntry},
};
use etcd_client::GetOptions;
use std::{collections::BTreeMap, time::Duration};

const PREFIX: &str = "/apps/demo/";
const CP: &str = "cp-one";

/// A set of entries (path → bytes) with the default policy.
type Set = BTreeMap<String, String>;

fn set(pairs: &[(&str, &str)]) -> Set {
    pairs.iter().map(|(p, c)| (p.to_string(), c.to_string())).collect()
}

fn root(set: &Set) -> String {
    let hashed: Vec<(EntryPath, domain::hash::Hash)> = set
        .iter()
        .map(|(path, content)| {
            let path = EntryPath::parse(path).unwrap();
            let hash = entry_hash(&path, &Policy::default(), content.as_bytes());
            (path, hash)
        })
        .collect();
    root_hash(hashed.iter().map(|(p, h)| (p, *h))).to_hex()
}

fn entry(path: &str, content: &str) -> StagedEntry {
    StagedEntry {
        path: path.into(),
        content: Some(content.into()),
        entry_hash: None,
        mode: "0644".into(),
        owner: String::new(),
        group: String::new(),
        secret: false,
        sealed: false,
    }
}

fn request(revision: i64, next: &Set, base: &Set, epoch: i64) -> PrepareRequest {
    PrepareRequest {
        control_plane_id: CP.into(),
        epoch,
        revision,
        target_root: root(next),
        base_root: root(base),
        reconcile: false,
        entries: next.iter().map(|(p, c)| entry(p, c)).collect(),
        audit_head: None,
        content_key: None,
        deadline_ms: None,
        prestaged: false,
    }
}

fn fence(next: &Set, epoch: i64) -> Fence {
    Fence {
        control_plane_id: CP.into(),
        epoch,
        target_root: Some(root(next)),
    }
}

async fn shadow(cluster: &Cluster, limits: Limits) -> EtcdShadow {
    let target = Target {
        endpoints: cluster.endpoints.clone(),
        prefix: PREFIX.into(),
        limits,
        ..Default::default()
    };
    EtcdShadow::connect(&target, Duration::from_secs(5)).await.unwrap()
}

/// What applications see under the prefix (the shadow's own keys left out), at the
/// etcd revision `at` or now.
async fn visible(client: &mut etcd_client::Client, at: Option<i64>) -> (Set, i64) {
    let mut options = GetOptions::new().with_prefix();
    if let Some(at) = at {
        options = options.with_revision(at);
    }
    let response = client.get(PREFIX, Some(options)).await.unwrap();
    let revision = response.header().unwrap().revision();
    let seen = response
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap()[PREFIX.len()..].to_string(),
                kv.value_str().unwrap().to_string(),
            )
        })
        .filter(|(key, _)| !key.starts_with("..etc-shadow/"))
        .collect();
    (seen, revision)
}

async fn roll(shadow: &EtcdShadow, rollout: i64, next: &Set, base: &Set) -> String {
    let prepared = shadow.prepare(rollout, &request(rollout, next, base, 1)).await.unwrap();
    assert_eq!(prepared.phase, RolloutPhase::Prepared);
    let committed = shadow.commit(rollout, &fence(next, 1)).await.unwrap();
    assert_eq!(committed.phase, RolloutPhase::Committed);
    committed.root.unwrap()
}

fn code(err: ShadowError) -> String {
    err.code
}

/// A revision becomes visible only at its commit, in one etcd revision; the receipt is
/// the root read back; the next revision writes what changed and deletes what it removes;
/// another control plane and an older epoch are refused.
#[tokio::test]
async fn a_revision_is_staged_then_switched_at_once_and_the_receipt_is_read_back() {
    let scratch = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(3, scratch.path()).await;
    let shadow = shadow(&cluster, Limits::default()).await;
    let mut client = cluster.leader().await.unwrap();
    let empty = Set::new();
    let first = set(&[("app.conf", "port = 80\n"), ("conf.d/extra.yaml", "debug: false\n")]);

    let prepared = shadow.prepare(1, &request(1, &first, &empty, 1)).await.unwrap();
    assert_eq!(prepared.root.as_deref(), Some(root(&first).as_str()));
    assert_eq!(visible(&mut client, None).await.0, empty, "nothing is visible before the commit");
    let committed = shadow.commit(1, &fence(&first, 1)).await.unwrap();
    assert_eq!(committed.root.as_deref(), Some(root(&first).as_str()), "the receipt is the root");
    assert_eq!(visible(&mut client, None).await.0, first);
    let state = shadow.shadow_state(true).await.unwrap();
    assert_eq!(state.live_root, root(&first));
    assert_eq!(state.live_revision, Some(1));
    assert_eq!(state.entries.unwrap().len(), 2);
    // Repeated, the commit answers the same.
    assert_eq!(shadow.commit(1, &fence(&first, 1)).await.unwrap().root, committed.root);

    let second = set(&[("app.conf", "port = 8080\n"), ("new.conf", "x\n")]);
    let receipt = roll(&shadow, 2, &second, &first).await;
    assert_eq!(receipt, root(&second));
    assert_eq!(
        visible(&mut client, None).await.0,
        second,
        "removed keys are gone, changed ones changed"
    );
    let policies = client
        .get(format!("{PREFIX}..etc-shadow/policy/"), Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let mut recorded: Vec<&str> = policies.kvs().iter().map(|kv| kv.key_str().unwrap()).collect();
    recorded.sort();
    assert_eq!(
        recorded,
        ["/apps/demo/..etc-shadow/policy/app.conf", "/apps/demo/..etc-shadow/policy/new.conf"]
    );

    // Another control plane, and an older epoch of this one, are fenced.
    let mut other = request(3, &first, &second, 9);
    other.control_plane_id = "cp-two".into();
    assert_eq!(code(shadow.prepare(3, &other).await.unwrap_err()), "fenced");
    let third = set(&[("app.conf", "port = 1\n")]);
    shadow.prepare(3, &request(3, &third, &second, 5)).await.unwrap();
    shadow.commit(3, &fence(&third, 5)).await.unwrap();
    assert_eq!(code(shadow.prepare(4, &request(4, &first, &third, 4)).await.unwrap_err()), "fenced");
    // An older revision than the live one is a writer restored from an old copy.
    assert_eq!(code(shadow.prepare(4, &request(2, &first, &third, 5)).await.unwrap_err()), "fenced");
}

/// Entries sent by hash alone are taken from what the prefix holds, only when it holds
/// them as the hash says; a hand edit is drift (the live root changes) that refuses a
/// rollout expecting the old base, and a reconcile puts it back.
#[tokio::test]
async fn held_entries_are_proven_and_a_hand_edit_is_drift_a_reconcile_repairs() {
    let scratch = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(3, scratch.path()).await;
    let shadow = shadow(&cluster, Limits::default()).await;
    let mut client = cluster.leader().await.unwrap();
    let first = set(&[("a.conf", "a\n"), ("b.conf", "b\n")]);
    roll(&shadow, 1, &first, &Set::new()).await;

    // b.conf sent by its hash: held, so only a.conf is written.
    let second = set(&[("a.conf", "a2\n"), ("b.conf", "b\n")]);
    let mut held = request(2, &second, &first, 1);
    let b = EntryPath::parse("b.conf").unwrap();
    held.entries[1] = held.entries[1].held(&entry_hash(&b, &Policy::default(), b"b\n").to_hex());
    shadow.prepare(2, &held).await.unwrap();
    assert_eq!(shadow.commit(2, &fence(&second, 1)).await.unwrap().root.unwrap(), root(&second));

    // A hand edit and a key nobody wrote: the live root is no revision's.
    client.put(format!("{PREFIX}b.conf"), "edited\n", None).await.unwrap();
    client.put(format!("{PREFIX}planted.conf"), "evil\n", None).await.unwrap();
    let state = shadow.shadow_state(true).await.unwrap();
    assert_ne!(state.live_root, root(&second));
    let entries = state.entries.unwrap();
    assert!(entries.iter().any(|e| e.path == "planted.conf"), "{entries:?}");

    let third = set(&[("a.conf", "a3\n"), ("b.conf", "b\n")]);
    let err = shadow.prepare(3, &request(3, &third, &second, 1)).await.unwrap_err();
    assert_eq!(err.code, "base_root_mismatch", "{err}");
    // Sent by hash, the edited entry is not held: the writer must send it.
    let mut reconcile = request(3, &second, &second, 1);
    reconcile.reconcile = true;
    reconcile.entries[1] = reconcile.entries[1].held(&entry_hash(&b, &Policy::default(), b"b\n").to_hex());
    let err = shadow.prepare(3, &reconcile).await.unwrap_err();
    assert_eq!(err.code, "incomplete");
    assert_eq!(err.missing, ["b.conf"]);
    // With its content, the reconcile restores it and removes the planted key.
    let mut reconcile = request(3, &second, &second, 1);
    reconcile.reconcile = true;
    shadow.prepare(3, &reconcile).await.unwrap();
    assert_eq!(shadow.commit(3, &fence(&second, 1)).await.unwrap().root.unwrap(), root(&second));
    assert_eq!(visible(&mut client, None).await.0, second);

    // A key planted among the shadow's own is drift, and the next reconcile removes it.
    client.put(format!("{PREFIX}..etc-shadow/planted"), "x", None).await.unwrap();
    assert_ne!(shadow.shadow_state(false).await.unwrap().live_root, root(&second));
    let mut reconcile = request(4, &second, &second, 1);
    reconcile.reconcile = true;
    shadow.prepare(4, &reconcile).await.unwrap();
    assert_eq!(shadow.commit(4, &fence(&second, 1)).await.unwrap().root.unwrap(), root(&second));
    assert!(
        client
            .get(format!("{PREFIX}..etc-shadow/planted"), None)
            .await
            .unwrap()
            .kvs()
            .is_empty()
    );
}

/// An abort drops the staged bytes and leaves the live set; a late prepare of the
/// aborted rollout is refused; a revision whose switch would not fit in one transaction
/// is refused at prepare, with nothing staged.
#[tokio::test]
async fn an_abort_leaves_the_live_set_and_a_switch_past_the_limits_is_refused_at_prepare() {
    let scratch = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(3, scratch.path()).await;
    let shadow = shadow(
        &cluster,
        Limits {
            max_txn_ops: 12,
            ..Limits::default()
        },
    )
    .await;
    let mut client = cluster.leader().await.unwrap();
    let first = set(&[("a.conf", "a\n")]);
    roll(&shadow, 1, &first, &Set::new()).await;

    let second = set(&[("a.conf", "a2\n"), ("b.conf", "b\n")]);
    shadow.prepare(2, &request(2, &second, &first, 1)).await.unwrap();
    let staged = client
        .get(format!("{PREFIX}..etc-shadow/stage/"), Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(staged.kvs().len(), 2);
    assert_eq!(shadow.abort(2, &fence(&second, 1)).await.unwrap().phase, RolloutPhase::Aborted);
    let staged = client
        .get(format!("{PREFIX}..etc-shadow/stage/"), Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert!(staged.kvs().is_empty());
    assert_eq!(visible(&mut client, None).await.0, first);
    assert_eq!(
        code(shadow.prepare(2, &request(2, &second, &first, 1)).await.unwrap_err()),
        "conflict"
    );
    assert_eq!(code(shadow.commit(2, &fence(&second, 1)).await.unwrap_err()), "conflict");

    // Ten new entries: 20 operations in the switch, past 12.
    let big: Set = (0..10).map(|i| (format!("e{i}.conf"), format!("{i}\n"))).collect();
    let err = shadow.prepare(3, &request(3, &big, &first, 1)).await.unwrap_err();
    assert_eq!(err.code, "too_large", "{err}");
    assert!(err.message.contains("--max-txn-ops"), "{err}");
    let state = shadow.shadow_state(false).await.unwrap();
    assert!(state.staged.is_none());
    assert_eq!(state.live_root, root(&first));
}

/// A reader that reads the whole prefix at one etcd revision, over and over while
/// rollouts switch between two sets, only ever sees one set or the other.
#[tokio::test]
async fn a_reader_at_any_etcd_revision_sees_one_revision_never_a_mix() {
    let scratch = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(3, scratch.path()).await;
    let shadow = shadow(&cluster, Limits::default()).await;
    let odd: Set = (0..20).map(|i| (format!("k{i:02}"), format!("odd {i}\n"))).collect();
    let even: Set = (0..30)
        .filter(|i| i % 3 != 0)
        .map(|i| (format!("k{i:02}"), format!("even {i}\n")))
        .collect();
    let sets = [Set::new(), odd.clone(), even.clone()];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let mut client = cluster.leader().await.unwrap();
        let stop = stop.clone();
        let sets = sets.clone();
        tokio::spawn(async move {
            let mut reads = 0;
            let mut last = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (_, now) = visible(&mut client, None).await;
                // Every etcd revision since the last read, each read whole at that revision.
                for at in (last + 1).max(now.saturating_sub(50))..=now {
                    let (seen, _) = visible(&mut client, Some(at)).await;
                    assert!(sets.contains(&seen), "a mix at etcd revision {at}: {seen:?}");
                    reads += 1;
                }
                last = now;
            }
            reads
        })
    };
    let mut base = Set::new();
    for rollout in 1..=12 {
        let next = if rollout % 2 == 1 { &odd } else { &even };
        roll(&shadow, rollout, next, &base).await;
        base = next.clone();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.await.unwrap();
    assert!(reads > 12, "the reader read {reads} revisions");
}

/// The bytes a prepare staged are proven again at the commit: a stage key changed by
/// hand (or by another writer) between prepare and commit switches nothing. An abort
/// records its writer's epoch, so an older writer is fenced after it. The shadow's own
/// state key removed by hand makes the live root no revision's.
#[tokio::test]
async fn tampered_stage_keys_switch_nothing_an_abort_raises_the_fence_and_a_lost_state_key_is_drift() {
    let scratch = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(3, scratch.path()).await;
    let shadow = shadow(&cluster, Limits::default()).await;
    let mut client = cluster.leader().await.unwrap();
    let first = set(&[("a.conf", "a\n")]);
    roll(&shadow, 1, &first, &Set::new()).await;

    let second = set(&[("a.conf", "a2\n")]);
    shadow.prepare(2, &request(2, &second, &first, 1)).await.unwrap();
    let staged = client
        .get(format!("{PREFIX}..etc-shadow/stage/"), Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let key = staged.kvs()[0].key().to_vec();
    client.put(key, "planted\n", None).await.unwrap();
    let err = shadow.commit(2, &fence(&second, 1)).await.unwrap_err();
    assert_eq!(err.code, "io", "{err}");
    assert_eq!(visible(&mut client, None).await.0, first, "nothing was switched");
    shadow.abort(2, &fence(&second, 3)).await.unwrap();
    // The abort came from epoch 3: epoch 2 is now an older writer.
    assert_eq!(
        code(shadow.prepare(3, &request(3, &second, &first, 2)).await.unwrap_err()),
        "fenced"
    );

    assert_eq!(shadow.shadow_state(false).await.unwrap().live_root, root(&first));
    client.delete(format!("{PREFIX}..etc-shadow/state"), None).await.unwrap();
    let state = shadow.shadow_state(true).await.unwrap();
    assert_ne!(state.live_root, root(&first), "entries without their state are no revision's");
    assert!(state.entries.unwrap().iter().any(|e| e.kind.as_deref() == Some("missing")));
}
