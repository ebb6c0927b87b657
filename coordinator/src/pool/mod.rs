//! The worker pool: the seam between the training loop and the workers.
//!
//! [`WorkerPool::run_step`] takes a step's shards and returns their gradients
//! in shard order, however the work was spread and whatever order the results
//! came in. [`RemotePool`] is the registry of connected workers, fed by the
//! gRPC service's [`WorkerEvent`]s. Its decisions (who gets which shard,
//! whether a result may be applied, who is overdue) are made by the pure
//! per-step state machine in [`step`], the cross-step record of what each
//! worker has yet to answer in [`backlog`], and the straggler threshold in
//! [`backup`]; this file turns them into messages, validates result payloads
//! (through `wire`), and evicts workers.
//!
//! **Stragglers.** New shards go only to idle workers (nothing unanswered),
//! and a shard unanswered for longer than the adaptive threshold of
//! [`backup`] is copied to an idle worker: the first result wins. A paused
//! or slow worker therefore costs the run about one threshold, not its pause.

pub mod audit;
pub mod backlog;
pub mod backup;
pub mod observer;
pub mod step;

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use common::dataset::Samples;
use common::kernels::KernelSet;
use common::layers::DropoutKey;
use common::metrics::StepTiming;
use common::pb::{self, coordinator_message};
use common::schedule::{ShardId, StepId};
use common::shard::AnswerForm;
use common::{wire, Gradients, Network};
use tokio::sync::mpsc;
use tonic::Status;

use crate::refusal::{Refusal, Violation};
use tracing::{info, warn};

pub use audit::Audit;
use backlog::Backlog;
use backup::{BackupPolicy, ShardTimes};
pub use observer::{Observer, PoolEvent};
use step::{judge_step_id, StepState, Verdict};

/// Id the coordinator gives a worker's stream; unique within a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkerId(pub u32);

impl std::fmt::Display for WorkerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Messages to one worker; an `Err` ends its stream with that status.
pub type Outbox = mpsc::Sender<Result<pb::CoordinatorMessage, Status>>;

/// What the transport tells the pool.
#[derive(Debug)]
pub enum WorkerEvent {
    /// A worker completed the handshake.
    Joined {
        /// Its id.
        id: WorkerId,
        /// The name it gave.
        name: String,
        /// Its address, if the transport knows it.
        addr: Option<std::net::SocketAddr>,
        /// Where to send it work. Dropping every clone ends its stream with OK.
        outbox: Outbox,
    },
    /// A worker sent a result (not yet validated).
    Result {
        /// The sender.
        id: WorkerId,
        /// The message.
        result: pb::ShardResult,
    },
    /// A worker's stream ended.
    Left {
        /// The worker.
        id: WorkerId,
        /// Why, for the log.
        reason: String,
    },
}

/// Why a step could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No worker was left and none joined in time.
    #[error("step {step}: no worker left and none joined within {}", common::logging::Seconds(*.waited))]
    NoWorkers {
        /// The step that could not complete.
        step: StepId,
        /// How long the pool waited.
        waited: Duration,
    },
    /// The service stopped delivering events (the server is gone).
    #[error("the gRPC service stopped")]
    ServiceGone,
}

/// What one step produced.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutput {
    /// The summed gradients of every shard, in shard order.
    pub gradients: Vec<Gradients>,
    /// The compute and codec parts of the step (its total and reduce parts
    /// are the caller's to measure).
    pub timing: StepTiming,
    /// Workers connected at the end of the step.
    pub workers: usize,
    /// Shards handed to another worker during this step because their owner
    /// left or failed.
    pub reassigned: u64,
    /// Backup copies of late shards sent during this step.
    pub backups: u64,
}

/// Computes the shards of steps somewhere.
#[allow(async_fn_in_trait)] // used with concrete types only
pub trait WorkerPool {
    /// Computes the summed gradients of every shard of `step` at `network`'s
    /// weights; `output.gradients[i]` is `shards[i]`'s. `key` is the dropout
    /// key of the step's first sample (its place in the epoch); shard `i`'s
    /// first sample follows the samples of shards `0..i`.
    ///
    /// # Errors
    /// [`PoolError`] if the step cannot be completed.
    async fn run_step(
        &mut self,
        step: StepId,
        network: &Network,
        shards: &[Samples],
        key: DropoutKey,
    ) -> Result<StepOutput, PoolError>;
}

/// Counters a run reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Results for an earlier step, or from a worker already dropped: ignored.
    pub late: u64,
    /// Results from a shard's owner for a shard already done: ignored.
    pub duplicate: u64,
    /// Results that failed validation: never applied, sender dropped.
    pub rejected: u64,
    /// Protocol violations (a step or shard never issued, another worker's
    /// shard): never applied, sender dropped.
    pub refused: u64,
    /// Shards given to another worker after theirs left or failed.
    pub reassigned: u64,
    /// Backup copies of late shards sent to idle workers.
    pub backups: u64,
    /// Shards whose backup copy answered first.
    pub backups_won: u64,
    /// Results the coordinator recomputed and compared (`--audit-rate`).
    pub audited: u64,
    /// Audited results that differed from the recomputation: the recomputed
    /// gradients were used and the sender dropped.
    pub audit_failures: u64,
}

/// By default (`--first-errors-up-to`), shards of at most this many samples
/// are asked for their first layer's error δ¹ instead of its weight gradient
/// δ¹·xᵀ (see `Shard.ask_first_error` in the proto), which the coordinator
/// then computes itself. For `[784,30,10]` a shard of 3 samples sends 90
/// values instead of 23,520, and the product costs the coordinator ~70 k
/// multiply-adds (a few µs with the avx2 kernels). The bytes saved grow with
/// the hidden layer as fast as that work does, so the limit does not depend
/// on the sizes. At 25 samples a shard (batch 100, 4 workers) asking or not
/// made no difference measurable on a 2-core machine; at 2-3 it took 30% off
/// the step (see `docs/performance.md`).
pub const FIRST_ERROR_MAX_SAMPLES: usize = 32;

struct Handle {
    name: String,
    outbox: Outbox,
}

/// The registry of connected workers, fed by the gRPC service's events.
pub struct RemotePool {
    events: mpsc::Receiver<WorkerEvent>,
    workers: BTreeMap<WorkerId, Handle>,
    sizes: Vec<usize>,
    /// For a chapter-6 net, a zero network of its shapes: results decode into it.
    net: Option<Network>,
    timeouts: Timeouts,
    stats: PoolStats,
    /// The id of the next step to be issued: results for it or later are violations.
    next_step: u64,
    /// What each worker has yet to answer, across steps.
    backlog: Backlog,
    /// Recent shard times: when a shard is late enough for a backup.
    times: ShardTimes,
    /// Which results to recompute and compare.
    audit: Audit,
    /// Shards of at most this many samples are asked for their first
    /// layer's error (0: none; see [`FIRST_ERROR_MAX_SAMPLES`]).
    first_errors_up_to: usize,
    /// The run's kernels, which complete a result sent with that error.
    kernels: KernelSet,
    /// Who hears about joins, sends, results and reassignments.
    observer: Observer,
}

