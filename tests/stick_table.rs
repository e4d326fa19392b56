//! Stick-table affinity end to end: bindings learned from the app's Set-Cookie.

mod common;

use std::collections::HashSet;

use common::{
    Browser, assert_sticks_and_spreads, cookie_fields, encode, get_with_cookie_fields, proxy_over,
    show, spawn_backends, within_timeout,
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
