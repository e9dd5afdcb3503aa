//! The primary configuration: entries of the current revision, one entry, and history.

use crate::{
    api::{RevealSecret as Reveal, entry, revision, revision_diff, revisions},
    components::{
        ActionError, ErrorBox, ShortHash,
        diff::DiffViewer,
        error_text,
        layout::{Layout, use_me},
        when,
    },
};
use domain::{Role, api::EntryView};
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::{use_params_map, use_query_map};

fn encode(path: &str) -> String {
    path.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'/' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Link to the editor for `path` (empty for a new entry).
pub fn edit_href(path: &str, change: Option<i64>) -> String {
    let mut href = format!("/edit?path={}", encode(path));
    if let Some(id) = change {
        href.push_str(&format!("&change={id}"));
    }
    href
}

fn can_edit() -> bool {
    use_me().is_some_and(|me| me.role.allows(Role::Editor))
}

fn can_reveal() -> bool {
    use_me().is_some_and(|me| me.role.allows(Role::Approver))
}

/// Shows a secret entry's content in place to an approver or admin who enters their
/// password again. The reveal is audited; the content lives only in this page's memory.
#[component]
fn RevealSecret(revision: i64, path: String) -> impl IntoView {
    let reveal = ServerAction::<Reveal>::new();
    view! {
        <ActionForm action=reveal attr:class="fields" attr:data-test="reveal-form">
            <input type="hidden" name="revision" value=revision />
            <input type="hidden" name="path" value=path />
            <label class="grow">"Your password, to reveal it (audited)"
                <input type="password" name="password" required autocomplete="current-password" data-test="reveal-password" />
            </label>
            <button type="submit" class="danger" data-test="reveal">"Reveal"</button>
        </ActionForm>
        {move || reveal.value().get().map(|result| match result {
            Ok(content) => view! { <pre class="revealed" data-test="revealed">{content}</pre> }.into_any(),
            Err(err) => view! { <ActionError message=error_text(&err) /> }.into_any(),
        })}
    }
}

#[component]
fn EntryTable(entries: Vec<EntryView>, revision: i64, current: bool) -> impl IntoView {
    let editable = current && can_edit();
    view! {
        <table class="table" data-test="entry-table">
            <thead><tr><th>"Path"</th><th>"Format"</th><th>"Mode"</th><th>"Owner:group"</th><th>"Size"</th><th>"Entry hash"</th><th></th></tr></thead>
            <tbody>
                {entries.into_iter().map(|e| {
                    let href = format!("/entry?path={}&rev={revision}", encode(&e.path));
                    let owner = if e.owner.is_empty() && e.group.is_empty() { "—".to_string() } else { format!("{}:{}", e.owner, e.group) };
                    view! {
                        <tr data-test="entry-row" data-path=e.path.clone()>
                            <td><a href=href>{e.path.clone()}</a>{e.secret.then(|| view! { <span class="badge badge-secret">"secret"</span> })}</td>
                            <td>{e.format.clone()}</td>
                            <td><code>{e.mode.clone()}</code></td>
                            <td>{owner}</td>
                            <td>{format!("{} B", e.size)}</td>
                            <td><ShortHash hash=e.entry_hash.clone() /></td>
                            <td>{editable.then(|| view! { <a href=edit_href(&e.path, None) data-test="edit-entry">"Edit"</a> })}</td>
                        </tr>
                    }
                }).collect_view()}
            </tbody>
        </table>
    }
}

#[component]
pub fn ConfigPage() -> impl IntoView {
    let data = crate::resource(|| (), |_| revision(None));
    view! {
        <Title text="Configuration · etc-shadow" />
        <Layout title="Configuration">
            <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match data.await {
                        Err(err) => view! { <ErrorBox message=error_text(&err) /> }.into_any(),
                        Ok(rev) => {
                            let n = rev.summary.number;
                            view! {
                                <div class="toolbar">
                                    <span data-test="current-number">{format!("Revision #{n}")}</span>
                                    <span class="muted">" · root "</span><ShortHash hash=rev.summary.root.clone() />
                                    <span class="spacer"></span>
                                    {can_edit().then(|| view! { <a class="button primary" href="/edit" data-test="new-entry">"New entry"</a> })}
                                    <a class="button" href="/revisions">"History"</a>
                                </div>
                                {if rev.entries.is_empty() {
                                    view! { <p class="muted" data-test="no-entries">"No entries yet. Start a change with “New entry”."</p> }.into_any()
                                } else {
                                    view! { <EntryTable entries=rev.entries.clone() revision=n current=true /> }.into_any()
                                }}
                            }.into_any()
                        }
                    }
                })}
            </Suspense>
        </Layout>
    }
}

