//! The validated configuration: typed durations, resolved addresses, one affinity enum.
//!
//! [`Config::load`] reads the TOML file (`file.rs` holds its raw shape); the checker (`check.rs`,
//! which also reads key, token and certificate files and resolves backend names) checks
//! everything a service needs to run and reports each problem as `PATH:LINE:COL: what is wrong
//! and what to write instead`. This file is the validated model.

mod check;
pub(crate) mod file;
mod hints;
mod redis_url;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::sign::CertifiedKey;

pub use crate::seal::{SealConfig, SealMode};
pub use crate::telemetry::AccessFormat;
pub use file::{AdminState, Balance, Fallback, SameSite};
pub use redis_url::{RedisTarget, RedisUrlError, SentinelTarget, parse_redis_url};

/// Everything stickyd runs on.
#[derive(Debug, Clone)]
pub struct Config {
    /// `tracing` filter directive used when `RUST_LOG` is unset. Default: `info`.
    pub log_level: String,
    /// How access lines (target `stickyd::access`, at `info`) are written: `text` (default)
    /// or `json`. A reload applies it.
    pub access_log: AccessFormat,
    /// Time in-flight requests get to finish after SIGTERM/SIGINT. Default: 30 s.
    pub shutdown_grace: Duration,
    /// Threads that serve connections; `None` means one per CPU core the process may use.
    /// 1 runs a single-threaded event loop.
    pub threads: Option<usize>,
    /// Pin each thread to one core, round-robin over the CPUs the process may use.
    /// Default: false.
    pub pin_threads: bool,
    /// The services, in file order.
    pub services: Vec<ServiceConfig>,
    /// The admin listener; off when `[admin]` is absent.
    pub admin: Option<AdminConfig>,
    /// How backend host names and SRV records are looked up at run time (`[resolver]`).
    pub resolver: ResolverConfig,
    /// What loads but is likely a mistake, as `PATH:LINE:COL: warning: ...`: `check` prints
    /// them, the daemon logs them at start and reload.
    pub warnings: Vec<Problem>,
}

/// How backend host names and SRV records are looked up (`[resolver]`): at load, and again
/// at run time when their answer's TTL runs out, within `min_refresh` and `max_refresh`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverConfig {
    /// Name servers to ask (`IP` or `IP:port`); empty: the system's (`/etc/resolv.conf`).
    /// Default: empty.
    pub nameservers: Vec<SocketAddr>,
    /// Shortest time between two lookups of one name, however short its TTL. Default: 1 s.
    pub min_refresh: Duration,
    /// Longest time between two lookups of one name, however long its TTL. Default: 5 min.
    pub max_refresh: Duration,
}

impl Default for ResolverConfig {
    fn default() -> ResolverConfig {
        ResolverConfig {
            nameservers: Vec::new(),
            min_refresh: file::DEFAULT_MIN_REFRESH,
            max_refresh: file::DEFAULT_MAX_REFRESH,
        }
    }
}

/// A service's backends from DNS SRV records (`discovery = { dns_srv = "...", resolvers =
/// [...] }`): one backend per target host and port (RFC 2782), kept in step with the records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// The SRV name, e.g. `_http._tcp.app.example`.
    pub dns_srv: String,
    /// Name servers for this service's lookups; empty: `[resolver] nameservers`.
    pub nameservers: Vec<SocketAddr>,
}

/// Whether `text` may be a backend's name or id as the config file writes them: letters,
/// digits, `.`, `_` and `-`, at most 64 bytes.
pub fn is_token(text: &str) -> bool {
    check::token_problem(text, "").is_none()
}

impl DiscoveryConfig {
    /// `discovery`'s own name servers when it names any, else `fallback` (`[resolver]`'s).
    pub fn nameservers_or<'a>(
        discovery: Option<&'a DiscoveryConfig>,
        fallback: &'a [SocketAddr],
    ) -> &'a [SocketAddr] {
        match discovery {
            Some(discovery) if !discovery.nameservers.is_empty() => &discovery.nameservers,
            _ => fallback,
        }
    }
}

/// The admin listener: metrics, status, backend states, stick-table inspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Where it listens. Default: 127.0.0.1:9901 (loopback only).
    pub bind: SocketAddr,
    /// Bearer token every request must carry (`Authorization: Bearer ...`), read from
    /// `token_file` at load, surrounding whitespace trimmed. Default: none (no token asked).
    pub token: Option<String>,
    /// Time a connection has for a whole request head, and between two requests. Default: 10 s.
    pub head_timeout: Duration,
    /// Most admin connections served at once; more wait in the accept queue. Default: 64.
    pub max_connections: usize,
}

