//! The portable set's one product: each output a single sum over the
//! inner index in ascending order, one multiply then one add per term.

use ndarray::{Array2, ArrayView2};

/// Independent partial sums per output: enough for the compiler to keep
/// several in flight (and in vector registers) without reordering any.
const LANES: usize = 8;

/// `a (m, k) · b (k, n)`, whatever the layouts of `a` and `b`. Each
/// output adds term `c` into partial sum `c mod 8` (for the first
/// `k − k mod 8` terms), adds the 8 partial sums in order, then the rest
/// of the terms in order.
pub(super) fn dot(a: &ArrayView2<f32>, b: &ArrayView2<f32>) -> Array2<f32> {
    let ((m, k), n) = (a.dim(), b.ncols());
    assert_eq!(b.nrows(), k, "inner dimensions");
    let bt = b.t();
    let (a, b) = (a.as_standard_layout(), bt.as_standard_layout());
    let (a, b) = (
        a.as_slice().expect("standard layout"),
        b.as_slice().expect("standard layout"),
    );
    Array2::from_shape_fn((m, n), |(i, j)| {
        dot_product(&a[i * k..(i + 1) * k], &b[j * k..(j + 1) * k])
    })
}

fn dot_product(p: &[f32], q: &[f32]) -> f32 {
    let body = p.len() / LANES * LANES;
    let mut partial = [0.0f32; LANES];
    for (p, q) in p[..body]
        .chunks_exact(LANES)
        .zip(q[..body].chunks_exact(LANES))
    {
        for l in 0..LANES {
            partial[l] += p[l] * q[l];
        }
    }
    let mut sum = 0.0f32;
    for s in partial {
        sum += s;
    }
    for (p, q) in p[body..].iter().zip(&q[body..]) {
        sum += p * q;
    }
    sum
}
