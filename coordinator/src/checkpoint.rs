//! Checkpoints: the weights plus where the run is (epoch, mini-batches done in
//! it, global step), the configuration that fixes the result (sizes, seed,
//! batch size, eta, shards, cost, init, λ, μ, early stopping, η schedule) and
//! the run's state (momentum's velocity, the early-stopping and schedule
//! counts, the best validation epoch and its model). A safetensors model
//! file with these in its metadata and the velocity and best model as extra
//! tensors (`velocity.w0`, `best.w0`, …), so a checkpoint is also a loadable model.
//! Keys added for chapter 3 are optional on reading: a checkpoint written
//! before them is a quadratic, N(0,1), plain-SGD run.
//!
//! No RNG state is stored because there is none to store: the shuffle of epoch
//! `e` is a pure function of `(seed, e)` (see `common::schedule`), so the seed
//! and the position are enough to continue bit for bit.

use std::path::{Path, PathBuf};

use common::chain::Chain;
use common::model_file::{self, ModelFileError};
use common::optimizer::Velocity;
use common::plan::{BestEpoch, RunState, TrainingPlan};
use common::stopping::Stopping;
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
    /// Velocity, early-stopping and schedule state, best model.
    pub state: RunState,
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
        /// Which setting differs: its flag, or `epoch`.
        field: String,
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
    state: &RunState,
) -> Result<(), CheckpointError> {
    let s = &state.stopping;
    let mut meta = vec![
        ("epoch", position.epoch.to_string()),
        ("batch", position.batch.to_string()),
        ("step", position.step.to_string()),
        ("chain", state.chain.to_text()),
        ("since_best", s.since_best.to_string()),
        ("since_change", s.since_change.to_string()),
        ("halvings", s.halvings.to_string()),
        ("stopped", s.stopped.to_string()),
    ];
    // The plan's settings (their keys and encodings are in `settings`).
    meta.extend(crate::settings::to_checkpoint(plan));
    if let Some(b) = &state.best {
        meta.push(("best_epoch", b.epoch.to_string()));
        meta.push(("best_validation", b.validation_correct.to_string()));
        meta.push(("best_test", b.test_correct.to_string()));
    }
    let mut parts: Vec<(&str, &Network)> = Vec::new();
    if let Some(Velocity(v)) = &state.velocity {
        parts.push(("velocity.", v));
    }
    if let Some(b) = &state.best {
        parts.push(("best.", &b.network));
    }
    Ok(model_file::save_with_parts(path, network, &parts, &meta)?)
}

/// Reads a checkpoint.
///
/// # Errors
/// [`CheckpointError`] for an unreadable, truncated or corrupt file or missing metadata.
pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let (network, meta) = model_file::load_with_metadata(path)?;
    let bad = |key: &'static str| CheckpointError::Metadata {
        path: path.to_path_buf(),
        key,
    };
    let get = |key: &'static str| -> Result<u64, CheckpointError> {
        meta.get(key).and_then(|v| v.parse().ok()).ok_or(bad(key))
    };
    // Keys added with chapter 3's options: absent in older checkpoints, where
    // they had the one value the code then knew.
    let optional = |key: &'static str, absent: &str| -> String {
        meta.get(key).cloned().unwrap_or_else(|| absent.to_string())
    };
    let count = |key: &'static str| -> Result<usize, CheckpointError> {
        optional(key, "0").parse().map_err(|_| bad(key))
    };
    let position = Position {
        epoch: get("epoch")? as usize,
        batch: get("batch")? as usize,
        step: get("step")?,
    };
    let mut plan = TrainingPlan {
        sizes: network.sizes.clone(),
        net: network.net.clone(),
        ..TrainingPlan::default()
    };
    crate::settings::from_checkpoint(&mut plan, |key| meta.get(key).cloned()).map_err(bad)?;
    let velocity = model_file::load_part(path, "velocity.", &network)?.map(Velocity);
    if (plan.momentum > 0.0) != velocity.is_some() {
        return Err(bad("velocity"));
    }
    let best = match model_file::load_part(path, "best.", &network)? {
        Some(net) => Some(BestEpoch {
            epoch: count("best_epoch")?,
            validation_correct: count("best_validation")?,
            test_correct: count("best_test")?,
            network: net,
        }),
        None => None,
    };
    let stopping = Stopping {
        best: best.as_ref().map(|b| (b.epoch, b.validation_correct)),
        since_best: count("since_best")?,
        since_change: count("since_change")?,
        halvings: u32::try_from(count("halvings")?).map_err(|_| bad("halvings"))?,
        stopped: optional("stopped", "false")
            .parse()
            .map_err(|_| bad("stopped"))?,
    };
    Ok(Checkpoint {
        network,
        position,
        plan,
        state: RunState {
            velocity,
            stopping,
            best,
            chain: Chain::from_text(&optional("chain", "")).ok_or(bad("chain"))?,
        },
    })
}

