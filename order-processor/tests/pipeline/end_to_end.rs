use std::time::Duration;

use mongodb::bson::doc;

use crate::helpers::{spawn_pipeline, times_in_timeline};

#[tokio::test]
async fn an_order_becomes_processed_and_exactly_one_email_arrives() {
    let pipeline = spawn_pipeline(30).await;
    let admin = pipeline.admin_token().await;
    let (email, customer) = pipeline.customer().await;
    let product = pipeline.product(&admin, 129_900, 10).await;

    let order = pipeline.order(&customer, &product, 3).await;
    let order_id = order["id"].as_str().expect("id");
    assert_eq!(order["status"], "PENDING");
    assert_eq!(order["total"], 459_846, "3 x 1299.00 + 18% GST");

    let processed = pipeline.wait_processed(&customer, order_id).await;
    assert!(processed["email"]["sentAt"].is_string());
    assert_eq!(processed["email"]["attempts"], 1);

    let mails = test_support::eventually(
        Duration::from_secs(10),
        "the confirmation email",
        || async {
            let mails = test_support::emails_to(&email).await;
            (!mails.is_empty()).then_some(mails)
        },
    )
    .await;
    // Give a stray duplicate the chance to show up before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mails_after = test_support::emails_to(&email).await;
    assert_eq!(mails_after.len(), 1, "exactly one email: {mails_after:?}");
    let mail = &mails[0];
    assert!(mail.subject.contains(order_id), "{}", mail.subject);
    // Greeted by the name registered with (the address's first 20
    // characters, see helpers), from the shop the settings name.
    let name = &email[..20];
    assert!(mail.subject.starts_with("Test Shop: "), "{}", mail.subject);
    let text = mail.text.as_deref().unwrap_or_default();
    let html = mail.html.as_deref().unwrap_or_default();
    for part in [text, html] {
        assert!(part.contains("INR 4598.46"), "total in both parts: {part}");
        assert!(part.contains("INR 701.46"), "GST in both parts: {part}");
        assert!(
            part.contains("INR 3897.00"),
            "subtotal in both parts: {part}"
        );
        assert!(part.contains(&format!("Hi {name}")), "greeting: {part}");
        assert!(part.contains("help@shop.test"), "support address: {part}");
    }
    // MailDev shows the Message-ID without its angle brackets.
    assert_eq!(
        mail.message_id
            .as_deref()
            .map(|id| id.trim_matches(['<', '>'])),
        Some(format!("order-{order_id}.confirmation@shop.test").as_str()),
        "deterministic Message-ID"
    );

    let stock: serde_json::Value = pipeline
        .http
        .get(pipeline.url(&format!("/api/products/{product}")))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(stock["stock"], 7);

    // The relay marks the row after SQS accepted it: wait for the mark.
    let rows = pipeline.db.collection::<mongodb::bson::Document>("outbox");
    test_support::eventually(
        Duration::from_secs(5),
        "the row marked published",
        || async {
            let row = rows.find_one(doc! {}).await.ok().flatten()?;
            (row.get_str("status").ok() == Some("PUBLISHED")).then_some(())
        },
    )
    .await;

    let stored = pipeline.order_document(order_id).await;
    assert_eq!(times_in_timeline(&stored, "processing"), 1);
    assert_eq!(times_in_timeline(&stored, "processed"), 1);
}

#[tokio::test]
async fn the_same_message_delivered_twice_makes_one_transition_and_one_email() {
    let pipeline = spawn_pipeline(3).await;
    let admin = pipeline.admin_token().await;
    let (email, customer) = pipeline.customer().await;
    let product = pipeline.product(&admin, 10_000, 5).await;
    let order = pipeline.order(&customer, &product, 1).await;
    let order_id = order["id"].as_str().expect("id");
    pipeline.wait_processed(&customer, order_id).await;

    // Redeliver the very event the relay published, twice over.
    let outbox = pipeline
        .db
        .collection::<mongodb::bson::Document>("outbox")
        .find_one(doc! {})
        .await
        .expect("query")
        .expect("row");
    let body = outbox.get_str("body").expect("body").to_string();
    pipeline.send_raw(&body).await;
    pipeline.send_raw(&body).await;
    test_support::eventually(
        Duration::from_secs(20),
        "the duplicates to be consumed",
        || async { (pipeline.queue_depth().await == 0).then_some(()) },
    )
    .await;

    let stored = pipeline.order_document(order_id).await;
    assert_eq!(times_in_timeline(&stored, "processed"), 1, "{stored}");
    // The first delivery left no inbox entry (the order's state guards it);
    // the redeliveries are known from the timeline and add nothing to it.
    assert_eq!(times_in_timeline(&stored, "published"), 1, "{stored}");
    assert_eq!(
        stored
            .get_document("email")
            .expect("email")
            .get_i32("attempts")
            .expect("attempts"),
        1
    );
    assert_eq!(test_support::emails_to(&email).await.len(), 1);
}

