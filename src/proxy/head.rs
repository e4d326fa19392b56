//! The rules for the heads that cross stickyd: what a client's request head must satisfy to be
//! forwarded, how it is rewritten for the backend (hop-by-hop fields, forwarding fields,
//! origin-form target), and how a backend's response head is made fit for the client.
//!
//! Sources: RFC 9110 §7.6.1 (hop-by-hop fields and `Connection`), §7.8 (`Upgrade`), RFC 9112
//! §3.2 (request target, `Host`), §6.1 (framing), RFC 7239 (`Forwarded`), RFC 6455 §4 (the
//! WebSocket handshake), and nginx's `underscores_in_headers` for fields spelled with `_`.

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version, request};

use crate::error::ProxyError;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Hop-by-hop fields that never cross a proxy (RFC 9110 §7.6.1), besides those that
/// `Connection` itself lists. `HTTP2-Settings` belongs only to an `h2c` upgrade (RFC 7540
/// §3.2.1), which stickyd never forwards, so it goes whether `Connection` names it or not.
/// `Upgrade` is written back, as `websocket` only, for a WebSocket handshake.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    PROXY_CONNECTION,
    KEEP_ALIVE,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HTTP2_SETTINGS,
];

/// Fields a client may list in `Connection` that stickyd keeps anyway: those it needs to
/// route, frame and forward the request (`Connection: host` must not remove `Host`). The
/// forwarding fields are rewritten by stickyd after the hop-by-hop pass regardless.
const PROTECTED: [HeaderName; 4] = [
    header::HOST,
    header::CONTENT_LENGTH,
    header::COOKIE,
    header::CONTENT_TYPE,
];

/// Names that CGI, PHP-FPM and WSGI read as the same variable as a field stickyd controls when
/// `_` is written for `-` (`X_Forwarded_For` is `HTTP_X_FORWARDED_FOR`): the forwarding fields,
/// which such a spelling would forge, and the framing fields, which it would smuggle.
const FORWARDING: [&str; 4] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
];
const FRAMING: [&str; 2] = ["transfer-encoding", "content-length"];

/// The client of one connection, with what each of its requests reuses.
#[derive(Debug)]
pub struct Peer {
    /// The client's address: the TCP peer, or the source a PROXY protocol header gave, with an
    /// IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, a dual-stack listener's IPv4 peer) written
    /// as the IPv4 address it is.
    pub address: SocketAddr,
    /// The client is in the service's `trusted_proxies`: its forwarding fields are believed
    /// and appended to, rather than replaced.
    pub trusted: bool,
    /// The client spoke TLS to stickyd.
    pub tls: bool,
    /// The client IP as an `X-Forwarded-For` element, built once per connection.
    forwarded_for: HeaderValue,
    /// This hop as a `Forwarded` element (RFC 7239 §4): `for=…;proto=…`, built once.
    forwarded: HeaderValue,
}

impl Peer {
    /// The client at `address` (normalised with [`canonical`]); `trusted` when its address is
    /// in the service's `trusted_proxies`; `tls` when it spoke TLS.
    pub fn new(address: SocketAddr, trusted: bool, tls: bool) -> Peer {
        let address = canonical(address);
        let ip = address.ip();
        let forwarded_for = HeaderValue::from_maybe_shared(bytes::Bytes::from(ip.to_string()))
            .expect("an IP address is a valid header value");
        let proto = if tls { "https" } else { "http" };
        // RFC 7239 §6: an IPv6 node is bracketed, and then quoted since ':' is not a token char.
        let node = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        let forwarded =
            HeaderValue::from_maybe_shared(bytes::Bytes::from(format!("for={node};proto={proto}")))
                .expect("an address and a scheme are a valid header value");
        Peer {
            address,
            trusted,
            tls,
            forwarded_for,
            forwarded,
        }
    }
}

/// `address` with an IPv4-mapped IPv6 address (`::ffff:192.0.2.7`) written as IPv4, so trust
/// checks, hash keys, forwarding fields and logs see one address per client whatever the
/// listener's family.
pub fn canonical(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(address.ip().to_canonical(), address.port())
}

/// The request limits [`check_request`] enforces.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Largest request head, in bytes (request line and fields as written). Default: 64 KiB.
    pub max_header_bytes: usize,
    /// Largest body a `Content-Length` may declare, in bytes. Default: none.
    pub max_body: Option<u64>,
}

