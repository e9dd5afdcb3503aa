//! A code editor: line numbers, no wrapping, and validation as you type by the same
//! validators the server runs on save, run on the server a moment after the typing stops
//! (the browser carries no parsers: they would weigh more than the rest of the console).

use domain::Format;
use leptos::prelude::*;

/// How long typing must pause before the text is sent for validation.
const QUIET: std::time::Duration = std::time::Duration::from_millis(200);

#[component]
pub fn CodeEditor(
    /// The text being edited; also submitted as the form field `name`.
    content: RwSignal<String>,
    format: RwSignal<Format>,
    #[prop(into)] name: String,
    #[prop(optional)] readonly: bool,
) -> impl IntoView {
    // What was last sent for validation: the text once typing paused.
    let settled = RwSignal::new(content.get_untracked());
    let keystrokes = StoredValue::new(0u64);
    Effect::new(move |_| {
        content.track();
        keystrokes.update_value(|n| *n += 1);
        let mine = keystrokes.get_value();
        set_timeout(
            move || {
                // The editor may be gone by then (saved, navigated away): its values too.
                let (Some(latest), Some(now)) = (keystrokes.try_get_value(), content.try_get_untracked()) else {
                    return;
                };
                if latest == mine && settled.try_with_untracked(|sent| now != *sent).unwrap_or(false) {
                    settled.try_set(now);
                }
            },
            QUIET,
        );
    });
    // The server's answer for the settled text; `None` until the first one arrives (so the
    // server's page and the hydrated one agree: both say "checking").
    let answer = RwSignal::new(None::<Result<Option<domain::ValidationError>, String>>);
    let asked = StoredValue::new(0u64);
    Effect::new(move |_| {
        let (format, text) = (format.get(), settled.get());
        asked.update_value(|n| *n += 1);
        let mine = asked.get_value();
        leptos::task::spawn_local(async move {
            let result = crate::api::validate_content(format.as_str().to_string(), text)
                .await
                .map_err(|err| err.to_string());
            // An answer to text typed over since, or to an editor gone since, is dropped.
            if asked.try_get_value() == Some(mine) {
                answer.try_set(Some(result));
            }
        });
    });
    let error_line = move || answer.with(|a| a.as_ref().and_then(|a| a.as_ref().ok().cloned().flatten()).map(|e| e.line));
    let line_count = move || content.with(|text| text.split('\n').count().max(1));
    let gutter = move || {
        let bad = error_line();
        (1..=line_count())
            .map(|n| {
                let class = if bad == Some(u32::try_from(n).unwrap_or(u32::MAX)) {
                    "bad"
                } else {
                    ""
                };
                view! { <span class=class>{n}</span> }
            })
            .collect_view()
    };
    view! {
        <div class="editor" data-test="editor">
            <div class="editor-scroll">
                <div class="gutter" aria-hidden="true" data-test="gutter">{gutter}</div>
                <textarea
                    name=name
                    data-test="editor-text"
                    spellcheck="false"
                    wrap="off"
                    readonly=readonly
                    rows=move || line_count() + 1
                    prop:value=move || content.get()
                    on:input=move |ev| content.set(event_target_value(&ev))
                >
                    {content.get_untracked()}
                </textarea>
            </div>
            <div class="validation" data-test="validation" aria-live="polite">
                {move || match answer.get() {
                    None => view! { <span class="muted" data-test="checking">"checking…"</span> }.into_any(),
                    Some(Ok(None)) => view! { <span class="ok" data-test="valid">{format!("✓ valid {}", format.get_untracked())}</span> }.into_any(),
                    Some(Ok(Some(err))) => view! {
                        <span class="bad" data-test="invalid">{format!("✗ line {}, column {}: {}", err.line, err.column, err.message)}</span>
                    }.into_any(),
                    Some(Err(err)) => view! { <span class="muted" data-test="unchecked">{format!("not checked: {err}")}</span> }.into_any(),
                }}
            </div>
        </div>
    }
}
