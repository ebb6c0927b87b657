//! The layers' maths against finite differences of the cost, and the
//! properties the cluster relies on (a shard's gradient is the sum of its
//! samples', whichever way the shard is cut, dropout included).

use ndarray::{Array1, Array2};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::kernels::KernelSet;
use crate::layers::net::{self, Mode, Params};
use crate::layers::{DropoutKey, NetSpec, Shape};

/// Small nets that cover every layer type, activation and dropout.
const NETS: [&str; 7] = [
    "conv3x3,pool2,fc6,softmax4",
    "conv3x3:relu,pool2,fc6:relu,softmax4",
    "conv2x3:tanh,pool1,conv3x3,pool2,fc5:tanh:dropout=0.25,softmax3:dropout=0.5",
    "fc7:dropout=0.5,softmax4",
    "conv4x3:relu,pool2,softmax3:dropout=0.3",
    "conv2x1:relu,pool2,conv2x3:relu,pool1,fc5:relu:dropout=0.4,softmax4",
    // conv3x3 over 8 maps has 72 weights a filter: its gradient is the sum over the winners
    "conv8x3:relu,pool1,conv3x3:tanh,pool2,fc5:dropout=0.3,softmax4",
];

fn input_shape() -> Shape {
    Shape {
        channels: 1,
        height: 8,
        width: 8,
    }
}

/// A net with random (not network3's zero) softmax weights, so every gradient is exercised.
fn random_params(spec: &NetSpec, seed: u64) -> (Vec<Array2<f32>>, Vec<Array1<f32>>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut w, mut b) = net::initial_params(spec, &mut rng);
    for m in w.iter_mut() {
        m.mapv_inplace(|_| rng.random_range(-0.5..0.5));
    }
    for v in b.iter_mut() {
        v.mapv_inplace(|_| rng.random_range(-0.5..0.5));
    }
    (w, b)
}

fn random_batch(spec: &NetSpec, n: usize, seed: u64) -> (Array2<f32>, Array2<f32>, Vec<u8>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = Array2::from_shape_fn((spec.input.len(), n), |_| rng.random_range(0.0..1.0));
    let labels: Vec<u8> = (0..n)
        .map(|_| rng.random_range(0..spec.classes() as u8))
        .collect();
    let mut y = Array2::zeros((spec.classes(), n));
    for (s, &l) in labels.iter().enumerate() {
        y[[usize::from(l), s]] = 1.0;
    }
    (x, y, labels)
}

/// The training cost with the masks of `key`, in f64.
fn cost(
    spec: &NetSpec,
    w: &[Array2<f32>],
    b: &[Array1<f32>],
    x: &Array2<f32>,
    labels: &[u8],
    key: DropoutKey,
) -> f64 {
    let p = Params {
        weights: w,
        biases: b,
    };
    let a = net::forward(spec, p, x.view(), KernelSet::Portable, Mode::Train(key));
    net::log_likelihood(&a, labels)
}

/// Central differences of the cost in one parameter, or `None` where the
/// cost is not smooth there (a ReLU or a pool's maximum changes within
/// `eps`): the two one-sided differences disagree.
fn finite_difference(mut cost_at: impl FnMut(f32) -> f64, at: f32, eps: f32) -> Option<f64> {
    let (c0, up, down) = (cost_at(at), cost_at(at + eps), cost_at(at - eps));
    let (fwd, bwd) = ((up - c0) / f64::from(eps), (c0 - down) / f64::from(eps));
    ((fwd - bwd).abs() <= 2e-3 + 0.05 * fwd.abs().max(bwd.abs()))
        .then_some((up - down) / (2.0 * f64::from(eps)))
}

