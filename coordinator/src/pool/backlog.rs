//! What each worker has yet to answer, across steps: a pure record, like
//! [`super::step`]. Each shard copy a worker is sent is held, by its (step,
//! shard), until the worker sends a valid result for exactly that copy.
//!
//! **Only an answer resets a worker's clock.** A result clears a copy only
//! if the sender holds that (step, shard) and the payload decodes (the pool
//! checks it against the copy's [`Held`] shape); a result for a step or
//! shard the worker does not hold (stale, repeated, or another's) clears
//! nothing, whatever its verdict. So `--shard-timeout` is measured per copy
//! held, and a worker that answers none of its copies within it is dropped,
//! whatever else it sends.
//!
//! It tells the pool two things: which workers are **idle** (nothing
//! unanswered: only those get new shards and backup copies, so a paused
//! worker's stream does not fill up with steps it cannot reach), and which
//! are **overdue** (a copy unanswered for the shard timeout: the worker is
//! dropped, even when a backup already finished the shard it sits on).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::shard::AnswerForm;

use super::WorkerId;

/// One shard copy a worker holds: when it was sent, and what a valid
/// answer to it looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// When the copy was sent.
    pub sent: Instant,
    /// The shard's sample count.
    pub samples: usize,
    /// The form of answer the copy asked for.
    pub asked: AnswerForm,
}

/// Per worker, its unanswered shard copies by (step, shard).
#[derive(Debug, Clone, Default)]
pub struct Backlog {
    held: BTreeMap<WorkerId, BTreeMap<(u64, u32), Held>>,
}

impl Backlog {
    /// `worker` was sent a copy of `shard` of `step`.
    pub fn sent(&mut self, worker: WorkerId, step: u64, shard: u32, copy: Held) {
        self.held
            .entry(worker)
            .or_default()
            .insert((step, shard), copy);
    }

    /// The copy of (`step`, `shard`) that `worker` holds, if it holds one.
    pub fn held(&self, worker: WorkerId, step: u64, shard: u32) -> Option<Held> {
        self.held.get(&worker)?.get(&(step, shard)).copied()
    }

    /// `worker` answered its copy of (`step`, `shard`) validly: it holds it
    /// no more. Returns whether it held it (if not, nothing changes).
    pub fn answered(&mut self, worker: WorkerId, step: u64, shard: u32) -> bool {
        self.held
            .get_mut(&worker)
            .is_some_and(|copies| copies.remove(&(step, shard)).is_some())
    }

    /// `worker` left the pool: forget it.
    pub fn forget(&mut self, worker: WorkerId) {
        self.held.remove(&worker);
    }

    /// Whether `worker` has nothing left to answer.
    pub fn is_idle(&self, worker: WorkerId) -> bool {
        self.held.get(&worker).is_none_or(BTreeMap::is_empty)
    }

    /// A worker's oldest unanswered copy: when it was sent, and its (step, shard).
    fn oldest(copies: &BTreeMap<(u64, u32), Held>) -> Option<(Instant, (u64, u32))> {
        copies.iter().map(|(&key, h)| (h.sent, key)).min()
    }

    /// Workers holding a copy sent `limit` or more before `now`, in
    /// worker-id order, each with the (step, shard) of its oldest copy.
    pub fn overdue(&self, now: Instant, limit: Duration) -> Vec<(WorkerId, (u64, u32))> {
        self.held
            .iter()
            .filter_map(|(&w, copies)| Some((w, Self::oldest(copies)?)))
            .filter(|&(_, (t, _))| now >= t + limit)
            .map(|(w, (_, key))| (w, key))
            .collect()
    }

    /// When the next worker becomes [`overdue`](Self::overdue), if any has work.
    pub fn deadline(&self, limit: Duration) -> Option<Instant> {
        self.held
            .values()
            .filter_map(Self::oldest)
            .map(|(t, _)| t + limit)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: WorkerId = WorkerId(0);
    const B: WorkerId = WorkerId(1);

    fn copy(sent: Instant) -> Held {
        Held {
            sent,
            samples: 3,
            asked: AnswerForm::Whole,
        }
    }

    #[test]
    fn only_an_answer_to_a_held_copy_clears_it() {
        let t0 = Instant::now();
        let limit = Duration::from_secs(2);
        let mut b = Backlog::default();
        assert!(b.is_idle(A) && b.deadline(limit).is_none());
        b.sent(A, 5, 0, copy(t0));
        b.sent(A, 5, 2, copy(t0));
        b.sent(B, 5, 1, copy(t0 + Duration::from_secs(1)));
        b.sent(A, 6, 1, copy(t0 + Duration::from_secs(1))); // a backup copy, later
        assert!(!b.is_idle(A) && !b.is_idle(B));
        assert_eq!(b.deadline(limit), Some(t0 + limit));
        assert_eq!(b.overdue(t0 + limit, limit), vec![(A, (5, 0))]);
        // Stale, foreign and never-issued results clear nothing.
        for (step, shard) in [(4, 0), (5, 1), (6, 0), (7, 0), (u64::MAX, u32::MAX)] {
            assert!(!b.answered(A, step, shard), "({step}, {shard})");
            assert_eq!(
                b.overdue(t0 + limit, limit),
                vec![(A, (5, 0))],
                "({step}, {shard})"
            );
        }
        assert_eq!(b.held(A, 5, 2), Some(copy(t0)));
        assert!(b.answered(A, 5, 0));
        assert!(!b.answered(A, 5, 0), "a duplicate clears nothing");
        assert_eq!(
            b.overdue(t0 + limit, limit),
            vec![(A, (5, 2))],
            "shard 2 is still held"
        );
        assert!(b.answered(A, 5, 2));
        assert_eq!(
            b.overdue(t0 + limit, limit),
            vec![],
            "A's oldest is now 1 s old"
        );
        assert_eq!(
            b.overdue(t0 + 2 * limit, limit),
            vec![(A, (6, 1)), (B, (5, 1))]
        );
        assert!(b.answered(A, 6, 1));
        assert!(b.is_idle(A) && b.held(A, 6, 1).is_none());
        b.forget(B);
        assert!(b.is_idle(B) && b.deadline(limit).is_none());
    }
}
