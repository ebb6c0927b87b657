//! Backprop without allocating: [`Network::backprop_with`]'s maths, bit for
//! bit, into buffers that live as long as the run (a trainer loop or a
//! worker thread owns one [`Workspace`] and reuses it every step).
//!
//! At batch 10 the two big first-layer products take ~12 µs of a ~42 µs
//! step; most of the rest was allocation, zeroing, copies and the u8 → f32
//! conversion of the shard. Here a shard's inputs are built straight from
//! the training set's bytes (gather and scale in one pass, through a table
//! of the 256 values `p / 255`), and every activation, delta and gradient is
//! written into a reused buffer by the `_into` products of [`kernels`].
//!
//! [`Network::backprop_with`] stays the readable reference: the tests check
//! that [`Workspace::backprop`] equals it bit for bit over many shapes,
//! batch lengths, costs and kernel sets.

use ndarray::{ArrayView2, ShapeBuilder};

use crate::cost::Cost;
use crate::dataset::{Samples, CLASSES, IMAGE_SIZE};
use crate::gradients::Gradients;
use crate::kernels::{self, Descend, KernelSet};
use crate::network::Network;

/// `SCALE[p] = f32::from(p) / 255.0`: the same bits as
/// [`Samples::inputs`]' divide, without a divide per pixel.
static SCALE: std::sync::LazyLock<[f32; 256]> = std::sync::LazyLock::new(|| {
    let mut t = [0.0; 256];
    for (p, v) in t.iter_mut().enumerate() {
        *v = f32::from(p as u8) / 255.0;
    }
    t
});

/// The buffers of one shard's backprop, reused from step to step.
#[derive(Debug, Clone, Default)]
pub struct Workspace {
    /// Samples loaded.
    n: usize,
    /// Inputs `(IMAGE_SIZE, n)`, column-major: sample `s` at `s * IMAGE_SIZE`.
    x: Vec<f32>,
    /// Targets `(CLASSES, n)`, row-major (one-hot columns).
    y: Vec<f32>,
    /// `activations[l]`: `(sizes[l+1], n)`, row-major (first `z`, then `σ(z)`).
    activations: Vec<Vec<f32>>,
    /// The error of the layer being differentiated, `(sizes[l+1], n)`.
    delta: Vec<f32>,
    /// The error of the layer below, as it is computed.
    below: Vec<f32>,
    /// Copies some products need (see [`kernels::w_dot_x_into`]).
    scratch: Vec<f32>,
    /// The last [`Workspace::backprop`]'s summed gradient.
    gradients: Option<Gradients>,
}

impl Workspace {
    /// An empty workspace; buffers grow to fit the first shard.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads the samples of `set` at `indices`, in that order (as
    /// `set.gather(indices)` then `inputs()` and `targets()` would).
    ///
    /// # Panics
    /// If an index is out of range or a label is not below [`CLASSES`].
    pub fn load(&mut self, set: &Samples, indices: &[usize]) {
        self.load_with(indices.len(), |s| {
            let i = indices[s];
            (
                &set.pixels[i * IMAGE_SIZE..(i + 1) * IMAGE_SIZE],
                set.labels[i],
            )
        });
    }

    /// Asks the CPU to bring the pixels of `set` at `indices` into its
    /// caches (the next step's samples, while this step computes): the
    /// training set is far larger than the caches, and a step's samples are
    /// scattered across it. Changes nothing; indices out of range are skipped.
    pub fn prefetch(set: &Samples, indices: &[usize]) {
        #[cfg(target_arch = "x86_64")]
        for &i in indices {
            let Some(pixels) = set.pixels.get(i * IMAGE_SIZE..(i + 1) * IMAGE_SIZE) else {
                continue;
            };
            for line in pixels.chunks(64) {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                // SAFETY: a prefetch reads nothing and never faults; the
                // address is inside `pixels` anyway.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (set, indices);
    }

    /// Loads all the samples of `shard`, in order.
    ///
    /// # Panics
    /// If a label is not below [`CLASSES`] (the wire validates them).
    pub fn load_all(&mut self, shard: &Samples) {
        self.load_with(shard.len(), |s| {
            (
                &shard.pixels[s * IMAGE_SIZE..(s + 1) * IMAGE_SIZE],
                shard.labels[s],
            )
        });
    }

    fn load_with<'a>(&mut self, n: usize, sample: impl Fn(usize) -> (&'a [u8], u8)) {
        let scale = &*SCALE;
        self.n = n;
        self.x.resize(n * IMAGE_SIZE, 0.0);
        self.y.clear();
        self.y.resize(CLASSES * n, 0.0);
        for (s, column) in self.x.chunks_exact_mut(IMAGE_SIZE).enumerate() {
            let (pixels, label) = sample(s);
            scale_pixels(pixels, column, scale);
            self.y[usize::from(label) * n + s] = 1.0;
        }
    }

