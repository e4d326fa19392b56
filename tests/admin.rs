//! The admin listener as an operator uses it: metrics, status, backend states, session-aware
//! drain, stick-table inspection, the resolver, and its errors.

mod common;

use http::{Method, StatusCode};
use serde_json::Value;
use stickyd::config::Config;

use common::admin::{Admin, TOKEN};
use common::raw::RawConn;
use common::{Browser, config, get_with_cookie_fields, spawn_backends, within_timeout};

const INSERT: &str = "[service.affinity]\nstrategy = \"insert\"\n";

#[tokio::test]
async fn metrics_count_requests_outcomes_and_states_in_prometheus_text() {
    within_timeout(async {
        let backends = spawn_backends(2).await;
        let admin = Admin::start(&backends, INSERT).await;
        let mut browser = Browser::new();
        let bound = browser.get(&format!("{}/", admin.proxy)).await.backend().to_string();
        for _ in 0..4 {
            browser.get(&format!("{}/", admin.proxy)).await;
        }
        let (status, text) = admin.call(Method::GET, "/metrics", "").await;
        assert_eq!(status, 200);
        let expect = [
            format!("stickyd_requests_total{{service=\"web\",backend=\"{bound}\",class=\"2xx\"}} 5"),
            "stickyd_affinity_outcomes_total{service=\"web\",affinity=\"new\"} 1".to_string(),
            "stickyd_affinity_outcomes_total{service=\"web\",affinity=\"hit\"} 4".to_string(),
            format!("stickyd_backend_admin_state{{service=\"web\",backend=\"{bound}\",state=\"ready\"}} 1"),
            format!("stickyd_backend_up{{service=\"web\",backend=\"{bound}\"}} 1"),
            format!("stickyd_backend_sessions{{service=\"web\",backend=\"{bound}\"}} 1"),
            "stickyd_request_duration_seconds_count{service=\"web\"} 5".to_string(),
        ];
        for line in expect {
            assert!(text.lines().any(|candidate| candidate == line), "missing {line:?} in\n{text}");
        }
        admin.stop().await;
    })
    .await;
}

