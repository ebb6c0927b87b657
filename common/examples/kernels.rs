//! Times the first layer's two products at `[784, 30]` for shards of 1, 3,
//! 10 and 100 samples: `ndarray`'s `dot` against [`common::kernels`], and
//! the kernels into a reused buffer (`w·x into`) and with the update fused
//! (`δ·xᵀ descend`, the weights updated in place), as a step runs them.
//!
//! `cargo run --release -p common --example kernels`

use std::hint::black_box;
use std::time::Instant;

use common::kernels::{
    delta_dot_xt, delta_dot_xt_descend, w_dot_x, w_dot_x_into, Descend, KernelSet,
};
use ndarray::{Array2, ShapeBuilder};

fn micros(mut f: impl FnMut() -> f32) -> f64 {
    let runs = 20_000;
    let mut sink = 0.0;
    for _ in 0..runs / 10 {
        sink += f();
    }
    let start = Instant::now();
    for _ in 0..runs {
        sink += f();
    }
    black_box(sink);
    start.elapsed().as_secs_f64() * 1e6 / f64::from(runs)
}

fn main() {
    let w = Array2::from_shape_fn((30, 784), |(i, j)| ((i * 7 + j) % 13) as f32 * 0.01);
    println!(
        "n    w·x ndarray  w·x kernel   δ·xᵀ ndarray  δ·xᵀ kernel   w·x into  δ·xᵀ descend  (µs)"
    );
    let (mut z, mut scratch) = (vec![0.0; 30 * 100], Vec::new());
    let mut w_mut = w.clone();
    let descend = Descend {
        rate: 1e-9,
        decay: None,
    };
    for n in [1, 3, 10, 100] {
        let x = Array2::from_shape_fn((784, n).f(), |(i, s)| ((i + 3 * s) % 11) as f32 * 0.1);
        let d = Array2::from_shape_fn((30, n), |(j, s)| (j + s) as f32 * 0.01);
        let (x, w, d) = (black_box(&x), black_box(&w), black_box(&d));
        println!(
            "{n:<4} {:>11.2} {:>11.2} {:>14.2} {:>12.2} {:>9.2} {:>13.2}",
            micros(|| w.dot(x)[[0, 0]]),
            micros(|| w_dot_x(KernelSet::best(), w, &x.view())[[0, 0]]),
            micros(|| d.dot(&x.t())[[0, 0]]),
            micros(|| delta_dot_xt(KernelSet::best(), d, &x.view())[[0, 0]]),
            micros(|| {
                w_dot_x_into(KernelSet::best(), w, &x.view(), &mut z, &mut scratch);
                z[0]
            }),
            micros(|| {
                delta_dot_xt_descend(KernelSet::best(), &d.view(), &x.view(), &mut w_mut, descend);
                w_mut[[0, 0]]
            }),
        );
    }
}
