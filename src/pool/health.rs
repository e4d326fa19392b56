//! Active health checks: every `interval`, an HTTP `GET path` to each backend; `rise`
//! consecutive passes bring a down backend up, `fall` consecutive failures take an up backend
//! down (HAProxy's `check inter rise fall`). A pass is a response head within `timeout` with a
//! status in `expect`. Each transition is logged once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use prometheus_client::metrics::counter::Counter;

use super::Pool;
use crate::config::HealthConfig;

/// Checks `pool`'s backends until `stop` is cancelled. Returns at once when `config` has no
/// check path (passive ejection still applies).
/// Each flip is counted in `transitions` (per backend index).
pub async fn run(
    pool: Arc<Pool>,
    config: HealthConfig,
    transitions: Vec<Counter>,
    stop: CancellationToken,
) {
    let Some(path) = config.path.clone() else {
        // Without active checks every backend counts as up, also one a previous config's
        // checks had taken down (a reload keeps backend state).
        for index in 0..pool.backends().len() {
            pool.set_healthy(index, true);
        }
        return;
    };
    let backends = pool.backends().len();
    let (mut passes, mut failures) = (vec![0u32; backends], vec![0u32; backends]);
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let mut checks = tokio::task::JoinSet::new();
        for (index, backend) in pool.backends().iter().enumerate() {
            let (address, path) = (backend.address, path.clone());
            checks.spawn(async move {
                (
                    index,
                    check(address, &path, config.timeout, config.expect).await,
                )
            });
        }
        while let Some(Ok((index, verdict))) = checks.join_next().await {
            let backend = pool.get(index);
            match verdict {
                Ok(()) => {
                    passes[index] += 1;
                    failures[index] = 0;
                    if !backend.is_healthy()
                        && passes[index] >= config.rise
                        && pool.set_healthy(index, true)
                    {
                        tracing::info!(service = %pool.service(), backend = %backend.name, passes = passes[index], "backend up: health checks pass");
                        transitions[index].inc();
                    }
                }
                Err(reason) => {
                    failures[index] += 1;
                    passes[index] = 0;
                    if backend.is_healthy()
                        && failures[index] >= config.fall
                        && pool.set_healthy(index, false)
                    {
                        tracing::warn!(service = %pool.service(), backend = %backend.name, %reason, failures = failures[index], "backend down: health checks fail");
                        transitions[index].inc();
                    }
                }
            }
        }
    }
}

/// One check: `GET path` on a new connection, `Connection: close`.
async fn check(
    address: SocketAddr,
    path: &str,
    timeout: Duration,
    expect: (u16, u16),
) -> Result<(), String> {
    let attempt = async {
        let stream = TcpStream::connect(address)
            .await
            .map_err(|error| format!("connect: {error}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|error| format!("handshake: {error}"))?;
        tokio::spawn(connection);
        let request = Request::get(path)
            .header(header::HOST, address.to_string())
            .header(header::CONNECTION, "close")
            .header(
                header::USER_AGENT,
                concat!("stickyd-health/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|error| format!("request: {error}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| format!("request: {error}"))?;
        let status = response.status().as_u16();
        if (expect.0..=expect.1).contains(&status) {
            Ok(())
        } else {
            Err(format!(
                "status {status}, expected {}-{}",
                expect.0, expect.1
            ))
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}
