//! TLS listeners: SNI picks the certificate, ALPN offers HTTP/2, and HTTP/2 clients get the
//! same affinity as HTTP/1.1, with a Secure insert cookie and `X-Forwarded-Proto: https`.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use common::{proxy_over, spawn_backends, temp_file, within_timeout};

/// A self-signed certificate for `name`, written as PEM files; returns its `[[service.tls]]`
/// table and the certificate for the client's trust store.
fn certificate(name: &str) -> (String, CertificateDer<'static>) {
    let generated = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    let (cert, key) = (
        temp_file(&format!("{name}.crt")),
        temp_file(&format!("{name}.key")),
    );
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let table = format!(
        "[[service.tls]]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    (table, generated.cert.der().clone())
}

async fn connect(
    address: std::net::SocketAddr,
    name: &str,
    trusted: &[CertificateDer<'static>],
    alpn: &[u8],
) -> TlsStream<TcpStream> {
    let mut roots = RootCertStore::empty();
    for certificate in trusted {
        roots.add(certificate.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(address).await.unwrap();
    let name = ServerName::try_from(name.to_string()).unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the certificate for this name")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_http1_gets_a_secure_cookie_and_https_proto() {
    within_timeout(async {
        let (a, a_cert) = certificate("a.test");
        let (b, b_cert) = certificate("b.test");
        let backends = spawn_backends(2).await;
        let proxy = proxy_over(
            &backends,
            &format!("{a}{b}[service.affinity]\nstrategy = \"insert\"\n"),
        )
        .await;
        for name in ["a.test", "b.test"] {
            // The client trusts both and checks the name: the handshake proves SNI chose right.
            let stream = connect(
                proxy.addr,
                name,
                &[a_cert.clone(), b_cert.clone()],
                b"http/1.1",
            )
            .await;
            assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            let request = Request::get("/")
                .header("host", name)
                .body(Empty::<Bytes>::new())
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            assert_eq!(response.status(), 200);
            let cookie = response.headers()["set-cookie"]
                .to_str()
                .unwrap()
                .to_string();
            assert!(
                cookie.contains("; Secure"),
                "on TLS the insert cookie defaults to Secure: {cookie}"
            );
        }
        let seen = backends
            .iter()
            .flat_map(|backend| backend.seen())
            .next()
            .unwrap();
        assert_eq!(seen.headers["x-forwarded-proto"], "https");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_gets_the_same_affinity() {
    within_timeout(async {
        let (a, a_cert) = certificate("h2.test");
        let backends = spawn_backends(3).await;
        let proxy = proxy_over(
            &backends,
            &format!("{a}[service.affinity]\nstrategy = \"insert\"\n"),
        )
        .await;
        let stream = connect(proxy.addr, "h2.test", &[a_cert], b"h2").await;
        assert_eq!(
            stream.get_ref().1.alpn_protocol(),
            Some(&b"h2"[..]),
            "ALPN must offer h2"
        );
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        let get = |cookie: Option<String>| {
            let mut request = Request::get("https://h2.test/");
            if let Some(cookie) = cookie {
                request = request.header("cookie", cookie);
            }
            request.body(Empty::<Bytes>::new()).unwrap()
        };
        let first = sender.send_request(get(None)).await.unwrap();
        assert_eq!(first.status(), 200);
        let bound = first.headers()["x-backend"].to_str().unwrap().to_string();
        let cookie = first.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        for _ in 0..10 {
            let response = sender
                .send_request(get(Some(cookie.clone())))
                .await
                .unwrap();
            assert_eq!(
                response.headers()["x-backend"],
                bound.as_str(),
                "an HTTP/2 session left its backend"
            );
            response.into_body().collect().await.unwrap();
        }
        let mut spread = std::collections::HashSet::new();
        for _ in 0..3 {
            spread.insert(
                sender.send_request(get(None)).await.unwrap().headers()["x-backend"]
                    .to_str()
                    .unwrap()
                    .to_string(),
            );
        }
        assert!(
            spread.len() > 1,
            "new HTTP/2 sessions all went to {spread:?}"
        );
        let seen = backends
            .iter()
            .find(|backend| backend.name == bound)
            .unwrap()
            .seen();
        assert_eq!(
            seen.last().unwrap().headers["host"],
            "h2.test",
            "the :authority becomes Host for the HTTP/1.1 backend"
        );
    })
    .await;
}

/// The `Set-Cookie` of a request through `listener` (a TLS one when `tls` has the name and
/// certificate to trust).
async fn insert_cookie(
    listener: std::net::SocketAddr,
    tls: Option<(&str, &CertificateDer<'static>)>,
) -> String {
    let reply = match tls {
        Some((name, cert)) => {
            let stream = connect(listener, name, std::slice::from_ref(cert), b"http/1.1").await;
            common::raw::RawConn::over(stream).get("/").await
        }
        None => common::raw::RawConn::open(listener).await.get("/").await,
    };
    assert_eq!(reply.status, 200);
    reply.header("set-cookie").expect("an insert cookie").into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_service_listens_with_and_without_tls_and_redirects_to_https() {
    within_timeout(async {
        let (table, cert) = certificate("mixed.test");
        let backends = spawn_backends(1).await;
        let text = format!(
            "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\", {{ address = \"127.0.0.1:0\", tls = false }}, {{ address = \"127.0.0.1:0\", tls = false, redirect_https = true }}]\n{table}[service.affinity]\nstrategy = \"insert\"\n[[service.backend]]\nname = \"b1\"\naddress = \"{}\"\n",
            backends[0].addr
        );
        let config = stickyd::config::Config::parse(&text, "<test>").unwrap();
        let listeners = stickyd::server::bind(&config).await.unwrap();
        let addresses: Vec<std::net::SocketAddr> = listeners
            .iter()
            .map(|listener| listener.local_addr().unwrap())
            .collect();
        let runtime = stickyd::runtime::Services::start(config, listeners);

        let stream = connect(addresses[0], "mixed.test", std::slice::from_ref(&cert), b"http/1.1").await;
        let mut tls = common::raw::RawConn::over(stream);
        assert_eq!(tls.get("/over-tls").await.status, 200, "the TLS listener");

        let mut plain = common::raw::RawConn::open(addresses[1]).await;
        let reply = plain.get("/in-clear").await;
        assert_eq!(reply.status, 200, "the cleartext listener proxies");
        assert_eq!(reply.backend(), "b1");

        let mut redirecting = common::raw::RawConn::open(addresses[2]).await;
        redirecting
            .send(b"POST /cart?item=7 HTTP/1.1\r\nHost: shop.example:8080\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        let reply = redirecting.response().await;
        assert_eq!(reply.status, 308, "a redirect that keeps the method");
        assert_eq!(
            reply.header("location"),
            Some(format!("https://shop.example:{}/cart?item=7", addresses[0].port()).as_str())
        );
        assert_eq!(reply.backend(), "", "a redirect never reaches a backend");

        // Cleartext clients proxied here would never send a Secure cookie back, so the insert
        // cookie is not Secure by default, on either listener.
        for (listener, tls) in [(addresses[0], Some(("mixed.test", &cert))), (addresses[1], None)] {
            let cookie = insert_cookie(listener, tls).await;
            assert!(!cookie.contains("Secure"), "{cookie}");
        }
        runtime.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beside_a_cleartext_listener_that_only_redirects_the_insert_cookie_stays_secure() {
    within_timeout(async {
        let (table, cert) = certificate("redirecting.test");
        let backends = spawn_backends(1).await;
        let text = format!(
            "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\", {{ address = \"127.0.0.1:0\", tls = false, redirect_https = true }}]\n{table}[service.affinity]\nstrategy = \"insert\"\n[[service.backend]]\nname = \"b1\"\naddress = \"{}\"\n",
            backends[0].addr
        );
        let config = stickyd::config::Config::parse(&text, "<test>").unwrap();
        let listeners = stickyd::server::bind(&config).await.unwrap();
        let https = listeners[0].local_addr().unwrap();
        let runtime = stickyd::runtime::Services::start(config, listeners);
        let cookie = insert_cookie(https, Some(("redirecting.test", &cert))).await;
        assert!(cookie.contains("; Secure"), "{cookie}");
        runtime.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_key_of_another_certificate_is_named_as_such() {
    let (first, _) = certificate("first.example");
    let (second, _) = certificate("second.example");
    let cert_line = |table: &str| table.lines().nth(1).unwrap().to_string();
    let key_line = |table: &str| table.lines().nth(2).unwrap().to_string();
    let text = format!(
        "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\n[[service.tls]]\n{}\n{}\n[[service.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n",
        cert_line(&first),
        key_line(&second)
    );
    let error = stickyd::config::Config::parse(&text, "<test>")
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("<test>:5:8: the private key ")
            && error.contains("second.example.key does not belong to the certificate")
            && error.contains("first.example.crt"),
        "{error}"
    );
}

#[tokio::test]
async fn a_missing_certificate_file_fails_the_config_at_its_line() {
    let text = "[[service]]\nname = \"web\"\nlisten = [\"127.0.0.1:0\"]\n[[service.tls]]\ncert = \"/nonexistent.crt\"\nkey = \"/nonexistent.key\"\n[[service.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n";
    let error = stickyd::config::Config::parse(text, "<test>")
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("<test>:5:8: cannot read certificate file /nonexistent.crt"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_renewed_certificate_files_to_new_connections() {
    within_timeout(async {
        let backends = spawn_backends(1).await;
        let (table, old) = certificate("renew.test");
        let text = common::config(&[&backends[0]], &table);
        let config = stickyd::config::Config::parse(&text, "<test>").unwrap();
        let listeners = stickyd::server::bind(&config).await.unwrap();
        let address = listeners[0].local_addr().unwrap();
        let runtime = stickyd::runtime::Services::start(config, listeners);
        drop(connect(address, "renew.test", &[old], b"http/1.1").await);
        // Renew: new files at the same paths, then the reload SIGHUP would do.
        let (_, renewed) = certificate("renew.test");
        runtime
            .reload(stickyd::config::Config::parse(&text, "<test>").unwrap())
            .await
            .unwrap();
        let stream = connect(address, "renew.test", &[renewed], b"http/1.1").await;
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        runtime.shutdown().await;
    })
    .await;
}
