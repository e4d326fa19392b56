//! Insert affinity end to end: stickyd's own cookie names the backend.

mod common;

use common::{
    Browser, TestBackend, assert_sticks_and_spreads, config, cookie_fields, get_with_cookie_fields,
    proxy_over, show, spawn_backends, start_proxy, within_timeout,
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
            ["SERVERID=b1; HttpOnly; SameSite=Lax; Path=/"]
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

/// Pairs holding bytes >= 0x80, in the value, the name, quoted, as UTF-8 and as Latin-1: user
/// agents send them (RFC 6265 §5.4), so stickyd must read its own cookie beside them.
const NON_ASCII_PAIRS: &[&[u8]] = &[
    b"a=\xe9t\xe9",
    b"lang=fran\xc3\xa7ais",
    b"\xe9t\xe9=1",
    b"x=\x80=\xff",
    b"q=\"\xe9 \xa0\"",
];

/// Sends `fields` to `proxy` and asserts that backend `b2` of `backends` answered and
/// received exactly `expected` as its `Cookie` fields.
async fn assert_pinned_to_b2_with(
    proxy: &common::Proxy,
    backends: &[TestBackend],
    fields: &[&[u8]],
    expected: &[&[u8]],
) {
    let page = get_with_cookie_fields(&proxy.url("/"), fields).await;
    let sent: Vec<String> = fields.iter().map(|field| show(field)).collect();
    assert_eq!(page.backend(), "b2", "{sent:?} was not pinned");
    assert!(
        page.headers.get("set-cookie").is_none(),
        "{sent:?}: a hit re-issued the cookie"
    );
    let seen = backends[1].seen();
    let got: Vec<String> = cookie_fields(seen.last().unwrap())
        .iter()
        .map(|field| show(field))
        .collect();
    let expected: Vec<String> = expected.iter().map(|field| show(field)).collect();
    assert_eq!(got, expected, "for {sent:?}");
}

#[tokio::test]
async fn a_cookie_field_with_non_ascii_bytes_still_pins_and_the_rest_reaches_the_backend_byte_for_byte()
 {
    within_timeout(async {
        let backends = spawn_backends(3).await;
        let proxy = proxy_over(&backends, INSERT).await;
        for pair in NON_ASCII_PAIRS {
            let before = [*pair, b"; SERVERID=b2"].concat();
            let after = [b"SERVERID=b2; ", *pair].concat();
            for field in [&before, &after] {
                assert_pinned_to_b2_with(&proxy, &backends, &[field], &[pair]).await;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn every_app_pair_of_several_cookie_fields_reaches_the_backend_when_one_holds_non_ascii() {
    within_timeout(async {
        let backends = spawn_backends(3).await;
        let proxy = proxy_over(&backends, INSERT).await;
        // The rewrite joins the fields with "; " (RFC 9113 §8.2.3), pairs in order.
        let cases: [(&[&[u8]], &[u8]); 3] = [
            (
                &[b"a=\xe9t\xe9; SERVERID=b2", b"sid=xyz"],
                b"a=\xe9t\xe9; sid=xyz",
            ),
            (
                &[b"sid=xyz; SERVERID=b2", b"a=\xe9t\xe9"],
                b"sid=xyz; a=\xe9t\xe9",
            ),
            (
                &[b"sid=xyz", b"\xff=\xfe; b=\x80", b"SERVERID=b2"],
                b"sid=xyz; \xff=\xfe; b=\x80",
            ),
        ];
        for (fields, expected) in cases {
            assert_pinned_to_b2_with(&proxy, &backends, fields, &[expected]).await;
        }
    })
    .await;
}

#[tokio::test]
async fn valueless_pairs_survive_the_removal_of_the_insert_cookie() {
    within_timeout(async {
        let backends = spawn_backends(3).await;
        let proxy = proxy_over(&backends, INSERT).await;
        let cases: [(&[&[u8]], &[u8]); 3] = [
            (&[b"flag; SERVERID=b2; x=1"], b"flag; x=1"),
            (&[b"SERVERID=b2; \xe9flag"], b"\xe9flag"),
            (&[b"flag", b"SERVERID=b2"], b"flag"),
        ];
        for (fields, expected) in cases {
            assert_pinned_to_b2_with(&proxy, &backends, fields, &[expected]).await;
        }
    })
    .await;
}
