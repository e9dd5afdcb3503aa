//! Changes: the list, and one change with its diff, review and rollout.

use crate::{
    api::{ApproveChange, RebaseChange, RejectChange, RolloutChange, SubmitChange, change, change_diff, change_rollout, changes},
    components::{
        ActionError, ErrorBox, ShortHash, StateBadge,
        diff::PagedDiff,
        error_text,
        layout::{Layout, use_me},
        live::LiveFeed,
        when,
    },
    pages::{config::edit_href, rollouts::RolloutShadows},
};
use domain::{
    Role,
    api::{ChangeState, ChangeView, RolloutView},
};
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::{use_params_map, use_query_map};

const FILTERS: [(&str, &str); 7] = [
    ("", "All"),
    ("draft", "Drafts"),
    ("submitted", "Submitted"),
    ("approved", "Approved"),
    ("rolled_out", "Rolled out"),
    ("rejected", "Rejected"),
    ("superseded", "Superseded"),
];

#[component]
pub fn ChangesPage() -> impl IntoView {
    let query = use_query_map();
    let key = move || {
        let q = query.read();
        (q.get("state"), q.get("before").and_then(|b| b.parse::<i64>().ok()))
    };
    let data = crate::resource(key, |(state, before)| changes(state, before));
    view! {
        <Title text="Changes · etc-shadow" />
        <Layout title="Changes">
            <div class="toolbar filters" data-test="change-filters">
                {FILTERS.into_iter().map(|(value, label)| {
                    let href = if value.is_empty() { "/changes".to_string() } else { format!("/changes?state={value}") };
                    let active = move || key().0.unwrap_or_default() == value;
                    view! { <a href=href class:active=active>{label}</a> }
                }).collect_view()}
                <span class="spacer"></span>
                <a class="button primary" href="/edit">"New change"</a>
            </div>
            <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match data.await {
                        Err(err) => view! { <ErrorBox message=error_text(&err) /> }.into_any(),
                        Ok(page) if page.items.is_empty() => view! { <p class="muted">"No changes here."</p> }.into_any(),
                        Ok(page) => {
                            let state = key().0.unwrap_or_default();
                            view! {
                                <table class="table" data-test="change-table">
                                    <thead><tr><th>"#"</th><th>"Message"</th><th>"State"</th><th>"Author"</th><th>"Base"</th><th>"Entries"</th><th>"Updated"</th></tr></thead>
                                    <tbody>
                                        {page.items.iter().map(|c| view! {
                                            <tr data-test="change-row">
                                                <td><a href=format!("/changes/{}", c.id)>{format!("#{}", c.id)}</a></td>
                                                <td><a href=format!("/changes/{}", c.id)>{c.message.clone()}</a></td>
                                                <td><StateBadge state=c.state.as_str() /></td>
                                                <td>{c.author.clone()}</td>
                                                <td>{format!("#{}", c.base_revision)}</td>
                                                <td>{c.entry_count}</td>
                                                <td>{when(&c.updated_at)}</td>
                                            </tr>
                                        }).collect_view()}
                                    </tbody>
                                </table>
                                {page.next.map(|next| view! { <a class="button" href=format!("/changes?state={state}&before={next}")>"Older"</a> })}
                            }.into_any()
                        }
                    }
                })}
            </Suspense>
        </Layout>
    }
}

/// The review actions, shown by role and state; the server checks everything again.
#[derive(Clone, Copy)]
struct Actions {
    submit: ServerAction<SubmitChange>,
    approve: ServerAction<ApproveChange>,
    reject: ServerAction<RejectChange>,
    rebase: ServerAction<RebaseChange>,
    rollout: ServerAction<RolloutChange>,
}

impl Actions {
    fn new() -> Self {
        Actions {
            submit: ServerAction::new(),
            approve: ServerAction::new(),
            reject: ServerAction::new(),
            rebase: ServerAction::new(),
            rollout: ServerAction::new(),
        }
    }

    fn version(&self) -> usize {
        self.submit.version().get()
            + self.approve.version().get()
            + self.reject.version().get()
            + self.rebase.version().get()
            + self.rollout.version().get()
    }

    fn failure(&self) -> Option<String> {
        let errors = [
            self.submit.value().get().and_then(|r| r.err()),
            self.approve.value().get().and_then(|r| r.err()),
            self.reject.value().get().and_then(|r| r.err()),
            self.rebase.value().get().and_then(|r| r.err()),
            self.rollout.value().get().and_then(|r| r.err()),
        ];
        errors.into_iter().flatten().next().map(|e| error_text(&e))
    }
}

