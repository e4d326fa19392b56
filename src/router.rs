//! One service's request path: read affinity, choose (or redispatch to) a backend, forward,
//! record the binding on the response, log one access line.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};

use crate::access;
use crate::affinity::{
    Affinity, Binding, BindingTimes, KeyLimit, Outcome, SessionIdentity, Stickiness, TableUpdate,
};
use crate::balance::{Balancer, HashRing};
use crate::config::{AffinityConfig, ServiceConfig};
use crate::error::ProxyError;
use crate::metrics::{Metrics, ServiceMetrics};
use crate::pool::{Pool, PoolPolicy};
use crate::proxy::body::RequestBody;
use crate::proxy::{HeadRules, Peer, head};
use crate::store::StickTable;
use crate::store::sessions::LiveSessions;
use crate::upstream::body::ProxyBody;
use crate::upstream::{self, Upstream};

/// Everything one service needs to route a request.
#[derive(Debug)]
pub struct Router {
    name: String,
    pool: Arc<Pool>,
    balancer: Balancer,
    ring: Option<HashRing>,
    affinity: Affinity,
    table: Option<Arc<StickTable>>,
    upstream: Upstream,
    /// A 5xx counts as a failed request for passive ejection.
    passive_5xx: bool,
    /// How request heads are rewritten.
    rules: HeadRules,
    /// The request limits the head rules enforce.
    limits: head::RequestLimits,
    /// Adds [`DEBUG_HEADER`] to every response.
    debug_header: bool,
    metrics: ServiceMetrics,
    /// Live sessions per backend, for cookie and hash strategies.
    sessions: Option<Arc<LiveSessions>>,
    /// `rebalance_after`: a binding unused this long may move off a backend above its share.
    rebalance_after: Option<Duration>,
}

/// Response header naming the backend and affinity outcome, when the service's `debug_header`
/// is on: `x-stickyd: backend=app2; affinity=hit`.
pub const DEBUG_HEADER: http::HeaderName = http::HeaderName::from_static("x-stickyd");

/// Whether a routing decision may change anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// A request: a stick-table read restarts its entry's lifetime and the balancer takes its
    /// turn.
    Route,
    /// The admin resolver: nothing changes. A request that the balancer would place gets no
    /// backend, since placing it would take the balancer's turn.
    Peek,
}

/// What the routing decision says about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Where the request goes; `None` when no backend can take it, or (peeking) when the
    /// balancer would choose.
    pub backend: Option<usize>,
    /// How it was chosen.
    pub outcome: Outcome,
    /// The backend the request's binding named (its cookie, or the stick table), if any.
    pub bound: Option<usize>,
}

/// The backend a request is bound to before it is sent, and how it came to be.
struct Choice {
    backend: Option<usize>,
    outcome: Outcome,
    /// The stick-table key of the request, when it carried one.
    session: Option<String>,
    /// The hash strategy's key, placed on the ring for the first try and every redispatch.
    hash: Option<u64>,
    /// The sealed times the request's cookie carried.
    times: Option<BindingTimes>,
    /// The prefix app value (bytes as the client sent them), kept when the cookie must be
    /// re-issued (a due refresh).
    reissue: Option<Vec<u8>>,
    /// What the request says of its session's identity, for the live-session count.
    identity: Option<SessionIdentity>,
    /// The binding has gone unused for longer than `rebalance_after`: it may be placed anew
    /// if its backend holds more than its share.
    stale: bool,
}

