//! A histogram whose observations are plain atomic adds, encoded through prometheus-client.
//!
//! prometheus-client's own `Histogram` takes a mutex on every observation; the answer-time
//! histograms are observed once per DNS query on every worker thread, where a lock shared by
//! all of them is what issue 14 removes from the cached path. Here each bucket is an
//! `AtomicU64` and the sum is counted in whole units (nanoseconds for times), so an
//! observation is a search over a dozen bounds and two relaxed adds.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{MetricType, TypedMetric},
};

/// Upper bounds of the answer and round-trip time buckets, in seconds: from 50 µs (a cached
/// answer) to 10 s (past every budget), about three per decade.
pub const TIME_BOUNDS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds of the buckets of DHT requests per lookup (Kademlia's hops times its
/// parallelism): powers of two up to 128.
pub const REQUEST_BOUNDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// A histogram of non-negative values; clones share the counts.
#[derive(Debug, Clone)]
pub struct AtomicHistogram(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// Upper bounds as encoded, in the metric's unit (seconds for times).
    bounds: &'static [f64],
    /// The same bounds in whole units, for the search.
    whole_bounds: Box<[u64]>,
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    counts: Box<[AtomicU64]>,
    /// Sum of the observations, in whole units.
    sum: AtomicU64,
    /// Whole units in one of the metric's unit (1e9 nanoseconds in a second): a division,
    /// which prints 0.000837145 where multiplying by 1e-9 printed 0.0008371450000000001.
    per_unit: f64,
}

impl AtomicHistogram {
    /// A histogram of `bounds` (ascending, in the metric's unit) that counts in whole units,
    /// `per_unit` of them in one of the metric's unit.
    fn new(bounds: &'static [f64], per_unit: f64) -> Self {
        let whole_bounds = bounds
            .iter()
            .map(|b| (b * per_unit).round() as u64)
            .collect();
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Self(Arc::new(Inner {
            bounds,
            whole_bounds,
            counts,
            sum: AtomicU64::new(0),
            per_unit,
        }))
    }

    /// A histogram of durations in seconds ([`TIME_BOUNDS`]), summed in nanoseconds.
    pub fn seconds() -> Self {
        Self::new(TIME_BOUNDS, 1e9)
    }

    /// A histogram of counts ([`REQUEST_BOUNDS`]).
    pub fn counts() -> Self {
        Self::new(REQUEST_BOUNDS, 1.0)
    }

    /// Counts one observation of `whole` units.
    pub fn observe_whole(&self, whole: u64) {
        let inner = &self.0;
        let bucket = inner.whole_bounds.partition_point(|&bound| bound < whole);
        inner.counts[bucket].fetch_add(1, Ordering::Relaxed);
        inner.sum.fetch_add(whole, Ordering::Relaxed);
    }

    /// Counts one duration (a histogram made by [`AtomicHistogram::seconds`]).
    pub fn observe_duration(&self, elapsed: Duration) {
        self.observe_whole(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Observations so far, and their sum in the metric's unit.
    pub fn count_and_sum(&self) -> (u64, f64) {
        let count = self
            .0
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum();
        (
            count,
            self.0.sum.load(Ordering::Relaxed) as f64 / self.0.per_unit,
        )
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let inner = &self.0;
        let buckets: Vec<(f64, u64)> = inner
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(inner.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = inner.sum.load(Ordering::Relaxed) as f64 / inner.per_unit;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_on_a_bound_counts_in_that_bucket_and_the_encoding_is_cumulative() {
        let histogram = AtomicHistogram::counts();
        for value in [1, 2, 3, 200] {
            histogram.observe_whole(value);
        }
        assert_eq!(histogram.count_and_sum(), (4, 206.0));
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("hops", "test", histogram);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "hops_bucket{le=\"1.0\"} 1",
            "hops_bucket{le=\"2.0\"} 2",
            "hops_bucket{le=\"4.0\"} 3",
            "hops_bucket{le=\"128.0\"} 3",
            "hops_bucket{le=\"+Inf\"} 4",
            "hops_count 4",
            "hops_sum 206.0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn durations_land_in_the_bucket_of_their_seconds() {
        let histogram = AtomicHistogram::seconds();
        histogram.observe_duration(Duration::from_micros(40));
        histogram.observe_duration(Duration::from_millis(3));
        histogram.observe_duration(Duration::from_secs(60));
        let counts: Vec<u64> = histogram
            .0
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        assert_eq!(counts[0], 1, "40 µs is under 50 µs");
        assert_eq!(
            counts[TIME_BOUNDS.iter().position(|&b| b == 0.005).unwrap()],
            1
        );
        assert_eq!(counts[TIME_BOUNDS.len()], 1, "a minute is past every bound");
        let (count, sum) = histogram.count_and_sum();
        assert_eq!(count, 3);
        assert!((sum - 60.003_04).abs() < 1e-9, "{sum}");
    }
}
