//! Training in this process (`coordinator --local`): the epoch loop of
//! [`crate::epochs`] with every step computed here, in reused buffers
//! ([`StepBuffers`]), exactly as a cluster with `plan.shards` logical shards
//! would compute it. It sits beside the data ([`crate::dataset`]): the
//! maths it drives ([`crate::network`], [`crate::kernels`]) knows nothing of MNIST.

use std::convert::Infallible;
use std::time::Instant;

use crate::dataset::Mnist;
use crate::epochs::{block_on, drive, Position, Run, Step, StepRunner, Stepped};
use crate::metrics::StepTiming;
use crate::network::Network;
use crate::optimizer::Velocity;
use crate::plan::{RunState, TrainingPlan};
use crate::progress::{EpochReport, Progress};
use crate::step::StepBuffers;
use crate::workspace::Workspace;

/// Computes and applies every step in this process.
#[derive(Debug)]
pub struct InProcess<'a> {
    plan: &'a TrainingPlan,
    buffers: StepBuffers,
}

impl<'a> InProcess<'a> {
    /// Steps of `plan`, with fresh buffers.
    pub fn new(plan: &'a TrainingPlan) -> Self {
        InProcess {
            plan,
            buffers: StepBuffers::default(),
        }
    }
}

impl StepRunner for InProcess<'_> {
    type Error = Infallible;

    async fn step(
        &mut self,
        network: &mut Network,
        velocity: Option<&mut Velocity>,
        step: Step<'_>,
    ) -> Result<Stepped, Infallible> {
        let start = Instant::now();
        if let Some(next) = step.next {
            Workspace::prefetch(step.training, next);
        }
        let Step {
            training,
            batch,
            update,
            key,
            ..
        } = step;
        self.buffers
            .step(network, training, batch, self.plan, update, velocity, key);
        // compute and update are one pass (the first layer's weights are
        // updated as their gradient is computed): no reduce phase of its own
        let timing = StepTiming {
            compute: start.elapsed(),
            ..StepTiming::default()
        };
        Ok(Stepped {
            timing,
            ..Stepped::default()
        })
    }
}

/// Trains `network` in this process from the start, exactly as a cluster
/// with `plan.shards` logical shards would, telling `progress` after every
/// step and epoch; returns the epochs' reports.
pub fn train_in_process(
    network: &mut Network,
    data: &Mnist,
    plan: &TrainingPlan,
    progress: impl Progress,
) -> Vec<EpochReport> {
    train_in_process_with_state(network, &mut RunState::new(plan), data, plan, progress)
}

/// [`train_in_process`], leaving the run's state (velocity, early stopping,
/// best model, hash chain) in `state`, which must be [`RunState::new`]'s.
pub fn train_in_process_with_state(
    network: &mut Network,
    state: &mut RunState,
    data: &Mnist,
    plan: &TrainingPlan,
    progress: impl Progress,
) -> Vec<EpochReport> {
    let run = Run {
        network,
        state,
        data,
        plan,
        position: Position::default(),
        progress,
    };
    match block_on(drive(&mut InProcess::new(plan), run)) {
        Ok(reports) => reports,
        Err(never) => match never {},
    }
}
