//! Email against a real SMTP server that behaves like MailTrap's sandbox
//! (test-support's MailtrapLike): AUTH required, its per-inbox rate limit
//! answered with its 550, refused logins, outages, STARTTLS with a CA the
//! test makes. What must hold whatever the mail server does: every email
//! arrives once, none is FAILED unless its recipient is refused, and no
//! queue message is dead-lettered for mail trouble.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use order_processor::config::{ProcessorConfig, SmtpTls};
use serde_json::Value;
use test_support::{
    apps::{self, Running},
    mailtrap::{MailtrapLike, MailtrapOptions},
};

use crate::helpers::{Pipeline, spawn_pipeline_without_processor};

/// The processor's settings for `server`, with its credentials.
fn config_for(pipeline: &Pipeline, server: &MailtrapLike) -> ProcessorConfig {
    let mut config = apps::processor_config(&pipeline.database, &pipeline.queue);
    config.smtp.host = server.host().into();
    config.smtp.port = server.smtp_port();
    config.smtp.username = Some(server.username().into());
    config.smtp.password = Some(server.password().to_string().into());
    config.smtp.timeout = Duration::from_secs(5);
    config
}

/// Places `count` one-unit orders for `customer`; returns their ids.
async fn place(pipeline: &Pipeline, customer: &str, product: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        let order = pipeline.order(customer, product, 1).await;
        ids.push(order["id"].as_str().expect("id").to_string());
    }
    ids
}

/// The API's view of each order's confirmation status.
async fn statuses(pipeline: &Pipeline, token: &str, ids: &[String]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for id in ids {
        let (_, order) = pipeline.get_json(&format!("/api/orders/{id}"), token).await;
        let status = order["email"]["status"].as_str().unwrap_or("?").to_string();
        *counts.entry(status).or_default() += 1;
    }
    counts
}

/// Waits until every one of `ids` has its confirmation SENT.
async fn until_all_sent(pipeline: &Pipeline, token: &str, ids: &[String], within: Duration) {
    test_support::eventually(within, "every confirmation to be SENT", || async {
        let counts = statuses(pipeline, token, ids).await;
        (counts.get("SENT") == Some(&ids.len())).then_some(())
    })
    .await;
}

/// Each order's confirmation is in the inbox exactly once.
async fn assert_one_message_per_order(server: &MailtrapLike, ids: &[String]) {
    let messages = server.messages().await;
    let mut per_order: BTreeMap<&str, usize> = BTreeMap::new();
    for message in &messages {
        let message_id = message.message_id.as_deref().unwrap_or_default();
        if let Some(id) = ids.iter().find(|id| message_id.contains(id.as_str())) {
            *per_order.entry(id.as_str()).or_default() += 1;
        }
    }
    let missing: Vec<&String> = ids
        .iter()
        .filter(|id| !per_order.contains_key(id.as_str()))
        .collect();
    let twice: Vec<(&&str, &usize)> = per_order.iter().filter(|(_, n)| **n > 1).collect();
    assert!(missing.is_empty(), "never arrived: {missing:?}");
    assert!(twice.is_empty(), "arrived more than once: {twice:?}");
}

/// When the server accepted its first and its last message (unix seconds).
async fn first_and_last(server: &MailtrapLike) -> (f64, f64) {
    server
        .messages()
        .await
        .iter()
        .fold((f64::INFINITY, 0.0), |(first, last), m| {
            (first.min(m.received_at), last.max(m.received_at))
        })
}

async fn dead_lettered(pipeline: &Pipeline) -> usize {
    test_support::receive_bodies(&pipeline.sqs, &pipeline.queues.dlq_url, 10)
        .await
        .len()
}

async fn readiness(processor: &Running) -> Value {
    reqwest::get(format!("{}/processor/api/ready", processor.address()))
        .await
        .expect("readiness answers")
        .json()
        .await
        .expect("JSON")
}

