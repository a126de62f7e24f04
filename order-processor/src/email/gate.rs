//! What stands between a due email and the SMTP server, shared by every
//! task of the process: the pace (an optional rate limit), a cool-down after
//! a throttled reply, and a breaker for a provider that is down or refuses
//! every email.
//!
//! ```text
//! closed ──N transient failures──> open ──probe succeeds──> closed
//!    └──────530/535 reply────────> refusing ──probe succeeds──┘
//! ```
//! While open or refusing, one email at a time is sent as a probe, on an
//! exponential schedule; every other email stays parked (`PENDING`, due).
//! Order processing goes on meanwhile: only email waits.

use std::{
    num::NonZeroU32,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use governor::{
    Quota, RateLimiter,
    clock::MonotonicClock,
    middleware::NoOpMiddleware,
    state::{InMemoryState, NotKeyed},
};

/// The pace's limiter, on the OS's monotonic clock: governor's default TSC
/// clock was seen to run 10% slow on a VM, which paced 10% under the rate.
type Pace =
    RateLimiter<NotKeyed, InMemoryState, MonotonicClock, NoOpMiddleware<std::time::Instant>>;

use crate::metrics;

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
pub struct GateSettings {
    /// `Some((n, period))`: at most n emails per period, evenly spaced.
    pub rate: Option<(NonZeroU32, Duration)>,
    /// How long every send waits after a throttled reply.
    pub throttle_cooldown: Duration,
    /// Consecutive transient failures that open the breaker.
    pub breaker_threshold: u32,
    /// The first probe's delay; doubles per failed probe up to the cap.
    pub probe_base: Duration,
    pub probe_cap: Duration,
}

/// What the gate says to a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Send now.
    Send,
    /// Send now, as the breaker's one probe: report its outcome.
    Probe,
    /// Do not send: park the email until `until` (the next probe).
    Parked { until: Duration, reason: String },
}

#[derive(Debug)]
struct State {
    breaker: BreakerState,
    consecutive_failures: u32,
    /// The provider's latest refusal, while not closed.
    reason: Option<String>,
    failed_probes: u32,
    next_probe: Instant,
    probe_in_flight: bool,
    cool_until: Option<Instant>,
}

/// Cheap to clone; every clone is the same gate.
#[derive(Clone)]
pub struct Gate {
    settings: Arc<GateSettings>,
    pace: Option<Arc<Pace>>,
    /// The pace's spacing between two sends.
    interval: Option<Duration>,
    /// Sends wait for the pace one at a time, first come first served
    /// (tokio's mutex is fair), so a place in the line is a known wait:
    /// `waiting` × `interval`.
    line: Arc<tokio::sync::Mutex<()>>,
    waiting: Arc<AtomicUsize>,
    state: Arc<Mutex<State>>,
    /// Named in logs and readiness: which provider refuses.
    provider: Arc<str>,
}

/// A snapshot for readiness and metrics.
#[derive(Debug, Clone)]
pub struct GateReport {
    pub state: BreakerState,
    pub provider: String,
    pub reason: Option<String>,
    pub next_probe_in: Option<Duration>,
}

