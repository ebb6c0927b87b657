//! One step in flight, as a pure state machine: which worker owns each
//! shard, which shards are done, which are overdue, and whether a result may
//! be applied. No tokio, no protobuf, no gRPC status: time comes in as an
//! argument and decisions go out as values, so every rule is tested with a
//! table of cases (see the tests below) and the pool (`mod.rs`) only turns
//! decisions into messages.
//!
//! **The ownership rule** lives in [`StepState::judge`]: a result is applied
//! only if it is for the step in flight, for one of its shards, from the
//! worker that shard is assigned to now, and the shard is not done yet. A
//! worker that left or was evicted owns nothing ([`StepState::release`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::WorkerId;

/// What to do with a result, by the ownership rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Valid so far: decode it and, if it decodes, complete this shard.
    Accept(usize),
    /// For a step that was issued and has finished: harmless, ignored.
    Late,
    /// From the shard's owner, for a shard already done: harmless, ignored.
    Duplicate,
    /// From a worker that is no longer in the pool (its stream's last words):
    /// it owns nothing, so the result is ignored.
    Departed,
    /// A protocol violation: ignored, and the sender is dropped.
    Violation(Violation),
}

/// A result that no honest worker could send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// A step id the coordinator has not issued yet.
    #[error("step {step} has not been issued (the step in flight is {current})")]
    UnissuedStep {
        /// The id in the result.
        step: u64,
        /// The step in flight (or the next one, between steps).
        current: u64,
    },
    /// A shard id beyond the step's shards.
    #[error("step {step} has {count} shards; shard {shard} does not exist")]
    UnknownShard {
        /// The step.
        step: u64,
        /// The id in the result.
        shard: u32,
        /// Shards in the step.
        count: usize,
    },
    /// A shard assigned to another worker, or to no one.
    #[error("step {step} shard {shard} is not assigned to this worker")]
    NotOwner {
        /// The step.
        step: u64,
        /// The shard.
        shard: u32,
    },
}

/// Judges a result's step id against `current`, the step in flight (or, when
/// none is, the next to be issued): earlier steps are late, later ones were
/// never issued. `None` means it is for `current`.
pub fn judge_step_id(step: u64, current: u64) -> Option<Verdict> {
    match step.cmp(&current) {
        std::cmp::Ordering::Less => Some(Verdict::Late),
        std::cmp::Ordering::Equal => None,
        std::cmp::Ordering::Greater => Some(Verdict::Violation(Violation::UnissuedStep {
            step,
            current,
        })),
    }
}

/// The shards of one step and who holds them.
#[derive(Debug, Clone)]
pub struct StepState {
    id: u64,
    /// Per shard, the worker it is assigned to now (`None`: not assigned, or
    /// its owner left before answering).
    owner: Vec<Option<WorkerId>>,
    /// Per shard, whether its result has been kept.
    done: Vec<bool>,
    /// Per shard, when it was last handed out.
    assigned_at: Vec<Option<Instant>>,
}

impl StepState {
    /// Step `id` with `shards` shards, none assigned.
    pub fn new(id: u64, shards: usize) -> Self {
        Self {
            id,
            owner: vec![None; shards],
            done: vec![false; shards],
            assigned_at: vec![None; shards],
        }
    }

    /// The step id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether every shard is done.
    pub fn is_done(&self) -> bool {
        self.done.iter().all(|&d| d)
    }

    /// The current owner of `shard`.
    pub fn owner(&self, shard: usize) -> Option<WorkerId> {
        self.owner[shard]
    }

    /// Shards that are neither done nor assigned.
    pub fn open(&self) -> Vec<usize> {
        (0..self.done.len())
            .filter(|&i| !self.done[i] && self.owner[i].is_none())
            .collect()
    }

    /// Spreads the open shards over `workers` round-robin, in the order given
    /// (the pool gives worker-id order): worker → its shards. Changes nothing;
    /// [`StepState::assign`] records what was actually sent.
    pub fn plan(&self, workers: &[WorkerId]) -> BTreeMap<WorkerId, Vec<usize>> {
        let mut batches: BTreeMap<WorkerId, Vec<usize>> = BTreeMap::new();
        if workers.is_empty() {
            return batches;
        }
        for (k, shard) in self.open().into_iter().enumerate() {
            batches
                .entry(workers[k % workers.len()])
                .or_default()
                .push(shard);
        }
        batches
    }

