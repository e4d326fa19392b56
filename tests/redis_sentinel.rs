//! The stick table shared through Redis Sentinel: a failover of the master fails no request,
//! moves no session, and the table follows the promoted replica.
//!
//! The test starts, on free loopback ports, a primary `redis-server`, a replica of it
//! (`--replicaof`) and three `redis-sentinel` processes monitoring the primary as `mymaster`
//! (quorum 2, `down-after-milliseconds` 1000, `failover-timeout` 3000), then stickyd in process
//! with `redis_url = "redis+sentinel://s1,s2,s3/mymaster"`. It opens 50 sessions, confirms
//! the replica has every binding (`WAIT 1` on the primary after a write of its own: the
//! replication stream is ordered, so the replica acknowledging that write means it has every
//! earlier one), kills the primary (SIGKILL) while every session keeps sending requests, and
//! waits until the sentinels promote the replica.
//!
//! The loss bound: Redis replicates asynchronously, so a failover loses the bindings the primary
//! acknowledged but had not yet sent to the replica when it died (those written after the last
//! replicated offset: in practice the last milliseconds of writes). Such a session stays on its
//! backend on the instances that hold it in their local table; an instance that never saw it
//! balances it anew. This test confirms replication before the kill, so it asserts that no
//! binding was lost: a second stickyd started after the failover, which knows the sessions
//! only through the new master, sends every one to its backend.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use tokio::process::{Child, Command};

use common::redis::{
    Browsing, Redis, connect_when_up, free_port, new_sessions_until_stored, shared_table, stored,
};
use common::{config, open_session, spawn_backends, start_proxy, within_timeout};

/// The name the sentinels monitor the primary under.
const MASTER: &str = "mymaster";

/// Sessions opened before the failover.
const SESSIONS: usize = 50;

/// Longest the sentinels may take to promote the replica once the primary is killed
/// (`down-after-milliseconds` 1 s, then agreement, election and promotion take a few more).
const FAILOVER_DEADLINE: Duration = Duration::from_secs(20);

/// Longest stickyd may take, once the sentinels name the new master, to write to it: its search
/// for the master backs off to at most 1 s between attempts.
const SWITCH_DEADLINE: Duration = Duration::from_secs(10);

/// A `redis-sentinel` of the test's own on a free loopback port, monitoring the primary as
/// [`MASTER`]; its config file (which it rewrites) and log live in a directory of its own.
/// Killed, and its directory removed, when dropped.
struct Sentinel {
    port: u16,
    dir: PathBuf,
    _child: Child,
}

impl Sentinel {
    /// Starts sentinel number `index` watching `primary` and waits until it answers PING.
    async fn start(index: usize, primary: &Redis) -> Sentinel {
        let port = free_port();
        let dir = common::temp_file(&format!("sentinel-{index}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\nlogfile {log}\n\
                 sentinel monitor {MASTER} 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds {MASTER} 1000\n\
                 sentinel failover-timeout {MASTER} 3000\n\
                 sentinel parallel-syncs {MASTER} 1\n",
                dir = dir.display(),
                log = dir.join("sentinel.log").display(),
                primary = primary.port,
            ),
        )
        .unwrap();
        let child = Command::new("redis-sentinel")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start redis-sentinel");
        connect_when_up(port).await;
        Sentinel {
            port,
            dir,
            _child: child,
        }
    }

    /// `127.0.0.1:PORT`.
    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn connection(&self) -> MultiplexedConnection {
        connect_when_up(self.port).await
    }

