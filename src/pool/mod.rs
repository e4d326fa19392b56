//! The backends of one service and their live state: admin state, health, passive ejection,
//! in-flight requests, live sessions, and the slow start of a backend that joins.
//!
//! Which backend may take what:
//! - a **new session** goes to a backend that is `ready`, healthy and not ejected, and to a
//!   `backup` backend only while no primary can take it;
//! - a **bound session** stays on a backend that is healthy, not ejected and not in `maint`
//!   (a draining backend keeps its sessions); with failback, a session bound to a backup moves
//!   back as soon as a primary can take new sessions.
//!
//! The live state of a backend sits behind an `Arc` that a pool built on reload adopts when the
//! backend (same name and address) is still configured, so health, counters and bindings carry
//! over. All state is atomics: the request path takes no lock here.

pub mod health;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::clock::now_ms;
use crate::config::{AdminState, BackendConfig};

/// A backend's stable id, as written in cookies and stick-table entries. Cheap to clone.
pub type BackendId = Arc<str>;

/// How a pool treats failures and backups; from the service config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolPolicy {
    /// How long an ejected backend is skipped. Default: 5 s.
    pub ejection_time: Duration,
    /// Consecutive failed requests that eject a backend; 0 never ejects. Default: 1.
    pub passive_failures: u32,
    /// Sessions bound to a backup move back once a primary can take new sessions. Default: true.
    pub failback: bool,
    /// How long a joining backend's weight takes to ramp up (see [`Pool::effective_weight`]).
    /// Default: 0 (no ramp).
    pub slow_start: Duration,
}

impl Default for PoolPolicy {
    fn default() -> PoolPolicy {
        PoolPolicy {
            ejection_time: Duration::from_secs(5),
            passive_failures: 1,
            failback: true,
            slow_start: Duration::ZERO,
        }
    }
}

/// The live state of one backend, shared by every pool (before and after a reload) that has it.
#[derive(Debug)]
pub struct BackendState {
    in_flight: AtomicU32,
    /// Milliseconds since [`epoch`] until which the backend is ejected.
    ejected_until_ms: AtomicU64,
    consecutive_failures: AtomicU32,
    admin: AtomicU8,
    healthy: AtomicBool,
    /// [`now_ms`] of the last health flip or ejection start; [`NEVER`] when there was none.
    health_changed_ms: AtomicU64,
    /// Live sessions at the last count ([`Pool::set_live_sessions`]).
    sessions: AtomicU64,
    /// New sessions placed here since that count ([`Pool::count_placement`]).
    placed: AtomicU64,
    /// [`now_ms`] when it last joined (added by a reload, back up, out of maint), the start of
    /// its slow start; [`NEVER`] when it has been there since the service started.
    joined_ms: AtomicU64,
}

impl BackendState {
    fn new(admin: AdminState, joined_ms: u64) -> BackendState {
        BackendState {
            in_flight: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            admin: AtomicU8::new(admin as u8),
            healthy: AtomicBool::new(true),
            health_changed_ms: AtomicU64::new(NEVER),
            sessions: AtomicU64::new(0),
            placed: AtomicU64::new(0),
            joined_ms: AtomicU64::new(joined_ms),
        }
    }
}

/// `health_changed_ms` of a backend whose health has not changed since it was added.
const NEVER: u64 = u64::MAX;

/// What the health checks and passive ejection say of a backend now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Active checks (if any) pass and it is not ejected.
    Up,
    /// Active checks fail (`fall` in a row, until `rise` pass).
    Down,
    /// Passive ejection keeps it out for `ejection_time` after failed requests.
    Ejected,
}

impl Health {
    /// `up`, `down` or `ejected`, as `/status` writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Down => "down",
            Health::Ejected => "ejected",
        }
    }
}

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
    /// Takes traffic only while no primary can.
    pub backup: bool,
    /// The admin state the config gave; a reload that changes it applies it, one that does not
    /// keeps whatever the admin API set.
    configured_state: AdminState,
    state: Arc<BackendState>,
}

impl Backend {
    /// Requests sent to this backend whose response has not finished.
    pub fn in_flight(&self) -> u32 {
        self.state.in_flight.load(Ordering::Relaxed)
    }

