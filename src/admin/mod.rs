//! The admin listener (`[admin]`, loopback by default, optional bearer token): Prometheus
//! metrics, a JSON status, backend state changes, stick-table inspection and a resolver that
//! says where a cookie or hash key routes and why.
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /` | the live status page ([`page`]: served without the token; it reads `/status`) |
//! | `GET /metrics` | OpenMetrics text |
//! | `GET /status` | per service and backend: state, health and seconds since it changed, weight and effective weight (slow start), live sessions, in flight, responses per status class, affinity outcomes, open connections and tunnels |
//! | `PUT /services/{service}/backends/{backend}/state` | body `ready`, `drain` or `maint` |
//! | `POST /services/{service}/backends/{backend}` | body `{"address": "10.0.0.4:8080", "weight": 1, "backup": false, "id": "s4", "state": "ready"}` (all but `address` optional): adds the backend until the next reload (201) |
//! | `DELETE /services/{service}/backends/{backend}` | drains the backend, then drops it once no session is live on it and nothing is in flight, or at the service's `drain_timeout` (202); a reload cancels it |
//! | `GET /services/{service}/stick-table?limit=N` | up to N entries (default 100) |
//! | `PUT /services/{service}/stick-table/{session}` | body: backend name; binds the session to it |
//! | `DELETE /services/{service}/stick-table/{session}` | drops the entry |
//! | `GET /services/{service}/resolve?cookie=...` or `?key=...` | where it routes, and why |
//!
//! Errors are JSON `{"error": "..."}`: 401 bad or missing token, 404 unknown name or path,
//! 405 wrong method, 400 bad body or query.

pub mod page;

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::affinity::{Affinity, Outcome, Stickiness, hash};
use crate::config::{AdminConfig, AdminState, BackendConfig, BackendRefused, HashKey};
use crate::router::{Intent, Router};
use crate::runtime::{BackendChangeError, Services};

/// Largest request body the admin API reads (a state name, a backend name).
const MAX_BODY_BYTES: usize = 4096;
/// Stick-table entries listed when the query names no `limit`.
const DEFAULT_LIMIT: usize = 100;

type AdminResponse = Response<Full<Bytes>>;

/// Serves the admin API on `listener` until `stop` is cancelled, with the settings `settings`
/// holds now: a reload that sends new ones applies them (`bind` aside, which only a restart
/// changes). With a token, every request must carry `Authorization: Bearer <token>` (checked
/// against the token of the moment, per request). Each connection has `head_timeout` (as of
/// its accept) for a whole request head and between two requests (a silent or partial
/// connection is closed), and at most `max_connections` are served at once (read per
/// accept, and again when the settings change); more wait in the accept queue.
pub async fn serve(
    listener: TcpListener,
    services: Arc<Services>,
    mut settings: watch::Receiver<AdminConfig>,
    stop: CancellationToken,
) {
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "admin listening");
    }
    let slots = Arc::new(Slots::default());
    // False once no sender is left: the settings can no longer change.
    let mut watching = true;
    loop {
        loop {
            if slots.open.load(Ordering::Acquire) < settings.borrow().max_connections {
                break;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = slots.freed.notified() => {}
                changed = settings.changed(), if watching => watching = changed.is_ok(),
            }
        }
        let (stream, _) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let slot = Slot::take(&slots);
        let head_timeout = settings.borrow().head_timeout;
        let (services, per_request) = (Arc::clone(&services), settings.clone());
        let service = service_fn(move |request: Request<Incoming>| {
            // The page's files hold no data (its script asks for `/status` with the token).
            let public = request.method() == Method::GET && page::is_page(request.uri().path());
            let authorized = public || authorized(per_request.borrow().token.as_deref(), &request);
            let services = Arc::clone(&services);
            async move {
                if !authorized {
                    return Ok::<_, Infallible>(error(
                        StatusCode::UNAUTHORIZED,
                        "missing or wrong bearer token",
                    ));
                }
                Ok(answer(&services, request).await)
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        // hyper's header timer runs from the connection's start and again while it waits for
        // each next request: a silent or partial connection is closed at `head_timeout`.
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(head_timeout);
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let stop = stop.clone();
        tokio::spawn(async move {
            let _slot = slot;
            tokio::select! {
                () = stop.cancelled() => {}
                _ = connection => {}
            }
        });
    }
}

/// The admin connections open now, counted against `max_connections`.
#[derive(Debug, Default)]
struct Slots {
    open: AtomicUsize,
    freed: Notify,
}

/// One open admin connection, counted while it lives.
struct Slot(Arc<Slots>);

impl Slot {
    fn take(slots: &Arc<Slots>) -> Slot {
        slots.open.fetch_add(1, Ordering::AcqRel);
        Slot(Arc::clone(slots))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_one();
    }
}

/// Whether `request` carries `token` (any request does when there is none).
fn authorized(token: Option<&str>, request: &Request<Incoming>) -> bool {
    let Some(token) = token else {
        return true;
    };
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        // Constant time, so the answer's timing tells nothing of the token.
        .is_some_and(|given| bool::from(given.as_bytes().ct_eq(token.as_bytes())))
}

async fn answer(services: &Arc<Services>, request: Request<Incoming>) -> AdminResponse {
    if request.method() == Method::GET
        && let Some(page) = page::serve(request.uri().path())
    {
        return page;
    }
    let (head, body) = request.into_parts();
    let segments: Vec<&str> = head.uri.path().trim_matches('/').split('/').collect();
    let query = head.uri.query().unwrap_or("");
    let method = &head.method;
    match segments.as_slice() {
        ["metrics"] => only(method, Method::GET, || {
            let mut response = Response::new(Full::new(Bytes::from(services.encode_metrics())));
            let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(content_type),
            );
            response
        }),
        ["status"] => only(method, Method::GET, || {
            json_response(StatusCode::OK, status(services))
        }),
        ["services", service, rest @ ..] => {
            let Some(router) = services.router(service) else {
                return error(
                    StatusCode::NOT_FOUND,
                    &format!("no service named {service:?}"),
                );
            };
            match rest {
                ["backends", backend, "state"] if *method == Method::PUT => {
                    match read_text(body).await {
                        Ok(text) => set_state(&router, backend, &text),
                        Err(response) => response,
                    }
                }
                ["backends", _, "state"] => error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "use PUT with ready, drain or maint",
                ),
                ["backends", backend] => match *method {
                    Method::POST => match read_text(body).await {
                        Ok(text) => add_backend(services, service, backend, &text).await,
                        Err(response) => response,
                    },
                    Method::DELETE => remove_backend(services, service, backend).await,
                    _ => error(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "use POST (body: {\"address\": \"IP:port\"}) or DELETE",
                    ),
                },
                ["stick-table"] => only(method, Method::GET, || list_table(&router, query)),
                ["stick-table", session] => match *method {
                    Method::PUT => match read_text(body).await {
                        Ok(text) => rebind(&router, session, &text).await,
                        Err(response) => response,
                    },
                    Method::DELETE => forget(&router, session).await,
                    _ => error(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "use PUT (body: backend name) or DELETE",
                    ),
                },
                ["resolve"] if *method == Method::GET => resolve(&router, query).await,
                ["resolve"] => error(StatusCode::METHOD_NOT_ALLOWED, "use GET"),
                _ => error(StatusCode::NOT_FOUND, "unknown path"),
            }
        }
        _ => error(StatusCode::NOT_FOUND, "unknown path"),
    }
}

fn only(method: &Method, allowed: Method, answer: impl FnOnce() -> AdminResponse) -> AdminResponse {
    if *method == allowed {
        answer()
    } else {
        error(StatusCode::METHOD_NOT_ALLOWED, &format!("use {allowed}"))
    }
}

fn status(running: &Services) -> Value {
    let services: Vec<Value> = running
        .routers()
        .iter()
        .map(|router| {
            let sessions = router.sessions_per_backend();
            let removing = running.removing(router.name());
            let pool = router.pool();
            let metrics = router.metrics();
            let mut service_responses = metrics.own_responses();
            let backends: Vec<Value> = pool
                .backends()
                .iter()
                .enumerate()
                .map(|(index, backend)| {
                    let responses = metrics.backend_responses(index);
                    for (total, count) in service_responses.iter_mut().zip(responses) {
                        *total += count;
                    }
                    json!({
                        "name": backend.name,
                        "id": &*backend.id,
                        "address": backend.address.to_string(),
                        "weight": backend.weight,
                        // Below `weight` while slow start ramps it.
                        "effective_weight": pool.effective_weight(index) as f64 / 1000.0,
                        "backup": backend.backup,
                        "state": backend.admin_state().as_str(),
                        // Draining until dropped: `DELETE /services/S/backends/B`.
                        "removing": removing.contains(&backend.name),
                        "health": backend.health().as_str(),
                        "health_changed_seconds_ago": backend
                            .health_changed_ms_ago()
                            .map(|ms| ms as f64 / 1000.0),
                        "healthy": backend.is_healthy(),
                        "ejected": backend.is_ejected(),
                        "accepts_new_sessions": pool.accepts_new(index),
                        "in_flight": backend.in_flight(),
                        "sessions": sessions.get(&backend.id).copied().unwrap_or(0),
                        "responses": by_class(responses),
                    })
                })
                .collect();
            let outcomes: serde_json::Map<String, Value> = metrics
                .outcomes()
                .into_iter()
                .map(|(outcome, count)| (outcome.as_str().to_string(), count.into()))
                .collect();
            json!({
                "name": router.name(),
                "strategy": strategy_name(router.affinity()),
                "stick_table_entries": router.stick_table().map(|table| table.entry_count()),
                "open_connections": metrics.connections.get(),
                "open_tunnels": metrics.open_tunnels.get(),
                "responses": by_class(service_responses),
                "affinity": outcomes,
                "backends": backends,
            })
        })
        .collect();
    let (reloads, failed) = running.reload_counts();
    json!({ "services": services, "reloads": { "ok": reloads, "failed": failed } })
}

/// Response counts per status class, as `/status` writes them: `{"1xx": n, ..., "5xx": n}`.
fn by_class(counts: [u64; 5]) -> Value {
    json!({
        "1xx": counts[0], "2xx": counts[1], "3xx": counts[2], "4xx": counts[3], "5xx": counts[4],
    })
}

fn strategy_name(affinity: &Affinity) -> &'static str {
    match affinity {
        Affinity::None => "none",
        Affinity::Insert(_) => "insert",
        Affinity::Prefix(_) => "prefix",
        Affinity::StickTable(_) => "stick-table",
        Affinity::Hash(_) => "hash",
    }
}

fn set_state(router: &Router, backend: &str, body: &str) -> AdminResponse {
    let pool = router.pool();
    let Some(index) = pool.find_name(backend) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!(
                "no backend named {backend:?} in service {:?}",
                router.name()
            ),
        );
    };
    let state = match body_value(body, "state").as_str() {
        "ready" => AdminState::Ready,
        "drain" => AdminState::Drain,
        "maint" => AdminState::Maint,
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("state {other:?}: send ready, drain or maint"),
            );
        }
    };
    pool.set_admin_state(index, state);
    json_response(
        StatusCode::OK,
        json!({ "service": router.name(), "backend": backend, "state": state.as_str() }),
    )
}

/// The body of `POST /services/S/backends/B`: the file's `[[service.backend]]` keys but `name`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewBackend {
    /// `IP:port`, or `host:port` resolved once, now.
    address: String,
    id: Option<String>,
    weight: Option<u32>,
    #[serde(default)]
    backup: bool,
    #[serde(default)]
    state: AdminState,
}

async fn add_backend(services: &Services, service: &str, name: &str, body: &str) -> AdminResponse {
    let new: NewBackend = match serde_json::from_str(body) {
        Ok(new) => new,
        Err(problem) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "{problem}: send {{\"address\": \"IP:port\"}}, with optional \"id\", \"weight\", \"backup\" and \"state\""
                ),
            );
        }
    };
    let address = match tokio::net::lookup_host(new.address.as_str()).await {
        Ok(mut addresses) => match addresses.next() {
            Some(address) => address,
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("address {:?} resolves to nothing", new.address),
                );
            }
        },
        Err(problem) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "address {:?}: {problem}: write IP:port or host:port",
                    new.address
                ),
            );
        }
    };
    let mut backend = BackendConfig::new(name, address);
    backend.id = new.id.unwrap_or_else(|| name.to_string());
    backend.weight = new.weight.unwrap_or(backend.weight);
    backend.backup = new.backup;
    backend.state = new.state;
    let answer = json!({
        "service": service, "backend": name, "id": &backend.id,
        "address": address.to_string(), "weight": backend.weight,
        "backup": backend.backup, "state": backend.state.as_str(),
        "until": "the next reload",
    });
    match services.add_backend(service, backend).await {
        Ok(()) => json_response(StatusCode::CREATED, answer),
        Err(problem) => change_error(&problem),
    }
}

async fn remove_backend(services: &Arc<Services>, service: &str, name: &str) -> AdminResponse {
    match services.remove_backend(service, name).await {
        Ok(drain_timeout) => json_response(
            StatusCode::ACCEPTED,
            json!({
                "service": service, "backend": name, "state": "drain",
                "removed": "once no session is live on it and no request is in flight",
                "drain_timeout_seconds": drain_timeout.as_secs_f64(),
            }),
        ),
        Err(problem) => change_error(&problem),
    }
}

/// The answer to a refused backend change: 404 for an unknown name, 400 for a backend the
/// config file would refuse, 409 for a name taken or the last backend.
fn change_error(problem: &BackendChangeError) -> AdminResponse {
    let status = match problem {
        BackendChangeError::NoService(_) | BackendChangeError::NoBackend { .. } => {
            StatusCode::NOT_FOUND
        }
        BackendChangeError::Refused(BackendRefused::Invalid(_)) => StatusCode::BAD_REQUEST,
        BackendChangeError::Refused(BackendRefused::Taken(_))
        | BackendChangeError::LastBackend { .. } => StatusCode::CONFLICT,
    };
    error(status, &problem.to_string())
}

fn list_table(router: &Router, query: &str) -> AdminResponse {
    let Some(table) = router.stick_table() else {
        return error(StatusCode::NOT_FOUND, "this service has no stick table");
    };
    let limit = match hash::query_value(query, "limit").map(str::parse::<usize>) {
        None => DEFAULT_LIMIT,
        Some(Ok(limit)) => limit,
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "limit must be a whole number"),
    };
    let pool = router.pool();
    let entries: Vec<Value> = table
        .entries(limit)
        .into_iter()
        .map(|(session, id)| {
            let backend = pool.find_id(&id).map(|index| pool.get(index).name.clone());
            json!({ "session": session, "backend": backend, "backend_id": &*id })
        })
        .collect();
    json_response(
        StatusCode::OK,
        json!({ "entries": entries, "total": table.entry_count() }),
    )
}

async fn rebind(router: &Router, session: &str, body: &str) -> AdminResponse {
    let Some(table) = router.stick_table() else {
        return error(StatusCode::NOT_FOUND, "this service has no stick table");
    };
    let name = body_value(body, "backend");
    let pool = router.pool();
    let Some(index) = pool.find_name(&name) else {
        return error(StatusCode::NOT_FOUND, &format!("no backend named {name:?}"));
    };
    table
        .bind(session, &pool.get(index).id, router.stick_ttl())
        .await;
    json_response(
        StatusCode::OK,
        json!({ "session": session, "backend": name }),
    )
}

async fn forget(router: &Router, session: &str) -> AdminResponse {
    let Some(table) = router.stick_table() else {
        return error(StatusCode::NOT_FOUND, "this service has no stick table");
    };
    if table.get(session).await.is_none() {
        return error(
            StatusCode::NOT_FOUND,
            &format!("no entry for session {session:?}"),
        );
    }
    table.forget(session).await;
    json_response(
        StatusCode::OK,
        json!({ "session": session, "deleted": true }),
    )
}

/// Where a cookie (`?cookie=` as the browser sends its `Cookie` header, e.g.
/// `SERVERID=app2; lang=en`) or a hash key (`?key=`) routes now, and why. Changes nothing.
async fn resolve(router: &Router, query: &str) -> AdminResponse {
    let pool = router.pool();
    let affinity = router.affinity();
    let stickiness = match (
        hash::query_value(query, "cookie"),
        hash::query_value(query, "key"),
    ) {
        (Some(cookie), None) => {
            // Bytes, not text: a browser's cookies may hold bytes >= 0x80 (RFC 6265 §5.4).
            let Ok(value) = header::HeaderValue::from_bytes(&form_decode(cookie)) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "the cookie is not a valid header value",
                );
            };
            let mut head = Request::get("/")
                .header(header::COOKIE, value)
                .body(())
                .expect("static parts")
                .into_parts()
                .0;
            affinity.on_request(&mut head, IpAddr::V4(Ipv4Addr::UNSPECIFIED), pool)
        }
        (None, Some(key)) => match affinity {
            Affinity::Hash(strategy) => Stickiness::Hash(hash_key(
                strategy.key(),
                &String::from_utf8_lossy(&form_decode(key)),
            )),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "?key= is for the hash strategy; use ?cookie=",
                );
            }
        },
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "give exactly one of ?cookie=... or ?key=...",
            );
        }
    };
    let why = match &stickiness {
        Stickiness::Pinned(..) => Some("the cookie names it"),
        Stickiness::Lookup(_) => Some("the stick table binds the session to it"),
        _ => None,
    };
    let lookup = matches!(stickiness, Stickiness::Lookup(_));
    let decision = router.route(stickiness, Intent::Peek).await;
    let name = |index: usize| pool.get(index).name.clone();
    let state = |index: usize| {
        let backend = pool.get(index);
        format!(
            "state {}, up {}",
            backend.admin_state().as_str(),
            backend.is_healthy() && !backend.is_ejected()
        )
    };
    let verdict = match (decision.outcome, decision.bound, decision.backend) {
        (Outcome::Hit, Some(bound), _) => json!({
            "backend": name(bound),
            "outcome": "hit",
            "reason": format!("{}; {}", why.unwrap_or("bound"), state(bound)),
        }),
        (Outcome::Redispatch, Some(bound), target) => json!({
            "backend": target.map(name),
            "bound": name(bound),
            "outcome": "redispatch",
            "reason": format!(
                "{}, but it cannot take the session now ({}): the request would go to {} and the binding move",
                why.unwrap_or("bound"),
                state(bound),
                target.map_or_else(|| "the balancer's pick".to_string(), name),
            ),
        }),
        (Outcome::Rebalance, bound, target) => json!({
            "backend": target.map(name),
            "bound": bound.map(name),
            "outcome": "rebalance",
            "reason": "bound, but unused for longer than rebalance_after on a backend above its share: it would be placed anew and the binding move",
        }),
        (Outcome::Hit, None, Some(backend)) => json!({
            "backend": name(backend),
            "outcome": "hit",
            "reason": "the key's first choice on the hash ring",
        }),
        (Outcome::Redispatch, None, Some(backend)) => json!({
            "backend": name(backend),
            "outcome": "redispatch",
            "reason": "the key's first choice cannot take it now; this is its next usable choice",
        }),
        (Outcome::Hit | Outcome::Redispatch, None, None) => json!({
            "backend": null,
            "outcome": "none",
            "reason": "no backend can take new requests",
        }),
        (Outcome::New, ..) if lookup => json!({
            "backend": null,
            "outcome": "new",
            "reason": "no stick-table entry for this session: it would be balanced and the binding reserved",
        }),
        (Outcome::New, ..) => json!({
            "backend": null,
            "outcome": "new",
            "reason": "no affinity value: it would be balanced as a new session",
        }),
        (Outcome::Invalid, ..) => json!({
            "backend": null,
            "outcome": "invalid",
            "reason": "the value names no backend of this service (forged, stale or garbled): it would be balanced as a new session",
        }),
    };
    json_response(StatusCode::OK, verdict)
}

fn hash_key(key: &HashKey, value: &str) -> u64 {
    match (key, value.parse::<IpAddr>()) {
        (HashKey::SourceIp | HashKey::ForwardedFor | HashKey::Forwarded, Ok(address)) => {
            hash::hash_ip(address)
        }
        _ => hash::hash_bytes(value.as_bytes()),
    }
}

async fn read_text(body: Incoming) -> Result<String, AdminResponse> {
    let bytes = Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|_| {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body too large or unreadable",
            )
        })?
        .to_bytes();
    String::from_utf8(bytes.to_vec())
        .map_err(|_| error(StatusCode::BAD_REQUEST, "body must be UTF-8 text"))
}

/// The body as plain text (`drain`), or the `field` of a JSON object (`{"state": "drain"}`).
fn body_value(body: &str, field: &str) -> String {
    let body = body.trim();
    match serde_json::from_str::<Value>(body) {
        Ok(Value::Object(object)) => object
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        Ok(Value::String(text)) => text,
        _ => body.to_string(),
    }
}

/// A query value with `+` and `%XX` escapes decoded (the `application/x-www-form-urlencoded`
/// rules of the WHATWG URL standard), as bytes: `SERVERID%3Dapp2%3B+lang%3Den` is
/// `SERVERID=app2; lang=en`. A `%` not followed by two hex digits stays as it is.
fn form_decode(raw: &str) -> Vec<u8> {
    percent_encoding::percent_decode_str(&raw.replace('+', " ")).collect()
}

fn json_response(status: StatusCode, value: Value) -> AdminResponse {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, message: &str) -> AdminResponse {
    json_response(status, json!({ "error": message }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_plain_text_or_json() {
        assert_eq!(body_value(" drain\n", "state"), "drain");
        assert_eq!(body_value(r#"{"state":"maint"}"#, "state"), "maint");
        assert_eq!(body_value(r#""ready""#, "state"), "ready");
    }

    #[test]
    fn queries_are_read_and_decoded() {
        assert_eq!(
            hash::query_value("a=1&cookie=SERVERID%3Dapp2", "cookie"),
            Some("SERVERID%3Dapp2")
        );
        assert_eq!(
            form_decode("SERVERID%3Dapp2%3B+lang%3Den"),
            b"SERVERID=app2; lang=en"
        );
        assert_eq!(form_decode("100%"), b"100%");
        assert_eq!(form_decode("caf%C3%A9%FF"), b"caf\xC3\xA9\xFF");
    }
}
