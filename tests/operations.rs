//! Operations end to end: active health checks, admin states (drain, maint), backup backends and
//! failback, passive 5xx ejection, and hitless reloads (under load, with new and removed
//! services, keeping the stick table).
//!
//! These tests start stickyd through [`Services`] rather than `common::start_proxy`, so they can
//! reach the pools (`Pool::changes`, `Pool::set_admin_state`) and reload the config.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use common::raw::RawConn;
use common::{Browser, Page, TestBackend, within_timeout};
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioExecutor;
use stickyd::config::{AdminState, Config};
use stickyd::pool::Pool;
use stickyd::runtime::Services;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const INSERT: &str = "[service.affinity]\nstrategy = \"insert\"\n";
const STICK: &str = "[service.affinity]\nstrategy = \"stick-table\"\ncookie = \"sid\"\n";

// ---------------------------------------------------------------------------------------------
// Harness of this file
// ---------------------------------------------------------------------------------------------

/// stickyd in this process, with its runtime at hand.
struct Stickyd {
    runtime: Arc<Services>,
}

impl Stickyd {
    /// Parses `toml` (listen addresses `127.0.0.1:0`), binds and starts serving it.
    async fn start(toml: &str) -> Stickyd {
        let config = parse(toml);
        let listeners = stickyd::server::bind(&config)
            .await
            .expect("bind 127.0.0.1:0");
        Stickyd {
            runtime: Services::start(config, listeners),
        }
    }

    /// The URL of `path` on the first listener of `service`.
    fn url(&self, service: &str, path: &str) -> String {
        let addresses = self.runtime.local_addrs(service);
        let address = addresses
            .first()
            .unwrap_or_else(|| panic!("service {service} listens nowhere"));
        format!("http://{address}{path}")
    }

    /// The current pool of `service`.
    fn pool(&self, service: &str) -> Arc<Pool> {
        let router = self
            .runtime
            .router(service)
            .unwrap_or_else(|| panic!("no service {service}"));
        Arc::clone(router.pool())
    }

    /// Validates `toml` and reloads it; panics if either fails.
    async fn reload(&self, toml: &str) {
        self.runtime
            .reload(parse(toml))
            .await
            .unwrap_or_else(|error| panic!("reload failed: {error}"));
    }

    async fn shutdown(self) {
        self.runtime.shutdown().await;
    }
}

fn parse(toml: &str) -> Config {
    Config::parse(toml, "<test>").unwrap_or_else(|error| panic!("{error}\n---\n{toml}"))
}

/// A whole config: a short `shutdown_grace` (so shutdown never stalls a test) and `services`.
fn config(services: &[String]) -> String {
    format!("shutdown_grace = \"5s\"\n\n{}", services.join("\n"))
}

/// One `[[service]]` table named `name` on `127.0.0.1:0`. `settings` are its keys followed by
/// its sub-tables (`[service.health]`, `[service.affinity]`); each backend is
/// `(name, address, extra keys)`.
fn service(name: &str, settings: &str, backends: &[(&str, SocketAddr, &str)]) -> String {
    let mut text =
        format!("[[service]]\nname = \"{name}\"\nlisten = [\"127.0.0.1:0\"]\n{settings}\n");
    for (backend, address, extra) in backends {
        text.push_str(&format!(
            "[[service.backend]]\nname = \"{backend}\"\naddress = \"{address}\"\n{extra}\n"
        ));
    }
    text
}

/// `(name, address, "")` for `backend`.
fn entry(backend: &TestBackend) -> (&str, SocketAddr, &str) {
    (backend.name.as_str(), backend.addr, "")
}

/// [`entry`] for each of `backends`.
fn plain(backends: &[TestBackend]) -> Vec<(&str, SocketAddr, &str)> {
    backends.iter().map(entry).collect()
}

/// A browser whose jar already says `SERVERID=<backend>`: a session bound to `backend`.
fn bound_to(backend: &str) -> Browser {
    let mut browser = Browser::new();
    browser.jar.insert("SERVERID".into(), backend.into());
    browser
}

