//! Drift incidents: the list with filters and paging (refreshed live when an incident
//! opens, changes or closes), and one incident with what differs, the shadow's diff
//! against the primary, its timeline and the actions a role allows.

use crate::{
    api::{AcknowledgeIncident, AdoptIncident, ReconcileIncident, ResolveIncident, incident, incidents, shadow_diff},
    components::{
        ActionError, ErrorBox, ShortHash, StateBadge,
        diff::DiffViewer,
        error_text,
        layout::{Layout, use_me},
        live::LiveFeed,
        when,
    },
};
use domain::{
    Role,
    api::{DiffView, IncidentView},
    drift::DriftKind,
};
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::{
    components::Form,
    hooks::{use_params_map, use_query_map},
};

/// A date from an `<input type=date>` as the API's RFC 3339 time (midnight UTC).
fn day_start(value: Option<String>) -> Option<String> {
    value
        .filter(|v| !v.is_empty())
        .map(|v| if v.len() == 10 { format!("{v}T00:00:00Z") } else { v })
}

#[component]
pub fn IncidentsPage() -> impl IntoView {
    let query = use_query_map();
    let feed = LiveFeed::open();
    let filter = move || {
        let q = query.read();
        let text = |key: &str| q.get(key).filter(|v| !v.is_empty());
        (
            // Unresolved incidents unless the filter says otherwise.
            Some(q.get("status").unwrap_or_else(|| "unresolved".into())).filter(|s| !s.is_empty()),
            text("kind"),
            text("shadow"),
            text("since"),
            text("until"),
            q.get("page").and_then(|p| p.parse::<i64>().ok()),
        )
    };
    let data = crate::resource(
        move || (filter(), feed.incident_changes.get()),
        |((status, kind, shadow, since, until, page), _)| incidents(status, kind, shadow, day_start(since), day_start(until), page),
    );
    let next_href = move |next: i64| {
        let (status, kind, shadow, since, until, _) = filter();
        format!(
            "/incidents?status={}&kind={}&shadow={}&since={}&until={}&page={next}",
            status.unwrap_or_default(),
            kind.unwrap_or_default(),
            shadow.unwrap_or_default(),
            since.unwrap_or_default(),
            until.unwrap_or_default()
        )
    };
    view! {
        <Title text="Incidents · etc-shadow" />
        <Layout title="Incidents">
            <Form method="GET" action="/incidents" attr:class="toolbar filters" attr:data-test="incident-filters">
                <select name="status" prop:value=move || filter().0.unwrap_or_default() data-test="filter-status">
                    <option value="unresolved">"Unresolved"</option>
                    <option value="open">"Open"</option>
                    <option value="acknowledged">"Acknowledged"</option>
                    <option value="resolved">"Resolved"</option>
                    <option value="">"Any status"</option>
                </select>
                <select name="kind" prop:value=move || filter().1.unwrap_or_default() data-test="filter-kind">
                    <option value="">"Any kind"</option>
                    {DriftKind::ALL.into_iter().map(|k| view! { <option value=k.as_str()>{k.as_str()}</option> }).collect_view()}
                </select>
                <input name="shadow" placeholder="shadow" prop:value=move || filter().2.unwrap_or_default() />
                <label>"from " <input type="date" name="since" prop:value=move || filter().3.unwrap_or_default() /></label>
                <label>"to " <input type="date" name="until" prop:value=move || filter().4.unwrap_or_default() /></label>
                <button type="submit" data-test="filter-apply">"Filter"</button>
                <a href="/incidents?status=">"All"</a>
                <span class="spacer"></span>
                <span class="muted small" data-test="live-flag" data-live=move || feed.connected.get().to_string()>
                    {move || if feed.connected.get() { "● live" } else { "" }}
                </span>
            </Form>
            <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match data.await {
                        Err(err) => view! { <ErrorBox message=error_text(&err) /> }.into_any(),
                        Ok(page) if page.items.is_empty() => view! { <p class="muted" data-test="no-incidents">"No incidents match."</p> }.into_any(),
                        Ok(page) => view! {
                            <table class="table" data-test="incident-table">
                                <thead><tr><th>"#"</th><th>"Shadow"</th><th>"Kind"</th><th>"Severity"</th><th>"Status"</th><th>"Opened"</th><th>"Last seen"</th><th>"Resolution"</th></tr></thead>
                                <tbody>
                                    {page.items.into_iter().map(|i| view! {
                                        <tr data-test="incident-row" data-id=i.id data-shadow=i.shadow.clone() data-kind=i.kind.clone() data-status=i.status.clone()>
                                            <td><a href=format!("/incidents/{}", i.id) data-test="incident-link">{format!("#{}", i.id)}</a></td>
                                            <td>{i.shadow.clone()} {i.flapping.then(|| view! { <span class="badge badge-failed" title="three or more episodes within an hour">"flapping"</span> })}</td>
                                            <td><StateBadge state=i.kind.clone() /> <span class="muted small">{(i.kinds.len() > 1).then(|| i.kinds.join(", "))}</span></td>
                                            <td><span class=format!("severity severity-{}", i.severity)>{i.severity.clone()}</span></td>
                                            <td><StateBadge state=i.status.clone() /></td>
                                            <td>{when(&i.opened_at)}</td>
                                            <td>{when(&i.last_seen_at)}</td>
                                            <td>{i.resolution.clone().map(|r| r.replace('_', " "))}</td>
                                        </tr>
                                    }).collect_view()}
                                </tbody>
                            </table>
                            {page.next.map(|next| view! { <a class="button" href=next_href(next)>"Older"</a> })}
                        }.into_any(),
                    }
                })}
            </Transition>
        </Layout>
    }
}

