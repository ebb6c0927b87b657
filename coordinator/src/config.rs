//! Command-line flags and the validated run configuration (checked once, at startup).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::cost::Cost;
use common::dataset::{CLASSES, IMAGE_SIZE};
use common::kernels::KernelSet;
use common::layers::spec::SpecError;
use common::layers::NetSpec;
use common::network::Init;
use common::plan::{Monitor, TrainingPlan};
use common::stopping::EtaSchedule;

use common::auth::Token;

use crate::checkpoint::Checkpoint;
use crate::listen::ListenAddr;
use crate::training::Checkpointing;

/// Flags of `coordinator train` (also accepted with no subcommand), in the
/// groups `--help` shows them in. `-h` prints each flag's first line;
/// `--help` the whole text.
///
/// Expected outcome of the defaults with `--workers 4`: 30 epochs of
/// `[784,30,10]`, batch 10, eta 3.0, about 95% test accuracy.
#[derive(Debug, Clone, clap::Parser)]
pub struct Args {
    /// What to train, and on which data.
    #[command(flatten)]
    pub model: ModelFlags,
    /// How to train it.
    #[command(flatten)]
    pub training: TrainingFlags,
    /// Where the work runs.
    #[command(flatten)]
    pub cluster: ClusterFlags,
    /// Slow and failing workers, checkpoints and resuming.
    #[command(flatten)]
    pub faults: FaultFlags,
    /// Who may join.
    #[command(flatten)]
    pub security: SecurityFlags,
    /// The files a run writes.
    #[command(flatten)]
    pub outputs: OutputFlags,
    /// Watching a run as it goes.
    #[command(flatten)]
    pub watching: WatchFlags,
    /// Checking the workers' results and the run afterwards.
    #[command(flatten)]
    pub trust: TrustFlags,
}

const MODEL: &str = "Model and data";
const TRAINING: &str = "Training";
const CLUSTER: &str = "Cluster";
const FAULTS: &str = "Stragglers, faults and checkpoints";
const SECURITY: &str = "Security";
const OUTPUTS: &str = "Outputs";
const WATCHING: &str = "Watching";
const TRUST: &str = "Trust";

