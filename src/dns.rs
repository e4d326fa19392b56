//! DNS lookups for backends, through hickory-resolver: a host name's addresses (A and AAAA)
//! and a service name's SRV targets (RFC 2782), each with the time its answer stays valid (the
//! records' TTL), so that the caller can look again when it runs out.
//!
//! The name servers are the ones the config names (`[resolver] nameservers`, or a service's
//! `discovery.resolvers`), else the system's (`/etc/resolv.conf`). Nothing here imports the
//! rest of stickyd: the config loader resolves backend host names with it, and the runtime
//! re-resolves them and follows SRV records.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;

/// Port of a name server written without one.
pub const DNS_PORT: u16 = 53;

/// One SRV target: where it is and its share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvTarget {
    /// The target's host name, without the root's trailing dot: `app-1.example`.
    pub host: String,
    /// The port the record gives.
    pub port: u16,
    /// The target host's first address, with `port`.
    pub address: SocketAddr,
    /// RFC 2782 priority: lower is preferred.
    pub priority: u16,
    /// RFC 2782 weight among targets of the same priority.
    pub weight: u16,
}

/// A DNS answer and when it stops being valid (its shortest TTL from now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer<T> {
    /// What the records say.
    pub value: T,
    /// When to ask again.
    pub valid_until: Instant,
}

/// A stub resolver over the given name servers (or the system's when none are given).
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

impl Resolver {
    /// A resolver asking `nameservers` (UDP, then TCP for a truncated answer), or the system's
    /// name servers when `nameservers` is empty. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// The system's resolver configuration cannot be read (no `/etc/resolv.conf`).
    pub fn new(nameservers: &[SocketAddr]) -> Result<Resolver, String> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if nameservers.is_empty() {
            TokioResolver::builder(provider).map_err(|error| {
                format!("cannot read the system's resolver configuration: {error}")
            })?
        } else {
            let servers = nameservers
                .iter()
                .map(|server| {
                    let mut config = NameServerConfig::udp_and_tcp(server.ip());
                    for connection in &mut config.connections {
                        connection.port = server.port();
                    }
                    config
                })
                .collect();
            TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
        };
        // A backend that vanished must vanish from the answer at its TTL: cache no failure
        // longer than a second.
        builder.options_mut().negative_max_ttl = Some(Duration::from_secs(1));
        let inner = builder
            .build()
            .map_err(|error| format!("cannot start the resolver: {error}"))?;
        Ok(Resolver { inner })
    }

    /// The addresses of `host` (A and AAAA), each with `port`.
    ///
    /// # Errors
    /// The resolver's own words: no such name, no answer, a timeout.
    pub async fn host(&self, host: &str, port: u16) -> Result<Answer<Vec<SocketAddr>>, String> {
        let found = self
            .inner
            .lookup_ip(host)
            .await
            .map_err(|error| error.to_string())?;
        let value: Vec<SocketAddr> = found
            .iter()
            .map(|ip: IpAddr| SocketAddr::new(ip, port))
            .collect();
        if value.is_empty() {
            return Err(format!("no address for {host}"));
        }
        Ok(Answer {
            value,
            valid_until: found.valid_until(),
        })
    }

    /// The targets of SRV name `name` (`_http._tcp.app.example`), each target host resolved
    /// to its first address; a target whose host has no address is left out.
    ///
    /// # Errors
    /// The resolver's own words for the SRV lookup; or, when no target resolves, the first
    /// target's.
    pub async fn srv(&self, name: &str) -> Result<Answer<Vec<SrvTarget>>, String> {
        let found = self
            .inner
            .srv_lookup(name)
            .await
            .map_err(|error| error.to_string())?;
        let mut valid_until = found.valid_until();
        let mut targets = Vec::new();
        let mut first_problem = None;
        for record in found.answers() {
            let RData::SRV(srv) = &record.data else {
                continue;
            };
            let host = srv.target.to_string();
            let host = host.trim_end_matches('.').to_string();
            match self.host(&host, srv.port).await {
                Ok(addresses) => {
                    valid_until = valid_until.min(addresses.valid_until);
                    targets.push(SrvTarget {
                        address: addresses.value[0],
                        host,
                        port: srv.port,
                        priority: srv.priority,
                        weight: srv.weight,
                    });
                }
                Err(problem) => {
                    first_problem.get_or_insert(format!("SRV target {host}: {problem}"));
                }
            }
        }
        if targets.is_empty()
            && let Some(problem) = first_problem
        {
            return Err(problem);
        }
        targets.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
        Ok(Answer {
            value: targets,
            valid_until,
        })
    }
}

/// [`Resolver::host`] from synchronous code (the config loader), on a thread of its own with
/// a runtime of its own, so that it works inside and outside a tokio runtime alike; gives up
/// after `timeout`.
///
/// # Errors
/// As [`Resolver::host`], or the timeout.
pub fn host_blocking(
    nameservers: &[SocketAddr],
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, String> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|error| format!("cannot start a runtime to resolve: {error}"))?;
                runtime.block_on(async {
                    let resolver = Resolver::new(nameservers)?;
                    match tokio::time::timeout(timeout, resolver.host(host, port)).await {
                        Ok(answer) => answer.map(|answer| answer.value),
                        Err(_) => Err(format!("no answer within {timeout:?}")),
                    }
                })
            })
            .join()
            .unwrap_or_else(|_| Err("the resolver thread panicked".into()))
    })
}

/// A name server address as written: `IP` (port 53) or `IP:port` (`[IPv6]:port`).
///
/// # Errors
/// What to write instead.
pub fn parse_nameserver(text: &str) -> Result<SocketAddr, String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DNS_PORT));
    }
    text.parse::<SocketAddr>().map_err(|_| {
        format!(r#"name server {text:?} is not an address: write "10.0.0.2", "10.0.0.2:5353" or "[::1]:53""#)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_server_takes_port_53_unless_it_names_one() {
        assert_eq!(
            parse_nameserver("10.0.0.2").unwrap(),
            "10.0.0.2:53".parse().unwrap()
        );
        assert_eq!(
            parse_nameserver("127.0.0.1:5353").unwrap(),
            "127.0.0.1:5353".parse().unwrap()
        );
        assert_eq!(
            parse_nameserver("::1").unwrap(),
            "[::1]:53".parse().unwrap()
        );
        assert!(
            parse_nameserver("dns.example")
                .unwrap_err()
                .contains(r#"write "10.0.0.2""#)
        );
    }
}
