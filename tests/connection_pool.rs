//! Pooled backend connections: idle ones close on time without any further request.

mod common;

use std::time::{Duration, Instant};

use common::{Browser, TestBackend, config, start_proxy, within_timeout};
use stickyd::proxy::connections::{POOLED_IDLE_TIMEOUT, REAP_SLACK};

/// How late past [`POOLED_IDLE_TIMEOUT`] and [`REAP_SLACK`] an idle connection may close.
const MARGIN: Duration = Duration::from_millis(500);

#[tokio::test]
async fn idle_backend_connections_close_on_time_without_any_further_request() {
    within_timeout(async {
        let backend = TestBackend::spawn("b1").await;
        let proxy = start_proxy(&config(&[&backend], "")).await;
        let url = proxy.url("/");
        // A burst of concurrent keep-alive requests leaves several connections pooled.
        let burst: Vec<_> = (0..16)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { Browser::new().get(&url).await.status })
            })
            .collect();
        for request in burst {
            assert_eq!(request.await.unwrap(), 200);
        }
        let last_response = Instant::now();
        let pooled = backend.open_connections();
        assert!(pooled > 0, "no connection was kept alive");

        let limit = POOLED_IDLE_TIMEOUT + REAP_SLACK + MARGIN;
        tokio::time::timeout(limit, backend.wait_open_connections(|&open| open == 0))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} of {pooled} idle connections still open {limit:?} after the last response",
                    backend.open_connections()
                )
            });
        let closed_after = last_response.elapsed();
        println!("{pooled} idle connections closed {closed_after:?} after the last response");
        assert!(
            closed_after >= POOLED_IDLE_TIMEOUT - Duration::from_millis(100),
            "idle connections closed after {closed_after:?}, before {POOLED_IDLE_TIMEOUT:?}"
        );
    })
    .await;
}