/// The network, its initial weights and the data.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = MODEL)]
pub struct ModelFlags {
    /// One of the book's runs by name (flags given explicitly override it).
    ///
    /// It sets the flags it prints. network.py: chapter 1 (the
    /// defaults); ch3-xent: cross-entropy, eta 0.5; ch3-l2: cross-entropy,
    /// scaled init, lambda 5, eta 0.5; ch3-98: the same with [784,100,10],
    /// eta 0.1, 60 epochs; ch3-98-stop: ch3-98 with --early-stop 10 and
    /// --eta-schedule halve:10:128. Chapter 6 (network3.py, batch 10):
    /// ch6-fc, ch6-conv, ch6-conv2, ch6-relu, ch6-expanded, ch6-dropout.
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// Layer sizes, comma-separated [default: 784,30,10, or the preset's].
    ///
    /// They must start with 784 and end with 10 for MNIST.
    #[arg(long, conflicts_with = "net")]
    pub sizes: Option<String>,
    /// Chapter 6's net (network3.py) instead of --sizes.
    ///
    /// Comma-separated layers conv<N>x<K> (then pool<P>), fc<N>, softmax<N>
    /// (last), with suffixes :sigmoid (default), :relu, :tanh, :dropout=P;
    /// e.g. conv20x5:relu,pool2,conv40x5:relu,pool2,fc100:relu,softmax10.
    /// Its cost is the softmax's log-likelihood, its init and L2 network3.py's.
    #[arg(long, value_name = "LAYERS", conflicts_with_all = ["cost", "init_weights"])]
    pub net: Option<String>,
    /// Train on every training image and its four one-pixel shifts.
    ///
    /// As expand_mnist.py does: 250,000 images, generated at start.
    #[arg(long)]
    pub expand_data: bool,
    /// Initial weights drawn from the seed: large or scaled [default: large, or the preset's].
    ///
    /// large is N(0,1), chapter 1; scaled is N(0,1)/sqrt(n_in), network2.py's
    /// default; biases are N(0,1) either way. (--init MODEL starts from a
    /// saved model instead.)
    #[arg(long, value_parser = parse_init, value_name = "large|scaled", conflicts_with = "init")]
    pub init_weights: Option<Init>,
    /// Start from the weights of this saved model instead of the seed's init.
    ///
    /// Its sizes must match --sizes; the seed still drives the shuffles.
    #[arg(long, value_name = "MODEL", conflicts_with = "resume")]
    pub init: Option<PathBuf>,
    /// Seed of the initial weights and the epoch shuffles.
    ///
    /// Like network.py's N(0,1) init, some seeds start slowly: seeds 1, 8, 10
    /// are at 74-82% after one epoch where most are at 90-91%.
    #[arg(long, default_value_t = 2)]
    pub seed: u64,
    /// Directory with the IDX files; MNIST is fetched into it when missing.
    ///
    /// [default: $MNIST_DATA_DIR or ~/.cache/nielsen-ddp/mnist]
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// The optimisation: epochs, batches, eta, cost and their schedule.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = TRAINING)]
pub struct TrainingFlags {
    /// Training epochs, the most [default: 30, or the preset's].
    ///
    /// Early stopping may end sooner.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Mini-batch length.
    #[arg(long, default_value_t = 10)]
    pub batch_size: usize,
    /// Learning rate eta [default: 3.0, or the preset's].
    #[arg(long, allow_negative_numbers = true)]
    pub eta: Option<f32>,
    /// Cost function [default: quadratic, or the preset's].
    ///
    /// quadratic (chapter 1) or cross-entropy (chapter 3).
    #[arg(long, value_parser = parse_cost, value_name = "quadratic|cross-entropy")]
    pub cost: Option<Cost>,
    /// L2 regularisation lambda >= 0 [default: 0, or the preset's].
    ///
    /// w <- (1 - eta*lambda/n) w - (eta/m) sum dC/dw, n = training-set size;
    /// biases are not decayed.
    #[arg(long, allow_negative_numbers = true, value_name = "LAMBDA")]
    pub lambda: Option<f32>,
    /// Momentum mu in [0, 1) [default: 0].
    ///
    /// v <- mu v - (eta/m) sum dC/dw, w <- w + v (biases too). The velocity
    /// is checkpointed.
    #[arg(long, allow_negative_numbers = true, value_name = "MU")]
    pub momentum: Option<f32>,
    /// Stop after N epochs without a better validation accuracy.
    ///
    /// The book's no-improvement-in-N rule; the best validation epoch's model
    /// is saved beside --out.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub early_stop: Option<i64>,
    /// Learning-rate schedule halve:N:R (the book: halve:10:128).
    ///
    /// Halve eta each time the validation accuracy has not improved for N
    /// epochs; stop when eta has fallen to eta/R.
    #[arg(long, value_name = "halve:N:R")]
    pub eta_schedule: Option<String>,
    /// Figures to compute after each epoch besides test and validation accuracy.
    ///
    /// all, none, or a list of training-cost, training-accuracy,
    /// validation-cost (network2.py's monitor_* switches; off is faster).
    #[arg(long, default_value = "all", value_name = "LIST")]
    pub monitor: String,
    /// Logical shards per mini-batch, S (default: --workers).
    ///
    /// Results depend on S, not on the worker count.
    #[arg(long)]
    pub shards: Option<usize>,
    /// The code every shard and evaluation is computed with: auto, portable or avx2.
    ///
    /// Chosen once for the whole run and sent to every worker: avx2
    /// (AVX2+FMA, the fastest; the same bits on every CPU that has both),
    /// portable (plain loops and a pure-Rust exp: the same bits on any CPU,
    /// several times slower), or auto (this machine's fastest). Workers that
    /// cannot run it are refused.
    #[arg(long, value_parser = parse_kernels, value_name = "auto|portable|avx2", default_value = "auto")]
    pub kernels: KernelChoice,
}

/// Where the training runs: this process or a served cluster.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = CLUSTER)]
pub struct ClusterFlags {
    /// Address to serve gRPC on: IP:PORT, HOST:PORT or unix:PATH.
    ///
    /// IP:PORT or HOST:PORT (`localhost:50051`), or a Unix socket for workers
    /// on this host, unix:PATH (created 0600) [default: 127.0.0.1:50051; with
    /// --spawn-workers and no TLS, a Unix socket in the temporary directory].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Workers to wait for before training starts.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Start --workers local worker processes and stop them at the end.
    ///
    /// They run the `worker` binary beside this one. When there are as many
    /// of them as CPUs this process may use, each is pinned to its own CPU.
    #[arg(long)]
    pub spawn_workers: bool,
    /// Train in this process with no gRPC and no workers.
    ///
    /// The single-process reference trainer. With the same --seed and
    /// --shards it writes a model bitwise identical to a cluster run's.
    #[arg(long, conflicts_with = "spawn_workers")]
    pub local: bool,
    /// Seconds to wait for a replacement when no worker is left mid-run.
    #[arg(long, default_value_t = 60.0)]
    pub wait_timeout: f64,
    /// Seconds between HTTP/2 keepalive pings to each worker.
    ///
    /// A worker that does not answer within twice this is dropped (catches
    /// dead peers whose connection stays half-open).
    #[arg(long, default_value_t = 10.0)]
    pub keepalive: f64,
    /// Shards of at most N samples send the first layer's error, not its gradient.
    ///
    /// Shards of at most N samples (and fewer than 784) send the first
    /// layer's error (hidden neurons × N values) instead of its weight
    /// gradient (hidden neurons × 784), and the coordinator computes that
    /// gradient itself, with the same bits. With a --net, each fully
    /// connected layer whose error and input are fewer values than its
    /// weight gradient sends those instead, whatever N. 0: workers always
    /// send whole gradients.
    #[arg(long, default_value_t = crate::pool::FIRST_ERROR_MAX_SAMPLES, value_name = "N")]
    pub first_errors_up_to: usize,
    /// Threads the coordinator's network and training loop run on.
    ///
    /// Default: one while a step's work (batch size x parameters) is under
    /// 10 M multiply-adds, where cross-thread wake-ups would cost more than
    /// they save; one per core from there, where each worker's message (about
    /// a megabyte at batch 1000) is then copied and decoded in parallel; one
    /// with --local.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

/// Stragglers, dead workers, and checkpoints to survive a stop.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = FAULTS)]
pub struct FaultFlags {
    /// Seconds a worker may take for a shard before it is treated as dead.
    ///
    /// Its shards are then recomputed by the others (catches silent workers).
    #[arg(long, default_value_t = 30.0)]
    pub shard_timeout: f64,
    /// A late shard gets a copy on an idle worker after FACTOR x the p99 (0: off).
    ///
    /// Stragglers: a shard unanswered for max(--backup-floor, FACTOR x the
    /// p99 of the last 512 shard round trips) is late, and a copy goes to an
    /// idle worker; the first result wins (the copies are bitwise identical,
    /// so the model cannot change). Busy workers get no new shards. 0 turns
    /// backups off (a straggler is then waited for, up to --shard-timeout).
    #[arg(long, default_value_t = 4.0, value_name = "FACTOR")]
    pub backup_factor: f64,
    /// Seconds: the backup threshold never goes below this.
    #[arg(long, default_value_t = 0.002, value_name = "SECONDS")]
    pub backup_floor: f64,
    /// Checkpoint file, written atomically after every epoch.
    ///
    /// Also every --checkpoint-every steps, and when the run stops early
    /// (Ctrl-C, SIGTERM, no workers).
    #[arg(long, value_name = "PATH", conflicts_with = "local")]
    pub checkpoint: Option<PathBuf>,
    /// Also checkpoint every N steps.
    #[arg(long, value_name = "N", requires = "checkpoint")]
    pub checkpoint_every: Option<u64>,
    /// Continue the run saved in this checkpoint (same flags; --epochs may grow).
    ///
    /// The final weights are bitwise those of an uninterrupted run.
    #[arg(long, value_name = "PATH", conflicts_with = "local")]
    pub resume: Option<PathBuf>,
    /// Resume from --checkpoint when that file exists, start fresh when not.
    ///
    /// For restarts under a supervisor (Kubernetes, compose).
    #[arg(long, requires = "checkpoint", conflicts_with_all = ["resume", "init"])]
    pub auto_resume: bool,
}

/// Who may join the run, and over what.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = SECURITY)]
pub struct SecurityFlags {
    /// Shared secret workers must present (never logged).
    ///
    /// Required to listen on a non-loopback address unless --insecure-no-token.
    #[arg(long, env = "DDP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Allow listening beyond loopback without a token.
    ///
    /// Anyone who can reach the port can then join the run.
    #[arg(long)]
    pub insecure_no_token: bool,
    /// Serve over TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The name in the certificate that --spawn-workers' workers check.
    ///
    /// With --tls-cert and --spawn-workers: the spawned workers trust
    /// --tls-cert itself, for this name.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "localhost",
        requires = "tls_cert"
    )]
    pub tls_domain: String,
}

/// The files a run writes.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = OUTPUTS)]
pub struct OutputFlags {
    /// Where to save the trained model (safetensors).
    #[arg(long, default_value = "model.safetensors")]
    pub out: PathBuf,
    /// Where to save the model of the best validation epoch.
    ///
    /// [default: --out with .best before the extension, when --early-stop or
    /// --eta-schedule is set]
    #[arg(long, value_name = "PATH")]
    pub best_out: Option<PathBuf>,
    /// Write one CSV row per epoch.
    ///
    /// Accuracy, cost, time, throughput, step latency and its breakdown,
    /// workers, recomputed shards.
    #[arg(long, value_name = "CSV")]
    pub metrics: Option<PathBuf>,
    /// Draw test and validation accuracy per epoch as a PNG.
    ///
    /// Rewritten after every epoch.
    #[arg(long, value_name = "PNG")]
    pub plot: Option<PathBuf>,
}

/// Watching a run: the progress bar, the dashboard and the trace.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = WATCHING)]
pub struct WatchFlags {
    /// Progress display: auto (a bar when stderr is a terminal), bar, or none.
    ///
    /// Per-epoch lines go to stdout either way.
    #[arg(long, value_enum, default_value_t = BarMode::Auto)]
    pub progress: BarMode,
    /// Serve a live dashboard (and Prometheus `/metrics`) on this address.
    ///
    /// E.g. 127.0.0.1:8080. Beyond loopback it needs the run's token (or
    /// --insecure-no-token); see docs/dashboard.md.
    #[arg(long, value_name = "ADDR")]
    pub dashboard: Option<String>,
    /// A host name the dashboard answers to besides its address and localhost.
    ///
    /// A DNS name of this machine, a reverse proxy's; repeatable. Requests
    /// for any other Host get 421 (against DNS rebinding).
    #[arg(long, value_name = "NAME", requires = "dashboard")]
    pub dashboard_host: Vec<String>,
    /// Write a Chrome trace-event timeline of --trace-steps.
    ///
    /// For Perfetto or chrome://tracing.
    #[arg(long, value_name = "JSON")]
    pub trace: Option<PathBuf>,
    /// The steps --trace covers, A..B (B excluded).
    #[arg(long, value_name = "A..B", default_value = "0..200", value_parser = parse_steps)]
    pub trace_steps: std::ops::Range<u64>,
}

