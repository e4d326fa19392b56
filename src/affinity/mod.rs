//! Affinity strategies: what a request says about its session, and how the response records
//! the binding.
//!
//! Strategies are synchronous and pure: they read (and strip) the request head, say what they
//! found as a [`Stickiness`], and edit the response head. The router resolves a stick-table
//! [`Stickiness::Lookup`] through the store. Dispatch is an enum: the set is closed and each
//! strategy lives in its own file.

pub mod cookies;
pub mod hash;
pub mod insert;
pub mod prefix;
pub mod stick_table;

use std::time::Duration;

use std::net::IpAddr;

use http::{HeaderMap, request};
use prometheus_client::metrics::counter::Counter;

use crate::config::{AffinityConfig, ServiceConfig};
use crate::pool::Pool;
use hash::Hash;
use insert::Insert;
use prefix::Prefix;
use stick_table::StickOn;

/// What a request says about the session it belongs to. Never an error: a forged, garbled or
/// stale value is [`Stickiness::Invalid`], which routes like a new session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stickiness {
    /// A cookie named a known backend (index into the pool); a sealed value also says when
    /// the binding was made and last used.
    Pinned(usize, Option<BindingTimes>),
    /// Stick table: this app session id must be resolved through the store.
    Lookup(String),
    /// Hash strategy: the key's hash, to be placed on the consistent hash.
    Hash(u64),
    /// Nothing that names a session: the balancer chooses.
    New,
    /// A value that names no backend: the balancer chooses, counted apart.
    Invalid,
}

/// What the router knows of a request's binding when its response comes back.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    /// The backend that answered (pool index).
    pub backend: usize,
    /// How it was chosen.
    pub outcome: Outcome,
    /// The request's session value, bytes as the backend saw them: the stick-table key, or
    /// the prefix app value kept by [`Affinity::session_to_reissue`] for a re-issue.
    pub session: Option<&'a [u8]>,
    /// The sealed times the request's cookie carried, for a binding that held.
    pub times: Option<BindingTimes>,
}

pub use crate::seal::BindingTimes;

/// How a request's backend was chosen, for the access log (and, later, metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The session's backend was usable and served it.
    Hit,
    /// No session yet: the balancer chose.
    New,
    /// The session's backend was unusable (ejected, refused the connection): another one served
    /// it and the binding was rewritten.
    Redispatch,
    /// The affinity value was forged, garbled or stale: treated as a new session.
    Invalid,
    /// The session's backend was usable, but the binding had gone unused for longer than
    /// `rebalance_after` while its backend held more than its share of sessions: the balancer
    /// placed it anew and the binding was rewritten. The app had forgotten that session
    /// already, so moving it costs nothing.
    Rebalance,
}

impl Outcome {
    /// The word used in logs: `hit`, `new`, `redispatch`, `invalid`, `rebalance`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::New => "new",
            Outcome::Redispatch => "redispatch",
            Outcome::Invalid => "invalid",
            Outcome::Rebalance => "rebalance",
        }
    }

    /// Whether the request left the backend its binding named for another one, so the
    /// binding must be rewritten: a redispatch or a rebalance.
    pub fn moves(self) -> bool {
        matches!(self, Outcome::Redispatch | Outcome::Rebalance)
    }
}

/// What a request says about the identity of its session, kept until its response, which
/// may change it (see [`Affinity::live_identity`]).
#[derive(Debug, Clone)]
pub enum SessionIdentity {
    /// Hash strategy: the key's hash, which no response changes.
    Key(u64),
    /// Prefix: the hash of the app's session value the request carried, when the request
    /// named a backend (the client holds a binding).
    Prefix(Option<u64>),
    /// Insert: the client address's hash and the request's cookie fields.
    Insert {
        /// The hash of the client's address.
        client: u64,
        /// The request's cookie pairs.
        cookies: cookies::KeptCookies,
    },
}