    /// Records that `shards` were sent to `worker` at `now`.
    pub fn assign(&mut self, worker: WorkerId, shards: &[usize], now: Instant) {
        for &i in shards {
            debug_assert!(!self.done[i], "a done shard is never handed out");
            self.owner[i] = Some(worker);
            self.assigned_at[i] = Some(now);
        }
    }

    /// The ownership rule: what to do with a result for (`step`, `shard`)
    /// from `from`, where `live` says whether `from` is still in the pool.
    pub fn judge(&self, from: WorkerId, live: bool, step: u64, shard: u32) -> Verdict {
        if let Some(verdict) = judge_step_id(step, self.id) {
            return verdict;
        }
        let i = shard as usize;
        if i >= self.done.len() {
            return Verdict::Violation(Violation::UnknownShard {
                step,
                shard,
                count: self.done.len(),
            });
        }
        if !live {
            return Verdict::Departed;
        }
        if self.owner[i] != Some(from) {
            return Verdict::Violation(Violation::NotOwner { step, shard });
        }
        if self.done[i] {
            return Verdict::Duplicate;
        }
        Verdict::Accept(i)
    }

    /// Marks `shard` done (its result decoded and kept).
    pub fn complete(&mut self, shard: usize) {
        self.done[shard] = true;
    }

    /// `worker` left or was evicted: it gives up its unfinished shards, which
    /// become open again. Returns them.
    pub fn release(&mut self, worker: WorkerId) -> Vec<usize> {
        let mut freed = Vec::new();
        for i in 0..self.owner.len() {
            if self.owner[i] == Some(worker) && !self.done[i] {
                self.owner[i] = None;
                self.assigned_at[i] = None;
                freed.push(i);
            }
        }
        freed
    }

    /// When the longest-waiting unfinished shard passes `limit`, if any is assigned.
    pub fn deadline(&self, limit: Duration) -> Option<Instant> {
        (0..self.done.len())
            .filter(|&i| !self.done[i])
            .filter_map(|i| self.assigned_at[i])
            .min()
            .map(|t| t + limit)
    }

    /// Workers holding an unfinished shard handed out `limit` or more before
    /// `now`, in worker-id order, each once.
    pub fn overdue(&self, now: Instant, limit: Duration) -> Vec<WorkerId> {
        let mut late: Vec<WorkerId> = (0..self.done.len())
            .filter(|&i| !self.done[i])
            .filter(|&i| self.assigned_at[i].is_some_and(|t| now >= t + limit))
            .filter_map(|i| self.owner[i])
            .collect();
        late.sort_unstable();
        late.dedup();
        late
    }
}

#[cfg(test)]
mod tests {
    //! Table-driven, in the style of raft-rs: each case is a history of
    //! events applied to a fresh step, then one question and its answer.
    use super::*;

    const A: WorkerId = WorkerId(0);
    const B: WorkerId = WorkerId(1);
    const C: WorkerId = WorkerId(2);

    /// Step 5 with 4 shards: A owns 0 and 2, B owns 1 and 3; shard 0 is done.
    fn step() -> (StepState, Instant) {
        let t0 = Instant::now();
        let mut s = StepState::new(5, 4);
        let plan = s.plan(&[A, B]);
        assert_eq!(plan[&A], vec![0, 2]);
        assert_eq!(plan[&B], vec![1, 3]);
        for (w, shards) in plan {
            s.assign(w, &shards, t0);
        }
        s.complete(0);
        (s, t0)
    }

