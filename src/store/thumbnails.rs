//! Frame thumbnails: read back for the API, counted for the benchmarks.

use super::{FrameKey, Store, StoreError};

impl Store {
    /// The JPEG thumbnail of a frame, if one was stored.
    pub fn thumbnail(&self, key: &FrameKey) -> Result<Option<sled::IVec>, StoreError> {
        self.thumbnails.get(key.encode()).map_err(|e| self.err(e))
    }

    /// Whether a frame has a thumbnail.
    pub fn has_thumbnail(&self, key: &FrameKey) -> Result<bool, StoreError> {
        self.thumbnails
            .contains_key(key.encode())
            .map_err(|e| self.err(e))
    }

    /// Thumbnails stored and their bytes.
    pub fn thumbnail_bytes(&self) -> Result<(u64, u64), StoreError> {
        let mut count = 0;
        let mut bytes = 0;
        for kv in self.thumbnails.iter() {
            let (_, v) = kv.map_err(|e| self.err(e))?;
            count += 1;
            bytes += v.len() as u64;
        }
        Ok((count, bytes))
    }

    /// The id of a stream the store has seen (no new id is made).
    pub fn known_stream_id(&self, name: &str) -> Result<Option<u32>, StoreError> {
        Ok(self
            .streams()?
            .into_iter()
            .find(|s| s.name == name)
            .map(|s| s.id))
    }
}
