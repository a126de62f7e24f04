//! The sender: sends due emails from their records in MongoDB, never from a
//! queue message, so SMTP trouble never spends the queue's retry budget.
//!
//! Two roads lead to one step, [`EmailSender::deliver`]: an email the
//! processing transaction claimed is handed over and sent at once (the
//! happy path); everything else (a retry come due, a cancellation, a crashed
//! sender's claim whose lease ran out) is found by the sweep,
//! [`EmailSender::try_send_due`], which runs on a short tick and whenever it
//! is woken. Each attempt records its outcome: `SENT`, `FAILED` with the
//! reply, or back to `PENDING` with the next attempt's time.

use std::{sync::Arc, time::Duration};

use ::metrics::{counter, histogram};
use bson::DateTime;
use common::domain::{EmailKind, OrderStatus};
use common::orders::email::{self as store, Claimed};
use futures::{StreamExt, stream};
use mongodb::Database;
use rand::Rng;
use tokio::sync::Notify;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use super::{
    Mailer, Templates,
    gate::{Admission, BreakerState, Gate},
    reply::ReplyClass,
    sent::SentLog,
};
use crate::metrics;

#[derive(Debug, Clone)]
pub struct SenderSettings {
    /// How long a claim holds an email; longer than the SMTP timeout.
    pub lease: Duration,
    /// A transiently refused email is `FAILED` once it has been due this long.
    pub give_up_after: Duration,
    /// The first retry's delay; doubles per attempt up to the cap, jittered.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// How often the sweep looks for due emails when nothing wakes it.
    pub poll_interval: Duration,
    /// Emails claimed per sweep, at most.
    pub batch: usize,
    /// Sends in flight at once (the SMTP connection limit).
    pub concurrency: usize,
    /// The SMTP timeout: a claim is renewed before a send when less than
    /// this (plus a margin) is left of its lease.
    pub smtp_timeout: Duration,
    pub message_id_domain: String,
    /// How long the SENT writer waits for others after a first record.
    pub linger: Duration,
    /// How long a throttled email waits before its retry.
    pub throttle_retry: Duration,
}

/// What happened to one email in [`EmailSender::deliver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    Sent,
    /// Refused for now: `PENDING` again, due later.
    Retried,
    /// A rate-limit reply: `PENDING` again, everything slows down.
    Throttled,
    /// Refused for good, given up, or not to be sent: `FAILED`.
    Failed,
    /// Not attempted: the breaker is open (`PENDING`, due at the next probe).
    Parked,
    /// Another sender took the email over; nothing done.
    Lost,
    /// Its turn at the send rate would come after its lease: `PENDING`
    /// again, due now, for a sweep to claim when there is room in line.
    Deferred,
}

/// Counts from one sweep.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendReport {
    pub claimed: usize,
    pub sent: usize,
    pub retried: usize,
    pub throttled: usize,
    pub failed: usize,
    pub parked: usize,
    pub lost: usize,
    pub deferred: usize,
}

impl SendReport {
    fn add(&mut self, delivered: Delivered) {
        match delivered {
            Delivered::Sent => self.sent += 1,
            Delivered::Retried => self.retried += 1,
            Delivered::Throttled => self.throttled += 1,
            Delivered::Failed => self.failed += 1,
            Delivered::Parked => self.parked += 1,
            Delivered::Lost => self.lost += 1,
            Delivered::Deferred => self.deferred += 1,
        }
    }
}

/// Cheap to clone; every clone is the same sender.
#[derive(Clone)]
pub struct EmailSender {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    mailer: Mailer,
    templates: Templates,
    gate: Gate,
    sent: SentLog,
    settings: SenderSettings,
    wake: Notify,
    handed: TaskTracker,
}

/// A claim is renewed when less than the SMTP timeout plus this is left.
const RENEW_MARGIN: Duration = Duration::from_secs(5);