impl Router {
    /// Builds the router of one service, recording into `metrics`. When it replaces `previous`
    /// (a reload), unchanged backends keep their live state, a stick table keeps its entries
    /// and the live-session tracker its sessions, under the new `session_idle`.
    pub fn new(config: &ServiceConfig, previous: Option<&Router>, metrics: &Metrics) -> Router {
        let policy = PoolPolicy {
            ejection_time: config.ejection_time,
            passive_failures: config.health.passive_failures,
            failback: config.failback,
            slow_start: config.slow_start,
        };
        let pool = Arc::new(Pool::new(
            &config.name,
            &config.backends,
            policy,
            previous.map(|router| &*router.pool),
        ));
        let backend_names: Vec<&str> = config
            .backends
            .iter()
            .map(|backend| backend.name.as_str())
            .collect();
        let service_metrics = metrics.service(&config.name, &backend_names);
        let table = match &config.affinity {
            AffinityConfig::StickTable(table) => {
                let redis_errors = service_metrics.redis_errors.clone();
                // A reload keeps the entries unless the table itself was reconfigured.
                Some(match previous.and_then(|router| router.table.as_ref()) {
                    Some(old) => old.reloaded(table, &config.name, redis_errors),
                    None => Arc::new(StickTable::new(table, &config.name, redis_errors)),
                })
            }
            _ => None,
        };
        let sessions = match &config.affinity {
            AffinityConfig::StickTable(_) | AffinityConfig::None => None,
            _ => Some(match previous.and_then(|router| router.sessions.clone()) {
                Some(kept) => {
                    // The tracked sessions stay; the window is the reloaded one, for them too.
                    kept.set_idle(config.session_idle);
                    kept
                }
                None => Arc::new(LiveSessions::new(config.session_idle)),
            }),
        };
        let ring = match &config.affinity {
            AffinityConfig::Hash(hash) => Some(HashRing::new(&pool, hash.balance_factor)),
            _ => None,
        };
        Router {
            ring,
            name: config.name.clone(),
            balancer: Balancer::new(config.balance, &pool),
            affinity: Affinity::new(
                config,
                &pool,
                KeyLimit::new(
                    config.limits.max_key_bytes,
                    service_metrics.oversized_keys.clone(),
                ),
            ),
            upstream: Upstream::new(
                &config.name,
                config.backends.len(),
                config.connect_timeout,
                config.response_timeout,
            ),
            table,
            pool,
            passive_5xx: config.health.passive_5xx,
            rules: HeadRules {
                underscores_in_headers: config.underscores_in_headers,
            },
            limits: head::RequestLimits {
                max_header_bytes: config.limits.max_header_bytes,
                max_body: config.limits.max_body,
            },
            debug_header: config.debug_header,
            rebalance_after: config.rebalance_after,
            metrics: service_metrics,
            sessions,
        }
    }

    /// The service's metric handles.
    pub fn metrics(&self) -> &ServiceMetrics {
        &self.metrics
    }

    /// The stick table, for the stick-table strategy.
    pub fn stick_table(&self) -> Option<&StickTable> {
        self.table.as_deref()
    }

    /// Live sessions per backend id: stick-table entries, or bindings times within
    /// `session_idle` for the other strategies (empty for `none`).
    pub fn sessions_per_backend(&self) -> std::collections::HashMap<crate::pool::BackendId, u64> {
        match (&self.table, &self.sessions) {
            (Some(table), _) => table.per_backend(),
            (None, Some(sessions)) => sessions.per_backend(),
            (None, None) => std::collections::HashMap::new(),
        }
    }

    /// Stores [`Router::sessions_per_backend`] in the pool, where `least-sessions` reads it.
    pub fn count_sessions(&self) {
        self.pool.set_live_sessions(&self.sessions_per_backend());
    }

    /// Full lifetime of a stick-table binding made without the app's cookie lifetime (an
    /// operator's binding through the admin API); a reservation lives `reservation_ttl`.
    pub fn stick_ttl(&self) -> Duration {
        self.table
            .as_ref()
            .map_or(Duration::ZERO, |table| table.ttl())
    }

    /// The affinity strategy.
    pub fn affinity(&self) -> &Affinity {
        &self.affinity
    }

