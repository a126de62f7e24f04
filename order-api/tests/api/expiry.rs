//! What expires is deleted by the scheduled sweep (`common::expiry`), and
//! nothing else is.

use std::time::Duration;

use bson::{DateTime, Document, doc};
use common::expiry::{CHUNK, Expiring};
use futures::TryStreamExt;
use mongodb::{IndexModel, options::IndexOptions};

use crate::helpers::spawn_app;

fn ago(seconds: i64) -> DateTime {
    DateTime::from_millis(DateTime::now().timestamp_millis() - seconds * 1000)
}

fn from_now(seconds: i64) -> DateTime {
    ago(-seconds)
}

#[tokio::test]
async fn only_documents_whose_time_has_passed_are_deleted() {
    let app = spawn_app().await;
    let collection = app.db.collection::<Document>("expiry_probe");
    collection
        .insert_many([
            doc! { "_id": "passed", "expires_at": ago(5) },
            doc! { "_id": "later", "expires_at": from_now(3600) },
            doc! { "_id": "no time", "status": "PENDING" },
            doc! { "_id": "null time", "expires_at": null },
        ])
        .await
        .expect("insert");
    let expiring = Expiring::new(&app.db, "expiry_probe", "expires_at");

    let deleted = expiring
        .delete_expired(DateTime::now())
        .await
        .expect("sweep");

    assert_eq!(deleted, 1);
    let mut left: Vec<String> = collection
        .distinct("_id", doc! {})
        .await
        .expect("ids")
        .into_iter()
        .map(|id| id.as_str().expect("string id").to_string())
        .collect();
    left.sort();
    assert_eq!(left, ["later", "no time", "null time"]);
}

#[tokio::test]
async fn a_backlog_larger_than_one_chunk_goes_in_one_sweep() {
    let app = spawn_app().await;
    let collection = app.db.collection::<Document>("expiry_backlog");
    let backlog = CHUNK + 7;
    collection
        .insert_many((0..backlog).map(|i| doc! { "n": i as i64, "expire_at": ago(60) }))
        .await
        .expect("insert");

    let deleted = Expiring::new(&app.db, "expiry_backlog", "expire_at")
        .delete_expired(DateTime::now())
        .await
        .expect("sweep");

    assert_eq!(deleted, backlog as u64);
    assert_eq!(collection.count_documents(doc! {}).await.expect("count"), 0);
}

#[tokio::test]
async fn a_ttl_index_from_an_earlier_version_is_replaced_by_a_plain_one() {
    let app = spawn_app().await;
    let collection = app.db.collection::<Document>("expiry_migration");
    collection
        .create_index(
            IndexModel::builder()
                .keys(doc! { "expires_at": 1 })
                .options(
                    IndexOptions::builder()
                        .expire_after(Duration::from_secs(0))
                        .build(),
                )
                .build(),
        )
        .await
        .expect("the old TTL index");
    let expiring = Expiring::new(&app.db, "expiry_migration", "expires_at");

    expiring.create_index().await.expect("first start");
    expiring.create_index().await.expect("second start");

    let indexes: Vec<IndexModel> = collection
        .list_indexes()
        .await
        .expect("indexes")
        .try_collect()
        .await
        .expect("indexes");
    let on_field: Vec<&IndexModel> = indexes
        .iter()
        .filter(|i| i.keys == doc! { "expires_at": 1 })
        .collect();
    assert_eq!(on_field.len(), 1, "{indexes:?}");
    assert!(
        on_field[0]
            .options
            .as_ref()
            .is_none_or(|o| o.expire_after.is_none()),
        "still a TTL index: {on_field:?}"
    );
}

#[tokio::test]
async fn the_api_deletes_expired_outbox_rows_tokens_and_keys_on_its_schedule() {
    let app = spawn_app().await;
    let expired = [
        ("outbox", "expire_at"),
        ("refresh_tokens", "expires_at"),
        ("idempotency_keys", "expires_at"),
    ];
    for (name, field) in expired {
        app.db
            .collection::<Document>(name)
            .insert_many([
                doc! { "_id": "gone", "status": "PUBLISHED", field: ago(1) },
                doc! { "_id": "kept", "status": "PUBLISHED", field: from_now(3600) },
            ])
            .await
            .expect("insert");
    }

    for (name, _) in expired {
        let collection = app.db.collection::<Document>(name);
        test_support::until_deleted(&collection, "gone", Duration::from_secs(10)).await;
        let kept = collection
            .find_one(doc! { "_id": "kept" })
            .await
            .expect("query");
        assert!(kept.is_some(), "{name}: a document not yet due was deleted");
    }
}
