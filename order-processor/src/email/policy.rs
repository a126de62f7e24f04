//! The email worker's policy, in one place: what a failed send means for the
//! email and for sending (each reply classified by `reply`'s table), when a
//! refused email is tried again (the retry schedule), the breaker for a
//! provider that is down or refuses every email, and the pace (an optional
//! rate limit; governor).
//!
//! ```text
//! closed ──N transient failures──> open ──probe succeeds──> closed
//!    └──────530/535 reply────────> refusing ──probe succeeds──┘
//! ```
//! While open or refusing, one email at a time is sent as a probe, on the
//! probe schedule; every other email stays due. Order processing goes on
//! meanwhile: only email waits.

use std::{
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::backoff::Schedule;
use governor::{
    Quota, RateLimiter,
    clock::MonotonicClock,
    middleware::NoOpMiddleware,
    state::{InMemoryState, NotKeyed},
};

use super::reply::ReplyClass;
use crate::metrics;

/// The pace's limiter, on the OS's monotonic clock: governor's default TSC
/// clock was seen to run 10% slow on a VM, which paced 10% under the rate.
type Pace =
    RateLimiter<NotKeyed, InMemoryState, MonotonicClock, NoOpMiddleware<std::time::Instant>>;

/// The breaker's state, as `email_sender_state{state}` and readiness show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    /// The provider failed N times in a row: probing.
    Open,
    /// The provider refuses every email (authentication, spent quota):
    /// probing.
    Refusing,
}

impl BreakerState {
    pub const ALL: [BreakerState; 3] = [
        BreakerState::Closed,
        BreakerState::Open,
        BreakerState::Refusing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::Refusing => "refusing",
        }
    }
}

#[derive(Debug, Clone)]
pub struct PolicySettings {
    /// `Some((n, period))`: at most n emails per period, evenly spaced.
    pub rate: Option<(NonZeroU32, Duration)>,
    /// After a throttled reply: how long every send waits, and when the
    /// email is tried again.
    pub throttle_cooldown: Duration,
    /// Consecutive transient failures that open the breaker.
    pub breaker_threshold: u32,
    /// The breaker's probes, by failed probes so far.
    pub probes: Schedule,
    /// A refused email's retries, by its attempts so far.
    pub retries: Schedule,
    /// A transiently refused email is `FAILED` once it has been due this long.
    pub give_up_after: Duration,
}

/// What becomes of an email the mail server did not accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Due again after this long (`throttled`: a rate-limit reply).
    Retry { after: Duration, throttled: bool },
    /// `FAILED`: refused for good (`gave_up`: refused for now for too long).
    Fail { gave_up: bool },
}

#[derive(Debug)]
struct State {
    breaker: BreakerState,
    consecutive_failures: u32,
    /// The provider's latest refusal, while not closed.
    reason: Option<String>,
    failed_probes: u32,
    next_probe: Instant,
    cool_until: Option<Instant>,
}

/// Cheap to clone; every clone is the same policy.
#[derive(Clone)]
pub struct Policy {
    settings: Arc<PolicySettings>,
    pace: Option<Arc<Pace>>,
    state: Arc<Mutex<State>>,
    /// Named in logs and readiness: which provider refuses.
    provider: Arc<str>,
}

/// A snapshot for readiness and metrics.
#[derive(Debug, Clone)]
pub struct Report {
    pub state: BreakerState,
    pub provider: String,
    pub reason: Option<String>,
    pub next_probe_in: Option<Duration>,
}

