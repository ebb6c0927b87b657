//! The page's view of the run, kept by the collector and sent as JSON:
//! progress, per-epoch curves, the worker table (past workers included),
//! the event log and the recent step-time split.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::metrics::StepTiming;
use common::progress::{EpochReport, StepProgress};
use serde_json::{json, Value};

use crate::pool::observer::Ignored;
use crate::pool::{PoolEvent, WorkerId};

/// Events kept for the log.
pub const EVENTS_KEPT: usize = 200;
/// Step-time samples kept for the chart (one per publish tick).
pub const TIMING_SAMPLES: usize = 120;
/// A worker that computed a shard within this long counts as computing.
const BUSY_WINDOW: Duration = Duration::from_secs(1);

/// What the page shows about the run as a whole, fixed at its start.
#[derive(Debug, Clone, PartialEq)]
pub struct RunInfo {
    /// Layer sizes.
    pub sizes: Vec<usize>,
    /// Epochs planned.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch: usize,
    /// Logical shards per batch.
    pub shards: usize,
    /// Workers waited for before training.
    pub workers: usize,
    /// Learning rate.
    pub eta: f32,
    /// The cost function.
    pub cost: common::cost::Cost,
    /// The run's kernel set (evaluation uses it too).
    pub kernels: common::kernels::KernelSet,
    /// A chapter-6 net's `--net` text, shown instead of the sizes.
    pub net: Option<String>,
}

/// Where a worker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Connected, idle.
    Joined,
    /// Connected, with shards out or just computed.
    Computing,
    /// Its stream ended.
    Lost,
    /// Dropped by the pool.
    Evicted,
}

impl WorkerState {
    fn name(self) -> &'static str {
        match self {
            WorkerState::Joined => "joined",
            WorkerState::Computing => "computing",
            WorkerState::Lost => "lost",
            WorkerState::Evicted => "evicted",
        }
    }
}

/// One row of the worker table.
#[derive(Debug, Clone)]
struct WorkerRow {
    name: String,
    addr: Option<SocketAddr>,
    gone: Option<WorkerState>,
    outstanding: usize,
    shards: u64,
    reassigned_away: u64,
    last_compute: Option<Duration>,
    last_result: Option<Instant>,
    joined_step: u64,
}

/// One point of the per-epoch curves.
#[derive(Debug, Clone, Default)]
struct EpochPoint {
    epoch: usize,
    test_accuracy: f64,
    validation_accuracy: f64,
    training_accuracy: Option<f64>,
    test_cost: Option<f64>,
    validation_cost: Option<f64>,
    training_cost: Option<f64>,
    /// The training cost is [`super::learned::TRAINING_SAMPLE`]'s, not the whole set's.
    training_cost_sampled: bool,
    seconds: f64,
}

/// The run as the page sees it.
pub struct State {
    run: RunInfo,
    start: Instant,
    phase: String,
    epoch: usize,
    step: u64,
    done: usize,
    total: usize,
    workers_live: usize,
    epoch_start: Option<Instant>,
    epoch_steps: usize,
    last_epoch_gap: Duration,
    samples_per_sec: f64,
    eta_secs: Option<f64>,
    running: Vec<(u64, f64)>,
    epochs: Vec<EpochPoint>,
    workers: BTreeMap<WorkerId, WorkerRow>,
    events: VecDeque<Value>,
    /// Step timings since the last sample.
    pending: (StepTiming, u32),
    timing: VecDeque<Value>,
    /// Shards reassigned in the current step, logged as one line.
    reassigned: Option<(u64, WorkerId, Vec<u32>)>,
    stats: BTreeMap<&'static str, u64>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl State {
    /// A run that has not started training.
    pub fn new(run: RunInfo) -> Self {
        State {
            run,
            start: Instant::now(),
            phase: "waiting for workers".into(),
            epoch: 0,
            step: 0,
            done: 0,
            total: 0,
            workers_live: 0,
            epoch_start: None,
            epoch_steps: 0,
            last_epoch_gap: Duration::ZERO,
            samples_per_sec: 0.0,
            eta_secs: None,
            running: Vec::new(),
            epochs: Vec::new(),
            workers: BTreeMap::new(),
            events: VecDeque::new(),
            pending: (StepTiming::default(), 0),
            timing: VecDeque::new(),
            reassigned: None,
            stats: BTreeMap::new(),
        }
    }

    /// The epoch of the last step.
    pub fn current_epoch(&self) -> usize {
        self.epoch
    }

    /// Workers connected now.
    pub fn workers_live(&self) -> usize {
        self.workers_live
    }

    fn log(&mut self, kind: &str, text: String) {
        self.events.push_back(json!({
            "t": self.start.elapsed().as_secs_f64(),
            "step": self.step,
            "kind": kind,
            "text": text,
        }));
        while self.events.len() > EVENTS_KEPT {
            self.events.pop_front();
        }
    }

    fn name(&self, id: WorkerId) -> String {
        self.workers
            .get(&id)
            .map_or_else(|| format!("worker {id}"), |w| w.name.clone())
    }