/// How long the pool waits, and for what.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    /// When no worker is left mid-step: how long to wait for one to join.
    pub wait_for_worker: Duration,
    /// How long a worker may take for a shard before it is dropped and its
    /// shards are given to others.
    pub shard: Duration,
    /// When a late shard gets a backup copy on an idle worker.
    pub backup: BackupPolicy,
}

/// One step in flight: the pure state plus what the pool needs to act on it.
struct Step<'a> {
    state: StepState,
    /// The weights the step's shards are computed at (for audits).
    network: &'a Network,
    /// Each shard's dropout key.
    keys: &'a [DropoutKey],
    weights: bytes::Bytes,
    shards: &'a [Samples],
    results: Vec<Option<Gradients>>,
    /// Time the coordinator spent encoding and decoding this step's messages.
    codec: Duration,
    /// Time the coordinator spent computing first weight gradients from errors.
    products: Duration,
    /// Per worker, its reported (compute, codec) time on accepted results.
    work: BTreeMap<WorkerId, (Duration, Duration)>,
    reassigned: u64,
    backups: u64,
}

/// Each shard's dropout key: shard `i` starts where shards `0..i` end.
fn shard_keys(key: DropoutKey, shards: &[Samples]) -> Vec<DropoutKey> {
    let mut first = key.first;
    shards
        .iter()
        .map(|s| {
            let k = DropoutKey { first, ..key };
            first += s.len() as u64;
            k
        })
        .collect()
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

impl RemotePool {
    /// A pool for a model of `sizes`; the first step it runs is `first_step`
    /// (0, or where a resumed run continues).
    pub fn new(
        events: mpsc::Receiver<WorkerEvent>,
        sizes: Vec<usize>,
        timeouts: Timeouts,
        first_step: u64,
    ) -> Self {
        Self {
            events,
            workers: BTreeMap::new(),
            sizes,
            net: None,
            timeouts,
            stats: PoolStats::default(),
            next_step: first_step,
            backlog: Backlog::default(),
            times: ShardTimes::new(timeouts.backup),
            audit: Audit::off(),
            first_errors_up_to: 0,
            kernels: KernelSet::Portable,
            observer: Observer::none(),
        }
    }

    /// The same pool, asking each shard of at most `up_to` samples (0:
    /// none) for its first layer's error, and computing the first weight
    /// matrix from it with the run's `kernels`.
    pub fn with_first_errors(self, up_to: usize, kernels: KernelSet) -> Self {
        Self {
            first_errors_up_to: up_to,
            kernels,
            ..self
        }
    }

    /// The answer a shard of `samples` samples is asked for: with its first
    /// layer's error only where that is smaller than the matrix (fewer than
    /// `sizes[0]` samples, so it cannot outgrow the limit on a worker's
    /// message either), up to `--first-errors-up-to` samples, for an MLP.
    fn answer_form(&self, samples: usize) -> AnswerForm {
        let small = samples <= self.first_errors_up_to && samples < self.sizes[0];
        AnswerForm::first_error_if(self.net.is_none() && small)
    }

    /// The fully connected layers a shard of `samples` samples of the run's
    /// net is asked to send as factors: those whose factors are fewer values
    /// than their weight gradient, unless `--first-errors-up-to 0` asks for
    /// whole gradients (and none for a dense network).
    fn factor_layers(&self, samples: usize) -> Vec<usize> {
        match self.net.as_ref().and_then(|n| n.net.as_ref()) {
            Some(spec) if self.first_errors_up_to > 0 => {
                common::layers::net::factor_layers(spec, samples)
            }
            _ => Vec::new(),
        }
    }

    /// The same pool for the chapter-6 net `net` (whose shapes fix the
    /// results' layout; nets are never asked for a first error).
    pub fn with_net(self, net: Option<&common::layers::NetSpec>) -> Self {
        Self {
            net: net.map(Network::for_net),
            ..self
        }
    }

    /// The same pool, auditing results as `audit` says.
    pub fn with_audit(self, audit: Audit) -> Self {
        Self { audit, ..self }
    }

    /// Reports what the pool does to `observer` (the dashboard, `--trace`).
    pub fn with_observer(mut self, observer: Observer) -> Self {
        self.observer = observer;
        self
    }

    /// Counters so far.
    pub fn stats(&self) -> &PoolStats {
        &self.stats
    }

    /// Workers connected now.
    pub fn live_workers(&self) -> usize {
        self.workers.len()
    }

    /// Waits until `count` workers are connected, logging each that joins.
    ///
    /// # Errors
    /// [`PoolError::ServiceGone`] if the service stops.
    pub async fn wait_for_workers(&mut self, count: usize) -> Result<(), PoolError> {
        if self.workers.len() < count {
            info!(
                have = self.workers.len(),
                want = count,
                "waiting for workers"
            );
        }
        while self.workers.len() < count {
            let event = self.events.recv().await.ok_or(PoolError::ServiceGone)?;
            if let Some((id, result)) = self.handle_membership(event) {
                // No step is in flight: every result is late or never issued.
                let (step, current) = (StepId(result.step_id), StepId(self.next_step));
                let verdict = judge_step_id(step, current).unwrap_or(Verdict::Violation(
                    Violation::UnissuedStep { step, current },
                ));
                self.settle(id, &result, verdict);
            }
        }
        Ok(())
    }

    /// Tells every worker to shut down and forgets them; their streams end with OK.
    pub fn shutdown(&mut self, reason: &str) {
        let mut unreachable = 0;
        for (id, handle) in std::mem::take(&mut self.workers) {
            let msg = pb::CoordinatorMessage {
                kind: Some(coordinator_message::Kind::Shutdown(pb::Shutdown {
                    reason: reason.to_string(),
                })),
            };
            if handle.outbox.try_send(Ok(msg)).is_err() {
                // Its stream is already closed or full: it is gone either way.
                tracing::trace!(worker = %id, name = %handle.name, "could not send shutdown");
                unreachable += 1;
            }
        }
        if unreachable > 0 {
            // After Ctrl-C most streams are closing already: one line, not one per worker.
            tracing::debug!(unreachable, "workers already gone at shutdown");
        }
    }

    /// Applies a join or leave; returns results to the caller.
    fn handle_membership(&mut self, event: WorkerEvent) -> Option<(WorkerId, pb::ShardResult)> {
        match event {
            WorkerEvent::Joined {
                id,
                name,
                addr,
                outbox,
            } => {
                info!(worker = %id, %name, live = self.workers.len() + 1, "worker joined");
                self.observer.emit(|| PoolEvent::Joined {
                    worker: id,
                    name: name.clone(),
                    addr,
                    step: StepId(self.next_step),
                    at: now(),
                });
                self.workers.insert(id, Handle { name, outbox });
                None
            }
            WorkerEvent::Left { id, reason } => {
                self.backlog.forget(id);
                if let Some(h) = self.workers.remove(&id) {
                    warn!(worker = %id, name = %h.name, %reason, live = self.workers.len(), "worker lost");
                    self.observer.emit(|| PoolEvent::Lost {
                        worker: id,
                        reason,
                        at: now(),
                    });
                }
                None
            }
            // Whether it answers a copy the worker holds is for `settle` and `accept`.
            WorkerEvent::Result { id, result } => Some((id, result)),
        }
    }

    /// Counts a verdict that keeps nothing, dropping the sender of a violation.
    fn count(&mut self, id: WorkerId, verdict: Verdict) {
        let why = match verdict {
            Verdict::Accept(_) => None,
            Verdict::Late | Verdict::Departed => Some(observer::Ignored::Late),
            Verdict::Duplicate => Some(observer::Ignored::Duplicate),
            Verdict::Violation(_) => Some(observer::Ignored::Refused),
        };
        if let Some(why) = why {
            self.observer
                .emit(|| PoolEvent::Ignored { worker: id, why });
        }
        match verdict {
            Verdict::Accept(_) => {}
            Verdict::Late | Verdict::Departed => self.stats.late += 1,
            Verdict::Duplicate => self.stats.duplicate += 1,
            Verdict::Violation(v) => {
                self.stats.refused += 1;
                self.evict(id, v);
            }
        }
    }

    /// Handles a result that completes no shard (late, duplicate, from a
    /// departed worker, or a violation). If it is for a copy its sender
    /// still holds (a straggler's answer, or the second copy of a backed-up
    /// shard), it answers that copy once its payload decodes, and a payload
    /// that does not is rejected; anything else clears nothing (see
    /// [`backlog`]). Returns whether the sender was dropped.
    fn settle(&mut self, id: WorkerId, result: &pb::ShardResult, verdict: Verdict) -> bool {
        let held = match verdict {
            Verdict::Late | Verdict::Duplicate => {
                self.backlog.held(id, result.step_id, result.shard_id)
            }
            _ => None,
        };
        if let Some(copy) = held {
            let (samples, asked) = (copy.samples, copy.asked);
            if let Err(e) = self.decode(result, samples, asked) {
                self.reject(id, e);
                return true;
            }
            self.backlog.answered(id, result.step_id, result.shard_id);
        }
        let violation = matches!(verdict, Verdict::Violation(_));
        self.count(id, verdict);
        violation
    }

    /// Decodes and validates a result for a shard of `samples` samples, by
    /// the run's model: a chapter-6 net's shapes, or the sizes (with the
    /// first layer's error where `asked`).
    fn decode(
        &self,
        result: &pb::ShardResult,
        samples: usize,
        asked: AnswerForm,
    ) -> Result<wire::ShardGradients, wire::WireError> {
        match &self.net {
            Some(net) => {
                let factored = self.factor_layers(samples);
                wire::decode_net_result(result, net, samples, &factored)
            }
            None => wire::decode_shard_result(result, &self.sizes, samples, asked),
        }
    }

    /// Drops a worker whose result failed validation.
    fn reject(&mut self, id: WorkerId, e: impl Into<Refusal>) {
        self.stats.rejected += 1;
        self.observer.emit(|| PoolEvent::Ignored {
            worker: id,
            why: observer::Ignored::Rejected,
        });
        self.evict(id, e);
    }

    /// Drops a worker, ending its stream with the status of `why`.
    fn evict(&mut self, id: WorkerId, why: impl Into<Refusal>) {
        let status = Status::from(why.into());
        self.backlog.forget(id);
        if let Some(h) = self.workers.remove(&id) {
            warn!(worker = %id, name = %h.name, code = ?status.code(), error = %status.message(), "worker evicted");
            self.observer.emit(|| PoolEvent::Evicted {
                worker: id,
                reason: status.message().to_string(),
                at: now(),
            });
            let _ = h.outbox.try_send(Err(status));
        }
    }

    /// Sends every open shard of `step` to a live worker, round-robin in
    /// worker-id order over the idle workers (over all of them when none is
    /// idle), one `Step` message per worker.
    fn assign(&mut self, step: &mut Step<'_>) {
        loop {
            let idle = self.idle_workers();
            let ids = if idle.is_empty() {
                self.workers.keys().copied().collect()
            } else {
                idle
            };
            let plan = step.state.plan(&ids);
            if plan.is_empty() {
                return;
            }
            for (id, shards) in plan {
                self.send(step, id, &shards);
            }
        }
    }

    /// Copies each late shard of `step` to an idle worker (see [`backup`]).
    fn back_up(&mut self, step: &mut Step<'_>) {
        let Some(after) = self.times.threshold() else {
            return;
        };
        let idle = self.idle_workers();
        if idle.is_empty() {
            return;
        }
        for (id, shards) in step.state.plan_backups(now(), after, &idle) {
            let holders: Vec<_> = shards.iter().map(|&i| step.state.holders(i)).collect();
            if self.send(step, id, &shards) {
                self.stats.backups += shards.len() as u64;
                step.backups += shards.len() as u64;
                tracing::debug!(step = step.state.id(), ?shards, ?holders, worker = %id, ?after, "late shards copied to an idle worker");
            }
        }
    }

    /// Live workers with nothing left to answer, in worker-id order.
    fn idle_workers(&self) -> Vec<WorkerId> {
        self.workers
            .keys()
            .copied()
            .filter(|&w| self.backlog.is_idle(w))
            .collect()
    }

    /// Sends `shards` of `step` to `id` in one `Step` message and records
    /// it; a worker that cannot take it is evicted. Returns whether it was sent.
    fn send(&mut self, step: &mut Step<'_>, id: WorkerId, shards: &[usize]) -> bool {
        let encode_start = Instant::now();
        let msg = pb::Step {
            step_id: step.state.id(),
            weights: step.weights.clone(), // one buffer shared by all workers
            shards: shards
                .iter()
                .map(|&i| pb::Shard {
                    ask_first_error: self.answer_form(step.shards[i].len())
                        == AnswerForm::FirstError,
                    position: step.keys[i].first,
                    factor_layers: (self.factor_layers(step.shards[i].len()).iter())
                        .map(|&l| l as u32)
                        .collect(),
                    ..wire::encode_shard(ShardId(i as u32), &step.shards[i])
                })
                .collect(),
            epoch: step.keys.first().map_or(0, |k| k.epoch),
        };
        let msg = pb::CoordinatorMessage {
            kind: Some(coordinator_message::Kind::Step(msg)),
        };
        step.codec += encode_start.elapsed();
        match self.workers[&id].outbox.try_send(Ok(msg)) {
            Ok(()) => {
                let now = now();
                self.observer.emit(|| PoolEvent::Sent {
                    step: StepId(step.state.id()),
                    worker: id,
                    shards: shards.iter().map(|&i| ShardId(i as u32)).collect(),
                    at: now,
                });
                step.state.assign(id, shards, now);
                for &i in shards {
                    let copy = backlog::Held {
                        sent: now,
                        samples: step.shards[i].len(),
                        asked: self.answer_form(step.shards[i].len()),
                    };
                    self.backlog.sent(id, step.state.id(), i as u32, copy);
                }
                true
            }
            Err(_) => {
                // Closed, or so far behind that its queue is full: treat it as gone.
                self.evict(id, Refusal::NotReading);
                self.release(step, id);
                false
            }
        }
    }

    /// `id` is gone: its unfinished shards open up for `assign`.
    fn release(&mut self, step: &mut Step<'_>, id: WorkerId) {
        for shard in step.state.release(id) {
            self.stats.reassigned += 1;
            step.reassigned += 1;
            info!(step = step.state.id(), shard, worker = %id, "shard reassigned");
            self.observer.emit(|| PoolEvent::Reassigned {
                step: StepId(step.state.id()),
                shard: ShardId(shard as u32),
                from: id,
                at: now(),
            });
        }
    }

    /// Drops every worker with a shard copy unanswered past the shard
    /// timeout (of this step or an earlier one), whatever else it sent;
    /// their shards go to others.
    fn expire(&mut self, step: &mut Step<'_>) {
        for (id, (step_id, shard)) in self.backlog.overdue(now(), self.timeouts.shard) {
            let why = Refusal::TooSlow {
                step: StepId(step_id),
                shard: ShardId(shard),
                timeout: self.timeouts.shard,
            };
            self.evict(id, why);
            self.release(step, id);
        }
    }

    fn accept(&mut self, step: &mut Step<'_>, id: WorkerId, result: pb::ShardResult) {
        let live = self.workers.contains_key(&id);
        let i = match step
            .state
            .judge(id, live, StepId(result.step_id), ShardId(result.shard_id))
        {
            Verdict::Accept(i) => i,
            verdict => {
                if self.settle(id, &result, verdict) {
                    self.release(step, id);
                }
                return;
            }
        };
        let decode_start = Instant::now();
        let shard = &step.shards[i];
        let asked = self.answer_form(shard.len());
        let decoded = self.decode(&result, shard.len(), asked);
        step.codec += decode_start.elapsed();
        let product_start = Instant::now();
        let decoded = decoded.and_then(|d| d.complete(shard, self.kernels));
        step.products += product_start.elapsed();
        match decoded {
            Ok(g) => {
                self.backlog.answered(id, result.step_id, result.shard_id);
                let verdict = if self.audit.selects(step.state.id(), i) {
                    self.stats.audited += 1;
                    self.audit
                        .check(step.network, &step.shards[i], &g, step.keys[i])
                } else {
                    Ok(())
                };
                step.state.complete(i);
                match verdict {
                    Ok(()) => {
                        self.observer.emit(|| PoolEvent::Computed {
                            step: StepId(result.step_id),
                            worker: id,
                            shard: ShardId(result.shard_id),
                            compute: Duration::from_nanos(result.compute_nanos),
                            at: now(),
                        });
                        step.results[i] = Some(g);
                        if let Some(since) = step.state.held_since(i, id) {
                            self.times.record(now().saturating_duration_since(since));
                        }
                        if step.state.holders(i).first() != Some(&id) {
                            self.stats.backups_won += 1;
                        }
                        let work = step.work.entry(id).or_default();
                        work.0 += Duration::from_nanos(result.compute_nanos);
                        work.1 += Duration::from_nanos(result.codec_nanos);
                    }
                    Err(verified) => {
                        step.results[i] = Some(verified);
                        self.stats.audit_failures += 1;
                        self.observer.emit(|| PoolEvent::Ignored {
                            worker: id,
                            why: observer::Ignored::AuditFailed,
                        });
                        let why = Refusal::AuditFailed {
                            step: StepId(step.state.id()),
                            shard: ShardId(result.shard_id),
                        };
                        self.evict(id, why);
                        self.release(step, id);
                    }
                }
            }
            Err(e) => {
                self.reject(id, e);
                self.release(step, id);
            }
        }
    }
}

impl WorkerPool for RemotePool {
    async fn run_step(
        &mut self,
        id: StepId,
        network: &Network,
        shards: &[Samples],
        key: DropoutKey,
    ) -> Result<StepOutput, PoolError> {
        let encode_start = Instant::now();
        let keys = shard_keys(key, shards);
        let mut step = Step {
            state: StepState::new(id.0, shards.len()),
            network,
            keys: &keys,
            weights: wire::encode_network(network),
            shards,
            results: vec![None; shards.len()],
            codec: Duration::ZERO,
            products: Duration::ZERO,
            work: BTreeMap::new(),
            reassigned: 0,
            backups: 0,
        };
        step.codec = encode_start.elapsed();
        self.next_step = id.0.saturating_add(1);
        let started = Instant::now();
        self.assign(&mut step);
        while !step.state.is_done() {
            let event = if self.workers.is_empty() {
                let wait = self.timeouts.wait_for_worker;
                warn!(
                    step = id.0,
                    wait = %common::logging::Seconds(wait),
                    "no worker left; waiting for one to join"
                );
                match tokio::time::timeout(wait, self.events.recv()).await {
                    Ok(event) => event,
                    Err(_) => {
                        return Err(PoolError::NoWorkers {
                            step: id,
                            waited: wait,
                        })
                    }
                }
            } else {
                match tokio::time::timeout_at(self.wake_at(&step), self.events.recv()).await {
                    Ok(event) => event,
                    Err(_) => {
                        self.expire(&mut step);
                        self.back_up(&mut step);
                        self.assign(&mut step);
                        continue;
                    }
                }
            };
            let event = event.ok_or(PoolError::ServiceGone)?;
            let left = match &event {
                WorkerEvent::Left { id, .. } => Some(*id),
                _ => None,
            };
            if let Some((worker, result)) = self.handle_membership(event) {
                self.accept(&mut step, worker, result);
            }
            if let Some(worker) = left {
                self.release(&mut step, worker);
            }
            self.assign(&mut step);
        }
        if step.reassigned > 0 {
            info!(step = id.0, took = %common::logging::Seconds(started.elapsed()), "step completed despite lost shards");
        }
        // The critical path: the worker that was busiest with this step.
        let (compute, worker_codec) = step
            .work
            .values()
            .copied()
            .max_by_key(|&(compute, codec)| compute + codec)
            .unwrap_or_default();
        Ok(StepOutput {
            gradients: step
                .results
                .into_iter()
                .map(|g| g.expect("step is done"))
                .collect(),
            timing: StepTiming {
                total: Duration::ZERO,
                compute: compute + step.products,
                codec: step.codec + worker_codec,
                reduce: Duration::ZERO,
            },
            workers: self.workers.len(),
            reassigned: step.reassigned,
            backups: step.backups,
        })
    }
}

impl RemotePool {
    /// When the step loop must act without an event: the first worker
    /// becomes overdue, or (with an idle worker to take it) a shard becomes late.
    fn wake_at(&self, step: &Step<'_>) -> Instant {
        let overdue = self.backlog.deadline(self.timeouts.shard);
        let late = match self.times.threshold() {
            Some(after) if self.workers.keys().any(|&w| self.backlog.is_idle(w)) => {
                step.state.backup_due(after)
            }
            _ => None,
        };
        let at = match (overdue, late) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or_else(|| now() + self.timeouts.shard),
        };
        Instant::from_std(at)
    }
}

