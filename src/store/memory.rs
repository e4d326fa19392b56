//! The in-memory stick table: a moka cache with a TTL per entry, refreshed on every read, and
//! a bound on entries past which the least recently used is evicted.

use std::time::{Duration, Instant};

use moka::Expiry;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;

use crate::pool::BackendId;

/// One binding and its own lifetime (from the app's cookie, or the configured `ttl`).
#[derive(Debug, Clone)]
struct Binding {
    backend: BackendId,
    ttl: Duration,
}

/// Each entry lives for its own `ttl`, counted again from every read and every write.
struct SlidingTtl;

impl Expiry<String, Binding> for SlidingTtl {
    fn expire_after_create(&self, _: &String, binding: &Binding, _: Instant) -> Option<Duration> {
        Some(binding.ttl)
    }

    fn expire_after_read(
        &self,
        _: &String,
        binding: &Binding,
        _: Instant,
        _: Option<Duration>,
        _: Instant,
    ) -> Option<Duration> {
        Some(binding.ttl)
    }

    fn expire_after_update(
        &self,
        _: &String,
        binding: &Binding,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(binding.ttl)
    }
}

/// Session id -> backend id, bounded to `max_entries`.
pub struct MemoryStore {
    cache: Cache<String, Binding>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl MemoryStore {
    /// An empty table holding at most `max_entries` bindings.
    pub fn new(max_entries: u64) -> MemoryStore {
        let cache = Cache::builder()
            .max_capacity(max_entries)
            .eviction_policy(EvictionPolicy::lru())
            .expire_after(SlidingTtl)
            .build();
        MemoryStore { cache }
    }

    /// The backend bound to `session`; the read restarts the entry's TTL.
    pub fn get(&self, session: &str) -> Option<BackendId> {
        self.cache.get(session).map(|binding| binding.backend)
    }

    /// The backend bound to `session` and the binding's lifetime; the read restarts it.
    pub fn get_with_ttl(&self, session: &str) -> Option<(BackendId, Duration)> {
        self.cache
            .get(session)
            .map(|binding| (binding.backend, binding.ttl))
    }

    /// Binds `session` to `backend` if it has no binding; returns the binding that holds.
    pub fn reserve(&self, session: &str, backend: &BackendId, ttl: Duration) -> BackendId {
        self.cache
            .entry_by_ref(session)
            .or_insert_with(|| Binding {
                backend: BackendId::clone(backend),
                ttl,
            })
            .into_value()
            .backend
    }

    /// Binds `session` to `backend` for `ttl`, replacing any binding.
    pub fn bind(&self, session: &str, backend: &BackendId, ttl: Duration) {
        self.cache.insert(
            session.to_string(),
            Binding {
                backend: BackendId::clone(backend),
                ttl,
            },
        );
    }

    /// Up to `limit` entries as (session, backend id).
    pub fn entries(&self, limit: usize) -> Vec<(String, BackendId)> {
        self.cache
            .iter()
            .take(limit)
            .map(|(session, binding)| ((*session).clone(), binding.backend))
            .collect()
    }

    /// Entries per backend id.
    pub fn per_backend(&self) -> std::collections::HashMap<BackendId, u64> {
        let mut counts = std::collections::HashMap::new();
        for (_, binding) in self.cache.iter() {
            *counts.entry(binding.backend).or_insert(0) += 1;
        }
        counts
    }

    /// Number of entries.
    pub fn entry_count(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    /// Drops the binding of `session`.
    pub fn forget(&self, session: &str) {
        self.cache.invalidate(session);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> BackendId {
        BackendId::from(text)
    }

    #[test]
    fn reserve_keeps_the_first_binding_and_bind_replaces_it() {
        let store = MemoryStore::new(100);
        let minute = Duration::from_secs(60);
        assert_eq!(&*store.reserve("abc", &id("s1"), minute), "s1");
        assert_eq!(&*store.reserve("abc", &id("s2"), minute), "s1");
        store.bind("abc", &id("s3"), minute);
        assert_eq!(store.get("abc").as_deref(), Some("s3"));
        store.forget("abc");
        assert_eq!(store.get("abc"), None);
    }

    #[test]
    fn an_entry_expires_after_its_own_ttl_unless_read_in_time() {
        let store = MemoryStore::new(100);
        store.bind("short", &id("s1"), Duration::from_millis(300));
        store.bind("long", &id("s2"), Duration::from_secs(60));
        // Reads within the TTL keep the entry alive past its first deadline.
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(store.get("short").as_deref(), Some("s1"));
        }
        // Waiting out the TTL is the behaviour under test, not synchronisation.
        std::thread::sleep(Duration::from_millis(450));
        assert_eq!(store.get("short"), None);
        assert_eq!(store.get("long").as_deref(), Some("s2"));
    }

    #[test]
    fn the_table_is_bounded_by_max_entries() {
        let store = MemoryStore::new(50);
        for n in 0..500 {
            store.bind(&format!("session-{n}"), &id("s1"), Duration::from_secs(60));
        }
        store.cache.run_pending_tasks();
        assert!(
            store.cache.entry_count() <= 50,
            "{}",
            store.cache.entry_count()
        );
        assert_eq!(store.get("session-499").as_deref(), Some("s1"));
    }
}
