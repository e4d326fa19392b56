//! Forwarding one request to one backend: the request and response heads as a proxy must
//! rewrite them, the exchange on a pooled connection, and the WebSocket (Upgrade) tunnel.

pub mod body;
pub mod connections;
pub mod socket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version, request};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::error::ProxyError;
use crate::pool::Pool;
use body::{ProxyBody, RequestBody};
use connections::{Connections, Release};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// Hop-by-hop fields that never cross a proxy (RFC 9110 §7.6.1), besides those that
/// `Connection` itself lists. `Upgrade` is restored for an upgrade exchange.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    PROXY_CONNECTION,
    KEEP_ALIVE,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The client of one connection, with what each of its requests reuses.
#[derive(Debug)]
pub struct Peer {
    /// The client's address: the TCP peer, or the source a PROXY protocol header gave.
    pub address: SocketAddr,
    /// The client IP as an `X-Forwarded-For` element, built once per connection.
    forwarded_for: HeaderValue,
}

impl Peer {
    /// The client at `address`.
    pub fn new(address: SocketAddr) -> Peer {
        let forwarded_for =
            HeaderValue::from_maybe_shared(bytes::Bytes::from(address.ip().to_string()))
                .expect("an IP address is a valid header value");
        Peer {
            address,
            forwarded_for,
        }
    }
}

/// Rejects what must never reach a backend (RFC 9112 §3.2: exactly one `Host`). Framing
/// (`Content-Length` / `Transfer-Encoding`) is hyper's parser's to enforce.
///
/// # Errors
/// [`ProxyError::BadRequest`] for several `Host` fields, or none on HTTP/1.1.
pub fn check_request(head: &request::Parts, max_body: Option<u64>) -> Result<(), ProxyError> {
    let bad = |reason| Err(ProxyError::BadRequest { reason });
    if head.method == Method::CONNECT {
        return Err(ProxyError::NotImplemented { what: "CONNECT" });
    }
    let uri = &head.uri;
    if uri.scheme().is_none() && uri.authority().is_some() {
        return bad("authority-form target outside CONNECT");
    }
    if uri == "*" && head.method != Method::OPTIONS {
        return bad("asterisk-form target outside OPTIONS");
    }
    if uri
        .authority()
        .is_some_and(|authority| !is_valid_host(authority.as_str().as_bytes()))
    {
        return bad("invalid authority in the target");
    }
    if head.headers.contains_key(header::TRANSFER_ENCODING) && !only_chunked(&head.headers) {
        // RFC 9112 §6.1: stickyd forwards only chunked; anything else must not be re-framed.
        return bad("unsupported transfer coding");
    }
    let smuggled = |name: &HeaderName| {
        let name = name.as_str();
        name.contains('_')
            && matches!(
                name.replace('_', "-").as_str(),
                "transfer-encoding" | "content-length"
            )
    };
    if head.headers.keys().any(smuggled) {
        // CGI, PHP-FPM and WSGI turn '_' into '-': both framings would reach the app.
        return bad("framing header spelled with '_'");
    }
    if let Some(limit) = max_body {
        let declared = head
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit) {
            return Err(ProxyError::PayloadTooLarge { limit });
        }
    }
    let mut hosts = head.headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => bad("more than one Host header"),
        (None, _) if head.version == Version::HTTP_11 && uri.authority().is_none() => {
            bad("HTTP/1.1 request without Host")
        }
        (Some(host), None) if !is_valid_host(host.as_bytes()) => bad("invalid Host"),
        _ => Ok(()),
    }
}

