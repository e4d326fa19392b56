//! Hash: a request key (client address, header, query parameter or cookie) picks the backend
//! on a consistent hash, so clients that cannot keep a cookie (socket.io long polling,
//! WebSocket and API clients) stay on one backend, as the npm package `sticky-session` does for
//! Node.js clusters and socket.io's "Using multiple nodes" guide asks of a balancer.
//!
//! This part only finds and hashes the key; [`crate::balance::HashRing`] maps the hash to a
//! backend. The hash is XXH3-64 (seed 0), whose output is specified and stable across
//! versions, platforms and processes, so every stickyd instance agrees.

use std::net::IpAddr;

use http::request;
use ipnet::IpNet;

use super::{KeyLimit, Stickiness, cookies};
use crate::config::{Fallback, HashConfig, HashKey};

/// The hash strategy of one service.
#[derive(Debug)]
pub struct Hash {
    key: HashKey,
    trusted_proxies: Vec<IpNet>,
    fallback: Fallback,
    /// A longer header, query or cookie key is treated as missing.
    keys: KeyLimit,
}

impl Hash {
    /// Builds the strategy from its config; forwarded keys are believed through
    /// `trusted_proxies` (the service's); a header, query or cookie key longer than `keys`
    /// allows takes the fallback.
    pub fn new(config: &HashConfig, trusted_proxies: &[IpNet], keys: KeyLimit) -> Hash {
        Hash {
            key: config.key.clone(),
            trusted_proxies: trusted_proxies.to_vec(),
            fallback: config.fallback,
            keys,
        }
    }

    /// What this strategy hashes.
    pub fn key(&self) -> &HashKey {
        &self.key
    }

    /// The hash of the request's key, or the fallback when the request has no key, or a
    /// header, query or cookie key longer than `max_key_bytes` (counted).
    pub fn on_request(&self, head: &request::Parts, client: IpAddr) -> Stickiness {
        let headers = &head.headers;
        let key = match &self.key {
            HashKey::SourceIp => return Stickiness::Hash(hash_ip(client)),
            HashKey::ForwardedFor => {
                let hops = headers
                    .get_all("x-forwarded-for")
                    .iter()
                    .filter_map(|v| v.to_str().ok());
                return self.forwarded_client(
                    hops.flat_map(|value| value.split(',')).map(parse_hop),
                    client,
                );
            }
            HashKey::Forwarded => {
                let hops = headers
                    .get_all(http::header::FORWARDED)
                    .iter()
                    .filter_map(|v| v.to_str().ok());
                return self.forwarded_client(
                    hops.flat_map(|value| value.split(','))
                        .map(parse_forwarded_for),
                    client,
                );
            }
            HashKey::Header(name) => headers.get(name).map(|value| value.as_bytes()),
            HashKey::Query(name) => head
                .uri
                .query()
                .and_then(|query| query_value(query, name))
                .map(str::as_bytes),
            HashKey::Cookie(name) => cookies::find(headers, name),
        };
        match key {
            Some(bytes) if !bytes.is_empty() && self.keys.admits(bytes) => {
                Stickiness::Hash(hash_bytes(bytes))
            }
            _ => self.fallback(client),
        }
    }

    fn fallback(&self, client: IpAddr) -> Stickiness {
        match self.fallback {
            Fallback::SourceIp => Stickiness::Hash(hash_ip(client)),
            Fallback::Balance => Stickiness::New,
        }
    }

    /// The client address behind trusted proxies, as nginx `real_ip_recursive on` finds it: when
    /// the peer is trusted, walk the forwarded hops from the right and take the first address
    /// that is not trusted (or the left-most when all are). An untrusted peer's header is
    /// ignored, so a client cannot pick its backend by writing the header itself. A hop that is
    /// not an address (`unknown`, an obfuscated id, garbage) ends the walk at the last trusted hop.
    fn forwarded_client(
        &self,
        hops: impl DoubleEndedIterator<Item = Option<IpAddr>>,
        peer: IpAddr,
    ) -> Stickiness {
        if !self.is_trusted(peer) {
            return Stickiness::Hash(hash_ip(peer));
        }
        let mut client = None;
        for hop in hops.rev() {
            let Some(address) = hop else { break };
            client = Some(address);
            if !self.is_trusted(address) {
                break;
            }
        }
        match client {
            Some(address) => Stickiness::Hash(hash_ip(address)),
            None => self.fallback(peer),
        }
    }

    fn is_trusted(&self, address: IpAddr) -> bool {
        self.trusted_proxies
            .iter()
            .any(|network| network.contains(&address))
    }
}

