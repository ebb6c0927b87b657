//! The data movement of a ConvPoolLayer, around the kernel set's products:
//! - patches (im2col, [`conv_pool`]): every K×K window of a shard's images as one
//!   column, so the convolution is one product `w · patches`;
//! - [`input_error`] (col2im): the gradient of the images from the error of
//!   the pooled maps;
//! - [`max_pool`]: P×P max-pooling, whose gradient goes to the first largest
//!   value of each window (PyTorch's choice): the filter gradient and
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

use ndarray::{s, Array2, ArrayView2, ShapeBuilder};

use crate::kernels::{self, KernelSet};
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

/// Samples per chunk of [`conv_pool`] and [`sparse_backward`]: a chunk's
/// patches (128 KB a sample for conv40x5 over 20 maps), and the copy the
/// product packs of them, stay in a core's L2 cache between being written
/// and being read.
pub const CHUNK_SAMPLES: usize = 4;

/// Whether the patches of `n` samples of a conv layer over `input` with
/// `k`×`k` filters fit in a core's caches (2 MB: conv40x5 over 20 maps
/// has 128 KB a sample). Those of a larger shard are computed
/// [`CHUNK_SAMPLES`] at a time and made again chunk by chunk for the sum
/// over the winners ([`sparse_backward`]): at 100 samples of ch6-conv2 that
/// was 4-10% faster than reading them back from memory, and at 50 samples
/// on 2 workers sharing a cache 5-9%. A shard whose patches fit goes whole
/// and keeps them: chunks and making them again cost 1-5% at 5 and 10
/// samples.
pub fn patches_fit_in_cache(input: Shape, k: usize, n: usize) -> bool {
    let (oh, ow) = conv_map(input, k);
    let values = n.saturating_mul(oh * ow * input.channels * k * k);
    values.saturating_mul(size_of::<f32>()) <= 2 << 20
}

/// The convolution and max-pooling of a shard's images `x` `(C·H·W, n)` by
/// the filters `w` `(N, C·K·K)` with the kernel set `set`, up to `chunk`
/// samples at a time (in even chunks): [`max_pool`] of `w · patches` `(N,
/// n·OH·OW)`, and with `keep_patches` the patches `(C·K·K, n·OH·OW)` for the
/// backward pass (without, one chunk's buffer is reused). Chunks change no
/// bit: a product whose columns the kernels group is computed whole
/// ([`kernels::columns_apart`]).
pub fn conv_pool(
    x: ArrayView2<f32>,
    (w, set): (&Array2<f32>, KernelSet),
    input: Shape,
    (k, p): (usize, usize),
    (chunk, keep_patches): (usize, bool),
) -> (Option<Array2<f32>>, Array2<f32>, Vec<u32>) {
    let n = x.ncols();
    let (oh, ow) = conv_map(input, k);
    let (rows, windows) = (input.channels * k * k, oh * ow);
    let mut patch_values = Vec::new();
    let (mut pooled, mut from) = (Vec::new(), Vec::new());
    let whole = n * windows;
    let chunk = if kernels::columns_apart(set, whole) {
        chunk
    } else {
        n
    };
    for samples in chunks(n, chunk) {
        let columns = samples.start * windows..samples.end * windows;
        let first = if keep_patches {
            columns.start * rows
        } else {
            0
        };
        // grown a chunk at a time, so its zeros are written where it is used: in cache
        patch_values.resize(first + columns.len() * rows, 0.0);
        let part = &mut patch_values[first..];
        patches_into(x.slice(s![.., samples.clone()]), input, k, part);
        let part =
            ArrayView2::from_shape((rows, columns.len()).f(), part).expect("a chunk's patches");
        let z = kernels::w_dot_x_block(set, w, &part, whole);
        let (chunk_pooled, chunk_from) = max_pool(&z, (oh, ow), p, samples.len());
        pooled.extend_from_slice(chunk_pooled.as_slice_memory_order().expect("contiguous"));
        let offset = u32::try_from(columns.start).expect("a shard's columns are u32 indices");
        from.extend(chunk_from.iter().map(|&c| c + offset));
    }
    let per_sample = w.nrows() * (oh / p) * (ow / p);
    let patches = keep_patches
        .then(|| Array2::from_shape_vec((rows, n * windows).f(), patch_values).expect("patches"));
    let pooled = Array2::from_shape_vec((per_sample, n).f(), pooled).expect("pooled values");
    (patches, pooled, from)
}

