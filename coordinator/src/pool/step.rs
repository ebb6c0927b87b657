//! One step in flight, as a pure state machine: which workers hold each
//! shard, which shards are done, which are late enough for a backup copy,
//! and whether a result may be applied. No tokio, no protobuf, no gRPC status: time comes in as an
//! argument and decisions go out as values, so every rule is tested with a
//! table of cases (see the tests below) and the pool (`mod.rs`) only turns
//! decisions into messages.
//!
//! **The ownership rule** lives in [`StepState::judge`]: a result is applied
//! only if it is for the step in flight, for one of its shards, from a
//! worker that holds that shard now, and the shard is not done yet. A shard
//! has one holder, its owner, or two once a straggler's shard has been
//! copied to an idle worker ([`StepState::plan_backups`]): either may answer,
//! the first valid result wins, and the copies are bitwise identical. A
//! worker that left or was evicted holds nothing ([`StepState::release`]).
//!
//! **Only answers count.** A verdict says whether a result may complete a
//! shard; whether it also answers the sender's copy (and so resets its
//! `--shard-timeout` clock) is [`super::backlog`]'s rule: only a valid
//! result for a (step, shard) the sender holds does. A late or duplicate
//! result answers a copy only when it is the sender's own unanswered one (a
//! straggler waking up, the slower of a shard's two holders); stale,
//! repeated and foreign results never do.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::schedule::{ShardId, StepId};

use super::WorkerId;
use crate::refusal::Violation;

/// What to do with a result, by the ownership rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Valid so far: decode it and, if it decodes, complete this shard.
    Accept(usize),
    /// For a step that was issued and has finished: never applied. It
    /// answers the sender's copy only if the sender still holds it.
    Late,
    /// From a holder of the shard, for a shard already done: never applied.
    /// It answers the sender's copy only if the sender still holds it.
    Duplicate,
    /// From a worker that is no longer in the pool (its stream's last words):
    /// it owns nothing, so the result is ignored.
    Departed,
    /// A protocol violation: ignored, and the sender is dropped.
    Violation(Violation),
}

/// Judges a result's step id against `current`, the step in flight (or, when
/// none is, the next to be issued): earlier steps are late, later ones were
/// never issued. `None` means it is for `current`.
pub fn judge_step_id(step: StepId, current: StepId) -> Option<Verdict> {
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
    /// Per shard, the workers holding a copy now and when each got it: none
    /// (not assigned, or every holder left before answering), one (its
    /// owner), or two (its owner and a backup, see [`StepState::plan_backups`]).
    holders: Vec<Vec<(WorkerId, Instant)>>,
    /// Per shard, whether its result has been kept.
    done: Vec<bool>,
}

