//! Paging through 100,000 incidents: the Incidents page's queries, timed on a database
//! filled with a realistic spread (200 shadows, every kind, one year, 2% unresolved).

use crate::{ms, percentile};
use control::incidents::{IncidentFilter, list};
use std::time::{Duration, Instant};

const KINDS: [&str; 7] = ["content", "policy", "missing", "unexpected", "stale", "unreachable", "fenced"];

pub async fn run(count: usize, repeats: usize) {
    let dir = tempfile::tempdir().unwrap();
    let db = control::Db::open(dir.path()).await.unwrap();
    let filled = Instant::now();
    let mut tx = db.begin().await.unwrap();
    let year_start = time::OffsetDateTime::now_utc() - time::Duration::days(365);
    for i in 0..count {
        let opened = year_start + time::Duration::seconds((i as i64) * 365 * 86_400 / count as i64);
        let opened = opened.format(&time::format_description::well_known::Rfc3339).unwrap();
        let shadow = format!("node-{:03}", (i * 7919) % 200);
        let kind = KINDS[(i * 31) % KINDS.len()];
        // The newest 2% are unresolved, one per shadow at most (as the monitor keeps it).
        let unresolved = i + 200 >= count;
        let status = if !unresolved {
            "resolved"
        } else if i % 2 == 0 {
            "open"
        } else {
            "acknowledged"
        };
        sqlx::query(
            "INSERT INTO incidents (shadow, kind, kinds, severity, status, opened_at, last_seen_at, resolved_at, resolution,
             expected_root, observed_root, detected_by, fingerprint)
             VALUES ($1, $2, $3, 'high', $4, $5, $6, $7, $8, $9, $10, 'poll', $11)",
        )
        .bind(&shadow)
        .bind(kind)
        .bind(kind)
        .bind(status)
        .bind(&opened)
        .bind(&opened)
        .bind((!unresolved).then_some(&opened))
        .bind((!unresolved).then_some("self_healed"))
        .bind("a".repeat(64))
        .bind("b".repeat(64))
        .bind(format!("{i:016x}"))
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    println!(
        "Incidents page queries over {count} incidents (filled in {:.1} s), {repeats} runs each, 50 per page:",
        filled.elapsed().as_secs_f64()
    );
    println!();
    let recent = (time::OffsetDateTime::now_utc() - time::Duration::days(30))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let mid = (time::OffsetDateTime::now_utc() - time::Duration::days(180))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let some = |s: &str| Some(s.to_string());
    let cases: Vec<(&str, IncidentFilter)> = vec![
        ("first page, no filter", IncidentFilter::default()),
        (
            "unresolved",
            IncidentFilter {
                status: some("unresolved"),
                ..Default::default()
            },
        ),
        (
            "status open",
            IncidentFilter {
                status: some("open"),
                ..Default::default()
            },
        ),
        (
            "kind fenced",
            IncidentFilter {
                kind: some("fenced"),
                ..Default::default()
            },
        ),
        (
            "one shadow",
            IncidentFilter {
                shadow: some("node-042"),
                ..Default::default()
            },
        ),
        (
            "last 30 days",
            IncidentFilter {
                since: Some(recent.clone()),
                ..Default::default()
            },
        ),
        (
            "a week, half a year ago",
            IncidentFilter {
                since: Some(mid.clone()),
                until: Some(
                    (time::OffsetDateTime::now_utc() - time::Duration::days(173))
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap(),
                ),
                ..Default::default()
            },
        ),
        (
            "one shadow, kind content, resolved",
            IncidentFilter {
                shadow: some("node-042"),
                kind: some("content"),
                status: some("resolved"),
                ..Default::default()
            },
        ),
    ];
    println!("| query | rows | p50 ms | p99 ms |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, filter) in cases {
        let mut times = Vec::with_capacity(repeats);
        let mut rows = 0;
        for _ in 0..repeats {
            let started = Instant::now();
            rows = list(&db, &filter).await.unwrap().items.len();
            times.push(started.elapsed());
        }
        times.sort();
        println!(
            "| {name} | {rows} | {:.2} | {:.2} |",
            ms(percentile(&times, 50.0)),
            ms(percentile(&times, 99.0))
        );
    }
    // Following `next` from the first page to the last, as a person clicking "older".
    let mut filter = IncidentFilter::default();
    let mut pages: Vec<Duration> = Vec::new();
    let mut seen = 0;
    loop {
        let started = Instant::now();
        let page = list(&db, &filter).await.unwrap();
        pages.push(started.elapsed());
        seen += page.items.len();
        match page.next {
            Some(next) => filter.page = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, count, "paging visits every incident once");
    let last = *pages.last().unwrap();
    pages.sort();
    println!(
        "| every page in turn ({} pages) | {seen} | {:.2} | {:.2} |",
        pages.len(),
        ms(percentile(&pages, 50.0)),
        ms(percentile(&pages, 99.0))
    );
    println!("| the last page | | {:.2} | |", ms(last));
    println!();
    db.close().await;
}