    /// The operator's state for it.
    pub fn admin_state(&self) -> AdminState {
        match self.state.admin.load(Ordering::Relaxed) {
            0 => AdminState::Ready,
            1 => AdminState::Drain,
            _ => AdminState::Maint,
        }
    }

    /// Whether active health checks (if any) currently count it up.
    pub fn is_healthy(&self) -> bool {
        self.state.healthy.load(Ordering::Relaxed)
    }

    /// Whether passive ejection currently keeps it out.
    pub fn is_ejected(&self) -> bool {
        // A backend never ejected reads no clock: this is asked on every request.
        let until = self.state.ejected_until_ms.load(Ordering::Relaxed);
        until != 0 && now_ms() < until
    }

    fn is_up(&self) -> bool {
        self.is_healthy() && !self.is_ejected()
    }

    /// Its live sessions as `least-sessions` weighs them: those at the last count plus those
    /// placed on it since.
    pub fn session_load(&self) -> u64 {
        self.state.sessions.load(Ordering::Relaxed) + self.state.placed.load(Ordering::Relaxed)
    }

    /// Its health now: down (active checks) before ejected (passive).
    pub fn health(&self) -> Health {
        if !self.is_healthy() {
            Health::Down
        } else if self.is_ejected() {
            Health::Ejected
        } else {
            Health::Up
        }
    }

    /// Milliseconds since its health last changed (a check flip, the start or the end of an
    /// ejection), on [`now_ms`]'s clock; `None` when it has not changed since the backend
    /// was added (a reload that keeps the backend keeps its history).
    pub fn health_changed_ms_ago(&self) -> Option<u64> {
        let now = now_ms();
        let changed = self.state.health_changed_ms.load(Ordering::Relaxed);
        let ejection_end = self.state.ejected_until_ms.load(Ordering::Relaxed);
        // An ejection ends by time alone, so its end is a transition nobody recorded.
        let last = match (changed, ejection_end) {
            (NEVER, 0) => return None,
            (NEVER, end) if end <= now => end,
            (NEVER, _) => return None,
            (changed, end) if end != 0 && end <= now => changed.max(end),
            (changed, _) => changed,
        };
        Some(now.saturating_sub(last))
    }
}

/// The backends of one service, in config order; indexes are stable for the pool's life.
#[derive(Debug)]
pub struct Pool {
    /// The service's name, for every log line about one of its backends.
    service: String,
    backends: Vec<Backend>,
    policy: PoolPolicy,
    /// Bumped on every state change (health, admin state, the start of an ejection), for
    /// whoever must react; shared with the pools that replace this one on reload.
    changes: Arc<watch::Sender<u64>>,
}

impl Pool {
    /// Builds the pool of service `service`. Backends also in `previous` (same name and
    /// address) keep its live state.
    pub fn new(
        service: &str,
        backends: &[BackendConfig],
        policy: PoolPolicy,
        previous: Option<&Pool>,
    ) -> Pool {
        let backends = backends
            .iter()
            .map(|config| {
                let kept = previous.and_then(|pool| {
                    pool.backends
                        .iter()
                        .find(|old| old.name == config.name && old.address == config.address)
                });
                let state = match kept {
                    Some(old) => {
                        if old.configured_state != config.state {
                            old.state.admin.store(config.state as u8, Ordering::Relaxed);
                        }
                        Arc::clone(&old.state)
                    }
                    // One added by a reload joins a farm that is already serving.
                    None => Arc::new(BackendState::new(
                        config.state,
                        if previous.is_some() { now_ms() } else { NEVER },
                    )),
                };
                Backend {
                    name: config.name.clone(),
                    id: Arc::from(config.id.as_str()),
                    address: config.address,
                    weight: config.weight,
                    backup: config.backup,
                    configured_state: config.state,
                    state,
                }
            })
            .collect();
        let changes = previous.map_or_else(
            || Arc::new(watch::Sender::new(0)),
            |pool| Arc::clone(&pool.changes),
        );
        Pool {
            service: service.to_string(),
            backends,
            policy,
            changes,
        }
    }

