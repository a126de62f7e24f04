//! The relay on its own database and queue: leases between competing
//! relays, FIFO queues, retention, the sweep, and when accepted rows are
//! marked published.

use std::{collections::HashSet, time::Duration};

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use common::event::OrderEventType;
use futures::TryStreamExt;
use mongodb::{
    Database,
    bson::{DateTime, doc, oid::ObjectId},
};
use order_api::{
    config::OutboxConfig,
    outbox::{
        Relay,
        store::{self, OutboxStatus},
    },
};
use test_support::{apps, unique};

struct Bench {
    db: Database,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    config: OutboxConfig,
}

impl Bench {
    fn relay(&self) -> Relay {
        Relay::new(
            self.db.clone(),
            self.sqs.clone(),
            self.queue_url.clone(),
            &self.config,
        )
    }
}

async fn bench() -> Bench {
    test_support::require_stack().await;
    let database = unique("relay").replace('-', "_");
    let db = common::mongo::connect(&test_support::mongo_config(&database), "relay-test")
        .await
        .expect("connect");
    store::create_indexes(&db).await.expect("indexes");
    let sqs = test_support::sqs_client().await;
    let queues = test_support::create_queues(&sqs, &unique("relay"), 30).await;
    Bench {
        db,
        sqs,
        queue_url: queues.queue_url,
        config: apps::api_config(&database, "unused").outbox,
    }
}

/// Writes `n` order.created rows nobody holds, as committed orders whose
/// relay died would leave them.
async fn enqueue(db: &Database, n: usize) -> Vec<ObjectId> {
    let orders = (0..n).map(|_| (ObjectId::new(), None));
    let rows = store::rows_for(orders, OrderEventType::OrderCreated, DateTime::now());
    store::collection(db)
        .insert_many(&rows)
        .await
        .expect("enqueue");
    rows.iter().map(|row| row.order_id).collect()
}

/// Every outbox row of `db`.
async fn all_rows(db: &Database) -> Vec<store::OutboxMessage> {
    store::collection(db)
        .find(doc! {})
        .await
        .expect("query")
        .try_collect()
        .await
        .expect("rows")
}

async fn drain(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> Vec<aws_sdk_sqs::types::Message> {
    let mut all = Vec::new();
    for _ in 0..20 {
        let out = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .expect("receive");
        if out.messages().is_empty() {
            break;
        }
        all.extend(out.messages().iter().cloned());
    }
    all
}

#[tokio::test]
async fn two_relays_racing_publish_every_row_exactly_once() {
    let bench = bench().await;
    enqueue(&bench.db, 40).await;
    let a = bench.relay();
    let b = bench.relay();
    let run = |relay: Relay| async move {
        let mut published = 0;
        for _ in 0..20 {
            let outcome = relay.publish_step().await.expect("publishes");
            published += outcome.published;
            if outcome.published == 0 && !outcome.more_pending {
                break;
            }
        }
        published
    };
    let (from_a, from_b) = tokio::join!(run(a), run(b));
    assert_eq!(from_a + from_b, 40, "a={from_a} b={from_b}");

    let messages = drain(&bench.sqs, &bench.queue_url).await;
    let ids: HashSet<String> = messages.iter().filter_map(|m| m.body.clone()).collect();
    assert_eq!(messages.len(), 40, "no row sent twice");
    assert_eq!(ids.len(), 40);
    let pending = store::collection(&bench.db)
        .count_documents(doc! { "status": "PENDING" })
        .await
        .expect("count");
    assert_eq!(pending, 0);
}

#[tokio::test]
async fn a_dead_relays_rows_are_taken_over_when_its_lease_runs_out() {
    let bench = bench().await;
    enqueue(&bench.db, 3).await;
    // A relay that claimed the rows and died: its lease runs for 2 more seconds.
    let dead = "dead-instance:batch";
    let until = DateTime::from_millis(DateTime::now().timestamp_millis() + 2_000);
    store::collection(&bench.db)
        .update_many(
            doc! {},
            doc! { "$set": { "lease_owner": dead, "lease_until": until } },
        )
        .await
        .expect("claim");

    let relay = bench.relay();
    assert_eq!(
        relay.publish_step().await.expect("step").published,
        0,
        "leased rows are left alone"
    );
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        relay.publish_step().await.expect("step").published,
        3,
        "expired leases are taken over"
    );

    // The dead relay, come back, cannot mark what it no longer owns.
    let row = store::collection(&bench.db)
        .find_one(doc! {})
        .await
        .expect("query")
        .expect("row");
    assert_eq!(row.status, OutboxStatus::Published);
    let marked = store::mark_published(
        &bench.db,
        dead,
        &[(row.id, "late")],
        Duration::from_secs(60),
    )
    .await
    .expect("update");
    assert!(marked.is_empty());
}

#[tokio::test]
async fn a_stopping_relay_lets_go_of_its_rows_and_only_its_own() {
    let bench = bench().await;
    let (stopping, other) = (bench.relay(), bench.relay());
    let orders = enqueue(&bench.db, 4).await;
    // Two rows held by each relay, each under a claim of its own.
    for (i, order) in orders.iter().enumerate() {
        let holder = if i % 2 == 0 { &stopping } else { &other };
        let owner = format!("{}:claim-{i}", holder.instance());
        let until = DateTime::from_millis(DateTime::now().timestamp_millis() + 30_000);
        store::collection(&bench.db)
            .update_one(
                doc! { "order_id": order },
                doc! { "$set": { "lease_owner": owner, "lease_until": until } },
            )
            .await
            .expect("lease");
    }

    stopping.release().await;
    let rows = all_rows(&bench.db).await;
    for (i, order) in orders.iter().enumerate() {
        let row = rows.iter().find(|r| r.order_id == *order).expect("row");
        assert_eq!(
            row.lease_owner.is_none(),
            i % 2 == 0,
            "only the stopping relay's rows are let go: {row:?}"
        );
    }
}

