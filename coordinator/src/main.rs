//! `coordinator`: `train` (the default: `coordinator --workers 4` trains),
//! `evaluate`, `predict` and `health`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use common::logging::LogFormat;
use coordinator::app::ui::{progress_bar, BarWriter};
use coordinator::app::{health, model_use};
use coordinator::Args;

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
                  coordinator verify model.record.json --model model.safetensors\n  \
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
    #[arg(long, global = true, default_value = "text", help_heading = "Options")]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train (the default when no subcommand is given).
    Train(Box<Args>),
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
        #[arg(long, value_enum, default_value_t = model_use::ExportFormat::Network2Json)]
        format: model_use::ExportFormat,
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
    /// Replay a run from its record in this process and check every hash of
    /// its weights; exits 0 only if all match. With --model, also check that
    /// the model file holds the run's final weights.
    Verify {
        /// The run record (`<out>.record.json`, or the run's --record).
        record: PathBuf,
        /// A model file the run wrote, to check against the record.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Directory with the IDX files [default: $MNIST_DATA_DIR or ~/.cache/nielsen-ddp/mnist].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The --init model the run started from, if it is not at the path the record names.
        #[arg(long)]
        init: Option<PathBuf>,
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
    common::allocator::keep_freed_memory();
    let cli = Cli::parse();
    // Where the hard limit allows: connections are budgeted from what it gives (see `fds`).
    let _ = coordinator::fds::raise_soft_limit();
    let threads = match &cli.command {
        None => cli.train.runtime_threads(),
        Some(Command::Train(args)) => args.runtime_threads(),
        Some(_) => 1,
    };
    let runtime = if threads > 1 {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let result = runtime
        .context("starting the async runtime")
        .and_then(|r| r.block_on(run(cli)));
    match result {
        Ok(code) => code,
        Err(e) => common::logging::report_error("coordinator", e.as_ref()),
    }
}

async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let ok = std::process::ExitCode::SUCCESS;
    let command = cli.command.unwrap_or(Command::Train(Box::new(cli.train)));
    match command {
        Command::Train(args) => {
            let bar = progress_bar();
            common::logging::init(cli.log_format, BarWriter(bar.clone()));
            coordinator::app::run::train(*args, bar).await?;
            Ok(ok)
        }
        Command::Evaluate { model, data_dir } => {
            common::logging::init(cli.log_format, std::io::stderr);
            let text = tokio::task::spawn_blocking(move || {
                model_use::evaluate(&model, data_dir.as_deref())
            })
            .await??;
            print!("{text}");
            Ok(ok)
        }
        Command::Predict { model, images } => {
            common::logging::init(cli.log_format, std::io::stderr);
            let (text, failed) = model_use::predict(&model, &images)?;
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
            let text = model_use::export(&model, &out, format, cost)?;
            println!("{text}");
            Ok(ok)
        }
        Command::Verify {
            record,
            model,
            data_dir,
            init,
        } => {
            common::logging::init(cli.log_format, std::io::stderr);
            verify(record, model, data_dir, init).await
        }
        Command::PlotRuns {
            out,
            column,
            title,
            floor,
            runs,
        } => {
            common::logging::init(cli.log_format, std::io::stderr);
            plot_runs(&out, &column, &title, floor, &runs)?;
            Ok(ok)
        }
        Command::Health {
            addr,
            service,
            timeout,
            tls_ca,
        } => {
            common::logging::init(cli.log_format, std::io::stderr);
            health_check(&addr, &service, timeout, tls_ca).await
        }
    }
}

/// `coordinator verify`: replays the record's run and prints the verdict;
/// exit status 1 if it differs.
async fn verify(
    record: PathBuf,
    model: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    init: Option<PathBuf>,
) -> anyhow::Result<std::process::ExitCode> {
    let start = std::time::Instant::now();
    let (verdict, notes) = tokio::task::spawn_blocking(move || {
        let run = coordinator::app::record::RunRecord::load(&record)?;
        let dir = data_dir.unwrap_or_else(common::dataset::fetch::default_data_dir);
        coordinator::app::record::verify(&run, &dir, model.as_deref(), init.as_deref())
    })
    .await??;
    for note in &notes {
        println!("note: {note}");
    }
    let took = start.elapsed().as_secs_f64();
    match verdict {
        coordinator::app::record::Verdict::Verified { hashes, head } => {
            println!(
                "verified: {hashes} hashes match, replayed in {took:.1} s; final chain value {}",
                common::chain::hex(&head)
            );
            Ok(std::process::ExitCode::SUCCESS)
        }
        coordinator::app::record::Verdict::Differs { what } => {
            println!("DIFFERS: {what} (replayed in {took:.1} s)");
            Ok(std::process::ExitCode::FAILURE)
        }
    }
}

/// `coordinator plot-runs`: one column of several runs' metrics CSVs in one plot.
fn plot_runs(
    out: &std::path::Path,
    column: &str,
    title: &str,
    floor: f64,
    runs: &[String],
) -> anyhow::Result<()> {
    let mut curves = Vec::new();
    for run in runs {
        let (label, csv) = run
            .split_once('=')
            .with_context(|| format!("{run:?}: expected LABEL=CSV"))?;
        let points =
            coordinator::app::report::read_metrics_column(std::path::Path::new(csv), column)?;
        curves.push((label.to_string(), points));
    }
    coordinator::app::report::plot_runs(out, title, &format!("{column} (%)"), &curves, floor)?;
    println!("{} runs drawn to {}", curves.len(), out.display());
    Ok(())
}

/// `coordinator health`: asks a server's grpc.health.v1; exit status 1
/// unless it is SERVING.
async fn health_check(
    addr: &str,
    service: &str,
    timeout: f64,
    tls_ca: Option<PathBuf>,
) -> anyhow::Result<std::process::ExitCode> {
    anyhow::ensure!(
        timeout.is_finite() && timeout > 0.0,
        "--timeout {timeout}: must be seconds > 0"
    );
    let ca = tls_ca
        .map(|p| {
            common::regular_file::read(&p, common::regular_file::MAX_SMALL_FILE)
                .with_context(|| format!("reading {}", p.display()))
        })
        .transpose()?;
    let (serving, status) =
        health::health(addr, service, Duration::from_secs_f64(timeout), ca).await?;
    println!("{status}");
    Ok(if serving {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}
