//! The in-memory stick table: session id -> backend id, each entry with its own TTL that every
//! read restarts, bounded to `max_entries` with approximate least-recently-used eviction.
//!
//! A compact table of our own rather than moka: the stick table is stickyd's core state, and
//! the target is at most 150 bytes per entry beyond the key (HAProxy documents about 50);
//! moka measured 337 (`cargo bench --bench stick_table_memory`). 64 shards, each a `HashMap`
//! behind its own short-held mutex (never across an `.await`), so concurrent requests rarely
//! meet. An entry is the key, the backend id (shared `Arc`), its deadline and its TTL; the time
//! of last use is the deadline minus the TTL. When a shard is full, the least recently used of
//! a handful of its entries (expired ones first) makes room, as Redis's approximate LRU does.
//!
//! The same table, keyed by a `u64` hash, tracks live cookie and hash sessions
//! ([`crate::store::sessions`]).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::clock::now_ms;
use crate::pool::BackendId;

/// Most shards a table has (fewer for tables smaller than this).
const SHARDS: usize = 64;
/// Entries looked at to choose one to evict when a shard is full.
const EVICTION_SAMPLE: usize = 16;

/// One binding.
#[derive(Debug, Clone)]
struct Binding {
    backend: BackendId,
    /// Milliseconds since [`epoch`] after which the entry is gone.
    deadline_ms: u64,
    /// Milliseconds of lifetime from each use.
    ttl_ms: u32,
}

impl Binding {
    fn new(backend: &BackendId, ttl: Duration, now: u64) -> Binding {
        let ttl_ms = u32::try_from(ttl.as_millis()).unwrap_or(u32::MAX);
        Binding {
            backend: BackendId::clone(backend),
            deadline_ms: now + u64::from(ttl_ms),
            ttl_ms,
        }
    }

    fn is_live(&self, now: u64) -> bool {
        now < self.deadline_ms
    }

    fn last_used(&self) -> u64 {
        self.deadline_ms - u64::from(self.ttl_ms)
    }
}

/// What a table can be keyed by: a session id (`str`, stored as `Box<str>`) or a hash (`u64`).
pub trait Key: Hash + Eq {
    /// How the table stores the key.
    type Owned: Borrow<Self> + Hash + Eq + Clone;
    /// The stored form of the key.
    fn to_owned_key(&self) -> Self::Owned;
    /// A hash that picks the key's shard, independent of the shards' own hashing.
    fn shard_hash(&self) -> u64;
}

impl Key for str {
    type Owned = Box<str>;
    fn to_owned_key(&self) -> Box<str> {
        self.into()
    }
    fn shard_hash(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(self.as_bytes())
    }
}

impl Key for u64 {
    type Owned = u64;
    fn to_owned_key(&self) -> u64 {
        *self
    }
    fn shard_hash(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&self.to_le_bytes())
    }
}

/// One shard: key -> binding.
type Shard<K> = Mutex<HashMap<<K as Key>::Owned, Binding>>;

/// Session id (or other [`Key`]) -> backend id, bounded to `max_entries`.
pub struct ExpiringMap<K: Key + ?Sized = str> {
    shards: Box<[Shard<K>]>,
    per_shard: usize,
}

impl<K: Key + ?Sized> std::fmt::Debug for ExpiringMap<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpiringMap")
            .field("entries", &self.entry_count())
            .finish()
    }
}

impl<K: Key + ?Sized> ExpiringMap<K> {
    /// An empty table holding at most `max_entries` bindings (plus fewer than one per shard,
    /// from rounding).
    pub fn new(max_entries: u64) -> ExpiringMap<K> {
        let max_entries = usize::try_from(max_entries).unwrap_or(usize::MAX).max(1);
        let shards = max_entries.min(SHARDS);
        let per_shard = max_entries.div_ceil(shards);
        ExpiringMap {
            shards: (0..shards).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard,
        }
    }

    /// The backend bound to `session`; the read restarts the entry's TTL.
    pub fn get(&self, session: &K) -> Option<BackendId> {
        self.get_with_ttl(session).map(|(backend, _)| backend)
    }

    /// The backend bound to `session`, changing nothing: the entry's TTL is not restarted.
    pub fn peek(&self, session: &K) -> Option<BackendId> {
        let now = now_ms();
        let shard = self.shard(session);
        let binding = shard.get(session).filter(|binding| binding.is_live(now))?;
        Some(BackendId::clone(&binding.backend))
    }

    /// How long `session`'s binding has gone unused (its lifetime less what is left of it),
    /// changing nothing; `None` when it has no live binding.
    pub fn unused_for(&self, session: &K) -> Option<Duration> {
        let now = now_ms();
        let shard = self.shard(session);
        let binding = shard.get(session).filter(|binding| binding.is_live(now))?;
        let left = binding.deadline_ms.saturating_sub(now);
        Some(Duration::from_millis(
            u64::from(binding.ttl_ms).saturating_sub(left),
        ))
    }

