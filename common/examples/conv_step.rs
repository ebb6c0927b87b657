//! Times the shard gradient of a chapter-6 net at batch 10 (or `N`), in one
//! process, on random images: `cargo run --release -p common --example
//! conv_step -- [NET] [N] [STEPS]`. Prints µs per step and samples/s, and
//! the share of one core's f32 FMA peak (given as `PEAK_GFLOPS`, default 100)
//! that the step's multiply-adds reach. `KERNELS=avx2` times one set only.

use std::time::Instant;

use common::kernels::KernelSet;
use common::layers::net::{backprop, Params};
use common::layers::{DropoutKey, NetSpec, Shape};
use ndarray::{Array2, ShapeBuilder};
use rand::{Rng, SeedableRng};

fn main() {
    common::allocator::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let text = args.get(1).map_or(
        "conv20x5,pool2,conv40x5,pool2,fc100,softmax10",
        String::as_str,
    );
    let n: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10);
    let steps: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(300);
    let peak: f64 = std::env::var("PEAK_GFLOPS")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(100.0);
    let spec = NetSpec::parse(text, Shape::MNIST).expect("a valid net");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let (mut weights, biases) = common::layers::net::initial_params(&spec, &mut rng);
    // network3 starts the softmax layer at zero, which makes every error
    // below it zero; a trained net's are not, so time with small random ones.
    let last = weights.len() - 1;
    weights[last].mapv_inplace(|_| rng.random_range(-0.1f32..0.1));
    let x = Array2::from_shape_fn((784, n).f(), |_| rng.random_range(0.0f32..1.0));
    let mut y = Array2::zeros((10, n));
    for s in 0..n {
        y[[s % 10, s]] = 1.0;
    }
    let p = Params {
        weights: &weights,
        biases: &biases,
    };
    let only = std::env::var("KERNELS")
        .ok()
        .and_then(|k| KernelSet::from_name(&k));
    for k in KernelSet::supported()
        .into_iter()
        .filter(|k| only.is_none_or(|o| o == *k))
    {
        let key = DropoutKey {
            seed: 1,
            epoch: 0,
            first: 0,
        };
        let _ = backprop(&spec, p, x.view(), y.view(), k, key);
        let start = Instant::now();
        for i in 0..steps {
            let key = DropoutKey {
                first: (i * n) as u64,
                ..key
            };
            std::hint::black_box(backprop(&spec, p, x.view(), y.view(), k, key));
        }
        let per_step = start.elapsed().as_secs_f64() / steps as f64;
        let flops = 2.0 * spec.multiply_adds() as f64 * n as f64;
        println!(
            "{k}: {text} at n = {n}: {:.0} µs/step, {:.0} samples/s, {:.1} GFLOP/s ({:.0}% of {peak} GFLOP/s)",
            per_step * 1e6,
            n as f64 / per_step,
            flops / per_step / 1e9,
            100.0 * flops / per_step / 1e9 / peak
        );
    }
}
