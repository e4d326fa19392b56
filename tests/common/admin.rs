//! stickyd with its admin listener, both in process, and an admin client with the token.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use stickyd::config::Config;
use stickyd::runtime::Services;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{TestBackend, config};

/// The admin token of [`Admin::start`].
pub const TOKEN: &str = "s3cret-token";

/// stickyd with its admin listener, both in process.
pub struct Admin {
    pub runtime: Arc<Services>,
    pub proxy: String,
    pub admin: String,
    pub stop: CancellationToken,
    /// The admin listener's settings, as a reload would send them.
    pub settings: tokio::sync::watch::Sender<stickyd::config::AdminConfig>,
}

impl Admin {
    pub async fn start(backends: &[TestBackend], extra: &str) -> Admin {
        Admin::start_on(&config(&backends.iter().collect::<Vec<_>>(), extra)).await
    }

    /// stickyd on the config `text` (its first service listening on `127.0.0.1:0`), with its
    /// admin listener.
    pub async fn start_on(text: &str) -> Admin {
        let config = Config::parse(text, "<test>").unwrap_or_else(|error| panic!("{error}"));
        let listeners = stickyd::server::bind(&config).await.unwrap();
        let proxy = format!("http://{}", listeners[0].local_addr().unwrap());
        let runtime = Services::start(config, listeners);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let admin_config = stickyd::config::AdminConfig {
            bind: listener.local_addr().unwrap(),
            token: Some(TOKEN.into()),
            head_timeout: std::time::Duration::from_millis(400),
            max_connections: 2,
        };
        let (settings, receiver) = tokio::sync::watch::channel(admin_config);
        tokio::spawn(stickyd::admin::serve(
            listener,
            Arc::clone(&runtime),
            receiver,
            stop.clone(),
        ));
        Admin {
            runtime,
            proxy,
            admin,
            stop,
            settings,
        }
    }

    /// Sends an admin request with the token; returns status and body text.
    pub async fn call(&self, method: Method, path: &str, body: &str) -> (StatusCode, String) {
        self.call_with(method, path, body, Some(TOKEN)).await
    }

    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        body: &str,
        token: Option<&str>,
    ) -> (StatusCode, String) {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.admin));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = client
            .request(
                request
                    .body(Full::new(Bytes::from(body.to_string())))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status();
        let text = String::from_utf8(
            response
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap();
        (status, text)
    }

    /// `GET path` without the token: status, headers and body text.
    pub async fn get_untokened(&self, path: &str) -> (StatusCode, http::HeaderMap, String) {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let response = client
            .get(format!("{}{path}", self.admin).parse().unwrap())
            .await
            .unwrap();
        let (head, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            head.status,
            head.headers,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    pub async fn json(&self, method: Method, path: &str, body: &str) -> (StatusCode, Value) {
        let (status, text) = self.call(method, path, body).await;
        (
            status,
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
        )
    }

    pub async fn backend_status(&self, backend: &str) -> Value {
        let (_, status) = self.json(Method::GET, "/status", "").await;
        let backends = status["services"][0]["backends"]
            .as_array()
            .unwrap()
            .clone();
        backends
            .into_iter()
            .find(|entry| entry["name"] == backend)
            .unwrap()
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.runtime.shutdown().await;
    }
}
