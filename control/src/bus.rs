//! The live events of one replica reach the consoles of all: rollout progress and
//! incident changes travel between replicas through the database they share
//! (PostgreSQL's `NOTIFY`), so a page served by any replica follows a rollout the leader
//! runs, and an incident acknowledged on one replica moves on every page.
//!
//! Each replica publishes what happened in it ([`crate::rollouts::Coordinator`]'s events,
//! [`crate::drift::Monitor`]'s notices) and delivers what the others published to its own
//! subscribers only, so nothing travels twice. Events are a live view: one lost while the
//! database is unreachable is not sent again (the journal and the pages hold the truth).

use crate::{drift::Monitor, rollouts::Coordinator};
use domain::api::{IncidentNotice, RolloutEvent};
use serde::{Deserialize, Serialize};
use std::{sync::Arc, time::Duration};
use tokio::sync::mpsc;

/// The channel of the replicas' events.
const CHANNEL: &str = "etc_shadow_events";

/// PostgreSQL's limit of a notification's payload, less room for the envelope.
const MAX_PAYLOAD: usize = 7900;

/// Events waiting to be published; more are dropped (the database is not keeping up).
const BACKLOG: usize = 4096;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Message {
    Rollout(RolloutEvent),
    Incident(IncidentNotice),
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    /// The replica it happened in.
    origin: String,
    message: Message,
}

/// Where a replica's own events are handed for publishing.
pub type Outbox = mpsc::Sender<Message>;

/// Connects the coordinator's and the monitor's events to the other replicas through
/// `database` until the task is dropped. `origin` names this replica.
pub fn start(database: String, origin: String, coordinator: Arc<Coordinator>, monitor: Arc<Monitor>) -> tokio::task::JoinHandle<()> {
    let (outbox, inbox) = mpsc::channel(BACKLOG);
    coordinator.publish_to(outbox.clone());
    monitor.publish_to(outbox);
    tokio::spawn(run(database, origin, coordinator, monitor, inbox))
}

async fn run(database: String, origin: String, coordinator: Arc<Coordinator>, monitor: Arc<Monitor>, mut inbox: mpsc::Receiver<Message>) {
    loop {
        let result: Result<(), sqlx::Error> = async {
            let mut listener = sqlx::postgres::PgListener::connect(&database).await?;
            listener.listen(CHANNEL).await?;
            let sender = sqlx::postgres::PgPool::connect(&database).await?;
            loop {
                tokio::select! {
                    outgoing = inbox.recv() => {
                        let Some(message) = outgoing else { return Ok(()) };
                        let payload = serde_json::to_string(&Envelope { origin: origin.clone(), message }).unwrap_or_default();
                        if payload.len() > MAX_PAYLOAD {
                            tracing::debug!(bytes = payload.len(), "an event too large to relay is left out");
                            continue;
                        }
                        sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(payload).execute(&sender).await?;
                    }
                    incoming = listener.recv() => {
                        let notification = incoming?;
                        match serde_json::from_str::<Envelope>(notification.payload()) {
                            Ok(envelope) if envelope.origin != origin => match envelope.message {
                                Message::Rollout(event) => coordinator.deliver(event),
                                Message::Incident(notice) => monitor.deliver(notice),
                            },
                            Ok(_) => {}
                            Err(err) => tracing::debug!(%err, "an event from another replica not understood"),
                        }
                    }
                }
            }
        }
        .await;
        match result {
            Ok(()) => return,
            Err(err) => {
                tracing::warn!(%err, "the replicas' event channel failed; reconnecting");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
