//! Shared test harness: in-process backends on port 0 ([`TestBackend`], [`RawBackend`]),
//! stickyd in process, a cookie-keeping client, a raw client ([`raw`]), and the rule for tests
//! that need a real program.
#![allow(dead_code)] // each test file uses its own part of the harness

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use tokio::sync::{mpsc, oneshot};

pub mod admin;
mod backend;
pub mod raw;
mod raw_backend;
mod real_programs;
pub mod redis;
#[allow(unused_imports)] // each test file uses its own part of the harness
pub use backend::*;
#[allow(unused_imports)] // each test file uses its own part of the harness
pub use raw_backend::*;
#[allow(unused_imports)] // each test file uses its own part of the harness
pub use real_programs::*;

/// Every test body runs under this bound, so a hang fails instead of stalling CI.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `test` and fails if it takes longer than [`TEST_TIMEOUT`].
pub async fn within_timeout<F: std::future::Future>(test: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test timed out")
}

/// stickyd running in this process; stops when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    stopped: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// Asks stickyd to shut down gracefully and waits until it has.
    pub async fn shutdown(mut self) {
        self.stop.take().map(|stop| stop.send(()));
        if let Some(stopped) = self.stopped.take() {
            stopped.await.expect("stickyd task panicked");
        }
    }

    /// The proxy's URL for `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.take().map(|stop| stop.send(()));
    }
}

/// Parses `toml` as a stickyd config (listen addresses "127.0.0.1:0"), binds, and runs stickyd
/// in a spawned task. Panics with the config error if the config is invalid.
pub async fn start_proxy(toml: &str) -> Proxy {
    let config =
        stickyd::config::Config::parse(toml, "<test>").unwrap_or_else(|error| panic!("{error}"));
    let listeners = stickyd::server::bind(&config)
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listeners[0].local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        stickyd::runtime::run(&config, listeners, async {
            let _ = stopped.await;
        })
        .await;
    });
    Proxy {
        addr,
        stop: Some(stop),
        stopped: Some(task),
    }
}

/// A config with one service `web` on 127.0.0.1:0 over `backends`, with `extra` TOML lines
/// added to the `[[service]]` table (balance, timeouts, then `[service.affinity]`).
pub fn config(backends: &[&TestBackend], extra: &str) -> String {
    let mut text = format!("[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\n{extra}\n");
    for backend in backends {
        text.push_str(&format!(
            "[[service.backend]]\nname = \"{}\"\naddress = \"{}\"\n",
            backend.name, backend.addr
        ));
    }
    text
}

/// Starts `count` backends named `b1`, `b2`, ...
pub async fn spawn_backends(count: usize) -> Vec<TestBackend> {
    let mut backends = Vec::with_capacity(count);
    for n in 1..=count {
        backends.push(TestBackend::spawn(&format!("b{n}")).await);
    }
    backends
}

/// Starts stickyd over all of `backends`, with `extra` as in [`config`].
pub async fn proxy_over(backends: &[TestBackend], extra: &str) -> Proxy {
    start_proxy(&config(&backends.iter().collect::<Vec<_>>(), extra)).await
}

/// Asserts that one browser's 20 requests to `path` all reach one backend and that three new
/// browsers reach three different backends (round-robin over three). Returns the first
/// browser and its backend.
pub async fn assert_sticks_and_spreads(proxy: &Proxy, path: &str) -> (Browser, String) {
    let mut browser = Browser::new();
    let bound = browser.get(&proxy.url(path)).await.backend().to_string();
    for request in 2..=20 {
        assert_eq!(
            browser.get(&proxy.url(path)).await.backend(),
            bound,
            "request {request} left the session's backend"
        );
    }
    let mut spread = std::collections::HashSet::new();
    for _ in 0..3 {
        spread.insert(
            Browser::new()
                .get(&proxy.url(path))
                .await
                .backend()
                .to_string(),
        );
    }
    assert_eq!(spread.len(), 3, "three new sessions went to {spread:?}");
    (browser, bound)
}

