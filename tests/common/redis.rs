//! Redis for the tests: `redis-server` started by the test on a free loopback port (a primary,
//! or a replica of one), and browsers that keep requesting through stickyd while a test breaks
//! Redis, tallying what they saw.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::watch;

use super::{Browser, Proxy};

/// The `[service.affinity]` of a stick table on cookie `sid` shared through the Redis at `url`,
/// its keys under `test:` (a binding of service `web` is the key `test:web:<session>`).
pub fn shared_table(url: &str) -> String {
    format!(
        "[service.affinity]\nstrategy = \"stick-table\"\ncookie = \"sid\"\nstore = \"redis\"\nredis_url = \"{url}\"\nkey_prefix = \"test:\"\n"
    )
}

/// The backend the Redis on `connection` binds `session` of service `web` to, under
/// [`shared_table`]'s keys.
pub async fn stored(
    connection: &mut redis::aio::MultiplexedConnection,
    session: &str,
) -> Option<String> {
    redis::cmd("GET")
        .arg(format!("test:web:{session}"))
        .query_async(connection)
        .await
        .unwrap()
}

/// Opens new sessions through `proxy` (`/session/sid` of service `web`, under
/// [`shared_table`]) until one's binding is stored in the Redis on `connection`, and checks it
/// names the backend that answered; returns how many sessions it took. stickyd (re)connects to
/// Redis with backoff, so this polls (bounded by the test timeout).
pub async fn new_sessions_until_stored(
    proxy: &Proxy,
    connection: &mut redis::aio::MultiplexedConnection,
) -> u32 {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut browser = Browser::new();
        let backend = browser
            .get(&proxy.url("/session/sid"))
            .await
            .backend()
            .to_string();
        if let Some(stored) = stored(connection, &browser.jar["sid"]).await {
            assert_eq!(
                stored, backend,
                "Redis holds another backend than the one that answered"
            );
            return attempts;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free TCP port on loopback, for a program that takes its port as an argument (the listener
/// is closed again at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A multiplexed connection to the Redis (or sentinel) on loopback `port`, once it answers
/// PING. The programs have no readiness signal: PING is polled (bounded by the test timeout).
pub async fn connect_when_up(port: u16) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    loop {
        if let Ok(mut connection) = client.get_multiplexed_async_connection().await
            && redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
                .is_ok()
        {
            return connection;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `redis-server` of the test's own: loopback, no persistence, its working directory (where
/// a replica keeps the snapshot of its first sync) a temporary one; killed, and the directory
/// removed, when dropped.
pub struct Redis {
    pub port: u16,
    dir: std::path::PathBuf,
    child: Child,
}

impl Redis {
    /// Starts on a free port and waits until it answers PING.
    pub async fn start() -> Redis {
        Redis::start_on(free_port()).await
    }

    /// Starts on `port` and waits until it answers PING.
    pub async fn start_on(port: u16) -> Redis {
        Redis::start_with(port, &[]).await
    }

    /// Starts a replica of `primary` on a free port (`--replicaof`) and waits until its link to
    /// the primary is up (`master_link_status:up`: the first sync is done).
    pub async fn start_replica_of(primary: &Redis) -> Redis {
        let replica = Redis::start_with(
            free_port(),
            &["--replicaof", "127.0.0.1", &primary.port.to_string()],
        )
        .await;
        let mut connection = replica.connection().await;
        while !info(&mut connection, "replication")
            .await
            .contains("master_link_status:up")
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        replica
    }

    async fn start_with(port: u16, extra: &[&str]) -> Redis {
        let dir = super::temp_file(&format!("redis-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--dir",
                dir.to_str().expect("a UTF-8 temp dir"),
                "--save",
                "",
                "--appendonly",
                "no",
                "--enable-debug-command",
                "local",
                // A replica's first sync starts at once, not after the default 5 s wait for
                // more replicas.
                "--repl-diskless-sync-delay",
                "0",
            ])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start redis-server");
        connect_when_up(port).await;
        Redis { port, dir, child }
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// A client of this server.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).unwrap()
    }

    /// A new connection to this server.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        self.client()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Kills the server (SIGKILL, as a crash) and returns its port.
    pub async fn kill(mut self) -> u16 {
        self.child.kill().await.unwrap();
        self.port
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `INFO section` text of the server on `connection`.
pub async fn info(connection: &mut redis::aio::MultiplexedConnection, section: &str) -> String {
    redis::cmd("INFO")
        .arg(section)
        .query_async(connection)
        .await
        .unwrap()
}

/// What the browsing clients saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Requests answered (after each client's first).
    pub requests: u64,
    /// Requests answered with another status than 200.
    pub failed: u64,
    /// Requests answered by another backend than the session's.
    pub moved: u64,
}

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    failed: AtomicU64,
    moved: AtomicU64,
}

/// Browsers that keep requesting through stickyd, each in a task of its own, each in its own
/// session, until [`Browsing::stop`].
pub struct Browsing {
    counts: Arc<Counts>,
    stop: watch::Sender<bool>,
    progress: watch::Receiver<u64>,
    clients: Vec<tokio::task::JoinHandle<(Browser, String)>>,
}

impl Browsing {
    /// Starts one client per `(browser, backend)` pair: each requests `url` again and again
    /// with its browser's cookies, and counts an answer that is not 200 as failed and one from
    /// another backend than `backend` as moved.
    pub fn start(url: &str, sessions: Vec<(Browser, String)>) -> Browsing {
        let counts = Arc::new(Counts::default());
        let (stop, stopped) = watch::channel(false);
        let (progress_in, progress) = watch::channel(0u64);
        let progress_in = Arc::new(progress_in);
        let clients = sessions
            .into_iter()
            .map(|(mut browser, bound)| {
                let (url, counts, progress_in) = (
                    url.to_string(),
                    Arc::clone(&counts),
                    Arc::clone(&progress_in),
                );
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    while !*stopped.borrow_and_update() {
                        let page = browser.get(&url).await;
                        let total = counts.requests.fetch_add(1, Ordering::Relaxed) + 1;
                        if page.status != 200 {
                            counts.failed.fetch_add(1, Ordering::Relaxed);
                        } else if page.backend() != bound {
                            counts.moved.fetch_add(1, Ordering::Relaxed);
                        }
                        progress_in.send_replace(total);
                    }
                    (browser, bound)
                })
            })
            .collect();
        Browsing {
            counts,
            stop,
            progress,
            clients,
        }
    }

    /// Waits until the clients have sent `by` more requests.
    pub async fn advance(&mut self, by: u64) {
        let target = *self.progress.borrow() + by;
        self.progress
            .wait_for(|done| *done >= target)
            .await
            .unwrap();
    }

    /// Stops the clients after their request in flight; returns the tally and the sessions.
    pub async fn stop(self) -> (Tally, Vec<(Browser, String)>) {
        self.stop.send_replace(true);
        let mut sessions = Vec::with_capacity(self.clients.len());
        for client in self.clients {
            sessions.push(client.await.expect("a browsing client panicked"));
        }
        let counts = &self.counts;
        let tally = Tally {
            requests: counts.requests.load(Ordering::Relaxed),
            failed: counts.failed.load(Ordering::Relaxed),
            moved: counts.moved.load(Ordering::Relaxed),
        };
        (tally, sessions)
    }
}
