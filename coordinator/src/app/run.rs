//! A training run from its flags to its summary line: resume or restart,
//! `--local` or a served cluster (with `--spawn-workers`), then save the
//! model and print what the run did. `main.rs` only parses and dispatches.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::model_file;
use common::plan::{RunState, TrainingPlan};
use common::progress::EpochReport;
use common::Network;

use crate::app::dashboard::{self, Dashboard, Feed, Watched};
use crate::app::launch::{sibling_worker_binary, LocalWorkers};
use crate::app::record::{self, RunRecord};
use crate::app::ui::Ui;
use crate::app::{data, AppError, AppResult};
use crate::config::{Credentials, Mode, Outputs, RunSpec};
use crate::listen::{ListenAddr, Listener};
use crate::pool::PoolStats;
use crate::Args;

/// Trains as the flags say, saves the model and prints the summary.
pub async fn train(args: Args, bar: indicatif::ProgressBar) -> AppResult<()> {
    let spec = args.validate()?;
    if let Some(preset) = spec.preset {
        // The flags the preset stands for; explicit flags have overridden any of them.
        eprintln!(
            "preset {}: {}",
            clap::ValueEnum::to_possible_value(&preset)
                .map(|v| v.get_name().to_string())
                .unwrap_or_default(),
            preset.flags()
        );
    }
    let mut record = Recording {
        path: spec.outputs.record.clone(),
        data_dir: spec
            .data_dir
            .clone()
            .unwrap_or_else(common::dataset::fetch::default_data_dir),
        init: None,
    };
    if let (Some(path), Some(c)) = (&spec.resumed_from, &spec.config.resume) {
        // The model the run started from is in the record it has written so far.
        record.init = RunRecord::load(&record.path).ok().and_then(|r| r.init);
        if c.position.epoch >= spec.config.plan.epochs || c.state.stopping.stopped {
            // A supervisor restarted a finished run: keep the result, train nothing.
            record.write(&spec.config.plan, &c.state)?;
            record::save_model(&spec.outputs.model, &c.network, &c.state.chain)?;
            save_best(&spec.outputs, &c.state)?;
            println!(
                "Done: {} already holds all {} epochs; model saved to {}",
                path.display(),
                spec.config.plan.epochs,
                spec.outputs.model.display()
            );
            return Ok(());
        }
    }
    if let (Some(path), Some(network)) = (&spec.init_from, &spec.config.init) {
        record.init = Some(record::InitModel {
            path: path.clone(),
            weights: common::chain::weights_digest(network),
        });
    }
    let ui = Ui::new(
        bar.clone(),
        spec.watch.progress.shows(),
        spec.config.plan.batch_size,
        spec.outputs.metrics.clone(),
        spec.outputs.plot.clone(),
    )?
    .with_epochs(spec.config.plan.epochs);
    match spec.mode.clone() {
        Mode::Local => train_local(spec, ui, record).await,
        Mode::Serve { listen, spawn } => train_served(spec, &listen, spawn, ui, bar, record).await,
    }
}

/// Loads MNIST (expanded if the plan says so) off the async threads.
async fn load_data(
    data_dir: Option<PathBuf>,
    expand: bool,
) -> AppResult<Arc<common::dataset::Mnist>> {
    tokio::task::spawn_blocking(move || data::load_mnist(data_dir.as_deref(), expand))
        .await
        .map_err(|_| AppError::Panicked {
            what: "loading the data",
        })?
        .map(Arc::new)
}

/// `--local`: trains in this process with the reference trainer.
async fn train_local(spec: RunSpec, ui: Ui, record: Recording) -> AppResult<()> {
    let data = load_data(spec.data_dir.clone(), spec.config.plan.expand_data).await?;
    let start = std::time::Instant::now();
    let mut network = spec
        .config
        .init
        .clone()
        .unwrap_or_else(|| spec.config.plan.initial_network());
    let plan = spec.config.plan.clone();
    let (network, state, reports) = tokio::task::spawn_blocking(move || {
        let mut state = RunState::new(&plan);
        let reports =
            common::local::train_in_process_with_state(&mut network, &mut state, &data, &plan, ui);
        (network, state, reports)
    })
    .await
    .map_err(|_| AppError::Panicked { what: "training" })?;
    finish(
        &spec.outputs,
        &spec.config.plan,
        &record,
        Trained {
            network,
            state: &state,
            reports: &reports,
            elapsed: start.elapsed(),
            stats: None,
        },
    )
}

