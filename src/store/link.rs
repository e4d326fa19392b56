//! The connection to the Redis that holds a shared stick table: one server, the master that
//! Redis Sentinel names, or a Redis Cluster.
//!
//! One server is reached through the `redis` crate's connection manager, which reconnects to
//! its address with backoff. Through Sentinel, the address itself can change: a failover
//! promotes a replica, and the old master, if it comes back, comes back as a read-only replica.
//! So after any failed call (refused, reset, timed out, `READONLY`) the sentinels are asked
//! again for the master, in the background, one search at a time: the search asks the sentinels
//! in the URL's order (the `redis` crate's `SentinelClient`: `SENTINEL MASTERS` on the first
//! that answers, then `ROLE` on the master it names, which must say `master`), connects, and
//! swaps the new connection in for the calls that follow. Until a master is found, calls fail
//! (within the table's `redis_timeout` while the first attempt runs, at once after it failed)
//! and the local table answers, as in any Redis outage.
//!
//! A Redis Cluster is reached through the `redis` crate's async cluster client, which does the
//! following itself: it connects to the seed nodes in the background (so the cluster may be
//! down at start), reads the slot map (`CLUSTER SLOTS`), sends each command to the master that
//! holds its key's slot, follows `MOVED` redirections (a slot resharded, a master failed over
//! to its replica) and reads the map again, follows `ASK` ones (a slot being migrated), and
//! connects to the seeds again when no node answers. Every command the table sends names one
//! key (its Lua scripts declare their one key), so each call goes to one slot, on one master
//! (Redis Cluster specification, "Key distribution model"), and a redirection of any of them is
//! followed. Nothing is searched for after a failed call: the client does it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tokio::sync::Notify;

use crate::config::{RedisTarget, SentinelTarget};

/// Shortest wait between two attempts to find or reach a server (100 ms); the wait doubles
/// after each failed attempt up to [`RETRY_MAX_DELAY`].
pub const RETRY_MIN_DELAY: Duration = Duration::from_millis(100);

/// Longest wait between two attempts to reach one server (5 s). A search for the master through
/// Sentinel waits at most [`SEARCH_MAX_DELAY`] instead: asking a sentinel is cheap, and a
/// failover should be followed within a second of the promotion.
pub const RETRY_MAX_DELAY: Duration = Duration::from_secs(5);

/// Longest wait between two attempts of a search for the master through Sentinel (1 s).
pub const SEARCH_MAX_DELAY: Duration = Duration::from_secs(1);

/// Longest one search attempt may take (5 s): asking the sentinels in turn (each connection
/// bounded by the `redis` crate's 1 s default), then connecting to the master.
pub const SEARCH_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Shortest time a connection takes to be set up (200 ms), whatever `redis_timeout` is: a
/// first connection needs a few round trips.
pub const MIN_CONNECTION_TIMEOUT: Duration = Duration::from_millis(200);

/// Times the cluster client sends one call again (5), following redirections. A `MOVED` (a
/// slot moved, a failover) costs one more attempt, an `ASK` (a slot being migrated) one too, but
/// the client sends `ASKING` and the redirected command as two requests on the connection it
/// shares with the table's other calls, so another call to the same node can take the one-time
/// `ASKING` flag in between; the command is then answered `MOVED` back to the old node, which
/// says `ASK` again: two more attempts. Every call stays bounded by the table's
/// `redis_timeout` whatever this is, and a call given up on is dropped by the client.
pub const CLUSTER_RETRIES: u32 = 5;

/// The connection to the table's Redis; cheap to clone (shared handles).
#[derive(Clone)]
pub enum Link {
    /// One server; the connection manager reconnects to it.
    Server(ConnectionManager),
    /// The master Redis Sentinel names, searched for again after a failed call.
    Sentinel(Arc<SentinelLink>),
    /// A Redis Cluster; the cluster client follows its slot map and reconnects by itself.
    Cluster(ClusterConnection),
}

/// A connection the table's calls run on: the one server's or the Sentinel master's
/// connection manager, or the cluster client, which sends each command to its key's master.
/// Cheap to clone (a shared handle).
#[derive(Clone)]
pub enum Connection {
    /// One server, or the master Sentinel named.
    Manager(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Manager(manager) => manager.req_packed_command(cmd),
            Connection::Cluster(cluster) => cluster.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Manager(manager) => manager.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(cluster) => cluster.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Manager(manager) => manager.get_db(),
            Connection::Cluster(cluster) => cluster.get_db(),
        }
    }
}

