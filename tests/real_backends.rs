//! End-to-end tests against REAL session-keeping backends: three instances of an Express app
//! (`express-session`, cookie `connect.sid`) or of a PHP script under PHP's built-in server
//! (native sessions, cookie `PHPSESSID`) behind stickyd, driven by the real `curl` binary with a
//! cookie jar. Each instance keeps its sessions to itself, so a view counter that climbs
//! 1, 2, ..., 10 proves every request of the session reached the same instance.
//!
//! The backends live in `tests/backends/`. The Express one needs its `node_modules`: the harness
//! runs `npm ci --prefix tests/backends/express --no-audit --no-fund` itself when they are missing.
//! A missing `node`, `npm`, `php` or `curl` fails the test with its install line (see
//! `tests/common/real_programs.rs` for the one opt-out).

mod common;

use common::{APP_STARTUP_TIMEOUT, AppProcess, log_file, read_log};

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// Whole-test bound: a hang anywhere fails the test instead of stalling the suite.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one backend instance may take to start listening.
/// Requests made with the first cookie jar.
const STICKY_REQUESTS: u64 = 10;
/// Fresh jars tried while looking for a session placed on another instance.
const FRESH_JARS: usize = 3;
const INSTANCES: usize = 3;

// ---------------------------------------------------------------------------------------------
// The six tests: one per backend kind and affinity strategy.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn express_session_sticks_to_one_instance_with_insert_cookie() {
    run(BackendKind::Express, Strategy::Insert).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn express_session_sticks_to_one_instance_with_prefixed_session_cookie() {
    run(BackendKind::Express, Strategy::Prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn express_session_sticks_to_one_instance_with_stick_table() {
    run(BackendKind::Express, Strategy::StickTable).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn php_session_sticks_to_one_instance_with_insert_cookie() {
    run(BackendKind::Php, Strategy::Insert).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn php_session_sticks_to_one_instance_with_prefixed_session_cookie() {
    run(BackendKind::Php, Strategy::Prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn php_session_sticks_to_one_instance_with_stick_table() {
    run(BackendKind::Php, Strategy::StickTable).await;
}

// ---------------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BackendKind {
    Express,
    Php,
}

impl BackendKind {
    /// Prefix of the instance names: `express-1`, `php-2`, ...
    fn name(self) -> &'static str {
        match self {
            BackendKind::Express => "express",
            BackendKind::Php => "php",
        }
    }

    /// The program that runs the backend.
    fn program(self) -> &'static str {
        match self {
            BackendKind::Express => "node",
            BackendKind::Php => "php",
        }
    }

    /// The session cookie the backend framework sets.
    fn session_cookie(self) -> &'static str {
        match self {
            BackendKind::Express => "connect.sid",
            BackendKind::Php => "PHPSESSID",
        }
    }

    fn dir(self) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests")
            .join("backends")
            .join(self.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Strategy {
    Insert,
    Prefix,
    StickTable,
}

/// Cookie stickyd inserts under the `insert` strategy.
const INSERT_COOKIE: &str = "SERVERID";

impl Strategy {
    fn config_name(self) -> &'static str {
        match self {
            Strategy::Insert => "insert",
            Strategy::Prefix => "prefix",
            Strategy::StickTable => "stick-table",
        }
    }

    /// The cookie named in `[service.affinity]`.
    fn affinity_cookie(self, kind: BackendKind) -> &'static str {
        match self {
            Strategy::Insert => INSERT_COOKIE,
            Strategy::Prefix | Strategy::StickTable => kind.session_cookie(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The scenario shared by all six tests
// ---------------------------------------------------------------------------------------------

async fn run(kind: BackendKind, strategy: Strategy) {
    // Before the clock starts: this may run `npm ci`.
    if !prerequisites_present(kind) {
        return;
    }
    match tokio::time::timeout(TEST_TIMEOUT, sticky_session_scenario(kind, strategy)).await {
        Ok(()) => {}
        Err(_) => panic!(
            "{} behind stickyd ({} strategy) did not finish within {TEST_TIMEOUT:?}",
            kind.name(),
            strategy.config_name()
        ),
    }
}

async fn sticky_session_scenario(kind: BackendKind, strategy: Strategy) {
    // Dropped last (locals drop in reverse order): the instances and stickyd stop first.
    let scratch = ScratchDir::new(&format!("{}-{}", kind.name(), strategy.config_name()));
    let instances = start_instances(kind, &scratch).await;
    let addrs: Vec<SocketAddr> = instances.iter().map(|i| i.addr).collect();
    let proxy = common::start_proxy(&proxy_config(kind, strategy, &addrs)).await;
    let url = format!("http://{}/", proxy.addr);

    // One session: every request lands on the same instance, and its counter climbs.
    let jar = scratch.path().join("session.jar");
    let mut first: Option<Answer> = None;
    for expected_views in 1..=STICKY_REQUESTS {
        let answer = curl(&url, &jar).await;
        let reference = first.get_or_insert_with(|| answer.clone());
        assert_eq!(
            answer.instance, reference.instance,
            "request {expected_views} of one session went to another instance \
             ({strategy:?}, {kind:?}); answer: {answer:?}"
        );
        assert_eq!(
            answer.session, reference.session,
            "request {expected_views} of one session got another session id; answer: {answer:?}"
        );
        assert_eq!(
            answer.views, expected_views,
            "request {expected_views} of one session saw the wrong view count; answer: {answer:?}"
        );
    }
    let first = first.expect("at least one request was made");
    let instance_names: Vec<String> = instances.iter().map(|i| i.name.clone()).collect();
    assert!(
        instance_names.contains(&first.instance),
        "answer from an unknown instance {:?}; expected one of {instance_names:?}",
        first.instance
    );

    check_jar(kind, strategy, &jar, &first);

    // New sessions: round-robin places them, so within FRESH_JARS one lands elsewhere.
    let mut seen = Vec::new();
    for n in 1..=FRESH_JARS {
        let answer = curl(&url, &scratch.path().join(format!("fresh-{n}.jar"))).await;
        assert_eq!(
            answer.views, 1,
            "the first request of fresh session {n} found an existing session; answer: {answer:?}"
        );
        let moved = answer.instance != first.instance;
        seen.push(answer.instance);
        if moved {
            break;
        }
    }
    assert!(
        seen.iter().any(|i| *i != first.instance),
        "{FRESH_JARS} fresh sessions all went to {} like the first one (saw {seen:?}); \
         round-robin should have spread them",
        first.instance
    );

    drop(proxy);
    // Kill and reap now; kill_on_drop alone would leave the reaping to chance at exit.
    futures_util::future::join_all(instances.into_iter().map(AppProcess::stop)).await;
}

/// The cookies in the jar after the sticky session, per strategy: the app's session cookie,
/// plus `SERVERID=<backend id>` for insert; for prefix the session cookie reads
/// `<backend id>~<app's value>`. Backend ids are the backend names (no `id` in the config), and
/// backends b1, b2, b3 are instances 1, 2, 3, in that order.
fn check_jar(kind: BackendKind, strategy: Strategy, jar: &Path, first: &Answer) {
    let cookies = read_cookie_jar(jar);
    let mut names: Vec<&str> = cookies.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    let mut expected = vec![kind.session_cookie()];
    if strategy == Strategy::Insert {
        expected.push(INSERT_COOKIE);
    }
    expected.sort_unstable();
    assert_eq!(
        names,
        expected,
        "unexpected cookies in the jar under the {} strategy: {cookies:?}",
        strategy.config_name()
    );

    let backend = backend_of(&first.instance);
    match strategy {
        Strategy::Insert => assert_eq!(
            cookie_value(&cookies, INSERT_COOKIE),
            backend,
            "the {INSERT_COOKIE} cookie does not name the backend of instance {}",
            first.instance
        ),
        Strategy::Prefix => {
            let value = cookie_value(&cookies, kind.session_cookie());
            let (prefix, rest) = value.split_once('~').unwrap_or_else(|| {
                panic!(
                    "prefixed {} cookie {value:?} has no `~`",
                    kind.session_cookie()
                )
            });
            assert_eq!(
                prefix,
                backend,
                "the {} cookie {value:?} is not prefixed with the backend of instance {}",
                kind.session_cookie(),
                first.instance
            );
            assert!(
                rest.contains(&first.session),
                "the prefixed {} cookie {value:?} does not carry the backend's session id {:?}",
                kind.session_cookie(),
                first.session
            );
        }
        Strategy::StickTable => {}
    }
}

/// The backend in front of an instance: `php-2` is behind `b2`.
fn backend_of(instance: &str) -> String {
    let (_, n) = instance
        .rsplit_once('-')
        .unwrap_or_else(|| panic!("instance name {instance:?} has no `-<n>`"));
    format!("b{n}")
}

fn cookie_value<'a>(cookies: &'a [(String, String)], name: &str) -> &'a str {
    cookies
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} cookie in the jar: {cookies:?}"))
}

fn proxy_config(kind: BackendKind, strategy: Strategy, backends: &[SocketAddr]) -> String {
    let mut toml = format!(
        "[[service]]\n\
         name = \"web\"\n\
         listen = [\"127.0.0.1:0\"]\n\
         balance = \"round-robin\"\n\
         [service.affinity]\n\
         strategy = \"{}\"\n\
         cookie = \"{}\"\n",
        strategy.config_name(),
        strategy.affinity_cookie(kind),
    );
    for (i, addr) in backends.iter().enumerate() {
        let n = i + 1;
        writeln!(
            toml,
            "[[service.backend]]\nname = \"b{n}\"\naddress = \"{addr}\""
        )
        .expect("writing to a String cannot fail");
    }
    toml
}

// ---------------------------------------------------------------------------------------------
// Prerequisites
// ---------------------------------------------------------------------------------------------

/// True when everything the test runs is installed, after installing the Express app's npm
/// packages if they were missing. A missing program fails the test with its install line; only
/// under `STICKYD_TEST_ALLOW_MISSING=1` is the answer false instead, and the test returns early.
fn prerequisites_present(kind: BackendKind) -> bool {
    if !common::require_program("curl") || !common::require_program(kind.program()) {
        return false;
    }
    kind != BackendKind::Express || common::require_npm_packages(&kind.dir())
}

// ---------------------------------------------------------------------------------------------
// Backend instances
// ---------------------------------------------------------------------------------------------

async fn start_instances(kind: BackendKind, scratch: &ScratchDir) -> Vec<AppProcess> {
    let starts = (1..=INSTANCES).map(|n| {
        let name = format!("{}-{n}", kind.name());
        async move {
            match kind {
                BackendKind::Express => start_express(name, scratch).await,
                BackendKind::Php => start_php(name, scratch).await,
            }
        }
    });
    futures_util::future::join_all(starts).await
}

/// Starts `node app.js` on port 0 and reads the `listening <port>` line it prints.
async fn start_express(name: String, scratch: &ScratchDir) -> AppProcess {
    let log = scratch.path().join(format!("{name}.log"));
    let script = BackendKind::Express.dir().join("app.js");
    AppProcess::start_node(name, &script, &[("NODE_ENV", "test")], &log).await
}

/// Starts `php -S` on a free port, with its own session directory, and waits until it accepts
/// connections. A port taken between picking and binding makes php exit: then another is tried.
async fn start_php(name: String, scratch: &ScratchDir) -> AppProcess {
    let session_dir = scratch.path().join(format!("{name}-sessions"));
    std::fs::create_dir_all(&session_dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", session_dir.display()));
    let log = scratch.path().join(format!("{name}.log"));
    const ATTEMPTS: usize = 3;
    for attempt in 1..=ATTEMPTS {
        let addr = free_local_addr();
        let mut child = Command::new("php")
            // Warnings go to the log, never into the JSON body.
            .args(["-d", "display_errors=stderr", "-S"])
            .arg(addr.to_string())
            .arg("-t")
            .arg(BackendKind::Php.dir())
            .env("INSTANCE", &name)
            .env("SESSION_DIR", &session_dir)
            .stdin(Stdio::null())
            .stdout(log_file(&log))
            .stderr(log_file(&log))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start php for {name}: {e}"));
        match wait_until_accepting(&mut child, addr, APP_STARTUP_TIMEOUT).await {
            Ok(()) => {
                return AppProcess::new(name, addr, child);
            }
            Err(WaitError::Exited(status)) if attempt < ATTEMPTS => {
                eprintln!(
                    "{name}: php exited ({status}) on {addr}, retrying on another port; log:\n{}",
                    read_log(&log)
                );
            }
            Err(WaitError::Exited(status)) => panic!(
                "{name}: php exited ({status}) on {addr}, {ATTEMPTS} attempts; its log:\n{}",
                read_log(&log)
            ),
            Err(WaitError::TimedOut) => panic!(
                "{name}: php -S {addr} did not accept connections within {APP_STARTUP_TIMEOUT:?}; \
                 its log:\n{}",
                read_log(&log)
            ),
        }
    }
    unreachable!("every attempt returns or panics")
}

/// A port on 127.0.0.1 that was free a moment ago: bind port 0, read the port, release it.
fn free_local_addr() -> SocketAddr {
    let listener = StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0: {e}"));
    listener
        .local_addr()
        .expect("bound listener has an address")
}

enum WaitError {
    Exited(std::process::ExitStatus),
    TimedOut,
}

/// Polls `addr` with connect, backing off from 10 ms to 200 ms, until it accepts, the child
/// exits, or `limit` passes.
async fn wait_until_accepting(
    child: &mut Child,
    addr: SocketAddr,
    limit: Duration,
) -> Result<(), WaitError> {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(WaitError::Exited(status));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(WaitError::TimedOut);
        }
        if let Ok(Ok(_stream)) = tokio::time::timeout(left, TcpStream::connect(addr)).await {
            return Ok(());
        }
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------------------------
// curl and its cookie jar
// ---------------------------------------------------------------------------------------------

/// What every backend answers: `{"instance", "views", "session"}`.
#[derive(Clone, Debug)]
struct Answer {
    instance: String,
    views: u64,
    session: String,
}

/// `curl -sS -c JAR -b JAR URL` with the real curl, parsed as the backend's JSON answer.
/// `-q` ignores any ~/.curlrc, `--noproxy '*'` any proxy variables; `--max-time` bounds it.
async fn curl(url: &str, jar: &Path) -> Answer {
    let output = Command::new("curl")
        .arg("-q")
        .args([
            "-sS",
            "--fail-with-body",
            "--noproxy",
            "*",
            "--max-time",
            "10",
        ])
        .arg("-c")
        .arg(jar)
        .arg("-b")
        .arg(jar)
        .arg(url)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run curl: {e}"));
    let body = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "curl {url} failed ({}): {}\nbody: {body}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let json: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("curl {url} answered non-JSON ({e}): {body:?}"));
    let field = |key: &str| {
        json.get(key)
            .unwrap_or_else(|| panic!("no {key:?} in the answer {json}"))
    };
    Answer {
        instance: field("instance")
            .as_str()
            .unwrap_or_else(|| panic!("\"instance\" is not a string in {json}"))
            .to_owned(),
        views: field("views")
            .as_u64()
            .unwrap_or_else(|| panic!("\"views\" is not a number in {json}")),
        session: field("session")
            .as_str()
            .unwrap_or_else(|| panic!("\"session\" is not a string in {json}"))
            .to_owned(),
    }
}

/// `(name, value)` of every cookie in a curl (Netscape format) jar: tab-separated, name in
/// column 6, value in column 7; `#HttpOnly_` lines are cookies, other `#` lines comments.
fn read_cookie_jar(jar: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(jar)
        .unwrap_or_else(|e| panic!("cannot read the cookie jar {}: {e}", jar.display()));
    parse_cookie_jar(&text)
}

fn parse_cookie_jar(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let line = line.strip_prefix("#HttpOnly_").unwrap_or(line);
            if line.trim().is_empty() || line.starts_with('#') {
                return None;
            }
            let fields: Vec<&str> = line.split('\t').collect();
            assert!(
                fields.len() >= 7,
                "cookie jar line with {} fields, expected 7: {line:?}",
                fields.len()
            );
            Some((fields[5].to_owned(), fields[6].to_owned()))
        })
        .collect()
}

#[test]
fn cookie_jar_parser_reads_plain_and_http_only_lines() {
    let jar = "# Netscape HTTP Cookie File\n\
               # https://curl.se/docs/http-cookies.html\n\
               \n\
               #HttpOnly_127.0.0.1\tFALSE\t/\tFALSE\t0\tconnect.sid\tb2~s%3Aabc.sig\n\
               127.0.0.1\tFALSE\t/\tFALSE\t0\tSERVERID\tb1\n";
    assert_eq!(
        parse_cookie_jar(jar),
        vec![
            ("connect.sid".to_owned(), "b2~s%3Aabc.sig".to_owned()),
            ("SERVERID".to_owned(), "b1".to_owned()),
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Scratch space
// ---------------------------------------------------------------------------------------------

/// A fresh directory under the system temp dir, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let path = std::env::temp_dir().join(format!(
            "stickyd-real-backends-{tag}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        ScratchDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
