//! Edge inputs, raw bytes over TCP: the request-head classes of section H of the team's
//! acceptance list (`shared/acceptance/bad_inputs.md`, beside this repository; #63 to #70)
//! that a review of stickyd found, each tested as a class with several spellings, end to end
//! through a live stickyd in front of backends that record what they received. The case
//! numbers (`#63`) are the list's.
//!
//! stickyd runs on a runtime thread of its own ([`Stickyd`]): a panic inside it is caught by
//! a panic hook and fails the test with its message, instead of passing for a closed
//! connection.
//!
//! Every group prints one line per case (`cargo test --test edge_inputs -- --nocapture`) and
//! fails once, listing every case that went wrong. The last test sends arbitrary targets and
//! head lines and asks only for an HTTP answer to each.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once, PoisonError};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};

use stickyd::runtime::Services;

use common::raw::{ANSWER_BOUND, Answer, RawConn};
use common::{
    RawBackend, Report, Seen, SeenSince, Step, TestBackend, config, describe, spawn_backends,
    verdict, within_timeout,
};

/// The `Host` every request names.
const HOST: &str = "app.example";
/// The forwarding fields stickyd writes for a client at 127.0.0.1 over cleartext.
const OWN_FOR: &str = "127.0.0.1";
const OWN_FORWARDED: &str = "for=127.0.0.1;proto=http";
/// The forwarding fields (RFC 7239 and the de-facto `X-Forwarded-*`), dashed and lower-case.
const FORWARDING: [&str; 4] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
];

// ---------------------------------------------------------------------------------------------
// stickyd on a runtime thread of its own, its panics recorded
// ---------------------------------------------------------------------------------------------

/// The prefix of the names of the threads a [`Stickyd`] runs on (`stickyd-under-test-3`).
const STICKYD_THREADS: &str = "stickyd-under-test-";

/// Panics raised on a stickyd thread: (thread name, message with its location).
static PANICS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Installs, once per process, a panic hook that records the panics of stickyd's threads
/// before the previous hook prints them.
fn record_stickyd_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            if let Some(name) = thread.name().filter(|n| n.starts_with(STICKYD_THREADS)) {
                PANICS
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((name.to_string(), info.to_string()));
            }
            previous(info);
        }));
    });
}

/// stickyd serving a config on a one-worker runtime of its own, whose thread name is unique
/// to this instance; stopped when dropped.
struct Stickyd {
    runtime: Arc<Services>,
    /// Every listener's address, services in config order.
    addrs: Vec<SocketAddr>,
    thread: String,
    tokio: Option<tokio::runtime::Runtime>,
}

impl Stickyd {
    /// Parses `toml`, binds its listeners and starts serving. Panics with the config or bind
    /// error.
    async fn start(toml: &str) -> Stickyd {
        record_stickyd_panics();
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let thread = format!("{STICKYD_THREADS}{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(&thread)
            .enable_all()
            .build()
            .expect("a runtime for stickyd");
        let config = stickyd::config::Config::parse(toml, "<test>")
            .unwrap_or_else(|error| panic!("{error}"));
        let started = tokio
            .spawn(async move {
                let listeners = stickyd::server::bind(&config).await?;
                let addrs: Vec<SocketAddr> = listeners
                    .iter()
                    .map(|listener| listener.local_addr().expect("a bound address"))
                    .collect();
                Ok::<_, stickyd::server::ServerError>((Services::start(config, listeners), addrs))
            })
            .await
            .expect("the start task");
        let (runtime, addrs) = started.unwrap_or_else(|error| panic!("{error}"));
        Stickyd {
            runtime,
            addrs,
            thread,
            tokio: Some(tokio),
        }
    }

    /// The first listener's address.
    fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// The panics raised on this stickyd's threads so far.
    fn panics(&self) -> Vec<String> {
        PANICS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(thread, _)| *thread == self.thread)
            .map(|(_, message)| message.clone())
            .collect()
    }

    fn assert_no_panics(&self) {
        let panics = self.panics();
        assert!(
            panics.is_empty(),
            "stickyd panicked:\n  {}",
            panics.join("\n  ")
        );
    }

    /// `stickyd_header_fields_dropped_total` of service `web`; `None` when there is no such
    /// counter.
    fn dropped_fields(&self) -> Option<u64> {
        self.runtime
            .encode_metrics()
            .lines()
            .filter(|line| line.starts_with("stickyd_header_fields_dropped_total{"))
            .find(|line| line.contains("service=\"web\""))
            .and_then(|line| line.rsplit(' ').next()?.parse().ok())
    }
}