#[tokio::test]
async fn a_burst_past_the_inbox_rate_is_paced_and_every_email_arrives_once() {
    const ORDERS: usize = 40;
    const RATE: u32 = 5;
    let server = MailtrapLike::start(MailtrapOptions {
        rate: RATE,
        window_secs: 10,
        ..MailtrapOptions::default()
    })
    .await;
    let pipeline = spawn_pipeline_without_processor(30).await;
    let mut config = config_for(&pipeline, &server);
    config.smtp.rate_limit = std::num::NonZeroU32::new(RATE);
    config.smtp.rate_period = Duration::from_secs(10);
    let _processor = apps::start_processor(config).await;
    let admin = pipeline.admin_token().await;
    let (_, customer) = pipeline.customer().await;
    let product = pipeline.product(&admin, 250, ORDERS as i64).await;

    let ids = place(&pipeline, &customer, &product, ORDERS).await;
    until_all_sent(&pipeline, &customer, &ids, Duration::from_secs(240)).await;

    assert_one_message_per_order(&server, &ids).await;
    let counts = statuses(&pipeline, &customer, &ids).await;
    assert_eq!(counts.get("FAILED"), None, "{counts:?}");
    assert_eq!(dead_lettered(&pipeline).await, 0);
    // The rate's own limit, as the inbox sees it: after the first email,
    // one per 10 s / RATE. Measured on the server's clock, from the first
    // email it accepted to the last.
    let (first, last) = first_and_last(&server).await;
    let own_limit = (ORDERS as f64 - 1.0) * 10.0 / f64::from(RATE);
    let stats = server.stats().await;
    assert!(
        last - first <= own_limit * 1.2,
        "{ORDERS} emails took {:.1} s from the first to the last; the rate allows {own_limit:.1} s (+20%): {stats:?}",
        last - first
    );
    println!(
        "burst: {ORDERS} orders at {RATE} per 10 s: all SENT, first to last email {:.1} s (the rate's own limit {own_limit:.1} s), throttled replies {}",
        last - first,
        stats.throttled
    );
}

#[tokio::test]
async fn a_mail_server_gone_for_three_minutes_loses_nothing_and_needs_no_redrive() {
    let server = MailtrapLike::start(MailtrapOptions::default()).await;
    let pipeline = spawn_pipeline_without_processor(3).await;
    let mut config = config_for(&pipeline, &server);
    // The defaults a user runs with: the breaker's probes back off to 8 s.
    config.email.probe_base = Duration::from_secs(1);
    config.email.probe_cap = Duration::from_secs(8);
    config.email.retry_base = Duration::from_secs(5);
    config.email.retry_cap = Duration::from_secs(600);
    config.smtp.timeout = Duration::from_secs(2);
    let processor = apps::start_processor(config).await;
    let admin = pipeline.admin_token().await;
    let (_, customer) = pipeline.customer().await;
    let product = pipeline.product(&admin, 250, 20).await;

    server.go_down().await;
    let down_at = Instant::now();
    let mut ids = Vec::new();
    for wave in 0..3_u32 {
        ids.extend(place(&pipeline, &customer, &product, 5).await);
        tokio::time::sleep_until((down_at + Duration::from_secs(60) * (wave + 1)).into()).await;
    }
    // Three minutes down (longer than any queue retry budget): every order
    // was processed, every message acknowledged, every email waits.
    let ready = readiness(&processor).await;
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["email"]["state"], "open", "{ready}");
    let (_, waiting) = pipeline
        .get_json(&format!("/api/orders/{}", ids[0]), &customer)
        .await;
    assert_eq!(waiting["status"], "PROCESSED", "{waiting}");
    assert_eq!(waiting["email"]["status"], "PENDING", "{waiting}");
    assert!(waiting["email"]["lastError"].is_string(), "{waiting}");
    assert_eq!(pipeline.queue_depth().await, 0);

    server.come_back().await;
    let back_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    until_all_sent(&pipeline, &customer, &ids, Duration::from_secs(60)).await;
    assert_one_message_per_order(&server, &ids).await;
    let (first, all) = first_and_last(&server).await;
    assert!(
        first - back_at <= 10.0,
        "the first email went {:.1} s after the server came back",
        first - back_at
    );
    assert_eq!(dead_lettered(&pipeline).await, 0);
    assert_eq!(readiness(&processor).await["email"]["state"], "closed");
    println!(
        "outage: {} orders during 180 s down; first email {:.1} s and last {:.1} s after the return; none FAILED, none dead-lettered",
        ids.len(),
        first - back_at,
        all - back_at
    );
}

