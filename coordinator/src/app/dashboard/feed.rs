//! What flows into the dashboard's collector: the pool's events, the loop's
//! steps and epochs, and results computed off the async threads. Sending is
//! a push onto an unbounded channel, so neither the pool nor the loop ever
//! waits for the dashboard.

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::dataset::Mnist;
use common::progress::{EpochReport, Progress, StepProgress};
use common::Network;
use tokio::sync::mpsc::UnboundedSender;

use super::learned::Learned;
use crate::pool::PoolEvent;

/// How often, at most, the loop's weights are copied for the running training cost.
pub const RUNNING_COST_EVERY: Duration = Duration::from_secs(1);

/// One input of the collector.
#[derive(Debug)]
pub enum Feed {
    /// The pool did something.
    Pool(PoolEvent),
    /// A step was applied (`at`: when the loop reported it).
    Step {
        /// Where the run is.
        progress: StepProgress,
        /// When.
        at: Instant,
    },
    /// A copy of the weights: at an epoch's end, or for the running cost.
    Weights {
        /// The weights.
        network: Network,
        /// Taken after the epoch's last step.
        epoch_end: bool,
    },
    /// An epoch's evaluation.
    Epoch(Box<EpochReport>),
    /// A checkpoint was written after `step` steps.
    Checkpoint {
        /// Steps it holds.
        step: u64,
    },
    /// The data set, once loaded.
    Data(Arc<Mnist>),
    /// What an epoch's network learned (computed off the async threads).
    Learned(Box<Learned>),
    /// The cost on a fixed training sample at `step` (computed off the async threads).
    RunningCost {
        /// Steps applied.
        step: u64,
        /// Mean cost.
        cost: f64,
    },
    /// The run is over; `outcome` says how, for the page.
    End {
        /// "finished", or why it stopped.
        outcome: String,
    },
}

/// A sender into the collector; sends never block and never fail loudly
/// (a collector that is gone just stops listening).
#[derive(Debug, Clone)]
pub struct FeedTx(pub(super) UnboundedSender<Feed>);

impl FeedTx {
    /// Sends `feed` if the collector still listens.
    pub fn send(&self, feed: Feed) {
        let _ = self.0.send(feed);
    }
}

/// A [`Progress`] that passes everything to `inner` (the terminal UI) and
/// copies it to the dashboard's collector.
pub struct Watched<P> {
    inner: P,
    feed: Option<FeedTx>,
    /// When the weights were last copied for the running cost.
    last_copy: Option<Instant>,
    /// The step just reported was its epoch's last.
    epoch_end: bool,
}

impl<P> Watched<P> {
    /// `inner`, reporting to `feed` too if given.
    pub fn new(inner: P, feed: Option<FeedTx>) -> Self {
        Watched {
            inner,
            feed,
            last_copy: None,
            epoch_end: false,
        }
    }
}

impl<P: Progress> Progress for Watched<P> {
    fn step(&mut self, progress: &StepProgress) {
        self.inner.step(progress);
        if let Some(feed) = &self.feed {
            self.epoch_end = progress.done == progress.total;
            feed.send(Feed::Step {
                progress: *progress,
                at: Instant::now(),
            });
        }
    }

    fn weights(&mut self, network: &Network) {
        self.inner.weights(network);
        let Some(feed) = &self.feed else { return };
        let due = self
            .last_copy
            .is_none_or(|t| t.elapsed() >= RUNNING_COST_EVERY);
        if self.epoch_end || due {
            self.last_copy = Some(Instant::now());
            feed.send(Feed::Weights {
                network: network.clone(),
                epoch_end: self.epoch_end,
            });
        }
    }

    fn checkpoint(&mut self, step: u64) {
        self.inner.checkpoint(step);
        if let Some(feed) = &self.feed {
            feed.send(Feed::Checkpoint { step });
        }
    }

    fn epoch(&mut self, report: &EpochReport) {
        self.inner.epoch(report);
        if let Some(feed) = &self.feed {
            feed.send(Feed::Epoch(Box::new(report.clone())));
        }
    }

    fn proceed(&mut self, chain: &common::chain::Chain) -> bool {
        self.inner.proceed(chain)
    }
}
