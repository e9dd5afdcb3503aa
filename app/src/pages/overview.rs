use crate::{
    api::overview,
    components::{ErrorBox, ShortHash, StateBadge, error_text, layout::Layout, when},
};
use leptos::prelude::*;
use leptos_meta::Title;

#[component]
pub fn OverviewPage() -> impl IntoView {
    let data = crate::resource(|| (), |_| overview());
    view! {
        <Title text="Overview · etc-shadow" />
        <Layout title="Overview">
            <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match data.await {
                        Err(err) => view! { <ErrorBox message=error_text(&err) /> }.into_any(),
                        Ok(o) => view! {
                            <div class="grid">
                                <section class="card" data-test="fleet">
                                    <h2>"Shadows"</h2>
                                    {if o.shadows.is_empty() {
                                        view! { <p class="muted">"No shadows registered."</p> }.into_any()
                                    } else {
                                        view! {
                                            <ul class="plain">
                                                {o.shadows.iter().map(|s| view! {
                                                    <li data-test="fleet-shadow" data-name=s.name.clone() data-status=s.status.clone()>
                                                        <strong>{s.name.clone()}</strong> " " <StateBadge state=s.status.clone() />
                                                        <span class="muted">{format!(
                                                            " rev {} · in sync {}",
                                                            s.observed_revision.map(|r| format!("#{r}")).unwrap_or_else(|| "—".into()),
                                                            s.last_in_sync_at.as_deref().map(when).unwrap_or_else(|| "never".into())
                                                        )}</span>
                                                    </li>
                                                }).collect_view()}
                                            </ul>
                                        }.into_any()
                                    }}
                                    <a href="/shadows">"All shadows"</a>
                                </section>
                                <section class="card" data-test="open-incidents">
                                    <h2>{format!("Open incidents ({})", o.open_incident_count)}</h2>
                                    {if o.open_incidents.is_empty() {
                                        view! { <p class="muted">"None: every shadow is where it should be."</p> }.into_any()
                                    } else {
                                        view! {
                                            <ul class="plain">
                                                {o.open_incidents.iter().map(|i| view! {
                                                    <li data-test="open-incident">
                                                        <a href=format!("/incidents/{}", i.id)>{format!("#{} {} on {}", i.id, i.kind, i.shadow)}</a>
                                                        <span class="muted">{format!(" since {}", when(&i.opened_at))}</span>
                                                    </li>
                                                }).collect_view()}
                                            </ul>
                                        }.into_any()
                                    }}
                                    <IncidentChart days=o.incident_days.clone() />
                                    <a href="/incidents">"All incidents"</a>
                                </section>
                                <section class="card" data-test="current-revision">
                                    <h2>"Current revision"</h2>
                                    <p class="big"><a href=format!("/revisions/{}", o.current.number)>{format!("#{}", o.current.number)}</a></p>
                                    <p>{o.current.message.clone()}</p>
                                    <dl>
                                        <dt>"Root"</dt><dd><ShortHash hash=o.current.root.clone() /></dd>
                                        <dt>"Entries"</dt><dd>{o.current.entry_count}</dd>
                                        <dt>"By"</dt><dd>{o.current.author.clone()}</dd>
                                        <dt>"At"</dt><dd>{when(&o.current.created_at)}</dd>
                                    </dl>
                                    <a class="button" href="/config">"Browse configuration"</a>
                                </section>
                                <section class="card" data-test="awaiting-approval">
                                    <h2>"Awaiting approval or rollout"</h2>
                                    {if o.awaiting_approval.is_empty() {
                                        view! { <p class="muted">"Nothing waits for review."</p> }.into_any()
                                    } else {
                                        view! {
                                            <ul class="plain">
                                                {o.awaiting_approval.iter().map(|c| view! {
                                                    <li data-test="awaiting-change">
                                                        <a href=format!("/changes/{}", c.id)>{format!("#{} {}", c.id, c.message)}</a>
                                                        " " <StateBadge state=c.state.as_str() />
                                                        <span class="muted">{format!(" by {}", c.author)}</span>
                                                    </li>
                                                }).collect_view()}
                                            </ul>
                                        }.into_any()
                                    }}
                                    <p class="muted">{format!("{} open change(s) in all", o.open_changes)}</p>
                                </section>
                                {o.cluster.clone().filter(|c| c.elected).map(|c| view! {
                                    <section class="card" data-test="replicas">
                                        <h2>"Control plane replicas"</h2>
                                        {if c.leader.is_none() {
                                            Some(view! { <p class="error">"No replica leads now: rollouts and checks wait for an election."</p> })
                                        } else {
                                            None
                                        }}
                                        <ul class="plain">
                                            {c.replicas.iter().map(|r| view! {
                                                <li data-test="replica" data-id=r.id.clone() data-leader=r.leader.to_string() data-alive=r.alive.to_string()>
                                                    <strong>{r.id.clone()}</strong> " "
                                                    <StateBadge state=if r.leader { "leader" } else if r.alive { "follower" } else { "down" } />
                                                    {(r.id == c.this).then(|| view! { <span class="muted">" (this one)"</span> })}
                                                    <span class="muted">{format!(" {} · seen {}", r.address, when(&r.last_seen_at))}</span>
                                                </li>
                                            }).collect_view()}
                                        </ul>
                                    </section>
                                })}
                                <section class="card" data-test="recent-rollouts">
                                    <h2>"Recent rollouts"</h2>
                                    {if o.recent_rollouts.is_empty() {
                                        view! { <p class="muted">"No rollouts yet."</p> }.into_any()
                                    } else {
                                        view! {
                                            <ul class="plain">
                                                {o.recent_rollouts.iter().map(|r| view! {
                                                    <li>
                                                        {format!("#{} → revision {} ", r.id, r.revision)}
                                                        <StateBadge state=r.state.clone() />
                                                        <span class="muted">{format!(" {} by {}", when(&r.started_at), r.started_by)}</span>
                                                    </li>
                                                }).collect_view()}
                                            </ul>
                                        }.into_any()
                                    }}
                                </section>
                            </div>
                            <section class="card" data-test="recent-activity">
                                <h2>"Recent activity"</h2>
                                <table class="table">
                                    <thead><tr><th>"#"</th><th>"When"</th><th>"Who"</th><th>"Action"</th><th>"Target"</th></tr></thead>
                                    <tbody>
                                        {o.recent_activity.iter().map(|a| view! {
                                            <tr>
                                                <td>{a.seq}</td>
                                                <td>{when(&a.at)}</td>
                                                <td>{a.actor.clone()}</td>
                                                <td><code>{a.action.clone()}</code></td>
                                                <td>{a.target.clone()}</td>
                                            </tr>
                                        }).collect_view()}
                                    </tbody>
                                </table>
                                <a href="/audit">"Full audit log"</a>
                            </section>
                        }.into_any(),
                    }
                })}
            </Suspense>
        </Layout>
    }
}

