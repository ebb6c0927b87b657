//! Times one training step of the reference loop on real MNIST, the
//! allocating path (`split_batch`, `backprop_with`, `reduce_and_apply`) against
//! the workspace path (`StepBuffers::step`), in blocks of 500
//! steps taken in turn so both see the same machine; prints each path's
//! median and best block median per step, and checks the weights agree.
//!
//! `cargo run --release -p common --example step [BATCH] [SHARDS]`

use std::time::Instant;

use common::dataset::{fetch::default_data_dir, Mnist};
use common::network::Network;
use common::plan::TrainingPlan;
use common::schedule::{epoch_order, init_rng};
use common::step::{reduce_and_apply, split_batch, StepBuffers};
use common::Gradients;

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let batch = args.next().and_then(Result::ok).unwrap_or(10);
    let shards = args.next().and_then(Result::ok).unwrap_or(1);
    let data = match Mnist::load(&default_data_dir()) {
        Ok(d) => d,
        Err(e) => return eprintln!("no MNIST: {e}"),
    };
    let plan = TrainingPlan {
        batch_size: batch,
        shards,
        ..TrainingPlan::default()
    };
    let (k, cost) = (plan.kernels, plan.cost);
    let update = common::optimizer::Update {
        eta: 3.0,
        lambda: 0.0,
        n: 50_000,
        momentum: 0.0,
    };
    let order = epoch_order(2, 0, data.training.len());
    let batches: Vec<&[usize]> = order.chunks(batch).collect();
    let mut old = Network::new(&[784, 30, 10], &mut init_rng(2));
    let mut new = old.clone();
    let mut buffers = StepBuffers::default();
    let (mut t_old, mut t_new) = (Vec::new(), Vec::new());
    let block = 500.min(batches.len() / 2);
    let mut next = 0;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for _round in 0..(batches.len() / block).min(20) {
        let steps = &batches[next..next + block];
        let mut times = Vec::with_capacity(block);
        for b in steps {
            let start = Instant::now();
            let results: Vec<Gradients> = split_batch(&data.training, b, shards)
                .iter()
                .map(|s| old.backprop_with(s.inputs().view(), s.targets().view(), cost, k))
                .collect();
            reduce_and_apply(&mut old, &results, update, b.len(), None);
            times.push(start.elapsed().as_secs_f64());
        }
        t_old.push(median(&mut times));
        times.clear();
        for (i, b) in steps.iter().enumerate() {
            let start = Instant::now();
            if let Some(next) = steps.get(i + 1) {
                common::workspace::Workspace::prefetch(&data.training, next);
            }
            buffers.step(
                &mut new,
                &data.training,
                b,
                &plan,
                update,
                None,
                plan.dropout_key(0, 0),
            );
            times.push(start.elapsed().as_secs_f64());
        }
        t_new.push(median(&mut times));
        next += block;
    }
    assert_eq!(old, new, "the two paths give the same weights");
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "batch {batch}, {shards} shard(s), {} blocks of {block} steps, µs per step:",
        t_old.len()
    );
    println!(
        "  allocating: median {:.1}, best {:.1}",
        1e6 * median(&mut t_old.clone()),
        1e6 * best(&t_old)
    );
    println!(
        "  workspace:  median {:.1}, best {:.1}",
        1e6 * median(&mut t_new.clone()),
        1e6 * best(&t_new)
    );
}
