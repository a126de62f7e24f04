//! Delivery mechanics against real SQS and SMTP: retries after a transient
//! failure, the visibility heartbeat, replaying the dead-letter queue.

use std::time::Duration;

use order_processor::{consumer::visibility, dlq};
use test_support::apps;

use crate::helpers::spawn_pipeline;

#[tokio::test]
async fn an_unreachable_mail_server_is_retried_until_the_email_goes_out() {
    let mut pipeline = spawn_pipeline(3).await;
    if let Some(healthy) = pipeline.processor.take() {
        healthy.stop().await;
    }
    // A processor whose SMTP server refuses connections (nothing listens on
    // port 9 here): every send is a transient failure.
    let mut broken = apps::processor_config(&pipeline.database, &pipeline.queue);
    broken.smtp.port = 9;
    broken.smtp.timeout = Duration::from_secs(2);
    let broken = apps::start_processor(broken).await;

    let admin = pipeline.admin_token().await;
    let (email, customer) = pipeline.customer().await;
    let product = pipeline.product(&admin, 4_200, 3).await;
    let order = pipeline.order(&customer, &product, 1).await;
    let order_id = order["id"].as_str().expect("id").to_string();

    let failed = test_support::eventually(
        Duration::from_secs(15),
        "a failed attempt to be recorded",
        || async {
            let (_, order) = pipeline
                .get_json(&format!("/api/orders/{order_id}"), &customer)
                .await;
            order["email"]["lastError"].is_string().then_some(order)
        },
    )
    .await;
    assert_eq!(
        failed["status"], "PROCESSED",
        "processing does not wait for mail"
    );
    assert_eq!(
        failed["email"]["status"], "PENDING",
        "a transient failure is retried"
    );
    assert!(
        failed["email"]["nextAttemptAt"].is_string(),
        "the wait is visible: {failed}"
    );
    assert!(test_support::emails_to(&email).await.is_empty());
    // The queue message was acknowledged: the email is the sender's work,
    // not the queue's, and spends none of its receives.
    test_support::eventually(
        Duration::from_secs(10),
        "the order's message to be acknowledged",
        || async { (pipeline.queue_depth().await == 0).then_some(()) },
    )
    .await;
    broken.stop().await;

    // The mail server is back: the next attempt, from the email's record,
    // sends it once.
    let _healthy =
        apps::start_processor(apps::processor_config(&pipeline.database, &pipeline.queue)).await;
    let sent = pipeline.wait_processed(&customer, &order_id).await;
    assert!(
        sent["email"]["attempts"].as_i64().is_some_and(|n| n >= 2),
        "{sent}"
    );
    assert!(sent["email"]["lastError"].is_null());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(test_support::emails_to(&email).await.len(), 1);
}

#[tokio::test]
async fn the_heartbeat_keeps_a_slow_message_from_being_redelivered() {
    test_support::require_stack().await;
    let sqs = test_support::sqs_client().await;
    let queues = test_support::create_queues(&sqs, &test_support::unique("heartbeat"), 3).await;
    sqs.send_message()
        .queue_url(&queues.queue_url)
        .message_body("slow work")
        .send()
        .await
        .expect("send");
    let received = sqs
        .receive_message()
        .queue_url(&queues.queue_url)
        .wait_time_seconds(2)
        .send()
        .await
        .expect("receive");
    let message = received.messages().first().expect("the message").clone();

    // Work that takes twice the visibility timeout; meanwhile another
    // consumer polls and must not get the message.
    let work = tokio::time::sleep(Duration::from_secs(6));
    let competitor = async {
        let mut stolen = 0;
        for _ in 0..5 {
            let out = sqs
                .receive_message()
                .queue_url(&queues.queue_url)
                .wait_time_seconds(1)
                .send()
                .await
                .expect("receive");
            stolen += out.messages().len();
        }
        stolen
    };
    let receipts = [message.receipt_handle().expect("receipt")];
    let (((), extensions), stolen) = tokio::join!(
        visibility::with_heartbeats(
            work,
            &sqs,
            &queues.queue_url,
            &receipts,
            Duration::from_secs(3),
        ),
        competitor
    );
    assert!(extensions >= 2, "extended {extensions} times");
    assert_eq!(
        stolen, 0,
        "nobody else received the message while it was in hand"
    );
}

#[tokio::test]
async fn redriving_the_dead_letter_queue_processes_what_was_parked() {
    let pipeline = spawn_pipeline(3).await;
    let admin = pipeline.admin_token().await;
    let (_, customer) = pipeline.customer().await;
    let product = pipeline.product(&admin, 900, 3).await;
    let order = pipeline.order(&customer, &product, 1).await;
    let order_id = order["id"].as_str().expect("id").to_string();
    pipeline.wait_processed(&customer, &order_id).await;

    // Park a real cancellation event in the DLQ, as if it had failed five
    // times during an outage, and cancel the order without announcing it.
    let (status, _) = pipeline
        .post_json(
            &format!("/api/orders/{order_id}/cancel"),
            Some(&customer),
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let outbox = pipeline.db.collection::<mongodb::bson::Document>("outbox");
    let cancelled_event = test_support::eventually(
        Duration::from_secs(10),
        "the cancellation event",
        || async {
            outbox
                .find_one(
                    mongodb::bson::doc! { "event_type": "order.cancelled", "status": "PUBLISHED" },
                )
                .await
                .ok()
                .flatten()
        },
    )
    .await;
    test_support::eventually(
        Duration::from_secs(15),
        "the cancellation email",
        || async {
            let (_, o) = pipeline
                .get_json(&format!("/api/orders/{order_id}"), &customer)
                .await;
            (o["cancellationEmail"]["status"] == "SENT").then_some(())
        },
    )
    .await;
    // Park the event under a fresh id (the inbox has seen the original).
    let mut parked = cancelled_event.get_str("body").expect("body").to_string();
    let fresh_id = mongodb::bson::oid::ObjectId::new().to_hex();
    let old_id = cancelled_event.get_object_id("_id").expect("id").to_hex();
    parked = parked.replace(&old_id, &fresh_id);
    pipeline
        .sqs
        .send_message()
        .queue_url(&pipeline.queues.dlq_url)
        .message_body(&parked)
        .send()
        .await
        .expect("park");

    let queues = dlq::Queues {
        main: pipeline.queues.queue_url.clone(),
        dead_letter: pipeline.queues.dlq_url.clone(),
    };
    let preview = dlq::peek(&pipeline.sqs, &queues.dead_letter, 10)
        .await
        .expect("peek");
    assert_eq!(preview.len(), 1, "the preview shows it");
    let moved = dlq::redrive(&pipeline.sqs, &queues, 10)
        .await
        .expect("redrive");
    assert_eq!(moved, 1);
    assert!(
        dlq::peek(&pipeline.sqs, &queues.dead_letter, 10)
            .await
            .expect("peek")
            .is_empty()
    );

    let inbox = pipeline.db.collection::<mongodb::bson::Document>("inbox");
    test_support::eventually(
        Duration::from_secs(15),
        "the replayed event to be handled",
        || async {
            inbox
                .find_one(mongodb::bson::doc! { "_id": &fresh_id })
                .await
                .ok()
                .flatten()
        },
    )
    .await;
    // The cancellation email was already sent: the replay sends nothing.
    let stored = pipeline.order_document(&order_id).await;
    assert_eq!(
        crate::helpers::times_in_timeline(&stored, "cancellation_sent"),
        1
    );
}
