//! The daemon as an operator runs it: access log, graceful shutdown on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

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
            "log_level = \"info\"\n{}",
            config(&[&backend], "[service.affinity]\nstrategy = \"insert\"\n")
        );
        let path = std::env::temp_dir().join(format!("stickyd-daemon-{}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        let mut daemon = KillOnDrop(
            Command::new(env!("CARGO_BIN_EXE_stickyd"))
                .arg("--config")
                .arg(&path)
                .env_remove("RUST_LOG")
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let (lines_in, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
        let stderr = daemon.0.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let _ = lines_in.send(line.unwrap());
            }
        });
        let listening = loop {
            let line = lines
                .recv()
                .await
                .expect("the daemon exited before listening");
            if line.contains("listening") {
                break line;
            }
        };
        let address = listening
            .split("address=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
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
        let mut access = Vec::new();
        while access.len() < 2 {
            let line = lines.recv().await.expect("the daemon exited");
            if line.contains("stickyd::access") {
                access.push(line);
            }
        }
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
        let killed = Command::new("kill")
            .args(["-TERM", &daemon.0.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let status = tokio::task::spawn_blocking(move || daemon.0.wait().unwrap())
            .await
            .unwrap();
        assert_eq!(
            status.code(),
            Some(0),
            "SIGTERM did not end the daemon cleanly"
        );
    })
    .await;
}

/// A child process that is killed if the test fails before it exits.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
        let mut daemon = KillOnDrop(
            Command::new(env!("CARGO_BIN_EXE_stickyd"))
                .arg("--config")
                .arg(&config_path)
                .env("NOTIFY_SOCKET", &socket_path)
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let mut buffer = [0u8; 256];
        let mut next = async || {
            let read = notify.recv(&mut buffer).await.unwrap();
            String::from_utf8_lossy(&buffer[..read])
                .trim_end()
                .to_string()
        };
        assert_eq!(next().await, "READY=1");
        let pid = daemon.0.id().to_string();
        let signal = |name: &str| {
            assert!(
                Command::new("kill")
                    .args([name, &pid])
                    .status()
                    .unwrap()
                    .success()
            )
        };
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
        signal("-TERM");
        assert_eq!(next().await, "STOPPING=1");
        let status = tokio::task::spawn_blocking(move || daemon.0.wait().unwrap())
            .await
            .unwrap();
        assert_eq!(status.code(), Some(0));
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}
