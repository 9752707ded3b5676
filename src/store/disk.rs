//! Writes reaching the disk: flushes, and what a failed write means.

use super::{META_TREE, Store, StoreError};

/// A failed write of the store at `path`, in plain words.
pub(super) fn unwritable(path: &std::path::Path, e: sled::Error) -> StoreError {
    // sled wraps the OS error in its own text: say it plainly.
    let message = match &e {
        sled::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => {
            "No space left on device".to_string()
        }
        sled::Error::Io(io) => io.to_string(),
        other => other.to_string(),
    };
    StoreError::Unwritable {
        path: path.to_path_buf(),
        message,
    }
}

impl Store {
    pub(super) fn unwritable(&self, e: sled::Error) -> StoreError {
        unwritable(&self.path, e)
    }

    /// Flushes everything to disk, and saves the search index when enough
    /// was written since its last save.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(|e| self.unwritable(e))?;
        self.index.save_if_worthwhile()
    }

    /// Whether the store takes writes again: a small write flushed to disk.
    /// Used after [`StoreError::Unwritable`] on a freshly opened store.
    pub fn probe_writable(&self) -> Result<(), StoreError> {
        let meta = self.db.open_tree(META_TREE).map_err(|e| self.err(e))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        meta.insert(b"write_probe", &now.to_be_bytes())
            .map_err(|e| self.unwritable(e))?;
        self.flush()
    }
}
