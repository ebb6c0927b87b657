//! Command-line flags and the validated run configuration (checked once, at startup).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::dataset::{CLASSES, IMAGE_SIZE};
use common::trainer::TrainingPlan;

use common::auth::Token;

use crate::checkpoint::Checkpoint;
use crate::training::Checkpointing;

/// Flags of `coordinator train` (also accepted with no subcommand).
/// Expected outcome of the defaults with `--workers 4`: 30 epochs of
/// `[784,30,10]`, batch 10, eta 3.0, about 95% test accuracy.
#[derive(Debug, Clone, clap::Parser)]
pub struct Args {
    /// Address to serve gRPC on: IP:PORT or HOST:PORT (`localhost:50051`).
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: String,
    /// Workers to wait for before training starts.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Logical shards per mini-batch, S (default: --workers). Results depend on S, not on the worker count.
    #[arg(long)]
    pub shards: Option<usize>,
    /// Layer sizes, comma-separated; must start with 784 and end with 10 for MNIST.
    #[arg(long, default_value = "784,30,10")]
    pub sizes: String,
    /// Training epochs.
    #[arg(long, default_value_t = 30)]
    pub epochs: usize,
    /// Mini-batch length.
    #[arg(long, default_value_t = 10)]
    pub batch_size: usize,
    /// Learning rate eta.
    #[arg(long, default_value_t = 3.0, allow_negative_numbers = true)]
    pub eta: f32,
    /// Seed of the initial weights and the epoch shuffles. (Like network.py's
    /// N(0,1) init, some seeds start slowly: seeds 1, 8, 10 are at 74-82% after
    /// one epoch where most are at 90-91%.)
    #[arg(long, default_value_t = 2)]
    pub seed: u64,
    /// Directory with the IDX files; MNIST is fetched into it when missing
    /// [default: $MNIST_DATA_DIR or ~/.cache/nielsen-ddp/mnist].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Where to save the trained model (safetensors).
    #[arg(long, default_value = "model.safetensors")]
    pub out: PathBuf,
    /// Start --workers local worker processes (the `worker` binary beside this one) and stop them at the end.
    #[arg(long)]
    pub spawn_workers: bool,
    /// Train in this process with no gRPC and no workers: the single-process
    /// reference trainer. With the same --seed and --shards it writes a model
    /// bitwise identical to a cluster run's.
    #[arg(long, conflicts_with = "spawn_workers")]
    pub local: bool,
    /// Seconds to wait for a replacement when no worker is left mid-run.
    #[arg(long, default_value_t = 60.0)]
    pub wait_timeout: f64,
    /// Checkpoint file, written atomically after every epoch, every
    /// --checkpoint-every steps, and when the run stops early (Ctrl-C, SIGTERM, no workers).
    #[arg(long, value_name = "PATH", conflicts_with = "local")]
    pub checkpoint: Option<PathBuf>,
    /// Also checkpoint every N steps.
    #[arg(long, value_name = "N", requires = "checkpoint")]
    pub checkpoint_every: Option<u64>,
    /// Continue the run saved in this checkpoint (same flags; --epochs may grow).
    /// The final weights are bitwise those of an uninterrupted run.
    #[arg(long, value_name = "PATH", conflicts_with = "local")]
    pub resume: Option<PathBuf>,
    /// Resume from --checkpoint when that file exists, start fresh when it
    /// does not: for restarts under a supervisor (Kubernetes, compose).
    #[arg(long, requires = "checkpoint", conflicts_with_all = ["resume", "init"])]
    pub auto_resume: bool,
    /// Start from the weights of this saved model (its sizes must match
    /// --sizes) instead of the seed's N(0,1) init; the seed still drives the shuffles.
    #[arg(long, value_name = "MODEL", conflicts_with = "resume")]
    pub init: Option<PathBuf>,
    /// Write one CSV row per epoch: accuracy, cost, time, throughput, step
    /// latency and its breakdown, workers, recomputed shards.
    #[arg(long, value_name = "CSV")]
    pub metrics: Option<PathBuf>,
    /// Draw test and validation accuracy per epoch as a PNG (rewritten after every epoch).
    #[arg(long, value_name = "PNG")]
    pub plot: Option<PathBuf>,
    /// Progress display: auto (a bar when stderr is a terminal), bar, or none.
    /// Per-epoch lines go to stdout either way.
    #[arg(long, value_enum, default_value_t = crate::ui::BarMode::Auto)]
    pub progress: crate::ui::BarMode,
    /// Shared secret workers must present (never logged). Required to listen
    /// on a non-loopback address unless --insecure-no-token.
    #[arg(long, env = "DDP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Allow listening beyond loopback without a token (anyone who can reach
    /// the port can then join the run).
    #[arg(long)]
    pub insecure_no_token: bool,
    /// Serve over TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// With --tls-cert and --spawn-workers: the name in the certificate that
    /// the spawned workers check (they trust --tls-cert itself).
    #[arg(long, value_name = "NAME", default_value = "localhost", requires = "tls_cert")]
    pub tls_domain: String,
    /// Seconds a worker may take for a shard before it is treated as dead and
    /// its shards are recomputed by the others (catches silent workers).
    #[arg(long, default_value_t = 30.0)]
    pub shard_timeout: f64,
    /// Seconds between HTTP/2 keepalive pings to each worker; a worker that
    /// does not answer within twice this is dropped (catches dead peers whose
    /// connection stays half-open).
    #[arg(long, default_value_t = 10.0)]
    pub keepalive: f64,
}

