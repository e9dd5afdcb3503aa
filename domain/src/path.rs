//! Entry paths: relative, normalised, and unable to escape the directory they live in.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest accepted path, in bytes. Deep enough for any real configuration tree.
pub const MAX_PATH_LEN: usize = 1024;

/// A validated, normalised relative path such as `nginx/site.conf`.
///
/// Normalisation folds repeated and trailing slashes and `.` segments; anything that could
/// point outside the configuration root (`..`, a leading `/`, NUL) is refused rather than
/// repaired, because a path that needs repairing is a sign of a confused or hostile client.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EntryPath(String);

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path is longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    #[error("path must be relative (no leading '/')")]
    Absolute,
    #[error("path must not contain '..'")]
    ParentSegment,
    #[error("path must not contain NUL or control characters")]
    ControlCharacter,
    #[error("path must not contain a backslash")]
    Backslash,
    #[error("names starting with '..' are reserved for the shadow's own files")]
    Reserved,
}

impl EntryPath {
    /// Validates and normalises `raw`.
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        if raw.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong);
        }
        if raw.chars().any(|c| c.is_control()) {
            return Err(PathError::ControlCharacter);
        }
        if raw.contains('\\') {
            return Err(PathError::Backslash);
        }
        if raw.starts_with('/') {
            return Err(PathError::Absolute);
        }
        let mut segments = Vec::new();
        for segment in raw.split('/') {
            match segment {
                "" | "." => continue,
                ".." => return Err(PathError::ParentSegment),
                // A shadow keeps its generations and links under such names (`..data`).
                reserved if reserved.starts_with("..") => return Err(PathError::Reserved),
                other => segments.push(other),
            }
        }
        if segments.is_empty() {
            return Err(PathError::Empty);
        }
        Ok(EntryPath(segments.join("/")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EntryPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for EntryPath {
    type Error = PathError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        EntryPath::parse(&value)
    }
}

impl From<EntryPath> for String {
    fn from(value: EntryPath) -> Self {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_harmless_forms() {
        assert_eq!(EntryPath::parse("nginx//site.conf").unwrap().as_str(), "nginx/site.conf");
        assert_eq!(EntryPath::parse("./a/./b/").unwrap().as_str(), "a/b");
        assert_eq!(EntryPath::parse("app.toml").unwrap().as_str(), "app.toml");
    }

    #[test]
    fn refuses_escapes_and_garbage() {
        assert_eq!(EntryPath::parse("../etc/passwd"), Err(PathError::ParentSegment));
        assert_eq!(EntryPath::parse("a/../../b"), Err(PathError::ParentSegment));
        assert_eq!(EntryPath::parse("/etc/passwd"), Err(PathError::Absolute));
        assert_eq!(EntryPath::parse("a\0b"), Err(PathError::ControlCharacter));
        assert_eq!(EntryPath::parse("a\\b"), Err(PathError::Backslash));
        assert_eq!(EntryPath::parse(""), Err(PathError::Empty));
        assert_eq!(EntryPath::parse("./"), Err(PathError::Empty));
        assert_eq!(EntryPath::parse(&"a".repeat(MAX_PATH_LEN + 1)), Err(PathError::TooLong));
    }
}