impl Checkpoint {
    /// Checks that the checkpoint was made with `plan`'s settings. The number
    /// of epochs may differ (to extend a run), as long as the position is within it.
    ///
    /// # Errors
    /// [`CheckpointError::Mismatch`] naming the first setting that differs.
    pub fn check_matches(&self, path: &Path, plan: &TrainingPlan) -> Result<(), CheckpointError> {
        let mismatch = |field: String, checkpoint: String, flags: String| {
            Err(CheckpointError::Mismatch {
                path: path.to_path_buf(),
                field,
                checkpoint,
                flags,
            })
        };
        for ((field, checkpoint), (_, flags)) in
            settings(&self.plan).into_iter().zip(settings(plan))
        {
            if checkpoint != flags {
                return mismatch(field, checkpoint, flags);
            }
        }
        if self.position.epoch > plan.epochs {
            return mismatch(
                "epoch".into(),
                self.position.epoch.to_string(),
                format!("--epochs {}", plan.epochs),
            );
        }
        Ok(())
    }
}

/// Every setting a checkpoint must share with the flags that resume it, as
/// the flag and its value, in the order a mismatch is looked for (the
/// table's, [`crate::settings::SETTINGS`]). Finite numbers print as the
/// shortest text that reads back to the same bits (`-0` included), so two
/// of them differ exactly when their texts do; the flags' values are finite
/// (`validate`), so a non-finite value in a checkpoint differs from them too.
fn settings(plan: &TrainingPlan) -> Vec<(String, String)> {
    crate::settings::resumed(plan)
        .into_iter()
        .map(|(flag, value)| (format!("--{flag}"), value))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::cost::Cost;
    use common::network::Init;

    fn plan() -> TrainingPlan {
        TrainingPlan {
            sizes: vec![784, 5, 10],
            epochs: 3,
            shards: 4,
            seed: 9,
            ..TrainingPlan::default()
        }
    }

    /// [`plan`] with every chapter 3 option on, and this momentum.
    fn chapter3_plan(momentum: f32) -> TrainingPlan {
        TrainingPlan {
            cost: Cost::CrossEntropy,
            init: Init::Scaled,
            lambda: 5.0,
            momentum,
            early_stop: Some(10),
            eta_schedule: Some("halve:10:128".parse().unwrap()),
            ..plan()
        }
    }

    /// Saves the checkpoint of `plan` before its first step at `path`.
    fn save_fresh(path: &Path, plan: &TrainingPlan) {
        let network = plan.initial_network();
        save(
            path,
            &network,
            Position::default(),
            plan,
            &RunState::new(plan),
        )
        .unwrap();
    }

    /// A fresh temporary directory for test `name`, and a checkpoint path in it.
    fn checkpoint_in(name: &str) -> (PathBuf, PathBuf) {
        let d = std::env::temp_dir().join(format!("ckpt-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let path = d.join("c.safetensors");
        (d, path)
    }

    #[test]
    fn round_trip() {
        let (d, path) = checkpoint_in("rt");
        let net = plan().initial_network();
        let pos = Position {
            epoch: 1,
            batch: 17,
            step: 117,
        };
        save(&path, &net, pos, &plan(), &RunState::new(&plan())).unwrap();
        let c = load(&path).unwrap();
        assert_eq!((&c.network, c.position, &c.plan), (&net, pos, &plan()));
        c.check_matches(&path, &plan()).unwrap();
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn mismatched_flags_are_named() {
        let (d, path) = checkpoint_in("mm");
        save_fresh(&path, &plan());
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

    /// A chapter 3 run's whole state comes back: options, velocity, the
    /// early-stopping and schedule counts, the best epoch and its model.
    #[test]
    fn chapter3_state_round_trips() {
        let (d, path) = checkpoint_in("ch3");
        let plan = chapter3_plan(0.9);
        let net = plan.initial_network();
        let mut state = RunState::new(&plan);
        let v = state.velocity.as_mut().unwrap();
        v.0.weights[0][[1, 2]] = -0.25;
        v.0.biases[1][3] = 1e-7;
        state.stopping = Stopping {
            best: Some((4, 190)),
            since_best: 3,
            since_change: 1,
            halvings: 2,
            stopped: false,
        };
        let mut best = net.clone();
        best.biases[0][0] = 42.0;
        state.best = Some(BestEpoch {
            epoch: 4,
            validation_correct: 190,
            test_correct: 180,
            network: best,
        });
        let pos = Position {
            epoch: 2,
            batch: 0,
            step: 200,
        };
        save(&path, &net, pos, &plan, &state).unwrap();
        let c = load(&path).unwrap();
        assert_eq!(
            (&c.network, c.position, &c.plan, &c.state),
            (&net, pos, &plan, &state)
        );
        c.check_matches(&path, &plan).unwrap();
        std::fs::remove_dir_all(d).unwrap();
    }

    /// `--resume` with another value of any option that changes the weights
    /// is refused, naming the flag and both values.
    #[test]
    fn resume_with_another_chapter3_option_is_refused_naming_the_flag() {
        let (d, path) = checkpoint_in("ch3mm");
        let plan = chapter3_plan(0.5);
        save_fresh(&path, &plan);
        let c = load(&path).unwrap();
        let cases = [
            (
                TrainingPlan {
                    cost: Cost::Quadratic,
                    ..plan.clone()
                },
                "made with --cost cross-entropy, but the flags say quadratic",
            ),
            (
                TrainingPlan {
                    init: Init::Large,
                    ..plan.clone()
                },
                "made with --init-weights scaled, but the flags say large",
            ),
            (
                TrainingPlan {
                    lambda: 0.0,
                    ..plan.clone()
                },
                "made with --lambda 5, but the flags say 0",
            ),
            (
                TrainingPlan {
                    momentum: 0.9,
                    ..plan.clone()
                },
                "made with --momentum 0.5, but the flags say 0.9",
            ),
            (
                TrainingPlan {
                    early_stop: None,
                    ..plan.clone()
                },
                "made with --early-stop 10, but the flags say none",
            ),
            (
                TrainingPlan {
                    eta_schedule: Some("halve:5:128".parse().unwrap()),
                    ..plan.clone()
                },
                "made with --eta-schedule halve:10:128, but the flags say halve:5:128",
            ),
        ];
        for (i, (other, want)) in cases.iter().enumerate() {
            let err = c.check_matches(&path, other).unwrap_err().to_string();
            assert!(err.contains(want), "case {i}: {err}");
        }
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn truncated_or_plain_model_is_a_clear_error_and_the_old_file_survives() {
        let (d, path) = checkpoint_in("bad");
        save_fresh(&path, &plan());
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
            &plan(),
            &RunState::new(&plan())
        )
        .is_err());
        assert_eq!(std::fs::read(&path).unwrap(), good);
        std::fs::remove_dir_all(d).unwrap();
    }
}
