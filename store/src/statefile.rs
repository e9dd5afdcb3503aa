//! The store's durable state in two slots written in place.
//!
//! A state saved by writing a temporary file, renaming it over the old one and fsyncing
//! the directory creates an inode every time, and on ext4 an inode costs more than the
//! fsync of its few kilobytes (0.3 to 0.5 ms on the machine in docs/performance.md). A
//! prepare and a commit each save the state once, so that was most of a small rollout's
//! time on a shadow. Here the state has two files, `state.a` and `state.b`, made once;
//! save number `n` overwrites slot `n % 2` in place and fdatasyncs it. Each slot starts
//! with a header line, `etc-shadow-state <n> <blake3 of the rest>`, and the newest slot
//! whose hash matches is the state. A write torn by a crash or a full disk fails its hash
//! and the other slot, the previous save, is read: it was never overwritten, because the
//! next save always goes to the slot the current state is not in.
//!
//! The state of earlier versions (`state.json`, replaced by rename) is read when there is
//! no slot yet, and removed once the first slot is durable.
//!
//! A store rereads its state at every operation (another process may have changed it
//! between two operations; the state lock keeps them from overlapping). Reading means
//! parsing the manifests of the live and staged generations, a few megabytes for a large
//! set, so the slots' header lines are compared with those seen at the last read or write
//! first: every save writes a new save number and the hash of what it saved there.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

const SLOTS: [&str; 2] = ["state.a", "state.b"];
const LEGACY: &str = "state.json";
const MAGIC: &str = "etc-shadow-state";

/// A state read from the slots: its save number and its body.
pub struct Loaded {
    pub seq: u64,
    pub body: Vec<u8>,
    /// Where it was read from, for messages.
    pub file: PathBuf,
}

/// The two slots of one state directory, and what was last seen of them.
#[derive(Debug)]
pub struct StateFile {
    dir: PathBuf,
    /// The save number of the state in memory (0: none saved in slots yet).
    seq: u64,
    /// The slot it is in (`None`: none yet, or read from the legacy file).
    current: Option<usize>,
    /// The slots' header lines when last read or written (`None`: missing).
    seen: Option<[Option<Vec<u8>>; 2]>,
}

