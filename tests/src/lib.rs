//! Test harness for the trainer: an in-process cluster (the real coordinator
//! and workers, real tonic over 127.0.0.1:0, workers as tasks) and helpers to
//! find the real binaries for process-level tests.
//!
//! # Layout
//! - [`Cluster`]: start a coordinator and N workers, wait for the run's summary;
//! - [`fixture_data`]: the committed MNIST slice (first 1,200 training and 200
//!   test images of the real files, gzipped, in the IDX layout);
//! - [`binary`]: the path of a workspace binary beside the test executable;
//! - [`process`]: child-process guards and waits for the process-level tests;
//! - [`http`], [`webdriver`]: a minimal HTTP/1.1 client, and a W3C WebDriver
//!   session on it, for the dashboard tests.

pub mod http;
pub mod process;
pub mod webdriver;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use common::dataset::Mnist;
use coordinator::{Config, CoordinatorError, RunSummary};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use worker::{WorkerConfig, WorkerError};

/// Directory of the committed MNIST slice.
pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join("mnist-slice")
}

/// The committed MNIST slice: 1,000 training, 200 validation, 200 test samples.
///
/// # Panics
/// If the fixture is missing or invalid.
pub fn fixture_data() -> Arc<Mnist> {
    Arc::new(Mnist::load(&fixture_dir()).expect("committed fixture loads"))
}

/// A coordinator and its workers, running as tasks on this runtime.
pub struct Cluster {
    /// Where the coordinator listens.
    pub addr: std::net::SocketAddr,
    coordinator: JoinHandle<Result<RunSummary, CoordinatorError>>,
    /// `None` once awaited through `worker_exit`.
    workers: Vec<Option<JoinHandle<Result<(), WorkerError>>>>,
    stop: Option<oneshot::Sender<()>>,
}

/// A `WorkerMessage` carrying the shard result `result`, as a raw peer sends it.
pub fn result_message(result: common::pb::ShardResult) -> common::pb::WorkerMessage {
    common::pb::WorkerMessage {
        kind: Some(common::pb::worker_message::Kind::Result(result)),
    }
}

/// The results an honest worker sends for `step`: its weights decoded
/// into `net`, then each shard's summed gradients, in the step's order (as a
/// worker that ignores `Shard.ask_first_error` sends them: whole).
///
/// # Panics
/// If the step does not decode.
pub fn honest_results(
    step: &common::pb::Step,
    net: &mut common::Network,
) -> Vec<common::pb::ShardResult> {
    answers(step, net, false)
}

/// [`honest_results`] as this project's worker sends them: the first
/// layer's error instead of its weight gradient where a shard asks for it.
///
/// # Panics
/// If the step does not decode.
pub fn honest_results_with_first_errors(
    step: &common::pb::Step,
    net: &mut common::Network,
) -> Vec<common::pb::ShardResult> {
    answers(step, net, true)
}

fn answers(
    step: &common::pb::Step,
    net: &mut common::Network,
    first_errors: bool,
) -> Vec<common::pb::ShardResult> {
    use common::{cost::Cost, kernels::KernelSet, shard, wire};
    let k = KernelSet::best();
    let shards = wire::decode_step(step, net).expect("a valid step");
    let asked = step
        .shards
        .iter()
        .map(|s| first_errors && s.ask_first_error);
    let result =
        |((id, samples), asked): (&(common::schedule::ShardId, common::dataset::Samples), bool)| {
            let (g, e) = shard::answer(
                net,
                samples,
                Cost::Quadratic,
                k,
                shard::AnswerForm::first_error_if(asked),
                common::layers::DropoutKey {
                    seed: 0,
                    epoch: step.epoch,
                    first: 0,
                },
            );
            wire::encode_shard_answer(step.step_id, *id, samples.len(), &g, e.as_deref())
        };
    shards.iter().zip(asked).map(result).collect()
}

