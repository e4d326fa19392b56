//! Scaling out under live sticky traffic (issue 15's scenario, in process): 3 backends hold
//! 300 live sessions, a reload adds a 4th, and 300 new sessions arrive while every old one
//! keeps sending. No live session may move; `least-sessions` must even the farm out, where
//! round-robin keeps giving the new backend only its 1/4 of new sessions; slow start must keep
//! the new backend from being flooded.
//!
//! Each session is a browser with its own jar on the app's `/session/app` path, so the app sets
//! its own session cookie, as a real app does, and stickyd's live-session count tells the
//! sessions apart.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::{Browser, TestBackend, spawn_backends, within_timeout};
use stickyd::config::Config;
use stickyd::runtime::Services;

/// Sessions made before the new backend joins, and after.
const OLD_SESSIONS: usize = 300;
const NEW_SESSIONS: usize = 300;

/// What one run of the scenario saw.
#[derive(Debug)]
struct ScaleOut {
    /// Old sessions that reached another backend than their first after the scale-out.
    moved: usize,
    /// New sessions placed on the added backend.
    on_added: usize,
    /// Sessions per backend at the end, old and new, in backend order.
    per_backend: Vec<usize>,
}

impl ScaleOut {
    /// Most sessions on a backend over fewest.
    fn spread(&self) -> f64 {
        let max = *self.per_backend.iter().max().unwrap() as f64;
        let min = *self.per_backend.iter().min().unwrap() as f64;
        max / min.max(1.0)
    }
}

fn toml(backends: &[TestBackend], service: &str) -> String {
    let affinity = format!("{service}\n[service.affinity]\nstrategy = \"insert\"\n");
    let backends: Vec<&TestBackend> = backends.iter().collect();
    format!(
        "shutdown_grace = \"5s\"\n{}",
        common::config(&backends, &affinity)
    )
}

fn parse(text: &str) -> Config {
    Config::parse(text, "<test>").unwrap_or_else(|error| panic!("{error}\n{text}"))
}

/// Runs the scenario with `service` keys (`balance`, `slow_start`) on 4 fresh backends.
async fn scale_out(service: &str) -> ScaleOut {
    let backends = spawn_backends(4).await;
    let first = parse(&toml(&backends[..3], service));
    let listeners = stickyd::server::bind(&first).await.unwrap();
    let runtime: Arc<Services> = Services::start(first, listeners);
    let url = format!("http://{}/session/app", runtime.local_addrs("web")[0]);

    let mut old: Vec<(Browser, String)> = Vec::new();
    for _ in 0..OLD_SESSIONS {
        let mut browser = Browser::new();
        let backend = browser.get(&url).await.backend().to_string();
        old.push((browser, backend));
    }

    runtime
        .reload(parse(&toml(&backends, service)))
        .await
        .expect("the reload adds b4");

    let mut moved = 0;
    let mut new = Vec::new();
    for n in 0..NEW_SESSIONS {
        let mut browser = Browser::new();
        new.push(browser.get(&url).await.backend().to_string());
        // Every old session keeps sending while the new ones arrive.
        let (browser, backend) = &mut old[n % OLD_SESSIONS];
        let page = browser.get(&url).await;
        if page.backend() != backend {
            moved += 1;
        }
    }
    runtime.shutdown().await;

    let mut counts: HashMap<&str, usize> = HashMap::new();
    for backend in old.iter().map(|(_, backend)| backend).chain(&new) {
        *counts.entry(backend).or_default() += 1;
    }
    ScaleOut {
        moved,
        on_added: new.iter().filter(|backend| *backend == "b4").count(),
        per_backend: backends
            .iter()
            .map(|backend| counts.get(backend.name.as_str()).copied().unwrap_or(0))
            .collect(),
    }
}

#[tokio::test]
async fn least_sessions_evens_out_an_added_backend_without_moving_a_live_session() {
    within_timeout(async {
        let least = scale_out("balance = \"least-sessions\"").await;
        println!("least-sessions: {least:?}, spread {:.2}", least.spread());
        assert_eq!(least.moved, 0, "{least:?}");
        assert!(least.spread() <= 1.15, "{least:?}");
        // It had to catch up 100 sessions, then take its quarter of the rest.
        assert!(least.on_added >= 140, "{least:?}");

        let round = scale_out("balance = \"round-robin\"").await;
        println!("round-robin: {round:?}, spread {:.2}", round.spread());
        assert_eq!(round.moved, 0, "{round:?}");
        assert_eq!(round.on_added, NEW_SESSIONS / 4, "{round:?}");
        assert!(round.spread() >= 2.0, "{round:?}");
    })
    .await;
}