    /// Its log, for a failure message.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sentinel.log")).unwrap_or_default()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `SENTINEL <what> mymaster`: a list of tables (`SENTINEL SENTINELS`, `SENTINEL REPLICAS`).
async fn sentinel_list(
    connection: &mut MultiplexedConnection,
    what: &str,
) -> Vec<HashMap<String, String>> {
    redis::cmd("SENTINEL")
        .arg(what)
        .arg(MASTER)
        .query_async(connection)
        .await
        .unwrap()
}

/// Waits until every sentinel knows the two others and sees the replica up: only then can they
/// agree that the primary is down and promote the replica. Sentinels find each other through
/// hello messages every 2 s, and replicas through the primary's `INFO`; polled.
async fn until_sentinels_ready(sentinels: &[Sentinel]) {
    for sentinel in sentinels {
        let mut connection = sentinel.connection().await;
        loop {
            let others = sentinel_list(&mut connection, "SENTINELS").await;
            let replicas = sentinel_list(&mut connection, "REPLICAS").await;
            let replica_up = replicas.len() == 1 && replicas[0]["flags"] == "slave";
            if others.len() == sentinels.len() - 1 && replica_up {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Waits until the sentinels name the server on `port` as the master (polled), or fails with
/// their logs after [`FAILOVER_DEADLINE`].
async fn until_master_is(sentinels: &[Sentinel], port: u16) {
    let mut connection = sentinels[0].connection().await;
    let promoted = async {
        loop {
            let address: Vec<String> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(MASTER)
                .query_async(&mut connection)
                .await
                .unwrap();
            if address
                .get(1)
                .is_some_and(|named| *named == port.to_string())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    if tokio::time::timeout(FAILOVER_DEADLINE, promoted)
        .await
        .is_err()
    {
        let logs: Vec<String> = sentinels.iter().map(Sentinel::log).collect();
        panic!(
            "the sentinels did not promote 127.0.0.1:{port} within {FAILOVER_DEADLINE:?}; \
             their logs:\n{}",
            logs.join("\n---\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_fails_no_request_and_the_table_follows_the_promoted_replica() {
    if !common::require_program("redis-server") || !common::require_program("redis-sentinel") {
        return;
    }
    within_timeout(async {
        let started = Instant::now();
        let primary = Redis::start().await;
        let replica = Redis::start_replica_of(&primary).await;
        let mut sentinels = Vec::new();
        for index in 1..=3 {
            sentinels.push(Sentinel::start(index, &primary).await);
        }
        until_sentinels_ready(&sentinels).await;
        let addresses: Vec<String> = sentinels.iter().map(Sentinel::address).collect();
        let url = format!("redis+sentinel://{}/{MASTER}", addresses.join(","));
        let backends = spawn_backends(3).await;
        let backends: Vec<_> = backends.iter().collect();
        let table = config(&backends, &shared_table(&url));
        let proxy = start_proxy(&table).await;
        println!(
            "primary, replica, 3 sentinels and stickyd ready after {:?}",
            started.elapsed()
        );

        // stickyd finds the master through the sentinels; then every session opened is
        // written to it.
        let mut on_primary = primary.connection().await;
        new_sessions_until_stored(&proxy, &mut on_primary).await;
        let mut sessions = Vec::new();
        for _ in 0..SESSIONS {
            let (browser, backend) = open_session(&proxy.url("/session/sid")).await;
            let held = stored(&mut on_primary, &browser.jar["sid"]).await;
            assert_eq!(
                held.as_deref(),
                Some(backend.as_str()),
                "a session was not written to the master"
            );
            sessions.push((browser, backend));
        }
        // Replication confirmed: the replica acknowledged a write made after every binding.
        redis::cmd("SET")
            .arg("test:fence")
            .arg(1)
            .exec_async(&mut on_primary)
            .await
            .unwrap();
        let acknowledged: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(5000)
            .query_async(&mut on_primary)
            .await
            .unwrap();
        assert_eq!(
            acknowledged, 1,
            "the replica did not acknowledge the writes"
        );
        let mut on_replica = replica.connection().await;
        for (browser, backend) in &sessions {
            let held = stored(&mut on_replica, &browser.jar["sid"]).await;
            assert_eq!(
                held.as_deref(),
                Some(backend.as_str()),
                "the replica lacks a session"
            );
        }

        // Every session keeps requesting while the primary dies and the replica takes over.
        let mut browsing = Browsing::start(&proxy.url("/"), sessions);
        browsing.advance(200).await;
        drop(on_primary);
        primary.kill().await;
        let killed = Instant::now();
        browsing.advance(200).await;
        until_master_is(&sentinels, replica.port).await;
        let promoted = killed.elapsed();
        // The promotion closed every client connection of the replica (Sentinel sends it
        // `CLIENT KILL TYPE normal` with `REPLICAOF NO ONE`): connect again.
        let mut on_replica = replica.connection().await;
        // New sessions reach the new master once stickyd has asked the sentinels again.
        let attempts = tokio::time::timeout(
            SWITCH_DEADLINE,
            new_sessions_until_stored(&proxy, &mut on_replica),
        )
        .await
        .expect("stickyd did not write to the new master: it did not ask the sentinels again");
        let switched = killed.elapsed();
        browsing.advance(200).await;
        let (tally, sessions) = browsing.stop().await;
        println!(
            "failover: promoted {promoted:?} after the kill; stickyd wrote to the new master \
             {switched:?} after it ({attempts} new sessions); {} requests, {} failed, {} moved",
            tally.requests, tally.failed, tally.moved
        );
        assert_eq!(tally.failed, 0, "a request failed during the failover");
        assert_eq!(
            tally.moved, 0,
            "a session left its backend during the failover"
        );

        // After the failover, every new session is written to the new master.
        for _ in 0..10 {
            let (browser, backend) = open_session(&proxy.url("/session/sid")).await;
            let held = stored(&mut on_replica, &browser.jar["sid"]).await;
            assert_eq!(
                held.as_deref(),
                Some(backend.as_str()),
                "a new session was not written to the new master"
            );
        }

        // A second instance, which knows the sessions only through the new master, agrees on
        // every one: no binding was lost in the failover.
        let second = start_proxy(&table).await;
        new_sessions_until_stored(&second, &mut on_replica).await;
        let mut kept = 0;
        for (mut browser, backend) in sessions {
            let page = browser.get(&second.url("/")).await;
            assert_eq!(page.status, 200);
            kept += usize::from(page.backend() == backend);
        }
        println!(
            "{kept} of {SESSIONS} sessions kept their backend across the failover, seen from a \
             new instance; the test took {:?}",
            started.elapsed()
        );
        assert_eq!(
            kept, SESSIONS,
            "replication was confirmed before the kill, so no session may move"
        );
    })
    .await;
}
