//! The training plan's settings, each once: its flag, its key in a run
//! record and in a checkpoint, and how its value is written and read.
//! Checkpoints (save, load, and the comparison on `--resume`), run records
//! and [`crate::config::Preset::flags`] all go through [`SETTINGS`], so an
//! option is added in one place.
//!
//! Files written before an option existed stay valid byte for byte: a
//! setting with an `omitted` value (chapter 6's `net` and `expand_data`) is
//! written only when it differs from it, and a checkpoint key with an
//! `absent` value reads as that value when missing.

use common::cost::Cost;
use common::dataset::{CLASSES, IMAGE_SIZE};
use common::kernels::KernelSet;
use common::layers::spec::SpecError;
use common::layers::{NetSpec, Shape};
use common::network::Init;
use common::plan::TrainingPlan;
use common::stopping::EtaSchedule;
use serde_json::{json, Value as Json};

/// Parses a net (`--net`, a record's `flags.net`) for MNIST's 1×28×28
/// images and 10 classes.
///
/// # Errors
/// What is wrong, naming the layer.
pub fn parse_mnist_net(given: &str) -> Result<NetSpec, SpecError> {
    let spec = NetSpec::parse(given, Shape::MNIST)?;
    if spec.classes() != CLASSES {
        let last = spec.layers.len();
        return Err(SpecError(format!(
            "layer {last} `{}`: MNIST has {CLASSES} classes",
            spec.layer_names()[last - 1]
        )));
    }
    Ok(spec)
}

/// Whether `sizes` is a network this build trains on MNIST: the one rule
/// for `--sizes` and for a run record's plan (`verify`).
///
/// # Errors
/// What is wrong, in words.
pub fn check_sizes(sizes: &[usize]) -> Result<(), String> {
    if sizes.len() < 2 {
        return Err("need at least an input and an output layer".into());
    }
    if sizes.contains(&0) {
        return Err("layer sizes must be positive".into());
    }
    if sizes[0] != IMAGE_SIZE || sizes[sizes.len() - 1] != CLASSES {
        return Err(format!(
            "MNIST needs {IMAGE_SIZE} inputs and {CLASSES} outputs, e.g. 784,30,10"
        ));
    }
    if common::network::checked_parameter_count(sizes, common::wire::MAX_PARAMETERS).is_none() {
        return Err(format!(
            "more than {} parameters",
            common::wire::MAX_PARAMETERS
        ));
    }
    Ok(())
}

/// A setting's value, typed by how it is written.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A whole number.
    Count(u64),
    /// An `f32`, kept to the bit (in a checkpoint, as its bits).
    Real(f32),
    /// A name, or a value written as its text (a schedule, a net).
    Text(String),
    /// A whole number or none.
    MaybeCount(Option<u64>),
    /// A text or none.
    MaybeText(Option<String>),
    /// On or off (a flag without a value).
    Switch(bool),
    /// Layer sizes.
    Sizes(Vec<usize>),
}

impl Value {
    /// The value as `--resume`'s mismatch message shows it: finite numbers
    /// as the shortest text that reads back to the same bits, so two values
    /// differ exactly when their texts do.
    pub fn show(&self) -> String {
        let none = || "none".to_string();
        match self {
            Value::Count(n) => n.to_string(),
            Value::Real(x) => x.to_string(),
            Value::Text(s) => s.clone(),
            Value::MaybeCount(n) => n.map_or_else(none, |n| n.to_string()),
            Value::MaybeText(s) => s.clone().unwrap_or_else(none),
            Value::Switch(b) => b.to_string(),
            Value::Sizes(s) => format!("{s:?}"),
        }
    }

    /// The value as the flag takes it (`None`: the flag is not given).
    fn as_flag(&self) -> Option<String> {
        match self {
            Value::MaybeCount(None) | Value::MaybeText(None) | Value::Switch(false) => None,
            Value::Switch(true) => Some(String::new()),
            Value::Sizes(s) => Some(s.iter().map(usize::to_string).collect::<Vec<_>>().join(",")),
            other => Some(other.show()),
        }
    }

    /// The value in a run record's `flags`.
    fn to_json(&self) -> Json {
        match self {
            Value::Count(n) => json!(n),
            // The shortest decimal that reads back as the same f32.
            Value::Real(x) => json!(x.to_string().parse::<f64>().unwrap_or(f64::NAN)),
            Value::Text(s) => json!(s),
            Value::MaybeCount(n) => json!(n),
            Value::MaybeText(s) => json!(s),
            Value::Switch(b) => json!(b),
            Value::Sizes(s) => json!(s),
        }
    }

