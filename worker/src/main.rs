//! `worker`: parse flags, set up logging, run [`worker::run`] until the
//! coordinator says Shutdown or Ctrl-C.

use std::time::Duration;

use clap::Parser;

/// Worker of a data-parallel trainer for Nielsen's MNIST network: dials the
/// coordinator and returns the summed gradients of the shards it is given.
#[derive(Debug, Parser)]
#[command(name = "worker", version, about)]
struct Args {
    /// Coordinator address: http://HOST:PORT, https://HOST:PORT (with
    /// --tls-ca), HOST:PORT, or unix:PATH for a coordinator on this host
    /// listening on a Unix socket.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    connect: String,
    /// Name for the coordinator's logs [default: worker-<pid>].
    #[arg(long)]
    name: Option<String>,
    /// Seconds to keep retrying an unreachable coordinator before giving up.
    #[arg(long, default_value_t = 60.0)]
    retry_for: f64,
    /// Connect over TLS trusting this CA certificate (PEM); use an https:// address.
    #[arg(long, value_name = "PEM")]
    tls_ca: Option<std::path::PathBuf>,
    /// Name to verify the coordinator's certificate against [default: the address's host].
    #[arg(long, requires = "tls_ca")]
    tls_domain: Option<String>,
    /// Seconds between HTTP/2 keepalive pings to the coordinator (dead after twice this).
    #[arg(long, default_value_t = 10.0)]
    keepalive: f64,
    /// The run's shared secret (never logged).
    #[arg(long, env = "DDP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Serve grpc.health.v1 on this port (all interfaces): SERVING while
    /// joined to a coordinator, NOT_SERVING while connecting or retrying.
    #[arg(long, value_name = "PORT")]
    health_port: Option<u16>,
    /// Log format on stderr: text, or json (one object per line, for log collectors).
    #[arg(long, default_value = "text")]
    log_format: common::logging::LogFormat,
    /// Fault injection: on receiving step N, drop the connection mid-step and exit with status 3.
    #[arg(long, value_name = "N", conflicts_with = "stall_at_step", help_heading = FAULTS)]
    exit_at_step: Option<u64>,
    /// Fault injection: on receiving step N, stop answering but keep the connection open;
    /// exit with status 3 once the coordinator drops this worker (see its --shard-timeout).
    #[arg(long, value_name = "N", conflicts_with_all = ["corrupt_at_step", "corrupt_from_step"], help_heading = FAULTS)]
    stall_at_step: Option<u64>,
    /// Fault injection: on step N, flip the lowest mantissa bit of one gradient value
    /// (silent data corruption; only the coordinator's --audit-rate can catch it).
    #[arg(long, value_name = "N", conflicts_with_all = ["exit_at_step", "corrupt_from_step"], help_heading = FAULTS)]
    corrupt_at_step: Option<u64>,
    /// Fault injection: the same on every step from N on (a persistently faulty CPU).
    #[arg(long, value_name = "N", conflicts_with = "exit_at_step", help_heading = FAULTS)]
    corrupt_from_step: Option<u64>,
    /// Compute only with this kernel set: portable or avx2 [default: any this
    /// CPU can run; the coordinator's --kernels chooses]. A run that uses
    /// another set refuses this worker.
    #[arg(long, value_name = "portable|avx2", value_parser = parse_kernels)]
    kernels: Option<common::kernels::KernelSet>,
}

/// The help heading of the fault-injection flags, which only tests and drills use.
const FAULTS: &str = "Fault injection (for tests and drills)";

fn parse_kernels(s: &str) -> Result<common::kernels::KernelSet, String> {
    let set = common::kernels::KernelSet::from_name(s)
        .ok_or_else(|| format!("{s:?} is not a kernel set; use portable or avx2"))?;
    match set.missing_feature() {
        None => Ok(set),
        Some(feature) => Err(format!(
            "this CPU lacks {feature}, which kernel set {set} needs"
        )),
    }
}

// One thread: the runtime only moves bytes; backprop runs on spawn_blocking's thread.
fn main() -> std::process::ExitCode {
    common::allocator::keep_freed_memory();
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if matches!(e.downcast_ref(), Some(worker::WorkerError::InjectedExit(_))) => {
            eprintln!("worker: {e:#}");
            std::process::ExitCode::from(3)
        }
        Err(e) => common::logging::report_error("worker", e.as_ref()),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    common::logging::init(args.log_format, std::io::stderr);
    anyhow::ensure!(
        args.retry_for.is_finite() && args.retry_for >= 0.0,
        "--retry-for {}: must be seconds >= 0",
        args.retry_for
    );
    anyhow::ensure!(
        args.keepalive.is_finite() && args.keepalive > 0.0,
        "--keepalive {}: must be seconds > 0",
        args.keepalive
    );
    let config = worker::WorkerConfig {
        endpoint: args.connect,
        name: args
            .name
            .unwrap_or_else(|| format!("worker-{}", std::process::id())),
        retry_for: Duration::from_secs_f64(args.retry_for),
        tls_ca: match &args.tls_ca {
            Some(p) => Some(
                common::regular_file::read(p, common::regular_file::MAX_SMALL_FILE)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?,
            ),
            None => None,
        },
        tls_domain: args.tls_domain.clone(),
        keepalive: Duration::from_secs_f64(args.keepalive),
        token: args
            .token
            .as_deref()
            .map(common::auth::Token::new)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--token: {e}"))?,
        fault: args
            .exit_at_step
            .map(worker::Fault::ExitAtStep)
            .or(args.stall_at_step.map(worker::Fault::StallAtStep))
            .or(args.corrupt_at_step.map(worker::Fault::CorruptAtStep))
            .or(args.corrupt_from_step.map(worker::Fault::CorruptFromStep)),
        kernels: args.kernels,
        health: match args.health_port {
            Some(port) => {
                let all = std::net::SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port));
                let (reporter, _) = worker::serve_health(all)
                    .await
                    .map_err(|e| anyhow::anyhow!("--health-port {port}: {e}"))?;
                Some(reporter)
            }
            None => None,
        },
    };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    worker::run(config, shutdown).await?;
    Ok(())
}
