//! Pooled backend connections: idle ones close on time without any further request, and one
//! the backend has closed never costs a request that could still be served.

mod common;

use std::time::{Duration, Instant};

use common::{Browser, RawBackend, Step, TestBackend, config, start_proxy, within_timeout};
use stickyd::upstream::idle::{IDLE_TIMEOUT, REAP_SLACK};

/// How late past [`IDLE_TIMEOUT`] and [`REAP_SLACK`] an idle connection may close.
const MARGIN: Duration = Duration::from_millis(500);

#[tokio::test]
async fn idle_backend_connections_close_on_time_without_any_further_request() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let proxy = start_proxy(&config(&[&backend], "")).await;
        let url = proxy.url("/");
        // A burst of concurrent keep-alive requests leaves several connections pooled.
        let burst: Vec<_> = (0..16)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { Browser::new().get(&url).await.status })
            })
            .collect();
        for request in burst {
            assert_eq!(request.await.unwrap(), 200);
        }
        let last_response = Instant::now();
        let pooled = backend.open_connections();
        assert!(pooled > 0, "no connection was kept alive");

        let limit = IDLE_TIMEOUT + REAP_SLACK + MARGIN;
        tokio::time::timeout(limit, backend.wait_open_connections(|&open| open == 0))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} of {pooled} idle connections still open {limit:?} after the last response",
                    backend.open_connections()
                )
            });
        let closed_after = last_response.elapsed();
        println!("{pooled} idle connections closed {closed_after:?} after the last response");
        assert!(
            closed_after >= IDLE_TIMEOUT - Duration::from_millis(100),
            "idle connections closed after {closed_after:?}, before {IDLE_TIMEOUT:?}"
        );
    })
    .await;
}

/// One request as a raw backend read it: `METHOD /path` and the body.
type Received = (String, String);

/// Answers one request, then closes the connection.
const ANSWER_ONE_THEN_CLOSE: &[Step] = &[Step::Read, Step::Answer];
/// Answers the first request; reads the second and closes without answering.
const CLOSE_ON_THE_SECOND: &[Step] = &[Step::Read, Step::Answer, Step::Read];

/// Every request `backend` read, as [`Received`].
fn received_by(backend: &RawBackend) -> Vec<Received> {
    backend
        .requests()
        .iter()
        .map(|request| (request.line(), request.body_text()))
        .collect()
}

/// A service `web` over `backends` (TOML tables) with `extra` keys.
fn service(extra: &str, backends: &[String]) -> String {
    format!(
        "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\n{extra}\n{}",
        backends.concat()
    )
}

/// A keep-alive HTTP client.
type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

fn client() -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// Sends `method` `url` with `body` (and `cookie`) on `client`; returns the status and the
/// `x-backend` of the answer, once its body has arrived.
async fn request(
    client: &Client,
    method: &str,
    url: &str,
    body: &'static str,
    cookie: Option<&str>,
) -> (u16, String) {
    use http_body_util::BodyExt;
    let mut builder = http::Request::builder().method(method).uri(url);
    if let Some(cookie) = cookie {
        builder = builder.header("cookie", cookie);
    }
    let response = client
        .request(builder.body(http_body_util::Full::from(body)).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let backend = response
        .headers()
        .get("x-backend")
        .map_or("", |value| value.to_str().unwrap())
        .to_string();
    response.into_body().collect().await.unwrap();
    (status, backend)
}

// On several workers, as in production: a connection's task and a request run at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_backend_closed_is_never_used_for_the_next_request() {
    within_timeout(async {
        let backend = RawBackend::spawn(ANSWER_ONE_THEN_CLOSE).await;
        let proxy = start_proxy(&service("", &[backend.toml()])).await;
        let client = client();
        for round in 0..50 {
            let answer = request(&client, "GET", &proxy.url("/"), "", None).await;
            assert_eq!(
                answer,
                (200, "raw".to_string()),
                "request {round}, sent after the backend closed the pooled connection"
            );
            // The backend has shut its end down and dropped it: the FIN is sent.
            backend.wait_closed(round + 1).await;
        }
        assert_eq!(backend.requests().len(), 50, "a request was sent twice");
    })
    .await;
}

/// Sends a GET that a [`CLOSE_ON_THE_SECOND`] backend answers, then `method` with `body`
/// on the same pooled connection, which the backend reads and closes without an answer.
/// Returns the status of the second request and what the backend received.
async fn second_request_on_a_connection_closed_unanswered(
    method: &str,
    body: &'static str,
) -> (u16, Vec<Received>) {
    let backend = RawBackend::spawn(CLOSE_ON_THE_SECOND).await;
    let proxy = start_proxy(&service("", &[backend.toml()])).await;
    let client = client();
    let first = request(&client, "GET", &proxy.url("/first"), "", None).await;
    assert_eq!(first, (200, "raw".to_string()));
    let (status, _) = request(&client, method, &proxy.url("/second"), body, None).await;
    (status, received_by(&backend))
}

fn received(requests: &[(&str, &str)]) -> Vec<Received> {
    requests
        .iter()
        .map(|(target, body)| (target.to_string(), body.to_string()))
        .collect()
}

#[tokio::test]
async fn an_idempotent_request_the_backend_closed_unanswered_is_sent_again() {
    within_timeout(async {
        for method in ["GET", "HEAD", "DELETE", "PUT"] {
            let (status, seen) = second_request_on_a_connection_closed_unanswered(method, "").await;
            assert_eq!(status, 200, "{method} without a body was not retried");
            let second = format!("{method} /second");
            assert_eq!(
                seen,
                received(&[("GET /first", ""), (&second, ""), (&second, "")]),
                "{method}: once on the closed connection, once on a new one"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn a_request_with_a_body_or_not_idempotent_is_not_sent_twice() {
    within_timeout(async {
        for (method, body) in [("POST", "order=1"), ("PUT", "name=x"), ("POST", "")] {
            let (status, seen) =
                second_request_on_a_connection_closed_unanswered(method, body).await;
            assert_eq!(status, 502, "{method} with body {body:?}");
            let second = format!("{method} /second");
            assert_eq!(
                seen,
                received(&[("GET /first", ""), (&second, body)]),
                "{method} with body {body:?} reached the backend other than once"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn a_retry_whose_connect_is_refused_goes_to_another_backend() {
    within_timeout(async {
        // The backend accepts one connection only: the retry's new connection is refused.
        let raw = RawBackend::accepting_once(CLOSE_ON_THE_SECOND).await;
        let other = TestBackend::spawn("b2").await;
        let other_toml = format!(
            "[[service.backend]]\nname = \"b2\"\naddress = \"{}\"\n",
            other.addr
        );
        let insert = "[service.affinity]\nstrategy = \"insert\"\n";
        let proxy = start_proxy(&service(insert, &[raw.toml(), other_toml])).await;
        let client = client();
        let pinned = Some("SERVERID=raw");
        let first = request(&client, "GET", &proxy.url("/first"), "", pinned).await;
        assert_eq!(first, (200, "raw".to_string()));
        let second = request(&client, "GET", &proxy.url("/second"), "", pinned).await;
        assert_eq!(
            second,
            (200, "b2".to_string()),
            "the request was not redispatched"
        );
        assert_eq!(
            received_by(&raw),
            received(&[("GET /first", ""), ("GET /second", "")])
        );
        assert_eq!(other.seen()[0].uri, "/second");
    })
    .await;
}
