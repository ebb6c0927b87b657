//! Shard audits (`--audit-rate p`): the coordinator recomputes a random
//! fraction `p` of the shards itself and compares the worker's gradients
//! with its own, bit for bit.
//!
//! Results are exact at a fixed shard count and kernel set, so an honest
//! worker's gradients equal the recomputation in every bit, and any
//! difference at all means a faulty CPU (silent data corruption) or a lying
//! peer. The step then uses the recomputed gradients, so an audited shard
//! can never put a wrong value into the model.
//!
//! Why the coordinator and not a second worker: the coordinator already
//! holds the weights and the data, its result is the trusted one (a second
//! worker could be faulty too, and a mismatch between two workers would need
//! a third to break the tie), and a shard costs it no transfer. The price is
//! coordinator CPU: `p` times a step's compute, serial with the step (about
//! 2 µs per sample for `[784, 30, 10]`).
//!
//! Which shards are audited is decided by a keyed hash of (step, shard) with
//! a key drawn from the OS at start-up and never sent, so a worker cannot
//! tell which of its results will be checked.

use common::cost::Cost;
use common::dataset::Samples;
use common::kernels::KernelSet;
use common::layers::DropoutKey;
use common::shard::{net_gradient, summed_gradient};
use common::{Gradients, Network};

/// The audit policy of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Audit {
    /// Fraction of shards recomputed, 0 to 1.
    rate: f64,
    /// Secret key of the selection hash.
    key: u64,
    /// The run's cost and kernels: what a worker computed with.
    cost: Cost,
    kernels: KernelSet,
}

impl Audit {
    /// Audits a fraction `rate` (clamped to 0..=1) of the shards of a run
    /// computing `cost` with `kernels`, choosing them with a fresh secret key.
    pub fn new(rate: f64, cost: Cost, kernels: KernelSet) -> Self {
        Self::with_key(rate, cost, kernels, rand::random())
    }

    /// [`Audit::new`] with a given selection key (for tests).
    pub fn with_key(rate: f64, cost: Cost, kernels: KernelSet, key: u64) -> Self {
        Audit {
            rate: rate.clamp(0.0, 1.0),
            key,
            cost,
            kernels,
        }
    }

    /// No audits.
    pub fn off() -> Self {
        Self::with_key(0.0, Cost::Quadratic, KernelSet::Portable, 0)
    }

    /// Whether shard `shard` of step `step` is recomputed.
    pub fn selects(&self, step: u64, shard: usize) -> bool {
        if self.rate <= 0.0 {
            return false;
        }
        if self.rate >= 1.0 {
            return true;
        }
        let h = mix(mix(self.key ^ step) ^ shard as u64);
        // The top 53 bits as a uniform number in [0, 1).
        ((h >> 11) as f64) * (1.0 / (1u64 << 53) as f64) < self.rate
    }

    /// Recomputes `samples`' gradients at `network`'s weights; `Err` with the
    /// recomputed gradients if `claimed` differs from them in any bit.
    pub fn check(
        &self,
        network: &Network,
        samples: &Samples,
        claimed: &Gradients,
        key: DropoutKey,
    ) -> Result<(), Gradients> {
        let verified = match network.net {
            Some(_) => net_gradient(network, samples, self.kernels, key),
            None => summed_gradient(network, samples, self.cost, self.kernels),
        };
        if same_bits(&verified, claimed) {
            Ok(())
        } else {
            Err(verified)
        }
    }
}

/// SplitMix64's finaliser: a bijection of u64 whose outputs look uniform.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Whether two gradients have the same shapes and the same bits everywhere
/// (unlike `==`, which calls −0 equal to +0).
fn same_bits(a: &Gradients, b: &Gradients) -> bool {
    let bits = |x: &f32| x.to_bits();
    a.nabla_w.len() == b.nabla_w.len()
        && a.nabla_b.len() == b.nabla_b.len()
        && a.nabla_w
            .iter()
            .zip(&b.nabla_w)
            .all(|(p, q)| p.shape() == q.shape() && p.iter().map(bits).eq(q.iter().map(bits)))
        && a.nabla_b
            .iter()
            .zip(&b.nabla_b)
            .all(|(p, q)| p.shape() == q.shape() && p.iter().map(bits).eq(q.iter().map(bits)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::schedule::init_rng;

    const KEY: DropoutKey = DropoutKey {
        seed: 0,
        epoch: 0,
        first: 0,
    };

    #[test]
    fn the_selected_fraction_is_the_rate_within_a_binomial_bound() {
        // 40,000 (step, shard) pairs: the count audited is Binomial(n, p);
        // it stays within 4.5 standard deviations of n·p with probability
        // 1 − 7·10⁻⁶, for every key tried.
        let n = 10_000u64 * 4;
        for (key, rate) in [(1, 0.1), (2, 0.01), (3, 0.5), (0xDEAD_BEEF, 0.25)] {
            let audit = Audit::with_key(rate, Cost::Quadratic, KernelSet::Portable, key);
            let count = (0..10_000u64)
                .flat_map(|step| (0..4).map(move |shard| (step, shard)))
                .filter(|&(step, shard)| audit.selects(step, shard))
                .count() as f64;
            let (mean, sd) = (n as f64 * rate, (n as f64 * rate * (1.0 - rate)).sqrt());
            assert!(
                (count - mean).abs() <= 4.5 * sd,
                "key {key} rate {rate}: {count} audited, expected {mean} ± {sd}"
            );
        }
        let none = Audit::with_key(0.0, Cost::Quadratic, KernelSet::Portable, 9);
        let all = Audit::with_key(1.0, Cost::Quadratic, KernelSet::Portable, 9);
        assert!((0..1000).all(|s| !none.selects(s, 0) && all.selects(s, 3)));
    }

    #[test]
    fn any_flipped_bit_fails_the_check_and_the_recomputation_is_returned() {
        let mut rng = init_rng(4);
        let network = Network::new(&[784, 8, 10], &mut rng);
        let samples = Samples {
            pixels: (0..3 * 784).map(|i| (i * 7 % 256) as u8).collect(),
            labels: vec![1, 5, 9],
        };
        for kernels in KernelSet::supported() {
            let audit = Audit::with_key(1.0, Cost::CrossEntropy, kernels, 1);
            let honest = summed_gradient(&network, &samples, Cost::CrossEntropy, kernels);
            assert_eq!(audit.check(&network, &samples, &honest, KEY), Ok(()));
            let mut corrupt = honest.clone();
            let v = &mut corrupt.nabla_w[0][(3, 400)];
            *v = f32::from_bits(v.to_bits() ^ 1);
            assert_eq!(
                audit.check(&network, &samples, &corrupt, KEY),
                Err(honest.clone())
            );
            // −0 and +0 compare equal but are different bits.
            let zero = Gradients {
                nabla_w: honest.nabla_w.iter().map(|w| w.mapv(|_| 0.0)).collect(),
                nabla_b: honest.nabla_b.iter().map(|b| b.mapv(|_| 0.0)).collect(),
            };
            let mut negative = zero.clone();
            negative.nabla_b[1][0] = -0.0;
            assert!(same_bits(&zero, &zero));
            assert!(!same_bits(&zero, &negative));
        }
    }
}
