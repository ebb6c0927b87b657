//! Chapter 3's cost functions, as `network2.py`'s `QuadraticCost` and
//! `CrossEntropyCost`: a cost's value `fn(a, y)` and the output layer's error
//! `delta(a, y)`. The cost is the one option a worker needs, because the
//! output delta depends on it; the coordinator sends it once, in `Welcome`.
//!
//! Departures from network2.py:
//! - `delta` takes the output activations `a = σ(z)` rather than `z`: σ'(z) is
//!   `a(1 − a)`, which gives the same bits as recomputing σ from `z`;
//! - the cross-entropy value is computed in f64 from the output *weighted
//!   input* `z` (`−y ln σ(z) − (1−y) ln(1−σ(z))` = `y·softplus(−z) + (1−y)·softplus(z)`),
//!   so it stays finite where an f32 activation has rounded to exactly 0 or 1.
//!   network2.py's `nan_to_num` gives the same value wherever its own is finite.

use ndarray::{Array2, ArrayView2, Zip};

/// Which cost the network is trained on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Cost {
    /// `C = ½‖a − y‖²`, chapter 1's cost; `δ = (a − y)·σ'(z)`.
    #[default]
    Quadratic,
    /// `C = −Σ [y ln a + (1 − y) ln(1 − a)]`; `δ = a − y`, with no σ' (so
    /// saturated output neurons still learn).
    CrossEntropy,
}

impl Cost {
    /// Every cost, for flags and tests.
    pub const ALL: [Cost; 2] = [Cost::Quadratic, Cost::CrossEntropy];

    /// The flag spelling: `quadratic` or `cross-entropy`.
    pub fn name(self) -> &'static str {
        match self {
            Cost::Quadratic => "quadratic",
            Cost::CrossEntropy => "cross-entropy",
        }
    }

    /// The class name network2.py's `save`/`load` use.
    pub fn network2_name(self) -> &'static str {
        match self {
            Cost::Quadratic => "QuadraticCost",
            Cost::CrossEntropy => "CrossEntropyCost",
        }
    }

    /// Parses [`Cost::name`]'s spelling.
    pub fn from_name(name: &str) -> Option<Cost> {
        Cost::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The output error `δ^L = ∂C_x/∂z^L` of every column, from the output
    /// activations `a` `(out, n)` and targets `y` `(out, n)`.
    pub fn delta(self, a: &Array2<f32>, y: ArrayView2<f32>) -> Array2<f32> {
        Zip::from(a)
            .and(y)
            .map_collect(|&a, &y| self.output_error(a, y))
    }

    /// One entry of [`Cost::delta`]: the output error of an output
    /// activation `a` with target `y`.
    pub fn output_error(self, a: f32, y: f32) -> f32 {
        match self {
            // (a − y) · σ'(z), σ'(z) = a(1 − a); the same expression (and bits) as network.py's.
            Cost::Quadratic => (a - y) * (a * (1.0 - a)),
            Cost::CrossEntropy => a - y,
        }
    }

    /// Total cost `Σ_x C_x` over the columns, from the output weighted inputs
    /// `z` `(out, n)` and their activations `a = σ(z)`, in f64.
    pub fn total(self, z: &Array2<f32>, a: &Array2<f32>, y: ArrayView2<f32>) -> f64 {
        let mut total = 0.0f64;
        match self {
            Cost::Quadratic => Zip::from(a).and(y).for_each(|&a, &y| {
                let d = f64::from(a - y);
                total += 0.5 * d * d;
            }),
            Cost::CrossEntropy => Zip::from(z).and(y).for_each(|&z, &y| {
                let (z, y) = (f64::from(z), f64::from(y));
                total += y * softplus(-z) + (1.0 - y) * softplus(z);
            }),
        }
        total
    }
}

impl std::fmt::Display for Cost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `ln(1 + eᵗ)`, without overflow for large `t` (`−ln σ(−t)`).
fn softplus(t: f64) -> f64 {
    if t > 0.0 {
        t + (-t).exp().ln_1p()
    } else {
        t.exp().ln_1p()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_entropy_value_is_network2s_and_finite_when_saturated() {
        let z = Array2::from_shape_vec((2, 1), vec![0.3f32, -40.0]).unwrap();
        let a = z.mapv(|z| 1.0 / (1.0 + (-z).exp()));
        let y = Array2::from_shape_vec((2, 1), vec![1.0f32, 1.0]).unwrap();
        let got = Cost::CrossEntropy.total(&z, &a, y.view());
        // −ln σ(0.3) − ln σ(−40), in f64 (σ(−40) underflows nothing in f64).
        let s = |z: f64| 1.0 / (1.0 + (-z).exp());
        let want = -(s(0.3f32 as f64)).ln() - (s(-40.0)).ln();
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        assert!(got.is_finite());
    }

    #[test]
    fn names_round_trip() {
        for c in Cost::ALL {
            assert_eq!(Cost::from_name(c.name()), Some(c));
        }
        assert_eq!(Cost::default(), Cost::Quadratic);
    }
}
