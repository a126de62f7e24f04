//! The email worker: sends due emails from their records on the orders,
//! never from a queue message, so SMTP trouble never spends the queue's
//! retry budget.
//!
//! One step, [`EmailWorker::try_send_due`]: when the policy lets it send
//! (the breaker, the pace), it claims that many due emails, sends them side
//! by side, and records each outcome as the mail server answers: `FAILED`
//! with the reply or due again later at once, and `SENT` for what was
//! accepted while the previous `SENT` write ran, in one write (a lone email
//! is a batch of one; nothing waits for others). A crash resends only the
//! emails whose SMTP transaction was open or whose `SENT` write was under
//! way (their claims run out, and the resend carries the same Message-ID). [`EmailWorker::run`] takes
//! a step when woken (a processing commit made emails due), on a short
//! tick (retries come due), and at once again after a full step.

use std::{sync::Arc, time::Duration};

use ::metrics::{counter, histogram};
use bson::DateTime;
use common::{
    backoff::Schedule,
    domain::{EmailKind, OrderStatus},
    orders::email::{self as store, Claimed},
};
use mongodb::Database;
use tokio::{sync::Notify, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    Mailer, Templates,
    policy::{Answer, Policy},
};
use crate::metrics;

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// How long a claim holds an email; longer than the SMTP timeout.
    pub lease: Duration,
    /// How often it looks for due emails when nothing wakes it.
    pub poll_interval: Duration,
    /// Sends in flight at once (the SMTP connection limit): the most one
    /// step claims.
    pub concurrency: usize,
    pub message_id_domain: String,
}

/// What happened to one email the worker claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    Sent,
    /// Refused for now: `PENDING` again, due later.
    Retried,
    /// A rate-limit reply: `PENDING` again, everything slows down.
    Throttled,
    /// Refused for good, given up, or not to be sent: `FAILED`.
    Failed,
    /// Not attempted: the breaker opened after its claim (`PENDING`, due
    /// at the next probe).
    Parked,
}

/// One send's end: accepted (`SENT` not yet written), or settled and
/// recorded otherwise.
enum Attempt {
    Accepted(Box<Claimed>, DateTime),
    Recorded(Delivered),
}

/// Counts from one step.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendReport {
    pub claimed: usize,
    /// The step claimed all it asked for: more may be due.
    pub full: bool,
    pub sent: usize,
    pub retried: usize,
    pub throttled: usize,
    pub failed: usize,
    pub parked: usize,
}

impl SendReport {
    fn add(&mut self, delivered: Delivered) {
        match delivered {
            Delivered::Sent => self.sent += 1,
            Delivered::Retried => self.retried += 1,
            Delivered::Throttled => self.throttled += 1,
            Delivered::Failed => self.failed += 1,
            Delivered::Parked => self.parked += 1,
        }
    }
}

/// Cheap to clone; every clone is the same worker.
#[derive(Clone)]
pub struct EmailWorker {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    mailer: Mailer,
    templates: Templates,
    policy: Policy,
    settings: WorkerSettings,
    wake: Notify,
}