/// What [`check_request`] found that [`prepare_request`] acts on.
#[derive(Debug, Clone, Copy, Default)]
pub struct Checked {
    /// Some field name contains `_`.
    pub underscores: bool,
}

/// Rejects what must never reach a backend (RFC 9112 §3.2: exactly one `Host`). Framing
/// (`Content-Length` / `Transfer-Encoding`) is hyper's parser's to enforce.
///
/// # Errors
/// [`ProxyError::BadRequest`] for several `Host` fields, or none on HTTP/1.1, and for a
/// framing field spelled with `_`; [`ProxyError::NotImplemented`] for `CONNECT`;
/// [`ProxyError::PayloadTooLarge`] when `Content-Length` is over `max_body`;
/// [`ProxyError::HeadTooLarge`] when the head is over `max_header_bytes` (hyper's read buffer
/// bounds the memory a head takes, this the exact size).
pub fn check_request(head: &request::Parts, limits: RequestLimits) -> Result<Checked, ProxyError> {
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
    let mut checked = Checked::default();
    // The request line, and each field as `name: value\r\n`.
    let mut size = head.method.as_str().len() + uri_length(uri) + " HTTP/1.1\r\n".len();
    for (name, value) in &head.headers {
        size += name.as_str().len() + value.len() + 4;
        if name.as_str().contains('_') {
            checked.underscores = true;
            if dashed_is(name, &FRAMING) {
                // CGI, PHP-FPM and WSGI turn '_' into '-': both framings would reach the app.
                return bad("framing header spelled with '_'");
            }
        }
    }
    if size > limits.max_header_bytes {
        return Err(ProxyError::HeadTooLarge {
            limit: limits.max_header_bytes,
        });
    }
    if let Some(limit) = limits.max_body {
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
        _ => Ok(checked),
    }
}

/// The length of the request target as the client wrote it (close enough for a size limit).
fn uri_length(uri: &http::Uri) -> usize {
    let authority = uri
        .authority()
        .map_or(0, |authority| authority.as_str().len() + 3);
    let scheme = uri.scheme_str().map_or(0, str::len);
    scheme
        + authority
        + uri
            .path_and_query()
            .map_or(1, |target| target.as_str().len())
}

/// Whether `name` with every `_` read as `-` is one of `names` (all lowercase, dashed).
fn dashed_is(name: &HeaderName, names: &[&str]) -> bool {
    let name = name.as_str().as_bytes();
    names.iter().any(|candidate| {
        candidate.len() == name.len()
            && candidate
                .bytes()
                .zip(name)
                .all(|(want, &got)| want == got || (want == b'-' && got == b'_'))
    })
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
///
/// # Errors
/// What is wrong, for [`ProxyError::BadResponse`].
pub fn check_response(headers: &HeaderMap) -> Result<(), &'static str> {
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

/// Whether the request is a WebSocket handshake (RFC 6455 §4.1: an HTTP/1.1 `GET` with
/// `Connection: upgrade` and `websocket` among the `Upgrade` protocols). Only WebSocket is
/// tunnelled: any other protocol in `Upgrade` (`h2c`, a request-smuggling vector) is dropped
/// with the other hop-by-hop fields, and a WebSocket handshake is forwarded with
/// `Upgrade: websocket` alone.
pub fn is_upgrade(head: &request::Parts) -> bool {
    head.method == Method::GET
        && head.version == Version::HTTP_11
        && tokens(&head.headers, &header::UPGRADE)
            .any(|token| token.eq_ignore_ascii_case(b"websocket"))
        && tokens(&head.headers, &header::CONNECTION)
            .any(|token| token.eq_ignore_ascii_case(b"upgrade"))
}

/// The comma-separated tokens of every `name` field, trimmed, as bytes.
fn tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
    headers
        .get_all(name)
        .into_iter()
        .flat_map(|value| value.as_bytes().split(|&byte| byte == b','))
        .map(<[u8]>::trim_ascii)
}

