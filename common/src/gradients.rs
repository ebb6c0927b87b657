//! Summed gradients and their reduction in logical-shard order.
//!
//! Float addition is not associative, so the order in which shard results are
//! added decides the bits of the update. Everybody (`--local`, the
//! coordinator, the tests) reduces through [`Gradients::sum_in_shard_order`],
//! which adds shard 0, then 1, then 2, ..., never in arrival order.

use ndarray::{Array1, Array2};

/// `Σ_x ∇w C_x` and `Σ_x ∇b C_x` over some samples, same shapes as the network.
#[derive(Debug, Clone, PartialEq)]
pub struct Gradients {
    /// `nabla_w[l]`: `(sizes[l+1], sizes[l])`.
    pub nabla_w: Vec<Array2<f32>>,
    /// `nabla_b[l]`: `(sizes[l+1],)`.
    pub nabla_b: Vec<Array1<f32>>,
}

impl Gradients {
    /// All-zero gradients for a network of these sizes.
    pub fn zeros(sizes: &[usize]) -> Self {
        let pairs = sizes.windows(2);
        Self {
            nabla_w: pairs.clone().map(|p| Array2::zeros((p[1], p[0]))).collect(),
            nabla_b: pairs.map(|p| Array1::zeros(p[1])).collect(),
        }
    }

    /// All-zero gradients shaped like `network`'s parameters (either kind).
    pub fn zeros_like(network: &crate::Network) -> Self {
        Self {
            nabla_w: network
                .weights
                .iter()
                .map(|w| Array2::zeros(w.dim()))
                .collect(),
            nabla_b: network
                .biases
                .iter()
                .map(|b| Array1::zeros(b.len()))
                .collect(),
        }
    }

    /// `self += other`, elementwise.
    ///
    /// # Panics
    /// If the shapes differ.
    pub fn add(&mut self, other: &Gradients) {
        for (a, b) in self.nabla_w.iter_mut().zip(&other.nabla_w) {
            *a += b;
        }
        for (a, b) in self.nabla_b.iter_mut().zip(&other.nabla_b) {
            *a += b;
        }
    }

    /// `self = other`, elementwise, reusing `self`'s buffers.
    ///
    /// # Panics
    /// If the shapes differ.
    pub fn assign(&mut self, other: &Gradients) {
        for (a, b) in self.nabla_w.iter_mut().zip(&other.nabla_w) {
            a.assign(b);
        }
        for (a, b) in self.nabla_b.iter_mut().zip(&other.nabla_b) {
            a.assign(b);
        }
    }

    /// The sum of per-shard gradients, added in the order given, which must be
    /// shard order: `((0 + g0) + g1) + g2 ...`.
    ///
    /// # Panics
    /// If `shards` is empty or the shapes differ.
    pub fn sum_in_shard_order<'a>(shards: impl IntoIterator<Item = &'a Gradients>) -> Gradients {
        let mut shards = shards.into_iter();
        let first = shards.next().expect("a step has at least one shard");
        let mut total = first.clone();
        for g in shards {
            total.add(g);
        }
        total
    }
}
