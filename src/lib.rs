//! stickyd: a reverse-proxy load balancer whose core job is HTTP session affinity.
//!
//! # Layout
//! - [`access`]: the access log's line, written when the response body is done.
//! - [`cli`]: the command line (`run`, `check`, `demo`, `man`, `completions`).
//! - [`config`]: the TOML file, read and validated into [`config::Config`].
//! - [`daemon`]: the daemon under systemd: notify, SIGHUP reload, SIGTERM stop.
//! - [`server`]: accept loops over bound listeners, graceful shutdown.
//! - [`runtime`]: the running services behind swappable slots; reload, backends added and
//!   removed at run time and by DNS.
//! - [`router`]: one service's request path: affinity, balance, redispatch, forward, record.
//! - [`affinity`]: the strategies (insert, prefix, stick table), synchronous and pure.
//! - [`balance`]: how a new session picks a backend (round-robin, least-connections, random,
//!   least-sessions), on weights ramped by slow start.
//! - [`pool`]: backends and their live state (in-flight count, passive ejection).
//! - [`store`]: where stick-table bindings live (in memory or shared through Redis) and the live-session tracker.
//! - [`proxy`]: forwarding one request: head rewriting, pooled backend connections, streaming
//!   bodies, WebSocket tunnels.
//! - [`proxy_protocol`]: the PROXY protocol header (v1, v2) on listeners behind an L4 balancer.
//! - [`metrics`]: Prometheus metrics, pre-built handles per service and backend.
//! - [`error`]: what can go wrong on a request and which status it becomes.
//! - [`admin`]: the admin listener: the status page, metrics, status, backend states and
//!   backends added or removed, stick table, resolve.
//! - [`demo`]: `stickyd demo`, demo backends behind a proxy.
//! - [`telemetry`]: logging setup.
//! - [`clock`]: the monotonic millisecond clock of ejection and TTL deadlines.
//! - [`dns`]: DNS lookups for backends: host names and SRV records, with their TTL.
//! - [`discovery`]: what DNS says a service's backends are now.
//! - [`tls`]: TLS termination: certificates, SNI, ALPN.
//! - [`workers`]: the event loops: one runtime, or one per worker thread with connections
//!   handed to the least loaded.

pub mod access;
pub mod admin;
pub mod affinity;
pub mod balance;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod discovery;
pub mod dns;
pub mod error;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod proxy_protocol;
pub mod router;
pub mod runtime;
pub mod seal;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod workers;