#[test]
fn gradients_match_finite_differences() {
    let key = DropoutKey {
        seed: 3,
        epoch: 1,
        first: 17,
    };
    for (i, text) in NETS.iter().enumerate() {
        let spec = NetSpec::parse(text, input_shape()).unwrap();
        let (mut w, mut b) = random_params(&spec, i as u64);
        let (x, y, labels) = random_batch(&spec, 3, 100 + i as u64);
        let p = Params {
            weights: &w,
            biases: &b,
        };
        let g = net::backprop(&spec, p, x.view(), y.view(), KernelSet::Portable, key);
        let (eps, mut checked, mut kinks) = (3e-3f32, 0, 0);
        let mut check = |fd: Option<f64>, got: f32, what: String| match fd {
            Some(fd) => {
                let got = f64::from(got);
                assert!(
                    (fd - got).abs() <= 2e-3 + 2e-2 * fd.abs(),
                    "{text}: {what}: backprop {got}, finite differences {fd}"
                );
                checked += 1;
            }
            None => kinks += 1,
        };
        for l in 0..spec.layers.len() {
            for j in (0..w[l].len()).step_by(5) {
                let (r, c) = (j / w[l].ncols(), j % w[l].ncols());
                let orig = w[l][[r, c]];
                let fd = finite_difference(
                    |v| {
                        w[l][[r, c]] = v;
                        cost(&spec, &w, &b, &x, &labels, key)
                    },
                    orig,
                    eps,
                );
                w[l][[r, c]] = orig;
                check(fd, g.nabla_w[l][[r, c]], format!("w{l}[{r},{c}]"));
            }
            for j in 0..b[l].len() {
                let orig = b[l][j];
                let fd = finite_difference(
                    |v| {
                        b[l][j] = v;
                        cost(&spec, &w, &b, &x, &labels, key)
                    },
                    orig,
                    eps,
                );
                b[l][j] = orig;
                check(fd, g.nabla_b[l][j], format!("b{l}[{j}]"));
            }
        }
        assert!(
            checked > 20 && kinks * 5 < checked,
            "{text}: {checked} checked, {kinks} at kinks"
        );
    }
}

/// A shard whose patches outgrow the cache goes through its conv layers a
/// few samples at a time (and the sum over the winners makes conv layer 2's
/// patches again): its gradients are the sum of those of its quarters,
/// which go whole (the path the finite differences and PyTorch's fixture
/// check), and the kernel sets agree.
#[test]
fn a_large_shard_in_chunks_sums_to_its_quarters_gradients() {
    let mnist = Shape::MNIST;
    let spec = NetSpec::parse("conv20x5:tanh,pool2,conv6x5:tanh,pool2,softmax3", mnist).unwrap();
    let n = 40;
    let maps = spec.shapes()[1];
    assert!(!crate::layers::conv::patches_fit_in_cache(mnist, 5, n));
    assert!(!crate::layers::conv::patches_fit_in_cache(maps, 5, n));
    let (mut w, b) = random_params(&spec, 7);
    for m in w.iter_mut() {
        m.mapv_inplace(|v| v * 0.2);
    }
    let (x, y, _) = random_batch(&spec, n, 8);
    let key = DropoutKey {
        seed: 1,
        epoch: 0,
        first: 0,
    };
    let p = Params {
        weights: &w,
        biases: &b,
    };
    let g = net::backprop(&spec, p, x.view(), y.view(), KernelSet::Portable, key);
    let fast = net::backprop(&spec, p, x.view(), y.view(), KernelSet::best(), key);
    let quarter = |q: usize| {
        let part = ndarray::s![.., q * n / 4..(q + 1) * n / 4];
        let (xq, yq) = (x.slice(part).to_owned(), y.slice(part).to_owned());
        let first = (q * n / 4) as u64;
        let key = DropoutKey { first, ..key };
        net::backprop(&spec, p, xq.view(), yq.view(), KernelSet::Portable, key)
    };
    assert!(crate::layers::conv::patches_fit_in_cache(maps, 5, n / 4));
    let mut quarters = quarter(0);
    for q in 1..4 {
        quarters.add(&quarter(q));
    }
    for other in [&fast, &quarters] {
        let pairs = g
            .nabla_w
            .iter()
            .flatten()
            .zip(other.nabla_w.iter().flatten());
        for (a, c) in pairs {
            assert!((a - c).abs() <= 1e-4 * (1.0 + a.abs()), "{a} against {c}");
        }
    }
}

