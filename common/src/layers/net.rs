//! `network3.py`'s Network, batched: a shard is a matrix whose columns are
//! samples, passed through the layers in turn. Each layer's weights are one
//! matrix `(out, in)` and its biases one vector, so a net's parameters,
//! gradients, wire layout, updates and model files are those of the dense
//! network, in the layers' order.
//!
//! Legend: `n` samples; a layer's input and output are `(values per sample,
//! n)`; for a ConvPoolLayer the weights are `(N, C·K·K)` (see [`conv`]).
//!
//! Summation orders (the same on every kernel set, so a kernel set decides
//! only how each product is computed, as for the dense network):
//! - `w · x` and `wᵀ · δ`: the kernel set's products, over the inner
//!   dimension (the layer's inputs, or its outputs);
//! - `∇w = δ · xᵀ`: for fc and softmax layers the kernel set's product over
//!   the shard's samples in order; for a conv layer whose filters have at
//!   least [`conv::SPARSE_MIN_ROWS`] weights, a sum over the pooled values
//!   that won their window, in `(sample, py, px)` order, with separate
//!   multiplies and adds on every kernel set ([`conv::sparse_backward`]);
//!   for smaller filters (short rows, where that sum's overhead loses to a
//!   product) the kernel set's product of the unpooled error and the
//!   patches, over the patches in `(sample, oy, ox)` order;
//! - a conv layer's error sent back: the same sum over the winners
//!   ([`conv::input_error`]);
//! - `∇b`: one running sum per output, over samples in order (and, in a conv
//!   layer, over each sample's pooled positions in row-major order).

use ndarray::{s, Array1, Array2, ArrayView2, Axis, Zip};
use rand::Rng;
use rand_distr::StandardNormal;

use crate::gradients::Gradients;
use crate::kernels::{self, KernelSet};
use crate::layers::conv;
use crate::layers::dropout::{self, DropoutKey};
use crate::layers::spec::{Layer, NetSpec, Shape};

/// A net's parameters: `weights[l]` `(out, in)` and `biases[l]` `(out,)` of layer `l`.
#[derive(Debug, Clone, Copy)]
pub struct Params<'a> {
    /// Each layer's weights.
    pub weights: &'a [Array2<f32>],
    /// Each layer's biases.
    pub biases: &'a [Array1<f32>],
}

/// Training (dropout masks from `key`) or evaluation (inputs scaled by `1 − p`).
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// A training pass: the shard's place in the epoch fixes its masks.
    Train(DropoutKey),
    /// An evaluation pass.
    Eval,
}

/// What the backward pass needs of one layer's forward pass.
struct Cache {
    /// The input as the product saw it: masked for fc/softmax; for a conv
    /// layer, in training, its patches if its gradient is a product or they
    /// fit in cache ([`conv::patches_fit_in_cache`]); empty otherwise, and in evaluation.
    input: Array2<f32>,
    /// The dropout mask of the input, if any.
    mask: Option<Array2<f32>>,
    /// For a conv layer, which convolution output each pooled value came from.
    pooled_from: Vec<u32>,
    /// The layer's output activations.
    output: Array2<f32>,
}

/// `network3.py`'s initial parameters, drawn layer by layer, weights then
/// biases (row-major), each as an f64 from N(0, 1) times the scale, rounded
/// to f32: a conv layer's weights have standard deviation `√(1/n_out)` with
/// `n_out = N·K²/P²`, an fc layer's `√(1/N)`; biases N(0, 1); the softmax
/// layer starts at zero.
pub fn initial_params(spec: &NetSpec, rng: &mut impl Rng) -> (Vec<Array2<f32>>, Vec<Array1<f32>>) {
    let mut draw = |len: usize, scale: f64| -> Vec<f32> {
        (0..len)
            .map(|_| (rng.sample::<f64, _>(StandardNormal) * scale) as f32)
            .collect()
    };
    let (mut weights, mut biases) = (Vec::new(), Vec::new());
    for (layer, (o, i)) in spec.layers.iter().zip(spec.weight_shapes()) {
        let (w, b) = match *layer {
            Layer::ConvPool {
                filters,
                kernel,
                pool,
                ..
            } => {
                let n_out = (filters * kernel * kernel) as f64 / (pool * pool) as f64;
                (draw(o * i, (1.0 / n_out).sqrt()), draw(o, 1.0))
            }
            Layer::Fc { neurons, .. } => (draw(o * i, (1.0 / neurons as f64).sqrt()), draw(o, 1.0)),
            Layer::Softmax { .. } => (vec![0.0; o * i], vec![0.0; o]),
        };
        weights.push(Array2::from_shape_vec((o, i), w).expect("o × i values"));
        biases.push(Array1::from_vec(b));
    }
    (weights, biases)
}

