//! The data movement of a ConvPoolLayer, around the kernel set's products:
//! - [`patches`] (im2col): every K×K window of a shard's images as one
//!   column, so the convolution is one product `w · patches`;
//! - [`unpatch`] (col2im): the gradient of the images from the gradient of
//!   their patches;
//! - [`max_pool`] and [`unpool`]: P×P max-pooling and its gradient, which
//!   goes to the first largest value of each window (PyTorch's choice).
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

/// `(C·K·K, n·OH·OW)` patches of the images `x` `(C·H·W, n)`, column-major.
pub fn patches(x: ArrayView2<f32>, input: Shape, k: usize) -> Array2<f32> {
    let (c, h, w) = (input.channels, input.height, input.width);
    let (oh, ow) = conv_map(input, k);
    let (rows, n) = (c * k * k, x.ncols());
    let x = x.t().as_standard_layout().into_owned(); // (n, C·H·W): each sample contiguous
    let mut out = vec![0.0f32; rows * n * oh * ow];
    for (s, image) in x.rows().into_iter().enumerate() {
        let image = image.to_slice().expect("standard layout");
        for oy in 0..oh {
            for ox in 0..ow {
                let column = ((s * oh + oy) * ow + ox) * rows;
                let dst = &mut out[column..column + rows];
                for ch in 0..c {
                    for ky in 0..k {
                        let src = (ch * h + oy + ky) * w + ox;
                        let r = (ch * k + ky) * k;
                        dst[r..r + k].copy_from_slice(&image[src..src + k]);
                    }
                }
            }
        }
    }
    Array2::from_shape_vec((rows, n * oh * ow).f(), out).expect("rows × columns values")
}

/// The gradient of the images `(C·H·W, n)` from `dp`, the gradient of
/// their [`patches`]: each patch value is added back to its pixel, in
/// column order `(s, oy, ox)`, then row order `(c, ky, kx)`.
pub fn unpatch(dp: &Array2<f32>, input: Shape, k: usize, n: usize) -> Array2<f32> {
    let (c, h, w) = (input.channels, input.height, input.width);
    let (oh, ow) = conv_map(input, k);
    let len = input.len();
    let mut out = vec![0.0f32; len * n];
    for s in 0..n {
        let image = &mut out[s * len..(s + 1) * len];
        for oy in 0..oh {
            for ox in 0..ow {
                let column = (s * oh + oy) * ow + ox;
                for ch in 0..c {
                    for ky in 0..k {
                        for kx in 0..k {
                            image[(ch * h + oy + ky) * w + ox + kx] += dp[[(ch * k + ky) * k + kx, column]];
                        }
                    }
                }
            }
        }
    }
    Array2::from_shape_vec((len, n).f(), out).expect("len × n values")
}

/// P×P max-pooling of the convolution's output `z` `(N, n·OH·OW)`: the
/// pooled maps `(N·PH·PW, n)`, column-major, and for each pooled value the
/// column of `z` it came from (the first largest of its window, scanned
/// row by row).
pub fn max_pool(z: &Array2<f32>, map: (usize, usize), p: usize, n: usize) -> (Array2<f32>, Vec<u32>) {
    let (filters, (oh, ow)) = (z.nrows(), map);
    let (ph, pw) = (oh / p, ow / p);
    let per_sample = filters * ph * pw;
    let (mut pooled, mut from) = (vec![0.0f32; per_sample * n], vec![0u32; per_sample * n]);
    for f in 0..filters {
        let row = z.row(f);
        for s in 0..n {
            for py in 0..ph {
                for px in 0..pw {
                    let mut best = (usize::MAX, f32::NEG_INFINITY);
                    for dy in 0..p {
                        for dx in 0..p {
                            let column = (s * oh + py * p + dy) * ow + px * p + dx;
                            if best.0 == usize::MAX || row[column] > best.1 {
                                best = (column, row[column]);
                            }
                        }
                    }
                    let at = s * per_sample + (f * ph + py) * pw + px;
                    pooled[at] = best.1;
                    from[at] = best.0 as u32;
                }
            }
        }
    }
    let pooled = Array2::from_shape_vec((per_sample, n).f(), pooled).expect("pooled values");
    (pooled, from)
}

/// The gradient of the convolution's output `(N, columns)` from `d`, the
/// gradient of the pooled maps `(N·PH·PW, n)`: each pooled value's gradient
/// goes to the column [`max_pool`] took it from; the rest are zero.
pub fn unpool(d: &Array2<f32>, from: &[u32], filters: usize, columns: usize) -> Array2<f32> {
    let (per_sample, n) = d.dim();
    let per_filter = per_sample / filters;
    let mut out = Array2::zeros((filters, columns));
    for s in 0..n {
        for i in 0..per_sample {
            let f = i / per_filter;
            out[[f, from[s * per_sample + i] as usize]] = d[[i, s]];
        }
    }
    out
}