/// GETs the backend's `/stream` through `proxy` and returns the response body once its first
/// chunk (`first\n`) has arrived, while the backend still holds the rest.
pub async fn open_stream(proxy: &Proxy) -> Incoming {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let mut body = client
        .get(proxy.url("/stream").parse().unwrap())
        .await
        .unwrap()
        .into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(
        first, "first\n",
        "the first chunk waited for the whole body"
    );
    body
}

/// The `Cookie` header value of `jar`, or `None` when it is empty.
pub fn cookie_header(jar: &HashMap<String, String>) -> Option<String> {
    let pairs: Vec<String> = jar
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    (!pairs.is_empty()).then(|| pairs.join("; "))
}

/// `key=value` pairs of a query string, `+` and `%XX` decoded.
pub fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    form_urlencoded::parse(query.as_bytes())
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
}

/// `text` encoded for a query value (`application/x-www-form-urlencoded`).
pub fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// A client with its own cookie jar, like `curl -c jar -b jar`, on keep-alive connections.
pub struct Browser {
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Empty<Bytes>,
    >,
    pub jar: HashMap<String, String>,
}

/// Stores the cookies of a response's `Set-Cookie` fields in `jar`, as a browser does: a
/// `Max-Age=0` (or negative) or empty value deletes the cookie.
pub fn store_cookies(jar: &mut HashMap<String, String>, headers: &HeaderMap) {
    for field in headers.get_all(header::SET_COOKIE) {
        let parsed = cookie::Cookie::parse(field.to_str().unwrap().to_string()).unwrap();
        let expired = parsed
            .max_age()
            .is_some_and(|age| age.is_zero() || age.is_negative());
        if expired || parsed.value().is_empty() {
            jar.remove(parsed.name());
        } else {
            jar.insert(parsed.name().to_string(), parsed.value().to_string());
        }
    }
}

/// A response as a test sees it.
#[derive(Debug)]
pub struct Page {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Page {
    /// The backend that answered (its `x-backend` header), or "" for stickyd's own responses.
    pub fn backend(&self) -> &str {
        self.headers
            .get("x-backend")
            .map_or("", |value| value.to_str().unwrap())
    }

    /// Every `Set-Cookie` of the response.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }
}

impl Browser {
    /// A browser with an empty jar.
    pub fn new() -> Browser {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        Browser {
            client,
            jar: HashMap::new(),
        }
    }