    fn flush_reassigned(&mut self) {
        if let Some((step, from, shards)) = self.reassigned.take() {
            let list: Vec<String> = shards.iter().map(u32::to_string).collect();
            let text = format!(
                "step {step}: shard{} {} of {} reassigned",
                if shards.len() > 1 { "s" } else { "" },
                list.join(", "),
                self.name(from)
            );
            self.log("reassigned", text);
        }
    }

    /// Applies a pool event.
    pub fn pool(&mut self, event: &PoolEvent) {
        match event {
            PoolEvent::Joined {
                worker,
                name,
                addr,
                step,
                ..
            } => {
                self.workers_live += 1;
                self.workers.insert(
                    *worker,
                    WorkerRow {
                        name: name.clone(),
                        addr: *addr,
                        gone: None,
                        outstanding: 0,
                        shards: 0,
                        reassigned_away: 0,
                        last_compute: None,
                        last_result: None,
                        joined_step: step.0,
                    },
                );
                let at = addr.map_or(String::new(), |a| format!(" from {a}"));
                self.log("join", format!("{name}{at} joined at step {step}"));
            }
            PoolEvent::Lost { worker, reason, .. } | PoolEvent::Evicted { worker, reason, .. } => {
                let state = if matches!(event, PoolEvent::Lost { .. }) {
                    WorkerState::Lost
                } else {
                    WorkerState::Evicted
                };
                if let Some(w) = self.workers.get_mut(worker) {
                    if w.gone.is_none() {
                        self.workers_live = self.workers_live.saturating_sub(1);
                    }
                    w.gone = Some(state);
                    w.outstanding = 0;
                }
                let text = format!("{} {}: {reason}", self.name(*worker), state.name());
                self.log(state.name(), text);
            }
            PoolEvent::Sent { worker, shards, .. } => {
                if let Some(w) = self.workers.get_mut(worker) {
                    w.outstanding += shards.len();
                }
            }
            PoolEvent::Computed {
                worker,
                compute,
                at,
                ..
            } => {
                if let Some(w) = self.workers.get_mut(worker) {
                    w.outstanding = w.outstanding.saturating_sub(1);
                    w.shards += 1;
                    w.last_compute = Some(*compute);
                    w.last_result = Some(*at);
                }
            }
            PoolEvent::Reassigned {
                step, shard, from, ..
            } => {
                if let Some(w) = self.workers.get_mut(from) {
                    w.reassigned_away += 1;
                }
                *self.stats.entry("reassigned").or_default() += 1;
                match &mut self.reassigned {
                    Some((s, f, shards)) if *s == step.0 && *f == *from => shards.push(shard.0),
                    _ => {
                        self.flush_reassigned();
                        self.reassigned = Some((step.0, *from, vec![shard.0]));
                    }
                }
            }
            PoolEvent::Ignored { worker, why } => {
                let (key, text) = match why {
                    Ignored::Late => ("late", None),
                    Ignored::Duplicate => ("duplicate", None),
                    Ignored::Rejected => ("rejected", Some("sent an invalid result; refused")),
                    Ignored::Refused => ("refused", Some("broke the protocol; refused")),
                    Ignored::AuditFailed => ("audit_failed", Some("failed an audit; refused")),
                };
                *self.stats.entry(key).or_default() += 1;
                if let Some(text) = text {
                    let text = format!("{} {text}", self.name(*worker));
                    self.log("refused", text);
                }
            }
        }
    }

    /// A step was applied.
    pub fn step(&mut self, p: &StepProgress, at: Instant) {
        self.flush_reassigned();
        if p.done == 1 || self.epoch_start.is_none() || p.epoch != self.epoch {
            // The epoch started when its first step did.
            self.epoch_start = Some(at.checked_sub(p.timing.total).unwrap_or(at));
            self.epoch_steps = 0;
            self.running.clear();
            self.phase = "training".into();
        }
        self.epoch = p.epoch;
        self.done = p.done;
        self.total = p.total;
        self.step += 1;
        self.epoch_steps += 1;
        let t = &mut self.pending.0;
        t.total += p.timing.total;
        t.compute += p.timing.compute;
        t.codec += p.timing.codec;
        t.reduce += p.timing.reduce;
        self.pending.1 += 1;
        let elapsed = self.epoch_start.map_or(Duration::ZERO, |s| at - s);
        let per_step = elapsed.as_secs_f64() / self.epoch_steps.max(1) as f64;
        self.samples_per_sec = self.run.batch as f64 / per_step.max(1e-9);
        let steps_left = (p.total - p.done) + self.run.epochs.saturating_sub(p.epoch + 1) * p.total;
        let evals_left = self.run.epochs.saturating_sub(p.epoch) as f64;
        self.eta_secs =
            Some(steps_left as f64 * per_step + evals_left * self.last_epoch_gap.as_secs_f64());
    }