/// XXH3-64 of `bytes`: stable across processes and versions.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// Hash of an address; an IPv4-mapped IPv6 address hashes as its IPv4 form.
pub fn hash_ip(address: IpAddr) -> u64 {
    match address.to_canonical() {
        IpAddr::V4(v4) => hash_bytes(&v4.octets()),
        IpAddr::V6(v6) => hash_bytes(&v6.octets()),
    }
}

/// One `X-Forwarded-For` hop: an address, possibly with a port (`192.0.2.1:4711`, `[2001:db8::1]:80`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>().ok().or_else(|| {
        hop.parse::<std::net::SocketAddr>()
            .ok()
            .map(|socket| socket.ip())
    })
}

/// The `for=` node of one `Forwarded` element (RFC 7239 §4, §6): `for=192.0.2.60`,
/// `for="[2001:db8:cafe::17]:4711"`; `unknown` and obfuscated nodes are not addresses.
fn parse_forwarded_for(element: &str) -> Option<IpAddr> {
    let node = element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then_some(value.trim())
    })?;
    let node = node.trim_matches('"');
    match node.strip_prefix('[') {
        Some(bracketed) => bracketed
            .split_once(']')
            .and_then(|(address, _)| address.parse().ok()),
        None => parse_hop(node),
    }
}

