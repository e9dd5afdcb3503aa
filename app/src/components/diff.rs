//! The visual diff: every changed entry with its policy changes and a unified or
//! side-by-side line diff with intra-line highlights.

use domain::{
    api::{DiffView, EntryDiff},
    diff::{DiffLine, Hunk, LineKind, side_by_side},
};
use leptos::prelude::*;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    Unified,
    SideBySide,
}

/// A diff's toolbar heading: `revision 3 → change 7: 2 entries changed`.
fn heading(from: &str, to: &str, count: usize) -> String {
    format!("{from} → {to}: {count} entr{} changed", if count == 1 { "y" } else { "ies" })
}

#[component]
pub fn DiffViewer(diff: DiffView) -> impl IntoView {
    let layout = RwSignal::new(Layout::Unified);
    let count = diff.entries.len();
    let entries = diff.entries;
    view! {
        <section class="diff" data-test="diff">
            <div class="diff-toolbar">
                <span class="muted">{heading(&diff.from, &diff.to, count)}</span>
                <LayoutToggle layout />
            </div>
            {entries.into_iter().map(|entry| view! { <EntryDiffView entry layout /> }).collect_view()}
        </section>
    }
}

/// A change's diff a page at a time: the first page as the server rendered it, then
/// "Show more" loads the next (a 10,000-entry change is not one page of megabytes).
#[component]
pub fn PagedDiff(first: domain::api::DiffPage, change_id: i64) -> impl IntoView {
    let layout = RwSignal::new(Layout::Unified);
    let total = first.total;
    let heading = heading(&first.from, &first.to, total);
    let entries = RwSignal::new(first.entries);
    let next = RwSignal::new(first.next);
    // Each page says how many differ now (another editor may have changed the change).
    let total = RwSignal::new(total);
    let failure = RwSignal::new(None::<String>);
    let more = Action::new(move |after: &String| {
        let after = after.clone();
        async move {
            match crate::api::change_diff(change_id, Some(after)).await {
                Ok(page) => {
                    entries.update(|all| all.extend(page.entries));
                    total.set(page.total);
                    next.set(page.next);
                    failure.set(None);
                }
                Err(err) => failure.set(Some(err.to_string())),
            }
        }
    });
    view! {
        <section class="diff" data-test="diff" data-total=total>
            <div class="diff-toolbar">
                <span class="muted">{heading}</span>
                <LayoutToggle layout />
            </div>
            <For each=move || entries.get() key=|entry| entry.path.clone() let:entry>
                <EntryDiffView entry layout />
            </For>
            {move || next.get().map(|after| {
                let shown = entries.with(Vec::len);
                let total = total.get().max(shown);
                view! {
                    <p class="diff-more">
                        <button type="button" data-test="diff-more" disabled=move || more.pending().get() on:click=move |_| { more.dispatch(after.clone()); }>
                            {format!("Show the next {} ({shown} of {total} shown)", crate::api::DIFF_PAGE_ENTRIES.min(total.saturating_sub(shown)).max(1))}
                        </button>
                    </p>
                }
            })}
            {move || failure.get().map(|message| view! { <p class="bad" data-test="diff-more-failed">{message}</p> })}
        </section>
    }
}

/// The unified / side-by-side switch of a diff.
#[component]
fn LayoutToggle(layout: RwSignal<Layout>) -> impl IntoView {
    view! {
        <div class="toggle" role="group" aria-label="Diff layout">
            <button
                type="button"
                data-test="diff-unified"
                class:active=move || layout.get() == Layout::Unified
                on:click=move |_| layout.set(Layout::Unified)
            >
                "Unified"
            </button>
            <button
                type="button"
                data-test="diff-split"
                class:active=move || layout.get() == Layout::SideBySide
                on:click=move |_| layout.set(Layout::SideBySide)
            >
                "Side by side"
            </button>
        </div>
    }
}