/// Opens a `ddp.v1.Trainer/Train` stream to `addr` as a raw peer would:
/// sends `first`, of any message type that encodes where a `WorkerMessage`
/// goes (the real one, or one crafted to be malformed), with `token` as the
/// bearer token if given. Returns the sender for further messages and the
/// response stream, or the status the stream was refused with.
///
/// # Panics
/// If the connection cannot be made.
pub async fn open_stream<M>(
    addr: std::net::SocketAddr,
    token: Option<&str>,
    first: M,
) -> (
    tokio::sync::mpsc::Sender<M>,
    Result<tonic::Streaming<common::pb::CoordinatorMessage>, tonic::Status>,
)
where
    M: prost::Message + Default + Send + 'static,
{
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid address")
        .connect()
        .await
        .expect("connect to the coordinator");
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_encoding_message_size(common::wire::MAX_MESSAGE_BYTES);
    grpc.ready().await.expect("the channel is ready");
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(first).await.expect("the stream is open");
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .expect("a printable token");
        request
            .metadata_mut()
            .insert(common::auth::METADATA_KEY, value);
    }
    let codec = tonic_prost::ProstCodec::<M, common::pb::CoordinatorMessage>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/ddp.v1.Trainer/Train");
    let response = grpc
        .streaming(request, path, codec)
        .await
        .map(tonic::Response::into_inner);
    (tx, response)
}

/// A fresh directory under the system's temporary directory, removed when
/// dropped: also when the test fails, so failed runs leave nothing behind.
pub struct TempDir(PathBuf);

