//! What an operator sees: metrics that move as an order flows, a timeline
//! that shows every step, one trace id from the API's log to the
//! processor's, and a dashboard that only charts metrics that exist.

use std::{collections::BTreeSet, time::Duration};

use serde_json::Value;
use test_support::metrics::{Metrics, scrape};

use crate::helpers::spawn_pipeline;

/// `after` minus `before` for one series (summed over matching labels).
fn grew(before: &Metrics, after: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.value(name, labels) - before.value(name, labels)
}

#[tokio::test]
async fn metrics_move_as_an_order_flows_through_both_services() {
    let pipeline = spawn_pipeline(30).await;
    let api = pipeline.api.metrics_address();
    let processor = pipeline
        .processor
        .as_ref()
        .expect("running")
        .metrics_address();
    let admin = pipeline.admin_token().await;
    let (_, customer) = pipeline.customer().await;
    let product = pipeline.product(&admin, 2_500, 5).await;
    let api_before = scrape(&api).await;
    let processor_before = scrape(&processor).await;

    let order = pipeline.order(&customer, &product, 1).await;
    let order_id = order["id"].as_str().expect("id").to_string();
    pipeline.wait_processed(&customer, &order_id).await;

    // Other tests in this process share the recorder: counts only grow, so
    // each check is "at least this order's share".
    let api_after = test_support::eventually(
        Duration::from_secs(10),
        "order-api's metrics to count the order",
        || async {
            let now = scrape(&api).await;
            (grew(
                &api_before,
                &now,
                "outbox_published_total",
                &[("event_type", "order.created")],
            ) >= 1.0)
                .then_some(now)
        },
    )
    .await;
    let created = [
        ("method", "POST"),
        ("route", "/api/orders"),
        ("status", "201"),
    ];
    assert!(grew(&api_before, &api_after, "orders_created_total", &[]) >= 1.0);
    assert!(grew(&api_before, &api_after, "http_requests_total", &created) >= 1.0);
    assert!(
        grew(
            &api_before,
            &api_after,
            "http_request_duration_seconds",
            &created
        ) >= 1.0
    );
    assert!(
        grew(
            &api_before,
            &api_after,
            "outbox_publish_latency_seconds",
            &[]
        ) >= 1.0
    );
    assert!(
        api_after.has(
            "http_request_duration_seconds",
            &[("route", "/api/orders/{id}"), ("method", "GET")]
        ),
        "reads are labelled by the route template:\n{}",
        api_after.text
    );
    assert!(
        !api_after.text.contains(&order_id),
        "no raw id in a label:\n{}",
        api_after.text
    );
    assert_eq!(api_after.value("outbox_backlog_read_ok", &[]), 1.0);
    assert!(api_after.has("outbox_pending_rows", &[]));
    assert!(api_after.has("outbox_oldest_pending_age_seconds", &[]));

    // The consumer counts a message as handled after its last write, so the
    // order can read as processed a moment before the counter moves.
    let processor_after = test_support::eventually(
        Duration::from_secs(10),
        "order-processor's metrics to count the message as handled",
        || async {
            let now = scrape(&processor).await;
            (grew(
                &processor_before,
                &now,
                "consumer_messages_handled_total",
                &[("outcome", "processed")],
            ) >= 1.0)
                .then_some(now)
        },
    )
    .await;
    let grew_p = |name, labels| grew(&processor_before, &processor_after, name, labels);
    assert!(grew_p("consumer_messages_received_total", &[]) >= 1.0);
    assert!(grew_p("emails_sent_total", &[("kind", "confirmation")]) >= 1.0);
    assert!(grew_p("email_send_attempts_total", &[("kind", "confirmation")]) >= 1.0);
    assert!(grew_p("email_send_duration_seconds", &[("kind", "confirmation")]) >= 1.0);
    assert!(
        grew_p(
            "consumer_event_age_seconds",
            &[("event_type", "order.created")]
        ) >= 1.0
    );
    assert!(grew_p("consumer_handle_duration_seconds", &[]) >= 1.0);
    assert_eq!(processor_after.value("sqs_queue_read_ok", &[]), 1.0);
    assert!(processor_after.has("sqs_queue_messages", &[("queue", "dead_letter")]));
    assert!(processor_after.has(
        "emails_failed_total",
        &[("kind", "confirmation"), ("reason", "refused")]
    ));
}

