//! The gRPC face of the coordinator: the `ddp.v1.Trainer` service. It does
//! the handshake and then only forwards: each worker's stream becomes a
//! registry event (`Joined`), its results become `Result` events, and its end
//! a `Left` event. It knows messages and streams, not training.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::auth::{Token, METADATA_KEY};
use common::kernels::KernelSet;
use common::pb::{self, coordinator_message, worker_message};
use common::wire::{self, WireError, PROTOCOL_VERSION};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

use crate::pool::{WorkerEvent, WorkerId};
use crate::refusal::Refusal;

/// The service state shared by all streams.
#[derive(Debug, Clone)]
pub struct TrainerService {
    events: mpsc::Sender<WorkerEvent>,
    sizes: Arc<Vec<u32>>,
    run_id: Arc<str>,
    next_id: Arc<AtomicU32>,
    hello_timeout: Duration,
    /// The run's cost, told to every worker in `Welcome` (its output delta depends on it).
    cost: common::cost::Cost,
    /// The run's kernel set, told in `Welcome`; workers that do not offer it are refused.
    kernels: KernelSet,
    /// The run's chapter-6 net in its canonical text ("" for the sigmoid
    /// network of `sizes`) and its seed (for dropout masks), told in `Welcome`.
    net: Arc<str>,
    seed: u64,
}

impl TrainerService {
    /// A service that reports to `events` and announces a model of `sizes`;
    /// a stream that sends no Hello within `hello_timeout` is ended.
    pub fn new(
        events: mpsc::Sender<WorkerEvent>,
        sizes: &[usize],
        run_id: &str,
        hello_timeout: Duration,
    ) -> Self {
        Self {
            events,
            sizes: Arc::new(sizes.iter().map(|&s| s as u32).collect()),
            run_id: run_id.into(),
            next_id: Arc::new(AtomicU32::new(0)),
            hello_timeout,
            cost: common::cost::Cost::Quadratic,
            kernels: KernelSet::best(),
            net: "".into(),
            seed: 0,
        }
    }

    /// The same service announcing a chapter-6 net (if any) and the run's seed in `Welcome`.
    pub fn with_net(self, net: Option<&common::layers::NetSpec>, seed: u64) -> Self {
        let net = net.map_or_else(String::new, |n| n.to_string()).into();
        Self { net, seed, ..self }
    }

    /// The same service announcing `cost` in `Welcome` (quadratic unless set).
    pub fn with_cost(self, cost: common::cost::Cost) -> Self {
        Self { cost, ..self }
    }

    /// The same service computing with `kernels` (this CPU's best unless set).
    pub fn with_kernels(self, kernels: KernelSet) -> Self {
        Self { kernels, ..self }
    }
}

/// The interceptor that admits only requests carrying `token` (all, if `None`).
/// Failures are logged with the peer's address, never with what it sent.
pub fn authenticate(
    token: Option<Token>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |request: Request<()>| {
        let Some(token) = &token else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get(METADATA_KEY)
            .and_then(|v| v.to_str().ok());
        match presented {
            Some(value) if token.verify(value) => Ok(request),
            other => {
                let why = if other.is_some() {
                    "wrong token"
                } else {
                    "no token"
                };
                warn!(peer = ?request.remote_addr(), why, "worker refused");
                Err(Refusal::Token { why }.into())
            }
        }
    }
}

fn step_message(kind: coordinator_message::Kind) -> pb::CoordinatorMessage {
    pb::CoordinatorMessage { kind: Some(kind) }
}

fn kind_name(msg: &pb::WorkerMessage) -> &'static str {
    match msg.kind {
        Some(worker_message::Kind::Hello(_)) => "Hello",
        Some(worker_message::Kind::Result(_)) => "ShardResult",
        None => "an empty WorkerMessage",
    }
}

