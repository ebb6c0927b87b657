//! The training loop of DESIGN.md: for each epoch, shuffle; for each
//! mini-batch, split it into logical shards, have the pool compute them, add
//! the results in shard order and apply the update; after each epoch,
//! evaluate. It knows shards and results, not gRPC: any [`WorkerPool`] drives it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use common::dataset::Mnist;
use common::metrics::StepSummary;
use common::schedule::{epoch_order, StepId};
use common::trainer::{
    apply_step, epoch_report, step_shards, EpochReport, Progress, StepProgress, TrainingPlan,
};
use common::Network;

use crate::checkpoint::{self, Position};
use crate::pool::WorkerPool;
use crate::CoordinatorError;

/// Where and how often to checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpointing {
    /// The checkpoint file (replaced atomically each time).
    pub path: PathBuf,
    /// Also checkpoint every this many steps (besides every epoch).
    pub every: Option<u64>,
}

/// Writes a checkpoint off the async threads (it fsyncs).
///
/// # Errors
/// [`CoordinatorError::Checkpoint`].
pub async fn save_checkpoint(
    c: &Checkpointing,
    network: &Network,
    position: Position,
    plan: &TrainingPlan,
) -> Result<(), CoordinatorError> {
    let (path, net, plan) = (c.path.clone(), network.clone(), plan.clone());
    tokio::task::spawn_blocking(move || checkpoint::save(&path, &net, position, &plan))
        .await
        .expect("checkpoint writing does not panic")?;
    tracing::debug!(step = position.step, path = %c.path.display(), "checkpoint saved");
    Ok(())
}

