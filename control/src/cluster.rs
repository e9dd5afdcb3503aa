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
    /// The CA certificate (PEM) the cluster's TLS certificates are checked against
    /// (`https://` endpoints).
    pub ca_pem: Option<String>,
    /// The etcd user the replica signs in as (allowed read-write under `root`).
    pub credentials: Option<Credentials>,
}

/// An etcd user and its password; the password is never shown (`Debug` names the user).
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    password: String,
}

impl Credentials {
    pub fn new(user: String, password: String) -> Credentials {
        Credentials { user, password }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ..)", self.user)
    }
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
    /// The lease of the term under way.
    lease: Mutex<Option<i64>>,
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

/// How often the lease is renewed: six times per TTL, so one slow answer (an etcd leader
/// being elected) still leaves renewals before the margin.
fn renewal(ttl: i64) -> Duration {
    Duration::from_millis((u64::try_from(ttl).unwrap_or(1).max(1) * 1000 / 6).max(300))
}

/// One request to etcd, cut at `limit`.
async fn within<T>(limit: Duration, call: impl std::future::Future<Output = Result<T, etcd_client::Error>>) -> Result<T, String> {
    match tokio::time::timeout(limit, call).await {
        Ok(answer) => answer.map_err(|err| err.to_string()),
        Err(_) => Err(format!("etcd did not answer within {limit:?}")),
    }
}

impl Election {
    /// Connects and starts campaigning; answers at once (as a follower).
    pub async fn start(settings: Settings) -> Result<Arc<Election>, String> {
        if settings.endpoints.is_empty() {
            return Err("--etcd names no endpoint".into());
        }
        // No per-request timeout on the channel: a campaign waits, by design, until it
        // wins. Every other call is cut short on its own (`within`).
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_require_leader(true);
        if let Some(ca) = &settings.ca_pem {
            options = options.with_tls(etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(ca)));
        }
        if let Some(credentials) = &settings.credentials {
            options = options.with_user(credentials.user.clone(), credentials.password.clone());
        }
        let client = Client::connect(&settings.endpoints, Some(options)).await.map_err(|err| {
            // etcd's answer never carries the password; the message is ours to keep so.
            let text = err.to_string();
            let text = match &settings.credentials {
                Some(credentials) if !credentials.password.is_empty() => text.replace(&credentials.password, "…"),
                _ => text,
            };
            format!("cannot reach etcd at {}: {text}", settings.endpoints.join(","))
        })?;
        name_is_free(&client, &settings).await?;
        let (role, _) = watch::channel(Role::Follower);
        let inner = Arc::new(Standing {
            settings,
            client,
            role,
            valid_until: Arc::new(Mutex::new(None)),
            lease: Mutex::new(None),
        });
        let task = tokio::spawn(run(inner.clone()));
        Ok(Arc::new(Election { inner, task }))
    }
}