/// One listening address of a service and what it speaks there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Where it listens (port 0 lets the OS choose, for tests).
    pub address: SocketAddr,
    /// Accept cleartext HTTP/2 with prior knowledge (RFC 9113 §3.3) beside HTTP/1.1, told
    /// apart by the connection preface. Off by default, as in nginx: only ask for it behind a
    /// balancer that speaks it. TLS listeners offer HTTP/2 by ALPN regardless. Default: false.
    pub h2c: bool,
    /// Speak TLS with the service's certificates (`[[service.tls]]`). Default: true when the
    /// service has certificates, so one service can listen with and without TLS
    /// (`{ address = "0.0.0.0:80", tls = false }` beside `"0.0.0.0:443"`).
    pub tls: bool,
    /// Answer every request with `308 Permanent Redirect` to the same host and target over
    /// HTTPS on this port (the service's first TLS listener's), instead of proxying it: a
    /// cleartext listener's `redirect_https = true`. RFC 9110 §15.4.9.
    pub redirect_https: Option<u16>,
}

/// One service: listeners, backends, and how sessions stick to them.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Unique name, used in logs.
    pub name: String,
    /// Where the service listens, and what each listener speaks (`listen`).
    pub listeners: Vec<ListenerConfig>,
    /// Peers (and forwarded hops) believed about the client: their `X-Forwarded-For` and
    /// `Forwarded` (RFC 7239) are kept and appended to, and the hash strategy's forwarded keys
    /// walk through them (nginx `set_real_ip_from` with `real_ip_recursive on`). From any
    /// other peer those fields are replaced by stickyd's own. Default: none.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Forward request fields whose names contain `_`. Off by default, as nginx's
    /// `underscores_in_headers`: CGI, PHP and WSGI read `X_Forwarded_For` as `X-Forwarded-For`,
    /// so such fields are dropped (and counted). A `_` spelling of a framing or forwarding
    /// field is dropped (or refused) either way. Default: false.
    pub underscores_in_headers: bool,
    /// How a new session picks its backend.
    pub balance: Balance,
    /// Time allowed to open a TCP connection to a backend. Default: 3 s.
    pub connect_timeout: Duration,
    /// Time allowed for a backend's response head; past it the client gets 504. Default: 60 s.
    pub response_timeout: Duration,
    /// How long a backend that refused a connection is skipped. Default: 5 s.
    pub ejection_time: Duration,
    /// How long a backend that joins (added by a reload, back up after its health checks
    /// failed, or out of `maint`) takes to reach its full weight for new sessions, rising
    /// linearly from nothing (HAProxy `slowstart`, Envoy `slow_start_config`), so a cold
    /// backend is not flooded. Zero: at once. Default: 0. The hash strategy's placement
    /// ignores it: keys must not move as a weight ramps.
    pub slow_start: Duration,
    /// Every connection to this service's listeners starts with a PROXY protocol v1 or v2
    /// header (HAProxy's `accept-proxy`) naming the real client. Default: false.
    pub proxy_protocol: bool,
    /// TLS certificates (`[[service.tls]]`): when any, the listeners speak TLS with ALPN `h2`
    /// and `http/1.1`, the first certificate serving clients whose SNI matches none.
    pub tls: Vec<Arc<CertifiedKey>>,
    /// Sessions bound to a backup backend move back to a primary at their next request once
    /// a primary is usable again (HAProxy leaves them: its issue 2729). Default: true.
    pub failback: bool,
    /// A cookie binding seen within this window counts as a live session of its backend, for
    /// session-aware drain. Default: 30 min.
    pub session_idle: Duration,
    /// Longest a backend being removed at run time (admin `DELETE`) drains: it is dropped
    /// once it has no live session and no request in flight, or when this has passed.
    /// Default: 1 h.
    pub drain_timeout: Duration,
    /// Opt-in: an insert or prefix binding unused for longer than this may be placed anew on
    /// its next request when its backend holds more than its share of live sessions, so that
    /// cookies that outlived their app session do not keep an old backend full. Set it to the
    /// app's session timeout: past it the app has forgotten the session, and moving it costs
    /// nothing. A binding used within it never moves. At most `session_idle` (stickyd forgets
    /// a session's last request after that). Default: none (bindings never move while their
    /// backend can take them).
    pub rebalance_after: Option<Duration>,
    /// Backends from DNS SRV records besides (or instead of) `[[service.backend]]`.
    /// Default: none.
    pub discovery: Option<DiscoveryConfig>,
    /// Health checking.
    pub health: HealthConfig,
    /// Limits on client requests and connections.
    pub limits: LimitsConfig,
    /// Every response carries `x-stickyd: backend=NAME; affinity=OUTCOME`, to debug stickiness
    /// from the client side. Default: false.
    pub debug_header: bool,
    /// The affinity strategy.
    pub affinity: AffinityConfig,
    /// At least one backend, in file order.
    pub backends: Vec<BackendConfig>,
}