#[component]
pub fn EntryPage() -> impl IntoView {
    let query = use_query_map();
    let key = move || {
        let q = query.read();
        (q.get("path").unwrap_or_default(), q.get("rev").and_then(|r| r.parse::<i64>().ok()))
    };
    let data = crate::resource(key, |(path, rev)| entry(path, rev));
    view! {
        <Title text="Entry · etc-shadow" />
        <Layout title="Entry">
            <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match data.await {
                        Err(err) => view! { <ErrorBox message=error_text(&err) /> }.into_any(),
                        Ok(e) => {
                            let lines: Vec<String> = e.content.clone().unwrap_or_default().split('\n').map(str::to_string).collect();
                            view! {
                                <div class="toolbar">
                                    <code class="path" data-test="entry-path">{e.entry.path.clone()}</code>
                                    <span class="muted">{format!(" in revision #{} · {} · mode {}", e.revision, e.entry.format, e.entry.mode)}</span>
                                    <span class="spacer"></span>
                                    {can_edit().then(|| view! { <a class="button primary" href=edit_href(&e.entry.path, None)>"Edit in a change"</a> })}
                                </div>
                                {match e.content {
                                    None => view! {
                                        <p class="secret-note">"This entry is secret; its content is not shown."</p>
                                        {can_reveal().then(|| view! { <RevealSecret revision=e.revision path=e.entry.path.clone() /> })}
                                    }.into_any(),
                                    Some(content) => view! {
                                        <table class="code" data-test="entry-content">
                                            <tbody>
                                                {lines.into_iter().enumerate().map(|(i, line)| view! {
                                                    <tr><td class="ln">{i + 1}</td><td class="src">{line}</td></tr>
                                                }).collect_view()}
                                            </tbody>
                                        </table>
                                        // Secret values inside the entry show as placeholders.
                                        {(can_reveal() && domain::redact::has_placeholder(&content))
                                            .then(|| view! { <RevealSecret revision=e.revision path=e.entry.path.clone() /> })}
                                    }.into_any(),
                                }}
                            }.into_any()
                        }
                    }
                })}
            </Suspense>
        </Layout>
    }
}

#[component]
pub fn RevisionsPage() -> impl IntoView {
    let query = use_query_map();
    let before = move || query.read().get("before").and_then(|b| b.parse::<i64>().ok());
    let data = crate::resource(before, revisions);
    view! {
        <Title text="History · etc-shadow" />
        <Layout title="History">
            <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match data.await {
                        Err(err) => view! { <ErrorBox message=error_text(&err) /> }.into_any(),
                        Ok(page) => view! {
                            <table class="table" data-test="revision-table">
                                <thead><tr><th>"#"</th><th>"Message"</th><th>"Author"</th><th>"When"</th><th>"Entries"</th><th>"Root"</th></tr></thead>
                                <tbody>
                                    {page.items.iter().map(|r| view! {
                                        <tr data-test="revision-row">
                                            <td><a href=format!("/revisions/{}", r.number)>{format!("#{}", r.number)}</a></td>
                                            <td>{r.message.clone()}</td>
                                            <td>{r.author.clone()}</td>
                                            <td>{when(&r.created_at)}</td>
                                            <td>{r.entry_count}</td>
                                            <td><ShortHash hash=r.root.clone() /></td>
                                        </tr>
                                    }).collect_view()}
                                </tbody>
                            </table>
                            {page.next.map(|next| view! { <a class="button" href=format!("/revisions?before={next}")>"Older"</a> })}
                        }.into_any(),
                    }
                })}
            </Suspense>
        </Layout>
    }
}

/// "Restore this revision": a draft change whose content is this revision, reviewed and
/// approved like any change; the page links to it.
#[component]
fn RestoreButton(number: i64) -> impl IntoView {
    let restore = ServerAction::<crate::api::RestoreRevision>::new();
    view! {
        <ActionForm action=restore attr:class="inline">
            <input type="hidden" name="number" value=number.to_string() />
            <button type="submit" data-test="restore-revision">"Restore this revision"</button>
        </ActionForm>
        {move || restore.value().get().and_then(|r| r.err()).map(|e| view! {
            <crate::components::ActionError message=crate::components::error_text(&e) test="restore-error" />
        })}
        {move || restore.value().get().and_then(|r| r.ok()).map(|change| view! {
            <div class="success-box" data-test="restore-result">
                "Revision " {number} " is now draft change " <a href=format!("/changes/{change}") data-test="restored-change">{format!("#{change}")}</a> ": submit it for review."
            </div>
        })}
    }
}

#[component]
pub fn RevisionPage() -> impl IntoView {
    let params = use_params_map();
    let number = move || params.read().get("n").and_then(|n| n.parse::<i64>().ok()).unwrap_or(-1);
    let data = crate::resource(number, |n| async move {
        let rev = revision(Some(n)).await?;
        let diff = match rev.summary.parent {
            Some(parent) => Some(revision_diff(parent, n).await?),
            None => None,
        };
        Ok::<_, ServerFnError>((rev, diff))
    });
    view! {
        <Title text="Revision · etc-shadow" />
        <Layout title="Revision">
            <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match data.await {
                        Err(err) => view! { <ErrorBox message=error_text(&err) /> }.into_any(),
                        Ok((rev, diff)) => {
                            let s = rev.summary.clone();
                            view! {
                                <section class="card" data-test="revision-summary">
                                    <h2>{format!("#{} {}", s.number, s.message)}</h2>
                                    <dl>
                                        <dt>"Root"</dt><dd><code data-test="revision-root">{s.root.clone()}</code></dd>
                                        <dt>"Author"</dt><dd>{s.author.clone()}</dd>
                                        <dt>"When"</dt><dd>{when(&s.created_at)}</dd>
                                        <dt>"Change"</dt><dd>{s.change_id.map(|id| view! { <a href=format!("/changes/{id}")>{format!("#{id}")}</a> })}</dd>
                                        <dt>"Current"</dt><dd>{if rev.current { "yes" } else { "no" }}</dd>
                                    </dl>
                                    {(!rev.current).then(|| view! { <RestoreButton number=s.number /> })}
                                </section>
                                <h2>"Entries"</h2>
                                <EntryTable entries=rev.entries.clone() revision=s.number current=rev.current />
                                {diff.map(|d| view! { <h2>{format!("Changes since #{}", s.parent.unwrap_or_default())}</h2><DiffViewer diff=d /> })}
                            }.into_any()
                        }
                    }
                })}
            </Suspense>
        </Layout>
    }
}
