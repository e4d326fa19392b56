//! The raw shape of the TOML file, as serde reads it.
//!
//! Every struct denies unknown keys, and every value that needs checking beyond its TOML type
//! is wrapped in [`Spanned`], so that [`super::Config::load`] can point at the exact line and
//! column of a problem. Defaults live here as `DEFAULT_*` constants; the validated, typed
//! config is in [`super`].

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use toml::Spanned;

use crate::telemetry::AccessFormat;

/// Log level when neither `log_level` nor `RUST_LOG` says otherwise.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Time in-flight requests get to finish after SIGTERM/SIGINT. Default: 30 s.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Time allowed to open a TCP connection to a backend. Default: 3 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time allowed from sending a request to a backend until its response head arrives; past it
/// the client gets 504. Default: 60 s.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a backend that refused a connection is skipped. Default: 5 s.
pub const DEFAULT_EJECTION_TIME: Duration = Duration::from_secs(5);
/// Name of the cookie the insert strategy sets (HAProxy's customary `SERVERID`).
pub const DEFAULT_INSERT_COOKIE: &str = "SERVERID";
/// Path attribute of the inserted cookie.
pub const DEFAULT_COOKIE_PATH: &str = "/";
/// Separator between the backend id and the app's value in the prefix strategy.
pub const DEFAULT_PREFIX_DELIMITER: char = '~';
/// Lifetime of a stick-table entry when the app's cookie carries no Max-Age/Expires. Default: 30 min.
pub const DEFAULT_STICK_TTL: Duration = Duration::from_secs(30 * 60);
/// Bound on the number of stick-table entries; the least recently used is evicted past it.
pub const DEFAULT_STICK_MAX_ENTRIES: u64 = 1_000_000;
/// Interval between active health checks of one backend. Default: 2 s.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// Time one active health check may take. Default: 1 s.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// Consecutive passed checks that bring a down backend up (HAProxy `rise`).
pub const DEFAULT_RISE: u32 = 2;
/// Consecutive failed checks that take an up backend down (HAProxy `fall`).
pub const DEFAULT_FALL: u32 = 3;
/// Status range an active check must answer with.
pub const DEFAULT_EXPECT: (u16, u16) = (200, 399);
/// Consecutive failed requests (connection failures, and 5xx with `passive_5xx`) that eject a
/// backend for `ejection_time`.
pub const DEFAULT_PASSIVE_FAILURES: u32 = 1;
/// Window in which a cookie binding counts as a live session on its backend. Default: 30 min.
pub const DEFAULT_SESSION_IDLE: Duration = Duration::from_secs(30 * 60);

/// Longest a backend being removed (admin `DELETE`) drains before it is dropped, whether or
/// not sessions are still live on it. Default: 1 h.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// Weight of a backend that names none.
pub const DEFAULT_WEIGHT: u32 = 1;
/// Longest backend id, in bytes: ids travel in every cookie, sealed or not.
pub const MAX_ID_BYTES: usize = 64;
/// Largest weight a backend may have.
pub const MAX_WEIGHT: u32 = 1000;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub log_level: Option<Spanned<String>>,
    pub access_log: Option<AccessFormat>,
    pub threads: Option<Spanned<usize>>,
    pub pin_threads: Option<bool>,
    pub shutdown_grace: Option<Spanned<DurationValue>>,
    pub admin: Option<Spanned<RawAdmin>>,
    pub resolver: Option<Spanned<RawResolver>>,
    #[serde(default, rename = "service")]
    pub services: Vec<Spanned<RawService>>,
}