impl Policy {
    pub fn new(settings: PolicySettings, provider: &str) -> Policy {
        // Evenly spaced, no burst, and 5% slower than the rate: a provider
        // counting any window of `period` never sees more than n, even when
        // the network delays one send and not the next.
        let pace = settings.rate.map(|(n, period)| {
            let interval = (period / n.get())
                .mul_f64(1.05)
                .max(Duration::from_millis(1));
            let quota = Quota::with_period(interval)
                .expect("a non-zero interval")
                .allow_burst(NonZeroU32::MIN);
            Arc::new(RateLimiter::direct_with_clock(quota, MonotonicClock))
        });
        let policy = Policy {
            settings: Arc::new(settings),
            pace,
            state: Arc::new(Mutex::new(State {
                breaker: BreakerState::Closed,
                consecutive_failures: 0,
                reason: None,
                failed_probes: 0,
                next_probe: Instant::now(),
                cool_until: None,
            })),
            provider: provider.into(),
        };
        policy.publish(BreakerState::Closed);
        policy
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How many emails may be claimed now, given `room` sends at once:
    /// `room` while the breaker is closed (one with a pace: each send waits
    /// for its turn before its claim), one probe when it is due while open,
    /// `None` until then.
    pub fn allowance(&self, room: usize) -> Option<usize> {
        let state = self.lock();
        match state.breaker {
            BreakerState::Closed if self.pace.is_some() => Some(1),
            BreakerState::Closed => Some(room.max(1)),
            _ if Instant::now() < state.next_probe => None,
            _ => Some(1),
        }
    }

    /// Whether the breaker is closed: anything claimed may be sent.
    pub fn is_closed(&self) -> bool {
        self.lock().breaker == BreakerState::Closed
    }

    /// Waits out a throttle cool-down and the pace: called before a claim,
    /// so an email is claimed only when it can be sent at once.
    pub async fn pace(&self) {
        let cool_until = self.lock().cool_until;
        if let Some(until) = cool_until {
            tokio::time::sleep_until(until.into()).await;
        }
        if let Some(pace) = &self.pace {
            pace.until_ready().await;
        }
    }

    /// The provider accepted an email: it is up.
    pub fn succeeded(&self) {
        let mut state = self.lock();
        state.consecutive_failures = 0;
        if state.breaker != BreakerState::Closed {
            tracing::info!(provider = %self.provider, was = state.breaker.as_str(), "mail server accepts again: sending resumes");
            state.breaker = BreakerState::Closed;
            state.reason = None;
            state.failed_probes = 0;
            drop(state);
            self.publish(BreakerState::Closed);
        }
    }

    /// What a refusal of `class` means for an email that has had `attempts`
    /// attempts and has been due for `due_for`, and for sending (the
    /// breaker, the cool-down).
    pub fn answer(
        &self,
        class: ReplyClass,
        reason: &str,
        attempts: i32,
        due_for: Duration,
    ) -> Answer {
        let settings = &self.settings;
        let retry = |after| Answer::Retry {
            after,
            throttled: false,
        };
        match class {
            ReplyClass::Permanent => {
                // About this email only: the provider is up.
                self.succeeded();
                Answer::Fail { gave_up: false }
            }
            ReplyClass::Throttled => {
                self.lock().cool_until = Some(Instant::now() + settings.throttle_cooldown);
                Answer::Retry {
                    after: settings.throttle_cooldown,
                    throttled: true,
                }
            }
            ReplyClass::ProviderRefuses => {
                self.trip(BreakerState::Refusing, reason);
                retry(self.next_probe_in())
            }
            ReplyClass::Transient => {
                let closed = self.failed(reason);
                if due_for >= settings.give_up_after {
                    Answer::Fail { gave_up: true }
                } else if closed {
                    retry(settings.retries.after(u32::try_from(attempts).unwrap_or(1)))
                } else {
                    // While the breaker is open its probes set the pace: the
                    // email is due at the next probe, so the first success
                    // finds the whole backlog due.
                    retry(self.next_probe_in())
                }
            }
        }
    }

    /// A transient failure: N in a row open the breaker; while open, each
    /// pushes the next probe back. Whether the breaker is still closed.
    fn failed(&self, reason: &str) -> bool {
        let (breaker, failures) = {
            let mut state = self.lock();
            state.consecutive_failures += 1;
            (state.breaker, state.consecutive_failures)
        };
        match breaker {
            BreakerState::Closed if failures < self.settings.breaker_threshold.max(1) => true,
            BreakerState::Closed => {
                self.trip(BreakerState::Open, reason);
                false
            }
            open => {
                self.trip(open, reason);
                false
            }
        }
    }

    /// Opens the breaker in `to` (or keeps it open), and schedules the next
    /// probe.
    fn trip(&self, to: BreakerState, reason: &str) {
        let mut state = self.lock();
        let changes = state.breaker != to;
        if changes {
            match to {
                BreakerState::Refusing => {
                    tracing::error!(provider = %self.provider, %reason, "mail server refuses every email: sending paused, probing until it accepts")
                }
                _ => {
                    tracing::warn!(provider = %self.provider, failures = state.consecutive_failures, %reason, "mail server unavailable: breaker open, probing")
                }
            }
            state.breaker = to;
        }
        state.reason = Some(reason.to_string());
        state.failed_probes = state.failed_probes.saturating_add(1);
        state.next_probe = Instant::now() + self.settings.probes.after(state.failed_probes);
        drop(state);
        if changes {
            self.publish(to);
        }
    }

    /// How long until the next probe (zero while closed).
    pub fn next_probe_in(&self) -> Duration {
        self.lock()
            .next_probe
            .saturating_duration_since(Instant::now())
    }

    pub fn report(&self) -> Report {
        let state = self.lock();
        let now = Instant::now();
        Report {
            state: state.breaker,
            provider: self.provider.to_string(),
            reason: state.reason.clone(),
            next_probe_in: (state.breaker != BreakerState::Closed)
                .then(|| state.next_probe.saturating_duration_since(now)),
        }
    }

    fn publish(&self, current: BreakerState) {
        for state in BreakerState::ALL {
            ::metrics::gauge!(
                metrics::EMAIL_SENDER_STATE,
                "state" => state.as_str(),
                "provider" => self.provider.to_string()
            )
            .set(if state == current { 1.0 } else { 0.0 });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(threshold: u32) -> Policy {
        Policy::new(
            PolicySettings {
                rate: None,
                throttle_cooldown: Duration::from_millis(10),
                breaker_threshold: threshold,
                probes: Schedule::new(Duration::from_millis(50), Duration::from_millis(200)),
                retries: Schedule::new(Duration::from_secs(1), Duration::from_secs(5)),
                give_up_after: Duration::from_secs(3600),
            },
            "smtp://test",
        )
    }

    const TRANSIENT: ReplyClass = ReplyClass::Transient;

    #[test]
    fn n_transient_failures_open_the_breaker_and_a_success_closes_it() {
        let policy = policy(3);
        let due = Duration::ZERO;
        for _ in 0..2 {
            let answer = policy.answer(TRANSIENT, "421 busy", 1, due);
            assert!(
                matches!(answer, Answer::Retry { after, .. } if after >= Duration::from_secs(1)),
                "{answer:?}"
            );
        }
        assert_eq!(policy.allowance(10), Some(10));
        policy.answer(TRANSIENT, "421 busy", 1, due);
        assert_eq!(policy.report().state, BreakerState::Open);
        assert_eq!(policy.allowance(10), None, "no probe before it is due");
        std::thread::sleep(Duration::from_millis(110));
        assert_eq!(policy.allowance(10), Some(1), "one probe");
        policy.succeeded();
        assert_eq!(policy.report().state, BreakerState::Closed);
        assert_eq!(policy.allowance(10), Some(10));
    }

    #[test]
    fn a_refusal_pauses_at_once_and_probes_back_off_to_the_cap() {
        let policy = policy(5);
        policy.answer(
            ReplyClass::ProviderRefuses,
            "535 5.7.0 Monthly messages limit reached",
            1,
            Duration::ZERO,
        );
        let report = policy.report();
        assert_eq!(report.state, BreakerState::Refusing);
        assert!(report.reason.as_deref().unwrap_or("").contains("Monthly"));
        for _ in 0..10 {
            policy.answer(ReplyClass::ProviderRefuses, "535 again", 1, Duration::ZERO);
        }
        let next = policy.report().next_probe_in.expect("probing");
        assert!(next <= Duration::from_millis(200), "{next:?}");
    }

    #[test]
    fn throttling_and_giving_up_follow_the_reply_table() {
        let policy = policy(5);
        assert_eq!(
            policy.answer(
                ReplyClass::Throttled,
                "550 too many emails per second",
                1,
                Duration::ZERO
            ),
            Answer::Retry {
                after: Duration::from_millis(10),
                throttled: true
            }
        );
        assert_eq!(
            policy.answer(
                ReplyClass::Permanent,
                "550 5.1.1 unknown user",
                1,
                Duration::ZERO
            ),
            Answer::Fail { gave_up: false }
        );
        assert_eq!(
            policy.answer(TRANSIENT, "421 busy", 9, Duration::from_secs(3600)),
            Answer::Fail { gave_up: true }
        );
        assert_eq!(
            policy.allowance(4),
            Some(4),
            "a pace-less policy claims what room allows"
        );
    }
}
