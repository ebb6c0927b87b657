//! The network of Nielsen's `network.py`, batched: a mini-batch (or shard) is a
//! matrix whose columns are samples.
//!
//! Legend: `L = sizes.len()` layers, `n` samples in a batch.
//! - `weights[l]` is `(sizes[l+1], sizes[l])`, i.e. `(out, in)`, as `np.random.randn(y, x)`;
//! - `biases[l]` is `(sizes[l+1],)`;
//! - inputs `x` are `(sizes[0], n)`, targets `y` are `(sizes[L-1], n)`, one column per sample.
//!
//! Departures from `network.py`, all deliberate:
//! - `f32` instead of `f64` (the wire and the compute are f32);
//! - `backprop` takes a whole shard as one matrix and returns the *sum* of the
//!   per-sample gradients (network.py sums them one sample at a time in
//!   `update_mini_batch`); summing over the columns of `delta` is that same sum;
//! - biases are vectors, not `(out, 1)` column matrices;
//! - the cost (network2.py's `cost` attribute) is not stored in the network:
//!   [`Network::backprop_with`] and [`Cost::total`](crate::cost::Cost::total) take it, and
//!   [`Network::backprop`] is network.py's quadratic cost.

use ndarray::{Array1, Array2, ArrayView2, Axis, Zip};
use rand::Rng;
use rand_distr::StandardNormal;

use crate::cost::Cost;
use crate::gradients::Gradients;
use crate::kernels::{self, KernelSet};
use crate::layers::{self, NetSpec};

/// How the initial weights are drawn (chapter 3, "Weight initialization").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Init {
    /// Chapter 1's (and network2.py's `large_weight_initializer`): weights and biases from N(0, 1).
    #[default]
    Large,
    /// network2.py's `default_weight_initializer`: weights from N(0, 1)/√n_in
    /// (n_in: the inputs of the neuron), biases from N(0, 1).
    Scaled,
}

impl Init {
    /// Every initialiser, for flags and tests.
    pub const ALL: [Init; 2] = [Init::Large, Init::Scaled];

    /// The flag spelling: `large` or `scaled`.
    pub fn name(self) -> &'static str {
        match self {
            Init::Large => "large",
            Init::Scaled => "scaled",
        }
    }

    /// Parses [`Init::name`]'s spelling.
    pub fn from_name(name: &str) -> Option<Init> {
        Init::ALL.into_iter().find(|c| c.name() == name)
    }
}

impl std::fmt::Display for Init {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A fully connected sigmoid network (`network.py`, `network2.py`), or one
/// of chapter 6's nets ([`layers`], `network3.py`) when `net` is set: every
/// layer of either kind has one weight matrix and one bias vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    /// Neurons per layer, input first: `[784, 30, 10]` for MNIST. For a
    /// chapter-6 net, its input and output sizes only (`[784, 10]`): the
    /// layers in `net` give the shapes.
    pub sizes: Vec<usize>,
    /// `weights[l]`: `(sizes[l+1], sizes[l])`.
    pub weights: Vec<Array2<f32>>,
    /// `biases[l]`: `(sizes[l+1],)`.
    pub biases: Vec<Array1<f32>>,
    /// Chapter 6's layers (`--net`), or `None` for the sigmoid network of `sizes`.
    pub net: Option<NetSpec>,
}

impl Network {
    /// A network with weights and biases drawn from N(0, 1), as `network.py` does.
    ///
    /// Draw order: for each layer, its biases then its weights (row-major), so a
    /// seed fixes every parameter.
    ///
    /// # Panics
    /// If `sizes` has fewer than two layers or a zero-sized layer.
    pub fn new(sizes: &[usize], rng: &mut impl Rng) -> Self {
        let mut net = Self::zeros(sizes);
        for (w, b) in net.weights.iter_mut().zip(net.biases.iter_mut()) {
            b.iter_mut().for_each(|v| *v = rng.sample(StandardNormal));
            w.iter_mut().for_each(|v| *v = rng.sample(StandardNormal));
        }
        net
    }

