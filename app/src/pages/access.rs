//! Who may do what: API tokens (everyone manages their own; admins see and revoke all) and
//! user accounts (admins: add, change role, disable or enable). Creating a token and
//! every account change need a recent password; the page asks for it in place.

use crate::{
    api::{CreateToken, CreateUser, RevokeToken, UpdateUser, tokens, users},
    components::{ActionError, ErrorBox, error_text, layout::Layout, when},
};
use domain::Role;
use leptos::prelude::*;
use leptos_meta::Title;

/// The roles a select offers, lowest first.
fn role_options(selected: Option<Role>) -> impl IntoView {
    Role::ALL
        .into_iter()
        .map(|role| view! { <option value=role.as_str() selected=selected == Some(role)>{role.as_str()}</option> })
        .collect_view()
}

#[component]
pub fn TokensPage() -> impl IntoView {
    let create = ServerAction::<CreateToken>::new();
    let revoke = ServerAction::<RevokeToken>::new();
    let version = move || create.version().get() + revoke.version().get();
    let list = crate::resource(version, |_| tokens());
    view! {
        <Title text="API tokens · etc-shadow" />
        <Layout title="API tokens">
            {move || create.value().get().map(|result| match result {
                Ok(token) => view! {
                    <div class="success-box" data-test="new-token">
                        {format!("Token \u{201c}{}\u{201d} ({}) created, working until {}. Copy it now; it is never shown again: ", token.name, token.role, when(&token.expires_at))}
                        <code data-test="new-token-secret">{token.token}</code>
                        <div class="muted small">"Send it as Authorization: Bearer <token>."</div>
                    </div>
                }.into_any(),
                Err(err) => view! { <ActionError message=error_text(&err) /> }.into_any(),
            })}
            {move || revoke.value().get().and_then(|r| r.err()).map(|err| view! { <ActionError message=error_text(&err) /> })}
            <section class="card">
                <h2>"Create a token"</h2>
                <p class="muted small">{format!(
                    "A token acts as you, with at most your role, for the days you give ({} by default, at most {}), until revoked, or until your password changes or your account is disabled. Automation uses it instead of a session; it cannot make tokens or manage users, and reveals a secret only with your password.",
                    domain::api::TOKEN_DAYS_DEFAULT,
                    domain::api::TOKEN_DAYS_MAX
                )}</p>
                <ActionForm action=create attr:class="fields">
                    <label class="grow">"Name" <input name="name" required maxlength="100" placeholder="release pipeline" data-test="token-name" /></label>
                    <label>"Role"
                        <select name="role" data-test="token-role">
                            <option value="">"my role"</option>
                            {role_options(None)}
                        </select>
                    </label>
                    <label>"Days"
                        <input name="days" type="number" min="1" max=domain::api::TOKEN_DAYS_MAX placeholder=domain::api::TOKEN_DAYS_DEFAULT.to_string() data-test="token-days" />
                    </label>
                    <button type="submit" class="primary" data-test="token-create">"Create"</button>
                </ActionForm>
            </section>
            <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match list.await {
                        Err(err) => view! { <ErrorBox message=error_text(&err) /> }.into_any(),
                        Ok(list) if list.is_empty() => view! { <p class="muted" data-test="no-tokens">"No tokens."</p> }.into_any(),
                        Ok(list) => view! {
                            <table class="table" data-test="token-table">
                                <thead><tr><th>"#"</th><th>"Name"</th><th>"Owner"</th><th>"Role"</th><th>"Created"</th><th>"Last used"</th><th>"State"</th><th></th></tr></thead>
                                <tbody>
                                    {list.into_iter().map(|t| {
                                        let active = t.revoked_at.is_none();
                                        view! {
                                            <tr data-test="token-row" data-name=t.name.clone() data-active=active.to_string()>
                                                <td>{t.id}</td>
                                                <td>{t.name.clone()}</td>
                                                <td>{t.owner.clone()}</td>
                                                <td>{t.role.clone()}</td>
                                                <td>{when(&t.created_at)}</td>
                                                <td>{t.last_used_at.as_deref().map(when).unwrap_or_else(|| "never".into())}</td>
                                                <td>{match (&t.revoked_at, &t.expires_at) {
                                                    (Some(at), _) => format!("revoked {}", when(at)),
                                                    (None, Some(until)) => format!("works until {}", when(until)),
                                                    (None, None) => "active".into(),
                                                }}</td>
                                                <td>
                                                    {active.then(|| view! {
                                                        <ActionForm action=revoke attr:class="inline">
                                                            <input type="hidden" name="id" value=t.id />
                                                            <button type="submit" class="danger" data-test="token-revoke">"Revoke"</button>
                                                        </ActionForm>
                                                    })}
                                                </td>
                                            </tr>
                                        }
                                    }).collect_view()}
                                </tbody>
                            </table>
                        }.into_any(),
                    }
                })}
            </Transition>
        </Layout>
    }
}

