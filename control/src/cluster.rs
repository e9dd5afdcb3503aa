//! One leader among a control plane's replicas, elected through an etcd lease.
//!
//! Every replica holds a lease of [`DEFAULT_TTL`] seconds that it keeps alive, registers
//! itself under `<root>replicas/<id>` with that lease, and campaigns for
//! `<root>leader` (etcd's election service). The winner's leader key is created at an etcd
//! revision that no earlier leader's can equal or pass: that revision is the term's epoch
//! candidate (see [`crate::Db::take_leadership`], which makes the epoch also pass every
//! epoch the database has seen).
//!
//! A leader steps down before its lease can expire: it counts the lease valid only until
//! the time it *sent* the last keep-alive that etcd answered, plus the TTL, and lets go a
//! margin before that. A leader that was stopped (SIGSTOP) and wakes after its lease
//! expired has no timer that ran meanwhile, so every decision first asks etcd
//! ([`Election::confirm`]); the database refuses a decision of an epoch that is no longer
//! the newest, for the moment between that answer and the write.

use etcd_client::{Client, ConnectOptions, GetOptions, PutOptions};
use serde::{Deserialize, Serialize};
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::sync::watch;

/// The lease's time to live, in seconds: a dead leader's successor leads within about
/// this plus one second.
pub const DEFAULT_TTL: i64 = 5;

/// A replica as the others see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    pub id: String,
    /// Where its console and API answer (`http://10.0.0.7:8080`).
    pub address: String,
    pub started_at: String,
}

/// What this replica is now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Not leading (campaigning, or cut off from etcd).
    Follower,
    /// Leading, with the revision its leader key was created at and its lease.
    Leader { revision: i64, lease: i64 },
}

/// Where the election lives and who this replica is.
#[derive(Clone, Debug)]
pub struct Settings {
    pub endpoints: Vec<String>,
    /// Keys under this prefix: `<root>leader`, `<root>replicas/<id>`.
    pub root: String,
    pub replica: Replica,
    pub ttl: i64,
}

/// A replica's part in the election, run by a task of its own until dropped (which is
/// what a replica's death looks like to the others: its lease is no longer kept alive).
pub struct Election {
    inner: Arc<Standing>,
    task: tokio::task::JoinHandle<()>,
}

/// What a replica knows of the election and asks of it (an [`Election`] derefs to it).
pub struct Standing {
    settings: Settings,
    client: Client,
    role: watch::Sender<Role>,
    /// Until when the lease is known to be valid (sent time of the last answered
    /// keep-alive, plus the TTL).
    valid_until: Arc<Mutex<Option<Instant>>>,
}

impl Drop for Election {
    fn drop(&mut self) {
        self.task.abort();
        let _ = self.inner.role.send_replace(Role::Follower);
    }
}

impl std::ops::Deref for Election {
    type Target = Standing;
    fn deref(&self) -> &Standing {
        &self.inner
    }
}

/// How long before the lease's end a leader lets go.
fn margin(ttl: i64) -> Duration {
    Duration::from_millis(u64::try_from(ttl).unwrap_or(1).max(1) * 1000 / 3)
}

impl Election {
    /// Connects and starts campaigning; answers at once (as a follower).
    pub async fn start(settings: Settings) -> Result<Arc<Election>, String> {
        if settings.endpoints.is_empty() {
            return Err("--etcd names no endpoint".into());
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(u64::try_from(settings.ttl).unwrap_or(5).max(2)))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_require_leader(true);
        let client = Client::connect(&settings.endpoints, Some(options))
            .await
            .map_err(|err| format!("cannot reach etcd at {}: {err}", settings.endpoints.join(",")))?;
        let (role, _) = watch::channel(Role::Follower);
        let inner = Arc::new(Standing {
            settings,
            client,
            role,
            valid_until: Arc::new(Mutex::new(None)),
        });
        let task = tokio::spawn(run(inner.clone()));
        Ok(Arc::new(Election { inner, task }))
    }
}

impl Standing {
    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }

    pub fn replica(&self) -> &Replica {
        &self.settings.replica
    }

    /// Whether this replica still leads in the term of `revision`, asked of etcd now: the
    /// lease must have more than the margin left, by its own clock and by etcd's.
    pub async fn confirm(&self, revision: i64) -> Result<(), String> {
        let Role::Leader { revision: now, lease } = self.role() else {
            return Err("this replica does not lead".into());
        };
        if now != revision {
            return Err("this replica's term has ended".into());
        }
        let left =
            (*self.valid_until.lock().unwrap_or_else(|p| p.into_inner())).map(|until| until.saturating_duration_since(Instant::now()));
        if left.is_none_or(|left| left <= margin(self.settings.ttl)) {
            return Err("the leader's lease is about to end".into());
        }
        let mut client = self.client.clone();
        let answer = tokio::time::timeout(margin(self.settings.ttl), client.lease_time_to_live(lease, None))
            .await
            .map_err(|_| "etcd did not confirm the lease in time".to_string())?
            .map_err(|err| format!("etcd did not confirm the lease: {err}"))?;
        if answer.ttl() <= 1 {
            return Err("the leader's lease has ended".into());
        }
        Ok(())
    }

    /// The replica that leads now, as etcd says.
    pub async fn leader(&self) -> Option<Replica> {
        let mut client = self.client.clone();
        let answer = client.leader(self.key("leader")).await.ok()?;
        serde_json::from_slice(answer.kv()?.value()).ok()
    }

    /// Every replica whose lease is alive.
    pub async fn replicas(&self) -> Result<Vec<Replica>, String> {
        let mut client = self.client.clone();
        let answer = client
            .get(self.key("replicas/"), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|err| format!("etcd: {err}"))?;
        Ok(answer
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect())
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.settings.root)
    }
}