impl TrainerService {
    /// The stream's first message, which must be a valid Hello within the
    /// hello timeout, for a run of this service's kernel set.
    ///
    /// # Errors
    /// The refusal, as the status the worker gets.
    async fn receive_hello(
        &self,
        inbound: &mut Streaming<pb::WorkerMessage>,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<pb::Hello, Status> {
        let first = tokio::time::timeout(self.hello_timeout, inbound.message())
            .await
            .map_err(|_| Refusal::NoHello {
                waited: self.hello_timeout,
            })?
            .map_err(Refusal::Stream)?;
        let hello = match first {
            Some(pb::WorkerMessage {
                kind: Some(worker_message::Kind::Hello(hello)),
            }) => hello,
            Some(other) => {
                return Err(Refusal::from(WireError::Unexpected {
                    expected: "Hello",
                    got: kind_name(&other),
                })
                .into())
            }
            None => return Err(Refusal::ClosedBeforeHello.into()),
        };
        if let Err(e) =
            wire::check_hello(&hello).and_then(|()| wire::check_kernels(&hello, self.kernels))
        {
            // The name is not logged: it may be what was wrong (control characters).
            warn!(?peer, error = %e, "worker refused");
            return Err(Refusal::from(e).into());
        }
        Ok(hello)
    }
}

/// Forwards worker `id`'s results to the pool until its stream ends, then
/// reports it gone. Anything but a result ends the stream, and the worker
/// is told why through `outbox` (held weakly, so that dropping the
/// registry's handle ends the stream).
async fn forward_results(
    id: WorkerId,
    mut inbound: Streaming<pb::WorkerMessage>,
    events: mpsc::Sender<WorkerEvent>,
    outbox: mpsc::WeakSender<Result<pb::CoordinatorMessage, Status>>,
) {
    let weak = outbox;
    let reason = loop {
        match inbound.message().await {
            Ok(Some(pb::WorkerMessage {
                kind: Some(worker_message::Kind::Result(result)),
            })) => {
                if events
                    .send(WorkerEvent::Result { id, result })
                    .await
                    .is_err()
                {
                    return; // the registry is gone: the run is over
                }
            }
            Ok(Some(other)) => {
                let e = WireError::Unexpected {
                    expected: "ShardResult",
                    got: kind_name(&other),
                };
                if let Some(outbox) = weak.upgrade() {
                    let _ = outbox.try_send(Err(Refusal::from(e.clone()).into()));
                }
                break e.to_string();
            }
            Ok(None) => break "stream closed by the worker".to_string(),
            Err(status) => {
                let status = Status::from(Refusal::Stream(status));
                // E.g. a message over the size limit: tell the worker why its stream ends.
                if let Some(outbox) = weak.upgrade() {
                    let _ = outbox.try_send(Err(status.clone()));
                }
                break format!("stream error: {}", status.message());
            }
        }
    };
    // The pool logs losses that matter (mid-run) at warn; this is the stream's view.
    debug!(worker = %id, %reason, "worker stream ended");
    let _ = events.send(WorkerEvent::Left { id, reason }).await;
}

#[tonic::async_trait]
impl pb::trainer_server::Trainer for TrainerService {
    type TrainStream = ReceiverStream<Result<pb::CoordinatorMessage, Status>>;

    async fn train(
        &self,
        request: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::TrainStream>, Status> {
        let peer = request.remote_addr();
        let mut inbound = request.into_inner();
        let hello = self.receive_hello(&mut inbound, peer).await?;
        let id = WorkerId(self.next_id.fetch_add(1, Ordering::Relaxed));
        // Capacity: a step sends one message per worker and waits, so a few suffice;
        // a worker that lets this fill up is treated as gone (see pool).
        let (outbox, rx) = mpsc::channel(16);
        let welcome = pb::Welcome {
            worker_id: id.0,
            sizes: self.sizes.to_vec(),
            run_id: self.run_id.to_string(),
            protocol_version: PROTOCOL_VERSION,
            cost: pb::Cost::from(self.cost).into(),
            kernels: pb::Kernels::from(self.kernels).into(),
            net: self.net.to_string(),
            seed: self.seed,
        };
        outbox
            .try_send(Ok(step_message(coordinator_message::Kind::Welcome(
                welcome,
            ))))
            .map_err(|_| Status::internal("new outbox cannot be full"))?;
        let weak = outbox.downgrade();
        let joined = WorkerEvent::Joined {
            id,
            name: hello.name.clone(),
            addr: peer,
            outbox,
        };
        if self.events.send(joined).await.is_err() {
            return Err(Refusal::TrainingOver.into());
        }
        debug!(worker = %id, ?peer, name = %hello.name, "handshake done");
        tokio::spawn(forward_results(id, inbound, self.events.clone(), weak));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
