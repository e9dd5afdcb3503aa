use crate::{api::Login, components::error_text};
use leptos::prelude::*;
use leptos_meta::Title;

#[component]
pub fn LoginPage() -> impl IntoView {
    let login = ServerAction::<Login>::new();
    // Where the person was when the session ended (a link, a bookmark, an action).
    let query = leptos_router::hooks::use_query_map();
    let next = move || domain::api::local_next(query.read().get("next").as_deref());
    let failure = move || login.value().get().and_then(|result| result.err()).map(|err| error_text(&err));
    view! {
        <Title text="Sign in · etc-shadow" />
        <main class="login">
            <div class="card login-card">
                <h1>"etc-shadow"</h1>
                <p class="muted">"Configuration control plane. Sign in to continue."</p>
                <ActionForm action=login attr:data-test="login-form">
                    <input type="hidden" name="next" value=next />
                    <label>"Username" <input name="username" autocomplete="username" required data-test="login-username" /></label>
                    <label>
                        "Password"
                        <input name="password" type="password" autocomplete="current-password" required data-test="login-password" />
                    </label>
                    <button type="submit" class="primary" data-test="login-submit" disabled=move || login.pending().get()>
                        "Sign in"
                    </button>
                </ActionForm>
                {move || failure().map(|message| view! { <div class="error-box" role="alert" data-test="login-error">{message}</div> })}
            </div>
        </main>
    }
}