#[cfg(test)]
mod tests {
    //! The pool with fake workers and no sockets: each fake worker waits for
    //! its Steps on the outbox the service would have given it and answers
    //! through the event channel, in whatever order and shape a case says.
    //! Nothing here depends on polling order or timing: a fake worker always
    //! awaits the message it expects.
    use super::*;
    use common::pb::coordinator_message::Kind;

    const KEY: DropoutKey = DropoutKey {
        seed: 0,
        epoch: 0,
        first: 0,
    };
    use common::schedule::init_rng;
    use common::shard::quadratic_gradient as shard_gradients;
    use common::step::split_batch as step_shards;
    use rand::seq::SliceRandom;
    use tokio::sync::mpsc::Receiver;

    const SIZES: [usize; 3] = [784, 6, 10];
    /// The step every case runs; 6 is the step just finished.
    const STEP: u64 = 7;

    /// No backups: these cases are about who may answer, not about time.
    fn timeouts(secs: u64) -> Timeouts {
        timeouts_with(secs, Duration::from_secs(60), BackupPolicy::OFF)
    }

    /// Waits `secs` for workers, with this shard deadline and backup policy.
    fn timeouts_with(secs: u64, shard: Duration, backup: BackupPolicy) -> Timeouts {
        let wait_for_worker = Duration::from_secs(secs);
        Timeouts {
            wait_for_worker,
            shard,
            backup,
        }
    }

