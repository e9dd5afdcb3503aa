//! Rollouts: the list, and one rollout with every shadow's phase and receipt. While a
//! rollout is running the detail page refreshes itself every second.

use crate::{
    api::{CancelRollout, ReleaseRolloutShadow, rollout, rollouts},
    components::{
        ActionError, ErrorBox, ShortHash, StateBadge, error_text,
        layout::{Layout, use_me},
        live::{LiveFeed, phase_rank},
        when,
    },
};
use domain::{Role, api::RolloutView};
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::{use_params_map, use_query_map};

/// Every targeted shadow: prepare answer, commit receipt, and whether it proves the root.
/// With a live `feed`, each row also shows the steps the shadow went through as they
/// arrive, and its phase moves without a reload.
#[component]
pub fn RolloutShadows(rollout: RolloutView, #[prop(optional)] feed: Option<LiveFeed>) -> impl IntoView {
    if rollout.shadows.is_empty() {
        return view! { <p class="muted">"No shadows were registered: the primary alone moved to the new revision."</p> }.into_any();
    }
    let root = rollout.root.clone();
    let id = rollout.id;
    view! {
        <table class="table" data-test="rollout-shadows">
            <thead><tr><th>"Shadow"</th><th>"Phase"</th><th>"Steps"</th><th>"Staged root"</th><th>"Receipt root"</th><th>"Proof"</th><th>"Error, hook"</th></tr></thead>
            <tbody>
                {rollout.shadows.into_iter().map(|s| {
                    let proven = s.receipt_root.as_deref() == Some(root.as_str());
                    let name = s.name.clone();
                    let trail = move || feed.map(|feed| feed.trail(id, &name)).unwrap_or_default();
                    let recorded = s.phase.clone();
                    let trail_for_phase = trail.clone();
                    // The journal's phase, or a further one the stream already told.
                    let phase = move || {
                        trail_for_phase()
                            .last()
                            .map(|(phase, _)| phase.clone())
                            .filter(|live| phase_rank(live) > phase_rank(&recorded))
                            .unwrap_or_else(|| recorded.clone())
                    };
                    let phase_for_badge = phase.clone();
                    let steps = move || {
                        let origin = feed.and_then(|feed| feed.started_at(id)).unwrap_or_default();
                        trail().into_iter().map(|(phase, at)| view! {
                            <li data-test="rollout-step" data-phase=phase.clone()>{phase.clone()} <span class="muted small">{format!(" +{:.0} ms", at - origin)}</span></li>
                        }).collect_view()
                    };
                    view! {
                        <tr data-test="rollout-shadow" data-name=s.name.clone() data-phase=phase>
                            <td>{s.name.clone()}</td>
                            <td>{move || view! { <StateBadge state=phase_for_badge() /> }}</td>
                            <td><ol class="steps">{steps}</ol></td>
                            <td>{s.staged_root.clone().map(|r| view! { <ShortHash hash=r /> })}</td>
                            <td>{s.receipt_root.clone().map(|r| view! { <ShortHash hash=r /> })}</td>
                            <td>{if proven { "✓ matches" } else { "—" }}</td>
                            <td class="muted">
                                {s.error.clone()}
                                {s.hook.clone().map(|run| view! { <crate::components::HookOutput run /> })}
                            </td>
                        </tr>
                    }
                }).collect_view()}
            </tbody>
        </table>
    }
    .into_any()
}

#[component]
pub fn RolloutsPage() -> impl IntoView {
    let query = use_query_map();
    let before = move || query.read().get("before").and_then(|b| b.parse::<i64>().ok());
    let data = crate::resource(before, rollouts);
    view! {
        <Title text="Rollouts · etc-shadow" />
        <Layout title="Rollouts">
            <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match data.await {
                        Err(err) => view! { <ErrorBox message=error_text(&err) /> }.into_any(),
                        Ok(page) => view! {
                            <table class="table" data-test="rollout-table">
                                <thead><tr><th>"#"</th><th>"Kind"</th><th>"State"</th><th>"Revision"</th><th>"Shadows"</th><th>"By"</th><th>"Started"</th></tr></thead>
                                <tbody>
                                    {page.items.iter().map(|r| view! {
                                        <tr data-test="rollout-row">
                                            <td><a href=format!("/rollouts/{}", r.id)>{format!("#{}", r.id)}</a></td>
                                            <td>{r.kind.clone()}</td>
                                            <td><StateBadge state=r.state.clone() /></td>
                                            <td>{format!("#{}", r.revision)}</td>
                                            <td>{r.shadows.len()}</td>
                                            <td>{r.started_by.clone()}</td>
                                            <td>{when(&r.started_at)}</td>
                                        </tr>
                                    }).collect_view()}
                                </tbody>
                            </table>
                            {page.next.map(|next| view! { <a class="button" href=format!("/rollouts?before={next}")>"Older"</a> })}
                        }.into_any(),
                    }
                })}
            </Suspense>
        </Layout>
    }
}

