use std::time::Duration;

use mongodb::bson::doc;

use crate::helpers::{spawn_pipeline, times_in_history};

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
    let text = mail.text.as_deref().unwrap_or_default();
    let html = mail.html.as_deref().unwrap_or_default();
    for part in [text, html] {
        assert!(part.contains("INR 4598.46"), "total in both parts: {part}");
        assert!(part.contains("INR 701.46"), "GST in both parts: {part}");
        assert!(
            part.contains("INR 3897.00"),
            "subtotal in both parts: {part}"
        );
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

    let outbox = pipeline
        .db
        .collection::<mongodb::bson::Document>("outbox")
        .find_one(doc! {})
        .await
        .expect("query")
        .expect("row");
    assert_eq!(outbox.get_str("status").expect("status"), "PUBLISHED");

    let stored = pipeline.order_document(order_id).await;
    assert_eq!(times_in_history(&stored, "PROCESSING"), 1);
    assert_eq!(times_in_history(&stored, "PROCESSED"), 1);
}

#[tokio::test]
async fn the_same_message_delivered_twice_makes_one_transition_and_one_email() {
    let pipeline = spawn_pipeline(2).await;
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
    assert_eq!(times_in_history(&stored, "PROCESSED"), 1, "{stored}");
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
