//! `/api/docs` as a person sees it: Debian's headless Chromium opens the
//! page (installed by `make test`: scripts/install-chromium.sh), and the
//! rendered DOM must list the API's operations, with no request leaving
//! 127.0.0.1 (the browser's own network log says where it went).

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::helpers::spawn_app;

#[tokio::test]
async fn the_docs_page_renders_the_operations_from_this_origin_only() {
    let app = spawn_app().await;
    let chromium = which_chromium();
    let dir = std::env::temp_dir().join(test_support::unique("docs-browser"));
    std::fs::create_dir_all(&dir).expect("a profile directory");
    let net_log = dir.join("net-log.json");
    let url = app.url("/api/docs/");

    let mut command = Command::new(&chromium);
    command
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            // Chromium's own calls home (updates, sync, safe browsing):
            // not the page's, and refused by a closed network anyway.
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=15000",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(format!("--log-net-log={}", net_log.display()))
        .args(["--dump-dom", &url])
        // A file, not a pipe: the DOM is larger than a pipe holds, and a
        // full pipe would stall the browser while nothing reads it.
        .stdout(std::fs::File::create(dir.join("dom.html")).expect("the DOM's file"))
        .stderr(Stdio::null());
    tokio::task::spawn_blocking(move || run_bounded(command, Duration::from_secs(90)))
        .await
        .expect("the browser's thread");
    let dom = std::fs::read_to_string(dir.join("dom.html")).expect("the dumped DOM");

    // What a reader sees, without the page's own scripts.
    let shown = regex_lite::Regex::new(r"(?s)<script\b.*?</script>")
        .expect("regex")
        .replace_all(&dom, "");
    for operation in [
        "/api/orders",
        "/api/orders/{id}/cancel",
        "/api/auth/login",
        "/api/products/{id}",
    ] {
        assert!(
            shown.contains(&format!(">{operation}<")) || shown.contains(operation),
            "the rendered page lists {operation}:\n{shown}"
        );
    }
    assert!(
        shown.contains("opblock"),
        "Swagger UI rendered its operation blocks"
    );

    let requested = page_requests(&net_log);
    assert!(
        requested.iter().any(|u| u.ends_with("/api/openapi.json")),
        "the page fetched the document: {requested:?}"
    );
    let elsewhere: Vec<&String> = requested
        .iter()
        .filter(|u| !u.starts_with("http://127.0.0.1:"))
        .collect();
    assert!(
        elsewhere.is_empty(),
        "the page's requests left 127.0.0.1: {elsewhere:?}"
    );
    let paths: std::collections::BTreeSet<&str> = regex_lite::Regex::new(r#"data-path="([^"]+)""#)
        .expect("regex")
        .captures_iter(&shown)
        .filter_map(|c| c.get(1).map(|m| m.as_str()))
        .collect();
    eprintln!(
        "the page listed {} paths: {paths:?}; its requests: {requested:?}",
        paths.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The URLs the page's own code asked for, from Chromium's network log:
/// requests keyed to the page's site (network isolation key) and initiated
/// by an origin. The browser's own calls (network time, accounts, autofill's
/// form query about this page) have "initiator: not an origin", as has the
/// navigation the test itself made; they are not the page's.
fn page_requests(net_log: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(net_log).expect("the browser's network log");
    let log: serde_json::Value = serde_json::from_str(&text).expect("a complete network log");
    let start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
        .as_i64()
        .expect("the log names its event types");
    log["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"].as_i64() == Some(start_job))
        .filter(|e| {
            e["params"]["network_isolation_key"]
                .as_str()
                .is_some_and(|key| key.starts_with("http://127.0.0.1"))
                && e["params"]["initiator"].as_str() != Some("not an origin")
        })
        .filter_map(|e| e["params"]["url"].as_str().map(str::to_string))
        .collect()
}

fn which_chromium() -> String {
    let found = Command::new("sh")
        .args(["-c", "command -v chromium"])
        .output()
        .expect("sh");
    let path = String::from_utf8_lossy(&found.stdout).trim().to_string();
    assert!(
        !path.is_empty(),
        "chromium is not installed: `make test` installs it (scripts/install-chromium.sh)"
    );
    path
}

/// Runs `command` to its end; kills it past `limit`.
fn run_bounded(mut command: Command, limit: Duration) {
    let mut child = command.spawn().expect("chromium starts");
    let started = Instant::now();
    while child.try_wait().expect("waiting").is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("chromium was still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = child.wait().expect("chromium's exit");
    assert!(status.success(), "chromium exited with {status}");
}