/// Why `text` is not a listen address, and what to write. A listener binds an IP address: a
/// host name would bind whatever it resolves to at that moment, so it is explained rather than
/// resolved.
fn listen_hint(text: &str) -> String {
    let host_and_port = text.rsplit_once(':').filter(|(host, port)| {
        !host.is_empty() && !host.contains([':', '[']) && port.parse::<u16>().is_ok()
    });
    match host_and_port {
        Some((host, port)) if host.eq_ignore_ascii_case("localhost") => format!(
            r#"invalid listen address {text:?}: listen takes an IP address, not a host name: write "127.0.0.1:{port}" (and "[::1]:{port}" for IPv6) for localhost only, or "0.0.0.0:{port}" for every interface"#
        ),
        Some((_, port)) => format!(
            r#"invalid listen address {text:?}: listen takes an IP address, not a host name: write the IP of the interface, e.g. "10.0.0.5:{port}", or "0.0.0.0:{port}" for every interface"#
        ),
        None => format!(
            r#"invalid listen address {text:?}: write "IP:port", e.g. "0.0.0.0:8080" or "[::]:8080""#
        ),
    }
}

/// The `[admin]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub bind: Option<Spanned<std::net::SocketAddr>>,
    pub token_file: Option<Spanned<String>>,
    pub head_timeout: Option<Spanned<DurationValue>>,
    pub max_connections: Option<Spanned<usize>>,
}

/// The `[resolver]` table: how backend host names and SRV records are looked up at run time.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResolver {
    pub nameservers: Option<Vec<Spanned<String>>>,
    pub min_refresh: Option<Spanned<DurationValue>>,
    pub max_refresh: Option<Spanned<DurationValue>>,
}

/// Shortest time between two lookups of one name, whatever its TTL says. Default: 1 s.
pub const DEFAULT_MIN_REFRESH: Duration = Duration::from_secs(1);
/// Longest time between two lookups of one name, whatever its TTL says. Default: 5 min.
pub const DEFAULT_MAX_REFRESH: Duration = Duration::from_secs(5 * 60);

/// A service's `discovery` table: its backends from DNS SRV records.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDiscovery {
    pub dns_srv: Spanned<String>,
    pub resolvers: Option<Vec<Spanned<String>>>,
}

/// Most admin connections served at once; more wait in the accept queue. Default: 64.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 64;

/// Where the admin listener listens when `[admin]` names no `bind`: loopback only.
pub const DEFAULT_ADMIN_BIND: &str = "127.0.0.1:9901";

/// One `[[service]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: Spanned<String>,
    pub listen: Spanned<Vec<Spanned<RawListener>>>,
    #[serde(default)]
    pub balance: Balance,
    pub trusted_proxies: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub underscores_in_headers: bool,
    pub connect_timeout: Option<Spanned<DurationValue>>,
    pub response_timeout: Option<Spanned<DurationValue>>,
    pub ejection_time: Option<Spanned<DurationValue>>,
    pub slow_start: Option<Spanned<DurationValue>>,
    #[serde(default)]
    pub proxy_protocol: bool,
    #[serde(default)]
    pub tls: Vec<Spanned<RawTls>>,
    pub failback: Option<bool>,
    #[serde(default)]
    pub debug_header: bool,
    pub session_idle: Option<Spanned<DurationValue>>,
    pub drain_timeout: Option<Spanned<DurationValue>>,
    pub rebalance_after: Option<Spanned<DurationValue>>,
    pub discovery: Option<Spanned<RawDiscovery>>,
    pub health: Option<Spanned<RawHealth>>,
    pub limits: Option<Spanned<RawLimits>>,
    pub affinity: Option<Spanned<RawAffinity>>,
    #[serde(rename = "backend")]
    pub backends: Option<Spanned<Vec<Spanned<RawBackend>>>>,
}

/// One entry of `listen`: an address (`"0.0.0.0:8080"`), or a table with the address and
/// the listener's own settings (`{ address = "0.0.0.0:8080", h2c = true }`).
#[derive(Debug)]
pub struct RawListener {
    pub address: std::net::SocketAddr,
    pub h2c: bool,
    /// `None`: TLS when the service has certificates.
    pub tls: Option<bool>,
    pub redirect_https: bool,
}

