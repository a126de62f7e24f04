use std::time::Duration;

use mongodb::{
    Database,
    bson::{Document, doc},
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use test_support::{
    TestQueues,
    apps::{self, ADMIN_EMAIL, ADMIN_PASSWORD, Running},
    unique,
};

pub const PASSWORD: &str = "s3cure-passw0rd";

pub struct Pipeline {
    pub http: reqwest::Client,
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
    test_support::require_stack().await;
    let database = unique("pipeline").replace('-', "_");
    let queue = unique("orders");
    let sqs = test_support::sqs_client().await;
    let queues = test_support::create_queues(&sqs, &queue, visibility_secs).await;
    let db = common::mongo::connect(&test_support::mongo_config(&database), "pipeline-test")
        .await
        .expect("connecting to MongoDB");
    let api = apps::start_api(apps::api_config(&database, &queue)).await;
    let processor = apps::start_processor(apps::processor_config(&database, &queue)).await;
    Pipeline {
        http: reqwest::Client::new(),
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

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api.address())
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> (StatusCode, Value) {
        let mut request = self.http.post(self.url(path)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request sent");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn login(&self, email: &str, password: &str) -> String {
        let (status, body) = self
            .post(
                "/api/auth/login",
                None,
                &json!({ "email": email, "password": password }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "login as {email}: {body}");
        body["accessToken"]
            .as_str()
            .expect("accessToken")
            .to_string()
    }

    pub async fn admin_token(&self) -> String {
        self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await
    }

    /// Registers and logs in a customer with a unique email.
    pub async fn customer(&self) -> (String, String) {
        let name = unique("buyer");
        let email = format!("{name}@shop.test");
        let (status, body) = self
            .post(
                "/api/auth/register",
                None,
                &json!({ "username": &name[..20], "email": email, "password": PASSWORD }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "register: {body}");
        let token = self.login(&email, PASSWORD).await;
        (email, token)
    }

    pub async fn product(&self, admin: &str, price: i64, stock: i64) -> String {
        let sku = unique("SKU");
        let (status, body) = self
            .post(
                "/api/products",
                Some(admin),
                &json!({ "name": format!("Widget {sku}"), "sku": sku, "price": price, "stock": stock }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "create product: {body}");
        body["id"].as_str().expect("id").to_string()
    }

    pub async fn order(&self, token: &str, product: &str, quantity: u32) -> Value {
        let (status, body) = self
            .post(
                "/api/orders",
                Some(token),
                &json!({ "items": [{ "productId": product, "quantity": quantity }] }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "place order: {body}");
        body
    }

    /// Waits until the order is PROCESSED with its email settled.
    pub async fn wait_processed(&self, token: &str, order_id: &str) -> Value {
        test_support::eventually(
            Duration::from_secs(20),
            "the order to be PROCESSED with its email SENT",
            || async {
                let (_, order) = self.get(&format!("/api/orders/{order_id}"), token).await;
                (order["status"] == "PROCESSED" && order["email"]["status"] == "SENT")
                    .then_some(order)
            },
        )
        .await
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
