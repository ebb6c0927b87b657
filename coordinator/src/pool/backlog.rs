//! What each worker has yet to answer, across steps: a pure record, like
//! [`super::step`]. A worker answers the shard copies it is sent in the order
//! it was sent them (one `ShardResult` per shard, Steps in order), so each
//! result it sends, of any verdict, pops its oldest unanswered copy.
//!
//! It tells the pool two things: which workers are **idle** (nothing
//! unanswered: only those get new shards and backup copies, so a paused
//! worker's stream does not fill up with steps it cannot reach), and which
//! are **overdue** (a copy unanswered for the shard timeout: the worker is
//! dropped, even when a backup already finished the shard it sits on).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::WorkerId;

/// Per worker, when each of its unanswered shard copies was sent, oldest first.
#[derive(Debug, Clone, Default)]
pub struct Backlog {
    sent: BTreeMap<WorkerId, VecDeque<Instant>>,
}

impl Backlog {
    /// `worker` was sent `copies` shard copies at `now`.
    pub fn sent(&mut self, worker: WorkerId, copies: usize, now: Instant) {
        let queue = self.sent.entry(worker).or_default();
        queue.extend(std::iter::repeat_n(now, copies));
    }

    /// `worker` answered one shard copy (whatever the verdict).
    pub fn answered(&mut self, worker: WorkerId) {
        if let Some(queue) = self.sent.get_mut(&worker) {
            queue.pop_front();
        }
    }

    /// `worker` left the pool: forget it.
    pub fn forget(&mut self, worker: WorkerId) {
        self.sent.remove(&worker);
    }

    /// Whether `worker` has nothing left to answer.
    pub fn is_idle(&self, worker: WorkerId) -> bool {
        self.sent.get(&worker).is_none_or(VecDeque::is_empty)
    }

    /// Workers whose oldest unanswered copy was sent `limit` or more before
    /// `now`, in worker-id order.
    pub fn overdue(&self, now: Instant, limit: Duration) -> Vec<WorkerId> {
        self.sent
            .iter()
            .filter(|(_, q)| q.front().is_some_and(|&t| now >= t + limit))
            .map(|(&w, _)| w)
            .collect()
    }

    /// When the next worker becomes [`overdue`](Self::overdue), if any has work.
    pub fn deadline(&self, limit: Duration) -> Option<Instant> {
        self.sent
            .values()
            .filter_map(|q| q.front())
            .min()
            .map(|&t| t + limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: WorkerId = WorkerId(0);
    const B: WorkerId = WorkerId(1);

    #[test]
    fn answers_pop_the_oldest_copy_and_idle_means_nothing_left() {
        let t0 = Instant::now();
        let limit = Duration::from_secs(2);
        let mut b = Backlog::default();
        assert!(b.is_idle(A) && b.deadline(limit).is_none());
        b.sent(A, 2, t0);
        b.sent(B, 1, t0 + Duration::from_secs(1));
        b.sent(A, 1, t0 + Duration::from_secs(1)); // a backup copy, later
        assert!(!b.is_idle(A) && !b.is_idle(B));
        assert_eq!(b.deadline(limit), Some(t0 + limit));
        assert_eq!(b.overdue(t0 + limit, limit), vec![A]);
        b.answered(A);
        b.answered(A);
        assert_eq!(
            b.overdue(t0 + limit, limit),
            Vec::<WorkerId>::new(),
            "A's oldest is now 1 s old"
        );
        assert_eq!(b.overdue(t0 + 2 * limit, limit), vec![A, B]);
        b.answered(A);
        b.answered(A); // an extra answer (a dishonest peer) changes nothing
        assert!(b.is_idle(A));
        b.forget(B);
        assert!(b.is_idle(B) && b.deadline(limit).is_none());
    }
}
