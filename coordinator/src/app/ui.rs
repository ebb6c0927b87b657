//! What a user sees while a run trains: a progress bar per epoch on a
//! terminal (samples/s, step latency, live workers), one parseable line per
//! epoch on stdout, and the `--metrics` CSV and `--plot` PNG kept up to date.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use common::progress::{EpochReport, Progress, StepProgress};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::app::report::{self, MetricsCsv};

pub use crate::config::BarMode;

/// A progress bar that log lines can write around (see [`BarWriter`]).
/// It starts hidden; [`Ui`] draws it from the first step on if asked to.
pub fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::hidden();
    bar.set_style(
        ProgressStyle::with_template("{prefix} {wide_bar} {pos}/{len} {msg}")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    bar
}

/// A `tracing` writer that hides the progress bar while a log line is
/// written, so logs and the bar do not tear each other.
#[derive(Clone)]
pub struct BarWriter(pub ProgressBar);

impl Write for BarWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.suspend(|| std::io::stderr().write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BarWriter {
    type Writer = BarWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The run's display and metric files; a [`Progress`] for the training loop.
pub struct Ui {
    bar: ProgressBar,
    /// Draw `bar` (it is hidden until the first step).
    show: bool,
    batch_size: usize,
    /// Epochs planned, for the run's ETA (0: unknown).
    epochs: usize,
    epoch_start: Instant,
    /// When the epoch's last step was applied, to time its evaluation.
    last_step: Option<Instant>,
    /// How long the last evaluation took (part of every later epoch too).
    evaluation: std::time::Duration,
    metrics: Option<MetricsCsv>,
    plot: Option<Plotter>,
    reports: Vec<EpochReport>,
}

/// Draws the `--plot` PNG on a thread of its own: rendering takes tens of
/// milliseconds, which must not stall the async thread that serves gRPC.
/// Each epoch sends the reports so far; the thread draws the latest, and
/// dropping the plotter waits for the last drawing to be written.
struct Plotter {
    reports: Option<std::sync::mpsc::Sender<Vec<EpochReport>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Plotter {
    fn new(path: PathBuf) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Vec<EpochReport>>();
        let thread = std::thread::Builder::new()
            .name("plot".into())
            .spawn(move || {
                while let Ok(mut reports) = rx.recv() {
                    // Only the newest set matters: skip any that queued up.
                    while let Ok(newer) = rx.try_recv() {
                        reports = newer;
                    }
                    if let Err(e) = report::plot_accuracy(&path, &reports) {
                        tracing::warn!(error = %e, path = %path.display(), "could not draw the plot");
                    }
                }
            })
            .expect("spawning the plot thread");
        Plotter {
            reports: Some(tx),
            thread: Some(thread),
        }
    }

    fn draw(&self, reports: &[EpochReport]) {
        if let Some(tx) = &self.reports {
            let _ = tx.send(reports.to_vec());
        }
    }
}

impl Drop for Plotter {
    fn drop(&mut self) {
        drop(self.reports.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Ui {
    /// A display for a run at `batch_size` that draws `bar` if `show`,
    /// writing `metrics` and `plot` if given.
    ///
    /// # Errors
    /// If the metrics file cannot be created.
    pub fn new(
        bar: ProgressBar,
        show: bool,
        batch_size: usize,
        metrics: Option<PathBuf>,
        plot: Option<PathBuf>,
    ) -> super::AppResult<Self> {
        Ok(Ui {
            bar,
            show,
            batch_size,
            epochs: 0,
            epoch_start: Instant::now(),
            last_step: None,
            evaluation: std::time::Duration::ZERO,
            metrics: metrics.map(MetricsCsv::create).transpose()?,
            plot: plot.map(Plotter::new),
            reports: Vec::new(),
        })
    }
}

impl Ui {
    /// Shows the run's ETA, given that it trains `epochs` epochs.
    pub fn with_epochs(mut self, epochs: usize) -> Self {
        self.epochs = epochs;
        self
    }
}

/// A duration as the bar shows it: `42s`, `3m07s`, `1h05m`.
pub fn short_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// The run's time left: the steps left at this epoch's mean step time,
/// plus an evaluation per epoch left at the last one's duration.
pub fn run_eta(p: &StepProgress, epochs: usize, epoch_elapsed: f64, evaluation: f64) -> f64 {
    let per_step = epoch_elapsed / p.done.max(1) as f64;
    let steps_left = (p.total - p.done.min(p.total)) + epochs.saturating_sub(p.epoch + 1) * p.total;
    steps_left as f64 * per_step + epochs.saturating_sub(p.epoch) as f64 * evaluation
}

impl Progress for Ui {
    fn step(&mut self, p: &StepProgress) {
        if !self.show {
            return;
        }
        // Hidden between epochs (see `epoch`): the new epoch's prefix,
        // length and position are all set before it shows again, so the
        // last epoch's `Epoch 0 … 0/5000` never flashes up.
        let first_draw = self.bar.is_hidden();
        if p.done == 1 || first_draw {
            self.epoch_start = Instant::now();
            self.bar.reset();
            self.bar.set_length(p.total as u64);
            self.bar.set_prefix(format!("Epoch {}", p.epoch));
            self.bar.set_message("");
        }
        if p.done == p.total {
            self.last_step = Some(Instant::now());
        }
        self.bar.set_position(p.done as u64);
        // A message per step would cost more than a step at batch 10; and
        // the first step alone says nothing about the rate or the ETA.
        if p.done % 50 == 1 && p.done > 1 || p.done == p.total {
            let secs = self.epoch_start.elapsed().as_secs_f64().max(1e-9);
            let workers = if p.workers > 0 {
                format!(" {} workers", p.workers)
            } else {
                String::new()
            };
            let eta = if self.epochs > 0 {
                let left = run_eta(p, self.epochs, secs, self.evaluation.as_secs_f64());
                format!("  ETA {}", short_duration(left))
            } else {
                String::new()
            };
            self.bar.set_message(format!(
                "{:.0}/s {:.2} ms/step{workers}{eta}",
                (p.done * self.batch_size) as f64 / secs,
                p.timing.total.as_secs_f64() * 1e3,
            ));
        }
        if first_draw {
            self.bar
                .set_draw_target(ProgressDrawTarget::stderr_with_hz(10));
        }
    }

    fn epoch(&mut self, r: &EpochReport) {
        self.bar.finish_and_clear();
        if self.show {
            // Hidden until the next epoch's first step has set it up.
            self.bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        if let Some(t) = self.last_step.take() {
            self.evaluation = t.elapsed();
        }
        println!("{}", epoch_line(r));
        if let Some(why) = r.verdict.stop {
            println!("Stopping after epoch {}: {why}", r.epoch);
        } else if r.verdict.halved {
            println!(
                "Eta halved to {} after epoch {}: no better validation accuracy (--eta-schedule)",
                r.eta / 2.0,
                r.epoch
            );
        }
        self.reports.push(r.clone());
        if let Some(m) = &mut self.metrics {
            if let Err(e) = m.append(r) {
                tracing::warn!(error = %e, "could not write the metrics file");
            }
        }
        if let Some(plot) = &self.plot {
            plot.draw(&self.reports);
        }
    }
}

/// The per-epoch line, stable for scripts:
/// `Epoch j: correct / total  (validation v / vt)  X s  Y samples/s  cost C  step p50 ms  training t / n  validation cost V  eta E`.
/// The figures `--monitor` leaves out are `-`.
pub fn epoch_line(r: &EpochReport) -> String {
    let dash = || "-".to_string();
    format!(
        "Epoch {}: {} / {}  (validation {} / {})  {:.2} s  {:.0} samples/s  cost {}  step p50 {:.3} ms  training {} / {}  validation cost {}  eta {}",
        r.epoch,
        r.test_correct,
        r.test_total,
        r.validation_correct,
        r.validation_total,
        r.train_time.as_secs_f64(),
        r.samples_per_sec(),
        r.training_cost.map_or_else(dash, |c| format!("{c:.4}")),
        r.step_times.p50.as_secs_f64() * 1e3,
        r.training_correct.map_or_else(dash, |c| c.to_string()),
        r.samples,
        r.validation_cost.map_or_else(dash, |c| format!("{c:.4}")),
        r.eta,
    )
}
