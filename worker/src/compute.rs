//! The worker's CPU work: summed gradients of each shard of a step. A large
//! step runs in `spawn_blocking`, so backprop never holds up the async
//! runtime (which keeps the stream's HTTP/2 keepalives answered during a long
//! shard); a small one (at most [`INLINE_WORK`] multiply-adds, well under a
//! millisecond) runs in place, which saves two thread wake-ups per step: on
//! a 2-core machine shared by a coordinator and 4 workers, those cost more
//! than the compute.

use std::time::{Duration, Instant};

use common::cost::Cost;
use common::dataset::Samples;
use common::kernels::KernelSet;
use common::layers::DropoutKey;
use common::schedule::ShardId;
use common::shard::{answer, AnswerForm};
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
                let (gradients, first_error) = answer(
                    &network,
                    s,
                    cost,
                    kernels,
                    AnswerForm::first_error_if(shard.ask_first_error),
                    shard.key,
                );
                ShardOutput {
                    id: shard.id,
                    samples: s.len(),
                    gradients,
                    first_error,
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

/// Steps of at most this many multiply-adds (samples × parameters) are
/// computed on the async thread: 10 samples of `[784,30,10]` are 0.24 M
/// (~25 µs); the limit, 2 M, is ~0.2 ms of compute.
pub const INLINE_WORK: usize = 2_000_000;

/// Samples × parameters of a step: its multiply-adds, roughly.
fn work(network: &Network, shards: &[ShardInput]) -> usize {
    let parameters: usize = network.weights.iter().map(|w| w.len()).sum();
    let samples: usize = shards.iter().map(|s| s.samples.len()).sum();
    samples.saturating_mul(parameters)
}