impl StepState {
    /// Step `id` with `shards` shards, none assigned.
    pub fn new(id: u64, shards: usize) -> Self {
        Self {
            id,
            holders: vec![Vec::new(); shards],
            done: vec![false; shards],
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

    /// The workers that hold `shard` now (a done shard keeps its record), in
    /// the order they got it.
    pub fn holders(&self, shard: usize) -> Vec<WorkerId> {
        self.holders[shard].iter().map(|&(w, _)| w).collect()
    }

    /// When `worker` was handed `shard`, if it holds it.
    pub fn held_since(&self, shard: usize, worker: WorkerId) -> Option<Instant> {
        self.holders[shard]
            .iter()
            .find(|&&(w, _)| w == worker)
            .map(|&(_, t)| t)
    }

    /// Shards that are neither done nor assigned.
    pub fn open(&self) -> Vec<usize> {
        (0..self.done.len())
            .filter(|&i| !self.done[i] && self.holders[i].is_empty())
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

    /// Unfinished shards held by one worker only since `after` or more
    /// before `now`: the stragglers' shards, due a backup copy.
    pub fn late(&self, now: Instant, after: Duration) -> Vec<usize> {
        (0..self.done.len())
            .filter(|&i| !self.done[i])
            .filter(|&i| matches!(self.holders[i][..], [(_, t)] if now >= t + after))
            .collect()
    }

    /// When the next shard held by one worker only becomes [`late`](Self::late), if any.
    pub fn backup_due(&self, after: Duration) -> Option<Instant> {
        (0..self.done.len())
            .filter(|&i| !self.done[i])
            .filter_map(|i| match self.holders[i][..] {
                [(_, t)] => Some(t + after),
                _ => None,
            })
            .min()
    }

    /// Pairs each late shard with one of `idle` (workers with nothing to
    /// compute), round-robin, never with the worker that already holds it:
    /// worker → the shards it is to copy. Changes nothing; [`StepState::assign`]
    /// records what was sent. A shard gets at most one backup.
    pub fn plan_backups(
        &self,
        now: Instant,
        after: Duration,
        idle: &[WorkerId],
    ) -> BTreeMap<WorkerId, Vec<usize>> {
        let mut batches: BTreeMap<WorkerId, Vec<usize>> = BTreeMap::new();
        let mut next = 0;
        for shard in self.late(now, after) {
            let holder = self.holders[shard][0].0;
            let candidates = idle.iter().filter(|&&w| w != holder).count();
            if candidates == 0 {
                continue;
            }
            let pick = idle
                .iter()
                .copied()
                .filter(|&w| w != holder)
                .nth(next % candidates)
                .expect("a candidate exists");
            next += 1;
            batches.entry(pick).or_default().push(shard);
        }
        batches
    }

    /// Records that `shards` were sent to `worker` at `now`: as their owner
    /// if they were open, as a backup if another worker holds them.
    pub fn assign(&mut self, worker: WorkerId, shards: &[usize], now: Instant) {
        for &i in shards {
            debug_assert!(!self.done[i], "a done shard is never handed out");
            if self.held_since(i, worker).is_none() {
                self.holders[i].push((worker, now));
            }
        }
    }

    /// The ownership rule: what to do with a result for (`step`, `shard`)
    /// from `from`, where `live` says whether `from` is still in the pool.
    /// Any holder of a shard may answer it (its owner or its backup); the
    /// first valid result wins and the other copy's is a duplicate.
    pub fn judge(&self, from: WorkerId, live: bool, step: StepId, shard: ShardId) -> Verdict {
        if let Some(verdict) = judge_step_id(step, StepId(self.id)) {
            return verdict;
        }
        let i = shard.0 as usize;
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
        if self.held_since(i, from).is_none() {
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

    /// `worker` left or was evicted: it gives up its copies of unfinished
    /// shards. Shards no one holds any more become open again; returns them.
    pub fn release(&mut self, worker: WorkerId) -> Vec<usize> {
        let mut freed = Vec::new();
        for i in 0..self.holders.len() {
            if self.done[i] {
                continue;
            }
            let before = self.holders[i].len();
            self.holders[i].retain(|&(w, _)| w != worker);
            if before > 0 && self.holders[i].is_empty() {
                freed.push(i);
            }
        }
        freed
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
                Violation(super::Violation::NotOwner {
                    step: StepId(5),
                    shard: ShardId(2),
                }),
            ),
            (
                "another worker's done shard",
                B,
                true,
                5,
                0,
                Violation(super::Violation::NotOwner {
                    step: StepId(5),
                    shard: ShardId(0),
                }),
            ),
            (
                "a worker with no shards",
                C,
                true,
                5,
                1,
                Violation(super::Violation::NotOwner {
                    step: StepId(5),
                    shard: ShardId(1),
                }),
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
                    step: StepId(6),
                    current: StepId(5),
                }),
            ),
            (
                "a step id near 2^64",
                A,
                true,
                u64::MAX,
                0,
                Violation(super::Violation::UnissuedStep {
                    step: StepId(u64::MAX),
                    current: StepId(5),
                }),
            ),
            (
                "shard id = shard count",
                A,
                true,
                5,
                4,
                Violation(super::Violation::UnknownShard {
                    step: StepId(5),
                    shard: ShardId(4),
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
                    step: StepId(5),
                    shard: ShardId(u32::MAX),
                    count: 4,
                }),
            ),
            ("a departed worker's own shard", A, false, 5, 2, Departed),
            ("a departed worker, any shard", C, false, 5, 1, Departed),
        ];
        let (s, _) = step();
        for (name, from, live, step_id, shard, want) in cases {
            assert_eq!(
                &s.judge(*from, *live, StepId(*step_id), ShardId(*shard)),
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
        assert_eq!(s.holders(0), vec![A], "a done shard keeps its record");
        // Reassigned to C, only C may answer it; A, even if it came back, may not.
        let plan = s.plan(&[B, C]);
        assert_eq!(plan.len(), 1);
        assert_eq!(
            plan[&B],
            vec![2],
            "round-robin restarts at the first live worker"
        );
        s.assign(C, &[2], t0);
        assert_eq!(s.judge(C, true, StepId(5), ShardId(2)), Verdict::Accept(2));
        assert!(matches!(
            s.judge(A, true, StepId(5), ShardId(2)),
            Verdict::Violation(Violation::NotOwner { .. })
        ));
        assert!(matches!(
            s.judge(B, true, StepId(5), ShardId(2)),
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
        assert_eq!(s.backup_due(Duration::from_secs(1)), None);
    }

    #[test]
    fn late_shards_get_one_backup_on_an_idle_worker_and_either_copy_may_answer() {
        let (mut s, t0) = step();
        let after = Duration::from_millis(4);
        assert_eq!(s.backup_due(after), Some(t0 + after));
        assert!(s.late(t0 + Duration::from_millis(3), after).is_empty());
        s.complete(1);
        s.complete(3); // B is done and idle; A still holds shard 2
        let now = t0 + after;
        assert_eq!(s.late(now, after), vec![2]);
        assert!(
            s.plan_backups(now, after, &[A]).is_empty(),
            "never to its own holder"
        );
        let plan = s.plan_backups(now, after, &[A, B, C]);
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[&B], vec![2]);
        s.assign(B, &[2], now);
        assert_eq!(s.holders(2), vec![A, B]);
        assert!(
            s.late(now + after, after).is_empty(),
            "one backup per shard"
        );
        assert_eq!(s.backup_due(after), None);
        // Either holder may answer; the first wins, the other is a duplicate.
        assert_eq!(s.judge(B, true, StepId(5), ShardId(2)), Verdict::Accept(2));
        assert_eq!(s.judge(A, true, StepId(5), ShardId(2)), Verdict::Accept(2));
        assert!(matches!(
            s.judge(C, true, StepId(5), ShardId(2)),
            Verdict::Violation(Violation::NotOwner { .. })
        ));
        s.complete(2);
        assert_eq!(s.judge(A, true, StepId(5), ShardId(2)), Verdict::Duplicate);
        assert_eq!(s.judge(B, true, StepId(5), ShardId(2)), Verdict::Duplicate);
        assert!(s.is_done());
    }

    #[test]
    fn a_shard_reopens_only_when_every_holder_left() {
        let (mut s, t0) = step();
        s.assign(C, &[2], t0); // a backup of A's shard 2
        assert!(s.release(A).is_empty(), "C still holds shard 2");
        assert_eq!(s.holders(2), vec![C]);
        assert_eq!(s.judge(C, true, StepId(5), ShardId(2)), Verdict::Accept(2));
        assert!(matches!(
            s.judge(A, true, StepId(5), ShardId(2)),
            Verdict::Violation(Violation::NotOwner { .. })
        ));
        assert_eq!(s.release(C), vec![2]);
        assert_eq!(s.open(), vec![2]);
        assert_eq!(s.held_since(1, B), Some(t0));
        assert_eq!(s.held_since(1, A), None);
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