/// A conv layer's weight gradient (the sum over the pooled winners) and, if `want_input_error`,
/// its [`input_error`], from its input images `x` `(C·H·W, n)` and the error
/// `d` of its pooled maps `(N·PH·PW, n)`: `chunk` samples at a time, from
/// the `kept` patches, or (for a shard whose patches would be out of cache
/// by now) patches made again for each chunk. Both sums run over the
/// samples in order, so chunking changes no bit.
pub fn sparse_backward(
    (x, kept): (ArrayView2<f32>, Option<&Array2<f32>>),
    (d, from): (&Array2<f32>, &[u32]),
    w: &Array2<f32>,
    (input, k): (Shape, usize),
    (chunk, want_input_error): (usize, bool),
) -> (Array2<f32>, Option<Array2<f32>>) {
    let ((per_sample, n), (filters, rows)) = (d.dim(), w.dim());
    let windows = {
        let (oh, ow) = conv_map(input, k);
        oh * ow
    };
    let (mut nabla_w, mut input_errors) = (vec![0.0f32; filters * rows], Vec::new());
    let mut patches = Vec::new();
    let mut chunk_from = Vec::new();
    for samples in chunks(n, chunk) {
        let (d, offset) = (
            d.slice(s![.., samples.clone()]),
            u32::try_from(samples.start * windows).expect("a shard's columns are u32 indices"),
        );
        chunk_from.clear();
        chunk_from.extend(
            from[samples.start * per_sample..samples.end * per_sample]
                .iter()
                .map(|&c| c - offset),
        );
        let columns = offset as usize..offset as usize + samples.len() * windows;
        let part = match kept.and_then(|p| p.as_slice_memory_order()) {
            Some(all) => &all[columns.start * rows..columns.end * rows],
            None => {
                patches.resize(columns.len() * rows, 0.0);
                patches_into(x.slice(s![.., samples]), input, k, &mut patches);
                &patches
            }
        };
        add_filter_gradient(&mut nabla_w, d, &chunk_from, part, rows);
        if want_input_error {
            let part = input_error(d, &chunk_from, w, input, k);
            input_errors.extend_from_slice(part.as_slice_memory_order().expect("contiguous"));
        }
    }
    let nabla_w = Array2::from_shape_vec((filters, rows), nabla_w).expect("filters × rows values");
    let input_error = want_input_error.then(|| {
        Array2::from_shape_vec((input.len(), n).f(), input_errors).expect("len × n values")
    });
    (nabla_w, input_error)
}

/// `0..n` in as few consecutive ranges of at most `chunk` samples as can
/// be, their lengths as even as can be (so no short last chunk).
fn chunks(n: usize, chunk: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let count = n.div_ceil(chunk.max(1));
    let (base, longer) = (n / count.max(1), n % count.max(1));
    (0..count).scan(0, move |start, i| {
        let range = *start..*start + base + usize::from(i < longer);
        *start = range.end;
        Some(range)
    })
}

