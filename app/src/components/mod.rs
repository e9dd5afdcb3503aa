//! Building blocks shared by the pages.

pub mod diff;
pub mod editor;
pub mod layout;
pub mod live;

use leptos::prelude::*;

/// The first 12 hex digits of a hash, with the whole hash on hover.
#[component]
pub fn ShortHash(#[prop(into)] hash: String) -> impl IntoView {
    let short: String = hash.chars().take(12).collect();
    view! { <code class="hash" title=hash>{short}</code> }
}

/// A coloured badge for a change or rollout state.
#[component]
pub fn StateBadge(#[prop(into)] state: String) -> impl IntoView {
    let class = format!("badge badge-{state}");
    let label = state.replace('_', " ");
    view! { <span class=class data-test="state-badge">{label}</span> }
}

/// The error of a failed server function, in words.
pub fn error_text(err: &ServerFnError) -> String {
    match err {
        ServerFnError::ServerError(message) => message.clone(),
        other => other.to_string(),
    }
}

/// A failure box for a page section.
#[component]
pub fn ErrorBox(#[prop(into)] message: String) -> impl IntoView {
    view! { <div class="error-box" role="alert" data-test="error">{message}</div> }
}

/// Shows a timestamp as `2026-11-25 13:45:00 UTC`.
pub fn when(at: &str) -> String {
    let trimmed = at.split('.').next().unwrap_or(at).trim_end_matches('Z');
    format!("{} UTC", trimmed.replacen('T', " ", 1))
}
