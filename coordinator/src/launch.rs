//! Local worker processes for `--spawn-workers`: the one-command cluster.
//! Children are killed if the coordinator drops them (`kill_on_drop`), so an
//! error or Ctrl-C never leaves orphans behind.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    /// Starts `count` workers of `binary` connecting to `addr`.
    ///
    /// # Errors
    /// [`LaunchError::Spawn`]; workers already started are killed.
    pub fn spawn(binary: &PathBuf, count: usize, addr: SocketAddr) -> Result<Self, LaunchError> {
        let mut children = Vec::with_capacity(count);
        for i in 0..count {
            let child = Command::new(binary)
                .args([
                    "--connect",
                    &format!("http://{addr}"),
                    "--name",
                    &format!("local-{i}"),
                ])
                .kill_on_drop(true)
                .spawn()
                .map_err(|source| LaunchError::Spawn {
                    path: binary.clone(),
                    source,
                })?;
            children.push(child);
        }
        info!(count, %addr, "started local workers");
        Ok(Self { children })
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