/// The softmax layer's outputs `(classes, n)` for inputs `x` `(C·H·W, n)`
/// in an evaluation pass.
/// Runs `EVAL_CHUNK` (32) samples at a time: a conv layer's patches for a
/// thousand samples are hundreds of MB, for a few dozen they stay in cache.
pub fn feedforward(spec: &NetSpec, p: Params, x: ArrayView2<f32>, k: KernelSet) -> Array2<f32> {
    let mut out = Array2::zeros((spec.classes(), x.ncols()));
    for start in (0..x.ncols()).step_by(EVAL_CHUNK) {
        let columns = start..(start + EVAL_CHUNK).min(x.ncols());
        let a = forward(spec, p, x.slice(s![.., columns.clone()]), k, Mode::Eval);
        out.slice_mut(s![.., columns]).assign(&a);
    }
    out
}

/// How many samples an evaluation pass feeds forward at once.
const EVAL_CHUNK: usize = 32;

/// The softmax layer's outputs `(classes, n)` for inputs `x` in a pass of `mode`.
pub fn forward(
    spec: &NetSpec,
    p: Params,
    x: ArrayView2<f32>,
    k: KernelSet,
    mode: Mode,
) -> Array2<f32> {
    let shapes = spec.shapes();
    let mut a = x.to_owned();
    for (l, layer) in spec.layers.iter().enumerate() {
        a = layer_forward(layer, l, shapes[l], p, a.view(), k, mode).output;
    }
    a
}

/// The summed gradient over the samples (columns) of `x` `(C·H·W, n)` with
/// one-hot targets `y` `(classes, n)`, of the log-likelihood cost
/// `Σ_x −ln a_y(x)`, in a training pass whose dropout masks come from `key`.
///
/// # Panics
/// If the shapes of `x`, `y` or the parameters do not fit `spec` (the wire
/// layer validates everything from outside first).
pub fn backprop(
    spec: &NetSpec,
    p: Params,
    x: ArrayView2<f32>,
    y: ArrayView2<f32>,
    k: KernelSet,
    key: DropoutKey,
) -> Gradients {
    backprop_factored(spec, p, x, y, k, key, &[]).0
}

/// A fully connected layer's weight gradient `Σ_x δ aᵀ` as its factors:
/// the layer's error `delta` `(out, n)` and its input `input` `(in, n)` (after
/// its dropout mask). For a shard of fewer than `out·in / (out + in)`
/// samples these are fewer values than the matrix, so a worker can send them
/// instead and the coordinator multiplies them out ([`fc_weight_gradient`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Factor {
    /// The layer's index in the net.
    pub layer: usize,
    /// Its error `∂C/∂z`, `(out, n)`.
    pub delta: Array2<f32>,
    /// Its input as its product saw it, `(in, n)`.
    pub input: Array2<f32>,
}

/// The fully connected (fc and softmax) layers of `spec` whose weight
/// gradient for `samples` samples has more values than its factors.
pub fn factor_layers(spec: &NetSpec, samples: usize) -> Vec<usize> {
    let shapes = spec.shapes();
    (spec.layers.iter().enumerate())
        .filter(|(l, layer)| {
            let (out, inputs) = layer.weight_shape(shapes[*l]);
            !matches!(layer, Layer::ConvPool { .. })
                && samples.saturating_mul(out + inputs) < out * inputs
        })
        .map(|(l, _)| l)
        .collect()
}

/// A fully connected layer's weight gradient `δ · aᵀ` `(out, in)`, the
/// kernel set's product over the samples in order, with its operands in one
/// layout (δ row-major, `a` column-major) whatever layout they come in: so a
/// worker's whole gradient and the coordinator's product of the factors it
/// sent have the same bits.
pub fn fc_weight_gradient(k: KernelSet, delta: &Array2<f32>, input: &Array2<f32>) -> Array2<f32> {
    let delta = delta.as_standard_layout().into_owned();
    let input_t = input.t();
    let columns = input_t.as_standard_layout();
    kernels::delta_dot_xt(k, &delta, &columns.t())
}

