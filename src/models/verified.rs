//! A record of the model files already hashed and found equal to their
//! manifest, stamped with what changes when a file is written (device,
//! inode, size, modification and status-change times, as git's index
//! does): a file not written since is not hashed again at the next start
//! (ViT-B/32's fp32 weights took 0.9 s of every start). The record lives in
//! the cache directory; losing it only costs the hashing again.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Name of the record in the cache directory.
pub const RECORD_FILE: &str = "verified-model-files.json";

/// What identifies one version of a file on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    sha256: String,
    len: u64,
    dev: u64,
    ino: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    fn of(path: &Path, sha256: &str) -> Option<Self> {
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            sha256: sha256.to_ascii_lowercase(),
            len: m.len(),
            dev: m.dev(),
            ino: m.ino(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        })
    }
}

/// The files verified before, by absolute path.
#[derive(Debug)]
pub struct VerifiedFiles {
    record: PathBuf,
    files: Mutex<BTreeMap<PathBuf, Stamp>>,
}

impl VerifiedFiles {
    /// Reads the record in `cache_dir` (none yet, or unreadable: empty).
    pub fn open(cache_dir: &Path) -> Self {
        let record = cache_dir.join(RECORD_FILE);
        let files = std::fs::read(&record)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Self {
            record,
            files: Mutex::new(files),
        }
    }

    /// Whether `path` was found to hash to `sha256` and is unchanged since.
    pub fn is_verified(&self, path: &Path, sha256: &str) -> bool {
        let Some(now) = Stamp::of(path, sha256) else {
            return false;
        };
        let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        absolute(path).is_some_and(|p| files.get(&p) == Some(&now))
    }

    /// Records that `path` hashed to `sha256` (best effort: a cache
    /// directory that cannot be written only means hashing next time).
    pub fn record(&self, path: &Path, sha256: &str) {
        let (Some(stamp), Some(key)) = (Stamp::of(path, sha256), absolute(path)) else {
            return;
        };
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        files.insert(key, stamp);
        if let Err(e) = self.save(&files) {
            tracing::debug!(record = %self.record.display(), "not saved: {e}");
        }
    }

    fn save(&self, files: &BTreeMap<PathBuf, Stamp>) -> std::io::Result<()> {
        if let Some(dir) = self.record.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self
            .record
            .with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec_pretty(files)?)?;
        std::fs::rename(&tmp, &self.record)
    }
}

fn absolute(path: &Path) -> Option<PathBuf> {
    std::fs::canonicalize(path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_written_since_it_was_verified_is_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("weights.bin");
        std::fs::write(&file, b"abcd").unwrap();
        let cache = dir.path().join("cache");
        let v = VerifiedFiles::open(&cache);
        assert!(!v.is_verified(&file, "aa"));
        v.record(&file, "AA");
        assert!(v.is_verified(&file, "aa"));
        assert!(!v.is_verified(&file, "bb"), "another expected hash");
        // Read back by the next process.
        assert!(VerifiedFiles::open(&cache).is_verified(&file, "aa"));
        // Same length, other bytes: the write changes its times.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&file, b"abce").unwrap();
        assert!(!VerifiedFiles::open(&cache).is_verified(&file, "aa"));
        // A damaged record is an empty one.
        std::fs::write(cache.join(RECORD_FILE), b"{not json").unwrap();
        assert!(!VerifiedFiles::open(&cache).is_verified(&file, "aa"));
    }
}
