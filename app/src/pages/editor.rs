//! Editing one entry inside a change: a new change, or one more edit of an open change.

use crate::{
    api::{RemoveEntry, SaveEntry, change_entry, entry, revision},
    components::{ErrorBox, editor::CodeEditor, error_text, layout::Layout},
};
use domain::{Format, policy::format_mode};
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_query_map;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Draft {
    base: i64,
    path: String,
    content: String,
    format: Format,
    mode: String,
    secret: bool,
    /// The path exists in the current revision.
    exists: bool,
}

async fn load(path: String, change: Option<i64>) -> Result<Draft, ServerFnError> {
    let current = revision(None).await?;
    let base = current.summary.number;
    let existing = current.entries.iter().find(|e| e.path == path).cloned();
    let mut draft = Draft {
        base,
        content: String::new(),
        format: Format::guess(&path),
        mode: format_mode(0o644),
        secret: false,
        exists: existing.is_some(),
        path: path.clone(),
    };
    if let Some(e) = existing {
        draft.format = e.format.parse().unwrap_or(Format::Text);
        draft.mode = e.mode.clone();
        draft.secret = e.secret;
        draft.content = entry(path.clone(), Some(base)).await?.content.unwrap_or_default();
    }
    if let Some(id) = change
        && let Some(content) = change_entry(id, path).await?
    {
        draft.content = content;
    }
    Ok(draft)
}

#[component]
pub fn EditorPage() -> impl IntoView {
    let query = use_query_map();
    let key = move || {
        let q = query.read();
        (
            q.get("path").unwrap_or_default(),
            q.get("change").and_then(|c| c.parse::<i64>().ok()),
        )
    };
    let data = crate::resource(key, |(path, change)| load(path, change));
    view! {
        <Title text="Edit · etc-shadow" />
        <Layout title="Edit entry">
            <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    let change = key().1;
                    match data.await {
                        Err(err) => view! { <ErrorBox message=error_text(&err) /> }.into_any(),
                        Ok(draft) => view! { <EditorForm draft change /> }.into_any(),
                    }
                })}
            </Suspense>
        </Layout>
    }
}

#[component]
fn EditorForm(draft: Draft, change: Option<i64>) -> impl IntoView {
    let save = ServerAction::<SaveEntry>::new();
    let remove = ServerAction::<RemoveEntry>::new();
    let content = RwSignal::new(draft.content.clone());
    let format = RwSignal::new(draft.format);
    let path = RwSignal::new(draft.path.clone());
    let new_entry = draft.path.is_empty();
    let failure = move || {
        save.value()
            .get()
            .and_then(|r| r.err())
            .or_else(|| remove.value().get().and_then(|r| r.err()))
            .map(|e| error_text(&e))
    };
    let base = draft.base;
    let target = match change {
        Some(id) => format!("Editing change #{id}"),
        None => format!("A new change on revision #{base}"),
    };
    view! {
        <p class="muted" data-test="editor-target">{target}</p>
        <ActionForm action=save attr:class="editor-form" attr:data-test="editor-form">
            <input type="hidden" name="base_revision" value=base />
            {change.map(|id| view! { <input type="hidden" name="change" value=id /> })}
            <div class="fields">
                <label class="grow">
                    "Path"
                    <input
                        name="path"
                        required
                        data-test="editor-path"
                        placeholder="nginx/site.conf"
                        readonly=!new_entry
                        prop:value=move || path.get()
                        on:input=move |ev| {
                            let value = event_target_value(&ev);
                            format.set(Format::guess(&value));
                            path.set(value);
                        }
                    />
                </label>
                <label>
                    "Format"
                    <select name="format" data-test="editor-format" on:change=move |ev| {
                        if let Ok(f) = event_target_value(&ev).parse() { format.set(f) }
                    }>
                        {Format::ALL.into_iter().map(|f| view! {
                            <option value=f.as_str() selected=move || format.get() == f>{f.as_str()}</option>
                        }).collect_view()}
                    </select>
                </label>
                <label>"Mode" <input name="mode" value=draft.mode.clone() size="5" data-test="editor-mode" /></label>
                <label class="check"><input type="checkbox" name="secret" checked=draft.secret data-test="editor-secret" /> "Secret"</label>
            </div>
            {change.is_none().then(|| view! {
                <label>
                    "Change message"
                    <input name="message" required data-test="editor-message" placeholder="Why this change?" />
                </label>
            })}
            {change.map(|_| view! { <input type="hidden" name="message" value="" /> })}
            {secrets_hint(&draft.content)}
            <CodeEditor content format name="content" />
            <div class="actions">
                <button type="submit" class="primary" data-test="editor-save" disabled=move || save.pending().get()>
                    {if change.is_some() { "Save to change" } else { "Create change" }}
                </button>
                <a class="button" href=change.map_or("/config".to_string(), |id| format!("/changes/{id}"))>"Cancel"</a>
            </div>
        </ActionForm>
        {(draft.exists && change.is_some()).then(|| view! {
            <ActionForm action=remove attr:class="inline">
                <input type="hidden" name="base_revision" value=base />
                <input type="hidden" name="change" value=change.unwrap_or_default() />
                <input type="hidden" name="message" value="" />
                <input type="hidden" name="path" value=draft.path.clone() />
                <button type="submit" class="danger" data-test="editor-delete">"Delete this entry in the change"</button>
            </ActionForm>
        })}
        {move || failure().map(|message| view! { <div class="error-box" role="alert" data-test="save-error">{message}</div> })}
    }
}

/// What placeholders in the content shown mean for a save.
fn secrets_hint(content: &str) -> Option<impl IntoView + use<>> {
    let text = if domain::redact::is_placeholder(content.trim()) {
        "This file holds secret values that cannot be shown apart from the rest, so it is shown \
         as one placeholder. Save it unchanged to keep the stored content, or replace it with \
         the whole file."
    } else if domain::redact::has_placeholder(content) {
        "Secret values are shown as «secret:…» placeholders. Leave one as it is to keep the \
         stored value, or type a new value in its place."
    } else {
        return None;
    };
    Some(view! { <p class="muted" data-test="editor-secrets-hint">{text}</p> })
}