/// Each slot's header line (its save number and hash), without reading the rest.
fn headers(dir: &Path) -> io::Result<[Option<Vec<u8>>; 2]> {
    let mut out = [None, None];
    for (slot, name) in SLOTS.iter().enumerate() {
        let mut file = match open_no_follow(&dir.join(name)) {
            Ok(Some(file)) => file,
            Ok(None) => continue,
            // Unreadable (a link planted there, say): [`StateFile::load`] says why.
            Err(_) => {
                out[slot] = Some(Vec::new());
                continue;
            }
        };
        let mut head = vec![0; 128];
        let mut filled = 0;
        while filled < head.len() {
            match file.read(&mut head[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        head.truncate(filled);
        if let Some(end) = head.iter().position(|b| *b == b'\n') {
            head.truncate(end);
        }
        out[slot] = Some(head);
    }
    Ok(out)
}

fn open_no_follow(path: &Path) -> io::Result<Option<File>> {
    match OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
    {
        Ok(file) => Ok(Some(file)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

/// Reads a file without following a symlink at its last component.
fn read_no_follow(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let Some(mut file) = open_no_follow(path)? else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

/// A slot's save number and body, or `None` when its header or hash does not hold.
fn parse_slot(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let newline = bytes.iter().position(|b| *b == b'\n')?;
    let header = std::str::from_utf8(&bytes[..newline]).ok()?;
    let body = &bytes[newline + 1..];
    let mut parts = header.split(' ');
    if parts.next()? != MAGIC {
        return None;
    }
    let seq: u64 = parts.next()?.parse().ok()?;
    let hash = parts.next()?;
    if parts.next().is_some() || seq == 0 || blake3::hash(body).to_hex().as_str() != hash {
        return None;
    }
    Some((seq, body))
}

impl StateFile {
    pub fn new(dir: &Path) -> StateFile {
        StateFile {
            dir: dir.to_path_buf(),
            seq: 0,
            current: None,
            seen: None,
        }
    }

    /// The state on disk when it may differ from the one last read or written (`None`
    /// when nothing changed since). `Some(None)`: there is no state at all.
    pub fn load_if_changed(&mut self) -> io::Result<Option<Option<Loaded>>> {
        let now = headers(&self.dir)?;
        if now.iter().any(Option::is_some) && self.seen.as_ref() == Some(&now) {
            return Ok(None);
        }
        self.load().map(Some)
    }

    /// Reads the newest intact slot (or the legacy file when no slot exists).
    pub fn load(&mut self) -> io::Result<Option<Loaded>> {
        let before = headers(&self.dir)?;
        let mut best: Option<Loaded> = None;
        let mut current = None;
        let mut any_slot = false;
        let mut torn = Vec::new();
        for (slot, name) in SLOTS.iter().enumerate() {
            let path = self.dir.join(name);
            let Some(bytes) = read_no_follow(&path)? else { continue };
            any_slot = true;
            match parse_slot(&bytes) {
                Some((seq, body)) if best.as_ref().is_none_or(|b| seq > b.seq) => {
                    current = Some(slot);
                    best = Some(Loaded {
                        seq,
                        body: body.to_vec(),
                        file: path,
                    });
                }
                Some(_) => {}
                None => torn.push(path),
            }
        }
        if any_slot && best.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("no intact state in {}: both slots fail their hash", self.dir.display()),
            ));
        }
        for path in torn {
            // A save torn by a crash: the other slot is the state, and this one is the
            // next to be written.
            tracing::warn!(path = %path.display(), "a state slot fails its hash (a save was interrupted); the other one is used");
        }
        if best.is_none() {
            let path = self.dir.join(LEGACY);
            if let Some(body) = read_no_follow(&path)? {
                best = Some(Loaded { seq: 0, body, file: path });
            }
        }
        self.seq = best.as_ref().map_or(0, |b| b.seq);
        self.current = current.filter(|_| best.as_ref().is_some_and(|b| b.seq > 0));
        // Headers from before the reads: a save meanwhile shows as a change next time.
        self.seen = Some(before);
        Ok(best)
    }

    /// Saves `body` as the next state: the slot the current one is not in is overwritten
    /// and fdatasynced. `charge` is asked first for the bytes about to be written (a
    /// simulated full disk in tests).
    pub fn save(&mut self, body: &[u8], charge: impl FnOnce(usize) -> io::Result<()>) -> io::Result<()> {
        let seq = self
            .seq
            .checked_add(1)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "the state's save number is at its end"))?;
        // The slot the current state is not in (the first one when there is none).
        let slot = self.current.map_or(0, |current| 1 - current);
        let path = self.dir.join(SLOTS[slot]);
        let header = format!("{MAGIC} {seq} {}\n", blake3::hash(body).to_hex());
        let mut bytes = Vec::with_capacity(header.len() + body.len());
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(body);
        charge(bytes.len())?;
        // A slot is written in place only when it is a file of the store's own (not a
        // link, not shared with another name); otherwise it is made whole under a
        // temporary name and renamed there, so no crash leaves a slot half made.
        let in_place = OpenOptions::new()
            .write(true)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&path)
            .ok()
            .filter(|file| file.metadata().is_ok_and(|m| m.is_file() && m.nlink() == 1));
        match in_place {
            Some(mut file) => {
                let written = crate::timed(|t| &mut t.write, || file.write_all(&bytes))
                    .and_then(|()| file.set_len(bytes.len() as u64))
                    .and_then(|()| sync_data(&file));
                if let Err(err) = written {
                    // Whatever reached the slot is not a save: it must not be read as one
                    // (the other slot is the state), and it is read again next time.
                    let _ = file.set_len(0).and_then(|()| file.sync_data());
                    self.seen = None;
                    return Err(err);
                }
            }
            None => {
                let temporary = self.dir.join(format!("{}.tmp", SLOTS[slot]));
                let _ = fs::remove_file(&temporary);
                let made = (|| {
                    let mut file = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
                        .open(&temporary)?;
                    crate::timed(|t| &mut t.write, || file.write_all(&bytes))?;
                    sync_data(&file)?;
                    fs::rename(&temporary, &path)?;
                    File::open(&self.dir)?.sync_all()
                })();
                if let Err(err) = made {
                    let _ = fs::remove_file(&temporary);
                    self.seen = None;
                    return Err(err);
                }
            }
        }
        self.seq = seq;
        self.current = Some(slot);
        self.seen = headers(&self.dir).ok();
        // The legacy file is stale from the first slot on (slots win over it); removed so
        // nobody reads it by mistake (a failure to remove it changes nothing).
        if fs::remove_file(self.dir.join(LEGACY)).is_ok() {
            let _ = File::open(&self.dir).and_then(|dir| dir.sync_all());
        }
        Ok(())
    }

    /// The paths of the state's files, for messages.
    pub fn describe(&self) -> String {
        format!("{}/state.{{a,b}}", self.dir.display())
    }
}

fn sync_data(file: &File) -> io::Result<()> {
    crate::timed(|t| &mut t.fsync, || file.sync_data())
}

/// The body of the newest intact state in `dir`, for tests that inspect or tamper with it.
pub fn read_state_body(dir: &Path) -> Option<Vec<u8>> {
    StateFile::new(dir).load().ok().flatten().map(|l| l.body)
}

/// Writes `body` as the next state in `dir` (tests that plant a state).
pub fn write_state_body(dir: &Path, body: &[u8]) -> io::Result<()> {
    let mut file = StateFile::new(dir);
    file.load()?;
    file.save(body, |_| Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_slot_leaves_the_previous_save_and_the_next_save_overwrites_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = StateFile::new(dir.path());
        assert!(state.load().unwrap().is_none());
        state.save(b"one", |_| Ok(())).unwrap();
        state.save(b"two", |_| Ok(())).unwrap();
        assert_eq!(read_state_body(dir.path()).unwrap(), b"two");
        // A crash in the middle of the third save (it goes to the slot of the first).
        let slot = dir.path().join("state.a");
        let mut bytes = fs::read(&slot).unwrap();
        bytes.truncate(bytes.len() - 1);
        bytes.extend_from_slice(b"X");
        fs::write(&slot, &bytes).unwrap();
        let mut reopened = StateFile::new(dir.path());
        assert_eq!(reopened.load().unwrap().unwrap().body, b"two", "the other slot");
        reopened.save(b"three", |_| Ok(())).unwrap();
        assert_eq!(read_state_body(dir.path()).unwrap(), b"three");
        assert!(parse_slot(&fs::read(&slot).unwrap()).is_some(), "the torn slot was the one written");
        assert!(
            parse_slot(&fs::read(dir.path().join("state.b")).unwrap()).is_some(),
            "the previous save is kept"
        );
        // Both torn: refused, never read as no state at all.
        for name in SLOTS {
            fs::write(dir.path().join(name), "etc-shadow-state 7 0000\n{}").unwrap();
        }
        assert!(StateFile::new(dir.path()).load().is_err());
    }

    #[test]
    fn a_failed_save_keeps_the_state_and_is_retried_in_the_same_slot() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = StateFile::new(dir.path());
        state.load().unwrap();
        state.save(b"one", |_| Ok(())).unwrap();
        let full = || io::Error::new(io::ErrorKind::StorageFull, "full");
        assert!(state.save(b"two", |_| Err(full())).is_err());
        assert_eq!(read_state_body(dir.path()).unwrap(), b"one");
        state.save(b"two", |_| Ok(())).unwrap();
        assert_eq!(read_state_body(dir.path()).unwrap(), b"two");
        assert!(!dir.path().join("state.c").exists());
    }

    #[test]
    fn the_legacy_file_is_read_until_the_first_save_and_then_removed() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(LEGACY), b"{\"old\":true}").unwrap();
        let mut state = StateFile::new(dir.path());
        assert_eq!(state.load().unwrap().unwrap().body, b"{\"old\":true}");
        assert!(state.load_if_changed().unwrap().is_some(), "no slot yet: always read again");
        state.save(b"new", |_| Ok(())).unwrap();
        assert!(!dir.path().join(LEGACY).exists());
        assert!(state.load_if_changed().unwrap().is_none(), "nothing changed since the save");
        // Another writer's save is seen.
        write_state_body(dir.path(), b"other").unwrap();
        assert_eq!(state.load_if_changed().unwrap().unwrap().unwrap().body, b"other");
    }

    #[test]
    fn a_symlink_planted_as_a_slot_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("state.a")).unwrap();
        let mut state = StateFile::new(dir.path());
        assert!(state.load().is_err(), "a link is not read as a state");
        fs::remove_file(dir.path().join("state.a")).unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("state.b")).unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("state.a")).unwrap();
        let mut state = StateFile::new(dir.path());
        state.seq = 0;
        state.save(b"one", |_| Ok(())).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
    }
}