    /// The loaded inputs `(IMAGE_SIZE, n)`, one contiguous column per sample.
    pub fn inputs(&self) -> ArrayView2<'_, f32> {
        ArrayView2::from_shape((IMAGE_SIZE, self.n).f(), &self.x).expect("n columns")
    }

    /// The loaded targets `(CLASSES, n)`.
    pub fn targets(&self) -> ArrayView2<'_, f32> {
        ArrayView2::from_shape((CLASSES, self.n), &self.y).expect("n columns")
    }

    /// The loaded shard's summed gradient of `cost` at `network`'s weights
    /// with the kernel set `k`: [`Network::backprop_with`] on the loaded
    /// inputs and targets, bit for bit.
    ///
    /// # Panics
    /// If the network's input or output size is not MNIST's, or if this CPU
    /// cannot run `k`.
    pub fn backprop(&mut self, network: &Network, cost: Cost, k: KernelSet) -> &Gradients {
        self.backward(network, cost, k, true)
    }

    /// [`Workspace::backprop`] but for the first layer's weight gradient,
    /// which is not computed: the returned gradient's first weight matrix is
    /// empty (0 × 0), and the first layer's error δ¹ (`sizes[1]` × n,
    /// row-major) comes instead, from which
    /// [`Workspace::first_weight_gradient`] computes that matrix's bits. Only
    /// the small tensors are copied out; nothing of the matrix's size is
    /// allocated or zeroed.
    ///
    /// # Panics
    /// As [`Workspace::backprop`].
    pub fn backprop_first_error(
        &mut self,
        network: &Network,
        cost: Cost,
        k: KernelSet,
    ) -> (Gradients, Vec<f32>) {
        let g = self.backward(network, cost, k, false);
        let rest = g.nabla_w[1..].iter().cloned();
        let nabla_w = std::iter::once(ndarray::Array2::zeros((0, 0))).chain(rest);
        let g = Gradients {
            nabla_w: nabla_w.collect(),
            nabla_b: g.nabla_b.clone(),
        };
        (g, self.delta.clone())
    }

    /// The first layer's weight gradient δ¹·xᵀ of the loaded inputs x, given
    /// their error `delta` (`rows` × n, row-major), into `out` (`rows` ×
    /// [`IMAGE_SIZE`]): the bits [`Workspace::backprop`] gives it.
    ///
    /// # Panics
    /// If `delta` is not `rows` × n, or `out` not `rows` × [`IMAGE_SIZE`].
    pub fn first_weight_gradient(&mut self, delta: &[f32], k: KernelSet, out: &mut [f32]) {
        let rows = delta.len() / self.n.max(1);
        assert_eq!(out.len(), rows * IMAGE_SIZE, "out is rows × IMAGE_SIZE");
        let delta = ArrayView2::from_shape((rows, self.n), delta).expect("rows × n");
        let x = ArrayView2::from_shape((IMAGE_SIZE, self.n).f(), &self.x).expect("n columns");
        kernels::delta_dot_xt_into(k, &delta, &x, out, &mut self.scratch);
    }

    /// One plain step (no momentum) on the loaded shard: what
    /// `update.apply(network, self.backprop(network, cost, k), len, None)`
    /// gives, bit for bit, with `descend` the update's [`Descend`] for `len`.
    /// The first layer's weight gradient, the largest by far, is not stored:
    /// each sum goes straight into its weight (see
    /// [`kernels::delta_dot_xt_descend`]).
    ///
    /// # Panics
    /// As [`Workspace::backprop`].
    pub fn step(&mut self, network: &mut Network, cost: Cost, k: KernelSet, descend: Descend) {
        self.backward(network, cost, k, false);
        let n = self.n;
        let x = ArrayView2::from_shape((IMAGE_SIZE, n).f(), &self.x).expect("n columns");
        let delta =
            ArrayView2::from_shape((network.sizes[1], n), &self.delta[..]).expect("n columns");
        let grads = self.gradients.as_mut().expect("backward made them");
        let w0 = &mut network.weights[0];
        let fused = kernels::delta_dot_xt_descend(k, &delta, &x, w0, descend);
        if !fused {
            let nabla_w = grads.nabla_w[0].as_slice_mut().expect("standard layout");
            kernels::delta_dot_xt_into(k, &delta, &x, nabla_w, &mut self.scratch);
        }
        // the rest of the update, as `Update::apply` does it
        network.descend(grads, descend, usize::from(fused));
    }

    /// Forward and backward passes into the workspace's gradient, the first
    /// layer's weight gradient only if `first` (else `self.delta` is left
    /// holding the first layer's error).
    fn backward(&mut self, network: &Network, cost: Cost, k: KernelSet, first: bool) -> &Gradients {
        let sizes = &network.sizes;
        assert_eq!(sizes[0], IMAGE_SIZE, "input rows");
        assert_eq!(sizes[sizes.len() - 1], CLASSES, "target rows");
        let (n, layers) = (self.n, network.weights.len());
        self.fit(sizes);
        let grads = self
            .gradients
            .get_or_insert_with(|| Gradients::zeros(sizes));
        let x = ArrayView2::from_shape((IMAGE_SIZE, n).f(), &self.x).expect("n columns");
        // feedforward: z = w·a + b, then σ(z), in place
        for (l, (w, b)) in network.weights.iter().zip(&network.biases).enumerate() {
            let (done, rest) = self.activations.split_at_mut(l);
            let z = &mut rest[0];
            let a = match l {
                0 => x.view(),
                _ => ArrayView2::from_shape((sizes[l], n), &done[l - 1][..]).expect("n columns"),
            };
            kernels::w_dot_x_into(k, w, &a, z, &mut self.scratch);
            for (row, &b) in z.chunks_exact_mut(n.max(1)).zip(b) {
                row.iter_mut().for_each(|z| *z += b);
            }
            kernels::sigmoid_in_place(k, z);
        }
        // the output error δᴸ, `cost.delta`'s
        let out = &self.activations[layers - 1];
        self.delta.clear();
        self.delta.extend(
            out.iter()
                .zip(&self.y)
                .map(|(&a, &y)| cost.output_error(a, y)),
        );
        // backward pass, from the last layer down
        for l in (0..layers).rev() {
            let rows = sizes[l + 1];
            let delta = ArrayView2::from_shape((rows, n), &self.delta[..]).expect("n columns");
            let nabla_b = grads.nabla_b[l].as_slice_mut().expect("standard layout");
            for (sum, row) in nabla_b.iter_mut().zip(delta.rows()) {
                // `sum_axis(Axis(1))` of a row-major matrix: each row's `sum()`
                *sum = row.sum();
            }
            let a = match l {
                0 => x.view(),
                _ => ArrayView2::from_shape((sizes[l], n), &self.activations[l - 1][..])
                    .expect("n columns"),
            };
            if l > 0 || first {
                let nabla_w = grads.nabla_w[l].as_slice_mut().expect("standard layout");
                kernels::delta_dot_xt_into(k, &delta, &a, nabla_w, &mut self.scratch);
            }
            if l > 0 {
                self.below.resize(sizes[l] * n, 0.0);
                let w = &network.weights[l];
                kernels::wt_dot_delta_into(k, w, &delta, &mut self.below, &mut self.scratch);
                // times σ'(z) = σ(z)(1 − σ(z)), from the activations
                for (e, &s) in self.below.iter_mut().zip(&self.activations[l - 1]) {
                    *e *= s * (1.0 - s);
                }
                std::mem::swap(&mut self.delta, &mut self.below);
            }
        }
        grads
    }

    /// Sizes the activation buffers for `sizes` and the loaded samples, and
    /// drops gradients of another shape.
    fn fit(&mut self, sizes: &[usize]) {
        let layers = sizes.len() - 1;
        self.activations.resize_with(layers, Vec::new);
        for (a, &rows) in self.activations.iter_mut().zip(&sizes[1..]) {
            a.resize(rows * self.n, 0.0);
        }
        let fits = self.gradients.as_ref().is_some_and(|g| {
            g.nabla_w.len() == layers
                && g.nabla_w
                    .iter()
                    .zip(sizes.windows(2))
                    .all(|(w, p)| w.dim() == (p[1], p[0]))
        });
        if !fits {
            self.gradients = None;
        }
    }

    /// The last [`Workspace::backprop`]'s gradient, to keep (the workspace
    /// then allocates a new one at the next step).
    pub fn take_gradients(&mut self) -> Option<Gradients> {
        self.gradients.take()
    }
}

