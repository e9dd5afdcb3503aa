//! Starting from what exists, and going back: a draft change whose content is exactly a
//! set of files found on a node ([`import`]) or an earlier revision ([`restore`]). Both
//! are ordinary changes on the current revision, validated entry by entry, secrets sealed
//! as usual, reviewed and approved like any other: nothing reaches a shadow without a
//! second person's approval.

use crate::{Caller, Db, Error, Result, revisions};
use domain::{
    Role,
    api::{ChangeView, EntryInput, NewChange},
    policy::format_mode,
};
use serde::{Deserialize, Serialize};

/// The most files one import may hold.
pub const MAX_IMPORT_FILES: usize = 10_000;

/// One file of an import: its path under the imported directory, its text and its policy
/// as found (`mode` in octal text; owner and group names, empty when not managed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportFile {
    pub path: String,
    pub content: String,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    /// The format; guessed from the extension when absent.
    #[serde(default)]
    pub format: Option<String>,
}

/// `POST /api/v1/imports`: the files a node holds, as one draft change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewImport {
    pub message: String,
    pub files: Vec<ImportFile>,
}

/// A draft change on the current revision after which the configuration is exactly
/// `import.files`: each file put (unchanged ones left out), each current entry the import
/// lacks deleted. A file named like a secret (`tls.key`) becomes a secret entry; values
/// under secret keys are sealed as in any change.
pub async fn import(db: &Db, caller: &Caller, import: NewImport) -> Result<ChangeView> {
    caller.require(Role::Editor)?;
    if import.files.is_empty() {
        return Err(Error::BadRequest("an import needs at least one file".into()));
    }
    if import.files.len() > MAX_IMPORT_FILES {
        return Err(Error::BadRequest(format!("an import holds at most {MAX_IMPORT_FILES} files")));
    }
    let (base_revision, current) = current_entries(db).await?;
    let mut entries = Vec::with_capacity(import.files.len());
    let mut seen = std::collections::BTreeSet::new();
    for file in import.files {
        if !seen.insert(file.path.clone()) {
            return Err(Error::BadRequest(format!("{} appears twice in the import", file.path)));
        }
        let secret = current
            .get(&file.path)
            .map(|row| row.secret)
            .unwrap_or_else(|| crate::secrets::named_like_a_secret(db, &file.path));
        entries.push(EntryInput {
            path: file.path,
            content: Some(file.content),
            format: file.format,
            mode: Some(file.mode.unwrap_or_else(|| "0644".into())),
            owner: file.owner.filter(|o| !o.is_empty()),
            group: file.group.filter(|g| !g.is_empty()),
            secret: Some(secret),
            delete: false,
        });
    }
    for path in current.keys() {
        if !seen.contains(path) {
            entries.push(delete(path));
        }
    }
    let entries = without_unchanged(db, &current, entries).await?;
    create(db, caller, base_revision, import.message, entries).await
}

/// A draft change on the current revision whose content is revision `number`: a rollback,
/// reviewed like any change (its diff is against the current revision).
pub async fn restore(db: &Db, caller: &Caller, number: i64) -> Result<ChangeView> {
    caller.require(Role::Editor)?;
    let (base_revision, current) = current_entries(db).await?;
    let mut conn = db.read.acquire().await?;
    if !revisions::exists(&mut conn, number).await? {
        return Err(Error::NotFound(format!("no revision {number}")));
    }
    let wanted = revisions::entries(&mut conn, number).await?;
    let mut entries = Vec::new();
    for (path, row) in &wanted {
        if current.get(path).is_some_and(|now| now.entry_hash == row.entry_hash) {
            continue;
        }
        let blob = row
            .blob
            .as_deref()
            .ok_or_else(|| Error::Internal(format!("{path} has no content")))?;
        let content = revisions::blob(&mut conn, &db.keys, blob).await?;
        entries.push(EntryInput {
            path: path.clone(),
            content: Some(String::from_utf8(content).map_err(|_| Error::Internal(format!("{path} is not UTF-8")))?),
            format: Some(row.format.clone()),
            mode: Some(format_mode(u32::try_from(row.mode).unwrap_or(0o644))),
            owner: Some(row.owner.clone()).filter(|o| !o.is_empty()),
            group: Some(row.grp.clone()).filter(|g| !g.is_empty()),
            secret: Some(row.secret),
            delete: false,
        });
    }
    for path in current.keys() {
        if !wanted.contains_key(path) {
            entries.push(delete(path));
        }
    }
    drop(conn);
    if entries.is_empty() {
        return Err(Error::conflict(
            "nothing_to_restore",
            format!("revision {base_revision} already holds what revision {number} held"),
        ));
    }
    create(db, caller, base_revision, format!("Restore revision {number}"), entries).await
}

