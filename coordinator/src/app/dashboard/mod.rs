//! The live dashboard (`--dashboard ADDR`), `/metrics` for Prometheus, and
//! the `--trace` timeline.
//!
//! # Layout
//! - [`feed`]: what flows in (pool events, steps, epochs) and [`Watched`],
//!   the [`common::progress::Progress`] that copies the loop's reports in;
//! - [`state`]: the page's view of the run (progress, curves, workers, log, step split);
//! - [`learned`]: per epoch, what the network learned (tiles, confusion, misses);
//! - [`prometheus`]: the `/metrics` registry;
//! - [`http`]: the read-only HTTP server: the page, its event stream, `/metrics`, access rule;
//! - [`hosts`]: the `Host` names it answers (against DNS rebinding);
//! - `page.html`: the page, embedded in the binary (no external assets).
//!
//! One collector task owns all of it. The pool and the loop push onto an
//! unbounded channel and never wait; the collector publishes the page's
//! JSON at most [`PUBLISH_EVERY`] through `watch` channels, which the HTTP
//! server's event streams follow.

pub mod feed;
pub mod hosts;
pub mod http;
pub mod learned;
pub mod prometheus;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::dataset::{Mnist, Samples};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use feed::{Feed, FeedTx, Watched};
pub use http::Access;
pub use state::RunInfo;

use crate::app::trace::{TraceOptions, TraceRecorder};
use crate::pool::{Observer, PoolEvent};

/// How often, at most, the page's state is pushed (4 times a second).
pub const PUBLISH_EVERY: Duration = Duration::from_millis(250);

/// What to start.
#[derive(Debug)]
pub struct Options {
    /// Serve the page and `/metrics` on this listener.
    pub listener: Option<std::net::TcpListener>,
    /// Who may read it.
    pub access: Access,
    /// `Host` names served besides its address and `localhost` (`--dashboard-host`).
    pub hosts: Vec<String>,
    /// Write a timeline.
    pub trace: Option<TraceOptions>,
    /// The run, as the page describes it.
    pub run: RunInfo,
}

/// The page's current JSON documents.
#[derive(Clone)]
pub struct Published {
    /// Progress, curves, workers, log, step split.
    pub state: watch::Receiver<Arc<str>>,
    /// The last epoch's tiles, confusion matrix and misclassified digits.
    pub learned: watch::Receiver<Arc<str>>,
    /// The Prometheus registry.
    pub metrics: Arc<prometheus::Metrics>,
}

/// A running dashboard (and trace recorder).
pub struct Dashboard {
    feed: FeedTx,
    collector: JoinHandle<()>,
    addr: Option<SocketAddr>,
}

impl Dashboard {
    /// Starts the collector and, with a listener, the HTTP server.
    ///
    /// # Errors
    /// If the listener cannot be handed to tokio.
    pub fn start(options: Options) -> std::io::Result<Dashboard> {
        let (tx, rx) = mpsc::unbounded_channel();
        let feed = FeedTx(tx);
        let metrics = Arc::new(prometheus::Metrics::new());
        let state = state::State::new(options.run.clone());
        let (state_tx, state_rx) = watch::channel::<Arc<str>>(state.to_json().to_string().into());
        let (learned_tx, learned_rx) = watch::channel::<Arc<str>>("null".into());
        let published = Published {
            state: state_rx,
            learned: learned_rx,
            metrics: Arc::clone(&metrics),
        };
        let mut addr = None;
        if let Some(listener) = options.listener {
            listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let bound = listener.local_addr()?;
            addr = Some(bound);
            let gate = http::Gate {
                access: options.access,
                hosts: hosts::AllowedHosts::new(bound, &options.hosts),
                budget: crate::fds::Budget::current(),
            };
            tokio::spawn(http::serve(listener, gate, published));
        }
        let collector = Collector {
            state,
            metrics,
            trace: options.trace.map(|t| TraceRecorder::new(t, Instant::now())),
            run: options.run,
            data: None,
            sample: None,
            feed: feed.clone(),
            state_tx,
            learned_tx,
            dirty: true,
            costing: false,
            next_step: 0,
        };
        let collector = tokio::spawn(collector.run(rx));
        Ok(Dashboard {
            feed,
            collector,
            addr,
        })
    }

    /// Where the page is served, if it is.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The observer to give the pool.
    pub fn observer(&self) -> Observer {
        let feed = self.feed.clone();
        Observer::new(move |e: PoolEvent| feed.send(Feed::Pool(e)))
    }

    /// `inner`, reporting to the dashboard too.
    pub fn progress<P>(&self, inner: P) -> Watched<P> {
        Watched::new(inner, Some(self.feed.clone()))
    }

    /// A sender for the data set once it is loaded.
    pub fn feed(&self) -> FeedTx {
        self.feed.clone()
    }

    /// Tells the page the run is over (`outcome`: "finished" or why it
    /// stopped) and waits for the collector to publish the final state and
    /// write the trace. The page stays up, showing it, until the process exits.
    pub async fn finish(self, outcome: &str) {
        self.feed.send(Feed::End {
            outcome: outcome.to_string(),
        });
        let _ = self.collector.await;
    }
}

struct Collector {
    state: state::State,
    metrics: Arc<prometheus::Metrics>,
    trace: Option<TraceRecorder>,
    run: RunInfo,
    data: Option<Arc<Mnist>>,
    /// The training samples the running cost is measured on.
    sample: Option<Arc<Samples>>,
    /// For results computed on blocking threads.
    feed: FeedTx,
    state_tx: watch::Sender<Arc<str>>,
    learned_tx: watch::Sender<Arc<str>>,
    dirty: bool,
    /// A running cost is being computed.
    costing: bool,
    /// Id of the next step to be applied.
    next_step: u64,
}