    #[test]
    fn judge_applies_the_ownership_rule() {
        use Verdict::*;
        let cases: &[(&str, WorkerId, bool, u64, u32, Verdict)] = &[
            ("owner, open shard", A, true, 5, 2, Accept(2)),
            ("owner, other open shard", B, true, 5, 3, Accept(3)),
            ("owner, done shard", A, true, 5, 0, Duplicate),
            (
                "another worker's open shard",
                B,
                true,
                5,
                2,
                Violation(super::Violation::NotOwner { step: 5, shard: 2 }),
            ),
            (
                "another worker's done shard",
                B,
                true,
                5,
                0,
                Violation(super::Violation::NotOwner { step: 5, shard: 0 }),
            ),
            (
                "a worker with no shards",
                C,
                true,
                5,
                1,
                Violation(super::Violation::NotOwner { step: 5, shard: 1 }),
            ),
            ("the step just finished", C, true, 4, 0, Late),
            ("an older step", B, true, 0, 9, Late),
            (
                "a future step",
                A,
                true,
                6,
                2,
                Violation(super::Violation::UnissuedStep {
                    step: 6,
                    current: 5,
                }),
            ),
            (
                "a step id near 2^64",
                A,
                true,
                u64::MAX,
                0,
                Violation(super::Violation::UnissuedStep {
                    step: u64::MAX,
                    current: 5,
                }),
            ),
            (
                "shard id = shard count",
                A,
                true,
                5,
                4,
                Violation(super::Violation::UnknownShard {
                    step: 5,
                    shard: 4,
                    count: 4,
                }),
            ),
            (
                "shard id near 2^32",
                B,
                true,
                5,
                u32::MAX,
                Violation(super::Violation::UnknownShard {
                    step: 5,
                    shard: u32::MAX,
                    count: 4,
                }),
            ),
            ("a departed worker's own shard", A, false, 5, 2, Departed),
            ("a departed worker, any shard", C, false, 5, 1, Departed),
        ];
        let (s, _) = step();
        for (name, from, live, step_id, shard, want) in cases {
            assert_eq!(
                &s.judge(*from, *live, *step_id, *shard),
                want,
                "case: {name}"
            );
        }
    }

    #[test]
    fn released_shards_reopen_and_their_old_owner_owns_nothing() {
        let (mut s, t0) = step();
        assert_eq!(s.release(A), vec![2], "done shard 0 stays done");
        assert_eq!(s.open(), vec![2]);
        assert_eq!(s.owner(0), Some(A), "a done shard keeps its record");
        // Reassigned to C, only C may answer it; A, even if it came back, may not.
        let plan = s.plan(&[B, C]);
        assert_eq!(plan.len(), 1);
        assert_eq!(
            plan[&B],
            vec![2],
            "round-robin restarts at the first live worker"
        );
        s.assign(C, &[2], t0);
        assert_eq!(s.judge(C, true, 5, 2), Verdict::Accept(2));
        assert!(matches!(
            s.judge(A, true, 5, 2),
            Verdict::Violation(Violation::NotOwner { .. })
        ));
        assert!(matches!(
            s.judge(B, true, 5, 2),
            Verdict::Violation(Violation::NotOwner { .. })
        ));
    }

    #[test]
    fn step_is_done_when_every_shard_is() {
        let (mut s, _) = step();
        for i in 1..4 {
            assert!(!s.is_done());
            s.complete(i);
        }
        assert!(s.is_done());
        assert!(s.open().is_empty());
        assert!(s.plan(&[A, B, C]).is_empty());
        assert_eq!(s.deadline(Duration::from_secs(1)), None);
    }

    #[test]
    fn overdue_names_each_late_owner_once() {
        let (mut s, t0) = step();
        let limit = Duration::from_secs(2);
        assert_eq!(s.deadline(limit), Some(t0 + limit));
        assert!(s.overdue(t0 + Duration::from_secs(1), limit).is_empty());
        assert_eq!(s.overdue(t0 + limit, limit), vec![A, B]);
        s.complete(2);
        assert_eq!(s.overdue(t0 + limit, limit), vec![B], "A's shards are done");
        s.release(B);
        assert!(
            s.overdue(t0 + limit, limit).is_empty(),
            "open shards have no owner"
        );
        assert_eq!(s.deadline(limit), None);
        s.assign(C, &[1, 3], t0 + limit);
        assert_eq!(s.deadline(limit), Some(t0 + 2 * limit));
    }

    #[test]
    fn plan_spreads_round_robin_over_any_worker_count() {
        for shards in 1..9 {
            for workers in 1..6u32 {
                let ids: Vec<WorkerId> = (0..workers).map(WorkerId).collect();
                let s = StepState::new(0, shards);
                let plan = s.plan(&ids);
                let mut all: Vec<usize> = plan.values().flatten().copied().collect();
                all.sort_unstable();
                assert_eq!(all, (0..shards).collect::<Vec<_>>(), "{shards}/{workers}");
                let (min, max) = (
                    plan.values().map(Vec::len).min().unwrap(),
                    plan.values().map(Vec::len).max().unwrap(),
                );
                assert!(
                    max - min <= 1,
                    "balanced: {shards} shards, {workers} workers"
                );
            }
        }
        assert!(StepState::new(0, 3).plan(&[]).is_empty());
    }
}
