//! Hash affinity end to end: the client address (direct, behind trusted proxies, or from a
//! PROXY protocol header), a header, a query parameter or a cookie on a consistent hash.

mod common;

use std::collections::{HashMap, HashSet};

use common::raw::{Answer, RawConn, Reply};
use common::{Browser, Proxy, TestBackend, proxy_over, spawn_backends, within_timeout};

fn hash(key: &str, more: &str) -> String {
    format!("[service.affinity]\nstrategy = \"hash\"\nkey = \"{key}\"\n{more}")
}

/// Sends one raw request (optionally after a PROXY header) and reads every response until
/// stickyd closes the connection, which must not be a reset.
async fn raw(proxy: &Proxy, bytes: &[u8]) -> Answer {
    let mut conn = RawConn::open(proxy.addr).await;
    conn.send(bytes).await.unwrap();
    let answer = conn.answer_until_closed().await;
    assert!(!answer.reset, "reset: {}", answer.summary());
    answer
}

/// The backend that answered a raw request (its `x-backend` header).
fn backend_of(answer: &Answer) -> String {
    match answer.first().map(Reply::backend) {
        Some(backend) if !backend.is_empty() => backend.to_string(),
        _ => panic!("no backend answered: {}", answer.summary()),
    }
}

/// The backend that answers a GET carrying `name: value`.
async fn backend_for_header(proxy: &Proxy, name: &str, value: &str) -> String {
    let request =
        format!("GET / HTTP/1.1\r\nHost: app\r\n{name}: {value}\r\nConnection: close\r\n\r\n");
    backend_of(&raw(proxy, request.as_bytes()).await)
}

/// A GET with `Connection: close`, from the client a PROXY v1 header names.
fn proxied_get(client_ip: &str, path: &str) -> Vec<u8> {
    format!("PROXY TCP4 {client_ip} 127.0.0.1 40000 80\r\nGET {path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n").into_bytes()
}

/// Every key in `keys` goes to one backend on every request, and the keys spread over more
/// than one backend. `get` makes one request for a key and names the backend that answered.
async fn assert_keys_stick_and_spread<F, Fut>(keys: &[String], mut get: F)
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let mut placement: HashMap<&str, String> = HashMap::new();
    for round in 0..3 {
        for key in keys {
            let backend = get(key.clone()).await;
            match placement.get(key.as_str()) {
                Some(first) => assert_eq!(&backend, first, "key {key} moved in round {round}"),
                None => {
                    placement.insert(key, backend);
                }
            }
        }
    }
    let used: HashSet<&String> = placement.values().collect();
    assert!(used.len() > 1, "{} keys all went to {used:?}", keys.len());
}

fn keys(prefix: &str) -> Vec<String> {
    (0..12).map(|n| format!("{prefix}{n}")).collect()
}