impl ServiceConfig {
    /// The name servers this service's DNS lookups ask: its `discovery.resolvers`, else the
    /// `[resolver] nameservers` of `resolver`; empty means the system's.
    pub fn nameservers<'a>(&'a self, resolver: &'a ResolverConfig) -> &'a [SocketAddr] {
        DiscoveryConfig::nameservers_or(self.discovery.as_ref(), &resolver.nameservers)
    }

    /// Adds `backend` to the service, as the admin API's `POST` does; the file's rules apply.
    ///
    /// # Errors
    /// [`BackendRefused::Invalid`] when the backend's name or id is not a token (letters,
    /// digits, `.`, `_`, `-`; at most 64 bytes) or its weight is not 1 to 1000;
    /// [`BackendRefused::Taken`] when its name or id is already a backend's.
    pub fn add_backend(&mut self, backend: BackendConfig) -> Result<(), BackendRefused> {
        if let Some(problem) = check::token_problem(&backend.name, "backend name")
            .or_else(|| check::token_problem(&backend.id, "backend id"))
            .or_else(|| check::weight_problem(backend.weight))
        {
            return Err(BackendRefused::Invalid(problem));
        }
        let taken = |what: &str, value: &str| {
            BackendRefused::Taken(format!(
                "backend {what} {value:?} is already used in service {:?}",
                self.name
            ))
        };
        if self.backends.iter().any(|other| other.name == backend.name) {
            return Err(taken("name", &backend.name));
        }
        if self.backends.iter().any(|other| other.id == backend.id) {
            return Err(taken("id", &backend.id));
        }
        self.backends.push(backend);
        Ok(())
    }

    /// One line for `stickyd check`: listeners, balance, affinity and backends.
    pub fn summary(&self) -> String {
        let listen: Vec<String> = self
            .listeners
            .iter()
            .map(|listener| {
                if listener.h2c {
                    format!("{} (h2c)", listener.address)
                } else {
                    listener.address.to_string()
                }
            })
            .collect();
        let affinity = match &self.affinity {
            AffinityConfig::None => "none".to_string(),
            AffinityConfig::Insert(insert) => format!("insert cookie {}", insert.cookie),
            AffinityConfig::Prefix(prefix) => format!(
                "prefix cookie {} delimiter {}",
                prefix.cookie, prefix.delimiter
            ),
            AffinityConfig::StickTable(table) => {
                format!(
                    "stick-table cookie {} ttl {}s max_entries {}",
                    table.cookie,
                    table.ttl.as_secs(),
                    table.max_entries
                )
            }
            AffinityConfig::Hash(hash) => {
                let bound = hash
                    .balance_factor
                    .map_or_else(String::new, |factor| format!(" balance_factor {factor}"));
                format!(
                    "hash key {} fallback {}{bound}",
                    hash.key,
                    hash.fallback.as_str()
                )
            }
        };
        let backends: Vec<String> = self
            .backends
            .iter()
            .map(|backend| {
                format!(
                    "{} (id {}) {} weight {}",
                    backend.name, backend.id, backend.address, backend.weight
                )
            })
            .collect();
        let slow_start = if self.slow_start.is_zero() {
            String::new()
        } else {
            format!(" slow_start {}s", self.slow_start.as_secs_f64())
        };
        format!(
            "service {}: listen {}; balance {}{slow_start}; affinity {}; {} backend(s): {}",
            self.name,
            listen.join(", "),
            self.balance.as_str(),
            affinity,
            self.backends.len(),
            backends.join(", ")
        )
    }
}

/// Why [`ServiceConfig::add_backend`] refused a backend; the text says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendRefused {
    /// A name, id or weight the config file would refuse.
    #[error("{0}")]
    Invalid(String),
    /// The name or id is already a backend's.
    #[error("{0}")]
    Taken(String),
}

