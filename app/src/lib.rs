//! The etc-shadow console: pages, components and server functions (Leptos 0.8,
//! server-rendered and hydrated).
//!
//! Pages read through server functions in [`api`], which call the `control` services on
//! the server. Everything here compiles for the server (`ssr`) and for the browser
//! (`hydrate`); server-only code sits behind `#[cfg(feature = "ssr")]`. Stable
//! `data-test` attributes mark what the end-to-end tests touch.

// The nested view types of the larger pages, unoptimised for the browser, are deeper than
// rustc's default query depth.
#![recursion_limit = "256"]

pub mod api;
pub mod components;
pub mod pages;

use leptos::prelude::*;
use leptos_meta::{MetaTags, Title, provide_meta_context};
use leptos_router::{
    SsrMode,
    components::{Route, Router, Routes},
    path,
};

/// The codec of every Resource: JSON, as leptos's default, but read from bytes with
/// `serde_json::from_slice` as server functions read their results, so the browser's
/// wasm holds one reader of each page's data rather than two (`from_str` and
/// `from_slice` are separate instances of every deserialiser).
pub struct Json;

impl<T: serde::Serialize> codee::Encoder<T> for Json {
    type Error = serde_json::Error;
    type Encoded = String;

    fn encode(value: &T) -> Result<String, serde_json::Error> {
        serde_json::to_string(value)
    }
}

impl<T: serde::de::DeserializeOwned> codee::Decoder<T> for Json {
    type Error = serde_json::Error;
    type Encoded = str;

    fn decode(text: &str) -> Result<T, serde_json::Error> {
        serde_json::from_slice(text.as_bytes())
    }
}

/// A Resource with the [`Json`] codec (what `Resource::new` is with leptos's own).
#[track_caller]
pub fn resource<S, T, Fut>(
    source: impl Fn() -> S + Send + Sync + 'static,
    fetcher: impl Fn(S) -> Fut + Send + Sync + 'static,
) -> Resource<T, Json>
where
    S: Send + Sync + Clone + PartialEq + 'static,
    T: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    Resource::new_with_options(source, fetcher, false)
}

/// Settings the server passes to server functions through context.
#[derive(Debug, Clone, Copy)]
pub struct ConsoleSettings {
    pub secure_cookies: bool,
}

pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8" />
                <meta name="viewport" content="width=device-width, initial-scale=1" />
                <link rel="icon" href="data:," />
                <link rel="stylesheet" href=format!("/{}/{}.css", options.site_pkg_dir, options.output_name) />
                <HydrationScripts options />
                <MetaTags />
            </head>
            <body>
                <App />
            </body>
        </html>
    }
}

#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    // Marks the page once the wasm has taken over, so tests (and people) can tell.
    Effect::new(move |_| {
        #[cfg(feature = "hydrate")]
        if let Some(body) = web_sys::window().and_then(|w| w.document()).and_then(|d| d.body()) {
            let _ = body.set_attribute("data-hydrated", "true");
        }
    });
    view! {
        <Title text="etc-shadow" />
        <Router>
            // Async rendering: every page arrives complete, so it reads without JavaScript.
            <Routes fallback=|| view! { <pages::NotFound /> }>
                <Route path=path!("/login") view=pages::login::LoginPage ssr=SsrMode::Async />
                <Route path=path!("/") view=pages::overview::OverviewPage ssr=SsrMode::Async />
                <Route path=path!("/config") view=pages::config::ConfigPage ssr=SsrMode::Async />
                <Route path=path!("/entry") view=pages::config::EntryPage ssr=SsrMode::Async />
                <Route path=path!("/edit") view=pages::editor::EditorPage ssr=SsrMode::Async />
                <Route path=path!("/revisions") view=pages::config::RevisionsPage ssr=SsrMode::Async />
                <Route path=path!("/revisions/:n") view=pages::config::RevisionPage ssr=SsrMode::Async />
                <Route path=path!("/changes") view=pages::changes::ChangesPage ssr=SsrMode::Async />
                <Route path=path!("/changes/:id") view=pages::changes::ChangePage ssr=SsrMode::Async />
                <Route path=path!("/audit") view=pages::audit::AuditPage ssr=SsrMode::Async />
                <Route path=path!("/shadows") view=pages::shadows::ShadowsPage ssr=SsrMode::Async />
                <Route path=path!("/shadows/:name") view=pages::shadows::ShadowPage ssr=SsrMode::Async />
                <Route path=path!("/incidents") view=pages::incidents::IncidentsPage ssr=SsrMode::Async />
                <Route path=path!("/incidents/:id") view=pages::incidents::IncidentPage ssr=SsrMode::Async />
                <Route path=path!("/webhooks") view=pages::webhooks::WebhooksPage ssr=SsrMode::Async />
                <Route path=path!("/tokens") view=pages::access::TokensPage ssr=SsrMode::Async />
                <Route path=path!("/users") view=pages::access::UsersPage ssr=SsrMode::Async />
                <Route path=path!("/import") view=pages::imports::ImportPage ssr=SsrMode::Async />
                <Route path=path!("/drills") view=pages::drills::DrillsPage ssr=SsrMode::Async />
                <Route path=path!("/drills/:id") view=pages::drills::DrillPage ssr=SsrMode::Async />
                <Route path=path!("/rollouts") view=pages::rollouts::RolloutsPage ssr=SsrMode::Async />
                <Route path=path!("/rollouts/:id") view=pages::rollouts::RolloutPage ssr=SsrMode::Async />
            </Routes>
        </Router>
    }
}