impl Gate {
    pub fn new(settings: GateSettings, provider: &str) -> Gate {
        // Evenly spaced, no burst, and 5% slower than the rate: a provider
        // counting any window of `period` never sees more than n, even when
        // the network delays one send and not the next.
        let interval = settings.rate.map(|(n, period)| {
            (period / n.get())
                .mul_f64(1.05)
                .max(Duration::from_millis(1))
        });
        let pace = interval.map(|interval| {
            let quota = Quota::with_period(interval)
                .expect("a non-zero interval")
                .allow_burst(NonZeroU32::MIN);
            Arc::new(RateLimiter::direct_with_clock(quota, MonotonicClock))
        });
        let gate = Gate {
            settings: Arc::new(settings),
            pace,
            interval,
            line: Arc::new(tokio::sync::Mutex::new(())),
            waiting: Arc::new(AtomicUsize::new(0)),
            state: Arc::new(Mutex::new(State {
                breaker: BreakerState::Closed,
                consecutive_failures: 0,
                reason: None,
                failed_probes: 0,
                next_probe: Instant::now(),
                probe_in_flight: false,
                cool_until: None,
            })),
            provider: provider.into(),
        };
        gate.publish(BreakerState::Closed);
        gate
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a sweep may take work now, and how much: `Some(None)` any
    /// amount, `Some(Some(1))` a probe, `None` nothing yet.
    pub fn sweep_allowance(&self) -> Option<Option<usize>> {
        let state = self.lock();
        match state.breaker {
            BreakerState::Closed => Some(None),
            _ if state.probe_in_flight || Instant::now() < state.next_probe => None,
            _ => Some(Some(1)),
        }
    }

    /// Asks to send one email. While the breaker is closed every email may
    /// go; otherwise only the one probe, when it is due.
    pub fn admit(&self) -> Admission {
        let mut state = self.lock();
        if state.breaker == BreakerState::Closed {
            return Admission::Send;
        }
        let now = Instant::now();
        if !state.probe_in_flight && now >= state.next_probe {
            state.probe_in_flight = true;
            return Admission::Probe;
        }
        Admission::Parked {
            until: state.next_probe.saturating_duration_since(now),
            reason: state
                .reason
                .clone()
                .unwrap_or_else(|| "the mail server is unavailable".into()),
        }
    }

    /// Waits its turn in the line, then out a throttle cool-down and the
    /// pace, before an admitted send.
    pub async fn pace(&self) {
        struct InLine<'a>(&'a AtomicUsize);
        impl Drop for InLine<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _in_line = InLine(&self.waiting);
        let _turn = self.line.lock().await;
        let cool_until = self.lock().cool_until;
        if let Some(until) = cool_until {
            tokio::time::sleep_until(until.into()).await;
        }
        if let Some(pace) = &self.pace {
            pace.until_ready().await;
        }
    }

    /// About how long a send that joins the line now waits for its turn.
    pub fn wait_in_line(&self) -> Duration {
        let waiting = u32::try_from(self.waiting.load(Ordering::Relaxed)).unwrap_or(u32::MAX);
        let cooling = self
            .lock()
            .cool_until
            .map(|until| until.saturating_duration_since(Instant::now()))
            .unwrap_or_default();
        self.interval.unwrap_or_default().saturating_mul(waiting) + cooling
    }

    /// How many more sends can join the line and still get their turn
    /// within `within` (`None`: no pace, any number).
    pub fn room_in_line(&self, within: Duration) -> Option<usize> {
        let interval = self.interval?;
        let turns =
            usize::try_from(within.as_nanos() / interval.as_nanos().max(1)).unwrap_or(usize::MAX);
        Some(turns.saturating_sub(self.waiting.load(Ordering::Relaxed)))
    }

    /// The provider accepted an email, or refused only this one: it is up.
    pub fn succeeded(&self) {
        let mut state = self.lock();
        state.consecutive_failures = 0;
        state.probe_in_flight = false;
        if state.breaker != BreakerState::Closed {
            tracing::info!(provider = %self.provider, was = state.breaker.as_str(), "mail server accepts again: sending resumes");
            state.breaker = BreakerState::Closed;
            state.reason = None;
            state.failed_probes = 0;
            drop(state);
            self.publish(BreakerState::Closed);
        }
    }

    /// A transient failure (no reply, 4xx): N in a row open the breaker; a
    /// failed probe pushes the next one back. Returns the breaker's state.
    pub fn failed(&self, reason: &str) -> BreakerState {
        let mut state = self.lock();
        state.consecutive_failures += 1;
        let opens = state.breaker == BreakerState::Closed
            && state.consecutive_failures >= self.settings.breaker_threshold.max(1);
        if opens {
            tracing::warn!(provider = %self.provider, failures = state.consecutive_failures, %reason, "mail server unavailable: breaker open, probing");
            state.breaker = BreakerState::Open;
        }
        if state.breaker != BreakerState::Closed {
            state.reason = Some(reason.to_string());
            self.back_off(&mut state);
        }
        let breaker = state.breaker;
        drop(state);
        if opens {
            self.publish(breaker);
        }
        breaker
    }

    /// The provider refuses every email (530/535): pause at once, probe.
    pub fn refused(&self, reason: &str) {
        let mut state = self.lock();
        let changes = state.breaker != BreakerState::Refusing;
        if changes {
            tracing::error!(provider = %self.provider, %reason, "mail server refuses every email: sending paused, probing until it accepts");
            state.breaker = BreakerState::Refusing;
        }
        state.reason = Some(reason.to_string());
        self.back_off(&mut state);
        drop(state);
        if changes {
            self.publish(BreakerState::Refusing);
        }
    }