    /// A network drawn by `init`: [`Init::Large`] is [`Network::new`];
    /// [`Init::Scaled`] draws in the same order, each weight as an f64 from
    /// N(0, 1) divided by √n_in (network2.py's `randn(y, x)/np.sqrt(x)`), rounded to f32.
    ///
    /// # Panics
    /// If `sizes` has fewer than two layers or a zero-sized layer.
    pub fn with_init(sizes: &[usize], init: Init, rng: &mut impl Rng) -> Self {
        match init {
            Init::Large => Self::new(sizes, rng),
            Init::Scaled => {
                let mut net = Self::zeros(sizes);
                for (w, b) in net.weights.iter_mut().zip(net.biases.iter_mut()) {
                    let scale = (w.ncols() as f64).sqrt();
                    b.iter_mut().for_each(|v| *v = rng.sample(StandardNormal));
                    w.iter_mut().for_each(|v| {
                        let x: f64 = rng.sample(StandardNormal);
                        *v = (x / scale) as f32;
                    });
                }
                net
            }
        }
    }

    /// A network whose parameters are all zero (a buffer to decode into).
    ///
    /// # Panics
    /// If `sizes` has fewer than two layers or a zero-sized layer.
    pub fn zeros(sizes: &[usize]) -> Self {
        assert!(sizes.len() >= 2, "a network needs at least two layers");
        assert!(sizes.iter().all(|&s| s > 0), "layer sizes must be positive");
        let pairs = sizes.windows(2);
        Self {
            sizes: sizes.to_vec(),
            weights: pairs.clone().map(|p| Array2::zeros((p[1], p[0]))).collect(),
            biases: pairs.map(|p| Array1::zeros(p[1])).collect(),
            net: None,
        }
    }

    /// A chapter-6 net of `spec` with every parameter zero.
    pub fn for_net(spec: &NetSpec) -> Self {
        let shapes = spec.weight_shapes();
        Self {
            sizes: vec![spec.input.len(), spec.classes()],
            weights: shapes.iter().map(|&s| Array2::zeros(s)).collect(),
            biases: shapes.iter().map(|&(o, _)| Array1::zeros(o)).collect(),
            net: Some(spec.clone()),
        }
    }

    /// A chapter-6 net of `spec` drawn as `network3.py` does
    /// ([`layers::net::initial_params`]).
    pub fn network3(spec: &NetSpec, rng: &mut impl Rng) -> Self {
        let (weights, biases) = layers::net::initial_params(spec, rng);
        Self {
            sizes: vec![spec.input.len(), spec.classes()],
            weights,
            biases,
            net: Some(spec.clone()),
        }
    }

    /// A network of the same kind and shapes with every parameter zero.
    pub fn zeros_like(&self) -> Self {
        match &self.net {
            Some(spec) => Self::for_net(spec),
            None => Self::zeros(&self.sizes),
        }
    }

