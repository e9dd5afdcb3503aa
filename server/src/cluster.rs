//! Replicas: what only the leader runs, following the election, and handing leader-only
//! requests to the leader.
//!
//! A sole server (no `--etcd`) leads for as long as it runs. A replica leads for the terms
//! it wins ([`control::cluster::Election`]): when a term starts it takes the term's epoch
//! ([`control::Db::take_leadership`]), recovers every rollout as at a start and starts
//! the leader's work; when the term ends the work and every task that writes for the
//! term stop at once ([`control::rollouts::Coordinator::step_down`]).

use crate::AppState;
use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderName, HeaderValue, Method, header},
    middleware::Next,
    response::Response,
};
use control::cluster::{Election, Role};
use std::{sync::Arc, time::Duration};

/// Marks a request one replica handed to another: never handed on again.
pub const FORWARDED: HeaderName = HeaderName::from_static("x-etc-shadow-forwarded-by");

/// The leader's background work: rollout recovery, the drift monitor, staging ahead,
/// webhook deliveries and scheduled drills. Stopped when dropped.
pub struct LeaderWork {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    monitor: Arc<control::drift::Monitor>,
}

impl LeaderWork {
    pub fn start(state: &AppState) -> LeaderWork {
        let mut tasks = Vec::new();
        // Undecided rollouts are presumed aborted, decided ones driven to completion:
        // at once, then every two seconds (for shadows that were unreachable).
        let coordinator = state.coordinator.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                if let Err(err) = coordinator.recover().await {
                    tracing::warn!(%err, "rollout recovery failed; retrying");
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }));
        tasks.push(tokio::spawn(state.monitor.clone().run()));
        // Approved changes are staged on the shadows ahead of their rollout.
        tasks.push(tokio::spawn(state.coordinator.clone().run_staging()));
        // Deliveries are marked through the term's handle: a deposed leader marks none.
        tasks.push(tokio::spawn(control::webhooks::run(state.coordinator.db.clone())));
        // Scheduled drills: a shadow whose latest drill is older than the interval gets one.
        if let Some(interval) = state.config.drill_interval {
            let db = state.coordinator.db.clone();
            let coordinator = state.coordinator.clone();
            let monitor = state.monitor.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    match control::drills::run_due(&db, &coordinator.registry, interval).await {
                        Ok(notices) => notices.into_iter().for_each(|notice| monitor.announce(notice)),
                        Err(err) => tracing::warn!(%err, "scheduled drills not run"),
                    }
                    tokio::time::sleep(interval.min(Duration::from_secs(60))).await;
                }
            }));
        }
        LeaderWork {
            tasks,
            monitor: state.monitor.clone(),
        }
    }
}

impl Drop for LeaderWork {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.monitor.stop();
    }
}

