//! One connection to the coordinator: Hello → Welcome, then Step → compute →
//! ShardResult, until Shutdown.

use common::pb::{self, coordinator_message, trainer_client::TrainerClient, worker_message};
use common::wire::{self, WireError, PROTOCOL_VERSION};
use std::time::{Duration, Instant};

use common::layers::DropoutKey;
use common::Network;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tracing::{debug, info, warn};

use crate::compute::{shard_gradients_blocking, ShardInput};
use crate::{Fault, WorkerConfig};
use common::auth::METADATA_KEY;
use tonic::metadata::{Ascii, MetadataValue};

/// Why a session ended without Shutdown.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The coordinator ended the stream with a status.
    #[error("coordinator said {:?}: {}", .0.code(), .0.message())]
    Status(Status),
    /// The coordinator sent something this worker cannot accept.
    #[error("bad message from the coordinator: {0}")]
    Wire(#[from] WireError),
    /// The stream ended without Shutdown.
    #[error("the coordinator closed the stream without Shutdown")]
    Closed,
    /// An injected fault ended the session at this step.
    #[error("injected exit at step {0}")]
    InjectedExit(u64),
}

impl SessionError {
    /// True if retrying cannot help: the coordinator rejected this worker or
    /// its messages, or speaks another protocol.
    pub fn is_refusal(&self) -> bool {
        match self {
            SessionError::Status(s) => matches!(
                s.code(),
                Code::FailedPrecondition
                    | Code::DataLoss
                    | Code::InvalidArgument
                    | Code::Unauthenticated
                    | Code::PermissionDenied
            ),
            SessionError::Wire(
                WireError::ProtocolVersion { .. }
                | WireError::Sizes { .. }
                | WireError::Kernels { .. }
                | WireError::UnknownKernels { .. }
                | WireError::SizesMismatch { .. },
            ) => true,
            SessionError::Wire(_) | SessionError::Closed | SessionError::InjectedExit(_) => false,
        }
    }
}

impl From<Status> for SessionError {
    fn from(s: Status) -> Self {
        SessionError::Status(s)
    }
}