/// One backend server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Unique name within the service, used in logs.
    pub name: String,
    /// Stable id written in cookies; defaults to `name`. Never the address.
    pub id: String,
    /// Resolved address, once at load.
    pub address: SocketAddr,
    /// Relative share of new sessions, 1..=1000. Default: 1.
    pub weight: u32,
    /// Admin state at start. Default: ready.
    pub state: AdminState,
    /// Takes traffic only while no primary backend is usable. Default: false.
    pub backup: bool,
    /// The host name `address` was resolved from, looked up again on its TTL; `None` for an
    /// IP address.
    pub host: Option<String>,
    /// Made from an SRV record of the service's `discovery`: drained and dropped when the
    /// record goes.
    pub discovered: bool,
}

impl BackendConfig {
    /// Backend `name` at `address` with every default: id `name`, weight 1, ready, not a
    /// backup. Change a field with struct update syntax:
    /// `BackendConfig { id: "s1".into(), ..BackendConfig::new("app1", address) }`.
    pub fn new(name: &str, address: SocketAddr) -> BackendConfig {
        BackendConfig {
            name: name.to_string(),
            id: name.to_string(),
            address,
            weight: file::DEFAULT_WEIGHT,
            state: AdminState::Ready,
            backup: false,
            host: None,
            discovered: false,
        }
    }
}

/// Limits on what a client may send and hold, per service (each of its listeners). Every
/// state a client connection can be in has a deadline here (see `docs/SECURITY.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Time for a whole request head: from the connection's start (after the handshake) for
    /// the first, from its first byte for a later one; past it the connection is closed.
    /// Default: 10 s.
    pub head_timeout: Duration,
    /// Time a connection may sit idle between two requests (HTTP/1.1) or with no open stream
    /// (HTTP/2) before it is closed. Default: 60 s.
    pub keepalive_timeout: Duration,
    /// Time for the PROXY protocol header and the TLS handshake. Default: 10 s.
    pub handshake_timeout: Duration,
    /// Longest wait between two reads of a request body; past it the client gets 408 and the
    /// backend connection is closed, never counted against the backend. Default: 60 s.
    pub body_timeout: Duration,
    /// Time an upgraded tunnel (WebSocket) may carry no byte in either direction. Default: 1 h.
    pub tunnel_timeout: Duration,
    /// Longest session id (stick table) or hash key, in bytes; a longer one is treated as no
    /// session and counted in `stickyd_oversized_keys_total`. Default: 256.
    pub max_key_bytes: usize,
    /// Most concurrent streams per HTTP/2 connection. Default: 100.
    pub http2_max_concurrent_streams: u32,
    /// Streams an HTTP/2 client may reset before they were accepted, at once, before the
    /// connection is closed with GOAWAY (Rapid Reset, CVE-2023-44487). Default: 20.
    pub http2_max_pending_resets: usize,
    /// Streams stickyd may reset for protocol errors per HTTP/2 connection before it is closed
    /// with GOAWAY. Default: 1024.
    pub http2_max_local_resets: usize,
    /// Largest request head in bytes; larger gets 431. Default: 64 KiB; at least 8 KiB.
    pub max_header_bytes: usize,
    /// Most header fields; more gets 431. Default: 100.
    pub max_headers: usize,
    /// Most client connections served at once per listener; more wait in the accept queue
    /// (counted). Default: 10 000.
    pub max_connections: usize,
    /// Largest request body a `Content-Length` may declare; larger gets 413 before anything is
    /// forwarded. Default: none.
    pub max_body: Option<u64>,
}

/// Active and passive health checking of a service's backends.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// Path of the active check (`GET`); `None`: no active checks, every backend counts as up.
    pub path: Option<String>,
    /// Between two checks of one backend. Default: 2 s.
    pub interval: Duration,
    /// One check's time limit. Default: 1 s.
    pub timeout: Duration,
    /// Consecutive passes that bring a down backend up. Default: 2.
    pub rise: u32,
    /// Consecutive failures that take an up backend down. Default: 3.
    pub fall: u32,
    /// Inclusive status range a passing check answers with. Default: 200-399.
    pub expect: (u16, u16),
    /// Consecutive failed requests that eject a backend for `ejection_time`; 0 never ejects.
    /// Default: 1.
    pub passive_failures: u32,
    /// Whether a 5xx response counts as a failed request for passive ejection. Default: false.
    pub passive_5xx: bool,
}