/// `/metrics` tells a shop's order rates, its backlog and its email
/// provider's state: neither the API's public port nor the processor's
/// health port answers it; each service's metrics listener does.
#[tokio::test]
async fn metrics_are_served_only_on_their_own_listener() {
    let pipeline = spawn_pipeline(30).await;
    let processor = pipeline.processor.as_ref().expect("running");
    for (service, public, metrics) in [
        (
            "order-api",
            pipeline.api.address(),
            pipeline.api.metrics_address(),
        ),
        (
            "order-processor",
            processor.address(),
            processor.metrics_address(),
        ),
    ] {
        assert_ne!(public, metrics, "{service}: one listener for both");
        let on_public = reqwest::get(format!("{public}/metrics"))
            .await
            .expect("GET /metrics on the public port");
        assert_eq!(on_public.status(), 404, "{service}: /metrics on {public}");
        let scraped = scrape(&metrics).await;
        assert!(
            !scraped.names().is_empty(),
            "{service}: nothing exported on {metrics}"
        );
    }
}

#[tokio::test]
async fn a_dead_lettered_message_shows_in_the_dlq_depth() {
    let pipeline = spawn_pipeline(30).await;
    let processor = pipeline
        .processor
        .as_ref()
        .expect("running")
        .metrics_address();
    let before = scrape(&processor).await;
    pipeline.send_raw("this is not an order event").await;

    // The consumer sends to the DLQ, deletes from the main queue, and only
    // then counts, so a scrape can see the depth before the counter: wait
    // for both rather than asserting on the first scrape that shows either.
    let after = test_support::eventually(
        Duration::from_secs(15),
        "the garbage message to be dead-lettered and counted",
        || async {
            let now = scrape(&processor).await;
            let in_dlq = now.value("sqs_queue_messages", &[("queue", "dead_letter")]) >= 1.0;
            let counted = grew(&before, &now, "consumer_messages_dead_lettered_total", &[]) >= 1.0;
            (in_dlq && counted).then_some(now)
        },
    )
    .await;
    assert!(
        grew(
            &before,
            &after,
            "consumer_message_failures_total",
            &[("kind", "unparseable")]
        ) >= 1.0
    );
}

#[tokio::test]
async fn the_timeline_shows_when_the_event_was_published_and_processed() {
    let pipeline = spawn_pipeline(30).await;
    let admin = pipeline.admin_token().await;
    let (_, customer) = pipeline.customer().await;
    let product = pipeline.product(&admin, 1_000, 5).await;
    let order = pipeline.order(&customer, &product, 1).await;
    let order_id = order["id"].as_str().expect("id");
    pipeline.wait_processed(&customer, order_id).await;

    let timeline = test_support::eventually(
        Duration::from_secs(10),
        "the timeline to show the publication",
        || async {
            let (_, timeline) = pipeline
                .get_json(&format!("/api/orders/{order_id}/events"), &customer)
                .await;
            let events = timeline["events"].as_array()?.clone();
            events
                .iter()
                .any(|e| e["event"] == "published")
                .then_some(events)
        },
    )
    .await;
    let names: Vec<&str> = timeline
        .iter()
        .filter_map(|e| e["event"].as_str())
        .collect();
    for expected in [
        "placed",
        "published",
        "processing",
        "processed",
        "confirmation_sent",
    ] {
        assert_eq!(
            names.iter().filter(|n| **n == expected).count(),
            1,
            "{expected} once in {names:?}"
        );
    }
    let published = timeline
        .iter()
        .find(|e| e["event"] == "published")
        .expect("published");
    assert_eq!(published["detail"], "order.created");
    let times: Vec<chrono::DateTime<chrono::FixedOffset>> = timeline
        .iter()
        .filter_map(|e| chrono::DateTime::parse_from_rfc3339(e["at"].as_str()?).ok())
        .collect();
    assert_eq!(times.len(), timeline.len(), "every entry has a time");
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "oldest first: {timeline:?}"
    );
    assert_eq!(names.first(), Some(&"placed"));
}