/// Incidents opened per day (bars) and mean time to resolve (labels), drawn on the server.
#[component]
fn IncidentChart(days: Vec<domain::api::IncidentDay>) -> impl IntoView {
    const WIDTH: f64 = 420.0;
    const HEIGHT: f64 = 120.0;
    let max = days.iter().map(|d| d.opened).max().unwrap_or(0).max(1) as f64;
    let slot = WIDTH / days.len().max(1) as f64;
    let bars = days
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let h = (d.opened as f64 / max) * (HEIGHT - 30.0);
            let x = i as f64 * slot + 3.0;
            let ttr = d
                .mean_resolve_seconds
                .map(|s| if s < 120 { format!("{s}s") } else { format!("{}m", s / 60) });
            let title = format!(
                "{}: {} opened{}",
                d.day,
                d.opened,
                ttr.as_ref().map(|t| format!(", resolved in {t} on average")).unwrap_or_default()
            );
            view! {
                <g data-test="chart-day" data-day=d.day.clone() data-opened=d.opened>
                    <title>{title}</title>
                    <rect x=x y=HEIGHT - 16.0 - h width=slot - 6.0 height=h class="bar" />
                    <text x=x + (slot - 6.0) / 2.0 y=HEIGHT - 2.0 class="axis">{d.day[8..].to_string()}</text>
                    {(d.opened > 0).then(|| view! { <text x=x + (slot - 6.0) / 2.0 y=HEIGHT - 20.0 - h class="count">{d.opened}</text> })}
                </g>
            }
        })
        .collect_view();
    view! {
        <figure class="chart" data-test="incident-chart">
            <svg viewBox=format!("0 0 {WIDTH} {HEIGHT}") role="img" aria-label="Incidents opened per day, last 14 days">{bars}</svg>
            <figcaption class="muted small">"Incidents opened per day (UTC), last 14 days; hover a day for the mean time to resolve."</figcaption>
        </figure>
    }
}