    /// A value of the same kind as `self`, from a run record's JSON.
    fn read_json(&self, v: &Json) -> Result<Value, &'static str> {
        let count = |v: &Json| v.as_u64().ok_or(" is not a whole number");
        let text = |v: &Json| v.as_str().map(str::to_string).ok_or(" is not a string");
        Ok(match self {
            Value::Count(_) => Value::Count(count(v)?),
            Value::Real(_) => Value::Real(
                v.as_f64()
                    .and_then(|_| v.to_string().parse::<f32>().ok())
                    .ok_or(" is not a number")?,
            ),
            Value::Text(_) => Value::Text(text(v)?),
            Value::MaybeCount(_) if v.is_null() => Value::MaybeCount(None),
            Value::MaybeCount(_) => Value::MaybeCount(Some(count(v)?)),
            Value::MaybeText(_) if v.is_null() => Value::MaybeText(None),
            Value::MaybeText(_) => Value::MaybeText(Some(text(v)?)),
            Value::Switch(_) => Value::Switch(v.as_bool().ok_or(" is not true or false")?),
            Value::Sizes(_) => Value::Sizes(
                v.as_array()
                    .ok_or(" is not a list")?
                    .iter()
                    .map(|s| s.as_u64().map(|s| s as usize))
                    .collect::<Option<Vec<_>>>()
                    .ok_or(" holds something other than whole numbers")?,
            ),
        })
    }

    /// The value in a checkpoint's metadata.
    fn to_text(&self) -> String {
        match self {
            // The exact bits, so a resume compares what was used, not a rounding of it.
            Value::Real(x) => x.to_bits().to_string(),
            other => other.show(),
        }
    }

    /// A value of the same kind as `self`, from a checkpoint's metadata.
    fn read_text(&self, t: &str) -> Option<Value> {
        let maybe = |t: &str| (t != "none").then(|| t.to_string());
        Some(match self {
            Value::Count(_) => Value::Count(t.parse().ok()?),
            Value::Real(_) => {
                Value::Real(f32::from_bits(u32::try_from(t.parse::<u64>().ok()?).ok()?))
            }
            Value::Text(_) => Value::Text(t.to_string()),
            Value::MaybeCount(_) => match maybe(t) {
                None => Value::MaybeCount(None),
                Some(n) => Value::MaybeCount(Some(n.parse().ok()?)),
            },
            Value::MaybeText(_) => Value::MaybeText(maybe(t)),
            Value::Switch(_) => Value::Switch(t == "true"),
            Value::Sizes(_) => return None,
        })
    }
}

/// Where a checkpoint keeps a setting.
#[derive(Debug, Clone, Copy)]
pub enum Stored {
    /// In the model file itself (its layers).
    InModel,
    /// Under a metadata key.
    Key {
        /// The key.
        key: &'static str,
        /// What a checkpoint written before the key existed means (`None`:
        /// the key is required).
        absent: Option<fn() -> Value>,
    },
}

/// One setting of the plan.
pub struct Setting {
    /// Its flag, without the dashes.
    pub flag: &'static str,
    /// Its key in a run record's `flags`.
    pub record: &'static str,
    /// Where a checkpoint keeps it.
    pub checkpoint: Stored,
    /// Not written when it has this value (and read as it when missing):
    /// for options added after files were written.
    pub omitted: Option<fn() -> Value>,
    /// Whether a resume must have the same value (`--epochs` may grow).
    pub resumed: bool,
    /// Whether presets set it.
    pub preset: bool,
    /// Whether `--net` excludes it (presets with a net do not print it).
    pub besides_net: bool,
    /// Its value in a plan.
    pub get: fn(&TrainingPlan) -> Value,
    /// Sets it in a plan; the error completes "flags.KEY" or "--FLAG".
    pub set: fn(&mut TrainingPlan, Value) -> Result<(), String>,
}

/// A value of the wrong kind for its setting: the table is inconsistent.
fn kind(v: Value) -> String {
    format!(" has the wrong kind of value ({v:?})")
}