/// The table form of a `listen` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListenerTable {
    address: std::net::SocketAddr,
    #[serde(default)]
    h2c: bool,
    tls: Option<bool>,
    #[serde(default)]
    redirect_https: bool,
}

impl<'de> Deserialize<'de> for RawListener {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListenerVisitor;
        impl<'de> Visitor<'de> for ListenerVisitor {
            type Value = RawListener;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    r#"an address such as "0.0.0.0:8080", or a table such as { address = "0.0.0.0:8080", h2c = true }"#,
                )
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<RawListener, E> {
                let address = text.parse().map_err(|_| E::custom(listen_hint(text)))?;
                Ok(RawListener {
                    address,
                    h2c: false,
                    tls: None,
                    redirect_https: false,
                })
            }
            fn visit_map<M: de::MapAccess<'de>>(self, map: M) -> Result<RawListener, M::Error> {
                let table =
                    RawListenerTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawListener {
                    address: table.address,
                    h2c: table.h2c,
                    tls: table.tls,
                    redirect_https: table.redirect_https,
                })
            }
        }
        deserializer.deserialize_any(ListenerVisitor)
    }
}

/// How a new session picks its backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Weighted round-robin, smooth (no bursts to the heaviest backend).
    #[default]
    RoundRobin,
    /// Fewest in-flight requests per unit of weight.
    LeastConnections,
    /// Power of two choices: two weighted random picks, the less loaded wins.
    Random,
    /// Fewest live sessions per unit of weight (the count drain reports), so a backend added
    /// to a full farm takes new sessions until it holds its share.
    LeastSessions,
}

impl Balance {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round-robin",
            Balance::LeastConnections => "least-connections",
            Balance::Random => "random",
            Balance::LeastSessions => "least-sessions",
        }
    }
}

/// Which affinity strategy a service uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    Insert,
    Prefix,
    StickTable,
    Hash,
    None,
}

impl Fallback {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::SourceIp => "source-ip",
            Fallback::Balance => "balance",
        }
    }
}

/// Where a stick table lives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In this process only.
    #[default]
    Memory,
    /// Shared through Redis, with a local table in front.
    Redis,
}

/// Prefix of every Redis key stickyd writes.
pub const DEFAULT_KEY_PREFIX: &str = "stickyd:";
/// Time one Redis call may take before the local table answers instead. Default: 50 ms.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);

/// What the hash strategy does with a request that lacks its key (the npm package
/// `socketio-sticky-session`'s
/// `ignoreMissingHeader`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fallback {
    /// Hash the client address instead.
    #[default]
    SourceIp,
    /// Balance the request as a new session.
    Balance,
}

/// `SameSite` attribute of the inserted cookie (RFC 6265bis §4.1.2.7).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SameSite {
    /// `SameSite=Lax`: sent on top-level navigations from other sites (the default).
    #[default]
    Lax,
    /// `SameSite=Strict`: sent only on same-site requests.
    Strict,
    /// `SameSite=None`: sent on every request; browsers require `Secure` with it.
    None,
}

/// The `[service.affinity]` table: one strategy and the keys of every strategy; keys that do
/// not belong to the chosen strategy are rejected by validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAffinity {
    pub strategy: Spanned<Strategy>,
    pub cookie: Option<Spanned<String>>,
    // insert
    pub path: Option<Spanned<String>>,
    pub domain: Option<Spanned<String>>,
    pub max_age: Option<Spanned<DurationValue>>,
    pub http_only: Option<Spanned<bool>>,
    pub secure: Option<Spanned<bool>>,
    pub same_site: Option<Spanned<SameSite>>,
    pub indirect: Option<Spanned<bool>>,
    pub nocache: Option<Spanned<bool>>,
    // prefix
    pub delimiter: Option<Spanned<String>>,
    // insert and prefix: sealed ids
    pub seal: Option<Spanned<crate::seal::SealMode>>,
    pub key_file: Option<Spanned<String>>,
    pub max_idle: Option<Spanned<DurationValue>>,
    pub max_life: Option<Spanned<DurationValue>>,
    // stick-table
    pub ttl: Option<Spanned<DurationValue>>,
    pub max_entries: Option<Spanned<u64>>,
    pub reservation_ttl: Option<Spanned<DurationValue>>,
    pub store: Option<Spanned<StoreKind>>,
    pub redis_url: Option<Spanned<String>>,
    pub key_prefix: Option<Spanned<String>>,
    pub redis_timeout: Option<Spanned<DurationValue>>,
    // hash
    pub key: Option<Spanned<String>>,
    pub trusted_proxies: Option<Spanned<Vec<Spanned<String>>>>,
    pub fallback: Option<Spanned<Fallback>>,
    pub balance_factor: Option<Spanned<f64>>,
}