/// Every metric a dashboard panel queries, from its PromQL expressions:
/// selectors' label matchers and `by (...)` clauses removed, functions and
/// keywords dropped, histogram suffixes stripped.
fn metrics_in_dashboard(dashboard: &Value) -> BTreeSet<String> {
    const PROMQL: &[&str] = &[
        "sum",
        "rate",
        "irate",
        "increase",
        "by",
        "without",
        "histogram_quantile",
        "max",
        "min",
        "avg",
        "count",
        "clamp_min",
        "topk",
        "or",
        "and",
        "unless",
        "on",
        "ignoring",
        "vector",
        "offset",
        "time",
        "abs",
        "label_replace",
        "group_left",
        "group_right",
    ];
    let mut exprs = Vec::new();
    collect_exprs(dashboard, &mut exprs);
    assert!(!exprs.is_empty(), "the dashboard has queries");
    let selector =
        regex_lite::Regex::new(r"\{[^}]*\}|\[[^\]]*\]|(by|without)\s*\([^)]*\)").expect("regex");
    let identifier = regex_lite::Regex::new(r"[a-zA-Z_][a-zA-Z0-9_]*").expect("regex");
    let mut names = BTreeSet::new();
    for expr in exprs {
        let bare = selector.replace_all(&expr, " ");
        for token in identifier.find_iter(&bare).map(|m| m.as_str()) {
            if PROMQL.contains(&token) || token.chars().all(|c| c.is_ascii_digit()) {
                continue;
            }
            let name = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| token.strip_suffix(suffix))
                .unwrap_or(token);
            names.insert(name.to_string());
        }
    }
    names
}

fn collect_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", Value::String(expr)) => out.push(expr.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_dashboard_charts_only_metrics_the_services_export() {
    let dashboard: Value = serde_json::from_str(include_str!(
        "../../../observability/grafana/dashboards/order-pipeline.json"
    ))
    .expect("the dashboard is JSON");
    let pipeline = spawn_pipeline(30).await;
    let api = scrape(&pipeline.api.metrics_address()).await;
    let processor = scrape(
        &pipeline
            .processor
            .as_ref()
            .expect("running")
            .metrics_address(),
    )
    .await;
    let exported: BTreeSet<String> = api.names().into_iter().chain(processor.names()).collect();

    let charted = metrics_in_dashboard(&dashboard);
    let missing: Vec<_> = charted.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics nobody exports: {missing:?}\nexported: {exported:?}"
    );
    for needed in [
        "http_requests_total",
        "outbox_oldest_pending_age_seconds",
        "sqs_queue_messages",
        "emails_failed_total",
    ] {
        assert!(charted.contains(needed), "the dashboard charts {needed}");
    }
}