#[tokio::test]
async fn a_provider_refusing_every_login_pauses_sending_and_fails_no_email() {
    let server = MailtrapLike::start(MailtrapOptions::default()).await;
    let pipeline = spawn_pipeline_without_processor(30).await;
    let processor = apps::start_processor(config_for(&pipeline, &server)).await;
    let admin = pipeline.admin_token().await;
    let (_, customer) = pipeline.customer().await;
    let product = pipeline.product(&admin, 250, 10).await;

    const MONTHLY: &str = "535 5.7.0 Monthly messages limit reached";
    server.refuse_logins(MONTHLY).await;
    let ids = place(&pipeline, &customer, &product, 4).await;
    let paused = test_support::eventually(
        Duration::from_secs(20),
        "readiness to name the refusing provider",
        || async {
            let ready = readiness(&processor).await;
            (ready["email"]["state"] == "refusing").then_some(ready)
        },
    )
    .await;
    assert_eq!(paused["status"], "ready", "processing goes on: {paused}");
    assert!(
        paused["email"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("Monthly messages limit reached")),
        "{paused}"
    );
    assert!(
        paused["email"]["provider"]
            .as_str()
            .is_some_and(|p| p.contains(&server.smtp_port().to_string()))
    );
    let provider = format!("smtp://127.0.0.1:{}", server.smtp_port());
    let state = |state| [("state", state), ("provider", provider.as_str())];
    let metrics = test_support::metrics::scrape(&processor.metrics_address()).await;
    assert_eq!(metrics.value("email_sender_state", &state("refusing")), 1.0);

    // A minute of refusals: orders are processed, no email is FAILED.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let counts = statuses(&pipeline, &customer, &ids).await;
    assert_eq!(counts.get("FAILED"), None, "{counts:?}");
    for id in &ids {
        let (_, order) = pipeline
            .get_json(&format!("/api/orders/{id}"), &customer)
            .await;
        assert_eq!(order["status"], "PROCESSED", "{order}");
    }
    assert!(server.messages().await.is_empty());

    server.accept_logins().await;
    until_all_sent(&pipeline, &customer, &ids, Duration::from_secs(30)).await;
    assert_one_message_per_order(&server, &ids).await;
    let metrics = test_support::metrics::scrape(&processor.metrics_address()).await;
    assert_eq!(metrics.value("email_sender_state", &state("closed")), 1.0);
    assert_eq!(metrics.value("email_sender_state", &state("refusing")), 0.0);
    assert!(metrics.value("email_replies_total", &[("class", "provider_refuses")]) >= 1.0);
    assert_eq!(readiness(&processor).await["email"]["state"], "closed");
}

