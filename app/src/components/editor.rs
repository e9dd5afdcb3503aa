//! A code editor: line numbers, no wrapping, and validation as you type with the same
//! validators the server runs (the server's answer on save remains the authority).

use domain::{Format, format::validate};
use leptos::prelude::*;

#[component]
pub fn CodeEditor(
    /// The text being edited; also submitted as the form field `name`.
    content: RwSignal<String>,
    format: RwSignal<Format>,
    #[prop(into)] name: String,
    #[prop(optional)] readonly: bool,
) -> impl IntoView {
    let validation = Memo::new(move |_| content.with(|text| validate(format.get(), text.as_bytes())));
    let error_line = move || validation.with(|v| v.as_ref().err().map(|e| e.line));
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
                {move || match validation.get() {
                    Ok(()) => view! { <span class="ok" data-test="valid">{format!("✓ valid {}", format.get())}</span> }.into_any(),
                    Err(err) => view! {
                        <span class="bad" data-test="invalid">{format!("✗ line {}, column {}: {}", err.line, err.column, err.message)}</span>
                    }.into_any(),
                }}
            </div>
        </div>
    }
}