#[test]
fn evaluation_scales_dropped_inputs_by_one_minus_p() {
    let spec = NetSpec::parse("fc5:dropout=0.5,softmax3:dropout=0.25", Shape::flat(4)).unwrap();
    let (w, b) = random_params(&spec, 9);
    let (x, _, _) = random_batch(&spec, 2, 9);
    let p = Params {
        weights: &w,
        biases: &b,
    };
    let out = net::feedforward(&spec, p, x.view(), KernelSet::Portable);
    // the same net written out by hand: activation((1 − p)·w·x + b)
    let h = ((w[0].dot(&x) * 0.5) + b[0].view().insert_axis(ndarray::Axis(1)))
        .mapv(|z| 1.0 / (1.0 + (-z).exp()));
    let z = (w[1].dot(&h) * 0.75) + b[1].view().insert_axis(ndarray::Axis(1));
    for s in 0..2 {
        let e: Vec<f32> = z.column(s).iter().map(|v| v.exp()).collect();
        let sum: f32 = e.iter().sum();
        for c in 0..3 {
            assert!((out[[c, s]] - e[c] / sum).abs() < 1e-5);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// A shard's gradient is a pure function of the shard (recomputing it
    /// gives the same bits), and its dropout masks follow its samples'
    /// positions in the epoch: the gradients of a batch cut into two
    /// shards add up to the whole batch's gradient, whatever the cut.
    #[test]
    fn shard_gradients_depend_only_on_the_samples_and_their_places(
        net in 0..NETS.len(), n in 2usize..9, cut in 1usize..8, set in 0..2usize,
    ) {
        let k = [KernelSet::Portable, KernelSet::best()][set];
        let cut = cut.min(n - 1);
        let spec = NetSpec::parse(NETS[net], input_shape()).unwrap();
        let (w, b) = random_params(&spec, net as u64);
        let (x, y, _) = random_batch(&spec, n, n as u64);
        let p = Params { weights: &w, biases: &b };
        let key = DropoutKey { seed: 5, epoch: 2, first: 40 };
        let shard = |from: usize, to: usize| {
            let key = DropoutKey { first: key.first + from as u64, ..key };
            let (xs, ys) = (x.slice(ndarray::s![.., from..to]), y.slice(ndarray::s![.., from..to]));
            net::backprop(&spec, p, xs.to_owned().view(), ys.to_owned().view(), k, key)
        };
        prop_assert_eq!(shard(0, cut), shard(0, cut));
        let whole = shard(0, n);
        let mut parts = shard(0, cut);
        parts.add(&shard(cut, n));
        for (g, h) in whole.nabla_w.iter().zip(&parts.nabla_w) {
            for (a, b) in g.iter().zip(h) {
                prop_assert!((a - b).abs() <= 1e-4 + 1e-4 * a.abs(), "{} vs {}", a, b);
            }
        }
        for (g, h) in whole.nabla_b.iter().zip(&parts.nabla_b) {
            for (a, b) in g.iter().zip(h) {
                prop_assert!((a - b).abs() <= 1e-4 + 1e-4 * a.abs(), "{} vs {}", a, b);
            }
        }
    }
}

#[test]
fn parse_errors_name_the_layer() {
    let mnist = Shape::MNIST;
    for (text, needle) in [
        (
            "conv20x5,fc100,softmax10",
            "layer 1 `conv20x5`: a conv layer must be followed by pool",
        ),
        (
            "conv20x5,pool5,softmax10",
            "layer 1 `conv20x5,pool5`: pool5 does not divide the 24×24 map",
        ),
        ("fc100,softmax10,fc5", "layer 2 `softmax10`"),
        (
            "fc100",
            "layer 1 `fc100`: the last layer, and only the last, must be softmax",
        ),
        ("fc100:dropout=1.5,softmax10", "layer 1 `fc100:dropout=1.5`"),
        ("fc100:gelu,softmax10", "unknown suffix `:gelu`"),
        ("conv20x30,pool1,softmax10", "does not fit the 1×28×28 map"),
        (
            "fc100,conv2x2,pool1,softmax10",
            "layer 2 `conv2x2,pool1`: a conv layer needs an image",
        ),
        (
            "fc100000,fc100000,softmax10",
            "more than 100000000 parameters",
        ),
        ("", "layer 1 ``"),
        ("pool2,softmax10", "a pool must follow a conv layer"),
        ("softmax10:relu", "takes no activation"),
        (&"fc1,".repeat(200), "more than 64 layers"),
        (
            &format!("{}softmax10", "fc1,".repeat(100)),
            "more than 64 layers",
        ),
        (&"fc1:".repeat(2000), "4096 characters"),
    ] {
        let err = NetSpec::parse(text, mnist).unwrap_err().to_string();
        assert!(err.contains(needle), "{text:?}: {err}");
    }
}

#[test]
fn canonical_text_round_trips() {
    let mnist = Shape::MNIST;
    let text = "conv20x5:relu,pool2,conv40x5:relu,pool2,fc1000:relu:dropout=0.5,fc100:dropout=0.5,softmax10:dropout=0.5";
    let spec = NetSpec::parse(text, mnist).unwrap();
    assert_eq!(spec.to_string(), text);
    assert_eq!(
        NetSpec::parse("conv20x5:sigmoid,pool2,fc100,softmax10", mnist)
            .unwrap()
            .to_string(),
        "conv20x5,pool2,fc100,softmax10"
    );
    let conv2 = NetSpec::parse("conv20x5,pool2,conv40x5,pool2,fc100,softmax10", mnist).unwrap();
    assert_eq!(conv2.parameter_count(), 85_670, "the book's conv2 net");
    assert_eq!(
        conv2.weight_shapes(),
        vec![(20, 25), (40, 500), (100, 640), (10, 100)]
    );
}

/// Evaluation feeds samples forward a chunk at a time; each sample's
/// outputs are what it gets fed alone: the same bits on the portable
/// kernels, whose sums run per sample, and within rounding on AVX2, whose
/// products take a batch's columns in vector-wide groups.
#[test]
fn a_sample_evaluates_the_same_alone_and_in_any_chunk() {
    for text in NETS {
        let spec = NetSpec::parse(text, input_shape()).unwrap();
        let (w, b) = random_params(&spec, 11);
        let p = Params {
            weights: &w,
            biases: &b,
        };
        let (x, _, _) = random_batch(&spec, 75, 12);
        for k in [KernelSet::Portable, KernelSet::best()] {
            let all = net::feedforward(&spec, p, x.view(), k);
            for s in [0, 31, 32, 33, 74] {
                let alone = net::feedforward(&spec, p, x.slice(ndarray::s![.., s..=s]), k);
                if k == KernelSet::Portable {
                    assert_eq!(all.column(s), alone.column(0), "{text}, sample {s}");
                }
                for (a, b) in all.column(s).iter().zip(alone.column(0)) {
                    assert!((a - b).abs() <= 1e-5 * b.abs(), "{text}, sample {s}, {k:?}");
                }
            }
        }
    }
}

proptest! {
    /// A shard's fully connected layers sent as factors (δ and the input)
    /// and multiplied out where they arrive give the whole gradient's bits,
    /// on both kernel sets, with dropout on.
    #[test]
    fn factors_multiplied_out_are_the_whole_gradients_bits(
        net in 0..NETS.len(),
        n in 1usize..12,
        seed in any::<u64>(),
    ) {
        let spec = NetSpec::parse(NETS[net], input_shape()).unwrap();
        let (w, b) = random_params(&spec, seed);
        let p = Params { weights: &w, biases: &b };
        let (x, y, _) = random_batch(&spec, n, seed ^ 1);
        let key = DropoutKey { seed, epoch: 2, first: 40 };
        let fc: Vec<usize> = (0..spec.layers.len())
            .filter(|&l| !matches!(spec.layers[l], crate::layers::Layer::ConvPool { .. }))
            .collect();
        for k in [KernelSet::Portable, KernelSet::best()] {
            let whole = net::backprop(&spec, p, x.view(), y.view(), k, key);
            let (mut g, factors) = net::backprop_factored(&spec, p, x.view(), y.view(), k, key, &fc);
            prop_assert_eq!(factors.iter().map(|f| f.layer).collect::<Vec<_>>(), fc.clone());
            for f in &factors {
                prop_assert_eq!(g.nabla_w[f.layer].dim(), (0, 0));
                g.nabla_w[f.layer] = net::fc_weight_gradient(k, &f.delta, &f.input);
            }
            prop_assert!(g == whole, "{} at n = {}, {:?}", NETS[net], n, k);
        }
    }
}

/// Factoring pays only while the factors are fewer values than the matrix.
#[test]
fn layers_are_factored_while_their_factors_are_smaller() {
    let mnist = Shape::MNIST;
    let conv2 = NetSpec::parse("conv20x5,pool2,conv40x5,pool2,fc100,softmax10", mnist).unwrap();
    // fc100 over 640 inputs: 64,000 weights, 740 values a sample; softmax10 over 100: 1,000 and 110.
    assert_eq!(net::factor_layers(&conv2, 5), vec![2, 3]);
    assert_eq!(net::factor_layers(&conv2, 9), vec![2, 3]);
    assert_eq!(net::factor_layers(&conv2, 10), vec![2]);
    assert_eq!(net::factor_layers(&conv2, 86), vec![2]);
    assert_eq!(net::factor_layers(&conv2, 87), Vec::<usize>::new());
}