/// The affinity strategy of a service and its settings.
#[derive(Debug, Clone)]
pub enum AffinityConfig {
    /// Balancing only: every request is a new session.
    None,
    /// stickyd sets its own cookie naming the backend (HAProxy `cookie SRV insert`).
    Insert(InsertConfig),
    /// stickyd prefixes the app's session cookie with the backend id (HAProxy `cookie ... prefix`).
    Prefix(PrefixConfig),
    /// stickyd learns session id -> backend from the app's `Set-Cookie`.
    StickTable(StickTableConfig),
    /// A request key (client address, header, query parameter, cookie) on a consistent hash.
    Hash(HashConfig),
}

/// Settings of the hash strategy.
#[derive(Debug, Clone)]
pub struct HashConfig {
    /// What is hashed. Forwarded keys are believed through the service's `trusted_proxies`.
    pub key: HashKey,
    /// What a request without the key does. Default: hash the source address.
    pub fallback: Fallback,
    /// Bounded load (HAProxy `hash-balance-factor`): no backend takes more than this factor times
    /// the mean in-flight requests; overflow goes to the key's next choice. Default: unbounded.
    pub balance_factor: Option<f64>,
}

impl fmt::Display for HashKey {
    /// The key as written in the config file.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashKey::SourceIp => f.write_str("source-ip"),
            HashKey::ForwardedFor => f.write_str("header:X-Forwarded-For"),
            HashKey::Forwarded => f.write_str("header:Forwarded"),
            HashKey::Header(name) => write!(f, "header:{name}"),
            HashKey::Query(name) => write!(f, "query:{name}"),
            HashKey::Cookie(name) => write!(f, "cookie:{name}"),
        }
    }
}

/// The request part the hash strategy hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The client's address (the peer, or the PROXY protocol source).
    SourceIp,
    /// The client address from `X-Forwarded-For`, believed only through `trusted_proxies`.
    ForwardedFor,
    /// The client address from `Forwarded` (RFC 7239 `for=`), believed only through `trusted_proxies`.
    Forwarded,
    /// The value of a request header.
    Header(http::HeaderName),
    /// The raw value of a query parameter.
    Query(String),
    /// The value of a cookie.
    Cookie(String),
}

/// Settings of the insert strategy.
#[derive(Debug, Clone)]
pub struct InsertConfig {
    /// Our cookie's name. Default: `SERVERID`.
    pub cookie: String,
    /// `Path` attribute. Default: `/`.
    pub path: String,
    /// `Domain` attribute. Default: none (host-only cookie).
    pub domain: Option<String>,
    /// `Max-Age` attribute. Default: none (a browser-session cookie).
    pub max_age: Option<Duration>,
    /// `HttpOnly` attribute. Default: true.
    pub http_only: bool,
    /// `Secure` attribute. Default: true when the service has certificates and every listener
    /// that proxies speaks TLS (a browser never sends a `Secure` cookie over `http://`, RFC 6265
    /// section 5.4), false otherwise.
    pub secure: bool,
    /// `SameSite` attribute. Default: Lax.
    pub same_site: SameSite,
    /// Remove our cookie from requests before the backend sees them. Default: true.
    pub indirect: bool,
    /// Add `Cache-Control: private` where we set the cookie (HAProxy `nocache`). Default: true.
    pub nocache: bool,
    /// How the backend id is written into the cookie. Default: plain.
    pub seal: SealConfig,
}

/// Settings of the prefix strategy.
#[derive(Debug, Clone)]
pub struct PrefixConfig {
    /// The app's session cookie (`JSESSIONID`, `PHPSESSID`, `connect.sid`).
    pub cookie: String,
    /// Separator between backend id and the app's value. Default: `~`.
    pub delimiter: char,
    /// How the backend id in the prefix is written. Default: plain.
    pub seal: SealConfig,
}

/// Settings of the stick-table strategy.
#[derive(Debug, Clone)]
pub struct StickTableConfig {
    /// The app's session cookie.
    pub cookie: String,
    /// Entry lifetime when the app's cookie has no Max-Age/Expires; refreshed on use. Default: 30 min.
    pub ttl: Duration,
    /// Most entries kept; the least recently used is evicted past it. Default: 1 000 000.
    pub max_entries: u64,
    /// Lifetime of an entry reserved from a session id that only a request has carried, until
    /// a backend's `Set-Cookie` confirms the id and the entry gets its full lifetime.
    /// Default: 10 s.
    pub reservation_ttl: Duration,
    /// Where the table lives. Default: in memory.
    pub store: StoreConfig,
}

