//! Limits a client cannot get around: head timeout (slowloris), head size and header count,
//! declared body size, and connections per listener.

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::raw::RawConn;
use common::{Browser, TestBackend, proxy_over, within_timeout};

/// Sends `bytes` on a new connection to `address` and returns the status line of the response.
async fn send(address: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut conn = RawConn::open(address).await;
    conn.send(bytes).await.unwrap();
    conn.response().await.status_line()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_client_is_cut_off_at_the_head_timeout_while_others_are_served() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let proxy = proxy_over(
            std::slice::from_ref(&backend),
            "[service.limits]\nhead_timeout = \"300ms\"\n",
        )
        .await;
        let mut slow = TcpStream::connect(proxy.addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let cut = tokio::spawn(async move {
            // Keep dribbling a byte every 50 ms; the head never completes.
            let mut buffer = [0u8; 64];
            loop {
                tokio::select! {
                    read = slow.read(&mut buffer) => return read,
                    () = tokio::time::sleep(Duration::from_millis(50)) => {
                        if slow.write_all(b"x").await.is_err() {
                            return Ok(0);
                        }
                    }
                }
            }
        });
        for _ in 0..5 {
            assert_eq!(
                Browser::new().get(&proxy.url("/")).await.status,
                200,
                "another client was not served"
            );
        }
        let read = cut.await.unwrap();
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "the slow connection got {read:?} instead of being closed"
        );
        let lasted = started.elapsed();
        assert!(
            lasted >= Duration::from_millis(250) && lasted < Duration::from_secs(5),
            "cut after {lasted:?}"
        );
        assert_eq!(
            backend
                .seen()
                .iter()
                .filter(|seen| seen.headers.contains_key("x-slow"))
                .count(),
            0
        );
    })
    .await;
}

#[tokio::test]
async fn an_oversized_head_or_too_many_headers_get_431_and_reach_no_backend() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let proxy = proxy_over(
            std::slice::from_ref(&backend),
            "[service.limits]\nmax_header_bytes = \"8KiB\"\nmax_headers = 20\n",
        )
        .await;
        let big = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nCookie: {}\r\n\r\n",
            "c".repeat(10 * 1024)
        );
        assert_eq!(
            send(proxy.addr, big.as_bytes()).await,
            "HTTP/1.1 431",
            "oversized head"
        );
        let many: String = (0..30).map(|n| format!("X-H{n}: {n}\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        assert_eq!(
            send(proxy.addr, many.as_bytes()).await,
            "HTTP/1.1 431",
            "too many headers"
        );
        assert_eq!(backend.count(), 0);
    })
    .await;
}

#[tokio::test]
async fn a_declared_body_over_max_body_gets_413_before_anything_is_forwarded() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let proxy = proxy_over(
            std::slice::from_ref(&backend),
            "[service.limits]\nmax_body = \"1KiB\"\n",
        )
        .await;
        let large = format!(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2048\r\n\r\n{}",
            "x".repeat(2048)
        );
        assert_eq!(send(proxy.addr, large.as_bytes()).await, "HTTP/1.1 413");
        let small = format!(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 512\r\nConnection: close\r\n\r\n{}",
            "x".repeat(512)
        );
        assert_eq!(send(proxy.addr, small.as_bytes()).await, "HTTP/1.1 200");
        assert_eq!(
            backend.count(),
            1,
            "only the small body reached the backend"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_wait_until_one_closes() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let proxy = proxy_over(
            std::slice::from_ref(&backend),
            "[service.limits]\nmax_connections = 2\n",
        )
        .await;
        let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut conn = RawConn::open(proxy.addr).await;
            conn.send(request).await.unwrap();
            assert_eq!(conn.response().await.status_line(), "HTTP/1.1 200");
            held.push(conn);
        }
        let mut waiting = RawConn::open(proxy.addr).await;
        waiting.send(request).await.unwrap();
        // While both slots are held, the third connection is not served (a bounded wait: the
        // absence of an answer can only be observed over time).
        let early = tokio::time::timeout(Duration::from_millis(300), waiting.response()).await;
        assert!(
            early.is_err(),
            "a third connection was served past max_connections"
        );
        drop(held.pop());
        assert_eq!(
            waiting.response().await.status_line(),
            "HTTP/1.1 200",
            "the waiting connection was not served after a slot freed"
        );
    })
    .await;
}
