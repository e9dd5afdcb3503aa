//! Drills: the evidence that each shadow could take over — every drill with its verdict,
//! who asked and when; one drill with each step (parity, validate on the live tree, the
//! health probe with its latencies), its output and time.

use crate::{
    api::{drill, drills},
    components::{ErrorBox, HookOutput, ShortHash, error_text, layout::Layout, when},
};
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::{use_params_map, use_query_map};

/// A drill's verdict as a badge.
#[component]
pub fn Verdict(#[prop(into)] verdict: String) -> impl IntoView {
    let label = if verdict == "passed" {
        "ready to take over"
    } else {
        "could not take over"
    };
    view! { <span class=format!("badge badge-{verdict}") data-test="drill-verdict" data-verdict=verdict.clone()>{label}</span> }
}

#[component]
pub fn DrillsPage() -> impl IntoView {
    let query = use_query_map();
    let shadow = move || query.read().get("shadow");
    let data = crate::resource(shadow, |shadow| drills(shadow, None));
    view! {
        <Title text="Drills · etc-shadow" />
        <Layout title="Drills">
            <p class="muted">
                "A drill proves that a shadow could take over now: it serves the current revision (content and policy), "
                "its node's validate hook accepts its live tree, and its health probe answers. Run one from a shadow's page."
            </p>
            <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match data.await {
                        Err(err) => view! { <ErrorBox message=error_text(&err) /> }.into_any(),
                        Ok(page) if page.items.is_empty() => view! { <p class="muted" data-test="no-drills">"No drills yet."</p> }.into_any(),
                        Ok(page) => view! {
                            <table class="table" data-test="drill-table">
                                <thead><tr><th>"Drill"</th><th>"Shadow"</th><th>"Verdict"</th><th>"Steps"</th><th>"Revision"</th><th>"By"</th><th>"When"</th></tr></thead>
                                <tbody>
                                    {page.items.into_iter().map(|d| {
                                        let steps = d.steps.iter().map(|s| format!("{} {}", s.name, s.status)).collect::<Vec<_>>().join(", ");
                                        view! {
                                            <tr data-test="drill-row" data-shadow=d.shadow.clone() data-verdict=d.verdict.clone()>
                                                <td><a href=format!("/drills/{}", d.id) data-test="drill-link">{format!("#{}", d.id)}</a></td>
                                                <td><a href=format!("/shadows/{}", d.shadow)>{d.shadow.clone()}</a></td>
                                                <td><Verdict verdict=d.verdict.clone() /></td>
                                                <td class="muted small">{steps}</td>
                                                <td>{format!("#{}", d.revision)}</td>
                                                <td>{d.requested_by.clone()}</td>
                                                <td>{when(&d.finished_at)}</td>
                                            </tr>
                                        }
                                    }).collect_view()}
                                </tbody>
                            </table>
                        }.into_any(),
                    }
                })}
            </Transition>
        </Layout>
    }
}

#[component]
pub fn DrillPage() -> impl IntoView {
    let params = use_params_map();
    let id = move || params.read().get("id").and_then(|n| n.parse::<i64>().ok()).unwrap_or(-1);
    let data = crate::resource(id, drill);
    view! {
        <Title text="Drill · etc-shadow" />
        <Layout title="Drill">
            <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match data.await {
                        Err(err) => view! { <ErrorBox message=error_text(&err) /> }.into_any(),
                        Ok(d) => view! { <DrillEvidence drill=d /> }.into_any(),
                    }
                })}
            </Suspense>
        </Layout>
    }
}

/// One drill's evidence: who, when, each step with its result, output and time.
#[component]
pub fn DrillEvidence(drill: domain::api::DrillView) -> impl IntoView {
    view! {
        <section class="card" data-test="drill" data-verdict=drill.verdict.clone()>
            <div class="toolbar">
                <h2>{format!("Drill #{} on {}", drill.id, drill.shadow)}</h2>
                <Verdict verdict=drill.verdict.clone() />
            </div>
            <dl>
                <dt>"Shadow"</dt><dd><a href=format!("/shadows/{}", drill.shadow)>{drill.shadow.clone()}</a></dd>
                <dt>"Asked by"</dt><dd>{drill.requested_by.clone()}</dd>
                <dt>"Started"</dt><dd>{when(&drill.started_at)}</dd>
                <dt>"Finished"</dt><dd>{when(&drill.finished_at)}</dd>
                <dt>"Revision"</dt><dd>{format!("#{} ", drill.revision)} <ShortHash hash=drill.expected_root.clone() /></dd>
                <dt>"Served root"</dt><dd>{drill.observed_root.clone().map(|r| view! { <ShortHash hash=r /> })}</dd>
            </dl>
        </section>
        <table class="table" data-test="drill-steps">
            <thead><tr><th>"Step"</th><th>"Result"</th><th>"What was found"</th><th>"Latency"</th></tr></thead>
            <tbody>
                {drill.steps.into_iter().map(|s| {
                    let latency = match (s.p50_ms, s.p99_ms, s.requests) {
                        (Some(p50), Some(p99), Some(n)) => format!("{n} probes: p50 {p50:.1} ms, p99 {p99:.1} ms"),
                        _ => s.run.as_ref().map(|r| format!("{} ms", r.duration_ms)).unwrap_or_default(),
                    };
                    view! {
                        <tr data-test="drill-step" data-step=s.name.clone() data-status=s.status.clone()>
                            <td><strong>{s.name.clone()}</strong></td>
                            <td><span class=format!("badge badge-{}", s.status)>{s.status.clone()}</span></td>
                            <td>{s.detail.clone()} {s.run.map(|run| view! { <HookOutput run /> })}</td>
                            <td class="muted small">{latency}</td>
                        </tr>
                    }
                }).collect_view()}
            </tbody>
        </table>
    }
}
