//! socket.io works behind stickyd: three instances of a REAL socket.io v4 server
//! (`tests/backends/socketio/server.js`) behind stickyd, and a REAL `socket.io-client` v4
//! (`client.js`) that starts on HTTP long polling and upgrades to WebSocket, then exchanges 20
//! acked `ping`s and 20 `tick`s, all of which must come from one instance.
//!
//! socket.io keeps each engine.io session in the memory of the instance that did the handshake:
//! a polling request or WebSocket upgrade that reaches another instance is answered
//! 400 `{"code":1,"message":"Session ID unknown"}`. So the client succeeds behind `hash` on the
//! source IP and behind `insert` (the client keeps stickyd's `SERVERID` cookie from the
//! handshake for every later request and the upgrade), and fails behind round-robin without
//! affinity, which shows the test can fail.
//!
//! Needs `node`, and the app's `node_modules`: the harness runs
//! `npm ci --prefix tests/backends/socketio --no-audit --no-fund` itself when they are missing.
//! A missing `node` or `npm` fails the test with its install line (see
//! `tests/common/real_programs.rs` for the one opt-out).

mod common;

use common::AppProcess;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// Whole-test bound: a hang anywhere fails the test instead of stalling the suite.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one server instance may take to print `listening <port>`.
/// Bound on one client run; the client gives up by itself after 15 s.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(25);
const INSTANCES: usize = 3;
/// Acked `ping` events and `tick` events the client exchanges (fixed in client.js).
const EVENTS: u64 = 20;
/// Cookie stickyd inserts under the `insert` strategy.
const INSERT_COOKIE: &str = "SERVERID";

// ---------------------------------------------------------------------------------------------
// The three tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_long_polling_upgrades_to_websocket_behind_hash_on_source_ip() {
    run(Affinity::HashSourceIp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_long_polling_upgrades_to_websocket_behind_insert_cookie() {
    run(Affinity::InsertCookie).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_fails_without_affinity_behind_round_robin() {
    run(Affinity::None).await;
}

// ---------------------------------------------------------------------------------------------
// The scenario
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Affinity {
    HashSourceIp,
    InsertCookie,
    None,
}

impl Affinity {
    /// The `[service.affinity]` table.
    fn table(self) -> &'static str {
        match self {
            Affinity::HashSourceIp => {
                "[service.affinity]\nstrategy = \"hash\"\nkey = \"source-ip\"\n"
            }
            Affinity::InsertCookie => "[service.affinity]\nstrategy = \"insert\"\n",
            Affinity::None => "[service.affinity]\nstrategy = \"none\"\n",
        }
    }
}

async fn run(affinity: Affinity) {
    // Before the clock starts: this may run `npm ci`.
    if !prerequisites_present() {
        return;
    }
    if tokio::time::timeout(TEST_TIMEOUT, scenario(affinity))
        .await
        .is_err()
    {
        panic!("socket.io behind stickyd ({affinity:?}) did not finish within {TEST_TIMEOUT:?}");
    }
}

async fn scenario(affinity: Affinity) {
    let instances = start_instances().await;
    let addrs: Vec<SocketAddr> = instances.iter().map(|i| i.addr).collect();
    let proxy = common::start_proxy(&proxy_config(affinity, &addrs)).await;
    let url = format!("http://{}", proxy.addr);

    let first = run_client(&url, &instances).await;
    match affinity {
        Affinity::None => {
            let error = first.error();
            assert!(
                error.contains("Session ID unknown") && error.contains("HTTP 400"),
                "the client failed without affinity, but not because a polling request reached \
                 an instance that does not know the session (400 \"Session ID unknown\"): \
                 {error}\n{first}"
            );
        }
        Affinity::HashSourceIp => {
            let instance = first.assert_ok(&instances);
            assert!(
                first.cookies().is_empty(),
                "hash affinity set cookies on the client: {first}"
            );
            // Same source address, same hash: a second client lands on the same instance.
            let second = run_client(&url, &instances).await;
            assert_eq!(
                second.assert_ok(&instances),
                instance,
                "a second client from 127.0.0.1 reached another instance under hash on the \
                 source IP\nfirst: {first}\nsecond: {second}"
            );
        }
        Affinity::InsertCookie => {
            let instance = first.assert_ok(&instances);
            let cookies = first.cookies();
            assert_eq!(
                cookies.get(INSERT_COOKIE).and_then(|v| v.as_str()),
                Some(backend_of(&instance).as_str()),
                "the client's {INSERT_COOKIE} cookie does not name the backend of {instance}: \
                 {first}"
            );
            // A new client has no cookie: round-robin places its session on the next instance.
            let second = run_client(&url, &instances).await;
            assert_ne!(
                second.assert_ok(&instances),
                instance,
                "a second client without the first one's cookie reached the same instance; \
                 round-robin should have placed it elsewhere\nfirst: {first}\nsecond: {second}"
            );
        }
    }

    drop(proxy);
    // Kill and reap now; kill_on_drop alone would leave the reaping to chance at exit.
    futures_util::future::join_all(instances.into_iter().map(AppProcess::stop)).await;
}

/// Backends are `io1`, `io2`, `io3` in front of instances `io-1`, `io-2`, `io-3`.
fn proxy_config(affinity: Affinity, backends: &[SocketAddr]) -> String {
    let mut toml = format!(
        "[[service]]\n\
         name = \"io\"\n\
         listen = [\"127.0.0.1:0\"]\n\
         balance = \"round-robin\"\n\
         {}",
        affinity.table()
    );
    for (i, addr) in backends.iter().enumerate() {
        let n = i + 1;
        writeln!(
            toml,
            "[[service.backend]]\nname = \"io{n}\"\naddress = \"{addr}\""
        )
        .expect("writing to a String cannot fail");
    }
    toml
}

/// The backend in front of an instance: `io-2` is behind `io2`.
fn backend_of(instance: &str) -> String {
    instance.replacen('-', "", 1)
}

fn socketio_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("backends")
        .join("socketio")
}