/// The backends that `count` new sessions (fresh browsers) reach; each must answer 200.
async fn new_sessions(url: &str, count: usize) -> Vec<String> {
    let mut reached = Vec::with_capacity(count);
    for _ in 0..count {
        let page = Browser::new().get(url).await;
        assert_eq!(
            page.status,
            StatusCode::OK,
            "a new session failed: {page:?}"
        );
        reached.push(page.backend().to_string());
    }
    reached
}

/// The `SERVERID` value a response sets, if any.
fn serverid_set(page: &Page) -> Option<String> {
    page.set_cookies().iter().find_map(|field| {
        field
            .strip_prefix("SERVERID=")
            .map(|rest| rest.split(';').next().unwrap_or("").to_string())
    })
}

/// Waits (at most 10 s, within the test's own bound) until `pool` satisfies `state`, re-checking
/// at every change the pool announces; panics naming `what` otherwise.
async fn await_state(pool: &Pool, what: &str, state: impl Fn(&Pool) -> bool) {
    let mut changes = pool.changes();
    let reached = changes.wait_for(|_| state(pool));
    match tokio::time::timeout(std::time::Duration::from_secs(10), reached).await {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => panic!("the pool was dropped while waiting until {what}"),
        Err(_) => panic!("the pool never reached: {what}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Active health checks
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn active_health_checks_take_a_failing_backend_out_and_bring_it_back() {
    within_timeout(async {
        let (h1, h2) = (
            TestBackend::spawn("h1").await,
            TestBackend::spawn("h2").await,
        );
        let health = "[service.health]\npath = \"/health\"\ninterval = \"50ms\"\n\
                      timeout = \"200ms\"\nrise = 2\nfall = 2\n";
        let stickyd = Stickyd::start(&config(&[service(
            "web",
            &format!("{health}{INSERT}"),
            &[entry(&h1), entry(&h2)],
        )]))
        .await;
        let url = stickyd.url("web", "/");
        let pool = stickyd.pool("web");
        let index = pool.find_name("h1").unwrap();

        let mut session = bound_to("h1");
        assert_eq!(session.get(&url).await.backend(), "h1");

        h1.set_healthy(false);
        await_state(&pool, "h1 is unhealthy", |pool| {
            !pool.get(index).is_healthy()
        })
        .await;
        assert_eq!(
            new_sessions(&url, 6).await,
            vec!["h2"; 6],
            "a new session went to the unhealthy backend"
        );
        let page = session.get(&url).await;
        assert_eq!(page.status, StatusCode::OK);
        assert_eq!(page.backend(), "h2", "the bound session stayed on h1");
        assert_eq!(
            serverid_set(&page).as_deref(),
            Some("h2"),
            "the redispatched session got no new cookie"
        );
        assert_eq!(session.get(&url).await.backend(), "h2");

        h1.set_healthy(true);
        await_state(&pool, "h1 is healthy again", |pool| {
            pool.get(index).is_healthy()
        })
        .await;
        // Round-robin over two usable backends: two new sessions reach both.
        let reached: HashSet<String> = new_sessions(&url, 2).await.into_iter().collect();
        assert!(
            reached.contains("h1"),
            "the recovered backend took no new session: {reached:?}"
        );
        assert_eq!(bound_to("h1").get(&url).await.backend(), "h1");
        stickyd.shutdown().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Admin states
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn drain_keeps_bound_sessions_and_takes_no_new_ones_and_maint_redispatches_them() {
    within_timeout(async {
        let backends = common::spawn_backends(3).await;
        let mut entries = plain(&backends);
        entries[0].2 = "state = \"drain\"\n";
        let stickyd = Stickyd::start(&config(&[service("web", INSERT, &entries)])).await;
        let url = stickyd.url("web", "/");
        let pool = stickyd.pool("web");

        let mut session = bound_to("b1");
        for request in 1..=3 {
            let page = session.get(&url).await;
            assert_eq!(page.status, StatusCode::OK);
            assert_eq!(
                page.backend(),
                "b1",
                "request {request} of a session bound to the draining backend left it"
            );
            assert_eq!(
                page.set_cookies(),
                Vec::<String>::new(),
                "a kept binding was re-sent"
            );
        }
        let reached = new_sessions(&url, 8).await;
        assert!(
            !reached.iter().any(|backend| backend == "b1"),
            "a new session went to the draining backend: {reached:?}"
        );

        pool.set_admin_state(pool.find_name("b1").unwrap(), AdminState::Maint);
        let page = session.get(&url).await;
        assert_eq!(page.status, StatusCode::OK);
        assert_ne!(page.backend(), "b1", "maint kept a bound session");
        assert_eq!(
            serverid_set(&page).as_deref(),
            Some(page.backend()),
            "the redispatched session's cookie does not name its new backend"
        );
        assert_eq!(session.get(&url).await.backend(), page.backend());
        assert_eq!(backends[0].count(), 3, "b1 saw traffic in maint");
        stickyd.shutdown().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Backup backends and failback
// ---------------------------------------------------------------------------------------------

/// Two primaries `b1`, `b2` and the backup `b3`, with `settings` (before the affinity table).
async fn with_backup(settings: &str) -> (Vec<TestBackend>, Stickyd) {
    let backends = common::spawn_backends(3).await;
    let mut entries = plain(&backends);
    entries[2].2 = "backup = true\n";
    let stickyd = Stickyd::start(&config(&[service(
        "web",
        &format!("{settings}{INSERT}"),
        &entries,
    )]))
    .await;
    (backends, stickyd)
}

#[tokio::test]
async fn the_backup_serves_when_every_primary_is_down_and_the_session_binds_to_it() {
    within_timeout(async {
        let (backends, stickyd) = with_backup("ejection_time = \"60s\"\n").await;
        let url = stickyd.url("web", "/");
        backends[0].stop();
        backends[1].stop();
        let mut browser = Browser::new();
        let page = browser.get(&url).await;
        assert_eq!(page.status, StatusCode::OK, "{page:?}");
        assert_eq!(page.backend(), "b3");
        assert_eq!(browser.jar["SERVERID"], "b3");
        let pool = stickyd.pool("web");
        assert!(pool.get(0).is_ejected() && pool.get(1).is_ejected());
        for _ in 0..3 {
            let page = browser.get(&url).await;
            assert_eq!((page.status, page.backend()), (StatusCode::OK, "b3"));
            assert_eq!(page.set_cookies(), Vec::<String>::new());
        }
        assert_eq!(new_sessions(&url, 3).await, vec!["b3"; 3]);
        stickyd.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_session_on_the_backup_fails_back_to_a_primary_that_returns() {
    within_timeout(async {
        let (backends, stickyd) = with_backup("").await;
        let url = stickyd.url("web", "/");
        let pool = stickyd.pool("web");
        let reached = new_sessions(&url, 8).await;
        assert!(
            !reached.iter().any(|backend| backend == "b3"),
            "a new session went to the backup while primaries were up: {reached:?}"
        );
        let b2_before = backends[1].count();

        pool.set_admin_state(0, AdminState::Maint);
        pool.set_admin_state(1, AdminState::Maint);
        let mut browser = Browser::new();
        assert_eq!(browser.get(&url).await.backend(), "b3");
        assert_eq!(browser.jar["SERVERID"], "b3");
        assert_eq!(browser.get(&url).await.backend(), "b3");

        pool.set_admin_state(0, AdminState::Ready);
        let page = browser.get(&url).await;
        assert_eq!(page.status, StatusCode::OK);
        assert_eq!(page.backend(), "b1", "the session stayed on the backup");
        assert_eq!(serverid_set(&page).as_deref(), Some("b1"));
        let page = browser.get(&url).await;
        assert_eq!(page.backend(), "b1");
        assert_eq!(page.set_cookies(), Vec::<String>::new());
        assert_eq!(backends[1].count(), b2_before, "b2 saw traffic in maint");
        stickyd.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn without_failback_a_session_stays_on_the_backup_when_a_primary_returns() {
    within_timeout(async {
        let (_backends, stickyd) = with_backup("failback = false\n").await;
        let url = stickyd.url("web", "/");
        let pool = stickyd.pool("web");
        pool.set_admin_state(0, AdminState::Maint);
        pool.set_admin_state(1, AdminState::Maint);
        let mut browser = Browser::new();
        assert_eq!(browser.get(&url).await.backend(), "b3");

        pool.set_admin_state(0, AdminState::Ready);
        for _ in 0..3 {
            let page = browser.get(&url).await;
            assert_eq!((page.status, page.backend()), (StatusCode::OK, "b3"));
            assert_eq!(page.set_cookies(), Vec::<String>::new());
        }
        assert_eq!(
            new_sessions(&url, 3).await,
            vec!["b1"; 3],
            "new sessions must go to the usable primary, not the backup"
        );
        stickyd.shutdown().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Passive ejection on 5xx
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_backend_answering_5xx_is_ejected_after_passive_failures_in_a_row() {
    within_timeout(async {
        let (f1, f2) = (
            TestBackend::spawn("f1").await,
            TestBackend::spawn("f2").await,
        );
        let settings = format!(
            "ejection_time = \"60s\"\n[service.health]\npassive_5xx = true\npassive_failures = 2\n{INSERT}"
        );
        let stickyd =
            Stickyd::start(&config(&[service("web", &settings, &[entry(&f1), entry(&f2)])])).await;
        let url = stickyd.url("web", "/");
        let pool = stickyd.pool("web");
        let index = pool.find_name("f1").unwrap();

        f1.set_failing(true);
        let mut session = bound_to("f1");
        let first = session.get(&url).await;
        assert_eq!((first.status, first.backend()), (StatusCode::INTERNAL_SERVER_ERROR, "f1"));
        assert!(!pool.get(index).is_ejected(), "ejected after one 5xx of two");
        let second = session.get(&url).await;
        assert_eq!((second.status, second.backend()), (StatusCode::INTERNAL_SERVER_ERROR, "f1"));
        await_state(&pool, "f1 is ejected", |pool| pool.get(index).is_ejected()).await;

        assert_eq!(
            new_sessions(&url, 6).await,
            vec!["f2"; 6],
            "a new session went to the ejected backend"
        );
        let page = session.get(&url).await;
        assert_eq!((page.status, page.backend()), (StatusCode::OK, "f2"));
        assert_eq!(serverid_set(&page).as_deref(), Some("f2"));
        stickyd.shutdown().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Reload
// ---------------------------------------------------------------------------------------------

/// What the load clients have done so far, all together.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    requests: u64,
    failures: u64,
    /// Clients whose first request has been answered (whose session is bound).
    bound: usize,
}

/// What one load client saw.
#[derive(Debug, Default)]
struct SessionLog {
    /// The backends that served the session, each change appended.
    backends: Vec<String>,
    requests: u64,
    /// The first few failures, for the assertion message.
    failures: Vec<String>,
    failed: u64,
}

/// One browser-like client: GETs `url` with its `SERVERID` cookie until `stop` is cancelled
/// (never cancelling a request in flight), reporting each request to `progress`. It keeps its
/// connection alive, or with `fresh_connections` opens a new one for every request (so the
/// accept loop is exercised across reloads too).
async fn keep_browsing(
    url: String,
    fresh_connections: bool,
    progress: Arc<watch::Sender<Progress>>,
    stop: CancellationToken,
) -> SessionLog {
    let mut builder = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
    if fresh_connections {
        builder.pool_max_idle_per_host(0);
    }
    let client = builder.build_http::<Empty<Bytes>>();
    let mut serverid: Option<String> = None;
    let mut log = SessionLog::default();
    while !stop.is_cancelled() {
        let mut request = Request::get(&url);
        if let Some(id) = &serverid {
            request = request.header(header::COOKIE, format!("SERVERID={id}"));
        }
        let failure = match client.request(request.body(Empty::new()).unwrap()).await {
            Err(error) => Some(format!("request {}: {error:?}", log.requests + 1)),
            Ok(response) => {
                let (head, body) = response.into_parts();
                let body = body.collect().await;
                for field in head.headers.get_all(header::SET_COOKIE) {
                    if let Some(rest) = field.to_str().unwrap().strip_prefix("SERVERID=") {
                        serverid = Some(rest.split(';').next().unwrap().to_string());
                    }
                }
                let backend = head
                    .headers
                    .get("x-backend")
                    .map_or("", |value| value.to_str().unwrap());
                if head.status != StatusCode::OK || body.is_err() || backend.is_empty() {
                    Some(format!(
                        "request {}: status {}, body {:?}",
                        log.requests + 1,
                        head.status,
                        body.map(|body| body.to_bytes())
                    ))
                } else {
                    if log.backends.last().map(String::as_str) != Some(backend) {
                        log.backends.push(backend.to_string());
                    }
                    None
                }
            }
        };
        let first = log.requests == 0;
        log.requests += 1;
        if let Some(failure) = &failure {
            log.failed += 1;
            if log.failures.len() < 5 {
                log.failures.push(failure.clone());
            }
        }
        progress.send_modify(|progress| {
            progress.requests += 1;
            progress.failures += u64::from(failure.is_some());
            progress.bound += usize::from(first);
        });
    }
    log
}

/// Waits until the load clients have sent `by` more requests.
async fn advance(progress: &mut watch::Receiver<Progress>, by: u64) {
    let target = progress.borrow().requests + by;
    progress
        .wait_for(|now| now.requests >= target)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_fail_no_request_and_move_no_session_between_kept_backends() {
    /// Sessions on keep-alive connections, and in all (the rest open a connection per request).
    const KEEP_ALIVE: usize = 8;
    const CLIENTS: usize = 10;
    const PHASE: u64 = 500;
    within_timeout(async {
        let backends = common::spawn_backends(3).await;
        let two = config(&[service("web", INSERT, &plain(&backends[..2]))]);
        let three = config(&[service("web", INSERT, &plain(&backends))]);
        let stickyd = Stickyd::start(&two).await;
        let url = stickyd.url("web", "/");

        let (progress, mut watching) = watch::channel(Progress::default());
        let progress = Arc::new(progress);
        let stop = CancellationToken::new();
        let clients: Vec<_> = (0..CLIENTS)
            .map(|client| {
                tokio::spawn(keep_browsing(
                    url.clone(),
                    client >= KEEP_ALIVE,
                    Arc::clone(&progress),
                    stop.clone(),
                ))
            })
            .collect();
        watching
            .wait_for(|now| now.bound == CLIENTS)
            .await
            .unwrap();
        advance(&mut watching, PHASE).await;

        // (a) The same config.
        stickyd.reload(&two).await;
        advance(&mut watching, PHASE).await;

        // (b) A third backend joins; it takes new sessions.
        stickyd.reload(&three).await;
        advance(&mut watching, PHASE).await;
        let mut on_b3 = None;
        for _ in 0..3 {
            let mut browser = Browser::new();
            if browser.get(&url).await.backend() == "b3" {
                on_b3 = Some(browser);
            }
        }
        let mut on_b3 = on_b3.expect("no new session reached the added backend");

        // (c) The third backend leaves again; its session is redispatched, not failed.
        stickyd.reload(&two).await;
        advance(&mut watching, PHASE).await;
        let page = on_b3.get(&url).await;
        assert_eq!(page.status, StatusCode::OK, "{page:?}");
        assert!(
            ["b1", "b2"].contains(&page.backend()),
            "{}",
            page.backend()
        );
        assert_eq!(on_b3.jar["SERVERID"], page.backend());

        // (d) An invalid config never reaches the runtime.
        let invalid = two.replace("name = \"web\"\n", "name = \"web\"\nfrobnicate = true\n");
        assert!(
            Config::parse(&invalid, "<test>").is_err(),
            "an unknown key was accepted"
        );
        advance(&mut watching, PHASE).await;
        assert_eq!(stickyd.runtime.reload_counts(), (3, 0));

        stop.cancel();
        let mut logs = Vec::with_capacity(CLIENTS);
        for client in clients {
            logs.push(client.await.expect("load client panicked"));
        }
        let requests: u64 = logs.iter().map(|log| log.requests).sum();
        let failed: u64 = logs.iter().map(|log| log.failed).sum();
        let kept = logs.iter().filter(|log| log.backends.len() == 1).count();
        let first: Vec<&str> = logs.iter().map(|log| log.backends[0].as_str()).collect();
        println!(
            "hitless reload: {requests} requests from {CLIENTS} sessions ({KEEP_ALIVE} on keep-alive \
             connections, {} with a new connection per request) across 3 reloads (same config, +b3, \
             -b3) and 1 rejected config; {failed} failed; {kept}/{CLIENTS} sessions kept their \
             backend (first backends: {first:?})",
            CLIENTS - KEEP_ALIVE
        );
        let failures: Vec<&String> = logs.iter().flat_map(|log| &log.failures).collect();
        assert_eq!(failed, 0, "failed requests: {failures:?}");
        let moved: Vec<&Vec<String>> = logs
            .iter()
            .map(|log| &log.backends)
            .filter(|backends| backends.len() != 1)
            .collect();
        assert!(moved.is_empty(), "sessions moved: {moved:?}");
        assert!(
            first.iter().all(|backend| ["b1", "b2"].contains(backend)),
            "{first:?}"
        );
        assert!(requests >= 5 * PHASE, "only {requests} requests");
        stickyd.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_reload_adds_a_service_with_its_listener_and_removes_another() {
    within_timeout(async {
        let backends = common::spawn_backends(3).await;
        let web = service("web", INSERT, &plain(&backends[..1]));
        let stickyd = Stickyd::start(&config(&[
            web.clone(),
            service("old", INSERT, &plain(&backends[1..2])),
        ]))
        .await;
        let old = stickyd.runtime.local_addrs("old")[0];
        let web_url = stickyd.url("web", "/");
        assert_eq!(
            Browser::new().get(&stickyd.url("old", "/")).await.backend(),
            "b2"
        );

        stickyd
            .reload(&config(&[
                web,
                service("new", INSERT, &plain(&backends[2..3])),
            ]))
            .await;
        let page = Browser::new().get(&stickyd.url("new", "/")).await;
        assert_eq!((page.status, page.backend()), (StatusCode::OK, "b3"));
        assert_eq!(stickyd.url("web", "/"), web_url, "a kept listener moved");
        assert_eq!(Browser::new().get(&web_url).await.backend(), "b1");
        assert!(stickyd.runtime.router("old").is_none());
        assert!(stickyd.runtime.local_addrs("old").is_empty());
        // The old accept loop stops on its own schedule: poll until the port refuses.
        loop {
            match TcpStream::connect(old).await {
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => break,
                Err(error) => panic!("connecting to the removed listener: {error}"),
                Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        }
        assert_eq!(stickyd.runtime.reload_counts(), (1, 0));
        stickyd.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_reload_that_cannot_bind_a_new_listener_changes_nothing() {
    within_timeout(async {
        let backends = common::spawn_backends(2).await;
        let web = service("web", INSERT, &plain(&backends[..1]));
        let stickyd = Stickyd::start(&config(std::slice::from_ref(&web))).await;
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let clash = service("clash", INSERT, &plain(&backends[1..]))
            .replace("127.0.0.1:0", &taken.local_addr().unwrap().to_string());
        let web_with_two = service("web", INSERT, &plain(&backends));
        let result = stickyd
            .runtime
            .reload(parse(&config(&[web_with_two, clash])))
            .await;
        assert!(result.is_err(), "a taken address was bound");
        assert_eq!(stickyd.runtime.reload_counts(), (0, 1));
        assert!(stickyd.runtime.router("clash").is_none());
        assert_eq!(
            stickyd.pool("web").backends().len(),
            1,
            "the failed reload changed the web service"
        );
        assert_eq!(
            new_sessions(&stickyd.url("web", "/"), 2).await,
            vec!["b1"; 2]
        );
        stickyd.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_reload_keeps_the_stick_table() {
    within_timeout(async {
        let backends = common::spawn_backends(3).await;
        let stickyd =
            Stickyd::start(&config(&[service("web", STICK, &plain(&backends[..2]))])).await;
        let url = stickyd.url("web", "/session/sid");
        let mut browser = Browser::new();
        let bound = browser.get(&url).await.backend().to_string();
        assert_eq!(browser.jar["sid"], format!("{bound}-1"));
        assert_eq!(browser.get(&url).await.backend(), bound);

        stickyd
            .reload(&config(&[service("web", STICK, &plain(&backends))]))
            .await;
        // Drain the session's backend: only a stick-table entry can still send the session
        // there; a forgotten session would be balanced as new, never to a draining backend.
        let pool = stickyd.pool("web");
        assert_eq!(pool.backends().len(), 3, "the reload did not apply");
        pool.set_admin_state(pool.find_name(&bound).unwrap(), AdminState::Drain);
        for _ in 0..3 {
            let page = browser.get(&url).await;
            assert_eq!(page.status, StatusCode::OK);
            assert_eq!(
                page.backend(),
                bound,
                "the session lost its backend on reload"
            );
        }
        let reached = new_sessions(&url, 3).await;
        assert!(!reached.contains(&bound), "{reached:?}");
        stickyd.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_reload_that_turns_active_checks_off_brings_a_down_backend_back() {
    within_timeout(async {
        let (h1, h2) = (TestBackend::spawn("h1").await, TestBackend::spawn("h2").await);
        let health = "[service.health]\npath = \"/health\"\ninterval = \"50ms\"\ntimeout = \"200ms\"\nrise = 2\nfall = 2\n";
        let stickyd = Stickyd::start(&config(&[service("web", &format!("{health}{INSERT}"), &[entry(&h1), entry(&h2)])])).await;
        h1.set_healthy(false);
        await_state(&stickyd.pool("web"), "h1 is unhealthy", |pool| !pool.get(0).is_healthy()).await;
        stickyd.reload(&config(&[service("web", INSERT, &[entry(&h1), entry(&h2)])])).await;
        await_state(&stickyd.pool("web"), "h1 counts as up without checks", |pool| pool.get(0).is_healthy()).await;
        stickyd.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_pool_changes_receiver_hears_changes_after_a_reload() {
    within_timeout(async {
        let backends = common::spawn_backends(2).await;
        let text = config(&[service("web", INSERT, &plain(&backends))]);
        let stickyd = Stickyd::start(&text).await;
        let mut changes = stickyd.pool("web").changes();
        changes.mark_unchanged();
        stickyd.reload(&text).await;
        stickyd.pool("web").set_admin_state(0, AdminState::Maint);
        assert!(
            changes.has_changed().unwrap_or(false),
            "a receiver taken before the reload missed the change"
        );
        stickyd.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_raises_max_connections_serves_a_waiting_client_at_once() {
    within_timeout(async {
        let backends = common::spawn_backends(1).await;
        let with_cap = |cap: usize| {
            let limits = format!("[service.limits]\nmax_connections = {cap}\n");
            config(&[service("web", &limits, &plain(&backends))])
        };
        let stickyd = Stickyd::start(&with_cap(1)).await;
        let address = stickyd.runtime.local_addrs("web")[0];
        let mut held = RawConn::open(address).await;
        assert_eq!(held.get("/").await.status_line(), "HTTP/1.1 200");
        let mut waiting = RawConn::open(address).await;
        let answer = tokio::spawn(async move { waiting.get("/").await });
        // The one slot is held: the second client waits (the absence of an answer can only be
        // observed over time).
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(
            !answer.is_finished(),
            "a client was served past max_connections"
        );
        stickyd.reload(&with_cap(2)).await;
        let served = tokio::time::timeout(std::time::Duration::from_secs(5), answer)
            .await
            .expect("the waiting client was not served after the reload raised max_connections")
            .unwrap();
        assert_eq!(served.status_line(), "HTTP/1.1 200", "{served:?}");
        drop(held);
        stickyd.shutdown().await;
    })
    .await;
}
