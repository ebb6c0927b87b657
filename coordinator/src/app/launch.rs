//! Local worker processes for `--spawn-workers`: the one-command cluster.
//! Children are killed if the coordinator drops them (`kill_on_drop`), so an
//! error or Ctrl-C never leaves orphans behind.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;

use tokio::process::{Child, Command};
use tracing::{info, warn};

/// Why local workers could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The `worker` binary is not beside this one.
    #[error("cannot find the worker binary at {0} (build it with `cargo build --release`)")]
    NoBinary(PathBuf),
    /// Spawning failed.
    #[error("cannot start {path}: {source}")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

pub use crate::config::Credentials;

/// Where the workers' log lines go instead of straight to the terminal (the
/// coordinator's progress bar writes them above itself).
pub type LogSink = Arc<dyn Fn(&str) + Send + Sync>;

/// Worker processes started by this coordinator.
#[derive(Debug)]
pub struct LocalWorkers {
    children: Vec<Child>,
}

/// The `worker` binary in the same directory as the running executable.
pub fn sibling_worker_binary() -> Result<PathBuf, LaunchError> {
    let exe = std::env::current_exe().unwrap_or_default();
    let path = exe.with_file_name(format!("worker{}", std::env::consts::EXE_SUFFIX));
    if path.is_file() {
        Ok(path)
    } else {
        Err(LaunchError::NoBinary(path))
    }
}

impl LocalWorkers {
    /// Starts `count` workers of `binary` connecting to `address` (as
    /// `worker --connect` takes it) with `credentials`; their stderr goes
    /// line by line to `log` if given, else to this process's stderr.
    ///
    /// # Errors
    /// [`LaunchError::Spawn`]; workers already started are killed.
    pub fn spawn(
        binary: &PathBuf,
        count: usize,
        address: &str,
        credentials: &Credentials,
        log: Option<LogSink>,
    ) -> Result<Self, LaunchError> {
        let mut children = Vec::with_capacity(count);
        let cpus = allowed_cpus();
        for i in 0..count {
            let mut command = Command::new(binary);
            command.args(["--connect", address, "--name", &format!("local-{i}")]);
            match &credentials.token {
                Some(token) => command.env("DDP_TOKEN", token),
                None => command.env_remove("DDP_TOKEN"),
            };
            if let Some((ca, domain)) = &credentials.tls {
                command
                    .arg("--tls-ca")
                    .arg(ca)
                    .args(["--tls-domain", domain]);
            }
            if log.is_some() {
                command.stderr(std::process::Stdio::piped());
            }
            let mut child =
                command
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(|source| LaunchError::Spawn {
                        path: binary.clone(),
                        source,
                    })?;
            if let (Some(log), Some(stderr)) = (&log, child.stderr.take()) {
                let log = Arc::clone(log);
                tokio::spawn(async move {
                    let mut lines = tokio::io::BufReader::new(stderr).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        log(&line);
                    }
                });
            }
            // One worker per core, filling the CPUs this process may use:
            // pinned, each keeps its core (and its caches) through every
            // step's wake-up. Otherwise the scheduler places them: more
            // workers than cores it shares better than pins do, and fewer
            // are left free to avoid the cores other runs were pinned to.
            if let (Some(pid), true) = (child.id(), count == cpus.len()) {
                pin(pid, cpus[i]);
            }
            children.push(child);
        }
        info!(count, address, "started local workers");
        let cores = std::thread::available_parallelism().map_or(count, |n| n.get());
        if count > cores {
            warn!(
                workers = count,
                cores,
                "more local workers than cores: each worker costs every step a copy of the weights and a \
                 whole gradient, so workers beyond the cores add that and no compute (see docs/performance.md)"
            );
        }
        Ok(Self { children })
    }

    /// Completes when every worker has exited (for a run that cannot start
    /// because none of them could join).
    pub async fn all_exited(&mut self) {
        for child in &mut self.children {
            let _ = child.wait().await;
        }
    }

    /// Waits up to `grace` for every worker to exit, then kills the rest.
    /// Returns how many exited with status 0.
    pub async fn wait(mut self, grace: Duration) -> usize {
        let mut clean = 0;
        for (i, child) in self.children.iter_mut().enumerate() {
            match tokio::time::timeout(grace, child.wait()).await {
                Ok(Ok(status)) if status.success() => clean += 1,
                Ok(Ok(status)) => warn!(worker = i, %status, "local worker failed"),
                Ok(Err(e)) => warn!(worker = i, error = %e, "cannot wait for local worker"),
                Err(_) => {
                    warn!(worker = i, "local worker did not exit; killing it");
                    let _ = child.kill().await;
                }
            }
        }
        clean
    }
}

/// The CPUs this process may run on, in order (empty if unknown).
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the call writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Pins process `pid` to `cpu`; a failure only costs speed, so it is logged, not fatal.
fn pin(pid: u32, cpu: usize) {
    // SAFETY: as in `allowed_cpus`; `pid` is our own child's.
    let ok = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(
            pid as libc::pid_t,
            std::mem::size_of::<libc::cpu_set_t>(),
            &set,
        ) == 0
    };
    if !ok {
        tracing::debug!(pid, cpu, error = %std::io::Error::last_os_error(), "cannot pin a local worker");
    }
}
