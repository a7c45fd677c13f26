//! Latency distributions: an HDR histogram of microseconds at three
//! significant digits, the precision HdrHistogram's own tools report at.
//!
//! Each connection records into its own [`Latencies`] and the run merges
//! them at the end, so recording never takes a lock shared between threads.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Significant decimal digits kept for every recorded latency.
const SIGNIFICANT_DIGITS: u8 = 3;

/// How finely [`Latencies::curve`] samples the distribution: points per
/// halving of the distance to 100%, as in HdrHistogram's percentile output.
const CURVE_TICKS_PER_HALF_DISTANCE: u32 = 5;

/// A latency distribution in microseconds.
#[derive(Clone, Debug)]
pub struct Latencies {
    histogram: Histogram<u64>,
}

/// One point of a percentile curve: `percentile`% of requests took at most
/// `latency_us` microseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CurvePoint {
    pub percentile: f64,
    pub latency_us: u64,
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    /// An empty distribution that grows to whatever range is recorded.
    pub fn new() -> Self {
        // Auto-resizing: memory follows the slowest latency seen, not a fixed
        // worst case, which matters with one histogram per connection.
        let histogram =
            Histogram::new(SIGNIFICANT_DIGITS).expect("3 significant digits is a valid precision");
        Latencies { histogram }
    }

    /// Records one request's latency.
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.record_n(micros, 1);
    }

    /// Adds every latency of `other` to this distribution.
    pub fn merge(&mut self, other: &Latencies) {
        for bucket in other.histogram.iter_recorded() {
            self.record_n(bucket.value_iterated_to(), bucket.count_at_value());
        }
    }

    fn record_n(&mut self, micros: u64, count: u64) {
        // Recording grows the histogram; only a value too large for any
        // histogram fails, and that one is kept as the largest trackable.
        if self.histogram.record_n(micros, count).is_err() {
            self.histogram.saturating_record_n(micros, count);
        }
    }

    /// Number of latencies recorded.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The latency that `percentile`% (0 to 100) of requests stayed within.
    pub fn percentile(&self, percentile: f64) -> Duration {
        micros(self.histogram.value_at_percentile(percentile))
    }

    /// The slowest latency recorded.
    pub fn max(&self) -> Duration {
        micros(self.histogram.max())
    }

    /// The mean latency.
    pub fn mean(&self) -> Duration {
        Duration::from_nanos((self.histogram.mean() * 1_000.0) as u64)
    }

    /// The percentile curve from 0% to 100%, densest towards the tail.
    pub fn curve(&self) -> Vec<CurvePoint> {
        if self.histogram.is_empty() {
            return Vec::new();
        }
        self.histogram
            .iter_quantiles(CURVE_TICKS_PER_HALF_DISTANCE)
            .map(|step| CurvePoint {
                percentile: round_percentile(step.quantile_iterated_to() * 100.0),
                latency_us: self.histogram.highest_equivalent(step.value_iterated_to()),
            })
            .collect()
    }

    /// The underlying histogram, for figures this type does not name.
    pub fn histogram(&self) -> &Histogram<u64> {
        &self.histogram
    }
}

/// Rounds off floating-point noise (30.000000000000004) while keeping the
/// deepest tail the curve reaches (99.9999…).
fn round_percentile(percentile: f64) -> f64 {
    const PLACES: f64 = 1e9;
    (percentile * PLACES).round() / PLACES
}

fn micros(value: u64) -> Duration {
    Duration::from_micros(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_to_a_thousand_micros() -> Latencies {
        let mut latencies = Latencies::new();
        for us in 1..=1000 {
            latencies.record(Duration::from_micros(us));
        }
        latencies
    }

    #[test]
    fn percentiles_of_a_uniform_distribution_are_exact() {
        let latencies = one_to_a_thousand_micros();
        assert_eq!(latencies.count(), 1000);
        assert_eq!(latencies.percentile(50.0), Duration::from_micros(500));
        assert_eq!(latencies.percentile(90.0), Duration::from_micros(900));
        assert_eq!(latencies.percentile(99.0), Duration::from_micros(990));
        // 99.9% of 1000 is 999.0000000000001 in floating point, which
        // HdrHistogram rounds up to the next value.
        assert!((999..=1000).contains(&latencies.percentile(99.9).as_micros()));
        assert_eq!(latencies.max(), Duration::from_micros(1000));
        assert_eq!(latencies.mean(), Duration::from_nanos(500_500));
    }

    #[test]
    fn large_latencies_keep_three_significant_digits() {
        let mut latencies = Latencies::new();
        latencies.record(Duration::from_millis(1234));
        let max = latencies.max().as_micros() as f64;
        assert!(
            (max - 1_234_000.0).abs() / 1_234_000.0 < 0.001,
            "max {max}µs"
        );
    }

    #[test]
    fn merged_connections_equal_one_recording_of_everything() {
        let mut odd = Latencies::new();
        let mut even = Latencies::new();
        for us in 1..=1000u64 {
            let half = if us % 2 == 0 { &mut even } else { &mut odd };
            half.record(Duration::from_micros(us));
        }
        odd.merge(&even);
        let whole = one_to_a_thousand_micros();
        assert_eq!(odd.count(), whole.count());
        for p in [0.0, 50.0, 90.0, 99.0, 99.9, 100.0] {
            assert_eq!(odd.percentile(p), whole.percentile(p), "p{p}");
        }
        assert_eq!(odd.mean(), whole.mean());
    }

    #[test]
    fn curve_rises_to_the_maximum_at_one_hundred_percent() {
        let curve = one_to_a_thousand_micros().curve();
        assert!(curve.len() > 10, "{} points", curve.len());
        assert!(curve
            .windows(2)
            .all(|w| w[0].percentile <= w[1].percentile && w[0].latency_us <= w[1].latency_us));
        let last = curve.last().copied().expect("a point");
        assert_eq!(last.percentile, 100.0);
        assert_eq!(last.latency_us, 1000);
        assert!(Latencies::new().curve().is_empty());
    }
}