#[component]
pub fn IncidentPage() -> impl IntoView {
    let params = use_params_map();
    let id = move || params.read().get("id").and_then(|n| n.parse::<i64>().ok()).unwrap_or(-1);
    let feed = LiveFeed::open();
    let acknowledge = ServerAction::<AcknowledgeIncident>::new();
    let resolve = ServerAction::<ResolveIncident>::new();
    let adopt = ServerAction::<AdoptIncident>::new();
    let reconcile = ServerAction::<ReconcileIncident>::new();
    let versions = move || {
        acknowledge.version().get()
            + resolve.version().get()
            + adopt.version().get()
            + reconcile.version().get()
            + feed.incident_changes.get()
    };
    let data = crate::resource(move || (id(), versions()), |(id, _)| incident_with_diff(id));
    let failure = move || {
        [
            acknowledge.value().get().and_then(|r| r.err()),
            resolve.value().get().and_then(|r| r.err()),
            adopt.value().get().and_then(|r| r.err()),
            reconcile.value().get().and_then(|r| r.err()),
        ]
        .into_iter()
        .flatten()
        .next()
        .map(|e| error_text(&e))
    };
    view! {
        <Title text="Incident · etc-shadow" />
        <Layout title="Incident">
            {move || failure().map(|message| view! { <ActionError message /> })}
            {move || adopt.value().get().and_then(|r| r.ok()).map(|change| view! {
                <div class="success-box" data-test="adopt-result">
                    "The shadow's content is now change " <a href=format!("/changes/{change}") data-test="adopted-change">{format!("#{change}")}</a> ", waiting for review."
                </div>
            })}
            {move || reconcile.value().get().and_then(|r| r.ok()).map(|r| view! {
                <div class=if r.state == "applied" { "success-box" } else { "error-box" } data-test="reconcile-result" data-state=r.state.clone()>
                    {format!("Reconcile rollout #{} {}", r.id, r.state)} " " <a href=format!("/rollouts/{}", r.id)>"details"</a>
                </div>
            })}
            <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match data.await {
                        Err(err) => view! { <ErrorBox message=error_text(&err) /> }.into_any(),
                        Ok((incident, diff)) => view! { <IncidentDetail incident diff acknowledge resolve adopt reconcile /> }.into_any(),
                    }
                })}
            </Transition>
        </Layout>
    }
}

/// What the incident page shows: the incident and, while it is unresolved, the diff of the
/// primary against its shadow now (or why it could not be read). One resource for both: a
/// resource created inside another's `Suspend` is not matched up when a page loaded
/// directly hydrates, and the page panics.
type IncidentWithDiff = (IncidentView, Option<Result<DiffView, String>>);

async fn incident_with_diff(id: i64) -> Result<IncidentWithDiff, ServerFnError> {
    let incident = incident(id).await?;
    let diff = if incident.status == "resolved" {
        None
    } else {
        Some(shadow_diff(incident.shadow.clone()).await.map_err(|err| error_text(&err)))
    };
    Ok((incident, diff))
}

