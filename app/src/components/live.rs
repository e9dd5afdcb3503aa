//! Live pages: the `rollout` and `incident` events of `GET /api/v1/events` as signals.
//!
//! The server renders a rollout as its journal records it; once the page is hydrated the
//! browser subscribes to the event stream and every prepare, decision, commit and receipt
//! appears as it happens, without a reload.

use domain::api::RolloutEvent;
use leptos::prelude::*;

#[cfg(feature = "hydrate")]
/// At most this many events are kept (a page left open for days stays small).
const KEPT: usize = 2000;

/// One event, with when the page received it (milliseconds since the page opened).
#[derive(Clone, Debug, PartialEq)]
pub struct Received {
    pub event: RolloutEvent,
    pub at_ms: f64,
}

/// Every rollout event received since the page opened, and a count of incident changes.
/// Empty on the server.
#[derive(Clone, Copy)]
pub struct LiveFeed {
    pub events: RwSignal<Vec<Received>>,
    /// Moves whenever an incident opens, changes or closes: lists refetch when it does.
    pub incident_changes: RwSignal<usize>,
    /// Whether the stream is open (shown, so a silent page is not mistaken for a stuck one).
    pub connected: RwSignal<bool>,
}

impl LiveFeed {
    /// Opens the stream once the page runs in the browser; closes it with the page.
    pub fn open() -> LiveFeed {
        let feed = LiveFeed {
            events: RwSignal::new(Vec::new()),
            incident_changes: RwSignal::new(0),
            connected: RwSignal::new(false),
        };
        #[cfg(feature = "hydrate")]
        Effect::new(move |_| browser::subscribe(feed));
        feed
    }

    /// How many rollout-level steps (start, decision, outcome) arrived: pages refetch the
    /// journal when this moves.
    pub fn milestones(&self) -> usize {
        self.events
            .with(|events| events.iter().filter(|r| r.event.shadow.is_none()).count())
    }

    /// The phases one shadow went through in one rollout, with their times.
    pub fn trail(&self, rollout: i64, shadow: &str) -> Vec<(String, f64)> {
        self.events.with(|events| {
            events
                .iter()
                .filter(|r| r.event.rollout == rollout && r.event.shadow.as_deref() == Some(shadow))
                .map(|r| (r.event.phase.clone(), r.at_ms))
                .collect()
        })
    }

    /// When the rollout's first event arrived, the origin of the trail's times.
    pub fn started_at(&self, rollout: i64) -> Option<f64> {
        self.events
            .with(|events| events.iter().find(|r| r.event.rollout == rollout).map(|r| r.at_ms))
    }

    #[cfg(feature = "hydrate")]
    fn push(&self, event: RolloutEvent, at_ms: f64) {
        self.events.update(|events| {
            events.push(Received { event, at_ms });
            let excess = events.len().saturating_sub(KEPT);
            events.drain(..excess);
        });
    }
}

/// How far a shadow's phase is along a rollout: pending, then its prepare answer, then
/// its commit or abort. The journal and the stream are merged by taking the further one.
pub fn phase_rank(phase: &str) -> u8 {
    match phase {
        "pending" => 0,
        "prepared" | "refused" => 1,
        _ => 2,
    }
}

#[cfg(feature = "hydrate")]
mod browser {
    use super::LiveFeed;
    use domain::api::RolloutEvent;
    use leptos::prelude::*;
    use wasm_bindgen::{JsCast, closure::Closure};

    fn now_ms() -> f64 {
        web_sys::window().and_then(|w| w.performance()).map(|p| p.now()).unwrap_or_default()
    }

    pub fn subscribe(feed: LiveFeed) {
        let Ok(source) = web_sys::EventSource::new("/api/v1/events") else {
            return;
        };
        let on_rollout = Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |message: web_sys::MessageEvent| {
            if let Some(event) = message
                .data()
                .as_string()
                .and_then(|data| serde_json::from_str::<RolloutEvent>(&data).ok())
            {
                feed.push(event, now_ms());
            }
        });
        let _ = source.add_event_listener_with_callback("rollout", on_rollout.as_ref().unchecked_ref());
        let on_incident = Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |_: web_sys::MessageEvent| {
            feed.incident_changes.update(|n| *n += 1);
        });
        let _ = source.add_event_listener_with_callback("incident", on_incident.as_ref().unchecked_ref());
        let on_open = Closure::<dyn FnMut()>::new(move || feed.connected.set(true));
        source.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        // The browser reconnects by itself; until then the page says it is not live.
        let on_error = Closure::<dyn FnMut()>::new(move || feed.connected.set(false));
        source.set_onerror(Some(on_error.as_ref().unchecked_ref()));
        let handle = send_wrapper::SendWrapper::new((source, on_rollout, on_incident, on_open, on_error));
        on_cleanup(move || handle.0.close());
    }
}