/// The cookies a client will send after a response: `request`'s pairs less those the
/// response's `Set-Cookie` fields name, plus those they set (the last field of a name wins,
/// a deleting one sets nothing), `ours` excluded; each pair hashed with its name and the
/// hashes summed, so the order of the pairs does not matter.
fn next_cookies(request: &cookies::KeptCookies, response: &HeaderMap, ours: &[u8]) -> u64 {
    let pair = |name: &[u8], value: &[u8]| {
        xxhash_rust::xxh3::xxh3_64_with_seed(value, hash::hash_bytes(name))
    };
    let mut sum = 0u64;
    for kept in request.pairs() {
        let replaced = !kept.name.is_empty() && cookies::sets_cookie(response, kept.name);
        if kept.name != ours && !replaced {
            sum = sum.wrapping_add(pair(kept.name, kept.value));
        }
    }
    let set: Vec<cookies::SetCookie<'_>> = if response.contains_key(http::header::SET_COOKIE) {
        cookies::set_cookies(response).collect()
    } else {
        Vec::new()
    };
    for (at, cookie) in set.iter().enumerate() {
        let overridden = set[at + 1..].iter().any(|later| later.name == cookie.name);
        if cookie.name != ours && !overridden && cookie.lifetime != cookies::Lifetime::Expired {
            sum = sum.wrapping_add(pair(cookie.name, cookie.value));
        }
    }
    sum
}

/// A change to the stick table that a response asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableUpdate {
    /// Bind this session id to the backend that answered, for `ttl`.
    Bind {
        /// The app's session id.
        key: String,
        /// The entry's lifetime: the cookie's own `Max-Age`/`Expires`, else `ttl`.
        ttl: Duration,
    },
    /// The app expired its cookie: drop this session id.
    Forget(String),
}

/// The longest session id (stick table) or hash key (header, query parameter or cookie value)
/// a strategy uses, `max_key_bytes` of `[service.limits]`. A longer one is treated as no
/// session (stored nowhere, never hashed) and counted in `stickyd_oversized_keys_total`, so a
/// client cannot make stickyd hold its input. HAProxy bounds a stick table's string keys too
/// (`type string len N`), by truncating them; stickyd refuses instead, since a truncated id
/// could join two sessions.
#[derive(Debug, Clone)]
pub struct KeyLimit {
    max_bytes: usize,
    oversized: Counter,
}

impl KeyLimit {
    /// Keys of at most `max_bytes` bytes; longer ones are counted in `oversized`.
    pub fn new(max_bytes: usize, oversized: Counter) -> KeyLimit {
        KeyLimit {
            max_bytes,
            oversized,
        }
    }

    /// Whether `key` is short enough to use; a longer one is counted.
    pub fn admits(&self, key: &[u8]) -> bool {
        let fits = key.len() <= self.max_bytes;
        if !fits {
            self.oversized.inc();
        }
        fits
    }
}

/// The affinity strategy of one service.
#[derive(Debug)]
pub enum Affinity {
    /// Balancing only.
    None,
    /// stickyd's own cookie names the backend.
    Insert(Insert),
    /// The app's cookie is prefixed with the backend id.
    Prefix(Prefix),
    /// The app's cookie is the key of a learned table.
    StickTable(StickOn),
    /// A request key on a consistent hash.
    Hash(Hash),
}

impl Affinity {
    /// Builds the strategy of `service` for `pool`'s backends; sealed cookie values are bound
    /// to the service's name and the strategy's cookie name, and session ids and hash keys
    /// longer than `keys` allows are treated as no session.
    pub fn new(service: &ServiceConfig, pool: &Pool, keys: KeyLimit) -> Affinity {
        match &service.affinity {
            AffinityConfig::None => Affinity::None,
            AffinityConfig::Insert(config) => {
                Affinity::Insert(Insert::new(config, &service.name, pool))
            }
            AffinityConfig::Prefix(config) => Affinity::Prefix(Prefix::new(config, &service.name)),
            AffinityConfig::StickTable(config) => Affinity::StickTable(StickOn::new(config, keys)),
            AffinityConfig::Hash(config) => {
                Affinity::Hash(Hash::new(config, &service.trusted_proxies, keys))
            }
        }
    }

    /// Reads, and strips where the strategy says so, the affinity state of a request head
    /// from `client` (the peer, or the PROXY protocol source).
    pub fn on_request(&self, head: &mut request::Parts, client: IpAddr, pool: &Pool) -> Stickiness {
        match self {
            Affinity::None => Stickiness::New,
            Affinity::Insert(insert) => insert.on_request(&mut head.headers, pool),
            Affinity::Prefix(prefix) => prefix.on_request(&mut head.headers, pool),
            Affinity::StickTable(table) => table.on_request(&head.headers),
            Affinity::Hash(hash) => hash.on_request(head, client),
        }
    }