#[component]
pub fn ChangePage() -> impl IntoView {
    let params = use_params_map();
    let id = move || params.read().get("id").and_then(|n| n.parse::<i64>().ok()).unwrap_or(-1);
    let actions = Actions::new();
    let feed = LiveFeed::open();
    // The change and its rollout are read again after every action and whenever a rollout
    // starts, decides or ends (the event stream says when).
    let data = crate::resource(
        move || (id(), actions.version(), feed.milestones()),
        |(id, _, _)| async move {
            let head = change(id).await?;
            let diff = change_diff(id, None).await?;
            Ok::<_, ServerFnError>((head, diff))
        },
    );
    let latest = crate::resource(
        move || (id(), actions.version(), feed.milestones()),
        |(id, _, _)| change_rollout(id),
    );
    // Made here, outside the page's Suspend, so a page loaded directly hydrates it in order.
    let validate = RwSignal::new(false);
    let plan = crate::resource(
        move || (id(), validate.get(), actions.version()),
        |(id, validate, _)| crate::api::change_plan(id, validate),
    );
    view! {
        <Title text="Change · etc-shadow" />
        <Layout title="Change">
            {move || actions.failure().map(|message| view! { <ActionError message /> })}
            <p class="muted small live-flag" data-test="live-flag" data-live=move || feed.connected.get().to_string()>
                {move || if feed.connected.get() { "● Rollout progress streams live on this page." } else { "" }}
            </p>
            <Transition fallback=|| ()>
                {move || Suspend::new(async move {
                    latest.await.ok().flatten().map(|r| view! { <RolloutProgress rollout=r feed /> })
                })}
            </Transition>
            <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match data.await {
                        Err(err) => view! { <ErrorBox message=error_text(&err) /> }.into_any(),
                        Ok((head, diff)) => {
                            let view = head.change.clone();
                            let open = view.summary.state.is_open();
                            let change_id = view.summary.id;
                            view! {
                                <ChangeHeader change=view.clone() entries_total=head.entries_total actions />
                                {open.then(|| view! { <PlanSection plan validate /> })}
                                <h2>"Diff against revision #" {view.summary.base_revision}</h2>
                                <PagedDiff first=diff change_id />
                            }.into_any()
                        }
                    }
                })}
            </Transition>
        </Layout>
    }
}

/// The change's latest rollout: its outcome, or while it runs, what it waits for; each
/// shadow's steps stream in live.
#[component]
fn RolloutProgress(rollout: RolloutView, feed: LiveFeed) -> impl IntoView {
    let r = rollout.clone();
    let waiting: Vec<String> = r
        .shadows
        .iter()
        // The phases still in flight (see `domain::rollout::Phase::in_flight`).
        .filter(|s| domain::rollout::Phase::parse(&s.phase).is_some_and(domain::rollout::Phase::in_flight))
        .map(|s| s.name.clone())
        .collect();
    let (class, headline) = match r.state.as_str() {
        "applied" => (
            "success-box",
            format!(
                "Rollout #{} applied: revision #{} is current, proven by every shadow's receipt; root ",
                r.id, r.revision
            ),
        ),
        "preparing" | "committing" => (
            "info-box",
            format!("Rollout #{} {}: waiting for {}; target root ", r.id, r.state, waiting.join(", ")),
        ),
        state => (
            "error-box",
            format!("Rollout #{} {state}: {} ", r.id, r.error.clone().unwrap_or_default()),
        ),
    };
    view! {
        <section data-test="rollout-progress" data-rollout=r.id>
            <div class=class data-test="rollout-result" data-state=r.state.clone()>
                {headline}
                <ShortHash hash=r.root.clone() />
                " " <a href=format!("/rollouts/{}", r.id)>"details"</a>
            </div>
            <RolloutShadows rollout feed />
        </section>
    }
}

