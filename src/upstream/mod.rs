//! The upstream side: sending one request to one backend over an idle connection of its
//! ([`idle`], with the socket under it in [`socket`]), and the response body streamed back
//! ([`body`]).

pub mod body;
pub mod idle;
pub mod socket;

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::error::ProxyError;
use crate::pool::Pool;
use crate::proxy::body::{self as request_body, RequestBody};
use crate::proxy::head;
use body::ProxyBody;
use idle::{IdleConnections, Release};

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
    connections: Arc<IdleConnections>,
    response_timeout: Duration,
}

impl Upstream {
    /// A pool for the `backends` backends of service `service`, with its timeouts.
    ///
    /// # Panics
    /// Outside a tokio runtime: the pool starts its reaper task.
    pub fn new(
        service: &str,
        backends: usize,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Upstream {
        Upstream {
            connections: IdleConnections::new(service, backends, connect_timeout),
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
            // The response timeout runs from the end of the request body: a client still
            // uploading is not the backend's delay, and a stalled upload is the body timeout's.
            let body_sent = request.body().progress();
            let sent = tokio::select! {
                sent = connection.send_request(request) => Ok(sent),
                () = request_body::response_deadline(body_sent, self.response_timeout) => Err(()),
            };
            let mut failed = match sent {
                Ok(Ok(response)) => {
                    if let Err(reason) = head::check_response(response.headers()) {
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
                        tracing::debug!(service = %self.connections.service(), backend = %backend_name, %error, "sending again");
                        request = copy;
                        retrying = true;
                        continue;
                    }
                    let source = failed.into_error();
                    let error = if let Some(after) = request_body::timed_out(&source) {
                        // The client stopped sending its body: its fault, never the backend's.
                        ProxyError::RequestTimeout { after }
                    } else if source.is_user() {
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
    if !request.method().is_idempotent() || !request.body().is_empty() {
        return None;
    }
    let mut copy = Request::new(RequestBody::empty());
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
        // counting as in flight (see [`TunnelLoad`]) so least-connections sees WebSocket load.
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

/// The in-flight count of an upgraded connection, carried from the 101 to its tunnel, so that
/// least-connections sees WebSocket load while the tunnel is open.
#[derive(Debug, Clone)]
pub struct TunnelLoad {
    _in_flight: Arc<crate::pool::InFlight>,
}

impl TunnelLoad {
    /// Takes the load a 101 response carries, to be held for the tunnel's life.
    pub fn take<B>(response: &mut Response<B>) -> Option<TunnelLoad> {
        response.extensions_mut().remove::<TunnelLoad>()
    }
}
