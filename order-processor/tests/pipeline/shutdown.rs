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
