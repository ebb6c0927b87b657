//! A training run from its flags to its summary line: resume or restart,
//! `--local` or a served cluster (with `--spawn-workers`), then save the
//! model and print what the run did. `main.rs` only parses and dispatches.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::model_file;
use common::plan::RunState;
use common::reference::EpochReport;
use common::Network;

use crate::app::dashboard::{self, Dashboard, Feed, Watched};
use crate::app::launch::{sibling_worker_binary, Credentials, LocalWorkers};
use crate::app::record::{self, RunRecord};
use crate::app::ui::Ui;
use crate::app::{data, model_use, AppError, AppResult};
use crate::listen::Listener;
use crate::pool::PoolStats;
use crate::Args;

/// Trains as the flags say, saves the model and prints the summary.
pub async fn train(args: Args, bar: indicatif::ProgressBar) -> AppResult<()> {
    let mut config = args.validate()?;
    if let Some(preset) = args.preset {
        // The flags the preset stands for; explicit flags have overridden any of them.
        eprintln!(
            "preset {}: {}",
            clap::ValueEnum::to_possible_value(&preset)
                .map(|v| v.get_name().to_string())
                .unwrap_or_default(),
            preset.flags()
        );
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let read = |p: &std::path::PathBuf| {
            common::regular_file::read(p, common::regular_file::MAX_SMALL_FILE)
                .map_err(AppError::read(p))
        };
        config.tls = Some(crate::config::TlsPem {
            cert: read(cert)?,
            key: read(key)?,
        });
    }
    let auto = args
        .checkpoint
        .as_ref()
        .filter(|p| args.auto_resume && p.exists());
    let mut record = Recording {
        path: args
            .record
            .clone()
            .unwrap_or_else(|| args.out.with_extension("record.json")),
        data_dir: args
            .data_dir
            .clone()
            .unwrap_or_else(common::dataset::fetch::default_data_dir),
        init: None,
    };
    if let Some(path) = args.resume.as_ref().or(auto) {
        let c = crate::checkpoint::load(path)?;
        c.check_matches(path, &config.plan)?;
        // The model the run started from is in the record it has written so far.
        record.init = RunRecord::load(&record.path).ok().and_then(|r| r.init);
        if c.position.epoch >= config.plan.epochs || c.state.stopping.stopped {
            // A supervisor restarted a finished run: keep the result, train nothing.
            record.write(&config.plan, &c.state)?;
            record::save_model(&args.out, &c.network, &c.state.chain)?;
            save_best(&args, &config.plan, &c.state)?;
            println!(
                "Done: {} already holds all {} epochs; model saved to {}",
                path.display(),
                config.plan.epochs,
                args.out.display()
            );
            return Ok(());
        }
        config.resume = Some(c);
    }
    if let Some(path) = &args.init {
        let network = model_use::load_model(path)?;
        if network.sizes != config.plan.sizes || network.net != config.plan.net {
            let model = match &network.net {
                Some(net) => format!("the net {net}"),
                None => format!("layer sizes {:?}", network.sizes),
            };
            let run = match &config.plan.net {
                Some(net) => format!("--net is {net}"),
                None => format!("--sizes is {:?}", config.plan.sizes),
            };
            return Err(AppError::Usage(format!(
                "--init {}: the model has {model}, but {run}",
                path.display()
            )));
        }
        record.init = Some(record::InitModel {
            path: path.clone(),
            weights: common::chain::weights_digest(&network),
        });
        config.init = Some(network);
    }
    let ui = Ui::new(
        bar.clone(),
        args.progress.shows(),
        config.plan.batch_size,
        args.metrics.clone(),
        args.plot.clone(),
    )?
    .with_epochs(config.plan.epochs);
    let data_dir = args.data_dir.clone();
    let expand = config.plan.expand_data;
    let load = || async move {
        tokio::task::spawn_blocking(move || data::load_mnist(data_dir.as_deref(), expand))
            .await
            .map_err(|_| AppError::Panicked {
                what: "loading the data",
            })?
            .map(Arc::new)
    };

    if args.local {
        if args.dashboard.is_some() || args.trace.is_some() {
            return Err(AppError::Usage(
                "--dashboard and --trace watch a cluster run; drop --local".into(),
            ));
        }
        let data = load().await?;
        let start = std::time::Instant::now();
        let mut network = config
            .init
            .clone()
            .unwrap_or_else(|| config.plan.initial_network());
        let plan = config.plan.clone();
        let (network, state, reports) = tokio::task::spawn_blocking(move || {
            let mut state = RunState::new(&plan);
            let reports =
                common::reference::train_with_state(&mut network, &mut state, &data, &plan, ui);
            (network, state, reports)
        })
        .await
        .map_err(|_| AppError::Panicked { what: "training" })?;
        return finish(
            &args,
            &record,
            &config.plan,
            network,
            &state,
            &reports,
            start.elapsed(),
            None,
        );
    }

    let listen = args.listen_addr()?;
    let bind_error = |what: String| move |source| AppError::Bind { what, source };
    let (listener, _socket_file) = Listener::bind(&listen)
        .await
        .map_err(bind_error(format!("{listen:?}")))?;
    let addr = listener
        .address()
        .map_err(bind_error(format!("{listen:?}")))?;
    // First line of stdout, so scripts and tests can find a port chosen with :0.
    println!("Listening on {addr}");
    let dashboard = start_dashboard(&args, &config)?;
    let feed = dashboard.as_ref().map(Dashboard::feed);
    let mut local = if args.spawn_workers {
        let credentials = Credentials {
            token: args.token.clone(),
            tls: args
                .tls_cert
                .clone()
                .map(|cert| (cert, args.tls_domain.clone())),
        };
        // Their log lines go through the bar, so they never tear it.
        let bar = bar.clone();
        let log = move |line: &str| bar.suspend(|| eprintln!("{line}"));
        let scheme = if credentials.tls.is_some() {
            "https"
        } else {
            "http"
        };
        Some(LocalWorkers::spawn(
            &sibling_worker_binary()?,
            config.workers,
            &listener
                .worker_address(scheme)
                .map_err(bind_error(format!("{listen:?}")))?,
            &credentials,
            Some(Arc::new(log)),
        )?)
    } else {
        None
    };
    let mut workers_gone = false;

    let shutdown = async {
        // Ctrl-C or SIGTERM (as from Kubernetes or a process manager): stop, checkpoint, exit.
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            // Spawned workers exit only after the run's Shutdown, or when they
            // cannot join (their errors are on stderr above); don't wait forever.
            () = async { match local.as_mut() { Some(l) => l.all_exited().await, None => std::future::pending().await } } => {
                workers_gone = true;
            }
        }
    };
    let config_plan = config.plan.clone();
    let data = async {
        let data = load().await.map_err(crate::DataLoadError::from)?;
        if let Some(feed) = &feed {
            feed.send(Feed::Data(Arc::clone(&data)));
        }
        Ok(data)
    };
    let observer = dashboard
        .as_ref()
        .map_or_else(crate::pool::Observer::none, Dashboard::observer);
    let progress = Watched::new(ui, feed.clone());
    let summary = crate::serve(listener, config, data, shutdown, progress, observer).await;
    // Whatever ended the run, the bar goes: no half-drawn bar under the last
    // lines, and none redrawn around the workers' last log lines either.
    bar.finish_and_clear();
    bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    if let Some(d) = dashboard {
        let outcome = match &summary {
            Ok(_) => "finished".to_string(),
            Err(e) => format!("stopped: {e}"),
        };
        d.finish(&outcome).await;
    }
    if workers_gone && summary.is_err() {
        return Err(AppError::Usage(
            "every spawned worker exited before training finished; their errors are above".into(),
        ));
    }
    if let Some(local) = local {
        let clean = local.wait(Duration::from_secs(10)).await;
        tracing::info!(clean, "local workers exited");
    }
    let summary = summary?;
    finish(
        &args,
        &record,
        &config_plan,
        summary.network,
        &summary.state,
        &summary.reports,
        summary.elapsed,
        Some(&summary.stats),
    )
}

