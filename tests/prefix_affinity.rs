//! Prefix affinity end to end: the app's own cookie carries the backend id in front.

mod common;

use common::{
    Browser, TestBackend, assert_sticks_and_spreads, config, cookie_fields, encode,
    get_with_cookie_fields, proxy_over, show, spawn_backends, start_proxy, within_timeout,
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

#[tokio::test]
async fn a_prefix_beside_non_ascii_and_valueless_pairs_pins_and_only_the_prefix_is_stripped() {
    within_timeout(async {
        let backends = spawn_backends(3).await;
        let proxy = proxy_over(&backends, PREFIX).await;
        // Pairs with bytes >= 0x80 (RFC 6265 §5.4), in the same field or another one, in the
        // app's own value, and valueless pairs: all reach the backend byte for byte.
        let cases: [(&[&[u8]], &[u8]); 5] = [
            (
                &[b"a=\xe9t\xe9; JSESSIONID=b2~abc; flag"],
                b"a=\xe9t\xe9; JSESSIONID=abc; flag",
            ),
            (
                &[b"a=\xe9t\xe9", b"JSESSIONID=b2~\xe9abc"],
                b"a=\xe9t\xe9; JSESSIONID=\xe9abc",
            ),
            (
                &[b"JSESSIONID=b2~abc", b"\xff=1; flag"],
                b"JSESSIONID=abc; \xff=1; flag",
            ),
            (
                &[b"lang=fran\xc3\xa7ais; JSESSIONID=b2~x~\xc3\xa9=; q=\"\x80 \xa0\""],
                b"lang=fran\xc3\xa7ais; JSESSIONID=x~\xc3\xa9=; q=\"\x80 \xa0\"",
            ),
            (
                &[b"\xe9flag; JSESSIONID=b2~abc"],
                b"\xe9flag; JSESSIONID=abc",
            ),
        ];
        for (fields, expected) in cases {
            let sent: Vec<String> = fields.iter().map(|field| show(field)).collect();
            let page = get_with_cookie_fields(&proxy.url("/"), fields).await;
            assert_eq!(page.backend(), "b2", "{sent:?} was not pinned");
            let got: Vec<String> = cookie_fields(backends[1].seen().last().unwrap())
                .iter()
                .map(|field| show(field))
                .collect();
            assert_eq!(got, [show(expected)], "for {sent:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn an_app_set_cookie_holding_obs_text_is_still_prefixed_and_others_are_untouched() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let proxy = start_proxy(&config(&[&backend], PREFIX)).await;
        // UTF-8 "é" is two bytes >= 0x80: obs-text to HTTP (RFC 9110 §5.5).
        let query: Vec<String> = [
            "JSESSIONID=abc; Path=/; Comment=\u{e9}t\u{e9}",
            "other=\u{e9}; Path=/",
        ]
        .iter()
        .map(|field| format!("set-cookie={}", encode(field)))
        .collect();
        let page = get_with_cookie_fields(&proxy.url(&format!("/?{}", query.join("&"))), &[]).await;
        let fields: Vec<String> = page
            .headers
            .get_all("set-cookie")
            .iter()
            .map(|field| show(field.as_bytes()))
            .collect();
        assert_eq!(
            fields,
            [
                show("JSESSIONID=b1~abc; Path=/; Comment=\u{e9}t\u{e9}".as_bytes()),
                show("other=\u{e9}; Path=/".as_bytes()),
            ]
        );
        let value = "JSESSIONID=\u{e9}abc; Path=/";
        let page =
            get_with_cookie_fields(&proxy.url(&format!("/?set-cookie={}", encode(value))), &[])
                .await;
        assert_eq!(
            show(page.headers["set-cookie"].as_bytes()),
            show("JSESSIONID=b1~\u{e9}abc; Path=/".as_bytes())
        );
    })
    .await;
}
