//! The eight scenarios of issue 4. Each builds its world (`Ctx::new`), puts
//! load on it, breaks something, heals it, and hands over to `Ctx::finish`
//! for the common audit; scenario-specific figures and checks go into
//! `ctx.note` and `ctx.problems`.

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use bson::{Document, doc, oid::ObjectId};
use futures::TryStreamExt;
use rand::Rng;

use test_support::mailtrap::MailtrapOptions;

use crate::{
    audit,
    harness::{Ctx, Env, Report, Setup},
    load::{self, Plan, Stop},
    shop::{self, Placed},
    stack,
};

pub const ALL: [(u8, &str); 10] = [
    (1, "1-kill-api"),
    (2, "2-kill-processor"),
    (3, "3-sqs-outage"),
    (4, "4-smtp-outage"),
    (5, "5-mongo-restart"),
    (6, "6-two-apis"),
    (7, "7-oversell"),
    (8, "8-redelivery"),
    (9, "9-mailtrap-rate"),
    (10, "10-fleet"),
];

pub async fn run(env: &Env, number: u8, name: &str) -> anyhow::Result<Report> {
    match number {
        1 => kill_api(env, name).await,
        2 => kill_processor(env, name).await,
        3 => sqs_outage(env, name).await,
        4 => smtp_outage(env, name).await,
        5 => mongo_restart(env, name).await,
        6 => two_apis(env, name).await,
        7 => oversell(env, name).await,
        8 => redelivery(env, name).await,
        9 => mailtrap_rate(env, name).await,
        10 => fleet(env, name).await,
        _ => anyhow::bail!("no scenario {number}"),
    }
}

/// How long SQS stays down.
const OUTAGE: Duration = Duration::from_secs(20);
/// How long SMTP stays down: longer than a queue message's whole receive
/// budget (about 46 s here), which email no longer rides on.
const SMTP_OUTAGE: Duration = Duration::from_secs(150);

fn random_secs(low: f64, high: f64) -> Duration {
    Duration::from_secs_f64(rand::rng().random_range(low..high))
}

fn steady_load(orders: u64, within: Duration) -> Plan {
    Plan {
        clients: 3,
        orders,
        pause: Duration::from_millis(50),
        max_quantity: 3,
        within,
    }
}

