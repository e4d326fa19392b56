//! The stick table shared through Redis by several stickyd instances.
//!
//! Every binding lives in Redis as `<key_prefix><service>:<session>` = backend id, with its TTL
//! (`SET .. PX`), and in the local in-memory table in front of it: hot lookups stay off the network,
//! and when Redis is down, slow or flapping the local table answers alone. A request never
//! fails because of Redis: every call is bounded by `redis_timeout` (default 50 ms), errors
//! are counted and logged once per outage, and the connection manager reconnects with
//! exponential backoff, after which sharing resumes.
//!
//! - A lookup that misses locally asks Redis (`GET` + `PTTL`) and keeps the answer locally.
//! - A new session's reservation is `SET key id NX GET PX reservation_ttl`: the first instance
//!   to reserve wins, and every other instance adopts its choice (Redis 7.0+). A reservation
//!   lives `reservation_ttl` (seconds), so ids that only clients carried leave no lasting key.
//! - A confirmation (the app's `Set-Cookie`) and an admin rebind are written through with the
//!   full TTL (`SET .. PX`).
//! - A redispatch moves the session and keeps the key's TTL (`SET .. XX KEEPTTL`, Redis 6.0+),
//!   or reserves it anew when the key is gone (`SET .. NX PX reservation_ttl`), atomically.
//! - A local hit refreshes the Redis TTL (`PEXPIRE .. GT`, never shortening it) at most every
//!   [`REFRESH_EVERY`], and at least twice per lifetime of a short-lived entry.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::expiring::ExpiringMap;
use crate::pool::BackendId;

/// Longest time between two Redis TTL refreshes of one session on local hits (an entry whose
/// lifetime is under twice this is refreshed every half lifetime).
pub const REFRESH_EVERY: Duration = Duration::from_secs(10);

