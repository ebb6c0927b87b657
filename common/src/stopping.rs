//! When to lower η and when to stop, judged after each epoch on the
//! validation accuracy (chapter 3, "How to choose a neural network's
//! hyper-parameters"):
//! - early stopping, the book's "no-improvement-in-N" rule: stop once N
//!   epochs have passed without a better validation accuracy than the best so far;
//! - a learning-rate schedule: halve η each time the validation accuracy has
//!   not improved for N epochs (counting afresh after each halving), and stop
//!   once η has fallen to η₀/R (the book's exercise uses N = 10, R = 128).
//!
//! Both are pure functions of the validation scores, so they are part of the
//! run's exact state: [`Stopping`] is checkpointed, and a resumed run makes
//! the same decisions at the same epochs.

/// `--eta-schedule halve:N:R`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EtaSchedule {
    /// Epochs without a better validation accuracy before η is halved (N ≥ 1).
    pub patience: usize,
    /// Stop when η ≤ η₀/R (R > 1).
    pub ratio: f32,
}

impl std::fmt::Display for EtaSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "halve:{}:{}", self.patience, self.ratio)
    }
}

impl std::str::FromStr for EtaSchedule {
    type Err = String;

    /// Parses `halve:N:R`, N ≥ 1 epochs, R > 1 finite.
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let [kind, n, r] = parts[..] else {
            return Err("expected halve:N:R, e.g. halve:10:128".into());
        };
        if kind != "halve" {
            return Err(format!(
                "unknown schedule {kind:?}; the one schedule is halve:N:R"
            ));
        }
        let patience: usize = n
            .parse()
            .map_err(|_| format!("N {n:?} is not a whole number of epochs"))?;
        if patience == 0 {
            return Err("N must be at least 1 epoch".into());
        }
        let ratio: f32 = r.parse().map_err(|_| format!("R {r:?} is not a number"))?;
        if !(ratio.is_finite() && ratio > 1.0) {
            return Err(format!("R {r} must be a finite number > 1"));
        }
        Ok(EtaSchedule { patience, ratio })
    }
}

/// Why a run ended before its last epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `--early-stop N`: N epochs without a better validation accuracy.
    NoImprovement {
        /// N.
        epochs: usize,
    },
    /// `--eta-schedule`: η has fallen to η₀/R.
    EtaFloor {
        /// Halvings done.
        halvings: u32,
    },
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::NoImprovement { epochs } => {
                write!(
                    f,
                    "no better validation accuracy in {epochs} epochs (--early-stop)"
                )
            }
            StopReason::EtaFloor { halvings } => write!(
                f,
                "eta has been halved {halvings} times, down to eta0/R (--eta-schedule)"
            ),
        }
    }
}

/// What the rules decided after an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Verdict {
    /// This epoch's validation accuracy is the best so far (strictly better).
    pub improved: bool,
    /// η was halved for the next epoch.
    pub halved: bool,
    /// Stop now (this was the last epoch).
    pub stop: Option<StopReason>,
}

/// The rules' state: the best validation epoch, the counts since it, and η.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stopping {
    /// The best validation accuracy so far and its epoch.
    pub best: Option<(usize, usize)>,
    /// Epochs since the best one (early stopping's count).
    pub since_best: usize,
    /// Epochs since the best one or the last halving (the schedule's count).
    pub since_change: usize,
    /// Times η has been halved: the current η is η₀/2^halvings.
    pub halvings: u32,
    /// The run has stopped.
    pub stopped: bool,
}

impl Stopping {
    /// The learning rate for the next step: `eta0 / 2^halvings` (exact in f32).
    pub fn eta(&self, eta0: f32) -> f32 {
        eta0 / 2f32.powi(self.halvings as i32)
    }

    /// Judges epoch `epoch`, whose validation accuracy was `validation_correct`,
    /// by `early_stop` (N, if set) and `schedule` (if set).
    pub fn after_epoch(
        &mut self,
        epoch: usize,
        validation_correct: usize,
        early_stop: Option<usize>,
        schedule: Option<EtaSchedule>,
    ) -> Verdict {
        let mut verdict = Verdict::default();
        if self.best.is_none_or(|(_, best)| validation_correct > best) {
            self.best = Some((epoch, validation_correct));
            (self.since_best, self.since_change) = (0, 0);
            verdict.improved = true;
        } else {
            self.since_best += 1;
            self.since_change += 1;
        }
        if let Some(s) = schedule.filter(|s| self.since_change >= s.patience) {
            self.halvings += 1;
            self.since_change = 0;
            verdict.halved = true;
            if 2f32.powi(self.halvings as i32) >= s.ratio {
                verdict.stop = Some(StopReason::EtaFloor {
                    halvings: self.halvings,
                });
            }
        }
        if let Some(n) = early_stop.filter(|&n| self.since_best >= n) {
            verdict.stop = Some(StopReason::NoImprovement { epochs: n });
        }
        self.stopped = verdict.stop.is_some();
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_parse_or_say_why_not() {
        let s: EtaSchedule = "halve:10:128".parse().unwrap();
        assert_eq!(
            s,
            EtaSchedule {
                patience: 10,
                ratio: 128.0
            }
        );
        for (bad, why) in [
            ("halve:10", "expected halve:N:R"),
            ("double:10:128", "unknown schedule"),
            ("halve:0:128", "at least 1"),
            ("halve:x:128", "whole number"),
            ("halve:10:1", "> 1"),
            ("halve:10:nan", "> 1"),
        ] {
            let err = bad.parse::<EtaSchedule>().unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn early_stop_after_n_epochs_without_improvement() {
        let mut s = Stopping::default();
        let scores = [50, 60, 60, 59, 61, 61, 61, 60];
        let verdicts: Vec<Verdict> = scores
            .iter()
            .enumerate()
            .map(|(e, &v)| s.after_epoch(e, v, Some(3), None))
            .collect();
        assert!(verdicts[..7].iter().all(|v| v.stop.is_none()));
        assert_eq!(
            verdicts[7].stop,
            Some(StopReason::NoImprovement { epochs: 3 })
        );
        assert_eq!(s.best, Some((4, 61)), "ties do not count as better");
    }

    #[test]
    fn schedule_halves_on_each_plateau_and_stops_at_the_floor() {
        let sched = EtaSchedule {
            patience: 2,
            ratio: 4.0,
        };
        let mut s = Stopping::default();
        let mut log = Vec::new();
        for (e, v) in [10, 9, 9, 11, 11, 11].into_iter().enumerate() {
            let verdict = s.after_epoch(e, v, None, Some(sched));
            log.push((verdict.halved, verdict.stop.is_some(), s.eta(1.0)));
        }
        assert_eq!(
            log,
            vec![
                (false, false, 1.0),
                (false, false, 1.0),
                (true, false, 0.5),  // 2 epochs without a better score
                (false, false, 0.5), // 11 is better
                (false, false, 0.5),
                (true, true, 0.25), // halved to eta0/4 = eta0/R: stop
            ]
        );
    }
}
