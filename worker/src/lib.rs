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

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tracing::{debug, info, warn};

use common::kernels::KernelSet;

pub use session::SessionError;

/// How a worker connects.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Coordinator address, e.g. `http://127.0.0.1:50051`, or `unix:/path`
    /// for a coordinator on this host listening on a Unix socket.
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
    /// Connect over TLS, trusting this CA certificate (PEM); the endpoint must be `https://`.
    pub tls_ca: Option<Vec<u8>>,
    /// The name to verify the coordinator's certificate against (default: the endpoint's host).
    pub tls_domain: Option<String>,
    /// HTTP/2 keepalive interval; a coordinator that does not answer a ping
    /// within twice this counts as gone (the session is retried).
    pub keepalive: Duration,
    /// Set SERVING while joined to a coordinator and NOT_SERVING otherwise
    /// (the worker's `--health-port`).
    pub health: Option<tonic_health::server::HealthReporter>,
    /// `--kernels`: compute only with this set (`None`: any set this CPU
    /// can run, whichever the run chooses).
    pub kernels: Option<KernelSet>,
}

impl WorkerConfig {
    /// Tells the health service whether this worker is joined to a coordinator.
    pub(crate) async fn set_joined(&self, joined: bool) {
        if let Some(h) = &self.health {
            let status = if joined {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            h.set_service_status("", status).await;
        }
    }
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
    /// On this step, flip the lowest mantissa bit of one gradient value
    /// (silent data corruption: the result stays finite and plausible, so
    /// only an audit can tell).
    CorruptAtStep(u64),
    /// The same on every step from this one on: a persistently faulty CPU.
    CorruptFromStep(u64),
}

impl Fault {
    /// Whether this fault corrupts the results of step `step`.
    pub fn corrupts(self, step: u64) -> bool {
        match self {
            Fault::CorruptAtStep(n) => step == n,
            Fault::CorruptFromStep(n) => step >= n,
            Fault::ExitAtStep(_) | Fault::StallAtStep(_) => false,
        }
    }
}

impl WorkerConfig {
    /// The kernel sets this worker offers in its Hello.
    pub fn offered_kernels(&self) -> Vec<KernelSet> {
        match self.kernels {
            Some(set) => vec![set],
            None => KernelSet::supported(),
        }
    }
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
    #[error("coordinator at {endpoint} unreachable for {}: {last_error}", common::logging::Seconds(*.waited))]
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

/// The retry budget: attempts to reach and join the coordinator back off
/// from 50 ms to 2 s and give up after `retry_for` without a successful join.
struct Retries<'a> {
    config: &'a WorkerConfig,
    failing_since: Instant,
    pause: Duration,
    announced: bool,
}

impl<'a> Retries<'a> {
    fn new(config: &'a WorkerConfig) -> Self {
        Retries {
            config,
            failing_since: Instant::now(),
            pause: BACKOFF.0,
            announced: false,
        }
    }

    /// A session got as far as Welcome: the next failure starts a new budget.
    fn reset(&mut self) {
        *self = Retries::new(self.config);
    }

