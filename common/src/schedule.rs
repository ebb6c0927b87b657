//! The training schedule: a seeded shuffle per epoch, mini-batches, and the
//! split of a mini-batch into logical shards.
//!
//! Everything here is a pure function of `(seed, epoch)`: the shuffle of epoch
//! `e` draws from ChaCha8 stream `e + 1` of the seed (stream 0 initialises the
//! weights), so a resumed run or a replay needs no RNG state beyond the seed.

use std::ops::Range;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Global step number within a run, from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StepId(pub u64);

/// Index of a logical shard within its step, from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u32);

impl std::fmt::Display for StepId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::fmt::Display for ShardId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The RNG that draws the initial weights for `seed`.
pub fn init_rng(seed: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(0);
    rng
}

/// The order in which epoch `epoch` visits the `len` training samples.
pub fn epoch_order(seed: u64, epoch: usize, len: usize) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch as u64 + 1);
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut rng);
    order
}

/// Number of mini-batches (steps) in an epoch; the last one may be short.
pub fn steps_per_epoch(len: usize, batch_size: usize) -> usize {
    len.div_ceil(batch_size)
}

/// Splits a mini-batch of `len` samples into at most `shards` contiguous,
/// non-empty ranges covering `0..len` in order. The first `len % shards`
/// ranges are one longer: 10 over 4 gives 3, 3, 2, 2. A batch shorter than
/// `shards` gets one shard per sample, never an empty shard.
///
/// # Panics
/// If `shards` is zero.
pub fn shard_ranges(len: usize, shards: usize) -> Vec<Range<usize>> {
    assert!(shards > 0, "at least one shard");
    let count = shards.min(len);
    let mut ranges = Vec::with_capacity(count);
    let mut start = 0;
    for i in 0..count {
        let size = len / count + usize::from(i < len % count);
        ranges.push(start..start + size);
        start += size;
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_over_four_is_3_3_2_2() {
        assert_eq!(shard_ranges(10, 4), vec![0..3, 3..6, 6..8, 8..10]);
    }

    #[test]
    fn shards_cover_the_batch_exactly_once_in_order() {
        for len in 1..40 {
            for shards in 1..12 {
                let ranges = shard_ranges(len, shards);
                assert_eq!(ranges.len(), shards.min(len), "len {len} shards {shards}");
                let mut next = 0;
                for r in &ranges {
                    assert!(!r.is_empty(), "len {len} shards {shards}: empty shard");
                    assert_eq!(r.start, next, "len {len} shards {shards}: gap or overlap");
                    next = r.end;
                }
                assert_eq!(next, len, "len {len} shards {shards}: not covered");
                let sizes: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
                assert!(sizes.windows(2).all(|w| w[0] >= w[1] && w[0] - w[1] <= 1));
            }
        }
    }

    #[test]
    fn every_sample_once_per_epoch() {
        let order = epoch_order(7, 3, 1000);
        let mut seen = vec![false; 1000];
        for &i in &order {
            assert!(!seen[i], "sample {i} twice");
            seen[i] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_ne!(
            order,
            (0..1000).collect::<Vec<_>>(),
            "the order is shuffled"
        );
    }

    #[test]
    fn same_seed_same_order_and_epochs_differ() {
        assert_eq!(epoch_order(1, 0, 500), epoch_order(1, 0, 500));
        assert_ne!(epoch_order(1, 0, 500), epoch_order(1, 1, 500));
        assert_ne!(epoch_order(1, 0, 500), epoch_order(2, 0, 500));
    }

    #[test]
    fn short_last_batch() {
        assert_eq!(steps_per_epoch(50_000, 10), 5_000);
        assert_eq!(steps_per_epoch(25, 10), 3);
        assert_eq!(shard_ranges(2, 4), vec![0..1, 1..2]);
    }
}