#[component]
pub fn UsersPage() -> impl IntoView {
    let create = ServerAction::<CreateUser>::new();
    let update = ServerAction::<UpdateUser>::new();
    let version = move || create.version().get() + update.version().get();
    let list = crate::resource(version, |_| users());
    let failure = move || {
        [
            create.value().get().and_then(|r| r.err()),
            update.value().get().and_then(|r| r.err()),
        ]
        .into_iter()
        .flatten()
        .next()
        .map(|err| error_text(&err))
    };
    view! {
        <Title text="Users · etc-shadow" />
        <Layout title="Users">
            {move || failure().map(|message| view! { <ActionError message /> })}
            {move || update.value().get().and_then(|r| r.ok()).map(|user| view! {
                <div class="success-box" data-test="user-updated">
                    {format!("{} is now {}{}; their sessions have ended.", user.username, user.role, if user.disabled { " and disabled" } else { "" })}
                </div>
            })}
            <section class="card">
                <h2>"Add a user"</h2>
                <ActionForm action=create attr:class="fields">
                    <label class="grow">"Username" <input name="username" required autocomplete="off" data-test="user-name" /></label>
                    <label>"Role" <select name="role" data-test="user-role">{role_options(Some(Role::Viewer))}</select></label>
                    <label class="grow">"Password (12 characters or more)"
                        <input type="password" name="password" required minlength="12" autocomplete="new-password" data-test="user-password" />
                    </label>
                    <button type="submit" class="primary" data-test="user-add">"Add"</button>
                </ActionForm>
            </section>
            <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match list.await {
                        Err(err) => view! { <ErrorBox message=error_text(&err) /> }.into_any(),
                        Ok(list) => view! {
                            <table class="table" data-test="user-table">
                                <thead><tr><th>"User"</th><th>"Role"</th><th>"State"</th><th>"Created"</th><th></th></tr></thead>
                                <tbody>
                                    {list.into_iter().map(|u| {
                                        let (role_form_name, state_form_name) = (u.username.clone(), u.username.clone());
                                        view! {
                                            <tr data-test="user-row" data-name=u.username.clone() data-role=u.role.as_str() data-disabled=u.disabled.to_string()>
                                                <td>{u.username.clone()}</td>
                                                <td>
                                                    <ActionForm action=update attr:class="inline">
                                                        <input type="hidden" name="username" value=role_form_name />
                                                        <select name="role" data-test="user-set-role">{role_options(Some(u.role))}</select>
                                                        <button type="submit" data-test="user-save-role">"Change role"</button>
                                                    </ActionForm>
                                                </td>
                                                <td>{if u.disabled { "disabled" } else { "active" }}</td>
                                                <td>{when(&u.created_at)}</td>
                                                <td>
                                                    <ActionForm action=update attr:class="inline">
                                                        <input type="hidden" name="username" value=state_form_name />
                                                        <input type="hidden" name="disabled" value=(!u.disabled).to_string() />
                                                        {if u.disabled {
                                                            view! { <button type="submit" data-test="user-enable">"Enable"</button> }.into_any()
                                                        } else {
                                                            view! { <button type="submit" class="danger" data-test="user-disable">"Disable"</button> }.into_any()
                                                        }}
                                                    </ActionForm>
                                                </td>
                                            </tr>
                                        }
                                    }).collect_view()}
                                </tbody>
                            </table>
                        }.into_any(),
                    }
                })}
            </Transition>
        </Layout>
    }
}
