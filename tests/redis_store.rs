//! The stick table shared through a real Redis: two stickyd processes agree on sessions, a
//! restart loses nothing, and a Redis outage or stall fails no request.

mod common;

use common::redis::{Browsing, Redis, new_sessions_until_stored, shared_table};
use common::{Browser, Daemon, config, open_session, spawn_backends, within_timeout};

/// True when `redis-server` is on PATH. Missing, it fails the test with
/// `apt-get install redis-server`; only under `STICKYD_TEST_ALLOW_MISSING=1` is the answer false
/// instead, and the test returns early.
fn redis_present() -> bool {
    common::require_program("redis-server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_agree_through_redis_and_a_restart_loses_no_session() {
    if !redis_present() {
        return;
    }
    within_timeout(async {
        let redis = Redis::start().await;
        let backends = spawn_backends(3).await;
        let path = common::temp_file("redis-two.toml");
        std::fs::write(
            &path,
            config(
                &backends.iter().collect::<Vec<_>>(),
                &shared_table(&redis.url()),
            ),
        )
        .unwrap();
        let (mut a, mut b) = (Daemon::start(&path), Daemon::start(&path));
        let (url_a, url_b) = (
            format!("http://{}/", a.address().await),
            format!("http://{}/", b.address().await),
        );
        // Both balance round-robin in the same order; one unrelated new session on B shifts its
        // turn, so B can agree with A only through Redis.
        Browser::new().get(&url_b).await;
        let mut sessions = Vec::new();
        for _ in 0..5 {
            let (mut browser, learned) = open_session(&format!("{url_a}session/sid")).await;
            for _ in 0..3 {
                assert_eq!(
                    browser.get(&url_b).await.backend(),
                    learned,
                    "B disagreed with A"
                );
            }
            sessions.push((browser, learned));
        }
        assert_eq!(a.stop().await, Some(0));
        let mut a = Daemon::start(&path);
        let restarted = format!("http://{}/", a.address().await);
        for (browser, learned) in &mut sessions {
            assert_eq!(
                browser.get(&restarted).await.backend(),
                learned.as_str(),
                "a session did not survive A's restart"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_and_stall_fail_no_request_and_keep_seen_sessions_sticky() {
    if !redis_present() {
        return;
    }
    within_timeout(async {
        let redis = Redis::start().await;
        let backends = spawn_backends(3).await;
        let proxy = common::start_proxy(&config(&backends.iter().collect::<Vec<_>>(), &shared_table(&redis.url()))).await;
        let url = proxy.url("/session/sid");
        let mut sessions = Vec::new();
        for _ in 0..6 {
            let mut browser = Browser::new();
            let bound = browser.get(&url).await.backend().to_string();
            sessions.push((browser, bound));
        }
        let mut browsing = Browsing::start(&url, sessions);
        browsing.advance(300).await;
        // A stall: Redis blocks for 400 ms; every call times out at 50 ms and the local table answers.
        let mut stalled = redis.connection().await;
        let stall = tokio::spawn(async move { redis::cmd("DEBUG").arg("SLEEP").arg("0.4").query_async::<()>(&mut stalled).await });
        browsing.advance(200).await;
        stall.await.unwrap().expect("DEBUG SLEEP stalls Redis");
        // An outage: Redis dies, then comes back on the same port.
        let port = redis.kill().await;
        browsing.advance(500).await;
        let redis = Redis::start_on(port).await;
        browsing.advance(500).await;
        let (tally, _) = browsing.stop().await;
        let (requests, failed, moved) = (tally.requests, tally.failed, tally.moved);
        println!("redis fault test: {requests} requests through a 400 ms stall, a kill and a restart; {failed} failed; {moved} left their backend");
        assert_eq!(failed, 0);
        assert_eq!(moved, 0, "sessions seen by this instance must stay sticky through the outage");
        // Sharing resumes once the client has reconnected (with backoff): new sessions reach
        // the restarted Redis again. Poll, bounded by the test timeout.
        let attempts = new_sessions_until_stored(&proxy, &mut redis.connection().await).await;
        println!("sharing resumed after the restart: the {attempts}. new session reached Redis");
    })
    .await;
}

#[tokio::test]
async fn a_reservation_lives_reservation_ttl_in_redis_until_a_backend_confirms_the_id() {
    if !redis_present() {
        return;
    }
    within_timeout(async {
        let redis = Redis::start().await;
        let backends = spawn_backends(2).await;
        let table = format!("{}reservation_ttl = \"2s\"\n", shared_table(&redis.url()));
        let proxy =
            common::start_proxy(&config(&backends.iter().collect::<Vec<_>>(), &table)).await;
        let mut connection = redis.connection().await;
        let mut key = async |session: &str| -> (Option<String>, i64) {
            let key = format!("test:web:{session}");
            let mut pipe = redis::pipe();
            pipe.get(&key).pttl(&key);
            pipe.query_async(&mut connection).await.unwrap()
        };
        let (reservation_ms, full_ms) = (2_000, 30 * 60 * 1_000);
        // Round-robin: an id no backend issued is reserved on b1 for reservation_ttl only.
        let mut made_up = Browser::new();
        made_up.jar.insert("sid".into(), "made-up".into());
        assert_eq!(made_up.get(&proxy.url("/")).await.backend(), "b1");
        let (bound, ttl) = key("made-up").await;
        assert_eq!(bound.as_deref(), Some("b1"));
        assert!(
            0 < ttl && ttl <= reservation_ms,
            "a reservation's PTTL is {ttl} ms"
        );
        // An id longer than max_key_bytes (256) is no session: no key.
        let oversized = "x".repeat(257);
        let mut too_long = Browser::new();
        too_long.jar.insert("sid".into(), oversized.clone());
        assert_eq!(too_long.get(&proxy.url("/")).await.status, 200);
        assert_eq!(
            key(&oversized).await,
            (None, -2),
            "an oversized id left a key"
        );
        // b1 issues a session: its Set-Cookie confirms the id, for the full ttl (30 min).
        let mut confirmed = Browser::new();
        assert_eq!(
            confirmed.get(&proxy.url("/session/sid")).await.backend(),
            "b1"
        );
        let (bound, ttl) = key("b1-1").await;
        assert_eq!(bound.as_deref(), Some("b1"));
        assert!(ttl > full_ms - 60_000, "a confirmed key's PTTL is {ttl} ms");
        // b1 dies: both sessions move to b2 and keep their lifetimes.
        backends[0].stop();
        assert_eq!(made_up.get(&proxy.url("/")).await.backend(), "b2");
        assert_eq!(confirmed.get(&proxy.url("/")).await.backend(), "b2");
        let (bound, ttl) = key("made-up").await;
        assert_eq!(bound.as_deref(), Some("b2"));
        assert!(
            0 < ttl && ttl <= reservation_ms,
            "a moved reservation's PTTL is {ttl} ms"
        );
        let (bound, ttl) = key("b1-1").await;
        assert_eq!(bound.as_deref(), Some("b2"));
        assert!(
            ttl > full_ms - 60_000,
            "a moved confirmed key's PTTL is {ttl} ms"
        );
    })
    .await;
}
