//! What a step's summed gradient does to the network: network2.py's
//! `update_mini_batch` update with L2 regularisation, and chapter 3's
//! momentum-based gradient descent. This happens only at the coordinator
//! (and in one process, `--local`): workers never see λ, μ or the velocity.
//!
//! With `m` the mini-batch length, `n` the training-set size and `Σ∇` the
//! gradient summed over the mini-batch:
//! - plain (μ = 0): `w ← (1 − η·λ/n)·w − (η/m)·Σ∇w`, `b ← b − (η/m)·Σ∇b`
//!   (network2.py; with λ = 0 this is network.py's update, bit for bit);
//! - momentum (μ > 0): `v ← μ·v − (η/m)·Σ∇w − (η·λ/n)·w`, `w ← w + v`, and
//!   `v_b ← μ·v_b − (η/m)·Σ∇b`, `b ← b + v_b`. The L2 term is the gradient
//!   of `(λ/2n)·Σw²`, so it goes into the velocity like the rest of the
//!   gradient (the book leaves combining the two to the reader); with μ = 0
//!   it is the plain update. Biases are never decayed.

use ndarray::{Array, Dimension, Zip};

use crate::gradients::Gradients;
use crate::kernels::Descend;
use crate::network::Network;

/// The update's hyperparameters for one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Update {
    /// Learning rate η of this step (a schedule may have lowered it).
    pub eta: f32,
    /// L2 regularisation parameter λ (0: none).
    pub lambda: f32,
    /// Training-set size `n` in `η·λ/n`.
    pub n: usize,
    /// Momentum coefficient μ in [0, 1) (0: plain SGD, no velocity).
    pub momentum: f32,
}

/// Momentum's velocity, one value per parameter, shaped like the network
/// (so it is stored as one: `velocity.0.weights[l]` is `weights[l]`'s).
/// Optimiser state: checkpointed with the weights, never sent to workers.
#[derive(Debug, Clone, PartialEq)]
pub struct Velocity(pub Network);

impl Velocity {
    /// A zero velocity for a network of `sizes` (the start of a run).
    pub fn zeros(sizes: &[usize]) -> Self {
        Velocity(Network::zeros(sizes))
    }

    /// A zero velocity shaped like `network` (either kind).
    pub fn zeros_like(network: &Network) -> Self {
        Velocity(network.zeros_like())
    }
}

/// One momentum step on every parameter of `params` (one layer's weights
/// or biases each): `v ← new_v(v, ∇, p)`, then `p ← p + v`.
fn momentum_step<D: Dimension>(
    params: &mut [Array<f32, D>],
    velocity: &mut [Array<f32, D>],
    nabla: &[Array<f32, D>],
    new_v: impl Fn(f32, f32, f32) -> f32,
) {
    for ((p, v), g) in params.iter_mut().zip(velocity).zip(nabla) {
        Zip::from(p).and(v).and(g).for_each(|p, v, &g| {
            *v = new_v(*v, g, *p);
            *p += *v;
        });
    }
}

impl Update {
    /// Applies `nabla`, the gradient summed over a mini-batch of `len`
    /// samples, to `network` (and `velocity`, with momentum).
    ///
    /// # Panics
    /// If `len` is zero, shapes differ, or `momentum > 0` without a velocity.
    pub fn apply(
        &self,
        network: &mut Network,
        nabla: &Gradients,
        len: usize,
        velocity: Option<&mut Velocity>,
    ) {
        assert!(len > 0, "a mini-batch has at least one sample");
        if let Some(plain) = self.descend(len) {
            // λ = 0 gives network.py's update, λ > 0 network2.py's.
            network.descend(nabla, plain, 0);
            return;
        }
        let Velocity(v) = velocity.expect("momentum needs a velocity");
        let (rate, mu) = (self.eta / len as f32, self.momentum);
        let shrink = self.shrink();
        momentum_step(
            &mut network.weights,
            &mut v.weights,
            &nabla.nabla_w,
            |v, g, w| mu * v - rate * g - shrink * w,
        );
        momentum_step(
            &mut network.biases,
            &mut v.biases,
            &nabla.nabla_b,
            |v, g, _| mu * v - rate * g,
        );
    }

    /// The plain update (μ = 0) for a mini-batch of `len` samples as a
    /// [`Descend`], for a kernel that applies it as it computes the
    /// gradient: `None` with momentum.
    pub fn descend(&self, len: usize) -> Option<Descend> {
        (self.momentum == 0.0 && len > 0).then(|| Descend {
            rate: self.eta / len as f32,
            decay: (self.lambda != 0.0).then(|| self.decay()),
        })
    }