    /// The service's name.
    pub fn service(&self) -> &str {
        &self.service
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

    /// Index of the backend called `name`, if any.
    pub fn find_name(&self, name: &str) -> Option<usize> {
        self.backends
            .iter()
            .position(|backend| backend.name == name)
    }

    /// Whether `index` may take a new session now.
    pub fn accepts_new(&self, index: usize) -> bool {
        let backend = &self.backends[index];
        backend.admin_state() == AdminState::Ready
            && backend.is_up()
            && (!backend.backup || !self.a_primary_accepts_new())
    }

    /// Whether `index` may keep serving a session bound to it.
    pub fn accepts_bound(&self, index: usize) -> bool {
        let backend = &self.backends[index];
        backend.admin_state() != AdminState::Maint
            && backend.is_up()
            && !(backend.backup && self.policy.failback && self.a_primary_accepts_new())
    }

    fn a_primary_accepts_new(&self) -> bool {
        self.backends.iter().any(|backend| {
            !backend.backup && backend.admin_state() == AdminState::Ready && backend.is_up()
        })
    }

    /// Sets the operator's state of `index`.
    pub fn set_admin_state(&self, index: usize, state: AdminState) {
        let previous = self.backends[index]
            .state
            .admin
            .swap(state as u8, Ordering::Relaxed);
        if previous != state as u8 {
            if previous == AdminState::Maint as u8 {
                self.join(index);
            }
            tracing::info!(service = %self.service, backend = %self.backends[index].name, state = %state.as_str(), "admin state changed");
            self.changed();
        }
    }

    /// Records an active check's verdict; returns whether the backend's health flipped.
    pub fn set_healthy(&self, index: usize, healthy: bool) -> bool {
        let flipped = self.backends[index]
            .state
            .healthy
            .swap(healthy, Ordering::Relaxed)
            != healthy;
        if flipped {
            self.backends[index]
                .state
                .health_changed_ms
                .store(now_ms(), Ordering::Relaxed);
            if healthy {
                self.join(index);
            }
            self.changed();
        }
        flipped
    }

    /// `index` joins the farm now: its slow start begins.
    fn join(&self, index: usize) {
        self.backends[index]
            .state
            .joined_ms
            .store(now_ms(), Ordering::Relaxed);
    }

    /// The weight `index` takes new sessions with now, in thousandths of a weight unit: its
    /// weight times the share of `slow_start` elapsed since it joined (HAProxy's `slowstart`
    /// ramp, linear), at least 1 so a joining backend is never left out; its full weight when
    /// `slow_start` is zero or over, or when it never joined (there from the service's start).
    pub fn effective_weight(&self, index: usize) -> u64 {
        let full = u64::from(self.backends[index].weight) * 1000;
        let ramp = self.policy.slow_start.as_millis() as u64;
        if ramp == 0 {
            return full;
        }
        let joined = self.backends[index].state.joined_ms.load(Ordering::Relaxed);
        if joined == NEVER {
            return full;
        }
        let elapsed = now_ms().saturating_sub(joined);
        if elapsed >= ramp {
            full
        } else {
            (full * elapsed / ramp).max(1)
        }
    }

    /// Stores a count of live sessions per backend id (from the session tracker or the stick
    /// table), and starts counting new placements afresh from it. A backend the count does not
    /// name has none.
    pub fn set_live_sessions(&self, counts: &HashMap<BackendId, u64>) {
        for backend in &self.backends {
            let count = counts.get(&backend.id).copied().unwrap_or(0);
            backend.state.sessions.store(count, Ordering::Relaxed);
            backend.state.placed.store(0, Ordering::Relaxed);
        }
    }

    /// Whether `index` holds more than its share of live sessions: more sessions per unit of
    /// (effective) weight than the backends taking new sessions hold together. The counts are
    /// [`Backend::session_load`]'s.
    pub fn above_share(&self, index: usize) -> bool {
        let (mut load, mut weight) = (0u128, 0u128);
        for other in (0..self.backends.len()).filter(|&other| self.accepts_new(other)) {
            load += u128::from(self.backends[other].session_load());
            weight += u128::from(self.effective_weight(other));
        }
        let own_load = u128::from(self.backends[index].session_load());
        let own_weight = u128::from(self.effective_weight(index));
        // own_load / own_weight > load / weight, cross-multiplied.
        weight > 0 && own_load * weight > load * own_weight
    }

    /// A new session was placed on `index`: it weighs in its [`Backend::session_load`] until
    /// the next count.
    pub fn count_placement(&self, index: usize) {
        self.backends[index]
            .state
            .placed
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A request to `index` failed (connection refused or timed out, or a 5xx where that
    /// counts): after `passive_failures` in a row the backend is ejected for `ejection_time`.
    /// Returns whether this failure ejected it.
    pub fn record_failure(&self, index: usize) -> bool {
        let state = &self.backends[index].state;
        let failures = state.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if self.policy.passive_failures == 0 || failures < self.policy.passive_failures {
            return false;
        }
        state.consecutive_failures.store(0, Ordering::Relaxed);
        let now = now_ms();
        let until = now + self.policy.ejection_time.as_millis() as u64;
        state.ejected_until_ms.store(until, Ordering::Relaxed);
        state.health_changed_ms.store(now, Ordering::Relaxed);
        self.changed();
        true
    }

    /// A request to `index` succeeded: the run of failures is broken.
    pub fn record_success(&self, index: usize) {
        let failures = &self.backends[index].state.consecutive_failures;
        if failures.load(Ordering::Relaxed) != 0 {
            failures.store(0, Ordering::Relaxed);
        }
    }

    /// Counts one request in flight on `index` until the guard is dropped.
    pub fn start_request(&self, index: usize) -> InFlight {
        let state = Arc::clone(&self.backends[index].state);
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { state }
    }

    /// Watches state changes: the value is bumped on each health flip, admin change and start
    /// of an ejection (its time-based end is not signalled). Receivers keep hearing the pools
    /// that replace this one on reload.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|generation| *generation += 1);
    }
}

/// One request in flight on a backend; dropping it ends the count (when the response body is
/// done, so least-connections sees streaming responses as load).
#[derive(Debug)]
pub struct InFlight {
    state: Arc<BackendState>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A config for backend `name` (id `id-<name>`).
    pub fn backend(name: &str) -> BackendConfig {
        BackendConfig {
            id: format!("id-{name}"),
            ..BackendConfig::new(name, "127.0.0.1:1".parse().unwrap())
        }
    }

    fn pool(policy: PoolPolicy) -> Pool {
        Pool::new("web", &[backend("a"), backend("b")], policy, None)
    }

    #[test]
    fn ids_and_names_resolve_to_indexes_and_unknown_ones_to_none() {
        let pool = pool(PoolPolicy::default());
        assert_eq!(pool.find_id("id-b"), Some(1));
        assert_eq!(pool.find_id("b"), None);
        assert_eq!(pool.find_name("b"), Some(1));
    }

    #[test]
    fn a_backend_is_ejected_after_the_configured_run_of_failures_for_the_ejection_time() {
        let after_two = pool(PoolPolicy {
            passive_failures: 2,
            ejection_time: Duration::from_secs(60),
            ..PoolPolicy::default()
        });
        assert!(!after_two.record_failure(0));
        after_two.record_success(0);
        assert!(!after_two.record_failure(0), "a success breaks the run");
        assert!(after_two.record_failure(0));
        assert!(!after_two.accepts_new(0) && !after_two.accepts_bound(0));
        assert!(after_two.accepts_new(1));
        let instant = pool(PoolPolicy {
            ejection_time: Duration::ZERO,
            ..PoolPolicy::default()
        });
        instant.record_failure(0);
        assert!(instant.accepts_new(0));
        let never = pool(PoolPolicy {
            passive_failures: 0,
            ..PoolPolicy::default()
        });
        assert!(!never.record_failure(0));
        assert!(never.accepts_new(0));
    }

    #[test]
    fn health_says_down_before_ejected_and_when_it_last_changed() {
        let pool = pool(PoolPolicy {
            ejection_time: Duration::from_secs(60),
            ..PoolPolicy::default()
        });
        let backend = pool.get(0);
        assert_eq!(
            (backend.health(), backend.health_changed_ms_ago()),
            (Health::Up, None)
        );
        pool.record_failure(0);
        assert_eq!(backend.health(), Health::Ejected);
        assert!(
            backend
                .health_changed_ms_ago()
                .is_some_and(|ms| ms < 60_000)
        );
        pool.set_healthy(0, false);
        assert_eq!(backend.health(), Health::Down);
        // An ejection that ended by time is a change too, though nothing recorded it.
        let ended = pool.get(1);
        while now_ms() < 2 {
            std::thread::yield_now(); // the clock starts at this process's first reading
        }
        let end = now_ms() - 1;
        ended.state.ejected_until_ms.store(end, Ordering::Relaxed);
        let since_end = ended.health_changed_ms_ago().unwrap();
        assert!(since_end >= 1 && since_end <= now_ms() - end);
        assert_eq!(ended.health(), Health::Up);
    }

    #[test]
    fn drain_keeps_bound_sessions_and_maint_keeps_nothing() {
        let pool = pool(PoolPolicy::default());
        let mut changes = pool.changes();
        pool.set_admin_state(0, AdminState::Drain);
        assert!(changes.has_changed().unwrap());
        assert!(!pool.accepts_new(0) && pool.accepts_bound(0));
        changes.mark_unchanged();
        pool.set_admin_state(0, AdminState::Maint);
        assert!(changes.has_changed().unwrap());
        assert!(!pool.accepts_new(0) && !pool.accepts_bound(0));
        changes.mark_unchanged();
        // Setting the state a backend already has is no change: watchers are not woken.
        pool.set_admin_state(0, AdminState::Maint);
        assert!(!changes.has_changed().unwrap());
        assert_eq!(pool.get(0).admin_state(), AdminState::Maint);
    }

    #[test]
    fn a_backup_serves_only_while_no_primary_can_and_hands_sessions_back() {
        let backup = BackendConfig {
            backup: true,
            ..backend("spare")
        };
        let pool = Pool::new(
            "web",
            &[backend("a"), backup.clone()],
            PoolPolicy::default(),
            None,
        );
        assert!(!pool.accepts_new(1));
        pool.set_healthy(0, false);
        assert!(pool.accepts_new(1) && pool.accepts_bound(1));
        pool.set_healthy(0, true);
        assert!(
            !pool.accepts_bound(1),
            "failback moves the backup's sessions home"
        );
        let stay = Pool::new(
            "web",
            &[backend("a"), backup],
            PoolPolicy {
                failback: false,
                ..PoolPolicy::default()
            },
            None,
        );
        assert!(
            stay.accepts_bound(1),
            "without failback bound sessions stay on the backup"
        );
    }

    #[test]
    fn a_rebuilt_pool_keeps_the_live_state_of_unchanged_backends() {
        let old = pool(PoolPolicy::default());
        old.set_healthy(0, false);
        let _busy = old.start_request(1);
        let moved = BackendConfig {
            address: "127.0.0.1:2".parse().unwrap(),
            ..backend("b")
        };
        let new = Pool::new(
            "web",
            &[backend("a"), moved],
            PoolPolicy::default(),
            Some(&old),
        );
        assert!(
            !new.get(0).is_healthy(),
            "same name and address: state kept"
        );
        assert_eq!(new.get(1).in_flight(), 0, "a new address is a new backend");
        assert_eq!(old.get(1).in_flight(), 1);
    }

    #[test]
    fn a_reload_applies_a_changed_configured_state_and_keeps_a_runtime_one_otherwise() {
        let old = pool(PoolPolicy::default());
        old.set_admin_state(0, AdminState::Drain);
        let same = Pool::new(
            "web",
            &[backend("a"), backend("b")],
            PoolPolicy::default(),
            Some(&old),
        );
        assert_eq!(
            same.get(0).admin_state(),
            AdminState::Drain,
            "the operator's drain survives a reload"
        );
        let maint = BackendConfig {
            state: AdminState::Maint,
            ..backend("b")
        };
        let changed = Pool::new(
            "web",
            &[backend("a"), maint],
            PoolPolicy::default(),
            Some(&same),
        );
        assert_eq!(
            changed.get(1).admin_state(),
            AdminState::Maint,
            "a state changed in the config applies"
        );
    }

    #[test]
    fn in_flight_counts_until_the_guard_drops() {
        let pool = pool(PoolPolicy::default());
        let first = pool.start_request(1);
        let second = pool.start_request(1);
        assert_eq!(pool.get(1).in_flight(), 2);
        drop(first);
        drop(second);
        assert_eq!(pool.get(1).in_flight(), 0);
    }
}
