//! Line diffs with intra-line highlights, in a shape both the unified and the side-by-side
//! views render from.

use serde::{Deserialize, Serialize};
use similar::{Algorithm, ChangeTag, TextDiff as SimilarDiff};
use std::time::Duration;

/// Unchanged lines kept around each change; longer unchanged runs are collapsed.
pub const CONTEXT_LINES: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineKind {
    Equal,
    Delete,
    Insert,
}

/// A run of characters within a line; `emphasized` marks the part that actually changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub text: String,
    pub emphasized: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffLine {
    pub kind: LineKind,
    /// 1-based line number on the old side, for equal and deleted lines.
    pub old_no: Option<u32>,
    /// 1-based line number on the new side, for equal and inserted lines.
    pub new_no: Option<u32>,
    pub segments: Vec<Segment>,
}

impl DiffLine {
    pub fn text(&self) -> String {
        self.segments.iter().map(|s| s.text.as_str()).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hunk {
    pub old_start: u32,
    pub old_len: u32,
    pub new_start: u32,
    pub new_len: u32,
    pub lines: Vec<DiffLine>,
}

impl Hunk {
    pub fn header(&self) -> String {
        format!("@@ -{},{} +{},{} @@", self.old_start, self.old_len, self.new_start, self.new_len)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TextDiff {
    pub hunks: Vec<Hunk>,
    pub added: u32,
    pub removed: u32,
    /// True when the diff hit its time bound and is coarser than minimal (still correct).
    pub coarse: bool,
}

/// Diffs `old` against `new` line by line, highlighting changed words inside lines.
/// `deadline` bounds the work (host only; the wasm build passes `None`).
pub fn diff_text(old: &str, new: &str, deadline: Option<Duration>) -> TextDiff {
    let mut config = SimilarDiff::configure();
    config.algorithm(Algorithm::Patience);
    if let Some(deadline) = deadline {
        config.timeout(deadline);
    }
    let started = deadline.map(|_| std::time::Instant::now());
    let diff = config.diff_lines(old, new);
    let coarse = match (started, deadline) {
        (Some(started), Some(deadline)) => started.elapsed() >= deadline,
        _ => false,
    };
    let mut result = TextDiff {
        coarse,
        ..TextDiff::default()
    };
    for group in diff.grouped_ops(CONTEXT_LINES) {
        let (Some(first), Some(last)) = (group.first(), group.last()) else {
            continue;
        };
        let old_range = first.old_range().start..last.old_range().end;
        let new_range = first.new_range().start..last.new_range().end;
        let mut hunk = Hunk {
            old_start: to_u32(old_range.start + 1),
            old_len: to_u32(old_range.len()),
            new_start: to_u32(new_range.start + 1),
            new_len: to_u32(new_range.len()),
            lines: Vec::new(),
        };
        for op in &group {
            for change in diff.iter_inline_changes(op) {
                let kind = match change.tag() {
                    ChangeTag::Equal => LineKind::Equal,
                    ChangeTag::Delete => {
                        result.removed += 1;
                        LineKind::Delete
                    }
                    ChangeTag::Insert => {
                        result.added += 1;
                        LineKind::Insert
                    }
                };
                let segments = change
                    .iter_strings_lossy()
                    .map(|(emphasized, text)| Segment {
                        text: text.trim_end_matches(['\n', '\r']).to_string(),
                        emphasized,
                    })
                    .filter(|segment| !segment.text.is_empty())
                    .collect();
                hunk.lines.push(DiffLine {
                    kind,
                    old_no: change.old_index().map(|i| to_u32(i + 1)),
                    new_no: change.new_index().map(|i| to_u32(i + 1)),
                    segments,
                });
            }
        }
        result.hunks.push(hunk);
    }
    result
}

fn to_u32(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// One row of the side-by-side view: the old line on the left, the new one on the right.
pub type SideBySideRow<'a> = (Option<&'a DiffLine>, Option<&'a DiffLine>);

/// Pairs each run of deletions with the insertions that follow it, so a changed line sits
/// opposite its replacement.
pub fn side_by_side(hunk: &Hunk) -> Vec<SideBySideRow<'_>> {
    fn flush<'a>(rows: &mut Vec<SideBySideRow<'a>>, deleted: &mut Vec<&'a DiffLine>, inserted: &mut Vec<&'a DiffLine>) {
        for i in 0..deleted.len().max(inserted.len()) {
            rows.push((deleted.get(i).copied(), inserted.get(i).copied()));
        }
        deleted.clear();
        inserted.clear();
    }
    let mut rows = Vec::new();
    let mut deleted = Vec::new();
    let mut inserted = Vec::new();
    for line in &hunk.lines {
        match line.kind {
            LineKind::Delete => {
                if !inserted.is_empty() {
                    flush(&mut rows, &mut deleted, &mut inserted);
                }
                deleted.push(line);
            }
            LineKind::Insert => inserted.push(line),
            LineKind::Equal => {
                flush(&mut rows, &mut deleted, &mut inserted);
                rows.push((Some(line), Some(line)));
            }
        }
    }
    flush(&mut rows, &mut deleted, &mut inserted);
    rows
}

/// The hunks cut to their first `limit` lines, and how many lines were left out: a huge
/// diff is rendered a page at a time.
pub fn first_lines(hunks: &[Hunk], limit: usize) -> (Vec<Hunk>, usize) {
    let mut budget = limit;
    let mut kept = Vec::new();
    let mut hidden = 0;
    for hunk in hunks {
        if budget == 0 {
            hidden += hunk.lines.len();
            continue;
        }
        let take = hunk.lines.len().min(budget);
        budget -= take;
        hidden += hunk.lines.len() - take;
        let mut part = hunk.clone();
        part.lines.truncate(take);
        kept.push(part);
    }
    (kept, hidden)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_diff_is_cut_into_pages_of_lines() {
        let old: String = (0..50).map(|i| format!("{i}\n")).collect();
        let new: String = (0..50)
            .map(|i| if i % 10 == 0 { "x\n".to_string() } else { format!("{i}\n") })
            .collect();
        let diff = diff_text(&old, &new, None);
        let total: usize = diff.hunks.iter().map(|h| h.lines.len()).sum();
        let (page, hidden) = first_lines(&diff.hunks, 10);
        assert_eq!(page.iter().map(|h| h.lines.len()).sum::<usize>(), 10);
        assert_eq!(hidden, total - 10);
        assert_eq!(page[0].lines, diff.hunks[0].lines[..10.min(diff.hunks[0].lines.len())].to_vec());
        assert_eq!(first_lines(&diff.hunks, total + 5), (diff.hunks.clone(), 0));
    }

    #[test]
    fn a_hundred_thousand_line_entry_diffs_within_its_bound() {
        let old: String = (0..100_000).map(|i| format!("key{i} = {i}\n")).collect();
        let new: String = (0..100_000)
            .map(|i| {
                if i % 1000 == 0 {
                    format!("key{i} = changed\n")
                } else {
                    format!("key{i} = {i}\n")
                }
            })
            .collect();
        let diff = diff_text(&old, &new, Some(Duration::from_secs(2)));
        // Minimal when the bound allowed it; coarser (never wrong) when it did not.
        if !diff.coarse {
            assert_eq!((diff.added, diff.removed), (100, 100));
            assert_eq!(diff.hunks.len(), 100, "unchanged runs are collapsed between the changes");
        }
        assert!(diff.added >= 100 && diff.removed >= 100);
        let changed: Vec<String> = diff
            .hunks
            .iter()
            .flat_map(|h| &h.lines)
            .filter(|l| l.kind == LineKind::Insert)
            .map(DiffLine::text)
            .collect();
        assert!(changed.contains(&"key99000 = changed".to_string()) || changed.iter().any(|l| l.starts_with("key99000 = changed")));
    }

    #[test]
    fn identical_texts_have_no_hunks() {
        let diff = diff_text("a\nb\n", "a\nb\n", None);
        assert!(diff.hunks.is_empty());
        assert_eq!((diff.added, diff.removed), (0, 0));
    }

    #[test]
    fn changed_line_is_highlighted_inside() {
        let diff = diff_text("[server]\ntimeout = 30\nport = 80\n", "[server]\ntimeout = 45\nport = 80\n", None);
        assert_eq!((diff.added, diff.removed), (1, 1));
        let hunk = &diff.hunks[0];
        assert_eq!(hunk.header(), "@@ -1,3 +1,3 @@");
        let deleted = hunk.lines.iter().find(|l| l.kind == LineKind::Delete).unwrap();
        let inserted = hunk.lines.iter().find(|l| l.kind == LineKind::Insert).unwrap();
        assert_eq!(deleted.text(), "timeout = 30");
        assert_eq!(inserted.text(), "timeout = 45");
        assert_eq!(deleted.old_no, Some(2));
        assert_eq!(inserted.new_no, Some(2));
        let emphasized: Vec<_> = inserted.segments.iter().filter(|s| s.emphasized).map(|s| s.text.as_str()).collect();
        assert_eq!(emphasized, vec!["45"]);
    }

    #[test]
    fn long_unchanged_runs_are_collapsed() {
        let old: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        let new = old.replace("line 10\n", "line ten\n").replace("line 90\n", "line ninety\n");
        let diff = diff_text(&old, &new, None);
        assert_eq!(diff.hunks.len(), 2);
        assert!(diff.hunks.iter().all(|h| h.lines.len() <= 2 * CONTEXT_LINES + 2));
        assert_eq!(diff.hunks[1].old_start, 87);
    }

    #[test]
    fn side_by_side_pairs_replacements() {
        let diff = diff_text("a\nb\nc\n", "a\nB\nc\nd\n", None);
        let rows = side_by_side(&diff.hunks[0]);
        let texts: Vec<(Option<String>, Option<String>)> =
            rows.iter().map(|(l, r)| (l.map(DiffLine::text), r.map(DiffLine::text))).collect();
        assert_eq!(
            texts,
            vec![
                (Some("a".into()), Some("a".into())),
                (Some("b".into()), Some("B".into())),
                (Some("c".into()), Some("c".into())),
                (None, Some("d".into())),
            ]
        );
    }

    #[test]
    fn large_diff_respects_its_deadline() {
        let old: String = (0..100_000).map(|i| format!("{i}\n")).collect();
        let new: String = (0..100_000).map(|i| format!("{}\n", i * 7 % 100_003)).collect();
        let diff = diff_text(&old, &new, Some(Duration::from_millis(200)));
        assert!(diff.added > 0 && diff.removed > 0);
    }
}
