//! The pieces of one training step, one at a time:
//! - backprop of one shard of n = 1, 3, 10, 100 samples on `[784,30,10]` and `[784,100,10]`;
//! - the reduction of 4 shard results in shard order plus the update;
//! - encoding and decoding one step's messages (weights out, gradients back).
//!
//! `cargo bench -p common --features bench --bench step`. Batch-10 epochs are 5,000 steps, so
//! 1 µs per step is 5 ms per epoch.

use std::hint::black_box;

use common::dataset::{Samples, IMAGE_SIZE};
use common::plan::TrainingPlan;
use common::schedule::{init_rng, ShardId};
use common::shard::quadratic_gradient as shard_gradients;
use common::step::reduce_and_apply as apply_step;
use common::{wire, Network};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::Rng;

fn samples(n: usize) -> Samples {
    Samples::random_seeded(n, 42)
}

fn backprop(c: &mut Criterion) {
    // as the binaries do first: reuse freed blocks rather than fault in fresh pages
    common::allocator::keep_freed_memory();
    let mut group = c.benchmark_group("shard_backprop");
    for hidden in [30, 100] {
        let net = Network::new(&[784, hidden, 10], &mut init_rng(1));
        for n in [1, 3, 10, 100] {
            let shard = samples(n);
            group.throughput(Throughput::Elements(n as u64));
            group.bench_with_input(
                BenchmarkId::new(format!("784-{hidden}-10"), n),
                &shard,
                |b, shard| b.iter(|| shard_gradients(black_box(&net), black_box(shard))),
            );
        }
    }
    group.finish();
}

fn reduce_and_update(c: &mut Criterion) {
    let net = Network::new(&[784, 30, 10], &mut init_rng(1));
    let shards: Vec<_> = [3, 3, 2, 2]
        .iter()
        .map(|&n| shard_gradients(&net, &samples(n)))
        .collect();
    c.bench_function("reduce_4_shards_and_update/784-30-10", |b| {
        b.iter_batched_ref(
            || net.clone(),
            |net| {
                let update = TrainingPlan::default().update(3.0, 50_000);
                apply_step(net, black_box(&shards), update, 10, None)
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

fn messages(c: &mut Criterion) {
    let net = Network::new(&[784, 30, 10], &mut init_rng(1));
    let shard = samples(3);
    let g = shard_gradients(&net, &shard);
    let weights = wire::encode_network(&net);
    let result = wire::encode_shard_result(0, ShardId(0), 3, &g);
    let mut group = c.benchmark_group("messages/784-30-10");
    group.throughput(Throughput::Bytes(weights.len() as u64));
    group.bench_function("encode_weights", |b| {
        b.iter(|| wire::encode_network(black_box(&net)))
    });
    group.bench_function("decode_weights", |b| {
        let mut into = Network::zeros(&net.sizes);
        b.iter(|| wire::decode_network_into(black_box(&weights), &mut into).unwrap())
    });
    group.bench_function("encode_shard", |b| {
        b.iter(|| wire::encode_shard(ShardId(0), black_box(&shard)))
    });
    group.bench_function("encode_gradients", |b| {
        b.iter(|| wire::encode_shard_result(0, ShardId(0), 3, black_box(&g)))
    });
    group.bench_function("decode_gradients", |b| {
        b.iter(|| {
            wire::decode_shard_result(
                black_box(&result),
                &net.sizes,
                3,
                common::shard::AnswerForm::Whole,
            )
            .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, backprop, reduce_and_update, messages);
criterion_main!(benches);
