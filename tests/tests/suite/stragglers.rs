//! Stragglers: a worker process paused with SIGSTOP in the middle of a run.
//! Its late shard is copied to an idle worker and it gets no new shards while
//! it owes answers, so the run trains to the end while it is still stopped,
//! and writes the model file of `--local`, byte for byte.

use std::process::Command;
use std::time::Duration;

use integration_tests::process::{expect_success_with_output, lines, stderr_of, wait_exit, Guard};

use integration_tests::process::{
    address, assert_same_as_local, coordinator, run_dir, worker_process,
};

/// Sends `signal` (`STOP`, `CONT`) to the worker's process.
fn signal(worker: &Guard, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(worker.0.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} failed");
}

#[test]
fn a_paused_worker_process_is_backed_up_and_the_run_does_not_wait_for_it() {
    const EPOCHS: usize = 6;
    let (dir, out) = run_dir("pause");
    let mut coord = coordinator(&["--workers", "4", "--epochs", &EPOCHS.to_string()], &out);
    let rx = lines(&mut coord);
    let addr = address(&rx);
    let mut paused = worker_process(&addr, "paused", &[]);
    let mut steady: Vec<Guard> = (0..3)
        .map(|i| worker_process(&addr, &format!("steady-{i}"), &[]))
        .collect();
    let epoch0 = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("an epoch line");
    assert!(epoch0.starts_with("Epoch 0: "), "{epoch0}");
    signal(&paused, "STOP");
    // The last epoch is reported while the worker is still stopped: nothing
    // waited for it (with no backups the run would hang here until
    // --shard-timeout, 30 s, and then drop it).
    let last = format!("Epoch {}: ", EPOCHS - 1);
    let mut seen = Vec::new();
    while !seen.last().is_some_and(|l: &String| l.starts_with(&last)) {
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(line) => seen.push(line),
            Err(e) => {
                signal(&paused, "CONT");
                panic!(
                    "no line for the last epoch while a worker was paused ({e}); so far {seen:?}"
                )
            }
        }
    }
    signal(&paused, "CONT");
    let output =
        expect_success_with_output(&mut coord, &rx, Duration::from_secs(120), "coordinator");
    let stragglers = output
        .iter()
        .find(|l| l.starts_with("Stragglers: "))
        .unwrap_or_else(|| panic!("the summary counts the backups: {output:?}"));
    assert!(!stragglers.starts_with("Stragglers: 0 "), "{stragglers}");
    // Woken up, the paused worker answers late (harmlessly) and exits with the others.
    for (i, w) in std::iter::once(&mut paused).chain(&mut steady).enumerate() {
        let status = wait_exit(w, Duration::from_secs(30), "worker");
        assert!(
            status.success(),
            "worker {i} exited {status}: {}",
            stderr_of(w)
        );
    }
    assert_same_as_local(
        &dir,
        &out,
        4,
        EPOCHS,
        "the model trained around a paused worker differs from --local's",
    );
}