#[component]
fn EntryDiffView(entry: EntryDiff, layout: RwSignal<Layout>) -> impl IntoView {
    let status_class = format!("entry-status status-{}", entry.status);
    let policy = entry.policy_changes.clone();
    let keys = entry.keys.clone();
    let hunks = entry.text.as_ref().map(|t| t.hunks.clone()).unwrap_or_default();
    let stats = entry.text.as_ref().map(|t| format!("+{} −{}", t.added, t.removed));
    let secret_note = entry
        .secret_changed
        .then(|| view! { <p class="secret-note" data-test="secret-changed">"Secret content changed (not shown)."</p> });
    let hidden_note = entry
        .hidden
        .clone()
        .map(|why| view! { <p class="secret-note" data-test="content-hidden">{format!("Content not shown: {why}.")}</p> });
    let hunks = StoredValue::new(hunks);
    // A huge diff is rendered a page of lines at a time, so the page stays responsive.
    let shown = RwSignal::new(PAGE_LINES);
    view! {
        <article class="entry-diff" data-test="entry-diff" data-path=entry.path.clone()>
            <header>
                <code class="path">{entry.path.clone()}</code>
                <span class=status_class>{entry.status.clone()}</span>
                {stats.map(|s| view! { <span class="stats">{s}</span> })}
            </header>
            {(!policy.is_empty()).then(|| view! {
                <ul class="policy-changes" data-test="policy-changes">
                    {policy.into_iter().map(|p| view! { <li>{p}</li> }).collect_view()}
                </ul>
            })}
            {secret_note}
            {hidden_note}
            {keys.map(|keys| if keys.is_empty() {
                view! { <p class="muted" data-test="keys-formatting-only">"Only formatting differs: every key has the same value."</p> }.into_any()
            } else {
                view! {
                    <ul class="key-changes" data-test="key-changes">
                        {keys.into_iter().map(|k| view! { <li data-test="key-change" data-key=k.key.clone()><code>{k.to_string()}</code></li> }).collect_view()}
                    </ul>
                }.into_any()
            })}
            {move || {
                let (hunks, hidden) = hunks.with_value(|all| domain::diff::first_lines(all, shown.get()));
                if hunks.is_empty() {
                    return ().into_any();
                }
                let table = match layout.get() {
                    Layout::Unified => view! { <UnifiedTable hunks /> }.into_any(),
                    Layout::SideBySide => view! { <SplitTable hunks /> }.into_any(),
                };
                view! {
                    {table}
                    {(hidden > 0).then(|| view! {
                        <p class="muted" data-test="diff-more">
                            {format!("{hidden} more line(s) of this diff are not shown. ")}
                            <button type="button" class="link" data-test="diff-show-more" on:click=move |_| shown.update(|n| *n += PAGE_LINES)>
                                {format!("Show {} more", hidden.min(PAGE_LINES))}
                            </button>
                        </p>
                    })}
                }
                .into_any()
            }}
        </article>
    }
}

/// Lines of one entry's diff rendered at first, and added by each "show more".
const PAGE_LINES: usize = 1000;

fn kind_class(kind: LineKind) -> &'static str {
    match kind {
        LineKind::Equal => "eq",
        LineKind::Delete => "del",
        LineKind::Insert => "ins",
    }
}

fn segments(line: &DiffLine) -> impl IntoView + use<> {
    line.segments
        .iter()
        .map(|segment| {
            let text = segment.text.clone();
            if segment.emphasized {
                view! { <mark>{text}</mark> }.into_any()
            } else {
                view! { <span>{text}</span> }.into_any()
            }
        })
        .collect_view()
}

fn number(value: Option<u32>) -> String {
    value.map(|n| n.to_string()).unwrap_or_default()
}

#[component]
fn UnifiedTable(hunks: Vec<Hunk>) -> impl IntoView {
    view! {
        <table class="code unified" data-test="diff-table-unified">
            {hunks.into_iter().map(|hunk| {
                let header = hunk.header();
                view! {
                    <tbody>
                        <tr class="hunk"><td colspan="3">{header}</td></tr>
                        {hunk.lines.iter().map(|line| {
                            let sign = match line.kind { LineKind::Equal => " ", LineKind::Delete => "-", LineKind::Insert => "+" };
                            view! {
                                <tr class=kind_class(line.kind) data-test=format!("line-{}", kind_class(line.kind))>
                                    <td class="ln">{number(line.old_no)}</td>
                                    <td class="ln">{number(line.new_no)}</td>
                                    <td class="src"><span class="sign">{sign}</span>{segments(line)}</td>
                                </tr>
                            }
                        }).collect_view()}
                    </tbody>
                }
            }).collect_view()}
        </table>
    }
}

#[component]
fn SplitTable(hunks: Vec<Hunk>) -> impl IntoView {
    view! {
        <table class="code split" data-test="diff-table-split">
            {hunks.into_iter().map(|hunk| {
                let header = hunk.header();
                let rows: Vec<(Option<DiffLine>, Option<DiffLine>)> =
                    side_by_side(&hunk).into_iter().map(|(l, r)| (l.cloned(), r.cloned())).collect();
                view! {
                    <tbody>
                        <tr class="hunk"><td colspan="4">{header}</td></tr>
                        {rows.into_iter().map(|(left, right)| {
                            let left_class = left.as_ref().map_or("empty", |l| kind_class(l.kind));
                            let right_class = right.as_ref().map_or("empty", |r| kind_class(r.kind));
                            view! {
                                <tr>
                                    <td class=format!("ln {left_class}")>{number(left.as_ref().and_then(|l| l.old_no))}</td>
                                    <td class=format!("src {left_class}")>{left.as_ref().map(segments)}</td>
                                    <td class=format!("ln {right_class}")>{number(right.as_ref().and_then(|r| r.new_no))}</td>
                                    <td class=format!("src {right_class}")>{right.as_ref().map(segments)}</td>
                                </tr>
                            }
                        }).collect_view()}
                    </tbody>
                }
            }).collect_view()}
        </table>
    }
}
