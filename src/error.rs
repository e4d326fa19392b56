//! What can go wrong while proxying one request, and the one mapping from error to status.

use std::time::Duration;

use http::StatusCode;

/// Why a request could not be proxied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Every backend is ejected (or the service has none usable): 503.
    #[error("no usable backend in service {service}")]
    NoUsableBackend {
        /// The service's name.
        service: String,
    },
    /// The TCP connection to the backend failed or timed out; nothing was sent, so the request
    /// can go to another backend. 502 when no other backend is left.
    #[error("cannot connect to backend {backend}: {source}")]
    ConnectFailed {
        /// The backend's id.
        backend: String,
        /// The connect error, or `TimedOut` past `connect_timeout`.
        source: std::io::Error,
    },
    /// The backend accepted the connection but the HTTP exchange failed (reset, closed early,
    /// malformed response): 502.
    #[error("backend {backend} failed: {source}")]
    Upstream {
        /// The backend's id.
        backend: String,
        /// hyper's account of the failure.
        source: hyper::Error,
    },
    /// The backend sent no response head within `response_timeout`: 504.
    #[error("backend {backend} sent no response within {after:?}")]
    ResponseTimeout {
        /// The backend's id.
        backend: String,
        /// The `response_timeout` that passed.
        after: Duration,
    },
    /// The request head is larger than the service's `max_header_bytes`: 431 (RFC 6585 §5).
    #[error("request head over {limit} bytes")]
    HeadTooLarge {
        /// `max_header_bytes`, in bytes.
        limit: usize,
    },
    /// The request declares a body larger than the service's `max_body`: 413.
    #[error("request body over {limit} bytes")]
    PayloadTooLarge {
        /// `max_body`, in bytes.
        limit: u64,
    },
    /// The backend's response has ambiguous framing and is not relayed: 502.
    #[error("backend {backend} sent a response with {reason}")]
    BadResponse {
        /// The backend's id.
        backend: String,
        /// What is ambiguous, e.g. `both Content-Length and Transfer-Encoding`.
        reason: &'static str,
    },
    /// The request asks for something stickyd does not do (CONNECT): 501.
    #[error("{what} is not supported")]
    NotImplemented {
        /// What was asked, e.g. `CONNECT`.
        what: &'static str,
    },
    /// The request is malformed and never reaches a backend: 400.
    #[error("bad request: {reason}")]
    BadRequest {
        /// What is malformed, for the log line.
        reason: &'static str,
    },
    /// The client stopped sending its request body for the body timeout: 408 (RFC 9110
    /// §15.5.9). The client's doing: never a 504, never counted against the backend.
    #[error("client sent no request body bytes for {after:?}")]
    RequestTimeout {
        /// The `body_timeout` that passed.
        after: Duration,
    },
}

impl ProxyError {
    /// Whether the request was never sent, so another backend may take it.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ProxyError::ConnectFailed { .. })
    }

    /// The status the client gets (RFC 9110 §15.6.3 502, §15.6.4 503, §15.6.5 504).
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoUsableBackend { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::NotImplemented { .. } => StatusCode::NOT_IMPLEMENTED,
            ProxyError::ConnectFailed { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::BadResponse { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::ResponseTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ProxyError::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::HeadTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        }
    }
}
