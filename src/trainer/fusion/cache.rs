//! The embedding cache of the fusion trainer: `<dir>/<clip fingerprint>.bin`,
//! a header (`RRFUSE01`, width) then records (`u32` key length, key, width
//! f32s), appended as embeddings are computed.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::super::TrainerError;

/// Append-only store of embeddings of one CLIP space. A torn last record
/// (a killed run) is dropped on open.
pub struct EmbeddingCache {
    path: PathBuf,
    dim: usize,
    map: HashMap<String, Vec<f32>>,
    file: Option<std::fs::File>,
}

const CACHE_MAGIC: &[u8; 8] = b"RRFUSE01";

impl EmbeddingCache {
    /// Opens (or starts) `<dir>/<fingerprint>.bin`; `None` keeps nothing on
    /// disk.
    pub fn open(dir: Option<&Path>, fingerprint: &str, dim: usize) -> Result<Self, TrainerError> {
        let Some(dir) = dir else {
            return Ok(Self {
                path: PathBuf::new(),
                dim,
                map: HashMap::new(),
                file: None,
            });
        };
        std::fs::create_dir_all(dir).map_err(|e| TrainerError::io(dir, e))?;
        let path = dir.join(format!("{fingerprint}.bin"));
        let io = |e| TrainerError::io(&path, e);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        // Two runs appending to one file would interleave records: the
        // second one reads what is there and keeps its own additions in
        // memory.
        let writable = match file.try_lock() {
            Ok(()) => true,
            Err(std::fs::TryLockError::WouldBlock) => {
                tracing::warn!(
                    path = %path.display(),
                    "Embedding cache in use by another run: new embeddings are not saved."
                );
                false
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        };
        let mut map = HashMap::new();
        let mut good = 0u64;
        {
            let mut r = BufReader::new(&file);
            let mut magic = [0u8; 12];
            if r.read_exact(&mut magic).is_ok()
                && &magic[..8] == CACHE_MAGIC
                && u32::from_le_bytes([magic[8], magic[9], magic[10], magic[11]]) as usize == dim
            {
                good = 12;
                while let Some((key, v, len)) = read_record(&mut r, dim) {
                    map.insert(key, v);
                    good += len;
                }
            }
        }
        if !writable {
            return Ok(Self {
                path,
                dim,
                map,
                file: None,
            });
        }
        // A torn tail (a killed run) is cut off; another width starts afresh.
        if good == 0 {
            file.set_len(0).map_err(io)?;
            file.seek(SeekFrom::Start(0)).map_err(io)?;
            file.write_all(CACHE_MAGIC).map_err(io)?;
            file.write_all(&(dim as u32).to_le_bytes()).map_err(io)?;
        } else {
            file.set_len(good).map_err(io)?;
        }
        file.seek(SeekFrom::End(0)).map_err(io)?;
        Ok(Self {
            path,
            dim,
            map,
            file: Some(file),
        })
    }

    /// The embedding stored under `key`.
    pub fn get(&self, key: &str) -> Option<&Vec<f32>> {
        self.map.get(key)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Stores `value` under `key` (and appends it to the file).
    pub fn put(&mut self, key: String, value: Vec<f32>) -> Result<(), TrainerError> {
        if value.len() != self.dim {
            return Err(TrainerError::Config(format!(
                "embedding of {} values for a cache of width {}",
                value.len(),
                self.dim
            )));
        }
        if let Some(f) = &mut self.file {
            let mut buf = Vec::with_capacity(4 + key.len() + 4 * self.dim);
            buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
            buf.extend_from_slice(key.as_bytes());
            for x in &value {
                buf.extend_from_slice(&x.to_le_bytes());
            }
            f.write_all(&buf)
                .map_err(|e| TrainerError::io(&self.path, e))?;
        }
        self.map.insert(key, value);
        Ok(())
    }
}

fn read_record(r: &mut impl Read, dim: usize) -> Option<(String, Vec<f32>, u64)> {
    let mut n = [0u8; 4];
    r.read_exact(&mut n).ok()?;
    let n = u32::from_le_bytes(n) as usize;
    if n > 1 << 16 {
        return None;
    }
    let mut key = vec![0u8; n];
    r.read_exact(&mut key).ok()?;
    let mut raw = vec![0u8; 4 * dim];
    r.read_exact(&mut raw).ok()?;
    let v = raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Some((String::from_utf8(key).ok()?, v, (4 + n + 4 * dim) as u64))
}

/// The default embedding cache: `$XDG_CACHE_HOME/roadrep/fusion-embeddings`,
/// else `~/.cache/roadrep/fusion-embeddings`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })?;
    Some(base.join("roadrep").join("fusion-embeddings"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_survives_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = EmbeddingCache::open(Some(dir.path()), "fp", 3).unwrap();
        c.put("a".into(), vec![1.0, 2.0, 3.0]).unwrap();
        c.put("b".into(), vec![4.0, 5.0, 6.0]).unwrap();
        drop(c);
        let path = dir.path().join("fp.bin");
        let len = std::fs::metadata(&path).unwrap().len();
        // A run killed while writing "b".
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 5).unwrap();
        drop(f);
        let mut c = EmbeddingCache::open(Some(dir.path()), "fp", 3).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c.get("a"), Some(&vec![1.0, 2.0, 3.0]));
        c.put("c".into(), vec![7.0, 8.0, 9.0]).unwrap();
        drop(c);
        let c = EmbeddingCache::open(Some(dir.path()), "fp", 3).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c.get("c"), Some(&vec![7.0, 8.0, 9.0]));
        // A second opener reads but does not write.
        let held = EmbeddingCache::open(Some(dir.path()), "fp", 3).unwrap();
        let mut second = EmbeddingCache::open(Some(dir.path()), "fp", 3).unwrap();
        assert_eq!(second.len(), 2);
        second.put("d".into(), vec![0.0; 3]).unwrap();
        drop((held, second));
        assert!(
            EmbeddingCache::open(Some(dir.path()), "fp", 3)
                .unwrap()
                .get("d")
                .is_none()
        );
        // Another width starts afresh rather than misreading.
        let c = EmbeddingCache::open(Some(dir.path()), "fp", 4).unwrap();
        assert!(c.is_empty());
        assert!(c.get("a").is_none());
    }
}