impl EmailSender {
    pub fn new(
        db: Database,
        mailer: Mailer,
        templates: Templates,
        gate: Gate,
        settings: SenderSettings,
    ) -> Self {
        EmailSender {
            inner: Arc::new(Inner {
                sent: SentLog::start(db.clone(), settings.linger),
                db,
                mailer,
                templates,
                gate,
                settings,
                wake: Notify::new(),
                handed: TaskTracker::new(),
            }),
        }
    }

    pub fn gate(&self) -> &Gate {
        &self.inner.gate
    }

    /// Sends an email the processing transaction claimed, at once, in the
    /// background: the queue message that caused it is acknowledged without
    /// waiting on SMTP. If this process dies first, the claim's lease runs
    /// out and the sweep sends it.
    pub fn hand_over(&self, claim: Claimed) {
        let sender = self.clone();
        self.inner.handed.spawn(async move {
            if let Err(e) = sender.deliver(claim).await {
                tracing::warn!(error = %e, "recording an email's outcome failed; its lease will run out and it is retried");
            }
        });
    }

    /// Makes the sweep look for due emails now (a cancellation was written).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// One sweep: claims due emails (up to a batch, or one probe while the
    /// breaker is open, and no more than can get their turn at the send
    /// rate within their lease) and delivers them.
    pub async fn try_send_due(&self) -> mongodb::error::Result<SendReport> {
        let gate = &self.inner.gate;
        let Some(allowance) = gate.sweep_allowance() else {
            return Ok(SendReport::default());
        };
        let settings = &self.inner.settings;
        let room = gate.room_in_line(self.turn_window()).unwrap_or(usize::MAX);
        let limit = allowance.unwrap_or(settings.batch).max(1).min(room);
        if limit == 0 {
            return Ok(SendReport::default());
        }
        let now = DateTime::now();
        let mut claims = Vec::new();
        for kind in [EmailKind::Confirmation, EmailKind::Cancellation] {
            let room = limit - claims.len();
            if room == 0 {
                break;
            }
            claims.extend(
                store::claim_due(
                    &self.inner.db,
                    kind,
                    now,
                    room,
                    settings.lease,
                    &settings.message_id_domain,
                )
                .await?,
            );
        }
        let mut report = SendReport {
            claimed: claims.len(),
            ..SendReport::default()
        };
        let outcomes: Vec<mongodb::error::Result<Delivered>> = stream::iter(claims)
            .map(|claim| self.deliver(claim))
            .buffer_unordered(settings.concurrency.max(1))
            .collect()
            .await;
        for outcome in outcomes {
            report.add(outcome?);
        }
        Ok(report)
    }

    /// One claimed email through the gate to SMTP, and its outcome recorded,
    /// in a span that names the order.
    pub async fn deliver(&self, claim: Claimed) -> mongodb::error::Result<Delivered> {
        let span = tracing::info_span!(
            "email",
            order_id = %claim.order.id,
            email = claim.kind.as_str()
        );
        self.deliver_in_span(claim).instrument(span).await
    }

