#[tokio::test]
async fn sigterm_finishes_the_batch_in_hand_and_exits_zero() {
    test_support::process::assert_graceful_sigterm(
        env!("CARGO_BIN_EXE_order-processor"),
        "/processor/api/health",
        &[
            "shutdown signal received",
            "consumer stopped",
            "order-processor stopped",
        ],
    )
    .await;
}

#[tokio::test]
async fn readiness_reports_both_dependencies() {
    let pipeline = crate::helpers::spawn_pipeline(30).await;
    let processor = pipeline.processor.as_ref().expect("running");
    let response = reqwest::get(format!("{}/processor/api/ready", processor.address()))
        .await
        .expect("sent");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["checks"]["mongodb"], "ok", "{body}");
    assert_eq!(body["checks"]["sqs"], "ok", "{body}");
}
