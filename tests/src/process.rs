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
