use crate::{
    api::overview,
    components::{ErrorBox, ShortHash, StateBadge, error_text, layout::Layout, when},
};
use leptos::prelude::*;
use leptos_meta::Title;

#[component]
pub fn OverviewPage() -> impl IntoView {
    let data = Resource::new(|| (), |_| overview());
    view! {
        <Title text="Overview · etc-shadow" />
        <Layout title="Overview">
            <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match data.await {
                        Err(err) => view! { <ErrorBox message=error_text(&err) /> }.into_any(),
                        Ok(o) => view! {
                            <div class="grid">
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
