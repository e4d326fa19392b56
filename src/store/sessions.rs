//! Live sessions per backend for cookie and hash strategies, for session-aware drain: each
//! session identity seen on a request is remembered with its backend until it has been idle
//! for `session_idle`. A stick table counts its own entries instead.
//!
//! It is the stick table's compact in-memory table keyed by the identity's hash: one
//! short-held shard lock per request, where moka cost a lookup plus a policy update.

use std::collections::HashMap;
use std::time::Duration;

use super::memory::MemoryStore;
use crate::pool::BackendId;

/// Session identity (a hash) -> the backend it was last served by.
#[derive(Debug)]
pub struct BoundSessions {
    seen: MemoryStore<u64>,
    idle: Duration,
}

/// Most session identities remembered; past it the least recently seen are forgotten.
pub const MAX_TRACKED_SESSIONS: u64 = 1_000_000;

impl BoundSessions {
    /// Remembers sessions for `idle` after their last request.
    pub fn new(idle: Duration) -> BoundSessions {
        BoundSessions {
            seen: MemoryStore::new(MAX_TRACKED_SESSIONS),
            idle,
        }
    }

    /// Session `identity` was just served by `backend`.
    pub fn seen(&self, identity: u64, backend: &BackendId) {
        // The read restarts the idle time of a session still on its backend.
        if self.seen.get(&identity).as_ref() != Some(backend) {
            self.seen.bind(&identity, backend, self.idle);
        }
    }

    /// Live sessions per backend id.
    pub fn per_backend(&self) -> HashMap<BackendId, u64> {
        self.seen.per_backend()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_counted_on_their_latest_backend() {
        let sessions = BoundSessions::new(Duration::from_secs(60));
        let (a, b) = (BackendId::from("a"), BackendId::from("b"));
        sessions.seen(1, &a);
        sessions.seen(2, &a);
        sessions.seen(2, &a);
        sessions.seen(3, &b);
        sessions.seen(1, &b);
        let counts = sessions.per_backend();
        assert_eq!((counts.get(&a), counts.get(&b)), (Some(&1), Some(&2)));
    }

    #[test]
    fn an_idle_session_stops_counting() {
        let sessions = BoundSessions::new(Duration::from_millis(200));
        sessions.seen(1, &BackendId::from("a"));
        // Waiting out the idle window is the behaviour under test.
        std::thread::sleep(Duration::from_millis(300));
        assert!(sessions.per_backend().is_empty());
    }
}
