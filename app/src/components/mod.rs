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
    if message == domain::api::SIGNED_OUT {
        return view! { <SignInAgain /> }.into_any();
    }
    view! { <div class="error-box" role="alert" data-test="error">{message}</div> }.into_any()
}

/// The session ended: a way to sign in again that comes back to this very page.
#[component]
pub fn SignInAgain() -> impl IntoView {
    let location = leptos_router::hooks::use_location();
    let href = move || domain::api::login_href(&format!("{}{}", location.pathname.get(), location.search.get()));
    view! {
        <div class="error-box" role="alert" data-test="signed-out">
            "Your session has ended. "
            <a href=href data-test="sign-in-again" rel="external">"Sign in again"</a>
            " to continue here."
        </div>
    }
}

/// The failure of an action on a page. When the action needs a recent password, the box
/// asks for it in place; the person then repeats the action.
#[component]
pub fn ActionError(#[prop(into)] message: String, #[prop(default = "action-error")] test: &'static str) -> impl IntoView {
    if message == domain::api::SIGNED_OUT {
        return view! { <SignInAgain /> }.into_any();
    }
    let needs_password = message == domain::api::PASSWORD_REQUIRED;
    view! {
        <div class="error-box" role="alert" data-test=test>
            {message}
            {needs_password.then(|| view! { <PasswordPrompt /> })}
        </div>
    }
    .into_any()
}

/// Asks the signed-in person for their password again (see [`crate::api::confirm_password`]).
#[component]
pub fn PasswordPrompt() -> impl IntoView {
    let confirm = ServerAction::<crate::api::ConfirmPassword>::new();
    view! {
        <ActionForm action=confirm attr:class="inline confirm-password" attr:data-test="password-prompt">
            <input type="password" name="password" autocomplete="current-password" required placeholder="Your password" data-test="confirm-password" />
            <button type="submit" class="primary" data-test="confirm-password-submit">"Confirm password"</button>
        </ActionForm>
        {move || confirm.value().get().map(|result| match result {
            Ok(()) => view! { <p class="success-note" data-test="password-confirmed">"Confirmed. Repeat the action."</p> }.into_any(),
            Err(err) => view! { <p data-test="confirm-error">{error_text(&err)}</p> }.into_any(),
        })}
    }
}

/// Shows a timestamp as `2026-11-25 13:45:00 UTC`.
pub fn when(at: &str) -> String {
    let trimmed = at.split('.').next().unwrap_or(at).trim_end_matches('Z');
    format!("{} UTC", trimmed.replacen('T', " ", 1))
}

/// What a node's hook did (validate, reload, health): its command, how it ended and its
/// output (secret values already masked by the server).
#[component]
pub fn HookOutput(run: domain::protocol::HookRun) -> impl IntoView {
    let end = match (run.timed_out, run.exit_code) {
        (true, _) => format!("killed after {} ms", run.duration_ms),
        (false, Some(code)) => format!("exit {code} in {} ms", run.duration_ms),
        (false, None) => "could not run".to_string(),
    };
    let verdict = if run.ok { "passed" } else { "failed" };
    view! {
        <details class="hook-run" data-test="hook-run" data-hook=run.hook.clone() data-ok=run.ok.to_string() open=!run.ok>
            <summary>
                <span class=format!("badge badge-{verdict}")>{format!("{} {verdict}", run.hook)}</span>
                " " <span class="muted small">{end}</span>
            </summary>
            <div class="muted small"><code>{run.command.join(" ")}</code></div>
            <pre class="hook-output" data-test="hook-output">{run.output.clone()}{run.truncated.then_some("\n… (cut)")}</pre>
        </details>
    }
}
