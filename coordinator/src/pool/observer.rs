//! What the pool tells a watcher (the dashboard, `/metrics`, `--trace`):
//! joins and losses, who was sent which shards and when, which results were
//! kept, which shards moved. The pool never waits for a watcher: an
//! [`Observer`] is a callback that must return at once (the dashboard's
//! pushes onto an unbounded channel), and with none installed every hook is
//! a branch on `None`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::schedule::{ShardId, StepId};

use super::WorkerId;

/// One thing the pool did or saw.
#[derive(Debug, Clone)]
pub enum PoolEvent {
    /// A worker completed the handshake while the run was at `step`.
    Joined {
        /// Its id.
        worker: WorkerId,
        /// The name it gave.
        name: String,
        /// Its address as the coordinator sees it.
        addr: Option<SocketAddr>,
        /// The next step to be issued when it joined.
        step: StepId,
        /// When.
        at: Instant,
    },
    /// A worker's stream ended (it exited, crashed or was cut off).
    Lost {
        /// The worker.
        worker: WorkerId,
        /// Why, as the transport said.
        reason: String,
        /// When.
        at: Instant,
    },
    /// The pool dropped a worker (a bad result, a violation, a deadline).
    Evicted {
        /// The worker.
        worker: WorkerId,
        /// The status message it was told.
        reason: String,
        /// When.
        at: Instant,
    },
    /// One `Step` message was handed to a worker's stream.
    Sent {
        /// The step.
        step: StepId,
        /// The worker.
        worker: WorkerId,
        /// The shards in the message.
        shards: Vec<ShardId>,
        /// When.
        at: Instant,
    },
    /// A shard's result was validated and kept.
    Computed {
        /// The step.
        step: StepId,
        /// The worker that computed it.
        worker: WorkerId,
        /// The shard.
        shard: ShardId,
        /// The backprop time the worker reported for it.
        compute: Duration,
        /// When the result arrived.
        at: Instant,
    },
    /// A shard whose owner left or failed was opened for another worker.
    Reassigned {
        /// The step.
        step: StepId,
        /// The shard.
        shard: ShardId,
        /// The worker it was taken from.
        from: WorkerId,
        /// When.
        at: Instant,
    },
    /// A result that was not applied.
    Ignored {
        /// The sender.
        worker: WorkerId,
        /// Why.
        why: Ignored,
    },
}

/// Why a result was not applied (the [`super::PoolStats`] counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// For an earlier step, or from a worker already dropped.
    Late,
    /// For a shard already done.
    Duplicate,
    /// Failed validation.
    Rejected,
    /// A protocol violation.
    Refused,
    /// Differed from the coordinator's recomputation (`--audit-rate`); the
    /// recomputed gradients were used instead.
    AuditFailed,
}

/// Where the pool reports [`PoolEvent`]s; [`Observer::none`] by default.
#[derive(Clone, Default)]
pub struct Observer(Option<Arc<dyn Fn(PoolEvent) + Send + Sync>>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Observer(on)"
        } else {
            "Observer(off)"
        })
    }
}

impl Observer {
    /// Reports to nobody.
    pub fn none() -> Self {
        Observer(None)
    }

    /// Reports every event to `f`, which must not block.
    pub fn new(f: impl Fn(PoolEvent) + Send + Sync + 'static) -> Self {
        Observer(Some(Arc::new(f)))
    }

    /// Whether anyone listens (so callers can skip building events).
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Reports the event `event` builds, if anyone listens.
    pub fn emit(&self, event: impl FnOnce() -> PoolEvent) {
        if let Some(f) = &self.0 {
            f(event());
        }
    }
}
