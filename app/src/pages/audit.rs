//! The audit log: filter, page, verify the chain, see the head hash.

use crate::{
    api::{AuditVerify, audit_head, audit_log},
    components::{ErrorBox, error_text, layout::Layout, when},
};
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::{components::Form, hooks::use_query_map};

#[component]
pub fn AuditPage() -> impl IntoView {
    let query = use_query_map();
    let filter = move || {
        let q = query.read();
        let text = |key: &str| q.get(key).filter(|v| !v.is_empty());
        (
            text("actor"),
            text("action"),
            text("target"),
            q.get("before").and_then(|b| b.parse::<i64>().ok()),
        )
    };
    let data = crate::resource(filter, |(actor, action, target, before)| audit_log(actor, action, target, before));
    let verify = ServerAction::<AuditVerify>::new();
    let head = crate::resource(move || verify.version().get(), |_| audit_head());
    let next_href = move |next: i64| {
        let (actor, action, target, _) = filter();
        format!(
            "/audit?actor={}&action={}&target={}&before={next}",
            actor.unwrap_or_default(),
            action.unwrap_or_default(),
            target.unwrap_or_default()
        )
    };
    view! {
        <Title text="Audit · etc-shadow" />
        <Layout title="Audit log">
            <section class="card audit-chain">
                <div class="toolbar">
                    <span>"Head: "</span>
                    <Suspense fallback=|| ()>
                        {move || Suspend::new(async move {
                            match head.await {
                                Ok(h) => view! { <code data-test="audit-head" title="hash of the newest row">{format!("#{} {}", h.seq, h.hash)}</code> }.into_any(),
                                Err(err) => view! { <ErrorBox message=error_text(&err) /> }.into_any(),
                            }
                        })}
                    </Suspense>
                    <span class="spacer"></span>
                    <ActionForm action=verify attr:class="inline">
                        <button type="submit" class="primary" data-test="verify-chain">"Verify chain"</button>
                    </ActionForm>
                </div>
                {move || verify.value().get().map(|result| match result {
                    Ok(v) => {
                        let anchors = v.anchors.clone();
                        let verdict = if v.intact {
                            view! { <div class="success-box" data-test="verify-result" data-intact="true">{format!("✓ {}", v.message)}</div> }.into_any()
                        } else {
                            view! { <div class="error-box" data-test="verify-result" data-intact="false">{format!("✗ {}", v.message)}</div> }.into_any()
                        };
                        view! {
                            {verdict}
                            {(!anchors.is_empty()).then(|| view! {
                                <p class="muted small">"The heads the shadows keep (sent with each rollout): a cut tail or a recomputed chain shows here."</p>
                                <ul class="anchors" data-test="audit-anchors">
                                    {anchors.into_iter().map(|a| view! {
                                        <li data-test="audit-anchor" data-shadow=a.shadow.clone() data-status=a.status.clone()>
                                            <strong>{a.shadow.clone()}</strong>{format!(": {} — {}", a.status, a.message)}
                                        </li>
                                    }).collect_view()}
                                </ul>
                            })}
                        }.into_any()
                    }
                    Err(err) => view! { <ErrorBox message=error_text(&err) /> }.into_any(),
                })}
            </section>
            <Form method="GET" action="/audit" attr:class="toolbar filters" attr:data-test="audit-filters">
                <input name="actor" placeholder="actor (exact)" prop:value=move || filter().0.unwrap_or_default() />
                <input name="action" placeholder="action contains" prop:value=move || filter().1.unwrap_or_default() data-test="audit-filter-action" />
                <input name="target" placeholder="target contains" prop:value=move || filter().2.unwrap_or_default() />
                <button type="submit" data-test="audit-filter-apply">"Filter"</button>
                <a href="/audit">"Clear"</a>
            </Form>
            <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match data.await {
                        Err(err) => view! { <ErrorBox message=error_text(&err) /> }.into_any(),
                        Ok(page) => view! {
                            <table class="table audit" data-test="audit-table">
                                <thead><tr><th>"#"</th><th>"When"</th><th>"Actor"</th><th>"Action"</th><th>"Target"</th><th>"Details"</th><th>"Hash"</th></tr></thead>
                                <tbody>
                                    {page.items.iter().map(|a| view! {
                                        <tr data-test="audit-row">
                                            <td>{a.seq}</td>
                                            <td>{when(&a.at)}</td>
                                            <td>{a.actor.clone()}</td>
                                            <td><code data-test="audit-action">{a.action.clone()}</code></td>
                                            <td>{a.target.clone()}</td>
                                            <td><code class="details">{a.details.to_string()}</code></td>
                                            <td><code class="hash" title=a.hash.clone()>{a.hash.chars().take(12).collect::<String>()}</code></td>
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