/// A flag value that cannot work, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
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
    /// `--listen` is not an address.
    #[error("--listen {value:?}: {why}")]
    Listen {
        /// The value given.
        value: String,
        /// What is wrong.
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
    /// HTTP/2 keepalive interval; the ping timeout is twice this.
    pub keepalive: Duration,
    /// Where and how often to checkpoint, if at all.
    pub checkpoint: Option<Checkpointing>,
    /// The checkpoint to continue from (loaded and checked by the caller).
    pub resume: Option<Checkpoint>,
    /// The network to start from instead of the seed's (loaded by the caller).
    pub init: Option<common::Network>,
    /// The token workers must present, if any.
    pub token: Option<Token>,
    /// Certificate chain and key to serve TLS with (loaded by the caller).
    pub tls: Option<TlsPem>,
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
    if sizes.len() < 2 {
        return Err(err("need at least an input and an output layer".into()));
    }
    if sizes.contains(&0) {
        return Err(err("layer sizes must be positive".into()));
    }
    if sizes[0] != IMAGE_SIZE || sizes[sizes.len() - 1] != CLASSES {
        return Err(err(format!(
            "MNIST needs {IMAGE_SIZE} inputs and {CLASSES} outputs, e.g. 784,30,10"
        )));
    }
    if common::network::checked_parameter_count(&sizes, common::wire::MAX_PARAMETERS).is_none() {
        return Err(err(format!(
            "more than {} parameters",
            common::wire::MAX_PARAMETERS
        )));
    }
    Ok(sizes)
}

/// The longest timeout a flag takes (a year): longer ones are surely typos,
/// and would overflow a clock's deadline arithmetic.
const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

impl Args {
    /// The address `--listen` names, resolved (a host name resolves to its
    /// first address).
    ///
    /// # Errors
    /// [`ConfigError::Listen`] if it is not HOST:PORT or does not resolve.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        use std::net::ToSocketAddrs;
        let unresolved = |why: String| ConfigError::Listen {
            value: self.listen.clone(),
            why,
        };
        self.listen
            .to_socket_addrs()
            .map_err(|e| unresolved(format!("expected IP:PORT or HOST:PORT ({e})")))?
            .next()
            .ok_or_else(|| unresolved("the host name has no address".into()))
    }

    /// Checks every flag and builds the run configuration.
    ///
    /// # Errors
    /// The first [`ConfigError`] found.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        let range = |flag, value: &dyn ToString, why| ConfigError::Range {
            flag,
            value: value.to_string(),
            why,
        };
        let sizes = parse_sizes(&self.sizes)?;
        if !(self.eta.is_finite() && self.eta > 0.0) {
            return Err(range("eta", &self.eta, "must be finite and > 0"));
        }
        if self.batch_size == 0 {
            return Err(range("batch-size", &self.batch_size, "must be at least 1"));
        }
        if self.epochs == 0 || self.epochs > 1_000_000 {
            return Err(range("epochs", &self.epochs, "must be 1..=1000000"));
        }
        if self.workers == 0 || self.workers > 1024 {
            return Err(range("workers", &self.workers, "must be 1..=1024"));
        }
        let shards = self.shards.unwrap_or(self.workers);
        if shards == 0 || shards > 4096 {
            return Err(range("shards", &shards, "must be 1..=4096"));
        }
        if !(0.0..=MAX_SECONDS).contains(&self.wait_timeout) {
            return Err(range(
                "wait-timeout",
                &self.wait_timeout,
                "must be a number of seconds from 0 to a year",
            ));
        }
        let token = self
            .token
            .as_deref()
            .map(Token::new)
            .transpose()
            .map_err(|e| ConfigError::Token(e.to_string()))?;
        let listen = self.listen_addr()?;
        if token.is_none()
            && !listen.ip().is_loopback()
            && !self.insecure_no_token
            && !self.local
        {
            return Err(ConfigError::Token(format!(
                "listening on {listen} (beyond loopback) needs a token (--token or DDP_TOKEN), or --insecure-no-token to accept anyone",
            )));
        }
        if self.checkpoint_every == Some(0) {
            return Err(range("checkpoint-every", &0, "must be at least 1"));
        }
        if !(self.keepalive > 0.0 && self.keepalive <= MAX_SECONDS) {
            return Err(range(
                "keepalive",
                &self.keepalive,
                "must be a number of seconds > 0, at most a year",
            ));
        }
        if !(self.shard_timeout > 0.0 && self.shard_timeout <= MAX_SECONDS) {
            return Err(range(
                "shard-timeout",
                &self.shard_timeout,
                "must be a number of seconds > 0, at most a year",
            ));
        }
        Ok(Config {
            plan: TrainingPlan {
                sizes,
                epochs: self.epochs,
                batch_size: self.batch_size,
                eta: self.eta,
                shards,
                seed: self.seed,
            },
            workers: self.workers,
            wait_timeout: Duration::from_secs_f64(self.wait_timeout),
            shard_timeout: Duration::from_secs_f64(self.shard_timeout),
            keepalive: Duration::from_secs_f64(self.keepalive),
            checkpoint: self.checkpoint.clone().map(|path| Checkpointing {
                path,
                every: self.checkpoint_every,
            }),
            resume: None,
            init: None,
            token,
            tls: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("coordinator").chain(extra.iter().copied())).unwrap()
    }

    #[test]
    fn defaults_are_nielsens_run() {
        let c = args(&["--workers", "4"]).validate().unwrap();
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
            (&["--workers", "0"], "--workers 0"),
            (&["--shards", "0"], "--shards 0"),
            (&["--epochs", "0"], "--epochs 0"),
            (
                &["--listen", "0.0.0.0:50051"],
                "beyond loopback) needs a token",
            ),
            (&["--token", ""], "--token: the token is empty"),
        ];
        for (i, (flags, want)) in cases.iter().enumerate() {
            let err = args(flags).validate().unwrap_err().to_string();
            assert!(err.contains(want), "case {i} {flags:?}: {err}");
        }
    }
}
