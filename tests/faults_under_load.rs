//! Faults under load: 50 concurrent keep-alive clients send 5 000 requests through insert
//! affinity over three backends, and one backend dies halfway through. Every request gets a
//! response; requests not yet sent to the dead backend are redispatched (no 5xx while a
//! healthy backend remains); requests in flight on it are sent again when they went on a reused
//! connection (GETs without a body: HAProxy's `retry-on empty-response`), which the dead
//! backend refuses, so they too are redispatched, and get 502 otherwise, never a hang; its
//! sessions continue on other backends under a new cookie.
//!
//! Run with `cargo test --test faults_under_load -- --nocapture` to see the counts.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Empty};
use tokio::sync::watch;
use tokio::task::JoinSet;

use common::{TestBackend, config, start_proxy, within_timeout};

const REQUESTS: usize = 5_000;
const CLIENTS: usize = 50;
/// How long a backend takes to answer, so that requests are genuinely in flight at the stop.
const BACKEND_DELAY: Duration = Duration::from_millis(10);
/// A request without a response within this time hangs.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const COOKIE: &str = "SERVERID";
const INSERT: &str = "[service.affinity]\nstrategy = \"insert\"\n";

/// Where the stop stood when a client sent a request.
const RUNNING: u8 = 0;
/// The backend is being stopped (held, then stopped): it may or may not still answer.
const STOPPING: u8 = 1;
/// `stop_and_wait` returned: the backend's listener and every connection of it are closed.
const STOPPED: u8 = 2;

/// What one client task saw of one request.
#[derive(Debug)]
struct Exchange {
    /// Index of the request in its client's sequence.
    seq: usize,
    /// [`RUNNING`], [`STOPPING`] or [`STOPPED`] when the request was sent.
    phase: u8,
    /// The same when its response (or error) was complete.
    done_phase: u8,
    /// The `SERVERID` the request carried.
    sent_cookie: Option<String>,
    result: Outcome,
}

#[derive(Debug)]
enum Outcome {
    Response {
        status: u16,
        backend: String,
        /// The `SERVERID` value of a `Set-Cookie` in the response.
        set_cookie: Option<String>,
    },
    Error(String),
    Hang,
}

/// One client: its own keep-alive connection pool and its own cookie jar.
struct Client {
    http: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Empty<Bytes>,
    >,
    jar: HashMap<String, String>,
}

impl Client {
    fn new() -> Client {
        Client {
            http: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http(),
            jar: HashMap::new(),
        }
    }

