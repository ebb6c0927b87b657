//! Helpers for tests that run the real binaries as processes: guards and
//! waits, and the coordinator and workers started on the committed MNIST
//! slice ([`coordinator`], [`worker_process`], [`assert_same_as_local`]).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::{binary, fixture_dir, TempDir};

/// Kills the process if a test fails before waiting on it.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads the coordinator's stdout on a thread; lines arrive on the channel.
pub fn lines(child: &mut Guard) -> mpsc::Receiver<String> {
    let stdout = child.0.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a child to exit; the limit marks a hung process as a failure.
pub fn wait_exit(child: &mut Guard, limit: Duration, what: &str) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not exit within {limit:?}"
        );
        // Polling a child's exit status: std offers no blocking wait with a timeout.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Everything the child wrote to its (piped) stderr, once it has exited.
pub fn stderr_of(child: &mut Guard) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.0.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut s);
    }
    s
}

/// Waits for a child and asserts that it succeeded; a failure shows its stderr.
pub fn expect_success(child: &mut Guard, limit: Duration, what: &str) {
    let status = wait_exit(child, limit, what);
    assert!(
        status.success(),
        "{what} exited {status}: {}",
        stderr_of(child)
    );
}

/// Waits for a child and asserts that it failed (a non-zero exit); returns
/// its stderr, which a failure of this assertion shows too.
pub fn expect_failure(child: &mut Guard, limit: Duration, what: &str) -> String {
    let status = wait_exit(child, limit, what);
    let stderr = stderr_of(child);
    assert!(
        !status.success(),
        "{what} exited {status}, expected a failure: {stderr}"
    );
    stderr
}

/// Runs `command` to its end and asserts that it failed with `want` in its
/// stderr; returns the stderr.
pub fn expect_refusal(command: &mut std::process::Command, want: &str) -> String {
    let out = command.output().expect("run the command");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && stderr.contains(want),
        "expected a failure saying {want:?}, got {}: {stderr}",
        out.status
    );
    stderr
}

/// [`expect_success`] for each child of `children`, named `what` and its index.
pub fn expect_all_success(children: &mut [Guard], limit: Duration, what: &str) {
    for (i, child) in children.iter_mut().enumerate() {
        expect_success(child, limit, &format!("{what} {i}"));
    }
}

/// Waits for a child whose stdout `rx` reads ([`lines`]) and asserts that it
/// succeeded; returns the rest of its stdout. A failure shows both streams.
pub fn expect_success_with_output(
    child: &mut Guard,
    rx: &mpsc::Receiver<String>,
    limit: Duration,
    what: &str,
) -> Vec<String> {
    let status = wait_exit(child, limit, what);
    let output = drain(rx);
    assert!(
        status.success(),
        "{what} exited {status}; stdout {output:?}; stderr {}",
        stderr_of(child)
    );
    output
}

/// Every line still to come from an exited process's stdout, up to its end
/// (when every process holding the pipe, spawned workers included, has
/// exited); the timeout only bounds a hang.
pub fn drain(rx: &mpsc::Receiver<String>) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => out.push(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => return out,
            Err(e) => panic!("stdout still open a minute after exit: {e}"),
        }
    }
}

// ---- The real coordinator and worker binaries on the committed MNIST slice

/// The real coordinator on the MNIST slice with seed 3, on 127.0.0.1:0
/// unless `args` has its own `--listen`.
pub fn coordinator(args: &[&str], out: &std::path::Path) -> Guard {
    let listen: &[&str] = if args.contains(&"--listen") {
        &[]
    } else {
        &["--listen", "127.0.0.1:0"]
    };
    spawn_coordinator(&[listen, &["--seed", "3"], args].concat(), out)
}

/// The real coordinator on the MNIST slice with `args`, writing its model to
/// `out`, both output streams piped.
pub fn spawn_coordinator(args: &[&str], out: &std::path::Path) -> Guard {
    spawn_coordinator_command(Command::new(binary("coordinator")), args, out)
}

/// `command` (a coordinator binary, or a wrapper that runs one) given the
/// MNIST slice, `args` and `out` for its model.
pub fn coordinator_command(mut command: Command, args: &[&str], out: &std::path::Path) -> Command {
    command
        .arg("--data-dir")
        .arg(fixture_dir())
        .arg("--out")
        .arg(out)
        .args(args);
    command
}

/// [`coordinator_command`] spawned, both output streams piped.
pub fn spawn_coordinator_command(command: Command, args: &[&str], out: &std::path::Path) -> Guard {
    let child = coordinator_command(command, args, out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start coordinator");
    Guard(child)
}

/// The address from the coordinator's first stdout line, `Listening on ADDR`.
pub fn address(rx: &std::sync::mpsc::Receiver<String>) -> String {
    let first = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("coordinator prints its address");
    let addr = first
        .strip_prefix("Listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
    addr.to_string()
}

/// Replays the run in one process (`--local`) and checks the cluster's model
/// file `out` is byte-identical to the replay's; then checks that `coordinator
/// verify` accepts the cluster run's record ([`assert_verifies`]).
pub fn assert_same_as_local(
    dir: &std::path::Path,
    out: &std::path::Path,
    shards: usize,
    epochs: usize,
    what: &str,
) {
    let replay = dir.join("replay.safetensors");
    let (shards, epochs) = (shards.to_string(), epochs.to_string());
    let mut local = coordinator(
        &["--local", "--shards", &shards, "--epochs", &epochs],
        &replay,
    );
    expect_success(&mut local, Duration::from_secs(120), "coordinator --local");
    assert!(
        std::fs::read(out).unwrap() == std::fs::read(&replay).unwrap(),
        "{what}"
    );
    assert_verifies(out);
}

/// `coordinator verify` replays the run of model file `out` from its record
/// (`<out>.record.json`) and every hash matches, the model file's included.
pub fn assert_verifies(out: &std::path::Path) {
    let record = out.with_extension("record.json");
    let verify = Command::new(binary("coordinator"))
        .arg("verify")
        .arg(&record)
        .arg("--model")
        .arg(out)
        .arg("--data-dir")
        .arg(fixture_dir())
        .output()
        .expect("run coordinator verify");
    let stdout = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success() && stdout.contains("verified: "),
        "verify {}: {stdout}{}",
        verify.status,
        String::from_utf8_lossy(&verify.stderr)
    );
}

/// A worker process joining the coordinator at TCP address `addr` (`http://` is prefixed).
pub fn worker_process(addr: &str, name: &str, extra: &[&str]) -> Guard {
    worker_at(&format!("http://{addr}"), name, extra)
}

/// A worker process joining the coordinator at `endpoint`, as given, with
/// `extra` flags and its stderr piped.
pub fn worker_at(endpoint: &str, name: &str, extra: &[&str]) -> Guard {
    Guard(
        Command::new(binary("worker"))
            .args(["--connect", endpoint, "--name", name])
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start worker"),
    )
}

/// A fresh temporary directory for test `name`, removed when dropped.
pub fn tempdir(name: &str) -> TempDir {
    TempDir::new(name)
}

/// A fresh [`tempdir`] for test `name`, and the path in it of the model file
/// the test's run writes.
pub fn run_dir(name: &str) -> (TempDir, std::path::PathBuf) {
    let dir = tempdir(name);
    let out = dir.join("model.safetensors");
    (dir, out)
}

/// [`run_dir`], and the path in it of the run's checkpoint file.
pub fn checkpointed_run_dir(name: &str) -> (TempDir, std::path::PathBuf, std::path::PathBuf) {
    let (dir, out) = run_dir(name);
    let ck = dir.join("checkpoint.safetensors");
    (dir, out, ck)
}