/// Checking workers' results as they come, and the run afterwards.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = TRUST)]
pub struct TrustFlags {
    /// Fraction of shards (0 to 1) the coordinator recomputes and compares.
    ///
    /// It compares them bit for bit with the worker's result; a worker whose
    /// result differs is dropped and the recomputed gradients are used. A
    /// worker that corrupts every shard is caught after 1/p of them on
    /// average; the coordinator's extra CPU is p times a step's compute.
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    pub audit_rate: f64,
    /// Where the run record goes [default: --out with the extension .record.json].
    ///
    /// The flags that determine the weights, the data files' SHA-256, the
    /// kernel set, and a hash chain of the weights (`coordinator verify`
    /// replays and checks it).
    #[arg(long, value_name = "PATH")]
    pub record: Option<PathBuf>,
    /// Link the weights into the record's hash chain every K steps too.
    ///
    /// Besides every epoch's end, so `verify` can name the first step that
    /// differs to within K. Costs one SHA-256 of the weights per link.
    #[arg(long, value_name = "K")]
    pub record_every: Option<u64>,
}

/// Whether to draw a progress bar (`--progress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BarMode {
    /// A bar when stderr is a terminal.
    Auto,
    /// A bar (indicatif still draws nothing when stderr is not a terminal).
    Bar,
    /// No bar.
    None,
}

impl BarMode {
    /// Whether a bar is drawn in this process.
    pub fn shows(self) -> bool {
        match self {
            BarMode::Auto | BarMode::Bar => std::io::IsTerminal::is_terminal(&std::io::stderr()),
            BarMode::None => false,
        }
    }
}

/// Parses `--trace-steps`: `A..B` (B exclusive).
///
/// # Errors
/// A message saying what is wrong.
pub fn parse_steps(s: &str) -> Result<std::ops::Range<u64>, String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("{s:?}: expected A..B, e.g. 0..200"))?;
    let a: u64 = a.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
    let b: u64 = b.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
    if b <= a {
        return Err(format!("{s:?}: the end must be after the start"));
    }
    Ok(a..b)
}

/// A step's work (batch size × parameters) from which the coordinator runs on
/// a thread per core (see `--threads`). Measured on 2 cores with 2 workers:
/// at batch 100 of `[784,30,10]` (2.4 M) one thread was 4% faster per epoch,
/// at batch 1000 (24 M) two threads 10% faster, and at batch 1000 of
/// `[784,100,10]` (80 M) 25% faster.
pub const PARALLEL_STEP_WORK: usize = 10_000_000;

/// The most threads `--threads` may ask for.
pub const MAX_THREADS: usize = 256;

impl Args {
    /// How many threads the coordinator's runtime gets: `--threads`, or by
    /// the step's work (the batch size and `--sizes`, or the preset's)
    /// against [`PARALLEL_STEP_WORK`]; 1 with `--local`. Flags that do not
    /// parse give 1 (the run then reports them). Reads only the flags: no
    /// look-up of `--listen`, no files.
    pub fn runtime_threads(&self) -> usize {
        if let Some(n) = self.cluster.threads {
            // Out of range: one, and `validate` refuses the flag.
            return if (1..=MAX_THREADS).contains(&n) { n } else { 1 };
        }
        let preset = self.model.preset.unwrap_or(Preset::NetworkPy).values();
        let Ok(sizes) = parse_sizes(self.model.sizes.as_deref().unwrap_or(preset.sizes)) else {
            return 1;
        };
        let work = self
            .training
            .batch_size
            .saturating_mul(common::network::parameter_count(&sizes));
        if work < PARALLEL_STEP_WORK || self.cluster.local {
            return 1;
        }
        std::thread::available_parallelism().map_or(1, usize::from)
    }
}

/// A flag value that cannot work, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--net` does not parse or does not fit MNIST (the message names the layer).
    #[error(transparent)]
    Net(SpecError),
    /// `--sizes` is malformed or does not fit MNIST.
    #[error("--sizes {given:?}: {why}")]
    Sizes {
        /// The flag's value.
        given: String,
        /// What is wrong.
        why: String,
    },
    /// A bad or missing token.
    #[error("--token: {0}")]
    Token(String),
    /// `--kernels` names a set this CPU cannot run.
    #[error("--kernels {set}: this CPU lacks {feature}; use --kernels portable (or auto)")]
    Kernels {
        /// The set asked for.
        set: KernelSet,
        /// The CPU feature it needs that this CPU lacks.
        feature: &'static str,
    },
    /// `--listen` is not an address.
    #[error("--listen {value:?}: {why}")]
    Listen {
        /// The value given.
        value: String,
        /// What is wrong.
        why: String,
    },
    /// A malformed `--eta-schedule` or `--monitor`.
    #[error("--{flag} {given:?}: {why}")]
    Malformed {
        /// Flag name.
        flag: &'static str,
        /// The flag's value.
        given: String,
        /// What is wrong.
        why: String,
    },
    /// Flags that each parse but do not go together, or a model that does
    /// not fit the run (named in the message).
    #[error("{0}")]
    Usage(String),
    /// `--dashboard` does not parse or resolve.
    #[error("--dashboard {value}: expected IP:PORT or HOST:PORT ({why})")]
    Dashboard {
        /// The flag's value.
        value: String,
        /// Why.
        why: String,
    },
    /// A file a flag names could not be read.
    #[error("reading {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The checkpoint to resume cannot be read or does not fit the flags.
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    /// A model file (`--init`) cannot be read.
    #[error(transparent)]
    Model(#[from] common::model_file::ModelFileError),
    /// A model file holds a network that does not fit MNIST.
    #[error("{}: layer sizes {sizes:?} {why}", path.display())]
    ModelShape {
        /// The file.
        path: PathBuf,
        /// Its layer sizes.
        sizes: Vec<usize>,
        /// What they should be.
        why: String,
    },
    /// A numeric flag out of range.
    #[error("--{flag} {value}: {why}")]
    Range {
        /// Flag name.
        flag: &'static str,
        /// The value given.
        value: String,
        /// The accepted range.
        why: &'static str,
    },
}

/// A validated run configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// What to train.
    pub plan: TrainingPlan,
    /// Workers to wait for before training starts.
    pub workers: usize,
    /// How long to wait for a worker when none is left mid-run.
    pub wait_timeout: Duration,
    /// How long a worker may take for a shard before its shards go to others.
    pub shard_timeout: Duration,
    /// When a late shard gets a backup copy on an idle worker.
    pub backup: crate::pool::backup::BackupPolicy,
    /// Fraction of shards the coordinator recomputes and compares.
    pub audit_rate: f64,
    /// Shards of at most this many samples send their first layer's error (0: none do).
    pub first_errors_up_to: usize,
    /// HTTP/2 keepalive interval; the ping timeout is twice this.
    pub keepalive: Duration,
    /// Where and how often to checkpoint, if at all.
    pub checkpoint: Option<Checkpointing>,
    /// The checkpoint to continue from, loaded and checked against the plan.
    pub resume: Option<Checkpoint>,
    /// The network to start from instead of the seed's (`--init`), loaded.
    pub init: Option<common::Network>,
    /// The token workers must present, if any.
    pub token: Option<Token>,
    /// Certificate chain and key to serve TLS with, read.
    pub tls: Option<TlsPem>,
}