impl TempDir {
    /// `ddp-<name>-<pid>`, emptied first.
    ///
    /// # Panics
    /// If it cannot be created.
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("ddp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }
}

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;

    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// network.py's run (`[784,30,10]`, quadratic cost, N(0,1) init, batch 10,
/// eta 3.0) for `epochs` epochs over `shards` logical shards from `seed`: the
/// plan most tests need, with any other field set by struct update.
pub fn plan_for(epochs: usize, shards: usize, seed: u64) -> common::plan::TrainingPlan {
    common::plan::TrainingPlan {
        epochs,
        shards,
        seed,
        ..Default::default()
    }
}

/// The single-process reference run of `plan` on the committed slice: the
/// network a cluster run of `plan` must equal, bit for bit.
pub fn reference_network(plan: &common::plan::TrainingPlan) -> common::Network {
    let mut net = plan.initial_network();
    common::local::train_in_process(&mut net, &fixture_data(), plan, common::progress::Quiet);
    net
}

/// Runs `config` on a [`Cluster`] of `workers` workers over `data` to its end
/// (`limit` bounds a hang), asserts that the run and every worker succeeded
/// (`what` names the run in a failure) and returns the run's summary.
///
/// # Panics
/// If the cluster does not start or finish, the run fails or a worker does.
pub async fn run_cluster(
    config: Config,
    data: Arc<Mnist>,
    workers: usize,
    limit: Duration,
    what: &str,
) -> RunSummary {
    let cluster = Cluster::start(config, data, workers).await.unwrap();
    let (summary, worker_results) = cluster.finish(limit).await.unwrap();
    for (i, w) in worker_results.iter().enumerate() {
        assert!(w.is_ok(), "{what}: worker {i} of {workers}: {w:?}");
    }
    summary.unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// A run configuration for tests: `plan` on `workers` workers, with the
/// CLI's defaults for everything else ([`Config::cli_defaults`]: 30 s shard
/// timeout, the default backups for stragglers, 10 s keepalive, no
/// checkpoint, token or TLS), except a 30 s wait for a replacement worker.
/// Override fields with struct update syntax.
pub fn test_config(plan: common::plan::TrainingPlan, workers: usize) -> Config {
    Config {
        plan,
        workers,
        wait_timeout: Duration::from_secs(30),
        ..Config::cli_defaults()
    }
}

/// A worker configuration for `addr` with a short retry budget.
pub fn worker_config(addr: std::net::SocketAddr, name: &str) -> WorkerConfig {
    WorkerConfig {
        endpoint: format!("http://{addr}"),
        name: name.to_string(),
        retry_for: Duration::from_secs(10),
        fault: None,
        token: None,
        tls_ca: None,
        tls_domain: None,
        keepalive: Duration::from_secs(10),
        health: None,
        kernels: None,
    }
}

impl Cluster {
    /// Binds 127.0.0.1:0, starts the coordinator on it and `workers` workers.
    ///
    /// # Errors
    /// If binding fails.
    pub async fn start(
        config: Config,
        data: Arc<Mnist>,
        workers: usize,
    ) -> anyhow::Result<Cluster> {
        Self::start_observed(
            config,
            data,
            workers,
            common::progress::Quiet,
            coordinator::pool::Observer::none(),
        )
        .await
    }

    /// [`Cluster::start`], with `dashboard` watching the run (pool events,
    /// steps, epochs and the data).
    ///
    /// # Errors
    /// If binding fails.
    pub async fn start_watched(
        config: Config,
        data: Arc<Mnist>,
        workers: usize,
        dashboard: &coordinator::app::dashboard::Dashboard,
    ) -> anyhow::Result<Cluster> {
        dashboard
            .feed()
            .send(coordinator::app::dashboard::Feed::Data(Arc::clone(&data)));
        Self::start_observed(
            config,
            data,
            workers,
            dashboard.progress(common::progress::Quiet),
            dashboard.observer(),
        )
        .await
    }

    async fn start_observed(
        config: Config,
        data: Arc<Mnist>,
        workers: usize,
        progress: impl common::progress::Progress + Send + 'static,
        observer: coordinator::pool::Observer,
    ) -> anyhow::Result<Cluster> {
        // Bound before anything is spawned, so workers never race the server's start.
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let coordinator = tokio::spawn(coordinator::serve(
            listener,
            config,
            async { Ok(data) },
            async {
                let _ = stopped.await;
            },
            progress,
            observer,
        ));
        let mut cluster = Cluster {
            addr,
            coordinator,
            workers: Vec::new(),
            stop: Some(stop),
        };
        for i in 0..workers {
            cluster.add_worker(&format!("test-{i}"));
        }
        Ok(cluster)
    }

    /// The configuration of a worker named `name` joining this cluster
    /// (a short retry budget), to adjust before [`Cluster::add_worker_config`].
    pub fn worker_config(&self, name: &str) -> WorkerConfig {
        worker_config(self.addr, name)
    }

    /// Starts one more worker task, plain.
    pub fn add_worker(&mut self, name: &str) -> usize {
        self.add_worker_config(self.worker_config(name))
    }

    /// Starts one more worker task, named `name`, that exits at step `step`
    /// (an injected fault); returns its index.
    pub fn add_worker_exiting_at(&mut self, name: &str, step: u64) -> usize {
        self.add_worker_config(WorkerConfig {
            fault: Some(worker::Fault::ExitAtStep(step)),
            ..self.worker_config(name)
        })
    }

    /// Starts one more worker task with this configuration (a fault to
    /// inject, a token, TLS); returns its index. The one way workers start.
    pub fn add_worker_config(&mut self, config: WorkerConfig) -> usize {
        self.workers.push(Some(tokio::spawn(worker::run(
            config,
            std::future::pending(),
        ))));
        self.workers.len() - 1
    }

    /// Waits for worker `index` to exit (within `limit`, a failure bound) and returns how it ended.
    ///
    /// # Errors
    /// If it does not exit in time or panics.
    pub async fn worker_exit(
        &mut self,
        index: usize,
        limit: Duration,
    ) -> anyhow::Result<Result<(), WorkerError>> {
        let handle = self.workers[index]
            .take()
            .context("worker already awaited")?;
        tokio::time::timeout(limit, handle)
            .await
            .context("worker did not exit in time")?
            .context("worker task panicked")
    }

    /// Interrupts the coordinator, as Ctrl-C would.
    pub fn interrupt(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits (at most `limit`, a failure bound, not a pause) for the run to
    /// end and every worker to exit; returns the coordinator's result and each
    /// worker's (in start order, leaving out those awaited with `worker_exit`).
    ///
    /// # Errors
    /// If the run does not end within `limit` or a task panics.
    pub async fn finish(
        self,
        limit: Duration,
    ) -> anyhow::Result<(
        Result<RunSummary, CoordinatorError>,
        Vec<Result<(), WorkerError>>,
    )> {
        let all = async {
            let summary = self
                .coordinator
                .await
                .context("coordinator task panicked")?;
            let mut workers = Vec::new();
            // Workers already awaited through `worker_exit` are left out.
            for w in self.workers.into_iter().flatten() {
                workers.push(w.await.context("worker task panicked")?);
            }
            anyhow::Ok((summary, workers))
        };
        tokio::time::timeout(limit, all)
            .await
            .context("cluster did not finish in time")?
    }
}

/// The path of workspace binary `name` (`coordinator` or `worker`), built
/// fresh: `cargo test` builds only the binaries of the package under test, so
/// the first call runs `cargo build --workspace --bins --tests` for this
/// profile. `--tests` makes cargo resolve features exactly as `cargo test
/// --workspace` does (dev-dependencies included), so the dependencies the
/// test run already compiled are reused and only the two binaries are built.
///
/// # Panics
/// If the build fails.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test> → target/<profile>
        let dir = exe
            .parent()
            .and_then(|d| d.parent())
            .expect("target dir")
            .to_path_buf();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = std::process::Command::new(cargo);
        // This process runs with the variables cargo sets for a test
        // (CARGO_MANIFEST_DIR, CARGO_PKG_NAME, ...). Build scripts such as
        // ring's rerun when those change, so passing them on would rebuild
        // ring, rustls, tonic and everything above them here, and again in
        // the next `cargo test`: the nested build would never be a no-op.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            let per_crate = [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
            ]
            .iter()
            .any(|p| key.starts_with(p));
            if per_crate
                || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "OUT_DIR"].contains(&&*key)
            {
                build.env_remove(&*key);
            }
        }
        build.args(["build", "--workspace", "--bins", "--tests"]);
        if dir.file_name().is_some_and(|p| p == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "cargo build --bins failed");
        dir
    });
    dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// Marks a test that cannot run on this machine (a missing tool). Under CI
