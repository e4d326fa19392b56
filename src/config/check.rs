//! The checker: turns the raw file into a validated [`Config`], reading what it names (key,
//! token and certificate files) and resolving backend addresses, and collects every problem
//! with its place.

use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::sign::CertifiedKey;
use toml::Spanned;

use super::file::{self, RawAffinity, RawBackend, RawConfig, RawHealth, RawService, Strategy};
use super::hints;
use super::*;
use crate::seal::Sealer;

/// Validates config `text`; `origin` names it in problems.
pub(super) fn check(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let mut checker = Checker {
        text,
        origin,
        problems: Vec::new(),
        warnings: Vec::new(),
        nameservers: Vec::new(),
    };
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(error) => {
            let message = hints::explain(text, error.span().as_ref(), error.message().trim_end());
            checker.report(error.span(), message);
            return Err(ConfigError::Invalid(checker.problems));
        }
    };
    let mut config = checker.config(raw);
    if checker.problems.is_empty() {
        checker
            .warnings
            .sort_by_key(|warning| (warning.line, warning.column));
        config.warnings = checker.warnings;
        Ok(config)
    } else {
        checker.problems.append(&mut checker.warnings);
        checker
            .problems
            .sort_by_key(|problem| (problem.line, problem.column));
        Err(ConfigError::Invalid(checker.problems))
    }
}

/// Collects problems while turning the raw file into a [`Config`].
struct Checker<'a> {
    text: &'a str,
    origin: &'a str,
    problems: Vec<Problem>,
    /// What loads but is likely a mistake (`warning: ...`).
    warnings: Vec<Problem>,
    /// `[resolver] nameservers`, for the backend host names resolved at load.
    nameservers: Vec<SocketAddr>,
}