impl Config {
    /// The server configuration of `coordinator train` given no flags: the
    /// CLI's defaults (and no token, whatever `DDP_TOKEN` holds), for
    /// embedding the server and for tests, so neither drifts from the CLI.
    ///
    /// # Panics
    /// Never: the defaults parse and validate (a unit test checks it).
    pub fn cli_defaults() -> Config {
        let args = <Args as clap::Parser>::try_parse_from(["coordinator"]).expect("no flags parse");
        Config {
            token: None,
            ..args.validate().expect("the defaults are valid").config
        }
    }
}

/// A TLS identity as PEM bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsPem {
    /// Certificate chain, PEM.
    pub cert: Vec<u8>,
    /// Private key, PEM.
    pub key: Vec<u8>,
}

impl std::fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsPem(<key redacted>)")
    }
}

/// The book's runs, by name (`--preset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// Chapter 1, network.py: quadratic cost, N(0,1) init, [784,30,10], eta 3.0, 30 epochs (95.42% in the book).
    #[value(name = "network.py")]
    NetworkPy,
    /// Chapter 3, cross-entropy: N(0,1) init, [784,30,10], eta 0.5, 30 epochs (95.49%).
    #[value(name = "ch3-xent")]
    Ch3Xent,
    /// Chapter 3, L2: cross-entropy, scaled init, lambda 5, [784,30,10], eta 0.5, 30 epochs (96.49%).
    #[value(name = "ch3-l2")]
    Ch3L2,
    /// Chapter 3, 100 hidden: cross-entropy, scaled init, lambda 5, [784,100,10], eta 0.1, 60 epochs (98.04% validation).
    #[value(name = "ch3-98")]
    Ch398,
    /// ch3-98 with --early-stop 10 and --eta-schedule halve:10:128.
    #[value(name = "ch3-98-stop")]
    Ch398Stop,
    /// Chapter 6: fc100 (sigmoid), softmax10, eta 0.1, 60 epochs (97.80%).
    #[value(name = "ch6-fc")]
    Ch6Fc,
    /// Chapter 6: conv20x5, pool2, fc100, softmax10, eta 0.1, 60 epochs (98.78%).
    #[value(name = "ch6-conv")]
    Ch6Conv,
    /// Chapter 6: ch6-conv plus conv40x5, pool2 (99.06%).
    #[value(name = "ch6-conv2")]
    Ch6Conv2,
    /// Chapter 6: ch6-conv2 with ReLU, eta 0.03, lambda 0.1 (99.23%).
    #[value(name = "ch6-relu")]
    Ch6Relu,
    /// Chapter 6: ch6-relu on the expanded data (99.37%).
    #[value(name = "ch6-expanded")]
    Ch6Expanded,
    /// Chapter 6: ch6-expanded's convs, fc1000 twice and softmax10, each with
    /// dropout 0.5 on its input, 40 epochs (99.60%).
    #[value(name = "ch6-dropout")]
    Ch6Dropout,
}

/// The values a preset sets.
#[derive(Debug, Clone, PartialEq)]
pub struct PresetValues {
    /// `--sizes`.
    pub sizes: &'static str,
    /// `--epochs`.
    pub epochs: usize,
    /// `--eta`.
    pub eta: f32,
    /// `--cost`.
    pub cost: Cost,
    /// `--init-weights`.
    pub init: Init,
    /// `--lambda`.
    pub lambda: f32,
    /// `--early-stop`.
    pub early_stop: Option<usize>,
    /// `--eta-schedule`.
    pub eta_schedule: Option<&'static str>,
    /// `--net` (chapter 6), instead of `sizes`.
    pub net: Option<&'static str>,
    /// `--expand-data`.
    pub expand_data: bool,
}

impl Preset {
    /// What the preset sets; [`Preset::NetworkPy`] is the flags' defaults.
    pub fn values(self) -> PresetValues {
        let chapter1 = PresetValues {
            sizes: "784,30,10",
            epochs: 30,
            eta: 3.0,
            cost: Cost::Quadratic,
            init: Init::Large,
            lambda: 0.0,
            early_stop: None,
            eta_schedule: None,
            net: None,
            expand_data: false,
        };
        let ch6 = |net: &'static str, eta: f32, lambda: f32, epochs: usize, expand_data: bool| {
            PresetValues {
                net: Some(net),
                eta,
                lambda,
                epochs,
                expand_data,
                ..chapter1.clone()
            }
        };
        const CONV2_RELU: &str = "conv20x5:relu,pool2,conv40x5:relu,pool2,fc100:relu,softmax10";
        let l2 = PresetValues {
            eta: 0.5,
            cost: Cost::CrossEntropy,
            init: Init::Scaled,
            lambda: 5.0,
            ..chapter1.clone()
        };
        let hundred = PresetValues {
            sizes: "784,100,10",
            epochs: 60,
            eta: 0.1,
            ..l2.clone()
        };
        match self {
            Preset::NetworkPy => chapter1,
            Preset::Ch3Xent => PresetValues {
                eta: 0.5,
                cost: Cost::CrossEntropy,
                ..chapter1
            },
            Preset::Ch3L2 => l2,
            Preset::Ch398 => hundred,
            Preset::Ch398Stop => PresetValues {
                early_stop: Some(10),
                eta_schedule: Some("halve:10:128"),
                ..hundred
            },
            Preset::Ch6Fc => ch6("fc100,softmax10", 0.1, 0.0, 60, false),
            Preset::Ch6Conv => ch6("conv20x5,pool2,fc100,softmax10", 0.1, 0.0, 60, false),
            Preset::Ch6Conv2 => ch6("conv20x5,pool2,conv40x5,pool2,fc100,softmax10", 0.1, 0.0, 60, false),
            Preset::Ch6Relu => ch6(CONV2_RELU, 0.03, 0.1, 60, false),
            Preset::Ch6Expanded => ch6(CONV2_RELU, 0.03, 0.1, 60, true),
            Preset::Ch6Dropout => ch6(
                "conv20x5:relu,pool2,conv40x5:relu,pool2,fc1000:relu:dropout=0.5,fc1000:relu:dropout=0.5,softmax10:dropout=0.5",
                0.03, 0.1, 40, true,
            ),
        }
    }

    /// The flags the preset stands for, as a user would type them.
    pub fn flags(self) -> String {
        crate::settings::preset_flags(&self.plan())
    }

    /// The plan's settings the preset sets, over the defaults.
    fn plan(self) -> TrainingPlan {
        let v = self.values();
        TrainingPlan {
            sizes: parse_sizes(v.sizes).expect("presets' sizes parse"),
            net: v.net.map(|n| parse_net(n).expect("presets' nets parse")),
            expand_data: v.expand_data,
            epochs: v.epochs,
            eta: v.eta,
            cost: v.cost,
            init: v.init,
            lambda: v.lambda,
            early_stop: v.early_stop,
            eta_schedule: v
                .eta_schedule
                .map(|s| s.parse().expect("presets' schedules parse")),
            ..TrainingPlan::default()
        }
    }
}

