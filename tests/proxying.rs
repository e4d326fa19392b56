//! What stickyd does to requests and responses on the way through: streaming, hop-by-hop
//! headers, X-Forwarded-*, WebSocket tunnels, and requests it must refuse.

mod common;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use common::raw::RawConn;
use common::{
    Browser, TestBackend, config, proxy_over, spawn_backends, start_proxy, within_timeout,
};

const INSERT: &str = "[service.affinity]\nstrategy = \"insert\"\n";

#[tokio::test]
async fn a_streamed_response_reaches_the_client_before_the_backend_finishes() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let proxy = start_proxy(&config(&[&backend], "")).await;
        let body = common::open_stream(&proxy).await;
        backend.release_stream().await;
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(rest, "last\n");
    })
    .await;
}

#[tokio::test]
async fn a_request_body_is_forwarded_intact() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let proxy = start_proxy(&config(&[&backend], "")).await;
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let payload = Bytes::from(vec![b'x'; 300_000]);
        let request = Request::post(proxy.url("/upload"))
            .body(Full::new(payload.clone()))
            .unwrap();
        assert_eq!(client.request(request).await.unwrap().status(), 200);
        assert_eq!(backend.seen()[0].body, payload);
    })
    .await;
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_and_forwarding_headers_set_with_host_preserved() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let proxy = start_proxy(&config(&[&backend], "")).await;
        let mut conn = RawConn::open(proxy.addr).await;
        conn.send(
            b"GET /page HTTP/1.1\r\nHost: shop.example\r\nConnection: keep-alive, X-Secret\r\n\
              X-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\n\
              X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\nX-App: kept\r\n\r\n",
        )
        .await
        .unwrap();
        let reply = conn.response().await;
        assert_eq!(reply.status_line(), "HTTP/1.1 200", "{reply:?}");
        let seen = &backend.seen()[0].headers;
        for gone in ["x-secret", "keep-alive", "te", "proxy-connection"] {
            assert!(!seen.contains_key(gone), "{gone} reached the backend");
        }
        assert_eq!(seen["host"], "shop.example");
        assert_eq!(seen["x-app"], "kept");
        // The client is no trusted proxy: what it wrote in the forwarding fields is replaced.
        assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
        assert_eq!(seen["x-forwarded-proto"], "http");
        assert_eq!(seen["x-forwarded-host"], "shop.example");
        assert_eq!(seen["forwarded"], "for=127.0.0.1;proto=http");
    })
    .await;
}

#[tokio::test]
async fn a_trusted_proxy_gets_its_forwarding_fields_appended_to() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let proxy = start_proxy(&config(&[&backend], "trusted_proxies = [\"127.0.0.1\"]")).await;
        let mut conn = RawConn::open(proxy.addr).await;
        conn.send(
            b"GET /page HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-For: 203.0.113.9\r\n\
              X-Forwarded-Proto: https\r\nForwarded: for=203.0.113.9;proto=https\r\n\r\n",
        )
        .await
        .unwrap();
        let reply = conn.response().await;
        assert_eq!(reply.status_line(), "HTTP/1.1 200", "{reply:?}");
        let seen = &backend.seen()[0].headers;
        assert_eq!(seen["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
        assert_eq!(seen["x-forwarded-proto"], "https");
        assert_eq!(
            seen["forwarded"],
            "for=203.0.113.9;proto=https, for=127.0.0.1;proto=http"
        );
    })
    .await;
}

#[tokio::test]
async fn malformed_requests_get_400_and_never_reach_a_backend() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let proxy = start_proxy(&config(&[&backend], "")).await;
        let cases: [&[u8]; 2] = [
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ];
        for case in cases {
            let mut conn = RawConn::open(proxy.addr).await;
            conn.send(case).await.unwrap();
            let reply = conn.response().await;
            assert_eq!(
                reply.status_line(),
                "HTTP/1.1 400",
                "{:?} got {reply:?}",
                String::from_utf8_lossy(case)
            );
        }
        assert_eq!(
            backend.count(),
            0,
            "a malformed request reached the backend"
        );
    })
    .await;
}

#[tokio::test]
async fn a_websocket_is_tunnelled_to_the_bound_backend_and_a_new_one_gets_the_cookie() {
    within_timeout(async {
        let backends = spawn_backends(3).await;
        let proxy = proxy_over(&backends, INSERT).await;
        // A new WebSocket session gets its cookie on the 101 response.
        let (_, response) = tokio_tungstenite::connect_async(format!("ws://{}/ws", proxy.addr))
            .await
            .unwrap();
        assert!(
            response.headers()["set-cookie"]
                .to_str()
                .unwrap()
                .starts_with("SERVERID=")
        );
        // A page load binds the session; the socket it opens afterwards lands on the same backend.
        let mut browser = Browser::new();
        let bound = browser.get(&proxy.url("/")).await.backend().to_string();
        for _ in 0..3 {
            let mut request = format!("ws://{}/ws", proxy.addr)
                .into_client_request()
                .unwrap();
            request
                .headers_mut()
                .insert("cookie", format!("SERVERID={bound}").parse().unwrap());
            let (mut socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
            assert!(response.headers().get("set-cookie").is_none());
            for n in 0..3 {
                socket
                    .send(Message::text(format!("hello {n}")))
                    .await
                    .unwrap();
                let echo = socket.next().await.unwrap().unwrap();
                assert_eq!(
                    echo.into_text().unwrap().as_str(),
                    format!("{bound}: hello {n}")
                );
            }
        }
    })
    .await;
}

#[tokio::test]
async fn an_open_websocket_counts_as_load_for_least_connections() {
    within_timeout(async {
        let backends = spawn_backends(2).await;
        let proxy = proxy_over(&backends, "balance = \"least-connections\"\n").await;
        let (_socket, response) =
            tokio_tungstenite::connect_async(format!("ws://{}/ws", proxy.addr))
                .await
                .unwrap();
        assert_eq!(response.status(), 101);
        let busy = backends
            .iter()
            .find(|backend| backend.count() == 1)
            .unwrap()
            .name
            .clone();
        for _ in 0..4 {
            assert_ne!(
                Browser::new().get(&proxy.url("/")).await.backend(),
                busy,
                "a backend holding a WebSocket counted as idle"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn sequential_requests_reuse_one_pooled_backend_connection() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let proxy = start_proxy(&config(&[&backend], "")).await;
        let mut browser = Browser::new();
        for _ in 0..20 {
            assert_eq!(browser.get(&proxy.url("/")).await.status, 200);
        }
        assert_eq!(backend.count(), 20);
        assert_eq!(
            backend.connections(),
            1,
            "each response of known length must hand its connection back to the pool"
        );
    })
    .await;
}