/// Removes hop-by-hop fields: every field `Connection` names but those in [`PROTECTED`], then
/// the fixed list. When `upgrade` is set, writes `Upgrade: websocket` and `Connection: upgrade`
/// back.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Most messages carry none: one pass over the names costs less than seven removals.
    if !upgrade && !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = tokens(headers, &header::CONNECTION)
            .filter_map(|token| HeaderName::from_bytes(token).ok())
            .filter(|name| !PROTECTED.contains(name))
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Removes the fields whose names contain `_` (all of them, or only those that read as a
/// forwarding field when `keep_others`); returns how many went.
fn drop_underscored(headers: &mut HeaderMap, keep_others: bool) -> usize {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            name.as_str().contains('_') && (!keep_others || dashed_is(name, &FORWARDING))
        })
        .cloned()
        .collect();
    let mut dropped = 0;
    for name in doomed {
        dropped += headers.get_all(&name).iter().count();
        headers.remove(name);
    }
    dropped
}

/// How a service rewrites request heads.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeadRules {
    /// Forward fields spelled with `_` (nginx `underscores_in_headers`); the ones that read as
    /// a forwarding field are dropped regardless. Default: false.
    pub underscores_in_headers: bool,
}

/// Rewrites a client's request head for the backend:
/// - origin-form target: the authority of an absolute-form target becomes `Host` (RFC 9112
///   §3.2.2), an empty path becomes `/`; an HTTP/2 request's `:authority` becomes `Host`;
/// - hop-by-hop fields removed, `Host`, `Content-Length`, `Content-Type` and `Cookie` kept whatever `Connection` lists;
/// - fields spelled with `_` dropped as [`HeadRules`] says;
/// - forwarding fields: from a trusted peer its `X-Forwarded-For` and `Forwarded` are
///   appended to and its `X-Forwarded-Proto` / `-Host` kept; from anyone else they are replaced
///   by stickyd's own (`X-Forwarded-For: <client>`, `X-Forwarded-Proto`, `X-Forwarded-Host`,
///   `Forwarded: for=…;proto=…`).
///
/// Returns how many fields were dropped for their `_`.
///
/// # Errors
/// [`ProxyError::BadRequest`] when the target cannot be written in origin form.
pub fn prepare_request(
    head: &mut request::Parts,
    client: &Peer,
    upgrade: bool,
    checked: Checked,
    rules: HeadRules,
) -> Result<usize, ProxyError> {
    if let Some(authority) = head.uri.authority() {
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            head.headers.insert(header::HOST, host);
        }
        head.uri = origin_form(&head.uri)?;
    }
    head.version = Version::HTTP_11;
    if !head.headers.contains_key(header::HOST) {
        // Forwarded as HTTP/1.1, which needs a Host: empty when the client had none
        // (HTTP/1.0, RFC 9112 §3.2).
        head.headers
            .insert(header::HOST, HeaderValue::from_static(""));
    }
    strip_hop_by_hop(&mut head.headers, upgrade);
    let dropped = if checked.underscores {
        drop_underscored(&mut head.headers, rules.underscores_in_headers)
    } else {
        0
    };
    set_forwarding(&mut head.headers, client);
    Ok(dropped)
}

/// The origin form (`/path?query`) of an absolute-form target; `http://x?a=1` is `/?a=1`.
fn origin_form(uri: &http::Uri) -> Result<http::Uri, ProxyError> {
    let path = uri.path();
    let parsed = match (path.starts_with('/'), uri.query()) {
        (true, None) => path.parse(),
        (true, Some(query)) => format!("{path}?{query}").parse(),
        (false, None) => Ok(http::Uri::from_static("/")),
        (false, Some(query)) => format!("/{path}?{query}").parse(),
    };
    parsed.map_err(|_| ProxyError::BadRequest {
        reason: "request target has no origin form",
    })
}

/// Writes the forwarding fields for this hop; see [`prepare_request`].
fn set_forwarding(headers: &mut HeaderMap, client: &Peer) {
    if client.trusted {
        append(headers, X_FORWARDED_FOR, &client.forwarded_for);
        append(headers, header::FORWARDED, &client.forwarded);
        if !headers.contains_key(X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO, proto(client));
        }
        if !headers.contains_key(X_FORWARDED_HOST) {
            set_forwarded_host(headers);
        }
    } else {
        headers.insert(X_FORWARDED_FOR, client.forwarded_for.clone());
        headers.insert(header::FORWARDED, client.forwarded.clone());
        headers.insert(X_FORWARDED_PROTO, proto(client));
        set_forwarded_host(headers);
    }
}

