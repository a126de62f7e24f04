use std::time::Duration;

use mongodb::{
    Database,
    bson::{Document, doc},
};
use test_support::{
    TestQueues,
    apps::{self, Running},
    client::ApiClient,
    unique,
};

pub struct Pipeline {
    client: ApiClient,
    pub db: Database,
    pub sqs: aws_sdk_sqs::Client,
    pub queues: TestQueues,
    pub database: String,
    pub queue: String,
    pub api: Running,
    pub processor: Option<Running>,
}

/// Starts both services on one fresh database and queue. `visibility_secs`
/// is the queue's visibility timeout: short where a test waits on redelivery.
pub async fn spawn_pipeline(visibility_secs: u32) -> Pipeline {
    spawn_pipeline_with(visibility_secs, |_| {}, |_| {}).await
}

/// [`spawn_pipeline`] with each service's test configuration changed first.
pub async fn spawn_pipeline_with(
    visibility_secs: u32,
    configure_api: impl FnOnce(&mut order_api::config::ApiConfig),
    configure_processor: impl FnOnce(&mut order_processor::config::ProcessorConfig),
) -> Pipeline {
    test_support::require_stack().await;
    let database = unique("pipeline").replace('-', "_");
    let queue = unique("orders");
    let sqs = test_support::sqs_client().await;
    let queues = test_support::create_queues(&sqs, &queue, visibility_secs).await;
    let db = common::mongo::connect(&test_support::mongo_config(&database), "pipeline-test")
        .await
        .expect("connecting to MongoDB");
    let mut api_config = apps::api_config(&database, &queue);
    configure_api(&mut api_config);
    let mut processor_config = apps::processor_config(&database, &queue);
    configure_processor(&mut processor_config);
    let api = apps::start_api(api_config).await;
    let processor = apps::start_processor(processor_config).await;
    Pipeline {
        client: ApiClient::new(&api.address()),
        db,
        sqs,
        queues,
        database,
        queue,
        api,
        processor: Some(processor),
    }
}

/// [`spawn_pipeline`] with the background consumer stopped, for tests
/// that drive the consumer's step themselves.
pub async fn spawn_pipeline_without_processor(visibility_secs: u32) -> Pipeline {
    let mut pipeline = spawn_pipeline(visibility_secs).await;
    if let Some(processor) = pipeline.processor.take() {
        processor.stop().await;
    }
    pipeline
}

/// The client's calls and the shop's steps (test_support's one client).
impl std::ops::Deref for Pipeline {
    type Target = ApiClient;

    fn deref(&self) -> &ApiClient {
        &self.client
    }
}

impl Pipeline {
    /// Waits (up to 10 s) until the relay has published `events` messages
    /// to the main queue.
    pub async fn wait_until_queued(&self, events: u64) {
        test_support::eventually(
            std::time::Duration::from_secs(10),
            &format!("the relay to publish {events} events"),
            || async { (self.queue_depth().await == events).then_some(()) },
        )
        .await;
    }

    /// Waits (up to 20 s) until the order's `field` email (`email`,
    /// `cancellation_email`) is `status`; returns the order document.
    pub async fn until_email_status(&self, order_id: &str, field: &str, status: &str) -> Document {
        test_support::eventually(
            Duration::from_secs(20),
            &format!("order {order_id}'s {field} to be {status}"),
            || async {
                let order = self.order_document(order_id).await;
                let now = order.get_document(field).ok()?.get_str("status").ok()?;
                (now == status).then_some(order)
            },
        )
        .await
    }

    pub async fn order_document(&self, order_id: &str) -> Document {
        let id = mongodb::bson::oid::ObjectId::parse_str(order_id).expect("id");
        self.db
            .collection::<Document>("orders")
            .find_one(doc! { "_id": id })
            .await
            .expect("query")
            .expect("order exists")
    }

    /// Messages visible plus in flight on the main queue.
    pub async fn queue_depth(&self) -> u64 {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let attrs = self
            .sqs
            .get_queue_attributes()
            .queue_url(&self.queues.queue_url)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .expect("queue attributes")
            .attributes
            .unwrap_or_default();
        [
            A::ApproximateNumberOfMessages,
            A::ApproximateNumberOfMessagesNotVisible,
        ]
        .iter()
        .filter_map(|a| attrs.get(a)?.parse::<u64>().ok())
        .sum()
    }

    pub async fn send_raw(&self, body: &str) {
        self.sqs
            .send_message()
            .queue_url(&self.queues.queue_url)
            .message_body(body)
            .send()
            .await
            .expect("sending a raw message");
    }
}

/// How many times `event` (e.g. "processed") appears in the order's timeline.
pub fn times_in_timeline(order: &Document, event: &str) -> usize {
    order
        .get_array("timeline")
        .expect("timeline")
        .iter()
        .filter(|h| h.as_document().and_then(|d| d.get_str("event").ok()) == Some(event))
        .count()
}
