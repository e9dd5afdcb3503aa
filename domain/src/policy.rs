//! An entry's policy: how its file must look on a shadow besides its bytes.

use serde::{Deserialize, Serialize};

/// File mode, owner, group and the secret flag. All of it is part of the entry hash, so a
/// `chmod` or `chown` on a shadow is drift just like an edit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Policy {
    /// Permission bits, at most `0o7777`.
    pub mode: u32,
    /// Owner by name; empty means "not managed" (whoever writes the file owns it).
    pub owner: String,
    /// Group by name; empty means "not managed".
    pub group: String,
    /// Secret entries are encrypted at rest and never shown in clear.
    pub secret: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            mode: 0o644,
            owner: String::new(),
            group: String::new(),
            secret: false,
        }
    }
}

/// The mode was not an octal permission string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid mode {0:?}: expected octal permission bits such as \"0644\"")]
pub struct InvalidMode(pub String);

/// Parses `"0644"`, `"644"` or `"0o644"` into permission bits.
pub fn parse_mode(text: &str) -> Result<u32, InvalidMode> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(InvalidMode(text.to_string()));
    }
    u32::from_str_radix(digits, 8).map_err(|_| InvalidMode(text.to_string()))
}

/// Formats permission bits the way people write them: `0644`.
pub fn format_mode(mode: u32) -> String {
    format!("{mode:04o}")
}

/// Owner and group names: what `useradd` accepts, so they can never smuggle a path.
pub fn valid_principal(name: &str) -> bool {
    name.is_empty()
        || (name.len() <= 32
            && name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_round_trip() {
        assert_eq!(parse_mode("0644"), Ok(0o644));
        assert_eq!(parse_mode("600"), Ok(0o600));
        assert_eq!(parse_mode("0o4755"), Ok(0o4755));
        assert_eq!(format_mode(0o640), "0640");
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("rw-r--r--").is_err());
        assert!(parse_mode("07777777").is_err());
        assert!(parse_mode("").is_err());
    }

    #[test]
    fn principals_are_plain_names() {
        assert!(valid_principal("www-data"));
        assert!(valid_principal(""));
        assert!(!valid_principal("../root"));
        assert!(!valid_principal("Root"));
    }
}
