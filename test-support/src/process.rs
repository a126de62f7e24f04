//! The real service binaries as child processes: started against the local
//! stack, stopped by PID the way an orchestrator does.

use std::{
    net::TcpListener,
    process::{ExitStatus, Stdio},
    time::Duration,
};

use tokio::process::{Child, Command};

/// A port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The environment both binaries need to run against the local stack, on
/// `database` and `queue`, listening on `port`.
pub fn service_env(database: &str, queue: &str, port: u16) -> Vec<(String, String)> {
    [
        ("APP_ENV", "development".to_string()),
        ("JWT_SECRET", crate::apps::JWT_SECRET.to_string()),
        ("API_HOST", "127.0.0.1".to_string()),
        ("API_PORT", port.to_string()),
        ("PROCESSOR_HOST", "127.0.0.1".to_string()),
        ("PROCESSOR_PORT", port.to_string()),
        // Several services run side by side: each scrape listener on a free port.
        ("API_METRICS_ADDR", "127.0.0.1:0".to_string()),
        ("PROCESSOR_METRICS_ADDR", "127.0.0.1:0".to_string()),
        ("MONGODB_URI", crate::mongo_uri()),
        ("MONGODB_DATABASE", database.to_string()),
        ("AWS_ENDPOINT_URL", crate::sqs_endpoint()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_ACCESS_KEY_ID", "test".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_string()),
        ("SQS_QUEUE_NAME", queue.to_string()),
        ("SQS_DLQ_NAME", format!("{queue}-dlq")),
        ("SQS_WAIT_TIME_SECS", "1".to_string()),
        ("SMTP_HOST", crate::SMTP_HOST.to_string()),
        ("SMTP_PORT", crate::SMTP_PORT.to_string()),
        ("LOG_FORMAT", "json".to_string()),
        ("STARTUP_TIMEOUT_SECS", "10".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Starts `binary` with exactly `env` (plus PATH) in an empty directory, so
/// no developer's `.env` is picked up; killed if dropped.
pub fn spawn(binary: &str, env: &[(String, String)]) -> Child {
    let dir = std::env::temp_dir().join(crate::unique("svc"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    Command::new(binary)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the service binary starts")
}

/// Sends SIGTERM to `child` by PID and waits (bounded) for it to exit.
/// Returns its exit status and everything it logged.
pub async fn terminate(mut child: Child, within: Duration) -> (ExitStatus, String) {
    let pid = child.id().expect("still running").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(sent.success(), "SIGTERM delivered to {pid}");
    let status = tokio::time::timeout(within, child.wait())
        .await
        .unwrap_or_else(|_| panic!("pid {pid} did not exit within {within:?} of SIGTERM"))
        .expect("wait");
    let mut logs = String::new();
    if let Some(mut out) = child.stdout.take() {
        use tokio::io::AsyncReadExt;
        let _ = out.read_to_string(&mut logs).await;
    }
    if let Some(mut err) = child.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = err.read_to_string(&mut logs).await;
    }
    (status, logs)
}

/// Starts `binary` against fresh queues and database, waits until
/// `health_path` answers, sends SIGTERM and requires exit 0 with each of
/// `expected` in its logs.
pub async fn assert_graceful_sigterm(binary: &str, health_path: &str, expected: &[&str]) {
    crate::require_stack().await;
    let database = crate::unique("sigterm").replace('-', "_");
    let queue = crate::unique("sigterm");
    let sqs = crate::sqs_client().await;
    crate::create_queues(&sqs, &queue, 30).await;
    let port = free_port();
    let child = spawn(binary, &service_env(&database, &queue, port));
    let health = format!("http://127.0.0.1:{port}{health_path}");
    crate::eventually(Duration::from_secs(30), "the service to answer", || async {
        let response = reqwest::get(&health).await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;

    let (status, logs) = terminate(child, Duration::from_secs(20)).await;
    assert!(status.success(), "exit status {status:?}\n{logs}");
    for line in expected {
        assert!(logs.contains(line), "missing {line:?} in:\n{logs}");
    }
}