/// Starts the dashboard and trace recorder the flags ask for, printing
/// where the page is.
fn start_dashboard(args: &Args, config: &crate::Config) -> AppResult<Option<Dashboard>> {
    if args.dashboard.is_none() && args.trace.is_none() {
        return Ok(None);
    }
    let (listener, access) = match &args.dashboard {
        Some(value) => {
            let addr = dashboard::parse_addr(value)?;
            let (access, code) =
                dashboard::access_rule(addr, config.token.as_ref(), args.insecure_no_token)?;
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
    let plan = &config.plan;
    let d = Dashboard::start(dashboard::Options {
        listener,
        access,
        hosts: args.dashboard_host.clone(),
        trace: args
            .trace
            .clone()
            .map(|path| crate::app::trace::TraceOptions {
                path,
                steps: args.trace_steps.clone(),
            }),
        run: dashboard::RunInfo {
            sizes: plan.sizes.clone(),
            epochs: plan.epochs,
            batch: plan.batch_size,
            shards: plan.shards,
            workers: config.workers,
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

/// Where the best validation epoch's model goes: `--best-out`, or, with
/// early stopping or a schedule, `--out` with `.best` before its extension.
fn best_path(args: &Args, plan: &common::plan::TrainingPlan) -> Option<PathBuf> {
    args.best_out.clone().or_else(|| {
        (plan.early_stop.is_some() || plan.eta_schedule.is_some()).then(|| {
            let ext = args.out.extension().map_or("best".to_string(), |e| {
                format!("best.{}", e.to_string_lossy())
            });
            args.out.with_extension(ext)
        })
    })
}

/// Saves the best validation epoch's model where [`best_path`] says; returns the path.
fn save_best(
    args: &Args,
    plan: &common::plan::TrainingPlan,
    state: &RunState,
) -> AppResult<Option<PathBuf>> {
    match (best_path(args, plan), &state.best) {
        (Some(path), Some(best)) => {
            model_file::save(&path, &best.network)?;
            Ok(Some(path))
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
    fn write(&self, plan: &common::plan::TrainingPlan, state: &RunState) -> AppResult<()> {
        let digests = record::data_digests(&self.data_dir)?;
        Ok(record::of_run(plan, digests, self.init.clone(), &state.chain).save(&self.path)?)
    }
}

/// Saves the model (and the best validation epoch's) and the run record,
/// and prints the run's summary.
#[allow(clippy::too_many_arguments)]
fn finish(
    args: &Args,
    recording: &Recording,
    plan: &common::plan::TrainingPlan,
    network: Network,
    state: &RunState,
    reports: &[EpochReport],
    elapsed: Duration,
    stats: Option<&PoolStats>,
) -> AppResult<()> {
    let last = reports
        .last()
        .ok_or_else(|| AppError::Usage("no epoch ran".into()))?;
    let best = reports
        .iter()
        .max_by_key(|r| (r.test_correct, std::cmp::Reverse(r.epoch)))
        .unwrap_or(last);
    record::save_model(&args.out, &network, &state.chain)?;
    recording.write(plan, state)?;
    // Per epoch of training samples: an epoch resumed mid-way counts for the part that ran.
    let epochs_run: f64 = reports
        .iter()
        .map(|r| r.trained as f64 / r.samples.max(1) as f64)
        .sum();
    let best_saved = save_best(args, plan, state)?;
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
        args.out.display(),
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