/// Silent data corruption, on purpose: flips the lowest mantissa bit of
/// the first output-layer bias gradient; returns the value it now has.
fn corrupt(g: &mut common::Gradients) -> f32 {
    let v = g
        .nabla_b
        .last_mut()
        .and_then(|b| b.iter_mut().next())
        .expect("a network has an output bias");
    *v = f32::from_bits(v.to_bits() ^ 1);
    *v
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn result_message(result: pb::ShardResult) -> pb::WorkerMessage {
    pb::WorkerMessage {
        kind: Some(worker_message::Kind::Result(result)),
    }
}

/// Runs one session on `channel`; returns the coordinator's shutdown reason.
///
/// # Errors
/// [`SessionError`] if the session ends any other way.
/// Sets `joined` once the coordinator's Welcome arrived (so the caller can
/// tell a lost session from a failed attempt).
pub async fn run(
    channel: Channel,
    config: &WorkerConfig,
    joined: &mut bool,
) -> Result<String, SessionError> {
    let (tx, mut inbound) = open(channel, config).await?;
    let (run, mut network) = receive_welcome(&mut inbound, config).await?;
    *joined = true;
    config.set_joined(true).await;
    while let Some(msg) = inbound.message().await? {
        match msg.kind {
            Some(coordinator_message::Kind::Step(step)) => {
                injected_fault(config.fault, step.step_id, &mut inbound).await?;
                network = run.answer(step, network, &tx).await?;
            }
            Some(coordinator_message::Kind::Shutdown(s)) => {
                // Close our half, then let the coordinator close its half, so the
                // stream ends with OK rather than a reset.
                drop(tx);
                let drained = tokio::time::timeout(Duration::from_secs(5), async {
                    while let Ok(Some(_)) = inbound.message().await {}
                });
                let _ = drained.await;
                return Ok(s.reason);
            }
            Some(coordinator_message::Kind::Welcome(_)) => {
                return Err(WireError::Unexpected {
                    expected: "Step or Shutdown",
                    got: "a second Welcome",
                }
                .into())
            }
            None => {
                return Err(WireError::Unexpected {
                    expected: "Step or Shutdown",
                    got: "an empty message",
                }
                .into())
            }
        }
    }
    Err(SessionError::Closed)
}

/// Where results go, and the coordinator's messages come from.
type Stream = (
    mpsc::Sender<pb::WorkerMessage>,
    tonic::Streaming<pb::CoordinatorMessage>,
);

/// Opens the Train stream on `channel` (with the token, if any) and sends Hello.
async fn open(channel: Channel, config: &WorkerConfig) -> Result<Stream, SessionError> {
    let auth = config
        .token
        .as_ref()
        .map(|t| t.header_value().parse::<MetadataValue<Ascii>>());
    // Token::new admits printable ASCII only, which is always a valid header value.
    let auth = auth.transpose().expect("token is a valid header value");
    let with_token = move |mut request: tonic::Request<()>| {
        if let Some(value) = &auth {
            request.metadata_mut().insert(METADATA_KEY, value.clone());
        }
        Ok(request)
    };
    let mut client = TrainerClient::with_interceptor(channel, with_token)
        .max_decoding_message_size(wire::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(wire::MAX_MESSAGE_BYTES);
    let (tx, rx) = mpsc::channel(64);
    let hello = pb::Hello {
        name: config.name.clone(),
        protocol_version: PROTOCOL_VERSION,
        kernels: wire::hello_kernels(&config.offered_kernels()),
    };
    tx.send(pb::WorkerMessage {
        kind: Some(worker_message::Kind::Hello(hello)),
    })
    .await
    .map_err(|_| SessionError::Closed)?;
    let inbound = client.train(ReceiverStream::new(rx)).await?.into_inner();
    Ok((tx, inbound))
}

/// What the Welcome says the run computes with.
struct Joined {
    cost: common::cost::Cost,
    kernels: common::kernels::KernelSet,
    /// The run's seed, for dropout masks.
    seed: u64,
    fault: Option<Fault>,
}

/// Waits for the Welcome and checks it; returns the run and a network of
/// its shape (its weights come with each Step).
async fn receive_welcome(
    inbound: &mut tonic::Streaming<pb::CoordinatorMessage>,
    config: &WorkerConfig,
) -> Result<(Joined, Network), SessionError> {
    let welcome = match inbound.message().await? {
        Some(pb::CoordinatorMessage {
            kind: Some(coordinator_message::Kind::Welcome(w)),
        }) => w,
        Some(_) => {
            return Err(WireError::Unexpected {
                expected: "Welcome",
                got: "another message",
            }
            .into())
        }
        None => return Err(SessionError::Closed),
    };
    let sizes = wire::decode_welcome(&welcome)?;
    let net = wire::welcome_net(&welcome)?;
    let cost = wire::welcome_cost(&welcome)?;
    let kernels = wire::welcome_kernels(&welcome)?.unwrap_or(config.offered_kernels()[0]);
    if !config.offered_kernels().contains(&kernels) {
        // A coordinator that ignored this worker's Hello.
        return Err(WireError::Kernels {
            run: kernels,
            offered: config
                .offered_kernels()
                .iter()
                .map(|k| k.name())
                .collect::<Vec<_>>()
                .join(", "),
        }
        .into());
    }
    let described = net
        .as_ref()
        .map_or_else(|| format!("{sizes:?}"), |n| n.to_string());
    info!(worker = welcome.worker_id, run = %welcome.run_id, model = %described, %cost, %kernels, "joined");
    let network = match &net {
        Some(spec) => Network::for_net(spec),
        None => Network::zeros(&sizes),
    };
    let joined = Joined {
        cost,
        kernels,
        seed: welcome.seed,
        fault: config.fault,
    };
    Ok((joined, network))
}

/// The exit and stall faults (`--exit-at-step`, `--stall-at-step`), at step `step_id`.
async fn injected_fault(
    fault: Option<Fault>,
    step_id: u64,
    inbound: &mut tonic::Streaming<pb::CoordinatorMessage>,
) -> Result<(), SessionError> {
    match fault {
        Some(Fault::ExitAtStep(n)) if step_id == n => {
            warn!(step = n, "injected fault: exiting mid-step");
            Err(SessionError::InjectedExit(n))
        }
        Some(Fault::StallAtStep(n)) if step_id == n => {
            warn!(
                step = n,
                "injected fault: going silent until the coordinator drops this worker"
            );
            let ended = loop {
                match inbound.message().await {
                    Ok(Some(_)) => continue, // heard, never answered
                    Ok(None) => break "closed".to_string(),
                    Err(status) => break status.message().to_string(),
                }
            };
            info!(%ended, "dropped by the coordinator while silent");
            Err(SessionError::InjectedExit(n))
        }
        _ => Ok(()),
    }
}

impl Joined {
    /// Computes `step`'s shards on `network` (which takes the Step's
    /// weights) and sends one ShardResult per shard; returns the network.
    async fn answer(
        &self,
        step: pb::Step,
        mut network: Network,
        tx: &mpsc::Sender<pb::WorkerMessage>,
    ) -> Result<Network, SessionError> {
        let decode_start = Instant::now();
        let shards = wire::decode_step(&step, &mut network)?;
        let mut inputs = Vec::with_capacity(shards.len());
        for ((id, samples), shard) in shards.into_iter().zip(&step.shards) {
            inputs.push(ShardInput {
                id,
                samples,
                ask_first_error: shard.ask_first_error,
                factor_layers: wire::shard_factor_layers(shard, network.net.as_ref())?,
                key: DropoutKey {
                    seed: self.seed,
                    epoch: step.epoch,
                    first: shard.position,
                },
            });
        }
        let shards = inputs;
        // Each result carries its share of the Step's decoding.
        let decode_share = decode_start.elapsed() / shards.len().max(1) as u32;
        debug!(step = step.step_id, shards = shards.len(), "step");
        let (network, mut outputs) =
            shard_gradients_blocking(network, shards, self.cost, self.kernels).await;
        if let (Some(f), Some(out)) = (self.fault, outputs.first_mut()) {
            if f.corrupts(step.step_id) {
                let flipped = corrupt(&mut out.gradients);
                warn!(
                    step = step.step_id,
                    shard = out.id.0,
                    flipped,
                    "injected fault: one gradient bit flipped"
                );
            }
        }
        for out in outputs {
            let encode_start = Instant::now();
            let (s, g, e) = (step.step_id, &out.gradients, out.first_error.as_deref());
            let mut result = if out.factors.is_empty() {
                wire::encode_shard_answer(s, out.id, out.samples, g, e)
            } else {
                wire::encode_net_answer(s, out.id, out.samples, g, &out.factors)
            };
            result.compute_nanos = nanos(out.compute);
            result.codec_nanos = nanos(decode_share + encode_start.elapsed());
            tx.send(result_message(result))
                .await
                .map_err(|_| SessionError::Closed)?;
        }
        Ok(network)
    }
}
