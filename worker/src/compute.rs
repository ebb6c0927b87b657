//! The worker's CPU work: summed gradients of each shard of a step. A step
//! of up to [`INLINE_WORK`] multiply-adds (tens of milliseconds) runs in
//! place on the async thread; a larger one runs in `spawn_blocking`, so a
//! long backprop never holds up the runtime, which answers the stream's
//! HTTP/2 keepalives. Running in place saves two thread wake-ups per step,
//! and on a machine whose cores are all busy it keeps the compute on the
//! core that received the step: on 2 cores with 2 workers, ch6-conv2 at
//! batch 100 (50 samples, 230 M multiply-adds a shard) trained 6% faster in
//! place than on a blocking thread, and batch 10 of it ran 1.6× as fast.

use std::time::{Duration, Instant};

use common::cost::Cost;
use common::dataset::Samples;
use common::kernels::KernelSet;
use common::layers::net::Factor;
use common::layers::DropoutKey;
use common::schedule::ShardId;
use common::shard::{answer, net_answer, AnswerForm};
use common::{Gradients, Network};

/// One shard to compute.
#[derive(Debug)]
pub struct ShardInput {
    /// Which shard.
    pub id: ShardId,
    /// Its samples.
    pub samples: Samples,
    /// Whether the coordinator asked for the first layer's error instead of
    /// its weight gradient.
    pub ask_first_error: bool,
    /// For a chapter-6 net, the fully connected layers whose weight gradient
    /// goes as its factors (validated by `wire::shard_factor_layers`).
    pub factor_layers: Vec<usize>,
    /// Its dropout masks' key (its first sample's place in the epoch).
    pub key: DropoutKey,
}

/// One computed shard.
#[derive(Debug)]
pub struct ShardOutput {
    /// Which shard.
    pub id: ShardId,
    /// Its sample count.
    pub samples: usize,
    /// Its summed gradients (the first weight matrix zero if `first_error` is set).
    pub gradients: Gradients,
    /// The first layer's error, where it was asked for.
    pub first_error: Option<Vec<f32>>,
    /// A net's factored layers (their weight matrices left empty in `gradients`).
    pub factors: Vec<Factor>,
    /// The time backprop took.
    pub compute: Duration,
}

/// Computes every shard's gradient of `cost` at `network`'s weights with
/// `kernels`, on a blocking thread unless the step is small (see the module
/// doc); hands the network back so its buffers are reused for the next step.
///
/// # Panics
/// If the blocking task panics (a bug: inputs are validated by `wire`).
pub async fn shard_gradients_blocking(
    network: Network,
    shards: Vec<ShardInput>,
    cost: Cost,
    kernels: KernelSet,
) -> (Network, Vec<ShardOutput>) {
    let inline = work(&network, &shards) <= INLINE_WORK;
    let compute = move || {
        let outputs = shards
            .iter()
            .map(|shard| {
                let (s, start) = (&shard.samples, Instant::now());
                let ((gradients, first_error), factors) = if network.net.is_some() {
                    let (g, f) = net_answer(&network, s, kernels, shard.key, &shard.factor_layers);
                    ((g, None), f)
                } else {
                    let form = AnswerForm::first_error_if(shard.ask_first_error);
                    (
                        answer(&network, s, cost, kernels, form, shard.key),
                        Vec::new(),
                    )
                };
                ShardOutput {
                    id: shard.id,
                    samples: s.len(),
                    gradients,
                    first_error,
                    factors,
                    compute: start.elapsed(),
                }
            })
            .collect();
        (network, outputs)
    };
    if inline {
        return compute();
    }
    tokio::task::spawn_blocking(compute)
        .await
        .expect("shard computation does not panic on validated input")
}

/// Steps of at most this many multiply-adds are computed on the async
/// thread: about 50 ms at the ~25 G multiply-adds/s one core reaches on
/// these products, far inside any keepalive timeout. 10 samples of
/// `[784,30,10]` are 0.7 M; 50 of ch6-conv2 are 230 M; 50 of ch6-dropout
/// are 470 M, and 500 of them (4.7 G) go to a blocking thread.
pub const INLINE_WORK: usize = 1_250_000_000;

/// A step's multiply-adds: a net's training pass per sample
/// ([`common::layers::NetSpec::multiply_adds`]), or an MLP's three products
/// per weight (forward, weight gradient, error), times the samples.
fn work(network: &Network, shards: &[ShardInput]) -> usize {
    let per_sample = match &network.net {
        Some(spec) => spec.multiply_adds(),
        None => 3 * network.weights.iter().map(|w| w.len()).sum::<usize>(),
    };
    let samples: usize = shards.iter().map(|s| s.samples.len()).sum();
    samples.saturating_mul(per_sample)
}
