//! When a shard counts as late: the adaptive threshold of backup copies.
//!
//! The pool records how long each kept shard took, from being handed out to
//! its result arriving. A shard still unanswered after
//! `max(floor, factor × p99 of the last` [`WINDOW`] `such times)` is late, and
//! its copy goes to an idle worker ([`super::step::StepState::plan_backups`]).
//! Results are deterministic, so a backup can never change the model; it only
//! costs one more shard of compute.

use std::time::Duration;

/// Shard times the p99 is taken over.
pub const WINDOW: usize = 512;

/// How often (in recorded shard times) the p99 is recomputed.
const REFRESH: usize = 32;

/// The flags behind the threshold (`--backup-factor`, `--backup-floor`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackupPolicy {
    /// Multiple of the recent p99 shard time after which a shard is late; 0 turns backups off.
    pub factor: f64,
    /// The threshold never goes below this.
    pub floor: Duration,
}

impl BackupPolicy {
    /// No backups: a straggler is waited for until the shard timeout.
    pub const OFF: BackupPolicy = BackupPolicy {
        factor: 0.0,
        floor: Duration::ZERO,
    };

    /// The defaults: 4 × p99, at least 2 ms.
    pub const DEFAULT: BackupPolicy = BackupPolicy {
        factor: 4.0,
        floor: Duration::from_millis(2),
    };

    /// Whether backups are on.
    pub fn enabled(&self) -> bool {
        self.factor > 0.0
    }
}

/// Recent shard times and the threshold they give.
#[derive(Debug, Clone)]
pub struct ShardTimes {
    policy: BackupPolicy,
    recent: Vec<Duration>,
    /// Where the next time goes once `recent` is full.
    next: usize,
    since_refresh: usize,
    threshold: Option<Duration>,
}

impl ShardTimes {
    /// No times yet: the threshold is the floor (if backups are on).
    pub fn new(policy: BackupPolicy) -> Self {
        Self {
            policy,
            recent: Vec::with_capacity(WINDOW),
            next: 0,
            since_refresh: 0,
            threshold: policy.enabled().then_some(policy.floor),
        }
    }

    /// Records one kept shard's time.
    pub fn record(&mut self, took: Duration) {
        if !self.policy.enabled() {
            return;
        }
        if self.recent.len() < WINDOW {
            self.recent.push(took);
        } else {
            self.recent[self.next] = took;
            self.next = (self.next + 1) % WINDOW;
        }
        self.since_refresh += 1;
        if self.since_refresh >= REFRESH || self.recent.len() < REFRESH {
            self.since_refresh = 0;
            self.refresh();
        }
    }

    fn refresh(&mut self) {
        let mut sorted = self.recent.clone();
        let k = (sorted.len() * 99).div_ceil(100).saturating_sub(1);
        let (_, &mut p99, _) = sorted.select_nth_unstable(k);
        self.threshold = Some(p99.mul_f64(self.policy.factor).max(self.policy.floor));
    }

    /// How long a shard may go unanswered before it is late; `None` with backups off.
    pub fn threshold(&self) -> Option<Duration> {
        self.threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn threshold_is_factor_times_p99_with_a_floor() {
        let mut t = ShardTimes::new(BackupPolicy::DEFAULT);
        assert_eq!(t.threshold(), Some(2 * MS), "the floor before any time");
        for _ in 0..WINDOW {
            t.record(MS / 10);
        }
        assert_eq!(t.threshold(), Some(2 * MS), "4 x 0.1 ms is under the floor");
        for i in 0..WINDOW {
            // 3 of 512 shards take 3 ms (under 1%), the rest 1 ms: p99 is 1 ms.
            t.record(if i % 200 == 0 { 3 * MS } else { MS });
        }
        assert_eq!(t.threshold(), Some(4 * MS));
        for _ in 0..WINDOW {
            t.record(10 * MS);
        }
        assert_eq!(t.threshold(), Some(40 * MS), "the window forgets old times");
    }

    #[test]
    fn off_never_has_a_threshold() {
        let mut t = ShardTimes::new(BackupPolicy::OFF);
        t.record(MS);
        assert_eq!(t.threshold(), None);
        assert!(!BackupPolicy::OFF.enabled());
    }
}
