//! The single-process reference trainer, and the step pieces it shares with
//! the coordinator: which samples form a step's shards ([`step_shards`]), a
//! shard's gradient ([`shard_gradients`]) and the reduction plus update
//! ([`apply_step`]). Because the coordinator calls the very same functions,
//! a cluster run with `S` shards is bitwise equal to this trainer with `S` shards.

use std::time::{Duration, Instant};

use crate::dataset::{Mnist, Samples};
use crate::gradients::Gradients;
use crate::metrics::{StepSummary, StepTiming};
use crate::network::Network;
use crate::schedule::{epoch_order, init_rng, shard_ranges, StepId};

/// What to train and how; validated by whoever builds it.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingPlan {
    /// Layer sizes, e.g. `[784, 30, 10]`.
    pub sizes: Vec<usize>,
    /// Number of epochs.
    pub epochs: usize,
    /// Mini-batch length (`len` in `eta / len`); the last batch of an epoch may be shorter.
    pub batch_size: usize,
    /// Learning rate.
    pub eta: f32,
    /// Logical shards per mini-batch, `S`.
    pub shards: usize,
    /// Seed of the initial weights and of every epoch's shuffle.
    pub seed: u64,
}

impl TrainingPlan {
    /// The initial network of this plan: N(0, 1) from the seed.
    pub fn initial_network(&self) -> Network {
        Network::new(&self.sizes, &mut init_rng(self.seed))
    }
}

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
    /// Training samples in the epoch.
    pub samples: usize,
    /// Mean quadratic cost `½‖a(x) − y(x)‖²` over the training set after the epoch.
    pub training_cost: f64,
    /// Step time percentiles and their breakdown.
    pub step_times: StepSummary,
    /// Workers connected at the end of the epoch (0 when training in one process).
    pub workers: usize,
    /// Shards recomputed by another worker during the epoch (lost or rejected results).
    pub recomputed: u64,
}

impl EpochReport {
    /// Training samples per second of wall time.
    pub fn samples_per_sec(&self) -> f64 {
        self.samples as f64 / self.train_time.as_secs_f64().max(1e-9)
    }

    /// Test accuracy in percent.
    pub fn test_accuracy(&self) -> f64 {
        100.0 * self.test_correct as f64 / self.test_total.max(1) as f64
    }

    /// Validation accuracy in percent.
    pub fn validation_accuracy(&self) -> f64 {
        100.0 * self.validation_correct as f64 / self.validation_total.max(1) as f64
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
    /// After every epoch's evaluation.
    fn epoch(&mut self, report: &EpochReport);
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

/// The shards of one mini-batch: the samples at `batch` (indices into
/// `training`, in shuffled order) split into at most `shards` contiguous ranges.
pub fn step_shards(training: &Samples, batch: &[usize], shards: usize) -> Vec<Samples> {
    shard_ranges(batch.len(), shards)
        .into_iter()
        .map(|r| training.gather(&batch[r]))
        .collect()
}

/// The summed gradient of one shard, as a worker computes it.
pub fn shard_gradients(network: &Network, shard: &Samples) -> Gradients {
    network.backprop(shard.inputs().view(), shard.targets().view())
}

/// Adds the shard gradients in shard order and applies `eta / len` with `len`
/// the mini-batch length (the sum of the shards' sample counts).
///
/// # Panics
/// If `shard_results` is empty.
pub fn apply_step(network: &mut Network, shard_results: &[Gradients], eta: f32, len: usize) {
    if let [only] = shard_results {
        // The sum of one shard is that shard: no copy needed.
        network.apply(only, eta, len);
    } else {
        network.apply(&Gradients::sum_in_shard_order(shard_results), eta, len);
    }
}

/// Samples classified right, evaluated in chunks to bound memory.
pub fn correct_count(network: &Network, samples: &Samples) -> usize {
    const CHUNK: usize = 1000;
    (0..samples.len())
        .step_by(CHUNK)
        .map(|start| {
            let part = samples.slice(start..(start + CHUNK).min(samples.len()));
            network.evaluate(part.inputs().view(), &part.labels)
        })
        .sum()
}

/// The confusion matrix of `network` on `samples`: `m[label][predicted]`.
pub fn confusion_matrix(network: &Network, samples: &Samples) -> [[usize; 10]; 10] {
    const CHUNK: usize = 1000;
    let mut m = [[0; 10]; 10];
    for start in (0..samples.len()).step_by(CHUNK) {
        let part = samples.slice(start..(start + CHUNK).min(samples.len()));
        for (digit, &label) in network
            .predict(part.inputs().view())
            .into_iter()
            .zip(&part.labels)
        {
            m[usize::from(label)][digit] += 1;
        }
    }
    m
}

/// Mean quadratic cost over `samples`, evaluated in chunks to bound memory.
pub fn mean_cost(network: &Network, samples: &Samples) -> f64 {
    const CHUNK: usize = 1000;
    let total: f64 = (0..samples.len())
        .step_by(CHUNK)
        .map(|start| {
            let part = samples.slice(start..(start + CHUNK).min(samples.len()));
            network.total_cost(part.inputs().view(), part.targets().view())
        })
        .sum();
    total / samples.len().max(1) as f64
}

/// Evaluates `network` on the test and validation sets, and its cost on the
/// training set, after epoch `epoch` (run `steps` so far).
pub fn epoch_report(
    network: &Network,
    data: &Mnist,
    epoch: usize,
    steps: u64,
    train_time: Duration,
    step_times: StepSummary,
) -> EpochReport {
    EpochReport {
        epoch,
        steps,
        test_correct: correct_count(network, &data.test),
        test_total: data.test.len(),
        validation_correct: correct_count(network, &data.validation),
        validation_total: data.validation.len(),
        train_time,
        samples: data.training.len(),
        training_cost: mean_cost(network, &data.training),
        step_times,
        workers: 0,
        recomputed: 0,
    }
}

/// Trains `network` in this process, exactly as a cluster with `plan.shards`
/// logical shards would, telling `progress` after every step and epoch;
/// returns the epochs' reports.
pub fn train(
    network: &mut Network,
    data: &Mnist,
    plan: &TrainingPlan,
    mut progress: impl Progress,
) -> Vec<EpochReport> {
    let mut reports = Vec::with_capacity(plan.epochs);
    let mut step = StepId(0);
    for epoch in 0..plan.epochs {
        let start = Instant::now();
        let order = epoch_order(plan.seed, epoch, data.training.len());
        let total = order.len().div_ceil(plan.batch_size);
        let mut timings = Vec::with_capacity(total);
        for (done, batch) in order.chunks(plan.batch_size).enumerate() {
            let step_start = Instant::now();
            let shards = step_shards(&data.training, batch, plan.shards);
            let results: Vec<Gradients> =
                shards.iter().map(|s| shard_gradients(network, s)).collect();
            let computed = step_start.elapsed();
            apply_step(network, &results, plan.eta, batch.len());
            let total_time = step_start.elapsed();
            let timing = StepTiming {
                total: total_time,
                compute: computed,
                codec: Duration::ZERO,
                reduce: total_time - computed,
            };
            timings.push(timing);
            step.0 += 1;
            progress.step(&StepProgress {
                epoch,
                done: done + 1,
                total,
                timing,
                workers: 0,
            });
        }
        let summary = StepSummary::of(&timings);
        let report = epoch_report(network, data, epoch, step.0, start.elapsed(), summary);
        progress.epoch(&report);
        reports.push(report);
    }
    reports
}
