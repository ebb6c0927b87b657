//! Checkpoints: the weights plus where the run is (epoch, mini-batches done in
//! it, global step) and the configuration that fixes the result (sizes, seed,
//! batch size, eta, shards). A safetensors model file with these in its
//! metadata, so a checkpoint is also a loadable model.
//!
//! No RNG state is stored because there is none to store: the shuffle of epoch
//! `e` is a pure function of `(seed, e)` (see `common::schedule`), so the seed
//! and the position are enough to continue bit for bit.

use std::path::{Path, PathBuf};

use common::model_file::{self, ModelFileError};
use common::trainer::TrainingPlan;
use common::Network;

/// Where a run is: the next mini-batch to train is batch `batch` of epoch `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// Current epoch, from 0.
    pub epoch: usize,
    /// Mini-batches of this epoch already applied.
    pub batch: usize,
    /// Steps applied since the run began (the next step's id).
    pub step: u64,
}

/// A checkpoint as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Weights after `position.step` steps.
    pub network: Network,
    /// Where to continue.
    pub position: Position,
    /// The configuration the checkpoint was made with.
    pub plan: TrainingPlan,
}

/// Why a checkpoint cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Not a readable model file.
    #[error("checkpoint: {0}")]
    File(#[from] ModelFileError),
    /// A model file without (valid) checkpoint metadata.
    #[error("{path}: not a checkpoint (metadata {key:?} is missing or invalid)")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// The key.
        key: &'static str,
    },
    /// The checkpoint was made with another configuration.
    #[error("{path}: made with {field} {checkpoint}, but the flags say {flags}; resume with the same flags")]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// Which setting differs.
        field: &'static str,
        /// The checkpoint's value.
        checkpoint: String,
        /// The flags' value.
        flags: String,
    },
}

/// Writes a checkpoint atomically (temp file, fsync, rename): a crash while
/// writing leaves the previous checkpoint intact.
///
/// # Errors
/// [`CheckpointError::File`] naming the path.
pub fn save(
    path: &Path,
    network: &Network,
    position: Position,
    plan: &TrainingPlan,
) -> Result<(), CheckpointError> {
    let meta = [
        ("epoch", position.epoch.to_string()),
        ("batch", position.batch.to_string()),
        ("step", position.step.to_string()),
        ("seed", plan.seed.to_string()),
        ("batch_size", plan.batch_size.to_string()),
        // The exact bits of eta, so a resume compares what was used, not a rounding of it.
        ("eta_bits", plan.eta.to_bits().to_string()),
        ("shards", plan.shards.to_string()),
        ("epochs", plan.epochs.to_string()),
    ];
    Ok(model_file::save_with(path, network, &meta)?)
}

/// Reads a checkpoint.
///
/// # Errors
/// [`CheckpointError`] for an unreadable, truncated or corrupt file or missing metadata.
pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let (network, meta) = model_file::load_with_metadata(path)?;
    let get = |key: &'static str| -> Result<u64, CheckpointError> {
        meta.get(key)
            .and_then(|v| v.parse().ok())
            .ok_or(CheckpointError::Metadata {
                path: path.to_path_buf(),
                key,
            })
    };
    let position = Position {
        epoch: get("epoch")? as usize,
        batch: get("batch")? as usize,
        step: get("step")?,
    };
    let plan = TrainingPlan {
        sizes: network.sizes.clone(),
        epochs: get("epochs")? as usize,
        batch_size: get("batch_size")? as usize,
        eta: f32::from_bits(u32::try_from(get("eta_bits")?).map_err(|_| {
            CheckpointError::Metadata {
                path: path.to_path_buf(),
                key: "eta_bits",
            }
        })?),
        shards: get("shards")? as usize,
        seed: get("seed")?,
    };
    Ok(Checkpoint {
        network,
        position,
        plan,
    })
}

