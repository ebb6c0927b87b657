//! The one epoch loop of DESIGN.md, for `--local` and the cluster alike: for
//! each epoch, η (a schedule may have lowered it), the seeded shuffle, and
//! for each mini-batch a step whose shard gradients a [`StepRunner`]
//! computes and applies; after each step and epoch the hash chain, timings,
//! progress and (through the runner) checkpoints; after each epoch its
//! evaluation, report, early stopping and the η schedule ([`end_epoch`]).
//!
//! Only how a step's gradients are computed differs: in this process
//! ([`crate::local`]) or by a pool of workers (the coordinator's
//! `training` module). The loop is async because a pool is; the local
//! runner never waits, and [`crate::local`] drives it with [`block_on`].

use std::future::Future;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::dataset::{Mnist, Samples};
use crate::evaluation::{evaluate_epoch, EpochRun};
use crate::layers::DropoutKey;
use crate::metrics::{StepSummary, StepTiming};
use crate::network::Network;
use crate::optimizer::{Update, Velocity};
use crate::plan::{BestEpoch, RunState, TrainingPlan};
use crate::progress::{EpochReport, Progress, StepProgress};
use crate::schedule::{epoch_order, StepId};

/// Where a run is: the epoch it is in, the mini-batches of that epoch
/// applied, and the steps applied since the run began (the next step's id).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    /// Current epoch, from 0.
    pub epoch: usize,
    /// Mini-batches of this epoch already applied.
    pub batch: usize,
    /// Steps applied since the run began.
    pub step: u64,
}

/// One step as the loop hands it to a [`StepRunner`].
#[derive(Debug, Clone, Copy)]
pub struct Step<'a> {
    /// The step's id (steps applied before it).
    pub id: StepId,
    /// The training set.
    pub training: &'a Samples,
    /// The mini-batch: indices into `training`, in shuffled order.
    pub batch: &'a [usize],
    /// The next step's mini-batch in this epoch, if any (to prefetch).
    pub next: Option<&'a [usize]>,
    /// The dropout key of the mini-batch's first sample (its place in the epoch).
    pub key: DropoutKey,
    /// The update to apply with the mini-batch's summed gradient.
    pub update: Update,
}

/// What a [`StepRunner`] reports of a step it applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stepped {
    /// Its compute, codec and reduce parts (the loop adds the hash chain's
    /// time to `reduce` and measures `total`).
    pub timing: StepTiming,
    /// Workers connected at the end of the step (0 in one process).
    pub workers: usize,
    /// Shards handed to another worker during the step.
    pub reassigned: u64,
    /// Backup copies of late shards sent during the step.
    pub backups: u64,
}

/// Where the loop is calling [`StepRunner::checkpoint`] from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boundary {
    /// After a step (not the epoch's last one's end: that is [`Boundary::Epoch`]).
    Step,
    /// After an epoch's evaluation and verdict.
    Epoch,
}

/// How the steps of a run are computed: in this process, or by workers.
#[allow(async_fn_in_trait)] // used with concrete types only
pub trait StepRunner {
    /// Why a step or a checkpoint failed.
    type Error;

    /// Computes the summed gradients of `step`'s mini-batch at `network`'s
    /// weights, split into the plan's logical shards and added in shard
    /// order, and applies `step.update` to `network` (and `velocity`).
    ///
    /// # Errors
    /// If the step cannot be completed; `network` is then unchanged.
    async fn step(
        &mut self,
        network: &mut Network,
        velocity: Option<&mut Velocity>,
        step: Step<'_>,
    ) -> Result<Stepped, Self::Error>;

    /// Where the run is now: called, with no await before it, after every
    /// applied step and when an epoch ends, so that a copy kept here never
    /// lags the weights (a cancelled run can checkpoint a consistent set).
    fn moved(&mut self, _position: Position) {}

    /// After a step or an epoch: checkpoint the run if due; whether one was written.
    ///
    /// # Errors
    /// If a checkpoint cannot be written.
    async fn checkpoint(
        &mut self,
        _at: Boundary,
        _network: &Network,
        _position: Position,
        _state: &RunState,
    ) -> Result<bool, Self::Error> {
        Ok(false)
    }