    /// The backend bound to `session` and the binding's lifetime; the read restarts it.
    pub fn get_with_ttl(&self, session: &K) -> Option<(BackendId, Duration)> {
        let now = now_ms();
        let mut shard = self.shard(session);
        let binding = shard.get_mut(session)?;
        if !binding.is_live(now) {
            shard.remove(session);
            return None;
        }
        binding.deadline_ms = now + u64::from(binding.ttl_ms);
        Some((
            BackendId::clone(&binding.backend),
            Duration::from_millis(u64::from(binding.ttl_ms)),
        ))
    }

    /// Binds `session` to `backend` if it has no live binding; returns the binding that holds.
    pub fn reserve(&self, session: &K, backend: &BackendId, ttl: Duration) -> BackendId {
        let now = now_ms();
        let mut shard = self.shard(session);
        if let Some(held) = shard.get(session).filter(|binding| binding.is_live(now)) {
            return BackendId::clone(&held.backend);
        }
        self.put(&mut shard, session, Binding::new(backend, ttl, now), now);
        BackendId::clone(backend)
    }

    /// Binds `session` to `backend` for `ttl`, replacing any binding.
    pub fn bind(&self, session: &K, backend: &BackendId, ttl: Duration) {
        let now = now_ms();
        let mut shard = self.shard(session);
        self.put(&mut shard, session, Binding::new(backend, ttl, now), now);
    }

    /// Binds `session` to `backend`, replacing any binding but keeping its lifetime (a
    /// confirmed entry stays confirmed, a reservation stays one); without a live binding, for
    /// `ttl`. Returns the lifetime the binding got.
    pub fn rebind(&self, session: &K, backend: &BackendId, ttl: Duration) -> Duration {
        let now = now_ms();
        let mut shard = self.shard(session);
        let ttl = shard
            .get(session)
            .filter(|held| held.is_live(now))
            .map_or(ttl, |held| Duration::from_millis(u64::from(held.ttl_ms)));
        self.put(&mut shard, session, Binding::new(backend, ttl, now), now);
        ttl
    }

    /// Drops the binding of `session`.
    pub fn forget(&self, session: &K) {
        self.shard(session).remove(session);
    }

    /// Gives every live entry lifetime `ttl` counted from its last use, as if it had been
    /// bound with `ttl`: an entry last used longer ago than `ttl` expires now, one used more
    /// recently lives until its last use plus `ttl`. Takes each shard's lock in turn, once;
    /// for a reload that changes a window, not for the request path.
    pub fn retime(&self, ttl: Duration) {
        let ttl_ms = u32::try_from(ttl.as_millis()).unwrap_or(u32::MAX);
        let now = now_ms();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().expect("stick table shard lock");
            shard.retain(|_, binding| {
                if !binding.is_live(now) {
                    return false;
                }
                binding.deadline_ms = binding.last_used() + u64::from(ttl_ms);
                binding.ttl_ms = ttl_ms;
                true
            });
        }
    }

    /// Live entries per backend id.
    pub fn per_backend(&self) -> HashMap<BackendId, u64> {
        let now = now_ms();
        let mut counts = HashMap::new();
        for shard in self.shards.iter() {
            let shard = shard.lock().expect("stick table shard lock");
            for binding in shard.values().filter(|binding| binding.is_live(now)) {
                *counts
                    .entry(BackendId::clone(&binding.backend))
                    .or_insert(0) += 1;
            }
        }
        counts
    }

    /// Number of live entries.
    pub fn entry_count(&self) -> u64 {
        let now = now_ms();
        let count = |shard: &Shard<K>| {
            shard
                .lock()
                .expect("stick table shard lock")
                .values()
                .filter(|binding| binding.is_live(now))
                .count() as u64
        };
        self.shards.iter().map(count).sum()
    }

    fn shard(&self, session: &K) -> MutexGuard<'_, HashMap<K::Owned, Binding>> {
        self.shards[self.shard_index(session)]
            .lock()
            .expect("stick table shard lock")
    }

    fn shard_index(&self, session: &K) -> usize {
        (session.shard_hash() % self.shards.len() as u64) as usize
    }

    /// Inserts or replaces, first making room in a full shard.
    fn put(&self, shard: &mut HashMap<K::Owned, Binding>, session: &K, binding: Binding, now: u64) {
        if let Some(existing) = shard.get_mut(session) {
            *existing = binding;
            return;
        }
        if shard.len() >= self.per_shard {
            let victim = shard
                .iter()
                .take(EVICTION_SAMPLE)
                .min_by_key(|(_, candidate)| {
                    if candidate.is_live(now) {
                        candidate.last_used()
                    } else {
                        0
                    }
                })
                .map(|(session, _)| session.clone());
            if let Some(victim) = victim {
                shard.remove::<K::Owned>(&victim);
            }
        }
        shard.insert(session.to_owned_key(), binding);
    }
}

