//! `redis_url` of a shared stick table: one Redis server (`redis://`, `rediss://`), the
//! master that Redis Sentinel names (`redis+sentinel://`), or a Redis Cluster
//! (`redis+cluster://`, `rediss+cluster://`).
//!
//! A Sentinel URL lists the sentinels and names the master as the sentinels monitor it:
//! `redis+sentinel://[[user]:password@]host1:port1,host2:port2,host3:port3/MASTER_NAME[/db]`.
//! The form is the one the Python package Redis-Sentinel-Url defined and RedisVL reads
//! (`redis+sentinel://[user:password@]host1:port1,host2:port2/service_name[/db]`), without
//! their query options. The user and password are the master's (`requirepass`, or an ACL
//! user), percent-decoded; the sentinels are asked without one. A sentinel without a port is on
//! 26379, Sentinel's default.
//!
//! A Cluster URL lists seed nodes, any masters or replicas of the cluster:
//! `redis+cluster://[[user]:password@]host1:port1,host2:port2,host3:port3[/]`. The `redis`
//! crate connects to every seed it can, asks one that answers for the cluster's slot map
//! (`CLUSTER SLOTS`), and from then on follows the map and its `MOVED` redirections, so the seeds
//! need not be every node (one that answers is enough; list several so that one down does not
//! matter). A seed without a port is on 6379, Redis's default. There is no database: a
//! cluster has only database 0 (Redis Cluster specification, "Implemented subset"), so a path
//! after the seeds is refused. `rediss+cluster://` speaks TLS to every node, the seeds and the
//! nodes the slot map names (the nodes need `tls-cluster yes`); as for `rediss://`, each node's
//! certificate must be valid for the address the cluster announces for it (an IP address unless
//! the nodes announce host names: `cluster-preferred-endpoint-type hostname`) and issued under
//! one of the Mozilla root certificates the `redis` crate carries (`webpki-roots`): a private
//! CA is not trusted. The user and password are the nodes' (every node of a cluster shares
//! them), percent-decoded.

use percent_encoding::percent_decode_str;

/// The scheme of a Sentinel URL.
pub const SENTINEL_SCHEME: &str = "redis+sentinel://";

/// Port of a sentinel address that names none: Redis Sentinel's default, 26379.
pub const DEFAULT_SENTINEL_PORT: u16 = 26379;

/// The scheme of a Cluster URL (plain TCP to every node).
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

/// The scheme of a Cluster URL whose nodes are reached over TLS.
pub const CLUSTER_TLS_SCHEME: &str = "rediss+cluster://";

/// Port of a cluster seed address that names none: Redis's default, 6379.
pub const DEFAULT_CLUSTER_PORT: u16 = 6379;

/// Where a shared stick table's Redis is, read from `redis_url` by [`parse_redis_url`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server, by a URL the `redis` crate reads: `redis://[[user]:password@]host[:port][/db]`
    /// or `rediss://` (TLS). The connection manager reconnects to it after a failure.
    Server(String),
    /// The master Redis Sentinel names; the sentinels are asked again after a failed call, so a
    /// failover moves the table to the new master.
    Sentinel(SentinelTarget),
    /// A Redis Cluster, found through its seed nodes: each key is written to the master that
    /// holds its slot, and the `redis` crate follows the cluster's slot map as it changes
    /// (resharding, failover of a master to its replica).
    Cluster {
        /// The seed nodes, as (host, port), in the URL's order; any one that answers gives the
        /// slot map.
        nodes: Vec<(String, u16)>,
        /// TLS to every node (`rediss+cluster://`). Default: false.
        tls: bool,
        /// The ACL user on the nodes (Redis 6+), if the URL names one.
        username: Option<String>,
        /// The password on the nodes, if the URL has one.
        password: Option<String>,
    },
}

/// A master found through Redis Sentinel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelTarget {
    /// The sentinels to ask, as (host, port), in the URL's order (the first that answers is
    /// believed).
    pub sentinels: Vec<(String, u16)>,
    /// The name the sentinels monitor the master under (`sentinel monitor NAME ...`).
    pub master: String,
    /// The database on the master. Default: 0.
    pub db: i64,
    /// The ACL user on the master (Redis 6+), if the URL names one.
    pub username: Option<String>,
    /// The password on the master, if the URL has one. The sentinels are asked without one.
    pub password: Option<String>,
}

