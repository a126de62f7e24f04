//! The consumer's single step, driven directly.

use std::time::Duration;

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
    pipeline.wait_until_queued(1).await;

    let report = consumer_for(&pipeline)
        .await
        .poll_once()
        .await
        .expect("a step");
    assert!(
        matches!(report.outcomes[..], [Ok(Outcome::SkippedCancelled)]),
        "{report:?}"
    );
    let stored = pipeline.order_document(order_id).await;
    assert_eq!(stored.get_str("status").expect("status"), "CANCELLED");
    assert_eq!(times_in_timeline(&stored, "processed"), 0);
    assert_eq!(times_in_timeline(&stored, "processing_skipped"), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(test_support::emails_to(&email).await.is_empty());
}

#[tokio::test]
async fn one_step_processes_a_batch_in_one_transaction_and_each_event_gets_its_own_outcome() {
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

    // One event published twice (a relay that died before its mark).
    let row = pipeline
        .db
        .collection::<mongodb::bson::Document>("outbox")
        .find_one(doc! {})
        .await
        .expect("query")
        .expect("a row");
    pipeline.send_raw(row.get_str("body").expect("body")).await;
    let app = app_for(&pipeline).await;
    let consumer = app.consumer().clone();
    let mut outcomes = Vec::new();
    for _ in 0..10 {
        let report = consumer.poll_once().await.expect("a step");
        assert_eq!(report.received, report.acknowledged, "{report:?}");
        outcomes.extend(report.outcomes);
        if outcomes.len() == 6 {
            break;
        }
    }
    let count = |wanted: Outcome| {
        outcomes
            .iter()
            .filter(|o| matches!(o, Ok(x) if *x == wanted))
            .count()
    };
    assert_eq!(
        (
            count(Outcome::Processed),
            count(Outcome::SkippedCancelled),
            count(Outcome::Duplicate)
        ),
        (4, 1, 1),
        "{outcomes:?}"
    );

    // The email worker's step sends what the batch made due: the four
    // confirmations, and nothing for the cancelled order.
    let sent = app.emails().try_send_due().await.expect("an email step");
    assert_eq!((sent.claimed, sent.sent), (4, 4), "{sent:?}");
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
    assert_eq!(inbox, 5, "every event is remembered once");
    assert_eq!(pipeline.queue_depth().await, 0);
}

#[tokio::test]
async fn garbage_and_unknown_orders_are_dead_lettered_not_acknowledged() {
    let pipeline = spawn_pipeline_without_processor(30).await;
    pipeline.send_raw("definitely not json").await;
    pipeline
        .send_raw(r#"{"eventId":"e","type":"order.exploded","orderId":"o","occurredAt":"2026-01-01T00:00:00Z"}"#)
        .await;
    pipeline
        .send_raw(&format!(
            r#"{{"eventId":"e2","type":"order.created","orderId":"{}","occurredAt":"2026-01-01T00:00:00Z"}}"#,
            ObjectId::new().to_hex()
        ))
        .await;
    let consumer = consumer_for(&pipeline).await;
    let mut outcomes = Vec::new();
    for _ in 0..10 {
        let report = consumer.poll_once().await.expect("a step");
        assert_eq!(report.dead_lettered, report.received, "{report:?}");
        outcomes.extend(report.outcomes);
        if outcomes.len() == 3 {
            break;
        }
    }
    let unparseable = outcomes
        .iter()
        .filter(|o| matches!(o, Err(ProcessError::Unparseable(_))))
        .count();
    let unknown = outcomes
        .iter()
        .filter(|o| matches!(o, Err(ProcessError::UnknownOrder(_))))
        .count();
    assert_eq!((unparseable, unknown), (2, 1), "{outcomes:?}");
    assert_eq!(pipeline.queue_depth().await, 0);
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
async fn claims_hold_and_sent_is_written_for_several_emails_at_once_each_with_its_own_time() {
    let pipeline = spawn_pipeline_without_processor(30).await;
    let admin = pipeline.admin_token().await;
    let (_, customer) = pipeline.customer().await;
    let product = pipeline.product(&admin, 500, 5).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let order = pipeline.order(&customer, &product, 1).await;
        ids.push(ObjectId::parse_str(order["id"].as_str().expect("id")).expect("id"));
    }
    let orders = pipeline.db.collection::<mongodb::bson::Document>("orders");
    let now = mongodb::bson::DateTime::now();
    orders
        .update_many(
            doc! { "_id": { "$in": &ids } },
            doc! { "$set": { "status": "PROCESSED", "email.next_attempt_at": now, "email.due_since": now } },
        )
        .await
        .expect("due");
    let claim = || {
        common::orders::email::claim_due(&pipeline.db, now, 5, Duration::from_secs(60), "shop.test")
    };
    let claims = claim().await.expect("claims");
    assert_eq!(claims.len(), 2);
    for claimed in &claims {
        assert_eq!(
            claimed.order.email.status,
            common::domain::EmailStatus::Sending
        );
        assert_eq!(claimed.order.email.attempts, 1);
    }
    let again = claim().await.expect("claims");
    assert!(again.is_empty(), "the leases hold: {again:?}");

    // Accepted a second apart: each keeps its own time, not the write's.
    let accepted: Vec<_> = claims
        .into_iter()
        .zip([-2_000_i64, -1_000])
        .map(|(claimed, ago)| {
            let at = mongodb::bson::DateTime::from_millis(now.timestamp_millis() + ago);
            (claimed, at)
        })
        .collect();
    common::orders::email::record_sent(&pipeline.db, &accepted)
        .await
        .expect("recorded");
    let check = || async {
        for (claimed, at) in &accepted {
            let stored = pipeline.order_document(&claimed.order.id.to_hex()).await;
            let email = stored.get_document("email").expect("email");
            assert_eq!(email.get_str("status").expect("status"), "SENT");
            assert_eq!(email.get_datetime("sent_at").expect("sent_at"), at);
            assert!(!email.contains_key("next_attempt_at"), "{email}");
            assert_eq!(times_in_timeline(&stored, "confirmation_sent"), 1);
        }
    };
    check().await;
    // Recorded again (a retried transaction): nothing changes.
    common::orders::email::record_sent(&pipeline.db, &accepted)
        .await
        .expect("recorded again");
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
    let sender = emails_for(&pipeline).await;
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

async fn emails_for(pipeline: &crate::helpers::Pipeline) -> order_processor::email::EmailWorker {
    app_for(pipeline).await.emails().clone()
}