    async fn deliver_in_span(&self, mut claim: Claimed) -> mongodb::error::Result<Delivered> {
        let inner = &*self.inner;
        let order_id = claim.order.id.to_hex();
        let kind = claim.kind;
        let label = kind.as_str();

        // What is settled without the mail server comes first, so that
        // only a send can be the breaker's probe.
        if kind == EmailKind::Confirmation && claim.order.status == OrderStatus::Cancelled {
            let reason = "the order was cancelled before its confirmation went out; it is not sent";
            store::record_failed(&inner.db, &claim, reason, false).await?;
            tracing::info!(order_id, "confirmation of a cancelled order not sent");
            return Ok(Delivered::Failed);
        }
        let rendered = match inner.templates.render(&claim.order, kind) {
            Ok(rendered) => rendered,
            Err(e) => {
                let reason = format!("rendering the email: {e:#}");
                store::record_failed(&inner.db, &claim, &reason, false).await?;
                tracing::error!(order_id, %reason, "email not sent");
                return Ok(Delivered::Failed);
            }
        };

        let admission = inner.gate.admit();
        if let Admission::Parked { until, reason } = &admission {
            let next = common::mongo::later(DateTime::now(), *until);
            store::record_retry(
                &inner.db,
                &claim,
                &format!("not attempted: {reason}"),
                next,
                false,
            )
            .await?;
            return Ok(Delivered::Parked);
        }
        if self.turn_after_lease(&claim) {
            if admission == Admission::Probe {
                inner.gate.probe_abandoned();
            }
            store::record_retry(
                &inner.db,
                &claim,
                "waiting for its turn at the send rate",
                DateTime::now(),
                false,
            )
            .await?;
            return Ok(Delivered::Deferred);
        }
        inner.gate.pace().await;
        if !self.lease_holds(&mut claim).await? {
            if admission == Admission::Probe {
                inner.gate.probe_abandoned();
            }
            return Ok(Delivered::Lost);
        }

        let message_id = kind.message_id(&claim.order.id, &inner.settings.message_id_domain);
        counter!(metrics::EMAIL_ATTEMPTS, "kind" => label).increment(1);
        let started = std::time::Instant::now();
        let sent = inner
            .mailer
            .send(&claim.order.customer_email, &message_id, rendered)
            .await;
        histogram!(metrics::EMAIL_SEND_DURATION, "kind" => label).record(started.elapsed());
        let error = match sent {
            Ok(()) => {
                inner.gate.succeeded();
                counter!(metrics::EMAILS_SENT, "kind" => label).increment(1);
                inner.sent.record(&claim.order, kind).await?;
                let attempt = claim.order.delivery(kind).map_or(0, |d| d.attempts);
                tracing::info!(order_id, email = label, attempt, "email sent");
                return Ok(Delivered::Sent);
            }
            Err(error) => error,
        };
        counter!(metrics::EMAIL_REPLIES, "class" => error.class.as_str()).increment(1);
        let reason = error.reason;
        let now = DateTime::now();
        let (delivered, next) = self.answer(&claim, error.class, &reason, now);
        match next {
            Some(delay) => {
                store::record_retry(
                    &inner.db,
                    &claim,
                    &reason,
                    common::mongo::later(now, delay),
                    true,
                )
                .await?;
                tracing::warn!(order_id, email = label, %reason, ?delivered, retry_in = ?delay, "email not sent; will retry");
            }
            None => {
                let reason = match error.class {
                    ReplyClass::Permanent => reason,
                    _ => format!(
                        "gave up after {} attempts over {:?}; last reply: {reason}",
                        claim.order.delivery(kind).map_or(0, |d| d.attempts),
                        inner.settings.give_up_after
                    ),
                };
                let why = if error.class == ReplyClass::Permanent {
                    "refused"
                } else {
                    "gave_up"
                };
                counter!(metrics::EMAILS_FAILED, "kind" => label, "reason" => why).increment(1);
                store::record_failed(&inner.db, &claim, &reason, true).await?;
                tracing::error!(order_id, email = label, %reason, "email FAILED");
            }
        }
        Ok(delivered)
    }

    /// What a refusal of `class` means for this email and for the gate
    /// (the reply table, `reply.rs`): what became of it, and when it is
    /// next attempted (`None`: it is `FAILED`).
    fn answer(
        &self,
        claim: &Claimed,
        class: ReplyClass,
        reason: &str,
        now: DateTime,
    ) -> (Delivered, Option<Duration>) {
        let gate = &self.inner.gate;
        let next_probe = || gate.report().next_probe_in.unwrap_or_default();
        match class {
            ReplyClass::Permanent => {
                gate.succeeded();
                (Delivered::Failed, None)
            }
            ReplyClass::Throttled => {
                gate.throttled();
                counter!(metrics::EMAIL_THROTTLED, "kind" => claim.kind.as_str()).increment(1);
                (
                    Delivered::Throttled,
                    Some(self.inner.settings.throttle_retry),
                )
            }
            ReplyClass::ProviderRefuses => {
                gate.refused(reason);
                (Delivered::Retried, Some(next_probe()))
            }
            ReplyClass::Transient => match gate.failed(reason) {
                _ if self.past_giving_up(claim, now) => (Delivered::Failed, None),
                BreakerState::Closed => (Delivered::Retried, Some(self.retry_delay(claim))),
                // While the breaker is open its probes set the pace: the
                // email is due at the next probe, so the first success
                // finds the whole backlog due.
                _ => (Delivered::Retried, Some(next_probe())),
            },
        }
    }