/// Follows the election for as long as the replica runs: leads in every term it wins,
/// follows otherwise.
pub async fn follow_election(state: AppState, election: Arc<Election>) {
    /// A term whose epoch cannot be taken this many times in a row (the database out of
    /// reach from here, but etcd not) is given up, so a replica that can work leads.
    const ATTEMPTS: u32 = 5;
    let mut roles = election.subscribe();
    // The term led now (its leader key's revision) and its work.
    let mut led: Option<(i64, LeaderWork)> = None;
    // Failed attempts to take the epoch, of the term of this revision.
    let mut failed: (i64, u32) = (0, 0);
    loop {
        let role = roles.borrow_and_update().clone();
        let revision = match role {
            Role::Leader { revision, .. } => Some(revision),
            Role::Follower => None,
        };
        if led.as_ref().map(|(term, _)| *term) != revision {
            if let Some((term, work)) = led.take() {
                state.coordinator.step_down();
                drop(work);
                tracing::warn!(term, "this replica no longer leads");
            }
            match revision {
                None => {}
                Some(revision) => {
                    // etcd is asked again inside the transaction that takes the epoch.
                    match state
                        .db
                        .take_leadership(revision, &election.replica().id, election.confirm(revision))
                        .await
                    {
                        Ok(identity) => {
                            tracing::info!(revision, epoch = identity.epoch, "this replica leads; recovering rollouts");
                            state.coordinator.lead(identity, Some((election.clone(), revision)));
                            led = Some((revision, LeaderWork::start(&state)));
                        }
                        Err(err) => {
                            failed = if failed.0 == revision {
                                (revision, failed.1 + 1)
                            } else {
                                (revision, 1)
                            };
                            if failed.1 >= ATTEMPTS {
                                tracing::warn!(%err, "cannot take the term's epoch; giving the term up");
                                election.give_up_term(revision).await;
                            } else {
                                // Tried again in a second while the term lasts.
                                tracing::warn!(%err, "cannot take the term's epoch; trying again");
                            }
                        }
                    }
                }
            }
        }
        let pending = revision.is_some() && led.is_none();
        tokio::select! {
            changed = roles.changed() => if changed.is_err() { break },
            () = tokio::time::sleep(Duration::from_secs(1)), if pending => {}
        }
    }
    state.coordinator.step_down();
}

/// Whether a request is leader-only work: it starts, steers or runs what writes to the
/// shadows (rollouts, reconciles, checks, drills, a validating plan).
pub fn leader_only(method: &Method, path: &str, query: Option<&str>) -> bool {
    const REST: [&str; 6] = [
        "/api/v1/changes/*/rollouts",
        "/api/v1/rollouts/*/cancel",
        "/api/v1/rollouts/*/shadows/*/release",
        "/api/v1/shadows/*/reconcile",
        "/api/v1/shadows/*/check",
        "/api/v1/shadows/*/drills",
    ];
    use leptos::server_fn::ServerFn;
    let server_fns = [
        app::api::RolloutChange::PATH,
        app::api::CheckShadow::PATH,
        app::api::ReconcileIncident::PATH,
        app::api::ReconcileShadow::PATH,
        app::api::CancelRollout::PATH,
        app::api::ReleaseRolloutShadow::PATH,
        app::api::RunDrill::PATH,
        app::api::ChangePlan::PATH,
    ];
    if *method == Method::POST && (REST.iter().any(|pattern| matches_pattern(pattern, path)) || server_fns.contains(&path)) {
        return true;
    }
    *method == Method::GET
        && matches_pattern("/api/v1/changes/*/plan", path)
        && query.is_some_and(|q| q.split('&').any(|pair| pair == "validate=true" || pair == "validate=1"))
}

/// `*` stands for one path segment.
fn matches_pattern(pattern: &str, path: &str) -> bool {
    let mut segments = path.split('/');
    for expected in pattern.split('/') {
        match segments.next() {
            Some(found) if expected == "*" && !found.is_empty() => {}
            Some(found) if found == expected => {}
            _ => return false,
        }
    }
    segments.next().is_none()
}

