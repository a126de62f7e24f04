//! An election under the relay (in order-api) and under the processor,
//! driven by the real server's `failCommand` fail point on one service's
//! connections at a time: both carry on, nothing is dead-lettered, and the
//! customer gets one confirmation.

use std::time::Duration;

use secrecy::SecretString;
use test_support::{
    fail_point::{fail, named_uri},
    unique,
};

use crate::helpers::spawn_pipeline_with;

#[tokio::test]
async fn an_election_under_the_relay_and_the_processor_loses_nothing() {
    let api_name = unique("relay-election");
    let processor_name = unique("processor-election");
    let (api_uri, processor_uri) = (named_uri(&api_name), named_uri(&processor_name));
    let pipeline = spawn_pipeline_with(
        30,
        |api| api.mongo.uri = SecretString::from(api_uri),
        |processor| processor.mongo.uri = SecretString::from(processor_uri),
    )
    .await;
    let admin = pipeline.admin_token().await;
    let (email, customer) = pipeline.customer().await;
    let product = pipeline.product(&admin, 1_000, 10).await;

    let mut orders = Vec::new();
    for (name, code, errmsg, commands) in [
        // The processor's statements: its claim, its order's change, its
        // commit, the email's records.
        (
            &processor_name,
            11602,
            "InterruptedDueToReplStateChange",
            &[
                "find",
                "update",
                "findAndModify",
                "bulkWrite",
                "commitTransaction",
            ][..],
        ),
        // The relay's marks (the order's own writes are a bulkWrite).
        (&api_name, 10107, "NotWritablePrimary", &["update"][..]),
    ] {
        let electing = fail(
            name,
            commands,
            Some(2),
            bson::doc! { "errorCode": code, "errmsg": errmsg },
        )
        .await;
        let order = pipeline.order(&customer, &product, 1).await;
        let id = order["id"].as_str().expect("id").to_string();
        // After a state-change error the driver forgets the primary until
        // its monitor finds one again, and the workers back off meanwhile,
        // as they would through a real election.
        test_support::eventually(
            Duration::from_secs(60),
            &format!("order {id}'s confirmation to be SENT"),
            || async {
                let order = pipeline.order_document(&id).await;
                let status = order.get_document("email").ok()?.get_str("status").ok()?;
                (status == "SENT").then_some(())
            },
        )
        .await;
        electing.off().await;
        orders.push(id);
    }

    // Give a stray duplicate the chance to show up before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        test_support::emails_to(&email).await.len(),
        orders.len(),
        "one confirmation per order"
    );
    let dead = test_support::receive_bodies(&pipeline.sqs, &pipeline.queues.dlq_url, 10).await;
    assert!(dead.is_empty(), "nothing dead-lettered: {dead:?}");
    for id in &orders {
        let order = pipeline.order_document(id).await;
        assert_eq!(order.get_str("status").expect("status"), "PROCESSED");
    }
}
