//! `stickyd demo`: three demo backends in this process behind stickyd (127.0.0.1:8080 unless
//! `--listen` says otherwise) with insert affinity, so a newcomer sees stickiness with curl and
//! nothing to set up, and the admin listener with its live status page (127.0.0.1:9901 unless
//! `--admin` says otherwise).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, SET_COOKIE};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::admin;
use crate::affinity::cookies;
use crate::config::Config;
use crate::runtime::Services;
use crate::server::{self, ServerError};

/// Where the demo proxy listens unless `stickyd demo --listen` says otherwise.
pub const DEMO_LISTEN: &str = "127.0.0.1:8080";
/// Where the demo's admin listener (and its status page) listens unless `stickyd demo
/// --admin` says otherwise: the default `[admin]` bind.
pub const DEMO_ADMIN: &str = crate::config::file::DEFAULT_ADMIN_BIND;
/// The session cookie the demo backends set, as an app would.
pub const DEMO_SESSION_COOKIE: &str = "demo_session";

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A demo backend could not listen on loopback.
    #[error("cannot start a demo backend: {0}")]
    Backend(#[from] std::io::Error),
    /// The proxy could not listen on its address.
    #[error(
        "the demo proxy cannot listen (choose another address with \
         `stickyd demo --listen 127.0.0.1:PORT`)"
    )]
    Proxy(#[from] ServerError),
    /// The admin listener could not listen on its address.
    #[error(
        "cannot listen on {0} for the status page (choose another address with \
         `stickyd demo --admin 127.0.0.1:PORT`)"
    )]
    Admin(SocketAddr, #[source] std::io::Error),
}

/// Runs the demo until `shutdown` completes: the proxy on `listen`, the admin listener and
/// its status page on `admin`. Port 0 takes a free port; the addresses printed are the ones
/// bound.
///
/// # Errors
/// [`DemoError`] when a backend, the proxy or the admin listener cannot listen (port 8080 or
/// 9901 taken, for one).
pub async fn run(
    listen: SocketAddr,
    admin: SocketAddr,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DemoError> {
    let mut backends = String::new();
    for n in 1..=3 {
        let name = format!("demo-{n}");
        let address = spawn_backend(name.clone()).await?;
        backends.push_str(&format!(
            "[[service.backend]]\nname = \"{name}\"\naddress = \"{address}\"\n"
        ));
    }
    let text = format!(
        "[[service]]\nname = \"demo\"\nlisten = [\"{listen}\"]\n\
         [service.affinity]\nstrategy = \"insert\"\ncookie = \"SERVERID\"\n{backends}\
         [admin]\nbind = \"{admin}\"\n"
    );
    let config = Config::parse(&text, "<demo>").expect("the demo config is valid");
    let listeners = server::bind(&config).await?;
    let proxy = listeners[0]
        .local_addr()
        .expect("a bound listener has an address");
    let mut admin_config = config.admin.clone().expect("the demo config has [admin]");
    let admin_listener = TcpListener::bind(admin)
        .await
        .map_err(|error| DemoError::Admin(admin, error))?;
    admin_config.bind = admin_listener
        .local_addr()
        .map_err(|error| DemoError::Admin(admin, error))?;
    let admin = admin_config.bind;
    println!(
        "stickyd demo: three backends (demo-1, demo-2, demo-3) behind http://{proxy}/ with insert affinity.\n\
         \n\
         One session, kept in a cookie jar, sticks to one backend and its view count goes up:\n\
         \x20 curl -c jar -b jar http://{proxy}/   (run it a few times)\n\
         \x20 cat jar                                    (SERVERID names the backend)\n\
         New sessions (no jar) spread over the backends round-robin:\n\
         \x20 curl http://{proxy}/\n\
         The live status page, where a backend can be drained and its sessions watched:\n\
         \x20 http://{admin}/\n\
         \n\
         Ctrl-C stops the demo."
    );
    let services = Services::start(config, listeners);
    let (_settings, settings) = watch::channel(admin_config);
    let stop = CancellationToken::new();
    tokio::spawn(admin::serve(
        admin_listener,
        Arc::clone(&services),
        settings,
        stop.clone(),
    ));
    shutdown.await;
    stop.cancel();
    services.shutdown().await;
    Ok(())
}

/// Starts one demo backend on a free loopback port and returns its address.
async fn spawn_backend(name: String) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let app = Arc::new(DemoApp {
        name,
        views: Mutex::new(HashMap::new()),
    });
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let app = Arc::clone(&app);
            let service = service_fn(move |request| {
                let app = Arc::clone(&app);
                async move { Ok::<_, Infallible>(app.answer(&request)) }
            });
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    Ok(address)
}

/// A demo backend: a session cookie of its own and a view count per session.
struct DemoApp {
    name: String,
    views: Mutex<HashMap<String, u64>>,
}

impl DemoApp {
    fn answer(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        let known = cookies::find(request.headers(), DEMO_SESSION_COOKIE)
            .and_then(|value| std::str::from_utf8(value).ok())
            .map(str::to_string);
        let is_new = known.is_none();
        let session = known.unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
        let views = {
            let mut views = self.views.lock().expect("demo view counts lock poisoned");
            let count = views.entry(session.clone()).or_insert(0);
            *count += 1;
            *count
        };
        let body = format!("{}: session {session}, view {views}\n", self.name);
        let mut response = Response::new(Full::new(Bytes::from(body)));
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if is_new {
            let cookie = format!("{DEMO_SESSION_COOKIE}={session}; Path=/; HttpOnly");
            headers.insert(
                SET_COOKIE,
                HeaderValue::from_str(&cookie).expect("hex session id"),
            );
        }
        response
    }
}