// ---------------------------------------------------------------------------------------------
// Prerequisites
// ---------------------------------------------------------------------------------------------

/// True when node and the npm packages are installed, after installing the packages if they
/// were missing. A missing program fails the test with its install line; only under
/// `STICKYD_TEST_ALLOW_MISSING=1` is the answer false instead, and the test returns early.
fn prerequisites_present() -> bool {
    common::require_program("node") && common::require_npm_packages(&socketio_dir())
}

// ---------------------------------------------------------------------------------------------
// Server instances
// ---------------------------------------------------------------------------------------------

async fn start_instances() -> Vec<AppProcess> {
    futures_util::future::join_all((1..=INSTANCES).map(|n| start_server(format!("io-{n}")))).await
}

/// Starts `node server.js` on port 0 and reads the `listening <port>` line it prints.
async fn start_server(name: String) -> AppProcess {
    let log = common::temp_file(&format!("{name}.log"));
    AppProcess::start_node(name, &socketio_dir().join("server.js"), &[], &log).await
}

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

/// One `node client.js URL` run: its JSON result line and how it ended.
struct ClientRun {
    json: serde_json::Value,
    status: std::process::ExitStatus,
    stderr: String,
}

impl std::fmt::Display for ClientRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client {} printed {}", self.status, self.json)?;
        if !self.stderr.trim().is_empty() {
            write!(f, "; its stderr:\n{}", self.stderr.trim_end())?;
        }
        Ok(())
    }
}

impl ClientRun {
    fn ok(&self) -> bool {
        self.json.get("ok").and_then(|v| v.as_bool()) == Some(true)
    }

    /// Asserts a successful run: upgraded to WebSocket, every ack and tick from one known
    /// instance. Returns that instance.
    fn assert_ok(&self, instances: &[AppProcess]) -> String {
        assert!(
            self.ok() && self.status.success(),
            "socket.io failed behind stickyd: {self}"
        );
        assert_eq!(self.json["transport"], "websocket", "{self}");
        assert_eq!(self.json["acks"], EVENTS, "{self}");
        assert_eq!(self.json["ticks"], EVENTS, "{self}");
        let instance = self.json["instance"]
            .as_str()
            .unwrap_or_else(|| panic!("no \"instance\" string in the result: {self}"))
            .to_owned();
        assert!(
            instances.iter().any(|i| i.name == instance),
            "answers from an unknown instance {instance:?}: {self}"
        );
        instance
    }

    /// Asserts a failed run (`ok: false`, exit 1) and returns its error.
    fn error(&self) -> &str {
        assert!(
            !self.ok(),
            "socket.io worked behind round-robin without affinity, so this test cannot tell \
             affinity from luck: {self}"
        );
        assert_eq!(self.status.code(), Some(1), "{self}");
        self.json["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no \"error\" string in the result: {self}"))
    }

    /// The client's cookie jar at the end: name -> value.
    fn cookies(&self) -> serde_json::Map<String, serde_json::Value> {
        self.json["cookies"]
            .as_object()
            .unwrap_or_else(|| panic!("no \"cookies\" object in the result: {self}"))
            .clone()
    }
}

/// Runs the socket.io client against `url`, bounded by [`CLIENT_TIMEOUT`] (the child is killed
/// when the bound passes), and parses the one JSON line it prints.
async fn run_client(url: &str, instances: &[AppProcess]) -> ClientRun {
    let client = Command::new("node")
        .arg(socketio_dir().join("client.js"))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(CLIENT_TIMEOUT, client)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "node client.js {url} did not finish within {CLIENT_TIMEOUT:?} \
                 (servers: {:?})",
                instances.iter().map(|i| &i.name).collect::<Vec<_>>()
            )
        })
        .unwrap_or_else(|e| panic!("cannot run node client.js: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    let [line] = lines[..] else {
        panic!(
            "node client.js {url} ({}) printed {} lines, expected one JSON line:\n{stdout}\
             stderr:\n{stderr}",
            output.status,
            lines.len()
        );
    };
    let json = serde_json::from_str(line).unwrap_or_else(|e| {
        panic!("node client.js {url} printed non-JSON ({e}): {line:?}\nstderr:\n{stderr}")
    });
    ClientRun {
        json,
        status: output.status,
        stderr,
    }
}