/// `uri-host [ ":" port ]` (RFC 9110 §4.2.1, §7.2): a non-empty reg-name or IP literal,
/// no userinfo, no spaces, no list.
fn is_valid_host(value: &[u8]) -> bool {
    let (host, port) = match value.strip_prefix(b"[") {
        Some(literal) => match literal.iter().position(|&byte| byte == b']') {
            Some(end)
                if end > 0
                    && literal[..end]
                        .iter()
                        .all(|&byte| byte.is_ascii_hexdigit() || byte == b':' || byte == b'.') =>
            {
                (&literal[..end], &literal[end + 1..])
            }
            _ => return false,
        },
        None => {
            let split = value
                .iter()
                .position(|&byte| byte == b':')
                .unwrap_or(value.len());
            let host = &value[..split];
            let allowed =
                |byte: &u8| byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(byte);
            if host.is_empty() || !host.iter().all(allowed) {
                return false;
            }
            (host, &value[split..])
        }
    };
    !host.is_empty()
        && (port.is_empty() || (port[0] == b':' && port[1..].iter().all(u8::is_ascii_digit)))
}

/// Rejects a backend response whose framing is ambiguous (RFC 9112 §6.1, §6.3): a
/// `Transfer-Encoding` beside a `Content-Length`, or any coding but one `chunked`.
fn check_response(headers: &HeaderMap) -> Result<(), &'static str> {
    if !headers.contains_key(header::TRANSFER_ENCODING) {
        Ok(())
    } else if headers.contains_key(header::CONTENT_LENGTH) {
        Err("both Transfer-Encoding and Content-Length")
    } else if !only_chunked(headers) {
        Err("a transfer coding other than one chunked")
    } else {
        Ok(())
    }
}

/// Whether the `Transfer-Encoding` fields say exactly one `chunked`: the one coding stickyd
/// relays, as hyper re-frames every body.
fn only_chunked(headers: &HeaderMap) -> bool {
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
    match (codings.next(), codings.next()) {
        (Some(coding), None) => coding
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"chunked"),
        _ => false,
    }
}

/// Whether the request asks to switch to WebSocket (RFC 9110 §7.8, RFC 6455 §4.1). Only
/// WebSocket is tunnelled; any other `Upgrade` (such as `h2c`, a request-smuggling vector) is
/// dropped with the other hop-by-hop fields.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    let websocket = headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|protocol| protocol.trim().eq_ignore_ascii_case("websocket"));
    websocket && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, option: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case(option))
}

/// Removes hop-by-hop fields: every field `Connection` names, then the fixed list. When
/// `upgrade` is set, keeps `Upgrade` and sends `Connection: upgrade`.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Most messages carry none: one pass over the names costs less than six removals.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let upgrade_value = if upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if let Some(protocol) = upgrade_value {
        headers.insert(header::UPGRADE, protocol);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Rewrites a client's request head for the backend: origin-form target (the authority of an
/// absolute-form target becomes `Host`, RFC 9112 §3.2.2), hop-by-hop fields removed,
/// `X-Forwarded-For` appended with the client address, `X-Forwarded-Proto` and
/// `X-Forwarded-Host` set, `Host` otherwise preserved. `tls` says whether the client spoke
/// TLS to stickyd (`X-Forwarded-Proto: https`). An HTTP/2 request's `:authority` becomes
/// `Host` the same way.
pub fn prepare_request(head: &mut request::Parts, client: &Peer, upgrade: bool, tls: bool) {
    if let Some(authority) = head.uri.authority() {
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            head.headers.insert(header::HOST, host);
        }
        let origin_form = head
            .uri
            .path_and_query()
            .map_or("/", |target| target.as_str());
        head.uri = origin_form.parse().expect("a path and query parsed before");
    }
    head.version = Version::HTTP_11;
    if !head.headers.contains_key(header::HOST) {
        // Forwarded as HTTP/1.1, which needs a Host: empty when the client had none
        // (HTTP/1.0, RFC 9112 §3.2).
        head.headers
            .insert(header::HOST, HeaderValue::from_static(""));
    }
    strip_hop_by_hop(&mut head.headers, upgrade);
    append_forwarded_for(&mut head.headers, client);
    let proto = if tls {
        HeaderValue::from_static("https")
    } else {
        HeaderValue::from_static("http")
    };
    head.headers.insert(X_FORWARDED_PROTO, proto);
    if let Some(host) = head.headers.get(header::HOST).cloned() {
        head.headers.insert(X_FORWARDED_HOST, host);
    }
}