#[component]
fn ChangeHeader(change: ChangeView, entries_total: usize, actions: Actions) -> impl IntoView {
    let me = use_me();
    let s = change.summary.clone();
    let id = s.id;
    let is_author = me.as_ref().is_some_and(|m| m.username == s.author);
    let role = me.as_ref().map(|m| m.role).unwrap_or(Role::Viewer);
    let open = s.state.is_open();
    let stale = open && change.current_revision != s.base_revision;
    let can_submit = is_author && s.state == ChangeState::Draft && role.allows(Role::Editor);
    let can_review = !is_author && role.allows(Role::Approver) && matches!(s.state, ChangeState::Submitted | ChangeState::Approved);
    let has_valid_approval = change.approvals.iter().any(|a| a.valid);
    let can_rollout = role.allows(Role::Approver) && s.state == ChangeState::Approved && has_valid_approval && !stale;
    let can_edit = is_author && open && role.allows(Role::Editor);
    view! {
        <section class="card change-header" data-test="change-header" data-state=s.state.as_str()>
            <div class="toolbar">
                <h2 data-test="change-title">{format!("#{} {}", s.id, s.message)}</h2>
                <StateBadge state=s.state.as_str() />
            </div>
            <dl>
                <dt>"Author"</dt><dd data-test="change-author">{s.author.clone()}</dd>
                <dt>"Base"</dt><dd>{format!("revision #{}", s.base_revision)}</dd>
                <dt>"Content hash"</dt><dd><ShortHash hash=s.content_hash.clone() /></dd>
                <dt>"Updated"</dt><dd>{when(&s.updated_at)}</dd>
                {s.revision.map(|r| view! { <dt>"Became"</dt><dd><a href=format!("/revisions/{r}") data-test="became-revision">{format!("revision #{r}")}</a></dd> })}
            </dl>
            {stale.then(|| view! {
                <div class="warning-box" data-test="stale-warning">
                    {format!("The base revision #{} is no longer current (#{} is). Rebase before rolling out.", s.base_revision, change.current_revision)}
                </div>
            })}
            {change.reject_reason.clone().map(|reason| view! {
                <div class="warning-box" data-test="rejection">{format!("Rejected by {}: {reason}", change.rejected_by.clone().unwrap_or_default())}</div>
            })}
            <h3>"Entries"</h3>
            <ul class="plain" data-test="change-entries">
                {change.entries.iter().map(|e| {
                    let path = e.entry.path.clone();
                    view! {
                        <li>
                            <span class=format!("op op-{}", e.op)>{e.op.clone()}</span>
                            " " <code>{path.clone()}</code>
                            <span class="muted">{format!(" {} · {}", e.entry.format, e.entry.mode)}</span>
                            {(can_edit && e.op == "put").then(|| view! { " " <a href=edit_href(&path, Some(id)) data-test="edit-change-entry">"edit"</a> })}
                        </li>
                    }
                }).collect_view()}
            </ul>
            {(entries_total > change.entries.len()).then(|| view! {
                <p class="muted" data-test="more-entries">
                    {format!("… and {} more entries: the diff below shows each one that changes something.", entries_total - change.entries.len())}
                </p>
            })}
            {can_edit.then(|| view! { <a class="button" href=format!("/edit?change={id}") data-test="add-entry">"Add an entry"</a> })}
            <h3>"Approvals"</h3>
            {if change.approvals.is_empty() {
                view! { <p class="muted" data-test="no-approvals">"None yet. Someone other than the author must approve."</p> }.into_any()
            } else {
                view! {
                    <ul class="plain" data-test="approvals">
                        {change.approvals.iter().map(|a| view! {
                            <li data-test="approval" data-valid=a.valid.to_string()>
                                {format!("{} at {} ", a.approver, when(&a.created_at))}
                                {a.shadows.as_ref().map(|set| view! {
                                    <span class="muted small" data-test="approval-shadows">
                                        {if set.is_empty() { "for no shadow (the primary only) ".to_string() } else { format!("for {} ", set.join(", ")) }}
                                    </span>
                                })}
                                {if a.valid {
                                    view! { <span class="badge badge-approved">"valid"</span> }.into_any()
                                } else {
                                    view! { <span class="badge badge-rejected" title="The change was edited after this approval">"voided by an edit"</span> }.into_any()
                                }}
                            </li>
                        }).collect_view()}
                    </ul>
                }.into_any()
            }}
            {(!change.staged_ahead.is_empty()).then(|| view! {
                <p class="muted small" data-test="staged-ahead" title="Their prepare only proves and takes the staged tree: rolling out pays for the decision and the switch">
                    {format!("Staged ahead on {}.", change.staged_ahead.join(", "))}
                </p>
            })}
            <div class="actions" data-test="change-actions">
                {can_submit.then(|| view! {
                    <ActionForm action=actions.submit attr:class="inline">
                        <input type="hidden" name="id" value=id />
                        <button type="submit" class="primary" data-test="submit">"Submit for review"</button>
                    </ActionForm>
                })}
                {(can_edit && stale).then(|| view! {
                    <ActionForm action=actions.rebase attr:class="inline">
                        <input type="hidden" name="id" value=id />
                        <button type="submit" data-test="rebase">"Rebase onto current"</button>
                    </ActionForm>
                })}
                {can_review.then(|| view! {
                    <ActionForm action=actions.approve attr:class="inline">
                        <input type="hidden" name="id" value=id />
                        <button type="submit" class="primary" data-test="approve">"Approve"</button>
                    </ActionForm>
                    <ActionForm action=actions.reject attr:class="inline reject-form">
                        <input type="hidden" name="id" value=id />
                        <input name="reason" placeholder="Reason" required data-test="reject-reason" />
                        <button type="submit" class="danger" data-test="reject">"Reject"</button>
                    </ActionForm>
                })}
                {can_rollout.then(|| view! {
                    <ActionForm action=actions.rollout attr:class="inline">
                        <input type="hidden" name="id" value=id />
                        <button type="submit" class="primary" data-test="rollout">"Roll out"</button>
                    </ActionForm>
                })}
                {(is_author && matches!(s.state, ChangeState::Submitted | ChangeState::Approved)).then(|| view! {
                    <p class="muted" data-test="own-change-note">"You wrote this change, so someone else must approve it."</p>
                })}
            </div>
        </section>
    }
}