    /// What identifies the request's session, for counting live sessions per backend, as far
    /// as the request tells: the hash key, the app's session value (prefix, when the request
    /// named a backend), or the client address with the request's cookie fields (insert).
    /// `None` for the stick table, which counts its entries, and for `none`. Call after
    /// [`Affinity::on_request`]; [`Affinity::live_identity`] completes it with the response.
    pub fn session_identity(
        &self,
        headers: &HeaderMap,
        client: IpAddr,
        stickiness: &Stickiness,
    ) -> Option<SessionIdentity> {
        match (self, stickiness) {
            (Affinity::Hash(_), Stickiness::Hash(key)) => Some(SessionIdentity::Key(*key)),
            (Affinity::Prefix(prefix), Stickiness::Pinned(..)) => Some(SessionIdentity::Prefix(
                cookies::find(headers, prefix.cookie()).map(hash::hash_bytes),
            )),
            (Affinity::Prefix(_), _) => Some(SessionIdentity::Prefix(None)),
            (Affinity::Insert(_), _) => Some(SessionIdentity::Insert {
                client: hash::hash_ip(client),
                cookies: cookies::KeptCookies::of(headers),
            }),
            _ => None,
        }
    }

    /// The identity the client's next request of this session will carry, from what its
    /// request said and what the response head (`headers`, before [`Affinity::on_response`]
    /// rewrites it) sets: the session is live from this response on. `None` when the client
    /// holds no binding after it (prefix: no app session, or the app deleted its cookie).
    ///
    /// - hash: the key;
    /// - prefix: the app's session value the response sets, else the one the request
    ///   carried when it named a backend;
    /// - insert: the client address with the cookies the client will send: the request's
    ///   pairs, less those the response sets or deletes, plus those it sets, stickyd's own
    ///   cookie excluded, combined whatever their order (browsers reorder). A cookie the
    ///   response scopes elsewhere (`Path`, `Domain`) is counted as sent: the next request
    ///   then counts the session once more until `session_idle`, which over-counts (the safe
    ///   direction for drain) and never under-counts.
    pub fn live_identity(&self, identity: &SessionIdentity, headers: &HeaderMap) -> Option<u64> {
        match (self, identity) {
            (_, SessionIdentity::Key(key)) => Some(*key),
            (Affinity::Prefix(prefix), SessionIdentity::Prefix(carried)) => {
                match cookies::find_set_cookie(headers, prefix.cookie()) {
                    Some((_, cookies::Lifetime::Expired)) => None,
                    Some((value, _)) => Some(hash::hash_bytes(value)),
                    None => *carried,
                }
            }
            (Affinity::Insert(insert), SessionIdentity::Insert { client, cookies }) => {
                Some(client ^ next_cookies(cookies, headers, insert.cookie().as_bytes()))
            }
            _ => None,
        }
    }

    /// The app's session value as the backend will see it (bytes, whatever they hold), needed
    /// after the request is gone to re-issue a prefix cookie on redispatch. Only the prefix
    /// strategy has one to keep.
    pub fn session_to_reissue(&self, headers: &HeaderMap) -> Option<Vec<u8>> {
        match self {
            Affinity::Prefix(prefix) => cookies::find(headers, prefix.cookie()).map(<[u8]>::to_vec),
            _ => None,
        }
    }

    /// Whether the prefix cookie must be re-issued even if the app sets none: its sealed
    /// last-use time is due for a refresh (`max_idle`). The router then keeps the app value.
    pub fn wants_reissue(&self, times: Option<BindingTimes>) -> bool {
        match self {
            Affinity::Prefix(prefix) => prefix.refresh_due(times),
            _ => false,
        }
    }

