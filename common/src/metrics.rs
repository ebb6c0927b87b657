//! Step timings and their per-epoch summary: what the progress bar, the
//! `--metrics` CSV and the benchmarks report.

use std::time::Duration;

/// Where the wall time of one step went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepTiming {
    /// From handing out the shards to the updated weights.
    pub total: Duration,
    /// Backprop on the step's critical path: the shards of the busiest worker
    /// (in one process: all of them), plus the first weight gradients the
    /// coordinator computes from the errors small shards send.
    pub compute: Duration,
    /// Encoding and decoding messages on the critical path: the coordinator's
    /// plus the busiest worker's.
    pub codec: Duration,
    /// Adding the shard gradients in shard order and applying the update.
    pub reduce: Duration,
}

impl StepTiming {
    /// The rest of the step: the network, HTTP/2 and the OS scheduler.
    pub fn transport(&self) -> Duration {
        self.total
            .saturating_sub(self.compute + self.codec + self.reduce)
    }
}

/// Percentiles of an epoch's step timings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepSummary {
    /// Steps summarised.
    pub steps: usize,
    /// Median step time.
    pub p50: Duration,
    /// 99th percentile step time.
    pub p99: Duration,
    /// Median compute part.
    pub compute_p50: Duration,
    /// Median encode/decode part.
    pub codec_p50: Duration,
    /// Median transport part.
    pub transport_p50: Duration,
    /// Median reduce/update part.
    pub reduce_p50: Duration,
}

impl StepSummary {
    /// Summarises `timings` (nearest-rank percentiles; all zero when empty).
    pub fn of(timings: &[StepTiming]) -> Self {
        let part = |f: fn(&StepTiming) -> Duration, q: f64| {
            let mut v: Vec<Duration> = timings.iter().map(f).collect();
            v.sort_unstable();
            percentile(&v, q)
        };
        StepSummary {
            steps: timings.len(),
            p50: part(|t| t.total, 0.50),
            p99: part(|t| t.total, 0.99),
            compute_p50: part(|t| t.compute, 0.50),
            codec_p50: part(|t| t.codec, 0.50),
            transport_p50: part(StepTiming::transport, 0.50),
            reduce_p50: part(|t| t.reduce, 0.50),
        }
    }
}

/// Nearest-rank percentile `q` (0..=1) of `sorted`; zero for an empty slice.
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&v, 0.5), ms(50));
        assert_eq!(percentile(&v, 0.99), ms(99));
        assert_eq!(percentile(&v, 1.0), ms(100));
        assert_eq!(percentile(&v[..1], 0.99), ms(1));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn transport_is_the_unexplained_rest() {
        let t = StepTiming {
            total: ms(10),
            compute: ms(4),
            codec: ms(1),
            reduce: ms(2),
        };
        assert_eq!(t.transport(), ms(3));
        let s = StepSummary::of(&[t, t, t]);
        assert_eq!((s.steps, s.p50, s.transport_p50), (3, ms(10), ms(3)));
        // A clock that attributes more than the total never goes negative.
        let over = StepTiming {
            compute: ms(20),
            ..t
        };
        assert_eq!(over.transport(), Duration::ZERO);
    }
}
