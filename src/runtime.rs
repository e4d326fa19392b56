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
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{
    AdminState, BackendConfig, BackendRefused, Balance, Config, ListenerConfig, ResolverConfig,
    ServiceConfig,
};
use crate::discovery;
use crate::metrics::{BackendLabels, Metrics, ServiceLabels, ServiceMetrics, StateLabels};
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
    /// This, for the tasks it starts (they must not keep it alive).
    this: Weak<Services>,
    state: Mutex<State>,
    /// Serialises reloads; the state lock is never held across an `.await`.
    reloading: tokio::sync::Mutex<()>,
    clients: Arc<ClientConnections>,
    stop: CancellationToken,
    reloads: AtomicU64,
    failed_reloads: AtomicU64,
    metrics: Arc<Metrics>,
}

/// Why a backend could not be added or removed at run time ([`Services::add_backend`],
/// [`Services::remove_backend`]).
#[derive(Debug, thiserror::Error)]
pub enum BackendChangeError {
    /// No service has this name.
    #[error("no service named {0:?}")]
    NoService(String),
    /// The service has no backend of this name.
    #[error("service {service:?} has no backend named {backend:?}")]
    NoBackend {
        /// The service.
        service: String,
        /// The backend asked for.
        backend: String,
    },
    /// The backend to add breaks a rule of the config file.
    #[error(transparent)]
    Refused(#[from] BackendRefused),
    /// Removing the backend would leave the service none that is not being removed.
    #[error("{backend:?} is the last backend of service {service:?}: add another one first")]
    LastBackend {
        /// The service.
        service: String,
        /// The backend asked for.
        backend: String,
    },
}

#[derive(Debug)]
struct State {
    config: Config,
    services: Vec<ServiceHandle>,
}

#[derive(Debug)]
struct ServiceHandle {
    name: String,
    /// Backends being removed at run time, each draining until it is dropped; a reload
    /// forgets them (the file says which backends there are).
    removing: Vec<String>,
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

impl State {
    /// The index of service `name` in both `config.services` and `services`.
    fn service_index(&self, name: &str) -> Result<usize, BackendChangeError> {
        self.config
            .services
            .iter()
            .position(|service| service.name == name)
            .ok_or_else(|| BackendChangeError::NoService(name.into()))
    }
}

impl Services {
    /// Starts serving `config` on `listeners` (from [`server::bind`]).
    pub fn start(config: Config, listeners: Vec<BoundListener>) -> Arc<Services> {
        let running = Arc::new_cyclic(|this| Services {
            this: this.clone(),
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
                let tasks = running.start_tasks(service, &config.resolver, &slot);
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
                    removing: Vec::new(),
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
        self.with_service(name, |service| service.slot.load_full())
    }

    /// The backends of service `name` being removed at run time (draining until dropped).
    pub fn removing(&self, name: &str) -> Vec<String> {
        self.with_service(name, |service| service.removing.clone())
            .unwrap_or_default()
    }

    /// The addresses the service called `name` listens on now (ports resolved).
    pub fn local_addrs(&self, name: &str) -> Vec<SocketAddr> {
        self.with_service(name, |service| {
            service
                .listeners
                .iter()
                .map(|listener| listener.local)
                .collect()
        })
        .unwrap_or_default()
    }

    /// `read` of the running service called `name`, under the state lock; `None` when there
    /// is no such service.
    fn with_service<T>(&self, name: &str, read: impl FnOnce(&ServiceHandle) -> T) -> Option<T> {
        let state = self.state.lock().expect("runtime state lock");
        state
            .services
            .iter()
            .find(|service| service.name == name)
            .map(read)
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
        let mut config = config;
        keep_discovered(&mut config, &state.config);
        let mut previous = std::mem::take(&mut state.services);
        let mut services = Vec::with_capacity(config.services.len());
        for (index, service) in config.services.iter().enumerate() {
            let handle = match previous.iter().position(|old| old.name == service.name) {
                Some(position) => {
                    let mut handle = previous.swap_remove(position);
                    handle.removing.clear();
                    let metrics = self.renew_router(&mut handle, service, &config.resolver);
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
                    let tasks = self.start_tasks(service, &config.resolver, &slot);
                    ServiceHandle {
                        name: service.name.clone(),
                        removing: Vec::new(),
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

    /// Adds `backend` to service `service` until the next reload, as HAProxy's `add server`:
    /// its router is rebuilt with it (every other backend keeps its state, the stick table and
    /// live sessions stay), and under slow start it ramps up as a backend a reload adds.
    ///
    /// # Errors
    /// [`BackendChangeError::NoService`]; [`BackendChangeError::Refused`] when the config
    /// file would refuse the backend (name or id taken or malformed, weight out of range).
    pub async fn add_backend(
        &self,
        service: &str,
        backend: BackendConfig,
    ) -> Result<(), BackendChangeError> {
        let _one_at_a_time = self.reloading.lock().await;
        let mut state = self.state.lock().expect("runtime state lock");
        let index = state.service_index(service)?;
        let mut config = state.config.services[index].clone();
        config.add_backend(backend.clone())?;
        tracing::info!(service = %service, backend = %backend.name, address = %backend.address, "backend added through the admin API");
        self.replace_service(&mut state, index, config);
        Ok(())
    }

    /// Removes backend `backend` of service `service` until the next reload, as a drain: it
    /// takes no new session at once, keeps its bound sessions, and is dropped once it has
    /// no live session and no request in flight, or when the service's `drain_timeout` has
    /// passed, whichever comes first. A reload before that cancels the removal. Returns the
    /// `drain_timeout`.
    ///
    /// # Errors
    /// [`BackendChangeError::NoService`], [`BackendChangeError::NoBackend`], and
    /// [`BackendChangeError::LastBackend`] when every other backend is gone or going.
    pub async fn remove_backend(
        &self,
        service: &str,
        backend: &str,
    ) -> Result<Duration, BackendChangeError> {
        let _one_at_a_time = self.reloading.lock().await;
        let mut state = self.state.lock().expect("runtime state lock");
        let index = state.service_index(service)?;
        let handle = &state.services[index];
        let router = handle.slot.load_full();
        if router.pool().find_name(backend).is_none() {
            return Err(BackendChangeError::NoBackend {
                service: service.into(),
                backend: backend.into(),
            });
        }
        let staying = router
            .pool()
            .backends()
            .iter()
            .filter(|other| other.name != backend && !handle.removing.contains(&other.name))
            .count();
        if staying == 0 {
            return Err(BackendChangeError::LastBackend {
                service: service.into(),
                backend: backend.into(),
            });
        }
        tracing::info!(service = %service, backend = %backend, "backend removal through the admin API");
        Ok(self.start_removal(&mut state, index, backend))
    }

    /// Starts removing backend `backend` of service `index`: drain now, dropped later by
    /// [`finish_removal`]. Returns the service's `drain_timeout`.
    fn start_removal(&self, state: &mut State, index: usize, backend: &str) -> Duration {
        let drain_timeout = state.config.services[index].drain_timeout;
        let handle = &mut state.services[index];
        let router = handle.slot.load_full();
        if let Some(position) = router.pool().find_name(backend) {
            router.pool().set_admin_state(position, AdminState::Drain);
        }
        if !handle.removing.iter().any(|name| name == backend) {
            handle.removing.push(backend.to_string());
            tracing::info!(service = %handle.name, backend = %backend, ?drain_timeout, "backend draining until its sessions end, then removed");
            tokio::spawn(finish_removal(
                self.this.clone(),
                handle.name.clone(),
                backend.to_string(),
                drain_timeout,
            ));
        }
        drain_timeout
    }

    /// Applies what DNS said of service `service` ([`discovery::plan`]): addresses, added
    /// and changed SRV targets, the drain of targets gone, the return of targets back.
    async fn apply_dns(&self, service: &str, found: &discovery::Found) {
        let _one_at_a_time = self.reloading.lock().await;
        let mut state = self.state.lock().expect("runtime state lock");
        let Ok(index) = state.service_index(service) else {
            return;
        };
        let removing = state.services[index].removing.clone();
        let Some(plan) = discovery::plan(&state.config.services[index], &removing, found) else {
            return;
        };
        let before = &state.config.services[index].backends;
        let changed = plan.service.backends != *before;
        for backend in &plan.service.backends {
            if !before.iter().any(|old| old == backend) {
                tracing::info!(service = %service, backend = %backend.name, address = %backend.address, "backend from DNS");
            }
        }
        if changed {
            self.replace_service(&mut state, index, plan.service);
        }
        for backend in &plan.drain {
            self.start_removal(&mut state, index, backend);
        }
        let handle = &mut state.services[index];
        for backend in &plan.keep {
            handle.removing.retain(|name| name != backend);
            let router = handle.slot.load_full();
            if let Some(position) = router.pool().find_name(backend) {
                router.pool().set_admin_state(position, AdminState::Ready);
            }
            tracing::info!(service = %service, backend = %backend, "backend back in DNS: its removal is cancelled");
        }
    }

    /// Drops backend `backend` of `service` if its removal is still pending (no reload
    /// cancelled it).
    fn drop_backend(&self, service: &str, backend: &str) {
        let mut state = self.state.lock().expect("runtime state lock");
        let Ok(index) = state.service_index(service) else {
            return;
        };
        let handle = &mut state.services[index];
        let Some(pending) = handle.removing.iter().position(|name| name == backend) else {
            return;
        };
        handle.removing.swap_remove(pending);
        let mut config = state.config.services[index].clone();
        config.backends.retain(|other| other.name != backend);
        self.replace_service(&mut state, index, config);
        tracing::info!(service = %service, backend = %backend, "backend removed");
    }

    /// Makes `config` the running config of service `index` (a change at run time: the admin
    /// API, DNS, a removal's end), with a router built from it.
    fn replace_service(&self, state: &mut State, index: usize, config: ServiceConfig) {
        let State {
            config: running,
            services,
        } = state;
        self.renew_router(&mut services[index], &config, &running.resolver);
        running.services[index] = config;
    }

    /// Builds `service`'s router anew from `config` (adopting the running one's backend
    /// state, stick table and live sessions), swaps it in, and restarts the service's tasks on
    /// it. Returns the new router's metric handles.
    fn renew_router(
        &self,
        handle: &mut ServiceHandle,
        config: &ServiceConfig,
        resolver: &ResolverConfig,
    ) -> ServiceMetrics {
        let router = Router::new(config, Some(&handle.slot.load()), &self.metrics);
        let metrics = router.metrics().clone();
        handle.slot.store(Arc::new(router));
        handle.tasks.cancel();
        handle.tasks = self.start_tasks(config, resolver, &handle.slot);
        metrics
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

    /// Starts the tasks of the service whose router is in `slot`: its health checks, under
    /// `least-sessions` or `rebalance_after` the live-session count every
    /// [`SESSION_COUNT_EVERY`], and with host
    /// names or SRV discovery the DNS lookups that follow them.
    fn start_tasks(
        &self,
        service: &ServiceConfig,
        resolver: &ResolverConfig,
        slot: &ArcSwap<Router>,
    ) -> CancellationToken {
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
        if service.balance == Balance::LeastSessions || service.rebalance_after.is_some() {
            tokio::spawn(count_sessions(router, stop.clone()));
        }
        if service.discovery.is_some() || service.backends.iter().any(|b| b.host.is_some()) {
            tokio::spawn(follow_dns(
                self.this.clone(),
                service.clone(),
                resolver.clone(),
                stop.clone(),
            ));
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

/// How often a backend being removed is looked at: dropped once it has no live session and
/// no request in flight.
const REMOVAL_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Drops backend `backend` of `service` once it has no live session and no request in
/// flight, or after `drain_timeout`; gives up when stickyd stops or a reload forgets the
/// removal.
async fn finish_removal(
    services: Weak<Services>,
    service: String,
    backend: String,
    drain_timeout: Duration,
) {
    let deadline = tokio::time::Instant::now() + drain_timeout;
    let mut ticker = tokio::time::interval(REMOVAL_CHECK_EVERY);
    loop {
        ticker.tick().await;
        let Some(services) = services.upgrade() else {
            return;
        };
        let Some(router) = services.router(&service) else {
            return;
        };
        let Some(index) = router.pool().find_name(&backend) else {
            return;
        };
        let id = &router.pool().get(index).id;
        let idle = router.pool().get(index).in_flight() == 0
            && router.sessions_per_backend().get(id).copied().unwrap_or(0) == 0;
        if idle || tokio::time::Instant::now() >= deadline {
            if !idle {
                tracing::warn!(service = %service, backend = %backend, ?drain_timeout, "backend removed at its drain timeout with sessions still live");
            }
            services.drop_backend(&service, &backend);
            return;
        }
        if services.stop.is_cancelled() {
            return;
        }
    }
}

/// Carries the backends DNS discovered for a service into the reloaded `config` when it
/// discovers from the same SRV name: the file does not list them, and dropping them until the
/// next lookup would redispatch their sessions.
fn keep_discovered(config: &mut Config, running: &Config) {
    for service in &mut config.services {
        let Some(old) = running.services.iter().find(|old| old.name == service.name) else {
            continue;
        };
        let same_name = match (&service.discovery, &old.discovery) {
            (Some(new), Some(old)) => new.dns_srv == old.dns_srv,
            _ => false,
        };
        if !same_name {
            continue;
        }
        for backend in old.backends.iter().filter(|backend| backend.discovered) {
            if !service
                .backends
                .iter()
                .any(|b| b.name == backend.name || b.id == backend.id)
            {
                service.backends.push(backend.clone());
            }
        }
    }
}

/// Looks up what DNS says of service `config` ([`discovery::look_up`]) and applies it, again
/// and again as the answers' TTLs run out, until `stop`. Any change to the service's config
/// restarts it with the new one ([`Services::renew_router`]).
async fn follow_dns(
    services: Weak<Services>,
    config: ServiceConfig,
    bounds: ResolverConfig,
    stop: CancellationToken,
) {
    let nameservers = config.nameservers(&bounds);
    let resolver = match crate::dns::Resolver::new(nameservers) {
        Ok(resolver) => resolver,
        Err(problem) => {
            tracing::error!(service = %config.name, "{problem}: backends are not followed in DNS");
            return;
        }
    };
    loop {
        let found = tokio::select! {
            () = stop.cancelled() => return,
            found = discovery::look_up(&resolver, &config, &bounds) => found,
        };
        for problem in &found.problems {
            tracing::warn!(service = %config.name, "DNS lookup failed, backends kept as they are: {problem}");
        }
        let Some(running) = services.upgrade() else {
            return;
        };
        running.apply_dns(&config.name, &found).await;
        drop(running);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(found.refresh_in) => {}
        }
    }
}