/// The hop-by-hop headers a proxy must not pass on.
fn hop_by_hop(name: &HeaderName) -> bool {
    [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::CONTENT_LENGTH,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// On a replica that does not lead, leader-only requests go to the leader as they came
/// (method, path, headers including the Host, the cookie and the Origin, body), and its
/// answer comes back as it is: the console and the API work through any replica. With no
/// leader known, such a request answers `503 not_leader`.
pub async fn forward_to_leader(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(forwarder) = state.forwarder.clone() else {
        return next.run(request).await;
    };
    let path = request.uri().path().to_string();
    if state.coordinator.leading()
        || request.headers().contains_key(&FORWARDED)
        || !leader_only(request.method(), &path, request.uri().query())
    {
        return next.run(request).await;
    }
    let leader = state.membership.leader();
    let Some(leader) = leader.filter(|leader| leader.id != state.membership.replica.id) else {
        return crate::auth::refuse(&path, control::Error::NotLeader { leader: None });
    };
    match forwarder
        .forward(&leader.address, &state.membership.replica.id, request, state.config.max_body)
        .await
    {
        Ok(response) => response,
        Err(err) => {
            tracing::warn!(leader = %leader.id, %err, "cannot hand a request to the leader");
            crate::auth::refuse(
                &path,
                control::Error::NotLeader {
                    leader: Some(leader.address),
                },
            )
        }
    }
}

/// The client a replica hands requests to the leader with.
pub struct Forwarder {
    client: reqwest::Client,
}

impl Forwarder {
    /// Trusts the replica's own certificate (replicas serve the console with the same
    /// one) when it serves HTTPS.
    pub fn new(tls: Option<&crate::TlsFiles>) -> Result<Forwarder, String> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(3))
            // A rollout answers when it ended, after its prepare deadline and the commits.
            .timeout(Duration::from_secs(600));
        if let Some(files) = tls {
            let pem = std::fs::read(&files.cert).map_err(|err| format!("cannot read {}: {err}", files.cert.display()))?;
            for certificate in reqwest::Certificate::from_pem_bundle(&pem).map_err(|err| format!("{}: {err}", files.cert.display()))? {
                builder = builder.add_root_certificate(certificate);
            }
        }
        Ok(Forwarder {
            client: builder.build().map_err(|err| err.to_string())?,
        })
    }

    async fn forward(&self, leader: &str, by: &str, request: Request, max_body: usize) -> Result<Response, String> {
        let (parts, body) = request.into_parts();
        let bytes = axum::body::to_bytes(body, max_body)
            .await
            .map_err(|err| format!("cannot read the request: {err}"))?;
        let target = format!(
            "{}{}",
            leader.trim_end_matches('/'),
            parts.uri.path_and_query().map_or("/", |p| p.as_str())
        );
        let mut outgoing = self.client.request(parts.method.clone(), &target).body(bytes);
        // Headers the `Connection` header names are this hop's too.
        let named: Vec<String> = parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(|name| name.trim().to_ascii_lowercase())
            .collect();
        for (name, value) in &parts.headers {
            if !hop_by_hop(name) && !named.iter().any(|n| n == name.as_str()) {
                outgoing = outgoing.header(name, value);
            }
        }
        outgoing = outgoing.header(FORWARDED, HeaderValue::from_str(by).map_err(|err| err.to_string())?);
        let answer = outgoing.send().await.map_err(|err| err.to_string())?;
        let mut response = Response::builder().status(answer.status());
        for (name, value) in answer.headers() {
            if !hop_by_hop(name) {
                response = response.header(name, value);
            }
        }
        // Streamed: a long answer is not held here.
        response
            .body(Body::from_stream(answer.bytes_stream()))
            .map_err(|err| err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_only_requests_are_the_ones_that_write_to_shadows() {
        assert!(leader_only(&Method::POST, "/api/v1/changes/7/rollouts", None));
        assert!(leader_only(&Method::POST, "/api/v1/rollouts/3/shadows/web-1/release", None));
        assert!(leader_only(&Method::POST, "/api/v1/shadows/web-1/check", None));
        assert!(leader_only(&Method::GET, "/api/v1/changes/7/plan", Some("validate=true")));
        assert!(!leader_only(&Method::GET, "/api/v1/changes/7/plan", None));
        assert!(!leader_only(&Method::GET, "/api/v1/changes/7/rollouts", None));
        assert!(!leader_only(&Method::POST, "/api/v1/changes/7/approvals", None));
        assert!(!leader_only(&Method::POST, "/api/v1/changes//rollouts", None));
        assert!(!leader_only(&Method::POST, "/api/v1/changes/7/rollouts/x", None));
        use leptos::server_fn::ServerFn;
        assert!(leader_only(&Method::POST, app::api::RolloutChange::PATH, None));
        assert!(!leader_only(&Method::POST, app::api::ApproveChange::PATH, None));
    }
}
