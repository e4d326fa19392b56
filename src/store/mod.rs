//! Where stick-table bindings (app session id -> backend id) live.
//!
//! [`StickTable`] holds the bindings and their lifetimes; where they live is an enum, not a
//! trait object: the set is closed (in memory, or shared through Redis with a local table in
//! front: [`shared`], over one server, the master Redis Sentinel names, or a Redis Cluster:
//! [`link`]). Its methods are `async` for Redis.

pub mod expiring;
pub mod link;
pub mod sessions;
pub mod shared;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

use crate::config::{StickTableConfig, StoreConfig};
use crate::pool::BackendId;
use expiring::ExpiringMap;
use shared::SharedTable;

/// The stick table of one service: its bindings, where they live, and their lifetimes.
#[derive(Debug)]
pub struct StickTable {
    /// Shared with the table a reload builds, when its store is unchanged.
    backing: Arc<Backing>,
    /// Lifetime of a binding made without the app's cookie lifetime (an operator's).
    ttl: Duration,
    /// Lifetime of a reservation, until a backend confirms the id.
    reservation_ttl: Duration,
    /// What the bindings were built for: a reload with the same keeps them.
    store: StoreConfig,
    max_entries: u64,
}

/// Where the bindings live.
#[derive(Debug)]
enum Backing {
    /// In this process: bounded, per-entry TTL, least recently used evicted.
    Memory(ExpiringMap),
    /// Shared through Redis; degrades to its local table when Redis fails.
    Redis(SharedTable),
}

impl StickTable {
    /// Builds the store a stick-table config asks for, for `service`; Redis errors are counted
    /// in `redis_errors`. Must be called inside a tokio runtime (Redis connects lazily).
    pub fn new(config: &StickTableConfig, service: &str, redis_errors: Counter) -> StickTable {
        let backing = match &config.store {
            StoreConfig::Memory => Backing::Memory(ExpiringMap::new(config.max_entries)),
            StoreConfig::Redis {
                target,
                key_prefix,
                timeout,
            } => {
                let store = SharedTable::new(
                    target,
                    key_prefix,
                    service,
                    config.max_entries,
                    *timeout,
                    redis_errors,
                )
                .expect("redis_url was validated when the config was loaded");
                Backing::Redis(store)
            }
        };
        StickTable {
            backing: Arc::new(backing),
            ttl: config.ttl,
            reservation_ttl: config.reservation_ttl,
            store: config.store.clone(),
            max_entries: config.max_entries,
        }
    }

    /// This table for a reloaded `config`: its bindings kept when the store and its size are
    /// unchanged (the lifetimes follow the new config), else a new table.
    pub fn reloaded(
        self: &Arc<StickTable>,
        config: &StickTableConfig,
        service: &str,
        redis_errors: Counter,
    ) -> Arc<StickTable> {
        if self.store != config.store || self.max_entries != config.max_entries {
            return Arc::new(StickTable::new(config, service, redis_errors));
        }
        // The same bindings under the new lifetimes: the backing is shared, never copied.
        Arc::new(StickTable {
            backing: Arc::clone(&self.backing),
            ttl: config.ttl,
            reservation_ttl: config.reservation_ttl,
            store: self.store.clone(),
            max_entries: self.max_entries,
        })
    }

    /// Lifetime of a binding made without the app's cookie lifetime.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The backend bound to `session`, refreshing the entry's TTL.
    pub async fn get(&self, session: &str) -> Option<BackendId> {
        match &*self.backing {
            Backing::Memory(memory) => memory.get(session),
            Backing::Redis(redis) => redis.get(session).await,
        }
    }

    /// The binding as the shared store holds it now, bypassing any local copy: another
    /// instance may have moved the session. The same as [`StickTable::get`] in memory.
    pub async fn get_fresh(&self, session: &str) -> Option<BackendId> {
        match &*self.backing {
            Backing::Memory(memory) => memory.get(session),
            Backing::Redis(redis) => redis.get_fresh(session).await,
        }
    }

    /// The backend bound to `session`, changing nothing (the admin resolver): no lifetime is
    /// restarted, nothing is cached. With `fresh`, the shared store is asked even when this
    /// instance knows the session, as [`StickTable::get_fresh`] does.
    pub async fn peek(&self, session: &str, fresh: bool) -> Option<BackendId> {
        match &*self.backing {
            Backing::Memory(memory) => memory.peek(session),
            Backing::Redis(redis) => redis.peek(session, fresh).await,
        }
    }

    /// Binds `session` to `backend` for `reservation_ttl` (until a backend confirms the id)
    /// unless it is bound already, and returns the binding that holds: so concurrent first
    /// requests of one session agree on one backend (across instances too, with Redis).
    pub async fn reserve(&self, session: &str, backend: &BackendId) -> BackendId {
        let ttl = self.reservation_ttl;
        match &*self.backing {
            Backing::Memory(memory) => memory.reserve(session, backend, ttl),
            Backing::Redis(redis) => redis.reserve(session, backend, ttl).await,
        }
    }

    /// Binds `session` to `backend` for `ttl`, replacing any binding: a backend confirmed the
    /// id (learning from `Set-Cookie`), or an operator bound it.
    pub async fn bind(&self, session: &str, backend: &BackendId, ttl: Duration) {
        match &*self.backing {
            Backing::Memory(memory) => memory.bind(session, backend, ttl),
            Backing::Redis(redis) => redis.bind(session, backend, ttl).await,
        }
    }

    /// Moves `session` to `backend` (redispatch, retry after a refused connection), keeping
    /// the binding's lifetime: a confirmed entry keeps its TTL, a reservation stays one. With
    /// no binding, it becomes a reservation for `reservation_ttl`.
    pub async fn rebind(&self, session: &str, backend: &BackendId) {
        let reservation_ttl = self.reservation_ttl;
        match &*self.backing {
            Backing::Memory(memory) => {
                memory.rebind(session, backend, reservation_ttl);
            }
            Backing::Redis(redis) => redis.rebind(session, backend, reservation_ttl).await,
        }
    }

    /// Drops the binding of `session`, if any.
    pub async fn forget(&self, session: &str) {
        match &*self.backing {
            Backing::Memory(memory) => memory.forget(session),
            Backing::Redis(redis) => redis.forget(session).await,
        }
    }

    /// This instance's table: all of it in memory, the local table in front of Redis.
    fn local(&self) -> &ExpiringMap {
        match &*self.backing {
            Backing::Memory(memory) => memory,
            Backing::Redis(redis) => redis.local(),
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
