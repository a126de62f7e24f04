//! Inbox entries past their retention are deleted by the processor's
//! expiry sweep; entries still inside it stay, so a redelivery is still
//! recognised.

use std::time::Duration;

use mongodb::bson::{DateTime, Document, doc};

use crate::helpers::spawn_pipeline;

#[tokio::test]
async fn the_processor_deletes_inbox_entries_past_their_retention() {
    let pipeline = spawn_pipeline(30).await;
    let inbox = pipeline.db.collection::<Document>("inbox");
    let now = DateTime::now().timestamp_millis();
    inbox
        .insert_many([
            doc! { "_id": "past", "order_id": "o1", "handled_at": DateTime::from_millis(now - 10_000),
                   "expires_at": DateTime::from_millis(now - 1_000) },
            doc! { "_id": "within", "order_id": "o2", "handled_at": DateTime::from_millis(now),
                   "expires_at": DateTime::from_millis(now + 3_600_000) },
        ])
        .await
        .expect("insert");

    test_support::until_deleted(&inbox, "past", Duration::from_secs(10)).await;
    let kept = inbox
        .find_one(doc! { "_id": "within" })
        .await
        .expect("query");
    assert!(kept.is_some(), "an entry inside its retention was deleted");
}
