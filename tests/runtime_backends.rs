//! Backends added and removed at run time through the admin API (`POST` and `DELETE
//! /services/S/backends/B`), as HAProxy's `add server` / `del server`: an added backend takes
//! new sessions at once and lasts until the next reload; a removed one drains, keeps its
//! sessions, and is dropped once none is left (or at `drain_timeout`).

mod common;

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::Value;
use stickyd::config::Config;

use common::admin::Admin;
use common::{Browser, TestBackend, config, spawn_backends, within_timeout};

const INSERT: &str = "[service.affinity]\nstrategy = \"insert\"\n";

/// The names of service `web`'s backends in `/status`.
async fn backend_names(admin: &Admin) -> Vec<String> {
    let (_, status) = admin.json(Method::GET, "/status", "").await;
    status["services"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|backend| backend["name"].as_str().unwrap().to_string())
        .collect()
}

/// Waits until `/status` no longer lists `backend`, asking every 100 ms.
async fn until_dropped(admin: &Admin, backend: &str) {
    while backend_names(admin)
        .await
        .iter()
        .any(|name| name == backend)
    {
        // The removal is decided by stickyd's own clock; its result can only be asked for.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn text(backends: &[TestBackend], extra: &str) -> String {
    config(&backends.iter().collect::<Vec<_>>(), extra)
}

#[tokio::test]
async fn an_added_backend_takes_new_sessions_at_once_and_lasts_until_the_next_reload() {
    within_timeout(async {
        let backends = spawn_backends(3).await;
        let admin = Admin::start(&backends[..2], INSERT).await;
        let url = format!("{}/session/app", admin.proxy);
        let mut old = Browser::new();
        let bound = old.get(&url).await.backend().to_string();

        let body = format!(r#"{{"address": "{}", "weight": 2}}"#, backends[2].addr);
        let (status, added) = admin
            .json(Method::POST, "/services/web/backends/b3", &body)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{added}");
        assert_eq!(added["until"], "the next reload");
        assert_eq!(backend_names(&admin).await, ["b1", "b2", "b3"]);
        assert_eq!(admin.backend_status("b3").await["weight"], 2);

        // New sessions reach it by its weight (2 of every 4 round-robin turns); the old
        // session stays where it was.
        let mut reached = Vec::new();
        for _ in 0..8 {
            reached.push(Browser::new().get(&url).await.backend().to_string());
        }
        assert_eq!(
            reached.iter().filter(|name| *name == "b3").count(),
            4,
            "{reached:?}"
        );
        for _ in 0..3 {
            assert_eq!(old.get(&url).await.backend(), bound);
        }

        // A reload makes the file the truth again.
        admin
            .runtime
            .reload(Config::parse(&text(&backends[..2], INSERT), "<test>").unwrap())
            .await
            .unwrap();
        assert_eq!(backend_names(&admin).await, ["b1", "b2"]);
        assert_eq!(old.get(&url).await.backend(), bound);
        admin.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_removed_backend_drains_keeps_its_sessions_and_goes_once_they_end() {
    within_timeout(async {
        let backends = spawn_backends(2).await;
        // Sessions end 300 ms after their last request.
        let admin = Admin::start(&backends, &format!("session_idle = \"300ms\"\n{INSERT}")).await;
        let url = format!("{}/session/app", admin.proxy);
        let mut kept = Browser::new();
        assert_eq!(kept.get(&url).await.backend(), "b1");

        let (status, answer) = admin
            .json(Method::DELETE, "/services/web/backends/b1", "")
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
        let b1 = admin.backend_status("b1").await;
        assert_eq!(
            (&b1["state"], &b1["removing"]),
            (&"drain".into(), &true.into())
        );
        // Its session stays on it; new sessions go elsewhere.
        for _ in 0..3 {
            assert_eq!(kept.get(&url).await.backend(), "b1");
            assert_eq!(Browser::new().get(&url).await.backend(), "b2");
        }
        // Once the session has ended, the backend is dropped.
        until_dropped(&admin, "b1").await;
        assert_eq!(backend_names(&admin).await, ["b2"]);
        assert_eq!(kept.get(&url).await.backend(), "b2");
        admin.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_removed_backend_whose_sessions_go_on_is_dropped_at_its_drain_timeout() {
    within_timeout(async {
        let backends = spawn_backends(2).await;
        let admin = Admin::start(&backends, &format!("drain_timeout = \"1s\"\n{INSERT}")).await;
        let url = format!("{}/session/app", admin.proxy);
        let mut busy = Browser::new();
        assert_eq!(busy.get(&url).await.backend(), "b1");
        let (status, answer) = admin
            .json(Method::DELETE, "/services/web/backends/b1", "")
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(answer["drain_timeout_seconds"], 1.0);
        // The session keeps sending, so it never ends: the timeout drops the backend, and
        // the session is redispatched.
        let mut served_by = Vec::new();
        while served_by.last().is_none_or(|name| name == "b1") {
            served_by.push(busy.get(&url).await.backend().to_string());
            tokio::time::sleep(Duration::from_millis(100)).await; // a client's pace
        }
        assert_eq!(served_by.last().unwrap(), "b2");
        assert_eq!(backend_names(&admin).await, ["b2"]);
        admin.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_reload_cancels_a_pending_removal() {
    within_timeout(async {
        let backends = spawn_backends(2).await;
        let admin = Admin::start(&backends, INSERT).await;
        let url = format!("{}/session/app", admin.proxy);
        let mut kept = Browser::new();
        assert_eq!(kept.get(&url).await.backend(), "b1");
        admin
            .json(Method::DELETE, "/services/web/backends/b1", "")
            .await;
        admin
            .runtime
            .reload(Config::parse(&text(&backends, INSERT), "<test>").unwrap())
            .await
            .unwrap();
        let b1 = admin.backend_status("b1").await;
        assert_eq!(b1["removing"], false, "{b1}");
        admin.stop().await;
    })
    .await;
}

#[tokio::test]
async fn refused_changes_say_why_and_change_nothing() {
    within_timeout(async {
        let backends = spawn_backends(2).await;
        let admin = Admin::start(&backends, INSERT).await;
        let spare = &backends[1].addr;
        let cases: [(Method, &str, String, StatusCode, &str); 8] = [
            (
                Method::POST,
                "/services/web/backends/b1",
                format!(r#"{{"address": "{spare}"}}"#),
                StatusCode::CONFLICT,
                "backend name \"b1\" is already used",
            ),
            (
                Method::POST,
                "/services/web/backends/b9",
                format!(r#"{{"address": "{spare}", "id": "b2"}}"#),
                StatusCode::CONFLICT,
                "backend id \"b2\" is already used",
            ),
            (
                Method::POST,
                "/services/web/backends/b9",
                format!(r#"{{"address": "{spare}", "weight": 0}}"#),
                StatusCode::BAD_REQUEST,
                "weight must be from 1 to 1000",
            ),
            (
                Method::POST,
                "/services/web/backends/b%20x",
                format!(r#"{{"address": "{spare}"}}"#),
                StatusCode::BAD_REQUEST,
                "must be non-empty and use only letters",
            ),
            (
                Method::POST,
                "/services/web/backends/b9",
                r#"{"adress": "127.0.0.1:1"}"#.into(),
                StatusCode::BAD_REQUEST,
                "unknown field `adress`",
            ),
            (
                Method::POST,
                "/services/web/backends/b9",
                r#"{"address": "127.0.0.1"}"#.into(),
                StatusCode::BAD_REQUEST,
                "write IP:port or host:port",
            ),
            (
                Method::DELETE,
                "/services/web/backends/b9",
                String::new(),
                StatusCode::NOT_FOUND,
                "no backend named \"b9\"",
            ),
            (
                Method::GET,
                "/services/web/backends/b1",
                String::new(),
                StatusCode::METHOD_NOT_ALLOWED,
                "use POST",
            ),
        ];
        for (method, path, body, expected, says) in cases {
            let (status, answer) = admin.json(method.clone(), path, &body).await;
            let said = answer["error"].as_str().unwrap_or_default();
            assert_eq!(status, expected, "{method} {path} {body}: {answer}");
            assert!(said.contains(says), "{method} {path} {body}: {said}");
        }
        assert_eq!(backend_names(&admin).await, ["b1", "b2"]);

        // The last backend that is not already going stays.
        let (status, _) = admin
            .json(Method::DELETE, "/services/web/backends/b1", "")
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let (status, answer): (StatusCode, Value) = admin
            .json(Method::DELETE, "/services/web/backends/b2", "")
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{answer}");
        assert!(answer["error"].as_str().unwrap().contains("last backend"));
        assert_eq!(admin.backend_status("b2").await["state"], "ready");
        admin.stop().await;
    })
    .await;
}
