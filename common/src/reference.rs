//! The reference trainer: the single-process loop ([`train`], what
//! `coordinator --local` runs) and the step pieces the cluster's loop
//! (`coordinator::training`) shares with it: which samples form a step's
//! shards ([`step_shards`]), a shard's gradient ([`shard_gradients_with`]),
//! the reduction plus update ([`apply_step`]) and the end of an epoch
//! ([`end_epoch`]: evaluation, early stopping, η schedule, best model).
//! Because the coordinator calls the very same functions, a cluster run with
//! `S` shards is bitwise equal to this trainer with `S` shards. It sits
//! beside the data ([`crate::dataset`]): the maths it drives
//! ([`crate::network`], [`crate::kernels`]) knows nothing of MNIST.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use crate::cost::Cost;
use crate::dataset::{Mnist, Samples};
use crate::gradients::Gradients;
use crate::kernels::KernelSet;
use crate::layers::DropoutKey;
use crate::metrics::{StepSummary, StepTiming};
use crate::network::Network;
use crate::optimizer::{Update, Velocity};
use crate::plan::{BestEpoch, RunState, TrainingPlan};
use crate::schedule::{epoch_order, shard_ranges, StepId};
use crate::stopping::Verdict;
use crate::workspace::Workspace;

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

/// The shards of one mini-batch: the samples at `batch` (indices into
/// `training`, in shuffled order) split into at most `shards` contiguous ranges.
pub fn step_shards(training: &Samples, batch: &[usize], shards: usize) -> Vec<Samples> {
    shard_ranges(batch.len(), shards)
        .into_iter()
        .map(|r| training.gather(&batch[r]))
        .collect()
}

/// The summed gradient of one shard for the quadratic cost (network.py's).
pub fn shard_gradients(network: &Network, shard: &Samples) -> Gradients {
    shard_gradients_with(network, shard, Cost::Quadratic, KernelSet::best())
}

thread_local! {
    /// The buffers of [`shard_gradients_with`] and its kin on this thread.
    static WORKSPACE: RefCell<Workspace> = RefCell::new(Workspace::new());
}

/// The summed gradient of one shard for `cost` with the kernel set
/// `kernels`, as a worker computes it: [`Network::backprop_with`]'s bits,
/// computed in this thread's [`Workspace`].
pub fn shard_gradients_with(
    network: &Network,
    shard: &Samples,
    cost: Cost,
    kernels: KernelSet,
) -> Gradients {
    WORKSPACE.with_borrow_mut(|ws| {
        ws.load_all(shard);
        ws.backprop(network, cost, kernels);
        // The caller keeps the gradients (they go on the wire or into the
        // sum): moved out, not copied; the next shard's are written afresh.
        ws.take_gradients().expect("backprop made them")
    })
}

/// The summed gradient of one shard of a chapter-6 net (`network.net`),
/// whose dropout masks come from `key` (the shard's first sample's place in
/// the epoch): the same bits wherever it is computed.
///
/// # Panics
/// If `network` is not a chapter-6 net.
pub fn layered_shard_gradients(
    network: &Network,
    shard: &Samples,
    kernels: KernelSet,
    key: DropoutKey,
) -> Gradients {
    let spec = network.net.as_ref().expect("a chapter-6 net");
    let (x, y) = (shard.inputs(), shard.targets());
    crate::layers::net::backprop(spec, network.params(), x.view(), y.view(), kernels, key)
}

/// [`shard_gradients_with`] without the first weight matrix (left empty,
/// 0 × 0), and the first layer's error δ¹ (`sizes[1]` × samples, row-major)
/// from which [`first_weight_gradient`] computes it: for a small shard, far
/// fewer values to send than the matrix (δ¹ has `samples` columns, the matrix 784).
pub fn shard_gradients_first_error(
    network: &Network,
    shard: &Samples,
    cost: Cost,
    kernels: KernelSet,
) -> (Gradients, Vec<f32>) {
    WORKSPACE.with_borrow_mut(|ws| {
        ws.load_all(shard);
        ws.backprop_first_error(network, cost, kernels)
    })
}

