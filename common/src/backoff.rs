//! The one retry schedule of both services: exponential from a first delay,
//! growing by a factor (2 unless said otherwise), capped, jittered (backon's
//! `ExponentialBuilder`; a delay is jittered up to double, never past the
//! cap). Worker loops pause on it, transactions rerun on it, and messages
//! and emails are retried on it.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub first: Duration,
    pub cap: Duration,
    pub factor: f32,
}

impl Schedule {
    pub const fn new(first: Duration, cap: Duration) -> Schedule {
        Schedule {
            first,
            cap,
            factor: 2.0,
        }
    }

    /// A worker loop whose step failed: 200 ms doubling to 30 s.
    pub const WORKER: Schedule = Schedule::new(Duration::from_millis(200), Duration::from_secs(30));

    pub const fn factor(mut self, factor: f32) -> Schedule {
        self.factor = factor;
        self
    }

    /// The delays in order, without end.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        let cap = self.cap;
        self.builder().build().map(move |delay| delay.min(cap))
    }

    /// The delay after `failures` failed attempts (the first failure waits
    /// about `first`), for retries whose count is kept elsewhere: SQS's
    /// receive count, an email's attempts.
    pub fn after(&self, failures: u32) -> Duration {
        let skip = usize::try_from(failures.saturating_sub(1)).unwrap_or(usize::MAX);
        self.delays().nth(skip.min(64)).unwrap_or(self.cap)
    }

    /// backon's builder for this schedule (add a total delay, say).
    pub fn builder(&self) -> ExponentialBuilder {
        ExponentialBuilder::new()
            .with_min_delay(self.first)
            .with_max_delay(self.cap)
            .with_factor(self.factor)
            .with_jitter()
            .without_max_times()
    }

    /// The schedule as backon's own type, for `Retryable::retry`.
    pub fn backoff(&self) -> ExponentialBackoff {
        self.builder().build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_per_failure_jittered_up_to_double_and_never_past_the_cap() {
        let schedule = Schedule::new(Duration::from_secs(2), Duration::from_secs(60));
        let within = |d: Duration, nominal: u64| {
            d >= Duration::from_secs(nominal) && d < Duration::from_secs(nominal * 2)
        };
        assert!(within(schedule.after(1), 2));
        assert!(within(schedule.after(2), 4));
        assert!(within(schedule.after(4), 16));
        assert!(schedule.after(10) <= schedule.cap);
        assert!(schedule.after(u32::MAX) <= schedule.cap, "no overflow");
        assert!(within(schedule.after(0), 2), "no failure counts as one");
        assert!(
            Schedule::WORKER
                .delays()
                .take(100)
                .all(|d| d <= Duration::from_secs(30))
        );
    }
}