/// (`CI=true`) that is a failure: CI installs every tool, so a skip there
/// would hide a broken install. Elsewhere the test passes and says so on the
/// terminal: written to the stderr handle, not with `eprintln!`, which
/// cargo's test harness captures and hides for passing tests.
///
/// # Panics
/// Under CI.
pub fn skip(test: &str, why: &str) {
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(!ci, "{test} cannot run under CI: {why}");
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// Runs `python tests/python/<script> MODEL PIXELS`, PIXELS being the
/// committed slice's test images written to `dir/pixels.u8`; asserts that it
/// succeeded and returns the class it printed for each image, and its stderr.
///
/// # Panics
/// If the script cannot run, fails, or prints anything but a class a line.
pub fn python_predictions(
    python: &str,
    script: &str,
    model: &std::path::Path,
    dir: &std::path::Path,
) -> (Vec<usize>, String) {
    let pixels = dir.join("pixels.u8");
    std::fs::write(&pixels, &fixture_data().test.pixels).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(script);
    let run = std::process::Command::new(python)
        .arg(script)
        .arg(model)
        .arg(&pixels)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "{stderr}");
    let predictions = String::from_utf8_lossy(&run.stdout)
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    (predictions, stderr)
}

/// Asserts that `network`'s parameters are, bit for bit, those whose
/// [`bits`] are `want`; a failure says `what`.
pub fn assert_bits_eq(network: &common::Network, want: &[u8], what: &str) {
    assert!(bits(network) == want, "{what}");
}

/// Largest absolute difference between two networks' parameters.
pub fn max_abs_diff(a: &common::Network, b: &common::Network) -> f32 {
    let w = a
        .weights
        .iter()
        .zip(&b.weights)
        .flat_map(|(x, y)| x.iter().zip(y.iter()));
    let bias = a
        .biases
        .iter()
        .zip(&b.biases)
        .flat_map(|(x, y)| x.iter().zip(y.iter()));
    w.chain(bias)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The raw bytes of a network's parameters, for bitwise comparison.
pub fn bits(network: &common::Network) -> Vec<u8> {
    common::wire::encode_network(network).to_vec()
}
