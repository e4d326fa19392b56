//! The running configuration: one router per service behind an `ArcSwap` slot that accept
//! loops read per request, the tasks of each service (health checks, and the live-session
//! count `least-sessions` balances on), and the listeners.
//!
//! A reload ([`Services::reload`]) binds any new listen address first (so a failure changes
//! nothing), then swaps each service's router atomically: requests in flight finish on the old
//! router, new ones use the new. Unchanged backends keep their health, counters and stick-table
//! entries ([`Router::new`] adopts them); removed services and listen addresses stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{AdminState, Balance, Config, ListenerConfig, ServiceConfig};
use crate::metrics::{BackendLabels, Metrics, ServiceLabels, StateLabels};
use crate::pool::health;
use crate::router::Router;
use crate::server::{self, BoundListener, ClientConnections, Listener, ServerError};

/// Serves `listeners` (from [`server::bind`]) with `config` until `shutdown` completes, then
/// stops accepting and gives open connections `config.shutdown_grace` to finish.
pub async fn run(
    config: &Config,
    listeners: Vec<BoundListener>,
    shutdown: impl Future<Output = ()>,
) {
    let services = Services::start(config.clone(), listeners);
    shutdown.await;
    services.shutdown().await;
}

/// Everything running; shared by the signal handler, the admin listener and tests.
#[derive(Debug)]
pub struct Services {
    state: Mutex<State>,
    /// Serialises reloads; the state lock is never held across an `.await`.
    reloading: tokio::sync::Mutex<()>,
    clients: Arc<ClientConnections>,
    stop: CancellationToken,
    reloads: AtomicU64,
    failed_reloads: AtomicU64,
    metrics: Arc<Metrics>,
}

#[derive(Debug)]
struct State {
    config: Config,
    services: Vec<ServiceHandle>,
}

#[derive(Debug)]
struct ServiceHandle {
    name: String,
    slot: Arc<ArcSwap<Router>>,
    /// Stops the service's tasks ([`Services::start_tasks`]); a reload restarts them.
    tasks: CancellationToken,
    listeners: Vec<ListenerHandle>,
}

#[derive(Debug)]
struct ListenerHandle {
    /// The address as configured (port 0 stays 0), which identifies it across reloads.
    configured: SocketAddr,
    local: SocketAddr,
    /// What its connections need; a reload stores the new settings.
    settings: Arc<ArcSwap<Listener>>,
    stop: CancellationToken,
}

impl Services {
    /// Starts serving `config` on `listeners` (from [`server::bind`]).
    pub fn start(config: Config, listeners: Vec<BoundListener>) -> Arc<Services> {
        let running = Arc::new(Services {
            state: Mutex::new(State {
                config: config.clone(),
                services: Vec::new(),
            }),
            reloading: tokio::sync::Mutex::new(()),
            clients: Arc::new(ClientConnections::new()),
            stop: CancellationToken::new(),
            reloads: AtomicU64::new(0),
            failed_reloads: AtomicU64::new(0),
            metrics: Arc::new(Metrics::new()),
        });
        let mut bound_by_service: Vec<Vec<BoundListener>> =
            config.services.iter().map(|_| Vec::new()).collect();
        for bound in listeners {
            let service = bound.service;
            bound_by_service[service].push(bound);
        }
        let services = config
            .services
            .iter()
            .zip(bound_by_service)
            .map(|(service, bound)| {
                let slot = Arc::new(ArcSwap::from_pointee(Router::new(
                    service,
                    None,
                    &running.metrics,
                )));
                let tasks = running.start_tasks(service, &slot);
                // A redirect to a TLS listener on port 0 (tests) goes to the port it was given.
                let https_port = bound
                    .iter()
                    .find(|bound| bound.config.tls)
                    .and_then(|bound| bound.listener.local_addr().ok())
                    .map(|address| address.port());
                let listeners = bound
                    .into_iter()
                    .filter_map(|mut bound| {
                        if bound.config.redirect_https == Some(0) {
                            bound.config.redirect_https = https_port;
                        }
                        running.start_listener(service, bound.config, bound.listener, &slot)
                    })
                    .collect();
                ServiceHandle {
                    name: service.name.clone(),
                    slot,
                    tasks,
                    listeners,
                }
            })
            .collect();
        running.state.lock().expect("runtime state lock").services = services;
        running
    }

    /// The config in force.
    pub fn config(&self) -> Config {
        self.state
            .lock()
            .expect("runtime state lock")
            .config
            .clone()
    }

