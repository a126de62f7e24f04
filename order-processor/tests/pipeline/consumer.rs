//! The consumer's single step, driven directly.

use std::time::Duration;

use common::domain::{EmailKind, OrderStatus};
use mongodb::bson::{doc, oid::ObjectId};
use order_processor::consumer::{Outcome, ProcessError};

use crate::helpers::{spawn_pipeline, spawn_pipeline_without_processor, times_in_timeline};

#[tokio::test]
async fn a_cancelled_order_is_skipped_and_never_marked_processed() {
    // Stop the background consumer: this test drives the step itself.
    let pipeline = spawn_pipeline_without_processor(30).await;
    let admin = pipeline.admin_token().await;
    let (email, customer) = pipeline.customer().await;
    let product = pipeline.product(&admin, 500, 2).await;
    let order = pipeline.order(&customer, &product, 1).await;
    let order_id = order["id"].as_str().expect("id");
    let oid = ObjectId::parse_str(order_id).expect("id");
    pipeline
        .db
        .collection::<mongodb::bson::Document>("orders")
        .update_one(
            doc! { "_id": oid },
            doc! { "$set": { "status": "CANCELLED" } },
        )
        .await
        .expect("cancel");

    let consumer = consumer_for(&pipeline).await;
    let event = format!(
        r#"{{"eventId":"{}","type":"order.created","orderId":"{order_id}","occurredAt":"2026-01-01T00:00:00Z"}}"#,
        ObjectId::new().to_hex()
    );
    let outcome = consumer.try_process_message(&event).await.expect("handled");
    assert_eq!(outcome, Outcome::SkippedCancelled);
    let stored = pipeline.order_document(order_id).await;
    assert_eq!(stored.get_str("status").expect("status"), "CANCELLED");
    assert_eq!(times_in_timeline(&stored, "processed"), 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(test_support::emails_to(&email).await.is_empty());
}

#[tokio::test]
async fn first_deliveries_in_one_batch_share_a_transaction_and_each_gets_its_own_outcome() {
    let pipeline = spawn_pipeline_without_processor(30).await;
    let admin = pipeline.admin_token().await;
    let product = pipeline.product(&admin, 700, 10).await;
    let mut buyers = Vec::new();
    for _ in 0..5 {
        let (email, customer) = pipeline.customer().await;
        let order = pipeline.order(&customer, &product, 1).await;
        let id = order["id"].as_str().expect("id").to_string();
        buyers.push((email, id));
    }
    // One of them is cancelled before the processor sees it.
    let (cancelled_email, cancelled_id) = buyers.pop().expect("five");
    pipeline
        .db
        .collection::<mongodb::bson::Document>("orders")
        .update_one(
            doc! { "_id": ObjectId::parse_str(&cancelled_id).expect("id") },
            doc! { "$set": { "status": "CANCELLED" } },
        )
        .await
        .expect("cancel");
    pipeline.wait_until_queued(5).await;

    let consumer = consumer_for(&pipeline).await;
    let mut received = 0;
    let mut together = 0;
    for _ in 0..10 {
        let report = consumer.poll_once().await.expect("a step");
        received += report.received;
        together += report.applied_together;
        assert_eq!(report.received, report.acknowledged, "{report:?}");
        if received == 5 {
            break;
        }
    }
    assert_eq!(received, 5);
    assert!(
        together >= 2,
        "the batch's first deliveries shared a transaction"
    );

    let domain = "shop.test";
    for (email, order_id) in &buyers {
        let stored = pipeline.until_email_status(order_id, "email", "SENT").await;
        assert_eq!(stored.get_str("status").expect("status"), "PROCESSED");
        assert_eq!(
            times_in_timeline(&stored, "published"),
            1,
            "SQS's send time noted"
        );
        assert_eq!(times_in_timeline(&stored, "processing"), 1);
        assert_eq!(times_in_timeline(&stored, "processed"), 1);
        assert_eq!(times_in_timeline(&stored, "confirmation_sent"), 1);
        let delivery = stored.get_document("email").expect("email");
        assert_eq!(delivery.get_str("status").expect("status"), "SENT");
        assert_eq!(delivery.get_i32("attempts").expect("attempts"), 1);
        assert_eq!(
            delivery.get_str("message_id").expect("message id"),
            format!("<order-{order_id}.confirmation@{domain}>"),
            "each order's claim names its own message"
        );
        let emails = test_support::eventually(
            Duration::from_secs(10),
            "the confirmation to arrive",
            || async {
                let emails = test_support::emails_to(email).await;
                (!emails.is_empty()).then_some(emails)
            },
        )
        .await;
        assert_eq!(emails.len(), 1, "one email to {email}");
    }
    let cancelled = pipeline.order_document(&cancelled_id).await;
    assert_eq!(cancelled.get_str("status").expect("status"), "CANCELLED");
    assert_eq!(times_in_timeline(&cancelled, "processed"), 0);
    assert_eq!(times_in_timeline(&cancelled, "published"), 1);
    assert!(test_support::emails_to(&cancelled_email).await.is_empty());
    let inbox = pipeline
        .db
        .collection::<mongodb::bson::Document>("inbox")
        .count_documents(doc! {})
        .await
        .expect("count");
    // The four moved orders' own state guards them against a redelivery;
    // only the cancelled order's event, which its state cannot settle, is
    // remembered.
    assert_eq!(
        inbox, 1,
        "only the event the order's state does not settle is recorded"
    );
    assert_eq!(pipeline.queue_depth().await, 0);
}

#[tokio::test]
async fn garbage_and_unknown_orders_are_errors_not_acknowledgements() {
    let pipeline = spawn_pipeline(30).await;
    let consumer = consumer_for(&pipeline).await;
    let garbage = consumer.try_process_message("definitely not json").await;
    assert!(
        matches!(garbage, Err(ProcessError::Unparseable(_))),
        "{garbage:?}"
    );
    let unknown_type = consumer
        .try_process_message(r#"{"eventId":"e","type":"order.exploded","orderId":"o","occurredAt":"2026-01-01T00:00:00Z"}"#)
        .await;
    assert!(
        matches!(unknown_type, Err(ProcessError::Unparseable(_))),
        "{unknown_type:?}"
    );
    let missing = consumer
        .try_process_message(&format!(
            r#"{{"eventId":"e","type":"order.created","orderId":"{}","occurredAt":"2026-01-01T00:00:00Z"}}"#,
            ObjectId::new().to_hex()
        ))
        .await;
    assert!(
        matches!(missing, Err(ProcessError::UnknownOrder(_))),
        "{missing:?}"
    );
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_without_blocking_good_orders() {
    let pipeline = spawn_pipeline(3).await;
    pipeline.send_raw("{ this is not an order event").await;
    let admin = pipeline.admin_token().await;
    let (_, customer) = pipeline.customer().await;
    let product = pipeline.product(&admin, 700, 3).await;
    let order = pipeline.order(&customer, &product, 1).await;
    pipeline
        .wait_processed(&customer, order["id"].as_str().expect("id"))
        .await;

    // Retrying cannot help an unparseable body: it is dead-lettered on its
    // first receive, with the reason, not after maxReceiveCount receives.
    let dead = test_support::eventually(
        Duration::from_secs(30),
        "the poison message in the DLQ",
        || async {
            let bodies =
                test_support::receive_bodies(&pipeline.sqs, &pipeline.queues.dlq_url, 1).await;
            (!bodies.is_empty()).then_some(bodies)
        },
    )
    .await;
    assert_eq!(dead, vec!["{ this is not an order event".to_string()]);
}

#[tokio::test]
async fn first_deliveries_received_by_different_pollers_share_one_transaction() {
    let pipeline = spawn_pipeline_without_processor(30).await;
    let admin = pipeline.admin_token().await;
    let product = pipeline.product(&admin, 700, 10).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (_, customer) = pipeline.customer().await;
        let order = pipeline.order(&customer, &product, 1).await;
        ids.push(order["id"].as_str().expect("id").to_string());
    }
    pipeline.wait_until_queued(2).await;

    // Two pollers, one message each: alone, each would be a lone event on
    // the one-by-one path. The linger holds the first for the second.
    let mut config = test_support::apps::processor_config(&pipeline.database, &pipeline.queue);
    config.consumer.max_messages = 1;
    config.consumer.linger = Duration::from_secs(3);
    let app = order_processor::startup::Application::build(config)
        .await
        .expect("builds");
    let consumer = app.consumer().clone();
    let (first, second) = tokio::join!(consumer.poll_once(), consumer.poll_once());
    let (first, second) = (first.expect("a step"), second.expect("a step"));
    assert_eq!(
        (first.received, second.received),
        (1, 1),
        "{first:?} {second:?}"
    );
    assert_eq!(
        first.applied_together + second.applied_together,
        2,
        "both first deliveries were applied in the shared transaction: {first:?} {second:?}"
    );
    for id in &ids {
        let stored = pipeline.until_email_status(id, "email", "SENT").await;
        assert_eq!(stored.get_str("status").expect("status"), "PROCESSED");
        assert_eq!(times_in_timeline(&stored, "processed"), 1);
    }
}

/// A processor built on the pipeline's database and queue, not running:
/// tests drive its steps.
async fn app_for(pipeline: &crate::helpers::Pipeline) -> order_processor::startup::Application {
    let config = test_support::apps::processor_config(&pipeline.database, &pipeline.queue);
    order_processor::startup::Application::build(config)
        .await
        .expect("builds")
}

async fn consumer_for(pipeline: &crate::helpers::Pipeline) -> order_processor::consumer::Consumer {
    app_for(pipeline).await.consumer().clone()
}

#[tokio::test]
async fn sent_is_recorded_for_several_orders_in_one_write_and_only_where_sending() {
    let pipeline = spawn_pipeline_without_processor(30).await;
    let admin = pipeline.admin_token().await;
    let (_, customer) = pipeline.customer().await;
    let product = pipeline.product(&admin, 500, 5).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let order = pipeline.order(&customer, &product, 1).await;
        ids.push(ObjectId::parse_str(order["id"].as_str().expect("id")).expect("id"));
    }
    // Two confirmations are being sent; the third was never claimed.
    let orders = pipeline.db.collection::<mongodb::bson::Document>("orders");
    orders
        .update_many(
            doc! { "_id": { "$in": &ids[..2] } },
            doc! { "$set": { "status": "PROCESSED", "email.status": "SENDING" } },
        )
        .await
        .expect("claim two");

    // Each accepted a second apart: each keeps its own time, not the write's.
    let accepted: Vec<(ObjectId, mongodb::bson::DateTime)> = ids
        .iter()
        .zip([-3_000_i64, -2_000, -1_000])
        .map(|(id, ago)| {
            let at = mongodb::bson::DateTime::now().timestamp_millis() + ago;
            (*id, mongodb::bson::DateTime::from_millis(at))
        })
        .collect();
    let record = || {
        common::orders::email::record_sent(
            &pipeline.db,
            &accepted,
            EmailKind::Confirmation,
            OrderStatus::Processed,
        )
    };
    record().await.expect("recorded");
    let check = || async {
        for (id, at) in &accepted[..2] {
            let stored = pipeline.order_document(&id.to_hex()).await;
            let email = stored.get_document("email").expect("email");
            assert_eq!(email.get_str("status").expect("status"), "SENT", "{id}");
            assert_eq!(email.get_datetime("sent_at").expect("sent_at"), at, "{id}");
            assert!(!email.contains_key("next_attempt_at"), "{email}");
            assert_eq!(times_in_timeline(&stored, "confirmation_sent"), 1);
        }
        let untouched = pipeline.order_document(&ids[2].to_hex()).await;
        let email = untouched.get_document("email").expect("email");
        assert_eq!(email.get_str("status").expect("status"), "PENDING");
        assert_eq!(times_in_timeline(&untouched, "confirmation_sent"), 0);
    };
    check().await;
    // Written again (a retried transaction): nothing changes.
    record().await.expect("recorded again");
    check().await;
}

#[tokio::test]
async fn a_batch_waiting_on_a_lock_keeps_its_messages_invisible() {
    // A visibility timeout of 3 s (the least the processor accepts): the
    // wait below outlasts it twice over.
    let pipeline = spawn_pipeline_without_processor(3).await;
    let admin = pipeline.admin_token().await;
    let product = pipeline.product(&admin, 300, 5).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (_, customer) = pipeline.customer().await;
        let order = pipeline.order(&customer, &product, 1).await;
        ids.push(ObjectId::parse_str(order["id"].as_str().expect("id")).expect("id"));
    }
    pipeline.wait_until_queued(2).await;

    // A consumer that died inside a transaction on the first order: its
    // write holds that order until the transaction is aborted.
    let orders = pipeline.db.collection::<mongodb::bson::Document>("orders");
    let mut dead = pipeline.db.client().start_session().await.expect("session");
    dead.start_transaction().await.expect("begin");
    orders
        .update_one(doc! { "_id": ids[0] }, doc! { "$set": { "held": true } })
        .session(&mut dead)
        .await
        .expect("hold the order");

    let consumer = consumer_for(&pipeline).await;
    let polling = tokio::spawn(async move { consumer.poll_once().await });
    tokio::time::sleep(Duration::from_secs(7)).await;
    let again = pipeline
        .sqs
        .receive_message()
        .queue_url(&pipeline.queues.queue_url)
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .send()
        .await
        .expect("receive");
    assert!(
        again.messages().is_empty(),
        "messages in hand were handed out again: {:?}",
        again.messages()
    );

    dead.abort_transaction().await.expect("abort");
    let report = polling.await.expect("joined").expect("a step");
    assert_eq!(report.received, 2, "{report:?}");
    assert_eq!(report.acknowledged, 2, "{report:?}");
    for id in &ids {
        let stored = pipeline.order_document(&id.to_hex()).await;
        assert_eq!(stored.get_str("status").expect("status"), "PROCESSED");
    }
}

