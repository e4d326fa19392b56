//! The stick table shared through Redis by several stickyd instances.
//!
//! Every binding lives in Redis as `<key_prefix><service>:<session>` = backend id, with its TTL
//! (`SET .. PX`), and in the local in-memory table in front of it: hot lookups stay off the network,
//! and when Redis is down, slow or flapping the local table answers alone. A request never
//! fails because of Redis: every call is bounded by `redis_timeout` (default 50 ms), errors
//! are counted and logged once per outage, and the connection is set up again with
//! exponential backoff, after which sharing resumes. Redis is one server, the master Redis
//! Sentinel names, searched for again after a failed call so that a failover moves the table to
//! the promoted replica, or a Redis Cluster, where each key lives on the master of its slot
//! ([`super::link`]). Every call names one key, so it goes to one slot, as Cluster requires.
//!
//! - A lookup that misses locally asks Redis (`GET` and `PTTL`, in one Lua script:
//!   [`LOOKUP_SCRIPT`]) and keeps the answer locally.
//! - A new session's reservation is `SET key id NX GET PX reservation_ttl` (with the `PTTL` of
//!   the key, in one Lua script: [`RESERVE_SCRIPT`]): the first instance to reserve wins, and
//!   every other instance adopts its choice (Redis 7.0+). A reservation lives
//!   `reservation_ttl` (seconds), so ids that only clients carried leave no lasting key.
//! - A confirmation (the app's `Set-Cookie`) and an admin rebind are written through with the
//!   full TTL (`SET .. PX`).
//! - A redispatch moves the session and keeps the key's TTL (`SET .. XX KEEPTTL`, Redis 6.0+),
//!   or reserves it anew when the key is gone (`SET .. NX PX reservation_ttl`), atomically, in
//!   one Lua script ([`REBIND_SCRIPT`]).
//! - A local hit refreshes the Redis TTL (`PEXPIRE .. GT`, never shortening it) in a background
//!   task, so the request never waits, at most once per [`refresh_interval`] of the entry's
//!   lifetime: an eighth of it, but at least 1 s and at most half of it. A session in use keeps
//!   at least 7/8 of its lifetime in Redis (half, for lifetimes under 2 s), and costs one
//!   `PEXPIRE` per eighth of its lifetime per instance, whatever its request rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

use super::expiring::ExpiringMap;
use super::link::{Connection, Link};
use crate::config::RedisTarget;
use crate::pool::BackendId;

/// Local hits of one session refresh its Redis TTL at most once per this fraction of its
/// lifetime (8: once per `ttl / 8`, 225 s under the default 30 min `ttl`). Proportional, not a
/// fixed period: the refresh exists to keep a key in use from expiring, and an eighth of the
/// lifetime does that with margin (the key never falls below 7/8 of it while in use), whatever
/// the TTL. 1 000 000 hot sessions under the default `ttl` cost about 4 400 `PEXPIRE`/s per
/// instance, where a fixed 10 s period cost up to 100 000/s.
pub const REFRESH_FRACTION: u32 = 8;

/// Shortest time between two Redis TTL refreshes of one session on local hits (1 s), so that a
/// short-lived entry (a reservation of a few seconds) is not refreshed every few hundred
/// milliseconds; for a lifetime under 2 s, half the lifetime instead (see [`refresh_interval`]).
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// The time local hits of a session with lifetime `ttl` wait before they refresh its Redis TTL
/// again: `ttl / 8` ([`REFRESH_FRACTION`]), but at least [`MIN_REFRESH_INTERVAL`] (1 s) and
/// never more than `ttl / 2`, so a key in use is refreshed at least twice per lifetime and
/// never expires while its session is in use. Examples: 30 min -> 225 s, 10 s -> 1.25 s,
/// 4 s -> 1 s, 1 s -> 500 ms.
pub fn refresh_interval(ttl: Duration) -> Duration {
    (ttl / REFRESH_FRACTION).max(MIN_REFRESH_INTERVAL.min(ttl / 2))
}

/// A lookup as one command on one key (`EVAL`, `KEYS[1]` the key): `GET key` and `PTTL key`;
/// answers `[backend id or nil, PTTL in ms]`. One command rather than a pipeline of two: while a
/// Redis Cluster migrates the key's slot, the cluster client follows an `ASK` redirection by
/// sending `ASKING` once, which lets only the next command through (Redis Cluster
/// specification, "ASK redirection"), so the second command of a pipeline is refused again
/// and again.
pub const LOOKUP_SCRIPT: &str = "\
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}";