/// One `[[service.backend]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub name: Spanned<String>,
    pub address: Spanned<String>,
    pub weight: Option<Spanned<u32>>,
    pub id: Option<Spanned<String>>,
    #[serde(default)]
    pub state: AdminState,
    #[serde(default)]
    pub backup: bool,
}

/// An operator's say over a backend (HAProxy's `set server state`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// Takes new sessions and its bound ones.
    #[default]
    Ready,
    /// Keeps its bound sessions, takes no new one: drain it before removing it.
    Drain,
    /// Takes no traffic; its bound sessions are redispatched.
    Maint,
}

impl AdminState {
    /// The name used in the config file and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }
}

/// The `[service.health]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub path: Option<Spanned<String>>,
    pub interval: Option<Spanned<DurationValue>>,
    pub timeout: Option<Spanned<DurationValue>>,
    pub rise: Option<Spanned<u32>>,
    pub fall: Option<Spanned<u32>>,
    pub expect: Option<Spanned<String>>,
    pub passive_failures: Option<Spanned<u32>>,
    #[serde(default)]
    pub passive_5xx: bool,
}

/// One `[[service.tls]]` table: a certificate chain and its key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

/// The `[service.limits]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub head_timeout: Option<Spanned<DurationValue>>,
    pub keepalive_timeout: Option<Spanned<DurationValue>>,
    pub handshake_timeout: Option<Spanned<DurationValue>>,
    pub body_timeout: Option<Spanned<DurationValue>>,
    pub tunnel_timeout: Option<Spanned<DurationValue>>,
    pub max_header_bytes: Option<Spanned<SizeValue>>,
    pub max_headers: Option<Spanned<usize>>,
    pub max_connections: Option<Spanned<usize>>,
    pub max_body: Option<Spanned<SizeValue>>,
    pub max_key_bytes: Option<Spanned<usize>>,
    pub http2_max_concurrent_streams: Option<Spanned<u32>>,
    pub http2_max_pending_resets: Option<Spanned<usize>>,
    pub http2_max_local_resets: Option<Spanned<usize>>,
}

