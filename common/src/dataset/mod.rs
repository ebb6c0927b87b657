//! MNIST (or any data set in its IDX layout): loading, Nielsen's split, and
//! turning samples into the matrices the network takes.
//!
//! Samples stay as `u8` in memory (47 MB for the training set instead of 188 MB
//! as f32); pixels are scaled by 1/255 only when a shard's matrix is built.

pub mod expand;
pub mod fetch;
pub mod idx;

use std::ops::Range;
use std::path::{Path, PathBuf};

use ndarray::Array2;

pub use idx::IdxError;

/// Pixels per MNIST image (28 x 28), the input size of the network.
pub const IMAGE_SIZE: usize = 28 * 28;
/// MNIST classes (digits 0..9), the output size of the network.
pub const CLASSES: usize = 10;

/// Some samples as bytes: the unit a shard travels as.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Samples {
    /// `len() * IMAGE_SIZE` pixels, 0..=255, sample after sample.
    pub pixels: Vec<u8>,
    /// One label per sample, `0..CLASSES`.
    pub labels: Vec<u8>,
}

impl Samples {
    /// `n` samples of uniformly random pixels and labels from the seeded
    /// generator `rng` (every pixel, then every label): the synthetic data
    /// of tests and benchmarks.
    pub fn random(n: usize, rng: &mut impl rand::Rng) -> Samples {
        Samples {
            pixels: (0..n * IMAGE_SIZE).map(|_| rng.random()).collect(),
            labels: (0..n).map(|_| rng.random_range(0..CLASSES as u8)).collect(),
        }
    }

    /// [`Samples::random`] from a fresh generator seeded with `seed`.
    pub fn random_seeded(n: usize, seed: u64) -> Samples {
        Samples::random(n, &mut crate::schedule::init_rng(seed))
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True if there are no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The samples at `indices`, in that order.
    ///
    /// # Panics
    /// If an index is out of range.
    pub fn gather(&self, indices: &[usize]) -> Samples {
        let mut pixels = Vec::with_capacity(indices.len() * IMAGE_SIZE);
        for &i in indices {
            pixels.extend_from_slice(&self.pixels[i * IMAGE_SIZE..(i + 1) * IMAGE_SIZE]);
        }
        Samples {
            pixels,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
        }
    }

    /// The samples in `range`.
    ///
    /// # Panics
    /// If the range is out of bounds.
    pub fn slice(&self, range: Range<usize>) -> Samples {
        Samples {
            pixels: self.pixels[range.start * IMAGE_SIZE..range.end * IMAGE_SIZE].to_vec(),
            labels: self.labels[range].to_vec(),
        }
    }

    /// Inputs `x` as `(IMAGE_SIZE, n)`, pixels scaled to `[0, 1]` as `p / 255`.
    pub fn inputs(&self) -> Array2<f32> {
        let scaled: Vec<f32> = self.pixels.iter().map(|&p| f32::from(p) / 255.0).collect();
        // (n, 784) row-major is (784, n) column-major: one column per sample, no copy.
        Array2::from_shape_vec((self.len(), IMAGE_SIZE), scaled)
            .expect("pixels hold IMAGE_SIZE bytes per label (checked when loaded or decoded)")
            .reversed_axes()
    }

    /// Targets `y` as `(CLASSES, n)`: one-hot columns of the labels.
    pub fn targets(&self) -> Array2<f32> {
        let mut y = Array2::zeros((CLASSES, self.len()));
        for (j, &label) in self.labels.iter().enumerate() {
            y[[usize::from(label), j]] = 1.0;
        }
        y
    }
}

/// The three sets of Nielsen's `mnist_loader`.
#[derive(Debug, Clone)]
pub struct Mnist {
    /// Training samples: the first five sixths of the training file (50,000 for MNIST).
    pub training: Samples,
    /// Validation samples: the last sixth of the training file (10,000 for MNIST).
    pub validation: Samples,
    /// Test samples: the whole test file (10,000 for MNIST).
    pub test: Samples,
}

/// Why a data directory could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A required file is in none of its accepted names.
    #[error("{dir}: no {name} (looked for {tried}); run with the default --data-dir to fetch MNIST, or put the IDX files there")]
    Missing {
        /// The data directory.
        dir: PathBuf,
        /// The file's canonical name.
        name: &'static str,
        /// The names tried.
        tried: String,
    },
    /// A file is not a valid IDX file.
    #[error(transparent)]
    Idx(#[from] IdxError),
    /// The training file is too small to split.
    #[error("{path}: {count} training samples are too few to split off a validation sixth")]
    TooFew {
        /// The training images file.
        path: PathBuf,
        /// Its sample count.
        count: usize,
    },
}

/// The canonical file names of the four MNIST files.
pub const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";
/// See [`TRAIN_IMAGES`].
pub const TRAIN_LABELS: &str = "train-labels-idx1-ubyte";
/// See [`TRAIN_IMAGES`].
pub const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
/// See [`TRAIN_IMAGES`].
pub const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";

/// Finds `name` in `dir` as itself, `.gz`, or with a dot before `idx`
/// (`train-images.idx3-ubyte`, a common variant spelling).
pub fn find_file(dir: &Path, name: &'static str) -> Result<PathBuf, DataError> {
    let dotted = name.replacen("-idx", ".idx", 1);
    let candidates = [
        name.to_string(),
        format!("{name}.gz"),
        dotted.clone(),
        format!("{dotted}.gz"),
    ];
    candidates
        .iter()
        .map(|c| dir.join(c))
        .find(|p| p.is_file())
        .ok_or_else(|| DataError::Missing {
            dir: dir.to_path_buf(),
            name,
            tried: candidates.join(", "),
        })
}

fn load_pair(
    dir: &Path,
    images: &'static str,
    labels: &'static str,
) -> Result<(PathBuf, Samples), DataError> {
    let (ip, lp) = (find_file(dir, images)?, find_file(dir, labels)?);
    let img = idx::parse_images(&ip, &idx::read_maybe_gz(&ip)?, 28, 28)?;
    let lab = idx::parse_labels(&lp, &idx::read_maybe_gz(&lp)?, CLASSES)?;
    if img.count != lab.len() {
        return Err(IdxError::CountMismatch {
            images: ip,
            image_count: img.count,
            labels: lp,
            label_count: lab.len(),
        }
        .into());
    }
    Ok((
        ip,
        Samples {
            pixels: img.pixels,
            labels: lab,
        },
    ))
}

impl Mnist {
    /// Random training, validation and test sets of these sizes, drawn in
    /// that order from one generator seeded with `seed` ([`Samples::random`]):
    /// synthetic data for tests.
    pub fn random(training: usize, validation: usize, test: usize, seed: u64) -> Mnist {
        let mut rng = crate::schedule::init_rng(seed);
        Mnist {
            training: Samples::random(training, &mut rng),
            validation: Samples::random(validation, &mut rng),
            test: Samples::random(test, &mut rng),
        }
    }

