//! Shadows: every replica with its status, revision, root and last contact; checks and
//! reconciles; registration and removal for administrators; one shadow with its diff
//! against the primary and its check history.

use crate::{
    api::{
        AddShadow, CHECKS_PER_PAGE, CheckShadow, ReconcileShadow, RemoveShadow, RunDrill, shadow_checks, shadow_detail, shadow_diff,
        shadows,
    },
    components::{
        ActionError, ErrorBox, ShortHash, StateBadge,
        diff::DiffViewer,
        error_text,
        layout::{Layout, use_me},
        when,
    },
};
use domain::Role;
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::{use_params_map, use_query_map};

#[component]
pub fn ShadowsPage() -> impl IntoView {
    let add = ServerAction::<AddShadow>::new();
    let remove = ServerAction::<RemoveShadow>::new();
    let check = ServerAction::<CheckShadow>::new();
    let reconcile = ServerAction::<ReconcileShadow>::new();
    let drill = ServerAction::<RunDrill>::new();
    let version =
        move || add.version().get() + remove.version().get() + check.version().get() + reconcile.version().get() + drill.version().get();
    let data = crate::resource(version, |_| shadows());
    let failure = move || {
        [
            add.value().get().and_then(|r| r.err()),
            remove.value().get().and_then(|r| r.err()),
            check.value().get().and_then(|r| r.err()),
            reconcile.value().get().and_then(|r| r.err()),
            drill.value().get().and_then(|r| r.err()),
        ]
        .into_iter()
        .flatten()
        .next()
        .map(|e| error_text(&e))
    };
    view! {
        <Title text="Shadows · etc-shadow" />
        <Layout title="Shadows">
            {move || failure().map(|message| view! { <ActionError message test="shadow-error" /> })}
            {move || add.value().get().and_then(|r| r.ok()).flatten().map(|token| view! {
                <div class="success-box" data-test="agent-token">
                    "Shadow registered. Its agent token, shown only now — put it in the agent's --token-file: "
                    <code data-test="agent-token-secret">{token}</code>
                </div>
            })}
            {move || drill.value().get().and_then(|r| r.ok()).map(|d| view! {
                <div class=if d.verdict == "passed" { "success-box" } else { "error-box" } data-test="drill-result" data-verdict=d.verdict.clone()>
                    {format!("Drill #{} on {}: {}", d.id, d.shadow, if d.verdict == "passed" { "ready to take over" } else { "could not take over" })}
                    " " <a href=format!("/drills/{}", d.id)>"evidence"</a>
                </div>
            })}
            {move || reconcile.value().get().and_then(|r| r.ok()).map(|r| view! {
                <div class="success-box" data-test="reconcile-result">
                    {format!("Reconcile rollout #{} {}", r.id, r.state)} " " <a href=format!("/rollouts/{}", r.id)>"details"</a>
                </div>
            })}
            <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    let me = use_me();
                    let admin = me.as_ref().is_some_and(|m| m.role.allows(Role::Admin));
                    let approver = me.as_ref().is_some_and(|m| m.role.allows(Role::Approver));
                    match data.await {
                        Err(err) => view! { <ErrorBox message=error_text(&err) /> }.into_any(),
                        Ok(list) if list.is_empty() => view! { <p class="muted" data-test="no-shadows">"No shadows registered. Rollouts only update the primary."</p> }.into_any(),
                        Ok(list) => view! {
                            <table class="table" data-test="shadow-table">
                                <thead><tr><th>"Name"</th><th>"Driver"</th><th>"Status"</th><th>"Revision"</th><th>"Observed root"</th><th>"Last contact"</th><th>"Last in sync"</th><th>"Last drill"</th><th></th></tr></thead>
                                <tbody>
                                    {list.into_iter().map(|s| {
                                        let name = s.name.clone();
                                        let (reconcile_name, remove_name, drill_name) = (name.clone(), name.clone(), name.clone());
                                        let target = shadow_target(&s);
                                        view! {
                                            <tr data-test="shadow-row" data-name=s.name.clone() data-status=s.status.clone()>
                                                <td><a href=format!("/shadows/{}", s.name) data-test="shadow-link"><strong>{s.name.clone()}</strong></a><div class="muted small">{target}</div></td>
                                                <td>
                                                    {s.driver.clone()}
                                                    {s.tls_pin.clone().map(|pin| {
                                                        let title = format!("certificate SHA-256 {pin}");
                                                        view! { <div class="muted small" data-test="tls-pin" title=title>"TLS pinned " <ShortHash hash=pin /></div> }
                                                    })}
                                                </td>
                                                <td>
                                                    <span class=format!("badge badge-{}", s.status)>{s.status.replace('_', " ")}</span>
                                                    {s.last_error.clone().map(|e| view! { <div class="muted small">{e}</div> })}
                                                </td>
                                                <td>{s.observed_revision.map(|r| format!("#{r}")).unwrap_or_else(|| "—".into())}</td>
                                                <td>{s.observed_root.clone().map(|r| view! { <ShortHash hash=r /> })}</td>
                                                <td>{s.last_contact_at.as_deref().map(when).unwrap_or_else(|| "never".into())}</td>
                                                <td>{s.last_in_sync_at.as_deref().map(when).unwrap_or_else(|| "never".into())}</td>
                                                <td><LastDrill last=s.last_drill.clone() /></td>
                                                <td class="row-actions">
                                                    <ActionForm action=check attr:class="inline">
                                                        <input type="hidden" name="name" value=name.clone() />
                                                        <button type="submit" data-test="check-shadow">"Check"</button>
                                                    </ActionForm>
                                                                    {approver.then(|| view! {
                                                        <ActionForm action=drill attr:class="inline">
                                                            <input type="hidden" name="name" value=drill_name.clone() />
                                                            <button type="submit" data-test="drill-shadow">"Drill"</button>
                                                        </ActionForm>
                                                    })}
                                                    {approver.then(|| view! {
                                                        <ActionForm action=reconcile attr:class="inline">
                                                            <input type="hidden" name="name" value=reconcile_name />
                                                            <button type="submit" data-test="reconcile-shadow">"Reconcile"</button>
                                                        </ActionForm>
                                                    })}
                                                    {admin.then(|| view! {
                                                        <ActionForm action=remove attr:class="inline">
                                                            <input type="hidden" name="name" value=remove_name />
                                                            <button type="submit" class="danger" data-test="remove-shadow">"Remove"</button>
                                                        </ActionForm>
                                                    })}
                                                </td>
                                            </tr>
                                        }
                                    }).collect_view()}
                                </tbody>
                            </table>
                        }.into_any(),
                    }
                })}
            </Transition>
            {move || use_me().is_some_and(|m| m.role.allows(Role::Admin)).then(|| view! {
                <section class="card" data-test="add-shadow">
                    <h2>"Register a shadow"</h2>
                    <ActionForm action=add attr:class="fields">
                        <label>"Name" <input name="name" required placeholder="dr-site" data-test="shadow-name" /></label>
                        <label>"Driver"
                            <select name="driver" data-test="shadow-driver">
                                <option value="agent">"agent"</option>
                                <option value="directory">"directory"</option>
                                <option value="etcd">"etcd"</option>
                            </select>
                        </label>
                        <label class="grow">"Agent URL" <input name="url" placeholder="https://10.0.0.5:7300" data-test="shadow-url" /></label>
                        <label>"Agent token (empty: generate one)" <input name="token" type="password" autocomplete="off" /></label>
                        <label class="grow">"TLS pin (https)" <input name="tls_pin" placeholder="SHA-256 fingerprint the agent logs" autocomplete="off" /></label>
                        <label class="grow">"Directory path" <input name="path" placeholder="/mnt/backup/etc/myservice" /></label>
                        <label class="grow">"etcd endpoints" <input name="etcd[endpoints]" placeholder="http://10.0.0.5:2379,http://10.0.0.6:2379" data-test="shadow-endpoints" /></label>
                        <label>"etcd key prefix" <input name="etcd[prefix]" placeholder="/config/myservice/" data-test="shadow-prefix" /></label>
                        <label>"etcd user (optional)" <input name="etcd[user]" autocomplete="off" /></label>
                        <label>"etcd password (https only)" <input name="etcd[password]" type="password" autocomplete="off" /></label>
                        <label class="grow">"etcd CA certificate (PEM, for https)" <textarea name="etcd[ca]" rows="2" placeholder="-----BEGIN CERTIFICATE-----"></textarea></label>
                        <button type="submit" class="primary" data-test="shadow-register">"Register"</button>
                    </ActionForm>
                    <p class="muted">"A new shadow is pending until a reconcile brings it to the current revision."</p>
                </section>
            })}
        </Layout>
    }
}

