//! Prefix affinity end to end: the app's own cookie carries the backend id in front.

mod common;

use common::{
    Browser, TestBackend, assert_sticks_and_spreads, config, proxy_over, spawn_backends,
    start_proxy, within_timeout,
};

const PREFIX: &str = "[service.affinity]\nstrategy = \"prefix\"\ncookie = \"JSESSIONID\"\n";

#[tokio::test]
async fn one_session_sticks_for_20_requests_while_new_sessions_spread() {
    within_timeout(async {
        let backends = spawn_backends(3).await;
        let proxy = proxy_over(&backends, PREFIX).await;
        let (browser, bound) = assert_sticks_and_spreads(&proxy, "/session/JSESSIONID").await;
        assert_eq!(browser.jar["JSESSIONID"], format!("{bound}~{bound}-1"));
    })
    .await;
}

#[tokio::test]
async fn the_backend_sees_its_own_value_byte_for_byte_and_attributes_are_untouched() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let proxy = start_proxy(&config(&[&backend], PREFIX)).await;
        let mut browser = Browser::new();
        let set =
            common::encode("JSESSIONID=A1b2.C3~d4==; Path=/app; Secure; HttpOnly; SameSite=Strict");
        let page = browser
            .get(&proxy.url(&format!("/?set-cookie={set}")))
            .await;
        assert_eq!(
            page.set_cookies(),
            ["JSESSIONID=b1~A1b2.C3~d4==; Path=/app; Secure; HttpOnly; SameSite=Strict"]
        );
        browser.get(&proxy.url("/")).await;
        assert_eq!(
            backend.seen()[1].headers["cookie"],
            "JSESSIONID=A1b2.C3~d4=="
        );
    })
    .await;
}

#[tokio::test]
async fn an_unknown_prefix_is_unbound_and_reaches_the_backend_untouched() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let proxy = start_proxy(&config(&[&backend], PREFIX)).await;
        let mut browser = Browser::new();
        browser.jar.insert("JSESSIONID".into(), "zz~abc".into());
        let page = browser.get(&proxy.url("/")).await;
        assert_eq!(page.status, 200);
        assert_eq!(backend.seen()[0].headers["cookie"], "JSESSIONID=zz~abc");
    })
    .await;
}
