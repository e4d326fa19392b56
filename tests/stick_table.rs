//! Stick-table affinity end to end: bindings learned from the app's Set-Cookie.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use stickyd::runtime::Services;

use common::{
    Browser, TestBackend, assert_sticks_and_spreads, config, cookie_fields, encode,
    get_with_cookie_fields, proxy_over, show, spawn_backends, within_timeout,
};

const STICK: &str = "[service.affinity]\nstrategy = \"stick-table\"\ncookie = \"sid\"\n";

#[tokio::test]
async fn one_session_sticks_for_20_requests_while_new_sessions_spread() {
    within_timeout(async {
        let backends = spawn_backends(3).await;
        let proxy = proxy_over(&backends, STICK).await;
        let (browser, bound) = assert_sticks_and_spreads(&proxy, "/session/sid").await;
        assert_eq!(
            browser.jar["sid"],
            format!("{bound}-1"),
            "the app's cookie reaches the client unchanged"
        );
    })
    .await;
}

#[tokio::test]
async fn an_entry_expires_with_the_apps_max_age() {
    within_timeout(async {
        let backends = spawn_backends(2).await;
        let proxy = proxy_over(&backends, STICK).await;
        let mut browser = Browser::new();
        let set = encode("sid=short; Max-Age=1");
        let bound = browser
            .get(&proxy.url(&format!("/?set-cookie={set}")))
            .await
            .backend()
            .to_string();
        assert_eq!(browser.get(&proxy.url("/")).await.backend(), bound);
        // Waiting out the cookie's own lifetime is the behaviour under test.
        tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
        // Round-robin: after expiry the session is new, and the next pick is the other backend.
        let after = browser.get(&proxy.url("/")).await.backend().to_string();
        assert_ne!(after, bound, "an expired entry still routed the session");
    })
    .await;
}

