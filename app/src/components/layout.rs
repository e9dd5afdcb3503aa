//! The frame around every signed-in page: navigation and who is signed in.

use crate::api::{Logout, Me, whoami};
use leptos::prelude::*;
use leptos_router::components::A;

/// The signed-in user, provided to the page inside the layout once known.
pub fn use_me() -> Option<Me> {
    use_context::<Me>()
}

#[component]
pub fn Layout(#[prop(into)] title: String, children: ChildrenFn) -> impl IntoView {
    let me = crate::resource(|| (), |_| whoami());
    let logout = ServerAction::<Logout>::new();
    let children = StoredValue::new(children);
    view! {
        <div class="frame">
            <header class="topbar">
                <a class="brand" href="/">"etc-shadow"</a>
                <nav data-test="nav">
                    <A href="/">"Overview"</A>
                    <A href="/config">"Configuration"</A>
                    <A href="/changes">"Changes"</A>
                    <A href="/import">"Import"</A>
                    <A href="/revisions">"History"</A>
                    <A href="/shadows">"Shadows"</A>
                    <A href="/incidents">"Incidents"</A>
                    <A href="/rollouts">"Rollouts"</A>
                    <A href="/drills">"Drills"</A>
                    <A href="/audit">"Audit"</A>
                </nav>
                <Suspense fallback=|| ()>
                    {move || Suspend::new(async move {
                        match me.await {
                            Ok(me) => view! {
                                <div class="who">
                                    {me.role.allows(domain::Role::Admin).then(|| view! {
                                        <a href="/users" data-test="nav-users">"Users"</a>
                                        <a href="/webhooks" data-test="nav-webhooks">"Webhooks"</a>
                                    })}
                                    <a href="/tokens" data-test="nav-tokens">"Tokens"</a>
                                    <span data-test="whoami">{me.username.clone()}</span>
                                    <span class="role">{me.role.to_string()}</span>
                                    <ActionForm action=logout>
                                        <button type="submit" class="link" data-test="logout">"Sign out"</button>
                                    </ActionForm>
                                </div>
                            }.into_any(),
                            Err(_) => view! { <a href="/login">"Sign in"</a> }.into_any(),
                        }
                    })}
                </Suspense>
            </header>
            <main>
                <h1 data-test="page-title">{title}</h1>
                <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
                    {move || Suspend::new(async move {
                        match me.await {
                            Ok(me) => {
                                provide_context(me);
                                children.with_value(|children| children()).into_any()
                            }
                            Err(_) => view! {
                                <p>"Your session has ended. " <a href="/login">"Sign in again"</a></p>
                            }.into_any(),
                        }
                    })}
                </Suspense>
            </main>
        </div>
    }
}