    /// Sets the step counter (a resumed run starts past 0).
    pub fn at_step(&mut self, step: u64) {
        self.step = step;
    }

    /// The running training cost at `step`.
    pub fn running_cost(&mut self, step: u64, cost: f64) {
        self.running.push((step, cost));
    }

    /// An epoch was evaluated.
    pub fn epoch(&mut self, r: &EpochReport) {
        self.flush_reassigned();
        self.last_epoch_gap = self
            .epoch_start
            .map_or(Duration::ZERO, |s| s.elapsed())
            .saturating_sub(r.train_time);
        self.epochs.push(EpochPoint {
            epoch: r.epoch,
            test_accuracy: r.test_accuracy(),
            validation_accuracy: r.validation_accuracy(),
            training_accuracy: r.training_accuracy(),
            validation_cost: r.validation_cost,
            training_cost: r.training_cost,
            seconds: r.train_time.as_secs_f64(),
            ..EpochPoint::default()
        });
        self.log(
            "epoch",
            format!(
                "epoch {}: test {:.2}%, validation {:.2}%",
                r.epoch,
                r.test_accuracy(),
                r.validation_accuracy()
            ),
        );
    }

    /// The costs an epoch's [`super::learned::Learned`] measured fill the gaps `--monitor` left.
    pub fn costs(&mut self, l: &super::learned::Learned) {
        if let Some(p) = self.epochs.iter_mut().find(|p| p.epoch == l.epoch) {
            p.test_cost = Some(l.test_cost);
            p.validation_cost.get_or_insert(l.validation_cost);
            if p.training_cost.is_none() {
                p.training_cost = Some(l.training_cost_sample);
                p.training_cost_sampled = true;
            }
        }
    }

    /// A checkpoint was written.
    pub fn checkpoint(&mut self, step: u64) {
        self.log("checkpoint", format!("checkpoint written at step {step}"));
    }

    /// The run is over.
    pub fn end(&mut self, outcome: &str) {
        self.flush_reassigned();
        // Nobody computes any more: the workers still connected were told to shut down.
        for w in self.workers.values_mut() {
            w.outstanding = 0;
            w.last_result = None;
        }
        self.phase = outcome.to_string();
        self.eta_secs = None;
        self.log("end", format!("run {outcome}"));
    }

    /// Turns the step timings since the last call into one chart sample.
    pub fn sample_timing(&mut self) {
        let (t, n) = std::mem::take(&mut self.pending);
        if n == 0 {
            return;
        }
        let mean = |d: Duration| ms(d) / f64::from(n);
        self.timing.push_back(json!([
            self.step,
            mean(t.compute),
            mean(t.codec),
            mean(t.transport()),
            mean(t.reduce)
        ]));
        while self.timing.len() > TIMING_SAMPLES {
            self.timing.pop_front();
        }
    }

    /// The JSON the page draws from.
    pub fn to_json(&self) -> Value {
        let now = Instant::now();
        let workers: Vec<Value> = self
            .workers
            .iter()
            .map(|(id, w)| {
                let busy = w.outstanding > 0
                    || w.last_result
                        .is_some_and(|t| now.duration_since(t) < BUSY_WINDOW);
                let state = w.gone.unwrap_or(if busy {
                    WorkerState::Computing
                } else {
                    WorkerState::Joined
                });
                json!({
                    "id": id.0,
                    "name": w.name,
                    "addr": w.addr.map(|a| a.to_string()),
                    "state": state.name(),
                    "shards": w.shards,
                    "reassigned_away": w.reassigned_away,
                    "last_compute_ms": w.last_compute.map(ms),
                    "joined_step": w.joined_step,
                })
            })
            .collect();
        let epochs: Vec<Value> = self
            .epochs
            .iter()
            .map(|p| {
                json!({
                    "epoch": p.epoch,
                    "test_accuracy": p.test_accuracy,
                    "validation_accuracy": p.validation_accuracy,
                    "training_accuracy": p.training_accuracy,
                    "test_cost": p.test_cost,
                    "validation_cost": p.validation_cost,
                    "training_cost": p.training_cost,
                    "training_cost_sampled": p.training_cost_sampled,
                    "seconds": p.seconds,
                })
            })
            .collect();
        let r = &self.run;
        json!({
            "run": {
                "sizes": r.sizes, "epochs": r.epochs, "batch": r.batch, "shards": r.shards,
                "workers": r.workers, "eta": r.eta, "cost": r.cost.to_string(),
                "kernels": r.kernels.name(), "net": r.net,
            },
            "phase": self.phase,
            "elapsed": self.start.elapsed().as_secs_f64(),
            "epoch": self.epoch,
            "step": self.step,
            "done": self.done,
            "total": self.total,
            "samples_per_sec": self.samples_per_sec,
            "eta_secs": self.eta_secs,
            "workers_live": self.workers_live,
            "running": self.running,
            "epochs": epochs,
            "workers": workers,
            "events": self.events,
            "timing": self.timing,
            "stats": self.stats,
        })
    }
}