#[tokio::test]
async fn slow_start_keeps_least_sessions_from_flooding_an_added_backend() {
    within_timeout(async {
        // An hour's ramp: for this test's few seconds, b4's weight stays near nothing.
        let slow = scale_out("balance = \"least-sessions\"\nslow_start = \"1h\"").await;
        println!("least-sessions, slow start: {slow:?}");
        assert_eq!(slow.moved, 0, "{slow:?}");
        assert!(slow.on_added <= 3, "{slow:?}");
    })
    .await;
}

/// A farm where b1 holds every session and b2, b3 have just joined empty: 12 sessions made
/// while b2 and b3 were draining, then both set ready. `extra` adds service keys.
async fn lopsided(extra: &str) -> (Vec<TestBackend>, common::admin::Admin, Vec<Browser>) {
    let backends = spawn_backends(3).await;
    let admin = common::admin::Admin::start(
        &backends,
        &format!(
            "balance = \"least-sessions\"\n{extra}\n[service.affinity]\nstrategy = \"insert\"\n"
        ),
    )
    .await;
    let state = |backend: &str, state: &'static str| {
        let admin = &admin;
        let path = format!("/services/web/backends/{backend}/state");
        async move { admin.call(http::Method::PUT, &path, state).await }
    };
    state("b2", "drain").await;
    state("b3", "drain").await;
    let url = format!("{}/session/app", admin.proxy);
    let mut sessions = Vec::new();
    for _ in 0..12 {
        let mut browser = Browser::new();
        assert_eq!(browser.get(&url).await.backend(), "b1");
        sessions.push(browser);
    }
    state("b2", "ready").await;
    state("b3", "ready").await;
    (backends, admin, sessions)
}

#[tokio::test]
async fn bindings_unused_past_rebalance_after_move_off_a_full_backend_and_live_ones_never_do() {
    within_timeout(async {
        let (_backends, admin, mut sessions) =
            lopsided("rebalance_after = \"400ms\"\nsession_idle = \"10s\"").await;
        let url = format!("{}/session/app", admin.proxy);
        let (live, idle) = sessions.split_at_mut(4);
        // Four sessions keep sending; the other eight go quiet past rebalance_after.
        let quiet = std::time::Instant::now();
        while quiet.elapsed() < std::time::Duration::from_millis(600) {
            for browser in live.iter_mut() {
                assert_eq!(browser.get(&url).await.backend(), "b1");
            }
            // A client's pace.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        // Every session sends again: the live ones stay, the idle ones spread over b2 and b3.
        for browser in live.iter_mut() {
            assert_eq!(
                browser.get(&url).await.backend(),
                "b1",
                "a live binding moved"
            );
        }
        let mut moved_to = Vec::new();
        for browser in idle.iter_mut() {
            moved_to.push(browser.get(&url).await.backend().to_string());
        }
        let on = |name: &str| moved_to.iter().filter(|backend| *backend == name).count();
        assert_eq!((on("b1"), on("b2"), on("b3")), (0, 4, 4), "{moved_to:?}");
        // The cookie was rewritten: each moved session stays where it went.
        for (browser, backend) in idle.iter_mut().zip(&moved_to) {
            assert_eq!(browser.get(&url).await.backend(), backend);
        }
        let (_, status) = admin.json(http::Method::GET, "/status", "").await;
        assert_eq!(
            status["services"][0]["affinity"]["rebalance"], 8,
            "{status}"
        );
        admin.stop().await;
    })
    .await;
}

#[tokio::test]
async fn without_rebalance_after_an_idle_binding_stays_on_its_full_backend() {
    within_timeout(async {
        let (_backends, admin, mut sessions) = lopsided("session_idle = \"10s\"").await;
        let url = format!("{}/session/app", admin.proxy);
        // Idle past what rebalance_after would have been.
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        for browser in sessions.iter_mut() {
            assert_eq!(browser.get(&url).await.backend(), "b1");
        }
        admin.stop().await;
    })
    .await;
}
