//! Live sessions per backend for cookie and hash strategies, for session-aware drain: each
//! session identity is remembered with its backend from the response that binds it until it
//! has been idle for `session_idle`. A stick table counts its own entries instead.
//!
//! It is the stick table's compact in-memory table keyed by the identity's hash: one
//! short-held shard lock per request, where moka cost a lookup plus a policy update.
//!
//! A reload keeps the tracker (and its sessions) and applies a changed `session_idle` to
//! every tracked session at once ([`LiveSessions::set_idle`]): each is then live until its
//! last sighting plus the new window, so a shorter window drops the sessions already idle
//! longer, and a longer one keeps counting those seen within it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::expiring::ExpiringMap;
use crate::pool::BackendId;

/// Session identity (a hash) -> the backend it was last served by.
#[derive(Debug)]
pub struct LiveSessions {
    seen: ExpiringMap<u64>,
    /// The idle window, in milliseconds; a reload may change it.
    idle_ms: AtomicU64,
    /// When tracking began: a session it has not seen since is idle at least that long.
    since: Instant,
}

/// Most session identities remembered; past it the least recently seen are forgotten.
pub const MAX_TRACKED_SESSIONS: u64 = 1_000_000;

impl LiveSessions {
    /// Remembers sessions for `idle` after their last request.
    pub fn new(idle: Duration) -> LiveSessions {
        LiveSessions {
            seen: ExpiringMap::new(MAX_TRACKED_SESSIONS),
            idle_ms: AtomicU64::new(millis(idle)),
            since: Instant::now(),
        }
    }

    /// The idle window now.
    pub fn idle(&self) -> Duration {
        Duration::from_millis(self.idle_ms.load(Ordering::Relaxed))
    }

    /// Makes `idle` the window, for the sessions already tracked too (a reload): each is
    /// live until its last sighting plus `idle`. Walks the table once when the window
    /// changes; nothing otherwise.
    pub fn set_idle(&self, idle: Duration) {
        let idle_ms = millis(idle);
        if self.idle_ms.swap(idle_ms, Ordering::Relaxed) != idle_ms {
            self.seen.retime(idle);
        }
    }

    /// Session `identity` was just served by `backend`.
    pub fn touch(&self, identity: u64, backend: &BackendId) {
        let idle = self.idle();
        // The read restarts the idle time of a session still on its backend; one remembered
        // under another window (a reload raced this request) is bound afresh.
        match self.seen.get_with_ttl(&identity) {
            Some((held, window)) if held == *backend && window == idle => {}
            _ => self.seen.bind(&identity, backend, idle),
        }
    }

    /// Whether session `identity` has gone without a request for longer than `after`, as far
    /// as this tracker can tell: false while it is live within `after`, and false for a
    /// session it does not know while it has been tracking for less than `after` (after a
    /// start, every session is unknown, and none may be taken for idle). `after` must not be
    /// above the idle window, past which sessions are forgotten.
    pub fn idle_longer_than(&self, identity: u64, after: Duration) -> bool {
        match self.seen.unused_for(&identity) {
            Some(unused) => unused > after,
            None => self.since.elapsed() > after,
        }
    }

    /// Live sessions per backend id.
    pub fn per_backend(&self) -> HashMap<BackendId, u64> {
        self.seen.per_backend()
    }
}

/// `duration` in milliseconds, capped as the table caps an entry's lifetime (`u32`, 49 days),
/// so that a window read back from an entry compares equal to the one it was bound with.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .map_or(u64::from(u32::MAX), |ms| ms.min(u64::from(u32::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_counted_on_their_latest_backend() {
        let sessions = LiveSessions::new(Duration::from_secs(60));
        let (a, b) = (BackendId::from("a"), BackendId::from("b"));
        sessions.touch(1, &a);
        sessions.touch(2, &a);
        sessions.touch(2, &a);
        sessions.touch(3, &b);
        sessions.touch(1, &b);
        let counts = sessions.per_backend();
        assert_eq!((counts.get(&a), counts.get(&b)), (Some(&1), Some(&2)));
    }

    #[test]
    fn a_shorter_window_applies_to_the_sessions_already_tracked() {
        let sessions = LiveSessions::new(Duration::from_secs(60));
        let a = BackendId::from("a");
        sessions.touch(1, &a);
        sessions.set_idle(Duration::from_millis(200));
        assert_eq!(
            sessions.per_backend().get(&a),
            Some(&1),
            "a live session was dropped"
        );
        // Waiting out the new window is the behaviour under test.
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            sessions.per_backend().is_empty(),
            "the session kept the old window"
        );
    }

    #[test]
    fn a_session_is_idle_past_the_window_asked_and_an_unknown_one_only_once_tracking_is_older() {
        let sessions = LiveSessions::new(Duration::from_secs(60));
        let after = Duration::from_millis(100);
        sessions.touch(1, &BackendId::from("a"));
        assert!(!sessions.idle_longer_than(1, after));
        assert!(
            !sessions.idle_longer_than(2, after),
            "unknown, but tracking began too lately to tell"
        );
        // Waiting out the window is the behaviour under test.
        std::thread::sleep(Duration::from_millis(150));
        assert!(sessions.idle_longer_than(1, after));
        assert!(sessions.idle_longer_than(2, after));
        sessions.touch(1, &BackendId::from("a"));
        assert!(
            !sessions.idle_longer_than(1, after),
            "a request makes it live"
        );
    }

    #[test]
    fn an_idle_session_stops_counting() {
        let sessions = LiveSessions::new(Duration::from_millis(200));
        sessions.touch(1, &BackendId::from("a"));
        // Waiting out the idle window is the behaviour under test.
        std::thread::sleep(Duration::from_millis(300));
        assert!(sessions.per_backend().is_empty());
    }
}