    /// The current router of every service, in config order.
    pub fn routers(&self) -> Vec<Arc<Router>> {
        let state = self.state.lock().expect("runtime state lock");
        state
            .services
            .iter()
            .map(|service| service.slot.load_full())
            .collect()
    }

    /// The current router of the service called `name`.
    pub fn router(&self, name: &str) -> Option<Arc<Router>> {
        let state = self.state.lock().expect("runtime state lock");
        state
            .services
            .iter()
            .find(|service| service.name == name)
            .map(|service| service.slot.load_full())
    }

    /// The addresses the service called `name` listens on now (ports resolved).
    pub fn local_addrs(&self, name: &str) -> Vec<SocketAddr> {
        let state = self.state.lock().expect("runtime state lock");
        state
            .services
            .iter()
            .filter(|service| service.name == name)
            .flat_map(|service| service.listeners.iter().map(|listener| listener.local))
            .collect()
    }

    /// Successful and failed reloads since start.
    pub fn reload_counts(&self) -> (u64, u64) {
        (
            self.reloads.load(Ordering::Relaxed),
            self.failed_reloads.load(Ordering::Relaxed),
        )
    }

    /// Replaces the running config with `config` (already validated).
    ///
    /// # Errors
    /// [`ServerError::Bind`] when a new listen address cannot be bound; nothing changed then.
    pub async fn reload(&self, config: Config) -> Result<(), ServerError> {
        let _one_at_a_time = self.reloading.lock().await;
        let result = self.swap_in(config).await;
        self.count_reload(result.is_ok());
        result
    }

