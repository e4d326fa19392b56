//! [`RequestBody`]: a client's request body on its way to a backend, bounded by the body
//! timeout, and what its end tells the connection and the response timeout. A plain struct,
//! not a box: a request without a body costs nothing extra.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

/// Told when a request body with content starts and ends, so that an HTTP/1.1 connection knows
/// when it is between requests.
pub trait BodyWatcher: Send + Sync {
    /// A request body with content was handed to the router.
    fn started(&self);
    /// It ended: `complete` when its last byte was read, false when it was dropped or failed
    /// before (the connection's framing then is hyper's to settle).
    fn ended(&self, complete: bool);
}

/// Whether a request body has ended, for whoever waits on it (the response timeout).
pub struct BodyProgress {
    ended: AtomicBool,
    /// Body bytes read from the client so far.
    bytes: AtomicU64,
    notify: Notify,
    watcher: Option<Arc<dyn BodyWatcher>>,
}

impl std::fmt::Debug for BodyProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyProgress")
            .field("ended", &self.ended.load(Ordering::Relaxed))
            .finish()
    }
}

impl BodyProgress {
    /// The body bytes read from the client so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn end(&self, complete: bool) {
        if !self.ended.swap(true, Ordering::AcqRel) {
            self.notify.notify_waiters();
            if let Some(watcher) = &self.watcher {
                watcher.ended(complete);
            }
        }
    }

    async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.ended.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

/// Why a request body could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    /// The client's body was malformed or its connection failed.
    #[error("client request body: {0}")]
    Client(hyper::Error),
    /// The client sent nothing for the body timeout (seconds) while the body was unfinished.
    #[error("client sent no request body bytes for {0:?}")]
    TimedOut(Duration),
}

/// A client's request body on its way to a backend. Past `body_timeout` without a byte while
/// the body is unfinished (a client that stalls a declared `Content-Length` or chunked body)
/// it fails with [`RequestBodyError::TimedOut`], which the client gets as 408 (nginx
/// `client_body_timeout`); the backend connection is closed and not blamed. A body with no
/// content costs nothing extra: no timer, no shared state.
#[derive(Debug)]
pub struct RequestBody {
    /// `None`: a body with no content, which a request sent again can carry too.
    inner: Option<Incoming>,
    idle: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// `None` when the body had no content to begin with.
    progress: Option<Arc<BodyProgress>>,
}

impl RequestBody {
    /// `inner` bounded by `idle` between two reads; `watcher` hears when a body with content
    /// starts and ends.
    pub fn new(
        inner: Incoming,
        idle: Duration,
        watcher: Option<Arc<dyn BodyWatcher>>,
    ) -> RequestBody {
        let progress = (!inner.is_end_stream()).then(|| {
            if let Some(watcher) = &watcher {
                watcher.started();
            }
            Arc::new(BodyProgress {
                ended: AtomicBool::new(false),
                bytes: AtomicU64::new(0),
                notify: Notify::new(),
                watcher,
            })
        });
        RequestBody {
            inner: Some(inner),
            idle,
            timer: None,
            progress,
        }
    }

    /// A body with no content: what a request's head copied for a retry carries.
    pub fn empty() -> RequestBody {
        RequestBody {
            inner: None,
            idle: Duration::ZERO,
            timer: None,
            progress: None,
        }
    }

    /// Whether the body has no content at all (it is at its end before any byte was read).
    pub fn is_empty(&self) -> bool {
        self.progress.is_none()
    }

    /// What to wait on for the end of this body (`None`: it has no content).
    pub fn progress(&self) -> Option<Arc<BodyProgress>> {
        self.progress.clone()
    }

    fn finish(&mut self, complete: bool) {
        if let Some(progress) = &self.progress {
            progress.end(complete);
        }
        self.timer = None;
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        self.finish(false);
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let this = self.get_mut();
        let Some(inner) = &mut this.inner else {
            return Poll::Ready(None);
        };
        match Pin::new(&mut *inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(progress)) = (frame.data_ref(), &this.progress) {
                    progress
                        .bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                if inner.is_end_stream() {
                    this.finish(true);
                } else if let Some(timer) = &mut this.timer {
                    timer.as_mut().reset(Instant::now() + this.idle);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                this.finish(false);
                Poll::Ready(Some(Err(RequestBodyError::Client(error))))
            }
            Poll::Ready(None) => {
                this.finish(true);
                Poll::Ready(None)
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if timer.as_mut().poll(cx).is_ready() {
                    this.finish(false);
                    return Poll::Ready(Some(Err(RequestBodyError::TimedOut(idle))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint)
    }
}

/// Completes `timeout` after the request body in `progress` has ended (at once when it had no
/// content): the response timeout measures the backend, not a client still uploading.
pub async fn response_deadline(progress: Option<Arc<BodyProgress>>, timeout: Duration) {
    if let Some(progress) = progress {
        progress.wait().await;
    }
    tokio::time::sleep(timeout).await;
}

/// The body timeout behind a failed upstream exchange, if that is what failed it.
pub fn timed_out(error: &hyper::Error) -> Option<Duration> {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(RequestBodyError::TimedOut(after)) = cause.downcast_ref::<RequestBodyError>() {
            return Some(*after);
        }
        source = cause.source();
    }
    None
}