/// Scenario 1: kill -9 order-api at random moments under load, and once for certain
/// between an order's commit and its publication; restart it each time.
async fn kill_api(env: &Env, name: &str) -> anyhow::Result<Report> {
    let mut ctx = Ctx::new(
        env,
        name,
        Setup {
            api_sqs_via_proxy: true,
            ..Setup::default()
        },
    )
    .await?;
    let (load, load_stop) = ctx.start_load(Plan {
        pause: Duration::from_millis(350),
        ..steady_load(120, Duration::from_secs(45))
    });
    let cancel_stop = Stop::default();
    let cancels = ctx.start_cancelling(Duration::from_millis(3000), cancel_stop.clone());

    let mut kills = 0u32;
    let mut kills_with_unpublished = 0u32;
    let mut unpublished_rows = 0u64;

    // For certain: SQS unreachable for the API, an order commits (201), its
    // outbox row is PENDING, and the API dies before it could publish.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let proxy = ctx.proxy.as_ref().expect("scenario 1 uses the proxy");
    proxy.cut();
    let customer = ctx.customers[0].clone();
    let key = uuid::Uuid::new_v4().to_string();
    let placed = shop::place_order(
        &env.http,
        &ctx.api_url(0),
        &customer,
        &ctx.products[0].id,
        1,
        &key,
    )
    .await;
    let forced = match &placed {
        Placed::Accepted { order_id, .. } => Some(order_id.clone()),
        _ => None,
    };
    ctx.ledger
        .lock()
        .expect("ledger")
        .record(placed.clone(), key, 0);
    let Some(forced) = forced else {
        anyhow::bail!("the order placed while SQS was cut off was not acknowledged: {placed:?}");
    };
    let forced_id = ObjectId::parse_str(&forced)?;
    let outbox = ctx.db.collection::<Document>("outbox");
    let row_status = |id: ObjectId| {
        let outbox = outbox.clone();
        async move {
            outbox
                .find_one(doc! { "order_id": id, "event_type": "order.created" })
                .await
                .ok()
                .flatten()
                .and_then(|row| row.get_str("status").ok().map(str::to_string))
        }
    };
    if row_status(forced_id).await.as_deref() != Some("PENDING") {
        ctx.problems.push(format!(
            "order {forced}'s outbox row was not PENDING while SQS was unreachable"
        ));
    }
    ctx.apis[0].kill9().await?;
    kills += 1;
    let pending = audit::pending_outbox(&ctx.db).await?;
    if pending > 0 {
        kills_with_unpublished += 1;
        unpublished_rows += pending;
    }
    proxy.restore();
    ctx.apis[0].start(&env.http).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while row_status(forced_id).await.as_deref() != Some("PUBLISHED") {
        if tokio::time::Instant::now() >= deadline {
            ctx.problems.push(format!(
                "order {forced}'s outbox row was not published within 20 s of the restart"
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // At random moments under load.
    for _ in 0..4 {
        tokio::time::sleep(random_secs(1.5, 3.5)).await;
        if load.is_finished() {
            break;
        }
        ctx.apis[0].kill9().await?;
        kills += 1;
        // Only this process publishes: what is PENDING now was committed and
        // not yet published when it died.
        let pending = audit::pending_outbox(&ctx.db).await?;
        if pending > 0 {
            kills_with_unpublished += 1;
            unpublished_rows += pending;
        }
        tokio::time::sleep(random_secs(0.0, 1.0)).await;
        ctx.apis[0].start(&env.http).await?;
    }
    let _ = load.await;
    load_stop.raise();
    cancel_stop.raise();
    ctx.cancelled = cancels.await.unwrap_or_default();
    ctx.note("kills", kills);
    ctx.note(
        "between_commit_and_publish",
        format!("{kills_with_unpublished} kills/{unpublished_rows} rows"),
    );
    Ok(ctx.finish().await)
}

/// Scenario 2: kill -9 order-processor mid-batch (while an email is being sent);
/// restart it.
async fn kill_processor(env: &Env, name: &str) -> anyhow::Result<Report> {
    // A quick retry schedule: a redelivered message whose email a dead
    // process left SENDING comes back several times before that claim is
    // stale, and must still not be dead-lettered for it.
    let setup = Setup {
        processor_env: vec![
            ("RETRY_BASE_SECS", "1".into()),
            ("RETRY_CAP_SECS", "5".into()),
        ],
        ..Setup::default()
    };
    let mut ctx = Ctx::new(env, name, setup).await?;
    let (load, load_stop) = ctx.start_load(Plan {
        pause: Duration::from_millis(350),
        ..steady_load(120, Duration::from_secs(45))
    });
    let cancel_stop = Stop::default();
    let cancels = ctx.start_cancelling(Duration::from_millis(3000), cancel_stop.clone());
    let mut kills = 0u32;
    let mut interrupted: HashSet<String> = HashSet::new();
    for _ in 0..4 {
        tokio::time::sleep(random_secs(1.5, 3.5)).await;
        if load.is_finished() {
            break;
        }
        // Mid-batch: wait (briefly) until an email is on its way to SMTP.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while tokio::time::Instant::now() < deadline
            && audit::sending_now(&ctx.db)
                .await
                .map(|s| s.is_empty())
                .unwrap_or(true)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        ctx.processors[0].kill9().await?;
        kills += 1;
        // The dead process writes nothing more: what is SENDING now is a
        // send the kill interrupted (before or after SMTP accepted it).
        interrupted.extend(audit::sending_now(&ctx.db).await?);
        tokio::time::sleep(random_secs(0.5, 2.0)).await;
        ctx.processors[0].start(&env.http).await?;
    }
    let _ = load.await;
    load_stop.raise();
    cancel_stop.raise();
    ctx.cancelled = cancels.await.unwrap_or_default();
    ctx.duplicates_allowed = interrupted.clone();
    ctx.note("kills", kills);
    ctx.note("interrupted_sends", interrupted.len());
    let mut report = ctx.finish().await;
    // How often the kill fell between SMTP accept and the SENT write.
    let after_accept = report.figures.duplicate_orders.len();
    report.note("between_smtp_accept_and_sent", after_accept);
    Ok(report)
}

/// Scenario 3: SQS stopped for 20 s under load, then started. Everything SQS accepted
/// before the stop has been consumed first (LocalStack keeps no messages
/// across a restart; real SQS would), so what is tested is the pipeline:
/// orders committed during the outage wait in the outbox and get through.
async fn sqs_outage(env: &Env, name: &str) -> anyhow::Result<Report> {
    let mut ctx = Ctx::new(env, name, Setup::default()).await?;
    let (load, _) = ctx.start_load(steady_load(30, Duration::from_secs(30)));
    let _ = load.await;
    if !ctx.wait_quiet(Duration::from_secs(60)).await {
        anyhow::bail!("the pipeline did not drain before the outage");
    }
    let outage = std::time::Instant::now();
    env.stack.control("stop", "sqs").await?;
    let before = ctx.ledger.lock().expect("ledger").acknowledged.len();
    let (load, _) = ctx.start_load(Plan {
        pause: Duration::from_millis(1000),
        ..steady_load(60, OUTAGE)
    });
    let _ = tokio::join!(load, tokio::time::sleep(OUTAGE));
    let during = ctx.ledger.lock().expect("ledger").acknowledged.len() - before;
    let waiting = audit::pending_outbox(&ctx.db).await?;
    env.stack.control("start", "sqs").await?;
    // LocalStack came back empty: the scenario's queues are created again.
    ctx.queues = stack::create_queues(&env.sqs, &ctx.queues.name.clone()).await?;
    let outage = outage.elapsed();
    let (load, _) = ctx.start_load(steady_load(20, Duration::from_secs(20)));
    let _ = load.await;
    if during == 0 || waiting == 0 {
        ctx.problems.push(format!(
            "no order was committed during the outage ({during} acknowledged, {waiting} outbox rows waiting): the scenario tested nothing"
        ));
    }
    ctx.note("outage", format!("{}s", outage.as_secs()));
    ctx.note("acknowledged_during_outage", during);
    ctx.note("outbox_waiting_at_restart", waiting);
    Ok(ctx.finish().await)
}

/// Scenario 4: The SMTP server stopped for 150 s under load, then started. MailDev
/// forgets its inbox when it restarts, so the inbox is counted first, with
/// every earlier email delivered.
async fn smtp_outage(env: &Env, name: &str) -> anyhow::Result<Report> {
    let mut ctx = Ctx::new(env, name, Setup::default()).await?;
    let (load, _) = ctx.start_load(steady_load(30, Duration::from_secs(30)));
    let _ = load.await;
    if !ctx.wait_quiet(Duration::from_secs(60)).await {
        anyhow::bail!("the pipeline did not drain before the outage");
    }
    // Every email so far is SENT; wait until the inbox shows them all.
    let recipients = ctx.recipients();
    let expected = ctx.ledger.lock().expect("ledger").acknowledged.len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let counts = ctx.inbox().count(&recipients).await?;
        if counts.len() >= expected || tokio::time::Instant::now() >= deadline {
            ctx.inbox_before_restart = counts;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let outage = std::time::Instant::now();
    env.stack.control("stop", "smtp").await?;
    let (load, _) = ctx.start_load(Plan {
        // Three clients, an order every ~7 s each: orders all through it.
        pause: Duration::from_millis(7000),
        ..steady_load(60, SMTP_OUTAGE)
    });
    let _ = tokio::join!(load, tokio::time::sleep(SMTP_OUTAGE));
    let waiting = ctx
        .db
        .collection::<Document>("orders")
        .count_documents(
            doc! { "email.status": { "$ne": "SENT" }, "email.last_error": { "$ne": null } },
        )
        .await?;
    env.stack.control("start", "smtp").await?;
    let outage = outage.elapsed();
    let (load, _) = ctx.start_load(steady_load(20, Duration::from_secs(20)));
    let _ = load.await;
    if waiting == 0 {
        ctx.problems
            .push("no email failed during the outage: the scenario tested nothing".into());
    }
    ctx.note("outage", format!("{}s", outage.as_secs()));
    ctx.note("emails_waiting_at_restart", waiting);
    Ok(ctx.finish().await)
}

/// Scenario 9: the chaos load through a MailTrap-like inbox: AUTH over
/// STARTTLS, 10 emails per 10 s, MailTrap's 550 past that. The processor is
/// paced at 15 per 10 s, as an operator who set the wrong plan's figure
/// would have it, so the inbox throttles it again and again; and it is
/// killed once while a backlog waits in its line. Every email must arrive
/// once, none `FAILED`, nothing dead-lettered.
async fn mailtrap_rate(env: &Env, name: &str) -> anyhow::Result<Report> {
    const INBOX_RATE: u32 = 10;
    const WINDOW_SECS: u32 = 10;
    const PACE: u32 = 15;
    let setup = Setup {
        mailtrap: Some(MailtrapOptions {
            rate: INBOX_RATE,
            window_secs: WINDOW_SECS,
            tls: true,
            ..MailtrapOptions::default()
        }),
        processor_env: vec![
            ("SMTP_RATE_LIMIT", PACE.to_string()),
            ("SMTP_RATE_PERIOD_SECS", WINDOW_SECS.to_string()),
        ],
        ..Setup::default()
    };
    let mut ctx = Ctx::new(env, name, setup).await?;
    let (load, load_stop) = ctx.start_load(Plan {
        pause: Duration::from_millis(400),
        ..steady_load(45, Duration::from_secs(30))
    });
    let cancel_stop = Stop::default();
    let cancels = ctx.start_cancelling(Duration::from_millis(4000), cancel_stop.clone());

    tokio::time::sleep(random_secs(12.0, 20.0)).await;
    ctx.processors[0].kill9().await?;
    // A DATA the dead process had finished sending may still be accepted.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = audit::sending_now(&ctx.db).await?;
    let accepted = ctx.inbox().count(&ctx.recipients()).await?;
    // Of the claims the dead process held, only those the inbox already
    // accepted can arrive twice; the rest were waiting in its line.
    let interrupted: HashSet<String> = held
        .iter()
        .filter(|id| accepted.keys().any(|(order, _)| order == *id))
        .cloned()
        .collect();
    tokio::time::sleep(random_secs(0.5, 2.0)).await;
    ctx.processors[0].start(&env.http).await?;

    let _ = load.await;
    load_stop.raise();
    cancel_stop.raise();
    ctx.cancelled = cancels.await.unwrap_or_default();
    ctx.duplicates_allowed = interrupted.clone();
    // The backlog drains at the inbox's rate, not the load's.
    let drained = audit::wait_settled(&ctx.db, Duration::from_secs(150)).await;
    let server = ctx.mailtrap.as_ref().expect("this scenario's own server");
    let stats = server.stats().await;
    let arrivals: Vec<f64> = server
        .messages()
        .await
        .iter()
        .map(|m| m.received_at)
        .collect();
    let first_to_last = match (arrivals.first(), arrivals.last()) {
        (Some(first), Some(last)) => last - first,
        _ => 0.0,
    };
    let own_limit =
        (arrivals.len().saturating_sub(1) as f64) * f64::from(WINDOW_SECS) / f64::from(INBOX_RATE);
    if stats.throttled == 0 {
        ctx.problems
            .push("the inbox never throttled the processor: the scenario tested nothing".into());
    }
    if !drained {
        ctx.problems
            .push("the email backlog did not drain within 150 s".into());
    }
    ctx.extras.extend([
        ("inbox_rate".into(), format!("{INBOX_RATE}/{WINDOW_SECS}s")),
        ("pace".into(), format!("{PACE}/{WINDOW_SECS}s")),
        ("throttled_replies".into(), stats.throttled.to_string()),
        ("claims_held_at_kill".into(), held.len().to_string()),
        ("interrupted_sends".into(), interrupted.len().to_string()),
        (
            "first_to_last_email".into(),
            format!("{first_to_last:.0}s (rate's own limit {own_limit:.0}s)"),
        ),
        (
            "smtp_connections".into(),
            format!(
                "{} (max {} at once, {} messages on one at most)",
                stats.connections_total,
                stats.max_concurrent_connections,
                stats.max_messages_on_one_connection
            ),
        ),
    ]);
    Ok(ctx.finish().await)
}

/// Scenario 5: MongoDB stopped and started again under load (its data is kept).
async fn mongo_restart(env: &Env, name: &str) -> anyhow::Result<Report> {
    let mut ctx = Ctx::new(env, name, Setup::default()).await?;
    let (load, _) = ctx.start_load(Plan {
        pause: Duration::from_millis(350),
        ..steady_load(120, Duration::from_secs(40))
    });
    tokio::time::sleep(Duration::from_secs(6)).await;
    let outage = std::time::Instant::now();
    env.stack.control("stop", "mongo").await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    env.stack.control("start", "mongo").await?;
    let outage = outage.elapsed();
    let _ = load.await;
    // A send whose SENT write failed with the database gone is resent once
    // the claim is stale: the orders whose email took more than one attempt.
    if audit::wait_settled(&ctx.db, Duration::from_secs(90)).await {
        let resent: Vec<Document> = ctx
            .db
            .collection::<Document>("orders")
            .find(doc! { "email.attempts": { "$gte": 2 } })
            .projection(doc! { "_id": 1 })
            .await?
            .try_collect()
            .await?;
        ctx.duplicates_allowed = resent
            .into_iter()
            .filter_map(|d| d.get_object_id("_id").ok().map(|id| id.to_hex()))
            .collect();
    }
    ctx.note("outage", format!("{}s", outage.as_secs()));
    ctx.note("resent_after_outage", ctx.duplicates_allowed.len());
    Ok(ctx.finish().await)
}

/// Scenario 6: Two order-api processes on one database and queue, both relaying.
async fn two_apis(env: &Env, name: &str) -> anyhow::Result<Report> {
    let mut ctx = Ctx::new(
        env,
        name,
        Setup {
            apis: 2,
            ..Setup::default()
        },
    )
    .await?;
    let (load, _) = ctx.start_load(Plan {
        clients: 4,
        pause: Duration::from_millis(100),
        ..steady_load(120, Duration::from_secs(45))
    });
    let cancel_stop = Stop::default();
    let cancels = ctx.start_cancelling(Duration::from_millis(3000), cancel_stop.clone());
    let _ = load.await;
    cancel_stop.raise();
    ctx.cancelled = cancels.await.unwrap_or_default();
    audit::wait_settled(&ctx.db, Duration::from_secs(90)).await;
    note_shares(&mut ctx).await?;
    Ok(ctx.finish().await)
}

/// Each instance's share of the work, from the database: the outbox rows
/// each API's relay published (`published_by`) and the events each
/// processor handled (its inbox entries' `handled_by`); every instance must
/// have done some. Also the events SQS carried as two messages (an inbox
/// entry with two message ids: a relay died between SQS's answer and its
/// mark), which the inbox made change nothing.
async fn note_shares(ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let published = field_values(&ctx.db, "outbox", "published_by").await?;
    let handled = field_values(&ctx.db, "inbox", "handled_by").await?;
    let by_api: Vec<usize> = ctx
        .apis
        .iter()
        .map(|api| published.iter().filter(|name| api.wrote(name)).count())
        .collect();
    let by_processor: Vec<usize> = ctx
        .processors
        .iter()
        .map(|processor| handled.iter().filter(|name| processor.wrote(name)).count())
        .collect();
    let carried_twice = ctx
        .db
        .collection::<Document>("inbox")
        .count_documents(doc! { "sqs_message_ids.1": { "$exists": true } })
        .await?;
    ctx.note("events_published", published.len());
    ctx.note("published_by_api", joined(&by_api));
    ctx.note("handled_by_processor", joined(&by_processor));
    ctx.note("events_carried_twice", carried_twice);
    for (n, count) in by_api.iter().enumerate() {
        if *count == 0 {
            ctx.problems
                .push(format!("api-{} published nothing", n + 1));
        }
    }
    for (n, count) in by_processor.iter().enumerate() {
        if by_processor.len() > 1 && *count == 0 {
            ctx.problems
                .push(format!("processor-{} handled no message", n + 1));
        }
    }
    Ok(())
}

/// The string `field` of every document of `collection` that has one.
async fn field_values(
    db: &mongodb::Database,
    collection: &str,
    field: &str,
) -> anyhow::Result<Vec<String>> {
    let documents: Vec<Document> = db
        .collection::<Document>(collection)
        .find(doc! { field: { "$exists": true } })
        .projection(doc! { field: 1 })
        .await?
        .try_collect()
        .await?;
    Ok(documents
        .iter()
        .filter_map(|d| d.get_str(field).ok().map(str::to_string))
        .collect())
}

fn joined(counts: &[usize]) -> String {
    counts
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join("+")
}

/// How long the fleet is broken for, under load.
const FLEET_CHAOS: Duration = Duration::from_secs(100);
/// How long the fleet may take to settle once the load has stopped.
const FLEET_SETTLE: Duration = Duration::from_secs(150);
/// How long each throughput burst places orders.
const BURST: Duration = Duration::from_secs(6);

/// Orders placed as fast as 12 clients can through the first `apis`
/// instances for `BURST`: acknowledged orders a second, and how long from
/// the first order until every one was processed and emailed.
async fn burst(ctx: &Ctx<'_>, apis: usize) -> anyhow::Result<(f64, Duration)> {
    let before = ctx.ledger.lock().expect("ledger").acknowledged.len();
    let mut shoppers = ctx.shoppers();
    shoppers.apis = Arc::new((0..apis).map(|n| ctx.api_url(n)).collect());
    let plan = Plan {
        clients: 12,
        orders: 100_000,
        pause: Duration::ZERO,
        max_quantity: 1,
        within: BURST,
    };
    let started = Instant::now();
    load::run(shoppers, plan, Stop::default()).await;
    let placed = ctx.ledger.lock().expect("ledger").acknowledged.len() - before;
    let rate = placed as f64 / started.elapsed().as_secs_f64();
    if !ctx.wait_quiet(Duration::from_secs(120)).await {
        anyhow::bail!("the orders of the burst through {apis} API(s) did not settle within 120 s");
    }
    Ok((rate, started.elapsed()))
}

/// Scenario 10: a fleet. Three order-api and three order-processor
/// instances on one database and one queue, the load spread over the three
/// APIs; every few seconds a random instance of each kind is killed with
/// SIGKILL and restarted. Besides the common audit: no outbox row published
/// twice, every instance did a share of the work, and once it settles
/// nothing is left leased (outbox) or claimed (an email SENDING). First, the
/// same burst through one instance of each and through three of each.
async fn fleet(env: &Env, name: &str) -> anyhow::Result<Report> {
    let mut ctx = Ctx::new(
        env,
        name,
        Setup {
            apis: 3,
            processors: 3,
            stocks: vec![1_000_000; 8],
            customers: 8,
            ..Setup::default()
        },
    )
    .await?;

    // Throughput: three of each, then one of each (the others stopped
    // gracefully), then the three again for the faults.
    let (rate_3, settled_3) = burst(&ctx, 3).await?;
    for n in 1..3 {
        ctx.apis[n].terminate().await?;
        ctx.processors[n].terminate().await?;
    }
    let (rate_1, settled_1) = burst(&ctx, 1).await?;
    for n in 1..3 {
        ctx.apis[n].start(&env.http).await?;
        ctx.processors[n].start(&env.http).await?;
    }

    let (load, load_stop) = ctx.start_load(Plan {
        clients: 6,
        orders: 3_000,
        pause: Duration::from_millis(150),
        max_quantity: 3,
        within: FLEET_CHAOS,
    });
    let cancel_stop = Stop::default();
    let cancels = ctx.start_cancelling(Duration::from_millis(2000), cancel_stop.clone());
    let deadline = Instant::now() + FLEET_CHAOS;
    let (mut api_kills, mut processor_kills) = (0u32, 0u32);
    let mut interrupted: HashSet<String> = HashSet::new();
    // Bounded: at most 40 rounds, and no later than the load's end.
    for _ in 0..40 {
        tokio::time::sleep(random_secs(3.0, 6.0)).await;
        if load.is_finished() || Instant::now() >= deadline {
            break;
        }
        let api = rand::rng().random_range(0..ctx.apis.len());
        let processor = rand::rng().random_range(0..ctx.processors.len());
        ctx.apis[api].kill9().await?;
        api_kills += 1;
        ctx.processors[processor].kill9().await?;
        processor_kills += 1;
        // What is SENDING now includes the dead one's interrupted sends
        // (and the live ones' sends in flight, which end normally).
        interrupted.extend(audit::sending_now(&ctx.db).await?);
        tokio::time::sleep(random_secs(0.5, 1.5)).await;
        ctx.apis[api].start(&env.http).await?;
        ctx.processors[processor].start(&env.http).await?;
    }
    let _ = load.await;
    load_stop.raise();
    cancel_stop.raise();
    ctx.cancelled = cancels.await.unwrap_or_default();
    ctx.duplicates_allowed = interrupted.clone();

    // Nothing left leased or claimed once everything has settled. Settling
    // can take over a minute: a transaction a SIGKILL left open holds its
    // documents until the server's transaction lifetime (60 s) runs out,
    // and the handlers that wait on them time out and retry; an email whose
    // sender died is sent again once its claim is stale (30 s here).
    let settling = Instant::now();
    if !ctx.wait_quiet(FLEET_SETTLE).await {
        ctx.problems.push(format!(
            "the fleet did not settle within {FLEET_SETTLE:?} of the load's end"
        ));
    }
    ctx.note(
        "settled_after_load",
        format!("{}s", settling.elapsed().as_secs()),
    );
    let leased = audit::pending_outbox(&ctx.db).await?;
    let claimed = audit::sending_now(&ctx.db).await?.len();
    if leased > 0 {
        ctx.problems.push(format!(
            "{leased} outbox row(s) still PENDING (leased or not) after the run"
        ));
    }
    if claimed > 0 {
        ctx.problems.push(format!(
            "{claimed} email(s) still claimed (SENDING) after the run"
        ));
    }
    ctx.note(
        "kills",
        format!("{api_kills} api + {processor_kills} processor"),
    );
    ctx.note("interrupted_sends", interrupted.len());
    ctx.note("left_leased", leased);
    ctx.note("left_claimed", claimed);
    note_shares(&mut ctx).await?;

    let mut report = ctx.finish().await;
    let after_accept = report.figures.duplicate_orders.len();
    report.note("between_smtp_accept_and_sent", after_accept);
    // Debug binaries (make chaos), on this machine's one database.
    report.note(
        "throughput_1x1",
        format!("{rate_1:.1}/s (settled {:.1}s)", settled_1.as_secs_f64()),
    );
    report.note(
        "throughput_3x3",
        format!("{rate_3:.1}/s (settled {:.1}s)", settled_3.as_secs_f64()),
    );
    Ok(report)
}

/// One oversell client's retries.
#[derive(Debug, Default)]
struct Tries {
    retries: u32,
    answered_5xx: u32,
    committed_despite_5xx: bool,
}

/// Scenario 7: 300 concurrent orders of one unit for a stock of 50: exactly 50 win.
async fn oversell(env: &Env, name: &str) -> anyhow::Result<Report> {
    const STOCK: i64 = 50;
    const ORDERS: usize = 300;
    let mut ctx = Ctx::new(
        env,
        name,
        Setup {
            stocks: vec![STOCK],
            customers: 10,
            ..Setup::default()
        },
    )
    .await?;
    let shoppers = ctx.shoppers();
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(ORDERS));
    let mut tasks = Vec::new();
    for n in 0..ORDERS {
        let shoppers = shoppers.clone();
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            let customer = n % shoppers.customers.len();
            let key = uuid::Uuid::new_v4().to_string();
            start.wait().await;
            // A 5xx or no answer is retried with the same key after about
            // half a second (longer, jittered pauses measured slower here);
            // a replayed 201 then tells that an earlier attempt had
            // committed although it was answered 503.
            let mut tries = Tries::default();
            loop {
                let placed = shop::place_order(
                    &shoppers.http,
                    &shoppers.apis[0],
                    &shoppers.customers[customer],
                    &shoppers.products[0].id,
                    1,
                    &key,
                )
                .await;
                let retry = matches!(
                    placed,
                    Placed::ServerError { .. } | Placed::NoAnswer | Placed::NotSent
                );
                if matches!(placed, Placed::ServerError { .. }) {
                    tries.answered_5xx += 1;
                }
                if let Placed::Accepted { replayed: true, .. } = placed
                    && tries.answered_5xx > 0
                {
                    tries.committed_despite_5xx = true;
                }
                if !retry || tries.retries >= 30 {
                    shoppers
                        .ledger
                        .lock()
                        .expect("ledger")
                        .record(placed, key, customer);
                    return tries;
                }
                tries.retries += 1;
                tokio::time::sleep(random_secs(0.3, 0.7)).await;
            }
        }));
    }
    let mut retries = 0u32;
    let mut clients_answered_5xx = 0u32;
    let mut committed_despite_5xx = 0u32;
    for task in tasks {
        let tries = task.await.unwrap_or_default();
        retries += tries.retries;
        clients_answered_5xx += u32::from(tries.answered_5xx > 0);
        committed_despite_5xx += u32::from(tries.committed_despite_5xx);
    }
    let (accepted, refused) = {
        let ledger = ctx.ledger.lock().expect("ledger");
        (ledger.acknowledged.len(), ledger.out_of_stock)
    };
    if accepted != STOCK as usize || refused != (ORDERS - accepted) as u64 {
        ctx.problems.push(format!(
            "{accepted} orders accepted and {refused} refused out of {ORDERS} for a stock of {STOCK}: expected exactly {STOCK} and {}",
            ORDERS - STOCK as usize
        ));
    }
    ctx.note("accepted", accepted);
    ctx.note("refused_409", refused);
    ctx.note("clients_answered_503", clients_answered_5xx);
    ctx.note("retries_after_5xx", retries);
    // The API says "the order was not placed" with its 503: these were.
    ctx.note("placed_despite_503", committed_despite_5xx);
    Ok(ctx.finish().await)
}

/// Scenario 8: An already-handled event sent to the queue twice more, a garbage body
/// and an event for an order that does not exist.
async fn redelivery(env: &Env, name: &str) -> anyhow::Result<Report> {
    let mut ctx = Ctx::new(env, name, Setup::default()).await?;
    let (load, _) = ctx.start_load(steady_load(15, Duration::from_secs(20)));
    let _ = load.await;
    if !ctx.wait_quiet(Duration::from_secs(60)).await {
        anyhow::bail!("the pipeline did not settle before the redelivery");
    }
    let order_id = {
        let ledger = ctx.ledger.lock().expect("ledger");
        ledger
            .acknowledged
            .first()
            .map(|a| a.order_id.clone())
            .ok_or_else(|| anyhow::anyhow!("no order was acknowledged"))?
    };
    let id = ObjectId::parse_str(&order_id)?;
    let orders = ctx.db.collection::<Document>("orders");
    let before = orders
        .find_one(doc! { "_id": id })
        .await?
        .ok_or_else(|| anyhow::anyhow!("order {order_id} missing"))?;
    let row = ctx
        .db
        .collection::<Document>("outbox")
        .find_one(doc! { "order_id": id })
        .await?
        .ok_or_else(|| anyhow::anyhow!("no outbox row for {order_id}"))?;
    let body = row.get_str("body")?.to_string();
    let garbage = "this is not an order event {".to_string();
    let unknown_order = body.replace(&order_id, &ObjectId::new().to_hex()).replace(
        row.get_object_id("_id")?.to_hex().as_str(),
        &ObjectId::new().to_hex(),
    );
    for message in [&body, &body, &garbage, &unknown_order] {
        env.sqs
            .send_message()
            .queue_url(&ctx.queues.url)
            .message_body(message)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "sending to the queue: {}",
                    aws_sdk_sqs::error::DisplayErrorContext(&e)
                )
            })?;
    }
    ctx.expected_dead_letters = 2;
    // Handled: the main queue empties and the two bad ones reach the DLQ.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let main = stack::depth(&env.sqs, &ctx.queues.url).await?;
        let dead = stack::depth(&env.sqs, &ctx.queues.dlq_url).await?;
        if main.total() == 0 && dead.total() >= 2 {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            ctx.problems.push(format!(
                "after 40 s: {} message(s) still in the queue, {} in the DLQ (2 expected)",
                main.total(),
                dead.total()
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let after = orders
        .find_one(doc! { "_id": id })
        .await?
        .ok_or_else(|| anyhow::anyhow!("order {order_id} missing"))?;
    let unchanged = before == after;
    if !unchanged {
        ctx.problems.push(format!(
            "the redelivered event changed order {order_id}: before {before}, after {after}"
        ));
    }
    let dead = stack::peek_bodies(&env.sqs, &ctx.queues.dlq_url).await?;
    let garbage_parked = dead.iter().any(|b| b == &garbage);
    if !garbage_parked {
        ctx.problems.push(format!(
            "the garbage body is not in the DLQ (it holds {dead:?})"
        ));
    }
    ctx.note(
        "redelivered_changed_nothing",
        if unchanged { "yes" } else { "no" },
    );
    ctx.note("garbage_in_dlq", if garbage_parked { "yes" } else { "no" });
    Ok(ctx.finish().await)
}
