//! The access log: one line per answered request (target `stickyd::access`, level `info`),
//! written when the response body is done with (sent to its end, or dropped when the client
//! went away), so it gives the bytes each way and the whole duration. The format, `text` or
//! `json`, is the subscriber's ([`crate::telemetry::AccessFormat`]); the fields are the same:
//!
//! | field | what |
//! |---|---|
//! | `client` | the client's IP (after the PROXY protocol and trusted forwarding) |
//! | `method`, `host`, `path`, `version` | the request line and `Host` (`-` when absent) |
//! | `status` | the status sent |
//! | `bytes_in` | request body bytes read from the client |
//! | `bytes_out` | response body bytes handed to the client connection |
//! | `ms` | milliseconds from the request head to the response head |
//! | `total_ms` | milliseconds from the request head to the end of the response body |
//! | `service`, `backend` | where it went (`-`: stickyd answered itself) |
//! | `affinity` | the affinity outcome (`-`: refused before routing) |
//! | `tls` | whether the client spoke TLS |

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Uri, Version};

use crate::proxy::body::BodyProgress;
use crate::telemetry::ACCESS_TARGET;

/// Whether access lines are logged at all (the level filter lets `stickyd::access` through).
pub fn enabled() -> bool {
    tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO)
}

/// The request's side of an access line, taken before the request is forwarded.
#[derive(Debug)]
pub struct Request {
    /// When the request head was handed to the router.
    pub started: Instant,
    /// The client's IP.
    pub client: IpAddr,
    /// The method.
    pub method: Method,
    /// The target as received.
    pub uri: Uri,
    /// The `Host` field, or the target's authority (HTTP/2).
    pub host: Option<HeaderValue>,
    /// The HTTP version.
    pub version: Version,
    /// Whether the client spoke TLS.
    pub tls: bool,
    /// The request body's progress, which counts its bytes (`None`: no body).
    pub body: Option<Arc<BodyProgress>>,
}

/// One access line, complete but for the response body's bytes, which the body adds as it
/// goes; written when dropped.
#[derive(Debug)]
pub struct Line {
    /// The request's side.
    pub request: Request,
    /// Time to the response head.
    pub head: Duration,
    /// The status sent.
    pub status: u16,
    /// The service's name.
    pub service: String,
    /// The backend's name, `-` for stickyd's own answer.
    pub backend: String,
    /// The affinity outcome, `-` when the request was refused before routing.
    pub affinity: &'static str,
    /// Response body bytes so far.
    pub bytes_out: u64,
}

impl Drop for Line {
    fn drop(&mut self) {
        let request = &self.request;
        let host = request
            .host
            .as_ref()
            .and_then(|host| host.to_str().ok())
            .unwrap_or("-");
        tracing::info!(
            target: ACCESS_TARGET,
            client = %request.client,
            method = %request.method,
            host = %host,
            path = %request.uri.path(),
            version = ?request.version,
            status = self.status,
            bytes_in = request.body.as_ref().map_or(0, |body| body.bytes()),
            bytes_out = self.bytes_out,
            service = %self.service,
            backend = %self.backend,
            affinity = %self.affinity,
            tls = request.tls,
            ms = milliseconds(self.head),
            total_ms = milliseconds(request.started.elapsed()),
        );
    }
}

/// Milliseconds to three decimals, as a number.
fn milliseconds(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1_000_000.0).round() / 1000.0
}
