//! The training loop of DESIGN.md: for each epoch, shuffle; for each
//! mini-batch, split it into logical shards, have the pool compute them, add
//! the results in shard order and apply the update; after each epoch,
//! evaluate. It knows shards and results, not gRPC: any [`WorkerPool`] drives it.

use std::sync::Arc;
use std::time::Instant;

use common::dataset::Mnist;
use common::schedule::{epoch_order, StepId};
use common::trainer::{apply_step, epoch_report, step_shards, EpochReport, TrainingPlan};
use common::Network;

use crate::pool::{PoolError, WorkerPool};

/// Trains `network` by `plan` on `data`, calling `on_epoch` after each epoch.
///
/// # Errors
/// [`PoolError`] if a step cannot be completed; `network` then holds the
/// weights after the last completed step.
pub async fn run(
    pool: &mut impl WorkerPool,
    network: &mut Network,
    data: &Arc<Mnist>,
    plan: &TrainingPlan,
    mut on_epoch: impl FnMut(&EpochReport),
) -> Result<Vec<EpochReport>, PoolError> {
    let mut reports = Vec::with_capacity(plan.epochs);
    let mut step = StepId(0);
    for epoch in 0..plan.epochs {
        let start = Instant::now();
        let order = epoch_order(plan.seed, epoch, data.training.len());
        for batch in order.chunks(plan.batch_size) {
            let shards = step_shards(&data.training, batch, plan.shards);
            let results = pool.run_step(step, network, &shards).await?;
            apply_step(network, &results, plan.eta, batch.len());
            step.0 += 1;
        }
        let train_time = start.elapsed();
        // Evaluation is ~20k feedforwards: CPU work, kept off the async threads.
        let (net, data_ref) = (network.clone(), Arc::clone(data));
        let report = tokio::task::spawn_blocking(move || {
            epoch_report(&net, &data_ref, epoch, step.0, train_time)
        })
        .await
        .expect("evaluation does not panic on validated data");
        on_epoch(&report);
        reports.push(report);
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    //! The loop with no sockets: a pool that computes shards in place, but
    //! returns them through the same shard-order contract.
    use super::*;
    use common::dataset::Samples;
    use common::trainer::{shard_gradients, train};
    use common::Gradients;

    struct InPlace;

    impl WorkerPool for InPlace {
        async fn run_step(
            &mut self,
            _: StepId,
            network: &Network,
            shards: &[Samples],
        ) -> Result<Vec<Gradients>, PoolError> {
            Ok(shards.iter().map(|s| shard_gradients(network, s)).collect())
        }
    }

    pub(crate) fn synthetic(n: usize) -> Mnist {
        use rand::Rng;
        let mut rng = common::schedule::init_rng(99);
        let samples = |n: usize, rng: &mut rand_chacha::ChaCha8Rng| Samples {
            pixels: (0..n * 784).map(|_| rng.random()).collect(),
            labels: (0..n).map(|_| rng.random_range(0..10)).collect(),
        };
        Mnist {
            training: samples(n, &mut rng),
            validation: samples(10, &mut rng),
            test: samples(20, &mut rng),
        }
    }

    #[tokio::test]
    async fn loop_equals_reference_trainer_bitwise() {
        let data = Arc::new(synthetic(95));
        let plan = TrainingPlan {
            sizes: vec![784, 8, 10],
            epochs: 2,
            batch_size: 10,
            eta: 3.0,
            shards: 4,
            seed: 5,
        };
        let mut reference = plan.initial_network();
        train(&mut reference, &data, &plan, |_| {});
        let mut net = plan.initial_network();
        let reports = run(&mut InPlace, &mut net, &data, &plan, |_| {})
            .await
            .unwrap();
        assert_eq!(net, reference);
        assert_eq!(reports.len(), 2);
        assert_eq!(
            reports[1].steps, 20,
            "95 samples in batches of 10 is 10 steps per epoch"
        );
    }
}