    /// A rate-limit reply: every send waits for the cool-down.
    pub fn throttled(&self) {
        let mut state = self.lock();
        state.probe_in_flight = false;
        state.cool_until = Some(Instant::now() + self.settings.throttle_cooldown);
    }

    /// The probe ended without an answer from the provider (the send was
    /// not made): the next probe may go.
    pub fn probe_abandoned(&self) {
        self.lock().probe_in_flight = false;
    }

    fn back_off(&self, state: &mut State) {
        state.probe_in_flight = false;
        let doubling = 2_u32.saturating_pow(state.failed_probes.min(16));
        let delay = self
            .settings
            .probe_base
            .saturating_mul(doubling)
            .min(self.settings.probe_cap);
        state.failed_probes = state.failed_probes.saturating_add(1);
        state.next_probe = Instant::now() + delay;
    }

    pub fn report(&self) -> GateReport {
        let state = self.lock();
        let now = Instant::now();
        GateReport {
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

    fn gate(threshold: u32) -> Gate {
        Gate::new(
            GateSettings {
                rate: None,
                throttle_cooldown: Duration::from_millis(10),
                breaker_threshold: threshold,
                probe_base: Duration::from_millis(50),
                probe_cap: Duration::from_millis(200),
            },
            "smtp://test",
        )
    }

    #[test]
    fn n_transient_failures_open_the_breaker_and_a_success_closes_it() {
        let gate = gate(3);
        assert_eq!(gate.failed("refused"), BreakerState::Closed);
        assert_eq!(gate.failed("refused"), BreakerState::Closed);
        assert_eq!(gate.admit(), Admission::Send);
        assert_eq!(gate.failed("refused"), BreakerState::Open);
        assert!(matches!(gate.admit(), Admission::Parked { .. }));
        assert_eq!(gate.sweep_allowance(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(gate.sweep_allowance(), Some(Some(1)));
        assert_eq!(gate.admit(), Admission::Probe);
        // One probe at a time.
        assert!(matches!(gate.admit(), Admission::Parked { .. }));
        gate.succeeded();
        assert_eq!(gate.report().state, BreakerState::Closed);
        assert_eq!(gate.admit(), Admission::Send);
    }

    #[test]
    fn a_refusal_pauses_at_once_and_probes_back_off_to_the_cap() {
        let gate = gate(5);
        gate.refused("535 5.7.0 Monthly messages limit reached");
        let report = gate.report();
        assert_eq!(report.state, BreakerState::Refusing);
        assert!(report.reason.as_deref().unwrap_or("").contains("Monthly"));
        for _ in 0..10 {
            gate.refused("535 again");
        }
        let next = gate.report().next_probe_in.expect("probing");
        assert!(next <= Duration::from_millis(200), "{next:?}");
    }

    #[tokio::test]
    async fn the_line_knows_each_places_wait_and_its_room() {
        let gate = Gate::new(
            GateSettings {
                rate: Some((
                    NonZeroU32::new(100).expect("non-zero"),
                    Duration::from_secs(1),
                )),
                ..gate(3).settings.as_ref().clone()
            },
            "smtp://test",
        );
        // 100 per second, 5% under: a turn each 10.5 ms.
        assert_eq!(gate.wait_in_line(), Duration::ZERO);
        assert_eq!(gate.room_in_line(Duration::from_millis(105)), Some(10));
        let waiting: Vec<_> = (0..4)
            .map(|_| {
                tokio::spawn({
                    let gate = gate.clone();
                    async move { gate.pace().await }
                })
            })
            .collect();
        tokio::task::yield_now().await;
        // The first went at once; three wait, one turn each.
        assert_eq!(gate.wait_in_line(), Duration::from_micros(31_500));
        assert_eq!(gate.room_in_line(Duration::from_millis(105)), Some(7));
        for task in waiting {
            task.await.expect("paced");
        }
        assert_eq!(gate.wait_in_line(), Duration::ZERO);
        assert_eq!(gate.room_in_line(Duration::from_secs(1)), Some(95));
        assert_eq!(
            super::tests::gate(3).room_in_line(Duration::from_secs(1)),
            None
        );
    }
}
