//! Webhooks (admins): the configured URLs, adding one (its signing secret is shown once),
//! removing one, and the delivery log with attempts and answers.

use crate::{
    api::{CreateWebhook, RemoveWebhook, webhook_deliveries, webhooks},
    components::{ErrorBox, StateBadge, error_text, layout::Layout, when},
};
use leptos::prelude::*;
use leptos_meta::Title;

#[component]
pub fn WebhooksPage() -> impl IntoView {
    let create = ServerAction::<CreateWebhook>::new();
    let remove = ServerAction::<RemoveWebhook>::new();
    let version = move || create.version().get() + remove.version().get();
    let hooks = crate::resource(version, |_| webhooks());
    let log = crate::resource(version, |_| webhook_deliveries());
    view! {
        <Title text="Webhooks · etc-shadow" />
        <Layout title="Webhooks">
            {move || create.value().get().map(|result| match result {
                Ok(hook) => view! {
                    <div class="success-box" data-test="webhook-secret">
                        "Webhook added. Its signing secret, shown only now: " <code>{hook.secret.unwrap_or_default()}</code>
                        <div class="muted small">"Verify X-Etc-Shadow-Signature: sha256=HMAC-SHA256(secret, body)."</div>
                    </div>
                }.into_any(),
                Err(err) => view! { <ErrorBox message=error_text(&err) /> }.into_any(),
            })}
            {move || remove.value().get().and_then(|r| r.err()).map(|err| view! { <ErrorBox message=error_text(&err) /> })}
            <section class="card">
                <h2>"Add a webhook"</h2>
                <ActionForm action=create attr:class="fields">
                    <label class="grow">"URL" <input name="url" required placeholder="https://hooks.example.com/etc-shadow" data-test="webhook-url" /></label>
                    <label class="grow">"Events (comma-separated; empty: all)"
                        <input name="events" placeholder="incident.opened, incident.resolved, rollout.applied, rollout.failed, incident.updated" />
                    </label>
                    <button type="submit" class="primary" data-test="webhook-add">"Add"</button>
                </ActionForm>
            </section>
            <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match hooks.await {
                        Err(err) => view! { <ErrorBox message=error_text(&err) /> }.into_any(),
                        Ok(list) if list.is_empty() => view! { <p class="muted">"No webhooks."</p> }.into_any(),
                        Ok(list) => view! {
                            <table class="table" data-test="webhook-table">
                                <thead><tr><th>"#"</th><th>"URL"</th><th>"Events"</th><th>"Added"</th><th></th></tr></thead>
                                <tbody>
                                    {list.into_iter().map(|h| view! {
                                        <tr data-test="webhook-row">
                                            <td>{h.id}</td>
                                            <td><code>{h.url.clone()}</code></td>
                                            <td>{h.events.join(", ")}</td>
                                            <td>{format!("{} by {}", when(&h.created_at), h.created_by)}</td>
                                            <td>
                                                <ActionForm action=remove attr:class="inline">
                                                    <input type="hidden" name="id" value=h.id />
                                                    <button type="submit" class="danger">"Remove"</button>
                                                </ActionForm>
                                            </td>
                                        </tr>
                                    }).collect_view()}
                                </tbody>
                            </table>
                        }.into_any(),
                    }
                })}
            </Transition>
            <h2>"Delivery log"</h2>
            <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    match log.await {
                        Err(err) => view! { <ErrorBox message=error_text(&err) /> }.into_any(),
                        Ok(page) if page.items.is_empty() => view! { <p class="muted">"Nothing sent yet."</p> }.into_any(),
                        Ok(page) => view! {
                            <table class="table" data-test="delivery-table">
                                <thead><tr><th>"#"</th><th>"Hook"</th><th>"Event"</th><th>"Status"</th><th>"Attempts"</th><th>"Last answer"</th><th>"Queued"</th><th>"Delivered / next try"</th></tr></thead>
                                <tbody>
                                    {page.items.into_iter().map(|d| view! {
                                        <tr data-test="delivery-row" data-status=d.status.clone()>
                                            <td>{d.id}</td>
                                            <td>{d.webhook_id}</td>
                                            <td><code>{d.event.clone()}</code></td>
                                            <td><StateBadge state=d.status.clone() /></td>
                                            <td>{d.attempts}</td>
                                            <td>{d.last_error.clone().or(d.last_status.map(|s| s.to_string()))}</td>
                                            <td>{when(&d.created_at)}</td>
                                            <td>{d.delivered_at.as_deref().map(when).unwrap_or_else(|| if d.status == "pending" { when(&d.next_attempt_at) } else { "—".into() })}</td>
                                        </tr>
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