    /// Records the binding in the response head: `Set-Cookie` for insert (when it changed,
    /// or its sealed last-use time is due for a refresh), prefix rewrite, and for the stick
    /// table the update the router must apply.
    pub fn on_response(
        &self,
        pool: &Pool,
        binding: &Binding<'_>,
        headers: &mut HeaderMap,
    ) -> Option<TableUpdate> {
        match self {
            Affinity::None | Affinity::Hash(_) => None,
            Affinity::Insert(insert) => {
                insert.on_response(pool, binding, headers);
                None
            }
            Affinity::Prefix(prefix) => {
                prefix.on_response(&pool.get(binding.backend).id, binding, headers);
                None
            }
            Affinity::StickTable(table) => table.on_response(binding.session, headers),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {

    use crate::config::BackendConfig;
    use crate::pool::Pool;

    /// Plain ids, no lifetimes.
    pub fn plain_ids() -> crate::config::SealConfig {
        crate::config::SealConfig {
            sealer: crate::seal::Sealer::plain(),
            max_idle: None,
            max_life: None,
        }
    }

    mod identity {
        use std::net::IpAddr;

        use http::header::{COOKIE, HeaderMap, HeaderValue, SET_COOKIE};

        use super::{plain_ids, pool};
        use crate::affinity::{Affinity, Stickiness, insert::Insert, prefix::Prefix};
        use crate::config::{InsertConfig, PrefixConfig, SameSite};

        fn insert() -> Affinity {
            let config = InsertConfig {
                cookie: "SERVERID".into(),
                path: "/".into(),
                domain: None,
                max_age: None,
                http_only: true,
                secure: false,
                same_site: SameSite::Lax,
                indirect: true,
                nocache: true,
                seal: plain_ids(),
            };
            Affinity::Insert(Insert::new(&config, "web", &pool()))
        }

        fn prefix() -> Affinity {
            let config = PrefixConfig {
                cookie: "sid".into(),
                delimiter: '~',
                seal: plain_ids(),
            };
            Affinity::Prefix(Prefix::new(&config, "web"))
        }

        fn fields(name: http::HeaderName, values: &[&str]) -> HeaderMap {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(name.clone(), HeaderValue::from_str(value).unwrap());
            }
            headers
        }

        const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

        /// The identity a request with `cookies` and a response with `set_cookies` leave.
        fn live(affinity: &Affinity, cookies: &[&str], set_cookies: &[&str]) -> Option<u64> {
            let mut request = http::Request::new(());
            *request.headers_mut() = fields(COOKIE, cookies);
            let (mut head, ()) = request.into_parts();
            let stickiness = affinity.on_request(&mut head, CLIENT, &pool());
            let identity = affinity.session_identity(&head.headers, CLIENT, &stickiness)?;
            affinity.live_identity(&identity, &fields(SET_COOKIE, set_cookies))
        }

        #[test]
        fn insert_counts_a_new_session_under_the_identity_of_its_next_request() {
            let insert = insert();
            let first = live(
                &insert,
                &["a=1; b=2; gone=x"],
                &["b=3; Path=/", "c=4", "gone=; Max-Age=0", "c=5"],
            );
            // The browser sends the jar back in its own order, stickyd's cookie among it.
            let next = live(&insert, &["c=5; SERVERID=s2", "b=3; a=1"], &[]);
            assert_eq!(first, next);
            assert!(first.is_some());
            assert_ne!(first, live(&insert, &["a=1; b=2; gone=x"], &[]));
            assert_ne!(first, live(&insert, &["c=5; b=3; a=2"], &[]));
        }

        #[test]
        fn insert_identities_hold_duplicate_and_valueless_pairs() {
            let insert = insert();
            assert_ne!(
                live(&insert, &["a=1; a=1"], &[]),
                live(&insert, &[], &[]),
                "two equal pairs cancelled out"
            );
            assert_eq!(
                live(&insert, &["flag; a=1"], &[]),
                live(&insert, &["a=1", "flag"], &[])
            );
        }

        #[test]
        fn prefix_counts_the_session_value_the_response_sets() {
            let prefix = prefix();
            let first = live(&prefix, &[], &["sid=abc; Path=/"]);
            assert_eq!(first, live(&prefix, &["sid=s1~abc"], &[]));
            assert!(first.is_some());
            assert_eq!(
                live(&prefix, &["sid=abc"], &[]),
                None,
                "no binding, no session"
            );
            assert_eq!(live(&prefix, &["sid=s1~abc"], &["sid=; Max-Age=0"]), None);
            assert_eq!(
                live(&prefix, &["sid=s1~abc"], &["sid=def"]),
                live(&prefix, &["sid=s2~def"], &[])
            );
        }

        #[test]
        fn none_tracks_no_session() {
            let identity =
                Affinity::None.session_identity(&HeaderMap::new(), CLIENT, &Stickiness::New);
            assert!(identity.is_none());
        }
    }

    /// Three backends with ids `s1`, `s2`, `s3`.
    pub fn pool() -> Pool {
        let backends: Vec<BackendConfig> = (1..=3)
            .map(|n| BackendConfig {
                id: format!("s{n}"),
                ..BackendConfig::new(
                    &format!("app{n}"),
                    format!("127.0.0.1:{}", 3000 + n).parse().unwrap(),
                )
            })
            .collect();
        Pool::new("web", &backends, crate::pool::PoolPolicy::default(), None)
    }
}
