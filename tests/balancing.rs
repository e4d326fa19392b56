//! Round-robin balancing of new sessions end to end: when a backend takes no new sessions (down,
//! `drain`, `maint`, or a backup while the primaries serve), its turns spread over the others by
//! weight, as nginx's smooth weighted round-robin does, instead of all going to its neighbour.

mod common;

use std::collections::BTreeMap;

use common::{Browser, Proxy, TestBackend, start_proxy, within_timeout};

const INSERT: &str = "[service.affinity]\nstrategy = \"insert\"\n";
const NONE: &str = "[service.affinity]\nstrategy = \"none\"\n";

/// How many new sessions each test makes.
const SESSIONS: usize = 300;

/// A config with one round-robin service over `backends`, each with its extra keys (`weight`,
/// `state`, `backup`), and `settings` as the service's further keys and sub-tables.
fn config(backends: &[(&TestBackend, &str)], settings: &str) -> String {
    let mut text = format!(
        "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\nbalance = \"round-robin\"\n{settings}\n"
    );
    for (backend, extra) in backends {
        text.push_str(&format!(
            "[[service.backend]]\nname = \"{}\"\naddress = \"{}\"\n{extra}\n",
            backend.name, backend.addr
        ));
    }
    text
}

/// Makes `count` new sessions one after another (requests without a cookie) and counts the
/// backends that served them; each must answer 200.
async fn new_sessions(proxy: &Proxy, count: usize) -> BTreeMap<String, usize> {
    let mut browser = Browser::new();
    let mut served = BTreeMap::new();
    for session in 0..count {
        browser.jar.clear();
        let page = browser.get(&proxy.url("/")).await;
        assert_eq!(page.status, 200, "new session {session} failed: {page:?}");
        *served.entry(page.backend().to_string()).or_insert(0) += 1;
    }
    served
}

/// `[(name, count)]` as the map [`new_sessions`] returns.
fn spread(counts: &[(&str, usize)]) -> BTreeMap<String, usize> {
    counts
        .iter()
        .map(|(name, count)| (name.to_string(), *count))
        .collect()
}

#[tokio::test]
async fn a_down_backends_turns_spread_over_the_others() {
    within_timeout(async {
        let backends = common::spawn_backends(3).await;
        backends[1].stop();
        let proxy = start_proxy(&config(
            &[(&backends[0], ""), (&backends[1], ""), (&backends[2], "")],
            &format!("ejection_time = \"1m\"\n{INSERT}"),
        ))
        .await;
        // b2's one turn before its ejection (its connect is refused) is retried on b3; from then
        // on b1 and b3 alternate.
        assert_eq!(
            new_sessions(&proxy, SESSIONS).await,
            spread(&[("b1", 150), ("b3", 150)])
        );
        proxy.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_draining_backends_turns_spread_over_the_others() {
    within_timeout(async {
        let backends = common::spawn_backends(3).await;
        let proxy = start_proxy(&config(
            &[
                (&backends[0], "state = \"drain\"\n"),
                (&backends[1], ""),
                (&backends[2], ""),
            ],
            INSERT,
        ))
        .await;
        assert_eq!(
            new_sessions(&proxy, SESSIONS).await,
            spread(&[("b2", 150), ("b3", 150)])
        );
        proxy.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_backend_in_maintenance_has_its_turns_spread_over_the_others() {
    within_timeout(async {
        let backends = common::spawn_backends(3).await;
        let proxy = start_proxy(&config(
            &[
                (&backends[0], ""),
                (&backends[1], "state = \"maint\"\n"),
                (&backends[2], ""),
            ],
            INSERT,
        ))
        .await;
        assert_eq!(
            new_sessions(&proxy, SESSIONS).await,
            spread(&[("b1", 150), ("b3", 150)])
        );
        proxy.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_backup_takes_no_turns_from_the_primaries_while_they_serve() {
    within_timeout(async {
        let backends = common::spawn_backends(3).await;
        let proxy = start_proxy(&config(
            &[
                (&backends[0], ""),
                (&backends[1], ""),
                (&backends[2], "backup = true\n"),
            ],
            NONE,
        ))
        .await;
        assert_eq!(
            new_sessions(&proxy, SESSIONS).await,
            spread(&[("b1", 150), ("b2", 150)])
        );
        assert_eq!(backends[2].count(), 0, "the backup served");
        proxy.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn weights_are_followed_exactly_and_a_draining_heavy_backends_turns_spread_by_weight() {
    within_timeout(async {
        let backends = common::spawn_backends(3).await;
        let weights = [
            (&backends[0], "weight = 2\n"),
            (&backends[1], "weight = 1\n"),
            (&backends[2], "weight = 1\n"),
        ];
        let proxy = start_proxy(&config(&weights, NONE)).await;
        assert_eq!(
            new_sessions(&proxy, SESSIONS).await,
            spread(&[("b1", 150), ("b2", 75), ("b3", 75)])
        );
        proxy.shutdown().await;

        let proxy = start_proxy(&config(
            &[
                (&backends[0], "weight = 2\nstate = \"drain\"\n"),
                (&backends[1], "weight = 1\n"),
                (&backends[2], "weight = 1\n"),
            ],
            NONE,
        ))
        .await;
        assert_eq!(
            new_sessions(&proxy, SESSIONS).await,
            spread(&[("b2", 150), ("b3", 150)])
        );
        proxy.shutdown().await;
    })
    .await;
}
