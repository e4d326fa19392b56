//! The stick table shared through a Redis Cluster (`redis_url = "redis+cluster://..."`): two
//! stickyd instances agree on sessions through it, the bindings spread over the cluster's
//! masters, a reservation and a redispatch keep their lifetimes whichever master holds the key,
//! they reach the key's master while its slot migrates and after it moved (`ASK`, `MOVED`), a
//! dead master fails no request, and a cluster down when stickyd starts is used once it is up.
//!
//! Each test starts its own cluster on free loopback ports: three `redis-server` processes in
//! cluster mode, joined by `redis-cli --cluster create` (no replicas; the 16384 slots split in
//! three), ready once every node's `CLUSTER INFO` says `cluster_state:ok`. stickyd runs in
//! process, in front of in-process test backends, with the masters as seed nodes.

mod common;

use std::collections::HashMap;

use common::redis::{Browsing, RedisCluster, cluster_ports, cluster_url, shared_table};
use common::{Browser, config, open_session, spawn_backends, start_proxy, within_timeout};

/// Masters in each test's cluster (the fewest `redis-cli --cluster create` accepts).
const MASTERS: usize = 3;

/// True when `redis-server` and `redis-cli` are on PATH. A missing one fails the test with its
/// install line; only under `STICKYD_TEST_ALLOW_MISSING=1` is the answer false instead, and the
/// test returns early.
fn cluster_programs_present() -> bool {
    common::require_program("redis-server") && common::require_program("redis-cli")
}

