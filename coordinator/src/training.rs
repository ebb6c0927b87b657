//! The cluster's training: [`common::epochs`]' one epoch loop, with every
//! step's shards computed by a [`WorkerPool`] and checkpoints written as
//! asked. For each mini-batch it splits the shards, has the pool compute
//! them, adds the results in shard order and applies the update. It knows
//! shards and results, not gRPC: any [`WorkerPool`] drives it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use common::dataset::Mnist;
use common::epochs::{self, Boundary, Run, Step, StepRunner, Stepped};
use common::evaluation::EpochRun;
use common::optimizer::Velocity;
use common::plan::{RunState, TrainingPlan};
use common::progress::{EpochReport, Progress};
use common::step::{reduce_and_apply, split_batch};
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
/// are applied) and `state` (velocity, early stopping, best model), with
/// `pool` computing every step's shards, telling `progress` after each step
/// and epoch and checkpointing as asked: [`epochs::drive`] on a pool.
///
/// # Errors
/// [`CoordinatorError`] if a step cannot be completed or a checkpoint cannot
/// be written; `network`, `position` and `state` then describe the last applied step.
#[allow(clippy::too_many_arguments)]
pub async fn train_on_pool(
    pool: &mut impl WorkerPool,
    network: &mut Network,
    state: &mut RunState,
    data: &Arc<Mnist>,
    plan: &TrainingPlan,
    position: &mut Position,
    checkpointing: Option<&Checkpointing>,
    progress: impl Progress,
) -> Result<Vec<EpochReport>, CoordinatorError> {
    let batches = data.training.len().div_ceil(plan.batch_size);
    if position.batch > batches {
        return Err(CoordinatorError::Position {
            batch: position.batch,
            batches,
        });
    }
    let start = epochs::Position {
        epoch: position.epoch,
        batch: position.batch,
        step: position.step,
    };
    let mut runner = OnPool {
        pool,
        plan,
        data: Arc::clone(data),
        position,
        checkpointing,
    };
    let run = Run {
        network,
        state,
        data,
        plan,
        position: start,
        progress,
    };
    epochs::drive(&mut runner, run).await
}

/// Steps computed by a [`WorkerPool`], with the run's position kept in the
/// caller's [`Position`] and checkpoints written as asked.
struct OnPool<'a, P> {
    pool: &'a mut P,
    plan: &'a TrainingPlan,
    /// For evaluation off the async threads.
    data: Arc<Mnist>,
    position: &'a mut Position,
    checkpointing: Option<&'a Checkpointing>,
}

impl<P: WorkerPool> StepRunner for OnPool<'_, P> {
    type Error = CoordinatorError;

    async fn step(
        &mut self,
        network: &mut Network,
        velocity: Option<&mut Velocity>,
        step: Step<'_>,
    ) -> Result<Stepped, CoordinatorError> {
        let start = Instant::now();
        let shards = split_batch(step.training, step.batch, self.plan.shards);
        let gathered = start.elapsed();
        let output = self
            .pool
            .run_step(step.id, network, &shards, step.key)
            .await?;
        let reduce_start = Instant::now();
        let len = step.batch.len();
        reduce_and_apply(network, &output.gradients, step.update, len, velocity);
        let mut timing = output.timing;
        timing.codec += gathered;
        timing.reduce = reduce_start.elapsed();
        Ok(Stepped {
            timing,
            workers: output.workers,
            reassigned: output.reassigned,
            backups: output.backups,
        })
    }

    fn moved(&mut self, p: epochs::Position) {
        *self.position = Position {
            epoch: p.epoch,
            batch: p.batch,
            step: p.step,
        };
    }

    async fn checkpoint(
        &mut self,
        at: Boundary,
        network: &Network,
        position: epochs::Position,
        state: &RunState,
    ) -> Result<bool, CoordinatorError> {
        let due = |c: &&Checkpointing| match at {
            Boundary::Epoch => true,
            Boundary::Step => c.every.is_some_and(|n| position.step % n == 0),
        };
        let Some(c) = self.checkpointing.filter(due) else {
            return Ok(false);
        };
        save_checkpoint(c, network, *self.position, self.plan, state).await?;
        Ok(true)
    }

    /// Evaluation is ~70k feedforwards: CPU work, kept off the async threads.
    async fn evaluate(
        &mut self,
        network: &Network,
        _data: &Mnist,
        plan: &TrainingPlan,
        run: EpochRun,
    ) -> EpochReport {
        let (net, data, plan) = (network.clone(), Arc::clone(&self.data), plan.clone());
        tokio::task::spawn_blocking(move || {
            common::evaluation::evaluate_epoch(&net, &data, &plan, run)
        })
        .await
        .expect("evaluation does not panic on validated data")
    }
}

#[cfg(test)]
mod tests {
    //! The loop with no sockets: a pool that computes shards in place, but
    //! returns them through the same shard-order contract.
    use super::*;
    use crate::pool::{PoolError, StepOutput};
    use common::dataset::Samples;
    use common::layers::DropoutKey;
    use common::schedule::StepId;
    use common::shard::summed_gradient as shard_gradients_with;

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

    /// `n` random training samples, 10 validation and 20 test.
    pub(crate) fn synthetic(n: usize) -> Mnist {
        Mnist::random(n, 10, 20, 99)
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
    ) -> (Network, RunState, Vec<common::progress::EpochReport>) {
        let mut network = plan.initial_network();
        let mut state = RunState::new(plan);
        let reports = common::local::train_in_process_with_state(
            &mut network,
            &mut state,
            data,
            plan,
            common::progress::Quiet,
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
            let reports = train_on_pool(
                &mut InPlace(plan.cost),
                &mut net,
                &mut state,
                &data,
                plan,
                &mut Position::default(),
                None,
                common::progress::Quiet,
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
        let quiet = common::progress::Quiet;
        super::train_on_pool(
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