    /// The report of the epoch `run` describes, evaluated as the plan
    /// monitors it ([`evaluate_epoch`], here in place).
    async fn evaluate(
        &mut self,
        network: &Network,
        data: &Mnist,
        plan: &TrainingPlan,
        run: EpochRun,
    ) -> EpochReport {
        evaluate_epoch(network, data, plan, run)
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

/// The run being driven: what the loop reads and changes besides the runner.
pub struct Run<'a, P> {
    /// The weights, changed by every step.
    pub network: &'a mut Network,
    /// Velocity, early stopping, best model and hash chain.
    pub state: &'a mut RunState,
    /// The data (training, validation, test).
    pub data: &'a Mnist,
    /// What the run trains.
    pub plan: &'a TrainingPlan,
    /// Where the run starts (a resumed run mid-way), advanced as steps are applied.
    pub position: Position,
    /// Told after every step and epoch.
    pub progress: P,
}

/// What one epoch's steps added up to.
#[derive(Debug, Default)]
struct EpochSteps {
    timings: Vec<StepTiming>,
    /// Samples trained on (fewer than the training set after a resume mid-epoch).
    samples: usize,
    workers: usize,
    reassigned: u64,
    backups: u64,
}

/// Trains `run.network` by `run.plan` from `run.position` until the last
/// epoch or early stopping, with `runner` computing each step, telling
/// `run.progress` after each step and epoch; returns the epochs' reports.
/// A `progress` that declines to [`Progress::proceed`] ends the run there.
///
/// An epoch ends with its evaluation, which early stopping and the η
/// schedule judge; only then does the position move to the next epoch, so a
/// checkpoint never holds an epoch whose verdict is missing.
///
/// # Errors
/// The runner's, if a step cannot be completed or a checkpoint cannot be
/// written; the network, state and the runner's position then describe
/// the last applied step.
///
/// # Panics
/// If `run.position.batch` is past the end of its epoch.
pub async fn drive<R: StepRunner, P: Progress>(
    runner: &mut R,
    run: Run<'_, P>,
) -> Result<Vec<EpochReport>, R::Error> {
    let Run {
        network,
        state,
        data,
        plan,
        mut position,
        mut progress,
    } = run;
    let mut reports = Vec::new();
    state.chain.start(position.step, network);
    while position.epoch < plan.epochs && !state.stopping.stopped {
        let epoch = position.epoch;
        let eta = state.eta(plan);
        let start = Instant::now();
        let Some(steps) = epoch_steps(
            runner,
            network,
            state,
            data,
            plan,
            &mut position,
            &mut progress,
        )
        .await?
        else {
            return Ok(reports);
        };
        let train_time = start.elapsed();
        state.chain.after_epoch(epoch, position.step, network);
        if !progress.proceed(&state.chain) {
            return Ok(reports);
        }
        let summary = StepSummary::of(&steps.timings);
        let mut report = runner
            .evaluate(
                network,
                data,
                plan,
                EpochRun {
                    epoch,
                    eta,
                    steps: position.step,
                    train_time,
                    step_times: summary,
                },
            )
            .await;
        end_epoch(plan, state, network, &mut report);
        position = Position {
            epoch: epoch + 1,
            batch: 0,
            step: position.step,
        };
        runner.moved(position);
        if runner
            .checkpoint(Boundary::Epoch, network, position, state)
            .await?
        {
            progress.checkpoint(position.step);
        }
        report.trained = steps.samples;
        report.workers = steps.workers;
        report.recomputed = steps.reassigned;
        report.backups = steps.backups;
        progress.epoch(&report);
        reports.push(report);
    }
    Ok(reports)
}

/// The steps of `position.epoch` from `position.batch` on; `None` if
/// `progress` declined to go on.
async fn epoch_steps<R: StepRunner, P: Progress>(
    runner: &mut R,
    network: &mut Network,
    state: &mut RunState,
    data: &Mnist,
    plan: &TrainingPlan,
    position: &mut Position,
    progress: &mut P,
) -> Result<Option<EpochSteps>, R::Error> {
    let epoch = position.epoch;
    let update = plan.update(state.eta(plan), data.training.len());
    let order = epoch_order(plan.seed, epoch, data.training.len());
    let batches: Vec<&[usize]> = order.chunks(plan.batch_size).collect();
    let total = batches.len();
    assert!(position.batch <= total, "a position within its epoch");
    let mut steps = EpochSteps {
        timings: Vec::with_capacity(total - position.batch),
        ..EpochSteps::default()
    };
    while let Some(&batch) = batches.get(position.batch) {
        let step_start = Instant::now();
        let step = Step {
            id: StepId(position.step),
            training: &data.training,
            batch,
            next: batches.get(position.batch + 1).copied(),
            key: plan.dropout_key(epoch, position.batch * plan.batch_size),
            update,
        };
        let stepped = runner.step(network, state.velocity.as_mut(), step).await?;
        let applied = Instant::now();
        // Network, velocity and position change together, with no await in
        // between: a cancelled run always leaves a consistent set to checkpoint.
        steps.samples += batch.len();
        position.batch += 1;
        position.step += 1;
        runner.moved(*position);
        state
            .chain
            .after_step(position.step, plan.record_every, network);
        if !progress.proceed(&state.chain) {
            return Ok(None);
        }
        let mut timing = stepped.timing;
        timing.reduce += applied.elapsed();
        timing.total = step_start.elapsed();
        steps.timings.push(timing);
        steps.workers = stepped.workers;
        steps.reassigned += stepped.reassigned;
        steps.backups += stepped.backups;
        progress.step(&StepProgress {
            epoch,
            done: position.batch,
            total,
            timing,
            workers: stepped.workers,
        });
        progress.weights(network);
        if runner
            .checkpoint(Boundary::Step, network, *position, state)
            .await?
        {
            progress.checkpoint(position.step);
        }
    }
    Ok(Some(steps))
}

/// Runs `future` to its end on this thread, for a future that never waits
/// (the local runner's loop): one poll with a waker that does nothing.
///
/// # Panics
/// If `future` is not ready after one poll.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a future that never waits waited"),
    }
}