    fn shards() -> Vec<Samples> {
        let training = Samples::random_seeded(10, 9);
        step_shards(&training, &(0..10).collect::<Vec<_>>(), 4)
    }

    type Inbox = Receiver<Result<pb::CoordinatorMessage, Status>>;

    async fn join(events: &mpsc::Sender<WorkerEvent>, ids: std::ops::Range<u32>) -> Vec<Inbox> {
        let mut inboxes = Vec::new();
        for id in ids {
            let (outbox, inbox) = mpsc::channel(16);
            events
                .send(WorkerEvent::Joined {
                    id: WorkerId(id),
                    name: format!("fake-{id}"),
                    addr: None,
                    outbox,
                })
                .await
                .unwrap();
            inboxes.push(inbox);
        }
        inboxes
    }

    /// Computes a Step's shards as a worker would, with the first layer's
    /// error where a shard asks for it, if this worker `knows_first_errors`
    /// (else as one that predates them, or ignores them, would).
    fn results_for(step: pb::Step, knows_first_errors: bool) -> Vec<pb::ShardResult> {
        let mut net = Network::zeros(&SIZES);
        let shards = wire::decode_step(&step, &mut net).unwrap();
        let asked = step
            .shards
            .iter()
            .map(|s| s.ask_first_error && knows_first_errors);
        let result = |((id, samples), asked): (&(ShardId, Samples), bool)| {
            let (k, cost) = (KernelSet::best(), common::cost::Cost::Quadratic);
            let (g, e) = common::shard::answer(
                &net,
                samples,
                cost,
                k,
                common::shard::AnswerForm::first_error_if(asked),
                KEY,
            );
            wire::encode_shard_answer(step.step_id, *id, samples.len(), &g, e.as_deref())
        };
        shards.iter().zip(asked).map(result).collect()
    }

