//! Drift: how a shadow's observed entries differ from the entries it should hold.
//!
//! Pure functions; the control plane's drift monitor feeds them what it read from SQLite
//! and from the shadow.

use crate::{EntryPath, Policy, hash::entry_hash, policy::parse_mode, protocol::ObservedEntry};
use serde::{Deserialize, Serialize};

/// The kinds of drift, most severe first (the order of [`DriftKind::severity_rank`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftKind {
    /// A second writer: the shadow saw another control plane or a higher epoch, or holds
    /// a revision the primary never made.
    Fenced,
    /// Checks keep failing.
    Unreachable,
    /// Bytes differ.
    Content,
    /// An entry the shadow lacks.
    Missing,
    /// A file the primary does not have.
    Unexpected,
    /// Mode, owner or group differ.
    Policy,
    /// Consistent, but an older revision.
    Stale,
    /// Not drift: the node's reload hook failed after a commit (the files are live, the
    /// service may still run the old ones).
    ReloadFailed,
    /// Not drift: a drill found that the shadow could not take over.
    DrillFailed,
}

impl DriftKind {
    pub const ALL: [DriftKind; 9] = [
        DriftKind::Fenced,
        DriftKind::Unreachable,
        DriftKind::Content,
        DriftKind::Missing,
        DriftKind::Unexpected,
        DriftKind::Policy,
        DriftKind::Stale,
        DriftKind::ReloadFailed,
        DriftKind::DrillFailed,
    ];

    /// Whether this kind is drift (one episode per shadow, judged by the drift monitor),
    /// rather than an operation's failure (a reload, a drill) kept beside it.
    pub fn is_drift(self) -> bool {
        !matches!(self, DriftKind::ReloadFailed | DriftKind::DrillFailed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DriftKind::Fenced => "fenced",
            DriftKind::Unreachable => "unreachable",
            DriftKind::Content => "content",
            DriftKind::Missing => "missing",
            DriftKind::Unexpected => "unexpected",
            DriftKind::Policy => "policy",
            DriftKind::Stale => "stale",
            DriftKind::ReloadFailed => "reload_failed",
            DriftKind::DrillFailed => "drill_failed",
        }
    }

    pub fn parse(text: &str) -> Option<DriftKind> {
        DriftKind::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// `critical` for a second writer, `high` when a shadow serves wrong or no data,
    /// `medium` when the bytes are right but policy or age are not.
    pub fn severity(self) -> &'static str {
        match self {
            DriftKind::Fenced => "critical",
            DriftKind::Unreachable
            | DriftKind::Content
            | DriftKind::Missing
            | DriftKind::Unexpected
            | DriftKind::ReloadFailed
            | DriftKind::DrillFailed => "high",
            DriftKind::Policy | DriftKind::Stale => "medium",
        }
    }
}

impl std::fmt::Display for DriftKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An entry as the primary says the shadow should hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedEntry {
    pub path: String,
    pub entry_hash: String,
    /// Octal, such as `0644`.
    pub mode: String,
    /// Empty when not managed.
    pub owner: String,
    pub group: String,
    pub secret: bool,
    /// Its content is sealed at the control plane: its entry hash may be keyed.
    pub sealed: bool,
}

/// One differing entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryDrift {
    pub path: String,
    /// `content`, `policy`, `missing` or `unexpected`. An entry whose bytes and policy
    /// both differ is `content` with both policies shown.
    pub kind: DriftKind,
    pub expected_hash: Option<String>,
    pub observed_hash: Option<String>,
    /// `0644 root:root`, owner and group only where managed.
    pub expected_policy: Option<String>,
    pub observed_policy: Option<String>,
    /// What the shadow holds at the path when it is not a regular file (`symlink`,
    /// `special`, `unreadable`, `invalid_name`); `observed_policy` then says what it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_kind: Option<String>,
}

/// How an observed entry reads in a drift record: its policy, or what it is instead of a
/// regular file.
fn observed_text(have: &ObservedEntry, owner: &str, group: &str) -> String {
    match (&have.kind, &have.detail) {
        (Some(kind), Some(detail)) => format!("{kind}: {detail}"),
        (Some(kind), None) => kind.clone(),
        _ => policy_text(&have.mode, owner, group),
    }
}

fn policy_text(mode: &str, owner: &str, group: &str) -> String {
    match (owner.is_empty(), group.is_empty()) {
        (true, true) => mode.to_string(),
        _ => format!("{mode} {owner}:{group}"),
    }
}

