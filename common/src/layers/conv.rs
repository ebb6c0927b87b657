//! The data movement of a ConvPoolLayer, around the kernel set's products:
//! - [`patches`] (im2col): every K×K window of a shard's images as one
//!   column, so the convolution is one product `w · patches`;
//! - [`input_error`] (col2im): the gradient of the images from the error of
//!   the pooled maps;
//! - [`max_pool`]: P×P max-pooling, whose gradient goes to the first largest
//!   value of each window (PyTorch's choice): [`filter_gradient`] and
//!   [`input_error`] take the conv layer's backward products only over the
//!   values that won their window.
//!
//! Legend: `C` input channels, `H × W` input map, `K` filter side, `OH × OW
//! = (H−K+1) × (W−K+1)` the convolution's map, `P` pool side, `PH × PW =
//! OH/P × OW/P` the pooled map, `N` filters, `n` samples. A patch column is
//! `(s, oy, ox)` in that order, its rows `(c, ky, kx)`; maps are
//! channel-major, row-major. Convolution here is cross-correlation (no
//! filter flip), as in PyTorch; Theano's `conv2d` in network3.py flips,
//! which for training from scratch only relabels the weights.

use ndarray::{Array2, ArrayView2, ShapeBuilder};

use crate::layers::spec::Shape;

/// The convolution's output map side lengths `(OH, OW)`.
pub fn conv_map(input: Shape, k: usize) -> (usize, usize) {
    (input.height + 1 - k, input.width + 1 - k)
}

/// Where each row of a window starts, relative to the window's corner: one
/// run of `K` pixels per `(channel, ky)`, in the patch's row order.
fn run_offsets(input: Shape, k: usize) -> Vec<usize> {
    let (h, w) = (input.height, input.width);
    (0..input.channels)
        .flat_map(|ch| (0..k).map(move |ky| (ch * h + ky) * w))
        .collect()
}

/// Copies each run of the window at `corner` of `image` into `patch`.
fn copy_runs<const K: usize>(patch: &mut [f32], image: &[f32], corner: usize, offsets: &[usize]) {
    for (dst, &off) in patch.chunks_exact_mut(K).zip(offsets) {
        let src: &[f32; K] = image[corner + off..corner + off + K]
            .try_into()
            .expect("K values");
        let dst: &mut [f32; K] = dst.try_into().expect("K values");
        *dst = *src;
    }
}

/// Adds each run of `patch` to the window at `corner` of `image`.
fn add_runs<const K: usize>(image: &mut [f32], patch: &[f32], corner: usize, offsets: &[usize]) {
    for (src, &off) in patch.chunks_exact(K).zip(offsets) {
        let dst: &mut [f32; K] = (&mut image[corner + off..corner + off + K])
            .try_into()
            .expect("K values");
        for (d, &v) in dst.iter_mut().zip(src) {
            *d += v;
        }
    }
}

/// A run operation for a filter side known when compiling (the usual 3
/// and 5, so each run is a few moves, not a call to `memcpy`) or any other.
macro_rules! with_k {
    ($k:expr, $f:ident, $($arg:expr),*) => {
        match $k {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            7 => $f::<7>($($arg),*),
            _ => $f::<0>($($arg),*),
        }
    };
}

/// [`copy_runs`] or [`add_runs`] for any `k`: `K = 0` stands for "not
/// known when compiling" and takes runs of `patch.len() / offsets.len()`.
fn copy_runs_any(patch: &mut [f32], image: &[f32], corner: usize, offsets: &[usize]) {
    let k = patch.len() / offsets.len();
    for (dst, &off) in patch.chunks_exact_mut(k).zip(offsets) {
        dst.copy_from_slice(&image[corner + off..corner + off + k]);
    }
}

fn add_runs_any(image: &mut [f32], patch: &[f32], corner: usize, offsets: &[usize]) {
    let k = patch.len() / offsets.len();
    for (src, &off) in patch.chunks_exact(k).zip(offsets) {
        for (d, &v) in image[corner + off..corner + off + k].iter_mut().zip(src) {
            *d += v;
        }
    }
}

fn copy_window<const K: usize>(patch: &mut [f32], image: &[f32], corner: usize, offsets: &[usize]) {
    if K == 0 {
        copy_runs_any(patch, image, corner, offsets)
    } else {
        copy_runs::<K>(patch, image, corner, offsets)
    }
}

fn add_window<const K: usize>(image: &mut [f32], patch: &[f32], corner: usize, offsets: &[usize]) {
    if K == 0 {
        add_runs_any(image, patch, corner, offsets)
    } else {
        add_runs::<K>(image, patch, corner, offsets)
    }
}

