//! What a run tells its watchers: a report per epoch ([`EpochReport`]),
//! where it is after every step ([`StepProgress`]), and the [`Progress`]
//! trait that receives them (the terminal UI, the dashboard, `verify`'s
//! checker), with [`Quiet`] for no watcher.

use std::time::Duration;

use crate::metrics::{StepSummary, StepTiming};
use crate::network::Network;
use crate::stopping::Verdict;

/// What one epoch achieved.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochReport {
    /// Epoch number, from 0.
    pub epoch: usize,
    /// Steps run so far in the run.
    pub steps: u64,
    /// Test samples classified right.
    pub test_correct: usize,
    /// Test samples.
    pub test_total: usize,
    /// Validation samples classified right.
    pub validation_correct: usize,
    /// Validation samples.
    pub validation_total: usize,
    /// Wall time of the epoch's training steps (evaluation excluded).
    pub train_time: Duration,
    /// Training samples in the epoch (the training set's size).
    pub samples: usize,
    /// Training samples this run trained on in the epoch: all of them, or
    /// fewer for an epoch resumed mid-way.
    pub trained: usize,
    /// network2.py's `total_cost` on the training set after the epoch: the
    /// mean cost plus `0.5·(λ/n)·Σ‖w‖²` (when monitored).
    pub training_cost: Option<f64>,
    /// Training samples classified right (when monitored).
    pub training_correct: Option<usize>,
    /// The same cost on the validation set, `n` its size (when monitored).
    pub validation_cost: Option<f64>,
    /// The learning rate the epoch was trained at.
    pub eta: f32,
    /// What early stopping and the η schedule decided after the epoch.
    pub verdict: Verdict,
    /// Step time percentiles and their breakdown.
    pub step_times: StepSummary,
    /// Workers connected at the end of the epoch (0 when training in one process).
    pub workers: usize,
    /// Shards recomputed by another worker during the epoch (lost or rejected results).
    pub recomputed: u64,
    /// Backup copies of late shards sent to idle workers during the epoch.
    pub backups: u64,
}

impl EpochReport {
    /// Training samples per second of wall time (of those trained).
    pub fn samples_per_sec(&self) -> f64 {
        self.trained as f64 / self.train_time.as_secs_f64().max(1e-9)
    }

    /// Test accuracy in percent.
    pub fn test_accuracy(&self) -> f64 {
        100.0 * self.test_correct as f64 / self.test_total.max(1) as f64
    }

    /// Validation accuracy in percent.
    pub fn validation_accuracy(&self) -> f64 {
        100.0 * self.validation_correct as f64 / self.validation_total.max(1) as f64
    }

    /// Training accuracy in percent (when monitored).
    pub fn training_accuracy(&self) -> Option<f64> {
        self.training_correct
            .map(|c| 100.0 * c as f64 / self.samples.max(1) as f64)
    }
}

/// Where a run is within an epoch, after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepProgress {
    /// Epoch number, from 0.
    pub epoch: usize,
    /// Steps of this epoch done.
    pub done: usize,
    /// Steps in this epoch.
    pub total: usize,
    /// Where the last step's time went.
    pub timing: StepTiming,
    /// Workers connected (0 in one process).
    pub workers: usize,
}

/// Watches a run: after every step and after every epoch's evaluation.
/// Any `FnMut(&EpochReport)` is one that ignores steps.
pub trait Progress {
    /// After every applied step.
    fn step(&mut self, _progress: &StepProgress) {}
    /// After every applied step, once [`Progress::step`] has seen it: the
    /// weights now. A watcher that keeps them clones only when it needs to
    /// (a clone per step would cost more than a step at batch 10).
    fn weights(&mut self, _network: &Network) {}
    /// After a checkpoint covering the first `step` steps was written.
    fn checkpoint(&mut self, _step: u64) {}
    /// After every epoch's evaluation.
    fn epoch(&mut self, report: &EpochReport);
    /// After every step and every epoch, with the hash chain so far: whether
    /// to go on. `verify` stops a replay at the first link that differs.
    fn proceed(&mut self, _chain: &crate::chain::Chain) -> bool {
        true
    }
}

/// A [`Progress`] that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;

impl Progress for Quiet {
    fn epoch(&mut self, _report: &EpochReport) {}
}

impl<F: FnMut(&EpochReport)> Progress for F {
    fn epoch(&mut self, report: &EpochReport) {
        self(report)
    }
}
