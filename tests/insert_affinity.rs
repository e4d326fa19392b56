//! Insert affinity end to end: stickyd's own cookie names the backend.

mod common;

use common::{
    Browser, TestBackend, assert_sticks_and_spreads, config, proxy_over, spawn_backends,
    start_proxy, within_timeout,
};

const INSERT: &str = "[service.affinity]\nstrategy = \"insert\"\ncookie = \"SERVERID\"\n";

#[tokio::test]
async fn one_session_sticks_for_20_requests_while_new_sessions_spread() {
    within_timeout(async {
        let backends = spawn_backends(3).await;
        let proxy = proxy_over(&backends, INSERT).await;
        let (browser, bound) = assert_sticks_and_spreads(&proxy, "/").await;
        assert_eq!(browser.jar["SERVERID"], bound);
    })
    .await;
}

#[tokio::test]
async fn the_cookie_is_set_once_with_its_attributes_and_hidden_from_the_backend() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let proxy = start_proxy(&config(&[&backend], INSERT)).await;
        let mut browser = Browser::new();
        let first = browser.get(&proxy.url("/")).await;
        assert_eq!(
            first.set_cookies(),
            ["SERVERID=b1; Path=/; HttpOnly; SameSite=Lax"]
        );
        assert_eq!(first.headers["cache-control"], "private");
        let second = browser.get(&proxy.url("/")).await;
        assert!(
            second.set_cookies().is_empty(),
            "a hit re-sent the cookie: {:?}",
            second.set_cookies()
        );
        assert!(!second.headers.contains_key("cache-control"));
        let seen = backend.seen();
        assert!(
            seen[1].headers.get("cookie").is_none(),
            "the backend saw {:?}",
            seen[1].headers.get("cookie")
        );
    })
    .await;
}

#[tokio::test]
async fn without_indirect_the_backend_sees_the_cookie_next_to_its_own() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let extra = format!("{INSERT}indirect = false\n");
        let proxy = start_proxy(&config(&[&backend], &extra)).await;
        let mut browser = Browser::new();
        browser.jar.insert("app".into(), "1".into());
        browser.get(&proxy.url("/")).await;
        browser.get(&proxy.url("/")).await;
        let cookie = backend.seen()[1].headers["cookie"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            cookie.contains("SERVERID=b1") && cookie.contains("app=1"),
            "{cookie}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_forged_cookie_is_a_new_session_and_gets_a_real_one() {
    within_timeout(async {
        let backends = spawn_backends(2).await;
        let proxy = proxy_over(&backends, INSERT).await;
        let mut browser = Browser::new();
        browser.jar.insert("SERVERID".into(), "127.0.0.1:1".into());
        let page = browser.get(&proxy.url("/")).await;
        assert_eq!(page.status, 200);
        assert_eq!(browser.jar["SERVERID"], page.backend());
        let cookie = backends
            .iter()
            .flat_map(|b| b.seen())
            .find_map(|seen| seen.headers.get("cookie").cloned());
        assert!(
            cookie.is_none(),
            "the forged cookie reached a backend: {cookie:?}"
        );
    })
    .await;
}