    /// The parameters as the layers take them.
    pub fn params(&self) -> layers::net::Params<'_> {
        layers::net::Params {
            weights: &self.weights,
            biases: &self.biases,
        }
    }

    /// Output activations `(sizes[L-1], n)` for inputs `a` `(sizes[0], n)`,
    /// with this CPU's fastest kernels.
    pub fn feedforward(&self, a: ArrayView2<f32>) -> Array2<f32> {
        self.feedforward_with(a, KernelSet::best())
    }

    /// [`Network::feedforward`] with the kernel set `k`.
    pub fn feedforward_with(&self, a: ArrayView2<f32>, k: KernelSet) -> Array2<f32> {
        if let Some(spec) = &self.net {
            return layers::net::feedforward(spec, self.params(), a, k);
        }
        let mut a = a.to_owned();
        for (w, b) in self.weights.iter().zip(&self.biases) {
            a = kernels::sigmoid(k, weighted_input(k, w, b, a.view()));
        }
        a
    }

    /// The summed gradient `(Σ_x ∇b C_x, Σ_x ∇w C_x)` over the samples (columns)
    /// of `x` `(sizes[0], n)` with targets `y` `(sizes[L-1], n)`. Changes nothing.
    ///
    /// # Panics
    /// If the shapes of `x` and `y` do not fit the network (the wire layer
    /// validates everything that comes from outside first).
    pub fn backprop(&self, x: ArrayView2<f32>, y: ArrayView2<f32>) -> Gradients {
        self.backprop_with(x, y, Cost::Quadratic, KernelSet::best())
    }

    /// [`Network::backprop`] for any cost, with the kernel set `k`: only the
    /// output error depends on the cost (`cost.delta`, network2.py's
    /// `(self.cost).delta(zs[-1], activations[-1], y)`).
    ///
    /// # Panics
    /// As [`Network::backprop`], and if this CPU cannot run `k`.
    pub fn backprop_with(
        &self,
        x: ArrayView2<f32>,
        y: ArrayView2<f32>,
        cost: Cost,
        k: KernelSet,
    ) -> Gradients {
        assert_eq!(x.nrows(), self.sizes[0], "input rows");
        assert_eq!(y.nrows(), *self.sizes.last().unwrap_or(&0), "target rows");
        assert_eq!(x.ncols(), y.ncols(), "one target column per input column");
        let layers = self.weights.len();
        // feedforward; activation(l) feeds weights[l] (activation(0) is x, not copied)
        let mut activations: Vec<Array2<f32>> = Vec::with_capacity(layers);
        for (l, (w, b)) in self.weights.iter().zip(&self.biases).enumerate() {
            let z = weighted_input(k, w, b, activation(&x, &activations, l));
            activations.push(kernels::sigmoid(k, z));
        }
        // backward pass, from the last layer down
        let (mut nabla_w, mut nabla_b) = (Vec::with_capacity(layers), Vec::with_capacity(layers));
        let mut delta = cost.delta(&activations[layers - 1], y);
        for l in (0..layers).rev() {
            nabla_b.push(delta.sum_axis(Axis(1)));
            nabla_w.push(kernels::delta_dot_xt(
                k,
                &delta,
                &activation(&x, &activations, l),
            ));
            if l > 0 {
                delta = kernels::wt_dot_delta(k, &self.weights[l], &delta)
                    * sigmoid_prime(&activations[l - 1]);
            }
        }
        nabla_w.reverse();
        nabla_b.reverse();
        Gradients { nabla_w, nabla_b }
    }

    /// The SGD step, network.py's `update_mini_batch` (network2.py's with
    /// L2): `w ← w − rate·∇w` (or `decay·w − rate·∇w`) for the weights of
    /// layers `first_weights..` (a fused kernel updated those before), and
    /// `b ← b − rate·∇b` for every bias, `nabla` being the gradient summed
    /// over the mini-batch. The one place the plain update is written:
    /// [`crate::optimizer::Update::apply`] and [`crate::workspace::Workspace::step`]
    /// call it, and [`kernels::Descend::scalar`] is its per-weight form.
    ///
    /// # Panics
    /// If `nabla` has other shapes than the network.
    pub fn descend(&mut self, nabla: &Gradients, d: kernels::Descend, first_weights: usize) {
        let rate = d.rate;
        let layers = self
            .weights
            .iter_mut()
            .zip(&nabla.nabla_w)
            .skip(first_weights);
        for (w, nw) in layers {
            match d.decay {
                None => Zip::from(w).and(nw).for_each(|w, &nw| *w -= rate * nw),
                Some(decay) => Zip::from(w)
                    .and(nw)
                    .for_each(|w, &nw| *w = decay * *w - rate * nw),
            }
        }
        for (b, nb) in self.biases.iter_mut().zip(&nabla.nabla_b) {
            Zip::from(b).and(nb).for_each(|b, &nb| *b -= rate * nb);
        }
    }

    /// How many samples the network classifies right: the index of the most
    /// active output neuron equals the label.
    pub fn evaluate(&self, x: ArrayView2<f32>, labels: &[u8]) -> usize {
        self.predict(x)
            .into_iter()
            .zip(labels)
            .filter(|&(digit, &label)| digit == usize::from(label))
            .count()
    }

    /// The class of each column of `x`: the index of the most active output neuron.
    pub fn predict(&self, x: ArrayView2<f32>) -> Vec<usize> {
        self.predict_with(x, KernelSet::best())
    }

    /// [`Network::predict`] with the kernel set `k`.
    pub fn predict_with(&self, x: ArrayView2<f32>, k: KernelSet) -> Vec<usize> {
        self.feedforward_with(x, k)
            .columns()
            .into_iter()
            .map(|out| argmax(out.iter().copied()))
            .collect()
    }

    /// Total quadratic cost `Σ_x ½‖a(x) − y(x)‖²` over the columns of `x`.
    pub fn total_cost(&self, x: ArrayView2<f32>, y: ArrayView2<f32>) -> f64 {
        let diff = self.feedforward(x) - y;
        0.5 * diff
            .iter()
            .map(|&d| f64::from(d) * f64::from(d))
            .sum::<f64>()
    }

    /// Total cost `Σ_x C_x` of `cost` over the columns of `x`, and the
    /// outputs `(sizes[L-1], n)` it was computed from (to count right answers
    /// in the same pass), with the kernel set `k`. No regularisation term:
    /// see [`Network::weight_norm2`].
    pub fn cost_and_outputs(
        &self,
        x: ArrayView2<f32>,
        y: ArrayView2<f32>,
        cost: Cost,
        k: KernelSet,
    ) -> (f64, Array2<f32>) {
        if let Some(spec) = &self.net {
            // The log-likelihood `−ln a_y`, whatever `cost` says: it is the softmax layer's.
            let a = layers::net::feedforward(spec, self.params(), x, k);
            let total = (&a * &y)
                .sum_axis(Axis(0))
                .iter()
                .map(|&p| -f64::from(p).ln())
                .sum();
            return (total, a);
        }
        let mut a = x.to_owned();
        let mut z = Array2::zeros((0, 0));
        for (w, b) in self.weights.iter().zip(&self.biases) {
            z = weighted_input(k, w, b, a.view());
            a = kernels::sigmoid(k, z.clone());
        }
        (cost.total(&z, &a, y), a)
    }

    /// `Σ_l ‖w_l‖²` over every weight (biases excluded), in f64: the L2
    /// term of network2.py's `total_cost` is `0.5·(λ/n)` times this.
    pub fn weight_norm2(&self) -> f64 {
        self.weights
            .iter()
            .flat_map(|w| w.iter())
            .map(|&v| f64::from(v) * f64::from(v))
            .sum()
    }

    /// Number of f32 parameters (all weights and biases).
    pub fn parameter_count(&self) -> usize {
        self.weights.iter().map(|w| w.len()).sum::<usize>()
            + self.biases.iter().map(|b| b.len()).sum::<usize>()
    }
}