/// Two replicas under one name would overwrite each other's record and each take the
/// other's leadership for its own: a name whose record a live replica keeps renewing is
/// refused. A record left by this replica's previous run (killed -9) goes with its lease,
/// which is watched run down (etcd may grant more than the TTL asked for, and a change of
/// etcd leader gives every lease its full TTL again). With etcd out of reach the replica
/// starts anyway and campaigns once it answers.
async fn name_is_free(client: &Client, settings: &Settings) -> Result<(), String> {
    let record = format!("{}replicas/{}", settings.root, settings.replica.id);
    let mut kv = client.clone();
    let lease = match within(Duration::from_secs(2), kv.get(record.as_str(), None)).await {
        Ok(found) => match found.kvs().first() {
            None => return Ok(()),
            Some(kv) => kv.lease(),
        },
        Err(err) => {
            tracing::warn!(%err, "etcd does not answer; starting without checking the replica's name");
            return Ok(());
        }
    };
    let taken = || {
        format!(
            "a running replica is already named {}: give each replica its own --replica-id (or --advertise)",
            settings.replica.id
        )
    };
    if lease == 0 {
        return Err(taken());
    }
    let mut last: Option<i64> = None;
    loop {
        let mut leases = client.clone();
        let left = match within(Duration::from_secs(2), leases.lease_time_to_live(lease, None)).await {
            Ok(answer) => answer.ttl(),
            Err(_) => return Ok(()),
        };
        if left < 0 {
            return Ok(());
        }
        // Renewed since the last look: its holder is alive.
        if last.is_some_and(|last| left > last) {
            return Err(taken());
        }
        last = Some(left);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Whether etcd refused a call for want of a valid login (expired, or forgotten by a
/// member that restarted).
fn unauthenticated(err: &etcd_client::Error) -> bool {
    matches!(err, etcd_client::Error::GRpcStatus(status) if status.code() == tonic::Code::Unauthenticated)
}

impl Election {
    /// Leaves the election at once (a replica shutting down): its lease is revoked, so
    /// another replica can lead without waiting for the lease to expire.
    pub async fn resign(&self) {
        self.task.abort();
        let _ = self.inner.role.send_replace(Role::Follower);
        let lease = self.inner.lease.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(lease) = lease {
            let mut client = self.inner.client.clone();
            let _ = tokio::time::timeout(Duration::from_secs(1), client.lease_revoke(lease)).await;
        }
    }
}

impl Standing {
    /// Ends the term of `revision` if it is still under way (its lease revoked): the
    /// replica campaigns again a second later, and another may lead meanwhile. For a
    /// leader that cannot do its work; a later term is left alone.
    pub async fn give_up_term(&self, revision: i64) {
        if let Role::Leader { revision: now, lease } = self.role()
            && now == revision
        {
            let mut client = self.client.clone();
            let _ = tokio::time::timeout(Duration::from_secs(1), client.lease_revoke(lease)).await;
        }
    }

    /// Signs in to etcd again (the login expired, or a member that restarted forgot it);
    /// nothing without a user.
    async fn sign_in_again(&self) {
        if self.settings.credentials.is_some() {
            match tokio::time::timeout(Duration::from_secs(2), self.client.refresh_token()).await {
                Ok(Ok(())) => tracing::debug!("signed in to etcd again"),
                Ok(Err(err)) => tracing::warn!(%err, "cannot sign in to etcd again"),
                Err(_) => tracing::warn!("etcd did not answer the sign-in"),
            }
        }
    }

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
        let asked = Instant::now();
        let answer = within(margin(self.settings.ttl), client.lease_time_to_live(lease, None))
            .await
            .map_err(|err| format!("etcd did not confirm the lease: {err}"))?;
        // etcd's whole seconds left, less the time the question took, must pass the margin.
        let left = Duration::from_secs(u64::try_from(answer.ttl()).unwrap_or(0));
        if left <= margin(self.settings.ttl) + asked.elapsed() {
            return Err("the leader's lease has ended or is about to".into());
        }
        if self.role() != (Role::Leader { revision, lease }) {
            return Err("this replica's term has ended".into());
        }
        Ok(())
    }

    /// The replica that leads now, as etcd says.
    pub async fn leader(&self) -> Option<Replica> {
        for attempt in 0..2 {
            let mut client = self.client.clone();
            match tokio::time::timeout(Duration::from_secs(2), client.leader(self.key("leader"))).await {
                Ok(Ok(answer)) => return serde_json::from_slice(answer.kv()?.value()).ok(),
                Ok(Err(err)) if attempt == 0 && unauthenticated(&err) => self.sign_in_again().await,
                _ => return None,
            }
        }
        None
    }

    /// Every replica whose lease is alive.
    pub async fn replicas(&self) -> Result<Vec<Replica>, String> {
        let mut answer = None;
        for attempt in 0..2 {
            let mut client = self.client.clone();
            match tokio::time::timeout(
                Duration::from_secs(2),
                client.get(self.key("replicas/"), Some(GetOptions::new().with_prefix())),
            )
            .await
            {
                Ok(Ok(found)) => {
                    answer = Some(found);
                    break;
                }
                Ok(Err(err)) if attempt == 0 && unauthenticated(&err) => self.sign_in_again().await,
                Ok(Err(err)) => return Err(format!("etcd: {err}")),
                Err(_) => return Err("etcd did not answer within 2 s".into()),
            }
        }
        let answer = answer.ok_or("etcd refused the login")?;
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
    // A term that failed may have failed for a login etcd no longer knows.
    this.sign_in_again().await;
    let asked_for = this.settings.ttl.max(2);
    let mut client = this.client.clone();
    // The lease runs from before the request at the latest: its end is counted from then.
    let asked = Instant::now();
    let granted = within(Duration::from_secs(2), client.lease_grant(asked_for, None))
        .await
        .map_err(|err| format!("no lease from etcd: {err}"))?;
    let (lease, ttl) = (granted.id(), granted.ttl().max(1));
    *this.lease.lock().unwrap_or_else(|p| p.into_inner()) = Some(lease);
    *this.valid_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(asked + Duration::from_secs(ttl as u64));
    let record = serde_json::to_vec(&this.settings.replica).map_err(|err| err.to_string())?;
    within(
        Duration::from_secs(2),
        client.put(
            this.key(&format!("replicas/{}", this.settings.replica.id)),
            record.clone(),
            Some(PutOptions::new().with_lease(lease)),
        ),
    )
    .await
    .map_err(|err| format!("cannot register the replica: {err}"))?;
    // The lease is kept alive by a task of its own; when it cannot be, `lost` says so.
    let (lost_tx, mut lost) = watch::channel(false);
    let keeper = AbortOnDrop({
        let mut client = this.client.clone();
        let valid_until = this.valid_until.clone();
        tokio::spawn(async move {
            let every = renewal(ttl);
            let result: Result<(), String> = async {
                let (mut keeper, mut answers) = within(Duration::from_secs(2), client.lease_keep_alive(lease)).await?;
                loop {
                    // One request at a time: an answer is credited to the request it
                    // answers, so the lease's end is never counted from a later send.
                    let sent = Instant::now();
                    keeper.keep_alive().await.map_err(|err| err.to_string())?;
                    // However long it takes (the leader steps down by the clock meanwhile).
                    match answers.message().await {
                        Ok(Some(answer)) if answer.ttl() > 0 => {
                            *valid_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(sent + Duration::from_secs(answer.ttl() as u64));
                        }
                        Ok(Some(_)) => return Err("the lease has expired".into()),
                        Ok(None) => return Err("the keep-alive stream ended".into()),
                        Err(err) => return Err(err.to_string()),
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
        // Won, but only a lease that is still alive by this replica's own count leads.
        let left = (*this.valid_until.lock().unwrap_or_else(|p| p.into_inner()))
            .map_or(Duration::ZERO, |until| until.saturating_duration_since(Instant::now()));
        if *lost.borrow() || left <= margin(ttl) {
            return Err("the lease ran out while the campaign was won".to_string());
        }
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

/// This process among the control plane's replicas: who it is, the election it takes part
/// in (none for the sole server of a database), and the record every replica keeps of
/// itself in the database (so a replica that is gone still shows, with when it was last
/// seen).
pub struct Membership {
    pub replica: Replica,
    pub election: Option<Arc<Election>>,
    db: crate::Db,
    /// The leader as last asked of etcd (see [`Membership::run`]).
    leader: Mutex<Option<Replica>>,
}

/// How often a replica writes its record and asks etcd who leads.
const HEARTBEAT: Duration = Duration::from_secs(2);

/// Records not written for this long are no longer listed (a replica retired for good).
const FORGOTTEN_AFTER_HOURS: i64 = 24;

impl Membership {
    /// The sole server of its database: it leads by itself.
    pub fn sole(db: crate::Db, replica: Replica) -> Membership {
        Membership {
            leader: Mutex::new(Some(replica.clone())),
            replica,
            election: None,
            db,
        }
    }

    /// A replica that campaigns in `election`.
    pub fn elected(db: crate::Db, election: Arc<Election>) -> Membership {
        Membership {
            replica: election.replica().clone(),
            election: Some(election),
            db,
            leader: Mutex::new(None),
        }
    }

    /// The leader as last seen (at most a couple of seconds old); this replica itself the
    /// moment it leads.
    pub fn leader(&self) -> Option<Replica> {
        match &self.election {
            Some(election) if matches!(election.role(), Role::Leader { .. }) => Some(self.replica.clone()),
            _ => self.leader.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }

    /// Keeps this replica's record and the leader it knows fresh, until dropped (the sole
    /// server has nothing to keep).
    pub async fn run(self: Arc<Self>) {
        let Some(election) = self.election.clone() else {
            return;
        };
        let mut last_write: Option<Instant> = None;
        loop {
            let leader = election.leader().await;
            *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = leader;
            if last_write.is_none_or(|at| at.elapsed() >= HEARTBEAT) {
                if let Err(err) = self.heartbeat().await {
                    tracing::warn!(%err, "cannot write this replica's record");
                }
                last_write = Some(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn heartbeat(&self) -> crate::Result<()> {
        // Its own row only: no write lock needed.
        sqlx::query(
            "INSERT INTO replicas (id, address, started_at, last_seen_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET address = excluded.address, started_at = excluded.started_at,
             last_seen_at = excluded.last_seen_at",
        )
        .bind(&self.replica.id)
        .bind(&self.replica.address)
        .bind(&self.replica.started_at)
        .bind(crate::now())
        .execute(self.db.read_write())
        .await?;
        Ok(())
    }

    /// Every replica known, which ones are alive and which one leads, as etcd and the
    /// database say now.
    pub async fn view(&self) -> crate::Result<domain::api::ClusterView> {
        let Some(election) = &self.election else {
            let now = crate::now();
            return Ok(domain::api::ClusterView {
                this: self.replica.id.clone(),
                leader: Some(self.replica.id.clone()),
                replicas: vec![domain::api::ReplicaView {
                    id: self.replica.id.clone(),
                    address: self.replica.address.clone(),
                    leader: true,
                    alive: true,
                    started_at: self.replica.started_at.clone(),
                    last_seen_at: now,
                }],
                elected: false,
            });
        };
        let (leader, alive) = tokio::join!(election.leader(), election.replicas());
        let alive = alive.unwrap_or_default();
        let since = crate::format_time(time::OffsetDateTime::now_utc() - time::Duration::hours(FORGOTTEN_AFTER_HOURS));
        let rows: Vec<(String, String, String, String)> =
            sqlx::query_as("SELECT id, address, started_at, last_seen_at FROM replicas WHERE last_seen_at >= $1 ORDER BY id")
                .bind(since)
                .fetch_all(&self.db.read)
                .await?;
        let mut replicas: Vec<domain::api::ReplicaView> = rows
            .into_iter()
            .map(|(id, address, started_at, last_seen_at)| domain::api::ReplicaView {
                leader: leader.as_ref().is_some_and(|l| l.id == id),
                alive: alive.iter().any(|r| r.id == id),
                id,
                address,
                started_at,
                last_seen_at,
            })
            .collect();
        // Alive in etcd but without a record yet (it has just started).
        for replica in &alive {
            if !replicas.iter().any(|r| r.id == replica.id) {
                replicas.push(domain::api::ReplicaView {
                    id: replica.id.clone(),
                    address: replica.address.clone(),
                    leader: leader.as_ref().is_some_and(|l| l.id == replica.id),
                    alive: true,
                    started_at: replica.started_at.clone(),
                    last_seen_at: replica.started_at.clone(),
                });
            }
        }
        replicas.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(domain::api::ClusterView {
            this: self.replica.id.clone(),
            leader: leader.map(|l| l.id),
            replicas,
            elected: true,
        })
    }
}
