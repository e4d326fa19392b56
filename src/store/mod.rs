//! Where stick-table bindings (app session id -> backend id) live.
//!
//! [`StickStore`] is an enum so a shared store (Redis, for several stickyd instances) can join
//! the in-memory one without a trait object; its methods are `async` for that reason.

pub mod memory;
pub mod sessions;

use std::time::Duration;

use crate::config::StickTableConfig;
use crate::pool::BackendId;
use memory::MemoryStore;

/// The stick table of one service.
#[derive(Debug)]
pub enum StickStore {
    /// In this process: bounded, per-entry TTL, least recently used evicted.
    Memory(MemoryStore),
}

impl StickStore {
    /// Builds the store a stick-table config asks for.
    pub fn new(config: &StickTableConfig) -> StickStore {
        StickStore::Memory(MemoryStore::new(config.max_entries))
    }

    /// The backend bound to `session`, refreshing the entry's TTL.
    pub async fn get(&self, session: &str) -> Option<BackendId> {
        match self {
            StickStore::Memory(memory) => memory.get(session),
        }
    }

    /// Binds `session` to `backend` unless it is bound already, and returns the binding that
    /// holds: so concurrent first requests of one session agree on one backend.
    pub async fn reserve(&self, session: &str, backend: &BackendId, ttl: Duration) -> BackendId {
        match self {
            StickStore::Memory(memory) => memory.reserve(session, backend, ttl),
        }
    }

    /// Binds `session` to `backend` for `ttl`, replacing any binding (redispatch, learning).
    pub async fn bind(&self, session: &str, backend: &BackendId, ttl: Duration) {
        match self {
            StickStore::Memory(memory) => memory.bind(session, backend, ttl),
        }
    }

    /// Up to `limit` entries as (session, backend id), in no particular order.
    pub fn entries(&self, limit: usize) -> Vec<(String, BackendId)> {
        match self {
            StickStore::Memory(memory) => memory.entries(limit),
        }
    }

    /// Entries per backend id.
    pub fn per_backend(&self) -> std::collections::HashMap<BackendId, u64> {
        match self {
            StickStore::Memory(memory) => memory.per_backend(),
        }
    }

    /// Number of entries (approximate while writes are pending).
    pub fn entry_count(&self) -> u64 {
        match self {
            StickStore::Memory(memory) => memory.entry_count(),
        }
    }

    /// Drops the binding of `session`, if any.
    pub async fn forget(&self, session: &str) {
        match self {
            StickStore::Memory(memory) => memory.forget(session),
        }
    }
}