/// Every `trace_id` on the JSON log lines that mention `order_id`.
fn trace_ids_for(logs: &str, order_id: &str) -> BTreeSet<String> {
    fn collect(value: &Value, out: &mut BTreeSet<String>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("trace_id", Value::String(id)) => {
                            out.insert(id.clone());
                        }
                        _ => collect(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    let mut ids = BTreeSet::new();
    for line in logs.lines().filter(|l| l.contains(order_id)) {
        if let Ok(json) = serde_json::from_str::<Value>(line) {
            collect(&json, &mut ids);
        }
    }
    ids
}

/// Log lines written in this test process, once `capture_logs` has run.
static LOGS: std::sync::OnceLock<std::sync::Arc<std::sync::Mutex<Vec<u8>>>> =
    std::sync::OnceLock::new();

struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut all) = self.0.lock() {
            all.extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the services' own telemetry (JSON lines, OpenTelemetry) in this
/// test process, writing to a buffer, and returns what it captured so far.
fn capture_logs() -> String {
    let buffer = LOGS.get_or_init(|| {
        let buffer = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = buffer.clone();
        common::telemetry::init_telemetry_writing_to("order-api", "info", true, move || {
            Capture(sink.clone())
        })
        .expect("telemetry installs");
        buffer
    });
    let bytes = buffer.lock().map(|b| b.clone()).unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test]
async fn one_trace_id_follows_an_order_from_the_api_log_to_the_processor_log() {
    use test_support::process::{free_port, service_env, spawn, terminate};

    test_support::require_stack().await;
    // order-api runs in this process, logging through the services' own
    // telemetry into a buffer; order-processor is the real binary, so the
    // trace crosses SQS between two processes.
    capture_logs();
    let database = test_support::unique("trace").replace('-', "_");
    let queue = test_support::unique("trace");
    let sqs = test_support::sqs_client().await;
    test_support::create_queues(&sqs, &queue, 30).await;
    let api =
        test_support::apps::start_api(test_support::apps::api_config(&database, &queue)).await;
    let collector = OtlpCollector::start().await;
    let mut processor_env = service_env(&database, &queue, free_port());
    processor_env.push((
        "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
        collector.endpoint(),
    ));
    let processor = spawn(env!("CARGO_BIN_EXE_order-processor"), &processor_env);
    let client = test_support::client::ApiClient::new(&api.address());
    client.wait_ready(Duration::from_secs(30)).await;
    let admin = client
        .login(
            test_support::apps::ADMIN_EMAIL,
            test_support::apps::ADMIN_PASSWORD,
        )
        .await;
    let (_, customer) = client.customer().await;
    let product = client.product(&admin, 1_500, 3).await;
    let order = client.order(&customer, &product, 1).await;
    let order_id = order["id"].as_str().expect("id");
    client.wait_processed(&customer, order_id).await;

    let (_, processor_logs) = terminate(processor, Duration::from_secs(20)).await;
    let api_logs = capture_logs();
    let api_traces = trace_ids_for(&api_logs, order_id);
    assert_eq!(
        api_traces.len(),
        1,
        "one trace for the order in the API's log: {api_traces:?}\n{api_logs}"
    );
    let trace_id = api_traces.first().expect("one");
    assert_eq!(trace_id.len(), 32, "{trace_id}");
    let processor_traces = trace_ids_for(&processor_logs, order_id);
    assert_eq!(
        processor_traces.first(),
        Some(trace_id),
        "the processor's lines for order {order_id} carry the API's trace id {trace_id}: {processor_traces:?}\n{processor_logs}"
    );
    assert_eq!(processor_traces.len(), 1, "{processor_traces:?}");

    // The processor flushed its spans over OTLP/HTTP at shutdown, under its
    // service name, carrying the order's trace id (raw bytes in protobuf).
    let exports = collector.received();
    let trace_bytes = hex_bytes(trace_id);
    assert!(
        exports
            .iter()
            .any(|body| contains(body, b"order-processor") && contains(body, &trace_bytes)),
        "order-processor exported spans of trace {trace_id} over OTLP ({} exports received)",
        exports.len()
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

type Exports = std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>;

/// The receiving end of OTLP/HTTP at `/v1/traces`: keeps each export's
/// body for the test to read (a real collector accepts the same requests).
struct OtlpCollector {
    port: u16,
    received: Exports,
    _server: tokio::task::JoinHandle<()>,
}

impl OtlpCollector {
    async fn start() -> Self {
        use axum::{body::Bytes, extract::State, routing::post};
        let received = Exports::default();
        let app = axum::Router::new()
            .route(
                "/v1/traces",
                post(|State(store): State<Exports>, body: Bytes| async move {
                    if let Ok(mut all) = store.lock() {
                        all.push(body.to_vec());
                    }
                }),
            )
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let port = listener.local_addr().expect("bound").port();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        OtlpCollector {
            port,
            received,
            _server: server,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn received(&self) -> Vec<Vec<u8>> {
        self.received
            .lock()
            .map(|all| all.clone())
            .unwrap_or_default()
    }
}
