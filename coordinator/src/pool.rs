//! The worker pool: the seam between the training loop and the workers.
//!
//! [`WorkerPool::run_step`] takes a step's shards and returns their gradients
//! in shard order, however the work was spread and whatever order the results
//! came in. [`RemotePool`] is the registry of connected workers: it hands out
//! shards round-robin, validates every result (through `wire`), keeps the
//! first valid result per shard, ignores late and duplicate ones, and gives
//! the shards of a worker that left or misbehaved to the live workers within
//! the same step.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use common::dataset::Samples;
use common::metrics::StepTiming;
use common::pb::{self, coordinator_message};
use common::schedule::{ShardId, StepId};
use common::{wire, Gradients, Network};
use tokio::sync::mpsc;
use tonic::Status;
use tracing::{info, warn};

use crate::service::{Outbox, WorkerEvent, WorkerId};

/// Why a step could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No worker was left and none joined in time.
    #[error("step {step}: no worker left and none joined within {waited:?}")]
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

/// Computes the shards of steps somewhere.
#[allow(async_fn_in_trait)] // used with concrete types only
pub trait WorkerPool {
    /// Computes the summed gradients of every shard of `step` at `network`'s
    /// weights; returns them in shard order (`result[i]` is `shards[i]`'s).
    ///
    /// # Errors
    /// [`PoolError`] if the step cannot be completed.
    async fn run_step(
        &mut self,
        step: StepId,
        network: &Network,
        shards: &[Samples],
    ) -> Result<Vec<Gradients>, PoolError>;

    /// The compute and codec parts of the last step (its total and reduce
    /// parts are the caller's to measure).
    fn last_step_timing(&self) -> StepTiming {
        StepTiming::default()
    }

    /// Workers connected now.
    fn live_workers(&self) -> usize {
        0
    }

    /// Shards recomputed so far because a result was lost or rejected.
    fn recomputed(&self) -> u64 {
        0
    }
}

/// Counters a run reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Results for an earlier step, ignored.
    pub late: u64,
    /// Results for a shard already done, ignored.
    pub duplicate: u64,
    /// Results that failed validation, never applied.
    pub rejected: u64,
    /// Shards given to another worker after theirs left or failed.
    pub reassigned: u64,
}

struct Handle {
    name: String,
    outbox: Outbox,
}

/// The registry of connected workers, fed by the gRPC service's events.
pub struct RemotePool {
    events: mpsc::Receiver<WorkerEvent>,
    workers: BTreeMap<WorkerId, Handle>,
    sizes: Vec<usize>,
    timeouts: Timeouts,
    stats: PoolStats,
    last_timing: StepTiming,
}

/// How long the pool waits, and for what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// When no worker is left mid-step: how long to wait for one to join.
    pub wait_for_worker: Duration,
    /// How long a worker may take for a shard before it is dropped and its
    /// shards are given to others.
    pub shard: Duration,
}

/// The state of one step in flight.
struct Step<'a> {
    id: StepId,
    weights: bytes::Bytes,
    shards: &'a [Samples],
    results: Vec<Option<Gradients>>,
    owner: Vec<Option<WorkerId>>,
    assigned_at: Vec<Instant>,
    /// Time the coordinator spent encoding and decoding this step's messages.
    codec: Duration,
    /// Per worker, its reported (compute, codec) time on accepted results.
    work: BTreeMap<WorkerId, (Duration, Duration)>,
}

impl Step<'_> {
    fn done(&self) -> bool {
        self.results.iter().all(Option::is_some)
    }

    /// When the longest-waiting assigned, unfinished shard was handed out.
    fn oldest_pending(&self) -> Option<Instant> {
        (0..self.shards.len())
            .filter(|&i| self.owner[i].is_some() && self.results[i].is_none())
            .map(|i| self.assigned_at[i])
            .min()
    }
}