/// Redis-backed stick table with a local table in front.
pub struct SharedTable {
    local: ExpiringMap,
    /// Sessions whose Redis TTL was refreshed lately, used as a set (the backend an entry
    /// holds is never read): each entry lives for the throttle window ([`REFRESH_EVERY`], or
    /// half a short lifetime) from its refresh.
    refreshed: ExpiringMap,
    redis: ConnectionManager,
    /// `<key_prefix><service>:`
    namespace: String,
    timeout: Duration,
    errors: Counter,
    reachable: Arc<AtomicBool>,
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
    /// The URL is not a Redis URL the client understands.
    #[error("invalid redis_url: {0}")]
    Url(#[from] redis::RedisError),
}

impl SharedTable {
    /// A store for `service` on `url` (`redis://` or `rediss://`), keys under `key_prefix`,
    /// each call bounded by `timeout`, errors counted in `errors`. Connects lazily: Redis may be
    /// down at start. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// [`SharedTableError::Url`] for a URL the client cannot use.
    pub fn new(
        url: &str,
        key_prefix: &str,
        service: &str,
        max_entries: u64,
        timeout: Duration,
        errors: Counter,
    ) -> Result<SharedTable, SharedTableError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(5));
        let redis = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(SharedTable {
            local: ExpiringMap::new(max_entries),
            refreshed: ExpiringMap::new(max_entries),
            redis,
            namespace: format!("{key_prefix}{service}:"),
            timeout,
            errors,
            reachable: Arc::new(AtomicBool::new(true)),
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
            .call(command.query_async(&mut self.redis.clone()))
            .await;
        match answer {
            Some(id) => id.map(|id| BackendId::from(id.as_str())),
            None => self.local.peek(session),
        }
    }

    /// The binding Redis holds for `session`, bypassing the local table (another instance may
    /// have rebound it); kept locally. Falls back to the local table when Redis fails.
    pub async fn get_fresh(&self, session: &str) -> Option<BackendId> {
        let key = self.key(session);
        let mut pipe = redis::pipe();
        pipe.get(&key).pttl(&key);
        let answer: Option<(Option<String>, i64)> =
            self.call(pipe.query_async(&mut self.redis.clone())).await;
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
    /// already did; returns the binding that holds. A holder found in Redis is kept locally for
    /// what is left of its TTL, as [`SharedTable::get_fresh`] does.
    pub async fn reserve(&self, session: &str, backend: &BackendId, ttl: Duration) -> BackendId {
        let key = self.key(session);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(&key)
            .arg(&**backend)
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(millis(ttl))
            .cmd("PTTL")
            .arg(&key);
        let previous: Option<(Option<String>, i64)> =
            self.call(pipe.query_async(&mut self.redis.clone())).await;
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
            .call(command.query_async(&mut self.redis.clone()))
            .await;
    }

    /// Moves `session` to `backend` here and in Redis, keeping the key's TTL (`SET .. XX
    /// KEEPTTL`), or reserving it for `reservation_ttl` when Redis holds no key (`SET .. NX
    /// PX`), in one transaction. The local binding keeps its own lifetime, else takes what is
    /// left of the key's, else `reservation_ttl`.
    pub async fn rebind(&self, session: &str, backend: &BackendId, reservation_ttl: Duration) {
        let key = self.key(session);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(&key)
            .arg(&**backend)
            .arg("XX")
            .arg("KEEPTTL")
            .ignore()
            .cmd("SET")
            .arg(&key)
            .arg(&**backend)
            .arg("NX")
            .arg("PX")
            .arg(millis(reservation_ttl))
            .ignore()
            .cmd("PTTL")
            .arg(&key);
        let answer: Option<(i64,)> = self.call(pipe.query_async(&mut self.redis.clone())).await;
        let ttl = answer.map_or(reservation_ttl, |(remaining_ms,)| {
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
            .call(command.query_async(&mut self.redis.clone()))
            .await;
    }

    /// This instance's table (what it has seen or learned).
    pub fn local(&self) -> &ExpiringMap {
        &self.local
    }

    /// Refreshes the Redis TTL of a session hit locally, at most every [`REFRESH_EVERY`] and
    /// at least twice per `ttl`, without making the request wait. `GT`: a refresh never
    /// shortens a key (another instance may have confirmed a session this one holds as a
    /// reservation).
    fn refresh_later(&self, session: &str, backend: &BackendId, ttl: Duration) {
        if self.refreshed.peek(session).is_some() {
            return;
        }
        self.refreshed
            .bind(session, backend, REFRESH_EVERY.min(ttl / 2));
        let (mut redis, key, timeout) = (self.redis.clone(), self.key(session), self.timeout);
        let (errors, reachable) = (self.errors.clone(), Arc::clone(&self.reachable));
        tokio::spawn(async move {
            let mut command = redis::cmd("PEXPIRE");
            command.arg(key).arg(millis(ttl)).arg("GT");
            let outcome =
                tokio::time::timeout(timeout, command.query_async::<i64>(&mut redis)).await;
            note(
                outcome
                    .map_err(|_| ())
                    .and_then(|result| result.map_err(|_| ()))
                    .is_ok(),
                &errors,
                &reachable,
            );
        });
    }

    /// Runs one Redis call within the timeout; `None` (counted, logged once per outage) when
    /// it fails or is too slow.
    async fn call<T>(
        &self,
        request: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        let result = match tokio::time::timeout(self.timeout, request).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                tracing::debug!(%error, "redis call failed");
                None
            }
            Err(_) => None,
        };
        note(result.is_some(), &self.errors, &self.reachable);
        result
    }

    fn key(&self, session: &str) -> String {
        format!("{}{session}", self.namespace)
    }
}

/// Counts a failed call, and logs the start and the end of an outage once each.
fn note(ok: bool, errors: &Counter, reachable: &AtomicBool) {
    if ok {
        if !reachable.swap(true, Ordering::Relaxed) {
            tracing::info!("redis reachable again: stick-table sharing resumed");
        }
    } else {
        errors.inc();
        if reachable.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                "redis unavailable or slow: serving stick-table lookups from this instance's table"
            );
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