/// Parses `--cost`.
fn parse_cost(s: &str) -> Result<Cost, String> {
    Cost::from_name(s).ok_or_else(|| format!("{s:?} is not a cost; use quadratic or cross-entropy"))
}

/// `--kernels`: a kernel set, or the fastest this machine has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelChoice {
    /// This machine's fastest set ([`KernelSet::best`]).
    Auto,
    /// Exactly this set.
    Set(KernelSet),
}

impl KernelChoice {
    /// The set this choice means on this machine.
    ///
    /// # Errors
    /// [`ConfigError::Kernels`] if this CPU cannot run the set chosen.
    pub fn resolve(self) -> Result<KernelSet, ConfigError> {
        match self {
            KernelChoice::Auto => Ok(KernelSet::best()),
            KernelChoice::Set(set) => match set.missing_feature() {
                None => Ok(set),
                Some(feature) => Err(ConfigError::Kernels { set, feature }),
            },
        }
    }
}

/// Parses `--kernels`.
fn parse_kernels(s: &str) -> Result<KernelChoice, String> {
    if s == "auto" {
        return Ok(KernelChoice::Auto);
    }
    KernelSet::from_name(s)
        .map(KernelChoice::Set)
        .ok_or_else(|| format!("{s:?} is not a kernel set; use auto, portable or avx2"))
}

/// Parses `--init-weights`.
fn parse_init(s: &str) -> Result<Init, String> {
    Init::from_name(s).ok_or_else(|| format!("{s:?} is not an initialiser; use large or scaled"))
}

/// Parses `--monitor`: `all`, `none`, or a comma-separated list.
///
/// # Errors
/// [`ConfigError::Malformed`] naming the unknown item.
pub fn parse_monitor(given: &str) -> Result<Monitor, ConfigError> {
    let none = Monitor {
        training_cost: false,
        training_accuracy: false,
        validation_cost: false,
    };
    match given.trim() {
        "all" => return Ok(Monitor::default()),
        "none" => return Ok(none),
        _ => {}
    }
    let mut m = none;
    for item in given.split(',').map(str::trim) {
        match item {
            "training-cost" => m.training_cost = true,
            "training-accuracy" => m.training_accuracy = true,
            "validation-cost" => m.validation_cost = true,
            other => {
                return Err(ConfigError::Malformed {
                    flag: "monitor",
                    given: given.to_string(),
                    why: format!("{other:?} is not one of training-cost, training-accuracy, validation-cost (or all, none)"),
                })
            }
        }
    }
    Ok(m)
}

/// Parses `--net` for MNIST's 1×28×28 images and 10 classes.
///
/// # Errors
/// [`ConfigError::Net`] naming the layer.
pub fn parse_net(given: &str) -> Result<NetSpec, ConfigError> {
    crate::settings::parse_mnist_net(given).map_err(ConfigError::Net)
}

/// Parses `"784,30,10"` into layer sizes fit for MNIST.
///
/// # Errors
/// [`ConfigError::Sizes`] saying what is wrong.
pub fn parse_sizes(given: &str) -> Result<Vec<usize>, ConfigError> {
    let err = |why: String| ConfigError::Sizes {
        given: given.to_string(),
        why,
    };
    let sizes = given
        .split(',')
        .map(|s| {
            s.trim()
                .parse::<usize>()
                .map_err(|e| err(format!("{s:?} is not a layer size ({e})")))
        })
        .collect::<Result<Vec<usize>, _>>()?;
    check_sizes(&sizes).map_err(err)?;
    Ok(sizes)
}

pub use crate::settings::check_sizes;

/// The longest timeout a flag takes (a year): longer ones are surely typos,
/// and would overflow a clock's deadline arithmetic.
const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// A `ConfigError::Range` for `--flag value`.
fn range(flag: &'static str, value: &dyn ToString, why: &'static str) -> ConfigError {
    ConfigError::Range {
        flag,
        value: value.to_string(),
        why,
    }
}

/// Checks that `seconds` is a number of seconds from 0 (or above it, if
/// `positive`) to a year.
fn seconds(flag: &'static str, value: f64, positive: bool) -> Result<Duration, ConfigError> {
    let ok = if positive {
        value > 0.0 && value <= MAX_SECONDS
    } else {
        (0.0..=MAX_SECONDS).contains(&value)
    };
    match (ok, positive) {
        (true, _) => Ok(Duration::from_secs_f64(value)),
        (false, true) => Err(range(
            flag,
            &value,
            "must be a number of seconds > 0, at most a year",
        )),
        (false, false) => Err(range(
            flag,
            &value,
            "must be a number of seconds from 0 to a year",
        )),
    }
}