impl RemotePool {
    /// A pool for a model of `sizes`.
    pub fn new(events: mpsc::Receiver<WorkerEvent>, sizes: Vec<usize>, timeouts: Timeouts) -> Self {
        Self {
            events,
            workers: BTreeMap::new(),
            sizes,
            timeouts,
            stats: PoolStats::default(),
            last_timing: StepTiming::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> &PoolStats {
        &self.stats
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
            self.handle_membership(event);
        }
        Ok(())
    }

    /// Tells every worker to shut down and forgets them; their streams end with OK.
    pub fn shutdown(&mut self, reason: &str) {
        for (id, handle) in std::mem::take(&mut self.workers) {
            let msg = pb::CoordinatorMessage {
                kind: Some(coordinator_message::Kind::Shutdown(pb::Shutdown {
                    reason: reason.to_string(),
                })),
            };
            if handle.outbox.try_send(Ok(msg)).is_err() {
                warn!(worker = %id, name = %handle.name, "could not send shutdown");
            }
        }
    }

    /// Applies a join or leave; returns results to the caller.
    fn handle_membership(&mut self, event: WorkerEvent) -> Option<(WorkerId, pb::ShardResult)> {
        match event {
            WorkerEvent::Joined { id, name, outbox } => {
                info!(worker = %id, %name, live = self.workers.len() + 1, "worker joined");
                self.workers.insert(id, Handle { name, outbox });
                None
            }
            WorkerEvent::Left { id, reason } => {
                if let Some(h) = self.workers.remove(&id) {
                    warn!(worker = %id, name = %h.name, %reason, live = self.workers.len(), "worker lost");
                }
                None
            }
            WorkerEvent::Result { id, result } => Some((id, result)),
        }
    }

    /// Drops a worker, ending its stream with `status`.
    fn evict(&mut self, id: WorkerId, status: Status) {
        if let Some(h) = self.workers.remove(&id) {
            warn!(worker = %id, name = %h.name, error = %status.message(), "worker evicted");
            let _ = h.outbox.try_send(Err(status));
        }
    }

    /// Sends every unowned, unfinished shard of `step` to a live worker,
    /// round-robin in worker-id order, one `Step` message per worker.
    fn assign(&mut self, step: &mut Step<'_>) {
        loop {
            let open: Vec<usize> = (0..step.shards.len())
                .filter(|&i| step.owner[i].is_none() && step.results[i].is_none())
                .collect();
            if open.is_empty() || self.workers.is_empty() {
                return;
            }
            let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
            let mut batches: BTreeMap<WorkerId, Vec<usize>> = BTreeMap::new();
            for (k, &shard) in open.iter().enumerate() {
                batches.entry(ids[k % ids.len()]).or_default().push(shard);
            }
            for (id, shards) in batches {
                let encode_start = Instant::now();
                let msg = pb::Step {
                    step_id: step.id.0,
                    weights: step.weights.clone(), // one buffer shared by all workers
                    shards: shards
                        .iter()
                        .map(|&i| wire::encode_shard(ShardId(i as u32), &step.shards[i]))
                        .collect(),
                };
                let msg = pb::CoordinatorMessage {
                    kind: Some(coordinator_message::Kind::Step(msg)),
                };
                step.codec += encode_start.elapsed();
                match self.workers[&id].outbox.try_send(Ok(msg)) {
                    Ok(()) => {
                        let now = Instant::now();
                        for &i in &shards {
                            step.owner[i] = Some(id);
                            step.assigned_at[i] = now;
                        }
                    }
                    Err(_) => {
                        // Closed, or so far behind that its queue is full: treat it as gone.
                        self.evict(
                            id,
                            Status::resource_exhausted("worker is not reading its stream"),
                        );
                        self.orphan(step, id);
                    }
                }
            }
        }
    }

    /// Forgets `id`'s claim on unfinished shards so that `assign` hands them out again.
    fn orphan(&mut self, step: &mut Step<'_>, id: WorkerId) {
        for i in 0..step.shards.len() {
            if step.owner[i] == Some(id) && step.results[i].is_none() {
                step.owner[i] = None;
                self.stats.reassigned += 1;
                info!(step = step.id.0, shard = i, worker = %id, "shard reassigned");
            }
        }
    }

    /// Drops every worker holding a shard past its deadline; their shards go to others.
    fn expire(&mut self, step: &mut Step<'_>) {
        let now = Instant::now();
        let late: Vec<(usize, WorkerId)> = (0..step.shards.len())
            .filter(|&i| {
                step.results[i].is_none() && now >= step.assigned_at[i] + self.timeouts.shard
            })
            .filter_map(|i| step.owner[i].map(|w| (i, w)))
            .collect();
        for (shard, id) in late {
            if self.workers.contains_key(&id) {
                let msg = format!(
                    "no result for step {} shard {shard} within {:?}",
                    step.id, self.timeouts.shard
                );
                self.evict(id, Status::deadline_exceeded(msg));
            }
            self.orphan(step, id);
        }
    }

    fn accept(&mut self, step: &mut Step<'_>, id: WorkerId, result: pb::ShardResult) {
        if result.step_id != step.id.0 {
            self.stats.late += 1;
            return;
        }
        let i = result.shard_id as usize;
        if i >= step.shards.len() || !self.workers.contains_key(&id) {
            // A shard id that does not exist, or a worker already evicted.
            self.stats.rejected += 1;
            return;
        }
        if step.results[i].is_some() {
            self.stats.duplicate += 1;
            return;
        }
        let decode_start = Instant::now();
        let decoded = wire::decode_shard_result(&result, &self.sizes, step.shards[i].len());
        step.codec += decode_start.elapsed();
        match decoded {
            Ok(g) => {
                step.results[i] = Some(g);
                let work = step.work.entry(id).or_default();
                work.0 += Duration::from_nanos(result.compute_nanos);
                work.1 += Duration::from_nanos(result.codec_nanos);
            }
            Err(e) => {
                self.stats.rejected += 1;
                self.evict(id, e.into());
                self.orphan(step, id);
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
    ) -> Result<Vec<Gradients>, PoolError> {
        let encode_start = Instant::now();
        let mut step = Step {
            id,
            weights: wire::encode_network(network),
            shards,
            results: vec![None; shards.len()],
            owner: vec![None; shards.len()],
            assigned_at: vec![Instant::now(); shards.len()],
            codec: Duration::ZERO,
            work: BTreeMap::new(),
        };
        step.codec = encode_start.elapsed();
        let (started, reassigned_before) = (Instant::now(), self.stats.reassigned);
        self.assign(&mut step);
        while !step.done() {
            let event = if self.workers.is_empty() {
                let wait = self.timeouts.wait_for_worker;
                warn!(
                    step = id.0,
                    ?wait,
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
                let deadline = step
                    .oldest_pending()
                    .map_or_else(Instant::now, |t| t + self.timeouts.shard);
                match tokio::time::timeout_at(deadline, self.events.recv()).await {
                    Ok(event) => event,
                    Err(_) => {
                        self.expire(&mut step);
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
                self.orphan(&mut step, worker);
            }
            self.assign(&mut step);
        }
        if self.stats.reassigned > reassigned_before {
            info!(step = id.0, took = ?started.elapsed(), "step completed despite lost shards");
        }
        // The critical path: the worker that was busiest with this step.
        let (compute, worker_codec) = step
            .work
            .values()
            .copied()
            .max_by_key(|&(compute, codec)| compute + codec)
            .unwrap_or_default();
        self.last_timing = StepTiming {
            total: Duration::ZERO,
            compute,
            codec: step.codec + worker_codec,
            reduce: Duration::ZERO,
        };
        Ok(step
            .results
            .into_iter()
            .map(|g| g.expect("step is done"))
            .collect())
    }

    fn last_step_timing(&self) -> StepTiming {
        self.last_timing
    }

    fn live_workers(&self) -> usize {
        self.workers.len()
    }

    fn recomputed(&self) -> u64 {
        self.stats.reassigned
    }
}

#[cfg(test)]
mod tests {
    //! The pool with fake workers and no sockets: each fake worker receives
    //! its Steps on the outbox the service would have given it and answers
    //! through the event channel, in whatever order and shape a case says.
    use super::*;
    use common::pb::coordinator_message::Kind;
    use common::schedule::init_rng;
    use common::trainer::{shard_gradients, step_shards};
    use rand::seq::SliceRandom;
    use tokio::sync::mpsc::Receiver;

    const SIZES: [usize; 3] = [784, 6, 10];

    fn timeouts(secs: u64) -> Timeouts {
        Timeouts {
            wait_for_worker: Duration::from_secs(secs),
            shard: Duration::from_secs(60),
        }
    }

    fn shards() -> Vec<Samples> {
        use rand::Rng;
        let mut rng = init_rng(9);
        let training = Samples {
            pixels: (0..10 * 784).map(|_| rng.random()).collect(),
            labels: (0..10).map(|_| rng.random_range(0..10)).collect(),
        };
        step_shards(&training, &(0..10).collect::<Vec<_>>(), 4)
    }

    type Inbox = Receiver<Result<pb::CoordinatorMessage, Status>>;

    async fn join(events: &mpsc::Sender<WorkerEvent>, n: u32) -> Vec<Inbox> {
        let mut inboxes = Vec::new();
        for id in 0..n {
            let (outbox, inbox) = mpsc::channel(16);
            events
                .send(WorkerEvent::Joined {
                    id: WorkerId(id),
                    name: format!("fake-{id}"),
                    outbox,
                })
                .await
                .unwrap();
            inboxes.push(inbox);
        }
        inboxes
    }

    /// Computes a Step's shards as a worker would.
    fn results_for(step: pb::Step) -> Vec<pb::ShardResult> {
        let mut net = Network::zeros(&SIZES);
        wire::decode_network_into(&step.weights, &mut net).unwrap();
        step.shards
            .iter()
            .map(|s| {
                let (id, samples) = wire::decode_shard(s).unwrap();
                wire::encode_shard_result(
                    step.step_id,
                    id,
                    samples.len(),
                    &shard_gradients(&net, &samples),
                )
            })
            .collect()
    }

    /// The results of the Step waiting in `inbox`, if any.
    fn compute(inbox: &mut Inbox) -> Vec<pb::ShardResult> {
        match inbox.try_recv() {
            Ok(Ok(pb::CoordinatorMessage {
                kind: Some(Kind::Step(step)),
            })) => results_for(step),
            _ => Vec::new(),
        }
    }

    /// Waits for the next message in `inbox`, which must be a Step, and computes it.
    async fn compute_next(inbox: &mut Inbox) -> Vec<pb::ShardResult> {
        match inbox.recv().await {
            Some(Ok(pb::CoordinatorMessage {
                kind: Some(Kind::Step(step)),
            })) => results_for(step),
            other => panic!("expected a Step (a reassignment), got {other:?}"),
        }
    }

    fn expected(net: &Network) -> Vec<Gradients> {
        shards().iter().map(|s| shard_gradients(net, s)).collect()
    }

    #[tokio::test]
    async fn results_in_any_arrival_order_come_back_in_shard_order() {
        let net = Network::new(&SIZES, &mut init_rng(1));
        for seed in 0..8u64 {
            let (tx, rx) = mpsc::channel(64);
            let mut pool = RemotePool::new(rx, SIZES.to_vec(), timeouts(5));
            let mut inboxes = join(&tx, 1 + (seed % 4) as u32).await;
            pool.wait_for_workers(inboxes.len()).await.unwrap();
            let shards = shards();
            let answer = async {
                tokio::task::yield_now().await; // let run_step send the Steps
                let mut results: Vec<(WorkerId, pb::ShardResult)> = Vec::new();
                for (w, inbox) in inboxes.iter_mut().enumerate() {
                    results.extend(compute(inbox).into_iter().map(|r| (WorkerId(w as u32), r)));
                }
                results.shuffle(&mut init_rng(seed));
                for (id, result) in results {
                    tx.send(WorkerEvent::Result { id, result }).await.unwrap();
                }
            };
            let (got, ()) = tokio::join!(pool.run_step(StepId(0), &net, &shards), answer);
            assert!(
                got.unwrap() == expected(&net),
                "case {seed}: results not in shard order"
            );
        }
    }

    /// Fault cases: each sends the honest results plus some interference, and
    /// the step must still return exactly the honest gradients.
    #[tokio::test]
    async fn late_duplicate_and_bad_results_are_never_applied() {
        let net = Network::new(&SIZES, &mut init_rng(1));
        let cases = [
            "late",
            "duplicate",
            "nan",
            "short",
            "wrong count",
            "worker left",
        ];
        for (case_index, case) in cases.iter().enumerate() {
            let (tx, rx) = mpsc::channel(64);
            let mut pool = RemotePool::new(rx, SIZES.to_vec(), timeouts(5));
            let mut inboxes = join(&tx, 2).await;
            pool.wait_for_workers(2).await.unwrap();
            let shards = shards();
            let answer = async {
                tokio::task::yield_now().await;
                let honest0 = compute(&mut inboxes[0]);
                let honest1 = compute(&mut inboxes[1]);
                let mut bad = honest0[0].clone();
                match *case {
                    "late" => bad.step_id = 6,
                    "duplicate" => {}
                    "nan" => bad.gradients = vec![0xff; bad.gradients.len()].into(), // 0xffffffff is NaN
                    "short" => bad.gradients = bad.gradients.slice(4..),
                    "wrong count" => bad.sample_count += 1,
                    _ => {}
                }
                if *case == "worker left" {
                    tx.send(WorkerEvent::Left {
                        id: WorkerId(0),
                        reason: "killed".into(),
                    })
                    .await
                    .unwrap();
                } else if *case == "late" || *case == "duplicate" {
                    // Interference first for "late", after the honest result for "duplicate".
                    let first = if *case == "late" {
                        bad.clone()
                    } else {
                        honest0[0].clone()
                    };
                    let second = if *case == "late" {
                        honest0[0].clone()
                    } else {
                        {
                            let mut d = bad.clone();
                            d.gradients = vec![0; d.gradients.len()].into();
                            d
                        }
                    };
                    tx.send(WorkerEvent::Result {
                        id: WorkerId(0),
                        result: first,
                    })
                    .await
                    .unwrap();
                    tx.send(WorkerEvent::Result {
                        id: WorkerId(0),
                        result: second,
                    })
                    .await
                    .unwrap();
                    for r in honest0.iter().skip(1) {
                        tx.send(WorkerEvent::Result {
                            id: WorkerId(0),
                            result: r.clone(),
                        })
                        .await
                        .unwrap();
                    }
                } else {
                    // A bad result evicts worker 0; its shards must go to worker 1.
                    tx.send(WorkerEvent::Result {
                        id: WorkerId(0),
                        result: bad,
                    })
                    .await
                    .unwrap();
                }
                for r in honest1 {
                    tx.send(WorkerEvent::Result {
                        id: WorkerId(1),
                        result: r,
                    })
                    .await
                    .unwrap();
                }
                if !matches!(*case, "late" | "duplicate") {
                    // Worker 1 gets worker 0's shards in a second Step; wait for it on its inbox.
                    for r in compute_next(&mut inboxes[1]).await {
                        tx.send(WorkerEvent::Result {
                            id: WorkerId(1),
                            result: r,
                        })
                        .await
                        .unwrap();
                    }
                }
            };
            let (got, ()) = tokio::join!(pool.run_step(StepId(0), &net, &shards), answer);
            assert!(
                got.unwrap() == expected(&net),
                "case {case_index} ({case}): wrong gradients"
            );
            let s = pool.stats();
            match *case {
                "late" => assert_eq!(s.late, 1, "case {case}"),
                "duplicate" => assert_eq!(s.duplicate, 1, "case {case}"),
                "worker left" => {
                    assert_eq!((s.reassigned, pool.live_workers()), (2, 1), "case {case}")
                }
                _ => {
                    assert_eq!(
                        (s.rejected, s.reassigned, pool.live_workers()),
                        (1, 2, 1),
                        "case {case}"
                    );
                    // The evicted worker was told why, with INVALID_ARGUMENT.
                    let status = inboxes[0].try_recv().unwrap().unwrap_err();
                    assert_eq!(
                        status.code(),
                        tonic::Code::InvalidArgument,
                        "case {case}: {status:?}"
                    );
                }
            }
        }
    }

    /// A worker that never answers loses its shards when their deadline passes.
    /// Paused time: the deadline is reached by advancing the clock, not by waiting.
    #[tokio::test(start_paused = true)]
    async fn silent_worker_is_dropped_at_the_shard_deadline() {
        let (tx, rx) = mpsc::channel(64);
        let mut pool = RemotePool::new(
            rx,
            SIZES.to_vec(),
            Timeouts {
                wait_for_worker: Duration::from_secs(5),
                shard: Duration::from_secs(2),
            },
        );
        let mut inboxes = join(&tx, 2).await;
        pool.wait_for_workers(2).await.unwrap();
        let net = Network::new(&SIZES, &mut init_rng(1));
        let shards = shards();
        let answer = async {
            tokio::task::yield_now().await;
            let _silent = compute(&mut inboxes[0]); // worker 0 takes its shards and goes quiet
            for r in compute(&mut inboxes[1]) {
                tx.send(WorkerEvent::Result {
                    id: WorkerId(1),
                    result: r,
                })
                .await
                .unwrap();
            }
            // After the deadline, worker 1 is given worker 0's shards.
            for r in compute_next(&mut inboxes[1]).await {
                tx.send(WorkerEvent::Result {
                    id: WorkerId(1),
                    result: r,
                })
                .await
                .unwrap();
            }
            // The silent worker was told why.
            let status = inboxes[0].recv().await.unwrap().unwrap_err();
            assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
        };
        let (got, ()) = tokio::join!(pool.run_step(StepId(0), &net, &shards), answer);
        assert!(got.unwrap() == expected(&net));
        assert_eq!((pool.stats().reassigned, pool.live_workers()), (2, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn no_worker_left_times_out_with_the_step() {
        let (tx, rx) = mpsc::channel(64);
        let mut pool = RemotePool::new(rx, SIZES.to_vec(), timeouts(3));
        let _inboxes = join(&tx, 1).await;
        tx.send(WorkerEvent::Left {
            id: WorkerId(0),
            reason: "killed".into(),
        })
        .await
        .unwrap();
        let net = Network::new(&SIZES, &mut init_rng(1));
        let err = pool.run_step(StepId(7), &net, &shards()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "step 7: no worker left and none joined within 3s"
        );
    }
}
