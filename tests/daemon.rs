//! The daemon as an operator runs it: access log, graceful shutdown on SIGTERM.

mod common;

use http_body_util::BodyExt;

use common::raw::RawConn;
use common::{Browser, TestBackend, config, start_proxy, within_timeout};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_lets_in_flight_requests_finish() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let proxy = start_proxy(&config(&[&backend], "")).await;
        let addr = proxy.addr;
        let body = common::open_stream(&proxy).await;
        let stopping = tokio::spawn(proxy.shutdown());
        // The listener closes at once: poll until a connection is refused.
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
        assert!(
            !stopping.is_finished(),
            "stickyd stopped before its in-flight request finished"
        );
        backend.release_stream().await;
        assert_eq!(body.collect().await.unwrap().to_bytes(), "last\n");
        stopping.await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_logs_one_access_line_per_request_and_exits_0_on_sigterm() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let text = format!(
            "log_level = \"info\"\nthreads = 1\n{}",
            config(&[&backend], "[service.affinity]\nstrategy = \"insert\"\n")
        );
        let mut daemon = common::Daemon::start_on("daemon.toml", &text);
        let address = daemon.address().await;
        let mut browser = Browser::new();
        assert_eq!(
            browser
                .get(&format!("http://{address}/hello?x=1"))
                .await
                .status,
            200
        );
        assert_eq!(
            browser.get(&format!("http://{address}/hello")).await.status,
            200
        );
        let access = [
            daemon.line_with("stickyd::access").await,
            daemon.line_with("stickyd::access").await,
        ];
        for (line, affinity) in access.iter().zip(["new", "hit"]) {
            for field in [
                "client=127.0.0.1",
                "method=GET",
                "path=/hello",
                "status=200",
                "service=web",
                "backend=b1",
            ] {
                assert!(line.contains(field), "{field} missing from {line}");
            }
            assert!(line.contains(&format!("affinity={affinity}")), "{line}");
            assert!(line.contains(" ms="), "{line}");
        }
        assert_eq!(
            daemon.stop().await,
            Some(0),
            "SIGTERM did not end the daemon cleanly"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_journal_lines_carry_their_priority_and_json_access_lines_carry_every_field() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let service = config(&[&backend], "[service.affinity]\nstrategy = \"insert\"\n");
        let text = |format: &str| format!("threads = 1\naccess_log = \"{format}\"\n{service}");
        let mut daemon = common::Daemon::start_under_journal("journal.toml", &text("json"));
        let listening = daemon.line_with("listening service=").await;
        assert!(
            listening.starts_with("<6>stickyd::runtime: listening"),
            "an info line starts with <6> and has no timestamp: {listening}"
        );
        let address: std::net::SocketAddr = listening
            .split("address=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|address| address.parse().ok())
            .expect("an address");

        let mut connection = RawConn::open(address).await;
        connection
            .send(
                b"POST /form?x=1 HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 5\r\n\r\nhello",
            )
            .await
            .unwrap();
        let reply = connection.response().await;
        assert_eq!(reply.status, 200);
        let access = daemon.line_with("\"path\":\"/form\"").await;
        let json = access
            .strip_prefix("<6>")
            .unwrap_or_else(|| panic!("an access line starts with <6>: {access}"));
        let line: serde_json::Value = serde_json::from_str(json)
            .unwrap_or_else(|error| panic!("not one JSON object ({error}): {json}"));
        for (field, want) in [
            ("client", serde_json::json!("127.0.0.1")),
            ("method", serde_json::json!("POST")),
            ("host", serde_json::json!("shop.example")),
            ("path", serde_json::json!("/form")),
            ("version", serde_json::json!("HTTP/1.1")),
            ("status", serde_json::json!(200)),
            ("bytes_in", serde_json::json!(5)),
            ("bytes_out", serde_json::json!(reply.body.len())),
            ("service", serde_json::json!("web")),
            ("backend", serde_json::json!("b1")),
            ("affinity", serde_json::json!("new")),
            ("tls", serde_json::json!(false)),
        ] {
            assert_eq!(line[field], want, "{field} in {json}");
        }
        let (head, total) = (line["ms"].as_f64(), line["total_ms"].as_f64());
        assert!(
            matches!((head, total), (Some(head), Some(total)) if 0.0 < head && head <= total),
            "ms and total_ms are numbers, the head first: {json}"
        );
        assert!(
            line.get("timestamp").is_none(),
            "the journal stamps lines: {json}"
        );

        // A warning about a backend names its service.
        backend.stop_and_wait().await;
        assert!(connection.get("/").await.status >= 500);
        let failed = daemon.line_with("request failed").await;
        assert!(
            failed.starts_with("<4>"),
            "a warning starts with <4>: {failed}"
        );
        assert!(failed.contains("service=web"), "{failed}");

        // An error: a reload of a config that does not load.
        let path = common::temp_file("journal.toml");
        std::fs::write(&path, "threads = [").unwrap();
        daemon.signal("-HUP");
        let refused = daemon.line_with("reload refused").await;
        assert!(
            refused.starts_with("<3>"),
            "an error starts with <3>: {refused}"
        );

        // A reload switches the access log back to text.
        let backend = TestBackend::spawn("b1").await;
        let service = config(&[&backend], "[service.affinity]\nstrategy = \"insert\"\n");
        std::fs::write(
            &path,
            format!("threads = 1\naccess_log = \"text\"\n{service}"),
        )
        .unwrap();
        daemon.signal("-HUP");
        daemon.line_with("reload applied").await;
        assert_eq!(RawConn::open(address).await.get("/after").await.status, 200);
        let access = daemon.line_with("path=/after").await;
        assert!(
            access
                .starts_with("<6>stickyd::access: client=127.0.0.1 method=GET host=a path=/after"),
            "{access}"
        );
        assert_eq!(daemon.stop().await, Some(0));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_stream_that_is_not_stderr_leaves_lines_plain() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let path = common::temp_file("not-journal.toml");
        std::fs::write(&path, config(&[&backend], "")).unwrap();
        // As under a unit whose ExecStart redirects stderr to a file: the variable is inherited
        // and names the journal's stream, which stderr no longer is.
        use std::os::unix::fs::MetadataExt;
        let other = common::temp_file("not-journal.stream");
        std::fs::write(&other, "").unwrap();
        let other = std::fs::metadata(&other).unwrap();
        let stream = format!("{}:{}", other.dev(), other.ino());
        let mut daemon = common::Daemon::start_with_env(
            &path,
            &[("JOURNAL_STREAM", std::path::Path::new(&stream))],
        );
        let listening = daemon.line_with("listening service=").await;
        assert!(
            listening.starts_with(|first: char| first.is_ascii_digit()),
            "a plain line starts with its timestamp: {listening}"
        );
        assert_eq!(daemon.stop().await, Some(0));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_reloading_and_stopping_even_around_a_refused_reload() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let dir = std::env::temp_dir().join(format!("stickyd-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (socket_path, config_path) = (dir.join("notify.sock"), dir.join("stickyd.toml"));
        let _ = std::fs::remove_file(&socket_path);
        let notify = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
        let good = config(&[&backend], "");
        std::fs::write(&config_path, &good).unwrap();
        let daemon =
            common::Daemon::start_with_env(&config_path, &[("NOTIFY_SOCKET", &socket_path)]);
        let mut buffer = [0u8; 256];
        let mut next = async || {
            let read = notify.recv(&mut buffer).await.unwrap();
            String::from_utf8_lossy(&buffer[..read])
                .trim_end()
                .to_string()
        };
        assert_eq!(next().await, "READY=1");
        let signal = |name: &str| daemon.signal(name);
        std::fs::write(&config_path, "this is not toml").unwrap();
        signal("-HUP");
        assert!(next().await.starts_with("RELOADING=1"));
        let refused = next().await;
        assert!(
            refused.starts_with("READY=1\nSTATUS=reload refused, running the previous config: ")
                && refused.contains("stickyd.toml:1:"),
            "a refused reload still reports ready, and says why in the unit's status: {refused}"
        );
        std::fs::write(&config_path, &good).unwrap();
        signal("-HUP");
        assert!(next().await.starts_with("RELOADING=1"));
        assert_eq!(next().await, "READY=1\nSTATUS=reload applied");
        let stopped = tokio::spawn(daemon.stop());
        assert_eq!(next().await, "STOPPING=1");
        assert_eq!(stopped.await.unwrap(), Some(0));
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

/// The CPUs a thread of `pid` may run on, as `/proc` lists them (`0-1`, `1`).
fn allowed_cpus(pid: u32, thread: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{thread}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string()
}

/// The thread ids of `pid`'s worker threads.
fn worker_threads(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|task| task.unwrap().file_name().into_string().unwrap())
        .filter(|thread| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{thread}/comm"))
                .is_ok_and(|name| name.trim_end() == stickyd::workers::THREAD_NAME)
        })
        .collect()
}

/// The voluntary context switches of each worker thread of `pid`, by thread id. A worker
/// with nothing to do sleeps in `epoll_wait`, so its count stays put.
fn worker_switches(pid: u32) -> std::collections::BTreeMap<String, u64> {
    worker_threads(pid)
        .into_iter()
        .map(|thread| {
            let status =
                std::fs::read_to_string(format!("/proc/{pid}/task/{thread}/status")).unwrap();
            let switches = status
                .lines()
                .find_map(|line| line.strip_prefix("voluntary_ctxt_switches:"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            (thread, switches)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_threads_both_workers_serve_connections_and_sessions_stay_sticky() {
    within_timeout(async {
        let (b1, b2) = (TestBackend::spawn("b1").await, TestBackend::spawn("b2").await);
        let text = format!(
            "threads = 2\n{}",
            config(&[&b1, &b2], "[service.affinity]\nstrategy = \"insert\"\n")
        );
        let mut daemon = common::Daemon::start_on("workers.toml", &text);
        let address = daemon.address().await;
        let pid = daemon.child.id();
        let before = worker_switches(pid);
        assert_eq!(before.len(), 2, "two worker threads: {before:?}");
        // Four keep-alive connections: each goes to the worker with the fewest, two each.
        let mut connections = Vec::new();
        for _ in 0..4 {
            connections.push(RawConn::open(address.parse().unwrap()).await);
        }
        for connection in &mut connections {
            let first = connection.get("/").await;
            assert_eq!(first.status, 200);
            let cookie = first
                .header("set-cookie")
                .and_then(|value| value.split(';').next())
                .expect("an insert cookie")
                .to_string();
            for _ in 0..50 {
                connection
                    .send(format!("GET / HTTP/1.1\r\nHost: a\r\nCookie: {cookie}\r\n\r\n").as_bytes())
                    .await
                    .unwrap();
                let reply = connection.response().await;
                assert_eq!(reply.status, 200);
                assert_eq!(reply.backend(), first.backend(), "the session stays on its backend");
            }
        }
        let after = worker_switches(pid);
        for (thread, switches) in &after {
            let served = switches - before[thread];
            assert!(
                served >= 50,
                "worker {thread} woke only {served} times for 204 requests over 4 connections: they were not spread"
            );
        }
        assert_eq!(daemon.stop().await, Some(0));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_threads_pins_each_worker_thread_to_one_core() {
    within_timeout(async {
        let cores = std::thread::available_parallelism().unwrap().get();
        // Two threads at least, so the worker threads start even on one core.
        let threads = cores.max(2);
        let backend = TestBackend::spawn("b1").await;
        let text = format!(
            "threads = {threads}\npin_threads = true\n{}",
            config(&[&backend], "")
        );
        let mut daemon = common::Daemon::start_on("pinned.toml", &text);
        let address = daemon.address().await;
        assert_eq!(
            Browser::new()
                .get(&format!("http://{address}/"))
                .await
                .status,
            200
        );
        let pid = daemon.child.id();
        let workers = worker_threads(pid);
        assert_eq!(
            workers.len(),
            threads,
            "one worker thread per configured thread"
        );
        let mut pinned: Vec<String> = workers
            .iter()
            .map(|thread| allowed_cpus(pid, thread))
            .collect();
        pinned.sort();
        pinned.dedup();
        assert_eq!(
            pinned.len(),
            cores,
            "the workers are spread over every core: {pinned:?}"
        );
        assert!(
            pinned.iter().all(|cpus| cpus.parse::<usize>().is_ok()),
            "a worker may run on more than one core: {pinned:?}"
        );
        assert_eq!(daemon.stop().await, Some(0));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_a_new_log_level() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let service = config(&[&backend], "");
        let path = common::temp_file("log-level.toml");
        // Quiet but for the lines this test waits on: no access log.
        let quiet = "warn,stickyd::runtime=info,stickyd::daemon=info";
        std::fs::write(&path, format!("log_level = \"{quiet}\"\n{service}")).unwrap();
        let mut daemon = common::Daemon::start(&path);
        let address = daemon.address().await;
        let get = async |path: &str| Browser::new().get(&format!("http://{address}{path}")).await;
        assert_eq!(get("/before").await.status, 200);
        std::fs::write(&path, format!("log_level = \"info\"\n{service}")).unwrap();
        daemon.signal("-HUP");
        daemon.line_with("log level changed").await;
        assert_eq!(get("/after").await.status, 200);
        let access = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            daemon.line_with("stickyd::access"),
        )
        .await
        .expect("no access line after the reload to log_level \"info\"");
        assert!(
            access.contains("path=/after"),
            "the first access line is not the request after the reload: {access}"
        );
        assert_eq!(daemon.stop().await, Some(0));
    })
    .await;
}

/// GETs `url` with `Authorization: Bearer token`; returns the status.
async fn get_with_token(url: &str, token: &str) -> http::StatusCode {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let request = http::Request::get(url)
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Empty::new())
        .unwrap();
    client.request(request).await.unwrap().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_every_key_but_threads_and_names_those_for_a_restart() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let (path, token_file) = (
            common::temp_file("restart-only.toml"),
            common::temp_file("restart-only.token"),
        );
        std::fs::write(&token_file, "first-token\n").unwrap();
        let admin = format!(
            "[admin]\nbind = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n",
            token_file.display()
        );
        let write = |threads: usize, service: &str| {
            std::fs::write(&path, format!("threads = {threads}\n{admin}{service}")).unwrap();
        };
        write(1, &config(&[&backend], ""));
        let mut daemon = common::Daemon::start(&path);
        // The service listens before the admin listener starts.
        let address = daemon.address().await;
        let admin_listening = daemon.line_with("admin listening").await;
        let admin_address = admin_listening
            .split("address=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
        let status = format!("http://{admin_address}/status");
        assert_eq!(get_with_token(&status, "first-token").await, 200);
        std::fs::write(&token_file, "second-token\n").unwrap();
        write(2, &config(&[&backend], "debug_header = true"));
        daemon.signal("-HUP");
        let line = daemon.line_with("reload applied").await;
        assert!(
            line.contains("needs a restart to take effect: threads (1 -> 2)"),
            "{line}"
        );
        let page = Browser::new().get(&format!("http://{address}/")).await;
        assert!(
            page.headers.contains_key("x-stickyd"),
            "a service key did not apply with a restart-only one beside it"
        );
        assert_eq!(
            (
                get_with_token(&status, "first-token").await,
                get_with_token(&status, "second-token").await
            ),
            (http::StatusCode::UNAUTHORIZED, http::StatusCode::OK),
            "the admin token file was not re-read"
        );
        assert_eq!(daemon.stop().await, Some(0));
        let _ = std::fs::remove_file(&token_file);
    })
    .await;
}