fn delete(path: &str) -> EntryInput {
    EntryInput {
        path: path.to_string(),
        content: None,
        format: None,
        mode: None,
        owner: None,
        group: None,
        secret: None,
        delete: true,
    }
}

async fn current_entries(db: &Db) -> Result<(i64, revisions::EntrySet)> {
    let mut conn = db.read.acquire().await?;
    let number = revisions::current_number(&mut conn).await?;
    Ok((number, revisions::entries(&mut conn, number).await?))
}

/// Leaves out the puts whose content and policy equal the current entry's.
async fn without_unchanged(db: &Db, current: &revisions::EntrySet, entries: Vec<EntryInput>) -> Result<Vec<EntryInput>> {
    let mut conn = db.read.acquire().await?;
    let mut kept = Vec::with_capacity(entries.len());
    for entry in entries {
        if let (Some(row), Some(content)) = (current.get(&entry.path), entry.content.as_deref()) {
            let same_policy = entry.mode.as_deref() == Some(format_mode(u32::try_from(row.mode).unwrap_or(0)).as_str())
                && entry.owner.as_deref().unwrap_or("") == row.owner
                && entry.group.as_deref().unwrap_or("") == row.grp;
            if same_policy && let Some(blob) = row.blob.as_deref() {
                let stored = revisions::blob(&mut conn, &db.keys, blob).await?;
                if stored == content.as_bytes() {
                    continue;
                }
            }
        }
        kept.push(entry);
    }
    Ok(kept)
}

async fn create(db: &Db, caller: &Caller, base_revision: i64, message: String, entries: Vec<EntryInput>) -> Result<ChangeView> {
    if entries.is_empty() {
        return Err(Error::conflict(
            "nothing_to_import",
            "every file equals the current revision's entry: there is nothing to change",
        ));
    }
    crate::changes::create(
        db,
        caller,
        NewChange {
            base_revision,
            message,
            entries,
        },
    )
    .await
}

/// Reads a directory as an import: every regular file under it, with its mode, owner and
/// group. Nothing is skipped silently: a symlink, a special file, a file that is not UTF-8
/// text or cannot be read refuses the whole import, naming every such path.
pub fn read_directory(dir: &std::path::Path) -> std::result::Result<Vec<ImportFile>, String> {
    use std::os::unix::fs::MetadataExt;
    let mut files = Vec::new();
    let mut problems = Vec::new();
    let mut pending = vec![(dir.to_path_buf(), String::new())];
    while let Some((path, relative)) = pending.pop() {
        let listing = std::fs::read_dir(&path).map_err(|err| format!("cannot list {}: {err}", path.display()))?;
        let mut names: Vec<_> = listing.filter_map(|e| e.ok()).collect();
        names.sort_by_key(|e| e.file_name());
        for entry in names {
            let name = entry.file_name().to_string_lossy().into_owned();
            let shown = if relative.is_empty() {
                name.clone()
            } else {
                format!("{relative}/{name}")
            };
            let meta = match std::fs::symlink_metadata(entry.path()) {
                Ok(meta) => meta,
                Err(err) => {
                    problems.push(format!("{shown}: {err}"));
                    continue;
                }
            };
            if meta.file_type().is_symlink() {
                problems.push(format!("{shown}: a symlink (copy what it points to instead)"));
            } else if meta.is_dir() {
                pending.push((entry.path(), shown));
            } else if !meta.is_file() {
                problems.push(format!("{shown}: not a regular file"));
            } else if meta.len() > 32 * 1024 * 1024 {
                problems.push(format!("{shown}: larger than 32 MiB"));
            } else {
                match std::fs::read(entry.path()) {
                    Err(err) => problems.push(format!("{shown}: {err}")),
                    Ok(bytes) => match String::from_utf8(bytes) {
                        Err(_) => problems.push(format!("{shown}: not UTF-8 text")),
                        Ok(content) => files.push(ImportFile {
                            path: shown,
                            content,
                            mode: Some(format_mode(meta.mode() & 0o7777)),
                            owner: name_of_user(meta.uid()),
                            group: name_of_group(meta.gid()),
                            format: None,
                        }),
                    },
                }
            }
        }
    }
    if !problems.is_empty() {
        problems.sort();
        return Err(format!("cannot import {}:\n  {}", dir.display(), problems.join("\n  ")));
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

fn name_of_user(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

fn name_of_group(gid: u32) -> Option<String> {
    nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name)
}
