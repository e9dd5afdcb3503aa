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
        ca_pem: None,
        credentials: None,
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

/// A cluster that serves clients over TLS only, with authentication on: a replica that
/// trusts the cluster's certificate and signs in as a user allowed under the election's
/// prefix alone leads and confirms its term; a wrong password is refused at start, and the
/// refusal never shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_elects_over_tls_as_a_user_allowed_only_under_the_election_prefix() {
    let scratch = tempfile::tempdir().unwrap();
    let (cert, key) = (scratch.path().join("etcd.pem"), scratch.path().join("etcd-key.pem"));
    tls_serve::generate_if_missing(&cert, &key, "127.0.0.1:0".parse().unwrap()).unwrap();
    let mut cluster = Cluster::start_tls(3, scratch.path(), &cert, &key).await;
    let password = "election-password-never-shown";
    cluster
        .enable_auth("root-password-0123", "plane", password, "/etc-shadow/tls/")
        .await;
    let settings = |password: &str| Settings {
        endpoints: cluster.endpoints.clone(),
        root: "/etc-shadow/tls/".into(),
        replica: Replica {
            id: "a".into(),
            address: "https://a.example:8080".into(),
            started_at: control::now(),
        },
        ttl: TTL,
        ca_pem: Some(std::fs::read_to_string(&cert).unwrap()),
        credentials: Some(control::cluster::Credentials::new("plane".into(), password.into())),
    };
    assert!(!format!("{:?}", settings(password)).contains(password), "Debug hides the password");
    let wrong = Election::start(settings("not-the-password")).await;
    let refusal = wrong.err().expect("a wrong password is refused");
    assert!(!refusal.contains("not-the-password"), "{refusal}");
    let a = Election::start(settings(password)).await.unwrap();
    let (_, revision) = one_leader(&[&a], Duration::from_secs(15)).await;
    a.confirm(revision).await.unwrap();
    assert_eq!(a.leader().await.unwrap().id, "a");
}
