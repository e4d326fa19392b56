//! What DNS says a service's backends are now, and what that changes.
//!
//! Two kinds of names are followed, each looked up again when its answer's TTL runs out
//! (within `[resolver] min_refresh` and `max_refresh`):
//! - a backend whose `address` is a host name (`app-1.internal:8080`) takes the name's first
//!   address; its name and id stay, so its cookies do;
//! - a service with `discovery = { dns_srv = "..." }` has one backend per SRV target
//!   (RFC 2782): named `HOST-PORT`, with an id hashed from `HOST:PORT` so that it is short,
//!   the same in every stickyd instance and across restarts, and never a list position. The
//!   targets of the lowest priority are primaries, the others backups; the SRV weight is the
//!   backend's weight (0 reads 1).
//!
//! A target that leaves the records is not cut off: [`plan`] says to drain it, and the
//! runtime drops it once its sessions end or at `drain_timeout`. A target that comes back
//! while draining is kept. A failed lookup changes nothing: a DNS outage never empties a farm.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::config::{BackendConfig, ResolverConfig, ServiceConfig, file, is_token};
use crate::dns::{Resolver, SrvTarget};

/// What one round of lookups found for a service.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Found {
    /// A new address per host-name backend (by backend name), where its lookup succeeded.
    pub addresses: Vec<(String, SocketAddr)>,
    /// The backends the SRV records make now; `None` without discovery, or when the SRV
    /// lookup failed.
    pub targets: Option<Vec<BackendConfig>>,
    /// Lookups that failed, in the resolver's words; what they would have changed stays.
    pub problems: Vec<String>,
    /// When to look again: the shortest TTL, within the resolver's bounds.
    pub refresh_in: Duration,
}

/// Looks up every name `service` follows with `resolver`: each host-name backend's address,
/// and its SRV targets.
pub async fn look_up(
    resolver: &Resolver,
    service: &ServiceConfig,
    bounds: &ResolverConfig,
) -> Found {
    let mut found = Found::default();
    let mut valid_until: Option<Instant> = None;
    let mut soonest = |until: Instant| {
        valid_until = Some(valid_until.map_or(until, |now| now.min(until)));
    };
    for backend in &service.backends {
        let Some(host) = &backend.host else {
            continue;
        };
        match resolver.host(host, backend.address.port()).await {
            Ok(answer) => {
                soonest(answer.valid_until);
                // The address it has, if DNS still gives it (a round-robin name reorders its
                // answers): a backend moves only when its address is gone.
                let address = if answer.value.contains(&backend.address) {
                    backend.address
                } else {
                    answer.value[0]
                };
                found.addresses.push((backend.name.clone(), address));
            }
            Err(problem) => found
                .problems
                .push(format!("backend {} ({host}): {problem}", backend.name)),
        }
    }
    if let Some(discovery) = &service.discovery {
        match resolver.srv(&discovery.dns_srv).await {
            Ok(answer) => {
                soonest(answer.valid_until);
                found.targets = Some(target_backends(&answer.value));
            }
            Err(problem) => found
                .problems
                .push(format!("SRV {}: {problem}", discovery.dns_srv)),
        }
    }
    let ttl = valid_until.map_or(bounds.min_refresh, |until| {
        until.saturating_duration_since(Instant::now())
    });
    found.refresh_in = ttl.clamp(bounds.min_refresh, bounds.max_refresh);
    found
}

/// The backends SRV `targets` make (see the module doc).
pub fn target_backends(targets: &[SrvTarget]) -> Vec<BackendConfig> {
    let primary = targets.iter().map(|target| target.priority).min();
    targets
        .iter()
        .map(|target| {
            let id = target_id(&target.host, target.port);
            let name = format!("{}-{}", target.host, target.port);
            let name = if is_token(&name) { name } else { id.clone() };
            BackendConfig {
                id,
                weight: u32::from(target.weight).clamp(1, file::MAX_WEIGHT),
                backup: Some(target.priority) != primary,
                discovered: true,
                ..BackendConfig::new(&name, target.address)
            }
        })
        .collect()
}

/// The id of SRV target `host:port`: `d` and 10 hex digits of its XXH3 hash.
pub fn target_id(host: &str, port: u16) -> String {
    let hash = xxhash_rust::xxh3::xxh3_64(format!("{host}:{port}").as_bytes());
    format!("d{:010x}", hash >> 24)
}

/// What [`plan`] says to do to a service.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The service with its backends as DNS says; equal to the running one when only
    /// removals start or stop.
    pub service: ServiceConfig,
    /// Discovered backends whose target is gone: to drain, then drop.
    pub drain: Vec<String>,
    /// Backends being removed whose target is back: to keep.
    pub keep: Vec<String>,
}