/// A shard's answer as a worker computes it: [`shard_gradients_with`]'s
/// gradient whole, or, if `first_error` (the shard asked for it),
/// [`shard_gradients_first_error`]'s gradient and error; for a chapter-6
/// net, [`layered_shard_gradients`] with the shard's dropout `key` (nets
/// always answer whole).
pub fn shard_answer(
    network: &Network,
    shard: &Samples,
    cost: Cost,
    kernels: KernelSet,
    first_error: bool,
    key: DropoutKey,
) -> (Gradients, Option<Vec<f32>>) {
    if network.net.is_some() {
        return (layered_shard_gradients(network, shard, kernels, key), None);
    }
    if first_error {
        let (g, error) = shard_gradients_first_error(network, shard, cost, kernels);
        (g, Some(error))
    } else {
        (shard_gradients_with(network, shard, cost, kernels), None)
    }
}

/// Completes the gradient `g` of `shard` from its first layer's error
/// `error`: writes the first weight matrix δ¹·xᵀ, the bits
/// [`shard_gradients_with`] gives it with the same kernel set, into `g`'s
/// first weight matrix (which must have its shape, as a decoded one has).
///
/// # Panics
/// If `error` is not `g`'s first layer size × the shard's samples.
pub fn first_weight_gradient(
    g: &mut Gradients,
    shard: &Samples,
    error: &[f32],
    kernels: KernelSet,
) {
    let out = g.nabla_w[0].as_slice_mut().expect("standard layout");
    assert_eq!(
        error.len(),
        shard.len() * (out.len() / crate::dataset::IMAGE_SIZE)
    );
    WORKSPACE.with_borrow_mut(|ws| {
        ws.load_all(shard);
        ws.first_weight_gradient(error, kernels, out);
    })
}

/// The buffers of the reference loop's steps, reused from step to step.
#[derive(Debug, Default)]
pub struct StepBuffers {
    workspace: Workspace,
    /// The sum of a step's shards when there are several.
    sum: Option<Gradients>,
}

impl StepBuffers {
    /// One step of the reference loop: the mini-batch `batch` (indices into
    /// `training`, its first sample at `key`'s place in the epoch) split into `shards` logical shards, their gradients added
    /// in shard order and `update` applied, as [`step_shards`],
    /// [`shard_gradients_with`] and [`apply_step`] do it, bit for bit. One
    /// shard without momentum updates the first layer's weights as their
    /// gradient is computed ([`Workspace::step`]).
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        network: &mut Network,
        training: &Samples,
        batch: &[usize],
        plan: &TrainingPlan,
        update: Update,
        velocity: Option<&mut Velocity>,
        key: DropoutKey,
    ) {
        let (cost, kernels) = (plan.cost, plan.kernels);
        if network.net.is_some() {
            let shards: Vec<Gradients> = shard_ranges(batch.len(), plan.shards)
                .into_iter()
                .map(|r| {
                    let first = DropoutKey { first: key.first + r.start as u64, ..key };
                    layered_shard_gradients(network, &training.gather(&batch[r]), kernels, first)
                })
                .collect();
            apply_step(network, &shards, update, batch.len(), velocity);
            return;
        }
        match (
            shard_ranges(batch.len(), plan.shards).len(),
            update.descend(batch.len()),
        ) {
            (1, Some(descend)) => {
                self.workspace.load(training, batch);
                self.workspace.step(network, cost, kernels, descend);
            }
            _ => {
                let g = self.step_gradients(network, training, batch, plan.shards, cost, kernels);
                update.apply(network, g, batch.len(), velocity);
            }
        }
    }

    /// The summed gradient of the mini-batch `batch` (indices into
    /// `training`) split into `shards` logical shards, added in shard order:
    /// what [`step_shards`], [`shard_gradients_with`] and [`apply_step`]'s
    /// sum give, without allocating.
    pub fn step_gradients(
        &mut self,
        network: &Network,
        training: &Samples,
        batch: &[usize],
        shards: usize,
        cost: Cost,
        kernels: KernelSet,
    ) -> &Gradients {
        let ranges = shard_ranges(batch.len(), shards);
        if let [only] = &ranges[..] {
            self.workspace.load(training, &batch[only.clone()]);
            return self.workspace.backprop(network, cost, kernels);
        }
        let sum = self
            .sum
            .get_or_insert_with(|| Gradients::zeros_like(network));
        if sum.nabla_w.len() != network.weights.len()
            || sum
                .nabla_w
                .iter()
                .zip(&network.weights)
                .any(|(g, w)| g.dim() != w.dim())
        {
            *sum = Gradients::zeros_like(network);
        }
        for (i, r) in ranges.into_iter().enumerate() {
            self.workspace.load(training, &batch[r]);
            let g = self.workspace.backprop(network, cost, kernels);
            if i == 0 {
                sum.assign(g);
            } else {
                sum.add(g);
            }
        }
        sum
    }
}