/// [`backprop`], with the weight gradients of the fully connected layers in
/// `factored` (ascending) left empty (0 × 0) and their [`Factor`]s returned
/// instead, in layer order.
///
/// # Panics
/// As [`backprop`], and if a layer in `factored` is a conv layer.
pub fn backprop_factored(
    spec: &NetSpec,
    p: Params,
    x: ArrayView2<f32>,
    y: ArrayView2<f32>,
    k: KernelSet,
    key: DropoutKey,
    factored: &[usize],
) -> (Gradients, Vec<Factor>) {
    assert_eq!(x.nrows(), spec.input.len(), "input rows");
    assert_eq!(y.nrows(), spec.classes(), "target rows");
    assert_eq!(x.ncols(), y.ncols(), "one target column per input column");
    let (shapes, layers) = (spec.shapes(), spec.layers.len());
    // feedforward
    let mut caches: Vec<Cache> = Vec::with_capacity(layers);
    for (l, layer) in spec.layers.iter().enumerate() {
        let input = caches.last().map_or(x.view(), |c| c.output.view());
        let cache = layer_forward(layer, l, shapes[l], p, input, k, Mode::Train(key));
        caches.push(cache);
    }
    // backward pass: the softmax layer's error with the log-likelihood cost is a − y
    let mut delta = &caches[layers - 1].output - &y;
    let (mut nabla_w, mut nabla_b) = (Vec::with_capacity(layers), Vec::with_capacity(layers));
    let mut factors = Vec::with_capacity(factored.len());
    for l in (0..layers).rev() {
        let (layer, cache) = (&spec.layers[l], &caches[l]);
        let want = Wanted {
            input_error: l > 0,
            factors: factored.contains(&l),
        };
        let layer_input = if l == 0 {
            x.view()
        } else {
            caches[l - 1].output.view()
        };
        let input = (shapes[l], layer_input);
        let back = layer_backward(layer, input, &p.weights[l], cache, delta, k, want);
        nabla_w.push(back.nabla_w);
        nabla_b.push(back.nabla_b);
        if let Some((delta, input)) = back.factors {
            factors.push(Factor {
                layer: l,
                delta,
                input,
            });
        }
        if let Some(mut d) = back.input_error {
            let below = &caches[l - 1];
            activation_of(&spec.layers[l - 1]).backward(&mut d, &below.output);
            delta = d;
        } else {
            break;
        }
    }
    nabla_w.reverse();
    nabla_b.reverse();
    factors.reverse();
    (Gradients { nabla_w, nabla_b }, factors)
}

/// Total log-likelihood cost `Σ_x −ln a_y(x)` over the columns of the
/// softmax outputs `a` `(classes, n)` for the labels.
pub fn log_likelihood(a: &Array2<f32>, labels: &[u8]) -> f64 {
    labels
        .iter()
        .enumerate()
        .map(|(s, &y)| -f64::from(a[[usize::from(y), s]]).ln())
        .sum()
}

/// The activation a layer applies (softmax has its own, never differentiated alone).
fn activation_of(layer: &Layer) -> crate::layers::activation::Activation {
    match *layer {
        Layer::ConvPool { activation, .. } | Layer::Fc { activation, .. } => activation,
        Layer::Softmax { .. } => {
            unreachable!("the softmax layer is last: no layer above feeds it an error")
        }
    }
}

/// One layer's forward pass on `a` `(input.len(), n)`.
fn layer_forward(
    layer: &Layer,
    l: usize,
    input: Shape,
    p: Params,
    a: ArrayView2<f32>,
    k: KernelSet,
    mode: Mode,
) -> Cache {
    let (w, b, n) = (&p.weights[l], &p.biases[l], a.ncols());
    if let Layer::ConvPool {
        kernel,
        pool,
        activation,
        ..
    } = *layer
    {
        // a shard whose patches outgrow the cache goes a chunk at a time, and
        // the sum over the winners makes its patches again, chunk by chunk
        let fits = conv::patches_fit_in_cache(input, kernel, a.ncols());
        let keep = matches!(mode, Mode::Train(_)) && (w.ncols() < conv::SPARSE_MIN_ROWS || fits);
        let chunk = if fits { a.ncols() } else { conv::CHUNK_SAMPLES };
        let chunking = (chunk, keep);
        let (patches, mut pooled, pooled_from) =
            conv::conv_pool(a, (w, k), input, (kernel, pool), chunking);
        let per_filter = pooled.nrows() / w.nrows();
        for (i, mut row) in pooled.rows_mut().into_iter().enumerate() {
            let bias = b[i / per_filter];
            row.mapv_inplace(|v| v + bias);
        }
        let output = activation.apply(k, pooled);
        return Cache {
            input: patches.unwrap_or_else(|| Array2::zeros((0, 0))),
            mask: None,
            pooled_from,
            output,
        };
    }
    let dropout = layer.dropout();
    let (input, mask, mut z) = match mode {
        Mode::Train(key) if dropout > 0.0 => {
            let mask = dropout::mask(key, l, dropout, a.nrows(), n);
            let masked = &a * &mask;
            let z = kernels::w_dot_x(k, w, &masked.view());
            (masked, Some(mask), z)
        }
        Mode::Train(_) => (a.to_owned(), None, kernels::w_dot_x(k, w, &a)),
        Mode::Eval => {
            let mut z = kernels::w_dot_x(k, w, &a);
            if dropout > 0.0 {
                z.mapv_inplace(|v| (1.0 - dropout) * v);
            }
            (Array2::zeros((0, 0)), None, z)
        }
    };
    z += &b.view().insert_axis(Axis(1));
    let output = match *layer {
        Layer::Fc { activation, .. } => activation.apply(k, z),
        _ => softmax(z),
    };
    Cache {
        input,
        mask,
        pooled_from: Vec::new(),
        output,
    }
}

