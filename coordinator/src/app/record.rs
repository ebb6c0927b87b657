//! The run record (`--record`, default `<out>.record.json`) and
//! `coordinator verify`, which replays a run in one process and checks it.
//!
//! A record holds everything that determines the weights: the flags, the
//! SHA-256 of the four MNIST files' IDX contents (after gunzip, so `.gz` or
//! not does not matter), the hash of the `--init` model if one was used, the
//! kernel set and the code version; and the hash chain of the weights
//! ([`common::chain`]). Because a run is exact, replaying it must reproduce
//! every link, whatever the number of workers, the faults it absorbed, or the
//! resumes it went through.

use std::path::{Path, PathBuf};

use common::chain::{self, Chain, Digest32};
use common::dataset::{find_file, idx, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS};
use common::kernels::KernelSet;
use common::local::train_in_process_with_state;
use common::plan::{RunState, TrainingPlan};
use common::progress::Progress;
use common::{model_file, Network};
use serde_json::{json, Value};

/// Why a record cannot be read, written or replayed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The record is not valid JSON or a field is missing or malformed.
    #[error("{}: {why}", path.display())]
    Malformed {
        /// The record.
        path: PathBuf,
        /// Which field, and what is wrong.
        why: String,
    },
    /// A data file is missing or unreadable.
    #[error(transparent)]
    Data(#[from] common::dataset::DataError),
    /// A data file cannot be read.
    #[error(transparent)]
    Idx(#[from] common::dataset::IdxError),
    /// A model file cannot be read or written.
    #[error(transparent)]
    Model(#[from] common::model_file::ModelFileError),
    /// The record's links cannot come from its plan (checked before any replay).
    #[error("the record cannot come from its own plan: {0}")]
    Implausible(String),
    /// The run's kernel set cannot run on this CPU.
    #[error("the run used kernel set {set}, which needs {feature}; this CPU lacks it, so it cannot replay the run")]
    Kernels {
        /// The run's set.
        set: KernelSet,
        /// The feature this CPU lacks.
        feature: &'static str,
    },
}

/// The largest record `verify` reads: a million epochs of links with room
/// to spare (a link is about 200 bytes of JSON). Its size is checked before
/// it is read ([`super::record_file`]).
pub const MAX_RECORD_BYTES: u64 = 1 << 30;

/// What a record's `format` field says.
pub const FORMAT: &str = "nielsen-ddp run record 1";

/// The model file metadata keys that tie a model to its record.
pub const MODEL_CHAIN_KEY: &str = "record_chain";

/// The `--init` model a run started from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitModel {
    /// Its path, as given.
    pub path: PathBuf,
    /// SHA-256 of its packed weights.
    pub weights: Digest32,
}

/// A run's record.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    /// The settings that determine the weights (`monitor` is not recorded).
    pub plan: TrainingPlan,
    /// SHA-256 of each MNIST file's IDX contents, by canonical name.
    pub data: Vec<(String, String)>,
    /// The model the run started from, if not the seed's.
    pub init: Option<InitModel>,
    /// The version of the code that trained.
    pub code_version: String,
    /// The hash chain of the weights.
    pub chain: Chain,
}

/// SHA-256 of the IDX contents of the four MNIST files in `dir`, by name.
///
/// # Errors
/// If a file is missing or unreadable.
pub fn data_digests(dir: &Path) -> Result<Vec<(String, String)>, RecordError> {
    [TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS]
        .into_iter()
        .map(|name| {
            let path = find_file(dir, name)?;
            let bytes = idx::read_maybe_gz(&path)?;
            Ok((name.to_string(), common::dataset::fetch::sha256_hex(&bytes)))
        })
        .collect()
}

impl RunRecord {
    /// The record as JSON.
    pub fn to_json(&self) -> Value {
        let p = &self.plan;
        let links: Vec<Value> = self
            .chain
            .links
            .iter()
            .map(|l| {
                json!({
                    "step": l.step,
                    "epoch": l.epoch,
                    "weights_sha256": chain::hex(&l.weights),
                    "chain": chain::hex(&l.chain),
                })
            })
            .collect();
        json!({
            "format": FORMAT,
            "code_version": self.code_version,
            // Chapter 6's keys appear only in runs that use them, so every
            // earlier record's text is unchanged (see `settings`).
            "flags": crate::settings::to_record(p),
            "init_model": self.init.as_ref().map(|i| json!({
                "path": i.path.display().to_string(),
                "weights_sha256": chain::hex(&i.weights),
            })),
            "data_sha256": self
                .data
                .iter()
                .map(|(name, digest)| (name.clone(), json!(digest)))
                .collect::<serde_json::Map<String, Value>>(),
            "links": links,
        })
    }