fn append_forwarded_for(headers: &mut HeaderMap, client: &Peer) {
    let previous: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    let value = if previous.is_empty() {
        client.forwarded_for.clone()
    } else {
        let ip = client
            .forwarded_for
            .to_str()
            .expect("built from an IP address");
        let joined = format!("{}, {ip}", previous.join(", "));
        HeaderValue::from_str(&joined).expect("visible ASCII joined with an IP address")
    };
    headers.insert(X_FORWARDED_FOR, value);
}

/// Rewrites a backend's response head for the client: hop-by-hop fields removed, except the
/// `Upgrade` of a `101 Switching Protocols`.
pub fn prepare_response<B>(response: &mut Response<B>) {
    *response.version_mut() = Version::HTTP_11;
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    strip_hop_by_hop(response.headers_mut(), switching);
}

/// Why [`Upstream::send`] failed, with the request when it was never sent.
#[derive(Debug)]
pub struct SendFailed {
    /// What went wrong.
    pub error: ProxyError,
    /// The request, when [`ProxyError::is_retryable`] and no backend can have acted on it: it
    /// may go to another backend.
    pub request: Option<Request<RequestBody>>,
}

/// Sends requests to the backends of one service over pooled connections.
#[derive(Debug)]
pub struct Upstream {
    connections: Arc<Connections>,
    response_timeout: Duration,
}

impl Upstream {
    /// A pool for `backends` backends with the service's timeouts.
    ///
    /// # Panics
    /// Outside a tokio runtime: the pool starts its reaper task.
    pub fn new(backends: usize, connect_timeout: Duration, response_timeout: Duration) -> Upstream {
        Upstream {
            connections: Connections::new(backends, connect_timeout),
            response_timeout,
        }
    }

    /// Sends `request` to `backend` and returns its response head with a streaming body. A pooled
    /// connection that turns out closed before the request was written is replaced by another.
    ///
    /// An idempotent request without a body (RFC 9110 §9.2.2: GET, HEAD, OPTIONS, TRACE, PUT,
    /// DELETE) whose reused connection fails before any byte of a response (the backend closed
    /// the kept-alive connection as stickyd wrote to it) is sent once more, on a new connection,
    /// as HAProxy's `retry-on conn-failure empty-response` does.
    ///
    /// # Errors
    /// [`SendFailed`], with the request when it can go to another backend: nothing was written
    /// (connect refused or timed out), or the connect of that one retry failed.
    pub async fn send(
        &self,
        pool: &Arc<Pool>,
        backend: usize,
        mut request: Request<RequestBody>,
    ) -> Result<Response<ProxyBody>, SendFailed> {
        let target = pool.get(backend);
        let mut retrying = false;
        loop {
            let checkout = if retrying {
                self.connections.connect(target.address).await
            } else {
                self.connections.checkout(backend, target.address).await
            };
            let mut connection = match checkout {
                Ok(connection) => connection,
                Err(source) => {
                    let error = ProxyError::ConnectFailed {
                        backend: target.name.clone(),
                        source,
                    };
                    return Err(SendFailed {
                        error,
                        request: Some(request),
                    });
                }
            };
            let in_flight = pool.start_request(backend);
            // Copied only while it may be needed: see `replay_copy`.
            let replay = if connection.is_reused() {
                replay_copy(&request)
            } else {
                None
            };
            let sent =
                tokio::time::timeout(self.response_timeout, connection.send_request(request)).await;
            let mut failed = match sent {
                Ok(Ok(response)) => {
                    if let Err(reason) = check_response(response.headers()) {
                        // Dropping the sender closes the connection: its framing is unknown.
                        let error = ProxyError::BadResponse {
                            backend: target.name.clone(),
                            reason,
                        };
                        return Err(SendFailed {
                            error,
                            request: None,
                        });
                    }
                    let release = Release::new(
                        Arc::clone(&self.connections),
                        backend,
                        connection,
                        in_flight,
                    );
                    return Ok(with_release(response, release));
                }
                Ok(Err(failed)) => failed,
                Err(_elapsed) => {
                    let error = ProxyError::ResponseTimeout {
                        backend: target.name.clone(),
                        after: self.response_timeout,
                    };
                    return Err(SendFailed {
                        error,
                        request: None,
                    });
                }
            };
            let backend_name = target.name.clone();
            match failed.take_message() {
                // A pooled connection the backend had closed: try the next one, or a new one.
                Some(unsent) if connection.is_reused() => request = unsent,
                // A new connection that failed before the request was written: as good as refused.
                Some(unsent) => {
                    let source = std::io::Error::other(failed.into_error());
                    let error = ProxyError::ConnectFailed {
                        backend: backend_name,
                        source,
                    };
                    return Err(SendFailed {
                        error,
                        request: Some(unsent),
                    });
                }
                None => {
                    // Written on a reused connection that the backend closed without a response
                    // byte: the one retry, on a new connection.
                    if let Some(copy) = replay.filter(|_| !connection.received_any()) {
                        let error = failed.into_error();
                        tracing::debug!(backend = %backend_name, %error, "sending again");
                        request = copy;
                        retrying = true;
                        continue;
                    }
                    let source = failed.into_error();
                    let error = if source.is_user() {
                        // The client's request body was malformed (a bad chunk): its fault.
                        ProxyError::BadRequest {
                            reason: "malformed request body",
                        }
                    } else {
                        ProxyError::Upstream {
                            backend: backend_name,
                            source,
                        }
                    };
                    return Err(SendFailed {
                        error,
                        request: None,
                    });
                }
            }
        }
    }
}