/// Where a shadow is: an agent's URL, a directory's path, an etcd shadow's endpoints and
/// key prefix.
fn shadow_target(s: &domain::api::ShadowView) -> String {
    match (&s.url, &s.prefix) {
        (Some(endpoints), Some(prefix)) => format!("{endpoints} {prefix}"),
        (url, _) => url.clone().or(s.path.clone()).unwrap_or_default(),
    }
}

/// Whether a shadow could take over, by its latest drill.
#[component]
fn LastDrill(last: Option<domain::api::DrillSummary>) -> impl IntoView {
    match last {
        None => view! { <span class="muted small" data-test="last-drill">"never drilled"</span> }.into_any(),
        Some(d) => {
            let age = domain::api::age_words(d.age_seconds);
            let words = if d.verdict == "passed" {
                format!("ready to take over: proven {age}")
            } else {
                format!("could not take over: drill failed {age}")
            };
            view! {
                <a href=format!("/drills/{}", d.id) class=format!("small drill-{}", d.verdict) data-test="last-drill" data-verdict=d.verdict.clone() title=when(&d.finished_at)>{words}</a>
            }
            .into_any()
        }
    }
}

/// One shadow: its state, the visual diff of the primary against it, its check history.
#[component]
pub fn ShadowPage() -> impl IntoView {
    let params = use_params_map();
    let query = use_query_map();
    let name = move || params.read().get("name").unwrap_or_default();
    let before = move || query.read().get("checks_before").and_then(|b| b.parse::<i64>().ok());
    let check = ServerAction::<CheckShadow>::new();
    let run_drill = ServerAction::<RunDrill>::new();
    let data = crate::resource(
        move || (name(), check.version().get(), run_drill.version().get()),
        |(name, _, _)| shadow_detail(name),
    );
    let history = crate::resource(
        move || (name(), before(), check.version().get()),
        |(name, before, _)| shadow_checks(name, before),
    );
    let diff = crate::resource(move || (name(), check.version().get()), |(name, _)| shadow_diff(name));
    view! {
        <Title text="Shadow · etc-shadow" />
        <Layout title="Shadow">
            {move || run_drill.value().get().and_then(|r| r.err()).map(|e| view! { <ActionError message=error_text(&e) test="drill-error" /> })}
            {move || run_drill.value().get().and_then(|r| r.ok()).map(|drill| view! {
                <crate::pages::drills::DrillEvidence drill />
            })}
            <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match data.await {
                        Err(err) => view! { <ErrorBox message=error_text(&err) /> }.into_any(),
                        Ok(s) => {
                            let incidents_href = format!("/incidents?status=&shadow={}", s.name);
                            let drills_href = format!("/drills?shadow={}", s.name);
                            let check_name = s.name.clone();
                            let drill_name = s.name.clone();
                            let approver = use_me().is_some_and(|m| m.role.allows(Role::Approver));
                            view! {
                            <section class="card" data-test="shadow" data-status=s.status.clone()>
                                <div class="toolbar">
                                    <h2>{s.name.clone()}</h2>
                                    <StateBadge state=s.status.clone() />
                                    <span class="spacer"></span>
                                    <ActionForm action=check attr:class="inline">
                                        <input type="hidden" name="name" value=check_name />
                                        <button type="submit" data-test="check-shadow">"Check now"</button>
                                    </ActionForm>
                                </div>
                                <dl>
                                    <dt>"Driver"</dt><dd>{s.driver.clone()} " " <code>{shadow_target(&s)}</code></dd>
                                    <dt>"Revision"</dt><dd>{s.observed_revision.map(|r| format!("#{r}")).unwrap_or_else(|| "—".into())}</dd>
                                    <dt>"Observed root"</dt><dd>{s.observed_root.clone().map(|r| view! { <ShortHash hash=r /> })}</dd>
                                    <dt>"Last contact"</dt><dd>{s.last_contact_at.as_deref().map(when).unwrap_or_else(|| "never".into())}</dd>
                                    <dt>"Last in sync"</dt><dd>{s.last_in_sync_at.as_deref().map(when).unwrap_or_else(|| "never".into())}</dd>
                                    {s.last_error.clone().map(|e| view! { <dt>"Last error"</dt><dd class="muted">{e}</dd> })}
                                    <dt>"Last drill"</dt><dd><LastDrill last=s.last_drill.clone() /></dd>
                                </dl>
                                <a href=incidents_href>"Its incidents"</a> " · " <a href=drills_href>"Its drills"</a>
                                {approver.then(|| view! {
                                    <ActionForm action=run_drill attr:class="inline fields">
                                        <input type="hidden" name="name" value=drill_name />
                                        <label>"Health probes" <input name="requests" type="number" min="1" max="1000" value="10" data-test="drill-requests" /></label>
                                        <button type="submit" class="primary" data-test="run-drill">"Run a drill"</button>
                                    </ActionForm>
                                })}
                            </section>
                        }.into_any()
                        }
                    }
                })}
            </Transition>
            <h2>"Check history"</h2>
            <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match history.await {
                        Err(err) => view! { <ErrorBox message=error_text(&err) /> }.into_any(),
                        Ok((page, series)) => {
                            let older = page.next.map(|next| format!("/shadows/{}?checks_before={next}", name()));
                            let newest = before().map(|_| format!("/shadows/{}", name()));
                            view! {
                            <CheckChart series />
                            <table class="table" data-test="check-history">
                                <thead><tr><th>"When"</th><th>"Why"</th><th>"Status"</th><th>"Observed root"</th><th>"Took"</th><th>"Error"</th></tr></thead>
                                <tbody>
                                    {page.items.into_iter().map(|c| view! {
                                        <tr data-test="check-row" data-status=c.status.clone() data-trigger=c.trigger.clone()>
                                            <td>{when(&c.at)}</td>
                                            <td>{c.trigger.clone()}</td>
                                            <td><StateBadge state=c.status.clone() /></td>
                                            <td>{c.observed_root.clone().map(|r| view! { <ShortHash hash=r /> })}</td>
                                            <td>{format!("{} ms", c.latency_ms)}</td>
                                            <td class="muted">{c.error.clone()}</td>
                                        </tr>
                                    }).collect_view()}
                                </tbody>
                            </table>
                            <div class="toolbar">
                                {newest.map(|href| view! { <a class="button" href=href data-test="checks-newest">"Newest checks"</a> })}
                                {older.map(|href| view! { <a class="button" href=href data-test="checks-older">{format!("Older than these {CHECKS_PER_PAGE}")}</a> })}
                            </div>
                            }.into_any()
                        }
                    }
                })}
            </Transition>
            <h2>"The primary against this shadow"</h2>
            <Transition fallback=|| view! { <p class="muted">"Reading the shadow…"</p> }>
                {move || Suspend::new(async move {
                    match diff.await {
                        Err(err) => view! { <ErrorBox message=error_text(&err) /> }.into_any(),
                        Ok(diff) if diff.entries.is_empty() => view! { <p class="muted" data-test="shadow-matches">"Identical: every entry, byte and mode, as the current revision says."</p> }.into_any(),
                        Ok(diff) => view! { <DiffViewer diff /> }.into_any(),
                    }
                })}
            </Transition>
        </Layout>
    }
}