    /// Reads a record from JSON.
    ///
    /// # Errors
    /// Naming the first field that is missing or malformed.
    pub fn from_json(v: &Value) -> Result<RunRecord, String> {
        if v["format"] != FORMAT {
            return Err(format!(
                "not a run record (format is {}, expected {FORMAT:?})",
                v["format"]
            ));
        }
        let plan = crate::settings::from_record(&v["flags"])?;
        // The ranges the coordinator's flags accept: a crafted record must
        // not make a replay allocate or loop beyond what a run could.
        crate::config::check_plan(&plan)
            .map_err(|e| format!("flags.{} {}", e.flag.replace('-', "_"), e.why))?;
        let data = v["data_sha256"]
            .as_object()
            .ok_or("data_sha256 is missing".to_string())?
            .iter()
            .map(|(k, v)| {
                Ok((
                    k.clone(),
                    v.as_str()
                        .ok_or("a data digest is not text".to_string())?
                        .to_string(),
                ))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let links = v["links"]
            .as_array()
            .ok_or("links is missing".to_string())?
            .iter()
            .enumerate()
            .map(|(i, l)| link_from_json(i, l))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(RunRecord {
            plan,
            data,
            init: init_from_json(&v["init_model"])?,
            code_version: v["code_version"].as_str().unwrap_or("unknown").to_string(),
            chain: Chain { links },
        })
    }

    /// Writes the record (atomically: a temporary file, then a rename).
    ///
    /// # Errors
    /// If the file cannot be written.
    pub fn save(&self, path: &Path) -> Result<(), RecordError> {
        let text = serde_json::to_string_pretty(&self.to_json()).expect("JSON serialises") + "\n";
        let io = |source| RecordError::Io {
            path: path.to_path_buf(),
            source,
        };
        let tmp = path.with_extension("record.tmp");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Reads a record file, within the memory bound of [`super::record_file`].
    ///
    /// # Errors
    /// If it cannot be read or is not a valid record.
    pub fn load(path: &Path) -> Result<RunRecord, RecordError> {
        super::record_file::read(path)
    }
}

/// A record's `init_model`: the model the run started from, if any.
fn init_from_json(i: &Value) -> Result<Option<InitModel>, String> {
    if i.is_null() {
        return Ok(None);
    }
    Ok(Some(InitModel {
        path: PathBuf::from(
            i["path"]
                .as_str()
                .ok_or("init_model.path is missing".to_string())?,
        ),
        weights: i["weights_sha256"]
            .as_str()
            .and_then(chain::from_hex)
            .ok_or("init_model.weights_sha256 is not 64 hex digits".to_string())?,
    }))
}

/// Link `i` of a record, from its JSON.
///
/// # Errors
/// Naming the field that is missing or malformed.
pub fn link_from_json(i: usize, l: &Value) -> Result<chain::Link, String> {
    let digest = |key: &str| {
        l[key]
            .as_str()
            .and_then(chain::from_hex)
            .ok_or_else(|| format!("links[{i}].{key} is not 64 hex digits"))
    };
    let epoch = match &l["epoch"] {
        Value::Null => None,
        e => Some(
            e.as_u64()
                .and_then(|e| usize::try_from(e).ok())
                .ok_or_else(|| format!("links[{i}].epoch is not a whole number"))?,
        ),
    };
    Ok(chain::Link {
        step: l["step"]
            .as_u64()
            .ok_or_else(|| format!("links[{i}].step is missing"))?,
        epoch,
        weights: digest("weights_sha256")?,
        chain: digest("chain")?,
    })
}

/// The most links a run of `plan` over `training` samples can record: the
/// start, one per `record_every` steps, one per epoch.
pub fn max_links(plan: &TrainingPlan, training: usize) -> u64 {
    let per_epoch = training.div_ceil(plan.batch_size.max(1)) as u64;
    let steps = per_epoch.saturating_mul(plan.epochs as u64);
    let every = plan.record_every.map_or(0, |r| steps / r.max(1));
    1u64.saturating_add(plan.epochs as u64)
        .saturating_add(every)
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Every link of the record was reproduced.
    Verified {
        /// Hashes compared (links, plus the model file's if given).
        hashes: usize,
        /// The final chain value.
        head: Digest32,
    },
    /// The replay differs.
    Differs {
        /// What differs, in words, naming the step.
        what: String,
    },
}

/// Replays `record`'s run on the data in `data_dir` in this process and
/// compares every link; with `model`, also checks that the model file holds
/// the record's final weights and chain value. `init` overrides the path of
/// the record's `--init` model. Data files that differ from the record's are
/// reported, and the replay still names the first step that differs.
///
/// # Errors
/// If the replay cannot run at all (unreadable files, a kernel set this CPU
/// lacks).
pub fn verify(
    record: &RunRecord,
    data_dir: &Path,
    model: Option<&Path>,
    init: Option<&Path>,
) -> Result<(Verdict, Vec<String>), RecordError> {
    if let Some(feature) = record.plan.kernels.missing_feature() {
        return Err(RecordError::Kernels {
            set: record.plan.kernels,
            feature,
        });
    }
    let mut notes = provenance_notes(record, data_dir)?;
    let mut network = match &record.init {
        None => record.plan.initial_network(),
        Some(i) => {
            let path = init.unwrap_or(&i.path);
            let network = model_file::load(path)?;
            if chain::weights_digest(&network) != i.weights {
                let what = format!(
                    "the --init model {} is not the one the run started from",
                    path.display()
                );
                return Ok((Verdict::Differs { what }, notes));
            }
            network
        }
    };
    let mut data = common::dataset::Mnist::load(data_dir)?;
    if record.plan.expand_data {
        data = data.expanded();
    }
    plausible(record, data.training.len()).map_err(RecordError::Implausible)?;
    let mut state = RunState::new(&record.plan);
    let mut checker = Checker::new(&record.chain);
    train_in_process_with_state(&mut network, &mut state, &data, &record.plan, &mut checker);
    let verdict = checker.finish(&state.chain);
    let Verdict::Verified { hashes, head } = verdict else {
        return Ok((verdict, notes));
    };
    let Some(model) = model else {
        return Ok((Verdict::Verified { hashes, head }, notes));
    };
    let verdict = check_model_file(record, model, hashes, head, &mut notes)?;
    Ok((verdict, notes))
}

/// Notes on where the run came from that do not stop a replay: another
/// code version, data files that differ from the record's.
///
/// # Errors
/// If a data file is missing or unreadable.
fn provenance_notes(record: &RunRecord, data_dir: &Path) -> Result<Vec<String>, RecordError> {
    let mut notes = Vec::new();
    if record.code_version != env!("CARGO_PKG_VERSION") {
        notes.push(format!(
            "the run was trained by version {}, this is {}",
            record.code_version,
            env!("CARGO_PKG_VERSION")
        ));
    }
    let digests = data_digests(data_dir)?;
    for (name, digest) in &digests {
        match record.data.iter().find(|(n, _)| n == name) {
            Some((_, want)) if want == digest => {}
            Some((_, want)) => notes.push(format!(
                "data file {name} in {} differs from the run's (SHA-256 {digest}, the record says {want})",
                data_dir.display()
            )),
            None => notes.push(format!("the record has no digest for {name}")),
        }
    }
    Ok(notes)
}

/// Whether the model file holds the record's final weights and chain value
/// `head`, after a replay that verified `hashes` links.
///
/// # Errors
/// If the model file cannot be read, or the record has no links.
fn check_model_file(
    record: &RunRecord,
    model: &Path,
    hashes: usize,
    head: Digest32,
    notes: &mut Vec<String>,
) -> Result<Verdict, RecordError> {
    let (saved, meta) = model_file::load_with_metadata(model)?;
    let last = record
        .chain
        .links
        .last()
        .ok_or_else(|| RecordError::Malformed {
            path: model.to_path_buf(),
            why: "the record has no links".into(),
        })?;
    if chain::weights_digest(&saved) != last.weights {
        return Ok(Verdict::Differs {
            what: format!(
                "{} does not hold the run's final weights (step {})",
                model.display(),
                last.step
            ),
        });
    }
    match meta.get(MODEL_CHAIN_KEY) {
        Some(c) if *c == chain::hex(&head) => {}
        Some(c) => {
            return Ok(Verdict::Differs {
                what: format!(
                    "{}'s chain value {c} is not the record's {}",
                    model.display(),
                    chain::hex(&head)
                ),
            })
        }
        None => notes.push(format!(
            "{} carries no chain value (saved by another tool?); its weights match",
            model.display()
        )),
    }
    Ok(Verdict::Verified {
        hashes: hashes + 1,
        head,
    })
}

/// Whether `record`'s links could come from its plan over `training`
/// samples, checked before any replay: at least the start, no more than
/// the plan can produce, steps rising and within the plan's.
fn plausible(record: &RunRecord, training: usize) -> Result<(), String> {
    let links = &record.chain.links;
    let max = max_links(&record.plan, training);
    if links.is_empty() {
        return Err("the record has no links".into());
    }
    if links.len() as u64 > max {
        return Err(format!(
            "the record has {} links; its plan can produce at most {max} over {training} training samples",
            links.len()
        ));
    }
    let per_epoch = training.div_ceil(record.plan.batch_size) as u64;
    let steps = per_epoch.saturating_mul(record.plan.epochs as u64);
    if let Some(w) = links.windows(2).find(|w| w[1].step <= w[0].step) {
        return Err(format!(
            "link steps must rise: step {} follows step {}",
            w[1].step, w[0].step
        ));
    }
    let last = links[links.len() - 1].step;
    if last > steps {
        return Err(format!(
            "the record goes on to step {last}; its plan has {steps} steps"
        ));
    }
    Ok(())
}

/// Compares the replay's links with the record's as the replay makes them,
/// and stops it at the first that differs (or the first beyond the record).
struct Checker<'a> {
    recorded: &'a Chain,
    /// Links compared so far.
    checked: usize,
    /// The step of the last link that matched.
    last_good: Option<u64>,
    /// The first difference, once found.
    differs: Option<String>,
}

impl<'a> Checker<'a> {
    fn new(recorded: &'a Chain) -> Self {
        Self {
            recorded,
            checked: 0,
            last_good: None,
            differs: None,
        }
    }

    /// Compares the replay's new links; false at the first difference.
    fn check(&mut self, replayed: &Chain) -> bool {
        while self.differs.is_none() && self.checked < replayed.links.len() {
            let (i, got) = (self.checked, &replayed.links[self.checked]);
            let Some(want) = self.recorded.links.get(i) else {
                self.differs = Some(format!(
                    "the record ends at step {} but the replay goes on to step {}",
                    self.recorded.links.last().map_or(0, |l| l.step),
                    got.step
                ));
                break;
            };
            self.differs = link_differs(i, want, got, self.last_good);
            self.last_good = Some(want.step);
            self.checked += 1;
        }
        self.differs.is_none()
    }

    /// The verdict once the replay is over (or was stopped).
    fn finish(mut self, replayed: &Chain) -> Verdict {
        self.check(replayed);
        if let Some(what) = self.differs {
            return Verdict::Differs { what };
        }
        if let Some(want) = self.recorded.links.get(self.checked) {
            return Verdict::Differs {
                what: format!(
                    "the replay stopped at step {} but the record goes on to step {} (early stopping decided otherwise)",
                    replayed.links.last().map_or(0, |l| l.step),
                    want.step
                ),
            };
        }
        Verdict::Verified {
            hashes: self.recorded.links.len(),
            head: self.recorded.head(),
        }
    }
}

impl Progress for &mut Checker<'_> {
    fn epoch(&mut self, _report: &common::progress::EpochReport) {}

    fn proceed(&mut self, chain: &Chain) -> bool {
        self.check(chain)
    }
}

/// How link `i` of the replay differs from the record's, if it does, in
/// words; `last_good` is the step of the last link that matched.
fn link_differs(
    i: usize,
    want: &chain::Link,
    got: &chain::Link,
    last_good: Option<u64>,
) -> Option<String> {
    if got.step != want.step {
        return Some(format!(
            "link {i}: the record has step {}, the replay step {} (the flags or the data changed the run's length)",
            want.step, got.step
        ));
    }
    if got.weights == want.weights && got.chain == want.chain {
        return None;
    }
    let at = match want.epoch {
        Some(e) => format!("step {} (the end of epoch {e})", want.step),
        None => format!("step {}", want.step),
    };
    Some(match last_good {
        None if want.step == 0 => "the initial weights differ (seed, sizes or initialiser)".to_string(),
        None => format!("the weights differ from the first recorded link on, at {at}"),
        Some(_) if got.weights == want.weights => format!(
            "the weights at {at} match but the chain does not: the record's earlier links were altered"
        ),
        Some(good) if want.step == good + 1 => format!("the weights first differ at step {}", want.step),
        Some(good) => format!(
            "the weights first differ at {at}: the first differing step is one of {}..={} (record with --record-every to pinpoint it)",
            good + 1,
            want.step
        ),
    })
}

/// Compares the record's links with a finished replay's, in order.
#[cfg(test)]
fn compare(recorded: &Chain, replayed: &Chain) -> Verdict {
    Checker::new(recorded).finish(replayed)
}

/// The record a run writes: its plan, data digests, init model and chain.
pub fn of_run(
    plan: &TrainingPlan,
    data: Vec<(String, String)>,
    init: Option<InitModel>,
    chain: &Chain,
) -> RunRecord {
    RunRecord {
        plan: TrainingPlan {
            monitor: Default::default(),
            ..plan.clone()
        },
        data,
        init,
        code_version: env!("CARGO_PKG_VERSION").to_string(),
        chain: chain.clone(),
    }
}

/// Saves `network` with the chain value that ties it to its record.
///
/// # Errors
/// If the file cannot be written.
pub fn save_model(path: &Path, network: &Network, chain: &Chain) -> Result<(), RecordError> {
    model_file::save_with(
        path,
        network,
        &[(MODEL_CHAIN_KEY, chain::hex(&chain.head()))],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain_of(steps: &[(u64, Option<usize>, u8)]) -> Chain {
        let mut c = Chain::default();
        for &(step, epoch, w) in steps {
            let weights = [w; 32];
            let value = chain::link_value(&c.head(), step, &weights);
            c.links.push(chain::Link {
                step,
                epoch,
                weights,
                chain: value,
            });
        }
        c
    }

    #[test]
    fn the_first_differing_link_is_named_with_its_step_range() {
        let recorded = chain_of(&[(0, None, 1), (100, Some(0), 2), (200, Some(1), 3)]);
        assert!(matches!(
            compare(&recorded, &recorded),
            Verdict::Verified { hashes: 3, .. }
        ));
        let replayed = chain_of(&[(0, None, 1), (100, Some(0), 2), (200, Some(1), 9)]);
        let Verdict::Differs { what } = compare(&recorded, &replayed) else {
            panic!("not found")
        };
        assert!(
            what.contains("101..=200") && what.contains("epoch 1"),
            "{what}"
        );
        let every_step = chain_of(&[(0, None, 1), (1, None, 2), (2, None, 4)]);
        let replayed = chain_of(&[(0, None, 1), (1, None, 2), (2, None, 5)]);
        let Verdict::Differs { what } = compare(&every_step, &replayed) else {
            panic!("not found")
        };
        assert_eq!(what, "the weights first differ at step 2");
        let Verdict::Differs { what } = compare(&recorded, &chain_of(&[(0, None, 7)])) else {
            panic!("not found")
        };
        assert!(what.contains("initial weights"), "{what}");
    }

    #[test]
    fn records_round_trip_through_json_exactly() {
        let plan = TrainingPlan {
            eta: 0.1,
            lambda: 5.0,
            momentum: 0.3,
            early_stop: Some(3),
            eta_schedule: Some("halve:2:8".parse().unwrap()),
            record_every: Some(50),
            kernels: KernelSet::Portable,
            ..TrainingPlan::default()
        };
        let record = of_run(
            &plan,
            vec![("train-images-idx3-ubyte".into(), "ab".repeat(32))],
            Some(InitModel {
                path: "start.safetensors".into(),
                weights: [7; 32],
            }),
            &chain_of(&[(0, None, 1), (50, None, 2)]),
        );
        let text = serde_json::to_string(&record.to_json()).unwrap();
        let back = RunRecord::from_json(&serde_json::from_str(&text).unwrap()).unwrap();
        assert_eq!(back, record);
        assert_eq!(back.plan.eta.to_bits(), 0.1f32.to_bits());
    }

    #[test]
    fn crafted_flags_are_refused_before_any_replay() {
        let record = of_run(&TrainingPlan::default(), vec![], None, &Chain::default());
        for (key, value, why) in [
            ("epochs", json!(1e18 as u64), "flags.epochs"),
            ("epochs", json!(0), "flags.epochs"),
            ("shards", json!(1u64 << 40), "flags.shards"),
            ("batch_size", json!(0), "flags.batch_size"),
            ("eta", json!(-1.0), "flags.eta"),
            ("momentum", json!(1.0), "flags.momentum"),
            ("record_every", json!(0), "flags.record_every"),
            ("early_stop", json!(0), "flags.early_stop"),
            ("sizes", json!([784, 1u64 << 40, 10]), "flags.sizes"),
        ] {
            let mut v = record.to_json();
            v["flags"][key] = value;
            let err = RunRecord::from_json(&v).unwrap_err();
            assert!(err.starts_with(why), "{key}: {err}");
        }
    }
}
