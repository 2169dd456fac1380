//! Latency samples and their summary (exact percentiles over the sorted samples).

use serde::{Deserialize, Serialize};

/// Latencies in microseconds plus counters, for one workload at one concurrency.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    pub latencies_us: Vec<u64>,
    pub errors: u64,
    pub empty: u64,
    pub first_error: Option<String>,
}

impl Samples {
    pub fn record(&mut self, latency_us: u64) {
        self.latencies_us.push(latency_us);
    }

    pub fn merge(&mut self, other: Samples) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        self.empty += other.empty;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    pub fn summary(mut self, elapsed_s: f64) -> Summary {
        self.latencies_us.sort_unstable();
        let l = &self.latencies_us;
        let requests = l.len() as u64;
        let ms = |us: u64| us as f64 / 1000.0;
        Summary {
            requests,
            errors: self.errors,
            empty: self.empty,
            elapsed_s,
            throughput: if elapsed_s > 0.0 {
                requests as f64 / elapsed_s
            } else {
                0.0
            },
            p50_ms: ms(percentile(l, 50.0)),
            p95_ms: ms(percentile(l, 95.0)),
            p99_ms: ms(percentile(l, 99.0)),
            max_ms: ms(l.last().copied().unwrap_or(0)),
            mean_ms: if l.is_empty() {
                0.0
            } else {
                ms(l.iter().sum::<u64>() / requests)
            },
            first_error: self.first_error,
        }
    }
}

/// Nearest-rank percentile of sorted values (`p` in 0..=100); 0 for no values.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median of a list of floats (mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Summary {
    pub requests: u64,
    /// Non-2xx answers and transport failures.
    pub errors: u64,
    /// 2xx searches whose Bundle had no entry.
    pub empty: u64,
    pub elapsed_s: f64,
    /// Completed requests (2xx or not) per second.
    pub throughput: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub first_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 95.0), 95);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&v, 0.0), 1);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
        let small = [10, 20, 30, 40];
        assert_eq!(percentile(&small, 50.0), 20);
        assert_eq!(percentile(&small, 99.0), 40);
    }

    #[test]
    fn summary_of_unsorted_samples() {
        let mut s = Samples::default();
        for us in [5000, 1000, 3000, 2000, 4000] {
            s.record(us);
        }
        s.errors = 1;
        let sum = s.summary(2.0);
        assert_eq!(sum.requests, 5);
        assert!((sum.throughput - 2.5).abs() < 1e-9);
        assert!((sum.p50_ms - 3.0).abs() < 1e-9);
        assert!((sum.max_ms - 5.0).abs() < 1e-9);
        assert!((sum.mean_ms - 3.0).abs() < 1e-9);
        assert_eq!(sum.errors, 1);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
