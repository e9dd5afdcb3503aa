//! The peer: a 3-member etcd cluster on loopback (Debian's `etcd-server`), started and
//! stopped by the benchmark, and puts over one gRPC connection to its leader, so that
//! every etc-shadow figure is printed beside what etcd does with the same bytes on the
//! same machine in the same run.

pub use control::etcd_local::Cluster;
use std::{
    path::Path,
    time::{Duration, Instant},
};

/// Latencies of `count` sequential puts of `bytes` each (distinct keys, like distinct
/// entries) to the leader over one connection, sorted.
pub async fn puts(client: &mut etcd_client::Client, bytes: usize, count: usize) -> Vec<Duration> {
    let value = vec![b'x'; bytes];
    // Warm the connection first.
    for i in 0..10 {
        client.put(format!("/bench/warm/{i}"), value.clone(), None).await.unwrap();
    }
    let mut times = Vec::with_capacity(count);
    for i in 0..count {
        let started = Instant::now();
        client.put(format!("/bench/{bytes}/{i}"), value.clone(), None).await.unwrap();
        times.push(started.elapsed());
    }
    times.sort();
    times
}

/// The disk's fsync latency where the benchmark writes: 4 KiB written and fsynced, `count`
/// times, sorted.
pub fn fsync_latency(dir: &Path, count: usize) -> Vec<Duration> {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 4096];
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        file.write_all(&block).unwrap();
        let started = Instant::now();
        file.sync_all().unwrap();
        times.push(started.elapsed());
    }
    let _ = std::fs::remove_file(path);
    times.sort();
    times
}