    /// A pool for these tests, asking shards for their first layer's error or not.
    fn pool(rx: mpsc::Receiver<WorkerEvent>, secs: u64, first_errors: bool) -> RemotePool {
        let up_to = if first_errors {
            FIRST_ERROR_MAX_SAMPLES
        } else {
            0
        };
        RemotePool::new(rx, SIZES.to_vec(), timeouts(secs), STEP)
            .with_first_errors(up_to, KernelSet::best())
    }

    /// `values` as the little-endian f32 bytes of a `first_error` field.
    fn first_error_of(values: &[f32]) -> bytes::Bytes {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// Waits for the next message in `inbox`, which must be a Step, and computes it.
    async fn compute_next(inbox: &mut Inbox) -> Vec<pb::ShardResult> {
        compute_next_as(inbox, true).await
    }

    /// [`compute_next`] by a worker that knows first errors or not (see [`results_for`]).
    async fn compute_next_as(inbox: &mut Inbox, knows: bool) -> Vec<pb::ShardResult> {
        match inbox.recv().await {
            Some(Ok(pb::CoordinatorMessage {
                kind: Some(Kind::Step(step)),
            })) => results_for(step, knows),
            other => panic!("expected a Step, got {other:?}"),
        }
    }

    async fn send(tx: &mpsc::Sender<WorkerEvent>, id: u32, result: pb::ShardResult) {
        tx.send(WorkerEvent::Result {
            id: WorkerId(id),
            result,
        })
        .await
        .unwrap();
    }

    fn expected(net: &Network) -> Vec<Gradients> {
        shards().iter().map(|s| shard_gradients(net, s)).collect()
    }

    /// In shard order, and the same bits whether the shards sent their
    /// first layer's error or their whole gradients (not asked, or asked of
    /// a worker that ignores the request).
    #[tokio::test]
    async fn results_in_any_arrival_order_come_back_in_shard_order() {
        let net = Network::new(&SIZES, &mut init_rng(1));
        for seed in 0..24u64 {
            let (tx, rx) = mpsc::channel(64);
            let mut pool = pool(rx, 5, seed >= 8);
            let knows = seed < 16;
            let workers = 1 + (seed % 4) as u32;
            let mut inboxes = join(&tx, 0..workers).await;
            pool.wait_for_workers(inboxes.len()).await.unwrap();
            let shards = shards();
            let answer = async {
                let mut results: Vec<(u32, pb::ShardResult)> = Vec::new();
                for (w, inbox) in inboxes.iter_mut().enumerate() {
                    let computed = compute_next_as(inbox, knows).await;
                    results.extend(computed.into_iter().map(|r| (w as u32, r)));
                }
                results.shuffle(&mut init_rng(seed));
                for (id, result) in results {
                    send(&tx, id, result).await;
                }
            };
            let (got, ()) = tokio::join!(pool.run_step(StepId(STEP), &net, &shards, KEY), answer);
            let got = got.unwrap();
            assert!(
                got.gradients == expected(&net),
                "case {seed}: results not in shard order"
            );
            assert_eq!((got.workers, got.reassigned), (workers as usize, 0));
        }
    }

    /// What a fault case does to worker 0's first result (worker 0 owns
    /// shards 0 and 2, worker 1 owns 1 and 3; in one case a third peer,
    /// worker 2, joins after the shards are handed out and owns none).
    #[derive(Clone, Copy)]
    enum Interference {
        /// Sent by `from` before anything honest.
        Before {
            from: u32,
            edit: fn(&mut pb::ShardResult),
        },
        /// Worker 0's first result, sent again (zeroed) after the honest one.
        Duplicate,
        /// Worker 0's stream ends before it answers.
        Left,
    }

    fn zeroed(r: &mut pb::ShardResult) {
        r.gradients = vec![0; r.gradients.len()].into();
    }

    /// Fault cases: the honest results plus some interference; the step must
    /// still return exactly the honest gradients, the counters must say what
    /// happened, and a dropped sender must be told why with the right code.
    #[tokio::test]
    async fn late_duplicate_forged_and_bad_results_are_never_applied() {
        use tonic::Code;
        use Interference::*;
        let net = Network::new(&SIZES, &mut init_rng(1));
        let stats = |late, duplicate, rejected, refused, reassigned| PoolStats {
            late,
            duplicate,
            rejected,
            refused,
            reassigned,
            ..PoolStats::default()
        };
        // (what happens, the interference, the stats after, who is dropped with which code)
        type Case = (&'static str, Interference, PoolStats, Option<(u32, Code)>);
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("the step just finished", Before { from: 0, edit: |r| r.step_id = STEP - 1 }, stats(1, 0, 0, 0, 0), None),
            ("an older step", Before { from: 0, edit: |r| r.step_id = 0 }, stats(1, 0, 0, 0, 0), None),
            ("a duplicate", Duplicate, stats(0, 1, 0, 0, 0), None),
            ("NaN gradients", Before { from: 0, edit: |r| r.gradients = vec![0xff; r.gradients.len()].into() }, stats(0, 0, 1, 0, 2), Some((0, Code::InvalidArgument))),
            ("short gradients", Before { from: 0, edit: |r| r.gradients = r.gradients.slice(4..) }, stats(0, 0, 1, 0, 2), Some((0, Code::InvalidArgument))),
            ("wrong sample count", Before { from: 0, edit: |r| r.sample_count += 1 }, stats(0, 0, 1, 0, 2), Some((0, Code::InvalidArgument))),
            ("a future step", Before { from: 0, edit: |r| r.step_id = STEP + 1 }, stats(0, 0, 0, 1, 2), Some((0, Code::InvalidArgument))),
            ("a step near 2^64", Before { from: 0, edit: |r| r.step_id = u64::MAX }, stats(0, 0, 0, 1, 2), Some((0, Code::InvalidArgument))),
            ("a shard id = the shard count", Before { from: 0, edit: |r| r.shard_id = 4 }, stats(0, 0, 0, 1, 2), Some((0, Code::InvalidArgument))),
            ("another worker's shard, forged", Before { from: 0, edit: |r| { r.shard_id = 1; zeroed(r) } }, stats(0, 0, 0, 1, 2), Some((0, Code::PermissionDenied))),
            ("another worker's shard, honest bytes", Before { from: 0, edit: |r| r.shard_id = 1 }, stats(0, 0, 0, 1, 2), Some((0, Code::PermissionDenied))),
            ("a peer with no shards", Before { from: 2, edit: zeroed }, stats(0, 0, 0, 1, 0), Some((2, Code::PermissionDenied))),
            ("worker left", Left, stats(0, 0, 0, 0, 2), None),
            // Where the shard did not ask for it, each of these is an error not asked for.
            ("a first layer's error, NaN", Before { from: 0, edit: |r| r.first_error = first_error_of(&[f32::NAN; 18]) }, stats(0, 0, 1, 0, 2), Some((0, Code::InvalidArgument))),
            ("a first layer's error, short", Before { from: 0, edit: |r| r.first_error = first_error_of(&[1.0; 17]) }, stats(0, 0, 1, 0, 2), Some((0, Code::InvalidArgument))),
            ("a first layer's error whose product overflows", Before { from: 0, edit: |r| r.first_error = first_error_of(&[3e38; 18]) }, stats(0, 0, 1, 0, 2), Some((0, Code::InvalidArgument))),
            ("whole gradients and a first layer's error", Before { from: 0, edit: |r| { r.first_error = first_error_of(&[1.0; 18]); r.gradients = vec![0; common::network::parameter_count(&SIZES) * 4].into() } }, stats(0, 0, 1, 0, 2), Some((0, Code::InvalidArgument))),
        ];
        let modes = cases.iter().flat_map(|case| [(case, false), (case, true)]);
        for (&(name, interference, ref want, evicted), first_errors) in modes {
            let name = format!("{name} (first errors asked: {first_errors})");
            let want = want.clone();
            let (tx, rx) = mpsc::channel(64);
            let mut pool = pool(rx, 5, first_errors);
            let mut inboxes = join(&tx, 0..2).await;
            pool.wait_for_workers(2).await.unwrap();
            let shards = shards();
            let third_peer = matches!(interference, Before { from: 2, .. });
            let answer = async {
                let honest0 = compute_next(&mut inboxes[0]).await;
                let honest1 = compute_next(&mut inboxes[1]).await;
                if third_peer {
                    // It joins once the shards are out, so it owns none.
                    inboxes.extend(join(&tx, 2..3).await);
                }
                let mut worker0_lost = evicted.is_some_and(|(w, _)| w == 0);
                match interference {
                    Before { from, edit } => {
                        let mut bad = honest0[0].clone();
                        edit(&mut bad);
                        send(&tx, from, bad).await;
                    }
                    Left => {
                        tx.send(WorkerEvent::Left {
                            id: WorkerId(0),
                            reason: "killed".into(),
                        })
                        .await
                        .unwrap();
                        worker0_lost = true;
                    }
                    Duplicate => {}
                }
                // A dropped worker's honest results come too late to count
                // as anything but "late"; a live one's are applied.
                if !worker0_lost {
                    for r in &honest0 {
                        send(&tx, 0, r.clone()).await;
                    }
                }
                if matches!(interference, Duplicate) {
                    let mut again = honest0[0].clone();
                    zeroed(&mut again);
                    send(&tx, 0, again).await;
                }
                for r in honest1 {
                    send(&tx, 1, r).await;
                }
                if worker0_lost {
                    // Worker 1 gets worker 0's shards in a second Step.
                    for r in compute_next(&mut inboxes[1]).await {
                        send(&tx, 1, r).await;
                    }
                }
            };
            let (got, ()) = tokio::join!(pool.run_step(StepId(STEP), &net, &shards, KEY), answer);
            let got = got.unwrap();
            assert!(
                got.gradients == expected(&net),
                "case {name}: wrong gradients"
            );
            assert_eq!(pool.stats(), &want, "case {name}");
            assert_eq!(got.reassigned, want.reassigned, "case {name}");
            let lost = usize::from(evicted.is_some() || matches!(interference, Left));
            assert_eq!(
                got.workers,
                2 + usize::from(third_peer) - lost,
                "case {name}"
            );
            if let Some((w, code)) = evicted {
                let status = inboxes[w as usize].recv().await.unwrap().unwrap_err();
                assert_eq!(status.code(), code, "case {name}: {status:?}");
            }
        }
    }

    /// Results that arrive while no step is in flight are judged too: one
    /// for a step never issued drops its sender.
    #[tokio::test]
    async fn results_between_steps_are_judged() {
        let (tx, rx) = mpsc::channel(64);
        let mut pool = RemotePool::new(rx, SIZES.to_vec(), timeouts(5), STEP);
        let mut inboxes = join(&tx, 0..1).await;
        let honest = wire::encode_shard_result(STEP - 1, ShardId(0), 1, &Gradients::zeros(&SIZES));
        send(&tx, 0, honest.clone()).await;
        let mut forged = honest;
        forged.step_id = STEP;
        send(&tx, 0, forged).await;
        inboxes.extend(join(&tx, 1..3).await);
        pool.wait_for_workers(2).await.unwrap();
        assert_eq!((pool.stats().late, pool.stats().refused), (1, 1));
        let status = inboxes[0].recv().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert_eq!(pool.live_workers(), 2);
    }

    /// A worker that never answers loses its shards when their deadline passes.
    /// Paused time: the deadline is reached by advancing the clock, not by waiting.
    #[tokio::test(start_paused = true)]
    async fn silent_worker_is_dropped_at_the_shard_deadline() {
        let (tx, rx) = mpsc::channel(64);
        let t = timeouts_with(5, Duration::from_secs(2), BackupPolicy::OFF);
        let mut pool = RemotePool::new(rx, SIZES.to_vec(), t, 0);
        let mut inboxes = join(&tx, 0..2).await;
        pool.wait_for_workers(2).await.unwrap();
        let net = Network::new(&SIZES, &mut init_rng(1));
        let shards = shards();
        let answer = async {
            let _silent = compute_next(&mut inboxes[0]).await; // worker 0 takes its shards and goes quiet
            for r in compute_next(&mut inboxes[1]).await {
                send(&tx, 1, r).await;
            }
            // After the deadline, worker 1 is given worker 0's shards.
            for r in compute_next(&mut inboxes[1]).await {
                send(&tx, 1, r).await;
            }
            // The silent worker was told why.
            let status = inboxes[0].recv().await.unwrap().unwrap_err();
            assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
        };
        let (got, ()) = tokio::join!(pool.run_step(StepId(0), &net, &shards, KEY), answer);
        let got = got.unwrap();
        assert!(got.gradients == expected(&net));
        assert_eq!((pool.stats().reassigned, got.workers), (2, 1));
    }

    /// A worker that sends anything but answers to the shards it holds (a
    /// result for the step before, its one answer again, a shard of a step
    /// it never held) is dropped when its first shard's deadline passes,
    /// with and without backups, exactly as a silent one: none of it resets
    /// its clock. The run goes on meanwhile (with backups) or waits for it
    /// (without). Paused time: each step takes the honest worker 50 ms, and
    /// the drop comes exactly at the deadline.
    #[tokio::test(start_paused = true)]
    async fn only_answers_reset_a_workers_clock() {
        type Play = fn(&[pb::ShardResult]) -> Vec<pb::ShardResult>;
        let deadline = Duration::from_secs(2);
        // As many results as it holds shards (one per copy, as an honest
        // worker would send), or more.
        let moves: [(&str, Play); 3] = [
            ("stale", |held| {
                let stale = |r: &pb::ShardResult| pb::ShardResult {
                    step_id: r.step_id - 1,
                    ..r.clone()
                };
                held.iter().map(stale).collect()
            }),
            ("its first answer, repeated", |held| {
                vec![held[0].clone(); 3]
            }),
            ("a shard of an older step", |held| {
                let foreign = |r: &pb::ShardResult| pb::ShardResult {
                    step_id: 0,
                    shard_id: 1,
                    ..r.clone()
                };
                held.iter().map(foreign).collect()
            }),
        ];
        for backup in [BackupPolicy::OFF, BackupPolicy::DEFAULT] {
            for (name, play) in moves {
                let (tx, rx) = mpsc::channel(64);
                let t = timeouts_with(5, deadline, backup);
                let mut pool = RemotePool::new(rx, SIZES.to_vec(), t, STEP);
                let mut inboxes = join(&tx, 0..2).await;
                pool.wait_for_workers(2).await.unwrap();
                let (mut honest, mut hostile) = (inboxes.pop().unwrap(), inboxes.pop().unwrap());
                let honest_tx = tx.clone();
                let honest = tokio::spawn(async move {
                    while let Some(Ok(msg)) = honest.recv().await {
                        if let Some(Kind::Step(step)) = msg.kind {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            for r in results_for(step, true) {
                                send(&honest_tx, 1, r).await;
                            }
                        }
                    }
                });
                let hostile_tx = tx.clone();
                let started = Instant::now();
                let hostile = tokio::spawn(async move {
                    let held = compute_next(&mut hostile).await;
                    for r in play(&held) {
                        send(&hostile_tx, 0, r).await;
                    }
                    loop {
                        if let Err(status) = hostile.recv().await.unwrap() {
                            return (status, started.elapsed());
                        }
                    }
                });
                let net = Network::new(&SIZES, &mut init_rng(1));
                let shards = shards();
                let mut step = STEP;
                let run = async {
                    while pool.live_workers() == 2 {
                        let got = pool
                            .run_step(StepId(step), &net, &shards, KEY)
                            .await
                            .unwrap();
                        assert!(got.gradients == expected(&net), "{name}");
                        step += 1;
                    }
                };
                let never = tokio::time::timeout(deadline * 30, run).await;
                assert!(never.is_ok(), "{name}, {backup:?}: never dropped");
                let (status, took) = hostile.await.unwrap();
                assert_eq!(
                    status.code(),
                    tonic::Code::DeadlineExceeded,
                    "{name}: {status:?}"
                );
                assert!(
                    took >= deadline && took < deadline + Duration::from_millis(100),
                    "{name}, {backup:?}: dropped after {took:?}"
                );
                pool.shutdown("done");
                honest.await.unwrap();
            }
        }
    }

    /// A worker that stalls (a paused process) past the backup threshold:
    /// its shards are copied to the idle worker, the step completes with the
    /// exact gradients and nobody is dropped; the next step goes to the idle
    /// worker only, and the straggler's answers, when they come, are late,
    /// not violations. Paused time: the threshold passes by advancing the clock.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_worker_is_backed_up_not_waited_for() {
        stalled_worker_case(&Network::new(&SIZES, &mut init_rng(1))).await;
    }