/// One term after another: a lease, the replica's record, a campaign, leading until the
/// lease can no longer be kept; then again, a second later.
async fn run(this: Arc<Standing>) {
    loop {
        if let Err(err) = term(&this).await {
            tracing::warn!(%err, "the election's term ended");
        }
        let _ = this.role.send_replace(Role::Follower);
        *this.valid_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Aborts its task when dropped: the keep-alive ends with the term, also when the term's
/// own task is aborted (the replica stopped).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn term(this: &Arc<Standing>) -> Result<(), String> {
    let ttl = this.settings.ttl.max(2);
    let mut client = this.client.clone();
    let lease = client
        .lease_grant(ttl, None)
        .await
        .map_err(|err| format!("no lease from etcd: {err}"))?
        .id();
    *this.valid_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + Duration::from_secs(ttl as u64));
    let record = serde_json::to_vec(&this.settings.replica).map_err(|err| err.to_string())?;
    client
        .put(
            this.key(&format!("replicas/{}", this.settings.replica.id)),
            record.clone(),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .map_err(|err| format!("cannot register the replica: {err}"))?;
    // The lease is kept alive by a task of its own; when it cannot be, `lost` says so.
    let (lost_tx, mut lost) = watch::channel(false);
    let keeper = AbortOnDrop({
        let mut client = this.client.clone();
        let valid_until = this.valid_until.clone();
        tokio::spawn(async move {
            let every = Duration::from_millis(ttl as u64 * 1000 / 3);
            let result: Result<(), String> = async {
                let (mut keeper, mut answers) = client.lease_keep_alive(lease).await.map_err(|err| err.to_string())?;
                loop {
                    let sent = Instant::now();
                    keeper.keep_alive().await.map_err(|err| err.to_string())?;
                    match tokio::time::timeout(every, answers.message()).await {
                        Ok(Ok(Some(answer))) if answer.ttl() > 0 => {
                            *valid_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(sent + Duration::from_secs(answer.ttl() as u64));
                        }
                        Ok(Ok(Some(_))) => return Err("the lease has expired".into()),
                        Ok(Ok(None)) => return Err("the keep-alive stream ended".into()),
                        Ok(Err(err)) => return Err(err.to_string()),
                        // No answer in time: tried again; the lease's end comes nearer.
                        Err(_) => continue,
                    }
                    tokio::time::sleep(every.saturating_sub(sent.elapsed())).await;
                }
            }
            .await;
            if let Err(err) = result {
                tracing::warn!(%err, "the election lease is lost");
            }
            let _ = lost_tx.send(true);
        })
    });
    let outcome = async {
        let mut campaigner = this.client.clone();
        let won = tokio::select! {
            won = campaigner.campaign(this.key("leader"), record, lease) => won.map_err(|err| format!("campaign: {err}"))?,
            _ = lost.wait_for(|lost| *lost) => return Err("the lease was lost while campaigning".to_string()),
        };
        let revision = won.leader().map(|leader| leader.rev()).ok_or("etcd named no leader key")?;
        tracing::info!(replica = %this.settings.replica.id, revision, "this replica leads");
        let _ = this.role.send_replace(Role::Leader { revision, lease });
        // Leading until the lease is lost or nearly over by this replica's own clock.
        loop {
            let left = (*this.valid_until.lock().unwrap_or_else(|p| p.into_inner()))
                .map_or(Duration::ZERO, |until| until.saturating_duration_since(Instant::now()));
            if left <= margin(ttl) {
                return Err("the lease could not be renewed in time; stepping down".to_string());
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = lost.wait_for(|lost| *lost) => return Err("the lease was lost; stepping down".to_string()),
            }
        }
    }
    .await;
    let _ = this.role.send_replace(Role::Follower);
    drop(keeper);
    // Let the others campaign at once rather than after the TTL (best effort: an
    // unreachable etcd lets the lease expire by itself).
    let mut client = this.client.clone();
    let _ = tokio::time::timeout(Duration::from_secs(1), client.lease_revoke(lease)).await;
    outcome
}