/// Why a `redis_url` cannot be used; each says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisUrlError {
    /// The `redis` crate did not accept a one-server URL.
    #[error(
        "{reason}: write e.g. \"redis://127.0.0.1:6379/0\", \"rediss://host:6380/0\", \"redis+sentinel://host1:26379,host2:26379,host3:26379/mymaster\" or \"redis+cluster://host1:6379,host2:6379,host3:6379\""
    )]
    Server {
        /// What the `redis` crate said.
        reason: String,
    },
    /// `rediss+sentinel://`: TLS to the sentinels and the master is not supported.
    #[error(
        "Sentinel over TLS is not supported: write redis+sentinel://... (plain TCP, on a trusted network), or rediss://host:port for one server"
    )]
    SentinelTls,
    /// No sentinel address before the master's name.
    #[error(
        "names no sentinel: write redis+sentinel://host1:26379,host2:26379,host3:26379/mymaster"
    )]
    NoSentinel,
    /// A sentinel address that is not `host[:port]`.
    #[error(
        "sentinel address {address:?} is not host:port: write e.g. \"10.0.0.1:26379\", \"sentinel-1:26379\" or \"[::1]:26379\", separated by commas"
    )]
    SentinelAddress {
        /// The address as written.
        address: String,
    },
    /// No master name after the sentinels.
    #[error(
        "names no master: add the name the sentinels monitor it under (`sentinel monitor NAME ...`), e.g. redis+sentinel://host1:26379,host2:26379/mymaster"
    )]
    NoMaster,
    /// A master name with a character no name has.
    #[error(
        "master name {name:?} has a space, '?', '#' or '%': write the name the sentinels monitor it under, e.g. /mymaster"
    )]
    MasterName {
        /// The name as written.
        name: String,
    },
    /// A database that is not a whole number.
    #[error(
        "database {db:?} is not a whole number: write it after the master's name, e.g. /mymaster/0"
    )]
    Database {
        /// The database as written.
        db: String,
    },
    /// Something after the database.
    #[error(
        "{rest:?} follows the database: write redis+sentinel://HOSTS/MASTER_NAME[/DB] and nothing after"
    )]
    Trailing {
        /// What follows the database.
        rest: String,
    },
    /// No seed node in a Cluster URL.
    #[error(
        "names no cluster node: write redis+cluster://host1:6379,host2:6379,host3:6379 (any nodes of the cluster, separated by commas)"
    )]
    NoClusterNode,
    /// A cluster seed address that is not `host[:port]`.
    #[error(
        "cluster node address {address:?} is not host:port: write e.g. \"10.0.0.1:6379\", \"redis-1:7000\" or \"[::1]:6379\", separated by commas"
    )]
    ClusterNode {
        /// The address as written.
        address: String,
    },
    /// A database after the seeds of a Cluster URL: a cluster has only database 0.
    #[error(
        "Redis Cluster has only database 0, so it takes no database: remove \"/{db}\" and write redis+cluster://host1:6379,host2:6379,host3:6379 (or use a key_prefix to keep tables apart)"
    )]
    ClusterDatabase {
        /// The database as written.
        db: String,
    },
    /// Something after the seeds of a Cluster URL that is not a database.
    #[error(
        "{rest:?} follows the cluster nodes: write redis+cluster://host1:6379,host2:6379,host3:6379 and nothing after"
    )]
    ClusterTrailing {
        /// What follows the seeds.
        rest: String,
    },
    /// A user or password that is not UTF-8 once percent-decoded.
    #[error("the user or password is not UTF-8 once percent-decoded: percent-encode it as UTF-8")]
    UserInfo,
}

/// Reads `url` as [`RedisTarget`].
///
/// # Errors
/// [`RedisUrlError`] saying what is wrong and what to write.
pub fn parse_redis_url(url: &str) -> Result<RedisTarget, RedisUrlError> {
    if let Some(rest) = url.strip_prefix(SENTINEL_SCHEME) {
        return parse_sentinel(rest).map(RedisTarget::Sentinel);
    }
    if url.starts_with("rediss+sentinel://") {
        return Err(RedisUrlError::SentinelTls);
    }
    if let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) {
        return parse_cluster(rest, false);
    }
    if let Some(rest) = url.strip_prefix(CLUSTER_TLS_SCHEME) {
        return parse_cluster(rest, true);
    }
    redis::IntoConnectionInfo::into_connection_info(url).map_err(|error| {
        RedisUrlError::Server {
            reason: error.to_string(),
        }
    })?;
    Ok(RedisTarget::Server(url.to_string()))
}