    /// The same with a chapter-6 net (conv, pooling, dropout) whose fully
    /// connected layers answer as factors: the backups' answers, the
    /// straggler's late ones and the first copies all decode by the net's
    /// shapes, and no honest worker is dropped.
    #[tokio::test(start_paused = true)]
    async fn a_nets_stalled_worker_is_backed_up_and_its_late_answers_are_harmless() {
        let mnist = common::layers::Shape::MNIST;
        let text = "conv2x5:relu,pool2,fc6:dropout=0.5,softmax10";
        let spec = common::layers::NetSpec::parse(text, mnist).unwrap();
        let mut rng = init_rng(1);
        let mut net = Network::network3(&spec, &mut rng);
        // network3 starts the softmax layer at zero, which zeroes every error below it.
        let last = net.weights.last_mut().unwrap();
        last.mapv_inplace(|_| rand::Rng::random_range(&mut rng, -0.5..0.5));
        let factored = common::layers::net::factor_layers(&spec, 3);
        assert_eq!(
            factored,
            vec![1, 2],
            "the case's shards of 2 and 3 samples send factors"
        );
        stalled_worker_case(&net).await;
    }

    /// Worker 0 stalls with shards 0 and 2; worker 1 answers its own, then
    /// the backup copies of 0 and 2; the next step, worker 0's answers
    /// arrive late. `net` is the dense network or a chapter-6 net.
    async fn stalled_worker_case(net: &Network) {
        let (tx, rx) = mpsc::channel(64);
        let t = timeouts_with(5, Duration::from_secs(30), BackupPolicy::DEFAULT);
        let mut pool = RemotePool::new(rx, net.sizes.clone(), t, STEP)
            .with_net(net.net.as_ref())
            .with_first_errors(FIRST_ERROR_MAX_SAMPLES, KernelSet::best());
        let mut inboxes = join(&tx, 0..2).await;
        pool.wait_for_workers(2).await.unwrap();
        let shards = shards();
        let (stalled, backups) = {
            let (slow, fast) = inboxes.split_at_mut(1);
            let answer = async {
                let stalled = compute_at(&mut slow[0], net).await; // worker 0 stalls with shards 0 and 2
                for r in compute_at(&mut fast[0], net).await {
                    send(&tx, 1, r).await;
                }
                // After the threshold, worker 1 (idle) gets copies of 0 and 2.
                let backups = compute_at(&mut fast[0], net).await;
                for r in backups.clone() {
                    send(&tx, 1, r).await;
                }
                (stalled, backups)
            };
            let (got, out) = tokio::join!(pool.run_step(StepId(STEP), net, &shards, KEY), answer);
            let got = got.unwrap();
            assert!(got.gradients == expected_at(net));
            assert_eq!((got.backups, got.reassigned, got.workers), (2, 0, 2));
            out
        };
        assert_eq!(
            backups.iter().map(|r| r.shard_id).collect::<Vec<_>>(),
            vec![0, 2]
        );
        assert_eq!((pool.stats().backups, pool.stats().backups_won), (2, 2));
        // The next step: worker 0 still owes two answers, so it gets nothing.
        let answer = async {
            for r in stalled {
                send(&tx, 0, r).await; // it wakes up: late, harmless
            }
            for r in compute_at(&mut inboxes[1], net).await {
                send(&tx, 1, r).await;
            }
        };
        let (got, ()) = tokio::join!(pool.run_step(StepId(STEP + 1), net, &shards, KEY), answer);
        assert!(got.unwrap().gradients == expected_at(net));
        let stats = pool.stats();
        assert_eq!(
            (stats.late, stats.refused, stats.rejected),
            (2, 0, 0),
            "{stats:?}"
        );
        assert_eq!(pool.live_workers(), 2);
        assert!(
            inboxes[0].try_recv().is_err(),
            "the busy worker was sent nothing"
        );
    }