/// Where a stick table lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// In this process: empty after a restart, not shared.
    Memory,
    /// Shared through Redis by every instance with the same `target` and `key_prefix`.
    Redis {
        /// The server, from `redis_url`: `redis://[user:password@]host:port/db`, `rediss://`
        /// (TLS), `redis+sentinel://host1:port1,host2:port2/MASTER_NAME[/db]` (the master
        /// Redis Sentinel names, found again after a failover), or
        /// `redis+cluster://host1:port1,host2:port2` (a Redis Cluster's seed nodes).
        target: RedisTarget,
        /// Prefix of every key. Default: `stickyd:`.
        key_prefix: String,
        /// Time one Redis call may take before the local table answers. Default: 50 ms.
        timeout: Duration,
    },
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read the config file: {source}")]
    Read {
        /// The path as given.
        path: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file was read but has problems; each names its place.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

/// One problem in a config file, with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file as named by the caller.
    pub origin: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What is wrong and what to write instead.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.origin, self.line, self.column, self.message
        )
    }
}

/// The keys a reload (SIGHUP) never applies, for `stickyd check`: the tokio runtime is built
/// once (`threads`, `pin_threads`), and the admin listener is bound once (`[admin]` `bind`,
/// which adding or removing `[admin]` changes). A reload applies every other key, `[admin]`
/// `token_file`, `head_timeout` and `max_connections` included.
pub const RESTART_ONLY_KEYS: [&str; 3] = ["threads", "pin_threads", "[admin] bind"];

impl Config {
    /// The keys whose value in `self` (a config being reloaded) differs from `running` (the
    /// config the process started with) but that only a restart applies
    /// ([`RESTART_ONLY_KEYS`]), each as `key (old -> new)`, e.g. `threads (2 -> 4)`; empty
    /// when a reload applies all of `self`. `threads` unset reads `auto`, `[admin]` absent
    /// reads `off`.
    pub fn needs_restart(&self, running: &Config) -> Vec<String> {
        let mut changed = Vec::new();
        let threads = |config: &Config| {
            config
                .threads
                .map_or_else(|| "auto".into(), |n| n.to_string())
        };
        if self.threads != running.threads {
            changed.push(format!(
                "threads ({} -> {})",
                threads(running),
                threads(self)
            ));
        }
        if self.pin_threads != running.pin_threads {
            changed.push(format!(
                "pin_threads ({} -> {})",
                running.pin_threads, self.pin_threads
            ));
        }
        let bind = |config: &Config| {
            config
                .admin
                .as_ref()
                .map_or_else(|| "off".into(), |admin| admin.bind.to_string())
        };
        if bind(self) != bind(running) {
            changed.push(format!(
                "[admin] bind ({} -> {})",
                bind(running),
                bind(self)
            ));
        }
        changed
    }

    /// Reads and validates the file at `path`.
    ///
    /// # Errors
    /// [`ConfigError::Read`] when the file cannot be read; [`ConfigError::Invalid`] with every
    /// problem found, each as `PATH:LINE:COL: message`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: origin.clone(),
            source,
        })?;
        Config::parse(&text, &origin)
    }

    /// Validates config `text`; `origin` names it in problems (a path, or `<inline>`).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] with every problem found.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        check::check(text, origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(top: &str) -> Config {
        let text = format!(
            "{top}\n[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\n\
             [[service.backend]]\nname = \"b1\"\naddress = \"127.0.0.1:3001\"\n"
        );
        Config::parse(&text, "<test>").unwrap_or_else(|error| panic!("{error}"))
    }

    #[test]
    fn needs_restart_names_only_the_changed_restart_only_keys() {
        let running = config("threads = 2\n[admin]\nbind = \"127.0.0.1:9901\"");
        let same_but_reloadable = config(
            "threads = 2\nlog_level = \"warn\"\n[admin]\nbind = \"127.0.0.1:9901\"\nhead_timeout = \"1s\"",
        );
        assert_eq!(
            same_but_reloadable.needs_restart(&running),
            Vec::<String>::new()
        );
        let changed = config("pin_threads = true");
        assert_eq!(
            changed.needs_restart(&running),
            [
                "threads (2 -> auto)",
                "pin_threads (false -> true)",
                "[admin] bind (127.0.0.1:9901 -> off)"
            ]
        );
    }
}