impl ExpiringMap<str> {
    /// Up to `limit` live entries as (session, backend id).
    pub fn entries(&self, limit: usize) -> Vec<(String, BackendId)> {
        let now = now_ms();
        let mut entries = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock().expect("stick table shard lock");
            let live = shard.iter().filter(|(_, binding)| binding.is_live(now));
            entries.extend(live.take(limit - entries.len()).map(|(session, binding)| {
                (session.to_string(), BackendId::clone(&binding.backend))
            }));
            if entries.len() == limit {
                break;
            }
        }
        entries
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
        let store: ExpiringMap = ExpiringMap::new(100);
        let minute = Duration::from_secs(60);
        assert_eq!(&*store.reserve("abc", &id("s1"), minute), "s1");
        assert_eq!(&*store.reserve("abc", &id("s2"), minute), "s1");
        store.bind("abc", &id("s3"), minute);
        assert_eq!(store.get("abc").as_deref(), Some("s3"));
        store.forget("abc");
        assert_eq!(store.get("abc"), None);
    }

    #[test]
    fn rebind_moves_a_session_but_keeps_its_lifetime() {
        let store: ExpiringMap = ExpiringMap::new(100);
        let (short, long) = (Duration::from_millis(300), Duration::from_secs(60));
        store.reserve("reserved", &id("s1"), short);
        store.bind("confirmed", &id("s1"), long);
        assert_eq!(store.rebind("reserved", &id("s2"), long), short);
        assert_eq!(store.rebind("confirmed", &id("s2"), short), long);
        assert_eq!(store.rebind("unknown", &id("s2"), short), short);
        assert_eq!(
            store.get_with_ttl("reserved"),
            Some((id("s2"), short)),
            "a rebound reservation became a confirmed entry"
        );
        assert_eq!(store.get_with_ttl("confirmed"), Some((id("s2"), long)));
    }

    #[test]
    fn an_entry_expires_after_its_own_ttl_unless_read_in_time() {
        let store: ExpiringMap = ExpiringMap::new(100);
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
    fn retime_counts_the_new_lifetime_from_each_entry_s_last_use() {
        let store: ExpiringMap = ExpiringMap::new(100);
        store.bind("idle", &id("s1"), Duration::from_secs(60));
        // Waiting is the behaviour under test: "idle" was last used this long ago.
        std::thread::sleep(Duration::from_millis(250));
        store.bind("fresh", &id("s2"), Duration::from_secs(60));
        store.retime(Duration::from_millis(200));
        assert_eq!(
            store.get("idle"),
            None,
            "an entry idle past the new ttl lived on"
        );
        assert_eq!(
            store.get_with_ttl("fresh"),
            Some((id("s2"), Duration::from_millis(200)))
        );
        store.retime(Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(
            store.get("fresh").as_deref(),
            Some("s2"),
            "a longer ttl did not apply"
        );
    }

    #[test]
    fn the_table_is_bounded_by_max_entries() {
        let store: ExpiringMap = ExpiringMap::new(50);
        for n in 0..500 {
            store.bind(&format!("session-{n}"), &id("s1"), Duration::from_secs(60));
        }
        assert!(store.entry_count() <= 50, "{}", store.entry_count());
        assert_eq!(store.get("session-499").as_deref(), Some("s1"));
    }

    #[test]
    fn a_full_table_evicts_the_least_recently_used_entry() {
        let store: ExpiringMap = ExpiringMap::new(128);
        // Three sessions of one shard (two entries each): the one not read since is evicted.
        let same_shard: Vec<String> = (0..)
            .map(|n| format!("session-{n}"))
            .filter(|session| store.shard_index(session) == 0)
            .take(3)
            .collect();
        let minute = Duration::from_secs(60);
        store.bind(&same_shard[0], &id("s1"), minute);
        store.bind(&same_shard[1], &id("s2"), minute);
        std::thread::sleep(Duration::from_millis(5));
        assert!(store.get(&same_shard[0]).is_some());
        store.bind(&same_shard[2], &id("s3"), minute);
        assert_eq!(
            store.get(&same_shard[0]).as_deref(),
            Some("s1"),
            "the recently read entry was evicted"
        );
        assert_eq!(
            store.get(&same_shard[1]),
            None,
            "the least recently used entry survived"
        );
        assert_eq!(store.get(&same_shard[2]).as_deref(), Some("s3"));
    }
}
