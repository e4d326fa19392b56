//! Backends that come and go by DNS, against a real DNS server: Debian's `dnsmasq` on a free
//! loopback port, restarted with other records between steps.
//!
//! - SRV discovery: one backend per target; a new target takes new sessions; a target that
//!   leaves the records drains (its sessions stay) and is dropped once they end; the ids of
//!   the targets that stay do not change, so their cookies keep working.
//! - A backend written as a host name follows the name's address when it changes.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use http::Method;
use serde_json::Value;
use tokio::process::{Child, Command};

use common::admin::Admin;
use common::{Browser, TestBackend, require_program, spawn_backends, within_timeout};

/// `dnsmasq` answering only from its own records, on one loopback port for the whole test.
struct Dnsmasq {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Dnsmasq {
    /// Starts it with `records` (dnsmasq options such as `srv-host=...`), TTL 1 s.
    async fn start(records: &[String]) -> Dnsmasq {
        let port = {
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            socket.local_addr().unwrap().port()
        };
        let dir = std::env::temp_dir().join(format!(
            "stickyd-test-{}-dnsmasq-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut dnsmasq = Dnsmasq {
            port,
            dir,
            child: None,
        };
        dnsmasq.serve(records).await;
        dnsmasq
    }

    /// Its address, for `[resolver] nameservers`.
    fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// (Re)starts it on its port with `records` only, and waits until it answers.
    async fn serve(&mut self, records: &[String]) {
        if let Some(mut old) = self.child.take() {
            old.kill().await.unwrap();
        }
        let conf = self.dir.join("dnsmasq.conf");
        let options = [
            format!("port={}", self.port),
            "listen-address=127.0.0.1".into(),
            "bind-interfaces".into(),
            "no-resolv".into(),
            "no-hosts".into(),
            "no-daemon".into(),
            "user=root".into(),
            "pid-file=".into(),
            "local-ttl=1".into(),
        ];
        let text: Vec<String> = options.into_iter().chain(records.iter().cloned()).collect();
        std::fs::write(&conf, text.join("\n") + "\n").unwrap();
        self.child = Some(
            Command::new("dnsmasq")
                .arg(format!("--conf-file={}", conf.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("start dnsmasq"),
        );
        // It answers once it has bound its port: ask until it does (each try waits up to
        // 200 ms for the answer).
        while !self.answers().await {}
    }

    /// Whether it answers a query at all (an empty answer counts).
    async fn answers(&self) -> bool {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // A query for `ready.` type A, id 0x1234, recursion desired.
        let query = [
            0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 5, b'r', b'e', b'a', b'd', b'y', 0, 0,
            1, 0, 1,
        ];
        socket.send_to(&query, self.address()).await.unwrap();
        let mut reply = [0u8; 512];
        matches!(
            tokio::time::timeout(Duration::from_millis(200), socket.recv(&mut reply)).await,
            Ok(Ok(length)) if length >= 12 && reply[..2] == [0x12, 0x34]
        )
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// SRV record of `_http._tcp.app.test` for target `host` (resolving to 127.0.0.1) at `port`.
fn srv(host: &str, port: u16) -> [String; 2] {
    [
        format!("srv-host=_http._tcp.app.test,{host},{port},0,1"),
        format!("host-record={host},127.0.0.1"),
    ]
}

/// `/status` of service `web`: its backends by name.
async fn backends(admin: &Admin) -> Vec<Value> {
    let (_, status) = admin.json(Method::GET, "/status", "").await;
    status["services"][0]["backends"]
        .as_array()
        .unwrap()
        .clone()
}

/// Waits until `done` holds of service `web`'s backends, asking every 50 ms.
async fn until(admin: &Admin, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    loop {
        let now = backends(admin).await;
        if done(&now) {
            return now;
        }
        // stickyd looks DNS up on its own schedule: its result can only be asked for.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn names(backends: &[Value]) -> Vec<&str> {
    let mut names: Vec<&str> = backends
        .iter()
        .map(|backend| backend["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    names
}

/// The config: service `web` discovering `_http._tcp.app.test` from `dns`, insert affinity,
/// sessions that end 2 s after their last request (longer than stickyd takes to see a change
/// in DNS: the records' TTL of 1 s, and dnsmasq's restart).
fn discovering(dns: &Dnsmasq) -> String {
    format!(
        "[resolver]\nnameservers = [\"{}\"]\nmin_refresh = \"100ms\"\nmax_refresh = \"1s\"\n\
         [[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\nsession_idle = \"2s\"\n\
         discovery = {{ dns_srv = \"_http._tcp.app.test\" }}\n\
         [service.affinity]\nstrategy = \"insert\"\n",
        dns.address()
    )
}

fn port(backend: &TestBackend) -> u16 {
    backend.addr.port()
}

#[tokio::test]
async fn srv_targets_come_and_go_and_a_gone_one_drains_before_it_is_dropped() {
    if !require_program("dnsmasq") {
        return;
    }
    within_timeout(async {
        let apps = spawn_backends(3).await;
        let mut dns = Dnsmasq::start(
            &[
                srv("a.app.test", port(&apps[0])),
                srv("b.app.test", port(&apps[1])),
            ]
            .concat(),
        )
        .await;
        let admin = Admin::start_on(&discovering(&dns)).await;
        let found = until(&admin, |now| now.len() == 2).await;
        let expected = [
            format!("a.app.test-{}", port(&apps[0])),
            format!("b.app.test-{}", port(&apps[1])),
        ];
        assert_eq!(names(&found), expected);
        let id_of = |backends: &[Value], host: &str| {
            backends
                .iter()
                .find(|b| b["name"].as_str().unwrap().starts_with(host))
                .map(|b| b["id"].as_str().unwrap().to_string())
        };
        let a_id = id_of(&found, "a.app.test").unwrap();
        assert_eq!(
            a_id,
            stickyd::discovery::target_id("a.app.test", port(&apps[0]))
        );

        // One session on each target.
        let url = format!("{}/session/app", admin.proxy);
        let mut on_a = Browser::new();
        let mut on_b = Browser::new();
        assert_eq!(on_a.get(&url).await.backend(), "b1");
        assert_eq!(on_b.get(&url).await.backend(), "b2");

        // b leaves the records, c joins, while b's session is live.
        assert_eq!(on_b.get(&url).await.backend(), "b2");
        dns.serve(
            &[
                srv("a.app.test", port(&apps[0])),
                srv("c.app.test", port(&apps[2])),
            ]
            .concat(),
        )
        .await;
        let changed = until(&admin, |now| now.len() == 3).await;
        let b = changed
            .iter()
            .find(|backend| backend["name"].as_str().unwrap().starts_with("b.app.test"))
            .unwrap();
        assert_eq!(
            (&b["state"], &b["removing"]),
            (&"drain".into(), &true.into())
        );
        assert_eq!(id_of(&changed, "a.app.test").unwrap(), a_id, "a's id stays");
        // b's session stays on b while it drains; a's session keeps its backend too; new
        // sessions go to a and c only.
        for _ in 0..3 {
            assert_eq!(on_b.get(&url).await.backend(), "b2");
            assert_eq!(on_a.get(&url).await.backend(), "b1");
        }
        let mut fresh = Vec::new();
        for _ in 0..4 {
            fresh.push(Browser::new().get(&url).await.backend().to_string());
        }
        assert!(fresh.iter().all(|name| name != "b2"), "{fresh:?}");
        assert!(fresh.iter().any(|name| name == "b3"), "{fresh:?}");

        // Once b's session has ended, b is dropped.
        let after = until(&admin, |now| now.len() == 2).await;
        assert!(id_of(&after, "b.app.test").is_none());
        assert_eq!(
            on_a.get(&url).await.backend(),
            "b1",
            "a's cookie still names a"
        );

        // A reload keeps what DNS found: the file does not list it, and a's session must
        // not wait for the next lookup.
        admin
            .runtime
            .reload(stickyd::config::Config::parse(&discovering(&dns), "<test>").unwrap())
            .await
            .unwrap();
        assert_eq!(names(&backends(&admin).await), names(&after));
        assert_eq!(on_a.get(&url).await.backend(), "b1");
        admin.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_backend_written_as_a_host_name_follows_its_address() {
    if !require_program("dnsmasq") {
        return;
    }
    within_timeout(async {
        let first = TestBackend::spawn("first").await;
        // The second app on the same port at another loopback address.
        let moved_to = SocketAddr::from(([127, 0, 0, 2], first.addr.port()));
        let second = TestBackend::builder("second").at(moved_to).spawn().await;
        let mut dns = Dnsmasq::start(&["host-record=app.internal,127.0.0.1".to_string()]).await;
        let admin = Admin::start_on(&format!(
            "[resolver]\nnameservers = [\"{}\"]\nmin_refresh = \"100ms\"\nmax_refresh = \"1s\"\n\
             [[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\n\
             [service.affinity]\nstrategy = \"insert\"\n\
             [[service.backend]]\nname = \"app\"\naddress = \"app.internal:{}\"\n",
            dns.address(),
            first.addr.port()
        ))
        .await;
        let url = format!("{}/", admin.proxy);
        let mut browser = Browser::new();
        assert_eq!(browser.get(&url).await.backend(), "first");

        dns.serve(&["host-record=app.internal,127.0.0.2".to_string()])
            .await;
        let moved = until(&admin, |now| now[0]["address"] == moved_to.to_string()).await;
        assert_eq!(moved[0]["name"], "app");
        // Same backend, same id: the session's cookie still names it, at its new address.
        assert_eq!(browser.get(&url).await.backend(), "second");
        let _ = second;
        admin.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_dns_outage_keeps_the_backends_as_they_are() {
    if !require_program("dnsmasq") {
        return;
    }
    within_timeout(async {
        let apps = spawn_backends(1).await;
        let mut dns = Dnsmasq::start(&srv("a.app.test", port(&apps[0]))).await;
        let admin = Admin::start_on(&discovering(&dns)).await;
        until(&admin, |now| now.len() == 1).await;
        // The server stops answering altogether.
        dns.child.take().unwrap().kill().await.unwrap();
        let url = format!("{}/", admin.proxy);
        // Several lookups fail meanwhile (min_refresh 100 ms); requests are still served.
        for _ in 0..10 {
            assert_eq!(Browser::new().get(&url).await.backend(), "b1");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let now = backends(&admin).await;
        assert_eq!((now.len(), &now[0]["removing"]), (1, &false.into()));
        admin.stop().await;
    })
    .await;
}