    /// The service's backends and their live state.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Proxies one request from `client` and always answers: a backend's response, or stickyd's
    /// own 400 / 502 / 503 / 504.
    pub async fn handle(
        &self,
        request: Request<RequestBody>,
        client: &Peer,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let (mut head, body) = request.into_parts();
        // Kept for the access line only when it is logged.
        let request_line = access::enabled().then(|| access::Request {
            started,
            client: client.address.ip(),
            method: head.method.clone(),
            uri: head.uri.clone(),
            host: head.headers.get(http::header::HOST).cloned().or_else(|| {
                head.uri
                    .authority()
                    .and_then(|authority| http::HeaderValue::from_str(authority.as_str()).ok())
            }),
            version: head.version,
            tls: client.tls,
            body: body.progress(),
        });
        let (response, backend, outcome) = match head::check_request(&head, self.limits) {
            // Refused before any routing: no affinity outcome.
            Err(error) => (upstream::body::error_response(&error), None, None),
            Ok(checked) => {
                let stickiness =
                    self.affinity
                        .on_request(&mut head, client.address.ip(), &self.pool);
                let identity = self.sessions.as_ref().and_then(|_| {
                    self.affinity
                        .session_identity(&head.headers, client.address.ip(), &stickiness)
                });
                let reissue = match &stickiness {
                    Stickiness::Pinned(_, times) if self.affinity.wants_reissue(*times) => {
                        self.affinity.session_to_reissue(&head.headers)
                    }
                    _ => None,
                };
                let stale = self.is_stale(&stickiness, identity.as_ref());
                let choice = Choice {
                    reissue,
                    identity,
                    stale,
                    ..self.lookup(stickiness, Intent::Route).await
                };
                let upgrade = head::is_upgrade(&head);
                match head::prepare_request(&mut head, client, upgrade, checked, self.rules) {
                    Ok(0) => {}
                    Ok(dropped) => {
                        self.metrics.header_fields_dropped.inc_by(dropped as u64);
                    }
                    Err(error) => {
                        return self.answer(
                            started,
                            request_line,
                            upstream::body::error_response(&error),
                            None,
                            None,
                        );
                    }
                }
                let request = Request::from_parts(head, body);
                let (result, outcome) = self.forward(request, choice, upgrade).await;
                match result {
                    Ok((response, backend)) => (response, Some(backend), Some(outcome)),
                    Err(error) => {
                        tracing::warn!(service = %self.name, %error, "request failed");
                        (upstream::body::error_response(&error), None, Some(outcome))
                    }
                }
            }
        };
        self.answer(started, request_line, response, backend, outcome)
    }

    /// Records one answered request (metrics, debug header, access line) and returns it.
    fn answer(
        &self,
        started: Instant,
        request_line: Option<access::Request>,
        mut response: Response<ProxyBody>,
        backend: Option<usize>,
        outcome: Option<Outcome>,
    ) -> Response<ProxyBody> {
        let elapsed = started.elapsed();
        self.metrics
            .record(backend, response.status().as_u16(), outcome, elapsed);
        if self.debug_header {
            let name = backend.map_or("-", |index| self.pool.get(index).name.as_str());
            let value = format!(
                "backend={name}; affinity={}",
                outcome.map_or("-", Outcome::as_str)
            );
            if let Ok(value) = http::HeaderValue::from_str(&value) {
                response.headers_mut().insert(DEBUG_HEADER, value);
            }
        }
        if let Some(request) = request_line {
            let line = access::Line {
                request,
                head: elapsed,
                status: response.status().as_u16(),
                service: self.name.clone(),
                backend: backend
                    .map_or("-", |index| self.pool.get(index).name.as_str())
                    .into(),
                affinity: outcome.map_or("-", Outcome::as_str),
                bytes_out: 0,
            };
            response = response.map(|body| body.logged(line));
        }
        response
    }

    /// Where a request that says `stickiness` goes now, and why: the one routing decision
    /// (`lookup` then `decide`) the request path makes, for the admin
    /// resolver. With [`Intent::Peek`] it changes nothing.
    pub async fn route(&self, stickiness: Stickiness, intent: Intent) -> Decision {
        let choice = self.lookup(stickiness, intent).await;
        self.decide(&choice, &[], intent)
    }

    /// Whether a request pinned to a backend by its cookie carries a binding unused for longer
    /// than `rebalance_after` (as the live-session tracker saw its session's requests). Never
    /// without `rebalance_after`, and never for a session the tracker cannot tell apart.
    fn is_stale(&self, stickiness: &Stickiness, identity: Option<&SessionIdentity>) -> bool {
        let (Some(after), Some(sessions), Some(identity), Stickiness::Pinned(..)) =
            (self.rebalance_after, &self.sessions, identity, stickiness)
        else {
            return false;
        };
        // The identity as the tracker stored it: the cookies this request carries.
        self.affinity
            .live_identity(identity, &http::HeaderMap::new())
            .is_some_and(|live| sessions.idle_longer_than(live, after))
    }