#[tokio::test]
async fn a_header_key_keeps_each_value_on_one_backend_and_spreads_values() {
    within_timeout(async {
        let backends = spawn_backends(3).await;
        let proxy = proxy_over(&backends, &hash("header:X-User", "")).await;
        assert_keys_stick_and_spread(&keys("user-"), |user| {
            let proxy = &proxy;
            async move { backend_for_header(proxy, "X-User", &user).await }
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn a_query_key_keeps_a_socketio_style_token_on_one_backend() {
    within_timeout(async {
        let backends = spawn_backends(3).await;
        let proxy = proxy_over(&backends, &hash("query:token", "")).await;
        assert_keys_stick_and_spread(&keys("tok"), |token| {
            let url = proxy.url(&format!(
                "/socket.io/?EIO=4&transport=polling&token={token}"
            ));
            async move { Browser::new().get(&url).await.backend().to_string() }
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn a_cookie_key_keeps_each_value_on_one_backend() {
    within_timeout(async {
        let backends = spawn_backends(3).await;
        let proxy = proxy_over(&backends, &hash("cookie:uid", "")).await;
        assert_keys_stick_and_spread(&keys("u"), |uid| {
            let url = proxy.url("/");
            async move {
                let mut browser = Browser::new();
                browser.jar.insert("uid".into(), uid);
                browser.get(&url).await.backend().to_string()
            }
        })
        .await;
        // The strategy never sets a cookie of its own.
        let mut browser = Browser::new();
        browser.jar.insert("uid".into(), "u1".into());
        assert!(browser.get(&proxy.url("/")).await.set_cookies().is_empty());
    })
    .await;
}

#[tokio::test]
async fn source_ip_from_a_proxy_protocol_header_sticks_and_spreads_clients() {
    within_timeout(async {
        let backends = spawn_backends(3).await;
        let proxy = proxy_over(
            &backends,
            &format!("proxy_protocol = true\n{}", hash("source-ip", "")),
        )
        .await;
        let clients: Vec<String> = (1..=12).map(|n| format!("198.51.100.{n}")).collect();
        assert_keys_stick_and_spread(&clients, |ip| {
            let proxy = &proxy;
            async move { backend_of(&raw(proxy, &proxied_get(&ip, "/")).await) }
        })
        .await;
        let forwarded = backends
            .iter()
            .flat_map(|backend| backend.seen())
            .next()
            .unwrap();
        assert_eq!(
            forwarded.headers["x-forwarded-for"], "198.51.100.1",
            "the backend sees the PROXY source, not the L4 balancer"
        );
    })
    .await;
}

#[tokio::test]
async fn proxy_protocol_v2_names_the_client() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let proxy = proxy_over(std::slice::from_ref(&backend), "proxy_protocol = true\n").await;
        // PROXY v2, PROXY command, TCP over IPv4: 203.0.113.9:4711 -> 127.0.0.1:80.
        let mut bytes = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        bytes.extend_from_slice(&[
            0x21, 0x11, 0x00, 0x0c, 203, 0, 113, 9, 127, 0, 0, 1, 0x12, 0x67, 0x00, 0x50,
        ]);
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n");
        assert_eq!(
            raw(&proxy, &bytes).await.status_line().as_deref(),
            Some("HTTP/1.1 200")
        );
        assert_eq!(backend.seen()[0].headers["x-forwarded-for"], "203.0.113.9");
    })
    .await;
}

#[tokio::test]
async fn a_missing_or_malformed_proxy_header_closes_the_connection_and_reaches_no_backend() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let proxy = proxy_over(std::slice::from_ref(&backend), "proxy_protocol = true\n").await;
        for bytes in [
            &b"GET / HTTP/1.1\r\nHost: app\r\n\r\n"[..],
            b"PROXY TCP4 not-an-ip 127.0.0.1 1 2\r\nGET / HTTP/1.1\r\n\r\n",
        ] {
            let answer = raw(&proxy, bytes).await;
            assert!(
                answer.replies.is_empty() && answer.trailing.is_empty(),
                "stickyd answered {:?}: {}",
                String::from_utf8_lossy(bytes),
                answer.summary()
            );
        }
        assert_eq!(backend.count(), 0);
    })
    .await;
}

#[tokio::test]
async fn a_proxy_header_on_an_ordinary_listener_is_a_bad_request() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let proxy = proxy_over(std::slice::from_ref(&backend), "").await;
        let answer = raw(&proxy, &proxied_get("198.51.100.1", "/")).await;
        assert_eq!(
            answer.status_line().as_deref(),
            Some("HTTP/1.1 400"),
            "{}",
            answer.summary()
        );
        assert_eq!(backend.count(), 0);
    })
    .await;
}

#[tokio::test]
async fn x_forwarded_for_picks_the_backend_only_through_trusted_proxies() {
    within_timeout(async {
        let backends = spawn_backends(3).await;
        let clients: Vec<String> = (1..=12).map(|n| format!("203.0.113.{n}")).collect();
        // Behind a trusted proxy (the test's own 127.0.0.1), the header's client decides.
        let trusted = proxy_over(
            &backends,
            &format!(
                "trusted_proxies = [\"127.0.0.0/8\"]\n{}",
                hash("header:X-Forwarded-For", "")
            ),
        )
        .await;
        assert_keys_stick_and_spread(&clients, |xff| {
            let trusted = &trusted;
            async move { backend_for_header(trusted, "X-Forwarded-For", &xff).await }
        })
        .await;
        // From an untrusted peer the header is ignored: every claimed client lands where 127.0.0.1 does.
        let untrusted = proxy_over(
            &backends,
            &format!(
                "trusted_proxies = [\"10.0.0.0/8\"]\n{}",
                hash("header:X-Forwarded-For", "")
            ),
        )
        .await;
        let mut landed = HashSet::new();
        for xff in &clients {
            landed.insert(backend_for_header(&untrusted, "X-Forwarded-For", xff).await);
        }
        assert_eq!(
            landed.len(),
            1,
            "a spoofed X-Forwarded-For moved the client: {landed:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_missing_key_falls_back_to_the_source_address_or_to_balancing() {
    within_timeout(async {
        let backends = spawn_backends(3).await;
        let by_source = proxy_over(
            &backends,
            &hash("header:X-User", "fallback = \"source-ip\"\n"),
        )
        .await;
        let landed: HashSet<String> = futures_util::future::join_all((0..6).map(|_| async {
            Browser::new()
                .get(&by_source.url("/"))
                .await
                .backend()
                .to_string()
        }))
        .await
        .into_iter()
        .collect();
        assert_eq!(
            landed.len(),
            1,
            "one source address, one backend: {landed:?}"
        );
        let balanced = proxy_over(
            &backends,
            &hash("header:X-User", "fallback = \"balance\"\n"),
        )
        .await;
        let mut spread = HashSet::new();
        for _ in 0..3 {
            spread.insert(
                Browser::new()
                    .get(&balanced.url("/"))
                    .await
                    .backend()
                    .to_string(),
            );
        }
        assert_eq!(spread.len(), 3, "round-robin fallback went to {spread:?}");
    })
    .await;
}

#[tokio::test]
async fn a_dead_hashed_backend_sends_its_keys_to_their_next_choice() {
    within_timeout(async {
        let backends = spawn_backends(3).await;
        let proxy = proxy_over(&backends, &hash("query:token", "")).await;
        let url = proxy.url("/?token=abc");
        let own = Browser::new().get(&url).await.backend().to_string();
        backends
            .iter()
            .find(|backend| backend.name == own)
            .unwrap()
            .stop();
        let next = Browser::new().get(&url).await;
        assert_eq!(next.status, 200);
        assert_ne!(next.backend(), own);
        assert_eq!(
            Browser::new().get(&url).await.backend(),
            next.backend(),
            "the next choice is stable"
        );
    })
    .await;
}

#[tokio::test]
async fn a_key_longer_than_max_key_bytes_falls_back_like_a_missing_one() {
    within_timeout(async {
        let backends = spawn_backends(3).await;
        let proxy = proxy_over(
            &backends,
            &hash("header:X-User", "fallback = \"balance\"\n"),
        )
        .await;
        // The default max_key_bytes is 256: a key of 256 bytes is hashed and sticks, one of
        // 257 is no key, so the fallback balances it round-robin over the three backends.
        let (longest, oversized) = ("a".repeat(256), "b".repeat(257));
        let mut hashed = HashSet::new();
        let mut balanced = HashSet::new();
        for _ in 0..3 {
            hashed.insert(backend_for_header(&proxy, "x-user", &longest).await);
            balanced.insert(backend_for_header(&proxy, "x-user", &oversized).await);
        }
        assert_eq!(hashed.len(), 1, "a key of max_key_bytes moved: {hashed:?}");
        assert_eq!(
            balanced.len(),
            3,
            "an oversized key was hashed, not balanced: {balanced:?}"
        );
    })
    .await;
}
