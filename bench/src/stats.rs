//! Medians and tails of repeated measurements: a benchmark reports these, never one run.

use std::time::Duration;

/// A sorted sample of durations.
#[derive(Debug, Clone)]
pub struct Sample(Vec<Duration>);

impl Sample {
    pub fn new(mut times: Vec<Duration>) -> Self {
        times.sort();
        Self(times)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The value at quantile `q` (0.5: median), nearest rank; zero for an empty sample.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let last = self.0.len() - 1;
        let rank = ((last as f64) * q).round() as usize;
        self.0[rank.min(last)]
    }

    pub fn median(&self) -> Duration {
        self.quantile(0.5)
    }

    pub fn p99(&self) -> Duration {
        self.quantile(0.99)
    }
}

/// A duration for a table: µs-precise ms below 1 ms, ms below 1 s, else s.
pub fn human(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 0.001 {
        format!("{:.3} ms", secs * 1e3)
    } else if secs < 1.0 {
        format!("{:.2} ms", secs * 1e3)
    } else {
        format!("{secs:.2} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let sample = Sample::new((1..=100).rev().map(Duration::from_millis).collect());
        assert_eq!(sample.median(), Duration::from_millis(51));
        assert_eq!(sample.p99(), Duration::from_millis(99));
        assert_eq!(Sample::new(vec![]).median(), Duration::ZERO);
    }
}