impl EmailWorker {
    pub fn new(
        db: Database,
        mailer: Mailer,
        templates: Templates,
        policy: Policy,
        settings: WorkerSettings,
    ) -> Self {
        EmailWorker {
            inner: Arc::new(Inner {
                db,
                mailer,
                templates,
                policy,
                settings,
                wake: Notify::new(),
            }),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// Makes the worker look for due emails now.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// The step: claims as many due emails as the policy lets it send now
    /// (after the pace's turn), sends them side by side, and records each
    /// outcome as the mail server answers.
    pub async fn try_send_due(&self) -> mongodb::error::Result<SendReport> {
        let inner = &*self.inner;
        let settings = &inner.settings;
        let Some(asked) = inner.policy.allowance(settings.concurrency) else {
            return Ok(SendReport::default());
        };
        let probe = !inner.policy.is_closed();
        inner.policy.pace().await;
        let claims = store::claim_due(
            &inner.db,
            DateTime::now(),
            asked,
            settings.lease,
            &settings.message_id_domain,
        )
        .await?;
        let mut report = SendReport {
            claimed: claims.len(),
            full: claims.len() == asked,
            ..SendReport::default()
        };
        let mut sends = JoinSet::new();
        for claim in claims {
            let worker = self.clone();
            sends.spawn(async move { worker.deliver(claim, probe).await });
        }
        // Group commit of SENT: the first answer, and whatever else came
        // in meanwhile, in one write; sends go on while it is written.
        while let Some(first) = sends.join_next().await {
            let mut answered = vec![first];
            while let Some(more) = sends.try_join_next() {
                answered.push(more);
            }
            let mut accepted = Vec::new();
            for answer in answered {
                match answer.map_err(mongodb::error::Error::custom)?? {
                    Attempt::Accepted(claim, at) => accepted.push((*claim, at)),
                    Attempt::Recorded(delivered) => report.add(delivered),
                }
            }
            store::record_sent(&inner.db, &accepted).await?;
            for (claim, _) in &accepted {
                let attempt = claim.order.delivery(claim.kind).map_or(0, |d| d.attempts);
                tracing::info!(order_id = %claim.order.id, email = claim.kind.as_str(), attempt, "email sent");
                report.add(Delivered::Sent);
            }
        }
        Ok(report)
    }

    /// One claimed email to SMTP, in a span that names the order; any
    /// outcome but an accept recorded. `probe`: it is the breaker's probe.
    async fn deliver(&self, claim: Claimed, probe: bool) -> mongodb::error::Result<Attempt> {
        let span = tracing::info_span!(
            "email",
            order_id = %claim.order.id,
            email = claim.kind.as_str()
        );
        self.deliver_in_span(claim, probe).instrument(span).await
    }

    async fn deliver_in_span(
        &self,
        claim: Claimed,
        probe: bool,
    ) -> mongodb::error::Result<Attempt> {
        let inner = &*self.inner;
        let db = &inner.db;
        let order_id = claim.order.id.to_hex();
        let kind = claim.kind;
        let label = kind.as_str();
        let recorded = |delivered| Ok(Attempt::Recorded(delivered));

        if kind == EmailKind::Confirmation && claim.order.status == OrderStatus::Cancelled {
            let reason = "the order was cancelled before its confirmation went out; it is not sent";
            store::record_failed(db, &claim, reason, false).await?;
            tracing::info!(order_id, "confirmation of a cancelled order not sent");
            return recorded(Delivered::Failed);
        }
        let rendered = match inner.templates.render(&claim.order, kind) {
            Ok(rendered) => rendered,
            Err(e) => {
                let reason = format!("rendering the email: {e:#}");
                store::record_failed(db, &claim, &reason, false).await?;
                tracing::error!(order_id, %reason, "email not sent");
                return recorded(Delivered::Failed);
            }
        };
        if !probe && !inner.policy.is_closed() {
            // The breaker opened after this claim: wait for the probes.
            let next = common::mongo::later(DateTime::now(), inner.policy.next_probe_in());
            let reason = inner.policy.report().reason.unwrap_or_default();
            store::record_retry(db, &claim, &format!("not attempted: {reason}"), next, false)
                .await?;
            return recorded(Delivered::Parked);
        }

        let message_id = kind.message_id(&claim.order.id, &inner.settings.message_id_domain);
        counter!(metrics::EMAIL_ATTEMPTS, "kind" => label).increment(1);
        let started = std::time::Instant::now();
        let sent = inner
            .mailer
            .send(&claim.order.customer_email, &message_id, rendered)
            .await;
        histogram!(metrics::EMAIL_SEND_DURATION, "kind" => label).record(started.elapsed());
        let attempts = claim.order.delivery(kind).map_or(1, |d| d.attempts);
        let error = match sent {
            Ok(()) => {
                inner.policy.succeeded();
                counter!(metrics::EMAILS_SENT, "kind" => label).increment(1);
                return Ok(Attempt::Accepted(Box::new(claim), DateTime::now()));
            }
            Err(error) => error,
        };
        counter!(metrics::EMAIL_REPLIES, "class" => error.class.as_str()).increment(1);
        let reason = error.reason;
        let due_for =
            claim
                .order
                .delivery(kind)
                .and_then(|d| d.due_since)
                .map_or(Duration::ZERO, |since| {
                    let ms = DateTime::now().timestamp_millis() - since.timestamp_millis();
                    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
                });
        match inner.policy.answer(error.class, &reason, attempts, due_for) {
            Answer::Retry { after, throttled } => {
                let next = common::mongo::later(DateTime::now(), after);
                store::record_retry(db, &claim, &reason, next, true).await?;
                tracing::warn!(order_id, email = label, %reason, retry_in = ?after, "email not sent; will retry");
                if throttled {
                    counter!(metrics::EMAIL_THROTTLED, "kind" => label).increment(1);
                    return recorded(Delivered::Throttled);
                }
                recorded(Delivered::Retried)
            }
            Answer::Fail { gave_up } => {
                let (reason, why) = if gave_up {
                    (
                        format!(
                            "gave up after {attempts} attempts over {due_for:?}; last reply: {reason}"
                        ),
                        "gave_up",
                    )
                } else {
                    (reason, "refused")
                };
                counter!(metrics::EMAILS_FAILED, "kind" => label, "reason" => why).increment(1);
                store::record_failed(db, &claim, &reason, true).await?;
                tracing::error!(order_id, email = label, %reason, "email FAILED");
                recorded(Delivered::Failed)
            }
        }
    }

    /// Runs steps until `shutdown`: at once, then when woken, on the tick,
    /// or when the next probe is due; straight away after a full step. A
    /// step in progress is finished (its sends are bounded by the SMTP
    /// timeout).
    pub async fn run(self, shutdown: CancellationToken) {
        let mut pauses = Schedule::WORKER.delays();
        let poll = self.inner.settings.poll_interval;
        loop {
            let wait = match self.try_send_due().await {
                Ok(report) => {
                    pauses = Schedule::WORKER.delays();
                    match self.inner.policy.is_closed() {
                        _ if report.full => Duration::ZERO,
                        true => poll,
                        false => self
                            .inner
                            .policy
                            .next_probe_in()
                            .clamp(Duration::from_millis(10), poll),
                    }
                }
                Err(e) => {
                    let pause = pauses.next().unwrap_or(Schedule::WORKER.cap);
                    tracing::warn!(error = %e, ?pause, "email step failed; backing off");
                    pause
                }
            };
            if shutdown.is_cancelled() {
                break;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.inner.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        tracing::info!("email worker stopped");
    }
}