/// A reservation as one atomic step on one key (`EVAL`, `KEYS[1]` the key, `ARGV[1]` the
/// backend id, `ARGV[2]` the reservation lifetime in ms): `SET key id NX GET PX ms`, then
/// `PTTL key`; answers `[holder or nil, PTTL in ms]`. A script rather than a `MULTI`/`EXEC`
/// transaction: Redis Cluster routes it by its one declared key like any single command, and the
/// cluster client follows a `MOVED` or `ASK` redirection for it (a slot resharded or being
/// migrated, a failover); for a transaction it does not: the node answers the queued commands
/// with the redirection and aborts the transaction (`EXECABORT`), and the client gives that back
/// as is. A script is atomic (Redis manual, "Scripting with Lua": "Redis guarantees the script's
/// atomic execution"); one server and Sentinel run the same script.
pub const RESERVE_SCRIPT: &str = "\
local holder = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'GET', 'PX', ARGV[2])
return {holder, redis.call('PTTL', KEYS[1])}";

/// A move as one atomic step on one key (`EVAL`, `KEYS[1]` the key, `ARGV[1]` the backend id,
/// `ARGV[2]` the reservation lifetime in ms): `SET key id XX KEEPTTL` (the key keeps its
/// lifetime), else, when there is no key, `SET key id NX PX ms` (a reservation); answers the
/// key's `PTTL` in ms. A script for the reasons [`RESERVE_SCRIPT`] gives.
pub const REBIND_SCRIPT: &str = "\
if not redis.call('SET', KEYS[1], ARGV[1], 'XX', 'KEEPTTL') then
  redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
end
return redis.call('PTTL', KEYS[1])";

/// Redis-backed stick table with a local table in front.
pub struct SharedTable {
    local: ExpiringMap,
    /// Sessions whose Redis TTL was refreshed lately, used as a set (the backend an entry
    /// holds is never read): each entry lives for [`refresh_interval`] of the session's
    /// lifetime from its refresh.
    refreshed: ExpiringMap,
    /// Shared with the refresh tasks.
    remote: Arc<Remote>,
    /// `<key_prefix><service>:`
    namespace: String,
}

/// The Redis side of a table: its connection and how its calls are bounded and counted.
struct Remote {
    link: Link,
    /// Longest one call may take (`redis_timeout`).
    timeout: Duration,
    /// Failed or timed-out calls (`stickyd_redis_errors_total`).
    errors: Counter,
    /// False during an outage, so its start and end are logged once each.
    reachable: AtomicBool,
}

impl std::fmt::Debug for SharedTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTable")
            .field("namespace", &self.namespace)
            .field("local", &self.local)
            .finish()
    }
}

/// Why a Redis stick table could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SharedTableError {
    /// The `redis` crate cannot use the target (its URL was validated with the config, so this
    /// is not expected).
    #[error("cannot use redis_url: {source}")]
    Client {
        /// What the `redis` crate said.
        #[from]
        source: redis::RedisError,
    },
}

impl SharedTable {
    /// A store for `service` on `target` (one server, the master Redis Sentinel names, or a
    /// Redis Cluster), keys under `key_prefix`, each call bounded by `timeout`, errors counted
    /// in `errors`. Redis may be down at start: one server is connected to lazily, and the
    /// search for a Sentinel master and the connection to a Cluster's seed nodes start in the
    /// background. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// [`SharedTableError::Client`] for a target the `redis` crate cannot use.
    pub fn new(
        target: &RedisTarget,
        key_prefix: &str,
        service: &str,
        max_entries: u64,
        timeout: Duration,
        errors: Counter,
    ) -> Result<SharedTable, SharedTableError> {
        Ok(SharedTable {
            local: ExpiringMap::new(max_entries),
            refreshed: ExpiringMap::new(max_entries),
            remote: Arc::new(Remote {
                link: Link::new(target, timeout)?,
                timeout,
                errors,
                reachable: AtomicBool::new(true),
            }),
            namespace: format!("{key_prefix}{service}:"),
        })
    }

    /// The backend bound to `session`: the local table first, then Redis.
    pub async fn get(&self, session: &str) -> Option<BackendId> {
        match self.local.get_with_ttl(session) {
            Some((backend, ttl)) => {
                self.refresh_later(session, &backend, ttl);
                Some(backend)
            }
            None => self.get_fresh(session).await,
        }
    }

