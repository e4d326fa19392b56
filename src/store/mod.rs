//! Where stick-table bindings (app session id -> backend id) live.
//!
//! [`StickTable`] is an enum, not a trait object: the set is closed (in memory, or shared
//! through Redis with a local table in front). Its methods are `async` for Redis.

pub mod expiring;
pub mod sessions;
pub mod shared;

use std::collections::HashMap;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

use crate::config::{StickTableConfig, StoreConfig};
use crate::pool::BackendId;
use expiring::ExpiringMap;
use shared::SharedTable;

/// The stick table of one service.
#[derive(Debug)]
pub enum StickTable {
    /// In this process: bounded, per-entry TTL, least recently used evicted.
    Memory(ExpiringMap),
    /// Shared through Redis; degrades to its local table when Redis fails.
    Redis(SharedTable),
}

impl StickTable {
    /// Builds the store a stick-table config asks for, for `service`; Redis errors are counted
    /// in `redis_errors`. Must be called inside a tokio runtime (Redis connects lazily).
    pub fn new(config: &StickTableConfig, service: &str, redis_errors: Counter) -> StickTable {
        match &config.store {
            StoreConfig::Memory => StickTable::Memory(ExpiringMap::new(config.max_entries)),
            StoreConfig::Redis {
                url,
                key_prefix,
                timeout,
            } => {
                let store = SharedTable::new(
                    url,
                    key_prefix,
                    service,
                    config.max_entries,
                    *timeout,
                    redis_errors,
                )
                .expect("redis_url was validated when the config was loaded");
                StickTable::Redis(store)
            }
        }
    }

    /// The backend bound to `session`, refreshing the entry's TTL.
    pub async fn get(&self, session: &str) -> Option<BackendId> {
        match self {
            StickTable::Memory(memory) => memory.get(session),
            StickTable::Redis(redis) => redis.get(session).await,
        }
    }

    /// The binding as the shared store holds it now, bypassing any local copy: another
    /// instance may have moved the session. The same as [`StickTable::get`] in memory.
    pub async fn get_fresh(&self, session: &str) -> Option<BackendId> {
        match self {
            StickTable::Memory(memory) => memory.get(session),
            StickTable::Redis(redis) => redis.get_fresh(session).await,
        }
    }

    /// Binds `session` to `backend` for `ttl` (a reservation's short lifetime, until a
    /// backend confirms the id) unless it is bound already, and returns the binding that
    /// holds: so concurrent first requests of one session agree on one backend (across
    /// instances too, with Redis).
    pub async fn reserve(&self, session: &str, backend: &BackendId, ttl: Duration) -> BackendId {
        match self {
            StickTable::Memory(memory) => memory.reserve(session, backend, ttl),
            StickTable::Redis(redis) => redis.reserve(session, backend, ttl).await,
        }
    }

    /// Binds `session` to `backend` for `ttl`, replacing any binding: a backend confirmed the
    /// id (learning from `Set-Cookie`), or an operator bound it.
    pub async fn bind(&self, session: &str, backend: &BackendId, ttl: Duration) {
        match self {
            StickTable::Memory(memory) => memory.bind(session, backend, ttl),
            StickTable::Redis(redis) => redis.bind(session, backend, ttl).await,
        }
    }

    /// Moves `session` to `backend` (redispatch, retry after a refused connection), keeping
    /// the binding's lifetime: a confirmed entry keeps its TTL, a reservation stays one. With
    /// no binding, it becomes a reservation for `reservation_ttl`.
    pub async fn rebind(&self, session: &str, backend: &BackendId, reservation_ttl: Duration) {
        match self {
            StickTable::Memory(memory) => {
                memory.rebind(session, backend, reservation_ttl);
            }
            StickTable::Redis(redis) => redis.rebind(session, backend, reservation_ttl).await,
        }
    }

    /// Drops the binding of `session`, if any.
    pub async fn forget(&self, session: &str) {
        match self {
            StickTable::Memory(memory) => memory.forget(session),
            StickTable::Redis(redis) => redis.forget(session).await,
        }
    }

    /// This instance's table: all of it in memory, the local table in front of Redis.
    fn local(&self) -> &ExpiringMap {
        match self {
            StickTable::Memory(memory) => memory,
            StickTable::Redis(redis) => redis.local(),
        }
    }

    /// Up to `limit` entries of this instance's table as (session, backend id).
    pub fn entries(&self, limit: usize) -> Vec<(String, BackendId)> {
        self.local().entries(limit)
    }

    /// Entries of this instance's table per backend id.
    pub fn per_backend(&self) -> HashMap<BackendId, u64> {
        self.local().per_backend()
    }

    /// Number of entries in this instance's table.
    pub fn entry_count(&self) -> u64 {
        self.local().entry_count()
    }
}