/// What `found` changes in `service`, whose backends `removing` are being removed; `None`
/// when nothing.
pub fn plan(service: &ServiceConfig, removing: &[String], found: &Found) -> Option<Plan> {
    let mut next = service.clone();
    for (name, address) in &found.addresses {
        if let Some(backend) = next.backends.iter_mut().find(|b| &b.name == name) {
            backend.address = *address;
        }
    }
    let mut drain = Vec::new();
    let mut keep = Vec::new();
    if let Some(targets) = &found.targets {
        for target in targets {
            match next.backends.iter_mut().find(|b| b.name == target.name) {
                Some(backend) if backend.discovered => {
                    backend.address = target.address;
                    backend.weight = target.weight;
                    backend.backup = target.backup;
                    if removing.contains(&backend.name) {
                        keep.push(backend.name.clone());
                    }
                }
                // A backend of the file or the admin API has the name: it stays as it is.
                Some(_) => {}
                None => next.backends.push(target.clone()),
            }
        }
        for backend in &next.backends {
            let listed = targets.iter().any(|target| target.name == backend.name);
            if backend.discovered && !listed && !removing.contains(&backend.name) {
                drain.push(backend.name.clone());
            }
        }
    }
    let changed =
        next.backends.len() != service.backends.len()
            || next.backends.iter().zip(&service.backends).any(|(a, b)| {
                a.address != b.address || a.weight != b.weight || a.backup != b.backup
            });
    (changed || !drain.is_empty() || !keep.is_empty()).then_some(Plan {
        service: next,
        drain,
        keep,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn service(extra_backends: &str) -> ServiceConfig {
        let text = format!(
            "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\n\
             discovery = {{ dns_srv = \"_http._tcp.app.test\" }}\n{extra_backends}"
        );
        Config::parse(&text, "<test>").unwrap().services.remove(0)
    }

    fn target(host: &str, port: u16, priority: u16, weight: u16) -> SrvTarget {
        SrvTarget {
            host: host.into(),
            port,
            address: SocketAddr::from(([10, 0, 0, 1], port)),
            priority,
            weight,
        }
    }

    fn found(targets: &[SrvTarget]) -> Found {
        Found {
            targets: Some(target_backends(targets)),
            ..Found::default()
        }
    }

    #[test]
    fn srv_targets_become_backends_with_ids_stable_per_host_and_port() {
        let backends = target_backends(&[
            target("app-1.test", 8080, 10, 5),
            target("app-2.test", 8080, 10, 0),
            target("spare.test", 9090, 20, 1),
        ]);
        let names: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(
            names,
            ["app-1.test-8080", "app-2.test-8080", "spare.test-9090"]
        );
        assert_eq!(backends[0].id, target_id("app-1.test", 8080));
        assert_eq!(backends[0].id.len(), 11);
        assert_ne!(backends[0].id, target_id("app-1.test", 8081));
        let shares: Vec<(u32, bool)> = backends.iter().map(|b| (b.weight, b.backup)).collect();
        assert_eq!(shares, [(5, false), (1, false), (1, true)]);
        // The same target in another order, or another instance, gets the same id.
        let reordered = target_backends(&[
            target("spare.test", 9090, 20, 1),
            target("app-1.test", 8080, 10, 5),
        ]);
        assert_eq!(reordered[1].id, backends[0].id);
    }

    #[test]
    fn new_targets_are_added_gone_ones_drained_and_returning_ones_kept() {
        let running = plan(
            &service(""),
            &[],
            &found(&[target("a.test", 80, 0, 1), target("b.test", 80, 0, 1)]),
        )
        .unwrap();
        assert_eq!(running.service.backends.len(), 2);
        assert!(running.drain.is_empty() && running.keep.is_empty());
        let running = running.service;

        // Nothing changed: nothing to do.
        let same = found(&[target("b.test", 80, 0, 1), target("a.test", 80, 0, 1)]);
        assert!(plan(&running, &[], &same).is_none());

        // b goes: it drains, and stays listed until the runtime drops it.
        let gone = plan(&running, &[], &found(&[target("a.test", 80, 0, 1)])).unwrap();
        assert_eq!(gone.drain, ["b.test-80"]);
        assert_eq!(gone.service.backends.len(), 2);
        // While it drains, the same answer asks for nothing more.
        let removing = vec!["b.test-80".to_string()];
        assert!(plan(&running, &removing, &found(&[target("a.test", 80, 0, 1)])).is_none());
        // It comes back: it is kept.
        let back = plan(&running, &removing, &same).unwrap();
        assert_eq!(back.keep, ["b.test-80"]);
    }

    #[test]
    fn a_failed_srv_lookup_changes_nothing() {
        let running = plan(&service(""), &[], &found(&[target("a.test", 80, 0, 1)]))
            .unwrap()
            .service;
        let failed = Found {
            problems: vec!["SRV _http._tcp.app.test: timed out".into()],
            ..Found::default()
        };
        assert!(plan(&running, &[], &failed).is_none());
    }

    #[test]
    fn a_host_name_backend_follows_its_address_and_a_file_backend_keeps_its_name() {
        let running =
            service("[[service.backend]]\nname = \"a.test-80\"\naddress = \"127.0.0.1:3001\"\n");
        let moved = Found {
            addresses: vec![("a.test-80".into(), "127.0.0.2:3001".parse().unwrap())],
            ..found(&[target("a.test", 80, 0, 1)])
        };
        let next = plan(&running, &[], &moved).unwrap();
        // The file's backend of that name is not replaced by the target's.
        assert_eq!(next.service.backends.len(), 1);
        assert!(!next.service.backends[0].discovered);
        assert_eq!(
            next.service.backends[0].address,
            "127.0.0.2:3001".parse().unwrap()
        );
        assert!(next.drain.is_empty());
    }
}
