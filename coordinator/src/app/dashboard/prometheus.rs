//! `/metrics`: the run's counters in the Prometheus text format, through
//! `prometheus-client`. The collector updates them as events arrive; a
//! scrape only encodes.
//!
//! | name | type | what |
//! |---|---|---|
//! | `ddp_step_seconds` | histogram | wall time of a step, handing out shards to updated weights |
//! | `ddp_steps_total` | counter | steps applied |
//! | `ddp_samples_total` | counter | training samples in the applied steps |
//! | `ddp_shards_reassigned_total` | counter | shards moved to another worker after their owner left or failed |
//! | `ddp_results_ignored_total{reason}` | counter | results not applied: `late`, `duplicate`, `rejected` (failed validation), `refused` (protocol violation), `audit_failed` (`--audit-rate` caught it) |
//! | `ddp_workers_live` | gauge | workers connected now |
//! | `ddp_epoch_test_accuracy{epoch}` | gauge | test accuracy (0..1) after each epoch |
//! | `ddp_epoch_validation_accuracy{epoch}` | gauge | validation accuracy (0..1) after each epoch |
//! | `ddp_epochs_done` | gauge | epochs evaluated |

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::pool::observer::Ignored;

type Labels = Vec<(String, String)>;

/// The run's Prometheus metrics.
pub struct Metrics {
    registry: Registry,
    step_seconds: Histogram,
    steps: Counter,
    samples: Counter,
    reassigned: Counter,
    ignored: Family<Labels, Counter>,
    workers: Gauge,
    test_accuracy: Family<Labels, Gauge<f64, AtomicU64>>,
    validation_accuracy: Family<Labels, Gauge<f64, AtomicU64>>,
    epochs: Gauge,
}

/// Every metric's name (after the `ddp_` prefix) and help line, in the
/// order [`Metrics::new`] registers them.
const HELP: [(&str, &str); 9] = [
    ("step_seconds", "Wall time of a step, from handing out shards to the updated weights"),
    ("steps", "Steps applied"),
    ("samples", "Training samples in the applied steps"),
    ("shards_reassigned", "Shards given to another worker after their owner left or failed"),
    (
        "results_ignored",
        "Shard results not applied, by reason: late, duplicate, rejected (invalid), refused (protocol violation), audit_failed (differed from the coordinator's recomputation)",
    ),
    ("workers_live", "Workers connected now"),
    ("epoch_test_accuracy", "Test accuracy (0 to 1) after each epoch"),
    ("epoch_validation_accuracy", "Validation accuracy (0 to 1) after each epoch"),
    ("epochs_done", "Epochs evaluated"),
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric at zero.
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("ddp"),
            // 50 µs to ~3.3 s: a loopback step at batch 10 is ~0.5 ms; a
            // step that waits for a reassigned shard can take seconds.
            step_seconds: Histogram::new(exponential_buckets(50e-6, 2.0, 17)),
            steps: Counter::default(),
            samples: Counter::default(),
            reassigned: Counter::default(),
            ignored: Family::default(),
            workers: Gauge::default(),
            test_accuracy: Family::default(),
            validation_accuracy: Family::default(),
            epochs: Gauge::default(),
        };
        let [step_seconds, steps, samples, reassigned, ignored, workers, test, validation, epochs] =
            HELP;
        let r = &mut m.registry;
        r.register(step_seconds.0, step_seconds.1, m.step_seconds.clone());
        r.register(steps.0, steps.1, m.steps.clone());
        r.register(samples.0, samples.1, m.samples.clone());
        r.register(reassigned.0, reassigned.1, m.reassigned.clone());
        r.register(ignored.0, ignored.1, m.ignored.clone());
        r.register(workers.0, workers.1, m.workers.clone());
        r.register(test.0, test.1, m.test_accuracy.clone());
        r.register(validation.0, validation.1, m.validation_accuracy.clone());
        r.register(epochs.0, epochs.1, m.epochs.clone());
        for why in [
            Ignored::Late,
            Ignored::Duplicate,
            Ignored::Rejected,
            Ignored::Refused,
            Ignored::AuditFailed,
        ] {
            // Every reason shows from the start, at 0, so rates work from the first scrape.
            drop(m.ignored.get_or_create(&reason(why)));
        }
        m
    }

    /// A step of `samples` samples took `seconds`.
    pub fn step(&self, seconds: f64, samples: u64) {
        self.step_seconds.observe(seconds);
        self.steps.inc();
        self.samples.inc_by(samples);
    }

    /// A shard was reassigned.
    pub fn reassigned(&self) {
        self.reassigned.inc();
    }

    /// A result was not applied.
    pub fn ignored(&self, why: Ignored) {
        self.ignored.get_or_create(&reason(why)).inc();
    }

    /// `n` workers are connected.
    pub fn workers(&self, n: usize) {
        self.workers.set(n as i64);
    }

    /// Epoch `epoch` reached these accuracies (0..1).
    pub fn epoch(&self, epoch: usize, test: f64, validation: f64) {
        let label = vec![("epoch".to_string(), epoch.to_string())];
        self.test_accuracy.get_or_create(&label).set(test);
        self.validation_accuracy
            .get_or_create(&label)
            .set(validation);
        self.epochs.set(epoch as i64 + 1);
    }

    /// The OpenMetrics exposition (what Prometheus asks for first).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// The classic Prometheus text format 0.0.4 (what curl, older scrapers
    /// and `promtool check metrics` read).
    pub fn encode_text(&self) -> String {
        openmetrics_to_text(&self.encode())
    }
}

/// OpenMetrics to the Prometheus text format: a counter family `x` whose
/// samples are `x_total` is described as `x_total` (as the text format
/// wants), and the OpenMetrics-only `# UNIT` and `# EOF` lines go.
pub fn openmetrics_to_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let described = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        match described {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

fn reason(why: Ignored) -> Labels {
    let name = match why {
        Ignored::Late => "late",
        Ignored::Duplicate => "duplicate",
        Ignored::Rejected => "rejected",
        Ignored::Refused => "refused",
        Ignored::AuditFailed => "audit_failed",
    };
    vec![("reason".to_string(), name.to_string())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_values_appear_in_the_exposition() {
        let m = Metrics::new();
        m.step(0.001, 10);
        m.ignored(Ignored::Late);
        m.workers(3);
        m.epoch(0, 0.9, 0.91);
        let text = m.encode();
        for line in [
            "ddp_steps_total 1",
            "ddp_samples_total 10",
            "ddp_results_ignored_total{reason=\"late\"} 1",
            "ddp_workers_live 3",
            "ddp_epoch_test_accuracy{epoch=\"0\"} 0.9",
            "ddp_step_seconds_count 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        let classic = m.encode_text();
        assert!(
            classic.contains("# TYPE ddp_steps_total counter\n"),
            "{classic}"
        );
        assert!(
            classic.contains("# HELP ddp_steps_total Steps applied.\n"),
            "{classic}"
        );
        assert!(!classic.contains("# EOF"), "{classic}");
    }
}
