//! `coordinator`: parse flags, set up logging, load (or fetch) the data, bind,
//! and run [`coordinator::serve`]; optionally start local workers.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use common::dataset::{fetch, Mnist};
use common::model_file;
use coordinator::launch::{sibling_worker_binary, LocalWorkers};
use coordinator::Args;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = args.validate()?;

    let data_dir = args.data_dir.clone().unwrap_or_else(fetch::default_data_dir);
    fetch::ensure_mnist(&data_dir)?;
    let data = Arc::new(Mnist::load(&data_dir)?);
    tracing::info!(dir = %data_dir.display(), training = data.training.len(), validation = data.validation.len(), test = data.test.len(), "data loaded");

    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    let local = if args.spawn_workers { Some(LocalWorkers::spawn(&sibling_worker_binary()?, config.workers, addr)?) } else { None };

    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let summary = coordinator::serve(listener, config, data, shutdown, |r| {
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
    })
    .await;
    if let Some(local) = local {
        let clean = local.wait(Duration::from_secs(10)).await;
        tracing::info!(clean, "local workers exited");
    }
    let summary = summary?;

    let (best_epoch, best) = summary.reports.iter().map(|r| (r.epoch, r.test_correct)).max_by_key(|&(e, c)| (c, std::cmp::Reverse(e))).unwrap_or((0, 0));
    let last = summary.reports.last().context("no epoch ran")?;
    let pct = |c: usize| 100.0 * c as f64 / last.test_total.max(1) as f64;
    model_file::save(&args.out, &summary.network)?;
    println!(
        "Done: best test accuracy {:.2}% (epoch {best_epoch}), final {:.2}%, {:.1} s training, {:.2} s per epoch; model saved to {}",
        pct(best),
        pct(last.test_correct),
        summary.elapsed.as_secs_f64(),
        summary.elapsed.as_secs_f64() / summary.reports.len() as f64,
        args.out.display()
    );
    let s = &summary.stats;
    if s.reassigned + s.rejected + s.late + s.duplicate > 0 {
        println!("Faults absorbed: {} shards reassigned, {} results rejected, {} late, {} duplicate", s.reassigned, s.rejected, s.late, s.duplicate);
    }
    Ok(())
}
