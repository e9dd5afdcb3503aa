//! The data directory's lock. A running server holds it, so a second server on the same
//! directory (a second writer of the primary) and a key rotation under a running server
//! (which would leave the server holding the old key) are refused instead of racing it.
//! The operating system releases it when the process ends, however it ends.

use crate::{Error, Result};
use std::os::unix::fs::OpenOptionsExt;
use std::{
    fs::{File, OpenOptions, TryLockError},
    path::Path,
};

/// The lock file in the data directory.
pub const LOCK_FILE: &str = "etc-shadow.lock";

/// Held while it lives.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Takes the lock for `what` (said in the refusal of another taker), or answers that a
    /// server holds it.
    pub fn acquire(data_dir: &Path, what: &str) -> Result<DataDirLock> {
        crate::db::private_dir(data_dir)?;
        let path = data_dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .mode(0o600)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|err| Error::Internal(format!("{}: {err}", path.display())))?;
        match file.try_lock() {
            Ok(()) => Ok(DataDirLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(Error::conflict(
                "data_dir_in_use",
                format!(
                    "{} is in use by a running etc-shadow server; stop it before {what}",
                    data_dir.display()
                ),
            )),
            Err(TryLockError::Error(err)) => Err(Error::Internal(format!("{}: {err}", path.display()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_free_again_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let held = DataDirLock::acquire(dir.path(), "serving").unwrap();
        let refused = DataDirLock::acquire(dir.path(), "rotating the key").unwrap_err();
        assert!(refused.to_string().contains("stop it before rotating the key"), "{refused}");
        drop(held);
        DataDirLock::acquire(dir.path(), "rotating the key").unwrap();
    }
}