impl Link {
    /// A link to `target`, each call bounded by `timeout`. Connects lazily to one server; for
    /// Sentinel, starts the search for the master at once, in the background; for a Cluster,
    /// connects to the seed nodes in the background. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// What the `redis` crate says about a target it cannot use (the URL was validated with
    /// the config, so this is not expected).
    pub fn new(target: &RedisTarget, timeout: Duration) -> redis::RedisResult<Link> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(MIN_CONNECTION_TIMEOUT)))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(RETRY_MIN_DELAY)
            .set_max_delay(RETRY_MAX_DELAY);
        match target {
            RedisTarget::Server(url) => {
                let client = redis::Client::open(url.as_str())?;
                Ok(Link::Server(ConnectionManager::new_lazy_with_config(
                    client, config,
                )?))
            }
            RedisTarget::Sentinel(sentinel) => {
                let link = Arc::new(SentinelLink {
                    sentinels: tokio::sync::Mutex::new(sentinel_client(sentinel)?),
                    master_name: sentinel.master.clone(),
                    master: ArcSwapOption::empty(),
                    attempted: AtomicBool::new(false),
                    attempt_ended: Notify::new(),
                    searching: AtomicBool::new(false),
                    config,
                });
                link.search();
                Ok(Link::Sentinel(link))
            }
            RedisTarget::Cluster {
                nodes,
                tls,
                username,
                password,
            } => Ok(Link::Cluster(cluster_connection(
                nodes,
                *tls,
                username.as_deref(),
                password.as_deref(),
                timeout,
            )?)),
        }
    }

    /// The connection calls go through now. With Sentinel and no master known yet, waits for
    /// the first search attempt to end (the caller bounds the wait).
    ///
    /// # Errors
    /// With Sentinel, when no search has found a master yet.
    pub async fn connection(&self) -> redis::RedisResult<Connection> {
        match self {
            Link::Server(manager) => Ok(Connection::Manager(manager.clone())),
            Link::Sentinel(link) => link.connection().await.map(Connection::Manager),
            Link::Cluster(cluster) => Ok(Connection::Cluster(cluster.clone())),
        }
    }

    /// A call failed or timed out: with Sentinel, the master may have moved, so search for it
    /// (unless a search is running). One server needs nothing: its manager reconnects; nor
    /// does a Cluster: its client reads the slot map again or reconnects to the seeds.
    pub fn failed(&self) {
        if let Link::Sentinel(link) = self {
            link.search();
        }
    }
}

/// The master found through Redis Sentinel, and the search for it.
pub struct SentinelLink {
    /// Asks the sentinels; only the search task locks it, and at most one runs.
    sentinels: tokio::sync::Mutex<SentinelClient>,
    /// The name the sentinels monitor the master under, for the log.
    master_name: String,
    /// The master the last search found, once one has.
    master: ArcSwapOption<Master>,
    /// A search attempt has ended: calls no longer wait for one while no master is known.
    attempted: AtomicBool,
    /// Wakes the calls that wait for the end of the first search attempt.
    attempt_ended: Notify,
    /// A search is running (or ended less than [`RETRY_MIN_DELAY`] ago).
    searching: AtomicBool,
    /// How a connection to the master is set up, timed out and retried.
    config: ConnectionManagerConfig,
}

/// A master and the connection to it.
struct Master {
    /// `host:port`, for the log.
    address: String,
    connection: ConnectionManager,
}