/// A served run: binds, starts the dashboard and any local workers, serves
/// the run until it ends, then saves and reports it.
async fn train_served(
    spec: RunSpec,
    listen: &ListenAddr,
    spawn: Option<Credentials>,
    ui: Ui,
    bar: indicatif::ProgressBar,
    record: Recording,
) -> AppResult<()> {
    let bind_error = |what: String| move |source| AppError::Bind { what, source };
    let (listener, _socket_file) = Listener::bind(listen)
        .await
        .map_err(bind_error(format!("{listen:?}")))?;
    let addr = listener
        .address()
        .map_err(bind_error(format!("{listen:?}")))?;
    // First line of stdout, so scripts and tests can find a port chosen with :0.
    println!("Listening on {addr}");
    let dashboard = start_dashboard(&spec)?;
    let feed = dashboard.as_ref().map(Dashboard::feed);
    let mut local = match spawn {
        Some(credentials) => Some(spawn_workers(&spec, &listener, listen, &credentials, &bar)?),
        None => None,
    };
    let mut workers_gone = false;
    let shutdown = async {
        tokio::select! {
            () = stop_signal() => {}
            // Spawned workers exit only after the run's Shutdown, or when they
            // cannot join (their errors are on stderr above); don't wait forever.
            () = async { match local.as_mut() { Some(l) => l.all_exited().await, None => std::future::pending().await } } => {
                workers_gone = true;
            }
        }
    };
    let (data_dir, expand) = (spec.data_dir.clone(), spec.config.plan.expand_data);
    let data = async {
        let data = load_data(data_dir, expand)
            .await
            .map_err(crate::DataLoadError::from)?;
        if let Some(feed) = &feed {
            feed.send(Feed::Data(Arc::clone(&data)));
        }
        Ok(data)
    };
    let observer = dashboard
        .as_ref()
        .map_or_else(crate::pool::Observer::none, Dashboard::observer);
    let progress = Watched::new(ui, feed.clone());
    let RunSpec {
        config, outputs, ..
    } = spec;
    let plan = config.plan.clone();
    let summary = crate::serve(listener, config, data, shutdown, progress, observer).await;
    wind_down(&bar, dashboard, summary.as_ref().err(), workers_gone, local).await?;
    let summary = summary?;
    finish(
        &outputs,
        &plan,
        &record,
        Trained {
            network: summary.network,
            state: &summary.state,
            reports: &summary.reports,
            elapsed: summary.elapsed,
            stats: Some(&summary.stats),
        },
    )
}

/// After a served run, however it ended (`failed` says why, if it did):
/// the bar goes, the dashboard shows the outcome, and spawned workers are
/// waited for.
///
/// # Errors
/// If every spawned worker exited before the run finished.
async fn wind_down(
    bar: &indicatif::ProgressBar,
    dashboard: Option<Dashboard>,
    failed: Option<&crate::CoordinatorError>,
    workers_gone: bool,
    local: Option<LocalWorkers>,
) -> AppResult<()> {
    // Whatever ended the run, the bar goes: no half-drawn bar under the last
    // lines, and none redrawn around the workers' last log lines either.
    bar.finish_and_clear();
    bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    if let Some(d) = dashboard {
        let outcome = match failed {
            None => "finished".to_string(),
            Some(e) => format!("stopped: {e}"),
        };
        d.finish(&outcome).await;
    }
    if workers_gone && failed.is_some() {
        return Err(AppError::Usage(
            "every spawned worker exited before training finished; their errors are above".into(),
        ));
    }
    if let Some(local) = local {
        let clean = local.wait(Duration::from_secs(10)).await;
        tracing::info!(clean, "local workers exited");
    }
    Ok(())
}

/// Ctrl-C or SIGTERM (as from Kubernetes or a process manager): the run
/// stops, checkpoints and exits.
async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

/// Starts `--workers` local worker processes dialling `listener` (over TLS
/// when the credentials carry a certificate); their log lines go through
/// the bar, so they never tear it.
fn spawn_workers(
    spec: &RunSpec,
    listener: &Listener,
    listen: &ListenAddr,
    credentials: &Credentials,
    bar: &indicatif::ProgressBar,
) -> AppResult<LocalWorkers> {
    let scheme = if credentials.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let address = listener
        .worker_address(scheme)
        .map_err(|source| AppError::Bind {
            what: format!("{listen:?}"),
            source,
        })?;
    let bar = bar.clone();
    let log = move |line: &str| bar.suspend(|| eprintln!("{line}"));
    Ok(LocalWorkers::spawn(
        &sibling_worker_binary()?,
        spec.config.workers,
        &address,
        credentials,
        Some(Arc::new(log)),
    )?)
}