/// A layer's gradients, the error of its input if asked for, and for a
/// factored layer its weight gradient's factors (δ, input) instead of the matrix.
struct Backward {
    nabla_w: Array2<f32>,
    nabla_b: Array1<f32>,
    input_error: Option<Array2<f32>>,
    factors: Option<(Array2<f32>, Array2<f32>)>,
}

/// What a layer's backward pass is asked for besides its bias gradient.
#[derive(Clone, Copy)]
struct Wanted {
    /// The error of its input (every layer but the first).
    input_error: bool,
    /// Its weight gradient as factors rather than multiplied out (fc and softmax only).
    factors: bool,
}

/// One layer's backward pass from `delta`, the error `∂C/∂z` of its output.
fn layer_backward(
    layer: &Layer,
    (input, layer_input): (Shape, ArrayView2<f32>),
    w: &Array2<f32>,
    cache: &Cache,
    delta: Array2<f32>,
    k: KernelSet,
    want: Wanted,
) -> Backward {
    let want_input_error = want.input_error;
    if let Layer::ConvPool { kernel, .. } = *layer {
        let (filters, from) = (w.nrows(), &cache.pooled_from);
        let nabla_b = filter_sums(&delta, filters);
        let (nabla_w, input_error) = if w.ncols() >= conv::SPARSE_MIN_ROWS {
            let chunking = (conv::CHUNK_SAMPLES, want_input_error);
            let kept = (cache.input.nrows() > 0).then_some(&cache.input);
            let x = (layer_input, kept);
            conv::sparse_backward(x, (&delta, from), w, (input, kernel), chunking)
        } else {
            let d_conv = conv::unpool(&delta, from, filters, cache.input.ncols());
            let nabla_w = kernels::delta_dot_xt(k, &d_conv, &cache.input.view());
            let input_error =
                want_input_error.then(|| conv::input_error(delta.view(), from, w, input, kernel));
            (nabla_w, input_error)
        };
        assert!(
            !want.factors,
            "a conv layer's weight gradient is not factored"
        );
        return Backward {
            nabla_w,
            nabla_b,
            input_error,
            factors: None,
        };
    }
    let nabla_b = row_sums(&delta);
    let (nabla_w, factors) = if want.factors {
        let factors = (delta.clone(), cache.input.clone());
        (Array2::zeros((0, 0)), Some(factors))
    } else {
        (fc_weight_gradient(k, &delta, &cache.input), None)
    };
    let input_error = want_input_error.then(|| {
        let mut d = kernels::wt_dot_delta(k, w, &delta);
        if let Some(mask) = &cache.mask {
            d *= mask;
        }
        d
    });
    Backward {
        nabla_w,
        nabla_b,
        input_error,
        factors,
    }
}

/// Softmax of each column: `e^(z_i − max) / Σ_j e^(z_j − max)`, with
/// `libm`'s `expf` (the same bits on every kernel set and CPU), summed in row order.
fn softmax(mut z: Array2<f32>) -> Array2<f32> {
    for mut column in z.columns_mut() {
        let max = column.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        column.mapv_inplace(|v| libm::expf(v - max));
        let sum: f32 = column.iter().fold(0.0, |s, &v| s + v);
        column.mapv_inplace(|v| v / sum);
    }
    z
}

/// `Σ` over the columns of each row, one running sum per row in column order.
fn row_sums(delta: &Array2<f32>) -> Array1<f32> {
    let mut sums = Array1::zeros(delta.nrows());
    Zip::from(&mut sums)
        .and(delta.rows())
        .for_each(|s, row| *s = row.iter().fold(0.0, |acc, &v| acc + v));
    sums
}

/// A conv layer's bias gradient from the pooled error `(N·PH·PW, n)`: per
/// filter, one running sum over samples in order, then each sample's pooled
/// positions in row-major order.
fn filter_sums(delta: &Array2<f32>, filters: usize) -> Array1<f32> {
    let per_filter = delta.nrows() / filters;
    Array1::from_iter((0..filters).map(|f| {
        let rows = f * per_filter..(f + 1) * per_filter;
        (0..delta.ncols()).fold(0.0f32, |acc, s| {
            rows.clone().fold(acc, |acc, r| acc + delta[[r, s]])
        })
    }))
}
