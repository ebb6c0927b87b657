//! One training step's pieces, shared by the cluster and `--local`: which
//! samples form a step's shards ([`split_batch`]), the reduction of their
//! gradients in shard order plus the update ([`reduce_and_apply`]), and the
//! in-process step that does both without allocating ([`StepBuffers`]).
//! Because the coordinator calls the very same functions, a cluster run with
//! `S` shards is bitwise equal to one process with `S` shards.

use crate::cost::Cost;
use crate::dataset::Samples;
use crate::gradients::Gradients;
use crate::kernels::KernelSet;
use crate::layers::DropoutKey;
use crate::network::Network;
use crate::optimizer::{Update, Velocity};
use crate::plan::TrainingPlan;
use crate::schedule::shard_ranges;
use crate::shard::net_gradient;
use crate::workspace::Workspace;

/// The shards of one mini-batch: the samples at `batch` (indices into
/// `training`, in shuffled order) split into at most `shards` contiguous ranges.
pub fn split_batch(training: &Samples, batch: &[usize], shards: usize) -> Vec<Samples> {
    shard_ranges(batch.len(), shards)
        .into_iter()
        .map(|r| training.gather(&batch[r]))
        .collect()
}

/// Adds the shard gradients in shard order and applies `update` with `len`
/// the mini-batch length (the sum of the shards' sample counts); `velocity`
/// is the run's momentum state, if any.
///
/// # Panics
/// If `shard_results` is empty.
pub fn reduce_and_apply(
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

/// The buffers of in-process steps, reused from step to step.
#[derive(Debug, Default)]
pub struct StepBuffers {
    workspace: Workspace,
    /// The sum of a step's shards when there are several.
    sum: Option<Gradients>,
}

impl StepBuffers {
    /// One step in this process: the mini-batch `batch` (indices into
    /// `training`, its first sample at `key`'s place in the epoch) split
    /// into `plan.shards` logical shards, their gradients added in shard
    /// order and `update` applied, as [`split_batch`],
    /// [`crate::shard::summed_gradient`] and [`reduce_and_apply`] do it, bit
    /// for bit. One shard without momentum updates the first layer's weights
    /// as their gradient is computed ([`Workspace::step`]).
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
                    let first = DropoutKey {
                        first: key.first + r.start as u64,
                        ..key
                    };
                    net_gradient(network, &training.gather(&batch[r]), kernels, first)
                })
                .collect();
            reduce_and_apply(network, &shards, update, batch.len(), velocity);
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
    /// what [`split_batch`], [`crate::shard::summed_gradient`] and
    /// [`reduce_and_apply`]'s sum give, without allocating.
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