    /// Waits for the next Step in `inbox` and computes its shards as a
    /// worker of `like`'s model would (a dense network's gradients whole; a
    /// net's with the fully connected layers the shard lists as factors, and
    /// dropout masks keyed by each shard's position).
    async fn compute_at(inbox: &mut Inbox, like: &Network) -> Vec<pb::ShardResult> {
        let step = match inbox.recv().await {
            Some(Ok(pb::CoordinatorMessage {
                kind: Some(Kind::Step(step)),
            })) => step,
            other => panic!("expected a Step, got {other:?}"),
        };
        let mut net = like.zeros_like();
        let shards = wire::decode_step(&step, &mut net).unwrap();
        (shards.iter().zip(&step.shards))
            .map(|((id, samples), shard)| {
                let key = DropoutKey {
                    first: shard.position,
                    epoch: step.epoch,
                    ..KEY
                };
                let factored = wire::shard_factor_layers(shard, net.net.as_ref()).unwrap();
                if net.net.is_some() {
                    let k = KernelSet::best();
                    let (g, f) = common::shard::net_answer(&net, samples, k, key, &factored);
                    return wire::encode_net_answer(step.step_id, *id, samples.len(), &g, &f);
                }
                let (g, _) = common::shard::answer(
                    &net,
                    samples,
                    common::cost::Cost::Quadratic,
                    KernelSet::best(),
                    common::shard::AnswerForm::Whole,
                    key,
                );
                wire::encode_shard_answer(step.step_id, *id, samples.len(), &g, None)
            })
            .collect()
    }