/// Adds the shard gradients in shard order and applies `update` with `len`
/// the mini-batch length (the sum of the shards' sample counts); `velocity`
/// is the run's momentum state, if any.
///
/// # Panics
/// If `shard_results` is empty.
pub fn apply_step(
    network: &mut Network,
    shard_results: &[Gradients],
    update: Update,
    len: usize,
    velocity: Option<&mut Velocity>,
) {
    if let [only] = shard_results {
        // The sum of one shard is that shard: no copy needed.
        update.apply(network, only, len, velocity);
    } else {
        let sum = Gradients::sum_in_shard_order(shard_results);
        update.apply(network, &sum, len, velocity);
    }
}

/// Samples classified right, evaluated in chunks to bound memory.
pub fn correct_count(network: &Network, samples: &Samples, kernels: KernelSet) -> usize {
    const CHUNK: usize = 1000;
    (0..samples.len())
        .step_by(CHUNK)
        .map(|start| {
            let part = samples.slice(start..(start + CHUNK).min(samples.len()));
            network
                .predict_with(part.inputs().view(), kernels)
                .into_iter()
                .zip(&part.labels)
                .filter(|&(digit, &label)| digit == usize::from(label))
                .count()
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
    cost_and_correct(network, samples, Cost::Quadratic, KernelSet::best()).0
        / samples.len().max(1) as f64
}

/// Total cost `Σ_x C_x` of `cost` over `samples` and the count classified
/// right, in one feedforward pass (in chunks to bound memory).
pub fn cost_and_correct(
    network: &Network,
    samples: &Samples,
    cost: Cost,
    kernels: KernelSet,
) -> (f64, usize) {
    const CHUNK: usize = 1000;
    let (mut total, mut correct) = (0.0, 0);
    for start in (0..samples.len()).step_by(CHUNK) {
        let part = samples.slice(start..(start + CHUNK).min(samples.len()));
        let (c, outputs) =
            network.cost_and_outputs(part.inputs().view(), part.targets().view(), cost, kernels);
        total += c;
        correct += outputs
            .columns()
            .into_iter()
            .zip(&part.labels)
            .filter(|(out, &label)| {
                crate::network::argmax(out.iter().copied()) == usize::from(label)
            })
            .count();
    }
    (total, correct)
}

/// network2.py's `total_cost(data, lmbda)`: the mean cost over `samples`
/// plus `0.5·(λ/len)·Σ‖w‖²`, with `len` the size of `samples` (as network2
/// divides by `len(data)` for whichever set it evaluates).
fn regularised_mean(total: f64, len: usize, network: &Network, lambda: f32) -> f64 {
    let len = len.max(1) as f64;
    let l2 = if lambda > 0.0 {
        0.5 * (f64::from(lambda) / len) * network.weight_norm2()
    } else {
        0.0
    };
    total / len + l2
}

/// Evaluates `network` after epoch `epoch` (run `steps` so far) as `plan`
/// monitors it: test and validation accuracy always, training cost and
/// accuracy and validation cost when asked. The epoch was trained at `eta`.
#[allow(clippy::too_many_arguments)]
pub fn epoch_report(
    network: &Network,
    data: &Mnist,
    plan: &TrainingPlan,
    eta: f32,
    epoch: usize,
    steps: u64,
    train_time: Duration,
    step_times: StepSummary,
) -> EpochReport {
    let m = plan.monitor;
    let (mut training_cost, mut training_correct) = (None, None);
    if m.training_cost || m.training_accuracy {
        let (total, correct) = cost_and_correct(network, &data.training, plan.cost, plan.kernels);
        let n = data.training.len();
        training_cost = m
            .training_cost
            .then(|| regularised_mean(total, n, network, plan.lambda));
        training_correct = m.training_accuracy.then_some(correct);
    }
    let (validation_correct, validation_cost) = if m.validation_cost {
        let (total, correct) = cost_and_correct(network, &data.validation, plan.cost, plan.kernels);
        let n = data.validation.len();
        (
            correct,
            Some(regularised_mean(total, n, network, plan.lambda)),
        )
    } else {
        (correct_count(network, &data.validation, plan.kernels), None)
    };
    EpochReport {
        epoch,
        steps,
        test_correct: correct_count(network, &data.test, plan.kernels),
        test_total: data.test.len(),
        validation_correct,
        validation_total: data.validation.len(),
        train_time,
        samples: data.training.len(),
        trained: data.training.len(),
        training_cost,
        training_correct,
        validation_cost,
        eta,
        verdict: Verdict::default(),
        step_times,
        workers: 0,
        recomputed: 0,
        backups: 0,
    }
}

/// The end of an epoch once `report` is made: early stopping and the η
/// schedule judge its validation accuracy, and a new best validation epoch
/// keeps a copy of `network`. Sets `report.verdict`.
pub fn end_epoch(
    plan: &TrainingPlan,
    state: &mut RunState,
    network: &Network,
    report: &mut EpochReport,
) {
    let verdict = state.stopping.after_epoch(
        report.epoch,
        report.validation_correct,
        plan.early_stop,
        plan.eta_schedule,
    );
    if verdict.improved {
        state.best = Some(BestEpoch {
            epoch: report.epoch,
            validation_correct: report.validation_correct,
            test_correct: report.test_correct,
            network: network.clone(),
        });
    }
    report.verdict = verdict;
}

/// Trains `network` in this process, exactly as a cluster with `plan.shards`
/// logical shards would, telling `progress` after every step and epoch;
/// returns the epochs' reports.
pub fn train(
    network: &mut Network,
    data: &Mnist,
    plan: &TrainingPlan,
    progress: impl Progress,
) -> Vec<EpochReport> {
    train_with_state(network, &mut RunState::new(plan), data, plan, progress)
}

/// [`train`] from the start, leaving the run's state (velocity, early
/// stopping, best model) in `state`, which must be [`RunState::new`]'s.
pub fn train_with_state(
    network: &mut Network,
    state: &mut RunState,
    data: &Mnist,
    plan: &TrainingPlan,
    mut progress: impl Progress,
) -> Vec<EpochReport> {
    let mut reports = Vec::with_capacity(plan.epochs);
    let mut step = StepId(0);
    let mut buffers = StepBuffers::default();
    state.chain.start(0, network);
    for epoch in 0..plan.epochs {
        if state.stopping.stopped {
            break;
        }
        let eta = state.eta(plan);
        let update = plan.update(eta, data.training.len());
        let start = Instant::now();
        let order = epoch_order(plan.seed, epoch, data.training.len());
        let total = order.len().div_ceil(plan.batch_size);
        let mut timings = Vec::with_capacity(total);
        let mut batches = order.chunks(plan.batch_size).enumerate().peekable();
        while let Some((done, batch)) = batches.next() {
            let step_start = Instant::now();
            if let Some((_, next)) = batches.peek() {
                Workspace::prefetch(&data.training, next);
            }
            let velocity = state.velocity.as_mut();
            let key = plan.dropout_key(epoch, done * plan.batch_size);
            buffers.step(network, &data.training, batch, plan, update, velocity, key);
            // compute and update are one pass (the first layer's weights
            // are updated as their gradient is computed): no reduce phase
            let computed = step_start.elapsed();
            step.0 += 1;
            state.chain.after_step(step.0, plan.record_every, network);
            if !progress.proceed(&state.chain) {
                return reports;
            }
            let total_time = step_start.elapsed();
            let timing = StepTiming {
                total: total_time,
                compute: computed,
                codec: Duration::ZERO,
                reduce: total_time - computed,
            };
            timings.push(timing);
            progress.step(&StepProgress {
                epoch,
                done: done + 1,
                total,
                timing,
                workers: 0,
            });
            progress.weights(network);
        }
        let summary = StepSummary::of(&timings);
        let train_time = start.elapsed();
        state.chain.after_epoch(epoch, step.0, network);
        if !progress.proceed(&state.chain) {
            return reports;
        }
        let mut report = epoch_report(network, data, plan, eta, epoch, step.0, train_time, summary);
        end_epoch(plan, state, network, &mut report);
        progress.epoch(&report);
        reports.push(report);
    }
    reports
}