/// The `(C·K·K, n·OH·OW)` patches of the images `x` `(C·H·W, n)` into
/// `out`, column-major, `C·K·K` values a column.
fn patches_into(x: ArrayView2<f32>, input: Shape, k: usize, out: &mut [f32]) {
    let (oh, ow) = conv_map(input, k);
    let (rows, w) = (input.channels * k * k, input.width);
    let offsets = run_offsets(input, k);
    let x = x.t();
    let x = x.as_standard_layout(); // (n, C·H·W): each sample contiguous
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
    d: ArrayView2<f32>,
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

/// Adds to `out`, the gradient of a conv layer's weights `(N, C·K·K)`
/// row-major, what the samples of `d` give: `d` is the error of their
/// pooled maps `(N·PH·PW, n)`, `from` the columns that [`max_pool`] took each
/// pooled value from, and `patches` their patches, `rows = C·K·K` values a
/// column. Only the convolution outputs that won their window have an
/// error, so this is a sum over the pooled values: filter `f`'s row adds
/// `d · patch` for each of its pooled values in `(s, py, px)` order, with
/// separate multiplies and adds (the same bits on every CPU), skipping zero
/// errors (which add nothing). A quarter of the dense `δ·xᵀ` at P = 2.
fn add_filter_gradient(
    out: &mut [f32],
    d: ArrayView2<f32>,
    from: &[u32],
    patches: &[f32],
    rows: usize,
) {
    let (per_sample, n) = d.dim();
    let filters = out.len() / rows;
    let per_filter = per_sample / filters;
    // Column by column, whatever the array's layout (a view when it already is).
    let dt = d.t();
    let dt = dt.as_standard_layout();
    let ds = dt.as_slice().expect("standard layout");
    let mut terms = Vec::with_capacity(ds.len());
    for s in 0..n {
        for i in 0..per_sample {
            let g = ds[s * per_sample + i];
            if g != 0.0 {
                terms.push((g, (i / per_filter) as u32, from[s * per_sample + i]));
            }
        }
    }
    accumulate(out, patches, rows, &terms);
}

/// Filters of at least this many weights (`C·K·K`) take the sum over the
/// pooled winners for their gradient ([`sparse_backward`]); smaller ones
/// the kernel set's product of the unpooled error ([`unpool`]) and the
/// patches, which the forward pass then keeps (the sum makes them again,
/// chunk by chunk). Measured on ch6-conv2 at n = 10: conv20x5's 25 weights
/// were faster as a product, conv40x5's 500 as the sum.
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

    /// A shard's images, a conv layer's weights and its pooled error, drawn
    /// from `seed` (errors zero where dropout or a ReLU would zero them).
    fn layer_case(
        shape: Shape,
        (filters, k, p): (usize, usize, usize),
        n: usize,
        seed: u64,
    ) -> (Array2<f32>, Array2<f32>, Array2<f32>) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let x = Array2::from_shape_fn((shape.len(), n), |_| rng.random_range(-1.0..1.0));
        let w = Array2::from_shape_fn((filters, shape.channels * k * k), |_| {
            rng.random_range(-1.0..1.0)
        });
        let (oh, ow) = conv_map(shape, k);
        let d = Array2::from_shape_fn((filters * (oh / p) * (ow / p), n), |_| {
            if rng.random_bool(0.2) {
                0.0
            } else {
                rng.random_range(-1.0..1.0)
            }
        });
        (x, w, d)
    }

    /// All of a shard's patches at once, as the whole-shard reference.
    fn patches(x: ArrayView2<f32>, input: Shape, k: usize) -> Array2<f32> {
        let (oh, ow) = conv_map(input, k);
        let (rows, n) = (input.channels * k * k, x.ncols());
        let mut out = vec![0.0f32; rows * n * oh * ow];
        patches_into(x, input, k, &mut out);
        Array2::from_shape_vec((rows, n * oh * ow).f(), out).expect("rows × columns values")
    }

    fn bits(a: &Array2<f32>) -> Vec<u32> {
        a.iter().map(|v| v.to_bits()).collect()
    }

    /// Asserts that computing a shard's conv layer `chunk` samples at a
    /// time gives the bits of computing it whole: forward on both kernel
    /// sets (with and without keeping the patches), and the sparse backward
    /// pass; and that the sum over the winners is the dense product of the
    /// unpooled error, within rounding.
    fn assert_chunks_give_the_whole_shards_bits(
        shape: Shape,
        (filters, k, p): (usize, usize, usize),
        (n, chunk): (usize, usize),
        seed: u64,
    ) {
        let case = format!("{shape:?}, {filters} filters {k}×{k}, pool {p}, n {n}, chunk {chunk}");
        let (x, w, d) = layer_case(shape, (filters, k, p), n, seed);
        let all = patches(x.view(), shape, k);
        for set in [KernelSet::Portable, KernelSet::best()] {
            let whole = {
                let z = kernels::w_dot_x(set, &w, &all.view());
                max_pool(&z, conv_map(shape, k), p, n)
            };
            for keep in [true, false] {
                let (kept, pooled, from) =
                    conv_pool(x.view(), (&w, set), shape, (k, p), (chunk, keep));
                assert_eq!(
                    kept.map(|a| bits(&a)),
                    keep.then(|| bits(&all)),
                    "{case}: patches"
                );
                assert_eq!(
                    bits(&pooled),
                    bits(&whole.0),
                    "{case}, {set:?}: pooled values"
                );
                assert_eq!(from, whole.1, "{case}, {set:?}: winners");
            }
        }
        let from = &conv_pool(
            x.view(),
            (&w, KernelSet::Portable),
            shape,
            (k, p),
            (n, false),
        )
        .2;
        let whole = sparse_backward((x.view(), None), (&d, from), &w, (shape, k), (n, true));
        let input_error = |g: &(Array2<f32>, Option<Array2<f32>>)| bits(g.1.as_ref().unwrap());
        for kept in [None, Some(&all)] {
            let parts =
                sparse_backward((x.view(), kept), (&d, from), &w, (shape, k), (chunk, true));
            assert_eq!(bits(&parts.0), bits(&whole.0), "{case}: filter gradient");
            assert_eq!(
                input_error(&parts),
                input_error(&whole),
                "{case}: input error"
            );
        }
        let dense = unpool(&d, from, filters, all.ncols()).dot(&all.t());
        for (a, b) in whole.0.iter().zip(&dense) {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "{case}: {a} vs {b}"
            );
        }
    }

    /// Chapter 6's own conv layers (conv20x5 over a 28×28 image, conv40x5
    /// over 20 maps of 12×12): more filters than matrixmultiply's tiles have
    /// rows, and filters longer than its inner blocks.
    #[test]
    fn chunks_of_chapter_6s_layers_give_the_whole_shards_bits() {
        let mnist = Shape::MNIST;
        let maps = Shape {
            channels: 20,
            height: 12,
            width: 12,
        };
        for n in [1, 2, 5, 9, 12] {
            assert_chunks_give_the_whole_shards_bits(
                mnist,
                (20, 5, 2),
                (n, CHUNK_SAMPLES),
                n as u64,
            );
            assert_chunks_give_the_whole_shards_bits(
                maps,
                (40, 5, 2),
                (n, CHUNK_SAMPLES),
                n as u64,
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// The same for any shapes, shard sizes and chunks.
        #[test]
        fn chunks_give_the_whole_shards_bits(
            channels in 1usize..9, side in 6usize..11, k in 1usize..5, p in 1usize..3,
            filters in 1usize..11, n in 1usize..12, chunk in 1usize..6, seed in any::<u64>(),
        ) {
            let shape = Shape { channels, height: side, width: side };
            prop_assume!(conv_map(shape, k).0 % p == 0);
            assert_chunks_give_the_whole_shards_bits(shape, (filters, k, p), (n, chunk), seed);
        }

        /// The ranges cover `0..n` in order, as few as `chunk` allows, their
        /// lengths at most `chunk` and within one of each other.
        #[test]
        fn chunks_cover_the_shard(n in 0usize..200, chunk in 1usize..10) {
            let ranges: Vec<_> = chunks(n, chunk).collect();
            prop_assert_eq!(ranges.len(), n.div_ceil(chunk));
            prop_assert_eq!(ranges.first().map_or(0, |r| r.start), 0);
            prop_assert_eq!(ranges.iter().map(|r| r.len()).sum::<usize>(), n);
            for pair in ranges.windows(2) {
                prop_assert_eq!(pair[0].end, pair[1].start);
            }
            let (shortest, longest) = (ranges.iter().map(|r| r.len()).min(), ranges.iter().map(|r| r.len()).max());
            prop_assert!(longest <= Some(chunk) && longest <= shortest.map(|s| s + 1), "{:?}", ranges);
        }
    }
}