impl Checker<'_> {
    fn report(&mut self, span: Option<Range<usize>>, message: String) {
        let offset = span.map_or(0, |span| span.start).min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
        let column = before[line_start..].chars().count() + 1;
        self.problems.push(Problem {
            origin: self.origin.to_string(),
            line,
            column,
            message,
        });
    }

    fn report_at<T>(&mut self, at: &Spanned<T>, message: String) {
        self.report(Some(at.span()), message);
    }

    /// A warning at `at`: kept apart from the problems, so the config still loads.
    fn warn_at<T>(&mut self, at: &Spanned<T>, message: String) {
        self.warn(Some(at.span()), message);
    }

    /// A warning at `span`: reported by `check`, and the config still loads.
    fn warn(&mut self, span: Option<Range<usize>>, message: String) {
        self.report(span, format!("warning: {message}"));
        let warning = self.problems.pop().expect("the problem just reported");
        self.warnings.push(warning);
    }

    /// Warns when the duration at `value` is zero, saying what that does.
    fn warn_zero(&mut self, value: Option<&Spanned<file::DurationValue>>, key: &str, effect: &str) {
        if let Some(value) = value.filter(|value| value.get_ref().0.is_zero()) {
            self.warn_at(value, format!("{key} is zero: {effect}"));
        }
    }

    /// The file `path` names, with `$CREDENTIALS_DIRECTORY` (or `${CREDENTIALS_DIRECTORY}`)
    /// replaced by the directory systemd gives a unit's credentials (`LoadCredential=`,
    /// systemd.exec(5) "Credentials"); `None`, reported, when the variable is unset.
    fn expand(&mut self, path: &Spanned<String>) -> Option<PathBuf> {
        let text = path.get_ref();
        let variable = ["${CREDENTIALS_DIRECTORY}", "$CREDENTIALS_DIRECTORY"]
            .into_iter()
            .find(|variable| text.contains(variable));
        let Some(variable) = variable else {
            return Some(PathBuf::from(text));
        };
        match std::env::var("CREDENTIALS_DIRECTORY") {
            Ok(directory) => Some(PathBuf::from(text.replace(variable, &directory))),
            Err(_) => {
                self.report_at(
                    path,
                    format!("{text:?} names $CREDENTIALS_DIRECTORY, which is not set: systemd sets it for a unit with LoadCredential=; outside systemd, write the file's own path"),
                );
                None
            }
        }
    }

    /// [`Checker::expand`] for a secret (`what`: "TLS private key"), with a warning when every
    /// user of the host may read it.
    fn secret(&mut self, path: &Spanned<String>, what: &str) -> Option<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let expanded = self.expand(path)?;
        if let Ok(metadata) = std::fs::metadata(&expanded)
            && metadata.permissions().mode() & 0o004 != 0
        {
            self.warn_at(
                path,
                format!(
                    "{what} {} is readable by every user (mode {:o}): `chmod 600` it, or 640 with the group stickyd runs as, or hand it over with LoadCredential=",
                    expanded.display(),
                    metadata.permissions().mode() & 0o777
                ),
            );
        }
        Some(expanded)
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let resolver = self.resolver(raw.resolver.map(Spanned::into_inner));
        self.nameservers = resolver.nameservers.clone();
        if raw.services.is_empty() {
            self.report(
                None,
                "no service is configured: add a [[service]] table".into(),
            );
        }
        let mut services: Vec<ServiceConfig> = Vec::new();
        for raw_service in raw.services {
            let span = raw_service.span();
            let service = self.service(raw_service.into_inner(), span.clone());
            if services.iter().any(|other| other.name == service.name) {
                self.report(
                    Some(span.clone()),
                    format!(
                        "service name {:?} is used twice: give each service its own name",
                        service.name
                    ),
                );
            }
            for (index, address) in service
                .listeners
                .iter()
                .map(|listener| &listener.address)
                .enumerate()
            {
                let repeated = service.listeners[..index]
                    .iter()
                    .any(|listener| listener.address == *address);
                if address.port() != 0 && repeated {
                    self.report(
                        Some(span.clone()),
                        format!("listen address {address} is listed twice in service {:?}: list it once", service.name),
                    );
                }
                let taken = services.iter().any(|other| {
                    other
                        .listeners
                        .iter()
                        .any(|listener| listener.address == *address)
                });
                if address.port() != 0 && taken {
                    self.report(
                        Some(span.clone()),
                        format!("listen address {address} is used by two services: give each its own port"),
                    );
                }
            }
            services.push(service);
        }
        if let Some(level) = &raw.log_level
            && let Err(error) = tracing_subscriber::EnvFilter::try_new(level.get_ref())
        {
            self.report_at(level, format!(r#"invalid log_level: {error}: write "error", "warn", "info", "debug" or "trace""#));
        }
        Config {
            log_level: raw
                .log_level
                .map_or_else(|| file::DEFAULT_LOG_LEVEL.to_string(), Spanned::into_inner),
            access_log: raw.access_log.unwrap_or_default(),
            shutdown_grace: raw
                .shutdown_grace
                .inspect(|value| {
                    self.warn_zero(
                        Some(value),
                        "shutdown_grace",
                        "requests in flight are cut at once on stop",
                    );
                })
                .map_or(file::DEFAULT_SHUTDOWN_GRACE, |d| d.into_inner().0),
            admin: raw.admin.map(|admin| self.admin(admin.into_inner())),
            resolver,
            threads: raw.threads.map(|threads| {
                if *threads.get_ref() == 0 {
                    self.report_at(
                        &threads,
                        "threads must be at least 1 (or leave it out: one per core)".into(),
                    );
                }
                threads.into_inner().max(1)
            }),
            pin_threads: raw.pin_threads.unwrap_or(false),
            services,
            warnings: Vec::new(),
        }
    }

    fn service(&mut self, raw: RawService, span: Range<usize>) -> ServiceConfig {
        self.check_token(&raw.name, "service name");
        if raw.listen.get_ref().is_empty() {
            self.report_at(
                &raw.listen,
                r#"listen is empty: add an address such as "0.0.0.0:8080""#.into(),
            );
        }
        let discovery = raw
            .discovery
            .map(|discovery| self.discovery(discovery.into_inner()));
        let nameservers =
            DiscoveryConfig::nameservers_or(discovery.as_ref(), &self.nameservers).to_vec();
        let backends = match raw.backends {
            Some(backends) => self.backends(backends.into_inner(), &nameservers),
            None => Vec::new(),
        };
        if backends.is_empty() && discovery.is_none() {
            self.report(
                Some(span.clone()),
                format!(
                    "service {:?} has no backend: add a [[service.backend]] table, or discovery = {{ dns_srv = \"_http._tcp.app.example\" }}",
                    raw.name.get_ref()
                ),
            );
        }
        let tls: Vec<Arc<CertifiedKey>> = raw
            .tls
            .iter()
            .filter_map(|entry| {
                let entry = entry.get_ref();
                let cert = self.expand(&entry.cert);
                let key = self.secret(&entry.key, "TLS private key");
                crate::tls::load(&cert?, &key?)
                    .map_err(|message| self.report_at(&entry.cert, message))
                    .ok()
            })
            .collect();
        // A browser never sends a Secure cookie back over http://, so an insert cookie is
        // Secure by default only when every listener that proxies speaks TLS (a redirecting
        // cleartext listener proxies nothing).
        let https_only = !raw.tls.is_empty()
            && raw.listen.get_ref().iter().all(|listener| {
                let listener = listener.get_ref();
                listener.tls.unwrap_or(true) || listener.redirect_https
            });
        let affinity = match raw.affinity {
            Some(affinity) => self.affinity(affinity.into_inner(), https_only),
            None => AffinityConfig::None,
        };
        if raw.balance == Balance::LeastSessions && matches!(affinity, AffinityConfig::None) {
            self.warn(
                Some(span),
                "balance = \"least-sessions\" with no affinity has no sessions to count: it places requests in turn, as round-robin does".into(),
            );
        }
        let session_idle = raw
            .session_idle
            .as_ref()
            .map_or(file::DEFAULT_SESSION_IDLE, |d| d.get_ref().0);
        let trusted_proxies = match &raw.trusted_proxies {
            Some(list) => self.networks(list.get_ref()),
            None => Vec::new(),
        };
        let listeners = self.listeners(raw.listen.into_inner(), !raw.tls.is_empty());
        ServiceConfig {
            name: raw.name.into_inner(),
            listeners,
            balance: raw.balance,
            trusted_proxies,
            underscores_in_headers: raw.underscores_in_headers,
            connect_timeout: raw
                .connect_timeout
                .inspect(|value| {
                    self.warn_zero(
                        Some(value),
                        "connect_timeout",
                        "every connection to a backend fails at once",
                    );
                })
                .map_or(file::DEFAULT_CONNECT_TIMEOUT, |d| d.into_inner().0),
            response_timeout: raw
                .response_timeout
                .inspect(|value| {
                    self.warn_zero(
                        Some(value),
                        "response_timeout",
                        "every request gets 504 at once",
                    );
                })
                .map_or(file::DEFAULT_RESPONSE_TIMEOUT, |d| d.into_inner().0),
            ejection_time: raw
                .ejection_time
                .map_or(file::DEFAULT_EJECTION_TIME, |d| d.into_inner().0),
            slow_start: raw.slow_start.map_or(Duration::ZERO, |d| d.into_inner().0),
            proxy_protocol: raw.proxy_protocol,
            tls,
            failback: raw.failback.unwrap_or(true),
            debug_header: raw.debug_header,
            session_idle,
            drain_timeout: raw
                .drain_timeout
                .map_or(file::DEFAULT_DRAIN_TIMEOUT, |d| d.into_inner().0),
            rebalance_after: self.rebalance_after(&raw.rebalance_after, &affinity, session_idle),
            discovery,
            health: self.health(raw.health.map(Spanned::into_inner)),
            limits: self.limits(raw.limits.map(Spanned::into_inner)),
            affinity,
            backends,
        }
    }

    /// The `[[service.backend]]` tables; host names are resolved through `nameservers` (the
    /// system's when empty).
    fn backends(
        &mut self,
        raw: Vec<Spanned<RawBackend>>,
        nameservers: &[SocketAddr],
    ) -> Vec<BackendConfig> {
        let mut backends: Vec<BackendConfig> = Vec::with_capacity(raw.len());
        for raw_backend in raw {
            let raw_backend = raw_backend.into_inner();
            self.check_token(&raw_backend.name, "backend name");
            let id = raw_backend.id.as_ref().unwrap_or(&raw_backend.name);
            if raw_backend.id.is_some() {
                self.check_token(id, "backend id");
            }
            if backends
                .iter()
                .any(|other| &other.name == raw_backend.name.get_ref())
            {
                self.report_at(
                    &raw_backend.name,
                    "backend name is used twice in this service: give each backend its own name"
                        .into(),
                );
            } else if backends.iter().any(|other| &other.id == id.get_ref()) {
                // Reported once: a repeated name repeats the id it defaults to.
                self.report_at(
                    id,
                    format!(
                        "backend id {:?} is used twice in this service: set a unique `id`",
                        id.get_ref()
                    ),
                );
            }
            let weight = raw_backend
                .weight
                .as_ref()
                .map_or(file::DEFAULT_WEIGHT, |w| *w.get_ref());
            if let Some(problem) = weight_problem(weight) {
                let at = raw_backend
                    .weight
                    .as_ref()
                    .expect("a weight out of range was written");
                self.report_at(at, problem);
            }
            let (address, host) = self.resolve(&raw_backend.address, nameservers);
            backends.push(BackendConfig {
                name: raw_backend.name.get_ref().clone(),
                id: id.get_ref().clone(),
                address,
                weight,
                state: raw_backend.state,
                backup: raw_backend.backup,
                host,
                discovered: false,
            });
        }
        backends
    }

    /// A backend's address and, when it was written as a host name, the name (looked up
    /// again at run time): through `nameservers`, or the system's resolver when empty.
    fn resolve(
        &mut self,
        address: &Spanned<String>,
        nameservers: &[SocketAddr],
    ) -> (SocketAddr, Option<String>) {
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        let text = address.get_ref();
        if let Ok(literal) = text.parse::<SocketAddr>() {
            return (literal, None);
        }
        let Some((host, port)) = text
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
            .filter(|(host, _)| !host.is_empty())
        else {
            self.report_at(
                address,
                format!(
                    r#"backend address {text:?} has no port: write "host:port", e.g. "{}:3001""#,
                    text.trim_end_matches(':')
                ),
            );
            return (unspecified, None);
        };
        let found = if nameservers.is_empty() {
            text.to_socket_addrs()
                .map(|found| found.collect::<Vec<_>>())
                .map_err(|error| format!("{error}: check the host name and the resolver (/etc/resolv.conf), or write an IP address"))
        } else {
            crate::dns::host_blocking(nameservers, host, port, LOAD_LOOKUP_TIMEOUT).map_err(
                |error| {
                    let servers: Vec<String> = nameservers.iter().map(ToString::to_string).collect();
                    format!("{error}: check the host name and the name servers ({}), or write an IP address", servers.join(", "))
                },
            )
        };
        match found.map(|found| found.first().copied()) {
            Ok(Some(resolved)) => (resolved, Some(host.to_string())),
            Ok(None) => {
                self.report_at(
                    address,
                    format!("cannot resolve backend address {text:?}: the resolver found no address for it: check the host name, or write an IP address"),
                );
                (unspecified, None)
            }
            Err(error) => {
                self.report_at(
                    address,
                    format!("cannot resolve backend address {text:?}: {error}"),
                );
                (unspecified, None)
            }
        }
    }

    /// `rebalance_after`: for insert and prefix only (a stick table's entry ends with the app's
    /// session, a hash has no binding to move), above zero, and within `session_idle`.
    fn rebalance_after(
        &mut self,
        raw: &Option<Spanned<file::DurationValue>>,
        affinity: &AffinityConfig,
        session_idle: Duration,
    ) -> Option<Duration> {
        let at = raw.as_ref()?;
        let after = at.get_ref().0;
        if !matches!(
            affinity,
            AffinityConfig::Insert(_) | AffinityConfig::Prefix(_)
        ) {
            self.report_at(at, r#"rebalance_after applies to strategy = "insert" or "prefix", whose cookies can outlive the app's session: remove it"#.into());
        } else if after.is_zero() {
            self.report_at(at, "rebalance_after must be above zero: set it to the app's session timeout, such as \"30m\"".into());
        } else if after > session_idle {
            self.report_at(at, format!("rebalance_after ({after:?}) is above session_idle ({session_idle:?}), past which stickyd forgets a session's last request: raise session_idle to at least rebalance_after"));
        }
        Some(after)
    }

    /// `[resolver]`, with its defaults when absent.
    fn resolver(&mut self, raw: Option<file::RawResolver>) -> ResolverConfig {
        let Some(raw) = raw else {
            return ResolverConfig::default();
        };
        let nameservers = self.nameservers_of(raw.nameservers.as_deref().unwrap_or_default());
        let refresh = |value: &Option<Spanned<file::DurationValue>>, default| {
            value.as_ref().map_or(default, |d| d.get_ref().0)
        };
        let min_refresh = refresh(&raw.min_refresh, file::DEFAULT_MIN_REFRESH);
        let max_refresh = refresh(&raw.max_refresh, file::DEFAULT_MAX_REFRESH);
        if let Some(at) = &raw.min_refresh
            && min_refresh.is_zero()
        {
            self.report_at(at, "min_refresh must be above zero, such as \"1s\": a TTL of 0 would have stickyd ask without pause".into());
        }
        if min_refresh > max_refresh {
            let at = raw.max_refresh.as_ref().or(raw.min_refresh.as_ref());
            self.report(
                at.map(Spanned::span),
                format!("min_refresh ({min_refresh:?}) is above max_refresh ({max_refresh:?}): make min_refresh the smaller"),
            );
        }
        ResolverConfig {
            nameservers,
            min_refresh,
            max_refresh,
        }
    }

    /// A service's `discovery` table.
    fn discovery(&mut self, raw: file::RawDiscovery) -> DiscoveryConfig {
        let name = raw.dns_srv.get_ref();
        if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == ':') {
            self.report_at(
                &raw.dns_srv,
                format!(r#"dns_srv {name:?} is not an SRV name: write one such as "_http._tcp.app.example""#),
            );
        }
        DiscoveryConfig {
            dns_srv: name.clone(),
            nameservers: self.nameservers_of(raw.resolvers.as_deref().unwrap_or_default()),
        }
    }

    /// Name server addresses as written (`IP` or `IP:port`), each problem reported at its own.
    fn nameservers_of(&mut self, raw: &[Spanned<String>]) -> Vec<SocketAddr> {
        raw.iter()
            .filter_map(|server| {
                crate::dns::parse_nameserver(server.get_ref())
                    .map_err(|problem| self.report_at(server, problem))
                    .ok()
            })
            .collect()
    }

    /// `https_only`: every listener that proxies speaks TLS (the insert cookie's `Secure`
    /// default).
    fn affinity(&mut self, raw: RawAffinity, https_only: bool) -> AffinityConfig {
        let strategy = *raw.strategy.get_ref();
        let strategy_name = match strategy {
            Strategy::Insert => "insert",
            Strategy::Prefix => "prefix",
            Strategy::StickTable => "stick-table",
            Strategy::Hash => "hash",
            Strategy::None => "none",
        };
        if let Some(list) = &raw.trusted_proxies {
            self.report_at(
                list,
                "`trusted_proxies` is a [[service]] key (it also governs X-Forwarded-For and Forwarded): move it above [service.affinity]".into(),
            );
        }
        let misplaced: [(Option<Range<usize>>, &str); hints::AFFINITY_KEYS.len()] = [
            (span_of(&raw.path), "path"),
            (span_of(&raw.domain), "domain"),
            (span_of(&raw.max_age), "max_age"),
            (span_of(&raw.http_only), "http_only"),
            (span_of(&raw.secure), "secure"),
            (span_of(&raw.same_site), "same_site"),
            (span_of(&raw.indirect), "indirect"),
            (span_of(&raw.nocache), "nocache"),
            (span_of(&raw.delimiter), "delimiter"),
            (span_of(&raw.ttl), "ttl"),
            (span_of(&raw.max_entries), "max_entries"),
            (span_of(&raw.store), "store"),
            (span_of(&raw.seal), "seal"),
            (span_of(&raw.key_file), "key_file"),
            (span_of(&raw.max_idle), "max_idle"),
            (span_of(&raw.max_life), "max_life"),
            (span_of(&raw.redis_url), "redis_url"),
            (span_of(&raw.key_prefix), "key_prefix"),
            (span_of(&raw.redis_timeout), "redis_timeout"),
            (span_of(&raw.key), "key"),
            (span_of(&raw.reservation_ttl), "reservation_ttl"),
            (span_of(&raw.fallback), "fallback"),
            (span_of(&raw.balance_factor), "balance_factor"),
        ];
        for (span, key) in misplaced {
            let owner = hints::affinity_owner(key).expect("an affinity key of one strategy");
            if span.is_some() && !owner.split(" or ").any(|one| one == strategy_name) {
                self.report(
                    span,
                    format!(r#"`{key}` applies only to strategy = "{owner}", not "{strategy_name}": remove it"#),
                );
            }
        }
        if matches!(strategy, Strategy::None | Strategy::Hash) {
            if let Some(cookie) = &raw.cookie {
                self.report_at(
                    cookie,
                    format!(r#"`cookie` has no use with strategy = "{strategy_name}": remove it (to hash a cookie, write key = "cookie:NAME")"#),
                );
            }
            return match strategy {
                Strategy::Hash => AffinityConfig::Hash(self.hash(raw)),
                _ => AffinityConfig::None,
            };
        }
        let cookie = match &raw.cookie {
            Some(cookie) => {
                self.check_token(cookie, "cookie name");
                cookie.get_ref().clone()
            }
            None if strategy == Strategy::Insert => file::DEFAULT_INSERT_COOKIE.to_string(),
            None => {
                self.report_at(
                    &raw.strategy,
                    format!(r#"strategy "{strategy_name}" needs the app's session cookie: add cookie = "JSESSIONID" (or PHPSESSID, connect.sid, ...)"#),
                );
                String::new()
            }
        };
        match strategy {
            Strategy::Insert => AffinityConfig::Insert(self.insert(raw, cookie, https_only)),
            Strategy::Prefix => {
                let delimiter = match &raw.delimiter {
                    Some(text) => self.delimiter(text),
                    None => file::DEFAULT_PREFIX_DELIMITER,
                };
                let seal = self.seal(&raw);
                AffinityConfig::Prefix(PrefixConfig {
                    cookie,
                    delimiter,
                    seal,
                })
            }
            Strategy::StickTable => {
                let max_entries = raw
                    .max_entries
                    .as_ref()
                    .map_or(file::DEFAULT_STICK_MAX_ENTRIES, |n| *n.get_ref());
                if max_entries == 0 {
                    let at = raw.max_entries.as_ref().expect("zero was written");
                    self.report_at(at, "max_entries must be at least 1".into());
                }
                let store = self.store(&raw);
                let reservation_ttl = self.positive(
                    raw.reservation_ttl.as_ref(),
                    file::DEFAULT_RESERVATION_TTL,
                    "reservation_ttl",
                );
                AffinityConfig::StickTable(StickTableConfig {
                    cookie,
                    ttl: raw
                        .ttl
                        .map_or(file::DEFAULT_STICK_TTL, |d| d.into_inner().0),
                    max_entries,
                    reservation_ttl,
                    store,
                })
            }
            Strategy::None | Strategy::Hash => unreachable!("handled above"),
        }
    }

    fn store(&mut self, raw: &RawAffinity) -> StoreConfig {
        let kind = raw
            .store
            .as_ref()
            .map_or(file::StoreKind::Memory, |kind| *kind.get_ref());
        let redis_keys = [
            (span_of(&raw.redis_url), "redis_url"),
            (span_of(&raw.key_prefix), "key_prefix"),
            (span_of(&raw.redis_timeout), "redis_timeout"),
        ];
        if kind == file::StoreKind::Memory {
            for (span, key) in redis_keys {
                if span.is_some() {
                    self.report(span, format!(r#"`{key}` applies only to store = "redis": remove it or set store = "redis""#));
                }
            }
            return StoreConfig::Memory;
        }
        let target = match &raw.redis_url {
            Some(url) => match parse_redis_url(url.get_ref()) {
                Ok(target) => target,
                Err(error) => {
                    self.report_at(url, format!("invalid redis_url: {error}"));
                    RedisTarget::Server(String::new())
                }
            },
            None => {
                let at = raw.store.as_ref().expect("store = redis was written");
                self.report_at(at, r#"store = "redis" needs redis_url, e.g. redis_url = "redis://127.0.0.1:6379/0" (or "redis+sentinel://host1:26379,host2:26379,host3:26379/mymaster", or "redis+cluster://host1:6379,host2:6379")"#.into());
                RedisTarget::Server(String::new())
            }
        };
        StoreConfig::Redis {
            target,
            key_prefix: raw.key_prefix.as_ref().map_or_else(
                || file::DEFAULT_KEY_PREFIX.to_string(),
                |p| p.get_ref().clone(),
            ),
            timeout: raw
                .redis_timeout
                .as_ref()
                .map_or(file::DEFAULT_REDIS_TIMEOUT, |d| d.get_ref().0),
        }
    }

    fn insert(&mut self, raw: RawAffinity, cookie: String, https_only: bool) -> InsertConfig {
        let seal = self.seal(&raw);
        for attribute in [&raw.path, &raw.domain].into_iter().flatten() {
            if attribute
                .get_ref()
                .bytes()
                .any(|b| b == b';' || b.is_ascii_control())
            {
                self.report_at(
                    attribute,
                    "cookie attributes cannot contain ';' or control characters".into(),
                );
            }
        }
        let flag = |value: &Option<Spanned<bool>>, default: bool| {
            value.as_ref().map_or(default, |v| *v.get_ref())
        };
        let secure = flag(&raw.secure, https_only);
        let same_site = raw
            .same_site
            .as_ref()
            .map_or(SameSite::Lax, |s| *s.get_ref());
        if same_site == SameSite::None && !secure {
            let at = raw
                .same_site
                .as_ref()
                .expect("same_site = none was written");
            self.report_at(
                at,
                r#"same_site = "none" is refused by browsers without Secure: add secure = true"#
                    .into(),
            );
        }
        InsertConfig {
            cookie,
            path: raw.path.map_or_else(
                || file::DEFAULT_COOKIE_PATH.to_string(),
                Spanned::into_inner,
            ),
            domain: raw.domain.map(Spanned::into_inner),
            max_age: raw.max_age.map(|d| d.into_inner().0),
            http_only: flag(&raw.http_only, true),
            secure,
            same_site,
            indirect: flag(&raw.indirect, true),
            nocache: flag(&raw.nocache, true),
            seal,
        }
    }

    fn seal(&mut self, raw: &RawAffinity) -> SealConfig {
        let mode = raw
            .seal
            .as_ref()
            .map_or(SealMode::Plain, |mode| *mode.get_ref());
        let duration =
            |value: &Option<Spanned<file::DurationValue>>| value.as_ref().map(|d| d.get_ref().0);
        let (max_idle, max_life) = (duration(&raw.max_idle), duration(&raw.max_life));
        if mode == SealMode::Plain {
            for (span, key) in [
                (span_of(&raw.key_file), "key_file"),
                (span_of(&raw.max_idle), "max_idle"),
                (span_of(&raw.max_life), "max_life"),
            ] {
                if span.is_some() {
                    self.report(
                        span,
                        format!(r#"`{key}` needs sealed ids (the times travel in the sealed value): set seal = "signed" or "encrypted""#),
                    );
                }
            }
            return SealConfig {
                sealer: Sealer::plain(),
                max_idle: None,
                max_life: None,
            };
        }
        let keys = match &raw.key_file {
            None => {
                let at = raw.seal.as_ref().expect("a sealed mode was written");
                self.report_at(at, r#"sealed ids need key_file = "/etc/stickyd/keys" (one key of 32+ bytes per line, base64 or hex)"#.into());
                Vec::new()
            }
            Some(path) => match self
                .secret(path, "cookie key file")
                .map(|expanded| crate::seal::key_file::read(&expanded))
            {
                None => Vec::new(),
                Some(Ok(keys)) => keys,
                Some(Err(error)) => {
                    self.report_at(path, format!("{error}: write one key of at least 32 bytes per line, base64 or hex (e.g. `openssl rand -base64 32`)"));
                    Vec::new()
                }
            },
        };
        let sealer = if keys.is_empty() {
            Sealer::plain()
        } else {
            Sealer::new(mode, keys).unwrap_or_else(|_| Sealer::plain())
        };
        SealConfig {
            sealer,
            max_idle,
            max_life,
        }
    }

    fn limits(&mut self, raw: Option<file::RawLimits>) -> LimitsConfig {
        let raw = raw.unwrap_or(file::RawLimits {
            head_timeout: None,
            keepalive_timeout: None,
            handshake_timeout: None,
            body_timeout: None,
            tunnel_timeout: None,
            max_header_bytes: None,
            max_headers: None,
            max_connections: None,
            max_body: None,
            max_key_bytes: None,
            http2_max_concurrent_streams: None,
            http2_max_pending_resets: None,
            http2_max_local_resets: None,
        });
        if let Some(bytes) = raw
            .max_header_bytes
            .as_ref()
            .filter(|bytes| bytes.get_ref().0 < file::MIN_HEADER_BYTES)
        {
            self.report_at(bytes, r#"max_header_bytes must be at least "8KiB""#.into());
        }
        let count = |checker: &mut Self, value: &Option<Spanned<usize>>, default: usize| {
            value.as_ref().map_or(default, |count| {
                if *count.get_ref() == 0 {
                    checker.report_at(count, "must be at least 1".into());
                }
                (*count.get_ref()).max(1)
            })
        };
        let max_headers = count(self, &raw.max_headers, file::DEFAULT_MAX_HEADERS);
        let max_connections = count(self, &raw.max_connections, file::DEFAULT_MAX_CONNECTIONS);
        let max_key_bytes = count(self, &raw.max_key_bytes, file::DEFAULT_MAX_KEY_BYTES);
        let http2_max_pending_resets = count(
            self,
            &raw.http2_max_pending_resets,
            file::DEFAULT_HTTP2_MAX_PENDING_RESETS,
        );
        let http2_max_local_resets = count(
            self,
            &raw.http2_max_local_resets,
            file::DEFAULT_HTTP2_MAX_LOCAL_RESETS,
        );
        let http2_max_concurrent_streams = raw.http2_max_concurrent_streams.as_ref().map_or(
            file::DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS,
            |streams| {
                if *streams.get_ref() == 0 {
                    self.report_at(streams, "must be at least 1".into());
                }
                (*streams.get_ref()).max(1)
            },
        );
        LimitsConfig {
            head_timeout: self.positive(
                raw.head_timeout.as_ref(),
                file::DEFAULT_HEAD_TIMEOUT,
                "head_timeout",
            ),
            keepalive_timeout: self.positive(
                raw.keepalive_timeout.as_ref(),
                file::DEFAULT_KEEPALIVE_TIMEOUT,
                "keepalive_timeout",
            ),
            handshake_timeout: self.positive(
                raw.handshake_timeout.as_ref(),
                file::DEFAULT_HANDSHAKE_TIMEOUT,
                "handshake_timeout",
            ),
            body_timeout: self.positive(
                raw.body_timeout.as_ref(),
                file::DEFAULT_BODY_TIMEOUT,
                "body_timeout",
            ),
            tunnel_timeout: self.positive(
                raw.tunnel_timeout.as_ref(),
                file::DEFAULT_TUNNEL_TIMEOUT,
                "tunnel_timeout",
            ),
            max_header_bytes: raw
                .max_header_bytes
                .map_or(file::DEFAULT_MAX_HEADER_BYTES, |s| {
                    s.into_inner().0.max(file::MIN_HEADER_BYTES)
                }),
            max_headers,
            max_connections,
            max_body: raw.max_body.map(|s| s.into_inner().0 as u64),
            max_key_bytes,
            http2_max_concurrent_streams,
            http2_max_pending_resets,
            http2_max_local_resets,
        }
    }

    /// A duration that must be above zero (a zero deadline would close everything at once).
    fn positive(
        &mut self,
        value: Option<&Spanned<file::DurationValue>>,
        default: Duration,
        key: &str,
    ) -> Duration {
        match value {
            None => default,
            Some(duration) if duration.get_ref().0.is_zero() => {
                self.report_at(
                    duration,
                    format!(
                        r#"{key} must be above zero, such as "{}s""#,
                        default.as_secs().max(1)
                    ),
                );
                default
            }
            Some(duration) => duration.get_ref().0,
        }
    }

    fn health(&mut self, raw: Option<RawHealth>) -> HealthConfig {
        let raw = raw.unwrap_or(RawHealth {
            path: None,
            interval: None,
            timeout: None,
            rise: None,
            fall: None,
            expect: None,
            passive_failures: None,
            passive_5xx: false,
        });
        if let Some(path) = &raw.path
            && (!path.get_ref().starts_with('/')
                || path.get_ref().parse::<http::uri::PathAndQuery>().is_err())
        {
            self.report_at(
                path,
                r#"health check path must be an absolute path such as "/health""#.into(),
            );
        }
        for threshold in [&raw.rise, &raw.fall].into_iter().flatten() {
            if *threshold.get_ref() == 0 {
                self.report_at(threshold, "rise and fall must be at least 1".into());
            }
        }
        let expect = match &raw.expect {
            None => file::DEFAULT_EXPECT,
            Some(text) => match parse_status_range(text.get_ref()) {
                Some(range) => range,
                None => {
                    self.report_at(
                        text,
                        r#"expect must be a status or a range such as "200" or "200-399""#.into(),
                    );
                    file::DEFAULT_EXPECT
                }
            },
        };
        self.warn_zero(
            raw.interval.as_ref(),
            "health interval",
            "checks run back to back, without pause",
        );
        self.warn_zero(
            raw.timeout.as_ref(),
            "health timeout",
            "every check fails and every backend goes down",
        );
        let duration = |value: &Option<Spanned<file::DurationValue>>, default| {
            value.as_ref().map_or(default, |d| d.get_ref().0)
        };
        let count = |value: &Option<Spanned<u32>>, default| {
            value.as_ref().map_or(default, |n| *n.get_ref())
        };
        HealthConfig {
            path: raw.path.as_ref().map(|path| path.get_ref().clone()),
            interval: duration(&raw.interval, file::DEFAULT_HEALTH_INTERVAL),
            timeout: duration(&raw.timeout, file::DEFAULT_HEALTH_TIMEOUT),
            rise: count(&raw.rise, file::DEFAULT_RISE),
            fall: count(&raw.fall, file::DEFAULT_FALL),
            expect,
            passive_failures: count(&raw.passive_failures, file::DEFAULT_PASSIVE_FAILURES),
            passive_5xx: raw.passive_5xx,
        }
    }

    fn admin(&mut self, raw: file::RawAdmin) -> AdminConfig {
        if let Some(bind) = raw
            .bind
            .as_ref()
            .filter(|bind| !bind.get_ref().ip().is_loopback())
            && raw.token_file.is_none()
        {
            self.warn_at(
                bind,
                format!(
                    "the admin listener on {} is reachable beyond this host and asks for no token: whoever reaches it can drain backends and read the stick table: set token_file, or bind 127.0.0.1",
                    bind.get_ref()
                ),
            );
        }
        let token = raw.token_file.as_ref().and_then(|path| {
            let expanded = self.secret(path, "admin token file")?;
            match std::fs::read_to_string(expanded) {
                Ok(text) if !text.trim().is_empty() => Some(text.trim().to_string()),
                Ok(_) => {
                    self.report_at(
                        path,
                        format!(
                            "admin token file {:?} is empty: write a token in it",
                            path.get_ref()
                        ),
                    );
                    None
                }
                Err(error) => {
                    self.report_at(
                        path,
                        format!("cannot read admin token file {:?}: {error}", path.get_ref()),
                    );
                    None
                }
            }
        });
        let default_bind = file::DEFAULT_ADMIN_BIND
            .parse()
            .expect("a valid default address");
        let max_connections =
            raw.max_connections
                .as_ref()
                .map_or(file::DEFAULT_ADMIN_MAX_CONNECTIONS, |count| {
                    if *count.get_ref() == 0 {
                        self.report_at(count, "must be at least 1".into());
                    }
                    (*count.get_ref()).max(1)
                });
        AdminConfig {
            bind: raw.bind.map_or(default_bind, Spanned::into_inner),
            token,
            head_timeout: self.positive(
                raw.head_timeout.as_ref(),
                file::DEFAULT_HEAD_TIMEOUT,
                "head_timeout",
            ),
            max_connections,
        }
    }

    /// The listeners of a service that has certificates when `certificates`: TLS by default
    /// then, and a cleartext one may redirect to the first TLS one.
    fn listeners(
        &mut self,
        raw: Vec<Spanned<file::RawListener>>,
        certificates: bool,
    ) -> Vec<ListenerConfig> {
        let https_port = raw
            .iter()
            .find(|listener| listener.get_ref().tls.unwrap_or(certificates))
            .map(|listener| listener.get_ref().address.port());
        raw.iter()
            .map(|spanned| {
                let listener = spanned.get_ref();
                let tls = listener.tls.unwrap_or(certificates);
                if tls && !certificates {
                    self.report_at(
                        spanned,
                        "tls = true needs the service's certificates: add a [[service.tls]] table with cert and key".into(),
                    );
                }
                if listener.redirect_https && tls {
                    self.report_at(
                        spanned,
                        "redirect_https is for a cleartext listener (tls = false): this one already speaks HTTPS".into(),
                    );
                } else if listener.redirect_https && https_port.is_none() {
                    self.report_at(
                        spanned,
                        "redirect_https needs a TLS listener in this service to send clients to: add [[service.tls]] and a listener with TLS".into(),
                    );
                }
                let redirect_https = https_port.filter(|_| listener.redirect_https && !tls);
                ListenerConfig {
                    address: listener.address,
                    h2c: listener.h2c,
                    tls: tls && certificates,
                    redirect_https,
                }
            })
            .collect()
    }

    fn hash(&mut self, raw: RawAffinity) -> HashConfig {
        let key = match &raw.key {
            None => HashKey::SourceIp,
            Some(text) => self.hash_key(text),
        };
        let balance_factor = raw.balance_factor.as_ref().map(|factor| {
            let value = *factor.get_ref();
            if !(value > 1.0 && value.is_finite()) {
                self.report_at(factor, "balance_factor must be a number above 1.0, such as 1.25 (HAProxy hash-balance-factor 125)".into());
            }
            value
        });
        HashConfig {
            key,
            fallback: raw
                .fallback
                .as_ref()
                .map_or(Fallback::SourceIp, |f| *f.get_ref()),
            balance_factor,
        }
    }

    fn hash_key(&mut self, text: &Spanned<String>) -> HashKey {
        let value = text.get_ref();
        let hint = r#"write key = "source-ip", "header:NAME", "query:NAME" or "cookie:NAME""#;
        let key = match value.split_once(':') {
            None if value == "source-ip" => Some(HashKey::SourceIp),
            Some(("header", name)) => match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(name) if name == "x-forwarded-for" => Some(HashKey::ForwardedFor),
                Ok(name) if name == http::header::FORWARDED => Some(HashKey::Forwarded),
                Ok(name) => Some(HashKey::Header(name)),
                Err(_) => None,
            },
            Some(("query", name)) if !name.is_empty() && !name.contains(['&', '=', '#']) => {
                Some(HashKey::Query(name.to_string()))
            }
            Some(("cookie", name)) if !name.is_empty() && name.chars().all(is_token_char) => {
                Some(HashKey::Cookie(name.to_string()))
            }
            _ => None,
        };
        key.unwrap_or_else(|| {
            self.report_at(text, format!("invalid hash key {value:?}: {hint}"));
            HashKey::SourceIp
        })
    }

    /// A list of addresses and CIDR networks (`trusted_proxies`).
    fn networks(&mut self, list: &[Spanned<String>]) -> Vec<ipnet::IpNet> {
        let mut networks = Vec::with_capacity(list.len());
        for entry in list {
            match parse_network(entry.get_ref()) {
                Some(network) => networks.push(network),
                None => self.report_at(
                    entry,
                    format!(r#"{:?} is not an address or CIDR network: write e.g. "10.0.0.0/8", "192.0.2.7" or "2001:db8::/32""#, entry.get_ref()),
                ),
            }
        }
        networks
    }

    fn delimiter(&mut self, text: &Spanned<String>) -> char {
        let mut chars = text.get_ref().chars();
        match (chars.next(), chars.next()) {
            // A cookie-octet (RFC 6265 §4.1.1) that cannot occur in a backend id.
            (Some(c), None) if "!#$%&'()*+/:<>?@[]^`{|}~".contains(c) => c,
            _ => {
                self.report_at(
                    text,
                    r#"delimiter must be one of the characters !#$%&'()*+/:<>?@[]^`{|}~, such as "~""#.into(),
                );
                file::DEFAULT_PREFIX_DELIMITER
            }
        }
    }

    /// Names and ids travel in cookies and logs: letters, digits, `.`, `_`, `-` only.
    fn check_token(&mut self, value: &Spanned<String>, what: &str) {
        if let Some(problem) = token_problem(value.get_ref(), what) {
            self.report_at(value, problem);
        }
    }
}

/// What is wrong with `text` as a name or id (`what`: "backend name"), if anything: it must be
/// non-empty, of letters, digits, `.`, `_` and `-`, and at most [`file::MAX_ID_BYTES`] long.
pub(super) fn token_problem(text: &str, what: &str) -> Option<String> {
    if text.is_empty() || !text.chars().all(is_token_char) {
        Some(format!(
            "{what} {text:?} must be non-empty and use only letters, digits, '.', '_' and '-'"
        ))
    } else if text.len() > file::MAX_ID_BYTES {
        Some(format!(
            "{what} {text:?} is longer than {} bytes: shorten it",
            file::MAX_ID_BYTES
        ))
    } else {
        None
    }
}

/// What is wrong with `weight`, if anything: it must be 1 to [`file::MAX_WEIGHT`].
pub(super) fn weight_problem(weight: u32) -> Option<String> {
    (!(1..=file::MAX_WEIGHT).contains(&weight))
        .then(|| format!("weight must be from 1 to {}", file::MAX_WEIGHT))
}

/// How long loading a config waits for a backend host name's address from `[resolver]
/// nameservers.
const LOAD_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// `"200"` or `"200-399"`, within 100..=599.
fn parse_status_range(text: &str) -> Option<(u16, u16)> {
    let (low, high) = text.split_once('-').unwrap_or((text, text));
    let (low, high): (u16, u16) = (low.trim().parse().ok()?, high.trim().parse().ok()?);
    (100 <= low && low <= high && high <= 599).then_some((low, high))
}

/// `"10.0.0.0/8"`, or a bare address as a single-host network.
fn parse_network(text: &str) -> Option<ipnet::IpNet> {
    text.parse::<ipnet::IpNet>().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Where in the file `value` was written, if it was.
fn span_of<T>(value: &Option<Spanned<T>>) -> Option<Range<usize>> {
    value.as_ref().map(Spanned::span)
}