    /// GETs `url` with the jar's cookies and stores the response's cookies (a `Max-Age=0` or
    /// empty value deletes one).
    pub async fn get(&mut self, url: &str) -> Page {
        let mut request = Request::get(url);
        if let Some(cookies) = cookie_header(&self.jar) {
            request = request.header(header::COOKIE, cookies);
        }
        let response = self
            .client
            .request(request.body(Empty::new()).unwrap())
            .await
            .expect("request through stickyd");
        let (head, body) = response.into_parts();
        let body = body.collect().await.expect("response body").to_bytes();
        store_cookies(&mut self.jar, &head.headers);
        Page {
            status: head.status,
            headers: head.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}

/// A new session: a fresh [`Browser`] that GETs `url` once, and the backend that answered.
pub async fn open_session(url: &str) -> (Browser, String) {
    let mut browser = Browser::new();
    let backend = browser.get(url).await.backend().to_string();
    (browser, backend)
}

/// GETs `url` once without a jar, with one `Cookie` field per entry of `fields`, each sent
/// byte for byte (obs-text included: RFC 6265 §5.4 lets user agents send it).
pub async fn get_with_cookie_fields(url: &str, fields: &[&[u8]]) -> Page {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let mut request = Request::get(url).body(Empty::new()).unwrap();
    for field in fields {
        request.headers_mut().append(
            header::COOKIE,
            header::HeaderValue::from_bytes(field).expect("a valid header value"),
        );
    }
    let response = client
        .request(request)
        .await
        .expect("request through stickyd");
    let (head, body) = response.into_parts();
    let body = body.collect().await.expect("response body").to_bytes();
    Page {
        status: head.status,
        headers: head.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// The `Cookie` fields a backend received with one request, as bytes, in order.
pub fn cookie_fields(seen: &Seen) -> Vec<Vec<u8>> {
    seen.headers
        .get_all(header::COOKIE)
        .iter()
        .map(|value| value.as_bytes().to_vec())
        .collect()
}

/// `Ok` without `problems`, else one error listing them all: the verdict of a case.
pub fn verdict(problems: Vec<String>) -> Result<(), String> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// The report of a group of cases (raw inputs): one line per case as it runs (see them with
/// `--nocapture`), then, at [`Report::finish`], one failure listing every case that went wrong.
pub struct Report {
    group: String,
    failures: Vec<String>,
}

impl Report {
    /// Starts the report of `group`.
    pub fn new(group: &str) -> Report {
        println!("\n== {group}");
        Report {
            group: group.to_string(),
            failures: Vec::new(),
        }
    }

    /// Reports one case: its name, what was expected, what it got, what reached a backend, and
    /// its verdict.
    pub fn case(
        &mut self,
        name: &str,
        expected: &str,
        got: &str,
        reached: &str,
        verdict: Result<(), String>,
    ) {
        match verdict {
            Ok(()) => println!("PASS {name:<64} expected {expected:<44} got {got:<24} {reached}"),
            Err(problem) => {
                println!(
                    "FAIL {name:<64} expected {expected:<44} got {got:<24} {reached}\n     -> {problem}"
                );
                self.failures.push(format!(
                    "{name}: expected {expected}, got {got} ({problem})"
                ));
            }
        }
    }

    /// Fails the test listing every case that went wrong.
    pub fn finish(self) {
        assert!(
            self.failures.is_empty(),
            "{}: {} case(s) failed:\n  {}",
            self.group,
            self.failures.len(),
            self.failures.join("\n  ")
        );
    }
}

/// `bytes` with non-ASCII and control bytes escaped (`\xe9`), for assertion messages.
pub fn show(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// A `stickyd` process (the real binary) on a config file, killed if the test ends first.
pub struct Daemon {
    pub child: std::process::Child,
    /// Its stderr, line by line.
    pub lines: mpsc::UnboundedReceiver<String>,
}

impl Daemon {
    /// Starts `stickyd --config path` with `RUST_LOG` unset (the config's `log_level` rules).
    pub fn start(path: &std::path::Path) -> Daemon {
        Daemon::start_with_env(path, &[])
    }

    /// [`Daemon::start`] on `text` written to a temporary file called `name`.
    pub fn start_on(name: &str, text: &str) -> Daemon {
        let path = temp_file(name);
        std::fs::write(&path, text).unwrap();
        Daemon::start(&path)
    }

    /// [`Daemon::start`] with extra environment variables (`NOTIFY_SOCKET`).
    pub fn start_with_env(path: &std::path::Path, env: &[(&str, &std::path::Path)]) -> Daemon {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_stickyd"))
            .arg("--config")
            .arg(path)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start stickyd");
        let stderr = child.stderr.take().expect("piped stderr");
        Daemon {
            child,
            lines: read_lines(stderr),
        }
    }

    /// [`Daemon::start_on`] with stderr connected to the journal as systemd does it:
    /// `JOURNAL_STREAM` names the stderr pipe's device and inode (systemd.exec(5)).
    pub fn start_under_journal(name: &str, text: &str) -> Daemon {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        let path = temp_file(name);
        std::fs::write(&path, text).unwrap();
        let (reader, writer) = std::io::pipe().expect("a pipe");
        let stream = std::fs::metadata(format!("/proc/self/fd/{}", writer.as_raw_fd())).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_stickyd"))
            .arg("--config")
            .arg(&path)
            .env_remove("RUST_LOG")
            .env(
                "JOURNAL_STREAM",
                format!("{}:{}", stream.dev(), stream.ino()),
            )
            .stderr(writer)
            .spawn()
            .expect("start stickyd");
        Daemon {
            child,
            lines: read_lines(reader),
        }
    }

    /// The next stderr line containing `text`.
    pub async fn line_with(&mut self, text: &str) -> String {
        loop {
            let line = self
                .lines
                .recv()
                .await
                .unwrap_or_else(|| panic!("stickyd exited before logging {text:?}"));
            if line.contains(text) {
                return line;
            }
        }
    }

    /// The address of the first service's listener, from its `listening` log line.
    pub async fn address(&mut self) -> String {
        let listening = self.line_with("listening service=").await;
        let address = listening
            .split("address=")
            .nth(1)
            .expect("an address field");
        address
            .split_whitespace()
            .next()
            .expect("an address")
            .to_string()
    }

    /// Sends `signal` (`-TERM`, `-HUP`) to the process.
    pub fn signal(&self, signal: &str) {
        let sent = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status();
        assert!(sent.expect("run kill").success(), "kill {signal} failed");
    }

    /// Sends SIGTERM and returns the exit code.
    pub async fn stop(mut self) -> Option<i32> {
        self.signal("-TERM");
        let mut child = std::mem::replace(
            &mut self.child,
            std::process::Command::new("true")
                .spawn()
                .expect("spawn true"),
        );
        tokio::task::spawn_blocking(move || child.wait().expect("wait for stickyd").code())
            .await
            .expect("join")
    }
}

/// The lines of `stderr`, read on a thread of their own.
fn read_lines(stderr: impl std::io::Read + Send + 'static) -> mpsc::UnboundedReceiver<String> {
    let (lines_in, lines) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_in.send(line);
        }
    });
    lines
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A path for a test's file under the temp dir, unique to this process and `name`.
pub fn temp_file(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("stickyd-test-{}-{name}", std::process::id()))
}

/// A test app run as a child process (Express, socket.io, PHP), killed when dropped.
pub struct AppProcess {
    pub name: String,
    pub addr: SocketAddr,
    child: tokio::process::Child,
    /// Kept open so the app never writes to a closed pipe.
    _stdout: Option<tokio::process::ChildStdout>,
}

/// How long a test app gets to start listening.
pub const APP_STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

impl AppProcess {
    /// An app already started and listening on `addr`.
    pub fn new(name: String, addr: SocketAddr, child: tokio::process::Child) -> AppProcess {
        AppProcess {
            name,
            addr,
            child,
            _stdout: None,
        }
    }

    /// Starts `node script` with `INSTANCE=name`, `PORT=0` and `env`, its stderr appended to
    /// `log`, and reads the `listening <port>` line it prints. Panics with the log when it
    /// exits or stays silent for [`APP_STARTUP_TIMEOUT`].
    pub async fn start_node(
        name: String,
        script: &std::path::Path,
        env: &[(&str, &str)],
        log: &std::path::Path,
    ) -> AppProcess {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new("node")
            .arg(script)
            .env("INSTANCE", &name)
            .env("PORT", "0")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(log_file(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start node for {name}: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = match tokio::time::timeout(APP_STARTUP_TIMEOUT, lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => panic!(
                "{name} exited before listening ({:?}); its stderr:\n{}",
                child.wait().await,
                read_log(log)
            ),
            Ok(Err(e)) => panic!("cannot read the stdout of {name}: {e}"),
            Err(_) => panic!(
                "{name} did not print `listening <port>` within {APP_STARTUP_TIMEOUT:?}; its stderr:\n{}",
                read_log(log)
            ),
        };
        let port: u16 = line
            .strip_prefix("listening ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} printed {line:?}, expected `listening <port>`"));
        AppProcess {
            name,
            addr: SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port)),
            child,
            _stdout: Some(lines.into_inner().into_inner()),
        }
    }

    /// Kills the app.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// `path` opened for appending, as a child's stdout or stderr.
pub fn log_file(path: &std::path::Path) -> std::process::Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(std::process::Stdio::from)
        .unwrap_or_else(|e| panic!("cannot open the log {}: {e}", path.display()))
}

/// What a child wrote to its log, for a failure message.
pub fn read_log(path: &std::path::Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
}