fn usize_of(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Every setting of the plan, in the order presets print them. `monitor`
/// is not one: it never changes the weights.
pub const SETTINGS: [Setting; 16] = [
    Setting {
        flag: "net",
        record: "net",
        checkpoint: Stored::InModel,
        omitted: Some(|| Value::MaybeText(None)),
        resumed: true,
        preset: true,
        besides_net: false,
        get: |p| Value::MaybeText(p.net.as_ref().map(|n| n.to_string())),
        set: |p, v| match v {
            Value::MaybeText(None) => {
                p.net = None;
                Ok(())
            }
            Value::MaybeText(Some(text)) => {
                p.net = Some(parse_mnist_net(&text).map_err(|e| format!(": {e}"))?);
                Ok(())
            }
            v => Err(kind(v)),
        },
    },
    Setting {
        flag: "sizes",
        record: "sizes",
        checkpoint: Stored::InModel,
        omitted: None,
        resumed: true,
        preset: true,
        besides_net: true,
        get: |p| Value::Sizes(p.sizes.clone()),
        set: |p, v| match v {
            Value::Sizes(sizes) => {
                check_sizes(&sizes).map_err(|why| format!(" {sizes:?}: {why}"))?;
                p.sizes = sizes;
                Ok(())
            }
            v => Err(kind(v)),
        },
    },
    Setting {
        flag: "epochs",
        record: "epochs",
        checkpoint: Stored::Key {
            key: "epochs",
            absent: None,
        },
        omitted: None,
        resumed: false,
        preset: true,
        besides_net: false,
        get: |p| Value::Count(p.epochs as u64),
        set: |p, v| match v {
            Value::Count(n) => {
                p.epochs = usize_of(n);
                Ok(())
            }
            v => Err(kind(v)),
        },
    },
    Setting {
        flag: "eta",
        record: "eta",
        checkpoint: Stored::Key {
            key: "eta_bits",
            absent: None,
        },
        omitted: None,
        resumed: true,
        preset: true,
        besides_net: false,
        get: |p| Value::Real(p.eta),
        set: |p, v| match v {
            Value::Real(x) => {
                p.eta = x;
                Ok(())
            }
            v => Err(kind(v)),
        },
    },
    Setting {
        flag: "cost",
        record: "cost",
        checkpoint: Stored::Key {
            key: "cost",
            absent: Some(|| Value::Text("quadratic".into())),
        },
        omitted: None,
        resumed: true,
        preset: true,
        besides_net: true,
        get: |p| Value::Text(p.cost.name().to_string()),
        set: |p, v| match v {
            Value::Text(t) => {
                p.cost = Cost::from_name(&t).ok_or(" is not a cost")?;
                Ok(())
            }
            v => Err(kind(v)),
        },
    },
    Setting {
        flag: "init-weights",
        record: "init_weights",
        checkpoint: Stored::Key {
            key: "init",
            absent: Some(|| Value::Text("large".into())),
        },
        omitted: None,
        resumed: true,
        preset: true,
        besides_net: true,
        get: |p| Value::Text(p.init.name().to_string()),
        set: |p, v| match v {
            Value::Text(t) => {
                p.init = Init::from_name(&t).ok_or(" is not an initialiser")?;
                Ok(())
            }
            v => Err(kind(v)),
        },
    },
    Setting {
        flag: "lambda",
        record: "lambda",
        checkpoint: Stored::Key {
            key: "lambda_bits",
            absent: Some(|| Value::Real(0.0)),
        },
        omitted: None,
        resumed: true,
        preset: true,
        besides_net: false,
        get: |p| Value::Real(p.lambda),
        set: |p, v| match v {
            Value::Real(x) => {
                p.lambda = x;
                Ok(())
            }
            v => Err(kind(v)),
        },
    },
    Setting {
        flag: "early-stop",
        record: "early_stop",
        checkpoint: Stored::Key {
            key: "early_stop",
            absent: Some(|| Value::MaybeCount(None)),
        },
        omitted: None,
        resumed: true,
        preset: true,
        besides_net: false,
        get: |p| Value::MaybeCount(p.early_stop.map(|n| n as u64)),
        set: |p, v| match v {
            Value::MaybeCount(n) => {
                p.early_stop = n.map(usize_of);
                Ok(())
            }
            v => Err(kind(v)),
        },
    },
    Setting {
        flag: "eta-schedule",
        record: "eta_schedule",
        checkpoint: Stored::Key {
            key: "eta_schedule",
            absent: Some(|| Value::MaybeText(None)),
        },
        omitted: None,
        resumed: true,
        preset: true,
        besides_net: false,
        get: |p| Value::MaybeText(p.eta_schedule.map(|s| s.to_string())),
        set: |p, v| match v {
            Value::MaybeText(None) => {
                p.eta_schedule = None;
                Ok(())
            }
            Value::MaybeText(Some(s)) => {
                p.eta_schedule = Some(s.parse::<EtaSchedule>().map_err(|e| format!(": {e}"))?);
                Ok(())
            }
            v => Err(kind(v)),
        },
    },
    Setting {
        flag: "expand-data",
        record: "expand_data",
        checkpoint: Stored::Key {
            key: "expand_data",
            absent: Some(|| Value::Switch(false)),
        },
        omitted: Some(|| Value::Switch(false)),
        resumed: true,
        preset: true,
        besides_net: false,
        get: |p| Value::Switch(p.expand_data),
        set: |p, v| match v {
            Value::Switch(b) => {
                p.expand_data = b;
                Ok(())
            }
            v => Err(kind(v)),
        },
    },
    Setting {
        flag: "seed",
        record: "seed",
        checkpoint: Stored::Key {
            key: "seed",
            absent: None,
        },
        omitted: None,
        resumed: true,
        preset: false,
        besides_net: false,
        get: |p| Value::Count(p.seed),
        set: |p, v| match v {
            Value::Count(n) => {
                p.seed = n;
                Ok(())
            }
            v => Err(kind(v)),
        },
    },
    Setting {
        flag: "batch-size",
        record: "batch_size",
        checkpoint: Stored::Key {
            key: "batch_size",
            absent: None,
        },
        omitted: None,
        resumed: true,
        preset: false,
        besides_net: false,
        get: |p| Value::Count(p.batch_size as u64),
        set: |p, v| match v {
            Value::Count(n) => {
                p.batch_size = usize_of(n);
                Ok(())
            }
            v => Err(kind(v)),
        },
    },
    Setting {
        flag: "shards",
        record: "shards",
        checkpoint: Stored::Key {
            key: "shards",
            absent: None,
        },
        omitted: None,
        resumed: true,
        preset: false,
        besides_net: false,
        get: |p| Value::Count(p.shards as u64),
        set: |p, v| match v {
            Value::Count(n) => {
                p.shards = usize_of(n);
                Ok(())
            }
            v => Err(kind(v)),
        },
    },
    Setting {
        flag: "kernels",
        record: "kernels",
        checkpoint: Stored::Key {
            key: "kernels",
            // Checkpoints from before kernel sets: computed with this CPU's best.
            absent: Some(|| Value::Text(KernelSet::best().name().to_string())),
        },
        omitted: None,
        resumed: true,
        preset: false,
        besides_net: false,
        get: |p| Value::Text(p.kernels.name().to_string()),
        set: |p, v| match v {
            Value::Text(t) => {
                p.kernels = KernelSet::from_name(&t).ok_or(" is not a kernel set")?;
                Ok(())
            }
            v => Err(kind(v)),
        },
    },
    Setting {
        flag: "record-every",
        record: "record_every",
        checkpoint: Stored::Key {
            key: "record_every",
            absent: Some(|| Value::MaybeCount(None)),
        },
        omitted: None,
        resumed: true,
        preset: false,
        besides_net: false,
        get: |p| Value::MaybeCount(p.record_every),
        set: |p, v| match v {
            Value::MaybeCount(n) => {
                p.record_every = n;
                Ok(())
            }
            v => Err(kind(v)),
        },
    },
    Setting {
        flag: "momentum",
        record: "momentum",
        checkpoint: Stored::Key {
            key: "momentum_bits",
            absent: Some(|| Value::Real(0.0)),
        },
        omitted: None,
        resumed: true,
        preset: false,
        besides_net: false,
        get: |p| Value::Real(p.momentum),
        set: |p, v| match v {
            Value::Real(x) => {
                p.momentum = x;
                Ok(())
            }
            v => Err(kind(v)),
        },
    },
];

impl Setting {
    /// Whether `plan`'s value is the one left out of files.
    fn is_omitted(&self, plan: &TrainingPlan) -> bool {
        self.omitted.is_some_and(|o| (self.get)(plan) == o())
    }
}

/// The plan's settings as a run record's `flags` object.
pub fn to_record(plan: &TrainingPlan) -> serde_json::Map<String, Json> {
    SETTINGS
        .iter()
        .filter(|s| !s.is_omitted(plan))
        .map(|s| (s.record.to_string(), (s.get)(plan).to_json()))
        .collect()
}

/// A plan from a run record's `flags` (its ranges are checked by the caller).
///
/// # Errors
/// Naming the first field that is missing or malformed.
pub fn from_record(flags: &Json) -> Result<TrainingPlan, String> {
    let mut plan = TrainingPlan::default();
    for s in &SETTINGS {
        let key = s.record;
        let value = match (flags.get(key), s.omitted) {
            (Some(v), _) => (s.get)(&plan)
                .read_json(v)
                .map_err(|why| format!("flags.{key}{why}"))?,
            (None, Some(omitted)) => omitted(),
            (None, None) => return Err(format!("flags.{key} is missing")),
        };
        (s.set)(&mut plan, value).map_err(|why| format!("flags.{key}{why}"))?;
    }
    if let Some(spec) = &plan.net {
        if plan.sizes != [spec.input.len(), spec.classes()] {
            return Err(format!(
                "flags.sizes {:?} does not fit flags.net",
                plan.sizes
            ));
        }
    }
    Ok(plan)
}

/// The plan's settings as checkpoint metadata (those not in the model file).
pub fn to_checkpoint(plan: &TrainingPlan) -> Vec<(&'static str, String)> {
    SETTINGS
        .iter()
        .filter(|s| !s.is_omitted(plan))
        .filter_map(|s| match s.checkpoint {
            Stored::Key { key, .. } => Some((key, (s.get)(plan).to_text())),
            Stored::InModel => None,
        })
        .collect()
}

/// Sets `plan`'s settings from checkpoint metadata (`meta` looks a key up);
/// the layers come from the model file and are left as they are.
///
/// # Errors
/// The key that is missing or malformed.
pub fn from_checkpoint(
    plan: &mut TrainingPlan,
    meta: impl Fn(&str) -> Option<String>,
) -> Result<(), &'static str> {
    for s in &SETTINGS {
        let Stored::Key { key, absent } = s.checkpoint else {
            continue;
        };
        let value = match (meta(key), absent) {
            (Some(text), _) => (s.get)(plan).read_text(&text).ok_or(key)?,
            (None, Some(absent)) => absent(),
            (None, None) => return Err(key),
        };
        (s.set)(plan, value).map_err(|_| key)?;
    }
    Ok(())
}

