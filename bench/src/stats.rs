//! Latency histograms (HDR, microseconds) and their summaries.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Longest duration told apart: an hour, in microseconds. Longer ones
/// are recorded as an hour.
const HIGHEST_MICROS: u64 = 3_600_000_000;

/// A histogram of durations in microseconds, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_MICROS, 3).expect("valid bounds")
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2).max(1);
    h.saturating_record(micros);
}

/// p50/p90/p99/max in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Summary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        let ms = |micros: u64| (micros as f64) / 1000.0;
        Summary {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }

    /// `p50/p90/p99/max` for the table.
    pub fn cell(&self) -> String {
        if self.count == 0 {
            return "-".into();
        }
        format!(
            "{}/{}/{}/{}",
            short(self.p50_ms),
            short(self.p90_ms),
            short(self.p99_ms),
            short(self.max_ms)
        )
    }
}

/// Milliseconds, with one decimal only where it says something.
pub fn short(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}
