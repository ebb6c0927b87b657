//! The old names of the pieces that now live by job in [`crate::progress`],
//! [`crate::shard`], [`crate::step`], [`crate::evaluation`],
//! [`crate::epochs`] and [`crate::local`]: kept only until their last
//! callers move over. New code uses those modules.

pub use crate::epochs::end_epoch;
pub use crate::evaluation::{
    confusion_matrix, correct_count, cost_and_correct, evaluate_epoch as epoch_report, mean_cost,
};
pub use crate::local::{
    train_in_process as train, train_in_process_with_state as train_with_state,
};
pub use crate::progress::{EpochReport, Progress, Quiet, StepProgress};
pub use crate::shard::{
    complete_first_weights as first_weight_gradient,
    gradient_and_first_error as shard_gradients_first_error,
    net_gradient as layered_shard_gradients, quadratic_gradient as shard_gradients,
    summed_gradient as shard_gradients_with,
};
pub use crate::step::{reduce_and_apply as apply_step, split_batch as step_shards, StepBuffers};

use crate::cost::Cost;
use crate::dataset::Samples;
use crate::gradients::Gradients;
use crate::kernels::KernelSet;
use crate::layers::DropoutKey;
use crate::network::Network;
use crate::shard::AnswerForm;

/// [`crate::shard::answer`], the form given as whether the shard asked for
/// its first layer's error.
pub fn shard_answer(
    network: &Network,
    shard: &Samples,
    cost: Cost,
    kernels: KernelSet,
    first_error: bool,
    key: DropoutKey,
) -> (Gradients, Option<Vec<f32>>) {
    let form = AnswerForm::first_error_if(first_error);
    crate::shard::answer(network, shard, cost, kernels, form, key)
}