impl Args {
    /// The address `--listen` names, resolved (a host name resolves to its
    /// first address), or its default.
    ///
    /// # Errors
    /// [`ConfigError::Listen`] if it is not HOST:PORT or does not resolve.
    pub fn listen_addr(&self) -> Result<ListenAddr, ConfigError> {
        match &self.cluster.listen {
            Some(value) => ListenAddr::parse(value).map_err(|why| ConfigError::Listen {
                value: value.clone(),
                why,
            }),
            // Spawned workers share this host: a private Unix socket, unless
            // they must speak TLS (which tonic does not offer over Unix sockets).
            None if self.cluster.spawn_workers && self.security.tls_cert.is_none() => {
                Ok(ListenAddr::private_socket())
            }
            None => Ok(ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], 50051)))),
        }
    }

    /// Checks every flag, reads the files they name (TLS material, the
    /// checkpoint to resume, the model to start from) and builds the run's
    /// spec: after this, nothing reads a flag.
    ///
    /// # Errors
    /// The first [`ConfigError`] found.
    pub fn validate(&self) -> Result<RunSpec, ConfigError> {
        let plan = self.plan()?;
        let mut config = self.server_config(plan)?;
        let mode = self.mode()?;
        let watch = self.watch()?;
        if matches!(mode, Mode::Local) && (watch.dashboard.is_some() || watch.trace.is_some()) {
            return Err(ConfigError::Usage(
                "--dashboard and --trace watch a cluster run; drop --local".into(),
            ));
        }
        let tls = &self.security;
        if let (Some(cert), Some(key)) = (&tls.tls_cert, &tls.tls_key) {
            config.tls = Some(TlsPem {
                cert: read_small(cert)?,
                key: read_small(key)?,
            });
        }
        let resumed_from = self.resume_path();
        if let Some(path) = &resumed_from {
            let checkpoint = crate::checkpoint::load(path)?;
            checkpoint.check_matches(path, &config.plan)?;
            config.resume = Some(checkpoint);
        }
        if let Some(path) = &self.model.init {
            config.init = Some(load_init(path, &config.plan)?);
        }
        let outputs = self.outputs(&config.plan);
        Ok(RunSpec {
            config,
            preset: self.model.preset,
            mode,
            watch,
            outputs,
            data_dir: self.model.data_dir.clone(),
            resumed_from,
            init_from: self.model.init.clone(),
        })
    }

    /// `--resume`, or with `--auto-resume` the `--checkpoint` if it exists.
    fn resume_path(&self) -> Option<PathBuf> {
        let faults = &self.faults;
        let auto = faults
            .checkpoint
            .as_ref()
            .filter(|p| faults.auto_resume && p.exists());
        faults.resume.as_ref().or(auto).cloned()
    }

    /// The training plan: the model and training flags over the preset's.
    fn plan(&self) -> Result<TrainingPlan, ConfigError> {
        let (m, t) = (&self.model, &self.training);
        let preset = m.preset.unwrap_or(Preset::NetworkPy).values();
        let net = match (&m.sizes, &m.net) {
            (Some(_), _) => None,
            (None, Some(text)) => Some(parse_net(text)?),
            (None, None) => preset.net.map(parse_net).transpose()?,
        };
        let sizes = match &net {
            Some(spec) => vec![spec.input.len(), spec.classes()],
            None => parse_sizes(m.sizes.as_deref().unwrap_or(preset.sizes))?,
        };
        let early_stop = match t.early_stop {
            // Negative counts fail here; zero fails in `check_plan`, as in a record.
            Some(n) if n < 0 => {
                return Err(range("early-stop", &n, "must be at least 1 epoch"));
            }
            Some(n) => Some(n as usize),
            None => preset.early_stop,
        };
        let schedule = t.eta_schedule.as_deref().or(preset.eta_schedule);
        let eta_schedule = schedule
            .map(|s| {
                s.parse::<EtaSchedule>()
                    .map_err(|why| ConfigError::Malformed {
                        flag: "eta-schedule",
                        given: s.to_string(),
                        why,
                    })
            })
            .transpose()?;
        let plan = TrainingPlan {
            sizes,
            net,
            expand_data: m.expand_data || preset.expand_data,
            epochs: t.epochs.unwrap_or(preset.epochs),
            batch_size: t.batch_size,
            eta: t.eta.unwrap_or(preset.eta),
            shards: t.shards.unwrap_or(self.cluster.workers),
            seed: m.seed,
            cost: t.cost.unwrap_or(preset.cost),
            init: m.init_weights.unwrap_or(preset.init),
            lambda: t.lambda.unwrap_or(preset.lambda),
            momentum: t.momentum.unwrap_or(0.0),
            early_stop,
            eta_schedule,
            monitor: parse_monitor(&t.monitor)?,
            kernels: t.kernels.resolve()?,
            record_every: self.trust.record_every,
        };
        if let Some(n) = self
            .cluster
            .threads
            .filter(|n| !(1..=MAX_THREADS).contains(n))
        {
            return Err(range("threads", &n, "must be 1..=256"));
        }
        let workers = self.cluster.workers;
        if workers == 0 || workers > 1024 {
            return Err(range("workers", &workers, "must be 1..=1024"));
        }
        check_plan(&plan)?;
        Ok(plan)
    }

    /// What the server needs besides the plan: workers, timeouts, backups,
    /// audits and checkpoints, with the token. Files are read by the caller.
    fn server_config(&self, plan: TrainingPlan) -> Result<Config, ConfigError> {
        let (c, f, t) = (&self.cluster, &self.faults, &self.trust);
        let wait_timeout = seconds("wait-timeout", c.wait_timeout, false)?;
        let token = self
            .security
            .token
            .as_deref()
            .map(Token::new)
            .transpose()
            .map_err(|e| ConfigError::Token(e.to_string()))?;
        let listen = self.listen_addr()?;
        if token.is_none() && !listen.is_local() && !self.security.insecure_no_token && !c.local {
            return Err(ConfigError::Token(format!(
                "listening on {} (beyond loopback) needs a token (--token or DDP_TOKEN), or --insecure-no-token to accept anyone",
                c.listen.as_deref().unwrap_or_default()
            )));
        }
        if f.checkpoint_every == Some(0) {
            return Err(range("checkpoint-every", &0, "must be at least 1"));
        }
        let keepalive = seconds("keepalive", c.keepalive, true)?;
        if !(0.0..=1.0).contains(&t.audit_rate) {
            return Err(range(
                "audit-rate",
                &t.audit_rate,
                "must be a fraction from 0 to 1",
            ));
        }
        let shard_timeout = seconds("shard-timeout", f.shard_timeout, true)?;
        if !(f.backup_factor.is_finite() && (0.0..=1e6).contains(&f.backup_factor)) {
            return Err(range(
                "backup-factor",
                &f.backup_factor,
                "must be 0 (off) or a positive multiple of the p99, at most 1e6",
            ));
        }
        let floor = seconds("backup-floor", f.backup_floor, false)?;
        Ok(Config {
            plan,
            workers: c.workers,
            wait_timeout,
            shard_timeout,
            backup: crate::pool::backup::BackupPolicy {
                factor: f.backup_factor,
                floor,
            },
            audit_rate: t.audit_rate,
            first_errors_up_to: c.first_errors_up_to,
            keepalive,
            checkpoint: f.checkpoint.clone().map(|path| Checkpointing {
                path,
                every: f.checkpoint_every,
            }),
            resume: None,
            init: None,
            token,
            tls: None,
        })
    }

    /// `--local`, or the address to serve on and the workers to spawn.
    fn mode(&self) -> Result<Mode, ConfigError> {
        if self.cluster.local {
            return Ok(Mode::Local);
        }
        let security = &self.security;
        Ok(Mode::Serve {
            listen: self.listen_addr()?,
            spawn: self.cluster.spawn_workers.then(|| Credentials {
                token: security.token.clone(),
                tls: security
                    .tls_cert
                    .clone()
                    .map(|cert| (cert, security.tls_domain.clone())),
            }),
        })
    }

    /// The progress bar, the dashboard's address and the trace.
    fn watch(&self) -> Result<Watch, ConfigError> {
        let w = &self.watching;
        let dashboard = w
            .dashboard
            .as_deref()
            .map(parse_dashboard_addr)
            .transpose()?;
        Ok(Watch {
            progress: w.progress,
            dashboard,
            dashboard_hosts: w.dashboard_host.clone(),
            insecure_no_token: self.security.insecure_no_token,
            trace: w.trace.clone().map(|path| (path, w.trace_steps.clone())),
        })
    }

    /// The files the run writes.
    fn outputs(&self, plan: &TrainingPlan) -> Outputs {
        let o = &self.outputs;
        let best = o.best_out.clone().or_else(|| {
            (plan.early_stop.is_some() || plan.eta_schedule.is_some()).then(|| {
                let ext = o.out.extension().map_or("best".to_string(), |e| {
                    format!("best.{}", e.to_string_lossy())
                });
                o.out.with_extension(ext)
            })
        });
        Outputs {
            model: o.out.clone(),
            best,
            record: self
                .trust
                .record
                .clone()
                .unwrap_or_else(|| o.out.with_extension("record.json")),
            metrics: o.metrics.clone(),
            plot: o.plot.clone(),
        }
    }
}

/// A plan setting out of the range the coordinator accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutOfRange {
    /// The setting's flag, without the dashes (`batch-size`).
    pub flag: &'static str,
    /// The value given.
    pub value: String,
    /// The accepted range.
    pub why: &'static str,
}