    /// Turns what the request said into the binding it names: a pinned backend, or the stick
    /// table's entry for its session (read again from the shared store when the entry's
    /// backend cannot take it, since another instance may have moved the session).
    async fn lookup(&self, stickiness: Stickiness, intent: Intent) -> Choice {
        let choice = |backend, outcome| Choice {
            backend,
            outcome,
            times: None,
            reissue: None,
            session: None,
            hash: None,
            identity: None,
            stale: false,
        };
        match stickiness {
            Stickiness::Pinned(backend, times) => Choice {
                times,
                ..choice(Some(backend), Outcome::Hit)
            },
            Stickiness::New => choice(None, Outcome::New),
            Stickiness::Invalid => choice(None, Outcome::Invalid),
            Stickiness::Hash(key) => Choice {
                hash: Some(key),
                ..choice(None, Outcome::Hit)
            },
            Stickiness::Lookup(session) => {
                let table = self
                    .table
                    .as_ref()
                    .expect("only the stick-table strategy looks up");
                let key = session.as_str();
                let read = |fresh| async move {
                    let session = key;
                    let found = match (intent, fresh) {
                        (Intent::Route, false) => table.get(session).await,
                        (Intent::Route, true) => table.get_fresh(session).await,
                        (Intent::Peek, fresh) => table.peek(session, fresh).await,
                    };
                    found.and_then(|id| self.pool.find_id(&id))
                };
                let mut bound = read(false).await;
                if bound.is_some_and(|backend| !self.pool.accepts_bound(backend)) {
                    // Before redispatching, see whether another instance already moved the
                    // session (a shared store): then every instance agrees on the new backend.
                    let fresh = read(true).await;
                    if fresh.is_some_and(|backend| self.pool.accepts_bound(backend)) {
                        bound = fresh;
                    }
                }
                let outcome = if bound.is_some() {
                    Outcome::Hit
                } else {
                    Outcome::New
                };
                Choice {
                    session: Some(session),
                    ..choice(bound, outcome)
                }
            }
        }
    }

    /// The routing decision for a request whose binding is `choice`, `failed` backends aside
    /// (they refused this request): the bound backend when it can take the session (a hit),
    /// else a redispatch to the key's next choice on the hash ring or the balancer's pick; a
    /// request with no binding goes where the hash ring or the balancer puts it.
    fn decide(&self, choice: &Choice, failed: &[usize], intent: Intent) -> Decision {
        let usable = |index: usize| self.pool.accepts_new(index) && !failed.contains(&index);
        let place = |outcome| {
            let placed = match (choice.hash, &self.ring, intent) {
                (Some(key), Some(ring), _) => ring.pick(&self.pool, key, usable),
                (_, _, Intent::Peek) => None,
                (_, _, Intent::Route) => self
                    .balancer
                    .pick(&self.pool, usable)
                    .map(|backend| (backend, true)),
            };
            match placed {
                Some((backend, true)) => (Some(backend), outcome),
                Some((backend, false)) => (Some(backend), Outcome::Redispatch),
                None => (None, outcome),
            }
        };
        let (backend, outcome) = match choice.backend {
            Some(bound)
                if choice.stale
                    && self.pool.accepts_bound(bound)
                    && !failed.contains(&bound)
                    && self.pool.above_share(bound) =>
            {
                match place(Outcome::Rebalance) {
                    // The balancer put it back where it was: nothing moves.
                    (Some(placed), _) if placed == bound => (Some(bound), choice.outcome),
                    (Some(placed), outcome) => (Some(placed), outcome),
                    (None, _) => (Some(bound), choice.outcome),
                }
            }
            Some(bound) if self.pool.accepts_bound(bound) && !failed.contains(&bound) => {
                (Some(bound), choice.outcome)
            }
            Some(_) => place(Outcome::Redispatch),
            None => place(choice.outcome),
        };
        Decision {
            backend,
            outcome,
            bound: choice.backend,
        }
    }

