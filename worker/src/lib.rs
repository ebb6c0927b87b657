//! The worker of the data-parallel trainer: it dials the coordinator, and for
//! every `Step` returns the summed backprop gradients of its shards.
//!
//! # Layout
//! The major components are:
//! - [`run`] (this file): the connect/reconnect loop with bounded backoff, one
//!   session per connection;
//! - [`session`]: one connection: Hello/Welcome, then Step → compute →
//!   ShardResult until Shutdown;
//! - [`compute`]: the shard gradients, run off the async threads.

pub mod compute;
pub mod session;

use std::future::Future;
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};

pub use session::SessionError;

/// How a worker connects.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Coordinator address, e.g. `http://127.0.0.1:50051`.
    pub endpoint: String,
    /// Name sent in Hello, for the coordinator's logs.
    pub name: String,
    /// How long to keep retrying to reach the coordinator, from the first
    /// failed attempt (at start, or after a lost session), before giving up.
    pub retry_for: Duration,
    /// A fault to inject, so users and tests can watch the recovery.
    pub fault: Option<Fault>,
    /// The run's shared secret, if the coordinator asks for one.
    pub token: Option<common::auth::Token>,
}

/// A fault a worker can inject on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// On receiving this step, drop the connection without answering and stop
    /// (the coordinator sees a worker die mid-step).
    ExitAtStep(u64),
    /// On receiving this step, keep the connection but never answer again
    /// (a silent worker; the coordinator's shard deadline catches it); exit
    /// once the coordinator drops the connection.
    StallAtStep(u64),
}

/// Why a worker stopped without being told to.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The endpoint is not a valid URI.
    #[error("invalid coordinator address {endpoint:?}: {reason}")]
    BadEndpoint {
        /// The address.
        endpoint: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The coordinator could not be reached within the retry budget.
    #[error("coordinator at {endpoint} unreachable for {waited:?}: {last_error}")]
    Unreachable {
        /// The address.
        endpoint: String,
        /// How long the worker kept trying.
        waited: Duration,
        /// The last connection error.
        last_error: String,
    },
    /// The coordinator refused this worker (version, shape, or a bad message).
    #[error("refused by the coordinator: {0}")]
    Refused(SessionError),
    /// An injected fault fired.
    #[error("exited at step {0} as asked (fault injection)")]
    InjectedExit(u64),
}

/// First and largest pause between connection attempts: doubling from 50 ms
/// to 2 s keeps a restarting coordinator's wait short without spinning.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));

async fn connect(endpoint: &Endpoint, config: &WorkerConfig) -> Result<Channel, WorkerError> {
    let started = Instant::now();
    let mut pause = BACKOFF.0;
    let mut announced = false;
    loop {
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            Err(e) => {
                let last_error =
                    std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
                if started.elapsed() >= config.retry_for {
                    return Err(WorkerError::Unreachable {
                        endpoint: config.endpoint.clone(),
                        waited: started.elapsed(),
                        last_error,
                    });
                }
                if !announced {
                    info!(endpoint = %config.endpoint, error = %last_error, "coordinator not reachable yet; retrying");
                    announced = true;
                }
                debug!(?pause, "retrying");
                tokio::time::sleep(pause).await; // backoff between attempts, bounded by retry_for
                pause = (pause * 2).min(BACKOFF.1);
            }
        }
    }
}

/// Works for the coordinator at `config.endpoint` until it says Shutdown
/// (returns `Ok`) or `shutdown` completes (returns `Ok`). A lost connection is
/// retried with bounded backoff.
///
/// # Errors
/// [`WorkerError`] if the address is invalid, the coordinator stays
/// unreachable for `retry_for`, or it refuses this worker.
pub async fn run(
    config: WorkerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    let endpoint = Endpoint::from_shared(config.endpoint.clone())
        .map_err(|e| WorkerError::BadEndpoint {
            endpoint: config.endpoint.clone(),
            reason: e.to_string(),
        })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        // One 95 KB step in one HTTP/2 frame instead of six.
        .max_frame_size(1 << 20)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20));
    let sessions = async {
        loop {
            let channel = connect(&endpoint, &config).await?;
            match session::run(channel, &config).await {
                Ok(reason) => {
                    info!(%reason, "coordinator said shutdown");
                    return Ok(());
                }
                Err(SessionError::InjectedExit(step)) => {
                    return Err(WorkerError::InjectedExit(step))
                }
                Err(e) if e.is_refusal() => return Err(WorkerError::Refused(e)),
                Err(e) => warn!(error = %e, "session lost; reconnecting"),
            }
        }
    };
    tokio::select! {
        result = sessions => result,
        () = shutdown => {
            info!("interrupted; exiting");
            Ok(())
        }
    }
}
