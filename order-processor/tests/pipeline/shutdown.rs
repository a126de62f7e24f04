use std::time::Duration;

use test_support::process;

#[tokio::test]
async fn sigterm_finishes_the_batch_in_hand_and_exits_zero() {
    test_support::require_stack().await;
    let database = test_support::unique("sigterm").replace('-', "_");
    let queue = test_support::unique("sigterm");
    let sqs = test_support::sqs_client().await;
    test_support::create_queues(&sqs, &queue, 30).await;
    let port = process::free_port();
    let child = process::spawn(
        env!("CARGO_BIN_EXE_order-processor"),
        &process::service_env(&database, &queue, port),
    );
    let health = format!("http://127.0.0.1:{port}/processor/api/health");
    test_support::eventually(
        Duration::from_secs(30),
        "order-processor to answer",
        || async {
            let response = reqwest::get(&health).await.ok()?;
            response.status().is_success().then_some(())
        },
    )
    .await;

    let (status, logs) = process::terminate(child, Duration::from_secs(20)).await;
    assert!(status.success(), "exit status {status:?}\n{logs}");
    for line in [
        "shutdown signal received",
        "consumer stopped",
        "order-processor stopped",
    ] {
        assert!(logs.contains(line), "missing {line:?} in:\n{logs}");
    }
}