#[tokio::test]
async fn drain_keeps_sessions_takes_no_new_ones_and_counts_what_is_left() {
    within_timeout(async {
        let backends = spawn_backends(2).await;
        let admin = Admin::start(&backends, INSERT).await;
        let url = format!("{}/", admin.proxy);
        let mut on_b1 = Vec::new();
        // Each browser holds the app's own session cookie, as a real app would set it.
        for n in 0.. {
            if on_b1.len() == 3 {
                break;
            }
            let mut browser = Browser::new();
            browser.jar.insert("app_session".into(), format!("s{n}"));
            if browser.get(&url).await.backend() == "b1" {
                browser.get(&url).await;
                on_b1.push(browser);
            }
        }
        assert_eq!(admin.backend_status("b1").await["sessions"], 3);
        let (status, answer) = admin
            .json(Method::PUT, "/services/web/backends/b1/state", "drain")
            .await;
        assert_eq!(
            (status, answer["state"].as_str()),
            (StatusCode::OK, Some("drain"))
        );
        let b1 = admin.backend_status("b1").await;
        assert_eq!(
            (b1["state"].as_str(), b1["accepts_new_sessions"].as_bool()),
            (Some("drain"), Some(false))
        );
        for browser in &mut on_b1 {
            assert_eq!(
                browser.get(&url).await.backend(),
                "b1",
                "a draining backend keeps its sessions"
            );
        }
        for _ in 0..4 {
            assert_eq!(
                Browser::new().get(&url).await.backend(),
                "b2",
                "a draining backend took a new session"
            );
        }
        assert_eq!(
            admin.backend_status("b1").await["sessions"],
            3,
            "the operator sees what is left to drain"
        );
        let (status, _) = admin
            .json(
                Method::PUT,
                "/services/web/backends/b1/state",
                r#"{"state":"maint"}"#,
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(
            on_b1[0].get(&url).await.backend(),
            "b2",
            "maint redispatches bound sessions"
        );
        admin.stop().await;
    })
    .await;
}

impl Admin {
    /// Live sessions per backend name, as `/status` gives them.
    async fn sessions(&self) -> std::collections::BTreeMap<String, u64> {
        let (_, status) = self.json(Method::GET, "/status", "").await;
        status["services"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|backend| {
                (
                    backend["name"].as_str().unwrap().to_string(),
                    backend["sessions"].as_u64().unwrap(),
                )
            })
            .collect()
    }
}

const PREFIX: &str = "[service.affinity]\nstrategy = \"prefix\"\ncookie = \"sid\"\n";

#[tokio::test]
async fn a_new_session_counts_on_its_backend_from_its_first_response() {
    within_timeout(async {
        for affinity in [INSERT, PREFIX] {
            let backends = spawn_backends(2).await;
            let admin = Admin::start(&backends, affinity).await;
            // The app sets its session cookie on the first response, as a real app does.
            let url = format!("{}/session/sid", admin.proxy);
            let mut browser = Browser::new();
            let bound = browser.get(&url).await.backend().to_string();
            assert!(
                browser.jar.contains_key("sid"),
                "{affinity}: no app session"
            );
            let counted = admin.sessions().await;
            assert_eq!(
                counted[&bound], 1,
                "{affinity}: the session bound by its first response is not counted: {counted:?}"
            );
            for _ in 0..3 {
                assert_eq!(browser.get(&url).await.backend(), bound);
            }
            assert_eq!(
                admin.sessions().await.values().sum::<u64>(),
                1,
                "{affinity}: the session's next requests counted it again"
            );
            admin.stop().await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_drained_backend_counts_a_session_bound_by_its_first_response_until_it_goes_idle() {
    within_timeout(async {
        let backends = spawn_backends(2).await;
        let extra = format!("session_idle = \"800ms\"\n{INSERT}");
        let admin = Admin::start(&backends, &extra).await;
        let url = format!("{}/session/sid", admin.proxy);
        let mut browser = Browser::new();
        let bound = browser.get(&url).await.backend().to_string();
        let (status, _) = admin
            .json(
                Method::PUT,
                &format!("/services/web/backends/{bound}/state"),
                "drain",
            )
            .await;
        assert_eq!(status, 200);
        // New sessions go elsewhere and leave the drained backend's count alone.
        for _ in 0..2 {
            assert_ne!(Browser::new().get(&url).await.backend(), bound);
        }
        assert_eq!(
            admin.sessions().await[&bound],
            1,
            "a drained backend shows no session while a client holds a binding to it"
        );
        // Waiting out session_idle is the behaviour under test.
        tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
        assert_eq!(
            admin.sessions().await[&bound],
            0,
            "an idle session still counts"
        );
        admin.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_reload_applies_a_shorter_session_idle_to_the_live_sessions() {
    within_timeout(async {
        let backends = spawn_backends(2).await;
        let admin = Admin::start(&backends, INSERT).await;
        let url = format!("{}/session/sid", admin.proxy);
        let mut browser = Browser::new();
        let bound = browser.get(&url).await.backend().to_string();
        browser.get(&url).await;
        assert_eq!(admin.sessions().await[&bound], 1);
        let extra = format!("session_idle = \"300ms\"\n{INSERT}");
        let text = config(&backends.iter().collect::<Vec<_>>(), &extra);
        admin
            .runtime
            .reload(Config::parse(&text, "<test>").unwrap())
            .await
            .unwrap();
        assert_eq!(
            admin.sessions().await[&bound],
            1,
            "the reload dropped a live session"
        );
        // Waiting out the new window is the behaviour under test.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert_eq!(
            admin.sessions().await[&bound],
            0,
            "the session kept the idle window of the config before the reload"
        );
        admin.stop().await;
    })
    .await;
}

#[tokio::test]
async fn new_admin_settings_apply_to_the_running_admin_listener() {
    within_timeout(async {
        let backends = spawn_backends(1).await;
        let admin = Admin::start(&backends, "").await;
        let new_token = "rotated-token";
        admin.settings.send_modify(|settings| {
            settings.token = Some(new_token.into());
        });
        let (old, _) = admin
            .call_with(Method::GET, "/status", "", Some(TOKEN))
            .await;
        let (new, _) = admin
            .call_with(Method::GET, "/status", "", Some(new_token))
            .await;
        assert_eq!(
            (old, new),
            (StatusCode::UNAUTHORIZED, StatusCode::OK),
            "the admin listener kept its old token"
        );
        admin.stop().await;
    })
    .await;
}

#[tokio::test]
async fn the_stick_table_can_be_listed_rebound_and_pruned() {
    within_timeout(async {
        let backends = spawn_backends(2).await;
        let admin = Admin::start(
            &backends,
            "[service.affinity]\nstrategy = \"stick-table\"\ncookie = \"sid\"\n",
        )
        .await;
        let mut browser = Browser::new();
        let first = browser
            .get(&format!("{}/session/sid", admin.proxy))
            .await
            .backend()
            .to_string();
        let session = browser.jar["sid"].clone();
        let (status, table) = admin
            .json(Method::GET, "/services/web/stick-table?limit=10", "")
            .await;
        assert_eq!(status, 200);
        assert_eq!(table["entries"][0]["session"], session.as_str());
        assert_eq!(table["entries"][0]["backend"], first.as_str());
        let other = if first == "b1" { "b2" } else { "b1" };
        let (status, _) = admin
            .json(
                Method::PUT,
                &format!("/services/web/stick-table/{session}"),
                other,
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(
            browser.get(&format!("{}/", admin.proxy)).await.backend(),
            other,
            "the rebound session follows"
        );
        let (status, _) = admin
            .json(
                Method::DELETE,
                &format!("/services/web/stick-table/{session}"),
                "",
            )
            .await;
        assert_eq!(status, 200);
        let (status, _) = admin
            .json(
                Method::DELETE,
                &format!("/services/web/stick-table/{session}"),
                "",
            )
            .await;
        assert_eq!(status, 404, "deleting twice finds nothing");
        admin.stop().await;
    })
    .await;
}

#[tokio::test]
async fn resolve_says_where_a_cookie_or_key_routes_and_why() {
    within_timeout(async {
        let backends = spawn_backends(2).await;
        let admin = Admin::start(&backends, INSERT).await;
        let (_, hit) = admin
            .json(
                Method::GET,
                "/services/web/resolve?cookie=SERVERID%3Db2%3B%20lang%3Den",
                "",
            )
            .await;
        assert_eq!(
            (hit["backend"].as_str(), hit["outcome"].as_str()),
            (Some("b2"), Some("hit")),
            "{hit}"
        );
        admin
            .json(Method::PUT, "/services/web/backends/b2/state", "maint")
            .await;
        let (_, moved) = admin
            .json(
                Method::GET,
                "/services/web/resolve?cookie=SERVERID%3Db2",
                "",
            )
            .await;
        assert_eq!(moved["outcome"], "redispatch", "{moved}");
        let (_, forged) = admin
            .json(
                Method::GET,
                "/services/web/resolve?cookie=SERVERID%3D10.0.0.1",
                "",
            )
            .await;
        assert_eq!(forged["outcome"], "invalid", "{forged}");
        let (_, none) = admin
            .json(Method::GET, "/services/web/resolve?cookie=lang%3Den", "")
            .await;
        assert_eq!(none["outcome"], "new", "{none}");
        let (status, _) = admin
            .json(Method::GET, "/services/web/resolve?key=abc", "")
            .await;
        assert_eq!(status, 400, "?key= is for the hash strategy");
        admin.stop().await;

        let backends = spawn_backends(3).await;
        let hashed = Admin::start(
            &backends,
            "[service.affinity]\nstrategy = \"hash\"\nkey = \"query:token\"\n",
        )
        .await;
        let (_, answer) = hashed
            .json(Method::GET, "/services/web/resolve?key=abc", "")
            .await;
        let served = Browser::new()
            .get(&format!("{}/?token=abc", hashed.proxy))
            .await
            .backend()
            .to_string();
        assert_eq!(
            answer["backend"].as_str(),
            Some(served.as_str()),
            "the resolver agrees with the proxy: {answer}"
        );
        hashed.stop().await;
    })
    .await;
}

#[tokio::test]
async fn the_status_page_needs_no_token_but_what_it_shows_does() {
    within_timeout(async {
        let backends = spawn_backends(1).await;
        let admin = Admin::start(&backends, INSERT).await;
        let (status, headers, html) = admin.get_untokened("/").await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains("<title>stickyd status</title>"), "{html}");
        assert_eq!(headers["content-type"], "text/html; charset=utf-8");
        // Only its own scripts and calls, and never inside another site's frame.
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"));
        assert_eq!(headers["x-frame-options"], "DENY");
        for (path, holds) in [("/ui/app.js", "/status"), ("/ui/style.css", "badge")] {
            let (status, _, text) = admin.get_untokened(path).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert!(text.contains(holds), "{path}");
        }
        // The data and every change still need the token.
        let (status, ..) = admin.get_untokened("/status").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = admin.call_with(Method::PUT, "/", "", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = admin
            .call_with(
                Method::PUT,
                "/services/web/backends/b1/state",
                "drain",
                None,
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(admin.backend_status("b1").await["state"], "ready");
        admin.stop().await;
    })
    .await;
}

#[tokio::test]
async fn bad_tokens_unknown_names_and_wrong_methods_get_json_errors() {
    within_timeout(async {
        let backends = spawn_backends(1).await;
        let admin = Admin::start(&backends, INSERT).await;
        let cases = [
            (
                admin.call_with(Method::GET, "/status", "", None).await,
                StatusCode::UNAUTHORIZED,
            ),
            (
                admin
                    .call_with(Method::GET, "/status", "", Some("wrong"))
                    .await,
                StatusCode::UNAUTHORIZED,
            ),
            (
                // A prefix of the token, and the token with one byte changed.
                admin
                    .call_with(Method::GET, "/status", "", Some(&TOKEN[..TOKEN.len() - 1]))
                    .await,
                StatusCode::UNAUTHORIZED,
            ),
            (
                admin
                    .call_with(Method::GET, "/status", "", Some(&TOKEN.replace('s', "S")))
                    .await,
                StatusCode::UNAUTHORIZED,
            ),
            (
                admin
                    .call(Method::GET, "/services/nope/resolve?cookie=a%3Db", "")
                    .await,
                StatusCode::NOT_FOUND,
            ),
            (
                admin
                    .call(Method::PUT, "/services/web/backends/nope/state", "drain")
                    .await,
                StatusCode::NOT_FOUND,
            ),
            (
                admin
                    .call(Method::PUT, "/services/web/backends/b1/state", "sleep")
                    .await,
                StatusCode::BAD_REQUEST,
            ),
            (
                admin.call(Method::POST, "/status", "").await,
                StatusCode::METHOD_NOT_ALLOWED,
            ),
            (
                admin
                    .call(Method::GET, "/services/web/backends/b1/state", "")
                    .await,
                StatusCode::METHOD_NOT_ALLOWED,
            ),
            (
                admin
                    .call(Method::GET, "/services/web/stick-table", "")
                    .await,
                StatusCode::NOT_FOUND,
            ),
        ];
        for ((status, body), expected) in cases {
            assert_eq!(status, expected, "{body}");
            let error: Value = serde_json::from_str(&body).unwrap();
            assert!(error["error"].is_string(), "{body}");
        }
        admin.stop().await;
    })
    .await;
}

#[tokio::test]
async fn the_debug_header_names_backend_and_outcome_when_enabled() {
    within_timeout(async {
        let backends = spawn_backends(1).await;
        let admin = Admin::start(&backends, &format!("debug_header = true\n{INSERT}")).await;
        let mut browser = Browser::new();
        let first = browser.get(&format!("{}/", admin.proxy)).await;
        assert_eq!(first.headers["x-stickyd"], "backend=b1; affinity=new");
        let second = browser.get(&format!("{}/", admin.proxy)).await;
        assert_eq!(second.headers["x-stickyd"], "backend=b1; affinity=hit");
        admin.stop().await;
        let plain = common::proxy_over(&spawn_backends(1).await, INSERT).await;
        assert!(
            !Browser::new()
                .get(&plain.url("/"))
                .await
                .headers
                .contains_key("x-stickyd"),
            "off by default"
        );
    })
    .await;
}

#[tokio::test]
async fn a_bad_proxy_protocol_header_is_counted() {
    within_timeout(async {
        let backends = spawn_backends(1).await;
        let admin = Admin::start(&backends, "proxy_protocol = true\n").await;
        let address = admin.proxy.trim_start_matches("http://").to_string();
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut stream, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut rest = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut rest)
            .await
            .unwrap();
        let (_, text) = admin.call(Method::GET, "/metrics", "").await;
        assert!(
            text.contains("stickyd_proxy_protocol_rejected_total{service=\"web\"} 1"),
            "{text}"
        );
        admin.stop().await;
    })
    .await;
}

#[tokio::test]
async fn resolve_reads_cookie_bytes_as_the_proxy_does() {
    within_timeout(async {
        let backends = spawn_backends(3).await;
        let insert = Admin::start(&backends, INSERT).await;
        // RFC 6265 §5.4: a browser may send bytes >= 0x80; here Latin-1 "été".
        let (_, hit) = insert
            .json(
                Method::GET,
                "/services/web/resolve?cookie=a%3D%E9t%E9%3B%20SERVERID%3Db2",
                "",
            )
            .await;
        assert_eq!(
            (hit["backend"].as_str(), hit["outcome"].as_str()),
            (Some("b2"), Some("hit")),
            "{hit}"
        );
        insert.stop().await;

        // A hash key read from a cookie is hashed as the bytes the browser sent.
        let hashed = Admin::start(
            &backends,
            "[service.affinity]\nstrategy = \"hash\"\nkey = \"cookie:sid\"\nfallback = \"balance\"\n",
        )
        .await;
        for n in 0..6u8 {
            let value = [b'\xe9', b'0' + n, b'\xff'];
            let escaped: String = value.iter().map(|b| format!("%{b:02X}")).collect();
            let (_, answer) = hashed
                .json(
                    Method::GET,
                    &format!("/services/web/resolve?cookie=sid%3D{escaped}"),
                    "",
                )
                .await;
            let served = get_with_cookie_fields(
                &format!("{}/", hashed.proxy),
                &[&[b"sid=", &value[..]].concat()],
            )
            .await;
            assert_eq!(
                (answer["backend"].as_str(), answer["outcome"].as_str()),
                (Some(served.backend()), Some("hit")),
                "the resolver agrees with the proxy on sid={escaped}: {answer}"
            );
        }
        hashed.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_changes_nothing_and_a_refused_request_has_no_outcome() {
    within_timeout(async {
        let backends = spawn_backends(2).await;
        let admin = Admin::start(
            &backends,
            "[service.affinity]\nstrategy = \"stick-table\"\ncookie = \"sid\"\n",
        )
        .await;
        // The app binds sid=short for one second.
        let set = common::encode("sid=short; Max-Age=1");
        let bound = Browser::new()
            .get(&format!("{}/?set-cookie={set}", admin.proxy))
            .await
            .backend()
            .to_string();
        let started = std::time::Instant::now();
        // Asking the resolver again and again must not keep the entry alive.
        let outcome = loop {
            let (_, answer) = admin
                .json(Method::GET, "/services/web/resolve?cookie=sid%3Dshort", "")
                .await;
            if answer["outcome"] != "hit" {
                break answer;
            }
            assert_eq!(answer["backend"], bound.as_str(), "{answer}");
            assert!(
                started.elapsed() < std::time::Duration::from_secs(3),
                "the resolver kept a one-second entry alive: {answer}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        assert_eq!(outcome["outcome"], "new", "{outcome}");
        // A request refused with 400 before any routing counts no affinity outcome.
        let before = outcome_count(&admin, "new").await;
        let mut conn =
            RawConn::open(admin.proxy.trim_start_matches("http://").parse().unwrap()).await;
        conn.send(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
            .await
            .unwrap();
        let answer = conn.answer_until_closed().await;
        assert!(!answer.reset, "reset: {}", answer.summary());
        assert_eq!(
            answer.status_line().as_deref(),
            Some("HTTP/1.1 400"),
            "{}",
            answer.summary()
        );
        assert_eq!(outcome_count(&admin, "new").await, before);
        admin.stop().await;
    })
    .await;
}

/// The `stickyd_affinity_outcomes_total` count for `outcome` of service `web`.
async fn outcome_count(admin: &Admin, outcome: &str) -> f64 {
    let (_, metrics) = admin.call(Method::GET, "/metrics", "").await;
    let line =
        format!("stickyd_affinity_outcomes_total{{service=\"web\",affinity=\"{outcome}\"}} ");
    metrics
        .lines()
        .find_map(|candidate| candidate.strip_prefix(&line)?.trim().parse().ok())
        .unwrap_or(0.0)
}
