//! The daemon as an operator runs it: access log, graceful shutdown on SIGTERM.

mod common;

use http_body_util::BodyExt;

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
        assert_eq!(
            next().await,
            "READY=1",
            "a refused reload still reports ready"
        );
        std::fs::write(&config_path, &good).unwrap();
        signal("-HUP");
        assert!(next().await.starts_with("RELOADING=1"));
        assert_eq!(next().await, "READY=1");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_threads_pins_each_worker_thread_to_one_core() {
    within_timeout(async {
        let cores = std::thread::available_parallelism().unwrap().get();
        // Two threads at least, so the multi-thread runtime runs even on one core.
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
        let workers: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .map(|task| task.unwrap().file_name().into_string().unwrap())
            .filter(|thread| {
                std::fs::read_to_string(format!("/proc/{pid}/task/{thread}/comm"))
                    .is_ok_and(|name| name.starts_with("tokio-rt-worker"))
            })
            .collect();
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