/// Every setting a resume must share with its checkpoint, as the flag and
/// the value shown, in table order.
pub fn resumed(plan: &TrainingPlan) -> Vec<(&'static str, String)> {
    SETTINGS
        .iter()
        .filter(|s| s.resumed)
        .map(|s| (s.flag, (s.get)(plan).show()))
        .collect()
}

/// The flags that give `plan`'s values of the settings presets set, as a
/// user would type them: those not given (none, off) and those `--net`
/// excludes when it is given are left out.
pub fn preset_flags(plan: &TrainingPlan) -> String {
    SETTINGS
        .iter()
        .filter(|s| s.preset && !(s.besides_net && plan.net.is_some()))
        .filter_map(|s| {
            (s.get)(plan).as_flag().map(|v| match v.as_str() {
                "" => format!("--{}", s.flag),
                v => format!("--{} {v}", s.flag),
            })
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every flag of the table is a flag of `coordinator train`, and every
    /// key is written once.
    #[test]
    fn the_table_names_real_flags_once() {
        let command = <crate::Args as clap::CommandFactory>::command();
        for s in &SETTINGS {
            assert!(
                command
                    .get_arguments()
                    .any(|a| a.get_long() == Some(s.flag)),
                "--{} is not a flag",
                s.flag
            );
        }
        let mut records: Vec<_> = SETTINGS.iter().map(|s| s.record).collect();
        records.sort_unstable();
        records.dedup();
        assert_eq!(records.len(), SETTINGS.len());
    }

    /// A plan with every setting away from its default goes through a
    /// record and a checkpoint's metadata unchanged.
    #[test]
    fn plans_round_trip_through_both_files() {
        let plan = TrainingPlan {
            net: Some(parse_mnist_net("fc100,softmax10").unwrap()),
            sizes: vec![784, 10],
            expand_data: true,
            eta: 0.1,
            lambda: 5.0,
            momentum: 0.3,
            early_stop: Some(3),
            eta_schedule: Some("halve:2:8".parse().unwrap()),
            record_every: Some(50),
            kernels: KernelSet::Portable,
            cost: Cost::CrossEntropy,
            init: Init::Scaled,
            ..TrainingPlan::default()
        };
        let record = Json::Object(to_record(&plan));
        assert_eq!(from_record(&record).unwrap(), plan);
        let meta = to_checkpoint(&plan);
        let mut back = TrainingPlan {
            sizes: plan.sizes.clone(),
            net: plan.net.clone(),
            ..TrainingPlan::default()
        };
        from_checkpoint(&mut back, |k| {
            meta.iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.clone())
        })
        .unwrap();
        assert_eq!(back, plan);
    }
}