impl Drop for Stickyd {
    fn drop(&mut self) {
        if let Some(tokio) = self.tokio.take() {
            tokio.shutdown_background();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------------------

type Check = Box<dyn Fn(&Answer, &[Seen]) -> Result<(), String> + Send + Sync>;

struct Case {
    name: String,
    bytes: Vec<u8>,
    /// Complete responses to wait for.
    want: usize,
    /// After them, read until the proxy closes (within [`ANSWER_BOUND`]).
    until_close: bool,
    /// After a 101, one WebSocket message must cross the tunnel and come back.
    websocket: bool,
    /// How much `stickyd_header_fields_dropped_total` must grow.
    dropped: Option<u64>,
    expected: String,
    check: Check,
}

impl Case {
    fn new(
        name: impl Into<String>,
        bytes: impl Into<Vec<u8>>,
        expected: impl Into<String>,
        check: impl Fn(&Answer, &[Seen]) -> Result<(), String> + Send + Sync + 'static,
    ) -> Case {
        Case {
            name: name.into(),
            bytes: bytes.into(),
            want: 1,
            until_close: false,
            websocket: false,
            dropped: None,
            expected: expected.into(),
            check: Box::new(check),
        }
    }

    /// Answered 200 by a backend, the one request it saw passing `forwarded`.
    fn forwarded(
        name: impl Into<String>,
        bytes: impl Into<Vec<u8>>,
        expected: impl Into<String>,
        forwarded: impl Fn(&Seen) -> Vec<String> + Send + Sync + 'static,
    ) -> Case {
        Case::new(name, bytes, expected, move |answer, seen| {
            let mut problems = Vec::new();
            match answer.first() {
                Some(reply) if reply.status == 200 && !reply.backend().is_empty() => {}
                other => problems.push(format!("answer {:?}", other.map(|r| r.status))),
            }
            match seen {
                [one] => problems.extend(forwarded(one)),
                _ => problems.push(format!("{} requests reached a backend", seen.len())),
            }
            verdict(problems)
        })
    }

    /// A WebSocket handshake answered 101 by a backend, whose one request passes `forwarded`;
    /// then a message crosses the tunnel.
    fn switched(
        name: impl Into<String>,
        bytes: impl Into<Vec<u8>>,
        expected: impl Into<String>,
        forwarded: impl Fn(&Seen) -> Vec<String> + Send + Sync + 'static,
    ) -> Case {
        let mut case = Case::new(name, bytes, expected, move |answer, seen| {
            let mut problems = Vec::new();
            match answer.first() {
                Some(reply) if reply.status == 101 && !reply.backend().is_empty() => {}
                other => problems.push(format!("answer {:?}", other.map(|r| r.status))),
            }
            match seen {
                [one] => problems.extend(forwarded(one)),
                _ => problems.push(format!("{} requests reached a backend", seen.len())),
            }
            verdict(problems)
        });
        case.websocket = true;
        case
    }

    /// Refused by stickyd with `status`, the connection closed, no backend reached.
    fn refused(name: impl Into<String>, bytes: impl Into<Vec<u8>>, status: u16) -> Case {
        let mut case = Case::new(
            name,
            bytes,
            format!("{status} +close, backend untouched"),
            move |answer, seen| {
                let mut problems = Vec::new();
                match answer.first() {
                    Some(reply) if reply.status == status && reply.backend().is_empty() => {}
                    other => problems.push(format!(
                        "answer {:?}",
                        other.map(|r| (r.status, r.backend()))
                    )),
                }
                if !answer.closed {
                    problems.push("connection left open".into());
                }
                if !seen.is_empty() {
                    problems.push(format!("backend saw {}", describe(seen)));
                }
                verdict(problems)
            },
        );
        case.until_close = true;
        case
    }

    fn dropping(mut self, fields: u64) -> Case {
        self.dropped = Some(fields);
        self
    }
}

/// Runs every case against `addr` of `stickyd`, one fresh connection each, prints one report
/// line per case, and fails listing every case that went wrong (a stickyd panic included).
async fn run(
    group: &str,
    stickyd: &Stickyd,
    addr: SocketAddr,
    backends: &[&TestBackend],
    cases: Vec<Case>,
) {
    let mut report = Report::new(group);
    for case in cases {
        let since = SeenSince::now(backends);
        let panics = stickyd.panics().len();
        let dropped = stickyd.dropped_fields();
        let mut conn = RawConn::open(addr).await;
        // The proxy may answer and close before it read everything: a failed write is not a
        // case's verdict, the answer is.
        let _ = conn.send(&case.bytes).await;
        let answer = conn
            .answer(case.want, case.until_close.then_some(ANSWER_BOUND))
            .await;
        let seen = since.settled().await;
        let mut problems = Vec::new();
        if let Err(problem) = (case.check)(&answer, &seen) {
            problems.push(problem);
        }
        if case.websocket && answer.first().is_some_and(|reply| reply.status == 101) {
            match conn.websocket_echo("ping").await {
                Ok(echo) if echo.ends_with(": ping") => {}
                Ok(echo) => problems.push(format!("the tunnel echoed {echo:?}")),
                Err(problem) => problems.push(problem),
            }
        }
        if let Some(fields) = case.dropped {
            match (dropped, stickyd.dropped_fields()) {
                (Some(before), Some(after)) if after - before == fields => {}
                (Some(before), Some(after)) => problems.push(format!(
                    "stickyd_header_fields_dropped_total grew by {}, not {fields}",
                    after - before
                )),
                _ => problems.push("no stickyd_header_fields_dropped_total counter".into()),
            }
        }
        problems.extend(
            stickyd
                .panics()
                .into_iter()
                .skip(panics)
                .map(|panic| format!("stickyd panicked: {panic}")),
        );
        report.case(
            &case.name,
            &case.expected,
            &answer.summary(),
            &format!("backend: {} request(s)", seen.len()),
            verdict(problems),
        );
    }
    report.finish();
}

/// `GET /` naming [`HOST`], with `fields` (one `name: value` each).
fn get(fields: &[&str]) -> Vec<u8> {
    request("GET", "/", fields, "")
}

fn post(fields: &[&str], body: &str) -> Vec<u8> {
    request("POST", "/", fields, body)
}

/// A WebSocket handshake (RFC 6455 §4.1) for the backend's `/ws`, without `Connection` and
/// `Upgrade`, which come in `fields`.
fn handshake(fields: &[&str]) -> Vec<u8> {
    let mut all = vec![
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ];
    all.extend_from_slice(fields);
    request("GET", "/ws", &all, "")
}

fn request(method: &str, target: &str, fields: &[&str], body: &str) -> Vec<u8> {
    let mut text = format!("{method} {target} HTTP/1.1\r\nHost: {HOST}\r\n");
    for field in fields {
        text.push_str(field);
        text.push_str("\r\n");
    }
    text.push_str("\r\n");
    text.push_str(body);
    text.into_bytes()
}

/// The values of every `name` field a backend saw, in order.
fn values(seen: &Seen, name: &str) -> Vec<String> {
    seen.headers
        .get_all(name)
        .iter()
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        .collect()
}

/// The comma-separated elements of every `name` field, trimmed (a list split over several
/// fields is the same list, RFC 9110 §5.3).
fn elements(values: &[String]) -> Vec<String> {
    values
        .iter()
        .flat_map(|value| value.split(','))
        .map(|element| element.trim().to_string())
        .filter(|element| !element.is_empty())
        .collect()
}

/// The values of the `fields` (`name: value` lines) called `name`, any case.
fn sent(fields: &[&str], name: &str) -> Vec<String> {
    fields
        .iter()
        .filter_map(|field| field.split_once(':'))
        .filter(|(field, _)| field.trim().eq_ignore_ascii_case(name))
        .map(|(_, value)| value.trim().to_string())
        .collect()
}

/// Whether a field name with every `_` read as `-` is a forwarding field: what CGI, PHP-FPM
/// and WSGI make of it (`X_Forwarded_For` is `HTTP_X_FORWARDED_FOR`).
fn reads_as_forwarding(name: &str) -> bool {
    FORWARDING.contains(&name.to_ascii_lowercase().replace('_', "-").as_str())
}

/// A problem unless the backend saw exactly `want` as the elements of its `name` fields.
fn expect_elements(seen: &Seen, name: &str, want: &[String]) -> Option<String> {
    let got = elements(&values(seen, name));
    (got != want).then(|| format!("{name}: {got:?}, expected {want:?}"))
}

/// The forwarding fields stickyd writes for an untrusted client at 127.0.0.1: its own, and
/// nothing of the client's.
fn own_forwarding(seen: &Seen) -> Vec<String> {
    let own = |value: &str| vec![value.to_string()];
    [
        expect_elements(seen, "x-forwarded-for", &own(OWN_FOR)),
        expect_elements(seen, "forwarded", &own(OWN_FORWARDED)),
        expect_elements(seen, "x-forwarded-proto", &own("http")),
        expect_elements(seen, "x-forwarded-host", &own(HOST)),
    ]
    .into_iter()
    .flatten()
    .collect()
}

// ---------------------------------------------------------------------------------------------
// #63 Forwarding and framing fields spelled with `_`
// ---------------------------------------------------------------------------------------------

/// Field sets that spell forwarding fields with `_` (alone, beside the real field, in any
/// case, several times), some with other fields spelled with `_`.
const UNDERSCORED: [&[&str]; 10] = [
    &["X_Forwarded_For: 6.6.6.6"],
    &["x_forwarded_proto: https"],
    &["X-Forwarded_Host: evil.example"],
    &["X_FORWARDED_FOR: 6.6.6.6", "X_Forwarded_For: 7.7.7.7"],
    &["x_Forwarded-for: 6.6.6.6"],
    &["X-Forwarded-For: 1.1.1.1", "X_Forwarded_For: 6.6.6.6"],
    &[
        "Forwarded: for=6.6.6.6;proto=https",
        "X_Forwarded_Proto: https",
        "x_forwarded_HOST: evil.example",
    ],
    &["X_FORWARDED_PROTO: https", "X-FORWARDED_FOR: 6.6.6.6"],
    &[
        "X_Forwarded_Host: evil.example",
        "X_Real_IP: 6.6.6.6",
        "X_App: 1",
    ],
    &[
        "Forwarded_: for=6.6.6.6",
        "_Forwarded: for=6.6.6.6",
        "X_App: 2",
    ],
];

/// The `_` spellings of the framing fields, each with a body it would frame: always 400.
fn underscored_framing() -> Vec<(&'static str, Vec<u8>)> {
    let chunked = "5\r\nhello\r\n0\r\n\r\n";
    vec![
        (
            "Transfer_Encoding: chunked, chunked body",
            post(&["Transfer_Encoding: chunked"], chunked),
        ),
        (
            "transfer_encoding: chunked on a GET",
            get(&["transfer_encoding: chunked"]),
        ),
        (
            "Content_Length: 5, body hello",
            post(&["Content_Length: 5"], "hello"),
        ),
        ("CONTENT_LENGTH: 0 on a GET", get(&["CONTENT_LENGTH: 0"])),
        (
            "Content-Length: 5 beside content_length: 0",
            post(&["Content-Length: 5", "content_length: 0"], "hello"),
        ),
        (
            "Transfer-Encoding: chunked beside Content_Length: 5",
            post(
                &["Transfer-Encoding: chunked", "Content_Length: 5"],
                chunked,
            ),
        ),
        (
            "Content-Length: 5 beside transfer_Encoding: chunked",
            post(
                &["Content-Length: 5", "transfer_Encoding: chunked"],
                "hello",
            ),
        ),
    ]
}

/// The #63 cases against a service with `underscores_in_headers = keep`.
fn underscore_cases(keep: bool) -> Vec<Case> {
    let mut cases = Vec::new();
    for fields in UNDERSCORED {
        let with_underscore: Vec<(String, String)> = fields
            .iter()
            .filter_map(|field| field.split_once(':'))
            .filter(|(name, _)| name.contains('_'))
            .map(|(name, value)| (name.to_string(), value.trim().to_string()))
            .collect();
        let others: Vec<(String, String)> = with_underscore
            .iter()
            .filter(|(name, _)| !reads_as_forwarding(name))
            .cloned()
            .collect();
        let expected = if keep {
            "200, forwarding ones gone, other `_` ones kept"
        } else {
            "200, every `_` field gone and counted"
        };
        let case = Case::forwarded(
            format!("#63 {}", fields.join(" | ")),
            get(fields),
            expected,
            move |seen| {
                let mut problems = own_forwarding(seen);
                for name in seen.headers.keys().map(|name| name.as_str()) {
                    if name.contains('_') && (!keep || reads_as_forwarding(name)) {
                        problems.push(format!("{name} reached the backend"));
                    }
                }
                if keep {
                    for (name, value) in &others {
                        if !values(seen, name).contains(value) {
                            problems.push(format!("{name}: {value} was not forwarded"));
                        }
                    }
                }
                problems
            },
        );
        // With the default every field spelled with `_` is dropped and counted.
        cases.push(if keep {
            case
        } else {
            case.dropping(with_underscore.len() as u64)
        });
    }
    for (name, bytes) in underscored_framing() {
        cases.push(Case::refused(format!("#63 {name}"), bytes, 400));
    }
    cases
}

#[tokio::test]
async fn forwarding_fields_spelled_with_underscores_never_reach_a_backend() {
    within_timeout(async {
        let backends = spawn_backends(1).await;
        let refs: Vec<&TestBackend> = backends.iter().collect();
        let default = Stickyd::start(&config(&refs, "")).await;
        run(
            "#63 underscores_in_headers = false (default)",
            &default,
            default.addr(),
            &refs,
            underscore_cases(false),
        )
        .await;
        let keep = Stickyd::start(&config(&refs, "underscores_in_headers = true")).await;
        run(
            "#63 underscores_in_headers = true",
            &keep,
            keep.addr(),
            &refs,
            underscore_cases(true),
        )
        .await;
        default.assert_no_panics();
        keep.assert_no_panics();
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// #64 Client-supplied Forwarded and X-Forwarded-* from untrusted and trusted peers
// ---------------------------------------------------------------------------------------------

/// Field sets a client may send: RFC 7239 `Forwarded` (lists, several fields, quoted IPv6
/// nodes, `unknown`, any case) and the `X-Forwarded-*` fields.
const CLIENT_FORWARDING: [&[&str]; 9] = [
    &[],
    &["X-Forwarded-For: 203.0.113.9"],
    &[
        "x-forwarded-for: 203.0.113.9, 198.51.100.7",
        "X-Forwarded-For: 192.0.2.1",
    ],
    &["Forwarded: for=203.0.113.9;proto=https;host=evil.example"],
    &["forwarded: for=\"[2001:db8::6]:4711\";by=192.0.2.9"],
    &[
        "Forwarded: for=203.0.113.9",
        "FORWARDED: for=unknown, for=198.51.100.7",
    ],
    &["X-Forwarded-Proto: https", "X-FORWARDED-HOST: evil.example"],
    &["x-forwarded-proto: https, http"],
    &[
        "X-Forwarded-For: 203.0.113.9",
        "Forwarded: for=203.0.113.9;proto=https",
        "X-Forwarded-Proto: https",
        "X-Forwarded-Host: evil.example",
    ],
];

fn forwarding_cases(trusted: bool) -> Vec<Case> {
    CLIENT_FORWARDING
        .iter()
        .map(|fields| {
            let name = if fields.is_empty() {
                "#64 no forwarding fields".to_string()
            } else {
                format!("#64 {}", fields.join(" | "))
            };
            let client = |name: &str| elements(&sent(fields, name));
            let or = |mut list: Vec<String>, own: &str| {
                if list.is_empty() {
                    list.push(own.to_string());
                }
                list
            };
            let appended = |mut list: Vec<String>, own: &str| {
                list.push(own.to_string());
                list
            };
            let (xff, forwarded, proto, host) = if trusted {
                (
                    appended(client("x-forwarded-for"), OWN_FOR),
                    appended(client("forwarded"), OWN_FORWARDED),
                    or(client("x-forwarded-proto"), "http"),
                    or(client("x-forwarded-host"), HOST),
                )
            } else {
                let own = |value: &str| vec![value.to_string()];
                (own(OWN_FOR), own(OWN_FORWARDED), own("http"), own(HOST))
            };
            let expected = if trusted {
                "200, the client's fields appended to"
            } else {
                "200, only stickyd's own fields"
            };
            Case::forwarded(name, get(fields), expected, move |seen| {
                [
                    expect_elements(seen, "x-forwarded-for", &xff),
                    expect_elements(seen, "forwarded", &forwarded),
                    expect_elements(seen, "x-forwarded-proto", &proto),
                    expect_elements(seen, "x-forwarded-host", &host),
                ]
                .into_iter()
                .flatten()
                .collect()
            })
        })
        .collect()
}

#[tokio::test]
async fn a_clients_forwarding_fields_are_replaced_unless_it_is_a_trusted_proxy() {
    within_timeout(async {
        let backends = spawn_backends(1).await;
        let refs: Vec<&TestBackend> = backends.iter().collect();
        let untrusted = Stickyd::start(&config(&refs, "")).await;
        run(
            "#64 a peer that is no trusted proxy",
            &untrusted,
            untrusted.addr(),
            &refs,
            forwarding_cases(false),
        )
        .await;
        let trusted = Stickyd::start(&config(&refs, "trusted_proxies = [\"127.0.0.1\"]")).await;
        run(
            "#64 a peer in trusted_proxies",
            &trusted,
            trusted.addr(),
            &refs,
            forwarding_cases(true),
        )
        .await;
        untrusted.assert_no_panics();
        trusted.assert_no_panics();
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// #65 h2c anywhere in an upgrade request
// ---------------------------------------------------------------------------------------------

/// The problems with a forwarded request that carries `h2c` or `HTTP2-Settings` anywhere.
fn h2c_leaks(seen: &Seen) -> Vec<String> {
    let mut problems = Vec::new();
    if seen.headers.contains_key("http2-settings") {
        problems.push("HTTP2-Settings reached the backend".into());
    }
    for (name, value) in &seen.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).to_ascii_lowercase();
        if value.contains("h2c") {
            problems.push(format!("{name}: {value} reached the backend"));
        }
    }
    problems
}

/// A WebSocket handshake as the backend must see it: `Upgrade: websocket` alone, no h2c.
fn websocket_only(seen: &Seen) -> Vec<String> {
    let mut problems = h2c_leaks(seen);
    let upgrades = values(seen, "upgrade");
    if upgrades != ["websocket"] {
        problems.push(format!(
            "Upgrade fields {upgrades:?}, expected [\"websocket\"]"
        ));
    }
    problems
}

/// A request that is no WebSocket handshake: no `Upgrade` and no h2c at the backend.
fn no_upgrade(seen: &Seen) -> Vec<String> {
    let mut problems = h2c_leaks(seen);
    if seen.headers.contains_key("upgrade") {
        problems.push(format!(
            "Upgrade: {:?} reached the backend",
            values(seen, "upgrade")
        ));
    }
    problems
}

const SETTINGS: &str = "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA";

#[tokio::test]
async fn h2c_in_an_upgrade_request_never_reaches_the_backend() {
    within_timeout(async {
        let backends = spawn_backends(1).await;
        let refs: Vec<&TestBackend> = backends.iter().collect();
        let stickyd = Stickyd::start(&config(&refs, "")).await;
        let switched = |name: &str, fields: &[&str]| {
            Case::switched(
                format!("#65 ws {name}"),
                handshake(fields),
                "101, exactly Upgrade: websocket, tunnel works",
                websocket_only,
            )
        };
        let plain = |name: &str, bytes: Vec<u8>| {
            Case::forwarded(
                format!("#65 {name}"),
                bytes,
                "200 (never 101), no Upgrade, no h2c",
                no_upgrade,
            )
        };
        let cases = vec![
            switched(
                "Upgrade: h2c, websocket",
                &["Connection: Upgrade", "Upgrade: h2c, websocket"],
            ),
            switched(
                "Upgrade: websocket, h2c + Connection naming HTTP2-Settings",
                &[
                    "Connection: Upgrade, HTTP2-Settings",
                    "Upgrade: websocket, h2c",
                    SETTINGS,
                ],
            ),
            switched(
                "Upgrade: websocket, then a second Upgrade: h2c",
                &["Connection: Upgrade", "Upgrade: websocket", "Upgrade: h2c"],
            ),
            switched(
                "Upgrade: h2c, then a second Upgrade: WebSocket",
                &["Connection: upgrade", "Upgrade: h2c", "Upgrade: WebSocket"],
            ),
            switched(
                "HTTP2-Settings that Connection does not name",
                &["Connection: Upgrade", "Upgrade: websocket", SETTINGS],
            ),
            switched(
                "upper case, Connection in two fields naming h2c",
                &[
                    "CONNECTION: UPGRADE",
                    "Connection: HTTP2-Settings, h2c",
                    "upgrade: H2C, WebSocket",
                    "http2-settings: AAMA",
                ],
            ),
            plain(
                "Upgrade: h2c with Connection: Upgrade, HTTP2-Settings",
                get(&[
                    "Connection: Upgrade, HTTP2-Settings",
                    "Upgrade: h2c",
                    SETTINGS,
                ]),
            ),
            plain("HTTP2-Settings alone", get(&[SETTINGS])),
            plain("Upgrade: h2c without Connection", get(&["Upgrade: h2c"])),
            plain(
                "Upgrade: H2C with Connection naming only HTTP2-Settings",
                get(&["Connection: HTTP2-Settings", "Upgrade: H2C", SETTINGS]),
            ),
            plain(
                "Upgrade: h2c, websocket without Connection: Upgrade",
                get(&["Connection: keep-alive", "Upgrade: h2c, websocket"]),
            ),
            Case::forwarded(
                "#65 POST with a body and Upgrade: h2c",
                post(
                    &[
                        "Connection: Upgrade, HTTP2-Settings",
                        "Upgrade: h2c",
                        SETTINGS,
                        "Content-Length: 5",
                    ],
                    "hello",
                ),
                "200, the body, no Upgrade, no h2c",
                |seen| {
                    let mut problems = no_upgrade(seen);
                    if seen.body != "hello" {
                        problems.push(format!("body {:?}", seen.body));
                    }
                    problems
                },
            ),
        ];
        run(
            "#65 h2c in upgrade requests",
            &stickyd,
            stickyd.addr(),
            &refs,
            cases,
        )
        .await;
        stickyd.assert_no_panics();
    })
    .await;
}

/// A backend driven by hand: to every connection it answers `response` once it read a
/// request head, then records what else arrives on the connection until it closes.
async fn switching_backend(response: &'static [u8]) -> RawBackend {
    RawBackend::spawn(&[Step::Read, Step::Write(response), Step::Drain]).await
}

/// A service `web` over `backend` alone.
fn raw_service(backend: &RawBackend) -> String {
    format!(
        "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\n\n{}",
        backend.toml()
    )
}

const PROBE: &[u8] = b"bytes a tunnel would carry";
const TO_H2C: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n";
const TO_WEBSOCKET: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

#[tokio::test]
async fn a_switch_to_a_protocol_not_asked_for_is_a_502_not_a_tunnel() {
    within_timeout(async {
        let websocket = handshake(&["Connection: Upgrade", "Upgrade: websocket"]);
        let h2c = get(&["Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", SETTINGS]);
        let cases: Vec<(&str, Vec<u8>, &'static [u8])> = vec![
            ("#65 WebSocket handshake, backend switches to h2c", websocket.clone(), TO_H2C),
            (
                "#65 WebSocket handshake, backend switches to websocket, h2c",
                websocket.clone(),
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket, h2c\r\nConnection: Upgrade\r\n\r\n",
            ),
            (
                "#65 WebSocket handshake, backend switches to IRC/6.9",
                websocket.clone(),
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: IRC/6.9\r\nConnection: Upgrade\r\n\r\n",
            ),
            (
                "#65 WebSocket handshake, 101 naming no protocol",
                websocket.clone(),
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n",
            ),
            ("#65 h2c upgrade request, backend switches to h2c", h2c.clone(), TO_H2C),
            ("#65 plain GET, backend switches to h2c", get(&[]), TO_H2C),
            ("#65 plain GET, backend switches to websocket", get(&[]), TO_WEBSOCKET),
            ("#65 h2c upgrade request, backend switches to websocket", h2c, TO_WEBSOCKET),
        ];
        let mut failures = Vec::new();
        println!("\n== #65 101 from the backend");
        for (name, request, response) in cases {
            let backend = switching_backend(response).await;
            let stickyd = Stickyd::start(&raw_service(&backend)).await;
            let mut conn = RawConn::open(stickyd.addr()).await;
            let _ = conn.send(&request).await;
            let answer = conn.answer(1, None).await;
            let _ = conn.send(PROBE).await;
            let mut problems = Vec::new();
            if answer.statuses() != [502] {
                problems.push(format!("statuses {:?}", answer.statuses()));
            }
            // A switched backend connection cannot be reused: stickyd closes it. Only then is
            // it sure that the probe never crossed.
            let closed = tokio::time::timeout(ANSWER_BOUND, backend.wait_closed(1))
                .await
                .is_ok();
            if !closed {
                problems.push("the backend connection was left open".into());
            }
            let after = backend.after();
            if after.windows(PROBE.len()).any(|w| w == PROBE) {
                problems.push("the client's bytes crossed a tunnel to the backend".into());
            }
            for request in backend.requests() {
                let head = request.head;
                let lower = head.to_ascii_lowercase();
                if lower.contains("h2c") || lower.contains("http2-settings") {
                    problems.push(format!("the backend saw {head:?}"));
                }
            }
            problems.extend(stickyd.panics().into_iter().map(|p| format!("stickyd panicked: {p}")));
            let verdict = if problems.is_empty() { "PASS" } else { "FAIL" };
            println!(
                "{verdict} {name:<64} expected {:<30} got {}",
                "502, no tunnel",
                answer.summary()
            );
            if !problems.is_empty() {
                println!("     -> {}", problems.join("; "));
                failures.push(format!("{name}: {}", problems.join("; ")));
            }
        }
        // The control: a backend that switches to the websocket asked for opens a tunnel, and
        // this test sees the probe cross it.
        let backend = switching_backend(TO_WEBSOCKET).await;
        let stickyd = Stickyd::start(&raw_service(&backend)).await;
        let mut conn = RawConn::open(stickyd.addr()).await;
        let _ = conn.send(&websocket).await;
        let answer = conn.answer(1, None).await;
        assert_eq!(answer.statuses(), [101], "control: {}", answer.summary());
        let _ = conn.send(PROBE).await;
        let crossed = tokio::time::timeout(
            ANSWER_BOUND,
            backend.wait_after(|bytes| bytes.windows(PROBE.len()).any(|w| w == PROBE)),
        )
        .await
        .is_ok();
        assert!(crossed, "control: the probe did not cross the websocket tunnel");
        stickyd.assert_no_panics();
        assert!(failures.is_empty(), "101 from the backend:\n  {}", failures.join("\n  "));
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// #66 Connection naming fields stickyd needs
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn connection_naming_host_cookie_or_content_length_does_not_remove_them() {
    within_timeout(async {
        let backends = spawn_backends(1).await;
        let refs: Vec<&TestBackend> = backends.iter().collect();
        let stickyd = Stickyd::start(&config(&refs, "")).await;
        let cookie = "Cookie: a=1; b=2";
        /// The backend got `Host`, both cookie pairs, and `body` whole.
        fn intact(seen: &Seen, body: &str) -> Vec<String> {
            let mut problems = Vec::new();
            if values(seen, "host") != [HOST] {
                problems.push(format!("Host {:?}", values(seen, "host")));
            }
            let pairs: Vec<String> = values(seen, "cookie")
                .iter()
                .flat_map(|field| field.split(';').map(|pair| pair.trim().to_string()))
                .collect();
            if !(pairs.contains(&"a=1".to_string()) && pairs.contains(&"b=2".to_string())) {
                problems.push(format!("cookie pairs {pairs:?}"));
            }
            if seen.body != body {
                problems.push(format!("body {:?}", seen.body));
            }
            problems
        }
        let keeps = |name: &str, bytes: Vec<u8>, body: &'static str| {
            Case::forwarded(
                format!("#66 {name}"),
                bytes,
                "200, Host, cookies and body intact",
                move |seen| intact(seen, body),
            )
        };
        let body = "name=value&x=1";
        let length = format!("Content-Length: {}", body.len());
        let mut cases = vec![
            keeps("Connection: host", get(&["Connection: host", cookie]), ""),
            keeps("Connection: HOST", get(&["Connection: HOST", cookie]), ""),
            keeps(
                "Connection: close, Host",
                get(&["Connection: close, Host", cookie]),
                "",
            ),
            keeps(
                "Connection: keep-alive, then a second Connection: Host",
                get(&["Connection: keep-alive", "Connection: Host", cookie]),
                "",
            ),
            keeps(
                "Connection: Cookie",
                get(&["Connection: Cookie", cookie]),
                "",
            ),
            keeps(
                "Connection: cookie, host in two Cookie fields",
                get(&["Connection: cookie,host", "Cookie: a=1", "Cookie: b=2"]),
                "",
            ),
            keeps(
                "Connection: Content-Length on a POST",
                post(&["Connection: Content-Length", &length, cookie], body),
                body,
            ),
            keeps(
                "Connection: content-length, content-type, cookie, host",
                post(
                    &[
                        "Connection: content-length, content-type, cookie, host",
                        "Content-Type: application/x-www-form-urlencoded",
                        &length,
                        cookie,
                    ],
                    body,
                ),
                body,
            ),
            keeps(
                "Connection: Host, Cookie on a chunked POST",
                post(
                    &[
                        "Connection: Host, Cookie",
                        "Transfer-Encoding: chunked",
                        cookie,
                    ],
                    "e\r\nname=value&x=1\r\n0\r\n\r\n",
                ),
                body,
            ),
        ];
        cases.push(Case::switched(
            "#66 WebSocket handshake with Connection: Upgrade, Host, Cookie",
            handshake(&[
                "Connection: Upgrade, Host, Cookie",
                "Upgrade: websocket",
                cookie,
            ]),
            "101, Host and cookies intact",
            |seen| intact(seen, ""),
        ));
        run(
            "#66 Connection naming needed fields",
            &stickyd,
            stickyd.addr(),
            &refs,
            cases,
        )
        .await;
        stickyd.assert_no_panics();
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// #68 IPv4 peers on a dual-stack listener
// ---------------------------------------------------------------------------------------------

/// Fails the test, with what is missing, unless this machine has IPv6 and an `[::]` listener
/// accepts IPv4 connections.
fn require_dual_stack() {
    let listener = std::net::TcpListener::bind("[::]:0").unwrap_or_else(|error| {
        panic!("#68 needs IPv6: cannot listen on [::]:0 on this machine ({error})")
    });
    let port = listener.local_addr().expect("bound").port();
    let ipv4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    std::net::TcpStream::connect_timeout(&ipv4, Duration::from_secs(2)).unwrap_or_else(|error| {
        panic!(
            "#68 needs a dual-stack [::] listener: 127.0.0.1 cannot reach [::]:{port} ({error}); \
             is net.ipv6.bindv6only set to 1?"
        )
    });
}

#[tokio::test]
async fn ipv4_peers_on_a_dual_stack_listener_are_their_ipv4_address() {
    within_timeout(async {
        require_dual_stack();
        let backends = spawn_backends(4).await;
        let refs: Vec<&TestBackend> = backends.iter().collect();
        let service = |name: &str, listen: &str| {
            let mut text = format!(
                "[[service]]\nname = \"{name}\"\nlisten = [\"{listen}\"]\ntrusted_proxies = [\"127.0.0.1\"]\n\n[service.affinity]\nstrategy = \"hash\"\nkey = \"source-ip\"\n\n"
            );
            for backend in &backends {
                text.push_str(&format!(
                    "[[service.backend]]\nname = \"{0}\"\nid = \"{0}\"\naddress = \"{1}\"\n\n",
                    backend.name, backend.addr
                ));
            }
            text
        };
        let stickyd = Stickyd::start(&format!(
            "{}{}",
            service("dual", "[::]:0"),
            service("ipv4", "127.0.0.1:0")
        ))
        .await;
        let dual = SocketAddr::from((Ipv4Addr::LOCALHOST, stickyd.addrs[0].port()));
        assert!(stickyd.addrs[0].is_ipv6(), "the first service listens on [::]");
        let ipv4 = stickyd.addrs[1];
        let request = get(&["X-Forwarded-For: 203.0.113.9", "Forwarded: for=203.0.113.9"]);
        let mut failures = Vec::new();
        let mut spread = std::collections::BTreeSet::new();
        println!("\n== #68 IPv4 peers on [::]");
        for last in 1..=8u8 {
            let client = Ipv4Addr::new(127, 0, 0, last);
            // 127.0.0.1 is the trusted proxy: its fields are appended to; the others' replaced.
            let (xff, forwarded) = if last == 1 {
                (
                    vec!["203.0.113.9".to_string(), client.to_string()],
                    vec!["for=203.0.113.9".to_string(), format!("for={client};proto=http")],
                )
            } else {
                (vec![client.to_string()], vec![format!("for={client};proto=http")])
            };
            let mut landed = Vec::new();
            for (listener, addr) in [("[::]", dual), ("127.0.0.1", ipv4)] {
                let since = SeenSince::now(&refs);
                let mut conn = RawConn::open_from(client, addr).await;
                let _ = conn.send(&request).await;
                let answer = conn.answer(1, None).await;
                let seen = since.settled().await;
                let mut problems = Vec::new();
                match (answer.first(), seen.as_slice()) {
                    (Some(reply), [one]) if reply.status == 200 => {
                        landed.push(reply.backend().to_string());
                        problems.extend(expect_elements(one, "x-forwarded-for", &xff));
                        problems.extend(expect_elements(one, "forwarded", &forwarded));
                    }
                    _ => problems.push(format!(
                        "{}, backend saw {}",
                        answer.summary(),
                        describe(&seen)
                    )),
                }
                let verdict = if problems.is_empty() { "PASS" } else { "FAIL" };
                println!(
                    "{verdict} #68 client {client:<10} via {listener:<10} got {:<14} {}",
                    answer.summary(),
                    problems.join("; ")
                );
                if !problems.is_empty() {
                    failures.push(format!("client {client} via {listener}: {}", problems.join("; ")));
                }
            }
            if let [via_dual, via_ipv4] = landed.as_slice() {
                if via_dual != via_ipv4 {
                    failures.push(format!(
                        "client {client}: source-ip hash sent it to {via_dual} through [::] and to {via_ipv4} through 127.0.0.1"
                    ));
                }
                spread.insert(via_ipv4.clone());
            }
        }
        assert!(failures.is_empty(), "#68:\n  {}", failures.join("\n  "));
        assert!(
            spread.len() > 1,
            "eight clients all hashed to {spread:?}: the comparison proves nothing"
        );
        stickyd.assert_no_panics();
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// #70 Absolute-form targets with an empty path
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn absolute_form_targets_with_an_empty_path_get_an_answer_on_a_kept_connection() {
    within_timeout(async {
        let backends = spawn_backends(1).await;
        let refs: Vec<&TestBackend> = backends.iter().collect();
        let stickyd = Stickyd::start(&config(&refs, "")).await;
        // (request line, the origin forms a backend may see, its Host)
        let targets: [(&str, &[&str], &str); 12] = [
            ("GET http://x?a=1 HTTP/1.1", &["/?a=1"], "x"),
            ("GET http://x:80? HTTP/1.1", &["/?", "/"], "x:80"),
            ("GET http://x HTTP/1.1", &["/"], "x"),
            ("GET http://x? HTTP/1.1", &["/?", "/"], "x"),
            ("GET HTTP://X?a=1 HTTP/1.1", &["/?a=1"], "X"),
            (
                "GET Http://x.example:8080?a=1&b=/c?d HTTP/1.1",
                &["/?a=1&b=/c?d"],
                "x.example:8080",
            ),
            ("GET https://x?a=1 HTTP/1.1", &["/?a=1"], "x"),
            (
                "GET http://[::1]:8080?a=1 HTTP/1.1",
                &["/?a=1"],
                "[::1]:8080",
            ),
            ("GET http://x:?a=1 HTTP/1.1", &["/?a=1"], "x:"),
            ("OPTIONS http://x?a=1 HTTP/1.1", &["/?a=1"], "x"),
            ("DELETE http://x?a=%20 HTTP/1.1", &["/?a=%20"], "x"),
            ("GET http://x/?a=1 HTTP/1.1", &["/?a=1"], "x"),
        ];
        let mut cases = Vec::new();
        for (line, origins, host) in targets {
            // The Host field disagrees on purpose: the target's authority wins (RFC 9112 §3.2.2).
            let bytes = format!(
                "{line}\r\nHost: {HOST}\r\n\r\nGET /after HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
            );
            let mut case = Case::new(
                format!("#70 {line}"),
                bytes,
                format!("200 as {}, then 200 (or 400 +close)", origins[0]),
                move |answer, seen| {
                    let mut problems = Vec::new();
                    match answer.statuses().as_slice() {
                        [200, 200] => match seen {
                            [first, after] => {
                                if !origins.contains(&first.uri.to_string().as_str()) {
                                    problems.push(format!(
                                        "target {}, expected {origins:?}",
                                        first.uri
                                    ));
                                }
                                if !values(first, "host")
                                    .iter()
                                    .all(|h| h.eq_ignore_ascii_case(host))
                                    || values(first, "host").len() != 1
                                {
                                    problems.push(format!(
                                        "Host {:?}, expected {host}",
                                        values(first, "host")
                                    ));
                                }
                                if after.uri != "/after" {
                                    problems.push(format!("second target {}", after.uri));
                                }
                            }
                            _ => problems.push(format!("backend saw {}", describe(seen))),
                        },
                        [400] if answer.closed => {
                            if !seen.is_empty() {
                                problems.push(format!("backend saw {}", describe(seen)));
                            }
                        }
                        [400, 200] => {
                            if seen.len() != 1 || seen[0].uri != "/after" {
                                problems.push(format!("backend saw {}", describe(seen)));
                            }
                        }
                        other => problems.push(format!("statuses {other:?}")),
                    }
                    verdict(problems)
                },
            );
            case.want = 2;
            cases.push(case);
        }
        run(
            "#70 absolute-form, empty path",
            &stickyd,
            stickyd.addr(),
            &refs,
            cases,
        )
        .await;
        stickyd.assert_no_panics();
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Any target, any head line: an HTTP answer
// ---------------------------------------------------------------------------------------------

/// The bytes of a token (RFC 9110 §5.6.2), `_` included: what field names are made of.
const TCHAR: &[u8] =
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
/// The bytes of a path or query (RFC 3986 pchar, `/`, `?`, `%`).
const TARGET_CHARS: &[u8] =
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@/?%";

/// Any byte, weighted towards the edges: controls (CR, LF and NUL included), DEL, blanks,
/// separators and obs-text (0x80..=0xFF).
fn wide_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => prop::sample::select(TCHAR),
        2 => 0x80u8..=0xff,
        2 => 0x00u8..=0x1f,
        1 => prop::sample::select(&b" \t:;,\"()[]{}<>@=/?\x7f"[..]),
        1 => any::<u8>(),
    ]
}

fn wide_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(wide_byte(), 0..max)
}

/// Path and query bytes.
fn target_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(TARGET_CHARS), 0..max)
}

/// A field value: visible ASCII, blanks and obs-text (RFC 9110 §5.5).
fn value_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    let byte =
        prop_oneof![16 => 0x21u8..=0x7e, 2 => Just(b' '), 1 => Just(b'\t'), 3 => 0x80u8..=0xff];
    prop::collection::vec(byte, 0..max).prop_map(|value| value.trim_ascii().to_vec())
}

/// A request target: origin form, absolute form (any scheme case, an empty path, a query),
/// asterisk and authority forms, wide bytes, and huge ones (past the 64 KiB head limit).
fn target() -> impl Strategy<Value = Vec<u8>> {
    let scheme = prop::sample::select(vec!["http", "HTTP", "https", "Http", "http", "ftp", ""]);
    let host = prop::sample::select(vec![
        "x",
        "app.example",
        "[::1]",
        "127.0.0.1",
        "",
        "a_b",
        "x:80",
        "x:",
        "[bad",
        "a@b",
    ]);
    let path = prop_oneof![
        3 => Just(Vec::new()),
        3 => target_bytes(24).prop_map(|path| [b"/".as_slice(), &path].concat()),
        1 => target_bytes(24),
    ];
    prop_oneof![
        4 => target_bytes(48).prop_map(|bytes| [b"/".as_slice(), &bytes].concat()),
        6 => (scheme, host, path, prop::option::of(target_bytes(24))).prop_map(
            |(scheme, host, path, query)| {
                let mut target = format!("{scheme}://{host}").into_bytes();
                target.extend_from_slice(&path);
                if let Some(query) = query {
                    target.push(b'?');
                    target.extend_from_slice(&query);
                }
                target
            }
        ),
        1 => Just(b"*".to_vec()),
        1 => Just(b"app.example:80".to_vec()),
        1 => wide_bytes(48),
        1 => (target_bytes(24), prop::collection::vec(0x80u8..=0xff, 1..4))
            .prop_map(|(path, obs)| [b"/".as_slice(), &path, &obs].concat()),
        1 => (1usize..90_000).prop_map(|length| [b"/".as_slice(), &vec![b'u'; length]].concat()),
    ]
}

/// A head line: a field name stickyd treats specially (forwarding, hop-by-hop, `_` and
/// framing spellings), a token, or wide bytes; a value of field bytes, one stickyd reads,
/// wide bytes, or a huge one. `Content-Length`, `Transfer-Encoding` and `Expect` are left
/// out: a valid one would make stickyd wait for a body this test does not send.
fn head_line() -> impl Strategy<Value = Vec<u8>> {
    let known = prop::sample::select(vec![
        "X_Forwarded_For",
        "x_forwarded_proto",
        "X-Forwarded_Host",
        "X-Forwarded-For",
        "X-Forwarded-Proto",
        "X-Forwarded-Host",
        "Forwarded",
        "Connection",
        "Upgrade",
        "HTTP2-Settings",
        "Host",
        "Cookie",
        "Content_Length",
        "Transfer_Encoding",
        "TE",
        "Keep-Alive",
        "Proxy-Connection",
    ]);
    let name = prop_oneof![
        3 => known.prop_map(|name| name.as_bytes().to_vec()),
        5 => prop::collection::vec(prop::sample::select(TCHAR), 1..24),
        1 => prop::collection::vec(wide_byte(), 1..24),
    ]
    .prop_filter("no body framing", |name| {
        let name = name.to_ascii_lowercase();
        !matches!(
            name.as_slice(),
            b"content-length" | b"transfer-encoding" | b"expect"
        )
    });
    let value = prop_oneof![
        8 => value_bytes(48),
        2 => prop::sample::select(vec![
            "upgrade", "Upgrade, HTTP2-Settings", "h2c, websocket", "websocket", "host",
            "close", "cookie, content-length", "for=6.6.6.6", "6.6.6.6, ::ffff:1.2.3.4",
            "chunked", "",
        ])
        .prop_map(|value| value.as_bytes().to_vec()),
        1 => wide_bytes(48),
        1 => (1usize..90_000).prop_map(|length| vec![b'v'; length]),
    ];
    (name, value).prop_map(|(name, value)| [name.as_slice(), b": ", &value, b"\r\n"].concat())
}

/// One request head: a method, a target, `Host` most of the time, and up to five lines.
fn arbitrary_request() -> impl Strategy<Value = RawRequest> {
    let method = prop::sample::select(vec![
        "GET", "GET", "GET", "HEAD", "POST", "OPTIONS", "DELETE", "CONNECT", "G_T",
    ]);
    let host = prop::bool::weighted(0.9);
    let lines = prop::collection::vec(head_line(), 0..6);
    (method, target(), host, lines).prop_map(|(method, target, host, lines)| {
        let mut request = [method.as_bytes(), b" ", &target, b" HTTP/1.1\r\n"].concat();
        if host {
            request.extend_from_slice(b"Host: app.example\r\n");
        }
        for line in lines {
            request.extend_from_slice(&line);
        }
        request.extend_from_slice(b"\r\n");
        RawRequest(request)
    })
}

/// A request as bytes, shown escaped (`\r\n`, `\xe9`) and cut at 300 bytes in a failure.
#[derive(Clone)]
struct RawRequest(Vec<u8>);

impl std::fmt::Debug for RawRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = &self.0[..self.0.len().min(300)];
        write!(f, "\"{}\" ({} bytes)", shown.escape_ascii(), self.0.len())
    }
}

#[test]
fn arbitrary_targets_and_head_lines_always_get_an_http_status_line() {
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a client runtime");
    // A backend that answers 200 to anything: the usual paths and queries would panic or hang
    // on some of the targets.
    let (_backend, stickyd) = client.block_on(async {
        let backend = TestBackend::builder("ok").plain().spawn().await;
        let stickyd = Stickyd::start(&config(&[&backend], "")).await;
        (backend, stickyd)
    });
    let addr = stickyd.addr();
    let started = std::time::Instant::now();
    let statuses = Mutex::new(std::collections::BTreeMap::<u16, usize>::new());
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 300,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&arbitrary_request(), |request| {
        let before = stickyd.panics().len();
        let status = client.block_on(async {
            let mut conn = RawConn::open(addr).await;
            let _ = conn.send(&request.0).await;
            conn.status().await
        });
        // Only this case's: a panic inside stickyd is recorded before its socket closes.
        let panics: Vec<String> = stickyd.panics().into_iter().skip(before).collect();
        prop_assert!(
            panics.is_empty(),
            "stickyd panicked on {request:?}:\n{}",
            panics.join("\n")
        );
        prop_assert!(status.is_ok(), "{} for {request:?}", status.unwrap_err());
        if let Ok(status) = status {
            *statuses.lock().unwrap().entry(status).or_default() += 1;
        }
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    println!(
        "arbitrary requests answered in {:?}, by status: {:?}",
        started.elapsed(),
        statuses.lock().unwrap()
    );
}