/// `[[user]:password@]hosts/MASTER_NAME[/db]`, what follows the scheme.
fn parse_sentinel(rest: &str) -> Result<SentinelTarget, RedisUrlError> {
    let (user_info, hosts, path) = split_authority(rest);
    if hosts.is_empty() {
        return Err(RedisUrlError::NoSentinel);
    }
    let sentinels = hosts
        .split(',')
        .map(|address| {
            host_port(address, DEFAULT_SENTINEL_PORT).ok_or_else(|| {
                RedisUrlError::SentinelAddress {
                    address: address.to_string(),
                }
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut segments = path.splitn(3, '/');
    let master = segments.next().unwrap_or_default();
    if master.is_empty() {
        return Err(RedisUrlError::NoMaster);
    }
    if master
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#' | '%'))
    {
        return Err(RedisUrlError::MasterName {
            name: master.to_string(),
        });
    }
    let db = match segments.next() {
        None | Some("") => 0,
        Some(db) => db
            .parse::<i64>()
            .ok()
            .filter(|db| *db >= 0)
            .ok_or_else(|| RedisUrlError::Database { db: db.to_string() })?,
    };
    if let Some(rest) = segments.next().filter(|rest| !rest.is_empty()) {
        return Err(RedisUrlError::Trailing {
            rest: rest.to_string(),
        });
    }
    let (username, password) = credentials(user_info)?;
    Ok(SentinelTarget {
        sentinels,
        master: master.to_string(),
        db,
        username,
        password,
    })
}

/// `[[user]:password@]hosts/MASTER`, after the scheme: the user info (if any), the hosts and
/// what follows the first `/` (empty without one).
fn split_authority(rest: &str) -> (Option<&str>, &str, &str) {
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    match authority.rsplit_once('@') {
        Some((user_info, hosts)) => (Some(user_info), hosts, path),
        None => (None, authority, path),
    }
}

/// The user and password of `[user]:password` or `password`, percent-decoded; an empty one is
/// none.
fn credentials(user_info: Option<&str>) -> Result<(Option<String>, Option<String>), RedisUrlError> {
    let Some(user_info) = user_info else {
        return Ok((None, None));
    };
    let (user, password) = user_info.split_once(':').unwrap_or(("", user_info));
    let decode = |text: &str| {
        percent_decode_str(text)
            .decode_utf8()
            .map(|text| (!text.is_empty()).then(|| text.into_owned()))
            .map_err(|_| RedisUrlError::UserInfo)
    };
    Ok((decode(user)?, decode(password)?))
}

/// `[[user]:password@]host1:port1,host2:port2[/]`, what follows a Cluster scheme; `tls` for
/// `rediss+cluster://`.
fn parse_cluster(rest: &str, tls: bool) -> Result<RedisTarget, RedisUrlError> {
    let (user_info, hosts, path) = split_authority(rest);
    if hosts.is_empty() {
        return Err(RedisUrlError::NoClusterNode);
    }
    let nodes = hosts
        .split(',')
        .map(|address| {
            host_port(address, DEFAULT_CLUSTER_PORT).ok_or_else(|| RedisUrlError::ClusterNode {
                address: address.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !path.is_empty() {
        let db = path.strip_suffix('/').unwrap_or(path);
        if !db.is_empty() && db.chars().all(|c| c.is_ascii_digit()) {
            return Err(RedisUrlError::ClusterDatabase { db: db.to_string() });
        }
        return Err(RedisUrlError::ClusterTrailing {
            rest: path.to_string(),
        });
    }
    let (username, password) = credentials(user_info)?;
    Ok(RedisTarget::Cluster {
        nodes,
        tls,
        username,
        password,
    })
}

/// `host`, `host:port`, `[v6]` or `[v6]:port` as (host, port), the port `default_port` when
/// none is written; `None` for anything else (an empty host, a host with a character no host
/// name has, a port that is not 1 to 65535).
fn host_port(address: &str, default_port: u16) -> Option<(String, u16)> {
    let (host, port) = match address.strip_prefix('[') {
        Some(bracketed) => {
            let (host, after) = bracketed.split_once(']')?;
            host.parse::<std::net::Ipv6Addr>().ok()?;
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':')?)),
            }
        }
        None => match address.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (address, None),
        },
    };
    let host_ok = !host.is_empty()
        && (host.contains(':')
            || host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')));
    if !host_ok {
        return None;
    }
    let port = match port {
        None => default_port,
        Some(port) => port.parse::<u16>().ok().filter(|port| *port != 0)?,
    };
    Some((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sentinel(url: &str) -> SentinelTarget {
        match parse_redis_url(url) {
            Ok(RedisTarget::Sentinel(target)) => target,
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn a_sentinel_url_lists_the_sentinels_and_names_the_master() {
        let target = sentinel("redis+sentinel://10.0.0.1:26379,sentinel-2:26380,[::1]/mymaster");
        assert_eq!(
            target,
            SentinelTarget {
                sentinels: vec![
                    ("10.0.0.1".into(), 26379),
                    ("sentinel-2".into(), 26380),
                    ("::1".into(), DEFAULT_SENTINEL_PORT),
                ],
                master: "mymaster".into(),
                db: 0,
                username: None,
                password: None,
            }
        );
    }

    #[test]
    fn the_password_and_user_are_the_masters_and_percent_decoded() {
        let target = sentinel("redis+sentinel://s%40cr%2Ft:p@h1:1,h2:2/m/3");
        assert_eq!(target.username.as_deref(), Some("s@cr/t"));
        assert_eq!(target.password.as_deref(), Some("p"));
        assert_eq!(target.db, 3);
        let only_password = sentinel("redis+sentinel://pa:ss%3Aword@h1/m/");
        assert_eq!(only_password.username.as_deref(), Some("pa"));
        let bare = sentinel("redis+sentinel://secret@h1/m");
        assert_eq!(
            (bare.username, bare.password.as_deref()),
            (None, Some("secret"))
        );
        let empty_user = sentinel("redis+sentinel://:secret@h1/m");
        assert_eq!(
            (empty_user.username, empty_user.password.as_deref()),
            (None, Some("secret"))
        );
    }

    #[test]
    fn a_bad_sentinel_url_says_what_is_wrong() {
        for (url, error) in [
            ("redis+sentinel:///mymaster", RedisUrlError::NoSentinel),
            (
                "redis+sentinel://h1:26379,h2:26379",
                RedisUrlError::NoMaster,
            ),
            ("redis+sentinel://h1:26379/", RedisUrlError::NoMaster),
            (
                "redis+sentinel://h1:26379,,h2/m",
                RedisUrlError::SentinelAddress { address: "".into() },
            ),
            (
                "redis+sentinel://h1:port/m",
                RedisUrlError::SentinelAddress {
                    address: "h1:port".into(),
                },
            ),
            (
                "redis+sentinel://h1:0/m",
                RedisUrlError::SentinelAddress {
                    address: "h1:0".into(),
                },
            ),
            (
                "redis+sentinel://[::1/m",
                RedisUrlError::SentinelAddress {
                    address: "[::1".into(),
                },
            ),
            (
                "redis+sentinel://h 1/m",
                RedisUrlError::SentinelAddress {
                    address: "h 1".into(),
                },
            ),
            (
                "redis+sentinel://h1/m?db=1",
                RedisUrlError::MasterName {
                    name: "m?db=1".into(),
                },
            ),
            (
                "redis+sentinel://h1/m/x",
                RedisUrlError::Database { db: "x".into() },
            ),
            (
                "redis+sentinel://h1/m/-1",
                RedisUrlError::Database { db: "-1".into() },
            ),
            (
                "redis+sentinel://h1/m/0/extra",
                RedisUrlError::Trailing {
                    rest: "extra".into(),
                },
            ),
            ("redis+sentinel://%ff@h1/m", RedisUrlError::UserInfo),
            ("rediss+sentinel://h1/m", RedisUrlError::SentinelTls),
        ] {
            assert_eq!(parse_redis_url(url), Err(error), "{url}");
        }
    }

    #[test]
    fn a_stick_table_in_redis_takes_a_sentinel_url() {
        let text = "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\n[service.affinity]\n\
                    strategy = \"stick-table\"\ncookie = \"sid\"\nstore = \"redis\"\n\
                    redis_url = \"redis+sentinel://10.0.0.1,10.0.0.2:26380/mymaster/2\"\n\
                    [[service.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n";
        let config = crate::config::Config::parse(text, "<test>").unwrap_or_else(|e| panic!("{e}"));
        let crate::config::AffinityConfig::StickTable(table) = &config.services[0].affinity else {
            panic!("not a stick table");
        };
        let crate::config::StoreConfig::Redis { target, .. } = &table.store else {
            panic!("not in Redis");
        };
        assert_eq!(
            *target,
            RedisTarget::Sentinel(SentinelTarget {
                sentinels: vec![("10.0.0.1".into(), 26379), ("10.0.0.2".into(), 26380)],
                master: "mymaster".into(),
                db: 2,
                username: None,
                password: None,
            })
        );
    }

    fn cluster(url: &str) -> RedisTarget {
        match parse_redis_url(url) {
            Ok(target @ RedisTarget::Cluster { .. }) => target,
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn a_cluster_url_lists_seed_nodes_with_redis_default_port() {
        assert_eq!(
            cluster("redis+cluster://10.0.0.1:7000,redis-2,[::1]:7002/"),
            RedisTarget::Cluster {
                nodes: vec![
                    ("10.0.0.1".into(), 7000),
                    ("redis-2".into(), DEFAULT_CLUSTER_PORT),
                    ("::1".into(), 7002),
                ],
                tls: false,
                username: None,
                password: None,
            }
        );
        assert_eq!(
            cluster("redis+cluster://h1:7000"),
            RedisTarget::Cluster {
                nodes: vec![("h1".into(), 7000)],
                tls: false,
                username: None,
                password: None,
            }
        );
    }

    #[test]
    fn a_cluster_url_over_tls_and_with_credentials() {
        assert_eq!(
            cluster("rediss+cluster://app%40web:p%2Fw@h1:6380,h2:6380"),
            RedisTarget::Cluster {
                nodes: vec![("h1".into(), 6380), ("h2".into(), 6380)],
                tls: true,
                username: Some("app@web".into()),
                password: Some("p/w".into()),
            }
        );
        let RedisTarget::Cluster {
            username, password, ..
        } = cluster("redis+cluster://:secret@h1")
        else {
            unreachable!()
        };
        assert_eq!((username, password.as_deref()), (None, Some("secret")));
    }

    #[test]
    fn a_bad_cluster_url_says_what_is_wrong() {
        for (url, error) in [
            ("redis+cluster://", RedisUrlError::NoClusterNode),
            ("redis+cluster:///", RedisUrlError::NoClusterNode),
            ("redis+cluster://pw@/", RedisUrlError::NoClusterNode),
            (
                "redis+cluster://h1:7000,,h2",
                RedisUrlError::ClusterNode { address: "".into() },
            ),
            (
                "redis+cluster://h1:port",
                RedisUrlError::ClusterNode {
                    address: "h1:port".into(),
                },
            ),
            (
                "redis+cluster://h1:70000",
                RedisUrlError::ClusterNode {
                    address: "h1:70000".into(),
                },
            ),
            (
                "redis+cluster://h1?protocol=resp3",
                RedisUrlError::ClusterNode {
                    address: "h1?protocol=resp3".into(),
                },
            ),
            (
                "redis+cluster://h1:7000,h2:7001/0",
                RedisUrlError::ClusterDatabase { db: "0".into() },
            ),
            (
                "redis+cluster://h1/3/",
                RedisUrlError::ClusterDatabase { db: "3".into() },
            ),
            (
                "redis+cluster://h1/mymaster",
                RedisUrlError::ClusterTrailing {
                    rest: "mymaster".into(),
                },
            ),
            ("redis+cluster://%ff:pw@h1", RedisUrlError::UserInfo),
        ] {
            assert_eq!(parse_redis_url(url), Err(error), "{url}");
        }
        let message = parse_redis_url("redis+cluster://h1/2")
            .unwrap_err()
            .to_string();
        assert!(message.contains("only database 0"), "{message}");
    }

    #[test]
    fn a_stick_table_in_redis_takes_a_cluster_url() {
        let text = "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\n[service.affinity]\n\
                    strategy = \"stick-table\"\ncookie = \"sid\"\nstore = \"redis\"\n\
                    redis_url = \"redis+cluster://10.0.0.1:7000,10.0.0.2:7001\"\n\
                    [[service.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n";
        let config = crate::config::Config::parse(text, "<test>").unwrap_or_else(|e| panic!("{e}"));
        let crate::config::AffinityConfig::StickTable(table) = &config.services[0].affinity else {
            panic!("not a stick table");
        };
        let crate::config::StoreConfig::Redis { target, .. } = &table.store else {
            panic!("not in Redis");
        };
        assert_eq!(
            *target,
            RedisTarget::Cluster {
                nodes: vec![("10.0.0.1".into(), 7000), ("10.0.0.2".into(), 7001)],
                tls: false,
                username: None,
                password: None,
            }
        );
        let refused = text.replace("7001\"", "7001/1\"");
        let error = crate::config::Config::parse(&refused, "<test>")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("invalid redis_url: Redis Cluster has only database 0"),
            "{error}"
        );
    }

    #[test]
    fn one_server_urls_are_the_redis_crates() {
        for url in [
            "redis://127.0.0.1:6379/0",
            "rediss://host:6380",
            "redis://:pw@h/2",
        ] {
            assert_eq!(
                parse_redis_url(url),
                Ok(RedisTarget::Server(url.to_string()))
            );
        }
        assert!(matches!(
            parse_redis_url("http://127.0.0.1:6379"),
            Err(RedisUrlError::Server { .. })
        ));
    }
}