#[cfg(test)]
mod tests {
    //! The loop's resume contract, in one process: stop after any step,
    //! drive again from the position the runner was told, get the same bits.
    use super::*;
    use crate::local::{train_in_process_with_state, InProcess};
    use crate::progress::Quiet;

    /// [`InProcess`], failing every step from `.1` on and keeping the
    /// position it was told.
    struct Stopping<'a>(InProcess<'a>, u64, Position);

    impl StepRunner for Stopping<'_> {
        type Error = StepId;

        async fn step(
            &mut self,
            network: &mut Network,
            velocity: Option<&mut Velocity>,
            step: Step<'_>,
        ) -> Result<Stepped, StepId> {
            if step.id.0 >= self.1 {
                return Err(step.id);
            }
            Ok(self
                .0
                .step(network, velocity, step)
                .await
                .unwrap_or_else(|e| match e {}))
        }

        fn moved(&mut self, position: Position) {
            self.2 = position;
        }
    }

    fn plan() -> TrainingPlan {
        TrainingPlan {
            sizes: vec![784, 8, 10],
            epochs: 3,
            batch_size: 10,
            eta: 0.5,
            shards: 3,
            seed: 5,
            momentum: 0.6,
            ..TrainingPlan::default()
        }
    }

    #[test]
    fn stopping_after_any_step_and_driving_on_from_its_position_is_bitwise_exact() {
        let (plan, data) = (plan(), Mnist::random(95, 10, 20, 99));
        let mut reference = plan.initial_network();
        let mut ref_state = RunState::new(&plan);
        let ref_reports =
            train_in_process_with_state(&mut reference, &mut ref_state, &data, &plan, Quiet);
        assert_eq!(ref_reports.len(), 3);
        for stop in [1, 9, 10, 11, 20, 29] {
            let (mut network, mut state) = (plan.initial_network(), RunState::new(&plan));
            let mut runner = Stopping(InProcess::new(&plan), stop, Position::default());
            fn run<'a>(
                network: &'a mut Network,
                state: &'a mut RunState,
                (data, plan): (&'a Mnist, &'a TrainingPlan),
                position: Position,
            ) -> Run<'a, Quiet> {
                Run {
                    network,
                    state,
                    data,
                    plan,
                    position,
                    progress: Quiet,
                }
            }
            let start = run(
                &mut network,
                &mut state,
                (&data, &plan),
                Position::default(),
            );
            let first = block_on(drive(&mut runner, start));
            assert_eq!(first.unwrap_err(), StepId(stop));
            let position = runner.2;
            assert_eq!(position.step, stop, "stop {stop}");
            runner.1 = u64::MAX;
            let rest = run(&mut network, &mut state, (&data, &plan), position);
            block_on(drive(&mut runner, rest)).unwrap();
            assert!(network == reference, "stop {stop}: weights differ");
            assert!(state == ref_state, "stop {stop}: state differs");
        }
    }

    #[test]
    #[should_panic(expected = "a position within its epoch")]
    fn a_position_past_its_epoch_is_refused() {
        let (plan, data) = (plan(), Mnist::random(20, 10, 10, 1));
        let (mut network, mut state) = (plan.initial_network(), RunState::new(&plan));
        let position = Position {
            epoch: 0,
            batch: 3,
            step: 3,
        };
        let run = Run {
            network: &mut network,
            state: &mut state,
            data: &data,
            plan: &plan,
            position,
            progress: Quiet,
        };
        let _ = block_on(drive(&mut InProcess::new(&plan), run));
    }
}