    /// The backend bound to `session`, changing nothing: no TTL restarted or refreshed, nothing
    /// kept locally. With `fresh`, Redis is asked even when the local table knows the session.
    pub async fn peek(&self, session: &str, fresh: bool) -> Option<BackendId> {
        if !fresh && let Some(backend) = self.local.peek(session) {
            return Some(backend);
        }
        let mut command = redis::cmd("GET");
        command.arg(self.key(session));
        let answer: Option<Option<String>> = self
            .remote
            .call(async |redis| command.query_async(redis).await)
            .await;
        match answer {
            Some(id) => id.map(|id| BackendId::from(id.as_str())),
            None => self.local.peek(session),
        }
    }

    /// The binding Redis holds for `session`, bypassing the local table (another instance may
    /// have rebound it); kept locally. Falls back to the local table when Redis fails.
    pub async fn get_fresh(&self, session: &str) -> Option<BackendId> {
        let mut command = redis::cmd("EVAL");
        command.arg(LOOKUP_SCRIPT).arg(1).arg(self.key(session));
        let answer: Option<(Option<String>, i64)> = self
            .remote
            .call(async |redis| command.query_async(redis).await)
            .await;
        match answer {
            Some((Some(id), remaining_ms)) if remaining_ms > 0 => {
                let backend = BackendId::from(id.as_str());
                self.local.bind(
                    session,
                    &backend,
                    Duration::from_millis(remaining_ms as u64),
                );
                Some(backend)
            }
            Some(_) => None,
            None => self.local.get(session),
        }
    }

    /// Binds `session` to `backend` for `ttl` (the reservation lifetime) unless some instance
    /// already did, in one atomic step ([`RESERVE_SCRIPT`]); returns the binding that holds. A
    /// holder found in Redis is kept locally for what is left of its TTL, as
    /// [`SharedTable::get_fresh`] does.
    pub async fn reserve(&self, session: &str, backend: &BackendId, ttl: Duration) -> BackendId {
        let mut command = redis::cmd("EVAL");
        command
            .arg(RESERVE_SCRIPT)
            .arg(1)
            .arg(self.key(session))
            .arg(&**backend)
            .arg(millis(ttl));
        let previous: Option<(Option<String>, i64)> = self
            .remote
            .call(async |redis| command.query_async(redis).await)
            .await;
        match previous {
            Some((Some(holder), remaining_ms)) => {
                let holder = BackendId::from(holder.as_str());
                self.local
                    .bind(session, &holder, remaining(remaining_ms, ttl));
                holder
            }
            Some((None, _)) => {
                self.local.bind(session, backend, ttl);
                BackendId::clone(backend)
            }
            None => self.local.reserve(session, backend, ttl),
        }
    }

    /// Binds `session` to `backend` for `ttl` here and, written through, in Redis (a
    /// confirmation or an operator's binding).
    pub async fn bind(&self, session: &str, backend: &BackendId, ttl: Duration) {
        self.local.bind(session, backend, ttl);
        let mut command = redis::cmd("SET");
        command
            .arg(self.key(session))
            .arg(&**backend)
            .arg("PX")
            .arg(millis(ttl));
        let _: Option<()> = self
            .remote
            .call(async |redis| command.query_async(redis).await)
            .await;
    }

    /// Moves `session` to `backend` here and in Redis, keeping the key's TTL (`SET .. XX
    /// KEEPTTL`), or reserving it for `reservation_ttl` when Redis holds no key (`SET .. NX
    /// PX`), in one atomic step ([`REBIND_SCRIPT`]). The local binding keeps its own lifetime,
    /// else takes what is left of the key's, else `reservation_ttl`.
    pub async fn rebind(&self, session: &str, backend: &BackendId, reservation_ttl: Duration) {
        let mut command = redis::cmd("EVAL");
        command
            .arg(REBIND_SCRIPT)
            .arg(1)
            .arg(self.key(session))
            .arg(&**backend)
            .arg(millis(reservation_ttl));
        let answer: Option<i64> = self
            .remote
            .call(async |redis| command.query_async(redis).await)
            .await;
        let ttl = answer.map_or(reservation_ttl, |remaining_ms| {
            remaining(remaining_ms, reservation_ttl)
        });
        self.local.rebind(session, backend, ttl);
    }

    /// Drops the binding of `session` here and in Redis.
    pub async fn forget(&self, session: &str) {
        self.local.forget(session);
        let mut command = redis::cmd("DEL");
        command.arg(self.key(session));
        let _: Option<()> = self
            .remote
            .call(async |redis| command.query_async(redis).await)
            .await;
    }

    /// This instance's table (what it has seen or learned).
    pub fn local(&self) -> &ExpiringMap {
        &self.local
    }