    /// `η·λ/n`, computed in f64 and rounded once to f32.
    fn shrink(&self) -> f32 {
        (f64::from(self.eta) * f64::from(self.lambda) / self.n.max(1) as f64) as f32
    }

    /// The weight decay factor `1 − η·λ/n`, computed in f64 and rounded once to f32.
    fn decay(&self) -> f32 {
        (1.0 - f64::from(self.eta) * f64::from(self.lambda) / self.n.max(1) as f64) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::init_rng;

    fn grads(net: &Network, k: f32) -> Gradients {
        let mut g = Gradients::zeros(&net.sizes);
        for (i, w) in g.nabla_w.iter_mut().enumerate() {
            w.iter_mut()
                .enumerate()
                .for_each(|(j, v)| *v = k * ((i + j) % 7) as f32 - 3.0);
        }
        for b in &mut g.nabla_b {
            b.iter_mut()
                .enumerate()
                .for_each(|(j, v)| *v = k * (j % 5) as f32);
        }
        g
    }

    #[test]
    fn no_l2_no_momentum_is_network_py_bit_for_bit() {
        let mut a = Network::new(&[6, 4, 3], &mut init_rng(1));
        let mut b = a.clone();
        let g = grads(&a, 0.5);
        // network.py: w - (eta/len(mini_batch))*nw, b - (eta/len(mini_batch))*nb
        let rate = 3.0f32 / 10.0;
        for (w, nw) in a.weights.iter_mut().zip(&g.nabla_w) {
            Zip::from(w).and(nw).for_each(|w, &nw| *w -= rate * nw);
        }
        for (b, nb) in a.biases.iter_mut().zip(&g.nabla_b) {
            Zip::from(b).and(nb).for_each(|b, &nb| *b -= rate * nb);
        }
        let u = Update {
            eta: 3.0,
            lambda: 0.0,
            n: 50_000,
            momentum: 0.0,
        };
        u.apply(&mut b, &g, 10, None);
        assert_eq!(a, b);
    }

    #[test]
    fn l2_decays_weights_not_biases() {
        let net = Network::new(&[6, 4, 3], &mut init_rng(1));
        let mut after = net.clone();
        let u = Update {
            eta: 0.5,
            lambda: 5.0,
            n: 1000,
            momentum: 0.0,
        };
        u.apply(&mut after, &Gradients::zeros(&net.sizes), 10, None);
        let decay = (1.0 - 0.5 * 5.0 / 1000.0) as f32;
        for (w, w0) in after.weights.iter().zip(&net.weights) {
            Zip::from(w)
                .and(w0)
                .for_each(|&w, &w0| assert_eq!(w, decay * w0));
        }
        assert_eq!(after.biases, net.biases);
    }

    /// Two steps by hand: v1 = −rate·g − s·w0, w1 = w0 + v1;
    /// v2 = μ·v1 − rate·g − s·w1, w2 = w1 + v2.
    #[test]
    fn momentum_follows_the_velocity_formula() {
        let net0 = Network::new(&[3, 2], &mut init_rng(4));
        let g = grads(&net0, 1.0);
        let u = Update {
            eta: 0.5,
            lambda: 2.0,
            n: 100,
            momentum: 0.9,
        };
        let (rate, s) = (0.5f32 / 4.0, (0.5f64 * 2.0 / 100.0) as f32);
        let mut net = net0.clone();
        let mut v = Velocity::zeros(&net.sizes);
        u.apply(&mut net, &g, 4, Some(&mut v));
        u.apply(&mut net, &g, 4, Some(&mut v));
        for i in 0..2 {
            for j in 0..3 {
                let (w0, gw) = (net0.weights[0][[i, j]], g.nabla_w[0][[i, j]]);
                let v1 = 0.9f32 * 0.0 - rate * gw - s * w0;
                let w1 = w0 + v1;
                let v2 = 0.9f32 * v1 - rate * gw - s * w1;
                assert_eq!(net.weights[0][[i, j]], w1 + v2);
                assert_eq!(v.0.weights[0][[i, j]], v2);
            }
            let gb = g.nabla_b[0][i];
            let v1 = -rate * gb;
            let v2 = 0.9f32 * v1 - rate * gb;
            assert_eq!(net.biases[0][i], net0.biases[0][i] + v1 + v2);
        }
    }
}