/// The rollout plan of an open change: every shadow it would reach, what each would do per
/// entry, and which would refuse; approvers can run the nodes' validate hooks as a dry run.
#[component]
fn PlanSection(plan: Resource<Result<domain::api::RolloutPlan, ServerFnError>, crate::Json>, validate: RwSignal<bool>) -> impl IntoView {
    let approver = use_me().is_some_and(|m| m.role.allows(Role::Approver));
    view! {
        <section class="card" data-test="rollout-plan">
            <div class="toolbar">
                <h2>"Rollout plan"</h2>
                <span class="spacer"></span>
                {approver.then(|| view! {
                    <button type="button" data-test="plan-validate" on:click=move |_| validate.set(true)>"Run the validate hooks (dry run)"</button>
                })}
            </div>
            <Transition fallback=|| view! { <p class="muted">"Asking the shadows…"</p> }>
                {move || Suspend::new(async move {
                    match plan.await {
                        Err(err) => view! { <ErrorBox message=error_text(&err) /> }.into_any(),
                        Ok(plan) => view! { <PlanTable plan /> }.into_any(),
                    }
                })}
            </Transition>
        </section>
    }
}

#[component]
fn PlanTable(plan: domain::api::RolloutPlan) -> impl IntoView {
    if plan.shadows.is_empty() {
        return view! { <p class="muted">"No shadows are registered: only the primary would move."</p> }.into_any();
    }
    let refusing = plan.shadows.iter().filter(|s| s.refusal.is_some()).count();
    view! {
        {plan.stale_base.then(|| view! { <div class="error-box" data-test="plan-stale">"The change is not based on the current revision: rebase it first."</div> })}
        <p class="muted" data-test="plan-summary" data-refusing=refusing.to_string() data-validated=plan.validated.to_string()>
            {if refusing == 0 {
                format!("Revision #{} would reach {} shadows; none would refuse{}.", plan.revision, plan.shadows.len(), if plan.validated { ", their validate hooks included" } else { " (validate hooks not run)" })
            } else {
                format!("{refusing} of {} shadows would refuse: the rollout would abort everywhere.", plan.shadows.len())
            }}
        </p>
        <table class="table" data-test="plan-shadows">
            <thead><tr><th>"Shadow"</th><th>"Status"</th><th>"Would"</th><th>"Per entry"</th></tr></thead>
            <tbody>
                {plan.shadows.into_iter().map(|s| {
                    let refuses = s.refusal.is_some();
                    view! {
                        <tr data-test="plan-shadow" data-name=s.name.clone() data-refuses=refuses.to_string()>
                            <td><a href=format!("/shadows/{}", s.name)>{s.name.clone()}</a></td>
                            <td><StateBadge state=s.status.clone() /></td>
                            <td>
                                {match s.refusal.clone() {
                                    Some(why) => view! { <span class="badge badge-failed">"refuse"</span> <div class="small" data-test="plan-refusal">{why}</div> }.into_any(),
                                    None => view! { <span class="badge badge-applied">"accept"</span> }.into_any(),
                                }}
                                {s.validate.clone().map(|run| view! { <crate::components::HookOutput run /> })}
                            </td>
                            <td>
                                {if s.actions.is_empty() {
                                    view! { <span class="muted small">"nothing changes"</span> }.into_any()
                                } else {
                                    view! {
                                        <ul class="plain small">
                                            {s.actions.into_iter().map(|a| view! {
                                                <li data-test="plan-action" data-action=a.action.clone()>
                                                    <span class=format!("badge badge-{}", a.action)>{a.action.clone()}</span> " " <code>{a.path.clone()}</code>
                                                    {a.policy.map(|p| view! { <span class="muted">{format!(" {p}")}</span> })}
                                                </li>
                                            }).collect_view()}
                                        </ul>
                                    }.into_any()
                                }}
                            </td>
                        </tr>
                    }
                }).collect_view()}
            </tbody>
        </table>
    }.into_any()
}
