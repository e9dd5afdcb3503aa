//! Import: start from what a node already has. Upload a tarball (modes and owners kept:
//! `tar -C /etc/nginx -czf nginx.tgz .`) or a folder's files; the result is a draft change
//! whose content is exactly those files (formats guessed from extensions and validated,
//! secrets sealed), reviewed and approved like any change. A plain HTML form: it works
//! before (and without) the page's script.

use crate::components::{ErrorBox, layout::Layout};
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_query_map;

#[component]
pub fn ImportPage() -> impl IntoView {
    let query = use_query_map();
    let error = move || query.read().get("error").filter(|e| !e.is_empty());
    view! {
        <Title text="Import · etc-shadow" />
        <Layout title="Import">
            {move || error().map(|message| view! { <ErrorBox message /> })}
            <section class="card" data-test="import">
                <h2>"Import a configuration"</h2>
                <p class="muted">
                    "The files become a draft change on the current revision whose content is exactly them: "
                    "entries the current revision has and the import lacks are deleted. A link, device or file that is not "
                    "UTF-8 text refuses the import. Nothing reaches a shadow until someone else approves it."
                </p>
                <form method="post" action="/api/v1/imports" enctype="multipart/form-data" class="fields" data-test="import-form">
                    <label class="grow">"Message" <input name="message" required value="Import" data-test="import-message" /></label>
                    <label class="grow">"A tarball (.tar or .tar.gz, modes and owners kept)"
                        <input type="file" name="archive" accept=".tar,.tgz,.gz,application/gzip,application/x-tar" data-test="import-archive" />
                    </label>
                    <label class="grow">"Or a folder's files (mode 0644)"
                        <input type="file" name="files" multiple webkitdirectory="" data-test="import-files" />
                    </label>
                    <button type="submit" class="primary" data-test="import-submit">"Import as a draft change"</button>
                </form>
                <p class="muted small">"From a node's shell: " <code>"etc-shadow import /etc/nginx --message \"nginx as found\""</code></p>
            </section>
        </Layout>
    }
}
