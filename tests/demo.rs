//! `stickyd demo`, the first command README.md gives a newcomer, run as the real binary and
//! checked the way README tells a person to check it: `curl -c jar -b jar` sticks to one
//! backend whose view count goes up, new sessions spread round-robin, the status page and
//! `/status` answer on the admin address the demo printed, and Ctrl-C stops it cleanly.

mod common;

use std::path::Path;
use std::process::Stdio;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};

use common::{require_program, temp_file, within_timeout};

/// The demo's URLs, as its banner prints them: the proxy, then the status page.
async fn printed_urls(lines: &mut Lines<BufReader<ChildStdout>>) -> (String, String) {
    let mut proxy = None;
    while let Some(line) = lines.next_line().await.unwrap() {
        if let Some(rest) = line.split(" behind ").nth(1) {
            proxy = rest.split_whitespace().next().map(str::to_string);
        }
        // The line under "The live status page ...".
        if line.trim_start().starts_with("http://") {
            let proxy = proxy.expect("the proxy URL is printed before the status page's");
            return (proxy, line.trim().to_string());
        }
    }
    panic!("stickyd demo exited before printing its URLs");
}

/// `curl -s [-c jar -b jar] url`, as README runs it; returns the body.
async fn curl(url: &str, jar: Option<&Path>) -> String {
    let mut command = Command::new("curl");
    command.arg("-sS").arg("--max-time").arg("10");
    if let Some(jar) = jar {
        command.arg("-c").arg(jar).arg("-b").arg(jar);
    }
    let output = command.arg(url).output().await.expect("run curl");
    assert!(
        output.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// `demo-2: session 1546f3c55aefcd82, view 3` as (backend, session, view).
fn parse_answer(body: &str) -> (String, String, u64) {
    let (backend, rest) = body.trim().split_once(": session ").expect(body);
    let (session, view) = rest.split_once(", view ").expect(body);
    (backend.into(), session.into(), view.parse().expect(body))
}

#[tokio::test]
async fn the_demo_sticks_a_curl_jar_to_one_backend_and_shows_it_on_the_status_page() {
    if !require_program("curl") {
        return;
    }
    within_timeout(async {
        let mut demo = Command::new(env!("CARGO_BIN_EXE_stickyd"))
            .args(["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start stickyd demo");
        let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
        let (proxy, status_page) = printed_urls(&mut lines).await;

        // One session in a cookie jar: one backend, one session id, views 1, 2, 3, 4.
        let jar = temp_file("demo-jar");
        let _ = std::fs::remove_file(&jar);
        let mut answers = Vec::new();
        for _ in 0..4 {
            answers.push(parse_answer(&curl(&proxy, Some(&jar)).await));
        }
        let (backend, session, _) = answers[0].clone();
        let views: Vec<u64> = answers.iter().map(|(_, _, view)| *view).collect();
        assert_eq!(views, [1, 2, 3, 4], "{answers:?}");
        assert!(
            answers
                .iter()
                .all(|(b, s, _)| *b == backend && *s == session),
            "{answers:?}"
        );
        let jar_text = std::fs::read_to_string(&jar).unwrap();
        assert!(jar_text.contains("SERVERID"), "{jar_text}");
        std::fs::remove_file(&jar).unwrap();

        // New sessions (no jar) go round the three backends.
        let mut fresh = Vec::new();
        for _ in 0..3 {
            fresh.push(parse_answer(&curl(&proxy, None).await).0);
        }
        fresh.sort();
        assert_eq!(fresh, ["demo-1", "demo-2", "demo-3"]);

        // The status page and the numbers it reads, on the printed admin address.
        let html = curl(&status_page, None).await;
        assert!(html.contains("<title>stickyd status</title>"), "{html}");
        let status: Value =
            serde_json::from_str(&curl(&format!("{status_page}status"), None).await)
                .expect("/status is JSON");
        let service = &status["services"][0];
        assert_eq!(service["name"], "demo");
        assert_eq!(service["responses"]["2xx"], 7, "{service}");
        let sessions: u64 = service["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| entry["sessions"].as_u64().unwrap())
            .sum();
        assert_eq!(
            sessions, 4,
            "the jar's session and three new ones: {service}"
        );

        // Ctrl-C, as the banner says.
        let pid = demo.id().unwrap().to_string();
        let sent = Command::new("kill").args(["-INT", &pid]).status().await;
        assert!(sent.unwrap().success());
        let exit = demo.wait().await.unwrap();
        assert!(exit.success(), "stickyd demo exited with {exit}");
    })
    .await;
}