    /// Counts a reload attempt: one that reached [`Services::reload`], or a config that failed
    /// validation before it (the daemon counts those).
    pub fn count_reload(&self, ok: bool) {
        let counter = if ok {
            &self.reloads
        } else {
            &self.failed_reloads
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.metrics.count_reload(ok);
    }

    /// The metrics, with state gauges (health, admin state, in flight, sessions, stick-table
    /// entries) brought up to date, as OpenMetrics text.
    pub fn encode_metrics(&self) -> String {
        for router in self.routers() {
            let service = router.name().to_string();
            let sessions = router.sessions_per_backend();
            for backend in router.pool().backends() {
                let labels = BackendLabels {
                    service: service.clone(),
                    backend: backend.name.clone(),
                };
                let up = backend.is_healthy() && !backend.is_ejected();
                self.metrics
                    .backend_up
                    .get_or_create(&labels)
                    .set(i64::from(up));
                self.metrics
                    .backend_in_flight
                    .get_or_create(&labels)
                    .set(i64::from(backend.in_flight()));
                let live = sessions.get(&backend.id).copied().unwrap_or(0);
                self.metrics
                    .backend_sessions
                    .get_or_create(&labels)
                    .set(live as i64);
                for state in [AdminState::Ready, AdminState::Drain, AdminState::Maint] {
                    let labels = StateLabels {
                        service: service.clone(),
                        backend: backend.name.clone(),
                        state: state.as_str().to_string(),
                    };
                    let current = backend.admin_state() == state;
                    self.metrics
                        .backend_admin_state
                        .get_or_create(&labels)
                        .set(i64::from(current));
                }
            }
            if let Some(table) = router.stick_table() {
                let labels = ServiceLabels {
                    service: service.clone(),
                };
                self.metrics
                    .stick_table_entries
                    .get_or_create(&labels)
                    .set(table.entry_count() as i64);
            }
        }
        self.metrics.encode()
    }

    async fn swap_in(&self, config: Config) -> Result<(), ServerError> {
        let running: Vec<(String, Vec<SocketAddr>)> = {
            let state = self.state.lock().expect("runtime state lock");
            let listening = |service: &ServiceHandle| {
                service
                    .listeners
                    .iter()
                    .map(|listener| listener.configured)
                    .collect()
            };
            state
                .services
                .iter()
                .map(|service| (service.name.clone(), listening(service)))
                .collect()
        };
        let mut fresh: Vec<(usize, ListenerConfig, TcpListener)> = Vec::new();
        for (index, service) in config.services.iter().enumerate() {
            let already = running
                .iter()
                .find(|(name, _)| *name == service.name)
                .map(|(_, addresses)| addresses);
            for &listener in &service.listeners {
                if !already.is_some_and(|addresses| addresses.contains(&listener.address)) {
                    let socket = server::bind_one(service, listener.address).await?;
                    fresh.push((index, listener, socket));
                }
            }
        }
        let mut state = self.state.lock().expect("runtime state lock");
        let mut previous = std::mem::take(&mut state.services);
        let mut services = Vec::with_capacity(config.services.len());
        for (index, service) in config.services.iter().enumerate() {
            let handle = match previous.iter().position(|old| old.name == service.name) {
                Some(position) => {
                    let mut handle = previous.swap_remove(position);
                    let router = Router::new(service, Some(&handle.slot.load()), &self.metrics);
                    let metrics = router.metrics().clone();
                    handle.slot.store(Arc::new(router));
                    handle.tasks.cancel();
                    handle.tasks = self.start_tasks(service, &handle.slot);
                    handle.listeners.retain(|listener| {
                        let configured = service
                            .listeners
                            .iter()
                            .find(|configured| configured.address == listener.configured);
                        match configured {
                            Some(configured) => {
                                let settings = Listener::new(service, configured, metrics.clone());
                                let replaced = listener.settings.swap(Arc::new(settings));
                                // Wakes the accept loop if it waits for a slot under the old cap.
                                replaced.replaced.cancel();
                                true
                            }
                            None => {
                                listener.stop.cancel();
                                false
                            }
                        }
                    });
                    handle
                }
                None => {
                    let slot = Arc::new(ArcSwap::from_pointee(Router::new(
                        service,
                        None,
                        &self.metrics,
                    )));
                    let tasks = self.start_tasks(service, &slot);
                    ServiceHandle {
                        name: service.name.clone(),
                        slot,
                        tasks,
                        listeners: Vec::new(),
                    }
                }
            };
            services.push(handle);
            let new_listeners = fresh.iter().filter(|(owner, ..)| *owner == index).count();
            for _ in 0..new_listeners {
                let position = fresh
                    .iter()
                    .position(|(owner, ..)| *owner == index)
                    .expect("counted above");
                let (_, config, listener) = fresh.swap_remove(position);
                let handle = services.last_mut().expect("pushed above");
                if let Some(started) = self.start_listener(service, config, listener, &handle.slot)
                {
                    handle.listeners.push(started);
                }
            }
        }
        for removed in previous {
            tracing::info!(service = %removed.name, "service removed");
            removed.tasks.cancel();
            removed
                .listeners
                .iter()
                .for_each(|listener| listener.stop.cancel());
        }
        state.services = services;
        state.config = config;
        Ok(())
    }

    /// Stops accepting, stops health checks, and gives in-flight requests the config's
    /// `shutdown_grace` to finish.
    pub async fn shutdown(&self) {
        let grace = self.config().shutdown_grace;
        tracing::info!(
            ?grace,
            "shutting down: no new connections; waiting for in-flight requests"
        );
        self.stop.cancel();
        self.clients.drain(grace).await;
    }

    /// Starts the tasks of the service whose router is in `slot`: its health checks, and
    /// under `least-sessions` the live-session count every [`SESSION_COUNT_EVERY`].
    fn start_tasks(&self, service: &ServiceConfig, slot: &ArcSwap<Router>) -> CancellationToken {
        let stop = self.stop.child_token();
        let router = slot.load_full();
        let transitions = router.metrics().health_transitions.clone();
        let pool = Arc::clone(router.pool());
        tokio::spawn(health::run(
            pool,
            service.health.clone(),
            transitions,
            stop.clone(),
        ));
        if service.balance == Balance::LeastSessions {
            tokio::spawn(count_sessions(router, stop.clone()));
        }
        stop
    }

    fn start_listener(
        &self,
        service: &ServiceConfig,
        config: ListenerConfig,
        listener: TcpListener,
        slot: &Arc<ArcSwap<Router>>,
    ) -> Option<ListenerHandle> {
        let local = listener.local_addr().ok()?;
        tracing::info!(service = %service.name, address = %local, "listening");
        let stop = self.stop.child_token();
        let metrics = slot.load().metrics().clone();
        let settings = Arc::new(ArcSwap::from_pointee(Listener::new(
            service, &config, metrics,
        )));
        tokio::spawn(server::accept_loop(
            listener,
            Arc::clone(&settings),
            Arc::clone(slot),
            Arc::clone(&self.clients),
            stop.clone(),
        ));
        Some(ListenerHandle {
            configured: config.address,
            local,
            settings,
            stop,
        })
    }
}

/// How often `least-sessions` recounts each backend's live sessions; between counts it adds
/// the sessions it placed itself ([`crate::pool::Pool::count_placement`]).
pub const SESSION_COUNT_EVERY: Duration = Duration::from_secs(1);

/// Recounts `router`'s live sessions per backend every [`SESSION_COUNT_EVERY`] until `stop`:
/// one walk of the session tracker or stick table, off the request path.
async fn count_sessions(router: Arc<Router>, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(SESSION_COUNT_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => router.count_sessions(),
        }
    }
}