/// The one place the ranges of a plan's settings are checked, whoever gives
/// the plan: the flags (`validate`) and a run record (`verify`, so that a
/// crafted record cannot make a replay allocate or loop beyond what a run
/// could).
///
/// # Errors
/// The first setting out of range.
pub fn check_plan(plan: &TrainingPlan) -> Result<(), OutOfRange> {
    let (eta, lambda, momentum) = (plan.eta, plan.lambda, plan.momentum);
    let checks: [(&'static str, String, bool, &'static str); 8] = [
        (
            "eta",
            eta.to_string(),
            eta.is_finite() && eta > 0.0,
            "must be finite and > 0",
        ),
        (
            "lambda",
            lambda.to_string(),
            lambda.is_finite() && lambda >= 0.0,
            "must be finite and >= 0",
        ),
        (
            "momentum",
            momentum.to_string(),
            momentum.is_finite() && (0.0..1.0).contains(&momentum),
            "must be in [0, 1)",
        ),
        (
            "early-stop",
            plan.early_stop.map_or(String::new(), |n| n.to_string()),
            plan.early_stop != Some(0),
            "must be at least 1 epoch",
        ),
        (
            "batch-size",
            plan.batch_size.to_string(),
            plan.batch_size > 0,
            "must be at least 1",
        ),
        (
            "epochs",
            plan.epochs.to_string(),
            (1..=1_000_000).contains(&plan.epochs),
            "must be 1..=1000000",
        ),
        (
            "shards",
            plan.shards.to_string(),
            (1..=4096).contains(&plan.shards),
            "must be 1..=4096",
        ),
        (
            "record-every",
            plan.record_every.map_or(String::new(), |n| n.to_string()),
            plan.record_every != Some(0),
            "must be at least 1",
        ),
    ];
    match checks.into_iter().find(|(_, _, ok, _)| !ok) {
        None => Ok(()),
        Some((flag, value, _, why)) => Err(OutOfRange { flag, value, why }),
    }
}

impl From<OutOfRange> for ConfigError {
    fn from(e: OutOfRange) -> Self {
        ConfigError::Range {
            flag: e.flag,
            value: e.value,
            why: e.why,
        }
    }
}

