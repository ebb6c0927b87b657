//! How good a network is: samples classified right, the confusion matrix,
//! costs, and the report of an epoch as the plan monitors it
//! ([`evaluate_epoch`]). Feedforward only, in chunks to bound memory.

use std::time::Duration;

use crate::cost::Cost;
use crate::dataset::{Mnist, Samples};
use crate::kernels::KernelSet;
use crate::metrics::StepSummary;
use crate::network::Network;
use crate::plan::TrainingPlan;
use crate::progress::EpochReport;
use crate::stopping::Verdict;

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

/// How an epoch was trained, for its report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochRun {
    /// The epoch, from 0.
    pub epoch: usize,
    /// The learning rate it was trained at.
    pub eta: f32,
    /// Steps run so far in the run.
    pub steps: u64,
    /// Its training time, evaluation excluded.
    pub train_time: Duration,
    /// Percentiles of its steps' timings.
    pub step_times: StepSummary,
}

/// Evaluates `network` after the epoch `run` describes, as `plan` monitors
/// it: test and validation accuracy always, training cost and accuracy and
/// validation cost when asked.
pub fn evaluate_epoch(
    network: &Network,
    data: &Mnist,
    plan: &TrainingPlan,
    run: EpochRun,
) -> EpochReport {
    let EpochRun {
        epoch,
        eta,
        steps,
        train_time,
        step_times,
    } = run;
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