fn proto(client: &Peer) -> HeaderValue {
    if client.tls {
        HeaderValue::from_static("https")
    } else {
        HeaderValue::from_static("http")
    }
}

fn set_forwarded_host(headers: &mut HeaderMap) {
    match headers.get(header::HOST).cloned() {
        Some(host) => headers.insert(X_FORWARDED_HOST, host),
        None => headers.remove(X_FORWARDED_HOST),
    };
}

/// Appends `element` to the comma-separated list in the `name` fields, joined into one field.
fn append(headers: &mut HeaderMap, name: HeaderName, element: &HeaderValue) {
    let mut previous = headers.get_all(&name).iter().peekable();
    if previous.peek().is_none() {
        headers.insert(name, element.clone());
        return;
    }
    let mut joined: Vec<u8> = Vec::new();
    for value in previous {
        joined.extend_from_slice(value.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(element.as_bytes());
    let value = HeaderValue::from_maybe_shared(bytes::Bytes::from(joined))
        .expect("valid field values joined with a comma and a valid element");
    headers.insert(name, value);
}

/// Checks a backend's `101 Switching Protocols` against the request: it opens a tunnel only
/// when the request was a WebSocket handshake and the backend switches to `websocket`, the
/// protocol that was asked for (RFC 9110 §15.2.2: the server switches to a protocol the
/// client listed).
///
/// # Errors
/// What is wrong, for [`ProxyError::BadResponse`].
pub fn check_switch<B>(requested: bool, response: &Response<B>) -> Result<(), &'static str> {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(());
    }
    if !requested {
        return Err("101 Switching Protocols to a request that asked for no upgrade");
    }
    let mut protocols = tokens(response.headers(), &header::UPGRADE);
    match (protocols.next(), protocols.next()) {
        (Some(protocol), None) if protocol.eq_ignore_ascii_case(b"websocket") => Ok(()),
        _ => Err("101 Switching Protocols to a protocol other than the websocket asked for"),
    }
}

/// Rewrites a backend's response head for the client: hop-by-hop fields removed, except the
/// `Upgrade: websocket` of a checked `101 Switching Protocols`.
pub fn prepare_response<B>(response: &mut Response<B>) {
    *response.version_mut() = Version::HTTP_11;
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    strip_hop_by_hop(response.headers_mut(), switching);
}

#[cfg(test)]
mod tests {
    use http::Request;

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

    const LIMITS: RequestLimits = RequestLimits {
        max_header_bytes: 64 * 1024,
        max_body: None,
    };

    fn untrusted() -> Peer {
        Peer::new("10.1.2.3:5555".parse().unwrap(), false, false)
    }

    fn prepare(parts: &mut request::Parts, client: &Peer, rules: HeadRules) -> usize {
        let checked = check_request(parts, LIMITS).unwrap();
        let upgrade = is_upgrade(parts);
        prepare_request(parts, client, upgrade, checked, rules).unwrap()
    }