/// Compares entry by entry. `expected_content` gives the primary's bytes of a path, used
/// to tell a policy-only difference (the shadow's hash equals the primary's bytes under
/// the shadow's policy) from one where the bytes differ too.
///
/// `key` is the content key sealed entries are hashed under (see
/// [`crate::hash::sealed_entry_hash`]); a sealed entry's hash is compared both ways, as
/// one kept before entries were keyed is plain.
pub fn classify(
    expected: &[ExpectedEntry],
    observed: &[ObservedEntry],
    expected_content: impl Fn(&str) -> Option<Vec<u8>>,
    key: Option<&crate::hash::ContentKey>,
) -> Vec<EntryDrift> {
    use std::collections::BTreeMap;
    let observed: BTreeMap<&str, &ObservedEntry> = observed.iter().map(|o| (o.path.as_str(), o)).collect();
    let mut drifts = Vec::new();
    for want in expected {
        let expected_policy = Some(policy_text(&want.mode, &want.owner, &want.group));
        let Some(have) = observed.get(want.path.as_str()) else {
            drifts.push(EntryDrift {
                path: want.path.clone(),
                kind: DriftKind::Missing,
                expected_hash: Some(want.entry_hash.clone()),
                observed_hash: None,
                expected_policy,
                observed_policy: None,
                observed_kind: None,
            });
            continue;
        };
        if have.entry_hash == want.entry_hash {
            continue;
        }
        // Owner and group count only where the primary manages them.
        let have_owner = if want.owner.is_empty() { "" } else { have.owner.as_str() };
        let have_group = if want.group.is_empty() { "" } else { have.group.as_str() };
        let policy_differs = have.kind.is_none() && (have.mode != want.mode || have_owner != want.owner || have_group != want.group);
        let bytes_same = policy_differs
            && EntryPath::parse(&want.path)
                .ok()
                .zip(parse_mode(&have.mode).ok())
                .is_some_and(|(path, mode)| {
                    let policy = Policy {
                        mode,
                        owner: have_owner.to_string(),
                        group: have_group.to_string(),
                        secret: want.secret,
                    };
                    expected_content(&want.path).is_some_and(|bytes| {
                        entry_hash(&path, &policy, &bytes).to_hex() == have.entry_hash
                            || key
                                .filter(|_| want.sealed)
                                .is_some_and(|key| crate::hash::sealed_entry_hash(key, &path, &policy, &bytes).to_hex() == have.entry_hash)
                    })
                });
        drifts.push(EntryDrift {
            path: want.path.clone(),
            kind: if bytes_same { DriftKind::Policy } else { DriftKind::Content },
            expected_hash: Some(want.entry_hash.clone()),
            observed_hash: Some(have.entry_hash.clone()),
            expected_policy,
            observed_policy: Some(observed_text(have, have_owner, have_group)),
            observed_kind: have.kind.clone(),
        });
    }
    let known: std::collections::BTreeSet<&str> = expected.iter().map(|e| e.path.as_str()).collect();
    for (path, have) in observed {
        if !known.contains(path) {
            drifts.push(EntryDrift {
                path: path.to_string(),
                kind: DriftKind::Unexpected,
                expected_hash: None,
                observed_hash: Some(have.entry_hash.clone()),
                expected_policy: None,
                observed_policy: Some(observed_text(have, "", "")),
                observed_kind: have.kind.clone(),
            });
        }
    }
    drifts.sort_by(|a, b| a.path.cmp(&b.path));
    drifts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::entry_hash;

    fn expected(path: &str, content: &str, mode: &str) -> ExpectedEntry {
        let policy = Policy {
            mode: parse_mode(mode).unwrap(),
            ..Default::default()
        };
        ExpectedEntry {
            path: path.into(),
            entry_hash: entry_hash(&EntryPath::parse(path).unwrap(), &policy, content.as_bytes()).to_hex(),
            mode: mode.into(),
            owner: String::new(),
            group: String::new(),
            secret: false,
            sealed: false,
        }
    }

    fn observed(path: &str, content: &str, mode: &str) -> ObservedEntry {
        let policy = Policy {
            mode: parse_mode(mode).unwrap(),
            ..Default::default()
        };
        ObservedEntry {
            path: path.into(),
            entry_hash: entry_hash(&EntryPath::parse(path).unwrap(), &policy, content.as_bytes()).to_hex(),
            mode: mode.into(),
            owner: "root".into(),
            group: "root".into(),
            size: content.len() as i64,
            kind: None,
            detail: None,
        }
    }

    #[test]
    fn every_kind_of_entry_difference_is_named() {
        let want = vec![
            expected("same", "a", "0644"),
            expected("edited", "b", "0644"),
            expected("chmodded", "c", "0640"),
            expected("both", "d", "0640"),
            expected("gone", "e", "0644"),
        ];
        let have = vec![
            observed("same", "a", "0644"),
            observed("edited", "B", "0644"),
            observed("chmodded", "c", "0644"),
            observed("both", "D", "0644"),
            observed("extra", "f", "0600"),
        ];
        let contents = |path: &str| {
            let bytes = match path {
                "same" => "a",
                "edited" => "b",
                "chmodded" => "c",
                "both" => "d",
                "gone" => "e",
                _ => return None,
            };
            Some(bytes.as_bytes().to_vec())
        };
        let drifts = classify(&want, &have, contents, None);
        let kinds: Vec<(&str, DriftKind)> = drifts.iter().map(|d| (d.path.as_str(), d.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                ("both", DriftKind::Content),
                ("chmodded", DriftKind::Policy),
                ("edited", DriftKind::Content),
                ("extra", DriftKind::Unexpected),
                ("gone", DriftKind::Missing),
            ]
        );
        let chmod = drifts.iter().find(|d| d.path == "chmodded").unwrap();
        assert_eq!(chmod.expected_policy.as_deref(), Some("0640"));
        assert_eq!(chmod.observed_policy.as_deref(), Some("0644"));
        assert!(classify(&want[..1], &have[..1], contents, None).is_empty());
    }

    #[test]
    fn kinds_round_trip_and_rank_by_severity() {
        for kind in DriftKind::ALL {
            assert_eq!(DriftKind::parse(kind.as_str()), Some(kind));
        }
        let mut kinds = [DriftKind::Stale, DriftKind::Content, DriftKind::Fenced];
        kinds.sort();
        assert_eq!(kinds[0], DriftKind::Fenced);
        assert_eq!(DriftKind::Fenced.severity(), "critical");
        assert_eq!(DriftKind::Policy.severity(), "medium");
    }
}