    /// Each shard's whole gradient at `net`, as [`compute_at`] computes it.
    fn expected_at(net: &Network) -> Vec<Gradients> {
        let shards = shards();
        (shards.iter().zip(shard_keys(KEY, &shards)))
            .map(|(s, key)| {
                let form = common::shard::AnswerForm::Whole;
                let cost = common::cost::Cost::Quadratic;
                common::shard::answer(net, s, cost, KernelSet::best(), form, key).0
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn no_worker_left_times_out_with_the_step() {
        let (tx, rx) = mpsc::channel(64);
        let mut pool = RemotePool::new(rx, SIZES.to_vec(), timeouts(3), 7);
        let _inboxes = join(&tx, 0..1).await;
        tx.send(WorkerEvent::Left {
            id: WorkerId(0),
            reason: "killed".into(),
        })
        .await
        .unwrap();
        let net = Network::new(&SIZES, &mut init_rng(1));
        let err = pool
            .run_step(StepId(7), &net, &shards(), KEY)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "step 7: no worker left and none joined within 3.0 s"
        );
    }

    /// A worker whose every result is wrong, rejoining after each time it
    /// is caught: the fraction of its results caught is the audit rate
    /// (Binomial(n, p): within 4.5 standard deviations with probability
    /// 1 − 7·10⁻⁶), and each step's gradients are the honest ones exactly
    /// where it was caught.
    #[tokio::test]
    async fn audits_catch_a_fraction_p_of_corrupt_results() {
        use common::kernels::KernelSet;
        let (steps, p) = (1500u64, 0.1);
        let net = Network::new(&SIZES, &mut init_rng(3));
        let (tx, rx) = mpsc::channel(64);
        let audit = Audit::with_key(p, common::cost::Cost::Quadratic, KernelSet::best(), 42);
        let mut pool = RemotePool::new(rx, SIZES.to_vec(), timeouts(60), 0).with_audit(audit);
        let liar = {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut id = 0;
                let mut inbox = join(&tx, 0..1).await.remove(0);
                let mut caught = 0u64;
                loop {
                    match inbox.recv().await {
                        Some(Ok(pb::CoordinatorMessage {
                            kind: Some(Kind::Step(step)),
                        })) => {
                            for mut r in results_for(step, true) {
                                let mut g = r.gradients.to_vec();
                                g[0] ^= 1; // the lowest mantissa bit of the first value
                                r.gradients = g.into();
                                send(&tx, id, r).await;
                            }
                        }
                        Some(Err(status)) => {
                            assert_eq!(status.code(), tonic::Code::DataLoss, "{status:?}");
                            caught += 1;
                            id += 1;
                            inbox = join(&tx, id..id + 1).await.remove(0);
                        }
                        _ => return caught,
                    }
                }
            })
        };
        pool.wait_for_workers(1).await.unwrap();
        let (shards, honest) = (shards(), expected(&net));
        for s in 0..steps {
            let out = pool.run_step(StepId(s), &net, &shards, KEY).await.unwrap();
            for (i, g) in out.gradients.iter().enumerate() {
                assert_eq!(
                    g == &honest[i],
                    audit.selects(s, i),
                    "step {s} shard {i}: honest exactly where audited"
                );
            }
        }
        pool.shutdown("done");
        drop(tx);
        let caught = liar.await.unwrap();
        let n = (steps * shards.len() as u64) as f64;
        let stats = pool.stats();
        assert_eq!(
            stats.audited, stats.audit_failures,
            "every result was wrong"
        );
        assert_eq!(stats.audit_failures, caught);
        let (mean, sd) = (n * p, (n * p * (1.0 - p)).sqrt());
        assert!(
            (caught as f64 - mean).abs() <= 4.5 * sd,
            "{caught} of {n} corrupt results caught; expected {mean} ± {sd:.1}"
        );
    }
}
