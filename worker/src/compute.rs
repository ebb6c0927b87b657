//! The worker's CPU work: summed gradients of each shard of a step. Runs in
//! `spawn_blocking` so backprop never holds up the async runtime (which keeps
//! the stream's HTTP/2 keepalives answered during a long shard).

use std::time::{Duration, Instant};

use common::cost::Cost;
use common::dataset::Samples;
use common::kernels::KernelSet;
use common::schedule::ShardId;
use common::trainer::shard_gradients_with;
use common::{Gradients, Network};

/// One computed shard: its id, sample count, summed gradients and the time backprop took.
pub type ShardOutput = (ShardId, usize, Gradients, Duration);

/// Computes every shard's gradient of `cost` at `network`'s weights with `kernels` on a blocking thread; hands the
/// network back so its buffers are reused for the next step.
///
/// # Panics
/// If the blocking task panics (a bug: inputs are validated by `wire`).
pub async fn shard_gradients_blocking(
    network: Network,
    shards: Vec<(ShardId, Samples)>,
    cost: Cost,
    kernels: KernelSet,
) -> (Network, Vec<ShardOutput>) {
    tokio::task::spawn_blocking(move || {
        let outputs = shards
            .iter()
            .map(|(id, s)| {
                let start = Instant::now();
                let g = shard_gradients_with(&network, s, cost, kernels);
                (*id, s.len(), g, start.elapsed())
            })
            .collect();
        (network, outputs)
    })
    .await
    .expect("shard computation does not panic on validated input")
}
