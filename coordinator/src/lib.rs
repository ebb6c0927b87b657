//! The coordinator of the data-parallel trainer: it owns the model, the data
//! and the schedule, and shards every mini-batch across the workers that
//! connect to it over gRPC.
//!
//! # Layout
//! The server, in this crate's top-level modules:
//! - [`config`]: flags in groups, and [`config::RunSpec`], everything a run
//!   needs resolved from them once (with the server's [`Config`]);
//! - [`settings`]: the plan's settings, each once: its flag, and how
//!   checkpoints, run records and presets write and read it;
//! - [`listen`], [`incoming`]: where it listens (TCP, or a Unix socket for
//!   workers on this host) and the connections it accepts;
//! - [`fds`]: the file limit, and how many connections each accept loop may hold;
//! - [`service`]: the `ddp.v1.Trainer` gRPC service: handshake, then forwarding
//!   each worker's stream as registry events; no training logic;
//! - [`pool`]: the [`pool::WorkerPool`] seam and [`pool::RemotePool`], the registry
//!   that spreads shards over workers and gathers results in shard order
//!   (its per-step rules in [`pool::step`]; audits, backups and the
//!   observer beside it);
//! - [`training`]: the loop: epoch → batch → shards → pool → add in shard order → update → evaluate → checkpoint;
//! - [`checkpoint`]: checkpoint files and the position a run resumes from.
//!
//! The application around it, in [`app`]: one run from flags to summary,
//! the local worker launcher, progress bar and reports, the dashboard and
//! trace, the run record and `verify`, and the other subcommands.
//!
//! [`serve`] wires them together on a bound listener, with the standard
//! `grpc.health.v1` service beside the trainer.

pub mod app;
pub mod checkpoint;
pub mod config;
pub mod fds;
pub mod incoming;
pub mod listen;
pub mod pool;
pub mod refusal;
pub mod service;
pub mod settings;
pub mod training;

#[cfg(test)]
mod input_fuzz;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::dataset::Mnist;
use common::pb::trainer_server::TrainerServer;
use common::plan::RunState;
use common::progress::{EpochReport, Progress};
use common::{wire, Network};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tracing::{info, warn};

pub use config::{Args, Config, ConfigError};
use pool::{PoolError, PoolStats, RemotePool};
use service::TrainerService;

/// How long a new connection may take to start its handshake, and a new
/// stream to send its Hello.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Events queued from all workers' streams to the pool. Each stream waits
/// while the queue is full, so memory held for peers is bounded by this
/// many results plus one in hand per stream, each at most
/// [`common::wire::max_worker_message_bytes`].
const EVENT_QUEUE: usize = 64;

/// HTTP/2 streams one connection may have open at once: a worker needs one,
/// and a probe or two may share its connection.
const STREAMS_PER_CONNECTION: u32 = 8;

/// HTTP/2 flow-control window (stream and connection) of the worker
/// streams: larger than any worker's message, so a result never waits for a
/// window update (the default 64 KB took a 343 KB ch6-conv2 result in six
/// flights).
const FLOW_WINDOW: u32 = 16 << 20;

/// The health service name of the trainer.
pub const TRAINER_SERVICE: &str = "ddp.v1.Trainer";

/// What a finished run produced.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The trained network.
    pub network: Network,
    /// Velocity, early-stopping state and the best validation epoch's model.
    pub state: RunState,
    /// One report per epoch.
    pub reports: Vec<EpochReport>,
    /// Pool counters (late, duplicate, rejected results; reassigned shards).
    pub stats: PoolStats,
    /// Wall time from the first step to the end.
    pub elapsed: Duration,
}

/// Why a run did not finish.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// A step could not be completed.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// A checkpoint could not be written.
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    /// The TLS certificate or key is unusable.
    #[error("TLS: {0}")]
    Tls(#[source] tonic::transport::Error),
    /// A checkpoint's position does not fit this run's data.
    #[error("the checkpoint is at batch {batch} of an epoch, but this data has {batches} batches per epoch")]
    Position {
        /// The checkpoint's batch within its epoch.
        batch: usize,
        /// Batches per epoch with this data and batch size.
        batches: usize,
    },
    /// The shutdown signal fired before training finished.
    #[error("interrupted before training finished")]
    Interrupted,
    /// The training data could not be loaded.
    #[error("loading the data: {}", common::logging::error_chain(.0.as_ref()))]
    Data(DataLoadError),
}

/// Why the data a served run trains on could not be loaded (whatever the
/// loader's own error type).
pub type DataLoadError = Box<dyn std::error::Error + Send + Sync>;

