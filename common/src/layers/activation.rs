//! The activations of `network3.py`: sigmoid, ReLU (`max(0, z)`) and tanh,
//! each with its derivative taken from the activation's output `a`, so the
//! backward pass needs no `z`.

use std::fmt;

use ndarray::{Array2, Zip};

use crate::kernels::{self, KernelSet};

/// A layer's activation function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Activation {
    /// `1 / (1 + e^(−z))`, network3.py's default.
    #[default]
    Sigmoid,
    /// `max(0, z)`, network3.py's `ReLU`.
    Relu,
    /// `tanh(z)`.
    Tanh,
}

impl Activation {
    /// Every activation, for flags and tests.
    pub const ALL: [Activation; 3] = [Activation::Sigmoid, Activation::Relu, Activation::Tanh];

    /// The suffix spelling: `sigmoid`, `relu` or `tanh`.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Sigmoid => "sigmoid",
            Activation::Relu => "relu",
            Activation::Tanh => "tanh",
        }
    }

    /// Parses [`Activation::name`]'s spelling.
    pub fn from_name(name: &str) -> Option<Activation> {
        Activation::ALL.into_iter().find(|a| a.name() == name)
    }

    /// `a = f(z)`, elementwise, in place. The sigmoid is the kernel set's;
    /// tanh is `libm`'s on every set (the same bits everywhere).
    pub fn apply(self, k: KernelSet, z: Array2<f32>) -> Array2<f32> {
        match self {
            Activation::Sigmoid => kernels::sigmoid(k, z),
            Activation::Relu => z.mapv_into(|z| if z > 0.0 { z } else { 0.0 }),
            Activation::Tanh => z.mapv_into(libm::tanhf),
        }
    }

    /// `delta ⊙ f'(z)`, with `f'` computed from the output `a = f(z)`:
    /// `a(1 − a)`, `[a > 0]`, `1 − a²`.
    pub fn backward(self, delta: &mut Array2<f32>, a: &Array2<f32>) {
        let d = Zip::from(delta).and(a);
        match self {
            Activation::Sigmoid => d.for_each(|d, &a| *d *= a * (1.0 - a)),
            Activation::Relu => d.for_each(|d, &a| {
                if a <= 0.0 {
                    *d = 0.0
                }
            }),
            Activation::Tanh => d.for_each(|d, &a| *d *= 1.0 - a * a),
        }
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
