//! The control plane's leader election against a real 3-member etcd cluster on loopback.

use control::cluster::{DEFAULT_TTL, Election, Replica, Role, Settings};
use control::etcd_local::Cluster;
use std::{sync::Arc, time::Duration};

const TTL: i64 = 3;

async fn replica(cluster: &Cluster, id: &str) -> Arc<Election> {
    Election::start(Settings {
        endpoints: cluster.endpoints.clone(),
        root: "/etc-shadow/test/".into(),
        replica: Replica {
            id: id.into(),
            address: format!("http://{id}.example:8080"),
            started_at: control::now(),
        },
        ttl: TTL,
    })
    .await
    .unwrap()
}

/// Waits until exactly one of `replicas` leads (at most `limit`); answers its index and
/// its leader key's revision.
async fn one_leader(replicas: &[&Arc<Election>], limit: Duration) -> (usize, i64) {
    let started = std::time::Instant::now();
    loop {
        let leading: Vec<(usize, i64)> = replicas
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match r.role() {
                Role::Leader { revision, .. } => Some((i, revision)),
                Role::Follower => None,
            })
            .collect();
        assert!(leading.len() <= 1, "two replicas lead at once: {leading:?}");
        if let [one] = leading[..] {
            return one;
        }
        assert!(started.elapsed() < limit, "no leader within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One of two replicas leads, and both name it; confirm holds for its term only. When the
/// leader dies (its task gone, its lease left to expire, as with kill -9) the other leads
/// with a later revision; a lease revoked under a leader fails its next confirm at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_and_a_dead_leaders_successor_leads_with_a_later_revision() {
    const { assert!(DEFAULT_TTL >= TTL) };
    let scratch = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(3, scratch.path()).await;
    let a = replica(&cluster, "a").await;
    let b = replica(&cluster, "b").await;
    let (first, revision) = one_leader(&[&a, &b], Duration::from_secs(15)).await;
    let (leader, other) = if first == 0 { (a, b) } else { (b, a) };
    leader.confirm(revision).await.unwrap();
    assert!(leader.confirm(revision + 1).await.is_err(), "another term's confirm");
    assert!(other.confirm(revision).await.is_err(), "a follower confirms nothing");
    assert_eq!(other.leader().await.unwrap().id, leader.replica().id);
    let mut names: Vec<String> = other.replicas().await.unwrap().into_iter().map(|r| r.id).collect();
    names.sort();
    assert_eq!(names, ["a", "b"]);

    // The leader dies: nothing keeps its lease alive.
    let dead = leader.replica().id.clone();
    drop(leader);
    let started = std::time::Instant::now();
    let (_, next) = one_leader(&[&other], Duration::from_secs(3 * TTL as u64)).await;
    println!("the successor led {:?} after the leader died (TTL {TTL} s)", started.elapsed());
    assert!(next > revision, "a later term has a later revision: {next} after {revision}");
    assert_eq!(other.leader().await.unwrap().id, other.replica().id);
    let names: Vec<String> = other.replicas().await.unwrap().into_iter().map(|r| r.id).collect();
    assert!(!names.contains(&dead), "the dead replica's record went with its lease: {names:?}");

    // Its lease revoked by hand: the next confirm fails before the replica notices.
    let Role::Leader { lease, .. } = other.role() else {
        panic!("it leads")
    };
    let mut client = cluster.leader().await.unwrap();
    client.lease_revoke(lease).await.unwrap();
    assert!(other.confirm(next).await.is_err(), "a revoked lease confirms nothing");
    // It steps down, campaigns again and leads a new term.
    let started = std::time::Instant::now();
    loop {
        if let Role::Leader { revision, .. } = other.role()
            && revision > next
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(3 * TTL as u64), "no new term");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