/// The newest checks of a shadow as bars, oldest on the left: height for how long the check
/// took, color for the status it found. A small inline SVG, no script.
#[component]
fn CheckChart(series: Vec<domain::api::CheckPoint>) -> impl IntoView {
    const WIDTH: f64 = 600.0;
    const HEIGHT: f64 = 60.0;
    if series.is_empty() {
        return view! { <p class="muted" data-test="check-chart-empty">"No checks yet."</p> }.into_any();
    }
    let slowest = series.iter().map(|c| c.latency_ms).max().unwrap_or(1).max(1) as f64;
    let bar = WIDTH / series.len() as f64;
    let in_sync = series.iter().filter(|c| c.status == "in_sync").count();
    let count = series.len().to_string();
    let caption = format!(
        "The last {} checks: {} in sync, the slowest {} ms.",
        series.len(),
        in_sync,
        slowest as i64
    );
    view! {
        <figure class="check-chart" data-test="check-chart" data-checks=count>
            <svg viewBox=format!("0 0 {WIDTH} {HEIGHT}") preserveAspectRatio="none" role="img" aria-label=caption.clone()>
                {series.into_iter().enumerate().map(|(i, c)| {
                    let height = (c.latency_ms.max(0) as f64 / slowest * (HEIGHT - 4.0)).max(2.0);
                    view! {
                        <rect class=format!("check-bar check-{}", c.status) x=format!("{:.2}", i as f64 * bar) y=format!("{:.2}", HEIGHT - height)
                            width=format!("{:.2}", (bar - 0.5).max(0.5)) height=format!("{height:.2}")>
                            <title>{format!("{}: {} in {} ms", c.at, c.status, c.latency_ms)}</title>
                        </rect>
                    }
                }).collect_view()}
            </svg>
            <figcaption class="muted small">{caption}</figcaption>
        </figure>
    }
    .into_any()
}