/// Reads a PEM file (a regular file of at most 64 MiB).
fn read_small(path: &Path) -> Result<Vec<u8>, ConfigError> {
    common::regular_file::read(path, common::regular_file::MAX_SMALL_FILE).map_err(|source| {
        ConfigError::Read {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Loads a saved model that fits MNIST (784 inputs, 10 outputs).
///
/// # Errors
/// [`ConfigError::Model`] if it cannot be read, [`ConfigError::ModelShape`]
/// if it does not fit MNIST.
pub fn load_mnist_model(path: &Path) -> Result<common::Network, ConfigError> {
    let network = common::model_file::load(path)?;
    let sizes = &network.sizes;
    if sizes.first() != Some(&IMAGE_SIZE) || sizes.last() != Some(&CLASSES) {
        return Err(ConfigError::ModelShape {
            path: path.to_path_buf(),
            sizes: sizes.clone(),
            why: "do not fit MNIST (784 inputs, 10 outputs)".into(),
        });
    }
    Ok(network)
}

/// Loads `--init`'s model and checks it has the plan's layers.
fn load_init(path: &Path, plan: &TrainingPlan) -> Result<common::Network, ConfigError> {
    let network = load_mnist_model(path)?;
    if network.sizes != plan.sizes || network.net != plan.net {
        let model = match &network.net {
            Some(net) => format!("the net {net}"),
            None => format!("layer sizes {:?}", network.sizes),
        };
        let run = match &plan.net {
            Some(net) => format!("--net is {net}"),
            None => format!("--sizes is {:?}", plan.sizes),
        };
        return Err(ConfigError::Usage(format!(
            "--init {}: the model has {model}, but {run}",
            path.display()
        )));
    }
    Ok(network)
}

/// Resolves `--dashboard`'s value.
///
/// # Errors
/// [`ConfigError::Dashboard`].
pub fn parse_dashboard_addr(value: &str) -> Result<SocketAddr, ConfigError> {
    use std::net::ToSocketAddrs;
    let err = |why: String| ConfigError::Dashboard {
        value: value.to_string(),
        why,
    };
    value
        .to_socket_addrs()
        .map_err(|e| err(e.to_string()))?
        .next()
        .ok_or_else(|| err("the host name has no address".into()))
}

/// A `coordinator train` run, resolved from its flags by [`Args::validate`]:
/// what the server needs ([`Config`]) and what the application around it
/// does (where it runs, what it shows, which files it writes).
#[derive(Debug)]
pub struct RunSpec {
    /// What the server needs, with the checkpoint, model and TLS material read.
    pub config: Config,
    /// The preset named, if any (its flags are printed at the start).
    pub preset: Option<Preset>,
    /// In this process, or served to workers.
    pub mode: Mode,
    /// The progress bar, the dashboard and the trace.
    pub watch: Watch,
    /// The files the run writes.
    pub outputs: Outputs,
    /// `--data-dir` (`None`: `$MNIST_DATA_DIR` or the cache).
    pub data_dir: Option<PathBuf>,
    /// The checkpoint the run resumes from (`--resume`, or `--auto-resume`'s).
    pub resumed_from: Option<PathBuf>,
    /// The model file `--init` names (its network is in `config.init`).
    pub init_from: Option<PathBuf>,
}

/// Where a run trains.
#[derive(Debug, Clone)]
pub enum Mode {
    /// `--local`: in this process, with no gRPC and no workers.
    Local,
    /// A served cluster.
    Serve {
        /// The address to serve on.
        listen: ListenAddr,
        /// `--spawn-workers`: start `workers` local workers with these credentials.
        spawn: Option<Credentials>,
    },
}

/// How spawned workers reach a coordinator that asks for a token or TLS.
/// The token goes in the children's environment (`DDP_TOKEN`), never on
/// their command line, where any local user could read it.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// The run's token.
    pub token: Option<String>,
    /// The coordinator's certificate (PEM), trusted by the workers, and the
    /// name they check it for.
    pub tls: Option<(PathBuf, String)>,
}

/// What watches the run.
#[derive(Debug, Clone)]
pub struct Watch {
    /// `--progress`.
    pub progress: BarMode,
    /// The dashboard's address, resolved.
    pub dashboard: Option<SocketAddr>,
    /// `--dashboard-host`: more names the dashboard answers to.
    pub dashboard_hosts: Vec<String>,
    /// `--insecure-no-token`: the dashboard beyond loopback needs no token.
    pub insecure_no_token: bool,
    /// `--trace` and `--trace-steps`.
    pub trace: Option<(PathBuf, std::ops::Range<u64>)>,
}

/// The files a run writes.
#[derive(Debug, Clone)]
pub struct Outputs {
    /// `--out`: the trained model.
    pub model: PathBuf,
    /// The best validation epoch's model: `--best-out`, or with early
    /// stopping or a schedule `--out` with `.best` before its extension.
    pub best: Option<PathBuf>,
    /// The run record: `--record`, or `--out` with `.record.json`.
    pub record: PathBuf,
    /// `--metrics`.
    pub metrics: Option<PathBuf>,
    /// `--plot`.
    pub plot: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("coordinator").chain(extra.iter().copied())).unwrap()
    }

    /// One runtime thread for small steps, one per core for large ones, and
    /// `--threads` wins; flags that do not validate give one (and the run
    /// reports them).
    #[test]
    fn runtime_threads_follow_the_step_s_work() {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let cases: [(&[&str], usize); 7] = [
            (&[], 1),
            (&["--batch-size", "100"], 1),
            (&["--batch-size", "1000"], cores),
            (&["--preset", "ch3-98", "--batch-size", "1000"], cores),
            (&["--batch-size", "1000", "--local"], 1),
            (&["--batch-size", "1000", "--threads", "1"], 1),
            (&["--sizes", "784,x,10", "--batch-size", "1000"], 1),
        ];
        for (flags, want) in cases {
            assert_eq!(args(flags).runtime_threads(), want, "{flags:?}");
        }
        assert_eq!(args(&["--threads", "3"]).runtime_threads(), 3);
        assert_eq!(args(&["--threads", "100000"]).runtime_threads(), 1);
    }

    #[test]
    fn defaults_are_nielsens_run() {
        let c = args(&["--workers", "4"]).validate().unwrap().config;
        assert_eq!(c.plan.sizes, vec![784, 30, 10]);
        assert_eq!(
            (
                c.plan.epochs,
                c.plan.batch_size,
                c.plan.eta,
                c.plan.shards,
                c.workers
            ),
            (30, 10, 3.0, 4, 4)
        );
    }

    #[test]
    fn defaults_are_network_py_exactly() {
        let c = args(&[]).validate().unwrap().config;
        assert_eq!(
            c.plan,
            TrainingPlan {
                shards: 1,
                ..TrainingPlan::default()
            }
        );
        assert_eq!(c.plan.cost, Cost::Quadratic);
        assert_eq!(c.plan.init, Init::Large);
        assert_eq!((c.plan.lambda, c.plan.momentum), (0.0, 0.0));
        assert_eq!(
            args(&["--preset", "network.py"])
                .validate()
                .unwrap()
                .config
                .plan,
            c.plan
        );
    }

    #[test]
    fn presets_set_the_books_runs_and_explicit_flags_win() {
        let c = args(&["--preset", "ch3-98-stop"])
            .validate()
            .unwrap()
            .config
            .plan;
        assert_eq!(c.sizes, vec![784, 100, 10]);
        assert_eq!((c.epochs, c.eta, c.lambda), (60, 0.1, 5.0));
        assert_eq!((c.cost, c.init), (Cost::CrossEntropy, Init::Scaled));
        assert_eq!(c.early_stop, Some(10));
        assert_eq!(c.eta_schedule, Some("halve:10:128".parse().unwrap()));
        let c = args(&[
            "--preset",
            "ch3-l2",
            "--lambda",
            "0.1",
            "--epochs",
            "3",
            "--init-weights",
            "large",
        ])
        .validate()
        .unwrap()
        .config
        .plan;
        assert_eq!((c.epochs, c.eta, c.lambda), (3, 0.5, 0.1));
        assert_eq!((c.cost, c.init), (Cost::CrossEntropy, Init::Large));
        assert_eq!(
            Preset::Ch3L2.flags(),
            "--sizes 784,30,10 --epochs 30 --eta 0.5 --cost cross-entropy --init-weights scaled --lambda 5"
        );
        let unknown = Args::try_parse_from(["coordinator", "--preset", "ch9"]).unwrap_err();
        assert!(unknown.to_string().contains("ch3-xent"), "{unknown}");
        let bad_cost = Args::try_parse_from(["coordinator", "--cost", "hinge"]).unwrap_err();
        assert!(
            bad_cost
                .to_string()
                .contains("use quadratic or cross-entropy"),
            "{bad_cost}"
        );
    }

    /// The flags each preset prints, as they were written by hand before
    /// the settings table.
    #[test]
    fn preset_flags_are_the_hand_written_ones() {
        for preset in <Preset as clap::ValueEnum>::value_variants() {
            let v = preset.values();
            let want = match v.net {
                Some(net) => {
                    let expand = if v.expand_data { " --expand-data" } else { "" };
                    format!(
                        "--net {net} --epochs {} --eta {} --lambda {}{expand}",
                        v.epochs, v.eta, v.lambda
                    )
                }
                None => {
                    let mut flags = format!(
                        "--sizes {} --epochs {} --eta {} --cost {} --init-weights {} --lambda {}",
                        v.sizes, v.epochs, v.eta, v.cost, v.init, v.lambda
                    );
                    if let Some(n) = v.early_stop {
                        flags.push_str(&format!(" --early-stop {n}"));
                    }
                    if let Some(s) = v.eta_schedule {
                        flags.push_str(&format!(" --eta-schedule {s}"));
                    }
                    flags
                }
            };
            assert_eq!(preset.flags(), want, "{preset:?}");
        }
    }

    /// The defaults parse and validate, and the test harness's config is theirs.
    #[test]
    fn cli_defaults_validate() {
        let c = Config::cli_defaults();
        assert_eq!(c.workers, 1);
        assert_eq!(c.backup, crate::pool::backup::BackupPolicy::DEFAULT);
        assert_eq!(c.keepalive, Duration::from_secs(10));
    }

    #[test]
    fn monitor_lists_parse() {
        let m = parse_monitor("training-cost, validation-cost").unwrap();
        assert!(m.training_cost && m.validation_cost && !m.training_accuracy);
        assert_eq!(parse_monitor("all").unwrap(), Monitor::default());
        assert!(!parse_monitor("none").unwrap().training_cost);
    }

    #[test]
    fn bad_flags_are_named() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--sizes", "100,30,10"],
                "--sizes \"100,30,10\": MNIST needs 784 inputs and 10 outputs",
            ),
            (&["--sizes", "784,x,10"], "\"x\" is not a layer size"),
            (
                &["--sizes", "784"],
                "need at least an input and an output layer",
            ),
            (&["--sizes", "784,0,10"], "must be positive"),
            (&["--eta", "NaN"], "--eta NaN: must be finite and > 0"),
            (&["--eta", "-1"], "--eta -1: must be finite and > 0"),
            (&["--batch-size", "0"], "--batch-size 0: must be at least 1"),
            (&["--threads", "0"], "--threads 0: must be 1..=256"),
            (
                &["--threads", "100000"],
                "--threads 100000: must be 1..=256",
            ),
            (&["--workers", "0"], "--workers 0"),
            (&["--shards", "0"], "--shards 0"),
            (&["--epochs", "0"], "--epochs 0"),
            (
                &["--listen", "0.0.0.0:50051"],
                "beyond loopback) needs a token",
            ),
            (&["--token", ""], "--token: the token is empty"),
            (&["--lambda", "-1"], "--lambda -1: must be finite and >= 0"),
            (
                &["--lambda", "inf"],
                "--lambda inf: must be finite and >= 0",
            ),
            (&["--momentum", "1"], "--momentum 1: must be in [0, 1)"),
            (
                &["--momentum", "-0.5"],
                "--momentum -0.5: must be in [0, 1)",
            ),
            (
                &["--early-stop", "0"],
                "--early-stop 0: must be at least 1 epoch",
            ),
            (
                &["--eta-schedule", "halve:10"],
                "--eta-schedule \"halve:10\": expected halve:N:R",
            ),
            (
                &["--eta-schedule", "halve:0:128"],
                "N must be at least 1 epoch",
            ),
            (
                &["--eta-schedule", "halve:10:1"],
                "R 1 must be a finite number > 1",
            ),
            (
                &["--eta-schedule", "third:10:128"],
                "unknown schedule \"third\"",
            ),
            (
                &["--monitor", "training-cost,speed"],
                "\"speed\" is not one of",
            ),
        ];
        for (i, (flags, want)) in cases.iter().enumerate() {
            let err = args(flags).validate().unwrap_err().to_string();
            assert!(err.contains(want), "case {i} {flags:?}: {err}");
        }
    }
}