/// Time a client has, from the connection's start (after TLS) or from the first byte of a
/// later request, for a whole request head (slowloris guard; HAProxy `timeout
/// http-request`, nginx `client_header_timeout`). Default: 10 s.
pub const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a kept-alive connection may sit idle between two requests (HTTP/1.1), or with no
/// open stream (HTTP/2), before it is closed (HAProxy `timeout http-keep-alive`, nginx
/// `keepalive_timeout`). Default: 60 s.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Time for the PROXY protocol header and the TLS handshake (HAProxy `timeout client-hs`,
/// nginx `ssl_handshake_timeout`). Default: 10 s.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait between two reads of a request body; past it the client gets 408 (nginx
/// `client_body_timeout`). Default: 60 s.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Time an upgraded tunnel (WebSocket) may carry no byte in either direction before it is
/// closed (HAProxy `timeout tunnel`). Default: 1 h.
pub const DEFAULT_TUNNEL_TIMEOUT: Duration = Duration::from_secs(3600);
/// Longest session id (stick table) or hash key, in bytes; a longer one is treated as no
/// session. Default: 256.
pub const DEFAULT_MAX_KEY_BYTES: usize = 256;
/// Most concurrent streams on one HTTP/2 connection (HAProxy
/// `tune.h2.max-concurrent-streams`, nginx `http2_max_concurrent_streams` 128). Default: 100.
pub const DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// Streams an HTTP/2 client may reset before stickyd accepted them, at once; more ends the
/// connection with GOAWAY (the Rapid Reset defence, CVE-2023-44487; the h2 crate's default).
/// Default: 20.
pub const DEFAULT_HTTP2_MAX_PENDING_RESETS: usize = 20;
/// Streams stickyd may reset because the client broke the protocol on them, per connection;
/// more ends the connection with GOAWAY (the h2 crate's default). Default: 1024.
pub const DEFAULT_HTTP2_MAX_LOCAL_RESETS: usize = 1024;
/// Lifetime of a stick-table entry reserved from a session id that only a request carried,
/// until a backend's `Set-Cookie` confirms it. Default: 10 s.
pub const DEFAULT_RESERVATION_TTL: Duration = Duration::from_secs(10);
/// Largest request head, bytes; larger gets 431. Default: 64 KiB (hyper's floor is 8 KiB).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Smallest `max_header_bytes` hyper accepts.
pub const MIN_HEADER_BYTES: usize = 8 * 1024;
/// Most header fields in a request; more gets 431. Default: 100.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Most client connections served at once per listener; more wait in the accept queue.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// A size written as a string with a unit: `"512"`, `"8KiB"`, `"64KiB"`, `"10MiB"`, `"1GiB"`.
#[derive(Debug, Clone, Copy)]
pub struct SizeValue(pub usize);

impl<'de> Deserialize<'de> for SizeValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = SizeValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a size such as "8KiB", "64KiB" or "10MiB""#)
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<SizeValue, E> {
                parse_size(text).map(SizeValue).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(SizeVisitor)
    }
}

/// Parses `"<integer>[KiB|MiB|GiB]"` (bytes without a unit).
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let hint = r#"write a whole number and a unit: "512", "8KiB", "64KiB", "10MiB" or "1GiB""#;
    let Ok(number) = number.parse::<usize>() else {
        return Err(format!("invalid size {text:?}: {hint}"));
    };
    let multiplier: usize = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(format!("invalid size unit in {text:?}: {hint}")),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// A duration written as a string with a unit: `"500ms"`, `"30s"`, `"15m"`, `"1h"`, `"1d"`.
/// Parsed while deserializing, so a bad value is reported at its own line and column.
#[derive(Debug, Clone, Copy)]
pub struct DurationValue(pub Duration);

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = DurationValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a duration string such as "500ms", "30s", "15m", "1h" or "1d""#)
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<DurationValue, E> {
                parse_duration(text).map(DurationValue).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(DurationVisitor)
    }
}

/// Parses `"<integer><unit>"` with unit `ms`, `s`, `m`, `h` or `d`.
///
/// # Errors
/// A message naming the accepted forms when the number or the unit is missing or unknown.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let hint = r#"write a whole number and a unit: "500ms", "30s", "15m", "1h" or "1d""#;
    let Ok(number) = number.parse::<u64>() else {
        return Err(format!("invalid duration {text:?}: {hint}"));
    };
    let seconds_per_unit = match unit {
        "ms" => return Ok(Duration::from_millis(number)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("invalid duration unit in {text:?}: {hint}")),
    };
    number
        .checked_mul(seconds_per_unit)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("duration {text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_every_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
    }

    #[test]
    fn durations_without_a_known_unit_are_rejected_with_a_hint() {
        for bad in ["30", "s", "", "1.5s", "10 s", "5w", "-1s"] {
            let error = parse_duration(bad).unwrap_err();
            assert!(error.contains("\"30s\""), "{bad}: {error}");
        }
    }
}