#[component]
pub fn RolloutPage() -> impl IntoView {
    let params = use_params_map();
    let id = move || params.read().get("id").and_then(|n| n.parse::<i64>().ok()).unwrap_or(-1);
    let tick = RwSignal::new(0u32);
    let cancel = ServerAction::<CancelRollout>::new();
    let release = ServerAction::<ReleaseRolloutShadow>::new();
    let data = crate::resource(
        move || (id(), tick.get(), cancel.version().get() + release.version().get()),
        |(id, _, _)| rollout(id),
    );
    let failure = move || {
        [
            cancel.value().get().and_then(|r| r.err()),
            release.value().get().and_then(|r| r.err()),
        ]
        .into_iter()
        .flatten()
        .next()
        .map(|e| error_text(&e))
    };
    // Poll while the rollout is still moving.
    Effect::new(move |_| {
        let running = data
            .get()
            .and_then(|r| r.ok())
            .is_some_and(|r| r.state == "preparing" || r.state == "committing");
        if running {
            set_timeout(move || tick.update(|t| *t += 1), std::time::Duration::from_secs(1));
        }
    });
    view! {
        <Title text="Rollout · etc-shadow" />
        <Layout title="Rollout">
            {move || failure().map(|message| view! { <ActionError message /> })}
            <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match data.await {
                        Err(err) => view! { <ErrorBox message=error_text(&err) /> }.into_any(),
                        Ok(r) => view! {
                            <section class="card" data-test="rollout-summary" data-state=r.state.clone()>
                                <div class="toolbar"><h2>{format!("Rollout #{} ({})", r.id, r.kind)}</h2><StateBadge state=r.state.clone() /></div>
                                <dl>
                                    <dt>"Revision"</dt><dd><a href=format!("/revisions/{}", r.revision)>{format!("#{}", r.revision)}</a></dd>
                                    <dt>"Root"</dt><dd><code>{r.root.clone()}</code></dd>
                                    {r.change_id.map(|c| view! { <dt>"Change"</dt><dd><a href=format!("/changes/{c}")>{format!("#{c}")}</a></dd> })}
                                    <dt>"By"</dt><dd>{r.started_by.clone()}</dd>
                                    <dt>"Started"</dt><dd>{when(&r.started_at)}</dd>
                                    <dt>"Finished"</dt><dd>{r.finished_at.as_deref().map(when).unwrap_or_else(|| "—".into())}</dd>
                                </dl>
                                {r.error.clone().map(|e| view! { <div class="error-box" data-test="rollout-error">{e}</div> })}
                                <RolloutExits rollout=r.clone() cancel release />
                            </section>
                            <RolloutShadows rollout=r />
                        }.into_any(),
                    }
                })}
            </Transition>
        </Layout>
    }
}

/// The exits an approver has from a rollout that waits: cancel one still preparing (the
/// prepare deadline would end it too), or release a shadow whose commit never comes (dark,
/// or its disk broken), so the rollout ends `incomplete` and the shadow is reconciled as
/// drift. Both are audited.
#[component]
fn RolloutExits(rollout: RolloutView, cancel: ServerAction<CancelRollout>, release: ServerAction<ReleaseRolloutShadow>) -> impl IntoView {
    let approver = use_me().is_some_and(|me| me.role.allows(Role::Approver));
    let id = rollout.id;
    let waiting: Vec<String> = rollout
        .shadows
        .iter()
        .filter(|s| rollout.state == "committing" && s.phase == "prepared")
        .map(|s| s.name.clone())
        .collect();
    let preparing = rollout.state == "preparing";
    approver.then(|| {
        view! {
            <div class="actions" data-test="rollout-exits">
                {preparing.then(|| view! {
                    <ActionForm action=cancel attr:class="inline">
                        <input type="hidden" name="id" value=id />
                        <button type="submit" data-test="cancel-rollout" title="Abort on every shadow now">"Cancel rollout"</button>
                    </ActionForm>
                })}
                {(!waiting.is_empty()).then(|| view! { <span class="muted">"Waiting for the commit of: "</span> })}
                {waiting.into_iter().map(|shadow| view! {
                    <ActionForm action=release attr:class="inline">
                        <input type="hidden" name="id" value=id />
                        <input type="hidden" name="shadow" value=shadow.clone() />
                        <button type="submit" data-test="release-shadow" data-shadow=shadow.clone() title="Stop waiting for this shadow; it stays drifted until reconciled">
                            {format!("Release {shadow}")}
                        </button>
                    </ActionForm>
                }).collect_view()}
            </div>
        }
    })
}