/// Serves the trainer on `listener` (TCP or a Unix socket) until the run in `config` finishes or
/// `shutdown` completes, then tells the workers to exit and stops the server.
///
/// The server answers health checks and reflection from the start; the
/// trainer service reports NOT_SERVING until `data` has loaded, SERVING
/// while it accepts workers and trains, and NOT_SERVING again at the end.
/// The overall service (`""`) is SERVING for as long as the server runs: a
/// liveness check, where `ddp.v1.Trainer` is a readiness check.
///
/// The worker pool reports what it does to `observer` (the dashboard and
/// `--trace` listen there; [`pool::Observer::none`] for nobody).
///
/// # Errors
/// [`CoordinatorError`] if the run cannot finish.
pub async fn serve(
    listener: impl Into<listen::Listener>,
    config: Config,
    data: impl Future<Output = Result<Arc<Mnist>, DataLoadError>>,
    shutdown: impl Future<Output = ()>,
    progress: impl Progress,
    observer: pool::Observer,
) -> Result<RunSummary, CoordinatorError> {
    let plan = &config.plan;
    let run_id = format!("seed{}-pid{}", plan.seed, std::process::id());
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
    let (health, server) = start_server(listener.into(), &config, events_tx, &run_id).await?;
    tokio::pin!(shutdown);
    let data = tokio::select! {
        data = data => data.map_err(CoordinatorError::Data),
        () = &mut shutdown => Err(CoordinatorError::Interrupted),
    };
    let data = match data {
        Ok(data) => data,
        Err(e) => {
            let _ = server.stop().await;
            return Err(e);
        }
    };
    let timeouts = pool::Timeouts {
        wait_for_worker: config.wait_timeout,
        shard: config.shard_timeout,
        backup: config.backup,
    };
    let (mut network, mut position, mut state) = starting_point(&config);
    let mut pool = RemotePool::new(events_rx, plan.sizes.clone(), timeouts, position.step)
        .with_audit(pool::Audit::new(config.audit_rate, plan.cost, plan.kernels))
        .with_first_errors(config.first_errors_up_to, plan.kernels)
        .with_net(plan.net.as_ref())
        .with_observer(observer);
    health
        .set_service_status(TRAINER_SERVICE, ServingStatus::Serving)
        .await;
    info!(run = %run_id, workers = config.workers, shards = plan.shards, sizes = ?plan.sizes, "accepting workers");

    let mut start = Instant::now();
    let outcome = tokio::select! {
        outcome = async {
            pool.wait_for_workers(config.workers).await?;
            start = Instant::now();
            info!(epochs = plan.epochs, batch = plan.batch_size, eta = plan.eta, cost = %plan.cost, "training");
            training::train_on_pool(&mut pool, &mut network, &mut state, &data, plan, &mut position, config.checkpoint.as_ref(), progress).await
        } => outcome,
        () = &mut shutdown => Err(CoordinatorError::Interrupted),
    };
    let elapsed = start.elapsed();
    if let (Err(e), Some(c)) = (&outcome, &config.checkpoint) {
        // Whatever stopped the run (Ctrl-C, SIGTERM, no workers), keep its progress.
        match training::save_checkpoint(c, &network, position, plan, &state).await {
            Ok(()) => {
                warn!(error = %e, step = position.step, path = %c.path.display(), "run stopped; checkpoint saved, continue with --resume")
            }
            Err(save) => warn!(error = %save, "could not save a checkpoint"),
        }
    }
    let stats = stop(health, pool, server, outcome.is_ok()).await;
    let reports = outcome?;
    Ok(RunSummary {
        network,
        state,
        reports,
        stats,
        elapsed,
    })
}

/// Ends a run, finished or not: the trainer reports NOT_SERVING, the
/// workers are told to shut down, late joiners that training is over, and
/// the server stops (waiting, bounded, for workers to close their streams).
/// Returns the pool's statistics.
async fn stop(
    health: tonic_health::server::HealthReporter,
    mut pool: RemotePool,
    server: Served,
    finished: bool,
) -> PoolStats {
    health
        .set_service_status(TRAINER_SERVICE, ServingStatus::NotServing)
        .await;
    let reason = if finished {
        "training finished"
    } else {
        "coordinator stopping"
    };
    pool.shutdown(reason);
    let stats = pool.stats().clone();
    drop(pool); // closes the registry: late joiners are told training is over
                // Graceful stop waits for workers to close their streams after Shutdown; bounded.
    match server.stop().await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => warn!(error = %e, "server error while stopping"),
        Ok(Err(e)) => warn!(error = %e, "server task failed"),
        Err(_) => warn!("workers did not close their streams within 10 s; stopping anyway"),
    }
    stats
}