    #[test]
    fn hop_by_hop_fields_and_those_connection_names_are_removed() {
        let mut parts = head(
            "/a?b=1\nHost: app\nConnection: keep-alive, X-Secret\nX-Secret: 1\nKeep-Alive: timeout=5\nTE: trailers\nProxy-Connection: keep-alive\nX-End: kept",
        );
        prepare(&mut parts, &untrusted(), HeadRules::default());
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
    fn connection_cannot_remove_the_fields_stickyd_needs() {
        for listed in [
            "host",
            "HOST",
            "close, Host",
            "Cookie, content-length, Content-Type",
        ] {
            let mut parts = head(&format!(
                "/\nHost: app\nCookie: a=1\nContent-Length: 0\nContent-Type: text/plain\nConnection: {listed}"
            ));
            prepare(&mut parts, &untrusted(), HeadRules::default());
            for kept in ["host", "cookie", "content-length", "content-type"] {
                assert!(
                    parts.headers.contains_key(kept),
                    "Connection: {listed} removed {kept}"
                );
            }
        }
    }

    #[test]
    fn an_untrusted_peer_gets_its_forwarding_fields_replaced() {
        let mut parts = head(
            "/\nHost: shop.example\nX-Forwarded-For: 203.0.113.9\nX-Forwarded-Proto: https\nX-Forwarded-Host: evil\nForwarded: for=203.0.113.9;proto=https",
        );
        prepare(&mut parts, &untrusted(), HeadRules::default());
        assert_eq!(parts.headers["x-forwarded-for"], "10.1.2.3");
        assert_eq!(parts.headers["x-forwarded-proto"], "http");
        assert_eq!(parts.headers["x-forwarded-host"], "shop.example");
        assert_eq!(parts.headers["forwarded"], "for=10.1.2.3;proto=http");
    }

    #[test]
    fn a_trusted_peer_gets_its_forwarding_fields_appended_to() {
        let proxy = Peer::new("[::ffff:10.0.0.2]:80".parse().unwrap(), true, true);
        let mut parts = head(
            "/\nHost: shop.example\nX-Forwarded-For: 203.0.113.9\nX-Forwarded-Proto: https\nForwarded: for=203.0.113.9",
        );
        prepare(&mut parts, &proxy, HeadRules::default());
        assert_eq!(parts.headers["x-forwarded-for"], "203.0.113.9, 10.0.0.2");
        assert_eq!(parts.headers["x-forwarded-proto"], "https");
        assert_eq!(
            parts.headers["forwarded"],
            "for=203.0.113.9, for=10.0.0.2;proto=https"
        );
        let v6 = Peer::new("[2001:db8::7]:80".parse().unwrap(), false, false);
        let mut parts = head("/\nHost: a");
        prepare(&mut parts, &v6, HeadRules::default());
        assert_eq!(
            parts.headers["forwarded"],
            "for=\"[2001:db8::7]\";proto=http"
        );
    }

    #[test]
    fn an_ipv4_mapped_peer_is_its_ipv4_address() {
        let peer = Peer::new("[::ffff:192.0.2.7]:4711".parse().unwrap(), false, false);
        assert_eq!(peer.address, "192.0.2.7:4711".parse().unwrap());
        let mut parts = head("/\nHost: a");
        prepare(&mut parts, &peer, HeadRules::default());
        assert_eq!(parts.headers["x-forwarded-for"], "192.0.2.7");
    }

    #[test]
    fn fields_spelled_with_underscores_are_dropped_and_forwarding_ones_always() {
        let request = "/\nHost: a\nX_Forwarded_For: 6.6.6.6\nx_forwarded_proto: https\nX-Forwarded_Host: evil\nForwarded_: x\nX_App: 1\nX-Ok: 1";
        let mut parts = head(request);
        assert_eq!(prepare(&mut parts, &untrusted(), HeadRules::default()), 5);
        for gone in [
            "x_forwarded_for",
            "x_forwarded_proto",
            "x-forwarded_host",
            "forwarded_",
            "x_app",
        ] {
            assert!(!parts.headers.contains_key(gone), "{gone} was forwarded");
        }
        assert_eq!(parts.headers["x-ok"], "1");
        let mut kept = head(request);
        let rules = HeadRules {
            underscores_in_headers: true,
        };
        assert_eq!(prepare(&mut kept, &untrusted(), rules), 3);
        assert_eq!(kept.headers["x_app"], "1");
        assert!(
            kept.headers.contains_key("forwarded_"),
            "not a forwarding name"
        );
        assert!(!kept.headers.contains_key("x_forwarded_for"));
    }

    #[test]
    fn framing_fields_spelled_with_underscores_are_refused() {
        for name in ["Transfer_Encoding", "content_length", "Content_Length"] {
            let parts = head(&format!("/\nHost: a\n{name}: 5"));
            assert!(check_request(&parts, LIMITS).is_err(), "{name}");
        }
    }

    #[test]
    fn only_websocket_is_upgraded_and_h2c_never_crosses() {
        for request in [
            "/ws\nHost: a\nConnection: Upgrade, X-Other\nUpgrade: websocket\nX-Other: 1",
            "/ws\nHost: a\nConnection: Upgrade\nUpgrade: h2c, websocket\nHTTP2-Settings: AAMA",
            "/ws\nHost: a\nConnection: upgrade\nUpgrade: h2c\nUpgrade: WebSocket",
        ] {
            let mut parts = head(request);
            assert!(is_upgrade(&parts), "{request}");
            prepare(&mut parts, &untrusted(), HeadRules::default());
            let upgrades: Vec<_> = parts.headers.get_all("upgrade").iter().collect();
            assert_eq!(upgrades, ["websocket"], "{request}");
            assert_eq!(parts.headers["connection"], "upgrade");
            for gone in ["x-other", "http2-settings"] {
                assert!(!parts.headers.contains_key(gone), "{gone}: {request}");
            }
        }
        for request in [
            "/\nHost: a\nConnection: Upgrade, HTTP2-Settings\nUpgrade: h2c\nHTTP2-Settings: AAMA",
            "/\nHost: a\nUpgrade: h2c\nHTTP2-Settings: AAMA",
            "/\nHost: a\nHTTP2-Settings: AAMA",
            "/\nHost: a\nConnection: keep-alive\nUpgrade: websocket",
        ] {
            let mut parts = head(request);
            assert!(!is_upgrade(&parts), "{request}");
            prepare(&mut parts, &untrusted(), HeadRules::default());
            for gone in ["upgrade", "http2-settings", "connection"] {
                assert!(!parts.headers.contains_key(gone), "{gone}: {request}");
            }
        }
        let mut post = head("/\nHost: a\nConnection: Upgrade\nUpgrade: websocket");
        post.method = Method::POST;
        assert!(!is_upgrade(&post), "RFC 6455: the handshake is a GET");
    }

    #[test]
    fn a_switch_opens_a_tunnel_only_to_the_protocol_asked_for() {
        let switch = |upgrade: &str| {
            Response::builder()
                .status(101)
                .header("upgrade", upgrade)
                .body(())
                .unwrap()
        };
        assert!(check_switch(true, &switch("websocket")).is_ok());
        assert!(check_switch(true, &switch("WebSocket")).is_ok());
        assert!(check_switch(true, &switch("h2c")).is_err());
        assert!(check_switch(true, &switch("websocket, h2c")).is_err());
        assert!(check_switch(false, &switch("websocket")).is_err());
        let ok = Response::builder().status(200).body(()).unwrap();
        assert!(check_switch(false, &ok).is_ok());
    }

    #[test]
    fn an_absolute_form_target_becomes_origin_form_with_its_host() {
        for (target, origin) in [
            ("http://real.example:8080/p?q", "/p?q"),
            ("http://x?a=1", "/?a=1"),
            ("http://x", "/"),
            ("https://x/", "/"),
        ] {
            let mut parts = head(&format!("{target}\nHost: other"));
            prepare(&mut parts, &untrusted(), HeadRules::default());
            assert_eq!(parts.uri, origin, "{target}");
        }
        let mut parts = head("http://real.example:8080/p?q\nHost: other");
        prepare(&mut parts, &untrusted(), HeadRules::default());
        assert_eq!(parts.headers["host"], "real.example:8080");
    }

    #[test]
    fn requests_without_exactly_one_host_are_rejected() {
        let mut no_host = head("/");
        no_host.version = Version::HTTP_11;
        assert!(check_request(&no_host, LIMITS).is_err());
        let mut http10 = head("/");
        http10.version = Version::HTTP_10;
        assert!(check_request(&http10, LIMITS).is_ok());
        let two_hosts = {
            let mut parts = head("/\nHost: a");
            parts
                .headers
                .append(header::HOST, HeaderValue::from_static("b"));
            parts
        };
        assert!(check_request(&two_hosts, LIMITS).is_err());
        let large = head("/\nHost: a\nContent-Length: 2048");
        assert!(matches!(
            check_request(
                &large,
                RequestLimits {
                    max_body: Some(1024),
                    ..LIMITS
                }
            ),
            Err(ProxyError::PayloadTooLarge { limit: 1024 })
        ));
        let limits = RequestLimits {
            max_body: Some(4096),
            ..LIMITS
        };
        assert!(check_request(&large, limits).is_ok());
        let big = head(&format!("/\nHost: a\nX-Big: {}", "b".repeat(1000)));
        let small = RequestLimits {
            max_header_bytes: 1000,
            ..LIMITS
        };
        assert!(matches!(
            check_request(&big, small),
            Err(ProxyError::HeadTooLarge { limit: 1000 })
        ));
    }
}
