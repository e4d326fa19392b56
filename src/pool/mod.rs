//! The backends of one service and their live state: in-flight requests and passive ejection.
//!
//! A backend that refuses a connection is ejected for the service's `ejection_time`; while
//! ejected it gets neither new sessions nor its pinned ones, which are redispatched. All state
//! is atomics, so the request path takes no lock here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::BackendConfig;

/// A backend's stable id, as written in cookies and stick-table entries. Cheap to clone.
pub type BackendId = Arc<str>;

/// One backend server of a service.
#[derive(Debug)]
pub struct Backend {
    /// Name from the config, for logs.
    pub name: String,
    /// Stable id written in cookies; never the address.
    pub id: BackendId,
    /// Where requests go.
    pub address: SocketAddr,
    /// Relative share of new sessions (1..=1000).
    pub weight: u32,
    in_flight: AtomicU32,
    /// Milliseconds since [`Pool::epoch`] until which the backend is ejected.
    ejected_until_ms: AtomicU64,
}

impl Backend {
    /// Requests sent to this backend whose response has not finished.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// The backends of one service, in config order; indexes are stable for the pool's life.
#[derive(Debug)]
pub struct Pool {
    backends: Vec<Backend>,
    epoch: Instant,
    ejection_time: Duration,
}

impl Pool {
    /// Builds the pool; `ejection_time` is how long a backend that refused a connection is skipped.
    pub fn new(backends: &[BackendConfig], ejection_time: Duration) -> Pool {
        let backends = backends
            .iter()
            .map(|config| Backend {
                name: config.name.clone(),
                id: Arc::from(config.id.as_str()),
                address: config.address,
                weight: config.weight,
                in_flight: AtomicU32::new(0),
                ejected_until_ms: AtomicU64::new(0),
            })
            .collect();
        Pool {
            backends,
            epoch: Instant::now(),
            ejection_time,
        }
    }

    /// All backends, indexable by the indexes this pool hands out.
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// The backend at `index`. Panics when `index` did not come from this pool.
    pub fn get(&self, index: usize) -> &Backend {
        &self.backends[index]
    }

    /// Index of the backend whose id is `id`, if any.
    pub fn find_id(&self, id: &str) -> Option<usize> {
        self.backends.iter().position(|backend| &*backend.id == id)
    }

    /// Whether `index` may take requests now (it is not ejected).
    pub fn is_usable(&self, index: usize) -> bool {
        let until = self.backends[index]
            .ejected_until_ms
            .load(Ordering::Relaxed);
        self.now_ms() >= until
    }

    /// Marks `index` unusable for the ejection time, after a refused or timed-out connection.
    pub fn eject(&self, index: usize) {
        let until = self.now_ms() + self.ejection_time.as_millis() as u64;
        self.backends[index]
            .ejected_until_ms
            .store(until, Ordering::Relaxed);
    }

    /// Counts one request in flight on `index` until the guard is dropped.
    pub fn start_request(self: &Arc<Self>, index: usize) -> InFlight {
        self.backends[index]
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        InFlight {
            pool: Arc::clone(self),
            index,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// One request in flight on a backend; dropping it ends the count (when the response body is
/// done, so least-connections sees streaming responses as load).
#[derive(Debug)]
pub struct InFlight {
    pool: Arc<Pool>,
    index: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.pool.backends[self.index]
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(ejection: Duration) -> Arc<Pool> {
        let backend = |name: &str| BackendConfig {
            name: name.into(),
            id: format!("id-{name}"),
            address: "127.0.0.1:1".parse().unwrap(),
            weight: 1,
        };
        Arc::new(Pool::new(&[backend("a"), backend("b")], ejection))
    }

    #[test]
    fn ids_resolve_to_indexes_and_unknown_ids_to_none() {
        let pool = pool(Duration::from_secs(5));
        assert_eq!(pool.find_id("id-b"), Some(1));
        assert_eq!(pool.find_id("b"), None);
    }

    #[test]
    fn an_ejected_backend_is_unusable_until_the_ejection_time_passes() {
        let long = pool(Duration::from_secs(60));
        long.eject(0);
        assert!(!long.is_usable(0));
        assert!(long.is_usable(1));
        let instant = pool(Duration::ZERO);
        instant.eject(0);
        assert!(instant.is_usable(0));
    }

    #[test]
    fn in_flight_counts_until_the_guard_drops() {
        let pool = pool(Duration::from_secs(5));
        let first = pool.start_request(1);
        let second = pool.start_request(1);
        assert_eq!(pool.get(1).in_flight(), 2);
        drop(first);
        drop(second);
        assert_eq!(pool.get(1).in_flight(), 0);
    }
}
