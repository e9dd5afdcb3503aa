//! One module per page.

pub mod access;
pub mod audit;
pub mod changes;
pub mod config;
pub mod drills;
pub mod editor;
pub mod imports;
pub mod incidents;
pub mod login;
pub mod overview;
pub mod rollouts;
pub mod shadows;
pub mod webhooks;

use leptos::prelude::*;

#[component]
pub fn NotFound() -> impl IntoView {
    #[cfg(feature = "ssr")]
    if let Some(response) = use_context::<leptos_axum::ResponseOptions>() {
        response.set_status(http::StatusCode::NOT_FOUND);
    }
    view! {
        <main class="narrow">
            <h1>"Not found"</h1>
            <p><a href="/">"Back to the overview"</a></p>
        </main>
    }
}