    /// After a failed attempt: waits out the backoff, or gives up when the budget is spent.
    async fn after_failure(&mut self, last_error: String) -> Result<(), WorkerError> {
        let waited = self.failing_since.elapsed();
        if waited >= self.config.retry_for {
            return Err(WorkerError::Unreachable {
                endpoint: self.config.endpoint.clone(),
                waited,
                last_error,
            });
        }
        if !self.announced {
            info!(endpoint = %self.config.endpoint, error = %last_error, "coordinator not reachable yet; retrying");
            self.announced = true;
        }
        debug!(pause = ?self.pause, error = %last_error, "retrying");
        tokio::time::sleep(self.pause).await; // backoff between attempts, bounded by retry_for
        self.pause = (self.pause * 2).min(BACKOFF.1);
        Ok(())
    }
}

/// The coordinator's endpoint as `config` names it, with TLS, keepalive
/// and the transport settings; checked here, not after a minute of retries.
///
/// # Errors
/// [`WorkerError::BadEndpoint`] saying what is wrong with the address.
fn endpoint(config: &WorkerConfig) -> Result<Endpoint, WorkerError> {
    let bad = |reason: String| WorkerError::BadEndpoint {
        endpoint: config.endpoint.clone(),
        reason,
    };
    // unix:PATH is a coordinator on this host (its `--listen unix:PATH`).
    let unix = config.endpoint.starts_with("unix:");
    // A bare HOST:PORT means plain HTTP/2, as `--listen` takes it.
    let address = if config.endpoint.contains("://") || unix {
        config.endpoint.clone()
    } else {
        format!("http://{}", config.endpoint)
    };
    let mut endpoint = Endpoint::from_shared(address).map_err(|e| bad(e.to_string()))?;
    if unix {
        let path = config.endpoint["unix:".len()..].trim_start_matches("//");
        if path.is_empty() {
            return Err(bad("expected unix:PATH, e.g. unix:/tmp/ddp.sock".into()));
        }
        if config.tls_ca.is_some() {
            return Err(bad(
                "TLS is not offered over a Unix socket; use https://HOST:PORT".into(),
            ));
        }
    } else {
        match endpoint.uri().scheme_str() {
            Some("http" | "https") => {}
            other => {
                return Err(bad(format!(
                    "scheme {:?}: use http://HOST:PORT, https://HOST:PORT, HOST:PORT or unix:PATH",
                    other.unwrap_or("")
                )))
            }
        }
        if endpoint.uri().host().is_none_or(str::is_empty) || endpoint.uri().port_u16().is_none() {
            return Err(bad("expected HOST:PORT, e.g. 127.0.0.1:50051".into()));
        }
    }
    if let Some(ca) = &config.tls_ca {
        if endpoint.uri().scheme_str() != Some("https") {
            return Err(bad("--tls-ca needs an https:// address".into()));
        }
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        if let Some(domain) = &config.tls_domain {
            tls = tls.domain_name(domain.clone());
        }
        endpoint = endpoint.tls_config(tls).map_err(|e| bad(e.to_string()))?;
    }
    Ok(endpoint
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        // One 95 KB step in one HTTP/2 frame instead of six.
        .max_frame_size(1 << 20)
        // A chapter-6 net's weights in one flight (see the coordinator's FLOW_WINDOW).
        .initial_stream_window_size(Some(16 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .http2_keep_alive_interval(config.keepalive)
        .keep_alive_timeout(config.keepalive * 2))
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
    let endpoint = endpoint(&config)?;
    let sessions = async {
        let mut retries = Retries::new(&config);
        loop {
            let failure = match endpoint.connect().await {
                Err(e) => common::logging::error_chain(&e),
                Ok(channel) => {
                    let mut joined = false;
                    let outcome = session::run(channel, &config, &mut joined).await;
                    config.set_joined(false).await;
                    match outcome {
                        Ok(reason) => {
                            info!(%reason, "coordinator said shutdown");
                            return Ok(());
                        }
                        Err(SessionError::InjectedExit(step)) => {
                            return Err(WorkerError::InjectedExit(step))
                        }
                        Err(e) if e.is_refusal() => return Err(WorkerError::Refused(e)),
                        Err(e) => {
                            if joined {
                                warn!(error = %e, "session lost; reconnecting");
                                retries.reset();
                            }
                            e.to_string()
                        }
                    }
                }
            };
            retries.after_failure(failure).await?;
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

/// Serves `grpc.health.v1` on `addr` in the background (NOT_SERVING until
/// [`run`] joins a coordinator); returns the reporter for
/// [`WorkerConfig::health`] and the bound address.
///
/// # Errors
/// If the address cannot be bound.
pub async fn serve_health(
    addr: std::net::SocketAddr,
) -> Result<(tonic_health::server::HealthReporter, std::net::SocketAddr), std::io::Error> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    info!(%addr, "health service listening");
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(async move {
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await
        {
            warn!(error = %e, "health service stopped");
        }
    });
    Ok((reporter, addr))
}
