//! The daemon's store, which can go away and come back.
//!
//! After a write fails (disk full, I/O error) sled refuses every later
//! write of that handle, so the daemon stops its pipeline, drops the store
//! and reopens it once a probe write reaches the disk. Reopening takes the
//! store's file lock, so every clone of the old handle must be gone first:
//! the API takes a clone per request from here instead of holding one.

use std::path::PathBuf;
use std::sync::RwLock;
use std::time::SystemTime;

use crate::store::{SearchConfig, Store, StoreError};

/// What the store is doing, as `/health` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoreHealth {
    /// Writes reach the disk.
    pub writable: bool,
    /// Why not, while not.
    pub error: Option<String>,
    /// Since when not (RFC 3339).
    pub since: Option<String>,
    /// Attempts to reopen it so far.
    pub reopen_attempts: u64,
}

enum SlotState {
    Open(Box<Store>),
    Unwritable {
        error: String,
        since: SystemTime,
        attempts: u64,
    },
}

/// The store handle shared by the daemon's parts.
pub struct StoreSlot {
    state: RwLock<SlotState>,
    path: PathBuf,
    fingerprint: String,
    embed_dim: usize,
    search: SearchConfig,
    /// The uplink's outbox of the store, attached again on reopen.
    outbox: Option<std::sync::Arc<crate::store::Outbox>>,
}

/// The store is closed until it can be written again.
#[derive(Debug, thiserror::Error)]
#[error("{error} (closed since {since}; it reopens when writes reach the disk again)")]
pub struct StoreUnavailable {
    /// The store.
    pub path: PathBuf,
    /// Why.
    pub error: String,
    /// Since when (RFC 3339).
    pub since: String,
}

fn rfc3339(t: SystemTime) -> String {
    let ns = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as i64;
    crate::search::format_time(ns)
}

impl StoreSlot {
    /// A slot holding `store`, opened for the model `fingerprint` with
    /// `search` settings (a reopen uses them again).
    pub fn new(store: Store, fingerprint: &str, embed_dim: usize, search: SearchConfig) -> Self {
        Self {
            path: store.path().to_path_buf(),
            outbox: store.outbox().cloned(),
            state: RwLock::new(SlotState::Open(Box::new(store))),
            fingerprint: fingerprint.to_string(),
            embed_dim,
            search,
        }
    }

    /// A handle to the open store.
    pub fn get(&self) -> Result<Store, StoreUnavailable> {
        match &*self.state.read().unwrap_or_else(|p| p.into_inner()) {
            SlotState::Open(store) => Ok(Store::clone(store)),
            SlotState::Unwritable { error, since, .. } => Err(StoreUnavailable {
                path: self.path.clone(),
                error: error.clone(),
                since: rfc3339(*since),
            }),
        }
    }

    /// The store's state for `/health`.
    pub fn health(&self) -> StoreHealth {
        match &*self.state.read().unwrap_or_else(|p| p.into_inner()) {
            SlotState::Open(_) => StoreHealth {
                writable: true,
                error: None,
                since: None,
                reopen_attempts: 0,
            },
            SlotState::Unwritable {
                error,
                since,
                attempts,
            } => StoreHealth {
                writable: false,
                error: Some(error.clone()),
                since: Some(rfc3339(*since)),
                reopen_attempts: *attempts,
            },
        }
    }

    /// Closes the store after a failed write (drops this slot's handle).
    pub fn close_unwritable(&self, error: String) {
        let old = std::mem::replace(
            &mut *self.state.write().unwrap_or_else(|p| p.into_inner()),
            SlotState::Unwritable {
                error,
                since: SystemTime::now(),
                attempts: 0,
            },
        );
        drop(old);
    }

    /// Reopens a closed store if a probe write reaches the disk. Blocking
    /// (sled opens and flushes): call it off the async threads.
    pub fn try_reopen(&self) -> Result<Store, StoreError> {
        let result =
            Store::open_with_index(&self.path, &self.fingerprint, self.embed_dim, &self.search)
                .and_then(|mut s| {
                    if let Some(outbox) = &self.outbox {
                        s.attach_outbox(outbox.clone())?;
                    }
                    s.probe_writable()?;
                    Ok(s)
                });
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        match (&result, &mut *state) {
            (Ok(store), state) => *state = SlotState::Open(Box::new(store.clone())),
            (
                Err(e),
                SlotState::Unwritable {
                    attempts, error, ..
                },
            ) => {
                *attempts += 1;
                *error = e.to_string();
            }
            (Err(_), SlotState::Open(_)) => {}
        }
        result
    }
}