/// A copy of `request` for the retry after its reused connection fails, when it may be sent
/// twice: an idempotent method (RFC 9110 §9.2.2) and no body. Only the head is copied: its
/// header map (whose values share their bytes), URI and extensions.
fn replay_copy(request: &Request<RequestBody>) -> Option<Request<RequestBody>> {
    if !request.method().is_idempotent() || !matches!(request.body(), RequestBody::Empty) {
        return None;
    }
    let mut copy = Request::new(RequestBody::Empty);
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    *copy.extensions_mut() = request.extensions().clone();
    Some(copy)
}

fn with_release(mut response: Response<Incoming>, release: Release) -> Response<ProxyBody> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        // The connection now belongs to the tunnel and is never pooled again; the tunnel keeps
        // counting as in flight (see `tunnel`) so least-connections sees WebSocket load.
        response.extensions_mut().insert(TunnelLoad {
            _in_flight: Arc::new(release.into_in_flight()),
        });
        return response.map(|body| ProxyBody::Upstream {
            body,
            release: None,
        });
    }
    response.map(|body| {
        if http_body::Body::is_end_stream(&body) {
            release.reuse();
            ProxyBody::Upstream {
                body,
                release: None,
            }
        } else {
            ProxyBody::Upstream {
                body,
                release: Some(release),
            }
        }
    })
}

/// The in-flight count of an upgraded connection, carried from the 101 to its tunnel.
#[derive(Debug, Clone)]
struct TunnelLoad {
    _in_flight: Arc<crate::pool::InFlight>,
}