/// Starts the dashboard and trace recorder the flags ask for, printing
/// where the page is.
fn start_dashboard(spec: &RunSpec) -> AppResult<Option<Dashboard>> {
    let watch = &spec.watch;
    if watch.dashboard.is_none() && watch.trace.is_none() {
        return Ok(None);
    }
    let (listener, access) = match watch.dashboard {
        Some(addr) => {
            let (access, code) =
                dashboard::access_rule(addr, spec.config.token.as_ref(), watch.insecure_no_token)?;
            let dashboard_error = |source| AppError::Bind {
                what: format!("the dashboard on {addr}"),
                source,
            };
            let listener = std::net::TcpListener::bind(addr).map_err(dashboard_error)?;
            let bound = listener.local_addr().map_err(dashboard_error)?;
            match code {
                None => println!("Dashboard on http://{bound}/"),
                // The token itself is never printed: the code works once and
                // sets a session cookie.
                Some(code) => println!(
                    "Dashboard on http://{bound}/ (needs the run's token as a bearer header, or open http://{bound}/login?code={code} once)"
                ),
            }
            (Some(listener), access)
        }
        None => (None, dashboard::Access::Open),
    };
    let plan = &spec.config.plan;
    let d = Dashboard::start(dashboard::Options {
        listener,
        access,
        hosts: watch.dashboard_hosts.clone(),
        trace: watch
            .trace
            .clone()
            .map(|(path, steps)| crate::app::trace::TraceOptions { path, steps }),
        run: dashboard::RunInfo {
            sizes: plan.sizes.clone(),
            epochs: plan.epochs,
            batch: plan.batch_size,
            shards: plan.shards,
            workers: spec.config.workers,
            eta: plan.eta,
            cost: plan.cost,
            kernels: plan.kernels,
            net: plan.net.as_ref().map(|n| n.to_string()),
        },
    })
    .map_err(|source| AppError::Bind {
        what: "the dashboard".into(),
        source,
    })?;
    Ok(Some(d))
}

/// Saves the best validation epoch's model where `outputs.best` says; returns the path.
fn save_best(outputs: &Outputs, state: &RunState) -> AppResult<Option<PathBuf>> {
    match (&outputs.best, &state.best) {
        (Some(path), Some(best)) => {
            model_file::save(path, &best.network)?;
            Ok(Some(path.clone()))
        }
        _ => Ok(None),
    }
}

/// Where the run record goes, and what it needs besides the run's state.
struct Recording {
    path: PathBuf,
    data_dir: PathBuf,
    init: Option<record::InitModel>,
}

impl Recording {
    /// Writes the record of a run of `plan` that has reached `state`.
    fn write(&self, plan: &TrainingPlan, state: &RunState) -> AppResult<()> {
        let digests = record::data_digests(&self.data_dir)?;
        Ok(record::of_run(plan, digests, self.init.clone(), &state.chain).save(&self.path)?)
    }
}

/// What a run ended with.
struct Trained<'a> {
    network: Network,
    state: &'a RunState,
    reports: &'a [EpochReport],
    elapsed: Duration,
    stats: Option<&'a PoolStats>,
}

/// Saves the model (and the best validation epoch's) and the run record,
/// and prints the run's summary.
fn finish(
    outputs: &Outputs,
    plan: &TrainingPlan,
    recording: &Recording,
    trained: Trained<'_>,
) -> AppResult<()> {
    let Trained {
        network,
        state,
        reports,
        elapsed,
        stats,
    } = trained;
    let last = reports
        .last()
        .ok_or_else(|| AppError::Usage("no epoch ran".into()))?;
    let best = reports
        .iter()
        .max_by_key(|r| (r.test_correct, std::cmp::Reverse(r.epoch)))
        .unwrap_or(last);
    record::save_model(&outputs.model, &network, &state.chain)?;
    recording.write(plan, state)?;
    // Per epoch of training samples: an epoch resumed mid-way counts for the part that ran.
    let epochs_run: f64 = reports
        .iter()
        .map(|r| r.trained as f64 / r.samples.max(1) as f64)
        .sum();
    let best_saved = save_best(outputs, state)?;
    let at_best_validation = state.best.as_ref().map_or(String::new(), |b| {
        format!(
            ", at best validation {:.2}% (epoch {}, validation {:.2}%)",
            100.0 * b.test_correct as f64 / last.test_total.max(1) as f64,
            b.epoch,
            100.0 * b.validation_correct as f64 / last.validation_total.max(1) as f64,
        )
    });
    println!(
        "Done: best test accuracy {:.2}% (epoch {}), final {:.2}%{at_best_validation}, {} epochs, {:.1} s training, {:.2} s per epoch; model saved to {}{}",
        best.test_accuracy(),
        best.epoch,
        last.test_accuracy(),
        reports.len(),
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() / epochs_run.max(1e-9),
        outputs.model.display(),
        best_saved.map_or(String::new(), |p| format!(", best validation epoch's to {}", p.display()))
    );
    println!(
        "Run record: {} ({} hashes; check it with `coordinator verify {}`)",
        recording.path.display(),
        state.chain.links.len(),
        recording.path.display()
    );
    if let Some(s) =
        stats.filter(|s| s.reassigned + s.rejected + s.refused + s.late + s.duplicate > 0)
    {
        println!(
            "Faults absorbed: {} shards reassigned, {} results rejected, {} refused (protocol violations), {} late, {} duplicate",
            s.reassigned, s.rejected, s.refused, s.late, s.duplicate
        );
    }
    if let Some(s) = stats.filter(|s| s.backups > 0) {
        println!(
            "Stragglers: {} late shards copied to idle workers, {} of the copies answered first",
            s.backups, s.backups_won
        );
    }
    if let Some(s) = stats.filter(|s| s.audited > 0) {
        println!(
            "Audits: {} results recomputed, {} differed (their workers were dropped; the recomputed gradients were used)",
            s.audited, s.audit_failures
        );
    }
    Ok(())
}