/// `(C·K·K, n·OH·OW)` patches of the images `x` `(C·H·W, n)`, column-major.
pub fn patches(x: ArrayView2<f32>, input: Shape, k: usize) -> Array2<f32> {
    let (oh, ow) = conv_map(input, k);
    let (rows, n, w) = (input.channels * k * k, x.ncols(), input.width);
    let offsets = run_offsets(input, k);
    let x = x.t();
    let x = x.as_standard_layout(); // (n, C·H·W): each sample contiguous
    let mut out = vec![0.0f32; rows * n * oh * ow];
    let mut patch = out.chunks_exact_mut(rows);
    for image in x.rows() {
        let image = image.to_slice().expect("standard layout");
        for oy in 0..oh {
            for ox in 0..ow {
                let dst = patch.next().expect("one patch per window");
                with_k!(k, copy_window, dst, image, oy * w + ox, &offsets);
            }
        }
    }
    Array2::from_shape_vec((rows, n * oh * ow).f(), out).expect("rows × columns values")
}

/// The gradient of a conv layer's input images `(C·H·W, n)`, column-major,
/// from `d`, the error of its pooled maps `(N·PH·PW, n)`, the columns
/// `from` that [`max_pool`] took each pooled value from, and the weights
/// `w` `(N, C·K·K)`. Sample by sample: first the gradient of each of its
/// patches, a sum over the pooled values that won there (filters in order,
/// separate multiplies and adds, zero errors skipped); then each patch's
/// gradient is added back to its pixels, patches in `(oy, ox)` order, rows
/// in `(c, ky, kx)` order.
pub fn input_error(
    d: &Array2<f32>,
    from: &[u32],
    w: &Array2<f32>,
    input: Shape,
    k: usize,
) -> Array2<f32> {
    let (per_sample, n) = d.dim();
    let (filters, rows) = w.dim();
    let per_filter = per_sample / filters;
    let (oh, ow) = conv_map(input, k);
    let (windows, len) = (oh * ow, input.len());
    let offsets = run_offsets(input, k);
    let dt = d.t();
    let (dt, w) = (dt.as_standard_layout(), w.as_standard_layout());
    let (ds, ws) = (
        dt.as_slice().expect("standard layout"),
        w.as_slice().expect("standard layout"),
    );
    let mut dp = vec![0.0f32; windows * rows]; // one sample's patch gradients, reused
    let mut terms = Vec::with_capacity(per_sample);
    let mut out = vec![0.0f32; len * n];
    for (s, image) in out.chunks_exact_mut(len).enumerate() {
        dp.fill(0.0);
        let errors = &ds[s * per_sample..(s + 1) * per_sample];
        terms.clear();
        for (i, (&g, &column)) in errors.iter().zip(&from[s * per_sample..]).enumerate() {
            if g != 0.0 {
                let window = column as usize - s * windows;
                terms.push((g, window as u32, (i / per_filter) as u32));
            }
        }
        accumulate(&mut dp, ws, rows, &terms);
        for (window, patch) in dp.chunks_exact(rows).enumerate() {
            let corner = (window / ow) * input.width + window % ow;
            with_k!(k, add_window, image, patch, corner, &offsets);
        }
    }
    Array2::from_shape_vec((len, n).f(), out).expect("len × n values")
}

/// The gradient of a conv layer's weights `(N, C·K·K)` from `d`, the error
/// of its pooled maps `(N·PH·PW, n)` column-major, the columns `from` that
/// [`max_pool`] took each pooled value from, and the layer's patches `(C·K·K,
/// columns)` column-major. Only the convolution outputs that won their
/// window have an error, so this is a sum over the pooled values: filter
/// `f`'s row adds `d · patch` for each of its pooled values in `(s, py, px)`
/// order, with separate multiplies and adds (the same bits on every CPU),
/// skipping zero errors (which add nothing). A quarter of the dense `δ·xᵀ`
/// at P = 2.
pub fn filter_gradient(
    d: &Array2<f32>,
    from: &[u32],
    patches: &Array2<f32>,
    filters: usize,
) -> Array2<f32> {
    let (per_sample, n) = d.dim();
    let per_filter = per_sample / filters;
    let rows = patches.nrows();
    // Column by column, whatever the arrays' layouts (a view when they already are).
    let (dt, pt) = (d.t(), patches.t());
    let (dt, pt) = (dt.as_standard_layout(), pt.as_standard_layout());
    let (ds, ps) = (
        dt.as_slice().expect("standard layout"),
        pt.as_slice().expect("standard layout"),
    );
    let mut terms = Vec::with_capacity(ds.len());
    for s in 0..n {
        for i in 0..per_sample {
            let g = ds[s * per_sample + i];
            if g != 0.0 {
                terms.push((g, (i / per_filter) as u32, from[s * per_sample + i]));
            }
        }
    }
    let mut out = vec![0.0f32; filters * rows];
    accumulate(&mut out, ps, rows, &terms);
    Array2::from_shape_vec((filters, rows), out).expect("filters × rows values")
}

/// Filters of at least this many weights (`C·K·K`) take the sum over the
/// pooled winners for their gradient ([`filter_gradient`]); smaller ones
/// the kernel set's product of the unpooled error ([`unpool`]) and the
/// patches. Measured on ch6-conv2 at n = 10: conv20x5's 25 weights were
/// faster as a product, conv40x5's 500 as the sum.
pub const SPARSE_MIN_ROWS: usize = 64;