#[tokio::test]
async fn a_cancelled_orders_abandoned_confirmation_is_settled_not_sent() {
    let pipeline = spawn_pipeline_without_processor(30).await;
    let admin = pipeline.admin_token().await;
    let (_, customer) = pipeline.customer().await;
    let product = pipeline.product(&admin, 500, 2).await;
    let order = pipeline.order(&customer, &product, 1).await;
    let order_id = order["id"].as_str().expect("id");
    let oid = ObjectId::parse_str(order_id).expect("id");
    let sender = sender_for(&pipeline).await;
    let orders = pipeline.db.collection::<mongodb::bson::Document>("orders");
    let at = |from_now_secs: i64| {
        mongodb::bson::DateTime::from_millis(
            mongodb::bson::DateTime::now().timestamp_millis() + from_now_secs * 1000,
        )
    };
    // A sender claimed the confirmation and died; then the order was
    // cancelled. Its lease still holds: that sender may be alive.
    orders
        .update_one(
            doc! { "_id": oid },
            doc! { "$set": {
                "status": "CANCELLED",
                "email.status": "SENDING",
                "email.attempted_at": at(0),
                "email.next_attempt_at": at(60),
                "email.due_since": at(0),
            } },
        )
        .await
        .expect("claim and cancel");
    let early = sender.try_send_due().await.expect("a sweep");
    assert_eq!(early.claimed, 0, "{early:?}");

    // The lease ran out: the email is settled as FAILED, never sent.
    orders
        .update_one(
            doc! { "_id": oid },
            doc! { "$set": { "email.next_attempt_at": at(-1) } },
        )
        .await
        .expect("age the claim");
    let report = sender.try_send_due().await.expect("a sweep");
    assert_eq!(
        (report.claimed, report.failed, report.sent),
        (1, 1, 0),
        "{report:?}"
    );
    let stored = pipeline.order_document(order_id).await;
    let email = stored.get_document("email").expect("email");
    assert_eq!(email.get_str("status").expect("status"), "FAILED");
    assert!(
        email
            .get_str("last_error")
            .expect("why")
            .contains("cancelled")
    );
    assert!(email.get("next_attempt_at").is_none(), "{email}");
    assert_eq!(stored.get_str("status").expect("status"), "CANCELLED");
}