    /// GETs `url` with the jar's cookies, stores the response's, and never panics: a transport
    /// error or a timeout is an outcome.
    async fn get(&mut self, url: &str) -> Outcome {
        let mut request = Request::get(url);
        if let Some(cookies) = common::cookie_header(&self.jar) {
            request = request.header(header::COOKIE, cookies);
        }
        let request = request.body(Empty::new()).unwrap();
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| format!("{e:?}"))?;
            let (head, body) = response.into_parts();
            body.collect().await.map_err(|e| format!("body: {e:?}"))?;
            Ok::<_, String>(head)
        };
        let head = match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Err(_) => return Outcome::Hang,
            Ok(Err(error)) => return Outcome::Error(error),
            Ok(Ok(head)) => head,
        };
        common::store_cookies(&mut self.jar, &head.headers);
        let sets_ours = head
            .headers
            .get_all(header::SET_COOKIE)
            .iter()
            .any(|field| field.to_str().unwrap().starts_with(&format!("{COOKIE}=")));
        let set_cookie = sets_ours.then(|| self.jar.get(COOKIE).cloned()).flatten();
        Outcome::Response {
            status: head.status.as_u16(),
            backend: head
                .headers
                .get("x-backend")
                .map_or("", |value| value.to_str().unwrap())
                .to_string(),
            set_cookie,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backend_stopped_under_load_costs_only_its_in_flight_requests() {
    within_timeout(async {
        let mut backends = Vec::new();
        for name in ["b1", "b2", "b3"] {
            backends.push(TestBackend::builder(name).delay(BACKEND_DELAY).spawn().await);
        }
        let proxy = start_proxy(&config(&backends.iter().collect::<Vec<_>>(), INSERT)).await;
        let url = proxy.url("/");
        let dead = &backends[1];

        let tickets = Arc::new(AtomicUsize::new(0));
        let phase = Arc::new(AtomicU8::new(RUNNING));
        let (progress, mut progress_seen) = watch::channel(0usize);
        let progress = Arc::new(progress);
        let mut clients = JoinSet::new();
        for _ in 0..CLIENTS {
            let (tickets, phase, progress, url) = (
                Arc::clone(&tickets),
                Arc::clone(&phase),
                Arc::clone(&progress),
                url.clone(),
            );
            clients.spawn(async move {
                let mut client = Client::new();
                let mut exchanges = Vec::new();
                while tickets.fetch_add(1, Ordering::SeqCst) < REQUESTS {
                    let sent_cookie = client.jar.get(COOKIE).cloned();
                    let sent_in = phase.load(Ordering::SeqCst);
                    let result = client.get(&url).await;
                    exchanges.push(Exchange {
                        seq: exchanges.len(),
                        phase: sent_in,
                        done_phase: phase.load(Ordering::SeqCst),
                        sent_cookie,
                        result,
                    });
                    progress.send_modify(|done| *done += 1);
                }
                exchanges
            });
        }

        // Halfway through, with requests in flight on it, kill one backend.
        progress_seen
            .wait_for(|&done| done >= REQUESTS / 2)
            .await
            .unwrap();
        let done_at_stop = *progress_seen.borrow();
        phase.store(STOPPING, Ordering::SeqCst);
        dead.hold().await;
        dead.stop_and_wait().await;
        phase.store(STOPPED, Ordering::SeqCst);

        let mut sessions = Vec::new();
        while let Some(exchanges) = clients.join_next().await {
            sessions.push(exchanges.expect("a client task panicked"));
        }

        // Counts.
        let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
        let mut by_backend: BTreeMap<(&str, String), usize> = BTreeMap::new();
        let (mut responses, mut errors, mut hangs) = (0, 0, 0);
        let mut error_samples = Vec::new();
        let mut bad_gateway_after_stop = Vec::new();
        let mut bad_gateway_before_stop = Vec::new();
        let mut other_5xx = Vec::new();
        let mut answered_by_dead_after_stop = Vec::new();
        let mut bad_gateway_not_bound_to_dead = Vec::new();
        let mut bad_gateway = 0;
        for exchanges in &sessions {
            for exchange in exchanges {
                let when = match exchange.phase {
                    RUNNING => "before stop",
                    STOPPING => "during stop",
                    _ => "after stop",
                };
                match &exchange.result {
                    Outcome::Response {
                        status, backend, ..
                    } => {
                        responses += 1;
                        *by_status.entry(*status).or_default() += 1;
                        let backend = if backend.is_empty() {
                            format!("stickyd {status}")
                        } else {
                            backend.clone()
                        };
                        *by_backend.entry((when, backend.clone())).or_default() += 1;
                        if *status == 502 {
                            bad_gateway += 1;
                            if exchange.phase == STOPPED {
                                bad_gateway_after_stop.push(exchange);
                            }
                            if exchange.done_phase == RUNNING {
                                bad_gateway_before_stop.push(exchange);
                            }
                            if exchange
                                .sent_cookie
                                .as_ref()
                                .is_some_and(|cookie| *cookie != dead.name)
                            {
                                bad_gateway_not_bound_to_dead.push(exchange);
                            }
                        } else if *status >= 500 {
                            other_5xx.push(exchange);
                        }
                        if exchange.phase == STOPPED && backend == dead.name {
                            answered_by_dead_after_stop.push(exchange);
                        }
                    }
                    Outcome::Error(error) => {
                        errors += 1;
                        if error_samples.len() < 5 {
                            error_samples.push(error.clone());
                        }
                    }
                    Outcome::Hang => hangs += 1,
                }
            }
        }

        // Stickiness, request by request: a cookie naming a live backend is answered there
        // without a new cookie; a cookie naming the dead backend is answered by it (before the
        // stop) or redispatched to a live one with a new cookie naming that one.
        let mut stickiness_failures = Vec::new();
        for exchange in sessions.iter().flatten() {
            let (Some(sent), Outcome::Response {
                status: 200,
                backend,
                set_cookie,
            }) = (&exchange.sent_cookie, &exchange.result)
            else {
                continue;
            };
            let fine = if *sent != dead.name {
                backend == sent && set_cookie.is_none()
            } else if backend == sent {
                set_cookie.is_none()
            } else {
                set_cookie.as_ref() == Some(backend)
            };
            if !fine {
                stickiness_failures.push(format!("{exchange:?}"));
            }
        }
        // Sessions bound to the dead backend while it lived: every request they sent after the
        // stop was answered by a live backend, and they end with a cookie naming it.
        let mut moved = BTreeMap::<String, usize>::new();
        let mut bound_to_dead = 0;
        let mut bound_with_later_requests = 0;
        let mut continuation_failures = Vec::new();
        for exchanges in &sessions {
            let was_bound = exchanges.iter().any(|exchange| {
                exchange.phase == RUNNING && exchange.sent_cookie.as_ref() == Some(&dead.name)
            });
            if !was_bound {
                continue;
            }
            bound_to_dead += 1;
            let after: Vec<&Exchange> = exchanges
                .iter()
                .filter(|exchange| exchange.phase == STOPPED)
                .collect();
            if after.is_empty() {
                continue;
            }
            bound_with_later_requests += 1;
            for exchange in &after {
                match &exchange.result {
                    Outcome::Response {
                        status: 200,
                        backend,
                        ..
                    } if *backend != dead.name => {}
                    other => continuation_failures
                        .push(format!("request {} after the stop got {other:?}", exchange.seq)),
                }
            }
            let mover = exchanges.iter().find_map(|exchange| match &exchange.result {
                Outcome::Response {
                    status: 200,
                    backend,
                    set_cookie: Some(cookie),
                } if exchange.sent_cookie.as_ref() == Some(&dead.name) && cookie == backend => {
                    Some(backend.clone())
                }
                _ => None,
            });
            match mover {
                Some(backend) => *moved.entry(backend).or_default() += 1,
                None => continuation_failures.push(format!(
                    "a session of {} never got a new {COOKIE}: {:?}",
                    dead.name,
                    after.first()
                )),
            }
        }

        // Sent before the backend was dead and complete only after its stop began.
        let outstanding_at_stop = sessions
            .iter()
            .flatten()
            .filter(|exchange| exchange.phase != STOPPED && exchange.done_phase != RUNNING)
            .count();
        println!("requests: {REQUESTS} from {CLIENTS} clients; {done_at_stop} done when {} stopped", dead.name);
        println!("responses: {responses}; errors instead of a response: {errors}; hangs: {hangs}");
        println!("by status: {by_status:?}");
        for ((when, backend), count) in &by_backend {
            println!("  sent {when:<11} answered by {backend:<12} {count}");
        }
        println!(
            "backend side: answered {:?}; killed in the handler by the stop: {}",
            backends
                .iter()
                .map(|backend| (backend.name.as_str(), backend.answered()))
                .collect::<Vec<_>>(),
            dead.killed()
        );
        println!(
            "502: {bad_gateway}; requests sent before the backend was dead and completed after its stop began: {outstanding_at_stop}"
        );
        println!(
            "sessions bound to {} at the stop: {bound_to_dead}, {bound_with_later_requests} with later requests, moved to {moved:?}",
            dead.name
        );

        assert_eq!(errors, 0, "requests got an error instead of a response: {error_samples:?}");
        assert_eq!(hangs, 0, "requests hung for {REQUEST_TIMEOUT:?}");
        assert_eq!(responses, REQUESTS, "every request gets a response");
        assert!(other_5xx.is_empty(), "5xx other than 502: {other_5xx:#?}");
        assert!(
            bad_gateway_after_stop.is_empty(),
            "{} requests sent after the backend was dead got 502 although two backends were healthy: {:#?}",
            bad_gateway_after_stop.len(),
            &bad_gateway_after_stop[..bad_gateway_after_stop.len().min(5)]
        );
        assert!(
            bad_gateway_before_stop.is_empty(),
            "502 before the backend was stopped: {bad_gateway_before_stop:#?}"
        );
        assert!(
            bad_gateway_not_bound_to_dead.is_empty(),
            "502 for sessions bound to a live backend: {bad_gateway_not_bound_to_dead:#?}"
        );
        assert!(
            bad_gateway <= CLIENTS,
            "{bad_gateway} 502s, more than the {CLIENTS} requests that can be in flight"
        );
        assert!(
            answered_by_dead_after_stop.is_empty(),
            "the stopped backend answered after the stop: {answered_by_dead_after_stop:#?}"
        );
        assert!(
            dead.killed() > 0,
            "no request was in flight on {} when it stopped",
            dead.name
        );
        assert!(bound_to_dead > 0, "no session was bound to {}", dead.name);
        assert!(
            bound_with_later_requests > 0,
            "no session bound to {} sent a request after the stop",
            dead.name
        );
        assert!(
            continuation_failures.is_empty(),
            "sessions of the stopped backend did not continue elsewhere: {continuation_failures:#?}"
        );
        assert!(
            stickiness_failures.is_empty(),
            "sessions on live backends moved: {stickiness_failures:#?}"
        );
        proxy.shutdown().await;
    })
    .await;
}
