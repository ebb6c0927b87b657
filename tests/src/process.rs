//! Helpers for tests that run the real binaries as processes.

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::mpsc;
use std::time::Duration;

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