impl Checkpoint {
    /// Checks that the checkpoint was made with `plan`'s settings. The number
    /// of epochs may differ (to extend a run), as long as the position is within it.
    ///
    /// # Errors
    /// [`CheckpointError::Mismatch`] naming the first setting that differs.
    pub fn check_matches(&self, path: &Path, plan: &TrainingPlan) -> Result<(), CheckpointError> {
        let mismatch = |field, checkpoint: String, flags: String| {
            Err(CheckpointError::Mismatch {
                path: path.to_path_buf(),
                field,
                checkpoint,
                flags,
            })
        };
        let ours = &self.plan;
        if ours.sizes != plan.sizes {
            return mismatch(
                "--sizes",
                format!("{:?}", ours.sizes),
                format!("{:?}", plan.sizes),
            );
        }
        if ours.seed != plan.seed {
            return mismatch("--seed", ours.seed.to_string(), plan.seed.to_string());
        }
        if ours.batch_size != plan.batch_size {
            return mismatch(
                "--batch-size",
                ours.batch_size.to_string(),
                plan.batch_size.to_string(),
            );
        }
        if ours.eta.to_bits() != plan.eta.to_bits() {
            return mismatch("--eta", ours.eta.to_string(), plan.eta.to_string());
        }
        if ours.shards != plan.shards {
            return mismatch("--shards", ours.shards.to_string(), plan.shards.to_string());
        }
        if self.position.epoch > plan.epochs {
            return mismatch(
                "epoch",
                self.position.epoch.to_string(),
                format!("--epochs {}", plan.epochs),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> TrainingPlan {
        TrainingPlan {
            sizes: vec![784, 5, 10],
            epochs: 3,
            batch_size: 10,
            eta: 3.0,
            shards: 4,
            seed: 9,
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ckpt-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip() {
        let d = dir("rt");
        let path = d.join("c.safetensors");
        let net = plan().initial_network();
        let pos = Position {
            epoch: 1,
            batch: 17,
            step: 117,
        };
        save(&path, &net, pos, &plan()).unwrap();
        let c = load(&path).unwrap();
        assert_eq!((&c.network, c.position, &c.plan), (&net, pos, &plan()));
        c.check_matches(&path, &plan()).unwrap();
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn mismatched_flags_are_named() {
        let d = dir("mm");
        let path = d.join("c.safetensors");
        save(
            &path,
            &plan().initial_network(),
            Position::default(),
            &plan(),
        )
        .unwrap();
        let c = load(&path).unwrap();
        let other = TrainingPlan { eta: 0.5, ..plan() };
        let err = c.check_matches(&path, &other).unwrap_err().to_string();
        assert!(
            err.contains("made with --eta 3, but the flags say 0.5"),
            "{err}"
        );
        let other = TrainingPlan {
            shards: 2,
            ..plan()
        };
        assert!(c
            .check_matches(&path, &other)
            .unwrap_err()
            .to_string()
            .contains("--shards 4"));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn truncated_or_plain_model_is_a_clear_error_and_the_old_file_survives() {
        let d = dir("bad");
        let path = d.join("c.safetensors");
        save(
            &path,
            &plan().initial_network(),
            Position::default(),
            &plan(),
        )
        .unwrap();
        let good = std::fs::read(&path).unwrap();
        let cut = d.join("cut.safetensors");
        std::fs::write(&cut, &good[..good.len() - 100]).unwrap();
        assert!(matches!(load(&cut), Err(CheckpointError::File(_))));
        let model = d.join("m.safetensors");
        model_file::save(&model, &plan().initial_network()).unwrap();
        let err = load(&model).unwrap_err().to_string();
        assert!(err.contains("not a checkpoint"), "{err}");
        // A failed save (directory in the way) leaves the last good checkpoint as it was.
        std::fs::create_dir_all(path.with_extension(format!("tmp-{}", std::process::id())))
            .unwrap();
        assert!(save(
            &path,
            &plan().initial_network(),
            Position {
                epoch: 2,
                batch: 0,
                step: 9
            },
            &plan()
        )
        .is_err());
        assert_eq!(std::fs::read(&path).unwrap(), good);
        std::fs::remove_dir_all(d).unwrap();
    }
}