#[component]
fn IncidentDetail(
    incident: IncidentView,
    diff: Option<Result<DiffView, String>>,
    acknowledge: ServerAction<AcknowledgeIncident>,
    resolve: ServerAction<ResolveIncident>,
    adopt: ServerAction<AdoptIncident>,
    reconcile: ServerAction<ReconcileIncident>,
) -> impl IntoView {
    let me = use_me();
    let role = me.as_ref().map(|m| m.role).unwrap_or(Role::Viewer);
    let unresolved = incident.status != "resolved";
    let id = incident.id;
    let adoptable = incident.entries.iter().any(|e| {
        matches!(
            e.kind,
            DriftKind::Content | DriftKind::Policy | DriftKind::Missing | DriftKind::Unexpected
        )
    });
    view! {
        <section class="card" data-test="incident" data-status=incident.status.clone() data-kind=incident.kind.clone()>
            <div class="toolbar">
                <h2>{format!("#{} {} on {}", incident.id, incident.kind, incident.shadow)}</h2>
                <StateBadge state=incident.status.clone() />
                <span class=format!("severity severity-{}", incident.severity)>{incident.severity.clone()}</span>
                {incident.flapping.then(|| view! { <span class="badge badge-failed">"flapping"</span> })}
            </div>
            <dl>
                <dt>"Shadow"</dt><dd><a href="/shadows">{incident.shadow.clone()}</a></dd>
                <dt>"Kinds"</dt><dd data-test="incident-kinds">{incident.kinds.join(", ")}</dd>
                <dt>"Opened"</dt><dd>{when(&incident.opened_at)} <span class="muted">{format!("(noticed by {})", incident.detected_by)}</span></dd>
                <dt>"Last seen"</dt><dd>{when(&incident.last_seen_at)}</dd>
                <dt>"Expected root"</dt><dd><ShortHash hash=incident.expected_root.clone() /></dd>
                <dt>"Observed root"</dt><dd>{incident.observed_root.clone().map(|r| view! { <ShortHash hash=r /> })}</dd>
                {incident.resolved_at.clone().map(|at| view! {
                    <dt>"Resolved"</dt><dd data-test="incident-resolution">{format!("{} ({})", when(&at), incident.resolution.clone().unwrap_or_default().replace('_', " "))}</dd>
                })}
            </dl>
            {unresolved.then(|| view! {
                <div class="actions" data-test="incident-actions">
                    {(role.allows(Role::Editor) && incident.status == "open").then(|| view! {
                        <ActionForm action=acknowledge attr:class="inline">
                            <input type="hidden" name="id" value=id />
                            <button type="submit" data-test="acknowledge">"Acknowledge"</button>
                        </ActionForm>
                    })}
                    {role.allows(Role::Approver).then(|| view! {
                        <ActionForm action=reconcile attr:class="inline">
                            <input type="hidden" name="id" value=id />
                            <button type="submit" class="primary" data-test="reconcile" title="Push the current revision to this shadow">"Reconcile"</button>
                        </ActionForm>
                    })}
                    {(role.allows(Role::Editor) && adoptable).then(|| view! {
                        <ActionForm action=adopt attr:class="inline">
                            <input type="hidden" name="id" value=id />
                            <button type="submit" data-test="adopt" title="Make the shadow's content a new change, to be reviewed">"Adopt"</button>
                        </ActionForm>
                    })}
                    {role.allows(Role::Approver).then(|| view! {
                        <ActionForm action=resolve attr:class="inline reject-form">
                            <input type="hidden" name="id" value=id />
                            <input name="note" placeholder="Why it can be closed" required data-test="resolve-note" />
                            <button type="submit" data-test="resolve">"Resolve"</button>
                        </ActionForm>
                    })}
                </div>
            })}
        </section>
        {(!incident.entries.is_empty()).then(|| view! {
            <h2>"What differs"</h2>
            <table class="table" data-test="incident-entries">
                <thead><tr><th>"Entry"</th><th>"Kind"</th><th>"Policy"</th><th>"Expected hash"</th><th>"Observed hash"</th></tr></thead>
                <tbody>
                    {incident.entries.iter().map(|e| view! {
                        <tr data-test="incident-entry" data-path=e.path.clone() data-kind=e.kind.as_str()>
                            <td><code>{e.path.clone()}</code></td>
                            <td><StateBadge state=e.kind.as_str() /></td>
                            <td>{match (&e.expected_policy, &e.observed_policy) {
                                (Some(a), Some(b)) if a != b => format!("{a} → {b}"),
                                (Some(a), _) => a.clone(),
                                (None, Some(b)) => b.clone(),
                                _ => String::new(),
                            }}</td>
                            <td>{e.expected_hash.clone().map(|h| view! { <ShortHash hash=h /> })}</td>
                            <td>{e.observed_hash.clone().map(|h| view! { <ShortHash hash=h /> })}</td>
                        </tr>
                    }).collect_view()}
                </tbody>
            </table>
        })}
        {diff.map(|diff| view! {
            <h2>"The primary against the shadow, now"</h2>
            {match diff {
                Err(message) => view! { <ErrorBox message /> }.into_any(),
                Ok(diff) if diff.entries.is_empty() => view! { <p class="muted" data-test="shadow-matches">"The shadow holds the current revision again."</p> }.into_any(),
                Ok(diff) => view! { <DiffViewer diff /> }.into_any(),
            }}
        })}
        <h2>"Timeline"</h2>
        <ol class="timeline" data-test="timeline">
            {incident.timeline.iter().map(|t| view! {
                <li data-test="timeline-event" data-event=t.event.clone()>
                    <strong>{t.event.replace('_', " ")}</strong>
                    {format!(" · {} · {}", when(&t.at), t.actor)}
                    {t.details.get("note").and_then(|n| n.as_str()).map(|n| view! { <div class="muted">{format!("“{n}”")}</div> })}
                    {t.details.get("detail").and_then(|n| n.as_str()).map(|n| view! { <div class="muted">{n.to_string()}</div> })}
                </li>
            }).collect_view()}
        </ol>
    }
}