/// What the key of `session` holds in the cluster, and its `PTTL` (ms; -2 for no key), read
/// through a cluster connection of the test's own.
async fn key(
    connection: &mut redis::cluster_async::ClusterConnection,
    session: &str,
) -> (Option<String>, i64) {
    let key = format!("test:web:{session}");
    let mut pipe = redis::pipe();
    pipe.get(&key).pttl(&key);
    pipe.query_async(connection).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_agree_through_a_redis_cluster_and_its_masters_share_the_keys() {
    if !cluster_programs_present() {
        return;
    }
    within_timeout(async {
        let cluster = RedisCluster::start(MASTERS).await;
        let backends = spawn_backends(3).await;
        let text = config(
            &backends.iter().collect::<Vec<_>>(),
            &shared_table(&cluster.url()),
        );
        let (a, b) = (start_proxy(&text).await, start_proxy(&text).await);
        // Both balance round-robin in the same order; one request without a session on B
        // shifts its turn, so B can agree with A only through the cluster.
        Browser::new().get(&b.url("/")).await;
        let mut sessions = Vec::new();
        for _ in 0..15 {
            let (mut browser, learned) = open_session(&a.url("/session/sid")).await;
            let session = browser.jar["sid"].clone();
            for _ in 0..3 {
                assert_eq!(
                    browser.get(&b.url("/")).await.backend(),
                    learned,
                    "B disagreed with A on session {session}"
                );
            }
            sessions.push((session, learned));
        }
        // Each binding is one key on one master, holding the backend A chose; the keys are
        // spread over the masters (by the slot of each key).
        let mut holder = HashMap::new();
        let mut per_master = Vec::new();
        for &port in &cluster.ports {
            let mut node = cluster.node(port).await;
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg("test:web:*")
                .query_async(&mut node)
                .await
                .unwrap();
            per_master.push((port, keys.len()));
            for key in keys {
                if let Some(other) = holder.insert(key.clone(), port) {
                    panic!("{key} is on two masters: {other} and {port}");
                }
            }
        }
        println!("session keys per master (port, keys): {per_master:?}");
        let mut connection = cluster.connection().await;
        for (session, backend) in &sessions {
            let key_name = format!("test:web:{session}");
            assert!(
                holder.contains_key(&key_name),
                "no master holds {key_name}: {per_master:?}"
            );
            let (stored, _) = key(&mut connection, session).await;
            assert_eq!(stored.as_deref(), Some(backend.as_str()), "{key_name}");
        }
        let holding = per_master.iter().filter(|(_, keys)| *keys > 0).count();
        assert!(holding > 1, "every key is on one master: {per_master:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_and_a_redispatch_keep_their_lifetimes_on_a_redis_cluster() {
    if !cluster_programs_present() {
        return;
    }
    within_timeout(async {
        let cluster = RedisCluster::start(MASTERS).await;
        let backends = spawn_backends(2).await;
        let table = format!("{}reservation_ttl = \"2s\"\n", shared_table(&cluster.url()));
        let proxy = start_proxy(&config(&backends.iter().collect::<Vec<_>>(), &table)).await;
        let mut connection = cluster.connection().await;
        let (reservation_ms, full_ms) = (2_000, 30 * 60 * 1_000);
        // Ids no backend issued are reserved (SET NX GET PX, in one script) for
        // reservation_ttl only; sessions a backend issued are confirmed for the full ttl.
        let mut made_up = Vec::new();
        for index in 0..6 {
            let mut browser = Browser::new();
            let session = format!("made-up-{index}");
            browser.jar.insert("sid".into(), session.clone());
            let backend = browser.get(&proxy.url("/")).await.backend().to_string();
            let (bound, ttl) = key(&mut connection, &session).await;
            assert_eq!(bound.as_deref(), Some(backend.as_str()), "{session}");
            assert!(
                0 < ttl && ttl <= reservation_ms,
                "the reservation {session}'s PTTL is {ttl} ms"
            );
            made_up.push((browser, session, backend));
        }
        let mut confirmed = Vec::new();
        for _ in 0..6 {
            let (browser, backend) = open_session(&proxy.url("/session/sid")).await;
            let session = browser.jar["sid"].clone();
            let (bound, ttl) = key(&mut connection, &session).await;
            assert_eq!(bound.as_deref(), Some(backend.as_str()), "{session}");
            assert!(ttl > full_ms - 60_000, "{session}'s PTTL is {ttl} ms");
            confirmed.push((browser, session, backend));
        }
        // b1 dies: its sessions move to b2 (SET XX KEEPTTL, else SET NX PX, in one script)
        // and keep their lifetimes.
        backends[0].stop();
        let mut moved = (0, 0);
        for (kind, sessions) in [(0, &mut made_up), (1, &mut confirmed)] {
            for (browser, session, backend) in sessions.iter_mut() {
                assert_eq!(browser.get(&proxy.url("/")).await.backend(), "b2");
                let (bound, ttl) = key(&mut connection, session).await;
                assert_eq!(bound.as_deref(), Some("b2"), "{session}");
                if backend.as_str() != "b1" {
                    continue;
                }
                if kind == 0 {
                    moved.0 += 1;
                    assert!(
                        0 < ttl && ttl <= reservation_ms,
                        "the moved reservation {session}'s PTTL is {ttl} ms"
                    );
                } else {
                    moved.1 += 1;
                    assert!(
                        ttl > full_ms - 60_000,
                        "the moved confirmed {session}'s PTTL is {ttl} ms"
                    );
                }
            }
        }
        assert!(
            moved.0 > 0 && moved.1 > 0,
            "round-robin put no reservation or no confirmed session on b1: {moved:?}"
        );
    })
    .await;
}

/// A node as `CLUSTER NODES` lists it (every node is a master here): its id, client port and
/// slot ranges.
struct Master {
    id: String,
    port: u16,
    slots: Vec<(u16, u16)>,
}

/// The nodes of the cluster, as the node on `port` sees them (`CLUSTER NODES`: `<id>
/// <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <link> <slot ranges>...`).
async fn masters(cluster: &RedisCluster, port: u16) -> Vec<Master> {
    let text: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut cluster.node(port).await)
        .await
        .unwrap();
    text.lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let address = fields[1].split('@').next().unwrap();
            Master {
                id: fields[0].to_string(),
                port: address.rsplit(':').next().unwrap().parse().unwrap(),
                slots: fields[8..]
                    .iter()
                    .filter(|range| !range.starts_with('['))
                    .map(|range| match range.split_once('-') {
                        Some((first, last)) => (first.parse().unwrap(), last.parse().unwrap()),
                        None => (range.parse().unwrap(), range.parse().unwrap()),
                    })
                    .collect(),
            }
        })
        .collect()
}

/// `CLUSTER <command> <slot> [arguments]` on the node on `port`, and its answer (`OK`, or
/// `COUNTKEYSINSLOT`'s count); an error fails the test.
async fn cluster_slot_command(
    cluster: &RedisCluster,
    port: u16,
    command: &[&str],
    slot: u16,
) -> redis::Value {
    let mut cmd = redis::cmd("CLUSTER");
    cmd.arg(command[0]).arg(slot).arg(&command[1..]);
    cmd.query_async(&mut cluster.node(port).await)
        .await
        .unwrap()
}

/// What the node on `port` holds itself for `session`: `ASKING` first, so an importing node
/// answers for a key of a slot it is importing.
async fn held_by(cluster: &RedisCluster, port: u16, session: &str) -> Option<String> {
    let mut pipe = redis::pipe();
    pipe.cmd("ASKING")
        .ignore()
        .get(format!("test:web:{session}"));
    let (held,): (Option<String>,) = pipe
        .query_async(&mut cluster.node(port).await)
        .await
        .unwrap();
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_and_a_move_follow_a_slot_migrating_to_another_master() {
    if !cluster_programs_present() {
        return;
    }
    within_timeout(async {
        let cluster = RedisCluster::start(MASTERS).await;
        let backends = spawn_backends(2).await;
        let proxy = start_proxy(&config(
            &backends.iter().collect::<Vec<_>>(),
            &shared_table(&cluster.url()),
        ))
        .await;
        // The sessions `{moving}N` share one slot (the hash tag `{moving}`).
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg("test:web:{moving}")
            .query_async(&mut cluster.node(cluster.ports[0]).await)
            .await
            .unwrap();
        let nodes = masters(&cluster, cluster.ports[0]).await;
        let source = nodes
            .iter()
            .find(|master| master.slots.iter().any(|(a, z)| (*a..=*z).contains(&slot)))
            .expect("a master serves the slot");
        let target = nodes.iter().find(|master| master.id != source.id).unwrap();
        let request = async |session: &str| -> String {
            let mut browser = Browser::new();
            browser.jar.insert("sid".into(), session.into());
            let page = browser.get(&proxy.url("/")).await;
            assert_eq!(page.status, 200, "{session}");
            page.backend().to_string()
        };
        // Before the migration: the reservation is on the slot's master.
        let first = request("{moving}1").await;
        assert_eq!(
            held_by(&cluster, source.port, "{moving}1").await,
            Some(first)
        );
        // The slot migrates: a key the source does not hold is answered with ASK, and the
        // reservation is made on the target.
        let importing = ["SETSLOT", "IMPORTING", &source.id];
        cluster_slot_command(&cluster, target.port, &importing[..], slot).await;
        let migrating = ["SETSLOT", "MIGRATING", &target.id];
        cluster_slot_command(&cluster, source.port, &migrating[..], slot).await;
        let second = request("{moving}2").await;
        assert_eq!(
            held_by(&cluster, target.port, "{moving}2").await.as_deref(),
            Some(second.as_str()),
            "the reservation did not reach the importing master"
        );
        // Its backend dies: the move (a script on the one key) follows the ASK too.
        let dead = backends.iter().position(|b| b.name == second).unwrap();
        backends[dead].stop();
        let moved = request("{moving}2").await;
        assert_ne!(moved, second);
        assert_eq!(
            held_by(&cluster, target.port, "{moving}2").await.as_deref(),
            Some(moved.as_str()),
            "the move did not reach the importing master"
        );
        let ttl: i64 = {
            let mut pipe = redis::pipe();
            pipe.cmd("ASKING").ignore().pttl("test:web:{moving}2");
            let (ttl,): (i64,) = pipe
                .query_async(&mut cluster.node(target.port).await)
                .await
                .unwrap();
            ttl
        };
        assert!(
            0 < ttl && ttl <= 10_000,
            "the moved reservation's PTTL is {ttl} ms"
        );
        // The migration ends: the last key goes over, and every node hands the slot to the
        // target. stickyd's slot map is now stale: the next call is answered with MOVED.
        let _: () = redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(target.port)
            .arg("")
            .arg(0)
            .arg(5_000)
            .arg("KEYS")
            .arg("test:web:{moving}1")
            .query_async(&mut cluster.node(source.port).await)
            .await
            .unwrap();
        for port in [target.port, source.port] {
            let node = ["SETSLOT", "NODE", &target.id];
            cluster_slot_command(&cluster, port, &node[..], slot).await;
        }
        let third = request("{moving}3").await;
        let mut connection = cluster.connection().await;
        assert_eq!(key(&mut connection, "{moving}3").await.0, Some(third));
        assert_eq!(
            cluster_slot_command(&cluster, target.port, &["COUNTKEYSINSLOT"], slot).await,
            redis::Value::Int(3)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_cluster_master_fails_no_request_and_keeps_seen_sessions_sticky() {
    if !cluster_programs_present() {
        return;
    }
    within_timeout(async {
        let mut cluster = RedisCluster::start(MASTERS).await;
        let backends = spawn_backends(3).await;
        let proxy = start_proxy(&config(
            &backends.iter().collect::<Vec<_>>(),
            &shared_table(&cluster.url()),
        ))
        .await;
        let url = proxy.url("/session/sid");
        let mut sessions = Vec::new();
        for _ in 0..6 {
            let mut browser = Browser::new();
            let bound = browser.get(&url).await.backend().to_string();
            sessions.push((browser, bound));
        }
        let mut browsing = Browsing::start(&url, sessions);
        browsing.advance(200).await;
        // One master crashes; with no replica, a third of the slots is served by no one.
        cluster.kill(0).await;
        browsing.advance(500).await;
        for _ in 0..6 {
            assert_eq!(
                Browser::new().get(&url).await.status,
                200,
                "a new session failed while a master was dead"
            );
        }
        let (tally, _) = browsing.stop().await;
        println!(
            "dead master: {} requests, {} failed, {} left their backend",
            tally.requests, tally.failed, tally.moved
        );
        assert_eq!(tally.failed, 0);
        assert_eq!(
            tally.moved, 0,
            "sessions seen by this instance must stay sticky while a master is dead"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_down_when_stickyd_starts_is_used_once_it_is_up() {
    if !cluster_programs_present() {
        return;
    }
    within_timeout(async {
        let pairs = cluster_ports(MASTERS);
        let ports: Vec<u16> = pairs.iter().map(|(port, _)| *port).collect();
        let backends = spawn_backends(2).await;
        let proxy = start_proxy(&config(
            &backends.iter().collect::<Vec<_>>(),
            &shared_table(&cluster_url(&ports)),
        ))
        .await;
        // No node answers: sessions are served from this instance's table.
        let (mut early, bound) = open_session(&proxy.url("/session/sid")).await;
        assert_eq!(early.get(&proxy.url("/")).await.backend(), bound);
        let cluster = RedisCluster::start_on(&pairs).await;
        // The cluster client connects to the seeds again when a call finds no node: new
        // sessions reach the cluster (polled, bounded by the test timeout).
        let mut connection = cluster.connection().await;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (browser, backend) = open_session(&proxy.url("/session/sid")).await;
            let (stored, _) = key(&mut connection, &browser.jar["sid"]).await;
            if let Some(stored) = stored {
                assert_eq!(stored, backend);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        println!("sharing started with the cluster: the {attempts}. new session reached it");
        assert_eq!(early.get(&proxy.url("/")).await.backend(), bound);
    })
    .await;
}