impl SentinelLink {
    async fn connection(self: &Arc<Self>) -> redis::RedisResult<ConnectionManager> {
        loop {
            // Registered before the checks, so an attempt ending in between still wakes it.
            let attempt_ended = self.attempt_ended.notified();
            if let Some(master) = &*self.master.load() {
                return Ok(master.connection.clone());
            }
            self.search();
            if self.attempted.load(Ordering::Acquire) {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::MasterNameNotFoundBySentinel,
                    "no master found through the sentinels yet",
                )));
            }
            attempt_ended.await;
        }
    }

    /// Starts a search for the master unless one is running: attempts with a backoff from
    /// [`RETRY_MIN_DELAY`] to [`SEARCH_MAX_DELAY`] until one finds a master that answers. The
    /// next search may start [`RETRY_MIN_DELAY`] after this one found it, so the calls still
    /// failing on the old connection start none. The task ends with the table.
    fn search(self: &Arc<Self>) {
        if self.searching.swap(true, Ordering::AcqRel) {
            return;
        }
        let link = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut delay = RETRY_MIN_DELAY;
            let mut failures = 0u32;
            loop {
                let Some(this) = Weak::upgrade(&link) else {
                    return;
                };
                let attempt = tokio::time::timeout(SEARCH_ATTEMPT_TIMEOUT, this.find_master());
                match attempt.await {
                    Ok(Ok(master)) => {
                        this.install(master);
                        break;
                    }
                    Ok(Err(error)) => this.not_found(&error.to_string(), failures),
                    Err(_) => this.not_found("no answer in time", failures),
                }
                this.attempted.store(true, Ordering::Release);
                this.attempt_ended.notify_waiters();
                failures += 1;
                drop(this);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(SEARCH_MAX_DELAY);
            }
            tokio::time::sleep(RETRY_MIN_DELAY).await;
            if let Some(this) = Weak::upgrade(&link) {
                this.searching.store(false, Ordering::Release);
            }
        });
    }

    /// Asks the sentinels for the master and connects to it.
    async fn find_master(&self) -> redis::RedisResult<Master> {
        let client = self.sentinels.lock().await.async_get_client().await?;
        let address = client.get_connection_info().addr().to_string();
        let connection = ConnectionManager::new_with_config(client, self.config.clone()).await?;
        Ok(Master {
            address,
            connection,
        })
    }

    /// Swaps `master` in for the calls that follow, and wakes those waiting for one.
    fn install(&self, master: Master) {
        let name = &self.master_name;
        match &*self.master.load() {
            None => tracing::info!(
                master = name,
                address = %master.address,
                "redis sentinel: master found"
            ),
            Some(old) if old.address != master.address => tracing::warn!(
                master = name,
                from = %old.address,
                to = %master.address,
                "redis sentinel: the master moved (failover): stick-table sharing continues on the new master"
            ),
            Some(_) => {}
        }
        self.master.store(Some(Arc::new(master)));
        self.attempted.store(true, Ordering::Release);
        self.attempt_ended.notify_waiters();
    }

    /// Logs a failed search attempt: the first of a search at `warn`, the next ones at `debug`.
    fn not_found(&self, error: &str, failures: u32) {
        let name = &self.master_name;
        if failures == 0 {
            tracing::warn!(
                master = name,
                %error,
                "redis sentinel: cannot find the master yet; retrying"
            );
        } else {
            tracing::debug!(master = name, %error, "redis sentinel: master not found");
        }
    }
}

/// The `redis` crate's client for the master `target` names, through its sentinels.
fn sentinel_client(target: &SentinelTarget) -> redis::RedisResult<SentinelClient> {
    let sentinels = target
        .sentinels
        .iter()
        .map(|(host, port)| redis::ConnectionAddr::Tcp(host.clone(), *port));
    let mut builder =
        SentinelClientBuilder::new(sentinels, &target.master, SentinelServerType::Master)?
            .set_client_to_redis_db(target.db);
    if let Some(username) = &target.username {
        builder = builder.set_client_to_redis_username(username);
    }
    if let Some(password) = &target.password {
        builder = builder.set_client_to_redis_password(password);
    }
    builder.build()
}

/// The `redis` crate's async cluster connection to the cluster whose seed `nodes` are given
/// as (host, port), over TLS with `tls` (certificates checked, `TlsMode::Secure`), with the
/// nodes' `username` and `password`. Connects in the background: the first calls wait for the
/// slot map (bounded by the table's timeout), and calls made while no node answers make the
/// client connect to the seeds again. Each node connection is set up within `timeout` (at
/// least [`MIN_CONNECTION_TIMEOUT`]), each answer awaited at most `timeout`, each call sent at
/// most [`CLUSTER_RETRIES`] more times.
fn cluster_connection(
    nodes: &[(String, u16)],
    tls: bool,
    username: Option<&str>,
    password: Option<&str>,
    timeout: Duration,
) -> redis::RedisResult<ClusterConnection> {
    let connection_timeout = timeout.max(MIN_CONNECTION_TIMEOUT);
    let seeds = nodes
        .iter()
        .map(|(host, port)| redis::ConnectionAddr::Tcp(host.clone(), *port));
    let mut builder = ClusterClientBuilder::new(seeds)
        .connection_timeout(connection_timeout)
        .response_timeout(timeout)
        .retries(CLUSTER_RETRIES);
    if tls {
        builder = builder.tls(redis::TlsMode::Secure);
    }
    if let Some(username) = username {
        builder = builder.username(username);
    }
    if let Some(password) = password {
        builder = builder.password(password);
    }
    let config = ClusterConfig::new()
        .set_connection_timeout(connection_timeout)
        .set_response_timeout(timeout);
    Ok(builder
        .build()?
        .get_pending_async_connection_with_config(config))
}
