//! Redis for the tests: `redis-server` started by the test on a free loopback port (a primary,
//! a replica of one, or the masters of a Redis Cluster), and browsers that keep requesting
//! through stickyd while a test breaks Redis, tallying what they saw.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::watch;

use super::{Browser, Proxy, open_session};

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
        let (browser, backend) = open_session(&proxy.url("/session/sid")).await;
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

/// `redis-server` on loopback `port`, its files in `dir`, with no persistence; more options
/// may follow.
fn server_command(port: u16, dir: &std::path::Path) -> Command {
    let mut command = Command::new("redis-server");
    command.args([
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
    ]);
    command
}

/// A multiplexed connection to the Redis (or sentinel) on loopback `port`, once it answers
/// PING. The programs have no readiness signal: PING is polled (bounded by the test timeout).
pub async fn connect_when_up(port: u16) -> redis::aio::MultiplexedConnection {
    connect_when_up_checking(port, || {}).await
}

/// [`connect_when_up`], calling `check` before each try (to fail at once when the program
/// has exited).
async fn connect_when_up_checking(
    port: u16,
    mut check: impl FnMut(),
) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    loop {
        check();
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
        let child = server_command(port, &dir)
            .args([
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

/// A Redis Cluster of the test's own: `masters` `redis-server` processes in cluster mode on free
/// loopback ports (each with its cluster bus on a second free port, `--cluster-port`, so that a
/// client port above 55535 does not push the default bus port, client port + 10000, past 65535),
/// no persistence, their node files in a temporary directory; the slots split evenly between
/// them by `redis-cli --cluster create` with no replicas. Every server is killed, and the
/// directory removed, when dropped.
pub struct RedisCluster {
    /// The client port of each master, in the order `redis-cli` was given them.
    pub ports: Vec<u16>,
    dir: std::path::PathBuf,
    servers: Vec<Child>,
}

impl RedisCluster {
    /// Starts `masters` servers (3 at least: `redis-cli --cluster create` refuses fewer),
    /// creates the cluster, and waits until every node says `cluster_state:ok` (every slot
    /// served, as that node sees it).
    pub async fn start(masters: usize) -> RedisCluster {
        RedisCluster::start_on(&cluster_ports(masters)).await
    }

    /// [`RedisCluster::start`] on the given (client port, bus port) pairs, one per master.
    pub async fn start_on(pairs: &[(u16, u16)]) -> RedisCluster {
        let masters = pairs.len();
        // A directory per cluster: tests run in parallel, and a node whose file disappears
        // exits when it next saves its cluster config.
        let dir = super::temp_file(&format!("redis-cluster-{}", pairs[0].0));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut ports = Vec::with_capacity(masters);
        let mut servers = Vec::with_capacity(masters);
        for &(port, bus) in pairs {
            let server = server_command(port, &dir)
                .args([
                    "--cluster-port",
                    &bus.to_string(),
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    dir.join(format!("nodes-{port}.conf")).to_str().unwrap(),
                    "--logfile",
                    dir.join(format!("{port}.log")).to_str().unwrap(),
                ])
                .stdout(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("start redis-server in cluster mode");
            servers.push(server);
            ports.push(port);
        }
        // The servers are killed on drop from here on, whatever fails below.
        let mut cluster = RedisCluster {
            ports,
            dir,
            servers,
        };
        for index in 0..masters {
            cluster.connect_when_up(index).await;
        }
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(cluster.ports.iter().map(|port| format!("127.0.0.1:{port}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .expect("run redis-cli --cluster create");
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
        for index in 0..masters {
            let mut connection = cluster.connect_when_up(index).await;
            while !cluster_info(&mut connection)
                .await
                .contains("cluster_state:ok")
            {
                cluster.all_running();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        cluster
    }

    /// A connection to master number `index` once it answers PING (polled, as
    /// [`connect_when_up`] does), failing at once with its log if a server has exited.
    async fn connect_when_up(&mut self, index: usize) -> redis::aio::MultiplexedConnection {
        let port = self.ports[index];
        connect_when_up_checking(port, || self.all_running()).await
    }

    /// Panics with its log when a server of the cluster has exited (a port taken meanwhile, a
    /// node file lost), rather than letting the test wait for its timeout.
    fn all_running(&mut self) {
        for (server, port) in self.servers.iter_mut().zip(&self.ports) {
            if let Ok(Some(status)) = server.try_wait() {
                let log = std::fs::read_to_string(self.dir.join(format!("{port}.log")));
                panic!(
                    "redis-server on port {port} exited ({status}) while the cluster started: {}",
                    log.unwrap_or_default()
                );
            }
        }
    }

    /// `redis+cluster://127.0.0.1:A,127.0.0.1:B,...`: every master as a seed.
    pub fn url(&self) -> String {
        cluster_url(&self.ports)
    }

    /// Kills master number `index` (SIGKILL, as a crash); the cluster has no replica to promote,
    /// so its slots stay unserved.
    pub async fn kill(&mut self, index: usize) {
        self.servers[index].kill().await.unwrap();
    }

    /// A connection to the master on `port` alone (no redirection followed): what that node
    /// holds itself.
    pub async fn node(&self, port: u16) -> redis::aio::MultiplexedConnection {
        connect_when_up(port).await
    }

    /// A cluster connection of the test's own, which sends each command to its key's master.
    pub async fn connection(&self) -> redis::cluster_async::ClusterConnection {
        let seeds: Vec<String> = self
            .ports
            .iter()
            .map(|port| format!("redis://127.0.0.1:{port}"))
            .collect();
        redis::cluster::ClusterClient::new(seeds)
            .unwrap()
            .get_async_connection()
            .await
            .expect("connect to the test's cluster")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `masters` pairs of free loopback ports, (client port, cluster bus port), for
/// [`RedisCluster::start_on`]: every port picked while the others are still held, so no two
/// are the same.
pub fn cluster_ports(masters: usize) -> Vec<(u16, u16)> {
    let held: Vec<std::net::TcpListener> = (0..masters * 2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let picked: Vec<u16> = held
        .iter()
        .map(|listener| listener.local_addr().unwrap().port())
        .collect();
    picked.chunks(2).map(|pair| (pair[0], pair[1])).collect()
}

/// `redis+cluster://127.0.0.1:A,127.0.0.1:B,...` for masters on the client `ports`.
pub fn cluster_url(ports: &[u16]) -> String {
    let seeds: Vec<String> = ports
        .iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect();
    format!("redis+cluster://{}", seeds.join(","))
}

/// The `CLUSTER INFO` text of the node on `connection`.
pub async fn cluster_info(connection: &mut redis::aio::MultiplexedConnection) -> String {
    redis::cmd("CLUSTER")
        .arg("INFO")
        .query_async(connection)
        .await
        .unwrap()
}