#[tokio::test]
async fn an_unknown_recipient_fails_that_email_only() {
    let server = MailtrapLike::start(MailtrapOptions::default()).await;
    let pipeline = spawn_pipeline_without_processor(30).await;
    let _processor = apps::start_processor(config_for(&pipeline, &server)).await;
    let admin = pipeline.admin_token().await;
    let product = pipeline.product(&admin, 250, 10).await;
    let (refused_email, refused) = pipeline.customer().await;
    let reply = format!("550 5.1.1 <{refused_email}>: Recipient address rejected: User unknown");
    server.reject_recipient(&refused_email, &reply).await;
    let refused_ids = place(&pipeline, &refused, &product, 1).await;
    let mut others = Vec::new();
    for _ in 0..2 {
        let (_, token) = pipeline.customer().await;
        let ids = place(&pipeline, &token, &product, 1).await;
        others.push((token, ids));
    }

    let failed = pipeline
        .until_email_status(&refused_ids[0], "email", "FAILED")
        .await;
    let email = failed.get_document("email").expect("email");
    assert!(
        email
            .get_str("last_error")
            .is_ok_and(|e| e.contains("5.1.1") && e.contains("User unknown")),
        "{email}"
    );
    assert!(email.get("next_attempt_at").is_none(), "{email}");
    for (token, ids) in &others {
        until_all_sent(&pipeline, token, ids, Duration::from_secs(20)).await;
    }
    assert_eq!(server.stats().await.rejected_recipients, 1);
}

#[tokio::test]
async fn two_processors_on_one_backlog_send_each_email_once() {
    let server = MailtrapLike::start(MailtrapOptions::default()).await;
    let pipeline = spawn_pipeline_without_processor(30).await;
    let mut config = config_for(&pipeline, &server);
    config.smtp.timeout = Duration::from_secs(2);
    config.smtp.max_connections = 5;
    let _first = apps::start_processor(config.clone()).await;
    let _second = apps::start_processor(config).await;
    let admin = pipeline.admin_token().await;
    let (_, customer) = pipeline.customer().await;
    let product = pipeline.product(&admin, 250, 30).await;

    // A backlog both processors see: every email due, none sent.
    server.go_down().await;
    let ids = place(&pipeline, &customer, &product, 30).await;
    test_support::eventually(Duration::from_secs(30), "every email to wait", || async {
        let counts = statuses(&pipeline, &customer, &ids).await;
        (counts.get("PENDING") == Some(&ids.len())).then_some(())
    })
    .await;
    server.come_back().await;
    until_all_sent(&pipeline, &customer, &ids, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_one_message_per_order(&server, &ids).await;
    let ids_seen: BTreeSet<String> = server
        .messages()
        .await
        .into_iter()
        .filter_map(|m| m.message_id)
        .collect();
    assert_eq!(ids_seen.len(), ids.len());
}

#[tokio::test]
async fn starttls_with_credentials_trusts_the_configured_ca_and_nothing_else() {
    let server = MailtrapLike::start(MailtrapOptions {
        tls: true,
        ..MailtrapOptions::default()
    })
    .await;
    let ca = server.ca_file().expect("a test CA");
    let pipeline = spawn_pipeline_without_processor(30).await;
    let admin = pipeline.admin_token().await;
    let (_, customer) = pipeline.customer().await;
    let product = pipeline.product(&admin, 250, 5).await;

    // Without the CA the server's certificate is not trusted: never sent.
    let mut untrusting = config_for(&pipeline, &server);
    untrusting.smtp.tls = SmtpTls::StartTls;
    let processor = apps::start_processor(untrusting.clone()).await;
    let ids = place(&pipeline, &customer, &product, 1).await;
    let waiting = test_support::eventually(
        Duration::from_secs(20),
        "the untrusted attempt to be recorded",
        || async {
            let (_, order) = pipeline
                .get_json(&format!("/api/orders/{}", ids[0]), &customer)
                .await;
            order["email"]["lastError"].is_string().then_some(order)
        },
    )
    .await;
    assert_eq!(waiting["email"]["status"], "PENDING", "{waiting}");
    assert!(server.messages().await.is_empty());
    processor.stop().await;

    let mut trusting = untrusting;
    trusting.smtp.tls_ca_file = Some(ca);
    let _processor = apps::start_processor(trusting).await;
    until_all_sent(&pipeline, &customer, &ids, Duration::from_secs(30)).await;
    let messages = server.messages().await;
    assert_eq!(messages.len(), 1);
    assert!(messages[0].tls, "sent over STARTTLS");
}