/// The raw (not percent-decoded) value of the first query parameter called `name` in
/// `query` (the part after `?`, `&`-separated `name=value` pairs; a bare `name` has value `""`).
pub fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use http::Request;
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    fn hash(key: HashKey, trusted: &[&str], fallback: Fallback) -> Hash {
        limited(
            key,
            trusted,
            fallback,
            KeyLimit::new(256, Counter::default()),
        )
    }

    fn limited(key: HashKey, trusted: &[&str], fallback: Fallback, keys: KeyLimit) -> Hash {
        let trusted: Vec<IpNet> = trusted.iter().map(|net| net.parse().unwrap()).collect();
        Hash::new(
            &HashConfig {
                key,
                fallback,
                balance_factor: None,
            },
            &trusted,
            keys,
        )
    }

    fn head(target: &str, headers: &[(&str, &str)]) -> request::Parts {
        let mut builder = Request::get(target);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn hashed(text: &str) -> Stickiness {
        Stickiness::Hash(hash_ip(ip(text)))
    }

    #[test]
    fn the_hash_of_a_key_is_stable_across_processes_and_versions() {
        // XXH3-64 test vector for the empty input, and a pinned value for an address.
        assert_eq!(hash_bytes(b""), 0x2D06_8005_38D3_94C2);
        assert_eq!(hash_ip(ip("::ffff:192.0.2.1")), hash_ip(ip("192.0.2.1")));
    }

    #[test]
    fn source_ip_hashes_the_peer() {
        let strategy = hash(HashKey::SourceIp, &[], Fallback::SourceIp);
        assert_eq!(
            strategy.on_request(&head("/", &[]), ip("198.51.100.7")),
            hashed("198.51.100.7")
        );
    }

    #[test]
    fn x_forwarded_for_through_trusted_proxies_yields_the_right_most_untrusted_address() {
        let strategy = hash(HashKey::ForwardedFor, &["10.0.0.0/8"], Fallback::SourceIp);
        let request = head(
            "/",
            &[("x-forwarded-for", "203.0.113.5, 198.51.100.7, 10.1.1.1")],
        );
        assert_eq!(
            strategy.on_request(&request, ip("10.0.0.2")),
            hashed("198.51.100.7")
        );
        let split = head(
            "/",
            &[
                ("x-forwarded-for", "203.0.113.5"),
                ("x-forwarded-for", "198.51.100.7:4711"),
            ],
        );
        assert_eq!(
            strategy.on_request(&split, ip("10.0.0.2")),
            hashed("198.51.100.7")
        );
        let all_trusted = head("/", &[("x-forwarded-for", "10.9.9.9, 10.1.1.1")]);
        assert_eq!(
            strategy.on_request(&all_trusted, ip("10.0.0.2")),
            hashed("10.9.9.9")
        );
    }

    #[test]
    fn an_untrusted_peer_cannot_pick_its_backend_with_the_header() {
        let strategy = hash(HashKey::ForwardedFor, &["10.0.0.0/8"], Fallback::SourceIp);
        let spoofed = head("/", &[("x-forwarded-for", "203.0.113.5")]);
        assert_eq!(
            strategy.on_request(&spoofed, ip("198.51.100.7")),
            hashed("198.51.100.7")
        );
    }

    #[test]
    fn garbage_in_the_chain_stops_at_the_last_trusted_hop() {
        let strategy = hash(HashKey::ForwardedFor, &["10.0.0.0/8"], Fallback::SourceIp);
        let garbage = head(
            "/",
            &[("x-forwarded-for", "203.0.113.5, nonsense, 10.1.1.1")],
        );
        assert_eq!(
            strategy.on_request(&garbage, ip("10.0.0.2")),
            hashed("10.1.1.1")
        );
    }

    #[test]
    fn forwarded_for_nodes_are_read_per_rfc_7239() {
        let strategy = hash(HashKey::Forwarded, &["10.0.0.0/8"], Fallback::Balance);
        let request = head(
            "/",
            &[(
                "forwarded",
                r#"for=203.0.113.5, for="[2001:db8:cafe::17]:4711";proto=https, for=10.1.1.1"#,
            )],
        );
        assert_eq!(
            strategy.on_request(&request, ip("10.0.0.2")),
            hashed("2001:db8:cafe::17")
        );
        assert_eq!(
            strategy.on_request(&head("/", &[]), ip("10.0.0.2")),
            Stickiness::New
        );
    }

    #[test]
    fn header_query_and_cookie_keys_hash_their_value_or_fall_back() {
        let header = hash(
            HashKey::Header("x-user".parse().unwrap()),
            &[],
            Fallback::SourceIp,
        );
        assert_eq!(
            header.on_request(&head("/", &[("x-user", "alice")]), ip("192.0.2.1")),
            Stickiness::Hash(hash_bytes(b"alice"))
        );
        assert_eq!(
            header.on_request(&head("/", &[]), ip("192.0.2.1")),
            hashed("192.0.2.1")
        );
        let query = hash(HashKey::Query("token".into()), &[], Fallback::Balance);
        let with_token = head("/socket.io/?EIO=4&token=abc%20d&transport=polling", &[]);
        assert_eq!(
            query.on_request(&with_token, ip("192.0.2.1")),
            Stickiness::Hash(hash_bytes(b"abc%20d"))
        );
        assert_eq!(
            query.on_request(&head("/?tokenx=1", &[]), ip("192.0.2.1")),
            Stickiness::New
        );
        let cookie = hash(HashKey::Cookie("sid".into()), &[], Fallback::Balance);
        assert_eq!(
            cookie.on_request(&head("/", &[("cookie", "a=1; sid=xyz")]), ip("192.0.2.1")),
            Stickiness::Hash(hash_bytes(b"xyz"))
        );
    }

    #[test]
    fn a_cookie_key_is_found_beside_non_ascii_pairs_and_hashed_as_its_bytes() {
        let cookie = hash(HashKey::Cookie("sid".into()), &[], Fallback::Balance);
        for (field, key) in [
            (&b"a=\xe9t\xe9; sid=xyz"[..], &b"xyz"[..]),
            (b"flag; sid=\xe9\xff; \x80", b"\xe9\xff"),
        ] {
            let mut head = head("/", &[]);
            head.headers
                .insert("cookie", http::HeaderValue::from_bytes(field).unwrap());
            assert_eq!(
                cookie.on_request(&head, ip("192.0.2.1")),
                Stickiness::Hash(hash_bytes(key)),
                "{field:?}"
            );
        }
    }

    #[test]
    fn a_key_longer_than_max_key_bytes_falls_back_and_is_counted() {
        let oversized = Counter::default();
        let keys = KeyLimit::new(8, oversized.clone());
        let header = limited(
            HashKey::Header("x-user".parse().unwrap()),
            &[],
            Fallback::SourceIp,
            keys.clone(),
        );
        assert_eq!(
            header.on_request(&head("/", &[("x-user", "12345678")]), ip("192.0.2.1")),
            Stickiness::Hash(hash_bytes(b"12345678"))
        );
        assert_eq!(
            header.on_request(&head("/", &[("x-user", "123456789")]), ip("192.0.2.1")),
            hashed("192.0.2.1")
        );
        let query = limited(
            HashKey::Query("token".into()),
            &[],
            Fallback::Balance,
            keys.clone(),
        );
        assert_eq!(
            query.on_request(&head("/?token=123456789", &[]), ip("192.0.2.1")),
            Stickiness::New
        );
        let cookie = limited(HashKey::Cookie("sid".into()), &[], Fallback::Balance, keys);
        assert_eq!(
            cookie.on_request(&head("/", &[("cookie", "sid=123456789")]), ip("192.0.2.1")),
            Stickiness::New
        );
        assert_eq!(oversized.get(), 3);
    }
}
