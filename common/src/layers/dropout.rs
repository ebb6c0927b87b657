//! Dropout masks that do not depend on the cluster.
//!
//! `network3.py` draws each mask from one random stream, so its masks depend
//! on the order in which samples are computed. Here a mask is a pure
//! function of (seed, epoch, the sample's position in the epoch's order,
//! layer, input unit): a counter-based generator (SplitMix64's finaliser
//! applied to the five values in turn). Whichever worker or shard computes a
//! sample, and after any failure or resume, it sees the same mask, so a
//! dropout run is bitwise identical on any number of workers.
//!
//! A unit is kept when the top 32 bits of its hash are below
//! `round((1 − p)·2³²)`: probability `1 − p`, within 2⁻³² (no rescaling, as
//! network3.py: evaluation multiplies by `1 − p` instead).

use ndarray::Array2;

/// Where a shard's samples sit: the run's seed, the epoch, and the
/// position of the shard's first sample in the epoch's shuffled order (its
/// samples are at `first`, `first + 1`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DropoutKey {
    /// The run's seed.
    pub seed: u64,
    /// The epoch, from 0.
    pub epoch: u64,
    /// Position of the shard's first sample in the epoch.
    pub first: u64,
}

/// SplitMix64's finaliser: a bijection of u64 that mixes every bit.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The mask of layer `layer`'s `units` inputs for `samples` samples from
/// `key`: `(units, samples)`, column-major, 1.0 where kept and 0.0 where
/// dropped.
pub fn mask(key: DropoutKey, layer: usize, p: f32, units: usize, samples: usize) -> Array2<f32> {
    let threshold = ((1.0 - f64::from(p)) * 4_294_967_296.0).round() as u64;
    let base = mix(mix(key.seed) ^ key.epoch);
    let mut values = Vec::with_capacity(units * samples);
    for s in 0..samples as u64 {
        let sample = mix(mix(base ^ (key.first + s)) ^ layer as u64);
        values.extend((0..units as u64).map(|u| {
            let keep = (mix(sample ^ u) >> 32) < threshold;
            if keep {
                1.0
            } else {
                0.0
            }
        }));
    }
    Array2::from_shape_vec((samples, units), values)
        .expect("units × samples values")
        .reversed_axes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_samples_mask_depends_on_its_position_not_on_its_shard() {
        let key = DropoutKey {
            seed: 7,
            epoch: 3,
            first: 100,
        };
        let whole = mask(key, 2, 0.5, 50, 10);
        for split in 1..10 {
            let left = mask(key, 2, 0.5, 50, split);
            let right = mask(
                DropoutKey {
                    first: 100 + split as u64,
                    ..key
                },
                2,
                0.5,
                50,
                10 - split,
            );
            let joined = ndarray::concatenate![ndarray::Axis(1), left, right];
            assert_eq!(joined, whole);
        }
        assert_ne!(mask(DropoutKey { epoch: 4, ..key }, 2, 0.5, 50, 10), whole);
        assert_ne!(mask(key, 1, 0.5, 50, 10), whole);
    }

    #[test]
    fn keeps_about_one_minus_p() {
        let key = DropoutKey {
            seed: 1,
            epoch: 0,
            first: 0,
        };
        for p in [0.0f32, 0.2, 0.5, 0.9] {
            let m = mask(key, 0, p, 1000, 100);
            let kept = m.sum() / 100_000.0;
            assert!((kept - (1.0 - p)).abs() < 0.01, "p {p}: kept {kept}");
        }
    }
}