/// Number of f32 parameters of a network with these layer sizes.
pub fn parameter_count(sizes: &[usize]) -> usize {
    sizes.windows(2).map(|p| p[1] * p[0] + p[1]).sum()
}

/// [`parameter_count`] for sizes that are not yet trusted (from a file or
/// the wire): `None` unless there are two or more positive sizes whose
/// parameter count is at most `max`. Computed without overflow, so nothing
/// is ever allocated for a model that claims to be huge.
pub fn checked_parameter_count(sizes: &[usize], max: usize) -> Option<usize> {
    if sizes.len() < 2 || sizes.iter().any(|&s| s == 0 || s > max) {
        return None;
    }
    sizes.windows(2).try_fold(0usize, |total, p| {
        let layer = p[1].checked_mul(p[0])?.checked_add(p[1])?;
        total.checked_add(layer).filter(|&t| t <= max)
    })
}

/// `z = w·a + b`, `b` broadcast over the columns: `(out, in)·(in, n) + (out,)`.
fn weighted_input(
    k: KernelSet,
    w: &Array2<f32>,
    b: &Array1<f32>,
    a: ArrayView2<f32>,
) -> Array2<f32> {
    let mut z = kernels::w_dot_x(k, w, &a);
    z += &b.view().insert_axis(Axis(1));
    z
}

/// The input of layer `l` of weights: `x` for the first, else the activation
/// of the layer before (`activations[l - 1]`).
fn activation<'a>(
    x: &'a ArrayView2<'_, f32>,
    activations: &'a [Array2<f32>],
    l: usize,
) -> ArrayView2<'a, f32> {
    if l == 0 {
        x.view()
    } else {
        activations[l - 1].view()
    }
}

/// Index of the first largest value (0 for an empty input).
pub fn argmax(values: impl Iterator<Item = f32>) -> usize {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

/// Derivative of the sigmoid function, elementwise, from `s = σ(z)`:
/// `σ'(z) = σ(z)(1 − σ(z))`. Taking `σ(z)` from the activations gives the
/// same bits as recomputing it from `z`, without the exponentials.
fn sigmoid_prime(s: &Array2<f32>) -> Array2<f32> {
    s.mapv(|s| s * (1.0 - s))
}