    /// How long into its lease a claimed email may wait for its turn: what
    /// is left must cover the send (the SMTP timeout) and a margin.
    fn turn_window(&self) -> Duration {
        let settings = &self.inner.settings;
        settings
            .lease
            .saturating_sub(settings.smtp_timeout + RENEW_MARGIN)
    }

    /// Whether this claim's turn at the send rate would come too late in
    /// its lease; while it waited, another sender could claim it too, and
    /// both would spend a turn on it.
    fn turn_after_lease(&self, claim: &Claimed) -> bool {
        let settings = &self.inner.settings;
        let turn = common::mongo::later(
            DateTime::now(),
            self.inner.gate.wait_in_line() + settings.smtp_timeout + RENEW_MARGIN,
        );
        claim.lease_until().is_some_and(|until| until < turn)
    }

    /// Renews the claim when the wait for the pace ate into its lease.
    async fn lease_holds(&self, claim: &mut Claimed) -> mongodb::error::Result<bool> {
        let settings = &self.inner.settings;
        let now = DateTime::now();
        let needed = common::mongo::later(now, settings.smtp_timeout + RENEW_MARGIN);
        match claim.lease_until() {
            Some(until) if until > needed => Ok(true),
            _ => store::renew(&self.inner.db, claim, now, settings.lease).await,
        }
    }

    fn past_giving_up(&self, claim: &Claimed, now: DateTime) -> bool {
        let Some(since) = claim.order.delivery(claim.kind).and_then(|d| d.due_since) else {
            return false;
        };
        let due_for = now
            .timestamp_millis()
            .saturating_sub(since.timestamp_millis());
        u128::try_from(due_for).unwrap_or(0) >= self.inner.settings.give_up_after.as_millis()
    }

    /// Exponential in the attempts made, capped, with full jitter over the
    /// upper half so a backlog does not come due at one instant.
    fn retry_delay(&self, claim: &Claimed) -> Duration {
        let settings = &self.inner.settings;
        // The claim counted this attempt: the first retry waits the base.
        let attempts = claim.order.delivery(claim.kind).map_or(1, |d| d.attempts);
        let exponent = u32::try_from((attempts - 1).clamp(0, 20)).unwrap_or(20);
        let ceiling = settings
            .retry_base
            .saturating_mul(2_u32.saturating_pow(exponent))
            .min(settings.retry_cap);
        ceiling.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    /// Sweeps until `shutdown`: at once, then on every wake or tick; a full
    /// batch is followed by another sweep straight away. Emails handed over
    /// and still in flight at shutdown are waited for (bounded).
    pub async fn run(self, shutdown: CancellationToken) {
        let backoff = common::startup::worker_backoff;
        let mut delays = backoff();
        let settings = self.inner.settings.clone();
        loop {
            let more = match self.try_send_due().await {
                Ok(report) => {
                    delays = backoff();
                    if report.claimed > 0 {
                        tracing::debug!(?report, "email sweep done");
                    }
                    report.claimed >= settings.batch && report.parked + report.deferred == 0
                }
                Err(e) => {
                    let delay = delays.next().unwrap_or(Duration::from_secs(30));
                    tracing::warn!(error = %e, ?delay, "email sweep failed; backing off");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                    continue;
                }
            };
            if shutdown.is_cancelled() {
                break;
            }
            if !more {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = self.inner.wake.notified() => {}
                    () = tokio::time::sleep(settings.poll_interval) => {}
                }
            }
        }
        self.inner.handed.close();
        if tokio::time::timeout(Duration::from_secs(20), self.inner.handed.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "emails in flight did not finish within 20 s; their leases will run out and they are retried"
            );
        }
        tracing::info!("email sender stopped");
    }
}