    /// Refreshes the Redis TTL of a session hit locally, at most once per
    /// [`refresh_interval`] of `ttl`, in a task of its own so the request never waits. `GT`: a
    /// refresh never shortens a key (another instance may have confirmed a session this one
    /// holds as a reservation).
    fn refresh_later(&self, session: &str, backend: &BackendId, ttl: Duration) {
        if self.refreshed.peek(session).is_some() {
            return;
        }
        self.refreshed.bind(session, backend, refresh_interval(ttl));
        let (remote, key) = (Arc::clone(&self.remote), self.key(session));
        tokio::spawn(async move {
            let mut command = redis::cmd("PEXPIRE");
            command.arg(key).arg(millis(ttl)).arg("GT");
            let _: Option<i64> = remote
                .call(async |redis| command.query_async(redis).await)
                .await;
        });
    }

    fn key(&self, session: &str) -> String {
        format!("{}{session}", self.namespace)
    }
}

impl Remote {
    /// Runs one Redis call on the current connection within the timeout; `None` (counted,
    /// logged once per outage) when it fails or is too slow, and then the link looks for the
    /// master again if it can move (Sentinel).
    async fn call<T>(
        &self,
        request: impl AsyncFnOnce(&mut Connection) -> redis::RedisResult<T>,
    ) -> Option<T> {
        let outcome = tokio::time::timeout(self.timeout, async {
            let mut connection = self.link.connection().await?;
            request(&mut connection).await
        })
        .await;
        let result = match outcome {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                tracing::debug!(%error, "redis call failed");
                None
            }
            Err(_) => None,
        };
        if result.is_none() {
            self.link.failed();
        }
        self.note(result.is_some());
        result
    }

    /// Counts a failed call, and logs the start and the end of an outage once each.
    fn note(&self, ok: bool) {
        if ok {
            if !self.reachable.swap(true, Ordering::Relaxed) {
                tracing::info!("redis reachable again: stick-table sharing resumed");
            }
        } else {
            self.errors.inc();
            if self.reachable.swap(false, Ordering::Relaxed) {
                tracing::warn!(
                    "redis unavailable or slow: serving stick-table lookups from this instance's table"
                );
            }
        }
    }
}

/// What is left of a key's TTL (a `PTTL` answer), or `otherwise` for a key without one.
fn remaining(remaining_ms: i64, otherwise: Duration) -> Duration {
    u64::try_from(remaining_ms)
        .ok()
        .filter(|ms| *ms > 0)
        .map_or(otherwise, Duration::from_millis)
}

fn millis(duration: Duration) -> u64 {
    duration.as_millis().clamp(1, u128::from(u64::MAX)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_lifetime_is_refreshed_once_per_eighth_of_it() {
        for (ttl, interval) in [
            (Duration::from_secs(30 * 60), Duration::from_secs(225)),
            (Duration::from_secs(3600), Duration::from_secs(450)),
            (
                Duration::from_secs(24 * 3600),
                Duration::from_secs(3 * 3600),
            ),
            (Duration::from_secs(10), Duration::from_millis(1250)),
            (Duration::from_secs(8), Duration::from_secs(1)),
        ] {
            assert_eq!(refresh_interval(ttl), interval, "ttl {ttl:?}");
        }
    }

    #[test]
    fn a_short_lifetime_waits_at_least_a_second_and_at_most_half_of_it() {
        for (ttl, interval) in [
            (Duration::from_secs(4), Duration::from_secs(1)),
            (Duration::from_secs(2), Duration::from_secs(1)),
            (Duration::from_millis(1500), Duration::from_millis(750)),
            (Duration::from_secs(1), Duration::from_millis(500)),
            (Duration::from_millis(100), Duration::from_millis(50)),
        ] {
            assert_eq!(refresh_interval(ttl), interval, "ttl {ttl:?}");
        }
    }

    #[test]
    fn a_key_in_use_never_falls_below_seven_eighths_or_half_of_its_lifetime() {
        for ms in (1..=200u64)
            .chain((200..=100_000).step_by(997))
            .chain([7_200_000])
        {
            let ttl = Duration::from_millis(ms);
            let interval = refresh_interval(ttl);
            assert!(interval <= ttl / 2, "ttl {ttl:?}: {interval:?}");
            assert!(
                interval >= (ttl / 2).min(MIN_REFRESH_INTERVAL),
                "ttl {ttl:?}: {interval:?}"
            );
            if ttl >= MIN_REFRESH_INTERVAL * REFRESH_FRACTION {
                assert!(ttl - interval >= ttl * 7 / 8, "ttl {ttl:?}: {interval:?}");
            }
        }
    }
}
