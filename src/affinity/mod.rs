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
pub mod seal;
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
use stick_table::StickTable;

/// What a request says about the session it belongs to. Never an error: a forged, garbled or
/// stale value is [`Stickiness::Invalid`], which routes like a new session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stickiness {
    /// A cookie named a known backend (index into the pool); a sealed value also says when
    /// the binding was made and last used.
    Pinned(usize, Option<Seen>),
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
    pub seen: Option<Seen>,
}

/// When a sealed binding was first made and last used, in unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub first: u64,
    pub last: u64,
}

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
}

impl Outcome {
    /// The word used in logs: `hit`, `new`, `redispatch`, `invalid`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::New => "new",
            Outcome::Redispatch => "redispatch",
            Outcome::Invalid => "invalid",
        }
    }
}

/// A change to the stick table that a response asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableUpdate {
    /// Bind this session id to the backend that answered, for `ttl`.
    Bind { key: String, ttl: Duration },
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
    StickTable(StickTable),
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
            AffinityConfig::StickTable(config) => {
                Affinity::StickTable(StickTable::new(config, keys))
            }
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

    /// A hash that identifies the request's session, for counting live sessions per backend:
    /// the hash key, the app's session value (prefix), or the client address with the app's
    /// cookies (insert, after stickyd's cookie is stripped). `None` for the stick table, which
    /// counts its entries, and for `none`.
    pub fn session_identity(
        &self,
        headers: &HeaderMap,
        client: IpAddr,
        stickiness: &Stickiness,
    ) -> Option<u64> {
        match (self, stickiness) {
            (Affinity::Hash(_), Stickiness::Hash(key)) => Some(*key),
            (Affinity::Prefix(prefix), _) => {
                cookies::find(headers, prefix.cookie()).map(hash::hash_bytes)
            }
            (Affinity::Insert(_), _) => {
                let cookie = headers
                    .get(http::header::COOKIE)
                    .map_or(&b""[..], |value| value.as_bytes());
                Some(hash::hash_ip(client) ^ hash::hash_bytes(cookie))
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
    pub fn wants_reissue(&self, seen: Option<Seen>) -> bool {
        match self {
            Affinity::Prefix(prefix) => prefix.refresh_due(seen),
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
            sealer: crate::affinity::seal::Sealer::plain(),
            max_idle: None,
            max_life: None,
        }
    }

    /// Three backends with ids `s1`, `s2`, `s3`.
    pub fn pool() -> Pool {
        let backends: Vec<BackendConfig> = (1..=3)
            .map(|n| BackendConfig {
                name: format!("app{n}"),
                id: format!("s{n}"),
                address: format!("127.0.0.1:{}", 3000 + n).parse().unwrap(),
                weight: 1,
                state: crate::config::AdminState::Ready,
                backup: false,
            })
            .collect();
        Pool::new(&backends, crate::pool::PoolPolicy::default(), None)
    }
}