/// Where the run starts: the checkpoint it resumes, or step 0 with the
/// `--init` model or the plan's initial weights.
fn starting_point(config: &Config) -> (Network, checkpoint::Position, RunState) {
    match config.resume.clone() {
        Some(c) => {
            info!(
                epoch = c.position.epoch,
                batch = c.position.batch,
                step = c.position.step,
                "resuming from checkpoint"
            );
            (c.network, c.position, c.state)
        }
        None => (
            config
                .init
                .clone()
                .unwrap_or_else(|| config.plan.initial_network()),
            checkpoint::Position::default(),
            RunState::new(&config.plan),
        ),
    }
}

/// The running gRPC server, and how to stop it.
struct Served {
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    stop: oneshot::Sender<()>,
}

impl Served {
    /// Stops accepting, and waits up to 10 s for the server to finish.
    async fn stop(
        self,
    ) -> Result<
        Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
        tokio::time::error::Elapsed,
    > {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task).await
    }
}

/// Starts serving health (the trainer NOT_SERVING for now), reflection and
/// the trainer, whose workers' events go to `events`.
///
/// # Errors
/// [`CoordinatorError::Tls`] if the TLS identity is unusable.
async fn start_server(
    listener: listen::Listener,
    config: &Config,
    events: mpsc::Sender<pool::WorkerEvent>,
    run_id: &str,
) -> Result<(tonic_health::server::HealthReporter, Served), CoordinatorError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(TRAINER_SERVICE, ServingStatus::NotServing)
        .await;
    health.set_service_status("", ServingStatus::Serving).await;
    let plan = &config.plan;
    let service = TrainerService::new(events, &plan.sizes, run_id, HANDSHAKE_TIMEOUT)
        .with_cost(plan.cost)
        .with_kernels(plan.kernels)
        .with_net(plan.net.as_ref(), plan.seed);
    // A worker sends only Hello and ShardResults, whose largest legitimate
    // size is known exactly from the model's sizes.
    let trainer = TrainerServer::new(service)
        .max_decoding_message_size(wire::max_result_bytes(plan.parameter_count()))
        .max_encoding_message_size(wire::MAX_MESSAGE_BYTES);
    // The health service stays open to probes; the trainer checks the token.
    let trainer = InterceptedService::new(trainer, service::authenticate(config.token.clone()));
    let (stopping_tx, stopping) = watch::channel(false);
    let slots = fds::Budget::current().grpc;
    let incoming = incoming::incoming(listener, HANDSHAKE_TIMEOUT, stopping, slots);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let mut builder = Server::builder();
    if let Some(tls) = &config.tls {
        let identity = tonic::transport::Identity::from_pem(&tls.cert, &tls.key);
        let tls = tonic::transport::ServerTlsConfig::new()
            .identity(identity)
            .timeout(HANDSHAKE_TIMEOUT);
        builder = builder.tls_config(tls).map_err(CoordinatorError::Tls)?;
    }
    let task = tokio::spawn(
        builder
            // One 95 KB step in one HTTP/2 frame instead of six.
            .max_frame_size(1 << 20)
            // A chapter-6 net's result (343 KB for ch6-conv2, 6.7 MB for
            // ch6-dropout) in one flight, not one window of 64 KB at a time.
            .initial_stream_window_size(Some(FLOW_WINDOW))
            .initial_connection_window_size(Some(FLOW_WINDOW))
            // Detects a dead peer even when its TCP connection stays half-open.
            .http2_keepalive_interval(Some(config.keepalive))
            .http2_keepalive_timeout(Some(config.keepalive * 2))
            .max_concurrent_streams(Some(STREAMS_PER_CONNECTION))
            .add_service(health_service)
            // Server reflection, so `grpcurl list` and `describe` work with no
            // `.proto` at hand: v1, and v1alpha for older clients.
            .add_service(reflection().build_v1().expect(DESCRIPTORS_VALID))
            .add_service(reflection().build_v1alpha().expect(DESCRIPTORS_VALID))
            .add_service(trainer)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop_rx.await;
                let _ = stopping_tx.send(true);
            }),
    );
    Ok((
        health,
        Served {
            task,
            stop: stop_tx,
        },
    ))
}

/// Why building reflection cannot fail.
const DESCRIPTORS_VALID: &str = "the embedded descriptor sets are valid";

/// A server reflection builder that knows our services and health's.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(common::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}