/// The error of the convolution's output `(N, columns)` from `d`, the error
/// of the pooled maps `(N·PH·PW, n)`: each pooled value's goes to the column
/// [`max_pool`] took it from; the rest are zero.
pub fn unpool(d: &Array2<f32>, from: &[u32], filters: usize, columns: usize) -> Array2<f32> {
    let (per_sample, n) = d.dim();
    let per_filter = per_sample / filters;
    let mut out = Array2::zeros((filters, columns));
    for s in 0..n {
        for i in 0..per_sample {
            out[[i / per_filter, from[s * per_sample + i] as usize]] = d[[i, s]];
        }
    }
    out
}

/// `dst[a] += g · src[b]`, each a run of `rows` values, for every term
/// `(g, a, b)` in order, with separate multiplies and adds. Each value's
/// operations are the same at any vector width, so the AVX2 build of the
/// loop (taken where the CPU has AVX2) and the plain one give the same bits.
fn accumulate(dst: &mut [f32], src: &[f32], rows: usize, terms: &[(f32, u32, u32)]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: this CPU has AVX2.
        return unsafe { accumulate_avx2(dst, src, rows, terms) };
    }
    accumulate_plain(dst, src, rows, terms)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn accumulate_avx2(dst: &mut [f32], src: &[f32], rows: usize, terms: &[(f32, u32, u32)]) {
    accumulate_plain(dst, src, rows, terms)
}

#[inline(always)]
fn accumulate_plain(dst: &mut [f32], src: &[f32], rows: usize, terms: &[(f32, u32, u32)]) {
    for &(g, a, b) in terms {
        let (a, b) = (a as usize * rows, b as usize * rows);
        for (d, &v) in dst[a..a + rows].iter_mut().zip(&src[b..b + rows]) {
            *d += g * v;
        }
    }
}

/// P×P max-pooling of the convolution's output `z` `(N, n·OH·OW)`: the
/// pooled maps `(N·PH·PW, n)`, column-major, and for each pooled value the
/// column of `z` it came from (the first largest of its window, scanned
/// row by row).
pub fn max_pool(
    z: &Array2<f32>,
    map: (usize, usize),
    p: usize,
    n: usize,
) -> (Array2<f32>, Vec<u32>) {
    let (filters, (oh, ow)) = (z.nrows(), map);
    let (ph, pw) = (oh / p, ow / p);
    let per_sample = filters * ph * pw;
    let (mut pooled, mut from) = (vec![0.0f32; per_sample * n], vec![0u32; per_sample * n]);
    let z = z.as_standard_layout();
    let zs = z.as_slice().expect("standard layout");
    let columns = z.ncols();
    for f in 0..filters {
        let row = &zs[f * columns..(f + 1) * columns];
        for s in 0..n {
            for py in 0..ph {
                for px in 0..pw {
                    let corner = (s * oh + py * p) * ow + px * p;
                    let (best, value) = if p == 2 {
                        first_max_2x2(row, corner, ow)
                    } else {
                        first_max(row, corner, ow, p)
                    };
                    let at = s * per_sample + (f * ph + py) * pw + px;
                    pooled[at] = value;
                    from[at] = best as u32;
                }
            }
        }
    }
    let pooled = Array2::from_shape_vec((per_sample, n).f(), pooled).expect("pooled values");
    (pooled, from)
}

/// The first largest value of the P×P window at `corner` of a map `ow`
/// wide, scanned row by row, and its index (a NaN is never taken).
fn first_max(row: &[f32], corner: usize, ow: usize, p: usize) -> (usize, f32) {
    let (mut best, mut value) = (corner, row[corner]);
    for dy in 0..p {
        let line = corner + dy * ow;
        for (dx, &v) in row[line..line + p].iter().enumerate() {
            if v > value {
                (best, value) = (line + dx, v);
            }
        }
    }
    (best, value)
}

/// [`first_max`] of a 2×2 window, as selects rather than branches: which
/// value wins is data, and a mispredicted branch per comparison made
/// pooling a tenth of a conv step.
#[inline(always)]
fn first_max_2x2(row: &[f32], corner: usize, ow: usize) -> (usize, f32) {
    let below = corner + ow;
    let (mut best, mut value) = (corner, row[corner]);
    for at in [corner + 1, below, below + 1] {
        let v = row[at];
        let wins = v > value;
        best = if wins { at } else { best };
        value = if wins { v } else { value };
    }
    (best, value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A window's values drawn from a few, so ties are common, with NaNs and ±0.
    fn value() -> impl Strategy<Value = f32> {
        prop_oneof![
            Just(f32::NAN),
            Just(0.0),
            Just(-0.0),
            Just(1.0),
            Just(-1.0),
            any::<f32>(),
        ]
    }

    proptest! {
        /// The 2×2 fast path picks the same value and index as the general scan.
        #[test]
        fn pooling_2x2_takes_what_the_general_scan_takes(
            map in prop::collection::vec(value(), 16),
            corner in 0usize..3,
            line in 0usize..3,
        ) {
            let corner = line * 4 + corner;
            let (fast, slow) = (first_max_2x2(&map, corner, 4), first_max(&map, corner, 4, 2));
            prop_assert_eq!(fast.0, slow.0);
            prop_assert_eq!(fast.1.to_bits(), slow.1.to_bits());
        }
    }
}