/// The events of the order's timeline, in order.
fn timeline_events(order: &mongodb::bson::Document) -> Vec<String> {
    order
        .get_array("timeline")
        .expect("timeline")
        .iter()
        .filter_map(|e| e.as_document()?.get_str("event").ok().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn cancelling_a_processed_order_sends_one_cancellation_email() {
    let pipeline = spawn_pipeline(30).await;
    let admin = pipeline.admin_token().await;
    let (email, customer) = pipeline.customer().await;
    let product = pipeline.product(&admin, 25_000, 4).await;
    let order = pipeline.order(&customer, &product, 2).await;
    let order_id = order["id"].as_str().expect("id");
    pipeline.wait_processed(&customer, order_id).await;

    let (status, cancelled) = pipeline
        .post_json(
            &format!("/api/orders/{order_id}/cancel"),
            Some(&customer),
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{cancelled}");
    let after = test_support::eventually(
        Duration::from_secs(20),
        "the cancellation email to be SENT",
        || async {
            let (_, order) = pipeline
                .get_json(&format!("/api/orders/{order_id}"), &customer)
                .await;
            (order["cancellationEmail"]["status"] == "SENT").then_some(order)
        },
    )
    .await;
    assert_eq!(after["status"], "CANCELLED");

    tokio::time::sleep(Duration::from_millis(500)).await;
    let mails = test_support::emails_to(&email).await;
    let cancellations: Vec<_> = mails
        .iter()
        .filter(|m| m.subject.contains(" cancelled"))
        .collect();
    let confirmations: Vec<_> = mails
        .iter()
        .filter(|m| m.subject.contains(" confirmed ("))
        .collect();
    assert_eq!(cancellations.len(), 1, "{mails:?}");
    assert_eq!(confirmations.len(), 1, "{mails:?}");
    assert!(cancellations[0].subject.contains(order_id));

    let stored = pipeline.order_document(order_id).await;
    // The relay notes each publication too; where it lands among the
    // processor's entries depends on timing, so it is counted apart.
    let events = timeline_events(&stored);
    assert_eq!(
        events.iter().filter(|e| *e == "published").count(),
        2,
        "{events:?}"
    );
    assert_eq!(
        events
            .into_iter()
            .filter(|e| e != "published")
            .collect::<Vec<_>>(),
        vec![
            "placed",
            "processing",
            "processed",
            "confirmation_sent",
            "cancelled",
            "cancellation_sent"
        ]
    );
}

#[tokio::test]
async fn a_cancel_racing_the_processor_wins_cleanly() {
    let pipeline = spawn_pipeline(30).await;
    let admin = pipeline.admin_token().await;
    let (email, customer) = pipeline.customer().await;
    let product = pipeline.product(&admin, 1_000, 20).await;

    // Cancel each order the moment it is placed: the processor sees some
    // before the cancel and some after. Bounded: 8 orders.
    let mut ids = Vec::new();
    for _ in 0..8 {
        let order = pipeline.order(&customer, &product, 2).await;
        let id = order["id"].as_str().expect("id").to_string();
        let (status, body) = pipeline
            .post_json(
                &format!("/api/orders/{id}/cancel"),
                Some(&customer),
                &serde_json::json!({}),
            )
            .await;
        assert_eq!(status, reqwest::StatusCode::OK, "{body}");
        ids.push(id);
    }
    for id in &ids {
        test_support::eventually(
            Duration::from_secs(20),
            "the cancellation email to be SENT",
            || async {
                let (_, order) = pipeline
                    .get_json(&format!("/api/orders/{id}"), &customer)
                    .await;
                (order["cancellationEmail"]["status"] == "SENT").then_some(())
            },
        )
        .await;
    }
    test_support::eventually(Duration::from_secs(20), "the queue to drain", || async {
        (pipeline.queue_depth().await == 0).then_some(())
    })
    .await;

    for id in &ids {
        let stored = pipeline.order_document(id).await;
        assert_eq!(stored.get_str("status").expect("status"), "CANCELLED");
        let events = timeline_events(&stored);
        let cancelled_at = events
            .iter()
            .position(|e| e == "cancelled")
            .expect("cancelled");
        assert!(
            !events[cancelled_at..]
                .iter()
                .any(|e| e == "processing" || e == "processed"),
            "nothing processed after the cancel: {events:?}"
        );
        let processed_first = events[..cancelled_at].iter().any(|e| e == "processed");
        let skip_recorded = events.iter().filter(|e| *e == "processing_skipped").count();
        assert!(
            processed_first ^ (skip_recorded == 1),
            "the processor either finished before the cancel or recorded one skip: {events:?}"
        );
    }
    let (_, product_now) = pipeline
        .get_json(&format!("/api/products/{product}"), &customer)
        .await;
    assert_eq!(product_now["stock"], 20, "all stock back");
    let cancellations = test_support::emails_to(&email)
        .await
        .into_iter()
        .filter(|m| m.subject.contains(" cancelled"))
        .count();
    assert_eq!(cancellations, ids.len(), "one cancellation email per order");
}