    /// The same sets with the training set expanded (`--expand-data`,
    /// [`expand::expand`]); validation and test stay as they are.
    pub fn expanded(self) -> Mnist {
        Mnist {
            training: expand::expand(&self.training),
            ..self
        }
    }

    /// Loads only the test set's two IDX files from `dir` (raw or gzip), for
    /// what needs no training data (`evaluate`).
    ///
    /// # Errors
    /// [`DataError`] naming the file and what is wrong with it.
    pub fn load_test(dir: &Path) -> Result<Samples, DataError> {
        Ok(load_pair(dir, TEST_IMAGES, TEST_LABELS)?.1)
    }

    /// Loads the four IDX files from `dir` (raw or gzip) and splits the
    /// training file as Nielsen does: the last sixth validates.
    ///
    /// # Errors
    /// [`DataError`] naming the file and what is wrong with it.
    pub fn load(dir: &Path) -> Result<Mnist, DataError> {
        let (train_path, all) = load_pair(dir, TRAIN_IMAGES, TRAIN_LABELS)?;
        let (_, test) = load_pair(dir, TEST_IMAGES, TEST_LABELS)?;
        let validation_len = all.len() / 6;
        if validation_len == 0 {
            return Err(DataError::TooFew {
                path: train_path,
                count: all.len(),
            });
        }
        let split = all.len() - validation_len;
        Ok(Mnist {
            training: all.slice(0..split),
            validation: all.slice(split..all.len()),
            test,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_columns_scaled_by_255() {
        let mut s = Samples {
            pixels: vec![0; 2 * IMAGE_SIZE],
            labels: vec![3, 7],
        };
        s.pixels[IMAGE_SIZE + 5] = 255;
        s.pixels[1] = 51;
        let x = s.inputs();
        assert_eq!(x.dim(), (IMAGE_SIZE, 2));
        assert_eq!(x[[5, 1]], 1.0);
        assert_eq!(x[[1, 0]], 0.2);
        let y = s.targets();
        assert_eq!((y[[3, 0]], y[[7, 1]], y.sum()), (1.0, 1.0, 2.0));
    }

    #[test]
    fn gather_takes_samples_in_the_given_order() {
        let s = Samples {
            pixels: (0..3).flat_map(|i| vec![i as u8; IMAGE_SIZE]).collect(),
            labels: vec![0, 1, 2],
        };
        let g = s.gather(&[2, 0]);
        assert_eq!(g.labels, vec![2, 0]);
        assert_eq!((g.pixels[0], g.pixels[IMAGE_SIZE]), (2, 0));
    }
}