/// Joins the client's and the backend's upgraded connections once both sides switched
/// protocols, and copies bytes both ways until either side closes.
pub fn tunnel(client: OnUpgrade, backend: &mut Response<ProxyBody>) {
    let load = backend.extensions_mut().remove::<TunnelLoad>();
    let backend = hyper::upgrade::on(backend);
    tokio::spawn(async move {
        let _in_flight_until_closed = load;
        let (client, backend) = match tokio::try_join!(client, backend) {
            Ok(both) => both,
            Err(error) => {
                tracing::debug!(%error, "upgrade did not complete");
                return;
            }
        };
        let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
        if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
            tracing::debug!(%error, "tunnel closed with an error");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(request: &str) -> request::Parts {
        let mut lines = request.lines();
        let target = lines.next().unwrap();
        let mut builder = Request::builder().uri(target);
        for line in lines {
            let (name, value) = line.split_once(": ").unwrap();
            builder = builder.header(name, value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn hop_by_hop_fields_and_those_connection_names_are_removed() {
        let mut parts = head(
            "/a?b=1\nHost: app\nConnection: keep-alive, X-Secret\nX-Secret: 1\nKeep-Alive: timeout=5\nTE: trailers\nProxy-Connection: keep-alive\nX-End: kept",
        );
        prepare_request(
            &mut parts,
            &Peer::new("10.1.2.3:5555".parse().unwrap()),
            false,
            false,
        );
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "te",
            "proxy-connection",
        ] {
            assert!(!parts.headers.contains_key(gone), "{gone} was forwarded");
        }
        assert_eq!(parts.headers["x-end"], "kept");
        assert_eq!(parts.headers["host"], "app");
        assert_eq!(parts.uri, "/a?b=1");
    }

    #[test]
    fn forwarded_headers_append_the_client_and_name_host_and_proto() {
        let mut parts =
            head("/\nHost: shop.example\nX-Forwarded-For: 203.0.113.9\nX-Forwarded-Proto: https");
        prepare_request(
            &mut parts,
            &Peer::new("10.1.2.3:5555".parse().unwrap()),
            false,
            false,
        );
        assert_eq!(parts.headers["x-forwarded-for"], "203.0.113.9, 10.1.2.3");
        assert_eq!(parts.headers["x-forwarded-proto"], "http");
        assert_eq!(parts.headers["x-forwarded-host"], "shop.example");
    }

    #[test]
    fn an_upgrade_keeps_upgrade_and_connection_upgrade_only() {
        let mut parts =
            head("/ws\nHost: a\nConnection: Upgrade, X-Other\nUpgrade: websocket\nX-Other: 1");
        assert!(is_upgrade(&parts.headers));
        prepare_request(
            &mut parts,
            &Peer::new("127.0.0.1:1".parse().unwrap()),
            true,
            false,
        );
        assert_eq!(parts.headers["upgrade"], "websocket");
        assert_eq!(parts.headers["connection"], "upgrade");
        assert!(!parts.headers.contains_key("x-other"));
    }

    #[test]
    fn an_h2c_upgrade_is_not_an_upgrade_and_its_fields_are_dropped() {
        let mut parts = head(
            "/\nHost: a\nConnection: Upgrade, HTTP2-Settings\nUpgrade: h2c\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
        );
        assert!(!is_upgrade(&parts.headers));
        prepare_request(
            &mut parts,
            &Peer::new("127.0.0.1:1".parse().unwrap()),
            false,
            false,
        );
        for gone in ["upgrade", "http2-settings", "connection"] {
            assert!(!parts.headers.contains_key(gone), "{gone} was forwarded");
        }
    }

    #[test]
    fn an_absolute_form_target_becomes_origin_form_with_its_host() {
        let mut parts = head("http://real.example:8080/p?q\nHost: other");
        prepare_request(
            &mut parts,
            &Peer::new("127.0.0.1:1".parse().unwrap()),
            false,
            false,
        );
        assert_eq!(parts.uri, "/p?q");
        assert_eq!(parts.headers["host"], "real.example:8080");
    }

    #[test]
    fn requests_without_exactly_one_host_are_rejected() {
        let mut no_host = head("/");
        no_host.version = Version::HTTP_11;
        assert!(check_request(&no_host, None).is_err());
        let mut http10 = head("/");
        http10.version = Version::HTTP_10;
        assert!(check_request(&http10, None).is_ok());
        let two_hosts = {
            let mut parts = head("/\nHost: a");
            parts
                .headers
                .append(header::HOST, HeaderValue::from_static("b"));
            parts
        };
        assert!(check_request(&two_hosts, None).is_err());
        let large = head("/\nHost: a\nContent-Length: 2048");
        assert!(matches!(
            check_request(&large, Some(1024)),
            Err(ProxyError::PayloadTooLarge { limit: 1024 })
        ));
        assert!(check_request(&large, Some(4096)).is_ok());
    }
}
