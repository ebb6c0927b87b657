//! The training loop of DESIGN.md: for each epoch, shuffle; for each
//! mini-batch, split it into logical shards, have the pool compute them, add
//! the results in shard order and apply the update; after each epoch,
//! evaluate. It knows shards and results, not gRPC: any [`WorkerPool`] drives it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use common::dataset::Mnist;
use common::metrics::StepSummary;
use common::plan::{RunState, TrainingPlan};
use common::reference::{
    apply_step, end_epoch, epoch_report, step_shards, EpochReport, Progress, StepProgress,
};
use common::schedule::{epoch_order, StepId};
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
    state: &RunState,
) -> Result<(), CoordinatorError> {
    let (path, net, plan, state) = (c.path.clone(), network.clone(), plan.clone(), state.clone());
    tokio::task::spawn_blocking(move || checkpoint::save(&path, &net, position, &plan, &state))
        .await
        .expect("checkpoint writing does not panic")?;
    tracing::debug!(step = position.step, path = %c.path.display(), "checkpoint saved");
    Ok(())
}

/// Trains `network` by `plan` on `data` from `position` (advanced as steps
/// are applied) and `state` (velocity, early stopping, best model), telling
/// `progress` after each step and epoch and checkpointing as asked.
///
/// An epoch ends with its evaluation, which early stopping and the η
/// schedule judge; only then does the position move to the next epoch, so a
/// checkpoint never holds an epoch whose verdict is missing.
///
/// # Errors
/// [`CoordinatorError`] if a step cannot be completed or a checkpoint cannot
/// be written; `network`, `position` and `state` then describe the last applied step.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    pool: &mut impl WorkerPool,
    network: &mut Network,
    state: &mut RunState,
    data: &Arc<Mnist>,
    plan: &TrainingPlan,
    position: &mut Position,
    checkpointing: Option<&Checkpointing>,
    mut progress: impl Progress,
) -> Result<Vec<EpochReport>, CoordinatorError> {
    let mut reports = Vec::new();
    state.chain.start(position.step, network);
    while position.epoch < plan.epochs && !state.stopping.stopped {
        let epoch = position.epoch;
        let eta = state.eta(plan);
        let update = plan.update(eta, data.training.len());
        let start = Instant::now();
        let mut recomputed = 0;
        let mut backups = 0;
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
            let key = plan.dropout_key(epoch, position.batch * plan.batch_size);
            let output = pool
                .run_step(StepId(position.step), network, &shards, key)
                .await?;
            let reduce_start = Instant::now();
            // Network, velocity and position change together, with no await in
            // between: a cancelled run always leaves a consistent set to checkpoint.
            apply_step(
                network,
                &output.gradients,
                update,
                batch.len(),
                state.velocity.as_mut(),
            );
            samples += batch.len();
            position.batch += 1;
            position.step += 1;
            state
                .chain
                .after_step(position.step, plan.record_every, network);
            (recomputed, workers) = (recomputed + output.reassigned, output.workers);
            backups += output.backups;
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
            progress.weights(network);
            let due = |c: &&Checkpointing| c.every.is_some_and(|n| position.step % n == 0);
            if let Some(c) = checkpointing.filter(due) {
                save_checkpoint(c, network, *position, plan, state).await?;
                progress.checkpoint(position.step);
            }
        }
        let train_time = start.elapsed();
        state.chain.after_epoch(epoch, position.step, network);
        // Evaluation is ~70k feedforwards: CPU work, kept off the async threads.
        let (net, data_ref, steps, plan_ref) = (
            network.clone(),
            Arc::clone(data),
            position.step,
            plan.clone(),
        );
        let summary = StepSummary::of(&timings);
        let mut report = tokio::task::spawn_blocking(move || {
            epoch_report(
                &net, &data_ref, &plan_ref, eta, epoch, steps, train_time, summary,
            )
        })
        .await
        .expect("evaluation does not panic on validated data");
        end_epoch(plan, state, network, &mut report);
        *position = Position {
            epoch: epoch + 1,
            batch: 0,
            step: position.step,
        };
        if let Some(c) = checkpointing {
            save_checkpoint(c, network, *position, plan, state).await?;
            progress.checkpoint(position.step);
        }
        report.trained = samples;
        report.workers = workers;
        report.recomputed = recomputed;
        report.backups = backups;
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
    use common::layers::DropoutKey;
    use common::dataset::Samples;
    use common::reference::shard_gradients_with;

    struct InPlace(common::cost::Cost);

    impl WorkerPool for InPlace {
        async fn run_step(
            &mut self,
            _: StepId,
            network: &Network,
            shards: &[Samples],
            _: DropoutKey,
        ) -> Result<StepOutput, PoolError> {
            Ok(StepOutput {
                gradients: shards
                    .iter()
                    .map(|s| {
                        shard_gradients_with(network, s, self.0, common::kernels::KernelSet::best())
                    })
                    .collect(),
                timing: Default::default(),
                workers: 1,
                reassigned: 0,
                backups: 0,
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

    /// network.py's run, and one with every chapter 3 option that changes
    /// the weights (early stopping and the schedule tight enough to fire on
    /// this data's noisy 10-image validation set).
    fn plans(shards: usize) -> Vec<TrainingPlan> {
        let base = TrainingPlan {
            sizes: vec![784, 8, 10],
            epochs: 2,
            batch_size: 10,
            eta: 3.0,
            shards,
            seed: 5,
            ..TrainingPlan::default()
        };
        vec![
            base.clone(),
            TrainingPlan {
                epochs: 6,
                eta: 0.5,
                cost: common::cost::Cost::CrossEntropy,
                init: common::network::Init::Scaled,
                lambda: 5.0,
                momentum: 0.6,
                early_stop: Some(3),
                eta_schedule: Some("halve:1:4".parse().unwrap()),
                ..base
            },
        ]
    }

    /// The single-process reference trainer's run of `plan` from its start.
    fn reference_run(
        plan: &TrainingPlan,
        data: &Mnist,
    ) -> (Network, RunState, Vec<common::reference::EpochReport>) {
        let mut network = plan.initial_network();
        let mut state = RunState::new(plan);
        let reports = common::reference::train_with_state(
            &mut network,
            &mut state,
            data,
            plan,
            common::reference::Quiet,
        );
        (network, state, reports)
    }

    #[tokio::test]
    async fn loop_equals_reference_trainer_bitwise() {
        let data = Arc::new(synthetic(95));
        for (i, plan) in plans(4).iter().enumerate() {
            let (reference, ref_state, ref_reports) = reference_run(plan, &data);
            let mut net = plan.initial_network();
            let mut state = RunState::new(plan);
            let reports = run(
                &mut InPlace(plan.cost),
                &mut net,
                &mut state,
                &data,
                plan,
                &mut Position::default(),
                None,
                common::reference::Quiet,
            )
            .await
            .unwrap();
            assert_eq!(net, reference, "case {i}");
            assert_eq!(state, ref_state, "case {i}");
            assert_eq!(reports.len(), ref_reports.len(), "case {i}");
            assert_eq!(
                reports[1].steps, 20,
                "95 samples in batches of 10 is 10 steps per epoch"
            );
        }
    }

    /// The chapter 3 plan of [`plans`] really halves η and stops early here,
    /// so the resume test below covers that state.
    #[test]
    fn the_chapter3_test_plan_halves_and_stops() {
        let data = synthetic(95);
        let plan = &plans(3)[1];
        let (_, state, reports) = reference_run(plan, &data);
        assert!(reports.iter().any(|r| r.verdict.halved), "{reports:?}");
        assert!(
            reports.len() < plan.epochs,
            "stopped early: {} epochs",
            reports.len()
        );
        assert!(state.best.is_some());
    }

    /// Fails every step from `.0` on, as a crash would end the run.
    struct Crashing(u64, common::cost::Cost);
    impl WorkerPool for Crashing {
        async fn run_step(
            &mut self,
            step: StepId,
            network: &Network,
            shards: &[Samples],
            key: DropoutKey,
        ) -> Result<StepOutput, PoolError> {
            if step.0 >= self.0 {
                return Err(PoolError::ServiceGone);
            }
            InPlace(self.1).run_step(step, network, shards, key).await
        }
    }

    /// Runs `plan` with checkpoints from `run` (the weights, state and
    /// position) until it ends or its step `crash_at` fails, as a crash would.
    async fn train_until(
        crash_at: u64,
        plan: &TrainingPlan,
        data: &Arc<Mnist>,
        checkpointing: &Checkpointing,
        run: &mut (Network, RunState, Position),
    ) -> Result<Vec<EpochReport>, CoordinatorError> {
        let (net, state, pos) = run;
        let mut pool = Crashing(crash_at, plan.cost);
        let quiet = common::reference::Quiet;
        super::run(
            &mut pool,
            net,
            state,
            data,
            plan,
            pos,
            Some(checkpointing),
            quiet,
        )
        .await
    }

    /// Stop after any step, checkpoint, resume from the file: the same bits,
    /// for network.py's run and for one with every chapter 3 option
    /// (momentum's velocity, L2, early stopping and η schedule state, best model).
    #[tokio::test]
    async fn resuming_from_a_checkpoint_is_bitwise_exact() {
        let data = Arc::new(synthetic(95));
        let dir = std::env::temp_dir().join(format!("resume-{}", std::process::id()));
        for (i, plan) in plans(3).iter().enumerate() {
            let (reference, ref_state, _) = reference_run(plan, &data);
            for stop_after in [1u64, 9, 10, 13, 19] {
                let c = Checkpointing {
                    path: dir.join(format!("c{i}-{stop_after}.safetensors")),
                    every: Some(1),
                };
                let mut fresh = (
                    plan.initial_network(),
                    RunState::new(plan),
                    Position::default(),
                );
                let crashed = train_until(stop_after, plan, &data, &c, &mut fresh).await;
                assert!(crashed.is_err(), "case {i} {stop_after}");
                let ck = checkpoint::load(&c.path).unwrap();
                assert_eq!(ck.position.step, stop_after, "case {i} {stop_after}");
                ck.check_matches(&c.path, plan).unwrap();
                let mut resumed = (ck.network, ck.state, ck.position);
                train_until(u64::MAX, plan, &data, &c, &mut resumed)
                    .await
                    .unwrap();
                let case = format!("case {i} {stop_after}");
                assert!(resumed.0 == reference, "{case}: resumed run differs");
                assert!(resumed.1 == ref_state, "{case}: resumed state differs");
            }
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