#[tokio::test]
async fn an_app_that_expires_its_cookie_removes_the_entry() {
    within_timeout(async {
        let backends = spawn_backends(2).await;
        let proxy = proxy_over(&backends, STICK).await;
        let mut browser = Browser::new();
        browser.jar.insert("sid".into(), "gone".into());
        let bound = browser.get(&proxy.url("/")).await.backend().to_string();
        assert_eq!(
            browser.get(&proxy.url("/")).await.backend(),
            bound,
            "the reserved binding held"
        );
        let logout = encode("sid=deleted; Max-Age=0; Path=/");
        assert_eq!(
            browser
                .get(&proxy.url(&format!("/?set-cookie={logout}")))
                .await
                .backend(),
            bound
        );
        // The entry is gone, so the same id is a new session: round-robin's next pick is the
        // other backend (a kept entry would have routed it to `bound`).
        let mut returning = Browser::new();
        returning.jar.insert("sid".into(), "gone".into());
        assert_ne!(returning.get(&proxy.url("/")).await.backend(), bound);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_of_one_session_land_on_one_backend() {
    within_timeout(async {
        let backends = spawn_backends(3).await;
        let proxy = std::sync::Arc::new(proxy_over(&backends, STICK).await);
        for session in 0..10 {
            let requests: Vec<_> = (0..8)
                .map(|_| {
                    let url = proxy.url("/");
                    tokio::spawn(async move {
                        let mut browser = Browser::new();
                        browser.jar.insert("sid".into(), format!("burst-{session}"));
                        browser.get(&url).await.backend().to_string()
                    })
                })
                .collect();
            let mut landed = HashSet::new();
            for request in requests {
                landed.insert(request.await.unwrap());
            }
            assert_eq!(
                landed.len(),
                1,
                "session burst-{session} was split over {landed:?}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn the_session_id_is_found_beside_non_ascii_and_valueless_pairs() {
    within_timeout(async {
        let backends = spawn_backends(2).await;
        let proxy = proxy_over(&backends, STICK).await;
        let first = get_with_cookie_fields(&proxy.url("/session/sid"), &[]).await;
        let bound = first.backend().to_string();
        let sid = format!("sid={bound}-1");
        let sid = sid.as_bytes();
        // Round-robin over two: a request whose session id was missed goes to the other one.
        let cases: [Vec<Vec<u8>>; 4] = [
            vec![[b"a=\xe9t\xe9; ", sid].concat()],
            vec![[b"flag; ", sid, b"; \xff=\xfe"].concat()],
            vec![b"a=\xe9t\xe9".to_vec(), sid.to_vec()],
            vec![[sid, b"; lang=fran\xc3\xa7ais"].concat()],
        ];
        for fields in &cases {
            let fields: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
            let sent: Vec<String> = fields.iter().map(|field| show(field)).collect();
            let page = get_with_cookie_fields(&proxy.url("/"), &fields).await;
            assert_eq!(page.backend(), bound, "{sent:?} lost its session");
            let served = backends.iter().find(|b| b.name == bound).unwrap().seen();
            let got: Vec<String> = cookie_fields(served.last().unwrap())
                .iter()
                .map(|field| show(field))
                .collect();
            assert_eq!(got, sent, "the stick table changed the cookies");
        }
    })
    .await;
}

/// stickyd in process through its [`Services`], so a test can read the stick table and the
/// metrics; returns it and the proxy's base URL.
async fn runtime_over(backends: &[TestBackend], extra: &str) -> (Arc<Services>, String) {
    let text = config(&backends.iter().collect::<Vec<_>>(), extra);
    let config =
        stickyd::config::Config::parse(&text, "<test>").unwrap_or_else(|error| panic!("{error}"));
    let listeners = stickyd::server::bind(&config).await.unwrap();
    let url = format!("http://{}", listeners[0].local_addr().unwrap());
    (Services::start(config, listeners), url)
}

/// The entries in the stick table of service `web` as (session, backend id), sorted.
fn stored(runtime: &Services) -> Vec<(String, String)> {
    let router = runtime.router("web").unwrap();
    let mut entries: Vec<(String, String)> = router
        .stick_table()
        .unwrap()
        .entries(100)
        .into_iter()
        .map(|(session, id)| (session, id.to_string()))
        .collect();
    entries.sort();
    entries
}

/// Whether the stick table of service `web` binds `session` to backend id `backend`.
fn binds(runtime: &Services, session: &str, backend: &str) -> bool {
    stored(runtime)
        .iter()
        .any(|(key, id)| key == session && id == backend)
}

#[tokio::test]
async fn a_session_id_longer_than_max_key_bytes_is_not_stored_and_is_counted() {
    within_timeout(async {
        let backends = spawn_backends(2).await;
        let (runtime, url) = runtime_over(&backends, STICK).await;
        let table = || {
            runtime
                .router("web")
                .unwrap()
                .stick_table()
                .unwrap()
                .entry_count()
        };
        // The default max_key_bytes is 256: an id of 256 bytes is a session, 257 is none.
        let (longest, oversized) = ("a".repeat(256), "b".repeat(257));
        let mut fits = Browser::new();
        fits.jar.insert("sid".into(), longest.clone());
        let bound = fits.get(&format!("{url}/")).await.backend().to_string();
        assert_eq!(fits.get(&format!("{url}/")).await.backend(), bound);
        assert!(binds(&runtime, &longest, &bound));
        // Round-robin over two backends: a stored session would stay; no session alternates.
        let mut too_long = Browser::new();
        too_long.jar.insert("sid".into(), oversized.clone());
        let first = too_long.get(&format!("{url}/")).await;
        assert_eq!(first.status, 200);
        let second = too_long.get(&format!("{url}/")).await;
        assert_ne!(
            first.backend(),
            second.backend(),
            "an oversized id was kept as a session"
        );
        // A backend's Set-Cookie with an oversized id binds nothing either.
        let set = encode(&format!("sid={oversized}; Path=/"));
        Browser::new()
            .get(&format!("{url}/?set-cookie={set}"))
            .await;
        assert_eq!(table(), 1, "an oversized id was stored");
        let metrics = runtime.encode_metrics();
        let line = "stickyd_oversized_keys_total{service=\"web\"} 3";
        assert!(
            metrics.lines().any(|candidate| candidate == line),
            "missing {line:?} in\n{metrics}"
        );
        runtime.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_set_cookie_holding_obs_text_still_teaches_the_table() {
    within_timeout(async {
        let backends = spawn_backends(2).await;
        let proxy = proxy_over(&backends, STICK).await;
        // UTF-8 "é" is two bytes >= 0x80: obs-text in an attribute of the app's cookie.
        let set = encode("sid=learned; Path=/; Comment=\u{e9}t\u{e9}");
        let bound = get_with_cookie_fields(&proxy.url(&format!("/?set-cookie={set}")), &[])
            .await
            .backend()
            .to_string();
        // Round-robin over two: an unlearned session would go to the other backend.
        for _ in 0..3 {
            let page = get_with_cookie_fields(&proxy.url("/"), &[b"sid=learned"]).await;
            assert_eq!(page.backend(), bound, "the binding was not learned");
        }
    })
    .await;
}

#[tokio::test]
async fn an_unconfirmed_reservation_lives_reservation_ttl_and_a_confirmed_one_the_full_ttl() {
    within_timeout(async {
        let backends = spawn_backends(2).await;
        let short = format!("{STICK}reservation_ttl = \"300ms\"\n");
        let (runtime, url) = runtime_over(&backends, &short).await;
        // Round-robin: an id no backend issued is reserved on b1, then used once more (a hit
        // restarts only the short lifetime).
        let mut made_up = Browser::new();
        made_up.jar.insert("sid".into(), "made-up".into());
        assert_eq!(made_up.get(&format!("{url}/")).await.backend(), "b1");
        assert_eq!(made_up.get(&format!("{url}/")).await.backend(), "b1");
        assert!(binds(&runtime, "made-up", "b1"));
        // b2 issues a session: its Set-Cookie confirms the id.
        let mut confirmed = Browser::new();
        let page = confirmed.get(&format!("{url}/session/sid")).await;
        assert_eq!(page.backend(), "b2");
        assert!(binds(&runtime, "b2-1", "b2"));
        // Another made-up id, reserved on b1, moves to b2 when b1 dies: still unconfirmed.
        let mut moved = Browser::new();
        moved.jar.insert("sid".into(), "moved-up".into());
        assert_eq!(moved.get(&format!("{url}/")).await.backend(), "b1");
        backends[0].stop();
        assert_eq!(moved.get(&format!("{url}/")).await.backend(), "b2");
        assert!(binds(&runtime, "moved-up", "b2"));
        // Waiting out reservation_ttl is the behaviour under test.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            stored(&runtime),
            [("b2-1".to_string(), "b2".to_string())],
            "only the session a backend confirmed outlives reservation_ttl"
        );
        assert_eq!(confirmed.get(&format!("{url}/")).await.backend(), "b2");
        runtime.shutdown().await;
    })
    .await;
}
