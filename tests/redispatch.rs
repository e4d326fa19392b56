//! Redispatch: a dead bound backend never costs the client its request while another backend
//! is usable; the binding moves with it. And the statuses when nothing is left.

mod common;

use common::{Browser, TestBackend, config, proxy_over, start_proxy, within_timeout};

async fn two_backends() -> [TestBackend; 2] {
    [
        TestBackend::spawn("b1").await,
        TestBackend::spawn("b2").await,
    ]
}

/// Binds a browser's session, stops its backend, and checks that the next request is served by
/// the other backend and the session then sticks there.
/// Returns the browser and the name of the backend that took the session over.
async fn dead_bound_backend_redispatches(affinity: &str, path: &str) -> (Browser, String) {
    let backends = two_backends().await;
    let proxy = proxy_over(&backends, affinity).await;
    let mut browser = Browser::new();
    let bound = browser.get(&proxy.url(path)).await.backend().to_string();
    let (dead, alive) = if bound == "b1" {
        (&backends[0], &backends[1])
    } else {
        (&backends[1], &backends[0])
    };
    dead.stop();
    let page = browser.get(&proxy.url(path)).await;
    assert_eq!(page.status, 200, "the client saw its sticky backend die");
    assert_eq!(page.backend(), alive.name);
    for _ in 0..5 {
        assert_eq!(
            browser.get(&proxy.url(path)).await.backend(),
            alive.name,
            "the new binding did not stick"
        );
    }
    (browser, alive.name.clone())
}

#[tokio::test]
async fn dead_pinned_backend_redispatches_and_reissues_the_insert_cookie() {
    within_timeout(async {
        let (browser, alive) =
            dead_bound_backend_redispatches("[service.affinity]\nstrategy = \"insert\"\n", "/")
                .await;
        assert_eq!(
            browser.jar["SERVERID"], alive,
            "the cookie names the new backend"
        );
    })
    .await;
}

#[tokio::test]
async fn dead_pinned_backend_redispatches_and_reprefixes_the_app_cookie() {
    within_timeout(async {
        let affinity = "[service.affinity]\nstrategy = \"prefix\"\ncookie = \"JSESSIONID\"\n";
        // /?: the app sets its cookie once and never again, as a shared-session app would.
        let backends = two_backends().await;
        let proxy = proxy_over(&backends, affinity).await;
        let mut browser = Browser::new();
        let set = common::encode("JSESSIONID=shared; Path=/");
        let bound = browser
            .get(&proxy.url(&format!("/?set-cookie={set}")))
            .await
            .backend()
            .to_string();
        let index = if bound == "b1" { 0 } else { 1 };
        backends[index].stop();
        let page = browser.get(&proxy.url("/")).await;
        let alive = &backends[1 - index].name;
        assert_eq!(page.backend(), alive);
        assert_eq!(browser.jar["JSESSIONID"], format!("{alive}~shared"));
        assert_eq!(
            backends[1 - index].seen().last().unwrap().headers["cookie"],
            "JSESSIONID=shared"
        );
        let hit = browser.get(&proxy.url("/")).await;
        assert_eq!(hit.backend(), alive);
        assert!(hit.set_cookies().is_empty());
    })
    .await;
}

#[tokio::test]
async fn dead_bound_backend_redispatches_and_rewrites_the_stick_table_entry() {
    within_timeout(async {
        dead_bound_backend_redispatches(
            "[service.affinity]\nstrategy = \"stick-table\"\ncookie = \"sid\"\n",
            "/session/sid",
        )
        .await;
    })
    .await;
}

#[tokio::test]
async fn a_new_session_whose_backend_refuses_is_retried_on_another() {
    within_timeout(async {
        let backends = two_backends().await;
        backends[0].stop();
        let proxy = proxy_over(&backends, "").await;
        for _ in 0..4 {
            let page = Browser::new().get(&proxy.url("/")).await;
            assert_eq!((page.status.as_u16(), page.backend()), (200, "b2"));
        }
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_backend_with_no_alternative_is_502_then_503_while_ejected() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        backend.stop();
        let proxy = start_proxy(&config(&[&backend], "ejection_time = \"1m\"\n")).await;
        let refused = Browser::new().get(&proxy.url("/")).await;
        assert_eq!(refused.status, 502);
        assert_eq!(refused.body, "502 Bad Gateway\n");
        let ejected = Browser::new().get(&proxy.url("/")).await;
        assert_eq!(ejected.status, 503);
        assert_eq!(ejected.body, "503 Service Unavailable\n");
    })
    .await;
}

#[tokio::test]
async fn a_backend_that_sends_no_response_in_time_is_504() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let proxy = start_proxy(&config(&[&backend], "response_timeout = \"300ms\"\n")).await;
        let page = Browser::new().get(&proxy.url("/slow")).await;
        assert_eq!(page.status, 504);
        assert_eq!(page.body, "504 Gateway Timeout\n");
    })
    .await;
}