/// `out[i] = f32::from(pixels[i]) / 255.0`, 8 at a time with AVX2 and
/// FMA, else through `table`. The vector path divides without a divide
/// (which bounded it): `q = p·r` with `r = 1/255` rounded, then one
/// correction step `q + (p − q·255)·r` with exact FMA residuals, which
/// gives the correctly rounded quotient, the divide's bits, for every one of
/// the 256 byte values (the tests check all of them).
fn scale_pixels(pixels: &[u8], out: &mut [f32], table: &[f32; 256]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: AVX2 and FMA are present.
        return unsafe { scale_pixels_avx2(pixels, out, table) };
    }
    for (v, &p) in out.iter_mut().zip(pixels) {
        *v = table[usize::from(p)];
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn scale_pixels_avx2(pixels: &[u8], out: &mut [f32], table: &[f32; 256]) {
    use std::arch::x86_64::{
        _mm256_cvtepi32_ps, _mm256_cvtepu8_epi32, _mm256_fmadd_ps, _mm256_fnmadd_ps, _mm256_mul_ps,
        _mm256_set1_ps, _mm256_storeu_ps, _mm_loadl_epi64,
    };
    let len = pixels.len().min(out.len());
    let body = len / 8 * 8;
    let (r, d) = (_mm256_set1_ps(1.0 / 255.0), _mm256_set1_ps(255.0));
    for i in (0..body).step_by(8) {
        let bytes = _mm_loadl_epi64(pixels.as_ptr().add(i).cast());
        let p = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
        let q = _mm256_mul_ps(p, r);
        let residual = _mm256_fnmadd_ps(q, d, p);
        _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_fmadd_ps(residual, r, q));
    }
    for i in body..len {
        out[i] = table[usize::from(pixels[i])];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::Init;
    use crate::schedule::init_rng;
    use crate::shard::summed_gradient as shard_gradients_with;
    use crate::step::{reduce_and_apply as apply_step, split_batch as step_shards, StepBuffers};
    use ndarray::{Array1, Array2};
    use rand::Rng;

    /// Random samples with many pixels at the ends of their range.
    fn samples(len: usize, seed: u64) -> Samples {
        let mut s = Samples::random_seeded(len, seed);
        for (i, p) in s.pixels.iter_mut().enumerate() {
            match i % 5 {
                0 | 1 => *p = 0,
                2 => *p = 255,
                _ => {}
            }
        }
        s
    }

    /// The bits of every weight (or weight gradient), then every bias.
    fn bits(weights: &[Array2<f32>], biases: &[Array1<f32>]) -> Vec<u32> {
        let w = weights.iter().flat_map(|w| w.iter());
        let b = biases.iter().flat_map(|b| b.iter());
        w.chain(b).map(|v| v.to_bits()).collect()
    }

    fn same_bits(a: &Gradients, b: &Gradients, what: &str) {
        let differ = bits(&a.nabla_w, &a.nabla_b) != bits(&b.nabla_w, &b.nabla_b);
        assert!(!differ, "{what}: gradients differ");
    }

    #[test]
    fn loads_what_inputs_and_targets_build() {
        let set = samples(20, 3);
        let indices = [7, 3, 3, 19, 0];
        let mut ws = Workspace::new();
        ws.load(&set, &indices);
        let shard = set.gather(&indices);
        assert_eq!(ws.inputs(), shard.inputs());
        assert_eq!(ws.targets(), shard.targets());
        let bits = |a: ArrayView2<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(ws.inputs()), bits(shard.inputs().view()));
        for p in 0..=255u8 {
            assert_eq!(
                SCALE[usize::from(p)].to_bits(),
                (f32::from(p) / 255.0).to_bits()
            );
        }
    }

    /// The fast path is the readable backprop, bit for bit, whatever the
    /// shapes (including layers past CHAIN_MAX_INNER and shards past
    /// MAX_SAMPLES), the cost, the initial weights and the kernel set; one
    /// workspace serves every case in turn (buffers of other shapes).
    #[test]
    fn backprop_equals_the_reference_bit_for_bit() {
        let mut ws = Workspace::new();
        let mut rng = init_rng(7);
        let cases: &[(&[usize], &[usize])] = &[
            (
                &[784, 30, 10],
                &[1, 2, 3, 5, 8, 9, 10, 16, 17, 64, 65, 100, 257],
            ),
            (&[784, 100, 10], &[1, 10, 33, 100]),
            (&[784, 10], &[1, 7, 10]),
            (&[784, 300, 20, 10], &[1, 4, 10, 70]),
            (&[784, 1, 10], &[1, 3, 10]),
            (&[784, 257, 10], &[2, 10]),
        ];
        for &(sizes, lens) in cases {
            for &n in lens {
                let set = samples(n, rng.random());
                for (i, k) in KernelSet::supported().into_iter().enumerate() {
                    for cost in Cost::ALL {
                        let init = Init::ALL[(n + i) % 2];
                        let net = Network::with_init(sizes, init, &mut init_rng(rng.random()));
                        let want =
                            net.backprop_with(set.inputs().view(), set.targets().view(), cost, k);
                        ws.load_all(&set);
                        let got = ws.backprop(&net, cost, k);
                        same_bits(got, &want, &format!("{sizes:?} n={n} {k} {cost}"));
                        same_bits(&shard_gradients_with(&net, &set, cost, k), &want, "thread");
                    }
                }
            }
        }
    }

    /// A step's shards through [`StepBuffers`] sum to what the shards of
    /// [`step_shards`] give through [`apply_step`].
    #[test]
    fn step_buffers_sum_the_shards_as_apply_step_does() {
        let training = samples(60, 11);
        let net = Network::new(&[784, 30, 10], &mut init_rng(2));
        let mut buffers = StepBuffers::default();
        for (len, shards) in [(10, 1), (10, 4), (7, 3), (60, 5), (1, 1), (3, 8)] {
            let batch: Vec<usize> = (0..len).map(|i| (i * 7) % 60).collect();
            for k in KernelSet::supported() {
                let results: Vec<Gradients> = step_shards(&training, &batch, shards)
                    .iter()
                    .map(|s| {
                        net.backprop_with(s.inputs().view(), s.targets().view(), Cost::Quadratic, k)
                    })
                    .collect();
                let got =
                    buffers.step_gradients(&net, &training, &batch, shards, Cost::Quadratic, k);
                same_bits(got, &Gradients::sum_in_shard_order(&results), "sum");
                // and the update is the same
                let update = crate::optimizer::Update {
                    eta: 3.0,
                    lambda: 0.0,
                    n: 60,
                    momentum: 0.0,
                };
                let (mut a, mut b) = (net.clone(), net.clone());
                update.apply(&mut a, got, len, None);
                apply_step(&mut b, &results, update, len, None);
                assert_eq!(a, b);
            }
        }
    }

    /// A plain step through [`Workspace::step`] (the first layer updated as
    /// its gradient is computed, or not where the fused kernel does not
    /// apply) is `backprop_with` then `Update::apply`, bit for bit, with
    /// and without L2.
    #[test]
    fn fused_step_equals_backprop_then_update() {
        let mut ws = Workspace::new();
        let mut rng = init_rng(9);
        let cases: &[(&[usize], &[usize])] = &[
            (&[784, 30, 10], &[1, 2, 10, 64, 65, 100, 256, 257]),
            (&[784, 10], &[1, 10]),
            (&[784, 300, 20, 10], &[3, 10]),
        ];
        for &(sizes, lens) in cases {
            for &n in lens {
                let set = samples(n, rng.random());
                for k in KernelSet::supported() {
                    for (cost, lambda) in [(Cost::Quadratic, 0.0), (Cost::CrossEntropy, 5.0)] {
                        let update = crate::optimizer::Update {
                            eta: 0.5,
                            lambda,
                            n: 50_000,
                            momentum: 0.0,
                        };
                        let net = Network::new(sizes, &mut init_rng(rng.random()));
                        let mut want = net.clone();
                        let g =
                            net.backprop_with(set.inputs().view(), set.targets().view(), cost, k);
                        update.apply(&mut want, &g, n, None);
                        let mut got = net.clone();
                        ws.load_all(&set);
                        ws.step(&mut got, cost, k, update.descend(n).unwrap());
                        assert!(
                            bits(&got.weights, &got.biases) == bits(&want.weights, &want.biases),
                            "{sizes:?} n={n} {k} λ={lambda}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn pixels_scale_as_the_divide_for_every_byte_and_length() {
        let pixels: Vec<u8> = (0..=255u8).chain(0..=255u8).rev().collect();
        for len in [0, 1, 7, 8, 9, 255, 256, 512] {
            let mut out = vec![f32::NAN; len];
            scale_pixels(&pixels[..len], &mut out, &SCALE);
            for (v, &p) in out.iter().zip(&pixels) {
                assert_eq!(v.to_bits(), (f32::from(p) / 255.0).to_bits());
            }
        }
    }
}