/// Trains `network` by `plan` on `data` from `position` (advanced as steps
/// are applied), telling `progress` after each step and epoch and
/// checkpointing as asked.
///
/// # Errors
/// [`CoordinatorError`] if a step cannot be completed or a checkpoint cannot
/// be written; `network` and `position` then describe the last applied step.
pub async fn run(
    pool: &mut impl WorkerPool,
    network: &mut Network,
    data: &Arc<Mnist>,
    plan: &TrainingPlan,
    position: &mut Position,
    checkpointing: Option<&Checkpointing>,
    mut progress: impl Progress,
) -> Result<Vec<EpochReport>, CoordinatorError> {
    let mut reports = Vec::new();
    while position.epoch < plan.epochs {
        let epoch = position.epoch;
        let start = Instant::now();
        let mut recomputed = 0;
        let mut workers = 0;
        let order = epoch_order(plan.seed, epoch, data.training.len());
        let total = order.len().div_ceil(plan.batch_size);
        if position.batch > total {
            return Err(CoordinatorError::Position {
                batch: position.batch,
                batches: total,
            });
        }
        let mut timings = Vec::with_capacity(total - position.batch);
        // After a resume mid-epoch, only part of it runs: report what did.
        let mut samples = 0;
        for batch in order.chunks(plan.batch_size).skip(position.batch) {
            let step_start = Instant::now();
            let shards = step_shards(&data.training, batch, plan.shards);
            let gathered = step_start.elapsed();
            let output = pool
                .run_step(StepId(position.step), network, &shards)
                .await?;
            let reduce_start = Instant::now();
            // Network and position change together, with no await in between:
            // a cancelled run always leaves a consistent pair to checkpoint.
            apply_step(network, &output.gradients, plan.eta, batch.len());
            samples += batch.len();
            position.batch += 1;
            position.step += 1;
            (recomputed, workers) = (recomputed + output.reassigned, output.workers);
            let mut timing = output.timing;
            timing.codec += gathered;
            timing.reduce = reduce_start.elapsed();
            timing.total = step_start.elapsed();
            timings.push(timing);
            progress.step(&StepProgress {
                epoch,
                done: position.batch,
                total,
                timing,
                workers,
            });
            let due = |c: &&Checkpointing| c.every.is_some_and(|n| position.step % n == 0);
            if let Some(c) = checkpointing.filter(due) {
                save_checkpoint(c, network, *position, plan).await?;
            }
        }
        *position = Position {
            epoch: epoch + 1,
            batch: 0,
            step: position.step,
        };
        let train_time = start.elapsed();
        if let Some(c) = checkpointing {
            save_checkpoint(c, network, *position, plan).await?;
        }
        // Evaluation is ~70k feedforwards: CPU work, kept off the async threads.
        let (net, data_ref, steps) = (network.clone(), Arc::clone(data), position.step);
        let summary = StepSummary::of(&timings);
        let mut report = tokio::task::spawn_blocking(move || {
            epoch_report(&net, &data_ref, epoch, steps, train_time, summary)
        })
        .await
        .expect("evaluation does not panic on validated data");
        report.samples = samples;
        report.workers = workers;
        report.recomputed = recomputed;
        progress.epoch(&report);
        reports.push(report);
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    //! The loop with no sockets: a pool that computes shards in place, but
    //! returns them through the same shard-order contract.
    use super::*;
    use crate::pool::{PoolError, StepOutput};
    use common::dataset::Samples;
    use common::trainer::{shard_gradients, train};

    struct InPlace;

    impl WorkerPool for InPlace {
        async fn run_step(
            &mut self,
            _: StepId,
            network: &Network,
            shards: &[Samples],
        ) -> Result<StepOutput, PoolError> {
            Ok(StepOutput {
                gradients: shards.iter().map(|s| shard_gradients(network, s)).collect(),
                timing: Default::default(),
                workers: 1,
                reassigned: 0,
            })
        }
    }

    pub(crate) fn synthetic(n: usize) -> Mnist {
        use rand::Rng;
        let mut rng = common::schedule::init_rng(99);
        let samples = |n: usize, rng: &mut rand_chacha::ChaCha8Rng| Samples {
            pixels: (0..n * 784).map(|_| rng.random()).collect(),
            labels: (0..n).map(|_| rng.random_range(0..10)).collect(),
        };
        Mnist {
            training: samples(n, &mut rng),
            validation: samples(10, &mut rng),
            test: samples(20, &mut rng),
        }
    }

    #[tokio::test]
    async fn loop_equals_reference_trainer_bitwise() {
        let data = Arc::new(synthetic(95));
        let plan = TrainingPlan {
            sizes: vec![784, 8, 10],
            epochs: 2,
            batch_size: 10,
            eta: 3.0,
            shards: 4,
            seed: 5,
        };
        let mut reference = plan.initial_network();
        train(&mut reference, &data, &plan, common::trainer::Quiet);
        let mut net = plan.initial_network();
        let reports = run(
            &mut InPlace,
            &mut net,
            &data,
            &plan,
            &mut Position::default(),
            None,
            common::trainer::Quiet,
        )
        .await
        .unwrap();
        assert_eq!(net, reference);
        assert_eq!(reports.len(), 2);
        assert_eq!(
            reports[1].steps, 20,
            "95 samples in batches of 10 is 10 steps per epoch"
        );
    }

    /// Stop after any step, checkpoint, resume from the file: the same bits.
    #[tokio::test]
    async fn resuming_from_a_checkpoint_is_bitwise_exact() {
        /// Fails every step from `.0` on, as a crash would end the run.
        struct Crashing(u64);
        impl WorkerPool for Crashing {
            async fn run_step(
                &mut self,
                step: StepId,
                network: &Network,
                shards: &[Samples],
            ) -> Result<StepOutput, PoolError> {
                if step.0 >= self.0 {
                    return Err(PoolError::ServiceGone);
                }
                InPlace.run_step(step, network, shards).await
            }
        }
        let data = Arc::new(synthetic(95));
        let plan = TrainingPlan {
            sizes: vec![784, 8, 10],
            epochs: 2,
            batch_size: 10,
            eta: 3.0,
            shards: 3,
            seed: 5,
        };
        let mut reference = plan.initial_network();
        train(&mut reference, &data, &plan, common::trainer::Quiet);
        let dir = std::env::temp_dir().join(format!("resume-{}", std::process::id()));
        for stop_after in [1u64, 9, 10, 13, 19] {
            let c = Checkpointing {
                path: dir.join(format!("c{stop_after}.safetensors")),
                every: Some(1),
            };
            let (mut net, mut pos) = (plan.initial_network(), Position::default());
            let crashed = run(
                &mut Crashing(stop_after),
                &mut net,
                &data,
                &plan,
                &mut pos,
                Some(&c),
                common::trainer::Quiet,
            )
            .await;
            assert!(crashed.is_err(), "case {stop_after}");
            let ck = checkpoint::load(&c.path).unwrap();
            assert_eq!(ck.position.step, stop_after, "case {stop_after}");
            let (mut net, mut pos) = (ck.network, ck.position);
            run(
                &mut InPlace,
                &mut net,
                &data,
                &plan,
                &mut pos,
                Some(&c),
                common::trainer::Quiet,
            )
            .await
            .unwrap();
            assert!(net == reference, "case {stop_after}: resumed run differs");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