impl Collector {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Feed>) {
        let mut tick = tokio::time::interval(PUBLISH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut learning: Vec<JoinHandle<()>> = Vec::new();
        loop {
            tokio::select! {
                feed = rx.recv() => match feed {
                    Some(Feed::End { outcome }) => {
                        // What the last epoch learned is worth waiting for.
                        for h in learning.drain(..) {
                            let _ = h.await;
                        }
                        while let Ok(feed) = rx.try_recv() {
                            self.apply(feed, &mut learning);
                        }
                        self.state.end(&outcome);
                        self.publish();
                        self.write_trace();
                        return;
                    }
                    Some(feed) => self.apply(feed, &mut learning),
                    None => return,
                },
                _ = tick.tick() => {
                    learning.retain(|h| !h.is_finished());
                    if self.dirty {
                        self.state.sample_timing();
                        self.publish();
                    }
                }
            }
        }
    }

    fn publish(&mut self) {
        self.dirty = false;
        let _ = self.state_tx.send(self.state.to_json().to_string().into());
    }

    fn write_trace(&mut self) {
        if let Some(t) = &mut self.trace {
            if let Err(e) = t.write() {
                tracing::warn!(error = %e, "could not write the trace");
            }
        }
    }

    fn apply(&mut self, feed: Feed, learning: &mut Vec<JoinHandle<()>>) {
        self.dirty = true;
        match feed {
            Feed::Pool(e) => {
                self.state.pool(&e);
                if let Some(t) = &mut self.trace {
                    t.pool(&e);
                }
                match &e {
                    PoolEvent::Joined { step, .. } if self.next_step == 0 => {
                        self.next_step = step.0;
                        self.state.at_step(step.0);
                    }
                    PoolEvent::Reassigned { .. } => self.metrics.reassigned(),
                    PoolEvent::Ignored { why, .. } => self.metrics.ignored(*why),
                    _ => {}
                }
                self.metrics.workers(self.state.workers_live());
            }
            Feed::Step { progress, at } => {
                self.state.step(&progress, at);
                let samples = self.step_samples(&progress);
                self.metrics
                    .step(progress.timing.total.as_secs_f64(), samples);
                if let Some(t) = &mut self.trace {
                    t.step(
                        self.next_step,
                        at,
                        progress.timing.total,
                        progress.timing.reduce,
                    );
                }
                self.next_step += 1;
                if self
                    .trace
                    .as_ref()
                    .is_some_and(|t| t.window_done(self.next_step))
                {
                    self.write_trace();
                }
            }
            Feed::Weights { network, epoch_end } => {
                let Some(data) = self.data.clone() else {
                    return;
                };
                let (cost, kernels) = (self.run.cost, self.run.kernels);
                let feed = self.feed.clone();
                if epoch_end {
                    let epoch = self.state.current_epoch();
                    learning.push(tokio::task::spawn_blocking(move || {
                        let l = learned::learn(&network, &data, cost, kernels, epoch);
                        feed.send(Feed::Learned(Box::new(l)));
                    }));
                } else if !self.costing {
                    self.costing = true;
                    let step = self.next_step;
                    let sample = Arc::clone(
                        self.sample
                            .get_or_insert_with(|| Arc::new(learned::training_sample(&data))),
                    );
                    tokio::task::spawn_blocking(move || {
                        let c = learned::mean_cost(&network, &sample, cost, kernels);
                        feed.send(Feed::RunningCost { step, cost: c });
                    });
                }
            }
            Feed::RunningCost { step, cost } => {
                self.costing = false;
                self.state.running_cost(step, cost);
            }
            Feed::Epoch(report) => {
                self.metrics.epoch(
                    report.epoch,
                    report.test_accuracy() / 100.0,
                    report.validation_accuracy() / 100.0,
                );
                self.state.epoch(&report);
            }
            Feed::Learned(l) => {
                self.state.costs(&l);
                let _ = self.learned_tx.send(l.to_json().to_string().into());
            }
            Feed::Checkpoint { step } => self.state.checkpoint(step),
            Feed::Data(data) => self.data = Some(data),
            Feed::End { .. } => {}
        }
    }

    /// Samples in the step `p` reports: a batch, or what is left for the epoch's last.
    fn step_samples(&self, p: &common::progress::StepProgress) -> u64 {
        let batch = self.run.batch as u64;
        match &self.data {
            Some(d) if p.done == p.total => {
                let n = d.training.len() as u64;
                n - batch * (p.total as u64 - 1).min(n / batch.max(1))
            }
            _ => batch,
        }
    }
}

/// Why the dashboard cannot be served as asked.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    /// Beyond loopback with no token and no `--insecure-no-token`.
    #[error("--dashboard on {0} (beyond loopback) needs the run's token (--token or DDP_TOKEN), or --insecure-no-token to let anyone who reaches it read it")]
    NeedsToken(SocketAddr),
}

/// The access rule, the gRPC port's: on loopback the page is open; beyond
/// it, the run's token is needed (returned with the one-time login code),
/// unless `insecure` (`--insecure-no-token`) opens it to anyone.
///
/// # Errors
/// [`DashboardError::NeedsToken`] beyond loopback with neither.
pub fn access_rule(
    addr: SocketAddr,
    token: Option<&common::auth::Token>,
    insecure: bool,
) -> Result<(Access, Option<String>), DashboardError> {
    if addr.ip().is_loopback() {
        return Ok((Access::Open, None));
    }
    match token {
        Some(t) => {
            let (access, code) = Access::with_token(t.clone());
            Ok((access, Some(code)))
        }
        None if insecure => Ok((Access::Open, None)),
        None => Err(DashboardError::NeedsToken(addr)),
    }
}
