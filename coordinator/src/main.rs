//! `coordinator`: `train` (the default: `coordinator --workers 4` trains),
//! `evaluate`, `predict` and `health`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use common::logging::LogFormat;
use common::model_file;
use common::trainer::{EpochReport, RunState};
use common::Network;
use coordinator::commands;
use coordinator::launch::{sibling_worker_binary, Credentials, LocalWorkers};
use coordinator::pool::PoolStats;
use coordinator::ui::{progress_bar, BarWriter, Ui};
use coordinator::Args;
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
#[command(
    name = "coordinator",
    version,
    about = "Coordinator of a data-parallel trainer for Nielsen's MNIST network",
    long_about = "Owns the model, the data and the schedule; shards every mini-batch across the workers \
                  that connect to it over gRPC, adds their summed gradients in shard order and applies \
                  the SGD update.\n\nWith no subcommand it trains: defaults (30 epochs, [784,30,10], \
                  batch 10, eta 3.0) reach about 95% test accuracy.\n\nExamples:\n  \
                  coordinator --workers 4 --spawn-workers\n  \
                  coordinator --workers 4 --spawn-workers --preset ch3-l2\n  \
                  coordinator evaluate --model model.safetensors\n  \
                  coordinator export --format network2-json --model model.safetensors --out model.json\n  \
                  coordinator predict --model model.safetensors digit.png",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    train: Args,
    /// Log format on stderr: text, or json (one object per line, for log collectors).
    #[arg(long, global = true, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train (the default when no subcommand is given).
    Train(Args),
    /// Test accuracy and confusion matrix of a saved model on MNIST's 10,000 test images.
    Evaluate {
        /// The model file (safetensors).
        #[arg(long)]
        model: PathBuf,
        /// Directory with the IDX files [default: $MNIST_DATA_DIR or ~/.cache/nielsen-ddp/mnist].
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Predict the digit in PNG or JPEG images (any size; dark-on-light or light-on-dark).
    Predict {
        /// The model file (safetensors).
        #[arg(long)]
        model: PathBuf,
        /// Images to classify.
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Write a model in another format: network2-json is the JSON that
    /// network2.py's `load` reads (sizes, weights, biases, cost).
    Export {
        /// Output format.
        #[arg(long, value_enum, default_value_t = commands::ExportFormat::Network2Json)]
        format: commands::ExportFormat,
        /// The model file (safetensors; a checkpoint also works).
        #[arg(long)]
        model: PathBuf,
        /// Where to write the JSON.
        #[arg(long)]
        out: PathBuf,
        /// The cost to name in the JSON (quadratic or cross-entropy) [default:
        /// the one a checkpoint records, else quadratic]. Model files do not
        /// record it; it matters only to continue training in network2.py.
        #[arg(long, value_name = "quadratic|cross-entropy")]
        cost: Option<String>,
    },
    /// Draw several runs' accuracy per epoch on one chart, from their --metrics CSVs.
    PlotRuns {
        /// The PNG to write.
        #[arg(long)]
        out: PathBuf,
        /// The CSV column to draw.
        #[arg(long, default_value = "test_accuracy")]
        column: String,
        /// Chart title.
        #[arg(long, default_value = "Test accuracy per epoch")]
        title: String,
        /// Lowest accuracy shown (%).
        #[arg(long, default_value_t = 90.0)]
        floor: f64,
        /// Runs as LABEL=CSV.
        #[arg(required = true, value_name = "LABEL=CSV")]
        runs: Vec<String>,
    },
    /// Ask a coordinator or worker for its grpc.health.v1 status; exits 0 only
    /// when SERVING (usable as a container or Kubernetes exec probe).
    Health {
        /// Server address.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        addr: String,
        /// Service to ask about: "ddp.v1.Trainer" (ready for workers) or "" (the process is up).
        #[arg(long, default_value = coordinator::TRAINER_SERVICE)]
        service: String,
        /// Seconds to wait for an answer.
        #[arg(long, default_value_t = 3.0)]
        timeout: f64,
        /// Trust this CA certificate (PEM) for an https:// address.
        #[arg(long, value_name = "PEM")]
        tls_ca: Option<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!(
                "coordinator: error: {}",
                common::logging::error_chain(e.as_ref())
            );
            std::process::ExitCode::FAILURE
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let ok = std::process::ExitCode::SUCCESS;
    let command = cli.command.unwrap_or(Command::Train(cli.train));
    match command {
        Command::Train(args) => {
            let bar = progress_bar();
            common::logging::init(cli.log_format, BarWriter(bar.clone()));
            train(args, bar).await?;
            Ok(ok)
        }
        Command::Evaluate { model, data_dir } => {
            common::logging::init(cli.log_format, std::io::stderr);
            let text = tokio::task::spawn_blocking(move || {
                commands::evaluate(&model, data_dir.as_deref())
            })
            .await??;
            print!("{text}");
            Ok(ok)
        }
        Command::Predict { model, images } => {
            common::logging::init(cli.log_format, std::io::stderr);
            let (text, failed) = commands::predict(&model, &images)?;
            print!("{text}");
            Ok(if failed == 0 {
                ok
            } else {
                std::process::ExitCode::FAILURE
            })
        }
        Command::Export {
            format,
            model,
            out,
            cost,
        } => {
            common::logging::init(cli.log_format, std::io::stderr);
            let cost = cost
                .map(|c| {
                    common::cost::Cost::from_name(&c)
                        .with_context(|| format!("--cost {c:?}: use quadratic or cross-entropy"))
                })
                .transpose()?;
            let text = commands::export(&model, &out, format, cost)?;
            println!("{text}");
            Ok(ok)
        }
        Command::PlotRuns {
            out,
            column,
            title,
            floor,
            runs,
        } => {
            common::logging::init(cli.log_format, std::io::stderr);
            let mut curves = Vec::new();
            for run in &runs {
                let (label, csv) = run
                    .split_once('=')
                    .with_context(|| format!("{run:?}: expected LABEL=CSV"))?;
                let points =
                    coordinator::report::read_metrics_column(std::path::Path::new(csv), &column)?;
                curves.push((label.to_string(), points));
            }
            coordinator::report::plot_runs(&out, &title, &format!("{column} (%)"), &curves, floor)?;
            println!("{} runs drawn to {}", curves.len(), out.display());
            Ok(ok)
        }
        Command::Health {
            addr,
            service,
            timeout,
            tls_ca,
        } => {
            common::logging::init(cli.log_format, std::io::stderr);
            anyhow::ensure!(
                timeout.is_finite() && timeout > 0.0,
                "--timeout {timeout}: must be seconds > 0"
            );
            let ca = tls_ca
                .map(|p| std::fs::read(&p).with_context(|| format!("reading {}", p.display())))
                .transpose()?;
            let (serving, status) =
                commands::health(&addr, &service, Duration::from_secs_f64(timeout), ca).await?;
            println!("{status}");
            Ok(if serving {
                ok
            } else {
                std::process::ExitCode::FAILURE
            })
        }
    }
}

async fn train(args: Args, bar: indicatif::ProgressBar) -> anyhow::Result<()> {
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
            std::fs::read(p).with_context(|| format!("reading {}", p.display()))
        };
        config.tls = Some(coordinator::config::TlsPem {
            cert: read(cert)?,
            key: read(key)?,
        });
    }
    let auto = args
        .checkpoint
        .as_ref()
        .filter(|p| args.auto_resume && p.exists());
    if let Some(path) = args.resume.as_ref().or(auto) {
        let c = coordinator::checkpoint::load(path)?;
        c.check_matches(path, &config.plan)?;
        if c.position.epoch >= config.plan.epochs || c.state.stopping.stopped {
            // A supervisor restarted a finished run: keep the result, train nothing.
            model_file::save(&args.out, &c.network)?;
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
        let network = commands::load_model(path)?;
        anyhow::ensure!(
            network.sizes == config.plan.sizes,
            "--init {}: the model has layer sizes {:?}, but --sizes is {:?}",
            path.display(),
            network.sizes,
            config.plan.sizes
        );
        config.init = Some(network);
    }
    let ui = Ui::new(
        bar,
        args.progress.shows(),
        config.plan.batch_size,
        args.metrics.clone(),
        args.plot.clone(),
    )?;
    let data_dir = args.data_dir.clone();
    let load = || async move {
        tokio::task::spawn_blocking(move || commands::load_mnist(data_dir.as_deref()))
            .await
            .context("data loading panicked")?
            .map(Arc::new)
    };

    if args.local {
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
                common::trainer::train_with_state(&mut network, &mut state, &data, &plan, ui);
            (network, state, reports)
        })
        .await?;
        return finish(
            &args,
            &config.plan,
            network,
            &state,
            &reports,
            start.elapsed(),
            None,
        );
    }

    let listen = args.listen_addr()?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    // First line of stdout, so scripts and tests can find a port chosen with :0.
    println!("Listening on {addr}");
    let mut local = if args.spawn_workers {
        let credentials = Credentials {
            token: args.token.clone(),
            tls: args
                .tls_cert
                .clone()
                .map(|cert| (cert, args.tls_domain.clone())),
        };
        Some(LocalWorkers::spawn(
            &sibling_worker_binary()?,
            config.workers,
            addr,
            &credentials,
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
    let summary = coordinator::serve(listener, config, load(), shutdown, ui).await;
    if workers_gone && summary.is_err() {
        anyhow::bail!(
            "every spawned worker exited before training finished; their errors are above"
        );
    }
    if let Some(local) = local {
        let clean = local.wait(Duration::from_secs(10)).await;
        tracing::info!(clean, "local workers exited");
    }
    let summary = summary?;
    finish(
        &args,
        &config_plan,
        summary.network,
        &summary.state,
        &summary.reports,
        summary.elapsed,
        Some(&summary.stats),
    )
}

/// Where the best validation epoch's model goes: `--best-out`, or, with
/// early stopping or a schedule, `--out` with `.best` before its extension.
fn best_path(args: &Args, plan: &common::trainer::TrainingPlan) -> Option<PathBuf> {
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
    plan: &common::trainer::TrainingPlan,
    state: &RunState,
) -> anyhow::Result<Option<PathBuf>> {
    match (best_path(args, plan), &state.best) {
        (Some(path), Some(best)) => {
            model_file::save(&path, &best.network)?;
            Ok(Some(path))
        }
        _ => Ok(None),
    }
}

/// Saves the model (and the best validation epoch's) and prints the run's summary.
fn finish(
    args: &Args,
    plan: &common::trainer::TrainingPlan,
    network: Network,
    state: &RunState,
    reports: &[EpochReport],
    elapsed: Duration,
    stats: Option<&PoolStats>,
) -> anyhow::Result<()> {
    let last = reports.last().context("no epoch ran")?;
    let best = reports
        .iter()
        .max_by_key(|r| (r.test_correct, std::cmp::Reverse(r.epoch)))
        .unwrap_or(last);
    model_file::save(&args.out, &network)?;
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
    if let Some(s) =
        stats.filter(|s| s.reassigned + s.rejected + s.refused + s.late + s.duplicate > 0)
    {
        println!(
            "Faults absorbed: {} shards reassigned, {} results rejected, {} refused (protocol violations), {} late, {} duplicate",
            s.reassigned, s.rejected, s.refused, s.late, s.duplicate
        );
    }
    Ok(())
}
