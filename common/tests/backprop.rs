//! Backprop against the network.py fixture and against finite differences.
//!
//! The fixture `tests/fixtures/backprop_fixture.json` was computed in float64
//! by network.py's own per-sample `backprop` and `update_mini_batch` (see its
//! "generator" field). Our math is f32, so we compare with a relative
//! tolerance of 1e-5 (about 100 f32 ulps), not bitwise.
//!
//! Chapter 6's layers (`common::layers`) are checked against PyTorch in
//! float64 (`tests/fixtures/network3_fixture.json`, made by the script beside
//! it), each tensor within 1e-5 of its norm, on every supported kernel set.

use common::kernels::KernelSet;
use common::schedule::init_rng;
use common::Network;
use ndarray::{Array1, Array2, ArrayView2};
use serde_json::Value;

const FIXTURE_REL_TOL: f64 = 1e-5;

/// The JSON fixture `tests/fixtures/<name>`.
fn load_fixture(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn fixture() -> Value {
    load_fixture("backprop_fixture.json")
}

fn vec_f64(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn matrix_f64(v: &Value) -> Vec<Vec<f64>> {
    v.as_array().unwrap().iter().map(vec_f64).collect()
}

fn network_from(f: &Value) -> Network {
    let sizes: Vec<usize> = f["sizes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap() as usize)
        .collect();
    let mut net = Network::zeros(&sizes);
    for l in 0..sizes.len() - 1 {
        let rows = matrix_f64(&f["weights"][l]);
        net.weights[l] =
            Array2::from_shape_fn((sizes[l + 1], sizes[l]), |(i, j)| rows[i][j] as f32);
        net.biases[l] = Array1::from(
            vec_f64(&f["biases"][l])
                .iter()
                .map(|&v| v as f32)
                .collect::<Vec<_>>(),
        );
    }
    net
}

fn column(values: &[f64]) -> Array2<f32> {
    Array2::from_shape_fn((values.len(), 1), |(i, _)| values[i] as f32)
}

fn columns(samples: &[Value], key: &str) -> Array2<f32> {
    let cols: Vec<Vec<f64>> = samples.iter().map(|s| vec_f64(&s[key])).collect();
    Array2::from_shape_fn((cols[0].len(), cols.len()), |(i, j)| cols[j][i] as f32)
}

fn assert_close(
    what: &str,
    got: impl IntoIterator<Item = f32>,
    want: impl IntoIterator<Item = f64>,
) {
    let mut worst = 0.0f64;
    for (i, (g, w)) in got.into_iter().zip(want).enumerate() {
        let rel = (f64::from(g) - w).abs() / w.abs().max(1e-3);
        worst = worst.max(rel);
        assert!(
            rel <= FIXTURE_REL_TOL,
            "{what}[{i}]: got {g}, want {w}, rel diff {rel:e}"
        );
    }
    eprintln!("{what}: max rel diff {worst:e}");
}

/// [`assert_close`] for every layer: `weights[l]` against the fixture's
/// matrix `want[w_key][l]` and `biases[l]` against its vector `want[b_key][l]`,
/// each labelled `<prefix><key><l>`.
fn assert_layers_close(
    prefix: &str,
    (weights, w_key): (&[Array2<f32>], &str),
    (biases, b_key): (&[Array1<f32>], &str),
    want: &Value,
) {
    assert_eq!(weights.len(), biases.len(), "{prefix}: layer counts");
    for l in 0..weights.len() {
        assert_close(
            &format!("{prefix}{w_key}{l}"),
            weights[l].iter().copied(),
            matrix_f64(&want[w_key][l]).concat(),
        );
        assert_close(
            &format!("{prefix}{b_key}{l}"),
            biases[l].iter().copied(),
            vec_f64(&want[b_key][l]),
        );
    }
}

#[test]
fn single_sample_matches_network_py() {
    let f = fixture();
    let net = network_from(&f);
    let s = &f["single"];
    let g = net.backprop(
        column(&vec_f64(&s["x"])).view(),
        column(&vec_f64(&s["y"])).view(),
    );
    assert_layers_close("", (&g.nabla_w, "nabla_w"), (&g.nabla_b, "nabla_b"), s);
    let cost = net.total_cost(
        column(&vec_f64(&s["x"])).view(),
        column(&vec_f64(&s["y"])).view(),
    );
    let want = s["cost_quadratic"].as_f64().unwrap();
    assert!(
        (cost - want).abs() <= 1e-6 * want.abs().max(1.0),
        "cost {cost} vs {want}"
    );
}

#[test]
fn batched_minibatch_sum_and_update_match_network_py() {
    let f = fixture();
    let mut net = network_from(&f);
    let m = &f["minibatch"];
    let samples = m["samples"].as_array().unwrap();
    // One matrix for the whole mini-batch: its column sum is network.py's per-sample sum.
    let g = net.backprop(columns(samples, "x").view(), columns(samples, "y").view());
    assert_layers_close(
        "",
        (&g.nabla_w, "sum_nabla_w"),
        (&g.nabla_b, "sum_nabla_b"),
        m,
    );
    let (eta, len) = (
        m["eta"].as_f64().unwrap() as f32,
        m["m"].as_u64().unwrap() as usize,
    );
    let rate = eta / len as f32;
    net.descend(&g, common::kernels::Descend { rate, decay: None }, 0);
    assert_layers_close(
        "",
        (&net.weights, "weights_after"),
        (&net.biases, "biases_after"),
        m,
    );
}

/// An independent f64 sigmoid feedforward: the output activations for input `xs`.
fn feedforward_f64(weights: &[Vec<Vec<f64>>], biases: &[Vec<f64>], xs: &[f64]) -> Vec<f64> {
    let sigmoid = |z: f64| 1.0 / (1.0 + (-z).exp());
    let mut a = xs.to_vec();
    for (w, b) in weights.iter().zip(biases) {
        a = w
            .iter()
            .zip(b)
            .map(|(row, bi)| {
                sigmoid(row.iter().zip(&a).map(|(wij, aj)| wij * aj).sum::<f64>() + bi)
            })
            .collect();
    }
    a
}

/// An independent f64 feedforward + quadratic cost, for finite differences.
fn cost_f64(weights: &[Vec<Vec<f64>>], biases: &[Vec<f64>], x: &[Vec<f64>], y: &[Vec<f64>]) -> f64 {
    let mut total = 0.0;
    for (xs, ys) in x.iter().zip(y) {
        let a = feedforward_f64(weights, biases, xs);
        total += 0.5
            * a.iter()
                .zip(ys)
                .map(|(ai, yi)| (ai - yi).powi(2))
                .sum::<f64>();
    }
    total
}

/// Backprop (f32) against central differences of an f64 cost, h = 1e-6.
/// Tolerance: 2e-3 relative to max(|grad|, 1e-2), what f32 rounding through
/// two layers allows; a wrong term (e.g. a missing sigmoid') is off by O(1).
#[test]
fn backprop_matches_finite_differences() {
    let net = Network::new(&[6, 5, 4, 3], &mut init_rng(11));
    assert_backprop_matches_finite_differences(
        "quadratic",
        &net,
        |x, y| net.backprop(x, y),
        cost_f64,
    );
}

/// A `[2, 3, 1]` case by hand: all weights 0, all biases 0, so every z is 0,
/// every activation ½, σ'(0) = ¼. With y = 1: δ² = (½ − 1)·¼ = −⅛, so
/// ∇b² = −⅛ and ∇w² = −⅛·½ = −1/16 for each of the 3 hidden units; δ¹ = w²ᵀδ² · ¼ = 0.
#[test]
fn hand_computed_2_3_1() {
    let net = Network::zeros(&[2, 3, 1]);
    let g = net.backprop(
        Array2::from_elem((2, 1), 0.7).view(),
        Array2::from_elem((1, 1), 1.0).view(),
    );
    assert_eq!(g.nabla_b[1][0], -0.125);
    assert!(g.nabla_w[1].iter().all(|&v| v == -0.0625));
    assert!(g.nabla_b[0]
        .iter()
        .chain(g.nabla_w[0].iter())
        .all(|&v| v == 0.0));
}

#[test]
fn batched_sum_equals_per_sample_sum() {
    let net = Network::new(&[784, 30, 10], &mut init_rng(5));
    let x = Array2::from_shape_fn((784, 3), |(i, j)| ((i * 7 + j * 13) % 256) as f32 / 255.0);
    let y = Array2::from_shape_fn((10, 3), |(i, j)| f32::from(u8::from(i == j + 2)));
    let batched = net.backprop(x.view(), y.view());
    let mut summed = common::Gradients::zeros(&net.sizes);
    for j in 0..3 {
        summed.add(&net.backprop(
            x.slice(ndarray::s![.., j..j + 1]),
            y.slice(ndarray::s![.., j..j + 1]),
        ));
    }
    for (l, (a, b)) in batched.nabla_w.iter().zip(&summed.nabla_w).enumerate() {
        let diff = (a - b).mapv(f32::abs).fold(0.0f32, |m, &v| m.max(v));
        assert!(diff < 1e-4, "nabla_w{l}: max diff {diff}");
    }
    for (l, (a, b)) in batched.nabla_b.iter().zip(&summed.nabla_b).enumerate() {
        let diff = (a - b).mapv(f32::abs).fold(0.0f32, |m, &v| m.max(v));
        assert!(diff < 1e-4, "nabla_b{l}: max diff {diff}");
        assert!(
            a.iter().any(|&v| v != 0.0),
            "nabla_b{l} is not trivially zero"
        );
    }
}

// ---- Chapter 3: network2.py's costs and L2 ----

fn network2_fixture() -> Value {
    load_fixture("network2_fixture.json")
}

/// Against network2.py's own per-sample code (fixture made by
/// `tests/fixtures/network2_fixture.py`): the summed gradient, the cost with
/// its L2 term, and `update_mini_batch` with λ, for both costs.
#[test]
fn gradients_costs_and_l2_update_match_network2_py() {
    use common::cost::Cost;
    let f = network2_fixture();
    let samples = f["samples"].as_array().unwrap();
    let (x, y) = (columns(samples, "x"), columns(samples, "y"));
    let (eta, lmbda, n) = (
        f["eta"].as_f64().unwrap() as f32,
        f["lmbda"].as_f64().unwrap() as f32,
        f["n"].as_u64().unwrap() as usize,
    );
    // Every kernel set this CPU can run, each against network2.py.
    let cases = KernelSet::supported().into_iter().flat_map(|k| {
        [
            (Cost::CrossEntropy, "cross_entropy", k),
            (Cost::Quadratic, "quadratic", k),
        ]
    });
    for (cost, key, kernels) in cases {
        let want = &f[key];
        let mut net = network_from(&f);
        let g = net.backprop_with(x.view(), y.view(), cost, kernels);
        let prefix = format!("{key} ");
        assert_layers_close(
            &prefix,
            (&g.nabla_w, "sum_nabla_w"),
            (&g.nabla_b, "sum_nabla_b"),
            want,
        );
        // network2's total_cost(data, lmbda): mean cost + 0.5·(λ/len(data))·Σ‖w‖².
        let m = samples.len() as f64;
        let (total, _) = net.cost_and_outputs(x.view(), y.view(), cost, kernels);
        let got = total / m + 0.5 * (f64::from(lmbda) / m) * net.weight_norm2();
        let expected = want["total_cost_with_l2"].as_f64().unwrap();
        assert!(
            (got - expected).abs() <= 1e-5 * expected.abs(),
            "{key} total cost {got} vs network2 {expected}"
        );
        let update = common::optimizer::Update {
            eta,
            lambda: lmbda,
            n,
            momentum: 0.0,
        };
        update.apply(&mut net, &g, samples.len(), None);
        assert_layers_close(
            &prefix,
            (&net.weights, "weights_after"),
            (&net.biases, "biases_after"),
            want,
        );
    }
}

/// An independent f64 cross-entropy cost `Σ_x −Σ_j [y ln a + (1−y) ln(1−a)]`.
fn cross_entropy_f64(
    weights: &[Vec<Vec<f64>>],
    biases: &[Vec<f64>],
    x: &[Vec<f64>],
    y: &[Vec<f64>],
) -> f64 {
    let mut total = 0.0;
    for (xs, ys) in x.iter().zip(y) {
        let a = feedforward_f64(weights, biases, xs);
        total -= a
            .iter()
            .zip(ys)
            .map(|(ai, yi)| yi * ai.ln() + (1.0 - yi) * (1.0 - ai).ln())
            .sum::<f64>();
    }
    total
}

type Params = (Vec<Vec<Vec<f64>>>, Vec<Vec<f64>>);

fn params_f64(net: &Network) -> Params {
    (
        net.weights
            .iter()
            .map(|w| {
                w.rows()
                    .into_iter()
                    .map(|r| r.iter().map(|&v| f64::from(v)).collect())
                    .collect()
            })
            .collect(),
        net.biases
            .iter()
            .map(|b| b.iter().map(|&v| f64::from(v)).collect())
            .collect(),
    )
}

/// Central differences (h = 1e-6) of `cost` against `grad_w`/`grad_b`, with
/// the tolerance of [`backprop_matches_finite_differences`].
fn check_finite_differences(
    what: &str,
    net: &Network,
    cost: impl Fn(&[Vec<Vec<f64>>], &[Vec<f64>]) -> f64,
    grad_w: impl Fn(usize, usize, usize) -> f64,
    grad_b: impl Fn(usize, usize) -> f64,
) -> usize {
    let (mut weights, mut biases) = params_f64(net);
    let h = 1e-6;
    let mut checked = 0;
    let close =
        |numeric: f64, analytic: f64| (numeric - analytic).abs() / numeric.abs().max(1e-2) < 2e-3;
    for l in 0..weights.len() {
        for i in 0..weights[l].len() {
            for j in 0..weights[l][i].len() {
                let orig = weights[l][i][j];
                weights[l][i][j] = orig + h;
                let up = cost(&weights, &biases);
                weights[l][i][j] = orig - h;
                let down = cost(&weights, &biases);
                weights[l][i][j] = orig;
                let (numeric, analytic) = ((up - down) / (2.0 * h), grad_w(l, i, j));
                assert!(
                    close(numeric, analytic),
                    "{what} w{l}[{i},{j}]: {analytic} vs finite difference {numeric}"
                );
                checked += 1;
            }
            let orig = biases[l][i];
            biases[l][i] = orig + h;
            let up = cost(&weights, &biases);
            biases[l][i] = orig - h;
            let down = cost(&weights, &biases);
            biases[l][i] = orig;
            let (numeric, analytic) = ((up - down) / (2.0 * h), grad_b(l, i));
            assert!(
                close(numeric, analytic),
                "{what} b{l}[{i}]: {analytic} vs finite difference {numeric}"
            );
            checked += 1;
        }
    }
    checked
}

/// An independent f64 cost of a network's parameters (weights, biases) on
/// the samples (x, y), summed over the samples.
type DataCost = fn(&[Vec<Vec<f64>>], &[Vec<f64>], &[Vec<f64>], &[Vec<f64>]) -> f64;

/// `backprop` of `net` on [`fd_samples`] against [`check_finite_differences`]
/// of `data_cost` on the same samples, every parameter of `net` checked.
fn assert_backprop_matches_finite_differences(
    what: &str,
    net: &Network,
    backprop: impl FnOnce(ArrayView2<f32>, ArrayView2<f32>) -> common::Gradients,
    data_cost: DataCost,
) {
    let (x, y, xm, ym) = fd_samples();
    let g = backprop(xm.view(), ym.view());
    let checked = check_finite_differences(
        what,
        net,
        |w, b| data_cost(w, b, &x, &y),
        |l, i, j| f64::from(g.nabla_w[l][[i, j]]),
        |l, i| f64::from(g.nabla_b[l][i]),
    );
    assert_eq!(checked, common::network::parameter_count(&net.sizes));
}

/// Inputs and targets as f64 rows and as f32 matrices.
type Samples = (Vec<Vec<f64>>, Vec<Vec<f64>>, Array2<f32>, Array2<f32>);

fn fd_samples() -> Samples {
    use rand::Rng;
    let mut rng = init_rng(12);
    let n = 4;
    let x: Vec<Vec<f64>> = (0..n)
        .map(|_| (0..6).map(|_| f64::from(rng.random::<f32>())).collect())
        .collect();
    let y: Vec<Vec<f64>> = (0..n)
        .map(|j| (0..3).map(|i| f64::from(u8::from(i == j % 3))).collect())
        .collect();
    let xm = Array2::from_shape_fn((6, n), |(i, j)| x[j][i] as f32);
    let ym = Array2::from_shape_fn((3, n), |(i, j)| y[j][i] as f32);
    (x, y, xm, ym)
}

/// Cross-entropy backprop (output delta `a − y`, no σ') against central
/// differences of an independent f64 cross-entropy.
#[test]
fn cross_entropy_backprop_matches_finite_differences() {
    let net = Network::with_init(
        &[6, 5, 4, 3],
        common::network::Init::Scaled,
        &mut init_rng(11),
    );
    assert_backprop_matches_finite_differences(
        "cross-entropy",
        &net,
        |x, y| net.backprop_with(x, y, common::cost::Cost::CrossEntropy, KernelSet::best()),
        cross_entropy_f64,
    );
}

/// The L2 update takes a gradient step on `C = (1/m)·Σ_x C_x + (λ/2n)·Σw²`:
/// `(w − w')/η` after [`common::optimizer::Update`] with λ > 0 matches
/// central differences of that regularised f64 cost (weights decayed,
/// biases not), for both costs.
#[test]
fn l2_update_is_a_gradient_step_on_the_regularised_cost() {
    use common::cost::Cost;
    let sizes = [6, 5, 4, 3];
    let net = Network::with_init(&sizes, common::network::Init::Scaled, &mut init_rng(13));
    let (x, y, xm, ym) = fd_samples();
    let (eta, lambda, n) = (0.5f32, 5.0f32, 40usize);
    let m = x.len() as f64;
    for cost in Cost::ALL {
        let g = net.backprop_with(xm.view(), ym.view(), cost, KernelSet::best());
        let mut after = net.clone();
        let update = common::optimizer::Update {
            eta,
            lambda,
            n,
            momentum: 0.0,
        };
        update.apply(&mut after, &g, x.len(), None);
        let data_cost = |w: &[Vec<Vec<f64>>], b: &[Vec<f64>]| match cost {
            Cost::Quadratic => cost_f64(w, b, &x, &y),
            Cost::CrossEntropy => cross_entropy_f64(w, b, &x, &y),
        };
        let regularised = |w: &[Vec<Vec<f64>>], b: &[Vec<f64>]| {
            let l2: f64 = w.iter().flatten().flatten().map(|v| v * v).sum();
            data_cost(w, b) / m + f64::from(lambda) / (2.0 * n as f64) * l2
        };
        let step = |before: f32, after: f32| f64::from(before - after) / f64::from(eta);
        check_finite_differences(
            &format!("L2 {cost}"),
            &net,
            regularised,
            |l, i, j| step(net.weights[l][[i, j]], after.weights[l][[i, j]]),
            |l, i| step(net.biases[l][i], after.biases[l][i]),
        );
    }
}

/// network2.py's `default_weight_initializer`: weights N(0,1)/√n_in, biases
/// N(0,1); drawn in the same order as N(0,1), so each weight is the large
/// init's draw (as f64) scaled by 1/√n_in.
#[test]
fn scaled_init_is_large_init_over_sqrt_n_in() {
    use common::network::Init;
    let sizes = [784, 100, 10];
    let large = Network::with_init(&sizes, Init::Large, &mut init_rng(3));
    let scaled = Network::with_init(&sizes, Init::Scaled, &mut init_rng(3));
    assert_eq!(large.biases, scaled.biases);
    for (l, (wl, ws)) in large.weights.iter().zip(&scaled.weights).enumerate() {
        let k = (sizes[l] as f32).sqrt();
        for (a, b) in wl.iter().zip(ws.iter()) {
            assert!(
                (a / k - b).abs() <= 1e-6 * a.abs().max(1.0),
                "layer {l}: {a}/{k} vs {b}"
            );
        }
        let var = ws.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / ws.len() as f64;
        let want = 1.0 / sizes[l] as f64;
        assert!(
            (var - want).abs() < 0.1 * want,
            "layer {l}: variance {var} vs 1/n_in {want}"
        );
    }
}

// ---- Chapter 6: network3.py's layers against PyTorch ----

/// The layers of `common::layers` against PyTorch in float64 (fixture made
/// by `tests/fixtures/network3_fixture.py`, which says what each field is).
/// Each tensor is compared as a whole: `‖ours − torch‖ ≤ 1e-5·‖torch‖`
/// (plus a tiny absolute term), so a tensor whose entries cancel (a conv
/// layer's bias gradient) is judged by its size, not by its smallest entry.
mod network3 {
    use super::{load_fixture, matrix_f64, vec_f64};
    use common::kernels::KernelSet;
    use common::layers::dropout;
    use common::layers::net::{backprop, feedforward, forward, log_likelihood, Mode, Params};
    use common::layers::{DropoutKey, NetSpec, Shape};
    use common::Network;
    use ndarray::{Array1, Array2};
    use serde_json::Value;

    const REL_TOL: f64 = 1e-5;
    const ABS_TOL: f64 = 1e-9;

    fn fixture() -> Value {
        load_fixture("network3_fixture.json")
    }

    fn key_of(v: &Value) -> DropoutKey {
        let field = |name: &str| v[name].as_u64().unwrap();
        DropoutKey {
            seed: field("seed"),
            epoch: field("epoch"),
            first: field("first"),
        }
    }

    fn matrices(v: &Value) -> Vec<Array2<f32>> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let rows = matrix_f64(m);
                Array2::from_shape_fn((rows.len(), rows[0].len()), |(i, j)| rows[i][j] as f32)
            })
            .collect()
    }

    fn vectors(v: &Value) -> Vec<Array1<f32>> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|b| vec_f64(b).into_iter().map(|x| x as f32).collect())
            .collect()
    }

    /// `‖got − want‖ / ‖want‖`, asserted within [`REL_TOL`].
    fn rel_error(what: &str, got: impl IntoIterator<Item = f32>, want: &[f64]) -> f64 {
        let got: Vec<f64> = got.into_iter().map(f64::from).collect();
        assert_eq!(got.len(), want.len(), "{what}: length");
        let diff = got
            .iter()
            .zip(want)
            .map(|(g, w)| (g - w).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm = want.iter().map(|w| w * w).sum::<f64>().sqrt();
        assert!(norm > 0.0, "{what}: torch's tensor is zero, a weak check");
        assert!(
            diff <= REL_TOL * norm + ABS_TOL,
            "{what}: ‖ours − torch‖ {diff:e}, ‖torch‖ {norm:e}, relative {:e}",
            diff / norm
        );
        diff / norm
    }

    /// [`rel_error`] of every layer's matrix and vector against `want[w_key]`, `want[b_key]`.
    fn layers_error(
        what: &str,
        (weights, w_key): (&[Array2<f32>], &str),
        (biases, b_key): (&[Array1<f32>], &str),
        want: &Value,
    ) -> f64 {
        let mut worst = 0.0f64;
        for (l, w) in weights.iter().enumerate() {
            let rows = matrix_f64(&want[w_key][l]);
            assert_eq!(
                (rows.len(), rows[0].len()),
                w.dim(),
                "{what} {w_key}{l}: shape"
            );
            worst = worst.max(rel_error(
                &format!("{what} {w_key}{l}"),
                w.iter().copied(),
                &rows.concat(),
            ));
        }
        for (l, b) in biases.iter().enumerate() {
            worst = worst.max(rel_error(
                &format!("{what} {b_key}{l}"),
                b.iter().copied(),
                &vec_f64(&want[b_key][l]),
            ));
        }
        assert_eq!(
            weights.len(),
            want[w_key].as_array().unwrap().len(),
            "{what}: layer count"
        );
        worst
    }

    /// Every case of the fixture on every kernel set this CPU runs: the
    /// shard's summed gradient (training masks from the fixture's key), its
    /// cost `Σ −ln a_y`, the evaluation pass's outputs, and one network3
    /// SGD step (mean gradient, L2 as `0.5·λ·Σw²/num_training_batches`)
    /// as `Update { n: num_training_batches }` makes it.
    #[test]
    fn layers_match_pytorch() {
        let f = fixture();
        let key = key_of(&f["key"]);
        for k in KernelSet::supported() {
            for case in f["cases"].as_array().unwrap() {
                let text = case["net"].as_str().unwrap();
                let dims: Vec<usize> = case["input"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as usize)
                    .collect();
                let input = Shape {
                    channels: dims[0],
                    height: dims[1],
                    width: dims[2],
                };
                let spec = NetSpec::parse(text, input).unwrap();
                let (weights, biases) = (matrices(&case["weights"]), vectors(&case["biases"]));
                let shapes: Vec<(usize, usize)> = weights.iter().map(Array2::dim).collect();
                assert_eq!(shapes, spec.weight_shapes(), "{text}: weight shapes");
                let samples = matrix_f64(&case["x"]);
                let n = samples.len();
                let x = Array2::from_shape_fn((input.len(), n), |(i, s)| samples[s][i] as f32);
                let labels: Vec<u8> = case["labels"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as u8)
                    .collect();
                let mut y = Array2::zeros((spec.classes(), n));
                for (s, &l) in labels.iter().enumerate() {
                    y[[usize::from(l), s]] = 1.0;
                }
                let p = Params {
                    weights: &weights,
                    biases: &biases,
                };
                let what = format!("{k:?} {text}");

                let g = backprop(&spec, p, x.view(), y.view(), k, key);
                let grad = layers_error(
                    &what,
                    (&g.nabla_w, "sum_nabla_w"),
                    (&g.nabla_b, "sum_nabla_b"),
                    case,
                );

                let a = forward(&spec, p, x.view(), k, Mode::Train(key));
                let cost = log_likelihood(&a, &labels);
                let want = case["cost"].as_f64().unwrap();
                let cost_err = (cost - want).abs() / want.abs();
                assert!(cost_err <= REL_TOL, "{what}: cost {cost} vs torch {want}");

                let out = feedforward(&spec, p, x.view(), k);
                let eval = rel_error(
                    &format!("{what} eval outputs"),
                    out.t().iter().copied(),
                    &matrix_f64(&case["eval_outputs"]).concat(),
                );

                let mut step = 0.0f64;
                for u in case["updates"].as_array().unwrap() {
                    let lmbda = u["lmbda"].as_f64().unwrap() as f32;
                    let update = common::optimizer::Update {
                        eta: u["eta"].as_f64().unwrap() as f32,
                        lambda: lmbda,
                        n: u["n_batches"].as_u64().unwrap() as usize,
                        momentum: 0.0,
                    };
                    let sizes = spec.shapes().iter().map(|s| s.len()).collect();
                    let mut net = Network {
                        sizes,
                        weights: weights.clone(),
                        biases: biases.clone(),
                        net: None,
                    };
                    update.apply(&mut net, &g, n, None);
                    let what = format!("{what} λ={lmbda} after");
                    step = step.max(layers_error(
                        &what,
                        (&net.weights, "weights_after"),
                        (&net.biases, "biases_after"),
                        u,
                    ));
                }
                eprintln!(
                    "{what}: max relative error: gradients {grad:.1e}, cost {cost_err:.1e}, eval outputs {eval:.1e}, after the step {step:.1e}"
                );
            }
        }
    }

    /// The fixture's Python port of the mask hash is the trainer's, bit for bit.
    #[test]
    fn python_port_of_the_dropout_masks_is_exact() {
        let f = fixture();
        for m in f["masks"].as_array().unwrap() {
            let key = key_of(&m["key"]);
            let (layer, p) = (
                m["layer"].as_u64().unwrap() as usize,
                m["p"].as_f64().unwrap() as f32,
            );
            let (units, samples) = (
                m["units"].as_u64().unwrap() as usize,
                m["samples"].as_u64().unwrap() as usize,
            );
            let want = m["mask"].as_array().unwrap();
            let got = dropout::mask(key, layer, p, units, samples);
            assert_eq!(got.dim(), (units, samples));
            for (u, row) in want.iter().enumerate() {
                for (s, v) in row.as_array().unwrap().iter().enumerate() {
                    let v = v.as_u64().unwrap() as f32;
                    assert_eq!(
                        got[[u, s]].to_bits(),
                        v.to_bits(),
                        "{key:?} layer {layer} p {p}: unit {u} sample {s}"
                    );
                }
            }
            assert!(
                got.iter().any(|&v| v == 0.0) && got.iter().any(|&v| v == 1.0),
                "{key:?}: a trivial mask"
            );
        }
    }
}
