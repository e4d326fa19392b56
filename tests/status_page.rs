//! The live status page on the admin listener's `/`, driven in a real headless Chromium
//! (Debian's `chromium` and `chromium-driver`, through WebDriver with fantoccini): what it
//! shows is what `/status` says, and its buttons change a backend's state.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};
use http::Method;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use common::admin::{Admin, TOKEN};
use common::{Browser, require_program, spawn_backends};

/// Chromium's start, a page load and a few polls of the page fit well inside this.
const BROWSER_TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Headless Chromium under chromedriver, with a profile of its own that is removed at the end.
struct Chromium {
    driver: Child,
    client: Client,
    profile: PathBuf,
}

impl Chromium {
    async fn start() -> Chromium {
        let mut driver = Command::new("chromedriver")
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let mut lines = BufReader::new(driver.stdout.take().unwrap()).lines();
        let port = loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("chromedriver says which port it listens on");
            if let Some(rest) = line.split("started successfully on port ").nth(1) {
                break rest.trim_end_matches('.').parse::<u16>().unwrap();
            }
        };
        let profile = std::env::temp_dir().join(format!(
            "stickyd-test-chromium-{}-{port}",
            std::process::id()
        ));
        // The flags of a machine with no outside network: without the background-networking
        // ones Chromium keeps trying to reach Google's hosts.
        let capabilities: Capabilities = serde_json::from_value(json!({
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1500,760",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }
        }))
        .unwrap();
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session through chromedriver");
        Chromium {
            driver,
            client,
            profile,
        }
    }

    /// The text of the `data-field` `name` in backend `backend`'s row (or the service's
    /// totals when `backend` is `None`) of service `service`.
    async fn field(&self, service: &str, backend: Option<&str>, name: &str) -> String {
        let row = backend.map_or(String::new(), |backend| {
            format!(" [data-backend=\"{backend}\"]")
        });
        let css = format!("[data-service=\"{service}\"]{row} [data-field=\"{name}\"]");
        self.client
            .find(Locator::Css(&css))
            .await
            .unwrap_or_else(|error| panic!("{css}: {error}"))
            .text()
            .await
            .unwrap()
    }

    /// Clicks the element `css` selects.
    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|error| panic!("{css}: {error}"))
            .click()
            .await
            .unwrap();
    }

    /// How many times the page has read `/status` so far.
    async fn polls(&self) -> u64 {
        let value = self
            .client
            .execute("return document.body.dataset.polls || '0';", vec![])
            .await
            .unwrap();
        value.as_str().unwrap().parse().unwrap()
    }

    /// Waits until the page has read `/status` twice more, so its last read started after
    /// whatever the test did before calling this.
    async fn two_more_polls(&self) {
        let start = self.polls().await;
        while self.polls().await < start + 2 {
            // The page is in another process: its progress can only be asked for.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `field` of backend `backend` reads `expected`.
    async fn wait_for_field(&self, service: &str, backend: &str, name: &str, expected: &str) {
        while self.field(service, Some(backend), name).await != expected {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(mut self) {
        let _ = self.client.close().await;
        let _ = self.driver.kill().await;
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn total(responses: &Value) -> u64 {
    responses
        .as_object()
        .unwrap()
        .values()
        .map(|count| count.as_u64().unwrap())
        .sum()
}

/// Asserts that every number and state the page shows for service `web` is what `status`
/// (a `/status` answer) says.
async fn assert_page_matches(chromium: &Chromium, status: &Value) {
    let service = &status["services"][0];
    assert_eq!(service["name"], "web");
    let shown = |name: &'static str| chromium.field("web", None, name);
    assert_eq!(
        shown("requests").await,
        total(&service["responses"]).to_string()
    );
    assert_eq!(shown("5xx").await, service["responses"]["5xx"].to_string());
    assert_eq!(
        shown("open_connections").await,
        service["open_connections"].to_string()
    );
    assert_eq!(
        shown("open_tunnels").await,
        service["open_tunnels"].to_string()
    );
    assert_eq!(shown("strategy").await, "insert");
    for outcome in ["hit", "new", "redispatch", "invalid", "rebalance"] {
        assert_eq!(
            chromium
                .field("web", None, &format!("affinity-{outcome}"))
                .await,
            service["affinity"][outcome].to_string(),
            "affinity outcome {outcome}"
        );
    }
    for backend in service["backends"].as_array().unwrap() {
        let name = backend["name"].as_str().unwrap();
        let shown = |field: &'static str| chromium.field("web", Some(name), field);
        let expected = [
            ("state", backend["state"].as_str().unwrap().to_string()),
            ("health", backend["health"].as_str().unwrap().to_string()),
            ("sessions", backend["sessions"].to_string()),
            ("in_flight", backend["in_flight"].to_string()),
            ("requests", total(&backend["responses"]).to_string()),
            ("5xx", backend["responses"]["5xx"].to_string()),
            ("address", backend["address"].as_str().unwrap().to_string()),
        ];
        for (field, value) in expected {
            assert_eq!(shown(field).await, value, "{field} of backend {name}");
        }
    }
}

#[tokio::test]
async fn the_status_page_shows_what_status_says_and_its_drain_button_drains() {
    if !require_program("chromium") || !require_program("chromedriver") {
        return;
    }
    tokio::time::timeout(BROWSER_TEST_TIMEOUT, async {
        let backends = spawn_backends(3).await;
        let admin = Admin::start(&backends, "[service.affinity]\nstrategy = \"insert\"\n").await;
        let url = format!("{}/", admin.proxy);
        // Two sessions, each with the app's own session cookie, as a real app would set it;
        // a few requests each, and one answered 500 by its backend.
        let mut sessions = Vec::new();
        for n in 0..2 {
            let mut browser = Browser::new();
            browser.jar.insert("app_session".into(), format!("s{n}"));
            for _ in 0..3 {
                browser.get(&url).await;
            }
            sessions.push(browser);
        }
        let bound = sessions[0].get(&url).await.backend().to_string();
        let failing = backends
            .iter()
            .find(|backend| backend.name == bound)
            .unwrap();
        failing.set_failing(true);
        sessions[0].get(&url).await;
        failing.set_failing(false);
        let (_, status) = admin.json(Method::GET, "/status", "").await;
        let idle = status["services"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|backend| backend["sessions"] == 0)
            .expect("three backends, two sessions")["name"]
            .as_str()
            .unwrap()
            .to_string();

        let chromium = Chromium::start().await;
        chromium
            .client
            .goto(&format!("{}/", admin.admin))
            .await
            .unwrap();
        // The page itself needs no token; what it shows does.
        let problem = chromium
            .client
            .wait()
            .for_element(Locator::Css("#problem:not([hidden])"))
            .await
            .unwrap();
        assert!(problem.text().await.unwrap().contains("token"));
        chromium
            .client
            .find(Locator::Id("token"))
            .await
            .unwrap()
            .send_keys(TOKEN)
            .await
            .unwrap();
        chromium.click("#token-use").await;
        chromium
            .client
            .wait()
            .for_element(Locator::Css("[data-service=\"web\"] [data-backend=\"b1\"]"))
            .await
            .unwrap();
        chromium.two_more_polls().await;
        let (_, status) = admin.json(Method::GET, "/status", "").await;
        assert_eq!(status["services"][0]["responses"]["5xx"], 1);
        assert_page_matches(&chromium, &status).await;

        // The drain button of the backend with a live session: the backend drains, and the page
        // says how many sessions are still on it rather than "safe to remove".
        let drain = format!("[data-backend=\"{bound}\"] button[data-state=\"drain\"]");
        chromium.click(&drain).await;
        chromium
            .wait_for_field("web", &bound, "state", "drain")
            .await;
        assert_eq!(admin.backend_status(&bound).await["state"], "drain");
        let trend = chromium.field("web", Some(&bound), "drain").await;
        assert!(trend.contains("1 live"), "{trend}");
        // A drained backend with no session is safe to remove, and the page says so.
        let drain_idle = format!("[data-backend=\"{idle}\"] button[data-state=\"drain\"]");
        chromium.click(&drain_idle).await;
        chromium
            .wait_for_field("web", &idle, "drain", "safe to remove")
            .await;
        assert_eq!(admin.backend_status(&idle).await["state"], "drain");
        chromium.two_more_polls().await;
        let (_, status) = admin.json(Method::GET, "/status", "").await;
        assert_page_matches(&chromium, &status).await;

        let screenshot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
        std::fs::write(&screenshot, chromium.client.screenshot().await.unwrap()).unwrap();
        println!("status page screenshot: {}", screenshot.display());

        // And back: the ready button puts the backend back in the rotation.
        let ready = format!("[data-backend=\"{bound}\"] button[data-state=\"ready\"]");
        chromium.click(&ready).await;
        chromium
            .wait_for_field("web", &bound, "state", "ready")
            .await;
        assert_eq!(admin.backend_status(&bound).await["state"], "ready");
        chromium.stop().await;
        admin.stop().await;
    })
    .await
    .expect("the status page test finished in time");
}