    /// Sends the request to the chosen backend, redispatching while backends refuse it, then
    /// records the binding on the response. Returns the outcome as it finally stood.
    async fn forward(
        &self,
        mut request: Request<RequestBody>,
        choice: Choice,
        upgrade: bool,
    ) -> (Result<(Response<ProxyBody>, usize), ProxyError>, Outcome) {
        let mut choice = choice;
        let mut failed: Vec<usize> = Vec::new();
        let mut last_error: Option<ProxyError> = None;
        loop {
            let decision = self.decide(&choice, &failed, Intent::Route);
            let moved = decision.outcome.moves() && decision.bound.is_some();
            if moved && choice.reissue.is_none() {
                choice.reissue = self.affinity.session_to_reissue(request.headers());
            }
            // The binding is left once: a retry starts from the backend it went to.
            choice.backend = None;
            choice.outcome = decision.outcome;
            let outcome = decision.outcome;
            let Some(mut backend) = decision.backend else {
                let error = last_error.unwrap_or_else(|| ProxyError::NoUsableBackend {
                    service: self.name.clone(),
                });
                return (Err(error), outcome);
            };
            if let (Some(table), Some(session)) = (&self.table, &choice.session) {
                backend = self
                    .bind_session(table, session, backend, outcome, !failed.is_empty())
                    .await;
            }
            match self.upstream.send(&self.pool, backend, request).await {
                Ok(mut response) => {
                    if let Err(reason) = head::check_switch(upgrade, &response) {
                        // Dropping the response closes the backend connection: it switched.
                        self.pool.record_failure(backend);
                        let error = ProxyError::BadResponse {
                            backend: self.pool.get(backend).name.clone(),
                            reason,
                        };
                        return (Err(error), outcome);
                    }
                    if self.passive_5xx && response.status().is_server_error() {
                        self.pool.record_failure(backend);
                    } else {
                        self.pool.record_success(backend);
                    }
                    let session = choice
                        .session
                        .as_deref()
                        .map(str::as_bytes)
                        .or(choice.reissue.as_deref());
                    let binding = Binding {
                        backend,
                        outcome,
                        session,
                        times: choice.times,
                    };
                    self.record(&binding, choice.identity.as_ref(), &mut response)
                        .await;
                    return (Ok((response, backend)), outcome);
                }
                Err(upstream::SendFailed {
                    error,
                    request: Some(unsent),
                }) if error.is_retryable() => {
                    let ejected = self.pool.record_failure(backend);
                    tracing::warn!(service = %self.name, %error, ejected, "redispatching");
                    failed.push(backend);
                    if outcome == Outcome::Hit {
                        choice.outcome = Outcome::Redispatch;
                        choice.reissue = self.affinity.session_to_reissue(unsent.headers());
                    }
                    last_error = Some(error);
                    request = unsent;
                }
                Err(upstream::SendFailed { error, .. }) => return (Err(error), outcome),
            }
        }
    }

    /// Stick table: a hit keeps its binding; a new session reserves one for `reservation_ttl`
    /// before it is sent (so concurrent first requests agree: the reservation that holds wins,
    /// if usable); a redispatch, or a retry after a refused connection, moves it and keeps its
    /// lifetime (a reservation stays short until a backend's `Set-Cookie` confirms the id).
    async fn bind_session(
        &self,
        table: &StickTable,
        session: &str,
        backend: usize,
        outcome: Outcome,
        retry: bool,
    ) -> usize {
        let id = &self.pool.get(backend).id;
        match outcome {
            Outcome::Hit => backend,
            Outcome::Redispatch | Outcome::Rebalance => {
                table.rebind(session, id).await;
                backend
            }
            Outcome::New | Outcome::Invalid if retry => {
                table.rebind(session, id).await;
                backend
            }
            Outcome::New | Outcome::Invalid => {
                let held = table.reserve(session, id).await;
                match self.pool.find_id(&held) {
                    Some(reserved) if self.pool.accepts_bound(reserved) => reserved,
                    _ => {
                        table.rebind(session, id).await;
                        backend
                    }
                }
            }
        }
    }

    /// Counts the session live on its backend from this response on (under the identity its
    /// client's next request will carry), lets the strategy write the binding into the
    /// response head, applies any stick-table change it asks for, and makes the head fit for
    /// the client.
    async fn record(
        &self,
        binding: &Binding<'_>,
        identity: Option<&SessionIdentity>,
        response: &mut Response<ProxyBody>,
    ) {
        head::prepare_response(response);
        let backend = binding.backend;
        if let (Some(sessions), Some(identity)) = (&self.sessions, identity) {
            // Read before the strategy rewrites the head: the app's own Set-Cookie values.
            if let Some(live) = self.affinity.live_identity(identity, response.headers()) {
                sessions.touch(live, &self.pool.get(backend).id);
            }
        }
        let update = self
            .affinity
            .on_response(&self.pool, binding, response.headers_mut());
        if let (Some(table), Some(update)) = (&self.table, update) {
            match update {
                TableUpdate::Bind { key, ttl } => {
                    table.bind(&key, &self.pool.get(backend).id, ttl).await
                }
                TableUpdate::Forget(key) => table.forget(&key).await,
            }
        }
    }
}