async fn sender_for(pipeline: &crate::helpers::Pipeline) -> order_processor::email::EmailSender {
    app_for(pipeline).await.sender().clone()
}

/// `order.created` carries the order exactly as its transaction stored it,
/// and when the shared first-delivery update moves every order of its
/// batch, the orders it answers are those snapshots with its changes, as
/// stored, with no read back. An event without one is read back.
#[tokio::test]
async fn first_deliveries_answer_from_the_events_snapshot_without_a_read_back() {
    use common::{
        event::OrderEvent,
        orders::{self, processing::FirstDelivery},
    };

    let pipeline = spawn_pipeline_without_processor(30).await;
    let admin = pipeline.admin_token().await;
    let product = pipeline.product(&admin, 700, 10).await;
    let (_, customer) = pipeline.customer().await;
    let mut placed = Vec::new();
    for _ in 0..3 {
        let order = pipeline.order(&customer, &product, 2).await;
        let id = ObjectId::parse_str(order["id"].as_str().expect("id")).expect("id");
        let row = pipeline
            .db
            .collection::<mongodb::bson::Document>("outbox")
            .find_one(doc! { "order_id": id })
            .await
            .expect("find")
            .expect("the order's outbox row");
        let event = OrderEvent::from_json(row.get_str("body").expect("body")).expect("event");
        let stored = orders::load(&pipeline.db, id)
            .await
            .expect("load")
            .expect("stored");
        let snapshot = event.placed.expect("order.created carries the order");
        assert_eq!(*snapshot, stored, "the event's order is the stored one");
        placed.push(*snapshot);
    }
    // The second's snapshot is doctored: an answer carrying the doctored
    // name was built from the event, not read back.
    let mut doctored = placed[1].clone();
    doctored.customer_name = Some("from the event".into());

    let published_at = Some(mongodb::bson::DateTime::now());
    let moved = apply(
        &pipeline.db,
        vec![
            FirstDelivery {
                id: placed[0].id,
                published_at,
                placed: Some(&placed[0]),
            },
            FirstDelivery {
                id: placed[1].id,
                published_at,
                placed: Some(&doctored),
            },
        ],
    )
    .await;
    assert_eq!(moved.len(), 2);
    let first = orders::load(&pipeline.db, placed[0].id)
        .await
        .expect("load")
        .expect("stored");
    assert_eq!(first.status, OrderStatus::Processed);
    assert_eq!(moved[0], first, "the answer is the order as stored");
    assert_eq!(
        moved[1].customer_name.as_deref(),
        Some("from the event"),
        "built from the snapshot, not read back"
    );

    // No snapshot: what the update moved is read back.
    let moved = apply(
        &pipeline.db,
        vec![FirstDelivery {
            id: placed[2].id,
            published_at: None,
            placed: None,
        }],
    )
    .await;
    let third = orders::load(&pipeline.db, placed[2].id)
        .await
        .expect("load")
        .expect("stored");
    assert_eq!(moved, [third]);

    // Already moved: nothing matches, nothing is answered, snapshot or not.
    let moved = apply(
        &pipeline.db,
        vec![FirstDelivery {
            id: placed[0].id,
            published_at,
            placed: Some(&placed[0]),
        }],
    )
    .await;
    assert!(moved.is_empty(), "{moved:?}");
}

/// The shared first-delivery update over `deliveries`, in its transaction.
async fn apply(
    db: &mongodb::Database,
    deliveries: Vec<common::orders::processing::FirstDelivery<'_>>,
) -> Vec<common::domain::Order> {
    use futures::FutureExt;
    common::mongo::transaction(
        db,
        "test",
        (db, &deliveries),
        |session, (db, deliveries)| {
            async move {
                common::orders::processing::process_and_claim_many(
                    db,
                    session,
                    deliveries,
                    "shop.test",
                    Duration::from_secs(30),
                )
                .await
            }
            .boxed()
        },
    )
    .await
    .expect("the shared transaction")
}