#[tokio::test]
async fn a_relay_told_to_stop_finishes_its_step_and_starts_no_other() {
    let bench = bench().await;
    // More than one recovery claim takes (five SQS batches of 10).
    enqueue(&bench.db, 120).await;
    let relay = bench.relay();
    let shutdown = tokio_util::sync::CancellationToken::new();
    shutdown.cancel();
    order_api::outbox::relay::run(relay, shutdown).await;
    let published = store::collection(&bench.db)
        .count_documents(doc! { "status": "PUBLISHED" })
        .await
        .expect("count");
    assert_eq!(published, 50, "the first step only, not the whole backlog");
}

#[tokio::test]
async fn published_rows_carry_their_expiry() {
    let bench = bench().await;
    enqueue(&bench.db, 1).await;
    let relay = bench.relay();
    relay.publish_step().await.expect("publishes");
    let row = store::collection(&bench.db)
        .find_one(doc! {})
        .await
        .expect("query")
        .expect("row");
    let published = row.published_at.expect("published_at").timestamp_millis();
    let expires = row.expire_at.expect("expire_at").timestamp_millis();
    let retention_ms = i64::try_from(bench.config.retention.as_millis()).expect("fits");
    assert_eq!(expires - published, retention_ms);
    assert!(row.lease_owner.is_none(), "the lease is let go");

    let indexes = store::collection(&bench.db)
        .list_index_names()
        .await
        .expect("indexes");
    assert!(
        indexes.iter().any(|i| i.starts_with("expire_at")),
        "{indexes:?}"
    );
}

#[tokio::test]
async fn each_published_row_records_the_sqs_id_of_its_own_message() {
    let bench = bench().await;
    enqueue(&bench.db, 7).await;
    let relay = bench.relay();
    assert_eq!(relay.publish_step().await.expect("step").published, 7);

    let sent: HashSet<(String, String)> = drain(&bench.sqs, &bench.queue_url)
        .await
        .iter()
        .map(|m| {
            let event_id = common::event::OrderEvent::from_json(m.body().expect("body"))
                .expect("an order event")
                .event_id;
            (event_id, m.message_id().expect("message id").to_string())
        })
        .collect();
    let mut rows = store::collection(&bench.db)
        .find(doc! {})
        .await
        .expect("query");
    let mut recorded = HashSet::new();
    while rows.advance().await.expect("row") {
        let row = rows.deserialize_current().expect("decode");
        assert_eq!(row.status, OutboxStatus::Published);
        assert_eq!(row.attempts, 1);
        recorded.insert((row.id.to_hex(), row.sqs_message_id.expect("sqs_message_id")));
    }
    assert_eq!(recorded.len(), 7);
    assert_eq!(recorded, sent, "each row names the message that carried it");
}

#[tokio::test]
async fn fifo_queues_get_the_order_as_group_and_the_row_as_dedup_id() {
    let bench = bench().await;
    let name = format!("{}.fifo", unique("orders"));
    let fifo_url = bench
        .sqs
        .create_queue()
        .queue_name(&name)
        .attributes(QueueAttributeName::FifoQueue, "true")
        .send()
        .await
        .expect("fifo queue")
        .queue_url
        .expect("url");
    let orders = enqueue(&bench.db, 2).await;
    let relay = Relay::new(
        bench.db.clone(),
        bench.sqs.clone(),
        fifo_url.clone(),
        &bench.config,
    );
    assert_eq!(relay.publish_step().await.expect("publishes").published, 2);

    // Sent again (say a relay lost its lease after sending): deduplicated.
    store::collection(&bench.db)
        .update_many(doc! {}, doc! { "$set": { "status": "PENDING" } })
        .await
        .expect("reset");
    assert_eq!(relay.publish_step().await.expect("publishes").published, 2);

    let messages = drain(&bench.sqs, &fifo_url).await;
    assert_eq!(messages.len(), 2, "the resend was deduplicated");
    let groups: HashSet<String> = messages
        .iter()
        .filter_map(|m| {
            m.attributes()?
                .get(&MessageSystemAttributeName::MessageGroupId)
                .cloned()
        })
        .collect();
    let expected: HashSet<String> = orders.iter().map(|o| o.to_hex()).collect();
    assert_eq!(groups, expected);
}

/// What SQS accepted is marked published before the step returns: no row
/// it sent waits for a later write, so a crash after a step resends
/// nothing.
#[tokio::test]
async fn a_step_marks_what_it_sent_before_it_returns() {
    let bench = bench().await;
    enqueue(&bench.db, 3).await;
    let outcome = bench.relay().publish_step().await.expect("publishes");
    assert_eq!((outcome.published, outcome.more_pending), (3, false));
    for row in all_rows(&bench.db).await {
        assert_eq!(row.status, OutboxStatus::Published, "{row:?}");
        assert!(
            row.published_at.is_some() && row.lease_owner.is_none(),
            "{row:?}"
        );
    }
    assert_eq!(drain(&bench.sqs, &bench.queue_url).await.len(), 3);
}
