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
    import_via(db, caller, import, serde_json::json!({"door": "api"})).await
}

/// [`import`], with where the files came from kept in the audit log (`change.import`):
/// the command line names the account of the machine it ran under, since whoever runs it
/// there chooses the change's author.
pub async fn import_via(db: &Db, caller: &Caller, import: NewImport, via: serde_json::Value) -> Result<ChangeView> {
    let view = import_files(db, caller, import).await?;
    let mut tx = db.begin().await?;
    crate::audit::append(
        &mut tx,
        &caller.username,
        "change.import",
        &format!("change/{}", view.summary.id),
        serde_json::json!({"entries": view.entries.len(), "via": via}),
    )
    .await?;
    tx.commit().await?;
    Ok(view)
}

async fn import_files(db: &Db, caller: &Caller, import: NewImport) -> Result<ChangeView> {
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
            // Given even when empty: a missing owner would keep the current entry's, and
            // the result must be exactly the files as imported.
            owner: Some(file.owner.unwrap_or_default()),
            group: Some(file.group.unwrap_or_default()),
            secret: Some(secret),
            delete: false,
        });
    }
    for path in current.keys() {
        if !seen.contains(path) {
            entries.push(EntryInput::deletion(path.as_str()));
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
            // Given even when empty (unmanaged): a missing one would keep the current's.
            owner: Some(row.owner.clone()),
            group: Some(row.grp.clone()),
            secret: Some(row.secret),
            delete: false,
        });
    }
    for path in current.keys() {
        if !wanted.contains_key(path) {
            entries.push(EntryInput::deletion(path.as_str()));
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
    use std::os::unix::{
        ffi::OsStrExt,
        fs::{MetadataExt, OpenOptionsExt},
    };
    let flags = |extra: nix::fcntl::OFlag| {
        (nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_NOCTTY | extra).bits()
    };
    // The named directory may itself be a link (`/etc/nginx -> …`); nothing under it is
    // followed. Each directory is read through its open descriptor (`/proc/self/fd/N`);
    // each name is looked at first (`lstat`), only a regular file or a directory is
    // opened (a device is never opened: that can act), and what was opened must be what
    // was looked at, so a name swapped for a link meanwhile is refused, never followed.
    let top = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_DIRECTORY.bits())
        .open(dir)
        .map_err(|err| format!("cannot open {}: {err}", dir.display()))?;
    let mut files = Vec::new();
    let mut problems = Vec::new();
    let mut pending = vec![(top, String::new())];
    while let Some((handle, relative)) = pending.pop() {
        let held = std::path::PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&handle)));
        let listing = std::fs::read_dir(&held).map_err(|err| format!("cannot list {relative:?}: {err}"))?;
        let mut names: Vec<std::ffi::OsString> = listing.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
        names.sort();
        for name in names {
            let shown_name = String::from_utf8_lossy(name.as_bytes()).into_owned();
            let shown = if relative.is_empty() {
                shown_name
            } else {
                format!("{relative}/{shown_name}")
            };
            let path = held.join(&name);
            let looked = match std::fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(err) => {
                    problems.push(format!("{shown}: {err}"));
                    continue;
                }
            };
            let kind = looked.file_type();
            if kind.is_symlink() {
                problems.push(format!("{shown}: a symlink (copy what it points to instead)"));
                continue;
            }
            if !kind.is_file() && !kind.is_dir() {
                problems.push(format!("{shown}: not a regular file (a device, fifo or socket)"));
                continue;
            }
            let extra = if kind.is_dir() {
                nix::fcntl::OFlag::O_DIRECTORY
            } else {
                nix::fcntl::OFlag::empty()
            };
            let opened = std::fs::OpenOptions::new().read(true).custom_flags(flags(extra)).open(&path);
            let (file, meta) = match opened.and_then(|file| file.metadata().map(|meta| (file, meta))) {
                Ok(found) if found.1.dev() == looked.dev() && found.1.ino() == looked.ino() => found,
                Ok(_) => {
                    problems.push(format!("{shown}: replaced while it was read"));
                    continue;
                }
                Err(err) => {
                    problems.push(format!("{shown}: {err}"));
                    continue;
                }
            };
            if meta.is_dir() {
                pending.push((file, shown));
                continue;
            }
            let mut content = Vec::new();
            let read = std::io::Read::read_to_end(&mut std::io::Read::take(&file, 32 * 1024 * 1024 + 1), &mut content);
            match read {
                Err(err) => problems.push(format!("{shown}: {err}")),
                Ok(_) if content.len() > 32 * 1024 * 1024 => problems.push(format!("{shown}: larger than 32 MiB")),
                Ok(_) => match String::from_utf8(content) {
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

/// The most bytes an archive may unpack to.
pub const MAX_ARCHIVE_UNPACKED: u64 = 64 * 1024 * 1024;

/// Reads a tar archive (gzip-compressed or not, as `tar -C /etc/nginx -czf nginx.tgz .`
/// makes it) as an import: every regular file with its mode and, where the archive names
/// them, owner and group. Bounded: it unpacks to at most [`MAX_ARCHIVE_UNPACKED`] bytes
/// and [`MAX_IMPORT_FILES`] files, so no archive (a gzip bomb) can exhaust the server. A
/// link, device or fifo refuses the whole import, naming every such path.
pub fn read_archive(bytes: &[u8]) -> std::result::Result<Vec<ImportFile>, String> {
    use std::io::Read;
    let gzip = bytes.starts_with(&[0x1f, 0x8b]);
    let source: Box<dyn Read + '_> = if gzip {
        Box::new(flate2::read::GzDecoder::new(bytes))
    } else {
        Box::new(bytes)
    };
    // One byte past the bound tells "too large" from "exactly at the bound".
    let mut bounded = source.take(MAX_ARCHIVE_UNPACKED + 1);
    let mut unpacked = Vec::new();
    bounded
        .read_to_end(&mut unpacked)
        .map_err(|err| format!("the archive cannot be read: {err}"))?;
    if unpacked.len() as u64 > MAX_ARCHIVE_UNPACKED {
        return Err(format!(
            "the archive unpacks to more than {} MiB",
            MAX_ARCHIVE_UNPACKED / (1024 * 1024)
        ));
    }
    let mut archive = tar::Archive::new(unpacked.as_slice());
    let mut files = Vec::new();
    let mut problems = Vec::new();
    let entries = archive.entries().map_err(|err| format!("not a tar archive: {err}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|err| format!("the archive is damaged: {err}"))?;
        let raw = entry.path().map_err(|err| format!("an archive path is not valid: {err}"))?;
        let path = raw.to_string_lossy().trim_start_matches("./").trim_end_matches('/').to_string();
        let kind = entry.header().entry_type();
        if path.is_empty() || path == "." || kind.is_dir() || kind.is_pax_global_extensions() {
            continue;
        }
        if !kind.is_file() {
            problems.push(format!("{path}: not a regular file (a link, device or fifo)"));
            continue;
        }
        if files.len() >= MAX_IMPORT_FILES {
            return Err(format!("an import holds at most {MAX_IMPORT_FILES} files"));
        }
        let mut content = Vec::new();
        entry
            .read_to_end(&mut content)
            .map_err(|err| format!("{path}: cannot be read: {err}"))?;
        let Ok(content) = String::from_utf8(content) else {
            problems.push(format!("{path}: not UTF-8 text"));
            continue;
        };
        let header = entry.header();
        let name = |value: std::io::Result<Option<&str>>| value.ok().flatten().filter(|n| !n.is_empty()).map(str::to_string);
        files.push(ImportFile {
            mode: Some(format_mode(header.mode().map_err(|err| format!("{path}: {err}"))? & 0o7777)),
            owner: name(header.username().map_err(std::io::Error::other)),
            group: name(header.groupname().map_err(std::io::Error::other)),
            path,
            content,
            format: None,
        });
    }
    if !problems.is_empty() {
        problems.sort();
        return Err(format!("cannot import the archive:\n  {}", problems.join("\n  ")));
    }
    if files.is_empty() {
        return Err("the archive holds no file".into());
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(entries: &[(&str, &[u8], u32, tar::EntryType)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, content, mode, kind) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_size(content.len() as u64);
            header.set_mode(*mode);
            header.set_username("root").unwrap();
            header.set_groupname("adm").unwrap();
            if kind.is_symlink() {
                header.set_link_name("/etc/passwd").unwrap();
            }
            builder.append_data(&mut header, path, *content).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn a_directory_with_a_fifo_or_a_link_is_refused_without_opening_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.conf"), "x").unwrap();
        nix::unistd::mkfifo(&dir.path().join("pipe"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();
        // A fifo opened for reading would wait for a writer forever: it is never opened.
        let refused = read_directory(dir.path()).unwrap_err();
        assert!(refused.contains("pipe: not a regular file"), "{refused}");
        assert!(refused.contains("link: a symlink"), "{refused}");
        std::fs::remove_file(dir.path().join("pipe")).unwrap();
        std::fs::remove_file(dir.path().join("link")).unwrap();
        let files = read_directory(dir.path()).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].content, "x");
    }

    #[test]
    fn a_gzipped_tarball_keeps_modes_and_owners() {
        let tar = archive(&[
            ("./nginx.conf", b"events {}\n", 0o644, tar::EntryType::Regular),
            ("./conf.d/site.conf", b"listen 80;\n", 0o640, tar::EntryType::Regular),
        ]);
        let files = read_archive(&gzip(&tar)).unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].path, "conf.d/site.conf");
        assert_eq!(files[0].mode.as_deref(), Some("0640"));
        assert_eq!((files[0].owner.as_deref(), files[0].group.as_deref()), (Some("root"), Some("adm")));
        assert_eq!(read_archive(&tar).unwrap(), files, "plain tar reads the same");
    }

    #[test]
    fn links_and_bombs_are_refused_with_the_reason() {
        let with_link = archive(&[
            ("a.conf", b"x", 0o644, tar::EntryType::Regular),
            ("evil", b"", 0o777, tar::EntryType::Symlink),
        ]);
        assert!(read_archive(&with_link).unwrap_err().contains("evil: not a regular file"));
        // 200 MiB of zeros compress to a few hundred KiB.
        let zeros = vec![0u8; 200 * 1024 * 1024];
        let bomb = gzip(&archive(&[("big", &zeros, 0o644, tar::EntryType::Regular)]));
        assert!(bomb.len() < 1024 * 1024);
        assert!(read_archive(&bomb).unwrap_err().contains("more than 64 MiB"));
        assert!(read_archive(b"not an archive at all").is_err());
    }
}
